//! A linear layer of the base model: a frozen weight (dense or NF4) and, optionally, a
//! trainable LoRA adapter.

use std::sync::Arc;

use burn::tensor::{Tensor, TensorData};

use super::adapter::{AdapterGrad, DropoutStream, LoraAdapter};
use crate::backend::Nf4Weight;
use crate::error::{Error, Result};
use crate::profile::{self, Phase};
use crate::quant::Nf4Tensor;
use crate::quant::bnb_cpu_bf16;

/// The frozen weight `[out, in]` of a linear layer.
// One per layer, so the size of a tensor handle in the dense variant does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug)]
pub enum BaseWeight {
    /// A dense weight in the compute dtype.
    Dense(Tensor<2>),
    /// NF4, dequantized exactly to f32 for each product (bitsandbytes' training and GPU path).
    Nf4(Nf4Weight),
    /// NF4 multiplied like bitsandbytes' CPU bf16 inference kernel (host only, no gradients);
    /// see [`bnb_cpu_bf16`].
    Nf4BnbCpuBf16(Arc<Nf4Tensor>),
}

impl BaseWeight {
    /// The weight as a dense `[out, in]` tensor (for NF4 a fresh dequantization).
    pub fn dense(&self) -> Tensor<2> {
        match self {
            BaseWeight::Dense(w) => w.clone(),
            BaseWeight::Nf4(q) => q.dequantize(),
            BaseWeight::Nf4BnbCpuBf16(q) => {
                let device = burn::tensor::Device::flex();
                Tensor::from_data(
                    TensorData::new(q.dequantize(), [q.shape[0], q.shape[1]]),
                    &device,
                )
            }
        }
    }
}

/// A linear layer of the base model.
#[derive(Clone, Debug)]
pub struct Linear {
    /// The frozen weight.
    pub weight: BaseWeight,
    /// The frozen bias `[out]`, if the layer has one.
    pub bias: Option<Tensor<1>>,
    /// The trainable adapter, if attached.
    pub lora: Option<LoraAdapter>,
    /// Input width.
    pub in_features: usize,
    /// Output width.
    pub out_features: usize,
}

impl Linear {
    /// A linear of `weight` (and `bias`) without an adapter.
    pub fn new(
        weight: BaseWeight,
        bias: Option<Tensor<1>>,
        in_features: usize,
        out_features: usize,
    ) -> Self {
        Linear {
            weight,
            bias,
            lora: None,
            in_features,
            out_features,
        }
    }

    /// `x Wᵀ + b (+ scale · B A dropout(x))` for `x` `[rows, in]`. Dropout of the adapter
    /// input applies only with a stream (training).
    pub fn forward_rows(&self, rows: Tensor<2>, dropout: Option<&DropoutStream>) -> Tensor<2> {
        let mut y = {
            let _span = profile::span(Phase::BaseForward);
            self.base_forward(rows.clone())
        };
        if let Some(bias) = &self.bias {
            y = y + bias.clone().unsqueeze_dim(0);
        }
        if let Some(lora) = &self.lora {
            let _span = profile::span(Phase::Lora);
            y = lora.add_to(y, rows, dropout);
        }
        y
    }

    /// [`Linear::forward_rows`] for `x` `[batch, seq, in]`.
    pub fn forward(&self, x: Tensor<3>, dropout: Option<&DropoutStream>) -> Tensor<3> {
        let [batch, seq, features] = x.dims();
        self.forward_rows(x.reshape([batch * seq, features]), dropout)
            .reshape([batch, seq, self.out_features])
    }

    /// Given the gradient `dy` of the output for input `x` `[rows, in]`: the adapter's
    /// gradients (if it has one) and, with `input_grad`, the gradient of `x` (`dy W` plus the
    /// adapter's part). The weight and bias are frozen.
    pub fn backward(
        &self,
        x: Tensor<2>,
        dy: Tensor<2>,
        dropout: Option<&DropoutStream>,
        input_grad: bool,
    ) -> Result<(Option<AdapterGrad>, Option<Tensor<2>>)> {
        let base = if input_grad {
            let _span = profile::span(Phase::BaseBackward);
            Some(match &self.weight {
                BaseWeight::Dense(w) => dy.clone().matmul(w.clone()),
                BaseWeight::Nf4(q) => q.input_grad(dy.clone()),
                BaseWeight::Nf4BnbCpuBf16(_) => {
                    return Err(Error::invalid(
                        "--nf4-matmul bnb-cpu-bf16 is for inference only; train with f32",
                    ));
                }
            })
        } else {
            None
        };
        let Some(lora) = &self.lora else {
            return Ok((None, base));
        };
        let _span = profile::span(Phase::Lora);
        let dx_base = match base {
            Some(base) => base,
            None => Tensor::zeros(x.dims(), &x.device()),
        };
        let (grads, dx) = lora.backward(x, dy, dropout, dx_base);
        Ok((Some(grads), input_grad.then_some(dx)))
    }

    /// `x Wᵀ` with the frozen weight only.
    fn base_forward(&self, rows: Tensor<2>) -> Tensor<2> {
        match &self.weight {
            BaseWeight::Dense(w) => rows.matmul(w.clone().transpose()),
            BaseWeight::Nf4(q) => q.linear(rows),
            BaseWeight::Nf4BnbCpuBf16(state) => {
                let [count, _] = rows.dims();
                let device = rows.device();
                let values: Vec<f32> = rows
                    .into_data()
                    .try_into_vec_as::<f32>()
                    .expect("float data");
                let out = bnb_cpu_bf16::linear(&values, count, state);
                Tensor::from_data(TensorData::new(out, [count, self.out_features]), &device)
            }
        }
    }
}
