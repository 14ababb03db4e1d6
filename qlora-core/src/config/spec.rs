//! What a decoder layer computes, as switches: the ways the model families this toolkit trains
//! differ from LLaMA's layer. One decoder ([`crate::model`]) reads them in its forward pass,
//! its activation-keeping forward pass and its backward pass; the planner reads them too. An
//! architecture ([`super::Architecture`]) derives them from `config.json`.

use super::Projection;

/// How RMSNorm applies its weight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NormForm {
    /// `x̂ · w` (LLaMA, Qwen, Mistral, Phi).
    Weight,
    /// `x̂ · (1 + w)`, in f32 (Gemma).
    OnePlusWeight,
}

/// The gated activation of the MLP: `act(gate) · up`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// SiLU (SwiGLU): LLaMA, Qwen, Mistral, Phi.
    Silu,
    /// GELU with the tanh approximation (GeGLU): Gemma.
    GeluTanh,
}

/// Which rotary table a layer uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RopeKind {
    /// The model's `rope_theta` with its scaling.
    Global,
    /// The local layers' base ([`DecoderSpec::local_rope_theta`]), unscaled (Gemma 3).
    Local,
}

/// What differs from layer to layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LayerSpec {
    /// Sliding-window attention: keys a query sees at most, itself included.
    pub window: Option<usize>,
    /// The rotary table.
    pub rope: RopeKind,
}

/// The structure of a decoder, beyond its sizes.
#[derive(Debug, Clone, PartialEq)]
pub struct DecoderSpec {
    /// Projections with a bias, in [`Projection::ALL`] order.
    pub bias: [bool; 9],
    /// RMSNorm of every query and key head (weights `[head_dim]`) before the rotary embedding
    /// (Qwen 3, Gemma 3).
    pub qk_norm: bool,
    /// How every RMSNorm applies its weight.
    pub norm: NormForm,
    /// Norms after the attention and after the MLP too, before each residual sum (Gemma's four
    /// norms a layer).
    pub sandwich_norms: bool,
    /// The MLP's gated activation.
    pub activation: Activation,
    /// The embeddings are multiplied by this (Gemma: `sqrt(hidden_size)`).
    pub embedding_scale: Option<f64>,
    /// Multiplies attention scores (`1 / sqrt(head_dim)`, or Gemma's `query_pre_attn_scalar`).
    pub attention_scale: f64,
    /// Every layer's window and rotary table.
    pub layers: Vec<LayerSpec>,
    /// The RoPE base of [`RopeKind::Local`] layers.
    pub local_rope_theta: Option<f64>,
    /// Soft-capping of attention scores (Gemma 2).
    pub attention_softcap: Option<f64>,
    /// Soft-capping of the final logits (Gemma 2).
    pub final_logit_softcap: Option<f64>,
    /// The output head is the embedding.
    pub tied_head: bool,
    /// One `qkv_proj` instead of three projections (Phi-3).
    pub fused_qkv: bool,
    /// One `gate_up_proj` instead of two (Phi-3).
    pub fused_gate_up: bool,
}

impl DecoderSpec {
    /// LLaMA's layer: pre-norm, SwiGLU, no biases, no q/k norms, full attention, `layers`
    /// layers, scores scaled by `1 / sqrt(head_dim)`.
    pub fn llama(layers: usize, head_dim: usize) -> Self {
        DecoderSpec {
            bias: [false; 9],
            qk_norm: false,
            norm: NormForm::Weight,
            sandwich_norms: false,
            activation: Activation::Silu,
            embedding_scale: None,
            attention_scale: (head_dim as f64).powf(-0.5),
            layers: vec![
                LayerSpec {
                    window: None,
                    rope: RopeKind::Global,
                };
                layers
            ],
            local_rope_theta: None,
            attention_softcap: None,
            final_logit_softcap: None,
            tied_head: false,
            fused_qkv: false,
            fused_gate_up: false,
        }
    }

    /// Whether projection `p` has a bias.
    pub fn has_bias(&self, p: Projection) -> bool {
        self.bias[p as usize]
    }

    /// What the decoder cannot compute yet, if the spec asks for it (the architectures that
    /// need these switches come with them).
    pub fn unsupported(&self) -> Option<&'static str> {
        self.final_logit_softcap
            .is_some()
            .then_some("soft-capped final logits")
    }
}
