//! AdamW as tensor operations: 32-bit moments (torch's or bitsandbytes' arithmetic, without
//! fused multiply-adds) and bitsandbytes' 8-bit blockwise moments.

use burn::backend::tensor::{FloatTensor, IntTensor};
use burn::backend::{Backend, TensorMetadata};
use burn::tensor::{IntDType, Shape, Slice, TensorData};

use super::F;
use crate::backend::{AdamWArithmetic, AdamWStep, Blockwise8, StateMaps};

/// Values a block of an 8-bit state holds.
pub const STATE_BLOCK: usize = 256;

/// One step with 32-bit moments: `(param, m, v)`.
pub fn adamw_step<B: Backend>(
    param: FloatTensor<B>,
    grad: FloatTensor<B>,
    m: FloatTensor<B>,
    v: FloatTensor<B>,
    s: AdamWStep,
) -> (FloatTensor<B>, FloatTensor<B>, FloatTensor<B>) {
    let bc1 = 1.0 - s.beta1.powi(s.step as i32);
    let bc2 = 1.0 - s.beta2.powi(s.step as i32);
    let g = F::<B>(grad).scale(s.grad_scale);
    let v = F::<B>(v).scale(s.beta2) + (g.clone() * g.clone()).scale(1.0 - s.beta2);
    let p = F::<B>(param);
    let p = if s.weight_decay > 0.0 {
        p.scale(1.0 - s.lr * s.weight_decay)
    } else {
        p
    };
    match s.arithmetic {
        AdamWArithmetic::Torch => {
            let m = F::<B>(m.clone()) + (g - F(m)).scale(1.0 - s.beta1);
            let denom = v.clone().sqrt().scale(1.0 / bc2.sqrt()).add_scalar(s.eps);
            let p = p + (m.clone().scale(-s.lr / bc1) * denom.recip());
            (p.0, m.0, v.0)
        }
        AdamWArithmetic::Bitsandbytes => {
            let m = F::<B>(m).scale(s.beta1) + g.scale(1.0 - s.beta1);
            let denom = v.clone().sqrt().add_scalar(s.eps * bc2.sqrt());
            let p = p + (m.clone() * denom.recip()).scale(-s.lr * bc2.sqrt() / bc1);
            (p.0, m.0, v.0)
        }
    }
}

/// `code[codes] · absmax` per block: the f32 values of one 8-bit moment (`words` code words,
/// `absmax` its block maxima).
fn decode<B: Backend>(
    words: IntTensor<B>,
    absmax: FloatTensor<B>,
    map: &FloatTensor<B>,
    n: usize,
) -> F<B> {
    let blocks = n.div_ceil(STATE_BLOCK);
    let codes = unpack::<B>(words, n);
    let values = F::<B>(B::float_select(map.clone(), 0, codes));
    let scales = F::<B>(absmax)
        .reshape(&[blocks, 1])
        .expand(&[blocks, STATE_BLOCK])
        .reshape(&[blocks * STATE_BLOCK])
        .narrow(0, 0, n);
    values * scales
}

/// Shifts of the four codes in a word, as a `[1, 4]` tensor.
fn shifts<B: Backend>(like: &IntTensor<B>) -> IntTensor<B> {
    B::int_from_data(
        TensorData::new(vec![0u32, 8, 16, 24], [1, 4]),
        &like.device(),
    )
}

/// The first `n` codes (as i32) of words holding four each, the first in the low byte.
fn unpack<B: Backend>(words: IntTensor<B>, n: usize) -> IntTensor<B> {
    let w = words.shape()[0];
    let shifts = shifts::<B>(&words);
    let words = B::int_expand(
        B::int_reshape(words, Shape::new([w, 1])),
        Shape::new([w, 4]),
    );
    let bytes = B::bitwise_and_scalar(B::bitwise_right_shift(words, shifts), 255.into());
    let bytes = B::int_reshape(bytes, Shape::new([4 * w]));
    B::int_cast(B::int_slice(bytes, &[Slice::from(0..n)]), IntDType::I32)
}

/// i32 codes packed four to a u32 word, the first in the low byte.
fn pack<B: Backend>(codes: IntTensor<B>) -> IntTensor<B> {
    let n = codes.shape()[0];
    let w = n.div_ceil(4);
    let device = codes.device();
    let codes = B::int_cast(codes, IntDType::U32);
    let codes = if 4 * w > n {
        let zeros = B::int_zeros(Shape::new([4 * w - n]), &device, IntDType::U32);
        B::int_cat(vec![codes, zeros], 0)
    } else {
        codes
    };
    let codes = B::int_reshape(codes, Shape::new([w, 4]));
    let shifts = shifts::<B>(&codes);
    let placed = B::bitwise_left_shift(codes, shifts);
    B::int_reshape(B::int_sum_dim(placed, 1), Shape::new([w]))
}

