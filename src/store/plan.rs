//! The tag rules, written once: given a batch of queued write requests and the stored state
//! of the users they touch, decide every request's outcome and list the changes that
//! carry them out, in order. A backend only reads that state (under its locks), writes
//! the changes and commits; the audience index applies the same changes, so it can never
//! disagree with what was committed.
//!
//! The rules (API.md §5): entries apply in order, each atomically; Op 0 overwrites or adds,
//! Op 1 deletes (absent keys ignored); only net-new keys count against the per-user cap,
//! deletes always pass; RegisterUsers creates or updates a user and merges its tags into
//! inbox 0; BatchUpdateUser changes the given profile fields of a registered user and, when
//! it lists tags, makes them the user's whole inbox-0 set (a replace: its size is what the
//! cap limits); UnRegisterUsers removes the user and its tags in every inbox, and a user
//! listed twice is removed once (the second mention finds nothing). A user registered for the
//! first time, or again after being unregistered, gets the app's next ordinal: dense per
//! app, never reused.

use std::collections::{BTreeMap, HashMap};

use super::{
    DEFAULT_INBOX, Outcome, StoreError, Tag, TagOp, UserRegistration, UserUpdate, WriteJob, WriteOp,
};
use crate::model::Profile;
pub use crate::model::{Change, UserState};

/// What a backend read for a batch: every (app, user) the batch names (absent: not
/// registered, no tags), and the next free ordinal of every app the batch registers users
/// in (see [`Batch::needs_ordinals`]).
#[derive(Debug, Default)]
pub struct Snapshot {
    pub users: HashMap<(u32, i64), UserState>,
    pub next_ordinal: HashMap<u32, u32>,
}

/// The plan of a batch: one outcome list per request, the changes in order, and the next
/// free ordinal of every app that registered users (to be stored with the changes).
#[derive(Debug, Default)]
pub struct Plan {
    pub outcomes: Vec<Vec<Outcome>>,
    pub changes: Vec<Change>,
    pub next_ordinal: HashMap<u32, u32>,
    /// The batch's time: CreateTime and ModifyTime of what it writes, and its log entry's.
    pub time_ms: i64,
    /// Each request's changes: its app, its origin and its range of `changes` (the order
    /// of the jobs; what the change log records per request).
    pub requests: Vec<Planned>,
    /// The tags column of every user whose tags the batch changed or who it registered,
    /// as it stands after the whole batch (users it left unregistered are not here).
    pub rows: BTreeMap<(u32, i64), TagsRow>,
    /// Events each changed app's entry holds ([`crate::model::events::count`]), counted
    /// once when planned: the entry's `total` and the metric both read it.
    pub events: BTreeMap<u32, u64>,
}

/// One request of a plan, for its app's change log entry.
#[derive(Debug, Clone)]
pub struct Planned {
    pub app: u32,
    pub origin: crate::model::Origin,
    pub changes: std::ops::Range<usize>,
}

impl Plan {
    /// The apps the plan changes, each once, in the order they first appear.
    pub fn apps(&self) -> Vec<u32> {
        let mut out: Vec<u32> = Vec::new();
        for r in self.requests.iter().filter(|r| !r.changes.is_empty()) {
            if !out.contains(&r.app) {
                out.push(r.app);
            }
        }
        out
    }

    /// `app`'s change log entry: the body of its requests that changed something.
    pub fn entry(&self, app: u32) -> Vec<u8> {
        let parts: Vec<(&crate::model::Origin, &[Change])> = self
            .requests
            .iter()
            .filter(|r| r.app == app && !r.changes.is_empty())
            .map(|r| (&r.origin, &self.changes[r.changes.clone()]))
            .collect();
        crate::model::encode_entry(&parts)
    }

    /// How many events `app`'s entry holds.
    pub fn entry_events(&self, app: u32) -> u64 {
        self.events.get(&app).copied().unwrap_or(0)
    }

    /// How many events the plan's entries hold, all apps.
    pub fn events_total(&self) -> u64 {
        self.events.values().sum()
    }

    /// The tags the INSERT of `Registered { app, user, ordinal }` writes: the batch's final
    /// tags when this is the user's last registration in the batch, else none.
    pub fn tags_at_insert(&self, app: u32, user: i64, ordinal: u32) -> Option<&str> {
        self.rows
            .get(&(app, user))
            .filter(|row| row.registered_here && row.ordinal == ordinal)
            .map(|row| row.tags.as_str())
    }

