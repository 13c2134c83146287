//! One transaction for a batch of write requests, with a fixed number of statements
//! whatever the batch size: the locks of every (app, user) in the batch and a read of
//! their current state (one round trip), each request's outcome decided in memory in
//! queue order, then every write of the batch as set-based statements (one round trip).
//! An UnRegisterUsers request is a barrier: the writes before it are flushed, it runs,
//! and planning goes on from the state it leaves.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use deadpool_postgres::Transaction;
use tokio_postgres::types::ToSql;

use crate::store::{
    DEFAULT_INBOX, Outcome, Tag, TagOp, UserRegistration, WriteJob, WriteOp, now_ms,
};

/// A lock key per (app, user), taken in one global order (sorted keys), so batches on any
/// node never deadlock; collisions only serialize two unrelated users.
const LOCK: &str = "SELECT pg_advisory_xact_lock(k) FROM \
     (SELECT DISTINCT hashint8extended(u, a) AS k FROM unnest($1::bigint[], $2::bigint[]) AS x(a, u) ORDER BY 1) AS s";

/// Registration and keys of each (app, inbox, user): per-id LATERAL lookups, see "Query
/// plans" in the module documentation of the store.
const READ: &str = "SELECT x.a, x.i, x.u, r.reg, t.key FROM unnest($1::int[], $2::int[], $3::bigint[]) AS x(a, i, u)
     LEFT JOIN LATERAL (SELECT true AS reg FROM users WHERE app_id = x.a AND user_id = x.u OFFSET 0) r ON true
     LEFT JOIN LATERAL (SELECT key FROM tags
                        WHERE app_id = x.a AND user_id = x.u AND inbox_type + 0 = x.i OFFSET 0) t ON true";

const UPSERT_TAGS: &str = "INSERT INTO tags (app_id, user_id, inbox_type, key, value)
     SELECT * FROM unnest($1::int[], $2::bigint[], $3::int[], $4::text[], $5::text[])
     ON CONFLICT (app_id, user_id, inbox_type, key) DO UPDATE SET value = EXCLUDED.value";

/// Found by primary key, deleted by ctid (stable: this transaction holds the users' locks).
const DELETE_TAGS: &str = "DELETE FROM tags WHERE ctid = ANY(ARRAY(
     SELECT t.ctid FROM unnest($1::int[], $2::bigint[], $3::int[], $4::text[]) AS x(a, u, i, k)
     JOIN LATERAL (SELECT ctid FROM tags WHERE app_id = x.a AND user_id = x.u
                   AND inbox_type + 0 = x.i AND key = x.k OFFSET 0) t ON true))";

const INSERT_USERS: &str = "INSERT INTO users (app_id, user_id, create_time, modify_time)
     SELECT a, u, $3, $3 FROM unnest($1::int[], $2::bigint[]) AS x(a, u)
     ON CONFLICT (app_id, user_id) DO NOTHING";

const UPDATE_USERS: &str = "UPDATE users SET nick_name = COALESCE(x.n, users.nick_name),
                      portrait = COALESCE(x.p, users.portrait),
                      ext = COALESCE(x.e, users.ext),
                      is_robot = COALESCE(x.r, users.is_robot),
                      modify_time = $7
     FROM unnest($1::int[], $2::bigint[], $3::text[], $4::text[], $5::text[], $6::boolean[]) AS x(a, u, n, p, e, r)
     WHERE users.app_id = x.a AND users.user_id = x.u";

const UNREGISTER_USERS: &str =
    "DELETE FROM users WHERE app_id = $1 AND user_id = ANY($2) RETURNING user_id";
const UNREGISTER_TAGS: &str = "DELETE FROM tags WHERE app_id = $1 AND user_id = ANY($2)";

/// (app, inbox, user)
type Slot = (i32, i32, i64);

/// What the batch knows of the users it touches, kept current as requests are planned.
#[derive(Default)]
struct State {
    registered: HashSet<(i32, i64)>,
    keys: HashMap<Slot, HashSet<String>>,
}

