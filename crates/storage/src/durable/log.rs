//! Group commit through a write-ahead log: small durable puts cost one
//! synced append, shared by every put of the group, instead of a file each.
//!
//! A commit of a Dynamic Table writes a data file, a manifest and a snapshot.
//! Made durable file by file ([`DurableStore`]) that is, per commit, four
//! file creations, renames, `fdatasync`s and directory `fsync`s, one after
//! the other — the cost that kept small durable writes far behind
//! PostgreSQL, whose commits are one synced append to its WAL.
//! [`LogStore`] does what PostgreSQL does underneath the object-store
//! interface, so the table code above it does not change:
//! - a put of at most [`LogOptions::direct_bytes`] appends one record (the
//!   path and bytes, checksummed) to the current log segment
//!   (`_log/segment-<n>`) and keeps the object in memory, where reads find
//!   it; it returns once the log is synced up to its record, and one
//!   `fdatasync` covers every record appended before it started (group
//!   commit across all writers and tables); a put marked
//!   [`DeferSync`](super::DeferSync) returns once appended, made durable by
//!   the next synced record (a commit's data files and manifest by its
//!   snapshot claim: one `fdatasync` per commit group, not three);
//! - a delete appends a record too, so replay never brings a file back;
//! - bigger puts and multipart uploads go straight to the durable store (a
//!   Parquet file of a bulk load is one sequential write either way), and
//!   append a record that makes replay forget any logged version;
//! - when the objects in memory or the segment grow past
//!   [`LogOptions::flush_bytes`], a background flush starts a new segment,
//!   writes the older segments' live objects as files, syncs them (one
//!   `fdatasync` each, directories once), drops them from memory and
//!   deletes those segments. Most of a table's small files — the level-0
//!   files of single-row commits — are compacted away before that and never
//!   reach the disk as files;
//! - [`LogStore::open`] replays what a crash or stop left in the log: the
//!   last record of each path decides (a put writes the file, a delete
//!   removes it), then the segments are deleted. A torn record can only be
//!   the tail of the last segment, after the last sync — a write nobody was
//!   told had committed — and replay stops there; a bad record anywhere
//!   else is corruption and opening fails, naming the segment.
//!
//! After a failed append or sync nothing more is written (the kernel may
//! have dropped the unsynced pages: PostgreSQL's "fsyncgate" lesson); the
//! server must be restarted, and replay decides what had committed.
//!
//! Only one process may use a log (the data directory is locked); conditional
//! creates are checked against memory and the directory under one lock.

use std::collections::{HashMap, HashSet};
use std::fmt::{self, Display};
use std::ops::Range;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use async_trait::async_trait;
use bytes::Bytes;
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};
use object_store::memory::InMemory;
use object_store::path::Path;
use object_store::{
    CopyOptions, GetOptions, GetResult, ListResult, MultipartUpload, ObjectMeta, ObjectStore, ObjectStoreExt, PutMode,
    PutMultipartOptions, PutOptions, PutPayload, PutResult, UploadPart,
};

use super::{DeferSync, DurableStore};

/// Where the log's segments live, hidden from listings.
const LOG_DIR: &str = "_log";
const MAGIC: &[u8; 8] = b"SHLOG001";
const PUT: u8 = 1;
const DELETE: u8 = 2;
const FORGET: u8 = 3;
/// Record header: body length u32 LE, crc32 of the body u32 LE.
const HEADER: usize = 8;

/// Sizes that decide what is logged and when the log is flushed.
#[derive(Debug, Clone, Copy)]
pub struct LogOptions {
    /// Puts of more bytes than this are written as files directly.
    pub direct_bytes: usize,
    /// A flush starts when the objects held in memory, or the current
    /// segment, grow past this many bytes.
    pub flush_bytes: usize,
}

impl Default for LogOptions {
    fn default() -> Self {
        Self { direct_bytes: 1 << 20, flush_bytes: 64 << 20 }
    }
}

/// A durable object store that logs small writes: see the module docs.
#[derive(Debug, Clone)]
pub struct LogStore {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    durable: DurableStore,
    options: LogOptions,
    /// Objects whose only durable copy is in the log.
    memory: InMemory,
    /// Serialises changes of the name space: the check of a conditional
    /// create with its put, a record's append with the change in memory, a
    /// flushed file's write with the deletes of that path.
    names: tokio::sync::Mutex<()>,
    state: Mutex<State>,
    /// The log position known synced; its lock is held while syncing.
    synced: tokio::sync::Mutex<u64>,
    flushing: AtomicBool,
}

