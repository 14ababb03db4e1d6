//! RMSNorm, rotary embedding, SwiGLU, GeGLU and dropout as one kernel launch each (forward and
//! backward). RMSNorm takes a cube a row and sums in shared memory (a fixed tree, so the same
//! inputs give the same bits); the others are a thread a value. Dropout draws the very mask the
//! CPU draws ([`DropoutMask`]): SplitMix64 over the element's index, in 32-bit halves (WGSL has
//! no 64-bit integers).

use burn_cubecl::CubeBackend;
use burn_cubecl::tensor::CubeTensor;
use cubecl::prelude::*;
use cubecl::{CubeDim, calculate_cube_count_elemwise};

use super::{contiguous_f32, cube_count_2d, f32_buffer};
use crate::backend::dropout::DropoutMask;
use crate::backend::generic::layers::{GELU_BETA, GELU_KAPPA};
use crate::backend::{LayerOps, LoraOps};

/// Units of a row's cube.
const UNITS: u32 = 256;

/// The sum over the cube of each unit's `value`, the same for every unit (a tree in `shared`).
#[cube]
fn cube_sum(shared: &mut Shared<[f32]>, value: f32) -> f32 {
    let unit = UNIT_POS as usize;
    shared[unit] = value;
    sync_cube();
    // A runtime bound: a comptime one would not loop.
    let mut width = CUBE_DIM as usize / 2;
    while width > 0 {
        if unit < width {
            shared[unit] += shared[unit + width];
        }
        sync_cube();
        width /= 2;
    }
    let total = shared[0];
    sync_cube();
    total
}

/// A cube's row of `x` (rows of `hidden`): its first index, and this unit's first column and
/// stride. A cube past the last row ends here.
#[cube]
fn cube_row(x: &[f32], hidden: usize) -> (usize, usize, usize) {
    let row = (CUBE_POS_Y * CUBE_COUNT_X + CUBE_POS_X) as usize;
    if row * hidden >= x.len() {
        terminate!();
    }
    (row * hidden, UNIT_POS as usize, CUBE_DIM as usize)
}

/// `x / sqrt(mean(x²) + eps) · w` of a row (a cube a row).
#[cube(launch)]
fn rms_norm_kernel(x: &[f32], w: &[f32], out: &mut [f32], eps: f32) {
    let hidden = w.len();
    let (base, unit, units) = cube_row(x, hidden);
    let mut shared = Shared::<[f32]>::new_slice(UNITS as usize);
    let mut squares = 0.0f32;
    let mut c = unit;
    while c < hidden {
        let v = x[base + c];
        squares += v * v;
        c += units;
    }
    let total = cube_sum(&mut shared, squares);
    let inv = 1.0f32 / (total / f32::cast_from(hidden) + eps).sqrt();
    let mut c = unit;
    while c < hidden {
        out[base + c] = x[base + c] * inv * w[c];
        c += units;
    }
}

/// The gradient of [`rms_norm_kernel`] with respect to `x`: `r g - x r³ mean(g x)` with
/// `g = dy · w`.
#[cube(launch)]
fn rms_norm_backward_kernel(x: &[f32], w: &[f32], dy: &[f32], dx: &mut [f32], eps: f32) {
    let hidden = w.len();
    let (base, unit, units) = cube_row(x, hidden);
    let mut shared = Shared::<[f32]>::new_slice(UNITS as usize);
    let mut squares = 0.0f32;
    let mut products = 0.0f32;
    let mut c = unit;
    while c < hidden {
        let v = x[base + c];
        squares += v * v;
        products += dy[base + c] * w[c] * v;
        c += units;
    }
    let n = f32::cast_from(hidden);
    let inv = 1.0f32 / (cube_sum(&mut shared, squares) / n + eps).sqrt();
    let mean_gx = cube_sum(&mut shared, products) / n;
    let r3 = inv * inv * inv;
    let mut c = unit;
    while c < hidden {
        let g = dy[base + c] * w[c];
        dx[base + c] = g * inv - x[base + c] * r3 * mean_gx;
        c += units;
    }
}

/// `x cos + rotate_half(x) sin` of every head, a thread a value.
#[cube(launch)]
fn rope_kernel(x: &[f32], cos: &[f32], sin: &[f32], out: &mut [f32], width: u32, dim: u32) {
    let i = ABSOLUTE_POS;
    if i >= x.len() {
        terminate!();
    }
    let (width, dim) = (width as usize, dim as usize);
    let half = dim / 2;
    let row = i / width;
    let e = (i % width) % dim;
    let rotated = if e < half { -x[i + half] } else { x[i - half] };
    out[i] = x[i] * cos[row * dim + e] + rotated * sin[row * dim + e];
}

#[cube]
fn sigmoid(x: f32) -> f32 {
    1.0f32 / (1.0f32 + (-x).exp())
}

