//! `tokenizer.ggml.*` metadata from a model directory's `tokenizer.json`, `tokenizer_config.json`
//! and `generation_config.json`, as llama.cpp's converter writes it: `gpt2` for byte-level BPE
//! (tokens, types, merges, the pre-tokenizer's name) or `llama` for SentencePiece-style BPE
//! with byte fallback (tokens, types, scores); the special tokens; the chat template; and the
//! end-of-turn token so generation stops.

use std::path::Path;

use serde_json::Value;

use super::writer::MetaValue;
use crate::error::{Error, Result};
use crate::gguf::keys;
use crate::gguf::tokenizer::{BYTE_LEVEL_PRE_TOKENIZERS, byte_level_pre_tokenizer};
use crate::text::{TOKENIZER_FILE, TextOverrides, Tokenizer};

/// llama.cpp's token types.
const NORMAL: i32 = 1;
const UNKNOWN: i32 = 2;
const CONTROL: i32 = 3;
const USER_DEFINED: i32 = 4;
const UNUSED: i32 = 5;
const BYTE: i32 = 6;

fn meta(key: &str, value: MetaValue) -> (String, MetaValue) {
    (key.to_string(), value)
}

/// A merge of `tokenizer.json` (`"a b"` or `["a", "b"]`) as GGUF writes it.
fn merge_text(merge: &Value) -> Option<String> {
    match merge {
        Value::String(s) => Some(s.clone()),
        Value::Array(parts) => match parts.as_slice() {
            [Value::String(a), Value::String(b)] => Some(format!("{a} {b}")),
            _ => None,
        },
        _ => None,
    }
}

/// The llama.cpp name of a byte-level pre-tokenizer, found by building each one we know and
/// comparing it with the file's; and whether it adds a prefix space.
fn pre_tokenizer_name(pre: &Value, path: &Path) -> Result<(&'static str, bool)> {
    for add_prefix_space in [false, true] {
        for name in BYTE_LEVEL_PRE_TOKENIZERS {
            let candidate = byte_level_pre_tokenizer(name, add_prefix_space)
                .map_err(|e| Error::file(path, e))?;
            let candidate = serde_json::to_value(&candidate).map_err(|e| Error::file(path, e))?;
            if candidate == *pre {
                return Ok((name, add_prefix_space));
            }
        }
    }
    Err(Error::key(
        path,
        "pre_tokenizer",
        format!(
            "this byte-level pre-tokenizer is not one llama.cpp knows by name ({}): {}",
            BYTE_LEVEL_PRE_TOKENIZERS.join(", "),
            pre.to_string().chars().take(160).collect::<String>()
        ),
    ))
}

