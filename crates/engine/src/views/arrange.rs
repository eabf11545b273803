//! Arrangements: a join input of a view, indexed by its join key.
//!
//! A step of a join view joins the change of one input with the other
//! input as of a snapshot. Read whole, that input costs a step time in
//! proportion to its size; read by key, in proportion to the change and its
//! matches. A table is read by key when the join columns hold the leading
//! columns of its primary key ([`storage::Table::get_prefixes`]). For join
//! columns that do not hold its first key column, views keep an
//! arrangement: a hidden Dynamic Table with the source's rows keyed by the
//! join columns and then the source's primary key. Rows whose join key is
//! NULL match nothing and are left out.
//!
//! **Shared.** Views that join the same source on the same columns share
//! one arrangement, in the source's directory (`index/<columns>`), opened
//! once per warehouse ([`Arrangements`]). A view that cannot use the shared
//! one (it lacks the view's position, or was built for another version of
//! the source's columns) keeps its own in the view's directory
//! (`arrangement/<source>(<columns>)`).
//!
//! **Positions.** A step that advances the source from snapshot `p` to `q`
//! writes the changelog of `(p, q]` to the arrangement (per arrangement
//! key, the last change wins: `+I`/`+U` upsert, `-U`/`-D` delete) and
//! commits it with the property `arrangement.position = q`, under the
//! arrangement's writer lock. Each arrangement snapshot so names the source
//! snapshot it equals, and a step that reads the source as of `p` probes
//! the arrangement snapshot that names `p`. Every view using it holds the
//! arrangement's snapshots from its own position on. The view furthest
//! ahead advances it; a view behind ends its steps at positions the
//! arrangement has (the maintainer's step end), or beyond the
//! arrangement's position, which it then advances from there, reading the
//! source's changelog itself. Writes are idempotent: after a crash between
//! the arrangement's commit and the view's, the step runs again and finds
//! the arrangement there already. An arrangement that lacks a view's
//! position and that no other view uses (new, damaged, expired, or of
//! another definition) is built again from the source as of that position.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, Weak};

use datafusion::arrow::array::{Array, ArrayRef, AsArray, RecordBatch, UInt32Array};
use datafusion::arrow::compute::take;
use datafusion::arrow::datatypes::{Field, Int8Type, Schema};
use datafusion::arrow::row::{RowConverter, SortField};
use datafusion::catalog::TableProvider;
use futures::{StreamExt, TryStreamExt};
use object_store::path::Path;
use streamhouse_storage as storage;

use super::plan::Source;
use crate::error::{Error, Result, StatusCode};

/// The snapshot property naming the source snapshot an arrangement equals.
const POSITION_PROPERTY: &str = "arrangement.position";

/// Rows per write while building.
const BUILD_BATCH_ROWS: usize = 64 * 1024;

/// Changelog rows per write when an arrangement catches up by itself.
const CATCH_UP_ROWS: usize = 64 * 1024;

/// The shared arrangements open in a warehouse, by directory.
#[derive(Debug, Default)]
pub struct Arrangements {
    open: tokio::sync::Mutex<HashMap<String, Weak<Shared>>>,
}

impl Arrangements {
    /// Removes the shared arrangements in `dirs` that no open view uses
    /// (after a view that used them was dropped).
    ///
    /// # Errors
    /// 58030 when the store fails.
    pub async fn remove_unused(&self, store: &Arc<dyn object_store::ObjectStore>, dirs: &[Path]) -> Result<()> {
        let open = self.open.lock().await;
        for dir in dirs {
            if open.get(dir.as_ref()).and_then(Weak::upgrade).is_none() {
                remove_hidden_table(store, dir, "unused arrangement").await?;
            }
        }
        Ok(())
    }
}

/// One arrangement's table and the source snapshots it holds.
#[derive(Debug)]
pub struct Shared {
    dir: Path,
    /// The source's columns its key leads with.
    columns: Vec<usize>,
    table: Arc<storage::Table>,
    /// Source snapshot → arrangement snapshot (0: empty), for the
    /// arrangement's commits from the oldest position a view uses on.
    at: Mutex<BTreeMap<u64, u64>>,
    /// The position of each view using it (by use id).
    users: Mutex<HashMap<u64, u64>>,
    /// Held while a view advances it.
    writer: Arc<tokio::sync::Mutex<()>>,
}

