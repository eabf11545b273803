//! The streamhouse server, assembled: layered [`config`], and [`start`], which
//! wires the engine (`streamhouse-engine`) to both protocol front ends
//! (`streamhouse-server`). The binary (`main.rs`) adds the command line,
//! logging and signal handling; tests call [`start`] directly.

pub mod config;
pub mod lock;
pub mod store;
pub mod worker;

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context as _;
pub use config::Config;
use lock::DataDirLock;
use streamhouse_engine::Engine;
use streamhouse_engine::warehouse::DynamicCatalog;
use streamhouse_server::RunningServer;

/// The file the generated bootstrap password is written to, in the data directory.
pub const BOOTSTRAP_PASSWORD_FILE: &str = "bootstrap_password";

/// On the first start, gives the bootstrap superuser a password: the one
/// configured (`auth.bootstrap_password`), or a random one written to
/// `<data_dir>/bootstrap_password`, readable by the server's user only.
/// The file is written (and synced) before the password is stored, so a
/// crash between the two leaves no stored password nobody knows.
async fn bootstrap_password(engine: &Engine, config: &Config) -> anyhow::Result<()> {
    let access = engine.access();
    let superuser = streamhouse_engine::access::BOOTSTRAP_SUPERUSER;
    if access.snapshot().role(superuser).is_some_and(|r| r.password.is_some()) {
        return Ok(());
    }
    let password = match &config.auth.bootstrap_password {
        Some(password) if !password.is_empty() => password.clone(),
        _ => {
            let password = streamhouse_engine::access::scram::random_token::<18>();
            let path = config.storage.data_dir.join(BOOTSTRAP_PASSWORD_FILE);
            write_private(&path, &format!("{password}\n"))
                .with_context(|| format!("cannot write the bootstrap password to {}", path.display()))?;
            tracing::warn!(
                user = superuser,
                file = %path.display(),
                "the bootstrap superuser's password was generated and written to this file (mode 0600)"
            );
            password
        }
    };
    access.set_bootstrap_password_once(&password).await.context("cannot store the bootstrap password")?;
    Ok(())
}

/// Writes `text` to a new file only its owner can read, synced.
fn write_private(path: &std::path::Path, text: &str) -> std::io::Result<()> {
    use std::io::Write as _;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    let mut file = options.open(path)?;
    #[cfg(unix)]
    file.set_permissions(std::os::unix::fs::PermissionsExt::from_mode(0o600))?;
    file.write_all(text.as_bytes())?;
    file.sync_all()
}

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

/// Where in the warehouse distributed BSP queries write their stage files.
const SPILL_PREFIX: &str = "_spill";

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
    let catalog_store = Arc::clone(&store);
    let location = config.storage.url.clone().unwrap_or_else(|| warehouse.display().to_string());
    let catalog = DynamicCatalog::open(store)
        .await
        .with_context(|| format!("cannot open the tables in {location}"))?
        .with_views_config(config.views.clone());
    let mut execution = config.execution.clone();
    execution.spill_dir.get_or_insert_with(|| data_dir.join("spill"));
    let identity = streamhouse_engine::exec::distributed::identity(&store::warehouse_id(&catalog_store).await?);
    if !config.cluster.workers.is_empty() && config.storage.url.as_deref().is_none_or(|u| !u.starts_with("s3://")) {
        anyhow::bail!(
            "cluster.workers needs a warehouse the workers can read too: set storage.url = \"s3://bucket/prefix\""
        );
    }
    // Distributed BSP's stage files: under a prefix of this server's own;
    // what an earlier run left (it crashed) goes first.
    let spill = object_store::path::Path::from(SPILL_PREFIX);
    if !config.cluster.workers.is_empty() {
        streamhouse_engine::exec::bsp::delete_prefix(&catalog_store, &spill).await;
    }
    let setup = streamhouse_engine::ClusterSetup {
        config: &config.cluster,
        identity,
        store: Arc::clone(&catalog_store),
        spill_prefix: spill.join(streamhouse_engine::access::scram::random_token::<9>().as_str()),
    };
    let engine =
        Engine::with_cluster(execution, Arc::new(catalog), Some(setup)).context("cannot start the query engine")?;
    bootstrap_password(&engine, config).await?;
    let running = streamhouse_server::start(engine, &config.server, &config.auth).await?;
    Ok(Server { running, log, lock })
}
