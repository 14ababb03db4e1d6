//! The training step's hand-written backward pass against autodiff of the model's forward
//! pass (on an autodiff device every fused operation runs its tensor-op default, which autodiff
//! differentiates): the same loss and adapter gradients, with dropout, padding, checkpointing
//! on and off.

use burn::tensor::{Device, Tensor, TensorData};
use qlora_core::lora::LoraConfig;
use qlora_core::model::{CausalLm, DropoutStream, LoadOptions, TrainBatch};
use support::{fixture, values};

fn to_vec(t: Tensor<2>) -> Vec<f32> {
    t.into_data().convert::<f32>().try_into_vec().unwrap()
}

#[test]
fn hand_written_backward_equals_autodiff() {
    let mut model = CausalLm::load(fixture("tiny-llama"), &LoadOptions::default()).unwrap();
    let config = LoraConfig {
        r: 8,
        dropout: 0.1,
        ..LoraConfig::default()
    };
    model.attach_lora(&config, 4).unwrap();
    let device = Device::flex();
    for (k, (_, linear)) in model.linears_mut().into_iter().enumerate() {
        // B = 0 would make every gradient of A zero: start from a trained-looking adapter.
        let lora = linear.lora.as_mut().unwrap();
        let b = values(linear.out_features * 8, k as u64 + 1, 0.05);
        lora.b = Tensor::from_data(TensorData::new(b, [linear.out_features, 8]), &device);
    }
    let ids: Vec<Vec<u32>> = (0..2)
        .map(|r| (0..50u32).map(|i| (i * 31 + 7 * r + 3) % 1000).collect())
        .collect();
    let mut labels: Vec<Vec<i64>> = ids
        .iter()
        .map(|row| row.iter().map(|&i| i64::from(i)).collect())
        .collect();
    labels[0][..10].fill(-100);
    let is_token = vec![vec![true; 50], [vec![true; 41], vec![false; 9]].concat()];
    labels[1][41..].fill(-100);
    let batch = TrainBatch::new(ids, labels, is_token);
    let stream = DropoutStream { seed: 9, step: 2 };

    // Autodiff of the forward pass.
    let mut tracked = model.clone();
    for (_, linear) in tracked.linears_mut() {
        let lora = linear.lora.as_mut().unwrap();
        lora.a = lora.a.clone().autodiff().require_grad();
        lora.b = lora.b.clone().autodiff().require_grad();
    }
    let logits = tracked
        .forward_with(&batch.ids, Some(&batch.is_token), None, Some(&stream))
        .unwrap();
    let loss = tracked.loss_sum(logits, &batch.labels).unwrap();
    let reference_loss = f64::from(loss.sum.clone().into_scalar::<f32>());
    let grads = loss.sum.backward();
    let reference: Vec<Vec<f32>> = tracked
        .adapters()
        .iter()
        .flat_map(|(_, a)| [a.a.grad(&grads).unwrap(), a.b.grad(&grads).unwrap()])
        .map(to_vec)
        .collect();

    for checkpointing in [true, false] {
        let ours = model
            .loss_and_grads(&batch, checkpointing, Some(&stream))
            .unwrap();
        assert!(
            (ours.loss_sum - reference_loss).abs() <= 1e-5 * reference_loss.abs(),
            "loss {} vs {reference_loss}",
            ours.loss_sum
        );
        let ours: Vec<Vec<f32>> = ours
            .grads
            .grads
            .into_iter()
            .flat_map(|(a, b)| [a, b])
            .map(to_vec)
            .collect();
        assert_eq!(ours.len(), reference.len());
        for (i, (got, want)) in ours.iter().zip(&reference).enumerate() {
            let scale = want.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-12);
            let diff = got
                .iter()
                .zip(want)
                .map(|(a, b)| (a - b).abs())
                .fold(0f32, f32::max);
            assert!(
                diff <= 1e-4 * scale,
                "checkpointing {checkpointing}, gradient {i}: max diff {diff} (scale {scale})"
            );
        }
    }
}
