//! The embedded store's maintenance thread, off the writer's path. Every 100 ms it:
//! - runs a PASSIVE checkpoint (copies committed WAL pages into the database without
//!   waiting for, or blocking, the writer and the readers; left to SQLite, checkpoints run
//!   inside a commit and every request queued behind it waits);
//! - publishes the log's size in `/metrics`;
//! - once nothing has been committed for a second and every page is copied, empties the
//!   log file (TRUNCATE), so an idle server gives its disk space back;
//! - while the store cannot write, asks the writer for a probe write every second, so it
//!   becomes ready again by itself once space is freed.
//!
//! Repeated failures (a full disk fails every checkpoint) are logged once per 30 s with a
//! count, and their end once.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rusqlite::Connection;
use tokio::sync::mpsc;

use super::health::Health;
use super::writer::{Msg, truncate_wal, wal_size};
use crate::metrics::Metrics;
use crate::throttle::LogThrottle;

const TICK: Duration = Duration::from_millis(100);
/// No commit for this long: the store is idle.
const IDLE_TICKS: u32 = 10;
const PROBE_EVERY: Duration = Duration::from_secs(1);

pub(super) struct Maintenance {
    /// The periodic save of the state (saved.rs).
    pub periodic: super::saved::Periodic,
    pub conn: Connection,
    pub wal_path: PathBuf,
    /// Frames in the log after the writer's last commit (reset when idle truncation
    /// empties it).
    pub wal_frames: Arc<AtomicU64>,
    pub writer: mpsc::Sender<Msg>,
    pub health: Arc<Health>,
    pub metrics: Arc<Metrics>,
}

/// Runs until the store drops `stop`'s sender.
pub(super) fn run(mut m: Maintenance, stop: std::sync::mpsc::Receiver<()>) {
    let failures = LogThrottle::new(Duration::from_secs(30));
    let mut last_version = None;
    let mut quiet_ticks = 0u32;
    let mut last_probe = Instant::now();
    while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) = stop.recv_timeout(TICK) {
        // Copying continuously keeps what the writer's restart must still copy (with
        // writes held back) down to about one tick's worth of commits.
        match passive_checkpoint(&m.conn) {
            Ok(()) => {
                if let Some(held) = failures.reset() {
                    tracing::info!(failures_not_logged = held, "WAL checkpoints succeed again");
                }
            }
            Err(e) => {
                if let Some(held) = failures.admit() {
                    tracing::warn!(error = %e, repeated = held, "WAL checkpoint failed (the WAL stays valid)");
                }
            }
        }
        m.periodic.tick();
        // `data_version` changes when another connection (the writer) commits.
        let version: Option<i64> = m
            .conn
            .query_row("PRAGMA data_version", [], |r| r.get(0))
            .ok();
        quiet_ticks = if version == last_version {
            quiet_ticks.saturating_add(1)
        } else {
            0
        };
        last_version = version;
        let size = wal_size(&m.wal_path);
        if quiet_ticks >= IDLE_TICKS && quiet_ticks.is_multiple_of(IDLE_TICKS) && size > 0 {
            // Idle: copy whatever is left (usually nothing) and give the file's space back,
            // waiting briefly for the locks; every second while a reader prevents it (a
            // long one can keep the log over its bound, and no commit comes to let the
            // writer restart it).
            if let Ok(true) = truncate_wal(&m.conn, Duration::from_millis(50)) {
                m.wal_frames.store(0, Ordering::Relaxed);
            }
        }
        m.metrics.set_wal_bytes(wal_size(&m.wal_path));
        if m.health.needs_probe() && last_probe.elapsed() >= PROBE_EVERY {
            last_probe = Instant::now();
            // A full queue means real writes are coming, which probe as well.
            let _ = m.writer.try_send(Msg::Probe);
        }
    }
}

/// Copies what it can of the log into the database.
fn passive_checkpoint(conn: &Connection) -> rusqlite::Result<()> {
    conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()))
}
