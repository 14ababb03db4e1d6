//! `qlora train` on several processes under Open MPI's own launcher, as a user runs it:
//! `mpirun -np 2 qlora train ...` (shared-memory transport, ranks allowed to run as root).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::qlora;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn path(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// `mpirun -np N` with the flags a container needs: no core binding, more ranks than cores
/// allowed, root allowed, shared memory without the kernel's single-copy mechanism.
pub fn mpirun(np: usize, extra_env: &[(&str, &str)]) -> Command {
    let mut cmd = Command::new("mpirun");
    cmd.args([
        "-np",
        &np.to_string(),
        "--bind-to",
        "none",
        "--oversubscribe",
    ])
    .args(["--mca", "btl", "self,vader"])
    .args(["--mca", "btl_vader_single_copy_mechanism", "none"])
    .env("OMPI_ALLOW_RUN_AS_ROOT", "1")
    .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1");
    for (k, v) in extra_env {
        cmd.env(k, v);
    }
    cmd
}

fn output(mut cmd: Command) -> (i32, String) {
    let out = cmd.output().expect("run mpirun");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout),
    )
}

/// `qlora train` on `ranks` processes (1: without mpirun) with `args`.
fn train(ranks: usize, args: &[&str], env: &[(&str, &str)]) -> (i32, String) {
    if ranks == 1 {
        let (code, _, stderr) = qlora(&[&["train"], args].concat());
        return (code, stderr);
    }
    launched(mpirun(ranks, env), args)
}

/// `qlora train args` started by the launcher command `launcher`.
fn launched(mut launcher: Command, args: &[&str]) -> (i32, String) {
    launcher
        .arg(env!("CARGO_BIN_EXE_qlora"))
        .arg("train")
        .args(args);
    output(launcher)
}

/// Every tensor of an adapter file, by name.
fn adapter(dir: &Path) -> Vec<(String, Vec<f32>)> {
    let bytes = std::fs::read(dir.join("adapter_model.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut out: Vec<(String, Vec<f32>)> = st
        .tensors()
        .into_iter()
        .map(|(name, t)| {
            let values = t
                .data()
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
                .collect();
            (name, values)
        })
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

fn max_diff(a: &[(String, Vec<f32>)], b: &[(String, Vec<f32>)]) -> f32 {
    assert_eq!(a.len(), b.len());
    let mut worst = 0f32;
    for ((na, va), (nb, vb)) in a.iter().zip(b) {
        assert_eq!(na, nb);
        for (x, y) in va.iter().zip(vb) {
            worst = worst.max((x - y).abs());
        }
    }
    worst
}

/// The loss of every step in `metrics.jsonl`.
fn losses(out: &Path) -> Vec<(u64, f64)> {
    std::fs::read_to_string(out.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            (v["step"].as_u64().unwrap(), v["loss"].as_f64().unwrap())
        })
        .collect()
}

fn common<'a>(model: &'a Path, data: &'a Path, out: &'a Path) -> Vec<&'a str> {
    vec![
        "--model",
        path(model),
        "--data",
        path(data),
        "--out",
        path(out),
        "--lora-dropout",
        "0",
        "--warmup-steps",
        "0",
    ]
}

