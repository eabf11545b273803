//! Subplans a query would compute more than once, computed once: a
//! common table expression referenced twice (TPC-H q15's `revenue0`: once
//! joined, once under `max`), or the same aggregation written twice.
//!
//! DataFusion inlines every reference to a CTE, so the logical plan holds
//! equal copies of it; each would read and aggregate its inputs again.
//! Before physical planning, [`Planner`] wraps every aggregation that
//! occurs more than once (equal plans over the very same table sources,
//! nothing volatile, nothing correlated) in a [`SharedNode`]; each copy
//! becomes a [`SharedExec`], and all copies of one subplan share a
//! [`Link`]. The first copy to run a partition runs it from its own
//! input and keeps the rows (accounted in the query's memory pool); the
//! other copies replay them. A partition's rows are let go once every
//! copy has taken them. Postgres materializes a CTE referenced more than
//! once the same way, so `random()` in one is drawn once per row either
//! way; a volatile subplan is never shared.
//!
//! Only MPP plans share: BSP cuts plans into stages whose tasks run (and
//! are retried) apart, and distributed plans run their parts on workers,
//! so those sessions carry [`Unshared`]. A plan whose state is reset to run
//! again (recursive CTEs, kept view steps) gets links of its own per copy:
//! correct, only not shared.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, Mutex, OnceLock};

use datafusion::arrow::record_batch::RecordBatch;
use datafusion::catalog::Session;
use datafusion::common::tree_node::{Transformed, TransformedResult, TreeNode, TreeNodeRecursion};
use datafusion::common::{DFSchemaRef, Statistics};
use datafusion::error::{DataFusionError, Result};
use datafusion::execution::context::QueryPlanner;
use datafusion::execution::memory_pool::{MemoryConsumer, MemoryReservation};
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::logical_expr::physical_planning_context::PhysicalPlanningContext;
use datafusion::logical_expr::{Expr, Extension, LogicalPlan, UserDefinedLogicalNode, UserDefinedLogicalNodeCore};
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_plan::execution_plan::EmissionType;
use datafusion::physical_plan::statistics::ChildStats;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    ChildrenPropertiesMode, DisplayAs, DisplayFormatType, ExecutionPlan, ExecutionPlanProperties, PlanProperties,
    ReplaceChildrenOptions, StatisticsArgs, displayable,
};
use datafusion::physical_planner::{DefaultPhysicalPlanner, ExtensionPlanner, PhysicalPlanner};
use futures::future::{BoxFuture, FutureExt, Shared};
use futures::{StreamExt, TryStreamExt};

/// In a session's config: plan nothing shared (BSP and distributed plans).
#[derive(Debug, Default)]
pub struct Unshared;

/// DataFusion's physical planner, after wrapping repeated subplans in
/// [`SharedNode`]s (unless the session carries [`Unshared`]).
#[derive(Debug, Default)]
pub struct Planner;

#[async_trait::async_trait]
impl QueryPlanner for Planner {
    async fn create_physical_plan(
        &self,
        logical_plan: &LogicalPlan,
        session_state: &dyn Session,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let shared = match session_state.config().get_extension::<Unshared>() {
            Some(_) => None,
            None => share_repeated(logical_plan)?,
        };
        // Links live as long as this one planning: a plan planned again shares nothing with the last.
        let planner = DefaultPhysicalPlanner::with_extension_planners(vec![Arc::new(Links::default())]);
        planner.create_physical_plan(shared.as_ref().unwrap_or(logical_plan), session_state).await
    }
}

/// A subplan's identity: its plan, and the table sources it reads (a
/// table scan's equality leaves its source out; two scans of one name
/// in one statement resolve to one source).
struct Key {
    plan: LogicalPlan,
    sources: Vec<usize>,
}

impl Key {
    fn of(plan: &LogicalPlan) -> Self {
        let mut sources = Vec::new();
        let _ = plan.apply_with_subqueries(|node| {
            if let LogicalPlan::TableScan(scan) = node {
                sources.push(Arc::as_ptr(&scan.source).cast::<()>() as usize);
            }
            Ok(TreeNodeRecursion::Continue)
        });
        Self { plan: plan.clone(), sources }
    }
}

