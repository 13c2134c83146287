//! The event log as a service (API.md §9): reading it (ListEvents, event webhooks,
//! `tagcast events`), waiting for new events (long polling, woken when this node applies
//! an entry: at commit on the embedded store, on LISTEN/NOTIFY on PostgreSQL), and its
//! retention, trimmed in the background. The events are the change log's entries
//! expanded (`model/events.rs`); the store only reads and trims entries.

pub mod hooks;

use std::sync::Arc;
use std::time::Duration;

use crate::config::EventsConfig;
use crate::model::events::{self, Event, EventType, entry_start, pos_of, seq};
use crate::store::{LogPage, LogRead, Store, StoreError};

/// Entries read by a read's first round trip; each further one reads twice as many, up
/// to [`CHUNK_MAX`]: an entry holds one commit's events (from one to thousands), and a
/// page of `Limit` events must not decode many more than it returns.
const CHUNK_FIRST: usize = 1;
const CHUNK_MAX: usize = 256;
/// Entries one read looks at, at most, before it answers with what it found and the
/// position it scanned to (a filter that matches nothing must not read the whole log).
const MAX_SCAN: usize = 4096;

/// What to read.
#[derive(Debug, Clone, Default)]
pub struct Query {
    /// Only events with a greater Seq (`None`: from the oldest retained).
    pub after: Option<u64>,
    /// Only these types (`None`: all).
    pub types: Option<Vec<EventType>>,
    pub user: Option<i64>,
    pub limit: usize,
    /// The newest `limit` matching events, newest first (with no `after`).
    pub latest: bool,
}

impl Query {
    fn matches(&self, e: &Event) -> bool {
        self.types
            .as_ref()
            .is_none_or(|t| t.contains(&e.body.kind()))
            && self.user.is_none_or(|u| e.body.user() == Some(u))
    }
}

/// One event of an expanded entry, shared with the entry (an answer of 1,000 events
/// copies none of them).
#[derive(Debug, Clone)]
pub struct EventRef(Arc<Vec<Event>>, usize);

impl std::ops::Deref for EventRef {
    type Target = Event;
    fn deref(&self) -> &Event {
        &self.0[self.1]
    }
}

impl serde::Serialize for EventRef {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        (**self).serialize(s)
    }
}

/// What a read found.
#[derive(Debug, Clone, Default)]
pub struct Page {
    pub events: Vec<EventRef>,
    /// The Seq to read after next.
    pub next_after: u64,
    /// The oldest retained event's Seq (0: the log is empty).
    pub oldest: u64,
}

#[derive(Debug)]
pub enum ReadError {
    /// `After` is older than what retention keeps: events after it are gone.
    Expired {
        oldest: u64,
    },
    Store(StoreError),
}

impl From<StoreError> for ReadError {
    fn from(e: StoreError) -> Self {
        ReadError::Store(e)
    }
}

/// Whether `after` is a cursor whose following events retention may have dropped: its
/// own entry is gone (the events after it in that entry may have been there), or the
/// log has lost its first entry and the cursor is at the start. Conservative: a consumer
/// right at the trim's edge is told to resync rather than risk a silent gap.
fn expired(after: u64, oldest_pos: u64) -> bool {
    oldest_pos > 0 && pos_of(after) < oldest_pos && (after > 0 || oldest_pos > 1)
}

fn decode(store: &dyn Store, app: u32, page: &LogPage) -> Result<Vec<Arc<Vec<Event>>>, StoreError> {
    let cache = &store.state().decoded;
    page.entries
        .iter()
        .map(|e| {
            let key = (app, e.pos, e.time_ms);
            if let Some(hit) = cache.get(key) {
                return Ok(hit);
            }
            let events = crate::model::decode_entry(&e.body)
                .map(|parts| Arc::new(events::expand(app, e.pos, e.time_ms, parts)))
                .map_err(|err| {
                    StoreError::internal(format!(
                        "the change log entry {} of AppId {app} does not decode: {err}",
                        e.pos
                    ))
                })?;
            cache.put(key, events.clone());
            Ok(events)
        })
        .collect()
}

/// One read of the app's events, without waiting.
pub async fn read(store: &dyn Store, app: u32, q: &Query) -> Result<Page, ReadError> {
    if q.latest {
        return read_latest(store, app, q).await;
    }
    let mut out = Page::default();
    let mut from = q.after.map_or(0, pos_of);
    let mut scanned = q.after.unwrap_or(0);
    let mut looked = 0;
    let mut chunk = CHUNK_FIRST;
    loop {
        let page = store
            .read_log(app, LogRead::From { from, max: chunk })
            .await?;
        if looked == 0 {
            out.oldest = if page.oldest == 0 {
                0
            } else {
                seq(page.oldest, 0)
            };
            if let Some(after) = q.after
                && expired(after, page.oldest)
            {
                return Err(ReadError::Expired { oldest: out.oldest });
            }
        }
        let n = page.entries.len();
        for (entry, evs) in page.entries.iter().zip(decode(store, app, &page)?) {
            looked += 1;
            // Events are in Seq order: skip those up to the cursor at once.
            let start = q.after.map_or(0, |a| evs.partition_point(|e| e.seq <= a));
            for (i, e) in evs.iter().enumerate().skip(start) {
                scanned = e.seq;
                if q.matches(e) {
                    out.events.push(EventRef(evs.clone(), i));
                    if out.events.len() >= q.limit {
                        out.next_after = scanned;
                        return Ok(out);
                    }
                }
            }
            // An entry with no events still moves the scan to it.
            scanned = scanned.max(entry_start(entry.pos));
            from = entry.pos + 1;
        }
        if n < chunk || looked >= MAX_SCAN {
            break;
        }
        chunk = (chunk * 2).min(CHUNK_MAX);
    }
    out.next_after = scanned;
    Ok(out)
}

