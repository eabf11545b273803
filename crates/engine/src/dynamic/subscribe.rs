//! `SUBSCRIBE TO t`: a Dynamic Table's content at a snapshot as `+I` rows,
//! then the changelog of every later commit, in commit order, forever.
//!
//! The session plans the statement ([`crate::sql::Subscribe`]) as a scan of
//! a [`SubscriptionTable`], whose [`SubscribeExec`] is an unbounded
//! DataFusion source: every protocol that streams query results streams a
//! subscription, and `COPY (SUBSCRIBE …) TO STDOUT` and cursors work
//! unchanged. Each row carries `_kind` (`+I`, `-U`, `+U`, `-D`) and
//! `_snapshot`.
//!
//! The subscriber reads at its own pace: it waits on the table's commit
//! notification ([`storage::Table::watch_commits`]), then reads the next
//! snapshot's changelog a row group at a time, so a slow client holds no
//! more than a row group in memory. A live subscriber holds the snapshots
//! it still needs back from expiry; a named consumer (`consumer = 'name'`)
//! records its progress in the table, so a later SUBSCRIBE with the same
//! name resumes after the last snapshot it finished sending.

use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::array::{ArrayRef, AsArray, Int64Array, RecordBatch, StringArray};
use datafusion::arrow::datatypes::{DataType, Field, Int8Type, Schema, SchemaRef};
use datafusion::catalog::{Session as DfSession, TableProvider};

use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::datasource::TableType;
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::logical_expr::Expr;
use datafusion::physical_expr::{EquivalenceProperties, PhysicalExpr};
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    ChildrenPropertiesMode, DisplayAs, DisplayFormatType, ExecutionPlan, Partitioning, PlanProperties,
    ReplaceChildrenOptions,
};
use futures::StreamExt;
use futures::stream::BoxStream;
use streamhouse_storage as storage;

use super::df_error;
use crate::error::{Error, Result, StatusCode};
use crate::sql::{Start, SubscribeOptions};

/// The columns every subscription row has after the table's.
pub const KIND_COLUMN: &str = "_kind";
/// The snapshot whose commit made the change.
pub const SNAPSHOT_COLUMN: &str = "_snapshot";

/// The output columns of a subscription of a table with columns `user`.
pub fn subscription_schema(user: &Schema) -> SchemaRef {
    let mut fields: Vec<Field> = user.fields().iter().map(|f| f.as_ref().clone().with_nullable(true)).collect();
    fields.push(Field::new(KIND_COLUMN, DataType::Utf8, false));
    fields.push(Field::new(SNAPSHOT_COLUMN, DataType::Int64, false));
    Arc::new(Schema::new(fields))
}

/// Tells a subscription whether its client is still connected, so a named
/// consumer's progress is never recorded for a client that went away
/// (installed per session by the protocol front end).
#[derive(Clone)]
pub struct ClientProbe(pub Arc<dyn Fn() -> bool + Send + Sync>);

impl std::fmt::Debug for ClientProbe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClientProbe")
    }
}

/// A subscription, as a table DataFusion scans.
#[derive(Debug)]
pub struct SubscriptionTable {
    table: Arc<storage::Table>,
    schema: SchemaRef,
    options: SubscribeOptions,
}

impl SubscriptionTable {
    /// A subscription to the first `columns` columns of `table` (a
    /// materialized view's hidden columns follow its visible ones).
    pub fn new(table: Arc<storage::Table>, columns: usize, options: SubscribeOptions) -> Self {
        let user = table.schema().schema;
        let shown = Schema::new(user.fields().iter().take(columns).cloned().collect::<Vec<_>>());
        let schema = subscription_schema(&shown);
        Self { table, schema, options }
    }
}

#[async_trait]
impl TableProvider for SubscriptionTable {
    fn schema(&self) -> SchemaRef {
        Arc::clone(&self.schema)
    }

    fn table_type(&self) -> TableType {
        TableType::Temporary
    }

    async fn scan(
        &self,
        state: &dyn DfSession,
        projection: Option<&Vec<usize>>,
        _filters: &[Expr],
        _limit: Option<usize>,
    ) -> datafusion::error::Result<Arc<dyn ExecutionPlan>> {
        Ok(Arc::new(SubscribeExec::new(
            Arc::clone(&self.table),
            Arc::clone(&self.schema),
            projection.cloned(),
            self.options.clone(),
            state.config().batch_size(),
        )?))
    }
}

