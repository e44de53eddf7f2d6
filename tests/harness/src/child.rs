//! A server process the harness started, whatever it is: spawned in its
//! own process group (a Ctrl-C meant for the caller does not reach it) with
//! its output in a log file, waited on until it is ready, and killed
//! (SIGKILL, with its process group: a redis-server forked to send a
//! replica its snapshot dies too) when dropped. Failures carry the tail of
//! its log.

use std::fs::File;
use std::future::Future;
use std::io;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub(crate) struct ChildServer {
    /// What it is, for messages (`redis-server`, `secantusd-py`).
    what: &'static str,
    pub port: u16,
    pub log: PathBuf,
    child: Option<Child>,
}

impl ChildServer {
    pub fn new(what: &'static str, port: u16, log: PathBuf) -> ChildServer {
        ChildServer {
            what,
            port,
            log,
            child: None,
        }
    }

    /// Runs `cmd` (its output to the log) and polls `ready` every `every`
    /// until it says yes; fails when the process exits first or `timeout`
    /// passes.
    pub async fn spawn<F, Fut>(
        &mut self,
        cmd: &mut Command,
        timeout: Duration,
        every: Duration,
        mut ready: F,
    ) -> io::Result<()>
    where
        F: FnMut(u16) -> Fut,
        Fut: Future<Output = bool>,
    {
        let out = File::create(&self.log)
            .map_err(|e| io::Error::new(e.kind(), format!("create {}: {e}", self.log.display())))?;
        let err = out.try_clone()?;
        let child = cmd
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .map_err(|e| io::Error::new(e.kind(), format!("cannot start {} ({e})", self.what)))?;
        self.child = Some(child);
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                self.child = None;
                return Err(io::Error::other(format!(
                    "{} on port {} exited at start-up ({status}):\n{}",
                    self.what,
                    self.port,
                    self.log_tail()
                )));
            }
            if ready(self.port).await {
                return Ok(());
            }
            if Instant::now() > deadline {
                self.kill();
                return Err(io::Error::other(format!(
                    "{} on port {} was not ready within {timeout:?}:\n{}",
                    self.what,
                    self.port,
                    self.log_tail()
                )));
            }
            tokio::time::sleep(every).await;
        }
    }

    /// Kills it now (SIGKILL), and whatever it forked that is still in its
    /// process group: to a client, a crashed server.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            // Its group id is its pid (`process_group(0)`), and the group
            // cannot be reused before the `wait` below reaps it. `kill(1)`
            // because the crate forbids the unsafe a libc call needs.
            let _ = Command::new("kill")
                .args(["-KILL", "--", &format!("-{}", child.id())])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stops (`STOP`) or resumes (`CONT`) its process group: a frozen
    /// server keeps its sockets open but answers nothing, as a hung host
    /// or a long GC pause would.
    pub fn signal(&self, sig: &str) -> io::Result<()> {
        let child = self.child.as_ref().ok_or_else(|| {
            io::Error::other(format!(
                "{} on port {} is not running",
                self.what, self.port
            ))
        })?;
        let status = Command::new("kill")
            .args([&format!("-{sig}"), "--", &format!("-{}", child.id())])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()?;
        if status.success() {
            Ok(())
        } else {
            Err(io::Error::other(format!(
                "kill -{sig} of {} on port {} failed: {status}",
                self.what, self.port
            )))
        }
    }

    /// Its process id while it runs (the bench pins it to a core).
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// The last lines of its log, for error messages.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(15)..].join("\n")
    }
}

impl Drop for ChildServer {
    fn drop(&mut self) {
        self.kill();
    }
}
