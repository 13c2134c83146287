//! UnRegisterUsers: removes users with their profiles and their tags in every inbox.

use serde::Deserialize;

use super::decode;
use super::{Ctx, ResultJson, Rules, apply_valid};
use crate::api::ApiError;
use crate::store::DEFAULT_INBOX;

pub const MAX_USERS: usize = 10;

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Body {
    app_id: i64,
    user_ids: Vec<i64>,
}

/// A decoded and validated request.
pub struct Parsed {
    pub app_id: u32,
    pub user_ids: Vec<i64>,
}

/// Decodes and validates without touching any state (also the fuzzing entry point).
pub fn parse(body: &[u8], rules: &Rules) -> Result<Parsed, ApiError> {
    let body: Body = decode::decode(body, rules.unknown_fields)?;
    let app_id = decode::app_id(body.app_id)?;
    decode::count("UserIds", body.user_ids.len(), MAX_USERS)?;
    let user_ids = body
        .user_ids
        .into_iter()
        .enumerate()
        .map(|(i, id)| decode::user_id(id, || format!("UserIds[{i}]")))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Parsed { app_id, user_ids })
}

pub async fn handle(body: &[u8], ctx: &mut Ctx<'_>) -> Result<ResultJson, ApiError> {
    let Parsed { app_id, user_ids } = parse(body, ctx.rules)?;
    ctx.authorize(app_id)?;
    let store = ctx.store;
    let origin = ctx.origin.clone();
    let items = user_ids.into_iter().map(|id| (id, Ok(id))).collect();
    apply_valid(items, app_id, DEFAULT_INBOX, |valid| {
        store.unregister_users(app_id, valid, origin)
    })
    .await
}
