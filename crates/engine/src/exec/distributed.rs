//! Distributed MPP: a query spread over worker processes with
//! [datafusion-distributed](https://github.com/datafusion-contrib/datafusion-distributed).
//!
//! The coordinator (the server) plans as always; when distribution applies
//! (see [`Distribution::consider`]) it plans the query again with
//! datafusion-distributed's planner, which cuts the physical plan into
//! stages at its exchanges and ships every stage but the last to the
//! workers as datafusion-proto bytes. Our own plan nodes travel with
//! [`StreamhouseCodec`]: a Dynamic Table scan carries its pinned snapshot's
//! planned splits (file metadata, row groups, key ranges), so every worker
//! reads exactly the files the coordinator planned, straight from the shared
//! object store, and [`DynamicScanExec::deal`] shares the splits among the
//! scan stage's tasks.
//!
//! [`Cluster`] watches the configured workers (`cluster.workers`): a
//! heartbeat asks each for its identity (streamhouse version and warehouse
//! id: anything else is refused) and its running tasks and memory; one that
//! stops answering for `cluster.lost_after_ms` is lost and no longer given
//! work. `sys.workers` shows them.
//!
//! A worker ([`worker`]) is this engine's function registry and codec in a
//! datafusion-distributed `Worker`; it holds no catalog and writes nothing
//! but BSP stage files under the coordinator's spill prefix.
//!
//! Distributed BSP ([`super::bsp`]) uses the same workers and protocol
//! differently: each stage task travels on its own ([`run_task`]) as a
//! [`StageTaskExec`] over the stage's producer plan, the stages it reads
//! replaced by their files ([`StageReadExec`]); the worker writes the task's
//! output to the shared store and answers with the list of files, which the
//! coordinator commits in the stage's manifest. A task whose worker is lost
//! runs again elsewhere; what earlier stages wrote stays where it is.
//!
//! Every call to a worker presents `cluster.secret` ([`Channels`]); a
//! worker checks it ([`check_secret`]) and, without one, listens on
//! loopback only.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::execution::runtime_env::RuntimeEnv;
use datafusion::execution::{SessionState, SessionStateBuilder, TaskContext};
use datafusion::physical_plan::ExecutionPlan;
use datafusion_distributed::grpc::BoxCloneSyncChannel;
use datafusion_distributed::{
    ChannelResolver, DesiredTaskCountEvent, DesiredTaskCountEventResponse, DistributedExec, DistributedExt,
    DistributedLeafExec, ScaleUpLeafNodeEvent, ScaleUpLeafNodeEventResponse, SessionStateBuilderExt, Worker,
    WorkerQueryContext, WorkerResolver,
};
use datafusion_proto::physical_plan::{PhysicalExtensionCodec, PhysicalProtoConverterExtension};
use object_store::ObjectStore;
use tokio_util::sync::CancellationToken;
use url::Url;

use super::stage::{Exchange, Manifest, StageReadExec};
use super::task::{StageTaskExec, TaskHeader, TaskSpec};
use crate::config::{ClusterConfig, DistributedMode};
use crate::dynamic::scan::DynamicScanExec;
use crate::lock;
use crate::now_ms;

/// What a worker answers when asked who it is: the streamhouse version and
/// the warehouse it reads. The coordinator refuses a worker whose identity
/// differs from its own.
pub fn identity(warehouse_id: &str) -> String {
    format!("streamhouse {} warehouse {warehouse_id}", env!("CARGO_PKG_VERSION"))
}

/// The state of a configured worker, as the heartbeat last saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WorkerState {
    /// Not answered yet since the coordinator started.
    Joining,
    /// Answering, with the coordinator's identity: given work.
    Up,
    /// Answered before, silent for `cluster.lost_after_ms`: given no work.
    Lost,
    /// Answers with another version or warehouse: never given work.
    Refused,
}

impl WorkerState {
    /// `joining`, `up`, `lost` or `refused`.
    pub fn as_str(self) -> &'static str {
        match self {
            WorkerState::Joining => "joining",
            WorkerState::Up => "up",
            WorkerState::Lost => "lost",
            WorkerState::Refused => "refused",
        }
    }
}

/// One configured worker, as `sys.workers` shows it.
#[derive(Debug, Clone)]
pub struct WorkerStatus {
    pub url: Url,
    pub state: WorkerState,
    /// When it last answered (ms since the epoch).
    pub last_heartbeat_ms: Option<i64>,
    /// Tasks it runs now.
    pub running_tasks: u64,
    /// Its resident memory, bytes.
    pub memory_bytes: u64,
    /// What it said it is.
    pub identity: Option<String>,
    /// Why it is not up.
    pub error: Option<String>,
}

/// The configured workers and what the heartbeat knows of them.
#[derive(Debug)]
pub struct Cluster {
    identity: String,
    workers: Vec<Mutex<WorkerStatus>>,
    lost_after_ms: i64,
    /// Connections to the workers, presenting the cluster's secret.
    channels: Arc<Channels>,
}

