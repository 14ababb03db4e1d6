//! Projections of one input computed together: the attention's queries, keys and values, the
//! MLP's gate and up projections. A family stores them split (a linear each, LLaMA) or fused
//! (one linear whose output rows stack theirs, Phi-3's `qkv_proj` and `gate_up_proj`, with
//! one adapter over the whole as PEFT puts it there).

use burn::tensor::Tensor;

use super::adapter::{AdapterGrad, DropoutStream};
use super::linear::Linear;
use crate::config::Projection;
use crate::error::Result;

/// The adapters' gradients of a group of projections, and the gradient of their input.
pub type GroupGrads = (Vec<(Projection, AdapterGrad)>, Option<Tensor<2>>);

/// Projections of one input (two a layer: the size of a linear inline does not matter).
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug)]
pub enum InputProjections {
    /// One linear an output.
    Split(Vec<(Projection, Linear)>),
    /// One linear whose output columns are the outputs side by side, `widths` wide.
    Fused {
        /// The fused projection.
        projection: Projection,
        /// Its linear.
        linear: Linear,
        /// The width of every output, in order.
        widths: Vec<usize>,
    },
}

/// An input gradient summed over the projections that read the input.
fn add(a: Option<Tensor<2>>, b: Option<Tensor<2>>) -> Option<Tensor<2>> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a + b),
        (a, b) => a.or(b),
    }
}

impl InputProjections {
    /// The outputs of `x` `[rows, in]`, in order.
    pub fn forward(&self, x: Tensor<2>, dropout: Option<&DropoutStream>) -> Vec<Tensor<2>> {
        match self {
            InputProjections::Split(linears) => linears
                .iter()
                .map(|(_, linear)| linear.forward_rows(x.clone(), dropout))
                .collect(),
            InputProjections::Fused { linear, widths, .. } => {
                let y = linear.forward_rows(x, dropout);
                let mut start = 0;
                widths
                    .iter()
                    .map(|&width| {
                        let part = y.clone().narrow(1, start, width);
                        start += width;
                        part
                    })
                    .collect()
            }
        }
    }

    /// Given the gradients `dys` of the outputs for input `x`: the adapters' gradients and,
    /// with `input_grad`, the gradient of `x`.
    pub fn backward(
        &self,
        x: Tensor<2>,
        dys: Vec<Tensor<2>>,
        dropout: Option<&DropoutStream>,
        input_grad: bool,
    ) -> Result<GroupGrads> {
        let mut grads = Vec::new();
        match self {
            InputProjections::Split(linears) => {
                let mut dx = None;
                for ((p, linear), dy) in linears.iter().zip(dys) {
                    let (g, d) = linear.backward(x.clone(), dy, dropout, input_grad)?;
                    grads.extend(g.map(|g| (*p, g)));
                    dx = add(dx, d);
                }
                Ok((grads, dx))
            }
            InputProjections::Fused {
                projection, linear, ..
            } => {
                let (g, dx) = linear.backward(x, Tensor::cat(dys, 1), dropout, input_grad)?;
                grads.extend(g.map(|g| (*projection, g)));
                Ok((grads, dx))
            }
        }
    }

    /// The linears, with their projections.
    pub fn linears(&self) -> Vec<(Projection, &Linear)> {
        match self {
            InputProjections::Split(linears) => linears.iter().map(|(p, l)| (*p, l)).collect(),
            InputProjections::Fused {
                projection, linear, ..
            } => vec![(*projection, linear)],
        }
    }

    /// [`InputProjections::linears`], mutably.
    pub fn linears_mut(&mut self) -> Vec<(Projection, &mut Linear)> {
        match self {
            InputProjections::Split(linears) => linears.iter_mut().map(|(p, l)| (*p, l)).collect(),
            InputProjections::Fused {
                projection, linear, ..
            } => vec![(*projection, linear)],
        }
    }
}
