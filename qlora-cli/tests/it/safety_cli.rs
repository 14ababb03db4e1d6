//! Ways a run could silently go wrong, as a careless user meets them: resuming with changed
//! settings, and so on. Each either refuses with a one-line error naming the cause or does
//! what it says.

use std::path::{Path, PathBuf};

#[cfg(unix)]
use crate::common::send;
use crate::common::{path, qlora, root, spawn_long_training, train_fixture};

/// The fixture PEFT adapter copied to `dir` with `key` of its config set to `value`.
fn edited_fixture_adapter(dir: &Path, key: &str, value: serde_json::Value) -> PathBuf {
    let lora = root().join("tests/fixtures/tiny-llama-lora");
    std::fs::create_dir_all(dir).unwrap();
    std::fs::copy(
        lora.join("adapter_model.safetensors"),
        dir.join("adapter_model.safetensors"),
    )
    .unwrap();
    let mut config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(lora.join("adapter_config.json")).unwrap())
            .unwrap();
    config[key] = value;
    std::fs::write(dir.join("adapter_config.json"), config.to_string()).unwrap();
    dir.to_path_buf()
}

/// `qlora train` on the fixture model, two short rows a step; `extra` flags appended (they
/// replace the defaults here of the same name).
fn train(out: &Path, extra: &[&str]) -> (i32, String) {
    train_fixture(
        out,
        &[
            ("--max-seq-len", "128"),
            ("--rank", "4"),
            ("--grad-accum", "1"),
        ],
        extra,
    )
}

#[test]
fn resuming_refuses_changes_that_alter_the_run_and_reports_the_others() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    let (code, stderr) = train(
        &out,
        &["--alpha", "8", "--max-steps", "3", "--save-steps", "2"],
    );
    assert_eq!(code, 0, "{stderr}");

    for (flag, value) in [
        ("--alpha", "64"),
        ("--use-rslora", "true"),
        ("--seed", "7"),
        ("--batch-size", "2"),
        ("--lr", "1e-3"),
    ] {
        let mut args = vec!["--max-steps", "5", "--resume", "latest", flag, value];
        if flag != "--alpha" {
            args.extend(["--alpha", "8"]);
        }
        let (code, stderr) = train(&out, &args);
        assert_ne!(code, 0, "{flag} {value}: {stderr}");
        let line = stderr.lines().last().unwrap();
        assert!(
            line.contains(&format!("cannot resume with {flag} ")) && line.contains("checkpoint-2"),
            "{flag}: {stderr}"
        );
    }
    // Another data file is another run.
    let other = dir.path().join("other.jsonl");
    std::fs::copy(root().join("datasets/parity_train.jsonl"), &other).unwrap();
    let model = path(&root().join("tests/fixtures/tiny-llama"));
    let (code, _, stderr) = qlora(&[
        "train",
        "--model",
        &model,
        "--data",
        &path(&other),
        "--out",
        &path(&out),
        "--max-seq-len",
        "128",
        "--rank",
        "4",
        "--grad-accum",
        "1",
        "--alpha",
        "8",
        "--resume",
        "latest",
    ]);
    assert_ne!(code, 0);
    assert!(stderr.contains("cannot resume with --data "), "{stderr}");

    // A longer run with other save and log intervals continues, and says what changed.
    let (code, stderr) = train(
        &out,
        &[
            "--alpha",
            "8",
            "--max-steps",
            "4",
            "--save-steps",
            "5",
            "--resume",
            "latest",
        ],
    );
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stderr.contains("resuming with --max-steps 3 -> 4"),
        "{stderr}"
    );
    assert!(
        stderr.contains("resuming with --save-steps 2 -> 5"),
        "{stderr}"
    );
}

#[test]
fn plans_too_large_to_compute_are_errors_not_fits() {
    let model = path(&root().join("tests/fixtures/tiny-llama"));
    for (flags, expected) in [
        (vec!["--seq-len", "18446744073709551615"], "--seq-len"),
        (vec!["--seq-len", "4000000000"], "--seq-len"),
        (vec!["--rank", "9223372036854775807"], "--rank"),
        (
            vec!["--rank", "18446744073709551615"],
            "--rank 18446744073709551615: too large",
        ),
        (
            vec!["--batch-size", "4294967296", "--seq-len", "4294967296"],
            "--batch-size",
        ),
    ] {
        let mut args = vec!["plan", "--model", &model, "--gpu-memory", "24GB"];
        args.extend(&flags);
        let (code, stdout, stderr) = qlora(&args);
        assert_eq!(code, 1, "{flags:?}: {stdout}{stderr}");
        assert!(!stdout.contains("fits"), "{flags:?}: {stdout}");
        assert_eq!(stderr.lines().count(), 1, "{flags:?}: {stderr}");
        assert!(stderr.contains(expected), "{flags:?}: {stderr}");
    }
}

