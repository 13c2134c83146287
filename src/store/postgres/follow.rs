//! Each node's state follows the change logs that every write transaction, on any node,
//! appends to (`batch.rs`): one log per app.
//!
//! Ordering: a transaction takes an app's next log position by updating that app's row of
//! `tagcast_apps`, and holds the row lock until it commits; PostgreSQL makes a transaction
//! visible before it releases its locks. So an app's position n + 1 cannot be taken before
//! its position n is visible, an app's positions have no holes, and a follower that reads
//! "everything of this app after the last position I applied" can never skip one that
//! commits late (the trap of a plain sequence, whose numbers are taken in one order and
//! committed in another). Appends of one app run one at a time across all nodes (group
//! commit keeps them few); appends of different apps never wait on each other.
//!
//! The follower applies each app's entries strictly in order. It wakes on NOTIFY (sent by
//! every appending transaction, delivered at its commit), when a query finds it behind,
//! and every 100 ms regardless.
//!
//! Start: the node loads its snapshot file (`data_dir/audience.snapshot`, the format of
//! `audience/snapshot.rs`) when it carries this database's token (`tagcast_meta`) and
//! each app's log still holds the entry the file ends at, with the same time; then it
//! replays every app's entries after the file's positions and only then answers. Without
//! a usable file (first start, damaged file, the log trimmed past it, a file of another
//! database) it builds from the tables, in one snapshot together with the positions they
//! hold, and the log line says why. The file is written every `store.snapshot_interval_s`
//! or `store.snapshot_changes`, and at a clean stop; before each write the node records
//! the positions it holds in `tagcast_snapshot_marks`. The log is also the event log
//! (API.md §9): entries are trimmed by the events' retention only (`events::retention`;
//! the entry at an app's head is always kept, for the check); a node that finds the entry
//! after its position gone (it fell behind the trim) rebuilds from the tables.
//!
//! Read-your-writes across nodes: a query first reads its app's log head (the last
//! committed position) and waits, bounded, until its node has applied it.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::Notify;
use tokio_postgres::types::ToSql;

use super::{Shared, classify};
use crate::audience::index::{AppIndex, Builder, Profile};
use crate::audience::{AudienceIndex, snapshot};
use crate::model::{Change, decode_entry, entry_changes};
use crate::store::StoreError;
use crate::store::now_ms;

/// How long a snapshot's mark holds the log: a node stopped for longer builds from the
/// tables at its next start.
pub(super) const MARK_HOLD: Duration = Duration::from_secs(3600);
/// The follower looks at the log at least this often, NOTIFY or not.
const POLL: Duration = Duration::from_millis(100);
/// How often each node trims the log.
const TRIM_EVERY: Duration = Duration::from_secs(30);
/// Entries read per app per round trip.
const PAGE: i64 = 256;
/// Rows per FETCH while building.
const BUILD_FETCH: &str = "FETCH 50000 FROM build";
/// The key in `tagcast_meta` of the token every snapshot file of this database carries.
const TOKEN_KEY: &str = "snapshot_token";

/// Every app whose head is past the position given for it (0 when none is), with up to
/// [`PAGE`] of its entries after that position, in app and position order. An app that
/// is behind but has no entry after its position was trimmed past.
const AFTER: &str = "SELECT a.app_id, a.log_pos, l.pos, l.created, l.body
     FROM tagcast_apps a
     LEFT JOIN unnest($1::int[], $2::bigint[]) AS m(app, pos) ON m.app = a.app_id
     LEFT JOIN LATERAL (SELECT pos, created, body FROM tagcast_app_log
                        WHERE app_id = a.app_id AND pos > COALESCE(m.pos, 0)
                        ORDER BY pos LIMIT $3) l ON true
     WHERE a.log_pos > COALESCE(m.pos, 0)
     ORDER BY a.app_id, l.pos";

