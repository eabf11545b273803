//! Reading a table's changelog: the changes (`+I`/`-U`/`+U`/`-D`) each
//! commit recorded, one snapshot at a time ([`Table::changelog_of`],
//! streamed a row group at a time) or over a range ([`Table::changelog`],
//! shared by the readers of one table in this process through a cache
//! bounded in bytes, [`crate::table::ChangelogCache`]).

use std::sync::Arc;

use arrow::array::RecordBatch;
use futures::TryStreamExt;
use futures::stream::BoxStream;

use crate::error::{Error, Result};
use crate::file::FileReader;
use crate::table::{ChangelogBatch, READ_BATCH_ROWS, Table};

impl Table {
    /// The changelog rows of snapshot `id` (user columns, `_seq`, `_kind`),
    /// read a row group at a time.
    pub fn changelog_of(self: &Arc<Self>, id: u64) -> BoxStream<'static, Result<RecordBatch>> {
        use futures::StreamExt;
        let table = Arc::clone(self);
        futures::stream::once(async move {
            let snapshot = table.read_snapshot(id).await?;
            let target = table.schema().changelog_file_schema();
            let mut parts = Vec::new();
            for meta in snapshot.changelog_files {
                let groups = meta.row_groups.len();
                let reader = Arc::new(FileReader::open(&table.store, &table.dir, Arc::new(meta), &target).await?);
                parts.extend((0..groups).map(|g| (Arc::clone(&reader), g)));
            }
            Ok::<_, Error>(
                futures::stream::iter(parts)
                    .then(|(reader, group)| async move { reader.read_row_group(group, None, READ_BATCH_ROWS).await })
                    .map_ok(|batches| futures::stream::iter(batches.into_iter().map(Ok)))
                    .try_flatten(),
            )
        })
        .try_flatten()
        .boxed()
    }

    /// Changelog rows of the snapshots after `after` up to `upto` (inclusive;
    /// the latest when `None`), in commit order, all in memory: for small
    /// ranges and tests. Readers of ranges of any size stream them with
    /// [`Table::changelog_reader`].
    ///
    /// # Errors
    /// An expired snapshot in the range; corrupt files.
    pub async fn changelog(&self, after: u64, upto: Option<u64>) -> Result<Vec<ChangelogBatch>> {
        let mut reader = self.changelog_reader(after, upto);
        let mut out = Vec::new();
        while let Some(batch) = reader.next_batch().await? {
            out.push(batch);
        }
        Ok(out)
    }

    /// Streams the changelog rows of the snapshots after `after` up to
    /// `upto` (inclusive; the latest when `None`) in commit order, a row
    /// group at a time, so a reader of any range holds one row group at a
    /// time. Snapshots whose changelog is small are served from (and put
    /// in) the table's changelog cache.
    pub fn changelog_reader(&self, after: u64, upto: Option<u64>) -> ChangelogReader<'_> {
        let latest = self.lock_state().latest.as_ref().map_or(0, |s| s.id);
        ChangelogReader {
            table: self,
            next: after + 1,
            upto: upto.unwrap_or(latest).min(latest),
            current: 0,
            cached: std::collections::VecDeque::new(),
            groups: std::collections::VecDeque::new(),
            keep: None,
        }
    }

    /// How many changelog rows snapshot `id` recorded (from its metadata,
    /// remembered for recent snapshots): what a reader of its changelog
    /// takes in, for sizing work before reading it.
    ///
    /// # Errors
    /// An expired snapshot; storage failures.
    pub async fn changelog_rows(&self, id: u64) -> Result<u64> {
        if let Some(rows) = self.lock_changelogs().rows.get(&id) {
            return Ok(*rows);
        }
        let latest = self.lock_state().latest.clone().filter(|s| s.id == id);
        let snapshot = match latest {
            Some(snapshot) => snapshot,
            None => self.read_snapshot(id).await?,
        };
        let rows = snapshot.changelog_files.iter().map(|f| f.rows).sum();
        self.lock_changelogs().remember_rows(id, rows);
        Ok(rows)
    }

    fn lock_changelogs(&self) -> std::sync::MutexGuard<'_, crate::table::ChangelogCache> {
        self.changelogs.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// How many changelog files [`Table::changelog`] has read from storage
    /// (a repeated read of a recent snapshot is served from memory).
    #[doc(hidden)]
    pub fn changelog_file_reads(&self) -> u64 {
        self.changelog_file_reads.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// Changelog snapshots of at most this many rows are kept in the cache as
/// they are read; bigger ones stream through without being held.
const CACHED_SNAPSHOT_ROWS: u64 = 256 * 1024;

/// A streaming read of a range of a table's changelog
/// ([`Table::changelog_reader`]).
pub struct ChangelogReader<'a> {
    table: &'a Table,
    /// The next snapshot to open.
    next: u64,
    upto: u64,
    /// The snapshot being read.
    current: u64,
    /// Its batches still to hand out.
    cached: std::collections::VecDeque<RecordBatch>,
    /// Its row groups still to read, when it comes from files.
    groups: std::collections::VecDeque<(Arc<FileReader>, usize)>,
    /// Its batches read so far, when it is small enough to cache.
    keep: Option<Vec<RecordBatch>>,
}