/// 2 ranks x `--batch-size 2` train the adapter 1 process x `--batch-size 4` trains, and the
/// ranks end bit-identical to each other (the run checks their adapters' bits).
fn matches_one_process(extra: &[&str], data: &Path, launcher: Command) {
    let dir = tempfile::tempdir().unwrap();
    let model = root().join("tests/fixtures/tiny-llama");
    let (one, two) = (dir.path().join("one"), dir.path().join("two"));
    let mut args = common(&model, data, &one);
    args.extend(["--batch-size", "4"]);
    args.extend(extra);
    let (code, log) = train(1, &args, &[]);
    assert_eq!(code, 0, "{log}");
    let mut args = common(&model, data, &two);
    args.extend(["--batch-size", "2"]);
    args.extend(extra);
    let (code, log) = launched(launcher, &args);
    assert_eq!(code, 0, "{log}");
    assert!(
        log.contains("data parallel on 2 ranks")
            && log.contains("all 2 ranks hold the same adapter"),
        "{log}"
    );
    // Only rank 0 logs: one header, one closing line.
    assert_eq!(log.matches("data parallel on 2 ranks").count(), 1, "{log}");
    let diff = max_diff(&adapter(&one), &adapter(&two));
    eprintln!("2 ranks against 1 process: max |diff| {diff:e}");
    assert!(diff <= 1e-5, "max |diff| {diff}");
    // Evaluation (split across the ranks, then summed) gives the one-process loss.
    let eval = |out: &Path| -> Option<f64> {
        let text = std::fs::read_to_string(out.join("metrics.jsonl")).unwrap();
        let last: serde_json::Value = serde_json::from_str(text.lines().last()?).unwrap();
        last["eval_loss"].as_f64()
    };
    if extra.contains(&"--eval-data") {
        let (x, y) = (
            eval(&one).expect("eval_loss"),
            eval(&two).expect("eval_loss"),
        );
        eprintln!("eval loss: 1 process {x}, 2 ranks {y}");
        assert!(
            (x - y).abs() <= 1e-5 * x.abs().max(1.0),
            "eval loss {x} vs {y}"
        );
    }
    let (a, b) = (losses(&one), losses(&two));
    assert_eq!(a.len(), 5);
    for ((s, x), (_, y)) in a.iter().zip(&b) {
        assert!(
            (x - y).abs() <= 1e-5 * x.abs().max(1.0),
            "step {s}: {x} vs {y}"
        );
    }
}

#[test]
fn two_ranks_train_what_one_process_with_their_global_batch_trains() {
    let data = root().join("datasets/parity_train.jsonl");
    let eval = root().join("datasets/parity_eval.jsonl");
    matches_one_process(
        &[
            "--max-steps",
            "5",
            "--grad-accum",
            "1",
            "--no-packing",
            "--eval-data",
            path(&eval),
        ],
        &data,
        mpirun(2, &[]),
    );
}

/// DPO on 2 ranks x 2 pairs trains what one process trains on micro-batches of 4 pairs: each
/// rank's objective is the mean over its pairs, and the step averages the ranks.
#[test]
fn two_ranks_train_the_dpo_adapter_of_one_process() {
    let data = root().join("datasets/preference_train.jsonl");
    let eval = root().join("datasets/preference_eval.jsonl");
    matches_one_process(
        &[
            "--method",
            "dpo",
            "--max-steps",
            "5",
            "--grad-accum",
            "1",
            "--no-packing",
            "--eval-data",
            path(&eval),
        ],
        &data,
        mpirun(2, &[]),
    );
}

/// Records whose responses run from one word to 40, so rows and ranks hold different numbers of
/// target tokens: the loss must be normalised by the whole step's.
fn uneven_data(dir: &Path) -> PathBuf {
    let path = dir.join("uneven.jsonl");
    let words = ["alpha", "beta", "gamma", "delta", "epsilon"];
    let lines: Vec<String> = (0..64)
        .map(|i| {
            let n = 1 + (i * 7) % 40;
            let output: Vec<&str> = (0..n).map(|k| words[(i + k) % words.len()]).collect();
            serde_json::json!({"instruction": format!("Say {n} words."), "output": output.join(" ")})
                .to_string()
        })
        .collect();
    std::fs::write(&path, lines.join("\n") + "\n").unwrap();
    path
}

#[test]
fn two_ranks_match_with_packing_and_accumulation_on_uneven_targets() {
    let dir = tempfile::tempdir().unwrap();
    let data = uneven_data(dir.path());
    matches_one_process(
        &[
            "--max-steps",
            "5",
            "--grad-accum",
            "2",
            "--max-seq-len",
            "96",
        ],
        &data,
        mpirun(2, &[]),
    );
}

#[cfg(feature = "wgpu")]
#[test]
fn two_ranks_on_wgpu_train_what_one_process_trains() {
    let data = root().join("datasets/parity_train.jsonl");
    // Mesa's CPU driver is the one wgpu device here: both ranks take it.
    matches_one_process(
        &[
            "--max-steps",
            "5",
            "--grad-accum",
            "1",
            "--no-packing",
            "--device",
            "wgpu",
        ],
        &data,
        mpirun(2, &[("CUBECL_WGPU_DEFAULT_DEVICE", "Cpu")]),
    );
}

