//! The q/k-norm switch and per-layer sliding windows against transformers and peft, on the
//! tiny Qwen3 of `tests/reference/tiny-qwen3` (per-head q/k RMSNorm, `head_dim` 32 with hidden
//! 64 and 4 heads, tied embeddings, a full and a sliding-window layer of 6 keys over 16
//! tokens): logits within 1e-4 and loss within 1e-5 of transformers in f32, with and without a
//! PEFT adapter on all seven projections, and the adapters' gradients of the loss (our
//! written-out backward, checkpointing on and off) within 1e-4 of PyTorch's autograd.

use qlora_core::config::{Architecture, ModelConfig};
use qlora_core::lora::{apply_adapter, read_adapter};
use qlora_core::model::{Bits, CausalLm, LoadOptions, TrainBatch};
use support::{f32s, load_tensors_at, reference};

fn dense() -> LoadOptions {
    LoadOptions {
        bits: Bits::Sixteen,
        ..LoadOptions::default()
    }
}

fn max_diff(got: &[f32], want: &[f32]) -> f32 {
    assert_eq!(got.len(), want.len());
    got.iter()
        .zip(want)
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max)
}

#[test]
fn tiny_qwen3_matches_transformers_and_peft() {
    let dir = reference("tiny-qwen3");
    let config = ModelConfig::load(&dir).unwrap();
    assert_eq!(config.architecture, Architecture::Qwen3);
    assert!(config.spec.qk_norm && config.spec.tied_head);
    let windows: Vec<_> = config.spec.layers.iter().map(|l| l.window).collect();
    assert_eq!(windows, [None, Some(6)]);

    let r = load_tensors_at(&dir.join("reference.safetensors"));
    let (_, shape, bytes) = &r["input_ids"];
    let flat: Vec<u32> = bytes
        .chunks_exact(8)
        .map(|b| i64::from_le_bytes(b.try_into().unwrap()) as u32)
        .collect();
    let ids: Vec<Vec<u32>> = flat.chunks(shape[1]).map(<[u32]>::to_vec).collect();
    let labels: Vec<Vec<i64>> = ids
        .iter()
        .map(|row| row.iter().map(|&id| i64::from(id)).collect())
        .collect();
    let scalar = |name: &str| f32s(&r[name].2)[0];

    let mut model = CausalLm::load(&dir, &dense()).unwrap();
    let check = |model: &CausalLm, logits_key: &str, loss_key: &str| {
        let logits = model.forward(&ids, None, None).unwrap();
        let values: Vec<f32> = logits.clone().into_data().try_into_vec().unwrap();
        let diff = max_diff(&values, &f32s(&r[logits_key].2));
        let loss = model.loss_sum(logits, &labels).unwrap();
        let mean = loss.sum.into_scalar::<f32>() / loss.tokens as f32;
        eprintln!(
            "{logits_key}: max |diff| {diff:.2e}, loss {mean} vs {}",
            scalar(loss_key)
        );
        assert!(diff <= 1e-4, "{logits_key}: max |logit diff| {diff}");
        assert!(
            (mean - scalar(loss_key)).abs() <= 1e-5,
            "{loss_key}: {mean}"
        );
    };
    check(&model, "logits", "loss");

    let adapter = read_adapter(&dir.join("adapter")).unwrap();
    apply_adapter(&mut model, adapter).unwrap();
    check(&model, "lora_logits", "lora_loss");

    let batch = TrainBatch::new(ids.clone(), labels.clone(), vec![vec![true; shape[1]]; 2]);
    for checkpointing in [true, false] {
        let mut worst = 0f32;
        let out = model.loss_and_grads(&batch, checkpointing, None).unwrap();
        let tokens = out.tokens as f32;
        let mean = out.loss_sum as f32 / tokens;
        assert!((mean - scalar("lora_loss")).abs() <= 1e-5, "loss {mean}");
        assert_eq!(out.grads.paths.len(), 14);
        for (path, (da, db)) in out.grads.paths.iter().zip(out.grads.grads) {
            for (name, grad) in [("lora_A", da), ("lora_B", db)] {
                let ours: Vec<f32> = grad.into_data().try_into_vec().unwrap();
                let ours: Vec<f32> = ours.iter().map(|g| g / tokens).collect();
                let want = f32s(&r[&format!("grad.{path}.{name}")].2);
                let scale = want.iter().fold(0f32, |m, v| m.max(v.abs()));
                let diff = max_diff(&ours, &want);
                worst = worst.max(diff / scale);
                assert!(
                    diff <= 1e-4 * scale,
                    "checkpointing {checkpointing}, {path}.{name}: max diff {diff} (scale {scale})"
                );
            }
        }
        eprintln!("gradients, checkpointing {checkpointing}: max relative diff {worst:.2e}");
    }
}
