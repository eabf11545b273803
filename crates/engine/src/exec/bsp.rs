//! Running a cut plan stage by stage.
//!
//! Each stage's tasks (its producer partitions) run at most
//! `stage_concurrency` at a time. A task writes its output, split as the
//! exchange says, as Arrow IPC stream files under
//! `q{run}/s{stage}/t{task}-r{round}-a{attempt}/` in the spill store, in pieces of
//! at most [`super::task::PIECE_BYTES`] (sooner when the query's memory is
//! short), one file per piece with a segment per output partition. Once
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

use datafusion::error::{DataFusionError, Result};
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::execution_plan::reset_plan_states;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use futures::{StreamExt, TryStreamExt};
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use tokio::task::JoinSet;

use crate::lock;

use super::stage::{ExchangeExec, Manifest, StageFile, StageStats, missing_stage, stages};
use super::task::{Sink, TaskSpec, write_task};

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

/// Where a distributed BSP run sends its stage tasks: workers of the
/// cluster, which write to the shared store the run's options name.
#[derive(Debug, Clone)]
pub struct Remote {
    pub cluster: Arc<super::distributed::Cluster>,
    /// With the distribution settings (the codec our nodes travel with).
    pub task: Arc<TaskContext>,
}

/// One query's run in stages; owns the query's stage files.
#[derive(Debug)]
pub struct BspRun {
    options: BspOptions,
    remote: Option<Remote>,
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
        Self::with_remote(options, None, &Path::default())
    }

    /// A run whose tasks go to workers, its files under `prefix` of `options.store` (the shared store).
    pub fn with_remote(options: BspOptions, remote: Option<Remote>, prefix: &Path) -> Self {
        static RUNS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        let run = RUNS.fetch_add(1, Ordering::Relaxed);
        Self {
            options,
            remote,
            prefix: prefix.clone().join(format!("q{run}")),
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
        if let Some(remote) = &self.remote {
            return self.run_stage_remote(node, ctx, remote).await;
        }
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

        self.finish_stage(node, committed, attempts, started).await;
        Ok(())
    }

    /// Where attempt `attempt` of `task` of `stage` (in the stage's run `round`) writes its files.
    fn attempt_dir(&self, stage: usize, task: usize, round: usize, attempt: usize) -> Path {
        self.prefix.clone().join(format!("s{stage}")).join(format!("t{task}-r{round}-a{attempt}"))
    }

    /// Commits a stage whose every task succeeded: its manifest and numbers.
    async fn finish_stage(
        &self,
        node: &Arc<dyn ExecutionPlan>,
        committed: Vec<Option<Vec<(usize, StageFile)>>>,
        attempts: usize,
        started: Instant,
    ) {
        let stage = exchange(node);
        let tasks = committed.len();
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
            s.done = tasks;
            (s.rows, s.bytes, s.files) = (rows, bytes, files);
            s.spilled_bytes = spilled;
            s.elapsed_ms += elapsed;
        });
        let lose = self.options.faults.loses_output(stage.stage());
        if lose && let Some(path) = manifest.files().first() {
            let _ = self.options.store.delete(path).await;
        }
        stage.set_manifest(Some(Arc::new(manifest)));
    }

    /// Runs a stage's tasks on the workers up, at most `concurrency` at
    /// once on each, the least busy first. A task whose worker fails (it
    /// cannot be reached, goes away, or the heartbeat finds it lost) runs
    /// again on another worker, here when none is left; the worker is
    /// marked lost. A task that fails with a retriable error runs again, up
    /// to `task_retries` times; any other error fails the query. The stages
    /// it reads are not run again: their files are on the shared store.
    async fn run_stage_remote(
        self: &Arc<Self>,
        node: &Arc<dyn ExecutionPlan>,
        ctx: &Arc<TaskContext>,
        remote: &Remote,
    ) -> Result<()> {
        use std::collections::{BTreeSet, HashMap, VecDeque};
        let started = Instant::now();
        let stage = exchange(node);
        let tasks = stage.tasks();
        let round = stage.stats().runs;
        stage.update_stats(|s| s.done = 0);
        // What workers run: the producer plan, reading the stages below from their files.
        let input = super::stage::with_stage_reads(stage.input())?;
        let mut committed: Vec<Option<Vec<(usize, StageFile)>>> = vec![None; tasks];
        let mut queue: VecDeque<(usize, usize)> = (0..tasks).map(|t| (t, 0)).collect();
        // Workers a task failed on, not given that task again.
        let mut failed_on: HashMap<usize, BTreeSet<url::Url>> = HashMap::new();
        let mut busy: HashMap<Option<url::Url>, usize> = HashMap::new();
        let per_place = self.options.concurrency.max(1);
        let mut running = JoinSet::new();
        loop {
            while let Some(&(task, attempt)) = queue.front() {
                let live = remote.cluster.live();
                let avoid = failed_on.get(&task);
                let candidates: Vec<url::Url> =
                    live.into_iter().filter(|u| avoid.is_none_or(|a| !a.contains(u))).collect();
                // No worker left for it: the coordinator runs it.
                let place = candidates.into_iter().min_by_key(|u| busy.get(&Some(u.clone())).copied().unwrap_or(0));
                if busy.get(&place).copied().unwrap_or(0) >= per_place {
                    break;
                }
                queue.pop_front();
                *busy.entry(place.clone()).or_default() += 1;
                stage.update_stats(|s| s.attempts += 1);
                let dir = self.attempt_dir(stage.stage(), task, round, attempt);
                let run = Arc::clone(self);
                let (node, input, ctx, remote) =
                    (Arc::clone(node), Arc::clone(&input), Arc::clone(ctx), remote.clone());
                running.spawn(async move {
                    let result = match &place {
                        Some(url) => {
                            let result = run.remote_attempt(&node, &input, task, &dir, url, &remote).await;
                            if result.is_err() {
                                delete_prefix(&run.options.store, &dir).await;
                            }
                            result
                        }
                        // A local attempt removes its own files when it fails.
                        None => {
                            let plan = reset_plan_states(Arc::clone(exchange(&node).input()))?;
                            let one = Task { run: Arc::clone(&run), node, plan, round };
                            one.attempt(task, attempt, ctx).await.1
                        }
                    };
                    Ok::<_, DataFusionError>((task, attempt, place, result))
                });
            }
            let Some(joined) = running.join_next().await else { break };
            let (task, attempt, place, result) = joined.map_err(|e| DataFusionError::External(Box::new(e)))??;
            if let Some(n) = busy.get_mut(&place) {
                *n = n.saturating_sub(1);
            }
            let at = place.as_ref().map_or_else(|| "coordinator".to_string(), worker_name);
            match result {
                Ok(files) => {
                    self.commit(&mut committed, task, files).await;
                    stage.update_stats(|s| {
                        s.done += 1;
                        s.workers.insert(at);
                    });
                }
                Err(e) => {
                    let lost = place.is_some() && super::distributed::worker_failure(&e).is_some();
                    if let (true, Some(url)) = (lost, &place) {
                        remote.cluster.suspect(url, &crate::error::describe(&e));
                        failed_on.entry(task).or_default().insert(url.clone());
                    }
                    // A lost worker is not the task's fault: it runs again elsewhere, whatever its attempts.
                    if lost || (retriable(&e) && attempt < self.options.retries) {
                        tracing::warn!(stage = stage.stage(), task, attempt, worker = %at, error = %e, "retrying a failed task");
                        stage.update_stats(|s| s.retried += 1);
                        queue.push_back((task, attempt + 1));
                    } else {
                        running.abort_all();
                        return Err(e.context(format!("task {task} of stage {} failed on {at}", stage.stage())));
                    }
                }
            }
        }
        // Attempts were counted as they started.
        self.finish_stage(node, committed, 0, started).await;
        Ok(())
    }

    /// One attempt of `task` on the worker at `url`: the files it wrote.
    /// Gives up as soon as the heartbeat finds the worker lost.
    async fn remote_attempt(
        &self,
        node: &Arc<dyn ExecutionPlan>,
        input: &Arc<dyn ExecutionPlan>,
        task: usize,
        dir: &Path,
        url: &url::Url,
        remote: &Remote,
    ) -> Result<Vec<(usize, StageFile)>> {
        let stage = exchange(node);
        let spec = TaskSpec::of(stage, task, dir);
        let plan = Arc::new(super::task::StageTaskExec::new(&spec, Arc::clone(input), None));
        let batches = super::distributed::run_task(&remote.task, &remote.cluster, url, plan).await?;
        super::task::files_of(&batches)
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

/// `host:port` of a worker.
fn worker_name(url: &url::Url) -> String {
    match (url.host_str(), url.port()) {
        (Some(host), Some(port)) => format!("{host}:{port}"),
        _ => url.to_string(),
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
        let dir = self.run.attempt_dir(stage.stage(), task, self.round, attempt);
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
        let spec = TaskSpec::of(stage, task, dir);
        write_task(&spec, &self.plan, Arc::new(RunSink(Arc::clone(&self.run))), ctx).await
    }
}

/// A run's own writes, which its cleanup waits for.
struct RunSink(Arc<BspRun>);

#[async_trait::async_trait]
impl Sink for RunSink {
    async fn put(&self, path: Path, bytes: Vec<u8>) -> Result<()> {
        self.0.put(path, bytes).await
    }
}
