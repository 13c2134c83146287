//! UserBroadcast (vendor), and ours: ListUserBroadcasts (the recipient's pull),
//! GetBroadcast, ListBroadcasts and RecallBroadcast (API.md §7).

use std::collections::BTreeMap;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use super::decode::{self, StringMap};
use super::filter::{Filter, FilterFields};
use super::register_users::check_profile;
use super::{Ctx, ResultJson, Rules, to_raw};
use crate::api::{ApiError, ErrorCode};
use std::sync::Arc;

use crate::broadcast::{Delivery, Info, Loaded, NewBroadcast, Sent, send_token, utc_day};

/// MsgTTL bounds, seconds (vendor).
pub const MAX_TTL_SECS: i64 = 604_800;
/// Content bounds, bytes (ours).
pub const MAX_CONTENT_BYTES: usize = 65_536;
/// Page sizes of ListUserBroadcasts and ListBroadcasts.
pub const MAX_LIMIT: i64 = 100;
pub const DEFAULT_LIMIT: i64 = 20;

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct SendBody {
    app_id: i64,
    sender: i64,
    #[serde(rename = "MsgTTL")]
    msg_ttl: i64,
    msg_type: i64,
    content: String,
    inbox_type: Option<i64>,
    ext: Option<StringMap>,
    tags: Option<Vec<String>>,
    tag_op: Option<i64>,
    filter: Option<decode::Json>,
    client_token: Option<String>,
}

/// The longest `ClientToken`.
pub const MAX_CLIENT_TOKEN: usize = 64;

/// A decoded and validated UserBroadcast.
pub struct ParsedSend {
    pub broadcast: NewBroadcast,
    pub filter: Filter,
    /// `ClientToken`, when given.
    pub client_token: Option<String>,
}

/// `parse_send`'s broadcast has this token until the handler gives it the request's.
const NO_TOKEN: &str = "";

