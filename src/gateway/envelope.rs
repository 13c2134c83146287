//! The vendor envelope around every answer, and RequestIds.

use std::sync::atomic::{AtomicU64, Ordering};

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use time::macros::format_description;

use crate::api::{Action, VERSION};
use crate::api::{ApiError, ErrorCode};
use crate::signing::SERVICE;

/// `ResponseMetadata` fields known so far; filled in as the request is routed.
pub struct Meta {
    pub request_id: String,
    /// The Action as the client named it (echoed even when unknown).
    pub action: String,
    pub known_action: Option<Action>,
    pub version: String,
    pub region: String,
}

impl Meta {
    pub fn new(request_id: String, default_region: String) -> Self {
        Meta {
            request_id,
            action: String::new(),
            known_action: None,
            version: VERSION.into(),
            region: default_region,
        }
    }
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct Metadata<'a> {
    request_id: &'a str,
    action: &'a str,
    version: &'a str,
    service: &'a str,
    region: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<ErrorBody<'a>>,
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    #[serde(rename = "Code")]
    code: &'static str,
    #[serde(rename = "CodeN")]
    code_n: u32,
    #[serde(rename = "Message")]
    message: &'a str,
}

/// The envelope's JSON for a request's outcome, and its HTTP status:
/// `{"ResponseMetadata":{...},"Result":{...}}`, the Result copied in as it is.
fn body(meta: &Meta, outcome: Result<&str, &ApiError>) -> (StatusCode, Vec<u8>) {
    let (status, error, result) = match outcome {
        Ok(result) => (StatusCode::OK, None, Some(result)),
        Err(e) => {
            let (status, code, code_n) = e.code.wire();
            (
                status,
                Some(ErrorBody {
                    code,
                    code_n,
                    message: &e.message,
                }),
                None,
            )
        }
    };
    let metadata = Metadata {
        request_id: &meta.request_id,
        action: &meta.action,
        version: &meta.version,
        service: SERVICE,
        region: &meta.region,
        error,
    };
    let mut body = Vec::with_capacity(256 + result.map_or(0, str::len));
    body.extend_from_slice(b"{\"ResponseMetadata\":");
    serde_json::to_writer(&mut body, &metadata).expect("the metadata holds only strings");
    if let Some(result) = result {
        body.extend_from_slice(b",\"Result\":");
        body.extend_from_slice(result.as_bytes());
    }
    body.push(b'}');
    (status, body)
}

/// Builds the HTTP answer for a request's outcome. The only place an error body is written
/// (with [`raw_error`], for answers written below the HTTP server).
pub fn respond(meta: &Meta, outcome: Result<&str, &ApiError>) -> (StatusCode, Response) {
    let (status, body) = body(meta, outcome);
    let mut response = (status, body).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json; charset=utf-8"),
    );
    if let Ok(id) = HeaderValue::from_str(&meta.request_id) {
        headers.insert("x-request-id", id);
    }
    if let Err(e) = outcome {
        if let Some(secs) = e.retry_after {
            headers.insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        // The body of a refused request may be unread or half-read: do not reuse the connection.
        if matches!(
            e.code,
            ErrorCode::PayloadTooLarge | ErrorCode::RequestTimeout
        ) {
            headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
    }
    (status, response)
}

/// A whole HTTP/1.1 error answer as bytes, with `Connection: close`: for the answers
/// written where there is no request to route (a connection over `http.max_connections`,
/// a request hyper could not parse).
pub fn raw_error(meta: &Meta, e: &ApiError) -> Vec<u8> {
    let (status, body) = body(meta, Err(e));
    let mut out = format!(
        "HTTP/1.1 {} {}\r\ncontent-type: application/json; charset=utf-8\r\ncontent-length: {}\r\nx-request-id: {}\r\nconnection: close\r\n",
        status.as_u16(),
        status.canonical_reason().unwrap_or(""),
        body.len(),
        meta.request_id
    );
    if let Some(secs) = e.retry_after {
        out.push_str(&format!("retry-after: {secs}\r\n"));
    }
    out.push_str("\r\n");
    let mut bytes = out.into_bytes();
    bytes.extend_from_slice(&body);
    bytes
}

/// RequestIds in the vendor's style: UTC time to the second, then a per-process random
/// prefix and a counter, so ids are unique within a process and across processes.
pub struct RequestIds {
    node: u32,
    seq: AtomicU64,
}

impl Default for RequestIds {
    fn default() -> Self {
        RequestIds {
            node: rand::random(),
            seq: AtomicU64::new(0),
        }
    }
}

impl RequestIds {
    pub fn next(&self) -> String {
        let ts = time::OffsetDateTime::now_utc()
            .format(format_description!(
                "[year][month][day][hour][minute][second]"
            ))
            .unwrap_or_default();
        let seq = self.seq.fetch_add(1, Ordering::Relaxed);
        format!("{ts}{:08X}{:010X}", self.node, seq & 0xFF_FFFF_FFFF)
    }
}
