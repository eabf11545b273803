//! `x [NOT] IN (uncorrelated subquery)` where DataFusion cannot plan it:
//! anywhere but as a conjunct of a WHERE clause (in a select list, a CASE,
//! an ORDER BY, an OR). Grafana's table and column pickers send
//! `CASE WHEN quote_ident(table_schema) IN (SELECT … search_path …) THEN …`.
//!
//! The subquery runs once: its values are collected into an array by a
//! scalar subquery (`SELECT array_agg(v) FROM (subquery)`), and
//! `pg_in_set(x, values)` answers with SQL's three-valued IN: true when
//! some value equals `x`; NULL when none does and `x` or some value is
//! NULL; false otherwise, and false for no values at all. The values are
//! hashed once per batch, so a row costs one lookup. WHERE conjuncts are
//! left to DataFusion, which turns them into semi and anti joins.

use std::sync::Arc;

use datafusion::arrow::array::{Array, AsArray, BooleanArray, Scalar};
use datafusion::arrow::compute::kernels::cmp;
use datafusion::arrow::datatypes::DataType;
use datafusion::common::config::ConfigOptions;
use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::common::{Result as DfResult, ScalarValue, Spans};
use datafusion::logical_expr::expr::InSubquery;
use datafusion::logical_expr::expr_rewriter::NamePreserver;
use datafusion::logical_expr::utils::{conjunction, split_conjunction_owned};
use datafusion::logical_expr::{
    ColumnarValue, Expr, LogicalPlan, LogicalPlanBuilder, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature,
    Subquery, Volatility,
};
use datafusion::optimizer::AnalyzerRule;

/// The analyzer rule (see the module documentation).
#[derive(Debug, Default)]
pub struct UncorrelatedInSubquery;

impl AnalyzerRule for UncorrelatedInSubquery {
    fn analyze(&self, plan: LogicalPlan, _config: &ConfigOptions) -> DfResult<LogicalPlan> {
        plan.transform_up_with_subqueries(|plan| {
            let filter = matches!(plan, LogicalPlan::Filter(_));
            let names = NamePreserver::new(&plan);
            plan.map_expressions(|expr| {
                let saved = names.save(&expr);
                let rewritten = if filter {
                    let mut changed = false;
                    let mut conjuncts = Vec::new();
                    for conjunct in split_conjunction_owned(expr) {
                        if is_plannable(&conjunct) {
                            conjuncts.push(conjunct);
                        } else {
                            let t = conjunct.transform_up(membership)?;
                            changed |= t.transformed;
                            conjuncts.push(t.data);
                        }
                    }
                    let predicate = conjunction(conjuncts).unwrap_or(Expr::Literal(true.into(), None));
                    if changed { Transformed::yes(predicate) } else { Transformed::no(predicate) }
                } else {
                    expr.transform_up(membership)?
                };
                Ok(rewritten.update_data(|e| saved.restore(e)))
            })
        })
        .map(|t| t.data)
    }

    fn name(&self) -> &str {
        "uncorrelated_in_subquery"
    }
}

/// A WHERE conjunct DataFusion plans as a semi or anti join.
fn is_plannable(conjunct: &Expr) -> bool {
    match conjunct {
        Expr::InSubquery(_) => true,
        Expr::Not(inner) => matches!(inner.as_ref(), Expr::InSubquery(_)),
        _ => false,
    }
}

fn membership(expr: Expr) -> DfResult<Transformed<Expr>> {
    let Expr::InSubquery(InSubquery { expr: value, subquery, negated }) = expr else {
        return Ok(Transformed::no(expr));
    };
    if !subquery.outer_ref_columns.is_empty() || subquery.subquery.schema().fields().len() != 1 {
        return Ok(Transformed::no(Expr::InSubquery(InSubquery { expr: value, subquery, negated })));
    }
    let plan = Arc::unwrap_or_clone(subquery.subquery);
    let column = Expr::Column(datafusion::common::Column::from(plan.schema().qualified_field(0)));
    let values = LogicalPlanBuilder::from(plan)
        .aggregate(Vec::<Expr>::new(), vec![datafusion::functions_aggregate::expr_fn::array_agg(column)])?
        .build()?;
    let values =
        Expr::ScalarSubquery(Subquery { subquery: Arc::new(values), outer_ref_columns: vec![], spans: Spans::new() });
    let test = in_set_udf().call(vec![*value, values]);
    Ok(Transformed::yes(if negated { Expr::Not(Box::new(test)) } else { test }))
}