/// One view's use of an arrangement of a source keyed by some of its columns.
#[derive(Debug)]
pub struct Arrangement {
    /// The source, as an index into the view plan's sources.
    pub source: usize,
    /// The source's columns the arrangement's key leads with.
    pub columns: Vec<usize>,
    shared: Arc<Shared>,
    /// Kept in the view's own directory (not shared).
    own: bool,
    use_id: u64,
    hold: storage::SnapshotHold,
}

/// What a view's join inputs are read by, for `sys.views`.
#[derive(Debug, Clone)]
pub struct ArrangementUse {
    /// The source, as an index into the view plan's sources.
    pub source: usize,
    /// The arrangement's leading columns, by name.
    pub columns: String,
    /// The shared arrangement's directory (`None`: the view's own).
    pub shared_dir: Option<Path>,
    shared: Weak<Shared>,
}

impl ArrangementUse {
    /// `columns (N views)`, or `columns (own)` for one in the view's directory.
    pub fn describe(&self) -> String {
        match (&self.shared_dir, self.shared.upgrade()) {
            (None, _) => format!("{} (own)", self.columns),
            (Some(_), Some(shared)) => {
                let n = crate::lock(&shared.users).len();
                format!("{} ({n} view{})", self.columns, if n == 1 { "" } else { "s" })
            }
            (Some(_), None) => format!("{} (closed)", self.columns),
        }
    }
}

/// Where the shared arrangement of `source` on `columns` lives: the source's directory.
fn shared_dir(source: &Source, columns: &[usize]) -> Path {
    source.table.storage().dir().clone().join("index").join(column_names(source, columns))
}

/// Where a view's own arrangement of `source` on `columns` lives.
fn own_dir(view_dir: &Path, source: &Source, columns: &[usize]) -> Path {
    view_dir.clone().join("arrangement").join(format!("{}({})", source.name, column_names(source, columns)))
}

fn column_names(source: &Source, columns: &[usize]) -> String {
    let schema = source.table.schema();
    let names: Vec<&str> = columns.iter().map(|&c| schema.field(c).name().as_str()).collect();
    names.join(",")
}

/// The arrangement's definition: the source's columns, keyed on `columns`
/// and then the source's primary key.
fn definition(source: &Source, columns: &[usize]) -> Result<storage::TableSchema> {
    let schema = source.table.storage().schema();
    let fields = &schema.schema.fields();
    let mut key: Vec<&str> = columns.iter().map(|&c| fields[c].name().as_str()).collect();
    for &k in &schema.primary_key {
        if !columns.contains(&k) {
            key.push(fields[k].name().as_str());
        }
    }
    let arrow = Arc::new(Schema::new(
        fields.iter().map(|f| Field::new(f.name(), f.data_type().clone(), true)).collect::<Vec<_>>(),
    ));
    Ok(storage::TableSchema::new(0, arrow, &key, hidden_table_options())?)
}

fn fits(table: &storage::Table, want: &storage::TableSchema) -> bool {
    let current = table.schema();
    current.schema.fields() == want.schema.fields() && current.primary_key == want.primary_key
}

impl Shared {
    fn new(dir: Path, columns: &[usize], table: storage::Table) -> Self {
        Self {
            dir,
            columns: columns.to_vec(),
            table: Arc::new(table),
            at: Mutex::new(BTreeMap::new()),
            users: Mutex::new(HashMap::new()),
            writer: Arc::new(tokio::sync::Mutex::new(())),
        }
    }

    /// The arrangement stored in `dir`; `None` when there is none, or it is
    /// damaged or of another definition.
    async fn open(
        store: &Arc<dyn object_store::ObjectStore>,
        dir: &Path,
        name: &str,
        columns: &[usize],
        want: &storage::TableSchema,
    ) -> Result<Option<Self>> {
        match storage::Table::open(Arc::clone(store), dir.clone(), name).await {
            Ok(table) if fits(&table, want) => {
                let shared = Self::new(dir.clone(), columns, table);
                shared.load().await?;
                Ok(Some(shared))
            }
            Ok(table) => {
                table.close().await;
                Ok(None)
            }
            Err(_) => Ok(None),
        }
    }

