//! The embedded store: SQLite (bundled) in WAL mode with `synchronous=FULL`, one
//! process per data directory (`lock.rs`).
//!
//! Writes go through one writer thread (`writer.rs`: group commit, the bound on the
//! write-ahead log). Checkpoints, the log's size in `/metrics` and recovery probes run on a
//! maintenance thread of their own (`maintenance.rs`), off the writer's path. Reads use a
//! small pool of separate connections; WAL lets them run while the writer commits, and
//! they see every committed (hence every acknowledged) write. `health.rs` keeps whether
//! the store can write, for `/readyz`. The audience index is built by the writer thread
//! before it takes the first write, and follows every commit before it is answered.

mod apply;
pub mod backup;
mod broadcast;
pub mod check;
mod events;
mod health;
pub mod lock;
mod maintenance;
mod saved;
pub mod schema;
mod writer;

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use rusqlite::{Connection, OpenFlags};
use tokio::sync::{Semaphore, mpsc, oneshot};

use super::{Origin, Outcome, Store, StoreError, WriteJob, WriteOp};
use crate::audience::AudienceIndex;
use crate::metrics::Metrics;
use crate::model::broadcast::{
    Claimed, Delivery, Info, Loaded, NewBroadcast, OutboxStats, Outlet, PageDone, PageKey, Purged,
    Sent,
};
use crate::model::filter::Filter;
use crate::throttle::LogThrottle;
use health::Health;
pub use lock::DataDirLock;
use writer::Msg;

pub const DB_FILE: &str = "tagcast.db";
/// The audience index as saved at the last clean stop (see `audience/snapshot.rs`).
pub const SNAPSHOT_FILE: &str = "audience.snapshot";
/// SQLite's write-ahead log beside [`DB_FILE`].
pub const WAL_FILE: &str = "tagcast.db-wal";

/// How long a statement waits for another connection's lock before failing busy.
pub(crate) const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, Clone)]
pub struct EmbeddedOptions {
    pub max_tags_per_user: usize,
    pub read_connections: usize,
    /// Most requests folded into one commit.
    pub max_batch: usize,
    /// The writer's page cache, MiB (SQLite's default is 2).
    pub cache_mb: usize,
    /// The write-ahead log is restarted from its beginning when it holds more than this.
    pub wal_limit_bytes: u64,
    /// The state is saved this often when it changed (`None`: only at a clean stop)...
    pub snapshot_every: Option<Duration>,
    /// ... or once this many changes were applied since the last save.
    pub snapshot_changes: u64,
}

impl Default for EmbeddedOptions {
    fn default() -> Self {
        EmbeddedOptions {
            max_tags_per_user: 100,
            read_connections: 4,
            max_batch: 512,
            cache_mb: 64,
            wal_limit_bytes: 64 << 20,
            snapshot_every: Some(Duration::from_secs(300)),
            snapshot_changes: 1_000_000,
        }
    }
}

pub struct EmbeddedStore {
    writer: Mutex<Option<mpsc::Sender<Msg>>>,
    writer_thread: Mutex<Option<std::thread::JoinHandle<()>>>,
    /// Dropping the sender stops the maintenance thread.
    maintenance: Mutex<Option<(std::sync::mpsc::Sender<()>, std::thread::JoinHandle<()>)>>,
    readers: Arc<Mutex<Vec<Connection>>>,
    read_permits: Arc<Semaphore>,
    health: Arc<Health>,
    path: PathBuf,
    /// Released once the writer has stopped.
    lock: Mutex<Option<DataDirLock>>,
    index: Arc<AudienceIndex>,
    /// Broadcasts neither recalled nor purged (see `broadcast.rs`).
    active: Arc<broadcast::ActiveList>,
}

