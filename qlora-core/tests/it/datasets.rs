//! Dataset formats: prompts, token ids and loss masks checked token by token on hand-made
//! records, the OpenAssistant tree rebuild against hand-counted numbers, chat masking with two
//! templates, and malformed input.

use std::path::{Path, PathBuf};

use qlora_core::data::{
    ConversationTemplate, DataOptions, DatasetFormat, OasstOptions, Sample, TokenizeOptions,
    alpaca_prompt, load_examples, tokenize,
};
use qlora_core::model::IGNORE_INDEX;
use qlora_core::text::{Message, Tokenizer};
use support::fixture;

fn tokenizer() -> Tokenizer {
    Tokenizer::load(fixture("tiny-llama")).unwrap()
}

fn write(dir: &Path, name: &str, lines: &[&str]) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, lines.join("\n") + "\n").unwrap();
    path
}

/// The fixture's tokenizer with `template` as its `chat_template.jinja` (in a folder that
/// lives as long as the first value).
fn tokenizer_with_template(template: &str) -> (tempfile::TempDir, Tokenizer) {
    let dir = tempfile::tempdir().unwrap();
    for file in [
        "tokenizer.json",
        "tokenizer_config.json",
        "generation_config.json",
    ] {
        std::fs::copy(fixture("tiny-llama").join(file), dir.path().join(file)).unwrap();
    }
    std::fs::write(dir.path().join("chat_template.jinja"), template).unwrap();
    let t = Tokenizer::load(dir.path()).unwrap();
    (dir, t)
}

/// The text of the learned tokens, and of the rest.
fn split_text(t: &Tokenizer, ids: &[u32], labels: &[i64]) -> (String, String) {
    let learned: Vec<u32> = ids
        .iter()
        .zip(labels)
        .filter(|(_, l)| **l != IGNORE_INDEX)
        .map(|(i, _)| *i)
        .collect();
    let context: Vec<u32> = ids
        .iter()
        .zip(labels)
        .filter(|(_, l)| **l == IGNORE_INDEX)
        .map(|(i, _)| *i)
        .collect();
    (
        t.decode(&learned, false).unwrap(),
        t.decode(&context, false).unwrap(),
    )
}

#[test]
fn alpaca_prompt_and_mask() {
    let t = tokenizer();
    let options = TokenizeOptions::default();
    for (instruction, input, output) in [
        ("Name the capital city.", "Japan", "Tokyo"),
        ("Give three tips.", "", "Eat, sleep, move."),
        (
            "Translate to English.",
            "日本語を勉強しています。",
            "I am studying Japanese — ✓ naïve.",
        ),
    ] {
        let prompt = alpaca_prompt(instruction, input);
        let sample = Sample::SourceTarget {
            source: prompt.clone(),
            target: output.into(),
        };
        let e = tokenize(&sample, &t, &options).unwrap();
        let source = t.encode(&format!("<s>{prompt}"), false).unwrap();
        let target = t.encode(&format!("{output}</s>"), false).unwrap();
        assert_eq!(e.ids, [source.clone(), target.clone()].concat());
        assert_eq!(e.ids[0], 1, "bos first");
        assert_eq!(*e.ids.last().unwrap(), 2, "eos last");
        let expected: Vec<i64> = std::iter::repeat_n(IGNORE_INDEX, source.len())
            .chain(target.iter().map(|&i| i64::from(i)))
            .collect();
        assert_eq!(e.labels, expected);
        assert_eq!(split_text(&t, &e.ids, &e.labels).0, format!("{output}</s>"));
        if input.is_empty() {
            assert!(!prompt.contains("### Input:"));
        } else {
            assert!(prompt.contains(&format!("### Input:\n{input}\n\n### Response: ")));
        }
    }
    // --train-on-source learns everything.
    let sample = Sample::SourceTarget {
        source: "abc".into(),
        target: "def".into(),
    };
    let e = tokenize(
        &sample,
        &t,
        &TokenizeOptions {
            train_on_source: true,
            ..options.clone()
        },
    )
    .unwrap();
    assert!(e.labels.iter().all(|&l| l != IGNORE_INDEX));
    // Over-long examples are cut to the limits, from the right.
    let long = Sample::SourceTarget {
        source: "word ".repeat(100),
        target: "answer ".repeat(100),
    };
    let e = tokenize(
        &long,
        &t,
        &TokenizeOptions {
            source_max_len: 16,
            target_max_len: 8,
            ..options
        },
    )
    .unwrap();
    assert!(e.truncated);
    assert_eq!(e.ids.len(), 24);
    assert_eq!(e.labels.iter().filter(|&&l| l == IGNORE_INDEX).count(), 16);
}

