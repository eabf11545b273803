//! Dynamic Tables in the engine: the DataFusion `TableProvider` of one
//! `streamhouse-storage` table ([`DynamicTable`]), its scans, writes,
//! ingest, system tables and subscriptions. The catalog that keeps them is
//! [`crate::warehouse`].
//!
//! Reads are snapshot scans (merge-on-read); `INSERT` upserts
//! (Paimon and RisingWave semantics: a row whose key exists replaces it, or is
//! ignored under `'merge-engine' = 'first-row'`); `DELETE` and `UPDATE`
//! evaluate their filter on the current snapshot and commit deletes and
//! upserts as one snapshot.
//!
//! Table options use Paimon's names: `'merge-engine' = 'deduplicate' |
//! 'first-row'`. An unknown option or value is an error naming it.

use std::fmt::Debug;
use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::catalog::{Session as DfSession, TableProvider};
use datafusion::common::{DFSchema, DataFusionError};
use datafusion::datasource::TableType;
use datafusion::datasource::sink::{DataSink, DataSinkExec};
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::logical_expr::dml::InsertOp;
use datafusion::logical_expr::{Expr, TableProviderFilterPushDown};
use datafusion::physical_plan::{DisplayAs, DisplayFormatType, ExecutionPlan};
use futures::StreamExt;
use streamhouse_storage as storage;

pub mod ingest;
pub mod scan;
pub mod subscribe;
pub mod system;
pub mod write;

use crate::error::{Error, Result, StatusCode};

impl From<storage::Error> for Error {
    fn from(err: storage::Error) -> Self {
        let code = match &err {
            storage::Error::Corrupt { .. } => StatusCode::DataCorrupted,
            storage::Error::Conflict { .. } => StatusCode::SerializationFailure,
            storage::Error::NotFound { .. } => StatusCode::TableNotFound,
            storage::Error::AlreadyExists { .. } => StatusCode::AlreadyExists,
            storage::Error::Invalid(_) => StatusCode::InvalidArgument,
            storage::Error::NotNull(_) => StatusCode::ConstraintViolation,
            storage::Error::OutOfRange(_) => StatusCode::NumericOverflow,
            storage::Error::Unsupported(_) => StatusCode::Unsupported,
            storage::Error::ObjectStore { .. } => StatusCode::Io,
            storage::Error::Arrow(_) => StatusCode::Internal,
        };
        Error::new(code, err.to_string())
    }
}

pub(crate) fn df_error(err: impl Into<Error>) -> DataFusionError {
    DataFusionError::External(Box::new(err.into()))
}

/// Turns the plan of a plain INSERT into one that skips rows whose key
/// exists (`ON CONFLICT DO NOTHING`), checking the conflict target is the
/// table's primary key.
///
/// # Errors
/// 42P10 when the target is not the primary key or the table has none.
pub fn ignore_conflicts(
    plan: datafusion::logical_expr::LogicalPlan,
    target: Option<&[String]>,
) -> Result<datafusion::logical_expr::LogicalPlan> {
    use datafusion::logical_expr::{DmlStatement, LogicalPlan, WriteOp};
    let LogicalPlan::Dml(dml) = plan else {
        return Err(Error::unsupported("ON CONFLICT is only supported on INSERT"));
    };
    if !matches!(dml.op, WriteOp::Insert(InsertOp::Append)) {
        return Err(Error::unsupported("ON CONFLICT is only supported on INSERT"));
    }
    let provider = datafusion::datasource::source_as_provider(&dml.target)?;
    let no_match = |detail: &str| {
        Error::new(
            StatusCode::InvalidColumnReference,
            format!("there is no unique or exclusion constraint matching the ON CONFLICT specification: {detail}"),
        )
    };
    let Some(table) = provider.downcast_ref::<DynamicTable>() else {
        return Err(no_match(&format!("{} is not a Dynamic Table", dml.table_name)));
    };
    if table.primary_key.is_empty() {
        return Err(no_match(&format!("table {} has no primary key", dml.table_name)));
    }
    if let Some(columns) = target {
        let mut given: Vec<&str> = columns.iter().map(String::as_str).collect();
        let mut key: Vec<&str> = table.primary_key.iter().map(|&i| table.schema.field(i).name().as_str()).collect();
        given.sort_unstable();
        key.sort_unstable();
        if given != key {
            return Err(no_match(&format!("the primary key of {} is ({})", dml.table_name, key.join(", "))));
        }
    }
    let wrapped = Arc::new(KeyedWrite { inner: provider, kind: storage::ValueKind::Insert });
    Ok(LogicalPlan::Dml(DmlStatement { target: datafusion::datasource::provider_as_source(wrapped), ..dml }))
}

