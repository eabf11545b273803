//! Step plans planned once per view: physical plans cached by shape.
//!
//! A view's steps run the same few plans over and over (the change joined
//! with rows looked up by key, the groups it touches, …); what differs
//! from one step to the next is only the rows they read from memory — the
//! change, rows looked up, rows computed earlier in the step. Planning such
//! a plan again every step (analyzer, optimizer rules, physical planner,
//! physical optimizer rules) cost about a tenth of all CPU of a small join
//! step. [`StepPlans::collect`] plans a step's plan once: its in-memory
//! inputs become *slots* ([`SlotExec`], numbered in plan order), and the
//! physical plan is kept under the plan's shape (its text with every
//! node's schema, and the schemas of the in-memory inputs). A later plan of
//! the same shape runs the kept physical plan with its own rows in the
//! slots, every operator's run-time state reset.
//!
//! Only plans whose every input is in memory are kept: a plan that reads a
//! source snapshot (its files are fixed when it is planned), a `VALUES`
//! list (its text is abbreviated), an extension node or a subquery is
//! planned afresh each time. Slots tell the planner their first rows'
//! count as an estimate only (an exact count would let it answer
//! `count(*)` from statistics, wrongly for the next rows). A view keeps at
//! most [`PLANS`] plans, the least recently used leaving first.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::catalog::{MemTable, Session, TableProvider};
use datafusion::common::stats::Precision;
use datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
use datafusion::datasource::{TableType, provider_as_source, source_as_provider};
use datafusion::execution::TaskContext;
use datafusion::logical_expr::{Expr, LogicalPlan, TableScan};
use datafusion::physical_expr::{EquivalenceProperties, PhysicalExpr};
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::memory::MemoryStream;
use datafusion::physical_plan::{
    ChildrenPropertiesMode, DisplayAs, DisplayFormatType, ExecutionPlan, Partitioning, PlanProperties,
    ReplaceChildrenOptions, SendableRecordBatchStream, Statistics, StatisticsArgs,
};
use datafusion::prelude::SessionContext;

use crate::error::Result;

/// Physical plans a view keeps.
pub const PLANS: usize = 64;

/// One in-memory input of a step's plan: its table's schema and rows.
struct Leaf {
    schema: SchemaRef,
    batches: Vec<RecordBatch>,
}

/// A kept physical plan and when it was last used.
type Kept = (Arc<dyn ExecutionPlan>, u64);

/// The physical plans of a view's steps, by shape.
#[derive(Debug, Default)]
pub struct StepPlans {
    plans: Mutex<HashMap<String, Kept>>,
    tick: AtomicU64,
    hits: AtomicU64,
    misses: AtomicU64,
}

impl StepPlans {
    /// Plans run from a kept physical plan, and plans planned (kept or not).
    pub fn counts(&self) -> (i64, i64) {
        (self.hits.load(Ordering::Relaxed) as i64, self.misses.load(Ordering::Relaxed) as i64)
    }

    /// Runs `plan` in `ctx` and collects its rows, planning it only when no
    /// plan of its shape was planned before.
    ///
    /// # Errors
    /// Planning and execution failures.
    pub async fn collect(&self, ctx: &SessionContext, plan: LogicalPlan) -> Result<Vec<RecordBatch>> {
        let Some(leaves) = memory_leaves(&plan) else {
            self.misses.fetch_add(1, Ordering::Relaxed);
            return Ok(ctx.execute_logical_plan(plan).await?.collect().await?);
        };
        let key = shape(&plan, &leaves);
        let physical = match self.get(&key) {
            Some(physical) => {
                self.hits.fetch_add(1, Ordering::Relaxed);
                physical
            }
            None => {
                self.misses.fetch_add(1, Ordering::Relaxed);
                let slotted = with_slots(plan, &leaves)?;
                let physical = ctx.state().create_physical_plan(&slotted).await?;
                self.insert(key, Arc::clone(&physical));
                physical
            }
        };
        let bound = bind(physical, &leaves)?;
        Ok(datafusion::physical_plan::collect(bound, ctx.task_ctx()).await?)
    }

    fn get(&self, key: &str) -> Option<Arc<dyn ExecutionPlan>> {
        let tick = self.tick.fetch_add(1, Ordering::Relaxed);
        let mut plans = crate::lock(&self.plans);
        let entry = plans.get_mut(key)?;
        entry.1 = tick;
        Some(Arc::clone(&entry.0))
    }

