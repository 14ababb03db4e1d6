//! The tensors of a decoder model, as gguf-py's `MODEL_TENSOR` table: each with its Hugging
//! Face and llama.cpp (GGUF) names and whether llama.cpp's converter permutes its rows for the
//! rotary embedding. Loading, merging, import and export read names from here only.

use super::Architecture;

/// Where llama.cpp's rotary permutation of rows applies: over the query heads, the key-value
/// heads, or not at all.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rotary {
    /// Rows as they are.
    None,
    /// Rows permuted within every query head.
    Query,
    /// Rows permuted within every key/value head.
    Key,
}

impl Rotary {
    /// The heads the rows are permuted within, of a model with `heads` query heads and
    /// `kv_heads` key/value heads (`None`: rows as they are).
    pub fn heads(self, heads: usize, kv_heads: usize) -> Option<usize> {
        match self {
            Rotary::None => None,
            Rotary::Query => Some(heads),
            Rotary::Key => Some(kv_heads),
        }
    }
}

/// A tensor of a decoder model: the three whole-model tensors, then a layer's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ModelTensor {
    /// The token embedding.
    TokenEmbd,
    /// The norm after the last layer.
    OutputNorm,
    /// The output head (absent when tied to the embedding).
    Output,
    /// The norm before the attention.
    AttnNorm,
    /// The query projection.
    AttnQ,
    /// The key projection.
    AttnK,
    /// The value projection.
    AttnV,
    /// The query, key and value projections in one (Phi-3).
    AttnQkv,
    /// The attention's output projection.
    AttnOutput,
    /// RMSNorm of every query head (Qwen 3, Gemma 3).
    AttnQNorm,
    /// RMSNorm of every key head.
    AttnKNorm,
    /// The norm of the attention's output, before the residual sum (Gemma).
    AttnPostNorm,
    /// The norm before the MLP.
    FfnNorm,
    /// The norm before the MLP, in a family that also norms the MLP's output (Gemma; the
    /// same GGUF tensor as [`ModelTensor::FfnNorm`], another Hugging Face name).
    FfnPreNorm,
    /// The norm of the MLP's output, before the residual sum (Gemma).
    FfnPostNorm,
    /// The MLP's gate projection.
    FfnGate,
    /// The MLP's up projection.
    FfnUp,
    /// The gate and up projections in one (Phi-3; llama.cpp names it `ffn_up`).
    FfnGateUp,
    /// The MLP's down projection.
    FfnDown,
}

/// (tensor, Hugging Face name or module within a layer, GGUF name or module within a block,
/// rotary permutation).
type Row = (ModelTensor, &'static str, &'static str, Rotary);

/// Every tensor's row.
const TABLE: [Row; 19] = [
    (
        ModelTensor::TokenEmbd,
        "model.embed_tokens",
        "token_embd",
        Rotary::None,
    ),
    (
        ModelTensor::OutputNorm,
        "model.norm",
        "output_norm",
        Rotary::None,
    ),
    (ModelTensor::Output, "lm_head", "output", Rotary::None),
    (
        ModelTensor::AttnNorm,
        "input_layernorm",
        "attn_norm",
        Rotary::None,
    ),
    (
        ModelTensor::AttnQ,
        "self_attn.q_proj",
        "attn_q",
        Rotary::Query,
    ),
    (
        ModelTensor::AttnK,
        "self_attn.k_proj",
        "attn_k",
        Rotary::Key,
    ),
    (
        ModelTensor::AttnV,
        "self_attn.v_proj",
        "attn_v",
        Rotary::None,
    ),
    (
        ModelTensor::AttnQkv,
        "self_attn.qkv_proj",
        "attn_qkv",
        Rotary::None,
    ),
    (
        ModelTensor::AttnOutput,
        "self_attn.o_proj",
        "attn_output",
        Rotary::None,
    ),
    (
        ModelTensor::AttnQNorm,
        "self_attn.q_norm",
        "attn_q_norm",
        Rotary::None,
    ),
    (
        ModelTensor::AttnKNorm,
        "self_attn.k_norm",
        "attn_k_norm",
        Rotary::None,
    ),
    (
        ModelTensor::FfnNorm,
        "post_attention_layernorm",
        "ffn_norm",
        Rotary::None,
    ),
    (
        ModelTensor::AttnPostNorm,
        "post_attention_layernorm",
        "post_attention_norm",
        Rotary::None,
    ),
    (
        ModelTensor::FfnPreNorm,
        "pre_feedforward_layernorm",
        "ffn_norm",
        Rotary::None,
    ),
    (
        ModelTensor::FfnPostNorm,
        "post_feedforward_layernorm",
        "post_ffw_norm",
        Rotary::None,
    ),
    (
        ModelTensor::FfnGate,
        "mlp.gate_proj",
        "ffn_gate",
        Rotary::None,
    ),
    (ModelTensor::FfnUp, "mlp.up_proj", "ffn_up", Rotary::None),
    (
        ModelTensor::FfnGateUp,
        "mlp.gate_up_proj",
        "ffn_up",
        Rotary::None,
    ),
    (
        ModelTensor::FfnDown,
        "mlp.down_proj",
        "ffn_down",
        Rotary::None,
    ),
];

