//! A decoder layer in the training step: its forward pass keeping what the backward pass
//! reads, and the backward pass written out (no autodiff graph), giving the gradients of its
//! adapters and of its input.
//!
//! Only adapter matrices receive gradients; the base, embeddings and norms are frozen, so the
//! pass needs no weight gradient but the adapters', and the first layer needs no input
//! gradient. With gradient checkpointing the forward pass keeps, per layer, three tensors the
//! size of its input (the input, the attention output, the hidden state after attention) and
//! the attention's log-sum-exp; the backward pass recomputes only what its gradients read: the
//! queries, keys and values, and the gate and up projections (never the attention, nor the
//! output and down projections, whose results it does not use, unless the layer norms them:
//! Gemma's sandwich norms read their inputs). Without checkpointing it keeps
//! all of that instead. Dropout masks come from `(seed, step, adapter)`, so the recomputation
//! sees exactly the masks of the first pass.

use burn::tensor::Tensor;

use super::adapter::AdapterGrad;
use super::attention::{LayerContext, Projected};
use super::layer::{DecoderLayer, maybe_norm};
use crate::backend::ops;
use crate::config::{ModelConfig, Projection};
use crate::error::Result;
use crate::profile::{self, Phase};

/// The MLP half's activations up to its down projection: the norm, gate, up and their
/// activation; with a norm of the MLP's output, the down projection's output too.
struct MlpHalf {
    n2: Tensor<2>,
    gate: Tensor<2>,
    up: Tensor<2>,
    z: Tensor<2>,
    down: Option<Tensor<2>>,
}

/// What a layer's backward pass reads.
pub struct LayerActivations {
    x: Tensor<2>,
    n1: Tensor<2>,
    projected: Projected,
    attended: Tensor<2>,
    lse: Tensor<1>,
    /// The output projection's output, with a norm of it (Gemma).
    o: Option<Tensor<2>>,
    h: Tensor<2>,
    mlp: MlpHalf,
}

/// What the forward pass keeps of a layer (one per layer: the size of tensor handles does not
/// matter).
#[allow(clippy::large_enum_variant)]
pub enum Kept {
    /// The layer's input, its attention output (and log-sum-exp) and its hidden state after
    /// attention: each the size of the layer's input.
    Checkpoint {
        /// The layer's input.
        x: Tensor<2>,
        /// The attention's output.
        attended: Tensor<2>,
        /// The attention's log-sum-exp.
        lse: Tensor<1>,
        /// The hidden state after attention.
        h: Tensor<2>,
    },
    /// Every activation.
    All(LayerActivations),
}

/// The adapters' gradients of one layer: `(projection, (dA, dB))` for each projection with an
/// adapter, in [`Projection::ALL`] order.
pub type LayerGrads = Vec<(Projection, AdapterGrad)>;

/// Values a token keeps of every layer for the backward pass (the planner's figures).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeptValues {
    /// With checkpointing, in the compute dtype: the input, attention output and state after
    /// attention.
    pub checkpoint: usize,
    /// With checkpointing, f32: the log-sum-exp of every query head.
    pub checkpoint_f32: usize,
    /// Without checkpointing, in the compute dtype: every activation of
    /// [`LayerActivations`] but the input (the previous layer's output, counted there).
    pub all: usize,
}

impl LayerActivations {
    /// The values a token keeps of a layer of `config`, by the members above.
    pub fn kept_values(config: &ModelConfig) -> KeptValues {
        let (h, i) = (config.hidden_size, config.intermediate_size);
        let q = config.num_attention_heads * config.head_dim;
        let kv = config.num_key_value_heads * config.head_dim;
        // n1, q, k, v, attended, h, n2, gate, up, z; and q, k before their norms.
        let mut all = h + q + 2 * kv + q + h + h + 3 * i;
        if config.spec.qk_norm {
            all += q + kv;
        }
        if config.spec.sandwich_norms {
            // The output and down projections' outputs, before their norms.
            all += h + h;
        }
        KeptValues {
            checkpoint: h + q + h,
            checkpoint_f32: config.num_attention_heads,
            all,
        }
    }
}

impl Kept {
    /// The layer's activations: kept, or recomputed from its checkpoint.
    pub fn activations(self, layer: &DecoderLayer, context: &LayerContext<'_>) -> LayerActivations {
        match self {
            Kept::Checkpoint {
                x,
                attended,
                lse,
                h,
            } => {
                let _span = profile::span(Phase::Recompute);
                layer.recompute(x, attended, lse, h, context)
            }
            Kept::All(a) => a,
        }
    }
}

impl DecoderLayer {
    /// The MLP half of the layer on its hidden state after attention, up to (not including)
    /// the down projection, or including it when the layer norms its output.
    fn mlp_half(&self, h: Tensor<2>, context: &LayerContext<'_>) -> MlpHalf {
        let n2 = self.mlp_norm.forward(h);
        let (gate, up) = self.mlp.gate_up(n2.clone(), context.dropout);
        let z = self.mlp.activate(gate.clone(), up.clone());
        let down = self
            .mlp_out_norm
            .as_ref()
            .map(|_| self.mlp.down_proj.forward_rows(z.clone(), context.dropout));
        MlpHalf {
            n2,
            gate,
            up,
            z,
            down,
        }
    }

    /// The output projection of `attended`, when the layer norms it (what its backward pass
    /// reads).
    fn attn_out(&self, attended: &Tensor<2>, context: &LayerContext<'_>) -> Option<Tensor<2>> {
        self.attn_out_norm.as_ref().map(|_| {
            self.self_attn
                .o_proj
                .forward_rows(attended.clone(), context.dropout)
        })
    }

