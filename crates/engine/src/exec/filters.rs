//! The order a filter evaluates its conjuncts in.
//!
//! DataFusion evaluates `a AND b AND c` left to right, and evaluates a
//! right side only on the rows the left side kept once it keeps at most a
//! fifth of them (`BinaryExpr`'s pre-selection), so a cheap and selective
//! conjunct first spares the later ones most rows. Plans keep the order of
//! the query text: TPC-H q12 compares `l_shipmode` strings over all 6
//! million `lineitem` rows before the date comparisons that keep 15% of
//! them. [`CheapConjunctsFirst`] orders each filter's conjuncts by the cost
//! class of what they compare: fixed-width columns with constants, then
//! fixed-width columns with each other, then strings; a conjunct that can
//! fail (arithmetic, casts, function calls, anything not classified) goes
//! after all of them, in its original order among its kind. Moving a
//! conjunct that cannot fail earlier can only spare a later one rows, so
//! no statement fails that did not (and SQL fixes no order anyway).
//!
//! [`ProbeScans`] marks the Dynamic Table scans whose rows go straight to a
//! hash join's probe side, which then leave the join's hash-table probe
//! filters to the join (see `DynamicScanExec`'s learned filters).

use std::sync::Arc;

use datafusion::arrow::datatypes::{DataType, Schema};
use datafusion::common::config::ConfigOptions;
use datafusion::common::tree_node::{Transformed, TransformedResult, TreeNode};
use datafusion::error::Result;
use datafusion::logical_expr::Operator;
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_expr::expressions::{
    BinaryExpr, Column, InListExpr, IsNotNullExpr, IsNullExpr, Literal, NotExpr,
};
use datafusion::physical_expr::utils::{conjunction, split_conjunction};
use datafusion::physical_optimizer::PhysicalOptimizerRule;
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::filter::{FilterExec, FilterExecBuilder};
use datafusion::physical_plan::joins::HashJoinExec;
use datafusion::physical_plan::projection::ProjectionExec;

use crate::dynamic::scan::DynamicScanExec;

/// Orders every filter's conjuncts cheapest first (see the module).
#[derive(Debug, Default)]
pub struct CheapConjunctsFirst;

impl PhysicalOptimizerRule for CheapConjunctsFirst {
    fn optimize(&self, plan: Arc<dyn ExecutionPlan>, _config: &ConfigOptions) -> Result<Arc<dyn ExecutionPlan>> {
        plan.transform_up(|node| {
            let Some(filter) = node.downcast_ref::<FilterExec>() else {
                return Ok(Transformed::no(node));
            };
            let schema = filter.input().schema();
            let conjuncts = split_conjunction(filter.predicate());
            if conjuncts.len() < 2 {
                return Ok(Transformed::no(node));
            }
            let mut ordered: Vec<(u8, usize)> =
                conjuncts.iter().enumerate().map(|(at, c)| (class(c, &schema).unwrap_or(FALLIBLE), at)).collect();
            ordered.sort();
            if ordered.iter().enumerate().all(|(at, (_, was))| at == *was) {
                return Ok(Transformed::no(node));
            }
            let predicate = conjunction(ordered.iter().map(|(_, at)| Arc::clone(conjuncts[*at])));
            let rebuilt = FilterExecBuilder::from(filter).with_predicate(predicate).build()?;
            Ok(Transformed::yes(Arc::new(rebuilt) as Arc<dyn ExecutionPlan>))
        })
        .data()
    }

    fn name(&self) -> &str {
        "cheap_conjuncts_first"
    }

    fn schema_check(&self) -> bool {
        true
    }
}

/// Marks scans feeding a hash join's probe side through projections and
/// filters only (not a repartition, an aggregation or another join, which
/// a filter applied at the scan spares rows).
#[derive(Debug, Default)]
pub struct ProbeScans;

impl PhysicalOptimizerRule for ProbeScans {
    fn optimize(&self, plan: Arc<dyn ExecutionPlan>, _config: &ConfigOptions) -> Result<Arc<dyn ExecutionPlan>> {
        mark(plan, false)
    }

    fn name(&self) -> &str {
        "probe_scans"
    }

    fn schema_check(&self) -> bool {
        true
    }
}

