//! The CPU fast path: dequantize with the multi-threaded host code straight from the packed
//! words.

use burn::backend::Flex;
use burn::backend::ops::FloatTensorOps;
use burn::backend::tensor::{FloatTensor, IntTensor};
use burn::tensor::{DType, TensorData};

use crate::backend::{Nf4Absmax, Nf4Operand};
use crate::quant::{DoubleQuant, nf4};

fn host_bytes(words: &IntTensor<Flex>, count: usize) -> Vec<u8> {
    let words: Vec<i32> = words
        .clone()
        .into_data()
        .convert::<i32>()
        .try_into_vec()
        .expect("i32 words");
    let mut bytes: Vec<u8> = words.iter().flat_map(|w| w.to_be_bytes()).collect();
    bytes.truncate(count);
    bytes
}

fn host_floats(t: &FloatTensor<Flex>) -> Vec<f32> {
    t.clone().into_data().try_into_vec().expect("f32 values")
}

fn host_absmax(absmax: &Nf4Absmax<Flex>, blocks: usize) -> Vec<f32> {
    match absmax {
        Nf4Absmax::Plain(a) => host_floats(a),
        Nf4Absmax::Double(d) => DoubleQuant {
            codes: host_bytes(&d.words, blocks),
            nested_absmax: host_floats(&d.nested_absmax),
            offset: d.offset,
            code: host_floats(&d.nested_code),
            blocksize: d.nested_blocksize,
        }
        .decode(),
    }
}

/// The dense `[out, in]` f32 weight, from the host path of [`nf4::dequantize_into`].
pub fn dequantize(weight: Nf4Operand<Flex>) -> FloatTensor<Flex> {
    let layout = weight.layout;
    if weight.code.dtype() != DType::F32 {
        return crate::backend::generic::nf4::dequantize::<Flex>(&weight);
    }
    let n = layout.numel();
    let packed = host_bytes(&weight.words, n.div_ceil(2));
    let code: [f32; 16] = host_floats(&weight.code).try_into().expect("16 codes");
    let absmax = host_absmax(&weight.absmax, layout.blocks());
    let mut out = vec![0f32; n];
    nf4::dequantize_into(&packed, &absmax, &code, layout.blocksize, &mut out)
        .expect("operand matches its layout");
    Flex::float_from_data(
        TensorData::new(out, [layout.out_features, layout.in_features]),
        &Default::default(),
    )
}
