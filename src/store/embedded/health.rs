//! Whether the embedded store can write. `/readyz` answers from this: a store on a full
//! disk or a failing device keeps serving reads but is not ready from its first failed
//! write, and becomes ready again by itself once a probe finds room (the maintenance thread
//! has the writer probe every second; see `Writer::probe`). A request that happens to
//! commit meanwhile does not make it ready: on a nearly full disk one write fits where the
//! next does not, and readiness would flap with them. Corruption is sticky: it needs an
//! operator (`tagcast check`, a restore), so it stays until restart.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::metrics::Metrics;
use crate::store::StoreError;
use crate::throttle::LogThrottle;

#[derive(Debug, Clone)]
enum Problem {
    Unwritable(String),
    Corrupt(String),
}

pub(super) struct Health {
    problem: Mutex<Option<Problem>>,
    metrics: Arc<Metrics>,
    /// One warning per period while writes keep failing, with a count. Not reset by a
    /// recovery: on a nearly full disk writes can succeed and fail in turn, and that must
    /// not log a pair of lines every second.
    failures: LogThrottle,
    recoveries: LogThrottle,
}

/// What an SQLite error says about the store, as opposed to about one request.
enum Kind {
    Corrupt,
    /// The device: full, failing, gone, read-only. Retryable once an operator acts.
    Storage,
    /// Another connection holds a lock: retryable at once.
    Busy,
    Other,
}

fn kind(e: &rusqlite::Error) -> Kind {
    use rusqlite::ErrorCode as C;
    match e.sqlite_error_code() {
        Some(C::DatabaseCorrupt | C::NotADatabase) => Kind::Corrupt,
        Some(
            C::DiskFull
            | C::SystemIoFailure
            | C::CannotOpen
            | C::ReadOnly
            | C::OutOfMemory
            | C::FileLockingProtocolFailed,
        ) => Kind::Storage,
        Some(C::DatabaseBusy | C::DatabaseLocked) => Kind::Busy,
        _ => Kind::Other,
    }
}

impl Health {
    pub fn new(metrics: Arc<Metrics>) -> Self {
        Health {
            problem: Mutex::new(None),
            metrics,
            failures: LogThrottle::new(Duration::from_secs(30)),
            recoveries: LogThrottle::new(Duration::from_secs(30)),
        }
    }

    /// `Ok` while the store can write; the reason otherwise.
    pub fn check(&self) -> Result<(), StoreError> {
        match &*self.problem.lock().expect("health lock") {
            None => Ok(()),
            Some(Problem::Unwritable(why)) => Err(StoreError::unavailable(format!(
                "the embedded store cannot write: {why}"
            ))),
            Some(Problem::Corrupt(why)) => Err(StoreError::internal(format!(
                "the embedded store reported corruption: {why}; run `tagcast check` and see \
                 docs/operations.md (restore from a backup)"
            ))),
        }
    }

    pub fn needs_probe(&self) -> bool {
        matches!(
            *self.problem.lock().expect("health lock"),
            Some(Problem::Unwritable(_))
        )
    }

    /// Classifies a failed statement or commit, updates the store's state and returns the
    /// error for the request. `writing`: a failed read does not make the store unwritable,
    /// but a corrupt page found by a read is corruption all the same.
    pub fn failed(&self, e: rusqlite::Error, writing: bool) -> StoreError {
        let text = e.to_string();
        match kind(&e) {
            Kind::Corrupt => {
                *self.problem.lock().expect("health lock") = Some(Problem::Corrupt(text.clone()));
                self.metrics.set_store_writable(false);
                if let Some(held) = self.failures.admit() {
                    tracing::error!(cause = %text, repeated = held, "embedded store reported corruption; not ready until restart");
                }
                StoreError::internal("SQLite reported corruption").caused_by(e)
            }
            Kind::Storage if writing => {
                {
                    let mut p = self.problem.lock().expect("health lock");
                    if !matches!(*p, Some(Problem::Corrupt(_))) {
                        *p = Some(Problem::Unwritable(text.clone()));
                    }
                }
                self.metrics.set_store_writable(false);
                if let Some(held) = self.failures.admit() {
                    tracing::warn!(
                        cause = %text,
                        repeated = held,
                        "embedded store cannot write; answering 503 and probing every second"
                    );
                }
                StoreError::unavailable("SQLite cannot write").caused_by(e)
            }
            Kind::Storage | Kind::Busy => StoreError::unavailable("SQLite").caused_by(e),
            Kind::Other => StoreError::internal("SQLite").caused_by(e),
        }
    }

    /// The store holds something this binary cannot read (the state's build failed on
    /// it): not ready, and every request answers the failure, until a restart.
    pub fn corrupt(&self, why: String) -> StoreError {
        *self.problem.lock().expect("health lock") = Some(Problem::Corrupt(why.clone()));
        self.metrics.set_store_writable(false);
        StoreError::internal(why)
    }

    /// A probe found the store still unable to write, for `why`.
    pub fn still_unwritable(&self, why: String) {
        let mut p = self.problem.lock().expect("health lock");
        if matches!(*p, Some(Problem::Unwritable(_))) {
            *p = Some(Problem::Unwritable(why));
        }
    }

    /// A probe committed with room to spare: an unwritable store is writable again
    /// (corruption stays).
    pub fn succeeded(&self) {
        let mut p = self.problem.lock().expect("health lock");
        if matches!(*p, Some(Problem::Unwritable(_))) {
            *p = None;
            drop(p);
            self.metrics.set_store_writable(true);
            if let Some(held) = self.recoveries.admit() {
                tracing::info!(repeated = held, "embedded store writes again; ready");
            }
        }
    }
}
