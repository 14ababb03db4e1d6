//! Tokenizer and chat template against transformers on the fixture model.

use qlora_core::text::{Message, Tokenizer};
use support::fixture;

#[test]
fn tokenizer_cases_reproduced() {
    let tokenizer = Tokenizer::load(fixture("tiny-llama")).unwrap();
    let text = std::fs::read_to_string(fixture("tiny-llama/tokenizer_cases.json")).unwrap();
    let cases: serde_json::Map<String, serde_json::Value> = serde_json::from_str(&text).unwrap();
    assert!(!cases.is_empty());
    for (input, expected) in cases {
        let expected: Vec<u32> = serde_json::from_value(expected).unwrap();
        assert_eq!(
            tokenizer.encode(&input, false).unwrap(),
            expected,
            "{input:?}"
        );
        // Round trip through decode.
        assert_eq!(
            tokenizer.decode(&expected, false).unwrap(),
            input,
            "{input:?}"
        );
    }
}

#[test]
fn chat_template_case_reproduced() {
    let tokenizer = Tokenizer::load(fixture("tiny-llama")).unwrap();
    let text = std::fs::read_to_string(fixture("tiny-llama/chat_template_case.json")).unwrap();
    let case: serde_json::Value = serde_json::from_str(&text).unwrap();
    let messages: Vec<Message> = serde_json::from_value(case["messages"].clone()).unwrap();
    assert_eq!(
        tokenizer.apply_chat_template(&messages, false).unwrap(),
        case["rendered"].as_str().unwrap()
    );
    // The generation prompt follows the conversation without its final assistant reply.
    assert_eq!(
        tokenizer
            .apply_chat_template(&messages[..messages.len() - 1], true)
            .unwrap(),
        case["rendered_with_generation_prompt"].as_str().unwrap()
    );
}

#[test]
fn special_tokens_from_the_config_files() {
    let tokenizer = Tokenizer::load(fixture("tiny-llama")).unwrap();
    assert_eq!(tokenizer.bos_id(), Some(1));
    assert_eq!(tokenizer.eos_id(), Some(2));
    assert_eq!(tokenizer.pad_id(), Some(2));
    assert_eq!(tokenizer.stop_ids(), &[2]);
}
