//! Loading a generated ~100M-parameter model in 4-bit never holds much more than the final
//! model: peak heap below 1.5x the loaded NF4 model plus one layer's dense weights.

use qlora_core::model::{Bits, CausalLm, LoadOptions};
use safetensors::Dtype;
use safetensors::tensor::TensorView;
use support::alloc::{current, peak_during};

const HIDDEN: usize = 768;
const INTERMEDIATE: usize = 2048;
const LAYERS: usize = 12;
const HEADS: usize = 12;
const KV_HEADS: usize = 4;
const VOCAB: usize = 16000;

/// Write a random bf16 LLaMA checkpoint of ~100M parameters into `dir`.
fn write_model(dir: &std::path::Path) -> usize {
    let head_dim = HIDDEN / HEADS;
    let mut shapes: Vec<(String, Vec<usize>)> = vec![
        ("model.embed_tokens.weight".into(), vec![VOCAB, HIDDEN]),
        ("lm_head.weight".into(), vec![VOCAB, HIDDEN]),
        ("model.norm.weight".into(), vec![HIDDEN]),
    ];
    for l in 0..LAYERS {
        let p = format!("model.layers.{l}");
        for (name, shape) in [
            ("self_attn.q_proj", vec![HEADS * head_dim, HIDDEN]),
            ("self_attn.k_proj", vec![KV_HEADS * head_dim, HIDDEN]),
            ("self_attn.v_proj", vec![KV_HEADS * head_dim, HIDDEN]),
            ("self_attn.o_proj", vec![HIDDEN, HEADS * head_dim]),
            ("mlp.gate_proj", vec![INTERMEDIATE, HIDDEN]),
            ("mlp.up_proj", vec![INTERMEDIATE, HIDDEN]),
            ("mlp.down_proj", vec![HIDDEN, INTERMEDIATE]),
            ("input_layernorm", vec![HIDDEN]),
            ("post_attention_layernorm", vec![HIDDEN]),
        ] {
            shapes.push((format!("{p}.{name}.weight"), shape));
        }
    }
    let mut state = 0x2545F4914F6CDD1Du64;
    let data: Vec<(String, Vec<usize>, Vec<u8>)> = shapes
        .into_iter()
        .map(|(name, shape)| {
            let n: usize = shape.iter().product();
            let bytes = (0..n)
                .flat_map(|_| {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    let v = ((state >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 0.05;
                    half::bf16::from_f32(v).to_le_bytes()
                })
                .collect();
            (name, shape, bytes)
        })
        .collect();
    let params = data
        .iter()
        .map(|(_, s, _)| s.iter().product::<usize>())
        .sum();
    let views: Vec<(String, TensorView<'_>)> = data
        .iter()
        .map(|(n, s, b)| {
            (
                n.clone(),
                TensorView::new(Dtype::BF16, s.clone(), b).unwrap(),
            )
        })
        .collect();
    safetensors::serialize_to_file(views, None, &dir.join("model.safetensors")).unwrap();
    let config = serde_json::json!({
        "architectures": ["LlamaForCausalLM"], "vocab_size": VOCAB, "hidden_size": HIDDEN,
        "intermediate_size": INTERMEDIATE, "num_hidden_layers": LAYERS,
        "num_attention_heads": HEADS, "num_key_value_heads": KV_HEADS, "rms_norm_eps": 1e-5,
        "max_position_embeddings": 2048, "tie_word_embeddings": false, "torch_dtype": "bfloat16"
    });
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
    params
}

#[test]
fn loading_in_4bit_stays_near_the_final_size() {
    let _alone = support::alloc::alone();
    let dir = tempfile::tempdir().unwrap();
    let params = write_model(dir.path());
    let layer_dense_bytes = 4
        * (2 * HIDDEN * HIDDEN
            + 2 * HIDDEN * KV_HEADS * (HIDDEN / HEADS)
            + 3 * HIDDEN * INTERMEDIATE);

    let baseline = current();
    let (model, peak) = peak_during(|| {
        CausalLm::load(
            dir.path(),
            &LoadOptions {
                bits: Bits::Four,
                ..LoadOptions::default()
            },
        )
        .unwrap()
    });
    let final_bytes = current() - baseline;
    let bound = final_bytes * 3 / 2 + layer_dense_bytes;
    let mib = |b: usize| b as f64 / (1 << 20) as f64;
    eprintln!(
        "{params} parameters: loaded model {:.1} MiB, peak while loading {:.1} MiB, \
         bound 1.5 x model + one layer dense ({:.1} MiB) = {:.1} MiB",
        mib(final_bytes),
        mib(peak),
        mib(layer_dense_bytes),
        mib(bound)
    );
    assert!((90_000_000..130_000_000).contains(&params));
    assert!(peak <= bound, "peak {peak} > bound {bound}");
    drop(model);
}