fn in_set_udf() -> Arc<ScalarUDF> {
    static UDF: std::sync::LazyLock<Arc<ScalarUDF>> = std::sync::LazyLock::new(|| {
        Arc::new(ScalarUDF::new_from_impl(InSet { signature: Signature::any(2, Volatility::Immutable) }))
    });
    Arc::clone(&UDF)
}

/// `pg_in_set(x, values)`: SQL's IN over an array of values.
#[derive(Debug, PartialEq, Eq, Hash)]
struct InSet {
    signature: Signature,
}

impl ScalarUDFImpl for InSet {
    fn name(&self) -> &str {
        "pg_in_set"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _arg_types: &[DataType]) -> DfResult<DataType> {
        Ok(DataType::Boolean)
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> DfResult<ColumnarValue> {
        let rows = args.number_rows;
        let values = args.args[0].to_array(rows)?;
        // The usual case: one set for every row (the subquery ran once).
        // Hashed once, so a row costs a lookup, not a pass over the set.
        if let ColumnarValue::Scalar(ScalarValue::List(set)) = &args.args[1] {
            if set.is_null(0) || set.value(0).is_empty() {
                return Ok(ColumnarValue::Array(Arc::new(BooleanArray::from(vec![false; rows]))));
            }
            let mut elements = set.value(0);
            if elements.data_type() != values.data_type() {
                elements = datafusion::arrow::compute::cast(&elements, values.data_type())?;
            }
            let has_null = elements.null_count() > 0;
            let mut hashed = std::collections::HashSet::with_capacity(elements.len());
            for i in (0..elements.len()).filter(|&i| elements.is_valid(i)) {
                hashed.insert(ScalarValue::try_from_array(&elements, i)?);
            }
            let mut out = Vec::with_capacity(rows);
            for row in 0..rows {
                out.push(if values.is_null(row) {
                    None
                } else if hashed.contains(&ScalarValue::try_from_array(&values, row)?) {
                    Some(true)
                } else if has_null {
                    None
                } else {
                    Some(false)
                });
            }
            return Ok(ColumnarValue::Array(Arc::new(BooleanArray::from(out))));
        }
        let sets = args.args[1].to_array(rows)?;
        let sets = match sets.data_type() {
            DataType::List(_) => sets,
            DataType::Null => {
                // No values at all: IN is false.
                return Ok(ColumnarValue::Array(Arc::new(BooleanArray::from(vec![false; rows]))));
            }
            other => {
                return Err(datafusion::error::DataFusionError::Internal(format!(
                    "pg_in_set expects a list, not {other}"
                )));
            }
        };
        let sets = sets.as_list::<i32>();
        let mut out = Vec::with_capacity(rows);
        for row in 0..rows {
            if sets.is_null(row) {
                out.push(Some(false));
                continue;
            }
            let mut set = sets.value(row);
            if set.is_empty() {
                out.push(Some(false));
                continue;
            }
            if values.is_null(row) {
                out.push(None);
                continue;
            }
            if set.data_type() != values.data_type() {
                set = datafusion::arrow::compute::cast(&set, values.data_type())?;
            }
            let equal = cmp::eq(&set, &Scalar::new(values.slice(row, 1)))?;
            out.push(if equal.true_count() > 0 {
                Some(true)
            } else if set.null_count() > 0 {
                None
            } else {
                Some(false)
            });
        }
        Ok(ColumnarValue::Array(Arc::new(BooleanArray::from(out))))
    }
}
