//! The GGUF importer on files the tests write (as llama.cpp's converter lays them out): the
//! fixture model round-trips to identical logits and tokens, a SentencePiece vocabulary
//! tokenizes as SentencePiece does, and bad files give errors naming what is wrong.

use std::path::Path;

use candle_core::quantized::gguf_file::{self, Value};
use candle_core::quantized::{GgmlDType, QTensor};
use candle_core::{Device, Tensor};
use qlora_core::FloatDtype;
use qlora_core::dtype::decode_f32;
use qlora_core::gguf::{ImportOptions, import_gguf};
use qlora_core::model::{Bits, CausalLm, LoadOptions};
use qlora_core::text::{Message, Tokenizer};
use support::{fixture, load_tensors};

/// llama.cpp's converter permutes q/k rows so that the two rotary halves interleave.
fn permute_rows(values: &[f32], rows: usize, heads: usize) -> Vec<f32> {
    let cols = values.len() / rows;
    let half = rows / heads / 2;
    let mut out = vec![0f32; values.len()];
    for h in 0..heads {
        for j in 0..2 {
            for i in 0..half {
                let hf = h * 2 * half + j * half + i;
                let gg = h * 2 * half + 2 * i + j;
                out[gg * cols..(gg + 1) * cols]
                    .copy_from_slice(&values[hf * cols..(hf + 1) * cols]);
            }
        }
    }
    out
}

fn gguf_name(hf: &str) -> String {
    let fixed = [
        ("model.embed_tokens.weight", "token_embd.weight"),
        ("model.norm.weight", "output_norm.weight"),
        ("lm_head.weight", "output.weight"),
    ];
    if let Some((_, g)) = fixed.iter().find(|(h, _)| *h == hf) {
        return g.to_string();
    }
    let rest = hf.strip_prefix("model.layers.").unwrap();
    let (layer, rest) = rest.split_once('.').unwrap();
    let module = [
        ("input_layernorm.weight", "attn_norm.weight"),
        ("post_attention_layernorm.weight", "ffn_norm.weight"),
        ("self_attn.q_proj.weight", "attn_q.weight"),
        ("self_attn.k_proj.weight", "attn_k.weight"),
        ("self_attn.v_proj.weight", "attn_v.weight"),
        ("self_attn.o_proj.weight", "attn_output.weight"),
        ("mlp.gate_proj.weight", "ffn_gate.weight"),
        ("mlp.up_proj.weight", "ffn_up.weight"),
        ("mlp.down_proj.weight", "ffn_down.weight"),
    ]
    .iter()
    .find(|(h, _)| *h == rest)
    .unwrap()
    .1;
    format!("blk.{layer}.{module}")
}

fn tensor(values: Vec<f32>, shape: &[usize], dtype: GgmlDType) -> QTensor {
    let t = Tensor::from_vec(values, shape, &Device::Cpu).unwrap();
    QTensor::quantize(&t, dtype).unwrap()
}

fn strings(items: &[&str]) -> Value {
    Value::Array(items.iter().map(|s| Value::String(s.to_string())).collect())
}

fn write_gguf(path: &Path, metadata: &[(&str, Value)], tensors: &[(String, QTensor)]) {
    let mut file = std::fs::File::create(path).unwrap();
    let metadata: Vec<(&str, &Value)> = metadata.iter().map(|(k, v)| (*k, v)).collect();
    let tensors: Vec<(&str, &QTensor)> = tensors.iter().map(|(k, v)| (k.as_str(), v)).collect();
    gguf_file::write(&mut file, &metadata, &tensors).unwrap();
}

fn llama_metadata() -> Vec<(&'static str, Value)> {
    vec![
        ("general.architecture", Value::String("llama".into())),
        ("llama.block_count", Value::U32(2)),
        ("llama.context_length", Value::U32(256)),
        ("llama.embedding_length", Value::U32(128)),
        ("llama.feed_forward_length", Value::U32(384)),
        ("llama.attention.head_count", Value::U32(4)),
        ("llama.attention.head_count_kv", Value::U32(2)),
        ("llama.rope.freq_base", Value::F32(10000.0)),
        ("llama.rope.dimension_count", Value::U32(32)),
        ("llama.attention.layer_norm_rms_epsilon", Value::F32(1e-5)),
    ]
}

