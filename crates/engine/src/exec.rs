//! Execution modes: every query runs either **MPP** (DataFusion's
//! pipelined, partitioned execution: all operators at once, in memory) or
//! **BSP** (the plan cut into stages at its exchanges, stage by stage, each
//! stage's output written to the spill store and read by the next: bounded
//! memory, failed tasks retried; see [`bsp`] and [`stage`]).
//!
//! `execution_mode = auto` (the default) chooses before running, from the
//! plan's statistics: when the operators that cannot spill (hash join build
//! sides, cross and nested-loop joins, window buffers) are estimated to need
//! more than [`BSP_SHARE`] of the query's memory limit, BSP; otherwise MPP.
//! An MPP query that runs out of memory (or, when `bsp_after_ms` is set,
//! produces no row in time) before its first row reached the client runs
//! again in BSP, on the same table snapshots; the rows it produced before
//! the switch are held back until the choice is final, so the client never
//! sees the switch.
//!
//! BSP plans with more partitions than MPP, so that each task's share of a
//! join's build side fits the memory the concurrently running tasks have.

pub mod bsp;
pub mod distributed;
pub mod filters;
pub mod joins;
pub mod shared;
pub mod stage;
pub mod task;

use std::sync::Arc;
use std::time::Duration;

use datafusion::arrow::datatypes::{DataType, Schema};
use datafusion::common::stats::Precision;
use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
use datafusion::error::DataFusionError;
use datafusion::execution::memory_pool::{MemoryLimit, MemoryPool};
use datafusion::execution::{SendableRecordBatchStream, SessionState, SessionStateBuilder, TaskContext};
use datafusion::logical_expr::LogicalPlan;
use datafusion::physical_plan::aggregates::{AggregateExec, AggregateMode};
use datafusion::physical_plan::joins::{CrossJoinExec, HashJoinExec, NestedLoopJoinExec};
use datafusion::physical_plan::sorts::sort::SortExec;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::windows::WindowAggExec;
use datafusion::physical_plan::{ExecutionPlan, StatisticsArgs, StatisticsContext, execute_stream};
use futures::StreamExt;

use crate::config::ExecutionMode;
use crate::error::Result;
use bsp::{BspOptions, BspRun};

/// AUTO picks BSP when unspillable operators need more than this share of the memory limit.
pub const BSP_SHARE: f64 = 0.7;

/// Per-row bookkeeping of a hash table entry, on top of the row itself.
const HASH_ENTRY_BYTES: u64 = 24;

/// Most partitions a BSP plan is given.
const MAX_BSP_PARTITIONS: usize = 128;

/// How a query runs, once decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Mpp,
    Bsp,
    /// MPP across workers ([`distributed`]).
    Distributed,
    /// BSP with its stage tasks on workers, stage files on the shared store.
    DistributedBsp,
}

impl Mode {
    /// `mpp` or `bsp`.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Mpp => "mpp",
            Mode::Bsp => "bsp",
            Mode::Distributed => "distributed",
            Mode::DistributedBsp => "distributed_bsp",
        }
    }
}

/// A query about to run, with what its session allows.
pub(crate) struct Query {
    pub state: SessionState,
    pub logical: LogicalPlan,
    /// With the query's own memory pool.
    pub task: Arc<TaskContext>,
    pub requested: ExecutionMode,
    pub options: BspOptions,
    pub bsp_after: Option<Duration>,
    /// Who records the query (`sys.queries`; `None` for EXPLAIN, which does not run it).
    pub record: Option<Arc<dyn QueryObserver>>,
}

