//! The difference between a full refresh's result and a view's rows,
//! staged as upserts of new and changed rows and deletes of rows gone
//! ([`super::refresh`]).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use datafusion::arrow::array::{ArrayRef, RecordBatch};
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::row::{RowConverter, SortField};
use datafusion::catalog::TableProvider;
use futures::StreamExt;
use streamhouse_storage as storage;

use super::MaterializedView;
use crate::error::{Error, Result, StatusCode};

/// Compares a refresh's rows with the view's as of `base`, staging the
/// upserts of new and changed rows and, at the end, the deletes of rows
/// the result no longer holds.
pub struct Differ {
    table: Arc<storage::Table>,
    base: Option<u64>,
    schema: SchemaRef,
    /// The key columns of the stored rows.
    key: Vec<usize>,
    keys: RowConverter,
    values: RowConverter,
    /// The keys of the result so far.
    seen: HashSet<Vec<u8>>,
    name: String,
    /// Rows added, changed and removed.
    pub inserted: u64,
    /// See `inserted`.
    pub updated: u64,
    /// See `inserted`.
    pub deleted: u64,
}

impl Differ {
    /// A differ against `view`'s rows as of `base`.
    ///
    /// # Errors
    /// Key types the row format cannot encode.
    pub fn new(view: &MaterializedView, base: Option<u64>) -> Result<Self> {
        let table = Arc::clone(view.table());
        let schema = view.storage.schema();
        let key = table.schema().primary_key.clone();
        let keys =
            RowConverter::new(key.iter().map(|&k| SortField::new(schema.field(k).data_type().clone())).collect())?;
        let values =
            RowConverter::new(schema.fields().iter().map(|f| SortField::new(f.data_type().clone())).collect())?;
        Ok(Self {
            table,
            base,
            schema,
            key,
            keys,
            values,
            seen: HashSet::new(),
            name: view.name.to_string(),
            inserted: 0,
            updated: 0,
            deleted: 0,
        })
    }

    /// Stages what `rows` (stored rows of the result) change.
    ///
    /// # Errors
    /// Two result rows with one key (21000); storage failures.
    pub async fn add(&mut self, rows: &RecordBatch, txn: &mut storage::Transaction<'_>) -> Result<()> {
        if rows.num_rows() == 0 {
            return Ok(());
        }
        let key_columns: Vec<ArrayRef> = self.key.iter().map(|&k| Arc::clone(rows.column(k))).collect();
        let encoded = self.keys.convert_columns(&key_columns)?;
        for row in encoded.iter() {
            if !self.seen.insert(row.as_ref().to_vec()) {
                return Err(Error::new(
                    StatusCode::CardinalityViolation,
                    format!("the refresh of materialized view {} gave two rows with the same key", self.name),
                ));
            }
        }
        let old = match self.base {
            Some(base) => self.table.get_prefixes(Some(base), &key_columns).await?,
            None => RecordBatch::new_empty(Arc::clone(&self.schema)),
        };
        let old_keys: Vec<ArrayRef> = self.key.iter().map(|&k| Arc::clone(old.column(k))).collect();
        let old_encoded = self.keys.convert_columns(&old_keys)?;
        let old_values = self.values.convert_columns(old.columns())?;
        let old_rows: Vec<datafusion::arrow::row::Row<'_>> = old_encoded.iter().collect();
        let stored: HashMap<&[u8], usize> = old_rows.iter().enumerate().map(|(i, k)| (k.as_ref(), i)).collect();
        let new_values = self.values.convert_columns(rows.columns())?;
        let mut changed = Vec::new();
        for (i, key) in encoded.iter().enumerate() {
            match stored.get(key.as_ref()) {
                Some(&o) if old_values.row(o) == new_values.row(i) => {}
                Some(_) => {
                    self.updated += 1;
                    changed.push(i as u64);
                }
                None => {
                    self.inserted += 1;
                    changed.push(i as u64);
                }
            }
        }
        if !changed.is_empty() {
            let upserts =
                RecordBatch::try_new(Arc::clone(&self.schema), take_rows(rows, &changed)?.columns().to_vec())?;
            txn.write(&upserts, &vec![storage::ValueKind::Upsert; upserts.num_rows()]).await?;
        }
        Ok(())
    }

    /// Stages the deletes of stored rows the result did not hold.
    ///
    /// # Errors
    /// Storage failures.
    pub async fn finish(&mut self, txn: &mut storage::Transaction<'_>) -> Result<()> {
        let Some(base) = self.base else { return Ok(()) };
        let plan = self.table.plan_scan(Some(base), &storage::ScanRequest::default()).await?;
        let mut stream = self.table.read_partition(&plan, 0);
        while let Some(batch) = stream.next().await {
            let batch = batch?;
            let key_columns: Vec<ArrayRef> = self.key.iter().map(|&k| Arc::clone(batch.column(k))).collect();
            let encoded = self.keys.convert_columns(&key_columns)?;
            let gone: Vec<u64> = encoded
                .iter()
                .enumerate()
                .filter(|(_, k)| !self.seen.contains(k.as_ref()))
                .map(|(i, _)| i as u64)
                .collect();
            if gone.is_empty() {
                continue;
            }
            self.deleted += gone.len() as u64;
            let rows = RecordBatch::try_new(Arc::clone(&self.schema), take_rows(&batch, &gone)?.columns().to_vec())?;
            txn.write(&rows, &vec![storage::ValueKind::Delete; rows.num_rows()]).await?;
        }
        Ok(())
    }
}

/// The rows of `batch` at `indexes`, in that order.
pub(super) fn take_rows(batch: &RecordBatch, indexes: &[u64]) -> Result<RecordBatch> {
    let rows = indexes.len();
    let indexes = datafusion::arrow::array::UInt64Array::from(indexes.to_vec());
    let columns = batch
        .columns()
        .iter()
        .map(|c| datafusion::arrow::compute::take(c.as_ref(), &indexes, None))
        .collect::<std::result::Result<Vec<_>, _>>()?;
    let options = datafusion::arrow::array::RecordBatchOptions::new().with_row_count(Some(rows));
    Ok(RecordBatch::try_new_with_options(batch.schema(), columns, &options)?)
}