#[test]
fn guanaco_text_learns_assistant_turns() {
    let t = tokenizer();
    let dir = tempfile::tempdir().unwrap();
    let path = write(
        dir.path(),
        "g.jsonl",
        &[
            r####"{"text": "### Human: hi there### Assistant: hello!### Human: and now?### Assistant: bye."}"####,
        ],
    );
    let data = load_examples(&path, &t, &DataOptions::default()).unwrap();
    assert_eq!(data.format, DatasetFormat::Guanaco);
    let e = &data.examples[0];
    assert_eq!(
        e.ids,
        t.encode(
            "<s>### Human: hi there### Assistant: hello!### Human: and now?### Assistant: bye.</s>",
            false
        )
        .unwrap()
    );
    let (learned, context) = split_text(&t, &e.ids, &e.labels);
    assert_eq!(learned, " hello! bye.</s>");
    assert_eq!(
        context,
        "<s>### Human: hi there### Assistant:### Human: and now?### Assistant:"
    );
}

#[test]
fn chatml_masks_by_turn() {
    let t = tokenizer();
    let messages = vec![
        Message::new("system", "be brief"),
        Message::new("user", "what is a rank?"),
        Message::new("assistant", "a small number."),
        Message::new("user", "and alpha?"),
        Message::new("assistant", "a scale ✓"),
    ];
    let options = TokenizeOptions {
        template: ConversationTemplate::Chat,
        ..TokenizeOptions::default()
    };
    let e = tokenize(&Sample::Conversation(messages.clone()), &t, &options).unwrap();
    let rendered = t.apply_chat_template(&messages, false).unwrap();
    assert_eq!(e.ids, t.encode(&rendered, false).unwrap());
    let (learned, _) = split_text(&t, &e.ids, &e.labels);
    assert_eq!(learned, "a small number.<|im_end|>\na scale ✓<|im_end|>\n");
}

#[test]
fn llama2_inst_template_masks_by_turn() {
    let template = "{% if messages[0]['role'] == 'system' %}{% set loop_messages = messages[1:] %}{% set system_message = messages[0]['content'] %}{% else %}{% set loop_messages = messages %}{% set system_message = false %}{% endif %}{% for message in loop_messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}{% if loop.index0 == 0 and system_message != false %}{% set content = '<<SYS>>\\n' + system_message + '\\n<</SYS>>\\n\\n' + message['content'] %}{% else %}{% set content = message['content'] %}{% endif %}{% if message['role'] == 'user' %}{{ bos_token + '[INST] ' + content.strip() + ' [/INST]' }}{% elif message['role'] == 'assistant' %}{{ ' '  + content.strip() + ' ' + eos_token }}{% endif %}{% endfor %}";
    let (_dir, t) = tokenizer_with_template(template);
    let messages = vec![
        Message::new("system", "be brief"),
        Message::new("user", "what is a rank?"),
        Message::new("assistant", "a small number."),
        Message::new("user", "and alpha?"),
        Message::new("assistant", "a scale."),
    ];
    let rendered = t.apply_chat_template(&messages, false).unwrap();
    assert_eq!(
        rendered,
        "<s>[INST] <<SYS>>\nbe brief\n<</SYS>>\n\nwhat is a rank? [/INST] a small number. </s><s>[INST] and alpha? [/INST] a scale. </s>"
    );
    let options = TokenizeOptions {
        template: ConversationTemplate::Chat,
        ..TokenizeOptions::default()
    };
    let e = tokenize(&Sample::Conversation(messages), &t, &options).unwrap();
    let (learned, _) = split_text(&t, &e.ids, &e.labels);
    assert_eq!(learned, " a small number. </s> a scale. </s>");
    // The template's own errors surface as errors.
    let bad = vec![Message::new("assistant", "x")];
    let err = tokenize(&Sample::Conversation(bad), &t, &options)
        .unwrap_err()
        .to_string();
    assert!(err.contains("roles must alternate"), "{err}");
}

