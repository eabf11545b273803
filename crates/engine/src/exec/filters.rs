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
//! The leading conjuncts that compare fixed-width values ([`AllOf`]) are
//! then evaluated over every row and their results ANDed, without the
//! pre-selection: that copies every column of the batch for the rows the
//! left side kept and scatters the right side's answers back one run of
//! kept rows at a time, which on rows kept here and there (a date range
//! over rows in key order) cost TPC-H q6's filter of 6 million rows ≈ 30 ms
//! per conjunct after the first two (DataFusion over Parquet: 21 ms for
//! the date range alone, 101 ms with q6's three further comparisons). A
//! comparison of fixed-width values costs about a nanosecond per row;
//! strings and anything that can fail keep DataFusion's pre-selection.
//!
//! [`ProbeScans`] marks the Dynamic Table scans whose rows go straight to a
//! hash join's probe side, which then leave the join's hash-table probe
//! filters to the join (see `DynamicScanExec`'s learned filters).

use std::sync::Arc;

use datafusion::arrow::array::{Array, AsArray, BooleanArray, RecordBatch};
use datafusion::arrow::compute::kernels::boolean::and_kleene;
use datafusion::arrow::datatypes::{DataType, Schema};
use datafusion::common::ScalarValue;
use datafusion::common::config::ConfigOptions;
use datafusion::common::tree_node::{Transformed, TransformedResult, TreeNode};
use datafusion::error::{DataFusionError, Result};
use datafusion::logical_expr::{ColumnarValue, Operator};
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
            let dense = ordered.iter().take_while(|(class, _)| *class <= DENSE).count();
            let in_order = ordered.iter().enumerate().all(|(at, (_, was))| at == *was);
            if in_order && dense < 2 {
                return Ok(Transformed::no(node));
            }
            let ordered: Vec<_> = ordered.iter().map(|(_, at)| Arc::clone(conjuncts[*at])).collect();
            let predicate = if dense >= 2 {
                let (all, rest) = ordered.split_at(dense);
                let all: Arc<dyn PhysicalExpr> = Arc::new(AllOf::new(all.to_vec()));
                conjunction(std::iter::once(all).chain(rest.iter().cloned()))
            } else {
                conjunction(ordered)
            };
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

/// The classes [`AllOf`] evaluates over every row: fixed-width values
/// compared with constants or with each other.
const DENSE: u8 = 1;

/// Conjuncts that cannot fail, each evaluated over every row of the batch
/// and combined as SQL's AND (a null and a true are null, a false wins);
/// stops early once no row can pass. See the module for why.
#[derive(Debug, Hash, PartialEq, Eq)]
pub struct AllOf {
    conjuncts: Vec<Arc<dyn PhysicalExpr>>,
}

impl AllOf {
    /// Of `conjuncts`, flattening nested ones.
    pub fn new(conjuncts: Vec<Arc<dyn PhysicalExpr>>) -> Self {
        let conjuncts = conjuncts
            .into_iter()
            .flat_map(|c| match c.downcast_ref::<AllOf>() {
                Some(inner) => inner.conjuncts.clone(),
                None => vec![c],
            })
            .collect();
        Self { conjuncts }
    }
}

impl AllOf {
    /// Writes the conjuncts, each with `write`, joined by AND.
    fn write_joined(
        &self,
        f: &mut std::fmt::Formatter<'_>,
        write: impl Fn(&Arc<dyn PhysicalExpr>, &mut std::fmt::Formatter<'_>) -> std::fmt::Result,
    ) -> std::fmt::Result {
        for (at, conjunct) in self.conjuncts.iter().enumerate() {
            if at > 0 {
                f.write_str(" AND ")?;
            }
            write(conjunct, f)?;
        }
        Ok(())
    }
}

impl std::fmt::Display for AllOf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.write_joined(f, |conjunct, f| write!(f, "{conjunct}"))
    }
}

impl PhysicalExpr for AllOf {
    fn data_type(&self, _input_schema: &Schema) -> Result<DataType> {
        Ok(DataType::Boolean)
    }

