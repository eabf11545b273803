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
use pgwire::api::results::{DataRowEncoder, FieldInfo, QueryResponse, Response, Tag};
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
    let mut info = ErrorInfo::new(severity.to_string(), sqlstate(err).to_string(), err.message().to_string());
    info.position = err.position().map(|p| p.to_string());
    info
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
    if let Format::Individual(codes) = format
        && codes.len() != schema.fields().len()
    {
        return Err(pg_error(&Error::new(
            StatusCode::InvalidParameter,
            format!("bind message has {} result formats but query has {} columns", codes.len(), schema.fields().len()),
        )));
    }
    let fields = arrow_schema_to_pg_fields(schema, format, None).map_err(|e| {
        pg_error(&Error::unsupported(format!("result column type cannot be sent over the Postgres protocol: {e}")))
    })?;
    Ok(fields.into_iter().zip(schema.fields()).map(|(info, field)| declared(info, field)).collect())
}

/// A column description with the type modifier Postgres sends (`numeric(12,2)`,
/// `varchar(20)`) and the declared type where its values travel as text
/// does (`varchar`, `bpchar`, `json`: their binary form is their text).
fn declared(info: FieldInfo, field: &datafusion::arrow::datatypes::Field) -> FieldInfo {
    let declared = streamhouse_engine::types::PgType::of(field);
    // The table and column it reads, where it reads one straight from a table.
    let origin = |key: &str| field.metadata().get(key).and_then(|v| v.parse::<i64>().ok());
    let table_id = origin(streamhouse_engine::session::TABLE_OID_KEY).and_then(|v| i32::try_from(v).ok());
    let column_id = origin(streamhouse_engine::session::ATTNUM_KEY).and_then(|v| i16::try_from(v).ok());
    let (table_id, column_id) = match (table_id, column_id) {
        (Some(table), Some(column)) => (Some(table), Some(column)),
        _ => (info.table_id(), info.column_id()),
    };
    let info = FieldInfo::new(info.name().to_string(), table_id, column_id, info.datatype().clone(), info.format())
        .with_format_options(Arc::clone(info.format_options()))
        .with_type_size(info.type_size())
        .with_type_modifier(info.type_modifier());
    let retype = |datatype: Type| {
        FieldInfo::new(info.name().to_string(), info.table_id(), info.column_id(), datatype, info.format())
            .with_format_options(Arc::clone(info.format_options()))
            .with_type_size(info.type_size())
    };
    // Catalog oid columns (`conrelid`, `atttypid` …) are `oid` in Postgres:
    // drivers read them as integers and match them against other oids.
    if field.metadata().contains_key(arrow_pg::datatypes::PG_OID_ALIAS_KEY) {
        return retype(Type::OID);
    }
    let info = match declared.oid {
        1043 => retype(Type::VARCHAR),
        1042 => retype(Type::BPCHAR),
        114 => retype(Type::JSON),
        _ => info,
    };
    if declared.typmod >= 0 { info.with_type_modifier(declared.typmod) } else { info }
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
    let encoder = DataRowEncoder::new(Arc::clone(&fields));
    encode_rows(encoder, fields, batch)
}