/// The unbounded source of a subscription (one partition).
#[derive(Debug)]
pub struct SubscribeExec {
    table: Arc<storage::Table>,
    schema: SchemaRef,
    projection: Option<Vec<usize>>,
    options: SubscribeOptions,
    batch_size: usize,
    properties: Arc<PlanProperties>,
}

impl SubscribeExec {
    fn new(
        table: Arc<storage::Table>,
        schema: SchemaRef,
        projection: Option<Vec<usize>>,
        options: SubscribeOptions,
        batch_size: usize,
    ) -> datafusion::error::Result<Self> {
        let projected = match &projection {
            Some(p) => Arc::new(schema.project(p)?),
            None => Arc::clone(&schema),
        };
        let properties = PlanProperties::new(
            EquivalenceProperties::new(projected),
            Partitioning::UnknownPartitioning(1),
            EmissionType::Incremental,
            Boundedness::Unbounded { requires_infinite_memory: false },
        );
        Ok(Self { table, schema, projection, options, batch_size, properties: Arc::new(properties) })
    }
}

impl DisplayAs for SubscribeExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Subscribe: table={}, start={:?}, snapshot={}",
            self.table.name(),
            self.options.start,
            self.options.snapshot
        )?;
        if let Some(consumer) = &self.options.consumer {
            write!(f, ", consumer={consumer}")?;
        }
        Ok(())
    }
}

impl ExecutionPlan for SubscribeExec {
    fn name(&self) -> &'static str {
        "Subscribe"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![]
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> datafusion::error::Result<TreeNodeRecursion>,
    ) -> datafusion::error::Result<TreeNodeRecursion> {
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
        _partition: usize,
        context: Arc<TaskContext>,
    ) -> datafusion::error::Result<SendableRecordBatchStream> {
        let subscription = Subscription {
            probe: context.session_config().get_extension::<ClientProbe>(),
            commits: self.table.watch_commits(),
            table: Arc::clone(&self.table),
            schema: Arc::clone(&self.schema),
            projection: self.projection.clone(),
            options: self.options.clone(),
            batch_size: self.batch_size,
            phase: Phase::Start,
            hold: None,
        };
        let stream = futures::stream::unfold(subscription, |mut s| async move {
            let item = s.next().await?;
            Some((item.map_err(df_error), s))
        });
        Ok(Box::pin(RecordBatchStreamAdapter::new(
            Arc::clone(self.properties.equivalence_properties().schema()),
            stream,
        )))
    }
}

enum Phase {
    Start,
    /// The start snapshot's content.
    Initial {
        snapshot: u64,
        rows: BoxStream<'static, storage::Result<RecordBatch>>,
    },
    /// The changelog of snapshot `next`, once it is committed.
    Changes {
        next: u64,
        rows: Option<BoxStream<'static, storage::Result<RecordBatch>>>,
    },
}

struct Subscription {
    table: Arc<storage::Table>,
    schema: SchemaRef,
    projection: Option<Vec<usize>>,
    options: SubscribeOptions,
    batch_size: usize,
    commits: tokio::sync::watch::Receiver<u64>,
    phase: Phase,
    hold: Option<storage::SnapshotHold>,
    probe: Option<Arc<ClientProbe>>,
}

impl Subscription {
    /// The next batch; `None` when the table is dropped.
    async fn next(&mut self) -> Option<Result<RecordBatch>> {
        loop {
            match &mut self.phase {
                Phase::Start => {
                    if let Err(e) = self.start().await {
                        return Some(Err(e));
                    }
                }
                Phase::Initial { snapshot, rows } => {
                    let snapshot = *snapshot;
                    match rows.next().await {
                        Some(Ok(batch)) if batch.num_rows() > 0 => {
                            return Some(self.output(&batch, None, snapshot));
                        }
                        Some(Ok(_)) => {}
                        Some(Err(e)) => return Some(Err(e.into())),
                        None => {
                            if let Err(e) = self.finished(snapshot).await {
                                return Some(Err(e));
                            }
                        }
                    }
                }
                Phase::Changes { next, rows: None } => {
                    let next = *next;
                    // Wait for the commit of snapshot `next`.
                    while *self.commits.borrow_and_update() < next {
                        if self.commits.changed().await.is_err() {
                            return None;
                        }
                    }
                    self.phase = Phase::Changes { next, rows: Some(self.table.changelog_of(next)) };
                }
                Phase::Changes { next, rows: Some(rows) } => {
                    let next = *next;
                    match rows.next().await {
                        Some(Ok(batch)) if batch.num_rows() > 0 => {
                            let kinds = batch.column(batch.num_columns() - 1);
                            return Some(self.output(&batch, Some(kinds), next));
                        }
                        Some(Ok(_)) => {}
                        Some(Err(storage::Error::NotFound { .. })) => {
                            return Some(Err(Error::new(
                                StatusCode::ObjectNotFound,
                                format!(
                                    "snapshot {next} of table {} has expired: the subscription fell too far behind",
                                    self.table.name()
                                ),
                            )));
                        }
                        Some(Err(e)) => return Some(Err(e.into())),
                        None => {
                            if let Err(e) = self.finished(next).await {
                                return Some(Err(e));
                            }
                        }
                    }
                }
            }
        }
    }

