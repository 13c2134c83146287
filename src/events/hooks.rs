//! Event webhooks (API.md §9): each `[[webhooks]]` with `events = [...]` receives the
//! events of those types of every app it serves, in batches of at most 1,000, **in Seq
//! order per (webhook, app)**: one batch in flight, the next only after a 2xx. One task
//! per (webhook, app); its cursor (the last acknowledged Seq) is durable in the store, so
//! a restart or kill -9 resumes where it was (at least once: a batch acknowledged but not
//! yet recorded is sent again with the same DeliveryId). With several nodes, a lease in
//! the store lets one node at a time send a (webhook, app); another takes over when the
//! lease runs out. Retries back off like pages (1 s doubling to 5 min, with jitter); a
//! cursor that fell behind retention counts as expired and delivery goes on from the
//! oldest retained event.

use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use tokio::sync::watch;

use super::{Query, ReadError, read};
use crate::broadcast::delivery::{backoff_ms, post_signed, webhook_client};
use crate::config::{DeliveryConfig, Webhook, redact_url};
use crate::metrics::{HookLabels, Metrics};
use crate::store::Store;
use crate::throttle::LogThrottle;

/// Events per POST at most (API.md §9).
pub const MAX_BATCH: usize = 1000;

/// Where a (webhook, app) sender runs from.
pub struct Sender {
    pub store: Arc<dyn Store>,
    pub webhook: Webhook,
    pub app: u32,
    pub http: reqwest::Client,
    pub delivery: DeliveryConfig,
    pub metrics: Arc<Metrics>,
    /// This node's name in leases.
    pub node: String,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct Batch<'a> {
    event: &'static str,
    delivery_id: &'a str,
    app_id: u32,
    events: &'a [super::EventRef],
}

/// Starts a sender for every (event webhook, app it serves) and runs them until `stop`.
pub async fn run(
    store: Arc<dyn Store>,
    webhooks: Vec<Webhook>,
    apps: Vec<u32>,
    delivery: DeliveryConfig,
    metrics: Arc<Metrics>,
    stop: watch::Receiver<bool>,
) {
    let node = format!(
        "{}-{}",
        std::process::id(),
        crate::accounts::random_string(8)
    );
    let mut tasks = tokio::task::JoinSet::new();
    for webhook in webhooks.into_iter().filter(|w| !w.events.is_empty()) {
        let http = webhook_client(&webhook, Duration::from_millis(delivery.timeout_ms), 1);
        for &app in apps.iter().filter(|a| webhook.serves(**a)) {
            let sender = Sender {
                store: store.clone(),
                webhook: webhook.clone(),
                app,
                http: http.clone(),
                delivery: delivery.clone(),
                metrics: metrics.clone(),
                node: node.clone(),
            };
            tasks.spawn(sender.run(stop.clone()));
        }
    }
    while tasks.join_next().await.is_some() {}
}

impl Sender {
    fn labels(&self) -> HookLabels {
        HookLabels {
            url: redact_url(&self.webhook.url),
            app: self.app,
        }
    }

    /// Sleeps `d`, or less when `stop` turns true; whether to go on.
    async fn pause(stop: &mut watch::Receiver<bool>, d: Duration) -> bool {
        if *stop.borrow() {
            return false;
        }
        let _ = tokio::time::timeout(d, stop.wait_for(|s| *s)).await;
        !*stop.borrow()
    }

    /// Sends until `stop`. The cursor is saved by a task of its own, the newest value
    /// whenever it changed (a POST never waits for the store's write queue), and once
    /// more at the end; a batch acknowledged but not yet saved when the node dies is sent
    /// again (at least once), never one out of order.
    pub async fn run(self, stop: watch::Receiver<bool>) {
        let (to_save, mut saving) = watch::channel(0u64);
        let saver = {
            let (store, url, app, node) = (
                self.store.clone(),
                self.webhook.url.clone(),
                self.app,
                self.node.clone(),
            );
            tokio::spawn(async move {
                let save = |seq: u64| {
                    let (store, url, node) = (store.clone(), url.clone(), node.clone());
                    async move {
                        if let Err(e) = store.save_event_cursor(&url, app, &node, seq).await {
                            tracing::debug!(error = %e.chain(), "event webhook: the cursor was not saved; its batch may be sent again");
                        }
                    }
                };
                while saving.changed().await.is_ok() {
                    let seq = *saving.borrow_and_update();
                    save(seq).await;
                }
                let last = *saving.borrow();
                if last > 0 {
                    save(last).await;
                }
            })
        };
        self.deliver(stop, &to_save).await;
        drop(to_save);
        let _ = saver.await;
    }

