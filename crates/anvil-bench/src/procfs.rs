//! What the benchmark reads from /proc: memory and CPU time of a process,
//! and a description of the (shared, noisy) machine it runs on.

use anyhow::{Context, Result, bail};
use std::path::Path;

/// A `Vm…` line of /proc/PID/status, in bytes (the file says kB).
fn status_kb(pid: u32, key: &str) -> Result<u64> {
    let path = format!("/proc/{pid}/status");
    let text = std::fs::read_to_string(&path).with_context(|| format!("cannot read {path}"))?;
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix(key).and_then(|r| r.strip_prefix(':')) {
            let kb = rest
                .trim()
                .trim_end_matches("kB")
                .trim()
                .parse::<u64>()
                .with_context(|| format!("bad {key} line in {path}: {line:?}"))?;
            return Ok(kb * 1024);
        }
    }
    bail!("no {key} in {path}")
}

/// Resident set size now, in bytes.
pub fn rss(pid: u32) -> Result<u64> {
    status_kb(pid, "VmRSS")
}

/// Peak resident set size ("high water mark"), in bytes.
pub fn peak_rss(pid: u32) -> Result<u64> {
    status_kb(pid, "VmHWM")
}

/// CPU time (user + system) a process has used so far, in clock ticks.
pub fn cpu_ticks(pid: u32) -> Result<u64> {
    let path = format!("/proc/{pid}/stat");
    let text = std::fs::read_to_string(&path).with_context(|| format!("cannot read {path}"))?;
    // The command name (field 2) is in parentheses and may contain spaces;
    // the fields after the last ')' start with field 3 (state).
    let after = text
        .rsplit_once(')')
        .map(|(_, r)| r)
        .with_context(|| format!("bad {path}"))?;
    let fields: Vec<&str> = after.split_whitespace().collect();
    // utime is field 14 and stime field 15 (1-based), i.e. 11 and 12 here.
    let utime: u64 = fields.get(11).context("no utime")?.parse()?;
    let stime: u64 = fields.get(12).context("no stime")?.parse()?;
    Ok(utime + stime)
}

/// Clock ticks per second (`sysconf(_SC_CLK_TCK)`), asked of `getconf` to
/// avoid a libc dependency; 100 is the value on every Linux this runs on.
pub fn clock_ticks_per_second() -> u64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .filter(|o| o.status.success())
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .filter(|&t| t > 0)
        .unwrap_or(100)
}

/// The first three fields of /proc/loadavg (1, 5 and 15 minutes).
pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

pub fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_else(|| "?".into())
}

pub fn mem_total() -> String {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map(|kb| format!("{:.1} GiB", kb as f64 / 1024.0 / 1024.0))
        .unwrap_or_else(|| "?".into())
}

pub fn kernel() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "?".into())
}

/// Type and device of the file system holding `path` (longest mount-point
/// prefix in /proc/mounts): SQLite's fsync cost depends on it, and a tmpfs
/// would make it free.
pub fn filesystem_of(path: &Path) -> String {
    let path = path.canonicalize().unwrap_or_else(|_| path.to_path_buf());
    let Ok(mounts) = std::fs::read_to_string("/proc/mounts") else {
        return "?".into();
    };
    let mut best: Option<(usize, String)> = None;
    for line in mounts.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 3 {
            continue;
        }
        let mount_point = Path::new(f[1]);
        if path.starts_with(mount_point) {
            let len = f[1].len();
            if best.as_ref().is_none_or(|(l, _)| len >= *l) {
                best = Some((len, format!("{} on {} ({})", f[2], f[1], f[0])));
            }
        }
    }
    best.map(|(_, s)| s).unwrap_or_else(|| "?".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_process() {
        let pid = std::process::id();
        let rss = rss(pid).unwrap();
        assert!(rss > 0);
        assert!(peak_rss(pid).unwrap() >= rss / 2);
        cpu_ticks(pid).unwrap();
        assert!(clock_ticks_per_second() > 0);
    }
}
