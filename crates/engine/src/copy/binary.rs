//! Postgres' binary COPY format (`PGCOPY`): a signature, flags and a header
//! extension, then tuples of length-prefixed fields in each type's binary
//! send format, then a `-1` trailer. Fields are split here as data arrives
//! and converted to the table's Arrow types a batch at a time.

use std::sync::Arc;

use datafusion::arrow::array::{
    Array, ArrayRef, BinaryArray, BinaryBuilder, BooleanArray, Date32Array, Decimal128Array, Float32Array,
    Float64Array, Int16Array, Int32Array, Int64Array, RecordBatch, RecordBatchOptions, StringArray,
    Time64MicrosecondArray, TimestampMicrosecondArray,
};
use datafusion::arrow::compute::cast;
use datafusion::arrow::datatypes::{DataType, Field, SchemaRef, TimeUnit};

use super::not_null_violation;
use crate::error::{Error, Result, StatusCode};

const SIGNATURE: &[u8] = b"PGCOPY\n\xff\r\n\0";
/// Days from 1970-01-01 to Postgres' epoch, 2000-01-01.
const EPOCH_DAYS: i32 = 10_957;
const EPOCH_MICROS: i64 = EPOCH_DAYS as i64 * 86_400_000_000;

/// Decodes binary COPY data into batches of `schema`.
#[derive(Debug)]
pub struct BinaryDecoder {
    table: String,
    schema: SchemaRef,
    batch_size: usize,
    pending: Vec<u8>,
    header_done: bool,
    ended: bool,
    /// Tuples consumed so far.
    tuple: u64,
    columns: Vec<BinaryBuilder>,
    tuples: Vec<u64>,
}

/// A damaged header, tuple or trailer (22P04, as Postgres reports them).
fn bad(message: String) -> Error {
    Error::new(StatusCode::BadCopyFormat, message)
}

impl BinaryDecoder {
    /// A decoder of rows of `schema` (the COPY's columns, in order) into `table`.
    ///
    /// # Errors
    /// A column type the binary format cannot be decoded into (0A000).
    pub fn new(table: &str, schema: SchemaRef, batch_size: usize) -> Result<Self> {
        for field in schema.fields() {
            if !supported(field.data_type()) {
                return Err(Error::unsupported(format!(
                    "binary COPY into column \"{}\" of type {} is not supported; use the text or CSV format",
                    field.name(),
                    crate::types::postgres_type_name(field.data_type())
                )));
            }
        }
        let columns = schema.fields().iter().map(|_| BinaryBuilder::new()).collect();
        Ok(Self {
            table: table.to_owned(),
            schema,
            batch_size: batch_size.max(1),
            pending: Vec::new(),
            header_done: false,
            ended: false,
            tuple: 0,
            columns,
            tuples: Vec::new(),
        })
    }

    /// Feeds a chunk of data; returns the batches it completed.
    ///
    /// # Errors
    /// A damaged header or tuple, a field of the wrong length for its column (22P03).
    pub fn push(&mut self, data: &[u8]) -> Result<Vec<RecordBatch>> {
        if self.ended {
            return Ok(vec![]);
        }
        self.pending.extend_from_slice(data);
        let mut at = 0;
        let mut out = Vec::new();
        if !self.header_done {
            match self.header()? {
                Some(len) => {
                    at = len;
                    self.header_done = true;
                }
                None => return Ok(out),
            }
        }
        while let Some(used) = self.tuple_at(at)? {
            at += used;
            if self.ended {
                break;
            }
            if self.tuples.len() >= self.batch_size {
                out.push(self.flush()?);
            }
        }
        self.pending.drain(..at);
        Ok(out)
    }

    /// The end of data: returns the remaining rows.
    ///
    /// # Errors
    /// Data ending inside the header or a tuple. Data that ends between
    /// tuples without the `-1` trailer is complete, as Postgres takes it
    /// (ADBC's PostgreSQL driver sends no trailer).
    pub fn finish(&mut self) -> Result<Option<RecordBatch>> {
        let complete = self.ended || (self.header_done && self.pending.is_empty());
        if !complete {
            return Err(bad(format!(
                "unexpected EOF in COPY data: the data ends inside {} (COPY {}, line {})",
                if self.header_done { "a tuple" } else { "the header" },
                self.table,
                self.tuple + 1
            )));
        }
        if self.tuples.is_empty() { Ok(None) } else { self.flush().map(Some) }
    }

