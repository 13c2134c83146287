//! `tagcast bench`: starts its own servers on temporary data (the embedded store, then
//! PostgreSQL), measures them and their baselines in the same run, and prints the figures,
//! ending with one `BENCH {json}` line. See docs/benchmarks.md for the method.

pub mod audience;
pub mod baseline;
pub mod broadcast;
pub mod chart;
mod events;
pub mod load;
pub mod server;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method};
use serde_json::{Map, Value, json};
use time::OffsetDateTime;

use crate::api::VERSION;
use crate::devservers::Postgres;
use crate::signing::{self, Credentials, SecretKey};
use load::{Expect, Generator, Pace, Request, RunResult};
use server::{Backend, BenchAccount, ServerProcess};

/// The bench account's app (every phase on a store of its own).
const BENCH_APP: u32 = 1_000_001;
/// Users per BatchUpdateUserTags request (and per baseline transaction).
pub const USERS_PER_REQUEST: usize = 10;
/// RegisterUsers' limit per request.
const REGISTER_BATCH: u64 = 20;
/// Tags per user in the scale data set.
const SCALE_TAGS: usize = 5;
const ALL_OK: &[u8] = b"\"FailedInfos\":[]";

/// A tag value that changes with `n`, so every write really writes.
pub fn tag_value(n: u64) -> String {
    format!("v{}", n % 997)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum BackendKind {
    Embedded,
    Postgres,
}

impl BackendKind {
    fn name(self) -> &'static str {
        match self {
            BackendKind::Embedded => "embedded",
            BackendKind::Postgres => "postgres",
        }
    }
}

pub struct Options {
    pub backends: Vec<BackendKind>,
    pub connections: usize,
    /// Length of each measured phase.
    pub duration: Duration,
    /// Fractions of the closed-loop peak at which the open-loop latency is measured.
    pub levels: Vec<f64>,
    /// Registered users the end-to-end requests cycle through.
    pub e2e_users: u64,
    /// Users (5 tags each) loaded for the scale figures.
    pub scale_users: u64,
    /// Users of the audience phase's generated app (0: no audience phase).
    pub audience_users: u64,
    pub chart: Option<PathBuf>,
}

impl Options {
    pub fn full() -> Self {
        Options {
            backends: vec![BackendKind::Embedded, BackendKind::Postgres],
            connections: 64,
            duration: Duration::from_secs(10),
            levels: vec![0.1, 0.25, 0.5, 0.75, 0.9],
            e2e_users: 100_000,
            scale_users: 1_000_000,
            audience_users: 10_000_000,
            // Never a file by default: a default path once overwrote a tracked file.
            chart: None,
        }
    }

    /// Under a minute for both backends: short phases, a small scale set.
    pub fn quick() -> Self {
        Options {
            duration: Duration::from_millis(1500),
            levels: vec![0.25, 0.5, 0.75],
            e2e_users: 2_000,
            scale_users: 20_000,
            audience_users: 200_000,
            chart: None,
            ..Options::full()
        }
    }
}

/// Signs requests for one server.
struct Signer {
    host: HeaderValue,
    creds: Credentials,
}

impl Signer {
    fn new(addr: std::net::SocketAddr, account: &BenchAccount) -> Result<Self, String> {
        Ok(Signer {
            host: HeaderValue::from_str(&addr.to_string()).map_err(|e| e.to_string())?,
            creds: Credentials {
                access_key: account.access_key.clone(),
                secret_key: SecretKey::new(account.secret_key.clone()),
                region: "cn-north-1".into(),
            },
        })
    }

    fn request(&self, action: &str, body: Vec<u8>) -> Request {
        let query = format!("Action={action}&Version={VERSION}");
        let mut headers = HeaderMap::new();
        headers.insert(http::header::HOST, self.host.clone());
        headers.insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        signing::sign(
            "POST",
            "/",
            &query,
            &mut headers,
            &body,
            &self.creds,
            OffsetDateTime::now_utc(),
        );
        Request {
            method: Method::POST,
            path_and_query: format!("/?{query}"),
            headers,
            body: Bytes::from(body),
        }
    }
}

fn user_id(i: u64) -> u64 {
    i + 1
}

