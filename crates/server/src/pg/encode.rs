//! Arrow results and engine errors in Postgres wire form.

use std::sync::Arc;

use arrow_pg::datatypes::{arrow_schema_to_pg_fields, encode_recordbatch, into_pg_type};
use datafusion::arrow::datatypes::{DataType, Schema};
use datafusion::execution::SendableRecordBatchStream;
use futures::StreamExt;
use pgwire::api::Type;
use pgwire::api::portal::Format;
use pgwire::api::results::{FieldInfo, QueryResponse, Response, Tag};
use pgwire::error::{ErrorInfo, PgWireError, PgWireResult};
use pgwire::messages::response::NoticeResponse;
use streamhouse_engine::{
    CommandComplete, Error, Notice, NoticeSeverity, StatusCode, TransactionChange,
};

use crate::status::sqlstate;

/// An engine error as a Postgres `ErrorResponse` body. Shutdown is FATAL (the
/// connection closes, as in Postgres); everything else is ERROR and the
/// connection stays usable.
pub fn error_info(err: &Error) -> ErrorInfo {
    let severity = if err.code() == StatusCode::ShuttingDown {
        "FATAL"
    } else {
        "ERROR"
    };
    if !err.code().is_user_error() {
        tracing::error!(error = %err.message(), "internal error");
    }
    ErrorInfo::new(
        severity.to_string(),
        sqlstate(err).to_string(),
        err.message().to_string(),
    )
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
    ErrorInfo::new(
        severity.to_string(),
        code.to_string(),
        notice.message.clone(),
    )
    .into()
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
        pg_error(&Error::unsupported(format!(
            "result column type cannot be sent over the Postgres protocol: {e}"
        )))
    })
}

/// The Postgres type of a parameter; unknown types are sent as `text`, the
/// type Postgres itself resolves them to.
pub fn parameter_type(data_type: Option<&DataType>) -> Type {
    data_type
        .filter(|t| !matches!(t, DataType::Null))
        .and_then(|t| into_pg_type(t).ok())
        .unwrap_or(Type::TEXT)
}

/// Streams Arrow batches as Postgres data rows.
///
/// # Errors
/// A column type with no Postgres equivalent.
pub fn query_response(
    stream: SendableRecordBatchStream,
    format: &Format,
) -> PgWireResult<QueryResponse> {
    let fields = Arc::new(fields(stream.schema().as_ref(), format)?);
    let row_fields = Arc::clone(&fields);
    let rows = stream
        .map(move |batch| {
            let rows: Box<
                dyn Iterator<Item = PgWireResult<pgwire::messages::data::DataRow>> + Send,
            > = match batch {
                Ok(batch) => encode_recordbatch(Arc::clone(&row_fields), batch),
                Err(e) => Box::new(std::iter::once(Err(pg_error(&Error::from(e))))),
            };
            futures::stream::iter(rows)
        })
        .flatten();
    Ok(QueryResponse::new(fields, rows))
}
