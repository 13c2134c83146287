//! One process per data directory. The embedded store's guarantees (the tag cap, the order
//! of writes) rest on its single writer thread; a second server on the same files would
//! break them silently. So whoever opens the directory for writing first takes an
//! exclusive `flock` on `tagcast.lock` and writes its PID there; the kernel drops the lock
//! when the process exits, however it exits (no stale lock after `kill -9`).

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

pub const LOCK_FILE: &str = "tagcast.lock";

/// Held while the directory is in use; dropping it releases the lock.
#[derive(Debug)]
pub struct DataDirLock {
    _file: File,
    dir: PathBuf,
}

/// What holds a directory's lock now, if anything.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Holder {
    Free,
    /// The PID written by the holder (absent if it is just starting).
    Process(Option<u32>),
}

impl DataDirLock {
    /// Creates `dir` if needed and takes its lock, or says which process holds it.
    pub fn acquire(dir: &Path, purpose: &str) -> Result<Self, String> {
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("creating data directory {}: {e}", dir.display()))?;
        let path = dir.join(LOCK_FILE);
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| format!("opening {}: {e}", path.display()))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                return Err(in_use_message(dir, &path, purpose, read_pid(&mut file)));
            }
            Err(TryLockError::Error(e)) => {
                return Err(format!("locking {}: {e}", path.display()));
            }
        }
        let pid = std::process::id();
        file.set_len(0)
            .and_then(|_| file.seek(SeekFrom::Start(0)))
            .and_then(|_| writeln!(file, "{pid}"))
            .map_err(|e| format!("writing {}: {e}", path.display()))?;
        Ok(DataDirLock {
            _file: file,
            dir: dir.to_owned(),
        })
    }

    /// The directory this lock holds.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Whether a process holds `dir`'s lock now (without taking it for longer than a
    /// moment), for commands that only read, such as `tagcast check`.
    pub fn holder(dir: &Path) -> Holder {
        let Ok(mut file) = File::open(dir.join(LOCK_FILE)) else {
            return Holder::Free;
        };
        match file.try_lock_shared() {
            Ok(()) => Holder::Free,
            Err(_) => Holder::Process(read_pid(&mut file)),
        }
    }
}

fn read_pid(file: &mut File) -> Option<u32> {
    let mut text = String::new();
    file.seek(SeekFrom::Start(0)).ok()?;
    file.read_to_string(&mut text).ok()?;
    text.trim().parse().ok()
}

fn in_use_message(dir: &Path, lock: &Path, purpose: &str, pid: Option<u32>) -> String {
    let who = match pid {
        Some(pid) => format!("another tagcast process (pid {pid})"),
        None => "another tagcast process".to_owned(),
    };
    format!(
        "cannot {purpose}: data directory {} is in use by {who}, which holds {}; stop it first \
         (one server per data directory)",
        dir.display(),
        lock.display()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_names_the_holder_and_the_lock_is_free_after_drop() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        assert_eq!(DataDirLock::holder(&data), Holder::Free);
        let first = DataDirLock::acquire(&data, "serve").unwrap();
        let err = DataDirLock::acquire(&data, "serve").unwrap_err();
        assert!(
            err.contains(&format!("pid {}", std::process::id())),
            "{err}"
        );
        assert_eq!(
            DataDirLock::holder(&data),
            Holder::Process(Some(std::process::id()))
        );
        drop(first);
        assert_eq!(DataDirLock::holder(&data), Holder::Free);
        DataDirLock::acquire(&data, "serve").unwrap();
    }
}
