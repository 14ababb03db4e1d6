//! Preference tuning against TRL 1.16 (`tests/reference/make_preference_fixture.py`): on the
//! tiny LLaMA with its PEFT adapter, for a standard and a conversational set of pairs, TRL's
//! tokenization of each pair; the policy's and the reference's summed completion
//! log-probabilities; the DPO (sigmoid, IPO), ORPO and SimPO losses and their gradients with
//! respect to the adapter's weights, with pairs packed into one row and a pair a row.

use std::path::PathBuf;

use qlora_core::data::{PairExample, PairLimits, pair_samples, read_json_records, tokenize_pair};
use qlora_core::lora::{apply_adapter, read_adapter};
use qlora_core::model::{Bits, CausalLm, IGNORE_INDEX, LoadOptions};
use qlora_core::preference::{
    DpoLoss, Method, PairLogps, PreferenceConfig, collate_pairs, pair_objective, reference_logps,
    sequence_logps,
};
use qlora_core::text::{TemplateKwargs, Tokenizer};
use support::{f32s, fixture, load_tensors_at, root};

fn dir() -> PathBuf {
    root().join("tests/reference/preference")
}

fn relative(got: f64, want: f64) -> f64 {
    (got - want).abs() / want.abs().max(1e-12)
}

/// The pairs of `shape`, tokenized by us.
fn pairs(shape: &str, tokenizer: &Tokenizer) -> Vec<PairExample> {
    let records = read_json_records(&dir().join(format!("pairs_{shape}.jsonl"))).unwrap();
    let limits = PairLimits {
        prompt: None,
        completion: None,
        sequence: None,
    };
    pair_samples(&records)
        .unwrap()
        .iter()
        .map(|s| {
            tokenize_pair(&s.value, tokenizer, &TemplateKwargs::default(), limits)
                .unwrap()
                .unwrap()
        })
        .collect()
}

#[test]
fn tokenization_matches_trl() {
    let tokenizer = Tokenizer::load(fixture("tiny-llama")).unwrap();
    let text = std::fs::read_to_string(dir().join("tokenized.json")).unwrap();
    let want: serde_json::Value = serde_json::from_str(&text).unwrap();
    for shape in ["standard", "chat"] {
        for (pair, want) in pairs(shape, &tokenizer)
            .iter()
            .zip(want[shape].as_array().unwrap())
        {
            let ids = |key: &str| -> Vec<u32> {
                want[key]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|v| v.as_u64().unwrap() as u32)
                    .collect()
            };
            let prompt = ids("prompt_ids");
            for (example, completion) in [
                (&pair.chosen, ids("chosen_ids")),
                (&pair.rejected, ids("rejected_ids")),
            ] {
                let expected: Vec<u32> = prompt.iter().chain(&completion).copied().collect();
                assert_eq!(example.ids, expected, "{shape}");
                let learned: Vec<u32> = example
                    .labels
                    .iter()
                    .filter(|&&l| l != IGNORE_INDEX)
                    .map(|&l| l as u32)
                    .collect();
                assert_eq!(
                    learned, completion,
                    "{shape}: only the completion is learned"
                );
            }
        }
    }
}

/// The fixture's reference (the adapter as loaded) and policy (its `lora_B` × 1.5).
fn models() -> (CausalLm, CausalLm) {
    let options = LoadOptions {
        bits: Bits::Sixteen,
        ..LoadOptions::default()
    };
    let mut reference = CausalLm::load(fixture("tiny-llama"), &options).unwrap();
    let adapter = read_adapter(&fixture("tiny-llama-lora")).unwrap();
    apply_adapter(&mut reference, adapter).unwrap();
    let mut policy = reference.clone();
    for (_, linear) in policy.linears_mut() {
        let lora = linear.lora.as_mut().unwrap();
        lora.b = lora.b.clone() * 1.5;
    }
    (reference, policy)
}