/// Writes planned but not yet sent.
#[derive(Default)]
struct Pending {
    upserts: BTreeMap<(i32, i64, i32, String), String>,
    deletes: BTreeSet<(i32, i64, i32, String)>,
    /// Profiles of registered users, later registrations folded over earlier ones.
    profiles: BTreeMap<(i32, i64), UserRegistration>,
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

/// Upserts `tags` into `keys` if the per-user cap allows; returns the outcome.
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

impl Pending {
    fn upsert(&mut self, (a, i, u): Slot, tags: &[Tag]) {
        for (k, v) in tags {
            self.deletes.remove(&(a, u, i, k.clone()));
            self.upserts.insert((a, u, i, k.clone()), v.clone());
        }
    }

    fn delete(&mut self, (a, i, u): Slot, tags: &[Tag]) {
        for (k, _) in tags {
            self.upserts.remove(&(a, u, i, k.clone()));
            self.deletes.insert((a, u, i, k.clone()));
        }
    }

    fn register(&mut self, app: i32, u: &UserRegistration) {
        let p = self
            .profiles
            .entry((app, u.user_id))
            .or_insert_with(|| UserRegistration {
                user_id: u.user_id,
                ..Default::default()
            });
        p.nick_name = u.nick_name.clone().or(p.nick_name.take());
        p.portrait = u.portrait.clone().or(p.portrait.take());
        p.ext = u.ext.clone().or(p.ext.take());
        p.is_robot = u.is_robot.or(p.is_robot);
    }

