//! The store conformance suite: the same store-level tests against every backend (the
//! embedded store and PostgreSQL). A backend is done when all of them pass on it.

use std::sync::Arc;
use std::time::Duration;

use tagcast::broadcast::{Claimed, Delivery, NewBroadcast, Outlet, PageDone, PageKey, Sent};
use tagcast::metrics::Metrics;
use tagcast::model::filter::Filter;
use tagcast::store::embedded::{EmbeddedOptions, EmbeddedStore};
use tagcast::store::postgres::{PostgresOptions, PostgresStore};
use tagcast::store::{
    Origin, Outcome, Store, StoreError, TagEntry, TagOp, UserRegistration, UserUpdate,
};

use crate::infra::{fresh_database, shared_postgres};

const CAP: usize = 3;

/// A fresh store of the `kind` backend, with a tag cap of 3 (and the directory it lives
/// in, for the embedded one).
async fn backend(kind: &str) -> (Arc<dyn Store>, Option<tempfile::TempDir>) {
    backend_with(kind, Arc::new(Metrics::new())).await
}

async fn backend_with(
    kind: &str,
    metrics: Arc<Metrics>,
) -> (Arc<dyn Store>, Option<tempfile::TempDir>) {
    if kind == "embedded" {
        let dir = tempfile::tempdir().unwrap();
        let embedded = EmbeddedStore::open(
            dir.path(),
            EmbeddedOptions {
                max_tags_per_user: CAP,
                ..EmbeddedOptions::default()
            },
            metrics,
        )
        .unwrap();
        return (Arc::new(embedded), Some(dir));
    }
    let options = PostgresOptions {
        max_tags_per_user: CAP,
        pool_size: 4,
        committers: 2,
        max_batch: 64,
        timeout: Duration::from_secs(5),
        ca_file: None,
        follow: true,
        snapshot_file: None,
        snapshot_every: None,
        snapshot_changes: 1,
    };
    let postgres = PostgresStore::open(&fresh_database(shared_postgres()), options, metrics)
        .await
        .unwrap();
    (Arc::new(postgres), None)
}

/// One `#[test]` per case per backend: `case::embedded` and `case::postgres`, each running
/// `case(name, store)` on a fresh store.
macro_rules! per_backend {
    ($($case:ident),* $(,)?) => {$(
        mod $case {
            #[tokio::test(flavor = "multi_thread")]
            async fn embedded() {
                let (store, _dir) = super::backend("embedded").await;
                super::$case("embedded", store).await;
            }

            #[tokio::test(flavor = "multi_thread")]
            async fn postgres() {
                let (store, _dir) = super::backend("postgres").await;
                super::$case("postgres", store).await;
            }
        }
    )*};
}

fn entry(user_id: i64, tags: &[(&str, &str)]) -> TagEntry {
    TagEntry {
        user_id,
        tags: tags
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    }
}

async fn register(store: &dyn Store, ids: &[i64]) {
    let users = ids
        .iter()
        .map(|&user_id| UserRegistration {
            user_id,
            ..Default::default()
        })
        .collect();
    let out = store.register_users(1, users, origin()).await.unwrap();
    assert!(out.iter().all(|o| *o == Outcome::Applied));
}

async fn tags(store: &dyn Store, inbox: u32, user: i64) -> Option<Vec<(String, String)>> {
    store
        .get_users(1, inbox, vec![user])
        .await
        .unwrap()
        .pop()
        .unwrap()
        .map(|u| u.tags)
}

fn pairs(p: &[(&str, &str)]) -> Option<Vec<(String, String)>> {
    Some(
        p.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    )
}

async fn entries_apply_in_order_each_atomically_and_report_unregistered_users(
    name: &str,
    store: Arc<dyn Store>,
) {
    let s = store.as_ref();
    register(s, &[1]).await;
    let out = s
        .update_tags(
            1,
            0,
            TagOp::Upsert,
            vec![
                entry(1, &[("a", "1"), ("b", "1")]),
                entry(2, &[("x", "")]),
                entry(1, &[("a", "2")]),
            ],
            origin(),
        )
        .await
        .unwrap();
    assert_eq!(
        out,
        vec![Outcome::Applied, Outcome::UserNotFound, Outcome::Applied],
        "{name}"
    );
    assert_eq!(
        tags(s, 0, 1).await,
        pairs(&[("a", "2"), ("b", "1")]),
        "{name}"
    );
    assert_eq!(tags(s, 0, 2).await, None, "{name}");
    // Another inbox and another app see nothing.
    assert_eq!(tags(s, 5, 1).await, pairs(&[]), "{name}");
    assert_eq!(
        s.get_users(2, 0, vec![1]).await.unwrap(),
        vec![None],
        "{name}"
    );
    let out = s
        .update_tags(
            1,
            0,
            TagOp::Delete,
            vec![entry(1, &[("a", ""), ("zz", "")])],
            origin(),
        )
        .await
        .unwrap();
    assert_eq!(out, vec![Outcome::Applied], "{name}");
    assert_eq!(tags(s, 0, 1).await, pairs(&[("b", "1")]), "{name}");
    store.close().await;
}

