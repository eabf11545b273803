//! Postgres' names for unaliased result columns.
//!
//! DataFusion names `SELECT count(*), 1` columns `count(*)` and `Int64(1)`;
//! Postgres names them `count` and `?column?`, and clients (psql's headers,
//! ORMs mapping columns to fields) expect Postgres' names. This module applies
//! Postgres' rule (`FigureColname` in its parser) to the top-level select list
//! and renames the result columns accordingly. DataFusion needs unique names
//! inside a plan, so the renaming happens on the output, not in the plan.

use std::sync::Arc;

use datafusion::arrow::datatypes::{Field, Schema, SchemaRef};
use datafusion::execution::SendableRecordBatchStream;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::sql::sqlparser::ast::{self, Expr, SelectItem, SetExpr, Statement};
use futures::StreamExt;

/// Names for the result columns of `statement`, where Postgres would name
/// them differently from DataFusion; `None` when nothing needs renaming or the
/// select list cannot be matched to the columns one to one (wildcards).
pub fn postgres_column_names(statement: &Statement) -> Option<Vec<Option<String>>> {
    let Statement::Query(query) = statement else {
        return None;
    };
    let SetExpr::Select(select) = query.body.as_ref() else {
        return None;
    };
    let mut names = Vec::with_capacity(select.projection.len());
    for item in &select.projection {
        match item {
            SelectItem::UnnamedExpr(expr) => names.push(figure_name(expr).or_else(|| Some("?column?".to_string()))),
            SelectItem::ExprWithAlias { .. } => names.push(None),
            _ => return None,
        }
    }
    let renames = names.iter().zip(&select.projection).any(|(name, item)| {
        matches!(item, SelectItem::UnnamedExpr(e) if !matches!(e, Expr::Identifier(_) | Expr::CompoundIdentifier(_)))
            && name.is_some()
    });
    renames.then_some(names)
}

/// For a top-level SELECT whose output names DataFusion rejects as duplicates
/// (`SELECT 1, 1`, `SELECT a, a FROM t` — both fine in Postgres): the
/// statement with a unique internal alias on every unaliased item, and the
/// names Postgres gives all columns, to put back on the output. The source
/// SELECT of an `INSERT` is aliased the same way (its columns go in by
/// position, so names do not matter; the output is a row count).
pub fn with_unique_aliases(statement: &Statement) -> Option<(Statement, Vec<Option<String>>)> {
    let mut statement = statement.clone();
    let query = match &mut statement {
        Statement::Query(query) => query,
        Statement::Insert(insert) => {
            let source = insert.source.as_mut()?;
            let SetExpr::Select(select) = source.body.as_mut() else { return None };
            for (i, item) in select.projection.iter_mut().enumerate() {
                if let SelectItem::UnnamedExpr(expr) = item {
                    *item = SelectItem::ExprWithAlias {
                        expr: expr.clone(),
                        alias: ast::Ident::new(format!("__streamhouse_column_{}", i + 1)),
                    };
                }
            }
            return Some((statement, Vec::new()));
        }
        _ => return None,
    };
    // Branches of a UNION after the first: their names do not matter, but must be unique too.
    let mut body = query.body.as_mut();
    while let SetExpr::SetOperation { left, right, .. } = body {
        alias_unnamed(right.as_mut());
        body = left.as_mut();
    }
    let SetExpr::Select(select) = body else { return None };
    let mut names = Vec::with_capacity(select.projection.len());
    for (i, item) in select.projection.iter_mut().enumerate() {
        match item {
            SelectItem::UnnamedExpr(expr) => {
                names.push(Some(figure_name(expr).unwrap_or_else(|| "?column?".to_string())));
                *item = SelectItem::ExprWithAlias {
                    expr: expr.clone(),
                    alias: ast::Ident::new(format!("__streamhouse_column_{}", i + 1)),
                };
            }
            SelectItem::ExprWithAlias { alias, .. } => names.push(Some(alias.value.clone())),
            _ => return None,
        }
    }
    Some((statement, names))
}

/// Gives every unnamed expression of the select lists in `body` a unique alias.
fn alias_unnamed(body: &mut SetExpr) {
    match body {
        SetExpr::Select(select) => {
            for (i, item) in select.projection.iter_mut().enumerate() {
                if let SelectItem::UnnamedExpr(expr) = item {
                    *item = SelectItem::ExprWithAlias {
                        expr: expr.clone(),
                        alias: ast::Ident::new(format!("__streamhouse_column_{}", i + 1)),
                    };
                }
            }
        }
        SetExpr::SetOperation { left, right, .. } => {
            alias_unnamed(left);
            alias_unnamed(right);
        }
        SetExpr::Query(query) => alias_unnamed(query.body.as_mut()),
        _ => {}
    }
}

