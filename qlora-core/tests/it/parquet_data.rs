//! Parquet datasets (written by pyarrow: `tests/reference/make_parquet.py`) read into the same
//! examples as their JSON Lines twins; TRL's prompt-completion forms; malformed parquet.

use std::path::{Path, PathBuf};

use qlora_core::data::{
    DataOptions, DatasetFormat, FieldMap, LoadedData, Place, Sample, TokenizeOptions,
    load_examples, read_parquet, tokenize,
};
use qlora_core::model::IGNORE_INDEX;
use qlora_core::text::Tokenizer;
use support::{fixture, root};

fn tokenizer() -> Tokenizer {
    Tokenizer::load(fixture("tiny-llama")).unwrap()
}

fn parquet(name: &str) -> PathBuf {
    root().join("tests/reference/parquet").join(name)
}

fn load(path: &Path, options: &DataOptions) -> LoadedData {
    load_examples(path, &tokenizer(), options).unwrap()
}

#[test]
fn parquet_files_give_the_examples_of_their_json_lines_twins() {
    let options = DataOptions::default();
    for (parquet_file, jsonl, format, records) in [
        (
            parquet("alpaca.parquet"),
            root().join("datasets/alpaca_sample.jsonl"),
            DatasetFormat::Alpaca,
            32,
        ),
        (
            parquet("messages.parquet"),
            root().join("datasets/identity_eval.jsonl"),
            DatasetFormat::Messages,
            8,
        ),
        (
            parquet("prompt_completion.parquet"),
            parquet("prompt_completion.jsonl"),
            DatasetFormat::PromptCompletion,
            100,
        ),
        (
            parquet("chat_completion.parquet"),
            parquet("chat_completion.jsonl"),
            DatasetFormat::PromptCompletion,
            8,
        ),
    ] {
        let a = load(&parquet_file, &options);
        let b = load(&jsonl, &options);
        assert_eq!((a.format, b.format), (format, format), "{parquet_file:?}");
        assert_eq!(a.report.records, records);
        assert_eq!(a.examples, b.examples, "{parquet_file:?}");
        assert!(a.target_tokens() > 0);
    }
    // The alpaca file spans four row groups of 10 rows; every record knows its place.
    let rows = read_parquet(&parquet("alpaca.parquet")).unwrap();
    assert_eq!(rows[23].place, Place::Row { group: 2, row: 3 });
    assert!(
        rows[23]
            .location()
            .ends_with("alpaca.parquet: row group 2, row 3")
    );
}

/// TRL's standard prompt-completion: `tokenizer(prompt + completion + eos)`, the first
/// `len(tokenizer(prompt))` tokens not learned; the conversational form learns the completion's
/// turn of the chat template, as the messages form learns the same turn.
#[test]
fn prompt_completion_masks_as_trl() {
    let t = tokenizer();
    let options = TokenizeOptions::default();
    let sample = Sample::Completion {
        prompt: "Is 4821 even or odd?".into(),
        completion: " odd".into(),
    };
    let e = tokenize(&sample, &t, &options).unwrap();
    let full = t.encode("Is 4821 even or odd? odd</s>", true).unwrap();
    let prompt = t.encode("Is 4821 even or odd?", true).unwrap();
    assert_eq!(e.ids, full);
    for (i, (&id, &label)) in e.ids.iter().zip(&e.labels).enumerate() {
        let expected = if i < prompt.len() {
            IGNORE_INDEX
        } else {
            i64::from(id)
        };
        assert_eq!(label, expected, "token {i}");
    }
    assert_eq!(*e.labels.last().unwrap(), i64::from(t.eos_id().unwrap()));
    // An eos the completion already ends with is not doubled.
    let ends = Sample::Completion {
        prompt: "Is 4821 even or odd?".into(),
        completion: " odd</s>".into(),
    };
    assert_eq!(tokenize(&ends, &t, &options).unwrap(), e);

    let chat = load(&parquet("chat_completion.jsonl"), &DataOptions::default());
    let messages = load(
        &root().join("datasets/identity_eval.jsonl"),
        &DataOptions::default(),
    );
    assert_eq!(chat.examples, messages.examples);
}

#[test]
fn columns_map_onto_a_format() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("qa.jsonl");
    std::fs::write(
        &path,
        "{\"question\": \"Is 4821 even or odd?\", \"answer\": \"odd\"}\n",
    )
    .unwrap();
    let options = DataOptions {
        fields: FieldMap {
            field_instruction: Some("question".into()),
            field_output: Some("answer".into()),
            ..FieldMap::default()
        },
        ..DataOptions::default()
    };
    let mapped = load(&path, &options);
    let alpaca = dir.path().join("alpaca.jsonl");
    std::fs::write(
        &alpaca,
        "{\"instruction\": \"Is 4821 even or odd?\", \"output\": \"odd\"}\n",
    )
    .unwrap();
    assert_eq!(mapped.format, DatasetFormat::Alpaca);
    assert_eq!(
        mapped.examples,
        load(&alpaca, &DataOptions::default()).examples
    );
}

/// Every malformed parquet input tried is a one-line error naming the file (and the row group,
/// the row and the column where there is one).
#[test]
fn malformed_parquet_is_a_one_line_error() {
    let dir = tempfile::tempdir().unwrap();
    let t = tokenizer();
    let bytes = std::fs::read(parquet("alpaca.parquet")).unwrap();
    let check = |path: &Path, format: Option<DatasetFormat>, needles: &[&str]| {
        let options = DataOptions {
            format,
            ..DataOptions::default()
        };
        let err = load_examples(path, &t, &options).unwrap_err().to_string();
        assert_eq!(err.lines().count(), 1, "{err}");
        for needle in needles {
            assert!(err.contains(needle), "{needle:?} not in {err}");
        }
    };
    // Cut short: the footer is gone.
    let cut = dir.path().join("cut.parquet");
    std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
    check(&cut, None, &["cut.parquet", "not a readable parquet file"]);
    // Not parquet at all.
    let text = dir.path().join("text.parquet");
    std::fs::write(&text, "{\"instruction\": \"x\"}\n").unwrap();
    check(&text, None, &["text.parquet", "not a parquet file"]);
    // Damaged inside a data page: the footer reads, a row does not.
    let mut damaged = bytes.clone();
    for b in &mut damaged[200..400] {
        *b ^= 0x5a;
    }
    let path = dir.path().join("damaged.parquet");
    std::fs::write(&path, &damaged).unwrap();
    check(&path, None, &["damaged.parquet"]);
    // The typed columns of the JSON Lines twin's mistakes.
    for (name, table, format, needles) in [
        (
            "number.parquet",
            "wrong_type",
            None,
            &["row group 0, row 0", "column `output`", "expected a string"][..],
        ),
        (
            "missing.parquet",
            "missing_column",
            Some(DatasetFormat::Alpaca),
            &["row group 0, row 0", "column `output`", "missing"][..],
        ),
    ] {
        let path = parquet(&format!("bad_{table}.parquet"));
        assert!(
            path.is_file(),
            "{name}: run tests/reference/make_parquet.py"
        );
        check(&path, format, needles);
    }
}