    /// The rows whose tags no INSERT of the batch writes: (app, user, tags) to update.
    pub fn tags_to_update(&self) -> impl Iterator<Item = (u32, i64, &str)> {
        self.rows
            .iter()
            .filter(|(_, row)| !row.registered_here)
            .map(|((app, user), row)| (*app, *user, row.tags.as_str()))
    }
}

/// A user's tags after a batch, for the one row per user the stores keep.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TagsRow {
    /// The ordinal the user holds after the batch: a store writes the row with the
    /// registration that gave it, or updates the row when the batch registered none.
    pub ordinal: u32,
    /// Every inbox's tags, [`crate::model::tags_json`].
    pub tags: String,
    /// The batch registers the user with `ordinal`: that INSERT writes the tags
    /// ([`Plan::tags_at_insert`]); otherwise an UPDATE does ([`Plan::tags_to_update`]).
    pub registered_here: bool,
}

/// The requests of one batch, as the planner sees them.
pub(crate) struct Batch<'a> {
    pub(crate) jobs: &'a [WriteJob],
}

impl Batch<'_> {
    /// Every (app, user) the batch names, each once, sorted (the order locks are taken in).
    pub(crate) fn users(&self) -> Vec<(u32, i64)> {
        let mut out: Vec<(u32, i64)> = self
            .jobs
            .iter()
            .flat_map(|job| {
                let ids: Box<dyn Iterator<Item = i64>> = match &job.op {
                    WriteOp::Tags { entries, .. } => Box::new(entries.iter().map(|e| e.user_id)),
                    WriteOp::Register(users) => Box::new(users.iter().map(|u| u.user_id)),
                    WriteOp::UpdateUsers(users) => Box::new(users.iter().map(|u| u.user_id)),
                    WriteOp::Unregister(ids) => Box::new(ids.iter().copied()),
                };
                ids.map(move |u| (job.app_id, u))
            })
            .collect();
        out.sort_unstable();
        out.dedup();
        out
    }

    /// The apps whose next ordinal the plan may need, given what was read of the users:
    /// those where the batch registers a user that is not registered now, or registers
    /// and unregisters (a user unregistered then registered again in one batch gets a
    /// new ordinal). Sorted.
    pub(crate) fn needs_ordinals(&self, users: &HashMap<(u32, i64), UserState>) -> Vec<u32> {
        let unregisters: Vec<u32> = self
            .jobs
            .iter()
            .filter(|j| matches!(j.op, WriteOp::Unregister(_)))
            .map(|j| j.app_id)
            .collect();
        let mut apps: Vec<u32> = self
            .jobs
            .iter()
            .filter_map(|job| match &job.op {
                WriteOp::Register(regs) => {
                    let new = regs.iter().any(|r| {
                        users
                            .get(&(job.app_id, r.user_id))
                            .is_none_or(|s| s.ordinal.is_none())
                    });
                    (new || unregisters.contains(&job.app_id)).then_some(job.app_id)
                }
                _ => None,
            })
            .collect();
        apps.sort_unstable();
        apps.dedup();
        apps
    }
}