/// Plans a DELETE or UPDATE that reads more than its own table — a
/// subquery in its WHERE or SET, or other tables — as its query, written
/// by key: the rows it selects deleted, or their new values upserted.
///
/// DataFusion hands a table's `delete_from` / `update` only the predicates
/// on the table itself and drops the others: `DELETE FROM t WHERE k IN
/// (SELECT …)` would reach the table with no predicate and delete every
/// row. Other writes are returned as they are.
///
/// # Errors
/// 0A000 for an UPDATE of a primary key column that reads other tables.
pub fn plan_reading_write(
    plan: datafusion::logical_expr::LogicalPlan,
) -> Result<datafusion::logical_expr::LogicalPlan> {
    use datafusion::logical_expr::{DmlStatement, LogicalPlan, WriteOp};
    let LogicalPlan::Dml(dml) = plan else { return Ok(plan) };
    let kind = match dml.op {
        WriteOp::Delete => storage::ValueKind::Delete,
        WriteOp::Update => storage::ValueKind::Upsert,
        _ => return Ok(LogicalPlan::Dml(dml)),
    };
    if !reads_beyond_target(&dml.input) {
        return Ok(LogicalPlan::Dml(dml));
    }
    let provider = datafusion::datasource::source_as_provider(&dml.target)?;
    let Some(table) = provider.downcast_ref::<DynamicTable>() else { return Ok(LogicalPlan::Dml(dml)) };
    table
        .refuse_first_row(if kind == storage::ValueKind::Delete { "DELETE" } else { "UPDATE" })
        .map_err(Error::from)?;
    if kind == storage::ValueKind::Upsert {
        // The input is the updated rows: one expression per column, a
        // column left alone being itself.
        let LogicalPlan::Projection(projection) = dml.input.as_ref() else {
            return Err(Error::unsupported("this form of UPDATE"));
        };
        for &k in &table.primary_key {
            let name = table.schema.field(k).name();
            let unchanged = projection
                .expr
                .get(k)
                .is_some_and(|e| matches!(e.clone().unalias(), Expr::Column(c) if &c.name == name));
            if !unchanged {
                return Err(Error::unsupported(format!(
                    "UPDATE of primary key column \"{name}\" with a subquery or other tables"
                )));
            }
        }
    }
    let wrapped = Arc::new(KeyedWrite { inner: provider, kind });
    Ok(LogicalPlan::Dml(DmlStatement {
        target: datafusion::datasource::provider_as_source(wrapped),
        op: WriteOp::Insert(InsertOp::Append),
        ..dml
    }))
}

/// Whether a DELETE's or UPDATE's input reads anything but its target: a
/// subquery, a join.
fn reads_beyond_target(input: &datafusion::logical_expr::LogicalPlan) -> bool {
    use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
    use datafusion::logical_expr::LogicalPlan;
    let mut beyond = false;
    let _ = input.apply(|node| {
        let plain = matches!(
            node,
            LogicalPlan::Filter(_)
                | LogicalPlan::Projection(_)
                | LogicalPlan::TableScan(_)
                | LogicalPlan::SubqueryAlias(_)
        );
        let subquery = node.expressions().iter().any(|e| {
            e.exists(|e| Ok(matches!(e, Expr::Exists(_) | Expr::InSubquery(_) | Expr::ScalarSubquery(_))))
                .unwrap_or(true)
        });
        if !plain || subquery {
            beyond = true;
            return Ok(TreeNodeRecursion::Stop);
        }
        Ok(TreeNodeRecursion::Continue)
    });
    beyond
}

/// A Dynamic Table whose INSERT writes its rows as `kind`: inserts that
/// keep existing keys (`ON CONFLICT DO NOTHING`, [`ignore_conflicts`]), or a
/// DELETE or UPDATE planned as its query ([`plan_reading_write`]).
#[derive(Debug)]
struct KeyedWrite {
    inner: Arc<dyn TableProvider>,
    kind: storage::ValueKind,
}

