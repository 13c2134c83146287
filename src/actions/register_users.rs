//! RegisterUsers: creates broadcast users, or updates the given profile fields of
//! registered ones and merges the given tags into inbox 0 (so retries are idempotent).

use std::collections::BTreeMap;

use serde::Deserialize;

use super::decode::{self, StringMap};
use super::{Ctx, ResultJson, Rules, apply_valid};
use crate::api::ApiError;
use crate::config::TagLimits;
use crate::signing::truncate;
use crate::store::{DEFAULT_INBOX, TagOp, UserRegistration};

pub const MAX_USERS: usize = 20;
pub const MAX_NICK_NAME_BYTES: usize = 100;
pub const MAX_PORTRAIT_BYTES: usize = 500;
pub const MAX_EXT_KEYS: usize = 20;
pub const MAX_EXT_KEY_BYTES: usize = 50;
pub const MAX_EXT_VALUE_BYTES: usize = 500;

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Body {
    app_id: i64,
    users: Vec<User>,
}

/// A user object as RegisterUsers and BatchUpdateUser send it. An absent field and `null`
/// are both `None`.
#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(super) struct User {
    pub user_id: i64,
    pub nick_name: Option<String>,
    pub portrait: Option<String>,
    pub ext: Option<StringMap>,
    pub tags: Option<Vec<String>>,
    pub is_robot: Option<bool>,
}

/// The vendor's limits on the profile fields that are given; the message names the field
/// and the limit.
pub(super) fn check_profile(
    nick_name: Option<&str>,
    portrait: Option<&str>,
    ext: Option<&BTreeMap<String, String>>,
) -> Result<(), String> {
    let too_long = |field: &str, len: usize, max: usize| {
        format!("{field} is {len} bytes; the limit is {max} bytes")
    };
    if let Some(n) = nick_name.filter(|n| n.len() > MAX_NICK_NAME_BYTES) {
        return Err(too_long("NickName", n.len(), MAX_NICK_NAME_BYTES));
    }
    if let Some(p) = portrait.filter(|p| p.len() > MAX_PORTRAIT_BYTES) {
        return Err(too_long("Portrait", p.len(), MAX_PORTRAIT_BYTES));
    }
    if let Some(ext) = ext {
        if ext.len() > MAX_EXT_KEYS {
            return Err(format!(
                "Ext has {} keys; the limit is {MAX_EXT_KEYS}",
                ext.len()
            ));
        }
        for (k, v) in ext {
            if k.is_empty() || k.len() > MAX_EXT_KEY_BYTES {
                return Err(format!(
                    "Ext key {:?} is {} bytes; keys are 1 to {MAX_EXT_KEY_BYTES} bytes",
                    truncate(k, 64),
                    k.len()
                ));
            }
            if k.starts_with("s:") {
                return Err(format!(
                    "Ext key {:?} starts with the reserved prefix \"s:\"",
                    truncate(k, 64)
                ));
            }
            if v.len() > MAX_EXT_VALUE_BYTES {
                return Err(too_long(
                    &format!("Ext value of {:?}", truncate(k, 64)),
                    v.len(),
                    MAX_EXT_VALUE_BYTES,
                ));
            }
        }
    }
    Ok(())
}

/// A decoded and validated request; per-user problems are kept per user.
pub struct Parsed {
    pub app_id: u32,
    pub users: Vec<(i64, Result<UserRegistration, String>)>,
}

/// Decodes and validates without touching any state (also the fuzzing entry point).
pub fn parse(body: &[u8], rules: &Rules) -> Result<Parsed, ApiError> {
    let (app_id, users) = parse_users(body, rules, MAX_USERS, user)?;
    Ok(Parsed { app_id, users })
}

/// A user id and its parsed entry, or why the entry is refused (its FailedInfo message).
pub(super) type PerUser<T> = (i64, Result<T, String>);

/// The users of a `{"AppId", "Users": [...]}` body (1 to `max`), each through `one` with
/// its path (`Users[i]`): RegisterUsers' and BatchUpdateUser's shared shape.
pub(super) fn parse_users<T>(
    body: &[u8],
    rules: &Rules,
    max: usize,
    one: impl Fn(&str, User, &TagLimits) -> Result<PerUser<T>, ApiError>,
) -> Result<(u32, Vec<PerUser<T>>), ApiError> {
    let body: Body = decode::decode(body, rules.unknown_fields)?;
    let app_id = decode::app_id(body.app_id)?;
    decode::count("Users", body.users.len(), max)?;
    let mut users = Vec::with_capacity(body.users.len());
    for (i, u) in body.users.into_iter().enumerate() {
        users.push(one(&format!("Users[{i}]"), u, &rules.tags)?);
    }
    Ok((app_id, users))
}

/// One user: a structural problem fails (`Err`), a bad field is kept for its FailedInfo.
fn user(
    path: &str,
    u: User,
    limits: &TagLimits,
) -> Result<(i64, Result<UserRegistration, String>), ApiError> {
    let field = |f: &str| match path {
        "" => f.to_owned(),
        _ => format!("{path}.{f}"),
    };
    let reg = UserRegistration {
        user_id: decode::user_id(u.user_id, || field("UserId"))?,
        nick_name: u.nick_name,
        portrait: u.portrait,
        ext: u.ext.map(|m| m.0.into_iter().collect::<BTreeMap<_, _>>()),
        is_robot: u.is_robot,
        tags: decode::tag_strings(&field("Tags"), u.tags.unwrap_or_default())?,
    };
    let verdict = check_profile(
        reg.nick_name.as_deref(),
        reg.portrait.as_deref(),
        reg.ext.as_ref(),
    )
    .and_then(|()| decode::check_tags(&reg.tags, TagOp::Upsert, limits));
    Ok((reg.user_id, verdict.map(|()| reg)))
}

/// One RegisterUsers-style user object (a line of `tagcast import`), with the same
/// validation as the Action; the message names the field and the limit.
pub fn parse_user(line: &[u8], rules: &Rules) -> Result<UserRegistration, String> {
    let u: User = decode::decode(line, rules.unknown_fields).map_err(|e| {
        // A line is one line: its column is where, and "body" is the API's word.
        e.message
            .replace("the body is not valid JSON: ", "not valid JSON: ")
            .replace(" at line 1 column ", " at column ")
            .replace(
                "the body must be a JSON object",
                "a line must be a JSON object",
            )
    })?;
    let (user_id, verdict) = user("", u, &rules.tags).map_err(|e| e.message)?;
    verdict.map_err(|m| format!("user {user_id}: {m}"))
}

pub async fn handle(body: &[u8], ctx: &mut Ctx<'_>) -> Result<ResultJson, ApiError> {
    let Parsed { app_id, users } = parse(body, ctx.rules)?;
    ctx.authorize(app_id)?;
    let store = ctx.store;
    let origin = ctx.origin.clone();
    apply_valid(users, app_id, DEFAULT_INBOX, |valid| {
        store.register_users(app_id, valid, origin)
    })
    .await
}
