//! `qlora train` and `qlora merge` as a user runs them.

use std::path::{Path, PathBuf};

use crate::common::qlora;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// `qlora train --model MODEL --data DATA --out OUT`.
fn train_args<'a>(model: &'a Path, data: &'a Path, out: &'a Path) -> [&'a str; 7] {
    [
        "train",
        "--model",
        path(model),
        "--data",
        path(data),
        "--out",
        path(out),
    ]
}

#[test]
fn training_halves_the_eval_loss_and_the_adapter_merges() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    let model = root().join("tests/fixtures/tiny-llama");
    let train = root().join("datasets/parity_train.jsonl");
    let eval = root().join("datasets/parity_eval.jsonl");
    let (code, _, stderr) = qlora(&[
        "train",
        "--model",
        path(&model),
        "--data",
        path(&train),
        "--eval-data",
        path(&eval),
        "--out",
        path(&out),
        "--max-steps",
        "40",
        "--batch-size",
        "8",
        "--grad-accum",
        "1",
        "--lr",
        "1e-3",
        "--eval-steps",
        "20",
        "--save-steps",
        "20",
    ]);
    assert_eq!(code, 0, "{stderr}");
    // 500 short records pack into a few rows: 40 steps are many passes, and train says so.
    assert!(
        stderr
            .lines()
            .any(|l| l.starts_with("--max-steps 40 is ") && l.contains("passes over the data")),
        "{stderr}"
    );
    let line = stderr
        .lines()
        .find(|l| l.starts_with("trained 40 steps"))
        .expect(&stderr);
    // "trained 40 steps, eval loss B before, A after; adapter in ..."
    let numbers: Vec<f64> = line
        .split([' ', ',', ';'])
        .filter_map(|w| w.parse().ok())
        .collect();
    let (before, after) = (numbers[1], numbers[2]);
    eprintln!("eval loss {before} -> {after}");
    assert!(after <= before / 2.0, "eval loss {before} -> {after}");

    // What the run leaves: the PEFT adapter, the configuration, metrics, a checkpoint.
    for file in [
        "adapter_config.json",
        "adapter_model.safetensors",
        "training_config.toml",
        "metrics.jsonl",
    ] {
        assert!(out.join(file).is_file(), "{file}");
    }
    assert!(out.join("checkpoint-20/optimizer.safetensors").is_file());
    let metrics = std::fs::read_to_string(out.join("metrics.jsonl")).unwrap();
    assert_eq!(metrics.lines().count(), 40);
    let first: serde_json::Value = serde_json::from_str(metrics.lines().next().unwrap()).unwrap();
    for key in ["step", "loss", "lr", "grad_norm", "tokens", "tokens_per_s"] {
        assert!(first.get(key).is_some(), "{key} in {first}");
    }
    // The memory the OS counts, in every line and at the end beside the plan's figure.
    #[cfg(target_os = "linux")]
    {
        let rss = first["peak_rss_bytes"].as_u64().expect("peak_rss_bytes");
        assert!(rss > 1 << 20, "{first}");
        let memory = stderr
            .lines()
            .find(|l| l.starts_with("memory: peak RSS "))
            .expect(&stderr);
        assert!(memory.contains("; planned peak "), "{memory}");
    }
    let config = std::fs::read_to_string(out.join("training_config.toml")).unwrap();
    assert!(
        config.contains("rank = 64") && config.contains("max_steps = 40"),
        "{config}"
    );

    // A second run into the same directory needs --resume.
    let (code, _, stderr) = qlora(&[
        "train",
        "--model",
        path(&model),
        "--data",
        path(&train),
        "--out",
        path(&out),
    ]);
    assert_eq!(code, 1);
    assert!(stderr.contains("--resume"), "{stderr}");

    // Merged into the dequantized NF4 base, the model scores what the adapter scored.
    let merged = dir.path().join("merged");
    let (code, _, stderr) = qlora(&[
        "merge",
        "--model",
        path(&model),
        "--adapter",
        path(&out),
        "--out",
        path(&merged),
        "--dtype",
        "f32",
    ]);
    assert_eq!(code, 0, "{stderr}");
    let eval_json = |args: &[&str]| -> f64 {
        let mut all = vec![
            "eval",
            "--data",
            path(&eval),
            "--format",
            "alpaca",
            "--json",
        ];
        all.extend_from_slice(args);
        let (code, stdout, stderr) = qlora(&all);
        assert_eq!(code, 0, "{stderr}");
        serde_json::from_str::<serde_json::Value>(stdout.trim()).unwrap()["loss"]
            .as_f64()
            .unwrap()
    };
    let with_adapter = eval_json(&["--model", path(&model), "--adapter", path(&out)]);
    let merged_loss = eval_json(&["--model", path(&merged), "--bits", "16"]);
    eprintln!("eval loss with adapter {with_adapter}, merged {merged_loss}");
    assert!(
        (with_adapter - merged_loss).abs() <= 1e-4,
        "{with_adapter} vs {merged_loss}"
    );
}

