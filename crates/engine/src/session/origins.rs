//! Where result columns come from: the table (`pg_class.oid`) and column
//! number (`attnum`) of a column a query reads straight from a table, as
//! Postgres' RowDescription carries them. JDBC tools (DBeaver's editable
//! grids, `ResultSetMetaData.getTableName`, `isNullable`) look columns up
//! by them; expressions and columns of views carry none, as in Postgres.

use std::collections::HashMap;
use std::sync::Arc;

use datafusion::arrow::datatypes::{Field, Schema, SchemaRef};
use datafusion::common::TableReference;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::logical_expr::LogicalPlan;

use super::Session;

/// Field metadata: the table's oid.
pub const TABLE_OID_KEY: &str = "pg.table_oid";
/// Field metadata: the column's number in it (from 1).
pub const ATTNUM_KEY: &str = "pg.attnum";

/// A result column's table and column number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Origin {
    table: i32,
    attnum: i16,
}

impl Session {
    /// The origin of each output column of `plan` (none for a statement
    /// that returns no rows).
    pub(super) fn column_origins(&self, plan: &LogicalPlan) -> Vec<Option<Origin>> {
        if matches!(plan, LogicalPlan::Ddl(_) | LogicalPlan::Dml(_) | LogicalPlan::Statement(_) | LogicalPlan::Copy(_))
        {
            return vec![];
        }
        // The tables the plan scans, by the qualifier their columns carry (the alias, if any).
        let mut scanned: HashMap<TableReference, TableReference> = HashMap::new();
        let _ = plan.apply_with_subqueries(|node| {
            match node {
                LogicalPlan::TableScan(scan) => {
                    scanned.entry(scan.table_name.clone()).or_insert_with(|| scan.table_name.clone());
                }
                LogicalPlan::SubqueryAlias(alias) => {
                    if let LogicalPlan::TableScan(scan) = alias.input.as_ref() {
                        scanned.insert(alias.alias.clone(), scan.table_name.clone());
                    }
                }
                _ => {}
            }
            Ok(TreeNodeRecursion::Continue)
        });
        let catalog = self.engine.catalog();
        plan.schema()
            .iter()
            .map(|(qualifier, field)| {
                let table = scanned.get(qualifier?)?;
                let name = self.relation_name(table).ok()?;
                let info = catalog.relation_info(&name)?;
                if info.kind != crate::catalog::RelationKind::Table {
                    return None;
                }
                let attnum = i16::try_from(info.schema.index_of(field.name()).ok()? + 1).ok()?;
                Some(Origin { table: self.engine.relation_oids().relation(&name), attnum })
            })
            .collect()
    }
}

/// `schema` with each column's origin as field metadata.
pub(super) fn annotate(schema: SchemaRef, origins: &[Option<Origin>]) -> SchemaRef {
    if origins.len() != schema.fields().len() || origins.iter().all(Option::is_none) {
        return schema;
    }
    let fields: Vec<Field> = schema
        .fields()
        .iter()
        .zip(origins)
        .map(|(field, origin)| match origin {
            Some(origin) => {
                let mut metadata = field.metadata().clone();
                metadata.insert(TABLE_OID_KEY.to_string(), origin.table.to_string());
                metadata.insert(ATTNUM_KEY.to_string(), origin.attnum.to_string());
                field.as_ref().clone().with_metadata(metadata)
            }
            None => field.as_ref().clone(),
        })
        .collect();
    Arc::new(Schema::new_with_metadata(fields, schema.metadata().clone()))
}
