//! The streamhouse server, assembled: layered [`config`], and [`start`], which
//! wires the engine (`streamhouse-engine`) to both protocol front ends
//! (`streamhouse-server`). The binary (`main.rs`) adds the command line,
//! logging and signal handling; tests call [`start`] directly.

pub mod config;

use anyhow::Context as _;
pub use config::Config;
use streamhouse_engine::Engine;
pub use streamhouse_server::RunningServer;

/// Prepares the data directory, builds the engine and starts both listeners.
///
/// # Errors
/// The data directory cannot be created, the engine rejects its configuration,
/// or a listening address cannot be bound.
pub async fn start(config: &Config) -> anyhow::Result<RunningServer> {
    let data_dir = &config.storage.data_dir;
    std::fs::create_dir_all(data_dir)
        .with_context(|| format!("cannot create data directory {}", data_dir.display()))?;
    let engine = Engine::new(config.execution.clone()).context("cannot start the query engine")?;
    let server = streamhouse_server::start(engine, &config.server).await?;
    Ok(server)
}
