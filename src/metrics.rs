//! Prometheus metrics, served as text on `GET /metrics`.

use std::sync::Mutex;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub action: &'static str,
    pub code: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ActionLabel {
    pub action: &'static str,
}

pub struct Metrics {
    registry: Mutex<Registry>,
    requests: Family<RequestLabels, Counter>,
    latency: Family<ActionLabel, Histogram>,
    rate_limited: Family<ActionLabel, Counter>,
    commit_seconds: Histogram,
    commit_batch: Histogram,
    /// Commits of more than one request (what group commit is for).
    shared_commits: Counter,
    batches_split: Counter,
    limiter_errors: Counter,
    wal_bytes: Gauge,
    wal_restarts: Counter,
    store_writable: Gauge,
    log_lines_dropped: Counter,
    /// Webhook delivery (src/broadcast/delivery.rs).
    pub delivery: DeliveryMetrics,
    /// Connections and request bodies (src/server.rs, src/gateway).
    pub http: HttpMetrics,
    /// The event log and event webhooks (src/events).
    pub events: EventMetrics,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HookLabels {
    /// The webhook's URL without credentials.
    pub url: String,
    pub app: u32,
}

/// The event log and its webhooks.
#[derive(Default)]
pub struct EventMetrics {
    /// Events appended by this node's writes (an upper bound; see `model::events::count`).
    pub appended: Counter,
    pub delivered: Family<HookLabels, Counter>,
    /// Batches not acknowledged with a 2xx (retried while their events are retained).
    pub attempts_failed: Family<HookLabels, Counter>,
    /// Events that left retention before their webhook acknowledged them.
    pub expired: Family<HookLabels, Counter>,
    /// Seconds between the newest event of the app and the newest one the webhook
    /// acknowledged (0: caught up).
    pub lag_seconds: Family<HookLabels, Gauge>,
    pub entries_trimmed: Counter,
}

/// What slow or many clients make the server hold.
#[derive(Default)]
pub struct HttpMetrics {
    pub connections_open: Gauge,
    /// Connections answered 503 and closed because `http.max_connections` were open.
    pub connections_refused: Counter,
    /// Bytes of request bodies held now (at most `http.max_body_memory_mb`).
    pub body_bytes: Gauge,
    /// Requests answered 503 because their body did not fit in `http.max_body_memory_mb`.
    pub bodies_refused: Counter,
    /// Requests hyper could not parse, answered with the envelope.
    pub malformed_requests: Counter,
}

/// Webhook pages and the outbox.
#[derive(Default)]
pub struct DeliveryMetrics {
    pub pages_delivered: Counter,
    pub user_ids_delivered: Counter,
    /// Attempts that did not get a 2xx (each is retried unless the broadcast expires).
    pub attempts_failed: Counter,
    /// Of those, attempts whose TLS handshake failed (a certificate that does not verify).
    pub tls_failures: Counter,
    pub pages_failed: Counter,
    pub pages_pending: Gauge,
    pub oldest_pending_seconds: Gauge,
    pub broadcasts_purged: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("tagcast");
        let requests = Family::<RequestLabels, Counter>::default();
        let latency = Family::<ActionLabel, Histogram>::new_with_constructor(|| {
            Histogram::new(exponential_buckets(0.0001, 2.0, 18))
        });
        let rate_limited = Family::<ActionLabel, Counter>::default();
        let commit_seconds = Histogram::new(exponential_buckets(0.00005, 2.0, 18));
        let commit_batch = Histogram::new(exponential_buckets(1.0, 2.0, 11));
        registry.register(
            "requests",
            "API requests by Action and answer Code (Success on success)",
            requests.clone(),
        );
        registry.register(
            "request_duration_seconds",
            "API request latency by Action",
            latency.clone(),
        );
        registry.register(
            "rate_limited",
            "Requests rejected with FlowLimitExceeded, by Action",
            rate_limited.clone(),
        );
        registry.register(
            "store_commit_duration_seconds",
            "Time to apply and durably commit one write batch",
            commit_seconds.clone(),
        );
        registry.register(
            "store_commit_batch_size",
            "Requests folded into one durable commit",
            commit_batch.clone(),
        );
        let shared_commits = Counter::default();
        registry.register(
            "store_shared_commits",
            "Durable commits that held more than one write request",
            shared_commits.clone(),
        );
        let batches_split = Counter::default();
        registry.register(
            "store_batches_split",
            "Batches that failed for one request's reason and were rerun request by request, so it failed alone",
            batches_split.clone(),
        );
        let limiter_errors = Counter::default();
        registry.register(
            "limiter_errors",
            "Rate-limit decisions the shared limiter could not make (limits.on_redis_error applied)",
            limiter_errors.clone(),
        );
        let wal_bytes = Gauge::default();
        registry.register(
            "store_wal_bytes",
            "Size of the embedded store's write-ahead log file (bounded by store.wal_limit_mb)",
            wal_bytes.clone(),
        );
        let wal_restarts = Counter::default();
        registry.register(
            "store_wal_restarts",
            "Times the writer held writes back to restart the write-ahead log because it passed store.wal_limit_mb",
            wal_restarts.clone(),
        );
        let store_writable = Gauge::default();
        store_writable.set(1);
        registry.register(
            "store_writable",
            "1 while the store accepts writes; 0 after a write failed (disk full, I/O error, corruption) until one succeeds again",
            store_writable.clone(),
        );
        let log_lines_dropped = Counter::default();
        registry.register(
            "log_lines_dropped",
            "Log lines dropped because the log's queue was full (stderr slower than the lines came)",
            log_lines_dropped.clone(),
        );
        let delivery = DeliveryMetrics::default();
        let d = &delivery;
        for (name, help, metric) in [
            (
                "webhook_pages_delivered",
                "Webhook pages acknowledged with a 2xx",
                &d.pages_delivered,
            ),
            (
                "webhook_user_ids_delivered",
                "User ids in webhook pages acknowledged with a 2xx",
                &d.user_ids_delivered,
            ),
            (
                "webhook_attempts_failed",
                "Webhook POSTs answered with a non-2xx, timed out or not connected (retried until the broadcast expires)",
                &d.attempts_failed,
            ),
            (
                "webhook_tls_failures",
                "Webhook attempts whose TLS handshake failed (a certificate that does not verify; the cause is in the log)",
                &d.tls_failures,
            ),
            (
                "webhook_pages_failed",
                "Webhook pages given up: the broadcast expired before they were acknowledged",
                &d.pages_failed,
            ),
            (
                "broadcasts_purged",
                "Expired broadcasts purged with their audiences and pages",
                &d.broadcasts_purged,
            ),
        ] {
            registry.register(name, help, metric.clone());
        }
        registry.register(
            "webhook_pages_pending",
            "Webhook pages waiting for delivery, all nodes (as of the last sweep)",
            d.pages_pending.clone(),
        );
        registry.register(
            "webhook_oldest_pending_seconds",
            "Age of the broadcast of the oldest pending webhook page, all nodes (0: none)",
            d.oldest_pending_seconds.clone(),
        );
        let events = EventMetrics::default();
        registry.register(
            "events_appended",
            "Events appended to the event log by this node's writes",
            events.appended.clone(),
        );
        registry.register(
            "event_webhook_delivered",
            "Events acknowledged with a 2xx by an event webhook, per webhook and app",
            events.delivered.clone(),
        );
        registry.register(
            "event_webhook_attempts_failed",
            "Event batches answered with a non-2xx, timed out or not connected (retried in order)",
            events.attempts_failed.clone(),
        );
        registry.register(
            "event_webhook_expired",
            "Times an event webhook's cursor fell behind retention (its undelivered events were trimmed)",
            events.expired.clone(),
        );
        registry.register(
            "event_webhook_lag_seconds",
            "How far an event webhook is behind: the newest event's time minus the time of the newest one it acknowledged (0: caught up)",
            events.lag_seconds.clone(),
        );
        registry.register(
            "event_log_entries_trimmed",
            "Change log entries (each one or more events) deleted by retention",
            events.entries_trimmed.clone(),
        );
        let http = HttpMetrics::default();
        registry.register(
            "connections_open",
            "HTTP connections open now (at most http.max_connections)",
            http.connections_open.clone(),
        );
        registry.register(
            "connections_refused",
            "Connections answered 503 and closed because http.max_connections were open",
            http.connections_refused.clone(),
        );
        registry.register(
            "request_body_bytes",
            "Bytes of request bodies held now, all connections (at most http.max_body_memory_mb)",
            http.body_bytes.clone(),
        );
        registry.register(
            "request_bodies_refused",
            "Requests answered 503 because their body did not fit in http.max_body_memory_mb",
            http.bodies_refused.clone(),
        );
        registry.register(
            "malformed_requests",
            "Requests that were not valid HTTP/1.1 (or had too many or too large headers), answered with the envelope",
            http.malformed_requests.clone(),
        );
        Metrics {
            delivery,
            http,
            events,
            registry: Mutex::new(registry),
            requests,
            latency,
            rate_limited,
            commit_seconds,
            commit_batch,
            shared_commits,
            batches_split,
            limiter_errors,
            wal_bytes,
            wal_restarts,
            store_writable,
            log_lines_dropped,
        }
    }