#[derive(Debug, Default)]
struct State {
    /// The objects in `memory`, with the segment that logged them.
    held: HashMap<Path, Held>,
    held_bytes: usize,
    segment: u64,
    segment_bytes: usize,
    /// Bytes appended to the log since open, over all segments.
    appended: u64,
    next_version: u64,
    /// Set by a failed append or sync: no more writes.
    failed: Option<String>,
}

#[derive(Debug, Clone, Copy)]
struct Held {
    version: u64,
    segment: u64,
    size: usize,
}

fn segment_path(segment: u64) -> Path {
    Path::from(format!("{LOG_DIR}/segment-{segment:020}"))
}

fn is_log(location: &Path) -> bool {
    location.parts().next().is_some_and(|p| p.as_ref() == LOG_DIR)
}

fn generic(message: String) -> object_store::Error {
    object_store::Error::Generic { store: "log", source: message.into() }
}

fn record(op: u8, location: &Path, payload: &[u8]) -> Bytes {
    let path = location.as_ref().as_bytes();
    let mut body = Vec::with_capacity(1 + 4 + path.len() + payload.len());
    body.push(op);
    body.extend_from_slice(&u32::try_from(path.len()).expect("paths are short").to_le_bytes());
    body.extend_from_slice(path);
    body.extend_from_slice(payload);
    let mut out = Vec::with_capacity(HEADER + body.len());
    out.extend_from_slice(&u32::try_from(body.len()).expect("logged puts are small").to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(&body).to_le_bytes());
    out.extend_from_slice(&body);
    Bytes::from(out)
}

/// The records of one segment, in order; `Err(offset)` where a record is
/// torn or damaged, with the records before it.
fn records(segment: &Bytes) -> (Vec<(u8, Path, Bytes)>, Option<usize>) {
    let mut out = Vec::new();
    if segment.len() < MAGIC.len() || &segment[..MAGIC.len()] != MAGIC {
        return (out, Some(0));
    }
    let mut at = MAGIC.len();
    while at < segment.len() {
        let Some(header) = segment.get(at..at + HEADER) else { return (out, Some(at)) };
        let len = u32::from_le_bytes(header[..4].try_into().expect("4 bytes")) as usize;
        let crc = u32::from_le_bytes(header[4..].try_into().expect("4 bytes"));
        let Some(body) = segment.get(at + HEADER..at + HEADER + len) else { return (out, Some(at)) };
        if crc32fast::hash(body) != crc || body.len() < 5 {
            return (out, Some(at));
        }
        let path_len = u32::from_le_bytes(body[1..5].try_into().expect("4 bytes")) as usize;
        let Some(Ok(path)) = body.get(5..5 + path_len).map(std::str::from_utf8) else { return (out, Some(at)) };
        let Ok(path) = Path::parse(path) else { return (out, Some(at)) };
        let start = at + HEADER + 5 + path_len;
        out.push((body[0], path, segment.slice(start..at + HEADER + len)));
        at += HEADER + len;
    }
    (out, None)
}

