//! `COPY … FROM STDIN` input: Postgres' text and CSV formats decoded into
//! Arrow batches of a table's columns, incrementally (data arrives in
//! arbitrary chunks) and in bounded memory (a batch at a time).
//!
//! Errors carry Postgres' SQLSTATEs and say where: a value that does not
//! parse is 22P02 and a malformed line 22P04, both with the line number and
//! column name, as Postgres' `CONTEXT: COPY t, line 3, column id` does.

use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, BinaryArray, RecordBatch, StringArray, StringBuilder};
use datafusion::arrow::compute::{CastOptions, cast_with_options};
use datafusion::arrow::datatypes::{DataType, SchemaRef};

use crate::error::{Error, Result, StatusCode};

pub mod binary;

/// The data format of a COPY.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CopyFormat {
    /// Postgres' text format: tab-separated, `\N` for NULL, backslash escapes.
    Text,
    /// CSV.
    Csv,
    /// Postgres' binary format.
    Binary,
}

/// The options of a COPY, as Postgres takes them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CopyOptions {
    /// Data format.
    pub format: CopyFormat,
    /// Column separator.
    pub delimiter: u8,
    /// The string that stands for NULL (`\N` in text, empty unquoted in CSV).
    pub null: String,
    /// Whether the first line is a header (skipped on input).
    pub header: bool,
    /// CSV quote character.
    pub quote: u8,
    /// CSV escape character inside quotes (the quote character by default).
    pub escape: u8,
}

/// One COPY option as the statement gives it (`WITH (…)` or the older
/// unparenthesized syntax), before it is checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CopyOption {
    /// `FORMAT text | csv | binary` (`CSV`, `BINARY`).
    Format(String),
    /// `DELIMITER 'c'`.
    Delimiter(String),
    /// `NULL 's'`.
    Null(String),
    /// `HEADER [boolean]`.
    Header(bool),
    /// `QUOTE 'c'`.
    Quote(String),
    /// `ESCAPE 'c'`.
    Escape(String),
    /// `ENCODING 'name'`.
    Encoding(String),
    /// `FREEZE [boolean]` (accepted, no effect).
    Freeze(bool),
}

impl CopyOptions {
    /// Options from a COPY statement's option list.
    ///
    /// # Errors
    /// Unknown formats, multi-byte delimiters, encodings other than UTF-8 (0A000).
    pub fn from_options(options: &[CopyOption]) -> Result<Self> {
        let mut format = CopyFormat::Text;
        let (mut delimiter, mut null, mut header, mut quote, mut escape) = (None, None, false, None, None);
        for option in options {
            match option {
                CopyOption::Format(name) => {
                    format = match name.to_ascii_lowercase().as_str() {
                        "text" => CopyFormat::Text,
                        "csv" => CopyFormat::Csv,
                        "binary" => CopyFormat::Binary,
                        other => return Err(Error::invalid(format!("COPY format \"{other}\" not recognized"))),
                    }
                }
                CopyOption::Delimiter(c) => delimiter = Some(single_byte("DELIMITER", c)?),
                CopyOption::Null(s) => null = Some(s.clone()),
                CopyOption::Header(h) => header = *h,
                CopyOption::Quote(c) => quote = Some(single_byte("QUOTE", c)?),
                CopyOption::Escape(c) => escape = Some(single_byte("ESCAPE", c)?),
                CopyOption::Encoding(e) if e.eq_ignore_ascii_case("utf8") || e.eq_ignore_ascii_case("utf-8") => {}
                CopyOption::Encoding(e) => {
                    return Err(Error::unsupported(format!("COPY ENCODING '{e}' is not supported: data is UTF-8")));
                }
                CopyOption::Freeze(_) => {}
            }
        }
        let csv = format == CopyFormat::Csv;
        if !csv && (quote.is_some() || escape.is_some()) {
            return Err(Error::unsupported("COPY QUOTE and ESCAPE are available only in CSV mode"));
        }
        let quote = quote.unwrap_or(b'"');
        let delimiter = delimiter.unwrap_or(if csv { b',' } else { b'\t' });
        if delimiter == quote && csv {
            return Err(Error::invalid("COPY delimiter and quote must be different"));
        }
        Ok(Self {
            format,
            delimiter,
            null: null.unwrap_or_else(|| if csv { String::new() } else { "\\N".into() }),
            header,
            quote,
            escape: escape.unwrap_or(quote),
        })
    }
}

