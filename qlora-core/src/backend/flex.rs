//! The CPU fast path: dequantize with the multi-threaded host code straight from the packed
//! words, then one gemm.

use burn::backend::Flex;
use burn::backend::ops::FloatTensorOps;
use burn::backend::tensor::FloatTensor;
use burn::tensor::{DType, TensorData};

use super::{Nf4Layout, Nf4Operand, QloraOps};
use crate::quant::nf4;

fn dense_weight(weight: &Nf4Operand<Flex>, layout: Nf4Layout) -> FloatTensor<Flex> {
    let words = weight.words.clone().into_data();
    let words: Vec<i32> = words.convert::<i32>().try_into_vec().expect("i32 words");
    let n = layout.out_features * layout.in_features;
    let mut packed: Vec<u8> = words.iter().flat_map(|w| w.to_be_bytes()).collect();
    packed.truncate(n.div_ceil(2));
    let code: Vec<f32> = weight
        .code
        .clone()
        .into_data()
        .try_into_vec()
        .expect("f32 code");
    let code: [f32; 16] = code.try_into().expect("16 codes");
    let absmax: Vec<f32> = weight
        .absmax
        .clone()
        .into_data()
        .try_into_vec()
        .expect("f32 absmax");
    let mut out = vec![0f32; n];
    nf4::dequantize_into(&packed, &absmax, &code, layout.blocksize, &mut out)
        .expect("operand matches its layout");
    Flex::float_from_data(
        TensorData::new(out, [layout.out_features, layout.in_features]),
        &Default::default(),
    )
}

impl QloraOps for Flex {
    fn nf4_matmul(
        x: FloatTensor<Self>,
        weight: Nf4Operand<Self>,
        out_features: usize,
        in_features: usize,
        blocksize: usize,
    ) -> FloatTensor<Self> {
        let layout = Nf4Layout {
            out_features,
            in_features,
            blocksize,
        };
        if x.dtype() != DType::F32 {
            let dense = super::generic::dequantize::<Self>(&weight, layout);
            return Self::float_matmul(x, Self::float_transpose(dense));
        }
        Self::float_matmul(x, Self::float_transpose(dense_weight(&weight, layout)))
    }

    fn nf4_matmul_transposed(
        dy: FloatTensor<Self>,
        weight: Nf4Operand<Self>,
        out_features: usize,
        in_features: usize,
        blocksize: usize,
    ) -> FloatTensor<Self> {
        let layout = Nf4Layout {
            out_features,
            in_features,
            blocksize,
        };
        if dy.dtype() != DType::F32 {
            let dense = super::generic::dequantize::<Self>(&weight, layout);
            return Self::float_matmul(dy, dense);
        }
        Self::float_matmul(dy, dense_weight(&weight, layout))
    }
}