impl LogStore {
    /// Opens the log kept in `durable`: replays what it holds into files,
    /// deletes it and starts a new segment.
    ///
    /// # Errors
    /// A damaged record before the last segment's tail, or storage failures.
    pub async fn open(durable: DurableStore, options: LogOptions) -> object_store::Result<Self> {
        let mut segments: Vec<(u64, Path)> = durable
            .list(Some(&Path::from(LOG_DIR)))
            .map_ok(|meta| meta.location)
            .try_collect::<Vec<_>>()
            .await?
            .into_iter()
            .filter_map(|location| {
                let n = location.filename()?.strip_prefix("segment-")?.parse().ok()?;
                Some((n, location))
            })
            .collect();
        segments.sort();
        let mut last: HashMap<Path, (u8, Bytes)> = HashMap::new();
        for (i, (_, location)) in segments.iter().enumerate() {
            let bytes = durable.get(location).await?.bytes().await?;
            let (found, damaged) = records(&bytes);
            if let Some(offset) = damaged
                && i + 1 < segments.len()
            {
                return Err(generic(format!(
                    "the write-ahead log segment {location} is damaged at byte {offset}; \
                     it was synced before a newer segment began, so this is corruption, not a torn write"
                )));
            }
            for (op, path, payload) in found {
                last.insert(path, (op, payload));
            }
        }
        let mut written = Vec::new();
        for (path, (op, payload)) in last {
            match op {
                PUT => {
                    durable.unsynced().put(&path, PutPayload::from(payload)).await?;
                    written.push(path);
                }
                DELETE => match durable.delete(&path).await {
                    Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                    Err(e) => return Err(e),
                },
                _ => {}
            }
        }
        durable.sync_written(&written).await?;
        if !written.is_empty() {
            tracing::info!(files = written.len(), "replayed the write-ahead log");
        }
        let next = segments.last().map_or(0, |(n, _)| n + 1);
        for (_, location) in segments {
            durable.delete(&location).await?;
        }
        let store = Self {
            shared: Arc::new(Shared {
                durable,
                options,
                memory: InMemory::new(),
                names: tokio::sync::Mutex::new(()),
                state: Mutex::new(State { segment: next, ..State::default() }),
                synced: tokio::sync::Mutex::new(0),
                flushing: AtomicBool::new(false),
            }),
        };
        store.shared.begin_segment(next).await?;
        Ok(store)
    }

    /// Writes every object held in memory as a file and empties the log
    /// (what a background flush does when the log grows).
    ///
    /// # Errors
    /// Storage failures.
    pub async fn flush(&self) -> object_store::Result<()> {
        while self.shared.flushing.swap(true, Ordering::AcqRel) {
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        }
        let result = self.shared.flush().await;
        self.shared.flushing.store(false, Ordering::Release);
        result
    }

    /// Returns once no flush is running.
    pub async fn idle(&self) {
        while self.shared.flushing.load(Ordering::Acquire) {
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        }
    }

    /// Bytes of objects held in memory, waiting for a flush.
    pub fn held_bytes(&self) -> usize {
        self.shared.state().held_bytes
    }
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn check(&self) -> object_store::Result<()> {
        match &self.state().failed {
            Some(why) => Err(generic(format!("writes are stopped after a failed write of the log: {why}"))),
            None => Ok(()),
        }
    }

    fn fail(&self, e: impl Display) -> object_store::Error {
        let why = e.to_string();
        tracing::error!(error = %why, "the write-ahead log cannot be written; restart the server to recover");
        self.state().failed.get_or_insert(why.clone());
        generic(why)
    }

    /// Creates segment `n` with its header, synced with its directory.
    async fn begin_segment(&self, n: u64) -> object_store::Result<()> {
        let location = segment_path(n);
        let disk = self.durable.disk();
        disk.append(&location, Bytes::from_static(MAGIC)).await.map_err(|e| self.fail(e))?;
        self.durable.sync_written(std::slice::from_ref(&location)).await.map_err(|e| self.fail(e))?;
        let mut state = self.state();
        state.segment = n;
        state.segment_bytes = MAGIC.len();
        state.appended += MAGIC.len() as u64;
        Ok(())
    }

    /// Appends a record to the current segment (with [`Self::names`] held);
    /// returns the log position after it.
    async fn append(&self, record: Bytes) -> object_store::Result<u64> {
        let segment = self.state().segment;
        let len = record.len();
        self.durable.disk().append(&segment_path(segment), record).await.map_err(|e| self.fail(e))?;
        let mut state = self.state();
        state.segment_bytes += len;
        state.appended += len as u64;
        Ok(state.appended)
    }

    /// Returns once the log is synced up to `position`: one sync covers
    /// every record appended before it began.
    async fn sync_to(&self, position: u64) -> object_store::Result<()> {
        let mut synced = self.synced.lock().await;
        if *synced >= position {
            return Ok(());
        }
        let (segment, appended) = {
            let state = self.state();
            (state.segment, state.appended)
        };
        self.durable.disk().sync_file(&segment_path(segment)).await.map_err(|e| self.fail(e))?;
        *synced = appended;
        Ok(())
    }