pub(crate) fn open_connection(path: &Path, flags: OpenFlags) -> rusqlite::Result<Connection> {
    let conn = Connection::open_with_flags(path, flags)?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    // FULL: the WAL is fsynced at every commit, so an acknowledged write survives power loss.
    conn.pragma_update(None, "synchronous", "FULL")?;
    // Plans must not depend on bound values: otherwise SQLite re-prepares (parses and
    // plans again) a statement at its first step after a rebind of certain parameters,
    // which was a fifth of a BatchGetUser's CPU (issue 11). Our statements have one good
    // plan whatever the ids.
    conn.set_db_config(
        rusqlite::config::DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG,
        true,
    )?;
    Ok(conn)
}

impl EmbeddedStore {
    /// Takes `data_dir`'s lock, then opens (creating if needed) the store in it, migrating
    /// its schema.
    pub fn open(
        data_dir: &Path,
        options: EmbeddedOptions,
        metrics: Arc<Metrics>,
    ) -> Result<Self, String> {
        let lock = DataDirLock::acquire(data_dir, "open the embedded store")?;
        Self::open_locked(lock, options, metrics)
    }

    /// Opens the store in the directory `lock` holds.
    pub fn open_locked(
        lock: DataDirLock,
        options: EmbeddedOptions,
        metrics: Arc<Metrics>,
    ) -> Result<Self, String> {
        let path = lock.dir().join(DB_FILE);
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
        let migration = schema::migrate(&mut conn, schema::MIGRATIONS)?;
        migration.log("embedded store", schema::CURRENT_VERSION);
        // Pages a killed process had claimed are nobody's now.
        broadcast::release_leases(&conn)
            .map_err(|e| format!("releasing webhook page leases in {}: {e}", path.display()))?;
        let active =
            Arc::new(broadcast::ActiveList::load(&conn).map_err(|e| {
                format!("reading the active broadcasts in {}: {e}", path.display())
            })?);
        let mut readers = Vec::with_capacity(options.read_connections);
        for _ in 0..options.read_connections.max(1) {
            let flags = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX;
            readers
                .push(open_connection(&path, flags).map_err(|e| format!("opening reader: {e}"))?);
        }
        // Checkpoints are the maintenance thread's and the writer's own business (see
        // writer.rs): SQLite's automatic ones would run inside commits.
        let cache_kib = -(options.cache_mb.max(1) as i64 * 1024);
        conn.pragma_update(None, "cache_size", cache_kib)
            .and_then(|_| conn.pragma_update(None, "wal_autocheckpoint", 0))
            .and_then(|_| {
                conn.pragma_update(None, "journal_size_limit", options.wal_limit_bytes as i64)
            })
            .map_err(|e| format!("configuring {}: {e}", path.display()))?;
        // After the pragma, which would replace it.
        let wal_frames = writer::count_wal_frames(&mut conn)
            .map_err(|e| format!("configuring {}: {e}", path.display()))?;
        let page_size: u64 = conn
            .query_row("PRAGMA page_size", [], |r| r.get::<_, i64>(0))
            .map_err(|e| format!("reading the page size of {}: {e}", path.display()))?
            as u64;
        let maintenance_conn = open_connection(&path, OpenFlags::default())
            .map_err(|e| format!("opening the maintenance connection: {e}"))?;
        let wal_path = lock.dir().join(WAL_FILE);
        let health = Arc::new(Health::new(metrics.clone()));
        let (tx, rx) = mpsc::channel(options.max_batch * 4);
        let (stop, stopped) = std::sync::mpsc::channel::<()>();
        let index = Arc::new(AudienceIndex::new());
        let saved = Arc::new(saved::Saved {
            path: lock.dir().join(SNAPSHOT_FILE),
            token: Mutex::new(None),
            changes: std::sync::atomic::AtomicU64::new(0),
            writing: Mutex::new(()),
        });
        let periodic = saved::Periodic {
            saved: saved.clone(),
            index: index.clone(),
            every: options.snapshot_every,
            max_changes: options.snapshot_changes,
            last: Instant::now(),
        };
        let maintenance = maintenance::Maintenance {
            periodic,
            conn: maintenance_conn,
            wal_path: wal_path.clone(),
            wal_frames: wal_frames.clone(),
            writer: tx.clone(),
            health: health.clone(),
            metrics: metrics.clone(),
        };
        let maintenance = std::thread::Builder::new()
            .name("tagcast-maintenance".into())
            .spawn(move || maintenance::run(maintenance, stopped))
            .map_err(|e| format!("starting the maintenance thread: {e}"))?;
        let writer = writer::Writer {
            index: index.clone(),
            saved,
            trust_snapshot: migration.from == migration.to,
            conn,
            wal_frames,
            frame_bytes: page_size + 24,
            options,
            metrics,
            health: health.clone(),
            retry_checkpoint_at: Instant::now(),
            checkpoint_failed: false,
            over_bound: LogThrottle::new(Duration::from_secs(30)),
        };
        let writer_thread = std::thread::Builder::new()
            .name("tagcast-writer".into())
            .spawn(move || writer::run(writer, rx))
            .map_err(|e| format!("starting writer thread: {e}"))?;
        Ok(EmbeddedStore {
            writer: Mutex::new(Some(tx)),
            writer_thread: Mutex::new(Some(writer_thread)),
            maintenance: Mutex::new(Some((stop, maintenance))),
            read_permits: Arc::new(Semaphore::new(readers.len())),
            readers: Arc::new(Mutex::new(readers)),
            health,
            path,
            lock: Mutex::new(Some(lock)),
            index,
            active,
        })
    }