    fn nullable(&self, input_schema: &Schema) -> Result<bool> {
        for conjunct in &self.conjuncts {
            if conjunct.nullable(input_schema)? {
                return Ok(true);
            }
        }
        Ok(false)
    }

    fn evaluate(&self, batch: &RecordBatch) -> Result<ColumnarValue> {
        let rows = batch.num_rows();
        let mut all: Option<BooleanArray> = None;
        for conjunct in &self.conjuncts {
            let array = match conjunct.evaluate(batch)? {
                ColumnarValue::Scalar(ScalarValue::Boolean(Some(true))) => continue,
                ColumnarValue::Scalar(ScalarValue::Boolean(Some(false))) => {
                    return Ok(ColumnarValue::Scalar(ScalarValue::Boolean(Some(false))));
                }
                value => value.into_array(rows)?,
            };
            let array = array
                .as_boolean_opt()
                .ok_or_else(|| DataFusionError::Internal(format!("a conjunct is not boolean: {conjunct}")))?
                .clone();
            let combined = match all {
                None => array,
                Some(all) => and_kleene(&all, &array)?,
            };
            // Nothing later turns a false into anything else.
            if combined.null_count() == 0 && combined.true_count() == 0 {
                return Ok(ColumnarValue::Scalar(ScalarValue::Boolean(Some(false))));
            }
            all = Some(combined);
        }
        Ok(match all {
            Some(all) => ColumnarValue::Array(Arc::new(all)),
            None => ColumnarValue::Scalar(ScalarValue::Boolean(Some(true))),
        })
    }

    fn children(&self) -> Vec<&Arc<dyn PhysicalExpr>> {
        self.conjuncts.iter().collect()
    }

    fn with_new_children(self: Arc<Self>, children: Vec<Arc<dyn PhysicalExpr>>) -> Result<Arc<dyn PhysicalExpr>> {
        Ok(Arc::new(AllOf::new(children)))
    }

    /// Travels (to a worker) as the chain of ANDs it stands for.
    fn try_to_proto(
        &self,
        ctx: &datafusion::physical_expr_common::physical_expr::proto_encode::PhysicalExprEncodeCtx<'_>,
    ) -> Result<Option<datafusion_proto::protobuf::PhysicalExprNode>> {
        ctx.encode_child(&conjunction(self.conjuncts.iter().cloned())).map(Some)
    }

