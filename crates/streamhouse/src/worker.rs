//! `streamhouse worker`: the same binary in a worker role. It opens the
//! shared warehouse (`storage.url`, S3-compatible object storage) to read,
//! and serves datafusion-distributed's worker protocol on `cluster.listen`:
//! coordinators (servers whose `cluster.workers` name it) send it plan
//! fragments, which it runs with the engine's functions, reading Dynamic
//! Table files straight from the store. It answers heartbeats with its
//! identity (version and warehouse id: a coordinator of another version or
//! warehouse refuses it), its running tasks and its memory.
//!
//! Every call must present `cluster.secret` when one is set; a worker
//! without a secret listens on a loopback address only (anything else is
//! refused at start). The worker writes nothing to the warehouse but the
//! stage files of distributed BSP queries, under the server's spill prefix.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context as _;
use datafusion_distributed::WorkerResolver;
use streamhouse_engine::datafusion::error::DataFusionError;
use streamhouse_engine::datafusion::execution::disk_manager::{DiskManagerBuilder, DiskManagerMode};
use streamhouse_engine::datafusion::execution::runtime_env::RuntimeEnvBuilder;
use streamhouse_engine::exec::distributed;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::lock::DataDirLock;
use crate::store;

/// A worker has no view of the cluster of its own.
#[derive(Debug)]
struct NoPeers;

impl WorkerResolver for NoPeers {
    fn get_urls(&self) -> Result<Vec<url::Url>, DataFusionError> {
        Ok(Vec::new())
    }
}

/// A started worker: where it listens, until [`RunningWorker::shutdown`].
#[derive(Debug)]
pub struct RunningWorker {
    addr: SocketAddr,
    stop: CancellationToken,
    served: tokio::task::JoinHandle<()>,
    _lock: DataDirLock,
}

impl RunningWorker {
    /// Where the worker protocol listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops taking work and waits for the listener to close.
    pub async fn shutdown(self) {
        self.stop.cancel();
        let _ = self.served.await;
    }
}

/// Starts a worker on `config`'s warehouse, listening on `cluster.listen`.
///
/// # Errors
/// No shared warehouse (a local directory, or no server ever started on
/// it), a data directory in use, or an address that cannot be bound.
pub async fn start(config: &Config) -> anyhow::Result<RunningWorker> {
    let Some(url) = config.storage.url.as_deref().filter(|u| u.starts_with("s3://")) else {
        anyhow::bail!(
            "a worker reads the warehouse from shared object storage: set storage.url = \"s3://bucket/prefix\" \
             (the server's), not a local directory"
        );
    };
    let data_dir = &config.storage.data_dir;
    std::fs::create_dir_all(data_dir)
        .with_context(|| format!("cannot create data directory {}", data_dir.display()))?;
    let lock = DataDirLock::acquire(data_dir)?;
    let warehouse = store::open(&config.storage, &data_dir.join("warehouse")).await?;
    let id = store::read_warehouse_id(&warehouse.store)
        .await?
        .with_context(|| format!("no streamhouse warehouse at {url}: start the server on it first"))?;
    let identity = distributed::identity(&id);

    let mut runtime = RuntimeEnvBuilder::new().with_disk_manager_builder(
        DiskManagerBuilder::default().with_mode(DiskManagerMode::Directories(vec![data_dir.join("spill")])),
    );
    if let Some(limit) = config.execution.memory_limit.bytes() {
        let limit = usize::try_from(limit).context("execution.memory_limit is too large")?;
        runtime = runtime.with_memory_limit(limit, 1.0);
    }
    let runtime = runtime.build_arc().context("cannot set up the worker's memory and spill directory")?;
    let functions =
        streamhouse_engine::Engine::function_state(&config.execution).context("cannot set up the query engine")?;
    let channels = Arc::new(distributed::Channels::new(config.cluster.secret.as_ref())?);
    let worker = distributed::worker(&functions, Arc::clone(&warehouse.store), runtime, identity.clone(), channels);

    let listener = tokio::net::TcpListener::bind(&config.cluster.listen)
        .await
        .with_context(|| format!("cannot listen on {} (cluster.listen)", config.cluster.listen))?;
    let addr = listener.local_addr()?;
    // Secure by default: a plan fragment can read any file of the
    // warehouse, so a worker beyond its own machine takes work only from
    // servers that present the cluster's secret.
    anyhow::ensure!(
        addr.ip().is_loopback() || config.cluster.secret.is_some(),
        "cluster.listen = {:?} is not a loopback address, and no cluster.secret is set: a worker reachable from \
         other machines takes work only from servers that present the cluster's secret (set the same \
         cluster.secret on the server and its workers)",
        config.cluster.listen
    );
    let stop = CancellationToken::new();
    let observability = worker.with_observability_service(Arc::new(NoPeers));
    let server = tonic::transport::Server::builder()
        .layer(tonic::service::InterceptorLayer::new(distributed::check_secret(config.cluster.secret.as_ref())))
        .add_service(worker.into_worker_server())
        .add_service(observability)
        .serve_with_incoming_shutdown(
            tokio_stream::wrappers::TcpListenerStream::new(listener),
            stop.clone().cancelled_owned(),
        );
    let served = tokio::spawn(async move {
        if let Err(e) = server.await {
            tracing::error!(error = %e, "the worker's listener failed");
        }
    });
    tracing::info!(listen = %addr, warehouse = url, %identity, "streamhouse worker is ready");
    Ok(RunningWorker { addr, stop, served, _lock: lock })
}
