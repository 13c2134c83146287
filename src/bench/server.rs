//! The server under test: `tagcast serve` as a child process of the bench (the same
//! binary), so its memory is its own and it starts the way users start it.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

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
    let store = match backend {
        Backend::Embedded { .. } => "kind = \"embedded\"\n".to_owned(),
        Backend::Postgres { url } => {
            format!("kind = \"postgres\"\nurl = {url:?}\npool_size = 64\n")
        }
    };
    let data_dir = match backend {
        Backend::Embedded { data_dir } => data_dir.clone(),
        Backend::Postgres { .. } => dir.join("unused-data"),
    };
    let text = format!(
        "listen = \"127.0.0.1:0\"\ndata_dir = {:?}\n\
         [limits]\nqps = 1000000000\n\
         [store]\n{store}\
         [[accounts]]\nname = \"bench\"\napps = [{}]\n\
         [[accounts.keys]]\naccess_key = {:?}\nsecret_key = {:?}\n",
        data_dir.display().to_string(),
        account.app_id,
        account.access_key,
        account.secret_key,
    );
    std::fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    let path = dir.join("tagcast-bench.toml");
    std::fs::write(&path, text).map_err(|e| format!("writing {}: {e}", path.display()))?;
    Ok(path)
}

pub struct ServerProcess {
    child: Child,
    pub addr: SocketAddr,
    /// From spawning the process to its "listening" line (printed once it listens).
    pub start_to_listen: Duration,
}

impl ServerProcess {
    pub fn start(config: &Path) -> Result<Self, String> {
        let exe = std::env::current_exe().map_err(|e| format!("locating tagcast: {e}"))?;
        let started = Instant::now();
        let mut child = Command::new(exe)
            .args(["serve", "--config"])
            .arg(config)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| format!("starting tagcast serve: {e}"))?;
        let stdout = child.stdout.take().expect("stdout is piped");
        let mut lines = BufReader::new(stdout).lines();
        let first = match lines.next() {
            Some(Ok(line)) => line,
            _ => {
                let _ = child.kill();
                let status = child.wait().map_err(|e| e.to_string())?;
                return Err(format!("tagcast serve exited during start ({status})"));
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

    /// SIGTERM (graceful: queued writes commit), then wait.
    pub fn stop(mut self) -> Result<(), String> {
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let status = self.child.wait().map_err(|e| e.to_string())?;
        if !status.success() {
            return Err(format!("tagcast serve exited with {status}"));
        }
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
