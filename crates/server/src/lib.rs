//! Protocol front ends of streamhouse: the Postgres wire protocol ([`pg`])
//! and Arrow Flight SQL ([`flight`]), both over one [`Engine`], so a table
//! created through one is visible through the other.
//!
//! ```text
//!   psql / JDBC / psycopg ──► pg (pgwire) ──┐
//!                                           ├──► Engine ──► Session per connection / request
//!   ADBC / pyarrow ──► flight (Flight SQL) ─┘
//! ```
//!
//! [`status`] is the one place where engine status codes become SQLSTATEs
//! and gRPC codes. [`start`] binds both listeners and returns a
//! [`RunningServer`] that shuts down gracefully.

pub mod auth;
pub mod flight;
pub mod pg;
pub mod status;
pub mod tls;

use std::net::SocketAddr;
use std::time::Duration;

use arrow_flight::flight_service_server::FlightServiceServer;
use serde::Deserialize;
use streamhouse_engine::Engine;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Listening addresses and connection limits (`[server]` in the configuration).
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct ServerConfig {
    /// Address both protocols listen on.
    pub host: String,
    /// Postgres protocol port (0 picks a free port).
    pub pg_port: u16,
    /// Arrow Flight SQL port (0 picks a free port).
    pub flight_port: u16,
    /// Most Postgres connections served at once; more are refused with 53300.
    pub max_connections: usize,
    /// Largest gRPC message accepted from Flight clients, in bytes.
    pub flight_max_message_bytes: usize,
    /// Flight SQL prepared statements one user may hold open at once (more is 53400).
    pub flight_max_prepared_statements: usize,
    /// How long shutdown waits for connections to close after cancelling
    /// their statements, in milliseconds.
    pub shutdown_timeout_ms: u64,
    /// How long a Postgres client has to complete its startup (and, later,
    /// authentication) before the connection is closed, in milliseconds.
    pub startup_timeout_ms: u64,
    /// TLS for both protocols.
    pub tls: tls::TlsConfig,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            host: "127.0.0.1".to_string(),
            pg_port: 5433,
            flight_port: 50051,
            max_connections: 256,
            flight_max_message_bytes: 64 << 20,
            flight_max_prepared_statements: 256,
            shutdown_timeout_ms: 10_000,
            startup_timeout_ms: 60_000,
            tls: tls::TlsConfig::default(),
        }
    }
}

/// Why the server did not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// A listening address could not be bound.
    #[error("cannot listen for {protocol} on {address}: {source}")]
    Bind {
        /// Which protocol.
        protocol: &'static str,
        /// The address.
        address: String,
        /// Why.
        source: std::io::Error,
    },
    /// The configuration would be unsafe or is invalid (auth, TLS).
    #[error("{0}")]
    Config(String),
}

/// Both front ends, running.
#[derive(Debug)]
pub struct RunningServer {
    pg_addr: SocketAddr,
    flight_addr: SocketAddr,
    engine: Engine,
    shutdown: CancellationToken,
    tracker: TaskTracker,
    timeout: Duration,
}

impl RunningServer {
    /// Where the Postgres protocol listens.
    pub fn pg_addr(&self) -> SocketAddr {
        self.pg_addr
    }

    /// Where Flight SQL listens.
    pub fn flight_addr(&self) -> SocketAddr {
        self.flight_addr
    }

    /// The engine behind both front ends.
    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    /// Stops accepting connections, cancels running statements (clients see
    /// SQLSTATE 57P01 or gRPC UNAVAILABLE), closes connections, and waits up
    /// to `shutdown_timeout_ms` for them to finish.
    pub async fn shutdown(self) {
        self.engine.shutdown();
        self.shutdown.cancel();
        self.tracker.close();
        if tokio::time::timeout(self.timeout, self.tracker.wait()).await.is_err() {
            tracing::warn!(timeout_ms = self.timeout.as_millis() as u64, "connections still open at shutdown timeout");
        }
        self.engine.close().await;
    }
}

