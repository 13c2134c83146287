//! BatchGetUser: profiles and the tags of one inbox (default 0) for up to 50 users.

use std::collections::{BTreeMap, HashSet};

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use super::decode;
use super::{Ctx, Rules, to_raw};
use crate::api::ApiError;

pub const MAX_USERS: usize = 50;

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Body {
    app_id: i64,
    user_ids: Vec<i64>,
    inbox_type: Option<i64>,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct User {
    app_id: u32,
    user_id: i64,
    nick_name: String,
    portrait: String,
    ext: BTreeMap<String, String>,
    /// `"key:value"`, sorted by key.
    tags: Vec<String>,
    is_robot: bool,
    create_time: i64,
    modify_time: i64,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct Answer {
    users: Vec<User>,
    not_found_users: Vec<i64>,
}

/// A decoded and validated request: the distinct ids in request order.
pub struct Parsed {
    pub app_id: u32,
    pub inbox: u32,
    pub user_ids: Vec<i64>,
}

/// Decodes and validates without touching any state (also the fuzzing entry point).
pub fn parse(body: &[u8], rules: &Rules) -> Result<Parsed, ApiError> {
    let body: Body = decode::decode(body, rules.unknown_fields)?;
    let app_id = decode::app_id(body.app_id)?;
    let inbox = decode::inbox_type(body.inbox_type)?;
    decode::count("UserIds", body.user_ids.len(), MAX_USERS)?;
    let mut seen = HashSet::new();
    let mut user_ids = Vec::with_capacity(body.user_ids.len());
    for (i, id) in body.user_ids.into_iter().enumerate() {
        let id = decode::user_id(id, || format!("UserIds[{i}]"))?;
        if seen.insert(id) {
            user_ids.push(id);
        }
    }
    Ok(Parsed {
        app_id,
        inbox,
        user_ids,
    })
}

pub async fn handle(body: &[u8], ctx: &mut Ctx<'_>) -> Result<Box<RawValue>, ApiError> {
    let Parsed {
        app_id,
        inbox,
        user_ids: ids,
    } = parse(body, ctx.rules)?;
    ctx.authorize(app_id)?;
    let found = ctx.store.get_users(app_id, inbox, ids.clone()).await?;
    let mut answer = Answer {
        users: Vec::new(),
        not_found_users: Vec::new(),
    };
    for (id, user) in ids.into_iter().zip(found) {
        match user {
            None => answer.not_found_users.push(id),
            Some(u) => answer.users.push(User {
                app_id,
                user_id: u.user_id,
                nick_name: u.nick_name,
                portrait: u.portrait,
                ext: u.ext,
                tags: u
                    .tags
                    .into_iter()
                    .map(|(k, v)| format!("{k}:{v}"))
                    .collect(),
                is_robot: u.is_robot,
                create_time: u.create_time_ms,
                modify_time: u.modify_time_ms,
            }),
        }
    }
    to_raw(&answer)
}