#[cube(launch)]
fn swiglu_kernel(gate: &[f32], up: &[f32], out: &mut [f32]) {
    let i = ABSOLUTE_POS;
    if i >= gate.len() {
        terminate!();
    }
    let g = gate[i];
    out[i] = g * sigmoid(g) * up[i];
}

#[cube(launch)]
fn swiglu_backward_kernel(gate: &[f32], up: &[f32], dz: &[f32], dg: &mut [f32], du: &mut [f32]) {
    let i = ABSOLUTE_POS;
    if i >= gate.len() {
        terminate!();
    }
    let g = gate[i];
    let s = sigmoid(g);
    // silu'(g) = σ(g) (1 + g (1 - σ(g)))
    dg[i] = dz[i] * up[i] * (s * (1.0f32 + g * (1.0f32 - s)));
    du[i] = dz[i] * (g * s);
}

/// `tanh(β (a + κ a³))` of GELU's tanh approximation.
#[cube]
fn gelu_tanh_inner(a: f32) -> f32 {
    let beta = comptime!(GELU_BETA as f32);
    let kappa = comptime!(GELU_KAPPA as f32);
    (beta * (a + kappa * a * a * a)).tanh()
}

#[cube(launch)]
fn geglu_kernel(gate: &[f32], up: &[f32], out: &mut [f32]) {
    let i = ABSOLUTE_POS;
    if i >= gate.len() {
        terminate!();
    }
    let a = gate[i];
    out[i] = 0.5f32 * a * (1.0f32 + gelu_tanh_inner(a)) * up[i];
}

#[cube(launch)]
fn geglu_backward_kernel(gate: &[f32], up: &[f32], dz: &[f32], dg: &mut [f32], du: &mut [f32]) {
    let i = ABSOLUTE_POS;
    if i >= gate.len() {
        terminate!();
    }
    let beta = comptime!(GELU_BETA as f32);
    let kappa = comptime!(GELU_KAPPA as f32);
    let a = gate[i];
    let t = gelu_tanh_inner(a);
    // gelu'(a) = (1 + t)/2 + a/2 · (1 - t²) · β (1 + 3κ a²)
    let d = 0.5f32 * (1.0f32 + t)
        + 0.5f32 * a * (1.0f32 - t * t) * beta * (1.0f32 + 3.0f32 * kappa * a * a);
    dg[i] = dz[i] * up[i] * d;
    du[i] = dz[i] * (0.5f32 * a * (1.0f32 + t));
}

/// The low 64 bits of `(hi, lo) · (mh, ml)`, as `(hi, lo)`.
#[cube]
fn mul64(hi: u32, lo: u32, mh: u32, ml: u32) -> (u32, u32) {
    (u32::mul_hi(lo, ml) + lo * mh + hi * ml, lo * ml)
}

/// `(hi, lo) ^ ((hi, lo) >> shift)` for a shift between 1 and 31.
#[cube]
fn xor_shift(hi: u32, lo: u32, shift: u32) -> (u32, u32) {
    (
        hi ^ (hi >> shift),
        lo ^ ((lo >> shift) | (hi << (32 - shift))),
    )
}

/// `x · mask` with the inverted-dropout mask of element `i`: SplitMix64's finalizer of
/// `seed ^ i · 0xd1b54a32d192ed03`, kept when at least `threshold`.
#[cube(launch)]
#[allow(clippy::too_many_arguments)]
fn dropout_kernel(
    x: &[f32],
    out: &mut [f32],
    seed_hi: u32,
    seed_lo: u32,
    threshold_hi: u32,
    threshold_lo: u32,
    keep: f32,
) {
    let i = ABSOLUTE_POS;
    if i >= x.len() {
        terminate!();
    }
    let index = i as u32;
    let (hi, lo) = mul64(0u32, index, 0xd1b5_4a32u32, 0xd192_ed03u32);
    let (hi, lo) = (hi ^ seed_hi, lo ^ seed_lo);
    let (hi, lo) = xor_shift(hi, lo, 30u32);
    let (hi, lo) = mul64(hi, lo, 0xbf58_476du32, 0x1ce4_e5b9u32);
    let (hi, lo) = xor_shift(hi, lo, 27u32);
    let (hi, lo) = mul64(hi, lo, 0x94d0_49bbu32, 0x1331_11ebu32);
    let (hi, lo) = xor_shift(hi, lo, 31u32);
    let kept = hi > threshold_hi || (hi == threshold_hi && lo >= threshold_lo);
    // x · 0 as on the CPU (a negative x gives -0).
    let mask = if kept { keep } else { 0.0f32 };
    out[i] = x[i] * mask;
}

fn elementwise(t: &CubeTensor) -> (CubeCount, CubeDim) {
    let n = t.meta.shape().num_elements();
    let dim = CubeDim::new(&t.client, n);
    (calculate_cube_count_elemwise(&t.client, n, dim), dim)
}

fn like(t: &CubeTensor) -> CubeTensor {
    f32_buffer(t, t.meta.shape().to_vec())
}

