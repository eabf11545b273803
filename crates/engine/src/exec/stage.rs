//! Stage boundaries: [`ExchangeExec`], the plan node that replaces an
//! exchange of a physical plan (a hash or round-robin repartition, or the
//! input of a coalesce / sort-preserving merge) when a query runs in BSP.
//!
//! The node keeps the producer plan as its child, so the cut plan is still
//! one ordinary DataFusion plan: `EXPLAIN` shows all of it, and a
//! distributed engine can later ship each stage elsewhere. Its `execute`
//! reads only the files its stage's [`Manifest`] lists, in the order the
//! producer wrote them.

use std::sync::{Arc, Mutex};

use datafusion::arrow::ipc::reader::StreamReader;
use datafusion::common::tree_node::{Transformed, TransformedResult, TreeNode, TreeNodeRecursion};
use datafusion::error::{DataFusionError, Result};
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_plan::coalesce_partitions::CoalescePartitionsExec;
use datafusion::physical_plan::repartition::RepartitionExec;
use datafusion::physical_plan::sorts::sort_preserving_merge::SortPreservingMergeExec;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    ChildrenPropertiesMode, DisplayAs, DisplayFormatType, ExecutionPlan, Partitioning, PlanProperties,
    ReplaceChildrenOptions,
};
use futures::{StreamExt, TryStreamExt};
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt};

/// How a stage's output is split among the next stage's partitions.
#[derive(Debug, Clone)]
pub enum Exchange {
    /// Rows go to partitions by this partitioning (hash or round robin),
    /// as the replaced `RepartitionExec` would send them.
    Shuffle(Partitioning),
    /// Output partition `i` is producer partition `i`, in order.
    Gather,
}

/// One output partition's segment of a stage file: a complete Arrow IPC
/// stream at `range` in the file at `path`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct StageFile {
    #[serde(with = "path_text")]
    pub(crate) path: Path,
    pub(crate) rows: u64,
    pub(crate) range: std::ops::Range<u64>,
}

/// A store path as its text.
mod path_text {
    use object_store::path::Path;

    pub fn serialize<S: serde::Serializer>(path: &Path, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(path.as_ref())
    }

    pub fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Path, D::Error> {
        let text = <String as serde::Deserialize>::deserialize(d)?;
        Path::parse(text).map_err(serde::de::Error::custom)
    }
}

/// The committed output of a stage: for each output partition, the files
/// to read, in order. Only the first successful attempt of each task is in it.
#[derive(Debug, Default, Clone, serde::Serialize, serde::Deserialize)]
pub struct Manifest {
    pub(crate) partitions: Vec<Vec<StageFile>>,
}

impl Manifest {
    /// Every segment of the stage.
    pub fn segments(&self) -> impl Iterator<Item = &StageFile> {
        self.partitions.iter().flatten()
    }

    /// The files of the stage.
    pub fn files(&self) -> std::collections::BTreeSet<&Path> {
        self.segments().map(|s| &s.path).collect()
    }
}

/// What a stage did, for `EXPLAIN ANALYZE` and `sys.queries`.
#[derive(Debug, Default, Clone)]
pub struct StageStats {
    /// Producer tasks (input partitions).
    pub tasks: usize,
    /// Task attempts, retries included (over every run of the stage).
    pub attempts: usize,
    /// Runs of the whole stage (more than 1 when its output went missing).
    pub runs: usize,
    /// Rows, bytes and files written.
    pub rows: u64,
    pub bytes: u64,
    pub files: usize,
    /// Bytes operators of the stage spilled to disk.
    pub spilled_bytes: u64,
    pub elapsed_ms: u64,
    /// Tasks committed so far in the stage's current run.
    pub done: usize,
    /// Attempts that failed and were run again (on another worker when a worker was lost).
    pub retried: usize,
    /// Where the committed tasks ran: worker addresses, `coordinator` for tasks run here.
    pub workers: std::collections::BTreeSet<String>,
}