impl PartialEq for Key {
    fn eq(&self, other: &Self) -> bool {
        self.sources == other.sources && self.plan == other.plan
    }
}

impl Eq for Key {}

impl Hash for Key {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.sources.hash(state);
        self.plan.hash(state);
    }
}

/// Whether `plan` may be computed once for all its occurrences: an
/// aggregation with nothing volatile or correlated in it, and nothing whose
/// rows depend on where it is planned (extension nodes, recursion).
fn shareable(plan: &LogicalPlan) -> bool {
    if !matches!(plan, LogicalPlan::Aggregate(_)) {
        return false;
    }
    let mut ok = true;
    let _ = plan.apply_with_subqueries(|node| {
        let plain = !matches!(node, LogicalPlan::Extension(_) | LogicalPlan::RecursiveQuery(_))
            && node.expressions().iter().all(|e| !e.is_volatile() && !e.contains_outer() && !has_placeholder(e));
        ok &= plain;
        Ok(if plain { TreeNodeRecursion::Continue } else { TreeNodeRecursion::Stop })
    });
    ok
}

fn has_placeholder(expr: &Expr) -> bool {
    expr.exists(|e| Ok(matches!(e, Expr::Placeholder(_)))).unwrap_or(true)
}

/// `plan` with every aggregation that occurs in it more than once wrapped
/// in a [`SharedNode`] (the outermost of nested ones); `None`: there is none.
pub fn share_repeated(plan: &LogicalPlan) -> Result<Option<LogicalPlan>> {
    let mut recursive = false;
    let mut counts: HashMap<Key, usize> = HashMap::new();
    plan.apply_with_subqueries(|node| {
        recursive |= matches!(node, LogicalPlan::RecursiveQuery(_));
        if shareable(node) {
            *counts.entry(Key::of(node)).or_default() += 1;
        }
        Ok(TreeNodeRecursion::Continue)
    })?;
    counts.retain(|_, n| *n > 1);
    if recursive || counts.is_empty() {
        return Ok(None);
    }
    let mut ids: HashMap<Key, usize> = HashMap::new();
    let shared = plan.clone().transform_down_with_subqueries(|node| {
        if !matches!(node, LogicalPlan::Aggregate(_)) {
            return Ok(Transformed::no(node));
        }
        let key = Key::of(&node);
        if !counts.contains_key(&key) {
            return Ok(Transformed::no(node));
        }
        let next = ids.len();
        let id = *ids.entry(key).or_insert(next);
        let wrapped = LogicalPlan::Extension(Extension { node: Arc::new(SharedNode { id, input: node }) });
        Ok(Transformed::new(wrapped, true, TreeNodeRecursion::Jump))
    })?;
    Ok(Some(shared.data))
}

/// A subplan other parts of the plan compute too (`id` names it in this plan).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd)]
pub struct SharedNode {
    id: usize,
    input: LogicalPlan,
}

impl UserDefinedLogicalNodeCore for SharedNode {
    fn name(&self) -> &str {
        "Shared"
    }

    fn inputs(&self) -> Vec<&LogicalPlan> {
        vec![&self.input]
    }

    fn schema(&self) -> &DFSchemaRef {
        self.input.schema()
    }

    fn expressions(&self) -> Vec<Expr> {
        Vec::new()
    }

    fn fmt_for_explain(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        write!(f, "Shared: id={}", self.id)
    }

    fn with_exprs_and_inputs(&self, _exprs: Vec<Expr>, mut inputs: Vec<LogicalPlan>) -> Result<Self> {
        let input = inputs.pop().ok_or_else(|| DataFusionError::Internal("Shared takes one input".into()))?;
        Ok(Self { id: self.id, input })
    }
}

/// Plans [`SharedNode`]s: the copies of one subplan get one [`Link`].
#[derive(Debug, Default)]
struct Links(Mutex<HashMap<usize, Arc<Link>>>);

