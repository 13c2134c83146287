//! The event log (API.md §9) is the change log read through the API: one change log entry
//! (an app's changes of one transaction, request by request) expands into that entry's
//! events, in order, one per user a request changed (and per type), each with a `Seq`
//! made of the entry's position and the event's place in it. Nothing is stored twice: what
//! the state replays at a start is what consumers read.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::{Arc, Mutex};

use serde::Serialize;
use serde::ser::{SerializeMap, Serializer};

use super::{Change, Origin, Profile, Written};

/// Events one entry may hold: `Seq` = position x `SEQ_STRIDE` + the event's place from 1.
/// An entry holds at most `store.max_batch` requests (≤ 4,096) of at most 1,000 users,
/// each at most two events: well under the stride. Decimal, so a Seq reads as "entry 42,
/// event 3" (`420000003`), and an app may append 10^12 entries within `u64`.
pub const SEQ_STRIDE: u64 = 10_000_000;

/// The Seq of the `i`th event (from 0) of the entry at `pos`.
pub fn seq(pos: u64, i: usize) -> u64 {
    pos * SEQ_STRIDE + i as u64 + 1
}

/// The cursor just before the entry at `pos`: `After` it reads that entry's events on
/// (no event has this Seq; it is `OldestSeq - 1` for the oldest entry).
pub fn entry_start(pos: u64) -> u64 {
    pos * SEQ_STRIDE
}

/// The entry position a Seq belongs to.
pub fn pos_of(seq: u64) -> u64 {
    seq / SEQ_STRIDE
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum EventType {
    Registered,
    Updated,
    TagsChanged,
    Unregistered,
    BroadcastSent,
    BroadcastRecalled,
}

impl EventType {
    pub const ALL: [EventType; 6] = [
        EventType::Registered,
        EventType::Updated,
        EventType::TagsChanged,
        EventType::Unregistered,
        EventType::BroadcastSent,
        EventType::BroadcastRecalled,
    ];

    pub fn name(self) -> &'static str {
        match self {
            EventType::Registered => "user.registered",
            EventType::Updated => "user.updated",
            EventType::TagsChanged => "user.tags_changed",
            EventType::Unregistered => "user.unregistered",
            EventType::BroadcastSent => "broadcast.sent",
            EventType::BroadcastRecalled => "broadcast.recalled",
        }
    }

    pub fn parse(name: &str) -> Option<EventType> {
        Self::ALL.into_iter().find(|t| t.name() == name)
    }

    /// Every type's name, for an error that lists them.
    pub fn names() -> String {
        Self::ALL.map(|t| t.name()).join(", ")
    }
}

/// Profile fields of `user.updated`: the changed ones (`None`: not part of it).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Fields {
    pub nick_name: Option<String>,
    pub portrait: Option<String>,
    pub ext: Option<BTreeMap<String, String>>,
    pub is_robot: Option<bool>,
}

impl Fields {
    fn is_empty(&self) -> bool {
        self.nick_name.is_none()
            && self.portrait.is_none()
            && self.ext.is_none()
            && self.is_robot.is_none()
    }
}

impl Serialize for Fields {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(None)?;
        if let Some(v) = &self.nick_name {
            m.serialize_entry("NickName", v)?;
        }
        if let Some(v) = &self.portrait {
            m.serialize_entry("Portrait", v)?;
        }
        if let Some(v) = &self.ext {
            m.serialize_entry("Ext", v)?;
        }
        if let Some(v) = &self.is_robot {
            m.serialize_entry("IsRobot", v)?;
        }
        m.end()
    }
}

/// What an event says, by type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Body {
    Registered {
        user: i64,
        profile: Profile,
        /// Inbox 0's tags.
        tags: BTreeMap<String, String>,
    },
    Updated {
        user: i64,
        changed: Fields,
        previous: Fields,
    },
    TagsChanged {
        user: i64,
        inbox: u32,
        set: BTreeMap<String, String>,
        deleted: Vec<String>,
        /// The value before this event of every key it sets or deletes that existed.
        previous: BTreeMap<String, String>,
        /// Keys whose old value this event has decided (not serialized).
        touched: BTreeSet<String>,
    },
    Unregistered {
        user: i64,
    },
    BroadcastSent {
        id: i64,
        inbox: u32,
        audience_count: u64,
        selector: String,
        expire_ms: i64,
    },
    BroadcastRecalled {
        id: i64,
    },
}