impl ChangelogReader<'_> {
    /// The next batch of changes (at most a row group), `None` at the end.
    ///
    /// # Errors
    /// An expired snapshot in the range; corrupt files.
    pub async fn next_batch(&mut self) -> Result<Option<ChangelogBatch>> {
        loop {
            if let Some(batch) = self.cached.pop_front() {
                return Ok(Some(ChangelogBatch { snapshot: self.current, batch }));
            }
            if let Some((reader, group)) = self.groups.pop_front() {
                let batches = reader.read_row_group(group, None, READ_BATCH_ROWS).await?;
                if let Some(keep) = &mut self.keep {
                    keep.extend(batches.iter().cloned());
                }
                self.cached.extend(batches);
                if self.groups.is_empty()
                    && let Some(keep) = self.keep.take()
                {
                    self.table.lock_changelogs().insert(self.current, Arc::new(keep));
                }
                continue;
            }
            if self.next > self.upto {
                return Ok(None);
            }
            let id = self.next;
            self.open(id).await?;
            self.next += 1;
        }
    }

    /// Batches of changes adding up to `rows` rows (fewer only at the end
    /// of the range; a batch is split where the count is reached); empty
    /// at the end.
    ///
    /// # Errors
    /// As [`ChangelogReader::next_batch`].
    pub async fn next_rows(&mut self, rows: usize) -> Result<Vec<ChangelogBatch>> {
        let rows = rows.max(1);
        let mut out = Vec::new();
        let mut taken = 0;
        while taken < rows {
            let Some(mut change) = self.next_batch().await? else { break };
            let n = change.batch.num_rows();
            if taken + n > rows {
                let keep = rows - taken;
                self.cached.push_front(change.batch.slice(keep, n - keep));
                change.batch = change.batch.slice(0, keep);
            }
            taken += change.batch.num_rows().max(1);
            out.push(change);
        }
        Ok(out)
    }

    async fn open(&mut self, id: u64) -> Result<()> {
        let table = self.table;
        self.current = id;
        let target = table.schema().changelog_file_schema();
        let cached = table.lock_changelogs().get(id);
        // Decoded for the current definition (ALTER TABLE clears the cache).
        if let Some(batches) = cached.filter(|batches| batches.iter().all(|b| b.schema() == target)) {
            self.cached.extend(batches.iter().cloned());
            return Ok(());
        }
        let snapshot = table.read_snapshot(id).await?;
        let rows: u64 = snapshot.changelog_files.iter().map(|f| f.rows).sum();
        table.lock_changelogs().remember_rows(id, rows);
        for meta in snapshot.changelog_files {
            table.changelog_file_reads.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let groups = meta.row_groups.len();
            let reader = Arc::new(FileReader::open(&table.store, &table.dir, Arc::new(meta), &target).await?);
            self.groups.extend((0..groups).map(|g| (Arc::clone(&reader), g)));
        }
        if self.groups.is_empty() {
            table.lock_changelogs().insert(id, Arc::new(Vec::new()));
        } else {
            self.keep = (rows <= CACHED_SNAPSHOT_ROWS).then(Vec::new);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use arrow::array::{ArrayRef, Int64Array};

    use super::*;
    use crate::table::{CACHED_CHANGELOG_BYTES, ChangelogCache};

    fn batch(rows: usize) -> Arc<Vec<RecordBatch>> {
        let column: ArrayRef = Arc::new(Int64Array::from_iter_values(0..rows as i64));
        Arc::new(vec![RecordBatch::try_from_iter([("k", column)]).unwrap()])
    }

    #[test]
    fn the_changelog_cache_is_bounded_in_bytes() {
        let mut cache = ChangelogCache::default();
        // 1M rows of 8 bytes: 8 MiB each, so 8 fit in 64 MiB.
        for id in 1..=20 {
            cache.insert(id, batch(1 << 20));
            assert!(cache.bytes <= CACHED_CHANGELOG_BYTES, "{} bytes cached", cache.bytes);
        }
        assert!(cache.get(20).is_some() && cache.get(1).is_none(), "the newest stay, the oldest go");
        assert!(cache.by_snapshot.len() >= 7, "{} snapshots kept", cache.by_snapshot.len());
        // One commit bigger than the whole budget is not cached at all.
        cache.insert(21, batch(10 << 20));
        assert!(cache.get(21).is_none() && cache.get(20).is_some());
    }
}