#[async_trait::async_trait]
impl ExtensionPlanner for Links {
    async fn plan_extension(
        &self,
        _planner: &dyn PhysicalPlanner,
        node: &dyn UserDefinedLogicalNode,
        _logical_inputs: &[&LogicalPlan],
        physical_inputs: &[Arc<dyn ExecutionPlan>],
        _session_state: &dyn Session,
        _planning: &PhysicalPlanningContext,
    ) -> Result<Option<Arc<dyn ExecutionPlan>>> {
        let Some(node) = node.as_any().downcast_ref::<SharedNode>() else { return Ok(None) };
        let [input] = physical_inputs else {
            return Err(DataFusionError::Internal("Shared takes one input".into()));
        };
        // An unbounded input never ends: nothing to keep.
        if input.properties().boundedness.is_unbounded() {
            return Ok(Some(Arc::clone(input)));
        }
        let link = {
            let mut links = self.0.lock().map_err(|_| DataFusionError::Internal("shared links poisoned".into()))?;
            Arc::clone(links.entry(node.id).or_default())
        };
        link.join();
        Ok(Some(Arc::new(SharedExec::new(Arc::clone(input), link))))
    }
}

type Kept = std::result::Result<Arc<Rows>, Arc<DataFusionError>>;

/// A partition's rows, with the memory they hold.
struct Rows {
    batches: Vec<RecordBatch>,
    _reservation: MemoryReservation,
}

/// What the copies of one subplan share.
#[derive(Default)]
struct Link {
    /// How many copies the plan has.
    copies: std::sync::atomic::AtomicUsize,
    run: Mutex<Option<Run>>,
}

impl std::fmt::Debug for Link {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Link").field("copies", &self.copies).finish_non_exhaustive()
    }
}

impl Link {
    fn join(&self) {
        self.copies.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
}

/// The copy whose input runs, and each partition's rows.
struct Run {
    input: Arc<dyn ExecutionPlan>,
    shape: String,
    partitions: Vec<Partition>,
}

enum Partition {
    Idle,
    /// Running or run, and how many copies took it.
    Kept(Shared<BoxFuture<'static, Kept>>, usize),
    /// Every copy took it.
    Done,
}

/// One copy of a shared subplan ([`SharedNode`]).
#[derive(Debug)]
pub struct SharedExec {
    input: Arc<dyn ExecutionPlan>,
    link: Arc<Link>,
    /// The input's plan, to tell whether the running copy's matches it.
    shape: OnceLock<String>,
    properties: Arc<PlanProperties>,
}

impl SharedExec {
    fn new(input: Arc<dyn ExecutionPlan>, link: Arc<Link>) -> Self {
        let properties = PlanProperties::clone(input.properties()).with_emission_type(EmissionType::Final);
        Self { input, link, shape: OnceLock::new(), properties: Arc::new(properties) }
    }

    fn shape(&self) -> &str {
        self.shape.get_or_init(|| shape(&self.input))
    }

    /// The rows of `partition`, run by this copy's input or taken from the copy that ran it.
    fn kept(&self, partition: usize, context: &Arc<TaskContext>) -> Result<Option<Shared<BoxFuture<'static, Kept>>>> {
        let poisoned = || DataFusionError::Internal("shared subplan poisoned".into());
        let mut run = self.link.run.lock().map_err(|_| poisoned())?;
        let run = run.get_or_insert_with(|| Run {
            input: Arc::clone(&self.input),
            shape: self.shape().to_string(),
            partitions: (0..self.input.output_partitioning().partition_count()).map(|_| Partition::Idle).collect(),
        });
        // Copies planned alike run alike; one optimized otherwise runs its own input.
        let alike = Arc::ptr_eq(&run.input, &self.input)
            || (run.partitions.len() == self.input.output_partitioning().partition_count()
                && run.input.schema() == self.input.schema()
                && run.shape == self.shape());
        if !alike {
            return Ok(None);
        }
        let copies = self.link.copies.load(std::sync::atomic::Ordering::Relaxed);
        let slot = run
            .partitions
            .get_mut(partition)
            .ok_or_else(|| DataFusionError::Internal(format!("shared subplan has no partition {partition}")))?;
        let (rows, taken) = match std::mem::replace(slot, Partition::Done) {
            Partition::Idle => {
                let stream = run.input.execute(partition, Arc::clone(context))?;
                let reservation =
                    MemoryConsumer::new(format!("SharedExec[{partition}]")).register(context.memory_pool());
                (keep(stream, reservation).boxed().shared(), 1)
            }
            Partition::Kept(rows, taken) => (rows, taken + 1),
            Partition::Done => {
                return Err(DataFusionError::Internal(format!(
                    "shared subplan's partition {partition} asked for by more copies than the plan has"
                )));
            }
        };
        if taken < copies {
            *slot = Partition::Kept(rows.clone(), taken);
        }
        Ok(Some(rows))
    }
}

/// `plan` with every shared subplan computed by each of its uses.
pub fn unshare(plan: Arc<dyn ExecutionPlan>) -> Result<Arc<dyn ExecutionPlan>> {
    plan.transform_up(|node| {
        Ok(match node.downcast_ref::<SharedExec>() {
            Some(shared) => Transformed::yes(Arc::clone(&shared.input)),
            None => Transformed::no(node),
        })
    })
    .data()
}

fn shape(plan: &Arc<dyn ExecutionPlan>) -> String {
    displayable(plan.as_ref()).indent(true).to_string()
}

/// Every row of `stream`, accounted in `reservation`.
async fn keep(mut stream: SendableRecordBatchStream, reservation: MemoryReservation) -> Kept {
    let mut batches = Vec::new();
    while let Some(batch) = stream.try_next().await.map_err(Arc::new)? {
        reservation.try_grow(batch.get_array_memory_size()).map_err(Arc::new)?;
        batches.push(batch);
    }
    Ok(Arc::new(Rows { batches, _reservation: reservation }))
}

impl DisplayAs for SharedExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let copies = self.link.copies.load(std::sync::atomic::Ordering::Relaxed);
        write!(f, "SharedExec: computed once for {copies} uses")
    }
}