/// Postgres' name for an expression, or `None` for `?column?`.
fn figure_name(expr: &Expr) -> Option<String> {
    match expr {
        Expr::Identifier(ident) => Some(ident.value.clone()),
        Expr::CompoundIdentifier(parts) => parts.last().map(|i| i.value.clone()),
        Expr::Function(f) => f.name.0.last().and_then(|p| p.as_ident()).map(|i| i.value.to_ascii_lowercase()),
        Expr::Cast { expr, data_type, .. } => figure_name(expr).or_else(|| Some(type_name(data_type))),
        Expr::Nested(inner) => figure_name(inner),
        Expr::Case { .. } => Some("case".to_string()),
        Expr::Exists { .. } => Some("exists".to_string()),
        Expr::Array(_) => Some("array".to_string()),
        Expr::Value(v) if matches!(v.value, ast::Value::Boolean(_)) => Some("bool".to_string()),
        Expr::Extract { .. } => Some("extract".to_string()),
        Expr::Substring { .. } => Some("substring".to_string()),
        Expr::Trim { .. } => Some("btrim".to_string()),
        Expr::Position { .. } => Some("position".to_string()),
        Expr::Ceil { .. } => Some("ceil".to_string()),
        Expr::Floor { .. } => Some("floor".to_string()),
        _ => None,
    }
}

/// Postgres' internal name of a type, as it names `x::type` columns.
fn type_name(data_type: &ast::DataType) -> String {
    let text = data_type.to_string().to_ascii_lowercase();
    let base = text.split('(').next().unwrap_or(&text).trim();
    match base {
        "int" | "integer" | "int4" => "int4",
        "bigint" | "int8" => "int8",
        "smallint" | "int2" => "int2",
        "real" | "float4" => "float4",
        "double precision" | "double" | "float8" | "float" => "float8",
        "boolean" | "bool" => "bool",
        "character varying" | "varchar" => "varchar",
        "character" | "char" => "bpchar",
        "decimal" | "numeric" => "numeric",
        "timestamp with time zone" | "timestamptz" => "timestamptz",
        "timestamp" | "timestamp without time zone" => "timestamp",
        other => return other.to_string(),
    }
    .to_string()
}

/// `schema` with the given names applied.
pub fn rename_schema(schema: &SchemaRef, names: &[Option<String>]) -> SchemaRef {
    if schema.fields().len() != names.len() {
        return Arc::clone(schema);
    }
    let fields: Vec<Field> = schema
        .fields()
        .iter()
        .zip(names)
        .map(|(field, name)| match name {
            Some(name) => field.as_ref().clone().with_name(name),
            None => field.as_ref().clone(),
        })
        .collect();
    Arc::new(Schema::new_with_metadata(fields, schema.metadata().clone()))
}

/// A stream whose batches carry the renamed schema.
pub fn rename_stream(stream: SendableRecordBatchStream, names: &[Option<String>]) -> SendableRecordBatchStream {
    let schema = rename_schema(&stream.schema(), names);
    if Arc::ptr_eq(&schema, &stream.schema()) {
        return stream;
    }
    let target = Arc::clone(&schema);
    Box::pin(RecordBatchStreamAdapter::new(
        schema,
        stream.map(move |batch| {
            let batch = batch?;
            Ok(datafusion::arrow::array::RecordBatch::try_new(Arc::clone(&target), batch.columns().to_vec())?)
        }),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::sql::sqlparser::dialect::PostgreSqlDialect;
    use datafusion::sql::sqlparser::parser::Parser;

    fn names(sql: &str) -> Option<Vec<Option<String>>> {
        let statement = Parser::parse_sql(&PostgreSqlDialect {}, sql).unwrap().remove(0);
        postgres_column_names(&statement)
    }

    #[test]
    fn postgres_names() {
        let s = |v: &str| Some(v.to_string());
        assert_eq!(
            names("SELECT 1, count(*), 'a'::text, id::text, x AS y FROM t"),
            Some(vec![s("?column?"), s("count"), s("text"), s("id"), None])
        );
        assert_eq!(names("SELECT id, name FROM t"), None);
        assert_eq!(names("SELECT *, 1 FROM t"), None);
        assert_eq!(names("SELECT pg_catalog.version()"), Some(vec![s("version")]));
    }

    #[test]
    fn duplicate_names_get_unique_aliases() {
        let s = |v: &str| Some(v.to_string());
        let statement = Parser::parse_sql(&PostgreSqlDialect {}, "SELECT a, a, 1 AS x, 2 FROM t").unwrap().remove(0);
        let (aliased, names) = with_unique_aliases(&statement).unwrap();
        assert_eq!(
            aliased.to_string(),
            "SELECT a AS __streamhouse_column_1, a AS __streamhouse_column_2, 1 AS x, 2 AS __streamhouse_column_4 FROM t"
        );
        assert_eq!(names, vec![s("a"), s("a"), s("x"), s("?column?")]);
    }
}
