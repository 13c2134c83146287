//! The filter tree (API.md §6): what CountAudience, ListAudience and UserBroadcast select
//! by. `actions::filter` parses the two request forms into it; `audience::filter`
//! evaluates it over the state's bitmaps.

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

/// Random filters for the property tests of the parser and of the evaluation.
#[cfg(test)]
pub(crate) mod strategy {
    use proptest::prelude::*;

    use super::Filter;

    fn tag(k: &str, v: &str) -> Filter {
        Filter::Tag {
            key: k.into(),
            value: v.into(),
        }
    }

    /// Filters up to depth 4, over keys k0..k3 and values v0..v3 (k3 and v3 never occur).
    pub fn arbitrary() -> impl Strategy<Value = Filter> {
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
}