/// What execution reports about a running query to whoever records it
/// (the query log of `sys.queries`), so execution depends on no recorder.
pub trait QueryObserver: Send + Sync {
    /// How the query runs (`mpp` or `bsp`) and why.
    fn set_mode(&self, mode: &'static str, reason: String);
    /// The stages of its BSP run, as they progress.
    fn set_run(&self, run: Arc<bsp::BspRun>);
}

/// The chosen mode, why, and the plan to run.
pub(crate) struct Planned {
    pub mode: Mode,
    pub reason: String,
    /// The MPP plan, or the cut BSP plan.
    pub plan: Arc<dyn ExecutionPlan>,
    /// The MPP plan (its scans fix the snapshots a re-plan reads).
    mpp: Arc<dyn ExecutionPlan>,
    estimate: Estimate,
    /// Whether the plan can run in stages at all.
    stageable: bool,
    /// Partitions of the BSP plan.
    partitions: usize,
    /// A distributed plan's task context (its session's distribution settings, the query's memory).
    distributed: Option<Arc<TaskContext>>,
}

impl Planned {
    /// Whether the plan is cut in stages (run here or on workers).
    pub fn staged(&self) -> bool {
        matches!(self.mode, Mode::Bsp | Mode::DistributedBsp)
    }
}

/// A running query.
pub(crate) struct Running {
    pub stream: SendableRecordBatchStream,
    /// The plan that produces the rows (the final stage in BSP).
    pub plan: Arc<dyn ExecutionPlan>,
    pub mode: Mode,
    /// Why it runs in this mode (it may have switched).
    pub reason: String,
    pub bsp: Option<Arc<BspRun>>,
}

/// Runs work that no session asks for (the refreshes of materialized
/// views) as a session runs a query: MPP or BSP chosen automatically, in a
/// memory pool of its own.
#[derive(Debug, Clone)]
pub struct BatchRunner {
    options: BspOptions,
    bsp_after: Option<Duration>,
}

impl BatchRunner {
    pub(crate) fn new(options: BspOptions, bsp_after: Option<Duration>) -> Self {
        Self { options, bsp_after }
    }
}

#[async_trait::async_trait]
impl crate::catalog::BatchQueries for BatchRunner {
    async fn run(
        &self,
        state: SessionState,
        plan: LogicalPlan,
        limit: Option<usize>,
    ) -> Result<(SendableRecordBatchStream, String)> {
        let (query, _pool) = Query::new(state, plan, limit, ExecutionMode::Auto, self.options.clone(), self.bsp_after);
        let planned = query.plan().await?;
        let running = query.run(planned).await?;
        Ok((running.stream, format!("{}: {}", running.mode.as_str(), running.reason)))
    }
}

/// Most times a BSP query is planned again with more partitions after a task ran out of memory.
const BSP_REPLANS: usize = 2;

/// Most times a distributed query is planned again after a worker failed before its first row.
const DISTRIBUTED_REPLANS: usize = 2;

impl Query {
    /// `logical`, to plan in `state` and run in a memory pool of its own of
    /// `limit` bytes (`None`: as much as the engine has): the query, and its pool.
    pub(crate) fn new(
        state: SessionState,
        logical: LogicalPlan,
        limit: Option<usize>,
        requested: ExecutionMode,
        options: BspOptions,
        bsp_after: Option<Duration>,
    ) -> (Self, Arc<crate::memory::QueryPool>) {
        let engine = state.runtime_env();
        let mut runtime = (**engine).clone();
        let pool = Arc::new(crate::memory::QueryPool::new(limit, &engine.memory_pool));
        runtime.memory_pool = Arc::clone(&pool) as _;
        let budget = budget(pool.as_ref(), engine.memory_pool.as_ref());
        let mut task = TaskContext::from(&state).with_runtime(Arc::new(runtime));
        if let Some(budget) = budget {
            // Each sort partition reserves this up front for its merge: a small limit must not be
            // spent on reservations before anything runs.
            let mut config = state.config().clone();
            let partitions = config.target_partitions().max(1);
            let execution = &mut config.options_mut().execution;
            execution.sort_spill_reservation_bytes =
                execution.sort_spill_reservation_bytes.min(budget / (4 * partitions));
            task = task.with_session_config(config);
        }
        let query = Self { state, logical, task: Arc::new(task), requested, options, bsp_after, record: None };
        (query, pool)
    }

    /// The memory the query may use: its pool's limit (the session's
    /// `memory_limit`, else the engine's).
    fn budget(&self) -> Option<usize> {
        budget(self.task.memory_pool().as_ref(), self.state.runtime_env().memory_pool.as_ref())
    }