impl Body {
    pub fn kind(&self) -> EventType {
        match self {
            Body::Registered { .. } => EventType::Registered,
            Body::Updated { .. } => EventType::Updated,
            Body::TagsChanged { .. } => EventType::TagsChanged,
            Body::Unregistered { .. } => EventType::Unregistered,
            Body::BroadcastSent { .. } => EventType::BroadcastSent,
            Body::BroadcastRecalled { .. } => EventType::BroadcastRecalled,
        }
    }

    /// The user the event is about (`None`: a broadcast's).
    pub fn user(&self) -> Option<i64> {
        match self {
            Body::Registered { user, .. }
            | Body::Updated { user, .. }
            | Body::TagsChanged { user, .. }
            | Body::Unregistered { user } => Some(*user),
            Body::BroadcastSent { .. } | Body::BroadcastRecalled { .. } => None,
        }
    }

    /// Whether it says nothing (a legacy entry's unchanged write, or keys set and deleted
    /// again within one request).
    fn is_empty(&self) -> bool {
        match self {
            Body::Updated { changed, .. } => changed.is_empty(),
            Body::TagsChanged { set, deleted, .. } => set.is_empty() && deleted.is_empty(),
            _ => false,
        }
    }
}

/// One event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub seq: u64,
    pub app: u32,
    pub time_ms: i64,
    pub origin: Arc<Origin>,
    pub body: Body,
}

impl Serialize for Event {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(None)?;
        m.serialize_entry("Seq", &self.seq.to_string())?;
        m.serialize_entry("Type", self.body.kind().name())?;
        m.serialize_entry("AppId", &self.app)?;
        m.serialize_entry("Time", &self.time_ms)?;
        m.serialize_entry("RequestId", &self.origin.request_id)?;
        m.serialize_entry("AccessKey", &self.origin.access_key)?;
        if let Some(user) = self.body.user() {
            m.serialize_entry("UserId", &user)?;
        }
        match &self.body {
            Body::Registered { profile, tags, .. } => {
                m.serialize_entry("NickName", &profile.nick_name)?;
                m.serialize_entry("Portrait", &profile.portrait)?;
                m.serialize_entry("Ext", &profile.ext)?;
                m.serialize_entry("IsRobot", &profile.is_robot)?;
                m.serialize_entry("Tags", tags)?;
            }
            Body::Updated {
                changed, previous, ..
            } => {
                m.serialize_entry("Changed", changed)?;
                m.serialize_entry("Previous", previous)?;
            }
            Body::TagsChanged {
                inbox,
                set,
                deleted,
                previous,
                ..
            } => {
                m.serialize_entry("InboxType", inbox)?;
                m.serialize_entry("Set", set)?;
                m.serialize_entry("Deleted", deleted)?;
                m.serialize_entry("Previous", previous)?;
            }
            Body::Unregistered { .. } => {}
            Body::BroadcastSent {
                id,
                inbox,
                audience_count,
                selector,
                expire_ms,
            } => {
                m.serialize_entry("BroadcastId", &id.to_string())?;
                m.serialize_entry("InboxType", inbox)?;
                m.serialize_entry("AudienceCount", audience_count)?;
                let sel: serde_json::Map<String, serde_json::Value> =
                    serde_json::from_str(selector).unwrap_or_default();
                for key in ["Tags", "TagOp", "Filter"] {
                    m.serialize_entry(key, sel.get(key).unwrap_or(&serde_json::Value::Null))?;
                }
                m.serialize_entry("ExpireTime", expire_ms)?;
            }
            Body::BroadcastRecalled { id } => {
                m.serialize_entry("BroadcastId", &id.to_string())?;
            }
        }
        m.end()
    }
}