/// `tests/fixtures/tiny-llama` written as llama.cpp would: f32 tensors, q/k permuted, the
/// byte-level BPE vocabulary and merges as metadata.
fn tiny_llama_gguf(path: &Path) {
    let weights = load_tensors("tiny-llama/model.safetensors");
    let mut tensors = Vec::new();
    for (name, (dtype, shape, bytes)) in &weights {
        let dtype = FloatDtype::from_safetensors(*dtype).unwrap();
        let mut values = decode_f32(bytes, dtype);
        if name.ends_with("q_proj.weight") {
            values = permute_rows(&values, shape[0], 4);
        } else if name.ends_with("k_proj.weight") {
            values = permute_rows(&values, shape[0], 2);
        }
        tensors.push((gguf_name(name), tensor(values, shape, GgmlDType::F32)));
    }
    let json: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(fixture("tiny-llama/tokenizer.json")).unwrap(),
    )
    .unwrap();
    let vocab = json["model"]["vocab"].as_object().unwrap();
    let mut tokens = vec![String::new(); vocab.len()];
    for (token, id) in vocab {
        tokens[id.as_u64().unwrap() as usize] = token.clone();
    }
    let merges: Vec<String> = json["model"]["merges"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| {
            let pair = m.as_array().unwrap();
            format!(
                "{} {}",
                pair[0].as_str().unwrap(),
                pair[1].as_str().unwrap()
            )
        })
        .collect();
    let special: Vec<&str> = json["added_tokens"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["content"].as_str().unwrap())
        .collect();
    let types = Value::Array(
        tokens
            .iter()
            .map(|t| Value::I32(if special.contains(&t.as_str()) { 3 } else { 1 }))
            .collect(),
    );
    let template = std::fs::read_to_string(fixture("tiny-llama/chat_template.jinja")).unwrap();
    let token_refs: Vec<&str> = tokens.iter().map(String::as_str).collect();
    let merge_refs: Vec<&str> = merges.iter().map(String::as_str).collect();
    let mut metadata = llama_metadata();
    metadata.extend([
        ("tokenizer.ggml.model", Value::String("gpt2".into())),
        ("tokenizer.ggml.pre", Value::String("default".into())),
        ("tokenizer.ggml.tokens", strings(&token_refs)),
        ("tokenizer.ggml.token_type", types),
        ("tokenizer.ggml.merges", strings(&merge_refs)),
        ("tokenizer.ggml.bos_token_id", Value::U32(1)),
        ("tokenizer.ggml.eos_token_id", Value::U32(2)),
        ("tokenizer.ggml.unknown_token_id", Value::U32(0)),
        ("tokenizer.ggml.padding_token_id", Value::U32(2)),
        ("tokenizer.ggml.add_bos_token", Value::Bool(false)),
        ("tokenizer.chat_template", Value::String(template)),
    ]);
    write_gguf(path, &metadata, &tensors);
}

fn f32_options() -> ImportOptions {
    ImportOptions {
        dtype: FloatDtype::F32,
        ..ImportOptions::default()
    }
}

