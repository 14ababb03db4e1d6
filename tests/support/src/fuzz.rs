//! A seeded mutation fuzzer for every reader of user files, on stable Rust: valid seed files
//! are mutated (bit flips, interesting bytes and integers, cut, duplicated, spliced and
//! truncated ranges), written where the reader expects them, and read. An error is the
//! reader's answer to a bad file; a panic, an input that takes longer than a second, or one
//! that makes the reader allocate far beyond its size is a finding.
//!
//! `tests/fuzz_readers.rs` runs a few hundred inputs per reader in CI; `examples/fuzz_readers.rs`
//! runs as many as asked and prints inputs per second and findings.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use candle_core::quantized::gguf_file::{self, Value};
use candle_core::quantized::{GgmlDType, QTensor};
use qlora_core::FloatDtype;
use qlora_core::checkpoint::Checkpoint;
use qlora_core::config::ModelConfig;
use qlora_core::data::{DataOptions, DatasetFormat, load_examples};
use qlora_core::gguf::GgufFile;
use qlora_core::gguf::config::hf_config;
use qlora_core::gguf::tokenizer::tokenizer_files;
use qlora_core::lora::read_adapter;
use qlora_core::text::{Message, Tokenizer};
use qlora_core::train::{TrainConfig, load_checkpoint};
use rand::rngs::StdRng;
use rand::{RngExt, SeedableRng};

use super::alloc::peak_during;
use super::fixture;

/// What a reader may allocate for an input of `len` bytes.
pub fn memory_bound(len: usize) -> usize {
    64 * (1 << 20) + 64 * len
}

/// Write a candidate where the reader looks and read it; `Err` is a rejected input.
pub type Run = Box<dyn Fn(&[u8]) -> Result<(), String>>;

/// One reader: its valid seed files and how to run it on a candidate.
pub struct Target {
    pub name: String,
    pub seeds: Vec<Vec<u8>>,
    pub run: Run,
}

#[derive(Debug)]
pub struct Finding {
    pub kind: &'static str,
    pub detail: String,
    pub input: Vec<u8>,
}

#[derive(Debug, Default)]
pub struct Report {
    pub execs: u64,
    pub rejected: u64,
    pub seconds: f64,
    pub slowest: Duration,
    pub most_memory: usize,
    pub findings: Vec<Finding>,
}

const INTERESTING_U8: [u8; 8] = [0, 1, 0x7f, 0x80, 0xff, b'"', b'{', b'\n'];
const INTERESTING_U64: [u64; 9] = [
    0,
    1,
    0x7f,
    0xffff,
    0x7fff_ffff,
    0xffff_ffff,
    1 << 40,
    i64::MAX as u64,
    u64::MAX,
];

/// A value of another kind or an extreme of the same one, for structure-aware mutations.
fn interesting_json(rng: &mut StdRng) -> serde_json::Value {
    use serde_json::json;
    match rng.random_range(0..12) {
        0 => json!(null),
        1 => json!(-1),
        2 => json!(0),
        3 => json!(u64::MAX),
        4 => json!(i64::MIN),
        5 => json!(1e308),
        6 => json!(""),
        7 => json!("x".repeat(rng.random_range(1..5000))),
        8 => json!([]),
        9 => json!({}),
        10 => json!(true),
        _ => json!([[[[{"a": [1, "b", null]}]]]]),
    }
}

/// Replace, drop or duplicate one value somewhere inside `v`.
fn mutate_json(rng: &mut StdRng, v: &mut serde_json::Value) {
    use serde_json::Value;
    let children = match v {
        Value::Object(m) => m.len(),
        Value::Array(a) => a.len(),
        _ => 0,
    };
    // Stop here sometimes, or where there is nothing below.
    if children == 0 || rng.random_range(0..3) == 0 {
        *v = interesting_json(rng);
        return;
    }
    let i = rng.random_range(0..children);
    match v {
        Value::Object(m) => {
            let key = m.keys().nth(i).cloned().expect("key");
            match rng.random_range(0..6) {
                0 => {
                    m.remove(&key);
                }
                _ => mutate_json(rng, m.get_mut(&key).expect("value")),
            }
        }
        Value::Array(a) => match rng.random_range(0..6) {
            0 => {
                a.remove(i);
            }
            1 => {
                let copy = a[i].clone();
                a.insert(i, copy);
            }
            _ => mutate_json(rng, &mut a[i]),
        },
        _ => unreachable!(),
    }
}

