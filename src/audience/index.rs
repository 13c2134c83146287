//! The in-memory state every read answers from: per app, each registered user (its id,
//! times, profile and tags of every inbox, with keys and values interned), the user id ->
//! ordinal map, the next ordinal, and the bitmaps of the audience index (registered
//! ordinals, and per (inbox, key) and (inbox, key, value) the users holding them). It
//! changes only through [`Change`]s the planner produced for a committed transaction,
//! applied one app at a time under that app's write lock (a reader sees a batch's changes
//! of an app all or none), so it can never disagree with what was committed.
//!
//! Positions: both stores number each app's committed changes (its change log) and each
//! app here holds the last position it applied. The PostgreSQL follower applies entries
//! strictly in order ([`AudienceIndex::apply_at`]) and queries wait until their app has
//! reached the head they read ([`AudienceIndex::subscribe`] wakes on every apply); the
//! embedded store's single writer applies after each commit.

use std::collections::HashMap;

use rustc_hash::FxHashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};

use roaring::RoaringBitmap;
use tokio::sync::watch;

use super::filter::{self, Bitmaps, Filter};
use super::strings::Strings;
use crate::model::{Change, StoredUser, UserState};

#[derive(Clone, Default)]
pub(super) struct KeyIndex {
    pub(super) any: RoaringBitmap,
    /// Value id -> the users with that value.
    pub(super) values: FxHashMap<u32, RoaringBitmap>,
}

#[derive(Clone, Default)]
pub(super) struct InboxIndex {
    /// Key id -> its bitmaps.
    pub(super) keys: FxHashMap<u32, KeyIndex>,
}

pub use crate::model::Profile;

/// One tag of a user: interned key and value ids.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct TagRef {
    pub(super) inbox: u32,
    pub(super) key: u32,
    pub(super) value: u32,
}

/// What an ordinal holds: a registered user, or (id 0) an ordinal no longer in use.
#[derive(Clone, Debug, Default)]
pub(super) struct Slot {
    pub(super) id: i64,
    pub(super) created_ms: i64,
    pub(super) modified_ms: i64,
    pub(super) profile: Option<Box<Profile>>,
    /// Sorted by (inbox, key id).
    pub(super) tags: Vec<TagRef>,
}

impl Slot {
    fn find(&self, inbox: u32, key: u32) -> Result<usize, usize> {
        self.tags
            .binary_search_by(|t| (t.inbox, t.key).cmp(&(inbox, key)))
    }
}

/// A registered user as reads see it, borrowed from its app's state: its tags of one
/// inbox, sorted by key.
#[derive(Clone)]
pub struct UserView<'a> {
    slot: &'a Slot,
    tags: Vec<(&'a str, &'a str)>,
}

impl<'a> UserView<'a> {
    pub fn user_id(&self) -> i64 {
        self.slot.id
    }
    pub fn create_time_ms(&self) -> i64 {
        self.slot.created_ms
    }
    pub fn modify_time_ms(&self) -> i64 {
        self.slot.modified_ms
    }
    /// The profile, `None` when every field has its default.
    pub fn profile(&self) -> Option<&'a Profile> {
        self.slot.profile.as_deref()
    }
    /// (key, value) of the inbox asked for, sorted by key (byte order).
    pub fn tags(&self) -> &[(&'a str, &'a str)] {
        &self.tags
    }

    pub fn to_owned(&self) -> StoredUser {
        let p = self.profile();
        StoredUser {
            user_id: self.slot.id,
            nick_name: p.map(|p| p.nick_name.clone()).unwrap_or_default(),
            portrait: p.map(|p| p.portrait.clone()).unwrap_or_default(),
            ext: p.map(|p| p.ext.clone()).unwrap_or_default(),
            is_robot: p.is_some_and(|p| p.is_robot),
            create_time_ms: self.slot.created_ms,
            modify_time_ms: self.slot.modified_ms,
            tags: self
                .tags
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        }
    }
}

