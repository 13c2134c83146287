//! BatchUpdateUser: changes the given profile fields of registered users and, when `Tags`
//! is given, replaces their whole inbox-0 tag set. An absent or `null` field is left
//! unchanged (the Go SDK sends `null` for a nil map or slice); an empty one sets it empty.
//! The user object and its limits are RegisterUsers'.

use std::collections::BTreeMap;

use super::register_users::{User, check_profile, parse_users};
use super::{Ctx, ResultJson, Rules, apply_valid, decode};
use crate::api::ApiError;
use crate::config::TagLimits;
use crate::store::{DEFAULT_INBOX, TagOp, UserUpdate};

/// The vendor's limit per call.
pub const MAX_USERS: usize = 10;

/// A decoded and validated request; per-user problems are kept per user.
pub struct Parsed {
    pub app_id: u32,
    pub users: Vec<(i64, Result<UserUpdate, String>)>,
}

/// Decodes and validates without touching any state (also the fuzzing entry point).
pub fn parse(body: &[u8], rules: &Rules) -> Result<Parsed, ApiError> {
    let (app_id, users) = parse_users(body, rules, MAX_USERS, user)?;
    Ok(Parsed { app_id, users })
}

/// One user: a structural problem fails (`Err`), a bad field is kept for its FailedInfo.
fn user(
    path: &str,
    u: User,
    limits: &TagLimits,
) -> Result<(i64, Result<UserUpdate, String>), ApiError> {
    let update = UserUpdate {
        user_id: decode::user_id(u.user_id, || format!("{path}.UserId"))?,
        nick_name: u.nick_name,
        portrait: u.portrait,
        ext: u.ext.map(|m| m.0.into_iter().collect::<BTreeMap<_, _>>()),
        is_robot: u.is_robot,
        tags: u
            .tags
            .map(|t| decode::tag_strings(&format!("{path}.Tags"), t))
            .transpose()?,
    };
    let verdict = check_profile(
        update.nick_name.as_deref(),
        update.portrait.as_deref(),
        update.ext.as_ref(),
    )
    .and_then(|()| match &update.tags {
        Some(tags) => decode::check_tags(tags, TagOp::Upsert, limits),
        None => Ok(()),
    });
    Ok((update.user_id, verdict.map(|()| update)))
}

pub async fn handle(body: &[u8], ctx: &mut Ctx<'_>) -> Result<ResultJson, ApiError> {
    let Parsed { app_id, users } = parse(body, ctx.rules)?;
    ctx.authorize(app_id)?;
    let store = ctx.store;
    let origin = ctx.origin.clone();
    apply_valid(users, app_id, DEFAULT_INBOX, |valid| {
        store.update_users(app_id, valid, origin)
    })
    .await
}
