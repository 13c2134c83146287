//! The operator console (API.md §10): static files embedded in the binary at build time
//! and served under `/console/` with the §10 headers. The console has no endpoint of its
//! own: the page signs every call to the API in the browser (`assets/js/api.js`), so it can
//! do nothing its key could not.

use std::path::PathBuf;
use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use sha2::{Digest, Sha256};

/// The headers of every console answer, files and errors alike (API.md §10).
pub const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; \
img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; \
form-action 'none'";

macro_rules! assets {
    ($($name:literal => $mime:literal),* $(,)?) => {
        /// Every file of the console: its path under `/console/`, type and bytes.
        pub const ASSETS: &[(&str, &str, &[u8])] = &[
            $(($name, $mime, include_bytes!(concat!("assets/", $name)))),*
        ];
    };
}

assets! {
    "index.html" => "text/html; charset=utf-8",
    "console.css" => "text/css; charset=utf-8",
    "icon.svg" => "image/svg+xml",
    "js/api.js" => "text/javascript; charset=utf-8",
    "js/ui.js" => "text/javascript; charset=utf-8",
    "js/main.js" => "text/javascript; charset=utf-8",
    "js/apps.js" => "text/javascript; charset=utf-8",
    "js/users.js" => "text/javascript; charset=utf-8",
    "js/tags.js" => "text/javascript; charset=utf-8",
    "js/filter.js" => "text/javascript; charset=utf-8",
    "js/audience.js" => "text/javascript; charset=utf-8",
    "js/broadcasts.js" => "text/javascript; charset=utf-8",
    "js/events.js" => "text/javascript; charset=utf-8",
}

/// Where the files come from: the binary, or (`console.dir`, for working on the console)
/// the same names read from a directory at every request.
pub struct Console {
    dir: Option<PathBuf>,
    etags: Vec<HeaderValue>,
}

impl Console {
    pub fn new(dir: Option<PathBuf>) -> Self {
        let etags = ASSETS.iter().map(|(_, _, bytes)| etag(bytes)).collect();
        Console { dir, etags }
    }
}

fn etag(bytes: &[u8]) -> HeaderValue {
    let digest = Sha256::digest(bytes);
    HeaderValue::from_str(&format!("\"{}\"", hex::encode(&digest[..12])))
        .expect("hex is a valid header value")
}

/// `/console` (redirected to `/console/`), `/console/` and `/console/{file}`.
pub fn routes(console: Arc<Console>) -> Router {
    Router::new()
        .route(
            "/console",
            get(|| async { with_headers(Redirect::permanent("/console/").into_response()) }),
        )
        .route(
            "/console/",
            get(|State(c): State<Arc<Console>>, h: HeaderMap| async move {
                serve(&c, "index.html", &h).await
            }),
        )
        .route(
            "/console/{*file}",
            get(
                |State(c): State<Arc<Console>>, Path(file): Path<String>, h: HeaderMap| async move {
                    serve(&c, &file, &h).await
                },
            ),
        )
        .with_state(console)
}

async fn serve(console: &Console, name: &str, headers: &HeaderMap) -> Response {
    let Some(i) = ASSETS.iter().position(|(n, _, _)| *n == name) else {
        return with_headers(
            (
                StatusCode::NOT_FOUND,
                [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
                "no such console file\n",
            )
                .into_response(),
        );
    };
    let (_, mime, embedded) = ASSETS[i];
    let (body, tag) = match &console.dir {
        None => (embedded.to_vec(), console.etags[i].clone()),
        Some(dir) => match tokio::fs::read(dir.join(name)).await {
            Ok(bytes) => {
                let tag = etag(&bytes);
                (bytes, tag)
            }
            Err(e) => {
                tracing::warn!(file = name, error = %e, "reading a console file from console.dir");
                return with_headers(
                    (StatusCode::NOT_FOUND, "the console file cannot be read\n").into_response(),
                );
            }
        },
    };
    if headers.get(header::IF_NONE_MATCH) == Some(&tag) {
        let mut r = StatusCode::NOT_MODIFIED.into_response();
        r.headers_mut().insert(header::ETAG, tag);
        return with_headers(r);
    }
    let mut r = (
        [
            (header::CONTENT_TYPE, HeaderValue::from_static(mime)),
            // Revalidated at every load (a 304 when unchanged), so an upgraded server is
            // never paired with the page of the release before.
            (header::CACHE_CONTROL, HeaderValue::from_static("no-cache")),
        ],
        body,
    )
        .into_response();
    r.headers_mut().insert(header::ETAG, tag);
    with_headers(r)
}

fn with_headers(mut r: Response) -> Response {
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    r
}
