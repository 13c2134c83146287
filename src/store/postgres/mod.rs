//! The PostgreSQL store, for several tagcast nodes sharing one database.
//!
//! Each batch of write requests is one transaction: it takes transaction-scoped advisory
//! locks on the users it touches (in one global order, so no deadlocks; also for users that
//! do not exist yet), reads their current state in one query, has the shared planner
//! (`store/plan.rs`) decide each entry's outcome in order, writes the net effect with one
//! set-based statement (UNNEST arrays) per table, and appends the changes to the change log
//! that every node's audience index follows (`follow.rs`). Concurrent writers of one user,
//! on any node, are serialized by the lock, so no key is lost and the tag cap cannot be
//! raced past.
//!
//! Query plans: PostgreSQL plans from statistics, and until autovacuum first analyzes a
//! table (a minute or more after a bulk load) it assumes `app_id = $1` picks a handful of
//! rows, when in truth one app can be the whole table. A join of the requested ids against
//! `tags` could then scan every tag of the app (measured: 120-290 ms per request on 500k
//! tags), and a prepared statement keeps such a plan. So every per-user lookup is a LATERAL
//! subquery per id (`OFFSET 0` keeps it from being flattened into a join), and its inbox
//! condition is written `inbox_type + 0 = $2`, which the `tags_audience` index (app_id,
//! inbox_type, key, ...) cannot use as a key prefix: only the primary key's (app_id,
//! user_id) prefix can serve it, whatever the statistics say.
//!
//! Failures to reach the database answer quickly (pool, connect and operation timeouts) as
//! `Unavailable`; broken connections are replaced by the pool, so service resumes on its
//! own when the database returns. Every error names the server and database (never the
//! URL) and its real cause; TLS and `sslmode` are in `connect.rs`.

mod batch;
mod broadcast;
pub mod check;
pub mod connect;
mod events;
mod follow;
pub mod schema;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use tokio::sync::{mpsc, oneshot};

use super::{Origin, Outcome, Store, StoreError, WriteJob, WriteOp};
use crate::audience::AudienceIndex;
use crate::metrics::Metrics;
use crate::model::broadcast::{
    Claimed, Delivery, Info, Loaded, NewBroadcast, OutboxStats, Outlet, PageDone, PageKey, Purged,
    Sent,
};
use crate::model::filter::Filter;

#[derive(Debug, Clone)]
pub struct PostgresOptions {
    pub max_tags_per_user: usize,
    pub pool_size: usize,
    /// Transactions committing batches of write requests at the same time.
    pub committers: usize,
    /// Most write requests folded into one transaction.
    pub max_batch: usize,
    /// Longest a request waits for a connection, a new connection, or one operation.
    pub timeout: Duration,
    /// `store.ca_file`: the CA for sslmode=verify-* (the URL's `sslrootcert` wins).
    pub ca_file: Option<PathBuf>,
    /// Whether this process follows the change logs to hold the state (a serving node;
    /// `tagcast import` only writes: its planner reads the rows under their locks, and
    /// nothing reads its state).
    pub follow: bool,
    /// Where this node saves its state (`data_dir/audience.snapshot`; `None`: never, every
    /// start builds from the tables).
    pub snapshot_file: Option<PathBuf>,
    /// Saved this often, and after this many changes applied, whichever comes first.
    pub snapshot_every: Option<Duration>,
    pub snapshot_changes: u64,
}

pub struct PostgresStore {
    shared: Arc<Shared>,
    queue: std::sync::Mutex<Option<mpsc::Sender<WriteJob>>>,
    committers: tokio::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>,
    follower: tokio::sync::Mutex<Option<tokio::task::JoinHandle<()>>>,
    stop_follower: Arc<tokio::sync::Notify>,
    /// The data directory's lock (a serving node keeps its snapshot file there).
    _lock: Option<super::embedded::DataDirLock>,
}

/// What the request handlers and the committer tasks share.
struct Shared {
    pool: Pool,
    options: PostgresOptions,
    metrics: Arc<Metrics>,
    /// Host, port and database, for error texts.
    target: Arc<str>,
    /// For the follower's LISTEN connection. Holds the password: never logged.
    url: String,
    follower: follow::Follower,
}

fn classify(target: &str, e: tokio_postgres::Error) -> StoreError {
    let retryable = match e.code() {
        // No SQLSTATE: the connection broke or could not be made.
        None => true,
        Some(code) => {
            let c = code.code();
            c.starts_with("08")
                || c.starts_with("53")
                || c.starts_with("57P")
                || c == "40001"
                || c == "40P01"
        }
    };
    // Display of a server error is only "db error": the log's chain names the server's
    // message (the cause's own source).
    let what = format!("PostgreSQL at {target}");
    if retryable || e.is_closed() {
        StoreError::unavailable(what).caused_by(e)
    } else {
        StoreError::internal(what).caused_by(e)
    }
}

