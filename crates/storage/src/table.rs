//! A Dynamic Table: writes (with lookup changelog and group commit),
//! commits, snapshot scans and changelog reads. Compaction and expiry live in
//! [`crate::compact`].

use std::collections::{HashMap, HashSet};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};

use arrow::array::{Array, ArrayRef, AsArray, Int8Array, RecordBatch, UInt64Array};
use arrow::compute::concat_batches;
use arrow::datatypes::{Field, Int8Type, Schema};
use arrow::row::{Row, Rows};
use futures::TryStreamExt;
use futures::stream::BoxStream;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload};
use tokio::sync::oneshot;

use crate::error::{Error, Result};
use crate::file::{ChildPath, FileMeta, FileReader, FileWriter, NewFile};
use crate::fold::{Fold, Value};
use crate::scan::{self, ScanPlan, ScanRequest, key_converter};
use crate::schema::{MergeEngine, RowKind, TableSchema, ValueKind};
use crate::snapshot::{CommitKind, Manifest, Snapshot};

mod transaction;
pub use transaction::Transaction;

/// The latest committed state, cached.
#[derive(Debug, Clone)]
pub(crate) struct State {
    pub schema: TableSchema,
    pub latest: Option<Snapshot>,
    pub manifest: Arc<Manifest>,
}

/// A write waiting for the group commit that includes it.
struct Request {
    /// The definition the rows were checked against.
    schema_id: u64,
    rows: RecordBatch,
    kinds: Vec<ValueKind>,
    done: oneshot::Sender<Result<Option<Snapshot>>>,
}

/// One Dynamic Table on object storage.
///
/// Writers in this process are serialized by an async lock (the commit
/// lock); small concurrent writes are grouped into one commit ([`Table::write`]).
/// Writers in other processes are caught by the conditional create of the
/// snapshot file.
pub struct Table {
    pub(crate) store: Arc<dyn ObjectStore>,
    pub(crate) dir: Path,
    name: String,
    state: Mutex<State>,
    commit_lock: tokio::sync::Mutex<()>,
    queue: Mutex<Vec<Request>>,
    pub(crate) maintaining: AtomicBool,
    /// Set by [`Table::close`]: no commit may follow.
    closed: AtomicBool,
    /// Held by a compaction from picking to committing: one at a time.
    pub(crate) compaction_lock: tokio::sync::Mutex<()>,
    /// Key indexes of live files, decoded and converted to rows, by path.
    pub(crate) key_indexes: Mutex<HashMap<String, Arc<Rows>>>,
    /// Exact key sets of row groups ([`crate::lookup`]).
    pub(crate) key_sets: Mutex<crate::key_sets::KeySets>,
    /// Open live files (checked, parsed footers) for point reads, by path;
    /// at most [`crate::lookup::OPEN_FILES`].
    pub(crate) open_files: Mutex<HashMap<String, FileReader>>,
    /// The latest committed snapshot id, for readers waiting for commits.
    commits: tokio::sync::watch::Sender<u64>,
    /// Live changelog readers in this process: the next snapshot each needs.
    pub(crate) holds: Arc<Mutex<HashMap<u64, u64>>>,
    /// Changelogs read recently, by snapshot: the continuous views (and
    /// other readers) of one table in this process share one read of each.
    pub(crate) changelogs: Mutex<ChangelogCache>,
    /// Changelog files read from storage (for tests of the sharing).
    pub(crate) changelog_file_reads: std::sync::atomic::AtomicU64,
    /// Open transactions of this process: when each began (ms since the
    /// epoch), so orphan cleanup keeps the files they staged.
    open_transactions: Arc<Mutex<HashMap<u64, i64>>>,
    next_transaction: std::sync::atomic::AtomicU64,
}

/// Registers an open transaction with its table until dropped.
struct OpenTransaction {
    open: Arc<Mutex<HashMap<u64, i64>>>,
    id: u64,
}

impl Drop for OpenTransaction {
    fn drop(&mut self) {
        self.open.lock().unwrap_or_else(std::sync::PoisonError::into_inner).remove(&self.id);
    }
}

/// The decoded changelogs [`Table::changelog`] keeps in memory, newest
/// snapshots first, bounded in bytes: the continuous views (and other
/// readers) of one table in this process share one read of each recent
/// snapshot's changelog, however big its commits.
pub(crate) const CACHED_CHANGELOG_BYTES: usize = 64 << 20;

#[derive(Debug, Default)]
pub(crate) struct ChangelogCache {
    pub(crate) by_snapshot: std::collections::BTreeMap<u64, (Arc<Vec<RecordBatch>>, usize)>,
    pub(crate) bytes: usize,
    /// Changelog rows of recent snapshots ([`Table::changelog_rows`]).
    pub(crate) rows: std::collections::BTreeMap<u64, u64>,
}

/// How many snapshots' changelog row counts [`ChangelogCache`] remembers.
const REMEMBERED_ROW_COUNTS: usize = 64 * 1024;

impl ChangelogCache {
    pub(crate) fn remember_rows(&mut self, id: u64, rows: u64) {
        self.rows.insert(id, rows);
        while self.rows.len() > REMEMBERED_ROW_COUNTS {
            self.rows.pop_first();
        }
    }

    pub(crate) fn get(&self, id: u64) -> Option<Arc<Vec<RecordBatch>>> {
        self.by_snapshot.get(&id).map(|(batches, _)| Arc::clone(batches))
    }

    /// Keeps `batches` unless they alone exceed the budget; evicts the
    /// oldest snapshots until the cache fits.
    pub(crate) fn insert(&mut self, id: u64, batches: Arc<Vec<RecordBatch>>) {
        let size: usize = batches.iter().map(RecordBatch::get_array_memory_size).sum();
        if size > CACHED_CHANGELOG_BYTES {
            return;
        }
        if let Some((_, old)) = self.by_snapshot.insert(id, (batches, size)) {
            self.bytes -= old;
        }
        self.bytes += size;
        while self.bytes > CACHED_CHANGELOG_BYTES {
            let Some((_, (_, evicted))) = self.by_snapshot.pop_first() else { break };
            self.bytes -= evicted;
        }
    }
}

/// Keeps snapshots from [`SnapshotHold::next`] on from expiring while a
/// reader in this process still needs them; released when dropped.
#[derive(Debug)]
pub struct SnapshotHold {
    holds: Arc<Mutex<HashMap<u64, u64>>>,
    id: u64,
}

impl SnapshotHold {
    /// The reader now needs snapshots from `next` on.
    pub fn advance(&self, next: u64) {
        if let Some(entry) = self.holds.lock().unwrap_or_else(std::sync::PoisonError::into_inner).get_mut(&self.id) {
            *entry = next;
        }
    }
}

impl Drop for SnapshotHold {
    fn drop(&mut self) {
        self.holds.lock().unwrap_or_else(std::sync::PoisonError::into_inner).remove(&self.id);
    }
}

impl std::fmt::Debug for Table {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Table").field("name", &self.name).field("dir", &self.dir).finish()
    }
}

/// Changelog rows of one snapshot: user columns, `_seq`, `_kind` ([`RowKind`] codes).
#[derive(Debug, Clone)]
pub struct ChangelogBatch {
    /// The snapshot whose commit produced these changes.
    pub snapshot: u64,
    /// The rows.
    pub batch: RecordBatch,
}

