//! The Actions of the API: one module each with its request and response types,
//! validation and handler, and the one table of Actions that routes to them.

pub mod audience;
pub mod batch_get_user;
pub mod batch_update_user;
pub mod batch_update_user_tags;
pub mod broadcast;
pub mod catalog;
pub mod decode;
pub mod events;
pub mod filter;
pub mod register_users;
pub mod strict;
pub mod unregister_users;

use serde::Serialize;

use crate::accounts::{AccountId, KeyRole, Tenancy};
use crate::api::ApiError;
pub use crate::api::{Action, VERSION};
use crate::config::{TagLimits, UnknownFields};
use crate::store::{Outcome, Store};

/// What parsing a body depends on: the tag limits and what a field no struct declares
/// does (`api.unknown_fields`).
#[derive(Debug, Clone, Default)]
pub struct Rules {
    pub tags: TagLimits,
    pub unknown_fields: UnknownFields,
}

/// What a handler may use: the store, tenancy for the caller's account, and the rules.
pub struct Ctx<'a> {
    pub store: &'a dyn Store,
    pub tenancy: &'a Tenancy,
    pub account: AccountId,
    /// The signing key's role (API.md §11); the gateway has refused a write to a read key.
    pub role: KeyRole,
    pub rules: &'a Rules,
    pub broadcasts: &'a crate::broadcast::Service,
    /// The request's verified signature (hex, either case): UserBroadcast's replay token
    /// when the body has no ClientToken.
    pub signature: &'a str,
    /// Set by the handler once it knows the AppId, for the request log line.
    pub app_id: Option<u32>,
    /// The request's RequestId and AccessKey, which its changes carry into the log.
    pub origin: crate::model::Origin,
    /// True once the server stops accepting (a long poll answers then).
    pub draining: tokio::sync::watch::Receiver<bool>,
}

impl Ctx<'_> {
    /// Records the AppId and checks that the caller's account owns it.
    pub fn authorize(&mut self, app_id: u32) -> Result<(), ApiError> {
        self.app_id = Some(app_id);
        self.tenancy.authorize(self.account, app_id)
    }
}

/// Runs `action` on a body that passed authentication; returns the `Result` object.
pub async fn dispatch(
    action: Action,
    body: &[u8],
    ctx: &mut Ctx<'_>,
) -> Result<ResultJson, ApiError> {
    match action {
        Action::BatchUpdateUserTags => batch_update_user_tags::handle(body, ctx).await,
        Action::RegisterUsers => register_users::handle(body, ctx).await,
        Action::UnRegisterUsers => unregister_users::handle(body, ctx).await,
        Action::BatchGetUser => batch_get_user::handle(body, ctx).await,
        Action::BatchUpdateUser => batch_update_user::handle(body, ctx).await,
        Action::CountAudience => audience::count(body, ctx).await,
        Action::ListAudience => audience::list(body, ctx).await,
        Action::UserBroadcast => broadcast::send(body, ctx).await,
        Action::ListUserBroadcasts => broadcast::pull(body, ctx).await,
        Action::GetBroadcast => broadcast::get(body, ctx).await,
        Action::ListBroadcasts => broadcast::list(body, ctx).await,
        Action::RecallBroadcast => broadcast::recall(body, ctx).await,
        Action::ListEvents => events::list(body, ctx).await,
        Action::ListApps => catalog::list_apps(body, ctx).await,
        Action::ListTags => catalog::list_tags(body, ctx).await,
    }
}

/// Decodes and validates a body for `action` without any state: what a request would be
/// refused for before it reaches tenancy or the store. The fuzz targets call this.
pub fn parse_only(action: Action, body: &[u8], rules: &Rules) -> Result<(), ApiError> {
    match action {
        Action::BatchUpdateUserTags => batch_update_user_tags::parse(body, rules).map(drop),
        Action::RegisterUsers => register_users::parse(body, rules).map(drop),
        Action::UnRegisterUsers => unregister_users::parse(body, rules).map(drop),
        Action::BatchGetUser => batch_get_user::parse(body, rules).map(drop),
        Action::BatchUpdateUser => batch_update_user::parse(body, rules).map(drop),
        Action::CountAudience | Action::ListAudience => audience::parse(body, rules).map(drop),
        Action::UserBroadcast => broadcast::parse_send(body, rules).map(drop),
        Action::ListUserBroadcasts => broadcast::parse_pull(body, rules).map(drop),
        Action::GetBroadcast | Action::RecallBroadcast => {
            broadcast::parse_one(body, rules).map(drop)
        }
        Action::ListBroadcasts => broadcast::parse_list(body, rules).map(drop),
        Action::ListEvents => events::parse(body, rules).map(drop),
        Action::ListApps => catalog::parse_apps(body, rules),
        Action::ListTags => catalog::parse_tags(body, rules).map(drop),
    }
}

