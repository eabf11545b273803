//! Streaming rows into a Dynamic Table as one atomic write in bounded memory:
//! the path of `INSERT … SELECT`, `COPY … FROM STDIN` and Flight ingest.
//!
//! A write of fewer than [`STAGE_ROWS`] rows goes through the table's group
//! commit, so many small concurrent writers share commits. A larger one is a
//! blind storage transaction: every [`STAGE_ROWS`] rows are staged as sorted
//! files without holding the commit lock, and the whole write commits once
//! at the end (see [`storage::Transaction`]), so concurrent big writers do not
//! serialize on one lock either.
//!
//! [`Ingest`] runs the write on its own task fed through a small bounded
//! channel: the producer (decoding COPY text, reading Flight messages)
//! overlaps with staging, and waits when staging falls behind, which stops
//! it reading its socket — back-pressure reaches the client.

use std::sync::Arc;

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::compute::concat_batches;
use datafusion::arrow::datatypes::SchemaRef;
use futures::{Stream, StreamExt};
use streamhouse_storage as storage;
use tokio::sync::mpsc;

use crate::error::{Error, Result, StatusCode};

/// Rows staged at a time by a large write.
pub const STAGE_ROWS: usize = 256 * 1024;

/// Batches in flight between an [`Ingest`]'s producer and its writer task.
const CHANNEL_BATCHES: usize = 4;

/// Writes every batch of `batches` (rows of the table's columns) with `kind`
/// as one atomic write; returns the number of rows. On error nothing is
/// committed and staged files are removed.
///
/// # Errors
/// The stream's first error; rows that do not fit the table; a conflict
/// with a concurrent writer; storage failures.
pub async fn write_stream<S>(
    table: &storage::Table,
    schema: &SchemaRef,
    mut batches: S,
    kind: storage::ValueKind,
) -> Result<u64>
where
    S: Stream<Item = Result<RecordBatch>> + Unpin,
{
    let mut txn: Option<storage::Transaction<'_>> = None;
    let mut pending: Vec<RecordBatch> = Vec::new();
    let mut pending_rows = 0;
    let mut count = 0;
    let result = async {
        loop {
            let next = batches.next().await.transpose()?;
            let flush = next.is_none() || pending_rows >= STAGE_ROWS;
            if flush && pending_rows > 0 {
                let rows = concat_batches(schema, &pending)?;
                pending.clear();
                pending_rows = 0;
                let kinds = vec![kind; rows.num_rows()];
                if next.is_none() && txn.is_none() {
                    table.write(&rows, &kinds).await?;
                    break;
                }
                if txn.is_none() {
                    txn = Some(table.begin().await?.blind());
                }
                if let Some(txn) = &mut txn {
                    txn.write(&rows, &kinds).await?;
                }
            }
            let Some(batch) = next else { break };
            count += batch.num_rows() as u64;
            pending_rows += batch.num_rows();
            pending.push(batch);
        }
        Ok::<_, Error>(())
    }
    .await;
    match (result, txn) {
        (Ok(()), Some(txn)) => {
            txn.commit().await?;
        }
        (Ok(()), None) => {}
        (Err(e), Some(txn)) => {
            txn.abort().await;
            return Err(e);
        }
        (Err(e), None) => return Err(e),
    }
    Ok(count)
}

enum Message {
    Rows(RecordBatch),
    Finish,
}

/// A write fed batch by batch, committed by [`Ingest::finish`]. Dropping it
/// (or [`Ingest::abort`]) commits nothing.
#[derive(Debug)]
pub struct Ingest {
    sender: mpsc::Sender<Message>,
    task: tokio::task::JoinHandle<Result<u64>>,
    schema: SchemaRef,
}

impl std::fmt::Debug for Message {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Rows(b) => write!(f, "Rows({})", b.num_rows()),
            Self::Finish => write!(f, "Finish"),
        }
    }
}

impl Ingest {
    /// Starts a write of rows of `schema` (the table's columns) into `table`.
    pub fn start(table: Arc<storage::Table>, schema: SchemaRef, kind: storage::ValueKind) -> Self {
        let (sender, mut receiver) = mpsc::channel(CHANNEL_BATCHES);
        let writer_schema = Arc::clone(&schema);
        let task = tokio::spawn(async move {
            let batches = futures::stream::poll_fn(move |cx| {
                receiver.poll_recv(cx).map(|message| match message {
                    Some(Message::Rows(batch)) => Some(Ok(batch)),
                    Some(Message::Finish) => None,
                    // The producer went away without finishing.
                    None => Some(Err(Error::new(StatusCode::Cancelled, "the write was abandoned"))),
                })
            });
            let result = write_stream(&table, &writer_schema, Box::pin(batches), kind).await;
            if result.is_ok() {
                storage::Table::schedule_maintenance(&table);
            }
            result
        });
        Self { sender, task, schema }
    }