    /// The header's length once it has arrived whole.
    fn header(&self) -> Result<Option<usize>> {
        let p = &self.pending;
        if p.len() < SIGNATURE.len() {
            if !SIGNATURE.starts_with(p) {
                return Err(bad("COPY file signature not recognized".into()));
            }
            return Ok(None);
        }
        if !p.starts_with(SIGNATURE) {
            return Err(bad("COPY file signature not recognized".into()));
        }
        let (Some(flags), Some(extension)) = (be_i32(p, 11), be_i32(p, 15)) else { return Ok(None) };
        if flags & (1 << 16) != 0 {
            return Err(bad("COPY data with OIDs is not supported".into()));
        }
        if flags >> 16 > 1 {
            return Err(bad("unrecognized critical flags in COPY file header".into()));
        }
        let len = 19 + usize::try_from(extension).map_err(|_| bad("invalid COPY file header".into()))?;
        Ok((p.len() >= len).then_some(len))
    }

    /// Decodes the tuple at `at` if it has arrived whole; returns its length.
    fn tuple_at(&mut self, at: usize) -> Result<Option<usize>> {
        let p = &self.pending;
        let Some(count) = p.get(at..at + 2).map(|b| i16::from_be_bytes([b[0], b[1]])) else { return Ok(None) };
        let line = self.tuple + 1;
        if count == -1 {
            self.ended = true;
            return Ok(Some(2));
        }
        let expected = self.schema.fields().len();
        if usize::try_from(count).ok() != Some(expected) {
            return Err(bad(format!(
                "row field count is {count}, expected {expected} (COPY {}, line {line})",
                self.table
            )));
        }
        // Find the tuple's extent before appending any field.
        let mut fields = Vec::with_capacity(expected);
        let mut pos = at + 2;
        for _ in 0..expected {
            let Some(len) = be_i32(p, pos) else { return Ok(None) };
            pos += 4;
            if len == -1 {
                fields.push(None);
                continue;
            }
            let len = usize::try_from(len)
                .map_err(|_| bad(format!("invalid field size (COPY {}, line {line})", self.table)))?;
            if p.len() < pos + len {
                return Ok(None);
            }
            fields.push(Some(pos..pos + len));
            pos += len;
        }
        for ((builder, field), range) in self.columns.iter_mut().zip(self.schema.fields()).zip(fields) {
            match range {
                Some(range) => builder.append_value(&self.pending[range]),
                None if !field.is_nullable() => {
                    return Err(not_null_violation(field.name(), &self.table, line));
                }
                None => builder.append_null(),
            }
        }
        self.tuple += 1;
        self.tuples.push(line);
        Ok(Some(pos - at))
    }

    fn flush(&mut self) -> Result<RecordBatch> {
        let tuples = std::mem::take(&mut self.tuples);
        let mut arrays = Vec::with_capacity(self.columns.len());
        for (builder, field) in self.columns.iter_mut().zip(self.schema.fields()) {
            let raw = builder.finish();
            let array = convert(&raw, field).map_err(|(row, message)| {
                // A field whose bytes are not a value of its column's type (22P03).
                Error::new(
                    StatusCode::BadBinaryFormat,
                    format!(
                        "incorrect binary data format: {message} (COPY {}, line {}, column {})",
                        self.table,
                        tuples.get(row).copied().unwrap_or_default(),
                        field.name()
                    ),
                )
            })?;
            arrays.push(array);
        }
        let options = RecordBatchOptions::new().with_row_count(Some(tuples.len()));
        Ok(RecordBatch::try_new_with_options(Arc::clone(&self.schema), arrays, &options)?)
    }
}

fn be_i32(p: &[u8], at: usize) -> Option<i32> {
    p.get(at..at + 4).map(|b| i32::from_be_bytes([b[0], b[1], b[2], b[3]]))
}

fn supported(data_type: &DataType) -> bool {
    use DataType::*;
    matches!(
        data_type,
        Boolean
            | Int16
            | Int32
            | Int64
            | Float32
            | Float64
            | Utf8
            | LargeUtf8
            | Utf8View
            | Binary
            | LargeBinary
            | BinaryView
            | Date32
            | Time64(TimeUnit::Microsecond)
            | Timestamp(_, _)
            | Decimal128(_, _)
    )
}

type Converted = std::result::Result<ArrayRef, (usize, String)>;

/// Fixed-width big-endian values, widened from any narrower integer the client sent.
fn ints(raw: &BinaryArray, width: usize) -> std::result::Result<Vec<Option<i64>>, (usize, String)> {
    raw.iter()
        .enumerate()
        .map(|(row, v)| {
            v.map(|b| match b.len() {
                2 if width >= 2 => Ok(i64::from(i16::from_be_bytes([b[0], b[1]]))),
                4 if width >= 4 => Ok(i64::from(i32::from_be_bytes([b[0], b[1], b[2], b[3]]))),
                8 if width >= 8 => Ok(i64::from_be_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]])),
                n => Err((row, format!("{n}-byte value for a {width}-byte type"))),
            })
            .transpose()
        })
        .collect()
}

