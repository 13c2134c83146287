//! PostgreSQL errors name the server (host, port, database) and the real cause: the
//! server's own message or the OS error, never "db error", never the URL or password.

use tagcast::config::Config;

use crate::common::*;
use crate::infra::{execute, fresh_database, shared_postgres};

/// A password the errors must not show (the test servers trust loopback and ignore it).
fn with_password(url: &str) -> String {
    url.replacen("tagcast@", "tagcast:pw-not-for-logs@", 1)
}

fn assert_clean(e: &str) {
    assert!(
        !e.contains("pw-not-for-logs") && !e.contains("postgres://"),
        "{e}"
    );
    assert!(!e.contains("db error"), "{e}");
}

async fn start_error(url: String) -> String {
    let tmp = tempfile::tempdir().unwrap();
    let mut config: Config = base_config(tmp.path());
    config.store.kind = tagcast::config::StoreKind::Postgres;
    config.store.url = Some(url);
    let e = match tagcast::server::prepare(&config).await {
        Ok(_) => panic!("the server started"),
        Err(e) => e,
    };
    println!("pg_errors: {e}");
    assert_clean(&e);
    e
}

#[tokio::test(flavor = "multi_thread")]
async fn a_wrong_database_name_is_named_with_the_servers_own_message() {
    let pg = shared_postgres();
    let e = start_error(with_password(&pg.url("no_such_database"))).await;
    assert!(
        e.contains(&format!(
            "PostgreSQL at 127.0.0.1:{}, database \"no_such_database\"",
            pg.port
        )),
        "{e}"
    );
    assert!(
        e.contains("database \"no_such_database\" does not exist"),
        "{e}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn nothing_listening_is_named_with_the_os_cause() {
    let port = tagcast::devservers::free_port().unwrap();
    let e = start_error(format!(
        "postgres://tagcast:pw-not-for-logs@127.0.0.1:{port}/db"
    ))
    .await;
    assert!(
        e.contains(&format!("127.0.0.1:{port}, database \"db\"")),
        "{e}"
    );
    assert!(e.contains("Connection refused (os error 111)"), "{e}");
}

#[tokio::test(flavor = "multi_thread")]
async fn store_errors_name_the_server_and_its_message_once_the_database_is_gone() {
    let pg = shared_postgres();
    let url = fresh_database(pg);
    let db = url.rsplit('/').next().unwrap().to_owned();
    let s = TestServer::with(|c| {
        c.store.kind = tagcast::config::StoreKind::Postgres;
        c.store.url = Some(with_password(&url));
    })
    .await;
    s.state.store.ready().await.unwrap();
    execute(
        &pg.admin_url("postgres"),
        &format!("DROP DATABASE {db} WITH (FORCE)"),
    );
    // Pooled sessions were terminated; each may first fail with that, then a new session
    // is refused by the server because the database no longer exists.
    let mut seen = Vec::new();
    for _ in 0..50 {
        let e = s.state.store.ready().await.unwrap_err().to_string();
        assert_clean(&e);
        assert!(
            e.contains(&format!(
                "PostgreSQL at 127.0.0.1:{}, database \"{db}\"",
                pg.port
            )),
            "{e}"
        );
        let done = e.contains(&format!("database \"{db}\" does not exist"));
        seen.push(e);
        if done {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    println!("pg_errors: {seen:#?}");
    assert!(seen.last().unwrap().contains("does not exist"), "{seen:#?}");
}
