//! The streamhouse server, assembled: layered [`config`], and [`start`], which
//! wires the engine (`streamhouse-engine`) to both protocol front ends
//! (`streamhouse-server`). The binary (`main.rs`) adds the command line,
//! logging and signal handling; tests call [`start`] directly.

pub mod config;

use std::sync::Arc;

use anyhow::Context as _;
pub use config::Config;
use object_store::ObjectStore;
use object_store::local::LocalFileSystem;
use streamhouse_engine::Engine;
use streamhouse_engine::warehouse::DynamicCatalog;
pub use streamhouse_server::RunningServer;

/// Prepares the data directory, opens the Dynamic Tables in its `warehouse/`,
/// builds the engine and starts both listeners.
///
/// # Errors
/// The data directory cannot be created, the engine rejects its configuration,
/// or a listening address cannot be bound.
pub async fn start(config: &Config) -> anyhow::Result<RunningServer> {
    let data_dir = &config.storage.data_dir;
    std::fs::create_dir_all(data_dir)
        .with_context(|| format!("cannot create data directory {}", data_dir.display()))?;
    let warehouse = data_dir.join("warehouse");
    std::fs::create_dir_all(&warehouse)
        .with_context(|| format!("cannot create warehouse directory {}", warehouse.display()))?;
    let store: Arc<dyn ObjectStore> = Arc::new(
        LocalFileSystem::new_with_prefix(&warehouse)
            .with_context(|| format!("cannot open warehouse {}", warehouse.display()))?
            .with_automatic_cleanup(true),
    );
    let catalog = DynamicCatalog::open(store)
        .await
        .with_context(|| format!("cannot open the tables in {}", warehouse.display()))?;
    let mut execution = config.execution.clone();
    execution.spill_dir.get_or_insert_with(|| data_dir.join("spill"));
    let engine = Engine::with_catalog(execution, Arc::new(catalog)).context("cannot start the query engine")?;
    let server = streamhouse_server::start(engine, &config.server).await?;
    Ok(server)
}
