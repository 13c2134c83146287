//! Test harness: a real server on 127.0.0.1 port 0 (in-process or as a child process),
//! a real signer, and helpers for the calls every test makes.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};

use serde_json::{Value, json};
use tagcast::call::{Answer, Client};
use tagcast::config::{AccountConfig, Config, KeyConfig, StoreKind};
use tagcast::gateway::AppState;
use tagcast::signing::{Credentials, SecretKey};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub const APP: i64 = 666675;
pub const APP2: i64 = 1001;
pub const OTHER_APP: i64 = 2002;
pub const AK: &str = "AKLTacme0001";
pub const SK: &str = "acme-secret-0001";
pub const AK_DISABLED: &str = "AKLTacmeDisabled";
pub const AK_OTHER: &str = "AKLTother0001";
pub const SK_OTHER: &str = "other-secret-0001";

pub fn test_accounts() -> Vec<AccountConfig> {
    vec![
        AccountConfig {
            name: "acme".into(),
            apps: vec![APP, APP2],
            keys: vec![
                KeyConfig::inline(AK, SK),
                KeyConfig {
                    disabled: true,
                    ..KeyConfig::inline(AK_DISABLED, "disabled-secret-0001")
                },
            ],
        },
        AccountConfig {
            name: "other".into(),
            apps: vec![OTHER_APP],
            keys: vec![KeyConfig::inline(AK_OTHER, SK_OTHER)],
        },
    ]
}

/// Loopback port 0, the test accounts, limits out of the way, the embedded store.
pub fn base_config(data_dir: &Path) -> Config {
    let mut c = Config {
        listen: "127.0.0.1:0".into(),
        data_dir: data_dir.to_owned(),
        ..Config::default()
    };
    c.accounts = test_accounts();
    c.limits.qps = 100_000;
    // Reads default to the vendor's 100 per second whatever `qps` says; a test paging
    // through audiences on a fast machine goes past that (a CI run got a 429).
    for action in tagcast::api::Action::ALL {
        if action.is_read() {
            c.limits.actions.insert(action.name().into(), 100_000);
        }
    }
    c
}

/// [`base_config`] on the backend this run of the suite tests.
pub fn test_config(data_dir: &Path) -> Config {
    let mut c = base_config(data_dir);
    if crate::infra::postgres_backend() {
        // The scale-out configuration: PostgreSQL for data, Redis for the limiter. One
        // database per data directory, so a restart on the same directory finds its data.
        std::fs::create_dir_all(data_dir).unwrap();
        let marker = data_dir.join(".test-postgres-url");
        let url = std::fs::read_to_string(&marker).unwrap_or_else(|_| {
            let url = crate::infra::fresh_database(crate::infra::shared_postgres());
            std::fs::write(&marker, &url).unwrap();
            url
        });
        c.store.kind = StoreKind::Postgres;
        c.store.url = Some(url.clone());
        c.limits.redis_url = Some(crate::infra::shared_redis().url());
        // Tests share the Redis; each server (and its restarts) gets its own key space.
        c.limits.redis_key_prefix = url.rsplit('/').next().unwrap().to_owned();
    }
    c
}

pub fn creds(ak: &str, sk: &str) -> Credentials {
    Credentials {
        access_key: ak.into(),
        secret_key: SecretKey::new(sk),
        region: "cn-north-1".into(),
    }
}

/// `server::prepare`, retried for a few seconds while the data directory's lock is held
/// by this very process. A test that stops a server and starts another on the same
/// directory races the other tests' child processes: a `fork` in another thread copies
/// every open descriptor, the lock file's too, and the kernel keeps an `flock` while any
/// copy is open, until that child's `exec` closes it. A lock that stays held (a store
/// that never released it) still fails after the wait.
pub async fn prepare_in_process(config: &Config) -> tagcast::server::Prepared {
    let ours = format!("(pid {})", std::process::id());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        match tagcast::server::prepare(config).await {
            Ok(prepared) => return prepared,
            Err(e) if e.contains(&ours) && std::time::Instant::now() < deadline => {
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
            Err(e) => panic!("server starts: {e:?}"),
        }
    }
}

