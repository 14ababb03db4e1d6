//! NF4 dequantization straight from the packed words: one thread a value, a table lookup and
//! one multiply, bit-exact with the CPU path. A double-quantized absmax is decoded first, a
//! thread a block (`nested_code[c] · nested_absmax[k]`), and the offset added when the value is
//! scaled, so no compiler can contract the product and the sum into one rounding.

use burn_cubecl::CubeBackend;
use burn_cubecl::ops::numeric::empty_device_dtype;
use burn_cubecl::tensor::CubeTensor;
use cubecl::prelude::*;
use cubecl::{CubeDim, calculate_cube_count_elemwise};

use burn::backend::tensor::FloatTensor;

use crate::backend::{Nf4Absmax, Nf4Operand, Nf4Ops};

/// Byte `index` of `words` (four a word, the most significant first).
#[cube]
fn byte_of(words: &[u32], index: usize) -> u32 {
    let word = words[index / 4];
    (word >> (24 - 8 * (index % 4) as u32)) & 0xff
}

/// `scaled[b] = nested_code[code_b] · nested_absmax[b / nested_blocksize]`.
#[cube(launch)]
fn double_absmax_kernel(
    words: &[u32],
    nested_code: &[f32],
    nested_absmax: &[f32],
    scaled: &mut [f32],
    #[comptime] nested_blocksize: usize,
) {
    let b = ABSOLUTE_POS;
    if b >= scaled.len() {
        terminate!();
    }
    let c = byte_of(words, b) as usize;
    scaled[b] = nested_code[c] * nested_absmax[b / nested_blocksize];
}

/// `out[i] = code[q_i] · (absmax[i / blocksize] + offset)`.
#[cube(launch)]
fn dequantize_kernel(
    words: &[u32],
    code: &[f32],
    absmax: &[f32],
    offset: f32,
    out: &mut [f32],
    #[comptime] blocksize: usize,
) {
    let i = ABSOLUTE_POS;
    if i >= out.len() {
        terminate!();
    }
    let byte = byte_of(words, i / 2);
    let q = if i % 2 == 1 { byte & 0xf } else { byte >> 4 };
    out[i] = code[q as usize] * (absmax[i / blocksize] + offset);
}

fn launch_dims(client: &cubecl::client::Client, n: usize) -> (CubeCount, CubeDim) {
    let dim = CubeDim::new(client, n);
    (calculate_cube_count_elemwise(client, n, dim), dim)
}

/// The dense `[out, in]` f32 weight of `weight`.
fn dequantize(weight: Nf4Operand<CubeBackend>) -> CubeTensor {
    let layout = weight.layout;
    let n = layout.numel();
    let client = weight.code.client.clone();
    let device = weight.code.device.clone();
    let (absmax, offset) = match weight.absmax {
        Nf4Absmax::Plain(absmax) => (absmax, 0.0),
        Nf4Absmax::Double(d) => {
            let blocks = layout.blocks();
            let scaled = empty_device_dtype(
                client.clone(),
                device.clone(),
                [blocks].into(),
                burn::tensor::DType::F32,
            );
            let (count, dim) = launch_dims(&client, blocks);
            double_absmax_kernel::launch(
                &client,
                count,
                dim,
                d.words.into_buffer_arg(),
                d.nested_code.into_buffer_arg(),
                d.nested_absmax.into_buffer_arg(),
                scaled.clone().into_buffer_arg(),
                d.nested_blocksize,
            );
            (scaled, d.offset)
        }
    };
    let out = empty_device_dtype(
        client.clone(),
        device,
        [layout.out_features, layout.in_features].into(),
        burn::tensor::DType::F32,
    );
    let (count, dim) = launch_dims(&client, n);
    dequantize_kernel::launch(
        &client,
        count,
        dim,
        weight.words.into_buffer_arg(),
        weight.code.into_buffer_arg(),
        absmax.into_buffer_arg(),
        offset,
        out.clone().into_buffer_arg(),
        layout.blocksize,
    );
    out
}

/// Only the dequantization is a kernel: the products are Burn's matmul of the dense weight (the
/// trait's default), which the dequantization feeds a layer at a time.
impl Nf4Ops for CubeBackend {
    fn nf4_dequantize(weight: Nf4Operand<Self>) -> FloatTensor<Self> {
        dequantize(weight)
    }
}
