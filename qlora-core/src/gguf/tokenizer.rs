//! `tokenizer.json` (built with the `tokenizers` crate), `tokenizer_config.json` and
//! `generation_config.json` from a GGUF's `tokenizer.ggml.*` metadata.
//!
//! Two vocabularies exist: `gpt2` (byte-level BPE from tokens and merges, as in Llama 3 and
//! SmolLM) and `llama` (SentencePiece-style BPE with scores and byte fallback, as in Llama 1/2,
//! TinyLlama and Mistral). Both are rebuilt the way transformers' GGUF converter does.

use serde_json::{Value, json};
use tokenizers::decoders::byte_fallback::ByteFallback;
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::decoders::fuse::Fuse;
use tokenizers::decoders::sequence::Sequence as DecoderSequence;
use tokenizers::decoders::strip::Strip;
use tokenizers::models::bpe::{BPE, Vocab};
use tokenizers::normalizers::{Prepend, Replace, Sequence as NormalizerSequence};
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence as PreSequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::processors::template::TemplateProcessing;
use tokenizers::{
    AddedToken, DecoderWrapper, NormalizerWrapper, PostProcessorWrapper, PreTokenizerWrapper,
    SplitDelimiterBehavior, Tokenizer,
};

use super::config::architecture;
use super::file::GgufFile;
use super::keys;
use crate::config::Architecture;
use crate::error::{Error, Result};

/// ggml token types (llama.cpp's `llama_token_type`).
const TOKEN_UNKNOWN: i64 = 2;
const TOKEN_CONTROL: i64 = 3;
const TOKEN_USER_DEFINED: i64 = 4;

/// The tokenizer files of a model directory.
pub struct TokenizerFiles {
    /// `tokenizer.json`.
    pub tokenizer: Tokenizer,
    /// `tokenizer_config.json`: special tokens, `add_bos_token`, the chat template.
    pub tokenizer_config: Value,
    /// `generation_config.json`: the special tokens' ids.
    pub generation_config: Value,
}

