//! CubeCL kernels of [`super::QloraOps`] for the GPU backends (wgpu, CUDA): the same source
//! compiles for both. Each file implements the backend trait of its purpose; what none
//! overrides runs the trait's tensor-op default.

mod attention;
mod layers;
mod loss;
mod nf4;
mod optim;

use std::cell::Cell;

use burn::tensor::{DType, IntDType};
use burn_cubecl::kernel::{cast, into_contiguous};
use burn_cubecl::ops::numeric::empty_device_dtype;
use burn_cubecl::tensor::CubeTensor;
use cubecl::prelude::CubeCount;

/// The kernels a GPU kernel replaced, switched back on for this thread so a benchmark can show
/// both in one run (`wgpu_bench`); training never sets them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Baselines {
    /// The NF4 products dequantize into a fresh allocation a call, not the scratch buffer.
    pub fresh_nf4_buffers: bool,
    /// Attention runs the kernels of a thread a query or key reading global memory, not the
    /// tiles through shared memory.
    pub untiled_attention: bool,
}

thread_local! {
    static BASELINES: Cell<Baselines> = const { Cell::new(Baselines { fresh_nf4_buffers: false, untiled_attention: false }) };
}

/// Switches this thread's GPU kernels to `baselines` (all off by default).
pub fn set_baselines(baselines: Baselines) {
    BASELINES.set(baselines);
}

pub(crate) fn baselines() -> Baselines {
    BASELINES.get()
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
