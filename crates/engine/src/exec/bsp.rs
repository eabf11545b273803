//! Running a cut plan stage by stage.
//!
//! Each stage's tasks (its producer partitions) run at most
//! `stage_concurrency` at a time. A task writes its output, split as the
//! exchange says, as Arrow IPC stream files under
//! `q{run}/s{stage}/t{task}-r{round}-a{attempt}/` in the spill store, in pieces of
//! at most [`PIECE_BYTES`] (sooner when the query's memory is short), one
//! file per piece with a segment per output partition. Once
//! every task has succeeded, the stage's [`Manifest`] lists the files of
//! the first successful attempt of each task, and only those are read, so a
//! retried or duplicated task can never double rows.
//!
//! A task that fails with a retriable error (out of memory, I/O) runs again
//! after the others finished, alone and on a fresh copy of the stage's
//! plan, up to `task_retries` times. A stage whose input files went missing
//! makes the stage that wrote them run again. A query's files are removed
//! when it ends, fails or is dropped (cancelled).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::arrow::ipc::writer::StreamWriter;
use datafusion::error::{DataFusionError, Result};
use datafusion::execution::memory_pool::{MemoryConsumer, MemoryReservation};
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::execution_plan::reset_plan_states;
use datafusion::physical_plan::metrics::Time;
use datafusion::physical_plan::repartition::BatchPartitioner;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use futures::{StreamExt, TryStreamExt};
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use tokio::task::JoinSet;

use crate::lock;

use super::stage::{Exchange, ExchangeExec, Manifest, StageFile, StageStats, missing_stage, stages};

/// Largest piece of a task's output buffered before it is written.
pub const PIECE_BYTES: usize = 8 << 20;

/// Failures a test can inject into the next BSP queries (test-only hook).
#[derive(Debug, Default)]
pub struct Faults {
    /// `(stage, task, times)`: that task's next `times` attempts fail.
    failing_tasks: Mutex<Vec<(usize, usize, usize)>>,
    /// Stages whose output loses a file once, right after it is committed.
    lost_outputs: Mutex<Vec<usize>>,
}

impl Faults {
    /// Makes the next `times` attempts of `task` of `stage` fail.
    pub fn fail_task(&self, stage: usize, task: usize, times: usize) {
        lock(&self.failing_tasks).push((stage, task, times));
    }

    /// Deletes a file of `stage`'s output once, after the stage committed it.
    pub fn lose_output(&self, stage: usize) {
        lock(&self.lost_outputs).push(stage);
    }

    fn task_fails(&self, stage: usize, task: usize) -> bool {
        let mut failing = lock(&self.failing_tasks);
        match failing.iter_mut().find(|(s, t, n)| *s == stage && *t == task && *n > 0) {
            Some(entry) => {
                entry.2 -= 1;
                true
            }
            None => false,
        }
    }

    fn loses_output(&self, stage: usize) -> bool {
        let mut lost = lock(&self.lost_outputs);
        match lost.iter().position(|s| *s == stage) {
            Some(i) => {
                lost.remove(i);
                true
            }
            None => false,
        }
    }
}

/// An injected task failure.
#[derive(Debug, thiserror::Error)]
#[error("injected failure of task {task} of stage {stage}")]
struct InjectedFailure {
    stage: usize,
    task: usize,
}

/// The directory stage files go to: `<root>/<pid>-<n>`, one per engine,
/// removed when the engine is dropped. Directories of processes that no
/// longer run (a crash) are removed when an engine opens its own.
#[derive(Debug)]
pub struct SpillArea {
    dir: std::path::PathBuf,
    store: Arc<dyn ObjectStore>,
}

impl SpillArea {
    /// Opens a fresh area under `root` (created when missing).
    ///
    /// # Errors
    /// The directory cannot be created.
    pub fn open(root: &std::path::Path) -> std::io::Result<Self> {
        static ENGINES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        std::fs::create_dir_all(root)?;
        let pid = std::process::id();
        remove_stale(root, pid);
        let dir = root.join(format!("{pid}-{}", ENGINES.fetch_add(1, Ordering::Relaxed)));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        let store = object_store::local::LocalFileSystem::new_with_prefix(&dir)
            .map_err(std::io::Error::other)?
            .with_automatic_cleanup(true);
        Ok(Self { dir, store: Arc::new(store) })
    }

    /// Where stage files are written.
    pub fn store(&self) -> &Arc<dyn ObjectStore> {
        &self.store
    }

