//! Each node's audience index follows the change log that every write transaction, on any
//! node, appends to (`batch.rs`).
//!
//! Ordering: a transaction takes its log position by updating the single row of
//! `tagcast_log_head`, and holds that row lock until it commits; PostgreSQL makes a
//! transaction visible before it releases its locks. So position n + 1 cannot be taken
//! before position n is visible, positions have no holes, and a follower that reads
//! "everything after the last position I applied" can never skip one that commits late
//! (the trap of a plain sequence, whose numbers are taken in one order and committed in
//! another). The cost is that log appends, the last statement before COMMIT, run one at a
//! time across all nodes; group commit keeps them few.
//!
//! The follower applies entries strictly in order. It wakes on NOTIFY (sent by every
//! appending transaction, delivered at its commit), when a query finds it behind, and
//! every 100 ms regardless. Entries older than [`KEEP`] are trimmed; a node that finds the
//! entry after its position gone (it fell behind the trim) rebuilds the index from the
//! tables, in one snapshot together with the position they hold.
//!
//! Read-your-writes across nodes: an audience query first reads the log head (the last
//! committed position) and waits, bounded, until its node has applied it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Notify;

use super::{Shared, classify};
use crate::audience::AudienceIndex;
use crate::audience::index::{Builder, Profile};
use crate::store::StoreError;
use crate::store::now_ms;
use crate::store::plan::Change;

/// How long log entries are kept: a node that falls further behind rebuilds.
pub(super) const KEEP: Duration = Duration::from_secs(300);
/// The follower looks at the log at least this often, NOTIFY or not.
const POLL: Duration = Duration::from_millis(100);
/// How often each node trims the log.
const TRIM_EVERY: Duration = Duration::from_secs(30);
/// Entries read per round trip.
const PAGE: i64 = 256;
/// Rows per FETCH while building.
const BUILD_FETCH: &str = "FETCH 50000 FROM build";

/// The follower's handle, shared with the store.
pub(super) struct Follower {
    pub index: Arc<AudienceIndex>,
    pub wake: Notify,
    /// Why the last build from the tables failed on what they hold (a row this binary
    /// cannot read): answered to requests while the state is not built.
    pub build_failure: std::sync::Mutex<Option<String>>,
}

/// Reads the log head and waits until this node's index has applied it, at most `limit`.
pub(super) async fn catch_up(shared: &Shared, limit: Duration) -> Result<(), StoreError> {
    let follower = &shared.follower;
    let failed = || {
        let why = follower
            .build_failure
            .lock()
            .expect("follower lock")
            .clone();
        why.map_or(Ok(()), |w| Err(StoreError::Internal(w)))
    };
    if !follower.index.is_built() {
        failed()?;
    }
    if !follower.index.wait_built(limit).await {
        failed()?;
        return Err(StoreError::Unavailable(
            "the state is being built from the tables".into(),
        ));
    }
    let head: i64 = {
        let client = shared.client().await?;
        let st = client
            .prepare_cached("SELECT pos FROM tagcast_log_head")
            .await
            .map_err(|e| classify(&shared.target, e))?;
        client
            .query_one(&st, &[])
            .await
            .map_err(|e| classify(&shared.target, e))?
            .get(0)
    };
    let head = head as u64;
    let mut applied = follower.index.subscribe();
    if *applied.borrow() >= head {
        return Ok(());
    }
    follower.wake.notify_one();
    let wait = applied.wait_for(|p| *p >= head);
    match tokio::time::timeout(limit, wait).await {
        Ok(Ok(_)) => Ok(()),
        _ => Err(StoreError::Unavailable(format!(
            "this node's audience index has not caught up with the change log within {} ms",
            limit.as_millis()
        ))),
    }
}

