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
    /// the latest when `None`), in commit order.
    ///
    /// # Errors
    /// An expired snapshot in the range; corrupt files.
    pub async fn changelog(&self, after: u64, upto: Option<u64>) -> Result<Vec<ChangelogBatch>> {
        let latest = self.lock_state().latest.as_ref().map_or(0, |s| s.id);
        let upto = upto.unwrap_or(latest).min(latest);
        let schema = self.schema();
        let target = schema.changelog_file_schema();
        let mut out = Vec::new();
        for id in after + 1..=upto {
            let cached = self.changelogs.lock().unwrap_or_else(std::sync::PoisonError::into_inner).get(id);
            let batches = match cached {
                // Decoded for the current definition (ALTER TABLE clears the cache).
                Some(batches) if batches.iter().all(|b| b.schema() == target) => batches,
                _ => {
                    let snapshot = self.read_snapshot(id).await?;
                    let mut batches = Vec::new();
                    for meta in snapshot.changelog_files {
                        self.changelog_file_reads.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        let reader = FileReader::open(&self.store, &self.dir, Arc::new(meta), &target).await?;
                        batches.extend(reader.read_all(READ_BATCH_ROWS).await?);
                    }
                    let batches = Arc::new(batches);
                    self.changelogs
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .insert(id, Arc::clone(&batches));
                    batches
                }
            };
            out.extend(batches.iter().map(|batch| ChangelogBatch { snapshot: id, batch: batch.clone() }));
        }
        Ok(out)
    }

    /// How many changelog files [`Table::changelog`] has read from storage
    /// (a repeated read of a recent snapshot is served from memory).
    #[doc(hidden)]
    pub fn changelog_file_reads(&self) -> u64 {
        self.changelog_file_reads.load(std::sync::atomic::Ordering::Relaxed)
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
