//! A local disk cache of file ranges read from remote object storage.
//!
//! Scans read Parquet files by byte ranges — the footer, then only the
//! column chunks they need ([`crate::file`]). On S3 each range is a request
//! over the network; [`RangeCache`] keeps the ranges read recently in files
//! under a local directory, up to a size, so a repeated scan of the same
//! columns reads the local disk instead.
//!
//! Only Parquet files (`*.parquet`) are cached: their names are UUIDs, never
//! reused, and their bytes never change, so a cached range can never be
//! stale. Snapshots, manifests, schemas and consumer files always go to the
//! store (a snapshot id is reused after a rollback; consumer files are
//! overwritten). Least recently used ranges are evicted first. The cache
//! directory is emptied when the cache opens (a range cut short by a crash
//! must not be served), and an entry whose file has the wrong length is a
//! miss. Writes, listings and deletes pass through; a deleted file's ranges
//! are dropped.

use std::collections::{BTreeMap, HashMap};
use std::fmt::{self, Display};
use std::ops::Range;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore, PutMultipartOptions,
    PutOptions, PutPayload, PutResult,
};

/// An object store in front of `inner` that caches ranges of Parquet files
/// on the local disk.
#[derive(Debug)]
pub struct RangeCache {
    inner: Arc<dyn ObjectStore>,
    shared: Arc<Shared>,
}

/// The cache itself, shared with the delete streams that forget ranges.
#[derive(Debug)]
struct Shared {
    dir: PathBuf,
    capacity: u64,
    index: Mutex<Index>,
    hits: AtomicU64,
    misses: AtomicU64,
}

#[derive(Debug, Default)]
struct Index {
    entries: HashMap<(Path, u64, u64), Entry>,
    /// Use order: tick → key, oldest first.
    by_use: BTreeMap<u64, (Path, u64, u64)>,
    bytes: u64,
    tick: u64,
    next_file: u64,
}

#[derive(Debug, Clone)]
struct Entry {
    file: u64,
    len: u64,
    used: u64,
}

impl Index {
    fn touch(&mut self, key: &(Path, u64, u64)) -> Option<Entry> {
        self.tick += 1;
        let tick = self.tick;
        let entry = self.entries.get_mut(key)?;
        self.by_use.remove(&entry.used);
        entry.used = tick;
        self.by_use.insert(tick, key.clone());
        Some(entry.clone())
    }

    fn remove(&mut self, key: &(Path, u64, u64)) -> Option<Entry> {
        let entry = self.entries.remove(key)?;
        self.by_use.remove(&entry.used);
        self.bytes -= entry.len;
        Some(entry)
    }
}

impl RangeCache {
    /// A cache of at most `capacity` bytes in `dir` (created, and emptied).
    ///
    /// # Errors
    /// `dir` cannot be created or emptied.
    pub fn new(inner: Arc<dyn ObjectStore>, dir: PathBuf, capacity: u64) -> std::io::Result<Self> {
        if dir.exists() {
            std::fs::remove_dir_all(&dir)?;
        }
        std::fs::create_dir_all(&dir)?;
        let shared = Shared {
            dir,
            capacity,
            index: Mutex::new(Index::default()),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
        };
        Ok(Self { inner, shared: Arc::new(shared) })
    }

    /// Ranges served from the local disk, and fetched from the store.
    pub fn hits_and_misses(&self) -> (u64, u64) {
        (self.shared.hits.load(Ordering::Relaxed), self.shared.misses.load(Ordering::Relaxed))
    }
}

impl Shared {
    fn index(&self) -> std::sync::MutexGuard<'_, Index> {
        self.index.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn file(&self, file: u64) -> PathBuf {
        self.dir.join(format!("{file:016x}"))
    }

    /// The cached bytes of `range` of `location`, if any.
    async fn lookup(&self, location: &Path, range: &Range<u64>) -> Option<Bytes> {
        let key = (location.clone(), range.start, range.end);
        let entry = self.index().touch(&key)?;
        match tokio::fs::read(self.file(entry.file)).await {
            Ok(bytes) if bytes.len() as u64 == entry.len => Some(Bytes::from(bytes)),
            _ => {
                self.index().remove(&key);
                None
            }
        }
    }

    /// Keeps `bytes` (the range `range` of `location`), evicting the least
    /// recently used ranges to stay within the capacity. Best effort: a
    /// range that cannot be written is simply not cached.
    async fn keep(&self, location: &Path, range: &Range<u64>, bytes: &Bytes) {
        let len = bytes.len() as u64;
        if len > self.capacity / 4 {
            return;
        }
        let file = {
            let mut index = self.index();
            index.next_file += 1;
            index.next_file
        };
        if tokio::fs::write(self.file(file), bytes).await.is_err() {
            return;
        }
        let mut evicted = Vec::new();
        {
            let mut index = self.index();
            index.tick += 1;
            let tick = index.tick;
            let key = (location.clone(), range.start, range.end);
            if let Some(old) = index.remove(&key) {
                evicted.push(old.file);
            }
            index.entries.insert(key.clone(), Entry { file, len, used: tick });
            index.by_use.insert(tick, key);
            index.bytes += len;
            while index.bytes > self.capacity {
                let Some((_, oldest)) = index.by_use.pop_first() else { break };
                if let Some(entry) = index.entries.remove(&oldest) {
                    index.bytes -= entry.len;
                    evicted.push(entry.file);
                }
            }
        }
        for file in evicted {
            let _ = tokio::fs::remove_file(self.file(file)).await;
        }
    }