    async fn write(
        &self,
        app_id: u32,
        op: WriteOp,
        origin: Origin,
    ) -> Result<Vec<Outcome>, StoreError> {
        let sender = self.writer.lock().expect("writer lock").clone();
        let sender = sender.ok_or_else(|| StoreError::unavailable("the store is closed"))?;
        let (reply, rx) = oneshot::channel();
        sender
            .send(Msg::Job(WriteJob {
                app_id,
                op,
                origin,
                reply,
            }))
            .await
            .map_err(|_| StoreError::unavailable("the store is closed"))?;
        rx.await
            .map_err(|_| StoreError::unavailable("the writer stopped"))?
    }

    /// Runs `f` on the writer thread, after the writes queued before it have committed.
    async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Connection, &AudienceIndex) -> rusqlite::Result<T> + Send + 'static,
    ) -> Result<T, StoreError> {
        let sender = self.writer.lock().expect("writer lock").clone();
        let sender = sender.ok_or_else(|| StoreError::unavailable("the store is closed"))?;
        let (reply, rx) = oneshot::channel();
        let job = move |conn: &mut Connection, index: &AudienceIndex, health: &Health| {
            // A failure tells about the store; a success does not (most of these commit
            // nothing when there is nothing to do: the sweeper's purge every second would
            // make a full disk look writable again). Requests and probes say it is.
            let result = f(conn, index).map_err(|e| health.failed(e, true));
            let _ = reply.send(result);
        };
        sender
            .send(Msg::Run(Box::new(job)))
            .await
            .map_err(|_| StoreError::unavailable("the store is closed"))?;
        rx.await
            .map_err(|_| StoreError::unavailable("the writer stopped"))?
    }

    /// Audience answers wait for nothing but the index's build at start (at most
    /// [`BUSY_TIMEOUT`]): the writer applies each commit to the index before it answers.
    async fn index_built(&self) -> Result<(), StoreError> {
        if self.index.is_built() {
            return Ok(());
        }
        // A build that failed (a row it cannot read) is the answer, not a wait.
        self.health.check()?;
        if self.index.wait_built(BUSY_TIMEOUT).await {
            return Ok(());
        }
        self.health.check()?;
        Err(StoreError::unavailable(
            "the state is being built from the store",
        ))
    }

    /// Runs `f` on a reader connection, on the calling worker thread: the hot reads
    /// (a request's users, a recipient's ordinal, a broadcast) are a few index lookups in
    /// pages that are almost always cached, cheaper than a hand-off to another thread and
    /// back (issue 11 measured both). Waits, without blocking, for a free connection.
    async fn read_inline<T>(
        &self,
        f: impl FnOnce(&Connection) -> rusqlite::Result<T>,
    ) -> Result<T, StoreError> {
        let _permit = self
            .read_permits
            .acquire()
            .await
            .map_err(|_| StoreError::unavailable("closed"))?;
        let conn = self
            .readers
            .lock()
            .expect("reader lock")
            .pop()
            .expect("a permit guarantees a connection");
        let result = f(&conn).map_err(|e| self.health.failed(e, false));
        self.readers.lock().expect("reader lock").push(conn);
        result
    }

    /// Runs `f` on a reader connection on the blocking pool: for reads that may walk
    /// large rows (audiences) or whole tables (outbox statistics).
    async fn read<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    ) -> Result<T, StoreError> {
        let permit = self
            .read_permits
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| StoreError::unavailable("closed"))?;
        let readers = self.readers.clone();
        let health = self.health.clone();
        tokio::task::spawn_blocking(move || {
            let conn = readers
                .lock()
                .expect("reader lock")
                .pop()
                .expect("a permit guarantees a connection");
            let result = f(&conn).map_err(|e| health.failed(e, false));
            readers.lock().expect("reader lock").push(conn);
            drop(permit);
            result
        })
        .await
        .map_err(|e| StoreError::internal("a reader task failed").caused_by(e))?
    }
}