/// The events of `app`'s change log entry at `pos` (written at `time_ms`), in order.
pub fn expand(app: u32, pos: u64, time_ms: i64, parts: Vec<Written>) -> Vec<Event> {
    let mut bodies: Vec<(Arc<Origin>, Body)> = Vec::new();
    for w in parts {
        let origin = Arc::new(w.origin);
        let start = bodies.len();
        let mut was: Option<Fields> = None;
        for change in w.changes {
            // Consecutive changes of one user within a request fold into one event: the
            // request's last one (`mine`: the last event is this request's) when it is
            // about `user`.
            let mine = bodies.len() > start;
            match change {
                Change::Registered { user, .. } => bodies.push((
                    origin.clone(),
                    Body::Registered {
                        user,
                        profile: Profile::default(),
                        tags: BTreeMap::new(),
                    },
                )),
                Change::ProfileWas {
                    nick_name,
                    portrait,
                    ext,
                    is_robot,
                    ..
                } => {
                    was = Some(Fields {
                        nick_name,
                        portrait,
                        ext,
                        is_robot,
                    })
                }
                Change::Profile {
                    user,
                    nick_name,
                    portrait,
                    ext,
                    is_robot,
                    ..
                } => {
                    let changed = Fields {
                        nick_name,
                        portrait,
                        ext,
                        is_robot,
                    };
                    if mine && let Some(Body::Registered { profile, .. }) = last(&mut bodies, user)
                    {
                        profile.set(
                            changed.nick_name.as_ref(),
                            changed.portrait.as_ref(),
                            changed.ext.as_ref(),
                            changed.is_robot,
                        );
                        continue;
                    }
                    // Entries of the release before the event log carry no old values.
                    let previous = was.take().unwrap_or_default();
                    bodies.push((
                        origin.clone(),
                        Body::Updated {
                            user,
                            changed,
                            previous,
                        },
                    ));
                }
                Change::SetTag {
                    user,
                    inbox,
                    key,
                    old,
                    value,
                    ..
                } => {
                    if old.as_ref() == Some(&value) {
                        continue; // a legacy entry's unchanged write
                    }
                    if mine {
                        match last(&mut bodies, user) {
                            Some(Body::Registered { tags, .. }) if inbox == 0 => {
                                tags.insert(key, value);
                                continue;
                            }
                            Some(b @ Body::TagsChanged { .. }) if tags_inbox(b) == Some(inbox) => {
                                set_tag(b, key, old, value);
                                continue;
                            }
                            _ => {}
                        }
                    }
                    let mut b = tags_changed(user, inbox);
                    set_tag(&mut b, key, old, value);
                    bodies.push((origin.clone(), b));
                }
                Change::DeleteTag {
                    user,
                    inbox,
                    key,
                    old,
                    ..
                } => {
                    if mine
                        && let Some(b) = last(&mut bodies, user)
                        && tags_inbox(b) == Some(inbox)
                    {
                        delete_tag(b, key, old);
                        continue;
                    }
                    let mut b = tags_changed(user, inbox);
                    delete_tag(&mut b, key, old);
                    bodies.push((origin.clone(), b));
                }
                Change::Unregistered { user, .. } => {
                    bodies.push((origin.clone(), Body::Unregistered { user }))
                }
                Change::BroadcastSent {
                    id,
                    inbox,
                    audience_count,
                    selector,
                    expire_ms,
                    ..
                } => bodies.push((
                    origin.clone(),
                    Body::BroadcastSent {
                        id,
                        inbox,
                        audience_count,
                        selector,
                        expire_ms,
                    },
                )),
                Change::BroadcastRecalled { id, .. } => {
                    bodies.push((origin.clone(), Body::BroadcastRecalled { id }))
                }
            }
        }
    }
    bodies
        .into_iter()
        .filter(|(_, b)| !b.is_empty())
        .enumerate()
        .map(|(i, (origin, body))| Event {
            seq: seq(pos, i),
            app,
            time_ms,
            origin,
            body,
        })
        .collect()
}

