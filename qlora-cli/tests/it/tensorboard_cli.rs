//! `qlora train` writes TensorBoard event files beside `metrics.jsonl`, with every scalar of it,
//! and a resumed run's file makes TensorBoard forget the steps it retakes.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use qlora_core::tfevents::{SESSION_START, read_events};

use crate::common::{python_has, python_json, qlora};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// tag -> step -> value (as the f32 the files hold).
type Curves = BTreeMap<String, BTreeMap<i64, f32>>;

/// The curves `metrics.jsonl` holds, under the event files' tags.
fn curves_of_metrics(out: &Path) -> Curves {
    let tags = [
        ("loss", "train/loss"),
        ("lr", "train/learning_rate"),
        ("grad_norm", "train/grad_norm"),
        ("tokens", "train/tokens"),
        ("tokens_per_s", "train/tokens_per_second"),
        ("padding", "train/padding"),
        ("eval_loss", "eval/loss"),
        ("peak_rss_bytes", "train/peak_rss_bytes"),
    ];
    let mut curves = Curves::new();
    for line in std::fs::read_to_string(out.join("metrics.jsonl"))
        .unwrap()
        .lines()
    {
        let m: serde_json::Map<String, serde_json::Value> = serde_json::from_str(line).unwrap();
        let step = m["step"].as_i64().unwrap();
        for (key, value) in &m {
            if key == "step" {
                continue;
            }
            let tag = tags
                .iter()
                .find(|(k, _)| k == key)
                .unwrap_or_else(|| panic!("no tag for `{key}`"))
                .1;
            let value = value.as_f64().unwrap() as f32;
            curves.entry(tag.into()).or_default().insert(step, value);
        }
    }
    curves
}

/// The curves of the event files in `dir`, read in name order as TensorBoard reads them (a
/// session start drops what came before from its step on).
fn curves_of_events(dir: &Path) -> Curves {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    let mut curves = Curves::new();
    for file in files {
        let events = read_events(&file).unwrap();
        assert_eq!(events[0].file_version.as_deref(), Some("brain.Event:2"));
        for event in events {
            if event
                .session_log
                .as_ref()
                .is_some_and(|s| s.status == SESSION_START)
            {
                for curve in curves.values_mut() {
                    curve.retain(|&step, _| step < event.step);
                }
            }
            for value in event.summary.map(|s| s.value).unwrap_or_default() {
                let v = value.simple_value.unwrap();
                curves.entry(value.tag).or_default().insert(event.step, v);
            }
        }
    }
    curves
}

/// What TensorBoard's own reader (`EventAccumulator`) finds, if Python has `tensorboard`.
fn curves_of_tensorboard(dir: &Path) -> Option<Curves> {
    const SCRIPT: &str = r#"
import json, sys
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
acc = EventAccumulator(sys.argv[1])
acc.Reload()
print(json.dumps({t: {str(e.step): e.value for e in acc.Scalars(t)} for t in acc.Tags()["scalars"]}))
"#;
    if !python_has("tensorboard") {
        return None;
    }
    let parsed: BTreeMap<String, BTreeMap<String, f64>> =
        serde_json::from_value(python_json(SCRIPT, &[dir.as_os_str()])).unwrap();
    Some(
        parsed
            .into_iter()
            .map(|(tag, points)| {
                let points = points
                    .into_iter()
                    // The f32 the file holds (Python prints it as a double).
                    .map(|(s, v)| (s.parse().unwrap(), v as f32))
                    .collect();
                (tag, points)
            })
            .collect(),
    )
}

#[test]
fn event_files_hold_every_metric_and_survive_a_resume() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    let train = |extra: &[&str]| {
        let mut args = vec![
            "train",
            "--model",
            root().join("tests/fixtures/tiny-llama").to_str().unwrap(),
            "--data",
            root().join("datasets/parity_train.jsonl").to_str().unwrap(),
            "--eval-data",
            root().join("datasets/parity_eval.jsonl").to_str().unwrap(),
            "--out",
            out.to_str().unwrap(),
            "--batch-size",
            "4",
            "--grad-accum",
            "1",
            "--eval-steps",
            "2",
            "--save-steps",
            "2",
        ]
        .into_iter()
        .map(String::from)
        .collect::<Vec<_>>();
        args.extend(extra.iter().map(|s| s.to_string()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let (code, _, stderr) = qlora(&args);
        assert_eq!(code, 0, "{stderr}");
    };
    train(&["--max-steps", "3"]);
    let runs = out.join("runs");
    let first = curves_of_metrics(&out);
    assert_eq!(first["train/loss"].len(), 3);
    assert_eq!(first["eval/loss"].len(), 2, "steps 2 and 3");
    assert_eq!(curves_of_events(&runs), first);

    // Resumed from step 2 with a longer run: step 3 is taken again, and only the new one shows.
    let checkpoint = out.join("checkpoint-2");
    train(&["--max-steps", "5", "--resume", checkpoint.to_str().unwrap()]);
    let resumed = curves_of_metrics(&out);
    assert_eq!(resumed["train/loss"].len(), 5);
    assert_eq!(std::fs::read_dir(&runs).unwrap().count(), 2);
    assert_eq!(curves_of_events(&runs), resumed);
    if let Some(tensorboard) = curves_of_tensorboard(&runs) {
        assert_eq!(tensorboard, resumed);
    }
}
