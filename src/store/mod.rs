//! Storage: a narrow, batch-oriented trait and one module per backend.
//!
//! Every write call takes a whole request's entries and returns one outcome per entry, in
//! order. Each entry is applied atomically (all of its keys or none), entries apply in the
//! order given, and the call returns only once everything it applied is durable.
//! Validation of keys and values happens before the store; the store enforces what needs
//! the stored state: registration and the per-user tag cap.

pub mod check;
pub mod embedded;
pub mod outbox;
pub mod plan;
pub mod postgres;
pub mod schema;

use std::collections::BTreeMap;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use crate::api::{ApiError, ErrorCode};
use crate::audience::{AudienceIndex, Page};
use crate::config::{Config, StoreKind};
use crate::metrics::Metrics;
use crate::model::broadcast::{
    Claimed, Delivery, Info, Loaded, NewBroadcast, OutboxStats, Outlet, PageDone, PageKey, Purged,
    Sent,
};
use crate::model::filter::Filter;
pub use crate::model::{DEFAULT_INBOX, Origin, Outcome, StoredUser, Tag, TagOp, now_ms};
use embedded::{DataDirLock, EmbeddedOptions, EmbeddedStore};
use postgres::{PostgresOptions, PostgresStore};

#[derive(Debug, Clone)]
pub struct TagEntry {
    pub user_id: i64,
    pub tags: Vec<Tag>,
}

/// RegisterUsers for one user: `None` fields keep the stored value (or the default for a
/// new user); tags are merged into inbox 0.
#[derive(Debug, Clone, Default)]
pub struct UserRegistration {
    pub user_id: i64,
    pub nick_name: Option<String>,
    pub portrait: Option<String>,
    pub ext: Option<BTreeMap<String, String>>,
    pub is_robot: Option<bool>,
    pub tags: Vec<Tag>,
}

/// BatchUpdateUser for one registered user: `None` fields keep the stored value; `tags`,
/// when given, becomes the user's whole inbox-0 tag set (keys not listed are deleted; a
/// key listed twice keeps its last value).
#[derive(Debug, Clone, Default)]
pub struct UserUpdate {
    pub user_id: i64,
    pub nick_name: Option<String>,
    pub portrait: Option<String>,
    pub ext: Option<BTreeMap<String, String>>,
    pub is_robot: Option<bool>,
    pub tags: Option<Vec<Tag>>,
}

/// What failed underneath a [`StoreError`] (shared, so the error stays `Clone`: a failed
/// commit fails every request of its batch with the same error).
pub type Cause = Arc<dyn std::error::Error + Send + Sync>;

#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// The backend cannot serve now (closed, I/O failure, database down): retryable.
    #[error("store unavailable: {what}")]
    Unavailable {
        what: String,
        #[source]
        cause: Option<Cause>,
    },
    /// Anything that should not happen (corruption, a bug).
    #[error("store internal error: {what}")]
    Internal {
        what: String,
        #[source]
        cause: Option<Cause>,
    },
}

impl StoreError {
    pub fn unavailable(what: impl Into<String>) -> Self {
        StoreError::Unavailable {
            what: what.into(),
            cause: None,
        }
    }

    pub fn internal(what: impl Into<String>) -> Self {
        StoreError::Internal {
            what: what.into(),
            cause: None,
        }
    }

    /// The same error, caused by `e` (which the log line's chain shows).
    pub fn caused_by(self, e: impl std::error::Error + Send + Sync + 'static) -> Self {
        let cause = Some(Arc::new(e) as Cause);
        match self {
            StoreError::Unavailable { what, .. } => StoreError::Unavailable { what, cause },
            StoreError::Internal { what, .. } => StoreError::Internal { what, cause },
        }
    }

    /// The error and every cause under it, `: `-separated, for the log.
    pub fn chain(&self) -> String {
        let mut out = self.to_string();
        let mut next = std::error::Error::source(self);
        while let Some(e) = next {
            out.push_str(": ");
            out.push_str(&e.to_string());
            next = e.source();
        }
        out
    }
}