/// State shared by every instance of one stage's node (plan copies made by
/// `with_new_children` or `reset_state` keep the manifest).
#[derive(Debug, Default)]
pub(crate) struct StageOutput {
    pub(crate) manifest: Mutex<Option<Arc<Manifest>>>,
    pub(crate) stats: Mutex<StageStats>,
}

/// The boundary between a stage and the stage that reads it.
#[derive(Debug)]
pub struct ExchangeExec {
    stage: usize,
    exchange: Exchange,
    input: Arc<dyn ExecutionPlan>,
    properties: Arc<PlanProperties>,
    store: Arc<dyn ObjectStore>,
    pub(crate) output: Arc<StageOutput>,
}

/// A stage's output file was listed in its manifest but is gone: the stage
/// must run again.
#[derive(Debug, thiserror::Error)]
#[error("output file {path} of stage {stage} is missing")]
pub struct MissingStageOutput {
    pub stage: usize,
    pub path: String,
}

impl ExchangeExec {
    /// The stage number (stages are numbered from 1 in the order they run).
    pub fn stage(&self) -> usize {
        self.stage
    }

    /// How the output is split.
    pub fn exchange(&self) -> &Exchange {
        &self.exchange
    }

    /// The stage's producer plan.
    pub fn input(&self) -> &Arc<dyn ExecutionPlan> {
        &self.input
    }

    /// Tasks of the producing stage.
    pub fn tasks(&self) -> usize {
        self.input.properties().partitioning.partition_count()
    }

    /// Partitions the stage's output is split into.
    pub fn output_partitions(&self) -> usize {
        self.properties.partitioning.partition_count()
    }

    /// The committed manifest, once the stage has run.
    pub fn manifest(&self) -> Option<Arc<Manifest>> {
        crate::lock(&self.output.manifest).clone()
    }

    /// What the stage did so far.
    pub fn stats(&self) -> StageStats {
        crate::lock(&self.output.stats).clone()
    }

    pub(crate) fn set_manifest(&self, manifest: Option<Arc<Manifest>>) {
        *crate::lock(&self.output.manifest) = manifest;
    }

    pub(crate) fn update_stats(&self, f: impl FnOnce(&mut StageStats)) {
        f(&mut crate::lock(&self.output.stats));
    }

    fn describe(&self) -> String {
        match &self.exchange {
            Exchange::Shuffle(p) => format!("shuffle {p}"),
            Exchange::Gather => format!("gather {} partitions", self.output_partitions()),
        }
    }
}

impl DisplayAs for ExchangeExec {
    fn fmt_as(&self, t: DisplayFormatType, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match t {
            DisplayFormatType::TreeRender => write!(f, "stage={}\n{}", self.stage, self.describe()),
            _ => {
                write!(f, "StageExchange: stage={}, {}, tasks={}", self.stage, self.describe(), self.tasks())?;
                let stats = self.stats();
                if stats.runs > 0 {
                    write!(
                        f,
                        ", rows={}, bytes={}, files={}, attempts={}",
                        stats.rows, stats.bytes, stats.files, stats.attempts
                    )?;
                }
                Ok(())
            }
        }
    }
}

