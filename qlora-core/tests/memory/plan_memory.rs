//! `qlora plan` against the measured peak heap of real training steps (the trainer `qlora
//! train` runs) on small configurations: within 15%. `examples/plan_check.rs` runs the same
//! comparison on larger models and longer sequences in release mode.

use qlora_core::config::ModelConfig;
use qlora_core::plan::{PlanSettings, plan};
use support::alloc::mib;
use support::fixture;
use support::training_peak::{
    SYNTHETIC_30M, measure_training_peak, synthetic_model, write_long_texts,
};

#[test]
fn planned_peaks_are_within_15_percent_of_training() {
    let _alone = support::alloc::alone();
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("long.jsonl");
    write_long_texts(&data, 2);
    let small = synthetic_model(&tmp.path().join("synthetic-30M"), SYNTHETIC_30M);

    let cases = [
        (fixture("tiny-llama"), 1024, true),
        (fixture("tiny-llama"), 1024, false),
        (small.clone(), 256, true),
        (small, 256, false),
    ];
    for (i, (model, seq, checkpointing)) in cases.into_iter().enumerate() {
        let out = tmp.path().join(format!("out{i}"));
        let measured = measure_training_peak(&model, &data, &out, seq, checkpointing);
        let config = ModelConfig::load(&model).unwrap();
        let settings = PlanSettings {
            seq_len: seq,
            gradient_checkpointing: checkpointing,
            ..PlanSettings::default()
        };
        let planned = plan(&config, &settings).unwrap().peak_bytes as usize;
        let ratio = planned as f64 / measured as f64;
        eprintln!(
            "{} seq {seq} checkpointing {checkpointing}: planned {:.1} MiB, measured {:.1} MiB, ratio {ratio:.3}",
            model.file_name().unwrap().to_string_lossy(),
            mib(planned),
            mib(measured)
        );
        assert!((ratio - 1.0).abs() <= 0.15, "ratio {ratio}");
    }
}
