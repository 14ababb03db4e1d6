//! On wgpu over Mesa's CPU Vulkan driver: the NF4 matmul extension and a whole training step
//! through their generic defaults (tensor ops) agree with the CPU backend's fast paths, and a
//! run resumes exactly.
#![cfg(feature = "wgpu")]

use burn::tensor::{Device, DeviceKind, Tensor, TensorData};
use qlora_core::FloatDtype;
use qlora_core::backend::Nf4Weight;
use qlora_core::quant::{Nf4Config, Nf4Tensor};
use support::ops::assert_close;

fn values(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 40) as f32 / (1u64 << 24) as f32 - 0.5
        })
        .collect()
}

fn forward_and_grad(device: &Device, state: &Nf4Tensor, x: &[f32]) -> (Vec<f32>, Vec<f32>) {
    let weight = Nf4Weight::new(state, device);
    let x = Tensor::<2>::from_data(TensorData::new(x.to_vec(), [7, 256]), device)
        .autodiff()
        .require_grad();
    let y = weight.linear(x.clone());
    let grads = (y.clone() * y.clone()).sum().backward();
    (
        y.into_data().try_into_vec().unwrap(),
        x.grad(&grads).unwrap().into_data().try_into_vec().unwrap(),
    )
}

/// The CubeCL dequantization kernel against the CPU, bit for bit: plain and double-quantized
/// absmax, blocks of 64 and 128, and a last block cut short.
#[test]
fn nf4_dequantization_kernel_is_bit_exact() {
    let device = Device::wgpu(DeviceKind::DefaultDevice);
    for (shape, blocksize, double_quant) in [
        ([96, 256], 64, true),
        ([96, 256], 64, false),
        ([40, 300], 128, true),
        ([3, 100], 64, true),
    ] {
        let n = shape[0] * shape[1];
        let w = values(n, 7 + n as u64);
        let config = Nf4Config {
            blocksize,
            double_quant,
        };
        let state = Nf4Tensor::quantize(&w, &shape, FloatDtype::F32, config).unwrap();
        let cpu = state.dequantize();
        let gpu: Vec<f32> = Nf4Weight::new(&state, &device)
            .dequantize()
            .into_data()
            .try_into_vec()
            .unwrap();
        let differing = cpu
            .iter()
            .zip(&gpu)
            .filter(|(a, b)| a.to_bits() != b.to_bits())
            .count();
        assert_eq!(
            (gpu.len(), differing),
            (n, 0),
            "{shape:?} blocks of {blocksize}, double quant {double_quant}"
        );
    }
}

#[test]
fn nf4_matmul_on_wgpu_matches_cpu() {
    let w = values(96 * 256, 1);
    let state = Nf4Tensor::quantize(&w, &[96, 256], FloatDtype::F32, Nf4Config::default()).unwrap();
    let x = values(7 * 256, 2);
    let (cpu_y, cpu_dx) = forward_and_grad(&Device::flex(), &state, &x);
    let (gpu_y, gpu_dx) = forward_and_grad(&Device::wgpu(DeviceKind::DefaultDevice), &state, &x);
    assert_close("y", &gpu_y, &cpu_y, 1e-5);
    assert_close("dx", &gpu_dx, &cpu_dx, 1e-5);
}

/// The NF4 products dequantize into one scratch buffer a device, viewed at each weight's size:
/// products of a large, a small and the large weight again (interleaved with a dequantized weight
/// the caller keeps, and a product whose result is still held) each equal the CPU's, and the kept
/// weight is never overwritten.
#[test]
fn nf4_products_share_a_scratch_buffer_safely() {
    let gpu = Device::wgpu(DeviceKind::DefaultDevice);
    let cpu = Device::flex();
    let quantize = |shape: [usize; 2], seed| {
        let w = values(shape[0] * shape[1], seed);
        Nf4Tensor::quantize(&w, &shape, FloatDtype::F32, Nf4Config::default()).unwrap()
    };
    let (large, small, odd) = (
        quantize([320, 256], 11),
        quantize([64, 256], 12),
        quantize([3, 256], 13),
    );
    let x = values(7 * 256, 14);
    let run = |device: &Device| {
        let input = |rows, cols, v: &[f32]| {
            Tensor::<2>::from_data(TensorData::new(v.to_vec(), [rows, cols]), device)
        };
        let [l, s, o] = [&large, &small, &odd].map(|w| Nf4Weight::new(w, device));
        let kept = s.dequantize();
        let x = input(7, 256, &x);
        let first = l.linear(x.clone());
        let mut out = vec![
            s.linear(x.clone()),
            o.linear(x.clone()),
            l.input_grad(first.clone()),
            l.linear(x.clone()),
            s.input_grad(input(7, 64, &values(7 * 64, 15))),
        ];
        out.push(first);
        out.push(kept);
        out.into_iter()
            .map(|t| t.into_data().try_into_vec::<f32>().unwrap())
            .collect::<Vec<_>>()
    };
    let (want, got) = (run(&cpu), run(&gpu));
    for (i, (want, got)) in want.iter().zip(&got).enumerate() {
        assert_close(&format!("output {i}"), got, want, 1e-5);
    }
}

