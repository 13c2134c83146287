//! The PostgreSQL store, for several tagcast nodes sharing one database.
//!
//! Each write request is one transaction: it takes transaction-scoped advisory locks on the
//! users it touches (in one global order, so no deadlocks; also for users that do not exist
//! yet), reads their current keys in one query, decides each entry's outcome in order in
//! memory, and writes the net effect with one set-based statement (UNNEST arrays) per
//! table. Concurrent writers of one user, on any node, are serialized by the lock, so no
//! key is lost and the tag cap cannot be raced past.
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
//! own when the database returns.

pub mod schema;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use deadpool_postgres::Transaction;
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use tokio_postgres::NoTls;
use tokio_postgres::types::ToSql;

use super::{
    DEFAULT_INBOX, Outcome, Store, StoreError, StoredUser, Tag, TagEntry, TagOp, UserRegistration,
    now_ms,
};
use crate::metrics::Metrics;

#[derive(Debug, Clone)]
pub struct PostgresOptions {
    pub max_tags_per_user: usize,
    pub pool_size: usize,
    /// Longest a request waits for a connection, a new connection, or one operation.
    pub timeout: Duration,
}

pub struct PostgresStore {
    pool: Pool,
    options: PostgresOptions,
    metrics: Arc<Metrics>,
}

fn classify(e: tokio_postgres::Error) -> StoreError {
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
    // Display of a server error is only "db error"; the detail is in the DbError.
    let detail = match e.as_db_error() {
        Some(db) => format!(
            "postgres: {} ({}): {}",
            db.severity(),
            db.code().code(),
            db.message()
        ),
        None => format!("postgres: {e}"),
    };
    if retryable || e.is_closed() {
        StoreError::Unavailable(detail)
    } else {
        StoreError::Internal(detail)
    }
}

fn pool_error(e: deadpool_postgres::PoolError) -> StoreError {
    StoreError::Unavailable(format!("postgres pool: {e}"))
}

/// A lock key per (app, user); collisions only serialize two unrelated users.
const LOCK_USERS: &str = "SELECT pg_advisory_xact_lock(k) FROM \
     (SELECT DISTINCT hashint8extended(u, $1::bigint) AS k FROM unnest($2::bigint[]) AS u ORDER BY 1) AS s";

impl PostgresStore {
    /// Connects, migrates the schema (once, under an advisory lock) and builds the pool.
    pub async fn open(
        url: &str,
        options: PostgresOptions,
        metrics: Arc<Metrics>,
    ) -> Result<Self, String> {
        let mut config: tokio_postgres::Config = url
            .parse()
            .map_err(|e| format!("store.url is not a PostgreSQL URL: {e}"))?;
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(options.timeout);
        }
        config.application_name("tagcast");
        let manager = Manager::from_config(
            config.clone(),
            NoTls,
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
        let mut client = pool
            .get()
            .await
            .map_err(|e| format!("connecting to PostgreSQL: {e}"))?;
        let (from, to) = schema::migrate(&mut client).await?;
        if from != to {
            tracing::info!(from, to, "migrated postgres schema");
        }
        drop(client);
        Ok(PostgresStore {
            pool,
            options,
            metrics,
        })
    }

    /// Runs `f` in one transaction on a pooled connection, bounded by the timeout.
    async fn in_tx<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        F: for<'t> FnOnce(
                &'t Transaction<'t>,
            ) -> std::pin::Pin<
                Box<dyn Future<Output = Result<T, tokio_postgres::Error>> + Send + 't>,
            > + Send,
        T: Send,
    {
        let started = Instant::now();
        let work = async {
            let mut client = self.pool.get().await.map_err(pool_error)?;
            let tx = client.transaction().await.map_err(classify)?;
            let out = f(&tx).await.map_err(classify)?;
            tx.commit().await.map_err(classify)?;
            Ok(out)
        };
        let out = tokio::time::timeout(self.options.timeout, work)
            .await
            .map_err(|_| StoreError::Unavailable("postgres did not answer in time".into()))?;
        self.metrics.observe_commit(started.elapsed(), 1);
        out
    }
}

/// Runs one statement, prepared once per connection (no extra round trip after that).
async fn exec(
    tx: &Transaction<'_>,
    sql: &str,
    params: &[&(dyn ToSql + Sync)],
) -> Result<u64, tokio_postgres::Error> {
    let statement = tx.prepare_cached(sql).await?;
    tx.execute(&statement, params).await
}