    /// The arrangement stored in `dir` if it holds (or can catch up to) the
    /// source as of `position`, else one built again there.
    async fn open_or_build(
        store: &Arc<dyn object_store::ObjectStore>,
        dir: &Path,
        name: &str,
        source: &Source,
        columns: &[usize],
        position: u64,
    ) -> Result<Self> {
        let want = definition(source, columns)?;
        if let Some(shared) = Self::open(store, dir, name, columns, &want).await? {
            if shared.reach(source, position).await {
                return Ok(shared);
            }
            shared.table.close().await;
        }
        remove_hidden_table(store, dir, name).await?;
        let table = storage::Table::create(Arc::clone(store), dir.clone(), name, want).await?;
        let shared = Self::new(dir.clone(), columns, table);
        shared.build(source, position).await?;
        Ok(shared)
    }

    /// Reads which source snapshot each stored arrangement snapshot equals.
    async fn load(&self) -> Result<()> {
        let mut at = BTreeMap::new();
        for snapshot in self.table.snapshots().await? {
            if let Some(position) = snapshot.properties.get(POSITION_PROPERTY).and_then(|p| p.parse::<u64>().ok()) {
                at.insert(position, snapshot.id);
            }
        }
        *crate::lock(&self.at) = at;
        Ok(())
    }

    /// Fills the (new, empty) arrangement from the source as of `position`.
    async fn build(&self, source: &Source, position: u64) -> Result<()> {
        let mut txn = self.table.begin().await?.blind();
        if position > 0 {
            let table = source.table.storage();
            let plan = table.plan_scan(Some(position), &storage::ScanRequest::default()).await?;
            let mut pending: Vec<RecordBatch> = Vec::new();
            let mut rows = 0;
            for partition in 0..plan.partitions.len() {
                let mut stream = table.read_partition(&plan, partition);
                while let Some(batch) = stream.next().await {
                    let batch = self.keyed_rows(&batch?)?;
                    rows += batch.num_rows();
                    pending.push(batch);
                    if rows >= BUILD_BATCH_ROWS {
                        self.write_upserts(&mut txn, &std::mem::take(&mut pending)).await?;
                        rows = 0;
                    }
                }
            }
            self.write_upserts(&mut txn, &pending).await?;
        }
        txn.set_property(POSITION_PROPERTY, position.to_string());
        let snapshot =
            txn.commit().await?.ok_or_else(|| Error::internal("an arrangement's commit made no snapshot"))?;
        // The build wrote one run per batch, each over the whole key range
        // (the source is read in its own key order): merged now, as part of
        // the backfill, not by the first steps (a write stalls at that many
        // runs). The snapshot that names the position stays the build's.
        self.table.compact(true).await?;
        crate::lock(&self.at).insert(position, snapshot.id);
        Ok(())
    }

    async fn write_upserts(&self, txn: &mut storage::Transaction<'_>, batches: &[RecordBatch]) -> Result<()> {
        if batches.is_empty() {
            return Ok(());
        }
        let rows = datafusion::arrow::compute::concat_batches(&self.table.schema().schema, batches)?;
        if rows.num_rows() > 0 {
            txn.write(&rows, &vec![storage::ValueKind::Upsert; rows.num_rows()]).await?;
        }
        Ok(())
    }

    /// The rows of `batch` (source user columns, possibly followed by
    /// system columns) whose arrangement columns are all non-NULL, in the
    /// arrangement's schema.
    fn keyed_rows(&self, batch: &RecordBatch) -> Result<RecordBatch> {
        let schema = self.table.schema().schema;
        let values: Vec<ArrayRef> = batch.columns()[..schema.fields().len()].to_vec();
        let keep: Vec<u32> = (0..batch.num_rows())
            .filter(|&i| self.columns.iter().all(|&c| values[c].is_valid(i)))
            .map(|i| i as u32)
            .collect();
        let values = if keep.len() == batch.num_rows() { values } else { take_columns(&values, &keep)? };
        Ok(RecordBatch::try_new(schema, values)?)
    }

