//! Universal compaction and snapshot expiry.
//!
//! Sorted runs, levels and which runs to merge are decided in
//! [`crate::levels`] (pure functions); this module carries them out.
//!
//! A partial compaction writes to the level just above the next older run
//! (merging into it when no level is free). Tombstones are dropped only when
//! every run is merged, since an older run could otherwise resurrect a key.
//!
//! Compaction reads and writes without the commit lock, one row group per
//! run in memory, and takes the lock only to commit a [`CommitKind::Compact`]
//! snapshot (same content, no changelog). Readers never wait for it.
//!
//! # Expiry
//!
//! Snapshots beyond `snapshot.num-retained.max`, or older than
//! `snapshot.time-retained` beyond `snapshot.num-retained.min`, are expired
//! oldest first: the snapshot file goes first (so a crash can leave garbage
//! but never a snapshot that points at deleted files), then its manifest and
//! changelog files, then the data files that the next snapshot's compaction
//! removed (no retained snapshot references them any more).

use std::sync::Arc;

use arrow::row::OwnedRow;
use std::sync::atomic::Ordering;

use futures::StreamExt;
use object_store::ObjectStoreExt;

use crate::error::{Error, Result};
use crate::file::{ChildPath, FileMeta, FileWriter};
use crate::levels::{MAX_LEVEL, SortedRun, pick};
use crate::merge::{MergeSpec, RunStream, merge};
use crate::scan::{FileSlice, key_converter, read_run};
use crate::schema::ValueKind;
use crate::snapshot::{CommitKind, Manifest, Snapshot};
use crate::table::{Commit, READ_BATCH_ROWS, Table, now_ms, snapshot_path};

/// Ends the level-0 run being gathered from `current` (in key order).
fn flush(runs: &mut Vec<SortedRun>, current: &mut Vec<(OwnedRow, OwnedRow, FileMeta)>) {
    if !current.is_empty() {
        runs.push(SortedRun { level: 0, files: current.drain(..).map(|(_, _, meta)| meta).collect() });
    }
}

impl Table {
    /// The sorted runs of the latest snapshot, newest first.
    pub fn sorted_runs(&self) -> Vec<SortedRun> {
        self.runs_of(&self.current().manifest)
    }

    /// The sorted runs of `manifest`, newest first: each level's files form
    /// one run, and so do consecutive level-0 files (by sequence number)
    /// whose key ranges do not overlap; level-0 files without a key index
    /// (append-only tables) are runs of their own. Files of a run are in key order.
    pub(crate) fn runs_of(&self, manifest: &Manifest) -> Vec<SortedRun> {
        let converter = key_converter(&self.lock_state().schema).ok();
        let range = |meta: &FileMeta| {
            let keys = self.key_index(converter.as_ref()?, meta).ok()??;
            Some((keys.row(0).owned(), keys.row(keys.num_rows().checked_sub(1)?).owned()))
        };
        let mut level0: Vec<&FileMeta> = manifest.files.iter().filter(|f| f.level == 0).collect();
        level0.sort_by_key(|f| std::cmp::Reverse(f.max_seq));
        let mut runs: Vec<SortedRun> = Vec::new();
        // Key ranges of the newest run's files, by first key, when they are known.
        let mut current: Vec<(OwnedRow, OwnedRow, FileMeta)> = Vec::new();
        for meta in level0 {
            let Some((first, last)) = range(meta) else {
                flush(&mut runs, &mut current);
                runs.push(SortedRun { level: 0, files: vec![meta.clone()] });
                continue;
            };
            let at = current.partition_point(|(a, _, _)| *a < first);
            let disjoint = current.get(at).is_none_or(|(a, _, _)| *a > last) && (at == 0 || current[at - 1].1 < first);
            if !disjoint {
                flush(&mut runs, &mut current);
            }
            let at = current.partition_point(|(a, _, _)| *a < first);
            current.insert(at, (first, last, meta.clone()));
        }
        flush(&mut runs, &mut current);
        for level in 1..=MAX_LEVEL {
            let files: Vec<FileMeta> = manifest.files.iter().filter(|f| f.level == level).cloned().collect();
            if !files.is_empty() {
                runs.push(SortedRun { level, files });
            }
        }
        runs
    }

