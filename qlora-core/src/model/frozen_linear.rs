//! A linear layer whose weight never trains: dense, or NF4 dequantized for each use.

use std::sync::Arc;

use burn::tensor::{Tensor, TensorData};

use crate::quant::Nf4Tensor;
use crate::quant::bnb_cpu_bf16;
use crate::quant::tensor_ops::DeviceNf4;

/// The frozen weight `[out, in]` of a linear layer.
// One per layer, so the size of a tensor handle in the dense variant does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug)]
pub enum BaseWeight {
    Dense(Tensor<2>),
    /// NF4, dequantized exactly to f32 for each product (bitsandbytes' training and GPU path).
    Nf4(DeviceNf4),
    /// NF4 multiplied like bitsandbytes' CPU bf16 inference kernel (host only, no gradients);
    /// see [`bnb_cpu_bf16`].
    Nf4BnbCpuBf16(Arc<Nf4Tensor>),
}

impl BaseWeight {
    /// The weight as a dense `[out, in]` tensor (for NF4 a fresh dequantization, dropped by the
    /// caller after use).
    pub fn dense(&self) -> Tensor<2> {
        match self {
            BaseWeight::Dense(w) => w.clone(),
            BaseWeight::Nf4(q) => q.dequantize(),
            BaseWeight::Nf4BnbCpuBf16(q) => {
                panic!(
                    "the bitsandbytes CPU bf16 emulation has no dense weight ({:?})",
                    q.shape
                )
            }
        }
    }
}

#[derive(Clone, Debug)]
pub struct FrozenLinear {
    pub weight: BaseWeight,
    pub bias: Option<Tensor<1>>,
    pub in_features: usize,
    pub out_features: usize,
}

impl FrozenLinear {
    pub fn new(
        weight: BaseWeight,
        bias: Option<Tensor<1>>,
        in_features: usize,
        out_features: usize,
    ) -> Self {
        FrozenLinear {
            weight,
            bias,
            in_features,
            out_features,
        }
    }

    /// `x W^T + b` for `x` of shape `[batch, seq, in]`.
    pub fn forward(&self, x: Tensor<3>) -> Tensor<3> {
        let [batch, seq, features] = x.dims();
        let rows = x.reshape([batch * seq, features]);
        let mut y = match &self.weight {
            BaseWeight::Nf4BnbCpuBf16(state) => {
                let device = rows.device();
                let values: Vec<f32> = rows
                    .into_data()
                    .try_into_vec_as::<f32>()
                    .expect("float data");
                let out = bnb_cpu_bf16::linear(&values, batch * seq, state);
                Tensor::from_data(
                    TensorData::new(out, [batch * seq, self.out_features]),
                    &device,
                )
            }
            weight => rows.matmul(weight.dense().transpose()),
        };
        if let Some(bias) = &self.bias {
            y = y + bias.clone().unsqueeze_dim(0);
        }
        y.reshape([batch, seq, self.out_features])
    }
}