/// Records the positions a snapshot file holds, for the trim.
const MARK: &str = "INSERT INTO tagcast_snapshot_marks (app_id, node, pos, saved)
     SELECT a, $3, p, $4 FROM unnest($1::int[], $2::bigint[]) AS x(a, p)
     ON CONFLICT (app_id, node) DO UPDATE SET pos = EXCLUDED.pos, saved = EXCLUDED.saved";

/// The follower's handle, shared with the store.
pub(super) struct Follower {
    pub index: Arc<AudienceIndex>,
    pub wake: Notify,
    /// Why the last build from the tables failed on what they hold (a row this binary
    /// cannot read): answered to requests while the state is not built.
    pub build_failure: std::sync::Mutex<Option<String>>,
    /// Changes applied since the last save (a build from the tables counts one).
    pub changes: AtomicU64,
    /// This process's name in `tagcast_snapshot_marks`.
    pub node: String,
    /// The database's snapshot token, read at the start.
    pub token: std::sync::Mutex<Option<[u8; 16]>>,
}

impl Follower {
    pub fn new() -> Self {
        Follower {
            index: Arc::new(AudienceIndex::new()),
            wake: Notify::new(),
            build_failure: std::sync::Mutex::default(),
            changes: AtomicU64::new(0),
            node: format!("{:016x}", rand::random::<u64>()),
            token: std::sync::Mutex::default(),
        }
    }
}

/// Reads the app's log head and waits until this node's state has applied it, at most
/// `limit`.
pub(super) async fn catch_up(shared: &Shared, app: u32, limit: Duration) -> Result<(), StoreError> {
    if !shared.options.follow {
        return Err(StoreError::unavailable(
            "this store was opened to write only (tagcast import): it holds no state",
        ));
    }
    let follower = &shared.follower;
    let failed = || {
        let why = follower
            .build_failure
            .lock()
            .expect("follower lock")
            .clone();
        why.map_or(Ok(()), |w| Err(StoreError::internal(w)))
    };
    if !follower.index.is_built() {
        failed()?;
    }
    if !follower.index.wait_built(limit).await {
        failed()?;
        return Err(StoreError::unavailable(
            "the state is being built from the tables",
        ));
    }
    let head: i64 = {
        let client = shared.client().await?;
        let st = client
            .prepare_cached("SELECT log_pos FROM tagcast_apps WHERE app_id = $1")
            .await
            .map_err(|e| classify(&shared.target, e))?;
        client
            .query_opt(&st, &[&(app as i32)])
            .await
            .map_err(|e| classify(&shared.target, e))?
            .map_or(0, |r| r.get(0))
    };
    let head = head as u64;
    let index = &follower.index;
    let mut applied = index.subscribe();
    if index.log_pos(app) >= head {
        return Ok(());
    }
    follower.wake.notify_one();
    let wait = applied.wait_for(|_| index.log_pos(app) >= head);
    match tokio::time::timeout(limit, wait).await {
        Ok(Ok(_)) => Ok(()),
        _ => Err(StoreError::unavailable(format!(
            "this node's state has not caught up with the change log of AppId {app} within {} ms",
            limit.as_millis()
        ))),
    }
}

/// The follower task: starts the state (snapshot or tables), then applies the logs for
/// as long as the store is open, saving the state periodically and at the end.
/// Failures (database away) are retried; the state keeps what it has.
pub(super) async fn run(shared: Arc<Shared>, stop: Arc<Notify>) {
    let follower = &shared.follower;
    let mut listener: Option<tokio::task::JoinHandle<()>> = None;
    let mut failed_at: Option<Instant> = None;
    let mut trimmed_at = Instant::now();
    let mut saved_at = Instant::now();
    // The periodic save runs beside the follower (copying a large state takes a while;
    // reads on this node wait for the entries it applies meanwhile), one at a time.
    let mut saving: Option<tokio::task::JoinHandle<()>> = None;
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
            start(&shared).await.map(|_| false)
        };
        let more = match step {
            Ok(more) => {
                failed_at = None;
                more
            }
            Err(e) => {
                if failed_at.is_none() {
                    tracing::warn!(error = %e, "state: reading the change log failed; retrying");
                }
                failed_at.get_or_insert_with(Instant::now);
                false
            }
        };
        if saving.as_ref().is_none_or(|s| s.is_finished()) && save_due(&shared, saved_at) {
            saved_at = Instant::now();
            let shared = shared.clone();
            saving = Some(tokio::spawn(async move { save(&shared).await }));
        }
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
    if let Some(s) = saving {
        let _ = s.await;
    }
    // A clean stop: the next start replays only what is written after this.
    if follower.index.is_built() && follower.changes.load(Ordering::Relaxed) > 0 {
        save(&shared).await;
    }
}

