//! The single writer thread: group commit, and the bound on the write-ahead log.
//!
//! The writer takes every write waiting in its queue, applies them all in one transaction
//! and commits once: one fsync serves many requests, and each request is answered only
//! after the commit that holds it. Being the only writer also makes per-user
//! read-then-write (the tag cap) race-free.
//!
//! The WAL bound: PASSIVE checkpoints (the maintenance thread's) copy pages back into the
//! database but never move the log's write position back to its start while commits keep
//! coming, so under sustained writes the log grows for as long as the load lasts. So after
//! every commit the writer looks at the log's size, and once it passes
//! `store.wal_limit_mb` it yields to a TRUNCATE checkpoint itself: no write runs while the
//! checkpoint copies what is left and empties the file. The log can therefore pass the
//! bound by at most one batch's pages.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rusqlite::Connection;
use tokio::sync::mpsc;

use super::apply;
use super::health::Health;
use super::{BUSY_TIMEOUT, EmbeddedOptions};
use crate::metrics::Metrics;
use crate::store::{Outcome, StoreError, WriteJob, WriteOp, now_ms};
use crate::throttle::LogThrottle;

/// What the writer's queue carries.
pub(super) enum Msg {
    Job(WriteJob),
    /// After a failed write: try a small durable write, to find out whether the store can
    /// write again (sent by the maintenance thread).
    Probe,
}

/// Longest one truncation waits for readers to let go of the log.
const TRUNCATE_WAIT: Duration = Duration::from_millis(200);
/// Longest the writer holds writes back for the log to be emptied. A reader that holds
/// on longer (a long `tagcast check` or backup) makes the writer go on over the bound and
/// try again later, once per attempt without waiting, rather than stall every request.
const YIELD_LIMIT: Duration = Duration::from_secs(1);

pub(super) struct Writer {
    pub conn: Connection,
    pub options: EmbeddedOptions,
    pub metrics: Arc<Metrics>,
    pub health: Arc<Health>,
    pub wal_path: PathBuf,
    /// No truncation attempt before this (after one failed).
    pub retry_truncate_at: Instant,
    /// The last truncation attempt failed: the next does not wait.
    pub truncate_failed: bool,
    pub over_bound: LogThrottle,
}

/// Size of the write-ahead log file (0 when it does not exist).
pub(super) fn wal_size(path: &std::path::Path) -> u64 {
    std::fs::metadata(path).map_or(0, |m| m.len())
}

/// `PRAGMA wal_checkpoint(TRUNCATE)` waiting at most `wait` for readers: `Ok(true)` when
/// the log was emptied, `Ok(false)` when a reader kept it from completing.
pub(super) fn truncate_wal(conn: &Connection, wait: Duration) -> rusqlite::Result<bool> {
    conn.busy_timeout(wait)?;
    let result = conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| {
        r.get::<_, i64>(0)
    });
    conn.busy_timeout(BUSY_TIMEOUT)?;
    Ok(result? == 0)
}

pub(super) fn run(mut w: Writer, mut rx: mpsc::Receiver<Msg>) {
    let max_batch = w.options.max_batch.max(1);
    let mut batch = Vec::with_capacity(max_batch);
    while let Some(first) = rx.blocking_recv() {
        let mut probe = false;
        let mut take = |msg, batch: &mut Vec<WriteJob>| match msg {
            Msg::Job(job) => batch.push(job),
            Msg::Probe => probe = true,
        };
        take(first, &mut batch);
        while batch.len() < max_batch {
            match rx.try_recv() {
                Ok(msg) => take(msg, &mut batch),
                Err(_) => break,
            }
        }
        if !batch.is_empty() {
            let started = Instant::now();
            let results = w.commit_batch(&batch);
            w.metrics.observe_commit(started.elapsed(), batch.len());
            for (job, result) in batch.drain(..).zip(results) {
                // The requester may have gone away (client disconnected); the write stands.
                let _ = job.reply.send(result);
            }
        } else if probe {
            w.probe();
        }
        w.bound_wal();
    }
    // Channel closed: every accepted job has been committed and answered. Fold the WAL
    // back into the main file so the next start opens quickly.
    if let Err(e) = truncate_wal(&w.conn, BUSY_TIMEOUT) {
        tracing::warn!(error = %e, "final WAL checkpoint failed (the WAL stays valid)");
    }
}