    /// Resolves the start snapshot and the first phase.
    async fn start(&mut self) -> Result<()> {
        if let Some(name) = &self.options.consumer
            && let Some(consumer) = self.table.consumer(name).await?
        {
            // Resume after what the consumer received.
            self.hold = Some(self.table.hold_snapshots(consumer.next_snapshot));
            // The next snapshot must still exist, unless it is not committed yet.
            let latest = self.table.latest_snapshot().map_or(0, |s| s.id);
            if consumer.next_snapshot <= latest && self.table.read_snapshot(consumer.next_snapshot).await.is_err() {
                return Err(Error::new(
                    StatusCode::ObjectNotFound,
                    format!(
                        "consumer \"{name}\" of table {} needs snapshot {}, which has expired",
                        self.table.name(),
                        consumer.next_snapshot
                    ),
                ));
            }
            self.phase = Phase::Changes { next: consumer.next_snapshot, rows: None };
            return Ok(());
        }
        let start = match self.options.start {
            Start::Latest => self.table.latest_snapshot().map_or(0, |s| s.id),
            Start::Snapshot(id) => {
                self.table.read_snapshot(id).await.map_err(|_| {
                    Error::invalid(format!("table {} has no snapshot {id} (it may have expired)", self.table.name()))
                })?;
                id
            }
            Start::Timestamp(ms) => {
                self.table.snapshots().await?.iter().filter(|s| s.commit_time_ms <= ms).map(|s| s.id).max().ok_or_else(
                    || Error::invalid(format!("table {} has no snapshot at or before that time", self.table.name())),
                )?
            }
        };
        self.hold = Some(self.table.hold_snapshots(start.max(1)));
        if self.options.snapshot && start > 0 {
            let columns = self.table.schema().schema.fields().len();
            let request = storage::ScanRequest {
                projection: Some((0..columns).collect()),
                lower: None,
                upper: None,
                partitions: 1,
                batch_size: self.batch_size,
            };
            let plan = self.table.plan_scan(Some(start), &request).await?;
            self.phase = Phase::Initial { snapshot: start, rows: self.table.read_partition(&plan, 0) };
        } else {
            self.finished(start).await?;
        }
        Ok(())
    }

    /// Everything of `snapshot` was sent: a consumer records it, and the
    /// changes of the next snapshot come next.
    async fn finished(&mut self, snapshot: u64) -> Result<()> {
        let next = snapshot + 1;
        if let Some(name) = &self.options.consumer {
            // Data written to a client that has gone was not received.
            if self.probe.as_ref().is_some_and(|p| !(p.0)()) {
                return Err(Error::new(StatusCode::Cancelled, "the subscriber disconnected"));
            }
            self.table.set_consumer(name, next).await?;
        }
        if let Some(hold) = &self.hold {
            hold.advance(next);
        }
        self.phase = Phase::Changes { next, rows: None };
        Ok(())
    }

    /// A batch of user columns as subscription rows.
    fn output(&self, batch: &RecordBatch, kinds: Option<&ArrayRef>, snapshot: u64) -> Result<RecordBatch> {
        let rows = batch.num_rows();
        let user = self.schema.fields().len() - 2;
        let mut columns: Vec<ArrayRef> = batch.columns()[..user].to_vec();
        let kind: StringArray = match kinds.and_then(|k| k.as_primitive_opt::<Int8Type>()) {
            Some(codes) => codes
                .values()
                .iter()
                .map(|&c| Some(storage::RowKind::from_code(c).map_or("?", storage::RowKind::symbol)))
                .collect(),
            None => std::iter::repeat_n(Some("+I"), rows).collect(),
        };
        columns.push(Arc::new(kind));
        columns.push(Arc::new(Int64Array::from(vec![snapshot as i64; rows])));
        let batch = RecordBatch::try_new(Arc::clone(&self.schema), columns)?;
        Ok(match &self.projection {
            Some(p) => batch.project(p)?,
            None => batch,
        })
    }
}
