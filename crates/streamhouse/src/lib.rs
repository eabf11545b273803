//! The streamhouse server, assembled: layered [`config`], and [`start`], which
//! wires the engine (`streamhouse-engine`) to both protocol front ends
//! (`streamhouse-server`). The binary (`main.rs`) adds the command line,
//! logging and signal handling; tests call [`start`] directly.

pub mod config;
pub mod lock;

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context as _;
pub use config::Config;
use lock::DataDirLock;
use object_store::ObjectStore;
use object_store::local::LocalFileSystem;
use streamhouse_engine::Engine;
use streamhouse_engine::warehouse::DynamicCatalog;
use streamhouse_server::RunningServer;
use streamhouse_storage::durable::{self, DurableStore};

/// A started server: both listeners, the engine, and the lock on its data
/// directory, held until [`Server::shutdown`].
#[derive(Debug)]
pub struct Server {
    running: RunningServer,
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
        drop(self.lock);
    }
}

/// Locks the data directory, opens the Dynamic Tables in its `warehouse/`
/// (durable writes unless `storage.sync = false`), builds the engine and
/// starts both listeners.
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
    std::fs::create_dir_all(&warehouse)
        .with_context(|| format!("cannot create warehouse directory {}", warehouse.display()))?;
    // Writes a crash interrupted left staged files no listing shows; with the lock held they are nobody's.
    let staged = durable::remove_staged_local_files(&warehouse)
        .with_context(|| format!("cannot clean up staged files in {}", warehouse.display()))?;
    if staged > 0 {
        tracing::info!(files = staged, "removed the staged files of writes interrupted by a crash");
    }
    let store: Arc<dyn ObjectStore> = if config.storage.sync {
        Arc::new(
            DurableStore::local(&warehouse)
                .with_context(|| format!("cannot open warehouse {}", warehouse.display()))?,
        )
    } else {
        tracing::warn!("storage.sync = false: acknowledged writes are not synced and can be lost in a power cut");
        Arc::new(
            LocalFileSystem::new_with_prefix(&warehouse)
                .with_context(|| format!("cannot open warehouse {}", warehouse.display()))?
                .with_automatic_cleanup(true),
        )
    };
    let catalog = DynamicCatalog::open(store)
        .await
        .with_context(|| format!("cannot open the tables in {}", warehouse.display()))?;
    let mut execution = config.execution.clone();
    execution.spill_dir.get_or_insert_with(|| data_dir.join("spill"));
    let engine = Engine::with_catalog(execution, Arc::new(catalog)).context("cannot start the query engine")?;
    let running = streamhouse_server::start(engine, &config.server).await?;
    Ok(Server { running, lock })
}
