//! Faults the machine throws at a run, on the fixture model: a full disk during a checkpoint,
//! torn or corrupted checkpoints, a run killed without warning, too little memory. A run
//! finishes, or stops with a one-line error leaving every earlier checkpoint resumable.

use std::path::{Path, PathBuf};
use std::process::Command;

use qlora_core::train::TENSORBOARD_DIR;

use qlora_core::train::{list_checkpoints, verify_checkpoint};

use crate::common::{fixture_training, path, qlora, root, spawn_long_training, train_fixture};
#[cfg(unix)]
use crate::common::{long_training, send, wait_until};

/// `qlora train` on the fixture model, two short rows a step, a checkpoint every step, four
/// steps; `extra` flags appended (they replace the defaults here of the same name).
fn train(out: &Path, extra: &[&str]) -> (i32, String) {
    train_fixture(out, DEFAULTS, extra)
}

const DEFAULTS: &[(&str, &str)] = &[
    ("--max-seq-len", "128"),
    ("--rank", "4"),
    ("--grad-accum", "1"),
    ("--save-steps", "1"),
    ("--max-steps", "4"),
];

/// [`train`] to spawn.
fn train_command(out: &Path, extra: &[&str]) -> Command {
    fixture_training(out, DEFAULTS, extra)
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

/// The steps of `out`'s checkpoints, each verified against its manifest: a checkpoint that does
/// not verify fails the test.
fn checkpoints_all_verify(out: &Path) -> Vec<u64> {
    list_checkpoints(out)
        .into_iter()
        .map(|(step, dir)| {
            if let Err(why) = verify_checkpoint(&dir) {
                panic!("{} is torn: {why}", dir.display());
            }
            step
        })
        .collect()
}

/// Wait until a checkpoint is being written into `out` (its staging directory exists).
#[cfg(unix)]
fn wait_for_a_save(out: &Path) {
    wait_until("no checkpoint was saved", || {
        std::fs::read_dir(out).is_ok_and(|d| {
            d.flatten().any(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                name.starts_with(".checkpoint-") && name.contains(".partial-")
            })
        })
    });
}

/// SIGTERM while a checkpoint is being written (a test hook stalls each save after its
/// adapter): the save finishes, the run saves where it stops and exits 143. Ctrl-C twice
/// mid-save: exit 130 at once, the unfinished checkpoint removed. Either way no checkpoint left
/// is torn, nothing half-written remains, and the run resumes.
#[cfg(unix)]
#[test]
fn a_signal_during_a_checkpoint_never_leaves_a_torn_one() {
    use std::process::Stdio;
    let dir = tempfile::tempdir().unwrap();
    for (signals, code) in [(&["TERM"][..], 143), (&["INT", "INT"][..], 130)] {
        let out = dir.path().join(signals.join("-"));
        let child = long_training(&out, &["--save-steps", "2"])
            .env("QLORA_TEST_CHECKPOINT_PAUSE_MS", "1000")
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        wait_for_a_save(&out);
        for signal in signals {
            send(signal, child.id());
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        let started = std::time::Instant::now();
        let output = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(code), "{signals:?}: {stderr}");
        let saved = checkpoints_all_verify(&out);
        assert!(leftovers(&out).is_empty(), "{:?}", leftovers(&out));
        if signals.len() == 1 {
            // The checkpoint being written, and the one where the run stopped.
            assert_eq!(saved.len(), 2, "{saved:?}: {stderr}");
            assert!(stderr.contains("saving a checkpoint"), "{stderr}");
        } else {
            // The second signal did not wait for the stalled save.
            assert!(started.elapsed().as_millis() < 800, "{stderr}");
            assert!(saved.is_empty(), "{saved:?}: {stderr}");
            assert!(
                stderr.contains("unfinished outputs were removed"),
                "{stderr}"
            );
            continue;
        }
        let last = saved.last().unwrap();
        let (code, stderr) = train(&out, &["--resume", "--max-steps", &(last + 1).to_string()]);
        assert_eq!(code, 0, "{stderr}");
        assert!(
            stderr.contains(&format!("checkpoint-{last} at step {last}")),
            "{stderr}"
        );
    }
}

