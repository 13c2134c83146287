//! The embedded store: SQLite (bundled) in WAL mode with `synchronous=FULL`.
//!
//! Writes go through one writer thread that takes every write waiting in its queue, applies
//! them all in one transaction and commits once (group commit): one fsync serves many
//! requests, and each request is answered only after the commit that holds it. Being the
//! only writer also makes per-user read-then-write (the tag cap) race-free. If a request
//! fails with an SQL error, the batch is rolled back and its requests run again one
//! transaction each, so the failing one fails alone. WAL checkpoints run on a thread of
//! their own, off the writer's path. Reads use a small pool of separate connections; WAL
//! lets them run while the writer commits, and they see every committed (hence every
//! acknowledged) write.

mod apply;
pub mod schema;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use rusqlite::{Connection, OpenFlags};
use tokio::sync::{Semaphore, mpsc, oneshot};

use super::{
    Outcome, Store, StoreError, StoredUser, TagEntry, TagOp, UserRegistration, WriteJob, WriteOp,
};
use crate::metrics::Metrics;

pub const DB_FILE: &str = "tagcast.db";

#[derive(Debug, Clone)]
pub struct EmbeddedOptions {
    pub max_tags_per_user: usize,
    pub read_connections: usize,
    /// Most requests folded into one commit.
    pub max_batch: usize,
    /// The writer's page cache, MiB (SQLite's default is 2).
    pub cache_mb: usize,
}

impl Default for EmbeddedOptions {
    fn default() -> Self {
        EmbeddedOptions {
            max_tags_per_user: 100,
            read_connections: 4,
            max_batch: 512,
            cache_mb: 64,
        }
    }
}

pub struct EmbeddedStore {
    writer: Mutex<Option<mpsc::Sender<WriteJob>>>,
    writer_thread: Mutex<Option<std::thread::JoinHandle<()>>>,
    /// Dropping the sender stops the checkpointer.
    checkpointer: Mutex<Option<(std::sync::mpsc::Sender<()>, std::thread::JoinHandle<()>)>>,
    readers: Arc<Mutex<Vec<Connection>>>,
    read_permits: Arc<Semaphore>,
    path: PathBuf,
}

fn open_connection(path: &Path, flags: OpenFlags) -> rusqlite::Result<Connection> {
    let conn = Connection::open_with_flags(path, flags)?;
    conn.busy_timeout(Duration::from_secs(5))?;
    // FULL: the WAL is fsynced at every commit, so an acknowledged write survives power loss.
    conn.pragma_update(None, "synchronous", "FULL")?;
    Ok(conn)
}

fn classify(e: rusqlite::Error) -> StoreError {
    use rusqlite::ErrorCode as C;
    match e.sqlite_error_code() {
        Some(
            C::DatabaseBusy
            | C::DatabaseLocked
            | C::DiskFull
            | C::SystemIoFailure
            | C::CannotOpen
            | C::OutOfMemory,
        ) => StoreError::Unavailable(e.to_string()),
        _ => StoreError::Internal(e.to_string()),
    }
}

