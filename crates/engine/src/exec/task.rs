//! One task of a BSP stage: run one partition of the stage's producer
//! plan, split its rows as the stage's exchange says, and write them as
//! stage files ([`write_task`]). The coordinator runs tasks itself (local
//! BSP) or sends them to workers as a [`StageTaskExec`], which writes to the
//! shared object store and answers with the list of files it wrote.

use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, AsArray, RecordBatch, StringArray, UInt64Array};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef, UInt64Type};
use datafusion::arrow::ipc::writer::StreamWriter;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::error::{DataFusionError, Result};
use datafusion::execution::memory_pool::{MemoryConsumer, MemoryReservation};
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::physical_expr::EquivalenceProperties;
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::metrics::Time;
use datafusion::physical_plan::repartition::BatchPartitioner;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{DisplayAs, DisplayFormatType, ExecutionPlan, Partitioning, PlanProperties};
use futures::StreamExt;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};

use super::stage::{Exchange, StageFile};

/// Largest piece of a task's output buffered before it is written.
pub const PIECE_BYTES: usize = 8 << 20;

/// Where a task's stage files go.
#[async_trait::async_trait]
pub trait Sink: Send + Sync {
    /// Writes one whole file.
    async fn put(&self, path: Path, bytes: Vec<u8>) -> Result<()>;
}

/// Straight to a store (a worker's writes to the shared warehouse).
struct StoreSink(Arc<dyn ObjectStore>);

#[async_trait::async_trait]
impl Sink for StoreSink {
    async fn put(&self, path: Path, bytes: Vec<u8>) -> Result<()> {
        self.0
            .put(&path, PutPayload::from(bytes))
            .await
            .map(|_| ())
            .map_err(|e| DataFusionError::ObjectStore(Box::new(e)))
    }
}

/// What a task runs: partition `task` of `plan`, out of `tasks`.
pub struct TaskSpec<'a> {
    pub stage: usize,
    pub task: usize,
    pub tasks: usize,
    pub exchange: &'a Exchange,
    pub output_partitions: usize,
    /// The directory its files go to (its own: one per attempt).
    pub dir: &'a Path,
}

impl<'a> TaskSpec<'a> {
    /// Task `task` of `stage`, writing under `dir`.
    pub fn of(stage: &'a super::stage::ExchangeExec, task: usize, dir: &'a Path) -> Self {
        Self {
            stage: stage.stage(),
            task,
            tasks: stage.tasks(),
            exchange: stage.exchange(),
            output_partitions: stage.output_partitions(),
            dir,
        }
    }
}

/// Runs one task: its files, by output partition.
///
/// # Errors
/// The plan's errors, or a write that failed.
pub async fn write_task(
    spec: &TaskSpec<'_>,
    plan: &Arc<dyn ExecutionPlan>,
    sink: Arc<dyn Sink>,
    ctx: Arc<TaskContext>,
) -> Result<Vec<(usize, StageFile)>> {
    let mut partitioner = match spec.exchange {
        Exchange::Shuffle(partitioning) => {
            Some(BatchPartitioner::try_new(partitioning.clone(), Time::new(), spec.task, spec.tasks)?)
        }
        Exchange::Gather => None,
    };
    let reservation = MemoryConsumer::new(format!("StageWriter[{}.{}]", spec.stage, spec.task))
        .with_can_spill(true)
        .register(ctx.memory_pool());
    let mut writer = TaskWriter::new(sink, spec.dir.clone(), plan.schema(), spec.output_partitions, reservation);
    let mut input = plan.execute(spec.task, ctx)?;
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
            None => writer.write(spec.task, &batch).await?,
        }
    }
    writer.finish().await
}

