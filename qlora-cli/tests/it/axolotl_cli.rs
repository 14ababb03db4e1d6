//! `qlora train --config run.yml` with an axolotl QLoRA config: the same adapter as the
//! equivalent flags; speed-only keys ignored in one warning; keys it cannot honour refused.

use std::path::{Path, PathBuf};

use crate::common::qlora;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// `datasets/identity_train.jsonl` with other names: `dialog` lists of `speaker`/`text`.
fn renamed_dataset(dir: &Path) -> PathBuf {
    let path = dir.join("dialogs.jsonl");
    let text = std::fs::read_to_string(root().join("datasets/identity_train.jsonl")).unwrap();
    let lines: Vec<String> = text
        .lines()
        .map(|line| {
            let record: serde_json::Value = serde_json::from_str(line).unwrap();
            let dialog: Vec<serde_json::Value> = record["messages"]
                .as_array()
                .unwrap()
                .iter()
                .map(|m| serde_json::json!({"speaker": m["role"], "text": m["content"]}))
                .collect();
            serde_json::json!({ "dialog": dialog }).to_string()
        })
        .collect();
    std::fs::write(&path, lines.join("\n") + "\n").unwrap();
    path
}

fn config(model: &Path, data: &Path, out: &Path, extra: &str) -> String {
    format!(
        r#"base_model: {model}
model_type: LlamaForCausalLM
tokenizer_type: AutoTokenizer
load_in_8bit: false
load_in_4bit: true
strict: false

datasets:
  - path: {data}
    type: chat_template
    split: train
    field_messages: dialog
    message_property_mappings:
      role: speaker
      content: text
chat_template: chatml
dataset_prepared_path:
val_set_size: 0.1
output_dir: {out}

sequence_len: 256
sample_packing: true
pad_to_sequence_len: true

adapter: qlora
lora_model_dir:
lora_r: 8
lora_alpha: 16
lora_dropout: 0.05
lora_target_linear: true
lora_target_modules:
  - q_proj
  - v_proj

wandb_project:
wandb_entity: someone
wandb_log_model:

gradient_accumulation_steps: 2
micro_batch_size: 2
num_epochs: 1
max_steps: 3
optimizer: paged_adamw_8bit
lr_scheduler: cosine
learning_rate: 1e-3
warmup_steps: 1
warmup_ratio: 0.1
weight_decay: 0.01
max_grad_norm: 1.0

train_on_inputs: false
group_by_length: false
bf16: auto
tf32: false
gradient_checkpointing: true
flash_attention: true
logging_steps: 1
eval_steps: 2
save_steps: 2
save_total_limit: 2
seed: 7
deepspeed:
fsdp:
fsdp_config:
special_tokens:
  eos_token: "<|im_end|>"
{extra}"#,
        model = model.display(),
        data = data.display(),
        out = out.display(),
    )
}