/// An in-process server on a port of its own.
pub struct TestServer {
    pub addr: SocketAddr,
    pub config: Config,
    pub state: Arc<AppState>,
    _tmp: Option<tempfile::TempDir>,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl TestServer {
    pub async fn start() -> Self {
        Self::with(|_| {}).await
    }

    pub async fn with(tweak: impl FnOnce(&mut Config)) -> Self {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().to_owned();
        let mut s = Self::start_in(&dir, tweak).await;
        s._tmp = Some(tmp);
        s
    }

    /// Starts on an existing data directory (the caller keeps it alive).
    pub async fn start_in(dir: &Path, tweak: impl FnOnce(&mut Config)) -> Self {
        let mut config = test_config(dir);
        tweak(&mut config);
        let prepared = prepare_in_process(&config).await;
        // Serving starts while the audience index is built; tests start from a built one.
        prepared
            .state
            .store
            .wait_built(std::time::Duration::from_secs(60))
            .await;
        let (tx, rx) = oneshot::channel();
        let state = prepared.state.clone();
        let task = tokio::spawn(tagcast::server::serve(
            prepared.listener,
            prepared.state,
            async {
                let _ = rx.await;
            },
        ));
        TestServer {
            addr: prepared.addr,
            config,
            state,
            _tmp: None,
            shutdown: Some(tx),
            task: Some(task),
        }
    }

    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn client(&self) -> Client {
        Client::new(&self.endpoint(), creds(AK, SK))
    }

    /// The status of a plain `GET path` (`/healthz`, `/readyz`).
    pub async fn status_of(&self, path: &str) -> u16 {
        http_get(format!("{}{path}", self.endpoint()))
            .await
            .unwrap()
            .status()
            .as_u16()
    }

    /// The Prometheus text of `GET /metrics`.
    pub async fn metrics(&self) -> String {
        metrics_at(&self.endpoint()).await
    }

    pub fn client_with(&self, ak: &str, sk: &str) -> Client {
        Client::new(&self.endpoint(), creds(ak, sk))
    }

    /// Graceful stop; returns when the store is closed.
    pub async fn stop(mut self) {
        self.shutdown.take().unwrap().send(()).unwrap();
        self.task.take().unwrap().await.unwrap();
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }
}

/// A `tagcast serve` child process, for tests that kill it or read its log.
pub struct ChildServer {
    pub child: Child,
    pub endpoint: String,
    /// Its stderr (the log), line by line, when started with [`ChildServer::spawn_logged`].
    pub log: Arc<Mutex<Vec<String>>>,
    /// Its stderr, open and never read, when started with [`ChildServer::spawn_stalled_log`].
    _stalled_log: Option<std::process::ChildStderr>,
}

impl ChildServer {
    /// Starts the real binary with `config` written to a file in `dir`.
    pub fn spawn_with(dir: &Path, config: &Config) -> Self {
        Self::spawn(dir, config, "error", LogMode::Inherit)
    }

    /// As [`ChildServer::spawn_with`], keeping every log line at `RUST_LOG=filter`.
    pub fn spawn_logged(dir: &Path, config: &Config, filter: &str) -> Self {
        Self::spawn(dir, config, filter, LogMode::Keep)
    }

    /// As [`ChildServer::spawn_with`] at `RUST_LOG=info`, with a stderr that nobody reads:
    /// once the pipe is full, every write to it would block.
    pub fn spawn_stalled_log(dir: &Path, config: &Config) -> Self {
        Self::spawn(dir, config, "info", LogMode::Stall)
    }