fn convert(raw: &BinaryArray, field: &Field) -> Converted {
    let data_type = field.data_type();
    let array: ArrayRef = match data_type {
        DataType::Boolean => Arc::new(
            raw.iter()
                .enumerate()
                .map(|(row, v)| {
                    v.map(|b| match b {
                        [x] => Ok(*x != 0),
                        _ => Err((row, format!("{}-byte value for boolean", b.len()))),
                    })
                    .transpose()
                })
                .collect::<std::result::Result<BooleanArray, _>>()?,
        ),
        DataType::Int16 => {
            let v = ints(raw, 2)?;
            Arc::new(v.into_iter().map(|x| x.map(|x| x as i16)).collect::<Int16Array>())
        }
        DataType::Int32 => {
            let v = ints(raw, 4)?;
            Arc::new(v.into_iter().map(|x| x.map(|x| x as i32)).collect::<Int32Array>())
        }
        DataType::Int64 => Arc::new(ints(raw, 8)?.into_iter().collect::<Int64Array>()),
        DataType::Float32 | DataType::Float64 => {
            let values = raw
                .iter()
                .enumerate()
                .map(|(row, v)| {
                    v.map(|b| match b.len() {
                        4 => Ok(f64::from(f32::from_be_bytes([b[0], b[1], b[2], b[3]]))),
                        8 => Ok(f64::from_be_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]])),
                        n => Err((row, format!("{n}-byte value for a floating-point type"))),
                    })
                    .transpose()
                })
                .collect::<std::result::Result<Float64Array, _>>()?;
            if *data_type == DataType::Float32 {
                Arc::new(values.iter().map(|x| x.map(|x| x as f32)).collect::<Float32Array>())
            } else {
                Arc::new(values)
            }
        }
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => {
            let text = raw
                .iter()
                .enumerate()
                .map(|(row, v)| {
                    v.map(|b| std::str::from_utf8(b).map_err(|_| (row, "invalid UTF-8 in a text value".to_string())))
                        .transpose()
                })
                .collect::<std::result::Result<StringArray, _>>()?;
            Arc::new(text)
        }
        DataType::Binary | DataType::LargeBinary | DataType::BinaryView => Arc::new(raw.clone()),
        DataType::Date32 => {
            let days = ints(raw, 4)?;
            Arc::new(days.into_iter().map(|d| d.map(|d| d as i32 + EPOCH_DAYS)).collect::<Date32Array>())
        }
        DataType::Time64(_) => Arc::new(ints(raw, 8)?.into_iter().collect::<Time64MicrosecondArray>()),
        DataType::Timestamp(_, tz) => {
            let micros = ints(raw, 8)?;
            Arc::new(
                micros
                    .into_iter()
                    .map(|m| m.map(|m| m.saturating_add(EPOCH_MICROS)))
                    .collect::<TimestampMicrosecondArray>()
                    .with_timezone_opt(tz.clone()),
            )
        }
        DataType::Decimal128(precision, scale) => {
            let values = raw
                .iter()
                .enumerate()
                .map(|(row, v)| {
                    v.map(|b| numeric(b, *scale).ok_or((row, "invalid numeric value".to_string()))).transpose()
                })
                .collect::<std::result::Result<Decimal128Array, _>>()?;
            Arc::new(values.with_precision_and_scale(*precision, *scale).map_err(|e| (0, e.to_string()))?)
        }
        other => return Err((0, format!("type {other} cannot be read in binary"))),
    };
    if array.data_type() == data_type {
        return Ok(array);
    }
    cast(&array, data_type).map_err(|e| (0, e.to_string()))
}

/// A Postgres `numeric` in its binary form (base-10000 digits) as an
/// integer scaled by `scale`, rounded half away from zero as Postgres rounds;
/// `None` for NaN, infinities and overflow.
fn numeric(b: &[u8], scale: i8) -> Option<i128> {
    let word = |i: usize| b.get(i..i + 2).map(|w| i16::from_be_bytes([w[0], w[1]]));
    let (ndigits, weight, sign) = (word(0)?, word(2)?, word(4)? as u16);
    if sign != 0x0000 && sign != 0x4000 {
        return None;
    }
    // value = digits as one integer × 10^(-digits_scale)
    let mut digits: i128 = 0;
    for i in 0..usize::try_from(ndigits).ok()? {
        digits = digits.checked_mul(10_000)?.checked_add(i128::from(word(8 + 2 * i)?))?;
    }
    let digits_scale = (i32::from(ndigits) - 1 - i32::from(weight)) * 4;
    let shift = i32::from(scale) - digits_scale;
    let value = if shift >= 0 {
        digits.checked_mul(10i128.checked_pow(u32::try_from(shift).ok()?)?)?
    } else {
        match 10i128.checked_pow(u32::try_from(-shift).ok()?) {
            Some(divisor) => (digits + divisor / 2) / divisor,
            None => 0,
        }
    };
    Some(if sign == 0x4000 { -value } else { value })
}
