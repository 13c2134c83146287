//! The domain's plain types, importing nothing of ours: tags and their operations, a
//! write's outcome, a stored user as reads answer it, the state the planner reads, and
//! the changes a committed write made (which the store writes, the in-memory state
//! applies and both stores' change logs carry). Every other layer points down here.

pub mod broadcast;
pub mod events;
pub mod filter;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// A tag: (key, value). Values are ignored for deletes.
pub type Tag = (String, String);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TagOp {
    /// Overwrite existing keys, add new ones (Op 0).
    Upsert,
    /// Delete the given keys; absent keys are ignored (Op 1).
    Delete,
}

/// The result for one entry of a write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Applied,
    UserNotFound,
    /// The entry would leave the user with `would_have` keys in the inbox; `limit` is the cap.
    TagLimitExceeded {
        would_have: usize,
        limit: usize,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredUser {
    pub user_id: i64,
    pub nick_name: String,
    pub portrait: String,
    pub ext: BTreeMap<String, String>,
    pub is_robot: bool,
    pub create_time_ms: i64,
    pub modify_time_ms: i64,
    /// Tags of the inbox that was asked for, sorted by key (byte order).
    pub tags: Vec<Tag>,
}

/// Wall-clock milliseconds, for CreateTime and ModifyTime.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// The inbox that tags go to when a request names none, and that RegisterUsers writes.
pub const DEFAULT_INBOX: u32 = 0;

/// A user's profile fields; a user with all defaults holds none in the state.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Profile {
    pub nick_name: String,
    pub portrait: String,
    pub ext: BTreeMap<String, String>,
    pub is_robot: bool,
}

impl Profile {
    /// Sets the fields given (`None`: left as it is).
    pub fn set(
        &mut self,
        nick_name: Option<&String>,
        portrait: Option<&String>,
        ext: Option<&BTreeMap<String, String>>,
        is_robot: Option<bool>,
    ) {
        if let Some(n) = nick_name {
            self.nick_name.clone_from(n);
        }
        if let Some(x) = portrait {
            self.portrait.clone_from(x);
        }
        if let Some(e) = ext {
            self.ext.clone_from(e);
        }
        if let Some(r) = is_robot {
            self.is_robot = r;
        }
    }
}

/// The stored state of one (app, user).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UserState {
    /// `Some` when registered.
    pub ordinal: Option<u32>,
    /// Every tag of the user, all inboxes: (inbox, key) -> value.
    pub tags: BTreeMap<(u32, String), String>,
    /// The profile (defaults when not registered): what a profile write compares with, so
    /// one that changes nothing writes nothing and one that does knows the old values.
    pub profile: Profile,
}

impl UserState {
    pub fn keys_in(&self, inbox: u32) -> usize {
        self.tags
            .range((inbox, String::new())..)
            .take_while(|((i, _), _)| *i == inbox)
            .count()
    }
}

/// One change to the stored state, in the order the batch made them. New variants go at
/// the end: the change log stores them as `postcard`, which numbers variants in order, and
/// a start replays entries written by the release before.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Change {
    /// A user registered (first time, or again after it was unregistered).
    Registered { app: u32, user: i64, ordinal: u32 },
    /// New profile fields of a registered user (`None`: unchanged).
    Profile {
        app: u32,
        user: i64,
        nick_name: Option<String>,
        portrait: Option<String>,
        ext: Option<BTreeMap<String, String>>,
        is_robot: Option<bool>,
    },
    /// Tag `key` of the user in `inbox` is now `value` (it was `old`).
    SetTag {
        app: u32,
        user: i64,
        ordinal: u32,
        inbox: u32,
        key: String,
        old: Option<String>,
        value: String,
    },
    /// Tag `key` (whose value was `old`) is gone.
    DeleteTag {
        app: u32,
        user: i64,
        ordinal: u32,
        inbox: u32,
        key: String,
        old: String,
    },
    /// The user and every tag it had, in every inbox, are gone.
    Unregistered {
        app: u32,
        user: i64,
        ordinal: u32,
        tags: Vec<(u32, String, String)>,
    },
    /// The old values of the fields the [`Change::Profile`] right after it changes (of a
    /// user registered before; `None`: not changed). The state and the rows ignore it;
    /// the event log's `Previous` comes from it.
    ProfileWas {
        app: u32,
        user: i64,
        nick_name: Option<String>,
        portrait: Option<String>,
        ext: Option<BTreeMap<String, String>>,
        is_robot: Option<bool>,
    },
    /// A broadcast was sent (its event; the broadcast's own rows are elsewhere).
    BroadcastSent {
        app: u32,
        id: i64,
        inbox: u32,
        audience_count: u64,
        /// `{"Tags","TagOp","Filter"}` as sent (JSON text).
        selector: String,
        expire_ms: i64,
    },
    /// A broadcast was recalled (the first recall only).
    BroadcastRecalled { app: u32, id: i64 },
}

impl Change {
    pub fn app(&self) -> u32 {
        match self {
            Change::Registered { app, .. }
            | Change::Profile { app, .. }
            | Change::SetTag { app, .. }
            | Change::DeleteTag { app, .. }
            | Change::Unregistered { app, .. }
            | Change::ProfileWas { app, .. }
            | Change::BroadcastSent { app, .. }
            | Change::BroadcastRecalled { app, .. } => *app,
        }
    }

    /// Whether the change is only for the event log (the state and the rows skip it).
    pub fn is_event_only(&self) -> bool {
        matches!(
            self,
            Change::ProfileWas { .. }
                | Change::BroadcastSent { .. }
                | Change::BroadcastRecalled { .. }
        )
    }
}