    /// Runs one compaction if the table's options call for one (or, when
    /// `full`, merges every run into one without tombstones). Returns the
    /// compaction's snapshot, or `None` if there was nothing to do.
    ///
    /// # Errors
    /// Corrupt files; storage failures; a conflicting commit in another process.
    pub async fn compact(&self, full: bool) -> Result<Option<Snapshot>> {
        if self.is_closed() {
            return Ok(None);
        }
        let _one_at_a_time = self.compaction_lock.lock().await;
        let state = self.current();
        let schema = state.schema.clone();
        let runs = self.runs_of(&state.manifest);
        let (count, level) = if full {
            let done = runs.len() == 1
                && runs[0].level == MAX_LEVEL
                && runs[0].files.iter().all(|f| f.deletes == 0 && f.deleted.is_none());
            if runs.is_empty() || done {
                return Ok(None);
            }
            (runs.len(), MAX_LEVEL)
        } else {
            match pick(&runs, &schema.options) {
                Some(unit) => unit,
                None => return Ok(None),
            }
        };
        let picked = &runs[..count];
        let drop_deletes = count == runs.len();
        let picked_files: Vec<FileMeta> = picked.iter().flat_map(|r| r.files.iter().cloned()).collect();
        if schema.has_primary_key()
            && let Some(ordered) = self.without_overlaps(&schema, &picked_files)?
            && (!drop_deletes || ordered.iter().all(|f| f.deletes == 0))
        {
            let outputs = self.move_or_concatenate(&schema, ordered, level).await?;
            return self.commit_compaction(&state, picked_files, outputs).await;
        }
        let inputs_rows: u64 = picked.iter().flat_map(|r| &r.files).map(|f| f.rows).sum();
        let inputs_bytes: u64 = picked.iter().flat_map(|r| &r.files).map(|f| f.bytes).sum();
        let target_rows = (schema.options.target_file_size as u128 * inputs_rows.max(1) as u128
            / inputs_bytes.max(1) as u128)
            .clamp(schema.options.row_group_rows.max(1) as u128, u64::MAX as u128) as u64;
        let user = schema.schema.fields().len();
        let all_columns: Vec<usize> = (0..user + 2).collect();
        let inputs: Vec<RunStream> = picked
            .iter()
            .map(|run| {
                let slices = run
                    .files
                    .iter()
                    .map(|f| FileSlice { meta: Arc::new(f.clone()), row_groups: (0..f.row_groups.len()).collect() })
                    .collect();
                let target = schema.data_file_schema();
                read_run(
                    Arc::clone(&self.store),
                    self.dir.clone(),
                    slices,
                    target,
                    all_columns.clone(),
                    READ_BATCH_ROWS,
                )
            })
            .collect();
        let mut merged = if schema.has_primary_key() {
            let spec = MergeSpec {
                key_columns: schema.primary_key.clone(),
                seq_column: user,
                kind_column: user + 1,
                output_columns: all_columns.clone(),
                output_schema: schema.data_file_schema(),
                drop_deletes,
                lower: None,
                upper: None,
                batch_size: READ_BATCH_ROWS,
            };
            merge(inputs, Arc::new(key_converter(&schema)?), spec)
        } else {
            // Append-only: concatenate, oldest run first.
            futures::stream::iter(inputs.into_iter().rev()).flatten().boxed()
        };
        let delete_code = Some(ValueKind::Delete as i8);
        let mut outputs: Vec<FileMeta> = Vec::new();
        let mut writer = None;
        while let Some(batch) = merged.next().await.transpose()? {
            let current = match &mut writer {
                Some(w) => w,
                None => {
                    // Streamed out as it is written: a 128 MiB run is never held in memory.
                    let file = self.new_file("data", level, schema.primary_key.clone(), delete_code, &schema);
                    writer
                        .insert(FileWriter::streaming(file, &schema.data_file_schema(), &self.store, &self.dir).await?)
                }
            };
            current.write(&batch)?;
            current.send_parts().await?;
            if current.rows() >= target_rows
                && let Some(full) = writer.take()
            {
                outputs.push(full.finish(&self.store, &self.dir).await?);
            }
        }
        if let Some(last) = writer.take()
            && last.rows() > 0
        {
            outputs.push(last.finish(&self.store, &self.dir).await?);
        }
        let outputs = outputs.into_iter().map(|o| (o, Vec::new())).collect();
        self.commit_compaction(&state, picked_files, outputs).await
    }

