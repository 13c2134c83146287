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
    conn.execute("VACUUM INTO ?1", [target])
        .map_err(|e| format!("copying {} to {}: {e}", db.display(), partial.display()))?;
    drop(conn);
    let (users, schema_version) = verify_copy(&partial)?;
    sync_file(&partial)?;
    std::fs::rename(&partial, to)
        .map_err(|e| format!("renaming {} to {}: {e}", partial.display(), to.display()))?;
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
