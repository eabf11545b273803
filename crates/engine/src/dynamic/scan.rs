//! The physical scan of a Dynamic Table snapshot: one DataFusion partition
//! per planned partition of the storage scan (merge-on-read of sorted runs,
//! streamed in bounded memory), with row-count statistics from the snapshot.
//!
//! Filters on the first primary-key column (`k = 5`, `k > 10`, `k BETWEEN …`,
//! `k IN (…)` with literals) become key bounds that prune row groups; they
//! are reported to DataFusion as inexact, so it still applies them.

use std::sync::Arc;

use datafusion::arrow::array::ArrayRef;
use datafusion::common::stats::Precision;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::common::{ScalarValue, Statistics};
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::logical_expr::{BinaryExpr, Expr, Operator};
use datafusion::physical_expr::{EquivalenceProperties, PhysicalExpr};
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    ChildrenPropertiesMode, DisplayAs, DisplayFormatType, ExecutionPlan, Partitioning, PlanProperties,
    ReplaceChildrenOptions, StatisticsArgs,
};
use futures::TryStreamExt;
use streamhouse_storage as storage;

use super::df_error;

/// Scans one planned snapshot of a Dynamic Table.
#[derive(Debug)]
pub struct DynamicScanExec {
    table: Arc<storage::Table>,
    plan: storage::ScanPlan,
    properties: Arc<PlanProperties>,
}

impl DynamicScanExec {
    /// Wraps a storage scan plan.
    pub fn new(table: Arc<storage::Table>, plan: storage::ScanPlan) -> Self {
        let properties = PlanProperties::new(
            EquivalenceProperties::new(Arc::clone(&plan.schema)),
            Partitioning::UnknownPartitioning(plan.partitions.len().max(1)),
            EmissionType::Incremental,
            Boundedness::Bounded,
        );
        Self { table, plan, properties: Arc::new(properties) }
    }
}

impl DynamicScanExec {
    /// Bytes of the row groups the scan reads.
    pub fn bytes(&self) -> u64 {
        self.plan.bytes
    }

    /// The scan, to run elsewhere ([`DynamicScanExec::decode`]): the
    /// table's name and directory, and the planned splits of its pinned snapshot.
    ///
    /// # Errors
    /// The plan cannot be encoded.
    pub fn encode(&self) -> datafusion::error::Result<Vec<u8>> {
        let plan = self.plan.encode().map_err(df_error)?;
        let mut out = Vec::with_capacity(plan.len() + 64);
        for text in [self.table.name(), self.table.dir().as_ref()] {
            out.extend_from_slice(&(text.len() as u32).to_le_bytes());
            out.extend_from_slice(text.as_bytes());
        }
        out.extend_from_slice(&plan);
        Ok(out)
    }

    /// A scan [`DynamicScanExec::encode`] made, reading from `store`.
    ///
    /// # Errors
    /// Bytes that are not such a scan.
    pub fn decode(bytes: &[u8], store: Arc<dyn object_store::ObjectStore>) -> datafusion::error::Result<Self> {
        let bad = || datafusion::error::DataFusionError::Internal("a malformed Dynamic Table scan was sent".into());
        let mut rest = bytes;
        let mut texts = Vec::with_capacity(2);
        for _ in 0..2 {
            let (len, tail) = rest.split_first_chunk::<4>().ok_or_else(bad)?;
            let len = u32::from_le_bytes(*len) as usize;
            let text = tail.get(..len).ok_or_else(bad)?;
            texts.push(std::str::from_utf8(text).map_err(|_| bad())?.to_string());
            rest = &tail[len..];
        }
        let plan = storage::ScanPlan::decode(rest).map_err(df_error)?;
        let table = storage::Table::for_plan(
            store,
            object_store::path::Path::parse(&texts[1]).map_err(|_| bad())?,
            &texts[0],
            &plan,
        );
        Ok(Self::new(Arc::new(table), plan))
    }

    /// The scan's splits shared among `tasks` scans, each of as many
    /// partitions as this one; together they read what it reads.
    pub fn deal(&self, tasks: usize) -> Vec<Self> {
        self.plan.deal(tasks).into_iter().map(|plan| Self::new(Arc::clone(&self.table), plan)).collect()
    }

    /// The table and snapshot scanned (`None`: the table was empty).
    pub fn snapshot(&self) -> (&Arc<storage::Table>, Option<u64>) {
        (&self.table, self.plan.snapshot)
    }
}

/// How many splits a Dynamic Table scan plans per partition (a session
/// configuration extension; 1 when absent): a distributed query plans
/// enough splits that each of its tasks gets a share
/// ([`DynamicScanExec::deal`]).
#[derive(Debug, Clone, Copy)]
pub struct SplitsPerPartition(pub usize);

/// Snapshots a query must read (a session configuration extension): a
/// query planned again, e.g. to run in BSP after MPP ran out of memory,
/// reads what its first plan read.
#[derive(Debug, Default)]
pub struct PinnedSnapshots(pub Vec<(Arc<storage::Table>, u64)>);

impl PinnedSnapshots {
    /// The snapshots the scans of `plan` read.
    pub fn of(plan: &Arc<dyn ExecutionPlan>) -> Self {
        let mut pins: Vec<(Arc<storage::Table>, u64)> = Vec::new();
        let _ = datafusion::common::tree_node::TreeNode::apply(plan, |node| {
            if let Some(scan) = node.downcast_ref::<DynamicScanExec>()
                && let (table, Some(id)) = scan.snapshot()
            {
                // A table read at several snapshots (time travel too): the plain scan read the newest.
                match pins.iter_mut().find(|(t, _)| Arc::ptr_eq(t, table)) {
                    Some(pin) => pin.1 = pin.1.max(id),
                    None => pins.push((Arc::clone(table), id)),
                }
            }
            Ok(TreeNodeRecursion::Continue)
        });
        Self(pins)
    }

