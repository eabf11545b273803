//! Test support for streamhouse (dev-only).
//!
//! - [`TestServer`]: the real server (both protocols) on free ports with a
//!   temporary data directory, plus clients connected to it.
//! - [`slt`]: sqllogictest databases that run `sql-tests/*.slt` in-process
//!   (through an engine session) and over the Postgres protocol.
//! - [`s3`]: a real S3-compatible server (moto) for the object-storage tests.
//! - [`wire`]: the Postgres protocol by hand, for tests that check messages.

pub mod s3;
pub mod slt;
pub mod tpch;
pub mod wire;

use std::net::SocketAddr;

use anyhow::Context as _;
use arrow_flight::sql::client::FlightSqlServiceClient;
use streamhouse::Server;
use streamhouse::config::Config;
use tonic::transport::Channel;

/// Whether an optional tool a test uses must be present: CI sets these
/// variables (`STREAMHOUSE_REQUIRE_PSQL=1` …), so a test there fails
/// instead of skipping when its tool is missing.
pub fn required(var: &str) -> bool {
    std::env::var(var).is_ok_and(|v| v == "1")
}

/// Whether python3 imports `modules` (comma-separated, as `import` takes
/// them). When it does not, a test skips — unless CI requires the Python
/// clients (`STREAMHOUSE_REQUIRE_PYTHON_CLIENTS=1`), then this panics.
pub fn python_has(modules: &str) -> bool {
    let probe = std::process::Command::new("python3").args(["-c", &format!("import {modules}")]).output();
    if probe.as_ref().is_ok_and(|o| o.status.success()) {
        return true;
    }
    assert!(!required("STREAMHOUSE_REQUIRE_PYTHON_CLIENTS"), "python modules {modules} are required: {probe:?}");
    eprintln!("python modules {modules} not installed: skipping");
    false
}

/// The pgjdbc jar (Debian's `libpostgresql-jdbc-java`), when it and a JDK
/// that runs single-file programs are installed. When they are not, a test
/// skips — unless CI requires them (`STREAMHOUSE_REQUIRE_JDBC=1`), then
/// this panics.
pub fn pgjdbc_jar() -> Option<std::path::PathBuf> {
    let jar = std::path::PathBuf::from("/usr/share/java/postgresql.jar");
    let java = std::process::Command::new("java").arg("-version").output();
    if jar.exists() && java.as_ref().is_ok_and(|o| o.status.success()) {
        return Some(jar);
    }
    assert!(!required("STREAMHOUSE_REQUIRE_JDBC"), "java and {} are required: {java:?}", jar.display());
    eprintln!("java or pgjdbc not installed: skipping");
    None
}

/// Runs `tests/clients/JdbcClient.java` against the server on `port` and
/// asserts that every check passed; the assertion shows the output.
///
/// # Errors
/// java cannot be started.
pub async fn run_jdbc_client(jar: &std::path::Path, port: u16) -> anyhow::Result<()> {
    let program = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/clients/JdbcClient.java");
    let jar = jar.to_path_buf();
    let output = tokio::task::spawn_blocking(move || {
        std::process::Command::new("java").arg("-cp").arg(jar).arg(program).arg(port.to_string()).output()
    })
    .await??;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success() && stdout.contains("jdbc client done"),
        "JdbcClient.java\nstdout:\n{stdout}\nstderr:\n{stderr}"
    );
    Ok(())
}

/// `tests/clients/node/node_postgres.js` when node and its `pg` package
/// (`npm install` in that folder, which `.ci/run` does) are there; `None`
/// (skip) otherwise, unless `STREAMHOUSE_REQUIRE_NODE` is set.
pub fn node_postgres_script() -> Option<std::path::PathBuf> {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/clients/node");
    let node = std::process::Command::new("node").arg("--version").output();
    let installed = dir.join("node_modules/pg/package.json").exists();
    if node.as_ref().is_ok_and(|o| o.status.success()) && installed {
        return Some(dir.join("node_postgres.js"));
    }
    assert!(
        !required("STREAMHOUSE_REQUIRE_NODE"),
        "node and node-postgres are required (npm install --prefix {}): {node:?}",
        dir.display()
    );
    eprintln!("node or node-postgres not installed: skipping");
    None
}

/// Runs a node program with `args` and asserts that it succeeded and
/// printed `done`; the assertion shows both outputs.
///
/// # Errors
/// node cannot be started.
pub async fn run_node_script(script: &std::path::Path, args: Vec<String>, done: &str) -> anyhow::Result<()> {
    let path = script.to_path_buf();
    let output =
        tokio::task::spawn_blocking(move || std::process::Command::new("node").arg(path).args(args).output()).await??;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success() && stdout.contains(done),
        "{}\nstdout:\n{stdout}\nstderr:\n{stderr}",
        script.display()
    );
    Ok(())
}

