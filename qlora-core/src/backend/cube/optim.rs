//! AdamW in one kernel launch: a thread a value for 32-bit moments; for bitsandbytes' 8-bit
//! moments a cube a block of 256 values (decode both moments, update them and the parameter,
//! take the block's new absmax in shared memory, encode through the 65536-point lookup table,
//! pack four codes a word). The arithmetic is the CPU kernel's, fused multiply-adds where the
//! libraries fuse (`fma`), separate roundings elsewhere.

use burn::tensor::{DType, IntDType};
use burn_cubecl::CubeBackend;
use burn_cubecl::ops::numeric::empty_device_dtype;
use burn_cubecl::tensor::CubeTensor;
use cubecl::prelude::*;
use cubecl::{CubeDim, calculate_cube_count_elemwise};

use super::{contiguous_f32, contiguous_int, cube_count_2d, f32_buffer};

use crate::backend::generic::optim::STATE_BLOCK;
use crate::backend::{AdamWArithmetic, AdamWStep, Blockwise8, OptimOps, StateMaps};

/// A step's constants in f32, rounded as the CPU kernel rounds them.
#[derive(CubeType, CubeLaunch, Clone, Copy)]
pub struct AdamWConsts {
    grad_scale: f32,
    beta1: f32,
    one_minus_beta1: f32,
    beta2: f32,
    one_minus_beta2: f32,
    /// `1 - lr·weight_decay`, or 1 without decay (a multiply by 1 is exact).
    decay: f32,
    bc2_sqrt: f32,
    eps: f32,
    /// torch and bitsandbytes 8-bit: `-lr / bc1`; bitsandbytes 32-bit: `-lr·sqrt(bc2)/bc1`.
    step_size: f32,
    /// bitsandbytes 32-bit: `eps·sqrt(bc2)`.
    eps_scaled: f32,
}

fn consts(s: &AdamWStep, eight_bit: bool) -> AdamWConstsLaunch {
    let bc1 = 1.0 - s.beta1.powi(s.step as i32);
    let bc2_sqrt = (1.0 - s.beta2.powi(s.step as i32)).sqrt();
    let step_size = match (eight_bit, s.arithmetic) {
        (true, _) | (false, AdamWArithmetic::Torch) => -(s.lr / bc1),
        (false, AdamWArithmetic::Bitsandbytes) => -s.lr * bc2_sqrt / bc1,
    };
    let decay = if s.weight_decay > 0.0 {
        (1.0 - s.lr * s.weight_decay) as f32
    } else {
        1.0
    };
    AdamWConstsLaunch::new(
        s.grad_scale as f32,
        s.beta1 as f32,
        (1.0 - s.beta1) as f32,
        s.beta2 as f32,
        (1.0 - s.beta2) as f32,
        decay,
        bc2_sqrt as f32,
        s.eps as f32,
        step_size as f32,
        (s.eps * bc2_sqrt) as f32,
    )
}

/// `(p, m, v)` of one value with 32-bit moments, torch's (`torch_rule`) or bitsandbytes'
/// arithmetic.
#[cube(launch)]
fn adamw32_kernel(
    param: &[f32],
    grad: &[f32],
    m_in: &[f32],
    v_in: &[f32],
    param_out: &mut [f32],
    m_out: &mut [f32],
    v_out: &mut [f32],
    c: AdamWConsts,
    #[comptime] torch_rule: bool,
) {
    let i = ABSOLUTE_POS;
    if i >= param.len() {
        terminate!();
    }
    let g = grad[i] * c.grad_scale;
    // v.mul_(β2).addcmul_(g, g, value=1-β2): one fused multiply-add.
    let v = fma(c.one_minus_beta2 * g, g, v_in[i] * c.beta2);
    let p = param[i] * c.decay;
    let m_old = m_in[i];
    if torch_rule {
        // m.lerp_(g, 1-β1): m + w (g - m), fused; p.addcdiv_(m, denom, value=-lr/bc1).
        let m = fma(c.one_minus_beta1, g - m_old, m_old);
        let denom = v.sqrt() / c.bc2_sqrt + c.eps;
        param_out[i] = p + (c.step_size * m) / denom;
        m_out[i] = m;
    } else {
        // m.mul_(β1).add_(g, alpha=1-β1); p.add_(m / (sqrt(v) + eps'), alpha=step_size).
        let m = fma(g, c.one_minus_beta1, m_old * c.beta1);
        let update = m / (v.sqrt() + c.eps_scaled);
        param_out[i] = fma(update, c.step_size, p);
        m_out[i] = m;
    }
    v_out[i] = v;
}

