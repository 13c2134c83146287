//! Filters (API.md §6): parsing the two request forms into a [`Filter`], and evaluating a
//! filter over the roaring bitmaps of one (app, inbox).
//!
//! Parsing validates everything up front (shape, limits, tag key and value rules), so an
//! evaluation never fails. Evaluation reads bitmaps of per-app user ordinals through
//! [`Bitmaps`]; every result is a subset of [`Bitmaps::registered`].
//!
//! Evaluation plans each conjunction: nested `And`s are flattened, `Not`s pushed inwards as
//! far as they go for free (`Not(Not(x))` is `x`, `Not(Or(a, b))` is `Not(a)` and `Not(b)`),
//! the positive operands are intersected smallest first, the negative ones subtracted, and
//! the work stops as soon as the accumulator is empty. Leaf bitmaps are only ever borrowed;
//! [`count`] does the last step of a plan as a `*_len` operation so the answer is never
//! materialized when it need not be.

use std::borrow::Cow;
use std::fmt::{self, Write as _};
use std::sync::LazyLock;

use roaring::{MultiOps, RoaringBitmap};
use serde_json::Value;

use crate::actions::decode::check_tags;
use crate::api::ApiError;
use crate::config::TagLimits;
use crate::signing::truncate;
use crate::store::TagOp;

/// A parsed, validated filter.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Filter {
    /// Every registered user of the app (vendor form with Tags absent or empty).
    All,
    /// Users whose tag `key` equals `value` exactly.
    Tag {
        key: String,
        value: String,
    },
    /// Users that have tag `key`, any value.
    Key(String),
    And(Vec<Filter>),
    Or(Vec<Filter>),
    /// Registered users not selected by the inner filter.
    Not(Box<Filter>),
}

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

/// What evaluation reads: the bitmaps of one (app, inbox).
///
/// The tag and key bitmaps hold only ordinals of registered users (subsets of
/// [`registered`](Bitmaps::registered)); evaluation relies on it and does not intersect
/// them with the registered users again.
pub trait Bitmaps {
    /// Every registered user of the app.
    fn registered(&self) -> &RoaringBitmap;
    /// Users with tag key = value, if any.
    fn tag(&self, key: &str, value: &str) -> Option<&RoaringBitmap>;
    /// Users with the key, any value, if any.
    fn key(&self, key: &str) -> Option<&RoaringBitmap>;
}

/// The selected users.
pub fn evaluate(filter: &Filter, b: &impl Bitmaps) -> RoaringBitmap {
    eval(filter, b).into_owned()
}

/// How many users are selected: `evaluate(..).len()`, without materializing the answer
/// where it can.
pub fn count(filter: &Filter, b: &impl Bitmaps) -> u64 {
    if let Some(bm) = leaf(filter, b) {
        return bm.len();
    }
    match filter {
        Filter::Or(_) => {
            let mut terms = Vec::new();
            if or_terms(filter, &mut terms) {
                b.registered().len()
            } else {
                union_len(&terms, b)
            }
        }
        _ => match plan(filter, b) {
            Plan::Empty => 0,
            // Everything subtracted from `registered` is a subset of it.
            Plan::Registered(negs) => b.registered().len() - union_len(&negs, b),
            Plan::Run { start, mut steps } => {
                let Some(last) = steps.pop() else {
                    return start.len();
                };
                let acc = run(start, steps, b);
                if acc.is_empty() {
                    return 0;
                }
                let src = last.src.get(b);
                if last.keep {
                    acc.intersection_len(&src)
                } else {
                    acc.difference_len(&src)
                }
            }
        },
    }
}

/// The empty bitmap missing tags and keys stand for.
static EMPTY: LazyLock<RoaringBitmap> = LazyLock::new(RoaringBitmap::new);

/// The bitmap of a leaf (All, Tag, Key), borrowed; `None` for the other nodes.
fn leaf<'a, B: Bitmaps>(f: &Filter, b: &'a B) -> Option<&'a RoaringBitmap> {
    match f {
        Filter::All => Some(b.registered()),
        Filter::Tag { key, value } => Some(b.tag(key, value).unwrap_or(&EMPTY)),
        Filter::Key(key) => Some(b.key(key).unwrap_or(&EMPTY)),
        _ => None,
    }
}

