//! System tables of a Dynamic Table, named `"<table>$<kind>"`:
//!
//! - `t$changelog`: every committed change, the table's columns plus
//!   `_kind` (`+I`, `-U`, `+U`, `-D`) and `_snapshot`; filter on `_snapshot`
//!   for a range (Paimon's `audit_log`).
//! - `t$snapshots`: one row per stored snapshot.
//! - `t$files`: the live data files of the latest snapshot: LSM level (0 for
//!   new runs, 1–5 compacted; all files of a level above 0 form one sorted
//!   run), rows, bytes, sequence and key range, tombstones, row groups. A
//!   growing count of level-0 files means compaction is not keeping up.
//! - `t$consumers`: named changelog readers and the next snapshot each
//!   needs (expiry keeps it).
//!
//! [`SnapshotTable`] is a table as of an earlier snapshot (time travel).

use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::array::{
    ArrayRef, Int64Array, RecordBatch, StringArray, TimestampMillisecondArray, UInt32Array,
};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use datafusion::catalog::{Session as DfSession, TableProvider};
use datafusion::datasource::TableType;
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::logical_expr::{Expr, TableProviderFilterPushDown};
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::streaming::PartitionStream;
use streamhouse_storage as storage;

use super::df_error;
use crate::catalog::computed::ComputedRows;

/// Which system table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SystemKind {
    /// `$changelog`
    Changelog,
    /// `$snapshots`
    Snapshots,
    /// `$files`
    Files,
    /// `$consumers`
    Consumers,
}

impl SystemKind {
    /// The kind a `$suffix` names.
    pub fn parse(suffix: &str) -> Option<Self> {
        match suffix {
            "changelog" => Some(SystemKind::Changelog),
            "snapshots" => Some(SystemKind::Snapshots),
            "files" => Some(SystemKind::Files),
            "consumers" => Some(SystemKind::Consumers),
            _ => None,
        }
    }
}

/// A system table over one Dynamic Table, computed when scanned.
#[derive(Debug)]
pub struct SystemTable {
    table: Arc<storage::Table>,
    kind: SystemKind,
    schema: SchemaRef,
}

