//! ggml's K-quant block formats Q4_K, Q5_K and Q6_K, quantized as llama.cpp's reference
//! quantizers do without an importance matrix (what `llama-quantize` writes when not given
//! one), byte for byte: super-blocks of 256 values; Q4_K/Q5_K split them into 8 sub-blocks of
//! 32 with a 6-bit scale and min each (a weighted least-squares search per sub-block), Q6_K
//! into 16 sub-blocks of 16 with a signed 8-bit scale. The simpler formats (Q8_0, Q4_0, ...)
//! come from candle, whose quantizers are already ggml's.

use half::f16;

/// Values a super-block holds.
pub const QK_K: usize = 256;

/// Bytes of a Q4_K, Q5_K and Q6_K super-block.
pub const Q4K_BYTES: usize = 144;
/// Bytes of a Q5_K block (256 values).
pub const Q5K_BYTES: usize = 176;
/// Bytes of a Q6_K block (256 values).
pub const Q6K_BYTES: usize = 210;

/// Below this, a group counts as all zeros.
const GROUP_MAX_EPS: f32 = 1e-15;

/// ggml's rounding to the nearest integer: add 1.5 · 2²³ and read the mantissa (ties to even,
/// for |v| below 2²²).
fn nearest_int(v: f32) -> i32 {
    let bits = (v + 12_582_912.0f32).to_bits() as i32;
    (bits & 0x007f_ffff) - 0x0040_0000
}

fn fp16(v: f32) -> [u8; 2] {
    f16::from_f32(v).to_le_bytes()
}

fn from_fp16(bytes: [u8; 2]) -> f32 {
    f16::from_le_bytes(bytes).to_f32()
}

/// A sub-block's scale and (negated) min for levels `0..=nmax` under `weights`: start from the
/// min/max fit, then try `nstep + 1` other scales around it, keeping the least weighted
/// squared error. Writes the levels into `levels`.
#[allow(clippy::too_many_arguments)]
fn make_qkx2_quants(
    nmax: i32,
    x: &[f32],
    weights: &[f32],
    levels: &mut [u8],
    rmin: f32,
    rdelta: f32,
    nstep: i32,
) -> (f32, f32) {
    let n = x.len();
    let mut min = x[0];
    let mut max = x[0];
    let mut sum_w = weights[0];
    let mut sum_x = sum_w * x[0];
    for i in 1..n {
        if x[i] < min {
            min = x[i];
        }
        if x[i] > max {
            max = x[i];
        }
        let w = weights[i];
        sum_w += w;
        sum_x += w * x[i];
    }
    if min > 0.0 {
        min = 0.0;
    }
    if max == min {
        levels.fill(0);
        return (0.0, -min);
    }
    let mut iscale = nmax as f32 / (max - min);
    let mut scale = 1.0 / iscale;
    let mut best_error = 0.0f32;
    for i in 0..n {
        let l = nearest_int(iscale * (x[i] - min)).clamp(0, nmax);
        levels[i] = l as u8;
        let diff = scale * l as f32 + min - x[i];
        best_error += weights[i] * (diff * diff);
    }
    let mut aux = [0u8; 32];
    for is in 0..=nstep {
        iscale = (rmin + rdelta * is as f32 + nmax as f32) / (max - min);
        let (mut sum_l, mut sum_l2, mut sum_xl) = (0.0f32, 0.0f32, 0.0f32);
        for i in 0..n {
            let l = nearest_int(iscale * (x[i] - min)).clamp(0, nmax);
            aux[i] = l as u8;
            let (w, l) = (weights[i], l as f32);
            sum_l += w * l;
            sum_l2 += w * l * l;
            sum_xl += w * l * x[i];
        }
        let d = sum_w * sum_l2 - sum_l * sum_l;
        if d > 0.0 {
            let mut this_scale = (sum_w * sum_xl - sum_x * sum_l) / d;
            let mut this_min = (sum_l2 * sum_x - sum_l * sum_xl) / d;
            if this_min > 0.0 {
                this_min = 0.0;
                this_scale = sum_xl / sum_l2;
            }
            let mut error = 0.0f32;
            for i in 0..n {
                let diff = this_scale * aux[i] as f32 + this_min - x[i];
                error += weights[i] * (diff * diff);
            }
            if error < best_error {
                levels[..n].copy_from_slice(&aux[..n]);
                best_error = error;
                scale = this_scale;
                min = this_min;
            }
        }
    }
    (scale, -min)
}