/// The pre-tokenizer regex of Llama 3 (`tokenizer.ggml.pre` = `llama-bpe`).
const LLAMA3_PATTERN: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// The pre-tokenizer regex of Qwen 2 and 3 (`qwen2`): Llama 3's with every digit on its own.
const QWEN2_PATTERN: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// The tokenizer files transformers makes of the GGUF's `tokenizer.*` metadata.
pub fn tokenizer_files(gguf: &GgufFile) -> Result<TokenizerFiles> {
    let path = gguf.path();
    let (arch, arch_name) = architecture(gguf)?;
    let model = gguf
        .string(keys::TOKENIZER_MODEL)?
        .ok_or_else(|| Error::key(path, keys::TOKENIZER_MODEL, "missing metadata"))?;
    let tokens = gguf
        .strings(keys::TOKENS)?
        .ok_or_else(|| Error::key(path, keys::TOKENS, "missing metadata"))?;
    let types = gguf
        .integers(keys::TOKEN_TYPE)?
        .unwrap_or_else(|| vec![1; tokens.len()]);
    if types.len() != tokens.len() {
        return Err(Error::key(
            path,
            keys::TOKEN_TYPE,
            format!("{} types for {} tokens", types.len(), tokens.len()),
        ));
    }
    let id = |name: &str| -> Result<Option<u32>> {
        let key = keys::token_id(name);
        match gguf.usize(&key)? {
            Some(id) if id >= tokens.len() => Err(Error::key(
                path,
                key,
                format!(
                    "token id {id} is outside the vocabulary of {}",
                    tokens.len()
                ),
            )),
            other => Ok(other.map(|id| id as u32)),
        }
    };
    let bos = id("bos")?;
    let eos = id("eos")?;
    let unk = id("unknown")?;
    let pad = id("padding")?;
    let eot = id("eot")?;
    let eom = id("eom")?;

    let (mut tokenizer, default_add_bos) = match model {
        "gpt2" => (byte_level_bpe(gguf, &tokens)?, false),
        "llama" if arch == Architecture::Gemma3 => {
            (super::gemma_tokenizer::gemma_bpe(gguf, &tokens, unk)?, true)
        }
        "llama" => (sentencepiece_bpe(gguf, &tokens, &types, unk)?, true),
        other => {
            return Err(Error::key(
                path,
                keys::TOKENIZER_MODEL,
                format!("tokenizer `{other}` is not supported (gpt2 or llama)"),
            ));
        }
    };
    let add_bos = gguf.bool(keys::ADD_BOS)?.unwrap_or(default_add_bos);
    let add_eos = gguf.bool(keys::ADD_EOS)?.unwrap_or(false);

    // Control and user-defined tokens are matched whole before the model sees the text.
    let added: Vec<AddedToken> = tokens
        .iter()
        .zip(&types)
        .filter(|(_, t)| matches!(**t, TOKEN_CONTROL | TOKEN_USER_DEFINED | TOKEN_UNKNOWN))
        .map(|(token, t)| AddedToken::from(token.to_string(), *t != TOKEN_USER_DEFINED))
        .collect();
    let (special, user): (Vec<_>, Vec<_>) = added.into_iter().partition(|t| t.special);
    // A user-defined token the model's vocabulary does not spell (Gemma's runs of spaces,
    // respelled there) is left to the model, as transformers leaves it.
    let model_vocab = tokenizer.get_vocab(false);
    let user: Vec<AddedToken> = user
        .into_iter()
        .filter(|t| model_vocab.contains_key(&t.content))
        .collect();
    tokenizer.add_special_tokens(&special);
    tokenizer.add_tokens(&user);

    let token = |id: Option<u32>| id.map(|id| tokens[id as usize].to_string());
    let mut template = Vec::new();
    if add_bos && let Some(bos) = token(bos) {
        template.push(bos);
    }
    template.push("$A".to_string());
    if add_eos && let Some(eos) = token(eos) {
        template.push(eos);
    }
    if template.len() > 1 {
        let specials: Vec<(String, u32)> = [bos, eos]
            .into_iter()
            .flatten()
            .map(|id| (tokens[id as usize].to_string(), id))
            .collect();
        let processor = TemplateProcessing::builder()
            .try_single(template.join(" "))
            .and_then(|b| {
                let pair = format!("{} $B:1", template.join(" "));
                b.try_pair(pair)
            })
            .map_err(|e| Error::file(path, format!("tokenizer template: {e}")))?
            .special_tokens(specials)
            .build()
            .map_err(|e| Error::file(path, format!("tokenizer template: {e}")))?;
        tokenizer.with_post_processor(Some(PostProcessorWrapper::Template(processor)));
    } else if model == "gpt2" {
        tokenizer.with_post_processor(Some(PostProcessorWrapper::ByteLevel(ByteLevel::new(
            true, false, true,
        ))));
    }

    let mut tokenizer_config = json!({
        "tokenizer_class": "PreTrainedTokenizerFast",
        "add_bos_token": add_bos,
        "add_eos_token": add_eos,
        "clean_up_tokenization_spaces": false,
        "model_max_length": gguf.usize(&keys::arch(keys::CONTEXT_LENGTH, arch_name))?.unwrap_or(2048),
    });
    for (key, id) in [
        ("bos_token", bos),
        ("eos_token", eos),
        ("unk_token", unk),
        ("pad_token", pad),
    ] {
        if let Some(t) = token(id) {
            tokenizer_config[key] = json!(t);
        }
    }
    if let Some(template) = gguf.string(keys::CHAT_TEMPLATE)? {
        tokenizer_config["chat_template"] = json!(template);
    }

    let mut stop: Vec<u32> = [eos, eot, eom].into_iter().flatten().collect();
    stop.dedup();
    let mut generation_config = json!({});
    if let Some(bos) = bos {
        generation_config["bos_token_id"] = json!(bos);
    }
    match stop.len() {
        0 => {}
        1 => generation_config["eos_token_id"] = json!(stop[0]),
        _ => generation_config["eos_token_id"] = json!(stop),
    }
    if let Some(pad) = pad {
        generation_config["pad_token_id"] = json!(pad);
    }
    Ok(TokenizerFiles {
        tokenizer,
        tokenizer_config,
        generation_config,
    })
}