impl ExecutionPlan for ExchangeExec {
    fn name(&self) -> &'static str {
        "StageExchange"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![&self.input]
    }

    fn apply_expressions(
        &self,
        f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> Result<TreeNodeRecursion>,
    ) -> Result<TreeNodeRecursion> {
        if let Exchange::Shuffle(Partitioning::Hash(exprs, _)) = &self.exchange {
            for e in exprs {
                if f(e)? == TreeNodeRecursion::Stop {
                    return Ok(TreeNodeRecursion::Stop);
                }
            }
        }
        Ok(TreeNodeRecursion::Continue)
    }

    fn replace_children(
        self: Arc<Self>,
        mut children: Vec<Arc<dyn ExecutionPlan>>,
        _: ReplaceChildrenOptions,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let input = children.pop().ok_or_else(|| DataFusionError::Internal("StageExchange needs its input".into()))?;
        Ok(Arc::new(Self {
            stage: self.stage,
            exchange: self.exchange.clone(),
            input,
            properties: Arc::clone(&self.properties),
            store: Arc::clone(&self.store),
            output: Arc::clone(&self.output),
        }))
    }

    fn with_new_children(self: Arc<Self>, children: Vec<Arc<dyn ExecutionPlan>>) -> Result<Arc<dyn ExecutionPlan>> {
        self.replace_children(children, ReplaceChildrenOptions::new(ChildrenPropertiesMode::Recompute))
    }

    fn execute(&self, partition: usize, _context: Arc<TaskContext>) -> Result<SendableRecordBatchStream> {
        let manifest = self
            .manifest()
            .ok_or_else(|| DataFusionError::Internal(format!("stage {} is read before it has run", self.stage)))?;
        Ok(read_partition(&self.store, self.stage, &manifest, partition, self.schema()))
    }
}

/// The files `manifest` lists for `partition`, read in order.
fn read_partition(
    store: &Arc<dyn ObjectStore>,
    stage: usize,
    manifest: &Manifest,
    partition: usize,
    schema: datafusion::arrow::datatypes::SchemaRef,
) -> SendableRecordBatchStream {
    let files = manifest.partitions.get(partition).cloned().unwrap_or_default();
    let store = Arc::clone(store);
    let batches = futures::stream::iter(files)
        .then(move |file| read_file(Arc::clone(&store), stage, file))
        .map_ok(|batches| futures::stream::iter(batches.into_iter().map(Ok)))
        .try_flatten();
    Box::pin(RecordBatchStreamAdapter::new(schema, batches))
}

/// A stage's committed output as a leaf: what an [`ExchangeExec`] that has
/// run becomes in a plan sent to a worker (the producer plan stays behind).
/// It reads the files its manifest lists from the shared store.
///
/// On the worker the node declares its partition count, not the hash
/// partitioning or ordering the exchange had: operators above it were
/// planned on the coordinator and execute the same without them.
#[derive(Debug)]
pub struct StageReadExec {
    stage: usize,
    manifest: Arc<Manifest>,
    store: Arc<dyn ObjectStore>,
    properties: Arc<PlanProperties>,
}

impl StageReadExec {
    /// Reads `manifest` (stage `stage`'s output, rows of `schema`) from `store`.
    pub fn new(
        stage: usize,
        manifest: Arc<Manifest>,
        schema: datafusion::arrow::datatypes::SchemaRef,
        store: Arc<dyn ObjectStore>,
    ) -> Self {
        use datafusion::physical_expr::EquivalenceProperties;
        use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
        let partitions = manifest.partitions.len().max(1);
        let properties = PlanProperties::new(
            EquivalenceProperties::new(schema),
            Partitioning::UnknownPartitioning(partitions),
            EmissionType::Incremental,
            Boundedness::Bounded,
        );
        Self { stage, manifest, store, properties: Arc::new(properties) }
    }

    pub fn stage(&self) -> usize {
        self.stage
    }

    pub fn manifest(&self) -> &Arc<Manifest> {
        &self.manifest
    }
}

impl DisplayAs for StageReadExec {
    fn fmt_as(&self, _: DisplayFormatType, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "StageRead: stage={}, files={}", self.stage, self.manifest.files().len())
    }
}

impl ExecutionPlan for StageReadExec {
    fn name(&self) -> &'static str {
        "StageRead"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn datafusion::physical_expr::PhysicalExpr>) -> Result<TreeNodeRecursion>,
    ) -> Result<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![]
    }

    fn with_new_children(self: Arc<Self>, _: Vec<Arc<dyn ExecutionPlan>>) -> Result<Arc<dyn ExecutionPlan>> {
        Ok(self)
    }

    fn execute(&self, partition: usize, _context: Arc<TaskContext>) -> Result<SendableRecordBatchStream> {
        Ok(read_partition(&self.store, self.stage, &self.manifest, partition, self.schema()))
    }
}

