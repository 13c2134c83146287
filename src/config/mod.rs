//! Configuration: a TOML file (`--config`), overridden by `TAGCAST_*` environment
//! variables and flags (the CLI applies those), then validated once at start.
//!
//! The types serialize back to TOML ([`Config::to_toml`]), so the tests and the bench
//! write the files they hand to `tagcast serve` from the same types the server reads.

mod secrets;
mod webhooks;

pub use secrets::{resolve_accounts, weak_secret_reason};
pub use webhooks::{DeliveryConfig, Webhook, WebhookConfig, redact_url, resolve_webhooks};

use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::api::Action;

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub listen: String,
    pub data_dir: PathBuf,
    /// Regions accepted in the credential scope; the first is the default in answers.
    pub regions: Vec<String>,
    pub log_format: LogFormat,
    pub api: ApiConfig,
    pub limits: Limits,
    pub tags: TagLimits,
    pub http: HttpLimits,
    pub store: StoreConfig,
    pub accounts: Vec<AccountConfig>,
    /// Where broadcasts are POSTed (API.md §7, webhook delivery).
    pub webhooks: Vec<WebhookConfig>,
    pub delivery: DeliveryConfig,
    /// The event log's retention (API.md §9).
    pub events: EventsConfig,
    /// The operator console at `/console/` (API.md §10).
    pub console: ConsoleConfig,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            listen: "127.0.0.1:8080".into(),
            data_dir: PathBuf::from("./tagcast-data"),
            regions: vec!["cn-north-1".into(), "ap-southeast-1".into()],
            log_format: LogFormat::Text,
            api: ApiConfig::default(),
            limits: Limits::default(),
            tags: TagLimits::default(),
            http: HttpLimits::default(),
            store: StoreConfig::default(),
            accounts: Vec::new(),
            webhooks: Vec::new(),
            delivery: DeliveryConfig::default(),
            events: EventsConfig::default(),
            console: ConsoleConfig::default(),
        }
    }
}

/// The operator console (API.md §10): on by default on every node.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct ConsoleConfig {
    pub enabled: bool,
    /// For working on the console: serve its files from this directory (the source tree's
    /// `src/console/assets`) at every request instead of the copies built into the binary.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dir: Option<PathBuf>,
}

impl Default for ConsoleConfig {
    fn default() -> Self {
        ConsoleConfig {
            enabled: true,
            dir: None,
        }
    }
}

/// How long the event log (each app's change log) keeps its events (API.md §9): both
/// bounds hold, trimmed in the background every `trim_interval_s`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct EventsConfig {
    pub retention_hours: u64,
    pub max_per_app: u64,
    pub trim_interval_s: u64,
}

impl Default for EventsConfig {
    fn default() -> Self {
        EventsConfig {
            retention_hours: 168,
            max_per_app: 10_000_000,
            trim_interval_s: 30,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

/// How request bodies are read (API.md §5).
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct ApiConfig {
    pub unknown_fields: UnknownFields,
}

/// What a body field that the Action does not know does.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum UnknownFields {
    /// `InvalidParam`, naming the field and the closest known one: a misspelt `Tags` must
    /// never widen a broadcast to everyone.
    #[default]
    Refuse,
    /// Skipped, for clients that send fields of their own (the official SDKs send none).
    Ignore,
}

#[derive(Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Requests per second per account for every Action without its own entry.
    pub qps: u32,
    /// Per-Action overrides. BatchGetUser is 100 unless listed here.
    pub actions: BTreeMap<String, u32>,
    /// A Redis shared by every node; absent: an in-process limiter.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub redis_url: Option<String>,
    /// What a request gets when Redis cannot decide.
    pub on_redis_error: OnLimiterError,
    /// Longest wait for Redis per decision.
    pub redis_timeout_ms: u64,
    /// Prefix of the limiter's Redis keys: deployments sharing one Redis use different ones.
    pub redis_key_prefix: String,
    /// PEM CA certificates that verify a `rediss://` Redis instead of the system's.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub redis_ca_file: Option<PathBuf>,
    /// UserBroadcasts per app per UTC day, held across every node (vendor: 20).
    pub broadcasts_per_day: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum OnLimiterError {
    /// Serve the request unlimited (availability first).
    Allow,
    /// Refuse it with 503 ServiceUnavailableTemp (limits first).
    Deny,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            qps: 50,
            actions: BTreeMap::new(),
            redis_url: None,
            on_redis_error: OnLimiterError::Allow,
            redis_timeout_ms: 250,
            redis_key_prefix: "tagcast".into(),
            redis_ca_file: None,
            broadcasts_per_day: 20,
        }
    }
}