#[test]
fn bad_training_configurations_fail_fast() {
    let dir = tempfile::tempdir().unwrap();
    let model = root().join("tests/fixtures/tiny-llama");
    let train = root().join("datasets/parity_train.jsonl");
    let out = dir.path().join("o");
    let base = train_args(&model, &train, &out);
    for (extra, needle) in [
        (vec!["--lr=-1"], "--lr"),
        (vec!["--rank", "0"], "--rank"),
        (vec!["--optim", "sgd"], "unknown optimizer"),
    ] {
        let mut args: Vec<&str> = base.to_vec();
        args.extend(extra);
        let (code, _, stderr) = qlora(&args);
        assert_eq!(code, 1, "{stderr}");
        assert!(
            stderr.contains(needle) && stderr.trim_end().lines().count() == 1,
            "{stderr}"
        );
        assert!(!out.exists(), "nothing written for a bad configuration");
    }
    let (code, _, stderr) = qlora(&[
        "train",
        "--model",
        path(&model),
        "--data",
        "missing.jsonl",
        "--out",
        path(&out),
    ]);
    assert_eq!(code, 1);
    assert!(stderr.contains("missing.jsonl"), "{stderr}");
    let config = dir.path().join("c.toml");
    std::fs::write(&config, "rank = 8\nlearnig_rate = 0.1\n").unwrap();
    let (code, _, stderr) = qlora(&["train", "--config", path(&config)]);
    assert_eq!(code, 1);
    assert!(stderr.contains("learnig_rate"), "{stderr}");
}

#[test]
fn eval_works_for_every_format() {
    let dir = tempfile::tempdir().unwrap();
    let model = root().join("tests/fixtures/tiny-llama");
    let files = [
        ("alpaca", root().join("datasets/alpaca_sample.jsonl")),
        ("oasst", root().join("datasets/oasst1_sample.jsonl")),
        ("input-output", {
            let p = dir.path().join("io.jsonl");
            std::fs::write(&p, "{\"input\": \"2+2=\", \"output\": \"4\"}\n").unwrap();
            p
        }),
        ("guanaco", {
            let p = dir.path().join("g.jsonl");
            std::fs::write(&p, "{\"text\": \"### Human: hi### Assistant: hello\"}\n").unwrap();
            p
        }),
        ("messages", {
            let p = dir.path().join("m.jsonl");
            std::fs::write(&p, "{\"messages\": [{\"role\": \"user\", \"content\": \"hi\"}, {\"role\": \"assistant\", \"content\": \"hello\"}]}\n").unwrap();
            p
        }),
        ("text", {
            let p = dir.path().join("t.jsonl");
            std::fs::write(&p, "{\"text\": \"some plain text\"}\n").unwrap();
            p
        }),
    ];
    for (format, file) in files {
        let (code, stdout, stderr) = qlora(&[
            "eval",
            "--model",
            path(&model),
            "--data",
            path(&file),
            "--format",
            format,
            "--json",
        ]);
        assert_eq!(code, 0, "{format}: {stderr}");
        let report: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
        assert!(report["loss"].as_f64().unwrap() > 0.0, "{format}: {report}");
        assert!(report["tokens"].as_u64().unwrap() > 0, "{format}: {report}");
    }
}