/// Runs that checkpoint every step, each `kill -9`ed at a seeded random moment (50 kills, from
/// start-up to the final adapter): after every kill each checkpoint left verifies, the next run
/// (`--resume` where a checkpoint exists) starts, and every run carried to its end has the
/// uninterrupted run's adapter bit for bit.
#[cfg(unix)]
#[test]
fn fifty_kill_9s_at_random_moments_never_leave_a_state_resume_refuses() {
    use std::process::Stdio;
    let dir = tempfile::tempdir().unwrap();
    let reference = dir.path().join("reference");
    let started = std::time::Instant::now();
    let steps = ["--max-steps", "8"];
    let (code, stderr) = train(&reference, &steps);
    assert_eq!(code, 0, "{stderr}");
    // Kills land anywhere in the first three quarters of an uninterrupted run's time: all of
    // a resumed run's, which starts later (a run that ends first is carried to the end).
    let span = started.elapsed().as_micros() as u64 * 3 / 4;
    let want = adapter(&reference);
    let out = dir.path().join("run");
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    let (mut kills, mut finished, mut resumed) = (0, 0, 0);
    // How many kills left the newest checkpoint at each step.
    let mut newest = [0; 8];
    while kills < 50 {
        let resume = !list_checkpoints(&out).is_empty();
        resumed += usize::from(resume);
        let mut command = train_command(
            &out,
            &[&steps[..], if resume { &["--resume"] } else { &[] }].concat(),
        );
        let mut child = command.stderr(Stdio::piped()).spawn().unwrap();
        // xorshift64*: a moment in [0, span).
        state ^= state >> 12;
        state ^= state << 25;
        state ^= state >> 27;
        let at = state.wrapping_mul(0x2545_f491_4f6c_dd1d) % span;
        std::thread::sleep(std::time::Duration::from_micros(at));
        if child.try_wait().unwrap().is_none() {
            send("KILL", child.id());
        }
        let output = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        match output.status.code() {
            None => kills += 1,
            Some(0) => {
                assert!(
                    adapter(&out) == want,
                    "not the uninterrupted adapter: {stderr}"
                );
                finished += 1;
                std::fs::remove_dir_all(&out).unwrap();
                continue;
            }
            Some(code) => panic!("after {kills} kills, a run exited {code}: {stderr}"),
        }
        let saved = checkpoints_all_verify(&out);
        newest[saved.last().map_or(0, |&s| s as usize)] += 1;
    }
    let resume: &[&str] = if list_checkpoints(&out).is_empty() {
        &[]
    } else {
        &["--resume"]
    };
    let (code, stderr) = train(&out, &[&steps[..], resume].concat());
    assert_eq!(code, 0, "{stderr}");
    assert!(adapter(&out) == want, "not the uninterrupted adapter");
    eprintln!(
        "{kills} kills (newest checkpoint then, by step 0-7: {newest:?}), {resumed} resumed \
         runs, {finished} carried to the end"
    );
    assert!(
        resumed > 10 && finished > 0,
        "the kills did not spread over the runs"
    );
}

/// A memory control group limited to `bytes`, for the processes started in it; removed when
/// dropped. `None` where this process may not make one (not root, no memory controller).
#[cfg(target_os = "linux")]
struct MemoryCgroup(PathBuf);

#[cfg(target_os = "linux")]
impl MemoryCgroup {
    fn new(name: &str, bytes: u64) -> Option<MemoryCgroup> {
        let own = std::fs::read_to_string("/proc/self/cgroup").ok()?;
        // cgroup v1's memory hierarchy, else the unified (v2) one.
        let (dir, limit) = own
            .lines()
            .find_map(|l| {
                let path = l.split(':').nth(2)?;
                l.split(':')
                    .nth(1)?
                    .split(',')
                    .any(|c| c == "memory")
                    .then(|| {
                        (
                            format!("/sys/fs/cgroup/memory{path}"),
                            "memory.limit_in_bytes",
                        )
                    })
            })
            .or_else(|| {
                let path = own.lines().find_map(|l| l.strip_prefix("0::"))?;
                Some((format!("/sys/fs/cgroup{path}"), "memory.max"))
            })?;
        let dir = Path::new(&dir).join(format!("qlora-test-{name}-{}", std::process::id()));
        let made = std::fs::create_dir(&dir).is_ok()
            && std::fs::write(dir.join(limit), bytes.to_string()).is_ok();
        // No swap to escape to where the controller has the setting.
        let _ = std::fs::write(dir.join("memory.memsw.limit_in_bytes"), bytes.to_string());
        let _ = std::fs::write(dir.join("memory.swap.max"), "0");
        if !made {
            let _ = std::fs::remove_dir(&dir);
            eprintln!("skipped: cannot make a memory control group here (CI runs as root and can)");
            return None;
        }
        Some(MemoryCgroup(dir))
    }

