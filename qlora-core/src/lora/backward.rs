//! Loss and adapter gradients of one batch: a forward pass that keeps what the backward pass
//! needs, then the backward pass written out layer by layer (no autodiff graph).
//!
//! Only adapter matrices receive gradients; the base, embeddings and norms are frozen, so the
//! backward pass needs no weight gradient but the adapters' and computes no input gradient
//! for the first layer. With gradient checkpointing the forward pass keeps, per layer, three
//! tensors the size of its input (the input, the attention output, the hidden state after
//! attention) and the attention's log-sum-exp; the backward pass recomputes only what its
//! gradients read: the queries, keys and values, and the gate and up projections (never the
//! attention, nor the output and down projections, whose results the backward pass does not
//! use). Without checkpointing it keeps all of that instead. Dropout masks come
//! from `(seed, step, adapter)`, so the recomputation sees exactly the masks of the first pass.

use burn::tensor::Tensor;

use crate::backend::ops;
use crate::config::Projection;
use crate::error::{Error, Result};
use crate::model::{
    AdapterGrad, AttentionInputs, DecoderLayer, DropoutStream, LayerContext, Llama, TrainBatch,
};
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

/// What a layer's backward pass reads.
struct Activations {
    x: Tensor<2>,
    n1: Tensor<2>,
    q: Tensor<2>,
    k: Tensor<2>,
    v: Tensor<2>,
    attended: Tensor<2>,
    lse: Tensor<1>,
    h: Tensor<2>,
    n2: Tensor<2>,
    gate: Tensor<2>,
    up: Tensor<2>,
    z: Tensor<2>,
}

/// What the forward pass keeps of a layer (one per layer: the size of tensor handles does not
/// matter).
#[allow(clippy::large_enum_variant)]
enum Kept {
    /// The layer's input, its attention output (and log-sum-exp) and its hidden state after
    /// attention: each the size of the layer's input.
    Checkpoint {
        x: Tensor<2>,
        attended: Tensor<2>,
        lse: Tensor<1>,
        h: Tensor<2>,
    },
    All(Activations),
}

/// `(n1, q, k, v, attended, lse)`: the input norm, the queries, keys and values, the attention
/// output and its log-sum-exp.
type AttentionHalf = (
    Tensor<2>,
    Tensor<2>,
    Tensor<2>,
    Tensor<2>,
    Tensor<2>,
    Tensor<1>,
);

/// `(n2, gate, up, z)`: the post-attention norm, the gate and up projections, their SwiGLU.
type MlpHalf = (Tensor<2>, Tensor<2>, Tensor<2>, Tensor<2>);

/// The first half of a layer: attention, up to (not including) the output projection.
fn attention_half(layer: &DecoderLayer, x: Tensor<2>, context: &LayerContext<'_>) -> AttentionHalf {
    let n1 = layer.input_layernorm.forward(x);
    let (q, k, v) = layer.self_attn.qkv(n1.clone(), context);
    let (attended, lse) = layer
        .self_attn
        .attend(q.clone(), k.clone(), v.clone(), context);
    (n1, q, k, v, attended, lse)
}

/// The second half of a layer up to (not including) the down projection.
fn mlp_half(layer: &DecoderLayer, h: Tensor<2>, context: &LayerContext<'_>) -> MlpHalf {
    let n2 = layer.post_attention_layernorm.forward(h);
    let (gate, up) = layer.mlp.gate_up(n2.clone(), context.dropout);
    let z = {
        let _span = profile::span(Phase::Elementwise);
        ops::swiglu(gate.clone(), up.clone())
    };
    (n2, gate, up, z)
}

/// Run a layer forward, keeping what its backward pass needs; returns the output.
fn forward_keeping(
    layer: &DecoderLayer,
    x: Tensor<2>,
    context: &LayerContext<'_>,
    checkpointing: bool,
) -> (Tensor<2>, Kept) {
    let (n1, q, k, v, attended, lse) = attention_half(layer, x.clone(), context);
    let o = layer
        .self_attn
        .o_proj
        .forward_rows(attended.clone(), context.dropout);
    let h = x.clone() + o;
    let (n2, gate, up, z) = mlp_half(layer, h.clone(), context);
    let y = h.clone() + layer.mlp.down_proj.forward_rows(z.clone(), context.dropout);
    let attention = (n1, q, k, v, attended, lse);
    (
        y,
        forward_kept(x, attention, h, (n2, gate, up, z), checkpointing),
    )
}

/// What the forward pass keeps of a layer, from its input `x`, the outputs of
/// [`attention_half`], its hidden state after attention `h` and the outputs of [`mlp_half`].
fn forward_kept(
    x: Tensor<2>,
    (n1, q, k, v, attended, lse): AttentionHalf,
    h: Tensor<2>,
    (n2, gate, up, z): MlpHalf,
    checkpointing: bool,
) -> Kept {
    if checkpointing {
        Kept::Checkpoint {
            x,
            attended,
            lse,
            h,
        }
    } else {
        Kept::All(Activations {
            x,
            n1,
            q,
            k,
            v,
            attended,
            lse,
            h,
            n2,
            gate,
            up,
            z,
        })
    }
}

/// The activations of a checkpointed layer, recomputed from what was kept: the queries, keys
/// and values (the attention itself was kept), and the MLP up to the down projection.
fn recompute(
    layer: &DecoderLayer,
    kept: (Tensor<2>, Tensor<2>, Tensor<1>, Tensor<2>),
    context: &LayerContext<'_>,
) -> Activations {
    let _span = profile::span(Phase::Recompute);
    let (x, attended, lse, h) = kept;
    let n1 = layer.input_layernorm.forward(x.clone());
    let (q, k, v) = layer.self_attn.qkv(n1.clone(), context);
    let (n2, gate, up, z) = mlp_half(layer, h.clone(), context);
    let attention = (n1, q, k, v, attended, lse);
    match forward_kept(x, attention, h, (n2, gate, up, z), false) {
        Kept::All(activations) => activations,
        Kept::Checkpoint { .. } => unreachable!("asked for all activations"),
    }
}