/// A signed sub-block's scale for levels `-nmax..nmax` weighted by `x²` (ggml's
/// `make_qx_quants` with `rmse_type` 1 and no importance): the max fit and 18 scales around it.
fn make_qx_quants(nmax: i32, x: &[f32], levels: &mut [i8]) -> f32 {
    let n = x.len();
    let mut max = 0.0f32;
    let mut amax = 0.0f32;
    for &v in x {
        if v.abs() > amax {
            amax = v.abs();
            max = v;
        }
    }
    if amax < GROUP_MAX_EPS {
        levels.fill(0);
        return 0.0;
    }
    let level = |iscale: f32, v: f32| nearest_int(iscale * v).clamp(-nmax, nmax - 1);
    let mut iscale = -(nmax as f32) / max;
    let (mut sumlx, mut suml2) = (0.0f32, 0.0f32);
    for i in 0..n {
        let l = level(iscale, x[i]);
        levels[i] = (l + nmax) as i8;
        let w = x[i] * x[i];
        sumlx += w * x[i] * l as f32;
        suml2 += w * l as f32 * l as f32;
    }
    let mut scale = if suml2 != 0.0 { sumlx / suml2 } else { 0.0 };
    let mut best = scale * sumlx;
    for is in -9..=9 {
        if is == 0 {
            continue;
        }
        iscale = -(nmax as f32 + 0.1 * is as f32) / max;
        sumlx = 0.0;
        suml2 = 0.0;
        for &v in x {
            let l = level(iscale, v) as f32;
            let w = v * v;
            sumlx += w * v * l;
            suml2 += w * l * l;
        }
        if suml2 > 0.0 && sumlx * sumlx > best * suml2 {
            for i in 0..n {
                levels[i] = (level(iscale, x[i]) + nmax) as i8;
            }
            scale = sumlx / suml2;
            best = scale * sumlx;
        }
    }
    scale
}

/// The 6-bit scale and min of sub-block `j` from the 12 packed bytes.
fn scale_min_k4(j: usize, q: &[u8; 12]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        (
            (q[j + 4] & 0xf) | ((q[j - 4] >> 6) << 4),
            (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
        )
    }
}

/// The shared part of Q4_K and Q5_K: per sub-block levels `0..=nmax` of a super-block, the
/// packed scales and mins, and the two f16 super-scales. Returns (d, dmin, scales, levels).
fn qkx_super_block(
    x: &[f32],
    nmax: i32,
    rmin: f32,
    rdelta: f32,
    nstep: i32,
) -> ([u8; 2], [u8; 2], [u8; 12], [u8; QK_K]) {
    let mut levels = [0u8; QK_K];
    let mut scales = [0f32; QK_K / 32];
    let mut mins = [0f32; QK_K / 32];
    let (mut max_scale, mut max_min) = (0.0f32, 0.0f32);
    let mut weights = [0f32; 32];
    for j in 0..QK_K / 32 {
        let sub = &x[32 * j..32 * (j + 1)];
        let sum_x2: f32 = sub.iter().fold(0.0, |s, v| s + v * v);
        let av_x = (sum_x2 / 32.0).sqrt();
        for (w, v) in weights.iter_mut().zip(sub) {
            *w = av_x + v.abs();
        }
        let (scale, min) = make_qkx2_quants(
            nmax,
            sub,
            &weights,
            &mut levels[32 * j..32 * (j + 1)],
            rmin,
            rdelta,
            nstep,
        );
        scales[j] = scale;
        mins[j] = min;
        max_scale = max_scale.max(scale);
        max_min = max_min.max(min);
    }
    let inv_scale = if max_scale > 0.0 {
        63.0 / max_scale
    } else {
        0.0
    };
    let inv_min = if max_min > 0.0 { 63.0 / max_min } else { 0.0 };
    let mut packed = [0u8; 12];
    for j in 0..QK_K / 32 {
        // `uint8_t ls = nearest_int(...)` keeps the low byte.
        let ls = (nearest_int(inv_scale * scales[j]) as u8).min(63);
        let lm = (nearest_int(inv_min * mins[j]) as u8).min(63);
        if j < 4 {
            packed[j] = ls;
            packed[j + 4] = lm;
        } else {
            packed[j + 4] = (ls & 0xf) | ((lm & 0xf) << 4);
            packed[j - 4] |= (ls >> 4) << 6;
            packed[j] |= (lm >> 4) << 6;
        }
    }
    let d = fp16(max_scale / 63.0);
    let dmin = fp16(max_min / 63.0);
    for j in 0..QK_K / 32 {
        let (sc, m) = scale_min_k4(j, &packed);
        let d = from_fp16(d) * sc as f32;
        if d == 0.0 {
            continue;
        }
        let dm = from_fp16(dmin) * m as f32;
        for i in 0..32 {
            let l = nearest_int((x[32 * j + i] + dm) / d).clamp(0, nmax);
            levels[32 * j + i] = l as u8;
        }
    }
    (d, dmin, packed, levels)
}

