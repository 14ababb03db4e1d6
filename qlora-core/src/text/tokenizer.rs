//! `tokenizer.json` through the `tokenizers` crate, with the special tokens and chat template
//! of `tokenizer_config.json`, `generation_config.json` and `chat_template.jinja`.

use std::path::{Path, PathBuf};

use serde_json::Value;

use super::chat_template::{ChatTemplate, Message, TemplateKwargs};
use crate::error::{Error, Result};

/// The tokenizer's file.
pub const TOKENIZER_FILE: &str = "tokenizer.json";
/// The tokenizer's configuration (special tokens, chat template).
pub const TOKENIZER_CONFIG_FILE: &str = "tokenizer_config.json";
/// The generation configuration (end-of-sequence ids).
pub const GENERATION_CONFIG_FILE: &str = "generation_config.json";
/// The chat template's own file (newer models).
pub const CHAT_TEMPLATE_FILE: &str = "chat_template.jinja";

/// Token ids and the byte span `[start, end)` of each in the text (special tokens added by the
/// post-processor have empty spans).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Encoded {
    /// The token ids.
    pub ids: Vec<u32>,
    /// Each token's byte span in the text.
    pub offsets: Vec<(usize, usize)>,
}

/// A model's tokenizer with its special tokens and chat template.
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    bos: Option<(String, u32)>,
    eos: Option<(String, u32)>,
    pad: Option<(String, u32)>,
    unk: Option<String>,
    /// Every id that ends generation (eos and generation_config's `eos_token_id`s).
    stop_ids: Vec<u32>,
    chat_template: Option<ChatTemplate>,
    /// The chat template's source text and the file it came from.
    chat_template_source: Option<(String, PathBuf)>,
}

fn read_json(path: &Path) -> Result<Option<Value>> {
    if !path.is_file() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    serde_json::from_str(&text)
        .map(Some)
        .map_err(|e| Error::file(path, format!("invalid JSON: {e}")))
}

/// A special token in `tokenizer_config.json`: a plain string or an AddedToken object.
fn token_string(config: &Value, key: &str) -> Option<String> {
    match config.get(key)? {
        Value::String(s) => Some(s.clone()),
        Value::Object(o) => o.get("content")?.as_str().map(str::to_string),
        _ => None,
    }
}

fn ids(value: Option<&Value>) -> Vec<u32> {
    match value {
        Some(Value::Number(n)) => n.as_u64().map(|id| vec![id as u32]).unwrap_or_default(),
        Some(Value::Array(a)) => a
            .iter()
            .filter_map(|v| v.as_u64())
            .map(|id| id as u32)
            .collect(),
        _ => Vec::new(),
    }
}

/// Run a call into the tokenizers crate, turning its panics into an error.
fn guarded<T>(f: impl FnOnce() -> T) -> Result<T> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).map_err(|_| {
        Error::invalid(
            "the tokenizers library failed on this tokenizer (is tokenizer.json damaged?)",
        )
    })
}