    fn insert(&self, key: String, plan: Arc<dyn ExecutionPlan>) {
        let tick = self.tick.fetch_add(1, Ordering::Relaxed);
        let mut plans = crate::lock(&self.plans);
        if plans.len() >= PLANS
            && let Some(oldest) = plans.iter().min_by_key(|(_, (_, used))| *used).map(|(k, _)| k.clone())
        {
            plans.remove(&oldest);
        }
        plans.insert(key, (plan, tick));
    }
}

/// The in-memory inputs of `plan` in plan order (pre-order, inputs left to
/// right); `None` when the plan reads anything else or cannot be told
/// apart from other plans by its text.
fn memory_leaves(plan: &LogicalPlan) -> Option<Vec<Leaf>> {
    let mut leaves = Vec::new();
    let mut cacheable = true;
    let mut nodes = 0usize;
    let _ = plan.apply(|node| {
        nodes += 1;
        match node {
            LogicalPlan::TableScan(scan) => match memory_table(scan) {
                Some(leaf) => leaves.push(leaf),
                None => cacheable = false,
            },
            LogicalPlan::Values(_) | LogicalPlan::Extension(_) => cacheable = false,
            _ => {}
        }
        Ok(if cacheable { TreeNodeRecursion::Continue } else { TreeNodeRecursion::Stop })
    });
    if !cacheable {
        return None;
    }
    // Subqueries in expressions: their plans are not in the walk above.
    let mut with_subqueries = 0usize;
    let _ = plan.apply_with_subqueries(|_| {
        with_subqueries += 1;
        Ok(TreeNodeRecursion::Continue)
    });
    (with_subqueries == nodes).then_some(leaves)
}

/// The rows of an in-memory table `scan` reads (all its partitions, in order).
fn memory_table(scan: &TableScan) -> Option<Leaf> {
    let provider = source_as_provider(&scan.source).ok()?;
    let table = provider.downcast_ref::<MemTable>()?;
    let mut batches = Vec::new();
    for partition in &table.batches {
        batches.extend(partition.try_read().ok()?.iter().cloned());
    }
    Some(Leaf { schema: table.schema(), batches })
}

/// The shape of `plan`: what a kept physical plan is found by.
fn shape(plan: &LogicalPlan, leaves: &[Leaf]) -> String {
    let mut key = plan.display_indent_schema().to_string();
    // What the text leaves out: whether a join's NULL keys match, how an
    // unnest treats NULLs.
    let _ = plan.apply(|node| {
        match node {
            LogicalPlan::Join(join) => {
                let _ = write!(key, "\n{:?}", join.null_equality);
            }
            LogicalPlan::Unnest(unnest) => {
                let _ = write!(key, "\n{:?}", unnest.options);
            }
            _ => {}
        }
        Ok(TreeNodeRecursion::Continue)
    });
    for leaf in leaves {
        let _ = write!(key, "\n{:?}", leaf.schema.fields());
    }
    key
}

/// `plan` with its in-memory inputs — every scan it has
/// ([`memory_leaves`]), `leaves` in plan order — replaced by numbered slots.
fn with_slots(plan: LogicalPlan, leaves: &[Leaf]) -> Result<LogicalPlan> {
    let mut next = 0usize;
    let plan = plan
        .transform_down(|node| match node {
            LogicalPlan::TableScan(scan) => {
                let index = next;
                next += 1;
                let leaf = leaves.get(index).ok_or_else(|| {
                    datafusion::error::DataFusionError::Internal("a step plan has more scans than inputs".into())
                })?;
                let rows = leaf.batches.iter().map(RecordBatch::num_rows).sum();
                let slot = SlotTable { index, schema: Arc::clone(&leaf.schema), rows };
                Ok(Transformed::yes(LogicalPlan::TableScan(TableScan {
                    source: provider_as_source(Arc::new(slot)),
                    ..scan
                })))
            }
            other => Ok(Transformed::no(other)),
        })?
        .data;
    Ok(plan)
}

/// `plan` (a kept physical plan) ready to run over `leaves`: each slot
/// reads its leaf's rows, every operator starts afresh.
fn bind(plan: Arc<dyn ExecutionPlan>, leaves: &[Leaf]) -> Result<Arc<dyn ExecutionPlan>> {
    if let Some(slot) = plan.downcast_ref::<SlotExec>() {
        let leaf = leaves
            .get(slot.index)
            .ok_or_else(|| crate::error::Error::internal("a kept step plan has a slot its plan lacks"))?;
        let batches = leaf.batches.clone();
        return Ok(Arc::new(SlotExec { batches, ..slot.clone() }));
    }
    let children: Vec<Arc<dyn ExecutionPlan>> =
        plan.children().into_iter().map(|child| bind(Arc::clone(child), leaves)).collect::<Result<_>>()?;
    let plan = if children.is_empty() {
        plan
    } else {
        plan.replace_children(children, ReplaceChildrenOptions::new(ChildrenPropertiesMode::Keep))?
    };
    Ok(plan.reset_state()?)
}