/// `batch` with its string and binary view columns holding only the bytes
/// their rows use, where they hold noticeably more. A join, a hash split or
/// a top-k leaves views pointing into the input's whole buffers, and Arrow
/// IPC writes every buffer a column references: without this, a 20-row
/// answer can carry megabytes (and exceed a Flight client's message limit),
/// and each small exchanged batch its input's bytes.
pub fn compact_views(batch: &RecordBatch) -> Result<RecordBatch> {
    /// Compact when the buffers hold this many bytes beyond what the rows use
    /// and more than twice as many: copying is cheap next to sending them.
    const SLACK: usize = 64 * 1024;
    fn wasteful(held: usize, used: usize) -> bool {
        held > used.saturating_mul(2) && held - used > SLACK
    }
    fn held(buffers: &[datafusion::arrow::buffer::Buffer]) -> usize {
        buffers.iter().map(|b| b.len()).sum()
    }
    let compacted = |c: &ArrayRef| -> Option<ArrayRef> {
        match c.data_type() {
            DataType::Utf8View => {
                let a = c.as_string_view();
                wasteful(held(a.data_buffers()), a.total_buffer_bytes_used()).then(|| Arc::new(a.gc()) as ArrayRef)
            }
            DataType::BinaryView => {
                let a = c.as_binary_view();
                wasteful(held(a.data_buffers()), a.total_buffer_bytes_used()).then(|| Arc::new(a.gc()) as ArrayRef)
            }
            _ => None,
        }
    };
    let mut columns: Option<Vec<ArrayRef>> = None;
    for (i, c) in batch.columns().iter().enumerate() {
        if let Some(new) = compacted(c) {
            columns.get_or_insert_with(|| batch.columns().to_vec())[i] = new;
        }
    }
    match columns {
        None => Ok(batch.clone()),
        Some(columns) => Ok(RecordBatch::try_new(batch.schema(), columns)?),
    }
}

/// Buffers a task's output per partition and writes it in pieces: each
/// piece is one file holding a segment (a complete Arrow IPC stream) per
/// output partition, back to back, so a stage writes one file per task and
/// piece, not one per task and partition. The manifest records each
/// segment's byte range, and a reader fetches only its partition's ranges.
struct TaskWriter {
    sink: Arc<dyn Sink>,
    dir: Path,
    schema: SchemaRef,
    open: Vec<Option<(StreamWriter<Vec<u8>>, u64)>>,
    pieces: usize,
    files: Vec<(usize, StageFile)>,
    reservation: MemoryReservation,
}

impl TaskWriter {
    fn new(
        sink: Arc<dyn Sink>,
        dir: Path,
        schema: SchemaRef,
        partitions: usize,
        reservation: MemoryReservation,
    ) -> Self {
        Self {
            sink,
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
        self.sink.put(path.clone(), bytes).await?;
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

/// A task sent to a worker: runs [`write_task`] there, writing to the
/// worker's store (the shared warehouse), and produces one batch listing the
/// files it wrote ([`files_of`] reads it back).
#[derive(Debug)]
pub struct StageTaskExec {
    pub(crate) stage: usize,
    pub(crate) task: usize,
    pub(crate) tasks: usize,
    pub(crate) exchange: Exchange,
    pub(crate) output_partitions: usize,
    pub(crate) dir: Path,
    pub(crate) input: Arc<dyn ExecutionPlan>,
    /// Where the files go: set where the task runs (decoded on a worker).
    pub(crate) store: Option<Arc<dyn ObjectStore>>,
    properties: Arc<PlanProperties>,
}

/// The header of an encoded [`StageTaskExec`] (its exchange's partitioning travels as datafusion-proto bytes).
#[derive(serde::Serialize, serde::Deserialize)]
pub(crate) struct TaskHeader {
    pub stage: usize,
    pub task: usize,
    pub tasks: usize,
    pub output_partitions: usize,
    pub dir: String,
    /// `None`: a gather.
    pub shuffle: Option<Vec<u8>>,
}

impl StageTaskExec {
    /// Task `spec.task` of a stage whose producer plan is `input` (with the
    /// stages it reads as [`super::stage::StageReadExec`]s).
    pub fn new(spec: &TaskSpec<'_>, input: Arc<dyn ExecutionPlan>, store: Option<Arc<dyn ObjectStore>>) -> Self {
        let properties = PlanProperties::new(
            EquivalenceProperties::new(files_schema()),
            Partitioning::UnknownPartitioning(1),
            EmissionType::Final,
            Boundedness::Bounded,
        );
        Self {
            stage: spec.stage,
            task: spec.task,
            tasks: spec.tasks,
            exchange: spec.exchange.clone(),
            output_partitions: spec.output_partitions,
            dir: spec.dir.clone(),
            input,
            store,
            properties: Arc::new(properties),
        }
    }

    /// The encoded header, with the shuffle's partitioning encoded by `encode`.
    pub(crate) fn header(&self, encode: impl FnOnce(&Partitioning) -> Result<Vec<u8>>) -> Result<TaskHeader> {
        let shuffle = match &self.exchange {
            Exchange::Shuffle(partitioning) => Some(encode(partitioning)?),
            Exchange::Gather => None,
        };
        Ok(TaskHeader {
            stage: self.stage,
            task: self.task,
            tasks: self.tasks,
            output_partitions: self.output_partitions,
            dir: self.dir.to_string(),
            shuffle,
        })
    }
}

impl DisplayAs for StageTaskExec {
    fn fmt_as(&self, _: DisplayFormatType, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "StageTask: stage={}, task={} of {}, dir={}", self.stage, self.task, self.tasks, self.dir)
    }
}

impl ExecutionPlan for StageTaskExec {
    fn name(&self) -> &'static str {
        "StageTask"
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
        vec![&self.input]
    }

    fn with_new_children(self: Arc<Self>, mut children: Vec<Arc<dyn ExecutionPlan>>) -> Result<Arc<dyn ExecutionPlan>> {
        let input = children.pop().ok_or_else(|| DataFusionError::Internal("StageTask needs its input".into()))?;
        Ok(Arc::new(Self {
            stage: self.stage,
            task: self.task,
            tasks: self.tasks,
            exchange: self.exchange.clone(),
            output_partitions: self.output_partitions,
            dir: self.dir.clone(),
            input,
            store: self.store.clone(),
            properties: Arc::clone(&self.properties),
        }))
    }

    fn execute(&self, partition: usize, context: Arc<TaskContext>) -> Result<SendableRecordBatchStream> {
        if partition != 0 {
            return Err(DataFusionError::Internal(format!("StageTask has one partition, not {partition}")));
        }
        let store = self
            .store
            .clone()
            .ok_or_else(|| DataFusionError::Internal("a stage task runs where no warehouse store is set".into()))?;
        let (stage, task, tasks, output_partitions) = (self.stage, self.task, self.tasks, self.output_partitions);
        let (exchange, dir, input) = (self.exchange.clone(), self.dir.clone(), Arc::clone(&self.input));
        let written = futures::stream::once(async move {
            let spec = TaskSpec { stage, task, tasks, exchange: &exchange, output_partitions, dir: &dir };
            let files = write_task(&spec, &input, Arc::new(StoreSink(store)), context).await?;
            files_batch(&files)
        });
        Ok(Box::pin(RecordBatchStreamAdapter::new(files_schema(), written)))
    }
}

/// What a remote task answers: one row per file segment it wrote.
fn files_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("partition", DataType::UInt64, false),
        Field::new("path", DataType::Utf8, false),
        Field::new("rows", DataType::UInt64, false),
        Field::new("start", DataType::UInt64, false),
        Field::new("end", DataType::UInt64, false),
    ]))
}