    /// Commits a compaction begun on `base` that replaced `removed` by
    /// `outputs` (which may include some of the same files at a new level),
    /// unless a concurrent commit already removed any of them.
    ///
    /// With deletion vectors, each output is either the rows of some inputs
    /// in order (a moved or concatenated file: the paths of those inputs),
    /// which takes over their vectors as they are now, or merged (no paths),
    /// whose rows of keys written since `base` are marked now.
    async fn commit_compaction(
        &self,
        base: &crate::table::State,
        removed: Vec<FileMeta>,
        outputs: Vec<(FileMeta, Vec<String>)>,
    ) -> Result<Option<Snapshot>> {
        let guard = self.commit_lock().await;
        let current = self.current();
        let still_live = removed.iter().all(|r| current.manifest.files.iter().any(|f| f.path == r.path));
        if !still_live {
            for (meta, _) in outputs.iter().filter(|(o, _)| !removed.iter().any(|r| r.path == o.path)) {
                let _ = self.store.delete(&self.dir.child_path(&meta.path)).await;
            }
            return Ok(None);
        }
        let mut deleted = crate::deletion::Marks::new();
        if current.schema.deletion_vectors() {
            let mut merged: Vec<&FileMeta> = Vec::new();
            for (output, sources) in &outputs {
                let mut offset = 0;
                for source in sources {
                    let Some(now) = current.manifest.files.iter().find(|f| &f.path == source) else { continue };
                    if let Some(vector) = &now.deleted {
                        let positions = vector.positions().iter().map(|p| p + offset);
                        deleted.entry(output.path.clone()).or_default().extend(positions);
                    }
                    offset += now.rows;
                }
                if sources.is_empty() {
                    merged.push(output);
                }
            }
            let base_id = base.latest.as_ref().map(|s| s.id);
            if base_id != current.latest.as_ref().map(|s| s.id) && !merged.is_empty() {
                let written: Vec<&FileMeta> = current
                    .manifest
                    .files
                    .iter()
                    .filter(|f| !base.manifest.files.iter().any(|b| b.path == f.path))
                    .collect();
                for (path, positions) in self.replaced_rows(&current.schema, &merged, &written).await? {
                    deleted.entry(path).or_default().extend(positions);
                }
            }
        }
        let commit = Commit {
            kind: Some(CommitKind::Compact),
            added: outputs
                .into_iter()
                .map(|(mut output, sources)| {
                    if !sources.is_empty() {
                        // Taken over from the sources as they are now.
                        output.deleted = None;
                    }
                    output
                })
                .collect(),
            removed,
            changelog: vec![],
            next_sequence: None,
            properties: Default::default(),
            watermark: None,
            deleted,
        };
        self.commit_locked(&guard, commit).await.map(Some)
    }

    /// `files` in key order if no two of them overlap (and all have a key index).
    fn without_overlaps(
        &self,
        schema: &crate::schema::TableSchema,
        files: &[FileMeta],
    ) -> Result<Option<Vec<FileMeta>>> {
        let converter = key_converter(schema)?;
        let mut ranged = Vec::with_capacity(files.len());
        for meta in files {
            let Some(keys) = self.key_index(&converter, meta)? else { return Ok(None) };
            ranged.push((keys.row(0).owned(), keys.row(keys.num_rows() - 1).owned(), meta.clone()));
        }
        ranged.sort_by(|a, b| a.0.cmp(&b.0));
        if ranged.windows(2).any(|w| w[1].0 <= w[0].1) {
            return Ok(None);
        }
        Ok(Some(ranged.into_iter().map(|(_, _, meta)| meta).collect()))
    }

