use burn::tensor::Tensor;

use super::attention::{Attention, AttentionContext};
use super::kv_cache::KvCache;
use super::mlp::Mlp;
use super::rms_norm::RmsNorm;

/// Pre-norm decoder layer: `h = x + attn(norm(x)); out = h + mlp(norm(h))`.
#[derive(Clone, Debug)]
pub struct DecoderLayer {
    pub input_layernorm: RmsNorm,
    pub self_attn: Attention,
    pub post_attention_layernorm: RmsNorm,
    pub mlp: Mlp,
}

impl DecoderLayer {
    pub fn forward(
        &self,
        x: Tensor<3>,
        context: &AttentionContext<'_>,
        cache: Option<(&mut KvCache, usize)>,
    ) -> Tensor<3> {
        let attended =
            self.self_attn
                .forward(self.input_layernorm.forward(x.clone()), context, cache);
        let h = x + attended;
        let out = self
            .mlp
            .forward(self.post_attention_layernorm.forward(h.clone()));
        h + out
    }
}