impl Cluster {
    /// The workers `config` names, watched by a heartbeat every
    /// `cluster.heartbeat_interval_ms` until `stop`.
    ///
    /// # Errors
    /// A worker address that is not a URL or `host:port`.
    pub fn start(config: &ClusterConfig, identity: String, stop: CancellationToken) -> crate::Result<Arc<Self>> {
        let interval = Duration::from_millis(config.heartbeat_interval_ms.max(50));
        // A heartbeat waits this long for an answer (and a connection).
        let patience = interval.max(Duration::from_secs(2));
        let channels = Arc::new(Channels::new(config.secret.as_ref())?);
        let mut workers = Vec::with_capacity(config.workers.len());
        let mut endpoints = Vec::with_capacity(config.workers.len());
        for address in &config.workers {
            let url = worker_url(address)?;
            let endpoint = tonic::transport::Endpoint::from_shared(url.to_string())
                .map_err(|e| crate::Error::invalid(format!("cluster.workers: {address:?}: {e}")))?
                .connect_timeout(patience)
                .timeout(patience);
            endpoints.push(endpoint);
            workers.push(Mutex::new(WorkerStatus {
                url,
                state: WorkerState::Joining,
                last_heartbeat_ms: None,
                running_tasks: 0,
                memory_bytes: 0,
                identity: None,
                error: None,
            }));
        }
        let cluster = Arc::new(Self { identity, workers, lost_after_ms: config.lost_after_ms as i64, channels });
        if !cluster.workers.is_empty() {
            let watched = Arc::clone(&cluster);
            tokio::spawn(async move {
                // Each connects when first used, and again after a failure.
                let channels: Vec<BoxCloneSyncChannel> =
                    endpoints.iter().map(|e| watched.channels.wrap(e.connect_lazy())).collect();
                loop {
                    let beats = watched
                        .workers
                        .iter()
                        .zip(&channels)
                        .map(|(worker, channel)| watched.heartbeat(worker, channel.clone(), patience));
                    futures::future::join_all(beats).await;
                    tokio::select! {
                        () = stop.cancelled() => break,
                        () = tokio::time::sleep(interval) => {}
                    }
                }
            });
        }
        Ok(cluster)
    }

    /// Every configured worker's status.
    pub fn workers(&self) -> Vec<WorkerStatus> {
        self.workers.iter().map(|w| lock(w).clone()).collect()
    }

    /// The workers that are up.
    pub fn live(&self) -> Vec<Url> {
        self.workers
            .iter()
            .filter_map(|w| {
                let w = lock(w);
                (w.state == WorkerState::Up).then(|| w.url.clone())
            })
            .collect()
    }

    /// Marks `url` lost at once (a query found it gone), until it answers a heartbeat again.
    pub fn suspect(&self, url: &Url, why: &str) {
        for worker in &self.workers {
            let mut w = lock(worker);
            if &w.url == url && w.state == WorkerState::Up {
                tracing::warn!(worker = %url, %why, "worker lost");
                w.state = WorkerState::Lost;
                w.error = Some(why.to_string());
            }
        }
    }

    /// Whether `url` is up, as far as the heartbeat knows.
    pub fn is_up(&self, url: &Url) -> bool {
        self.workers.iter().any(|w| {
            let w = lock(w);
            &w.url == url && w.state == WorkerState::Up
        })
    }

    async fn heartbeat(&self, worker: &Mutex<WorkerStatus>, channel: BoxCloneSyncChannel, patience: Duration) {
        let url = lock(worker).url.clone();
        let answer = match tokio::time::timeout(patience, ask(channel)).await {
            Ok(answer) => answer,
            Err(_) => Err(format!("no answer within {} ms", patience.as_millis())),
        };
        let now = now_ms();
        let mut w = lock(worker);
        match answer {
            Ok((identity, running, memory)) => {
                w.last_heartbeat_ms = Some(now);
                w.running_tasks = running;
                w.memory_bytes = memory;
                if identity == self.identity {
                    if w.state != WorkerState::Up {
                        tracing::info!(worker = %url, "worker up");
                    }
                    w.state = WorkerState::Up;
                    w.error = None;
                } else {
                    if w.state != WorkerState::Refused {
                        tracing::error!(worker = %url, theirs = %identity, ours = %self.identity, "worker refused");
                    }
                    w.state = WorkerState::Refused;
                    w.error = Some(format!(
                        "refused: the worker runs \"{identity}\", this server \"{}\" (same version and warehouse needed)",
                        self.identity
                    ));
                }
                w.identity = Some(identity);
            }
            Err(error) if error.starts_with("refused:") => {
                if w.state != WorkerState::Refused {
                    tracing::error!(worker = %url, %error, "worker refused");
                }
                w.last_heartbeat_ms = Some(now);
                w.state = WorkerState::Refused;
                w.error = Some(error);
            }
            Err(error) => {
                let silent_for = w.last_heartbeat_ms.map(|at| now - at);
                match w.state {
                    WorkerState::Up if silent_for.is_some_and(|ms| ms >= self.lost_after_ms) => {
                        tracing::warn!(worker = %url, %error, "worker lost");
                        w.state = WorkerState::Lost;
                    }
                    WorkerState::Refused => w.state = WorkerState::Lost,
                    _ => {}
                }
                if w.state != WorkerState::Up {
                    w.error = Some(format!("unreachable: {error}"));
                }
            }
        }
    }
}