/// Takes the per-user locks of `ids` and reads their keys in `inbox`, pipelined in one
/// round trip (statements on one connection run in order, so the read sees the state
/// after the locks). With `registered_only`, only registered users are returned, and the
/// set of those comes back too.
async fn lock_and_read(
    tx: &Transaction<'_>,
    app_id: i32,
    inbox: i32,
    ids: &[i64],
    registered_only: bool,
) -> Result<(HashSet<i64>, HashMap<i64, HashSet<String>>), tokio_postgres::Error> {
    // Per-user LATERAL lookups: see "Query plans" in the module documentation.
    let read_sql = if registered_only {
        "SELECT x.u, t.key FROM unnest($3::bigint[]) AS x(u)
         JOIN LATERAL (SELECT 1 FROM users WHERE app_id = $1 AND user_id = x.u OFFSET 0) r ON true
         LEFT JOIN LATERAL (SELECT key FROM tags
                            WHERE app_id = $1 AND user_id = x.u AND inbox_type + 0 = $2 OFFSET 0) t ON true"
    } else {
        "SELECT x.u, t.key FROM unnest($3::bigint[]) AS x(u)
         JOIN LATERAL (SELECT key FROM tags
                       WHERE app_id = $1 AND user_id = x.u AND inbox_type + 0 = $2 OFFSET 0) t ON true"
    };
    let (lock, read) =
        tokio::try_join!(tx.prepare_cached(LOCK_USERS), tx.prepare_cached(read_sql))?;
    let app = i64::from(app_id);
    let lock_params: [&(dyn ToSql + Sync); 2] = [&app, &ids];
    let read_params: [&(dyn ToSql + Sync); 3] = [&app_id, &inbox, &ids];
    let (_, rows) = tokio::try_join!(
        tx.execute(&lock, &lock_params),
        tx.query(&read, &read_params)
    )?;
    let mut registered = HashSet::new();
    let mut keys: HashMap<i64, HashSet<String>> = HashMap::new();
    for row in rows {
        let user: i64 = row.get(0);
        registered.insert(user);
        if let Some(key) = row.get::<_, Option<String>>(1) {
            keys.entry(user).or_default().insert(key);
        }
    }
    Ok((registered, keys))
}

/// Applies upserts against the in-memory key set if the cap allows; returns the outcome.
fn plan_upsert(keys: &mut HashSet<String>, tags: &[Tag], cap: usize) -> Outcome {
    let net_new = tags.iter().filter(|(k, _)| !keys.contains(k)).count();
    if keys.len() + net_new > cap {
        return Outcome::TagLimitExceeded {
            would_have: keys.len() + net_new,
            limit: cap,
        };
    }
    keys.extend(tags.iter().map(|(k, _)| k.clone()));
    Outcome::Applied
}

async fn write_upserts(
    tx: &Transaction<'_>,
    app_id: i32,
    inbox: i32,
    upserts: BTreeMap<(i64, String), String>,
) -> Result<(), tokio_postgres::Error> {
    if upserts.is_empty() {
        return Ok(());
    }
    let (mut us, mut ks, mut vs) = (Vec::new(), Vec::new(), Vec::new());
    for ((u, k), v) in upserts {
        us.push(u);
        ks.push(k);
        vs.push(v);
    }
    exec(tx,
        "INSERT INTO tags (app_id, user_id, inbox_type, key, value)
         SELECT $1, x.u, $2, x.k, x.v FROM unnest($3::bigint[], $4::text[], $5::text[]) AS x(u, k, v)
         ON CONFLICT (app_id, user_id, inbox_type, key) DO UPDATE SET value = EXCLUDED.value",
        &[&app_id, &inbox, &us, &ks, &vs],
    )
    .await?;
    Ok(())
}

fn distinct_ids(ids: impl Iterator<Item = i64>) -> Vec<i64> {
    let mut v: Vec<i64> = ids.collect();
    v.sort_unstable();
    v.dedup();
    v
}

