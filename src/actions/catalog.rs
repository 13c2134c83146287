//! ListApps and ListTags (ours, API.md §10): what the console (or any client) needs to
//! show an account's apps and an app's tags, exact and current like CountAudience.

use serde::{Deserialize, Serialize};

use super::decode;
use super::{Ctx, ResultJson, Rules, to_raw};
use crate::accounts::KeyRole;
use crate::api::ApiError;
use crate::broadcast::utc_day;

pub const MAX_LIMIT: i64 = 1000;
pub const DEFAULT_LIMIT: i64 = 100;

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct AppsBody {}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct AppRow {
    app_id: u32,
    users: u64,
    broadcasts_today: u32,
    broadcasts_per_day: u32,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct AppsAnswer {
    apps: Vec<AppRow>,
    role: KeyRole,
}

pub fn parse_apps(body: &[u8], rules: &Rules) -> Result<(), ApiError> {
    let _: AppsBody = decode::decode(body, rules.unknown_fields)?;
    Ok(())
}

/// The apps of the signing key's account, sorted, and the key's role.
pub async fn list_apps(body: &[u8], ctx: &mut Ctx<'_>) -> Result<ResultJson, ApiError> {
    parse_apps(body, ctx.rules)?;
    let (day, _) = utc_day(ctx.broadcasts.clock.now_ms());
    let mut apps = Vec::new();
    for app_id in ctx.tenancy.account_apps(ctx.account) {
        let users = ctx.store.caught_up(app_id).await?.registered(app_id);
        let broadcasts_today = ctx.store.broadcasts_on_day(app_id, day).await?;
        apps.push(AppRow {
            app_id,
            users,
            broadcasts_today,
            broadcasts_per_day: ctx.broadcasts.per_day,
        });
    }
    to_raw(&AppsAnswer {
        apps,
        role: ctx.role,
    })
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct TagsBody {
    app_id: i64,
    inbox_type: Option<i64>,
    limit: Option<i64>,
    key: Option<String>,
}

/// A valid ListTags request.
#[derive(Debug)]
pub struct TagsQuery {
    pub app_id: u32,
    pub inbox: u32,
    pub limit: usize,
    pub key: Option<String>,
}

pub fn parse_tags(body: &[u8], rules: &Rules) -> Result<TagsQuery, ApiError> {
    let b: TagsBody = decode::decode(body, rules.unknown_fields)?;
    let app_id = decode::app_id(b.app_id)?;
    let inbox = decode::inbox_type(b.inbox_type)?;
    let limit = b.limit.unwrap_or(DEFAULT_LIMIT);
    if !(1..=MAX_LIMIT).contains(&limit) {
        return Err(ApiError::invalid(format!(
            "Limit must be between 1 and {MAX_LIMIT}, got {limit}"
        )));
    }
    if let Some(k) = &b.key {
        let max = rules.tags.max_key_bytes;
        if k.is_empty() || k.len() > max {
            return Err(ApiError::invalid(format!(
                "Key must be a tag key of 1 to {max} bytes (tags.max_key_bytes), got {} bytes",
                k.len()
            )));
        }
    }
    Ok(TagsQuery {
        app_id,
        inbox,
        limit: limit as usize,
        key: b.key,
    })
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct KeyRow {
    key: String,
    users: u64,
    values: u64,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct ValueRow {
    value: String,
    users: u64,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct KeysAnswer {
    keys: Vec<KeyRow>,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct ValuesAnswer {
    values: Vec<ValueRow>,
}

/// The app's tag keys in an inbox with their user and value counts, or one key's values
/// with their user counts: most users first, then by text.
pub async fn list_tags(body: &[u8], ctx: &mut Ctx<'_>) -> Result<ResultJson, ApiError> {
    let q = parse_tags(body, ctx.rules)?;
    ctx.authorize(q.app_id)?;
    let index = ctx.store.caught_up(q.app_id).await?;
    match &q.key {
        None => to_raw(&KeysAnswer {
            keys: index
                .tag_keys(q.app_id, q.inbox, q.limit)
                .into_iter()
                .map(|(key, users, values)| KeyRow { key, users, values })
                .collect(),
        }),
        Some(key) => to_raw(&ValuesAnswer {
            values: index
                .tag_values(q.app_id, q.inbox, key, q.limit)
                .into_iter()
                .map(|(value, users)| ValueRow { value, users })
                .collect(),
        }),
    }
}
