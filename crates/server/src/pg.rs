//! The Postgres wire protocol front end (pgwire).
//!
//! One [`connection::PgConnection`] per socket holds the engine [`Session`]
//! and implements pgwire's startup, simple-query and extended-query handlers;
//! [`encode`] turns Arrow results into Postgres rows (text or binary, via
//! arrow-pg) and engine errors into `ErrorResponse`s with SQLSTATEs from
//! [`crate::status`]. Cancel requests find the session through the
//! [`CancelRegistry`], keyed by the backend pid and secret key sent at startup.
//!
//! [`Session`]: streamhouse_engine::Session

pub mod connection;
pub mod copy;
pub mod encode;
pub mod live;
pub mod wire;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use pgwire::api::cancel::CancelHandler;
use pgwire::api::{ClientInfo, DEFAULT_NAME, ErrorHandler, PgWireServerHandlers};
use pgwire::error::{ErrorInfo, PgWireError};
use pgwire::messages::cancel::CancelRequest;
use pgwire::messages::startup::SecretKey;
use streamhouse_engine::{CancelHandle, Engine};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use connection::PgConnection;

/// How long a connection may take, at shutdown, to send its cancelled
/// statement's error before it is closed.
const SHUTDOWN_FLUSH: std::time::Duration = std::time::Duration::from_millis(500);

/// Running sessions by backend pid, for cancel requests.
#[derive(Debug, Default)]
pub struct CancelRegistry {
    sessions: Mutex<HashMap<i32, (SecretKey, CancelHandle)>>,
}

impl CancelRegistry {
    fn register(&self, pid: i32, key: SecretKey, handle: CancelHandle) {
        if let Ok(mut sessions) = self.sessions.lock() {
            sessions.insert(pid, (key, handle));
        }
    }

    fn unregister(&self, pid: i32) {
        if let Ok(mut sessions) = self.sessions.lock() {
            sessions.remove(&pid);
        }
    }

    /// Cancels the statement of session `pid` if `key` matches.
    fn cancel(&self, pid: i32, key: &SecretKey) -> bool {
        let handle = self
            .sessions
            .lock()
            .ok()
            .and_then(|s| s.get(&pid).filter(|(k, _)| k.eq_value(key)).map(|(_, h)| h.clone()));
        match handle {
            Some(handle) => {
                handle.cancel();
                true
            }
            None => false,
        }
    }
}

/// State shared by all Postgres connections.
#[derive(Debug)]
pub(crate) struct PgShared {
    pub(crate) engine: Engine,
    pub(crate) cancels: CancelRegistry,
    pub(crate) connections: AtomicUsize,
    pub(crate) max_connections: usize,
    /// How clients authenticate.
    pub(crate) auth: std::sync::Arc<crate::auth::AuthConfig>,
    /// Salts the impostor verifiers of unknown users (random per start).
    pub(crate) impostor_secret: [u8; 32],
}

/// The handler set pgwire asks for once per connection.
struct PgHandlers {
    connection: Arc<PgConnection>,
    shared: Arc<PgShared>,
}

impl PgWireServerHandlers for PgHandlers {
    fn simple_query_handler(&self) -> Arc<impl pgwire::api::query::SimpleQueryHandler> {
        Arc::clone(&self.connection)
    }

    fn extended_query_handler(&self) -> Arc<impl pgwire::api::query::ExtendedQueryHandler> {
        Arc::clone(&self.connection)
    }

    fn startup_handler(&self) -> Arc<impl pgwire::api::auth::StartupHandler> {
        Arc::clone(&self.connection)
    }

    fn copy_handler(&self) -> Arc<impl pgwire::api::copy::CopyHandler> {
        Arc::clone(&self.connection)
    }

    fn cancel_handler(&self) -> Arc<impl CancelHandler> {
        Arc::new(Canceller { shared: Arc::clone(&self.shared) })
    }

    fn error_handler(&self) -> Arc<impl ErrorHandler> {
        Arc::new(PostgresCodes)
    }
}

/// Gives the errors pgwire raises itself Postgres' SQLSTATE and wording.
struct PostgresCodes;

