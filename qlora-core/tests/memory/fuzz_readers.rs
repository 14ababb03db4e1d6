//! Every reader of user files against a few hundred mutated inputs each (seeded, so a run is
//! repeatable): no panic, no input over a second, no allocation far beyond the input's size.
//! `cargo run --release --example fuzz_readers -- EXECS` runs as many as asked.

use support::fuzz::{fuzz, targets};

#[test]
fn readers_survive_mutated_inputs() {
    let _alone = support::alloc::alone();
    let work = tempfile::tempdir().unwrap();
    let mut failures = Vec::new();
    for (i, target) in targets(work.path()).iter().enumerate() {
        let report = fuzz(target, 300, 0x5eed + i as u64);
        eprintln!(
            "{:<32} {:>6} inputs, {:>5.1}% rejected, {:>8.0}/s, slowest {:?}, {} findings",
            target.name,
            report.execs,
            100.0 * report.rejected as f64 / report.execs as f64,
            report.execs as f64 / report.seconds,
            report.slowest,
            report.findings.len()
        );
        for (k, f) in report.findings.into_iter().enumerate() {
            // Kept for reproducing: the input that failed, in full.
            let saved = std::env::temp_dir()
                .join("qlora-fuzz-findings")
                .join(format!(
                    "{}-{k}",
                    target.name.replace([' ', '(', ')', '/'], "_")
                ));
            std::fs::create_dir_all(saved.parent().unwrap()).unwrap();
            std::fs::write(&saved, &f.input).unwrap();
            failures.push(format!(
                "{}: {} ({}), input saved in {}",
                target.name,
                f.kind,
                f.detail,
                saved.display()
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// What the long run found in the GGUF reader (dimensions whose product overflows, offsets
/// past the end): errors naming the tensor, not panics.
#[test]
fn gguf_tensor_extents_that_overflow_are_errors() {
    let _alone = support::alloc::alone();
    use support::fuzz::small_gguf;
    let work = tempfile::tempdir().unwrap();
    let seed = small_gguf();
    let name = b"token_embd.weight";
    // Tensor infos: the name, then its dimension count (u32) and dimensions (u64 each), the
    // type (u32) and the offset (u64).
    let at = seed
        .windows(name.len())
        .rposition(|w| w == name)
        .expect("tensor info")
        + name.len();
    let dims_at = at + 4;
    for (patch_at, value) in [
        (dims_at, u64::MAX / 3),      // first dimension: the product overflows
        (dims_at + 16 + 4, u64::MAX), // offset: past any file
    ] {
        let mut bytes = seed.clone();
        bytes[patch_at..patch_at + 8].copy_from_slice(&value.to_le_bytes());
        let path = work.path().join("x.gguf");
        std::fs::write(&path, &bytes).unwrap();
        let err = qlora_core::gguf::GgufFile::open(&path)
            .err()
            .expect("an error");
        assert!(err.to_string().contains("token_embd.weight"), "{err}");
    }
}

/// What the long run found in tokenizer files: a `normalizer` the tokenizers crate parses but
/// panics on when encoding. Loading refuses it, naming the file.
#[test]
fn tokenizers_that_panic_when_encoding_are_refused_on_load() {
    let _alone = support::alloc::alone();
    let work = tempfile::tempdir().unwrap();
    let source = support::fixture("tiny-llama");
    for file in ["tokenizer.json", "tokenizer_config.json"] {
        std::fs::copy(source.join(file), work.path().join(file)).unwrap();
    }
    let path = work.path().join("tokenizer.json");
    let mut json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    json["normalizer"] = serde_json::json!([""]);
    std::fs::write(&path, json.to_string()).unwrap();
    let err = qlora_core::text::Tokenizer::load(work.path())
        .err()
        .expect("an error");
    assert!(err.to_string().contains("tokenizer.json"), "{err}");
}
