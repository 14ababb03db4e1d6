//! Random LLaMA checkpoints of any shape, for tests and benchmarks that need a model bigger
//! than the fixtures (memory bounds, SmolLM2-sized speed runs) without downloading one.

use std::path::Path;

use qlora_core::config::ModelConfig;
use safetensors::Dtype;
use safetensors::tensor::TensorView;
use serde_json::json;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SyntheticModel {
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_layers: usize,
    pub num_heads: usize,
    pub num_kv_heads: usize,
    pub tie_word_embeddings: bool,
}

impl SyntheticModel {
    /// SmolLM2-135M's shape: 30 layers, hidden 576, 9 heads, 3 KV heads, vocab 49152, tied.
    pub const SMOLLM2_135M: SyntheticModel = SyntheticModel {
        vocab_size: 49152,
        hidden_size: 576,
        intermediate_size: 1536,
        num_layers: 30,
        num_heads: 9,
        num_kv_heads: 3,
        tie_word_embeddings: true,
    };

    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_heads
    }

    /// Parameters of one decoder layer's seven projections.
    pub fn layer_linear_params(&self) -> usize {
        let (h, i) = (self.hidden_size, self.intermediate_size);
        let kv = self.num_kv_heads * self.head_dim();
        2 * h * h + 2 * h * kv + 3 * h * i
    }

    fn tensors(&self) -> Vec<(String, Vec<usize>)> {
        let h = self.hidden_size;
        let mut shapes = vec![
            (
                "model.embed_tokens.weight".to_string(),
                vec![self.vocab_size, h],
            ),
            ("model.norm.weight".to_string(), vec![h]),
        ];
        if !self.tie_word_embeddings {
            shapes.push(("lm_head.weight".to_string(), vec![self.vocab_size, h]));
        }
        let config = ModelConfig::parse(&self.config_json().to_string(), Path::new("synthetic"))
            .expect("a valid config");
        for l in 0..self.num_layers {
            let p = format!("model.layers.{l}");
            for (name, shape) in config.linear_shapes(l) {
                shapes.push((name, shape.to_vec()));
            }
            for norm in ["input_layernorm", "post_attention_layernorm"] {
                shapes.push((format!("{p}.{norm}.weight"), vec![h]));
            }
        }
        shapes
    }

    /// The `config.json` of this shape.
    fn config_json(&self) -> serde_json::Value {
        json!({
            "architectures": ["LlamaForCausalLM"],
            "model_type": "llama",
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_layers,
            "num_attention_heads": self.num_heads,
            "num_key_value_heads": self.num_kv_heads,
            "head_dim": self.head_dim(),
            "rms_norm_eps": 1e-5,
            "max_position_embeddings": 8192,
            "rope_theta": 10000.0,
            "tie_word_embeddings": self.tie_word_embeddings,
            "torch_dtype": "bfloat16",
            "bos_token_id": 1,
            "eos_token_id": 2,
        })
    }

    /// Total parameters.
    pub fn parameters(&self) -> usize {
        self.tensors()
            .iter()
            .map(|(_, s)| s.iter().product::<usize>())
            .sum()
    }

    /// Write `config.json` and a bf16 `model.safetensors` with seeded random weights
    /// (norms 1, others small uniform) into `dir`.
    pub fn write(&self, dir: &Path, seed: u64) -> std::io::Result<()> {
        std::fs::create_dir_all(dir)?;
        let mut state = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
        let data: Vec<(String, Vec<usize>, Vec<u8>)> = self
            .tensors()
            .into_iter()
            .map(|(name, shape)| {
                let n: usize = shape.iter().product();
                let is_norm = name.ends_with("norm.weight");
                let scale = if name.contains("embed") { 0.5 } else { 0.06 };
                let bytes = (0..n)
                    .flat_map(|_| {
                        state ^= state << 13;
                        state ^= state >> 7;
                        state ^= state << 17;
                        let u = (state >> 40) as f32 / (1u64 << 24) as f32 - 0.5;
                        let v = if is_norm { 1.0 } else { u * scale };
                        half::bf16::from_f32(v).to_le_bytes()
                    })
                    .collect();
                (name, shape, bytes)
            })
            .collect();
        let views: Vec<(String, TensorView<'_>)> = data
            .iter()
            .map(|(n, s, b)| {
                (
                    n.clone(),
                    TensorView::new(Dtype::BF16, s.clone(), b).expect("sizes match"),
                )
            })
            .collect();
        let path = dir.join("model.safetensors");
        safetensors::serialize_to_file(views, None, &path).map_err(std::io::Error::other)?;
        let config = self.config_json();
        let config_path = dir.join("config.json");
        std::fs::write(
            &config_path,
            serde_json::to_string_pretty(&config).expect("json"),
        )
    }
}
