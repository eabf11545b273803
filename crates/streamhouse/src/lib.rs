//! The streamhouse server, assembled: layered [`config`], and [`start`], which
//! wires the engine (`streamhouse-engine`) to both protocol front ends
//! (`streamhouse-server`). The binary (`main.rs`) adds the command line,
//! logging and signal handling; tests call [`start`] directly.

pub mod config;
pub mod lock;
pub mod store;

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context as _;
pub use config::Config;
use lock::DataDirLock;
use streamhouse_engine::Engine;
use streamhouse_engine::warehouse::DynamicCatalog;
use streamhouse_server::RunningServer;

/// A started server: both listeners, the engine, and the lock on its data
/// directory, held until [`Server::shutdown`].
#[derive(Debug)]
pub struct Server {
    running: RunningServer,
    log: Option<streamhouse_storage::durable::log::LogStore>,
    lock: DataDirLock,
}

impl Server {
    /// Where the Postgres protocol listens.
    pub fn pg_addr(&self) -> SocketAddr {
        self.running.pg_addr()
    }

    /// Where Flight SQL listens.
    pub fn flight_addr(&self) -> SocketAddr {
        self.running.flight_addr()
    }

    /// The engine behind both front ends.
    pub fn engine(&self) -> &Engine {
        self.running.engine()
    }

    /// Shuts down gracefully (see [`RunningServer::shutdown`]), then
    /// releases the data directory.
    pub async fn shutdown(self) {
        self.running.shutdown().await;
        // A clean stop leaves plain files: nothing for the next start to replay.
        if let Some(log) = &self.log
            && let Err(e) = log.flush().await
        {
            tracing::warn!(error = %e, "cannot flush the write-ahead log at shutdown; the next start replays it");
        }
        drop(self.lock);
    }
}

/// Locks the data directory, opens the Dynamic Tables of the warehouse
/// ([`store::open`]: `<data_dir>/warehouse`, durable unless `storage.sync =
/// false`, or `storage.url`), builds the engine and starts both listeners.
///
/// # Errors
/// The data directory cannot be created or is in use by another server, the
/// engine rejects its configuration, or a listening address cannot be bound.
pub async fn start(config: &Config) -> anyhow::Result<Server> {
    let data_dir = &config.storage.data_dir;
    std::fs::create_dir_all(data_dir)
        .with_context(|| format!("cannot create data directory {}", data_dir.display()))?;
    let lock = DataDirLock::acquire(data_dir)?;
    let warehouse = data_dir.join("warehouse");
    let store::Warehouse { store, log } = store::open(&config.storage, &warehouse).await?;
    let location = config.storage.url.clone().unwrap_or_else(|| warehouse.display().to_string());
    let catalog = DynamicCatalog::open(store).await.with_context(|| format!("cannot open the tables in {location}"))?;
    let mut execution = config.execution.clone();
    execution.spill_dir.get_or_insert_with(|| data_dir.join("spill"));
    let engine = Engine::with_catalog(execution, Arc::new(catalog)).context("cannot start the query engine")?;
    let running = streamhouse_server::start(engine, &config.server).await?;
    Ok(Server { running, log, lock })
}