    /// `command` started inside the group (a shell moves itself in, then runs it).
    fn spawn(&self, command: &Command) -> std::process::Child {
        let mut line = format!(
            "echo $$ > '{}' && exec",
            self.0.join("cgroup.procs").display()
        );
        line.push_str(&format!(" '{}'", command.get_program().to_string_lossy()));
        for arg in command.get_args() {
            line.push_str(&format!(" '{}'", arg.to_string_lossy()));
        }
        Command::new("sh")
            .args(["-c", &line])
            .env("HF_HUB_OFFLINE", "1")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    }
}

#[cfg(target_os = "linux")]
impl Drop for MemoryCgroup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(&self.0);
    }
}

/// Under a control group whose memory limit is below the plan's peak, `train` refuses before
/// loading with both figures; with `--ignore-memory-check` the kernel kills it for memory, and
/// the next `--resume` (with room) says the previous run ended without a checkpoint.
#[cfg(target_os = "linux")]
#[test]
fn a_memory_limit_below_the_plan_is_refused_and_an_oom_kill_is_reported() {
    use std::os::unix::process::ExitStatusExt;
    let dir = tempfile::tempdir().unwrap();
    // Rows long enough that a step takes tens of MiB (the fixture's context, 256 tokens, is
    // packed full), 40 MiB for the whole process.
    let data = dir.path().join("long.jsonl");
    let rows: String = (0..8)
        .map(|r| {
            let words: Vec<String> = (0..3000)
                .map(|i| ((i * 7919 + r) % 100_000).to_string())
                .collect();
            format!("{{\"text\": \"{}\"}}\n", words.join(" "))
        })
        .collect();
    std::fs::write(&data, rows).unwrap();
    let Some(group) = MemoryCgroup::new("oom", 40 << 20) else {
        return;
    };
    let out = dir.path().join("run");
    let data = path(&data);
    let flags = ["--data", &data, "--max-seq-len", "8192", "--max-steps"];
    let (code, stderr) = train(&out, &[&flags[..], &["2"]].concat());
    assert_eq!(code, 0, "{stderr}");
    let mut more = flags.to_vec();
    more.extend(["4", "--resume"]);

    let output = group
        .spawn(&train_command(&out, &more))
        .wait_with_output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    let last = stderr.trim().lines().last().unwrap();
    assert!(
        last.contains("the run's planned peak is")
            && last.contains("the control group's limit 40.0 MiB")
            && last.contains("--ignore-memory-check"),
        "{stderr}"
    );
    assert!(!stderr.contains("training:"), "it loaded: {stderr}");

    more.push("--ignore-memory-check");
    let output = group
        .spawn(&train_command(&out, &more))
        .wait_with_output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(
        output.status.signal(),
        Some(9),
        "not killed for memory: {stderr}"
    );

    let (code, stderr) = train(&out, &more[..more.len() - 1]);
    assert_eq!(code, 0, "{stderr}");
    assert!(
        stderr.contains("the previous run ended without a checkpoint after step 1"),
        "{stderr}"
    );
}