async fn bind(protocol: &'static str, host: &str, port: u16) -> Result<TcpListener, StartError> {
    let address = format!("{host}:{port}");
    TcpListener::bind(&address).await.map_err(|source| StartError::Bind { protocol, address, source })
}

/// Binds both listeners and starts serving.
///
/// # Errors
/// A port is taken or the host is not a local address; an unsafe or
/// invalid `[auth]` (see [`auth::AuthConfig::check_listen`]).
pub async fn start(
    engine: Engine,
    config: &ServerConfig,
    auth: &auth::AuthConfig,
) -> Result<RunningServer, StartError> {
    auth.check_listen(&config.host).map_err(StartError::Config)?;
    let tls = config.tls.load().map_err(StartError::Config)?;
    let auth = std::sync::Arc::new(auth.clone());
    let pg_listener = bind("the Postgres protocol", &config.host, config.pg_port).await?;
    let flight_listener = bind("Flight SQL", &config.host, config.flight_port).await?;
    let local = |l: &TcpListener, protocol| {
        l.local_addr().map_err(|source| StartError::Bind { protocol, address: config.host.clone(), source })
    };
    let pg_addr = local(&pg_listener, "the Postgres protocol")?;
    let flight_addr = local(&flight_listener, "Flight SQL")?;
    let shutdown = CancellationToken::new();
    let tracker = TaskTracker::new();

    let limits = pg::Limits {
        max_connections: config.max_connections,
        startup_timeout: std::time::Duration::from_millis(config.startup_timeout_ms),
    };
    let pg_tls = pg::wire::PgTls {
        acceptor: tls.as_ref().map(|t| pgwire::tokio::TlsAcceptor::from(std::sync::Arc::clone(&t.rustls))),
        required: config.tls.required,
    };
    tracker.spawn(pg::serve(
        pg_listener,
        engine.clone(),
        limits,
        pg_tls,
        std::sync::Arc::clone(&auth),
        shutdown.clone(),
        tracker.clone(),
    ));

    let tokens = std::sync::Arc::new(auth::Tokens::new(Duration::from_secs(auth.token_ttl_s.max(1))));
    let flight_server = flight::FlightSqlServer::new(
        engine.clone(),
        std::sync::Arc::clone(&tokens),
        config.flight_max_prepared_statements,
    );
    let service = FlightServiceServer::new(flight_server)
        .max_decoding_message_size(config.flight_max_message_bytes)
        .max_encoding_message_size(config.flight_max_message_bytes);
    let authenticator = flight::auth::Authenticator {
        engine: engine.clone(),
        config: std::sync::Arc::clone(&auth),
        tokens,
        tls: tls.is_some(),
        secret: std::sync::Arc::new(streamhouse_engine::access::scram::random_bytes::<32>()),
    };
    let service =
        tonic::service::interceptor::InterceptedService::new(service, move |request| authenticator.check(request));
    let incoming = tonic::transport::server::TcpIncoming::from(flight_listener).with_nodelay(Some(true));
    let flight_shutdown = shutdown.clone();
    let flight_identity = tls.as_ref().map(|t| tonic::transport::Identity::from_pem(&t.cert_pem, &t.key_pem));
    tracker.spawn(async move {
        let mut builder = tonic::transport::Server::builder();
        if let Some(identity) = flight_identity {
            builder = match builder.tls_config(tonic::transport::ServerTlsConfig::new().identity(identity)) {
                Ok(builder) => builder,
                Err(e) => {
                    tracing::error!(error = %e, "Flight SQL TLS setup failed");
                    return;
                }
            };
        }
        let served = builder
            .add_service(service)
            .serve_with_incoming_shutdown(incoming, flight_shutdown.cancelled_owned())
            .await;
        if let Err(e) = served {
            tracing::error!(error = %e, "Flight SQL server failed");
        }
    });

    Ok(RunningServer {
        pg_addr,
        flight_addr,
        engine,
        shutdown,
        tracker,
        timeout: Duration::from_millis(config.shutdown_timeout_ms),
    })
}
