//! `COPY … TO STDOUT` data: Arrow rows in Postgres' text, CSV or binary
//! COPY format. Binary rows are pgwire's `CopyEncoder`; text and CSV are
//! encoded here, with Postgres' quoting rules and the session's value
//! formats (dates, floats) — the same text a query result has.

use std::sync::Arc;

use bytes::{BufMut, BytesMut};
use datafusion::arrow::datatypes::Schema;
use futures::StreamExt;
use pgwire::api::portal::Format;
use pgwire::api::results::{CopyEncoder, CopyResponse, FieldInfo};
use pgwire::error::{PgWireError, PgWireResult};
use pgwire::messages::copy::CopyData;
use pgwire::types::ToSqlText;
use postgres_types::{IsNull, ToSql};
use streamhouse_engine::Error;
use streamhouse_engine::copy::{CopyFormat, CopyOptions, CopyOut};

use super::encode::{encode_rows, fields, pg_error};

/// COPY data, a batch of rows at a time.
pub type CopyChunks = futures::stream::BoxStream<'static, PgWireResult<Vec<CopyData>>>;

/// `COPY … TO STDOUT` data in the COPY's format as one chunk of row
/// messages per batch (after a header line when asked for); with the
/// format code and column count of its CopyOutResponse.
///
/// # Errors
/// A column type with no Postgres equivalent.
pub fn copy_chunks(out: CopyOut) -> PgWireResult<(i8, usize, CopyChunks)> {
    let CopyOut { stream, options, .. } = out;
    let schema = stream.schema();
    let binary = options.format == CopyFormat::Binary;
    let format = if binary { Format::UnifiedBinary } else { Format::UnifiedText };
    let fields = Arc::new(fields(schema.as_ref(), &format)?);
    let header = (options.header && !binary).then(|| Ok(vec![header_line(&schema, &options)]));
    let columns = fields.len();
    let mut first = true;
    let rows = stream.map(move |batch| match (batch, binary) {
        (Ok(batch), true) => {
            let mut encoder = CopyEncoder::new_binary(Arc::clone(&fields));
            if !std::mem::take(&mut first) {
                // The encoder writes the file header with its first row: spend it on an empty one.
                let _ = encoder.take_copy();
            }
            encode_rows(encoder, Arc::clone(&fields), batch).collect()
        }
        (Ok(batch), false) => encode_rows(TextRows::new(&options), Arc::clone(&fields), batch).collect(),
        (Err(e), _) => Err(pg_error(&Error::from(e))),
    });
    Ok((i8::from(binary), columns, futures::stream::iter(header).chain(rows).boxed()))
}

/// Streams Arrow batches as `COPY … TO STDOUT` data, a message per row.
///
/// # Errors
/// A column type with no Postgres equivalent.
pub fn copy_out_response(out: CopyOut) -> PgWireResult<CopyResponse> {
    let (format, columns, chunks) = copy_chunks(out)?;
    let rows = chunks
        .map(|chunk| match chunk {
            Ok(rows) => futures::stream::iter(rows.into_iter().map(Ok)).left_stream(),
            Err(e) => futures::stream::once(async { Err(e) }).right_stream(),
        })
        .flatten();
    Ok(CopyResponse::new(format, columns, rows))
}

fn header_line(schema: &Schema, options: &CopyOptions) -> CopyData {
    let mut rows = TextRows::new(options);
    for (i, field) in schema.fields().iter().enumerate() {
        rows.value(i, Some(field.name().as_bytes()));
    }
    rows.take()
}

/// Text and CSV COPY rows, one `CopyData` per row.
struct TextRows {
    options: CopyOptions,
    buffer: BytesMut,
    column: usize,
    value: BytesMut,
}

impl TextRows {
    fn new(options: &CopyOptions) -> Self {
        Self { options: options.clone(), buffer: BytesMut::new(), column: 0, value: BytesMut::new() }
    }

    /// Appends a value (`None`: NULL) as column `column`.
    fn value(&mut self, column: usize, value: Option<&[u8]>) {
        let o = &self.options;
        if column > 0 {
            self.buffer.put_u8(o.delimiter);
        }
        let Some(value) = value else {
            self.buffer.put_slice(o.null.as_bytes());
            return;
        };
        if o.format == CopyFormat::Csv {
            // Postgres quotes a value that could be misread: one holding the
            // delimiter, quote, CR or LF, one equal to the NULL string (so the
            // empty string, by default), and `\.`.
            let quote = value.is_empty() && o.null.is_empty()
                || value == o.null.as_bytes()
                || value == b"\\."
                || value.iter().any(|&b| b == o.delimiter || b == o.quote || b == b'\n' || b == b'\r');
            if !quote {
                self.buffer.put_slice(value);
                return;
            }
            self.buffer.put_u8(o.quote);
            for &b in value {
                if b == o.quote || b == o.escape {
                    self.buffer.put_u8(o.escape);
                }
                self.buffer.put_u8(b);
            }
            self.buffer.put_u8(o.quote);
            return;
        }
        for &b in value {
            match b {
                b'\\' => self.buffer.put_slice(b"\\\\"),
                b'\n' => self.buffer.put_slice(b"\\n"),
                b'\r' => self.buffer.put_slice(b"\\r"),
                b'\t' => self.buffer.put_slice(b"\\t"),
                b if b == o.delimiter => {
                    self.buffer.put_u8(b'\\');
                    self.buffer.put_u8(b);
                }
                b => self.buffer.put_u8(b),
            }
        }
    }

    fn take(&mut self) -> CopyData {
        self.buffer.put_u8(b'\n');
        self.column = 0;
        CopyData::new(self.buffer.split().freeze())
    }
}

impl arrow_pg::encoder::Encoder for TextRows {
    type Item = CopyData;

    fn encode_field<T>(&mut self, value: &T, pg_field: &FieldInfo) -> PgWireResult<()>
    where
        T: ToSql + ToSqlText + Sized,
    {
        self.value.clear();
        let mut out = std::mem::take(&mut self.value);
        let is_null = value
            .to_sql_text(pg_field.datatype(), &mut out, pg_field.format_options())
            .map_err(PgWireError::ApiError)?;
        let column = self.column;
        match is_null {
            IsNull::Yes => self.value(column, None),
            IsNull::No => self.value(column, Some(&out)),
        }
        self.value = out;
        self.column += 1;
        Ok(())
    }

    fn take_row(&mut self) -> CopyData {
        self.take()
    }
}
