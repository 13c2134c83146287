//! CountAudience and ListAudience (API.md §6): how many, and which, registered users of an
//! app a tag filter selects in one inbox. Both forms of filter (`Tags` + `TagOp`, or the
//! `Filter` tree) are parsed by `actions::filter`, which UserBroadcast shares.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};

use super::decode;
use super::filter::{Filter, FilterFields};
use super::{Ctx, ResultJson, Rules, to_raw};
use crate::api::ApiError;

/// Most user ids in one ListAudience page, and the default.
pub const MAX_LIMIT: i64 = 1000;
pub const DEFAULT_LIMIT: i64 = 100;

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Body {
    app_id: i64,
    inbox_type: Option<i64>,
    cursor: Option<String>,
    limit: Option<i64>,
    // The filter's fields, named here rather than flattened in: a flattened field's type
    // error would not name the field.
    tags: Option<Vec<String>>,
    tag_op: Option<i64>,
    filter: Option<decode::Json>,
}

/// A decoded and validated audience request.
pub struct Parsed {
    pub app_id: u32,
    pub inbox: u32,
    pub filter: Filter,
    /// ListAudience only: continue after this ordinal.
    pub after: Option<u32>,
    pub limit: usize,
}

/// Decodes and validates without touching any state (also the fuzzing entry point).
pub fn parse(body: &[u8], rules: &Rules) -> Result<Parsed, ApiError> {
    let body: Body = decode::decode(body, rules.unknown_fields)?;
    let app_id = decode::app_id(body.app_id)?;
    let inbox = decode::inbox_type(body.inbox_type)?;
    let limit = body.limit.unwrap_or(DEFAULT_LIMIT);
    if !(1..=MAX_LIMIT).contains(&limit) {
        return Err(ApiError::invalid(format!(
            "Limit must be between 1 and {MAX_LIMIT}, got {limit}"
        )));
    }
    let after = match body.cursor.as_deref() {
        None | Some("") => None,
        Some(c) => Some(decode_cursor(c)?),
    };
    let filter = FilterFields {
        tags: body.tags,
        tag_op: body.tag_op,
        filter: body.filter.map(|j| j.0),
    }
    .parse(&rules.tags, rules.tags.max_filter_tags)?;
    Ok(Parsed {
        app_id,
        inbox,
        filter,
        after,
        limit: limit as usize,
    })
}

/// A cursor names the last ordinal of the previous page: opaque to clients, checked here.
fn encode_cursor(ordinal: u32) -> String {
    let mut raw = *b"tc1\0\0\0\0";
    raw[3..].copy_from_slice(&ordinal.to_be_bytes());
    URL_SAFE_NO_PAD.encode(raw)
}

fn decode_cursor(c: &str) -> Result<u32, ApiError> {
    let bad = || {
        ApiError::invalid(
            "Cursor is not a NextCursor this server returned; omit it to start from the first page",
        )
    };
    let raw = URL_SAFE_NO_PAD.decode(c).map_err(|_| bad())?;
    match raw.as_slice() {
        [b't', b'c', b'1', a, b, c, d] => Ok(u32::from_be_bytes([*a, *b, *c, *d])),
        _ => Err(bad()),
    }
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct CountAnswer {
    count: u64,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct ListAnswer {
    user_ids: Vec<i64>,
    next_cursor: String,
}

pub async fn count(body: &[u8], ctx: &mut Ctx<'_>) -> Result<ResultJson, ApiError> {
    let p = parse(body, ctx.rules)?;
    ctx.authorize(p.app_id)?;
    let count = ctx
        .store
        .count_audience(p.app_id, p.inbox, &p.filter)
        .await?;
    to_raw(&CountAnswer { count })
}

pub async fn list(body: &[u8], ctx: &mut Ctx<'_>) -> Result<ResultJson, ApiError> {
    let p = parse(body, ctx.rules)?;
    ctx.authorize(p.app_id)?;
    let page = ctx
        .store
        .list_audience(p.app_id, p.inbox, &p.filter, p.after, p.limit)
        .await?;
    to_raw(&ListAnswer {
        user_ids: page.user_ids,
        next_cursor: page.next.map(encode_cursor).unwrap_or_default(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_garbage_is_refused() {
        for o in [0, 1, 99, u32::MAX] {
            assert_eq!(decode_cursor(&encode_cursor(o)).unwrap(), o);
        }
        for bad in ["x", "dGMx", "////", "dGMyAAAAAA", &"A".repeat(5000)] {
            assert_eq!(
                decode_cursor(bad).unwrap_err().code,
                crate::api::ErrorCode::InvalidParam
            );
        }
    }
}