    /// Plans the query and chooses its mode.
    pub async fn plan(&self) -> Result<Planned> {
        let mpp = self.state.create_physical_plan(&self.logical).await?;
        let budget = self.budget();
        // Without a memory limit, nothing depends on the estimate: MPP, or BSP with MPP's partitions.
        let estimate = if budget.is_some() { Estimate::of(&mpp) } else { Estimate::default() };
        let unstageable = stage::uncuttable(&mpp);
        let (mode, reason) = match (self.requested, &unstageable) {
            (ExecutionMode::Mpp, _) => (Mode::Mpp, "execution_mode is mpp".to_string()),
            (_, Some(reason)) => (Mode::Mpp, format!("MPP, because {reason}")),
            (ExecutionMode::Bsp, None) => (Mode::Bsp, "execution_mode is bsp".to_string()),
            (ExecutionMode::Auto, None) => estimate.choose(budget),
        };
        let stageable = unstageable.is_none();
        let mut planned = Planned {
            mode,
            reason,
            plan: Arc::clone(&mpp),
            mpp,
            estimate,
            stageable,
            partitions: 0,
            distributed: None,
        };
        if mode != Mode::Bsp {
            self.to_distributed(&mut planned).await?;
            return Ok(planned);
        }
        match self.options.distribution.as_ref().map(|d| (d, d.consider(&planned.mpp))) {
            Some((distribution, Ok(why))) => {
                // Across the workers' memory, MPP may fit where one machine's did not.
                let live = distribution.cluster.live().len();
                if self.requested == ExecutionMode::Auto && planned.estimate.fits(budget, live) {
                    let first = std::mem::take(&mut planned.reason);
                    self.to_distributed(&mut planned).await?;
                    if planned.mode == Mode::Distributed {
                        planned.reason = format!("{}; {first}, but within {live} workers' memory", planned.reason);
                    } else {
                        planned.reason = first;
                        self.to_bsp(&mut planned, None, None, false).await?;
                    }
                } else {
                    let why = format!("distributed BSP, because {}; {why}", planned.reason);
                    self.to_bsp(&mut planned, Some(why), None, true).await?;
                }
            }
            Some((distribution, Err(why_not))) => {
                if distribution.mode != crate::config::DistributedMode::Off {
                    planned.reason.push_str(&format!("; not distributed: {why_not}"));
                }
                self.to_bsp(&mut planned, None, None, false).await?;
            }
            None => self.to_bsp(&mut planned, None, None, false).await?,
        }
        Ok(planned)
    }

    /// Plans an MPP query again across the workers when distribution
    /// applies ([`distributed::Distribution::consider`]), on the snapshots the
    /// local plan reads; says why not in the reason otherwise.
    async fn to_distributed(&self, planned: &mut Planned) -> Result<()> {
        let Some(distribution) = &self.options.distribution else { return Ok(()) };
        let why = match distribution.consider(&planned.mpp) {
            Ok(why) => why,
            Err(why_not) => {
                if distribution.mode != crate::config::DistributedMode::Off {
                    planned.reason.push_str(&format!("; not distributed: {why_not}"));
                }
                return Ok(());
            }
        };
        let config = self.options.pinning.pin(&planned.mpp, self.state.config().clone());
        let pinned = SessionStateBuilder::new_from_existing(self.state.clone()).with_config(config).build();
        let state = distribution.state(&pinned)?;
        let plan = state.create_physical_plan(&self.logical).await?;
        if !distributed::is_distributed(&plan) {
            planned.reason.push_str("; not distributed: no part of the plan is worth running on workers");
            return Ok(());
        }
        let task = TaskContext::from(&state).with_runtime(self.task.runtime_env());
        planned.distributed = Some(Arc::new(task));
        planned.plan = plan;
        planned.mode = Mode::Distributed;
        planned.reason = format!("distributed MPP, because {why}");
        Ok(())
    }

