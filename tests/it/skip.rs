//! Skips that say so. libtest has no runtime skip: a test that returns early counts as
//! passed. So a test that does not apply to this pass, or lacks what it needs, calls one
//! of these: it prints `SKIPPED <test>: <why>`, appends the same line to the file named by
//! `TAGCAST_SKIP_LOG` (scripts/test lists them after the run), and with `CI=true` a
//! missing prerequisite fails the test instead.

use std::io::Write;

/// The running test's name (libtest names the thread after it).
fn test_name() -> String {
    std::thread::current()
        .name()
        .unwrap_or("an unnamed test")
        .to_owned()
}

fn record(why: &str) {
    let line = format!("SKIPPED {}: {why}", test_name());
    println!("{line}");
    eprintln!("{line}");
    if let Ok(path) = std::env::var("TAGCAST_SKIP_LOG") {
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .unwrap_or_else(|e| panic!("TAGCAST_SKIP_LOG {path}: {e}"));
        writeln!(f, "{line}").unwrap();
    }
}

/// True (and the skip recorded) when this pass runs on PostgreSQL: for tests of the
/// embedded store's own files, which the embedded pass runs.
pub fn on_postgres(why: &str) -> bool {
    let skip = crate::infra::postgres_backend();
    if skip {
        record(&format!(
            "embedded store only ({why}); the embedded pass runs it"
        ));
    }
    skip
}

/// True (and the skip recorded) when this pass runs on the embedded store: for tests of
/// PostgreSQL's own schema, which the PostgreSQL pass runs.
pub fn on_embedded(why: &str) -> bool {
    let skip = !crate::infra::postgres_backend();
    if skip {
        record(&format!(
            "PostgreSQL only ({why}); the PostgreSQL pass runs it"
        ));
    }
    skip
}

/// Whether the test may go on: `present` says whether `what` is there. Missing in CI
/// (`CI=true`): the test fails. Missing elsewhere: the skip is recorded.
pub fn require(present: bool, what: &str) -> bool {
    if present {
        return true;
    }
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{what} is missing, and CI must run this test (CI=true)");
    }
    record(&format!("needs {what}"));
    false
}
