//! Read-only tables computed when they are scanned: the system tables
//! (`t$snapshots`, `sys.views`, `sys.queries` …) implement [`ComputedRows`]
//! and are served by one [`TableProvider`], [`Computed`].

use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::catalog::{Session as DfSession, TableProvider};
use datafusion::datasource::TableType;
use datafusion::datasource::memory::MemorySourceConfig;
use datafusion::logical_expr::Expr;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::streaming::{PartitionStream, StreamingTableExec};

/// The rows of a read-only table computed when it is scanned (system tables).
#[async_trait]
pub trait ComputedRows: std::fmt::Debug + Send + Sync + 'static {
    /// The columns.
    fn schema(&self) -> SchemaRef;

    /// The rows, now.
    async fn rows(&self) -> datafusion::error::Result<Vec<RecordBatch>>;

    /// The rows a scan in `state`'s session sees (a table that shows each
    /// session only part of itself overrides this); [`ComputedRows::rows`] by default.
    async fn rows_for(&self, state: &dyn DfSession) -> datafusion::error::Result<Vec<RecordBatch>> {
        let _ = state;
        self.rows().await
    }

    /// The rows as a stream, for tables too big to compute into memory
    /// (a table's whole changelog); `None` serves [`ComputedRows::rows`].
    fn partition(&self) -> Option<Arc<dyn PartitionStream>> {
        None
    }
}

/// A [`ComputedRows`] as a table.
#[derive(Debug)]
pub struct Computed<T>(pub T);

#[async_trait]
impl<T: ComputedRows> TableProvider for Computed<T> {
    fn schema(&self) -> SchemaRef {
        self.0.schema()
    }

    fn table_type(&self) -> TableType {
        TableType::View
    }

    async fn scan(
        &self,
        state: &dyn DfSession,
        projection: Option<&Vec<usize>>,
        _filters: &[Expr],
        _limit: Option<usize>,
    ) -> datafusion::error::Result<Arc<dyn ExecutionPlan>> {
        if let Some(partition) = self.0.partition() {
            let exec = StreamingTableExec::try_new(self.0.schema(), vec![partition], projection, [], false, None)?;
            return Ok(Arc::new(exec));
        }
        batches_exec(self.0.rows_for(state).await?, &self.0.schema(), projection)
    }
}

/// A plan that yields `batches` (a system table's rows, computed when scanned).
pub fn batches_exec(
    batches: Vec<RecordBatch>,
    schema: &SchemaRef,
    projection: Option<&Vec<usize>>,
) -> datafusion::error::Result<Arc<dyn ExecutionPlan>> {
    Ok(MemorySourceConfig::try_new_exec(&[batches], Arc::clone(schema), projection.cloned())?)
}
