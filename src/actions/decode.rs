//! Decoding and validating request bodies, shared by the Actions. Structural problems fail
//! the whole request (`JsonParsingError`, `InvalidParam`); problems with one user's tags
//! are returned as a message for that user's FailedInfo.

use std::fmt;

use serde::de::{self, DeserializeOwned, MapAccess, Visitor};
use serde::{Deserialize, Deserializer};

use super::strict::{Strict, UnknownFields};
use crate::api::{ApiError, ErrorCode};
use crate::config::TagLimits;
use crate::signing::truncate;
use crate::store::{Tag, TagOp};

/// Parses a JSON body into `T`. Not JSON: `JsonParsingError`. JSON of the wrong shape
/// (types, missing fields, duplicate fields, a field `T` does not declare unless `unknown`
/// says to skip it): `InvalidParam`, naming the field's path. serde_json refuses nesting
/// deeper than 128 levels without recursing further.
pub fn decode<T: DeserializeOwned>(body: &[u8], unknown: UnknownFields) -> Result<T, ApiError> {
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
    // The path of the field at fault is tracked only when there is one to report, by
    // decoding the body again.
    let mut de = serde_json::Deserializer::from_slice(body);
    if let Ok(value) = T::deserialize(Strict::new(&mut de, unknown))
        && de.end().is_ok()
    {
        return Ok(value);
    }
    let mut de = serde_json::Deserializer::from_slice(body);
    let value =
        serde_path_to_error::deserialize::<_, T>(Strict::new(&mut de, unknown)).map_err(|e| {
            // An unknown field fails while its key is read: the path ends in `?`.
            let path = e.path().to_string();
            let path = path.trim_end_matches('?').trim_end_matches('.');
            let inner = e.into_inner();
            match inner.classify() {
                serde_json::error::Category::Data => {
                    let what = without_position(&inner);
                    ApiError::invalid(if path.is_empty() {
                        what
                    } else {
                        format!("{path}: {what}")
                    })
                }
                _ => not_json(inner),
            }
        })?;
    de.end().map_err(not_json)?;
    // Unreachable in practice (the first decode failed, so one of the two above fails
    // too); returned as decoded rather than assumed.
    Ok(value)
}

/// A data error's message without serde_json's " at line L column C": the field's path
/// says where, and a body is one line anyway.
fn without_position(e: &serde_json::Error) -> String {
    let text = e.to_string();
    let suffix = format!(" at line {} column {}", e.line(), e.column());
    match text.strip_suffix(&suffix) {
        Some(t) => t.to_owned(),
        None => text,
    }
}

/// Any JSON value (a filter tree), refusing an object that repeats a key at any depth:
/// `serde_json::Value` would keep the last one silently, so that
/// `{"Not":{"Tag":"a:b"},"Not":{"Tag":"z:1"}}` meant the second filter only.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Json(pub serde_json::Value);

impl<'de> Deserialize<'de> for Json {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde_json::Value;
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Json;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_bool<E: de::Error>(self, v: bool) -> Result<Json, E> {
                Ok(Json(Value::Bool(v)))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Json, E> {
                Ok(Json(v.into()))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Json, E> {
                Ok(Json(v.into()))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Json, E> {
                Ok(Json(
                    serde_json::Number::from_f64(v).map_or(Value::Null, Value::Number),
                ))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Json, E> {
                Ok(Json(Value::String(v.to_owned())))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Json, E> {
                Ok(Json(Value::String(v)))
            }
            fn visit_unit<E: de::Error>(self) -> Result<Json, E> {
                Ok(Json(Value::Null))
            }
            fn visit_none<E: de::Error>(self) -> Result<Json, E> {
                Ok(Json(Value::Null))
            }
            fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Json, D::Error> {
                Json::deserialize(d)
            }
            fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Json, A::Error> {
                let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(64));
                while let Some(Json(v)) = seq.next_element()? {
                    out.push(v);
                }
                Ok(Json(Value::Array(out)))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Json, A::Error> {
                let mut out = serde_json::Map::new();
                while let Some(k) = map.next_key::<String>()? {
                    if out.contains_key(&k) {
                        return Err(de::Error::custom(format!(
                            "duplicate key {:?}",
                            truncate(&k, 64)
                        )));
                    }
                    let Json(v) = map.next_value()?;
                    out.insert(k, v);
                }
                Ok(Json(Value::Object(out)))
            }
        }
        d.deserialize_any(V)
    }
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
