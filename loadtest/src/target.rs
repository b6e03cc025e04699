//! The process under test, when it runs on this machine: found by the port
//! it listens on, and sampled from /proc for CPU time and resident memory.

use serde::Serialize;
use std::time::Instant;

/// CPU and memory of the target over the run.
#[derive(Debug, Clone, Serialize)]
pub struct Usage {
    /// Its pid.
    pub pid: u32,
    /// CPU seconds (user + system) it used during the run.
    pub cpu_seconds: f64,
    /// Average cores busy: CPU seconds / wall seconds.
    pub cpu_cores: f64,
    /// Peak resident memory (VmHWM), MiB.
    pub peak_rss_mib: f64,
}

/// A running process to sample.
pub struct Target {
    pid: u32,
    cpu_at_start: f64,
    started: Instant,
}

/// Clock ticks per second of /proc/<pid>/stat (USER_HZ, 100 on Linux).
const TICKS: f64 = 100.0;

impl Target {
    /// Starts sampling `pid`.
    #[must_use]
    pub fn new(pid: u32) -> Option<Target> {
        Some(Target {
            pid,
            cpu_at_start: cpu_seconds(pid)?,
            started: Instant::now(),
        })
    }

    /// Usage since [`Target::new`].
    #[must_use]
    pub fn usage(&self) -> Option<Usage> {
        let cpu = cpu_seconds(self.pid)? - self.cpu_at_start;
        let hwm_kib = status_value(self.pid, "VmHWM")? as f64;
        Some(Usage {
            pid: self.pid,
            cpu_seconds: cpu,
            cpu_cores: cpu / self.started.elapsed().as_secs_f64(),
            peak_rss_mib: hwm_kib / 1024.0,
        })
    }
}

/// The resident memory of `pid` now (VmRSS), KiB.
#[must_use]
pub fn resident_kib(pid: u32) -> Option<u64> {
    status_value(pid, "VmRSS")
}

/// The number of `field` in `/proc/<pid>/status` (`VmRSS` in KiB,
/// `THP_enabled` as 0 or 1, ...), if the process and the field exist.
#[must_use]
pub fn status_value(pid: u32, field: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
}

fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the parenthesised command name; utime and stime are 14 and 15.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / TICKS)
}

/// The pid of the process listening on `port` on this machine, if any.
#[must_use]
pub fn listening_pid(port: u16) -> Option<u32> {
    let mut inodes = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            let (Some(local), Some(state), Some(inode)) = (f.get(1), f.get(3), f.get(9)) else {
                continue;
            };
            let local_port = local
                .rsplit(':')
                .next()
                .and_then(|p| u16::from_str_radix(p, 16).ok());
            if *state == "0A" && local_port == Some(port) {
                inodes.push(format!("socket:[{inode}]"));
            }
        }
    }
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(fds) = std::fs::read_dir(entry.path().join("fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            if let Ok(link) = std::fs::read_link(fd.path())
                && inodes.iter().any(|i| link.to_str() == Some(i.as_str()))
            {
                return Some(pid);
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn finds_and_samples_a_listening_process() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        assert_eq!(listening_pid(port), Some(std::process::id()));
        let target = Target::new(std::process::id()).unwrap();
        let mut x = 0u64;
        for i in 0..5_000_000u64 {
            x = x.wrapping_mul(31).wrapping_add(i);
        }
        assert!(x != 1);
        let usage = target.usage().unwrap();
        assert!(usage.peak_rss_mib > 1.0);
        assert!(usage.cpu_seconds >= 0.0);
    }
}
