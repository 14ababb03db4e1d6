//! What the optimizer's states really take, counted by the allocator: about 8 bytes a trainable
//! value for 32-bit AdamW, at most 2.1 (u8 codes and an f32 absmax a block of 256, both
//! moments) for 8-bit, on the adapter sizes of SmolLM2-135M at rank 64 (19.5M values). Then
//! whole training steps on that model's shape: `adamw_8bit` peaks at least 80 MiB below
//! `adamw_32bit`.

use std::sync::Mutex;

use burn::tensor::{Device, Tensor, TensorData};
use qlora_core::train::{AdamWConfig, OptimizerKind, PagedAdamW};
use support::alloc::{current, mib};
use support::synthetic::SyntheticModel;
use support::training_peak::{measure_training_peak_with, synthetic_model, write_long_texts};

/// The allocator counts the whole process: the tests take turns.
static COUNTING: Mutex<()> = Mutex::new(());

/// Sizes of the LoRA A and B matrices of every projection of SmolLM2-135M at rank `r`.
fn smollm2_adapter_sizes(r: usize) -> Vec<usize> {
    let s = SyntheticModel::SMOLLM2_135M;
    let head_dim = s.hidden_size / s.num_heads;
    let (h, kv, i) = (
        s.hidden_size,
        s.num_kv_heads * head_dim,
        s.intermediate_size,
    );
    let projections = [(h, h), (h, kv), (h, kv), (h, h), (h, i), (h, i), (i, h)];
    (0..s.num_layers)
        .flat_map(|_| projections)
        .flat_map(|(inp, out)| [r * inp, out * r])
        .collect()
}

/// One small update, so one-time tables (the 8-bit encoder's lookup tables) exist before the
/// count starts.
fn warm_up(kind: OptimizerKind, device: &Device) {
    let n = 4096;
    let mut optim = PagedAdamW::new(kind, AdamWConfig::default(), &[n], None, device);
    optim.begin_step();
    let p = Tensor::<1>::zeros([n], device);
    let g = Tensor::<1>::ones([n], device);
    let _ = optim.update(0, p, g, 1.0, 1e-3);
}

/// Heap bytes the states of `kind` hold after two updates of every parameter: what dropping
/// the optimizer frees (caches the backend grows meanwhile are not the optimizer's).
fn state_bytes(kind: OptimizerKind, sizes: &[usize], device: &Device) -> usize {
    let mut params: Vec<Tensor<1>> = sizes.iter().map(|&n| Tensor::zeros([n], device)).collect();
    warm_up(kind, device);
    let before = current();
    let mut optim = PagedAdamW::new(kind, AdamWConfig::default(), sizes, None, device);
    for step in 0..2 {
        optim.begin_step();
        for (i, &n) in sizes.iter().enumerate() {
            let g: Vec<f32> = (0..n)
                .map(|k| ((k * 7 + i + step) % 13) as f32 * 1e-3 - 6e-3)
                .collect();
            let grad = Tensor::from_data(TensorData::new(g, [n]), device);
            let p = params[i].clone();
            params[i] = optim.update(i, p, grad, 1.0, 1e-3);
        }
    }
    let grown = current() - before;
    let optim_bytes = optim.state_bytes();
    let alive = current();
    drop(optim);
    let held = alive - current();
    assert!(held <= grown);
    // The optimizer's own count of its state buffers agrees with the allocator's, up to
    // Burn's bookkeeping of each tensor (0.7-1.5 KiB measured; two tensors a parameter) and,
    // with 8-bit states, the lookup tables of the tensor-op default (0.5 MiB, once).
    let counted = optim_bytes;
    let tables = if kind.eight_bit() {
        2 * 4 * (256 + 65536)
    } else {
        0
    };
    assert!(
        held >= counted && held - counted <= 2048 * 2 * sizes.len() + tables,
        "{kind}: allocator {held} B, optimizer {counted} B"
    );
    drop(params);
    held
}

#[test]
fn state_bytes_per_trainable_value() {
    let _alone = support::alloc::alone();
    let _turn = COUNTING.lock().unwrap_or_else(|e| e.into_inner());
    let sizes = smollm2_adapter_sizes(64);
    let values: usize = sizes.iter().sum();
    assert_eq!(values, 19_537_920);
    let device = Device::flex();
    let full = state_bytes(OptimizerKind::AdamW32, &sizes, &device);
    let eight = state_bytes(OptimizerKind::AdamW8, &sizes, &device);
    let paged_eight = state_bytes(OptimizerKind::PagedAdamW8, &sizes, &device);
    let (full_per, eight_per) = (full as f64 / values as f64, eight as f64 / values as f64);
    eprintln!(
        "states of {values} values: adamw_32bit {:.1} MiB ({full_per:.3} B a value), \
         adamw_8bit {:.1} MiB ({eight_per:.3} B a value), paged_adamw_8bit {:.1} MiB",
        mib(full),
        mib(eight),
        mib(paged_eight)
    );
    assert!((full_per - 8.0).abs() < 0.05, "{full_per}");
    assert!(eight_per <= 2.1, "{eight_per}");
    assert!(paged_eight.abs_diff(eight) <= 64 * 1024);
}

#[test]
fn eight_bit_states_lower_the_training_peak_on_smollm2_shape() {
    let _alone = support::alloc::alone();
    let _turn = COUNTING.lock().unwrap_or_else(|e| e.into_inner());
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("long.jsonl");
    write_long_texts(&data, 2);
    let model = synthetic_model(&tmp.path().join("smollm2"), SyntheticModel::SMOLLM2_135M);
    let peak = |optim: OptimizerKind| {
        let out = tmp.path().join(optim.to_string());
        measure_training_peak_with(&model, &data, &out, 64, true, optim)
    };
    let full = peak(OptimizerKind::AdamW32);
    let eight = peak(OptimizerKind::AdamW8);
    eprintln!(
        "SmolLM2-135M shape, r 64, seq 64: peak heap adamw_32bit {:.1} MiB, adamw_8bit {:.1} MiB \
         ({:.1} MiB lower)",
        mib(full),
        mib(eight),
        mib(full.saturating_sub(eight))
    );
    assert!(
        full >= eight + 80 * 1024 * 1024,
        "adamw_8bit peaks only {:.1} MiB below adamw_32bit",
        mib(full.saturating_sub(eight))
    );
}
