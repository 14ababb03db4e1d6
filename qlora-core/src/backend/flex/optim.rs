//! AdamW on the CPU in one pass over the parameter: torch's or bitsandbytes' 32-bit arithmetic
//! and bitsandbytes' 8-bit blockwise moments (decode, update, encode a block of 256 at a time),
//! reproducing their roundings, fused multiply-adds included.

use std::sync::OnceLock;

use burn::backend::flex::FlexTensor;
use burn::backend::{Flex, TensorMetadata};
use burn::tensor::TensorData;
use rayon::prelude::*;

use super::kernel::{floats, multiversion, tensor, uninit};
use crate::backend::{AdamWArithmetic, AdamWStep, Blockwise8, OptimOps, StateMaps};
use crate::quant::blockwise8::{CodeLut, quantize_block};
use crate::quant::dynamic_map::dynamic_map;

/// The signed and unsigned dynamic maps and their lookup tables, built once.
fn maps() -> &'static [([f32; 256], CodeLut); 2] {
    static MAPS: OnceLock<[([f32; 256], CodeLut); 2]> = OnceLock::new();
    MAPS.get_or_init(|| {
        [true, false].map(|signed| {
            let map = dynamic_map(signed);
            let lut = CodeLut::new(&map);
            (map, lut)
        })
    })
}

/// A step's constants in f32, as torch and bitsandbytes round them.
struct Consts {
    arithmetic: AdamWArithmetic,
    grad_scale: f32,
    beta1: f32,
    one_minus_beta1: f32,
    beta2: f32,
    one_minus_beta2: f32,
    decay: Option<f32>,
    /// torch: `sqrt(bc2)`; bitsandbytes 8-bit: `sqrt(bc2)` too (as `correction2`).
    bc2_sqrt: f32,
    eps: f32,
    /// torch and bitsandbytes 8-bit: `-lr / bc1`; bitsandbytes 32-bit: `-lr·sqrt(bc2)/bc1`.
    step_size: f32,
    /// bitsandbytes 32-bit: `eps · sqrt(bc2)`.
    eps_scaled: f32,
    /// bitsandbytes 8-bit: `-lr / bc1` whatever the 32-bit arithmetic.
    step_size8: f32,
}

impl Consts {
    fn new(s: &AdamWStep) -> Self {
        let bc1 = 1.0 - s.beta1.powi(s.step as i32);
        let bc2_sqrt = (1.0 - s.beta2.powi(s.step as i32)).sqrt();
        let step_size = match s.arithmetic {
            AdamWArithmetic::Torch => -(s.lr / bc1),
            AdamWArithmetic::Bitsandbytes => -s.lr * bc2_sqrt / bc1,
        };
        Consts {
            arithmetic: s.arithmetic,
            grad_scale: s.grad_scale as f32,
            beta1: s.beta1 as f32,
            one_minus_beta1: (1.0 - s.beta1) as f32,
            beta2: s.beta2 as f32,
            one_minus_beta2: (1.0 - s.beta2) as f32,
            decay: (s.weight_decay > 0.0).then_some((1.0 - s.lr * s.weight_decay) as f32),
            bc2_sqrt: bc2_sqrt as f32,
            eps: s.eps as f32,
            step_size: step_size as f32,
            eps_scaled: (s.eps * bc2_sqrt) as f32,
            step_size8: (-s.lr / bc1) as f32,
        }
    }
}

/// `(g, m, v) -> (p, m, v)` of one value with 32-bit moments.
#[inline(always)]
fn update32(p: f32, g: f32, m: f32, v: f32, c: &Consts) -> (f32, f32, f32) {
    let g = if c.grad_scale == 1.0 {
        g
    } else {
        g * c.grad_scale
    };
    // v.mul_(β2).addcmul_(g, g, value=1-β2): one fused multiply-add.
    let v = (c.one_minus_beta2 * g).mul_add(g, v * c.beta2);
    let p = c.decay.map_or(p, |d| p * d);
    match c.arithmetic {
        AdamWArithmetic::Torch => {
            // m.lerp_(g, 1-β1) with a weight under 0.5: m + w (g - m), fused.
            let m = c.one_minus_beta1.mul_add(g - m, m);
            let denom = v.sqrt() / c.bc2_sqrt + c.eps;
            // p.addcdiv_(m, denom, value=-lr/bc1): p + (value · m) / denom.
            (p + (c.step_size * m) / denom, m, v)
        }
        AdamWArithmetic::Bitsandbytes => {
            // m.mul_(β1).add_(g, alpha=1-β1): m β1, then a fused multiply-add.
            let m = g.mul_add(c.one_minus_beta1, m * c.beta1);
            let update = m / (v.sqrt() + c.eps_scaled);
            // p.add_(update, alpha=step_size): fused.
            (update.mul_add(c.step_size, p), m, v)
        }
    }
}

multiversion! {
    #[allow(clippy::too_many_arguments)]
    fn adamw32_span(po: &mut [f32], mo: &mut [f32], vo: &mut [f32], p: &[f32], g: &[f32], m: &[f32], v: &[f32], c: &Consts) {
        for i in 0..po.len() {
            (po[i], mo[i], vo[i]) = update32(p[i], g[i], m[i], v[i], c);
        }
    }
}