#[test]
fn logps_losses_and_gradients_match_trl() {
    let tokenizer = Tokenizer::load(fixture("tiny-llama")).unwrap();
    let r = load_tensors_at(&dir().join("reference.safetensors"));
    let (reference, policy) = models();
    let objectives = [
        ("dpo_sigmoid", Method::Dpo, DpoLoss::Sigmoid, 0.1),
        ("dpo_ipo", Method::Dpo, DpoLoss::Ipo, 0.1),
        ("orpo", Method::Orpo, DpoLoss::Sigmoid, 0.1),
        ("simpo", Method::Simpo, DpoLoss::Sigmoid, 2.0),
    ];
    let mut worst = [0f64; 3];
    for shape in ["standard", "chat"] {
        let pairs = pairs(shape, &tokenizer);
        let n = pairs.len();
        let want_policy = f32s(&r[&format!("{shape}.policy_logps")].2);
        let want_reference = f32s(&r[&format!("{shape}.reference_logps")].2);
        // Every pair in one packed row, and a pair a row.
        for rows in [
            vec![(0..n).collect::<Vec<_>>()],
            (0..n).map(|i| vec![i]).collect(),
        ] {
            let batch = collate_pairs(&rows, &pairs, 2);
            let ours = sequence_logps(&batch, &policy.position_losses(&batch.batch).unwrap());
            let ours_ref = reference_logps(&reference, &batch).unwrap();
            for k in 0..n {
                let i = batch.pairs[k];
                for side in 0..2 {
                    let got = ours[k][side].sum;
                    let want = f64::from(want_policy[i * 2 + side]);
                    worst[0] = worst[0].max(relative(got, want));
                    assert!(
                        relative(got, want) <= 1e-5,
                        "{shape} policy {i}.{side}: {got} vs {want}"
                    );
                    let got = ours_ref[k][side];
                    let want = f64::from(want_reference[i * 2 + side]);
                    assert!(
                        relative(got, want) <= 1e-5,
                        "{shape} reference {i}.{side}: {got} vs {want}"
                    );
                }
            }
            for (name, method, dpo_loss, beta) in objectives {
                let config = PreferenceConfig {
                    method,
                    dpo_loss,
                    beta: Some(beta),
                    orpo_lambda: 0.1,
                    simpo_gamma: 0.5,
                    ..PreferenceConfig::default()
                };
                let mut loss = None;
                let mut weigh = |losses: &[f32]| {
                    let scored: Vec<PairLogps> = sequence_logps(&batch, losses)
                        .into_iter()
                        .zip(&ours_ref)
                        .map(|(policy, &reference)| PairLogps {
                            policy,
                            reference: Some(reference),
                        })
                        .collect();
                    let found = pair_objective(&config, &scored)?;
                    loss = Some(found.loss);
                    Ok(batch
                        .sequence_of
                        .iter()
                        .map(|s| s.map_or(0.0, |s| -found.d_logps[s / 2][s % 2] as f32))
                        .collect())
                };
                let out = policy
                    .weighted_loss_and_grads(&batch.batch, false, None, Some(&mut weigh))
                    .unwrap();
                let want = f64::from(f32s(&r[&format!("{shape}.{name}.loss")].2)[0]);
                let got = loss.unwrap();
                worst[1] = worst[1].max(relative(got, want));
                assert!(
                    relative(got, want) <= 1e-5,
                    "{shape} {name} loss {got} vs {want}"
                );
                for (path, (da, db)) in out.grads.paths.iter().zip(out.grads.grads) {
                    for (part, grad) in [("lora_A", da), ("lora_B", db)] {
                        let got: Vec<f32> = grad.into_data().try_into_vec().unwrap();
                        let want = f32s(&r[&format!("{shape}.{name}.grad.{path}.{part}")].2);
                        let scale = want.iter().fold(0f32, |m, v| m.max(v.abs()));
                        let diff = got
                            .iter()
                            .zip(&want)
                            .fold(0f32, |m, (a, b)| m.max((a - b).abs()));
                        worst[2] = worst[2].max(f64::from(diff / scale));
                        assert!(
                            diff <= 1e-5 * scale,
                            "{shape} {name} {path}.{part}: max diff {diff} (scale {scale})"
                        );
                    }
                }
            }
        }
    }
    eprintln!(
        "against TRL: log-probs {:.2e}, losses {:.2e}, gradients {:.2e} (max relative)",
        worst[0], worst[1], worst[2]
    );
}
