//! Packed rows: every example sees only itself (its logits, losses and gradients equal those
//! of the example alone), and gradient accumulation normalizes by the whole step's tokens.

use std::path::Path;

use burn::tensor::{Distribution, Tensor};
use qlora_core::data::{Example, collate, collate_rows};
use qlora_core::device::DeviceChoice;
use qlora_core::lora::LoraConfig;
use qlora_core::model::{CausalLm, DropoutStream, LoadOptions};
use qlora_core::train::{LogProgress, TrainConfig, Trainer};
use support::fixture;

fn example(len: usize, seed: u32, prompt: usize) -> Example {
    let ids: Vec<u32> = (0..len as u32)
        .map(|i| (i * 131 + seed * 17 + 1) % 1000)
        .collect();
    let labels = ids
        .iter()
        .enumerate()
        .map(|(i, &id)| if i < prompt { -100 } else { i64::from(id) })
        .collect();
    Example {
        ids,
        labels,
        truncated: false,
    }
}

fn model() -> CausalLm {
    let mut model = CausalLm::load(fixture("tiny-llama"), &LoadOptions::default()).unwrap();
    model
        .attach_lora(
            &LoraConfig {
                r: 8,
                dropout: 0.0,
                ..LoraConfig::default()
            },
            2,
        )
        .unwrap();
    for (_, linear) in model.linears_mut() {
        // B = 0 would make every gradient of A zero: start from a trained-looking adapter.
        let lora = linear.lora.as_mut().unwrap();
        let device = lora.a.device();
        lora.b = Tensor::random(
            [linear.out_features, 8],
            Distribution::Uniform(-0.05, 0.05),
            &device,
        );
    }
    model
}

fn vec3(t: Tensor<3>) -> Vec<f32> {
    t.into_data().convert::<f32>().try_into_vec().unwrap()
}

fn max_rel_diff(a: &[f32], b: &[f32]) -> f32 {
    let scale = b.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-12);
    a.iter()
        .zip(b)
        .map(|(x, y)| (x - y).abs())
        .fold(0f32, f32::max)
        / scale
}

#[test]
fn a_packed_example_computes_what_it_computes_alone() {
    let model = model();
    let vocab = model.config.vocab_size;
    let examples = [example(20, 1, 5), example(13, 2, 4), example(7, 3, 2)];
    let packed = collate_rows(&[examples.iter().collect()], 0, None);
    let logits = vec3(model.logits(&packed).unwrap());
    let mut start = 0;
    let mut loss_alone = 0f64;
    for e in &examples {
        let alone = collate(&[e], 0);
        let want = vec3(model.logits(&alone).unwrap());
        let got = &logits[start * vocab..(start + e.ids.len()) * vocab];
        let diff = max_rel_diff(got, &want);
        assert!(diff <= 1e-5, "logits differ by {diff}");
        loss_alone += f64::from(model.loss(&alone).unwrap().sum.into_scalar::<f32>());
        start += e.ids.len();
    }
    let loss = model.loss(&packed).unwrap();
    let loss_packed = f64::from(loss.sum.into_scalar::<f32>());
    assert!(
        (loss_packed - loss_alone).abs() <= 1e-5 * loss_alone,
        "{loss_packed} vs {loss_alone}"
    );
    let targets: usize = examples.iter().map(Example::target_tokens).sum();
    assert_eq!(loss.tokens, targets);

    // Another example's tokens do not touch this one's logits, to the bit.
    let mut changed = examples.clone();
    changed[0] = example(20, 99, 5);
    let other = vec3(
        model
            .logits(&collate_rows(&[changed.iter().collect()], 0, None))
            .unwrap(),
    );
    assert_eq!(other[20 * vocab..], logits[20 * vocab..]);
    assert_ne!(other[..20 * vocab], logits[..20 * vocab]);
}

#[test]
fn summed_micro_batches_equal_one_batch() {
    let model = model();
    let examples = [example(30, 4, 10), example(11, 5, 3), example(17, 6, 6)];
    let one = model
        .loss_and_grads(
            &collate(&examples.iter().collect::<Vec<_>>(), 0),
            true,
            None,
        )
        .unwrap();
    let mut total = 0.0;
    let mut sums: Vec<Vec<f32>> = Vec::new();
    for e in &examples {
        let r = model.loss_and_grads(&collate(&[e], 0), true, None).unwrap();
        total += r.loss_sum;
        let flat: Vec<Vec<f32>> = r
            .grads
            .grads
            .iter()
            .flat_map(|(a, b)| [a.clone(), b.clone()])
            .map(|t| t.into_data().try_into_vec().unwrap())
            .collect();
        if sums.is_empty() {
            sums = flat
        } else {
            for (s, f) in sums.iter_mut().zip(flat) {
                for (x, y) in s.iter_mut().zip(f) {
                    *x += y;
                }
            }
        }
    }
    eprintln!("loss {} vs {}", one.loss_sum, total);
    let flat: Vec<Vec<f32>> = one
        .grads
        .grads
        .iter()
        .flat_map(|(a, b)| [a.clone(), b.clone()])
        .map(|t| t.into_data().try_into_vec().unwrap())
        .collect();
    for (i, (x, y)) in flat.iter().zip(&sums).enumerate() {
        let d = max_rel_diff(x, y);
        assert!(d <= 1e-5, "grad {i} {d}");
    }
}