#[test]
fn fixture_model_round_trips_through_gguf() {
    let tmp = tempfile::tempdir().unwrap();
    let gguf = tmp.path().join("tiny.gguf");
    tiny_llama_gguf(&gguf);
    let out = tmp.path().join("imported");
    let summary = import_gguf(&gguf, &out, &f32_options()).unwrap();
    assert_eq!(summary.tensors, 21);

    let dense = LoadOptions {
        bits: Bits::Sixteen,
        ..LoadOptions::default()
    };
    let original = CausalLm::load(fixture("tiny-llama"), &dense).unwrap();
    let imported = CausalLm::load(&out, &dense).unwrap();
    let ids = vec![vec![1u32, 642, 409, 16, 316, 433, 323, 411, 423, 339, 393]];
    let a: Vec<f32> = original
        .forward(&ids, None, None)
        .unwrap()
        .into_data()
        .try_into_vec()
        .unwrap();
    let b: Vec<f32> = imported
        .forward(&ids, None, None)
        .unwrap()
        .into_data()
        .try_into_vec()
        .unwrap();
    assert_eq!(
        a, b,
        "q/k un-permuted, every tensor in place: identical logits"
    );

    let reference = Tokenizer::load(fixture("tiny-llama")).unwrap();
    let tokenizer = Tokenizer::load(&out).unwrap();
    let cases: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(fixture("tiny-llama/tokenizer_cases.json")).unwrap(),
    )
    .unwrap();
    for (text, expected) in cases.as_object().unwrap() {
        let expected: Vec<u32> = expected
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap() as u32)
            .collect();
        assert_eq!(tokenizer.encode(text, true).unwrap(), expected, "{text:?}");
        assert_eq!(
            tokenizer.decode(&expected, false).unwrap(),
            reference.decode(&expected, false).unwrap()
        );
    }
    let messages = [Message::new("user", "hi")];
    assert_eq!(
        tokenizer.apply_chat_template(&messages, true).unwrap(),
        reference.apply_chat_template(&messages, true).unwrap()
    );
    assert_eq!(tokenizer.eos_id(), Some(2));
    assert_eq!(tokenizer.pad_id(), Some(2));

    // bf16 output holds the same values rounded, and the directory is complete.
    let out16 = tmp.path().join("imported-bf16");
    import_gguf(&gguf, &out16, &ImportOptions::default()).unwrap();
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out16.join("config.json")).unwrap()).unwrap();
    assert_eq!(config["dtype"], "bfloat16");
    assert_eq!(config["tie_word_embeddings"], false);
    assert_eq!(config["rms_norm_eps"], 1e-5);
    CausalLm::load(&out16, &LoadOptions::default()).unwrap();
}

/// A SentencePiece-style vocabulary (`tokenizer.ggml.model` = `llama`): scores, byte tokens,
/// control tokens; merges rebuilt from scores.
fn sentencepiece_gguf(path: &Path) {
    let mut tokens: Vec<String> = vec!["<unk>".into(), "<s>".into(), "</s>".into()];
    let mut types = vec![2, 3, 3];
    let mut scores = vec![0.0f32; 3];
    for b in 0..=255u8 {
        tokens.push(format!("<0x{b:02X}>"));
        types.push(6);
        scores.push(0.0);
    }
    let pieces = [
        ("▁", -1.0),
        ("h", -2.0),
        ("e", -2.0),
        ("l", -2.0),
        ("o", -2.0),
        ("w", -2.0),
        ("r", -2.0),
        ("d", -2.0),
        ("▁h", -3.0),
        ("ll", -4.0),
        ("▁he", -5.0),
        ("llo", -6.0),
        ("▁hello", -7.0),
        ("▁w", -8.0),
        ("or", -9.0),
        ("▁wor", -10.0),
        ("ld", -11.0),
        ("▁world", -12.0),
    ];
    for (piece, score) in pieces {
        tokens.push(piece.to_string());
        types.push(1);
        scores.push(score);
    }
    let n = tokens.len();
    let token_refs: Vec<&str> = tokens.iter().map(String::as_str).collect();
    let mut metadata = llama_metadata();
    metadata.extend([
        ("tokenizer.ggml.model", Value::String("llama".into())),
        ("tokenizer.ggml.tokens", strings(&token_refs)),
        (
            "tokenizer.ggml.token_type",
            Value::Array(types.into_iter().map(Value::I32).collect()),
        ),
        (
            "tokenizer.ggml.scores",
            Value::Array(scores.into_iter().map(Value::F32).collect()),
        ),
        ("tokenizer.ggml.bos_token_id", Value::U32(1)),
        ("tokenizer.ggml.eos_token_id", Value::U32(2)),
        ("tokenizer.ggml.unknown_token_id", Value::U32(0)),
    ]);
    let tensors = vec![(
        "token_embd.weight".to_string(),
        tensor(vec![0.5; n * 128], &[n, 128], GgmlDType::F16),
    )];
    write_gguf(path, &metadata, &tensors);
}

