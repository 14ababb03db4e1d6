//! The tensors of a decoder model, as gguf-py's `MODEL_TENSOR` table: each with its Hugging
//! Face and llama.cpp (GGUF) names and whether llama.cpp's converter permutes its rows for the
//! rotary embedding. Loading, merging, import and export read names from here only.

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
    /// The attention's output projection.
    AttnOutput,
    /// RMSNorm of every query head (Qwen 3, Gemma 3).
    AttnQNorm,
    /// RMSNorm of every key head.
    AttnKNorm,
    /// The norm before the MLP.
    FfnNorm,
    /// The MLP's gate projection.
    FfnGate,
    /// The MLP's up projection.
    FfnUp,
    /// The MLP's down projection.
    FfnDown,
}

/// (tensor, Hugging Face name or module within a layer, GGUF name or module within a block,
/// rotary permutation).
type Row = (ModelTensor, &'static str, &'static str, Rotary);

/// Every tensor's row.
const TABLE: [Row; 14] = [
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
        ModelTensor::FfnGate,
        "mlp.gate_proj",
        "ffn_gate",
        Rotary::None,
    ),
    (ModelTensor::FfnUp, "mlp.up_proj", "ffn_up", Rotary::None),
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

    /// The tensor, layer and suffix (`weight`, `bias`) of a Hugging Face name.
    pub fn from_hf(name: &str) -> Option<(ModelTensor, Option<usize>, &str)> {
        Self::parse(name, HF_LAYERS, |row| row.1)
    }

    /// The tensor, layer and suffix of a GGUF name.
    pub fn from_gguf(name: &str) -> Option<(ModelTensor, Option<usize>, &str)> {
        Self::parse(name, GGUF_LAYERS, |row| row.2)
    }

    fn parse<'a>(
        name: &'a str,
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
        let row = TABLE
            .iter()
            .find(|row| column(row) == module && row.0.in_layer() == layer.is_some())?;
        Some((row.0, layer, suffix))
    }
}

/// The GGUF name of a Hugging Face tensor, its permutation, and its layer (`None` for the
/// whole-model tensors).
pub fn gguf_name(hf: &str) -> Option<(String, Rotary, Option<usize>)> {
    let (tensor, layer, suffix) = ModelTensor::from_hf(hf)?;
    Some((
        tensor.gguf_name(layer.unwrap_or(0), suffix),
        tensor.rotary(),
        layer,
    ))
}

/// The Hugging Face name of a GGUF tensor and its permutation.
pub fn hf_name(gguf: &str) -> Option<(String, Rotary)> {
    let (tensor, layer, suffix) = ModelTensor::from_gguf(gguf)?;
    Some((tensor.hf_name(layer.unwrap_or(0), suffix), tensor.rotary()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_read_both_ways() {
        for (hf, gg) in [
            ("model.embed_tokens.weight", "token_embd.weight"),
            ("lm_head.weight", "output.weight"),
            (
                "model.layers.3.self_attn.q_proj.weight",
                "blk.3.attn_q.weight",
            ),
            (
                "model.layers.0.self_attn.k_norm.weight",
                "blk.0.attn_k_norm.weight",
            ),
            ("model.layers.12.mlp.down_proj.bias", "blk.12.ffn_down.bias"),
        ] {
            assert_eq!(gguf_name(hf).unwrap().0, gg);
            assert_eq!(hf_name(gg).unwrap().0, hf);
        }
        assert_eq!(hf_name("blk.1.attn_k.weight").unwrap().1, Rotary::Key);
        for bad in [
            "model.layers.x.mlp.up_proj.weight",
            "blk.0.attn_q.scale",
            "token_embd",
        ] {
            assert!(gguf_name(bad).is_none() && hf_name(bad).is_none(), "{bad}");
        }
        // A layer's module outside a layer, or a whole-model tensor inside one, is no tensor.
        assert!(gguf_name("self_attn.q_proj.weight").is_none());
        assert!(hf_name("blk.0.token_embd.weight").is_none());
    }
}
