//! Faults the machine throws at a run, on the fixture model: a full disk during a checkpoint,
//! torn or corrupted checkpoints, a run killed without warning, too little memory. A run
//! finishes, or stops with a one-line error leaving every earlier checkpoint resumable.

use std::path::{Path, PathBuf};
use std::process::Command;

use qlora_core::train::TENSORBOARD_DIR;

use crate::common::{path, qlora, root, spawn_long_training, train_fixture};

/// `qlora train` on the fixture model, two short rows a step, a checkpoint every step, four
/// steps; `extra` flags appended (they replace the defaults here of the same name).
fn train(out: &Path, extra: &[&str]) -> (i32, String) {
    train_fixture(
        out,
        &[
            ("--max-seq-len", "128"),
            ("--rank", "4"),
            ("--grad-accum", "1"),
            ("--save-steps", "1"),
            ("--max-steps", "4"),
        ],
        extra,
    )
}

fn adapter(out: &Path) -> Vec<u8> {
    std::fs::read(out.join("adapter_model.safetensors")).unwrap()
}

/// Names in `dir` that are staging or lock leftovers.
fn leftovers(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".partial-") || n.ends_with(".old"))
        .collect()
}

/// The newest checkpoint torn three ways (a flipped byte in the optimizer state, no manifest, a
/// truncated adapter): `--resume` skips it saying why, continues from the one before, and ends
/// on the uninterrupted run's adapter bit for bit; `--resume` naming it is refused.
#[test]
fn a_torn_newest_checkpoint_is_skipped_and_resume_matches_the_uninterrupted_run() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    let (code, stderr) = train(&out, &[]);
    assert_eq!(code, 0, "{stderr}");
    let want = adapter(&out);
    let newest = out.join("checkpoint-3");
    let pristine = dir.path().join("pristine");
    std::fs::create_dir(&pristine).unwrap();
    for e in std::fs::read_dir(&newest).unwrap().flatten() {
        std::fs::copy(e.path(), pristine.join(e.file_name())).unwrap();
    }
    type Damage<'a> = &'a dyn Fn(&Path);
    let tear: [(&str, Damage, &str); 3] = [
        (
            "a flipped byte in the optimizer state",
            &|d| {
                let file = d.join("optimizer.safetensors");
                let mut bytes = std::fs::read(&file).unwrap();
                let at = bytes.len() - 7;
                bytes[at] ^= 0x10;
                std::fs::write(&file, bytes).unwrap();
            },
            "optimizer.safetensors does not match its checksum",
        ),
        (
            "no manifest",
            &|d| std::fs::remove_file(d.join("checkpoint_manifest.json")).unwrap(),
            "has no checkpoint_manifest.json",
        ),
        (
            "a truncated adapter",
            &|d| {
                let file = d.join("adapter_model.safetensors");
                let bytes = std::fs::read(&file).unwrap();
                std::fs::write(&file, &bytes[..bytes.len() / 2]).unwrap();
            },
            "adapter_model.safetensors is",
        ),
    ];
    for (what, damage, reason) in tear {
        for e in std::fs::read_dir(&pristine).unwrap().flatten() {
            std::fs::copy(e.path(), newest.join(e.file_name())).unwrap();
        }
        damage(&newest);
        let (code, stderr) = train(&out, &["--resume", &path(&newest)]);
        assert_ne!(code, 0, "{what}: resumed from a torn checkpoint");
        assert!(
            stderr.contains("cannot resume from this checkpoint") && stderr.contains(reason),
            "{what}: {stderr}"
        );
        let (code, stderr) = train(&out, &["--resume"]);
        assert_eq!(code, 0, "{what}: {stderr}");
        assert!(
            stderr.contains("warning: skipping") && stderr.contains(reason),
            "{what}: {stderr}"
        );
        assert!(
            stderr.contains("checkpoint-2 at step 2"),
            "{what}: {stderr}"
        );
        assert!(
            adapter(&out) == want,
            "{what}: not the uninterrupted adapter"
        );
    }
}

/// A run killed without warning (as the kernel's OOM killer does, SIGKILL) leaves its output
/// lock behind unreleased, which never blocks the next run; `--resume` says the run ended
/// without a checkpoint after the last step it logged and goes on from the last checkpoint.
#[cfg(unix)]
#[test]
fn a_killed_run_is_reported_by_the_next_resume() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    // Past the first checkpoint and two steps beyond it.
    let mut child =
        spawn_long_training(&out, &["--save-steps", "4"], 6, std::process::Stdio::null());
    let metrics = out.join("metrics.jsonl");
    child.kill().unwrap();
    child.wait().unwrap();
    let logged = std::fs::read_to_string(&metrics).unwrap().lines().count();
    let (code, stderr) = train(
        &out,
        &[
            "--resume",
            "--max-steps",
            &(logged + 4).to_string(),
            "--save-steps",
            "4",
        ],
    );
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stderr.contains("the previous run ended without a checkpoint after step"),
        "{stderr}"
    );
    assert!(leftovers(&out).is_empty(), "{:?}", leftovers(&out));
}