async fn the_cap_counts_only_net_new_keys_and_a_refused_entry_changes_nothing(
    name: &str,
    store: Arc<dyn Store>,
) {
    let s = store.as_ref();
    register(s, &[1]).await;
    let abc = [("a", "1"), ("b", "1"), ("c", "1")];
    assert_eq!(
        s.update_tags(1, 0, TagOp::Upsert, vec![entry(1, &abc)], origin())
            .await
            .unwrap(),
        vec![Outcome::Applied]
    );
    let out = s
        .update_tags(
            1,
            0,
            TagOp::Upsert,
            vec![entry(1, &[("a", "2"), ("d", "1")]), entry(1, &[("b", "2")])],
            origin(),
        )
        .await
        .unwrap();
    assert_eq!(
        out,
        vec![
            Outcome::TagLimitExceeded {
                would_have: 4,
                limit: CAP
            },
            Outcome::Applied
        ],
        "{name}"
    );
    assert_eq!(
        tags(s, 0, 1).await,
        pairs(&[("a", "1"), ("b", "2"), ("c", "1")]),
        "{name}"
    );
    let out = s
        .update_tags(1, 0, TagOp::Delete, vec![entry(1, &[("a", "")])], origin())
        .await
        .unwrap();
    assert_eq!(out, vec![Outcome::Applied]);
    let out = s
        .update_tags(1, 0, TagOp::Upsert, vec![entry(1, &[("d", "1")])], origin())
        .await
        .unwrap();
    assert_eq!(out, vec![Outcome::Applied], "{name}");
    store.close().await;
}

async fn register_updates_given_fields_and_unregister_clears_every_inbox(
    name: &str,
    store: Arc<dyn Store>,
) {
    let s = store.as_ref();
    let first = UserRegistration {
        user_id: 7,
        nick_name: Some("n".into()),
        tags: vec![("t".into(), "1".into())],
        ..Default::default()
    };
    let second = UserRegistration {
        user_id: 7,
        portrait: Some("p".into()),
        is_robot: Some(true),
        ..Default::default()
    };
    let out = s
        .register_users(1, vec![first, second], origin())
        .await
        .unwrap();
    assert_eq!(out, vec![Outcome::Applied, Outcome::Applied], "{name}");
    let u = s
        .get_users(1, 0, vec![7])
        .await
        .unwrap()
        .pop()
        .unwrap()
        .unwrap();
    assert_eq!(
        (u.nick_name.as_str(), u.portrait.as_str(), u.is_robot),
        ("n", "p", true),
        "{name}"
    );
    assert_eq!(u.tags, vec![("t".to_owned(), "1".to_owned())], "{name}");
    s.update_tags(1, 9, TagOp::Upsert, vec![entry(7, &[("x", "y")])], origin())
        .await
        .unwrap();
    let out = s
        .unregister_users(1, vec![7, 7, 8], origin())
        .await
        .unwrap();
    assert_eq!(
        out,
        vec![
            Outcome::Applied,
            Outcome::UserNotFound,
            Outcome::UserNotFound
        ],
        "{name}"
    );
    register(s, &[7]).await;
    assert_eq!(tags(s, 0, 7).await, pairs(&[]), "{name}");
    assert_eq!(tags(s, 9, 7).await, pairs(&[]), "{name}");
    store.close().await;
}