fn vocabulary(tokens: &[&str]) -> Vocab {
    let mut vocab = Vocab::default();
    for (id, token) in tokens.iter().enumerate() {
        // The first id wins when a token is listed twice, as in llama.cpp.
        vocab.entry(token.to_string()).or_insert(id as u32);
    }
    vocab
}

/// The names of byte-level pre-tokenizers (`tokenizer.ggml.pre`) we read and write, the name
/// llama.cpp's converter writes first.
pub const BYTE_LEVEL_PRE_TOKENIZERS: [&str; 4] = ["gpt-2", "smollm", "llama-bpe", "qwen2"];

/// The pre-tokenizer llama.cpp means by `name` (`tokenizer.ggml.pre`) for a byte-level BPE.
pub fn byte_level_pre_tokenizer(
    name: &str,
    add_prefix_space: bool,
) -> std::result::Result<PreTokenizerWrapper, String> {
    let byte_level = ByteLevel::new(add_prefix_space, true, true);
    Ok(match name {
        "default" | "gpt-2" | "gpt2" => byte_level.into(),
        // SmolLM: every digit on its own, then GPT-2's split.
        "smollm" => PreSequence::new(vec![Digits::new(true).into(), byte_level.into()]).into(),
        "llama-bpe" | "llama3" | "llama-v3" | "smaug-bpe" => {
            regex_then_bytes(LLAMA3_PATTERN, add_prefix_space)?
        }
        "qwen2" => regex_then_bytes(QWEN2_PATTERN, add_prefix_space)?,
        other => {
            return Err(format!(
                "pre-tokenizer `{other}` is not supported (default, gpt-2, smollm, llama-bpe, qwen2)"
            ));
        }
    })
}

/// A split on `pattern` (each match its own piece), then GPT-2's byte mapping without its own
/// regex: Llama 3's and Qwen's pre-tokenizers.
fn regex_then_bytes(
    pattern: &str,
    add_prefix_space: bool,
) -> std::result::Result<PreTokenizerWrapper, String> {
    let split = Split::new(
        SplitPattern::Regex(pattern.into()),
        SplitDelimiterBehavior::Isolated,
        false,
    )
    .map_err(|e| e.to_string())?;
    Ok(PreSequence::new(vec![
        split.into(),
        ByteLevel::new(add_prefix_space, true, false).into(),
    ])
    .into())
}

/// Byte-level BPE (GPT-2 style) with the pre-tokenizer llama.cpp names in `tokenizer.ggml.pre`.
fn byte_level_bpe(gguf: &GgufFile, tokens: &[&str]) -> Result<Tokenizer> {
    let path = gguf.path();
    let merges = gguf
        .strings(keys::MERGES)?
        .ok_or_else(|| Error::key(path, keys::MERGES, "missing metadata"))?;
    let merges = merges
        .iter()
        .enumerate()
        .map(|(i, m)| {
            m.split_once(' ')
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .ok_or_else(|| {
                    Error::key(
                        path,
                        keys::MERGES,
                        format!("merge {i} `{m}` is not two tokens separated by a space"),
                    )
                })
        })
        .collect::<Result<Vec<_>>>()?;
    let bpe = BPE::builder()
        .vocab_and_merges(vocabulary(tokens), merges)
        .build()
        .map_err(|e| Error::key(path, keys::MERGES, e))?;

    let pre = gguf.string(keys::TOKENIZER_PRE)?.unwrap_or("default");
    let add_prefix_space = gguf.bool(keys::ADD_SPACE_PREFIX)?.unwrap_or(false);
    let pre_tokenizer = byte_level_pre_tokenizer(pre, add_prefix_space)
        .map_err(|e| Error::key(path, keys::TOKENIZER_PRE, e))?;
    let mut tokenizer = Tokenizer::new(bpe);
    tokenizer.with_pre_tokenizer(Some(pre_tokenizer));
    tokenizer.with_decoder(Some(DecoderWrapper::ByteLevel(ByteLevelDecoder::default())));
    Ok(tokenizer)
}