    /// Drops every cached range of `location`.
    async fn forget(&self, location: &Path) {
        let files: Vec<u64> = {
            let mut index = self.index();
            let keys: Vec<_> = index.entries.keys().filter(|(path, _, _)| path == location).cloned().collect();
            keys.iter().filter_map(|key| index.remove(key)).map(|entry| entry.file).collect()
        };
        for file in files {
            let _ = tokio::fs::remove_file(self.file(file)).await;
        }
    }
}

fn cacheable(location: &Path) -> bool {
    location.extension() == Some("parquet")
}

impl Display for RangeCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RangeCache({}, {})", self.shared.dir.display(), self.inner)
    }
}

#[async_trait]
impl ObjectStore for RangeCache {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> object_store::Result<PutResult> {
        self.inner.put_opts(location, payload, opts).await
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> object_store::Result<Box<dyn MultipartUpload>> {
        self.inner.put_multipart_opts(location, opts).await
    }

    async fn get_opts(&self, location: &Path, options: GetOptions) -> object_store::Result<GetResult> {
        self.inner.get_opts(location, options).await
    }

    async fn get_ranges(&self, location: &Path, ranges: &[Range<u64>]) -> object_store::Result<Vec<Bytes>> {
        if !cacheable(location) {
            return self.inner.get_ranges(location, ranges).await;
        }
        let cache = &self.shared;
        let mut out: Vec<Option<Bytes>> = Vec::with_capacity(ranges.len());
        for range in ranges {
            out.push(cache.lookup(location, range).await);
        }
        let missing: Vec<Range<u64>> =
            ranges.iter().zip(&out).filter(|(_, got)| got.is_none()).map(|(r, _)| r.clone()).collect();
        let hits = (ranges.len() - missing.len()) as u64;
        cache.hits.fetch_add(hits, Ordering::Relaxed);
        if !missing.is_empty() {
            cache.misses.fetch_add(missing.len() as u64, Ordering::Relaxed);
            let fetched = self.inner.get_ranges(location, &missing).await?;
            let mut fetched = missing.iter().zip(fetched);
            for slot in out.iter_mut().filter(|slot| slot.is_none()) {
                if let Some((range, bytes)) = fetched.next() {
                    cache.keep(location, range, &bytes).await;
                    *slot = Some(bytes);
                }
            }
        }
        Ok(out.into_iter().map(Option::unwrap_or_default).collect())
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, object_store::Result<Path>>,
    ) -> BoxStream<'static, object_store::Result<Path>> {
        // A deleted file's ranges are forgotten as its delete completes.
        let shared = Arc::clone(&self.shared);
        self.inner
            .delete_stream(locations)
            .and_then(move |location| {
                let shared = Arc::clone(&shared);
                async move {
                    if cacheable(&location) {
                        shared.forget(&location).await;
                    }
                    Ok(location)
                }
            })
            .boxed()
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        self.inner.list(prefix)
    }

    fn list_with_offset(
        &self,
        prefix: Option<&Path>,
        offset: &Path,
    ) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        self.inner.list_with_offset(prefix, offset)
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> object_store::Result<ListResult> {
        self.inner.list_with_delimiter(prefix).await
    }

    async fn copy_opts(&self, from: &Path, to: &Path, options: CopyOptions) -> object_store::Result<()> {
        self.inner.copy_opts(from, to, options).await
    }
}

#[cfg(test)]
mod tests {
    use object_store::ObjectStoreExt;
    use object_store::memory::InMemory;

    use super::*;

    #[tokio::test]
    async fn ranges_are_served_locally_and_evicted_least_recently_used_first() {
        let remote: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
        let data = Path::from("t/data/a.parquet");
        remote.put(&data, PutPayload::from(vec![7u8; 4000])).await.unwrap();
        let snapshot = Path::from("t/snapshot/snapshot-1");
        remote.put(&snapshot, PutPayload::from_static(b"one")).await.unwrap();
        let dir = tempfile::tempdir().unwrap();
        let cache = RangeCache::new(Arc::clone(&remote), dir.path().join("cache"), 1000).unwrap();
        let read = |r: Range<u64>| {
            let cache = &cache;
            let data = data.clone();
            async move { cache.get_ranges(&data, &[r]).await.unwrap().remove(0) }
        };
        assert_eq!(read(0..200).await.len(), 200);
        assert_eq!(cache.hits_and_misses(), (0, 1));
        assert_eq!(read(0..200).await, Bytes::from(vec![7u8; 200]));
        assert_eq!(cache.hits_and_misses(), (1, 1), "the second read is local");
        // Six ranges of 200 bytes do not fit in 1000: the least recently used (0..200) goes.
        for start in [200, 400, 600, 800, 1000] {
            read(start..start + 200).await;
        }
        assert_eq!(cache.hits_and_misses(), (1, 6));
        read(0..200).await;
        assert_eq!(cache.hits_and_misses(), (1, 7), "0..200 was evicted; bringing it back evicts 200..400");
        read(400..600).await;
        assert_eq!(cache.hits_and_misses(), (2, 7));
        read(200..400).await;
        assert_eq!(cache.hits_and_misses(), (2, 8));
        // Other files are never cached: a snapshot id can be reused after a rollback.
        let whole = 0..3u64;
        cache.get_ranges(&snapshot, std::slice::from_ref(&whole)).await.unwrap();
        cache.get_ranges(&snapshot, std::slice::from_ref(&whole)).await.unwrap();
        assert_eq!(cache.hits_and_misses(), (2, 8));
        // A deleted file's ranges go with it.
        cache.delete(&data).await.unwrap();
        assert!(cache.shared.index().entries.is_empty());
    }
}
