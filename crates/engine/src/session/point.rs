//! The fast path of a prepared point select: `SELECT columns | * FROM t
//! WHERE key = $1 [AND key2 = $2 …]`, every primary-key column of table `t`
//! compared with a parameter, executed with bound values — what an
//! application's read-by-id runs (drivers prepare it once, execute it per
//! request). The row is read with the table's key lookup
//! (`storage::Table::get`: in-memory key sets narrow the row groups to
//! read), with no DataFusion planning per execution: optimising and
//! planning a one-row query cost more than reading the row. The result has
//! exactly the schema the planned statement describes. Anything else
//! (another shape, a view, a transaction block, a catalog changed since
//! PREPARE) takes the general path, which gives the same rows.

use std::sync::Arc;

use datafusion::arrow::array::{ArrayRef, RecordBatch};
use datafusion::arrow::compute::cast;
use datafusion::common::{ParamValues, TableReference};
use datafusion::sql::sqlparser::ast;

use super::{Output, Prepared, Session, TransactionStatus, batch_stream, coerce_parameters, parameter_types};
use crate::catalog::RelationKind;
use crate::dynamic::DynamicTable;
use crate::error::Result;
use crate::sql;

/// A point select's shape: the table, the columns it returns (`None`: all),
/// and which parameter each compared column is bound to.
#[derive(Debug)]
pub(super) struct PointSelect {
    table: TableReference,
    columns: Option<Vec<String>>,
    /// `(column, parameter index from 0)`.
    keys: Vec<(String, usize)>,
}

impl PointSelect {
    /// The shape of `statement`, if it is a point select of parameters.
    pub(super) fn of(statement: &ast::Statement) -> Option<Self> {
        let ast::Statement::Query(query) = statement else { return None };
        if query.with.is_some()
            || query.order_by.is_some()
            || query.limit_clause.is_some()
            || query.fetch.is_some()
            || !query.locks.is_empty()
            || query.for_clause.is_some()
            || query.settings.is_some()
            || query.format_clause.is_some()
            || !query.pipe_operators.is_empty()
        {
            return None;
        }
        let ast::SetExpr::Select(select) = query.body.as_ref() else { return None };
        let plain = select.distinct.is_none()
            && select.top.is_none()
            && select.exclude.is_none()
            && select.select_modifiers.is_none()
            && select.prewhere.is_none()
            && select.connect_by.is_empty()
            && select.cluster_by.is_empty()
            && select.distribute_by.is_empty()
            && select.sort_by.is_empty()
            && select.value_table_mode.is_none()
            && select.into.is_none()
            && select.having.is_none()
            && select.qualify.is_none()
            && select.named_window.is_empty()
            && select.lateral_views.is_empty()
            && matches!(&select.group_by, ast::GroupByExpr::Expressions(e, m) if e.is_empty() && m.is_empty());
        let [from] = select.from.as_slice() else { return None };
        if !plain || !from.joins.is_empty() {
            return None;
        }
        let ast::TableFactor::Table {
            name,
            alias: None,
            args: None,
            with_hints,
            version: None,
            with_ordinality: false,
            partitions,
            json_path: None,
            sample: None,
            index_hints,
        } = &from.relation
        else {
            return None;
        };
        if !with_hints.is_empty() || !partitions.is_empty() || !index_hints.is_empty() {
            return None;
        }
        let table = sql::table_reference(name).ok()?;
        let columns = match select.projection.as_slice() {
            [ast::SelectItem::Wildcard(options)] => {
                let plain = options.opt_exclude.is_none()
                    && options.opt_except.is_none()
                    && options.opt_replace.is_none()
                    && options.opt_rename.is_none()
                    && options.opt_ilike.is_none()
                    && options.opt_alias.is_none();
                if !plain {
                    return None;
                }
                None
            }
            items => Some(
                items
                    .iter()
                    .map(|item| match item {
                        ast::SelectItem::UnnamedExpr(ast::Expr::Identifier(ident)) => Some(sql::ident_value(ident)),
                        _ => None,
                    })
                    .collect::<Option<Vec<_>>>()?,
            ),
        };
        let mut keys = Vec::new();
        equalities(select.selection.as_ref()?, &mut keys)?;
        Some(Self { table, columns, keys })
    }
}

/// Collects `column = $n` terms of a conjunction; `None` for anything else.
fn equalities(expr: &ast::Expr, out: &mut Vec<(String, usize)>) -> Option<()> {
    match expr {
        ast::Expr::BinaryOp { left, op: ast::BinaryOperator::And, right } => {
            equalities(left, out)?;
            equalities(right, out)
        }
        ast::Expr::Nested(inner) => equalities(inner, out),
        ast::Expr::BinaryOp { left, op: ast::BinaryOperator::Eq, right } => {
            let (column, parameter) = match (left.as_ref(), right.as_ref()) {
                (ast::Expr::Identifier(c), ast::Expr::Value(v)) | (ast::Expr::Value(v), ast::Expr::Identifier(c)) => {
                    (c, v)
                }
                _ => return None,
            };
            let ast::Value::Placeholder(p) = &parameter.value else { return None };
            let index = p.strip_prefix('$')?.parse::<usize>().ok()?.checked_sub(1)?;
            out.push((sql::ident_value(column), index));
            Some(())
        }
        _ => None,
    }
}