#[test]
fn packed_gradients_equal_unpacked_ones() {
    let model = model();
    let examples = [example(30, 4, 10), example(11, 5, 3), example(17, 6, 6)];
    let stream = DropoutStream { seed: 1, step: 0 };
    let packed = collate_rows(&[examples.iter().collect()], 0, None);
    let unpacked = collate(&examples.iter().collect::<Vec<_>>(), 0);
    let a = model.loss_and_grads(&packed, true, Some(&stream)).unwrap();
    let b = model
        .loss_and_grads(&unpacked, true, Some(&stream))
        .unwrap();
    assert_eq!(a.tokens, b.tokens);
    assert!((a.loss_sum - b.loss_sum).abs() <= 1e-5 * b.loss_sum);
    for ((ga, gb), (ha, hb)) in a.grads.grads.iter().zip(&b.grads.grads) {
        for (x, y) in [(ga, ha), (gb, hb)] {
            let x: Vec<f32> = x.clone().into_data().try_into_vec().unwrap();
            let y: Vec<f32> = y.clone().into_data().try_into_vec().unwrap();
            let diff = max_rel_diff(&x, &y);
            assert!(diff <= 1e-5, "gradient differs by {diff}");
        }
    }
}

/// The gradient of one optimizer step's mean token loss, `batch_size` rows times `grad_accum`.
fn step_gradient(dir: &Path, batch_size: usize, grad_accum: usize, data: &Path) -> Vec<Vec<f32>> {
    let config = TrainConfig {
        model: fixture("tiny-llama"),
        data: data.to_path_buf(),
        out: dir.to_path_buf(),
        rank: 8,
        dropout: 0.0,
        batch_size,
        grad_accum,
        max_steps: Some(1),
        packing: false,
        ..TrainConfig::default()
    };
    let mut trainer =
        Trainer::new(config, DeviceChoice::Cpu, None, &mut LogProgress::new(100)).unwrap();
    // A trained-looking B, the same in both runs (B = 0 makes A's gradient vanish).
    for (k, (_, linear)) in trainer.model.linears_mut().into_iter().enumerate() {
        let lora = linear.lora.as_mut().unwrap();
        let n = linear.out_features * 8;
        let values: Vec<f32> = (0..n)
            .map(|i| ((i * 7 + k * 13) % 17) as f32 * 0.003 - 0.024)
            .collect();
        lora.b = Tensor::from_data(
            burn::tensor::TensorData::new(values, [linear.out_features, 8]),
            &lora.a.device(),
        );
    }
    let step = trainer.accumulate().unwrap();
    let scale = 1.0 / step.targets as f32;
    step.grads
        .into_iter()
        .flat_map(|(a, b)| [a, b])
        .map(|t| {
            let v: Vec<f32> = t.into_data().try_into_vec().unwrap();
            v.into_iter().map(|x| x * scale).collect()
        })
        .collect()
}

#[test]
fn accumulation_normalizes_by_the_whole_step() {
    let dir = tempfile::tempdir().unwrap();
    // Four examples whose answers differ in length, so a mean of per-batch means would differ.
    let data = dir.path().join("d.jsonl");
    let lines: Vec<String> = [
        ("Say one word.", "yes"),
        (
            "Count to ten.",
            "one two three four five six seven eight nine ten",
        ),
        ("Name a colour.", "blue"),
        (
            "Describe the sea.",
            "The sea is wide, deep and salty, and it moves with the tides all day long.",
        ),
    ]
    .iter()
    .map(|(i, o)| serde_json::json!({"instruction": i, "output": o}).to_string())
    .collect();
    std::fs::write(&data, lines.join("\n")).unwrap();
    let accumulated = step_gradient(&dir.path().join("a"), 1, 4, &data);
    let batched = step_gradient(&dir.path().join("b"), 4, 1, &data);
    for (x, y) in accumulated.iter().zip(&batched) {
        let diff = max_rel_diff(x, y);
        assert!(diff <= 1e-5, "gradients differ by {diff}");
    }
}