/// The layers' prefix in Hugging Face names.
const HF_LAYERS: &str = "model.layers.";
/// The layers' prefix in GGUF names.
const GGUF_LAYERS: &str = "blk.";

impl ModelTensor {
    fn row(self) -> &'static Row {
        TABLE
            .iter()
            .find(|row| row.0 == self)
            .expect("every tensor is in the table")
    }

    /// Whether the tensor is one of every layer's.
    pub fn in_layer(self) -> bool {
        !matches!(
            self,
            ModelTensor::TokenEmbd | ModelTensor::OutputNorm | ModelTensor::Output
        )
    }

    /// The Hugging Face module: `model.embed_tokens`, or within a layer `self_attn.q_proj`.
    pub fn hf_module(self) -> &'static str {
        self.row().1
    }

    /// llama.cpp's rotary permutation of the tensor's rows.
    pub fn rotary(self) -> Rotary {
        self.row().3
    }

    /// The Hugging Face module path of the tensor in `layer` (ignored for whole-model
    /// tensors): `model.layers.3.self_attn.q_proj`.
    pub fn hf_path(self, layer: usize) -> String {
        if self.in_layer() {
            format!("{HF_LAYERS}{layer}.{}", self.hf_module())
        } else {
            self.hf_module().to_string()
        }
    }

    /// The Hugging Face name of the tensor's `weight` (or `bias`) in `layer`.
    pub fn hf_name(self, layer: usize, suffix: &str) -> String {
        format!("{}.{suffix}", self.hf_path(layer))
    }

    /// The GGUF name of the tensor's `weight` (or `bias`) in `layer`: `blk.3.attn_q.weight`.
    pub fn gguf_name(self, layer: usize, suffix: &str) -> String {
        if self.in_layer() {
            format!("{GGUF_LAYERS}{layer}.{}.{suffix}", self.row().2)
        } else {
            format!("{}.{suffix}", self.row().2)
        }
    }

    /// Whether the tensor is a norm's weight (Gemma's converter stores those as `1 + w`).
    pub fn is_norm(self) -> bool {
        matches!(
            self,
            ModelTensor::OutputNorm
                | ModelTensor::AttnNorm
                | ModelTensor::AttnQNorm
                | ModelTensor::AttnKNorm
                | ModelTensor::AttnPostNorm
                | ModelTensor::FfnNorm
                | ModelTensor::FfnPreNorm
                | ModelTensor::FfnPostNorm
        )
    }

    /// The tensor, layer and suffix (`weight`, `bias`) of a Hugging Face name, among the
    /// tensors of `arch`.
    pub fn from_hf(name: &str, arch: Architecture) -> Option<(ModelTensor, Option<usize>, &str)> {
        Self::parse(name, arch, HF_LAYERS, |row| row.1)
    }

    /// The tensor, layer and suffix of a GGUF name, among the tensors of `arch`.
    pub fn from_gguf(name: &str, arch: Architecture) -> Option<(ModelTensor, Option<usize>, &str)> {
        Self::parse(name, arch, GGUF_LAYERS, |row| row.2)
    }

    fn parse<'a>(
        name: &'a str,
        arch: Architecture,
        layers: &str,
        column: impl Fn(&Row) -> &'static str,
    ) -> Option<(ModelTensor, Option<usize>, &'a str)> {
        let (module, suffix) = name.rsplit_once('.')?;
        if suffix != "weight" && suffix != "bias" {
            return None;
        }
        let (layer, module) = match module.strip_prefix(layers) {
            Some(rest) => {
                let (layer, module) = rest.split_once('.')?;
                (Some(layer.parse().ok()?), module)
            }
            None => (None, module),
        };
        let row = TABLE.iter().find(|row| {
            column(row) == module
                && row.0.in_layer() == layer.is_some()
                && (!row.0.in_layer() || arch.layer_tensors().contains(&row.0))
        })?;
        Some((row.0, layer, suffix))
    }
}