/// How many events [`expand`] makes of requests with these changes (an upper bound: an
/// event whose changes cancel out is dropped there), without building them: what a
/// write records for retention by count.
pub fn count<'a>(requests: impl Iterator<Item = &'a [Change]>) -> u64 {
    let mut n = 0;
    for changes in requests {
        // The kind, user and inbox of the request's last event.
        let mut last: Option<(EventType, i64, u32)> = None;
        for c in changes {
            let (kind, user, inbox) = match c {
                Change::ProfileWas { .. } => continue,
                Change::SetTag { old, value, .. } if old.as_ref() == Some(value) => continue,
                Change::Registered { user, .. } => (EventType::Registered, *user, 0),
                Change::Profile { user, .. } => (EventType::Updated, *user, 0),
                Change::SetTag { user, inbox, .. } | Change::DeleteTag { user, inbox, .. } => {
                    (EventType::TagsChanged, *user, *inbox)
                }
                Change::Unregistered { user, .. } => (EventType::Unregistered, *user, 0),
                Change::BroadcastSent { .. } => (EventType::BroadcastSent, 0, 0),
                Change::BroadcastRecalled { .. } => (EventType::BroadcastRecalled, 0, 0),
            };
            let folds = match last {
                Some((EventType::Registered, u, _)) if u == user => {
                    kind == EventType::Updated
                        || (kind == EventType::TagsChanged
                            && inbox == 0
                            && matches!(c, Change::SetTag { .. }))
                }
                Some((EventType::TagsChanged, u, i)) => {
                    u == user && i == inbox && kind == EventType::TagsChanged
                }
                _ => false,
            };
            if !folds {
                n += 1;
                last = Some((kind, user, inbox));
            }
        }
    }
    n
}

fn last(bodies: &mut [(Arc<Origin>, Body)], user: i64) -> Option<&mut Body> {
    bodies
        .last_mut()
        .map(|(_, b)| b)
        .filter(|b| b.user() == Some(user))
}

fn tags_changed(user: i64, inbox: u32) -> Body {
    Body::TagsChanged {
        user,
        inbox,
        set: BTreeMap::new(),
        deleted: Vec::new(),
        previous: BTreeMap::new(),
        touched: BTreeSet::new(),
    }
}

fn tags_inbox(b: &Body) -> Option<u32> {
    match b {
        Body::TagsChanged { inbox, .. } => Some(*inbox),
        _ => None,
    }
}

fn set_tag(b: &mut Body, key: String, old: Option<String>, value: String) {
    if let Body::TagsChanged {
        set,
        deleted,
        previous,
        touched,
        ..
    } = b
    {
        if touched.insert(key.clone())
            && let Some(old) = old
        {
            previous.insert(key.clone(), old);
        }
        deleted.retain(|k| *k != key);
        set.insert(key, value);
    }
}

fn delete_tag(b: &mut Body, key: String, old: String) {
    if let Body::TagsChanged {
        set,
        deleted,
        previous,
        touched,
        ..
    } = b
    {
        if touched.insert(key.clone()) {
            previous.insert(key.clone(), old);
        }
        set.remove(&key);
        // A key this event created and removed again was never there before it.
        if previous.contains_key(&key) && !deleted.contains(&key) {
            deleted.push(key);
        }
    }
}

/// Entries expanded lately, so a consumer paging through a large entry (one commit of
/// thousands of events, Limit 1000 at a time) decodes it once, not once per page. Only
/// entries of [`Decoded::MIN_EVENTS`] events or more are kept (smaller ones decode in
/// microseconds), at most [`Decoded::MAX_ENTRIES`] entries and [`Decoded::MAX_EVENTS`]
/// events. Entries never change once written, so a hit is always right.
#[derive(Default)]
pub struct Decoded {
    kept: Mutex<VecDeque<(EntryKey, Arc<Vec<Event>>)>>,
}

/// (app, position, time): the time guards against a position reused by another store.
pub type EntryKey = (u32, u64, i64);

impl Decoded {
    pub const MIN_EVENTS: usize = 64;
    pub const MAX_ENTRIES: usize = 32;
    pub const MAX_EVENTS: usize = 50_000;

