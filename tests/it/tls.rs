//! TLS to PostgreSQL and Redis, against real servers that accept nothing but TLS: a
//! PostgreSQL whose pg_hba.conf allows only `hostssl` on 127.0.0.1, and a Redis with no
//! plain port. The CAs and certificates are made by the test (rcgen); PostgreSQL's own
//! `pg_stat_ssl` confirms that tagcast's sessions are encrypted.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
use serde_json::json;
use tagcast::config::Config;
use tagcast::devservers::{PgSetup, Postgres, Redis};

use crate::common::*;

/// PEM text of the test's CAs and server certificates.
pub struct Pki {
    pub ca: String,
    /// A CA that signed nothing the servers present.
    pub other_ca: String,
    /// Signed by `ca`, for `localhost` and `127.0.0.1`.
    pub server_cert: String,
    pub server_key: String,
    /// Signed by `ca`, for a name that is not the host tests connect to.
    pub elsewhere_cert: String,
    pub elsewhere_key: String,
}

fn new_ca(name: &str) -> (String, Issuer<'static, KeyPair>) {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    let key = KeyPair::generate().unwrap();
    let cert = params.self_signed(&key).unwrap();
    (cert.pem(), Issuer::new(params, key))
}

fn leaf(names: &[&str], issuer: &Issuer<'static, KeyPair>) -> (String, String) {
    let names: Vec<String> = names.iter().map(|n| n.to_string()).collect();
    let mut params = CertificateParams::new(names.clone()).unwrap();
    params
        .distinguished_name
        .push(DnType::CommonName, &names[0]);
    let key = KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, issuer).unwrap();
    (cert.pem(), key.serialize_pem())
}

pub fn pki() -> &'static Pki {
    static PKI: OnceLock<Pki> = OnceLock::new();
    PKI.get_or_init(|| {
        let (ca, issuer) = new_ca("tagcast test CA");
        let (other_ca, _) = new_ca("an unrelated CA");
        let (server_cert, server_key) = leaf(&["localhost", "127.0.0.1"], &issuer);
        let (elsewhere_cert, elsewhere_key) = leaf(&["db.elsewhere.invalid"], &issuer);
        Pki {
            ca,
            other_ca,
            server_cert,
            server_key,
            elsewhere_cert,
            elsewhere_key,
        }
    })
}

/// Writes `pem` to `dir/name` and returns the path.
pub fn write(dir: &Path, name: &str, pem: &str) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, pem).unwrap();
    path
}

/// The TLS-only cluster presenting the certificate for localhost and 127.0.0.1.
fn tls_postgres() -> &'static Postgres {
    static PG: OnceLock<Postgres> = OnceLock::new();
    PG.get_or_init(|| {
        let p = pki();
        Postgres::start_with(true, PgSetup::tls_only(&p.server_cert, &p.server_key)).unwrap()
    })
}

/// The TLS-only cluster presenting a certificate (from the right CA) for another name.
fn elsewhere_postgres() -> &'static Postgres {
    static PG: OnceLock<Postgres> = OnceLock::new();
    PG.get_or_init(|| {
        let p = pki();
        Postgres::start_with(true, PgSetup::tls_only(&p.elsewhere_cert, &p.elsewhere_key)).unwrap()
    })
}

/// A fresh database on `pg`: (its name, its URL with a password tagcast must never show).
fn database(pg: &Postgres) -> (String, String) {
    let url = crate::infra::fresh_database(pg);
    let name = url.rsplit('/').next().unwrap().to_owned();
    let url = url.replacen("tagcast@", "tagcast:pw-not-for-logs@", 1);
    (name, url)
}

fn on_postgres(c: &mut Config, url: String) {
    c.store.kind = tagcast::config::StoreKind::Postgres;
    c.store.url = Some(url);
}

/// The error `prepare` refuses to start with; it must not show the URL or the password.
async fn start_error(dir: &Path, tweak: impl FnOnce(&mut Config)) -> String {
    let mut config = base_config(dir);
    tweak(&mut config);
    let e = match tagcast::server::prepare(&config).await {
        Ok(_) => panic!("the server started"),
        Err(e) => e,
    };
    assert!(
        !e.contains("pw-not-for-logs") && !e.contains("postgres://"),
        "{e}"
    );
    e
}

