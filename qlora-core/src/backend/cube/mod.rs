//! CubeCL kernels of [`super::QloraOps`] for the GPU backends (wgpu, CUDA): the same source
//! compiles for both. Each file implements the backend trait of its purpose; what none
//! overrides runs the trait's tensor-op default.

mod attention;
mod layers;
mod loss;
mod nf4;
mod optim;

use burn::tensor::{DType, IntDType};
use burn_cubecl::kernel::{cast, into_contiguous};
use burn_cubecl::ops::numeric::empty_device_dtype;
use burn_cubecl::tensor::CubeTensor;
use cubecl::prelude::CubeCount;

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
