//! Gemma's tokenizer from a GGUF, as transformers rebuilds it (`gemma_tokenizer` of its GGUF
//! integration): SentencePiece BPE with byte fallback whose merges follow the order of the
//! vocabulary, not its scores.

use tokenizers::decoders::byte_fallback::ByteFallback;
use tokenizers::decoders::fuse::Fuse;
use tokenizers::decoders::sequence::Sequence as DecoderSequence;
use tokenizers::models::bpe::{BPE, Vocab};
use tokenizers::normalizers::Replace;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::{SplitDelimiterBehavior, Tokenizer};

use super::file::GgufFile;
use super::keys;
use crate::error::{Error, Result};

/// Gemma's SentencePiece BPE as transformers rebuilds it from a GGUF: whitespace tokens with a
/// space respelled as that many `▁` (the file stores real spaces), merges ranked by the order of the
/// tokens in the file (Gemma's scores do not follow its merge order), spaces made `▁` with no
/// prefix space, byte fallback.
pub(super) fn gemma_bpe(gguf: &GgufFile, tokens: &[&str], unk: Option<u32>) -> Result<Tokenizer> {
    let path = gguf.path();
    let respelled: Vec<String> = tokens
        .iter()
        .map(|t| {
            // transformers' test: a space in it, nothing but whitespace.
            if t.contains(' ') && t.chars().all(char::is_whitespace) {
                "▁".repeat(t.chars().count())
            } else {
                t.to_string()
            }
        })
        .collect();
    // A token listed twice keeps its last id, as transformers' dictionary does.
    let mut vocab = Vocab::default();
    for (id, token) in respelled.iter().enumerate() {
        vocab.insert(token.clone(), id as u32);
    }
    let merges = position_merges(&vocab);
    let mut builder = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .fuse_unk(true)
        .byte_fallback(true);
    if let Some(unk) = unk {
        builder = builder.unk_token(respelled[unk as usize].clone());
    }
    let bpe = builder
        .build()
        .map_err(|e| Error::key(path, keys::TOKENS, e))?;
    let mut tokenizer = Tokenizer::new(bpe);
    tokenizer.with_normalizer(Some(
        Replace::new(" ", "▁").map_err(|e| Error::file(path, e))?,
    ));
    tokenizer.with_pre_tokenizer(Some(
        Split::new(
            SplitPattern::String(" ".into()),
            SplitDelimiterBehavior::MergedWithPrevious,
            false,
        )
        .map_err(|e| Error::file(path, e))?,
    ));
    tokenizer.with_decoder(Some(DecoderSequence::new(vec![
        Replace::new("▁", " ")
            .map_err(|e| Error::file(path, e))?
            .into(),
        ByteFallback::new().into(),
        Fuse::new().into(),
    ])));
    Ok(tokenizer)
}

/// Merges of a vocabulary ranked by position, as transformers' `generate_merges` ranks them
/// with scores `-position`: by the merged token's (last) position, then the longer left part
/// first; a split only where both parts are tokens.
fn position_merges(vocab: &Vocab) -> Vec<(String, String)> {
    let mut order: Vec<(&str, u32)> = vocab.iter().map(|(t, &id)| (t.as_str(), id)).collect();
    order.sort_by_key(|&(_, id)| id);
    let mut merges = Vec::new();
    for (token, _) in order {
        let mut splits: Vec<usize> = token.char_indices().skip(1).map(|(at, _)| at).collect();
        // The longer left part first.
        splits.reverse();
        for at in splits {
            let (left, right) = token.split_at(at);
            if vocab.contains_key(left) && vocab.contains_key(right) {
                merges.push((left.to_string(), right.to_string()));
            }
        }
    }
    merges
}