    /// Holds `payload` at `location` in memory, logged; returns the log
    /// position to sync to.
    async fn put_logged(
        &self,
        location: &Path,
        payload: Bytes,
        mode: &PutMode,
    ) -> object_store::Result<(PutResult, u64)> {
        let _names = self.names.lock().await;
        self.check()?;
        if matches!(mode, PutMode::Create) && self.exists(location).await? {
            return Err(object_store::Error::AlreadyExists {
                path: location.to_string(),
                source: "the object exists".into(),
            });
        }
        let position = self.append(record(PUT, location, &payload)).await?;
        let size = payload.len();
        let result = self.memory.put(location, PutPayload::from(payload)).await?;
        let mut state = self.state();
        let version = state.next_version;
        state.next_version += 1;
        let segment = state.segment;
        if let Some(old) = state.held.insert(location.clone(), Held { version, segment, size }) {
            state.held_bytes -= old.size;
        }
        state.held_bytes += size;
        Ok((result, position))
    }

    async fn exists(&self, location: &Path) -> object_store::Result<bool> {
        if self.state().held.contains_key(location) {
            return Ok(true);
        }
        match self.durable.head(location).await {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Drops what memory holds of `location` (with [`Self::names`] held);
    /// whether it held something.
    async fn release(&self, location: &Path) -> object_store::Result<bool> {
        let held = {
            let mut state = self.state();
            let held = state.held.remove(location);
            if let Some(held) = held {
                state.held_bytes -= held.size;
            }
            held.is_some()
        };
        if held {
            self.memory.delete(location).await?;
        }
        Ok(held)
    }

    /// Readies a file to be written straight to `location` in the durable
    /// store (with [`Self::names`] held): a logged version of it is first
    /// written out as a durable file and dropped, then a FORGET record is
    /// appended so that replay never puts an older logged version over the
    /// new file. Returns the log position to sync to *before* the file is
    /// written: the file must not become durable ahead of records appended
    /// before it (a commit's deferred manifest ahead of its snapshot claim).
    async fn forget(&self, location: &Path) -> object_store::Result<u64> {
        self.check()?;
        if self.state().held.contains_key(location) {
            let bytes = self.memory.get(location).await?.bytes().await?;
            self.durable.put(location, PutPayload::from(bytes)).await?;
            self.release(location).await?;
        }
        self.append(record(FORGET, location, &[])).await
    }

    /// Deletes `locations` (a chunk of a delete stream): their records are
    /// appended and synced first, then the files on disk are removed, so a
    /// removal never becomes durable ahead of a record logged before it.
    async fn delete_logged(&self, locations: Vec<object_store::Result<Path>>) -> Vec<object_store::Result<Path>> {
        let mut done = Vec::with_capacity(locations.len());
        let mut position = 0;
        {
            let _names = self.names.lock().await;
            for location in locations {
                let logged = match &location {
                    Ok(location) => match self.check() {
                        Ok(()) => match self.release(location).await {
                            Ok(held) => self.append(record(DELETE, location, &[])).await.map(|at| (at, held)),
                            Err(e) => Err(e),
                        },
                        Err(e) => Err(e),
                    },
                    Err(_) => Ok((0, false)),
                };
                match (location, logged) {
                    (Ok(location), Ok((at, held))) => {
                        position = at;
                        done.push(Ok((location, held)));
                    }
                    (Err(e), _) | (_, Err(e)) => done.push(Err(e)),
                }
            }
        }
        if let Err(e) = self.sync_to(position).await {
            return vec![Err(e)];
        }
        let mut out = Vec::with_capacity(done.len());
        for entry in done {
            out.push(match entry {
                Ok((location, held)) => match self.durable.delete(&location).await {
                    Ok(()) => Ok(location),
                    Err(object_store::Error::NotFound { .. }) if held => Ok(location),
                    Err(e) => Err(e),
                },
                Err(e) => Err(e),
            });
        }
        out
    }

    fn flush_due(&self) -> bool {
        let state = self.state();
        state.held_bytes > self.options.flush_bytes || state.segment_bytes > self.options.flush_bytes
    }

    fn maybe_flush(self: &Arc<Self>) {
        if self.flush_due() && !self.flushing.swap(true, Ordering::AcqRel) {
            let shared = Arc::clone(self);
            tokio::spawn(async move {
                if let Err(e) = shared.flush().await {
                    tracing::warn!(error = %e, "cannot flush the write-ahead log; it keeps growing until it can");
                }
                shared.flushing.store(false, Ordering::Release);
            });
        }
    }

    /// Starts a new segment, writes the objects the older ones logged as
    /// files, makes them durable, then drops them and the older segments.
    async fn flush(&self) -> object_store::Result<()> {
        let old = {
            let _names = self.names.lock().await;
            self.check()?;
            let mut synced = self.synced.lock().await;
            let (old, appended) = {
                let state = self.state();
                (state.segment, state.appended)
            };
            self.durable.disk().sync_file(&segment_path(old)).await.map_err(|e| self.fail(e))?;
            *synced = appended;
            self.begin_segment(old + 1).await?;
            *synced = self.state().appended;
            old
        };
        let due: Vec<(Path, u64)> = self
            .state()
            .held
            .iter()
            .filter(|(_, held)| held.segment <= old)
            .map(|(path, held)| (path.clone(), held.version))
            .collect();
        let mut written = Vec::with_capacity(due.len());
        for (path, version) in due {
            let _names = self.names.lock().await;
            if self.state().held.get(&path).is_none_or(|held| held.version != version) {
                continue; // deleted or replaced since: nothing to write, or a newer segment has it
            }
            let bytes = self.memory.get(&path).await?.bytes().await?;
            self.durable.unsynced().put(&path, PutPayload::from(bytes)).await?;
            written.push((path, version));
        }
        let paths: Vec<Path> = written.iter().map(|(path, _)| path.clone()).collect();
        self.durable.sync_written(&paths).await?;
        {
            let _names = self.names.lock().await;
            for (path, version) in written {
                if self.state().held.get(&path).is_some_and(|held| held.version == version) {
                    self.release(&path).await?;
                }
            }
        }
        let segments: Vec<Path> = self
            .durable
            .list(Some(&Path::from(LOG_DIR)))
            .map_ok(|meta| meta.location)
            .try_collect::<Vec<_>>()
            .await?
            .into_iter()
            .filter(|location| {
                location
                    .filename()
                    .and_then(|name| name.strip_prefix("segment-"))
                    .and_then(|n| n.parse::<u64>().ok())
                    .is_some_and(|n| n <= old)
            })
            .collect();
        for location in segments {
            self.durable.delete(&location).await?;
        }
        Ok(())
    }
}

impl Display for LogStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Logged({})", self.shared.durable)
    }
}

