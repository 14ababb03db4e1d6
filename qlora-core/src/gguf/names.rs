//! Tensor names: llama.cpp's for a LLaMA model against Hugging Face's, one table read both
//! ways (import and export), with the q/k projections whose rows llama.cpp's converter
//! permutes.

/// Where llama.cpp's rotary permutation of rows applies: over the query heads, the key-value
/// heads, or not at all.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rotary {
    None,
    Query,
    Key,
}

/// Whole-model tensors: (GGUF name, Hugging Face name).
const MODEL_TENSORS: [(&str, &str); 3] = [
    ("token_embd.weight", "model.embed_tokens.weight"),
    ("output_norm.weight", "model.norm.weight"),
    ("output.weight", "lm_head.weight"),
];

/// A layer's modules: (GGUF module, Hugging Face module, rotary permutation).
const LAYER_MODULES: [(&str, &str, Rotary); 9] = [
    ("attn_norm", "input_layernorm", Rotary::None),
    ("ffn_norm", "post_attention_layernorm", Rotary::None),
    ("attn_q", "self_attn.q_proj", Rotary::Query),
    ("attn_k", "self_attn.k_proj", Rotary::Key),
    ("attn_v", "self_attn.v_proj", Rotary::None),
    ("attn_output", "self_attn.o_proj", Rotary::None),
    ("ffn_gate", "mlp.gate_proj", Rotary::None),
    ("ffn_up", "mlp.up_proj", Rotary::None),
    ("ffn_down", "mlp.down_proj", Rotary::None),
];

/// The Hugging Face name of a GGUF tensor (`weight` or `bias` of a layer's module, or a
/// whole-model tensor) and its permutation.
pub fn hf_name(name: &str) -> Option<(String, Rotary)> {
    if let Some((_, hf)) = MODEL_TENSORS.iter().find(|(gg, _)| *gg == name) {
        return Some((hf.to_string(), Rotary::None));
    }
    let rest = name.strip_prefix("blk.")?;
    let (layer, rest) = rest.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    let (module, suffix) = rest.split_once('.')?;
    if suffix != "weight" && suffix != "bias" {
        return None;
    }
    let (_, hf, rotary) = LAYER_MODULES.iter().find(|(gg, _, _)| *gg == module)?;
    Some((format!("model.layers.{layer}.{hf}.{suffix}"), *rotary))
}

/// The GGUF name of a Hugging Face tensor, its permutation, and its layer (`None` for the
/// whole-model tensors).
pub fn gguf_name(name: &str) -> Option<(String, Rotary, Option<usize>)> {
    if let Some((gg, _)) = MODEL_TENSORS.iter().find(|(_, hf)| *hf == name) {
        return Some((gg.to_string(), Rotary::None, None));
    }
    let rest = name.strip_prefix("model.layers.")?;
    let (layer, rest) = rest.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    let (module, suffix) = rest.rsplit_once('.')?;
    let (gg, _, rotary) = LAYER_MODULES.iter().find(|(_, hf, _)| *hf == module)?;
    Some((format!("blk.{layer}.{gg}.{suffix}"), *rotary, Some(layer)))
}
