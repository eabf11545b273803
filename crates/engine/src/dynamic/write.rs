//! `DELETE … WHERE` and `UPDATE … WHERE` on a Dynamic Table, as an execution
//! plan. The work happens when the plan runs, not when it is planned, so
//! `EXPLAIN` (and a plan that is never run) changes nothing: the write opens
//! a transaction, reads the rows of its base snapshot that match the WHERE
//! clause (streamed, key bounds pruning row groups), writes deletes or new
//! values, and commits once.

use std::sync::Arc;

use datafusion::arrow::array::{ArrayRef, BooleanArray, RecordBatch, UInt64Array};
use datafusion::arrow::compute::kernels::boolean::and;
use datafusion::arrow::compute::{cast, filter_record_batch};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::error::DataFusionError;
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::physical_expr::{EquivalenceProperties, PhysicalExpr};
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    ChildrenPropertiesMode, DisplayAs, DisplayFormatType, ExecutionPlan, Partitioning, PlanProperties,
    ReplaceChildrenOptions,
};
use futures::TryStreamExt;
use streamhouse_storage as storage;

use super::df_error;
use super::scan::DynamicScanExec;

/// What a matching write does to each matching row.
#[derive(Debug)]
pub enum Change {
    /// `DELETE`.
    Delete,
    /// `TRUNCATE`: every row goes, also from an append-only table.
    Truncate,
    /// `UPDATE`: the new value of each column (`None`: unchanged).
    Update {
        /// By column of the table.
        columns: Vec<Option<Arc<dyn PhysicalExpr>>>,
        /// Whether a key column is assigned (the row moves to another key).
        moves_keys: bool,
    },
}

/// Deletes or updates the rows of a Dynamic Table that match predicates.
#[derive(Debug)]
pub struct MatchingWriteExec {
    job: Arc<Job>,
    properties: Arc<PlanProperties>,
}

impl MatchingWriteExec {
    /// A write of the rows of `table` (with columns `schema`) matching every
    /// predicate; `lower`/`upper` bound the first key column.
    pub fn new(
        table: Arc<storage::Table>,
        schema: SchemaRef,
        (lower, upper): (Option<ArrayRef>, Option<ArrayRef>),
        predicates: Vec<Arc<dyn PhysicalExpr>>,
        change: Change,
    ) -> Self {
        let output = Arc::new(Schema::new(vec![Field::new("count", DataType::UInt64, false)]));
        let properties = PlanProperties::new(
            EquivalenceProperties::new(output),
            Partitioning::UnknownPartitioning(1),
            EmissionType::Final,
            Boundedness::Bounded,
        );
        let job = Job { table, schema, lower, upper, predicates, change };
        Self { job: Arc::new(job), properties: Arc::new(properties) }
    }
}

impl DisplayAs for MatchingWriteExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let job = &self.job;
        match &job.change {
            Change::Delete => write!(f, "DynamicTableDelete: table={}", job.table.name()),
            Change::Truncate => write!(f, "DynamicTableTruncate: table={}", job.table.name()),
            Change::Update { columns, .. } => {
                let set: Vec<&str> = columns
                    .iter()
                    .zip(job.schema.fields())
                    .filter(|(c, _)| c.is_some())
                    .map(|(_, f)| f.name().as_str())
                    .collect();
                write!(f, "DynamicTableUpdate: table={}, set=[{}]", job.table.name(), set.join(", "))
            }
        }?;
        write!(f, ", predicates={}", job.predicates.len())
    }
}

