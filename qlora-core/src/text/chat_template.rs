//! Chat templates rendered the way transformers renders them: Jinja with `trim_blocks` and
//! `lstrip_blocks`, Python string methods, loop controls, transformers' globals
//! (`raise_exception`, `strftime_now`) and `tojson` (Python's `json.dumps`, no HTML escaping),
//! the tokenizer's special tokens, `tools` and `documents` as `none`, and the caller's extra
//! variables (`enable_thinking`, `date_string`, ...) as `apply_chat_template`'s keyword
//! arguments.

use std::path::{Path, PathBuf};

use minijinja::syntax::SyntaxConfig;
use minijinja::value::{Kwargs, Serde, ValueKind};
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

/// Extra variables for a chat template, as `apply_chat_template`'s keyword arguments
/// (`--chat-template-kwargs '{"enable_thinking": false}'`, vLLM's flag).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct TemplateKwargs(pub serde_json::Map<String, serde_json::Value>);

impl std::str::FromStr for TemplateKwargs {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        serde_json::from_str(s).map(TemplateKwargs).map_err(|e| {
            format!("expected a JSON object such as '{{\"enable_thinking\": false}}': {e}")
        })
    }
}

impl std::fmt::Display for TemplateKwargs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", serde_json::Value::Object(self.0.clone()))
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

/// transformers' `strftime_now(format)`: the local time, formatted as Python's `strftime`.
fn strftime_now(format: String) -> std::result::Result<String, minijinja::Error> {
    use std::fmt::Write;
    let mut out = String::new();
    write!(out, "{}", chrono::Local::now().format(&format)).map_err(|_| {
        minijinja::Error::new(
            ErrorKind::InvalidOperation,
            format!("strftime_now: invalid format {format:?}"),
        )
    })?;
    Ok(out)
}

/// transformers' `tojson` filter: `json.dumps(x, ensure_ascii=False, indent=None,
/// separators=None, sort_keys=False)`, which Jinja's own filter is not (it escapes HTML).
fn tojson(value: Value, kwargs: Kwargs) -> std::result::Result<Value, minijinja::Error> {
    let indent: Option<Value> = kwargs.get("indent")?;
    let indent = match indent {
        Some(v) if v.is_none() => None,
        Some(v) => Some(match v.as_usize() {
            Some(n) => " ".repeat(n),
            None => v.as_str().map(str::to_string).ok_or_else(|| {
                minijinja::Error::new(
                    ErrorKind::InvalidOperation,
                    "tojson: indent must be an integer or a string",
                )
            })?,
        }),
        None => None,
    };
    let ensure_ascii = kwargs.get::<Option<bool>>("ensure_ascii")?.unwrap_or(false);
    let sort_keys = kwargs.get::<Option<bool>>("sort_keys")?.unwrap_or(false);
    let separators: Option<Vec<String>> = kwargs.get("separators")?;
    kwargs.assert_all_used()?;
    let (item, key) = match separators.as_deref() {
        Some([item, key]) => (item.clone(), key.clone()),
        Some(_) => {
            return Err(minijinja::Error::new(
                ErrorKind::InvalidOperation,
                "tojson: separators must be two strings",
            ));
        }
        None if indent.is_some() => (",".into(), ": ".into()),
        None => (", ".into(), ": ".into()),
    };
    let style = JsonStyle {
        indent,
        item,
        key,
        ensure_ascii,
        sort_keys,
    };
    let mut out = String::new();
    style.write(&value, 0, &mut out)?;
    Ok(Value::from_safe_string(out))
}

type JsonResult = std::result::Result<(), minijinja::Error>;

fn json_error(e: serde_json::Error) -> minijinja::Error {
    minijinja::Error::new(ErrorKind::InvalidOperation, format!("tojson: {e}"))
}

/// How Python's `json.dumps` lays a value out.
struct JsonStyle {
    indent: Option<String>,
    item: String,
    key: String,
    ensure_ascii: bool,
    sort_keys: bool,
}

impl JsonStyle {
    fn newline(&self, level: usize, out: &mut String) {
        if let Some(indent) = &self.indent {
            out.push('\n');
            (0..level).for_each(|_| out.push_str(indent));
        }
    }

    fn string(&self, s: &str, out: &mut String) {
        out.push('"');
        for c in s.chars() {
            match c {
                '"' => out.push_str("\\\""),
                '\\' => out.push_str("\\\\"),
                '\n' => out.push_str("\\n"),
                '\r' => out.push_str("\\r"),
                '\t' => out.push_str("\\t"),
                '\u{8}' => out.push_str("\\b"),
                '\u{c}' => out.push_str("\\f"),
                c if (c as u32) < 0x20 || (self.ensure_ascii && !c.is_ascii()) => {
                    let mut units = [0u16; 2];
                    for unit in c.encode_utf16(&mut units) {
                        out.push_str(&format!("\\u{unit:04x}"));
                    }
                }
                c => out.push(c),
            }
        }
        out.push('"');
    }

