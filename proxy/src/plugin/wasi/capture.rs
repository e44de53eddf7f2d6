//! What a guest writes to stdout and stderr during one call: kept in the
//! call's store (bounded), then logged line by line once the call ends,
//! so that a panic message is both in the log and in the trap's cause.

use crate::plugin::bindings::Level;
use crate::plugin::host::PluginContext;

/// Bytes kept per stream per call; the rest are counted as dropped.
pub const MAX_CAPTURE: usize = 16 * 1024;

/// The line Rust's std prints after a panic message.
const PANIC_HINT: &str = "note: run with `RUST_BACKTRACE=1`";

/// Representations of the streams the shim hands out.
pub(super) const STDOUT_REP: u32 = 1;
pub(super) const STDERR_REP: u32 = 2;

/// One stream's bytes in one call.
#[derive(Debug, Default)]
pub struct Capture {
    bytes: Vec<u8>,
    dropped: u64,
}

impl Capture {
    fn push(&mut self, bytes: &[u8]) {
        let room = MAX_CAPTURE.saturating_sub(self.bytes.len());
        let keep = bytes.len().min(room);
        self.bytes.extend_from_slice(&bytes[..keep]);
        self.dropped += (bytes.len() - keep) as u64;
    }

    /// What was written, as text (invalid UTF-8 replaced).
    pub fn text(&self) -> std::borrow::Cow<'_, str> {
        String::from_utf8_lossy(&self.bytes)
    }

    fn is_empty(&self) -> bool {
        self.bytes.is_empty() && self.dropped == 0
    }

    /// Logs each non-empty line through the plugin's rate limit, then
    /// how much did not fit.
    fn emit(&self, ctx: &PluginContext, source: &'static str, level: Level) {
        for line in self.text().lines() {
            // std's hint after a panic cannot be followed: a policy has no
            // environment to set RUST_BACKTRACE in.
            if !line.trim().is_empty() && !line.starts_with(PANIC_HINT) {
                ctx.emit(source, level, line);
            }
        }
        if self.dropped > 0 {
            ctx.emit(
                source,
                Level::Warn,
                &format!(
                    "{} more bytes of {source} dropped (at most {} KiB are kept per call)",
                    self.dropped,
                    MAX_CAPTURE / 1024
                ),
            );
        }
    }
}

/// A call's stdout and stderr.
#[derive(Debug, Default)]
pub struct Output {
    pub stdout: Capture,
    pub stderr: Capture,
}

impl Output {
    pub(super) fn write(&mut self, stream: u32, bytes: &[u8]) {
        match stream {
            STDOUT_REP => self.stdout.push(bytes),
            STDERR_REP => self.stderr.push(bytes),
            _ => {}
        }
    }

    /// Sends the lines to the plugin's log: stdout at info, stderr (unless
    /// `with_stderr` is false) at warn.
    pub fn emit(&self, ctx: &PluginContext, with_stderr: bool) {
        if !self.stdout.is_empty() {
            self.stdout.emit(ctx, "stdout", Level::Info);
        }
        if with_stderr && !self.stderr.is_empty() {
            self.stderr.emit(ctx, "stderr", Level::Warn);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_is_capped_per_stream_and_the_rest_counted_and_said() {
        let mut out = Output::default();
        out.write(STDOUT_REP, b"first\r\n\nsecond\n");
        out.write(
            STDOUT_REP,
            format!("{PANIC_HINT} environment variable\n").as_bytes(),
        );
        out.write(STDERR_REP, &vec![b'e'; MAX_CAPTURE + 10]);
        out.write(7, b"unknown stream");
        let ctx = PluginContext::capturing("p", "{}".into());
        out.emit(&ctx, true);
        let lines: Vec<(&str, &str, String)> = ctx
            .take_lines()
            .into_iter()
            .map(|l| (l.source, l.level, l.message))
            .collect();
        assert_eq!(lines[0], ("stdout", "info", "first".to_string()));
        assert_eq!(lines[1], ("stdout", "info", "second".to_string()));
        // 16 KiB of one line, cut at the host's line limit, then the note.
        assert_eq!(lines[2].0, "stderr");
        assert_eq!(
            lines[3],
            (
                "stderr",
                "warn",
                "10 more bytes of stderr dropped (at most 16 KiB are kept per call)".to_string()
            )
        );
        assert_eq!(lines.len(), 4);
    }
}