/// Merges what memory holds with the directory's listing: memory wins, the
/// log is hidden, the order is by path.
fn merged(held: Vec<ObjectMeta>, listed: Vec<ObjectMeta>) -> Vec<ObjectMeta> {
    let names: HashSet<Path> = held.iter().map(|m| m.location.clone()).collect();
    let mut all: Vec<ObjectMeta> = listed.into_iter().filter(|m| !names.contains(&m.location)).chain(held).collect();
    all.retain(|m| !is_log(&m.location));
    all.sort_by(|a, b| a.location.cmp(&b.location));
    all
}

#[async_trait]
impl ObjectStore for LogStore {
    async fn put_opts(
        &self,
        location: &Path,
        payload: PutPayload,
        opts: PutOptions,
    ) -> object_store::Result<PutResult> {
        if matches!(opts.mode, PutMode::Update(_)) {
            return Err(object_store::Error::NotImplemented {
                operation: "conditional update".into(),
                implementer: "the write-ahead log".into(),
            });
        }
        let shared = &self.shared;
        let deferred = matches!(opts.mode, PutMode::Overwrite) && opts.extensions.get::<DeferSync>().is_some();
        if payload.content_length() > shared.options.direct_bytes {
            if matches!(opts.mode, PutMode::Create) {
                // The check against memory and the create on disk under one lock.
                let _names = shared.names.lock().await;
                if shared.state().held.contains_key(location) {
                    return Err(object_store::Error::AlreadyExists {
                        path: location.to_string(),
                        source: "the object exists".into(),
                    });
                }
                let position = shared.forget(location).await?;
                shared.sync_to(position).await?;
                return shared.durable.put_opts(location, payload, opts).await;
            }
            let position = {
                let _names = shared.names.lock().await;
                shared.forget(location).await?
            };
            // A deferred file needs no sync of the log now: the put that
            // syncs next covers the FORGET record and the file is synced.
            if !deferred {
                shared.sync_to(position).await?;
            }
            return shared.durable.put_opts(location, payload, opts).await;
        }
        let bytes: Bytes = payload.into();
        let (result, position) = shared.put_logged(location, bytes, &opts.mode).await?;
        // A deferred put is made durable by the next synced one (records replay in order).
        if !deferred {
            shared.sync_to(position).await?;
        }
        shared.maybe_flush();
        Ok(result)
    }