/// A structure-aware mutation of JSON (one document, or one line of JSON Lines), if `data`
/// is JSON.
fn mutate_structure(rng: &mut StdRng, data: &[u8]) -> Option<Vec<u8>> {
    let text = std::str::from_utf8(data).ok()?;
    if let Ok(mut v) = serde_json::from_str::<serde_json::Value>(text) {
        mutate_json(rng, &mut v);
        return serde_json::to_vec(&v).ok();
    }
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    if lines.is_empty() {
        return None;
    }
    let i = rng.random_range(0..lines.len());
    let mut v: serde_json::Value = serde_json::from_str(&lines[i]).ok()?;
    mutate_json(rng, &mut v);
    lines[i] = serde_json::to_string(&v).ok()?;
    Some((lines.join("\n") + "\n").into_bytes())
}

/// One to four stacked mutations of `seed` (others may be spliced in); JSON seeds get
/// structure-aware mutations a third of the time.
pub fn mutate(rng: &mut StdRng, seed: &[u8], seeds: &[Vec<u8>]) -> Vec<u8> {
    if rng.random_range(0..3) == 0
        && let Some(mut data) = mutate_structure(rng, seed)
    {
        for _ in 0..rng.random_range(0..3) {
            if let Some(again) = mutate_structure(rng, &data) {
                data = again;
            }
        }
        return data;
    }
    let mut data = seed.to_vec();
    for _ in 0..rng.random_range(1..=4) {
        let len = data.len();
        match rng.random_range(0..8) {
            0 if len > 0 => {
                let i = rng.random_range(0..len);
                data[i] ^= 1 << rng.random_range(0..8);
            }
            1 if len > 0 => {
                let i = rng.random_range(0..len);
                data[i] = INTERESTING_U8[rng.random_range(0..INTERESTING_U8.len())];
            }
            2 if len >= 8 => {
                // An interesting integer, little-endian, of 1, 2, 4 or 8 bytes.
                let width = [1, 2, 4, 8][rng.random_range(0..4)];
                let i = rng.random_range(0..=len - width);
                let v = INTERESTING_U64[rng.random_range(0..INTERESTING_U64.len())];
                data[i..i + width].copy_from_slice(&v.to_le_bytes()[..width]);
            }
            3 if len > 0 => {
                // Cut a range.
                let a = rng.random_range(0..len);
                let b = (a + rng.random_range(1..=64)).min(len);
                data.drain(a..b);
            }
            4 if len > 0 => {
                // Duplicate a range in place.
                let a = rng.random_range(0..len);
                let b = (a + rng.random_range(1..=64)).min(len);
                let copy = data[a..b].to_vec();
                let at = rng.random_range(0..=data.len());
                data.splice(at..at, copy);
            }
            5 if len > 0 => data.truncate(rng.random_range(0..len)),
            6 => {
                // Splice the tail of another seed.
                let other = &seeds[rng.random_range(0..seeds.len())];
                if !other.is_empty() {
                    let at = rng.random_range(0..=data.len());
                    let from = rng.random_range(0..other.len());
                    data.truncate(at);
                    data.extend_from_slice(&other[from..]);
                }
            }
            _ if len > 0 => {
                // A random byte.
                let i = rng.random_range(0..len);
                data[i] = rng.random();
            }
            _ => data.push(rng.random()),
        }
    }
    data
}

/// Run `execs` mutated inputs through `target` (seeded), the seeds themselves first.
pub fn fuzz(target: &Target, execs: u64, seed: u64) -> Report {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut report = Report::default();
    let start = Instant::now();
    let previous_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    for n in 0..execs {
        let input = match target.seeds.get(n as usize) {
            Some(seed) => seed.clone(),
            None => {
                let base = &target.seeds[rng.random_range(0..target.seeds.len())];
                mutate(&mut rng, base, &target.seeds)
            }
        };
        if let Some(dump) = std::env::var_os("QLORA_FUZZ_DUMP") {
            // Each input before it runs, to reproduce an abort.
            let _ = std::fs::write(dump, &input);
        }
        let began = Instant::now();
        let (outcome, peak) =
            peak_during(|| catch_unwind(AssertUnwindSafe(|| (target.run)(&input))));
        let took = began.elapsed();
        report.execs += 1;
        report.slowest = report.slowest.max(took);
        report.most_memory = report.most_memory.max(peak);
        match outcome {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                report.rejected += 1;
                if n < target.seeds.len() as u64 {
                    report.findings.push(Finding {
                        kind: "seed rejected",
                        detail: e,
                        input: input.clone(),
                    });
                }
            }
            Err(panic) => {
                let detail = panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default();
                report.findings.push(Finding {
                    kind: "panic",
                    detail,
                    input: input.clone(),
                });
            }
        }
        if took > Duration::from_secs(1) {
            report.findings.push(Finding {
                kind: "slow",
                detail: format!("{took:?}"),
                input: input.clone(),
            });
        }
        if peak > memory_bound(input.len()) {
            report.findings.push(Finding {
                kind: "memory",
                detail: format!("{peak} bytes for {} input bytes", input.len()),
                input,
            });
        }
    }
    std::panic::set_hook(previous_hook);
    report.seconds = start.elapsed().as_secs_f64();
    report
}