/// How a tensor of `arch` crosses between a Hugging Face checkpoint and a GGUF file.
#[derive(Debug, Clone, PartialEq)]
pub struct Crossing {
    /// The name on the other side.
    pub name: String,
    /// The rotary permutation of its rows.
    pub rotary: Rotary,
    /// Its layer (`None` for the whole-model tensors).
    pub layer: Option<usize>,
    /// What the GGUF value adds to the Hugging Face one (Gemma's norms: 1).
    pub shift: Option<f32>,
}

impl Crossing {
    fn new(arch: Architecture, tensor: ModelTensor, name: String, layer: Option<usize>) -> Self {
        Crossing {
            name,
            rotary: arch.gguf_rotary(tensor.rotary()),
            layer,
            shift: arch.gguf_norm_shift().filter(|_| tensor.is_norm()),
        }
    }
}

/// The GGUF side of the Hugging Face tensor `hf` of `arch`.
pub fn gguf_name(hf: &str, arch: Architecture) -> Option<Crossing> {
    let (tensor, layer, suffix) = ModelTensor::from_hf(hf, arch)?;
    let name = tensor.gguf_name(layer.unwrap_or(0), suffix);
    Some(Crossing::new(arch, tensor, name, layer))
}

/// The Hugging Face side of the GGUF tensor `gguf` of `arch`.
pub fn hf_name(gguf: &str, arch: Architecture) -> Option<Crossing> {
    let (tensor, layer, suffix) = ModelTensor::from_gguf(gguf, arch)?;
    let name = tensor.hf_name(layer.unwrap_or(0), suffix);
    Some(Crossing::new(arch, tensor, name, layer))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_read_both_ways() {
        let (llama, qwen3, gemma3) = (
            Architecture::Llama,
            Architecture::Qwen3,
            Architecture::Gemma3,
        );
        for (arch, hf, gg) in [
            (llama, "model.embed_tokens.weight", "token_embd.weight"),
            (llama, "lm_head.weight", "output.weight"),
            (
                llama,
                "model.layers.3.self_attn.q_proj.weight",
                "blk.3.attn_q.weight",
            ),
            (
                qwen3,
                "model.layers.0.self_attn.k_norm.weight",
                "blk.0.attn_k_norm.weight",
            ),
            (
                llama,
                "model.layers.12.mlp.down_proj.bias",
                "blk.12.ffn_down.bias",
            ),
            (
                llama,
                "model.layers.1.post_attention_layernorm.weight",
                "blk.1.ffn_norm.weight",
            ),
            (
                gemma3,
                "model.layers.1.post_attention_layernorm.weight",
                "blk.1.post_attention_norm.weight",
            ),
            (
                gemma3,
                "model.layers.1.pre_feedforward_layernorm.weight",
                "blk.1.ffn_norm.weight",
            ),
            (
                gemma3,
                "model.layers.1.post_feedforward_layernorm.weight",
                "blk.1.post_ffw_norm.weight",
            ),
        ] {
            assert_eq!(gguf_name(hf, arch).unwrap().name, gg);
            assert_eq!(hf_name(gg, arch).unwrap().name, hf);
        }
        let k = hf_name("blk.1.attn_k.weight", llama).unwrap();
        assert_eq!((k.rotary, k.shift), (Rotary::Key, None));
        // Gemma's norms (all of them) cross with a shift of 1, its projections without one;
        // llama.cpp rotates halves for it, so no rows move.
        let norm = hf_name("blk.0.attn_q_norm.weight", gemma3).unwrap();
        assert_eq!(norm.shift, Some(1.0));
        assert_eq!(
            gguf_name("model.norm.weight", gemma3).unwrap().shift,
            Some(1.0)
        );
        let q = hf_name("blk.0.attn_q.weight", gemma3).unwrap();
        assert_eq!((q.rotary, q.shift), (Rotary::None, None));
        // A tensor its family has not is no tensor of it.
        assert!(hf_name("blk.0.attn_q_norm.weight", llama).is_none());
        assert!(hf_name("blk.0.post_ffw_norm.weight", qwen3).is_none());
        for bad in [
            "model.layers.x.mlp.up_proj.weight",
            "blk.0.attn_q.scale",
            "token_embd",
        ] {
            assert!(
                gguf_name(bad, llama).is_none() && hf_name(bad, llama).is_none(),
                "{bad}"
            );
        }
        // A layer's module outside a layer, or a whole-model tensor inside one, is no tensor.
        assert!(gguf_name("self_attn.q_proj.weight", llama).is_none());
        assert!(hf_name("blk.0.token_embd.weight", llama).is_none());
    }
}
