//! Running the `qlora` binary the way a user does.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

/// Exit code, stdout and stderr of `qlora ARGS`.
pub fn qlora(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_qlora"))
        .args(args)
        // No test reaches the Hugging Face Hub.
        .env("HF_HUB_OFFLINE", "1")
        .output()
        .expect("run qlora");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `qlora ARGS` with `env` set and the Hugging Face variables of the test machine cleared.
pub fn qlora_env(args: &[&str], env: &[(&str, &Path)]) -> (i32, String, String) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_qlora"));
    command.args(args);
    for var in [
        "HF_HUB_CACHE",
        "HUGGINGFACE_HUB_CACHE",
        "HF_HOME",
        "XDG_CACHE_HOME",
        "HF_ENDPOINT",
        "HF_TOKEN",
        "HF_HUB_OFFLINE",
    ] {
        command.env_remove(var);
    }
    // No test reaches the Hub: only those that start their own server name an endpoint.
    if !env.iter().any(|(name, _)| *name == "HF_ENDPOINT") {
        command.env("HF_HUB_OFFLINE", "1");
    }
    for (name, value) in env {
        command.env(name, value);
    }
    let out = command.output().expect("run qlora");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Whether Python has `module` (for checks with the reference tools). Under `CI=true` it must:
/// CI installs what the tests read our files with.
pub fn python_has(module: &str) -> bool {
    let has = Command::new("python3")
        .args(["-c", &format!("import {module}")])
        .output()
        .is_ok_and(|o| o.status.success());
    if !has {
        let ci = std::env::var("CI").is_ok_and(|v| v == "true" || v == "1");
        assert!(!ci, "CI must have Python's {module} (pip install {module})");
        eprintln!("skipping the check with Python's {module}: not installed");
    }
    has
}

/// What the Python `script` prints given `args` (offline), as JSON; a failure shows its stderr.
pub fn python_json(script: &str, args: &[&std::ffi::OsStr]) -> serde_json::Value {
    let out = Command::new("python3")
        .env("HF_HUB_OFFLINE", "1")
        .args(["-c", script])
        .args(args)
        .output()
        .expect("run python3");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("JSON from the script")
}

/// The repository's root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// `p` as an argument.
pub fn path(p: &Path) -> String {
    p.to_str().unwrap().to_string()
}

/// `qlora train` on the fixture model and `datasets/parity_train.jsonl` into `out` with the
/// `defaults` flags, those `extra` names (`--model` and `--data` too) replaced by `extra`: exit
/// code and stderr.
pub fn train_fixture(out: &Path, defaults: &[(&str, &str)], extra: &[&str]) -> (i32, String) {
    let output = fixture_training(out, defaults, extra)
        .output()
        .expect("run qlora");
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// [`train_fixture`] to spawn.
pub fn fixture_training(out: &Path, defaults: &[(&str, &str)], extra: &[&str]) -> Command {
    let model = path(&root().join("tests/fixtures/tiny-llama"));
    let data = path(&root().join("datasets/parity_train.jsonl"));
    let out = path(out);
    let mut args = vec!["train", "--out", &out];
    for &(flag, value) in [("--model", model.as_str()), ("--data", &data)]
        .iter()
        .chain(defaults)
    {
        if !extra.contains(&flag) {
            args.extend([flag, value]);
        }
    }
    args.extend_from_slice(extra);
    let mut command = Command::new(env!("CARGO_BIN_EXE_qlora"));
    command
        .args(args)
        .env("HF_HUB_OFFLINE", "1")
        .stdout(Stdio::null());
    command
}

/// `qlora train` on the fixture model for 100,000 steps into `out`, logging every step, with
/// `extra` flags, to spawn.
pub fn long_training(out: &Path, extra: &[&str]) -> Command {
    let defaults = [
        ("--max-seq-len", "128"),
        ("--rank", "4"),
        ("--grad-accum", "1"),
        ("--max-steps", "100000"),
        ("--logging-steps", "1"),
    ];
    fixture_training(out, &defaults, extra)
}

/// Poll `done` until it holds; fails the test with `what` after two minutes.
pub fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let started = std::time::Instant::now();
    while !done() {
        assert!(started.elapsed().as_secs() < 120, "{what}");
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
}

/// Wait until `out`'s metrics log `lines` steps (the run is training).
pub fn wait_for_steps(out: &Path, lines: usize) {
    let metrics = out.join("metrics.jsonl");
    wait_until("training never started", || {
        std::fs::read_to_string(&metrics).map_or(0, |m| m.lines().count()) >= lines
    });
}

/// Start [`long_training`] and return once `lines` steps are logged.
pub fn spawn_long_training(out: &Path, extra: &[&str], lines: usize, stderr: Stdio) -> Child {
    let child = long_training(out, extra).stderr(stderr).spawn().unwrap();
    wait_for_steps(out, lines);
    child
}

/// Send `signal` (a `kill` name: TERM, INT, KILL) to process `pid`.
#[cfg(unix)]
pub fn send(signal: &str, pid: u32) {
    let status = Command::new("kill")
        .args([&format!("-{signal}"), &pid.to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}
