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