    async fn deliver(&self, mut stop: watch::Receiver<bool>, to_save: &watch::Sender<u64>) {
        // The newest acknowledged Seq: the store's copy may lag it by a save.
        let mut local: u64 = 0;
        let save = |local: &mut u64, seq: u64| {
            *local = (*local).max(seq);
            to_save.send_replace(*local);
        };
        let labels = self.labels();
        let lease_ms = self.delivery.lease_ms as i64;
        let failures = LogThrottle::new(Duration::from_secs(30));
        let mut attempts: u32 = 0;
        let mut applied = self.store.state().subscribe();
        loop {
            if *stop.borrow() {
                return;
            }
            let now = crate::model::now_ms();
            let cursor = match self
                .store
                .lease_event_sender(&self.webhook.url, self.app, &self.node, now, lease_ms)
                .await
            {
                Ok(Some(c)) => c.max(local),
                // Another node sends this (webhook, app) now.
                Ok(None) => {
                    if !Self::pause(&mut stop, Duration::from_millis(lease_ms as u64 / 3)).await {
                        return;
                    }
                    continue;
                }
                Err(e) => {
                    tracing::debug!(error = %e.chain(), "event webhook: the lease could not be read; retrying");
                    if !Self::pause(&mut stop, Duration::from_secs(1)).await {
                        return;
                    }
                    continue;
                }
            };
            applied.borrow_and_update();
            let q = Query {
                after: (cursor > 0).then_some(cursor),
                types: Some(self.webhook.events.clone()),
                user: None,
                limit: MAX_BATCH,
                latest: false,
            };
            let page = match read(&*self.store, self.app, &q).await {
                Ok(p) => p,
                Err(ReadError::Expired { oldest }) => {
                    self.metrics.events.expired.get_or_create(&labels).inc();
                    tracing::warn!(
                        url = %labels.url,
                        app = self.app,
                        cursor,
                        oldest,
                        "event webhook fell behind retention: the events after its cursor up to the oldest retained were trimmed undelivered; going on from the oldest"
                    );
                    // Just before the oldest retained entry: the next read starts there.
                    let restart =
                        crate::model::events::entry_start(crate::model::events::pos_of(oldest));
                    save(&mut local, restart);
                    continue;
                }
                Err(ReadError::Store(e)) => {
                    tracing::debug!(error = %e.chain(), "event webhook: reading the log failed; retrying");
                    if !Self::pause(&mut stop, Duration::from_secs(1)).await {
                        return;
                    }
                    continue;
                }
            };
            let Some(first) = page.events.first() else {
                // Nothing to send: skip what the filter passed over, then wait for a commit.
                if page.next_after > cursor {
                    save(&mut local, page.next_after);
                }
                self.metrics
                    .events
                    .lag_seconds
                    .get_or_create(&labels)
                    .set(0);
                let wait = Duration::from_millis(self.delivery.poll_ms.max(100) * 10)
                    .min(Duration::from_millis(lease_ms as u64 / 3));
                tokio::select! {
                    _ = applied.changed() => {}
                    _ = tokio::time::sleep(wait) => {}
                    _ = stop.wait_for(|s| *s) => return,
                }
                continue;
            };
            let last = page.events.last().expect("not empty");
            let delivery_id = format!("{}-{}-{}", self.app, first.seq, last.seq);
            let body = serde_json::to_vec(&Batch {
                event: "Events",
                delivery_id: &delivery_id,
                app_id: self.app,
                events: &page.events,
            })
            .expect("events serialize");
            let (n, last_time) = (page.events.len() as u64, last.time_ms);
            let sent = post_signed(
                &self.http,
                &self.webhook,
                &delivery_id,
                body,
                self.delivery.timeout_ms,
                &self.metrics,
            )
            .await;
            match sent {
                Ok(()) => {
                    attempts = 0;
                    failures.reset();
                    self.metrics
                        .events
                        .delivered
                        .get_or_create(&labels)
                        .inc_by(n);
                    let lag = (crate::model::now_ms() - last_time).max(0) / 1000;
                    self.metrics
                        .events
                        .lag_seconds
                        .get_or_create(&labels)
                        .set(lag);
                    save(&mut local, page.next_after);
                }
                Err(cause) => {
                    attempts += 1;
                    self.metrics
                        .events
                        .attempts_failed
                        .get_or_create(&labels)
                        .inc();
                    let lag = (crate::model::now_ms() - first.time_ms).max(0) / 1000;
                    self.metrics
                        .events
                        .lag_seconds
                        .get_or_create(&labels)
                        .set(lag);
                    let wait = backoff_ms(
                        attempts,
                        self.delivery.retry_base_ms,
                        self.delivery.retry_max_ms,
                    );
                    if let Some(repeated) = failures.admit() {
                        tracing::warn!(
                            url = %labels.url,
                            app = self.app,
                            delivery = %delivery_id,
                            attempt = attempts,
                            cause = %cause,
                            retry_ms = wait,
                            repeated,
                            "event webhook attempt failed"
                        );
                    }
                    if !Self::pause(&mut stop, Duration::from_millis(wait)).await {
                        return;
                    }
                }
            }
        }
    }
}