/// Who made a write: the RequestId the client was given and the AccessKey that signed
/// the request (API.md §9; `import-<id>` and `""` for `tagcast import`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Origin {
    pub request_id: String,
    pub access_key: String,
}

/// One request's part of a change log entry: its origin and its changes, in order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Written {
    pub origin: Origin,
    pub changes: Vec<Change>,
}

/// One change log entry's body: an app's changes of one transaction, request by request,
/// in order, as `postcard` (both stores' logs; a few bytes per tag, not JSON).
pub fn encode_entry(parts: &[(&Origin, &[Change])]) -> Vec<u8> {
    postcard::to_allocvec(parts).expect("changes always encode")
}

/// The requests of an entry written by [`encode_entry`].
pub fn decode_entry(body: &[u8]) -> Result<Vec<Written>, postcard::Error> {
    postcard::from_bytes(body)
}

/// Every change of an entry's requests, in order.
pub fn entry_changes(parts: Vec<Written>) -> Vec<Change> {
    parts.into_iter().flat_map(|w| w.changes).collect()
}

/// A user's tags, every inbox, as the store keeps them in the user's row: one JSON object
/// of inboxes (`InboxType` as a string key), each an object of key to value, keys sorted:
/// `{"0":{"city":"sh","level":"gold"},"2":{"vip":"1"}}`. JSON rather than a binary
/// encoding so an operator can still query the rows (`jsonb` in PostgreSQL, SQLite's JSON
/// functions), at a cost measured in docs/benchmarks.md.
pub fn tags_json(tags: &BTreeMap<(u32, String), String>) -> String {
    let mut out = Vec::with_capacity(16 + tags.len() * 24);
    serde_json::to_writer(&mut out, &Inboxes(tags)).expect("maps of strings always serialize");
    String::from_utf8(out).expect("serde_json writes UTF-8")
}

/// The tags as the object of inboxes [`tags_json`] writes, straight from the map (sorted
/// by inbox, then key), with no map of maps built first.
struct Inboxes<'a>(&'a BTreeMap<(u32, String), String>);

impl Serialize for Inboxes<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut m = s.serialize_map(None)?;
        let mut from = Some(0);
        while let Some(start) = from
            && let Some(((inbox, _), _)) = self.0.range((start, String::new())..).next()
        {
            m.serialize_entry(inbox, &Inbox(self.0, *inbox))?;
            from = inbox.checked_add(1);
        }
        m.end()
    }
}

/// One inbox's tags, key to value.
struct Inbox<'a>(&'a BTreeMap<(u32, String), String>, u32);

impl Serialize for Inbox<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_map(
            self.0
                .range((self.1, String::new())..)
                .take_while(|((i, _), _)| *i == self.1)
                .map(|((_, k), v)| (k, v)),
        )
    }
}

/// The tags [`tags_json`] wrote, as (inbox, key, value); an error names what is wrong.
pub fn parse_tags_json(text: &str) -> Result<Vec<(u32, String, String)>, String> {
    let inboxes: BTreeMap<u32, BTreeMap<String, String>> = serde_json::from_str(text)
        .map_err(|e| format!("not a JSON object of inboxes, each an object of strings: {e}"))?;
    Ok(inboxes
        .into_iter()
        .flat_map(|(inbox, tags)| tags.into_iter().map(move |(k, v)| (inbox, k, v)))
        .collect())
}

#[cfg(test)]
mod tags_json_tests {
    use super::*;

    #[test]
    fn tags_round_trip_through_their_row_encoding() {
        let mut tags = BTreeMap::new();
        tags.insert((2, "vip".to_owned()), "1".to_owned());
        tags.insert((0, "level".to_owned()), "gold \"x\" 金".to_owned());
        tags.insert((0, "city".to_owned()), "sh".to_owned());
        let text = tags_json(&tags);
        assert_eq!(
            text,
            r#"{"0":{"city":"sh","level":"gold \"x\" 金"},"2":{"vip":"1"}}"#
        );
        let back: BTreeMap<(u32, String), String> = parse_tags_json(&text)
            .unwrap()
            .into_iter()
            .map(|(i, k, v)| ((i, k), v))
            .collect();
        assert_eq!(back, tags);
        assert_eq!(tags_json(&BTreeMap::new()), "{}");
        // PostgreSQL's jsonb text form has spaces; it parses the same.
        assert_eq!(parse_tags_json(r#"{"0": {"a": "b"}}"#).unwrap().len(), 1);
        assert!(parse_tags_json(r#"{"x": {}}"#).is_err());
        assert!(parse_tags_json(r#"{"0": {"a": 1}}"#).is_err());
    }

    #[test]
    fn a_log_entry_keeps_each_requests_origin_with_its_changes() {
        let a = Origin {
            request_id: "r1".into(),
            access_key: "AK1".into(),
        };
        let b = Origin {
            request_id: "import-7".into(),
            access_key: String::new(),
        };
        let first = [Change::Registered {
            app: 1,
            user: 5,
            ordinal: 0,
        }];
        let second = [Change::Unregistered {
            app: 1,
            user: 5,
            ordinal: 0,
            tags: vec![(0, "k".into(), "v".into())],
        }];
        let body = encode_entry(&[(&a, &first[..]), (&b, &second[..])]);
        let parts = decode_entry(&body).unwrap();
        assert_eq!(parts.len(), 2);
        assert_eq!((&parts[0].origin, &parts[1].origin), (&a, &b));
        assert_eq!(
            entry_changes(parts),
            vec![first[0].clone(), second[0].clone()]
        );
    }
}