/// What the client is told of a store failure: 503 for what may pass, 500 for the rest,
/// with the cause only in the server's log (under the request's RequestId).
impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Unavailable { .. } => {
                if let Some(held) = STORE_UNAVAILABLE.admit() {
                    tracing::warn!(cause = %e.chain(), repeated = held, "store unavailable; answering 503");
                }
                ApiError::new(
                    ErrorCode::ServiceUnavailableTemp,
                    "The storage backend is temporarily unavailable; retry later.",
                )
            }
            StoreError::Internal { .. } => {
                tracing::error!(cause = %e.chain(), "store failure");
                ApiError::new(
                    ErrorCode::InternalError,
                    "Service has some internal error; the RequestId identifies it in the server log.",
                )
            }
        }
    }
}

/// While the store is unavailable every request fails the same way; one line per 10 s.
static STORE_UNAVAILABLE: crate::throttle::LogThrottle =
    crate::throttle::LogThrottle::new(Duration::from_secs(10));

/// How `Ext` is stored: its JSON object text.
pub(crate) fn ext_json(ext: &BTreeMap<String, String>) -> String {
    serde_json::to_string(ext).expect("a string map serializes")
}

/// Which entries of an app's change log to read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogRead {
    /// Those at `from` and after, oldest first, at most `max`.
    From { from: u64, max: usize },
    /// The newest `max` before `before`, newest first.
    Newest { before: u64, max: usize },
}

/// One change log entry as stored.
#[derive(Debug, Clone)]
pub struct LogEntry {
    pub pos: u64,
    pub time_ms: i64,
    /// [`crate::model::encode_entry`]'s bytes.
    pub body: Vec<u8>,
}

/// Entries read with the log's bounds when they were read.
#[derive(Debug, Clone, Default)]
pub struct LogPage {
    /// The oldest retained entry's position (0: the log is empty).
    pub oldest: u64,
    /// The newest entry's position (0: none).
    pub head: u64,
    pub entries: Vec<LogEntry>,
}