fn schema_path(id: u64) -> String {
    format!("schema/schema-{id}")
}

pub(crate) fn snapshot_path(id: u64) -> String {
    format!("snapshot/snapshot-{id}")
}

pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

/// Rows per batch when reading for lookups and compaction.
pub(crate) const READ_BATCH_ROWS: usize = 8192;

impl Table {
    fn with_state(store: Arc<dyn ObjectStore>, dir: Path, name: &str, state: State) -> Self {
        Self {
            store,
            dir,
            name: name.to_string(),
            state: Mutex::new(state),
            commit_lock: tokio::sync::Mutex::new(()),
            queue: Mutex::new(Vec::new()),
            maintaining: AtomicBool::new(false),
            closed: AtomicBool::new(false),
            compaction_lock: tokio::sync::Mutex::new(()),
            key_indexes: Mutex::new(HashMap::new()),
            key_sets: Mutex::new(crate::key_sets::KeySets::default()),
            open_files: Mutex::new(HashMap::new()),
            commits: tokio::sync::watch::Sender::new(0),
            holds: Arc::new(Mutex::new(HashMap::new())),
            open_transactions: Arc::new(Mutex::new(HashMap::new())),
            next_transaction: std::sync::atomic::AtomicU64::new(0),
            changelogs: Mutex::new(ChangelogCache::default()),
            changelog_file_reads: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// Receives the id of every snapshot committed from now on (the latest
    /// one when several commit before the receiver looks): readers wait on
    /// it instead of polling storage.
    pub fn watch_commits(&self) -> tokio::sync::watch::Receiver<u64> {
        let receiver = self.commits.subscribe();
        let latest = self.lock_state().latest.as_ref().map_or(0, |s| s.id);
        self.commits.send_if_modified(|id| {
            let newer = latest > *id;
            *id = (*id).max(latest);
            newer
        });
        receiver
    }

    /// Holds snapshots from `next` on back from expiry, for a live reader.
    pub fn hold_snapshots(&self, next: u64) -> SnapshotHold {
        static IDS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        let id = IDS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.holds.lock().unwrap_or_else(std::sync::PoisonError::into_inner).insert(id, next);
        SnapshotHold { holds: Arc::clone(&self.holds), id }
    }

    /// When the oldest open transaction of this process began.
    pub(crate) fn oldest_open_transaction_ms(&self) -> Option<i64> {
        self.open_transactions.lock().unwrap_or_else(std::sync::PoisonError::into_inner).values().min().copied()
    }

    /// The oldest snapshot a live reader in this process still needs.
    pub(crate) fn held_from(&self) -> Option<u64> {
        self.holds.lock().unwrap_or_else(std::sync::PoisonError::into_inner).values().min().copied()
    }

    /// Creates a table in `dir` (e.g. `public/orders` under the warehouse root).
    ///
    /// # Errors
    /// [`Error::AlreadyExists`] when a table lives there; storage failures.
    pub async fn create(store: Arc<dyn ObjectStore>, dir: Path, name: &str, schema: TableSchema) -> Result<Self> {
        let location = dir.child_path(&schema_path(schema.id));
        let put =
            store.put_opts(&location, PutPayload::from(schema.encode()?), PutOptions::from(PutMode::Create)).await;
        match put {
            Ok(_) => {}
            Err(object_store::Error::AlreadyExists { .. }) => {
                return Err(Error::AlreadyExists { table: name.to_string() });
            }
            Err(e) => return Err(Error::store(&location, e)),
        }
        let state = State { schema, latest: None, manifest: Arc::default() };
        Ok(Self::with_state(store, dir, name, state))
    }

    /// Opens the table in `dir` at its latest snapshot.
    ///
    /// # Errors
    /// [`Error::NotFound`] when no table lives there; [`Error::Corrupt`] for damaged metadata.
    pub async fn open(store: Arc<dyn ObjectStore>, dir: Path, name: &str) -> Result<Self> {
        let table = Self::open_schema_only(store, dir, name).await?;
        if let Some(id) = max_id(&table.store, &table.dir.clone().join("snapshot"), "snapshot-").await? {
            let snapshot = table.read_snapshot(id).await?;
            let manifest = table.read_manifest(&snapshot).await?;
            let mut state = table.lock_state();
            state.latest = Some(snapshot);
            state.manifest = Arc::new(manifest);
        }
        Ok(table)
    }

    /// Reloads the latest schema and snapshot from storage, after another
    /// process committed. Call with the commit lock held.
    async fn catch_up(&self) -> Result<()> {
        let fresh = Self::open(Arc::clone(&self.store), self.dir.clone(), &self.name).await?;
        let state = fresh.current();
        let id = state.latest.as_ref().map_or(0, |s| s.id);
        *self.lock_state() = state;
        self.commits.send_replace(id);
        Ok(())
    }

    /// The table in `dir` with its latest schema and no snapshot read: for
    /// repairs of a table whose latest snapshot does not read.
    pub(crate) async fn open_schema_only(store: Arc<dyn ObjectStore>, dir: Path, name: &str) -> Result<Self> {
        let schema_id = max_id(&store, &dir.clone().join("schema"), "schema-")
            .await?
            .ok_or_else(|| Error::NotFound { what: format!("table {name}") })?;
        let schema_location = dir.child_path(&schema_path(schema_id));
        let bytes = get(&store, &schema_location).await?;
        let schema = TableSchema::decode(schema_location.as_ref(), &bytes)?;
        Ok(Self::with_state(store, dir, name, State { schema, latest: None, manifest: Arc::default() }))
    }

    /// A handle on the table in `dir` that reads `plan`'s partitions
    /// ([`Table::read_partition`]) and nothing else: no snapshot is read
    /// (a worker reads what a coordinator planned, [`ScanPlan::decode`]).
    pub fn for_plan(store: Arc<dyn ObjectStore>, dir: Path, name: &str, plan: &ScanPlan) -> Self {
        let state = State { schema: plan.table.clone(), latest: None, manifest: Arc::default() };
        Self::with_state(store, dir, name, state)
    }

    /// Waits for the commit in flight, if any, and refuses every later
    /// commit (the table is being dropped).
    pub async fn close(&self) {
        let _guard = self.commit_lock.lock().await;
        self.closed.store(true, std::sync::atomic::Ordering::SeqCst);
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.closed.load(std::sync::atomic::Ordering::SeqCst)
    }

    pub(crate) async fn commit_lock(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.commit_lock.lock().await
    }

    pub(crate) fn lock_state(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding this short lock cannot leave State half-updated
        // (it is replaced field by field from finished values), so poisoning is ignored.
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub(crate) fn current(&self) -> State {
        self.lock_state().clone()
    }

    /// The object store the table lives in.
    pub fn store(&self) -> &Arc<dyn ObjectStore> {
        &self.store
    }

    /// The directory the table is stored in.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The table's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The current definition.
    pub fn schema(&self) -> TableSchema {
        self.lock_state().schema.clone()
    }

    /// The latest snapshot, if anything was committed.
    pub fn latest_snapshot(&self) -> Option<Snapshot> {
        self.lock_state().latest.clone()
    }

    /// Reads snapshot `id`.
    ///
    /// # Errors
    /// [`Error::NotFound`] for an unknown or expired id; [`Error::Corrupt`].
    pub async fn read_snapshot(&self, id: u64) -> Result<Snapshot> {
        let location = self.dir.child_path(&snapshot_path(id));
        let bytes = match self.store.get(&location).await {
            Ok(got) => got.bytes().await.map_err(|e| Error::store(&location, e))?,
            Err(object_store::Error::NotFound { .. }) => {
                return Err(Error::NotFound { what: format!("snapshot {id} of table {}", self.name) });
            }
            Err(e) => return Err(Error::store(&location, e)),
        };
        let snapshot: Snapshot = crate::frame::decode(location.as_ref(), &bytes)?;
        if snapshot.id != id {
            return Err(Error::corrupt(&location, format!("holds snapshot {} instead of {id}", snapshot.id)));
        }
        Ok(snapshot)
    }

    /// The live files of `snapshot`: its full manifest with its deltas applied.
    pub(crate) async fn read_manifest(&self, snapshot: &Snapshot) -> Result<Manifest> {
        let location = self.dir.child_path(&snapshot.manifest);
        let bytes = get(&self.store, &location).await?;
        let mut manifest: Manifest = crate::frame::decode(location.as_ref(), &bytes)?;
        let deltas = futures::future::try_join_all(snapshot.manifest_deltas.iter().map(|path| async move {
            let location = self.dir.child_path(path);
            let bytes = get(&self.store, &location).await?;
            crate::frame::decode::<crate::snapshot::ManifestDelta>(location.as_ref(), &bytes)
        }))
        .await?;
        for delta in deltas {
            manifest.apply(delta);
        }
        Ok(manifest)
    }

    /// Applies upserts and deletes (one [`ValueKind`] per row of `rows`) and
    /// commits them as one snapshot, with its changelog. Returns the snapshot
    /// that includes the write, or `None` when nothing changed.
    ///
    /// When the table has `num-sorted-run.stop-trigger` sorted runs or more,
    /// the write first runs a compaction (waiting for one in progress).
    ///
    /// Concurrent calls are grouped: while one commit is in flight, later
    /// writes queue up, and the next writer to get the commit lock commits
    /// all of them as one snapshot (applied in arrival order). Every caller
    /// returns only after the snapshot holding its rows is committed.
    ///
    /// Within `rows`, the last row for a key wins (the first, for
    /// `first-row` tables).
    ///
    /// # Errors
    /// Rows that do not fit the table ([`Error::Invalid`]), a concurrent
    /// writer in another process ([`Error::Conflict`]), storage failures.
    pub async fn write(&self, rows: &RecordBatch, kinds: &[ValueKind]) -> Result<Option<Snapshot>> {
        let schema = self.check_write(rows, kinds)?;
        self.stall().await?;
        let (done, mut outcome) = oneshot::channel();
        self.queue.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push(Request {
            schema_id: schema.id,
            rows: rows.clone(),
            kinds: kinds.to_vec(),
            done,
        });
        let guard = self.commit_lock.lock().await;
        if let Ok(result) = outcome.try_recv() {
            // An earlier leader committed this write with its group.
            return result;
        }
        let mut group = std::mem::take(&mut *self.queue.lock().unwrap_or_else(std::sync::PoisonError::into_inner));
        // Writes checked against a definition that ALTER TABLE has since replaced.
        let current = self.lock_state().schema.id;
        for stale in group.extract_if(.., |r| r.schema_id != current) {
            let _ = stale.done.send(Err(self.altered()));
        }
        let result = self.write_group(&guard, &group).await;
        for request in group {
            let _ = request.done.send(result.as_ref().map(Clone::clone).map_err(Error::replicate));
        }
        drop(guard);
        match outcome.try_recv() {
            Ok(_) => result,
            // Not in the group (cannot happen: it was queued before the lock was taken).
            Err(_) => Err(Error::Invalid("write was not committed".into())),
        }
    }

    async fn write_group(
        &self,
        guard: &tokio::sync::MutexGuard<'_, ()>,
        group: &[Request],
    ) -> Result<Option<Snapshot>> {
        let Some(first) = group.first() else { return Ok(None) };
        let mut staged = Staged::default();
        let state = self.current();
        if group.len() > 1 && self.separable(group)? {
            // Big writes of disjoint key ranges (writers loading different
            // ranges): a file each, so the files do not overlap and form one
            // sorted run instead of one file spanning all the ranges.
            for request in group {
                staged.stage(self, &state, &request.rows, &request.kinds).await?;
            }
            return staged.commit(self, guard).await;
        }
        let rows = if group.len() == 1 {
            first.rows.clone()
        } else {
            concat_batches(&first.rows.schema(), group.iter().map(|r| &r.rows))?
        };
        let kinds: Vec<ValueKind> = group.iter().flat_map(|r| r.kinds.iter().copied()).collect();
        staged.stage(self, &state, &rows, &kinds).await?;
        staged.commit(self, guard).await
    }

    /// Whether every write of a group is big (`TableOptions::separate_write_rows`)
    /// and their key ranges are disjoint.
    fn separable(&self, group: &[Request]) -> Result<bool> {
        let schema = self.lock_state().schema.clone();
        let big = schema.options.separate_write_rows.max(1);
        if !schema.has_primary_key() || group.iter().any(|r| r.rows.num_rows() < big) {
            return Ok(false);
        }
        let converter = key_converter(&schema)?;
        let mut ranges = Vec::with_capacity(group.len());
        for request in group {
            let keys = converter.convert_columns(&key_columns(&schema, &request.rows))?;
            let (mut low, mut high) = (keys.row(0), keys.row(0));
            for key in keys.iter() {
                low = low.min(key);
                high = high.max(key);
            }
            ranges.push((low.owned(), high.owned()));
        }
        ranges.sort();
        Ok(ranges.windows(2).all(|w| w[0].1 < w[1].0))
    }

    /// Adds nullable columns at the end (`ALTER TABLE … ADD COLUMN`): a new
    /// definition version, claimed with a conditional create like a commit.
    /// Files written before read the new columns as NULL.
    ///
    /// # Errors
    /// A column of that name exists, or a column is NOT NULL; a concurrent
    /// change of the definition in another process.
    pub async fn add_columns(&self, added: Vec<Field>) -> Result<TableSchema> {
        let _guard = self.commit_lock.lock().await;
        if self.is_closed() {
            return Err(Error::NotFound { what: format!("table {}", self.name) });
        }
        let current = self.schema();
        let mut fields: Vec<Field> = current.schema.fields().iter().map(|f| f.as_ref().clone()).collect();
        for field in added {
            if fields.iter().any(|f| f.name() == field.name()) {
                return Err(Error::Invalid(format!(
                    "column \"{}\" of table {} already exists",
                    field.name(),
                    self.name
                )));
            }
            if !field.is_nullable() {
                return Err(Error::Unsupported(format!(
                    "cannot add NOT NULL column \"{}\": rows already in the table would have no value",
                    field.name()
                )));
            }
            fields.push(field);
        }
        let keys: Vec<&str> = current.primary_key.iter().map(|&k| current.schema.field(k).name().as_str()).collect();
        let mut next = TableSchema::new(current.id + 1, Arc::new(Schema::new(fields)), &keys, current.options.clone())?;
        next.column_defaults = current.column_defaults.clone();
        next.renames = current.renames.clone();
        self.put_schema(&next).await?;
        self.lock_state().schema = next.clone();
        Ok(next)
    }

    /// Renames column `from` to `to` (`ALTER TABLE … RENAME COLUMN`): a new
    /// definition version, claimed with a conditional create like a commit.
    /// Files written before keep the old name; readers map it (the version
    /// records the rename).
    ///
    /// # Errors
    /// No such column, the new name is taken or reserved, the column is named
    /// by a table option; a concurrent change of the definition in another process.
    pub async fn rename_column(&self, from: &str, to: &str) -> Result<TableSchema> {
        let _guard = self.commit_lock.lock().await;
        if self.is_closed() {
            return Err(Error::NotFound { what: format!("table {}", self.name) });
        }
        let next = self.schema().renamed(from, to)?;
        self.put_schema(&next).await?;
        self.lock_state().schema = next.clone();
        Ok(next)
    }

    /// Writes definition `next` if no process wrote that version yet.
    async fn put_schema(&self, next: &TableSchema) -> Result<()> {
        let location = self.dir.child_path(&schema_path(next.id));
        let put =
            self.store.put_opts(&location, PutPayload::from(next.encode()?), PutOptions::from(PutMode::Create)).await;
        match put {
            Ok(_) => Ok(()),
            Err(object_store::Error::AlreadyExists { .. }) => Err(Error::Conflict {
                table: self.name.clone(),
                reason: format!("definition version {} was written by another process", next.id),
            }),
            Err(e) => Err(Error::store(&location, e)),
        }
    }

    /// Starts a write transaction: stage any number of writes, then commit
    /// them as one snapshot (optimistic: see [`Transaction`]).
    ///
    /// # Errors
    /// A failed compaction when the write stall ran one.
    pub async fn begin(&self) -> Result<Transaction<'_>> {
        self.stall().await?;
        let id = self.next_transaction.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.open_transactions.lock().unwrap_or_else(std::sync::PoisonError::into_inner).insert(id, now_ms());
        Ok(Transaction {
            _open: OpenTransaction { open: Arc::clone(&self.open_transactions), id },
            table: self,
            base: self.current(),
            staged: Staged::default(),
            blind: false,
            inserts: false,
            replay: None,
            replay_rows: 0,
            properties: std::collections::BTreeMap::new(),
        })
    }

    /// Holds the commit lock until the guard is dropped: writes queue up
    /// behind it (and then commit as one group). For tests.
    #[doc(hidden)]
    pub async fn pause_commits(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.commit_lock.lock().await
    }

    /// Write stall: with `num-sorted-run.stop-trigger` sorted runs or more
    /// outstanding (or [`crate::levels::LEVEL0_FILES_PER_TRIGGER`] times as
    /// many level-0 files), compact before writing (waiting for a compaction in
    /// progress), so reads stay fast and the run count stays bounded
    /// whatever the ingest rate.
    async fn stall(&self) -> Result<()> {
        loop {
            let manifest = Arc::clone(&self.lock_state().manifest);
            if !crate::levels::due(&self.runs_of(&manifest), &self.schema().options, true) {
                break;
            }
            if self.compact(false).await?.is_none() {
                break;
            }
        }
        Ok(())
    }

    /// The error of a write planned before the table's definition changed.
    fn altered(&self) -> Error {
        Error::Conflict {
            table: self.name.clone(),
            reason: "the table was altered while the statement ran; run it again".into(),
        }
    }

    /// Checks `rows` fit the table; returns the definition they were checked against.
    fn check_write(&self, rows: &RecordBatch, kinds: &[ValueKind]) -> Result<TableSchema> {
        let schema = self.schema();
        if let Err(e) = check_rows(&schema, rows, kinds) {
            // Rows of an earlier definition (a column was added since).
            let fields = schema.schema.fields();
            let earlier = rows.num_columns() < fields.len()
                && rows.schema().fields().iter().zip(fields).all(|(a, b)| a.name() == b.name());
            return Err(if schema.id > 0 && earlier { self.altered() } else { e });
        }
        // Rows of an earlier definition (a column was renamed since).
        let renamed_since = rows
            .schema()
            .fields()
            .iter()
            .zip(schema.schema.fields())
            .any(|(a, b)| a.name() != b.name() && schema.renames.iter().any(|r| r.from == *a.name()));
        if renamed_since {
            return Err(self.altered());
        }
        if !schema.has_primary_key() && kinds.contains(&ValueKind::Delete) {
            return Err(Error::Invalid(format!(
                "table {} has no primary key: it is append-only and rows cannot be deleted",
                self.name
            )));
        }
        if schema.options.merge_engine == MergeEngine::FirstRow && kinds.contains(&ValueKind::Delete) {
            return Err(Error::Unsupported(format!(
                "table {} uses merge-engine 'first-row', which does not accept deletes",
                self.name
            )));
        }
        Ok(schema)
    }

    /// Writes the manifest and claims the next snapshot id; updates the cached state.
    pub(crate) async fn commit_locked(
        &self,
        _guard: &tokio::sync::MutexGuard<'_, ()>,
        mut commit: Commit,
    ) -> Result<Snapshot> {
        if self.is_closed() {
            return Err(Error::NotFound { what: format!("table {}", self.name) });
        }
        let state = self.current();
        let mut files: Vec<FileMeta> =
            state.manifest.files.iter().filter(|f| !commit.removed.iter().any(|r| r.path == f.path)).cloned().collect();
        // Rows replaced: marked in the files' deletion vectors (added files
        // carry theirs; live ones get a new vector in the delta).
        let mut marked: Vec<(String, crate::deletion::DeletionVector)> = Vec::new();
        for (path, positions) in std::mem::take(&mut commit.deleted) {
            let file = match commit.added.iter_mut().find(|f| f.path == path) {
                Some(added) => added,
                None => match files.iter_mut().find(|f| f.path == path) {
                    Some(live) => live,
                    None => {
                        return Err(Error::Conflict {
                            table: self.name.clone(),
                            reason: format!("rows this write replaces moved ({path} left the table); run it again"),
                        });
                    }
                },
            };
            let vector = file.deleted.as_ref().map_or_else(
                || crate::deletion::DeletionVector::from_positions(positions.clone()),
                |d| d.with(&positions),
            );
            if vector.len() > file.rows {
                return Err(Error::Invalid(format!("deletion vector of {path} marks more rows than it holds")));
            }
            file.deleted = Some(vector.clone());
            if !commit.added.iter().any(|f| f.path == path) {
                marked.push((path, vector));
            }
        }
        files.extend(commit.added.iter().cloned());
        let manifest = Manifest { files };
        // Only this commit's delta, unless the chain of deltas is long (or
        // there is nothing to chain to): then the full manifest.
        let (manifest_path, manifest_deltas, payload) = match &state.latest {
            Some(latest) if latest.manifest_deltas.len() < crate::snapshot::MANIFEST_DELTAS => {
                let delta = crate::snapshot::ManifestDelta {
                    added: commit.added.clone(),
                    removed: commit.removed.iter().map(|f| f.path.clone()).collect(),
                    deleted: marked,
                };
                let path = format!("manifest/delta-{}", uuid::Uuid::new_v4());
                let mut deltas = latest.manifest_deltas.clone();
                deltas.push(path.clone());
                (latest.manifest.clone(), deltas, (path, crate::frame::encode(&delta)?))
            }
            _ => {
                let path = format!("manifest/manifest-{}", uuid::Uuid::new_v4());
                (path.clone(), Vec::new(), (path, crate::frame::encode(&manifest)?))
            }
        };
        let location = self.dir.child_path(&payload.0);
        // Durable with the snapshot claim below, whose sync covers it.
        self.store
            .put_opts(&location, PutPayload::from(payload.1), crate::durable::deferred())
            .await
            .map_err(|e| Error::store(&location, e))?;
        let id = state.latest.as_ref().map_or(1, |s| s.id + 1);
        let snapshot = Snapshot {
            id,
            parent: state.latest.as_ref().map(|s| s.id),
            commit_time_ms: now_ms(),
            schema_id: state.schema.id,
            kind: commit.kind.unwrap_or(CommitKind::Append),
            manifest: manifest_path,
            manifest_deltas,
            delta_rows: commit.added.iter().map(|f| f.rows).sum(),
            delta_files: commit.added.iter().map(|f| f.path.clone()).collect(),
            // A file that moved to another level stays.
            removed_files: commit
                .removed
                .iter()
                .filter(|r| !commit.added.iter().any(|a| a.path == r.path))
                .map(|f| f.path.clone())
                .collect(),
            changelog_rows: commit.changelog.iter().map(|f| f.rows).sum(),
            changelog_files: commit.changelog,
            total_rows: manifest.files.iter().map(|f| f.rows).sum(),
            // A transaction that began before other commits numbered its rows
            // from its base; its keys are disjoint from theirs (checked at commit).
            next_sequence: commit.next_sequence.unwrap_or(1).max(state.latest.as_ref().map_or(1, |s| s.next_sequence)),
            watermark: match (state.latest.as_ref().and_then(|s| s.watermark), commit.watermark) {
                (Some(a), Some(b)) => Some(a.max(b)),
                (a, b) => a.or(b),
            },
            properties: {
                let mut properties = state.latest.as_ref().map(|s| s.properties.clone()).unwrap_or_default();
                properties.extend(commit.properties);
                properties
            },
        };
        let location = self.dir.child_path(&snapshot_path(id));
        let claimed = self
            .store
            .put_opts(&location, PutPayload::from(crate::frame::encode(&snapshot)?), PutOptions::from(PutMode::Create))
            .await;
        match claimed {
            Ok(_) => {}
            Err(object_store::Error::AlreadyExists { .. }) => {
                // Another process (an engine on the same bucket) committed: catch up with
                // it, so this statement fails but the next one commits on top of it.
                if let Err(e) = self.catch_up().await {
                    tracing::warn!(table = %self.name, error = %e, "cannot read the commit that won the race");
                }
                return Err(Error::Conflict {
                    table: self.name.clone(),
                    reason: format!("snapshot {id} was committed by another writer; retry the statement"),
                });
            }
            Err(e) => return Err(Error::store(&location, e)),
        }
        self.key_indexes
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .retain(|path, _| manifest.files.iter().any(|f| &f.path == path));
        let live: HashSet<&str> = manifest.files.iter().map(|f| f.path.as_str()).collect();
        self.key_sets.lock().unwrap_or_else(std::sync::PoisonError::into_inner).retain(|path| live.contains(path));
        self.open_files
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .retain(|path, _| live.contains(path.as_str()));
        {
            let mut current = self.lock_state();
            current.latest = Some(snapshot.clone());
            current.manifest = Arc::new(manifest);
        }
        self.commits.send_replace(id);
        Ok(snapshot)
    }

    /// New data rows and changelog rows for a keyed table, looked up against
    /// `files` (the committed runs plus what a transaction staged).
    ///
    /// The rows of each key are folded in write order onto its current value
    /// by the merge engine ([`crate::fold`]). The net change per key becomes
    /// one data row and its changelog rows.
    async fn keyed_changes(
        &self,
        state: &State,
        files: &[&FileMeta],
        rows: &RecordBatch,
        kinds: &[ValueKind],
        next_seq: u64,
    ) -> Result<(RecordBatch, RecordBatch, Vec<(usize, u64)>)> {
        let schema = &state.schema;
        let converter = key_converter(schema)?;
        let keys = converter.convert_columns(&key_columns(schema, rows))?;
        // Row positions by key; a stable sort keeps each key's rows in write order.
        let mut order: Vec<usize> = (0..rows.num_rows()).collect();
        order.sort_by(|&a, &b| keys.row(a).cmp(&keys.row(b)));
        // The rows of each key: ranges of `order`.
        let mut groups: Vec<std::ops::Range<usize>> = Vec::new();
        for (i, &row) in order.iter().enumerate() {
            match groups.last_mut() {
                Some(last) if keys.row(order[last.start]) == keys.row(row) => last.end = i + 1,
                _ => groups.push(i..i + 1),
            }
        }
        let wanted: Vec<Row<'_>> = groups.iter().map(|g| keys.row(order[g.start])).collect();
        let (old_batches, old_by_key) = self.lookup(schema, files, &wanted, false).await?;
        if old_by_key.is_empty()
            && let Some(picks) = new_keys_rows(schema, kinds, &order, &groups)
        {
            // Every key is new (a load, an append of fresh keys): each key's
            // row is inserted as it is, with no per-row fold.
            let user = if picks.iter().enumerate().all(|(i, &row)| i == row as usize) {
                rows.clone()
            } else {
                arrow::compute::take_record_batch(rows, &arrow::array::UInt32Array::from(picks))?
            };
            let n = user.num_rows() as u64;
            let seqs: ArrayRef = Arc::new(UInt64Array::from_iter_values(next_seq..next_seq + n));
            let data = with_system_columns(schema, &user, Arc::clone(&seqs), ValueKind::Upsert as i8)?;
            let changelog = with_system_columns(schema, &user, seqs, RowKind::Insert as i8)?;
            return Ok((data, changelog, Vec::new()));
        }

        let fold = Fold::new(schema, &old_batches, rows, kinds)?;
        let mut data = fold.output();
        let mut data_kinds: Vec<i8> = Vec::new();
        let mut log = fold.output();
        let mut log_kinds: Vec<i8> = Vec::new();
        let mut log_seqs: Vec<u64> = Vec::new();
        // Where the versions this write replaces are (file index, row).
        let mut replaced: Vec<(usize, u64)> = Vec::new();
        for (key, group) in wanted.iter().zip(groups) {
            let at = if old_by_key.is_empty() { None } else { old_by_key.get(key.data()).copied() };
            let old = at.map(|at| (at.batch, at.row));
            let new = fold.fold(old, &order[group])?;
            let seq = next_seq + data.len() as u64;
            let unchanged = match (old, &new) {
                (None, None) => true,
                (Some(old), Some(new)) => fold.is_unchanged(old, new),
                _ => false,
            };
            if unchanged {
                continue;
            }
            if let Some(at) = at {
                // Every other case below stores a new version of the key.
                replaced.push((at.file, at.position));
            }
            match (old, new) {
                (None, Some(new)) => {
                    data.push(&fold, &new);
                    data_kinds.push(ValueKind::Upsert as i8);
                    log.push(&fold, &new);
                    log_kinds.push(RowKind::Insert as i8);
                    log_seqs.push(seq);
                }
                (Some(old), None) => {
                    data.push(&fold, &Value::Row(old));
                    data_kinds.push(ValueKind::Delete as i8);
                    log.push(&fold, &Value::Row(old));
                    log_kinds.push(RowKind::Delete as i8);
                    log_seqs.push(seq);
                }
                (Some(old), Some(new)) if fold.is_unchanged_in(old, &new, schema.options.changelog_columns) => {
                    // Only columns that make no change (hidden state) changed.
                    data.push(&fold, &new);
                    data_kinds.push(ValueKind::Upsert as i8);
                }
                (Some(old), Some(new)) => {
                    data.push(&fold, &new);
                    data_kinds.push(ValueKind::Upsert as i8);
                    log.push(&fold, &Value::Row(old));
                    log.push(&fold, &new);
                    log_kinds.extend([RowKind::UpdateBefore as i8, RowKind::UpdateAfter as i8]);
                    log_seqs.extend([seq, seq]);
                }
                (None, None) => {}
            }
        }
        let seqs = UInt64Array::from_iter_values(next_seq..next_seq + data_kinds.len() as u64);
        let data = append_system(schema, &fold.gather(&data)?, Arc::new(seqs), Arc::new(Int8Array::from(data_kinds)))?;
        let changelog = append_system(
            schema,
            &fold.gather(&log)?,
            Arc::new(UInt64Array::from(log_seqs)),
            Arc::new(Int8Array::from(log_kinds)),
        )?;
        Ok((data, changelog, replaced))
    }

    /// Plans a scan of `snapshot` (the latest when `None`).
    ///
    /// # Errors
    /// An unknown or expired snapshot; damaged metadata.
    pub async fn plan_scan(&self, snapshot: Option<u64>, request: &ScanRequest) -> Result<ScanPlan> {
        let state = self.current();
        let (id, manifest) = match snapshot {
            None => (state.latest.as_ref().map(|s| s.id), state.manifest),
            Some(id) => {
                let snapshot = self.read_snapshot(id).await?;
                (Some(id), Arc::new(self.read_manifest(&snapshot).await?))
            }
        };
        scan::plan(&self.dir, &state.schema, id, &manifest.files, request)
    }

    /// Reads partition `partition` of `plan`: a stream of batches in bounded memory.
    pub fn read_partition(&self, plan: &ScanPlan, partition: usize) -> BoxStream<'static, Result<RecordBatch>> {
        scan::read(Arc::clone(&self.store), self.dir.clone(), plan, partition)
    }

    /// The table's rows as of `snapshot` (the latest when `None`), all in memory.
    ///
    /// # Errors
    /// An unknown or expired snapshot; corrupt files.
    pub async fn scan(&self, snapshot: Option<u64>) -> Result<Vec<RecordBatch>> {
        let plan = self.plan_scan(snapshot, &ScanRequest::default()).await?;
        self.read_partition(&plan, 0).try_collect().await
    }

    /// Every snapshot still stored, oldest first.
    ///
    /// # Errors
    /// Storage failures; damaged snapshot files.
    pub async fn snapshots(&self) -> Result<Vec<Snapshot>> {
        let mut out = Vec::new();
        for id in self.snapshot_ids().await? {
            match self.read_snapshot(id).await {
                Ok(snapshot) => out.push(snapshot),
                // Expired while listing.
                Err(Error::NotFound { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }

    /// Ids of the stored snapshots, ascending.
    pub(crate) async fn snapshot_ids(&self) -> Result<Vec<u64>> {
        let dir = self.dir.clone().join("snapshot");
        let metas: Vec<_> = self.store.list(Some(&dir)).try_collect().await.map_err(|e| Error::store(&dir, e))?;
        let mut ids: Vec<u64> = metas
            .iter()
            .filter_map(|m| {
                m.location.filename().and_then(|f| f.strip_prefix("snapshot-")).and_then(|i| i.parse().ok())
            })
            .collect();
        ids.sort_unstable();
        Ok(ids)
    }

    /// The live data files at `snapshot` (the latest when `None`).
    ///
    /// # Errors
    /// An unknown snapshot; damaged metadata.
    pub async fn files(&self, snapshot: Option<u64>) -> Result<Vec<FileMeta>> {
        match snapshot {
            None => Ok(self.lock_state().manifest.files.clone()),
            Some(id) => Ok(self.read_manifest(&self.read_snapshot(id).await?).await?.files),
        }
    }
}

/// What a commit changes.
#[derive(Debug, Default)]
pub(crate) struct Commit {
    pub kind: Option<CommitKind>,
    pub added: Vec<FileMeta>,
    pub removed: Vec<FileMeta>,
    pub changelog: Vec<FileMeta>,
    pub next_sequence: Option<u64>,
    /// Properties this commit sets (others carry over from the parent).
    pub properties: std::collections::BTreeMap<String, String>,
    /// The watermark of the rows this commit wrote (the snapshot keeps the
    /// larger of it and the parent's).
    pub watermark: Option<i64>,
    /// Rows to mark deleted in live or added files ([`crate::deletion`]).
    pub deleted: crate::deletion::Marks,
}

/// Files written by a write that is not committed yet.
#[derive(Debug, Default)]
struct Staged {
    data: Vec<FileMeta>,
    changelog: Vec<FileMeta>,
    /// Data files the commit removes (a truncation of an append-only table).
    removed: Vec<FileMeta>,
    next_seq: Option<u64>,
    /// Largest event time staged minus the watermark delay (table option `watermark`).
    watermark: Option<i64>,
    /// Rows of committed or staged files that the staged writes replace
    /// (tables with deletion vectors: [`crate::deletion`]).
    deleted: crate::deletion::Marks,
    /// Writes buffered in memory, not yet staged as files ([`Staged::buffer`]).
    pending: Vec<(RecordBatch, Vec<ValueKind>)>,
    /// The bytes of values `pending` holds ([`crate::file::data_bytes`]).
    pending_bytes: usize,
    /// The memory `pending` keeps alive: whole buffers, also those it
    /// shares with its source (a slice or a `take` of string views keeps
    /// all of its source's strings).
    pending_memory: usize,
}

/// A write buffer also stages once the memory its batches keep alive
/// reaches this many times `write_buffer_bytes`: slices of big batches
/// make smaller files rather than hold their sources without bound.
const BUFFER_MEMORY_FACTOR: usize = 4;

impl Staged {
    fn is_empty(&self) -> bool {
        self.data.is_empty() && self.changelog.is_empty() && self.removed.is_empty() && self.pending.is_empty()
    }

    /// Buffers a write; stages what is buffered once it holds
    /// `write_buffer_bytes` (table option) of values, or keeps
    /// [`BUFFER_MEMORY_FACTOR`] times that alive. Staging writes together
    /// is staging them one after the other: each key's changes fold in
    /// write order, and the changelog holds the net change of the transaction.
    async fn buffer(&mut self, table: &Table, state: &State, rows: &RecordBatch, kinds: &[ValueKind]) -> Result<()> {
        if rows.num_rows() == 0 {
            return Ok(());
        }
        self.pending_bytes += crate::file::data_bytes(rows);
        self.pending_memory += rows.get_array_memory_size();
        self.pending.push((rows.clone(), kinds.to_vec()));
        let limit = state.schema.options.write_buffer_bytes;
        if self.pending_bytes >= limit || self.pending_memory >= limit.saturating_mul(BUFFER_MEMORY_FACTOR) {
            self.flush(table, state).await
        } else {
            Ok(())
        }
    }

    /// Stages the buffered writes as one write.
    async fn flush(&mut self, table: &Table, state: &State) -> Result<()> {
        let pending = std::mem::take(&mut self.pending);
        self.pending_bytes = 0;
        self.pending_memory = 0;
        let (rows, kinds) = match pending.len() {
            0 => return Ok(()),
            1 => pending.into_iter().next().unwrap_or_else(|| unreachable!("one write")),
            _ => {
                let rows = concat_batches(&pending[0].0.schema(), pending.iter().map(|(rows, _)| rows))?;
                let kinds: Vec<ValueKind> = pending.iter().flat_map(|(_, kinds)| kinds.iter().copied()).collect();
                // The writes are copied into `rows`: not kept twice while staging.
                drop(pending);
                (rows, kinds)
            }
        };
        self.stage(table, state, &rows, &kinds).await
    }

    /// Computes the data and changelog rows of a write against the
    /// committed state plus what is staged, and writes them as new files.
    async fn stage(&mut self, table: &Table, state: &State, rows: &RecordBatch, kinds: &[ValueKind]) -> Result<()> {
        let schema = &state.schema;
        if let Some(watermark) = event_time_watermark(schema, rows, kinds)? {
            self.watermark = Some(self.watermark.map_or(watermark, |w| w.max(watermark)));
        }
        let next_seq = self.next_seq.unwrap_or_else(|| state.latest.as_ref().map_or(1, |s| s.next_sequence));
        let blind_keyed = schema.options.no_changelog
            && schema.options.merge_engine == MergeEngine::Deduplicate
            && schema.options.sequence_field.is_none()
            && !kinds.contains(&ValueKind::Insert);
        let (data, changelog) = if schema.has_primary_key() && blind_keyed && !schema.deletion_vectors() {
            last_change_per_key(schema, rows, kinds, next_seq)?
        } else if schema.has_primary_key() {
            // Lookups see the committed runs and what this transaction staged.
            let files: Vec<&FileMeta> = state.manifest.files.iter().chain(&self.data).collect();
            let (data, changelog, replaced) = table.keyed_changes(state, &files, rows, kinds, next_seq).await?;
            if schema.deletion_vectors() {
                for (file, position) in replaced {
                    self.deleted.entry(files[file].path.clone()).or_default().push(position);
                }
            }
            (data, changelog)
        } else {
            let seqs: ArrayRef = Arc::new(UInt64Array::from_iter_values(next_seq..next_seq + rows.num_rows() as u64));
            let data = with_system_columns(schema, rows, Arc::clone(&seqs), ValueKind::Upsert as i8)?;
            let changelog = with_system_columns(schema, rows, seqs, RowKind::Insert as i8)?;
            (data, changelog)
        };
        let changelog = if schema.options.no_changelog { changelog.slice(0, 0) } else { changelog };
        // When every change is a new row (+I), the changelog holds exactly the
        // data rows, with equal `_kind` codes (`Upsert` = `+I` = 0): the data
        // file serves as the changelog file too, and is written once.
        let inserts_only = changelog.num_rows() == data.num_rows()
            && changelog
                .column(changelog.num_columns() - 1)
                .as_primitive::<Int8Type>()
                .values()
                .iter()
                .all(|&k| k == RowKind::Insert as i8);
        if data.num_rows() > 0 {
            let keys = schema.primary_key.clone();
            let meta = table.write_file("data", 0, keys, Some(ValueKind::Delete as i8), schema, &data).await?;
            table.seed_key_set(schema, &meta, &data)?;
            if inserts_only {
                self.changelog.push(meta.clone());
            }
            self.data.push(meta);
        }
        if changelog.num_rows() > 0 && !inserts_only {
            self.changelog.push(table.write_file("changelog", 0, vec![], None, schema, &changelog).await?);
        }
        self.next_seq = Some(next_seq + data.num_rows() as u64);
        Ok(())
    }

    /// Stages the net changes this staged (its data files, in order) again
    /// on top of `state`, as blind writes (`inserts`: upserts as inserts).
    /// On error, returns what was staged again, to be removed.
    async fn restage(
        &self,
        table: &Table,
        state: &State,
        inserts: bool,
    ) -> std::result::Result<Staged, (Error, Staged)> {
        let mut again = Staged::default();
        let schema = &state.schema;
        let target = schema.data_file_schema();
        let user: Vec<usize> = (0..schema.schema.fields().len()).collect();
        for meta in &self.data {
            let result: Result<()> = async {
                let reader = FileReader::open(&table.store, &table.dir, Arc::new(meta.clone()), &target).await?;
                for group in 0..meta.row_groups.len() {
                    for batch in reader.read_row_group(group, None, READ_BATCH_ROWS).await? {
                        let codes = batch.column(user.len() + 1).as_primitive_opt::<Int8Type>().ok_or_else(|| {
                            Error::corrupt(table.dir.child_path(&meta.path), "_kind column is not Int8")
                        })?;
                        let kinds: Vec<ValueKind> = codes
                            .values()
                            .iter()
                            .map(|&c| match c {
                                c if c == ValueKind::Delete as i8 => ValueKind::Delete,
                                _ if inserts => ValueKind::Insert,
                                _ => ValueKind::Upsert,
                            })
                            .collect();
                        again.buffer(table, state, &batch.project(&user)?, &kinds).await?;
                    }
                }
                Ok(())
            }
            .await;
            if let Err(e) = result {
                return Err((e, again));
            }
        }
        if let Err(e) = again.flush(table, state).await {
            return Err((e, again));
        }
        Ok(again)
    }

    async fn commit(self, table: &Table, guard: &tokio::sync::MutexGuard<'_, ()>) -> Result<Option<Snapshot>> {
        self.commit_with(table, guard, std::collections::BTreeMap::new()).await
    }

    /// Commits the staged files and `properties`; commits nothing when both are empty.
    async fn commit_with(
        self,
        table: &Table,
        guard: &tokio::sync::MutexGuard<'_, ()>,
        properties: std::collections::BTreeMap<String, String>,
    ) -> Result<Option<Snapshot>> {
        if self.is_empty() && properties.is_empty() {
            return Ok(None);
        }
        let commit = Commit {
            kind: Some(CommitKind::Append),
            added: self.data,
            removed: self.removed,
            changelog: self.changelog,
            next_sequence: self.next_seq,
            properties,
            watermark: self.watermark,
            deleted: self.deleted,
        };
        table.commit_locked(guard, commit).await.map(Some)
    }

    /// Removes the staged files (best effort: what is left is unreferenced garbage).
    async fn abort(self, table: &Table) {
        for meta in self.data.iter().chain(&self.changelog) {
            let _ = table.store.delete(&table.dir.child_path(&meta.path)).await;
        }
    }
}

impl Table {
    /// Writes `batch` as a new file under `folder`.
    pub(crate) async fn write_file(
        &self,
        folder: &str,
        level: u32,
        key_columns: Vec<usize>,
        delete_code: Option<i8>,
        schema: &TableSchema,
        batch: &RecordBatch,
    ) -> Result<FileMeta> {
        let mut file = self.new_file(folder, level, key_columns, delete_code, schema);
        file.rows = Some(batch.num_rows());
        let mut writer = FileWriter::new(file, &schema.data_file_schema())?;
        writer.write(batch)?;
        writer.finish(&self.store, &self.dir).await
    }

    pub(crate) fn file_writer(
        &self,
        folder: &str,
        level: u32,
        key_columns: Vec<usize>,
        delete_code: Option<i8>,
        schema: &TableSchema,
    ) -> Result<FileWriter> {
        let file = self.new_file(folder, level, key_columns, delete_code, schema);
        FileWriter::new(file, &schema.data_file_schema())
    }

    /// A new file's name and layout.
    pub(crate) fn new_file(
        &self,
        folder: &str,
        level: u32,
        key_columns: Vec<usize>,
        delete_code: Option<i8>,
        schema: &TableSchema,
    ) -> NewFile {
        let user = schema.schema.fields().len();
        NewFile {
            relative: format!("{folder}/{}.parquet", uuid::Uuid::new_v4()),
            level,
            key_columns,
            schema_id: schema.id,
            row_group_rows: schema.options.row_group_rows,
            seq_kind: (user, user + 1, delete_code),
            light: schema.options.no_changelog,
            mark_deletes: folder == "data" && delete_code.is_some() && schema.deletion_vectors(),
            rows: None,
        }
    }
}

/// The largest event time among the upserted `rows`, in milliseconds, minus
/// the table's watermark delay; `None` without a watermark or such rows.
fn event_time_watermark(schema: &TableSchema, rows: &RecordBatch, kinds: &[ValueKind]) -> Result<Option<i64>> {
    let Some(watermark) = &schema.options.watermark else { return Ok(None) };
    let Ok(index) = schema.schema.index_of(&watermark.column) else { return Ok(None) };
    let column = rows.column(index);
    let millis = arrow::compute::cast(
        column,
        &arrow::datatypes::DataType::Timestamp(arrow::datatypes::TimeUnit::Millisecond, None),
    )?;
    let millis = millis.as_primitive::<arrow::datatypes::TimestampMillisecondType>();
    let latest = millis.iter().zip(kinds).filter(|(_, kind)| **kind != ValueKind::Delete).filter_map(|(t, _)| t).max();
    Ok(latest.map(|t| t - watermark.delay_ms))
}

pub(crate) fn key_columns(schema: &TableSchema, batch: &RecordBatch) -> Vec<ArrayRef> {
    schema.primary_key.iter().map(|&i| Arc::clone(batch.column(i))).collect()
}

/// The data rows of a write to a table that keeps no changelog
/// ([`crate::TableOptions::no_changelog`]): each key's last change, in key
/// order, as it is — and no changelog rows.
fn last_change_per_key(
    schema: &TableSchema,
    rows: &RecordBatch,
    kinds: &[ValueKind],
    next_seq: u64,
) -> Result<(RecordBatch, RecordBatch)> {
    let keys = key_converter(schema)?.convert_columns(&key_columns(schema, rows))?;
    let mut order: Vec<usize> = (0..rows.num_rows()).collect();
    // Stable: a key's rows stay in write order, the last one wins.
    order.sort_by(|&a, &b| keys.row(a).cmp(&keys.row(b)));
    let mut last: Vec<u32> = Vec::with_capacity(order.len());
    for (i, &row) in order.iter().enumerate() {
        if order.get(i + 1).is_none_or(|&next| keys.row(next) != keys.row(row)) {
            last.push(row as u32);
        }
    }
    let indexes = arrow::array::UInt32Array::from(last);
    let user = arrow::compute::take_record_batch(rows, &indexes)?;
    let seqs = UInt64Array::from_iter_values(next_seq..next_seq + indexes.len() as u64);
    let codes: Int8Array = indexes.values().iter().map(|&row| Some(kinds[row as usize] as i8)).collect();
    let data = append_system(schema, &user, Arc::new(seqs), Arc::new(codes))?;
    let changelog = data.slice(0, 0);
    Ok((data, changelog))
}

/// When no key of a write has a stored row: the row each key ends up with,
/// by position in the write, in key order (`order` sorted by key, stable;
/// `groups` its runs of equal keys) — where that is one of its rows as
/// written: no deletes, and either one row per key or a `deduplicate` table
/// without `sequence.field` upserting (the last row wins). `None` when the
/// key's rows must be folded ([`Fold`]): an aggregation table, inserts
/// that keep the first row, a sequence field, deletes.
fn new_keys_rows(
    schema: &TableSchema,
    kinds: &[ValueKind],
    order: &[usize],
    groups: &[std::ops::Range<usize>],
) -> Option<Vec<u32>> {
    let engine = schema.options.merge_engine;
    if kinds.contains(&ValueKind::Delete) || engine == MergeEngine::Aggregation {
        return None;
    }
    let single = groups.len() == order.len();
    let last_wins = engine == MergeEngine::Deduplicate
        && schema.options.sequence_field.is_none()
        && kinds.iter().all(|&k| k == ValueKind::Upsert);
    if !single && !last_wins {
        return None;
    }
    Some(groups.iter().map(|g| order[g.end - 1] as u32).collect())
}

fn append_system(schema: &TableSchema, user: &RecordBatch, seqs: ArrayRef, kinds: ArrayRef) -> Result<RecordBatch> {
    let mut columns = user.columns().to_vec();
    columns.push(seqs);
    columns.push(kinds);
    Ok(RecordBatch::try_new(schema.data_file_schema(), columns)?)
}

fn with_system_columns(schema: &TableSchema, rows: &RecordBatch, seqs: ArrayRef, kind: i8) -> Result<RecordBatch> {
    let kinds = Arc::new(Int8Array::from(vec![kind; rows.num_rows()]));
    append_system(schema, rows, seqs, kinds)
}

/// Rows must have the table's columns, in order, and non-null keys.
fn check_rows(schema: &TableSchema, rows: &RecordBatch, kinds: &[ValueKind]) -> Result<()> {
    if kinds.len() != rows.num_rows() {
        return Err(Error::Invalid(format!("{} rows but {} row kinds", rows.num_rows(), kinds.len())));
    }
    let expected = schema.schema.fields();
    let actual = rows.schema();
    if actual.fields().len() != expected.len() {
        return Err(Error::Invalid(format!(
            "rows have {} columns, the table has {}",
            actual.fields().len(),
            expected.len()
        )));
    }
    for (field, column) in expected.iter().zip(rows.columns()) {
        if column.data_type() != field.data_type() {
            return Err(Error::Invalid(format!(
                "column \"{}\" is {} but the rows have {}",
                field.name(),
                field.data_type(),
                column.data_type()
            )));
        }
        if !field.is_nullable() && column.null_count() > 0 {
            return Err(Error::NotNull(format!(
                "null value in column \"{}\" violates not-null constraint",
                field.name()
            )));
        }
    }
    Ok(())
}

async fn get(store: &Arc<dyn ObjectStore>, location: &Path) -> Result<bytes::Bytes> {
    match store.get(location).await {
        Ok(got) => got.bytes().await.map_err(|e| Error::store(location, e)),
        // A file a snapshot or the schema list names is missing: the table is damaged, no "not found".
        Err(object_store::Error::NotFound { .. }) => Err(Error::corrupt(location, "the file is missing")),
        Err(e) => Err(Error::store(location, e)),
    }
}

/// The largest `<prefix><id>` under `dir`.
async fn max_id(store: &Arc<dyn ObjectStore>, dir: &Path, prefix: &str) -> Result<Option<u64>> {
    let metas: Vec<_> = store.list(Some(dir)).try_collect().await.map_err(|e| Error::store(dir, e))?;
    Ok(metas
        .iter()
        .filter_map(|m| {
            m.location.filename().and_then(|f| f.strip_prefix(prefix)).and_then(|id| id.parse::<u64>().ok())
        })
        .max())
}
