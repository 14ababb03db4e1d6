//! Multiple-choice scoring against lm-evaluation-harness 0.4.13's own numbers for the fixture
//! model (`tests/fixtures/lm_eval_mc`): both templates, 0 and 2 shots, the full context it
//! built, every choice's log-likelihood (within 1e-4), accuracies and standard errors.

use qlora_core::eval::choice::{ChoiceStyle, context, evaluate_choices, read_questions};
use qlora_core::model::{Bits, CausalLm, LoadOptions};
use qlora_core::text::Tokenizer;
use support::fixture;

#[test]
fn scores_equal_lm_evaluation_harness() {
    let reference: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(fixture("lm_eval_mc/reference.json")).unwrap(),
    )
    .unwrap();
    // The harness ran the model as transformers loads it: dense, float32.
    let options = LoadOptions {
        bits: Bits::Sixteen,
        ..LoadOptions::default()
    };
    let model = CausalLm::load(fixture("tiny-llama"), &options).unwrap();
    let tokenizer = Tokenizer::load(fixture("tiny-llama")).unwrap();
    let mut worst = 0f64;
    for style in [ChoiceStyle::Letters, ChoiceStyle::Cloze] {
        let questions = read_questions(&fixture("lm_eval_mc/mc_test.jsonl"), style).unwrap();
        let dev = read_questions(&fixture("lm_eval_mc/mc_dev.jsonl"), style).unwrap();
        for shots in [0usize, 2] {
            let want = &reference[style.name()][shots.to_string()];
            let fewshot = &dev[..shots];
            assert_eq!(
                context(&questions[0], fewshot, style),
                want["first_context"].as_str().unwrap(),
                "{style} {shots}-shot context"
            );
            let report =
                evaluate_choices(&model, &tokenizer, &questions, fewshot, style, |_| {}).unwrap();
            let items = want["items"].as_array().unwrap();
            assert_eq!(report.items.len(), items.len());
            for (got, want) in report.items.iter().zip(items) {
                let lls: Vec<f64> = want["loglikelihoods"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|v| v.as_f64().unwrap())
                    .collect();
                for (a, b) in got.loglikelihoods.iter().zip(&lls) {
                    worst = worst.max((a - b).abs());
                    assert!((a - b).abs() <= 1e-4, "{style} {shots}-shot: {a} vs {b}");
                }
                let greedy: Vec<bool> = want["is_greedy"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|v| v.as_bool().unwrap())
                    .collect();
                assert_eq!(got.is_greedy, greedy);
                assert_eq!(got.acc(), want["acc"].as_f64().unwrap());
                assert_eq!(got.acc_norm(), want["acc_norm"].as_f64().unwrap());
            }
            let o = &report.overall;
            for (name, got) in [
                ("acc", o.acc),
                ("acc_norm", o.acc_norm),
                ("acc_stderr", o.acc_stderr),
                ("acc_norm_stderr", o.acc_norm_stderr),
            ] {
                let expected = want[name].as_f64().unwrap();
                assert!(
                    (got - expected).abs() <= 1e-12,
                    "{style} {shots}-shot {name}: {got} vs {expected}"
                );
            }
        }
    }
    eprintln!("largest log-likelihood difference: {worst:e}");
}
