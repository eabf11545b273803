//! Arrangements: a join input of a view, indexed by its join key.
//!
//! A step of a join view joins the change of one input with the other
//! input as of a snapshot. Read whole, that input costs a step time in
//! proportion to its size; read by key, in proportion to the change and its
//! matches. A table is read by key when the join columns hold the leading
//! columns of its primary key ([`storage::Table::get_prefixes`]). For join
//! columns that do not hold its first key column, the view keeps an arrangement: a hidden Dynamic Table in the view's directory
//! (`arrangement/<source>(<columns>)`) with the source's rows keyed by the
//! join columns and then the source's primary key. Rows whose join key is
//! NULL match nothing and are left out.
//!
//! The view's maintainer keeps it: a step that advances the source from
//! snapshot `p` to `q` first writes the changelog of `(p, q]` to the
//! arrangement (per arrangement key, the last change wins: `+I`/`+U`
//! upsert, `-U`/`-D` delete) and commits it with the property
//! `arrangement.position = q`. Each arrangement snapshot so names the source
//! snapshot it equals, and a step that reads the source as of `p` probes the
//! arrangement snapshot that names `p` (snapshots from the view's position
//! on are held back from expiry). Writes are idempotent: after a crash
//! between the arrangement's commit and the view's, the step runs again and
//! writes the same rows. An arrangement that lacks the view's position
//! (new, damaged, expired, or of another definition) is built again from
//! the source as of that position.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

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

/// One arrangement of a view: a source keyed by some of its columns.
#[derive(Debug)]
pub struct Arrangement {
    /// The source, as an index into the view plan's sources.
    pub source: usize,
    /// The source's columns the arrangement's key leads with.
    pub columns: Vec<usize>,
    table: Arc<storage::Table>,
    /// Source snapshot → arrangement snapshot (0: empty), for the
    /// arrangement's commits from the view's position on.
    at: Mutex<BTreeMap<u64, u64>>,
    hold: Mutex<Option<storage::SnapshotHold>>,
}