    fn spawn(dir: &Path, config: &Config, filter: &str, mode: LogMode) -> Self {
        let config_path = dir.join("tagcast.toml");
        std::fs::write(&config_path, config.to_toml()).unwrap();
        let mut child = tagcast_command()
            .args(["serve", "--config"])
            .arg(&config_path)
            .env("RUST_LOG", filter)
            .stdout(Stdio::piped())
            .stderr(match mode {
                LogMode::Inherit => Stdio::inherit(),
                LogMode::Keep | LogMode::Stall => Stdio::piped(),
            })
            .spawn()
            .expect("tagcast binary starts");
        let log: Arc<Mutex<Vec<String>>> = Arc::default();
        let stalled_log = match mode {
            LogMode::Stall => child.stderr.take(),
            _ => None,
        };
        if let Some(stderr) = child.stderr.take() {
            let log = log.clone();
            std::thread::spawn(move || {
                for line in std::io::BufRead::lines(std::io::BufReader::new(stderr)) {
                    let Ok(line) = line else { break };
                    log.lock().unwrap().push(line);
                }
            });
        }
        let stdout = child.stdout.take().unwrap();
        let mut lines = std::io::BufRead::lines(std::io::BufReader::new(stdout));
        let Some(Ok(first)) = lines.next() else {
            let status = child.wait().unwrap();
            panic!(
                "tagcast serve exited during start ({status}); log: {:?}",
                log.lock().unwrap()
            );
        };
        let endpoint = first.rsplit(' ').next().unwrap().to_owned();
        assert!(
            endpoint.starts_with("http://127.0.0.1:"),
            "unexpected first line {first:?}"
        );
        // Keep draining stdout so the child never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        ChildServer {
            child,
            endpoint,
            log,
            _stalled_log: stalled_log,
        }
    }