#[test]
fn an_axolotl_config_trains_the_adapter_its_flags_train() {
    let dir = tempfile::tempdir().unwrap();
    let model = root().join("tests/fixtures/tiny-llama");
    let data = renamed_dataset(dir.path());
    let out = dir.path().join("yaml");
    let yaml = dir.path().join("qlora.yml");
    std::fs::write(&yaml, config(&model, &data, &out, "")).unwrap();

    let (code, stdout, stderr) = qlora(&["train", "--config", s(&yaml), "--print-config"]);
    assert_eq!(code, 0, "{stderr}");
    for line in [
        "rank = 8",
        "target_modules = \"all-linear\"",
        "optim = \"paged_adamw_8bit\"",
        "chat_template = \"chatml\"",
        "field_messages = \"dialog\"",
        "max_seq_len = 256",
    ] {
        assert!(stdout.contains(line), "{line} not in\n{stdout}");
    }
    assert!(!out.exists(), "--print-config trains nothing");

    let (code, _, stderr) = qlora(&["train", "--config", s(&yaml)]);
    assert_eq!(code, 0, "{stderr}");
    let warning = stderr
        .lines()
        .find(|l| l.contains("ignoring settings"))
        .expect(&stderr);
    for key in [
        "model_type",
        "flash_attention",
        "wandb_entity",
        "bf16",
        "tf32",
        "strict",
    ] {
        assert!(warning.contains(key), "{key} not in {warning}");
    }
    assert!(
        stderr.contains("(messages) -> 54 examples") || stderr.contains("60 records (messages)"),
        "{stderr}"
    );

    let flags_out = dir.path().join("flags");
    let (code, _, stderr) = qlora(&[
        "train",
        "--model",
        s(&model),
        "--data",
        s(&data),
        "--format",
        "messages",
        "--field-messages",
        "dialog",
        "--field-role",
        "speaker",
        "--field-content",
        "text",
        "--chat-template",
        "chatml",
        "--eos-token",
        "<|im_end|>",
        "--eval-fraction",
        "0.1",
        "--out",
        s(&flags_out),
        "--max-seq-len",
        "256",
        "--source-max-len",
        "256",
        "--target-max-len",
        "256",
        "--bits",
        "4",
        "--rank",
        "8",
        "--alpha",
        "16",
        "--dropout",
        "0.05",
        "--target-modules",
        "all-linear",
        "--grad-accum",
        "2",
        "--batch-size",
        "2",
        "--epochs",
        "1",
        "--max-steps",
        "3",
        "--optim",
        "paged_adamw_8bit",
        "--schedule",
        "cosine",
        "--lr",
        "1e-3",
        "--warmup-steps",
        "1",
        "--warmup-ratio",
        "0.1",
        "--weight-decay",
        "0.01",
        "--max-grad-norm",
        "1.0",
        "--train-on-source",
        "false",
        "--logging-steps",
        "1",
        "--eval-steps",
        "2",
        "--save-steps",
        "2",
        "--save-total-limit",
        "2",
        "--seed",
        "7",
    ]);
    assert_eq!(code, 0, "{stderr}");
    let weights = |dir: &Path| std::fs::read(dir.join("adapter_model.safetensors")).unwrap();
    assert_eq!(weights(&out), weights(&flags_out), "the same adapter");
    let metrics = |dir: &Path| std::fs::read_to_string(dir.join("metrics.jsonl")).unwrap();
    let losses = |text: String| -> Vec<f64> {
        text.lines()
            .map(|l| {
                serde_json::from_str::<serde_json::Value>(l).unwrap()["loss"]
                    .as_f64()
                    .unwrap()
            })
            .collect()
    };
    assert_eq!(losses(metrics(&out)), losses(metrics(&flags_out)));

    // resume_from_checkpoint continues from the checkpoint to the same adapter.
    let checkpoint = out.join("checkpoint-2");
    std::fs::write(
        &yaml,
        config(
            &model,
            &data,
            &out,
            &format!("resume_from_checkpoint: {}\n", checkpoint.display()),
        ),
    )
    .unwrap();
    let (code, _, stderr) = qlora(&["train", "--config", s(&yaml)]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stderr.contains("resumed from"), "{stderr}");
    assert_eq!(weights(&out), weights(&flags_out), "resumed exactly");
}

#[test]
fn keys_it_cannot_honour_are_one_line_errors() {
    let dir = tempfile::tempdir().unwrap();
    let yaml = dir.path().join("bad.yaml");
    for (text, needle) in [
        ("rl: dpo\n", "`rl`: qlora cannot honour this"),
        (
            "load_in_8bit: true\n",
            "`load_in_8bit`: qlora cannot honour this: 8-bit LoRA",
        ),
        (
            "lora_rank: 8\n",
            "`lora_rank`: not an axolotl setting qlora knows",
        ),
        (
            "datasets:\n  - path: a.jsonl\n    type: alpaca\n  - path: b.jsonl\n    type: alpaca\n",
            "`datasets`: qlora cannot honour this: one dataset a run",
        ),
        (
            "chat_template: gemma\n",
            "`chat_template`: `gemma` is not a template",
        ),
        ("lora_r: eight\n", "`lora_r`: expected a whole number"),
        ("lora_r: [8\n", "invalid YAML"),
    ] {
        std::fs::write(&yaml, text).unwrap();
        let (code, _, stderr) = qlora(&["train", "--config", s(&yaml)]);
        assert_eq!(code, 1, "{text}: {stderr}");
        assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
        assert!(
            stderr.contains(needle) && stderr.contains("bad.yaml"),
            "{stderr}"
        );
    }
}
