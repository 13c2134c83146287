//! Decoding and validating request bodies, shared by the Actions. Structural problems fail
//! the whole request (`JsonParsingError`, `InvalidParam`); problems with one user's tags
//! are returned as a message for that user's FailedInfo.

use std::fmt;

use serde::de::{self, DeserializeOwned, MapAccess, Visitor};
use serde::{Deserialize, Deserializer};

use crate::api::{ApiError, ErrorCode};
use crate::config::TagLimits;
use crate::signing::truncate;
use crate::store::{Tag, TagOp};

/// Parses a JSON body into `T`. Not JSON: `JsonParsingError`. JSON of the wrong shape
/// (types, missing fields, duplicate fields): `InvalidParam`, naming the field's path.
/// serde_json refuses nesting deeper than 128 levels without recursing further.
pub fn decode<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    let not_json = |e: serde_json::Error| {
        ApiError::new(
            ErrorCode::JsonParsingError,
            format!("the body is not valid JSON: {e}"),
        )
    };
    match body.iter().find(|b| !b.is_ascii_whitespace()) {
        None => {
            return Err(ApiError::new(
                ErrorCode::JsonParsingError,
                "the request body is empty; send a JSON object",
            ));
        }
        // serde would also take a struct from a JSON array ([AppId, ...]); only objects
        // are the API. Valid JSON of another kind is InvalidParam, anything else not JSON.
        Some(b'{') => {}
        Some(_) => {
            serde_json::from_slice::<serde::de::IgnoredAny>(body).map_err(not_json)?;
            return Err(ApiError::invalid("the body must be a JSON object"));
        }
    }
    // Plain serde first: the path of the field at fault is tracked only when there is one
    // to report, by decoding the body again.
    if let Ok(value) = serde_json::from_slice(body) {
        return Ok(value);
    }
    let mut de = serde_json::Deserializer::from_slice(body);
    let value = serde_path_to_error::deserialize::<_, T>(&mut de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        match inner.classify() {
            serde_json::error::Category::Data if path == "." => {
                ApiError::invalid(format!("body: {inner}"))
            }
            serde_json::error::Category::Data => ApiError::invalid(format!("{path}: {inner}")),
            _ => ApiError::new(
                ErrorCode::JsonParsingError,
                format!("the body is not valid JSON: {inner}"),
            ),
        }
    })?;
    de.end().map_err(|e| {
        ApiError::new(
            ErrorCode::JsonParsingError,
            format!("the body is not valid JSON: {e}"),
        )
    })?;
    // Unreachable in practice (the plain decode failed, so one of the two above fails
    // too); returned as decoded rather than assumed.
    Ok(value)
}

/// A JSON object of string values, in the order sent, refusing duplicate keys (a map
/// type would silently keep the last).
#[derive(Debug, Default, Clone)]
pub struct StringMap(pub Vec<(String, String)>);

impl<'de> Deserialize<'de> for StringMap {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = StringMap;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an object of string values")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<StringMap, A::Error> {
                let mut out: Vec<(String, String)> =
                    Vec::with_capacity(map.size_hint().unwrap_or(4).min(128));
                while let Some((k, v)) = map.next_entry::<String, String>()? {
                    out.push((k, v));
                }
                if let Some(k) = duplicate_key(&out) {
                    return Err(de::Error::custom(format!(
                        "duplicate key {:?}",
                        truncate(k, 64)
                    )));
                }
                Ok(StringMap(out))
            }
        }
        d.deserialize_map(V)
    }
}

pub fn app_id(v: i64) -> Result<u32, ApiError> {
    if (1..=i64::from(i32::MAX)).contains(&v) {
        Ok(v as u32)
    } else {
        Err(ApiError::invalid(format!(
            "AppId must be between 1 and 2147483647, got {v}"
        )))
    }
}

pub fn inbox_type(v: Option<i64>) -> Result<u32, ApiError> {
    match v {
        None => Ok(crate::store::DEFAULT_INBOX),
        Some(v) if (0..=i64::from(i32::MAX)).contains(&v) => Ok(v as u32),
        Some(v) => Err(ApiError::invalid(format!(
            "InboxType must be between 0 and 2147483647, got {v}"
        ))),
    }
}

/// A user id; `path` names the field, built only when the id is refused.
pub fn user_id(v: i64, path: impl FnOnce() -> String) -> Result<i64, ApiError> {
    if v >= 1 {
        Ok(v)
    } else {
        Err(ApiError::invalid(format!(
            "{} must be a positive 64-bit integer, got {v}",
            path()
        )))
    }
}

pub fn count(field: &str, len: usize, max: usize) -> Result<(), ApiError> {
    if (1..=max).contains(&len) {
        Ok(())
    } else {
        Err(ApiError::invalid(format!(
            "{field} must have 1 to {max} entries, got {len}"
        )))
    }
}

/// `"k:v"` splits at the first `:`; `"k"` is key `k` with value `""`. A key given twice is
/// ambiguous and fails the request.
pub fn tag_strings(field: &str, list: Vec<String>) -> Result<Vec<Tag>, ApiError> {
    let mut out = Vec::with_capacity(list.len());
    for s in list {
        let (k, v) = match s.split_once(':') {
            Some((k, v)) => (k.to_owned(), v.to_owned()),
            None => (s, String::new()),
        };
        out.push((k, v));
    }
    if let Some(k) = duplicate_key(&out) {
        return Err(ApiError::invalid(format!(
            "{field}: key {:?} appears twice",
            truncate(k, 64)
        )));
    }
    Ok(out)
}

/// A key that appears more than once in `pairs`, if any. Tag lists are small (the cap is
/// 100 per user): sorted indexes find one without copying a key.
fn duplicate_key(pairs: &[(String, String)]) -> Option<&str> {
    let mut order: Vec<usize> = (0..pairs.len()).collect();
    order.sort_unstable_by(|&a, &b| pairs[a].0.cmp(&pairs[b].0));
    order
        .windows(2)
        .find(|w| pairs[w[0]].0 == pairs[w[1]].0)
        .map(|w| pairs[w[0]].0.as_str())
}

/// Checks keys (and, for upserts, values) against the limits; the message names the key
/// and the limit it broke.
pub fn check_tags(tags: &[Tag], op: TagOp, limits: &TagLimits) -> Result<(), String> {
    for (k, v) in tags {
        if k.is_empty() || k.len() > limits.max_key_bytes {
            return Err(format!(
                "tag key {:?} is {} bytes; keys are 1 to {} bytes",
                truncate(k, 64),
                k.len(),
                limits.max_key_bytes
            ));
        }
        if k.chars().any(|c| c == ':' || c.is_control()) {
            return Err(format!(
                "tag key {:?} contains ':' or a control character",
                truncate(k, 64)
            ));
        }
        if op == TagOp::Upsert && v.len() > limits.max_value_bytes {
            return Err(format!(
                "value of tag key {:?} is {} bytes; the limit is {} bytes",
                truncate(k, 64),
                v.len(),
                limits.max_value_bytes
            ));
        }
    }
    Ok(())
}