    pub fn get(&self, key: EntryKey) -> Option<Arc<Vec<Event>>> {
        let kept = self.kept.lock().expect("decoded lock");
        kept.iter().find(|(k, _)| *k == key).map(|(_, v)| v.clone())
    }

    pub fn put(&self, key: EntryKey, events: Arc<Vec<Event>>) {
        if events.len() < Self::MIN_EVENTS || events.len() > Self::MAX_EVENTS {
            return;
        }
        let mut kept = self.kept.lock().expect("decoded lock");
        if kept.iter().any(|(k, _)| *k == key) {
            return;
        }
        kept.push_back((key, events));
        while kept.len() > Self::MAX_ENTRIES
            || kept.iter().map(|(_, v)| v.len()).sum::<usize>() > Self::MAX_EVENTS
        {
            kept.pop_front();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn origin(id: &str) -> Origin {
        Origin {
            request_id: id.into(),
            access_key: "AK".into(),
        }
    }

    fn set(user: i64, inbox: u32, key: &str, old: Option<&str>, value: &str) -> Change {
        Change::SetTag {
            app: 1,
            user,
            ordinal: 0,
            inbox,
            key: key.into(),
            old: old.map(str::to_owned),
            value: value.into(),
        }
    }

    fn delete(user: i64, key: &str, old: &str) -> Change {
        Change::DeleteTag {
            app: 1,
            user,
            ordinal: 0,
            inbox: 0,
            key: key.into(),
            old: old.into(),
        }
    }

    #[test]
    fn a_requests_changes_fold_per_user_and_type_and_count_says_how_many() {
        let registered = vec![
            Change::Registered {
                app: 1,
                user: 7,
                ordinal: 0,
            },
            Change::Profile {
                app: 1,
                user: 7,
                nick_name: Some("n".into()),
                portrait: None,
                ext: None,
                is_robot: None,
            },
            set(7, 0, "level", None, "gold"),
        ];
        let tags = vec![
            set(8, 0, "a", Some("1"), "2"),
            set(8, 0, "b", None, "1"),
            delete(8, "c", "x"),
            // Set and deleted again within the request: a key that was never there.
            set(8, 0, "new", None, "1"),
            delete(8, "new", "1"),
            // The same value again (an entry of the release before): nothing.
            set(8, 0, "a", Some("2"), "2"),
            set(8, 2, "a", None, "1"),
            set(9, 0, "a", None, "1"),
        ];
        let parts = vec![
            Written {
                origin: origin("r1"),
                changes: registered.clone(),
            },
            Written {
                origin: origin("r2"),
                changes: tags.clone(),
            },
        ];
        let events = expand(1, 3, 1000, parts);
        assert_eq!(
            count([&registered[..], &tags[..]].into_iter()),
            events.len() as u64
        );
        let kinds: Vec<(EventType, Option<i64>)> = events
            .iter()
            .map(|e| (e.body.kind(), e.body.user()))
            .collect();
        assert_eq!(
            kinds,
            [
                (EventType::Registered, Some(7)),
                (EventType::TagsChanged, Some(8)),
                (EventType::TagsChanged, Some(8)),
                (EventType::TagsChanged, Some(9)),
            ]
        );
        assert_eq!(
            events.iter().map(|e| e.seq).collect::<Vec<_>>(),
            [30_000_001, 30_000_002, 30_000_003, 30_000_004]
        );
        let Body::Registered { profile, tags, .. } = &events[0].body else {
            panic!()
        };
        assert_eq!(
            (
                profile.nick_name.as_str(),
                tags.get("level").map(String::as_str)
            ),
            ("n", Some("gold"))
        );
        let v = serde_json::to_value(&events[1]).unwrap();
        assert_eq!(v["Set"], serde_json::json!({"a": "2", "b": "1"}));
        assert_eq!(v["Deleted"], serde_json::json!(["c"]));
        assert_eq!(v["Previous"], serde_json::json!({"a": "1", "c": "x"}));
        assert_eq!(v["RequestId"], "r2");
        assert_eq!(v["Seq"], "30000002");
        assert!(v.get("touched").is_none());
    }
}