impl ErrorHandler for PostgresCodes {
    fn on_error<C: ClientInfo>(&self, _client: &C, error: &mut PgWireError) {
        let shown = |name: &str| if name == DEFAULT_NAME { String::new() } else { name.to_owned() };
        let (code, message) = match error {
            PgWireError::PortalNotFound(name) => ("34000", format!("portal \"{}\" does not exist", shown(name))),
            PgWireError::StatementNotFound(name) => {
                ("26000", format!("prepared statement \"{}\" does not exist", shown(name)))
            }
            _ => return,
        };
        *error = PgWireError::UserError(Box::new(ErrorInfo::new("ERROR".into(), code.into(), message)));
    }
}

struct Canceller {
    shared: Arc<PgShared>,
}

#[async_trait::async_trait]
impl CancelHandler for Canceller {
    async fn on_cancel_request(&self, request: CancelRequest) {
        let found = self.shared.cancels.cancel(request.pid, &request.secret_key);
        tracing::debug!(pid = request.pid, found, "cancel request");
    }
}

/// Limits of the Postgres front end (`server.*` in the configuration).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    /// Connections served at once; more are refused with 53300.
    pub(crate) max_connections: usize,
    /// Time a client has to complete its startup.
    pub(crate) startup_timeout: std::time::Duration,
}

/// Accepts Postgres connections until `shutdown` fires; each connection runs
/// on `tracker` and is dropped (its statement cancelled) at shutdown.
pub(crate) async fn serve(
    listener: TcpListener,
    engine: Engine,
    limits: Limits,
    tls: wire::PgTls,
    auth: Arc<crate::auth::AuthConfig>,
    shutdown: CancellationToken,
    tracker: TaskTracker,
) {
    let shared = Arc::new(PgShared {
        engine,
        cancels: CancelRegistry::default(),
        connections: AtomicUsize::new(0),
        max_connections: limits.max_connections,
        auth,
        impostor_secret: streamhouse_engine::access::scram::random_bytes::<32>(),
    });
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let (socket, peer): (_, SocketAddr) = match accepted {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(error = %e, "postgres accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = socket.set_nodelay(true);
        // A second handle on the socket, to look (without reading) whether
        // the client has gone while a subscription streams to it.
        let (socket, probe) = match socket.into_std().and_then(|s| Ok((s.try_clone()?, s))) {
            Ok((probe, std)) => match tokio::net::TcpStream::from_std(std) {
                Ok(socket) => (socket, Some(probe)),
                Err(e) => {
                    tracing::warn!(error = %e, "postgres socket setup failed");
                    continue;
                }
            },
            Err(e) => {
                tracing::warn!(error = %e, "postgres socket setup failed");
                continue;
            }
        };
        let undecodable = wire::Undecodable::default();
        let connection = Arc::new(PgConnection::new(Arc::clone(&shared), peer, probe, undecodable.clone()));
        let handlers = PgHandlers { connection, shared: Arc::clone(&shared) };
        let shutdown = shutdown.clone();
        let tls = tls.clone();
        tracker.spawn(async move {
            // A panic ends this connection only (the release profile unwinds); it is logged as the bug it is.
            let serve = std::panic::AssertUnwindSafe(wire::serve_connection(
                socket,
                peer,
                undecodable,
                handlers,
                limits.startup_timeout,
                tls.clone(),
            ));
            let serve = futures::FutureExt::catch_unwind(serve);
            let serve = futures::FutureExt::map(serve, move |result| {
                result.unwrap_or_else(|panic| {
                    let what = panic
                        .downcast_ref::<&str>()
                        .map(ToString::to_string)
                        .or_else(|| panic.downcast_ref::<String>().cloned())
                        .unwrap_or_default();
                    tracing::error!(%peer, panic = %what, "a postgres connection panicked; it was closed");
                    Ok(())
                })
            });
            let mut connection = std::pin::pin!(serve);
            let result = tokio::select! {
                result = &mut connection => Some(result),
                _ = shutdown.cancelled() => {
                    // The engine has cancelled this connection's statement; let the
                    // connection deliver that error (57P01) before it is closed.
                    tokio::time::timeout(SHUTDOWN_FLUSH, &mut connection).await.ok()
                }
            };
            if let Some(Err(e)) = result {
                tracing::debug!(%peer, error = %e, "postgres connection ended with an error");
            }
        });
    }
    tracing::debug!(open = shared.connections.load(Ordering::Relaxed), "postgres listener stopped");
}