/// Byte `index` of `words` (four codes a word, the first in the low byte), from word `base`.
#[cube]
fn code_at(words: &[u32], base: usize, index: usize) -> usize {
    let word = words[base + index / 4];
    ((word >> (8 * (index % 4) as u32)) & 0xff) as usize
}

/// bitsandbytes' CPU encoder: the code of `x` in a block whose absmax is `max` (> 0).
#[cube]
fn encode(x: f32, max: f32, lut: &[i32]) -> u32 {
    let scaled = f32::clamp(x * (1.0f32 / max), -1.0f32, 1.0f32);
    let half = (scaled + 1.0f32) * 0.5f32;
    let grid = fma(half, 65535.0f32, 0.5f32);
    // Truncation toward zero, then the low 16 bits, as the kernel's cvttss2si + movzwl.
    let index = (i32::cast_from(grid) as u32) & 0xffff;
    u32::cast_from(lut[index as usize])
}

/// One block of 256 values of bitsandbytes' `AdamW8bit` (a cube of 256 units).
#[cube(launch)]
#[allow(clippy::too_many_arguments)]
// CubeCL kernels have no `div_ceil` nor `is_multiple_of`.
#[allow(clippy::manual_div_ceil, clippy::manual_is_multiple_of)]
fn adamw8_kernel(
    param: &[f32],
    grad: &[f32],
    codes: &[u32],
    absmax: &[f32],
    signed: &[f32],
    signed_lut: &[i32],
    unsigned: &[f32],
    unsigned_lut: &[i32],
    param_out: &mut [f32],
    codes_out: &mut [u32],
    absmax_out: &mut [f32],
    c: AdamWConsts,
    #[comptime] block: usize,
) {
    let n = param.len();
    let words = (n + 3) / 4;
    let blocks = (n + block - 1) / block;
    let b = (CUBE_POS_Y * CUBE_COUNT_X + CUBE_POS_X) as usize;
    if b >= blocks {
        terminate!();
    }
    let unit = UNIT_POS as usize;
    let i = b * block + unit;
    let live = i < n;

    let mut m = 0.0f32;
    let mut v = 0.0f32;
    if live {
        m = signed[code_at(codes, 0, i)] * absmax[b];
        v = unsigned[code_at(codes, words, i)] * absmax[blocks + b];
        let g = grad[i] * c.grad_scale;
        // state1.mul_(β1).add_(g, alpha=1-β1); state2.mul_(β2).addcmul_(g, g, value=1-β2)
        m = fma(g, c.one_minus_beta1, m * c.beta1);
        v = fma(c.one_minus_beta2 * g, g, v * c.beta2);
        let denom = v.sqrt() / c.bc2_sqrt + c.eps;
        param_out[i] = param[i] * c.decay + (c.step_size * m) / denom;
    }

    // The block's largest |m| and |v| (NaN ignored, at least 0): a tree of comparisons, so the
    // result does not depend on the order.
    let mut scratch = Shared::<[f32]>::new_slice(2 * block);
    // NaN fails every comparison: it stays 0 here and never raises the maximum (as on the CPU).
    let mut am = 0.0f32;
    let mut av = 0.0f32;
    if live && f32::abs(m) >= 0.0f32 {
        am = f32::abs(m);
    }
    if live && f32::abs(v) >= 0.0f32 {
        av = f32::abs(v);
    }
    scratch[unit] = am;
    scratch[block + unit] = av;
    sync_cube();
    // A runtime bound (the cube holds `block` units): a comptime one would not loop.
    let mut width = CUBE_DIM as usize / 2;
    while width > 0 {
        if unit < width {
            let other_m = scratch[unit + width];
            if other_m > scratch[unit] {
                scratch[unit] = other_m;
            }
            let other_v = scratch[block + unit + width];
            if other_v > scratch[block + unit] {
                scratch[block + unit] = other_v;
            }
        }
        sync_cube();
        width /= 2;
    }
    let max_m = scratch[0];
    let max_v = scratch[block];

    let mut qm = 0u32;
    let mut qv = 0u32;
    if live && max_m > 0.0f32 {
        qm = encode(m, max_m, signed_lut);
    }
    if live && max_v > 0.0f32 {
        qv = encode(v, max_v, unsigned_lut);
    }
    let mut packed = Shared::<[u32]>::new_slice(2 * block);
    packed[unit] = qm;
    packed[block + unit] = qv;
    sync_cube();
    if unit % 4 == 0 && i < n {
        let word = b * (block / 4) + unit / 4;
        let mut wm = 0u32;
        let mut wv = 0u32;
        for k in 0..4usize {
            wm |= packed[unit + k] << (8 * k as u32);
            wv |= packed[block + unit + k] << (8 * k as u32);
        }
        codes_out[word] = wm;
        codes_out[words + word] = wv;
    }
    if unit == 0 {
        absmax_out[b] = max_m;
        absmax_out[blocks + b] = max_v;
    }
}