/// The tokenizer metadata of the model in `dir`, for a vocabulary of `vocab_size` rows (the
/// embedding's; ids the tokenizer lacks become `[PAD{id}]`, as in llama.cpp's converter).
pub fn tokenizer_metadata(
    dir: &Path,
    vocab_size: usize,
    text: &TextOverrides,
) -> Result<Vec<(String, MetaValue)>> {
    let path = dir.join(TOKENIZER_FILE);
    let mut tokenizer = Tokenizer::load(dir)?;
    text.apply(&mut tokenizer)?;
    let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
    let json: Value = serde_json::from_str(&text)
        .map_err(|e| Error::file(&path, format!("invalid JSON: {e}")))?;
    let model = &json["model"];
    if model["type"] != "BPE" {
        return Err(Error::key(
            &path,
            "model.type",
            format!(
                "{}: only BPE tokenizers (byte-level like GPT-2, Llama 3, SmolLM, or \
                 SentencePiece-style like Llama 2) can be written to GGUF",
                model["type"]
            ),
        ));
    }
    let sentencepiece = model["byte_fallback"] == Value::Bool(true);
    let backend = tokenizer.backend();
    let vocab = backend.get_vocab(true);
    let size = vocab
        .values()
        .map(|&id| id as usize + 1)
        .max()
        .unwrap_or(0)
        .max(vocab_size);
    let mut tokens: Vec<Option<String>> = vec![None; size];
    for (token, id) in &vocab {
        tokens[*id as usize] = Some(token.clone());
    }
    let mut types = vec![NORMAL; size];
    for (id, added) in backend.get_added_tokens_decoder() {
        types[id as usize] = if added.special { CONTROL } else { USER_DEFINED };
    }
    let unk_id = tokenizer.unk_token().and_then(|t| tokenizer.token_to_id(t));
    let tokens: Vec<String> = tokens
        .into_iter()
        .enumerate()
        .map(|(id, token)| match token {
            Some(t) => {
                if sentencepiece && t.len() == 6 && t.starts_with("<0x") && t.ends_with('>') {
                    types[id] = BYTE;
                }
                t
            }
            None => {
                types[id] = UNUSED;
                format!("[PAD{id}]")
            }
        })
        .collect();
    if let Some(unk) = unk_id {
        types[unk as usize] = UNKNOWN;
    }
    let merges: Vec<String> = match model["merges"].as_array() {
        Some(list) => list
            .iter()
            .enumerate()
            .map(|(i, m)| {
                merge_text(m).ok_or_else(|| {
                    Error::key(&path, format!("model.merges[{i}]"), "not a pair of tokens")
                })
            })
            .collect::<Result<_>>()?,
        None => Vec::new(),
    };

    let mut out = Vec::new();
    if sentencepiece {
        // A token's score ranks the merge that makes it (the earlier, the higher), which is
        // how llama.cpp's SentencePiece tokenizer picks merges.
        let mut scores = vec![0f32; size];
        let mut seen = vec![false; size];
        for (rank, merge) in merges.iter().enumerate() {
            let merged: String = merge.split(' ').collect();
            if let Some(&id) = vocab.get(&merged)
                && !seen[id as usize]
            {
                seen[id as usize] = true;
                scores[id as usize] = -(rank as f32);
            }
        }
        let prefix = json["normalizer"].to_string().contains("Prepend");
        out.push(meta(
            keys::TOKENIZER_MODEL,
            MetaValue::String("llama".into()),
        ));
        out.push(meta(
            keys::TOKENIZER_PRE,
            MetaValue::String("default".into()),
        ));
        out.push(meta(keys::TOKENS, MetaValue::Strings(tokens)));
        out.push(meta(keys::SCORES, MetaValue::F32s(scores)));
        out.push(meta(keys::TOKEN_TYPE, MetaValue::I32s(types)));
        out.push(meta(keys::ADD_SPACE_PREFIX, MetaValue::Bool(prefix)));
    } else {
        if json["decoder"]["type"] != "ByteLevel" {
            return Err(Error::key(
                &path,
                "decoder",
                "a BPE tokenizer without byte fallback must be byte-level (GPT-2 style)",
            ));
        }
        let (pre, add_prefix_space) = pre_tokenizer_name(&json["pre_tokenizer"], &path)?;
        out.push(meta(
            keys::TOKENIZER_MODEL,
            MetaValue::String("gpt2".into()),
        ));
        out.push(meta(keys::TOKENIZER_PRE, MetaValue::String(pre.into())));
        out.push(meta(keys::TOKENS, MetaValue::Strings(tokens)));
        out.push(meta(keys::TOKEN_TYPE, MetaValue::I32s(types)));
        out.push(meta(keys::MERGES, MetaValue::Strings(merges)));
        if add_prefix_space {
            out.push(meta(keys::ADD_SPACE_PREFIX, MetaValue::Bool(true)));
        }
    }

    let template = tokenizer.chat_template_text().map(str::to_string);
    let bos = tokenizer.bos_id();
    let eos = tokenizer
        .eos_id()
        .or_else(|| tokenizer.stop_ids().first().copied());
    for (key, id) in [
        ("bos", bos),
        ("eos", eos),
        ("unknown", unk_id),
        ("padding", tokenizer.configured_pad_id()),
    ] {
        if let Some(id) = id {
            out.push(meta(&keys::token_id(key), MetaValue::U32(id)));
        }
    }
    // The end-of-turn token: another stop token that the chat template writes (`<|eot_id|>`,
    // `<|im_end|>`, ...), so llama.cpp stops at the end of a reply.
    if let Some(template) = &template
        && let Some(eot) = tokenizer.stop_ids().iter().copied().find(|&id| {
            Some(id) != eos
                && tokenizer
                    .backend()
                    .id_to_token(id)
                    .is_some_and(|t| template.contains(&t))
        })
    {
        out.push(meta("tokenizer.ggml.eot_token_id", MetaValue::U32(eot)));
    }
    let probe = tokenizer.encode("a", true)?;
    let add_bos = bos.is_some() && probe.first() == bos.as_ref();
    let add_eos = eos.is_some() && probe.len() > 1 && probe.last() == eos.as_ref();
    out.push(meta(keys::ADD_BOS, MetaValue::Bool(add_bos)));
    out.push(meta(keys::ADD_EOS, MetaValue::Bool(add_eos)));
    if let Some(template) = template {
        out.push(meta(keys::CHAT_TEMPLATE, MetaValue::String(template)));
    }
    Ok(out)
}