fn pool_error(target: &str, e: deadpool_postgres::PoolError) -> StoreError {
    StoreError::unavailable(format!(
        "PostgreSQL at {target}: {}",
        describe_pool_error(&e)
    ))
}

/// A pool error's cause: deadpool's own text wraps the connection error as "Error
/// occurred while creating a new object: db error", which names no cause.
fn describe_pool_error(e: &deadpool_postgres::PoolError) -> String {
    use deadpool_postgres::PoolError;
    match e {
        PoolError::Backend(e) => connect::chain(e),
        PoolError::Timeout(_) => "no connection within store.timeout_ms".into(),
        other => other.to_string(),
    }
}

impl PostgresStore {
    /// Connects, migrates the schema (once, under an advisory lock) and builds the pool.
    pub async fn open(
        url: &str,
        options: PostgresOptions,
        metrics: Arc<Metrics>,
    ) -> Result<Self, String> {
        let connect::Connector {
            mut config,
            tls,
            target,
            ..
        } = connect::Connector::new(url, options.ca_file.as_deref())?;
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(options.timeout);
        }
        config.application_name("tagcast");
        let manager = Manager::from_config(
            config,
            tls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(options.pool_size)
            .wait_timeout(Some(options.timeout))
            .create_timeout(Some(options.timeout))
            .recycle_timeout(Some(options.timeout))
            .runtime(Runtime::Tokio1)
            .build()
            .map_err(|e| format!("building the PostgreSQL pool: {e}"))?;
        let mut client = pool.get().await.map_err(|e| {
            format!(
                "connecting to PostgreSQL at {target}: {}",
                describe_pool_error(&e)
            )
        })?;
        schema::migrate(&mut client)
            .await
            .map_err(|e| format!("PostgreSQL at {target}: {e}"))?
            .log("PostgreSQL store", schema::CURRENT_VERSION);
        drop(client);
        let (tx, rx) = mpsc::channel(options.max_batch * options.committers.max(1) * 2);
        let rx = Arc::new(tokio::sync::Mutex::new(rx));
        let shared = Arc::new(Shared {
            pool,
            options,
            metrics,
            target: target.into(),
            url: url.to_owned(),
            follower: follow::Follower::new(),
        });
        let committers = (0..shared.options.committers.max(1))
            .map(|_| tokio::spawn(committer(shared.clone(), rx.clone())))
            .collect();
        let stop_follower = Arc::new(tokio::sync::Notify::new());
        let follower = shared
            .options
            .follow
            .then(|| tokio::spawn(follow::run(shared.clone(), stop_follower.clone())));
        Ok(PostgresStore {
            shared,
            queue: std::sync::Mutex::new(Some(tx)),
            committers: tokio::sync::Mutex::new(committers),
            follower: tokio::sync::Mutex::new(follower),
            stop_follower,
            _lock: None,
        })
    }

    /// Keeps `lock` for as long as the store lives.
    pub fn holding(mut self, lock: Option<super::embedded::DataDirLock>) -> Self {
        self._lock = lock;
        self
    }

    /// Queues a write for the committers and waits for its commit.
    async fn submit(
        &self,
        app_id: u32,
        write: WriteOp,
        origin: Origin,
    ) -> Result<Vec<Outcome>, StoreError> {
        let closed = || StoreError::unavailable("the store is closed");
        let sender = self
            .queue
            .lock()
            .expect("queue lock")
            .clone()
            .ok_or_else(closed)?;
        let (reply, rx) = oneshot::channel();
        sender
            .send(WriteJob {
                app_id,
                op: write,
                origin,
                reply,
            })
            .await
            .map_err(|_| closed())?;
        rx.await.map_err(|_| closed())?
    }
}

/// Takes batches of queued writes and commits each batch as one transaction: the locks of
/// every user in the batch in one statement (one global order, as for a single request,
/// so batches on any node never deadlock), then each request in queue order, then one
/// COMMIT, whose one WAL flush serves the whole batch.
async fn committer(shared: Arc<Shared>, rx: Arc<tokio::sync::Mutex<mpsc::Receiver<WriteJob>>>) {
    let max_batch = shared.options.max_batch.max(1);
    loop {
        let mut batch = Vec::with_capacity(max_batch);
        {
            let mut rx = rx.lock().await;
            match rx.recv().await {
                Some(job) => batch.push(job),
                None => return,
            }
            while batch.len() < max_batch {
                match rx.try_recv() {
                    Ok(job) => batch.push(job),
                    Err(_) => break,
                }
            }
        }
        shared.commit_batch(batch).await;
    }
}