fn eval<'a, B: Bitmaps>(f: &Filter, b: &'a B) -> Cow<'a, RoaringBitmap> {
    if let Some(bm) = leaf(f, b) {
        return Cow::Borrowed(bm);
    }
    match f {
        Filter::Or(_) => {
            let mut terms = Vec::new();
            if or_terms(f, &mut terms) {
                Cow::Borrowed(b.registered())
            } else {
                union(&terms, b)
            }
        }
        _ => match plan(f, b) {
            Plan::Empty => Cow::Owned(RoaringBitmap::new()),
            Plan::Registered(negs) => {
                let mut acc = Cow::Borrowed(b.registered());
                for neg in negs {
                    if acc.is_empty() {
                        break;
                    }
                    acc = apply(acc, false, &eval(neg, b));
                }
                acc
            }
            Plan::Run { start, steps } => run(start, steps, b),
        },
    }
}

/// The operands of an Or, nested Ors flattened. True if one of them is `All` (then the
/// union is every registered user and `out` is incomplete).
fn or_terms<'f>(f: &'f Filter, out: &mut Vec<&'f Filter>) -> bool {
    match f {
        Filter::Or(items) => items.iter().any(|item| or_terms(item, out)),
        Filter::All => true,
        other => {
            out.push(other);
            false
        }
    }
}

/// The union of the operands, none of them `All`.
fn union<'a, B: Bitmaps>(terms: &[&Filter], b: &'a B) -> Cow<'a, RoaringBitmap> {
    match terms {
        [] => Cow::Owned(RoaringBitmap::new()),
        [only] => eval(only, b),
        _ => {
            let mut sets: Vec<Cow<'a, RoaringBitmap>> = terms.iter().map(|t| eval(t, b)).collect();
            // Reuse the largest computed operand as the accumulator, if there is one.
            let owned = sets
                .iter()
                .enumerate()
                .filter(|(_, s)| matches!(s, Cow::Owned(_)))
                .max_by_key(|(_, s)| s.len())
                .map(|(i, _)| i);
            match owned {
                Some(i) => {
                    let mut acc = sets.swap_remove(i).into_owned();
                    for s in &sets {
                        acc |= &**s;
                    }
                    Cow::Owned(acc)
                }
                None => Cow::Owned(sets.iter().map(|s| &**s).union()),
            }
        }
    }
}

/// The size of the union of the operands, none of them `All`.
fn union_len<B: Bitmaps>(terms: &[&Filter], b: &B) -> u64 {
    match terms {
        [] => 0,
        [only] => count(only, b),
        [rest @ .., last] => {
            let acc = union(rest, b);
            acc.union_len(&eval(last, b))
        }
    }
}

