//! What a plugin writes to its stdout and stderr (a Python traceback, a
//! JavaScript `console.error`, a Rust panic message) and to the `log`
//! import: logged line by line with the stage's name, at most
//! [`LINES_PER_WINDOW`] lines per stream every 10 seconds and [`MAX_LINE`]
//! bytes per line, and the latest lines kept so that a trap's dead letter
//! can say what the plugin printed before it failed. A line never spans
//! two log lines, so a plugin cannot forge a line of the host's own.

use crate::bindings::LogLevel;
use bytes::Bytes;
use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamError};

/// Lines logged per stream and window; the rest are counted and dropped.
pub const LINES_PER_WINDOW: u32 = 100;
const WINDOW: Duration = Duration::from_secs(10);
/// Longest line logged, in bytes.
pub const MAX_LINE: usize = 2000;
/// Lines kept to explain a trap.
const KEPT: usize = 12;

/// One of a plugin instance's output streams.
#[derive(Clone)]
pub struct PluginOutput(Arc<Mutex<State>>);

struct State {
    stage: Arc<str>,
    stream: &'static str,
    partial: Vec<u8>,
    recent: VecDeque<String>,
    window_start: Instant,
    logged: u32,
    dropped: u64,
}

impl PluginOutput {
    /// The `stream` (`stdout`, `stderr` or `log`) of an instance of `stage`.
    pub fn new(stage: Arc<str>, stream: &'static str) -> Self {
        Self(Arc::new(Mutex::new(State {
            stage,
            stream,
            partial: Vec::new(),
            recent: VecDeque::new(),
            window_start: Instant::now(),
            logged: 0,
            dropped: 0,
        })))
    }

    /// The lines written since the last call, including an unfinished one,
    /// and forgets them.
    pub fn take_recent(&self) -> Vec<String> {
        let mut state = self.0.lock().expect("output lock");
        if !state.partial.is_empty() {
            let line = String::from_utf8_lossy(&state.partial).into_owned();
            state.partial.clear();
            state.emit(line);
        }
        state.recent.drain(..).collect()
    }

    fn write(&self, bytes: &[u8]) {
        let mut state = self.0.lock().expect("output lock");
        for &byte in bytes {
            if byte == b'\n' {
                let line = String::from_utf8_lossy(&state.partial).into_owned();
                state.partial.clear();
                state.emit(line);
            } else if state.partial.len() < MAX_LINE {
                state.partial.push(byte);
            }
        }
    }

    /// A message the plugin gave the `log` import, logged at its level.
    pub fn log(&self, level: LogLevel, message: &str) {
        let mut state = self.0.lock().expect("output lock");
        for line in message.lines() {
            let mut end = line.len().min(MAX_LINE);
            while !line.is_char_boundary(end) {
                end -= 1;
            }
            state.emit_at(level, line[..end].to_string());
        }
    }
}

impl State {
    /// A line of stdout or stderr: a warning, since nothing else is meant to
    /// reach them.
    fn emit(&mut self, line: String) {
        self.emit_at(LogLevel::Warn, line);
    }

    fn emit_at(&mut self, level: LogLevel, line: String) {
        let line = line.trim_end().to_string();
        if line.is_empty() {
            return;
        }
        if self.window_start.elapsed() >= WINDOW {
            if self.dropped > 0 {
                tracing::warn!(stage = %self.stage, stream = self.stream, dropped = self.dropped, "plugin output lines not logged (too many)");
            }
            (self.window_start, self.logged, self.dropped) = (Instant::now(), 0, 0);
        }
        if self.logged < LINES_PER_WINDOW {
            self.logged += 1;
            let (stage, stream) = (&*self.stage, self.stream);
            match level {
                LogLevel::Trace => tracing::trace!(stage, stream, "{line}"),
                LogLevel::Debug => tracing::debug!(stage, stream, "{line}"),
                LogLevel::Info => tracing::info!(stage, stream, "{line}"),
                LogLevel::Warn => tracing::warn!(stage, stream, "{line}"),
                LogLevel::Error => tracing::error!(stage, stream, "{line}"),
            }
        } else {
            self.dropped += 1;
        }
        if self.recent.len() == KEPT {
            self.recent.pop_front();
        }
        self.recent.push_back(line);
    }
}

impl IsTerminal for PluginOutput {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for PluginOutput {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }

    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

#[wasmtime_wasi::async_trait]
impl OutputStream for PluginOutput {
    fn write(&mut self, bytes: Bytes) -> Result<(), StreamError> {
        PluginOutput::write(self, &bytes);
        Ok(())
    }

    fn flush(&mut self) -> Result<(), StreamError> {
        Ok(())
    }

    fn check_write(&mut self) -> Result<usize, StreamError> {
        Ok(64 * 1024)
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for PluginOutput {
    async fn ready(&mut self) {}
}

impl tokio::io::AsyncWrite for PluginOutput {
    fn poll_write(self: Pin<&mut Self>, _: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        PluginOutput::write(&self, buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_split_kept_and_taken_once() {
        let out = PluginOutput::new("s".into(), "stderr");
        out.write(b"Traceback (most recent call last):\n  File \"app.py\"");
        out.write(b", line 3\nKeyError: 'x'");
        assert_eq!(
            out.take_recent(),
            ["Traceback (most recent call last):", "  File \"app.py\", line 3", "KeyError: 'x'"]
        );
        assert!(out.take_recent().is_empty());
        for i in 0..20 {
            out.write(format!("line {i}\n").as_bytes());
        }
        let kept = out.take_recent();
        assert_eq!(kept.len(), KEPT);
        assert_eq!(kept.last().unwrap(), "line 19");
    }
}