fn files_batch(files: &[(usize, StageFile)]) -> Result<RecordBatch> {
    let columns: Vec<ArrayRef> = vec![
        Arc::new(UInt64Array::from_iter_values(files.iter().map(|(p, _)| *p as u64))),
        Arc::new(StringArray::from_iter_values(files.iter().map(|(_, f)| f.path.as_ref()))),
        Arc::new(UInt64Array::from_iter_values(files.iter().map(|(_, f)| f.rows))),
        Arc::new(UInt64Array::from_iter_values(files.iter().map(|(_, f)| f.range.start))),
        Arc::new(UInt64Array::from_iter_values(files.iter().map(|(_, f)| f.range.end))),
    ];
    Ok(RecordBatch::try_new(files_schema(), columns)?)
}

/// The files a remote task says it wrote, by output partition.
///
/// # Errors
/// The batches are not a task's answer.
pub fn files_of(batches: &[RecordBatch]) -> Result<Vec<(usize, StageFile)>> {
    let bad = || DataFusionError::Internal("a worker's stage task answered something else than its files".into());
    let mut files = Vec::new();
    for batch in batches {
        if batch.num_columns() != 5 {
            return Err(bad());
        }
        let u64s = |i: usize| batch.column(i).as_primitive_opt::<UInt64Type>().ok_or_else(bad);
        let (partition, rows, start, end) = (u64s(0)?, u64s(2)?, u64s(3)?, u64s(4)?);
        let path = batch.column(1).as_string_opt::<i32>().ok_or_else(bad)?;
        for row in 0..batch.num_rows() {
            if path.is_null(row) {
                return Err(bad());
            }
            let file = StageFile {
                path: Path::parse(path.value(row)).map_err(|e| DataFusionError::External(Box::new(e)))?,
                rows: rows.value(row),
                range: start.value(row)..end.value(row),
            };
            files.push((partition.value(row) as usize, file));
        }
    }
    Ok(files)
}
