//! The NF4 matmul extension through its generic default (tensor ops), on wgpu over Mesa's CPU
//! Vulkan driver: forward and input gradient agree with the CPU backend's fast path.
#![cfg(feature = "wgpu")]

use burn::tensor::{Device, DeviceKind, Tensor, TensorData};
use qlora::FloatDtype;
use qlora::backend::Nf4Weight;
use qlora::quant::{Nf4Config, Nf4Tensor};

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

#[test]
fn nf4_matmul_on_wgpu_matches_cpu() {
    let w = values(96 * 256, 1);
    let state = Nf4Tensor::quantize(&w, &[96, 256], FloatDtype::F32, Nf4Config::default()).unwrap();
    let x = values(7 * 256, 2);
    let (cpu_y, cpu_dx) = forward_and_grad(&Device::flex(), &state, &x);
    let (gpu_y, gpu_dx) = forward_and_grad(&Device::wgpu(DeviceKind::DefaultDevice), &state, &x);
    for (name, a, b) in [("y", &cpu_y, &gpu_y), ("dx", &cpu_dx, &gpu_dx)] {
        let scale = a.iter().fold(0f32, |m, v| m.max(v.abs()));
        let diff = a
            .iter()
            .zip(b.iter())
            .map(|(p, q)| (p - q).abs())
            .fold(0f32, f32::max);
        assert!(
            diff <= 1e-5 * scale,
            "{name}: max diff {diff} (scale {scale})"
        );
    }
}
