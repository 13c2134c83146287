//! Online backup and offline restore of the embedded store.
//!
//! `backup` runs beside a serving server: `VACUUM INTO` reads one snapshot (one read
//! transaction, which WAL lets run while the writer commits) and writes it as a compact,
//! self-contained SQLite file; every write acknowledged before the backup started is in
//! it. The copy is written under a temporary name, fsynced, checked, and renamed into
//! place, so a crash never leaves a half-written file under the name asked for.
//!
//! `restore` takes the data directory's lock (no server may run on it), checks the
//! backup, keeps the store it replaces under another name, and puts the copy in place the
//! same careful way.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rusqlite::{Connection, OpenFlags};

use super::{DB_FILE, DataDirLock, open_connection, schema};

/// What a backup or restore did.
#[derive(Debug, Clone)]
pub struct Copied {
    pub path: PathBuf,
    pub bytes: u64,
    pub users: i64,
    pub schema_version: u32,
    pub took: Duration,
    /// Restore: where the store it replaced was kept.
    pub replaced: Option<PathBuf>,
}

/// Refuses a backup target inside the data directory, or that is one of the store's own
/// files by another name (a link): writing there while the server runs replaces the
/// live store under it, and acknowledged writes are lost at the next start.
fn check_target(data_dir: &Path, to: &Path) -> Result<(), String> {
    let dir = std::fs::canonicalize(data_dir)
        .map_err(|e| format!("reading {}: {e}", data_dir.display()))?;
    let parent = match to.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    let parent = std::fs::canonicalize(parent)
        .map_err(|e| format!("--to {}: its directory: {e}", to.display()))?;
    if parent.starts_with(&dir) {
        return Err(format!(
            "--to {} is inside the data directory {}; write the backup elsewhere (a backup \
             beside the store it copies is lost with it, and one over the store's own files \
             would replace the live store)",
            to.display(),
            dir.display()
        ));
    }
    use std::os::unix::fs::MetadataExt;
    if let Ok(target) = std::fs::metadata(to) {
        for own in [DB_FILE, super::WAL_FILE, "tagcast.db-shm"] {
            if let Ok(m) = std::fs::metadata(dir.join(own))
                && (m.dev(), m.ino()) == (target.dev(), target.ino())
            {
                return Err(format!(
                    "--to {} is the store's own {own} (the same file by another name); \
                     write the backup elsewhere",
                    to.display()
                ));
            }
        }
    }
    Ok(())
}

/// Removes the copy in progress unless it is [`Partial::keep`]t: a backup that fails, or
/// is interrupted (SIGINT/SIGTERM/SIGHUP: the copy is cut short by SQLite's interrupt),
/// leaves nothing behind. A backup killed outright (SIGKILL) leaves its `.partial`; the
/// next backup to the same target removes it first.
struct Partial(Option<PathBuf>);

impl Partial {
    fn keep(mut self) {
        self.0 = None;
    }
}

impl Drop for Partial {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// Writes a consistent copy of the store in `data_dir` to `to`.
pub fn backup(data_dir: &Path, to: &Path, overwrite: bool) -> Result<Copied, String> {
    let started = Instant::now();
    let db = data_dir.join(DB_FILE);
    if !db.is_file() {
        return Err(format!(
            "no embedded store at {} (is --data-dir right?)",
            db.display()
        ));
    }
    check_target(data_dir, to)?;
    if to.exists() && !overwrite {
        return Err(format!(
            "{} already exists; pass --force to overwrite it",
            to.display()
        ));
    }
    let partial = partial_name(to);
    let _ = std::fs::remove_file(&partial);
    let conn = open_connection(&db, OpenFlags::SQLITE_OPEN_READ_WRITE)
        .map_err(|e| format!("opening {}: {e}", db.display()))?;
    let target = partial
        .to_str()
        .ok_or_else(|| format!("{} is not a UTF-8 path", partial.display()))?;
    let guard = Partial(Some(partial.clone()));
    let signals = interrupt_on_signal(conn.get_interrupt_handle())?;
    let copied = conn.execute("VACUUM INTO ?1", [target]);
    signals.close();
    if let Err(e) = copied {
        return Err(match e.sqlite_error_code() {
            Some(rusqlite::ErrorCode::OperationInterrupted) => {
                "interrupted by a signal; nothing was written".to_owned()
            }
            _ => format!("copying {} to {}: {e}", db.display(), partial.display()),
        });
    }
    drop(conn);
    let (users, schema_version) = verify_copy(&partial)?;
    sync_file(&partial)?;
    std::fs::rename(&partial, to)
        .map_err(|e| format!("renaming {} to {}: {e}", partial.display(), to.display()))?;
    guard.keep();
    sync_parent(to)?;
    Ok(Copied {
        path: to.to_owned(),
        bytes: std::fs::metadata(to).map_or(0, |m| m.len()),
        users,
        schema_version,
        took: started.elapsed(),
        replaced: None,
    })
}

/// Puts the backup `from` in place as the store of `data_dir`. Refuses while a server
/// holds the directory, and keeps an existing store (as `tagcast.db.replaced-<unix time>`)
/// only when `replace` is given.
pub fn restore(from: &Path, data_dir: &Path, replace: bool) -> Result<Copied, String> {
    let started = Instant::now();
    let lock = DataDirLock::acquire(data_dir, "restore")?;
    let (users, schema_version) = verify_copy(from)?;
    let db = data_dir.join(DB_FILE);
    let mut replaced = None;
    if db.exists() {
        if !replace {
            return Err(format!(
                "{} already holds a store; pass --force to replace it (it is kept as {}.replaced-<time>)",
                data_dir.display(),
                DB_FILE
            ));
        }
        let secs = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let aside = data_dir.join(format!("{DB_FILE}.replaced-{secs}"));
        // Fold the old store's log into it, so the file kept aside is complete. A store
        // SQLite cannot open (damaged: often why one restores) keeps its log beside it
        // under the same suffix instead.
        let folded = open_connection(&db, OpenFlags::SQLITE_OPEN_READ_WRITE)
            .and_then(|conn| conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(())));
        if let Err(e) = &folded {
            tracing::warn!(error = %e, "the replaced store could not be checkpointed; keeping its log beside it");
        }
        std::fs::rename(&db, &aside).map_err(|e| format!("moving {} aside: {e}", db.display()))?;
        let wal = data_dir.join(format!("{DB_FILE}-wal"));
        if folded.is_err() && wal.exists() {
            let wal_aside = data_dir.join(format!("{DB_FILE}-wal.replaced-{secs}"));
            std::fs::rename(&wal, &wal_aside)
                .map_err(|e| format!("moving {} aside: {e}", wal.display()))?;
        }
        for suffix in ["-wal", "-shm"] {
            let _ = std::fs::remove_file(data_dir.join(format!("{DB_FILE}{suffix}")));
        }
        replaced = Some(aside);
    }
    // The saved audience index described the store being replaced.
    let _ = std::fs::remove_file(data_dir.join(super::SNAPSHOT_FILE));
    let partial = partial_name(&db);
    std::fs::copy(from, &partial)
        .map_err(|e| format!("copying {} to {}: {e}", from.display(), partial.display()))?;
    own_like_directory(&partial, data_dir)?;
    sync_file(&partial)?;
    std::fs::rename(&partial, &db)
        .map_err(|e| format!("renaming {} to {}: {e}", partial.display(), db.display()))?;
    sync_parent(&db)?;
    drop(lock);
    Ok(Copied {
        path: db.clone(),
        bytes: std::fs::metadata(&db).map_or(0, |m| m.len()),
        users,
        schema_version,
        took: started.elapsed(),
        replaced,
    })
}