impl ExecutionPlan for MatchingWriteExec {
    fn name(&self) -> &'static str {
        match &self.job.change {
            Change::Delete => "DynamicTableDelete",
            Change::Truncate => "DynamicTableTruncate",
            Change::Update { .. } => "DynamicTableUpdate",
        }
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![]
    }

    fn apply_expressions(
        &self,
        f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> datafusion::error::Result<TreeNodeRecursion>,
    ) -> datafusion::error::Result<TreeNodeRecursion> {
        for predicate in &self.job.predicates {
            if f(predicate)? == TreeNodeRecursion::Stop {
                return Ok(TreeNodeRecursion::Stop);
            }
        }
        Ok(TreeNodeRecursion::Continue)
    }

    fn replace_children(
        self: Arc<Self>,
        _: Vec<Arc<dyn ExecutionPlan>>,
        _: ReplaceChildrenOptions,
    ) -> datafusion::error::Result<Arc<dyn ExecutionPlan>> {
        Ok(self)
    }

    fn with_new_children(
        self: Arc<Self>,
        children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> datafusion::error::Result<Arc<dyn ExecutionPlan>> {
        self.replace_children(children, ReplaceChildrenOptions::new(ChildrenPropertiesMode::Recompute))
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> datafusion::error::Result<SendableRecordBatchStream> {
        if partition != 0 {
            return Err(DataFusionError::Internal(format!("{} has one partition, not {partition}", self.name())));
        }
        let job = Arc::clone(&self.job);
        let output = self.properties.eq_properties.schema().clone();
        let batch_schema = Arc::clone(&output);
        let stream = futures::stream::once(async move {
            let count = job.run(context).await?;
            Ok(RecordBatch::try_new(batch_schema, vec![Arc::new(UInt64Array::from(vec![count]))])?)
        });
        Ok(Box::pin(RecordBatchStreamAdapter::new(output, stream)))
    }
}

/// A matching write, shared with the stream that runs it.
#[derive(Debug)]
struct Job {
    table: Arc<storage::Table>,
    schema: SchemaRef,
    lower: Option<ArrayRef>,
    upper: Option<ArrayRef>,
    predicates: Vec<Arc<dyn PhysicalExpr>>,
    change: Change,
}

impl Job {
    /// Runs the write; returns the number of matching rows.
    async fn run(&self, context: Arc<TaskContext>) -> datafusion::error::Result<u64> {
        let table = Arc::clone(&self.table);
        let mut txn = table.begin().await.map_err(df_error)?;
        let config = context.session_config();
        let request = storage::ScanRequest {
            projection: Some((0..self.schema.fields().len()).collect()),
            lower: self.lower.clone(),
            upper: self.upper.clone(),
            partitions: config.target_partitions().max(1),
            batch_size: config.batch_size(),
        };
        let plan = table.plan_scan(txn.base_snapshot(), &request).await.map_err(df_error)?;
        let scan = Arc::new(DynamicScanExec::new(Arc::clone(&table), plan));
        let mut rows = datafusion::physical_plan::execute_stream(scan, context)?;
        let mut count = 0;
        // When keys change, every old key is deleted before any new row is
        // written, so a row moved onto a key that is itself being updated is not lost.
        let mut moved = Vec::new();
        while let Some(batch) = rows.try_next().await? {
            let matching = self.matching(&batch)?;
            if matching.num_rows() == 0 {
                continue;
            }
            count += matching.num_rows() as u64;
            match &self.change {
                Change::Truncate if !txn.table_schema().has_primary_key() => {
                    txn.delete_appended(&matching).await.map_err(df_error)?;
                }
                Change::Delete | Change::Truncate => {
                    let kinds = vec![storage::ValueKind::Delete; matching.num_rows()];
                    txn.write(&matching, &kinds).await.map_err(df_error)?;
                }
                Change::Update { columns, moves_keys } => {
                    let new = self.assign(columns, &matching)?;
                    if *moves_keys {
                        let kinds = vec![storage::ValueKind::Delete; matching.num_rows()];
                        txn.write(&matching, &kinds).await.map_err(df_error)?;
                        moved.push(new);
                    } else {
                        replace(&mut txn, &new).await?;
                    }
                }
            }
        }
        for new in moved {
            replace(&mut txn, &new).await?;
        }
        if matches!(self.change, Change::Truncate) && !txn.table_schema().has_primary_key() {
            // Also when no row was read: the base snapshot's files go.
            let empty = RecordBatch::new_empty(Arc::clone(&self.schema));
            txn.delete_appended(&empty).await.map_err(df_error)?;
        }
        txn.commit().await.map_err(df_error)?;
        storage::Table::schedule_maintenance(&table);
        Ok(count)
    }

    /// The rows of `batch` for which every predicate is true (NULL counts as false, as in SQL).
    fn matching(&self, batch: &RecordBatch) -> datafusion::error::Result<RecordBatch> {
        let mut mask = BooleanArray::from(vec![true; batch.num_rows()]);
        for predicate in &self.predicates {
            let result = predicate.evaluate(batch)?.into_array(batch.num_rows())?;
            let result = result
                .as_any()
                .downcast_ref::<BooleanArray>()
                .ok_or_else(|| DataFusionError::Plan("WHERE clause must be boolean".into()))?;
            let result: BooleanArray = result.iter().map(|v| Some(v == Some(true))).collect();
            mask = and(&mask, &result)?;
        }
        Ok(filter_record_batch(batch, &mask)?)
    }

    /// The new values of the rows `old`.
    fn assign(
        &self,
        columns: &[Option<Arc<dyn PhysicalExpr>>],
        old: &RecordBatch,
    ) -> datafusion::error::Result<RecordBatch> {
        let mut out: Vec<ArrayRef> = Vec::with_capacity(columns.len());
        for (i, (expr, field)) in columns.iter().zip(self.schema.fields()).enumerate() {
            out.push(match expr {
                Some(expr) => cast(&expr.evaluate(old)?.into_array(old.num_rows())?, field.data_type())?,
                None => Arc::clone(old.column(i)),
            });
        }
        Ok(RecordBatch::try_new(Arc::clone(&self.schema), out)?)
    }
}

/// Writes `rows` as the new values of their keys, as UPDATE means it: a
/// plain upsert where that is what the merge engine does, otherwise a delete
/// then an upsert of each key in one write, so partial-update does not keep
/// old values where the new row has NULLs, aggregation does not add the new
/// value to the old one, and `sequence.field` does not ignore the update.
async fn replace(txn: &mut storage::Transaction<'_>, rows: &RecordBatch) -> datafusion::error::Result<()> {
    let options = txn.table_schema().options;
    if options.merge_engine == storage::MergeEngine::Deduplicate && options.sequence_field.is_none() {
        let kinds = vec![storage::ValueKind::Upsert; rows.num_rows()];
        return txn.write(rows, &kinds).await.map_err(df_error);
    }
    let both = datafusion::arrow::compute::concat_batches(&rows.schema(), [rows, rows])?;
    let mut kinds = vec![storage::ValueKind::Delete; rows.num_rows()];
    kinds.resize(both.num_rows(), storage::ValueKind::Upsert);
    txn.write(&both, &kinds).await.map_err(df_error)
}