/// A worker's identity, running tasks and resident memory.
async fn ask(channel: BoxCloneSyncChannel) -> std::result::Result<(String, u64, u64), String> {
    use datafusion_distributed::grpc::{GetTaskProgressRequest, ObservabilityServiceClient};
    let mut client = datafusion_distributed::grpc::create_worker_client(channel.clone());
    let info = client.get_worker_info(datafusion_distributed::GetWorkerInfoRequest {}).await.map_err(|e| {
        let why = crate::error::describe(&e);
        if why.contains("cluster.secret") {
            format!("refused: the worker does not take this server's cluster.secret ({})", super::short(&why))
        } else {
            why
        }
    })?;
    let progress = ObservabilityServiceClient::new(channel)
        .get_task_progress(GetTaskProgressRequest {})
        .await
        .map_err(|e| e.message().to_string())?
        .into_inner();
    let memory = progress.worker_metrics.map_or(0, |m| m.rss_bytes);
    Ok((info.version, progress.tasks.len() as u64, memory))
}

/// `http://host:port` for a configured worker address (`host:port` or a URL).
fn worker_url(address: &str) -> crate::Result<Url> {
    let text = if address.contains("://") { address.to_string() } else { format!("http://{address}") };
    let url = Url::parse(&text)
        .map_err(|e| crate::Error::invalid(format!("cluster.workers: {address:?} is not a worker address: {e}")))?;
    if url.port_or_known_default().is_none() || url.host_str().is_none() {
        return Err(crate::Error::invalid(format!("cluster.workers: {address:?} names no host and port")));
    }
    Ok(url)
}

/// The header a cluster's secret travels in.
const SECRET_HEADER: &str = "authorization";

/// Connections to workers (one per address, kept), every call presenting
/// the cluster's secret: the coordinator's queries and heartbeat, and a
/// worker's calls to the workers of the stage below.
#[derive(Debug)]
pub struct Channels {
    secret: Option<tonic::metadata::AsciiMetadataValue>,
    open: Mutex<std::collections::HashMap<Url, BoxCloneSyncChannel>>,
}

impl Channels {
    /// Connections that present `secret`.
    ///
    /// # Errors
    /// A secret that cannot be sent in a header (not visible ASCII).
    pub fn new(secret: Option<&crate::config::Secret>) -> crate::Result<Self> {
        let secret = secret
            .map(|s| {
                format!("Bearer {}", s.0)
                    .parse::<tonic::metadata::AsciiMetadataValue>()
                    .map_err(|_| crate::Error::invalid("cluster.secret must be printable ASCII without line breaks"))
            })
            .transpose()?;
        Ok(Self { secret, open: Mutex::default() })
    }

    /// `channel`, sending the secret with every call.
    fn wrap(&self, channel: tonic::transport::Channel) -> BoxCloneSyncChannel {
        BoxCloneSyncChannel::new(WithSecret { inner: channel, secret: self.secret.clone() })
    }

    /// The connection to `url`, opened on first use.
    fn channel(&self, url: &Url) -> DfResult<BoxCloneSyncChannel> {
        let mut open = lock(&self.open);
        if let Some(channel) = open.get(url) {
            return Ok(channel.clone());
        }
        let endpoint = tonic::transport::Endpoint::from_shared(url.to_string())
            .map_err(|e| DataFusionError::External(Box::new(e)))?
            .connect_timeout(Duration::from_secs(5))
            // A worker whose machine went silent is found out, not waited for.
            .http2_keep_alive_interval(Duration::from_secs(10))
            .keep_alive_timeout(Duration::from_secs(20))
            .keep_alive_while_idle(true);
        let channel = self.wrap(endpoint.connect_lazy());
        open.insert(url.clone(), channel.clone());
        Ok(channel)
    }
}

/// A channel that adds the cluster's secret to every request.
#[derive(Clone)]
struct WithSecret {
    inner: tonic::transport::Channel,
    secret: Option<tonic::metadata::AsciiMetadataValue>,
}

impl tonic::codegen::Service<tonic::codegen::http::Request<tonic::body::Body>> for WithSecret {
    type Response = tonic::codegen::http::Response<tonic::body::Body>;
    type Error = tonic::transport::Error;
    type Future = <tonic::transport::Channel as tonic::codegen::Service<
        tonic::codegen::http::Request<tonic::body::Body>,
    >>::Future;

    fn poll_ready(&mut self, cx: &mut std::task::Context<'_>) -> std::task::Poll<Result<(), Self::Error>> {
        tonic::codegen::Service::poll_ready(&mut self.inner, cx)
    }

    fn call(&mut self, mut request: tonic::codegen::http::Request<tonic::body::Body>) -> Self::Future {
        if let Some(secret) = &self.secret
            && let Ok(value) = tonic::codegen::http::HeaderValue::from_bytes(secret.as_encoded_bytes())
        {
            request.headers_mut().insert(SECRET_HEADER, value);
        }
        self.inner.call(request)
    }
}