/// `plan` (a stage's producer plan) with every stage it reads, which has
/// run, as a [`StageReadExec`]: the plan a worker runs a task of.
///
/// # Errors
/// A stage it reads has not run.
pub fn with_stage_reads(plan: &Arc<dyn ExecutionPlan>) -> Result<Arc<dyn ExecutionPlan>> {
    Arc::clone(plan)
        .transform_down(|node| {
            let Some(exchange) = node.downcast_ref::<ExchangeExec>() else { return Ok(Transformed::no(node)) };
            let manifest = exchange.manifest().ok_or_else(|| {
                DataFusionError::Internal(format!("stage {} is read before it has run", exchange.stage))
            })?;
            let read = StageReadExec::new(exchange.stage, manifest, exchange.schema(), Arc::clone(&exchange.store));
            Ok(Transformed::new(Arc::new(read) as Arc<dyn ExecutionPlan>, true, TreeNodeRecursion::Jump))
        })
        .data()
}

/// Reads one partition's segment of a stage file (segments are bounded by the piece size).
async fn read_file(
    store: Arc<dyn ObjectStore>,
    stage: usize,
    file: StageFile,
) -> Result<Vec<datafusion::arrow::array::RecordBatch>> {
    let bytes = match store.get_range(&file.path, file.range.clone()).await {
        Ok(bytes) => bytes,
        Err(object_store::Error::NotFound { .. }) => {
            return Err(DataFusionError::External(Box::new(MissingStageOutput { stage, path: file.path.to_string() })));
        }
        Err(e) => return Err(DataFusionError::ObjectStore(Box::new(e))),
    };
    let reader = StreamReader::try_new(std::io::Cursor::new(bytes), None)?;
    Ok(reader.collect::<std::result::Result<Vec<_>, _>>()?)
}

/// The stage a failed read needs re-run, if that is why it failed.
pub fn missing_stage(error: &DataFusionError) -> Option<usize> {
    match error.find_root() {
        DataFusionError::External(e) => e.downcast_ref::<MissingStageOutput>().map(|m| m.stage),
        _ => None,
    }
}

/// Why a plan cannot run in stages, if it cannot.
pub fn uncuttable(plan: &Arc<dyn ExecutionPlan>) -> Option<String> {
    let mut reason = None;
    let _ = plan.apply(|node| {
        let name = node.name();
        if matches!(name, "ScalarSubqueryExec" | "RecursiveQueryExec" | "WorkTableExec") {
            reason = Some(format!("the plan has a {name}, which cannot be split into stages"));
        } else if node.properties().boundedness.is_unbounded() {
            reason = Some("the plan reads an unbounded input".to_string());
        }
        Ok(if reason.is_some() { TreeNodeRecursion::Stop } else { TreeNodeRecursion::Continue })
    });
    reason
}