#[async_trait]
impl Store for PostgresStore {
    async fn update_tags(
        &self,
        app_id: u32,
        inbox: u32,
        op: TagOp,
        entries: Vec<TagEntry>,
    ) -> Result<Vec<Outcome>, StoreError> {
        let cap = self.options.max_tags_per_user;
        let (app, inbox) = (app_id as i32, inbox as i32);
        self.in_tx(move |tx| {
            Box::pin(async move {
                let ids = distinct_ids(entries.iter().map(|e| e.user_id));
                let (registered, mut keys) = lock_and_read(tx, app, inbox, &ids, true).await?;
                let mut outcomes = Vec::with_capacity(entries.len());
                let mut upserts = BTreeMap::new();
                let mut deletes = std::collections::BTreeSet::new();
                for e in &entries {
                    if !registered.contains(&e.user_id) {
                        outcomes.push(Outcome::UserNotFound);
                        continue;
                    }
                    let current = keys.entry(e.user_id).or_default();
                    let outcome = match op {
                        TagOp::Upsert => plan_upsert(current, &e.tags, cap),
                        TagOp::Delete => {
                            for (k, _) in &e.tags {
                                current.remove(k);
                            }
                            Outcome::Applied
                        }
                    };
                    if outcome == Outcome::Applied {
                        for (k, v) in &e.tags {
                            let key = (e.user_id, k.clone());
                            match op {
                                TagOp::Upsert => {
                                    upserts.insert(key, v.clone());
                                }
                                TagOp::Delete => {
                                    deletes.insert(key);
                                }
                            }
                        }
                    }
                    outcomes.push(outcome);
                }
                write_upserts(tx, app, inbox, upserts).await?;
                if !deletes.is_empty() {
                    let (us, ks): (Vec<i64>, Vec<String>) = deletes.into_iter().unzip();
                    exec(tx,
                        // The rows are found by primary key ("Query plans" above), then deleted by
                        // ctid (stable here: this transaction holds the users' locks).
                        "DELETE FROM tags WHERE ctid = ANY(ARRAY(
                           SELECT t.ctid FROM unnest($3::bigint[], $4::text[]) AS x(u, k)
                           JOIN LATERAL (SELECT ctid FROM tags WHERE app_id = $1 AND user_id = x.u
                                         AND inbox_type + 0 = $2 AND key = x.k OFFSET 0) t ON true))",
                        &[&app, &inbox, &us, &ks],
                    )
                    .await?;
                }
                Ok(outcomes)
            })
        })
        .await
    }

    async fn register_users(
        &self,
        app_id: u32,
        users: Vec<UserRegistration>,
    ) -> Result<Vec<Outcome>, StoreError> {
        let cap = self.options.max_tags_per_user;
        let app = app_id as i32;
        let inbox = DEFAULT_INBOX as i32;
        self.in_tx(move |tx| {
            Box::pin(async move {
                let ids = distinct_ids(users.iter().map(|u| u.user_id));
                let (_, mut keys) = lock_and_read(tx, app, inbox, &ids, false).await?;
                let mut outcomes = Vec::with_capacity(users.len());
                let mut upserts = BTreeMap::new();
                // Profiles of applied users, later registrations of one user folded over earlier ones.
                let mut profiles: BTreeMap<i64, UserRegistration> = BTreeMap::new();
                for u in &users {
                    let outcome = plan_upsert(keys.entry(u.user_id).or_default(), &u.tags, cap);
                    if outcome == Outcome::Applied {
                        for (k, v) in &u.tags {
                            upserts.insert((u.user_id, k.clone()), v.clone());
                        }
                        let p = profiles.entry(u.user_id).or_insert_with(|| UserRegistration { user_id: u.user_id, ..Default::default() });
                        p.nick_name = u.nick_name.clone().or(p.nick_name.take());
                        p.portrait = u.portrait.clone().or(p.portrait.take());
                        p.ext = u.ext.clone().or(p.ext.take());
                        p.is_robot = u.is_robot.or(p.is_robot);
                    }
                    outcomes.push(outcome);
                }
                if !profiles.is_empty() {
                    let now = now_ms();
                    let ids: Vec<i64> = profiles.keys().copied().collect();
                    let nick: Vec<Option<String>> = profiles.values().map(|p| p.nick_name.clone()).collect();
                    let portrait: Vec<Option<String>> = profiles.values().map(|p| p.portrait.clone()).collect();
                    let ext: Vec<Option<String>> = profiles
                        .values()
                        .map(|p| p.ext.as_ref().map(|m| serde_json::to_string(m).expect("a string map serializes")))
                        .collect();
                    let robot: Vec<Option<bool>> = profiles.values().map(|p| p.is_robot).collect();
                    let params: [&(dyn tokio_postgres::types::ToSql + Sync); 7] =
                        [&app, &ids, &nick, &portrait, &ext, &robot, &now];
                    exec(tx,
                        "INSERT INTO users (app_id, user_id, create_time, modify_time)
                         SELECT $1, u, $3, $3 FROM unnest($2::bigint[]) AS u
                         ON CONFLICT (app_id, user_id) DO NOTHING",
                        &[&app, &ids, &now],
                    )
                    .await?;
                    exec(tx,
                        "UPDATE users SET nick_name = COALESCE(x.n, users.nick_name),
                                          portrait = COALESCE(x.p, users.portrait),
                                          ext = COALESCE(x.e, users.ext),
                                          is_robot = COALESCE(x.r, users.is_robot),
                                          modify_time = $7
                         FROM unnest($2::bigint[], $3::text[], $4::text[], $5::text[], $6::boolean[]) AS x(u, n, p, e, r)
                         WHERE users.app_id = $1 AND users.user_id = x.u",
                        &params,
                    )
                    .await?;
                }
                write_upserts(tx, app, inbox, upserts).await?;
                Ok(outcomes)
            })
        })
        .await
    }

    async fn unregister_users(
        &self,
        app_id: u32,
        user_ids: Vec<i64>,
    ) -> Result<Vec<Outcome>, StoreError> {
        let app = app_id as i32;
        self.in_tx(move |tx| {
            Box::pin(async move {
                let ids = distinct_ids(user_ids.iter().copied());
                exec(tx, LOCK_USERS, &[&i64::from(app), &ids]).await?;
                let delete = tx.prepare_cached("DELETE FROM users WHERE app_id = $1 AND user_id = ANY($2) RETURNING user_id").await?;
                let mut removed: HashSet<i64> = tx
                    .query(&delete, &[&app, &ids])
                    .await?
                    .iter()
                    .map(|r| r.get(0))
                    .collect();
                exec(tx, "DELETE FROM tags WHERE app_id = $1 AND user_id = ANY($2)", &[&app, &ids]).await?;
                // A user listed twice is removed once; the second mention finds nothing.
                Ok(user_ids
                    .iter()
                    .map(|id| if removed.remove(id) { Outcome::Applied } else { Outcome::UserNotFound })
                    .collect())
            })
        })
        .await
    }

    async fn get_users(
        &self,
        app_id: u32,
        inbox: u32,
        user_ids: Vec<i64>,
    ) -> Result<Vec<Option<StoredUser>>, StoreError> {
        let (app, inbox) = (app_id as i32, inbox as i32);
        let work = async {
            let client = self.pool.get().await.map_err(pool_error)?;
            let (users_st, tags_st) = tokio::try_join!(
                client.prepare_cached(
                    "SELECT user_id, nick_name, portrait, ext, is_robot, create_time, modify_time
                     FROM users WHERE app_id = $1 AND user_id = ANY($2)"
                ),
                client.prepare_cached(
                    // "Query plans" in the module documentation.
                    "SELECT x.u, t.key, t.value FROM unnest($3::bigint[]) AS x(u)
                     JOIN LATERAL (SELECT key, value FROM tags
                                   WHERE app_id = $1 AND user_id = x.u AND inbox_type + 0 = $2
                                   OFFSET 0) t ON true
                     ORDER BY x.u, t.key"
                )
            )
            .map_err(classify)?;
            let users_params: [&(dyn ToSql + Sync); 2] = [&app, &user_ids];
            let tags_params: [&(dyn ToSql + Sync); 3] = [&app, &inbox, &user_ids];
            // Pipelined: both queries leave in one round trip.
            let (users, tags) = tokio::try_join!(
                client.query(&users_st, &users_params),
                client.query(&tags_st, &tags_params)
            )
            .map_err(classify)?;
            let mut by_id: HashMap<i64, StoredUser> = HashMap::new();
            for r in users {
                let ext: String = r.get(3);
                let ext = serde_json::from_str(&ext).map_err(|e| {
                    StoreError::Internal(format!(
                        "users.ext of user {} is not a JSON object: {e}",
                        r.get::<_, i64>(0)
                    ))
                })?;
                by_id.insert(
                    r.get(0),
                    StoredUser {
                        user_id: r.get(0),
                        nick_name: r.get(1),
                        portrait: r.get(2),
                        ext,
                        is_robot: r.get(4),
                        create_time_ms: r.get(5),
                        modify_time_ms: r.get(6),
                        tags: Vec::new(),
                    },
                );
            }
            for r in tags {
                if let Some(u) = by_id.get_mut(&r.get::<_, i64>(0)) {
                    u.tags.push((r.get(1), r.get(2)));
                }
            }
            Ok(user_ids.iter().map(|id| by_id.get(id).cloned()).collect())
        };
        tokio::time::timeout(self.options.timeout, work)
            .await
            .map_err(|_| StoreError::Unavailable("postgres did not answer in time".into()))?
    }

    async fn ready(&self) -> Result<(), StoreError> {
        let work = async {
            let client = self.pool.get().await.map_err(pool_error)?;
            client.simple_query("SELECT 1").await.map_err(classify)?;
            Ok(())
        };
        tokio::time::timeout(self.options.timeout, work)
            .await
            .map_err(|_| StoreError::Unavailable("postgres did not answer in time".into()))?
    }

    async fn close(&self) {
        // Every acknowledged write was committed by PostgreSQL before it was acknowledged.
        self.pool.close();
    }
}