async fn read_latest(store: &dyn Store, app: u32, q: &Query) -> Result<Page, ReadError> {
    let mut out = Page::default();
    let mut before = u64::MAX;
    let mut looked = 0;
    let mut chunk = CHUNK_FIRST;
    loop {
        let page = store
            .read_log(app, LogRead::Newest { before, max: chunk })
            .await?;
        let n = page.entries.len();
        let decoded = decode(store, app, &page)?;
        if looked == 0 {
            out.oldest = if page.oldest == 0 {
                0
            } else {
                seq(page.oldest, 0)
            };
            // The newest Seq: the head entry's last event (or where it starts, when it
            // has none).
            out.next_after = decoded
                .first()
                .and_then(|evs| evs.last().map(|e| e.seq))
                .or(page.entries.first().map(|e| entry_start(e.pos)))
                .unwrap_or(0);
        }
        for (entry, evs) in page.entries.iter().zip(decoded) {
            looked += 1;
            for (i, e) in evs.iter().enumerate().rev() {
                if q.matches(e) {
                    out.events.push(EventRef(evs.clone(), i));
                    if out.events.len() >= q.limit {
                        return Ok(out);
                    }
                }
            }
            before = entry.pos;
        }
        if n < chunk || looked >= MAX_SCAN {
            return Ok(out);
        }
        chunk = (chunk * 2).min(CHUNK_MAX);
    }
}

/// [`read`], waiting up to `wait` for a matching event when there is none yet: woken each
/// time this node applies a change log entry, never by polling the store on a timer. It
/// answers at once (empty) when `stop` turns true (the server is stopping).
pub async fn read_waiting(
    store: &dyn Store,
    app: u32,
    q: &Query,
    wait: Duration,
    stop: &mut tokio::sync::watch::Receiver<bool>,
) -> Result<Page, ReadError> {
    let deadline = tokio::time::Instant::now() + wait;
    let mut applied = store.state().subscribe();
    let mut q = q.clone();
    let mut oldest_seen: Option<u64> = None;
    loop {
        applied.borrow_and_update();
        let mut page = read(store, app, &q).await?;
        if let Some(o) = oldest_seen {
            page.oldest = page.oldest.max(o);
        }
        if !page.events.is_empty() || wait.is_zero() || q.latest || *stop.borrow() {
            return Ok(page);
        }
        oldest_seen = Some(page.oldest);
        if q.after.is_some() || page.next_after > 0 {
            q.after = Some(page.next_after);
        }
        let woke = tokio::select! {
            w = tokio::time::timeout_at(deadline, applied.changed()) => matches!(w, Ok(Ok(()))),
            _ = stop.wait_for(|s| *s) => false,
        };
        if !woke {
            let mut page = page;
            page.next_after = q.after.unwrap_or(0);
            return Ok(page);
        }
    }
}

/// Trims every app's log to its retention, now and every `trim_interval_s`, until the
/// process ends. Chunks of entries, so a long trim never becomes one long transaction.
pub async fn retention(
    store: std::sync::Arc<dyn Store>,
    config: EventsConfig,
    metrics: std::sync::Arc<crate::metrics::Metrics>,
) {
    let every = Duration::from_secs(config.trim_interval_s.max(1));
    loop {
        match trim_once(&*store, &config).await {
            Ok(n) => {
                metrics.events.entries_trimmed.inc_by(n);
            }
            Err(e) => {
                tracing::debug!(error = %e.chain(), "trimming the event log failed; next time")
            }
        }
        tokio::time::sleep(every).await;
    }
}

/// Entries deleted per statement.
const TRIM_CHUNK: u64 = 512;

/// One pass of retention over every app; entries deleted.
pub async fn trim_once(store: &dyn Store, config: &EventsConfig) -> Result<u64, StoreError> {
    let since = crate::model::now_ms().saturating_sub(
        (config.retention_hours.saturating_mul(3_600_000)).min(i64::MAX as u64) as i64,
    );
    let mut trimmed = 0;
    for app in store.log_apps().await? {
        let (oldest, keep_from) = store.log_cut(app, since, config.max_per_app).await?;
        if oldest == 0 || keep_from <= oldest {
            continue;
        }
        while store.trim_log(app, keep_from, TRIM_CHUNK).await? {
            tokio::task::yield_now().await;
        }
        trimmed += keep_from - oldest;
        tracing::debug!(
            app,
            from = oldest,
            to = keep_from,
            "event log trimmed to its retention"
        );
    }
    Ok(trimmed)
}