#[test]
fn eval_with_packing_gives_the_same_loss_for_every_format() {
    let dir = tempfile::tempdir().unwrap();
    let model = root().join("tests/fixtures/tiny-llama");
    let write = |name: &str, lines: Vec<String>| {
        let p = dir.path().join(name);
        std::fs::write(&p, lines.join("\n") + "\n").unwrap();
        p
    };
    let words = |n: usize| -> String {
        (0..n)
            .map(|i| ["alpha", "beta", "gamma", "delta"][i % 4])
            .collect::<Vec<_>>()
            .join(" ")
    };
    let files = [
        ("alpaca", root().join("datasets/alpaca_sample.jsonl")),
        ("oasst", root().join("datasets/oasst1_sample.jsonl")),
        (
            "input-output",
            write(
                "io.jsonl",
                (1..8)
                    .map(|n| serde_json::json!({"input": words(n), "output": words(3 * n)}).to_string())
                    .collect(),
            ),
        ),
        (
            "guanaco",
            write(
                "g.jsonl",
                (1..8)
                    .map(|n| {
                        serde_json::json!({"text": format!("### Human: {}### Assistant: {}", words(n), words(2 * n))})
                            .to_string()
                    })
                    .collect(),
            ),
        ),
        (
            "messages",
            write(
                "m.jsonl",
                (1..8)
                    .map(|n| {
                        serde_json::json!({"messages": [
                            {"role": "user", "content": words(n)},
                            {"role": "assistant", "content": words(4 * n)}
                        ]})
                        .to_string()
                    })
                    .collect(),
            ),
        ),
        (
            "text",
            write(
                "t.jsonl",
                (1..8)
                    .map(|n| serde_json::json!({"text": words(5 * n)}).to_string())
                    .collect(),
            ),
        ),
    ];
    for (format, file) in files {
        let eval = |extra: &[&str]| -> serde_json::Value {
            let mut args = vec![
                "eval",
                "--model",
                path(&model),
                "--data",
                path(&file),
                "--format",
                format,
                "--json",
            ];
            args.extend_from_slice(extra);
            let (code, stdout, stderr) = qlora(&args);
            assert_eq!(code, 0, "{format}: {stderr}");
            serde_json::from_str(stdout.trim()).unwrap()
        };
        let plain = eval(&[]);
        let packed = eval(&["--packing", "--max-seq-len", "1024"]);
        assert_eq!(plain["tokens"], packed["tokens"], "{format}");
        let (a, b) = (
            plain["loss"].as_f64().unwrap(),
            packed["loss"].as_f64().unwrap(),
        );
        assert!((a - b).abs() <= 1e-5, "{format}: {a} vs {b}");
    }
}

/// The ids after `prompt ids: ` in generate's stderr (`--show-prompt`).
fn shown_prompt_ids(stderr: &str) -> Vec<u32> {
    let line = stderr
        .lines()
        .find_map(|l| l.strip_prefix("prompt ids: "))
        .expect(stderr);
    serde_json::from_str(line).unwrap()
}