#[async_trait]
impl TableProvider for KeyedWrite {
    fn schema(&self) -> SchemaRef {
        self.inner.schema()
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    async fn scan(
        &self,
        state: &dyn DfSession,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> datafusion::error::Result<Arc<dyn ExecutionPlan>> {
        self.inner.scan(state, projection, filters, limit).await
    }

    fn get_column_default(&self, column: &str) -> Option<&Expr> {
        self.inner.get_column_default(column)
    }

    async fn insert_into(
        &self,
        _state: &dyn DfSession,
        input: Arc<dyn ExecutionPlan>,
        _insert_op: InsertOp,
    ) -> datafusion::error::Result<Arc<dyn ExecutionPlan>> {
        let table = self
            .inner
            .downcast_ref::<DynamicTable>()
            .ok_or_else(|| DataFusionError::Internal("the target of a keyed write is not a Dynamic Table".into()))?;
        Ok(table.sink(input, self.kind))
    }
}

/// One Dynamic Table as DataFusion sees it.
#[derive(Debug)]
pub struct DynamicTable {
    pub(crate) table: Arc<storage::Table>,
    pub(crate) schema: SchemaRef,
    primary_key: Vec<usize>,
    /// `DEFAULT`s as stored (SQL text), planned into `defaults` when the catalog binds.
    pub(crate) stored_defaults: Vec<(String, String)>,
    pub(crate) defaults: std::sync::OnceLock<std::collections::HashMap<String, Expr>>,
}

impl DynamicTable {
    /// The provider of `table`.
    pub fn new(table: storage::Table) -> Self {
        Self::shared(Arc::new(table))
    }

    /// Positions of the primary key columns, in key order.
    pub fn primary_key(&self) -> &[usize] {
        &self.primary_key
    }

    /// A provider over a table other providers share (after ALTER TABLE).
    pub fn shared(table: Arc<storage::Table>) -> Self {
        let definition = table.schema();
        Self {
            table,
            schema: Arc::clone(&definition.schema),
            primary_key: definition.primary_key.clone(),
            stored_defaults: definition.column_defaults,
            defaults: std::sync::OnceLock::new(),
        }
    }

    /// A provider over the first `columns` columns of `table` only (a
    /// materialized view without its hidden columns). Read-only use.
    pub fn visible_part(table: Arc<storage::Table>, columns: usize) -> Self {
        let definition = table.schema();
        let fields: Vec<_> = definition.schema.fields().iter().take(columns).cloned().collect();
        let key = definition.primary_key.clone();
        Self {
            table,
            schema: Arc::new(datafusion::arrow::datatypes::Schema::new(fields)),
            primary_key: if key.iter().all(|&k| k < columns) { key } else { vec![] },
            stored_defaults: vec![],
            defaults: std::sync::OnceLock::new(),
        }
    }

    /// The storage table.
    pub fn storage(&self) -> &Arc<storage::Table> {
        &self.table
    }

    pub(crate) fn set_defaults(&self, defaults: std::collections::HashMap<String, Expr>) {
        let _ = self.defaults.set(defaults);
    }

    /// The plan that writes `input` with `kind` (upsert, or insert-if-absent).
    fn sink(&self, input: Arc<dyn ExecutionPlan>, kind: storage::ValueKind) -> Arc<dyn ExecutionPlan> {
        let sink = UpsertSink { table: Arc::clone(&self.table), schema: Arc::clone(&self.schema), kind };
        Arc::new(DataSinkExec::new(input, Arc::new(sink), None))
    }

    fn first_key_column(&self) -> Option<&str> {
        self.primary_key.first().map(|&i| self.schema.field(i).name().as_str())
    }

    /// A streaming scan of `snapshot` (the latest when `None`).
    pub(crate) async fn scan_snapshot(
        &self,
        state: &dyn DfSession,
        snapshot: Option<u64>,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
    ) -> datafusion::error::Result<Arc<dyn ExecutionPlan>> {
        let (lower, upper) = match self.first_key_column() {
            Some(column) => scan::key_bounds(column, filters),
            None => (None, None),
        };
        let fan_out = state.config().get_extension::<scan::SplitsPerPartition>().map_or(1, |s| s.0.max(1));
        let request = storage::ScanRequest {
            // Explicit, so a provider planned before ALTER TABLE ADD COLUMN reads its own columns.
            projection: Some(projection.cloned().unwrap_or_else(|| (0..self.schema.fields().len()).collect())),
            lower,
            upper,
            partitions: state.config().target_partitions().max(1) * fan_out,
            batch_size: state.config().batch_size(),
        };
        let plan = self.table.plan_scan(snapshot, &request).await.map_err(|e| match (e, snapshot) {
            (storage::Error::NotFound { .. }, Some(id)) => df_error(Error::invalid(format!(
                "table {} has no snapshot {id} (it may have expired)",
                self.table.name()
            ))),
            (other, _) => df_error(other),
        })?;
        let plan = if fan_out > 1 { plan.regroup(state.config().target_partitions().max(1)) } else { plan };
        Ok(Arc::new(scan::DynamicScanExec::new(Arc::clone(&self.table), plan)))
    }
}

#[async_trait]
impl TableProvider for DynamicTable {
    fn schema(&self) -> SchemaRef {
        Arc::clone(&self.schema)
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    async fn scan(
        &self,
        state: &dyn DfSession,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        _limit: Option<usize>,
    ) -> datafusion::error::Result<Arc<dyn ExecutionPlan>> {
        let pinned = state.config().get_extension::<scan::PinnedSnapshots>().and_then(|p| p.get(&self.table));
        self.scan_snapshot(state, pinned, projection, filters).await
    }

    fn get_column_default(&self, column: &str) -> Option<&Expr> {
        self.defaults.get().and_then(|d| d.get(column))
    }

    fn supports_filters_pushdown(
        &self,
        filters: &[&Expr],
    ) -> datafusion::error::Result<Vec<TableProviderFilterPushDown>> {
        // Filters on the first key column prune row groups; DataFusion still applies them.
        let first_key = self.first_key_column();
        Ok(filters
            .iter()
            .map(|f| {
                let bounds = first_key.map(|c| scan::key_bounds(c, &[(*f).clone()]));
                match bounds {
                    Some((Some(_), _) | (_, Some(_))) => TableProviderFilterPushDown::Inexact,
                    _ => TableProviderFilterPushDown::Unsupported,
                }
            })
            .collect())
    }

    async fn insert_into(
        &self,
        _state: &dyn DfSession,
        input: Arc<dyn ExecutionPlan>,
        insert_op: InsertOp,
    ) -> datafusion::error::Result<Arc<dyn ExecutionPlan>> {
        if insert_op != InsertOp::Append {
            return Err(df_error(Error::unsupported(format!(
                "INSERT {insert_op} is not supported for Dynamic Tables"
            ))));
        }
        Ok(self.sink(input, storage::ValueKind::Upsert))
    }

    async fn delete_from(
        &self,
        state: &dyn DfSession,
        filters: Vec<Expr>,
    ) -> datafusion::error::Result<Arc<dyn ExecutionPlan>> {
        self.refuse_first_row("DELETE")?;
        self.matching_write(state, &filters, write::Change::Delete)
    }

    async fn truncate(&self, state: &dyn DfSession) -> datafusion::error::Result<Arc<dyn ExecutionPlan>> {
        self.refuse_first_row("TRUNCATE")?;
        self.matching_write(state, &[], write::Change::Truncate)
    }

    async fn update(
        &self,
        state: &dyn DfSession,
        assignments: Vec<(String, Expr)>,
        filters: Vec<Expr>,
    ) -> datafusion::error::Result<Arc<dyn ExecutionPlan>> {
        self.refuse_first_row("UPDATE")?;
        let moves_keys =
            assignments.iter().any(|(name, _)| self.primary_key.iter().any(|&k| self.schema.field(k).name() == name));
        let df_schema = DFSchema::try_from(Arc::clone(&self.schema))?;
        let columns = self
            .schema
            .fields()
            .iter()
            .map(|field| {
                assignments
                    .iter()
                    .find(|(name, _)| name == field.name())
                    .map(|(_, expr)| state.create_physical_expr(expr.clone(), &df_schema))
                    .transpose()
            })
            .collect::<datafusion::error::Result<Vec<_>>>()?;
        self.matching_write(state, &filters, write::Change::Update { columns, moves_keys })
    }
}

impl DynamicTable {
    /// The plan of a DELETE or UPDATE of the rows matching `filters`; it
    /// writes when executed.
    fn matching_write(
        &self,
        state: &dyn DfSession,
        filters: &[Expr],
        change: write::Change,
    ) -> datafusion::error::Result<Arc<dyn ExecutionPlan>> {
        let bounds = match self.first_key_column() {
            Some(column) => scan::key_bounds(column, filters),
            None => (None, None),
        };
        let df_schema = DFSchema::try_from(Arc::clone(&self.schema))?;
        let predicates = filters
            .iter()
            .map(|f| state.create_physical_expr(f.clone(), &df_schema))
            .collect::<datafusion::error::Result<Vec<_>>>()?;
        let table = Arc::clone(&self.table);
        Ok(Arc::new(write::MatchingWriteExec::new(table, Arc::clone(&self.schema), bounds, predicates, change)))
    }

    fn refuse_first_row(&self, statement: &str) -> datafusion::error::Result<()> {
        if self.table.schema().options.merge_engine == storage::MergeEngine::FirstRow {
            return Err(df_error(Error::unsupported(format!(
                "{statement} is not supported on table \"{}\": it uses merge-engine 'first-row', which keeps the first row of every key",
                self.table.name()
            ))));
        }
        Ok(())
    }
}

/// Writes an INSERT's rows as upserts in one commit.
#[derive(Debug)]
struct UpsertSink {
    table: Arc<storage::Table>,
    schema: SchemaRef,
    kind: storage::ValueKind,
}

impl DisplayAs for UpsertSink {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "UpsertSink: table={}", self.table.name())
    }
}

#[async_trait]
impl DataSink for UpsertSink {
    fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    async fn write_all(
        &self,
        data: SendableRecordBatchStream,
        _context: &Arc<TaskContext>,
    ) -> datafusion::error::Result<u64> {
        let batches = data.map(|b| b.map_err(Error::from));
        let count = ingest::write_stream(&self.table, &self.schema, batches, self.kind).await.map_err(df_error)?;
        storage::Table::schedule_maintenance(&self.table);
        Ok(count)
    }
}
