//! Generation with the KV cache produces exactly what recomputing the whole sequence does.

use qlora_core::generate::{SamplingConfig, StopReason, generate, greedy_without_cache};
use qlora_core::model::{Bits, CausalLm, LoadOptions};
use qlora_core::text::Tokenizer;
use support::fixture;

fn check_cache_equivalence(bits: Bits) {
    let options = LoadOptions {
        bits,
        ..LoadOptions::default()
    };
    let model = CausalLm::load(fixture("tiny-llama"), &options).unwrap();
    let tokenizer = Tokenizer::load(fixture("tiny-llama")).unwrap();
    let prompt = tokenizer.encode("hello world, the model", true).unwrap();
    let config = SamplingConfig {
        max_new_tokens: 32,
        ..SamplingConfig::default()
    };
    let mut streamed = String::new();
    let cached = generate(&model, &tokenizer, &prompt, &config, |t| {
        streamed.push_str(t)
    })
    .unwrap();
    let recomputed = greedy_without_cache(&model, &prompt, 32).unwrap();
    assert_eq!(cached.ids, recomputed[..cached.ids.len()], "{bits:?}");
    match cached.stop {
        StopReason::MaxTokens => assert_eq!(cached.ids.len(), 32),
        StopReason::EndOfSequence => {
            assert!(tokenizer.stop_ids().contains(&recomputed[cached.ids.len()]))
        }
        StopReason::StopString => unreachable!("no stop strings"),
    }
    assert_eq!(streamed, cached.text, "streamed text is the whole text");
    eprintln!(
        "{bits:?}: {} tokens, {:?}: {:?}",
        cached.ids.len(),
        cached.stop,
        cached.text
    );
}

#[test]
fn kv_cache_matches_recomputation_dense() {
    check_cache_equivalence(Bits::Sixteen);
}

#[test]
fn kv_cache_matches_recomputation_nf4() {
    check_cache_equivalence(Bits::Four);
}

#[test]
fn sampling_is_seeded_and_stop_strings_cut() {
    let model = CausalLm::load(fixture("tiny-llama"), &LoadOptions::default()).unwrap();
    let tokenizer = Tokenizer::load(fixture("tiny-llama")).unwrap();
    let prompt = tokenizer.encode("why is the rank", true).unwrap();
    let config = SamplingConfig {
        max_new_tokens: 20,
        temperature: 0.9,
        top_k: Some(50),
        top_p: Some(0.95),
        repetition_penalty: 1.1,
        seed: 7,
        stop_strings: Vec::new(),
    };
    let a = generate(&model, &tokenizer, &prompt, &config, |_| {}).unwrap();
    let b = generate(&model, &tokenizer, &prompt, &config, |_| {}).unwrap();
    assert_eq!(a, b, "same seed, same text");
    let other = generate(
        &model,
        &tokenizer,
        &prompt,
        &SamplingConfig {
            seed: 8,
            ..config.clone()
        },
        |_| {},
    )
    .unwrap();
    assert_ne!(a.ids, other.ids, "another seed, another sample");
    if a.text.chars().count() > 4 {
        let stop: String = a.text.chars().skip(2).take(2).collect();
        let cut = generate(
            &model,
            &tokenizer,
            &prompt,
            &SamplingConfig {
                stop_strings: vec![stop.clone()],
                ..config
            },
            |_| {},
        )
        .unwrap();
        assert_eq!(cut.stop, StopReason::StopString);
        assert_eq!(cut.text, a.text[..a.text.find(&stop).unwrap()]);
    }
}