impl Writer {
    /// Applies every job in one transaction with one commit. If a job fails with an SQL
    /// error of its own, the transaction is rolled back and each job runs again in a
    /// transaction of its own, so the failing one fails alone (a savepoint per job would
    /// cost a statement pair each, on every batch, for a case that needs a bug). A failure
    /// of the store itself (disk full, I/O) fails the whole batch: none was acknowledged.
    fn commit_batch(&mut self, batch: &[WriteJob]) -> Vec<Result<Vec<Outcome>, StoreError>> {
        let cap = self.options.max_tags_per_user;
        match commit_all(&mut self.conn, batch, cap) {
            Ok(outcomes) => {
                self.health.succeeded();
                outcomes.into_iter().map(Ok).collect()
            }
            Err(e) => match self.health.failed(e, true) {
                StoreError::Internal(_) if batch.len() > 1 => batch
                    .iter()
                    .map(
                        |job| match commit_all(&mut self.conn, std::slice::from_ref(job), cap) {
                            Ok(mut o) => {
                                self.health.succeeded();
                                Ok(o.remove(0))
                            }
                            Err(e) => Err(self.health.failed(e, true)),
                        },
                    )
                    .collect(),
                e => vec![Err(e); batch.len()],
            },
        }
    }

    /// Empties the log if it can, then commits 1 MiB (then frees it again): on a full
    /// disk a small write often still fits where a request's does not, and a probe that
    /// succeeds on less would report the store ready while writes keep failing.
    fn probe(&mut self) {
        let _ = truncate_wal(&self.conn, TRUNCATE_WAIT);
        let set = |conn: &mut Connection, value: &str| -> rusqlite::Result<()> {
            let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
            tx.execute(
                &format!(
                    "INSERT INTO tagcast_meta (key, value) VALUES ('probe', {value})
                     ON CONFLICT (key) DO UPDATE SET value = excluded.value"
                ),
                [],
            )?;
            tx.commit()
        };
        let now = format!("'{}'", now_ms());
        match set(&mut self.conn, "zeroblob(1048576)").and_then(|_| set(&mut self.conn, &now)) {
            Ok(()) => self.health.succeeded(),
            Err(e) => {
                self.health.failed(e, true);
            }
        }
    }

    /// Truncates the log once it is over the bound (see the module documentation).
    fn bound_wal(&mut self) {
        let limit = self.options.wal_limit_bytes;
        let size = wal_size(&self.wal_path);
        if size <= limit || Instant::now() < self.retry_truncate_at {
            return;
        }
        // Yield: no write until the log is emptied. Another checkpoint in progress (the
        // maintenance thread's) makes an attempt fail at once, so try again shortly.
        let deadline = Instant::now()
            + if self.truncate_failed {
                Duration::ZERO
            } else {
                YIELD_LIMIT
            };
        let outcome = loop {
            match truncate_wal(&self.conn, TRUNCATE_WAIT) {
                Ok(false) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(2));
                }
                other => break other,
            }
        };
        match outcome {
            Ok(true) => {
                self.truncate_failed = false;
                self.metrics.observe_wal_truncation();
                self.metrics.set_wal_bytes(wal_size(&self.wal_path));
                self.over_bound.reset();
            }
            outcome => {
                self.truncate_failed = true;
                self.retry_truncate_at = Instant::now() + Duration::from_secs(1);
                if let Some(held) = self.over_bound.admit() {
                    let why = match outcome {
                        Ok(_) => "a reader holds it (a long `tagcast check` or backup?)".to_owned(),
                        Err(e) => e.to_string(),
                    };
                    tracing::warn!(
                        wal_mb = size / (1 << 20),
                        limit_mb = limit / (1 << 20),
                        cause = %why,
                        repeated = held,
                        "the write-ahead log is over store.wal_limit_mb and could not be truncated; retrying every second"
                    );
                }
            }
        }
    }
}

fn apply_job(conn: &Connection, job: &WriteJob, cap: usize) -> rusqlite::Result<Vec<Outcome>> {
    match &job.op {
        WriteOp::Tags { inbox, op, entries } => {
            apply::update_tags(conn, job.app_id, *inbox, *op, entries, cap)
        }
        WriteOp::Register(users) => apply::register_users(conn, job.app_id, users, cap),
        WriteOp::Unregister(ids) => apply::unregister_users(conn, job.app_id, ids),
    }
}

/// Applies `jobs` in one transaction and commits it; the outcomes, or the first error (then
/// nothing of the transaction is kept).
fn commit_all(
    conn: &mut Connection,
    jobs: &[WriteJob],
    cap: usize,
) -> rusqlite::Result<Vec<Vec<Outcome>>> {
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    let outcomes = jobs
        .iter()
        .map(|job| apply_job(&tx, job, cap))
        .collect::<rusqlite::Result<Vec<_>>>()?;
    tx.commit()?;
    Ok(outcomes)
}
