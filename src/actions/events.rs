//! ListEvents (ours, API.md §9): an app's event log after a cursor, filtered by type and
//! user, with long polling; or its newest events (`Latest`).

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::decode;
use super::{Ctx, ResultJson, Rules, to_raw_sized};
use crate::api::{ApiError, ErrorCode};
use crate::events::{Query, ReadError, read_waiting};
use crate::model::events::EventType;

pub const MAX_LIMIT: i64 = 1000;
pub const DEFAULT_LIMIT: i64 = 100;
/// The longest long poll (API.md §9).
pub const MAX_WAIT_MS: i64 = 25_000;

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Body {
    app_id: i64,
    after: Option<String>,
    types: Option<Vec<String>>,
    user_id: Option<i64>,
    limit: Option<i64>,
    wait_ms: Option<i64>,
    latest: Option<bool>,
}

/// A valid ListEvents request.
#[derive(Debug)]
pub struct Parsed {
    pub app_id: u32,
    pub query: Query,
    pub wait: Duration,
}

/// A Seq as the API writes it: a decimal string of a non-negative integer.
pub fn parse_seq(field: &str, text: &str) -> Result<u64, ApiError> {
    if text.is_empty() || text.len() > 20 || !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(ApiError::invalid(format!(
            "{field} must be a Seq: a decimal string of digits as an event's Seq or NextAfter gives it, got {text:?}"
        )));
    }
    text.parse().map_err(|_| {
        ApiError::invalid(format!(
            "{field} must be a Seq below 18446744073709551616, got {text:?}"
        ))
    })
}

pub fn parse(body: &[u8], rules: &Rules) -> Result<Parsed, ApiError> {
    let b: Body = decode::decode(body, rules.unknown_fields)?;
    let app_id = decode::app_id(b.app_id)?;
    let after = b
        .after
        .as_deref()
        .map(|a| parse_seq("After", a))
        .transpose()?;
    let types = match b.types {
        None => None,
        Some(names) => {
            if names.is_empty() || names.len() > EventType::ALL.len() * 2 {
                return Err(ApiError::invalid(format!(
                    "Types must list 1 to {} event types (or be left out for all), got {}",
                    EventType::ALL.len(),
                    names.len()
                )));
            }
            let mut types = Vec::with_capacity(names.len());
            for (i, n) in names.iter().enumerate() {
                let t = EventType::parse(n).ok_or_else(|| {
                    ApiError::invalid(format!(
                        "Types[{i}] is {n:?}, not an event type; the types are: {}",
                        EventType::names()
                    ))
                })?;
                types.push(t);
            }
            Some(types)
        }
    };
    let user = b
        .user_id
        .map(|u| decode::user_id(u, || "UserId".into()))
        .transpose()?;
    let limit = b.limit.unwrap_or(DEFAULT_LIMIT);
    if !(1..=MAX_LIMIT).contains(&limit) {
        return Err(ApiError::invalid(format!(
            "Limit must be between 1 and {MAX_LIMIT}, got {limit}"
        )));
    }
    let wait_ms = b.wait_ms.unwrap_or(0);
    if !(0..=MAX_WAIT_MS).contains(&wait_ms) {
        return Err(ApiError::invalid(format!(
            "WaitMs must be between 0 and {MAX_WAIT_MS}, got {wait_ms}"
        )));
    }
    let latest = b.latest.unwrap_or(false);
    if latest && after.is_some() {
        return Err(ApiError::invalid(
            "Latest reads the newest events and takes no After; leave one of them out",
        ));
    }
    Ok(Parsed {
        app_id,
        query: Query {
            after,
            types,
            user,
            limit: limit as usize,
            latest,
        },
        wait: Duration::from_millis(if latest { 0 } else { wait_ms as u64 }),
    })
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct Answer<'a> {
    events: &'a [crate::events::EventRef],
    next_after: String,
    oldest_seq: String,
}

pub async fn list(body: &[u8], ctx: &mut Ctx<'_>) -> Result<ResultJson, ApiError> {
    let p = parse(body, ctx.rules)?;
    ctx.authorize(p.app_id)?;
    let mut draining = ctx.draining.clone();
    match read_waiting(ctx.store, p.app_id, &p.query, p.wait, &mut draining).await {
        Ok(page) => to_raw_sized(
            &Answer {
                events: &page.events,
                next_after: page.next_after.to_string(),
                oldest_seq: page.oldest.to_string(),
            },
            256 + page.events.len() * 256,
        ),
        Err(ReadError::Expired { oldest }) => Err(ApiError::new(
            ErrorCode::EventCursorExpired,
            format!(
                "After {} is older than the oldest retained event (OldestSeq {oldest}): events after it were trimmed by retention; resync the state (ListAudience, BatchGetUser) and continue from OldestSeq - 1 (or with After left out)",
                p.query.after.unwrap_or(0)
            ),
        )),
        Err(ReadError::Store(e)) => Err(e.into()),
    }
}
