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
//! every commit the writer looks at how much the log holds (SQLite's WAL hook reports its
//! frames), and once that passes `store.wal_limit_mb` it yields to a RESTART checkpoint
//! itself: no write runs while the checkpoint copies what is left, and the next commit
//! writes from the start of the file again. The file keeps its blocks (appending to a
//! file that had been truncated costs every commit a metadata update), so it stays at the
//! bound plus at most one batch's pages; the maintenance thread empties it when idle.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rusqlite::Connection;
use tokio::sync::mpsc;

use super::apply;
use super::health::Health;
use super::saved::{self, Saved};
use super::{BUSY_TIMEOUT, EmbeddedOptions};
use crate::audience::{AudienceIndex, snapshot};
use crate::metrics::Metrics;
use crate::store::plan::{self, Plan};
use crate::store::{Outcome, StoreError, WriteJob, now_ms};
use crate::throttle::LogThrottle;

/// What the writer's queue carries.
pub(super) enum Msg {
    Job(WriteJob),
    /// After a failed write: try a 1 MiB durable write, to find out whether the store can
    /// write again (sent by the maintenance thread).
    Probe,
    /// Work of its own on the writer's connection (broadcasts and their outbox), run after
    /// the batch taken with it has committed; it answers its caller itself.
    Run(WriterWork),
}

/// Work run on the writer thread with its connection.
pub(super) type WriterWork = Box<dyn FnOnce(&mut Connection, &AudienceIndex, &Health) + Send>;

/// Free space a probe needs before it writes: what a batch of requests may append.
const PROBE_HEADROOM: u64 = 2 << 20;

/// Bytes an unprivileged process may still write on `dir`'s filesystem (`None`: unknown).
fn free_bytes(dir: &std::path::Path) -> Option<u64> {
    let s = rustix::fs::statvfs(dir).ok()?;
    Some(s.f_bavail.saturating_mul(s.f_frsize))
}

/// Longest one checkpoint waits for readers to let go of the log.
const CHECKPOINT_WAIT: Duration = Duration::from_millis(200);
/// Longest the writer holds writes back for the log to be restarted. A reader that holds
/// on longer (a long `tagcast check` or backup) makes the writer go on over the bound and
/// try again later, once per attempt without waiting, rather than stall every request.
const YIELD_LIMIT: Duration = Duration::from_secs(1);

pub(super) struct Writer {
    pub conn: Connection,
    /// Frames in the log after the last commit (set by the WAL hook).
    pub wal_frames: Arc<AtomicU64>,
    /// Bytes one frame takes in the log: a page and its 24-byte header.
    pub frame_bytes: u64,
    pub options: EmbeddedOptions,
    pub metrics: Arc<Metrics>,
    pub health: Arc<Health>,
    /// No checkpoint attempt before this (after one failed).
    pub retry_checkpoint_at: Instant,
    /// The last checkpoint attempt failed: the next does not wait.
    pub checkpoint_failed: bool,
    pub over_bound: LogThrottle,
    /// Follows every commit, before its requests are answered.
    pub index: Arc<AudienceIndex>,
    /// Where the state is saved, its token and the changes since (shared with the
    /// periodic saver).
    pub saved: Arc<Saved>,
    /// False when this start migrated the schema: a saved index may not match it.
    pub trust_snapshot: bool,
}

/// Size of the write-ahead log file (0 when it does not exist).
pub(super) fn wal_size(path: &std::path::Path) -> u64 {
    std::fs::metadata(path).map_or(0, |m| m.len())
}

/// `PRAGMA wal_checkpoint(TRUNCATE)` waiting at most `wait` for readers: `Ok(true)` when
/// the log was emptied (and the file cut to nothing), `Ok(false)` when a reader or
/// another checkpoint kept it from completing.
pub(super) fn truncate_wal(conn: &Connection, wait: Duration) -> rusqlite::Result<bool> {
    checkpoint(conn, "TRUNCATE", wait)
}