/// One app's part of the state.
#[derive(Clone, Default)]
pub struct AppIndex {
    pub(super) registered: RoaringBitmap,
    /// Ordinal -> user.
    pub(super) users: Vec<Slot>,
    /// User id -> ordinal, for registered users.
    pub(super) by_id: FxHashMap<i64, u32>,
    /// The ordinal the next registration takes.
    pub(super) next_ordinal: u32,
    pub(super) strings: Strings,
    pub(super) inboxes: FxHashMap<u32, InboxIndex>,
    /// The app's last change log position applied, and that entry's time (a saved state
    /// names the entry it ends at, so a start can check the log still has it).
    pub(super) log_pos: u64,
    pub(super) log_time_ms: i64,
}

struct View<'a> {
    app: &'a AppIndex,
    inbox: Option<&'a InboxIndex>,
}

impl Bitmaps for View<'_> {
    fn registered(&self) -> &RoaringBitmap {
        &self.app.registered
    }
    fn tag(&self, key: &str, value: &str) -> Option<&RoaringBitmap> {
        let strings = &self.app.strings;
        let (k, v) = (strings.find(key)?, strings.find(value)?);
        self.inbox?.keys.get(&k)?.values.get(&v)
    }
    fn key(&self, key: &str) -> Option<&RoaringBitmap> {
        Some(&self.inbox?.keys.get(&self.app.strings.find(key)?)?.any)
    }
}

