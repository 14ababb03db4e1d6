//! `--chat-template` and `--eos-token`: the chat template and the stop token under the user's
//! control (axolotl's `chat_template` and `special_tokens.eos_token`). A training run records
//! them with its adapter (`chat_template.jinja` beside the weights, the eos token in
//! `training_config.toml`), and whatever loads the adapter (`generate`, `eval`, `merge`,
//! `export-gguf`) uses them unless told otherwise.
//!
//! With a template given, generation stops where its replies end: the special token it writes
//! right after an assistant message (`<|im_end|>`, `<|eot_id|>`, ...) is a stop token.

use std::path::{Path, PathBuf};

use clap::Args;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::chat_template::Message;
use super::tokenizer::{
    CHAT_TEMPLATE_FILE, GENERATION_CONFIG_FILE, TOKENIZER_CONFIG_FILE, Tokenizer,
};
use crate::error::{Error, Result};

/// ChatML (`<|im_start|>role\n...<|im_end|>\n`), as axolotl and transformers write it.
const CHATML: &str = "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";

/// Llama 3's instruct template (headers, `<|eot_id|>` after every turn).
const LLAMA3: &str = "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}";

/// The built-in templates: name, text, and the special tokens the tokenizer must have.
const BUILT_IN: [(&str, &str, &[&str]); 2] = [
    ("chatml", CHATML, &["<|im_start|>", "<|im_end|>"]),
    (
        "llama3",
        LLAMA3,
        &["<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"],
    ),
];

/// The model's own template, named (to override an adapter's).
pub const TOKENIZER_DEFAULT: &str = "tokenizer_default";

/// The chat template and stop token a run uses instead of the model's (flags of `train`,
/// `eval` and `generate`; keys of `training_config.toml`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Args, Serialize, Deserialize)]
#[serde(default)]
pub struct TextOverrides {
    /// The chat template: a Jinja file (or Jinja text), or chatml, llama3 or
    /// tokenizer_default (the model's) [default: the adapter's, else the model's].
    #[arg(long, value_name = "FILE|NAME", help_heading = "Data")]
    pub chat_template: Option<String>,
    /// The end-of-sequence token: appended after responses, and where generation stops
    /// (`<|im_end|>`, `<|eot_id|>`, ...) [default: the tokenizer's].
    #[arg(long, value_name = "TOKEN", help_heading = "Data")]
    pub eos_token: Option<String>,
}

/// A chosen template's text and where it came from.
struct Template {
    text: String,
    source: PathBuf,
}

impl TextOverrides {
    /// These settings, with `over`'s where it has them.
    pub fn overridden_by(&self, over: &TextOverrides) -> TextOverrides {
        TextOverrides {
            chat_template: over
                .chat_template
                .clone()
                .or_else(|| self.chat_template.clone()),
            eos_token: over.eos_token.clone().or_else(|| self.eos_token.clone()),
        }
    }

    /// The template `chat_template` names (none for the model's own).
    fn template(&self, tokenizer: &Tokenizer) -> Result<Option<Template>> {
        let Some(choice) = self.chat_template.as_deref() else {
            return Ok(None);
        };
        if choice == TOKENIZER_DEFAULT {
            return Ok(None);
        }
        if let Some((name, text, tokens)) = BUILT_IN.iter().find(|(n, _, _)| *n == choice) {
            if let Some(missing) = tokens.iter().find(|t| tokenizer.token_to_id(t).is_none()) {
                return Err(Error::invalid(format!(
                    "--chat-template {name} writes the special token {missing}, which the \
                     tokenizer does not have; use a model that has it, or give a template file"
                )));
            }
            return Ok(Some(Template {
                text: text.to_string(),
                source: PathBuf::from(format!("<{name}>")),
            }));
        }
        // Jinja itself (axolotl's chat_template_jinja), not a name or a path.
        if choice.contains("{%") || choice.contains("{{") {
            return Ok(Some(Template {
                text: choice.to_string(),
                source: PathBuf::from("<--chat-template>"),
            }));
        }
        let path = PathBuf::from(choice);
        if !path.is_file() {
            let names: Vec<&str> = BUILT_IN.iter().map(|(n, _, _)| *n).collect();
            return Err(Error::invalid(format!(
                "--chat-template {choice}: not a file, and not one of {}, {TOKENIZER_DEFAULT}",
                names.join(", ")
            )));
        }
        let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
        Ok(Some(Template { text, source: path }))
    }