    /// Re-plans a stageable query for BSP, reading the snapshots the MPP
    /// plan reads; with `partitions`, or as many as the estimate says.
    /// With `remote`, its stage tasks run on the workers (distributed BSP):
    /// at least `target_partitions` tasks per worker up, stage files on the
    /// shared store.
    async fn to_bsp(
        &self,
        planned: &mut Planned,
        why: Option<String>,
        partitions: Option<usize>,
        remote: bool,
    ) -> Result<()> {
        let distribution = self.options.distribution.as_ref().filter(|_| remote);
        let workers = distribution.map_or(1, |d| d.cluster.live().len().max(1));
        let partitions = partitions.unwrap_or_else(|| {
            planned.estimate.bsp_partitions(
                self.budget(),
                self.options.concurrency * workers,
                self.state.config().target_partitions() * workers,
            )
        });
        planned.partitions = partitions;
        let mut config = self.state.config().clone();
        {
            let options = config.options_mut();
            // Every task of a stage may not run at once: no filter may wait for all of them.
            options.set("datafusion.optimizer.enable_dynamic_filter_pushdown", "false")?;
            options.set("datafusion.optimizer.enable_round_robin_repartition", "false")?;
            // Partitioned joins, so each task builds a slice of the build side.
            options.set("datafusion.optimizer.hash_join_single_partition_threshold", "0")?;
            options.set("datafusion.optimizer.hash_join_single_partition_threshold_rows", "0")?;
            options.execution.target_partitions = partitions;
        }
        // Stages run apart: a subplan used twice runs twice.
        let config = self.options.pinning.pin(&planned.mpp, config).with_extension(Arc::new(shared::Unshared));
        let state = SessionStateBuilder::new_from_existing(self.state.clone()).with_config(config).build();
        let plan = state.create_physical_plan(&self.logical).await?;
        match distribution {
            Some(distribution) => {
                planned.plan = stage::cut(plan, &distribution.store)?;
                let task = TaskContext::from(&distribution.state(&state)?).with_runtime(self.task.runtime_env());
                planned.distributed = Some(Arc::new(task));
                planned.mode = Mode::DistributedBsp;
            }
            None => {
                planned.plan = stage::cut(plan, &self.options.store)?;
                planned.distributed = None;
                planned.mode = Mode::Bsp;
            }
        }
        if let Some(why) = why {
            planned.reason = why;
        }
        planned.reason.push_str(&format!(" ({partitions} partitions)"));
        Ok(())
    }

    fn note_mode(&self, planned: &Planned) {
        if let Some(record) = &self.record {
            record.set_mode(planned.mode.as_str(), planned.reason.clone());
        }
    }

    /// Runs the planned query.
    pub async fn run(&self, mut planned: Planned) -> Result<Running> {
        self.note_mode(&planned);
        match planned.mode {
            Mode::Bsp | Mode::DistributedBsp => self.run_bsp(planned).await,
            Mode::Distributed => self.run_distributed(planned).await,
            Mode::Mpp if self.requested != ExecutionMode::Auto || !planned.stageable => {
                let stream = execute_stream(Arc::clone(&planned.plan), Arc::clone(&self.task))?;
                Ok(Running { stream, plan: planned.plan, mode: Mode::Mpp, reason: planned.reason, bsp: None })
            }
            Mode::Mpp => {
                let plan = Arc::clone(&planned.plan);
                match self.first_rows(&plan).await? {
                    Ok(stream) => Ok(Running { stream, plan, mode: Mode::Mpp, reason: planned.reason, bsp: None }),
                    Err(why) => {
                        tracing::info!(%why, "switching to BSP");
                        self.to_bsp(&mut planned, Some(why), None, false).await?;
                        self.note_mode(&planned);
                        self.run_bsp(planned).await
                    }
                }
            }
        }
    }