    fn snapshot_for(&self, position: u64) -> Option<u64> {
        crate::lock(&self.at).get(&position).copied()
    }

    /// The latest source snapshot the arrangement has caught up with.
    fn position(&self) -> u64 {
        crate::lock(&self.at).keys().next_back().copied().unwrap_or(0)
    }

    /// Whether it holds the source as of `position`, catching up to it
    /// (reading the source's changelog) when it is behind. False when it
    /// is past `position` without holding it, or cannot catch up (the
    /// source's snapshots are gone).
    async fn reach(&self, source: &Source, position: u64) -> bool {
        if self.snapshot_for(position).is_some() {
            return true;
        }
        let _writer = self.writer.lock().await;
        if self.snapshot_for(position).is_some() {
            return true;
        }
        // Forgotten when the views using it moved on (before this view
        // started), but maybe not expired yet: its snapshots say.
        if let Err(e) = self.load().await {
            tracing::debug!(arrangement = %self.dir, error = %e, "cannot list an arrangement's snapshots");
            return false;
        }
        if self.snapshot_for(position).is_some() {
            return true;
        }
        let at = self.position();
        if at > position || crate::lock(&self.at).is_empty() {
            return false;
        }
        match self.catch_up(source, at, position).await {
            Ok(()) => true,
            Err(e) => {
                tracing::debug!(arrangement = %self.dir, error = %e, "an arrangement cannot catch up");
                false
            }
        }
    }

    /// Advances it from source snapshot `from` (its position) to `to`,
    /// reading the source's changelog; the caller holds the writer lock.
    async fn catch_up(&self, source: &Source, from: u64, to: u64) -> Result<()> {
        let mut advance = Advance::new(self, to, None).await?;
        let mut reader = source.table.storage().changelog_reader(from, Some(to));
        loop {
            let piece = reader.next_rows(CATCH_UP_ROWS).await?;
            if piece.is_empty() {
                break;
            }
            advance.write(&piece).await?;
        }
        advance.commit().await
    }

    /// Forgets the snapshots of positions before the oldest one a view uses.
    fn prune(&self) {
        let oldest = crate::lock(&self.users).values().min().copied();
        if let Some(oldest) = oldest {
            let mut at = crate::lock(&self.at);
            let kept = at.split_off(&oldest);
            *at = kept;
        }
    }
}

/// How a step found an arrangement it advances ([`Arrangement::begin_advance`]).
pub enum Begin<'a> {
    /// At the step's start: the step's changelog goes to it.
    Advance(Box<Advance<'a>>),
    /// At the step's end already (another view advanced it, it caught up by
    /// itself, or a step is replayed after a crash).
    There,
    /// Past the step's end without holding it (another view advanced it
    /// meanwhile): the step must end elsewhere.
    Moved,
}

impl Arrangement {
    /// Opens the arrangement of `source` on `columns` for a view at source
    /// snapshot `position`: with `share`, the shared one when it holds (or
    /// catches up to) that position, else the view's own (built where
    /// needed).
    ///
    /// # Errors
    /// Storage failures; the source's snapshot `position` expired.
    pub async fn open(
        registry: &Arrangements,
        view_dir: &Path,
        index: usize,
        source: &Source,
        columns: Vec<usize>,
        position: u64,
        share: bool,
    ) -> Result<Self> {
        let store = Arc::clone(source.table.storage().store());
        let name = format!("arrangement of {}", source.name);
        let dir = shared_dir(source, &columns);
        let mut open = registry.open.lock().await;
        let shared = match open.get(dir.as_ref()).and_then(Weak::upgrade) {
            _ if !share => None,
            Some(shared) => {
                let want = definition(source, &columns)?;
                (fits(&shared.table, &want) && shared.reach(source, position).await).then_some(shared)
            }
            None => {
                let shared = Arc::new(Shared::open_or_build(&store, &dir, &name, source, &columns, position).await?);
                open.insert(dir.to_string(), Arc::downgrade(&shared));
                Some(shared)
            }
        };
        let own = own_dir(view_dir, source, &columns);
        let (shared, is_own) = match shared {
            Some(shared) => {
                // One the view kept before arrangements were shared.
                remove_hidden_table(&store, &own, &name).await?;
                (shared, false)
            }
            None => (Arc::new(Shared::open_or_build(&store, &own, &name, source, &columns, position).await?), true),
        };
        static USES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        let use_id = USES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        crate::lock(&shared.users).insert(use_id, position);
        let snapshot = shared
            .snapshot_for(position)
            .ok_or_else(|| Error::internal(format!("{name} lost the position it was opened at")))?;
        let hold = shared.table.hold_snapshots(snapshot.max(1));
        shared.prune();
        drop(open);
        Ok(Self { source: index, columns, shared, own: is_own, use_id, hold })
    }