impl Tokenizer {
    /// Load the tokenizer of a model directory.
    pub fn load(dir: impl AsRef<Path>) -> Result<Self> {
        let dir = dir.as_ref();
        let path = dir.join(TOKENIZER_FILE);
        if !path.is_file() {
            return Err(Error::file(
                &path,
                "missing: the model directory needs a tokenizer.json",
            ));
        }
        let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
        // The tokenizers crate panics on some malformed files (it unwraps inside its
        // deserializers): check the JSON first, and keep a panic from escaping.
        if let Err(e) = serde_json::from_str::<serde::de::IgnoredAny>(&text) {
            return Err(Error::file(&path, format!("invalid JSON: {e}")));
        }
        let inner = std::panic::catch_unwind(|| {
            <tokenizers::Tokenizer as std::str::FromStr>::from_str(&text)
        })
        .map_err(|_| {
            Error::file(
                &path,
                "cannot load tokenizer: the tokenizers library failed on it",
            )
        })?
        .map_err(|e| Error::file(&path, format!("cannot load tokenizer: {e}")))?;
        // A tokenizer that cannot encode a plain sentence is refused here, naming the file.
        guarded(|| inner.encode("Hello, world! 12 + 30", true))
            .map_err(|e| Error::file(&path, e.to_string()))?
            .map_err(|e| Error::file(&path, format!("cannot tokenize text: {e}")))?;
        let config_path = dir.join(TOKENIZER_CONFIG_FILE);
        let config = read_json(&config_path)?.unwrap_or(Value::Null);
        let generation = read_json(&dir.join(GENERATION_CONFIG_FILE))?.unwrap_or(Value::Null);

        let lookup = |key: &str| -> Result<Option<(String, u32)>> {
            match token_string(&config, key) {
                None => Ok(None),
                Some(token) => match inner.token_to_id(&token) {
                    Some(id) => Ok(Some((token, id))),
                    None => Err(Error::key(
                        &config_path,
                        key,
                        format!("token `{token}` is not in the vocabulary"),
                    )),
                },
            }
        };
        let bos = lookup("bos_token")?;
        let eos = lookup("eos_token")?;
        let pad = lookup("pad_token")?;
        let unk = token_string(&config, "unk_token");

        let mut stop_ids = ids(generation.get("eos_token_id"));
        if let Some((_, id)) = &eos
            && !stop_ids.contains(id)
        {
            stop_ids.push(*id);
        }

        let template_file = dir.join(CHAT_TEMPLATE_FILE);
        let template = if template_file.is_file() {
            let text = std::fs::read_to_string(&template_file)
                .map_err(|e| Error::io(&template_file, e))?;
            Some((text, template_file))
        } else {
            match config.get("chat_template") {
                Some(Value::String(text)) => Some((text.clone(), config_path.clone())),
                // A list of named templates: the one called "default".
                Some(Value::Array(list)) => list
                    .iter()
                    .find(|t| t.get("name").and_then(Value::as_str) == Some("default"))
                    .and_then(|t| t.get("template")?.as_str())
                    .map(|text| (text.to_string(), config_path.clone())),
                _ => None,
            }
        };
        let mut tokenizer = Tokenizer {
            inner,
            bos,
            eos,
            pad,
            unk,
            stop_ids,
            chat_template: None,
            chat_template_source: template,
        };
        tokenizer.compile_template()?;
        Ok(tokenizer)
    }

    /// Compile the chat template's source with the special tokens as they stand.
    fn compile_template(&mut self) -> Result<()> {
        fn name(token: &Option<(String, u32)>) -> &str {
            token.as_ref().map_or("", |(s, _)| s.as_str())
        }
        self.chat_template = match &self.chat_template_source {
            Some((text, source)) => Some(ChatTemplate::new(
                text.clone(),
                source,
                name(&self.bos),
                name(&self.eos),
                self.unk.as_deref().unwrap_or(""),
                name(&self.pad),
            )?),
            None => None,
        };
        Ok(())
    }

    /// Use `text` (read from `source`, for messages) as the chat template instead of the
    /// model's.
    pub fn set_chat_template(&mut self, text: String, source: &Path) -> Result<()> {
        self.chat_template_source = Some((text, source.to_path_buf()));
        self.compile_template()
    }

    /// Make `token` the end of sequence: what training appends after a response, what
    /// templates call `eos_token`, and the first token generation stops at. It must be one token
    /// of the vocabulary.
    pub fn set_eos_token(&mut self, token: &str) -> Result<()> {
        let id = self.token_to_id(token).ok_or_else(|| {
            Error::invalid(format!(
                "--eos-token `{token}` is not a token of the tokenizer's vocabulary"
            ))
        })?;
        self.eos = Some((token.to_string(), id));
        self.stop_ids.retain(|&s| s != id);
        self.stop_ids.insert(0, id);
        self.compile_template()
    }

    /// Stop generation at `id` too (a chat template's end-of-turn token).
    pub fn add_stop_id(&mut self, id: u32) {
        if !self.stop_ids.contains(&id) {
            self.stop_ids.push(id);
        }
    }

    /// Token ids of `text`. With `add_special_tokens` the tokenizer's post-processor adds what
    /// it is configured to (e.g. bos), exactly as transformers' `tokenizer(text)` does.
    pub fn encode(&self, text: &str, add_special_tokens: bool) -> Result<Vec<u32>> {
        self.encoding(text, add_special_tokens)
            .map(|e| e.get_ids().to_vec())
    }