fn single_byte(option: &str, text: &str) -> Result<u8> {
    let mut chars = text.chars();
    let (Some(c), None) = (chars.next(), chars.next()) else {
        return Err(Error::invalid(format!("COPY {option} must be a single one-byte character")));
    };
    u8::try_from(u32::from(c))
        .ok()
        .filter(u8::is_ascii)
        .ok_or_else(|| Error::invalid(format!("COPY {option} must be a single one-byte character")))
}

/// A NULL for a NOT NULL column, at `line` of the COPY data (23502).
pub(crate) fn not_null_violation(column: &str, table: &str, line: u64) -> Error {
    Error::new(
        StatusCode::ConstraintViolation,
        format!("null value in column \"{column}\" violates not-null constraint (COPY {table}, line {line})"),
    )
}

fn bad_format(message: String) -> Error {
    Error::new(StatusCode::BadCopyFormat, message)
}

/// Decodes text or CSV COPY data into batches of `schema`.
#[derive(Debug)]
pub struct CopyDecoder {
    table: String,
    schema: SchemaRef,
    options: CopyOptions,
    batch_size: usize,
    /// Bytes of a record not complete yet.
    pending: Vec<u8>,
    /// Lines consumed so far (1-based line of the next record is `line + 1`).
    line: u64,
    header_pending: bool,
    /// `\.` was seen: everything after it is ignored.
    ended: bool,
    /// Values of the rows of the batch being built, by column.
    columns: Vec<StringBuilder>,
    /// Line of each row of the batch being built.
    lines: Vec<u64>,
}

impl CopyDecoder {
    /// A decoder of rows of `schema` (the COPY's columns, in order) into `table`.
    ///
    /// # Errors
    /// The binary format (decoded elsewhere).
    pub fn new(table: &str, schema: SchemaRef, options: CopyOptions, batch_size: usize) -> Result<Self> {
        if options.format == CopyFormat::Binary {
            return Err(Error::internal("the binary COPY format is not decoded as text"));
        }
        let columns = schema.fields().iter().map(|_| StringBuilder::new()).collect();
        Ok(Self {
            table: table.to_owned(),
            header_pending: options.header,
            schema,
            options,
            batch_size: batch_size.max(1),
            pending: Vec::new(),
            line: 0,
            ended: false,
            columns,
            lines: Vec::new(),
        })
    }

    /// Rows decoded so far into the batch being built.
    fn buffered(&self) -> usize {
        self.lines.len()
    }

    /// Feeds a chunk of data; returns the batches it completed.
    ///
    /// # Errors
    /// A malformed line (22P04), a value that does not parse (22P02), a NULL
    /// in a NOT NULL column (23502): the message names the line and column.
    pub fn push(&mut self, data: &[u8]) -> Result<Vec<RecordBatch>> {
        if self.ended {
            return Ok(vec![]);
        }
        self.pending.extend_from_slice(data);
        let mut out = Vec::new();
        let mut start = 0;
        // Records are decoded in place; `pending` is put back after.
        let pending = std::mem::take(&mut self.pending);
        while let Some(end) = record_end(&self.options, &pending, start) {
            self.record(&pending[start..end])?;
            start = end + 1;
            if self.ended {
                break;
            }
            if self.buffered() >= self.batch_size {
                out.push(self.flush()?);
            }
        }
        self.pending = pending;
        self.pending.drain(..start);
        Ok(out)
    }