    /// What the view reads this source by, for `sys.views`.
    pub fn describe(&self, source: &Source) -> ArrangementUse {
        ArrangementUse {
            source: self.source,
            columns: column_names(source, &self.columns),
            shared_dir: (!self.own).then(|| self.shared.dir.clone()),
            shared: Arc::downgrade(&self.shared),
        }
    }

    /// Where its table lives.
    pub fn dir(&self) -> &Path {
        &self.shared.dir
    }

    /// The arrangement snapshot equal to the source as of `position`, if
    /// it is kept (`Some(0)`: the source was empty).
    pub fn snapshot_for(&self, position: u64) -> Option<u64> {
        self.shared.snapshot_for(position)
    }

    /// The latest source snapshot the arrangement holds.
    pub fn position(&self) -> u64 {
        self.shared.position()
    }

    /// The source snapshots after `after` it holds, ascending (the last is
    /// its position; none when it is not past `after`).
    pub fn positions_after(&self, after: u64) -> Vec<u64> {
        crate::lock(&self.shared.at).range(after + 1..).map(|(&p, _)| p).collect()
    }

    /// The view is at source snapshot `position`: it no longer reads the
    /// arrangement as of earlier ones, which may expire (unless another
    /// view still reads them).
    pub fn release_before(&self, position: u64) {
        crate::lock(&self.shared.users).insert(self.use_id, position);
        let snapshot = self.shared.snapshot_for(position);
        self.shared.prune();
        if let Some(snapshot) = snapshot {
            self.hold.advance(snapshot.max(1));
        }
    }

    /// Starts advancing the arrangement from source snapshot `from` to
    /// `to`, under its writer lock: when it is at `from`, the changelog of
    /// `(from, to]` goes to [`Advance::write`] (in pieces, in commit
    /// order), then [`Advance::commit`]; when another view took it past
    /// `from`, it catches up to `to` by itself here.
    ///
    /// # Errors
    /// Storage failures.
    pub async fn begin_advance(&self, source: &Source, from: u64, to: u64) -> Result<Begin<'_>> {
        let writer = Arc::clone(&self.shared.writer).lock_owned().await;
        let at = self.shared.position();
        if at >= to {
            return Ok(if self.shared.snapshot_for(to).is_some() { Begin::There } else { Begin::Moved });
        }
        if at != from {
            self.shared.catch_up(source, at, to).await?;
            return Ok(Begin::There);
        }
        Ok(Begin::Advance(Box::new(Advance::new(&self.shared, to, Some(writer)).await?)))
    }

    /// The rows of the source as of `position` whose arrangement columns
    /// equal one of the rows of `keys` (one array per arrangement column, in
    /// [`Arrangement::columns`] order); `None` when the arrangement does
    /// not hold that snapshot.
    ///
    /// # Errors
    /// Storage failures.
    pub async fn probe(&self, position: u64, keys: &[ArrayRef]) -> Result<Option<RecordBatch>> {
        let table = &self.shared.table;
        match self.snapshot_for(position) {
            None => Ok(None),
            Some(0) => Ok(Some(RecordBatch::new_empty(table.schema().schema))),
            Some(snapshot) => Ok(Some(table.get_prefixes(Some(snapshot), keys).await?)),
        }
    }

    /// Starts its background compaction and snapshot expiry unless running.
    pub fn schedule_maintenance(&self) {
        storage::Table::schedule_maintenance(&self.shared.table);
    }

    /// The view stopped using it: the last view to stop closes its table.
    pub async fn close(self, registry: &Arrangements) {
        let shared = Arc::clone(&self.shared);
        let own = self.own;
        drop(self);
        let mut open = registry.open.lock().await;
        if Arc::strong_count(&shared) == 1 {
            if !own {
                open.remove(shared.dir.as_ref());
            }
            shared.table.close().await;
        }
    }
}

