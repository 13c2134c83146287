//! Temporary PostgreSQL and Redis servers for the tests: started from the local binaries
//! (Debian's `postgresql` and `redis-server` packages) on free loopback ports in temporary
//! directories, and stopped and removed afterwards.
//!
//! Each server runs under a small `sh` wrapper that holds the read end of a pipe whose
//! write end this process keeps: when this process exits for any reason (even a panic or
//! SIGKILL), the pipe closes, the wrapper stops the server and removes its directory. So
//! nothing outlives the test run, and no global teardown is needed.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// Runs `f` to completion on a runtime of its own, on a thread of its own: callable from
/// sync code and from inside async tests alike.
pub fn block_on<T: Send + 'static>(f: impl std::future::Future<Output = T> + Send + 'static) -> T {
    std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(f)
    })
    .join()
    .unwrap()
}

/// Runs `sql` on the PostgreSQL database at `url`.
pub fn execute(url: &str, sql: &str) {
    let (url, sql) = (url.to_owned(), sql.to_owned());
    block_on(async move {
        let (client, conn) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
            .await
            .unwrap();
        tokio::spawn(conn);
        client.batch_execute(&sql).await.unwrap();
    });
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn is_root() -> bool {
    // `id -u` rather than libc: the tests forbid unsafe code too.
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| o.stdout.starts_with(b"0\n"))
        .unwrap_or(false)
}

/// The directory of `initdb`/`postgres`: Debian's newest version, else PATH.
fn pg_bindir() -> PathBuf {
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
        return dir;
    }
    let out = Command::new("sh")
        .args(["-c", "command -v postgres"])
        .output()
        .unwrap();
    let path = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    assert!(
        !path.is_empty(),
        "PostgreSQL is not installed: run ./scripts/test (it installs Debian's postgresql)"
    );
    Path::new(&path).parent().unwrap().to_owned()
}

/// A server process under the pipe-holding wrapper.
struct Wrapped {
    child: Child,
}

impl Wrapped {
    /// Runs `command` (a shell command line) in the background; when the pipe closes the
    /// wrapper sends `signal`, waits, then runs `cleanup`. `user`: run it all as that user.
    fn spawn(command: &str, signal: &str, cleanup: &str, user: Option<&str>) -> Self {
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
            .expect("sh starts");
        Wrapped { child }
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

fn wait_for_port(port: u16, what: &str, wrapper: &mut Wrapped) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(wrapper.is_running(), "{what} exited during start");
        assert!(
            Instant::now() < deadline,
            "{what} did not start listening on {port}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A temporary PostgreSQL cluster (trust auth on 127.0.0.1, superuser `tagcast`).
pub struct Postgres {
    pub port: u16,
    dir: PathBuf,
    user: Option<&'static str>,
    server: Option<Wrapped>,
    /// The wrapper removes the directory when the server stops.
    remove_on_exit: bool,
}

impl Postgres {
    /// A cluster that this process controls; dropping it stops it and removes its files.
    pub fn start() -> Self {
        Self::start_with(false)
    }

    /// `remove_on_exit`: the wrapper removes the files when the server stops, for a
    /// cluster that is never dropped.
    fn start_with(remove_on_exit: bool) -> Self {
        let bin = pg_bindir();
        let dir = tempfile::Builder::new()
            .prefix("tagcast-pg-")
            .tempdir()
            .unwrap()
            .keep();
        let user = is_root().then_some("postgres");
        if let Some(u) = user {
            // PostgreSQL refuses to run as root: hand the directory to its own user.
            assert!(
                Command::new("chown")
                    .args(["-R", u])
                    .arg(&dir)
                    .status()
                    .unwrap()
                    .success()
            );
        }
        let data = dir.join("data");
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
            .arg(&data)
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
            .expect("initdb runs");
        assert!(
            out.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let mut pg = Postgres {
            port: free_port(),
            dir,
            user,
            server: None,
            remove_on_exit,
        };
        pg.resume();
        pg
    }

    /// (Re)starts the server on the same data and port.
    pub fn resume(&mut self) {
        let bin = pg_bindir();
        let cmd = format!(
            "exec {} -D {} -p {} -c listen_addresses=127.0.0.1 -k {} -c max_connections=300 -c fsync=on",
            bin.join("postgres").display(),
            self.dir.join("data").display(),
            self.port,
            self.dir.display()
        );
        let cleanup = if self.remove_on_exit {
            format!("rm -rf {}", self.dir.display())
        } else {
            "true".into()
        };
        let mut server = Wrapped::spawn(&format!("({cmd})"), "INT", &cleanup, self.user);
        wait_for_port(self.port, "postgres", &mut server);
        // Listening is not accepting: wait until a session can start (not "starting up").
        let url = self.url("postgres");
        let deadline = Instant::now() + Duration::from_secs(60);
        while !block_on({
            let url = url.clone();
            async move {
                tokio_postgres::connect(&url, tokio_postgres::NoTls)
                    .await
                    .is_ok()
            }
        }) {
            assert!(server.is_running(), "postgres exited during start");
            assert!(
                Instant::now() < deadline,
                "postgres did not accept sessions"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        self.server = Some(server);
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

    /// A new, empty database for one test.
    pub fn fresh_database(&self) -> String {
        static N: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "t_{}_{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        );
        let admin = self.url("postgres");
        let sql = format!("CREATE DATABASE {name}");
        execute(&admin, &sql);
        self.url(&name)
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        self.pause();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The cluster shared by every test of this process that wants PostgreSQL; each test
/// takes its own database. It stops (and its directory goes) when the process exits.
pub fn shared_postgres() -> &'static Postgres {
    static PG: OnceLock<Postgres> = OnceLock::new();
    PG.get_or_init(|| Postgres::start_with(true))
}

/// The Redis shared by every test of this process that wants one.
pub fn shared_redis() -> &'static Redis {
    static REDIS: OnceLock<Redis> = OnceLock::new();
    REDIS.get_or_init(Redis::start)
}

/// A temporary Redis without persistence.
pub struct Redis {
    pub port: u16,
    server: Option<Wrapped>,
}

impl Redis {
    pub fn start() -> Self {
        let port = free_port();
        let cmd = format!(
            "exec redis-server --port {port} --bind 127.0.0.1 --save '' --appendonly no --daemonize no"
        );
        let mut server = Wrapped::spawn(&format!("({cmd})"), "TERM", "true", None);
        wait_for_port(port, "redis-server", &mut server);
        Redis {
            port,
            server: Some(server),
        }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
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

/// Which backend the integration suite runs against: `TAGCAST_TEST_BACKEND=postgres`
/// runs every HTTP test against PostgreSQL; anything else, the embedded store.
pub fn postgres_backend() -> bool {
    std::env::var("TAGCAST_TEST_BACKEND").is_ok_and(|b| b == "postgres")
}
