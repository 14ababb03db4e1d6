//! Loss and adapter gradients of one batch, with or without per-layer gradient checkpointing.
//!
//! Only adapter matrices are leaves that require gradients; the base, embeddings and norms are
//! constants of the graph. With checkpointing, the forward pass keeps nothing but each layer's
//! input; the backward pass then walks the layers from the last, recomputing one layer at a
//! time under autodiff and back-propagating the incoming gradient through it as the
//! vector-Jacobian product `d/dθ sum(layer(x) · g)`. Dropout masks are drawn from
//! `(seed, step, adapter)`, so the recomputation sees exactly the masks of the first pass.

use burn::tensor::Tensor;

use crate::error::{Error, Result};
use crate::model::{DropoutStream, Llama, TrainBatch};
use crate::profile::{self, Phase};

/// Gradients of `A` and `B` for every adapter, in the order of [`Llama::adapters`].
#[derive(Debug, Clone)]
pub struct AdapterGrads {
    pub paths: Vec<String>,
    pub grads: Vec<(Tensor<2>, Tensor<2>)>,
}

#[derive(Debug, Clone)]
pub struct LossAndGrads {
    /// Sum of the token losses of the batch (the gradients are of this sum).
    pub loss_sum: f64,
    pub tokens: usize,
    pub grads: AdapterGrads,
}

/// A copy of `model` whose adapter matrices are fresh autodiff leaves.
fn with_tracked_adapters(model: &Llama) -> Llama {
    let mut tracked = model.clone();
    for (_, linear) in tracked.linears_mut() {
        if let Some(lora) = &mut linear.lora {
            lora.a = lora.a.clone().autodiff().require_grad();
            lora.b = lora.b.clone().autodiff().require_grad();
        }
    }
    tracked
}

fn missing_grad(path: &str) -> Error {
    Error::invalid(format!("no gradient reached the adapter of {path}"))
}

/// Loss and adapter gradients of `batch`. `dropout` enables adapter dropout (training).
pub fn loss_and_grads(
    model: &Llama,
    batch: &TrainBatch,
    checkpointing: bool,
    dropout: Option<&DropoutStream>,
) -> Result<LossAndGrads> {
    if model.adapters().is_empty() {
        return Err(Error::invalid("the model has no LoRA adapters to train"));
    }
    let tracked = with_tracked_adapters(model);
    if !checkpointing {
        let logits = tracked.forward_with(&batch.ids, Some(&batch.is_token), None, dropout)?;
        let loss = tracked.loss_sum(logits, &batch.labels)?;
        let loss_sum = f64::from(loss.sum.clone().into_scalar::<f32>());
        let grads = loss.sum.backward();
        let mut out = AdapterGrads {
            paths: Vec::new(),
            grads: Vec::new(),
        };
        for (path, adapter) in tracked.adapters() {
            let ga = adapter.a.grad(&grads).ok_or_else(|| missing_grad(&path))?;
            let gb = adapter.b.grad(&grads).ok_or_else(|| missing_grad(&path))?;
            out.paths.push(path);
            out.grads.push((ga, gb));
        }
        return Ok(LossAndGrads {
            loss_sum,
            tokens: loss.tokens,
            grads: out,
        });
    }

    // Forward without a graph, keeping each layer's input.
    let inputs = model.attention_inputs(&batch.is_token, None);
    let context = inputs.context(dropout);
    let mut hidden = model.embed(&batch.ids)?;
    let mut layer_inputs = Vec::with_capacity(model.layers.len());
    for layer in &model.layers {
        layer_inputs.push(hidden.clone());
        hidden = layer.forward(hidden, &context, None);
    }

    // The head, then the layers from the last, each recomputed under autodiff.
    let top = hidden.autodiff().require_grad();
    let loss = model.loss_sum(model.head(top.clone()), &batch.labels)?;
    let loss_sum = f64::from(loss.sum.clone().into_scalar::<f32>());
    let grads = loss.sum.backward();
    let mut upstream = top
        .grad(&grads)
        .ok_or_else(|| Error::invalid("no gradient reached the last hidden state"))?;
    drop(grads);

    let mut per_layer = Vec::with_capacity(model.layers.len());
    for (index, input) in layer_inputs.into_iter().enumerate().rev() {
        let layer = &tracked.layers[index];
        let x = input.autodiff().require_grad();
        let y = {
            let _span = profile::span(Phase::Recompute);
            layer.forward(x.clone(), &context, None)
        };
        let grads = (y * upstream.clone().autodiff()).sum().backward();
        let mut layer_grads = Vec::new();
        for linear in layer.linears() {
            if let Some(adapter) = &linear.lora {
                let path = format!("model.layers.{index}");
                let ga = adapter.a.grad(&grads).ok_or_else(|| missing_grad(&path))?;
                let gb = adapter.b.grad(&grads).ok_or_else(|| missing_grad(&path))?;
                layer_grads.push((ga, gb));
            }
        }
        per_layer.push(layer_grads);
        if index > 0 {
            upstream = x
                .grad(&grads)
                .ok_or_else(|| Error::invalid("no gradient reached a layer input"))?;
        }
    }
    per_layer.reverse();
    let paths = model.adapters().into_iter().map(|(p, _)| p).collect();
    Ok(LossAndGrads {
        loss_sum,
        tokens: loss.tokens,
        grads: AdapterGrads {
            paths,
            grads: per_layer.into_iter().flatten().collect(),
        },
    })
}