/// RegisterUsers request `n`: users `20n..20n+20` (below `total`), `tags` tags each.
fn register_generator(signer: Arc<Signer>, app_id: u32, total: u64, tags: usize) -> Generator {
    Arc::new(move |n| {
        let users: Vec<Value> = (n * REGISTER_BATCH..((n + 1) * REGISTER_BATCH).min(total))
            .map(|i| {
                let tags: Vec<String> = (0..tags)
                    .map(|t| format!("k{t}:{}", tag_value(i + t as u64)))
                    .collect();
                json!({"UserId": user_id(i), "NickName": format!("user {i}"), "Tags": tags})
            })
            .collect();
        let body = json!({"AppId": app_id, "Users": users}).to_string();
        signer.request("RegisterUsers", body.into_bytes())
    })
}

/// BatchUpdateUserTags request `n` (10 users x 2 tags, Op 0), signed when it is sent:
/// request n writes users `10n..10n+10` modulo `users`, and every pass over the users
/// writes values other than the pass before, so no request rewrites what a user holds.
fn update_generator(signer: Arc<Signer>, app_id: u32, users: u64) -> Generator {
    let per_pass = users.div_ceil(USERS_PER_REQUEST as u64).max(1);
    Arc::new(move |n| {
        let (pass, slot) = (n / per_pass, n % per_pass);
        let mut body = format!(r#"{{"AppId":{app_id},"InboxType":0,"Op":0,"UserTags":["#);
        for i in 0..USERS_PER_REQUEST as u64 {
            let u = (slot * USERS_PER_REQUEST as u64 + i) % users;
            if i > 0 {
                body.push(',');
            }
            body.push_str(&format!(
                r#"{{"UserId":{},"Tags":{{"level":"{}","city":"{}"}}}}"#,
                user_id(u),
                tag_value(slot + pass),
                tag_value(slot + pass + 1)
            ));
        }
        body.push_str("]}");
        signer.request("BatchUpdateUserTags", body.into_bytes())
    })
}

fn healthz() -> Generator {
    Arc::new(|_| Request {
        method: Method::GET,
        path_and_query: "/healthz".into(),
        headers: HeaderMap::new(),
        body: Bytes::new(),
    })
}

fn check(what: &str, r: &RunResult) -> Result<(), String> {
    match &r.first_failure {
        Some(f) => Err(format!(
            "{what}: {} of {} requests failed; first: {f}",
            r.failed,
            r.failed + r.ok
        )),
        None => Ok(()),
    }
}

fn round(x: f64, places: i32) -> f64 {
    let f = 10f64.powi(places);
    (x * f).round() / f
}

/// The figures of one backend, in BENCH order.
#[derive(Default)]
struct Figures(Map<String, Value>);

impl Figures {
    fn set(&mut self, key: &str, v: f64) {
        self.0.insert(key.into(), json!(round(v, 2)));
    }
}

async fn run_load(
    addr: std::net::SocketAddr,
    options: &Options,
    pace: Pace,
    generator: Generator,
    expect_all_ok: bool,
) -> Result<RunResult, String> {
    let expect = Expect {
        status: 200,
        body_contains: expect_all_ok.then_some(ALL_OK),
    };
    load::run(addr, options.connections, pace, generator, expect).await
}

/// Closed loop for the phase's duration after a warm-up of a quarter of it; every answer
/// must be good.
async fn peak_load(
    addr: std::net::SocketAddr,
    options: &Options,
    generator: Generator,
    expect_all_ok: bool,
    what: &str,
) -> Result<RunResult, String> {
    let d = options.duration;
    let warm = Pace::Closed { duration: d / 4 };
    run_load(addr, options, warm, generator.clone(), expect_all_ok).await?;
    let r = run_load(
        addr,
        options,
        Pace::Closed { duration: d },
        generator,
        expect_all_ok,
    )
    .await?;
    check(what, &r)?;
    Ok(r)
}

/// [`peak_load`], with the server's CPU time per good answer over the measured part
/// (user and system time of the whole server process, no profiler attached), µs.
async fn peak_load_cpu(
    srv: &ServerProcess,
    options: &Options,
    generator: Generator,
    expect_all_ok: bool,
    what: &str,
) -> Result<(RunResult, f64), String> {
    let d = options.duration;
    let warm = Pace::Closed { duration: d / 4 };
    run_load(srv.addr, options, warm, generator.clone(), expect_all_ok).await?;
    let before = srv.cpu_time()?;
    let r = run_load(
        srv.addr,
        options,
        Pace::Closed { duration: d },
        generator,
        expect_all_ok,
    )
    .await?;
    let cpu = srv.cpu_time()? - before;
    check(what, &r)?;
    let per_request = cpu.as_secs_f64() * 1e6 / r.ok.max(1) as f64;
    Ok((r, per_request))
}

/// A pool of signed BatchGetUser requests for 10 of `users` registered users each,
/// cycling through them.
fn get_pool(signer: &Signer, app_id: u32, users: u64) -> Generator {
    let pool: Vec<Request> = (0..4096u64)
        .map(|n| {
            let ids: Vec<u64> = (0..USERS_PER_REQUEST as u64)
                .map(|i| user_id((n * USERS_PER_REQUEST as u64 + i) % users))
                .collect();
            let body = json!({"AppId": app_id, "InboxType": 0, "UserIds": ids}).to_string();
            signer.request("BatchGetUser", body.into_bytes())
        })
        .collect();
    let pool = Arc::new(pool);
    Arc::new(move |n| pool[(n % pool.len() as u64) as usize].clone())
}

/// Everything for one backend. `fresh` gives an empty place for the server's data
/// (called once for the end-to-end server and once for the scale data set).
async fn bench_backend(
    kind: BackendKind,
    options: &Options,
    work: &Path,
    fresh: &dyn Fn(&str) -> Result<Backend, String>,
    series: &mut Vec<chart::Series>,
    data: Option<&audience::DataSet>,
) -> Result<Figures, String> {
    let name = kind.name();
    let mut f = Figures::default();
    let account = BenchAccount {
        access_key: format!("AKLTbench{}", crate::accounts::random_string(24)),
        secret_key: crate::accounts::random_string(40),
        app_id: BENCH_APP,
    };
    let conns = options.connections;
    let d = options.duration;
    let backend = fresh("e2e")?;
    let baseline_url = match &backend {
        Backend::Postgres { .. } => Some(fresh("baseline")?),
        Backend::Embedded { .. } => None,
    };
    let config = server::write_config(&work.join(format!("{name}-e2e")), &backend, &account)?;
    let srv = ServerProcess::start(&config)?;
    let addr = srv.addr;
    let wal = match &backend {
        Backend::Embedded { data_dir } => Some(server::WalSampler::start(data_dir)),
        Backend::Postgres { .. } => None,
    };
    let signer = Arc::new(Signer::new(addr, &account)?);
    println!(
        "[{name}] server on {addr}, {conns} connections, {:.1} s per phase",
        d.as_secs_f64()
    );

    // HTTP ceiling.
    let (ceiling, cpu_healthz) =
        peak_load_cpu(&srv, options, healthz(), false, "GET /healthz").await?;
    println!(
        "[{name}] HTTP ceiling  GET /healthz: {:>9.0} req/s  p50 {:.2} ms  p99 {:.2} ms  \
         server CPU {cpu_healthz:.1} µs/request",
        ceiling.rps(),
        ceiling.percentile_ms(0.5),
        ceiling.percentile_ms(0.99)
    );
    f.set("http_ceiling_rps", ceiling.rps());
    f.set("cpu_us_healthz", cpu_healthz);

    // Register the users the updates cycle through.
    let batches = options.e2e_users.div_ceil(REGISTER_BATCH);
    let reg = run_load(
        addr,
        options,
        Pace::Count { count: batches },
        register_generator(signer.clone(), account.app_id, options.e2e_users, 0),
        true,
    )
    .await?;
    check("RegisterUsers", &reg)?;

    // End to end, closed loop: the peak.
    let pool = update_generator(signer.clone(), account.app_id, options.e2e_users);
    let (e2e, cpu_write) = peak_load_cpu(&srv, options, pool, true, "BatchUpdateUserTags").await?;
    let peak = e2e.rps();
    println!(
        "[{name}] end to end    BatchUpdateUserTags 10 users x 2 tags: {peak:>7.0} req/s = {:.0} user-updates/s  \
         p50 {:.2} ms  p95 {:.2} ms  p99 {:.2} ms  max {:.2} ms  server CPU {cpu_write:.1} µs/request",
        peak * USERS_PER_REQUEST as f64,
        e2e.percentile_ms(0.5),
        e2e.percentile_ms(0.95),
        e2e.percentile_ms(0.99),
        e2e.max_ms()
    );
    f.set("cpu_us_write", cpu_write);
    f.set("e2e_rps", peak);
    f.set("e2e_user_updates_per_s", peak * USERS_PER_REQUEST as f64);
    f.set("e2e_p50_ms", e2e.percentile_ms(0.5));
    f.set("e2e_p95_ms", e2e.percentile_ms(0.95));
    f.set("e2e_p99_ms", e2e.percentile_ms(0.99));
    f.set("e2e_max_ms", e2e.max_ms());

    // Reads, closed loop: BatchGetUser of 10 of the users just written.
    let gets = get_pool(&signer, account.app_id, options.e2e_users);
    let (read, cpu_read) = peak_load_cpu(&srv, options, gets, false, "BatchGetUser").await?;
    println!(
        "[{name}] reads         BatchGetUser 10 users: {:>7.0} req/s  p50 {:.2} ms  p99 {:.2} ms  \
         server CPU {cpu_read:.1} µs/request; read / HTTP ceiling = {:.3}",
        read.rps(),
        read.percentile_ms(0.5),
        read.percentile_ms(0.99),
        read.rps() / ceiling.rps()
    );
    f.set("read_rps", read.rps());
    f.set("cpu_us_read", cpu_read);
    let (ratio_read, ratio_write) = (
        cpu_read / cpu_healthz.max(0.001),
        cpu_write / cpu_healthz.max(0.001),
    );
    println!(
        "[{name}] server CPU per request ÷ GET /healthz's: read {ratio_read:.1}x, write {ratio_write:.1}x"
    );
    f.set("cpu_ratio_read_healthz", ratio_read);
    f.set("cpu_ratio_write_healthz", ratio_write);
    f.set("ratio_read_http_ceiling", read.rps() / ceiling.rps());

    // Latency under load: open loop at fractions of the peak (fresh signatures: a full
    // run can outlast the 15-minute signature window).
    let pool = update_generator(signer.clone(), account.app_id, options.e2e_users);
    let mut points = Vec::new();
    for &level in &options.levels {
        let rate = peak * level;
        let r = run_load(
            addr,
            options,
            Pace::Open { rate, duration: d },
            pool.clone(),
            true,
        )
        .await?;
        check("BatchUpdateUserTags (open loop)", &r)?;
        let pct = (level * 100.0).round() as u32;
        println!(
            "[{name}] open loop at {pct:>2}% of peak ({rate:.0} req/s offered): {:.0} req/s  p50 {:.2} ms  p99 {:.2} ms  max {:.2} ms",
            r.rps(),
            r.percentile_ms(0.5),
            r.percentile_ms(0.99),
            r.max_ms()
        );
        f.set(&format!("p50_ms_at_{pct}pct"), r.percentile_ms(0.5));
        f.set(&format!("p99_ms_at_{pct}pct"), r.percentile_ms(0.99));
        points.push(chart::Point {
            rps: r.rps(),
            p50_ms: r.percentile_ms(0.5),
            p99_ms: r.percentile_ms(0.99),
        });
    }
    points.push(chart::Point {
        rps: peak,
        p50_ms: e2e.percentile_ms(0.5),
        p99_ms: e2e.percentile_ms(0.99),
    });
    series.push(chart::Series {
        name: name.into(),
        points,
    });
    if let Some(wal) = wal {
        let largest = wal.stop().await as f64 / (1024.0 * 1024.0);
        println!(
            "[{name}] WAL           largest write-ahead log seen in the end-to-end phase: {largest:.1} MiB \
             (store.wal_limit_mb = {})",
            crate::config::StoreConfig::default().wal_limit_mb
        );
        f.set("wal_max_mb", largest);
    }
    srv.stop()?;

    // The event log: reading it, an event webhook, its lag, the log's cost per write.
    events::phase(
        name, work, &backend, &account, options, peak, cpu_write, &mut f,
    )
    .await?;

    // The bare database at the same concurrency.
    let base = match (&backend, baseline_url) {
        (Backend::Embedded { .. }, _) => {
            let dir = work.join("sqlite-baseline");
            std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
            let (app, dur) = (account.app_id, d);
            tokio::task::spawn_blocking(move || baseline::sqlite(&dir, app, conns, dur))
                .await
                .map_err(|e| e.to_string())??
        }
        (_, Some(Backend::Postgres { url })) => {
            baseline::postgres(&url, account.app_id, conns, d).await?
        }
        _ => unreachable!("a PostgreSQL backend comes with a baseline database"),
    };
    let what = match kind {
        BackendKind::Embedded => "SQLite (rusqlite, WAL, synchronous=FULL)",
        BackendKind::Postgres => "PostgreSQL (prepared UNNEST upsert)",
    };
    println!(
        "[{name}] DB baseline   {what}, {conns} writers, 10 users x 2 keys per tx: {:.0} tx/s = {:.0} user-updates/s",
        base.transactions as f64 / base.elapsed.as_secs_f64(),
        base.user_updates_per_s()
    );
    f.set("db_baseline_user_updates_per_s", base.user_updates_per_s());
    f.set("ratio_http_ceiling", peak / ceiling.rps());
    f.set(
        "ratio_db_baseline",
        peak * USERS_PER_REQUEST as f64 / base.user_updates_per_s(),
    );
    println!(
        "[{name}] ratios        end to end / HTTP ceiling = {:.3}; user-updates / DB baseline = {:.2}",
        peak / ceiling.rps(),
        peak * USERS_PER_REQUEST as f64 / base.user_updates_per_s()
    );

    // Scale: load the data set through the API, then restart on it.
    let scale = fresh("scale")?;
    let config = server::write_config(&work.join(format!("{name}-scale")), &scale, &account)?;
    let srv = ServerProcess::start(&config)?;
    let signer = Arc::new(Signer::new(srv.addr, &account)?);
    let n = options.scale_users;
    let loaded = run_load(
        srv.addr,
        options,
        Pace::Count {
            count: n.div_ceil(REGISTER_BATCH),
        },
        register_generator(signer, account.app_id, n, SCALE_TAGS),
        true,
    )
    .await?;
    check("RegisterUsers (scale)", &loaded)?;
    let rss_loaded = srv.rss_mb().unwrap_or(f64::NAN);
    if let Backend::Embedded { data_dir } = &scale {
        // An online backup of the loaded store, with the server running.
        let (from, to) = (data_dir.clone(), work.join(format!("{name}-backup.db")));
        let done = tokio::task::spawn_blocking(move || {
            crate::store::embedded::backup::backup(&from, &to, true)
        })
        .await
        .map_err(|e| e.to_string())??;
        let mb = done.bytes as f64 / (1024.0 * 1024.0);
        println!(
            "[{name}] backup        tagcast backup of {} users while serving: {:.2} s, {mb:.1} MiB",
            done.users,
            done.took.as_secs_f64()
        );
        f.set("backup_s", done.took.as_secs_f64());
        f.set("backup_mb", mb);
    }
    srv.stop()?;
    let size_mb = data_size(&scale).await? as f64 / (1024.0 * 1024.0);
    let srv = ServerProcess::start(&config)?;
    let start_ms = srv.start_to_listen.as_secs_f64() * 1000.0;
    let rss_idle = srv.rss_mb().unwrap_or(f64::NAN);
    srv.stop()?;
    let label = if n == 1_000_000 {
        "1m_users".to_owned()
    } else {
        format!("{n}_users")
    };
    println!(
        "[{name}] scale         {n} users x {SCALE_TAGS} tags loaded through RegisterUsers at {:.0} users/s; \
         RSS {rss_loaded:.1} MiB after loading, {rss_idle:.1} MiB after restart; data {size_mb:.1} MiB; \
         start to listening {start_ms:.0} ms",
        loaded.ok as f64 * REGISTER_BATCH as f64 / loaded.elapsed.as_secs_f64()
    );
    f.set("scale_users", n as f64);
    f.set(&format!("rss_mb_{label}"), rss_loaded);
    f.set(&format!("rss_mb_after_restart_{label}"), rss_idle);
    f.set(&format!("data_mb_{label}"), size_mb);
    f.set(&format!("start_to_listen_ms_{label}"), start_ms);
    if let Some(data) = data {
        audience_phase(name, work, fresh, &account, data, options, &mut f).await?;
    }
    Ok(f)
}

/// `GET /readyz` until it answers 200; the time it took.
async fn wait_ready(addr: std::net::SocketAddr, limit: Duration) -> Result<Duration, String> {
    let started = std::time::Instant::now();
    loop {
        let request = load::Request {
            method: Method::GET,
            path_and_query: "/readyz".into(),
            headers: HeaderMap::new(),
            body: Bytes::new(),
        };
        if load::fetch(addr, request).await.is_ok() {
            return Ok(started.elapsed());
        }
        if started.elapsed() > limit {
            return Err(format!(
                "the server at {addr} was not ready within {limit:?}"
            ));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The audience phase (see `audience.rs`) on one backend.
async fn audience_phase(
    name: &str,
    work: &Path,
    fresh: &dyn Fn(&str) -> Result<Backend, String>,
    account: &BenchAccount,
    data: &audience::DataSet,
    options: &Options,
    f: &mut Figures,
) -> Result<(), String> {
    let n = data.users;
    // A server on an empty store: the memory the index adds is measured against it.
    let empty = fresh("audience_empty")?;
    let config = server::write_config(
        &work.join(format!("{name}-audience-empty")),
        &empty,
        account,
    )?;
    let srv = ServerProcess::start(&config)?;
    wait_ready(srv.addr, Duration::from_secs(60)).await?;
    let rss_empty = srv.rss_mb().unwrap_or(f64::NAN);
    srv.stop()?;

    let backend = fresh("audience")?;
    let config = server::write_config(&work.join(format!("{name}-audience")), &backend, account)?;
    let exe = std::env::current_exe().map_err(|e| format!("locating tagcast: {e}"))?;
    let started = std::time::Instant::now();
    let (config_arg, file) = (config.clone(), data.file.clone());
    let app = account.app_id.to_string();
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(exe)
            .args(["import", "--config"])
            .arg(config_arg)
            .args(["--app", &app])
            .arg(file)
            .env("RUST_LOG", "warn")
            .output()
    })
    .await
    .map_err(|e| e.to_string())?
    .map_err(|e| format!("running tagcast import: {e}"))?;
    let took = started.elapsed();
    if !out.status.success() {
        return Err(format!(
            "tagcast import failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let import_rate = n as f64 / took.as_secs_f64();
    println!(
        "[{name}] audience      {n} users x ~5 tags imported with tagcast import in {:.1} s: {import_rate:.0} users/s",
        took.as_secs_f64()
    );

    // The first start after the import reads the index the import saved at its clean stop
    // (embedded); then the index is built from every row, as after a crash (and always on
    // PostgreSQL).
    let mut srv;
    let mut snapshot_ms = None;
    if let Backend::Embedded { data_dir } = &backend {
        let spawned = std::time::Instant::now();
        srv = ServerProcess::start(&config)?;
        wait_ready(srv.addr, Duration::from_secs(600)).await?;
        snapshot_ms = Some(spawned.elapsed().as_secs_f64() * 1000.0);
        srv.stop()?;
        let file = data_dir.join(crate::store::embedded::SNAPSHOT_FILE);
        std::fs::remove_file(&file).map_err(|e| format!("removing {}: {e}", file.display()))?;
    }
    let spawned = std::time::Instant::now();
    srv = ServerProcess::start(&config)?;
    wait_ready(srv.addr, Duration::from_secs(1800)).await?;
    let build_ms = spawned.elapsed().as_secs_f64() * 1000.0;
    let rss_built = srv.rss_mb().unwrap_or(f64::NAN);
    // Memory is measured on a start from the saved state (the clean stop writes it on both
    // backends): neither the rebuild's page cache nor its freed buffers are in it.
    srv.stop()?;
    let spawned = std::time::Instant::now();
    srv = ServerProcess::start(&config)?;
    wait_ready(srv.addr, Duration::from_secs(600)).await?;
    if snapshot_ms.is_none() {
        let ms = spawned.elapsed().as_secs_f64() * 1000.0;
        println!(
            "[{name}] audience      start to ready from the state saved at a clean stop: {ms:.0} ms"
        );
        f.set("pg_node_clean_start_ms", ms);
    }
    let index_mb = srv.rss_mb().unwrap_or(f64::NAN) - rss_empty;
    match snapshot_ms {
        Some(ms) => {
            println!(
                "[{name}] audience      start to ready: {ms:.0} ms from the saved index, {build_ms:.0} ms building it from the store \
                 (RSS {rss_built:.1} MiB after that); index memory (RSS growth) {index_mb:.1} MiB"
            );
            f.set("index_snapshot_load_ms", ms);
        }
        None => println!(
            "[{name}] audience      start to ready (index built from the store) {build_ms:.0} ms; index memory (RSS growth) {index_mb:.1} MiB"
        ),
    }
    let signer = Signer::new(srv.addr, account)?;
    let runs: u64 = if n >= 1_000_000 { 200 } else { 50 };
    let queries = data.queries()?;
    for q in &queries {
        let (count, p50, p99) =
            audience::http_count(srv.addr, &signer, account.app_id, q, runs).await?;
        let (engine, e50, e99) = audience::engine_count(data, q, runs as usize);
        if count != engine {
            return Err(format!(
                "{}: the server counted {count}, the engine alone {engine}",
                q.name
            ));
        }
        println!(
            "[{name}] audience      {} {}: {count} users; CountAudience p50 {p50:.3} ms p99 {p99:.3} ms; engine alone p50 {e50:.3} ms p99 {e99:.3} ms",
            q.name, q.what
        );
        f.set(&format!("count_{}_p50_ms", q.name), p50);
        f.set(&format!("count_{}_p99_ms", q.name), p99);
        if q.name == "q2" {
            f.set("engine_q2_p50_ms", e50);
            f.set("engine_q2_p99_ms", e99);
        }
    }
    let (half, share) = data.queries_half();
    let (ids, took) =
        audience::http_list_all(srv.addr, &signer, account.app_id, json!({"Tag": half})).await?;
    let ids_per_s = ids as f64 / took.as_secs_f64();
    println!(
        "[{name}] audience      ListAudience of {half} ({:.0} %), Limit 1000: {ids} ids in {:.2} s = {ids_per_s:.0} ids/s",
        share * 100.0,
        took.as_secs_f64()
    );
    srv.stop()?;
    if let Backend::Postgres { url } = &backend {
        let q2 = &queries[1];
        let tags = q2.body["Tags"].as_array().cloned().unwrap_or_default();
        let split = |v: &Value| {
            let s = v.as_str().unwrap_or_default().to_owned();
            let (k, v) = s.split_once(':').unwrap_or((&s, ""));
            (k.to_owned(), v.to_owned())
        };
        let (a, b) = (split(&tags[0]), split(&tags[1]));
        let expected = audience::engine_count(data, q2, 1).0;
        let (join_p99, gin_p99) = audience::postgres_q2(
            url,
            account.app_id,
            (&a.0, &a.1),
            (&b.0, &b.1),
            expected,
            runs as usize / 2,
        )
        .await?;
        println!(
            "[{name}] audience      PostgreSQL on the same data, q2: btree join p99 {join_p99:.1} ms, GIN @> on users.tags jsonb p99 {gin_p99:.1} ms"
        );
        f.set("pg_btree_q2_p99_ms", join_p99);
        f.set("pg_gin_q2_p99_ms", gin_p99);
        f.set("pg_best_q2_p99_ms", join_p99.min(gin_p99));
    }
    broadcast::phase(name, work, &backend, account, data, options, f).await?;
    // A crash after writes: the start loads the saved state and replays the change log
    // after it (or, before issue 18, read every row; on PostgreSQL, before its snapshots,
    // every node start did).
    {
        let srv = ServerProcess::start(&config)?;
        wait_ready(srv.addr, Duration::from_secs(600)).await?;
        let signer = Arc::new(Signer::new(srv.addr, account)?);
        let writes = 2_000;
        let r = run_load(
            srv.addr,
            options,
            Pace::Count { count: writes },
            update_generator(signer, account.app_id, n),
            true,
        )
        .await?;
        check("BatchUpdateUserTags before kill -9", &r)?;
        srv.kill9()?;
        let spawned = std::time::Instant::now();
        let srv = ServerProcess::start(&config)?;
        wait_ready(srv.addr, Duration::from_secs(1800)).await?;
        let ms = spawned.elapsed().as_secs_f64() * 1000.0;
        println!(
            "[{name}] audience      ready after kill -9 (after {writes} writes of 10 users x 2 tags since the last save): {ms:.0} ms \
             (building from the store instead: {build_ms:.0} ms)"
        );
        match &backend {
            Backend::Embedded { .. } => f.set("ready_after_kill9_ms", ms),
            Backend::Postgres { .. } => {
                f.set("pg_node_ready_ms", ms);
                f.set("pg_node_build_ms", build_ms);
            }
        }
        srv.stop()?;
    }
    f.set("audience_users", n as f64);
    f.set("import_users_per_s", import_rate);
    f.set("index_build_ms", build_ms);
    f.set("index_rss_mb", index_mb);
    // The index is the state now (users' tags and profiles beside the bitmaps): the same
    // growth, under the name the state issue asks for, with the engine's own estimate.
    f.set("state_rss_mb", index_mb);
    let (state_bytes, bitmap_bytes) = data.index.bytes();
    println!(
        "[{name}] audience      state + index RSS growth {index_mb:.1} MiB; held by the engine (estimate): users {:.1} MiB, bitmaps {:.1} MiB",
        state_bytes as f64 / (1 << 20) as f64,
        bitmap_bytes as f64 / (1 << 20) as f64
    );
    f.set("list_ids_per_s", ids_per_s);
    Ok(())
}

async fn data_size(backend: &Backend) -> Result<u64, String> {
    match backend {
        Backend::Embedded { data_dir } => Ok(server::dir_size(data_dir)),
        Backend::Postgres { url } => {
            let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
                .await
                .map_err(|e| format!("connecting to PostgreSQL: {e}"))?;
            tokio::spawn(conn);
            let row = client
                .query_one("SELECT pg_database_size(current_database())", &[])
                .await
                .map_err(|e| e.to_string())?;
            Ok(row.get::<_, i64>(0) as u64)
        }
    }
}

/// Runs the whole bench; prints as it goes and ends with the `BENCH` line.
pub async fn run(options: Options) -> Result<(), String> {
    let work = tempfile::Builder::new()
        .prefix("tagcast-bench-")
        .tempdir()
        .map_err(|e| format!("creating a temporary directory: {e}"))?;
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    println!(
        "tagcast bench: {cores} cores; temporary data under {}",
        work.path().display()
    );
    let mut all = Map::new();
    let mut series = Vec::new();
    let data = if options.audience_users > 0 {
        let (dir, n) = (work.path().to_owned(), options.audience_users);
        let started = std::time::Instant::now();
        let data = tokio::task::spawn_blocking(move || audience::generate(&dir, n, BENCH_APP))
            .await
            .map_err(|e| e.to_string())??;
        println!(
            "audience data: {n} users generated (seeded) in {:.1} s",
            started.elapsed().as_secs_f64()
        );
        Some(data)
    } else {
        None
    };
    for &kind in &options.backends {
        let result = match kind {
            BackendKind::Embedded => {
                let root = work.path().to_owned();
                let fresh = move |what: &str| -> Result<Backend, String> {
                    Ok(Backend::Embedded {
                        data_dir: root.join(format!("embedded-{what}-data")),
                    })
                };
                bench_backend(
                    kind,
                    &options,
                    work.path(),
                    &fresh,
                    &mut series,
                    data.as_ref(),
                )
                .await
            }
            BackendKind::Postgres => {
                match tokio::task::spawn_blocking(|| Postgres::start(true)).await {
                    Ok(Ok(pg)) => {
                        let pg = Arc::new(pg);
                        let pg2 = pg.clone();
                        let fresh = move |what: &str| -> Result<Backend, String> {
                            Ok(Backend::Postgres {
                                url: pg2.create_database(&format!("bench_{what}"))?,
                            })
                        };
                        println!(
                            "[postgres] temporary PostgreSQL on 127.0.0.1:{} (fsync=on)",
                            pg.port
                        );
                        let r = bench_backend(
                            kind,
                            &options,
                            work.path(),
                            &fresh,
                            &mut series,
                            data.as_ref(),
                        )
                        .await;
                        drop(fresh);
                        r
                    }
                    Ok(Err(e)) => Err(format!("cannot start a temporary PostgreSQL: {e}")),
                    Err(e) => Err(e.to_string()),
                }
            }
        };
        match result {
            Ok(f) => {
                all.insert(kind.name().into(), Value::Object(f.0));
            }
            Err(e) => {
                println!("[{}] FAILED: {e}", kind.name());
                all.insert(kind.name().into(), json!({"error": e}));
            }
        }
    }
    if let Some(path) = &options.chart {
        let title = format!(
            "tagcast BatchUpdateUserTags (10 users x 2 tags), {} connections, {cores} cores",
            options.connections
        );
        match chart::draw(path, &title, &series) {
            Ok(()) => println!("chart: {}", path.display()),
            Err(e) => println!("chart skipped: {e}"),
        }
    }
    // PostgreSQL's best q2 count is the baseline of both backends' engines.
    let pg_best = all
        .get("postgres")
        .and_then(|p| p.get("pg_best_q2_p99_ms"))
        .and_then(Value::as_f64);
    if let Some(pg) = pg_best {
        for (name, figures) in all.iter_mut() {
            if let Some(map) = figures.as_object_mut() {
                map.insert("pg_best_q2_p99_ms".into(), json!(pg));
                if let Some(ours) = map.get("count_q2_p99_ms").and_then(Value::as_f64) {
                    let ratio = round(pg / ours, 2);
                    map.insert("ratio_pg_q2".into(), json!(ratio));
                    println!(
                        "[{name}] audience      PostgreSQL's best q2 p99 / CountAudience q2 p99 = {ratio}"
                    );
                }
            }
        }
    }
    let failed = all.values().any(|v| v.get("error").is_some());
    println!("BENCH {}", Value::Object(all));
    if failed {
        return Err("some measurements failed (see above)".into());
    }
    Ok(())
}
