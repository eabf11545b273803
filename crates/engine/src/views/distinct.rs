//! COUNT(DISTINCT) state: per group, how many input rows hold each value.
//!
//! A group's distinct count moves only when a value's row count moves
//! between 0 and more: a value's first row adds one, its last row's
//! removal takes one away. The counts live in a hidden Dynamic Table in the
//! view's directory (`distinct`), keyed by the group (row-encoded as the
//! view's group key, `__group`) and the value (the function's index, one
//! byte, then the value row-encoded, `__value`), with `__count`, the rows
//! holding it. A value no row holds has no row.
//!
//! A step looks up the (group, value) pairs its change touches by key,
//! gives each group's function the number of values that came and went
//! ([`transitions`]), and commits the new counts — before the group state
//! and the view, with the positions they reflect (`groups.positions`).
//! After a crash between those commits the maintainer replays exactly that
//! step: the counts stored are then the new ones, and the old ones are
//! those less the step's change, so the transitions come out the same and
//! nothing is counted twice. A view that emits on window close deletes a
//! window's values with its state (by `__group` prefix).

use std::collections::HashMap;
use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, AsArray, BinaryArray, Int64Array, RecordBatch};
use datafusion::arrow::datatypes::{DataType, Field, Int64Type, Schema, SchemaRef};
use datafusion::arrow::row::{RowConverter, SortField};
use object_store::path::Path;

use super::groups::StateTable;
use crate::error::{Error, Result};

/// The value counts' columns.
fn schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("__group", DataType::Binary, false),
        Field::new("__value", DataType::Binary, false),
        Field::new("__count", DataType::Int64, false),
    ]))
}

fn dir(view_dir: &Path) -> Path {
    view_dir.clone().join("distinct")
}

const WHAT: &str = "distinct value counts";

/// A (group, value) pair: the group's key and the function's index and value, encoded.
pub type Pair = (Vec<u8>, Vec<u8>);

/// Per group key and COUNT(DISTINCT) function: values that came (+) or went (−).
pub type Moved = HashMap<(Vec<u8>, usize), i64>;

/// A pair's stored count and its count after the step.
pub type Recount = (Pair, i64, i64);

/// A view's COUNT(DISTINCT) value counts.
#[derive(Debug)]
pub struct DistinctTable {
    table: StateTable,
}

impl DistinctTable {
    /// Starts its background compaction and snapshot expiry unless running.
    pub fn schedule_maintenance(&self) {
        self.table.schedule_maintenance();
    }

    /// Opens the value counts of the view in `view_dir`, `None` when there are none.
    pub async fn open(store: &Arc<dyn object_store::ObjectStore>, view_dir: &Path) -> Option<Self> {
        Some(Self { table: StateTable::open(store, dir(view_dir), WHAT, schema(), &[0, 1]).await? })
    }

    /// New, empty value counts for the view in `view_dir`, replacing whatever was there.
    ///
    /// # Errors
    /// Storage failures.
    pub async fn create(store: &Arc<dyn object_store::ObjectStore>, view_dir: &Path) -> Result<Self> {
        let table = StateTable::create(store, dir(view_dir), WHAT, schema(), &["__group", "__value"]).await?;
        Ok(Self { table })
    }

    /// The positions property of the latest commit (`None`: never committed).
    pub fn positions(&self) -> Option<String> {
        self.table.positions()
    }

    /// The stored counts of `pairs` that have one.
    ///
    /// # Errors
    /// Storage failures.
    pub async fn get(&self, pairs: &[&Pair]) -> Result<HashMap<Pair, i64>> {
        if pairs.is_empty() {
            return Ok(HashMap::new());
        }
        let groups: ArrayRef = Arc::new(BinaryArray::from_iter_values(pairs.iter().map(|p| p.0.as_slice())));
        let values: ArrayRef = Arc::new(BinaryArray::from_iter_values(pairs.iter().map(|p| p.1.as_slice())));
        let rows = self.table.table().get(&[groups, values]).await?;
        let (groups, values) = (rows.column(0).as_binary::<i32>(), rows.column(1).as_binary::<i32>());
        let counts = rows.column(2).as_primitive::<Int64Type>();
        Ok((0..rows.num_rows())
            .map(|row| ((groups.value(row).to_vec(), values.value(row).to_vec()), counts.value(row)))
            .collect())
    }