/// `kernel(gate, up, out)`, a thread a value: a gated activation.
macro_rules! gated {
    ($kernel:ident, $gate:expr, $up:expr) => {{
        let (gate, up) = (contiguous_f32($gate), contiguous_f32($up));
        let out = like(&gate);
        let (count, dim) = elementwise(&gate);
        let client = gate.client.clone();
        $kernel::launch(
            &client,
            count,
            dim,
            gate.into_buffer_arg(),
            up.into_buffer_arg(),
            out.clone().into_buffer_arg(),
        );
        out
    }};
}

/// `kernel(gate, up, dz, d_gate, d_up)`, a thread a value: a gated activation's gradients.
macro_rules! gated_backward {
    ($kernel:ident, $gate:expr, $up:expr, $dz:expr) => {{
        let (gate, up, dz) = (
            contiguous_f32($gate),
            contiguous_f32($up),
            contiguous_f32($dz),
        );
        let (dg, du) = (like(&gate), like(&gate));
        let (count, dim) = elementwise(&gate);
        let client = gate.client.clone();
        $kernel::launch(
            &client,
            count,
            dim,
            gate.into_buffer_arg(),
            up.into_buffer_arg(),
            dz.into_buffer_arg(),
            dg.clone().into_buffer_arg(),
            du.clone().into_buffer_arg(),
        );
        (dg, du)
    }};
}

impl LayerOps for CubeBackend {
    fn rms_norm(x: CubeTensor, weight: CubeTensor, eps: f64) -> CubeTensor {
        let (x, weight) = (contiguous_f32(x), contiguous_f32(weight));
        let rows = x.meta.shape()[0];
        let out = like(&x);
        let client = x.client.clone();
        rms_norm_kernel::launch(
            &client,
            cube_count_2d(rows),
            CubeDim::new_1d(UNITS),
            x.into_buffer_arg(),
            weight.into_buffer_arg(),
            out.clone().into_buffer_arg(),
            eps as f32,
        );
        out
    }

    fn rms_norm_backward(
        x: CubeTensor,
        weight: CubeTensor,
        eps: f64,
        dy: CubeTensor,
    ) -> CubeTensor {
        let (x, weight, dy) = (
            contiguous_f32(x),
            contiguous_f32(weight),
            contiguous_f32(dy),
        );
        let rows = x.meta.shape()[0];
        let dx = like(&x);
        let client = x.client.clone();
        rms_norm_backward_kernel::launch(
            &client,
            cube_count_2d(rows),
            CubeDim::new_1d(UNITS),
            x.into_buffer_arg(),
            weight.into_buffer_arg(),
            dy.into_buffer_arg(),
            dx.clone().into_buffer_arg(),
            eps as f32,
        );
        dx
    }

    fn rope(x: CubeTensor, cos: CubeTensor, sin: CubeTensor) -> CubeTensor {
        let (x, cos, sin) = (contiguous_f32(x), contiguous_f32(cos), contiguous_f32(sin));
        let (width, dim) = (x.meta.shape()[1], cos.meta.shape()[1]);
        let out = like(&x);
        let (count, cube_dim) = elementwise(&x);
        let client = x.client.clone();
        rope_kernel::launch(
            &client,
            count,
            cube_dim,
            x.into_buffer_arg(),
            cos.into_buffer_arg(),
            sin.into_buffer_arg(),
            out.clone().into_buffer_arg(),
            width as u32,
            dim as u32,
        );
        out
    }

    fn swiglu(gate: CubeTensor, up: CubeTensor) -> CubeTensor {
        gated!(swiglu_kernel, gate, up)
    }

    fn swiglu_backward(
        gate: CubeTensor,
        up: CubeTensor,
        dz: CubeTensor,
    ) -> (CubeTensor, CubeTensor) {
        gated_backward!(swiglu_backward_kernel, gate, up, dz)
    }

    fn geglu(gate: CubeTensor, up: CubeTensor) -> CubeTensor {
        gated!(geglu_kernel, gate, up)
    }

    fn geglu_backward(
        gate: CubeTensor,
        up: CubeTensor,
        dz: CubeTensor,
    ) -> (CubeTensor, CubeTensor) {
        gated_backward!(geglu_backward_kernel, gate, up, dz)
    }

    fn dropout(x: CubeTensor, seed: u64, p: f64) -> CubeTensor {
        let x = contiguous_f32(x);
        let mask = DropoutMask::new(seed, p);
        let (threshold, keep) = mask.parts();
        let out = like(&x);
        let (count, dim) = elementwise(&x);
        let client = x.client.clone();
        dropout_kernel::launch(
            &client,
            count,
            dim,
            x.into_buffer_arg(),
            out.clone().into_buffer_arg(),
            (seed >> 32) as u32,
            seed as u32,
            (threshold >> 32) as u32,
            threshold as u32,
            keep,
        );
        out
    }
}

/// LoRA runs the trait's default (two matmuls each way), with these kernels' dropout.
impl LoraOps for CubeBackend {}