impl ExecutionPlan for SharedExec {
    fn name(&self) -> &'static str {
        "SharedExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![&self.input]
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> Result<TreeNodeRecursion>,
    ) -> Result<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    fn maintains_input_order(&self) -> Vec<bool> {
        vec![true]
    }

    fn benefits_from_input_partitioning(&self) -> Vec<bool> {
        vec![false]
    }

    fn replace_children(
        self: Arc<Self>,
        mut children: Vec<Arc<dyn ExecutionPlan>>,
        _options: ReplaceChildrenOptions,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let input = children.pop().ok_or_else(|| DataFusionError::Internal("SharedExec takes one input".into()))?;
        // The same link: optimizer rules rebuild nodes of one plan.
        Ok(Arc::new(Self::new(input, Arc::clone(&self.link))))
    }

    #[allow(deprecated)]
    fn with_new_children(self: Arc<Self>, children: Vec<Arc<dyn ExecutionPlan>>) -> Result<Arc<dyn ExecutionPlan>> {
        self.replace_children(children, ReplaceChildrenOptions::new(ChildrenPropertiesMode::Recompute))
    }

    /// A plan run again: this copy runs its own input, shared with no other.
    fn reset_state(self: Arc<Self>) -> Result<Arc<dyn ExecutionPlan>> {
        let link = Arc::new(Link::default());
        link.join();
        Ok(Arc::new(Self::new(Arc::clone(&self.input), link)))
    }

    fn child_stats_requests(&self, partition: Option<usize>) -> Vec<ChildStats> {
        vec![ChildStats::At(partition)]
    }

    fn statistics_from_inputs(
        &self,
        input_stats: &[Arc<Statistics>],
        _args: &StatisticsArgs,
    ) -> Result<Arc<Statistics>> {
        Ok(match input_stats.first() {
            Some(stats) => Arc::clone(stats),
            None => Arc::new(Statistics::new_unknown(&self.schema())),
        })
    }

    fn execute(&self, partition: usize, context: Arc<TaskContext>) -> Result<SendableRecordBatchStream> {
        let Some(rows) = self.kept(partition, &context)? else {
            return self.input.execute(partition, context);
        };
        let stream = futures::stream::once(rows)
            .map(|kept| match kept {
                Ok(rows) => {
                    futures::stream::iter((0..rows.batches.len()).map(move |i| Ok(rows.batches[i].clone()))).boxed()
                }
                Err(e) => futures::stream::once(async move { Err(DataFusionError::Shared(e)) }).boxed(),
            })
            .flatten();
        Ok(Box::pin(RecordBatchStreamAdapter::new(self.schema(), stream)))
    }
}