/// Qwen3's template (as the model ships it): a turn learns the `<think>` block the template
/// writes, `--chat-template-kwargs` reaches the template, and a multi-turn conversation (whose
/// earlier reasoning the template drops) is refused with a way out.
#[test]
#[cfg_attr(
    not(real_chat_templates),
    ignore = "chat templates not fetched; run examples/fetch_models.sh templates"
)]
fn qwen3_template_masks_its_turn_and_takes_kwargs() {
    let templates = PathBuf::from(env!("QLORA_TEST_CHAT_TEMPLATES"));
    let template = std::fs::read_to_string(templates.join("Qwen-Qwen3-0.6B.jinja")).unwrap();
    let (_dir, t) = tokenizer_with_template(&template);
    let messages = vec![
        Message::new("user", "hi"),
        Message::new("assistant", "hello"),
    ];
    let options = TokenizeOptions {
        template: ConversationTemplate::Chat,
        ..TokenizeOptions::default()
    };
    let e = tokenize(&Sample::Conversation(messages.clone()), &t, &options).unwrap();
    let (learned, _) = split_text(&t, &e.ids, &e.labels);
    assert_eq!(learned, "<think>\n\n</think>\n\nhello<|im_end|>\n");

    let kwargs: qlora_core::text::TemplateKwargs = r#"{"enable_thinking": false}"#.parse().unwrap();
    let prompt = t
        .apply_chat_template_with(&messages[..1], true, &kwargs)
        .unwrap();
    assert_eq!(
        prompt,
        "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"
    );
    assert!("[1]".parse::<qlora_core::text::TemplateKwargs>().is_err());

    let two_turns = vec![
        Message::new("user", "hi"),
        Message::new("assistant", "hello"),
        Message::new("user", "bye"),
        Message::new("assistant", "bye"),
    ];
    let err = tokenize(&Sample::Conversation(two_turns), &t, &options)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("give each assistant turn its own sample"),
        "{err}"
    );
}