/// BatchUpdateUser at the store: given fields only, Tags replacing inbox 0 (and the
/// audience index following), a replace over the cap or of an unregistered user changing
/// nothing, entries in order.
async fn update_users_replaces_inbox_0_and_refuses_whole_entries(
    name: &str,
    store: Arc<dyn Store>,
) {
    let s = store.as_ref();
    let reg = UserRegistration {
        user_id: 1,
        nick_name: Some("before".into()),
        tags: vec![("a".into(), "1".into()), ("b".into(), "1".into())],
        ..Default::default()
    };
    assert_eq!(
        s.register_users(1, vec![reg], origin()).await.unwrap(),
        vec![Outcome::Applied]
    );
    s.update_tags(1, 9, TagOp::Upsert, vec![entry(1, &[("x", "y")])], origin())
        .await
        .unwrap();
    let tags_of = |t: &[(&str, &str)]| pairs(t).unwrap();
    let out = s
        .update_users(
            1,
            vec![
                UserUpdate {
                    user_id: 1,
                    nick_name: Some("n".into()),
                    tags: Some(tags_of(&[("b", "2"), ("c", "1")])),
                    ..Default::default()
                },
                UserUpdate {
                    user_id: 2,
                    tags: Some(Vec::new()),
                    ..Default::default()
                },
                UserUpdate {
                    user_id: 1,
                    portrait: Some("refused".into()),
                    tags: Some(tags_of(&[("p", ""), ("q", ""), ("r", ""), ("s", "")])),
                    ..Default::default()
                },
                UserUpdate {
                    user_id: 1,
                    is_robot: Some(true),
                    ..Default::default()
                },
            ],
            origin(),
        )
        .await
        .unwrap();
    assert_eq!(
        out,
        vec![
            Outcome::Applied,
            Outcome::UserNotFound,
            Outcome::TagLimitExceeded {
                would_have: 4,
                limit: CAP
            },
            Outcome::Applied
        ],
        "{name}"
    );
    let u = s.get_users(1, 0, vec![1, 2]).await.unwrap();
    assert_eq!(u[1], None, "{name}");
    let u = u[0].clone().unwrap();
    assert_eq!(
        (u.nick_name.as_str(), u.portrait.as_str(), u.is_robot),
        ("n", "", true),
        "{name}"
    );
    assert_eq!(u.tags, tags_of(&[("b", "2"), ("c", "1")]), "{name}");
    assert_eq!(tags(s, 9, 1).await, pairs(&[("x", "y")]), "{name}");
    let key = |k: &str| Filter::Key(k.into());
    assert_eq!(
        s.count_audience(1, 0, &key("a")).await.unwrap(),
        0,
        "{name}"
    );
    assert_eq!(
        s.count_audience(1, 0, &key("c")).await.unwrap(),
        1,
        "{name}"
    );
    assert_eq!(
        s.count_audience(1, 9, &key("x")).await.unwrap(),
        1,
        "{name}"
    );
    store.close().await;
}

async fn a_closed_store_is_unavailable(name: &str, store: Arc<dyn Store>) {
    store.close().await;
    let r = store
        .update_tags(1, 0, TagOp::Upsert, vec![entry(1, &[])], origin())
        .await;
    assert!(
        matches!(r, Err(StoreError::Unavailable { .. })),
        "{name}: {r:?}"
    );
    assert!(store.ready().await.is_err(), "{name}");
}