    /// Compaction of runs whose files do not overlap: nothing to merge. Files
    /// of at least half the target size move to `level` as they are (only the
    /// manifest changes); runs of consecutive smaller files are concatenated
    /// into files of about the target size, so small files do not pile up.
    async fn move_or_concatenate(
        &self,
        schema: &crate::schema::TableSchema,
        ordered: Vec<FileMeta>,
        level: u32,
    ) -> Result<Vec<(FileMeta, Vec<String>)>> {
        let target = schema.options.target_file_size;
        let mut outputs = Vec::new();
        let mut group: Vec<FileMeta> = Vec::new();
        for meta in ordered {
            if meta.bytes >= target / 2 && !reencoded(schema, &meta, level) {
                outputs.extend(self.concatenate(schema, std::mem::take(&mut group), level).await?);
                let sources = vec![meta.path.clone()];
                outputs.push((FileMeta { level, ..meta }, sources));
                continue;
            }
            group.push(meta);
            if group.iter().map(|f| f.bytes).sum::<u64>() >= target {
                outputs.extend(self.concatenate(schema, std::mem::take(&mut group), level).await?);
            }
        }
        outputs.extend(self.concatenate(schema, group, level).await?);
        Ok(outputs)
    }

    /// One file at `level` with the rows of `group` (non-overlapping, in key
    /// order); a single file just moves, unless it is [`reencoded`].
    async fn concatenate(
        &self,
        schema: &crate::schema::TableSchema,
        mut group: Vec<FileMeta>,
        level: u32,
    ) -> Result<Option<(FileMeta, Vec<String>)>> {
        let sources: Vec<String> = group.iter().map(|f| f.path.clone()).collect();
        let reencode = group.iter().any(|f| reencoded(schema, f, level));
        if group.len() <= 1 && !reencode {
            return Ok(group.pop().map(|meta| (FileMeta { level, ..meta }, sources)));
        }
        if !reencode {
            let new = self.new_file("data", level, schema.primary_key.clone(), Some(ValueKind::Delete as i8), schema);
            let target = schema.data_file_schema();
            if let Some(copied) = crate::file::concatenate(&self.store, &self.dir, &group, new, &target).await? {
                return Ok(Some((copied, sources)));
            }
        }
        // Files of an earlier definition, or encoded for level 0: read them
        // and write them anew.
        let all_columns: Vec<usize> = (0..schema.schema.fields().len() + 2).collect();
        let slices = group
            .into_iter()
            .map(|f| {
                let row_groups = (0..f.row_groups.len()).collect();
                FileSlice { meta: Arc::new(f), row_groups }
            })
            .collect();
        let target = schema.data_file_schema();
        let mut rows =
            read_run(Arc::clone(&self.store), self.dir.clone(), slices, target, all_columns, READ_BATCH_ROWS);
        let delete_code = Some(ValueKind::Delete as i8);
        let mut writer = self.file_writer("data", level, schema.primary_key.clone(), delete_code, schema)?;
        while let Some(batch) = rows.next().await.transpose()? {
            writer.write(&batch)?;
        }
        Ok(Some((writer.finish(&self.store, &self.dir).await?, sources)))
    }