    /// The end of data: decodes a last line without a newline; returns the
    /// remaining rows.
    ///
    /// # Errors
    /// As [`CopyDecoder::push`]; an unterminated CSV quoted field.
    pub fn finish(&mut self) -> Result<Option<RecordBatch>> {
        if !self.ended && !self.pending.is_empty() {
            let record = std::mem::take(&mut self.pending);
            if self.options.format == CopyFormat::Csv && self.in_quotes(&record) {
                return Err(bad_format(format!(
                    "unterminated CSV quoted field (COPY {}, line {})",
                    self.table,
                    self.line + 1
                )));
            }
            self.record(&record)?;
        }
        if self.buffered() == 0 { Ok(None) } else { self.flush().map(Some) }
    }

    fn in_quotes(&self, record: &[u8]) -> bool {
        record.iter().filter(|&&b| b == self.options.quote).count() % 2 == 1
    }

    /// Decodes one record (without its newline).
    fn record(&mut self, record: &[u8]) -> Result<()> {
        // A record may span lines (CSV quoted newlines); count them all.
        let first_line = self.line + 1;
        self.line += 1 + record.iter().filter(|&&b| b == b'\n').count() as u64;
        let record = record.strip_suffix(b"\r").unwrap_or(record);
        if self.header_pending {
            self.header_pending = false;
            return Ok(());
        }
        if record == b"\\." {
            self.ended = true;
            return Ok(());
        }
        let text = std::str::from_utf8(record).map_err(|_| {
            Error::new(
                StatusCode::CharacterNotInRepertoire,
                format!("invalid byte sequence for encoding \"UTF8\" (COPY {}, line {first_line})", self.table),
            )
        })?;
        let delimiter = self.options.delimiter as char;
        // Fast path: a text line whose fields (other than NULLs) hold no
        // backslash is its fields as they are.
        let mut simple: Vec<Option<std::borrow::Cow<'_, str>>> = Vec::new();
        if self.options.format == CopyFormat::Text {
            for f in text.split(delimiter) {
                if f == self.options.null {
                    simple.push(None);
                } else if f.contains('\\') {
                    simple.clear();
                    break;
                } else {
                    simple.push(Some(std::borrow::Cow::Borrowed(f)));
                }
            }
        }
        let fields: Vec<Option<std::borrow::Cow<'_, str>>> = match self.options.format {
            CopyFormat::Text if !simple.is_empty() => simple,
            format => match format {
                CopyFormat::Csv => self.csv_fields(text),
                _ => self.text_fields(text),
            }
            .map_err(|message| bad_format(format!("{message} (COPY {}, line {first_line})", self.table)))?
            .into_iter()
            .map(|f| f.map(std::borrow::Cow::Owned))
            .collect(),
        };
        let expected = self.schema.fields().len();
        if fields.len() > expected {
            return Err(bad_format(format!(
                "extra data after last expected column (COPY {}, line {first_line})",
                self.table
            )));
        }
        if fields.len() < expected {
            let missing = self.schema.field(fields.len()).name();
            return Err(bad_format(format!(
                "missing data for column \"{missing}\" (COPY {}, line {first_line})",
                self.table
            )));
        }
        for (value, field) in fields.iter().zip(self.schema.fields()) {
            if value.is_none() && !field.is_nullable() {
                return Err(not_null_violation(field.name(), &self.table, first_line));
            }
        }
        for (column, value) in self.columns.iter_mut().zip(&fields) {
            column.append_option(value.as_deref());
        }
        self.lines.push(first_line);
        Ok(())
    }

    /// The fields of a text-format line: split at unescaped delimiters,
    /// backslash escapes decoded, the NULL string as `None`.
    fn text_fields(&self, line: &str) -> std::result::Result<Vec<Option<String>>, String> {
        let delimiter = self.options.delimiter as char;
        let mut fields = Vec::new();
        let mut raw = String::new();
        let mut value = String::new();
        let mut chars = line.chars().peekable();
        loop {
            match chars.next() {
                None => {
                    fields.push((raw != self.options.null).then_some(value));
                    return Ok(fields);
                }
                Some(c) if c == delimiter => {
                    fields.push((raw != self.options.null).then(|| std::mem::take(&mut value)));
                    raw.clear();
                    value.clear();
                }
                Some('\\') => {
                    let Some(next) = chars.next() else {
                        return Err("end-of-copy marker corrupt: a line ends in a backslash".into());
                    };
                    raw.push('\\');
                    raw.push(next);
                    match next {
                        'b' => value.push('\u{8}'),
                        'f' => value.push('\u{c}'),
                        'n' => value.push('\n'),
                        'r' => value.push('\r'),
                        't' => value.push('\t'),
                        'v' => value.push('\u{b}'),
                        '0'..='7' => {
                            let mut code = next.to_digit(8).unwrap_or(0);
                            for _ in 0..2 {
                                match chars.peek().and_then(|c| c.to_digit(8)) {
                                    Some(d) => {
                                        code = code * 8 + d;
                                        raw.push(chars.next().unwrap_or('0'));
                                    }
                                    None => break,
                                }
                            }
                            value.push(char::from_u32(code & 0xff).unwrap_or('\0'));
                        }
                        'x' => {
                            let mut code = 0;
                            let mut digits = 0;
                            while digits < 2 {
                                match chars.peek().and_then(|c| c.to_digit(16)) {
                                    Some(d) => {
                                        code = code * 16 + d;
                                        raw.push(chars.next().unwrap_or('0'));
                                        digits += 1;
                                    }
                                    None => break,
                                }
                            }
                            if digits == 0 {
                                value.push('x');
                            } else {
                                value.push(char::from_u32(code).unwrap_or('\0'));
                            }
                        }
                        other => value.push(other),
                    }
                }
                Some(c) => {
                    raw.push(c);
                    value.push(c);
                }
            }
        }
    }

    /// The fields of a CSV record: quoted fields unquoted (a quoted empty
    /// string is not NULL), unquoted fields equal to the NULL string as `None`.
    fn csv_fields(&self, record: &str) -> std::result::Result<Vec<Option<String>>, String> {
        let (delimiter, quote, escape) =
            (self.options.delimiter as char, self.options.quote as char, self.options.escape as char);
        let mut fields = Vec::new();
        let mut value = String::new();
        let mut was_quoted = false;
        let mut quoted = false;
        let mut chars = record.chars().peekable();
        loop {
            let c = chars.next();
            if quoted {
                match c {
                    None => return Err("unterminated CSV quoted field".into()),
                    Some(c)
                        if c == escape
                            && chars.peek().is_some_and(|&n| n == quote || (n == escape && escape != quote)) =>
                    {
                        value.push(chars.next().unwrap_or(quote));
                    }
                    Some(c) if c == quote => quoted = false,
                    Some(c) => value.push(c),
                }
                continue;
            }
            match c {
                None => {
                    let null = !was_quoted && value == self.options.null;
                    fields.push((!null).then_some(value));
                    return Ok(fields);
                }
                Some(c) if c == delimiter => {
                    let null = !was_quoted && value == self.options.null;
                    let done = std::mem::take(&mut value);
                    fields.push((!null).then_some(done));
                    was_quoted = false;
                }
                Some(c) if c == quote => {
                    quoted = true;
                    was_quoted = true;
                }
                Some(c) => value.push(c),
            }
        }
    }

    /// Converts the buffered rows into a batch of the table's types.
    fn flush(&mut self) -> Result<RecordBatch> {
        let lines = std::mem::take(&mut self.lines);
        let mut arrays: Vec<ArrayRef> = Vec::with_capacity(self.columns.len());
        for (values, field) in self.columns.iter_mut().zip(self.schema.fields()) {
            let text: StringArray = values.finish();
            let array = convert(&text, field.data_type()).map_err(|e| Error::new(e.code(), e.message().to_string()))?;
            // A value that became NULL did not parse: report the first.
            if array.null_count() > text.null_count()
                && let Some(row) = (0..text.len()).find(|&i| text.is_valid(i) && array.is_null(i))
            {
                let why = crate::types::conversion_error(text.value(row), field.data_type());
                return Err(Error::new(
                    why.code(),
                    format!("{} (COPY {}, line {}, column {})", why.message(), self.table, lines[row], field.name()),
                ));
            }
            arrays.push(array);
        }
        let options = datafusion::arrow::array::RecordBatchOptions::new().with_row_count(Some(lines.len()));
        Ok(RecordBatch::try_new_with_options(Arc::clone(&self.schema), arrays, &options)?)
    }
}