fn read(path: impl AsRef<Path>) -> Vec<u8> {
    std::fs::read(path).expect("seed file")
}

fn write(path: &Path, bytes: &[u8]) {
    std::fs::write(path, bytes).expect("write candidate");
}

fn err(e: impl std::fmt::Display) -> String {
    e.to_string()
}

/// A small GGUF as llama.cpp lays it out: llama metadata, a byte-level BPE vocabulary, a chat
/// template, and tensors of several block types.
pub fn small_gguf() -> Vec<u8> {
    let device = candle_core::Device::Cpu;
    let tensor = |n: usize, shape: &[usize], dtype: GgmlDType| {
        let values: Vec<f32> = (0..n)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 64.0)
            .collect();
        let t = candle_core::Tensor::from_vec(values, shape, &device).unwrap();
        QTensor::quantize(&t, dtype).unwrap()
    };
    let tokens = [
        "<unk>", "<s>", "</s>", "a", "b", "ab", "Ġ", "Ġa", "c", "abc",
    ];
    let strings =
        |items: &[&str]| Value::Array(items.iter().map(|s| Value::String(s.to_string())).collect());
    let metadata = vec![
        ("general.architecture", Value::String("llama".into())),
        ("llama.block_count", Value::U32(1)),
        ("llama.context_length", Value::U32(64)),
        ("llama.embedding_length", Value::U32(32)),
        ("llama.feed_forward_length", Value::U32(64)),
        ("llama.attention.head_count", Value::U32(2)),
        ("llama.attention.head_count_kv", Value::U32(1)),
        ("llama.rope.freq_base", Value::F32(10000.0)),
        ("llama.attention.layer_norm_rms_epsilon", Value::F32(1e-5)),
        ("tokenizer.ggml.model", Value::String("gpt2".into())),
        ("tokenizer.ggml.pre", Value::String("default".into())),
        ("tokenizer.ggml.tokens", strings(&tokens)),
        (
            "tokenizer.ggml.token_type",
            Value::Array(
                (0..tokens.len())
                    .map(|i| Value::I32(if i < 3 { 3 } else { 1 }))
                    .collect(),
            ),
        ),
        ("tokenizer.ggml.merges", strings(&["a b", "Ġ a", "ab c"])),
        ("tokenizer.ggml.bos_token_id", Value::U32(1)),
        ("tokenizer.ggml.eos_token_id", Value::U32(2)),
        (
            "tokenizer.chat_template",
            Value::String(
                "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}".into(),
            ),
        ),
    ];
    let tensors = [
        ("token_embd.weight", tensor(320, &[10, 32], GgmlDType::F32)),
        ("output_norm.weight", tensor(32, &[32], GgmlDType::F16)),
        (
            "blk.0.attn_q.weight",
            tensor(1024, &[32, 32], GgmlDType::Q8_0),
        ),
        (
            "blk.0.attn_k.weight",
            tensor(512, &[16, 32], GgmlDType::Q4_0),
        ),
        (
            "blk.0.attn_v.weight",
            tensor(512, &[16, 32], GgmlDType::Q4_1),
        ),
        (
            "blk.0.ffn_up.weight",
            tensor(2048, &[8, 256], GgmlDType::Q4K),
        ),
    ];
    let mut out = std::io::Cursor::new(Vec::new());
    let metadata: Vec<(&str, &Value)> = metadata.iter().map(|(k, v)| (*k, v)).collect();
    let tensors: Vec<(&str, &QTensor)> = tensors.iter().map(|(k, v)| (*k, v)).collect();
    gguf_file::write(&mut out, &metadata, &tensors).unwrap();
    out.into_inner()
}