/// A quick structural check of a copy (every page readable, the schema usable by this
/// tagcast); `tagcast check` does the full one. Returns (users, schema version).
fn verify_copy(path: &Path) -> Result<(i64, u32), String> {
    let conn = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY)
        .map_err(|e| format!("opening {}: {e}", path.display()))?;
    let bad =
        |e: rusqlite::Error| format!("{} is not a usable tagcast backup: {e}", path.display());
    let quick: String = conn
        .query_row("PRAGMA quick_check", [], |r| r.get(0))
        .map_err(bad)?;
    if quick != "ok" {
        return Err(format!(
            "{} is damaged (PRAGMA quick_check: {quick})",
            path.display()
        ));
    }
    let version = schema::version(&conn).map_err(bad)?;
    let usable = schema::usable_from(&conn).map_err(bad)?;
    if version == 0 || usable > schema::CURRENT_VERSION {
        return Err(format!(
            "{} has schema version {version} (usable from {usable}); this tagcast understands {}",
            path.display(),
            schema::CURRENT_VERSION
        ));
    }
    let users = conn
        .query_row("SELECT COUNT(*) FROM users", [], |r| r.get(0))
        .map_err(bad)?;
    Ok((users, version))
}

/// The restored file belongs to whoever owns the data directory: restored by root for a
/// server that runs as its own user, a root-owned store would be read-only to it.
fn own_like_directory(file: &Path, dir: &Path) -> Result<(), String> {
    use std::os::unix::fs::MetadataExt;
    let owner = std::fs::metadata(dir).map_err(|e| format!("reading {}: {e}", dir.display()))?;
    let this = std::fs::metadata(file).map_err(|e| format!("reading {}: {e}", file.display()))?;
    if (this.uid(), this.gid()) == (owner.uid(), owner.gid()) {
        return Ok(());
    }
    std::os::unix::fs::chown(file, Some(owner.uid()), Some(owner.gid())).map_err(|e| {
        format!(
            "giving {} to the owner of {} (uid {}): {e}",
            file.display(),
            dir.display(),
            owner.uid()
        )
    })
}

/// Interrupts the copy when SIGINT, SIGTERM or SIGHUP arrives (until `close`), so the
/// partial copy is removed rather than left behind.
fn interrupt_on_signal(
    interrupt: rusqlite::InterruptHandle,
) -> Result<signal_hook::iterator::Handle, String> {
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGHUP])
        .map_err(|e| format!("installing signal handlers: {e}"))?;
    let handle = signals.handle();
    std::thread::spawn(move || {
        if signals.forever().next().is_some() {
            interrupt.interrupt();
        }
    });
    Ok(handle)
}

fn partial_name(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".partial");
    path.with_file_name(name)
}

fn sync_file(path: &Path) -> Result<(), String> {
    std::fs::File::open(path)
        .and_then(|f| f.sync_all())
        .map_err(|e| format!("syncing {}: {e}", path.display()))
}

/// Makes a rename durable: the directory entry is data too.
fn sync_parent(path: &Path) -> Result<(), String> {
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    std::fs::File::open(parent)
        .and_then(|f| f.sync_all())
        .map_err(|e| format!("syncing {}: {e}", parent.display()))
}