impl Shared {
    async fn commit_batch(&self, batch: Vec<WriteJob>) {
        let started = Instant::now();
        let result = self.run(&batch).await;
        self.metrics.observe_commit(started.elapsed(), batch.len());
        match result {
            Ok(outcomes) => {
                for (job, out) in batch.into_iter().zip(outcomes) {
                    // The requester may have gone away; the write stands.
                    let _ = job.reply.send(Ok(out));
                }
            }
            // A request that fails for a reason of its own must not fail the others:
            // run each alone (nothing of the batch was committed).
            Err(StoreError::Internal { .. }) if batch.len() > 1 => {
                self.metrics.observe_batch_split();
                for job in batch {
                    let out = self.run(std::slice::from_ref(&job)).await;
                    let _ = job.reply.send(out.map(|mut o| o.remove(0)));
                }
            }
            Err(e) => {
                for job in batch {
                    let _ = job.reply.send(Err(e.clone()));
                }
            }
        }
    }

    /// A pooled connection, or why there is none.
    async fn client(&self) -> Result<deadpool_postgres::Object, StoreError> {
        self.pool
            .get()
            .await
            .map_err(|e| pool_error(&self.target, e))
    }

    /// Applies `jobs` in order in one transaction on a pooled connection, bounded by the
    /// timeout.
    async fn run(&self, jobs: &[WriteJob]) -> Result<Vec<Vec<Outcome>>, StoreError> {
        let work = async {
            let classify = |e| classify(&self.target, e);
            let mut client = self.client().await?;
            let tx = client.transaction().await.map_err(classify)?;
            let plan = batch::apply(&tx, jobs, self.options.max_tags_per_user)
                .await
                .map_err(|f| match f {
                    batch::Failure::Sql(e) => classify(e),
                    batch::Failure::Plan(e) => e,
                })?;
            tx.commit().await.map_err(classify)?;
            self.metrics.events.appended.inc_by(plan.events_total());
            Ok(plan.outcomes)
        };
        within(self.options.timeout, work).await
    }
}

/// `work`, or `Unavailable` when PostgreSQL does not answer within `limit`.
async fn within<T>(
    limit: Duration,
    work: impl std::future::Future<Output = Result<T, StoreError>>,
) -> Result<T, StoreError> {
    tokio::time::timeout(limit, work)
        .await
        .map_err(|_| StoreError::unavailable("postgres did not answer in time"))?
}

#[async_trait]
impl Store for PostgresStore {
    async fn write(
        &self,
        app_id: u32,
        op: WriteOp,
        origin: Origin,
    ) -> Result<Vec<Outcome>, StoreError> {
        self.submit(app_id, op, origin).await
    }

    fn state(&self) -> &AudienceIndex {
        &self.shared.follower.index
    }

    /// One round trip for the app's log head, then a wait until this node has applied it:
    /// reads answer from memory instead of reading rows.
    async fn caught_up(&self, app_id: u32) -> Result<&AudienceIndex, StoreError> {
        follow::catch_up(&self.shared, app_id, self.shared.options.timeout).await?;
        Ok(&self.shared.follower.index)
    }

    async fn send_broadcast(
        &self,
        b: NewBroadcast,
        filter: &Filter,
        per_day: u32,
        outlets: Vec<Outlet>,
        now: i64,
    ) -> Result<Sent, StoreError> {
        self.shared
            .send_broadcast(b, filter, per_day, outlets, now)
            .await
    }

    async fn recall_broadcast(
        &self,
        app_id: u32,
        id: i64,
        origin: Origin,
    ) -> Result<bool, StoreError> {
        self.shared.recall_broadcast(app_id, id, origin).await
    }

    async fn get_broadcast(
        &self,
        app_id: u32,
        id: i64,
    ) -> Result<Option<(Info, Delivery)>, StoreError> {
        self.shared.get_broadcast(app_id, id).await
    }

    async fn read_log(
        &self,
        app_id: u32,
        read: super::LogRead,
    ) -> Result<super::LogPage, StoreError> {
        self.shared.read_log(app_id, read).await
    }

    async fn event_cursor(&self, hook: &str, app_id: u32) -> Result<u64, StoreError> {
        self.shared.event_cursor(hook, app_id).await
    }