    /// Labels are static names (Action names, Codes): no allocation per request, and a
    /// bounded number of series.
    pub fn observe_request(&self, action: &'static str, code: &'static str, elapsed: Duration) {
        self.requests
            .get_or_create(&RequestLabels { action, code })
            .inc();
        self.latency
            .get_or_create(&ActionLabel { action })
            .observe(elapsed.as_secs_f64());
    }

    pub fn observe_rate_limited(&self, action: &'static str) {
        self.rate_limited
            .get_or_create(&ActionLabel { action })
            .inc();
    }

    pub fn observe_commit(&self, elapsed: Duration, batch_size: usize) {
        self.commit_seconds.observe(elapsed.as_secs_f64());
        self.commit_batch.observe(batch_size as f64);
        if batch_size > 1 {
            self.shared_commits.inc();
        }
    }

    pub fn observe_batch_split(&self) {
        self.batches_split.inc();
    }

    /// Commits that held more than one request, and batches split after a failure.
    pub fn commits_shared_and_split(&self) -> (u64, u64) {
        (self.shared_commits.get(), self.batches_split.get())
    }

    pub fn observe_limiter_error(&self) {
        self.limiter_errors.inc();
    }

    pub fn set_wal_bytes(&self, bytes: u64) {
        self.wal_bytes.set(bytes as i64);
    }

    pub fn observe_wal_restart(&self) {
        self.wal_restarts.inc();
    }

    pub fn set_store_writable(&self, writable: bool) {
        self.store_writable.set(i64::from(writable));
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        let registry = self.registry.lock().expect("registry lock");
        // The log counts its drops itself; brought up to date under the registry's lock.
        let dropped = crate::logging::dropped_lines();
        self.log_lines_dropped
            .inc_by(dropped.saturating_sub(self.log_lines_dropped.get()));
        prometheus_client::encoding::text::encode(&mut out, &registry)
            .expect("writing to a String cannot fail");
        out
    }
}
