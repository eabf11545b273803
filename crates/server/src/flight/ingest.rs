//! Bulk ingest over Flight SQL: `CommandStatementIngest` and prepared
//! `INSERT … VALUES ($1, …)` statements fed parameter batches by DoPut.
//! Batches stream into the table as they arrive (no row-by-row detour) and
//! commit atomically when the client's stream ends.

use arrow_flight::decode::FlightRecordBatchStream;
use arrow_flight::error::FlightError;
use arrow_flight::sql::CommandStatementIngest;
use arrow_flight::sql::server::PeekableFlightDataStream;
use arrow_flight::sql::{TableExistsOption, TableNotExistOption};
use datafusion::arrow::array::RecordBatch;
use datafusion::common::TableReference;
use futures::TryStreamExt;
use streamhouse_engine::session::ingest::{IfTableExists, IfTableMissing, IngestWriter};
use streamhouse_engine::{Error, Session};
use tonic::Status;

use crate::status::grpc_status;

fn batches(request: PeekableFlightDataStream) -> FlightRecordBatchStream {
    // A DoPut may open with a message that carries only the command (no IPC message).
    let messages = request
        .map_err(FlightError::from)
        .try_filter(|data| std::future::ready(!data.data_header.is_empty() || !data.data_body.is_empty()));
    FlightRecordBatchStream::new_from_flight_data(messages)
}

/// Writes every batch of `stream` (after `first`, already read) with
/// `writer`; commits at the end, or nothing on error.
async fn write_all(
    mut writer: IngestWriter,
    first: Option<RecordBatch>,
    stream: &mut FlightRecordBatchStream,
) -> Result<u64, Status> {
    let result = async {
        if let Some(batch) = first {
            writer.push(&batch).await.map_err(|e| grpc_status(&e))?;
        }
        while let Some(batch) = stream.try_next().await? {
            writer.push(&batch).await.map_err(|e| grpc_status(&e))?;
        }
        Ok::<_, Status>(())
    }
    .await;
    match result {
        Ok(()) => writer.finish().await.map_err(|e| grpc_status(&e)),
        Err(e) => {
            writer.abort().await;
            Err(e)
        }
    }
}

/// `CommandStatementIngest`: create / append / replace, as ADBC's modes ask.
pub(super) async fn statement_ingest(
    session: &mut Session,
    command: CommandStatementIngest,
    request: PeekableFlightDataStream,
) -> Result<i64, Status> {
    if command.temporary {
        return Err(grpc_status(&Error::unsupported("ingest into a temporary table is not supported")));
    }
    if command.transaction_id.is_some() {
        return Err(grpc_status(&Error::unsupported(
            "Flight SQL transactions are not supported; each ingest is atomic on its own",
        )));
    }
    let options = command.table_definition_options.unwrap_or_default();
    let if_missing = match TableNotExistOption::try_from(options.if_not_exist) {
        Ok(TableNotExistOption::Create) => IfTableMissing::Create,
        _ => IfTableMissing::Fail,
    };
    let if_exists = match TableExistsOption::try_from(options.if_exists) {
        Ok(TableExistsOption::Append) => IfTableExists::Append,
        Ok(TableExistsOption::Replace) => IfTableExists::Replace,
        _ => IfTableExists::Fail,
    };
    let table = match (command.catalog, command.schema) {
        (Some(catalog), Some(schema)) => TableReference::full(catalog, schema, command.table),
        (None, Some(schema)) => TableReference::partial(schema, command.table),
        (_, None) => TableReference::bare(command.table),
    };
    let mut stream = batches(request);
    let first = stream.try_next().await?;
    let schema = match (&first, stream.schema()) {
        (_, Some(schema)) => std::sync::Arc::clone(schema),
        (Some(batch), None) => batch.schema(),
        (None, None) => return Err(Status::invalid_argument("ingest stream has no schema")),
    };
    let table_options = command.options.into_iter().collect();
    let writer =
        session.ingest(&table, &schema, if_missing, if_exists, &table_options).await.map_err(|e| grpc_status(&e))?;
    let rows = write_all(writer, first, &mut stream).await?;
    Ok(rows as i64)
}

/// A prepared `INSERT INTO t (columns) VALUES ($1, …)` executed with
/// parameter batches — sent with this DoPut, else `bound` by an earlier one:
/// the batches are the rows. `None` when there are no parameter rows.
pub(super) async fn prepared_insert(
    session: &mut Session,
    table: &TableReference,
    columns: &[String],
    stream: &mut FlightRecordBatchStream,
    bound: Vec<RecordBatch>,
) -> Result<Option<i64>, Status> {
    let first = loop {
        match stream.try_next().await? {
            Some(batch) if batch.num_rows() == 0 => {}
            other => break other,
        }
    };
    if first.is_none() && bound.iter().all(|b| b.num_rows() == 0) {
        return Ok(None);
    }
    let mut writer = session.ingest_columns(table, columns).await.map_err(|e| grpc_status(&e))?;
    if first.is_none() {
        for batch in &bound {
            if let Err(e) = writer.push(batch).await {
                writer.abort().await;
                return Err(grpc_status(&e));
            }
        }
    }
    let rows = write_all(writer, first, stream).await?;
    Ok(Some(rows as i64))
}

/// The parameter batches of a DoPut.
pub(super) fn parameter_batches(request: PeekableFlightDataStream) -> FlightRecordBatchStream {
    batches(request)
}