/// The follower task: builds the index, then applies the log for as long as the store
/// is open. Failures (database away) are retried; the index keeps its last state.
pub(super) async fn run(shared: Arc<Shared>, stop: Arc<Notify>) {
    let follower = &shared.follower;
    let mut listener: Option<tokio::task::JoinHandle<()>> = None;
    let mut failed_at: Option<Instant> = None;
    let mut trimmed_at = Instant::now();
    loop {
        if trimmed_at.elapsed() >= TRIM_EVERY {
            trimmed_at = Instant::now();
            if let Err(e) = trim(&shared).await {
                tracing::debug!(error = %e, "trimming the change log failed; next time");
            }
        }
        if listener.as_ref().is_none_or(|l| l.is_finished()) {
            listener = listen(&shared).await.ok();
        }
        let step = if follower.index.is_built() {
            apply_log(&shared).await
        } else {
            rebuild(&shared).await.map(|_| false)
        };
        let more = match step {
            Ok(more) => {
                failed_at = None;
                more
            }
            Err(e) => {
                if failed_at.is_none() {
                    tracing::warn!(error = %e, "audience index: reading the change log failed; retrying");
                }
                failed_at.get_or_insert_with(Instant::now);
                false
            }
        };
        if more {
            continue;
        }
        tokio::select! {
            _ = stop.notified() => break,
            _ = follower.wake.notified() => {}
            _ = tokio::time::sleep(POLL) => {}
        }
    }
    if let Some(l) = listener {
        l.abort();
    }
}

/// A connection that LISTENs and wakes the follower on each notification.
async fn listen(shared: &Arc<Shared>) -> Result<tokio::task::JoinHandle<()>, String> {
    let super::connect::Connector {
        mut config,
        tls,
        target,
        ..
    } = super::connect::Connector::new(&shared.url, shared.options.ca_file.as_deref())?;
    config.application_name("tagcast follower");
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(shared.options.timeout);
    }
    let (client, mut connection) = config
        .connect(tls)
        .await
        .map_err(|e| format!("PostgreSQL at {target}: {}", super::connect::chain(&e)))?;
    let woken = shared.clone();
    let task = tokio::spawn(async move {
        let driver = async {
            while let Some(msg) = std::future::poll_fn(|cx| connection.poll_message(cx)).await {
                match msg {
                    Ok(tokio_postgres::AsyncMessage::Notification(_)) => {
                        woken.follower.wake.notify_one()
                    }
                    Ok(_) => {}
                    Err(_) => break,
                }
            }
        };
        let subscribe = async {
            if client
                .batch_execute("LISTEN tagcast_changes")
                .await
                .is_err()
            {
                return;
            }
            // Keep the client (and so the connection) alive while the driver runs.
            std::future::pending::<()>().await;
        };
        tokio::select! {
            _ = driver => {}
            _ = subscribe => {}
        }
    });
    Ok(task)
}

/// Applies the entries after this node's position; `Ok(true)` when more may be waiting.
async fn apply_log(shared: &Shared) -> Result<bool, StoreError> {
    let index = &shared.follower.index;
    let applied = index.applied();
    let rows = {
        let client = shared.client().await?;
        let st = client
            .prepare_cached(
                "SELECT h.pos, c.pos, c.changes, c.created FROM tagcast_log_head h
                 LEFT JOIN LATERAL (SELECT pos, changes, created FROM tagcast_changes
                                    WHERE pos > $1 ORDER BY pos LIMIT $2) c ON true",
            )
            .await
            .map_err(|e| classify(&shared.target, e))?;
        client
            .query(&st, &[&(applied as i64), &PAGE])
            .await
            .map_err(|e| classify(&shared.target, e))?
    };
    let head = rows.first().map_or(0, |r| r.get::<_, i64>(0) as u64);
    if head <= applied {
        return Ok(false);
    }
    let mut got = 0;
    for r in &rows {
        let Some(pos) = r.get::<_, Option<i64>>(1) else {
            break;
        };
        let body: &[u8] = r.get(2);
        let changes: Vec<Change> = serde_json::from_slice(body).map_err(|e| {
            StoreError::Internal(format!("change log entry {pos} does not decode: {e}"))
        })?;
        if !index.apply_at(pos as u64, &changes, r.get::<_, i64>(3)) {
            // Not the next one: the entries in between were trimmed.
            tracing::warn!(
                applied = index.applied(),
                found = pos,
                "audience index fell behind the trimmed change log; rebuilding from the tables"
            );
            rebuild(shared).await?;
            return Ok(true);
        }
        got += 1;
    }
    if got == 0 {
        tracing::warn!(
            applied,
            head,
            "audience index fell behind the trimmed change log; rebuilding from the tables"
        );
        rebuild(shared).await?;
        return Ok(true);
    }
    Ok(got as i64 == PAGE)
}