    /// Apply the settings to `tokenizer`. A template given instead of the model's also makes
    /// its end of turn a stop token (the model's own come from its `generation_config.json`,
    /// as in transformers).
    pub fn apply(&self, tokenizer: &mut Tokenizer) -> Result<()> {
        if let Some(template) = self.template(tokenizer)? {
            tokenizer.set_chat_template(template.text, &template.source)?;
            if let Some(id) = turn_end(tokenizer)? {
                tokenizer.add_stop_id(id);
            }
        }
        if let Some(token) = &self.eos_token {
            tokenizer.set_eos_token(token)?;
        }
        Ok(())
    }

    /// Write the chat template these settings chose (if not the model's) into `dir` as
    /// `chat_template.jinja`, as transformers saves a tokenizer's template.
    pub fn record(&self, tokenizer: &Tokenizer, dir: &Path) -> Result<()> {
        if self.template(tokenizer)?.is_none() {
            return Ok(());
        }
        let text = tokenizer.chat_template_text().unwrap_or_default();
        let path = dir.join(CHAT_TEMPLATE_FILE);
        std::fs::write(&path, text).map_err(|e| Error::io(&path, e))
    }

    /// Write these settings into the model directory `dir` (a merged model) as transformers
    /// reads them: the chosen template as `chat_template.jinja` (the one in
    /// `tokenizer_config.json` removed), the eos token in `tokenizer_config.json`, and the stop
    /// ids in `generation_config.json`'s `eos_token_id`. `tokenizer` has them applied.
    pub fn write_into_model_dir(&self, tokenizer: &Tokenizer, dir: &Path) -> Result<()> {
        let replaces = self.replaces_template();
        if !replaces && self.eos_token.is_none() {
            return Ok(());
        }
        let edit = |name: &str, change: &dyn Fn(&mut serde_json::Map<String, Value>)| {
            let path = dir.join(name);
            let mut json = match std::fs::read_to_string(&path) {
                Ok(text) => serde_json::from_str::<Value>(&text)
                    .map_err(|e| Error::file(&path, format!("invalid JSON: {e}")))?,
                Err(_) => Value::Object(Default::default()),
            };
            let object = json
                .as_object_mut()
                .ok_or_else(|| Error::file(&path, "expected a JSON object"))?;
            change(object);
            let text = serde_json::to_string_pretty(&json).expect("JSON serializes");
            std::fs::write(&path, text + "\n").map_err(|e| Error::io(&path, e))
        };
        if replaces {
            self.record(tokenizer, dir)?;
        }
        edit(TOKENIZER_CONFIG_FILE, &|config| {
            if replaces {
                config.remove("chat_template");
            }
            if let Some(token) = &self.eos_token {
                config.insert("eos_token".into(), Value::from(token.clone()));
            }
        })?;
        let stops = tokenizer.stop_ids().to_vec();
        edit(GENERATION_CONFIG_FILE, &|config| {
            config.insert("eos_token_id".into(), Value::from(stops.clone()));
        })
    }

    /// Whether a template other than the model's is chosen.
    pub fn replaces_template(&self) -> bool {
        self.chat_template
            .as_deref()
            .is_some_and(|c| c != TOKENIZER_DEFAULT)
    }
}

/// The special token the chat template writes right after an assistant's reply, if it writes
/// one: where a reply ends.
pub fn turn_end(tokenizer: &Tokenizer) -> Result<Option<u32>> {
    if tokenizer.chat_template().is_none() {
        return Ok(None);
    }
    const REPLY: &str = "qlora probe reply";
    let messages = [
        Message::new("user", "qlora probe"),
        Message::new("assistant", REPLY),
    ];
    // A template that refuses the probe (it wants a system turn, ...) names no end.
    let Ok(text) = tokenizer.apply_chat_template(&messages, false) else {
        return Ok(None);
    };
    let Some(at) = text.rfind(REPLY) else {
        return Ok(None);
    };
    let rest = &text[at + REPLY.len()..];
    let ids = tokenizer.encode(rest, false)?;
    let special = |id: u32| {
        tokenizer
            .backend()
            .get_added_tokens_decoder()
            .get(&id)
            .is_some_and(|t| t.special)
    };
    Ok(ids.first().copied().filter(|&id| special(id)))
}
