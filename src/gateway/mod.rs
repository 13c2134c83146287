//! HTTP in, envelope out. One request's path: route (path, Action, Version, method),
//! authenticate (cheap header checks, key lookup, then body hash and HMAC), rate limit,
//! dispatch to the Action, and wrap whatever came out, success or error, in the vendor
//! envelope with a fresh RequestId. Also the three plain GETs outside the signed API.

pub mod bare;
pub mod envelope;

use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use bytes::BytesMut;
use http_body_util::BodyExt;
use time::OffsetDateTime;
use tracing::Instrument;

use crate::accounts::{AccountId, Tenancy};
use crate::actions::{self, Ctx};
use crate::api::{Action, VERSION};
use crate::api::{ApiError, ErrorCode};
use crate::config::{HttpLimits, Limits};
use crate::limiter::{Decision, RateLimiter};
use crate::metrics::Metrics;
use crate::signing::{ParsedAuth, VerifyPolicy, truncate};
use crate::store::Store;
use envelope::{Meta, RequestIds};

/// Everything a request needs, shared by all connections.
pub struct AppState {
    pub store: Arc<dyn Store>,
    pub tenancy: Tenancy,
    pub limiter: Arc<dyn RateLimiter>,
    /// The configured limits, for messages; the limiter enforces them.
    pub limits: Limits,
    pub metrics: Arc<Metrics>,
    pub regions: Vec<String>,
    /// How bodies are parsed: tag limits, unknown fields.
    pub rules: actions::Rules,
    pub http: HttpLimits,
    pub request_ids: RequestIds,
    pub broadcasts: Arc<crate::broadcast::Service>,
    /// Bytes of request bodies that may be held at once (`http.max_body_memory_mb`).
    pub body_memory: Arc<tokio::sync::Semaphore>,
    /// The event log's retention (`[events]`).
    pub events: crate::config::EventsConfig,
    /// Turns true when the server stops accepting: long polls answer at once.
    pub draining: tokio::sync::watch::Sender<bool>,
    /// The operator console's files; `None` when `console.enabled` is false.
    pub console: Option<Arc<crate::console::Console>>,
}

pub fn app(state: Arc<AppState>) -> Router {
    let router = Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .fallback(api)
        .with_state(state.clone());
    match &state.console {
        Some(console) => router.merge(crate::console::routes(console.clone())),
        None => router,
    }
}

async fn readyz(State(state): State<Arc<AppState>>) -> Response {
    match state.store.ready().await {
        Ok(()) => (StatusCode::OK, "ready\n").into_response(),
        Err(e) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {}\n", e.chain()),
        )
            .into_response(),
    }
}

async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.render(),
    )
        .into_response()
}

/// What the request log line reports besides the outcome.
#[derive(Default)]
struct Trace {
    app_id: Option<u32>,
    account: Option<AccountId>,
}

async fn api(State(state): State<Arc<AppState>>, req: Request) -> Response {
    let started = Instant::now();
    let mut meta = Meta::new(state.request_ids.next(), state.regions[0].clone());
    let mut trace = Trace::default();
    // Every line logged while the request is handled (a store failure's cause, say)
    // carries its RequestId, the one the client was given.
    let span = tracing::info_span!("request", request_id = %meta.request_id);
    let outcome = handle(&state, req, &mut meta, &mut trace)
        .instrument(span)
        .await;
    let code = match &outcome {
        Ok(_) => "Success",
        Err(e) => e.code.wire().1,
    };
    let (status, response) = envelope::respond(&meta, outcome.as_ref().map(|r| r.as_str()));
    let elapsed = started.elapsed();
    let action_label = meta.known_action.map_or("Unknown", Action::name);
    state.metrics.observe_request(action_label, code, elapsed);
    let account = trace.account.map(|a| state.tenancy.account_name(a));
    tracing::info!(
        target: "tagcast::request",
        request_id = %meta.request_id,
        action = %meta.action,
        app_id = trace.app_id,
        account,
        status = status.as_u16(),
        code,
        error = outcome.as_ref().err().map(|e| e.message.as_str()),
        duration_us = elapsed.as_micros() as u64,
        "request"
    );
    response
}