#[test]
fn a_checkpoint_of_two_ranks_resumes_on_one_process_with_the_same_losses() {
    let dir = tempfile::tempdir().unwrap();
    let model = root().join("tests/fixtures/tiny-llama");
    let data = root().join("datasets/parity_train.jsonl");
    let out = dir.path().join("run");
    let mut args = common(&model, &data, &out);
    args.extend([
        "--batch-size",
        "2",
        "--grad-accum",
        "2",
        "--max-steps",
        "6",
        "--save-steps",
        "3",
    ]);
    let (code, log) = train(2, &args, &[]);
    assert_eq!(code, 0, "{log}");
    let two = losses(&out);

    // One process with the same global batch continues from step 3.
    let checkpoint = out.join("checkpoint-3");
    let mut args = common(&model, &data, &out);
    args.extend([
        "--batch-size",
        "4",
        "--grad-accum",
        "2",
        "--max-steps",
        "6",
        "--resume",
        path(&checkpoint),
    ]);
    let (code, log) = train(1, &args, &[]);
    assert_eq!(code, 0, "{log}");
    let one = losses(&out);
    assert_eq!(one.len(), 6);
    for ((s, x), (_, y)) in two.iter().zip(&one).skip(3) {
        assert!(
            (x - y).abs() <= 1e-5 * x.abs().max(1.0),
            "step {s}: {x} vs {y}"
        );
    }

    // Another global batch is refused, naming both.
    let mut args = common(&model, &data, &out);
    args.extend([
        "--batch-size",
        "2",
        "--grad-accum",
        "2",
        "--max-steps",
        "6",
        "--resume",
        path(&checkpoint),
    ]);
    let (code, log) = train(1, &args, &[]);
    assert_ne!(code, 0);
    assert!(
        log.contains("1 rank x --batch-size 2 = 2 rows")
            && log.contains("2 ranks x --batch-size 2 = 4 rows"),
        "{log}"
    );
}

/// Ranks given different settings refuse to start, every one of them, naming the odd rank.
#[test]
fn ranks_with_different_settings_refuse_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let model = root().join("tests/fixtures/tiny-llama");
    let data = root().join("datasets/parity_train.jsonl");
    let script = format!(
        "exec {} train --model {} --data {} --out {} --max-steps 5 --lr 1e-$((4 + OMPI_COMM_WORLD_RANK))",
        env!("CARGO_BIN_EXE_qlora"),
        path(&model),
        path(&data),
        path(&dir.path().join("run"))
    );
    let mut cmd = mpirun(2, &[]);
    cmd.args(["sh", "-c", &script]);
    let (code, log) = output(cmd);
    assert_ne!(code, 0, "{log}");
    assert!(
        log.contains("rank [1] loaded another model, data or settings than rank 0"),
        "{log}"
    );
    assert!(!dir.path().join("run/metrics.jsonl").exists(), "{log}");
}

#[test]
fn a_rank_with_a_bad_data_line_ends_both_ranks_naming_itself() {
    let dir = tempfile::tempdir().unwrap();
    let model = root().join("tests/fixtures/tiny-llama");
    let good = root().join("datasets/parity_train.jsonl");
    // Rank 1 reads data-1.jsonl, whose third line is broken; rank 0 reads good data.
    let text = std::fs::read_to_string(&good).unwrap();
    let mut lines: Vec<&str> = text.lines().collect();
    lines[2] = "{\"instruction\": \"broken";
    std::fs::copy(&good, dir.path().join("data-0.jsonl")).unwrap();
    std::fs::write(dir.path().join("data-1.jsonl"), lines.join("\n")).unwrap();
    let out = dir.path().join("run");
    let script = format!(
        "exec {} train --model {} --data {}/data-$OMPI_COMM_WORLD_RANK.jsonl --out {} --max-steps 5",
        env!("CARGO_BIN_EXE_qlora"),
        path(&model),
        path(dir.path()),
        path(&out)
    );
    let mut cmd = mpirun(2, &[]);
    cmd.args(["sh", "-c", &script]);
    let start = Instant::now();
    let (code, log) = output(cmd);
    let took = start.elapsed();
    assert_ne!(code, 0, "{log}");
    assert!(took < Duration::from_secs(10), "took {took:?}: {log}");
    eprintln!("bad data line on rank 1: both ranks gone {took:?} after the start");
    let line = log
        .lines()
        .find(|l| l.starts_with("error: rank 1 of 2:"))
        .unwrap_or_else(|| panic!("{log}"));
    assert!(line.contains("data-1.jsonl:3"), "{line}");
}