    async fn put_multipart_opts(
        &self,
        location: &Path,
        opts: PutMultipartOptions,
    ) -> object_store::Result<Box<dyn MultipartUpload>> {
        self.shared.check()?;
        let inner = self.shared.durable.put_multipart_opts(location, opts).await?;
        Ok(Box::new(LoggedUpload { inner, location: location.clone(), shared: Arc::clone(&self.shared) }))
    }

    async fn get_opts(&self, location: &Path, options: GetOptions) -> object_store::Result<GetResult> {
        match self.shared.memory.get_opts(location, options.clone()).await {
            Err(object_store::Error::NotFound { .. }) => self.shared.durable.get_opts(location, options).await,
            other => other,
        }
    }

    async fn get_ranges(&self, location: &Path, ranges: &[Range<u64>]) -> object_store::Result<Vec<Bytes>> {
        match self.shared.memory.get_ranges(location, ranges).await {
            Err(object_store::Error::NotFound { .. }) => self.shared.durable.get_ranges(location, ranges).await,
            other => other,
        }
    }

    fn delete_stream(
        &self,
        locations: BoxStream<'static, object_store::Result<Path>>,
    ) -> BoxStream<'static, object_store::Result<Path>> {
        // Deletes in chunks, each chunk's records covered by one sync.
        let shared = Arc::clone(&self.shared);
        locations
            .ready_chunks(64)
            .then(move |chunk| {
                let shared = Arc::clone(&shared);
                async move { futures::stream::iter(shared.delete_logged(chunk).await) }
            })
            .flatten()
            .boxed()
    }

    fn list(&self, prefix: Option<&Path>) -> BoxStream<'static, object_store::Result<ObjectMeta>> {
        let shared = Arc::clone(&self.shared);
        let prefix = prefix.cloned();
        futures::stream::once(async move {
            let held: Vec<ObjectMeta> = shared.memory.list(prefix.as_ref()).try_collect().await?;
            let listed: Vec<ObjectMeta> = shared.durable.list(prefix.as_ref()).try_collect().await?;
            Ok::<_, object_store::Error>(futures::stream::iter(merged(held, listed).into_iter().map(Ok)))
        })
        .try_flatten()
        .boxed()
    }

    async fn list_with_delimiter(&self, prefix: Option<&Path>) -> object_store::Result<ListResult> {
        let held = self.shared.memory.list_with_delimiter(prefix).await?;
        let listed = self.shared.durable.list_with_delimiter(prefix).await?;
        let mut common_prefixes: Vec<Path> = listed.common_prefixes;
        for p in held.common_prefixes {
            if !common_prefixes.contains(&p) {
                common_prefixes.push(p);
            }
        }
        common_prefixes.retain(|p| !is_log(p));
        common_prefixes.sort();
        Ok(ListResult { common_prefixes, objects: merged(held.objects, listed.objects) })
    }

    async fn copy_opts(&self, from: &Path, to: &Path, options: CopyOptions) -> object_store::Result<()> {
        let bytes = self.get(from).await?.bytes().await?;
        let mode = match options.mode {
            object_store::CopyMode::Create => PutMode::Create,
            object_store::CopyMode::Overwrite => PutMode::Overwrite,
        };
        self.put_opts(to, PutPayload::from(bytes), PutOptions::from(mode)).await.map(|_| ())
    }
}

/// A multipart upload straight to the durable store; once complete, replay
/// forgets any logged version of the path.
#[derive(Debug)]
struct LoggedUpload {
    inner: Box<dyn MultipartUpload>,
    location: Path,
    shared: Arc<Shared>,
}

#[async_trait]
impl MultipartUpload for LoggedUpload {
    fn put_part(&mut self, data: PutPayload) -> UploadPart {
        self.inner.put_part(data)
    }

    async fn complete(&mut self) -> object_store::Result<PutResult> {
        let position = {
            let _names = self.shared.names.lock().await;
            self.shared.forget(&self.location).await?
        };
        self.shared.sync_to(position).await?;
        self.inner.complete().await
    }