#[test]
fn non_finite_weights_and_bad_norm_eps_are_errors_naming_where() {
    let dir = tempfile::tempdir().unwrap();
    let source = root().join("tests/fixtures/tiny-llama");
    let data = path(&root().join("datasets/parity_eval.jsonl"));
    // rms_norm_eps -1 in config.json.
    let bad_eps = dir.path().join("eps");
    std::fs::create_dir(&bad_eps).unwrap();
    for entry in std::fs::read_dir(&source).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), bad_eps.join(entry.file_name())).unwrap();
    }
    let config = std::fs::read_to_string(bad_eps.join("config.json")).unwrap();
    std::fs::write(
        bad_eps.join("config.json"),
        config.replace("\"rms_norm_eps\": 1e-05", "\"rms_norm_eps\": -1"),
    )
    .unwrap();
    let (code, _, stderr) = qlora(&[
        "eval",
        "--model",
        &path(&bad_eps),
        "--data",
        &data,
        "--format",
        "alpaca",
    ]);
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.contains("config.json") && stderr.contains("rms_norm_eps"),
        "{stderr}"
    );

    // A NaN in an adapter's weights.
    let adapter = dir.path().join("adapter");
    std::fs::create_dir(&adapter).unwrap();
    let lora = root().join("tests/fixtures/tiny-llama-lora");
    std::fs::copy(
        lora.join("adapter_config.json"),
        adapter.join("adapter_config.json"),
    )
    .unwrap();
    let bytes = std::fs::read(lora.join("adapter_model.safetensors")).unwrap();
    let header = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let mut damaged = bytes.clone();
    // The first value of the first tensor: f32 NaN.
    damaged[8 + header..12 + header].copy_from_slice(&f32::NAN.to_le_bytes());
    std::fs::write(adapter.join("adapter_model.safetensors"), damaged).unwrap();
    let (code, stdout, stderr) = qlora(&[
        "eval",
        "--model",
        &path(&source),
        "--adapter",
        &path(&adapter),
        "--data",
        &data,
        "--bits",
        "16",
        "--format",
        "alpaca",
    ]);
    assert_eq!(code, 1, "{stdout}{stderr}");
    assert!(
        stderr.contains("adapter_model.safetensors") && stderr.contains("NaN"),
        "{stderr}"
    );
}

/// SIGTERM (what schedulers send before preemption) and Ctrl-C stop training after a step
/// with a checkpoint, no final adapter, and exit 143 / 130, so `train && merge` stops too; the
/// run resumes from that checkpoint.
#[cfg(unix)]
#[test]
fn signals_save_a_checkpoint_and_exit_non_zero() {
    use std::process::Stdio;
    let dir = tempfile::tempdir().unwrap();
    for (signal, code) in [("TERM", 143), ("INT", 130)] {
        let out = dir.path().join(signal);
        let child = spawn_long_training(&out, &[], 1, Stdio::piped());
        send(signal, child.id());
        let output = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(code), "{signal}: {stderr}");
        assert!(stderr.contains("saving a checkpoint"), "{signal}: {stderr}");
        assert!(
            !out.join("adapter_config.json").exists(),
            "no final adapter"
        );
        let checkpoints: Vec<_> = std::fs::read_dir(&out)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with("checkpoint-"))
            .collect();
        assert_eq!(checkpoints.len(), 1, "{checkpoints:?}");
    }
}