async fn handle(
    state: &AppState,
    req: Request,
    meta: &mut Meta,
    trace: &mut Trace,
) -> Result<actions::ResultJson, ApiError> {
    let (parts, body) = req.into_parts();
    let action = route(&parts.method, &parts.uri, meta)?;

    let policy = VerifyPolicy {
        now: OffsetDateTime::now_utc(),
        regions: &state.regions,
    };
    let auth = ParsedAuth::parse(&parts.headers, &policy)?;
    meta.region = auth.credential.region.clone();
    let (secret, account, role) =
        state
            .tenancy
            .key(&auth.credential.access_key)
            .ok_or_else(|| {
                ApiError::new(
                    ErrorCode::InvalidAccessKey,
                    format!(
                        "The accesskey [{}] included in the request is invalid.",
                        truncate(&auth.credential.access_key, 64)
                    ),
                )
            })?;
    let (body, _held) = read_body(body, &parts.headers, state).await?;
    let path = parts.uri.path();
    let query = parts.uri.query().unwrap_or("");
    auth.verify(
        secret,
        parts.method.as_str(),
        path,
        query,
        &parts.headers,
        &body,
    )?;
    trace.account = Some(account);
    if role == crate::accounts::KeyRole::Read && !action.is_read() {
        return Err(ApiError::new(
            ErrorCode::AccessDenied,
            format!(
                "the access key's role is read: it may call only the read Actions, and {} changes state (give the key role = \"admin\" to allow it)",
                action.name()
            ),
        ));
    }

    match state.limiter.check(account, action).await {
        Decision::Allow => {}
        Decision::Deny { retry_after } => {
            state.metrics.observe_rate_limited(action.name());
            let mut e = ApiError::new(
                ErrorCode::FlowLimitExceeded,
                format!(
                    "{} is limited to {} requests per second per account",
                    action.name(),
                    state.limits.qps_for(action)
                ),
            );
            e.retry_after = Some(retry_after.as_secs_f64().ceil().max(1.0) as u64);
            return Err(e);
        }
        Decision::Unavailable => {
            return Err(ApiError::new(
                ErrorCode::ServiceUnavailableTemp,
                "the rate limiter is unavailable; retry later",
            ));
        }
    }

    let mut ctx = Ctx {
        store: state.store.as_ref(),
        tenancy: &state.tenancy,
        account,
        role,
        rules: &state.rules,
        broadcasts: &state.broadcasts,
        signature: auth.signature(),
        app_id: None,
        origin: crate::model::Origin {
            request_id: meta.request_id.clone(),
            access_key: auth.credential.access_key.clone(),
        },
        draining: state.draining.subscribe(),
    };
    let result = actions::dispatch(action, &body, &mut ctx).await;
    trace.app_id = ctx.app_id;
    result
}

/// Path, Action and Version from the query, and the method.
fn route(method: &Method, uri: &axum::http::Uri, meta: &mut Meta) -> Result<Action, ApiError> {
    if uri.path() != "/" {
        return Err(ApiError::new(
            ErrorCode::InvalidActionOrVersion,
            format!(
                "unknown path {:?}; the API is POST /?Action=...&Version={VERSION}",
                truncate(uri.path(), 64)
            ),
        ));
    }
    let (mut action, mut version) = (None, None);
    for (k, v) in form_urlencoded::parse(uri.query().unwrap_or("").as_bytes()) {
        let slot = match k.as_ref() {
            "Action" => &mut action,
            "Version" => &mut version,
            _ => continue,
        };
        if slot.replace(v.into_owned()).is_some() {
            return Err(ApiError::invalid(format!(
                "query parameter {k} appears more than once"
            )));
        }
    }
    if let Some(a) = &action {
        meta.action = truncate(a, 64);
    }
    if let Some(v) = &version {
        meta.version = truncate(v, 64);
    }
    let (Some(action), Some(version)) = (action, version) else {
        let missing = if meta.action.is_empty() {
            "Action"
        } else {
            "Version"
        };
        return Err(ApiError::new(
            ErrorCode::MissingParameter,
            format!("The request is missing {missing} parameter."),
        ));
    };
    if method != Method::POST {
        return Err(ApiError::new(
            ErrorCode::MethodNotAllowed,
            format!("{method} is not allowed; send POST"),
        ));
    }
    match Action::from_name(&action) {
        Some(a) if version == VERSION => {
            meta.known_action = Some(a);
            Ok(a)
        }
        _ => Err(ApiError::new(
            ErrorCode::InvalidActionOrVersion,
            format!(
                "Could not find operation {} for version {}.",
                meta.action, meta.version
            ),
        )),
    }
}