fn save_due(shared: &Shared, saved_at: Instant) -> bool {
    let o = &shared.options;
    let changes = shared.follower.changes.load(Ordering::Relaxed);
    o.snapshot_file.is_some()
        && shared.follower.index.is_built()
        && (changes >= o.snapshot_changes
            || (changes > 0 && o.snapshot_every.is_some_and(|e| saved_at.elapsed() >= e)))
}

/// Writes the snapshot file: a copy of every app's state (each under its read lock),
/// its positions recorded as this node's marks, then the file. A failure is logged and
/// retried at the next interval.
async fn save(shared: &Shared) {
    let Some(path) = shared.options.snapshot_file.clone() else {
        return;
    };
    let Some(token) = *shared.follower.token.lock().expect("token lock") else {
        return;
    };
    let started = Instant::now();
    let changes = shared.follower.changes.swap(0, Ordering::Relaxed);
    let result = async {
        let index = shared.follower.index.clone();
        let apps = tokio::task::spawn_blocking(move || index.copy_apps())
            .await
            .map_err(|e| format!("copying the state: {e}"))?;
        let copy_ms = started.elapsed().as_millis() as u64;
        let (a, p): (Vec<i32>, Vec<i64>) = apps
            .iter()
            .filter(|(_, x)| x.log_head().0 > 0)
            .map(|(app, x)| (*app as i32, x.log_head().0 as i64))
            .unzip();
        // The marks first: from their commit on, the trim keeps what the file needs.
        {
            let client = shared.client().await.map_err(|e| e.to_string())?;
            let st = client
                .prepare_cached(MARK)
                .await
                .map_err(|e| classify(&shared.target, e).to_string())?;
            let params: [&(dyn ToSql + Sync); 4] = [&a, &p, &shared.follower.node, &now_ms()];
            client
                .execute(&st, &params)
                .await
                .map_err(|e| classify(&shared.target, e).to_string())?;
        }
        let file = path.clone();
        tokio::task::spawn_blocking(move || snapshot::write_copies(&apps, &token, &file))
            .await
            .map_err(|e| format!("writing the snapshot: {e}"))?
            .map_err(|e| format!("writing {}: {e}", path.display()))?;
        Ok::<u64, String>(copy_ms)
    };
    match result.await {
        Ok(copy_ms) => tracing::info!(
            changes,
            copy_ms,
            ms = started.elapsed().as_millis() as u64,
            "state saved"
        ),
        Err(e) => {
            shared
                .follower
                .changes
                .fetch_add(changes, Ordering::Relaxed);
            tracing::warn!(error = %e, "saving the state failed; retrying at the next interval");
        }
    }
}

/// The database's snapshot token (created if an operator removed it).
async fn read_token(shared: &Shared) -> Result<[u8; 16], StoreError> {
    let classify = |e| classify(&shared.target, e);
    let client = shared.client().await?;
    client
        .execute(
            "INSERT INTO tagcast_meta (key, value)
             VALUES ($1, md5(random()::text || clock_timestamp()::text))
             ON CONFLICT (key) DO NOTHING",
            &[&TOKEN_KEY],
        )
        .await
        .map_err(classify)?;
    let value: String = client
        .query_one(
            "SELECT value FROM tagcast_meta WHERE key = $1",
            &[&TOKEN_KEY],
        )
        .await
        .map_err(classify)?
        .get(0);
    hex::decode(&value)
        .ok()
        .and_then(|t| t.try_into().ok())
        .ok_or_else(|| {
            StoreError::internal(format!(
                "tagcast_meta.{TOKEN_KEY} is not 32 hex digits; delete that row and restart"
            ))
        })
}