impl AppIndex {
    fn view(&self, inbox: u32) -> View<'_> {
        View {
            app: self,
            inbox: self.inboxes.get(&inbox),
        }
    }

    fn slot_mut(&mut self, ordinal: u32) -> &mut Slot {
        let at = ordinal as usize;
        if self.users.len() <= at {
            self.users.resize_with(at + 1, Slot::default);
        }
        &mut self.users[at]
    }

    /// Tag `key` of `ordinal` in `inbox` is now `value`.
    fn set(&mut self, inbox: u32, key: &str, value: &str, ordinal: u32) {
        let v = self.strings.acquire(value);
        let k = self.strings.acquire(key);
        let at = ordinal as usize;
        if self.users.len() <= at {
            self.users.resize_with(at + 1, Slot::default);
        }
        let slot = &mut self.users[at];
        let old = match slot.find(inbox, k) {
            Ok(i) => {
                let old = std::mem::replace(&mut slot.tags[i].value, v);
                // The slot held the key already: one reference is enough.
                self.strings.release(k);
                Some(old)
            }
            Err(i) => {
                slot.tags.insert(
                    i,
                    TagRef {
                        inbox,
                        key: k,
                        value: v,
                    },
                );
                None
            }
        };
        let keys = &mut self.inboxes.entry(inbox).or_default().keys;
        let ki = keys.entry(k).or_default();
        if let Some(old) = old {
            remove_value(ki, old, ordinal);
            self.strings.release(old);
        }
        add(&mut ki.any, ordinal);
        add(ki.values.entry(v).or_default(), ordinal);
    }

    /// Removes the tag (inbox, key id) at position `i` of the slot of `ordinal`.
    fn unindex(&mut self, t: TagRef, ordinal: u32) {
        if let Some(inbox) = self.inboxes.get_mut(&t.inbox)
            && let Some(k) = inbox.keys.get_mut(&t.key)
        {
            remove_value(k, t.value, ordinal);
            k.any.remove(ordinal);
            if k.any.is_empty() {
                inbox.keys.remove(&t.key);
            }
        }
        self.strings.release(t.key);
        self.strings.release(t.value);
    }

    fn delete(&mut self, inbox: u32, key: &str, ordinal: u32) {
        let Some(k) = self.strings.find(key) else {
            return;
        };
        let Some(slot) = self.users.get_mut(ordinal as usize) else {
            return;
        };
        let Ok(i) = slot.find(inbox, k) else {
            return;
        };
        let t = slot.tags.remove(i);
        self.unindex(t, ordinal);
    }

    fn register(&mut self, user: i64, ordinal: u32, time_ms: i64) {
        add(&mut self.registered, ordinal);
        *self.slot_mut(ordinal) = Slot {
            id: user,
            created_ms: time_ms,
            modified_ms: time_ms,
            ..Slot::default()
        };
        self.by_id.insert(user, ordinal);
        self.next_ordinal = self.next_ordinal.max(ordinal.saturating_add(1));
    }

    fn apply(&mut self, change: &Change, time_ms: i64) {
        match change {
            Change::Registered { user, ordinal, .. } => self.register(*user, *ordinal, time_ms),
            Change::Profile {
                user,
                nick_name,
                portrait,
                ext,
                is_robot,
                ..
            } => {
                let Some(&ordinal) = self.by_id.get(user) else {
                    return;
                };
                let slot = &mut self.users[ordinal as usize];
                slot.modified_ms = time_ms;
                if nick_name.is_none() && portrait.is_none() && ext.is_none() && is_robot.is_none()
                {
                    return;
                }
                let p = slot.profile.get_or_insert_default();
                p.set(
                    nick_name.as_ref(),
                    portrait.as_ref(),
                    ext.as_ref(),
                    *is_robot,
                );
                if **p == Profile::default() {
                    slot.profile = None;
                }
            }
            Change::SetTag {
                ordinal,
                inbox,
                key,
                value,
                ..
            } => self.set(*inbox, key, value, *ordinal),
            Change::DeleteTag {
                ordinal,
                inbox,
                key,
                ..
            } => self.delete(*inbox, key, *ordinal),
            Change::ProfileWas { .. }
            | Change::BroadcastSent { .. }
            | Change::BroadcastRecalled { .. } => {}
            Change::Unregistered { user, ordinal, .. } => {
                if let Some(slot) = self.users.get_mut(*ordinal as usize) {
                    let slot = std::mem::take(slot);
                    for t in slot.tags {
                        self.unindex(t, *ordinal);
                    }
                }
                self.registered.remove(*ordinal);
                self.by_id.remove(user);
            }
        }
    }

    /// The change log position this state holds (embedded), with that entry's time.
    pub fn log_head(&self) -> (u64, i64) {
        (self.log_pos, self.log_time_ms)
    }

    /// Applies one change log entry of this app (a replay at start).
    pub fn apply_entry(&mut self, changes: &[Change], time_ms: i64, pos: u64) {
        for c in changes {
            self.apply(c, time_ms);
        }
        self.log_pos = pos;
        self.log_time_ms = time_ms;
    }

    /// The registered user at `ordinal` as a read sees it, with its tags of `inbox`.
    fn user_view(&self, ordinal: u32, inbox: u32) -> Option<UserView<'_>> {
        let slot = self.users.get(ordinal as usize).filter(|s| s.id != 0)?;
        let mut tags: Vec<(&str, &str)> = Vec::with_capacity(slot.tags.len());
        tags.extend(
            slot.tags
                .iter()
                .filter(|t| t.inbox == inbox)
                .map(|t| (self.strings.get(t.key), self.strings.get(t.value))),
        );
        // Keys are unique within an inbox: sorting by key alone is the answer's order.
        tags.sort_unstable_by(|a, b| a.0.cmp(b.0));
        Some(UserView { slot, tags })
    }

    /// The user's state as the planner needs it (unregistered: the default).
    fn user_state(&self, user: i64) -> UserState {
        let Some(&ordinal) = self.by_id.get(&user) else {
            return UserState::default();
        };
        let slot = &self.users[ordinal as usize];
        UserState {
            ordinal: Some(ordinal),
            tags: slot
                .tags
                .iter()
                .map(|t| {
                    (
                        (t.inbox, self.strings.get(t.key).to_owned()),
                        self.strings.get(t.value).to_owned(),
                    )
                })
                .collect(),
            profile: slot.profile.as_deref().cloned().unwrap_or_default(),
        }
    }

    fn bitmap_count(&self) -> usize {
        1 + self
            .inboxes
            .values()
            .flat_map(|i| i.keys.values())
            .map(|k| 1 + k.values.len())
            .sum::<usize>()
    }

    /// Bytes held by the users' part of the state (bitmaps not counted): slots, tags,
    /// profiles, the id map and the strings. An estimate from capacities.
    fn state_bytes(&self) -> usize {
        let slots = self.users.capacity() * std::mem::size_of::<Slot>();
        let tags: usize = self
            .users
            .iter()
            .map(|s| {
                s.tags.capacity() * std::mem::size_of::<TagRef>()
                    + s.profile.as_ref().map_or(0, |p| {
                        std::mem::size_of::<Profile>()
                            + p.nick_name.capacity()
                            + p.portrait.capacity()
                            + p.ext
                                .iter()
                                .map(|(k, v)| 48 + k.len() + v.len())
                                .sum::<usize>()
                    })
            })
            .sum();
        let by_id = self.by_id.capacity() * (std::mem::size_of::<(i64, u32)>() + 1);
        slots + tags + by_id + self.strings.heap_bytes()
    }

    fn bitmap_bytes(&self) -> usize {
        self.registered.serialized_size()
            + self
                .inboxes
                .values()
                .flat_map(|i| i.keys.values())
                .map(|k| {
                    k.any.serialized_size()
                        + k.values
                            .values()
                            .map(|b| b.serialized_size() + 40)
                            .sum::<usize>()
                        + 40
                })
                .sum::<usize>()
    }
}