/// A conjunction, planned: the operands of nested Ands flattened, Nots pushed inwards.
enum Plan<'f, 'a> {
    /// Nothing is selected.
    Empty,
    /// No positive operand: the registered users less each of these.
    Registered(Vec<&'f Filter>),
    /// Start from `start`, apply `steps` in order.
    Run {
        start: Cow<'a, RoaringBitmap>,
        steps: Vec<Step<'f, 'a>>,
    },
}

/// Intersect with (`keep`) or subtract `src`.
struct Step<'f, 'a> {
    keep: bool,
    src: Src<'f, 'a>,
}

enum Src<'f, 'a> {
    Ready(Cow<'a, RoaringBitmap>),
    /// Evaluated only if the accumulator is not empty by then.
    Lazy(&'f Filter),
}

impl<'a> Src<'_, 'a> {
    fn get<B: Bitmaps>(self, b: &'a B) -> Cow<'a, RoaringBitmap> {
        match self {
            Src::Ready(c) => c,
            Src::Lazy(f) => eval(f, b),
        }
    }
}

/// The operands of a conjunction.
#[derive(Default)]
struct Terms<'f> {
    /// Tag, Key or Or (the others are flattened away).
    pos: Vec<&'f Filter>,
    /// Tag, Key or And.
    neg: Vec<&'f Filter>,
    /// A `Not(All)` operand: nothing is selected.
    none: bool,
}

impl<'f> Terms<'f> {
    fn add(&mut self, f: &'f Filter, positive: bool) {
        match (f, positive) {
            (Filter::And(items), true) => items.iter().for_each(|i| self.add(i, true)),
            // not (a or b) = not a and not b
            (Filter::Or(items), false) => items.iter().for_each(|i| self.add(i, false)),
            (Filter::Not(inner), _) => self.add(inner, !positive),
            // Every result is a subset of the registered users already.
            (Filter::All, true) => {}
            (Filter::All, false) => self.none = true,
            (other, true) => self.pos.push(other),
            (other, false) => self.neg.push(other),
        }
    }
}

fn plan<'f, 'a, B: Bitmaps>(f: &'f Filter, b: &'a B) -> Plan<'f, 'a> {
    let mut terms = Terms::default();
    terms.add(f, true);
    if terms.none {
        return Plan::Empty;
    }
    let mut leaves: Vec<&'a RoaringBitmap> = Vec::with_capacity(terms.pos.len());
    let mut complex: Vec<&'f Filter> = Vec::new();
    for p in terms.pos {
        match leaf(p, b) {
            Some(bm) if bm.is_empty() => return Plan::Empty,
            Some(bm) => leaves.push(bm),
            None => complex.push(p),
        }
    }
    leaves.sort_unstable_by_key(|bm| bm.len());
    let mut steps = Vec::with_capacity(leaves.len() + complex.len() + terms.neg.len());
    let start = if leaves.is_empty() {
        if complex.is_empty() {
            return Plan::Registered(terms.neg);
        }
        // Only computed operands: compute them all, start from the smallest.
        let mut sets: Vec<Cow<'a, RoaringBitmap>> = complex.iter().map(|c| eval(c, b)).collect();
        sets.sort_unstable_by_key(|s| s.len());
        let mut sets = sets.into_iter();
        let start = sets.next().unwrap_or_else(|| Cow::Borrowed(b.registered()));
        steps.extend(sets.map(|s| Step {
            keep: true,
            src: Src::Ready(s),
        }));
        start
    } else {
        let start = Cow::Borrowed(leaves[0]);
        steps.extend(leaves[1..].iter().map(|bm| Step {
            keep: true,
            src: Src::Ready(Cow::Borrowed(*bm)),
        }));
        steps.extend(complex.into_iter().map(|c| Step {
            keep: true,
            src: Src::Lazy(c),
        }));
        start
    };
    let mut lazy_negs = Vec::new();
    for n in terms.neg {
        match leaf(n, b) {
            Some(bm) if bm.is_empty() => {}
            Some(bm) => steps.push(Step {
                keep: false,
                src: Src::Ready(Cow::Borrowed(bm)),
            }),
            None => lazy_negs.push(Step {
                keep: false,
                src: Src::Lazy(n),
            }),
        }
    }
    steps.extend(lazy_negs);
    Plan::Run { start, steps }
}

fn run<'a, B: Bitmaps>(
    start: Cow<'a, RoaringBitmap>,
    steps: Vec<Step<'_, 'a>>,
    b: &'a B,
) -> Cow<'a, RoaringBitmap> {
    let mut acc = start;
    for step in steps {
        if acc.is_empty() {
            break;
        }
        acc = apply(acc, step.keep, &step.src.get(b));
    }
    acc
}

