//! A long mutation-fuzzing run over every reader of user files (see `tests/common/fuzz.rs`):
//! inputs per second, rejected share, slowest input, largest allocation, and findings per
//! reader. Inputs that fail are saved under `$TMPDIR/qlora-fuzz-findings/`.
//!
//! Run: `cargo run --release --example fuzz_readers -- [EXECS_PER_READER] [SEED] [NAME_FILTER]`
//! (default 1,000,000 inputs per reader, seed 1).

use support::alloc::{Counting, mib};
use support::fuzz::{fuzz, targets};

#[global_allocator]
static ALLOC: Counting = Counting;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let execs: u64 = args.get(1).map_or(1_000_000, |a| a.parse().expect("EXECS"));
    let seed: u64 = args.get(2).map_or(1, |a| a.parse().expect("SEED"));
    let filter = args.get(3).cloned().unwrap_or_default();
    let work = tempfile::tempdir().expect("tempdir");
    let saved = std::env::temp_dir().join("qlora-fuzz-findings");
    println!(
        "{:<32} {:>10} {:>9} {:>9} {:>10} {:>9} {:>8}",
        "reader", "inputs", "inputs/s", "rejected", "slowest", "max MiB", "findings"
    );
    let mut total = 0;
    for (i, target) in targets(work.path()).iter().enumerate() {
        if !target.name.contains(&filter) {
            continue;
        }
        let report = fuzz(target, execs, seed.wrapping_mul(1000) + i as u64);
        println!(
            "{:<32} {:>10} {:>9.0} {:>8.1}% {:>10.1?} {:>9.1} {:>8}",
            target.name,
            report.execs,
            report.execs as f64 / report.seconds,
            100.0 * report.rejected as f64 / report.execs as f64,
            report.slowest,
            mib(report.most_memory),
            report.findings.len()
        );
        for (k, f) in report.findings.iter().enumerate() {
            std::fs::create_dir_all(&saved).expect("findings directory");
            let path = saved.join(format!(
                "{}-{k}",
                target.name.replace([' ', '(', ')', '/'], "_")
            ));
            std::fs::write(&path, &f.input).expect("save finding");
            println!("    {}: {} ({})", f.kind, f.detail, path.display());
        }
        total += report.findings.len();
    }
    println!("findings: {total}");
}