/// Adds `ordinal`. An insert, not `try_push` first: on a dense (bitmap) container
/// `try_push` looks for the current maximum by scanning the container's words from the
/// end, which made a tag write on a large app cost a thousand instructions per bitmap,
/// while an insert is one bit (and, appending to an array container, one push).
fn add(b: &mut RoaringBitmap, ordinal: u32) {
    b.insert(ordinal);
}

fn remove_value(k: &mut KeyIndex, value: u32, ordinal: u32) {
    if let Some(b) = k.values.get_mut(&value) {
        b.remove(ordinal);
        if b.is_empty() {
            k.values.remove(&value);
        }
    }
}

/// One page of an audience.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page {
    pub user_ids: Vec<i64>,
    /// The ordinal to continue after, when more may follow.
    pub next: Option<u32>,
}

/// The index of every app (each with the log position it holds).
pub struct AudienceIndex {
    apps: RwLock<HashMap<u32, Arc<RwLock<AppIndex>>>>,
    /// Bumped after every apply and replace: waiters re-check their app's position.
    applied: watch::Sender<u64>,
    built: AtomicBool,
    /// Change log entries lately expanded into events (the event log's readers).
    pub decoded: crate::model::events::Decoded,
}

impl Default for AudienceIndex {
    fn default() -> Self {
        AudienceIndex {
            apps: RwLock::default(),
            applied: watch::Sender::new(0),
            built: AtomicBool::new(false),
            decoded: Default::default(),
        }
    }
}

impl AudienceIndex {
    pub fn new() -> Self {
        Self::default()
    }

    fn app(&self, app: u32) -> Option<Arc<RwLock<AppIndex>>> {
        self.apps.read().expect("index lock").get(&app).cloned()
    }

    /// Every app's handle, taken under the map's lock and released before any app's lock
    /// is taken.
    fn handles(&self) -> Vec<(u32, Arc<RwLock<AppIndex>>)> {
        self.apps
            .read()
            .expect("index lock")
            .iter()
            .map(|(k, v)| (*k, v.clone()))
            .collect()
    }

    fn app_or_insert(&self, app: u32) -> Arc<RwLock<AppIndex>> {
        if let Some(a) = self.app(app) {
            return a;
        }
        self.apps
            .write()
            .expect("index lock")
            .entry(app)
            .or_default()
            .clone()
    }

    /// Applies committed changes in order, each app's under one write lock; `time_ms` is
    /// the time their transaction wrote (CreateTime and ModifyTime).
    pub fn apply(&self, changes: &[Change], time_ms: i64) {
        self.apply_logged(changes, time_ms, &[]);
    }