    /// Sends every pending write, pipelined in one round trip (they touch disjoint rows,
    /// except the users' two statements, which run in order on the connection).
    async fn flush(&mut self, tx: &Transaction<'_>) -> Result<(), tokio_postgres::Error> {
        let now = now_ms();
        let profiles = std::mem::take(&mut self.profiles);
        let (mut pa, mut pu, mut nick, mut portrait, mut ext, mut robot) =
            (vec![], vec![], vec![], vec![], vec![], vec![]);
        for ((a, u), p) in profiles {
            pa.push(a);
            pu.push(u);
            nick.push(p.nick_name);
            portrait.push(p.portrait);
            ext.push(
                p.ext
                    .map(|m| serde_json::to_string(&m).expect("a string map serializes")),
            );
            robot.push(p.is_robot);
        }
        let (mut ua, mut uu, mut ui, mut uk, mut uv) = (vec![], vec![], vec![], vec![], vec![]);
        for ((a, u, i, k), v) in std::mem::take(&mut self.upserts) {
            ua.push(a);
            uu.push(u);
            ui.push(i);
            uk.push(k);
            uv.push(v);
        }
        let (mut da, mut du, mut di, mut dk) = (vec![], vec![], vec![], vec![]);
        for (a, u, i, k) in std::mem::take(&mut self.deletes) {
            da.push(a);
            du.push(u);
            di.push(i);
            dk.push(k);
        }
        let users = async {
            if !pa.is_empty() {
                exec(tx, INSERT_USERS, &[&pa, &pu, &now]).await?;
                let params: [&(dyn ToSql + Sync); 7] =
                    [&pa, &pu, &nick, &portrait, &ext, &robot, &now];
                exec(tx, UPDATE_USERS, &params).await?;
            }
            Ok(())
        };
        let upserts = async {
            if !ua.is_empty() {
                exec(tx, UPSERT_TAGS, &[&ua, &uu, &ui, &uk, &uv]).await?;
            }
            Ok(())
        };
        let deletes = async {
            if !da.is_empty() {
                exec(tx, DELETE_TAGS, &[&da, &du, &di, &dk]).await?;
            }
            Ok::<(), tokio_postgres::Error>(())
        };
        tokio::try_join!(users, upserts, deletes)?;
        Ok(())
    }
}

/// Locks and reads everything the batch touches.
async fn lock_and_read(
    tx: &Transaction<'_>,
    jobs: &[WriteJob],
) -> Result<State, tokio_postgres::Error> {
    let mut pairs = BTreeSet::new();
    let mut slots = BTreeSet::new();
    for job in jobs {
        let a = job.app_id as i32;
        let (inbox, ids) = match &job.op {
            WriteOp::Tags { inbox, entries, .. } => (
                *inbox as i32,
                entries.iter().map(|e| e.user_id).collect::<Vec<_>>(),
            ),
            WriteOp::Register(users) => (
                DEFAULT_INBOX as i32,
                users.iter().map(|u| u.user_id).collect(),
            ),
            WriteOp::Unregister(ids) => (DEFAULT_INBOX as i32, ids.clone()),
        };
        for u in ids {
            pairs.insert((i64::from(a), u));
            slots.insert((a, inbox, u));
        }
    }
    let (la, lu): (Vec<i64>, Vec<i64>) = pairs.into_iter().unzip();
    let (mut ra, mut ri, mut ru) = (vec![], vec![], vec![]);
    for (a, i, u) in slots {
        ra.push(a);
        ri.push(i);
        ru.push(u);
    }
    let (lock, read) = tokio::try_join!(tx.prepare_cached(LOCK), tx.prepare_cached(READ))?;
    let lock_params: [&(dyn ToSql + Sync); 2] = [&la, &lu];
    let read_params: [&(dyn ToSql + Sync); 3] = [&ra, &ri, &ru];
    // Pipelined: statements on one connection run in order, so the read sees the state
    // after the locks.
    let (_, rows) = tokio::try_join!(
        tx.execute(&lock, &lock_params),
        tx.query(&read, &read_params)
    )?;
    let mut state = State::default();
    for row in rows {
        let slot: Slot = (row.get(0), row.get(1), row.get(2));
        if row.get::<_, Option<bool>>(3).is_some() {
            state.registered.insert((slot.0, slot.2));
        }
        let keys = state.keys.entry(slot).or_default();
        if let Some(key) = row.get::<_, Option<String>>(4) {
            keys.insert(key);
        }
    }
    Ok(state)
}

/// Applies `jobs` in order inside `tx`; one outcome list per job.
pub(super) async fn apply(
    tx: &Transaction<'_>,
    jobs: &[WriteJob],
    cap: usize,
) -> Result<Vec<Vec<Outcome>>, tokio_postgres::Error> {
    let mut state = lock_and_read(tx, jobs).await?;
    let mut pending = Pending::default();
    let mut results = Vec::with_capacity(jobs.len());
    for job in jobs {
        let a = job.app_id as i32;
        let out = match &job.op {
            WriteOp::Tags { inbox, op, entries } => {
                let i = *inbox as i32;
                entries
                    .iter()
                    .map(|e| {
                        if !state.registered.contains(&(a, e.user_id)) {
                            return Outcome::UserNotFound;
                        }
                        let slot = (a, i, e.user_id);
                        let keys = state.keys.entry(slot).or_default();
                        match op {
                            TagOp::Upsert => {
                                let outcome = plan_upsert(keys, &e.tags, cap);
                                if outcome == Outcome::Applied {
                                    pending.upsert(slot, &e.tags);
                                }
                                outcome
                            }
                            TagOp::Delete => {
                                for (k, _) in &e.tags {
                                    keys.remove(k);
                                }
                                pending.delete(slot, &e.tags);
                                Outcome::Applied
                            }
                        }
                    })
                    .collect()
            }
            WriteOp::Register(users) => users
                .iter()
                .map(|u| {
                    let slot = (a, DEFAULT_INBOX as i32, u.user_id);
                    let outcome = plan_upsert(state.keys.entry(slot).or_default(), &u.tags, cap);
                    if outcome == Outcome::Applied {
                        state.registered.insert((a, u.user_id));
                        pending.upsert(slot, &u.tags);
                        pending.register(a, u);
                    }
                    outcome
                })
                .collect(),
            WriteOp::Unregister(ids) => {
                // A barrier: what came before is written first, so the deletes see it.
                pending.flush(tx).await?;
                let mut distinct = ids.clone();
                distinct.sort_unstable();
                distinct.dedup();
                let users = tx.prepare_cached(UNREGISTER_USERS).await?;
                let mut removed: HashSet<i64> = tx
                    .query(&users, &[&a, &distinct])
                    .await?
                    .iter()
                    .map(|r| r.get(0))
                    .collect();
                exec(tx, UNREGISTER_TAGS, &[&a, &distinct]).await?;
                for u in &distinct {
                    state.registered.remove(&(a, *u));
                }
                state
                    .keys
                    .retain(|(sa, _, su), _| !(*sa == a && distinct.contains(su)));
                // A user listed twice is removed once; the second mention finds nothing.
                ids.iter()
                    .map(|id| match removed.remove(id) {
                        true => Outcome::Applied,
                        false => Outcome::UserNotFound,
                    })
                    .collect()
            }
        };
        results.push(out);
    }
    pending.flush(tx).await?;
    Ok(results)
}