/// The output directory turned read-only (a read-only bind mount over it) or deleted while a
/// run writes into it: the run stops at its next checkpoint or step with a one-line error
/// naming the directory, no panic; the checkpoint it already had still verifies and resumes.
#[cfg(target_os = "linux")]
#[test]
fn an_output_that_turns_read_only_or_vanishes_stops_the_run_with_one_line() {
    use std::process::Stdio;
    let dir = tempfile::tempdir().unwrap();
    let wait_for_checkpoint = |out: &Path| {
        wait_until("no checkpoint was saved", || {
            !list_checkpoints(out).is_empty()
        })
    };
    let finish = |child: std::process::Child| {
        let output = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
        assert_eq!(output.status.code(), Some(1), "{stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
        stderr.trim().lines().last().unwrap().to_string()
    };

    let out = dir.path().join("read-only");
    let child = long_training(&out, &["--save-steps", "3"])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for_checkpoint(&out);
    let mounted = Command::new("mount")
        .arg("--bind")
        .args([&out, &out])
        .status()
        .is_ok_and(|s| s.success());
    if !mounted {
        eprintln!("skipped the read-only case: cannot mount here (CI runs as root and can)");
        send("KILL", child.id());
        child.wait_with_output().unwrap();
    } else {
        let status = Command::new("mount")
            .args(["-o", "remount,bind,ro"])
            .arg(&out)
            .status()
            .unwrap();
        let last = finish(child);
        let _ = Command::new("umount").arg(&out).status();
        assert!(status.success());
        assert!(
            last.contains("checkpoint-6: cannot write this checkpoint")
                && last.contains("Read-only file system")
                && last.contains("checkpoint-3)"),
            "{last}"
        );
        assert_eq!(checkpoints_all_verify(&out), [3]);
        let (code, stderr) = train(&out, &["--resume", "--max-steps", "4"]);
        assert_eq!(code, 0, "{stderr}");
    }

    let out = dir.path().join("deleted");
    let child = long_training(&out, &["--save-steps", "3"])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_for_checkpoint(&out);
    std::fs::remove_dir_all(&out).unwrap();
    let last = finish(child);
    assert!(
        last.contains(&format!(
            "{}: the output directory was deleted",
            out.display()
        )),
        "{last}"
    );
    assert!(!out.exists(), "the run made {out:?} again");
}

/// A model directory on a read-only mount trains (nothing is written beside the model); an
/// output asked for inside it is refused in one line naming the path; a dataset cut off in
/// the middle of a record (truncated as it was copied) is refused naming its file and line.
#[cfg(target_os = "linux")]
#[test]
fn a_read_only_model_trains_and_a_truncated_dataset_is_refused_by_line() {
    let dir = tempfile::tempdir().unwrap();
    let (copy, model) = (dir.path().join("copy"), dir.path().join("model"));
    std::fs::create_dir_all(&copy).unwrap();
    std::fs::create_dir_all(&model).unwrap();
    for e in std::fs::read_dir(root().join("tests/fixtures/tiny-llama"))
        .unwrap()
        .flatten()
    {
        std::fs::copy(e.path(), copy.join(e.file_name())).unwrap();
    }
    let data = std::fs::read_to_string(root().join("datasets/parity_train.jsonl")).unwrap();
    let cut = dir.path().join("cut.jsonl");
    std::fs::write(&cut, &data[..data.len() / 2]).unwrap();
    let line = data[..data.len() / 2].lines().count();
    let (code, stderr) = train(&dir.path().join("cut"), &["--data", &path(&cut)]);
    assert_eq!(code, 1, "{stderr}");
    let last = stderr.trim().lines().last().unwrap();
    assert!(
        last.contains(&format!("cut.jsonl:{line}: ")) && last.contains("ends inside this record"),
        "{stderr}"
    );

    let mounted = Command::new("mount")
        .arg("--bind")
        .args([&copy, &model])
        .status()
        .is_ok_and(|s| s.success());
    if !mounted {
        eprintln!("skipped the read-only model: cannot mount here (CI runs as root and can)");
        return;
    }
    struct Unmount<'a>(&'a Path);
    impl Drop for Unmount<'_> {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg(self.0).status();
        }
    }
    let _unmount = Unmount(&model);
    let status = Command::new("mount")
        .args(["-o", "remount,bind,ro"])
        .arg(&model)
        .status()
        .unwrap();
    assert!(status.success());
    let (code, stderr) = train(
        &dir.path().join("run"),
        &["--model", &path(&model), "--max-steps", "2"],
    );
    assert_eq!(code, 0, "{stderr}");
    let inside = path(&model.join("nf4"));
    let (code, _, stderr) = qlora(&["quantize", "--model", &path(&model), "--out", &inside]);
    assert_eq!(code, 1, "{stderr}");
    assert!(
        stderr.trim().lines().count() == 1 && stderr.contains("Read-only file system"),
        "{stderr}"
    );
}

/// An allocation the machine refuses (here `ulimit -v` of 1 GB under an 8B-shaped benchmark,
/// whose embedding alone is 2 GB) ends with a one-line error and exit 1, not Rust's abort.
#[cfg(unix)]
#[test]
fn an_allocation_that_fails_ends_with_one_line_not_an_abort() {
    let output = Command::new("sh")
        .args(["-c", "ulimit -v 1000000 && exec \"$0\" \"$@\""])
        .arg(env!("CARGO_BIN_EXE_qlora"))
        .args([
            "bench",
            "--shape",
            "llama-3.1-8b",
            "--device",
            "cpu",
            "--steps",
            "1",
        ])
        .args(["--seq-len", "64"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    let last = stderr.trim().lines().last().unwrap();
    assert!(
        last.starts_with("error: out of memory: allocating ") && last.contains("qlora plan"),
        "{stderr}"
    );
}