    /// [`AudienceIndex::apply`], recording each app's new change log position under the
    /// same lock (embedded: `heads` as the writer appended them).
    pub fn apply_logged(&self, changes: &[Change], time_ms: i64, heads: &[(u32, u64)]) {
        let mut i = 0;
        while i < changes.len() {
            let app = changes[i].app();
            let end = changes[i..]
                .iter()
                .position(|c| c.app() != app)
                .map_or(changes.len(), |n| i + n);
            let index = self.app_or_insert(app);
            let mut index = index.write().expect("index lock");
            for c in &changes[i..end] {
                index.apply(c, time_ms);
            }
            if let Some(&(_, pos)) = heads.iter().find(|(a, _)| *a == app) {
                index.log_pos = pos;
                index.log_time_ms = time_ms;
            }
            i = end;
        }
        if !heads.is_empty() {
            // Long-polling readers of the event log wait for this (API.md §9).
            self.applied.send_modify(|g| *g += 1);
        }
    }

    /// Applies the changes of the app's log position `pos` if it is that app's next one;
    /// returns whether it was applied (`false`: already applied, or a gap the caller must
    /// fill first).
    pub fn apply_at(&self, app: u32, pos: u64, changes: &[Change], time_ms: i64) -> bool {
        {
            let index = self.app_or_insert(app);
            let mut index = index.write().expect("index lock");
            if pos != index.log_pos + 1 {
                return false;
            }
            index.apply_entry(changes, time_ms, pos);
        }
        self.applied.send_modify(|g| *g += 1);
        true
    }

    /// Replaces the whole index with `apps` (a build, a rebuild, a loaded snapshot).
    pub fn replace(&self, apps: HashMap<u32, AppIndex>) {
        *self.apps.write().expect("index lock") = apps
            .into_iter()
            .map(|(k, v)| (k, Arc::new(RwLock::new(v))))
            .collect();
        // Built before waiters are woken: they check it.
        self.built.store(true, Ordering::Release);
        self.applied.send_modify(|g| *g += 1);
    }

