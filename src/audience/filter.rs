//! Filters evaluated (API.md §6) over the roaring bitmaps of one (app, inbox). The parser
//! (`actions::filter`) validated the tree, so an evaluation never fails. It reads bitmaps
//! of per-app user ordinals through [`Bitmaps`]; every result is a subset of
//! [`Bitmaps::registered`].
//!
//! Evaluation plans each conjunction: nested `And`s are flattened, `Not`s pushed inwards as
//! far as they go for free (`Not(Not(x))` is `x`, `Not(Or(a, b))` is `Not(a)` and `Not(b)`),
//! the positive operands are intersected smallest first, the negative ones subtracted, and
//! the work stops as soon as the accumulator is empty. Leaf bitmaps are only ever borrowed;
//! [`count`] does the last step of a plan as a `*_len` operation so the answer is never
//! materialized when it need not be.

use std::borrow::Cow;
use std::sync::LazyLock;

use roaring::{MultiOps, RoaringBitmap};

pub use crate::model::filter::Filter;

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

    use super::*;

    fn tag(k: &str, v: &str) -> Filter {
        Filter::Tag {
            key: k.into(),
            value: v.into(),
        }
    }

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

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn evaluate_and_count_match_brute_force(u in universe(), f in crate::model::filter::strategy::arbitrary()) {
            let maps = u.maps();
            let want = u.brute(&f);
            let got = evaluate(&f, &maps);
            prop_assert!(got.is_subset(&maps.registered));
            prop_assert_eq!(&got, &want, "filter {:?}", f);
            prop_assert_eq!(count(&f, &maps), want.len(), "filter {:?}", f);
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