#[async_trait]
impl Store for EmbeddedStore {
    async fn write(
        &self,
        app_id: u32,
        op: WriteOp,
        origin: Origin,
    ) -> Result<Vec<Outcome>, StoreError> {
        self.write(app_id, op, origin).await
    }

    fn state(&self) -> &AudienceIndex {
        &self.index
    }

    /// The writer applies each commit to the state before it answers: only the build at
    /// start is waited for.
    async fn caught_up(&self, _app_id: u32) -> Result<&AudienceIndex, StoreError> {
        self.index_built().await?;
        Ok(&self.index)
    }

    async fn send_broadcast(
        &self,
        b: NewBroadcast,
        filter: &Filter,
        per_day: u32,
        outlets: Vec<Outlet>,
        now: i64,
    ) -> Result<Sent, StoreError> {
        self.index_built().await?;
        let filter = filter.clone();
        let (app_id, inbox) = (b.app_id, b.inbox);
        let sent = self
            .run(move |conn, index| {
                broadcast::send(conn, index, &b, &filter, per_day, &outlets, now)
            })
            .await?;
        if let Sent::Created {
            id,
            expire_time,
            replayed: false,
            ..
        } = sent
        {
            let active = broadcast::Active {
                id,
                inbox,
                expire_time,
            };
            self.active.add(app_id, active);
        }
        Ok(sent)
    }

    async fn recall_broadcast(
        &self,
        app_id: u32,
        id: i64,
        origin: Origin,
    ) -> Result<bool, StoreError> {
        let found = self
            .run(move |conn, index| broadcast::recall(conn, index, app_id, id, &origin))
            .await?;
        self.active.remove(app_id, id);
        Ok(found)
    }

    async fn read_log(
        &self,
        app_id: u32,
        read: super::LogRead,
    ) -> Result<super::LogPage, StoreError> {
        self.read(move |conn| events::read(conn, app_id, read))
            .await
    }

    async fn event_cursor(&self, hook: &str, app_id: u32) -> Result<u64, StoreError> {
        self.read_inline(|conn| events::cursor(conn, hook, app_id))
            .await
    }

    async fn lease_event_sender(
        &self,
        hook: &str,
        app_id: u32,
        _node: &str,
        _now_ms: i64,
        _lease_ms: i64,
    ) -> Result<Option<u64>, StoreError> {
        // One process holds the data directory: its sender is the only one.
        self.event_cursor(hook, app_id).await.map(Some)
    }

    async fn save_event_cursor(
        &self,
        hook: &str,
        app_id: u32,
        _node: &str,
        pos: u64,
    ) -> Result<bool, StoreError> {
        let hook = hook.to_owned();
        self.run(move |conn, _| events::save_cursor(conn, &hook, app_id, pos))
            .await?;
        Ok(true)
    }