impl std::fmt::Debug for Limits {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Limits")
            .field("qps", &self.qps)
            .field("actions", &self.actions)
            .field("redis_url", &self.redis_url.as_ref().map(|_| "<set>"))
            .field("on_redis_error", &self.on_redis_error)
            .field("redis_ca_file", &self.redis_ca_file)
            .field("broadcasts_per_day", &self.broadcasts_per_day)
            .finish()
    }
}

impl Limits {
    pub fn qps_for(&self, action: Action) -> u32 {
        self.actions
            .get(action.name())
            .copied()
            .unwrap_or_else(|| action.default_qps(self.qps))
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct TagLimits {
    pub max_key_bytes: usize,
    pub max_value_bytes: usize,
    pub max_per_user: usize,
    /// Most `Tags` strings in the vendor form of an audience filter (API.md §6).
    pub max_filter_tags: usize,
}

impl Default for TagLimits {
    fn default() -> Self {
        TagLimits {
            max_key_bytes: 128,
            max_value_bytes: 1024,
            max_per_user: 100,
            max_filter_tags: 10,
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpLimits {
    pub max_body_bytes: usize,
    pub header_timeout_secs: u64,
    pub body_timeout_secs: u64,
    /// How long shutdown waits for in-flight requests before closing their connections.
    pub shutdown_grace_secs: u64,
    /// Connections open at once; one more is answered 503 and closed.
    pub max_connections: usize,
    /// Most bytes of a request's line and headers (more: 431). Also what each connection
    /// buffers while it reads, so with `max_connections` it bounds that memory too.
    pub max_header_bytes: usize,
    /// MiB of request bodies held at once, all connections together; a body that does
    /// not fit is answered 503 at once. With `max_connections`, what bounds the memory
    /// slow clients can make the server hold.
    pub max_body_memory_mb: usize,
}

impl Default for HttpLimits {
    fn default() -> Self {
        HttpLimits {
            max_body_bytes: 1 << 20,
            header_timeout_secs: 10,
            body_timeout_secs: 30,
            shutdown_grace_secs: 30,
            max_connections: 4096,
            max_header_bytes: 32 << 10,
            max_body_memory_mb: 128,
        }
    }
}

impl HttpLimits {
    pub fn header_timeout(&self) -> Duration {
        Duration::from_secs(self.header_timeout_secs)
    }
    pub fn body_timeout(&self) -> Duration {
        Duration::from_secs(self.body_timeout_secs)
    }
}

/// Where the data lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum StoreKind {
    /// SQLite in `data_dir`, one server per directory.
    Embedded,
    /// PostgreSQL at `store.url`, shared by any number of nodes.
    Postgres,
}

#[derive(Clone, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct StoreConfig {
    pub kind: StoreKind,
    /// Most write requests folded into one durable commit (both stores).
    pub max_batch: usize,
    pub read_connections: usize,
    /// Embedded: the writer's SQLite page cache, MiB.
    pub cache_mb: usize,
    /// Embedded: once the write-ahead log holds this many MiB, the writer waits for a
    /// checkpoint and starts it over, so it cannot grow without bound under sustained
    /// writes.
    pub wal_limit_mb: u64,
    /// The state is saved to `data_dir/audience.snapshot` this often (seconds) when
    /// anything changed, so a start (after a crash too) loads it and replays only the change
    /// log after it; 0 saves only at a clean stop. Both stores: a PostgreSQL node saves its
    /// own copy.
    pub snapshot_interval_s: u64,
    /// ... or as soon as this many changes were applied since the last save.
    pub snapshot_changes: u64,
    /// PostgreSQL URL (kind = "postgres"); may hold a password, so never printed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    pub pool_size: usize,
    /// PostgreSQL: transactions committing batches of write requests at once (each holds
    /// a pooled connection while it commits).
    pub committers: usize,
    /// Longest a request waits for PostgreSQL (a connection, or one transaction).
    pub timeout_ms: u64,
    /// PostgreSQL: PEM CA certificates for sslmode=verify-ca/verify-full (and require,
    /// as in libpq); the URL's `sslrootcert` wins over it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            kind: StoreKind::Embedded,
            max_batch: 512,
            read_connections: 4,
            cache_mb: 64,
            wal_limit_mb: 64,
            snapshot_interval_s: 300,
            snapshot_changes: 1_000_000,
            url: None,
            pool_size: 16,
            committers: 4,
            timeout_ms: 5000,
            ca_file: None,
        }
    }
}

impl std::fmt::Debug for StoreConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreConfig")
            .field("kind", &self.kind)
            .field("max_batch", &self.max_batch)
            .field("read_connections", &self.read_connections)
            .field("cache_mb", &self.cache_mb)
            .field("wal_limit_mb", &self.wal_limit_mb)
            .field("snapshot_interval_s", &self.snapshot_interval_s)
            .field("snapshot_changes", &self.snapshot_changes)
            .field("url", &self.url.as_ref().map(|_| "<set>"))
            .field("pool_size", &self.pool_size)
            .field("committers", &self.committers)
            .field("ca_file", &self.ca_file)
            .finish()
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AccountConfig {
    pub name: String,
    pub apps: Vec<i64>,
    #[serde(default)]
    pub keys: Vec<KeyConfig>,
}

/// An access key and where its secret comes from: exactly one of `secret_key` (in the
/// file), `secret_key_env` (an environment variable's name) or `secret_key_file` (a file
/// holding only the secret). [`resolve_accounts`] reads the secret at start.
#[derive(Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct KeyConfig {
    pub access_key: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_key_env: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_key_file: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub disabled: bool,
    /// What the key may call (API.md §11): every Action, or only the reads.
    #[serde(default, skip_serializing_if = "KeyRole::is_admin")]
    pub role: KeyRole,
}

