//! Filters in requests (API.md §6): parsing the two request forms (the vendor's `Tags` /
//! `TagOp` and the tree `Filter`) into a [`Filter`], validating everything up front
//! (shape, limits, tag key and value rules), so an evaluation (`audience::filter`) never
//! fails.

use std::fmt::{self, Write as _};

use serde_json::Value;

use super::decode::check_tags;
use crate::api::ApiError;
use crate::config::TagLimits;
use crate::model::TagOp;
pub use crate::model::filter::Filter;
use crate::signing::truncate;

/// The filter fields of a request body (CountAudience, ListAudience, later UserBroadcast),
/// to be embedded in an Action's body struct with `#[serde(flatten)]`.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct FilterFields {
    pub tags: Option<Vec<String>>,
    pub tag_op: Option<i64>,
    pub filter: Option<serde_json::Value>,
}

/// Items in one And/Or list.
pub const MAX_LIST: usize = 32;
/// Tag/Key leaves in the whole tree.
pub const MAX_LEAVES: usize = 32;
/// Nesting levels, the root being level 1.
pub const MAX_DEPTH: usize = 8;

/// The operator names of the filter tree, for messages.
const NAMES: &str = "Tag, Key, And, Or, Not";

impl FilterFields {
    /// Validates and builds the filter. `max_vendor_tags` is the limit on the vendor `Tags`
    /// list (default 10, configurable by the caller).
    pub fn parse(self, limits: &TagLimits, max_vendor_tags: usize) -> Result<Filter, ApiError> {
        let tree = match self.filter {
            None | Some(Value::Null) => None,
            Some(v) => Some(v),
        };
        match tree {
            Some(_) if self.tags.is_some() || self.tag_op.is_some() => Err(ApiError::invalid(
                "send either Tags (with TagOp) or Filter, not both",
            )),
            Some(tree) => Walk {
                limits,
                leaves: 0,
                path: String::from("Filter"),
            }
            .node(&tree, 1),
            None => vendor(self.tags, self.tag_op, limits, max_vendor_tags),
        }
    }
}

/// The vendor form: `Tags` (strings "k:v") combined by `TagOp`.
fn vendor(
    tags: Option<Vec<String>>,
    tag_op: Option<i64>,
    limits: &TagLimits,
    max: usize,
) -> Result<Filter, ApiError> {
    let all = match tag_op {
        None | Some(0) => false,
        Some(1) => true,
        Some(n) => {
            return Err(ApiError::invalid(format!(
                "TagOp must be 0 (any) or 1 (all), got {n}"
            )));
        }
    };
    let tags = tags.unwrap_or_default();
    if tags.is_empty() {
        return Ok(Filter::All);
    }
    if tags.len() > max {
        return Err(ApiError::invalid(format!(
            "Tags has {} strings; at most {max} are allowed",
            tags.len()
        )));
    }
    let mut leaves = Vec::with_capacity(tags.len());
    for (i, s) in tags.iter().enumerate() {
        leaves.push(tag_leaf(s, limits).map_err(|e| ApiError::invalid(format!("Tags[{i}]: {e}")))?);
    }
    Ok(if leaves.len() == 1 {
        leaves.swap_remove(0)
    } else if all {
        Filter::And(leaves)
    } else {
        Filter::Or(leaves)
    })
}

/// `"k:v"` is key `k`, value `v` (split at the first `:`); `"k"` is key `k`, value `""`.
/// Both must pass the checks of tags being written.
fn tag_leaf(s: &str, limits: &TagLimits) -> Result<Filter, String> {
    let (key, value) = s.split_once(':').unwrap_or((s, ""));
    let tag = (key.to_owned(), value.to_owned());
    check_tags(std::slice::from_ref(&tag), TagOp::Upsert, limits)?;
    let (key, value) = tag;
    Ok(Filter::Tag { key, value })
}

