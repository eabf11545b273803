//! Postgres' string functions DataFusion lacks (and `pg_typeof`): `format(fmt, args…)` with
//! `%s`, `%I`, `%L` and `%%` (positions `%2$s` and widths `%-10s`
//! included), `quote_literal` and `quote_nullable`. Arguments are shown as
//! Postgres' output functions show them (`t`/`f`, `3` for a float 3.0).

use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, AsArray, StringBuilder};
use datafusion::arrow::datatypes::{DataType, Float32Type, Float64Type};
use datafusion::common::{DataFusionError, Result as DfResult};
use datafusion::logical_expr::{ColumnarValue, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility};

use crate::error::{Error, StatusCode};

/// Row `row` of `array` as Postgres' output function writes it; `None` for NULL.
fn output_text(array: &ArrayRef, row: usize) -> DfResult<Option<String>> {
    if array.is_null(row) {
        return Ok(None);
    }
    Ok(Some(match array.data_type() {
        DataType::Boolean => if array.as_boolean().value(row) { "t" } else { "f" }.to_string(),
        DataType::Float64 => crate::types::float8_text(array.as_primitive::<Float64Type>().value(row)),
        DataType::Float32 => crate::types::float4_text(array.as_primitive::<Float32Type>().value(row)),
        _ => {
            let text = datafusion::arrow::compute::cast(&array.slice(row, 1), &DataType::Utf8)?;
            text.as_string::<i32>().value(0).to_string()
        }
    }))
}

fn user_error(code: StatusCode, message: impl Into<String>) -> DataFusionError {
    DataFusionError::External(Box::new(Error::new(code, message)))
}

/// A string literal as Postgres quotes it: `'it''s'`, and `E'a\\b'` when it holds a backslash.
pub fn quote_literal(text: &str) -> String {
    let quoted = text.replace('\'', "''");
    if quoted.contains('\\') { format!("E'{}'", quoted.replace('\\', "\\\\")) } else { format!("'{quoted}'") }
}

/// Postgres' reserved and type/function-name keywords: quote_ident quotes them.
const RESERVED: &[&str] = &[
    "all",
    "analyse",
    "analyze",
    "and",
    "any",
    "array",
    "as",
    "asc",
    "asymmetric",
    "authorization",
    "binary",
    "both",
    "case",
    "cast",
    "check",
    "collate",
    "collation",
    "column",
    "concurrently",
    "constraint",
    "create",
    "cross",
    "current_catalog",
    "current_date",
    "current_role",
    "current_schema",
    "current_time",
    "current_timestamp",
    "current_user",
    "default",
    "deferrable",
    "desc",
    "distinct",
    "do",
    "else",
    "end",
    "except",
    "false",
    "fetch",
    "for",
    "foreign",
    "freeze",
    "from",
    "full",
    "grant",
    "group",
    "having",
    "ilike",
    "in",
    "initially",
    "inner",
    "intersect",
    "into",
    "is",
    "isnull",
    "join",
    "lateral",
    "leading",
    "left",
    "like",
    "limit",
    "localtime",
    "localtimestamp",
    "natural",
    "not",
    "notnull",
    "null",
    "offset",
    "on",
    "only",
    "or",
    "order",
    "outer",
    "overlaps",
    "placing",
    "primary",
    "references",
    "returning",
    "right",
    "select",
    "session_user",
    "similar",
    "some",
    "symmetric",
    "system_user",
    "table",
    "tablesample",
    "then",
    "to",
    "trailing",
    "true",
    "union",
    "unique",
    "user",
    "using",
    "variadic",
    "verbose",
    "when",
    "where",
    "window",
    "with",
];

/// An identifier as Postgres' quote_ident writes it: quoted unless it is
/// lower case letters, digits and underscores, and no reserved keyword.
fn quote_ident(name: &str) -> String {
    let plain = name.chars().next().is_some_and(|c| c.is_ascii_lowercase() || c == '_')
        && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        && !RESERVED.contains(&name);
    if plain { name.to_string() } else { format!("\"{}\"", name.replace('"', "\"\"")) }
}