/// [`Channels`] as datafusion-distributed asks for them.
#[derive(Debug, Clone)]
struct Resolver(Arc<Channels>);

#[async_trait::async_trait]
impl ChannelResolver for Resolver {
    async fn get_worker_client_for_url(&self, url: &Url) -> DfResult<Box<dyn datafusion_distributed::WorkerChannel>> {
        Ok(datafusion_distributed::grpc::create_worker_client(self.0.channel(url)?))
    }
}

/// A worker's check of every call: with a `secret`, only callers that
/// present it get in (compared in constant time); without one, everyone
/// (the worker listens on loopback only then).
pub fn check_secret(
    secret: Option<&crate::config::Secret>,
) -> impl FnMut(tonic::Request<()>) -> std::result::Result<tonic::Request<()>, tonic::Status> + Clone + Send + 'static {
    let expected = secret.map(|s| format!("Bearer {}", s.0).into_bytes());
    move |request: tonic::Request<()>| {
        let Some(expected) = &expected else { return Ok(request) };
        let given = request.metadata().get(SECRET_HEADER).map(|v| v.as_bytes()).unwrap_or_default();
        let same =
            given.len() == expected.len() && given.iter().zip(expected).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0;
        if same {
            Ok(request)
        } else {
            Err(tonic::Status::unauthenticated("this worker takes work only from servers that present cluster.secret"))
        }
    }
}

/// Runs `plan` (one partition) on the worker at `url` as a task of its
/// own, through datafusion-distributed's worker protocol, and collects what
/// it produces. Fails as soon as `cluster`'s heartbeat finds the worker lost.
///
/// # Errors
/// The task's own errors, as the worker sent them back; the worker's
/// failure ([`worker_failure`] recognizes it).
pub async fn run_task(
    task: &Arc<TaskContext>,
    cluster: &Cluster,
    url: &Url,
    plan: Arc<dyn ExecutionPlan>,
) -> DfResult<Vec<datafusion::arrow::array::RecordBatch>> {
    use datafusion::physical_plan::metrics::ExecutionPlanMetricsSet;
    use datafusion_distributed::{ExecuteTaskRequest, MaybeEncoded, ProducerHead, SetPlanRequest, TaskKey};
    use futures::StreamExt;
    let run = async {
        let resolver = datafusion_distributed::get_distributed_channel_resolver(task);
        let mut client = resolver.get_worker_client_for_url(url).await?;
        let id = u128::from_le_bytes(crate::access::scram::random_bytes::<16>());
        let key = TaskKey { query_id: uuid::Uuid::from_u128(id), stage_id: 1, task_number: 0 };
        // The worker keeps the task until this stream ends (when `done` is dropped).
        let (done, ended) = tokio::sync::oneshot::channel::<()>();
        let c2w = futures::stream::once(async move {
            let _ = ended.await;
        })
        .filter_map(|()| async { None })
        .boxed();
        let started_ns = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| usize::try_from(d.as_nanos()).unwrap_or(usize::MAX));
        let request = SetPlanRequest {
            task_key: key,
            task_count: 1,
            plan: MaybeEncoded::Decoded(plan),
            work_unit_feed_declarations: Vec::new(),
            target_worker_url: url.clone(),
            query_start_time_ns: started_ns,
        };
        let headers = tonic::codegen::http::HeaderMap::new();
        let mut replies =
            client.coordinator_channel(headers.clone(), request, c2w, ExecutionPlanMetricsSet::new(), task).await?;
        // The worker's messages (its metrics) are not needed, but must be read.
        let drained = tokio::spawn(async move { while replies.next().await.is_some() {} });
        let execute = ExecuteTaskRequest {
            task_key: key,
            target_partition_start: 0,
            target_partition_end: 1,
            producer_head: ProducerHead::None,
        };
        let result = async {
            let streams = client.execute_task(headers, execute, ExecutionPlanMetricsSet::new(), task).await?;
            let mut batches = Vec::new();
            for mut stream in streams {
                while let Some(batch) = stream.next().await {
                    batches.push(batch?);
                }
            }
            Ok::<_, DataFusionError>(batches)
        }
        .await;
        drop(done);
        drained.abort();
        result
    };
    let lost = async {
        loop {
            tokio::time::sleep(Duration::from_millis(200)).await;
            if !cluster.is_up(url) {
                break;
            }
        }
    };
    tokio::select! {
        result = run => result,
        () = lost => Err(DataFusionError::External(Box::new(tonic::Status::unavailable(format!(
            "Distributed DataFusion worker '{url}' was lost while it ran a task"
        ))))),
    }
}

/// The live workers, for datafusion-distributed's planner.
#[derive(Debug)]
struct LiveWorkers(Arc<Cluster>);

impl WorkerResolver for LiveWorkers {
    fn get_urls(&self) -> DfResult<Vec<Url>> {
        Ok(self.0.live())
    }
}

/// Encodes and decodes the plan nodes of ours that travel to workers.
#[derive(Debug, Clone, Default)]
pub struct StreamhouseCodec {
    /// The warehouse's store, to read scans from (a worker's).
    store: Option<Arc<dyn ObjectStore>>,
}