#[test]
fn sentencepiece_vocabulary_tokenizes_like_sentencepiece() {
    let tmp = tempfile::tempdir().unwrap();
    let gguf = tmp.path().join("spm.gguf");
    sentencepiece_gguf(&gguf);
    let gguf_file = qlora_core::gguf::GgufFile::open(&gguf).unwrap();
    let files = qlora_core::gguf::tokenizer::tokenizer_files(&gguf_file).unwrap();
    let tokenizer = files.tokenizer;
    let id = |t: &str| tokenizer.token_to_id(t).unwrap();
    let encode = |text: &str, special: bool| -> Vec<u32> {
        tokenizer.encode(text, special).unwrap().get_ids().to_vec()
    };
    // A space prefix, whole-word merges, bos added by default.
    assert_eq!(encode("hello world", false), [id("▁hello"), id("▁world")]);
    assert_eq!(encode("hello world", true), [1, id("▁hello"), id("▁world")]);
    // Unknown characters fall back to their UTF-8 bytes.
    assert_eq!(encode("hé", false), [id("▁h"), id("<0xC3>"), id("<0xA9>")]);
    assert_eq!(
        tokenizer
            .decode(&encode("hello hé world", false), false)
            .unwrap(),
        "hello hé world"
    );
    assert_eq!(
        encode("</s>", false),
        [2],
        "control tokens are matched whole"
    );
    assert_eq!(files.tokenizer_config["bos_token"], "<s>");
    assert_eq!(files.tokenizer_config["add_bos_token"], true);
}

#[test]
fn bad_files_are_errors_naming_the_problem() {
    let tmp = tempfile::tempdir().unwrap();
    let good = tmp.path().join("tiny.gguf");
    tiny_llama_gguf(&good);
    let bytes = std::fs::read(&good).unwrap();
    let out = tmp.path().join("out");

    let truncated = tmp.path().join("truncated.gguf");
    std::fs::write(&truncated, &bytes[..bytes.len() - 1000]).unwrap();
    let err = import_gguf(&truncated, &out, &f32_options())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("truncated.gguf") && err.contains("past the end"),
        "{err}"
    );

    let header_only = tmp.path().join("header.gguf");
    std::fs::write(&header_only, &bytes[..100]).unwrap();
    let err = import_gguf(&header_only, &out, &f32_options())
        .unwrap_err()
        .to_string();
    assert!(err.contains("header.gguf") && err.contains("GGUF"), "{err}");

    let not_gguf = tmp.path().join("not.gguf");
    std::fs::write(&not_gguf, b"definitely not a gguf file").unwrap();
    let err = import_gguf(&not_gguf, &out, &f32_options())
        .unwrap_err()
        .to_string();
    assert!(err.contains("not.gguf"), "{err}");

    let mut metadata = llama_metadata();
    metadata[0] = ("general.architecture", Value::String("phi2".into()));
    let other = tmp.path().join("phi2.gguf");
    write_gguf(
        &other,
        &metadata,
        &[(
            "token_embd.weight".into(),
            tensor(vec![0.0; 256], &[2, 128], GgmlDType::F32),
        )],
    );
    let err = import_gguf(&other, &out, &f32_options())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("general.architecture")
            && err
                .contains("`phi2` is not supported (supported: llama, qwen2, qwen3, gemma3, phi3)"),
        "{err}"
    );

    let q2k = tmp.path().join("q2k.gguf");
    write_gguf(
        &q2k,
        &llama_metadata(),
        &[(
            "blk.0.attn_q.weight".into(),
            tensor(vec![0.25; 256 * 128], &[128, 256], GgmlDType::Q2K),
        )],
    );
    let err = import_gguf(&q2k, &out, &f32_options())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("blk.0.attn_q.weight") && err.contains("Q2_K"),
        "{err}"
    );
    assert!(!out.exists(), "nothing written on failure");
}