    /// The log lines that contain `needle`, once there is one (the log is read on a
    /// thread of its own, so a line can arrive after the answer); empty after 10 s.
    pub async fn wait_for_log(&self, needle: &str) -> Vec<String> {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let lines = self.log_lines_with(needle);
            if !lines.is_empty() || std::time::Instant::now() > deadline {
                return lines;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }

    /// The log lines so far that contain `needle`.
    pub fn log_lines_with(&self, needle: &str) -> Vec<String> {
        self.log
            .lock()
            .unwrap()
            .iter()
            .filter(|l| l.contains(needle))
            .cloned()
            .collect()
    }

    /// The Prometheus text of `GET /metrics`.
    pub async fn metrics(&self) -> String {
        metrics_at(&self.endpoint).await
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.endpoint.trim_start_matches("http://").parse().unwrap()
    }

    /// The status of a plain `GET path`.
    pub async fn status_of(&self, path: &str) -> u16 {
        http_get(format!("{}{path}", self.endpoint))
            .await
            .unwrap()
            .status()
            .as_u16()
    }

    pub fn client(&self) -> Client {
        Client::new(&self.endpoint, creds(AK, SK))
    }

    /// A client of the second account ("other").
    pub fn client_with_other(&self) -> Client {
        Client::new(&self.endpoint, creds(AK_OTHER, SK_OTHER))
    }

    /// SIGKILL: no shutdown code runs.
    pub fn kill9(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    /// SIGTERM, then wait for exit; returns the exit status.
    pub fn terminate(mut self) -> std::process::ExitStatus {
        let pid = self.child.id().to_string();
        Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        self.child.wait().unwrap()
    }
}

/// What becomes of a [`ChildServer`]'s stderr.
enum LogMode {
    Inherit,
    Keep,
    Stall,
}

impl Drop for ChildServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub async fn call(client: &Client, action: &str, body: Value) -> Answer {
    client
        .call(action, body.to_string().as_bytes())
        .await
        .expect("request answered")
}

/// Asserts an error answer with this HTTP status and Code, and the envelope around it.
pub fn assert_error(answer: &Answer, status: u16, code: &str) -> Value {
    let v = answer.json();
    assert_eq!(answer.status, status, "status for {v}");
    let e = &v["ResponseMetadata"]["Error"];
    assert_eq!(e["Code"], code, "Code in {v}");
    assert!(e["CodeN"].as_u64().unwrap() > 0, "CodeN in {v}");
    assert!(!e["Message"].as_str().unwrap().is_empty(), "Message in {v}");
    assert!(v.get("Result").is_none(), "no Result on failure: {v}");
    assert!(
        !v["ResponseMetadata"]["RequestId"]
            .as_str()
            .unwrap()
            .is_empty()
    );
    v
}

/// Asserts success and returns `Result`.
pub fn ok(answer: &Answer) -> Value {
    let v = answer.json();
    assert_eq!(answer.status, 200, "{v}");
    assert!(v["ResponseMetadata"].get("Error").is_none(), "{v}");
    v["Result"].clone()
}

pub fn failed_infos(answer: &Answer) -> Vec<Value> {
    ok(answer)["FailedInfos"].as_array().unwrap().clone()
}

pub async fn register(client: &Client, app: i64, ids: &[i64]) {
    for chunk in ids.chunks(20) {
        let users: Vec<Value> = chunk.iter().map(|id| json!({"UserId": id})).collect();
        let a = call(
            client,
            "RegisterUsers",
            json!({"AppId": app, "Users": users}),
        )
        .await;
        assert_eq!(failed_infos(&a), Vec::<Value>::new());
    }
}

/// BatchGetUser of these users of APP, inbox 0.
pub async fn get_users(client: &Client, ids: &[i64]) -> Answer {
    call(
        client,
        "BatchGetUser",
        json!({"AppId": APP, "UserIds": ids}),
    )
    .await
}

/// The `"k:v"` tags of one user in one inbox, or `None` when not registered.
pub async fn tags_of(client: &Client, app: i64, inbox: i64, user: i64) -> Option<Vec<String>> {
    let a = call(
        client,
        "BatchGetUser",
        json!({"AppId": app, "UserIds": [user], "InboxType": inbox}),
    )
    .await;
    let r = ok(&a);
    let users = r["Users"].as_array().unwrap();
    users.first().map(|u| {
        u["Tags"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t.as_str().unwrap().to_owned())
            .collect()
    })
}

/// Headers of a request signed at `now`, to be sent as the test chooses.
pub fn signed_headers(
    c: &Credentials,
    method: &str,
    host: &str,
    query: &str,
    body: &[u8],
    now: time::OffsetDateTime,
) -> http::HeaderMap {
    let mut h = http::HeaderMap::new();
    h.insert("host", host.parse().unwrap());
    h.insert("content-type", "application/json".parse().unwrap());
    tagcast::signing::sign(method, "/", query, &mut h, body, c, now);
    h
}

/// Sends exactly these headers and body (reqwest adds nothing that is signed).
pub async fn send_raw(
    endpoint: &str,
    method: &str,
    query: &str,
    headers: http::HeaderMap,
    body: Vec<u8>,
) -> Answer {
    let r = http_client()
        .request(
            reqwest::Method::from_bytes(method.as_bytes()).unwrap(),
            format!("{endpoint}/?{query}"),
        )
        .headers(headers)
        .body(body)
        .send()
        .await
        .expect("answered");
    let status = r.status().as_u16();
    let headers = r.headers().clone();
    Answer {
        status,
        headers,
        body: r.bytes().await.unwrap().to_vec(),
    }
}

/// Writes `head` and then `body` on a raw TCP connection (ignoring a server that stops
/// reading), and returns the status and the parsed JSON body of the answer.
pub async fn raw_tcp(
    addr: SocketAddr,
    head: String,
    body: impl Iterator<Item = Vec<u8>> + Send + 'static,
) -> (u16, Value) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut rd, mut wr) = stream.into_split();
    let writer = tokio::spawn(async move {
        if wr.write_all(head.as_bytes()).await.is_err() {
            return;
        }
        for chunk in body {
            if wr.write_all(&chunk).await.is_err() {
                return;
            }
        }
        // Keep the write side open (dropping it would send FIN) until the answer is read.
        std::future::pending::<()>().await;
    });
    let mut buf = Vec::new();
    let read = tokio::time::timeout(std::time::Duration::from_secs(60), async {
        let mut tmp = [0u8; 8192];
        loop {
            match rd.read(&mut tmp).await {
                Ok(0) | Err(_) => break,
                Ok(n) => buf.extend_from_slice(&tmp[..n]),
            }
            if let Some(v) = parse_http_answer(&buf) {
                return Some(v);
            }
        }
        parse_http_answer(&buf)
    })
    .await
    .expect("the server answers within a minute");
    writer.abort();
    read.unwrap_or_else(|| panic!("no complete answer in {:?}", String::from_utf8_lossy(&buf)))
}