impl Drop for Arrangement {
    fn drop(&mut self) {
        crate::lock(&self.shared.users).remove(&self.use_id);
        self.shared.prune();
    }
}

/// Where a view's step from its position may end, near `to` (after the
/// position): `held` has, per arrangement of the source, the positions it
/// holds after the view's (ascending; empty when it is not past it). An
/// arrangement another view advanced past the view's position is probed as
/// of the step's end, so the step ends where every such arrangement has a
/// snapshot or at or past its position (the step then advances it): the
/// latest such end up to `to`, else the first after (the furthest
/// position always is one).
pub fn step_end(to: u64, held: &[Vec<u64>]) -> u64 {
    let ahead: Vec<(&[u64], u64)> =
        held.iter().filter_map(|positions| positions.last().map(|&last| (positions.as_slice(), last))).collect();
    let Some(furthest) = ahead.iter().map(|&(_, last)| last).max() else {
        return to;
    };
    let fits = |end: u64| ahead.iter().all(|&(positions, last)| end >= last || positions.binary_search(&end).is_ok());
    let mut ends: Vec<u64> = ahead.iter().flat_map(|&(positions, _)| positions.iter().copied()).collect();
    ends.extend([to, furthest]);
    ends.sort_unstable();
    ends.dedup();
    ends.iter()
        .rev()
        .find(|&&end| end <= to && fits(end))
        .or_else(|| ends.iter().find(|&&end| end > to && fits(end)))
        .copied()
        .unwrap_or(furthest)
}

/// The options of a view's hidden tables (arrangements, state): written
/// only by the view's maintainer and never streamed from, they keep no
/// changelog, so a write stores its rows without looking up stored ones.
pub fn hidden_table_options() -> storage::TableOptions {
    storage::TableOptions { no_changelog: true, ..storage::TableOptions::default() }
}

/// Removes every file of a hidden table of a view (`name` says which, for the error).
///
/// # Errors
/// 58030 when the store fails.
pub async fn remove_hidden_table(store: &Arc<dyn object_store::ObjectStore>, dir: &Path, name: &str) -> Result<()> {
    let paths = store.list(Some(dir)).map_ok(|m| m.location).boxed();
    store
        .delete_stream(paths)
        .try_collect::<Vec<_>>()
        .await
        .map_err(|e| Error::new(StatusCode::Io, format!("cannot remove the old {name}: {e}")))?;
    Ok(())
}

fn take_columns(columns: &[ArrayRef], indexes: &[u32]) -> Result<Vec<ArrayRef>> {
    let indexes = UInt32Array::from(indexes.to_vec());
    Ok(columns.iter().map(|c| take(c.as_ref(), &indexes, None)).collect::<Result<Vec<_>, _>>()?)
}

/// An arrangement on its way to a source snapshot ([`Arrangement::begin_advance`]).
pub struct Advance<'a> {
    shared: &'a Shared,
    schema: storage::TableSchema,
    converter: RowConverter,
    txn: storage::Transaction<'a>,
    to: u64,
    /// The writer lock, when the advance holds it (else its caller does).
    _writer: Option<tokio::sync::OwnedMutexGuard<()>>,
}

impl<'a> Advance<'a> {
    async fn new(shared: &'a Shared, to: u64, writer: Option<tokio::sync::OwnedMutexGuard<()>>) -> Result<Self> {
        let schema = shared.table.schema();
        let key_fields: Vec<SortField> =
            schema.primary_key.iter().map(|&k| SortField::new(schema.schema.field(k).data_type().clone())).collect();
        let converter = RowConverter::new(key_fields)?;
        let txn = shared.table.begin().await?.blind();
        Ok(Self { shared, schema, converter, txn, to, _writer: writer })
    }

