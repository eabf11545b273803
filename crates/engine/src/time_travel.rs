//! `table_as_of(name, point)`: a table as it was at a snapshot id or a time.
//!
//! ```sql
//! SELECT * FROM table_as_of('orders', 3);                                   -- snapshot 3
//! SELECT * FROM table_as_of('orders', TIMESTAMP '2026-11-21 12:00:00+00');  -- latest at or before
//! ```
//!
//! DataFusion's Postgres parser has no `AS OF` clause, so time travel is a
//! table function; snapshot ids are listed by `"orders$snapshots"`.

use std::sync::Arc;

use datafusion::catalog::{TableFunctionImpl, TableProvider};
use datafusion::common::DataFusionError;
use datafusion::logical_expr::Expr;
use datafusion::scalar::ScalarValue;

use crate::catalog::{AsOf, CatalogRef, DEFAULT_SCHEMA, RelationName};
use crate::error::Error;

/// The `table_as_of` table function.
pub struct TableAsOf {
    catalog: CatalogRef,
    /// The session's privilege check (SELECT on the table), if it has one.
    check: Option<Check>,
}

/// A check made on the relation before it is read.
pub type Check = Arc<dyn Fn(&RelationName) -> crate::error::Result<()> + Send + Sync>;

impl std::fmt::Debug for TableAsOf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TableAsOf").field("checked", &self.check.is_some()).finish_non_exhaustive()
    }
}

impl TableAsOf {
    /// Resolves names in `catalog`.
    pub fn new(catalog: CatalogRef) -> Self {
        Self { catalog, check: None }
    }

    /// Runs `check` on every relation before reading it.
    pub fn with_check(mut self, check: Check) -> Self {
        self.check = Some(check);
        self
    }
}

fn usage(detail: &str) -> DataFusionError {
    DataFusionError::External(Box::new(Error::invalid(format!(
        "table_as_of(table, snapshot_id | timestamp): {detail}"
    ))))
}

impl TableFunctionImpl for TableAsOf {
    fn call(&self, args: &[Expr]) -> datafusion::error::Result<Arc<dyn TableProvider>> {
        let [name, point] = args else { return Err(usage("expects two arguments")) };
        let name = match name {
            Expr::Literal(
                ScalarValue::Utf8(Some(n)) | ScalarValue::Utf8View(Some(n)) | ScalarValue::LargeUtf8(Some(n)),
                _,
            ) => n.clone(),
            _ => return Err(usage("the table name must be a string literal")),
        };
        let name = match name.split_once('.') {
            Some((schema, table)) => RelationName { schema: schema.to_string(), name: table.to_string() },
            None => RelationName { schema: DEFAULT_SCHEMA.to_string(), name },
        };
        let as_of = match point {
            Expr::Literal(value, _) => match value {
                ScalarValue::Int64(Some(v)) if *v > 0 => AsOf::Snapshot(*v as u64),
                ScalarValue::Int32(Some(v)) if *v > 0 => AsOf::Snapshot(*v as u64),
                ScalarValue::TimestampSecond(Some(v), _) => AsOf::TimestampMillis(v * 1000),
                ScalarValue::TimestampMillisecond(Some(v), _) => AsOf::TimestampMillis(*v),
                ScalarValue::TimestampMicrosecond(Some(v), _) => AsOf::TimestampMillis(v / 1000),
                ScalarValue::TimestampNanosecond(Some(v), _) => AsOf::TimestampMillis(v / 1_000_000),
                _ => return Err(usage("the point must be a positive snapshot id or a timestamp")),
            },
            _ => return Err(usage("the point must be a constant")),
        };
        if let Some(check) = &self.check {
            check(&name).map_err(|e| DataFusionError::External(Box::new(e)))?;
        }
        self.catalog.relation_as_of(&name, as_of).map_err(|e| DataFusionError::External(Box::new(e)))
    }
}