/// Bytes of request bodies held, counted against `http.max_body_memory_mb` until dropped
/// (after the answer).
struct Held {
    permit: Option<tokio::sync::OwnedSemaphorePermit>,
    bytes: usize,
    metrics: Arc<Metrics>,
}

impl Held {
    /// Counts `bytes` more, if they fit; `false` when they do not.
    fn take(&mut self, budget: &Arc<tokio::sync::Semaphore>, bytes: usize) -> bool {
        if bytes == 0 {
            return true;
        }
        let Ok(n) = u32::try_from(bytes) else {
            return false;
        };
        let Ok(more) = budget.clone().try_acquire_many_owned(n) else {
            return false;
        };
        match &mut self.permit {
            Some(p) => p.merge(more),
            None => self.permit = Some(more),
        }
        self.bytes += bytes;
        self.metrics.http.body_bytes.inc_by(bytes as i64);
        true
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.metrics.http.body_bytes.dec_by(self.bytes as i64);
    }
}

/// Refuses an announced oversized body before reading any of it, and a streamed one as
/// soon as it passes the limit; a body that does not arrive in time is cut off. Every
/// byte held counts against `http.max_body_memory_mb` (an announced length at once), so
/// any number of slow clients hold at most that much; a body that does not fit is 503.
async fn read_body(
    mut body: Body,
    headers: &HeaderMap,
    state: &AppState,
) -> Result<(Bytes, Held), ApiError> {
    let limits: &HttpLimits = &state.http;
    let max = limits.max_body_bytes;
    let mut held = Held {
        permit: None,
        bytes: 0,
        metrics: state.metrics.clone(),
    };
    let full = |body: Body| {
        linger(body);
        state.metrics.http.bodies_refused.inc();
        ApiError::new(
            ErrorCode::ServiceUnavailableTemp,
            format!(
                "the server holds as many request bodies as it may (http.max_body_memory_mb = {}); retry shortly",
                limits.max_body_memory_mb
            ),
        )
    };
    let too_large = |what: String| {
        ApiError::new(
            ErrorCode::PayloadTooLarge,
            format!("the request body is {what}; the limit is {max} bytes"),
        )
    };
    let announced = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if let Some(len) = announced.filter(|&len| len > max as u64) {
        linger(body);
        return Err(too_large(format!("{len} bytes")));
    }
    if let Some(len) = announced
        && !held.take(&state.body_memory, len as usize)
    {
        return Err(full(body));
    }
    let deadline = tokio::time::Instant::now() + limits.body_timeout();
    let mut buf = BytesMut::with_capacity(announced.map_or(8192, |n| n as usize));
    loop {
        match tokio::time::timeout_at(deadline, body.frame()).await {
            Err(_) => {
                return Err(ApiError::new(
                    ErrorCode::RequestTimeout,
                    format!(
                        "the request body did not arrive within {} s",
                        limits.body_timeout_secs
                    ),
                ));
            }
            Ok(None) => return Ok((buf.freeze(), held)),
            Ok(Some(Err(e))) => {
                return Err(ApiError::invalid(format!(
                    "reading the request body failed: {e}"
                )));
            }
            Ok(Some(Ok(frame))) => {
                let Ok(data) = frame.into_data() else {
                    continue;
                };
                if buf.len() + data.len() > max {
                    linger(body);
                    return Err(too_large("larger".into()));
                }
                // A body longer than announced (hyper refuses that) or streamed.
                let beyond = (buf.len() + data.len()).saturating_sub(held.bytes);
                if !held.take(&state.body_memory, beyond) {
                    return Err(full(body));
                }
                buf.extend_from_slice(&data);
            }
        }
    }
}

/// Most bytes of a refused body read and discarded after the answer, and for how long.
const LINGER_BYTES: usize = 16 << 20;
const LINGER_TIME: std::time::Duration = std::time::Duration::from_secs(5);

/// Reads and discards what is left of a refused body for a little while (a lingering
/// close, as web servers do): closing with unread data makes the kernel reset the
/// connection, and a client still sending would lose the 413 already written to it.
fn linger(mut body: Body) {
    tokio::spawn(async move {
        let mut seen = 0usize;
        let _ = tokio::time::timeout(LINGER_TIME, async {
            while let Some(Ok(frame)) = body.frame().await {
                seen += frame.data_ref().map_or(0, |d| d.len());
                if seen > LINGER_BYTES {
                    break;
                }
            }
        })
        .await;
    });
}