#[test]
fn messages_and_sharegpt_and_text_formats() {
    let t = tokenizer();
    let dir = tempfile::tempdir().unwrap();
    let openai = write(
        dir.path(),
        "m.jsonl",
        &[
            r#"{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}]}"#,
        ],
    );
    let sharegpt = write(
        dir.path(),
        "s.json",
        &[
            r#"[{"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "hello"}]}]"#,
        ],
    );
    let a = load_examples(&openai, &t, &DataOptions::default()).unwrap();
    let b = load_examples(&sharegpt, &t, &DataOptions::default()).unwrap();
    assert_eq!(
        (a.format, b.format),
        (DatasetFormat::Messages, DatasetFormat::Messages)
    );
    assert_eq!(a.examples, b.examples);
    assert_eq!(
        split_text(&t, &a.examples[0].ids, &a.examples[0].labels).0,
        "hello<|im_end|>\n"
    );

    let text = write(dir.path(), "t.jsonl", &[r#"{"text": "plain words"}"#]);
    let d = load_examples(&text, &t, &DataOptions::default()).unwrap();
    assert_eq!(d.format, DatasetFormat::Text);
    let (learned, context) = split_text(&t, &d.examples[0].ids, &d.examples[0].labels);
    assert_eq!(
        (learned.as_str(), context.as_str()),
        ("plain words</s>", "<s>")
    );

    let io = write(
        dir.path(),
        "io.jsonl",
        &[r#"{"input": "2+2=", "output": "4"}"#],
    );
    let d = load_examples(&io, &t, &DataOptions::default()).unwrap();
    assert_eq!(d.format, DatasetFormat::InputOutput);
    assert_eq!(
        split_text(&t, &d.examples[0].ids, &d.examples[0].labels).0,
        "4</s>"
    );
}

fn oasst(options: OasstOptions) -> qlora_core::data::LoadedData {
    let path = support::root().join("datasets/oasst1_sample.jsonl");
    let data = DataOptions {
        oasst: options,
        ..DataOptions::default()
    };
    load_examples(&path, &tokenizer(), &data).unwrap()
}

#[test]
fn oasst_tree_rebuild_matches_hand_counts() {
    // See datasets/README.md for the five families of trees these numbers come from.
    let all = oasst(OasstOptions::default());
    assert_eq!(all.format, DatasetFormat::Oasst);
    let r = all.report.oasst.clone().unwrap();
    assert_eq!((r.messages, r.trees, r.threads), (124, 30, 48));
    assert_eq!(
        (
            r.deleted,
            r.review_failed,
            r.other_language,
            r.below_top_rank,
            r.orphaned
        ),
        (9, 6, 0, 0, 3)
    );
    assert_eq!(all.examples.len(), 48);

    let top = oasst(OasstOptions {
        top_ranked: true,
        ..OasstOptions::default()
    });
    let r = top.report.oasst.clone().unwrap();
    assert_eq!((r.threads, r.below_top_rank, r.orphaned), (30, 18, 3));

    let english = oasst(OasstOptions {
        languages: vec!["en".into()],
        ..OasstOptions::default()
    });
    let r = english.report.oasst.clone().unwrap();
    assert_eq!((r.threads, r.other_language, r.review_failed), (36, 18, 6));

    // Threads are Guanaco text by default: the first thread of the first tree.
    let t = tokenizer();
    let (learned, context) = split_text(&t, &all.examples[0].ids, &all.examples[0].labels);
    assert!(
        context.starts_with("<s>### Human: Can you explain sourdough bread briefly?### Assistant:"),
        "{context}"
    );
    assert!(learned.starts_with(" Sure."), "{learned}");
    assert!(learned.ends_with("follows.</s>"), "{learned}");
    let summary = all.to_string();
    assert!(
        summary.contains("124 messages in 30 trees -> 48 threads"),
        "{summary}"
    );
    assert!(summary.contains("skipped 9 deleted messages"), "{summary}");
}

#[test]
fn malformed_records_name_file_line_and_field() {
    let t = tokenizer();
    let dir = tempfile::tempdir().unwrap();
    let cases: [(&str, &[&str], Option<DatasetFormat>, &str); 7] = [
        (
            "bad_json.jsonl",
            &[r#"{"text": "ok"}"#, r#"{"text": "#],
            None,
            ":2: invalid JSON",
        ),
        (
            "missing.jsonl",
            &[
                r#"{"instruction": "a", "output": "b"}"#,
                r#"{"instruction": "c"}"#,
            ],
            None,
            ":2: field `output`: missing",
        ),
        (
            "wrong_type.jsonl",
            &[r#"{"instruction": "a", "output": 5}"#],
            None,
            ":1: field `output`: expected a string, found a number",
        ),
        (
            "role.jsonl",
            &[r#"{"messages": [{"role": "robot", "content": "x"}]}"#],
            None,
            ":1: field `messages[0].role`: unknown role `robot`",
        ),
        (
            "no_assistant.jsonl",
            &[r#"{"messages": [{"role": "user", "content": "x"}]}"#],
            None,
            ":1: field `messages`: no assistant turn",
        ),
        (
            "forced.jsonl",
            &[r#"{"text": "x"}"#],
            Some(DatasetFormat::Alpaca),
            ":1: field `instruction`: missing",
        ),
        (
            "unknown.jsonl",
            &[r#"{"question": "x"}"#],
            None,
            ":1: cannot tell the format",
        ),
    ];
    for (name, lines, format, needle) in cases {
        let path = write(dir.path(), name, lines);
        let options = DataOptions {
            format,
            ..DataOptions::default()
        };
        let err = load_examples(&path, &t, &options).unwrap_err().to_string();
        assert!(err.contains(name) && err.contains(needle), "{name}: {err}");
    }
    let empty = write(dir.path(), "empty.jsonl", &[]);
    let err = load_examples(&empty, &t, &DataOptions::default())
        .unwrap_err()
        .to_string();
    assert!(err.contains("empty"), "{err}");
    // Everything filtered away is an error, not a zero-step run.
    let path = support::root().join("datasets/oasst1_sample.jsonl");
    let options = DataOptions {
        oasst: OasstOptions {
            languages: vec!["fr".into()],
            ..OasstOptions::default()
        },
        ..DataOptions::default()
    };
    let err = load_examples(&path, &t, &options).unwrap_err().to_string();
    assert!(err.contains("nothing to learn"), "{err}");
}

/// `--chat-template chatml` renders as the tiny model's own ChatML template does and stops at
/// `<|im_end|>`; `--eos-token` changes what responses end with.
#[test]
fn built_in_chatml_and_an_eos_token_override() {
    use qlora_core::text::TextOverrides;
    let own = tokenizer();
    let mut t = tokenizer();
    let chatml = TextOverrides {
        chat_template: Some("chatml".into()),
        ..TextOverrides::default()
    };
    chatml.apply(&mut t).unwrap();
    let messages = [
        Message::new("system", "Be brief."),
        Message::new("user", "hi"),
        Message::new("assistant", "hello"),
    ];
    for generation in [false, true] {
        assert_eq!(
            own.apply_chat_template(&messages, generation).unwrap(),
            t.apply_chat_template(&messages, generation).unwrap()
        );
    }
    let im_end = t.token_to_id("<|im_end|>").unwrap();
    assert!(t.stop_ids().contains(&im_end) && !own.stop_ids().contains(&im_end));

    let eos = TextOverrides {
        eos_token: Some("<|im_end|>".into()),
        ..TextOverrides::default()
    };
    let mut t = tokenizer();
    eos.apply(&mut t).unwrap();
    assert_eq!((t.eos_id(), t.stop_ids()[0]), (Some(im_end), im_end));
    let sample = Sample::SourceTarget {
        source: "Q".into(),
        target: "A".into(),
    };
    let e = tokenize(&sample, &t, &TokenizeOptions::default()).unwrap();
    assert_eq!(*e.labels.last().unwrap(), i64::from(im_end));
}