/// A per-user failure inside an HTTP 200 answer.
#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct FailedInfo {
    pub user_id: i64,
    pub code: &'static str,
    pub message: String,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct FailedInfos {
    pub failed_infos: Vec<FailedInfo>,
}

impl FailedInfo {
    pub fn invalid(user_id: i64, message: String) -> Self {
        FailedInfo {
            user_id,
            code: "InvalidParam",
            message,
        }
    }

    /// `None` when the store applied the entry.
    pub fn from_outcome(user_id: i64, app_id: u32, inbox: u32, outcome: Outcome) -> Option<Self> {
        match outcome {
            Outcome::Applied => None,
            Outcome::UserNotFound => Some(FailedInfo {
                user_id,
                code: "UserNotFound",
                message: format!("user {user_id} is not registered in AppId {app_id}"),
            }),
            Outcome::TagLimitExceeded { would_have, limit } => Some(FailedInfo {
                user_id,
                code: "TagLimitExceeded",
                message: format!(
                    "user {user_id} would have {would_have} tag keys in InboxType {inbox}; the limit is {limit}"
                ),
            }),
        }
    }
}

/// Runs the entries that passed validation through `apply` and merges the store's
/// outcomes with the validation failures, in request order.
pub async fn apply_valid<T, F, Fut>(
    items: Vec<(i64, Result<T, String>)>,
    app_id: u32,
    inbox: u32,
    apply: F,
) -> Result<ResultJson, ApiError>
where
    F: FnOnce(Vec<T>) -> Fut,
    Fut: std::future::Future<Output = Result<Vec<Outcome>, crate::store::StoreError>>,
{
    let mut valid = Vec::with_capacity(items.len());
    let mut slots = Vec::with_capacity(items.len());
    for (user_id, item) in items {
        match item {
            Ok(t) => {
                valid.push(t);
                slots.push((user_id, None));
            }
            Err(message) => slots.push((user_id, Some(FailedInfo::invalid(user_id, message)))),
        }
    }
    let expected = valid.len();
    let outcomes = if valid.is_empty() {
        Vec::new()
    } else {
        apply(valid).await?
    };
    if outcomes.len() != expected {
        tracing::error!(
            expected,
            got = outcomes.len(),
            "store returned the wrong number of outcomes"
        );
        return Err(ApiError::new(
            crate::api::ErrorCode::InternalError,
            "the store answered inconsistently",
        ));
    }
    let mut outcomes = outcomes.into_iter();
    let failed_infos = slots
        .into_iter()
        .filter_map(|(user_id, failed)| match failed {
            Some(f) => Some(f),
            None => outcomes
                .next()
                .and_then(|o| FailedInfo::from_outcome(user_id, app_id, inbox, o)),
        })
        .collect();
    to_raw(&FailedInfos { failed_infos })
}

/// An answer's `Result` object as JSON text. Only [`to_raw`] makes one, with serde_json
/// from our own types, so the envelope writes it as it is without parsing it again.
#[derive(Debug)]
pub struct ResultJson(String);

impl ResultJson {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

pub fn to_raw<T: Serialize>(value: &T) -> Result<ResultJson, ApiError> {
    to_raw_sized(value, 128)
}

/// [`to_raw`] into a buffer of `capacity` bytes to start with.
pub fn to_raw_sized<T: Serialize>(value: &T, capacity: usize) -> Result<ResultJson, ApiError> {
    let mut out = Vec::with_capacity(capacity);
    serde_json::to_writer(&mut out, value).map_err(|e| {
        tracing::error!(error = %e, "serializing a result failed");
        ApiError::new(
            crate::api::ErrorCode::InternalError,
            "serializing the result failed",
        )
    })?;
    Ok(ResultJson(
        String::from_utf8(out).expect("serde_json writes UTF-8"),
    ))
}
