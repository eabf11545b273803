//! Cursors: `DECLARE c CURSOR FOR query`, `FETCH [n | ALL | NEXT] [FROM] c
//! [WITH (timeout = '1s')]`, `CLOSE c | ALL`.
//!
//! A cursor holds the running query's stream and hands out its rows a FETCH
//! at a time. On a subscription (`DECLARE c CURSOR FOR SUBSCRIBE TO t`), as in
//! Materialize, a FETCH waits for the first row (up to its timeout, if one is
//! given; a timeout can return no rows), then returns the rows already
//! there, up to the count, without waiting for more.

use std::time::Duration;

use datafusion::arrow::array::RecordBatch;
use datafusion::execution::SendableRecordBatchStream;

use futures::{FutureExt, StreamExt};

use super::{CommandComplete, Output, Session, TransactionStatus, batch_stream};
use crate::error::{Error, Result, StatusCode};
use crate::sql::Statement;

/// An open cursor.
pub(super) struct Cursor {
    stream: SendableRecordBatchStream,
    /// Rows of a batch a FETCH did not take.
    pending: Option<RecordBatch>,
    live: bool,
    /// `WITH HOLD`: survives the end of the transaction block.
    pub(super) hold: bool,
}

impl Cursor {
    /// The schema of the rows a FETCH returns.
    pub(super) fn schema(&self) -> datafusion::arrow::datatypes::SchemaRef {
        self.stream.schema()
    }
}

impl Session {
    /// `DECLARE c CURSOR FOR query`: runs the query and keeps its stream.
    pub(super) async fn declare_cursor(&mut self, name: &str, query: &Statement, hold: bool) -> Result<Output> {
        if !hold && self.transaction_status() == TransactionStatus::Idle {
            return Err(Error::new(
                StatusCode::NoActiveTransaction,
                "DECLARE CURSOR can only be used in transaction blocks (BEGIN first, or DECLARE … WITH HOLD)",
            ));
        }
        if self.open_cursors()?.contains_key(name) {
            return Err(Error::new(StatusCode::DuplicateCursor, format!("cursor \"{name}\" already exists")));
        }
        let max = self.engine.config().max_cursors;
        if self.open_cursors()?.len() >= max {
            return Err(Error::new(
                StatusCode::ConfigurationLimitExceeded,
                format!("too many open cursors: execution.max_cursors is {max} (CLOSE some)"),
            ));
        }
        let prepared = Box::pin(self.prepare(query.clone())).await?;
        let (stream, live) = match Box::pin(self.execute(&prepared, None)).await? {
            Output::Rows(stream) => (stream, false),
            Output::Live(stream) => (stream, true),
            _ => return Err(Error::invalid("a cursor needs a query that returns rows")),
        };
        self.open_cursors()?.insert(name.to_owned(), Cursor { stream, pending: None, live, hold });
        Ok(Output::Command(CommandComplete::new("DECLARE CURSOR")))
    }

    /// `FETCH`: up to `count` rows (all when `None`).
    pub(super) async fn fetch_cursor(
        &mut self,
        name: &str,
        count: Option<u64>,
        timeout: Option<Duration>,
    ) -> Result<Output> {
        let control = self.begin_statement();
        // Taken out while it is read, and put back after.
        let mut cursor = self
            .open_cursors()?
            .remove(name)
            .ok_or_else(|| Error::new(StatusCode::InvalidCursorName, format!("cursor \"{name}\" does not exist")))?;
        let schema = cursor.stream.schema();
        let want = count.unwrap_or(u64::MAX);
        let deadline = timeout.map(|t| tokio::time::Instant::now() + t);
        let mut batches = Vec::new();
        let mut got = 0u64;
        let result: Result<()> = control
            .run(async {
                while got < want {
                    let batch = match cursor.pending.take() {
                        Some(batch) => batch,
                        None => {
                            let next = if cursor.live && got > 0 {
                                // Rows already there, without waiting for more.
                                match cursor.stream.next().now_or_never() {
                                    Some(next) => next,
                                    None => break,
                                }
                            } else if let Some(deadline) = deadline {
                                match tokio::time::timeout_at(deadline, cursor.stream.next()).await {
                                    Ok(next) => next,
                                    Err(_) => break,
                                }
                            } else {
                                cursor.stream.next().await
                            };
                            match next {
                                Some(batch) => batch?,
                                None => break,
                            }
                        }
                    };
                    let take = (want - got).min(batch.num_rows() as u64) as usize;
                    if take < batch.num_rows() {
                        cursor.pending = Some(batch.slice(take, batch.num_rows() - take));
                    }
                    got += take as u64;
                    batches.push(batch.slice(0, take));
                }
                Ok(())
            })
            .await;
        // A failed FETCH closes the cursor, as the failed block would.
        result?;
        self.open_cursors()?.insert(name.to_owned(), cursor);
        Ok(Output::Rows(batch_stream(schema, batches)))
    }

    pub(super) fn open_cursors(&self) -> Result<std::sync::MutexGuard<'_, std::collections::HashMap<String, Cursor>>> {
        self.cursors.lock().map_err(|_| Error::internal("cursor table lock poisoned"))
    }

    /// `CLOSE c` or `CLOSE ALL`.
    pub(super) fn close_cursor(&mut self, name: Option<&str>) -> Result<Output> {
        match name {
            Some(name) => {
                if self.open_cursors()?.remove(name).is_none() {
                    return Err(Error::new(StatusCode::InvalidCursorName, format!("cursor \"{name}\" does not exist")));
                }
            }
            None => self.open_cursors()?.clear(),
        }
        Ok(Output::Command(CommandComplete::new("CLOSE CURSOR")))
    }
}