/// A tmpfs of `kib` KiB mounted at `dir`, unmounted when dropped; `None` where this process
/// may not mount (not root): the tests that need one say so and pass.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(dir: &Path, kib: u64) -> Option<Tmpfs> {
        std::fs::create_dir_all(dir).unwrap();
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={kib}k"), "tmpfs"])
            .arg(dir)
            .stderr(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            eprintln!("skipped: cannot mount a tmpfs here (CI runs as root and can)");
        }
        ok.then(|| Tmpfs(dir.to_path_buf()))
    }

    fn resize(&self, kib: u64) {
        let status = Command::new("mount")
            .args(["-o", &format!("remount,size={kib}k")])
            .arg(&self.0)
            .status()
            .unwrap();
        assert!(status.success());
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// 4 KiB pages the files under `dir` take on a tmpfs.
fn pages(dir: &Path) -> u64 {
    let mut total = 0;
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let meta = e.metadata().unwrap();
        total += if meta.is_dir() {
            pages(&e.path())
        } else {
            meta.len().div_ceil(4096)
        };
    }
    total
}

/// The disk fills while the third checkpoint is written: the run stops with an error naming
/// the checkpoint and the room it needs, leaves no partial checkpoint, the first two verify,
/// and once the mount is enlarged `--resume` ends on the uninterrupted run's adapter.
#[cfg(unix)]
#[test]
fn a_disk_that_fills_during_a_checkpoint_stops_the_run_resumably() {
    let dir = tempfile::tempdir().unwrap();
    let reference = dir.path().join("reference");
    let (code, stderr) = train(&reference, &[]);
    assert_eq!(code, 0, "{stderr}");
    let want = adapter(&reference);
    // What the output holds when the third checkpoint starts, and half that checkpoint.
    let before: u64 = ["checkpoint-1", "checkpoint-2", TENSORBOARD_DIR]
        .iter()
        .map(|d| pages(&reference.join(d)))
        .sum::<u64>()
        + 2;
    let third = pages(&reference.join("checkpoint-3"));
    let Some(mount) = Tmpfs::mount(&dir.path().join("mnt"), 4 * (before + third / 2)) else {
        return;
    };
    let out = mount.0.join("run");
    let (code, stderr) = train(&out, &[]);
    assert_eq!(code, 1, "{stderr}");
    let last = stderr.trim().lines().last().unwrap();
    assert!(
        last.contains("checkpoint-3")
            && last.contains("no space left on the device writing this checkpoint")
            && last.contains("it needs about")
            && last.contains("checkpoint-2"),
        "{stderr}"
    );
    assert!(!out.join("checkpoint-3").exists());
    assert!(leftovers(&out).is_empty(), "{:?}", leftovers(&out));
    mount.resize(64 << 10);
    let (code, stderr) = train(&out, &["--resume"]);
    assert_eq!(code, 0, "{stderr}");
    assert!(stderr.contains("checkpoint-2 at step 2"), "{stderr}");
    assert!(adapter(&out) == want, "not the uninterrupted adapter");
}

/// `quantize`, `merge` and `export-gguf` onto a disk too small for their output: one-line
/// error, and nothing left behind (no partial output, no lock).
#[cfg(unix)]
#[test]
fn outputs_that_do_not_fit_leave_nothing_behind() {
    let dir = tempfile::tempdir().unwrap();
    let Some(mount) = Tmpfs::mount(&dir.path().join("mnt"), 64) else {
        return;
    };
    let model = path(&root().join("tests/fixtures/tiny-llama"));
    let lora = path(&root().join("tests/fixtures/tiny-llama-lora"));
    for (name, args) in [
        ("quantize", vec!["quantize", "--model", &model]),
        (
            "merge",
            vec!["merge", "--model", &model, "--adapter", &lora],
        ),
        (
            "export-gguf",
            vec!["export-gguf", "--model", &model, "--adapter", &lora],
        ),
    ] {
        let out = mount.0.join(name);
        let mut args = args.clone();
        let out_arg = path(&out);
        args.extend(["--out", &out_arg]);
        let (code, _, stderr) = qlora(&args);
        assert_eq!(code, 1, "{name}: {stderr}");
        assert!(
            stderr.trim().lines().count() == 1 && stderr.contains("No space left on device"),
            "{name}: {stderr}"
        );
        let left: Vec<_> = std::fs::read_dir(&mount.0).unwrap().flatten().collect();
        assert!(left.is_empty(), "{name} left {left:?}");
    }
}

/// A run whose planned peak exceeds the memory available is refused before loading, with both
/// figures and what would fit; `--ignore-memory-check` starts it anyway.
#[test]
fn a_run_that_cannot_fit_in_memory_is_refused_before_loading() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    // Rows of 2^20 tokens, 4096 of them at once: far past any machine's memory.
    let huge = ["--max-seq-len", "1048576", "--batch-size", "4096"];
    let (code, stderr) = train(&out, &huge);
    assert_eq!(code, 1, "{stderr}");
    let last = stderr.trim().lines().last().unwrap();
    assert!(
        last.contains("the run's planned peak is")
            && last.contains("is available (")
            && last.contains("--ignore-memory-check"),
        "{stderr}"
    );
    assert!(!out.exists(), "a refused run wrote {out:?}");
}