/// A key's role (API.md §11).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum KeyRole {
    /// Every Action.
    #[default]
    Admin,
    /// The read Actions only ([`Action::is_read`]).
    Read,
}

impl KeyRole {
    pub fn is_admin(&self) -> bool {
        *self == KeyRole::Admin
    }

    pub fn name(self) -> &'static str {
        match self {
            KeyRole::Admin => "admin",
            KeyRole::Read => "read",
        }
    }
}

impl KeyConfig {
    /// A key whose secret is written in the configuration itself.
    pub fn inline(access_key: impl Into<String>, secret_key: impl Into<String>) -> Self {
        KeyConfig {
            access_key: access_key.into(),
            secret_key: Some(secret_key.into()),
            ..KeyConfig::default()
        }
    }
}

impl std::fmt::Debug for KeyConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyConfig")
            .field("access_key", &self.access_key)
            .field(
                "secret_key",
                &self.secret_key.as_ref().map(|_| "<redacted>"),
            )
            .field("secret_key_env", &self.secret_key_env)
            .field("secret_key_file", &self.secret_key_file)
            .field("disabled", &self.disabled)
            .field("role", &self.role)
            .finish()
    }
}

impl Config {
    pub fn from_file(path: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("reading {}: {e}", path.display()))?;
        toml::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// The configuration as a TOML file `tagcast serve --config` reads back unchanged.
    pub fn to_toml(&self) -> String {
        toml::to_string(self).expect("the configuration types serialize to TOML")
    }

    /// The address to listen on: `IP:port`, or `host:port` with the host resolved
    /// (`localhost:8080`), its first address.
    pub fn listen_addr(&self) -> Result<SocketAddr, String> {
        if let Ok(addr) = self.listen.parse() {
            return Ok(addr);
        }
        use std::net::ToSocketAddrs;
        let bad = |why: String| {
            format!(
                "listen = {:?} is not an address like 127.0.0.1:8080 or localhost:8080: {why}",
                self.listen
            )
        };
        let mut addrs = self
            .listen
            .to_socket_addrs()
            .map_err(|e| bad(e.to_string()))?;
        addrs
            .next()
            .ok_or_else(|| bad("the host has no address".into()))
    }

    pub fn default_region(&self) -> &str {
        &self.regions[0]
    }

