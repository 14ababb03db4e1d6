//! PEFT adapters: the fixture adapter reproduces PEFT's logits, and what we save follows PEFT's
//! conventions and loads back bit for bit.

use qlora_core::lora::{AdapterDtype, LoraConfig, load_adapter, save_adapter};
use qlora_core::model::{Bits, CausalLm, LoadOptions};
use support::{f32s, fixture, load_tensors};

fn reference_ids() -> Vec<Vec<u32>> {
    let t = load_tensors("tiny-llama-lora/reference.safetensors");
    let (_, shape, bytes) = &t["input_ids"];
    let ids: Vec<u32> = bytes
        .chunks_exact(8)
        .map(|b| i64::from_le_bytes(b.try_into().unwrap()) as u32)
        .collect();
    ids.chunks(shape[1]).map(<[u32]>::to_vec).collect()
}

fn dense() -> LoadOptions {
    LoadOptions {
        bits: Bits::Sixteen,
        ..LoadOptions::default()
    }
}

#[test]
fn fixture_adapter_matches_peft() {
    let reference = load_tensors("tiny-llama-lora/reference.safetensors");
    let expected = f32s(&reference["logits"].2);
    let expected_loss = f32s(&reference["loss"].2)[0];
    let mut model = CausalLm::load(fixture("tiny-llama"), &dense()).unwrap();
    let config = load_adapter(&mut model, &fixture("tiny-llama-lora")).unwrap();
    assert_eq!((config.r, config.alpha), (8, 16.0));
    assert_eq!(model.adapters().len(), 14);
    let ids = reference_ids();
    let logits = model.forward(&ids, None, None).unwrap();
    let values: Vec<f32> = logits.clone().into_data().try_into_vec().unwrap();
    let max_diff = values
        .iter()
        .zip(&expected)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    assert!(max_diff <= 1e-4, "max |logit diff| {max_diff}");
    let labels: Vec<Vec<i64>> = ids
        .iter()
        .map(|r| r.iter().map(|&i| i64::from(i)).collect())
        .collect();
    let loss = model.loss_sum(logits, &labels).unwrap();
    let mean = loss.sum.into_scalar::<f32>() / loss.tokens as f32;
    assert!(
        (mean - expected_loss).abs() <= 1e-4,
        "loss {mean} vs {expected_loss}"
    );
    eprintln!(
        "PEFT fixture adapter: max |logit diff| {max_diff:.2e}, loss {mean} vs {expected_loss}"
    );

    // On the NF4 base the adapter loads and runs.
    let mut nf4 = CausalLm::load(fixture("tiny-llama"), &LoadOptions::default()).unwrap();
    load_adapter(&mut nf4, &fixture("tiny-llama-lora")).unwrap();
    let values: Vec<f32> = nf4
        .forward(&ids, None, None)
        .unwrap()
        .into_data()
        .try_into_vec()
        .unwrap();
    assert!(values.iter().all(|v| v.is_finite()));
}

#[test]
fn saved_adapters_follow_peft_and_round_trip() {
    let mut model = CausalLm::load(fixture("tiny-llama"), &dense()).unwrap();
    let config = LoraConfig {
        r: 8,
        dropout: 0.0,
        ..LoraConfig::default()
    };
    model.attach_lora(&config, 3).unwrap();
    // Give B values so the round trip is not trivially zeros.
    for (_, linear) in model.linears_mut() {
        let lora = linear.lora.as_mut().unwrap();
        lora.b = lora
            .a
            .clone()
            .transpose()
            .narrow(0, 0, 1)
            .repeat_dim(0, linear.out_features)
            * 0.5;
    }
    let dir = tempfile::tempdir().unwrap();
    save_adapter(&model, dir.path(), &config, "tiny-llama", AdapterDtype::F32).unwrap();

    // Same keys, dtypes and shapes as the adapter PEFT saved for the same settings.
    let ours = support::load_tensors_at(&dir.path().join("adapter_model.safetensors"));
    let theirs = load_tensors("tiny-llama-lora/adapter_model.safetensors");
    let mut our_keys: Vec<_> = ours
        .iter()
        .map(|(k, (d, s, _))| (k.clone(), *d, s.clone()))
        .collect();
    let mut their_keys: Vec<_> = theirs
        .iter()
        .map(|(k, (d, s, _))| (k.clone(), *d, s.clone()))
        .collect();
    our_keys.sort_by(|a, b| a.0.cmp(&b.0));
    their_keys.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(our_keys, their_keys);
    let config_json: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join("adapter_config.json")).unwrap(),
    )
    .unwrap();
    for (key, value) in [
        ("peft_type", serde_json::json!("LORA")),
        ("task_type", serde_json::json!("CAUSAL_LM")),
        ("r", serde_json::json!(8)),
        ("lora_alpha", serde_json::json!(16)),
        ("bias", serde_json::json!("none")),
        ("fan_in_fan_out", serde_json::json!(false)),
        ("use_rslora", serde_json::json!(false)),
    ] {
        assert_eq!(config_json[key], value, "{key}");
    }

    // Load back: bit-identical adapters.
    let mut reloaded = CausalLm::load(fixture("tiny-llama"), &dense()).unwrap();
    load_adapter(&mut reloaded, dir.path()).unwrap();
    for ((p1, a1), (p2, a2)) in model.adapters().iter().zip(reloaded.adapters().iter()) {
        assert_eq!(p1, p2);
        assert_eq!(a1.scale, a2.scale);
        for (x, y) in [(&a1.a, &a2.a), (&a1.b, &a2.b)] {
            let x: Vec<f32> = x.clone().into_data().try_into_vec().unwrap();
            let y: Vec<f32> = y.clone().into_data().try_into_vec().unwrap();
            assert_eq!(support::bits(&x), support::bits(&y), "{p1}");
        }
    }

    // bf16 adapters load too (values rounded to bf16).
    let bf16_dir = tempfile::tempdir().unwrap();
    save_adapter(
        &model,
        bf16_dir.path(),
        &config,
        "tiny-llama",
        AdapterDtype::BF16,
    )
    .unwrap();
    let st = support::load_tensors_at(&bf16_dir.path().join("adapter_model.safetensors"));
    assert!(st.values().all(|(d, _, _)| *d == safetensors::Dtype::BF16));
    load_adapter(&mut reloaded, bf16_dir.path()).unwrap();
}