/// The durable record under the state: what a backend does. Writes go in as whole
/// requests ([`WriteOp`]) and come back with one outcome per entry; reads are answered by
/// the node's in-memory state ([`Store::caught_up`] and [`crate::audience::index`]), never
/// by the backend. The Actions' calls ([`update_tags`](#method.update_tags),
/// [`get_users`](#method.get_users) ...) are written once over these, in `impl dyn Store`.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Applies one write request: every entry in order, each atomically, and returns once
    /// everything it applied is durable and in this node's state, with its change log
    /// entry carrying `origin`.
    async fn write(
        &self,
        app_id: u32,
        op: WriteOp,
        origin: Origin,
    ) -> Result<Vec<Outcome>, StoreError>;

    /// The node's state as it is now (it may not yet hold what another node acknowledged).
    fn state(&self) -> &AudienceIndex;

    /// The node's state once it holds every write of `app_id` acknowledged before the call,
    /// on any node (embedded: once it is built; PostgreSQL: once the node has applied the
    /// app's log up to the head this call read).
    async fn caught_up(&self, app_id: u32) -> Result<&AudienceIndex, StoreError>;

    /// UserBroadcast: freezes the audience `filter` selects now (counting every write
    /// acknowledged before the call, on any node), and stores the broadcast with it, its
    /// token, the day's count (refused over `per_day`) and one outbox lane per outlet, in
    /// one transaction, durable before it returns. A token sent within
    /// [`crate::model::broadcast::TOKEN_TTL_MS`] before (on any node) sends nothing and answers
    /// that send (`replayed`).
    async fn send_broadcast(
        &self,
        broadcast: NewBroadcast,
        filter: &Filter,
        per_day: u32,
        outlets: Vec<Outlet>,
        now_ms: i64,
    ) -> Result<Sent, StoreError>;

    /// Marks the broadcast recalled and drops its pending pages; whether it exists. The
    /// first recall appends `broadcast.recalled` with `origin`.
    async fn recall_broadcast(
        &self,
        app_id: u32,
        id: i64,
        origin: Origin,
    ) -> Result<bool, StoreError>;

    /// The broadcast (not yet purged) with its delivery counts.
    async fn get_broadcast(
        &self,
        app_id: u32,
        id: i64,
    ) -> Result<Option<(Info, Delivery)>, StoreError>;

    /// How many broadcasts the app has sent on UTC day `day` (days since 1970), the count
    /// `limits.broadcasts_per_day` is checked against.
    async fn broadcasts_on_day(&self, app_id: u32, day: i64) -> Result<u32, StoreError>;

    /// The app's broadcasts not yet purged with ids below `before`, newest first.
    async fn list_broadcasts(
        &self,
        app_id: u32,
        before: Option<i64>,
        limit: usize,
    ) -> Result<Vec<(Info, Delivery)>, StoreError>;

    /// For a recipient's pull: the user's ordinal (`None`: not registered) and the ids of
    /// the app's broadcasts in `inbox` that are neither recalled nor expired at `now_ms`,
    /// newest first.
    async fn active_broadcasts(
        &self,
        app_id: u32,
        inbox: u32,
        user_id: i64,
        now_ms: i64,
    ) -> Result<(Option<u32>, Vec<i64>), StoreError>;

    /// A broadcast with its audience (for the cache), purged or unknown: `None`.
    async fn load_broadcast(&self, id: i64) -> Result<Option<Loaded>, StoreError>;

    /// Claims, for each (webhook URL, n) of `wants`, up to n pages due at `now_ms` that no
    /// live lease holds, for `lease_ms`, taking the URL's lanes in turn, at most `window`
    /// open pages per lane (`store/outbox.rs`); counts the attempt.
    async fn claim_pages(
        &self,
        now_ms: i64,
        lease_ms: i64,
        window: u32,
        wants: Vec<(String, usize)>,
    ) -> Result<Vec<Claimed>, StoreError>;

    /// Records how attempts ended (a page recalled or purged meanwhile stays as it is).
    async fn finish_pages(
        &self,
        done: Vec<(PageKey, PageDone)>,
        window: u32,
    ) -> Result<(), StoreError>;

    async fn outbox_stats(&self) -> Result<OutboxStats, StoreError>;

    /// Removes every broadcast expired at `now_ms` with its audience and outbox lanes,
    /// quota days before yesterday, and broadcast tokens past their time.
    async fn purge_expired(&self, now_ms: i64) -> Result<Purged, StoreError>;

    /// Entries of the app's change log (API.md §9 reads them as events) with its bounds.
    async fn read_log(&self, app_id: u32, read: LogRead) -> Result<LogPage, StoreError>;

    /// The position after which the event webhook `hook` (its URL) has delivered the
    /// app's events (0: none yet).
    async fn event_cursor(&self, hook: &str, app_id: u32) -> Result<u64, StoreError>;

    /// Takes or renews, for `lease_ms` from `now_ms`, the right of `node` to send the
    /// app's events to `hook` (one sender per (webhook, app) across nodes); `Some(cursor)`
    /// when this node holds it.
    async fn lease_event_sender(
        &self,
        hook: &str,
        app_id: u32,
        node: &str,
        now_ms: i64,
        lease_ms: i64,
    ) -> Result<Option<u64>, StoreError>;

    /// Moves the cursor of (hook, app) to `pos` while `node` holds the lease; whether it
    /// still did.
    async fn save_event_cursor(
        &self,
        hook: &str,
        app_id: u32,
        node: &str,
        pos: u64,
    ) -> Result<bool, StoreError>;

    /// The apps that have a change log.
    async fn log_apps(&self) -> Result<Vec<u32>, StoreError>;

    /// Where retention cuts the app's log: (its oldest position, the first position to
    /// keep) for entries written at `since_ms` or later holding the newest `max_events`
    /// events; never past the head entry (which a start checks against). (0, 0): empty.
    async fn log_cut(
        &self,
        app_id: u32,
        since_ms: i64,
        max_events: u64,
    ) -> Result<(u64, u64), StoreError>;

    /// Deletes up to `chunk` of the app's oldest entries before `keep_from`; whether
    /// older ones are left.
    async fn trim_log(&self, app_id: u32, keep_from: u64, chunk: u64) -> Result<bool, StoreError>;

    /// Whether the store can serve requests now.
    async fn ready(&self) -> Result<(), StoreError>;

    /// Makes everything acknowledged durable and stops; later calls answer `Unavailable`.
    async fn close(&self);
}