/// Runs `tests/clients/<script>` with `python3` and `args`, and asserts
/// that it succeeded and printed `done` (each script prints its own line
/// last); the assertion shows both outputs.
///
/// # Errors
/// python3 cannot be started.
pub async fn run_client_script(script: &str, args: Vec<String>, done: &str) -> anyhow::Result<()> {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/clients").join(script);
    let output =
        tokio::task::spawn_blocking(move || std::process::Command::new("python3").arg(path).args(args).output())
            .await??;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success() && stdout.contains(done), "{script}\nstdout:\n{stdout}\nstderr:\n{stderr}");
    Ok(())
}

/// A running server on free ports, removed (data directory included) on drop
/// or [`TestServer::stop`].
pub struct TestServer {
    server: Option<Server>,
    config: Config,
    _data: tempfile::TempDir,
}

impl TestServer {
    /// Starts a server with the default configuration on free ports.
    ///
    /// # Errors
    /// The server could not start.
    pub async fn start() -> anyhow::Result<Self> {
        Self::start_with(Config::default()).await
    }

    /// Starts a server with `config`, but on free ports and a fresh data directory.
    ///
    /// # Errors
    /// The server could not start.
    pub async fn start_with(mut config: Config) -> anyhow::Result<Self> {
        let data = tempfile::tempdir().context("temporary data directory")?;
        config.server.pg_port = 0;
        config.server.flight_port = 0;
        config.storage.data_dir = data.path().join("data");
        let server = streamhouse::start(&config).await?;
        Ok(Self { server: Some(server), config, _data: data })
    }

    fn running(&self) -> &Server {
        self.server.as_ref().expect("server is running until stop()")
    }

    /// The Postgres protocol address.
    pub fn pg_addr(&self) -> SocketAddr {
        self.running().pg_addr()
    }

    /// The Flight SQL address.
    pub fn flight_addr(&self) -> SocketAddr {
        self.running().flight_addr()
    }

    /// The engine behind both protocols.
    pub fn engine(&self) -> &streamhouse_engine::Engine {
        self.running().engine()
    }

    /// Waits until no statement is running, for up to `timeout`; returns
    /// whether that happened.
    pub async fn wait_until_idle(&self, timeout: std::time::Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        while self.engine().active_statements() > 0 {
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        true
    }

    /// A libpq connection string for this server.
    pub fn pg_url(&self) -> String {
        format!("host={} port={} user=tester dbname=streamhouse", self.pg_addr().ip(), self.pg_addr().port())
    }

    /// A tokio-postgres client (its connection task runs in the background).
    ///
    /// # Errors
    /// The connection failed.
    pub async fn pg(&self) -> anyhow::Result<tokio_postgres::Client> {
        let (client, connection) = tokio_postgres::connect(&self.pg_url(), tokio_postgres::NoTls).await?;
        tokio::spawn(async move {
            let _ = connection.await;
        });
        Ok(client)
    }

    /// A Flight SQL client.
    ///
    /// # Errors
    /// The connection failed.
    pub async fn flight(&self) -> anyhow::Result<FlightSqlServiceClient<Channel>> {
        let channel = Channel::from_shared(format!("http://{}", self.flight_addr()))?.connect().await?;
        Ok(FlightSqlServiceClient::new(channel))
    }

    /// Shuts the server down gracefully and starts it again on the same
    /// data directory (on new ports).
    pub async fn restart(&mut self) -> anyhow::Result<()> {
        self.restart_after(|_| Ok(())).await
    }

    /// Shuts the server down gracefully, runs `between` on its data
    /// directory (to damage files, say), and starts it again there.
    ///
    /// # Errors
    /// `between` failed, or the server could not start again.
    pub async fn restart_after(
        &mut self,
        between: impl FnOnce(&std::path::Path) -> anyhow::Result<()>,
    ) -> anyhow::Result<()> {
        if let Some(server) = self.server.take() {
            server.shutdown().await;
        }
        between(&self.config.storage.data_dir)?;
        self.server = Some(streamhouse::start(&self.config).await?);
        Ok(())
    }

    /// The server's configuration (its data directory, say).
    pub fn config(&self) -> &Config {
        &self.config
    }

    pub async fn stop(mut self) {
        if let Some(server) = self.server.take() {
            server.shutdown().await;
        }
    }
}