/// A long 2-rank run, under way (its first checkpoint written): the job and its ranks' pids.
fn long_run(out: &Path) -> (std::process::Child, Vec<String>) {
    let model = root().join("tests/fixtures/tiny-llama");
    let data = root().join("datasets/parity_train.jsonl");
    let mut cmd = mpirun(2, &[]);
    cmd.arg(env!("CARGO_BIN_EXE_qlora"))
        .arg("train")
        .args(common(&model, &data, out))
        .args([
            "--max-steps",
            "100000",
            "--save-steps",
            "2",
            "--grad-accum",
            "1",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let job = cmd.spawn().unwrap();
    let started = Instant::now();
    while !out.join("checkpoint-2/adapter_config.json").exists() {
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "no checkpoint"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // The ranks are the qlora processes whose parent is this job's mpirun.
    let ps = Command::new("pgrep")
        .args(["-P", &job.id().to_string(), "qlora"])
        .output()
        .unwrap();
    let pids: Vec<String> = String::from_utf8_lossy(&ps.stdout)
        .lines()
        .map(str::to_string)
        .collect();
    assert_eq!(pids.len(), 2, "ranks: {pids:?}");
    (job, pids)
}

/// Whether process `pid` still runs (a zombie nobody reaps does not: in a container PID 1
/// may not reap).
fn running(pid: &String) -> bool {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let state = stat
        .rsplit(')')
        .next()
        .unwrap_or("")
        .trim_start()
        .chars()
        .next();
    !matches!(state, None | Some('Z' | 'X'))
}

/// Wait for the job and every rank to end, at most `limit` after `since`; how long it took.
fn ended(
    job: &mut std::process::Child,
    pids: &[String],
    since: Instant,
    limit: Duration,
) -> (bool, Duration, String) {
    let mut stderr = String::new();
    std::io::Read::read_to_string(job.stderr.as_mut().unwrap(), &mut stderr).unwrap();
    let status = job.wait().unwrap();
    while pids.iter().any(running) && since.elapsed() < limit {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(!pids.iter().any(running), "ranks still run: {stderr}");
    (status.success(), since.elapsed(), stderr)
}

#[test]
fn killing_one_rank_ends_the_other() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    let (mut job, pids) = long_run(&out);
    let killed = Instant::now();
    Command::new("kill")
        .args(["-9", &pids[1]])
        .status()
        .unwrap();
    let (success, took, log) = ended(&mut job, &pids, killed, Duration::from_secs(10));
    eprintln!("kill -9 of rank 1: both ranks gone {took:?} later");
    assert!(!success, "{log}");
    assert!(took < Duration::from_secs(10), "took {took:?}");
    // The last complete checkpoint stays loadable.
    assert!(out.join("checkpoint-2/adapter_config.json").is_file());
}

/// SIGTERM to one rank (as SLURM sends it to every task before preemption): all ranks stop
/// after the same step, rank 0 saves one checkpoint there, every rank exits non-zero.
#[test]
fn sigterm_checkpoints_once_and_every_rank_exits() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    let (mut job, pids) = long_run(&out);
    let sent = Instant::now();
    Command::new("kill")
        .args(["-TERM", &pids[1]])
        .status()
        .unwrap();
    let (success, took, log) = ended(&mut job, &pids, sent, Duration::from_secs(30));
    eprintln!("SIGTERM to rank 1: both ranks gone {took:?} later");
    assert!(!success, "{log}");
    let saved: Vec<&str> = log.lines().filter(|l| l.starts_with("saved ")).collect();
    let last = saved.last().unwrap_or_else(|| panic!("{log}"));
    assert!(log.contains("stopped at step"), "{log}");
    let dir = Path::new(last.trim_start_matches("saved "));
    assert!(dir.join("adapter_config.json").is_file(), "{last}");
    assert!(!log.contains("error"), "{log}");
}

/// Two network namespaces joined by a veth pair: two "machines" on one host. Removed on drop.
struct TwoHosts {
    names: [String; 2],
    addresses: [String; 2],
    subnet: String,
}

impl TwoHosts {
    fn new() -> Self {
        let id = std::process::id() % 10_000;
        let names = [format!("qlora-a-{id}"), format!("qlora-b-{id}")];
        let octet = 16 + id % 200;
        let addresses = [format!("10.{octet}.7.1"), format!("10.{octet}.7.2")];
        let (va, vb) = (format!("qva{id}"), format!("qvb{id}"));
        let hosts = TwoHosts {
            subnet: format!("10.{octet}.7.0/24"),
            names,
            addresses,
        };
        let ip = |args: &[&str]| {
            let status = Command::new("ip").args(args).status().expect("ip");
            assert!(
                status.success(),
                "ip {args:?} (network namespaces need root)"
            );
        };
        let [a, b] = &hosts.names;
        ip(&["netns", "add", a]);
        ip(&["netns", "add", b]);
        ip(&["link", "add", &va, "type", "veth", "peer", "name", &vb]);
        for (ns, dev, addr) in [(a, &va, &hosts.addresses[0]), (b, &vb, &hosts.addresses[1])] {
            ip(&["link", "set", dev, "netns", ns]);
            ip(&["-n", ns, "addr", "add", &format!("{addr}/24"), "dev", dev]);
            ip(&["-n", ns, "link", "set", dev, "up"]);
            ip(&["-n", ns, "link", "set", "lo", "up"]);
        }
        hosts
    }

    /// `mpirun` in the first namespace with a hostfile of both, starting the second host's
    /// daemon through an rsh agent that enters its namespace (where ssh would log in), and
    /// Open MPI's TCP transport restricted to the link.
    fn mpirun(&self, dir: &Path) -> Command {
        let hostfile = dir.join("hosts");
        std::fs::write(
            &hostfile,
            format!(
                "{} slots=1\n{} slots=1\n",
                self.addresses[0], self.addresses[1]
            ),
        )
        .unwrap();
        let agent = dir.join("netns-rsh");
        std::fs::write(
            &agent,
            format!(
                "#!/bin/sh\nshift\nexec ip netns exec {} sh -c \"$*\"\n",
                self.names[1]
            ),
        )
        .unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&agent, std::fs::Permissions::from_mode(0o755)).unwrap();
        let mut cmd = Command::new("ip");
        cmd.args([
            "netns",
            "exec",
            &self.names[0],
            "mpirun",
            "-np",
            "2",
            "--bind-to",
            "none",
        ])
        .args(["--hostfile", path(&hostfile)])
        .args(["--mca", "plm_rsh_agent", path(&agent)])
        .args(["--mca", "btl", "self,tcp"])
        .args(["--mca", "btl_tcp_if_include", &self.subnet])
        .args(["--mca", "oob_tcp_if_include", &self.subnet])
        .env("OMPI_ALLOW_RUN_AS_ROOT", "1")
        .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1");
        cmd
    }
}

impl Drop for TwoHosts {
    fn drop(&mut self) {
        for ns in &self.names {
            // Deleting a namespace removes its end of the veth pair, and with it the pair.
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

#[test]
fn two_machines_over_tcp_train_what_one_process_trains() {
    let dir = tempfile::tempdir().unwrap();
    let hosts = TwoHosts::new();
    let data = root().join("datasets/parity_train.jsonl");
    matches_one_process(
        &["--max-steps", "5", "--grad-accum", "1", "--no-packing"],
        &data,
        hosts.mpirun(dir.path()),
    );
}