/// `PRAGMA wal_checkpoint(mode)` waiting at most `wait` for readers; `Ok(true)` when it
/// completed.
fn checkpoint(conn: &Connection, mode: &str, wait: Duration) -> rusqlite::Result<bool> {
    conn.busy_timeout(wait)?;
    let result = conn.query_row(&format!("PRAGMA wal_checkpoint({mode})"), [], |r| {
        r.get::<_, i64>(0)
    });
    conn.busy_timeout(BUSY_TIMEOUT)?;
    Ok(result? == 0)
}

/// Has `conn` report the frames in the log after each of its commits into the returned
/// counter. Replaces SQLite's automatic checkpoints, which the same hook drives.
pub(super) fn count_wal_frames(conn: &mut Connection) -> rusqlite::Result<Arc<AtomicU64>> {
    let frames = Arc::new(AtomicU64::new(0));
    let hook = frames.clone();
    conn.wal_hook(Some(move |_: &mut rusqlite::hooks::Wal, pages: i32| {
        hook.store(u64::try_from(pages).unwrap_or(0), Ordering::Relaxed);
        Ok(())
    }))?;
    Ok(frames)
}

pub(super) fn run(mut w: Writer, mut rx: mpsc::Receiver<Msg>) {
    // The index first: writes wait in the queue (and /readyz says not ready) until it
    // holds everything committed before them.
    if !start_index(&mut w, &mut rx) {
        return;
    }
    let max_batch = w.options.max_batch.max(1);
    let mut batch = Vec::with_capacity(max_batch);
    while let Some(first) = rx.blocking_recv() {
        let mut probe = false;
        let mut runs = Vec::new();
        let mut take = |msg, batch: &mut Vec<WriteJob>, runs: &mut Vec<_>| match msg {
            Msg::Job(job) => batch.push(job),
            Msg::Probe => probe = true,
            Msg::Run(f) => runs.push(f),
        };
        take(first, &mut batch, &mut runs);
        while batch.len() + runs.len() < max_batch {
            match rx.try_recv() {
                Ok(msg) => take(msg, &mut batch, &mut runs),
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
        } else if probe && runs.is_empty() {
            w.probe();
        }
        for run in runs {
            run(&mut w.conn, &w.index, &w.health);
        }
        w.bound_wal();
    }
    // Channel closed: every accepted job has been committed and answered. The index goes
    // to a file the next start reads instead of every row, then the WAL is folded back
    // into the main file so the next start opens quickly.
    let started = Instant::now();
    match save_snapshot(&w) {
        Ok(()) => {
            tracing::info!(
                ms = started.elapsed().as_millis() as u64,
                "state saved for the next start"
            )
        }
        Err(e) => {
            tracing::warn!(error = %e, "saving the audience index failed; the next start rebuilds it from the store")
        }
    }
    if let Err(e) = truncate_wal(&w.conn, BUSY_TIMEOUT) {
        tracing::warn!(error = %e, "final WAL checkpoint failed (the WAL stays valid)");
    }
}

/// Builds the state: from the saved file and the change log after it when the store
/// vouches for them (saved.rs), else from every row; then makes sure the store holds the
/// token the next saves carry. `false` when the state cannot be built (every write is
/// then answered with the failure).
fn start_index(w: &mut Writer, rx: &mut mpsc::Receiver<Msg>) -> bool {
    let started = Instant::now();
    let token = match saved::stored_token(&w.conn) {
        Ok(t) => t,
        Err(e) => return fail_every_write(w, rx, e),
    };
    let path = w.saved.path.clone();
    let loaded = match (token, w.trust_snapshot) {
        (Some(t), true) => match saved::load(&w.conn, &path, &t) {
            Ok(loaded) => Some(loaded),
            Err(why) => {
                tracing::warn!(file = %path.display(), cause = %why, "not starting from the saved state; building it from the store");
                None
            }
        },
        (None, _) => {
            if path.exists() {
                tracing::warn!(file = %path.display(), cause = "the store holds no token for it (a release before the change log ran since?)", "not starting from the saved state; building it from the store");
            }
            None
        }
        (Some(_), false) => {
            tracing::info!(
                "the schema was migrated at this start; building the state from the store"
            );
            None
        }
    };
    let (apps, source, replayed) = match loaded {
        Some((apps, replayed)) => (apps, "snapshot", replayed),
        None => match apply::build_index(&w.conn) {
            Ok(builder) => (builder.finish(), "store", 0),
            Err(e) => return fail_every_write(w, rx, e),
        },
    };
    let token = match token {
        Some(t) => t,
        None => {
            let t: [u8; 16] = rand::random();
            let mut warned = false;
            while let Err(e) = saved::record_token(&w.conn, &t) {
                if !std::mem::replace(&mut warned, true) {
                    tracing::warn!(error = %e, "cannot record the saved state's token; writes wait, retrying every second");
                }
                std::thread::sleep(Duration::from_secs(1));
            }
            t
        }
    };
    *w.saved.token.lock().expect("token lock") = Some(token);
    w.index.replace(apps);
    let (apps, bitmaps) = w.index.size();
    tracing::info!(
        apps,
        bitmaps,
        from = source,
        replayed,
        ms = started.elapsed().as_millis() as u64,
        "audience index built"
    );
    true
}

/// Answers every write with `e` until the store closes (the index could not be built).
fn fail_every_write(w: &Writer, rx: &mut mpsc::Receiver<Msg>, e: rusqlite::Error) -> bool {
    let e = w
        .health
        .corrupt(format!("building the state from the store failed: {e}"));
    tracing::error!(error = %e, "building the state failed; every request is refused until the store is repaired (tagcast check)");
    while let Some(msg) = rx.blocking_recv() {
        if let Msg::Job(job) = msg {
            let _ = job.reply.send(Err(e.clone()));
        }
    }
    false
}

/// Writes the state to its file with the store's token (at a clean stop).
fn save_snapshot(w: &Writer) -> Result<(), String> {
    let Some(token) = *w.saved.token.lock().expect("token lock") else {
        return Err("the store holds no token for a saved state".into());
    };
    let _writing = w.saved.writing.lock().expect("save lock");
    snapshot::write(&w.index, &token, &w.saved.path)
        .map_err(|e| format!("writing {}: {e}", w.saved.path.display()))
}

impl Writer {
    /// Applies every job in one transaction with one commit. If a job fails with an SQL
    /// error of its own, the transaction is rolled back and each job runs again in a
    /// transaction of its own, so the failing one fails alone (a savepoint per job would
    /// cost a statement pair each, on every batch, for a case that needs a bug). A failure
    /// of the store itself (disk full, I/O) fails the whole batch: none was acknowledged.
    fn commit_batch(&mut self, batch: &[WriteJob]) -> Vec<Result<Vec<Outcome>, StoreError>> {
        let cap = self.options.max_tags_per_user;
        let failure = match commit_all(&mut self.conn, &self.index, batch, cap) {
            Ok((plan, heads)) => {
                self.applied(&plan, &heads);
                return plan.outcomes.into_iter().map(Ok).collect();
            }
            Err(Failure::Sql(e)) => self.health.failed(e, true),
            Err(Failure::Plan(e)) => e,
        };
        match failure {
            StoreError::Internal { .. } if batch.len() > 1 => {
                self.metrics.observe_batch_split();
                batch
                    .iter()
                    .map(|job| {
                        match commit_all(
                            &mut self.conn,
                            &self.index,
                            std::slice::from_ref(job),
                            cap,
                        ) {
                            Ok((mut plan, heads)) => {
                                self.applied(&plan, &heads);
                                Ok(plan.outcomes.remove(0))
                            }
                            Err(Failure::Sql(e)) => Err(self.health.failed(e, true)),
                            Err(Failure::Plan(e)) => Err(e),
                        }
                    })
                    .collect()
            }
            e => vec![Err(e); batch.len()],
        }
    }

    /// A committed plan into the state, with the log positions it took.
    fn applied(&self, plan: &Plan, heads: &[(u32, u64)]) {
        self.index.apply_logged(&plan.changes, plan.time_ms, heads);
        self.index.set_next_ordinals(&plan.next_ordinal);
        self.metrics.events.appended.inc_by(plan.events_total());
        self.saved
            .changes
            .fetch_add(plan.changes.len() as u64, Ordering::Relaxed);
    }

    /// Ready again only when a write like the requests' would commit: the filesystem has
    /// [`PROBE_HEADROOM`] free, and 1 MiB commits (then is freed again) where the requests
    /// write, after the log as it is. The probe makes no room for itself (emptying the log
    /// first would let it fit where the requests do not, and `/readyz` would flap).
    fn probe(&mut self) {
        let dir = self
            .saved
            .path
            .parent()
            .unwrap_or(std::path::Path::new("."));
        if let Some(free) = free_bytes(dir).filter(|f| *f < PROBE_HEADROOM) {
            self.health.still_unwritable(format!(
                "{} has {free} bytes free; writes resume once it has {PROBE_HEADROOM}",
                dir.display()
            ));
            return;
        }
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

    /// Restarts the log once it holds more than the bound (see the module documentation).
    fn bound_wal(&mut self) {
        let limit = self.options.wal_limit_bytes;
        let held = self.wal_frames.load(Ordering::Relaxed) * self.frame_bytes;
        if held <= limit || Instant::now() < self.retry_checkpoint_at {
            return;
        }
        // Yield: no write until the log starts over. Another checkpoint in progress (the
        // maintenance thread's) makes an attempt fail at once, so try again shortly.
        let deadline = Instant::now()
            + if self.checkpoint_failed {
                Duration::ZERO
            } else {
                YIELD_LIMIT
            };
        let outcome = loop {
            match checkpoint(&self.conn, "RESTART", CHECKPOINT_WAIT) {
                Ok(false) if Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(2));
                }
                other => break other,
            }
        };
        match outcome {
            Ok(true) => {
                self.checkpoint_failed = false;
                self.wal_frames.store(0, Ordering::Relaxed);
                self.metrics.observe_wal_restart();
                self.over_bound.reset();
            }
            outcome => {
                self.checkpoint_failed = true;
                self.retry_checkpoint_at = Instant::now() + Duration::from_secs(1);
                if let Some(repeated) = self.over_bound.admit() {
                    let why = match outcome {
                        Ok(_) => "a reader holds it (a long `tagcast check` or backup?)".to_owned(),
                        Err(e) => e.to_string(),
                    };
                    tracing::warn!(
                        wal_mb = held / (1 << 20),
                        limit_mb = limit / (1 << 20),
                        cause = %why,
                        repeated,
                        "the write-ahead log is over store.wal_limit_mb and could not be restarted; retrying every second"
                    );
                }
            }
        }
    }
}