    /// Writes a piece of the source's changelog: per arrangement key, the
    /// last change of the piece wins (`+I`/`+U` upsert, `-U`/`-D` delete);
    /// later pieces write over earlier ones.
    ///
    /// # Errors
    /// Storage failures.
    pub async fn write(&mut self, changes: &[storage::ChangelogBatch]) -> Result<()> {
        let schema = &self.schema;
        let columns = &self.shared.columns;
        // Per arrangement key: the last change, as (batch, row).
        let mut last: HashMap<Vec<u8>, (usize, usize)> = HashMap::new();
        let mut batches = Vec::with_capacity(changes.len());
        for change in changes {
            let batch = &change.batch;
            if batch.num_rows() == 0 {
                continue;
            }
            let rows: Vec<ArrayRef> = batch.columns()[..schema.schema.fields().len()].to_vec();
            let kinds = batch.column(batch.num_columns() - 1).as_primitive::<Int8Type>().clone();
            let keys: Vec<ArrayRef> = schema.primary_key.iter().map(|&k| Arc::clone(&rows[k])).collect();
            let encoded = self.converter.convert_columns(&keys)?;
            let b = batches.len();
            for row in 0..batch.num_rows() {
                if columns.iter().all(|&c| rows[c].is_valid(row)) {
                    last.insert(encoded.row(row).as_ref().to_vec(), (b, row));
                }
            }
            batches.push((rows, kinds));
        }
        if last.is_empty() {
            return Ok(());
        }
        let mut picks: Vec<(usize, usize)> = last.into_values().collect();
        picks.sort_unstable();
        let mut out = Vec::with_capacity(schema.schema.fields().len());
        for c in 0..schema.schema.fields().len() {
            let parts: Vec<&dyn Array> = batches.iter().map(|(b, _)| b[c].as_ref()).collect();
            out.push(datafusion::arrow::compute::interleave(&parts, &picks)?);
        }
        let rows = RecordBatch::try_new(Arc::clone(&schema.schema), out)?;
        let kinds: Vec<storage::ValueKind> = picks
            .iter()
            .map(|&(b, row)| match storage::RowKind::from_code(batches[b].1.value(row)) {
                Some(storage::RowKind::Insert | storage::RowKind::UpdateAfter) => storage::ValueKind::Upsert,
                _ => storage::ValueKind::Delete,
            })
            .collect();
        self.txn.write(&rows, &kinds).await?;
        Ok(())
    }

    /// Commits the arrangement as of the source snapshot it was advanced to.
    ///
    /// # Errors
    /// Storage failures.
    pub async fn commit(self) -> Result<()> {
        let Self { shared, mut txn, to, _writer, .. } = self;
        txn.set_property(POSITION_PROPERTY, to.to_string());
        let snapshot =
            txn.commit().await?.ok_or_else(|| Error::internal("an arrangement's commit made no snapshot"))?;
        crate::lock(&shared.at).insert(to, snapshot.id);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::step_end;

    #[test]
    fn a_step_ends_where_the_shared_arrangements_have_snapshots() {
        // No arrangement past the view's position: the step's own end.
        assert_eq!(step_end(10, &[]), 10);
        assert_eq!(step_end(10, &[vec![]]), 10);
        // One at 12 holding 5 and 8 too: the latest of those up to the end,
        assert_eq!(step_end(10, &[vec![5, 8, 12]]), 8);
        assert_eq!(step_end(8, &[vec![5, 8, 12]]), 8);
        // else the first after it,
        assert_eq!(step_end(4, &[vec![5, 8, 12]]), 5);
        // and at or past its position any end (the step advances it).
        assert_eq!(step_end(12, &[vec![5, 8, 12]]), 12);
        assert_eq!(step_end(15, &[vec![5, 8, 12]]), 15);
        // Two: an end both hold, or past both.
        assert_eq!(step_end(10, &[vec![5, 12], vec![8, 12]]), 12);
        assert_eq!(step_end(10, &[vec![5, 7, 12], vec![7, 9]]), 7);
        assert_eq!(step_end(10, &[vec![5, 11], vec![9]]), 11);
        assert_eq!(step_end(20, &[vec![5, 11], vec![9]]), 20);
        // One not past the view's position leaves the choice to the other.
        assert_eq!(step_end(4, &[vec![6], vec![]]), 6);
    }
}
