//! A webhook receiver for the tests: loopback, port 0, plain or TLS. It verifies every
//! signature (tagcast's `X-Tagcast-Signature` and the Standard Webhooks
//! `webhook-signature`), records every request, and answers as the test's behaviour says
//! (fail, or answer late).

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::Value;

pub const SECRET: &str = "whsec-test-7f3a9c1e5b";

/// What the receiver does with the n-th request (0-based) for a delivery id.
#[derive(Clone, Debug)]
pub enum Answer {
    Ok,
    Fail,
    /// Answer 200 after this long (longer than the server's timeout: a timeout).
    Slow(Duration),
    /// Answer this 3xx status with this `Location`.
    Redirect(u16, String),
}

type Behaviour = dyn Fn(&str, usize) -> Answer + Send + Sync;

#[derive(Clone, Debug)]
pub struct Arrival {
    pub delivery_id: String,
    pub broadcast_id: String,
    pub page: u64,
    pub pages: u64,
    pub user_ids: Vec<i64>,
    pub at: Instant,
    /// Whether it was answered 2xx.
    pub acked: bool,
}

/// An event batch (API.md §9) as it arrived.
#[derive(Clone, Debug)]
pub struct EventBatch {
    pub delivery_id: String,
    pub app: i64,
    pub events: Vec<Value>,
    pub acked: bool,
}

impl EventBatch {
    pub fn seqs(&self) -> Vec<u64> {
        self.events
            .iter()
            .map(|e| e["Seq"].as_str().unwrap().parse().unwrap())
            .collect()
    }
}

/// A verified request as it came: its headers and body.
#[derive(Clone, Debug)]
pub struct Raw {
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

#[derive(Default)]
struct Inner {
    arrivals: Vec<Arrival>,
    event_batches: Vec<EventBatch>,
    raw: Vec<Raw>,
    bad_signatures: usize,
    seen: HashMap<String, usize>,
    in_flight: HashMap<String, usize>,
    /// Requests for a delivery id that arrived while another for it was in flight.
    overlapping: usize,
}

pub struct Receiver {
    pub url: String,
    inner: Arc<Mutex<Inner>>,
    _task: tokio::task::JoinHandle<()>,
}

#[derive(Clone)]
struct Shared {
    inner: Arc<Mutex<Inner>>,
    behaviour: Arc<Behaviour>,
    secret: Arc<String>,
}

/// The Standard Webhooks key of `secret` (a `whsec_` secret base64-decoded).
fn standard_key(secret: &str) -> Vec<u8> {
    use base64::Engine;
    match secret.strip_prefix("whsec_") {
        Some(b) => base64::engine::general_purpose::STANDARD.decode(b).unwrap(),
        None => secret.as_bytes().to_vec(),
    }
}

/// `webhook-signature` against `webhook-id`, `webhook-timestamp` and the body.
fn verify_standard(secret: &str, headers: &HeaderMap, body: &[u8]) -> bool {
    use base64::Engine;
    use hmac::{KeyInit, Mac};
    let get = |name| headers.get(name).and_then(|v| v.to_str().ok());
    let (Some(id), Some(ts), Some(sig)) = (
        get("webhook-id"),
        get("webhook-timestamp"),
        get("webhook-signature"),
    ) else {
        return false;
    };
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(&standard_key(secret)).unwrap();
    mac.update(format!("{id}.{ts}.").as_bytes());
    mac.update(body);
    let want = format!(
        "v1,{}",
        base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
    );
    id == get("x-tagcast-delivery").unwrap_or_default()
        && Some(ts) == get("x-tagcast-timestamp")
        && sig.split(' ').any(|s| s == want)
}

fn verify(secret: &str, headers: &HeaderMap, body: &[u8]) -> bool {
    use hmac::{KeyInit, Mac};
    let (Some(ts), Some(sig)) = (
        headers.get("x-tagcast-timestamp"),
        headers.get("x-tagcast-signature"),
    ) else {
        return false;
    };
    let ts = ts.to_str().unwrap_or("");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    if ts.parse::<u64>().map_or(true, |t| t.abs_diff(now) > 300) {
        return false;
    }
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(ts.as_bytes());
    mac.update(b".");
    mac.update(body);
    let want = format!("v1={}", hex::encode(mac.finalize().into_bytes()));
    sig.to_str().is_ok_and(|s| s == want)
}

/// Out of flight however the request ends: a sender that disconnects (killed, or timed
/// out) drops its handler mid-way.
struct InFlight(Arc<Mutex<Inner>>, String);

impl Drop for InFlight {
    fn drop(&mut self) {
        if let Ok(mut i) = self.0.lock() {
            *i.in_flight.get_mut(&self.1).unwrap() -= 1;
        }
    }
}

/// Counts an attempt at `delivery_id` and marks `key` in flight (an overlap when it was
/// already) until the guard drops: the attempt's number from 0, and the guard.
fn enter(inner: &Arc<Mutex<Inner>>, delivery_id: &str, key: &str) -> (usize, InFlight) {
    let mut i = inner.lock().unwrap();
    let n = *i
        .seen
        .entry(delivery_id.to_owned())
        .and_modify(|n| *n += 1)
        .or_insert(1)
        - 1;
    let f = i.in_flight.entry(key.to_owned()).or_default();
    *f += 1;
    if *f > 1 {
        i.overlapping += 1;
    }
    (n, InFlight(inner.clone(), key.to_owned()))
}

async fn handle(State(s): State<Shared>, headers: HeaderMap, body: Bytes) -> Response {
    if !verify(&s.secret, &headers, &body) || !verify_standard(&s.secret, &headers, &body) {
        s.inner.lock().unwrap().bad_signatures += 1;
        return StatusCode::UNAUTHORIZED.into_response();
    }
    s.inner.lock().unwrap().raw.push(Raw {
        headers: headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_str().unwrap_or_default().to_owned()))
            .collect(),
        body: body.to_vec(),
    });
    let v: Value = serde_json::from_slice(&body).unwrap();
    let delivery_id = v["DeliveryId"].as_str().unwrap().to_owned();
    assert_eq!(
        headers.get("x-tagcast-delivery").unwrap().to_str().unwrap(),
        delivery_id
    );
    if v["Event"] == "Events" {
        return handle_events(s, v, delivery_id).await;
    }
    let (n, guard) = enter(&s.inner, &delivery_id, &delivery_id);
    let answer = (s.behaviour)(&delivery_id, n);
    if let Answer::Slow(d) = &answer {
        tokio::time::sleep(*d).await;
    }
    drop(guard);
    let acked = matches!(answer, Answer::Ok | Answer::Slow(_));
    let mut i = s.inner.lock().unwrap();
    i.arrivals.push(Arrival {
        delivery_id,
        broadcast_id: v["BroadcastId"].as_str().unwrap().to_owned(),
        page: v["Page"].as_u64().unwrap(),
        pages: v["Pages"].as_u64().unwrap(),
        user_ids: v["UserIds"]
            .as_array()
            .unwrap()
            .iter()
            .map(|u| u.as_i64().unwrap())
            .collect(),
        at: Instant::now(),
        acked,
    });
    drop(i);
    match answer {
        Answer::Redirect(status, location) => (
            StatusCode::from_u16(status).unwrap(),
            [(axum::http::header::LOCATION, location)],
        )
            .into_response(),
        _ if acked => StatusCode::OK.into_response(),
        _ => StatusCode::INTERNAL_SERVER_ERROR.into_response(),
    }
}