/// A whole training step (every fused operation through its tensor-op default on wgpu)
/// against the CPU kernels: the same loss and adapter gradients.
#[test]
fn training_step_on_wgpu_matches_cpu() {
    use qlora_core::lora::LoraConfig;
    use qlora_core::model::{CausalLm, DropoutStream, LoadOptions, TrainBatch};
    let fixture = support::fixture("tiny-llama");
    let ids: Vec<u32> = (0..40u32).map(|i| (i * 37 + 5) % 1000).collect();
    let labels = vec![ids.iter().map(|&i| i64::from(i)).collect(), vec![-100; 40]];
    let batch = TrainBatch::new(
        vec![ids.clone(), ids],
        labels,
        vec![vec![true; 40], [vec![true; 30], vec![false; 10]].concat()],
    );
    let run = |device: Device| {
        let mut model = CausalLm::load(
            &fixture,
            &LoadOptions {
                device: device.clone(),
                ..LoadOptions::default()
            },
        )
        .unwrap();
        let config = LoraConfig {
            r: 8,
            dropout: 0.1,
            ..LoraConfig::default()
        };
        model.attach_lora(&config, 1).unwrap();
        for (k, (_, linear)) in model.linears_mut().into_iter().enumerate() {
            let lora = linear.lora.as_mut().unwrap();
            let n = linear.out_features * 8;
            lora.b = Tensor::from_data(
                TensorData::new(
                    values(n, k as u64 + 9)
                        .iter()
                        .map(|v| v * 0.02)
                        .collect::<Vec<f32>>(),
                    [linear.out_features, 8],
                ),
                &device,
            );
        }
        let stream = DropoutStream { seed: 3, step: 1 };
        let result = model.loss_and_grads(&batch, true, Some(&stream)).unwrap();
        let grads: Vec<Vec<f32>> = result
            .grads
            .grads
            .into_iter()
            .flat_map(|(a, b)| [a, b])
            .map(|t| t.into_data().try_into_vec().unwrap())
            .collect();
        (result.loss_sum, grads)
    };
    let (cpu_loss, cpu) = run(Device::flex());
    let (gpu_loss, gpu) = run(Device::wgpu(DeviceKind::DefaultDevice));
    assert!(
        (cpu_loss - gpu_loss).abs() <= 1e-4 * cpu_loss.abs(),
        "{cpu_loss} vs {gpu_loss}"
    );
    for (i, (a, b)) in cpu.iter().zip(&gpu).enumerate() {
        let scale = a.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-12);
        let diff = a
            .iter()
            .zip(b)
            .map(|(p, q)| (p - q).abs())
            .fold(0f32, f32::max);
        assert!(
            diff <= 1e-3 * scale,
            "gradient {i}: max diff {diff} (scale {scale})"
        );
    }
}

/// A run on wgpu (paged 8-bit states under a budget, checkpointing) interrupted after step 2
/// resumes from its checkpoint to exactly the uninterrupted run's losses and adapter.
#[test]
fn a_wgpu_run_resumes_exactly() {
    use qlora_core::device::DeviceChoice;
    use qlora_core::train::{LogProgress, OptimizerKind, TrainConfig, Trainer};
    let dir = tempfile::tempdir().unwrap();
    let root = support::root();
    let settings = |out: &str| TrainConfig {
        model: root.join("tests/fixtures/tiny-llama"),
        data: root.join("datasets/parity_train.jsonl"),
        out: dir.path().join(out),
        rank: 64,
        batch_size: 1,
        grad_accum: 1,
        max_seq_len: 256,
        max_steps: Some(4),
        save_steps: 2,
        lr: 1e-3,
        optim: OptimizerKind::PagedAdamW8,
        optim_device_budget_mb: Some(0.2),
        logging_steps: 100,
        ..TrainConfig::default()
    };
    let trainer = |config: TrainConfig, resume: Option<&std::path::Path>| {
        Trainer::new(
            config,
            DeviceChoice::Wgpu(None),
            resume,
            &mut LogProgress::new(100),
        )
        .unwrap()
    };
    let adapters = |t: &Trainer| -> Vec<Vec<f32>> {
        t.model
            .adapters()
            .iter()
            .flat_map(|(_, a)| [a.a.clone(), a.b.clone()])
            .map(|t| t.into_data().try_into_vec::<f32>().unwrap())
            .collect()
    };
    // CubeCL autotunes kernels on the first call of each shape (by timing, so the winner can
    // change with the machine's load), and that first call may run another candidate than the
    // winner cached for later calls: a warm-up run tunes every shape of these steps first.
    let mut warm_up = trainer(settings("warm-up"), None);
    for _ in 0..4 {
        warm_up.step().unwrap();
    }
    let mut straight = trainer(settings("straight"), None);
    let losses: Vec<f64> = (0..4).map(|_| straight.step().unwrap().loss).collect();
    // Another run stops after step 2 with a checkpoint.
    let mut first = trainer(settings("first"), None);
    first.step().unwrap();
    first.step().unwrap();
    first.save_checkpoint().unwrap();
    let checkpoint = Trainer::latest_checkpoint(&dir.path().join("first")).unwrap();
    let mut resumed = trainer(settings("resumed"), Some(&checkpoint));
    let rest: Vec<f64> = (0..2).map(|_| resumed.step().unwrap().loss).collect();
    assert_eq!(rest, losses[2..]);
    assert_eq!(adapters(&resumed), adapters(&straight));
}
