//! CubeCL kernels of [`QloraOps`] for the GPU backends (wgpu, CUDA): the same source compiles
//! for both. [`set_kernels`] switches them off for the generic tensor-op defaults (what the
//! benchmarks compare them against).

pub mod attention;
pub mod layers;
pub mod loss;
pub mod nf4;
pub mod optim;

use std::sync::atomic::{AtomicBool, Ordering};

use burn::backend::tensor::{FloatTensor, IntTensor};
use burn::tensor::{DType, IntDType};
use burn_cubecl::kernel::{cast, into_contiguous};
use burn_cubecl::ops::numeric::empty_device_dtype;
use burn_cubecl::tensor::CubeTensor;
use cubecl::prelude::CubeCount;

use super::{AdamWStep, AttentionShape, Blockwise8, Nf4Operand, QloraOps, StateMaps, generic};

static KERNELS: AtomicBool = AtomicBool::new(true);

/// Run the GPU backends' operations through their CubeCL kernels (the default) or, with
/// `false`, through the generic tensor-op defaults: for benchmarks and comparisons, process-wide.
pub fn set_kernels(enabled: bool) {
    KERNELS.store(enabled, Ordering::Relaxed);
}

fn kernels() -> bool {
    KERNELS.load(Ordering::Relaxed)
}

/// An uninitialized f32 tensor of `shape` on `t`'s device.
pub(crate) fn f32_buffer(t: &CubeTensor, shape: Vec<usize>) -> CubeTensor {
    empty_device_dtype(t.client.clone(), t.device.clone(), shape.into(), DType::F32)
}

/// `t` in f32, contiguous (what a kernel reading a flat buffer needs).
pub(crate) fn contiguous_f32(t: CubeTensor) -> CubeTensor {
    let t = into_contiguous(t);
    if t.dtype == DType::F32 {
        t
    } else {
        cast(t, DType::F32)
    }
}

/// `t` as `dtype` integers, contiguous.
pub(crate) fn contiguous_int(t: CubeTensor, dtype: IntDType) -> CubeTensor {
    let t = into_contiguous(t);
    let dtype: DType = dtype.into();
    if t.dtype == dtype { t } else { cast(t, dtype) }
}

/// A cube count of at least `cubes` cubes over two dimensions (each at most 65535).
pub(crate) fn cube_count_2d(cubes: usize) -> CubeCount {
    let x = cubes.clamp(1, 65535);
    CubeCount::Static(x as u32, cubes.div_ceil(x) as u32, 1)
}

impl QloraOps for burn::backend::Cube {
    fn nf4_dequantize(weight: Nf4Operand<Self>) -> FloatTensor<Self> {
        if kernels() {
            nf4::dequantize(weight)
        } else {
            generic::nf4::dequantize::<Self>(&weight)
        }
    }

    fn rms_norm(x: FloatTensor<Self>, weight: FloatTensor<Self>, eps: f64) -> FloatTensor<Self> {
        if kernels() {
            layers::rms_norm(x, weight, eps)
        } else {
            generic::layers::rms_norm::<Self>(x, weight, eps)
        }
    }

    fn rms_norm_backward(
        x: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        eps: f64,
        dy: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        if kernels() {
            layers::rms_norm_backward(x, weight, eps, dy)
        } else {
            generic::layers::rms_norm_backward::<Self>(x, weight, eps, dy)
        }
    }

    fn rope(
        x: FloatTensor<Self>,
        cos: FloatTensor<Self>,
        sin: FloatTensor<Self>,
    ) -> FloatTensor<Self> {
        if kernels() {
            layers::rope(x, cos, sin)
        } else {
            generic::layers::rope::<Self>(x, cos, sin)
        }
    }

    fn swiglu(gate: FloatTensor<Self>, up: FloatTensor<Self>) -> FloatTensor<Self> {
        if kernels() {
            layers::swiglu(gate, up)
        } else {
            generic::layers::swiglu::<Self>(gate, up)
        }
    }

    fn swiglu_backward(
        gate: FloatTensor<Self>,
        up: FloatTensor<Self>,
        dz: FloatTensor<Self>,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        if kernels() {
            layers::swiglu_backward(gate, up, dz)
        } else {
            generic::layers::swiglu_backward::<Self>(gate, up, dz)
        }
    }

    fn dropout(x: FloatTensor<Self>, seed: u64, p: f64) -> FloatTensor<Self> {
        if kernels() {
            layers::dropout(x, seed, p)
        } else {
            generic::layers::dropout::<Self>(x, seed, p)
        }
    }

    fn adamw_step(
        param: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        m: FloatTensor<Self>,
        v: FloatTensor<Self>,
        settings: AdamWStep,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        if kernels() {
            optim::adamw_step(param, grad, m, v, settings)
        } else {
            generic::optim::adamw_step::<Self>(param, grad, m, v, settings)
        }
    }

    fn adamw8_step(
        param: FloatTensor<Self>,
        grad: FloatTensor<Self>,
        state: Blockwise8<Self>,
        maps: StateMaps<Self>,
        settings: AdamWStep,
    ) -> (FloatTensor<Self>, Blockwise8<Self>) {
        if kernels() {
            optim::adamw8_step(param, grad, state, maps, settings)
        } else {
            generic::optim::adamw8_step::<Self>(param, grad, state, maps, settings)
        }
    }

    fn attention(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        q_ids: IntTensor<Self>,
        k_ids: IntTensor<Self>,
        shape: AttentionShape,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        if kernels() {
            attention::attention(q, k, v, q_ids, k_ids, shape)
        } else {
            generic::attention::attention::<Self>(q, k, v, q_ids, k_ids, shape)
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn attention_backward(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        out: FloatTensor<Self>,
        lse: FloatTensor<Self>,
        d_out: FloatTensor<Self>,
        q_ids: IntTensor<Self>,
        k_ids: IntTensor<Self>,
        shape: AttentionShape,
    ) -> (FloatTensor<Self>, FloatTensor<Self>, FloatTensor<Self>) {
        if kernels() {
            attention::attention_backward(q, k, v, out, lse, d_out, q_ids, k_ids, shape)
        } else {
            generic::attention::attention_backward::<Self>(
                q, k, v, out, lse, d_out, q_ids, k_ids, shape,
            )
        }
    }

    fn cross_entropy(
        hidden: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        targets: IntTensor<Self>,
    ) -> FloatTensor<Self> {
        if kernels() {
            loss::cross_entropy(hidden, weight, targets, false).0
        } else {
            generic::loss::cross_entropy::<Self>(hidden, weight, targets, false).0
        }
    }

    fn cross_entropy_with_grad(
        hidden: FloatTensor<Self>,
        weight: FloatTensor<Self>,
        targets: IntTensor<Self>,
    ) -> (FloatTensor<Self>, FloatTensor<Self>) {
        let (losses, grad) = if kernels() {
            loss::cross_entropy(hidden, weight, targets, true)
        } else {
            generic::loss::cross_entropy::<Self>(hidden, weight, targets, true)
        };
        (losses, grad.expect("asked for the gradient"))
    }
}
