//! BatchGetUser: profiles and the tags of one inbox (default 0) for up to 50 users.

use std::collections::{BTreeMap, HashSet};

use serde::ser::{SerializeSeq, SerializeStruct};
use serde::{Deserialize, Serialize, Serializer};

use super::decode;
use super::{Ctx, ResultJson, Rules, to_raw_sized};
use crate::api::ApiError;
use crate::audience::index::UserView;

pub const MAX_USERS: usize = 50;

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct Body {
    app_id: i64,
    user_ids: Vec<i64>,
    inbox_type: Option<i64>,
}

/// One user of the answer, written straight from the state (`audience::index::UserView`)
/// with the vendor's field names; tags as `"key:value"`, sorted by key.
struct User<'v, 'a> {
    app_id: u32,
    view: &'v UserView<'a>,
}

impl Serialize for User<'_, '_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let u = self.view;
        let p = u.profile();
        let no_ext = BTreeMap::new();
        let mut m = s.serialize_struct("User", 9)?;
        m.serialize_field("AppId", &self.app_id)?;
        m.serialize_field("UserId", &u.user_id())?;
        m.serialize_field("NickName", p.map_or("", |p| &p.nick_name))?;
        m.serialize_field("Portrait", p.map_or("", |p| &p.portrait))?;
        m.serialize_field("Ext", p.map_or(&no_ext, |p| &p.ext))?;
        m.serialize_field("Tags", &Tags(u.tags()))?;
        m.serialize_field("IsRobot", &p.is_some_and(|p| p.is_robot))?;
        m.serialize_field("CreateTime", &u.create_time_ms())?;
        m.serialize_field("ModifyTime", &u.modify_time_ms())?;
        m.end()
    }
}

/// The tags as `"key:value"` strings, each built in one reused buffer (`collect_str` goes
/// through the formatting machinery: a fifth of a read's instructions).
struct Tags<'v, 'a>(&'v [(&'a str, &'a str)]);

impl Serialize for Tags<'_, '_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut seq = s.serialize_seq(Some(self.0.len()))?;
        let mut text = String::new();
        for (k, v) in self.0 {
            text.clear();
            text.push_str(k);
            text.push(':');
            text.push_str(v);
            seq.serialize_element(&text)?;
        }
        seq.end()
    }
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct Answer<'v, 'a> {
    users: Vec<User<'v, 'a>>,
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

pub async fn handle(body: &[u8], ctx: &mut Ctx<'_>) -> Result<ResultJson, ApiError> {
    let Parsed {
        app_id,
        inbox,
        user_ids: ids,
    } = parse(body, ctx.rules)?;
    ctx.authorize(app_id)?;
    let state = ctx.store.caught_up(app_id).await?;
    state.with_users(app_id, inbox, &ids, |found| {
        let mut answer = Answer {
            users: Vec::with_capacity(found.len()),
            not_found_users: Vec::new(),
        };
        for (id, user) in ids.iter().zip(found) {
            match user {
                None => answer.not_found_users.push(*id),
                Some(view) => answer.users.push(User { app_id, view }),
            }
        }
        // About what a user takes, so the answer is written without growing its buffer.
        to_raw_sized(&answer, 128 + 256 * found.len())
    })
}