/// A small safetensors file with a tensor of each float dtype we read, and metadata.
pub fn small_safetensors() -> Vec<u8> {
    use safetensors::Dtype;
    use safetensors::tensor::TensorView;
    let f32s: Vec<u8> = (0..24)
        .flat_map(|i| (i as f32 * 0.25).to_le_bytes())
        .collect();
    let halves: Vec<u8> = (0..24u16)
        .flat_map(|i| (0x3c00 + i).to_le_bytes())
        .collect();
    let tensors = vec![
        (
            "a.f32".to_string(),
            TensorView::new(Dtype::F32, vec![4, 6], &f32s).unwrap(),
        ),
        (
            "b.bf16".to_string(),
            TensorView::new(Dtype::BF16, vec![2, 12], &halves).unwrap(),
        ),
        (
            "c.f16".to_string(),
            TensorView::new(Dtype::F16, vec![24], &halves).unwrap(),
        ),
        (
            "d.u8".to_string(),
            TensorView::new(Dtype::U8, vec![3, 8], &halves[..24]).unwrap(),
        ),
    ];
    let metadata = std::collections::HashMap::from([("format".to_string(), "pt".to_string())]);
    safetensors::serialize(tensors, Some(metadata)).unwrap()
}

/// The first `n` lines of a dataset file.
fn lines(path: impl AsRef<Path>, n: usize) -> Vec<u8> {
    let text = std::fs::read_to_string(path).expect("dataset");
    let mut out: String = text.lines().take(n).collect::<Vec<_>>().join("\n");
    out.push('\n');
    out.into_bytes()
}

/// A checkpoint's optimizer file (one 32-bit and one 8-bit parameter) and trainer state.
fn checkpoint_seed() -> (Vec<u8>, Vec<u8>) {
    use safetensors::Dtype;
    use safetensors::tensor::TensorView;
    let f32s = |n: usize| -> Vec<u8> {
        (0..n)
            .flat_map(|i| (i as f32 * 1e-3).to_le_bytes())
            .collect()
    };
    let (m, v, am, av) = (f32s(16), f32s(16), f32s(1), f32s(1));
    let codes: Vec<u8> = (0..8).collect();
    let tensors = vec![
        (
            "state.0.m".to_string(),
            TensorView::new(Dtype::F32, vec![16], &m).unwrap(),
        ),
        (
            "state.0.v".to_string(),
            TensorView::new(Dtype::F32, vec![16], &v).unwrap(),
        ),
        (
            "state.1.m.codes".to_string(),
            TensorView::new(Dtype::U8, vec![8], &codes).unwrap(),
        ),
        (
            "state.1.m.absmax".to_string(),
            TensorView::new(Dtype::F32, vec![1], &am).unwrap(),
        ),
        (
            "state.1.v.codes".to_string(),
            TensorView::new(Dtype::U8, vec![8], &codes).unwrap(),
        ),
        (
            "state.1.v.absmax".to_string(),
            TensorView::new(Dtype::F32, vec![1], &av).unwrap(),
        ),
    ];
    let metadata = std::collections::HashMap::from([
        ("step".to_string(), "3".to_string()),
        ("params".to_string(), "2".to_string()),
    ]);
    let optimizer = safetensors::serialize(tensors, Some(metadata)).unwrap();
    let state = serde_json::json!({
        "step": 3, "epoch": 0, "batch_in_epoch": 3, "micro_step": 3, "tokens": 120
    })
    .to_string()
    .into_bytes();
    (optimizer, state)
}

