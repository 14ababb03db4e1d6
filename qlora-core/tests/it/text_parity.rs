//! Tokenizer and chat template against transformers on the fixture model, and the chat
//! templates the supported models ship against transformers' rendering of the same messages
//! (`tests/reference/chat_template_cases.json`, by `make_chat_template_cases.py`; the templates
//! are fetched by `examples/fetch_models.sh templates`, the Qwen2.5 GGUF's is in its file).

use std::path::{Path, PathBuf};

use qlora_core::gguf::GgufFile;
use qlora_core::text::{ChatTemplate, Message, Tokenizer};
use support::{fixture, reference};

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

/// Render every reference case whose template `source` gives, and compare with transformers.
fn chat_template_cases_match(template_of: impl Fn(&str) -> Option<String>) -> usize {
    let text = std::fs::read_to_string(reference("chat_template_cases.json")).unwrap();
    let all: serde_json::Value = serde_json::from_str(&text).unwrap();
    let mut checked = 0;
    for case in all["cases"].as_array().unwrap() {
        let name = case["template"].as_str().unwrap();
        let Some(source) = template_of(name) else {
            continue;
        };
        let token = |key: &str| case[key].as_str().unwrap_or("").to_string();
        let template = ChatTemplate::new(
            source,
            Path::new(name),
            &token("bos_token"),
            &token("eos_token"),
            "",
            "",
        )
        .unwrap();
        let messages: Vec<Message> = serde_json::from_value(case["messages"].clone()).unwrap();
        let generation = case["add_generation_prompt"].as_bool().unwrap();
        let kwargs = case["kwargs"].as_object().unwrap();
        let what = format!(
            "{name} {} (generation prompt {generation}, {kwargs:?})",
            case["chat"]
        );
        let got = template.render_with(&messages, generation, kwargs);
        match (case.get("expected"), case.get("error")) {
            (Some(expected), _) => {
                assert_eq!(got.unwrap(), expected.as_str().unwrap(), "{what}")
            }
            (None, Some(error)) => {
                let err = got.unwrap_err().to_string();
                assert!(err.contains(error.as_str().unwrap()), "{what}: {err}");
            }
            _ => panic!("{what}: a case has `expected` or `error`"),
        }
        checked += 1;
    }
    checked
}

/// Qwen3 (thinking tags, `enable_thinking`), Qwen2.5 (ChatML with its default system prompt),
/// Phi-3.5, Gemma 2 (no system role: transformers' error), Mistral-Nemo and Llama 3.2
/// (`date_string`), each over four conversations with and without the generation prompt.
#[test]
#[cfg_attr(
    not(real_chat_templates),
    ignore = "chat templates not fetched; run examples/fetch_models.sh templates"
)]
fn shipped_chat_templates_render_as_transformers() {
    let dir = PathBuf::from(env!("QLORA_TEST_CHAT_TEMPLATES"));
    assert!(
        dir.is_dir(),
        "{dir:?}: run examples/fetch_models.sh templates"
    );
    let checked = chat_template_cases_match(|name| {
        (!name.starts_with("gguf:")).then(|| std::fs::read_to_string(dir.join(name)).unwrap())
    });
    assert_eq!(checked, 39);
}

/// The template inside the Qwen2.5-Coder GGUF (`tokenizer.chat_template`).
#[test]
#[cfg_attr(
    not(real_qwen25),
    ignore = "Qwen2.5-Coder-0.5B-Instruct.gguf not found; run examples/fetch_models.sh"
)]
fn qwen25_gguf_chat_template_renders_as_transformers() {
    let gguf = GgufFile::open(env!("QLORA_TEST_QWEN25_GGUF")).unwrap();
    let source = gguf
        .string("tokenizer.chat_template")
        .unwrap()
        .unwrap()
        .to_string();
    let checked = chat_template_cases_match(|name| {
        (name == "gguf:Qwen2.5-Coder-0.5B-Instruct.gguf").then(|| source.clone())
    });
    assert_eq!(checked, 6);
}