/// Write a LLaMA checkpoint big enough that quantizing it takes a while (bf16, ~30M
/// parameters), from the fixture's config.
fn big_model(dir: &Path) {
    use safetensors::Dtype;
    use safetensors::tensor::{TensorView, serialize_to_file};
    std::fs::create_dir_all(dir).unwrap();
    let (h, inter, layers, vocab) = (512usize, 1536usize, 8usize, 1024usize);
    let mut config: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(root().join("tests/fixtures/tiny-llama/config.json")).unwrap(),
    )
    .unwrap();
    config["hidden_size"] = h.into();
    config["intermediate_size"] = inter.into();
    config["num_hidden_layers"] = layers.into();
    config["num_attention_heads"] = 8.into();
    config["num_key_value_heads"] = 8.into();
    config["head_dim"] = 64.into();
    config["vocab_size"] = vocab.into();
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
    let mut shapes = vec![
        ("model.embed_tokens.weight".to_string(), vec![vocab, h]),
        ("lm_head.weight".to_string(), vec![vocab, h]),
        ("model.norm.weight".to_string(), vec![h]),
    ];
    for l in 0..layers {
        for (name, shape) in [
            ("self_attn.q_proj", [h, h]),
            ("self_attn.k_proj", [h, h]),
            ("self_attn.v_proj", [h, h]),
            ("self_attn.o_proj", [h, h]),
            ("mlp.gate_proj", [inter, h]),
            ("mlp.up_proj", [inter, h]),
            ("mlp.down_proj", [h, inter]),
        ] {
            shapes.push((format!("model.layers.{l}.{name}.weight"), shape.to_vec()));
        }
        for norm in ["input_layernorm", "post_attention_layernorm"] {
            shapes.push((format!("model.layers.{l}.{norm}.weight"), vec![h]));
        }
    }
    let data: Vec<(String, Vec<usize>, Vec<u8>)> = shapes
        .into_iter()
        .map(|(name, shape)| {
            let n: usize = shape.iter().product();
            // bf16 values in [-0.03, 0.03), varied so every block has its own scale.
            let bytes = (0..n)
                .flat_map(|i| {
                    let v = ((i * 2_654_435_761) % 1000) as f32 * 6e-5 - 0.03;
                    ((v.to_bits() >> 16) as u16).to_le_bytes()
                })
                .collect();
            (name, shape, bytes)
        })
        .collect();
    let views: Vec<(String, TensorView<'_>)> = data
        .iter()
        .map(|(n, s, b)| {
            (
                n.clone(),
                TensorView::new(Dtype::BF16, s.clone(), b).unwrap(),
            )
        })
        .collect();
    serialize_to_file(views, None, &dir.join("model.safetensors")).unwrap();
}

/// Ctrl-C while `quantize` writes its output: exit 130 and no hidden staging directory left.
#[cfg(unix)]
#[test]
fn a_signal_during_an_output_removes_the_unfinished_output() {
    use std::process::{Command, Stdio};
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("model");
    big_model(&model);
    let outputs = dir.path().join("outputs");
    std::fs::create_dir(&outputs).unwrap();
    let out = outputs.join("nf4");
    let child = Command::new(env!("CARGO_BIN_EXE_qlora"))
        .args(["quantize", "--model", &path(&model), "--out", &path(&out)])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let staging = || {
        std::fs::read_dir(&outputs)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.contains(".partial-"))
            .count()
    };
    let started = std::time::Instant::now();
    while staging() == 0 {
        assert!(
            started.elapsed().as_secs() < 60,
            "quantize never started writing"
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    send("INT", child.id());
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(130), "{stderr}");
    assert_eq!(staging(), 0, "{stderr}");
    assert!(!out.exists());
    assert!(
        !outputs.join(".nf4.qlora.lock").exists(),
        "lock left behind"
    );
}

/// `--force` replaces an output, never an input, and replaces a file as well as a directory.
#[test]
fn force_never_deletes_an_input() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("model");
    std::fs::create_dir(&model).unwrap();
    for entry in std::fs::read_dir(root().join("tests/fixtures/tiny-llama")).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), model.join(entry.file_name())).unwrap();
    }
    let adapter = path(&root().join("tests/fixtures/tiny-llama-lora"));
    let files_before = std::fs::read_dir(&model).unwrap().count();
    for out in [model.clone(), dir.path().to_path_buf()] {
        let (code, _, stderr) = qlora(&[
            "merge",
            "--model",
            &path(&model),
            "--adapter",
            &adapter,
            "--out",
            &path(&out),
            "--force",
        ]);
        assert_eq!(code, 1, "{stderr}");
        assert!(stderr.contains("is (or contains) the input"), "{stderr}");
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
    }
    let (code, _, stderr) = qlora(&[
        "quantize",
        "--model",
        &path(&model),
        "--out",
        &path(&model),
        "--force",
    ]);
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("is (or contains) the input"), "{stderr}");
    assert_eq!(std::fs::read_dir(&model).unwrap().count(), files_before);

    // An existing regular file as --out: replaced by the output directory, nothing left over.
    let file = dir.path().join("merged");
    std::fs::write(&file, "not a model").unwrap();
    let (code, _, stderr) = qlora(&[
        "merge",
        "--model",
        &path(&model),
        "--adapter",
        &adapter,
        "--out",
        &path(&file),
        "--force",
    ]);
    assert_eq!(code, 0, "{stderr}");
    assert!(file.join("config.json").is_file());
    let hidden: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.'))
        .collect();
    assert!(hidden.is_empty(), "{hidden:?}");
}

