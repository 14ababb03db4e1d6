//! Before a run loads anything: does its planned peak fit the memory it may use? The device's
//! memory on a GPU; on the CPU the host's available memory (`MemAvailable`) or, when the process
//! runs in a control group with a limit (cgroup v2 `memory.max`, v1 `memory.limit_in_bytes`),
//! what the tightest limit leaves, whichever is smaller.

use std::path::{Path, PathBuf};

use super::config::TrainConfig;
use crate::config::ModelConfig;
use crate::device::{DeviceChoice, memory_capacity};
use crate::dtype::ComputeDtype;
use crate::durable::human_bytes;
use crate::error::{Error, Result};
use crate::plan::{PlanSettings, alternatives, load_config, plan};

/// Memory a run may use, and where the figure comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Available {
    /// Bytes.
    pub bytes: u64,
    /// What limits it: `MemAvailable`, a cgroup's limit, the device's memory.
    pub source: String,
}

/// Limits above this are "no limit" (cgroup v1 writes a page-rounded `i64::MAX`).
const UNLIMITED: u64 = 1 << 60;

fn read_u64(path: &Path) -> Option<u64> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// The tightest limit of the control groups holding this process, less their usage: each
/// ancestor of its group in each hierarchy, under `root` (`/sys/fs/cgroup`) as `/proc/self/
/// cgroup` (`cgroups`) names them.
fn cgroup_room(root: &Path, cgroups: &str) -> Option<Available> {
    let mut best: Option<Available> = None;
    for line in cgroups.lines() {
        let mut parts = line.splitn(3, ':');
        let (Some(_), Some(controllers), Some(path)) = (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        // v2 (one unified hierarchy, no controller list) or v1's memory hierarchy.
        let (base, limit_file, usage_file) = if controllers.is_empty() {
            let unified = if root.join("cgroup.controllers").exists() {
                root.to_path_buf()
            } else {
                root.join("unified")
            };
            (unified, "memory.max", "memory.current")
        } else if controllers.split(',').any(|c| c == "memory") {
            (
                root.join("memory"),
                "memory.limit_in_bytes",
                "memory.usage_in_bytes",
            )
        } else {
            continue;
        };
        let mut dir: PathBuf = base.join(path.trim_start_matches('/'));
        loop {
            if let Some(limit) = read_u64(&dir.join(limit_file)).filter(|&l| l < UNLIMITED) {
                let used = read_u64(&dir.join(usage_file)).unwrap_or(0);
                let room = limit.saturating_sub(used);
                if best.as_ref().is_none_or(|b| room < b.bytes) {
                    best = Some(Available {
                        bytes: room,
                        source: format!(
                            "the control group's limit {} ({}) less {} in use",
                            human_bytes(limit),
                            dir.join(limit_file).display(),
                            human_bytes(used)
                        ),
                    });
                }
            }
            if dir == base || !dir.pop() || !dir.starts_with(&base) {
                break;
            }
        }
    }
    best
}

/// `MemAvailable` of a `/proc/meminfo` text, in bytes.
fn mem_available(meminfo: &str) -> Option<u64> {
    let line = meminfo.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Memory this process may use on the host: the smaller of `MemAvailable` and the room its
/// control groups leave.
pub fn host_available() -> Option<Available> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let host = mem_available(&meminfo).map(|bytes| Available {
        bytes,
        source: "MemAvailable in /proc/meminfo".into(),
    });
    let cgroups = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
    let group = cgroup_room(Path::new("/sys/fs/cgroup"), &cgroups);
    match (host, group) {
        (Some(h), Some(g)) => Some(if g.bytes < h.bytes { g } else { h }),
        (h, g) => h.or(g),
    }
}

impl TrainConfig {
    /// The plan of this run on `device` (rows of `--max-seq-len` tokens): the model's shape,
    /// the settings planned and the peak; `None` when the model's config cannot be read.
    fn run_plan(&self, device: DeviceChoice) -> Result<Option<(ModelConfig, PlanSettings, u64)>> {
        let compute_bytes = if device == DeviceChoice::Cpu {
            4
        } else {
            ComputeDtype::resolve(self.compute_dtype, &device.device()?)?.size() as u64
        };
        let Ok(config) = load_config(&self.model.to_string_lossy()) else {
            return Ok(None);
        };
        let mut settings = self.plan_settings(self.max_seq_len, compute_bytes)?;
        // On a GPU a paged optimizer without a budget keeps on the device what the step leaves.
        if device != DeviceChoice::Cpu
            && self.optim.paged()
            && self.optim_device_budget_mb.is_none()
        {
            settings.optimizer_device_budget = Some(0);
        }
        let peak = plan(&config, &settings)?.peak_bytes;
        Ok(Some((config, settings, peak)))
    }

    /// `qlora plan`'s peak for this run on `device`, to set beside the measured one.
    pub fn planned_peak(&self, device: DeviceChoice) -> Option<u64> {
        self.run_plan(device)
            .ok()
            .flatten()
            .map(|(_, _, peak)| peak)
    }

    /// Refuse a run whose planned peak (rows of `--max-seq-len` tokens) exceeds the memory
    /// available on `device`, naming both figures and the changes that would fit; otherwise
    /// the planned peak. A run whose memory or plan cannot be known passes.
    pub fn check_memory(&self, device: DeviceChoice) -> Result<Option<u64>> {
        let Some((config, settings, peak)) = self.run_plan(device)? else {
            return Ok(None);
        };
        let available = if device == DeviceChoice::Cpu {
            host_available()
        } else {
            memory_capacity(&device.device()?).map(|bytes| Available {
                bytes,
                source: "the device's memory".into(),
            })
        };
        let Some(available) = available.filter(|a| peak > a.bytes) else {
            return Ok(Some(peak));
        };
        let options = alternatives(&config, &settings);
        let fitting: Vec<String> = options
            .iter()
            .filter(|(_, p)| *p <= available.bytes)
            .map(|(label, p)| {
                format!(
                    "{} ({})",
                    label.replace("--seq-len", "--max-seq-len"),
                    human_bytes(*p)
                )
            })
            .collect();
        let advice = if fitting.is_empty() {
            "no single change the planner knows fits; combine them (`qlora plan` shows each)"
                .to_string()
        } else {
            format!("these fit: {}", fitting.join(", "))
        };
        Err(Error::invalid(format!(
            "the run's planned peak is {} but {} is available ({}); {advice}; or pass \
             --ignore-memory-check to run anyway",
            human_bytes(peak),
            human_bytes(available.bytes),
            available.source
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_tightest_cgroup_limit_counts() {
        let root = tempfile::tempdir().unwrap();
        let v1 = root.path().join("memory/jobs/run");
        std::fs::create_dir_all(&v1).unwrap();
        std::fs::write(v1.join("memory.limit_in_bytes"), "9223372036854771712\n").unwrap();
        std::fs::write(
            root.path().join("memory/jobs/memory.limit_in_bytes"),
            "1073741824\n",
        )
        .unwrap();
        std::fs::write(
            root.path().join("memory/jobs/memory.usage_in_bytes"),
            "268435456\n",
        )
        .unwrap();
        let got = cgroup_room(root.path(), "4:memory:/jobs/run\n1:cpu:/\n").unwrap();
        assert_eq!(got.bytes, 768 << 20);
        assert!(got.source.contains("1.0 GiB"), "{}", got.source);

        // cgroup v2: memory.max of the group, "max" meaning none.
        let v2 = root.path().join("v2");
        std::fs::create_dir_all(v2.join("a/b")).unwrap();
        std::fs::write(v2.join("cgroup.controllers"), "memory\n").unwrap();
        std::fs::write(v2.join("a/b/memory.max"), "max\n").unwrap();
        std::fs::write(v2.join("a/memory.max"), "536870912\n").unwrap();
        std::fs::write(v2.join("a/memory.current"), "0\n").unwrap();
        assert_eq!(cgroup_room(&v2, "0::/a/b\n").unwrap().bytes, 512 << 20);
        assert!(cgroup_room(&v2, "0::/\n").is_none());
        assert_eq!(
            mem_available("MemTotal: 10 kB\nMemAvailable:   2048 kB\n"),
            Some(2 << 20)
        );
    }
}