    /// Runs a distributed plan. A worker that cannot be reached or goes away
    /// before the first row reached the client is marked lost and the query
    /// planned again on the others (or locally, when none is left), at most
    /// [`DISTRIBUTED_REPLANS`] times; after the first row, the query fails
    /// with 40001 (serialization_failure: retry the statement), never with
    /// rows missing.
    async fn run_distributed(&self, mut planned: Planned) -> Result<Running> {
        let mut replans = 0;
        loop {
            let task = planned.distributed.clone().unwrap_or_else(|| Arc::clone(&self.task));
            let plan = Arc::clone(&planned.plan);
            let attempt = async {
                let mut stream = execute_stream(Arc::clone(&plan), task)?;
                let mut held = Vec::new();
                while let Some(next) = stream.next().await {
                    let batch = next?;
                    let rows = batch.num_rows();
                    held.push(Ok(batch));
                    if rows > 0 {
                        break;
                    }
                }
                Ok::<_, DataFusionError>((stream, held))
            }
            .await;
            match attempt {
                Ok((stream, held)) => {
                    let schema = stream.schema();
                    let rest = stream.map(|next| next.map_err(distributed::retriable));
                    let stream =
                        Box::pin(RecordBatchStreamAdapter::new(schema, futures::stream::iter(held).chain(rest)));
                    return Ok(Running { stream, plan, mode: planned.mode, reason: planned.reason, bsp: None });
                }
                Err(e) if matches!(e.find_root(), DataFusionError::ResourcesExhausted(_)) && planned.stageable => {
                    let why = format!(
                        "distributed BSP, because distributed MPP ran out of memory before the first row ({})",
                        short(&crate::error::describe(&e))
                    );
                    tracing::info!(%why, "switching to distributed BSP");
                    self.to_bsp(&mut planned, Some(why), None, true).await?;
                    self.note_mode(&planned);
                    return self.run_bsp(planned).await;
                }
                Err(e) => {
                    let Some(worker) = distributed::worker_failure(&e) else { return Err(e.into()) };
                    if replans >= DISTRIBUTED_REPLANS {
                        return Err(distributed::retriable(e).into());
                    }
                    replans += 1;
                    let lost = match (&worker, &self.options.distribution) {
                        (Some(url), Some(distribution)) => {
                            distribution.cluster.suspect(url, &crate::error::describe(&e));
                            url.to_string()
                        }
                        _ => "a worker".to_string(),
                    };
                    tracing::info!(%lost, "a worker failed before the first row; planning the query again");
                    let why = format!("{} failed before the first row", lost);
                    planned.plan = Arc::clone(&planned.mpp);
                    planned.mode = Mode::Mpp;
                    planned.distributed = None;
                    planned.reason = format!("MPP, because {why}");
                    self.to_distributed(&mut planned).await?;
                    if planned.mode == Mode::Distributed {
                        planned.reason.push_str(&format!(" (planned again: {why})"));
                    }
                    self.note_mode(&planned);
                    if planned.mode != Mode::Distributed {
                        let stream = execute_stream(Arc::clone(&planned.plan), Arc::clone(&self.task))?;
                        return Ok(Running {
                            stream,
                            plan: planned.plan,
                            mode: Mode::Mpp,
                            reason: planned.reason,
                            bsp: None,
                        });
                    }
                }
            }
        }
    }

