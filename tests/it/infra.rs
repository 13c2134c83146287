//! The tests' temporary PostgreSQL and Redis: [`tagcast::devservers`] (local binaries,
//! free loopback ports, temporary directories, stopped and removed however the test
//! process exits), shared by every test of the process, each test with its own database.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};

use tagcast::devservers::{Postgres, Redis};

/// Runs `sql` on the PostgreSQL database at `url`.
pub fn execute(url: &str, sql: &str) {
    tagcast::devservers::execute(url, sql).unwrap();
}

/// A cluster of this test's own; dropping it stops it and removes its files.
pub fn start_postgres() -> Postgres {
    Postgres::start(false).unwrap()
}

pub fn start_redis() -> Redis {
    Redis::start().unwrap()
}

/// A new, empty database for one test.
pub fn fresh_database(pg: &Postgres) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let name = format!(
        "t_{}_{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    );
    pg.create_database(&name).unwrap()
}

/// The cluster shared by every test of this process that wants PostgreSQL; each test
/// takes its own database. It stops (and its directory goes) when the process exits.
pub fn shared_postgres() -> &'static Postgres {
    static PG: OnceLock<Postgres> = OnceLock::new();
    PG.get_or_init(|| Postgres::start(true).unwrap())
}

/// The Redis shared by every test of this process that wants one.
pub fn shared_redis() -> &'static Redis {
    static REDIS: OnceLock<Redis> = OnceLock::new();
    REDIS.get_or_init(start_redis)
}

/// Which backend the integration suite runs against: `TAGCAST_TEST_BACKEND=postgres`
/// runs every HTTP test against PostgreSQL; anything else, the embedded store.
pub fn postgres_backend() -> bool {
    std::env::var("TAGCAST_TEST_BACKEND").is_ok_and(|b| b == "postgres")
}