#[test]
fn mismatched_adapters_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    for file in ["adapter_config.json", "adapter_model.safetensors"] {
        std::fs::copy(fixture("tiny-llama-lora").join(file), dir.path().join(file)).unwrap();
    }
    // An adapter for a model with another hidden size: shapes do not fit.
    let mut other = CausalLm::load(fixture("tiny-llama"), &dense()).unwrap();
    other.layers.truncate(1);
    let err = load_adapter(&mut other, dir.path())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("model.layers.1") && err.contains("no such linear"),
        "{err}"
    );

    let config = std::fs::read_to_string(dir.path().join("adapter_config.json")).unwrap();
    std::fs::write(
        dir.path().join("adapter_config.json"),
        config.replace("\"LORA\"", "\"IA3\""),
    )
    .unwrap();
    let mut model = CausalLm::load(fixture("tiny-llama"), &dense()).unwrap();
    let err = load_adapter(&mut model, dir.path())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("adapter_config.json") && err.contains("peft_type"),
        "{err}"
    );
}

/// The fixture adapter with `change` applied to its config, in a temporary directory.
fn edited_fixture_adapter(change: &serde_json::Value) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let source = fixture("tiny-llama-lora");
    std::fs::copy(
        source.join("adapter_model.safetensors"),
        dir.path().join("adapter_model.safetensors"),
    )
    .unwrap();
    let mut config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(source.join("adapter_config.json")).unwrap())
            .unwrap();
    for (k, v) in change.as_object().unwrap() {
        config[k] = v.clone();
    }
    std::fs::write(dir.path().join("adapter_config.json"), config.to_string()).unwrap();
    dir
}

/// The fixture adapter's weights under edited configs: what PEFT applies is what we apply.
/// Losses from PEFT 0.21 (`PeftModel.from_pretrained` on the f32 fixture model, the reference
/// ids as labels), each config being the fixture's with the one change shown.
#[test]
fn adapter_configs_apply_exactly_what_peft_applies() {
    let cases: [(&str, serde_json::Value, f32, usize); 4] = [
        (
            "q_only",
            serde_json::json!({"target_modules": ["q_proj"]}),
            6.950955,
            2,
        ),
        (
            "layer1",
            serde_json::json!({"layers_to_transform": [1]}),
            6.962568,
            7,
        ),
        (
            "alpha_pattern",
            serde_json::json!({"alpha_pattern": {"q_proj": 32, "mlp.down_proj": 4}}),
            7.060173,
            14,
        ),
        (
            "regex",
            serde_json::json!({"target_modules": r".*\.layers\.0\..*_proj"}),
            7.116964,
            7,
        ),
    ];
    let ids = reference_ids();
    let labels: Vec<Vec<i64>> = ids
        .iter()
        .map(|r| r.iter().map(|&i| i64::from(i)).collect())
        .collect();
    for (name, change, peft_loss, adapters) in cases {
        let dir = edited_fixture_adapter(&change);
        let mut model = CausalLm::load(fixture("tiny-llama"), &dense()).unwrap();
        load_adapter(&mut model, dir.path()).unwrap();
        assert_eq!(model.adapters().len(), adapters, "{name}");
        let logits = model.forward(&ids, None, None).unwrap();
        let loss = model.loss_sum(logits, &labels).unwrap();
        let mean = loss.sum.into_scalar::<f32>() / loss.tokens as f32;
        assert!(
            (mean - peft_loss).abs() <= 1e-4,
            "{name}: loss {mean}, PEFT {peft_loss}"
        );
    }
}

/// What PEFT refuses, we refuse, with its reason and the key.
#[test]
fn adapter_configs_peft_refuses_are_refused() {
    for (change, key, reason) in [
        (serde_json::json!({"r": 16}), "lora_A.weight", "r 16"),
        (
            serde_json::json!({"r": 0}),
            "r",
            "should be a positive integer",
        ),
        (
            serde_json::json!({"rank_pattern": {"q_proj": 4}}),
            "q_proj.lora_A.weight",
            "r 4",
        ),
        (
            serde_json::json!({"target_modules": ["lm_head"]}),
            "adapter_config.json",
            "matches none",
        ),
    ] {
        let dir = edited_fixture_adapter(&change);
        let mut model = CausalLm::load(fixture("tiny-llama"), &dense()).unwrap();
        let err = load_adapter(&mut model, dir.path())
            .unwrap_err()
            .to_string();
        assert!(err.contains(key) && err.contains(reason), "{change}: {err}");
    }
}