/// The Actions' calls, written once over the trait for every backend.
impl dyn Store {
    pub async fn update_tags(
        &self,
        app_id: u32,
        inbox: u32,
        op: TagOp,
        entries: Vec<TagEntry>,
        origin: Origin,
    ) -> Result<Vec<Outcome>, StoreError> {
        self.write(app_id, WriteOp::Tags { inbox, op, entries }, origin)
            .await
    }

    pub async fn register_users(
        &self,
        app_id: u32,
        users: Vec<UserRegistration>,
        origin: Origin,
    ) -> Result<Vec<Outcome>, StoreError> {
        self.write(app_id, WriteOp::Register(users), origin).await
    }

    /// Updates the given fields of registered users (`UserNotFound` for the others) and
    /// replaces their inbox-0 tags where given, subject to the per-user cap.
    pub async fn update_users(
        &self,
        app_id: u32,
        users: Vec<UserUpdate>,
        origin: Origin,
    ) -> Result<Vec<Outcome>, StoreError> {
        self.write(app_id, WriteOp::UpdateUsers(users), origin)
            .await
    }

    /// Removes each user with its profile and its tags in every inbox.
    pub async fn unregister_users(
        &self,
        app_id: u32,
        user_ids: Vec<i64>,
        origin: Origin,
    ) -> Result<Vec<Outcome>, StoreError> {
        self.write(app_id, WriteOp::Unregister(user_ids), origin)
            .await
    }

    /// One slot per requested id, `None` for users that are not registered.
    pub async fn get_users(
        &self,
        app_id: u32,
        inbox: u32,
        user_ids: Vec<i64>,
    ) -> Result<Vec<Option<StoredUser>>, StoreError> {
        Ok(self
            .caught_up(app_id)
            .await?
            .get_users(app_id, inbox, &user_ids))
    }

    /// How many registered users of the app `filter` selects by their tags in `inbox`,
    /// counting every write acknowledged (on any node) before the call.
    pub async fn count_audience(
        &self,
        app_id: u32,
        inbox: u32,
        filter: &Filter,
    ) -> Result<u64, StoreError> {
        Ok(self.caught_up(app_id).await?.count(app_id, inbox, filter))
    }

    /// Up to `limit` selected users after ordinal `after`, in a stable order.
    pub async fn list_audience(
        &self,
        app_id: u32,
        inbox: u32,
        filter: &Filter,
        after: Option<u32>,
        limit: usize,
    ) -> Result<Page, StoreError> {
        Ok(self
            .caught_up(app_id)
            .await?
            .list(app_id, inbox, filter, after, limit))
    }

    /// The user ids of `ordinals` of the app, skipping ordinals no longer registered (as of
    /// every write acknowledged before the call, on any node).
    pub async fn user_ids(&self, app_id: u32, ordinals: &[u32]) -> Result<Vec<i64>, StoreError> {
        Ok(self.caught_up(app_id).await?.user_ids(app_id, ordinals))
    }

    /// Waits, at most `limit`, for the state's build at start; whether it is built.
    pub async fn wait_built(&self, limit: Duration) -> bool {
        self.state().wait_built(limit).await
    }
}

