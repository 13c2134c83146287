//! The embedded store's write-ahead log stays under `store.wal_limit_mb` however long
//! writes go on, and is emptied once they stop.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde_json::json;
use tagcast::store::embedded::WAL_FILE;

use crate::common::*;

const LIMIT_MB: u64 = 16;
/// The log may pass the bound by what one commit appends before the writer checks it:
/// here at most 4 requests (one per client) x 5 users x 5 tags of 200-byte values, which
/// rewrite at most 20 users' rows (a few pages each of the users table) and append one
/// log entry, 4 KiB a page plus a 24-byte frame header: under 1 MiB. Twice that, to be
/// safe.
const SLACK: u64 = 2 << 20;

fn wal_bytes(dir: &std::path::Path) -> u64 {
    std::fs::metadata(dir.join(WAL_FILE)).map_or(0, |m| m.len())
}

#[tokio::test(flavor = "multi_thread")]
async fn the_wal_stays_under_its_bound_through_30_s_of_writes_and_empties_when_idle() {
    if crate::skip::on_postgres("the write-ahead log's bound") {
        return;
    }
    let server = TestServer::with(|c| {
        c.store.wal_limit_mb = LIMIT_MB;
        c.tags.max_per_user = 1000;
    })
    .await;
    let data = server.config.data_dir.clone();
    let users: Vec<i64> = (1..=20).collect();
    register(&server.client(), APP, &users).await;

    let stop = Arc::new(AtomicBool::new(false));
    let written = Arc::new(AtomicU64::new(0));
    let mut writers = Vec::new();
    for w in 0..4i64 {
        let (client, stop, written) = (server.client(), stop.clone(), written.clone());
        writers.push(tokio::spawn(async move {
            let mut round = 0i64;
            while !stop.load(Ordering::Relaxed) {
                let entries: Vec<_> = (0..5)
                    .map(|u| {
                        let tags: serde_json::Map<String, serde_json::Value> = (0..5)
                            .map(|k| {
                                let value = format!("{w}-{round}-{k}-").repeat(50);
                                (format!("k{k}"), json!(value[..200].to_owned()))
                            })
                            .collect();
                        json!({"UserId": 1 + w * 5 + u, "Tags": tags})
                    })
                    .collect();
                let a = call(
                    &client,
                    "BatchUpdateUserTags",
                    json!({"AppId": APP, "UserTags": entries}),
                )
                .await;
                assert!(failed_infos(&a).is_empty());
                written.fetch_add(1, Ordering::Relaxed);
                round += 1;
            }
        }));
    }
    let started = Instant::now();
    let (mut largest, mut samples) = (0, 0);
    while started.elapsed() < Duration::from_secs(30) {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let size = wal_bytes(&data);
        largest = largest.max(size);
        samples += 1;
        assert!(
            size <= (LIMIT_MB << 20) + SLACK,
            "WAL at {size} bytes after {:?}, bound {LIMIT_MB} MiB + {SLACK} bytes",
            started.elapsed()
        );
    }
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.await.unwrap();
    }
    let requests = written.load(Ordering::Relaxed);
    let metrics = server.metrics().await;
    let restarts: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("tagcast_store_wal_restarts_total "))
        .unwrap()
        .parse()
        .unwrap();
    // The writes were heavy enough to need the bound, not a test that cannot fail.
    assert!(
        restarts >= 2,
        "{requests} requests filled the log only {restarts} times"
    );
    println!(
        "wal: {requests} requests (5 users x 5 tags x 200 B) in 30 s; largest of {samples} samples \
         {:.1} MiB, bound {LIMIT_MB} MiB; {restarts} restarts",
        largest as f64 / (1 << 20) as f64
    );

    // Idle: the maintenance thread empties the log, and says so in /metrics.
    let deadline = Instant::now() + Duration::from_secs(30);
    while wal_bytes(&data) > 0 {
        assert!(
            Instant::now() < deadline,
            "the WAL was not emptied when idle"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while !server
        .metrics()
        .await
        .contains("\ntagcast_store_wal_bytes 0\n")
    {
        assert!(
            Instant::now() < deadline,
            "/metrics does not show the WAL size"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // And the data is all there.
    assert_eq!(tags_of(&server.client(), APP, 0, 1).await.unwrap().len(), 5);
    server.stop().await;
}
