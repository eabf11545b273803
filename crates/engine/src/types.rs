//! SQL type names DataFusion does not know, mapped to Arrow types.
//!
//! `json` and `jsonb` are stored and returned as text (clients receive them
//! as `text`); `uuid` as text too. Everything else goes to pg_catalog's planner
//! (`regclass`, `oid`, `pg_catalog.int4` …) and then to DataFusion.

use std::sync::Arc;

use datafusion::arrow::datatypes::{DataType, Field, FieldRef};
use datafusion::error::Result;
use datafusion::logical_expr::planner::TypePlanner;
use datafusion::sql::sqlparser::ast::DataType as SqlType;
use datafusion_pg_catalog::pg_catalog::oid_type_planner::PgOidTypePlanner;

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
        self.pg_catalog.plan_type_field(sql_type)
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