    async fn log_apps(&self) -> Result<Vec<u32>, StoreError> {
        // The state holds every app whose log it replayed or appended to (a scan of the
        // log for its distinct apps would read every entry).
        Ok(self
            .index
            .positions()
            .into_iter()
            .filter(|(_, pos)| *pos > 0)
            .map(|(app, _)| app)
            .collect())
    }

    async fn log_cut(
        &self,
        app_id: u32,
        since_ms: i64,
        max_events: u64,
    ) -> Result<(u64, u64), StoreError> {
        self.read(move |conn| events::cut(conn, app_id, since_ms, max_events))
            .await
    }

    async fn trim_log(&self, app_id: u32, keep_from: u64, chunk: u64) -> Result<bool, StoreError> {
        self.run(move |conn, _| events::trim(conn, app_id, keep_from, chunk))
            .await
    }

    async fn get_broadcast(
        &self,
        app_id: u32,
        id: i64,
    ) -> Result<Option<(Info, Delivery)>, StoreError> {
        self.read_inline(|conn| broadcast::get(conn, app_id, id))
            .await
    }

    async fn broadcasts_on_day(&self, app_id: u32, day: i64) -> Result<u32, StoreError> {
        self.read_inline(|conn| broadcast::sent_on_day(conn, app_id, day))
            .await
    }

    async fn list_broadcasts(
        &self,
        app_id: u32,
        before: Option<i64>,
        limit: usize,
    ) -> Result<Vec<(Info, Delivery)>, StoreError> {
        self.read_inline(|conn| broadcast::list(conn, app_id, before, limit))
            .await
    }

    async fn active_broadcasts(
        &self,
        app_id: u32,
        inbox: u32,
        user_id: i64,
        now_ms: i64,
    ) -> Result<(Option<u32>, Vec<i64>), StoreError> {
        self.index_built().await?;
        Ok(match self.index.ordinal(app_id, user_id) {
            None => (None, Vec::new()),
            Some(o) => (Some(o), self.active.ids(app_id, inbox, now_ms)),
        })
    }

    async fn load_broadcast(&self, id: i64) -> Result<Option<Loaded>, StoreError> {
        self.read(move |conn| Ok(broadcast::load(conn, id))).await?
    }

    async fn claim_pages(
        &self,
        now_ms: i64,
        lease_ms: i64,
        window: u32,
        wants: Vec<(String, usize)>,
    ) -> Result<Vec<Claimed>, StoreError> {
        self.run(move |conn, _| broadcast::claim(conn, now_ms, lease_ms, window, &wants))
            .await
    }

    async fn finish_pages(
        &self,
        done: Vec<(PageKey, PageDone)>,
        window: u32,
    ) -> Result<(), StoreError> {
        self.run(move |conn, _| broadcast::finish(conn, &done, window))
            .await
    }

    async fn outbox_stats(&self) -> Result<OutboxStats, StoreError> {
        self.read(broadcast::stats).await
    }

    async fn purge_expired(&self, now_ms: i64) -> Result<Purged, StoreError> {
        self.active.expire(now_ms);
        self.run(move |conn, _| broadcast::purge(conn, now_ms))
            .await
    }

    async fn ready(&self) -> Result<(), StoreError> {
        if self.writer.lock().expect("writer lock").is_none() {
            return Err(StoreError::unavailable("the store is closed"));
        }
        self.health.check()?;
        if !self.index.is_built() {
            return Err(StoreError::unavailable("the audience index is being built"));
        }
        self.read(|conn| conn.query_row("SELECT COUNT(*) FROM sqlite_master", [], |_| Ok(())))
            .await
    }

    async fn close(&self) {
        let maintenance = self.maintenance.lock().expect("maintenance lock").take();
        if let Some((stop, handle)) = maintenance {
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
        // Only now may another process open the directory.
        self.lock.lock().expect("lock lock").take();
    }
}