    async fn abort(&mut self) -> object_store::Result<()> {
        self.inner.abort().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::durable::sim::SimDisk;
    use crate::durable::{Disk, DurableStore, deferred};

    fn durable(disk: &Arc<SimDisk>) -> DurableStore {
        DurableStore::new(Arc::clone(disk) as Arc<dyn ObjectStore>, Arc::clone(disk) as Arc<dyn Disk>)
    }

    async fn read(store: &LogStore, path: &str) -> Option<Vec<u8>> {
        match store.get(&Path::from(path)).await {
            Ok(result) => Some(result.bytes().await.unwrap().to_vec()),
            Err(object_store::Error::NotFound { .. }) => None,
            Err(e) => panic!("{e}"),
        }
    }

    #[test]
    fn records_round_trip_and_a_torn_tail_is_found() {
        let mut segment = MAGIC.to_vec();
        segment.extend_from_slice(&record(PUT, &Path::from("a/b"), b"hello"));
        segment.extend_from_slice(&record(DELETE, &Path::from("a/c"), b""));
        let whole = Bytes::from(segment.clone());
        let (found, damaged) = records(&whole);
        assert_eq!(damaged, None);
        assert_eq!(found.len(), 2);
        assert_eq!((found[0].0, found[0].1.as_ref(), found[0].2.as_ref()), (PUT, "a/b", &b"hello"[..]));
        let first_end = MAGIC.len() + record(PUT, &Path::from("a/b"), b"hello").len();
        for cut in MAGIC.len() + 1..segment.len() {
            let (found, damaged) = records(&whole.slice(..cut));
            // A cut between records is a shorter log; anywhere else it is found torn.
            let expected = if cut == first_end { (1, None) } else { (usize::from(cut > first_end), Some(0)) };
            assert_eq!((found.len(), damaged.map(|_| 0)), expected, "cut at {cut}");
        }
        segment[MAGIC.len() + HEADER + 3] ^= 1;
        let (found, damaged) = records(&Bytes::from(segment));
        assert!(found.is_empty());
        assert_eq!(damaged, Some(MAGIC.len()));
    }

    #[tokio::test]
    async fn logged_writes_survive_power_loss_and_replay_into_files() {
        let disk = SimDisk::new(3);
        let store =
            LogStore::open(durable(&disk), LogOptions { direct_bytes: 16, flush_bytes: 1 << 20 }).await.unwrap();
        store.put(&Path::from("t/snapshot/snapshot-1"), PutPayload::from_static(b"one")).await.unwrap();
        store.put(&Path::from("t/data/f"), PutPayload::from_static(b"gone soon")).await.unwrap();
        store.delete(&Path::from("t/data/f")).await.unwrap();
        // Bigger than direct_bytes: a file at once.
        store.put(&Path::from("t/data/big"), PutPayload::from(vec![7u8; 100])).await.unwrap();
        let create = PutOptions::from(PutMode::Create);
        let again = store.put_opts(&Path::from("t/snapshot/snapshot-1"), PutPayload::from_static(b"x"), create).await;
        assert!(matches!(again, Err(object_store::Error::AlreadyExists { .. })), "{again:?}");
        let listed: Vec<String> =
            store.list(Some(&Path::from("t"))).map_ok(|m| m.location.to_string()).try_collect().await.unwrap();
        assert_eq!(listed, ["t/data/big", "t/snapshot/snapshot-1"]);
        assert!(store.list_with_delimiter(None).await.unwrap().common_prefixes == [Path::from("t")]);
        assert_eq!(store.held_bytes(), 3);
        drop(store);
        disk.power_loss().await;
        let store = LogStore::open(durable(&disk), LogOptions::default()).await.unwrap();
        assert_eq!(read(&store, "t/snapshot/snapshot-1").await.as_deref(), Some(&b"one"[..]));
        assert_eq!(read(&store, "t/data/f").await, None);
        assert_eq!(read(&store, "t/data/big").await, Some(vec![7u8; 100]));
        // Replayed into files: nothing is held in memory, the log is one fresh segment.
        assert_eq!(store.held_bytes(), 0);
        let names: Vec<String> = disk.names().iter().map(ToString::to_string).collect();
        assert!(names.contains(&"t/snapshot/snapshot-1".to_string()), "{names:?}");
        assert_eq!(names.iter().filter(|n| n.starts_with("_log/")).count(), 1, "{names:?}");
    }

    /// A file written straight to disk never becomes durable ahead of what
    /// was logged before it: wherever the power fails, a big snapshot claim
    /// that survives has the deferred manifest logged before it, and a file
    /// replacing a logged version is the old version or the new one.
    #[tokio::test]
    async fn direct_files_keep_the_order_of_the_log() {
        for cut in 0..24 {
            let disk = SimDisk::new(cut);
            let options = LogOptions { direct_bytes: 16, flush_bytes: 1 << 20 };
            let store = LogStore::open(durable(&disk), options).await.unwrap();
            store.put(&Path::from("t/hint"), PutPayload::from_static(b"old")).await.unwrap();
            disk.fail_after(cut);
            let manifest = PutPayload::from_static(b"files");
            let claim = PutPayload::from(vec![1u8; 100]);
            let hint = PutPayload::from(vec![2u8; 100]);
            let create = PutOptions::from(PutMode::Create);
            let done = async {
                store.put_opts(&Path::from("t/manifest/m"), manifest, deferred()).await?;
                store.put_opts(&Path::from("t/snapshot/snapshot-1"), claim, create).await?;
                store.put(&Path::from("t/hint"), hint).await
            }
            .await;
            drop(store);
            disk.power_loss().await;
            let store = LogStore::open(durable(&disk), options).await.unwrap();
            let claimed = read(&store, "t/snapshot/snapshot-1").await;
            if claimed.is_some() {
                assert_eq!(read(&store, "t/manifest/m").await.as_deref(), Some(&b"files"[..]), "cut {cut}");
            }
            let hint = read(&store, "t/hint").await;
            if done.is_ok() {
                assert_eq!(claimed, Some(vec![1u8; 100]), "cut {cut}");
                assert_eq!(hint, Some(vec![2u8; 100]), "cut {cut}");
            } else {
                assert!([Some(b"old".to_vec()), Some(vec![2u8; 100])].contains(&hint), "cut {cut}: {hint:?}");
            }
        }
    }

    #[tokio::test]
    async fn a_flush_writes_files_and_empties_the_log() {
        let disk = SimDisk::new(5);
        let store =
            LogStore::open(durable(&disk), LogOptions { direct_bytes: 1024, flush_bytes: 1 << 20 }).await.unwrap();
        for i in 0..10 {
            store.put(&Path::from(format!("t/m/{i}")), PutPayload::from(vec![i as u8; 10])).await.unwrap();
        }
        store.put(&Path::from("t/m/3"), PutPayload::from_static(b"newer")).await.unwrap();
        store.delete(&Path::from("t/m/4")).await.unwrap();
        store.flush().await.unwrap();
        assert_eq!(store.held_bytes(), 0);
        assert_eq!(read(&store, "t/m/3").await.as_deref(), Some(&b"newer"[..]));
        // Flushed files are synced: all of them survive a power loss without the log.
        drop(store);
        disk.power_loss().await;
        let names: Vec<String> = disk.names().iter().map(ToString::to_string).collect();
        assert_eq!(names.iter().filter(|n| n.starts_with("t/m/")).count(), 9, "{names:?}");
        assert!(!names.contains(&"t/m/4".to_string()));
    }

    #[tokio::test]
    async fn a_torn_tail_is_dropped_and_earlier_damage_refuses_to_open() {
        let disk = SimDisk::new(9);
        let store = LogStore::open(durable(&disk), LogOptions::default()).await.unwrap();
        store.put(&Path::from("t/a"), PutPayload::from_static(b"acknowledged")).await.unwrap();
        drop(store);
        // An unsynced append after the last sync: torn by the power loss, or kept whole.
        let segment = disk.names().into_iter().find(is_log).unwrap();
        disk.append(&segment, record(PUT, &Path::from("t/b"), b"never acknowledged")).await.unwrap();
        disk.append(&segment, Bytes::from_static(b"\x05\x00")).await.unwrap();
        disk.power_loss().await;
        let store = LogStore::open(durable(&disk), LogOptions::default()).await.unwrap();
        assert_eq!(read(&store, "t/a").await.as_deref(), Some(&b"acknowledged"[..]));
        drop(store);
        // Damage in a segment followed by another one is corruption.
        let first = disk.names().into_iter().find(is_log).unwrap();
        disk.append(&first, Bytes::from_static(b"garbage!")).await.unwrap();
        disk.append(&segment_path(1000), Bytes::from_static(MAGIC)).await.unwrap();
        let err = LogStore::open(durable(&disk), LogOptions::default()).await.unwrap_err();
        assert!(err.to_string().contains("damaged"), "{err}");
    }
}
