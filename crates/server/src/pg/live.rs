//! Results that keep coming (SUBSCRIBE): rows, or COPY data, are flushed to
//! the client whenever the subscription has nothing more ready, instead of
//! waiting in the connection's buffer for the end of a result that never
//! ends. They end only with an error (cancel, shutdown) or when the table is
//! dropped.

use std::sync::Arc;

use datafusion::execution::SendableRecordBatchStream;
use futures::{Sink, SinkExt, Stream, StreamExt};
use pgwire::api::portal::Format;
use pgwire::api::results::Tag;
use pgwire::error::{PgWireError, PgWireResult};
use pgwire::messages::PgWireBackendMessage;
use pgwire::messages::copy::{CopyDone, CopyOutResponse};
use pgwire::messages::data::{FieldDescription, RowDescription};
use streamhouse_engine::Error;
use streamhouse_engine::copy::CopyOut;

use super::copy::copy_chunks;
use super::encode::{encode_batch, fields, pg_error};

/// Feeds each chunk of `chunks` to `client` and flushes it before asking
/// for the next, so a subscription only moves past a snapshot (and records a
/// named consumer's progress) once its rows are on the wire; returns how
/// many messages were sent.
async fn feed_chunks<C, S, T>(
    client: &mut C,
    mut chunks: S,
    wrap: impl Fn(T) -> PgWireBackendMessage,
) -> PgWireResult<usize>
where
    C: Sink<PgWireBackendMessage> + Unpin + Send,
    PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    S: Stream<Item = PgWireResult<Vec<T>>> + Unpin,
{
    let mut sent = 0;
    while let Some(chunk) = chunks.next().await {
        for item in chunk? {
            client.feed(wrap(item)).await?;
            sent += 1;
        }
        client.flush().await?;
    }
    Ok(sent)
}

/// Streams live rows as DataRows (after a RowDescription when `describe`,
/// as the simple protocol needs), then CommandComplete if the stream ends.
pub async fn send_rows<C>(
    client: &mut C,
    stream: SendableRecordBatchStream,
    format: &Format,
    describe: bool,
) -> PgWireResult<usize>
where
    C: Sink<PgWireBackendMessage> + Unpin + Send,
    PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
{
    let fields = Arc::new(fields(stream.schema().as_ref(), format)?);
    if describe {
        let description = RowDescription::new(fields.iter().map(FieldDescription::from).collect());
        client.send(PgWireBackendMessage::RowDescription(description)).await?;
    }
    let row_fields = Arc::clone(&fields);
    let rows = stream.map(move |batch| match batch {
        Ok(batch) => encode_batch(Arc::clone(&row_fields), batch).collect::<PgWireResult<Vec<_>>>(),
        Err(e) => Err(pg_error(&Error::from(e))),
    });
    let sent = feed_chunks(client, rows, PgWireBackendMessage::DataRow).await?;
    if describe {
        let tag = Tag::new("SUBSCRIBE").with_rows(sent);
        client.send(PgWireBackendMessage::CommandComplete(tag.into())).await?;
    }
    Ok(sent)
}

/// Streams a live `COPY (SUBSCRIBE …) TO STDOUT`, then CopyDone (and
/// CommandComplete when `complete`) if the stream ends; returns the rows sent.
pub async fn send_copy<C>(client: &mut C, out: CopyOut, complete: bool) -> PgWireResult<usize>
where
    C: Sink<PgWireBackendMessage> + Unpin + Send,
    PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
{
    let (format, columns, chunks) = copy_chunks(out)?;
    let header = CopyOutResponse::new(format, columns as i16, vec![i16::from(format); columns]);
    client.send(PgWireBackendMessage::CopyOutResponse(header)).await?;
    let sent = feed_chunks(client, chunks, PgWireBackendMessage::CopyData).await?;
    client.send(PgWireBackendMessage::CopyDone(CopyDone::new())).await?;
    if complete {
        let tag = Tag::new("COPY").with_rows(sent);
        client.send(PgWireBackendMessage::CommandComplete(tag.into())).await?;
    }
    Ok(sent)
}