fn add(a: Option<Tensor<2>>, b: Option<Tensor<2>>) -> Option<Tensor<2>> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a + b),
        (a, b) => a.or(b),
    }
}

/// The backward pass of one layer: the adapters' gradients (in [`Projection::ALL`] order,
/// `None` where a projection has no adapter) and, with `input_grad`, the gradient of its
/// input, given the gradient `dy` of its output.
fn layer_backward(
    layer: &DecoderLayer,
    a: Activations,
    dy: Tensor<2>,
    inputs: &AttentionInputs,
    neg_sin: &Tensor<2>,
    context: &LayerContext<'_>,
    input_grad: bool,
) -> Result<([Option<AdapterGrad>; 7], Option<Tensor<2>>)> {
    let drop = context.dropout;
    let mut grads: [Option<AdapterGrad>; 7] = Default::default();
    let (attn, mlp) = (&layer.self_attn, &layer.mlp);

    // The MLP half: y = h + down(swiglu(gate(n2), up(n2))), n2 = norm(h).
    let (g, dz) = mlp.down_proj.backward(a.z, dy.clone(), drop, true)?;
    grads[Projection::Down as usize] = g;
    let (d_gate, d_up) = {
        let _span = profile::span(Phase::Elementwise);
        ops::swiglu_backward(a.gate, a.up, dz.expect("asked for the input gradient"))
    };
    let (g, dn2_gate) = mlp.gate_proj.backward(a.n2.clone(), d_gate, drop, true)?;
    grads[Projection::Gate as usize] = g;
    let (g, dn2_up) = mlp.up_proj.backward(a.n2, d_up, drop, true)?;
    grads[Projection::Up as usize] = g;
    let dn2 = add(dn2_gate, dn2_up).expect("input gradients");
    let dh = dy + layer.post_attention_layernorm.backward(a.h, dn2);

    // The attention half: h = x + o(attention(rope(q(n1)), rope(k(n1)), v(n1))), n1 = norm(x).
    let (g, d_attended) = attn
        .o_proj
        .backward(a.attended.clone(), dh.clone(), drop, true)?;
    grads[Projection::O as usize] = g;
    let (dq, dk, dv) = {
        let _span = profile::span(Phase::Attention);
        ops::attention_backward(
            a.q,
            a.k,
            a.v,
            a.attended,
            a.lse,
            d_attended.expect("asked for the input gradient"),
            &inputs.q_ids,
            &inputs.k_ids,
            attn.shape(context),
        )
    };
    let (dq, dk) = {
        let _span = profile::span(Phase::Elementwise);
        (
            ops::rope(dq, &inputs.cos, neg_sin),
            ops::rope(dk, &inputs.cos, neg_sin),
        )
    };
    let mut dn1 = None;
    for (p, linear, d) in [
        (Projection::Q, &attn.q_proj, dq),
        (Projection::K, &attn.k_proj, dk),
        (Projection::V, &attn.v_proj, dv),
    ] {
        let (g, dx) = linear.backward(a.n1.clone(), d, drop, input_grad)?;
        grads[p as usize] = g;
        dn1 = add(dn1, dx);
    }
    let dx = match dn1 {
        Some(dn1) => Some(dh + layer.input_layernorm.backward(a.x, dn1)),
        None => None,
    };
    Ok((grads, dx))
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
    let inputs = model.batch_inputs(batch)?;
    let context = inputs.context(dropout);
    let (targets, tokens) = model.targets(batch)?;

    let mut x = model.embed(&batch.ids)?;
    let mut kept = Vec::with_capacity(model.layers.len());
    for layer in &model.layers {
        let (y, k) = forward_keeping(layer, x, &context, checkpointing);
        kept.push(k);
        x = y;
    }

    // The head: loss and the gradient of the last hidden state in one pass.
    let normed = model.norm.forward(x.clone());
    let (losses, d_normed) = {
        let _span = profile::span(Phase::HeadAndLoss);
        ops::cross_entropy_with_grad(normed, model.head_weight()?, &targets)
    };
    // `sum_dim`, not `sum`: the latter may add with atomics (in any order) on GPU backends.
    let loss_sum = f64::from(losses.sum_dim(0).into_scalar::<f32>());
    let mut dy = model.norm.backward(x, d_normed);

    let neg_sin = inputs.sin.clone().neg();
    let mut per_layer = Vec::with_capacity(model.layers.len());
    for (index, (layer, kept)) in model.layers.iter().zip(kept).enumerate().rev() {
        let activations = match kept {
            Kept::Checkpoint {
                x,
                attended,
                lse,
                h,
            } => recompute(layer, (x, attended, lse, h), &context),
            Kept::All(a) => a,
        };
        let (grads, dx) = layer_backward(
            layer,
            activations,
            dy,
            &inputs,
            &neg_sin,
            &context,
            index > 0,
        )?;
        per_layer.push(grads);
        dy = match dx {
            Some(dx) => dx,
            None => break,
        };
    }
    per_layer.reverse();
    let (paths, _): (Vec<String>, Vec<_>) = model.adapters().into_iter().unzip();
    let grads: Vec<AdapterGrad> = per_layer.into_iter().flatten().flatten().collect();
    if grads.len() != paths.len() {
        return Err(Error::invalid("an adapter received no gradient"));
    }
    Ok(LossAndGrads {
        loss_sum,
        tokens,
        grads: AdapterGrads { paths, grads },
    })
}