/// Plans `jobs` over `snapshot` with `cap` keys per user and inbox. `Err` only when the
/// snapshot lacks an app's next ordinal that the plan needs (a backend bug) or an app ran
/// out of ordinals.
pub(crate) fn plan(
    jobs: &[WriteJob],
    mut snapshot: Snapshot,
    cap: usize,
    time_ms: i64,
) -> Result<Plan, StoreError> {
    let mut plan = Plan {
        outcomes: Vec::with_capacity(jobs.len()),
        time_ms,
        ..Default::default()
    };
    for job in jobs {
        let app = job.app_id;
        let first = plan.changes.len();
        let outcomes = match &job.op {
            WriteOp::Tags { inbox, op, entries } => entries
                .iter()
                .map(|e| {
                    let state = snapshot.users.entry((app, e.user_id)).or_default();
                    let Some(ordinal) = state.ordinal else {
                        return Outcome::UserNotFound;
                    };
                    let at = Target {
                        app,
                        user: e.user_id,
                        ordinal,
                        inbox: *inbox,
                    };
                    match op {
                        TagOp::Upsert => upsert(state, at, &e.tags, cap, &mut plan.changes),
                        TagOp::Delete => {
                            delete(state, at, &e.tags, &mut plan.changes);
                            Outcome::Applied
                        }
                    }
                })
                .collect(),
            WriteOp::Register(users) => users
                .iter()
                .map(|u| register(&mut snapshot, &mut plan, app, u, cap))
                .collect::<Result<_, _>>()?,
            WriteOp::UpdateUsers(users) => users
                .iter()
                .map(|u| {
                    let state = snapshot.users.entry((app, u.user_id)).or_default();
                    update(state, app, u, cap, &mut plan.changes)
                })
                .collect(),
            WriteOp::Unregister(ids) => ids
                .iter()
                .map(|&user| {
                    let state = snapshot.users.entry((app, user)).or_default();
                    let Some(ordinal) = state.ordinal.take() else {
                        return Outcome::UserNotFound;
                    };
                    state.profile = Default::default();
                    let tags = std::mem::take(&mut state.tags)
                        .into_iter()
                        .map(|((i, k), v)| (i, k, v))
                        .collect();
                    plan.changes.push(Change::Unregistered {
                        app,
                        user,
                        ordinal,
                        tags,
                    });
                    Outcome::Applied
                })
                .collect(),
        };
        plan.outcomes.push(outcomes);
        plan.requests.push(Planned {
            app,
            origin: job.origin.clone(),
            changes: first..plan.changes.len(),
        });
    }
    for change in &plan.changes {
        let at = match change {
            Change::Registered { app, user, .. }
            | Change::SetTag { app, user, .. }
            | Change::DeleteTag { app, user, .. } => (*app, *user),
            Change::Profile { .. }
            | Change::Unregistered { .. }
            | Change::ProfileWas { .. }
            | Change::BroadcastSent { .. }
            | Change::BroadcastRecalled { .. } => continue,
        };
        if let Some(row) = plan.rows.get_mut(&at) {
            if let Change::Registered { ordinal, .. } = change {
                row.registered_here |= row.ordinal == *ordinal;
            }
            continue;
        }
        let state = &snapshot.users[&at];
        if let Some(final_ordinal) = state.ordinal {
            let registered_here =
                matches!(change, Change::Registered { ordinal, .. } if *ordinal == final_ordinal);
            plan.rows.insert(
                at,
                TagsRow {
                    ordinal: final_ordinal,
                    tags: crate::model::tags_json(&state.tags),
                    registered_here,
                },
            );
        }
    }
    for app in plan.apps() {
        let n = crate::model::events::count(
            plan.requests
                .iter()
                .filter(|r| r.app == app)
                .map(|r| &plan.changes[r.changes.clone()]),
        );
        plan.events.insert(app, n);
    }
    Ok(plan)
}

#[derive(Clone, Copy)]
struct Target {
    app: u32,
    user: i64,
    ordinal: u32,
    inbox: u32,
}

fn upsert(
    state: &mut UserState,
    at: Target,
    tags: &[Tag],
    cap: usize,
    out: &mut Vec<Change>,
) -> Outcome {
    let existing = state.keys_in(at.inbox);
    if existing + tags.len() > cap {
        // Decided on net-new keys only: overwrites never count.
        let mut net_new: Vec<&str> = tags
            .iter()
            .map(|(k, _)| k.as_str())
            .filter(|k| !state.tags.contains_key(&(at.inbox, (*k).to_owned())))
            .collect();
        net_new.sort_unstable();
        net_new.dedup();
        let would_have = existing + net_new.len();
        if would_have > cap {
            return Outcome::TagLimitExceeded {
                would_have,
                limit: cap,
            };
        }
    }
    for (k, v) in tags {
        // A key given the value it holds changes nothing: no write, no event (API.md §9).
        let old = state.tags.insert((at.inbox, k.clone()), v.clone());
        if old.as_ref() == Some(v) {
            continue;
        }
        out.push(Change::SetTag {
            app: at.app,
            user: at.user,
            ordinal: at.ordinal,
            inbox: at.inbox,
            key: k.clone(),
            old,
            value: v.clone(),
        });
    }
    Outcome::Applied
}

