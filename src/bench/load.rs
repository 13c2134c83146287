//! The load generator: keep-alive HTTP/1.1 connections (hyper's client connection, no
//! pool in between), closed loop (each connection sends its next request as soon as the
//! last is answered) or open loop (requests due at a fixed arrival rate; a request held
//! back by a late answer counts its latency from when it was due, so a stalled server
//! cannot hide its queue: no coordinated omission).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use hdrhistogram::Histogram;
use http::{HeaderMap, Method};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use tokio::time::Instant;

/// One request, ready to send (already signed when it needs to be).
#[derive(Clone)]
pub struct Request {
    pub method: Method,
    /// Path and query, e.g. `/?Action=..&Version=..`.
    pub path_and_query: String,
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// Makes request number `n` of a run.
pub type Generator = Arc<dyn Fn(u64) -> Request + Send + Sync>;

/// How requests are sent.
#[derive(Clone, Copy, Debug)]
pub enum Pace {
    /// Each connection sends back to back for `duration`.
    Closed { duration: Duration },
    /// Requests are due at `rate` per second for `duration`, spread over the connections.
    Open { rate: f64, duration: Duration },
    /// Requests 0..count, each sent once, as fast as answers come.
    Count { count: u64 },
}

/// What a good answer looks like.
#[derive(Clone)]
pub struct Expect {
    pub status: u16,
    /// The answer body must contain this (e.g. `"FailedInfos":[]`), when set.
    pub body_contains: Option<&'static [u8]>,
}

/// The result of one run.
pub struct RunResult {
    pub ok: u64,
    pub failed: u64,
    pub first_failure: Option<String>,
    pub elapsed: Duration,
    /// Latency of good answers, microseconds.
    pub latency_us: Histogram<u64>,
}

impl RunResult {
    pub fn rps(&self) -> f64 {
        self.ok as f64 / self.elapsed.as_secs_f64()
    }

    pub fn percentile_ms(&self, q: f64) -> f64 {
        self.latency_us.value_at_quantile(q) as f64 / 1000.0
    }

    pub fn max_ms(&self) -> f64 {
        self.latency_us.max() as f64 / 1000.0
    }
}

fn histogram() -> Histogram<u64> {
    // 1 µs .. 10 min, 3 significant digits.
    Histogram::new_with_bounds(1, 600_000_000, 3).expect("valid histogram bounds")
}

struct Conn {
    sender: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
}

async fn connect(addr: SocketAddr) -> Result<Conn, String> {
    let stream = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connecting to {addr}: {e}"))?;
    stream.set_nodelay(true).map_err(|e| e.to_string())?;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| format!("HTTP handshake with {addr}: {e}"))?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(Conn { sender })
}

/// Sends one request on a connection of its own; the body of a 200 answer.
pub async fn fetch(addr: SocketAddr, req: Request) -> Result<Bytes, String> {
    let mut conn = connect(addr).await?;
    let expect = Expect {
        status: 200,
        body_contains: None,
    };
    send(&mut conn, &addr.to_string(), req, &expect).await
}

/// Sends one request; the answer's body, or what was wrong with the answer.
async fn send(conn: &mut Conn, host: &str, req: Request, expect: &Expect) -> Result<Bytes, String> {
    let mut builder = hyper::Request::builder()
        .method(req.method)
        .uri(req.path_and_query);
    if let Some(h) = builder.headers_mut() {
        *h = req.headers;
        if !h.contains_key(http::header::HOST) {
            h.insert(
                http::header::HOST,
                host.parse().map_err(|_| "bad host".to_owned())?,
            );
        }
    }
    let request = builder
        .body(Full::new(req.body))
        .map_err(|e| e.to_string())?;
    conn.sender
        .ready()
        .await
        .map_err(|e| format!("connection: {e}"))?;
    let response = conn
        .sender
        .send_request(request)
        .await
        .map_err(|e| format!("sending: {e}"))?;
    let status = response.status().as_u16();
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|e| format!("reading the answer: {e}"))?
        .to_bytes();
    let body_ok = expect
        .body_contains
        .is_none_or(|needle| body.windows(needle.len()).any(|w| w == needle));
    if status != expect.status || !body_ok {
        return Err(format!(
            "HTTP {status}: {}",
            String::from_utf8_lossy(&body[..body.len().min(300)])
        ));
    }
    Ok(body)
}

struct Tally {
    ok: u64,
    failed: u64,
    first_failure: Option<String>,
    latency_us: Histogram<u64>,
}

/// Runs `pace` against `addr` over `connections` connections.
pub async fn run(
    addr: SocketAddr,
    connections: usize,
    pace: Pace,
    generator: Generator,
    expect: Expect,
) -> Result<RunResult, String> {
    let host = addr.to_string();
    let connections = connections.max(1);
    // Connect everything first, so the clock does not include connection set-up.
    let mut conns = Vec::with_capacity(connections);
    for _ in 0..connections {
        conns.push(connect(addr).await?);
    }
    let next = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let mut tasks = Vec::with_capacity(connections);
    for (c, mut conn) in conns.into_iter().enumerate() {
        let (generator, expect, host, next) = (
            generator.clone(),
            expect.clone(),
            host.clone(),
            next.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut tally = Tally {
                ok: 0,
                failed: 0,
                first_failure: None,
                latency_us: histogram(),
            };
            let mut k: u64 = 0;
            loop {
                // Which request, and when it is due.
                let (n, due) = match pace {
                    Pace::Closed { duration } => {
                        if start.elapsed() >= duration {
                            break;
                        }
                        (k * connections as u64 + c as u64, Instant::now())
                    }
                    Pace::Open { rate, duration } => {
                        let n = k * connections as u64 + c as u64;
                        let offset = Duration::from_secs_f64(n as f64 / rate);
                        if offset >= duration {
                            break;
                        }
                        let due = start + offset;
                        if Instant::now() >= due {
                            // Late because the last answer came late: the wait counts.
                            (n, due)
                        } else {
                            // On time: the client's own timer lateness (tokio's timer
                            // has millisecond resolution) must not count against the
                            // server, so measure from the moment of sending.
                            tokio::time::sleep_until(due).await;
                            (n, Instant::now())
                        }
                    }
                    Pace::Count { count } => {
                        let n = next.fetch_add(1, Ordering::Relaxed);
                        if n >= count {
                            break;
                        }
                        (n, Instant::now())
                    }
                };
                k += 1;
                match send(&mut conn, &host, generator(n), &expect).await {
                    Ok(_) => {
                        let us = due.elapsed().as_micros().max(1) as u64;
                        tally.latency_us.saturating_record(us);
                        tally.ok += 1;
                    }
                    Err(e) => {
                        tally.failed += 1;
                        tally.first_failure.get_or_insert(e);
                        // The connection may be gone: start a new one.
                        conn = connect(addr).await?;
                    }
                }
            }
            Ok::<Tally, String>(tally)
        }));
    }
    let mut result = RunResult {
        ok: 0,
        failed: 0,
        first_failure: None,
        elapsed: Duration::ZERO,
        latency_us: histogram(),
    };
    for task in tasks {
        let tally = task.await.map_err(|e| format!("load task: {e}"))??;
        result.ok += tally.ok;
        result.failed += tally.failed;
        if result.first_failure.is_none() {
            result.first_failure = tally.first_failure;
        }
        result
            .latency_us
            .add(&tally.latency_us)
            .map_err(|e| e.to_string())?;
    }
    result.elapsed = start.elapsed();
    Ok(result)
}