/// Encodes each row of `batch` with `encoder` (data rows, or COPY data).
pub(crate) fn encode_rows<E>(
    mut encoder: E,
    fields: Arc<Vec<FieldInfo>>,
    batch: RecordBatch,
) -> impl Iterator<Item = PgWireResult<E::Item>> + Send
where
    E: arrow_pg::encoder::Encoder + Send,
{
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
            } else if let Some(text) =
                float_text(array.as_ref(), row, field).or_else(|| decimal_text(array.as_ref(), row, field))
            {
                arrow_pg::encoder::Encoder::encode_field(&mut encoder, &Some(text), field)
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

/// A float in Postgres' text form, where pgwire's differs: shortest exact
/// digits without a trailing `.0`, an exponent (`1e+20`, `1.5e-05`) past
/// 15 digits for float8 or 6 for float4, `Infinity`, and `-0`. `None` for
/// other types, NULLs, binary format and `extra_float_digits` below 1
/// (which rounds, and pgwire does that as Postgres does).
fn float_text(array: &dyn Array, row: usize, field: &FieldInfo) -> Option<String> {
    use datafusion::arrow::array::AsArray;
    use datafusion::arrow::datatypes::{Float32Type, Float64Type};
    if array.is_null(row) || field.format() != pgwire::api::results::FieldFormat::Text {
        return None;
    }
    if field.format_options().extra_float_digits < 1 {
        return None;
    }
    let (scientific, limit, value) = match array.data_type() {
        DataType::Float64 => {
            let v = array.as_primitive::<Float64Type>().value(row);
            (format!("{v:e}"), 15, v)
        }
        DataType::Float32 => {
            let v = array.as_primitive::<Float32Type>().value(row);
            (format!("{v:e}"), 6, f64::from(v))
        }
        _ => return None,
    };
    Some(streamhouse_engine::types::postgres_float(&scientific, limit, value))
}

/// A `numeric` in Postgres' text form: all its digits, `scale` of them
/// after the point. Arrow-pg's goes through a 96-bit decimal and fails past
/// 28 digits, which `numeric(38,s)` arithmetic reaches (arrow's own
/// formatting cuts digits past the declared precision instead). `None` for
/// other types, NULLs and binary format.
fn decimal_text(array: &dyn Array, row: usize, field: &FieldInfo) -> Option<String> {
    use datafusion::arrow::array::AsArray;
    use datafusion::arrow::datatypes::{Decimal128Type, Decimal256Type};
    if array.is_null(row) || field.format() != pgwire::api::results::FieldFormat::Text {
        return None;
    }
    let (digits, scale) = match array.data_type() {
        DataType::Decimal128(_, scale) => (array.as_primitive::<Decimal128Type>().value(row).to_string(), *scale),
        DataType::Decimal256(_, scale) => (array.as_primitive::<Decimal256Type>().value(row).to_string(), *scale),
        _ => return None,
    };
    Some(numeric_text(&digits, scale))
}

/// `digits` (an integer, maybe negative) scaled by 10^-`scale`, as text.
fn numeric_text(digits: &str, scale: i8) -> String {
    let (sign, magnitude) = digits.strip_prefix('-').map_or(("", digits), |m| ("-", m));
    if scale <= 0 {
        let zeros = if magnitude == "0" { 0 } else { scale.unsigned_abs() as usize };
        return format!("{sign}{magnitude}{}", "0".repeat(zeros));
    }
    let scale = scale as usize;
    let padded = format!("{magnitude:0>width$}", width = scale + 1);
    let (whole, fraction) = padded.split_at(padded.len() - scale);
    format!("{sign}{whole}.{fraction}")
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

#[cfg(test)]
mod tests {
    use streamhouse_engine::types::postgres_float;

    use super::numeric_text;

    fn f8(v: f64) -> String {
        postgres_float(&format!("{v:e}"), 15, v)
    }

    fn f4(v: f32) -> String {
        postgres_float(&format!("{v:e}"), 6, f64::from(v))
    }

    #[test]
    fn numerics_render_every_digit() {
        assert_eq!(numeric_text("11481408", 4), "1148.1408");
        assert_eq!(numeric_text("-20000", 6), "-0.020000");
        assert_eq!(numeric_text("0", 4), "0.0000");
        assert_eq!(numeric_text("-5", 0), "-5");
        assert_eq!(numeric_text("12", -2), "1200");
        assert_eq!(numeric_text("0", -2), "0");
        let big = "170141183460469231731687303715884105727";
        assert_eq!(numeric_text(big, 0), big);
        assert_eq!(numeric_text(big, 10), "17014118346046923173168730371.5884105727");
    }

    #[test]
    fn floats_render_as_postgres_does() {
        assert_eq!(f8(3.0), "3");
        assert_eq!(f8(-2.5), "-2.5");
        assert_eq!(f8(1.0 / 3.0), "0.3333333333333333");
        assert_eq!(f8(1e20), "1e+20");
        assert_eq!(f8(1.5e-5), "1.5e-05");
        assert_eq!(f8(0.0001), "0.0001");
        assert_eq!(f8(123_456_789_012_345.0), "123456789012345");
        assert_eq!(f8(1e15), "1e+15");
        assert_eq!(f8(f64::INFINITY), "Infinity");
        assert_eq!(f8(f64::NEG_INFINITY), "-Infinity");
        assert_eq!(f8(f64::NAN), "NaN");
        assert_eq!(f8(-0.0), "-0");
        assert_eq!(f4(1e6), "1e+06");
        assert_eq!(f4(123_456.0), "123456");
        assert_eq!(f4(1.1), "1.1");
    }
}
