//! BatchUpdateUserTags: add/overwrite (Op 0) or delete (Op 1) tags of registered users,
//! in the seed's shape (`UserTags`, per-user maps) or the Go/Java SDK shape (`UserIds` +
//! `Tags` strings applied to every listed user).

use serde::Deserialize;

use super::decode::{self, StringMap};
use super::{Ctx, ResultJson, Rules, apply_valid};
use crate::api::ApiError;
use crate::store::{TagEntry, TagOp};

/// Most entries (seed shape) or users (SDK shape) in one call.
pub const MAX_ENTRIES: usize = 100;

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Body {
    app_id: i64,
    inbox_type: Option<i64>,
    user_tags: Option<Vec<UserTag>>,
    user_ids: Option<Vec<i64>>,
    tags: Option<Vec<String>>,
    op: Option<i64>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct UserTag {
    user_id: i64,
    tags: Option<StringMap>,
}

fn op(v: Option<i64>) -> Result<TagOp, ApiError> {
    match v.unwrap_or(0) {
        0 => Ok(TagOp::Upsert),
        1 => Ok(TagOp::Delete),
        other => Err(ApiError::invalid(format!(
            "Op must be 0 (add or overwrite) or 1 (delete), got {other}"
        ))),
    }
}

fn entries(body: Body) -> Result<Vec<TagEntry>, ApiError> {
    match (body.user_tags, body.user_ids) {
        (Some(_), Some(_)) => Err(ApiError::invalid(
            "send either UserTags, or UserIds with Tags, not both",
        )),
        (Some(_), None) if body.tags.is_some() => Err(ApiError::invalid(
            "top-level Tags goes with UserIds; with UserTags, put Tags inside each entry",
        )),
        (Some(user_tags), None) => {
            decode::count("UserTags", user_tags.len(), MAX_ENTRIES)?;
            user_tags
                .into_iter()
                .enumerate()
                .map(|(i, ut)| {
                    Ok(TagEntry {
                        user_id: decode::user_id(ut.user_id, || format!("UserTags[{i}].UserId"))?,
                        tags: ut.tags.unwrap_or_default().0,
                    })
                })
                .collect()
        }
        (None, Some(user_ids)) => {
            decode::count("UserIds", user_ids.len(), MAX_ENTRIES)?;
            let tags = decode::tag_strings("Tags", body.tags.unwrap_or_default())?;
            user_ids
                .into_iter()
                .enumerate()
                .map(|(i, id)| {
                    Ok(TagEntry {
                        user_id: decode::user_id(id, || format!("UserIds[{i}]"))?,
                        tags: tags.clone(),
                    })
                })
                .collect()
        }
        (None, None) => Err(ApiError::invalid(
            "UserTags is required (or UserIds with Tags)",
        )),
    }
}

/// A decoded and validated request; per-user problems are kept per entry.
pub struct Parsed {
    pub app_id: u32,
    pub inbox: u32,
    pub op: TagOp,
    pub entries: Vec<(i64, Result<TagEntry, String>)>,
}

/// Decodes and validates without touching any state (also the fuzzing entry point).
pub fn parse(body: &[u8], rules: &Rules) -> Result<Parsed, ApiError> {
    let body: Body = decode::decode(body, rules.unknown_fields)?;
    let app_id = decode::app_id(body.app_id)?;
    let inbox = decode::inbox_type(body.inbox_type)?;
    let op = op(body.op)?;
    let entries = entries(body)?
        .into_iter()
        .map(|e| {
            (
                e.user_id,
                decode::check_tags(&e.tags, op, &rules.tags).map(|()| e),
            )
        })
        .collect();
    Ok(Parsed {
        app_id,
        inbox,
        op,
        entries,
    })
}

pub async fn handle(body: &[u8], ctx: &mut Ctx<'_>) -> Result<ResultJson, ApiError> {
    let Parsed {
        app_id,
        inbox,
        op,
        entries,
    } = parse(body, ctx.rules)?;
    ctx.authorize(app_id)?;
    let store = ctx.store;
    let origin = ctx.origin.clone();
    apply_valid(entries, app_id, inbox, |valid| {
        store.update_tags(app_id, inbox, op, valid, origin)
    })
    .await
}