    /// Wakes after every apply and replace.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.applied.subscribe()
    }

    /// Waits, at most `limit`, for the index to be built; whether it is.
    pub async fn wait_built(&self, limit: std::time::Duration) -> bool {
        let mut rx = self.applied.subscribe();
        let built = rx.wait_for(|_| self.is_built());
        self.is_built() || matches!(tokio::time::timeout(limit, built).await, Ok(Ok(_)))
    }

    /// Whether the index has been built since the start.
    pub fn is_built(&self) -> bool {
        self.built.load(Ordering::Acquire)
    }

    /// Every ordinal `f` selects now (a broadcast's frozen audience).
    pub fn select(&self, app: u32, inbox: u32, f: &Filter) -> RoaringBitmap {
        match self.app(app) {
            None => RoaringBitmap::new(),
            Some(a) => filter::evaluate(f, &a.read().expect("index lock").view(inbox)),
        }
    }

    /// The user ids of `ordinals`, skipping those no longer registered.
    pub fn user_ids(&self, app: u32, ordinals: &[u32]) -> Vec<i64> {
        let Some(a) = self.app(app) else {
            return Vec::new();
        };
        let a = a.read().expect("index lock");
        ordinals
            .iter()
            .filter_map(|&o| a.users.get(o as usize).map(|s| s.id).filter(|&u| u != 0))
            .collect()
    }

    /// Calls `f` with the users `user_ids` names, in that order (`None` for one not
    /// registered), borrowed from the state under the app's read lock: a read serializes
    /// its answer straight from the state, copying nothing.
    pub fn with_users<T>(
        &self,
        app: u32,
        inbox: u32,
        user_ids: &[i64],
        f: impl FnOnce(&[Option<UserView<'_>>]) -> T,
    ) -> T {
        let Some(a) = self.app(app) else {
            return f(&vec![None; user_ids.len()]);
        };
        let a = a.read().expect("index lock");
        let users: Vec<Option<UserView<'_>>> = user_ids
            .iter()
            .map(|id| a.user_view(*a.by_id.get(id)?, inbox))
            .collect();
        f(&users)
    }

    /// The users `user_ids` names, in that order (`None` for one not registered), with
    /// their tags of `inbox`, as owned values.
    pub fn get_users(&self, app: u32, inbox: u32, user_ids: &[i64]) -> Vec<Option<StoredUser>> {
        self.with_users(app, inbox, user_ids, |users| {
            users
                .iter()
                .map(|u| u.as_ref().map(UserView::to_owned))
                .collect()
        })
    }

    /// The app's last applied change log position (0: none).
    pub fn log_pos(&self, app: u32) -> u64 {
        self.app(app)
            .map_or(0, |a| a.read().expect("index lock").log_pos)
    }

    /// Each app's change log position.
    pub fn positions(&self) -> Vec<(u32, u64)> {
        self.handles()
            .into_iter()
            .map(|(app, a)| (app, a.read().expect("index lock").log_pos))
            .collect()
    }

    /// A copy of each app's state, each taken under its read lock (a periodic snapshot
    /// writes the copies without holding anything).
    pub fn copy_apps(&self) -> Vec<(u32, AppIndex)> {
        self.handles()
            .into_iter()
            .map(|(app, a)| (app, a.read().expect("index lock").clone()))
            .collect()
    }

    /// The user's ordinal, if registered.
    pub fn ordinal(&self, app: u32, user: i64) -> Option<u32> {
        let a = self.app(app)?;
        let a = a.read().expect("index lock");
        a.by_id.get(&user).copied()
    }

    /// What the planner reads for `users` (sorted by app): each one's state, and the next
    /// ordinal of every app among `apps`.
    pub fn planner_state(
        &self,
        users: &[(u32, i64)],
        apps: impl Fn(&HashMap<(u32, i64), UserState>) -> Vec<u32>,
    ) -> (HashMap<(u32, i64), UserState>, HashMap<u32, u32>) {
        let mut states = HashMap::with_capacity(users.len());
        for group in users.chunk_by(|a, b| a.0 == b.0) {
            let app = group[0].0;
            let Some(a) = self.app(app) else {
                continue;
            };
            let a = a.read().expect("index lock");
            for &(_, user) in group {
                let s = a.user_state(user);
                if s.ordinal.is_some() {
                    states.insert((app, user), s);
                }
            }
        }
        let next = apps(&states)
            .into_iter()
            .map(|app| {
                let n = self
                    .app(app)
                    .map_or(0, |a| a.read().expect("index lock").next_ordinal);
                (app, n)
            })
            .collect();
        (states, next)
    }

    /// Raises the apps' next ordinals to what a committed plan stored.
    pub fn set_next_ordinals(&self, next: &HashMap<u32, u32>) {
        for (&app, &n) in next {
            let a = self.app_or_insert(app);
            let mut a = a.write().expect("index lock");
            a.next_ordinal = a.next_ordinal.max(n);
        }
    }

    /// ListTags (API.md §10): the keys of `inbox` with how many users have each and how
    /// many distinct values it has, most users first, then by key; at most `limit`.
    pub fn tag_keys(&self, app: u32, inbox: u32, limit: usize) -> Vec<(String, u64, u64)> {
        let Some(a) = self.app(app) else {
            return Vec::new();
        };
        let a = a.read().expect("index lock");
        let Some(i) = a.inboxes.get(&inbox) else {
            return Vec::new();
        };
        let mut keys: Vec<(&str, u64, u64)> = i
            .keys
            .iter()
            .filter(|(_, k)| !k.any.is_empty())
            .map(|(&id, k)| {
                let values = k.values.values().filter(|b| !b.is_empty()).count();
                (a.strings.get(id), k.any.len(), values as u64)
            })
            .collect();
        keys.sort_unstable_by(|x, y| y.1.cmp(&x.1).then_with(|| x.0.cmp(y.0)));
        keys.truncate(limit);
        keys.into_iter()
            .map(|(k, users, values)| (k.to_owned(), users, values))
            .collect()
    }

    /// ListTags with a Key: the key's values in `inbox` with how many users hold each, most
    /// users first, then by value; at most `limit`.
    pub fn tag_values(&self, app: u32, inbox: u32, key: &str, limit: usize) -> Vec<(String, u64)> {
        let Some(a) = self.app(app) else {
            return Vec::new();
        };
        let a = a.read().expect("index lock");
        let Some(k) = a
            .strings
            .find(key)
            .and_then(|id| a.inboxes.get(&inbox)?.keys.get(&id))
        else {
            return Vec::new();
        };
        let mut values: Vec<(&str, u64)> = k
            .values
            .iter()
            .filter(|(_, b)| !b.is_empty())
            .map(|(&id, b)| (a.strings.get(id), b.len()))
            .collect();
        values.sort_unstable_by(|x, y| y.1.cmp(&x.1).then_with(|| x.0.cmp(y.0)));
        values.truncate(limit);
        values
            .into_iter()
            .map(|(v, users)| (v.to_owned(), users))
            .collect()
    }

    /// How many users of the app are registered.
    pub fn registered(&self, app: u32) -> u64 {
        self.app(app)
            .map_or(0, |a| a.read().expect("index lock").registered.len())
    }

    pub fn count(&self, app: u32, inbox: u32, f: &Filter) -> u64 {
        match self.app(app) {
            None => 0,
            Some(a) => filter::count(f, &a.read().expect("index lock").view(inbox)),
        }
    }

    /// Up to `limit` selected users with ordinals after `after`, in ordinal order.
    pub fn list(&self, app: u32, inbox: u32, f: &Filter, after: Option<u32>, limit: usize) -> Page {
        let Some(a) = self.app(app) else {
            return Page {
                user_ids: vec![],
                next: None,
            };
        };
        let a = a.read().expect("index lock");
        let mut selected = filter::evaluate(f, &a.view(inbox));
        if let Some(after) = after {
            selected.remove_range(..=after);
        }
        let mut user_ids = Vec::with_capacity(limit.min(selected.len() as usize));
        let mut last = None;
        for o in selected.iter().take(limit) {
            user_ids.push(a.users.get(o as usize).map_or(0, |s| s.id));
            last = Some(o);
        }
        let more = selected.len() > limit as u64;
        Page {
            user_ids,
            next: if more { last } else { None },
        }
    }

    /// Calls `f` with every app's index, each under its read lock.
    pub fn each_app<E>(&self, mut f: impl FnMut(u32, &AppIndex) -> Result<(), E>) -> Result<(), E> {
        for (app, a) in self.handles() {
            f(app, &a.read().expect("index lock"))?;
        }
        Ok(())
    }

    /// Number of apps and bitmaps held (for metrics and the bench).
    pub fn size(&self) -> (usize, usize) {
        let apps = self.apps.read().expect("index lock");
        let bitmaps = apps
            .values()
            .map(|a| a.read().expect("index lock").bitmap_count())
            .sum();
        (apps.len(), bitmaps)
    }

    /// Bytes held, estimated: (users' state, bitmaps).
    pub fn bytes(&self) -> (usize, usize) {
        let apps = self.apps.read().expect("index lock");
        apps.values().fold((0, 0), |(s, b), a| {
            let a = a.read().expect("index lock");
            (s + a.state_bytes(), b + a.bitmap_bytes())
        })
    }
}

/// Builds the state from stored rows (at start, or when a node must rebuild): users
/// first (any order), then their tags (any order), then the apps' next ordinals.
#[derive(Default)]
pub struct Builder {
    apps: HashMap<u32, AppIndex>,
}

impl Builder {
    /// A registered user with its times and profile (`None`: all defaults).
    pub fn user(
        &mut self,
        app: u32,
        user: i64,
        ordinal: u32,
        times_ms: (i64, i64),
        profile: Option<Profile>,
    ) {
        let a = self.apps.entry(app).or_default();
        a.register(user, ordinal, times_ms.0);
        let slot = &mut a.users[ordinal as usize];
        slot.modified_ms = times_ms.1;
        slot.profile = profile.filter(|p| *p != Profile::default()).map(Box::new);
    }

    /// A tag of a user given before (a tag of an ordinal no user holds is skipped).
    pub fn tag(&mut self, app: u32, inbox: u32, key: &str, value: &str, ordinal: u32) {
        let Some(a) = self.apps.get_mut(&app) else {
            return;
        };
        if a.users.get(ordinal as usize).is_none_or(|s| s.id == 0) {
            return;
        }
        a.set(inbox, key, value, ordinal);
    }

    /// The app's last change log entry, which the rows hold.
    pub fn log_head(&mut self, app: u32, pos: u64, time_ms: i64) {
        let a = self.apps.entry(app).or_default();
        a.log_pos = pos;
        a.log_time_ms = time_ms;
    }

    /// The app's next ordinal as stored (never below what its users hold).
    pub fn next_ordinal(&mut self, app: u32, next: u32) {
        let a = self.apps.entry(app).or_default();
        a.next_ordinal = a.next_ordinal.max(next);
    }

    pub fn finish(self) -> HashMap<u32, AppIndex> {
        let mut apps = self.apps;
        for a in apps.values_mut() {
            for i in a.inboxes.values_mut() {
                for k in i.keys.values_mut() {
                    k.any.optimize();
                    for b in k.values.values_mut() {
                        b.optimize();
                    }
                }
            }
            a.registered.optimize();
            for s in &mut a.users {
                s.tags.shrink_to_fit();
            }
        }
        apps
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(user: i64, ordinal: u32, key: &str, value: &str) -> Change {
        Change::SetTag {
            app: 1,
            user,
            ordinal,
            inbox: 0,
            key: key.into(),
            old: None,
            value: value.into(),
        }
    }

    #[test]
    fn strings_are_freed_with_the_last_tag_using_them_and_reads_follow_every_change() {
        let index = AudienceIndex::new();
        index.apply(
            &[
                Change::Registered {
                    app: 1,
                    user: 10,
                    ordinal: 0,
                },
                Change::Registered {
                    app: 1,
                    user: 20,
                    ordinal: 1,
                },
                set(10, 0, "level", "gold"),
                set(20, 1, "level", "gold"),
                set(10, 0, "level", "silver"),
                set(10, 0, "city", "sh"),
            ],
            5,
        );
        let u = index.get_users(1, 0, &[10, 20, 30]);
        assert_eq!(
            u[0].as_ref().unwrap().tags,
            vec![
                ("city".into(), "sh".into()),
                ("level".into(), "silver".into())
            ]
        );
        assert_eq!(u[0].as_ref().unwrap().create_time_ms, 5);
        assert!(u[2].is_none());
        let f = |k: &str, v: &str| Filter::Tag {
            key: k.into(),
            value: v.into(),
        };
        assert_eq!(index.count(1, 0, &f("level", "gold")), 1);
        assert_eq!(index.count(1, 0, &f("level", "silver")), 1);
        index.apply(
            &[
                Change::DeleteTag {
                    app: 1,
                    user: 10,
                    ordinal: 0,
                    inbox: 0,
                    key: "city".into(),
                    old: "sh".into(),
                },
                Change::Unregistered {
                    app: 1,
                    user: 20,
                    ordinal: 1,
                    tags: vec![],
                },
                Change::Profile {
                    app: 1,
                    user: 10,
                    nick_name: Some("ann".into()),
                    portrait: None,
                    ext: None,
                    is_robot: None,
                },
            ],
            9,
        );
        let u = index.get_users(1, 0, &[10, 20]);
        let ann = u[0].as_ref().unwrap();
        assert_eq!((ann.nick_name.as_str(), ann.modify_time_ms), ("ann", 9));
        assert!(u[1].is_none());
        assert_eq!(index.count(1, 0, &f("level", "gold")), 0);
        let a = index.app(1).unwrap();
        let a = a.read().unwrap();
        // Left: "level" and "silver" of user 10.
        assert_eq!(a.strings.len(), 2);
        assert_eq!(a.strings.find("gold"), None);
        assert_eq!(a.strings.find("sh"), None);
    }
}