/// Every reader of user files, each in its own directory under `work`.
pub fn targets(work: &Path) -> Vec<Target> {
    let tokenizer_dir = fixture("tiny-llama");
    let tokenizer = std::rc::Rc::new(Tokenizer::load(&tokenizer_dir).expect("fixture tokenizer"));
    let mut targets = Vec::new();
    let dir = |name: &str| -> PathBuf {
        let d = work.join(name);
        std::fs::create_dir_all(&d).unwrap();
        d
    };

    // safetensors: one file, every tensor read as f32.
    {
        let d = dir("safetensors");
        targets.push(Target {
            name: "safetensors file".into(),
            seeds: vec![small_safetensors()],
            run: Box::new(move |bytes| {
                let path = d.join("x.safetensors");
                write(&path, bytes);
                let file = Checkpoint::open_file(&path).map_err(err)?;
                for name in file.names() {
                    let _ = file.read_f32(name, None);
                }
                Ok(())
            }),
        });
    }
    // Sharded checkpoints: the index names the shard of every tensor.
    {
        let d = dir("shards");
        std::fs::copy(
            fixture("tiny-llama-lora/adapter_model.safetensors"),
            d.join("model-00001-of-00001.safetensors"),
        )
        .unwrap();
        let names: Vec<String> =
            Checkpoint::open_file(fixture("tiny-llama-lora/adapter_model.safetensors"))
                .unwrap()
                .names()
                .map(str::to_string)
                .collect();
        let map: serde_json::Map<String, serde_json::Value> = names
            .into_iter()
            .map(|n| (n, "model-00001-of-00001.safetensors".into()))
            .collect();
        let index = serde_json::json!({"metadata": {"total_size": 81000}, "weight_map": map});
        targets.push(Target {
            name: "safetensors index".into(),
            seeds: vec![serde_json::to_vec_pretty(&index).unwrap()],
            run: Box::new(move |bytes| {
                write(&d.join("model.safetensors.index.json"), bytes);
                let file = Checkpoint::open(&d).map_err(err)?;
                for name in file.names() {
                    let _ = file.read_f32(name, None);
                }
                Ok(())
            }),
        });
    }
    // GGUF: header, metadata, tensor infos, the llama config, the tokenizer, every tensor.
    {
        let d = dir("gguf");
        targets.push(Target {
            name: "gguf".into(),
            seeds: vec![small_gguf()],
            run: Box::new(move |bytes| {
                let path = d.join("x.gguf");
                write(&path, bytes);
                let gguf = GgufFile::open(&path).map_err(err)?;
                let config = hf_config(&gguf, FloatDtype::BF16);
                let tokenizer = tokenizer_files(&gguf);
                let names: Vec<String> =
                    gguf.tensor_names().iter().map(|s| s.to_string()).collect();
                for name in &names {
                    let _ = gguf.dequantize(name);
                }
                config.map_err(err)?;
                tokenizer.map_err(err)?;
                Ok(())
            }),
        });
    }
    // Datasets, in every format and detected.
    let root = super::root();
    let messages = lines(root.join("datasets/identity_train.jsonl"), 6);
    let alpaca = lines(root.join("datasets/alpaca_sample.jsonl"), 6);
    let oasst = lines(root.join("datasets/oasst1_sample.jsonl"), 12);
    let parity = lines(root.join("datasets/parity_train.jsonl"), 6);
    let guanaco = b"{\"text\": \"### Human: Hi there### Assistant: Hello! How can I help?### Human: A joke.### Assistant: No.\"}\n".to_vec();
    let input_output =
        b"{\"input\": \"2 + 2 =\", \"output\": \" 4\"}\n{\"input\": \"Say hi\", \"output\": \"hi\"}\n".to_vec();
    let text = b"{\"text\": \"plain language modelling text\"}\n{\"text\": \"more\"}\n".to_vec();
    let json_array = b"[{\"instruction\": \"a\", \"output\": \"b\"}, {\"instruction\": \"c\", \"input\": \"d\", \"output\": \"e\"}]".to_vec();
    for (format, seeds) in [
        (
            Some(DatasetFormat::Alpaca),
            vec![alpaca.clone(), parity.clone(), json_array.clone()],
        ),
        (Some(DatasetFormat::InputOutput), vec![input_output.clone()]),
        (Some(DatasetFormat::Oasst), vec![oasst.clone()]),
        (Some(DatasetFormat::Guanaco), vec![guanaco.clone()]),
        (Some(DatasetFormat::Messages), vec![messages.clone()]),
        (Some(DatasetFormat::Text), vec![text.clone()]),
        (
            None,
            vec![
                alpaca,
                oasst,
                guanaco,
                messages,
                input_output,
                text,
                json_array,
                parity,
            ],
        ),
    ] {
        let name = match format {
            Some(f) => format!("dataset ({f})"),
            None => "dataset (detected)".into(),
        };
        let d = dir(&name.replace([' ', '(', ')'], ""));
        let tokenizer = tokenizer.clone();
        targets.push(Target {
            name,
            seeds,
            run: Box::new(move |bytes| {
                let path = d.join("data.jsonl");
                write(&path, bytes);
                let options = DataOptions {
                    format,
                    ..DataOptions::default()
                };
                load_examples(&path, &tokenizer, &options)
                    .map(|_| ())
                    .map_err(err)
            }),
        });
    }
    // Parquet datasets (pyarrow's files: snappy, zstd, lz4 and gzip pages, nested lists).
    {
        let d = dir("dataset-parquet");
        let tokenizer = tokenizer.clone();
        let seeds = [
            "alpaca.parquet",
            "messages.parquet",
            "prompt_completion.parquet",
            "chat_completion.parquet",
        ]
        .map(|f| read(super::root().join("tests/reference/parquet").join(f)))
        .to_vec();
        targets.push(Target {
            name: "dataset (parquet)".into(),
            seeds,
            run: Box::new(move |bytes| {
                let path = d.join("data.parquet");
                write(&path, bytes);
                load_examples(&path, &tokenizer, &DataOptions::default())
                    .map(|_| ())
                    .map_err(err)
            }),
        });
    }
    // Adapters: the config and the weights, each mutated with the other intact.
    for (name, file, other) in [
        (
            "adapter config",
            "adapter_config.json",
            "adapter_model.safetensors",
        ),
        (
            "adapter weights",
            "adapter_model.safetensors",
            "adapter_config.json",
        ),
    ] {
        let d = dir(&name.replace(' ', "-"));
        std::fs::copy(fixture("tiny-llama-lora").join(other), d.join(other)).unwrap();
        targets.push(Target {
            name: name.into(),
            seeds: vec![read(fixture("tiny-llama-lora").join(file))],
            run: Box::new(move |bytes| {
                write(&d.join(file), bytes);
                read_adapter(&d).map(|_| ()).map_err(err)
            }),
        });
    }
    // Model configs.
    targets.push(Target {
        name: "model config.json".into(),
        seeds: vec![
            read(fixture("tiny-llama/config.json")),
            read(fixture("tiny-llama-bnb-nf4/config.json")),
        ],
        run: Box::new(|bytes| {
            let text = String::from_utf8_lossy(bytes);
            ModelConfig::parse(&text, Path::new("config.json"))
                .map(|_| ())
                .map_err(err)
        }),
    });
    // Tokenizer files: tokenizer.json and tokenizer_config.json (with its chat template).
    for file in ["tokenizer.json", "tokenizer_config.json"] {
        let d = dir(file);
        for entry in std::fs::read_dir(&tokenizer_dir).unwrap() {
            let entry = entry.unwrap();
            let name = entry.file_name();
            if name.to_string_lossy().ends_with(".json") && name != "config.json" {
                std::fs::copy(entry.path(), d.join(&name)).unwrap();
            }
        }
        // The template comes from tokenizer_config.json here.
        let seed = read(tokenizer_dir.join(file));
        targets.push(Target {
            name: file.into(),
            seeds: vec![seed],
            run: Box::new(move |bytes| {
                write(&d.join(file), bytes);
                let tokenizer = Tokenizer::load(&d).map_err(err)?;
                let ids = tokenizer
                    .encode("Hello, world! 12 + 30", true)
                    .map_err(err)?;
                let _ = tokenizer.decode(&ids, false);
                let _ = tokenizer.apply_chat_template(&[Message::new("user", "Hi")], true);
                Ok(())
            }),
        });
    }
    // Checkpoints: the optimizer state and the trainer state, and the run's configuration.
    {
        let d = dir("checkpoint");
        let (optimizer, state) = checkpoint_seed();
        write(&d.join("trainer_state.json"), &state);
        let d2 = d.clone();
        targets.push(Target {
            name: "checkpoint optimizer".into(),
            seeds: vec![optimizer.clone()],
            run: Box::new(move |bytes| {
                write(&d.join("optimizer.safetensors"), bytes);
                load_checkpoint(&d).map(|_| ()).map_err(err)
            }),
        });
        let d3 = dir("checkpoint-state");
        write(&d3.join("optimizer.safetensors"), &optimizer);
        let _ = d2;
        targets.push(Target {
            name: "checkpoint trainer_state.json".into(),
            seeds: vec![state],
            run: Box::new(move |bytes| {
                write(&d3.join("trainer_state.json"), bytes);
                load_checkpoint(&d3).map(|_| ()).map_err(err)
            }),
        });
    }
    {
        let d = dir("training-config");
        let seed = TrainConfig {
            model: "model".into(),
            data: "data.jsonl".into(),
            out: "out".into(),
            ..TrainConfig::default()
        }
        .to_toml()
        .into_bytes();
        targets.push(Target {
            name: "training_config.toml".into(),
            seeds: vec![seed],
            run: Box::new(move |bytes| {
                let path = d.join("training_config.toml");
                write(&path, bytes);
                TrainConfig::from_toml_file(&path).map(|_| ()).map_err(err)
            }),
        });
    }
    targets
}