impl EmbeddedStore {
    /// Opens (creating if needed) the store in `data_dir`, migrating its schema.
    pub fn open(
        data_dir: &Path,
        options: EmbeddedOptions,
        metrics: Arc<Metrics>,
    ) -> Result<Self, String> {
        std::fs::create_dir_all(data_dir)
            .map_err(|e| format!("creating data directory {}: {e}", data_dir.display()))?;
        let path = data_dir.join(DB_FILE);
        let mut conn = open_connection(&path, OpenFlags::default())
            .map_err(|e| format!("opening {}: {e}", path.display()))?;
        let mode: String = conn
            .query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))
            .map_err(|e| format!("enabling WAL on {}: {e}", path.display()))?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(format!(
                "{} cannot use WAL mode (got {mode})",
                path.display()
            ));
        }
        let report = schema::migrate_to(&mut conn, schema::CURRENT_VERSION)?;
        if report.from != report.to {
            tracing::info!(
                from = report.from,
                to = report.to,
                "migrated embedded store schema"
            );
        }
        let mut readers = Vec::with_capacity(options.read_connections);
        for _ in 0..options.read_connections.max(1) {
            let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
            readers
                .push(open_connection(&path, flags).map_err(|e| format!("opening reader: {e}"))?);
        }
        // Checkpoints (copying WAL pages into the database file and fsyncing it) run on a
        // thread of their own: left to SQLite, they run inside the writer's commit, and
        // every request queued behind it waits (the p99 of docs/benchmarks.md).
        let cache_kib = -(options.cache_mb.max(1) as i64 * 1024);
        conn.pragma_update(None, "cache_size", cache_kib)
            .and_then(|_| conn.pragma_update(None, "wal_autocheckpoint", 0))
            .map_err(|e| format!("configuring {}: {e}", path.display()))?;
        let checkpoint_conn = open_connection(&path, OpenFlags::default())
            .map_err(|e| format!("opening the checkpointer's connection: {e}"))?;
        let (stop, stopped) = std::sync::mpsc::channel::<()>();
        let checkpointer = std::thread::Builder::new()
            .name("tagcast-checkpoint".into())
            .spawn(move || checkpoint_loop(checkpoint_conn, stopped))
            .map_err(|e| format!("starting checkpoint thread: {e}"))?;
        let (tx, rx) = mpsc::channel(options.max_batch * 4);
        let writer_thread = std::thread::Builder::new()
            .name("tagcast-writer".into())
            .spawn(move || writer_loop(conn, rx, options, metrics))
            .map_err(|e| format!("starting writer thread: {e}"))?;
        Ok(EmbeddedStore {
            writer: Mutex::new(Some(tx)),
            writer_thread: Mutex::new(Some(writer_thread)),
            checkpointer: Mutex::new(Some((stop, checkpointer))),
            read_permits: Arc::new(Semaphore::new(readers.len())),
            readers: Arc::new(Mutex::new(readers)),
            path,
        })
    }

    async fn write(&self, app_id: u32, op: WriteOp) -> Result<Vec<Outcome>, StoreError> {
        let sender = self.writer.lock().expect("writer lock").clone();
        let sender = sender.ok_or_else(|| StoreError::Unavailable("the store is closed".into()))?;
        let (reply, rx) = oneshot::channel();
        sender
            .send(WriteJob { app_id, op, reply })
            .await
            .map_err(|_| StoreError::Unavailable("the store is closed".into()))?;
        rx.await
            .map_err(|_| StoreError::Unavailable("the writer stopped".into()))?
    }

    async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> Result<T, StoreError> {
        let permit = self
            .read_permits
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| StoreError::Unavailable("closed".into()))?;
        let readers = self.readers.clone();
        tokio::task::spawn_blocking(move || {
            let conn = readers
                .lock()
                .expect("reader lock")
                .pop()
                .expect("a permit guarantees a connection");
            let result = f(&conn).map_err(classify);
            readers.lock().expect("reader lock").push(conn);
            drop(permit);
            result
        })
        .await
        .map_err(|e| StoreError::Internal(format!("reader task failed: {e}")))?
    }
}

/// Every 100 ms, a PASSIVE checkpoint: it copies what it can without waiting for, or
/// blocking, the writer and the readers. Ends when the store drops the stop sender.
fn checkpoint_loop(conn: Connection, stop: std::sync::mpsc::Receiver<()>) {
    while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) =
        stop.recv_timeout(Duration::from_millis(100))
    {
        if let Err(e) = conn.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(())) {
            tracing::warn!(error = %e, "WAL checkpoint failed (the WAL stays valid)");
        }
    }
}