/// Where the record starting at `start` of `pending` ends (its newline), if complete.
fn record_end(options: &CopyOptions, pending: &[u8], start: usize) -> Option<usize> {
    let bytes = &pending[start..];
    if options.format != CopyFormat::Csv {
        return bytes.iter().position(|&b| b == b'\n').map(|i| start + i);
    }
    let (quote, escape) = (options.quote, options.escape);
    let mut quoted = false;
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if quoted && b == escape && escape != quote && bytes.get(i + 1).is_some_and(|&n| n == quote || n == escape) {
            i += 2;
            continue;
        }
        if b == quote {
            quoted = !quoted;
        } else if b == b'\n' && !quoted {
            return Some(start + i);
        }
        i += 1;
    }
    None
}

/// Text values as `data_type`; values that do not parse become NULL.
fn convert(text: &StringArray, data_type: &DataType) -> Result<ArrayRef> {
    if matches!(data_type, DataType::Binary | DataType::LargeBinary | DataType::BinaryView) {
        // bytea input: `\x` then hex digits (anything else is taken as is).
        let bytes: BinaryArray = text
            .iter()
            .map(|v| {
                v.map(|v| match v.strip_prefix("\\x") {
                    Some(hex) => decode_hex(hex),
                    None => Some(v.as_bytes().to_vec()),
                })
            })
            .map(Option::flatten)
            .collect();
        return Ok(datafusion::arrow::compute::cast(&bytes, data_type)?);
    }
    let options = CastOptions { safe: true, ..Default::default() };
    Ok(cast_with_options(text, data_type, &options)?)
}

