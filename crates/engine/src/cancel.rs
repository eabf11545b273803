//! Cancelling running statements: by the client (a Postgres cancel request or
//! a dropped Flight stream), by `statement_timeout`, or by server shutdown.
//!
//! Each statement runs under a [`QueryControl`]: a cancellation token that is
//! a child of the engine's shutdown token, plus an optional deadline. Futures
//! run through [`QueryControl::run`] and result streams are wrapped by
//! [`QueryControl::wrap_stream`], so a cancel stops planning, DML and row
//! streaming alike, and the client sees SQLSTATE 57014 (or 57P01 on shutdown).

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::error::DataFusionError;
use datafusion::execution::{RecordBatchStream, SendableRecordBatchStream};
use futures::{Stream, StreamExt};
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

use crate::error::{Error, Result, StatusCode};

/// Cancels whatever statement its session is running, from another task.
/// A cancel that arrives while the session is idle has no effect.
#[derive(Debug, Clone, Default)]
pub struct CancelHandle {
    current: Arc<Mutex<CancellationToken>>,
}

impl CancelHandle {
    /// Cancels the statement running now, if any.
    pub fn cancel(&self) {
        if let Ok(token) = self.current.lock() {
            token.cancel();
        }
    }

    /// Installs a fresh token for a new statement.
    pub(crate) fn begin(&self, shutdown: &CancellationToken) -> CancellationToken {
        let token = shutdown.child_token();
        if let Ok(mut current) = self.current.lock() {
            *current = token.clone();
        }
        token
    }
}

/// Counts statements that are running: planning, executing, or with a result
/// stream still open. A statement stops counting when its last
/// [`QueryControl`] clone is dropped (for streamed results, when the client
/// has read them all or gone away).
#[derive(Debug, Default)]
pub struct ActiveStatements(AtomicUsize);

impl ActiveStatements {
    /// How many statements are running now.
    pub fn count(&self) -> usize {
        self.0.load(Ordering::SeqCst)
    }
}

#[derive(Debug)]
struct ActiveGuard(Arc<ActiveStatements>);

impl ActiveGuard {
    fn new(active: Arc<ActiveStatements>) -> Self {
        active.0.fetch_add(1, Ordering::SeqCst);
        Self(active)
    }
}

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.0.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Cancellation and timeout of one statement.
#[derive(Debug, Clone)]
pub struct QueryControl {
    token: CancellationToken,
    shutdown: CancellationToken,
    deadline: Option<tokio::time::Instant>,
    _active: Arc<ActiveGuard>,
}

impl QueryControl {
    pub(crate) fn new(
        token: CancellationToken,
        shutdown: CancellationToken,
        timeout: Option<Duration>,
        active: Arc<ActiveStatements>,
    ) -> Self {
        Self {
            token,
            shutdown,
            deadline: timeout.map(|t| tokio::time::Instant::now() + t),
            _active: Arc::new(ActiveGuard::new(active)),
        }
    }

    /// The error a cancelled statement reports: shutdown, timeout or client cancel.
    fn cancelled_error(&self) -> Error {
        if self.shutdown.is_cancelled() {
            Error::new(StatusCode::ShuttingDown, "terminating statement because the server is shutting down")
        } else {
            Error::new(StatusCode::Cancelled, "canceling statement due to user request")
        }
    }

    fn timeout_error() -> Error {
        Error::new(StatusCode::Timeout, "canceling statement due to statement timeout")
    }

    async fn interrupted(token: CancellationToken, deadline: Option<tokio::time::Instant>) -> bool {
        match deadline {
            Some(deadline) => tokio::select! {
                _ = token.cancelled() => true,
                _ = tokio::time::sleep_until(deadline) => false,
            },
            None => {
                token.cancelled().await;
                true
            }
        }
    }

    /// Runs `fut` unless the statement is cancelled or times out first.
    ///
    /// # Errors
    /// The future's own error, or [`StatusCode::Cancelled`] / [`StatusCode::Timeout`] /
    /// [`StatusCode::ShuttingDown`].
    pub async fn run<T>(&self, fut: impl Future<Output = Result<T>>) -> Result<T> {
        tokio::select! {
            biased;
            cancelled = Self::interrupted(self.token.clone(), self.deadline) => {
                Err(if cancelled { self.cancelled_error() } else { Self::timeout_error() })
            }
            result = fut => result,
        }
    }

    /// The same control without the statement timeout (for subscriptions,
    /// which run until cancelled).
    #[must_use]
    pub fn without_deadline(&self) -> Self {
        Self { deadline: None, ..self.clone() }
    }

    /// Wraps a result stream so that it ends with the cancellation error as
    /// soon as the statement is cancelled or times out.
    pub fn wrap_stream(&self, stream: SendableRecordBatchStream) -> SendableRecordBatchStream {
        let control = self.clone();
        Box::pin(ControlledStream {
            schema: stream.schema(),
            inner: Some(stream),
            cancelled: Box::pin(self.token.clone().cancelled_owned()),
            deadline: self.deadline.map(|d| Box::pin(tokio::time::sleep_until(d))),
            control,
        })
    }
}

struct ControlledStream {
    schema: SchemaRef,
    inner: Option<SendableRecordBatchStream>,
    cancelled: Pin<Box<WaitForCancellationFutureOwned>>,
    deadline: Option<Pin<Box<tokio::time::Sleep>>>,
    control: QueryControl,
}

impl ControlledStream {
    fn stop(&mut self, err: Error) -> Poll<Option<datafusion::error::Result<RecordBatch>>> {
        // Dropping the inner stream stops DataFusion's tasks for this query.
        self.inner = None;
        Poll::Ready(Some(Err(DataFusionError::External(Box::new(err)))))
    }
}

impl Stream for ControlledStream {
    type Item = datafusion::error::Result<RecordBatch>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = &mut *self;
        if this.inner.is_none() {
            return Poll::Ready(None);
        }
        if this.cancelled.as_mut().poll(cx).is_ready() {
            let err = this.control.cancelled_error();
            return this.stop(err);
        }
        if let Some(deadline) = this.deadline.as_mut()
            && deadline.as_mut().poll(cx).is_ready()
        {
            return this.stop(QueryControl::timeout_error());
        }
        let Some(inner) = this.inner.as_mut() else {
            return Poll::Ready(None);
        };
        // A panic below is a bug, but it must cost one statement, not the connection.
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| inner.poll_next_unpin(cx))) {
            Ok(Poll::Ready(None)) => {
                this.inner = None;
                Poll::Ready(None)
            }
            Ok(poll) => poll,
            Err(panic) => {
                let what = panic
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "unknown panic".to_string());
                tracing::error!(panic = %what, "query execution panicked");
                this.stop(Error::internal(format!("internal error: query execution panicked: {what}")))
            }
        }
    }
}

impl RecordBatchStream for ControlledStream {
    fn schema(&self) -> SchemaRef {
        Arc::clone(&self.schema)
    }
}
