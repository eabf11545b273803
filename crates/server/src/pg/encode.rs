//! Arrow results and engine errors in Postgres wire form.

use std::sync::Arc;

use arrow_pg::datatypes::{arrow_schema_to_pg_fields, into_pg_type};
use arrow_pg::encoder::encode_value;
use datafusion::arrow::array::{Array, RecordBatch};
use datafusion::arrow::datatypes::{DataType, Schema};
use datafusion::execution::SendableRecordBatchStream;
use futures::StreamExt;
use pgwire::api::Type;
use pgwire::api::portal::Format;
use pgwire::api::results::DataRowEncoder;
use pgwire::api::results::{FieldInfo, QueryResponse, Response, Tag};
use pgwire::error::{ErrorInfo, PgWireError, PgWireResult};
use pgwire::messages::data::DataRow;
use pgwire::messages::response::NoticeResponse;
use streamhouse_engine::{CommandComplete, Error, Notice, NoticeSeverity, StatusCode, TransactionChange};

use crate::status::sqlstate;

/// An engine error as a Postgres `ErrorResponse` body. Shutdown is FATAL (the
/// connection closes, as in Postgres); everything else is ERROR and the
/// connection stays usable.
pub fn error_info(err: &Error) -> ErrorInfo {
    let severity = if err.code() == StatusCode::ShuttingDown { "FATAL" } else { "ERROR" };
    if !err.code().is_user_error() {
        tracing::error!(error = %err.message(), "internal error");
    }
    ErrorInfo::new(severity.to_string(), sqlstate(err).to_string(), err.message().to_string())
}

/// An engine error as a pgwire error.
pub fn pg_error(err: &Error) -> PgWireError {
    PgWireError::UserError(Box::new(error_info(err)))
}

/// A notice as a Postgres `NoticeResponse`.
pub fn notice_response(notice: &Notice) -> NoticeResponse {
    let (severity, code) = match notice.severity {
        NoticeSeverity::Notice => ("NOTICE", "00000"),
        NoticeSeverity::Warning => ("WARNING", "01000"),
    };
    ErrorInfo::new(severity.to_string(), code.to_string(), notice.message.clone()).into()
}

/// A command completion as a pgwire response.
pub fn command_response(command: &CommandComplete) -> Response {
    let tag = Tag::new(&command.tag());
    match command.transaction {
        Some(TransactionChange::Begin) => Response::TransactionStart(tag),
        Some(TransactionChange::End) => Response::TransactionEnd(tag),
        None => Response::Execution(tag),
    }
}

/// Postgres column descriptions for an Arrow schema, in the requested formats.
///
/// # Errors
/// A column type with no Postgres equivalent (0A000).
pub fn fields(schema: &Schema, format: &Format) -> PgWireResult<Vec<FieldInfo>> {
    arrow_schema_to_pg_fields(schema, format, None).map_err(|e| {
        pg_error(&Error::unsupported(format!("result column type cannot be sent over the Postgres protocol: {e}")))
    })
}

/// The Postgres type of a parameter; unknown types are sent as `text`, the
/// type Postgres itself resolves them to.
pub fn parameter_type(data_type: Option<&DataType>) -> Type {
    data_type.filter(|t| !matches!(t, DataType::Null)).and_then(|t| into_pg_type(t).ok()).unwrap_or(Type::TEXT)
}

/// Encodes a batch as Postgres data rows. Rows are encoded by arrow-pg,
/// except NULL intervals, which arrow-pg 0.16 writes as a zero interval.
pub fn encode_batch(
    fields: Arc<Vec<FieldInfo>>,
    batch: RecordBatch,
) -> impl Iterator<Item = PgWireResult<DataRow>> + Send {
    let mut encoder = DataRowEncoder::new(Arc::clone(&fields));
    let mut row = 0;
    std::iter::from_fn(move || {
        if row >= batch.num_rows() {
            return None;
        }
        let schema = batch.schema();
        for (col, array) in batch.columns().iter().enumerate() {
            let field = &fields[col];
            let result = if array.is_null(row) && matches!(array.data_type(), DataType::Interval(_)) {
                arrow_pg::encoder::Encoder::encode_field(&mut encoder, &None::<pg_interval::Interval>, field)
            } else {
                encode_value(&mut encoder, array, row, schema.field(col), field)
            };
            if let Err(e) = result {
                row = batch.num_rows();
                return Some(Err(e));
            }
        }
        row += 1;
        Some(Ok(encoder.take_row()))
    })
}

/// Streams Arrow batches as Postgres data rows.
///
/// # Errors
/// A column type with no Postgres equivalent.
pub fn query_response(stream: SendableRecordBatchStream, format: &Format) -> PgWireResult<QueryResponse> {
    let fields = Arc::new(fields(stream.schema().as_ref(), format)?);
    let row_fields = Arc::clone(&fields);
    let rows = stream
        .map(move |batch| {
            let rows: Box<dyn Iterator<Item = PgWireResult<pgwire::messages::data::DataRow>> + Send> = match batch {
                Ok(batch) => Box::new(encode_batch(Arc::clone(&row_fields), batch)),
                Err(e) => Box::new(std::iter::once(Err(pg_error(&Error::from(e))))),
            };
            futures::stream::iter(rows)
        })
        .flatten();
    Ok(QueryResponse::new(fields, rows))
}

/// A batch in Postgres text format, cell by cell (`None` for NULL): exactly
/// what a client reading text results over the wire gets. The in-process SQL
/// test runner renders results with it, so both runners agree byte for byte.
///
/// # Errors
/// A column type with no Postgres equivalent.
pub fn text_cells(batch: RecordBatch) -> PgWireResult<Vec<Vec<Option<String>>>> {
    let fields = Arc::new(fields(batch.schema().as_ref(), &Format::UnifiedText)?);
    let mut rows = Vec::with_capacity(batch.num_rows());
    for row in encode_batch(fields, batch) {
        let row = row?;
        let mut data: &[u8] = &row.data;
        let mut cells = Vec::with_capacity(row.field_count.max(0) as usize);
        for _ in 0..row.field_count {
            let (len, rest) = data.split_at(4);
            let len = i32::from_be_bytes([len[0], len[1], len[2], len[3]]);
            if len < 0 {
                cells.push(None);
                data = rest;
            } else {
                let (value, rest) = rest.split_at(len as usize);
                cells.push(Some(String::from_utf8_lossy(value).into_owned()));
                data = rest;
            }
        }
        rows.push(cells);
    }
    Ok(rows)
}