/// A step plan's in-memory input, numbered in plan order.
#[derive(Debug)]
struct SlotTable {
    index: usize,
    schema: SchemaRef,
    /// Rows it held when planned (an estimate for the planner).
    rows: usize,
}

#[async_trait]
impl TableProvider for SlotTable {
    fn schema(&self) -> SchemaRef {
        Arc::clone(&self.schema)
    }

    fn table_type(&self) -> TableType {
        TableType::Temporary
    }

    async fn scan(
        &self,
        _state: &dyn Session,
        projection: Option<&Vec<usize>>,
        _filters: &[Expr],
        limit: Option<usize>,
    ) -> datafusion::error::Result<Arc<dyn ExecutionPlan>> {
        let projected = match projection {
            Some(columns) => Arc::new(self.schema.project(columns)?),
            None => Arc::clone(&self.schema),
        };
        let properties = Arc::new(PlanProperties::new(
            EquivalenceProperties::new(Arc::clone(&projected)),
            Partitioning::UnknownPartitioning(1),
            EmissionType::Incremental,
            Boundedness::Bounded,
        ));
        Ok(Arc::new(SlotExec {
            index: self.index,
            projection: projection.cloned(),
            projected,
            fetch: limit,
            rows: self.rows,
            properties,
            batches: Vec::new(),
        }))
    }
}

/// Reads a slot's rows ([`SlotTable`]).
#[derive(Debug, Clone)]
struct SlotExec {
    index: usize,
    projection: Option<Vec<usize>>,
    projected: SchemaRef,
    fetch: Option<usize>,
    rows: usize,
    properties: Arc<PlanProperties>,
    batches: Vec<RecordBatch>,
}

impl DisplayAs for SlotExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "StepSlot: {}, batches={}", self.index, self.batches.len())
    }
}

impl ExecutionPlan for SlotExec {
    fn name(&self) -> &'static str {
        "StepSlot"
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

    fn fetch(&self) -> Option<usize> {
        self.fetch
    }

    fn execute(
        &self,
        _partition: usize,
        _context: Arc<TaskContext>,
    ) -> datafusion::error::Result<SendableRecordBatchStream> {
        let stream = MemoryStream::try_new(self.batches.clone(), Arc::clone(&self.projected), self.projection.clone())?
            .with_fetch(self.fetch);
        Ok(Box::pin(stream))
    }

    fn statistics_from_inputs(
        &self,
        _input_stats: &[Arc<Statistics>],
        _args: &StatisticsArgs,
    ) -> datafusion::error::Result<Arc<Statistics>> {
        // Inexact: the next step's rows are others.
        Ok(Arc::new(Statistics::new_unknown(&self.projected).with_num_rows(Precision::Inexact(self.rows))))
    }
}

#[cfg(test)]
mod tests {
    use datafusion::arrow::array::{Array, Int64Array};
    use datafusion::arrow::datatypes::{DataType, Field, Schema};
    use datafusion::datasource::provider_as_source;
    use datafusion::functions_aggregate::expr_fn::{count, sum};
    use datafusion::logical_expr::{JoinType, LogicalPlanBuilder, col, lit};

    use super::*;