/// Tags of our encoded nodes: a [`DynamicScanExec`], a BSP stage task
/// ([`StageTaskExec`]) and a stage's output read back ([`StageReadExec`]).
const SCAN_TAG: u8 = 1;
const STAGE_TASK_TAG: u8 = 2;
const STAGE_READ_TAG: u8 = 3;

impl StreamhouseCodec {
    fn store(&self, what: &str) -> DfResult<Arc<dyn ObjectStore>> {
        self.store
            .clone()
            .ok_or_else(|| DataFusionError::Internal(format!("{what} was sent to a process without a warehouse")))
    }
}

/// `header` (JSON) and `rest`, as one buffer: the header's length first.
fn frame(tag: u8, header: &impl serde::Serialize, rest: &[u8], buf: &mut Vec<u8>) -> DfResult<()> {
    let header = serde_json::to_vec(header).map_err(|e| DataFusionError::External(Box::new(e)))?;
    buf.push(tag);
    buf.extend_from_slice(&(header.len() as u64).to_le_bytes());
    buf.extend_from_slice(&header);
    buf.extend_from_slice(rest);
    Ok(())
}

/// The header and the rest of a [`frame`]d buffer (after its tag).
fn unframe<T: serde::de::DeserializeOwned>(buf: &[u8]) -> DfResult<(T, &[u8])> {
    let bad = || DataFusionError::Internal("a malformed streamhouse plan node was sent to this worker".into());
    let (len, rest) = buf.split_first_chunk::<8>().ok_or_else(bad)?;
    let len = usize::try_from(u64::from_le_bytes(*len)).map_err(|_| bad())?;
    if rest.len() < len {
        return Err(bad());
    }
    let (header, rest) = rest.split_at(len);
    let header = serde_json::from_slice(header).map_err(|e| DataFusionError::External(Box::new(e)))?;
    Ok((header, rest))
}

/// A schema as an empty Arrow IPC stream.
fn schema_bytes(schema: &datafusion::arrow::datatypes::Schema) -> DfResult<Vec<u8>> {
    let mut writer = datafusion::arrow::ipc::writer::StreamWriter::try_new(Vec::new(), schema)?;
    writer.finish()?;
    Ok(writer.into_inner()?)
}

fn schema_of(bytes: &[u8]) -> DfResult<datafusion::arrow::datatypes::SchemaRef> {
    let reader = datafusion::arrow::ipc::reader::StreamReader::try_new(std::io::Cursor::new(bytes), None)?;
    Ok(reader.schema())
}

/// What travels of a [`StageReadExec`].
#[derive(serde::Serialize, serde::Deserialize)]
struct ReadHeader {
    stage: usize,
    manifest: Manifest,
}

impl PhysicalExtensionCodec for StreamhouseCodec {
    fn try_decode(
        &self,
        buf: &[u8],
        inputs: &[Arc<dyn ExecutionPlan>],
        ctx: &TaskContext,
        proto_converter: &dyn PhysicalProtoConverterExtension,
    ) -> DfResult<Arc<dyn ExecutionPlan>> {
        match buf.split_first() {
            Some((&SCAN_TAG, rest)) => {
                Ok(Arc::new(DynamicScanExec::decode(rest, self.store("a Dynamic Table scan")?)?))
            }
            Some((&STAGE_TASK_TAG, rest)) => {
                let (header, _) = unframe::<TaskHeader>(rest)?;
                let [input] = inputs else {
                    return Err(DataFusionError::Internal("a stage task needs its input".into()));
                };
                let exchange = match &header.shuffle {
                    None => Exchange::Gather,
                    Some(bytes) => {
                        use prost::Message as _;
                        let proto = datafusion_proto::protobuf::Partitioning::decode(bytes.as_slice())
                            .map_err(|e| DataFusionError::External(Box::new(e)))?;
                        let decode = datafusion_proto::physical_plan::PhysicalPlanDecodeContext::new(ctx, self);
                        let partitioning = datafusion_proto::physical_plan::from_proto::parse_protobuf_partitioning(
                            Some(&proto),
                            &decode,
                            &input.schema(),
                            proto_converter,
                        )?
                        .ok_or_else(|| {
                            DataFusionError::Internal("a stage task's shuffle has no partitioning".into())
                        })?;
                        Exchange::Shuffle(partitioning)
                    }
                };
                let dir =
                    object_store::path::Path::parse(&header.dir).map_err(|e| DataFusionError::External(Box::new(e)))?;
                let spec = TaskSpec {
                    stage: header.stage,
                    task: header.task,
                    tasks: header.tasks,
                    exchange: &exchange,
                    output_partitions: header.output_partitions,
                    dir: &dir,
                };
                Ok(Arc::new(StageTaskExec::new(&spec, Arc::clone(input), Some(self.store("a stage task")?))))
            }
            Some((&STAGE_READ_TAG, rest)) => {
                let (header, schema) = unframe::<ReadHeader>(rest)?;
                let store = self.store("a stage's output")?;
                Ok(Arc::new(StageReadExec::new(header.stage, Arc::new(header.manifest), schema_of(schema)?, store)))
            }
            _ => Err(DataFusionError::Internal("an unknown streamhouse plan node was sent to this worker".into())),
        }
    }

