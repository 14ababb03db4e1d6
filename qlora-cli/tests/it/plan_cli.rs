//! `qlora plan` as a user runs it: presets without weights, the fit verdict with suggestions,
//! the documented JSON keys, and one-line errors.

use crate::common::qlora;

#[test]
fn presets_plan_without_weights_and_json_is_stable() {
    let (code, stdout, stderr) = qlora(&[
        "plan",
        "--model",
        "llama-65b",
        "--compute-dtype",
        "bf16",
        "--gpu-memory",
        "40GB",
        "--json",
    ]);
    assert_eq!(code, 0, "{stderr}");
    let plan: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let keys: Vec<&str> = plan
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(
        keys,
        [
            "assumptions",
            "fits",
            "host_bytes",
            "items",
            "memory_bytes",
            "model",
            "parameters",
            "peak_bytes",
            "suggestions",
            "trainable_parameters"
        ]
    );
    let items: Vec<&str> = plan["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["key"].as_str().unwrap())
        .collect();
    assert_eq!(
        items,
        [
            "base_weights",
            "embeddings_and_head",
            "lora_parameters",
            "lora_gradients",
            "optimizer_states",
            "checkpoints",
            "layer_activations",
            "logits_and_loss",
            "dequantized_weight",
            "workspace"
        ]
    );
    let total: u64 = plan["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["bytes"].as_u64().unwrap())
        .sum();
    assert_eq!(plan["peak_bytes"].as_u64().unwrap(), total);
    assert_eq!(plan["fits"], false);
    let suggestions = plan["suggestions"].as_array().unwrap();
    assert!(suggestions.iter().any(|s| s["fits"] == true), "{stdout}");

    assert_eq!(plan["assumptions"]["compute_dtype"], "bf16");
    assert_eq!(plan["assumptions"]["seq_len"], 512);

    let (code, stdout, _) = qlora(&["plan", "--model", "llama-7b", "--gpu-memory", "24GB"]);
    assert_eq!(code, 0);
    assert!(stdout.contains("fits in"), "{stdout}");
    // The header says what was assumed, and how --gpu-memory was read.
    let header = stdout.lines().nth(1).unwrap();
    for assumed in [
        "1 row of 512 tokens",
        "f32 compute",
        "AdamW 32-bit states, paged",
        "gradient checkpointing on",
        "GiB (2^30 bytes)",
        "24000000000 bytes = 22.4 GiB",
    ] {
        assert!(header.contains(assumed), "{assumed}: {header}");
    }
}

/// Llama-2-7B with r 64 on every linear on 2 ranks: the peak is each device's (the same as one
/// device's), and a step all-reduces the 159.9 M adapter gradients in f32 (640 MB).
#[test]
fn plans_on_several_ranks_give_the_all_reduce_a_step() {
    let plan = |extra: &[&str]| {
        let (code, stdout, stderr) = qlora(
            &[
                &["plan", "--model", "llama-7b", "--rank", "64", "--json"],
                extra,
            ]
            .concat(),
        );
        assert_eq!(code, 0, "{stderr}");
        serde_json::from_str::<serde_json::Value>(&stdout).unwrap()
    };
    let (one, two) = (plan(&[]), plan(&["--world-size", "2"]));
    assert_eq!(one["peak_bytes"], two["peak_bytes"]);
    assert!(one.get("allreduce_bytes_per_step").is_none());
    // The adapters' gradients and 12 counts (loss, targets, tokens, positions, stop, and a
    // preference run's seven metric sums).
    assert_eq!(two["allreduce_bytes_per_step"], 4 * (159_907_840 + 12));
    assert_eq!(two["global_batch_rows"], 32);
    let (code, stdout, _) = qlora(&["plan", "--model", "llama-7b", "--world-size", "2"]);
    assert_eq!(code, 0);
    assert!(
        stdout.contains("one all-reduce a step of 639.6 MB"),
        "{stdout}"
    );
    // A preference run's row holds a pair: two sequences of --seq-len.
    let dpo = plan(&["--method", "dpo", "--seq-len", "512"]);
    let sft = plan(&["--seq-len", "1024"]);
    assert_eq!(dpo["peak_bytes"], sft["peak_bytes"]);
    assert!(dpo["peak_bytes"].as_u64() > plan(&["--seq-len", "512"])["peak_bytes"].as_u64());
}

#[test]
fn bad_plans_are_one_line_errors() {
    for (args, needle) in [
        (vec!["plan", "--model", "llama-9000b"], "preset"),
        (
            vec!["plan", "--model", "llama-7b", "--optim", "sgd"],
            "--optim",
        ),
        (
            vec!["plan", "--model", "llama-7b", "--target-modules", "qkv"],
            "qkv",
        ),
    ] {
        let (code, _, stderr) = qlora(&args);
        assert_eq!(code, 1, "{stderr}");
        assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
        assert!(stderr.contains(needle), "{stderr}");
    }
}