/// Why a start cannot use the snapshot file.
enum Unusable {
    /// The file: it is missing, damaged, of another database, or behind the trim.
    File(String),
    /// The database could not be read: retried.
    Db(StoreError),
}

/// The first build: from the snapshot file and the logs after it, else from the tables.
async fn start(shared: &Shared) -> Result<(), StoreError> {
    let started = Instant::now();
    let token = read_token(shared).await?;
    *shared.follower.token.lock().expect("token lock") = Some(token);
    if let Some(path) = &shared.options.snapshot_file {
        match load(shared, path, &token).await {
            Ok((apps, replayed)) => {
                shared.follower.index.replace(apps);
                *shared.follower.build_failure.lock().expect("follower lock") = None;
                let (apps, bitmaps) = shared.follower.index.size();
                tracing::info!(
                    apps,
                    bitmaps,
                    from = "snapshot",
                    replayed,
                    ms = started.elapsed().as_millis() as u64,
                    "audience index built"
                );
                return Ok(());
            }
            Err(Unusable::Db(e)) => return Err(e),
            Err(Unusable::File(why)) => tracing::warn!(
                file = %path.display(),
                cause = %why,
                "not starting from the saved state; building it from the tables"
            ),
        }
    }
    rebuild(shared).await
}

/// The snapshot file, checked against the logs and brought up to date with them:
/// `(apps, entries replayed)`.
async fn load(
    shared: &Shared,
    path: &Path,
    token: &[u8; 16],
) -> Result<(HashMap<u32, AppIndex>, u64), Unusable> {
    let (file, t) = (path.to_owned(), *token);
    let read = tokio::task::spawn_blocking(move || snapshot::read(&file, &t))
        .await
        .map_err(|e| Unusable::File(format!("reading the saved state: {e}")))?;
    let mut apps = match read {
        Ok(Some(apps)) => apps,
        Ok(None) => {
            return Err(Unusable::File(
                "the saved state is of another database".into(),
            ));
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(Unusable::File("no saved state".into()));
        }
        Err(e) => {
            return Err(Unusable::File(format!(
                "the saved state is unreadable: {e}"
            )));
        }
    };
    let db = |e| Unusable::Db(classify(&shared.target, e));
    let client = shared.client().await.map_err(Unusable::Db)?;
    let ends: Vec<(u32, u64, i64)> = apps
        .iter()
        .map(|(app, a)| (*app, a.log_head().0, a.log_head().1))
        .filter(|(_, pos, _)| *pos > 0)
        .collect();
    let a: Vec<i32> = ends.iter().map(|e| e.0 as i32).collect();
    let p: Vec<i64> = ends.iter().map(|e| e.1 as i64).collect();
    let found = client
        .query(
            "SELECT x.a, l.created FROM unnest($1::int[], $2::bigint[]) AS x(a, p)
             LEFT JOIN tagcast_app_log l ON l.app_id = x.a AND l.pos = x.p",
            &[&a, &p],
        )
        .await
        .map_err(db)?;
    let found: HashMap<u32, Option<i64>> = found
        .iter()
        .map(|r| (r.get::<_, i32>(0) as u32, r.get(1)))
        .collect();
    for (app, pos, time) in ends {
        if found.get(&app).copied().flatten() != Some(time) {
            return Err(Unusable::File(format!(
                "the change log of AppId {app} no longer holds the entry {pos} the saved state ends at (trimmed past it, or a restored database)"
            )));
        }
    }
    let mut replayed = 0;
    loop {
        let held: Vec<(u32, u64)> = apps.iter().map(|(k, v)| (*k, v.log_head().0)).collect();
        let rows = fetch_after(&client, &held).await.map_err(db)?;
        match apply_rows(&rows, &mut apps).map_err(Unusable::Db)? {
            Step::Applied { entries, more, .. } => {
                replayed += entries;
                if !more {
                    return Ok((apps, replayed));
                }
            }
            Step::Gap(why) => return Err(Unusable::File(why)),
        }
    }
}