/// Q4_K blocks of `x` (a multiple of 256 values).
pub fn quantize_q4k(x: &[f32]) -> Vec<u8> {
    let mut out = Vec::with_capacity(x.len() / QK_K * Q4K_BYTES);
    for block in x.chunks_exact(QK_K) {
        let (d, dmin, scales, levels) = qkx_super_block(block, 15, -1.0, 0.1, 20);
        out.extend_from_slice(&d);
        out.extend_from_slice(&dmin);
        out.extend_from_slice(&scales);
        for j in (0..QK_K).step_by(64) {
            for l in 0..32 {
                out.push(levels[j + l] | (levels[j + l + 32] << 4));
            }
        }
    }
    out
}

/// Q5_K blocks of `x` (a multiple of 256 values).
pub fn quantize_q5k(x: &[f32]) -> Vec<u8> {
    let mut out = Vec::with_capacity(x.len() / QK_K * Q5K_BYTES);
    for block in x.chunks_exact(QK_K) {
        let (d, dmin, scales, levels) = qkx_super_block(block, 31, -0.5, 0.1, 15);
        out.extend_from_slice(&d);
        out.extend_from_slice(&dmin);
        out.extend_from_slice(&scales);
        let mut qh = [0u8; QK_K / 8];
        let mut ql = [0u8; QK_K / 2];
        let (mut m1, mut m2) = (1u8, 2u8);
        for (k, n) in (0..QK_K).step_by(64).enumerate() {
            for j in 0..32 {
                let mut l1 = levels[n + j];
                if l1 > 15 {
                    l1 -= 16;
                    qh[j] |= m1;
                }
                let mut l2 = levels[n + j + 32];
                if l2 > 15 {
                    l2 -= 16;
                    qh[j] |= m2;
                }
                ql[32 * k + j] = l1 | (l2 << 4);
            }
            m1 <<= 2;
            m2 <<= 2;
        }
        out.extend_from_slice(&qh);
        out.extend_from_slice(&ql);
    }
    out
}

/// Q6_K blocks of `x` (a multiple of 256 values).
pub fn quantize_q6k(x: &[f32]) -> Vec<u8> {
    let mut out = Vec::with_capacity(x.len() / QK_K * Q6K_BYTES);
    for block in x.chunks_exact(QK_K) {
        let mut levels = [0i8; QK_K];
        let mut scales = [0f32; QK_K / 16];
        let (mut max_scale, mut max_abs_scale) = (0.0f32, 0.0f32);
        for ib in 0..QK_K / 16 {
            let scale = make_qx_quants(
                32,
                &block[16 * ib..16 * (ib + 1)],
                &mut levels[16 * ib..16 * (ib + 1)],
            );
            scales[ib] = scale;
            if scale.abs() > max_abs_scale {
                max_abs_scale = scale.abs();
                max_scale = scale;
            }
        }
        if max_abs_scale < GROUP_MAX_EPS {
            out.extend(std::iter::repeat_n(0u8, Q6K_BYTES));
            continue;
        }
        let iscale = -128.0 / max_scale;
        let d = fp16(1.0 / iscale);
        let mut sc = [0i8; QK_K / 16];
        for ib in 0..QK_K / 16 {
            // `MIN(127, nearest_int(...))` stored as int8_t.
            sc[ib] = nearest_int(iscale * scales[ib]).min(127) as i8;
        }
        for j in 0..QK_K / 16 {
            let d = from_fp16(d) * sc[j] as f32;
            if d == 0.0 {
                continue;
            }
            for i in 0..16 {
                let l = nearest_int(block[16 * j + i] / d).clamp(-32, 31);
                levels[16 * j + i] = (l + 32) as i8;
            }
        }
        let levels = levels.map(|l| l as u8);
        let mut ql = [0u8; QK_K / 2];
        let mut qh = [0u8; QK_K / 4];
        for (k, j) in (0..QK_K).step_by(128).enumerate() {
            for l in 0..32 {
                let q = |o: usize| levels[j + l + o];
                ql[64 * k + l] = (q(0) & 0xf) | ((q(64) & 0xf) << 4);
                ql[64 * k + l + 32] = (q(32) & 0xf) | ((q(96) & 0xf) << 4);
                qh[32 * k + l] =
                    (q(0) >> 4) | ((q(32) >> 4) << 2) | ((q(64) >> 4) << 4) | ((q(96) >> 4) << 6);
            }
        }
        out.extend_from_slice(&ql);
        out.extend_from_slice(&qh);
        out.extend(sc.iter().map(|s| *s as u8));
        out.extend_from_slice(&d);
    }
    out
}