pub fn parse_send(body: &[u8], rules: &Rules) -> Result<ParsedSend, ApiError> {
    let b: SendBody = decode::decode(body, rules.unknown_fields)?;
    let filter_json = b.filter.map(|j| j.0);
    let app_id = decode::app_id(b.app_id)?;
    let inbox = decode::inbox_type(b.inbox_type)?;
    if b.sender < 1 {
        return Err(ApiError::invalid(format!(
            "Sender must be a positive user id, got {}",
            b.sender
        )));
    }
    if !(1..=MAX_TTL_SECS).contains(&b.msg_ttl) {
        return Err(ApiError::invalid(format!(
            "MsgTTL must be 1 to {MAX_TTL_SECS} seconds (7 days), got {}",
            b.msg_ttl
        )));
    }
    if i32::try_from(b.msg_type).is_err() {
        return Err(ApiError::invalid(format!(
            "MsgType must be a 32-bit integer, got {}",
            b.msg_type
        )));
    }
    if b.content.is_empty() || b.content.len() > MAX_CONTENT_BYTES {
        return Err(ApiError::invalid(format!(
            "Content is {} bytes; it must be 1 to {MAX_CONTENT_BYTES} bytes",
            b.content.len()
        )));
    }
    if let Some(t) = &b.client_token {
        let printable = t.bytes().all(|c| (0x20..=0x7e).contains(&c));
        if t.is_empty() || t.len() > MAX_CLIENT_TOKEN || !printable {
            return Err(ApiError::invalid(format!(
                "ClientToken must be 1 to {MAX_CLIENT_TOKEN} printable ASCII characters, got {} bytes{}",
                t.len(),
                if printable {
                    ""
                } else {
                    " with other characters"
                }
            )));
        }
    }
    let ext: BTreeMap<String, String> =
        b.ext.map(|m| m.0.into_iter().collect()).unwrap_or_default();
    check_profile(None, None, Some(&ext)).map_err(ApiError::invalid)?;
    // As sent, for GetBroadcast.
    let selector = json!({
        "Tags": b.tags.clone().unwrap_or_default(),
        "TagOp": b.tag_op.unwrap_or(0),
        "Filter": filter_json.clone().unwrap_or(Value::Null),
    })
    .to_string();
    let filter = FilterFields {
        tags: b.tags,
        tag_op: b.tag_op,
        filter: filter_json,
    }
    .parse(&rules.tags, rules.tags.max_filter_tags)?;
    Ok(ParsedSend {
        broadcast: NewBroadcast {
            app_id,
            inbox,
            sender: b.sender,
            msg_type: b.msg_type,
            content: b.content,
            ext,
            selector,
            ttl_secs: b.msg_ttl as u32,
            token: NO_TOKEN.to_owned(),
            origin: Default::default(),
        },
        filter,
        client_token: b.client_token,
    })
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct SendAnswer {
    broadcast_id: String,
    audience_count: u64,
    expire_time: i64,
}

pub async fn send(body: &[u8], ctx: &mut Ctx<'_>) -> Result<ResultJson, ApiError> {
    let ParsedSend {
        mut broadcast,
        filter,
        client_token,
    } = parse_send(body, ctx.rules)?;
    let app_id = broadcast.app_id;
    ctx.authorize(app_id)?;
    // Idempotent (API.md §7).
    broadcast.token = send_token(client_token.as_deref(), ctx.signature);
    broadcast.origin = ctx.origin.clone();
    let service = ctx.broadcasts;
    let sent = ctx
        .store
        .send_broadcast(
            broadcast,
            &filter,
            service.per_day,
            service.outlets(app_id),
            service.clock.now_ms(),
        )
        .await?;
    match sent {
        Sent::Created {
            id,
            audience_count,
            expire_time,
            replayed,
        } => {
            if replayed {
                tracing::info!(
                    broadcast = id,
                    "UserBroadcast repeated with the token of an earlier send; nothing sent"
                );
            } else {
                service.wake.notify_one();
                service.outbox_changed.notify_one();
            }
            to_raw(&SendAnswer {
                broadcast_id: id.to_string(),
                audience_count,
                expire_time,
            })
        }
        Sent::OverQuota { limit } => {
            let (_, retry_after) = utc_day(service.clock.now_ms());
            let mut e = ApiError::new(
                ErrorCode::FlowLimitExceeded,
                format!(
                    "AppId {app_id} has sent its {limit} broadcasts of this UTC day (limits.broadcasts_per_day = {limit}); \
                     the next is accepted after 00:00 UTC, in {retry_after} s"
                ),
            );
            e.retry_after = Some(retry_after);
            Err(e)
        }
    }
}

/// A cursor names the last broadcast id of the previous page.
fn encode_cursor(id: i64) -> String {
    let mut raw = [0u8; 11];
    raw[..3].copy_from_slice(b"tb1");
    raw[3..].copy_from_slice(&id.to_be_bytes());
    URL_SAFE_NO_PAD.encode(raw)
}

fn decode_cursor(c: Option<String>) -> Result<Option<i64>, ApiError> {
    let c = match c.as_deref() {
        None | Some("") => return Ok(None),
        Some(c) => c,
    };
    let bad = || {
        ApiError::invalid(
            "Cursor is not a NextCursor this server returned; omit it to start from the first page",
        )
    };
    let raw = URL_SAFE_NO_PAD.decode(c).map_err(|_| bad())?;
    match raw.as_slice() {
        [b't', b'b', b'1', rest @ ..] if rest.len() == 8 => Ok(Some(i64::from_be_bytes(
            rest.try_into().map_err(|_| bad())?,
        ))),
        _ => Err(bad()),
    }
}

fn limit(v: Option<i64>) -> Result<usize, ApiError> {
    let limit = v.unwrap_or(DEFAULT_LIMIT);
    if !(1..=MAX_LIMIT).contains(&limit) {
        return Err(ApiError::invalid(format!(
            "Limit must be between 1 and {MAX_LIMIT}, got {limit}"
        )));
    }
    Ok(limit as usize)
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct PullBody {
    app_id: i64,
    inbox_type: Option<i64>,
    user_id: i64,
    cursor: Option<String>,
    limit: Option<i64>,
}

pub struct ParsedPull {
    pub app_id: u32,
    pub inbox: u32,
    pub user_id: i64,
    pub before: Option<i64>,
    pub limit: usize,
}

pub fn parse_pull(body: &[u8], rules: &Rules) -> Result<ParsedPull, ApiError> {
    let b: PullBody = decode::decode(body, rules.unknown_fields)?;
    Ok(ParsedPull {
        app_id: decode::app_id(b.app_id)?,
        inbox: decode::inbox_type(b.inbox_type)?,
        user_id: decode::user_id(b.user_id, || "UserId".into())?,
        before: decode_cursor(b.cursor)?,
        limit: limit(b.limit)?,
    })
}

/// The fields every answer shows of a broadcast, borrowed from the cache: the pull
/// serializes them without copying (it is the hot read).
#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct Public<'a> {
    broadcast_id: String,
    sender: i64,
    msg_type: i64,
    content: &'a str,
    ext: &'a BTreeMap<String, String>,
    inbox_type: u32,
    create_time: i64,
    expire_time: i64,
}

impl<'a> Public<'a> {
    fn of(i: &'a Info) -> Self {
        Public {
            broadcast_id: i.id.to_string(),
            sender: i.sender,
            msg_type: i.msg_type,
            content: &i.content,
            ext: &i.ext,
            inbox_type: i.inbox,
            create_time: i.create_time,
            expire_time: i.expire_time,
        }
    }
}

fn public_fields(i: &Info) -> Map<String, Value> {
    match serde_json::to_value(Public::of(i)) {
        Ok(Value::Object(m)) => m,
        _ => Map::new(),
    }
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct PullAnswer<'a> {
    broadcasts: Vec<Public<'a>>,
    next_cursor: String,
}

/// GetBroadcast's and ListBroadcasts' view: also the filter as sent, the audience's size,
/// whether it was recalled, and where delivery stands.
fn full_fields(i: &Info, d: &Delivery) -> Value {
    let mut m = public_fields(i);
    let selector: Value = serde_json::from_str(&i.selector).unwrap_or(Value::Null);
    for key in ["Tags", "TagOp", "Filter"] {
        m.insert(
            key.into(),
            selector.get(key).cloned().unwrap_or(Value::Null),
        );
    }
    m.insert("AudienceCount".into(), i.audience_count.into());
    m.insert("Recalled".into(), i.recalled.into());
    m.insert("Delivery".into(), json!(d));
    Value::Object(m)
}

pub async fn pull(body: &[u8], ctx: &mut Ctx<'_>) -> Result<ResultJson, ApiError> {
    let p = parse_pull(body, ctx.rules)?;
    ctx.authorize(p.app_id)?;
    let now = ctx.broadcasts.clock.now_ms();
    let (ordinal, ids) = ctx
        .store
        .active_broadcasts(p.app_id, p.inbox, p.user_id, now)
        .await?;
    let mut found = Vec::new();
    let mut next = String::new();
    if let Some(ordinal) = ordinal {
        let ids: Vec<i64> = ids
            .into_iter()
            .filter(|id| p.before.is_none_or(|b| *id < b))
            .collect();
        let cached = ctx.broadcasts.cache.get_many(&ids);
        for (id, cached) in ids.into_iter().zip(cached) {
            let l = match cached {
                Some(l) => l,
                None => match ctx.broadcasts.loaded(ctx.store, id).await? {
                    Some(l) => l,
                    None => continue, // purged since the list was read
                },
            };
            if !l.audience.contains(ordinal) {
                continue;
            }
            if found.len() == p.limit {
                next = found
                    .last()
                    .map(|l: &Arc<Loaded>| encode_cursor(l.info.id))
                    .unwrap_or_default();
                break;
            }
            found.push(l);
        }
    }
    to_raw(&PullAnswer {
        broadcasts: found.iter().map(|l| Public::of(&l.info)).collect(),
        next_cursor: next,
    })
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct OneBody {
    app_id: i64,
    broadcast_id: Value,
}

/// GetBroadcast and RecallBroadcast: the app and the broadcast.
pub fn parse_one(body: &[u8], rules: &Rules) -> Result<(u32, i64), ApiError> {
    let b: OneBody = decode::decode(body, rules.unknown_fields)?;
    let app_id = decode::app_id(b.app_id)?;
    let id = match &b.broadcast_id {
        Value::String(s) => s.parse::<i64>().ok(),
        Value::Number(n) => n.as_i64(),
        _ => None,
    }
    .filter(|id| *id > 0)
    .ok_or_else(|| {
        ApiError::invalid(
            "BroadcastId must be the decimal string UserBroadcast returned, such as \"42\"",
        )
    })?;
    Ok((app_id, id))
}

fn not_found(app_id: u32, id: i64) -> ApiError {
    ApiError::new(
        ErrorCode::BroadcastNotFound,
        format!("AppId {app_id} has no broadcast {id} (never sent, or expired and purged)"),
    )
}

pub async fn get(body: &[u8], ctx: &mut Ctx<'_>) -> Result<ResultJson, ApiError> {
    let (app_id, id) = parse_one(body, ctx.rules)?;
    ctx.authorize(app_id)?;
    let (info, delivery) = ctx
        .store
        .get_broadcast(app_id, id)
        .await?
        .ok_or_else(|| not_found(app_id, id))?;
    to_raw(&json!({"Broadcast": full_fields(&info, &delivery)}))
}

pub async fn recall(body: &[u8], ctx: &mut Ctx<'_>) -> Result<ResultJson, ApiError> {
    let (app_id, id) = parse_one(body, ctx.rules)?;
    ctx.authorize(app_id)?;
    if !ctx
        .store
        .recall_broadcast(app_id, id, ctx.origin.clone())
        .await?
    {
        return Err(not_found(app_id, id));
    }
    ctx.broadcasts.outbox_changed.notify_one();
    to_raw(&json!({}))
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ListBody {
    app_id: i64,
    cursor: Option<String>,
    limit: Option<i64>,
}

pub fn parse_list(body: &[u8], rules: &Rules) -> Result<(u32, Option<i64>, usize), ApiError> {
    let b: ListBody = decode::decode(body, rules.unknown_fields)?;
    Ok((
        decode::app_id(b.app_id)?,
        decode_cursor(b.cursor)?,
        limit(b.limit)?,
    ))
}

pub async fn list(body: &[u8], ctx: &mut Ctx<'_>) -> Result<ResultJson, ApiError> {
    let (app_id, before, limit) = parse_list(body, ctx.rules)?;
    ctx.authorize(app_id)?;
    // One more than asked: whether there is a next page.
    let mut found = ctx.store.list_broadcasts(app_id, before, limit + 1).await?;
    let more = found.len() > limit;
    found.truncate(limit);
    let next = match (more, found.last()) {
        (true, Some((i, _))) => encode_cursor(i.id),
        _ => String::new(),
    };
    let broadcasts: Vec<Value> = found.iter().map(|(i, d)| full_fields(i, d)).collect();
    to_raw(&json!({"Broadcasts": broadcasts, "NextCursor": next}))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_garbage_is_refused() {
        for id in [1, 99, i64::MAX] {
            assert_eq!(decode_cursor(Some(encode_cursor(id))).unwrap(), Some(id));
        }
        for bad in ["x", "dGIx", "////", &"A".repeat(5000)] {
            assert_eq!(
                decode_cursor(Some(bad.to_owned())).unwrap_err().code,
                ErrorCode::InvalidParam
            );
        }
    }
}