/// Where entries are applied: a state being loaded, or the live one.
trait Target {
    fn held(&self, app: u32) -> u64;
    fn apply(&mut self, app: u32, pos: u64, changes: &[Change], time_ms: i64);
}

impl Target for HashMap<u32, AppIndex> {
    fn held(&self, app: u32) -> u64 {
        self.get(&app).map_or(0, |a| a.log_head().0)
    }
    fn apply(&mut self, app: u32, pos: u64, changes: &[Change], time_ms: i64) {
        self.entry(app)
            .or_default()
            .apply_entry(changes, time_ms, pos);
    }
}

impl Target for &AudienceIndex {
    fn held(&self, app: u32) -> u64 {
        self.log_pos(app)
    }
    fn apply(&mut self, app: u32, pos: u64, changes: &[Change], time_ms: i64) {
        self.apply_at(app, pos, changes, time_ms);
    }
}

enum Step {
    Applied {
        entries: u64,
        changes: u64,
        more: bool,
    },
    /// An app's next entry is not in the log (trimmed): why.
    Gap(String),
}

async fn fetch_after(
    client: &deadpool_postgres::Client,
    held: &[(u32, u64)],
) -> Result<Vec<tokio_postgres::Row>, tokio_postgres::Error> {
    let a: Vec<i32> = held.iter().map(|h| h.0 as i32).collect();
    let p: Vec<i64> = held.iter().map(|h| h.1 as i64).collect();
    let st = client.prepare_cached(AFTER).await?;
    let params: [&(dyn ToSql + Sync); 3] = [&a, &p, &PAGE];
    client.query(&st, &params).await
}

/// Applies rows of [`AFTER`] in order, each app's only from its next position on.
fn apply_rows(rows: &[tokio_postgres::Row], target: &mut impl Target) -> Result<Step, StoreError> {
    let (mut entries, mut changes, mut more) = (0, 0, false);
    for group in rows.chunk_by(|a, b| a.get::<_, i32>(0) == b.get::<_, i32>(0)) {
        let app = group[0].get::<_, i32>(0) as u32;
        let head = group[0].get::<_, i64>(1) as u64;
        for r in group {
            let held = target.held(app);
            let Some(pos) = r.get::<_, Option<i64>>(2) else {
                return Ok(Step::Gap(format!(
                    "the change log of AppId {app} holds no entry after {held} (its head is {head}): trimmed"
                )));
            };
            let pos = pos as u64;
            if pos <= held {
                continue;
            }
            if pos != held + 1 {
                return Ok(Step::Gap(format!(
                    "the change log of AppId {app} jumps from {held} to {pos}: trimmed"
                )));
            }
            let body: &[u8] = r.get(4);
            let decoded = decode_entry(body).map(entry_changes).map_err(|e| {
                StoreError::internal(format!(
                    "the change log entry {pos} of AppId {app} does not decode: {e}"
                ))
            })?;
            target.apply(app, pos, &decoded, r.get(3));
            entries += 1;
            changes += decoded.len() as u64;
        }
        more |= group.len() as i64 == PAGE;
    }
    Ok(Step::Applied {
        entries,
        changes,
        more,
    })
}