/// `acc & src` (`keep`) or `acc - src`, in place when `acc` is already owned.
fn apply<'a>(
    acc: Cow<'a, RoaringBitmap>,
    keep: bool,
    src: &RoaringBitmap,
) -> Cow<'a, RoaringBitmap> {
    Cow::Owned(match acc {
        Cow::Borrowed(a) if keep => a & src,
        Cow::Borrowed(a) => a - src,
        Cow::Owned(mut a) => {
            if keep {
                a &= src;
            } else {
                a -= src;
            }
            a
        }
    })
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet, HashMap};

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

    // ---- evaluation ----

    /// A universe of users: ordinal -> tags, and which ordinals are registered. The bitmaps
    /// hold registered users only, as the store's do; the unregistered ordinals have tags
    /// too, so a result computed against anything but `registered` would show them.
    #[derive(Debug, Clone)]
    struct Universe {
        users: BTreeMap<u32, BTreeMap<String, String>>,
        registered: BTreeSet<u32>,
    }

    struct Maps {
        registered: RoaringBitmap,
        tags: HashMap<(String, String), RoaringBitmap>,
        keys: HashMap<String, RoaringBitmap>,
    }

    impl Bitmaps for Maps {
        fn registered(&self) -> &RoaringBitmap {
            &self.registered
        }
        fn tag(&self, key: &str, value: &str) -> Option<&RoaringBitmap> {
            self.tags.get(&(key.to_owned(), value.to_owned()))
        }
        fn key(&self, key: &str) -> Option<&RoaringBitmap> {
            self.keys.get(key)
        }
    }

    impl Universe {
        fn maps(&self) -> Maps {
            let mut m = Maps {
                registered: self.registered.iter().copied().collect(),
                tags: HashMap::new(),
                keys: HashMap::new(),
            };
            for &u in &self.registered {
                for (k, v) in &self.users[&u] {
                    m.tags.entry((k.clone(), v.clone())).or_default().insert(u);
                    m.keys.entry(k.clone()).or_default().insert(u);
                }
            }
            m
        }

        fn brute(&self, f: &Filter) -> RoaringBitmap {
            self.registered
                .iter()
                .copied()
                .filter(|u| matches(f, &self.users[u]))
                .collect()
        }
    }

    fn matches(f: &Filter, tags: &BTreeMap<String, String>) -> bool {
        match f {
            Filter::All => true,
            Filter::Tag { key, value } => tags.get(key) == Some(value),
            Filter::Key(key) => tags.contains_key(key),
            Filter::And(items) => items.iter().all(|i| matches(i, tags)),
            Filter::Or(items) => items.iter().any(|i| matches(i, tags)),
            Filter::Not(inner) => !matches(inner, tags),
        }
    }

    fn universe() -> impl Strategy<Value = Universe> {
        let user = prop::collection::btree_map(0u32..3, 0u32..3, 0..=3);
        (
            prop::collection::btree_map(0u32..300, user, 0..=240),
            prop::collection::vec(any::<bool>(), 300),
        )
            .prop_map(|(users, reg)| {
                let registered = users
                    .keys()
                    .copied()
                    .filter(|&u| reg[u as usize])
                    .take(200)
                    .collect();
                let users = users
                    .into_iter()
                    .map(|(u, tags)| {
                        let tags = tags
                            .into_iter()
                            .map(|(k, v)| (format!("k{k}"), format!("v{v}")))
                            .collect();
                        (u, tags)
                    })
                    .collect();
                Universe { users, registered }
            })
    }

    /// Filters up to depth 4, over keys k0..k3 and values v0..v3 (k3 and v3 never occur).
    fn filter() -> impl Strategy<Value = Filter> {
        let leaf = prop_oneof![
            1 => Just(Filter::All),
            6 => (0u32..4, 0u32..4).prop_map(|(k, v)| tag(&format!("k{k}"), &format!("v{v}"))),
            3 => (0u32..4).prop_map(|k| Filter::Key(format!("k{k}"))),
        ];
        leaf.prop_recursive(3, 24, 4, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 1..=4).prop_map(Filter::And),
                prop::collection::vec(inner.clone(), 1..=4).prop_map(Filter::Or),
                inner.prop_map(|f| Filter::Not(Box::new(f))),
            ]
        })
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
        fn evaluate_and_count_match_brute_force(u in universe(), f in filter()) {
            let maps = u.maps();
            let want = u.brute(&f);
            let got = evaluate(&f, &maps);
            prop_assert!(got.is_subset(&maps.registered));
            prop_assert_eq!(&got, &want, "filter {:?}", f);
            prop_assert_eq!(count(&f, &maps), want.len(), "filter {:?}", f);
        }

        #[test]
        fn the_tree_form_parses_back(f in filter()) {
            prop_assume!(!has_all(&f));
            let parsed = parse(json!({ "Filter": to_json(&f) })).unwrap();
            prop_assert_eq!(parsed, f);
        }
    }

    #[test]
    fn evaluation_edge_cases() {
        let u = Universe {
            users: [
                (1, BTreeMap::from([("a".to_owned(), "1".to_owned())])),
                (2, BTreeMap::from([("a".to_owned(), "2".to_owned())])),
                (3, BTreeMap::new()),
                (7, BTreeMap::from([("a".to_owned(), "1".to_owned())])),
            ]
            .into_iter()
            .collect(),
            registered: BTreeSet::from([1, 2, 3]),
        };
        let maps = u.maps();
        let not = |f: Filter| Filter::Not(Box::new(f));
        for f in [
            Filter::All,
            not(Filter::All),
            Filter::And(vec![]),
            Filter::Or(vec![]),
            not(tag("a", "1")),
            not(tag("zz", "1")),
            Filter::And(vec![not(tag("a", "1")), not(tag("a", "2"))]),
            Filter::And(vec![tag("a", "1"), not(tag("a", "1"))]),
            Filter::And(vec![tag("zz", "1"), Filter::Or(vec![Filter::All])]),
            Filter::Or(vec![Filter::Key("a".into()), not(Filter::Key("a".into()))]),
            not(Filter::Or(vec![tag("a", "1"), tag("a", "2")])),
            not(Filter::And(vec![
                Filter::Key("a".into()),
                not(tag("a", "2")),
            ])),
        ] {
            let want = u.brute(&f);
            assert_eq!(evaluate(&f, &maps), want, "{f:?}");
            assert_eq!(count(&f, &maps), want.len(), "{f:?}");
        }
    }

    /// `cargo test --release --lib audience::filter::tests::timing -- --ignored --nocapture`
    #[test]
    #[ignore = "a timing, not a test"]
    fn timing() {
        use std::time::Instant;
        const USERS: u32 = 10_000_000;
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x % 1000
        };
        let mut a = RoaringBitmap::new();
        let mut c = RoaringBitmap::new();
        for u in 0..USERS {
            if next() < 100 {
                a.insert(u);
            }
            if next() < 50 {
                c.insert(u);
            }
        }
        let maps = Maps {
            registered: RoaringBitmap::from_iter(0..USERS),
            tags: HashMap::from([
                (("a".to_owned(), "1".to_owned()), a),
                (("c".to_owned(), "1".to_owned()), c),
            ]),
            keys: HashMap::new(),
        };
        let cases = [
            (
                "And of two tags",
                Filter::And(vec![tag("a", "1"), tag("c", "1")]),
            ),
            (
                "Or of two tags",
                Filter::Or(vec![tag("a", "1"), tag("c", "1")]),
            ),
            ("Not of a tag", Filter::Not(Box::new(tag("a", "1")))),
            (
                "And(tag, Not tag)",
                Filter::And(vec![tag("a", "1"), Filter::Not(Box::new(tag("c", "1")))]),
            ),
        ];
        {
            let a = &maps.tags[&("a".to_owned(), "1".to_owned())];
            let c = &maps.tags[&("c".to_owned(), "1".to_owned())];
            let runs = 200;
            let t = Instant::now();
            for _ in 0..runs {
                std::hint::black_box(std::hint::black_box(a).intersection_len(c));
            }
            println!(
                "baseline, roaring's intersection_len alone: {:?}",
                t.elapsed() / runs
            );
        }
        for (name, f) in cases {
            let want = evaluate(&f, &maps).len();
            let runs = 200;
            let t = Instant::now();
            for _ in 0..runs {
                assert_eq!(count(std::hint::black_box(&f), &maps), want);
            }
            let per_count = t.elapsed() / runs;
            let t = Instant::now();
            for _ in 0..runs {
                std::hint::black_box(evaluate(std::hint::black_box(&f), &maps));
            }
            let per_eval = t.elapsed() / runs;
            println!("{name}: {want} users; count {per_count:?}, evaluate {per_eval:?}");
        }
    }
}