    fn write(&self, value: &Value, level: usize, out: &mut String) -> JsonResult {
        match value.kind() {
            ValueKind::Undefined | ValueKind::None => out.push_str("null"),
            ValueKind::Bool => out.push_str(if value.is_true() { "true" } else { "false" }),
            ValueKind::Number => match serde_json::to_value(value).map_err(json_error)? {
                // Python writes a float with a fractional part (`1.0`), an int without
                serde_json::Value::Number(n)
                    if n.is_f64() && n.as_f64().is_some_and(|f| f.fract() == 0.0) =>
                {
                    out.push_str(&format!("{:.1}", n.as_f64().unwrap_or_default()))
                }
                n => out.push_str(&n.to_string()),
            },
            ValueKind::String => self.string(value.as_str().unwrap_or_default(), out),
            ValueKind::Seq | ValueKind::Iterable => {
                let items: Vec<Value> = value.try_iter()?.collect();
                if items.is_empty() {
                    out.push_str("[]");
                    return Ok(());
                }
                out.push('[');
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        out.push_str(&self.item);
                    }
                    self.newline(level + 1, out);
                    self.write(item, level + 1, out)?;
                }
                self.newline(level, out);
                out.push(']');
            }
            ValueKind::Map => {
                // In the map's own order (Python's dicts keep insertion order), unless sorted.
                let mut keys: Vec<Value> = value.try_iter()?.collect();
                if keys.is_empty() {
                    out.push_str("{}");
                    return Ok(());
                }
                if self.sort_keys {
                    keys.sort();
                }
                out.push('{');
                for (i, key) in keys.iter().enumerate() {
                    if i > 0 {
                        out.push_str(&self.item);
                    }
                    self.newline(level + 1, out);
                    self.string(&key.to_string(), out);
                    out.push_str(&self.key);
                    self.write(&value.get_item(key)?, level + 1, out)?;
                }
                self.newline(level, out);
                out.push('}');
            }
            kind => {
                return Err(minijinja::Error::new(
                    ErrorKind::InvalidOperation,
                    format!("tojson: a {kind} is not JSON serializable"),
                ));
            }
        }
        Ok(())
    }
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
        env.add_function("strftime_now", strftime_now);
        env.add_filter("tojson", tojson);
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
        self.render_with(messages, add_generation_prompt, &serde_json::Map::new())
    }

    /// [`render`](Self::render) with extra variables, as `apply_chat_template`'s keyword
    /// arguments (Qwen3's `enable_thinking`, Llama 3's `date_string`); they override the
    /// defaults.
    pub fn render_with(
        &self,
        messages: &[Message],
        add_generation_prompt: bool,
        kwargs: &serde_json::Map<String, serde_json::Value>,
    ) -> Result<String> {
        let template = self.env.get_template(NAME).expect("template was added");
        let defaults = context! {
            messages => Value::from(Serde(messages)),
            tools => Value::from(()),
            documents => Value::from(()),
            add_generation_prompt => add_generation_prompt,
            bos_token => self.bos_token.as_str(),
            eos_token => self.eos_token.as_str(),
            unk_token => self.unk_token.as_str(),
            pad_token => self.pad_token.as_str(),
        };
        template
            .render(context! { ..Value::from(Serde(kwargs)), ..defaults })
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

    /// Python's `json.dumps` output (these strings are what Python 3.11 prints), and the date.
    #[test]
    fn tojson_and_strftime_now_as_transformers() {
        let t = template(
            "{% set x = {'name': 'f', 'args': {'b': [1, 2.0, '<b>é\n'], 'a': none, 'e': [], 'o': {}}} %}\
             {{ x | tojson }}|{{ x | tojson(indent=2, sort_keys=true) }}|{{ 'é' | tojson(ensure_ascii=true) }}|\
             {{ strftime_now('%Y') }}",
        );
        let out = t.render(&[], false).unwrap();
        let year = chrono::Local::now().format("%Y").to_string();
        assert_eq!(
            out,
            format!(
                "{}|{}|{}|{year}",
                r#"{"name": "f", "args": {"b": [1, 2.0, "<b>é\n"], "a": null, "e": [], "o": {}}}"#,
                "{\n  \"args\": {\n    \"a\": null,\n    \"b\": [\n      1,\n      2.0,\n      \"<b>é\\n\"\n    ],\n    \"e\": [],\n    \"o\": {}\n  },\n  \"name\": \"f\"\n}",
                r#""\u00e9""#,
            )
        );
    }

    /// Keyword arguments reach the template; `tools` and `documents` are defined as none.
    #[test]
    fn keyword_arguments_and_none_defaults() {
        let t = template(
            "{{ tools is defined and tools is none }} {{ documents is none }} \
             {{ enable_thinking is defined and enable_thinking is false }}",
        );
        let kwargs = serde_json::json!({"enable_thinking": false});
        let out = t
            .render_with(&[], false, kwargs.as_object().unwrap())
            .unwrap();
        // Jinja prints Python's booleans
        assert_eq!(out, "True True True");
        assert_eq!(t.render(&[], false).unwrap(), "True True False");
    }
}