    /// The columns rows must have.
    pub fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    /// Adds rows; waits while the writer is [`CHANNEL_BATCHES`] batches behind.
    ///
    /// # Errors
    /// The writer's error, once it has failed.
    pub async fn push(&mut self, batch: RecordBatch) -> Result<()> {
        if batch.num_rows() == 0 {
            return Ok(());
        }
        if self.sender.send(Message::Rows(batch)).await.is_err() {
            return Err(self.writer_error().await);
        }
        Ok(())
    }

    async fn writer_error(&mut self) -> Error {
        match (&mut self.task).await {
            Ok(Err(e)) => e,
            Ok(Ok(_)) => Error::internal("the writer ended early"),
            Err(e) => Error::internal(format!("the writer failed: {e}")),
        }
    }

    /// Commits everything pushed; returns the row count.
    ///
    /// # Errors
    /// As [`write_stream`].
    pub async fn finish(mut self) -> Result<u64> {
        if self.sender.send(Message::Finish).await.is_err() {
            return Err(self.writer_error().await);
        }
        match (&mut self.task).await {
            Ok(result) => result,
            Err(e) => Err(Error::internal(format!("the writer failed: {e}"))),
        }
    }

    /// Commits nothing and waits until staged files are removed.
    pub async fn abort(self) {
        let Self { sender, task, .. } = self;
        drop(sender);
        let _ = task.await;
    }
}

/// Turns rows of the columns a client sends into rows of the table: columns
/// it did not send get their DEFAULT or NULL, sent ones are cast to the
/// column's type, and NOT NULL is checked.
#[derive(Debug)]
pub struct Conform {
    table: String,
    target: SchemaRef,
    sources: Vec<ColumnSource>,
}

impl Conform {
    /// Rows for `table` (of columns `target`), each column taken from `sources`.
    pub(crate) fn new(table: &str, target: SchemaRef, sources: Vec<ColumnSource>) -> Self {
        Self { table: table.to_owned(), target, sources }
    }

    /// The table's columns.
    pub fn target(&self) -> &SchemaRef {
        &self.target
    }

    /// `sent` as rows of the table; `first_row` is the 1-based number of its
    /// first row in the whole input (for error messages).
    ///
    /// # Errors
    /// A value that does not fit its column's type; a NULL in a NOT NULL column (23502).
    pub fn apply(&self, sent: &RecordBatch, first_row: u64) -> Result<RecordBatch> {
        use datafusion::arrow::array::{Array, RecordBatchOptions, new_null_array};
        use datafusion::arrow::compute::{CastOptions, cast_with_options};
        let rows = sent.num_rows();
        let strict = CastOptions { safe: false, ..Default::default() };
        let mut columns = Vec::with_capacity(self.sources.len());
        for (source, field) in self.sources.iter().zip(self.target.fields()) {
            let column = match source {
                ColumnSource::Copied(i) => {
                    let column = sent.column(*i);
                    if column.data_type() == field.data_type() {
                        Arc::clone(column)
                    } else {
                        cast_with_options(column, field.data_type(), &strict).map_err(|e| {
                            Error::new(
                                StatusCode::InvalidTextRepresentation,
                                format!("column \"{}\" of table {}: {e}", field.name(), self.table),
                            )
                        })?
                    }
                }
                ColumnSource::Default(expr) => {
                    let empty = RecordBatch::try_new_with_options(
                        Arc::new(datafusion::arrow::datatypes::Schema::empty()),
                        vec![],
                        &RecordBatchOptions::new().with_row_count(Some(rows)),
                    )?;
                    let value = expr.evaluate(&empty)?.into_array(rows)?;
                    datafusion::arrow::compute::cast(&value, field.data_type())?
                }
                ColumnSource::Null => new_null_array(field.data_type(), rows),
            };
            if !field.is_nullable() && column.null_count() > 0 {
                let row = first_row + (0..rows).find(|&i| column.is_null(i)).unwrap_or(0) as u64;
                return Err(crate::copy::not_null_violation(field.name(), &self.table, row));
            }
            columns.push(column);
        }
        Ok(RecordBatch::try_new(Arc::clone(&self.target), columns)?)
    }
}

/// Where each column of the table comes from in a `COPY t (columns) FROM`.
#[derive(Debug)]
pub enum ColumnSource {
    /// The COPY column at this position.
    Copied(usize),
    /// The column's DEFAULT, evaluated per row.
    Default(Arc<dyn datafusion::physical_plan::PhysicalExpr>),
    /// NULL (no DEFAULT).
    Null,
}
