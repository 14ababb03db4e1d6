//! NF4 dequantization from backend primitives: the default every backend can run, giving the
//! same f32 bits as the CPU path (each value one table lookup and one multiply; a
//! double-quantized absmax one lookup, one multiply and one add).

use burn::backend::tensor::{FloatTensor, IntTensor};
use burn::backend::{Backend, TensorMetadata};
use burn::tensor::{Scalar, Shape, Slice};

use crate::backend::{Nf4Absmax, Nf4Operand};

/// `count` bytes (ints 0..=255) from words holding four each, most significant first.
fn unpack_bytes<B: Backend>(words: IntTensor<B>, count: usize) -> IntTensor<B> {
    let n = words.shape()[0];
    let parts = [24i64, 16, 8, 0]
        .into_iter()
        .map(|shift| {
            let shifted = B::bitwise_right_shift_scalar(words.clone(), Scalar::from(shift));
            let byte = B::bitwise_and_scalar(shifted, Scalar::from(0xffi64));
            B::int_reshape(byte, Shape::new([n, 1]))
        })
        .collect();
    let bytes = B::int_reshape(B::int_cat(parts, 1), Shape::new([n * 4]));
    B::int_slice(bytes, &[Slice::from(0..count)])
}

/// The f32 absmax of `blocks` blocks.
fn absmax<B: Backend>(absmax: &Nf4Absmax<B>, blocks: usize) -> FloatTensor<B> {
    match absmax {
        Nf4Absmax::Plain(a) => a.clone(),
        Nf4Absmax::Double(d) => {
            let codes = unpack_bytes::<B>(d.words.clone(), blocks);
            let device = d.nested_absmax.device();
            let block = B::int_arange(0..blocks as i64, &device, d.words.dtype().into());
            let nested_of_block = B::int_div_scalar(block, Scalar::from(d.nested_blocksize as i64));
            let scaled = B::float_mul(
                B::float_select(d.nested_code.clone(), 0, codes),
                B::float_select(d.nested_absmax.clone(), 0, nested_of_block),
            );
            B::float_add_scalar(scaled, Scalar::from(d.offset))
        }
    }
}

/// The dense `[out, in]` f32 weight: `code[q] * absmax[block]`, as bitsandbytes computes it.
pub fn dequantize<B: Backend>(weight: &Nf4Operand<B>) -> FloatTensor<B> {
    let layout = weight.layout;
    let n = layout.numel();
    let nbytes = n.div_ceil(2);
    let bytes = unpack_bytes::<B>(weight.words.clone(), nbytes);
    let high = B::bitwise_right_shift_scalar(bytes.clone(), Scalar::from(4i64));
    let low = B::bitwise_and_scalar(bytes, Scalar::from(0x0fi64));
    let codes = B::int_cat(
        vec![
            B::int_reshape(high, Shape::new([nbytes, 1])),
            B::int_reshape(low, Shape::new([nbytes, 1])),
        ],
        1,
    );
    let codes = B::int_reshape(codes, Shape::new([nbytes * 2]));
    let mut values = B::float_select(weight.code.clone(), 0, codes);
    let blocks = layout.blocks();
    let padded = blocks * layout.blocksize;
    if padded > nbytes * 2 {
        let pad = B::float_zeros(
            Shape::new([padded - nbytes * 2]),
            &values.device(),
            values.dtype().into(),
        );
        values = B::float_cat(vec![values, pad], 0);
    }
    let scaled = B::float_mul(
        B::float_reshape(values, Shape::new([blocks, layout.blocksize])),
        B::float_reshape(absmax(&weight.absmax, blocks), Shape::new([blocks, 1])),
    );
    let flat = B::float_slice(
        B::float_reshape(scaled, Shape::new([padded])),
        &[Slice::from(0..n)],
    );
    B::float_reshape(flat, Shape::new([layout.out_features, layout.in_features]))
}

/// `x · Wᵀ` of the dense f32 weight `dense` `[out, in]`, the weight rounded to `x`'s dtype.
pub fn linear<B: Backend>(x: FloatTensor<B>, dense: FloatTensor<B>) -> FloatTensor<B> {
    let dense = super::cast_like::<B>(dense, &x);
    B::float_matmul(x, B::float_transpose(dense))
}

/// `dy · W` of the dense f32 weight `dense` `[out, in]`, the weight rounded to `dy`'s dtype.
pub fn input_grad<B: Backend>(dy: FloatTensor<B>, dense: FloatTensor<B>) -> FloatTensor<B> {
    let dense = super::cast_like::<B>(dense, &dy);
    B::float_matmul(dy, dense)
}