/// Why a batch did not commit: the store failed, or the plan could not be made.
enum Failure {
    Sql(rusqlite::Error),
    Plan(StoreError),
}

impl From<rusqlite::Error> for Failure {
    fn from(e: rusqlite::Error) -> Self {
        Failure::Sql(e)
    }
}

/// Plans `jobs` over the state in memory (which holds every commit: this thread is the
/// only writer and applies each commit before the next), writes the changes and commits,
/// in one transaction; the plan, or the first error (then nothing of it is kept, in the
/// store or in memory).
fn commit_all(
    conn: &mut Connection,
    index: &AudienceIndex,
    jobs: &[WriteJob],
    cap: usize,
) -> Result<(Plan, Vec<(u32, u64)>), Failure> {
    let batch = plan::Batch { jobs };
    let (users, next_ordinal) = index.planner_state(&batch.users(), |u| batch.needs_ordinals(u));
    let snapshot = plan::Snapshot {
        users,
        next_ordinal,
    };
    let plan = plan::plan(jobs, snapshot, cap, now_ms()).map_err(Failure::Plan)?;
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    apply::write_changes(&tx, &plan)?;
    let heads = saved::heads(index, &plan);
    saved::append(&tx, &plan, &heads)?;
    tx.commit()?;
    Ok((plan, heads))
}
