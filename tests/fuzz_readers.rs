//! Every reader of user files against a few hundred mutated inputs each (seeded, so a run is
//! repeatable): no panic, no input over a second, no allocation far beyond the input's size.
//! `cargo run --release --example fuzz_readers -- EXECS` runs as many as asked.

mod common;

use common::alloc::Counting;
use common::fuzz::{fuzz, targets};

#[global_allocator]
static ALLOCATOR: Counting = Counting;

#[test]
fn readers_survive_mutated_inputs() {
    let work = tempfile::tempdir().unwrap();
    let mut failures = Vec::new();
    for (i, target) in targets(work.path()).iter().enumerate() {
        let report = fuzz(target, 300, 0x5eed + i as u64);
        eprintln!(
            "{:<32} {:>6} inputs, {:>5.1}% rejected, {:>8.0}/s, slowest {:?}, {} findings",
            target.name,
            report.execs,
            100.0 * report.rejected as f64 / report.execs as f64,
            report.execs as f64 / report.seconds,
            report.slowest,
            report.findings.len()
        );
        for (k, f) in report.findings.into_iter().enumerate() {
            // Kept for reproducing: the input that failed, in full.
            let saved = std::env::temp_dir()
                .join("qlora-fuzz-findings")
                .join(format!(
                    "{}-{k}",
                    target.name.replace([' ', '(', ')', '/'], "_")
                ));
            std::fs::create_dir_all(saved.parent().unwrap()).unwrap();
            std::fs::write(&saved, &f.input).unwrap();
            failures.push(format!(
                "{}: {} ({}), input saved in {}",
                target.name,
                f.kind,
                f.detail,
                saved.display()
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