    /// Expires snapshots by the table's retention options, never one at or
    /// after `protect` (a snapshot a reader still needs) or after the oldest
    /// snapshot a registered consumer needs ([`crate::consumer`]). Returns how many
    /// were expired.
    ///
    /// # Errors
    /// Storage failures; damaged snapshot files.
    pub async fn expire(&self, now_ms: i64, protect: Option<u64>) -> Result<usize> {
        let options = self.schema().options;
        // Nor one a registered consumer still needs.
        // Nor one a live reader in this process still needs.
        let protect = [protect, self.consumers_need(now_ms).await?, self.held_from()].into_iter().flatten().min();
        let ids = self.snapshot_ids().await?;
        let mut remaining = ids.len() as u64;
        let mut expired = 0;
        for (i, &id) in ids.iter().enumerate() {
            if remaining <= options.snapshot_num_retained_min || protect.is_some_and(|p| id >= p) {
                break;
            }
            let snapshot = match self.read_snapshot(id).await {
                Ok(s) => s,
                Err(Error::NotFound { .. }) => continue,
                Err(e) => return Err(e),
            };
            let old = now_ms.saturating_sub(snapshot.commit_time_ms) > options.snapshot_time_retained_ms as i64;
            if !(remaining > options.snapshot_num_retained_max || old) {
                break;
            }
            let next = match ids.get(i + 1) {
                Some(&next) => Some(self.read_snapshot(next).await?),
                None => None,
            };
            self.expire_one(&snapshot, next.as_ref()).await?;
            remaining -= 1;
            expired += 1;
        }
        Ok(expired)
    }

    async fn expire_one(&self, snapshot: &Snapshot, next: Option<&Snapshot>) -> Result<()> {
        let mut doomed = vec![self.dir.child_path(&snapshot_path(snapshot.id))];
        // Its manifest files, but those the next snapshot still builds on
        // (a later one only builds on those the next one does).
        let kept: Vec<&String> =
            next.iter().flat_map(|n| std::iter::once(&n.manifest).chain(&n.manifest_deltas)).collect();
        doomed.extend(
            std::iter::once(&snapshot.manifest)
                .chain(&snapshot.manifest_deltas)
                .filter(|path| !kept.contains(path))
                .map(|path| self.dir.child_path(path)),
        );
        // A changelog that is a data file (inserts only) lives as long as the data file.
        doomed.extend(
            snapshot
                .changelog_files
                .iter()
                .filter(|f| f.path.starts_with("changelog/"))
                .map(|f| self.dir.child_path(&f.path)),
        );
        doomed.extend(next.iter().flat_map(|n| &n.removed_files).map(|p| self.dir.child_path(p)));
        for location in doomed {
            match self.store.delete(&location).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(Error::store(&location, e)),
            }
        }
        Ok(())
    }

    /// Starts background compaction and expiry unless they are running.
    /// Call after commits; needs a Tokio runtime.
    pub fn schedule_maintenance(self: &Arc<Self>) {
        if self.maintaining.swap(true, Ordering::SeqCst) {
            return;
        }
        let table = Arc::clone(self);
        tokio::spawn(async move {
            loop {
                match table.compact(false).await {
                    Ok(Some(_)) => continue,
                    Ok(None) => break,
                    Err(e) => {
                        tracing::warn!(table = table.name(), error = %e, "compaction failed");
                        break;
                    }
                }
            }
            if let Err(e) = table.expire(now_ms(), None).await {
                tracing::warn!(table = table.name(), error = %e, "snapshot expiry failed");
            }
            table.maintaining.store(false, Ordering::SeqCst);
        });
    }
}

/// Whether `file`, going to `level`, is written anew rather than moved or
/// copied chunk by chunk: a level-0 file (no dictionaries: cheap to write on
/// every commit) going to the last level, where rows settle to be read by
/// every query. Plain-encoded strings there cost scans ≈ 1.6× their
/// dictionary-encoded read (TPC-H q19's filters on `l_shipmode` and
/// `l_shipinstruct`), and a load in key order reached the last level only
/// by moves. Tables without a changelog write level-0 encoding at every
/// level ([`crate::file`]): nothing to gain.
fn reencoded(schema: &crate::schema::TableSchema, file: &FileMeta, level: u32) -> bool {
    // (A file with deleted positions keeps them by moving.)
    level == MAX_LEVEL && file.level == 0 && file.deleted.is_none() && !schema.options.no_changelog
}