/// An event batch: in flight per app (one sender per (webhook, app) at a time), recorded
/// with the behaviour's answer.
async fn handle_events(s: Shared, v: Value, delivery_id: String) -> Response {
    let app = v["AppId"].as_i64().unwrap();
    // One sender per (webhook, app): in flight per app, whatever the batch.
    let (n, guard) = enter(&s.inner, &delivery_id, &format!("events-{app}"));
    let answer = (s.behaviour)(&delivery_id, n);
    if let Answer::Slow(d) = &answer {
        tokio::time::sleep(*d).await;
    }
    let acked = matches!(answer, Answer::Ok | Answer::Slow(_));
    s.inner.lock().unwrap().event_batches.push(EventBatch {
        delivery_id,
        app,
        events: v["Events"].as_array().unwrap().clone(),
        acked,
    });
    drop(guard);
    if acked {
        StatusCode::OK.into_response()
    } else {
        StatusCode::INTERNAL_SERVER_ERROR.into_response()
    }
}

/// Counts every request to it, whatever it is, and answers 200: where a followed redirect
/// would have gone.
pub struct Elsewhere {
    pub url: String,
    hits: Arc<std::sync::atomic::AtomicUsize>,
    _task: tokio::task::JoinHandle<()>,
}

impl Elsewhere {
    pub async fn start() -> Self {
        let hits: Arc<std::sync::atomic::AtomicUsize> = Arc::default();
        let counted = hits.clone();
        let app = axum::Router::new().fallback(move || {
            counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            async { StatusCode::OK }
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/landed", listener.local_addr().unwrap());
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Elsewhere {
            url,
            hits,
            _task: task,
        }
    }

    pub fn hits(&self) -> usize {
        self.hits.load(std::sync::atomic::Ordering::SeqCst)
    }
}

impl Receiver {
    pub async fn start(behaviour: impl Fn(&str, usize) -> Answer + Send + Sync + 'static) -> Self {
        Self::start_with(SECRET, None, behaviour).await
    }

    /// A receiver of the webhook whose secret is `secret`, over TLS with `tls` (the PEM
    /// certificate chain and key it presents) when given: its URL is then `https://`.
    pub async fn start_with(
        secret: &str,
        tls: Option<(&str, &str)>,
        behaviour: impl Fn(&str, usize) -> Answer + Send + Sync + 'static,
    ) -> Self {
        let inner: Arc<Mutex<Inner>> = Arc::default();
        let shared = Shared {
            inner: inner.clone(),
            behaviour: Arc::new(behaviour),
            secret: Arc::new(secret.to_owned()),
        };
        let app = axum::Router::new()
            .route("/hook", axum::routing::post(handle))
            .with_state(shared);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (url, task) = match tls {
            None => (
                format!("http://{addr}/hook"),
                tokio::spawn(async move {
                    axum::serve(listener, app).await.unwrap();
                }),
            ),
            Some((cert, key)) => {
                let listener = TlsListener::new(listener, cert, key);
                (
                    format!("https://{addr}/hook"),
                    tokio::spawn(async move {
                        axum::serve(listener, app).await.unwrap();
                    }),
                )
            }
        };
        Receiver {
            url,
            inner,
            _task: task,
        }
    }

    /// Every verified request, as it came.
    pub fn raw(&self) -> Vec<Raw> {
        self.inner.lock().unwrap().raw.clone()
    }

    pub fn arrivals(&self) -> Vec<Arrival> {
        self.inner.lock().unwrap().arrivals.clone()
    }

    /// Requests received so far, answered or not (a receiver that hangs records no
    /// arrival).
    pub fn event_batches(&self) -> Vec<EventBatch> {
        self.inner.lock().unwrap().event_batches.clone()
    }

    pub fn received(&self) -> usize {
        self.inner.lock().unwrap().seen.values().sum()
    }

    pub fn bad_signatures(&self) -> usize {
        self.inner.lock().unwrap().bad_signatures
    }

    pub fn overlapping(&self) -> usize {
        self.inner.lock().unwrap().overlapping
    }

    /// The acknowledged delivery ids of a broadcast.
    pub fn acked_pages(&self, broadcast_id: &str) -> BTreeSet<String> {
        self.arrivals()
            .into_iter()
            .filter(|a| a.acked && a.broadcast_id == broadcast_id)
            .map(|a| a.delivery_id)
            .collect()
    }

    /// Waits (at most `limit`) until every page of the broadcast has been acknowledged;
    /// the union of the user ids of its acknowledged pages.
    pub async fn wait_complete(
        &self,
        broadcast_id: &str,
        pages: u64,
        limit: Duration,
    ) -> BTreeSet<i64> {
        let deadline = Instant::now() + limit;
        loop {
            let acked = self.acked_pages(broadcast_id);
            if acked.len() as u64 >= pages {
                return self
                    .arrivals()
                    .into_iter()
                    .filter(|a| a.acked && a.broadcast_id == broadcast_id)
                    .flat_map(|a| a.user_ids)
                    .collect();
            }
            assert!(
                Instant::now() < deadline,
                "broadcast {broadcast_id}: {} of {pages} pages acknowledged after {limit:?}",
                acked.len()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// The `[[webhooks]]` entry for `url`, its secret in a file under `dir` (a config written
/// to a file for a child process never holds a webhook secret inline).
pub fn webhook(
    dir: &std::path::Path,
    url: &str,
    page_size: usize,
) -> tagcast::config::WebhookConfig {
    let path = dir.join("webhook.secret");
    std::fs::write(&path, SECRET).unwrap();
    tagcast::config::WebhookConfig::with_secret_file(url, path, page_size)
}

/// A TCP listener whose connections are TLS: a handshake that fails (the client refused
/// the certificate) is counted and the next connection accepted.
struct TlsListener {
    tcp: tokio::net::TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
}

impl TlsListener {
    fn new(tcp: tokio::net::TcpListener, cert: &str, key: &str) -> Self {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let chain = CertificateDer::pem_slice_iter(cert.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .unwrap();
        let key = PrivateKeyDer::from_pem_slice(key.as_bytes()).unwrap();
        let config = rustls::ServerConfig::builder_with_provider(tagcast::tls::provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .unwrap();
        TlsListener {
            tcp,
            acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(config)),
        }
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = tokio_rustls::server::TlsStream<tokio::net::TcpStream>;
    type Addr = std::net::SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let Ok((tcp, addr)) = self.tcp.accept().await else {
                continue;
            };
            if let Ok(tls) = self.acceptor.accept(tcp).await {
                return (tls, addr);
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.tcp.local_addr()
    }
}
