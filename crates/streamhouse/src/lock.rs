//! One server per data directory: an exclusive `flock` on `<data_dir>/LOCK`,
//! holding the pid of the server that took it (as Feldera's storage does).
//!
//! Two servers on one directory would each believe they own its tables:
//! their group commits would race for the same snapshot ids and each would
//! delete the other's staged files as orphans. The lock is taken before
//! anything in the directory is read, and released when the server stops —
//! or, because it is an `flock`, when its process dies however it dies, so
//! a SIGKILLed server never leaves a stale lock behind.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{Read as _, Seek as _, SeekFrom, Write as _};
use std::path::{Path, PathBuf};

/// The held lock of a data directory; dropping it releases the directory.
#[derive(Debug)]
pub struct DataDirLock {
    file: File,
    path: PathBuf,
}

/// Why the data directory could not be locked.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error(
        "data directory {dir} is in use by another streamhouse server (pid {pid}): stop that server, \
         or give this one another storage.data_dir"
    )]
    Held { dir: String, pid: String },
    #[error("cannot lock data directory {dir} (lock file {file}): {source}")]
    Io { dir: String, file: String, source: std::io::Error },
}

impl DataDirLock {
    /// Takes the lock of `data_dir` (which must exist) and records this
    /// process's pid in it.
    ///
    /// # Errors
    /// [`LockError::Held`] naming the pid of the server holding it, or the
    /// lock file cannot be opened or written.
    pub fn acquire(data_dir: &Path) -> Result<Self, LockError> {
        let path = data_dir.join("LOCK");
        let io =
            |source| LockError::Io { dir: data_dir.display().to_string(), file: path.display().to_string(), source };
        let mut file =
            OpenOptions::new().read(true).write(true).create(true).truncate(false).open(&path).map_err(io)?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                let mut pid = String::new();
                let _ = file.read_to_string(&mut pid);
                let pid = pid.trim();
                return Err(LockError::Held {
                    dir: data_dir.display().to_string(),
                    pid: if pid.is_empty() { "unknown".to_string() } else { pid.to_string() },
                });
            }
            Err(TryLockError::Error(source)) => return Err(io(source)),
        }
        file.set_len(0).map_err(io)?;
        file.seek(SeekFrom::Start(0)).map_err(io)?;
        writeln!(file, "{}", std::process::id()).map_err(io)?;
        file.sync_data().map_err(io)?;
        Ok(Self { file, path })
    }

    /// The lock file.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for DataDirLock {
    fn drop(&mut self) {
        // The pid is cleared so nobody mistakes it for a live holder; the
        // lock itself goes with the file descriptor.
        let _ = self.file.set_len(0);
        let _ = self.file.unlock();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_names_the_holder() {
        let dir = tempfile::tempdir().unwrap();
        let held = DataDirLock::acquire(dir.path()).unwrap();
        let err = DataDirLock::acquire(dir.path()).unwrap_err().to_string();
        assert!(err.contains(&dir.path().display().to_string()), "{err}");
        assert!(err.contains(&format!("pid {}", std::process::id())), "{err}");
        drop(held);
        DataDirLock::acquire(dir.path()).unwrap();
    }
}
