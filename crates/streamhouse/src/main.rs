//! `streamhouse serve [--config FILE]`: starts the server and runs until
//! Ctrl-C or SIGTERM, then shuts down gracefully.

use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use streamhouse::config::{Config, LogFormat};
use tracing_subscriber::EnvFilter;

#[derive(Parser)]
#[command(name = "streamhouse", version, about = "SQL query server over streaming tables")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Start the server: Postgres protocol and Arrow Flight SQL.
    Serve {
        /// Configuration file (default: config/default.toml when present).
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
    },
    /// Start a worker: run plan fragments a server sends, reading its
    /// warehouse (storage.url) from shared object storage; listens on cluster.listen.
    Worker {
        /// Configuration file (default: config/default.toml when present).
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
    },
    /// Print the effective configuration (defaults < file < environment) and exit.
    Config {
        /// Configuration file (default: config/default.toml when present).
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Serve { config } => {
            let config = Config::load(config.as_deref())?;
            init_tracing(&config)?;
            runtime()?.block_on(serve(config))
        }
        Command::Worker { config } => {
            let config = Config::load(config.as_deref())?;
            init_tracing(&config)?;
            runtime()?.block_on(work(config))
        }
        Command::Config { config } => {
            let config = Config::load(config.as_deref())?;
            use std::io::Write;
            // A reader that stops early (`| head`) is not an error.
            match writeln!(std::io::stdout().lock(), "{config:#?}") {
                Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e.into()),
                _ => Ok(()),
            }
        }
    }
}

async fn work(config: Config) -> anyhow::Result<()> {
    let worker = streamhouse::worker::start(&config).await?;
    shutdown_signal().await?;
    tracing::info!("shutting down the worker");
    worker.shutdown().await;
    Ok(())
}

async fn serve(config: Config) -> anyhow::Result<()> {
    let server = streamhouse::start(&config).await?;
    tracing::info!(
        postgres = %server.pg_addr(),
        flight_sql = %server.flight_addr(),
        data_dir = %config.storage.data_dir.display(),
        "streamhouse is ready"
    );
    shutdown_signal().await?;
    tracing::info!("shutting down: cancelling running queries and closing connections");
    server.shutdown().await;
    tracing::info!("shut down cleanly");
    Ok(())
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        // Planning and rewriting deep query plans (continuous views
        // over UNION ALL windows, many joins) recurses deeply; 2 MiB
        // worker stacks are not enough for it in debug builds.
        .thread_stack_size(16 * 1024 * 1024)
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

/// Resolves on Ctrl-C (SIGINT) or SIGTERM.
async fn shutdown_signal() -> anyhow::Result<()> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("cannot install the SIGTERM handler")?;
    tokio::select! {
        r = tokio::signal::ctrl_c() => r.context("cannot listen for Ctrl-C")?,
        _ = term.recv() => {}
    }
    Ok(())
}

fn init_tracing(config: &Config) -> anyhow::Result<()> {
    let filter = match std::env::var("RUST_LOG") {
        Ok(directive) if !directive.is_empty() => EnvFilter::try_new(directive),
        _ => EnvFilter::try_new(&config.log.filter),
    }
    .context("invalid log filter (log.filter or RUST_LOG)")?;
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match config.log.format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
    Ok(())
}
