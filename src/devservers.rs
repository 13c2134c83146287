//! Temporary PostgreSQL and Redis servers started from the local binaries (Debian's
//! `postgresql` and `redis-server` packages) on free loopback ports in temporary
//! directories, for `tagcast bench` and the integration tests.
//!
//! Each server runs under a small `sh` wrapper that holds the read end of a pipe whose
//! write end this process keeps: when this process exits for any reason (even a panic or
//! SIGKILL), the pipe closes, the wrapper stops the server and (if asked) removes its
//! directory. So nothing outlives the process that started it.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Runs `f` to completion on a runtime of its own, on a thread of its own: callable from
/// sync code and from inside async code alike.
pub fn block_on<T: Send + 'static>(f: impl std::future::Future<Output = T> + Send + 'static) -> T {
    std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a current-thread runtime starts")
            .block_on(f)
    })
    .join()
    .expect("the block_on thread does not panic")
}

/// Runs `sql` (one or more statements) on the PostgreSQL database at `url`.
pub fn execute(url: &str, sql: &str) -> Result<(), String> {
    let (url, sql) = (url.to_owned(), sql.to_owned());
    block_on(async move {
        let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
            .await
            .map_err(|e| format!("connecting to PostgreSQL: {e}"))?;
        tokio::spawn(conn);
        client
            .batch_execute(&sql)
            .await
            .map_err(|e| format!("running {sql:?}: {e}"))
    })
}

pub fn free_port() -> Result<u16, String> {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| format!("finding a free port: {e}"))
}

fn is_root() -> bool {
    // `id -u` rather than libc: the crate forbids unsafe code.
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| o.stdout.starts_with(b"0\n"))
        .unwrap_or(false)
}

/// The directory of `initdb`/`postgres`: Debian's newest version, else PATH.
pub fn pg_bindir() -> Result<PathBuf, String> {
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|d| {
            d.flatten()
                .map(|e| e.path().join("bin"))
                .filter(|p| p.join("postgres").exists())
                .collect()
        })
        .unwrap_or_default();
    versions.sort();
    if let Some(dir) = versions.pop() {
        return Ok(dir);
    }
    let out = Command::new("sh")
        .args(["-c", "command -v postgres"])
        .output()
        .map_err(|e| format!("running sh: {e}"))?;
    let path = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    match Path::new(&path).parent() {
        Some(dir) if !path.is_empty() => Ok(dir.to_owned()),
        _ => Err(
            "PostgreSQL is not installed (Debian: apt-get install postgresql; \
                  ./scripts/test installs it)"
                .into(),
        ),
    }
}

/// A server process under the pipe-holding wrapper.
struct Wrapped {
    child: Child,
}

impl Wrapped {
    /// Runs `command` (a shell command line) in the background; when the pipe closes the
    /// wrapper sends `signal`, waits, then runs `cleanup`. `user`: run it all as that user.
    fn spawn(
        command: &str,
        signal: &str,
        cleanup: &str,
        user: Option<&str>,
    ) -> Result<Self, String> {
        let script =
            format!("{command} & pid=$!; read _ignored; kill -{signal} $pid; wait $pid; {cleanup}");
        let mut cmd = match user {
            Some(u) => {
                let mut c = Command::new("runuser");
                c.args(["-u", u, "--", "sh", "-c", &script]);
                c
            }
            None => {
                let mut c = Command::new("sh");
                c.args(["-c", &script]);
                c
            }
        };
        let child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("starting sh: {e}"))?;
        Ok(Wrapped { child })
    }

    /// Closes the pipe and waits until the server has stopped.
    fn stop(mut self) {
        drop(self.child.stdin.take());
        let _ = self.child.wait();
    }

    fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