    fn fmt_sql(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.write_joined(f, |conjunct, f| conjunct.fmt_sql(f))
    }
}

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
    if let Some(all) = expr.downcast_ref::<AllOf>() {
        return all.conjuncts.iter().map(|c| class(c, schema)).try_fold(0, |most, c| Some(most.max(c?)));
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

    /// Random batches with nulls: [`AllOf`] answers exactly what
    /// DataFusion's chain of ANDs answers (true, false and null per row),
    /// whichever rows each conjunct keeps.
    #[test]
    fn all_of_answers_as_and() {
        use datafusion::arrow::array::{Date32Array, Int64Array, StringViewArray};
        let s = Arc::new(schema());
        let c = |name: &str| col(name, &s).expect("column");
        let mut seed = 0x9e37_79b9_7f4a_7c15_u64;
        let mut next = move |below: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % below
        };
        let (mut rounds_false, mut rounds_mixed) = (0, 0);
        for round in 0..300 {
            let rows = 1 + next(200) as usize;
            let nulls = next(4); // one row in `nulls + 1` null, none when 3
            let mut value = |range: u64| (nulls == 3 || next(nulls + 1) > 0).then(|| next(range) as i32);
            let shipped: Date32Array = (0..rows).map(|_| value(100)).collect();
            let committed: Date32Array = (0..rows).map(|_| value(100)).collect();
            let qty: Int64Array = (0..rows).map(|_| value(50).map(i64::from)).collect();
            let mode: StringViewArray = (0..rows).map(|_| Some(["SHIP", "AIR"][next(2) as usize])).collect();
            let batch = RecordBatch::try_new(
                Arc::clone(&s),
                vec![Arc::new(mode), Arc::new(shipped), Arc::new(committed), Arc::new(qty)],
            )
            .expect("batch");
            let bound = |name: &str, op, at: u64| cmp(c(name), op, lit(ScalarValue::Int64(Some(at as i64))));
            let date = |op, at: u64| cmp(c("shipped"), op, lit(ScalarValue::Date32(Some(at as i32))));
            let mut conjuncts = vec![
                date(Operator::GtEq, next(100)),
                date(Operator::Lt, next(100)),
                cmp(c("shipped"), Operator::Lt, c("committed")),
                bound("qty", Operator::Lt, next(60)),
            ];
            conjuncts.truncate(2 + round % 3);
            let ours = AllOf::new(conjuncts.clone()).evaluate(&batch).expect("AllOf").into_array(rows).expect("array");
            let theirs = conjunction(conjuncts).evaluate(&batch).expect("AND").into_array(rows).expect("array");
            assert_eq!(ours.as_boolean(), theirs.as_boolean(), "round {round}");
            if ours.as_boolean().true_count() == 0 && ours.null_count() == 0 {
                rounds_false += 1;
            } else {
                rounds_mixed += 1;
            }
        }
        assert!(rounds_false > 10 && rounds_mixed > 10, "{rounds_false} all-false rounds, {rounds_mixed} others");
    }

    /// The rule groups the leading fixed-width comparisons into one
    /// [`AllOf`], leaves strings and fallible conjuncts after it, and
    /// changes nothing when applied again.
    #[test]
    fn leading_fixed_width_comparisons_are_evaluated_together() {
        use datafusion::physical_plan::empty::EmptyExec;
        let s = Arc::new(schema());
        let c = |name: &str| col(name, &s).expect("column");
        let mode_eq = cmp(c("mode"), Operator::Eq, lit("SHIP"));
        let dates = cmp(c("shipped"), Operator::Lt, c("committed"));
        let recent = cmp(c("shipped"), Operator::GtEq, lit(ScalarValue::Date32(Some(9000))));
        let plus = cmp(cmp(c("qty"), Operator::Plus, lit(1i64)), Operator::Gt, lit(5i64));
        let predicate = conjunction([Arc::clone(&plus), Arc::clone(&mode_eq), Arc::clone(&dates), Arc::clone(&recent)]);
        let input: Arc<dyn ExecutionPlan> = Arc::new(EmptyExec::new(Arc::clone(&s)));
        let filter: Arc<dyn ExecutionPlan> = Arc::new(FilterExec::try_new(predicate, input).expect("filter"));
        let config = ConfigOptions::default();
        let once = CheapConjunctsFirst.optimize(filter, &config).expect("rule");
        let predicate = Arc::clone(once.downcast_ref::<FilterExec>().expect("filter").predicate());
        let conjuncts = split_conjunction(&predicate);
        assert_eq!(conjuncts.len(), 3, "{predicate}");
        let all = conjuncts[0].downcast_ref::<AllOf>().expect("AllOf first");
        assert_eq!(all.conjuncts, vec![recent, dates]);
        assert_eq!(conjuncts[1], &mode_eq);
        assert_eq!(conjuncts[2], &plus);
        let twice = CheapConjunctsFirst.optimize(Arc::clone(&once), &config).expect("rule");
        assert_eq!(twice.downcast_ref::<FilterExec>().expect("filter").predicate(), &predicate);
        let text = predicate.to_string();
        assert!(text.starts_with("shipped@1 >= 1994-08-23 AND shipped@1 < committed@2 AND mode@0 = SHIP"), "{text}");
        // A worker gets the chain of ANDs it stands for.
        let bytes = datafusion_proto::bytes::physical_plan_to_bytes(once).expect("encodes");
        let task = datafusion::execution::TaskContext::default();
        let decoded = datafusion_proto::bytes::physical_plan_from_bytes(&bytes, &task).expect("decodes");
        let decoded = decoded.downcast_ref::<FilterExec>().expect("filter").predicate();
        assert_eq!(decoded.to_string(), text);
        assert!(decoded.downcast_ref::<BinaryExpr>().is_some(), "{decoded:?}");
    }
}