fn delete(state: &mut UserState, at: Target, tags: &[Tag], out: &mut Vec<Change>) {
    for (k, _) in tags {
        if let Some(old) = state.tags.remove(&(at.inbox, k.clone())) {
            out.push(Change::DeleteTag {
                app: at.app,
                user: at.user,
                ordinal: at.ordinal,
                inbox: at.inbox,
                key: k.clone(),
                old,
            });
        }
    }
}

fn register(
    snapshot: &mut Snapshot,
    plan: &mut Plan,
    app: u32,
    u: &UserRegistration,
    cap: usize,
) -> Result<Outcome, StoreError> {
    let state = snapshot.users.entry((app, u.user_id)).or_default();
    // The cap is checked before anything changes: a refused registration leaves no trace.
    let mut probe = state.clone();
    let placeholder = Target {
        app,
        user: u.user_id,
        ordinal: 0,
        inbox: DEFAULT_INBOX,
    };
    let outcome = upsert(&mut probe, placeholder, &u.tags, cap, &mut Vec::new());
    if outcome != Outcome::Applied {
        return Ok(outcome);
    }
    let ordinal = match state.ordinal {
        None => {
            let next = snapshot.next_ordinal.get_mut(&app).ok_or_else(|| {
                StoreError::internal(format!("no next ordinal was read for AppId {app}"))
            })?;
            let o = *next;
            *next = next.checked_add(1).ok_or_else(|| {
                StoreError::internal(format!(
                    "AppId {app} has used every one of its 2^32 user ordinals"
                ))
            })?;
            plan.next_ordinal.insert(app, *next);
            state.ordinal = Some(o);
            plan.changes.push(Change::Registered {
                app,
                user: u.user_id,
                ordinal: o,
            });
            // A new user's profile comes right after its registration (the stores write
            // both in one INSERT), whatever it holds.
            state.profile = Default::default();
            let given = Fields::of_registration(u);
            given.apply(&mut state.profile);
            plan.changes.push(given.change(app, u.user_id));
            o
        }
        Some(_) => {
            profile_change(
                state,
                app,
                u.user_id,
                Fields::of_registration(u),
                &mut plan.changes,
            );
            state.ordinal.expect("registered")
        }
    };
    let at = Target {
        ordinal,
        ..placeholder
    };
    upsert(state, at, &u.tags, cap, &mut plan.changes);
    Ok(Outcome::Applied)
}

/// The profile fields a write gives (`None`: not given).
#[derive(Clone, Copy)]
struct Fields<'a> {
    nick_name: Option<&'a String>,
    portrait: Option<&'a String>,
    ext: Option<&'a BTreeMap<String, String>>,
    is_robot: Option<bool>,
}

impl<'a> Fields<'a> {
    fn of_registration(u: &'a UserRegistration) -> Self {
        Fields {
            nick_name: u.nick_name.as_ref(),
            portrait: u.portrait.as_ref(),
            ext: u.ext.as_ref(),
            is_robot: u.is_robot,
        }
    }

    /// Only the fields that differ from `p`.
    fn differing(self, p: &Profile) -> Self {
        Fields {
            nick_name: self.nick_name.filter(|n| **n != p.nick_name),
            portrait: self.portrait.filter(|x| **x != p.portrait),
            ext: self.ext.filter(|e| **e != p.ext),
            is_robot: self.is_robot.filter(|r| *r != p.is_robot),
        }
    }

    fn is_empty(&self) -> bool {
        self.nick_name.is_none()
            && self.portrait.is_none()
            && self.ext.is_none()
            && self.is_robot.is_none()
    }

    fn apply(&self, p: &mut Profile) {
        p.set(self.nick_name, self.portrait, self.ext, self.is_robot);
    }

    fn change(&self, app: u32, user: i64) -> Change {
        Change::Profile {
            app,
            user,
            nick_name: self.nick_name.cloned(),
            portrait: self.portrait.cloned(),
            ext: self.ext.cloned(),
            is_robot: self.is_robot,
        }
    }
}

