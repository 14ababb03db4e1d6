//! The NF4 matmul keeps only the packed state for its backward: forward + backward through a
//! stack of QLoRA linears whose dense weights total D = 64 MiB stays under 0.5 D of extra heap,
//! while the same stack built from dequantize-then-matmul (the dense weight saved by autodiff
//! for every layer) needs more than D.

use burn::tensor::{Device, Tensor, TensorData};
use qlora_core::FloatDtype;
use qlora_core::backend::Nf4Weight;
use qlora_core::quant::{Nf4Config, Nf4Tensor};
use support::alloc::{mib, peak_during};

const LAYERS: usize = 16;
const WIDTH: usize = 1024;
const ROWS: usize = 64;

fn random(n: usize, seed: u64) -> Vec<f32> {
    let mut s = seed | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 0.06
        })
        .collect()
}

#[test]
fn nf4_backward_saves_only_packed_state() {
    let _alone = support::alloc::alone();
    let device = Device::flex();
    let weights: Vec<Nf4Weight> = (0..LAYERS)
        .map(|l| {
            let w = random(WIDTH * WIDTH, l as u64 + 1);
            let q = Nf4Tensor::quantize(&w, &[WIDTH, WIDTH], FloatDtype::F32, Nf4Config::default())
                .unwrap();
            Nf4Weight::new(&q, &device)
        })
        .collect();
    let dense_bytes = LAYERS * WIDTH * WIDTH * 4;
    let x0 = random(ROWS * WIDTH, 99);
    let activations = LAYERS * ROWS * WIDTH * 4;

    let run = |custom_op: bool| {
        let x = Tensor::<2>::from_data(TensorData::new(x0.clone(), [ROWS, WIDTH]), &device)
            .autodiff()
            .require_grad();
        let mut h = x.clone();
        for w in &weights {
            h = if custom_op {
                w.linear(h)
            } else {
                h.matmul(w.dequantize().transpose())
            };
        }
        let grads = h.sum().backward();
        x.grad(&grads).unwrap().into_data()
    };

    let (lean_grad, lean_peak) = peak_during(|| run(true));
    let (naive_grad, naive_peak) = peak_during(|| run(false));
    eprintln!(
        "stack of {LAYERS} NF4 linears {WIDTH}x{WIDTH}, dense weights D = {:.0} MiB, activations {:.1} MiB: \
         peak extra heap {:.1} MiB with the NF4 op, {:.1} MiB dequantizing into autodiff",
        mib(dense_bytes),
        mib(activations),
        mib(lean_peak),
        mib(naive_peak)
    );
    lean_grad.assert_approx_eq::<f32>(&naive_grad, burn::tensor::Tolerance::relative(1e-4));
    assert!(
        lean_peak < dense_bytes / 2 + activations,
        "NF4 op peak {lean_peak} too high"
    );
    assert!(
        naive_peak > dense_bytes,
        "naive peak {naive_peak} should exceed D"
    );
}