/// Every file of a run's output gets the same, ordinary permissions.
#[cfg(unix)]
#[test]
fn outputs_have_ordinary_permissions() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    let (code, stderr) = train(&out, &["--max-steps", "2", "--save-steps", "1"]);
    assert_eq!(code, 0, "{stderr}");
    let probe = dir.path().join("probe");
    std::fs::write(&probe, "").unwrap();
    let ordinary = std::fs::metadata(&probe).unwrap().permissions().mode() & 0o777;
    let mut files = Vec::new();
    for entry in walk(&out) {
        if entry.is_file() {
            let mode = std::fs::metadata(&entry).unwrap().permissions().mode() & 0o777;
            files.push((entry, mode));
        }
    }
    assert!(files.len() >= 8, "{files:?}");
    for (file, mode) in files {
        assert_eq!(mode, ordinary, "{}: {mode:o}", file.display());
    }
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(walk(&path));
        }
        out.push(path);
    }
    out
}

/// `train --adapter DIR` continues an adapter PEFT saved: its r, alpha and targets are the
/// run's, its weights the starting point (a step at lr 1e-12 leaves them where they were).
#[test]
fn training_continues_an_existing_adapter() {
    use safetensors::SafeTensors;
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    let lora = root().join("tests/fixtures/tiny-llama-lora");
    let (code, stderr) = train(
        &out,
        &[
            "--adapter",
            &path(&lora),
            "--max-steps",
            "1",
            "--lr",
            "1e-12",
            "--dropout",
            "0",
        ],
    );
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stderr.contains("continuing the adapter in") && stderr.contains("r 8, alpha 16"),
        "{stderr}"
    );
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("adapter_config.json")).unwrap())
            .unwrap();
    assert_eq!(
        (config["r"].as_u64(), config["lora_alpha"].as_f64()),
        (Some(8), Some(16.0))
    );
    let before = std::fs::read(lora.join("adapter_model.safetensors")).unwrap();
    let after = std::fs::read(out.join("adapter_model.safetensors")).unwrap();
    let (before, after) = (
        SafeTensors::deserialize(&before).unwrap(),
        SafeTensors::deserialize(&after).unwrap(),
    );
    assert_eq!(before.len(), after.len());
    for (name, view) in before.tensors() {
        let other = after.tensor(&name).unwrap();
        let f = |b: &[u8]| -> Vec<f32> {
            b.chunks_exact(4)
                .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
                .collect()
        };
        for (a, b) in f(view.data()).iter().zip(f(other.data())) {
            assert!((a - b).abs() <= 1e-9, "{name}: {a} -> {b}");
        }
    }

    // An adapter with its own rank for some modules cannot be continued as one.
    let patterned = edited_fixture_adapter(
        &dir.path().join("patterned"),
        "alpha_pattern",
        serde_json::json!({"q_proj": 32}),
    );
    let (code, stderr) = train(
        &dir.path().join("run2"),
        &["--adapter", &path(&patterned), "--max-steps", "1"],
    );
    assert_eq!(code, 1, "{stderr}");
    assert!(stderr.contains("own rank or alpha"), "{stderr}");
}

/// Likely mistakes are warned about, not refused.
#[test]
fn likely_mistakes_are_warned_about() {
    let dir = tempfile::tempdir().unwrap();
    // k_proj of the fixture model is 128 -> 64: rank 100 is above min(in, out).
    let (code, stderr) = train(
        &dir.path().join("run"),
        &["--max-steps", "1", "--rank", "100"],
    );
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stderr.contains("warning: r 100 is above min(in, out) = 64 of k_proj"),
        "{stderr}"
    );
    let model = path(&root().join("tests/fixtures/tiny-llama"));
    let (code, _, stderr) = qlora(&[
        "generate",
        "--model",
        &model,
        "--prompt",
        "Hello",
        "--max-new-tokens",
        "300",
    ]);
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stderr.contains("go past the model's max_position_embeddings 256"),
        "{stderr}"
    );
}

