//! SQL type names DataFusion does not know, mapped to Arrow types.
//!
//! `json` and `jsonb` are stored and returned as text (clients receive them
//! as `text`); `uuid` as text too. Everything else goes to pg_catalog's planner
//! (`regclass`, `oid`, `pg_catalog.int4` …) and then to DataFusion; a type
//! name none of them knows is 42704 (`type "x" does not exist`).

use std::sync::Arc;

use datafusion::arrow::datatypes::{DataType, Field, FieldRef};
use datafusion::error::Result;
use datafusion::logical_expr::planner::TypePlanner;
use datafusion::sql::sqlparser::ast::DataType as SqlType;
use datafusion_pg_catalog::pg_catalog::oid_type_planner::PgOidTypePlanner;

use crate::error::{Error, StatusCode};

/// Plans Postgres type names.
#[derive(Debug, Default)]
pub struct PostgresTypePlanner {
    pg_catalog: PgOidTypePlanner,
}

impl TypePlanner for PostgresTypePlanner {
    fn plan_type_field(&self, sql_type: &SqlType) -> Result<Option<FieldRef>> {
        let text = match sql_type {
            SqlType::JSON | SqlType::JSONB | SqlType::Uuid => true,
            SqlType::Custom(name, _) => {
                let last = name.0.last().and_then(|p| p.as_ident()).map(|i| i.value.to_ascii_lowercase());
                matches!(last.as_deref(), Some("json" | "jsonb" | "uuid" | "citext"))
            }
            _ => false,
        };
        if text {
            return Ok(Some(Arc::new(Field::new("", DataType::Utf8, true))));
        }
        if let Some(field) = self.pg_catalog.plan_type_field(sql_type)? {
            return Ok(Some(field));
        }
        match sql_type {
            // A name no planner knows (DataFusion plans none of these).
            SqlType::Custom(name, _) => Err(datafusion::error::DataFusionError::External(Box::new(Error::new(
                StatusCode::ObjectNotFound,
                format!("type \"{name}\" does not exist"),
            )))),
            _ => Ok(None),
        }
    }
}

/// The Postgres name of an Arrow type, for messages (`bigint`, `timestamp with time zone`).
pub fn postgres_type_name(data_type: &DataType) -> String {
    match data_type {
        DataType::Boolean => "boolean".into(),
        DataType::Int8 | DataType::Int16 | DataType::UInt8 => "smallint".into(),
        DataType::Int32 | DataType::UInt16 => "integer".into(),
        DataType::Int64 | DataType::UInt32 | DataType::UInt64 => "bigint".into(),
        DataType::Float16 | DataType::Float32 => "real".into(),
        DataType::Float64 => "double precision".into(),
        DataType::Decimal32(..) | DataType::Decimal64(..) | DataType::Decimal128(..) | DataType::Decimal256(..) => {
            "numeric".into()
        }
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => "text".into(),
        DataType::Binary | DataType::LargeBinary | DataType::BinaryView => "bytea".into(),
        DataType::Date32 | DataType::Date64 => "date".into(),
        DataType::Time32(_) | DataType::Time64(_) => "time without time zone".into(),
        DataType::Timestamp(_, None) => "timestamp without time zone".into(),
        DataType::Timestamp(_, Some(_)) => "timestamp with time zone".into(),
        DataType::Interval(_) => "interval".into(),
        other => other.to_string(),
    }
}

/// Why `text` did not convert to a value of type `to`, with Postgres'
/// SQLSTATE and wording: an integer-shaped text out of the type's range is
/// 22003, a date-shaped text with a field out of range (`2024-02-30`,
/// `2024-01-01 25:00`) 22008, other text that is no date or timestamp
/// 22007, anything else 22P02.
pub fn conversion_error(text: &str, to: &DataType) -> Error {
    let name = postgres_type_name(to);
    let trimmed = text.trim();
    let digits = trimmed.strip_prefix(['+', '-']).unwrap_or(trimmed);
    let all_digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    match to {
        t if t.is_integer() && all_digits(digits) => {
            Error::new(StatusCode::NumericOverflow, format!("value \"{text}\" is out of range for type {name}"))
        }
        DataType::Date32 | DataType::Date64 | DataType::Timestamp(..) => {
            let date = trimmed.split([' ', 'T']).next().unwrap_or("");
            let fields: Vec<&str> = date.split('-').collect();
            if fields.len() == 3 && fields.iter().all(|f| all_digits(f)) {
                Error::new(
                    StatusCode::DatetimeFieldOverflow,
                    format!("date/time field value out of range: \"{text}\" (type {name})"),
                )
            } else {
                Error::new(
                    StatusCode::InvalidDatetimeFormat,
                    format!("invalid input syntax for type {name}: \"{text}\""),
                )
            }
        }
        _ => Error::new(
            StatusCode::InvalidTextRepresentation,
            format!("invalid input syntax for type {name}: \"{text}\""),
        ),
    }
}
