//! The process's resident memory as the operating system counts it (what `top`, a cgroup limit
//! and the OOM killer see): its peak, and starting that peak over.

/// The process's peak resident set (`VmHWM`) in bytes; `None` off Linux.
pub fn peak_rss() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let kb: u64 = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    Some(kb * 1024)
}

/// Start the peak resident set over from the current one (Linux's `clear_refs` 5); false where
/// the kernel does not allow it.
pub fn reset_peak_rss() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}
