//! The streamhouse query engine: Apache DataFusion plus the catalog,
//! sessions, and the error classification every front end relies on.
//!
//! ```text
//!          pgwire / Flight SQL front ends (streamhouse-server)
//!                         │  Session::{parse, prepare, execute}
//!                         ▼
//!   Engine ── Session ── DataFusion SessionContext (per session: settings)
//!     │          │             │ shared: functions, memory pool, pg_catalog
//!     │          └─ DDL ──►  Catalog (trait) ── DynamicCatalog (warehouse)
//!     └── shutdown token, catalog version
//! ```
//!
//! - [`engine`]: the [`Engine`], shared by all sessions.
//! - [`access`]: roles, SCRAM verifiers, ownership and grants, and the checks sessions make.
//! - [`session`]: a [`Session`], its variables (`SET`/`SHOW`) and transaction status.
//! - [`catalog`]: the [`Catalog`] trait, names, and its DataFusion adapter.
//! - [`cancel`]: cancellation and statement timeouts.
//! - [`copy`]: decoding `COPY … FROM STDIN` data (text and CSV) into batches.
//! - [`error`]: [`Error`] and its [`StatusCode`] classification.
//! - [`exec`]: execution modes: MPP, staged BSP, and the automatic switch.

pub mod access;
pub mod cancel;
pub mod catalog;
pub mod config;
pub mod copy;
pub mod dynamic;
pub mod engine;
pub mod error;
pub mod exec;
pub mod memory;
pub mod queries;
pub mod semantics;
pub mod session;
pub mod settings;
pub mod sql;
pub mod time_travel;
pub mod types;
pub mod views;
pub mod warehouse;

pub use cancel::CancelHandle;
pub use catalog::{Catalog, CatalogRef};
pub use config::{ByteSize, ClusterConfig, DistributedMode, EngineConfig, ExecutionMode, ViewsConfig};
pub use engine::{ClusterSetup, Engine};
pub use error::{Error, Result, StatusCode};
pub use session::{
    CommandComplete, Notice, NoticeSeverity, Output, Prepared, Session, SessionInfo, TransactionChange,
    TransactionStatus,
};
pub use warehouse::DynamicCatalog;

/// Locks `m`, ignoring poisoning: every value the engine keeps behind a
/// mutex is replaced whole, so a panic elsewhere cannot leave it half-written.
pub(crate) fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Wall-clock time in milliseconds since the Unix epoch: the one clock of
/// query records, view progress and snapshot expiry.
pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

/// Re-exported so front ends use the exact DataFusion version of the engine.
pub use datafusion;
