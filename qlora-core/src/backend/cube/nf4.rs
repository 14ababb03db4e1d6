//! NF4 dequantization straight from the packed words: one thread a value, a table lookup and
//! one multiply, bit-exact with the CPU path. A double-quantized absmax is decoded first, a
//! thread a block (`nested_code[c] · nested_absmax[k]`), and the offset added when the value is
//! scaled, so no compiler can contract the product and the sum into one rounding.
//!
//! The two products dequantize into scratch buffers kept across calls (Unsloth's approach): one
//! a device and thread for the dense weight, sized to the largest weight seen and viewed at the
//! size of each, and one for the decoded absmax, so a training step allocates no dense weight.
//! A scratch buffer is only written when nothing but the cache holds it ([`CubeTensor::can_mut`]);
//! otherwise the call allocates, as [`Nf4Ops::nf4_dequantize`] (whose result the caller keeps)
//! always does.

use burn_cubecl::CubeBackend;
use burn_cubecl::ops::numeric::empty_device_dtype;
use burn_cubecl::tensor::CubeTensor;
use std::cell::RefCell;

use burn_cubecl::CubeDevice;
use cubecl::prelude::*;
use cubecl::{CubeDim, calculate_cube_count_elemwise};

use burn::backend::tensor::FloatTensor;

use crate::backend::{Nf4Absmax, Nf4Operand, Nf4Ops, generic};

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

/// What a scratch buffer holds.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Slot {
    Dense,
    Absmax,
}

thread_local! {
    /// The scratch buffers of this thread, a slot and device each.
    static SCRATCH: RefCell<Vec<(Slot, CubeDevice, CubeTensor)>> = const { RefCell::new(Vec::new()) };
}

/// Where a dequantization writes: fresh memory, or a slot's scratch buffer.
#[derive(Clone, Copy)]
enum Target {
    Fresh,
    Scratch,
}

/// An uninitialized f32 tensor of `shape`: a fresh allocation, or a view of the slot's scratch
/// buffer (grown to fit when nothing else holds it).
fn buffer(
    client: &cubecl::client::Client,
    device: &CubeDevice,
    shape: Vec<usize>,
    into: Target,
    slot: Slot,
) -> CubeTensor {
    let fresh = |shape: Vec<usize>| {
        empty_device_dtype(
            client.clone(),
            device.clone(),
            shape.into(),
            burn::tensor::DType::F32,
        )
    };
    if matches!(into, Target::Fresh) || super::baselines().fresh_nf4_buffers {
        return fresh(shape);
    }
    let bytes = (shape.iter().product::<usize>() * 4) as u64;
    SCRATCH.with_borrow_mut(|scratch| {
        let index = match scratch
            .iter()
            .position(|(s, d, _)| *s == slot && d == device)
        {
            Some(i) => i,
            None => {
                scratch.push((slot, device.clone(), fresh(vec![bytes as usize / 4])));
                scratch.len() - 1
            }
        };
        let whole = &mut scratch[index].2;
        if !whole.can_mut() {
            // A result of an earlier call is still alive (its reader holds it).
            return fresh(shape);
        }
        if whole.handle.size() < bytes {
            *whole = fresh(vec![bytes as usize / 4]);
        }
        let spare = whole.handle.size() - bytes;
        if !spare.is_multiple_of(client.properties().memory.alignment) {
            return fresh(shape);
        }
        CubeTensor::new_contiguous(
            client.clone(),
            device.clone(),
            shape.into(),
            whole.handle.clone().offset_end(spare),
            burn::tensor::DType::F32,
        )
    })
}

/// The dense `[out, in]` f32 weight of `weight`.
fn dequantize(weight: Nf4Operand<CubeBackend>, into: Target) -> CubeTensor {
    let layout = weight.layout;
    let n = layout.numel();
    let client = weight.code.client.clone();
    let device = weight.code.device.clone();
    let (absmax, offset) = match weight.absmax {
        Nf4Absmax::Plain(absmax) => (absmax, 0.0),
        Nf4Absmax::Double(d) => {
            let blocks = layout.blocks();
            let scaled = buffer(&client, &device, vec![blocks], into, Slot::Absmax);
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
    let out = buffer(
        &client,
        &device,
        vec![layout.out_features, layout.in_features],
        into,
        Slot::Dense,
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

/// Only the dequantization is a kernel: the products are Burn's matmul of the dense weight, which
/// the dequantization feeds a layer at a time through the scratch buffer.
impl Nf4Ops for CubeBackend {
    fn nf4_dequantize(weight: Nf4Operand<Self>) -> FloatTensor<Self> {
        dequantize(weight, Target::Fresh)
    }

    fn nf4_matmul(x: FloatTensor<Self>, weight: Nf4Operand<Self>) -> FloatTensor<Self> {
        generic::nf4::linear::<Self>(x, dequantize(weight, Target::Scratch))
    }

    fn nf4_matmul_transposed(dy: FloatTensor<Self>, weight: Nf4Operand<Self>) -> FloatTensor<Self> {
        generic::nf4::input_grad::<Self>(dy, dequantize(weight, Target::Scratch))
    }
}