/// SentencePiece-style BPE: merges are rebuilt from the scores (every split of a token into
/// two tokens, the merged token's score first), with byte fallback for unknown characters.
fn sentencepiece_bpe(
    gguf: &GgufFile,
    tokens: &[&str],
    types: &[i64],
    unk: Option<u32>,
) -> Result<Tokenizer> {
    let path = gguf.path();
    let scores = gguf
        .floats(keys::SCORES)?
        .ok_or_else(|| Error::key(path, keys::SCORES, "missing metadata"))?;
    if scores.len() != tokens.len() {
        return Err(Error::key(
            path,
            keys::SCORES,
            format!("{} scores for {} tokens", scores.len(), tokens.len()),
        ));
    }
    let vocab = vocabulary(tokens);
    let merges = sentencepiece_merges(tokens, &scores, &vocab);
    let mut builder = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .fuse_unk(true)
        .byte_fallback(true);
    let unk = unk.or_else(|| {
        types
            .iter()
            .position(|t| *t == TOKEN_UNKNOWN)
            .map(|i| i as u32)
    });
    if let Some(unk) = unk {
        builder = builder.unk_token(tokens[unk as usize].to_string());
    }
    let bpe = builder
        .build()
        .map_err(|e| Error::key(path, keys::TOKENS, e))?;

    let add_prefix_space = gguf.bool(keys::ADD_SPACE_PREFIX)?.unwrap_or(true);
    let mut normalizers: Vec<NormalizerWrapper> = Vec::new();
    if add_prefix_space {
        normalizers.push(Prepend::new("▁".into()).into());
    }
    normalizers.push(
        Replace::new(" ", "▁")
            .map_err(|e| Error::file(path, e))?
            .into(),
    );
    let mut decoders: Vec<DecoderWrapper> = vec![
        Replace::new("▁", " ")
            .map_err(|e| Error::file(path, e))?
            .into(),
        ByteFallback::new().into(),
        Fuse::new().into(),
    ];
    if add_prefix_space {
        decoders.push(Strip::new(' ', 1, 0).into());
    }
    let mut tokenizer = Tokenizer::new(bpe);
    tokenizer.with_normalizer(Some(NormalizerSequence::new(normalizers)));
    tokenizer.with_decoder(Some(DecoderSequence::new(decoders)));
    Ok(tokenizer)
}

/// Merges implied by a scored vocabulary, ordered as transformers orders them: by the merged
/// token's score (highest first), then by the scores of the two parts.
pub fn sentencepiece_merges(
    tokens: &[&str],
    scores: &[f32],
    vocab: &Vocab,
) -> Vec<(String, String)> {
    let score = |t: &str| vocab.get(t).map(|&id| scores[id as usize]);
    let mut merges: Vec<(String, String, f32)> = Vec::new();
    for (id, token) in tokens.iter().enumerate() {
        if vocab.get(*token) != Some(&(id as u32)) {
            continue;
        }
        let mut local: Vec<(String, String, f32, f32)> = token
            .char_indices()
            .skip(1)
            .filter_map(|(at, _)| {
                let (left, right) = token.split_at(at);
                Some((
                    left.to_string(),
                    right.to_string(),
                    score(left)?,
                    score(right)?,
                ))
            })
            .collect();
        local.sort_by(|a, b| {
            (b.2, b.3)
                .partial_cmp(&(a.2, a.3))
                .unwrap_or(std::cmp::Ordering::Equal)
        });
        merges.extend(local.into_iter().map(|(l, r, _, _)| (l, r, scores[id])));
    }
    merges.sort_by(|a, b| b.2.partial_cmp(&a.2).unwrap_or(std::cmp::Ordering::Equal));
    merges.into_iter().map(|(l, r, _)| (l, r)).collect()
}
