//! The in-memory audience index: per app, the bitmap of registered users' ordinals, and per
//! (app, inbox, key) and (app, inbox, key, value) the bitmap of users with that key or tag.
//! It changes only through [`Change`]s the planner produced for a committed transaction,
//! applied one app at a time under that app's write lock (a reader sees a batch's changes
//! of an app all or none).
//!
//! Positions: the PostgreSQL store numbers its committed transactions (its change log) and
//! applies them here strictly in order ([`AudienceIndex::apply_at`]); [`AudienceIndex::
//! applied`] is the last applied position, which queries wait for. The embedded store has
//! a single writer that applies after each commit and leaves positions at 0.

use std::collections::HashMap;

use rustc_hash::FxHashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};

use roaring::RoaringBitmap;
use tokio::sync::watch;

use super::filter::{self, Bitmaps, Filter};
use crate::model::Change;

#[derive(Default)]
pub(super) struct KeyIndex {
    pub(super) any: RoaringBitmap,
    pub(super) values: FxHashMap<String, RoaringBitmap>,
}

#[derive(Default)]
pub(super) struct InboxIndex {
    pub(super) keys: FxHashMap<String, KeyIndex>,
}

/// One app's part of the index.
#[derive(Default)]
pub struct AppIndex {
    pub(super) registered: RoaringBitmap,
    /// Ordinal -> user id (0 for ordinals not in use any more).
    pub(super) users: Vec<i64>,
    pub(super) inboxes: FxHashMap<u32, InboxIndex>,
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
        self.inbox?.keys.get(key)?.values.get(value)
    }
    fn key(&self, key: &str) -> Option<&RoaringBitmap> {
        Some(&self.inbox?.keys.get(key)?.any)
    }
}

impl AppIndex {
    fn view(&self, inbox: u32) -> View<'_> {
        View {
            app: self,
            inbox: self.inboxes.get(&inbox),
        }
    }

    fn set(&mut self, inbox: u32, key: &str, old: Option<&str>, value: &str, ordinal: u32) {
        let keys = &mut self.inboxes.entry(inbox).or_default().keys;
        // Looked up before inserting: no key allocation for keys the index knows.
        if !keys.contains_key(key) {
            keys.insert(key.to_owned(), KeyIndex::default());
        }
        let k = keys.get_mut(key).expect("inserted above");
        if let Some(old) = old {
            remove_value(k, old, ordinal);
        }
        add(&mut k.any, ordinal);
        match k.values.get_mut(value) {
            Some(b) => add(b, ordinal),
            None => {
                k.values
                    .insert(value.to_owned(), RoaringBitmap::from_iter([ordinal]));
            }
        }
    }

    fn delete(&mut self, inbox: u32, key: &str, old: &str, ordinal: u32) {
        let Some(i) = self.inboxes.get_mut(&inbox) else {
            return;
        };
        let Some(k) = i.keys.get_mut(key) else {
            return;
        };
        remove_value(k, old, ordinal);
        k.any.remove(ordinal);
        if k.any.is_empty() {
            i.keys.remove(key);
        }
    }

    fn apply(&mut self, change: &Change) {
        match change {
            Change::Registered { user, ordinal, .. } => {
                add(&mut self.registered, *ordinal);
                let at = *ordinal as usize;
                if self.users.len() <= at {
                    self.users.resize(at + 1, 0);
                }
                self.users[at] = *user;
            }
            Change::Profile { .. } => {}
            Change::SetTag {
                ordinal,
                inbox,
                key,
                old,
                value,
                ..
            } => self.set(*inbox, key, old.as_deref(), value, *ordinal),
            Change::DeleteTag {
                ordinal,
                inbox,
                key,
                old,
                ..
            } => self.delete(*inbox, key, old, *ordinal),
            Change::Unregistered { ordinal, tags, .. } => {
                for (inbox, key, value) in tags {
                    self.delete(*inbox, key, value, *ordinal);
                }
                self.registered.remove(*ordinal);
                if let Some(slot) = self.users.get_mut(*ordinal as usize) {
                    *slot = 0;
                }
            }
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
}

/// Adds `ordinal`: appended when it is the largest (as when an index is built in ordinal
/// order, or a user registers), inserted otherwise.
fn add(b: &mut RoaringBitmap, ordinal: u32) {
    if b.try_push(ordinal).is_err() {
        b.insert(ordinal);
    }
}

fn remove_value(k: &mut KeyIndex, value: &str, ordinal: u32) {
    if let Some(b) = k.values.get_mut(value) {
        b.remove(ordinal);
        if b.is_empty() {
            k.values.remove(value);
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

/// The index of every app, with the position of the last change applied.
pub struct AudienceIndex {
    apps: RwLock<HashMap<u32, Arc<RwLock<AppIndex>>>>,
    applied: watch::Sender<u64>,
    built: AtomicBool,
}

impl Default for AudienceIndex {
    fn default() -> Self {
        AudienceIndex {
            apps: RwLock::default(),
            applied: watch::Sender::new(0),
            built: AtomicBool::new(false),
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

    /// Applies committed changes in order, each app's under one write lock.
    pub fn apply(&self, changes: &[Change]) {
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
                index.apply(c);
            }
            i = end;
        }
    }

    /// Applies the changes of log position `pos` if it is the next one; returns whether it
    /// was applied (`false`: already applied, or a gap the caller must fill first).
    pub fn apply_at(&self, pos: u64, changes: &[Change]) -> bool {
        if pos != self.applied() + 1 {
            return false;
        }
        self.apply(changes);
        self.applied.send_replace(pos);
        true
    }

    /// Replaces the whole index with `apps` as of position `pos` (a build or a rebuild).
    pub fn replace(&self, apps: HashMap<u32, AppIndex>, pos: u64) {
        *self.apps.write().expect("index lock") = apps
            .into_iter()
            .map(|(k, v)| (k, Arc::new(RwLock::new(v))))
            .collect();
        // Built before the position is published: waiters check it when woken.
        self.built.store(true, Ordering::Release);
        self.applied.send_replace(pos);
    }

    /// The position of the last change applied.
    pub fn applied(&self) -> u64 {
        *self.applied.borrow()
    }

    /// Wakes on every applied position.
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
            .filter_map(|&o| a.users.get(o as usize).copied().filter(|&u| u != 0))
            .collect()
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
            user_ids.push(a.users.get(o as usize).copied().unwrap_or(0));
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
        let apps: Vec<(u32, Arc<RwLock<AppIndex>>)> = self
            .apps
            .read()
            .expect("index lock")
            .iter()
            .map(|(k, v)| (*k, v.clone()))
            .collect();
        for (app, a) in apps {
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
}

/// Builds an index from stored rows (at start, or when a node must rebuild).
#[derive(Default)]
pub struct Builder {
    apps: HashMap<u32, AppIndex>,
}

impl Builder {
    pub fn user(&mut self, app: u32, user: i64, ordinal: u32) {
        self.apps
            .entry(app)
            .or_default()
            .apply(&Change::Registered { app, user, ordinal });
    }

    pub fn tag(&mut self, app: u32, inbox: u32, key: &str, value: &str, ordinal: u32) {
        self.apps
            .entry(app)
            .or_default()
            .set(inbox, key, None, value, ordinal);
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
        }
        apps
    }
}