    fn table(name: &str, rows: &[(i64, i64)]) -> LogicalPlan {
        let schema = Arc::new(Schema::new(vec![
            Field::new("k", DataType::Int64, false),
            Field::new("v", DataType::Int64, false),
        ]));
        let batch = RecordBatch::try_new(
            Arc::clone(&schema),
            vec![
                Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.0))),
                Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.1))),
            ],
        )
        .unwrap();
        let provider = MemTable::try_new(schema, vec![vec![batch]]).unwrap();
        LogicalPlanBuilder::scan(name, provider_as_source(Arc::new(provider)), None).unwrap().build().unwrap()
    }

    /// `count(*)`, `sum(v)` of `a` joined with `b` on `k`, where `a.v > 0`.
    fn plan(a: &[(i64, i64)], b: &[(i64, i64)]) -> LogicalPlan {
        LogicalPlanBuilder::from(table("a", a))
            .filter(col("a.v").gt(lit(0i64)))
            .unwrap()
            .join(table("b", b), JoinType::Inner, (vec!["a.k"], vec!["b.k"]), None)
            .unwrap()
            .aggregate(Vec::<Expr>::new(), vec![count(lit(1i64)).alias("n"), sum(col("b.v")).alias("s")])
            .unwrap()
            .build()
            .unwrap()
    }

    async fn run(plans: &StepPlans, ctx: &SessionContext, plan: LogicalPlan) -> (i64, Option<i64>) {
        let batches = plans.collect(ctx, plan).await.unwrap();
        let batch = datafusion::arrow::compute::concat_batches(&batches[0].schema(), &batches).unwrap();
        let n = batch.column(0).as_any().downcast_ref::<Int64Array>().unwrap().value(0);
        let s = batch.column(1).as_any().downcast_ref::<Int64Array>().unwrap();
        (n, s.is_valid(0).then(|| s.value(0)))
    }

    #[tokio::test]
    async fn a_kept_plan_runs_over_each_steps_own_rows() {
        let ctx = SessionContext::new();
        let plans = StepPlans::default();
        // Planned with a few rows (a planner trusting that count would answer 1 from statistics).
        assert_eq!(run(&plans, &ctx, plan(&[(1, 1)], &[(1, 10)])).await, (1, Some(10)));
        // The same shape: run from the kept plan, every operator afresh (the join's build side too).
        let a: Vec<(i64, i64)> = (0..1000).map(|i| (i % 7, 1 - i % 2)).collect();
        let b: Vec<(i64, i64)> = (0..7).map(|k| (k, k * 100)).collect();
        let expected_n = a.iter().filter(|r| r.1 > 0).count() as i64;
        let expected_s: i64 = a.iter().filter(|r| r.1 > 0).map(|r| r.0 * 100).sum();
        assert_eq!(run(&plans, &ctx, plan(&a, &b)).await, (expected_n, Some(expected_s)));
        assert_eq!(run(&plans, &ctx, plan(&[], &b)).await, (0, None));
        assert_eq!(run(&plans, &ctx, plan(&[(3, 1), (3, 1)], &[(3, 5)])).await, (2, Some(10)));
        assert_eq!(plans.counts(), (3, 1));
        // Another shape (another filter) is planned on its own.
        let other = LogicalPlanBuilder::from(table("a", &[(1, 1), (2, 2)]))
            .filter(col("a.v").gt(lit(1i64)))
            .unwrap()
            .join(table("b", &[(2, 7)]), JoinType::Inner, (vec!["a.k"], vec!["b.k"]), None)
            .unwrap()
            .aggregate(Vec::<Expr>::new(), vec![count(lit(1i64)).alias("n"), sum(col("b.v")).alias("s")])
            .unwrap()
            .build()
            .unwrap();
        assert_eq!(run(&plans, &ctx, other).await, (1, Some(7)));
        assert_eq!(plans.counts(), (3, 2));
    }

    /// A NULL key on both sides, joined with NULLs matching or not: the
    /// same text, two plans.
    #[tokio::test]
    async fn joins_whose_null_keys_match_are_another_shape() {
        use datafusion::common::NullEquality;
        let nullable = |name: &str| {
            let schema = Arc::new(Schema::new(vec![
                Field::new("k", DataType::Int64, true),
                Field::new("v", DataType::Int64, false),
            ]));
            let batch = RecordBatch::try_new(
                Arc::clone(&schema),
                vec![Arc::new(Int64Array::from(vec![None, Some(1)])), Arc::new(Int64Array::from(vec![5, 6]))],
            )
            .unwrap();
            let provider = MemTable::try_new(schema, vec![vec![batch]]).unwrap();
            LogicalPlanBuilder::scan(name, provider_as_source(Arc::new(provider)), None).unwrap()
        };
        let joined = |nulls: NullEquality| {
            nullable("a")
                .join_detailed(nullable("b").build().unwrap(), JoinType::Inner, (vec!["a.k"], vec!["b.k"]), None, nulls)
                .unwrap()
                .aggregate(Vec::<Expr>::new(), vec![count(lit(1i64)).alias("n"), sum(col("b.v")).alias("s")])
                .unwrap()
                .build()
                .unwrap()
        };
        let ctx = SessionContext::new();
        let plans = StepPlans::default();
        assert_eq!(run(&plans, &ctx, joined(NullEquality::NullEqualsNothing)).await, (1, Some(6)));
        assert_eq!(run(&plans, &ctx, joined(NullEquality::NullEqualsNull)).await, (2, Some(11)));
        assert_eq!(plans.counts(), (0, 2));
    }
}