    fn try_encode(
        &self,
        node: Arc<dyn ExecutionPlan>,
        buf: &mut Vec<u8>,
        proto_converter: &dyn PhysicalProtoConverterExtension,
    ) -> DfResult<()> {
        if let Some(scan) = node.downcast_ref::<DynamicScanExec>() {
            buf.push(SCAN_TAG);
            buf.extend_from_slice(&scan.encode()?);
            return Ok(());
        }
        if let Some(task) = node.downcast_ref::<StageTaskExec>() {
            let header = task.header(|partitioning| {
                use prost::Message as _;
                let proto = datafusion_proto::physical_plan::to_proto::serialize_partitioning(
                    partitioning,
                    self,
                    proto_converter,
                )?;
                Ok(proto.encode_to_vec())
            })?;
            return frame(STAGE_TASK_TAG, &header, &[], buf);
        }
        if let Some(read) = node.downcast_ref::<StageReadExec>() {
            let header = ReadHeader { stage: read.stage(), manifest: read.manifest().as_ref().clone() };
            return frame(STAGE_READ_TAG, &header, &schema_bytes(&read.schema())?, buf);
        }
        Err(DataFusionError::NotImplemented(format!("{} cannot run on a worker", node.name())))
    }
}

/// What decides whether a query is distributed, and plans it so.
#[derive(Debug)]
pub struct Distribution {
    pub cluster: Arc<Cluster>,
    pub mode: DistributedMode,
    /// In `auto`: the least bytes the plan's scans read for it to be distributed.
    pub min_bytes: u64,
    /// Scan bytes per task of a scan stage.
    pub bytes_per_task: u64,
    /// The shared warehouse store: distributed BSP's stage files go there.
    pub store: Arc<dyn ObjectStore>,
    /// Under which prefix of `store` (this server's own, emptied at its start).
    pub spill_prefix: object_store::path::Path,
}

impl Distribution {
    /// The same workers, used as `mode` says (a session's `distributed`).
    pub fn with_mode(&self, mode: DistributedMode) -> Self {
        Self {
            cluster: Arc::clone(&self.cluster),
            mode,
            min_bytes: self.min_bytes,
            bytes_per_task: self.bytes_per_task,
            store: Arc::clone(&self.store),
            spill_prefix: self.spill_prefix.clone(),
        }
    }

    /// Why `plan` (a local MPP plan) should be distributed, or `None` with
    /// why not: the mode, the workers up, the scans' bytes, and whether
    /// every node can travel.
    pub fn consider(&self, plan: &Arc<dyn ExecutionPlan>) -> std::result::Result<String, String> {
        if self.mode == DistributedMode::Off {
            return Err("execution.distributed is off".into());
        }
        let live = self.cluster.live().len();
        if live == 0 {
            return Err(format!("no worker is up (of {} configured)", self.cluster.workers.len()));
        }
        let mut scanned = 0u64;
        let mut scans = 0usize;
        let _ = plan.apply(|node| {
            if let Some(scan) = node.downcast_ref::<DynamicScanExec>() {
                scanned += scan.bytes();
                scans += 1;
            }
            Ok(TreeNodeRecursion::Continue)
        });
        if scans == 0 {
            return Err("it reads no Dynamic Table".into());
        }
        if self.mode == DistributedMode::Auto && scanned < self.min_bytes {
            return Err(format!(
                "its scans read {}, less than execution.distributed_min_bytes ({})",
                super::bytes(scanned),
                super::bytes(self.min_bytes)
            ));
        }
        let codec = StreamhouseCodec::default();
        // Planned for workers, shared subplans run once per use (`Distribution::state`).
        let unshared = super::shared::unshare(Arc::clone(plan)).map_err(|e| e.to_string())?;
        if let Err(e) = datafusion_proto::bytes::physical_plan_to_bytes_with_extension_codec(unshared, &codec) {
            let why = crate::error::describe(&e);
            return Err(format!("part of it cannot run on a worker ({})", super::short(&why)));
        }
        let why = match self.mode {
            DistributedMode::On => "execution.distributed is on".to_string(),
            _ => format!(
                "its scans read {}, at least execution.distributed_min_bytes ({})",
                super::bytes(scanned),
                super::bytes(self.min_bytes)
            ),
        };
        Ok(format!("{why}; {live} workers up"))
    }

