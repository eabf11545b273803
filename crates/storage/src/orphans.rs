//! Orphan files: what a crash or an interrupted expiry leaves behind.
//!
//! A commit writes its data, changelog and manifest files before it claims
//! its snapshot; a crash in between leaves those files named by no
//! snapshot. A transaction dropped by a crash leaves its staged files. An
//! expiry stopped half way leaves the files of a snapshot it had already
//! deleted (it deletes the snapshot first, then what only it referenced, so
//! no snapshot ever names a missing file).
//!
//! [`Table::remove_orphan_files`] (Paimon's procedure of the same name)
//! deletes the files in `data/`, `changelog/` and `manifest/` that
//! - no snapshot in `snapshot/` references (its manifest, the files the
//!   manifest lists, its changelog files),
//! - no open [`crate::Transaction`] of this process may still commit: files
//!   modified after the oldest one began are kept, and commits and
//!   compactions of this process wait while it runs,
//! - and that are older than the caller's safety margin, which covers
//!   writers in other processes (another engine on the same bucket).
//!
//! Schema versions, snapshots and consumer files are never deleted here, nor
//! anything outside those three folders. If any snapshot or manifest cannot
//! be read, nothing is deleted: a file is only an orphan when every
//! snapshot has been seen.

use std::collections::HashSet;

use futures::TryStreamExt;
use object_store::ObjectStoreExt;

use crate::error::{Error, Result};
use crate::file::ChildPath;
use crate::table::Table;

/// The folders whose files a snapshot references.
const REFERENCED_FOLDERS: [&str; 3] = ["data", "changelog", "manifest"];

impl Table {
    /// Deletes this table's orphan files last modified before `cutoff_ms`
    /// (milliseconds since the epoch) and returns their paths, relative to
    /// the table.
    ///
    /// # Errors
    /// A snapshot or manifest cannot be read (nothing is deleted then), or
    /// storage fails.
    pub async fn remove_orphan_files(&self, cutoff_ms: i64) -> Result<Vec<String>> {
        // In compaction's order: compaction lock, then commit lock.
        let _compaction = self.compaction_lock.lock().await;
        let _commits = self.commit_lock().await;
        // Files an open transaction of this process staged are newer than its start.
        let cutoff_ms = match self.oldest_open_transaction_ms() {
            Some(started) => cutoff_ms.min(started - 1_000),
            None => cutoff_ms,
        };
        let mut referenced = HashSet::new();
        for id in self.snapshot_ids().await? {
            let snapshot = match self.read_snapshot(id).await {
                Ok(snapshot) => snapshot,
                // Expired while we listed: its files are the expiry's to delete.
                Err(Error::NotFound { .. }) => continue,
                Err(e) => return Err(e),
            };
            let manifest = self.read_manifest(&snapshot).await?;
            referenced.insert(snapshot.manifest.clone());
            referenced.extend(snapshot.manifest_deltas.iter().cloned());
            referenced.extend(manifest.files.iter().map(|f| f.path.clone()));
            referenced.extend(snapshot.changelog_files.iter().map(|f| f.path.clone()));
        }
        let mut removed = Vec::new();
        for folder in REFERENCED_FOLDERS {
            let prefix = self.dir.child_path(folder);
            let listed: Vec<_> =
                self.store.list(Some(&prefix)).try_collect().await.map_err(|e| Error::store(&prefix, e))?;
            for meta in listed {
                let Some(name) = meta.location.filename() else { continue };
                let relative = format!("{folder}/{name}");
                if referenced.contains(&relative) || meta.last_modified.timestamp_millis() >= cutoff_ms {
                    continue;
                }
                match self.store.delete(&meta.location).await {
                    Ok(()) | Err(object_store::Error::NotFound { .. }) => removed.push(relative),
                    Err(e) => return Err(Error::store(&meta.location, e)),
                }
            }
        }
        if !removed.is_empty() {
            tracing::info!(table = self.name(), files = removed.len(), "removed orphan files");
        }
        Ok(removed)
    }
}

impl Table {
    /// Makes snapshot `id` of the table in `dir` its latest again (Paimon's
    /// `rollback_to`): checks that the snapshot, its manifest and every file
    /// they name are intact, then deletes the later snapshots, newest first
    /// (a crash part way leaves a shorter history, never a gap). Consumers
    /// past `id` are moved back to read from `id + 1`, which the next commit
    /// takes. Works on a table that no longer opens (a damaged latest
    /// snapshot); the caller must not have it open for writing. Returns the
    /// ids removed; their files are orphans for [`Table::remove_orphan_files`].
    ///
    /// # Errors
    /// [`Error::NotFound`] for an unknown snapshot, [`Error::Corrupt`] when
    /// snapshot `id` is damaged too, storage failures.
    pub async fn rollback_to(
        store: std::sync::Arc<dyn object_store::ObjectStore>,
        dir: object_store::path::Path,
        name: &str,
        id: u64,
    ) -> Result<Vec<u64>> {
        // The schema must read; the snapshots are checked by hand below.
        let probe = Table::open_schema_only(std::sync::Arc::clone(&store), dir.clone(), name).await?;
        let ids = probe.snapshot_ids().await?;
        if !ids.contains(&id) {
            return Err(Error::NotFound { what: format!("snapshot {id} of table {name}") });
        }
        let snapshot = probe.read_snapshot(id).await?;
        let manifest = probe.read_manifest(&snapshot).await?;
        for file in manifest.files.iter().chain(&snapshot.changelog_files) {
            let location = dir.child_path(&file.path);
            match store.head(&location).await {
                Ok(head) if head.size == file.bytes => {}
                Ok(head) => {
                    return Err(Error::corrupt(
                        &location,
                        format!("{} bytes, manifest says {}", head.size, file.bytes),
                    ));
                }
                Err(object_store::Error::NotFound { .. }) => {
                    return Err(Error::corrupt(&location, "the file is missing"));
                }
                Err(e) => return Err(Error::store(&location, e)),
            }
        }
        let mut removed = Vec::new();
        for &later in ids.iter().rev().filter(|&&later| later > id) {
            let location = dir.child_path(&crate::table::snapshot_path(later));
            match store.delete(&location).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => removed.push(later),
                Err(e) => return Err(Error::store(&location, e)),
            }
        }
        for consumer in probe.consumers().await? {
            if consumer.next_snapshot > id + 1 {
                probe.set_consumer(&consumer.name, id + 1).await?;
            }
        }
        Ok(removed)
    }
}