/// Takes the data directory's lock when the process keeps files there: the embedded
/// store, and a PostgreSQL node serving (its snapshot file): one server, restore or
/// import per directory. An import into PostgreSQL keeps nothing there.
pub fn lock_data_dir(config: &Config, holder: &str) -> Result<Option<DataDirLock>, String> {
    let keeps_files = match config.store.kind {
        StoreKind::Embedded => true,
        StoreKind::Postgres => holder == "serve",
    };
    Ok(match keeps_files {
        true => Some(DataDirLock::acquire(&config.data_dir, holder)?),
        false => None,
    })
}

/// Opens the configured store (the embedded one under the lock [`lock_data_dir`] took).
pub async fn open(
    config: &Config,
    lock: Option<DataDirLock>,
    metrics: Arc<Metrics>,
) -> Result<Arc<dyn Store>, String> {
    let s = &config.store;
    match (s.kind, &s.url, lock) {
        (StoreKind::Postgres, Some(url), lock) => {
            let options = PostgresOptions {
                max_tags_per_user: config.tags.max_per_user,
                pool_size: s.pool_size,
                committers: s.committers,
                max_batch: s.max_batch,
                timeout: Duration::from_millis(s.timeout_ms),
                ca_file: s.ca_file.clone(),
                // A serving node (it holds the directory's lock) follows the logs and
                // saves its state there; an import only writes.
                follow: lock.is_some(),
                snapshot_file: lock
                    .is_some()
                    .then(|| config.data_dir.join(embedded::SNAPSHOT_FILE)),
                snapshot_every: (s.snapshot_interval_s > 0)
                    .then(|| Duration::from_secs(s.snapshot_interval_s)),
                snapshot_changes: s.snapshot_changes.max(1),
            };
            let store = PostgresStore::open(url, options, metrics).await?;
            Ok(Arc::new(store.holding(lock)))
        }
        (StoreKind::Embedded, _, Some(lock)) => {
            let options = EmbeddedOptions {
                max_tags_per_user: config.tags.max_per_user,
                read_connections: s.read_connections,
                max_batch: s.max_batch,
                cache_mb: s.cache_mb,
                wal_limit_bytes: s.wal_limit_mb << 20,
                snapshot_every: (s.snapshot_interval_s > 0)
                    .then(|| Duration::from_secs(s.snapshot_interval_s)),
                snapshot_changes: s.snapshot_changes.max(1),
            };
            let store = tokio::task::spawn_blocking(move || {
                EmbeddedStore::open_locked(lock, options, metrics)
            })
            .await
            .map_err(|e| format!("opening the store: {e}"))??;
            Ok(Arc::new(store))
        }
        _ => {
            Err("store.kind and store.url disagree (validate() lets no such config through)".into())
        }
    }
}

/// One write request as both stores queue it for the code that commits it in batches.
pub enum WriteOp {
    Tags {
        inbox: u32,
        op: TagOp,
        entries: Vec<TagEntry>,
    },
    Register(Vec<UserRegistration>),
    UpdateUsers(Vec<UserUpdate>),
    Unregister(Vec<i64>),
}

/// A queued write and where its outcome goes once the batch holding it has committed.
pub(crate) struct WriteJob {
    pub app_id: u32,
    pub op: WriteOp,
    /// Who asked for it, for the change log.
    pub origin: Origin,
    pub reply: tokio::sync::oneshot::Sender<Result<Vec<Outcome>, StoreError>>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_failures_map_to_503_and_500_and_keep_their_cause_for_the_log() {
        let e: ApiError = StoreError::unavailable("disk").into();
        assert_eq!(e.code.wire().0, http::StatusCode::SERVICE_UNAVAILABLE);
        let io = std::io::Error::other("No space left on device");
        let failed = StoreError::internal("writing the batch").caused_by(io);
        assert_eq!(
            failed.chain(),
            "store internal error: writing the batch: No space left on device"
        );
        let e: ApiError = failed.into();
        assert_eq!(e.code.wire().0, http::StatusCode::INTERNAL_SERVER_ERROR);
        assert!(!e.message.contains("writing") && !e.message.contains("space"));
    }
}