fn writer_loop(
    mut conn: Connection,
    mut rx: mpsc::Receiver<WriteJob>,
    options: EmbeddedOptions,
    metrics: Arc<Metrics>,
) {
    let mut batch = Vec::with_capacity(options.max_batch);
    while let Some(first) = rx.blocking_recv() {
        batch.push(first);
        while batch.len() < options.max_batch {
            match rx.try_recv() {
                Ok(job) => batch.push(job),
                Err(_) => break,
            }
        }
        let started = Instant::now();
        let results = commit_batch(&mut conn, &batch, options.max_tags_per_user);
        metrics.observe_commit(started.elapsed(), batch.len());
        for (job, result) in batch.drain(..).zip(results) {
            // The requester may have gone away (client disconnected); the write stands.
            let _ = job.reply.send(result);
        }
    }
    // Channel closed: every accepted job has been committed and answered. Fold the WAL
    // back into the main file so the next start opens quickly.
    if let Err(e) = conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(())) {
        tracing::warn!(error = %e, "final WAL checkpoint failed (the WAL stays valid)");
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

/// Applies every job in one transaction with one commit. If a job fails with an SQL error,
/// the transaction is rolled back and each job runs again in a transaction of its own, so
/// the failing one fails alone (a savepoint per job would cost a statement pair each, on
/// every batch, for a case that needs a bug or a broken disk). If a commit fails, its jobs
/// report the failure: none of them was acknowledged.
fn commit_batch(
    conn: &mut Connection,
    batch: &[WriteJob],
    cap: usize,
) -> Vec<Result<Vec<Outcome>, StoreError>> {
    match commit_all(conn, batch, cap) {
        Ok(outcomes) => outcomes.into_iter().map(Ok).collect(),
        Err(e) if batch.len() == 1 => vec![Err(classify(e))],
        Err(_) => batch
            .iter()
            .map(|job| {
                commit_all(conn, std::slice::from_ref(job), cap)
                    .map(|mut o| o.remove(0))
                    .map_err(classify)
            })
            .collect(),
    }
}

#[async_trait]
impl Store for EmbeddedStore {
    async fn update_tags(
        &self,
        app_id: u32,
        inbox: u32,
        op: TagOp,
        entries: Vec<TagEntry>,
    ) -> Result<Vec<Outcome>, StoreError> {
        self.write(app_id, WriteOp::Tags { inbox, op, entries })
            .await
    }

    async fn register_users(
        &self,
        app_id: u32,
        users: Vec<UserRegistration>,
    ) -> Result<Vec<Outcome>, StoreError> {
        self.write(app_id, WriteOp::Register(users)).await
    }

    async fn unregister_users(
        &self,
        app_id: u32,
        user_ids: Vec<i64>,
    ) -> Result<Vec<Outcome>, StoreError> {
        self.write(app_id, WriteOp::Unregister(user_ids)).await
    }

    async fn get_users(
        &self,
        app_id: u32,
        inbox: u32,
        user_ids: Vec<i64>,
    ) -> Result<Vec<Option<StoredUser>>, StoreError> {
        self.read(move |conn| apply::get_users(conn, app_id, inbox, &user_ids))
            .await
    }

    async fn ready(&self) -> Result<(), StoreError> {
        if self.writer.lock().expect("writer lock").is_none() {
            return Err(StoreError::Unavailable("the store is closed".into()));
        }
        self.read(|conn| conn.query_row("SELECT COUNT(*) FROM sqlite_master", [], |_| Ok(())))
            .await
    }

    async fn close(&self) {
        let checkpointer = self.checkpointer.lock().expect("checkpointer lock").take();
        if let Some((stop, handle)) = checkpointer {
            drop(stop);
            let _ = tokio::task::spawn_blocking(move || handle.join()).await;
        }
        // Dropping the only sender ends the writer loop once the queue is drained.
        self.writer.lock().expect("writer lock").take();
        let handle = self
            .writer_thread
            .lock()
            .expect("writer thread lock")
            .take();
        if let Some(handle) = handle {
            let path = self.path.clone();
            let joined = tokio::task::spawn_blocking(move || handle.join()).await;
            if !matches!(joined, Ok(Ok(()))) {
                tracing::error!(path = %path.display(), "embedded store writer did not stop cleanly");
            }
        }
    }
}
