//! Chat templates rendered the way transformers renders them: Jinja with `trim_blocks` and
//! `lstrip_blocks`, Python string methods, `raise_exception`, and the tokenizer's special
//! tokens as variables.

use std::path::{Path, PathBuf};

use minijinja::syntax::SyntaxConfig;
use minijinja::value::Serde;
use minijinja::{Environment, ErrorKind, Value, context};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// One chat turn, as in the OpenAI / transformers `messages` form.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    /// `system`, `user` or `assistant`.
    pub role: String,
    /// The message's text.
    pub content: String,
}

impl Message {
    /// A message of `role`.
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        Message {
            role: role.into(),
            content: content.into(),
        }
    }
}

/// A compiled chat template with the special tokens it may refer to.
pub struct ChatTemplate {
    env: Environment<'static>,
    source: PathBuf,
    bos_token: String,
    eos_token: String,
    unk_token: String,
    pad_token: String,
}

const NAME: &str = "chat";

fn raise_exception(message: String) -> std::result::Result<String, minijinja::Error> {
    Err(minijinja::Error::new(ErrorKind::InvalidOperation, message))
}

impl ChatTemplate {
    /// Compile `template`; `source` names where it came from for error messages.
    pub fn new(
        template: String,
        source: &Path,
        bos_token: &str,
        eos_token: &str,
        unk_token: &str,
        pad_token: &str,
    ) -> Result<Self> {
        let mut env = Environment::new();
        env.set_syntax(
            SyntaxConfig::builder()
                .trim_blocks(true)
                .lstrip_blocks(true)
                .build()
                .expect("default delimiters are valid"),
        );
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", raise_exception);
        env.add_template_owned(NAME, template)
            .map_err(|e| Error::file(source, format!("invalid chat template: {e}")))?;
        Ok(ChatTemplate {
            env,
            source: source.to_path_buf(),
            bos_token: bos_token.into(),
            eos_token: eos_token.into(),
            unk_token: unk_token.into(),
            pad_token: pad_token.into(),
        })
    }

    /// Render `messages`; with `add_generation_prompt` the text ends where the assistant's
    /// reply begins.
    pub fn render(&self, messages: &[Message], add_generation_prompt: bool) -> Result<String> {
        let template = self.env.get_template(NAME).expect("template was added");
        template
            .render(context! {
                messages => Value::from(Serde(messages)),
                add_generation_prompt => add_generation_prompt,
                bos_token => self.bos_token.as_str(),
                eos_token => self.eos_token.as_str(),
                unk_token => self.unk_token.as_str(),
                pad_token => self.pad_token.as_str(),
            })
            .map_err(|e| {
                let detail = e
                    .detail()
                    .map(str::to_string)
                    .unwrap_or_else(|| e.to_string());
                Error::file(&self.source, format!("chat template failed: {detail}"))
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn template(source: &str) -> ChatTemplate {
        ChatTemplate::new(
            source.into(),
            Path::new("t.jinja"),
            "<s>",
            "</s>",
            "<unk>",
            "</s>",
        )
        .unwrap()
    }

    #[test]
    fn python_methods_and_raise_exception() {
        let t = template(
            "{% for m in messages %}{% if m.role not in ['user', 'assistant'] %}\
             {{ raise_exception('bad role ' + m.role) }}{% endif %}\
             {{ bos_token }}[{{ m.role.upper() }}] {{ m.content.strip() }}{{ eos_token }}{% endfor %}",
        );
        let out = t.render(&[Message::new("user", "  hi  ")], false).unwrap();
        assert_eq!(out, "<s>[USER] hi</s>");
        let err = t.render(&[Message::new("tool", "x")], false).unwrap_err();
        assert!(err.to_string().contains("bad role tool"), "{err}");
    }

    #[test]
    fn trims_blocks_like_transformers() {
        let t = template("{% for m in messages %}\n  {{ m.content }}\n{% endfor %}\n");
        assert_eq!(
            t.render(&[Message::new("user", "a")], false).unwrap(),
            "  a\n"
        );
    }
}
