//! Per-layer gradient checkpointing: the same adapter gradients as a full autodiff graph (with
//! dropout on, so the recomputation must redraw the same masks), at a lower peak memory.

use burn::tensor::{Device, Distribution, Tensor};
use qlora_core::lora::LoraConfig;
use qlora_core::model::{CausalLm, DropoutStream, LoadOptions, TrainBatch};
use support::alloc::{mib, peak_during};
use support::synthetic::SyntheticModel;

const SEQ: usize = 256;

#[test]
fn checkpointing_matches_and_saves_memory() {
    let _alone = support::alloc::alone();
    let shape = SyntheticModel {
        vocab_size: 2048,
        hidden_size: 256,
        intermediate_size: 688,
        num_layers: 4,
        num_heads: 4,
        num_kv_heads: 2,
        tie_word_embeddings: false,
    };
    let dir = tempfile::tempdir().unwrap();
    shape.write(dir.path(), 5).unwrap();
    let mut model = CausalLm::load(dir.path(), &LoadOptions::default()).unwrap();
    let config = LoraConfig {
        r: 16,
        dropout: 0.1,
        ..LoraConfig::default()
    };
    model.attach_lora(&config, 1).unwrap();
    for (_, linear) in model.linears_mut() {
        // B = 0 would make every gradient of A zero: start from a trained-looking adapter.
        let lora = linear.lora.as_mut().unwrap();
        lora.b = Tensor::random(
            [linear.out_features, config.r],
            Distribution::Uniform(-0.01, 0.01),
            &Device::flex(),
        );
    }
    let ids: Vec<u32> = (0..SEQ as u32).map(|i| (i * 7919) % 2048).collect();
    let batch = {
        let labels = vec![ids.iter().map(|&i| i64::from(i)).collect()];
        TrainBatch::new(vec![ids], labels, vec![vec![true; SEQ]])
    };
    let stream = DropoutStream { seed: 3, step: 11 };

    let (full, full_peak) =
        peak_during(|| model.loss_and_grads(&batch, false, Some(&stream)).unwrap());
    let (ckpt, ckpt_peak) =
        peak_during(|| model.loss_and_grads(&batch, true, Some(&stream)).unwrap());
    eprintln!(
        "4 layers, sequence {SEQ}: peak extra heap {:.1} MiB without checkpointing, {:.1} MiB with",
        mib(full_peak),
        mib(ckpt_peak)
    );
    assert!((full.loss_sum - ckpt.loss_sum).abs() <= 1e-5 * full.loss_sum.abs());
    assert_eq!(full.grads.paths, ckpt.grads.paths);
    for (path, ((fa, fb), (ca, cb))) in full
        .grads
        .paths
        .iter()
        .zip(full.grads.grads.iter().zip(&ckpt.grads.grads))
    {
        for (name, f, c) in [("A", fa, ca), ("B", fb, cb)] {
            let f: Vec<f32> = f.clone().into_data().try_into_vec().unwrap();
            let c: Vec<f32> = c.clone().into_data().try_into_vec().unwrap();
            let scale = f.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-12);
            let diff = f
                .iter()
                .zip(&c)
                .map(|(x, y)| (x - y).abs())
                .fold(0f32, f32::max);
            assert!(
                diff <= 1e-5 * scale,
                "{path} {name}: max diff {diff} (scale {scale})"
            );
        }
    }
    assert!(ckpt_peak < full_peak, "checkpointing should lower the peak");
}