impl SystemTable {
    /// The `kind` system table of `table` whose user columns are `columns`.
    pub fn new(table: Arc<storage::Table>, columns: &SchemaRef, kind: SystemKind) -> Self {
        let schema = match kind {
            SystemKind::Changelog => {
                let mut fields: Vec<Field> = columns.fields().iter().map(|f| f.as_ref().clone()).collect();
                fields.push(Field::new("_kind", DataType::Utf8, false));
                fields.push(Field::new("_snapshot", DataType::Int64, false));
                Arc::new(Schema::new(fields))
            }
            SystemKind::Snapshots => Arc::new(Schema::new(vec![
                Field::new("snapshot_id", DataType::Int64, false),
                Field::new("parent_id", DataType::Int64, true),
                Field::new("commit_time", DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into())), false),
                Field::new("commit_kind", DataType::Utf8, false),
                Field::new("schema_id", DataType::Int64, false),
                Field::new("total_rows", DataType::Int64, false),
                Field::new("delta_rows", DataType::Int64, false),
                Field::new("changelog_rows", DataType::Int64, false),
                Field::new("delta_files", DataType::Int64, false),
                Field::new("watermark", DataType::Int64, true),
            ])),
            SystemKind::Files => Arc::new(Schema::new(vec![
                Field::new("path", DataType::Utf8, false),
                Field::new("level", DataType::UInt32, false),
                Field::new("rows", DataType::Int64, false),
                Field::new("bytes", DataType::Int64, false),
                Field::new("min_sequence", DataType::Int64, false),
                Field::new("max_sequence", DataType::Int64, false),
                Field::new("schema_id", DataType::Int64, false),
                Field::new("min_key", DataType::Utf8, true),
                Field::new("max_key", DataType::Utf8, true),
                Field::new("deletes", DataType::Int64, false),
                Field::new("row_groups", DataType::Int64, false),
            ])),
            SystemKind::Consumers => Arc::new(Schema::new(vec![
                Field::new("consumer_id", DataType::Utf8, false),
                Field::new("next_snapshot_id", DataType::Int64, false),
                Field::new("updated", DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into())), false),
            ])),
        };
        Self { table, kind, schema }
    }

    async fn batches(&self) -> datafusion::error::Result<Vec<RecordBatch>> {
        match self.kind {
            SystemKind::Changelog => {
                use futures::TryStreamExt;
                ChangelogRows { table: Arc::clone(&self.table), schema: Arc::clone(&self.schema) }
                    .stream()
                    .try_collect()
                    .await
            }
            SystemKind::Snapshots => {
                let snapshots = self.table.snapshots().await.map_err(df_error)?;
                let int = |f: &dyn Fn(&storage::Snapshot) -> i64| -> ArrayRef {
                    Arc::new(Int64Array::from_iter_values(snapshots.iter().map(f)))
                };
                let columns: Vec<ArrayRef> = vec![
                    int(&|s| s.id as i64),
                    Arc::new(Int64Array::from_iter(snapshots.iter().map(|s| s.parent.map(|p| p as i64)))),
                    Arc::new(
                        TimestampMillisecondArray::from_iter_values(snapshots.iter().map(|s| s.commit_time_ms))
                            .with_timezone("UTC"),
                    ),
                    Arc::new(StringArray::from_iter_values(snapshots.iter().map(|s| match s.kind {
                        storage::CommitKind::Append => "append",
                        storage::CommitKind::Compact => "compact",
                    }))),
                    int(&|s| s.schema_id as i64),
                    int(&|s| s.total_rows as i64),
                    int(&|s| s.delta_rows as i64),
                    int(&|s| s.changelog_rows as i64),
                    int(&|s| s.delta_files.len() as i64),
                    Arc::new(Int64Array::from_iter(snapshots.iter().map(|s| s.watermark))),
                ];
                Ok(vec![RecordBatch::try_new(Arc::clone(&self.schema), columns)?])
            }
            SystemKind::Files => {
                let files = self.table.files(None).await.map_err(df_error)?;
                let ranges: Vec<Option<(String, String)>> = files.iter().map(storage::FileMeta::key_range).collect();
                let int = |f: &dyn Fn(&storage::FileMeta) -> i64| -> ArrayRef {
                    Arc::new(Int64Array::from_iter_values(files.iter().map(f)))
                };
                let columns: Vec<ArrayRef> = vec![
                    Arc::new(StringArray::from_iter_values(files.iter().map(|f| f.path.as_str()))),
                    Arc::new(UInt32Array::from_iter_values(files.iter().map(|f| f.level))),
                    int(&|f| f.rows as i64),
                    int(&|f| f.bytes as i64),
                    int(&|f| f.min_seq as i64),
                    int(&|f| f.max_seq as i64),
                    int(&|f| f.schema_id as i64),
                    Arc::new(StringArray::from_iter(ranges.iter().map(|r| r.as_ref().map(|(lo, _)| lo.as_str())))),
                    Arc::new(StringArray::from_iter(ranges.iter().map(|r| r.as_ref().map(|(_, hi)| hi.as_str())))),
                    int(&|f| f.deletes as i64),
                    int(&|f| f.row_groups.len() as i64),
                ];
                Ok(vec![RecordBatch::try_new(Arc::clone(&self.schema), columns)?])
            }
            SystemKind::Consumers => {
                let consumers = self.table.consumers().await.map_err(df_error)?;
                let columns: Vec<ArrayRef> = vec![
                    Arc::new(StringArray::from_iter_values(consumers.iter().map(|c| c.name.as_str()))),
                    Arc::new(Int64Array::from_iter_values(consumers.iter().map(|c| c.next_snapshot as i64))),
                    Arc::new(
                        TimestampMillisecondArray::from_iter_values(consumers.iter().map(|c| c.updated_ms))
                            .with_timezone("UTC"),
                    ),
                ];
                Ok(vec![RecordBatch::try_new(Arc::clone(&self.schema), columns)?])
            }
        }
    }
}

#[async_trait]
impl ComputedRows for SystemTable {
    fn schema(&self) -> SchemaRef {
        Arc::clone(&self.schema)
    }

    async fn rows(&self) -> datafusion::error::Result<Vec<RecordBatch>> {
        self.batches().await
    }

    fn partition(&self) -> Option<Arc<dyn PartitionStream>> {
        match self.kind {
            // A table's whole history: streamed a row group at a time, never held in memory.
            SystemKind::Changelog => {
                Some(Arc::new(ChangelogRows { table: Arc::clone(&self.table), schema: Arc::clone(&self.schema) }))
            }
            _ => None,
        }
    }
}

/// `t$changelog`'s rows: the changelog of every retained snapshot, in
/// commit order, read a row group at a time.
#[derive(Debug)]
struct ChangelogRows {
    table: Arc<storage::Table>,
    schema: SchemaRef,
}