/// The cache keeps an import until it is damaged: a truncated or missing file is noticed and
/// the GGUF imported again; an input that cannot be imported says how to clear the entry.
#[test]
fn damaged_cache_entries_are_imported_again() {
    use qlora_core::gguf::resolve_gguf_in;
    let tmp = tempfile::tempdir().unwrap();
    let gguf = tmp.path().join("tiny.gguf");
    tiny_llama_gguf(&gguf);
    let cache = tmp.path().join("cache");
    let dir = resolve_gguf_in(&gguf, &cache).unwrap();
    let weights = dir.join("model.safetensors");
    let complete = std::fs::read(&weights).unwrap();
    let modified = std::fs::metadata(&weights).unwrap().modified().unwrap();
    // Used as is the second time.
    assert_eq!(resolve_gguf_in(&gguf, &cache).unwrap(), dir);
    assert_eq!(
        std::fs::metadata(&weights).unwrap().modified().unwrap(),
        modified
    );

    // Truncated (a full disk, a killed copy): imported again, whole.
    std::fs::write(&weights, &complete[..complete.len() / 2]).unwrap();
    assert_eq!(resolve_gguf_in(&gguf, &cache).unwrap(), dir);
    assert_eq!(std::fs::read(&weights).unwrap(), complete);
    // A file gone.
    std::fs::remove_file(dir.join("config.json")).unwrap();
    resolve_gguf_in(&gguf, &cache).unwrap();
    assert!(dir.join("config.json").is_file());
    CausalLm::load(&dir, &LoadOptions::default()).unwrap();
    // An entry without its manifest (an import killed before it finished) is redone too.
    std::fs::remove_file(dir.join(".qlora-import.json")).unwrap();
    std::fs::write(&weights, b"garbage").unwrap();
    resolve_gguf_in(&gguf, &cache).unwrap();
    assert_eq!(std::fs::read(&weights).unwrap(), complete);
}

/// The SentencePiece vocabulary through a model directory and back into GGUF metadata (what
/// `qlora export-gguf` writes): the rebuilt tokenizer tokenizes as the original.
#[test]
fn a_sentencepiece_vocabulary_exports_back_to_gguf() {
    use qlora_core::export::vocab::tokenizer_metadata;
    use qlora_core::export::writer::{MetaValue, TensorEntry, write_gguf as write_ours};
    let tmp = tempfile::tempdir().unwrap();
    let gguf = tmp.path().join("spm.gguf");
    sentencepiece_gguf(&gguf);
    let original = qlora_core::gguf::tokenizer::tokenizer_files(
        &qlora_core::gguf::GgufFile::open(&gguf).unwrap(),
    )
    .unwrap();
    let dir = tmp.path().join("dir");
    std::fs::create_dir(&dir).unwrap();
    original
        .tokenizer
        .save(dir.join("tokenizer.json"), false)
        .unwrap();
    for (name, value) in [
        ("tokenizer_config.json", &original.tokenizer_config),
        ("generation_config.json", &original.generation_config),
    ] {
        std::fs::write(dir.join(name), value.to_string()).unwrap();
    }
    let vocab = original.tokenizer.get_vocab_size(true);
    let mut metadata = vec![(
        "general.architecture".to_string(),
        MetaValue::String("llama".into()),
    )];
    metadata.extend(tokenizer_metadata(&dir, vocab, &Default::default()).unwrap());
    let exported = tmp.path().join("exported.gguf");
    let tensor = TensorEntry {
        name: "token_embd.weight".into(),
        shape: vec![vocab, 32],
        dtype: GgmlDType::F32,
        bytes: Box::new(move || Ok(vec![0u8; vocab * 32 * 4])),
    };
    write_ours(&exported, &metadata, vec![tensor]).unwrap();
    let back = qlora_core::gguf::tokenizer::tokenizer_files(
        &qlora_core::gguf::GgufFile::open(&exported).unwrap(),
    )
    .unwrap();
    for text in [
        "hello world",
        "hello hé world",
        "</s>hello",
        "wor ld  hello",
        "ó",
    ] {
        for special in [false, true] {
            let ids =
                |t: &tokenizers::Tokenizer| t.encode(text, special).unwrap().get_ids().to_vec();
            assert_eq!(ids(&back.tokenizer), ids(&original.tokenizer), "{text:?}");
        }
    }
    assert_eq!(back.tokenizer_config["add_bos_token"], true);
}