/// `format(fmt, args)` for one row.
fn format_row(template: &str, args: &[Option<String>]) -> DfResult<String> {
    let invalid = |why: &str| user_error(StatusCode::InvalidParameterValue, format!("format(): {why}"));
    let mut out = String::new();
    let mut chars = template.chars().peekable();
    let mut next_arg = 0usize;
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        if chars.next_if_eq(&'%').is_some() {
            out.push('%');
            continue;
        }
        // %[position$][-][width]type
        let mut digits = String::new();
        while let Some(d) = chars.next_if(char::is_ascii_digit) {
            digits.push(d);
        }
        let mut position = None;
        if !digits.is_empty() && chars.next_if_eq(&'$').is_some() {
            let n: usize = digits.parse().map_err(|_| invalid("argument number is out of range"))?;
            if n == 0 {
                return Err(invalid("format specifies argument 0, but arguments are numbered from 1"));
            }
            position = Some(n - 1);
            digits.clear();
        }
        let left = digits.is_empty() && chars.next_if_eq(&'-').is_some();
        if digits.is_empty() {
            while let Some(d) = chars.next_if(char::is_ascii_digit) {
                digits.push(d);
            }
        }
        let width: usize =
            if digits.is_empty() { 0 } else { digits.parse().map_err(|_| invalid("width is out of range"))? };
        let kind = chars.next().ok_or_else(|| invalid("unterminated format() type specifier"))?;
        let index = position.unwrap_or(next_arg);
        next_arg = index + 1;
        let value = args.get(index).ok_or_else(|| invalid("too few arguments"))?;
        let text = match kind {
            's' => value.clone().unwrap_or_default(),
            'I' => match value {
                Some(v) => quote_ident(v),
                None => {
                    return Err(user_error(
                        StatusCode::InvalidParameterValue,
                        "null values cannot be formatted as an SQL identifier",
                    ));
                }
            },
            'L' => value.as_deref().map_or_else(|| "NULL".to_string(), quote_literal),
            other => return Err(invalid(&format!("unrecognized format() type specifier \"{other}\""))),
        };
        let pad = width.saturating_sub(text.chars().count());
        if left {
            out.push_str(&text);
            out.push_str(&" ".repeat(pad));
        } else {
            out.push_str(&" ".repeat(pad));
            out.push_str(&text);
        }
    }
    Ok(out)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Kind {
    Format,
    QuoteLiteral,
    QuoteNullable,
    TypeOf,
}

#[derive(Debug, PartialEq, Eq, Hash)]
struct TextFunction {
    kind: Kind,
    signature: Signature,
}

/// The name `pg_typeof` gives a type (`integer`, `text[]`, `unknown` for NULL).
fn type_name(data_type: &DataType) -> String {
    match data_type {
        DataType::Null => "unknown".to_string(),
        DataType::List(element) | DataType::LargeList(element) => format!("{}[]", type_name(element.data_type())),
        other => crate::types::postgres_type_name(other),
    }
}

/// `format`, `quote_literal`, `quote_nullable` and `pg_typeof`.
pub fn text_udfs() -> Vec<ScalarUDF> {
    [
        (Kind::Format, Signature::variadic_any(Volatility::Stable)),
        (Kind::QuoteLiteral, Signature::any(1, Volatility::Immutable)),
        (Kind::QuoteNullable, Signature::any(1, Volatility::Immutable)),
        (Kind::TypeOf, Signature::any(1, Volatility::Immutable)),
    ]
    .into_iter()
    .map(|(kind, signature)| ScalarUDF::new_from_impl(TextFunction { kind, signature }))
    .collect()
}

impl ScalarUDFImpl for TextFunction {
    fn name(&self) -> &str {
        match self.kind {
            Kind::Format => "format",
            Kind::QuoteLiteral => "quote_literal",
            Kind::QuoteNullable => "quote_nullable",
            Kind::TypeOf => "pg_typeof",
        }
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _arg_types: &[DataType]) -> DfResult<DataType> {
        Ok(DataType::Utf8)
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> DfResult<ColumnarValue> {
        if self.kind == Kind::TypeOf {
            let name = type_name(args.arg_fields[0].data_type());
            return Ok(ColumnarValue::Scalar(datafusion::common::ScalarValue::Utf8(Some(name))));
        }
        let rows = args.number_rows;
        let scalar = args.args.iter().all(|a| matches!(a, ColumnarValue::Scalar(_)));
        let arrays: Vec<ArrayRef> = args.args.iter().map(|a| a.to_array(rows)).collect::<DfResult<_>>()?;
        let mut out = StringBuilder::new();
        for row in 0..rows {
            let values: Vec<Option<String>> = arrays.iter().map(|a| output_text(a, row)).collect::<DfResult<_>>()?;
            match (self.kind, values.split_first()) {
                (Kind::Format, Some((Some(template), rest))) => out.append_value(format_row(template, rest)?),
                (Kind::QuoteLiteral, Some((Some(value), _))) => out.append_value(quote_literal(value)),
                (Kind::QuoteNullable, Some((value, _))) => {
                    out.append_value(value.as_deref().map_or_else(|| "NULL".to_string(), quote_literal));
                }
                _ => out.append_null(),
            }
        }
        let array: ArrayRef = Arc::new(out.finish());
        Ok(if scalar {
            ColumnarValue::Scalar(datafusion::common::ScalarValue::try_from_array(&array, 0)?)
        } else {
            ColumnarValue::Array(array)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_like_postgres() {
        let args = |v: &[Option<&str>]| v.iter().map(|s| s.map(str::to_string)).collect::<Vec<_>>();
        assert_eq!(format_row("%s.%I", &args(&[Some("a"), Some("My T")])).unwrap(), "a.\"My T\"");
        assert_eq!(format_row("%L, %L", &args(&[Some("it's"), None])).unwrap(), "'it''s', NULL");
        assert_eq!(format_row("%2$s %1$s %%", &args(&[Some("a"), Some("b")])).unwrap(), "b a %");
        assert_eq!(format_row("[%5s|%-5s]", &args(&[Some("a"), Some("b")])).unwrap(), "[    a|b    ]");
        assert_eq!(format_row("%s", &args(&[None])).unwrap(), "");
        assert!(format_row("%I", &args(&[None])).is_err());
        assert!(format_row("%s %s", &args(&[Some("a")])).is_err());
        assert_eq!(quote_literal("a\\b"), "E'a\\\\b'");
    }
}