    /// The stored rows of every value of `groups` (their keys), for deletes.
    ///
    /// # Errors
    /// Storage failures.
    pub async fn of_groups(&self, groups: &[&[u8]]) -> Result<RecordBatch> {
        if groups.is_empty() {
            return Ok(RecordBatch::new_empty(Arc::clone(self.table.schema())));
        }
        let prefix: ArrayRef = Arc::new(BinaryArray::from_iter_values(groups.iter()));
        Ok(self.table.table().get_prefixes(None, &[prefix]).await?)
    }

    /// Rows of the value counts for `counts`.
    ///
    /// # Errors
    /// None in practice (the columns are built to the schema).
    pub fn rows(&self, counts: &[(&Pair, i64)]) -> Result<RecordBatch> {
        let columns: Vec<ArrayRef> = vec![
            Arc::new(BinaryArray::from_iter_values(counts.iter().map(|(p, _)| p.0.as_slice()))),
            Arc::new(BinaryArray::from_iter_values(counts.iter().map(|(p, _)| p.1.as_slice()))),
            Arc::new(Int64Array::from_iter_values(counts.iter().map(|(_, c)| *c))),
        ];
        Ok(RecordBatch::try_new(Arc::clone(self.table.schema()), columns)?)
    }

    /// Starts a transaction on the value counts.
    ///
    /// # Errors
    /// Storage failures.
    pub async fn begin(&self) -> Result<streamhouse_storage::Transaction<'_>> {
        self.table.begin().await
    }

    /// Closes the table (the maintainer stopped).
    pub async fn close(&self) {
        self.table.close().await;
    }
}

/// The (group, value) pairs of function `j` in a batch of
/// [`super::plan::ViewPlan::distinct_parts`], with their weighted counts;
/// `groups` holds the batch's group keys, encoded, in row order.
///
/// # Errors
/// A batch that is not distinct parts (a bug).
pub fn pairs(j: usize, groups: Vec<Vec<u8>>, batch: &RecordBatch) -> Result<Vec<(Pair, i64)>> {
    let schema = batch.schema();
    let value = batch.column(schema.index_of("__x")?);
    let weights = datafusion::arrow::compute::cast(batch.column(schema.index_of("__w")?), &DataType::Int64)?;
    let weights = weights.as_primitive::<Int64Type>();
    let converter = RowConverter::new(vec![SortField::new(value.data_type().clone())])?;
    let encoded = converter.convert_columns(std::slice::from_ref(value))?;
    let function = u8::try_from(j).map_err(|_| Error::internal("more than 256 aggregate functions"))?;
    Ok(groups
        .into_iter()
        .enumerate()
        .map(|(row, group)| {
            let mut value = Vec::with_capacity(1 + encoded.row(row).as_ref().len());
            value.push(function);
            value.extend_from_slice(encoded.row(row).as_ref());
            ((group, value), if weights.is_null(row) { 0 } else { weights.value(row) })
        })
        .collect())
}

/// Merges weighted pairs, summing the weights of equal ones.
pub fn merge(into: &mut HashMap<Pair, i64>, pairs: Vec<(Pair, i64)>) {
    for (pair, weight) in pairs {
        *into.entry(pair).or_insert(0) += weight;
    }
}

/// The change of a step to the stored counts: per group key and function,
/// the distinct values that came (+) or went (−); and each pair's new count.
/// With `replayed`, `stored` already holds the new counts (the step's
/// counts committed before a crash).
///
/// # Errors
/// A value held by fewer than no rows: the counts do not match the sources.
pub fn transitions(
    change: &HashMap<Pair, i64>,
    stored: &HashMap<Pair, i64>,
    replayed: bool,
) -> Result<(Moved, Vec<Recount>)> {
    let mut moved = Moved::new();
    let mut counts = Vec::with_capacity(change.len());
    for (pair, &weight) in change {
        if weight == 0 {
            continue;
        }
        let have = stored.get(pair).copied().unwrap_or(0);
        let (old, new) = if replayed { (have - weight, have) } else { (have, have + weight) };
        if old < 0 || new < 0 {
            return Err(Error::internal("COUNT(DISTINCT) state holds a value fewer times than its change removes"));
        }
        let step = i64::from(new > 0) - i64::from(old > 0);
        if step != 0 {
            *moved.entry((pair.0.clone(), usize::from(pair.1[0]))).or_insert(0) += step;
        }
        counts.push((pair.clone(), have, new));
    }
    Ok((moved, counts))
}