/// Cuts `plan` into stages at its exchanges; stage files go to `store`.
/// The result produces one partition (the final stage reads and merges
/// the stage below it).
///
/// # Errors
/// Plan rewriting errors.
pub fn cut(plan: Arc<dyn ExecutionPlan>, store: &Arc<dyn ObjectStore>) -> Result<Arc<dyn ExecutionPlan>> {
    let plan: Arc<dyn ExecutionPlan> = if plan.properties().partitioning.partition_count() > 1 {
        Arc::new(CoalescePartitionsExec::new(plan))
    } else {
        plan
    };
    let mut next = 1;
    let mut new_stage = |exchange: Exchange, input: Arc<dyn ExecutionPlan>, properties: Arc<PlanProperties>| {
        let stage = next;
        next += 1;
        Arc::new(ExchangeExec { stage, exchange, input, properties, store: Arc::clone(store), output: Arc::default() })
            as Arc<dyn ExecutionPlan>
    };
    plan.transform_up(|node| {
        if let Some(repartition) = node.downcast_ref::<RepartitionExec>() {
            let shuffles =
                matches!(repartition.partitioning(), Partitioning::Hash(..) | Partitioning::RoundRobinBatch(_));
            if shuffles && !repartition.preserve_order() {
                let exchange = Exchange::Shuffle(repartition.partitioning().clone());
                let properties = Arc::clone(repartition.properties());
                return Ok(Transformed::yes(new_stage(exchange, Arc::clone(repartition.input()), properties)));
            }
            return Ok(Transformed::no(node));
        }
        if node.is::<CoalescePartitionsExec>() || node.is::<SortPreservingMergeExec>() {
            let child = Arc::clone(node.children()[0]);
            if child.properties().partitioning.partition_count() > 1 && !child.is::<ExchangeExec>() {
                let properties = Arc::clone(child.properties());
                let gather = new_stage(Exchange::Gather, child, properties);
                let options = ReplaceChildrenOptions::new(ChildrenPropertiesMode::Recompute);
                return Ok(Transformed::yes(node.replace_children(vec![gather], options)?));
            }
        }
        Ok(Transformed::no(node))
    })
    .data()
}

/// The stage boundaries of a cut plan, in the order they must run (every
/// stage after the stages it reads).
pub fn stages(plan: &Arc<dyn ExecutionPlan>) -> Vec<Arc<dyn ExecutionPlan>> {
    fn walk(plan: &Arc<dyn ExecutionPlan>, out: &mut Vec<Arc<dyn ExecutionPlan>>) {
        for child in plan.children() {
            walk(child, out);
        }
        if plan.is::<ExchangeExec>() {
            out.push(Arc::clone(plan));
        }
    }
    let mut out = Vec::new();
    walk(plan, &mut out);
    out
}

/// The stage tree of a cut plan, for `EXPLAIN`: each stage with the plan
/// it runs, the stages it reads shown as inputs.
pub fn render(plan: &Arc<dyn ExecutionPlan>, analyzed: bool) -> String {
    fn lines(plan: &Arc<dyn ExecutionPlan>, depth: usize, analyzed: bool, out: &mut String) {
        let node = if analyzed {
            datafusion::physical_plan::display::DisplayableExecutionPlan::with_metrics(plan.as_ref())
                .one_line()
                .to_string()
        } else {
            datafusion::physical_plan::displayable(plan.as_ref()).one_line().to_string()
        };
        if let Some(exchange) = plan.downcast_ref::<ExchangeExec>() {
            out.push_str(&format!("{}<- stage {} ({})\n", "  ".repeat(depth), exchange.stage, exchange.describe()));
            return;
        }
        out.push_str(&format!("{}{}\n", "  ".repeat(depth), node.trim_end()));
        for child in plan.children() {
            lines(child, depth + 1, analyzed, out);
        }
    }
    let mut out = String::new();
    let all = stages(plan);
    for stage in &all {
        let Some(exchange) = stage.downcast_ref::<ExchangeExec>() else { continue };
        out.push_str(&format!(
            "Stage {} ({}, {} tasks -> {} partitions)",
            exchange.stage,
            exchange.describe(),
            exchange.tasks(),
            exchange.output_partitions()
        ));
        if analyzed {
            let s = exchange.stats();
            out.push_str(&format!(
                ": rows={}, bytes={}, files={}, attempts={}, runs={}, spilled_bytes={}, elapsed={}ms",
                s.rows, s.bytes, s.files, s.attempts, s.runs, s.spilled_bytes, s.elapsed_ms
            ));
            if !s.workers.is_empty() {
                let workers: Vec<&str> = s.workers.iter().map(String::as_str).collect();
                out.push_str(&format!(", retried={}, workers=[{}]", s.retried, workers.join(", ")));
            }
        }
        out.push('\n');
        lines(exchange.input(), 1, analyzed, &mut out);
    }
    out.push_str(&format!("Stage {} (result)\n", all.len() + 1));
    lines(plan, 1, analyzed, &mut out);
    out
}