/// `plan` with its scans marked; `probed`: its rows go straight to a probe.
fn mark(plan: Arc<dyn ExecutionPlan>, probed: bool) -> Result<Arc<dyn ExecutionPlan>> {
    if let Some(scan) = plan.downcast_ref::<DynamicScanExec>() {
        return Ok(if probed { Arc::new(scan.probed_directly()) } else { plan });
    }
    let children = plan.children();
    if children.is_empty() {
        return Ok(plan);
    }
    let join = plan.downcast_ref::<HashJoinExec>().is_some();
    let passes = plan.downcast_ref::<ProjectionExec>().is_some() || plan.downcast_ref::<FilterExec>().is_some();
    let count = children.len();
    let marked = children
        .into_iter()
        .enumerate()
        .map(|(at, child)| mark(Arc::clone(child), (join && at + 1 == count) || (passes && probed)))
        .collect::<Result<Vec<_>>>()?;
    datafusion::physical_plan::replace_children_if_necessary(plan, marked)
}

/// The class of a conjunct that may fail: after every other.
const FALLIBLE: u8 = u8::MAX;

/// What evaluating `expr` costs per row, by class (0 cheapest); `None`
/// when it may fail or is not known.
fn class(expr: &Arc<dyn PhysicalExpr>, schema: &Schema) -> Option<u8> {
    if let Some(column) = expr.downcast_ref::<Column>() {
        let data_type = schema.fields().get(column.index())?.data_type();
        return Some(match data_type {
            t if t.is_primitive() || *t == DataType::Boolean => 0,
            DataType::Utf8 | DataType::Utf8View | DataType::LargeUtf8 => 2,
            DataType::Binary | DataType::BinaryView | DataType::LargeBinary | DataType::FixedSizeBinary(_) => 2,
            _ => 3,
        });
    }
    if expr.downcast_ref::<Literal>().is_some() {
        return Some(0);
    }
    if let Some(binary) = expr.downcast_ref::<BinaryExpr>() {
        let (left, right) = (class(binary.left(), schema)?, class(binary.right(), schema)?);
        return match binary.op() {
            Operator::And | Operator::Or => Some(left.max(right)),
            Operator::Eq
            | Operator::NotEq
            | Operator::Lt
            | Operator::LtEq
            | Operator::Gt
            | Operator::GtEq
            | Operator::IsDistinctFrom
            | Operator::IsNotDistinctFrom => {
                // Two columns compared cost a read of each.
                let columns = binary.left().downcast_ref::<Column>().is_some()
                    && binary.right().downcast_ref::<Column>().is_some();
                Some(left.max(right).max(u8::from(columns)))
            }
            _ => None,
        };
    }
    if expr.downcast_ref::<IsNullExpr>().is_some() || expr.downcast_ref::<IsNotNullExpr>().is_some() {
        // Reads the validity only.
        return expr.children().first().and_then(|c| class(c, schema)).map(|_| 0);
    }
    if let Some(not) = expr.downcast_ref::<NotExpr>() {
        return class(not.arg(), schema);
    }
    if let Some(in_list) = expr.downcast_ref::<InListExpr>() {
        if !in_list.list().iter().all(|e| e.downcast_ref::<Literal>().is_some()) {
            return None;
        }
        return class(in_list.expr(), schema).map(|c| c.max(1));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use datafusion::arrow::datatypes::Field;
    use datafusion::common::ScalarValue;
    use datafusion::physical_expr::expressions::{col, lit};

    fn schema() -> Schema {
        Schema::new(vec![
            Field::new("mode", DataType::Utf8View, true),
            Field::new("shipped", DataType::Date32, true),
            Field::new("committed", DataType::Date32, true),
            Field::new("qty", DataType::Int64, true),
        ])
    }

    fn cmp(l: Arc<dyn PhysicalExpr>, op: Operator, r: Arc<dyn PhysicalExpr>) -> Arc<dyn PhysicalExpr> {
        Arc::new(BinaryExpr::new(l, op, r))
    }

    #[test]
    fn classes() {
        let s = schema();
        let c = |name: &str| col(name, &s).expect("column");
        let mode_eq = cmp(c("mode"), Operator::Eq, lit("SHIP"));
        let dates = cmp(c("shipped"), Operator::Lt, c("committed"));
        let recent = cmp(c("shipped"), Operator::GtEq, lit(ScalarValue::Date32(Some(9000))));
        let plus = cmp(cmp(c("qty"), Operator::Plus, lit(1i64)), Operator::Gt, lit(5i64));
        assert_eq!(class(&recent, &s), Some(0));
        assert_eq!(class(&dates, &s), Some(1));
        assert_eq!(class(&mode_eq, &s), Some(2));
        assert_eq!(class(&cmp(Arc::clone(&mode_eq), Operator::Or, Arc::clone(&recent)), &s), Some(2));
        // Arithmetic may overflow: not moved ahead of anything.
        assert_eq!(class(&plus, &s), None);
        let null: Arc<dyn PhysicalExpr> = Arc::new(IsNullExpr::new(c("mode")));
        assert_eq!(class(&null, &s), Some(0));
    }
}