    /// The pinned snapshot of `table`.
    pub fn get(&self, table: &Arc<storage::Table>) -> Option<u64> {
        self.0.iter().find(|(t, _)| Arc::ptr_eq(t, table)).map(|(_, id)| *id)
    }
}

/// [`SnapshotPinning`](crate::catalog::SnapshotPinning) of Dynamic Table
/// scans: the pins travel as a session-config extension that
/// [`DynamicTable`](super::DynamicTable) scans read.
#[derive(Debug, Default)]
pub struct DynamicSnapshotPinning;

impl crate::catalog::SnapshotPinning for DynamicSnapshotPinning {
    fn pin(
        &self,
        plan: &Arc<dyn ExecutionPlan>,
        config: datafusion::prelude::SessionConfig,
    ) -> datafusion::prelude::SessionConfig {
        config.with_extension(Arc::new(PinnedSnapshots::of(plan)))
    }
}

impl DisplayAs for DynamicScanExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let splits: usize = self.plan.partitions.iter().map(Vec::len).sum();
        write!(f, "DynamicTableScan: table={}", self.table.name())?;
        match self.plan.snapshot {
            Some(id) => write!(f, ", snapshot={id}")?,
            None => write!(f, ", snapshot=none")?,
        }
        write!(f, ", splits={splits}, rows<={}", self.plan.rows)
    }
}

impl ExecutionPlan for DynamicScanExec {
    fn name(&self) -> &'static str {
        "DynamicTableScan"
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
        partition: usize,
        _context: Arc<TaskContext>,
    ) -> datafusion::error::Result<SendableRecordBatchStream> {
        let stream = self.table.read_partition(&self.plan, partition).map_err(df_error);
        Ok(Box::pin(RecordBatchStreamAdapter::new(Arc::clone(&self.plan.schema), stream)))
    }

    fn statistics_from_inputs(
        &self,
        _input_stats: &[Arc<Statistics>],
        args: &StatisticsArgs,
    ) -> datafusion::error::Result<Arc<Statistics>> {
        let (rows, bytes) = match args.partition() {
            None => (self.plan.rows, self.plan.bytes),
            Some(_) => {
                let share = self.plan.partitions.len().max(1) as u64;
                (self.plan.rows / share, self.plan.bytes / share)
            }
        };
        Ok(Arc::new(
            Statistics::new_unknown(&self.plan.schema)
                .with_num_rows(Precision::Inexact(rows as usize))
                .with_total_byte_size(Precision::Inexact(bytes as usize)),
        ))
    }
}

/// Bounds on `column` implied by `filters`: `(lower, upper)`, inclusive, as
/// one-element arrays.
pub fn key_bounds(column: &str, filters: &[Expr]) -> (Option<ArrayRef>, Option<ArrayRef>) {
    let mut lower: Option<ScalarValue> = None;
    let mut upper: Option<ScalarValue> = None;
    let mut tighten = |value: &ScalarValue, is_lower: bool| {
        let slot = if is_lower { &mut lower } else { &mut upper };
        let better = match slot.as_ref() {
            None => true,
            Some(current) => match value.partial_cmp(current) {
                Some(std::cmp::Ordering::Greater) => is_lower,
                Some(std::cmp::Ordering::Less) => !is_lower,
                _ => false,
            },
        };
        if better && !value.is_null() {
            *slot = Some(value.clone());
        }
    };
    for filter in filters {
        for conjunct in datafusion::logical_expr::utils::split_conjunction(filter) {
            match conjunct {
                Expr::BinaryExpr(BinaryExpr { left, op, right }) => {
                    let (value, op) = match (left.as_ref(), right.as_ref()) {
                        (Expr::Column(c), Expr::Literal(v, _)) if c.name == column => (v, *op),
                        (Expr::Literal(v, _), Expr::Column(c)) if c.name == column => match op.swap() {
                            Some(op) => (v, op),
                            None => continue,
                        },
                        _ => continue,
                    };
                    match op {
                        Operator::Eq => {
                            tighten(value, true);
                            tighten(value, false);
                        }
                        Operator::Gt | Operator::GtEq => tighten(value, true),
                        Operator::Lt | Operator::LtEq => tighten(value, false),
                        _ => {}
                    }
                }
                Expr::Between(between) if !between.negated => {
                    if let (Expr::Column(c), Expr::Literal(lo, _), Expr::Literal(hi, _)) =
                        (between.expr.as_ref(), between.low.as_ref(), between.high.as_ref())
                        && c.name == column
                    {
                        tighten(lo, true);
                        tighten(hi, false);
                    }
                }
                Expr::InList(list) if !list.negated => {
                    if let Expr::Column(c) = list.expr.as_ref()
                        && c.name == column
                    {
                        let values: Option<Vec<&ScalarValue>> = list
                            .list
                            .iter()
                            .map(|e| match e {
                                Expr::Literal(v, _) if !v.is_null() => Some(v),
                                _ => None,
                            })
                            .collect();
                        if let Some(values) = values {
                            let min = values
                                .iter()
                                .copied()
                                .min_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
                            let max = values
                                .iter()
                                .copied()
                                .max_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
                            if let (Some(min), Some(max)) = (min, max) {
                                tighten(min, true);
                                tighten(max, false);
                            }
                        }
                    }
                }
                _ => {}
            }
        }
    }
    let array = |v: Option<ScalarValue>| v.and_then(|v| v.to_array().ok());
    (array(lower), array(upper))
}
