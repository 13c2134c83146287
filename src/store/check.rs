//! `tagcast check`'s report, shared by both backends: one line per check, each ok, a
//! warning (something an operator should know, not damage) or a failure.

use std::fmt::Write as _;

use crate::config::TagLimits;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Ok,
    Warning,
    Failed,
}

#[derive(Debug, Clone)]
pub struct Finding {
    pub status: Status,
    pub check: &'static str,
    pub detail: String,
}

/// Everything one run of `tagcast check` found.
#[derive(Debug, Clone, Default)]
pub struct Report {
    pub findings: Vec<Finding>,
}

impl Report {
    pub fn ok(&mut self, check: &'static str, detail: impl Into<String>) {
        self.push(Status::Ok, check, detail);
    }

    pub fn warn(&mut self, check: &'static str, detail: impl Into<String>) {
        self.push(Status::Warning, check, detail);
    }

    pub fn fail(&mut self, check: &'static str, detail: impl Into<String>) {
        self.push(Status::Failed, check, detail);
    }

    /// The schema `version` against the `known` steps of this binary: newer is a warning
    /// when it declares itself usable by it (`usable`), a failure otherwise.
    pub fn schema(&mut self, version: u32, usable: u32, known: u32) {
        if version <= known {
            self.ok(
                "schema",
                format!("version {version} (this tagcast: {known})"),
            );
            return;
        }
        let detail = format!(
            "version {version}, newer than this tagcast ({known}); usable from version {usable}"
        );
        if usable <= known {
            self.warn("schema", detail);
        } else {
            self.fail("schema", detail);
        }
    }

    /// Ok when `count` is 0, the given status with `what` otherwise.
    pub fn expect_none(
        &mut self,
        check: &'static str,
        count: i64,
        status: Status,
        what: impl FnOnce(i64) -> String,
    ) {
        if count == 0 {
            self.ok(check, "none");
        } else {
            self.push(status, check, what(count));
        }
    }

    fn push(&mut self, status: Status, check: &'static str, detail: impl Into<String>) {
        self.findings.push(Finding {
            status,
            check,
            detail: detail.into(),
        });
    }

    pub fn failures(&self) -> usize {
        self.count(Status::Failed)
    }

    pub fn warnings(&self) -> usize {
        self.count(Status::Warning)
    }

    fn count(&self, status: Status) -> usize {
        self.findings.iter().filter(|f| f.status == status).count()
    }

    /// The report as the command prints it, one finding per line.
    pub fn render(&self) -> String {
        let mut out = String::new();
        for f in &self.findings {
            let label = match f.status {
                Status::Ok => "ok     ",
                Status::Warning => "warning",
                Status::Failed => "FAILED ",
            };
            let _ = writeln!(out, "  {label} {:<14} {}", f.check, f.detail);
        }
        out
    }
}

/// What a backend counted for the rules every store is held to; [`Report::rows`] judges
/// them the same way for both.
#[derive(Debug, Clone, Default)]
pub struct RowCounts {
    pub users: i64,
    pub apps: i64,
    pub tags: i64,
    /// Users whose tags column is not a JSON object of inboxes, each an object of strings.
    pub bad_tags: i64,
    /// Rows with an AppId, UserId or InboxType outside the API's range.
    pub bad_ids: i64,
    /// Users whose Ext is not a JSON object.
    pub bad_ext: i64,
    /// Distinct keys that break the tag rules, each with why.
    pub bad_keys: Vec<String>,
    /// Values longer than `tags.max_value_bytes`.
    pub long_values: i64,
    /// User inboxes with more keys than `tags.max_per_user`.
    pub over_cap: i64,
    /// Users without an ordinal, with one outside 0..their app's next ordinal, or sharing
    /// one with another user of the app (the audience index would mix them up).
    pub bad_ordinals: i64,
}