impl OptimOps for CubeBackend {
    /// One step with 32-bit moments: `(param, m, v)`.
    fn adamw_step(
        param: CubeTensor,
        grad: CubeTensor,
        m: CubeTensor,
        v: CubeTensor,
        s: AdamWStep,
    ) -> (CubeTensor, CubeTensor, CubeTensor) {
        let (param, grad, m, v) = (
            contiguous_f32(param),
            contiguous_f32(grad),
            contiguous_f32(m),
            contiguous_f32(v),
        );
        let shape = param.meta.shape().to_vec();
        let n: usize = shape.iter().product();
        let (p2, m2, v2) = (
            f32_buffer(&param, shape.clone()),
            f32_buffer(&param, shape.clone()),
            f32_buffer(&param, shape),
        );
        let client = param.client.clone();
        let dim = CubeDim::new(&client, n);
        let count = calculate_cube_count_elemwise(&client, n, dim);
        adamw32_kernel::launch(
            &client,
            count,
            dim,
            param.into_buffer_arg(),
            grad.into_buffer_arg(),
            m.into_buffer_arg(),
            v.into_buffer_arg(),
            p2.clone().into_buffer_arg(),
            m2.clone().into_buffer_arg(),
            v2.clone().into_buffer_arg(),
            consts(&s, false),
            s.arithmetic == AdamWArithmetic::Torch,
        );
        (p2, m2, v2)
    }

    /// One step of bitsandbytes' `AdamW8bit` on a flat parameter.
    fn adamw8_step(
        param: CubeTensor,
        grad: CubeTensor,
        state: Blockwise8<CubeBackend>,
        maps: StateMaps<CubeBackend>,
        s: AdamWStep,
    ) -> (CubeTensor, Blockwise8<CubeBackend>) {
        let (param, grad) = (contiguous_f32(param), contiguous_f32(grad));
        let codes = contiguous_int(state.codes, IntDType::U32);
        let absmax = contiguous_f32(state.absmax);
        let n = param.meta.shape().num_elements();
        let (words, blocks) = (n.div_ceil(4), n.div_ceil(STATE_BLOCK));
        let param_out = f32_buffer(&param, vec![n]);
        let absmax_out = f32_buffer(&param, vec![2 * blocks]);
        let codes_out = empty_device_dtype(
            param.client.clone(),
            param.device.clone(),
            [2 * words].into(),
            DType::U32,
        );
        let client = param.client.clone();
        adamw8_kernel::launch(
            &client,
            cube_count_2d(blocks),
            CubeDim::new_1d(STATE_BLOCK as u32),
            param.into_buffer_arg(),
            grad.into_buffer_arg(),
            codes.into_buffer_arg(),
            absmax.into_buffer_arg(),
            contiguous_f32(maps.signed).into_buffer_arg(),
            contiguous_int(maps.signed_lut, IntDType::I32).into_buffer_arg(),
            contiguous_f32(maps.unsigned).into_buffer_arg(),
            contiguous_int(maps.unsigned_lut, IntDType::I32).into_buffer_arg(),
            param_out.clone().into_buffer_arg(),
            codes_out.clone().into_buffer_arg(),
            absmax_out.clone().into_buffer_arg(),
            consts(&s, true),
            STATE_BLOCK,
        );
        (
            param_out,
            Blockwise8 {
                codes: codes_out,
                absmax: absmax_out,
            },
        )
    }
}