fn parse_http_answer(buf: &[u8]) -> Option<(u16, Value)> {
    let text = std::str::from_utf8(buf).ok()?;
    let (head, body) = text.split_once("\r\n\r\n")?;
    let status = head.split(' ').nth(1)?.parse().ok()?;
    let len: usize = head.lines().find_map(|l| {
        l.to_ascii_lowercase()
            .strip_prefix("content-length:")
            .map(|v| v.trim().parse().unwrap())
    })?;
    (body.len() >= len).then(|| {
        (
            status,
            serde_json::from_str(&body[..len]).unwrap_or(Value::Null),
        )
    })
}

/// A child process that is killed when dropped (a failing test must not leave a server
/// running).
pub struct KillOnDrop(pub Option<Child>);

impl KillOnDrop {
    pub fn new(child: Child) -> Self {
        KillOnDrop(Some(child))
    }

    /// The child, to wait on; no longer killed on drop.
    pub fn take(mut self) -> Child {
        self.0.take().unwrap()
    }

    pub fn id(&self) -> u32 {
        self.0.as_ref().unwrap().id()
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// The banner `tagcast serve` prints on stdout, read up to its last line (or the end).
pub fn read_banner(lines: &mut impl Iterator<Item = std::io::Result<String>>) -> Vec<String> {
    let mut banner = Vec::new();
    for line in lines.by_ref() {
        let Ok(line) = line else { break };
        let last = line.starts_with("  (call reads") || line.starts_with("  accounts:");
        banner.push(line);
        if last {
            break;
        }
    }
    banner
}

/// The `tagcast` binary under test, with no key taken from the caller's environment.
pub fn tagcast_command() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_tagcast"));
    for var in [
        "TAGCAST_ACCESS_KEY",
        "TAGCAST_SECRET_KEY",
        "TAGCAST_DATA_DIR",
        "TAGCAST_CONFIG",
        "TAGCAST_STORE_URL",
        "TAGCAST_ENDPOINT",
        "TAGCAST_LISTEN",
    ] {
        c.env_remove(var);
    }
    c
}

/// Runs `tagcast args...` to completion off the async runtime; (exit code, stdout, stderr).
pub async fn run_tagcast(args: &[&str], cwd: &Path) -> (i32, String, String) {
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    let cwd = cwd.to_owned();
    let out = tokio::task::spawn_blocking(move || {
        tagcast_command()
            .args(&args)
            .current_dir(cwd)
            .output()
            .expect("tagcast runs")
    })
    .await
    .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Runs SQL directly on the database behind `config`, bypassing the server.
pub fn run_sql(config: &Config, sql: &str) {
    if let Some(url) = config.store.url.clone() {
        crate::infra::execute(&url, sql);
    } else {
        // WAL lets a second writer in beside the server's.
        let conn =
            rusqlite::Connection::open(config.data_dir.join(tagcast::store::embedded::DB_FILE))
                .unwrap();
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .unwrap();
        conn.execute_batch(sql).unwrap();
    }
}

/// A plain reqwest client, on the process's crypto provider (see src/tls.rs).
pub fn http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .tls_backend_preconfigured(tagcast::tls::http_client_tls("http:"))
        .build()
        .unwrap()
}

/// `GET url` with `http_client()`.
pub async fn http_get(url: impl reqwest::IntoUrl) -> reqwest::Result<reqwest::Response> {
    http_client().get(url).send().await
}

/// The Prometheus text of `GET /metrics` of the server at `endpoint`.
pub async fn metrics_at(endpoint: &str) -> String {
    http_get(format!("{endpoint}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap()
}