/// An adapter trained on Alpaca data (format detected) is prompted with the Alpaca prompt by
/// default: the ids generate feeds are those training put before the learned response.
#[test]
fn generate_wraps_the_prompt_as_the_adapter_was_trained() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    let model = root().join("tests/fixtures/tiny-llama");
    let instruction = "What are the three primary colors?";
    let data = dir.path().join("alpaca.jsonl");
    let record = serde_json::json!({"instruction": instruction, "input": "", "output": "Red."});
    std::fs::write(&data, format!("{record}\n{record}\n")).unwrap();
    let (code, _, stderr) = qlora(&[
        "train",
        "--model",
        path(&model),
        "--data",
        path(&data),
        "--out",
        path(&out),
        "--max-steps",
        "1",
        "--grad-accum",
        "1",
    ]);
    assert_eq!(code, 0, "{stderr}");
    let config = std::fs::read_to_string(out.join("training_config.toml")).unwrap();
    assert!(config.contains("format = \"alpaca\""), "{config}");

    // What training fed the model before the first learned token.
    let tokenizer = qlora_core::text::Tokenizer::load(&model).unwrap();
    let options = qlora_core::data::DataOptions::default();
    let loaded = qlora_core::data::load_examples(&data, &tokenizer, &options).unwrap();
    let example = &loaded.examples[0];
    let learned = example.labels.iter().position(|&l| l >= 0).unwrap();
    let trained_prompt = &example.ids[..learned];

    let generate = |extra: &[&str]| {
        let mut args = vec![
            "generate",
            "--model",
            path(&model),
            "--adapter",
            path(&out),
            "--prompt",
            instruction,
            "--max-new-tokens",
            "1",
            "--show-prompt",
        ];
        args.extend_from_slice(extra);
        let (code, _, stderr) = qlora(&args);
        assert_eq!(code, 0, "{stderr}");
        stderr
    };
    let stderr = generate(&[]);
    assert!(
        stderr.contains("wrapped as training wrapped alpaca"),
        "{stderr}"
    );
    assert_eq!(shown_prompt_ids(&stderr), trained_prompt);
    // --format text continues the text as is.
    let plain = shown_prompt_ids(&generate(&["--format", "text"]));
    assert_eq!(plain, tokenizer.encode(instruction, true).unwrap());
    assert_ne!(plain, trained_prompt);
}

/// The usage line names what train needs, and the help marks it required.
#[test]
fn train_help_shows_the_required_flags() {
    let (code, stdout, _) = qlora(&["train", "--help"]);
    assert_eq!(code, 0);
    assert!(
        stdout.contains("Usage: qlora train --model <MODEL> --data <DATA> --out <OUT> [OPTIONS]"),
        "{stdout}"
    );
    assert!(
        stdout.contains("qlora train --config <FILE.toml>"),
        "{stdout}"
    );
    for flag in ["--model", "--data", "--out"] {
        let help = stdout
            .lines()
            .skip_while(|l| !l.trim_start().starts_with(flag))
            .nth(1)
            .unwrap_or_default();
        assert!(help.trim_start().starts_with("Required"), "{flag}: {help}");
    }
}

#[test]
fn phi3_trains_adapters_on_its_fused_projections() {
    let dir = tempfile::tempdir().unwrap();
    let model = root().join("tests/reference/tiny-phi3");
    let train = root().join("datasets/parity_train.jsonl");
    let eval = root().join("datasets/parity_eval.jsonl");
    let out = dir.path().join("run");
    let base = train_args(&model, &train, &out);
    // LLaMA's names are not Phi-3's projections: one line naming the ones it has.
    let mut args = base.to_vec();
    args.extend(["--target-modules", "q_proj,v_proj"]);
    let (code, _, stderr) = qlora(&args);
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains("`q_proj`")
            && stderr.contains("qkv_proj, o_proj, gate_up_proj, down_proj")
            && stderr.trim_end().lines().count() == 1,
        "{stderr}"
    );
    assert!(!out.exists(), "nothing written for a bad configuration");

    let mut args = base.to_vec();
    args.extend([
        "--eval-data",
        path(&eval),
        "--max-steps",
        "8",
        "--batch-size",
        "8",
        "--grad-accum",
        "1",
        "--lr",
        "1e-2",
    ]);
    let (code, _, stderr) = qlora(&args);
    assert_eq!(code, 0, "{stderr}");
    let line = stderr
        .lines()
        .find(|l| l.starts_with("trained 8 steps"))
        .expect(&stderr);
    let losses: Vec<f64> = line
        .split([' ', ',', ';'])
        .filter_map(|w| w.parse().ok())
        .collect();
    assert!(losses[2] < losses[1], "eval loss did not drop: {line}");
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("adapter_config.json")).unwrap())
            .unwrap();
    assert_eq!(
        config["target_modules"],
        serde_json::json!(["qkv_proj", "o_proj", "gate_up_proj", "down_proj"])
    );
    let merged = dir.path().join("merged");
    let (code, _, stderr) = qlora(&[
        "merge",
        "--model",
        path(&model),
        "--adapter",
        path(&out),
        "--out",
        path(&merged),
    ]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stderr.contains("merged 8 adapters"), "{stderr}");
}