/// A registered user's profile write: the fields that change, their old values first
/// (`ProfileWas`, for the event's `Previous`) then the new ones; nothing when none
/// changes (API.md §9: a write that changes nothing appends no event).
fn profile_change(
    state: &mut UserState,
    app: u32,
    user: i64,
    given: Fields,
    out: &mut Vec<Change>,
) {
    let new = given.differing(&state.profile);
    if new.is_empty() {
        return;
    }
    let p = &state.profile;
    out.push(Change::ProfileWas {
        app,
        user,
        nick_name: new.nick_name.map(|_| p.nick_name.clone()),
        portrait: new.portrait.map(|_| p.portrait.clone()),
        ext: new.ext.map(|_| p.ext.clone()),
        is_robot: new.is_robot.map(|_| p.is_robot),
    });
    out.push(new.change(app, user));
    new.apply(&mut state.profile);
}

/// BatchUpdateUser for one user. The new inbox-0 set is decided, and checked against the
/// cap, before anything changes: a refused entry leaves no trace, profile fields included.
fn update(
    state: &mut UserState,
    app: u32,
    u: &UserUpdate,
    cap: usize,
    out: &mut Vec<Change>,
) -> Outcome {
    let Some(ordinal) = state.ordinal else {
        return Outcome::UserNotFound;
    };
    // A key listed twice keeps its last value, as a second upsert of it would.
    let new_tags: Option<BTreeMap<&str, &str>> = u
        .tags
        .as_ref()
        .map(|tags| tags.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect());
    if let Some(new) = &new_tags
        && new.len() > cap
    {
        // A replace leaves exactly the listed keys, so their number is what counts.
        return Outcome::TagLimitExceeded {
            would_have: new.len(),
            limit: cap,
        };
    }
    let given = Fields {
        nick_name: u.nick_name.as_ref(),
        portrait: u.portrait.as_ref(),
        ext: u.ext.as_ref(),
        is_robot: u.is_robot,
    };
    profile_change(state, app, u.user_id, given, out);
    let Some(new) = new_tags else {
        return Outcome::Applied;
    };
    let at = Target {
        app,
        user: u.user_id,
        ordinal,
        inbox: DEFAULT_INBOX,
    };
    let gone: Vec<Tag> = state
        .tags
        .range((DEFAULT_INBOX, String::new())..)
        .take_while(|((i, _), _)| *i == DEFAULT_INBOX)
        .filter(|((_, k), _)| !new.contains_key(k.as_str()))
        .map(|((_, k), _)| (k.clone(), String::new()))
        .collect();
    delete(state, at, &gone, out);
    let set: Vec<Tag> = new
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    // Within the cap by the check above: what is left of the inbox is a subset of `set`.
    let outcome = upsert(state, at, &set, cap, out);
    debug_assert_eq!(outcome, Outcome::Applied);
    outcome
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::TagEntry;

    fn job(app_id: u32, op: WriteOp) -> WriteJob {
        let (reply, _) = tokio::sync::oneshot::channel();
        WriteJob {
            app_id,
            op,
            origin: Default::default(),
            reply,
        }
    }

    fn tags(pairs: &[(&str, &str)]) -> Vec<Tag> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn registered(ordinal: u32, t: &[(u32, &str, &str)]) -> UserState {
        UserState {
            ordinal: Some(ordinal),
            tags: t
                .iter()
                .map(|(i, k, v)| ((*i, k.to_string()), v.to_string()))
                .collect(),
            profile: Default::default(),
        }
    }

    #[test]
    fn the_cap_counts_only_net_new_keys_and_a_refused_entry_changes_nothing() {
        let mut snap = Snapshot::default();
        snap.users
            .insert((1, 7), registered(0, &[(0, "a", "1"), (0, "b", "1")]));
        let jobs = [job(
            1,
            WriteOp::Tags {
                inbox: 0,
                op: TagOp::Upsert,
                entries: vec![
                    TagEntry {
                        user_id: 7,
                        tags: tags(&[("a", "2"), ("c", "1")]),
                    },
                    TagEntry {
                        user_id: 7,
                        tags: tags(&[("d", "1")]),
                    },
                    TagEntry {
                        user_id: 8,
                        tags: tags(&[("a", "1")]),
                    },
                ],
            },
        )];
        let plan = plan(&jobs, snap, 3, 0).unwrap();
        assert_eq!(
            plan.outcomes[0],
            vec![
                Outcome::Applied,
                Outcome::TagLimitExceeded {
                    would_have: 4,
                    limit: 3
                },
                Outcome::UserNotFound
            ]
        );
        assert_eq!(plan.changes.len(), 2);
        assert!(
            matches!(&plan.changes[0], Change::SetTag { key, old: Some(o), value, .. } if key == "a" && o == "1" && value == "2")
        );
    }

    #[test]
    fn unregister_then_register_in_one_batch_gets_a_new_ordinal() {
        let mut snap = Snapshot::default();
        snap.users
            .insert((1, 7), registered(4, &[(0, "a", "1"), (3, "b", "2")]));
        snap.next_ordinal.insert(1, 9);
        let jobs = [
            job(1, WriteOp::Unregister(vec![7, 7])),
            job(
                1,
                WriteOp::Register(vec![UserRegistration {
                    user_id: 7,
                    tags: tags(&[("x", "")]),
                    ..Default::default()
                }]),
            ),
        ];
        let p = plan(&jobs, snap, 100, 0).unwrap();
        assert_eq!(
            p.outcomes,
            vec![
                vec![Outcome::Applied, Outcome::UserNotFound],
                vec![Outcome::Applied]
            ]
        );
        assert!(
            matches!(&p.changes[0], Change::Unregistered { ordinal: 4, tags, .. } if tags.len() == 2)
        );
        assert!(matches!(
            &p.changes[1],
            Change::Registered { ordinal: 9, .. }
        ));
        assert_eq!(p.next_ordinal[&1], 10);
        // One row per user: the new registration's INSERT writes the tags the batch ends
        // with, and no UPDATE follows.
        assert_eq!(p.tags_at_insert(1, 7, 9), Some(r#"{"0":{"x":""}}"#));
        assert_eq!(p.tags_at_insert(1, 7, 4), None);
        assert_eq!(p.tags_to_update().count(), 0);
    }

    #[test]
    fn a_registered_users_tags_are_one_update_of_its_row_as_the_batch_leaves_them() {
        let mut snap = Snapshot::default();
        snap.users.insert((1, 7), registered(0, &[(0, "a", "1")]));
        let set = |t: &[(&str, &str)], op| {
            job(
                1,
                WriteOp::Tags {
                    inbox: 2,
                    op,
                    entries: vec![TagEntry {
                        user_id: 7,
                        tags: tags(t),
                    }],
                },
            )
        };
        let jobs = [
            set(&[("b", "1"), ("c", "1")], TagOp::Upsert),
            set(&[("c", "")], TagOp::Delete),
        ];
        let p = plan(&jobs, snap, 100, 0).unwrap();
        assert_eq!(p.changes.len(), 3);
        assert_eq!(
            p.tags_to_update().collect::<Vec<_>>(),
            vec![(1, 7, r#"{"0":{"a":"1"},"2":{"b":"1"}}"#)]
        );
        assert_eq!(p.tags_at_insert(1, 7, 0), None);
    }

    #[test]
    fn a_registration_over_the_cap_neither_registers_nor_spends_an_ordinal() {
        let mut snap = Snapshot::default();
        snap.next_ordinal.insert(1, 0);
        let jobs = [job(
            1,
            WriteOp::Register(vec![UserRegistration {
                user_id: 7,
                tags: tags(&[("a", ""), ("b", "")]),
                ..Default::default()
            }]),
        )];
        let p = plan(&jobs, snap, 1, 0).unwrap();
        assert_eq!(
            p.outcomes[0],
            vec![Outcome::TagLimitExceeded {
                would_have: 2,
                limit: 1
            }]
        );
        assert!(p.changes.is_empty() && p.next_ordinal.is_empty());
    }

    fn update(user_id: i64, t: Option<&[(&str, &str)]>) -> UserUpdate {
        UserUpdate {
            user_id,
            tags: t.map(tags),
            ..Default::default()
        }
    }

    #[test]
    fn update_replaces_inbox_0_tags_only_and_changes_only_the_given_fields() {
        let mut snap = Snapshot::default();
        snap.users.insert(
            (1, 7),
            registered(5, &[(0, "a", "1"), (0, "b", "1"), (3, "a", "x")]),
        );
        let jobs = [job(
            1,
            WriteOp::UpdateUsers(vec![
                UserUpdate {
                    nick_name: Some("n".into()),
                    ..update(7, Some(&[("b", "2"), ("c", "1")]))
                },
                update(7, None),
            ]),
        )];
        let p = plan(&jobs, snap, 100, 0).unwrap();
        assert_eq!(p.outcomes, vec![vec![Outcome::Applied, Outcome::Applied]]);
        let profile = |nick_name: Option<&str>| Change::Profile {
            app: 1,
            user: 7,
            nick_name: nick_name.map(str::to_owned),
            portrait: None,
            ext: None,
            is_robot: None,
        };
        let set = |key: &str, old: Option<&str>, value: &str| Change::SetTag {
            app: 1,
            user: 7,
            ordinal: 5,
            inbox: 0,
            key: key.into(),
            old: old.map(str::to_owned),
            value: value.into(),
        };
        assert_eq!(
            p.changes,
            vec![
                // The old value of the one field that changes, for the event's Previous.
                Change::ProfileWas {
                    app: 1,
                    user: 7,
                    nick_name: Some(String::new()),
                    portrait: None,
                    ext: None,
                    is_robot: None,
                },
                profile(Some("n")),
                Change::DeleteTag {
                    app: 1,
                    user: 7,
                    ordinal: 5,
                    inbox: 0,
                    key: "a".into(),
                    old: "1".into(),
                },
                set("b", Some("1"), "2"),
                set("c", None, "1"),
                // The second entry gives no field and no Tags: it changes nothing and
                // writes nothing (no ModifyTime, no event).
            ]
        );
        assert!(p.next_ordinal.is_empty());
    }

    #[test]
    fn update_over_the_cap_or_of_an_unregistered_user_changes_nothing() {
        let mut snap = Snapshot::default();
        snap.users.insert((1, 7), registered(0, &[(0, "a", "1")]));
        let jobs = [job(
            1,
            WriteOp::UpdateUsers(vec![
                UserUpdate {
                    nick_name: Some("refused".into()),
                    ..update(7, Some(&[("x", ""), ("y", ""), ("z", "")]))
                },
                update(8, Some(&[])),
                // Three strings but two keys: within a cap of 2 (the last value wins).
                update(7, Some(&[("k", "1"), ("l", ""), ("k", "2")])),
            ]),
        )];
        let p = plan(&jobs, snap, 2, 0).unwrap();
        assert_eq!(
            p.outcomes[0],
            vec![
                Outcome::TagLimitExceeded {
                    would_have: 3,
                    limit: 2
                },
                Outcome::UserNotFound,
                Outcome::Applied,
            ]
        );
        // Only the third entry's changes (it gives no profile field): the delete of a, k=2
        // and l.
        assert_eq!(p.changes.len(), 3, "{:?}", p.changes);
        assert!(matches!(&p.changes[0], Change::DeleteTag { key, .. } if key == "a"));
        assert!(
            matches!(&p.changes[1], Change::SetTag { key, value, .. } if key == "k" && value == "2")
        );
        assert!(matches!(&p.changes[2], Change::SetTag { key, .. } if key == "l"));
    }

    #[test]
    fn update_sees_earlier_requests_of_its_batch_and_lists_its_users() {
        let mut snap = Snapshot::default();
        snap.users.insert((1, 7), registered(0, &[(0, "a", "1")]));
        snap.next_ordinal.insert(1, 1);
        let jobs = [
            job(1, WriteOp::Unregister(vec![7])),
            job(1, WriteOp::UpdateUsers(vec![update(7, Some(&[]))])),
            job(
                1,
                WriteOp::Register(vec![UserRegistration {
                    user_id: 9,
                    tags: tags(&[("r", "1")]),
                    ..Default::default()
                }]),
            ),
            // An empty list empties inbox 0 of a user registered earlier in the batch.
            job(1, WriteOp::UpdateUsers(vec![update(9, Some(&[]))])),
        ];
        assert_eq!(Batch { jobs: &jobs }.users(), vec![(1, 7), (1, 9)]);
        let p = plan(&jobs, snap, 100, 0).unwrap();
        assert_eq!(
            p.outcomes,
            vec![
                vec![Outcome::Applied],
                vec![Outcome::UserNotFound],
                vec![Outcome::Applied],
                vec![Outcome::Applied]
            ]
        );
        assert!(matches!(
            p.changes.last(),
            Some(Change::DeleteTag { user: 9, key, old, .. }) if key == "r" && old == "1"
        ));
    }
}