/// Applies what the logs hold after this node's positions; `Ok(true)` when more may be
/// waiting.
async fn apply_log(shared: &Shared) -> Result<bool, StoreError> {
    let index = &*shared.follower.index;
    let rows = {
        let client = shared.client().await?;
        fetch_after(&client, &index.positions())
            .await
            .map_err(|e| classify(&shared.target, e))?
    };
    if rows.is_empty() {
        return Ok(false);
    }
    match apply_rows(&rows, &mut &*index)? {
        Step::Applied { changes, more, .. } => {
            shared
                .follower
                .changes
                .fetch_add(changes, Ordering::Relaxed);
            Ok(more)
        }
        Step::Gap(why) => {
            tracing::warn!(
                cause = %why,
                "the state fell behind the trimmed change log; rebuilding it from the tables"
            );
            rebuild(shared).await?;
            Ok(true)
        }
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

/// Builds the state from the tables and the log positions they hold, in one snapshot.
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
    let mut b = Builder::default();
    let mut bad_row = None;
    // One row per user: its profile and its tags of every inbox.
    for_each_row(
        &tx,
        "SELECT app_id, user_id, ordinal, create_time, modify_time, nick_name, portrait, ext, is_robot,
                tags::text
         FROM users",
        |r| {
            let (app, user): (i32, i64) = (r.get(0), r.get(1));
            let ext = match serde_json::from_str(r.get(7)) {
                Ok(ext) => ext,
                Err(e) => {
                    bad_row.get_or_insert(format!("users.ext of user {user} of AppId {app} is not a JSON object of strings: {e}"));
                    return;
                }
            };
            let tags = match crate::model::parse_tags_json(r.get(9)) {
                Ok(tags) => tags,
                Err(e) => {
                    bad_row.get_or_insert(format!("users.tags of user {user} of AppId {app} is {e}"));
                    return;
                }
            };
            let ordinal = r.get::<_, i64>(2) as u32;
            b.user(
                app as u32,
                user,
                ordinal,
                (r.get(3), r.get(4)),
                Some(Profile {
                    nick_name: r.get(5),
                    portrait: r.get(6),
                    ext,
                    is_robot: r.get(8),
                }),
            );
            for (inbox, key, value) in &tags {
                b.tag(app as u32, *inbox, key, value, ordinal);
            }
        },
    )
    .await
    .map_err(classify)?;
    if let Some(e) = bad_row {
        *shared.follower.build_failure.lock().expect("follower lock") = Some(e.clone());
        return Err(StoreError::internal(e));
    }
    // Each app's head, with its entry's time (the head entry is never trimmed; an entry
    // an operator removed gives 0, which no snapshot check will match).
    for r in tx
        .query(
            "SELECT a.app_id, a.next_ordinal, a.log_pos, l.created FROM tagcast_apps a
             LEFT JOIN tagcast_app_log l ON l.app_id = a.app_id AND l.pos = a.log_pos",
            &[],
        )
        .await
        .map_err(classify)?
    {
        let app = r.get::<_, i32>(0) as u32;
        b.next_ordinal(app, r.get::<_, i64>(1) as u32);
        b.log_head(
            app,
            r.get::<_, i64>(2) as u64,
            r.get::<_, Option<i64>>(3).unwrap_or(0),
        );
    }
    tx.commit().await.map_err(classify)?;
    *shared.follower.build_failure.lock().expect("follower lock") = None;
    shared.follower.index.replace(b.finish());
    // A state the file does not hold: the next interval saves it.
    shared.follower.changes.fetch_add(1, Ordering::Relaxed);
    let (apps, bitmaps) = shared.follower.index.size();
    tracing::info!(
        apps,
        bitmaps,
        from = "store",
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

/// Deletes the snapshot marks older than [`MARK_HOLD`]. (The log itself is the event log:
/// its retention trims it, `events::retention`; a node whose saved state was trimmed past
/// builds from the tables.)
pub(super) async fn trim(shared: &Shared) -> Result<u64, StoreError> {
    let classify = |e| classify(&shared.target, e);
    let client = shared.client().await?;
    let held = now_ms() - MARK_HOLD.as_millis() as i64;
    client
        .execute(
            "DELETE FROM tagcast_snapshot_marks WHERE saved < $1",
            &[&held],
        )
        .await
        .map_err(classify)
}