    /// `state`, planning for the live workers.
    pub fn state(&self, state: &SessionState) -> DfResult<SessionState> {
        let per_task = self.bytes_per_task.max(1);
        // `on` uses every worker up, however little a scan reads.
        let floor = if self.mode == DistributedMode::On { self.cluster.live().len().max(1) } else { 1 };
        let desired = move |ev: DesiredTaskCountEvent<'_>| {
            let scan = ev.plan.downcast_ref::<DynamicScanExec>()?;
            let tasks = (scan.bytes().div_ceil(per_task) as usize).max(floor);
            Some(Ok(DesiredTaskCountEventResponse::desired(tasks)))
        };
        let scale_up = |ev: ScaleUpLeafNodeEvent<'_>| {
            let scan = ev.plan.downcast_ref::<DynamicScanExec>()?;
            if ev.task_count <= 1 {
                return None;
            }
            let variants = scan.deal(ev.task_count).into_iter().map(|s| Arc::new(s) as Arc<dyn ExecutionPlan>);
            Some(
                DistributedLeafExec::try_new(Arc::clone(ev.plan), variants)
                    .map(|leaf| ScaleUpLeafNodeEventResponse::new(Arc::new(leaf) as Arc<dyn ExecutionPlan>)),
            )
        };
        // Scans plan splits for every worker up, to be dealt to their tasks.
        let splits = crate::dynamic::scan::SplitsPerPartition(self.cluster.live().len().max(1));
        // Parts of the plan run on workers: a subplan used twice runs twice.
        let config =
            state.config().clone().with_extension(Arc::new(splits)).with_extension(Arc::new(super::shared::Unshared));
        let mut builder = SessionStateBuilder::new_from_existing(state.clone());
        // A collected build side is broadcast to every worker here: the
        // distributed planner's own choice, not the local cost.
        if let Some(optimizer) = builder.physical_optimizers() {
            optimizer.rules.retain(|rule| rule.name() != super::joins::NAME);
        }
        Ok(builder
            .with_config(config)
            .with_distributed_worker_resolver(LiveWorkers(Arc::clone(&self.cluster)))
            .with_distributed_channel_resolver(Resolver(Arc::clone(&self.cluster.channels)))
            .with_distributed_user_codec(StreamhouseCodec::default())
            .with_distributed_desired_task_count_handler(desired)
            .with_distributed_scale_up_leaf_node_handler(scale_up)
            .with_distributed_planner()
            .build())
    }
}

/// Whether `plan` runs across workers.
pub fn is_distributed(plan: &Arc<dyn ExecutionPlan>) -> bool {
    plan.downcast_ref::<DistributedExec>().is_some()
}

/// The stages of a distributed plan, drawn.
pub fn render(plan: &Arc<dyn ExecutionPlan>, metrics: bool) -> String {
    datafusion_distributed::display_plan_ascii(plan.as_ref(), metrics)
}

/// The stages of a distributed plan that has run, with every task's
/// metrics (the workers send theirs back), and the bytes that crossed the
/// network between tasks.
pub async fn render_analyzed(plan: &Arc<dyn ExecutionPlan>) -> String {
    use datafusion::physical_plan::metrics::MetricValue;
    use datafusion_distributed::{DistributedMetricsFormat, rewrite_distributed_plan_with_metrics};
    let plan = match rewrite_distributed_plan_with_metrics(Arc::clone(plan), DistributedMetricsFormat::Aggregated).await
    {
        Ok(plan) => plan,
        Err(e) => {
            tracing::warn!(error = %e, "cannot gather the workers' metrics");
            Arc::clone(plan)
        }
    };
    let mut shuffled = 0usize;
    let _ = plan.apply(|node| {
        for metric in node.metrics().iter().flat_map(|m| m.iter().cloned().collect::<Vec<_>>()) {
            if let MetricValue::Custom { name, value } = metric.value()
                && name == "bytes_transferred"
            {
                shuffled += value.as_usize();
            }
        }
        Ok(TreeNodeRecursion::Continue)
    });
    format!("{}\nbytes between tasks: {shuffled}\n", datafusion_distributed::display_plan_ascii(plan.as_ref(), true))
}

/// Whether `error` says a worker could not be reached or went away (as
/// opposed to an error of the query itself, which workers send back as it
/// was), and which worker when it says.
pub fn worker_failure(error: &DataFusionError) -> Option<Option<Url>> {
    let mut found = None;
    let mut current = Some(error);
    while let Some(e) = current {
        let text = e.to_string();
        // datafusion-distributed's words for a worker it cannot reach, and
        // for a task whose plan never arrived (its coordinator's call failed).
        if text.contains("Distributed DataFusion worker")
            || text.contains("Distributed DataFusion channel")
            || text.contains("timed-out while waiting for the plan")
        {
            let url = text.split('\'').nth(1).and_then(|u| Url::parse(u).ok());
            return Some(url);
        }
        if let DataFusionError::External(inner) = e
            && let Some(status) = inner.downcast_ref::<tonic::Status>()
        {
            use tonic::Code;
            if matches!(status.code(), Code::Unavailable | Code::Cancelled | Code::Unknown | Code::DeadlineExceeded) {
                found = Some(None);
            }
        }
        // A status that reached us as text (wrapped by a layer that kept only
        // its message): tonic's words for `Unavailable` — a worker that
        // refused the connection (it was killed) or went away.
        if found.is_none() && text.contains("The service is currently unavailable") {
            found = Some(None);
        }
        current = match e {
            DataFusionError::Context(_, inner) => Some(inner.as_ref()),
            DataFusionError::Shared(inner) => Some(inner.as_ref()),
            DataFusionError::External(inner) => inner.downcast_ref::<DataFusionError>(),
            _ => None,
        };
    }
    found
}

