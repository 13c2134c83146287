//! The server under test: `tagcast serve` as a child process of the bench (the same
//! binary), so its memory is its own and it starts the way users start it.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::config::{AccountConfig, Config, KeyConfig, StoreKind};

/// The account the bench signs with (generated per run; never printed).
pub struct BenchAccount {
    pub access_key: String,
    pub secret_key: String,
    pub app_id: u32,
}

/// Where the server keeps its data.
pub enum Backend {
    Embedded { data_dir: PathBuf },
    Postgres { url: String },
}

/// Writes the server's configuration: limits out of the way, one account.
pub fn write_config(
    dir: &Path,
    backend: &Backend,
    account: &BenchAccount,
) -> Result<PathBuf, String> {
    write_config_with(dir, backend, account, |_| {})
}

/// [`write_config`], changed by `tweak` before it is written.
pub fn write_config_with(
    dir: &Path,
    backend: &Backend,
    account: &BenchAccount,
    tweak: impl FnOnce(&mut Config),
) -> Result<PathBuf, String> {
    let mut config = Config {
        listen: "127.0.0.1:0".into(),
        ..Config::default()
    };
    config.limits.qps = 1_000_000_000;
    // Reads have a limit of their own.
    for action in crate::api::Action::ALL.into_iter().filter(|a| a.is_read()) {
        config
            .limits
            .actions
            .insert(action.name().into(), 1_000_000_000);
    }
    config.accounts = vec![AccountConfig {
        name: "bench".into(),
        apps: vec![i64::from(account.app_id)],
        keys: vec![KeyConfig::inline(&account.access_key, &account.secret_key)],
    }];
    match backend {
        Backend::Embedded { data_dir } => config.data_dir = data_dir.clone(),
        Backend::Postgres { url } => {
            config.data_dir = dir.join("unused-data");
            config.store.kind = StoreKind::Postgres;
            config.store.url = Some(url.clone());
            config.store.pool_size = 64;
        }
    }
    tweak(&mut config);
    std::fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    let path = dir.join("tagcast-bench.toml");
    std::fs::write(&path, config.to_toml())
        .map_err(|e| format!("writing {}: {e}", path.display()))?;
    Ok(path)
}

/// Samples the size of a data directory's write-ahead log every 100 ms and keeps the
/// largest.
pub struct WalSampler {
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<u64>,
}

impl WalSampler {
    pub fn start(data_dir: &Path) -> Self {
        let wal = data_dir.join(crate::store::embedded::WAL_FILE);
        let (stop, mut stopped) = tokio::sync::oneshot::channel();
        let task = tokio::spawn(async move {
            let mut largest = 0;
            let mut tick = tokio::time::interval(Duration::from_millis(100));
            loop {
                tokio::select! {
                    _ = &mut stopped => return largest,
                    _ = tick.tick() => {
                        largest = largest.max(std::fs::metadata(&wal).map_or(0, |m| m.len()));
                    }
                }
            }
        });
        WalSampler { stop, task }
    }

    /// The largest size seen, bytes.
    pub async fn stop(self) -> u64 {
        let _ = self.stop.send(());
        self.task.await.unwrap_or(0)
    }
}

pub struct ServerProcess {
    child: Child,
    /// The server's log (stderr) at its default level, request lines included, as an
    /// operator runs it; removed after a clean stop.
    log: PathBuf,
    pub addr: SocketAddr,
    /// From spawning the process to its "listening" line (printed once it listens).
    pub start_to_listen: Duration,
}

impl ServerProcess {
    pub fn start(config: &Path) -> Result<Self, String> {
        let exe = std::env::current_exe().map_err(|e| format!("locating tagcast: {e}"))?;
        let log = config.with_extension("log");
        let log_file =
            std::fs::File::create(&log).map_err(|e| format!("creating {}: {e}", log.display()))?;
        let started = Instant::now();
        let mut child = Command::new(exe)
            .args(["serve", "--config"])
            .arg(config)
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log_file)
            .spawn()
            .map_err(|e| format!("starting tagcast serve: {e}"))?;
        let stdout = child.stdout.take().expect("stdout is piped");
        let mut lines = BufReader::new(stdout).lines();
        let first = match lines.next() {
            Some(Ok(line)) => line,
            _ => {
                let _ = child.kill();
                let status = child.wait().map_err(|e| e.to_string())?;
                return Err(format!(
                    "tagcast serve exited during start ({status}); its log: {}",
                    log_tail(&log)
                ));
            }
        };
        let start_to_listen = started.elapsed();
        // Keep draining stdout so the child never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        let addr = first
            .rsplit("http://")
            .next()
            .and_then(|a| a.parse().ok())
            .ok_or_else(|| format!("unexpected first line from tagcast serve: {first:?}"))?;
        Ok(ServerProcess {
            child,
            log,
            addr,
            start_to_listen,
        })
    }

    /// Resident memory of the server process, MiB (Linux: /proc/<pid>/status).
    pub fn rss_mb(&self) -> Option<f64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).ok()?;
        let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
        let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kb / 1024.0)
    }

    /// CPU time the server process has used so far, user and system, all threads
    /// (Linux: fields 14 and 15 of /proc/<pid>/stat, in clock ticks).
    pub fn cpu_time(&self) -> Result<Duration, String> {
        let path = format!("/proc/{}/stat", self.child.id());
        let stat = std::fs::read_to_string(&path).map_err(|e| format!("reading {path}: {e}"))?;
        // The command name (field 2) may hold spaces: count fields after its ')'.
        let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
        let fields: Vec<&str> = after.split_whitespace().collect();
        let ticks = |i: usize| -> Result<u64, String> {
            fields
                .get(i)
                .and_then(|f| f.parse().ok())
                .ok_or_else(|| format!("unexpected {path}: {stat:?}"))
        };
        // Fields 14 and 15 of the whole line are 12 and 13 after the name.
        let total = ticks(11)? + ticks(12)?;
        Ok(Duration::from_secs_f64(
            total as f64 / clock_ticks_per_second(),
        ))
    }

    /// SIGKILL, then wait: a crash, with no clean stop.
    pub fn kill9(mut self) -> Result<(), String> {
        self.child
            .kill()
            .map_err(|e| format!("killing tagcast serve: {e}"))?;
        self.child.wait().map_err(|e| e.to_string())?;
        Ok(())
    }

    /// SIGTERM (graceful: queued writes commit), then wait.
    pub fn stop(mut self) -> Result<(), String> {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let status = self.child.wait().map_err(|e| e.to_string())?;
        if !status.success() {
            return Err(format!(
                "tagcast serve exited with {status}; its log: {}",
                log_tail(&self.log)
            ));
        }
        let _ = std::fs::remove_file(&self.log);
        Ok(())
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The last lines of a server's log, for an error message.
fn log_tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    let tail = lines[lines.len().saturating_sub(20)..].join("\n");
    format!("{} (last lines:\n{tail})", log.display())
}

/// `getconf CLK_TCK`: the unit of /proc's CPU times (100 on every Linux we know of).
fn clock_ticks_per_second() -> f64 {
    static TICKS: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse().ok())
            .filter(|t: &f64| *t > 0.0)
            .unwrap_or(100.0)
    })
}

/// Bytes in the files under `dir`.
pub fn dir_size(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_size(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}