/// Builds the index from the tables and the log position they hold, in one snapshot.
async fn rebuild(shared: &Shared) -> Result<(), StoreError> {
    let started = Instant::now();
    let target = &shared.target;
    let classify = |e| classify(target, e);
    let mut client = shared.client().await?;
    let tx = client
        .build_transaction()
        .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .await
        .map_err(classify)?;
    let pos: i64 = tx
        .query_one("SELECT pos FROM tagcast_log_head", &[])
        .await
        .map_err(classify)?
        .get(0);
    let mut b = Builder::default();
    let mut bad_ext = None;
    for_each_row(
        &tx,
        "SELECT app_id, user_id, ordinal, create_time, modify_time, nick_name, portrait, ext, is_robot
         FROM users",
        |r| {
            let (app, user): (i32, i64) = (r.get(0), r.get(1));
            let ext = match serde_json::from_str(r.get(7)) {
                Ok(ext) => ext,
                Err(e) => {
                    bad_ext.get_or_insert(format!("users.ext of user {user} of AppId {app} is not a JSON object of strings: {e}"));
                    return;
                }
            };
            b.user(
                app as u32,
                user,
                r.get::<_, i64>(2) as u32,
                (r.get(3), r.get(4)),
                Some(Profile {
                    nick_name: r.get(5),
                    portrait: r.get(6),
                    ext,
                    is_robot: r.get(8),
                }),
            )
        },
    )
    .await
    .map_err(classify)?;
    if let Some(e) = bad_ext {
        *shared.follower.build_failure.lock().expect("follower lock") = Some(e.clone());
        return Err(StoreError::Internal(e));
    }
    for r in tx
        .query("SELECT app_id, next_ordinal FROM tagcast_apps", &[])
        .await
        .map_err(classify)?
    {
        b.next_ordinal(r.get::<_, i32>(0) as u32, r.get::<_, i64>(1) as u32);
    }
    for_each_row(
        &tx,
        "SELECT t.app_id, t.inbox_type, t.key, t.value, u.ordinal
         FROM tags t JOIN users u ON u.app_id = t.app_id AND u.user_id = t.user_id",
        |r| {
            b.tag(
                r.get::<_, i32>(0) as u32,
                r.get::<_, i32>(1) as u32,
                r.get(2),
                r.get(3),
                r.get::<_, i64>(4) as u32,
            )
        },
    )
    .await
    .map_err(classify)?;
    tx.commit().await.map_err(classify)?;
    *shared.follower.build_failure.lock().expect("follower lock") = None;
    shared.follower.index.replace(b.finish(), pos as u64);
    let (apps, bitmaps) = shared.follower.index.size();
    tracing::info!(
        apps,
        bitmaps,
        position = pos,
        ms = started.elapsed().as_millis() as u64,
        "audience index built"
    );
    Ok(())
}

/// Runs `select` through a cursor, calling `f` on every row, [`BUILD_FETCH`] rows per
/// round trip (a whole table never sits in memory as rows).
async fn for_each_row(
    tx: &tokio_postgres::Transaction<'_>,
    select: &str,
    mut f: impl FnMut(&tokio_postgres::Row),
) -> Result<(), tokio_postgres::Error> {
    tx.batch_execute(&format!("DECLARE build NO SCROLL CURSOR FOR {select}"))
        .await?;
    loop {
        let rows = tx.query(BUILD_FETCH, &[]).await?;
        if rows.is_empty() {
            break;
        }
        rows.iter().for_each(&mut f);
    }
    tx.batch_execute("CLOSE build").await
}

/// Deletes log entries older than [`KEEP`] (any node may; they agree).
pub(super) async fn trim(shared: &Shared) -> Result<u64, StoreError> {
    let client = shared.client().await?;
    let oldest = now_ms() - KEEP.as_millis() as i64;
    client
        .execute(
            "DELETE FROM tagcast_changes WHERE created < $1
               AND pos < (SELECT pos FROM tagcast_log_head)",
            &[&oldest],
        )
        .await
        .map_err(|e| classify(&shared.target, e))
}
