//! Spare candidates of a Top-N view: per partition, the rows that rank
//! right after its first N.
//!
//! A Top-N view keeps its first N rows per partition as its own rows (with
//! the window input's columns hidden beside them, [`super::plan::TopN`]).
//! When a change retracts one of them, the row that moves up must come from
//! somewhere: from the sources, read again for that partition, or from here —
//! up to `views.top_n_spares` further rows per partition, in a hidden
//! Dynamic Table in the view's directory (`spares`) keyed by the partition
//! (row-encoded as the view's group key, `__group`) and the row's identity
//! (the window input's key, row-encoded, `__id`), followed by the window
//! input's columns as the view carries them.
//!
//! What a partition's stored rows (the view's and the spares) are: the
//! first rows of the partition in its order, ties in any order, so every
//! row of the partition not stored ranks at or after each stored one. A
//! partition is *complete* when every one of its rows is stored: when it
//! has fewer than N rows in the view, or a marker row (an empty `__id`)
//! says so. A step ranks a touched partition's stored rows with the rows
//! the change adds and keeps, of those, the rows still there that rank no
//! later than the last stored row (any row, when complete): an added row
//! ranking after that may be preceded by rows not stored. If fewer than N
//! are left, and the partition is not complete, it is read again from the
//! sources (its first N plus spares).
//!
//! Empty spares are always right (every partition with N rows in the view
//! is then taken as incomplete, and refilled when it loses one), so the
//! table is a cache that cannot be stale: its commits carry a version
//! (`spares.version`), the view's commit records the version it was
//! written with (`topn.spares`), and a maintainer that finds them apart (a
//! crash between the two commits) starts with empty spares.

use std::sync::Arc;

use datafusion::arrow::array::{ArrayRef, BinaryArray, RecordBatch, new_null_array};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use object_store::path::Path;
use streamhouse_storage as storage;

use super::groups::StateTable;
use crate::error::Result;

/// The spares' snapshot property: their version.
const VERSION_PROPERTY: &str = "spares.version";

/// The view's snapshot property: the spares' version its rows go with.
pub const VIEW_PROPERTY: &str = "topn.spares";

const WHAT: &str = "top-n spares";

fn dir(view_dir: &Path) -> Path {
    view_dir.clone().join("spares")
}

/// The spares' columns: partition, identity, then `carried` (the window
/// input's columns as the view carries them).
fn schema(carried: &[Field]) -> SchemaRef {
    let mut columns = vec![Field::new("__group", DataType::Binary, false), Field::new("__id", DataType::Binary, false)];
    columns.extend(carried.iter().map(|f| f.clone().with_nullable(true)));
    Arc::new(Schema::new(columns))
}

/// A version property's value (`0` when there is none).
pub fn version_of(text: Option<&String>) -> u64 {
    text.and_then(|t| t.parse().ok()).unwrap_or(0)
}

/// A Top-N view's spare candidates.
#[derive(Debug)]
pub struct SpareTable {
    table: StateTable,
}

impl SpareTable {
    /// Starts its background compaction and snapshot expiry unless running.
    pub fn schedule_maintenance(&self) {
        self.table.schedule_maintenance();
    }

    /// Opens the spares of the view in `view_dir` if they are the ones of
    /// version `version` with the columns `carried`.
    pub async fn open(
        store: &Arc<dyn object_store::ObjectStore>,
        view_dir: &Path,
        carried: &[Field],
        version: u64,
    ) -> Option<Self> {
        let table = StateTable::open(store, dir(view_dir), WHAT, schema(carried), &[0, 1]).await?;
        let stored = table.table().latest_snapshot().map(|s| version_of(s.properties.get(VERSION_PROPERTY)));
        if stored != Some(version) {
            table.close().await;
            return None;
        }
        Some(Self { table })
    }

    /// New, empty spares for the view in `view_dir` at version `version`,
    /// replacing whatever was there.
    ///
    /// # Errors
    /// Storage failures.
    pub async fn create(
        store: &Arc<dyn object_store::ObjectStore>,
        view_dir: &Path,
        carried: &[Field],
        version: u64,
    ) -> Result<Self> {
        let table = StateTable::create(store, dir(view_dir), WHAT, schema(carried), &["__group", "__id"]).await?;
        let mut txn = table.begin().await?;
        txn.set_property(VERSION_PROPERTY, version.to_string());
        txn.commit().await?;
        Ok(Self { table })
    }

    /// Its columns.
    pub fn schema(&self) -> SchemaRef {
        Arc::clone(self.table.schema())
    }

    /// The version of the spares' latest commit.
    pub fn version(&self) -> u64 {
        version_of(self.table.table().latest_snapshot().as_ref().and_then(|s| s.properties.get(VERSION_PROPERTY)))
    }

    /// The stored rows (spares and markers) of the partitions `groups`.
    ///
    /// # Errors
    /// Storage failures.
    pub async fn of_groups(&self, groups: &[&[u8]]) -> Result<RecordBatch> {
        if groups.is_empty() {
            return Ok(RecordBatch::new_empty(Arc::clone(self.table.schema())));
        }
        let prefix: ArrayRef = Arc::new(BinaryArray::from_iter_values(groups.iter()));
        let rows = self.table.table().get_prefixes(None, &[prefix]).await?;
        Ok(RecordBatch::try_new(Arc::clone(self.table.schema()), rows.columns().to_vec())?)
    }

    /// Rows of the spares: `(partition, identity)` per row of `carried`
    /// (columns of the carried fields' types), then a marker per partition
    /// of `complete`.
    ///
    /// # Errors
    /// Columns that are not the carried ones (a bug).
    pub fn rows(&self, keys: &[(&[u8], &[u8])], carried: &[ArrayRef], complete: &[&[u8]]) -> Result<RecordBatch> {
        let schema = self.table.schema();
        let groups = keys.iter().map(|k| k.0).chain(complete.iter().copied());
        let ids = keys.iter().map(|k| k.1).chain(complete.iter().map(|_| &[][..]));
        let mut columns: Vec<ArrayRef> =
            vec![Arc::new(BinaryArray::from_iter_values(groups)), Arc::new(BinaryArray::from_iter_values(ids))];
        for (i, column) in carried.iter().enumerate() {
            let markers = new_null_array(schema.field(2 + i).data_type(), complete.len());
            columns.push(datafusion::arrow::compute::concat(&[column.as_ref(), markers.as_ref()])?);
        }
        Ok(RecordBatch::try_new(Arc::clone(schema), columns)?)
    }

    /// Writes `rows` (upserts and deletes, `kinds`) as version `version`.
    ///
    /// # Errors
    /// Storage failures.
    pub async fn write(&self, rows: &RecordBatch, kinds: &[storage::ValueKind], version: u64) -> Result<()> {
        let mut txn = self.table.begin().await?;
        if rows.num_rows() > 0 {
            txn.write(rows, kinds).await?;
        }
        txn.set_property(VERSION_PROPERTY, version.to_string());
        txn.commit().await?;
        Ok(())
    }

    /// Closes the table (the maintainer stopped).
    pub async fn close(&self) {
        self.table.close().await;
    }
}