    /// The crate's encoding of `text`. It panics inside some malformed (yet parseable)
    /// normalizers and models: a panic is an error here, not a crash.
    fn encoding(&self, text: &str, add_special_tokens: bool) -> Result<tokenizers::Encoding> {
        guarded(|| self.inner.encode(text, add_special_tokens))?
            .map_err(|e| Error::invalid(format!("cannot tokenize text: {e}")))
    }

    /// Token ids with the byte span of each token in `text` (for label masks).
    pub fn encode_with_offsets(&self, text: &str, add_special_tokens: bool) -> Result<Encoded> {
        let encoding = self.encoding(text, add_special_tokens)?;
        Ok(Encoded {
            ids: encoding.get_ids().to_vec(),
            offsets: encoding.get_offsets().to_vec(),
        })
    }

    /// The text of `ids`.
    pub fn decode(&self, ids: &[u32], skip_special_tokens: bool) -> Result<String> {
        guarded(|| self.inner.decode(ids, skip_special_tokens))?
            .map_err(|e| Error::invalid(format!("cannot decode tokens: {e}")))
    }

    /// Tokens of the vocabulary (added tokens included).
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// The id of `token`.
    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// The bos token's text (`<s>`), which prompt templates write literally.
    pub fn bos_token(&self) -> Option<&str> {
        self.bos.as_ref().map(|(s, _)| s.as_str())
    }

    /// The eos token's text (`</s>`).
    pub fn eos_token(&self) -> Option<&str> {
        self.eos.as_ref().map(|(s, _)| s.as_str())
    }

    /// The beginning-of-sequence token's id.
    pub fn bos_id(&self) -> Option<u32> {
        self.bos.as_ref().map(|(_, id)| *id)
    }

    /// The end-of-sequence token's id.
    pub fn eos_id(&self) -> Option<u32> {
        self.eos.as_ref().map(|(_, id)| *id)
    }

    /// The padding id: the pad token, else eos (as the QLoRA recipe does).
    pub fn pad_id(&self) -> Option<u32> {
        self.pad.as_ref().map(|(_, id)| *id).or(self.eos_id())
    }

    /// The padding token `tokenizer_config.json` names, if any (not the eos fallback).
    pub fn configured_pad_id(&self) -> Option<u32> {
        self.pad.as_ref().map(|(_, id)| *id)
    }

    /// The unknown token.
    pub fn unk_token(&self) -> Option<&str> {
        self.unk.as_deref()
    }

    /// The ids generation stops at.
    pub fn stop_ids(&self) -> &[u32] {
        &self.stop_ids
    }

    /// The chat template as written in the model's files (or given instead of them).
    pub fn chat_template_text(&self) -> Option<&str> {
        self.chat_template_source.as_ref().map(|(t, _)| t.as_str())
    }

    /// The `tokenizers` tokenizer underneath (for its vocabulary and added tokens).
    pub fn backend(&self) -> &tokenizers::Tokenizer {
        &self.inner
    }

    /// The chat template, if the model has one.
    pub fn chat_template(&self) -> Option<&ChatTemplate> {
        self.chat_template.as_ref()
    }

    /// Render messages with the model's chat template.
    pub fn apply_chat_template(
        &self,
        messages: &[Message],
        add_generation_prompt: bool,
    ) -> Result<String> {
        self.apply_chat_template_with(messages, add_generation_prompt, &TemplateKwargs::default())
    }

    /// [`apply_chat_template`](Self::apply_chat_template) with the template's extra variables.
    pub fn apply_chat_template_with(
        &self,
        messages: &[Message],
        add_generation_prompt: bool,
        kwargs: &TemplateKwargs,
    ) -> Result<String> {
        self.chat_template
            .as_ref()
            .ok_or_else(|| {
                Error::invalid(
                    "the model has no chat template (chat_template.jinja or tokenizer_config.json)",
                )
            })?
            .render_with(messages, add_generation_prompt, &kwargs.0)
    }
}