/// The code words of an 8-bit state, as an owned buffer to update in place.
fn code_words(t: &FlexTensor) -> Vec<u32> {
    match t.as_slice::<u32>() {
        Some(w) => w.to_vec(),
        None => t
            .clone()
            .into_data()
            .convert::<u32>()
            .try_into_vec::<u32>()
            .expect("u32 code words"),
    }
}

multiversion! {
    /// One block of up to 256 values: decode both moments, update them and the parameters,
    /// encode the moments again.
    #[allow(clippy::too_many_arguments)]
    fn adamw8_block(
        po: &mut [f32],
        p: &[f32],
        g: &[f32],
        mq: &mut [u8],
        vq: &mut [u8],
        absmax: (&mut f32, &mut f32),
        c: &Consts,
    ) {
        let [(signed, signed_lut), (unsigned, unsigned_lut)] = maps();
        let (am, av) = absmax;
        let mut m = [0f32; 256];
        let mut v = [0f32; 256];
        let n = po.len();
        for i in 0..n {
            m[i] = signed[usize::from(mq[i])] * *am;
            v[i] = unsigned[usize::from(vq[i])] * *av;
        }
        for i in 0..n {
            let g = if c.grad_scale == 1.0 { g[i] } else { g[i] * c.grad_scale };
            // state1.mul_(β1).add_(g, alpha=1-β1); state2.mul_(β2).addcmul_(g, g, value=1-β2)
            m[i] = g.mul_add(c.one_minus_beta1, m[i] * c.beta1);
            v[i] = (c.one_minus_beta2 * g).mul_add(g, v[i] * c.beta2);
        }
        for i in 0..po.len() {
            let denom = v[i].sqrt() / c.bc2_sqrt + c.eps;
            let p = c.decay.map_or(p[i], |d| p[i] * d);
            po[i] = p + (c.step_size8 * m[i]) / denom;
        }
        *am = quantize_block(&m[..n], signed_lut, &mut mq[..n]);
        *av = quantize_block(&v[..n], unsigned_lut, &mut vq[..n]);
    }
}

impl OptimOps for Flex {
    fn adamw_step(
        param: FlexTensor,
        grad: FlexTensor,
        m: FlexTensor,
        v: FlexTensor,
        s: AdamWStep,
    ) -> (FlexTensor, FlexTensor, FlexTensor) {
        let shape = param.shape();
        let (p, g, m, v) = (floats(&param), floats(&grad), floats(&m), floats(&v));
        let c = Consts::new(&s);
        let n = p.len();
        let (mut p2, mut m2, mut v2) = (uninit(n), uninit(n), uninit(n));
        const CHUNK: usize = 16384;
        p2.par_chunks_mut(CHUNK)
            .zip(m2.par_chunks_mut(CHUNK))
            .zip(v2.par_chunks_mut(CHUNK))
            .enumerate()
            .for_each(|(k, ((po, mo), vo))| {
                let r = k * CHUNK..k * CHUNK + po.len();
                adamw32_span(
                    po,
                    mo,
                    vo,
                    &p[r.clone()],
                    &g[r.clone()],
                    &m[r.clone()],
                    &v[r],
                    &c,
                );
            });
        (
            FlexTensor::from_data(TensorData::new(p2, shape.clone())),
            FlexTensor::from_data(TensorData::new(m2, shape.clone())),
            FlexTensor::from_data(TensorData::new(v2, shape)),
        )
    }

    fn adamw8_step(
        param: FlexTensor,
        grad: FlexTensor,
        state: Blockwise8<Flex>,
        // The CPU encodes through its own lookup tables.
        _maps: StateMaps<Flex>,
        s: AdamWStep,
    ) -> (FlexTensor, Blockwise8<Flex>) {
        const BLOCK: usize = 256;
        let (p, g) = (floats(&param), floats(&grad));
        let numel = p.len();
        let (w, blocks) = (numel.div_ceil(4), numel.div_ceil(BLOCK));
        let mut words = code_words(&state.codes);
        let mut absmax = floats(&state.absmax).into_owned();
        assert_eq!(
            (words.len(), absmax.len()),
            (2 * w, 2 * blocks),
            "8-bit state layout"
        );
        let (mw, vw) = words.split_at_mut(w);
        // Four codes a word, the first in the low byte: the words' bytes in order.
        let mq = &mut bytemuck::cast_slice_mut::<u32, u8>(mw)[..numel];
        let vq = &mut bytemuck::cast_slice_mut::<u32, u8>(vw)[..numel];
        let (am, av) = absmax.split_at_mut(blocks);
        let c = Consts::new(&s);
        let mut out = uninit(numel);
        out.par_chunks_mut(BLOCK)
            .zip(mq.par_chunks_mut(BLOCK).zip(vq.par_chunks_mut(BLOCK)))
            .zip(am.par_iter_mut().zip(av.par_iter_mut()))
            .enumerate()
            .for_each(|(b, ((po, (mq, vq)), (am, av)))| {
                let r = b * BLOCK..b * BLOCK + po.len();
                adamw8_block(po, &p[r.clone()], &g[r], mq, vq, (am, av), &c);
            });
        (
            tensor(out, [numel]),
            Blockwise8 {
                codes: FlexTensor::from_data(TensorData::new(words, [2 * w])),
                absmax: tensor(absmax, [2 * blocks]),
            },
        )
    }
}