/// Weights an adapter's config does not target are ignored, with a warning, by every command
/// that reads adapters.
#[test]
fn untargeted_adapter_weights_are_ignored_with_a_warning() {
    let dir = tempfile::tempdir().unwrap();
    let adapter = edited_fixture_adapter(
        &dir.path().join("adapter"),
        "target_modules",
        serde_json::json!(["q_proj"]),
    );
    let model = path(&root().join("tests/fixtures/tiny-llama"));
    let data = path(&root().join("datasets/parity_eval.jsonl"));
    let runs: [Vec<String>; 2] = [
        vec![
            "eval".into(),
            "--model".into(),
            model.clone(),
            "--adapter".into(),
            path(&adapter),
            "--data".into(),
            data,
            "--format".into(),
            "alpaca".into(),
        ],
        vec![
            "merge".into(),
            "--model".into(),
            model,
            "--adapter".into(),
            path(&adapter),
            "--out".into(),
            path(&dir.path().join("merged")),
        ],
    ];
    for args in runs {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let (code, _, stderr) = qlora(&args);
        assert_eq!(code, 0, "{stderr}");
        assert!(
            stderr.contains("target_modules does not cover 12 of the file's modules"),
            "{}: {stderr}",
            args[0]
        );
    }
}

/// On the CPU a paged optimizer says it pages nothing, instead of implying otherwise.
#[test]
fn a_paged_optimizer_on_the_cpu_says_nothing_is_paged() {
    let dir = tempfile::tempdir().unwrap();
    let (code, stderr) = train(
        &dir.path().join("run"),
        &["--max-steps", "1", "--optim", "paged_adamw_8bit"],
    );
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stderr.contains(
            "paged_adamw_8bit on the CPU: device memory is host memory, so nothing is paged \
             and it runs as adamw_8bit"
        ),
        "{stderr}"
    );
}

/// Two runs on one --out: the second is refused at once naming the first's pid and command;
/// once the first is killed with SIGKILL (no chance to clean up), a new run starts.
#[cfg(unix)]
#[test]
fn a_second_run_on_the_same_out_is_refused_until_the_first_is_gone() {
    use std::process::Stdio;
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    let mut first = spawn_long_training(&out, &[], 1, Stdio::null());
    let refused_at = std::time::Instant::now();
    let (code, stderr) = train(&out, &["--max-steps", "1"]);
    assert_eq!(code, 1, "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains(&format!(
            "another qlora is writing here (pid {}: ",
            first.id()
        )) && stderr.contains("--max-steps 100000"),
        "{stderr}"
    );
    assert!(
        refused_at.elapsed().as_secs() < 10,
        "refused only after loading"
    );
    send("KILL", first.id());
    first.wait().unwrap();
    let (code, stderr) = train(&out, &["--max-steps", "1"]);
    assert_eq!(code, 0, "{stderr}");
}

/// Two writers of one output (here `quantize`, as `merge`, `export-gguf` and `import-gguf`):
/// the second is refused at once naming the first's pid; the first finishes and leaves no lock
/// file beside its output.
#[cfg(unix)]
#[test]
fn a_second_writer_of_an_output_is_refused() {
    use std::process::{Command, Stdio};
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("model");
    big_model(&model);
    let out = dir.path().join("nf4");
    let first = Command::new(env!("CARGO_BIN_EXE_qlora"))
        .args(["quantize", "--model", &path(&model), "--out", &path(&out)])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let lock = dir.path().join(".nf4.qlora.lock");
    let started = std::time::Instant::now();
    while !std::fs::read_to_string(&lock).is_ok_and(|l| l.lines().count() == 2) {
        assert!(
            started.elapsed().as_secs() < 60,
            "quantize never took its lock"
        );
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    let (code, _, stderr) = qlora(&["quantize", "--model", &path(&model), "--out", &path(&out)]);
    let pid = first.id();
    let output = first.wait_with_output().unwrap();
    assert_eq!(
        output.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert_eq!(code, 1, "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(
        stderr.contains(&format!("another qlora is writing here (pid {pid}: ")),
        "{stderr}"
    );
    assert!(out.join("config.json").is_file());
    assert!(!lock.exists(), "the lock file stays behind");
}