    async fn lease_event_sender(
        &self,
        hook: &str,
        app_id: u32,
        node: &str,
        now_ms: i64,
        lease_ms: i64,
    ) -> Result<Option<u64>, StoreError> {
        self.shared
            .lease_event_sender(hook, app_id, node, now_ms, lease_ms)
            .await
    }

    async fn save_event_cursor(
        &self,
        hook: &str,
        app_id: u32,
        node: &str,
        pos: u64,
    ) -> Result<bool, StoreError> {
        self.shared.save_event_cursor(hook, app_id, node, pos).await
    }

    async fn log_apps(&self) -> Result<Vec<u32>, StoreError> {
        self.shared.log_apps().await
    }

    async fn log_cut(
        &self,
        app_id: u32,
        since_ms: i64,
        max_events: u64,
    ) -> Result<(u64, u64), StoreError> {
        self.shared.log_cut(app_id, since_ms, max_events).await
    }

    async fn trim_log(&self, app_id: u32, keep_from: u64, chunk: u64) -> Result<bool, StoreError> {
        self.shared.trim_log(app_id, keep_from, chunk).await
    }

    async fn broadcasts_on_day(&self, app_id: u32, day: i64) -> Result<u32, StoreError> {
        self.shared.broadcasts_on_day(app_id, day).await
    }

    async fn list_broadcasts(
        &self,
        app_id: u32,
        before: Option<i64>,
        limit: usize,
    ) -> Result<Vec<(Info, Delivery)>, StoreError> {
        self.shared.list_broadcasts(app_id, before, limit).await
    }

    async fn active_broadcasts(
        &self,
        app_id: u32,
        inbox: u32,
        user_id: i64,
        now_ms: i64,
    ) -> Result<(Option<u32>, Vec<i64>), StoreError> {
        self.shared
            .active_broadcasts(app_id, inbox, user_id, now_ms)
            .await
    }

    async fn load_broadcast(&self, id: i64) -> Result<Option<Loaded>, StoreError> {
        self.shared.load_broadcast(id).await
    }

    async fn claim_pages(
        &self,
        now_ms: i64,
        lease_ms: i64,
        window: u32,
        wants: Vec<(String, usize)>,
    ) -> Result<Vec<Claimed>, StoreError> {
        self.shared
            .claim_pages(now_ms, lease_ms, window, wants)
            .await
    }

    async fn finish_pages(
        &self,
        done: Vec<(PageKey, PageDone)>,
        window: u32,
    ) -> Result<(), StoreError> {
        self.shared.finish_pages(done, window).await
    }

    async fn outbox_stats(&self) -> Result<OutboxStats, StoreError> {
        self.shared.outbox_stats().await
    }

    async fn purge_expired(&self, now_ms: i64) -> Result<Purged, StoreError> {
        self.shared.purge_expired(now_ms).await
    }

    async fn ready(&self) -> Result<(), StoreError> {
        if self.queue.lock().expect("queue lock").is_none() {
            return Err(StoreError::unavailable("the store is closed"));
        }
        if !self.shared.follower.index.is_built() {
            return Err(StoreError::unavailable("the audience index is being built"));
        }
        let target = &self.shared.target;
        let work = async {
            let client = self.shared.client().await?;
            client
                .simple_query("SELECT 1")
                .await
                .map_err(|e| classify(target, e))?;
            Ok(())
        };
        within(self.shared.options.timeout, work).await
    }

    async fn close(&self) {
        // New writes are refused; queued ones are committed and answered, then the
        // committers end (every acknowledged write was committed before it was acknowledged).
        self.queue.lock().expect("queue lock").take();
        for committer in self.committers.lock().await.drain(..) {
            let _ = committer.await;
        }
        self.stop_follower.notify_one();
        if let Some(f) = self.follower.lock().await.take() {
            let _ = f.await;
        }
        self.shared.pool.close();
    }
}

/// One connection outside the pool (TLS and `sslmode` as for the pool), for `tagcast
/// check`.
pub(crate) async fn connect_one(
    url: &str,
    ca_file: Option<&std::path::Path>,
) -> Result<tokio_postgres::Client, String> {
    let connect::Connector {
        mut config,
        tls,
        target,
        ..
    } = connect::Connector::new(url, ca_file)?;
    config.application_name("tagcast check");
    let (client, connection) = config.connect(tls).await.map_err(|e| {
        format!(
            "connecting to PostgreSQL at {target}: {}",
            connect::chain(&e)
        )
    })?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(error = %e, "check connection ended");
        }
    });
    Ok(client)
}