impl Report {
    /// The findings for `c`: broken references and unreadable rows are failures; rows
    /// that break today's limits are warnings (the limits may have been lowered since).
    pub fn rows(&mut self, c: &RowCounts, limits: &TagLimits) {
        self.ok(
            "contents",
            format!("{} users in {} apps, {} tags", c.users, c.apps, c.tags),
        );
        self.expect_none("users.tags", c.bad_tags, Status::Failed, |n| {
            format!(
                "{n} users hold tags that are not a JSON object of inboxes, each an object of \
                 strings (the server cannot start from the rows)"
            )
        });
        self.expect_none("ids", c.bad_ids, Status::Failed, |n| {
            format!("{n} rows hold an AppId, UserId or InboxType outside the API's range")
        });
        self.expect_none("ordinals", c.bad_ordinals, Status::Failed, |n| {
            format!(
                "{n} users have no ordinal, one past their app's next, or one another user of the app has \
                 (audience answers would be wrong)"
            )
        });
        self.expect_none("users.ext", c.bad_ext, Status::Failed, |n| {
            format!("{n} users hold an Ext that is not a JSON object (BatchGetUser fails on them)")
        });
        self.expect_none(
            "tag keys",
            c.bad_keys.len() as i64,
            Status::Warning,
            |n| {
                format!(
                    "{n} distinct keys break today's tag rules (first: {}); the limits may have changed",
                    c.bad_keys[0]
                )
            },
        );
        self.expect_none("tag values", c.long_values, Status::Warning, |n| {
            format!(
                "{n} values are longer than tags.max_value_bytes = {}",
                limits.max_value_bytes
            )
        });
        self.expect_none("tag cap", c.over_cap, Status::Warning, |n| {
            format!(
                "{n} user inboxes hold more than tags.max_per_user = {} keys (was the limit lowered?)",
                limits.max_per_user
            )
        });
    }
}

/// The tags columns of every user, judged one row at a time: both stores keep a user's
/// tags as [`crate::model::tags_json`] in its row, so the rules over tags are checked here
/// once, in Rust, rather than in each database's JSON dialect.
#[derive(Debug, Default)]
pub struct TagScan {
    pub tags: i64,
    pub bad_tags: i64,
    /// Inboxes outside 0..=2^31-1.
    pub bad_inboxes: i64,
    pub keys: std::collections::BTreeSet<String>,
    pub long_values: i64,
    pub over_cap: i64,
}

impl TagScan {
    /// Adds one user's tags column.
    pub fn add(&mut self, text: &str, limits: &TagLimits) {
        let Ok(tags) = crate::model::parse_tags_json(text) else {
            self.bad_tags += 1;
            return;
        };
        let mut per_inbox: std::collections::BTreeMap<u32, usize> = Default::default();
        for (inbox, key, value) in tags {
            self.tags += 1;
            if inbox > i32::MAX as u32 {
                self.bad_inboxes += 1;
            }
            *per_inbox.entry(inbox).or_default() += 1;
            if value.len() > limits.max_value_bytes {
                self.long_values += 1;
            }
            self.keys.insert(key);
        }
        self.over_cap += per_inbox
            .values()
            .filter(|n| **n > limits.max_per_user)
            .count() as i64;
    }
}

/// The distinct keys in `keys` that break the tag rules, each with why.
pub fn bad_keys(keys: impl IntoIterator<Item = String>, limits: &TagLimits) -> Vec<String> {
    keys.into_iter()
        .filter_map(|key| bad_key(&key, limits).map(|why| format!("{key:?}: {why}")))
        .collect()
}

/// Whether a stored tag key could have been written through the API (the same rules the
/// decoder applies); `None` when it could.
pub fn bad_key(key: &str, limits: &TagLimits) -> Option<String> {
    if key.is_empty() || key.len() > limits.max_key_bytes {
        return Some(format!(
            "{} bytes (allowed 1..={})",
            key.len(),
            limits.max_key_bytes
        ));
    }
    if key.contains(':') {
        return Some("contains ':'".into());
    }
    if key.chars().any(char::is_control) {
        return Some("contains a control character".into());
    }
    None
}