/// `x` padded with zeros to whole blocks of 256 (zeros leave a block's absmax as it is).
fn pad_blocks<B: Backend>(x: F<B>) -> F<B> {
    let n = x.dims()[0];
    let padded = n.div_ceil(STATE_BLOCK) * STATE_BLOCK;
    if padded == n {
        return x;
    }
    let zeros = F::<B>(B::float_zeros(
        Shape::new([padded - n]),
        &x.0.device(),
        x.0.dtype().into(),
    ));
    F::cat(vec![x, zeros], 0)
}

/// Blocks of 256 scaled by their absmax into [-1, 1] and coded through the lookup table; a
/// block whose absmax is 0 gets code 0 throughout, as in bitsandbytes.
fn encode<B: Backend>(x: F<B>, lut: &IntTensor<B>) -> (IntTensor<B>, FloatTensor<B>) {
    let n = x.dims()[0];
    let blocks = n.div_ceil(STATE_BLOCK);
    let x = pad_blocks(x).reshape(&[blocks, STATE_BLOCK]);
    let absmax = x.clone().abs().max_dim(1);
    let scale = absmax.clone().clamp(1e-30, f64::MAX).recip();
    let scaled = (x * scale)
        .clamp(-1.0, 1.0)
        .reshape(&[blocks * STATE_BLOCK])
        .narrow(0, 0, n);
    let grid = B::float_floor(
        scaled
            .add_scalar(1.0)
            .scale(0.5 * 65535.0)
            .add_scalar(0.5)
            .0,
    );
    let grid = B::float_into_int(grid, IntDType::I32);
    let codes = B::int_select(lut.clone(), 0, grid);
    // Zero blocks: code 0 (the codes decode to 0 either way, the absmax being 0).
    let live = F::<B>(B::float_ceil(absmax.clone().clamp(0.0, 1.0).0))
        .expand(&[blocks, STATE_BLOCK])
        .reshape(&[blocks * STATE_BLOCK])
        .narrow(0, 0, n);
    let codes = B::float_into_int((F::<B>::from_int(codes) * live).0, IntDType::I32);
    (pack::<B>(codes), absmax.reshape(&[blocks]).0)
}

/// One step of bitsandbytes' `AdamW8bit` (its CPU arithmetic, without fused multiply-adds).
pub fn adamw8_step<B: Backend>(
    param: FloatTensor<B>,
    grad: FloatTensor<B>,
    state: Blockwise8<B>,
    maps: StateMaps<B>,
    s: AdamWStep,
) -> (FloatTensor<B>, Blockwise8<B>) {
    let n = param.shape()[0];
    let (w, b) = (n.div_ceil(4), n.div_ceil(STATE_BLOCK));
    let half_int = |t: &IntTensor<B>, k: usize, len: usize| {
        B::int_slice(t.clone(), &[Slice::from(k * len..(k + 1) * len)])
    };
    let half_float = |t: &FloatTensor<B>, k: usize, len: usize| {
        B::float_slice(t.clone(), &[Slice::from(k * len..(k + 1) * len)])
    };
    let g = F::<B>(grad).scale(s.grad_scale);
    let m = decode::<B>(
        half_int(&state.codes, 0, w),
        half_float(&state.absmax, 0, b),
        &maps.signed,
        n,
    );
    let v = decode::<B>(
        half_int(&state.codes, 1, w),
        half_float(&state.absmax, 1, b),
        &maps.unsigned,
        n,
    );
    let m = m.scale(s.beta1) + g.clone().scale(1.0 - s.beta1);
    let v = v.scale(s.beta2) + (g.clone() * g).scale(1.0 - s.beta2);
    let bc1 = 1.0 - s.beta1.powi(s.step as i32);
    let bc2_sqrt = (1.0 - s.beta2.powi(s.step as i32)).sqrt();
    let denom = v.clone().sqrt().scale(1.0 / bc2_sqrt).add_scalar(s.eps);
    let p = F::<B>(param);
    let p = if s.weight_decay > 0.0 {
        p.scale(1.0 - s.lr * s.weight_decay)
    } else {
        p
    };
    let update = m.clone().scale(-s.lr / bc1) * denom.recip();
    let (mc, ma) = encode(m, &maps.signed_lut);
    let (vc, va) = encode(v, &maps.unsigned_lut);
    (
        (p + update).0,
        Blockwise8 {
            codes: B::int_cat(vec![mc, vc], 0),
            absmax: B::float_cat(vec![ma, va], 0),
        },
    )
}