/// `ssl` and TLS version of tagcast's sessions on `db`, as PostgreSQL sees them.
async fn tagcast_sessions(pg: &Postgres, db: &str) -> Vec<(bool, String)> {
    let (client, conn) = tokio_postgres::connect(&pg.admin_url("postgres"), tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    client
        .query(
            "SELECT s.ssl, coalesce(s.version, '') FROM pg_stat_ssl s
             JOIN pg_stat_activity a ON a.pid = s.pid
             WHERE a.application_name = 'tagcast' AND a.datname = $1",
            &[&db],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

async fn assert_encrypted(pg: &Postgres, db: &str) {
    let sessions = tagcast_sessions(pg, db).await;
    assert!(!sessions.is_empty(), "no tagcast session on {db}");
    assert!(sessions.iter().all(|(ssl, _)| *ssl), "{sessions:?}");
    println!("tls: {db}: tagcast sessions per pg_stat_ssl: {sessions:?}");
}

/// A signed write and its read-back.
async fn write_and_read(s: &TestServer) {
    let c = s.client();
    register(&c, APP, &[7]).await;
    let a = call(
        &c,
        "BatchUpdateUserTags",
        json!({"AppId": APP, "UserTags": [{"UserId": 7, "Tags": {"tls": "on"}}]}),
    )
    .await;
    assert!(failed_infos(&a).is_empty(), "{}", a.json());
    assert_eq!(
        tags_of(&c, APP, 0, 7).await,
        Some(vec!["tls:on".to_owned()])
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn postgres_sslmode_require_is_encrypted_without_a_ca() {
    let pg = tls_postgres();
    let (db, url) = database(pg);
    let s = TestServer::with(|c| on_postgres(c, format!("{url}?sslmode=require"))).await;
    write_and_read(&s).await;
    assert_encrypted(pg, &db).await;
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn postgres_verify_full_with_the_right_ca_serves_signed_writes_and_reads() {
    let tmp = tempfile::tempdir().unwrap();
    let ca = write(tmp.path(), "ca.pem", &pki().ca);
    let pg = tls_postgres();
    let (db, url) = database(pg);
    // 127.0.0.1: the certificate's IP SAN is what matches.
    let url = format!("{url}?sslmode=verify-full&sslrootcert={}", ca.display());
    let s = TestServer::with(|c| on_postgres(c, url)).await;
    write_and_read(&s).await;
    assert_encrypted(pg, &db).await;
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn postgres_verify_full_with_store_ca_file_matches_a_dns_name() {
    let tmp = tempfile::tempdir().unwrap();
    let ca = write(tmp.path(), "ca.pem", &pki().ca);
    let pg = tls_postgres();
    let (db, url) = database(pg);
    let url = url.replace("@127.0.0.1:", "@localhost:") + "?sslmode=verify-full";
    let s = TestServer::with(|c| {
        on_postgres(c, url);
        c.store.ca_file = Some(ca);
    })
    .await;
    write_and_read(&s).await;
    assert_encrypted(pg, &db).await;
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn postgres_verify_full_with_the_wrong_ca_is_refused_at_start() {
    let tmp = tempfile::tempdir().unwrap();
    let other = write(tmp.path(), "other-ca.pem", &pki().other_ca);
    let pg = tls_postgres();
    let (db, url) = database(pg);
    let e = start_error(tmp.path(), |c| {
        on_postgres(c, format!("{url}?sslmode=verify-full"));
        c.store.ca_file = Some(other);
    })
    .await;
    println!("tls: wrong CA: {e}");
    assert!(e.contains("invalid peer certificate: UnknownIssuer"), "{e}");
    assert!(e.contains(&format!("127.0.0.1:{}", pg.port)), "{e}");
    assert!(e.contains(&format!("database \"{db}\"")), "{e}");
}

#[tokio::test(flavor = "multi_thread")]
async fn postgres_verify_ca_accepts_another_host_name_that_verify_full_refuses() {
    let tmp = tempfile::tempdir().unwrap();
    let ca = write(tmp.path(), "ca.pem", &pki().ca);
    let pg = elsewhere_postgres();
    let (db, url) = database(pg);
    let e = start_error(tmp.path(), |c| {
        on_postgres(
            c,
            format!("{url}?sslmode=verify-full&sslrootcert={}", ca.display()),
        );
    })
    .await;
    println!("tls: verify-full, certificate for another name: {e}");
    assert!(e.contains("not valid for name"), "{e}");
    let url = format!("{url}?sslmode=verify-ca&sslrootcert={}", ca.display());
    let s = TestServer::with(|c| on_postgres(c, url)).await;
    write_and_read(&s).await;
    assert_encrypted(pg, &db).await;
    s.stop().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn postgres_sslmode_disable_is_refused_by_a_hostssl_only_server() {
    let tmp = tempfile::tempdir().unwrap();
    let pg = tls_postgres();
    let (db, url) = database(pg);
    let e = start_error(tmp.path(), |c| {
        on_postgres(c, format!("{url}?sslmode=disable"))
    })
    .await;
    println!("tls: sslmode=disable: {e}");
    // PostgreSQL's own words: no pg_hba.conf line lets a plain session in.
    assert!(e.contains("no pg_hba.conf entry for host"), "{e}");
    assert!(e.contains("no encryption"), "{e}");
    assert!(e.contains(&format!("database \"{db}\"")), "{e}");
}

#[tokio::test(flavor = "multi_thread")]
async fn unreadable_or_unusable_ca_files_are_start_up_errors_naming_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    let missing = tmp.path().join("missing.pem");
    let not_pem = write(tmp.path(), "not.pem", "just text\n");
    let (_, url) = database(tls_postgres());

    let e = start_error(tmp.path(), |c| {
        on_postgres(c, format!("{url}?sslmode=verify-full"));
        c.store.ca_file = Some(missing.clone());
    })
    .await;
    assert!(e.starts_with("store.ca_file: cannot read CA file"), "{e}");
    assert!(e.contains(&missing.display().to_string()), "{e}");

    let e = start_error(tmp.path(), |c| {
        on_postgres(c, format!("{url}?sslmode=verify-full"));
        c.store.ca_file = Some(not_pem.clone());
    })
    .await;
    assert!(e.contains("store.ca_file: CA file"), "{e}");
    assert!(e.contains("holds no PEM certificate"), "{e}");

    let e = start_error(tmp.path(), |c| {
        on_postgres(
            c,
            format!("{url}?sslmode=verify-ca&sslrootcert={}", missing.display()),
        )
    })
    .await;
    assert!(
        e.contains("store.url sslrootcert: cannot read CA file"),
        "{e}"
    );
    assert!(e.contains(&missing.display().to_string()), "{e}");

    let ca = write(tmp.path(), "ca.pem", &pki().ca);
    let e = start_error(tmp.path(), |c| {
        c.limits.redis_url = Some("redis://127.0.0.1:1/0".into());
        c.limits.redis_ca_file = Some(ca);
    })
    .await;
    assert!(e.contains("limits.redis_ca_file"), "{e}");
    assert!(e.contains("not a rediss:// URL"), "{e}");
}

/// A TLS-only Redis presenting the certificate for localhost and 127.0.0.1.
fn tls_redis(dir: &Path) -> Redis {
    let p = pki();
    Redis::start_tls(
        &write(dir, "redis.crt", &p.server_cert),
        &write(dir, "redis.key", &p.server_key),
        &write(dir, "redis-ca.pem", &p.ca),
    )
    .unwrap()
}

fn limiter_errors(metrics: &str) -> u64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix("tagcast_limiter_errors_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or(0)
}

fn on_redis(c: &mut Config, url: String, ca: Option<PathBuf>, prefix: &str) {
    c.limits.redis_url = Some(url);
    c.limits.redis_ca_file = ca;
    c.limits.redis_key_prefix = prefix.into();
    c.limits.actions.insert("BatchGetUser".into(), 5);
}

#[tokio::test(flavor = "multi_thread")]
async fn redis_over_tls_with_a_private_ca_holds_a_shared_limit_without_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let redis = tls_redis(tmp.path());
    let ca = write(tmp.path(), "ca.pem", &pki().ca);
    let prefix = format!("tls{}", std::process::id());
    let nodes = [
        TestServer::with(|c| on_redis(c, redis.url(), Some(ca.clone()), &prefix)).await,
        TestServer::with(|c| on_redis(c, redis.url(), Some(ca.clone()), &prefix)).await,
    ];
    // 5 per second with a burst of 5, shared by both nodes through Redis: the first five
    // of a burst always pass; among the next 25 some are refused unless each of those
    // requests took a fifth of a second.
    let mut statuses = Vec::new();
    for i in 0..30 {
        let a = get_users(&nodes[i % 2].client(), &[1]).await;
        if a.status == 429 {
            assert_error(&a, 429, "FlowLimitExceeded");
        } else {
            ok(&a);
        }
        statuses.push(a.status);
    }
    println!("tls: rediss:// limit 5/s over two nodes: {statuses:?}");
    assert_eq!(statuses[..5], [200; 5], "{statuses:?}");
    assert!(statuses[5..].contains(&429), "{statuses:?}");
    for node in &nodes {
        assert_eq!(limiter_errors(&node.metrics().await), 0);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn redis_over_tls_with_the_wrong_ca_counts_limiter_errors_and_insecure_skips_the_check() {
    let tmp = tempfile::tempdir().unwrap();
    let redis = tls_redis(tmp.path());
    let other = write(tmp.path(), "other-ca.pem", &pki().other_ca);
    let prefix = format!("tlswrong{}", std::process::id());
    // The limiter connects lazily: the server starts, and each failed decision is counted
    // and, under the default on_redis_error = "allow", served.
    let s = TestServer::with(|c| on_redis(c, redis.url(), Some(other), &prefix)).await;
    for _ in 0..3 {
        ok(&get_users(&s.client(), &[1]).await);
    }
    let errors = limiter_errors(&s.metrics().await);
    assert!(errors >= 1, "no limiter error counted");
    s.stop().await;

    // #insecure: TLS without any certificate check, so the same Redis decides.
    let insecure = format!("{}#insecure", redis.url());
    let s = TestServer::with(|c| on_redis(c, insecure, None, &format!("{prefix}i"))).await;
    let mut statuses = Vec::new();
    for _ in 0..30 {
        statuses.push(get_users(&s.client(), &[1]).await.status);
    }
    assert!(statuses.contains(&429), "{statuses:?}");
    assert_eq!(limiter_errors(&s.metrics().await), 0);
}