/// Where the arrangement of `source` on `columns` lives in a view's directory.
fn arrangement_dir(view_dir: &Path, source: &Source, columns: &[usize]) -> Path {
    let schema = source.table.schema();
    let names: Vec<&str> = columns.iter().map(|&c| schema.field(c).name().as_str()).collect();
    view_dir.clone().join("arrangement").join(format!("{}({})", source.name, names.join(",")))
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

impl Arrangement {
    /// Opens (or builds) the arrangement of `source` on `columns` so that it
    /// holds the source as of `position`.
    ///
    /// # Errors
    /// Storage failures; the source's snapshot `position` expired.
    pub async fn open(
        view_dir: &Path,
        index: usize,
        source: &Source,
        columns: Vec<usize>,
        position: u64,
    ) -> Result<Self> {
        let store = Arc::clone(source.table.storage().store());
        let dir = arrangement_dir(view_dir, source, &columns);
        let want = definition(source, &columns)?;
        let name = format!("arrangement of {}", source.name);
        let existing = match storage::Table::open(Arc::clone(&store), dir.clone(), &name).await {
            Ok(table) => {
                let current = table.schema();
                (current.schema.fields() == want.schema.fields() && current.primary_key == want.primary_key)
                    .then_some(table)
            }
            Err(_) => None,
        };
        let arrangement = |table: storage::Table| Self {
            source: index,
            columns: columns.clone(),
            table: Arc::new(table),
            at: Mutex::new(BTreeMap::new()),
            hold: Mutex::new(None),
        };
        if let Some(table) = existing {
            let arrangement = arrangement(table);
            arrangement.load().await?;
            if arrangement.snapshot_for(position).is_some() {
                arrangement.release_before(position);
                return Ok(arrangement);
            }
            arrangement.table.close().await;
        }
        // Build it again from the source as of `position`.
        remove_hidden_table(&store, &dir, &name).await?;
        let table = storage::Table::create(store, dir, &name, want).await?;
        let arrangement = arrangement(table);
        arrangement.build(source, position).await?;
        Ok(arrangement)
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
        self.release_before(position);
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
    /// system columns) whose join columns are all non-NULL, in the
    /// arrangement's schema.
    fn keyed_rows(&self, batch: &RecordBatch) -> Result<RecordBatch> {
        let schema = self.table.schema().schema;
        let columns: Vec<ArrayRef> = batch.columns()[..schema.fields().len()].to_vec();
        let keep: Vec<u32> = (0..batch.num_rows())
            .filter(|&i| self.columns.iter().all(|&c| columns[c].is_valid(i)))
            .map(|i| i as u32)
            .collect();
        let columns = if keep.len() == batch.num_rows() { columns } else { take_columns(&columns, &keep)? };
        Ok(RecordBatch::try_new(schema, columns)?)
    }

    /// The arrangement snapshot equal to the source as of `position`, if
    /// it is kept (`Some(0)`: the source was empty).
    pub fn snapshot_for(&self, position: u64) -> Option<u64> {
        crate::lock(&self.at).get(&position).copied()
    }

    /// The latest source snapshot the arrangement has caught up with.
    fn position(&self) -> u64 {
        crate::lock(&self.at).keys().next_back().copied().unwrap_or(0)
    }

    /// The view no longer reads the source before `position`: those
    /// arrangement snapshots may expire.
    pub fn release_before(&self, position: u64) {
        let oldest = {
            let mut at = crate::lock(&self.at);
            let kept = at.split_off(&position);
            *at = kept;
            at.values().next().copied().unwrap_or(0)
        };
        let mut hold = crate::lock(&self.hold);
        match hold.as_ref() {
            Some(hold) => hold.advance(oldest.max(1)),
            None => *hold = Some(self.table.hold_snapshots(oldest.max(1))),
        }
    }

    /// Starts advancing the arrangement to source snapshot `to`: the
    /// changelog of the source after the arrangement's position goes to
    /// [`Advance::write`] (in pieces, in commit order), then
    /// [`Advance::commit`]. `None` when the arrangement is there already
    /// (a step replayed after a crash).
    ///
    /// # Errors
    /// Storage failures.
    pub async fn begin_advance(&self, to: u64) -> Result<Option<Advance<'_>>> {
        if self.position() >= to {
            return Ok(None);
        }
        let schema = self.table.schema();
        let key_fields: Vec<SortField> =
            schema.primary_key.iter().map(|&k| SortField::new(schema.schema.field(k).data_type().clone())).collect();
        let converter = RowConverter::new(key_fields)?;
        let txn = self.table.begin().await?.blind();
        Ok(Some(Advance { arrangement: self, schema, converter, txn, to }))
    }

    /// The rows of the source as of `position` whose arrangement columns
    /// equal one of the rows of `keys` (one array per arrangement column, in
    /// [`Arrangement::columns`] order); `None` when the arrangement does
    /// not hold that snapshot.
    ///
    /// # Errors
    /// Storage failures.
    pub async fn probe(&self, position: u64, keys: &[ArrayRef]) -> Result<Option<RecordBatch>> {
        match self.snapshot_for(position) {
            None => Ok(None),
            Some(0) => Ok(Some(RecordBatch::new_empty(self.table.schema().schema))),
            Some(snapshot) => Ok(Some(self.table.get_prefixes(Some(snapshot), keys).await?)),
        }
    }

    /// Starts its background compaction and snapshot expiry unless running.
    pub fn schedule_maintenance(&self) {
        storage::Table::schedule_maintenance(&self.table);
    }

    /// Closes the arrangement's table (the maintainer stopped).
    pub async fn close(&self) {
        self.table.close().await;
    }
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
    arrangement: &'a Arrangement,
    schema: storage::TableSchema,
    converter: RowConverter,
    txn: storage::Transaction<'a>,
    to: u64,
}

impl Advance<'_> {
    /// Writes a piece of the source's changelog: per arrangement key, the
    /// last change of the piece wins (`+I`/`+U` upsert, `-U`/`-D` delete);
    /// later pieces write over earlier ones.
    ///
    /// # Errors
    /// Storage failures.
    pub async fn write(&mut self, changes: &[storage::ChangelogBatch]) -> Result<()> {
        let schema = &self.schema;
        let columns = &self.arrangement.columns;
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
        let Self { arrangement, mut txn, to, .. } = self;
        txn.set_property(POSITION_PROPERTY, to.to_string());
        let snapshot =
            txn.commit().await?.ok_or_else(|| Error::internal("an arrangement's commit made no snapshot"))?;
        crate::lock(&arrangement.at).insert(to, snapshot.id);
        Ok(())
    }
}