fn decode_hex(hex: &str) -> Option<Vec<u8>> {
    if !hex.len().is_multiple_of(2) {
        return None;
    }
    (0..hex.len()).step_by(2).map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok()).collect()
}

/// A `COPY … TO STDOUT`: the rows to send and how to format them.
pub struct CopyOut {
    /// The rows.
    pub stream: datafusion::execution::SendableRecordBatchStream,
    /// Format, delimiter, NULL string, header.
    pub options: CopyOptions,
    /// The rows keep coming until the client cancels (`COPY (SUBSCRIBE …)`):
    /// send each batch as soon as it arrives.
    pub live: bool,
}

impl std::fmt::Debug for CopyOut {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CopyOut").field("options", &self.options).finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use datafusion::arrow::array::AsArray;
    use datafusion::arrow::datatypes::{Field, Float64Type, Int64Type, Schema};

    use super::*;

    fn schema() -> SchemaRef {
        Arc::new(Schema::new(vec![
            Field::new("id", DataType::Int64, false),
            Field::new("name", DataType::Utf8, true),
            Field::new("score", DataType::Float64, true),
        ]))
    }

    fn options(format: CopyFormat, header: bool) -> CopyOptions {
        let format_name = match format {
            CopyFormat::Csv => "csv",
            _ => "text",
        };
        let mut list = vec![CopyOption::Format(format_name.into())];
        if header {
            list.push(CopyOption::Header(true));
        }
        CopyOptions::from_options(&list).unwrap()
    }

    /// A row of the test table.
    type Row = (i64, Option<String>, Option<f64>);

    /// Decodes `data` fed in chunks of `chunk` bytes.
    fn decode(data: &str, options: CopyOptions, chunk: usize) -> Result<Vec<Row>> {
        let mut decoder = CopyDecoder::new("t", schema(), options, 2)?;
        let mut batches = Vec::new();
        for part in data.as_bytes().chunks(chunk.max(1)) {
            batches.extend(decoder.push(part)?);
        }
        batches.extend(decoder.finish()?);
        let mut rows = Vec::new();
        for b in batches {
            let (id, name, score) = (
                b.column(0).as_primitive::<Int64Type>(),
                b.column(1).as_string::<i32>(),
                b.column(2).as_primitive::<Float64Type>(),
            );
            for i in 0..b.num_rows() {
                rows.push((
                    id.value(i),
                    name.is_valid(i).then(|| name.value(i).to_string()),
                    score.is_valid(i).then(|| score.value(i)),
                ));
            }
        }
        Ok(rows)
    }

