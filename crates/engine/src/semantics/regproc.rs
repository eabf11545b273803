//! `regproc` columns (`pg_type.typreceive` …) behave as in Postgres: an oid
//! in comparisons (`typreceive != 0`), the function's name as text
//! (`typreceive::text = 'int4recv'`) and in query results. Drivers depend on
//! both: ADBC's PostgreSQL driver filters `pg_type` by oid and then maps
//! types by their receive function's name.

use std::sync::{Arc, LazyLock};

use datafusion::arrow::array::{Array, StringArray};
use datafusion::arrow::datatypes::DataType;
use datafusion::common::config::ConfigOptions;
use datafusion::common::tree_node::Transformed;
use datafusion::common::{DFSchema, Result};
use datafusion::logical_expr::expr::ScalarFunction;
use datafusion::logical_expr::{ColumnarValue, Expr, ExprSchemable, LogicalPlan, ScalarUDF, Volatility};
use datafusion::optimizer::AnalyzerRule;
use datafusion_pg_catalog::pg_catalog::oid_field::{OID_ALIAS_KEY, kind};

/// `regproc_name(oid)`: the name `regproc` prints: `-` for 0, the
/// function's name, or the number when there is no such function.
fn regproc_name_udf() -> Arc<ScalarUDF> {
    static UDF: LazyLock<Arc<ScalarUDF>> = LazyLock::new(|| {
        Arc::new(datafusion::logical_expr::create_udf(
            "regproc_name",
            vec![DataType::Int32],
            DataType::Utf8,
            Volatility::Immutable,
            Arc::new(|args: &[ColumnarValue]| {
                let name = |oid: i32| match oid {
                    0 => "-".to_string(),
                    oid => crate::catalog::pg::proc_name(oid).map_or_else(|| oid.to_string(), str::to_string),
                };
                match &args[0] {
                    ColumnarValue::Scalar(value) => {
                        let oid = match value.cast_to(&DataType::Int32)? {
                            datafusion::scalar::ScalarValue::Int32(v) => v,
                            _ => None,
                        };
                        Ok(ColumnarValue::Scalar(datafusion::scalar::ScalarValue::Utf8(oid.map(name))))
                    }
                    ColumnarValue::Array(array) => {
                        let array = datafusion::arrow::compute::cast(array, &DataType::Int32)?;
                        let oids = datafusion::common::cast::as_int32_array(&array)?;
                        let out: StringArray =
                            (0..oids.len()).map(|i| (!oids.is_null(i)).then(|| name(oids.value(i)))).collect();
                        Ok(ColumnarValue::Array(Arc::new(out)))
                    }
                }
            }),
        ))
    });
    Arc::clone(&UDF)
}

fn name_of(expr: Expr) -> Expr {
    Expr::ScalarFunction(ScalarFunction::new_udf(regproc_name_udf(), vec![expr]))
}

/// A regproc that is an oid. Some of pg_catalog's regproc columns
/// (`pg_am.amhandler`, `pg_aggregate.aggfnoid`) already hold names.
fn is_regproc_field(field: &datafusion::arrow::datatypes::Field) -> bool {
    field.metadata().get(OID_ALIAS_KEY).is_some_and(|k| k == kind::REGPROC) && field.data_type().is_integer()
}

fn is_regproc(expr: &Expr, schema: &DFSchema) -> bool {
    expr.to_field(schema).is_ok_and(|(_, field)| is_regproc_field(&field))
}

/// Renders `regproc` values as names where Postgres does: casts to text,
/// and the columns a query returns.
#[derive(Debug, Default)]
pub struct RegprocText;

impl AnalyzerRule for RegprocText {
    fn analyze(&self, plan: LogicalPlan, _config: &ConfigOptions) -> Result<LogicalPlan> {
        let plan = super::rewrite_plan(plan, |expr, schema| match expr {
            Expr::Cast(cast)
                if matches!(cast.field.data_type(), DataType::Utf8 | DataType::Utf8View | DataType::LargeUtf8)
                    && is_regproc(&cast.expr, schema) =>
            {
                let to = cast.field.data_type().clone();
                let named = name_of(*cast.expr);
                Ok(Transformed::yes(if to == DataType::Utf8 {
                    named
                } else {
                    Expr::Cast(datafusion::logical_expr::Cast::new(Box::new(named), to))
                }))
            }
            other => Ok(Transformed::no(other)),
        })?;
        // The result's regproc columns, as names.
        let returns_rows = super::is_query(&plan);
        let schema = Arc::clone(plan.schema());
        let regproc: Vec<bool> = schema.fields().iter().map(|f| is_regproc_field(f)).collect();
        if !returns_rows || !regproc.contains(&true) {
            return Ok(plan);
        }
        let columns = schema
            .iter()
            .zip(regproc)
            .map(|((qualifier, field), regproc)| {
                let column = Expr::Column(datafusion::common::Column::new(qualifier.cloned(), field.name()));
                if regproc { name_of(column).alias_qualified(qualifier.cloned(), field.name()) } else { column }
            })
            .collect::<Vec<_>>();
        datafusion::logical_expr::LogicalPlanBuilder::from(plan).project(columns)?.build()
    }

    fn name(&self) -> &str {
        "regproc_text"
    }
}
