//! Webhook delivery and the expiry sweeper, one of each per node.
//!
//! The delivery loop claims due pages from the outbox (under a lease, so with several
//! nodes one node at a time sends a page), POSTs each with the signature headers, and
//! records the outcome in batches: a 2xx delivers the page; anything else (a redirect
//! included: none is followed), a timeout or a connection error schedules a retry after
//! `retry_base_ms` doubling per attempt (at most `retry_max_ms`), with full jitter over the
//! upper half; a retry that would come after the broadcast's expiry fails the page
//! instead. Nothing is acknowledged before it is in the store, so a restart or kill -9
//! resumes every pending page (at least once).
//!
//! One bad receiver hurts only itself: each webhook has at most `delivery.per_webhook`
//! pages in flight on a node, the free slots are handed out one at a time across the
//! webhooks under their share (starting with a different one each round), and each
//! webhook's pages are claimed from its broadcasts in turn (`outbox.rs`). Failed attempts
//! are logged, at most one line per webhook per 30 s with the count of the others.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use hmac::{KeyInit, Mac};
use serde::Serialize;
use tokio::sync::{Notify, Semaphore, mpsc, watch};

use super::{Claimed, Loaded, PageDone, PageKey, Service, page_ordinals, pages};
use crate::config::Webhook;
use crate::metrics::Metrics;
use crate::store::{Store, now_ms};
use crate::throttle::LogThrottle;

/// The body of one page (API.md §7).
#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct PageBody<'a> {
    event: &'static str,
    delivery_id: String,
    broadcast_id: String,
    app_id: u32,
    inbox_type: u32,
    sender: i64,
    msg_type: i64,
    content: &'a str,
    ext: &'a std::collections::BTreeMap<String, String>,
    create_time: i64,
    expire_time: i64,
    page: u32,
    pages: u32,
    user_ids: Vec<i64>,
}

/// `v1=` + hex HMAC-SHA256(secret, timestamp + "." + body).
pub fn signature(secret: &[u8], timestamp: u64, body: &[u8]) -> String {
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret).expect("HMAC takes any key");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!("v1={}", hex::encode(mac.finalize().into_bytes()))
}

/// The Standard Webhooks signature (standardwebhooks.com): `v1,` and the base64 of
/// HMAC-SHA256(key, id + "." + timestamp + "." + body).
pub fn standard_signature(key: &[u8], id: &str, timestamp: u64, body: &[u8]) -> String {
    use base64::Engine;
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(key).expect("HMAC takes any key");
    mac.update(id.as_bytes());
    mac.update(b".");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body);
    format!(
        "v1,{}",
        base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
    )
}

/// The client of one webhook: no redirects followed, its timeout, and for https its own
/// verification (the system's CAs or its `ca_file`).
pub(crate) fn webhook_client(w: &Webhook, timeout: Duration, pool: usize) -> reqwest::Client {
    // An http:// webhook never makes a TLS connection (no redirect is followed).
    let tls = match &w.tls {
        Some(tls) => (**tls).clone(),
        None => crate::tls::http_client_tls(&w.url),
    };
    reqwest::Client::builder()
        .timeout(timeout)
        // A 3xx is a failed attempt: following it would send the signed page elsewhere,
        // or (a 302) turn it into a body-less GET whose 200 would count as delivered.
        .redirect(reqwest::redirect::Policy::none())
        .pool_max_idle_per_host(pool)
        .tls_backend_preconfigured(tls)
        .build()
        .expect("a client of a preconfigured rustls configuration builds")
}