    #[test]
    fn text_format_in_any_chunking() {
        let data = "1\tann\t\\N\n2\ta\\tb\\\\c\\101\\x42\t3.5\r\n3\t\t-1\n\\.\n4\tignored\t0\n";
        let expected = vec![
            (1, Some("ann".to_string()), None),
            (2, Some("a\tb\\cAB".to_string()), Some(3.5)),
            (3, Some(String::new()), Some(-1.0)),
        ];
        for chunk in [1, 3, 7, 1000] {
            assert_eq!(decode(data, options(CopyFormat::Text, false), chunk).unwrap(), expected, "chunk {chunk}");
        }
    }

    #[test]
    fn csv_with_header_quotes_and_nulls() {
        let data = "id,name,score\n1,\"a, \"\"quoted\"\"\nname\",2\n2,,\n3,\"\",7\n4,plain,8";
        let expected = vec![
            (1, Some("a, \"quoted\"\nname".to_string()), Some(2.0)),
            (2, None, None),
            (3, Some(String::new()), Some(7.0)),
            (4, Some("plain".to_string()), Some(8.0)),
        ];
        for chunk in [1, 5, 1000] {
            assert_eq!(decode(data, options(CopyFormat::Csv, true), chunk).unwrap(), expected, "chunk {chunk}");
        }
    }

    #[test]
    fn errors_name_line_and_column() {
        let bad_value = decode("id,name,score\n1,a,1\n2,b,x\n", options(CopyFormat::Csv, true), 1000).unwrap_err();
        assert_eq!(bad_value.code(), StatusCode::InvalidTextRepresentation);
        assert_eq!(
            bad_value.message(),
            "invalid input syntax for type double precision: \"x\" (COPY t, line 3, column score)"
        );
        let missing = decode("1\tann\n", options(CopyFormat::Text, false), 1000).unwrap_err();
        assert_eq!(missing.code(), StatusCode::BadCopyFormat);
        assert_eq!(missing.message(), "missing data for column \"score\" (COPY t, line 1)");
        let extra = decode("1\ta\t2\n2\tb\t3\t4\n", options(CopyFormat::Text, false), 1000).unwrap_err();
        assert_eq!(extra.message(), "extra data after last expected column (COPY t, line 2)");
        let null_key = decode("\\N\ta\t1\n", options(CopyFormat::Text, false), 1000).unwrap_err();
        assert_eq!(null_key.code(), StatusCode::ConstraintViolation);
        let unterminated = decode("1,\"open,2\n", options(CopyFormat::Csv, false), 1000).unwrap_err();
        assert_eq!(unterminated.code(), StatusCode::BadCopyFormat);
    }

    #[test]
    fn bytea_hex_and_options() {
        let schema = Arc::new(Schema::new(vec![Field::new("b", DataType::Binary, true)]));
        let mut decoder = CopyDecoder::new("t", schema, options(CopyFormat::Text, false), 10).unwrap();
        assert!(decoder.push(b"\\\\x0aff\n").unwrap().is_empty());
        let batch = decoder.finish().unwrap().unwrap();
        assert_eq!(batch.column(0).as_binary::<i32>().value(0), &[0x0a, 0xff]);
        let semicolon =
            CopyOptions::from_options(&[CopyOption::Delimiter(";".into()), CopyOption::Null("NA".into())]).unwrap();
        assert_eq!((semicolon.delimiter, semicolon.null.as_str()), (b';', "NA"));
        assert!(CopyOptions::from_options(&[CopyOption::Format("xml".into())]).is_err());
        assert!(CopyOptions::from_options(&[CopyOption::Delimiter("é".into())]).is_err());
    }
}