/// Many requests at once, so the stores fold them into shared commits: every request still
/// sees the ones committed before it (the cap admits exactly CAP keys across 24 racing
/// requests), requests on other users and apps are unaffected, and an unregister racing
/// with writes to the same user leaves it unregistered whatever the order.
async fn concurrent_requests_folded_into_one_commit_behave_as_some_serial_order(
    name: &str,
    store: Arc<dyn Store>,
) {
    register(store.as_ref(), &[1, 2, 3]).await;
    let mut tasks = Vec::new();
    for i in 0..24 {
        let s = store.clone();
        tasks.push(tokio::spawn(async move {
            let key = format!("k{i}");
            let e = entry(1, &[(&key, "v")]);
            (
                i,
                s.update_tags(1, 0, TagOp::Upsert, vec![e], origin())
                    .await
                    .unwrap(),
            )
        }));
    }
    for i in 0..8 {
        let s = store.clone();
        tasks.push(tokio::spawn(async move {
            let e = entry(2, &[("shared", &format!("{i}"))]);
            (
                100 + i,
                s.update_tags(1, 0, TagOp::Upsert, vec![e], origin())
                    .await
                    .unwrap(),
            )
        }));
    }
    let (s1, s2) = (store.clone(), store.clone());
    let unregister = tokio::spawn(async move { s1.unregister_users(1, vec![3], origin()).await });
    let write = tokio::spawn(async move {
        s2.update_tags(
            1,
            0,
            TagOp::Upsert,
            vec![entry(3, &[("late", "1")])],
            origin(),
        )
        .await
    });
    let mut applied = Vec::new();
    for t in tasks {
        let (i, out) = t.await.unwrap();
        assert_eq!(out.len(), 1, "{name}");
        match &out[0] {
            Outcome::Applied => applied.push(i),
            Outcome::TagLimitExceeded { .. } => assert!(i < 24, "{name}: request {i}"),
            other => panic!("{name}: request {i}: {other:?}"),
        }
    }
    let accepted: Vec<String> = applied
        .iter()
        .filter(|i| **i < 24)
        .map(|i| format!("k{i}"))
        .collect();
    assert_eq!(accepted.len(), CAP, "{name}: {accepted:?}");
    let mut kept: Vec<String> = tags(store.as_ref(), 0, 1)
        .await
        .unwrap()
        .into_iter()
        .map(|(k, _)| k)
        .collect();
    let mut expected = accepted.clone();
    kept.sort();
    expected.sort();
    assert_eq!(kept, expected, "{name}");
    assert_eq!(applied.iter().filter(|i| **i >= 100).count(), 8, "{name}");
    let shared = tags(store.as_ref(), 0, 2).await.unwrap();
    assert_eq!(shared.len(), 1, "{name}: {shared:?}");
    assert_eq!(
        unregister.await.unwrap().unwrap(),
        vec![Outcome::Applied],
        "{name}"
    );
    let late = write.await.unwrap().unwrap();
    assert!(
        matches!(late[0], Outcome::Applied | Outcome::UserNotFound),
        "{name}: {late:?}"
    );
    assert_eq!(tags(store.as_ref(), 0, 3).await, None, "{name}");
    store.close().await;
}

async fn every_acknowledged_write_is_in_the_next_audience_answer(
    name: &str,
    store: Arc<dyn Store>,
) {
    let s = store.as_ref();
    let gold = Filter::Tag {
        key: "level".into(),
        value: "gold".into(),
    };
    let everyone = Filter::All;
    register(s, &[1, 2, 3]).await;
    assert_eq!(
        s.count_audience(1, 0, &everyone).await.unwrap(),
        3,
        "{name}"
    );
    for (i, user) in [1, 2, 3].into_iter().enumerate() {
        s.update_tags(
            1,
            0,
            TagOp::Upsert,
            vec![entry(user, &[("level", "gold")])],
            origin(),
        )
        .await
        .unwrap();
        assert_eq!(
            s.count_audience(1, 0, &gold).await.unwrap(),
            i as u64 + 1,
            "{name}"
        );
    }
    // Overwritten, deleted, in another inbox, unregistered.
    s.update_tags(
        1,
        0,
        TagOp::Upsert,
        vec![entry(1, &[("level", "silver")])],
        origin(),
    )
    .await
    .unwrap();
    s.update_tags(
        1,
        0,
        TagOp::Delete,
        vec![entry(2, &[("level", "")])],
        origin(),
    )
    .await
    .unwrap();
    s.update_tags(
        1,
        4,
        TagOp::Upsert,
        vec![entry(2, &[("level", "gold")])],
        origin(),
    )
    .await
    .unwrap();
    assert_eq!(s.count_audience(1, 0, &gold).await.unwrap(), 1, "{name}");
    assert_eq!(s.count_audience(1, 4, &gold).await.unwrap(), 1, "{name}");
    s.unregister_users(1, vec![3], origin()).await.unwrap();
    assert_eq!(s.count_audience(1, 0, &gold).await.unwrap(), 0, "{name}");
    assert_eq!(s.count_audience(1, 4, &gold).await.unwrap(), 1, "{name}");
    // Registered again: a new ordinal, listed after the others.
    register(s, &[3]).await;
    let page = s.list_audience(1, 0, &everyone, None, 10).await.unwrap();
    assert_eq!(page.user_ids, vec![1, 2, 3], "{name}");
    let page = s.list_audience(1, 0, &everyone, None, 2).await.unwrap();
    assert_eq!(page.user_ids, vec![1, 2], "{name}");
    let rest = s
        .list_audience(1, 0, &everyone, page.next, 2)
        .await
        .unwrap();
    assert_eq!((rest.user_ids, rest.next), (vec![3], None), "{name}");
    // Another app sees nothing.
    assert_eq!(
        s.count_audience(2, 0, &everyone).await.unwrap(),
        0,
        "{name}"
    );
    store.close().await;
}