impl Session {
    /// Runs `prepared` on the fast path when it is a prepared point select
    /// by the whole primary key of a table; `Ok(None)` when it is not one
    /// (the caller runs it the general way).
    pub(super) async fn select_parameters(
        &mut self,
        prepared: &Prepared,
        params: &Option<ParamValues>,
    ) -> Result<Option<Output>> {
        let (Some(ParamValues::List(values)), Some(plan), Some(shape)) = (params, &prepared.plan, &prepared.point)
        else {
            return Ok(None);
        };
        if prepared.catalog_version != self.engine.catalog_version()
            || self.transaction_status() != TransactionStatus::Idle
        {
            return Ok(None);
        }
        let name = self.relation_name(&shape.table)?;
        if self.engine.catalog().relation_kind(&name) != Some(RelationKind::Table) {
            return Ok(None);
        }
        let Some(provider) = self.engine.catalog().relation(&name).await? else { return Ok(None) };
        let Some(dynamic) = provider.downcast_ref::<DynamicTable>() else { return Ok(None) };
        let storage = Arc::clone(dynamic.storage());
        let definition = storage.schema();
        let table_schema = &definition.schema;
        // Every key column compared once, nothing else compared.
        let mut bound: Vec<Option<usize>> = vec![None; definition.primary_key.len()];
        for (column, parameter) in &shape.keys {
            let Some(at) = definition.primary_key.iter().position(|&k| table_schema.field(k).name() == column) else {
                return Ok(None);
            };
            if bound[at].replace(*parameter).is_some() {
                return Ok(None);
            }
        }
        let Some(bound) = bound.into_iter().collect::<Option<Vec<usize>>>() else { return Ok(None) };
        let types = parameter_types(plan)?;
        if values.len() != types.len() || bound.is_empty() {
            return Ok(None);
        }
        let ParamValues::List(values) = coerce_parameters(ParamValues::List(values.clone()), &types)? else {
            return Ok(None);
        };
        let Some(schema) = prepared.result_schema_with(&ParamValues::List(values.clone()))? else { return Ok(None) };
        let projection: Vec<usize> = match &shape.columns {
            None => (0..table_schema.fields().len()).collect(),
            Some(columns) => {
                let found: Option<Vec<usize>> = columns.iter().map(|c| table_schema.index_of(c).ok()).collect();
                let Some(found) = found else { return Ok(None) };
                found
            }
        };
        if projection.len() != schema.fields().len() {
            return Ok(None);
        }
        let mut keys: Vec<ArrayRef> = Vec::with_capacity(bound.len());
        for (&column, &parameter) in definition.primary_key.iter().zip(&bound) {
            let Some(value) = values.get(parameter) else { return Ok(None) };
            if value.value.is_null() {
                // `key = NULL` is never true.
                return Ok(Some(Output::Rows(batch_stream(schema, vec![]))));
            }
            keys.push(cast(&value.value.to_array_of_size(1)?, table_schema.field(column).data_type())?);
        }
        let record = self.engine.inner().queries.start(self.id, &self.info.user, prepared.statement.to_string());
        let control = self.begin_statement();
        let rows = match control.run(async { Ok(storage.get(&keys).await?) }).await {
            Ok(rows) => rows,
            Err(e) => {
                record.fail(&e);
                return Err(e);
            }
        };
        let columns = projection
            .iter()
            .zip(schema.fields())
            .map(|(&c, field)| Ok(cast(rows.column(c), field.data_type())?))
            .collect::<Result<Vec<_>>>()?;
        let batch = RecordBatch::try_new(Arc::clone(&schema), columns)?;
        Ok(Some(Output::Rows(record.watch(batch_stream(schema, vec![batch])))))
    }
}

#[cfg(test)]
mod tests {
    use super::PointSelect;

    fn shape(sql: &str) -> Option<PointSelect> {
        let statements = crate::sql::parse(sql).expect("parses");
        PointSelect::of(statements[0].as_plan()?)
    }

    #[test]
    fn point_selects_are_recognised_and_nothing_else() {
        let star = shape("SELECT * FROM pt WHERE id = $1").expect("a point select");
        assert_eq!((star.columns, star.keys), (None, vec![("id".to_string(), 0)]));
        let some = shape("SELECT Score, id FROM s.pt WHERE $1 = ID").expect("a point select");
        assert_eq!(some.columns, Some(vec!["score".to_string(), "id".to_string()]));
        assert_eq!(some.keys, vec![("id".to_string(), 0)]);
        let pair = shape("SELECT v FROM pair WHERE (b = $2) AND a = $1").expect("a point select");
        assert_eq!(pair.keys, vec![("b".to_string(), 1), ("a".to_string(), 0)]);
        for other in [
            "SELECT * FROM pt WHERE id = 1",
            "SELECT * FROM pt WHERE id > $1",
            "SELECT * FROM pt WHERE id = $1 OR id = $2",
            "SELECT * FROM pt WHERE id = $1 ORDER BY id",
            "SELECT * FROM pt WHERE id = $1 LIMIT 1",
            "SELECT DISTINCT * FROM pt WHERE id = $1",
            "SELECT id + 1 FROM pt WHERE id = $1",
            "SELECT id AS x FROM pt WHERE id = $1",
            "SELECT count(*) FROM pt WHERE id = $1",
            "SELECT * FROM pt p WHERE id = $1",
            "SELECT * FROM pt JOIN q ON true WHERE id = $1",
            "SELECT * FROM pt WHERE id = $1 GROUP BY id",
            "WITH c AS (SELECT 1) SELECT * FROM pt WHERE id = $1",
            "SELECT * FROM pt",
            "SELECT * FROM pt WHERE id = $1 UNION SELECT * FROM pt WHERE id = $2",
        ] {
            assert!(shape(other).is_none(), "{other}");
        }
    }
}