    /// The stage files there now (none once every query has ended).
    pub fn files(&self) -> usize {
        fn count(dir: &std::path::Path) -> usize {
            std::fs::read_dir(dir).map_or(0, |entries| {
                entries.flatten().map(|e| if e.path().is_dir() { count(&e.path()) } else { 1 }).sum()
            })
        }
        count(&self.dir)
    }
}

impl Drop for SpillArea {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Removes the areas of processes that are gone (Linux: no `/proc/<pid>`).
fn remove_stale(root: &std::path::Path, own: u32) {
    let proc = std::path::Path::new("/proc");
    if !proc.is_dir() {
        return;
    }
    let Ok(entries) = std::fs::read_dir(root) else { return };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().to_string();
        let Some(pid) = name.split_once('-').and_then(|(pid, _)| pid.parse::<u32>().ok()) else { continue };
        if pid != own && !proc.join(pid.to_string()).exists() {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// How BSP runs: where files go, how many tasks at once, how many retries.
#[derive(Debug, Clone)]
pub struct BspOptions {
    pub store: Arc<dyn ObjectStore>,
    pub concurrency: usize,
    pub retries: usize,
    pub faults: Arc<Faults>,
    /// Keeps a query planned again on the snapshots its first plan read.
    pub pinning: Arc<dyn crate::catalog::SnapshotPinning>,
    /// The workers queries may run on.
    pub distribution: Option<Arc<super::distributed::Distribution>>,
}

/// One query's run in stages; owns the query's stage files.
#[derive(Debug)]
pub struct BspRun {
    options: BspOptions,
    prefix: Path,
    stages: Mutex<Vec<Arc<dyn ExecutionPlan>>>,
    /// Set when cleanup starts: no file is written after it.
    cleaned: AtomicBool,
    /// Writes in flight, which cleanup waits for.
    writing: std::sync::atomic::AtomicUsize,
    written: tokio::sync::Notify,
}

impl BspRun {
    /// A new run; its files go under a prefix of its own.
    pub fn new(options: BspOptions) -> Self {
        static RUNS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        let run = RUNS.fetch_add(1, Ordering::Relaxed);
        Self {
            options,
            prefix: Path::from(format!("q{run}")),
            stages: Mutex::default(),
            cleaned: AtomicBool::new(false),
            writing: std::sync::atomic::AtomicUsize::new(0),
            written: tokio::sync::Notify::new(),
        }
    }

    /// Every stage's numbers so far.
    pub fn stage_stats(&self) -> Vec<StageStats> {
        lock(&self.stages).iter().filter_map(|s| s.downcast_ref::<ExchangeExec>()).map(ExchangeExec::stats).collect()
    }

    /// Runs every stage below the final one; then `plan` reads their output.
    ///
    /// # Errors
    /// The first error no retry could overcome.
    pub async fn run(self: &Arc<Self>, plan: &Arc<dyn ExecutionPlan>, ctx: &Arc<TaskContext>) -> Result<()> {
        let all = stages(plan);
        lock(&self.stages).clone_from(&all);
        let mut reruns = 0;
        let mut i = 0;
        while i < all.len() {
            match self.run_stage(&all[i], ctx).await {
                Ok(()) => i += 1,
                Err(e) => {
                    let Some(missing) = missing_stage(&e) else { return Err(e) };
                    let producer = all.iter().find(|s| exchange(s).stage() == missing);
                    match producer {
                        Some(producer) if reruns < self.options.retries => {
                            reruns += 1;
                            tracing::warn!(stage = missing, "stage output is missing; running the stage again");
                            self.run_stage(producer, ctx).await?;
                        }
                        _ => return Err(e),
                    }
                }
            }
        }
        Ok(())
    }

    async fn run_stage(self: &Arc<Self>, node: &Arc<dyn ExecutionPlan>, ctx: &Arc<TaskContext>) -> Result<()> {
        let started = Instant::now();
        let stage = exchange(node);
        let tasks = stage.tasks();
        let round = stage.stats().runs;
        let mut committed: Vec<Option<Vec<(usize, StageFile)>>> = vec![None; tasks];
        let mut failed = Vec::new();
        let mut attempts = 0;

        // Every task once, at most `concurrency` at a time, on one plan instance.
        let mut running = JoinSet::new();
        let mut next = 0;
        while next < tasks || !running.is_empty() {
            while next < tasks && running.len() < self.options.concurrency.max(1) {
                let task =
                    Task { run: Arc::clone(self), node: Arc::clone(node), plan: Arc::clone(stage.input()), round };
                running.spawn(task.attempt(next, 0, Arc::clone(ctx)));
                attempts += 1;
                next += 1;
            }
            let Some(joined) = running.join_next().await else { break };
            let (task, result) = joined.map_err(|e| DataFusionError::External(Box::new(e)))?;
            match result {
                Ok(files) => self.commit(&mut committed, task, files).await,
                Err(e) if retriable(&e) => failed.push((task, e)),
                Err(e) => return Err(e),
            }
        }

        // Failed tasks again, one at a time, each on a fresh plan instance.
        for (task, mut error) in failed {
            let mut attempt = 1;
            loop {
                if attempt > self.options.retries {
                    return Err(error.context(format!("task {task} of stage {} failed {attempt} times", stage.stage())));
                }
                tracing::warn!(stage = stage.stage(), task, attempt, %error, "retrying a failed task");
                let plan = reset_plan_states(Arc::clone(stage.input()))?;
                let one = Task { run: Arc::clone(self), node: Arc::clone(node), plan, round };
                attempts += 1;
                let (_, result) = tokio::spawn(one.attempt(task, attempt, Arc::clone(ctx)))
                    .await
                    .map_err(|e| DataFusionError::External(Box::new(e)))?;
                match result {
                    Ok(files) => {
                        self.commit(&mut committed, task, files).await;
                        break;
                    }
                    Err(e) if retriable(&e) => {
                        error = e;
                        attempt += 1;
                    }
                    Err(e) => return Err(e),
                }
            }
        }

        let mut manifest = Manifest { partitions: vec![Vec::new(); stage.output_partitions()] };
        for files in committed.into_iter().flatten() {
            for (partition, file) in files {
                if let Some(list) = manifest.partitions.get_mut(partition) {
                    list.push(file);
                }
            }
        }
        let rows = manifest.segments().map(|s| s.rows).sum();
        let bytes = manifest.segments().map(|s| s.range.end - s.range.start).sum();
        let files = manifest.files().len();
        let spilled = spilled_bytes(stage.input());
        let elapsed = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
        stage.update_stats(|s| {
            s.tasks = tasks;
            s.attempts += attempts;
            s.runs += 1;
            (s.rows, s.bytes, s.files) = (rows, bytes, files);
            s.spilled_bytes = spilled;
            s.elapsed_ms += elapsed;
        });
        let lose = self.options.faults.loses_output(stage.stage());
        if lose && let Some(path) = manifest.files().first() {
            let _ = self.options.store.delete(path).await;
        }
        stage.set_manifest(Some(Arc::new(manifest)));
        Ok(())
    }

    /// Keeps the first successful attempt of each task; a later one's files are deleted.
    async fn commit(
        &self,
        committed: &mut [Option<Vec<(usize, StageFile)>>],
        task: usize,
        files: Vec<(usize, StageFile)>,
    ) {
        match committed.get_mut(task) {
            Some(slot @ None) => *slot = Some(files),
            _ => {
                let paths: std::collections::BTreeSet<&Path> = files.iter().map(|(_, f)| &f.path).collect();
                for path in paths {
                    let _ = self.options.store.delete(path).await;
                }
            }
        }
    }

    /// Removes every file of the query. Writes already under way finish
    /// first (a task aborted mid-write cannot stop its write); none start after.
    pub async fn cleanup(&self) {
        if self.cleaned.swap(true, Ordering::SeqCst) {
            return;
        }
        loop {
            let written = self.written.notified();
            if self.writing.load(Ordering::SeqCst) == 0 {
                break;
            }
            written.await;
        }
        delete_prefix(&self.options.store, &self.prefix).await;
    }

    /// Writes one stage file, unless the run's files are being removed.
    /// The write runs as a task of its own, so that it is either complete
    /// or never started when cleanup looks.
    async fn put(self: &Arc<Self>, path: Path, bytes: Vec<u8>) -> Result<()> {
        self.writing.fetch_add(1, Ordering::SeqCst);
        let run = Arc::clone(self);
        let write = tokio::spawn(async move {
            let result = if run.cleaned.load(Ordering::SeqCst) {
                Err(DataFusionError::Execution("the query ended".into()))
            } else {
                run.options
                    .store
                    .put(&path, PutPayload::from(bytes))
                    .await
                    .map(|_| ())
                    .map_err(|e| DataFusionError::ObjectStore(Box::new(e)))
            };
            if run.writing.fetch_sub(1, Ordering::SeqCst) == 1 {
                run.written.notify_waiters();
            }
            result
        });
        write.await.map_err(|e| DataFusionError::External(Box::new(e)))?
    }

    /// A guard that removes the run's files when dropped, unless they were removed already.
    pub fn cleanup_guard(self: &Arc<Self>) -> Cleanup {
        Cleanup(Arc::clone(self))
    }

    /// `stream` (the final stage), removing the query's files when it ends or is dropped.
    pub fn guard(guard: Cleanup, stream: SendableRecordBatchStream) -> SendableRecordBatchStream {
        let schema = stream.schema();
        let ended = futures::stream::once(async move {
            guard.0.cleanup().await;
            drop(guard);
            None
        })
        .filter_map(futures::future::ready);
        Box::pin(RecordBatchStreamAdapter::new(schema, stream.chain(ended)))
    }
}

/// Removes a run's files when dropped before its stream ended (the query
/// failed or was cancelled).
pub struct Cleanup(Arc<BspRun>);

impl Drop for Cleanup {
    fn drop(&mut self) {
        if self.0.cleaned.load(Ordering::SeqCst) {
            return;
        }
        let run = Arc::clone(&self.0);
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            handle.spawn(async move { run.cleanup().await });
        }
    }
}

/// Deletes every object under `prefix`.
pub async fn delete_prefix(store: &Arc<dyn ObjectStore>, prefix: &Path) {
    let paths = store.list(Some(prefix)).map_ok(|meta| meta.location).boxed();
    let mut deleted = store.delete_stream(paths);
    while let Some(result) = deleted.next().await {
        if let Err(e) = result {
            tracing::warn!(%e, "cannot remove a stage file");
        }
    }
}

fn exchange(node: &Arc<dyn ExecutionPlan>) -> &ExchangeExec {
    node.downcast_ref::<ExchangeExec>().unwrap_or_else(|| unreachable!("stages() returns StageExchange nodes"))
}

/// Whether another attempt may succeed: not for errors the data or the
/// query itself causes (division by zero, a bad cast), which would fail again.
fn retriable(error: &DataFusionError) -> bool {
    if missing_stage(error).is_some() {
        return false;
    }
    match error.find_root() {
        DataFusionError::ResourcesExhausted(_) | DataFusionError::IoError(_) | DataFusionError::ObjectStore(_) => true,
        DataFusionError::External(e) => e.is::<InjectedFailure>() || e.is::<std::io::Error>(),
        DataFusionError::ArrowError(e, _) => matches!(**e, datafusion::arrow::error::ArrowError::IoError(..)),
        _ => false,
    }
}

/// Bytes the operators of a stage spilled.
fn spilled_bytes(plan: &Arc<dyn ExecutionPlan>) -> u64 {
    use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
    let mut total = 0u64;
    let _ = plan.apply(|node| {
        if node.is::<ExchangeExec>() {
            return Ok(TreeNodeRecursion::Jump);
        }
        if let Some(bytes) = node.metrics().and_then(|m| m.spilled_bytes()) {
            total += bytes as u64;
        }
        Ok(TreeNodeRecursion::Continue)
    });
    total
}

/// One attempt of one task.
struct Task {
    run: Arc<BspRun>,
    node: Arc<dyn ExecutionPlan>,
    plan: Arc<dyn ExecutionPlan>,
    /// Which run of the stage this is (a stage runs again when its output went missing).
    round: usize,
}

impl Task {
    /// Runs task `task`, returning `(task, files by output partition)`. A
    /// failed attempt leaves no files.
    async fn attempt(
        self,
        task: usize,
        attempt: usize,
        ctx: Arc<TaskContext>,
    ) -> (usize, Result<Vec<(usize, StageFile)>>) {
        let stage = exchange(&self.node);
        let dir = self
            .run
            .prefix
            .clone()
            .join(format!("s{}", stage.stage()))
            .join(format!("t{task}-r{}-a{attempt}", self.round));
        let result = self.write(task, &dir, ctx).await;
        if result.is_err() {
            delete_prefix(&self.run.options.store, &dir).await;
        }
        (task, result)
    }

    async fn write(&self, task: usize, dir: &Path, ctx: Arc<TaskContext>) -> Result<Vec<(usize, StageFile)>> {
        let stage = exchange(&self.node);
        if self.run.options.faults.task_fails(stage.stage(), task) {
            return Err(DataFusionError::External(Box::new(InjectedFailure { stage: stage.stage(), task })));
        }
        let mut partitioner = match stage.exchange() {
            Exchange::Shuffle(partitioning) => {
                Some(BatchPartitioner::try_new(partitioning.clone(), Time::new(), task, stage.tasks())?)
            }
            Exchange::Gather => None,
        };
        let reservation = MemoryConsumer::new(format!("StageWriter[{}.{task}]", stage.stage()))
            .with_can_spill(true)
            .register(ctx.memory_pool());
        let mut writer = TaskWriter::new(
            Arc::clone(&self.run),
            dir.clone(),
            self.plan.schema(),
            stage.output_partitions(),
            reservation,
        );
        let mut input = self.plan.execute(task, ctx)?;
        while let Some(batch) = input.next().await {
            let batch = batch?;
            if batch.num_rows() == 0 {
                continue;
            }
            match &mut partitioner {
                Some(partitioner) => {
                    let mut parts = Vec::new();
                    partitioner.partition(batch, |p, b| {
                        parts.push((p, b));
                        Ok(())
                    })?;
                    for (p, b) in parts {
                        writer.write(p, &b).await?;
                    }
                }
                None => writer.write(task, &batch).await?,
            }
        }
        writer.finish().await
    }
}

/// `batch` with its string and binary view columns holding only the bytes
/// their rows use. A join or a hash split leaves views pointing into the
/// input's whole buffers, and Arrow IPC writes every buffer a column
/// references: without this, each small batch would carry its input's bytes.
fn compact_views(batch: &RecordBatch) -> Result<RecordBatch> {
    use datafusion::arrow::array::{Array, ArrayRef, AsArray};
    use datafusion::arrow::datatypes::DataType;
    if !batch.columns().iter().any(|c| matches!(c.data_type(), DataType::Utf8View | DataType::BinaryView)) {
        return Ok(batch.clone());
    }
    let columns: Vec<ArrayRef> = batch
        .columns()
        .iter()
        .map(|c| match c.data_type() {
            DataType::Utf8View => Arc::new(c.as_string_view().gc()) as ArrayRef,
            DataType::BinaryView => Arc::new(c.as_binary_view().gc()) as ArrayRef,
            _ => Arc::clone(c),
        })
        .collect();
    Ok(RecordBatch::try_new(batch.schema(), columns)?)
}

/// Buffers a task's output per partition and writes it in pieces: each
/// piece is one file holding a segment (a complete Arrow IPC stream) per
/// output partition, back to back, so a stage writes one file per task and
/// piece, not one per task and partition. The manifest records each
/// segment's byte range, and a reader fetches only its partition's ranges.
struct TaskWriter {
    run: Arc<BspRun>,
    dir: Path,
    schema: SchemaRef,
    open: Vec<Option<(StreamWriter<Vec<u8>>, u64)>>,
    pieces: usize,
    files: Vec<(usize, StageFile)>,
    reservation: MemoryReservation,
}

impl TaskWriter {
    fn new(run: Arc<BspRun>, dir: Path, schema: SchemaRef, partitions: usize, reservation: MemoryReservation) -> Self {
        Self {
            run,
            dir,
            schema,
            open: (0..partitions).map(|_| None).collect(),
            pieces: 0,
            files: Vec::new(),
            reservation,
        }
    }

    fn buffered(&self) -> usize {
        self.open.iter().flatten().map(|(w, _)| w.get_ref().len()).sum()
    }

    async fn write(&mut self, partition: usize, batch: &RecordBatch) -> Result<()> {
        let slot = self
            .open
            .get_mut(partition)
            .ok_or_else(|| DataFusionError::Internal(format!("no output partition {partition}")))?;
        if slot.is_none() {
            *slot = Some((StreamWriter::try_new(Vec::new(), &self.schema)?, 0));
        }
        let Some((writer, rows)) = slot.as_mut() else { unreachable!("opened above") };
        writer.write(&compact_views(batch)?)?;
        *rows += batch.num_rows() as u64;
        let buffered = self.buffered();
        // A full piece, or the query's memory is short: write what is buffered now.
        if buffered >= PIECE_BYTES || self.reservation.try_resize(buffered).is_err() {
            self.flush().await?;
        }
        Ok(())
    }

    /// Writes every buffered segment as one file.
    async fn flush(&mut self) -> Result<()> {
        let path = self.dir.clone().join(format!("{}.arrow", self.pieces));
        let mut bytes = Vec::with_capacity(self.buffered());
        let mut segments = Vec::new();
        for (partition, slot) in self.open.iter_mut().enumerate() {
            let Some((mut writer, rows)) = slot.take() else { continue };
            writer.finish()?;
            let start = bytes.len() as u64;
            bytes.extend_from_slice(&writer.into_inner()?);
            segments.push((partition, rows, start..bytes.len() as u64));
        }
        if segments.is_empty() {
            return Ok(());
        }
        self.pieces += 1;
        self.run.put(path.clone(), bytes).await?;
        for (partition, rows, range) in segments {
            self.files.push((partition, StageFile { path: path.clone(), rows, range }));
        }
        self.reservation.resize(0);
        Ok(())
    }

    async fn finish(mut self) -> Result<Vec<(usize, StageFile)>> {
        self.flush().await?;
        Ok(self.files)
    }
}