impl ChangelogRows {
    fn stream(&self) -> futures::stream::BoxStream<'static, datafusion::error::Result<RecordBatch>> {
        use futures::{StreamExt, TryStreamExt};
        let table = Arc::clone(&self.table);
        let schema = Arc::clone(&self.schema);
        futures::stream::once(async move {
            let ids: Vec<u64> = table.snapshots().await.map_err(df_error)?.iter().map(|s| s.id).collect();
            let batches = futures::stream::iter(ids).flat_map(move |id| {
                let schema = Arc::clone(&schema);
                table.changelog_of(id).map_err(df_error).and_then(move |batch| {
                    let schema = Arc::clone(&schema);
                    async move { audit_rows(&schema, &batch, id) }
                })
            });
            Ok::<_, datafusion::error::DataFusionError>(batches)
        })
        .try_flatten()
        .boxed()
    }
}

impl PartitionStream for ChangelogRows {
    fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    fn execute(&self, _ctx: Arc<TaskContext>) -> SendableRecordBatchStream {
        Box::pin(RecordBatchStreamAdapter::new(Arc::clone(&self.schema), self.stream()))
    }
}

/// A changelog batch (user columns, `_seq`, `_kind` code) as `t$changelog`
/// rows: the leading user columns the schema shows (a materialized view's
/// visible ones), `_kind` as `+I`/`-U`/`+U`/`-D`, `_snapshot`.
fn audit_rows(schema: &SchemaRef, batch: &RecordBatch, snapshot: u64) -> datafusion::error::Result<RecordBatch> {
    let user = schema.fields().len() - 2;
    let codes = batch
        .column(batch.num_columns() - 1)
        .as_any()
        .downcast_ref::<datafusion::arrow::array::Int8Array>()
        .ok_or_else(|| datafusion::error::DataFusionError::Internal("changelog _kind is not Int8".into()))?;
    let kinds: StringArray =
        codes.iter().map(|c| c.and_then(storage::RowKind::from_code).map(storage::RowKind::symbol)).collect();
    let mut columns: Vec<ArrayRef> = batch.columns()[..user].to_vec();
    columns.push(Arc::new(kinds));
    columns.push(Arc::new(Int64Array::from(vec![snapshot as i64; batch.num_rows()])));
    Ok(RecordBatch::try_new(Arc::clone(schema), columns)?)
}

/// A Dynamic Table as of a snapshot id or a point in time, read-only.
#[derive(Debug)]
pub struct SnapshotTable {
    dynamic: Arc<super::DynamicTable>,
    table: Arc<storage::Table>,
    schema: SchemaRef,
    as_of: crate::catalog::AsOf,
}

impl SnapshotTable {
    /// `table` (with user columns `schema`) as of `as_of`.
    pub fn new(dynamic: Arc<super::DynamicTable>, as_of: crate::catalog::AsOf) -> Self {
        Self { table: Arc::clone(&dynamic.table), schema: Arc::clone(&dynamic.schema), dynamic, as_of }
    }

    /// The table read.
    pub fn table(&self) -> &Arc<storage::Table> {
        &self.table
    }

    /// The snapshot read, when it is given by id.
    pub fn snapshot(&self) -> Option<u64> {
        match self.as_of {
            crate::catalog::AsOf::Snapshot(id) => Some(id),
            crate::catalog::AsOf::TimestampMillis(_) => None,
        }
    }

    async fn snapshot_id(&self) -> datafusion::error::Result<u64> {
        use crate::catalog::AsOf;
        match self.as_of {
            AsOf::Snapshot(id) => Ok(id),
            AsOf::TimestampMillis(ms) => {
                let snapshots = self.table.snapshots().await.map_err(df_error)?;
                snapshots.iter().rev().find(|s| s.commit_time_ms <= ms).map(|s| s.id).ok_or_else(|| {
                    df_error(crate::error::Error::new(
                        crate::error::StatusCode::InvalidArgument,
                        format!("table {} has no snapshot committed at or before that time", self.table.name()),
                    ))
                })
            }
        }
    }
}

#[async_trait]
impl TableProvider for SnapshotTable {
    fn schema(&self) -> SchemaRef {
        Arc::clone(&self.schema)
    }

    fn table_type(&self) -> TableType {
        TableType::View
    }

    async fn scan(
        &self,
        state: &dyn DfSession,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        _limit: Option<usize>,
    ) -> datafusion::error::Result<Arc<dyn ExecutionPlan>> {
        let id = self.snapshot_id().await?;
        self.dynamic.scan_snapshot(state, Some(id), projection, filters).await
    }

    fn supports_filters_pushdown(
        &self,
        filters: &[&Expr],
    ) -> datafusion::error::Result<Vec<TableProviderFilterPushDown>> {
        self.dynamic.supports_filters_pushdown(filters)
    }
}