/// A key alone: the key checks only.
fn key_leaf(key: &str, limits: &TagLimits) -> Result<Filter, String> {
    let tag = (key.to_owned(), String::new());
    check_tags(std::slice::from_ref(&tag), TagOp::Delete, limits)?;
    Ok(Filter::Key(tag.0))
}

/// How a JSON value of the wrong kind is named in messages.
fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

/// The walk over a filter tree: the path of the node being read (for messages) and the
/// leaves seen so far.
struct Walk<'l> {
    limits: &'l TagLimits,
    leaves: usize,
    path: String,
}

impl Walk<'_> {
    fn err(&self, msg: impl fmt::Display) -> ApiError {
        ApiError::invalid(format!("{}: {msg}", self.path))
    }

    /// Reads the node at `self.path`, on level `depth` (the root is 1).
    fn node(&mut self, v: &Value, depth: usize) -> Result<Filter, ApiError> {
        if depth > MAX_DEPTH {
            return Err(self.err(format_args!(
                "the filter is nested more than {MAX_DEPTH} levels deep (the limit is {MAX_DEPTH})"
            )));
        }
        let Value::Object(obj) = v else {
            return Err(self.err(format_args!(
                "expected an object with one member, one of {NAMES}; got {}",
                kind(v)
            )));
        };
        let mut members = obj.iter();
        let (name, inner) = match (members.next(), members.next()) {
            (Some(member), None) => member,
            (None, _) => {
                return Err(self.err(format_args!(
                    "expected an object with one member, one of {NAMES}; got an empty object"
                )));
            }
            (Some(_), Some(_)) => {
                let names: Vec<String> = obj
                    .keys()
                    .take(4)
                    .map(|k| format!("{:?}", truncate(k, 32)))
                    .collect();
                let more = if obj.len() > 4 { ", ..." } else { "" };
                return Err(self.err(format_args!(
                    "expected an object with one member, one of {NAMES}; got {} members ({}{more})",
                    obj.len(),
                    names.join(", ")
                )));
            }
        };
        if !matches!(name.as_str(), "Tag" | "Key" | "And" | "Or" | "Not") {
            return Err(self.err(format_args!(
                "expected one of {NAMES}, got {:?}",
                truncate(name, 64)
            )));
        }
        if matches!(name.as_str(), "Tag" | "Key") {
            self.leaves += 1;
            if self.leaves > MAX_LEAVES {
                return Err(self.err(format_args!(
                    "the filter has more than {MAX_LEAVES} leaves (Tag or Key); the limit is {MAX_LEAVES}"
                )));
            }
        }
        let mark = self.path.len();
        self.path.push('.');
        self.path.push_str(name);
        let out = match name.as_str() {
            "Tag" => match inner {
                Value::String(s) => tag_leaf(s, self.limits).map_err(|e| self.err(e)),
                other => Err(self.err(format_args!(
                    "expected a string \"key:value\", got {}",
                    kind(other)
                ))),
            },
            "Key" => match inner {
                Value::String(s) => key_leaf(s, self.limits).map_err(|e| self.err(e)),
                other => Err(self.err(format_args!(
                    "expected a string (a tag key), got {}",
                    kind(other)
                ))),
            },
            "Not" => self
                .node(inner, depth + 1)
                .map(|f| Filter::Not(Box::new(f))),
            and_or => {
                let items = self.list(inner, depth)?;
                Ok(if and_or == "And" {
                    Filter::And(items)
                } else {
                    Filter::Or(items)
                })
            }
        };
        self.path.truncate(mark);
        out
    }

    /// The items of the And/Or list at `self.path`, whose node is on level `depth`.
    fn list(&mut self, v: &Value, depth: usize) -> Result<Vec<Filter>, ApiError> {
        let Value::Array(items) = v else {
            return Err(self.err(format_args!(
                "expected a list of 1 to {MAX_LIST} filters, got {}",
                kind(v)
            )));
        };
        if items.is_empty() || items.len() > MAX_LIST {
            return Err(self.err(format_args!(
                "a list holds 1 to {MAX_LIST} filters, got {}",
                items.len()
            )));
        }
        let mut out = Vec::with_capacity(items.len());
        for (i, item) in items.iter().enumerate() {
            let mark = self.path.len();
            let _ = write!(self.path, "[{i}]");
            let f = self.node(item, depth + 1)?;
            self.path.truncate(mark);
            out.push(f);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use serde_json::json;

    use super::*;
    use crate::api::ErrorCode;

    fn limits() -> TagLimits {
        TagLimits {
            max_key_bytes: 16,
            max_value_bytes: 32,
            ..TagLimits::default()
        }
    }

    fn parse(body: Value) -> Result<Filter, ApiError> {
        let fields: FilterFields = serde_json::from_value(body).expect("the fields decode");
        fields.parse(&limits(), 10)
    }

    /// The InvalidParam message of a refused body.
    fn refused(body: Value) -> String {
        match parse(body.clone()) {
            Ok(f) => panic!("{body} was accepted as {f:?}"),
            Err(e) => {
                assert_eq!(e.code, ErrorCode::InvalidParam, "{}", e.message);
                e.message
            }
        }
    }

    fn tag(k: &str, v: &str) -> Filter {
        Filter::Tag {
            key: k.into(),
            value: v.into(),
        }
    }

    fn nested_not(depth: usize) -> Value {
        let mut v = json!({"Tag": "a:b"});
        for _ in 1..depth {
            v = json!({ "Not": v });
        }
        v
    }

    #[test]
    fn vendor_form_absent_or_empty_is_everyone() {
        assert_eq!(parse(json!({})).unwrap(), Filter::All);
        assert_eq!(parse(json!({"Tags": []})).unwrap(), Filter::All);
        assert_eq!(parse(json!({"Tags": [], "TagOp": 1})).unwrap(), Filter::All);
        assert_eq!(
            parse(json!({"Tags": null, "Filter": null})).unwrap(),
            Filter::All
        );
    }

    #[test]
    fn vendor_form_tag_op() {
        assert_eq!(parse(json!({"Tags": ["a:1"]})).unwrap(), tag("a", "1"));
        assert_eq!(
            parse(json!({"Tags": ["a:1"], "TagOp": 1})).unwrap(),
            tag("a", "1")
        );
        assert_eq!(
            parse(json!({"Tags": ["a:1", "a:2"]})).unwrap(),
            Filter::Or(vec![tag("a", "1"), tag("a", "2")])
        );
        assert_eq!(
            parse(json!({"Tags": ["a:1", "b:2"], "TagOp": 0})).unwrap(),
            Filter::Or(vec![tag("a", "1"), tag("b", "2")])
        );
        assert_eq!(
            parse(json!({"Tags": ["a:1", "b:2", "a:1"], "TagOp": 1})).unwrap(),
            Filter::And(vec![tag("a", "1"), tag("b", "2"), tag("a", "1")])
        );
        let msg = refused(json!({"Tags": ["a:1"], "TagOp": 2}));
        assert_eq!(msg, "TagOp must be 0 (any) or 1 (all), got 2");
        let msg = refused(json!({"TagOp": -1}));
        assert!(msg.contains("got -1"), "{msg}");
    }

    #[test]
    fn vendor_form_string_parse() {
        assert_eq!(parse(json!({"Tags": ["k"]})).unwrap(), tag("k", ""));
        assert_eq!(parse(json!({"Tags": ["k:"]})).unwrap(), tag("k", ""));
        assert_eq!(parse(json!({"Tags": ["a:b:c"]})).unwrap(), tag("a", "b:c"));
        assert_eq!(
            parse(json!({"Filter": {"Tag": "k"}})).unwrap(),
            tag("k", "")
        );
        assert_eq!(
            parse(json!({"Filter": {"Tag": "a:b:c"}})).unwrap(),
            tag("a", "b:c")
        );
    }

    #[test]
    fn vendor_form_limits_and_checks() {
        let ten: Vec<String> = (0..10).map(|i| format!("k:{i}")).collect();
        assert!(matches!(parse(json!({ "Tags": ten })).unwrap(), Filter::Or(v) if v.len() == 10));
        let eleven: Vec<String> = (0..11).map(|i| format!("k:{i}")).collect();
        let msg = refused(json!({ "Tags": eleven }));
        assert!(
            msg.contains("Tags") && msg.contains("10") && msg.contains("11"),
            "{msg}"
        );
        // The limit is the caller's.
        let fields: FilterFields = serde_json::from_value(json!({ "Tags": eleven })).unwrap();
        assert!(fields.parse(&limits(), 11).is_ok());

        let msg = refused(json!({"Tags": ["a:1", "b:2", "c:3", ":x"]}));
        assert!(msg.starts_with("Tags[3]: tag key \"\""), "{msg}");
        let msg = refused(json!({"Tags": ["a\u{1}b:1"]}));
        assert!(
            msg.starts_with("Tags[0]: tag key") && msg.contains("control"),
            "{msg}"
        );
        let msg = refused(json!({"Tags": [format!("a:{}", "v".repeat(33))]}));
        assert!(
            msg.starts_with("Tags[0]: value of tag key \"a\" is 33 bytes"),
            "{msg}"
        );
        assert!(msg.contains("32"), "{msg}");
        let msg = refused(json!({"Tags": [format!("{}:1", "k".repeat(17))]}));
        assert!(
            msg.starts_with("Tags[0]: tag key") && msg.contains("16"),
            "{msg}"
        );
    }

    #[test]
    fn both_forms_at_once_are_refused() {
        let f = json!({"Tag": "a:1"});
        for body in [
            json!({"Tags": ["a:1"], "Filter": f}),
            json!({"Tags": [], "Filter": f}),
            json!({"TagOp": 0, "Filter": f}),
            json!({"Tags": ["a:1"], "TagOp": 1, "Filter": f}),
        ] {
            let msg = refused(body);
            assert!(
                msg.contains("either Tags (with TagOp) or Filter, not both"),
                "{msg}"
            );
        }
        // A null Filter is absent.
        assert_eq!(
            parse(json!({"Tags": ["a:1"], "Filter": null})).unwrap(),
            tag("a", "1")
        );
    }

    #[test]
    fn tree_form_builds_the_tree() {
        let body = json!({"Filter": {"And": [
            {"Tag": "a:1"},
            {"Or": [{"Key": "b"}, {"Not": {"Tag": "c:"}}]},
        ]}});
        assert_eq!(
            parse(body).unwrap(),
            Filter::And(vec![
                tag("a", "1"),
                Filter::Or(vec![
                    Filter::Key("b".into()),
                    Filter::Not(Box::new(tag("c", "")))
                ]),
            ])
        );
    }

    #[test]
    fn tree_form_leaf_checks() {
        let msg = refused(json!({"Filter": {"Key": "a:b"}}));
        assert!(msg.starts_with("Filter.Key: tag key \"a:b\""), "{msg}");
        assert!(msg.contains("':'"), "{msg}");
        let msg = refused(json!({"Filter": {"Key": ""}}));
        assert!(msg.starts_with("Filter.Key: tag key \"\""), "{msg}");
        let msg = refused(json!({"Filter": {"Or": [{"Tag": "a:1"}, {"Tag": "a\nb:1"}]}}));
        assert!(
            msg.starts_with("Filter.Or[1].Tag: tag key") && msg.contains("control"),
            "{msg}"
        );
        let long = format!("a:{}", "v".repeat(33));
        let msg = refused(json!({"Filter": {"Not": {"Tag": long}}}));
        assert!(
            msg.starts_with("Filter.Not.Tag: value of tag key \"a\" is 33 bytes"),
            "{msg}"
        );
        // A Key is a key only: any value length is irrelevant, a long key is not.
        let msg = refused(json!({"Filter": {"Key": "k".repeat(17)}}));
        assert!(
            msg.starts_with("Filter.Key: tag key") && msg.contains("16"),
            "{msg}"
        );
    }

    #[test]
    fn tree_form_lists() {
        let msg = refused(json!({"Filter": {"And": []}}));
        assert_eq!(msg, "Filter.And: a list holds 1 to 32 filters, got 0");
        let msg = refused(json!({"Filter": {"Not": {"Or": []}}}));
        assert_eq!(msg, "Filter.Not.Or: a list holds 1 to 32 filters, got 0");
        let items: Vec<Value> = (0..33).map(|_| json!({"Not": {"Key": "a"}})).collect();
        let msg = refused(json!({"Filter": {"Or": items}}));
        assert_eq!(msg, "Filter.Or: a list holds 1 to 32 filters, got 33");
        let items: Vec<Value> = (0..32)
            .map(|i| json!({ "Tag": format!("a:{i}") }))
            .collect();
        assert!(
            matches!(parse(json!({"Filter": {"Or": items}})).unwrap(), Filter::Or(v) if v.len() == 32)
        );
    }

    #[test]
    fn tree_form_leaf_limit() {
        // 32 leaves in all: accepted; 33 (spread over two lists): refused where passed.
        let half = |n: usize| -> Vec<Value> {
            (0..n).map(|i| json!({ "Tag": format!("a:{i}") })).collect()
        };
        let ok = json!({"Filter": {"And": [{"Or": half(16)}, {"Or": half(16)}]}});
        assert!(parse(ok).is_ok());
        let bad = json!({"Filter": {"And": [{"Or": half(16)}, {"Or": half(17)}]}});
        let msg = refused(bad);
        assert_eq!(
            msg,
            "Filter.And[1].Or[16]: the filter has more than 32 leaves (Tag or Key); the limit is 32"
        );
    }

    #[test]
    fn tree_form_depth_limit() {
        assert!(parse(json!({ "Filter": nested_not(8) })).is_ok());
        let msg = refused(json!({ "Filter": nested_not(9) }));
        assert_eq!(
            msg,
            format!(
                "Filter{}: the filter is nested more than 8 levels deep (the limit is 8)",
                ".Not".repeat(8)
            )
        );
        // Refused at level 9 whatever lies below (here an error that is never reached).
        let mut v = json!({"Bogus": 1});
        for _ in 0..20 {
            v = json!({"And": [v]});
        }
        let msg = refused(json!({ "Filter": v }));
        assert!(
            msg.starts_with(&format!("Filter{}:", ".And[0]".repeat(8))),
            "{msg}"
        );
        assert!(msg.contains("8 levels"), "{msg}");
    }

    #[test]
    fn tree_form_wrong_shapes() {
        let cases = [
            (
                json!({"And": [{"Tag": "a:1"}, {"Tag": "b:1"}, {"Not": {"Xor": []}}]}),
                "Filter.And[2].Not: expected one of Tag, Key, And, Or, Not, got \"Xor\"",
            ),
            (
                json!({"tag": "a:1"}),
                "Filter: expected one of Tag, Key, And, Or, Not, got \"tag\"",
            ),
            (
                json!({}),
                "Filter: expected an object with one member, one of Tag, Key, And, Or, Not; got an empty object",
            ),
            (
                json!({"Key": "a", "Tag": "a:1"}),
                "Filter: expected an object with one member, one of Tag, Key, And, Or, Not; got 2 members (\"Key\", \"Tag\")",
            ),
            (
                json!("a:1"),
                "Filter: expected an object with one member, one of Tag, Key, And, Or, Not; got a string",
            ),
            (
                json!([{"Tag": "a:1"}]),
                "Filter: expected an object with one member, one of Tag, Key, And, Or, Not; got a list",
            ),
            (
                json!({"Not": null}),
                "Filter.Not: expected an object with one member, one of Tag, Key, And, Or, Not; got null",
            ),
            (
                json!({"Tag": 5}),
                "Filter.Tag: expected a string \"key:value\", got a number",
            ),
            (
                json!({"Key": ["a"]}),
                "Filter.Key: expected a string (a tag key), got a list",
            ),
            (
                json!({"And": {}}),
                "Filter.And: expected a list of 1 to 32 filters, got an object",
            ),
            (
                json!({"Or": [{"Tag": "a:1"}, true]}),
                "Filter.Or[1]: expected an object with one member, one of Tag, Key, And, Or, Not; got a boolean",
            ),
        ];
        for (filter, want) in cases {
            assert_eq!(refused(json!({ "Filter": filter })), want);
        }
    }

    #[test]
    fn messages_truncate_user_strings() {
        let huge = "X".repeat(100_000);
        let mut obj = serde_json::Map::new();
        obj.insert(huge.clone(), json!(1));
        let msg = refused(json!({ "Filter": Value::Object(obj.clone()) }));
        assert!(msg.len() < 200, "{} bytes", msg.len());
        obj.insert(format!("{huge}2"), json!(1));
        let msg = refused(json!({ "Filter": Value::Object(obj) }));
        assert!(msg.len() < 300, "{} bytes", msg.len());
        let msg = refused(json!({"Filter": {"Key": huge}}));
        assert!(msg.len() < 200, "{} bytes", msg.len());
        let msg = refused(json!({"Tags": [format!("{huge}:1")]}));
        assert!(msg.len() < 200, "{} bytes", msg.len());
    }

    #[test]
    fn fields_flatten_into_a_body() {
        #[derive(serde::Deserialize)]
        #[serde(rename_all = "PascalCase")]
        struct Body {
            app_id: i64,
            #[serde(flatten)]
            filter: FilterFields,
        }
        let body: Body =
            serde_json::from_value(json!({"AppId": 1, "Tags": ["a:1", "b"], "TagOp": 1})).unwrap();
        assert_eq!(body.app_id, 1);
        assert_eq!(
            body.filter.parse(&limits(), 10).unwrap(),
            Filter::And(vec![tag("a", "1"), tag("b", "")])
        );
        let body: Body =
            serde_json::from_value(json!({"AppId": 1, "Filter": {"Key": "a"}})).unwrap();
        assert_eq!(
            body.filter.parse(&limits(), 10).unwrap(),
            Filter::Key("a".into())
        );
    }

    /// The tree form of a filter without `All`, as a client would send it.
    fn to_json(f: &Filter) -> Value {
        match f {
            Filter::All => unreachable!("no tree form"),
            Filter::Tag { key, value } => json!({ "Tag": format!("{key}:{value}") }),
            Filter::Key(key) => json!({ "Key": key }),
            Filter::And(items) => json!({ "And": items.iter().map(to_json).collect::<Vec<_>>() }),
            Filter::Or(items) => json!({ "Or": items.iter().map(to_json).collect::<Vec<_>>() }),
            Filter::Not(inner) => json!({ "Not": to_json(inner) }),
        }
    }

    fn has_all(f: &Filter) -> bool {
        match f {
            Filter::All => true,
            Filter::Tag { .. } | Filter::Key(_) => false,
            Filter::And(items) | Filter::Or(items) => items.iter().any(has_all),
            Filter::Not(inner) => has_all(inner),
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn the_tree_form_parses_back(f in crate::model::filter::strategy::arbitrary()) {
            prop_assume!(!has_all(&f));
            let parsed = parse(json!({ "Filter": to_json(&f) })).unwrap();
            prop_assert_eq!(parsed, f);
        }
    }
}