/// A worker: runs the plan fragments coordinators send, with this engine's
/// functions, reading scans from `store` (the shared warehouse) and writing
/// BSP stage files there, in `runtime` (its memory limit and spill
/// directory); it reaches other workers through `channels`.
pub fn worker(
    functions: &SessionState,
    store: Arc<dyn ObjectStore>,
    runtime: Arc<RuntimeEnv>,
    identity: String,
    channels: Arc<Channels>,
) -> Worker {
    let scalars: Vec<_> = functions.scalar_functions().values().cloned().collect();
    let aggregates: Vec<_> = functions.aggregate_functions().values().cloned().collect();
    let windows: Vec<_> = functions.window_functions().values().cloned().collect();
    let codec = StreamhouseCodec { store: Some(store) };
    let batch_size = functions.config().batch_size();
    let time_zone = functions.config().options().execution.time_zone.clone();
    Worker::from_session_builder(move |ctx: WorkerQueryContext| {
        let (scalars, aggregates, windows, codec) =
            (scalars.clone(), aggregates.clone(), windows.clone(), codec.clone());
        let resolver = Resolver(Arc::clone(&channels));
        let time_zone = time_zone.clone();
        async move {
            let mut builder = ctx
                .builder
                .with_scalar_functions(scalars)
                .with_aggregate_functions(aggregates)
                .with_window_functions(windows)
                .with_distributed_user_codec(codec)
                .with_distributed_channel_resolver(resolver);
            let config = builder.config().get_or_insert_default();
            config.options_mut().execution.time_zone = time_zone;
            *config = std::mem::take(config).with_batch_size(batch_size);
            Ok(builder.build())
        }
    })
    .with_runtime_env(runtime)
    .with_version(identity)
}

/// `sys.workers`: the configured workers, computed when scanned.
#[derive(Debug)]
pub struct WorkersTable {
    cluster: Option<Arc<Cluster>>,
    schema: datafusion::arrow::datatypes::SchemaRef,
}

impl WorkersTable {
    /// The table over `cluster` (none: no worker is configured).
    pub fn new(cluster: Option<Arc<Cluster>>) -> Self {
        use datafusion::arrow::datatypes::{DataType, Field, Schema, TimeUnit};
        let schema = Arc::new(Schema::new(vec![
            Field::new("address", DataType::Utf8, false),
            Field::new("state", DataType::Utf8, false),
            Field::new("last_heartbeat", DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into())), true),
            Field::new("running_tasks", DataType::Int64, false),
            Field::new("memory_bytes", DataType::Int64, false),
            Field::new("identity", DataType::Utf8, true),
            Field::new("error", DataType::Utf8, true),
        ]));
        Self { cluster, schema }
    }
}

#[async_trait::async_trait]
impl crate::catalog::computed::ComputedRows for WorkersTable {
    fn schema(&self) -> datafusion::arrow::datatypes::SchemaRef {
        Arc::clone(&self.schema)
    }

    async fn rows(&self) -> DfResult<Vec<datafusion::arrow::array::RecordBatch>> {
        use datafusion::arrow::array::{ArrayRef, Int64Array, RecordBatch, StringArray, TimestampMillisecondArray};
        let workers = self.cluster.as_ref().map(|c| c.workers()).unwrap_or_default();
        let clamp = |n: u64| i64::try_from(n).unwrap_or(i64::MAX);
        let columns: Vec<ArrayRef> = vec![
            Arc::new(StringArray::from_iter_values(workers.iter().map(|w| w.url.to_string()))),
            Arc::new(StringArray::from_iter_values(workers.iter().map(|w| w.state.as_str()))),
            Arc::new(
                TimestampMillisecondArray::from(workers.iter().map(|w| w.last_heartbeat_ms).collect::<Vec<_>>())
                    .with_timezone("UTC"),
            ),
            Arc::new(Int64Array::from_iter_values(workers.iter().map(|w| clamp(w.running_tasks)))),
            Arc::new(Int64Array::from_iter_values(workers.iter().map(|w| clamp(w.memory_bytes)))),
            Arc::new(StringArray::from(workers.iter().map(|w| w.identity.clone()).collect::<Vec<_>>())),
            Arc::new(StringArray::from(workers.iter().map(|w| w.error.clone()).collect::<Vec<_>>())),
        ];
        Ok(vec![RecordBatch::try_new(Arc::clone(&self.schema), columns)?])
    }
}

/// `error` as the statement's error: a worker's failure becomes 40001
/// (serialization_failure), which clients and connection pools retry, and
/// says so; any other error is left as it is.
pub fn retriable(error: DataFusionError) -> DataFusionError {
    match worker_failure(&error) {
        Some(worker) => {
            let who = worker.map_or_else(|| "a worker".to_string(), |url| format!("worker {url}"));
            let message = format!(
                "{who} failed while the distributed query ran ({}); the statement was abandoned and can be retried",
                super::short(&crate::error::describe(&error))
            );
            DataFusionError::External(Box::new(crate::Error::new(crate::StatusCode::SerializationFailure, message)))
        }
        None => error,
    }
}