/// The TLS error under a failed request (a certificate that does not verify, a handshake
/// refused), in rustls's words: what the log and the metric need.
fn tls_cause(e: &reqwest::Error) -> Option<String> {
    let mut next: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(error) = next {
        if let Some(tls) = error.downcast_ref::<rustls::Error>() {
            return Some(tls.to_string());
        }
        // An io::Error's source() skips the error it wraps (the connector wraps the TLS
        // stream's io::Error, which wraps rustls's): step into it instead.
        next = match error.downcast_ref::<std::io::Error>() {
            Some(io) => io
                .get_ref()
                .map(|inner| inner as &(dyn std::error::Error + 'static)),
            None => error.source(),
        };
    }
    None
}

/// The delay before attempt `attempts + 1`: `base` doubling per attempt up to `max`, a
/// uniformly random point of its upper half (so nodes retrying together spread out).
pub fn backoff_ms(attempts: u32, base: u64, max: u64) -> u64 {
    let exp = base.saturating_mul(1u64 << attempts.saturating_sub(1).min(32));
    let delay = exp.min(max).max(1);
    delay / 2 + rand::random_range(0..=delay - delay / 2)
}

/// Runs the delivery loop, the finisher and the sweeper until `stop` turns true.
pub async fn run(
    store: Arc<dyn Store>,
    service: Arc<Service>,
    metrics: Arc<Metrics>,
    stop: watch::Receiver<bool>,
) {
    let sweeper = tokio::spawn(sweep(
        store.clone(),
        service.clone(),
        metrics.clone(),
        stop.clone(),
    ));
    if !service.webhooks.is_empty() {
        deliver(store, service, metrics, stop).await;
    }
    let _ = sweeper.await;
}

/// A configured webhook as the delivery loop tracks it.
struct Hook {
    webhook: Webhook,
    /// Its own client: its own TLS trust (`ca_file`) and connection pool.
    http: reqwest::Client,
    /// Pages of this webhook in flight on this node.
    in_flight: AtomicUsize,
    /// Failed attempts: one line per 30 s.
    failures: LogThrottle,
}

/// Hands `free` slots out one at a time, webhook after webhook starting with `first`, to
/// the webhooks with fewer than `share` pages in flight; how many each gets.
fn share_slots(in_flight: &[usize], share: usize, free: usize, first: usize) -> Vec<usize> {
    let n = in_flight.len();
    let mut wants = vec![0; n];
    let mut left = free;
    while left > 0 {
        let mut gave = false;
        for k in 0..n {
            let i = (first + k) % n;
            if left > 0 && in_flight[i] + wants[i] < share {
                wants[i] += 1;
                left -= 1;
                gave = true;
            }
        }
        if !gave {
            break;
        }
    }
    wants
}

async fn deliver(
    store: Arc<dyn Store>,
    service: Arc<Service>,
    metrics: Arc<Metrics>,
    mut stop: watch::Receiver<bool>,
) {
    let cfg = service.delivery.clone();
    let share = cfg.per_webhook();
    let hooks: Arc<Vec<Hook>> = Arc::new(
        service
            .webhooks
            .iter()
            .map(|w| Hook {
                http: webhook_client(w, cfg.timeout(), share),
                webhook: w.clone(),
                in_flight: AtomicUsize::new(0),
                failures: LogThrottle::new(Duration::from_secs(30)),
            })
            .collect(),
    );
    let permits = Arc::new(Semaphore::new(cfg.concurrency));
    // An attempt ended, or outcomes were recorded: a webhook at its share, or a lane at
    // its window, may give another page.
    let freed = Arc::new(Notify::new());
    let (done_tx, done_rx) = mpsc::unbounded_channel();
    let finisher = tokio::spawn(finish(store.clone(), done_rx, share as u32, freed.clone()));
    let warn = LogThrottle::new(Duration::from_secs(30));
    let poll = Duration::from_millis(cfg.poll_ms);
    let mut first = 0usize;
    while !*stop.borrow() {
        let in_flight: Vec<usize> = hooks
            .iter()
            .map(|h| h.in_flight.load(Ordering::SeqCst))
            .collect();
        let wants = share_slots(&in_flight, share, permits.available_permits(), first);
        first = (first + 1) % hooks.len();
        let asks: Vec<(String, usize)> = wants
            .iter()
            .enumerate()
            .filter(|(_, n)| **n > 0)
            .map(|(i, n)| (hooks[i].webhook.url.clone(), *n))
            .collect();
        if asks.is_empty() {
            // Every slot is taken, or every webhook has its share in flight.
            tokio::select! {
                _ = freed.notified() => {}
                _ = stop.changed() => {}
            }
            continue;
        }
        let claimed = match store
            .claim_pages(
                service.clock.now_ms(),
                cfg.lease_ms as i64,
                share as u32,
                asks.clone(),
            )
            .await
        {
            Ok(c) => c,
            Err(e) => {
                if let Some(repeated) = warn.admit() {
                    tracing::warn!(error = %e.chain(), repeated, "claiming webhook pages failed; retrying");
                }
                Vec::new()
            }
        };
        // A webhook that got all it asked for may have more due at once.
        let more = asks
            .iter()
            .any(|(url, n)| claimed.iter().filter(|c| &c.key.url == url).count() >= *n);
        for c in claimed {
            let Some(i) = hooks.iter().position(|h| h.webhook.url == c.key.url) else {
                continue;
            };
            let permit = permits
                .clone()
                .try_acquire_owned()
                .expect("only this loop takes slots, and it asked for free ones");
            hooks[i].in_flight.fetch_add(1, Ordering::SeqCst);
            let (store, service, metrics, done, hooks, freed) = (
                store.clone(),
                service.clone(),
                metrics.clone(),
                done_tx.clone(),
                hooks.clone(),
                freed.clone(),
            );
            tokio::spawn(async move {
                let key = c.key.clone();
                let outcome = attempt(&*store, &service, &metrics, &hooks[i], c).await;
                let _ = done.send((key, outcome));
                hooks[i].in_flight.fetch_sub(1, Ordering::SeqCst);
                drop(permit);
                freed.notify_one();
            });
        }
        if !more {
            tokio::select! {
                _ = tokio::time::sleep(poll) => {}
                _ = service.wake.notified() => {}
                _ = freed.notified() => {}
                _ = stop.changed() => {}
            }
        }
    }
    // Attempts in flight finish (each bounded by the timeout) and are recorded; a page
    // whose outcome is not recorded is sent again after its lease.
    let _ = permits.acquire_many(cfg.concurrency as u32).await;
    drop(done_tx);
    let _ = finisher.await;
}

/// Records outcomes in batches; keeps a batch and retries while the store refuses. Each
/// recorded batch wakes the loop (`recorded`): until then the pages count as open in
/// their lanes, and a lane at its window gives no page.
async fn finish(
    store: Arc<dyn Store>,
    mut rx: mpsc::UnboundedReceiver<(PageKey, PageDone)>,
    window: u32,
    recorded: Arc<Notify>,
) {
    let warn = LogThrottle::new(Duration::from_secs(30));
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        while batch.len() < 512 {
            match rx.try_recv() {
                Ok(d) => batch.push(d),
                Err(_) => break,
            }
        }
        loop {
            match store.finish_pages(batch.clone(), window).await {
                Ok(()) => {
                    recorded.notify_one();
                    break;
                }
                Err(e) => {
                    if let Some(repeated) = warn.admit() {
                        tracing::warn!(error = %e.chain(), repeated, pages = batch.len(), "recording webhook outcomes failed; retrying (unrecorded pages are sent again after their lease)");
                    }
                    if rx.is_closed() && store.ready().await.is_err() {
                        // Stopping with the store gone: the leases hand these pages on.
                        return;
                    }
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    }
}

/// One attempt at one page.
async fn attempt(
    store: &dyn Store,
    service: &Service,
    metrics: &Metrics,
    hook: &Hook,
    c: Claimed,
) -> PageDone {
    let cfg = &service.delivery;
    let webhook = &hook.webhook;
    let delivery_id = format!("{}-{}", c.key.broadcast_id, c.key.page);
    let loaded = match service.loaded(store, c.key.broadcast_id).await {
        Ok(Some(l)) => l,
        // Purged meanwhile (its pages go with it).
        Ok(None) => return PageDone::Failed,
        Err(e) => {
            tracing::warn!(error = %e.chain(), broadcast = c.key.broadcast_id, "reading a broadcast for delivery failed; retrying");
            return PageDone::Retry {
                at_ms: service.clock.now_ms() + cfg.retry_base_ms as i64,
            };
        }
    };
    let expire_time = loaded.info.expire_time;
    let failed = |cause: String| {
        metrics.delivery.attempts_failed.inc();
        let now = service.clock.now_ms();
        let at = now + backoff_ms(c.attempts, cfg.retry_base_ms, cfg.retry_max_ms) as i64;
        let (next, done) = if at >= expire_time {
            metrics.delivery.pages_failed.inc();
            (
                "none: the broadcast expires first; the page failed".to_owned(),
                PageDone::Failed,
            )
        } else {
            let wait = at - now;
            let next = if wait < 1000 {
                format!("in {wait} ms")
            } else {
                format!("in {:.1} s", wait as f64 / 1000.0)
            };
            (next, PageDone::Retry { at_ms: at })
        };
        if let Some(repeated) = hook.failures.admit() {
            tracing::warn!(
                url = %crate::config::redact_url(&webhook.url),
                delivery = %delivery_id,
                attempt = c.attempts,
                cause = %cause,
                retry = %next,
                repeated,
                "webhook attempt failed"
            );
        }
        done
    };
    if service.clock.now_ms() >= expire_time {
        metrics.delivery.pages_failed.inc();
        return PageDone::Failed;
    }
    let body = match page_body(store, webhook, &loaded, c.key.page).await {
        Ok(b) => b,
        Err(e) => return failed(format!("building the page failed: {e}")),
    };
    let ids = body.1;
    let body = body.0;
    match post_signed(
        &hook.http,
        webhook,
        &delivery_id,
        body,
        cfg.timeout_ms,
        metrics,
    )
    .await
    {
        Ok(()) => {
            metrics.delivery.pages_delivered.inc();
            metrics.delivery.user_ids_delivered.inc_by(ids);
            hook.failures.reset();
            PageDone::Delivered
        }
        Err(cause) => failed(cause),
    }
}

/// POSTs `body` to `webhook`, signed both ways (`X-Tagcast-Signature` and the Standard
/// Webhooks headers, `delivery_id` as `webhook-id`), through its client (no redirects
/// followed): `Ok` on a 2xx, else the cause for the log (a TLS failure is counted).
pub(crate) async fn post_signed(
    http: &reqwest::Client,
    webhook: &Webhook,
    delivery_id: &str,
    body: Vec<u8>,
    timeout_ms: u64,
    metrics: &Metrics,
) -> Result<(), String> {
    // The receiver's clock judges this one: the wall clock's.
    let timestamp = (now_ms() / 1000) as u64;
    let sent = http
        .post(&webhook.url)
        .header("Content-Type", "application/json")
        .header("X-Tagcast-Delivery", delivery_id)
        .header("X-Tagcast-Timestamp", timestamp.to_string())
        .header(
            "X-Tagcast-Signature",
            signature(&webhook.secret, timestamp, &body),
        )
        .header("webhook-id", delivery_id)
        .header("webhook-timestamp", timestamp.to_string())
        .header(
            "webhook-signature",
            standard_signature(&webhook.standard_key, delivery_id, timestamp, &body),
        )
        .body(body)
        .send()
        .await;
    Err(match sent {
        Ok(r) if r.status().is_success() => return Ok(()),
        Ok(r) if r.status().is_redirection() => format!(
            "HTTP {} (a redirect: tagcast follows none; point the webhook at the final URL)",
            r.status().as_u16()
        ),
        Ok(r) => format!("HTTP {}", r.status().as_u16()),
        Err(e) if e.is_timeout() => format!("no answer within {timeout_ms} ms"),
        Err(e) if let Some(tls) = tls_cause(&e) => {
            metrics.delivery.tls_failures.inc();
            format!("TLS: {tls}")
        }
        Err(e) if e.is_connect() => "connection failed".to_owned(),
        // Without the URL: it may carry credentials (it is logged redacted).
        Err(e) => format!("request failed: {}", e.without_url()),
    })
}

/// The JSON of page `page` for `webhook`, and how many user ids it holds.
async fn page_body(
    store: &dyn Store,
    webhook: &Webhook,
    loaded: &Loaded,
    page: u32,
) -> Result<(Vec<u8>, u64), crate::store::StoreError> {
    let i = &loaded.info;
    let ordinals = page_ordinals(&loaded.audience, page, webhook.page_size);
    let user_ids = store.user_ids(i.app_id, &ordinals).await?;
    let n = user_ids.len() as u64;
    let body = PageBody {
        event: "UserBroadcast",
        delivery_id: format!("{}-{page}", i.id),
        broadcast_id: i.id.to_string(),
        app_id: i.app_id,
        inbox_type: i.inbox,
        sender: i.sender,
        msg_type: i.msg_type,
        content: &i.content,
        ext: &i.ext,
        create_time: i.create_time,
        expire_time: i.expire_time,
        page,
        pages: pages(i.audience_count, webhook.page_size),
        user_ids,
    };
    Ok((serde_json::to_vec(&body).expect("a page serializes"), n))
}

/// The outbox gauges from the store (pages left to send on every node).
async fn refresh_gauges(store: &dyn Store, metrics: &Metrics, now: i64) {
    if let Ok(s) = store.outbox_stats().await {
        metrics.delivery.pages_pending.set(s.pending as i64);
        let age = s.oldest_pending_ms.map_or(0, |t| (now - t).max(0) / 1000);
        metrics.delivery.oldest_pending_seconds.set(age);
    }
}

/// Purges expired broadcasts and refreshes the outbox gauges every `sweep_ms`.
async fn sweep(
    store: Arc<dyn Store>,
    service: Arc<Service>,
    metrics: Arc<Metrics>,
    mut stop: watch::Receiver<bool>,
) {
    let every = Duration::from_millis(service.delivery.sweep_ms);
    let warn = LogThrottle::new(Duration::from_secs(30));
    while !*stop.borrow() {
        let now = service.clock.now_ms();
        match store.purge_expired(now).await {
            Ok(p) => {
                if p.broadcasts > 0 {
                    metrics.delivery.broadcasts_purged.inc_by(p.broadcasts);
                    metrics.delivery.pages_failed.inc_by(p.pending_pages);
                    tracing::info!(
                        broadcasts = p.broadcasts,
                        pending_pages = p.pending_pages,
                        "purged expired broadcasts"
                    );
                }
            }
            Err(e) => {
                if let Some(repeated) = warn.admit() {
                    tracing::warn!(error = %e.chain(), repeated, "purging expired broadcasts failed; retrying");
                }
            }
        }
        service.cache.evict_expired(now);
        refresh_gauges(&*store, &metrics, now).await;
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            // A send or a recall on this node: the gauges follow at once.
            _ = service.outbox_changed.notified() => {}
            _ = stop.changed() => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The README's vector, which the `standardwebhooks` package's `sign` gives too.
    #[test]
    fn the_standard_signature_is_the_one_the_standardwebhooks_package_computes() {
        assert_eq!(
            standard_signature(
                b"whsec-readme-7Hq2kP9xLm4",
                "1-0",
                1_700_000_000,
                br#"{"Event":"UserBroadcast","DeliveryId":"1-0"}"#
            ),
            "v1,KZYpT9ZS9F0tiwEnVz+gpNTIw2spnR6HQfX87QLOCUY="
        );
    }

    #[test]
    fn backoff_doubles_within_its_upper_half_and_stops_at_the_maximum() {
        for attempts in 1..40 {
            let exp = 1000u64
                .saturating_mul(1 << (attempts - 1).min(32))
                .min(300_000);
            let d = backoff_ms(attempts, 1000, 300_000);
            assert!(d >= exp / 2 && d <= exp, "attempt {attempts}: {d} vs {exp}");
        }
    }

    #[test]
    fn the_signature_is_hmac_of_timestamp_dot_body() {
        // Python: hmac.new(b"k"*16, b"1700000000.{}", hashlib.sha256).hexdigest()
        let s = signature(&[b'k'; 16], 1_700_000_000, b"{}");
        assert!(s.starts_with("v1=") && s.len() == 3 + 64);
        assert_ne!(s, signature(&[b'k'; 16], 1_700_000_001, b"{}"));
    }
}
