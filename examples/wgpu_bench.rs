//! The GPU path's kernels against their generic tensor-op defaults, on the same wgpu device in
//! the same run: NF4 dequantization (GB/s of f32 written) and the NF4 matmul `x · Wᵀ`. On
//! lavapipe (Mesa's CPU Vulkan driver) the absolute figures mean little: compare the ratios.
//!
//! Run: `cargo run --release --features wgpu --example wgpu_bench`

#[cfg(feature = "wgpu")]
fn main() {
    use std::time::Instant;

    use burn::backend::Dispatch;
    use burn::tensor::{Device, DeviceKind, Tensor, TensorData};
    use qlora::FloatDtype;
    use qlora::backend::{Nf4Weight, generic};
    use qlora::quant::{Nf4Config, Nf4Tensor};

    let device = Device::wgpu(DeviceKind::DefaultDevice);
    let (out, inp, rows) = (2048usize, 2048usize, 64usize);
    let w: Vec<f32> = (0..out * inp)
        .map(|i| ((i * 2_654_435_761) % 1000) as f32 * 1e-4 - 0.05)
        .collect();
    let state = Nf4Tensor::quantize(&w, &[out, inp], FloatDtype::F32, Nf4Config::default())
        .expect("quantize");
    let weight = Nf4Weight::new(&state, &device);
    let x: Tensor<2> = Tensor::from_data(
        TensorData::new(
            (0..rows * inp)
                .map(|i| (i % 7) as f32 * 0.1)
                .collect::<Vec<f32>>(),
            [rows, inp],
        ),
        &device,
    );
    let time = |f: &dyn Fn() -> Tensor<2>| {
        // The first call compiles the kernels (and autotunes the matmul).
        let _ = f().into_data();
        let reps = 5;
        let start = Instant::now();
        for _ in 0..reps {
            let y = f();
            device.sync().expect("sync");
            drop(y);
        }
        start.elapsed().as_secs_f64() / reps as f64
    };
    let kernel = time(&|| weight.dequantize());
    let generic_default =
        time(&|| Tensor::from_dispatch(generic::nf4::dequantize::<Dispatch>(&weight.operand())));
    let bytes = (out * inp * 4) as f64;
    println!("NF4 dequantization of a {out}x{inp} weight on wgpu:");
    println!(
        "  CubeCL kernel     {:>8.2} ms  {:>6.2} GB/s",
        kernel * 1e3,
        bytes / kernel / 1e9
    );
    println!(
        "  tensor-op default {:>8.2} ms  {:>6.2} GB/s  ({:.1}x the kernel's time)",
        generic_default * 1e3,
        bytes / generic_default / 1e9,
        generic_default / kernel
    );
    let matmul = time(&|| weight.linear(x.clone()));
    let generic_matmul = time(&|| {
        let dense =
            Tensor::<2>::from_dispatch(generic::nf4::dequantize::<Dispatch>(&weight.operand()));
        x.clone().matmul(dense.transpose())
    });
    let flops = 2.0 * (rows * inp * out) as f64;
    println!("NF4 matmul x[{rows}x{inp}] · Wᵀ:");
    println!(
        "  dequantize kernel + matmul  {:>8.2} ms  {:>6.2} GFLOP/s",
        matmul * 1e3,
        flops / matmul / 1e9
    );
    println!(
        "  tensor-op default + matmul  {:>8.2} ms  {:>6.2} GFLOP/s  ({:.1}x the time)",
        generic_matmul * 1e3,
        flops / generic_matmul / 1e9,
        generic_matmul / matmul
    );
}

#[cfg(not(feature = "wgpu"))]
fn main() {
    eprintln!("build with --features wgpu");
}