    /// Run the layer forward, keeping what its backward pass needs (with `checkpointing`, only
    /// what it cannot cheaply recompute); returns the output.
    pub fn forward_keeping(
        &self,
        x: Tensor<2>,
        context: &LayerContext<'_>,
        checkpointing: bool,
    ) -> (Tensor<2>, Kept) {
        let attn = &self.self_attn;
        let n1 = self.input_layernorm.forward(x.clone());
        let projected = attn.project(n1.clone(), context);
        let (attended, lse) = attn.attend(
            projected.q.clone(),
            projected.k.clone(),
            projected.v.clone(),
            context,
        );
        let o = attn.o_proj.forward_rows(attended.clone(), context.dropout);
        let h = x.clone() + maybe_norm(&self.attn_out_norm, o.clone());
        let o = self.attn_out_norm.is_some().then_some(o);
        let mlp = self.mlp_half(h.clone(), context);
        let down = match &mlp.down {
            Some(down) => down.clone(),
            None => self
                .mlp
                .down_proj
                .forward_rows(mlp.z.clone(), context.dropout),
        };
        let y = h.clone() + maybe_norm(&self.mlp_out_norm, down);
        let kept = if checkpointing {
            Kept::Checkpoint {
                x,
                attended,
                lse,
                h,
            }
        } else {
            Kept::All(LayerActivations {
                x,
                n1,
                projected,
                attended,
                lse,
                o,
                h,
                mlp,
            })
        };
        (y, kept)
    }

    /// The activations of a checkpointed layer, recomputed from what was kept: the queries,
    /// keys and values (the attention itself was kept), and the MLP up to the down projection
    /// (with sandwich norms, the output and down projections too).
    fn recompute(
        &self,
        x: Tensor<2>,
        attended: Tensor<2>,
        lse: Tensor<1>,
        h: Tensor<2>,
        context: &LayerContext<'_>,
    ) -> LayerActivations {
        let n1 = self.input_layernorm.forward(x.clone());
        let projected: Projected = self.self_attn.project(n1.clone(), context);
        let o = self.attn_out(&attended, context);
        let mlp = self.mlp_half(h.clone(), context);
        LayerActivations {
            x,
            n1,
            projected,
            attended,
            lse,
            o,
            h,
            mlp,
        }
    }

    /// The backward pass of the layer: its adapters' gradients and, with `input_grad`, the
    /// gradient of its input, given its activations and the gradient `dy` of its output.
    pub fn backward(
        &self,
        a: LayerActivations,
        dy: Tensor<2>,
        context: &LayerContext<'_>,
        input_grad: bool,
    ) -> Result<(LayerGrads, Option<Tensor<2>>)> {
        let drop = context.dropout;
        let mut grads = LayerGrads::new();
        let mut keep = |p: Projection, g: Option<AdapterGrad>| {
            if let Some(g) = g {
                grads.push((p, g));
            }
        };
        let (attn, mlp) = (&self.self_attn, &self.mlp);
        let MlpHalf {
            n2,
            gate,
            up,
            z,
            down,
        } = a.mlp;

        // The MLP half: y = h + [norm](down(act(gate(n2), up(n2)))), n2 = norm(h).
        let d_down = match (&self.mlp_out_norm, down) {
            (Some(norm), Some(down)) => norm.backward(down, dy.clone()),
            _ => dy.clone(),
        };
        let (g, dz) = mlp.down_proj.backward(z, d_down, drop, true)?;
        keep(Projection::Down, g);
        let (d_gate, d_up) =
            mlp.activate_backward(gate, up, dz.expect("asked for the input gradient"));
        let (g, dn2) = mlp.gate_up.backward(n2, vec![d_gate, d_up], drop, true)?;
        for (p, g) in g {
            keep(p, Some(g));
        }
        let dn2 = dn2.expect("input gradients");
        let dh = dy + self.mlp_norm.backward(a.h, dn2);

        // The attention half: h = x + [norm](o(attention(rope(qn(q(n1))), rope(kn(k(n1))),
        // v(n1)))), n1 = norm(x).
        let d_o = match (&self.attn_out_norm, a.o) {
            (Some(norm), Some(o)) => norm.backward(o, dh.clone()),
            _ => dh.clone(),
        };
        let (g, d_attended) = attn.o_proj.backward(a.attended.clone(), d_o, drop, true)?;
        keep(Projection::O, g);
        let Projected {
            q,
            k,
            v,
            q_linear,
            k_linear,
        } = a.projected;
        let (dq, dk, dv) = {
            let _span = profile::span(Phase::Attention);
            ops::attention_backward(
                q,
                k,
                v,
                a.attended,
                a.lse,
                d_attended.expect("asked for the input gradient"),
                context.q_ids,
                context.k_ids,
                attn.shape(context),
            )
        };
        let (dq, dk) = {
            let _span = profile::span(Phase::Elementwise);
            let rope = context.rope;
            (
                rope.rotate(dq, attn.head_dim, true),
                rope.rotate(dk, attn.head_dim, true),
            )
        };
        // Through the q/k norms, to the projections' outputs.
        let dq = match (&attn.q_norm, q_linear) {
            (Some(norm), Some(x)) => norm.backward_heads(x, dq),
            _ => dq,
        };
        let dk = match (&attn.k_norm, k_linear) {
            (Some(norm), Some(x)) => norm.backward_heads(x, dk),
            _ => dk,
        };
        let (g, dn1) = attn
            .qkv
            .backward(a.n1.clone(), vec![dq, dk, dv], drop, input_grad)?;
        for (p, g) in g {
            keep(p, Some(g));
        }
        grads.sort_by_key(|(p, _)| *p);
        let dx = dn1.map(|dn1| dh + self.input_layernorm.backward(a.x, dn1));
        Ok((grads, dx))
    }
}