per_backend!(
    every_acknowledged_write_is_in_the_next_audience_answer,
    entries_apply_in_order_each_atomically_and_report_unregistered_users,
    the_cap_counts_only_net_new_keys_and_a_refused_entry_changes_nothing,
    register_updates_given_fields_and_unregister_clears_every_inbox,
    update_users_replaces_inbox_0_and_refuses_whole_entries,
    a_closed_store_is_unavailable,
);

/// The folding case with the store's metrics at hand: it must have folded (a shared
/// commit happened), or it would pass with a batch size of 1 and test nothing.
mod concurrent_requests_folded_into_one_commit_behave_as_some_serial_order {
    async fn folded(name: &str) {
        let metrics = std::sync::Arc::new(tagcast::metrics::Metrics::new());
        let (store, _dir) = super::backend_with(name, metrics.clone()).await;
        super::concurrent_requests_folded_into_one_commit_behave_as_some_serial_order(name, store)
            .await;
        let (shared, _) = metrics.commits_shared_and_split();
        assert!(shared >= 1, "{name}: no commit held more than one request");
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn embedded() {
        folded("embedded").await;
    }

    #[tokio::test(flavor = "multi_thread")]
    async fn postgres() {
        folded("postgres").await;
    }
}

/// The origin the conformance suite's writes carry into the change log.
fn origin() -> tagcast::store::Origin {
    tagcast::store::Origin {
        request_id: "conformance".into(),
        access_key: "AKconformance".into(),
    }
}

/// Sends a broadcast of app 1 to every registered user with one webhook lane of
/// `page_size` ids per page; its id.
async fn send_to_everyone(store: &dyn Store, url: &str, page_size: usize, now: i64) -> i64 {
    let broadcast = NewBroadcast {
        app_id: 1,
        inbox: 0,
        sender: 1,
        msg_type: 1,
        content: "hello".into(),
        ext: Default::default(),
        selector: "{}".into(),
        ttl_secs: 60,
        token: format!("token-{url}-{now}"),
        origin: Origin::default(),
    };
    let outlets = vec![Outlet {
        url: url.into(),
        page_size,
    }];
    match store
        .send_broadcast(broadcast, &Filter::All, 100, outlets, now)
        .await
        .unwrap()
    {
        Sent::Created {
            id,
            replayed: false,
            ..
        } => id,
        other => panic!("the send was not created: {other:?}"),
    }
}

async fn delivery(store: &dyn Store, id: i64) -> Delivery {
    store.get_broadcast(1, id).await.unwrap().unwrap().1
}

fn pages_of(claimed: &[Claimed]) -> Vec<(u32, u32)> {
    let mut p: Vec<(u32, u32)> = claimed.iter().map(|c| (c.key.page, c.attempts)).collect();
    p.sort_unstable();
    p
}

/// The outbox rules of `broadcast/outbox.rs` as both stores keep them: at most `window`
/// open pages per lane, a page under lease is not claimed twice, a retry is due at its
/// time with its attempt counted, and the delivery counts add up.
async fn outbox_claims_within_the_window_retries_and_counts(_name: &str, store: Arc<dyn Store>) {
    register(&*store, &[1, 2, 3, 4, 5]).await;
    let now = tagcast::model::now_ms();
    let url = "http://127.0.0.1:9/hook";
    let id = send_to_everyone(&*store, url, 2, now).await;
    let pending = Delivery {
        pages: 3,
        pending: 3,
        ..Delivery::default()
    };
    assert_eq!(delivery(&*store, id).await, pending);
    assert_eq!(store.outbox_stats().await.unwrap().pending, 3);

    let want = || vec![(url.to_string(), 10)];
    let first = store.claim_pages(now, 10_000, 2, want()).await.unwrap();
    assert_eq!(
        pages_of(&first),
        vec![(0, 1), (1, 1)],
        "two pages: the window"
    );
    assert!(
        first
            .iter()
            .all(|c| c.key.broadcast_id == id && c.key.url == url)
    );
    let leased = store.claim_pages(now, 10_000, 2, want()).await.unwrap();
    assert!(leased.is_empty(), "claimed twice: {leased:?}");

    let key = |page| PageKey {
        broadcast_id: id,
        url: url.into(),
        page,
    };
    let retry_at = now + 1_000;
    store
        .finish_pages(
            vec![
                (key(0), PageDone::Delivered),
                (key(1), PageDone::Retry { at_ms: retry_at }),
            ],
            2,
        )
        .await
        .unwrap();
    // Page 1 waits for its time; page 2 fits in the window now.
    let next = store.claim_pages(now, 10_000, 2, want()).await.unwrap();
    assert_eq!(pages_of(&next), vec![(2, 1)]);
    let again = store
        .claim_pages(retry_at, 10_000, 2, want())
        .await
        .unwrap();
    assert_eq!(pages_of(&again), vec![(1, 2)], "the retry, second attempt");
    assert_eq!(
        delivery(&*store, id).await,
        Delivery {
            pages: 3,
            delivered: 1,
            pending: 2,
            ..Delivery::default()
        }
    );
    store
        .finish_pages(
            vec![(key(1), PageDone::Failed), (key(2), PageDone::Delivered)],
            2,
        )
        .await
        .unwrap();
    // A page finished twice (another node outlived its lease) changes nothing.
    store
        .finish_pages(vec![(key(2), PageDone::Failed)], 2)
        .await
        .unwrap();
    assert_eq!(
        delivery(&*store, id).await,
        Delivery {
            pages: 3,
            delivered: 2,
            failed: 1,
            ..Delivery::default()
        }
    );
    assert_eq!(store.outbox_stats().await.unwrap().pending, 0);
    let none = store
        .claim_pages(retry_at + 60_000, 10_000, 2, want())
        .await;
    assert!(none.unwrap().is_empty());
}

/// A claimer that dies: its page is due again once the lease lapses. A recall drops what
/// was not sent; the sweeper removes what expired.
async fn outbox_lapsed_leases_recalls_and_purge(_name: &str, store: Arc<dyn Store>) {
    register(&*store, &[1, 2, 3]).await;
    let now = tagcast::model::now_ms();
    let url = "http://127.0.0.1:9/hook";
    let kept = send_to_everyone(&*store, url, 3, now).await;
    let want = || vec![(url.to_string(), 10)];
    let claimed = store.claim_pages(now, 1_000, 4, want()).await.unwrap();
    assert_eq!(pages_of(&claimed), vec![(0, 1)]);
    let early = store
        .claim_pages(now + 999, 1_000, 4, want())
        .await
        .unwrap();
    assert!(early.is_empty(), "claimed under a live lease: {early:?}");
    let lapsed = store
        .claim_pages(now + 1_000, 1_000, 4, want())
        .await
        .unwrap();
    assert_eq!(
        pages_of(&lapsed),
        vec![(0, 2)],
        "due again when the lease lapses"
    );

    let recalled = send_to_everyone(&*store, url, 1, now + 1).await;
    assert!(
        store
            .recall_broadcast(1, recalled, Origin::default())
            .await
            .unwrap()
    );
    assert!(
        !store
            .recall_broadcast(1, recalled + 1000, Origin::default())
            .await
            .unwrap()
    );
    assert_eq!(
        delivery(&*store, recalled).await,
        Delivery {
            pages: 3,
            dropped: 3,
            ..Delivery::default()
        }
    );
    let after = store
        .claim_pages(now + 1_000, 1_000, 4, want())
        .await
        .unwrap();
    assert!(
        after.iter().all(|c| c.key.broadcast_id != recalled),
        "{after:?}"
    );
    assert_eq!(store.outbox_stats().await.unwrap().pending, 1);

    let not_yet = store.purge_expired(now + 59_000).await.unwrap();
    assert_eq!(not_yet.broadcasts, 0);
    let purged = store.purge_expired(now + 61_001).await.unwrap();
    assert_eq!(purged.broadcasts, 2);
    assert_eq!(
        purged.pending_pages, 1,
        "the kept broadcast's page was pending"
    );
    assert!(store.get_broadcast(1, kept).await.unwrap().is_none());
    assert!(store.get_broadcast(1, recalled).await.unwrap().is_none());
    assert_eq!(store.outbox_stats().await.unwrap().pending, 0);
}

per_backend!(
    outbox_claims_within_the_window_retries_and_counts,
    outbox_lapsed_leases_recalls_and_purge,
);