fn wait_for_port(port: u16, what: &str, wrapper: &mut Wrapped) -> Result<(), String> {
    let deadline = Instant::now() + Duration::from_secs(60);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if !wrapper.is_running() {
            return Err(format!("{what} exited during start"));
        }
        if Instant::now() > deadline {
            return Err(format!("{what} did not start listening on {port}"));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

/// What a [`Postgres`] cluster gets beyond the defaults, e.g. TLS.
#[derive(Debug, Clone, Default)]
pub struct PgSetup {
    /// `-c name=value` server settings (plain words: they go on a shell command line).
    pub settings: Vec<(String, String)>,
    /// Files written into the data directory, owned by the server's user, mode 0600
    /// (PostgreSQL refuses a key file others can read), e.g. `server.key`.
    pub files: Vec<(String, Vec<u8>)>,
    /// Replaces `pg_hba.conf`.
    pub hba: Option<String>,
}

impl PgSetup {
    /// TLS with this certificate chain and key (PEM), and TCP sessions on 127.0.0.1 only
    /// over TLS (`hostssl`): a plain connection is refused by PostgreSQL itself. The Unix
    /// socket stays open for administration ([`Postgres::admin_url`]).
    pub fn tls_only(cert_pem: &str, key_pem: &str) -> Self {
        PgSetup {
            settings: vec![("ssl".into(), "on".into())],
            // The default ssl_cert_file and ssl_key_file, relative to the data directory.
            files: vec![
                ("server.crt".into(), cert_pem.as_bytes().to_vec()),
                ("server.key".into(), key_pem.as_bytes().to_vec()),
            ],
            hba: Some("local all all trust\nhostssl all all 127.0.0.1/32 trust\n".into()),
        }
    }
}

/// A temporary PostgreSQL cluster (trust auth on 127.0.0.1, superuser `tagcast`,
/// `fsync=on`: commits are as durable as a production server's).
pub struct Postgres {
    pub port: u16,
    dir: PathBuf,
    user: Option<&'static str>,
    server: Option<Wrapped>,
    /// The wrapper removes the directory when the server stops.
    remove_on_exit: bool,
    settings: Vec<(String, String)>,
}

impl Postgres {
    /// `remove_on_exit`: the wrapper removes the files when the server stops, for a
    /// cluster that is never dropped. Dropping a `Postgres` stops it and removes its files.
    pub fn start(remove_on_exit: bool) -> Result<Self, String> {
        Self::start_with(remove_on_exit, PgSetup::default())
    }

    /// [`Postgres::start`] with extra settings, files and `pg_hba.conf`.
    pub fn start_with(remove_on_exit: bool, setup: PgSetup) -> Result<Self, String> {
        let bin = pg_bindir()?;
        let dir = tempfile::Builder::new()
            .prefix("tagcast-pg-")
            .tempdir()
            .map_err(|e| format!("creating a temporary directory: {e}"))?
            .keep();
        let user = is_root().then_some("postgres");
        if let Some(u) = user {
            // PostgreSQL refuses to run as root: hand the directory to its own user.
            let ok = Command::new("chown")
                .args(["-R", u])
                .arg(&dir)
                .status()
                .is_ok_and(|s| s.success());
            if !ok {
                return Err(format!("chown {u} {} failed", dir.display()));
            }
        }
        let mut initdb = match user {
            Some(u) => {
                let mut c = Command::new("runuser");
                c.args(["-u", u, "--"]).arg(bin.join("initdb"));
                c
            }
            None => Command::new(bin.join("initdb")),
        };
        let out = initdb
            .arg("-D")
            .arg(dir.join("data"))
            .args([
                "-U",
                "tagcast",
                "--auth=trust",
                "-E",
                "UTF8",
                "--locale=C",
                "--no-sync",
            ])
            .output()
            .map_err(|e| format!("running initdb: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "initdb failed: {}",
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        let data = dir.join("data");
        let mut files = setup.files.clone();
        if let Some(hba) = &setup.hba {
            files.push(("pg_hba.conf".into(), hba.clone().into_bytes()));
        }
        for (name, content) in &files {
            let path = data.join(name);
            std::fs::write(&path, content)
                .map_err(|e| format!("writing {}: {e}", path.display()))?;
            std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o600))
                .map_err(|e| format!("chmod 600 {}: {e}", path.display()))?;
            if let Some(u) = user {
                let ok = Command::new("chown")
                    .arg(u)
                    .arg(&path)
                    .status()
                    .is_ok_and(|s| s.success());
                if !ok {
                    return Err(format!("chown {u} {} failed", path.display()));
                }
            }
        }
        let mut pg = Postgres {
            port: free_port()?,
            dir,
            user,
            server: None,
            remove_on_exit,
            settings: setup.settings,
        };
        pg.resume()?;
        Ok(pg)
    }

    /// (Re)starts the server on the same data and port.
    pub fn resume(&mut self) -> Result<(), String> {
        let bin = pg_bindir()?;
        let mut cmd = format!(
            "exec {} -D {} -p {} -c listen_addresses=127.0.0.1 -k {} -c max_connections=300 -c fsync=on",
            bin.join("postgres").display(),
            self.dir.join("data").display(),
            self.port,
            self.dir.display()
        );
        for (name, value) in &self.settings {
            cmd.push_str(&format!(" -c '{name}={value}'"));
        }
        let cleanup = if self.remove_on_exit {
            format!("rm -rf {}", self.dir.display())
        } else {
            "true".into()
        };
        let mut server = Wrapped::spawn(&format!("({cmd})"), "INT", &cleanup, self.user)?;
        wait_for_port(self.port, "postgres", &mut server)?;
        // Listening is not accepting: wait until a session can start (not "starting up").
        // Over the Unix socket, which pg_hba.conf keeps open whatever it asks of TCP.
        let url = self.admin_url("postgres");
        let deadline = Instant::now() + Duration::from_secs(60);
        while !block_on({
            let url = url.clone();
            async move {
                tokio_postgres::connect(&url, tokio_postgres::NoTls)
                    .await
                    .is_ok()
            }
        }) {
            if !server.is_running() {
                return Err("postgres exited during start".into());
            }
            if Instant::now() > deadline {
                return Err("postgres did not accept sessions".into());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        self.server = Some(server);
        Ok(())
    }

    /// Stops the server (fast shutdown), keeping its data for [`Postgres::resume`].
    pub fn pause(&mut self) {
        if let Some(s) = self.server.take() {
            s.stop();
        }
    }

    pub fn url(&self, db: &str) -> String {
        format!("postgres://tagcast@127.0.0.1:{}/{db}", self.port)
    }

    /// A connection string for database `db` over the Unix socket (never TLS, always
    /// allowed), for administration whatever `pg_hba.conf` asks of TCP sessions.
    pub fn admin_url(&self, db: &str) -> String {
        format!(
            "host={} port={} user=tagcast dbname={db}",
            self.dir.display(),
            self.port
        )
    }

    /// Creates database `name` and returns its URL.
    pub fn create_database(&self, name: &str) -> Result<String, String> {
        execute(
            &self.admin_url("postgres"),
            &format!("CREATE DATABASE {name}"),
        )?;
        Ok(self.url(name))
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        self.pause();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A temporary Redis without persistence.
pub struct Redis {
    pub port: u16,
    tls: bool,
    server: Option<Wrapped>,
}

impl Redis {
    pub fn start() -> Result<Self, String> {
        Self::spawn("--port {port}", false)
    }

    /// Redis over TLS only (`--port 0`: no plain listener), with these PEM files; clients
    /// need no certificate of their own.
    pub fn start_tls(cert_file: &Path, key_file: &Path, ca_file: &Path) -> Result<Self, String> {
        let args = format!(
            "--port 0 --tls-port {{port}} --tls-cert-file {} --tls-key-file {} --tls-ca-cert-file {} --tls-auth-clients no",
            cert_file.display(),
            key_file.display(),
            ca_file.display()
        );
        Self::spawn(&args, true)
    }

    fn spawn(listen: &str, tls: bool) -> Result<Self, String> {
        let port = free_port()?;
        let listen = listen.replace("{port}", &port.to_string());
        let cmd = format!(
            "exec redis-server {listen} --bind 127.0.0.1 --save '' --appendonly no --daemonize no"
        );
        let mut server = Wrapped::spawn(&format!("({cmd})"), "TERM", "true", None)?;
        wait_for_port(port, "redis-server", &mut server)?;
        Ok(Redis {
            port,
            tls,
            server: Some(server),
        })
    }

    pub fn url(&self) -> String {
        let scheme = if self.tls { "rediss" } else { "redis" };
        format!("{scheme}://127.0.0.1:{}/0", self.port)
    }

    pub fn stop(&mut self) {
        if let Some(s) = self.server.take() {
            s.stop();
        }
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.stop();
    }
}