    /// Checks everything that can be checked before opening anything.
    pub fn validate(&self) -> Result<(), String> {
        self.listen_addr()?;
        if self.regions.is_empty() || self.regions.iter().any(|r| r.trim().is_empty()) {
            return Err("regions must list at least one non-empty region".into());
        }
        if self.limits.qps == 0 {
            return Err("limits.qps must be at least 1".into());
        }
        for (name, qps) in &self.limits.actions {
            if Action::from_name(name).is_none() {
                return Err(format!(
                    "limits.actions.{name}: unknown Action (known: {})",
                    Action::names().join(", ")
                ));
            }
            if *qps == 0 {
                return Err(format!("limits.actions.{name} must be at least 1"));
            }
        }
        let e = &self.events;
        if e.retention_hours == 0 || e.max_per_app == 0 || e.trim_interval_s == 0 {
            return Err("events.retention_hours, events.max_per_app and events.trim_interval_s must be at least 1".into());
        }
        if e.retention_hours > 24 * 3650 {
            return Err(format!(
                "events.retention_hours is {}; at most 87600 (ten years)",
                e.retention_hours
            ));
        }
        if self.store.max_batch > 4096 {
            return Err(format!(
                "store.max_batch is {}; at most 4096 (an event log entry holds one batch)",
                self.store.max_batch
            ));
        }
        let t = &self.tags;
        if t.max_key_bytes == 0 || t.max_per_user == 0 {
            return Err("tags.max_key_bytes and tags.max_per_user must be at least 1".into());
        }
        let h = &self.http;
        if h.max_body_bytes == 0
            || h.header_timeout_secs == 0
            || h.body_timeout_secs == 0
            || h.max_connections == 0
        {
            return Err("http.max_body_bytes, http.header_timeout_secs, http.body_timeout_secs and http.max_connections must be at least 1".into());
        }
        if h.max_header_bytes < 8192 {
            return Err(format!(
                "http.max_header_bytes is {}; it must be at least 8192",
                h.max_header_bytes
            ));
        }
        if h.max_body_memory_mb << 20 < h.max_body_bytes {
            return Err(format!(
                "http.max_body_memory_mb ({} MiB) must hold at least one body of http.max_body_bytes ({} bytes)",
                h.max_body_memory_mb, h.max_body_bytes
            ));
        }
        if self.store.kind == StoreKind::Postgres && self.store.url.is_none() {
            return Err("store.kind = \"postgres\" needs store.url (or --store-url)".into());
        }
        let s = &self.store;
        if s.max_batch == 0
            || s.read_connections == 0
            || s.pool_size == 0
            || s.committers == 0
            || s.timeout_ms == 0
            || s.wal_limit_mb == 0
        {
            return Err(
                "store.max_batch, store.read_connections, store.pool_size, store.committers, \
                 store.timeout_ms and store.wal_limit_mb must be at least 1"
                    .into(),
            );
        }
        if self.limits.redis_timeout_ms == 0 {
            return Err("limits.redis_timeout_ms must be at least 1".into());
        }
        if let Some(path) = &self.store.ca_file {
            crate::tls::read_ca_file("store.ca_file", path)?;
        }
        if let Some(path) = &self.limits.redis_ca_file {
            // A CA without TLS would leave the operator believing the link is verified.
            let tls = self
                .limits
                .redis_url
                .as_deref()
                .is_some_and(|u| u.starts_with("rediss://") || u.starts_with("valkeys://"));
            if !tls {
                return Err(
                    "limits.redis_ca_file is set, but limits.redis_url is not a rediss:// URL"
                        .into(),
                );
            }
            crate::tls::read_ca_file("limits.redis_ca_file", path)?;
        }
        if self.limits.broadcasts_per_day == 0 {
            return Err("limits.broadcasts_per_day must be at least 1".into());
        }
        self.delivery.validate()?;
        for w in &self.webhooks {
            w.validate()?;
        }
        validate_accounts(&self.accounts)
    }
}

pub fn validate_accounts(accounts: &[AccountConfig]) -> Result<(), String> {
    let mut names = HashSet::new();
    let mut apps = HashSet::new();
    let mut keys = HashSet::new();
    for a in accounts {
        if a.name.trim().is_empty() || !names.insert(a.name.as_str()) {
            return Err(format!(
                "accounts: name {:?} is empty or used twice",
                a.name
            ));
        }
        for &app in &a.apps {
            if !(1..=i64::from(i32::MAX)).contains(&app) {
                return Err(format!(
                    "accounts.{}: AppId {app} is outside 1..=2147483647",
                    a.name
                ));
            }
            if !apps.insert(app) {
                return Err(format!(
                    "accounts.{}: AppId {app} belongs to more than one account",
                    a.name
                ));
            }
        }
        for k in &a.keys {
            secrets::check_source(&a.name, k)?;
            if !keys.insert(k.access_key.as_str()) {
                return Err(format!(
                    "accounts.{}: access key {} is configured twice",
                    a.name, k.access_key
                ));
            }
        }
    }
    Ok(())
}
