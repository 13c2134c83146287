//! The server's log: `tracing` lines on stderr, text or JSON, filtered by `RUST_LOG`
//! (default `info`, which includes one line per request).
//!
//! Lines are formatted on the thread that logs them but written by a thread of their own
//! through a bounded queue: a slow or blocked stderr (a full pipe, a stalled log
//! collector) never holds up a request. When the queue is full a line is dropped rather
//! than waited for, and counted: `tagcast_log_lines_dropped_total` in `/metrics`.

use std::sync::OnceLock;

use tracing_appender::non_blocking::{ErrorCounter, NonBlockingBuilder, WorkerGuard};

use crate::config::LogFormat;

/// Lines the queue holds before new ones are dropped (a few seconds of the request log
/// at full speed).
pub const QUEUE_LINES: usize = 64 * 1024;

/// Bytes of lines the log thread gathers into one write.
const WRITE_BUFFER: usize = 64 * 1024;

static DROPPED: OnceLock<ErrorCounter> = OnceLock::new();

/// Installs the process's log. Keep the guard until the end: dropping it writes out the
/// lines still queued.
pub fn init(format: LogFormat) -> WorkerGuard {
    let filter =
        tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let (writer, guard) = NonBlockingBuilder::default()
        .lossy(true)
        .buffered_lines_limit(QUEUE_LINES)
        .thread_name("tagcast-log")
        // The worker drains every queued line, then flushes: buffered, a burst of lines is
        // one write(2) instead of one per line (a sixth of a read's CPU went to those).
        .finish(std::io::BufWriter::with_capacity(
            WRITE_BUFFER,
            std::io::stderr(),
        ));
    let _ = DROPPED.set(writer.error_counter());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer)
        .with_ansi(ansi);
    match format {
        LogFormat::Json => builder.json().flatten_event(true).init(),
        LogFormat::Text => builder.init(),
    }
    guard
}

/// Lines dropped because the log's queue was full (0 before [`init`], and in tests that
/// run the server without it).
pub fn dropped_lines() -> u64 {
    DROPPED.get().map_or(0, |c| c.dropped_lines() as u64)
}