    /// Runs a BSP plan; when a task runs out of memory even alone, plans
    /// again with four times the partitions (each task's share of a join's
    /// build side a quarter), up to [`BSP_REPLANS`] times. Nothing has
    /// reached the client before the final stage, so this is invisible to it.
    async fn run_bsp(&self, mut planned: Planned) -> Result<Running> {
        let mut replans = 0;
        loop {
            match self.run_stages(&planned).await {
                Ok(running) => return Ok(running),
                Err(e)
                    if matches!(e.find_root(), DataFusionError::ResourcesExhausted(_))
                        && replans < BSP_REPLANS
                        && planned.partitions < MAX_BSP_PARTITIONS =>
                {
                    replans += 1;
                    let more = (planned.partitions * 4).min(MAX_BSP_PARTITIONS);
                    let reason = planned.reason.clone();
                    let why = format!("{reason}; a task ran out of memory with {} partitions", planned.partitions);
                    tracing::info!(%why, more, "planning the query again with more partitions");
                    let remote = planned.mode == Mode::DistributedBsp;
                    self.to_bsp(&mut planned, Some(why), Some(more), remote).await?;
                    self.note_mode(&planned);
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// Runs a stageable `plan` in MPP until its first row: `Ok(stream)`
    /// replays what was held back, then the rest; `Err(why)` when it ran
    /// out of memory (or time) first and should run in BSP.
    async fn first_rows(
        &self,
        plan: &Arc<dyn ExecutionPlan>,
    ) -> Result<std::result::Result<SendableRecordBatchStream, String>> {
        let mut stream = execute_stream(Arc::clone(plan), Arc::clone(&self.task))?;
        let deadline = self.bsp_after.map(|d| tokio::time::Instant::now() + d);
        let mut held = Vec::new();
        loop {
            let next = match deadline {
                Some(deadline) => match tokio::time::timeout_at(deadline, stream.next()).await {
                    Ok(next) => next,
                    Err(_) => {
                        let ms = self.bsp_after.map_or(0, |d| d.as_millis());
                        return Ok(Err(format!("MPP produced no row within bsp_after_ms ({ms} ms)")));
                    }
                },
                None => stream.next().await,
            };
            match next {
                Some(Ok(batch)) => {
                    let rows = batch.num_rows();
                    held.push(Ok(batch));
                    if rows > 0 {
                        break;
                    }
                }
                None => break,
                Some(Err(e)) if matches!(e.find_root(), DataFusionError::ResourcesExhausted(_)) => {
                    let why =
                        format!("MPP ran out of memory before the first row ({})", short(&crate::error::describe(&e)));
                    return Ok(Err(why));
                }
                Some(Err(e)) => return Err(e.into()),
            }
        }
        let schema = stream.schema();
        let replay = futures::stream::iter(held).chain(stream);
        Ok(Ok(Box::pin(RecordBatchStreamAdapter::new(schema, replay))))
    }

    /// Runs every stage of a BSP plan, then starts its final stage.
    async fn run_stages(&self, planned: &Planned) -> std::result::Result<Running, DataFusionError> {
        let run = match (planned.mode, &self.options.distribution, &planned.distributed) {
            (Mode::DistributedBsp, Some(distribution), Some(task)) => {
                let options = BspOptions { store: Arc::clone(&distribution.store), ..self.options.clone() };
                let remote = bsp::Remote { cluster: Arc::clone(&distribution.cluster), task: Arc::clone(task) };
                Arc::new(BspRun::with_remote(options, Some(remote), &distribution.spill_prefix))
            }
            _ => Arc::new(BspRun::new(self.options.clone())),
        };
        if let Some(record) = &self.record {
            record.set_run(Arc::clone(&run));
        }
        // Dropped when the query is cancelled while its stages run.
        let guard = run.cleanup_guard();
        if let Err(e) = run.run(&planned.plan, &self.task).await {
            run.cleanup().await;
            return Err(e);
        }
        let stream = match execute_stream(Arc::clone(&planned.plan), Arc::clone(&self.task)) {
            Ok(stream) => stream,
            Err(e) => {
                run.cleanup().await;
                return Err(e);
            }
        };
        let stream = BspRun::guard(guard, stream);
        let plan = Arc::clone(&planned.plan);
        Ok(Running { stream, plan, mode: planned.mode, reason: planned.reason.clone(), bsp: Some(run) })
    }
}

/// The memory a query in `query` pool may use, given the `engine` pool it draws from.
pub(crate) fn budget(query: &dyn MemoryPool, engine: &dyn MemoryPool) -> Option<usize> {
    let finite = |l: MemoryLimit| match l {
        MemoryLimit::Finite(n) => Some(n),
        _ => None,
    };
    match (finite(query.memory_limit()), finite(engine.memory_limit())) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// The first line of an error message.
fn short(message: &str) -> &str {
    message.lines().next().unwrap_or(message)
}

/// The memory a plan's operators need, from its statistics.
#[derive(Debug, Default, Clone)]
pub(crate) struct Estimate {
    /// Bytes operators that cannot spill hold at once.
    unspillable: u64,
    /// Bytes operators that spill would like to hold.
    spillable: u64,
    /// An operator whose input size is unknown.
    unknown: Option<&'static str>,
}

impl Estimate {
    fn of(plan: &Arc<dyn ExecutionPlan>) -> Self {
        let stats = StatisticsContext::new();
        let args = StatisticsArgs::new().with_partition(None);
        let mut estimate = Estimate::default();
        let mut size = |node: &Arc<dyn ExecutionPlan>, name: &'static str| -> Option<u64> {
            let rows = stats.compute(node.as_ref(), &args).ok().and_then(|s| match s.num_rows {
                Precision::Exact(n) | Precision::Inexact(n) => Some(n as u64),
                Precision::Absent => None,
            });
            if rows.is_none() && estimate.unknown.is_none() {
                estimate.unknown = Some(name);
            }
            rows.map(|rows| rows * (row_width(&node.schema()) + HASH_ENTRY_BYTES))
        };
        let mut unspillable = 0;
        let mut spillable = 0;
        let _ = plan.apply(|node| {
            if let Some(join) = node.downcast_ref::<HashJoinExec>() {
                unspillable += size(join.left(), "a hash join").unwrap_or(0);
            } else if let Some(join) = node.downcast_ref::<CrossJoinExec>() {
                unspillable += size(join.left(), "a cross join").unwrap_or(0);
            } else if let Some(join) = node.downcast_ref::<NestedLoopJoinExec>() {
                unspillable += size(join.left(), "a nested loop join").unwrap_or(0);
            } else if let Some(window) = node.downcast_ref::<WindowAggExec>() {
                unspillable += size(window.input(), "a window function").unwrap_or(0);
            } else if let Some(aggregate) = node.downcast_ref::<AggregateExec>() {
                let grouped = !aggregate.group_expr().is_empty();
                if grouped && !matches!(aggregate.mode(), AggregateMode::Partial) {
                    spillable += size(node, "an aggregation").unwrap_or(0);
                }
            } else if let Some(sort) = node.downcast_ref::<SortExec>()
                && sort.fetch().is_none()
            {
                spillable += size(sort.input(), "a sort").unwrap_or(0);
            }
            Ok(TreeNodeRecursion::Continue)
        });
        estimate.unspillable = unspillable;
        estimate.spillable = spillable;
        estimate
    }

    /// AUTO's choice for a query that may use `budget` bytes.
    fn choose(&self, budget: Option<usize>) -> (Mode, String) {
        let Some(budget) = budget else {
            return (Mode::Mpp, "no memory limit applies".to_string());
        };
        let limit = format!("the {} memory limit", bytes(budget as u64));
        if let Some(op) = self.unknown {
            return (Mode::Mpp, format!("no statistics for the input of {op}; BSP if MPP runs out of memory"));
        }
        let needed = bytes(self.unspillable);
        if self.unspillable as f64 > budget as f64 * BSP_SHARE {
            (Mode::Bsp, format!("joins and windows need about {needed} in memory, more than 70% of {limit}"))
        } else {
            let spill = match self.spillable {
                0 => String::new(),
                n => format!("; sorts and aggregations (about {}) spill within it", bytes(n)),
            };
            let held = match self.unspillable {
                0 => "no join or window holds its input in memory".to_string(),
                _ => format!("joins and windows need about {needed}"),
            };
            (Mode::Mpp, format!("{held}, within {limit}{spill}"))
        }
    }

    /// Whether MPP fits `workers` machines of `budget` each: the
    /// unspillable state, split among them by the shuffles, within
    /// [`BSP_SHARE`] of their memory together. Workers are taken to have
    /// the coordinator's memory limit (they share its configuration).
    fn fits(&self, budget: Option<usize>, workers: usize) -> bool {
        match (budget, self.unknown) {
            (None, _) => true,
            (Some(_), Some(_)) => false,
            (Some(budget), None) => self.unspillable as f64 <= budget as f64 * BSP_SHARE * workers as f64,
        }
    }

    /// Partitions for a BSP plan: enough that the tasks running at once
    /// hold at most half the budget of unspillable state.
    fn bsp_partitions(&self, budget: Option<usize>, concurrency: usize, target: usize) -> usize {
        let floor = target.max(2);
        let needed = match (budget, self.unknown) {
            (Some(budget), None) if budget > 0 => {
                let share = (budget as f64 * 0.5).max(1.0);
                ((self.unspillable as f64 * concurrency.max(1) as f64) / share).ceil() as usize
            }
            // No limit: as many as MPP has.
            (None, _) => floor,
            // Out of memory without statistics: split finely.
            _ => floor * 8,
        };
        needed.clamp(floor, MAX_BSP_PARTITIONS.max(floor))
    }
}

/// Rough in-memory width of a row.
fn row_width(schema: &Schema) -> u64 {
    schema
        .fields()
        .iter()
        .map(|f| match f.data_type() {
            DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => 32,
            DataType::Binary | DataType::LargeBinary | DataType::BinaryView => 32,
            t => t.primitive_width().map_or(16, |w| w as u64),
        })
        .sum::<u64>()
        .max(1)
}

/// `12.3 MiB`.
pub(crate) fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["bytes", "KiB", "MiB", "GiB", "TiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 { format!("{n} bytes") } else { format!("{value:.1} {}", UNITS[unit]) }
}
