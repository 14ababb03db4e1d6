//! Reading the facts files transformers made of real GGUF models
//! (`tests/fixtures/smollm2_gguf_facts.json`, `tests/reference/*_gguf_facts.json`).

use qlora_core::model::CausalLm;
use serde_json::Value;

/// The ids of a JSON array of numbers.
pub fn ids(value: &Value) -> Vec<u32> {
    value
        .as_array()
        .expect("an array of ids")
        .iter()
        .map(|v| v.as_u64().expect("an id") as u32)
        .collect()
}

/// The model's five largest logits at the last position of `prompt` against `top5`
/// (`{"ids": [...], "values": [...]}`): asserts the same ids in the same order and returns the
/// largest difference of their values.
pub fn top5_logits_diff(model: &CausalLm, prompt: &[u32], top5: &Value) -> f32 {
    let logits = model
        .forward(&[prompt.to_vec()], None, None)
        .expect("forward");
    let [_, seq, vocab] = logits.dims();
    let last: Vec<f32> = logits
        .narrow(1, seq - 1, 1)
        .reshape([vocab])
        .into_data()
        .try_into_vec()
        .expect("f32 logits");
    let mut order: Vec<usize> = (0..vocab).collect();
    order.sort_by(|&a, &b| last[b].total_cmp(&last[a]));
    let got: Vec<u32> = order[..5].iter().map(|&i| i as u32).collect();
    assert_eq!(got, ids(&top5["ids"]), "top-5 ids");
    order[..5]
        .iter()
        .zip(top5["values"].as_array().expect("values"))
        .map(|(&i, e)| (last[i] - e.as_f64().expect("a value") as f32).abs())
        .fold(0f32, f32::max)
}
