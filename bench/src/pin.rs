//! CPU pinning for the pinned scenario: the proxy (or nginx) alone on one
//! core, the load generator and everything else on the other, so a
//! throughput figure is one core's worth of serving and not a share of two
//! cores fought over. `taskset` (util-linux) does the pinning; a child
//! started under `taskset -c N` sees one CPU, so the proxy's tokio runtime
//! starts one worker there.

use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};

/// The core the server under test runs on.
pub const SERVER_CPU: usize = 0;
/// The core of the load generator, the bench process and Redis.
pub const LOAD_CPU: usize = 1;

pub const TASKSET: &str = "taskset";

/// CPUs this process may run on (its affinity, not the machine's count).
pub fn cpus_available() -> usize {
    std::thread::available_parallelism().map_or(1, usize::from)
}

/// Pins every thread of `pid` to `cpus` (a taskset list like "1" or "0,1").
pub fn pin_pid(pid: u32, cpus: &str) -> Result<()> {
    let status = Command::new(TASKSET)
        .args(["-a", "-p", "-c", cpus, &pid.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .with_context(|| format!("run {TASKSET}"))?;
    if !status.success() {
        bail!("{TASKSET} -a -p -c {cpus} {pid} failed: {status}");
    }
    Ok(())
}

/// Pins this process (the bench: its simulated origin and hyper load
/// client) to the load core until dropped, then gives it every core back.
pub struct SelfPin {
    restore: String,
}

impl SelfPin {
    pub fn to_load_core() -> Result<SelfPin> {
        let restore = format!("0-{}", cpus_available().saturating_sub(1));
        pin_pid(std::process::id(), &LOAD_CPU.to_string())?;
        Ok(SelfPin { restore })
    }
}

impl Drop for SelfPin {
    fn drop(&mut self) {
        let _ = pin_pid(std::process::id(), &self.restore);
    }
}

/// CPU seconds `pid` has used so far in user space and in the kernel, from
/// `/proc/PID/stat`: the busy share of the server's core over a run shows
/// whether the server or the load generator was the limit, and the split
/// how much of it is the proxy's own code.
pub fn cpu_secs(pid: u32) -> Result<CpuTime> {
    let path = format!("/proc/{pid}/stat");
    let text = std::fs::read_to_string(&path).with_context(|| format!("read {path}"))?;
    let (user, kernel) = stat_ticks(&text).with_context(|| format!("no utime/stime in {path}"))?;
    let hz = clock_ticks();
    Ok(CpuTime {
        user: user / hz,
        kernel: kernel / hz,
    })
}

#[derive(Clone, Copy, Debug, Default)]
pub struct CpuTime {
    pub user: f64,
    pub kernel: f64,
}

impl CpuTime {
    pub fn since(self, earlier: CpuTime) -> CpuTime {
        CpuTime {
            user: self.user - earlier.user,
            kernel: self.kernel - earlier.kernel,
        }
    }

    pub fn total(self) -> f64 {
        self.user + self.kernel
    }
}

/// utime and stime in clock ticks from a `/proc/PID/stat` line. The command
/// name is in parentheses and may hold spaces and ')', so fields are
/// counted after the last ')': state is field 3 there, utime 14, stime 15.
fn stat_ticks(text: &str) -> Option<(f64, f64)> {
    let (_, rest) = text.rsplit_once(')')?;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let tick = |i: usize| fields.get(i).and_then(|v| v.parse::<f64>().ok());
    Some((tick(11)?, tick(12)?))
}

fn clock_ticks() -> f64 {
    let out = Command::new("getconf").arg("CLK_TCK").output();
    out.ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse::<f64>().ok())
        .filter(|t| *t > 0.0)
        .unwrap_or(100.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utime_and_stime_are_read_after_the_command_name() {
        let line = "4242 (tokio (x) y) S 1 4242 4242 0 -1 4194560 100 0 0 0 250 31 0 0 20 0 3 0 999 1000 200 0";
        assert_eq!(stat_ticks(line), Some((250.0, 31.0)));
        assert_eq!(stat_ticks("1 (short) S 1"), None);
        assert!(cpu_secs(std::process::id()).is_ok());
    }
}
