//! Postgres semantics DataFusion does not give by default, as analyzer
//! rules over the typed logical plan (after type coercion), so every query,
//! DML statement and view definition gets them:
//!
//! - **Checked integer arithmetic** ([`CheckedArithmetic`]): `+ - *`, unary
//!   minus and `abs` of integers, and casts that narrow an integer (or turn
//!   a float, decimal or text into one), fail with 22003 ("bigint out of
//!   range", as Postgres words it) instead of wrapping around. Casts of
//!   text to dates and timestamps say which of Postgres' errors they are
//!   (22007 not a date, 22008 a field out of range). DataFusion
//!   plans `+ - *` with arrow's wrapping kernels; the rule replaces them by
//!   functions over arrow's checked kernels. Widening casts cannot overflow
//!   and stay casts (so DataFusion's cast-unwrapping of comparisons keeps
//!   working). Division and modulo are checked by DataFusion already.
//!   `+ - *` of two `numeric`s become functions too ([`decimal`]): arrow's
//!   checked decimal kernels, skipping the per-row checks where a batch's
//!   largest values show no row can overflow. The functions are in the
//!   engine's registry ([`arithmetic_udfs`]), where a worker finds them.
//! - **SUM of bigint is numeric** ([`PostgresSum`], replacing DataFusion's
//!   `sum`): Postgres sums `smallint`/`integer` as `bigint` and `bigint` as
//!   `numeric`, which cannot overflow; DataFusion sums `bigint` in a
//!   wrapping `i64`.
//! - **String literals in arithmetic** ([`UnknownLiteralPlanner`], while
//!   the SQL is planned, since DataFusion types each expression as it
//!   plans it): a string literal next to a number has the number's type,
//!   as Postgres types an `unknown` literal: `1 + '2'` is 3 and
//!   `1 + 'abc'` is 22P02 (DataFusion refuses both).
//! - **Scalar subquery cardinality** ([`ScalarSubqueryCardinality`]): an
//!   uncorrelated scalar subquery that is not already known to return at
//!   most one row reads at most two rows through [`single_row`], an
//!   aggregate that fails with 21000 on the second ("more than one row
//!   returned by a subquery used as an expression"). DataFusion otherwise
//!   joins with every row and keeps a first. Correlated scalar subqueries
//!   must be aggregated to plan at all, so they return one row per outer row.
//!
//! Rewritten expressions keep their names (DataFusion's `NamePreserver`), so
//! column names and references above them do not change.

use std::sync::{Arc, LazyLock};

use datafusion::arrow::array::{Array, ArrayRef, Int64Array, StringArray};
use datafusion::arrow::compute::kernels::numeric;
use datafusion::arrow::compute::{CastOptions, cast_with_options};
use datafusion::arrow::datatypes::{DataType, Field, FieldRef};
use datafusion::common::config::ConfigOptions;
use datafusion::common::tree_node::{Transformed, TreeNode};
use datafusion::common::{DataFusionError, Result as DfResult, ScalarValue};
use datafusion::logical_expr::expr::{AggregateFunction, ScalarFunction};
use datafusion::logical_expr::expr_rewriter::NamePreserver;
use datafusion::logical_expr::function::{AccumulatorArgs, StateFieldsArgs};
use datafusion::logical_expr::type_coercion::binary::BinaryTypeCoercer;
use datafusion::logical_expr::{
    Accumulator, AggregateUDF, AggregateUDFImpl, BinaryExpr, Cast, ColumnarValue, Expr, ExprSchemable, LogicalPlan,
    LogicalPlanBuilder, Operator, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, Volatility,
};
use datafusion::optimizer::AnalyzerRule;

use crate::error::{Error, StatusCode};

mod datetime;
mod decimal;
mod expand;
mod membership;
mod regproc;
mod text;

pub use datetime::{to_char_udf, to_date_udf, to_timestamp_udf};
pub use expand::expand_array_udf;
pub use membership::UncorrelatedInSubquery;
pub use regproc::RegprocText;
pub use text::text_udfs;

/// Whether `plan` is a query whose rows are the result (not DML, DDL, a
/// statement, COPY or EXPLAIN).
pub fn is_query(plan: &LogicalPlan) -> bool {
    !matches!(
        plan,
        LogicalPlan::Dml(_)
            | LogicalPlan::Ddl(_)
            | LogicalPlan::Statement(_)
            | LogicalPlan::Copy(_)
            | LogicalPlan::Explain(_)
            | LogicalPlan::Analyze(_)
    )
}

fn overflow(data_type: &DataType) -> DataFusionError {
    DataFusionError::External(Box::new(Error::new(
        StatusCode::NumericOverflow,
        format!("{} out of range", integer_name(data_type)),
    )))
}

/// Postgres' name of an integer type, as its range errors say it.
fn integer_name(data_type: &DataType) -> &'static str {
    match data_type {
        DataType::Int8 | DataType::UInt8 | DataType::Int16 => "smallint",
        DataType::Int32 | DataType::UInt16 => "integer",
        _ => "bigint",
    }
}

fn is_integer(data_type: &DataType) -> bool {
    data_type.is_integer()
}

/// Arrow's checked kernels are exact about which operations overflow.
fn checked_kernel_error(e: datafusion::arrow::error::ArrowError, data_type: &DataType) -> DataFusionError {
    match e {
        datafusion::arrow::error::ArrowError::ArithmeticOverflow(_) => overflow(data_type),
        other => DataFusionError::ArrowError(Box::new(other), None),
    }
}

/// What a checked function computes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Checked {
    Add,
    Sub,
    Mul,
    Neg,
    Abs,
    /// A cast to the function's return type that may not fit.
    Cast,
    /// `+ - *` of two decimals ([`decimal`]), typed the function's return type.
    Numeric(decimal::Op),
}

/// A checked integer operation as a scalar function.
#[derive(Debug, PartialEq, Eq, Hash)]
struct CheckedFunction {
    op: Checked,
    name: &'static str,
    signature: Signature,
    /// The target of [`Checked::Cast`].
    target: Option<DataType>,
}

impl CheckedFunction {
    fn udf(op: Checked, target: Option<DataType>) -> Arc<ScalarUDF> {
        let (name, arity) = match op {
            Checked::Add => ("int_add", 2),
            Checked::Sub => ("int_sub", 2),
            Checked::Mul => ("int_mul", 2),
            Checked::Neg => ("int_neg", 1),
            Checked::Abs => ("int_abs", 1),
            Checked::Cast if target.as_ref().is_some_and(is_datetime) => ("datetime_cast", 1),
            Checked::Cast => ("int_cast", 1),
            Checked::Numeric(decimal::Op::Add) => ("numeric_add", 2),
            Checked::Numeric(decimal::Op::Sub) => ("numeric_sub", 2),
            Checked::Numeric(decimal::Op::Mul) => ("numeric_mul", 2),
        };
        Arc::new(ScalarUDF::new_from_impl(Self {
            op,
            name,
            signature: Signature::any(arity, Volatility::Immutable),
            target,
        }))
    }
}

fn to_array(value: &ColumnarValue, rows: usize) -> DfResult<ArrayRef> {
    value.to_array(rows)
}

impl ScalarUDFImpl for CheckedFunction {
    fn name(&self) -> &str {
        self.name
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, arg_types: &[DataType]) -> DfResult<DataType> {
        if let (Checked::Numeric(op), [left, right]) = (self.op, arg_types) {
            return numeric_type(op, left, right);
        }
        Ok(self.target.clone().unwrap_or_else(|| arg_types[0].clone()))
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> DfResult<ColumnarValue> {
        if let Checked::Numeric(op) = self.op {
            return decimal::evaluate(
                op,
                &args.args[0],
                &args.args[1],
                args.number_rows,
                args.return_field.data_type(),
            );
        }
        let scalar = args.args.iter().all(|a| matches!(a, ColumnarValue::Scalar(_)));
        let rows = if scalar { 1 } else { args.number_rows };
        let data_type = args.return_field.data_type().clone();
        let arrays: Vec<ArrayRef> = args.args.iter().map(|a| to_array(a, rows)).collect::<DfResult<_>>()?;
        let result: ArrayRef = match self.op {
            Checked::Add => numeric::add(&arrays[0], &arrays[1]).map_err(|e| checked_kernel_error(e, &data_type))?,
            Checked::Sub => numeric::sub(&arrays[0], &arrays[1]).map_err(|e| checked_kernel_error(e, &data_type))?,
            Checked::Mul => numeric::mul(&arrays[0], &arrays[1]).map_err(|e| checked_kernel_error(e, &data_type))?,
            Checked::Neg => numeric::neg(&arrays[0]).map_err(|e| checked_kernel_error(e, &data_type))?,
            Checked::Abs => {
                // |x| is x, or -x where x < 0 (checked: the minimum has no absolute value;
                // arrow negates only the valid slots).
                let zero = ScalarValue::new_zero(&data_type)?.to_scalar()?;
                let negative = datafusion::arrow::compute::kernels::cmp::lt(&arrays[0], &zero)?;
                if negative.true_count() == 0 {
                    Arc::clone(&arrays[0])
                } else {
                    let negated = numeric::neg(&arrays[0]).map_err(|e| checked_kernel_error(e, &data_type))?;
                    datafusion::arrow::compute::kernels::zip::zip(&negative, &negated, &arrays[0])?
                }
            }
            Checked::Cast => checked_cast(&arrays[0], &data_type)?,
            Checked::Numeric(_) => unreachable!("evaluated above"),
        };
        if scalar {
            Ok(ColumnarValue::Scalar(ScalarValue::try_from_array(&result, 0)?))
        } else {
            Ok(ColumnarValue::Array(result))
        }
    }
}

fn is_text(data_type: &DataType) -> bool {
    matches!(data_type, DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View)
}

fn is_datetime(data_type: &DataType) -> bool {
    matches!(data_type, DataType::Date32 | DataType::Date64 | DataType::Timestamp(..))
}

/// A cast to integer type `to` where a value that does not fit is 22003
/// and text that is not a number is 22P02; or from text to a date or
/// timestamp, where text that is not one is 22007 and a field out of range
/// (`2024-02-30`, `25:00`) 22008; with Postgres' messages.
fn checked_cast(array: &ArrayRef, to: &DataType) -> DfResult<ArrayRef> {
    if is_text(to) && matches!(array.data_type(), DataType::Float32 | DataType::Float64) {
        use datafusion::arrow::array::AsArray;
        use datafusion::arrow::datatypes::{Float32Type, Float64Type};
        let text: StringArray = match array.data_type() {
            DataType::Float32 => {
                array.as_primitive::<Float32Type>().iter().map(|v| v.map(crate::types::float4_text)).collect()
            }
            _ => array.as_primitive::<Float64Type>().iter().map(|v| v.map(crate::types::float8_text)).collect(),
        };
        return cast_with_options(&(Arc::new(text) as ArrayRef), to, &CastOptions::default()).map_err(Into::into);
    }
    let safe = CastOptions { safe: true, ..CastOptions::default() };
    let cast = cast_with_options(array, to, &safe)?;
    // A value that became NULL without being NULL did not convert.
    if cast.null_count() == array.null_count() {
        return Ok(cast);
    }
    // Postgres reads `2024-01-01 10:00` (no seconds); arrow does not.
    if is_text(array.data_type()) && matches!(to, DataType::Timestamp(..)) {
        let text = cast_with_options(array, &DataType::Utf8, &safe)?;
        let text = text
            .as_any()
            .downcast_ref::<StringArray>()
            .cloned()
            .unwrap_or_else(|| StringArray::from(Vec::<String>::new()));
        if text.iter().flatten().any(|t| without_seconds(t).is_some()) {
            let completed: StringArray =
                text.iter().map(|t| t.map(|t| without_seconds(t).unwrap_or_else(|| t.to_string()))).collect();
            let completed: ArrayRef = Arc::new(completed);
            return checked_cast_once(&completed, to);
        }
    }
    checked_cast_once(array, to)
}

/// `date HH:MM[zone]` as `date HH:MM:00[zone]`, and the special input
/// `epoch` as its timestamp; `None` for other text.
fn without_seconds(text: &str) -> Option<String> {
    let trimmed = text.trim();
    if trimmed.eq_ignore_ascii_case("epoch") {
        return Some("1970-01-01 00:00:00+00".to_string());
    }
    let bytes = trimmed.as_bytes();
    // `YYYY-MM-DD` then a space or `T`, then `HH:MM`.
    let time = trimmed.get(11..)?;
    let dashes = bytes.get(4) == Some(&b'-') && bytes.get(7) == Some(&b'-');
    if !dashes || !matches!(bytes.get(10), Some(b' ' | b'T')) {
        return None;
    }
    let digits = |s: &str| s.len() == 2 && s.bytes().all(|b| b.is_ascii_digit());
    let (hh, rest) = time.split_at_checked(2)?;
    let rest = rest.strip_prefix(':')?;
    let (mm, zone) = rest.split_at_checked(2)?;
    if !digits(hh) || !digits(mm) || zone.starts_with(':') || zone.starts_with(|c: char| c.is_ascii_digit()) {
        return None;
    }
    Some(format!("{}{hh}:{mm}:00{zone}", &trimmed[..11]))
}

fn checked_cast_once(array: &ArrayRef, to: &DataType) -> DfResult<ArrayRef> {
    let safe = CastOptions { safe: true, ..CastOptions::default() };
    let cast = cast_with_options(array, to, &safe)?;
    if cast.null_count() == array.null_count() {
        return Ok(cast);
    }
    let index = (0..array.len()).find(|i| cast.is_null(*i) && !array.is_null(*i)).unwrap_or(0);
    if is_text(array.data_type()) {
        let text = cast_with_options(&array.slice(index, 1), &DataType::Utf8, &safe)?;
        let text = text.as_any().downcast_ref::<StringArray>().map_or(String::new(), |a| a.value(0).to_owned());
        return Err(DataFusionError::External(Box::new(crate::types::conversion_error(&text, to))));
    }
    // A number (integer, float, decimal) that does not fit; NaN and infinity neither.
    Err(overflow(to))
}

/// Replaces wrapping integer arithmetic and unchecked narrowing casts.
#[derive(Debug, Default)]
pub struct CheckedArithmetic;

fn checked_expr(expr: Expr, schema: &datafusion::common::DFSchema) -> DfResult<Transformed<Expr>> {
    match expr {
        Expr::BinaryExpr(BinaryExpr { left, op, right })
            if matches!(op, Operator::Plus | Operator::Minus | Operator::Multiply) =>
        {
            let (lt, rt) = (node_type(&left, schema)?, node_type(&right, schema)?);
            if is_integer(&lt) && lt == rt {
                let kind = match op {
                    Operator::Plus => Checked::Add,
                    Operator::Minus => Checked::Sub,
                    _ => Checked::Mul,
                };
                return Ok(Transformed::yes(call(kind, None, vec![*left, *right])));
            }
            if matches!((&lt, &rt), (DataType::Decimal128(..), DataType::Decimal128(..))) {
                // Arrow's checked kernels, without a checked operation per row where none can overflow.
                let kind = match op {
                    Operator::Plus => decimal::Op::Add,
                    Operator::Minus => decimal::Op::Sub,
                    _ => decimal::Op::Mul,
                };
                return Ok(Transformed::yes(call(Checked::Numeric(kind), None, vec![*left, *right])));
            }
            Ok(Transformed::no(Expr::BinaryExpr(BinaryExpr { left, op, right })))
        }
        Expr::Negative(inner) if is_integer(&node_type(&inner, schema)?) => {
            Ok(Transformed::yes(call(Checked::Neg, None, vec![*inner])))
        }
        Expr::ScalarFunction(ScalarFunction { func, args })
            if func.name() == "abs" && args.len() == 1 && is_integer(&node_type(&args[0], schema)?) =>
        {
            Ok(Transformed::yes(call(Checked::Abs, None, args)))
        }
        Expr::Cast(Cast { expr: inner, field })
            if is_text(field.data_type())
                && matches!(node_type(&inner, schema)?, DataType::Float32 | DataType::Float64) =>
        {
            // Postgres' float text (`3`, `1e+20`), not arrow's (`3.0`, `100000000000000000000.0`).
            Ok(Transformed::yes(call(Checked::Cast, Some(field.data_type().clone()), vec![*inner])))
        }
        Expr::Cast(Cast { expr: inner, field })
            if is_datetime(field.data_type()) && is_text(&node_type(&inner, schema)?) =>
        {
            Ok(Transformed::yes(call(Checked::Cast, Some(field.data_type().clone()), vec![*inner])))
        }
        Expr::Cast(Cast { expr: inner, field }) if is_integer(field.data_type()) => {
            let from = node_type(&inner, schema)?;
            if may_overflow(&from, field.data_type()) {
                return Ok(Transformed::yes(call(Checked::Cast, Some(field.data_type().clone()), vec![*inner])));
            }
            Ok(Transformed::no(Expr::Cast(Cast::new_from_field(inner, field))))
        }
        other => Ok(Transformed::no(other)),
    }
}

/// The type of `expr`, a subtree this rule may already have rewritten.
/// DataFusion's `get_type` of a function call formats the call's name, and
/// its arguments' names, at every level: over the nested checked calls that
/// a chain such as `x + x + … + x` becomes, asked at every node, that is
/// cubic in the chain's length. A checked call's type is known without
/// naming anything: its cast target, else its first argument's type.
fn node_type(expr: &Expr, schema: &datafusion::common::DFSchema) -> DfResult<DataType> {
    let mut expr = expr;
    loop {
        match expr {
            Expr::ScalarFunction(ScalarFunction { func, args }) => {
                match func.inner().downcast_ref::<CheckedFunction>() {
                    Some(CheckedFunction { target: Some(target), .. }) => return Ok(target.clone()),
                    Some(CheckedFunction { op: Checked::Numeric(op), .. }) if args.len() == 2 => {
                        return numeric_type(*op, &node_type(&args[0], schema)?, &node_type(&args[1], schema)?);
                    }
                    Some(_) if !args.is_empty() => expr = &args[0],
                    _ => return expr.get_type(schema),
                }
            }
            Expr::Cast(Cast { field, .. }) => return Ok(field.data_type().clone()),
            Expr::Alias(alias) => expr = &alias.expr,
            other => return other.get_type(schema),
        }
    }
}

/// Whether a cast from `from` to the integer type `to` can fail to fit.
fn may_overflow(from: &DataType, to: &DataType) -> bool {
    use DataType as T;
    let width = |t: &DataType| match t {
        T::Int8 => Some((8, true)),
        T::Int16 => Some((16, true)),
        T::Int32 => Some((32, true)),
        T::Int64 => Some((64, true)),
        T::UInt8 => Some((8, false)),
        T::UInt16 => Some((16, false)),
        T::UInt32 => Some((32, false)),
        T::UInt64 => Some((64, false)),
        _ => None,
    };
    match (width(from), width(to)) {
        // Integer to integer: fits when the target holds every value of the source.
        (Some((fw, fs)), Some((tw, ts))) => !((fs == ts && tw >= fw) || (!fs && ts && tw > fw)),
        (None, Some(_)) => matches!(
            from,
            T::Float16
                | T::Float32
                | T::Float64
                | T::Decimal32(..)
                | T::Decimal64(..)
                | T::Decimal128(..)
                | T::Decimal256(..)
                | T::Utf8
                | T::LargeUtf8
                | T::Utf8View
        ),
        _ => false,
    }
}

fn call(op: Checked, target: Option<DataType>, args: Vec<Expr>) -> Expr {
    let func = match op {
        Checked::Cast => CheckedFunction::udf(Checked::Cast, target),
        op => arithmetic_udfs()
            .iter()
            .find(|f| f.inner().downcast_ref::<CheckedFunction>().is_some_and(|c| c.op == op))
            .cloned()
            .expect("every arithmetic operation has a function"),
    };
    Expr::ScalarFunction(ScalarFunction { func, args })
}

/// The checked arithmetic functions (not the casts, whose target each call
/// carries), also in the engine's function registry: a plan sent to a
/// worker names them, and the worker finds them there.
pub fn arithmetic_udfs() -> &'static [Arc<ScalarUDF>] {
    static FUNCTIONS: LazyLock<Vec<Arc<ScalarUDF>>> = LazyLock::new(|| {
        [
            Checked::Add,
            Checked::Sub,
            Checked::Mul,
            Checked::Neg,
            Checked::Abs,
            Checked::Numeric(decimal::Op::Add),
            Checked::Numeric(decimal::Op::Sub),
            Checked::Numeric(decimal::Op::Mul),
        ]
        .into_iter()
        .map(|op| CheckedFunction::udf(op, None))
        .collect()
    });
    &FUNCTIONS
}

/// The type of `left op right` over two decimals, as DataFusion types it.
fn numeric_type(op: decimal::Op, left: &DataType, right: &DataType) -> DfResult<DataType> {
    let op = match op {
        decimal::Op::Add => Operator::Plus,
        decimal::Op::Sub => Operator::Minus,
        decimal::Op::Mul => Operator::Multiply,
    };
    BinaryTypeCoercer::new(left, &op, right).get_result_type()
}

/// Rewrites every expression of `plan` and its subqueries with `rewrite`,
/// keeping the names of rewritten expressions.
fn rewrite_plan(
    plan: LogicalPlan,
    rewrite: impl Fn(Expr, &datafusion::common::DFSchema) -> DfResult<Transformed<Expr>>,
) -> DfResult<LogicalPlan> {
    plan.transform_up_with_subqueries(|plan| {
        // Expressions are typed against the node's inputs (a leaf's against its own schema).
        let schema = match plan.inputs().as_slice() {
            [] => Arc::clone(plan.schema()),
            [one] => Arc::clone(one.schema()),
            inputs => {
                let mut merged = datafusion::common::DFSchema::empty();
                for input in inputs {
                    merged.merge(input.schema());
                }
                Arc::new(merged)
            }
        };
        let names = NamePreserver::new(&plan);
        plan.map_expressions(|expr| {
            let saved = names.save(&expr);
            let rewritten = expr.transform_up(|e| rewrite(e, &schema))?;
            Ok(rewritten.update_data(|e| saved.restore(e)))
        })
    })
    .map(|t| t.data)
}

impl AnalyzerRule for CheckedArithmetic {
    fn analyze(&self, plan: LogicalPlan, _config: &ConfigOptions) -> DfResult<LogicalPlan> {
        rewrite_plan(plan, checked_expr)
    }

    fn name(&self) -> &str {
        "checked_arithmetic"
    }
}

/// Plans `'…' op number` and `number op '…'` (arithmetic) with the
/// literal cast to the number's type.
#[derive(Debug, Default)]
pub struct UnknownLiteralPlanner;

impl datafusion::logical_expr::planner::ExprPlanner for UnknownLiteralPlanner {
    fn plan_binary_op(
        &self,
        expr: datafusion::logical_expr::planner::RawBinaryExpr,
        schema: &datafusion::common::DFSchema,
    ) -> DfResult<datafusion::logical_expr::planner::PlannerResult<datafusion::logical_expr::planner::RawBinaryExpr>>
    {
        use datafusion::logical_expr::planner::{PlannerResult, RawBinaryExpr};
        use datafusion::sql::sqlparser::ast::BinaryOperator as B;
        let RawBinaryExpr { op, left, right } = expr;
        // `interval * number`, `number * interval`, `interval / number`.
        if matches!(op, B::Multiply | B::Divide) {
            let interval = |e: &Expr| matches!(e.get_type(schema), Ok(DataType::Interval(_)));
            let number = |e: &Expr| e.get_type(schema).is_ok_and(|t| t.is_numeric());
            let scaled = match (interval(&left), interval(&right), &op) {
                (true, false, B::Multiply) if number(&right) => Some((left.clone(), right.clone(), false)),
                (false, true, B::Multiply) if number(&left) => Some((right.clone(), left.clone(), false)),
                (true, false, B::Divide) if number(&right) => Some((left.clone(), right.clone(), true)),
                _ => None,
            };
            if let Some((interval, factor, divide)) = scaled {
                return Ok(PlannerResult::Planned(datetime::interval_scale(interval, factor, divide)));
            }
        }
        let arithmetic = matches!(op, B::Plus | B::Minus | B::Multiply | B::Divide | B::Modulo);
        let is_string =
            |e: &Expr| matches!(e, Expr::Literal(ScalarValue::Utf8(Some(_)) | ScalarValue::Utf8View(Some(_)), _));
        // Types are looked at only next to a string literal; one that cannot
        // be known here is left to DataFusion, which reports it.
        let numeric = |e: &Expr| e.get_type(schema).ok().filter(DataType::is_numeric);
        let (left, right) = match (arithmetic, is_string(&left), is_string(&right)) {
            (true, true, false) => match numeric(&right) {
                Some(to) => (Expr::Cast(Cast::new(Box::new(left), to)), right),
                None => (left, right),
            },
            (true, false, true) => match numeric(&left) {
                Some(to) => (left, Expr::Cast(Cast::new(Box::new(right), to))),
                None => (left, right),
            },
            _ => (left, right),
        };
        // `array_column = '{1,2}'`: the literal is an array of the column's element type.
        let comparison = matches!(op, B::Eq | B::NotEq | B::Lt | B::LtEq | B::Gt | B::GtEq);
        let (left, right) = match (comparison, is_string(&left), is_string(&right)) {
            (true, false, true) => {
                let right = array_literal(&right, &left, schema).unwrap_or(right);
                (left, right)
            }
            (true, true, false) => (array_literal(&left, &right, schema).unwrap_or(left), right),
            _ => (left, right),
        };
        Ok(PlannerResult::Original(RawBinaryExpr { op, left, right }))
    }
}

/// A Postgres array literal (`'{1,2}'`, `'{}'`, `'{a,NULL}'`) compared with
/// `other`, a list, as a list of `other`'s element type; `None` when it is
/// not one (nested or malformed ones are left to DataFusion, which refuses them).
fn array_literal(literal: &Expr, other: &Expr, schema: &datafusion::common::DFSchema) -> Option<Expr> {
    let (
        Expr::Literal(ScalarValue::Utf8(Some(text)) | ScalarValue::Utf8View(Some(text)), _),
        Ok(DataType::List(field)),
    ) = (literal, other.get_type(schema))
    else {
        return None;
    };
    let list = crate::types::array_from_text(text, field.data_type()).ok()?;
    Some(Expr::Literal(list, None))
}

/// `sum` with Postgres' result types: `smallint` and `integer` sum as
/// `bigint` (as DataFusion does), `bigint` as `numeric` (DataFusion sums it
/// in a wrapping `i64`). A `numeric` of more than 28 digits (whose sum
/// DataFusion types `numeric(38)` and adds in a wrapping 128-bit integer:
/// two positive values summed to a negative one) is summed in 256 bits
/// and the sum checked into `numeric(38, s)`: exact, or 22003 past 38
/// digits ([`narrowed`]). A 64-bit integer argument is coerced to
/// `numeric(28,0)`, which every value fits, so the sum is `numeric(38,0)`,
/// which no realistic number of rows can overflow. Registered under
/// DataFusion's name, so every query, window and view gets it, and typed
/// when the SQL is planned (a protocol's Describe sees `numeric`).
///
/// Coercion must be idempotent: DataFusion coerces an aggregate's argument
/// types again whenever it types the call (a HAVING over it, a plan
/// rebuilt after analysis). Were `integer` coerced to `bigint`, typing the
/// coerced call again would make it `numeric` while the accumulator sums
/// `bigint` (`HAVING sum(int_col) > 0` then failed comparing the two). So
/// smaller integers are left as they are and widened to `bigint` as they
/// reach the accumulator ([`Widened`]).
#[derive(Debug, PartialEq, Eq, Hash)]
pub struct PostgresSum {
    inner: datafusion::functions_aggregate::sum::Sum,
    signature: Signature,
}

/// The `sum` every session uses ([`PostgresSum`]).
pub fn sum_udaf() -> Arc<AggregateUDF> {
    static SUM: LazyLock<Arc<AggregateUDF>> = LazyLock::new(|| {
        Arc::new(AggregateUDF::new_from_impl(PostgresSum {
            inner: datafusion::functions_aggregate::sum::Sum::new(),
            signature: Signature::user_defined(Volatility::Immutable),
        }))
    });
    Arc::clone(&SUM)
}

impl AggregateUDFImpl for PostgresSum {
    fn name(&self) -> &str {
        "sum"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn coerce_types(&self, arg_types: &[DataType]) -> DfResult<Vec<DataType>> {
        use DataType as T;
        let [arg] = arg_types else {
            return Err(DataFusionError::Plan(format!("sum takes one argument, not {}", arg_types.len())));
        };
        Ok(vec![match arg {
            T::Int64 | T::UInt64 => T::Decimal128(28, 0),
            T::Null | T::Int8 | T::Int16 | T::Int32 | T::UInt8 | T::UInt16 | T::UInt32 => arg.clone(),
            T::Float16 | T::Float32 | T::Float64 => T::Float64,
            T::Decimal128(precision, scale) if *precision > 28 => T::Decimal256(*precision, *scale),
            T::Decimal32(..)
            | T::Decimal64(..)
            | T::Decimal128(..)
            | T::Decimal256(..)
            | T::Duration(_)
            | T::Interval(_) => arg.clone(),
            other => {
                return Err(DataFusionError::External(Box::new(Error::new(
                    StatusCode::FunctionNotFound,
                    format!("function sum({}) does not exist", crate::types::postgres_type_name(other)),
                ))));
            }
        }])
    }

    fn return_type(&self, arg_types: &[DataType]) -> DfResult<DataType> {
        if let [arg] = arg_types {
            if widened(arg) {
                return Ok(DataType::Int64);
            }
            if let Some(to) = narrowed(arg) {
                return Ok(to);
            }
        }
        self.inner.return_type(arg_types)
    }

    fn accumulator(&self, args: AccumulatorArgs) -> DfResult<Box<dyn Accumulator>> {
        let (args, to) = self.summing(args)?;
        Ok(Box::new(Widened(self.inner.accumulator(args)?, to)))
    }

    fn state_fields(&self, args: StateFieldsArgs) -> DfResult<Vec<FieldRef>> {
        match args.input_fields {
            // The state is the 256-bit sum.
            [arg] if narrowed(arg.data_type()).is_some() => {
                let summed = self.inner.return_type(&[arg.data_type().clone()])?;
                let return_field = Arc::new(args.return_field.as_ref().clone().with_data_type(summed));
                self.inner.state_fields(StateFieldsArgs { return_field, ..args })
            }
            _ => self.inner.state_fields(args),
        }
    }

    fn groups_accumulator_supported(&self, args: AccumulatorArgs) -> bool {
        self.inner.groups_accumulator_supported(args)
    }

    fn create_groups_accumulator(
        &self,
        args: AccumulatorArgs,
    ) -> DfResult<Box<dyn datafusion::logical_expr::GroupsAccumulator>> {
        let (args, to) = self.summing(args)?;
        Ok(Box::new(Widened(self.inner.create_groups_accumulator(args)?, to)))
    }

    fn create_sliding_accumulator(&self, args: AccumulatorArgs) -> DfResult<Box<dyn Accumulator>> {
        let (args, to) = self.summing(args)?;
        Ok(Box::new(Widened(self.inner.create_sliding_accumulator(args)?, to)))
    }

    fn reverse_expr(&self) -> datafusion::logical_expr::ReversedUDAF {
        self.inner.reverse_expr()
    }

    fn order_sensitivity(&self) -> datafusion::logical_expr::utils::AggregateOrderSensitivity {
        self.inner.order_sensitivity()
    }

    fn set_monotonicity(&self, data_type: &DataType) -> datafusion::logical_expr::SetMonotonicity {
        self.inner.set_monotonicity(data_type)
    }

    fn default_value(&self, data_type: &DataType) -> DfResult<ScalarValue> {
        self.inner.default_value(data_type)
    }

    fn documentation(&self) -> Option<&datafusion::logical_expr::Documentation> {
        self.inner.documentation()
    }
}

impl PostgresSum {
    /// The arguments DataFusion's accumulator is made with (summing in 256
    /// bits where [`narrowed`]), and the type its sums are checked into.
    fn summing<'a>(&self, args: AccumulatorArgs<'a>) -> DfResult<(AccumulatorArgs<'a>, Option<DataType>)> {
        let narrow = match args.expr_fields {
            [arg] => narrowed(arg.data_type()),
            _ => None,
        };
        let Some(to) = narrow else {
            return Ok((args, None));
        };
        let summed = self.inner.return_type(&[args.expr_fields[0].data_type().clone()])?;
        let return_field = Arc::new(args.return_field.as_ref().clone().with_data_type(summed));
        Ok((AccumulatorArgs { return_field, ..args }, Some(to)))
    }
}

/// The type of the sum of `arg` when it is a `numeric` of more than 28
/// digits coerced to 256 bits ([`PostgresSum`]): `numeric(38, s)`. A
/// 256-bit argument of more digits is a `numeric` declared so, summed as
/// DataFusion sums it.
fn narrowed(arg: &DataType) -> Option<DataType> {
    match arg {
        DataType::Decimal256(precision, scale) if *precision <= 38 => Some(DataType::Decimal128(38, *scale)),
        _ => None,
    }
}

/// A sum checked into `to`: the value, or 22003 past its precision.
fn narrow(sums: ArrayRef, to: &DataType) -> DfResult<ArrayRef> {
    let options = datafusion::arrow::compute::CastOptions { safe: false, ..Default::default() };
    datafusion::arrow::compute::cast_with_options(&sums, to, &options).map_err(|_| decimal::overflow())
}

/// Whether `sum` takes an argument of this type as `bigint` ([`Widened`]).
fn widened(data_type: &DataType) -> bool {
    use DataType as T;
    matches!(data_type, T::Null | T::Int8 | T::Int16 | T::Int32 | T::UInt8 | T::UInt16 | T::UInt32)
}

/// The argument columns as `sum`'s accumulators take them: smaller
/// integers as `bigint`.
fn widen(values: &[ArrayRef]) -> DfResult<Vec<ArrayRef>> {
    values
        .iter()
        .map(|v| {
            if widened(v.data_type()) {
                Ok(datafusion::arrow::compute::cast(v, &DataType::Int64)?)
            } else {
                Ok(Arc::clone(v))
            }
        })
        .collect()
}

/// A `sum` accumulator fed its argument widened to `bigint`, and its sums
/// checked into the type given ([`PostgresSum`]).
#[derive(Debug)]
struct Widened<A>(A, Option<DataType>);

impl Accumulator for Widened<Box<dyn Accumulator>> {
    fn update_batch(&mut self, values: &[ArrayRef]) -> DfResult<()> {
        self.0.update_batch(&widen(values)?)
    }

    fn evaluate(&mut self) -> DfResult<ScalarValue> {
        let sum = self.0.evaluate()?;
        match &self.1 {
            Some(to) => ScalarValue::try_from_array(&narrow(sum.to_array()?, to)?, 0),
            None => Ok(sum),
        }
    }

    fn size(&self) -> usize {
        self.0.size()
    }

    fn state(&mut self) -> DfResult<Vec<ScalarValue>> {
        self.0.state()
    }

    fn merge_batch(&mut self, states: &[ArrayRef]) -> DfResult<()> {
        self.0.merge_batch(states)
    }

    fn retract_batch(&mut self, values: &[ArrayRef]) -> DfResult<()> {
        self.0.retract_batch(&widen(values)?)
    }

    fn supports_retract_batch(&self) -> bool {
        self.0.supports_retract_batch()
    }
}

impl datafusion::logical_expr::GroupsAccumulator for Widened<Box<dyn datafusion::logical_expr::GroupsAccumulator>> {
    fn update_batch(
        &mut self,
        values: &[ArrayRef],
        group_indices: &[usize],
        opt_filter: Option<&datafusion::arrow::array::BooleanArray>,
        total_num_groups: usize,
    ) -> DfResult<()> {
        self.0.update_batch(&widen(values)?, group_indices, opt_filter, total_num_groups)
    }

    fn evaluate(&mut self, emit_to: datafusion::logical_expr::EmitTo) -> DfResult<ArrayRef> {
        let sums = self.0.evaluate(emit_to)?;
        match &self.1 {
            Some(to) => narrow(sums, to),
            None => Ok(sums),
        }
    }

    fn state(&mut self, emit_to: datafusion::logical_expr::EmitTo) -> DfResult<Vec<ArrayRef>> {
        self.0.state(emit_to)
    }

    fn merge_batch(&mut self, values: &[ArrayRef], group_indices: &[usize], total_num_groups: usize) -> DfResult<()> {
        self.0.merge_batch(values, group_indices, total_num_groups)
    }

    fn convert_to_state(
        &self,
        values: &[ArrayRef],
        opt_filter: Option<&datafusion::arrow::array::BooleanArray>,
    ) -> DfResult<Vec<ArrayRef>> {
        self.0.convert_to_state(&widen(values)?, opt_filter)
    }

    fn size(&self) -> usize {
        self.0.size()
    }
}

/// Makes scalar subqueries fail with 21000 past one row, as in Postgres.
/// An uncorrelated one stops reading at the second row; a correlated one
/// becomes an aggregate over its rows (`single_row`), which is also what
/// lets DataFusion decorrelate it (it refuses correlated scalar subqueries
/// that are not aggregated). Correlations DataFusion cannot decorrelate
/// (other than by equality) stay errors, never a guess.
#[derive(Debug, Default)]
pub struct ScalarSubqueryCardinality;

impl AnalyzerRule for ScalarSubqueryCardinality {
    fn analyze(&self, plan: LogicalPlan, _config: &ConfigOptions) -> DfResult<LogicalPlan> {
        rewrite_plan(plan, |expr, _| match expr {
            Expr::ScalarSubquery(subquery) if !at_most_one_row(&subquery.subquery) => {
                Ok(Transformed::yes(checked_subquery(subquery)?))
            }
            other => Ok(Transformed::no(other)),
        })
    }

    fn name(&self) -> &str {
        "scalar_subquery_cardinality"
    }
}

/// A scalar subquery that fails with 21000 past one row (see [`ScalarSubqueryCardinality`]).
fn checked_subquery(mut subquery: datafusion::logical_expr::Subquery) -> DfResult<Expr> {
    let plan = Arc::unwrap_or_clone(Arc::clone(&subquery.subquery));
    // Conditions on the outer row alone decide whether the subquery runs.
    let Hoisted { plan, outer: outer_conditions, mixed } = if subquery.outer_ref_columns.is_empty() {
        Hoisted { plan, outer: vec![], mixed: vec![] }
    } else {
        hoist_outer_conditions(plan)?
    };
    let guarded = |expr: Expr| -> DfResult<Expr> {
        Ok(match datafusion::logical_expr::utils::conjunction(outer_conditions.clone()) {
            Some(condition) => datafusion::logical_expr::when(condition, expr).end()?,
            None => expr,
        })
    };
    if let LogicalPlan::Projection(projection) = &plan
        && let [output] = projection.expr.as_slice()
        && (!mixed.is_empty() || output.exists(|x| Ok(matches!(x, Expr::OuterReferenceColumn(..))))?)
    {
        let pulled = pull_up_projection(&subquery, output, &projection.input, mixed)?;
        return guarded(pulled);
    }
    if !mixed.is_empty() {
        // Mixed conditions need the projection above to be pulled up with them.
        return Err(DataFusionError::NotImplemented(
            "Physical plan does not support logical expression ScalarSubquery with these conditions".into(),
        ));
    }
    let correlated = !plan.all_out_ref_exprs().is_empty();
    let field = plan.schema().field(0).clone();
    let column = Expr::Column(datafusion::common::Column::from(plan.schema().qualified_field(0)));
    if !correlated {
        let checked = LogicalPlanBuilder::from(plan)
            .limit(0, Some(2))?
            .aggregate(Vec::<Expr>::new(), vec![single_row_call(column).alias(field.name())])?
            .build()?;
        subquery.outer_ref_columns = vec![];
        subquery.subquery = Arc::new(checked);
        return guarded(Expr::ScalarSubquery(subquery));
    }
    // Its output is joined to the outer rows: the name must not clash with theirs.
    let name = format!("__counted_{}", field.name());
    let value = counted_single_value(column, |counted| {
        let checked =
            LogicalPlanBuilder::from(plan).aggregate(Vec::<Expr>::new(), vec![counted.alias(name)])?.build()?;
        subquery.outer_ref_columns = checked.all_out_ref_exprs();
        subquery.subquery = Arc::new(checked);
        Ok(Expr::ScalarSubquery(subquery))
    })?;
    guarded(value)
}

/// `(SELECT f(i, o) FROM t WHERE …)`, whose output reads the outer row `o`
/// (DataFusion decorrelates no such subquery), as `f` applied outside to
/// the one row the subquery finds: `CASE WHEN r IS NOT NULL THEN f(r.i, o) END`
/// with `r = (SELECT named_struct('c0', i, …) FROM t WHERE …)`, each use of
/// `r` a checked scalar subquery of its own.
fn pull_up_projection(
    subquery: &datafusion::logical_expr::Subquery,
    output: &Expr,
    input: &Arc<LogicalPlan>,
    conditions: Vec<Expr>,
) -> DfResult<Expr> {
    use datafusion::functions::core::expr_fn::{get_field, named_struct};
    let output = output.clone().unalias_nested().data;
    let filtered = !conditions.is_empty();
    let mut inner: Vec<datafusion::common::Column> = output.column_refs().into_iter().cloned().collect();
    for condition in &conditions {
        inner.extend(condition.column_refs().into_iter().cloned());
    }
    inner.sort_by_key(|c| c.flat_name());
    inner.dedup();
    let mut struct_args = Vec::with_capacity(inner.len() * 2 + 2);
    // A row marker, so that a found row is never a NULL struct.
    struct_args.extend([datafusion::logical_expr::lit("found"), datafusion::logical_expr::lit(true)]);
    for (i, column) in inner.iter().enumerate() {
        struct_args.extend([datafusion::logical_expr::lit(format!("c{i}")), Expr::Column(column.clone())]);
    }
    let row_plan = LogicalPlanBuilder::from(Arc::unwrap_or_clone(Arc::clone(input)))
        .project(vec![named_struct(struct_args).alias("__row")])?
        .build()?;
    let row = || -> DfResult<Expr> {
        let mut copy = subquery.clone();
        copy.outer_ref_columns = row_plan.all_out_ref_exprs();
        copy.subquery = Arc::new(row_plan.clone());
        if filtered { checked_filtered_subquery(copy) } else { checked_subquery(copy) }
    };
    let outside = |expr: Expr| -> DfResult<Expr> {
        Ok(expr
            .transform(|x| match x {
                Expr::OuterReferenceColumn(_, column) => Ok(Transformed::yes(Expr::Column(column))),
                Expr::Column(column) => match inner.iter().position(|c| *c == column) {
                    Some(i) => Ok(Transformed::yes(get_field(row()?, format!("c{i}")))),
                    None => Ok(Transformed::no(Expr::Column(column))),
                },
                other => Ok(Transformed::no(other)),
            })?
            .data)
    };
    let applied = outside(output)?;
    let mut found = row()?.is_not_null();
    for condition in conditions {
        found = found.and(outside(condition)?);
    }
    datafusion::logical_expr::when(found, applied).end()
}

/// The row a correlated subquery's equalities find, for conditions checked
/// outside it ([`pull_up_projection`]): when the equalities find several
/// rows, which of them the other conditions keep is not known here, so that
/// is refused (0A000) rather than answered.
fn checked_filtered_subquery(mut subquery: datafusion::logical_expr::Subquery) -> DfResult<Expr> {
    let plan = Arc::unwrap_or_clone(Arc::clone(&subquery.subquery));
    let field = plan.schema().field(0).clone();
    let column = Expr::Column(datafusion::common::Column::from(plan.schema().qualified_field(0)));
    let name = format!("__counted_{}", field.name());
    counted_value(column, true, |counted| {
        let checked =
            LogicalPlanBuilder::from(plan).aggregate(Vec::<Expr>::new(), vec![counted.alias(name)])?.build()?;
        subquery.outer_ref_columns = checked.all_out_ref_exprs();
        subquery.subquery = Arc::new(checked);
        Ok(Expr::ScalarSubquery(subquery))
    })
}

/// `(SELECT e FROM t WHERE o AND r)`, where `o` reads only the outer row, is
/// `CASE WHEN o THEN (SELECT e FROM t WHERE r) END`: returns the subquery
/// without `o` and the `o`s, as expressions over the outer row. DataFusion
/// decorrelates the second form, not the first (clients' catalog queries
/// write `WHERE attribute.atthasdef AND adrelid = attrelid …`).
fn hoist_outer_conditions(plan: LogicalPlan) -> DfResult<Hoisted> {
    use datafusion::logical_expr::{Filter, Projection};
    let reads_outer = |e: &Expr| e.exists(|x| Ok(matches!(x, Expr::OuterReferenceColumn(..)))).unwrap_or(false);
    // `inner = outer` (either way round): what DataFusion decorrelates.
    let equality = |e: &Expr| match e {
        Expr::BinaryExpr(b) if b.op == datafusion::logical_expr::Operator::Eq => {
            let inner_only = |x: &Expr| !reads_outer(x) && !x.column_refs().is_empty();
            let outer_only = |x: &Expr| reads_outer(x) && x.column_refs().is_empty();
            (inner_only(&b.left) && outer_only(&b.right)) || (outer_only(&b.left) && inner_only(&b.right))
        }
        _ => false,
    };
    let split = |filter: Filter| -> DfResult<(LogicalPlan, Vec<Expr>, Vec<Expr>)> {
        let mut outer = vec![];
        let mut mixed = vec![];
        let mut inner = vec![];
        for e in datafusion::logical_expr::utils::split_conjunction_owned(filter.predicate) {
            if e.is_volatile() || !reads_outer(&e) || equality(&e) {
                inner.push(e);
            } else if e.column_refs().is_empty() {
                outer.push(e);
            } else {
                mixed.push(e);
            }
        }
        let input = Arc::unwrap_or_clone(filter.input);
        let plan = match datafusion::logical_expr::utils::conjunction(inner) {
            Some(predicate) => LogicalPlan::Filter(Filter::try_new(predicate, Arc::new(input))?),
            None => input,
        };
        let outer = outer
            .into_iter()
            .map(|e| {
                e.transform(|x| match x {
                    Expr::OuterReferenceColumn(_, column) => Ok(Transformed::yes(Expr::Column(column))),
                    other => Ok(Transformed::no(other)),
                })
                .map(|t| t.data)
            })
            .collect::<DfResult<Vec<_>>>()?;
        Ok((plan, outer, mixed))
    };
    Ok(match plan {
        LogicalPlan::Projection(projection) => match Arc::unwrap_or_clone(projection.input) {
            LogicalPlan::Filter(filter) => {
                let (input, outer, mixed) = split(filter)?;
                let plan = LogicalPlan::Projection(Projection::try_new(projection.expr, Arc::new(input))?);
                Hoisted { plan, outer, mixed }
            }
            input => Hoisted {
                plan: LogicalPlan::Projection(Projection::try_new(projection.expr, Arc::new(input))?),
                outer: vec![],
                mixed: vec![],
            },
        },
        LogicalPlan::Filter(filter) => {
            let (plan, outer, mixed) = split(filter)?;
            Hoisted { plan, outer, mixed }
        }
        other => Hoisted { plan: other, outer: vec![], mixed: vec![] },
    })
}

/// A correlated subquery taken apart by [`hoist_outer_conditions`].
struct Hoisted {
    /// The subquery without the conditions below.
    plan: LogicalPlan,
    /// Conditions on the outer row alone, over plain columns of the outer query.
    outer: Vec<Expr>,
    /// Conditions reading both the subquery's rows and the outer row other
    /// than by equality (still with outer references).
    mixed: Vec<Expr>,
}

/// Whether `plan` can return at most one row whatever the data.
fn at_most_one_row(plan: &LogicalPlan) -> bool {
    match plan {
        LogicalPlan::Projection(p) => at_most_one_row(&p.input),
        LogicalPlan::SubqueryAlias(a) => at_most_one_row(&a.input),
        LogicalPlan::Filter(f) => at_most_one_row(&f.input),
        LogicalPlan::Sort(s) => at_most_one_row(&s.input),
        LogicalPlan::Aggregate(a) => a.group_expr.is_empty(),
        LogicalPlan::Limit(l) => {
            matches!(l.get_fetch_type(), Ok(datafusion::logical_expr::FetchType::Literal(Some(n))) if n <= 1)
        }
        LogicalPlan::EmptyRelation(_) => true,
        LogicalPlan::Values(v) => v.values.len() <= 1,
        _ => false,
    }
}

fn single_row_call(arg: Expr) -> Expr {
    static SINGLE_ROW: LazyLock<Arc<AggregateUDF>> = LazyLock::new(|| {
        Arc::new(AggregateUDF::new_from_impl(SingleRow {
            signature: Signature::any(1, Volatility::Immutable),
            counted: false,
        }))
    });
    Expr::AggregateFunction(AggregateFunction::new_udf(Arc::clone(&SINGLE_ROW), vec![arg], false, None, vec![], None))
}

/// `single_value(counted_rows(x))`: for a correlated subquery, which
/// DataFusion turns into a join with the subquery's rows aggregated per
/// correlation key. The aggregate only counts (a key no outer row asks for
/// may have many rows, and that is no error); the error is raised where the
/// value is used, for the outer rows that do ask.
fn counted_single_value(arg: Expr, subquery: impl FnOnce(Expr) -> DfResult<Expr>) -> DfResult<Expr> {
    counted_value(arg, false, subquery)
}

/// [`counted_single_value`]; `filtered`: several rows are 0A000 (see [`checked_filtered_subquery`]).
fn counted_value(arg: Expr, filtered: bool, subquery: impl FnOnce(Expr) -> DfResult<Expr>) -> DfResult<Expr> {
    static COUNTED: LazyLock<Arc<AggregateUDF>> = LazyLock::new(|| {
        Arc::new(AggregateUDF::new_from_impl(SingleRow {
            signature: Signature::any(1, Volatility::Immutable),
            counted: true,
        }))
    });
    static SINGLE_VALUE: LazyLock<Arc<datafusion::logical_expr::ScalarUDF>> = LazyLock::new(|| {
        Arc::new(datafusion::logical_expr::ScalarUDF::new_from_impl(SingleValue {
            signature: Signature::any(1, Volatility::Immutable),
            filtered: false,
        }))
    });
    static FILTERED_VALUE: LazyLock<Arc<datafusion::logical_expr::ScalarUDF>> = LazyLock::new(|| {
        Arc::new(datafusion::logical_expr::ScalarUDF::new_from_impl(SingleValue {
            signature: Signature::any(1, Volatility::Immutable),
            filtered: true,
        }))
    });
    let counted =
        Expr::AggregateFunction(AggregateFunction::new_udf(Arc::clone(&COUNTED), vec![arg], false, None, vec![], None));
    let udf = if filtered { &FILTERED_VALUE } else { &SINGLE_VALUE };
    Ok(Expr::ScalarFunction(ScalarFunction::new_udf(Arc::clone(udf), vec![subquery(counted)?])))
}

const TOO_MANY_ROWS: &str = "more than one row returned by a subquery used as an expression";

fn too_many_rows() -> DataFusionError {
    DataFusionError::External(Box::new(Error::new(StatusCode::CardinalityViolation, TOO_MANY_ROWS)))
}

/// `single_row(x)`: the one value of `x`, NULL for none, 21000 for more.
/// Counted (`counted_rows(x)`): a struct of the first value and the number
/// of rows, NULL for none, never an error.
#[derive(Debug, PartialEq, Eq, Hash)]
struct SingleRow {
    signature: Signature,
    counted: bool,
}

fn counted_type(value: &DataType) -> DataType {
    DataType::Struct(vec![Field::new("value", value.clone(), true), Field::new("rows", DataType::Int64, false)].into())
}

impl AggregateUDFImpl for SingleRow {
    fn name(&self) -> &str {
        if self.counted { "counted_rows" } else { "single_row" }
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, arg_types: &[DataType]) -> DfResult<DataType> {
        Ok(if self.counted { counted_type(&arg_types[0]) } else { arg_types[0].clone() })
    }

    fn accumulator(&self, args: AccumulatorArgs) -> DfResult<Box<dyn Accumulator>> {
        let value_type = match (self.counted, args.return_field.data_type()) {
            (true, DataType::Struct(fields)) => fields[0].data_type().clone(),
            (_, other) => other.clone(),
        };
        Ok(Box::new(SingleRowAccumulator {
            value: ScalarValue::try_from(&value_type)?,
            rows: 0,
            counted: self.counted.then(|| args.return_field.data_type().clone()),
        }))
    }

    fn state_fields(&self, args: StateFieldsArgs) -> DfResult<Vec<FieldRef>> {
        let value_type = match (self.counted, args.return_field.data_type()) {
            (true, DataType::Struct(fields)) => fields[0].data_type().clone(),
            (_, other) => other.clone(),
        };
        Ok(vec![Arc::new(Field::new("value", value_type, true)), Arc::new(Field::new("rows", DataType::Int64, true))])
    }
}

#[derive(Debug)]
struct SingleRowAccumulator {
    value: ScalarValue,
    rows: i64,
    /// The struct type a counted accumulator returns.
    counted: Option<DataType>,
}

impl SingleRowAccumulator {
    fn add(&mut self, rows: i64, value: impl FnOnce() -> DfResult<ScalarValue>) -> DfResult<()> {
        if rows == 0 {
            return Ok(());
        }
        let first = self.rows == 0;
        self.rows = self.rows.saturating_add(rows);
        if self.rows > 1 && self.counted.is_none() {
            return Err(too_many_rows());
        }
        if first {
            self.value = value()?;
        }
        Ok(())
    }
}

/// `single_value(counted)`: the value of a [`SingleRow`] count, 21000 when it saw more than one row.
#[derive(Debug, PartialEq, Eq, Hash)]
struct SingleValue {
    signature: Signature,
    /// Conditions are checked outside: several rows are 0A000, not 21000.
    filtered: bool,
}

impl datafusion::logical_expr::ScalarUDFImpl for SingleValue {
    fn name(&self) -> &str {
        if self.filtered { "filtered_single_value" } else { "single_value" }
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, arg_types: &[DataType]) -> DfResult<DataType> {
        match &arg_types[0] {
            DataType::Struct(fields) => Ok(fields[0].data_type().clone()),
            other => Err(DataFusionError::Internal(format!("single_value of {other}"))),
        }
    }

    fn invoke_with_args(&self, args: datafusion::logical_expr::ScalarFunctionArgs) -> DfResult<ColumnarValue> {
        let array = to_array(&args.args[0], args.number_rows)?;
        let counted = datafusion::common::cast::as_struct_array(&array)?;
        let rows = datafusion::common::cast::as_int64_array(counted.column(1))?;
        for i in 0..counted.len() {
            if counted.is_valid(i) && rows.value(i) > 1 {
                if self.filtered {
                    return Err(DataFusionError::External(Box::new(Error::new(
                        StatusCode::Unsupported,
                        "a correlated scalar subquery whose equality conditions find several rows, and whose \
                         other conditions read the outer row, is not supported: rewrite it as a join",
                    ))));
                }
                return Err(too_many_rows());
            }
        }
        // NULL where the struct is NULL (no row).
        let values = counted.column(0);
        let values = match counted.nulls() {
            Some(nulls) => {
                let combined = datafusion::arrow::buffer::NullBuffer::union(Some(nulls), values.nulls());
                datafusion::arrow::array::make_array(values.to_data().into_builder().nulls(combined).build()?)
            }
            None => Arc::clone(values),
        };
        Ok(ColumnarValue::Array(values))
    }
}

impl Accumulator for SingleRowAccumulator {
    fn update_batch(&mut self, values: &[ArrayRef]) -> DfResult<()> {
        let array = &values[0];
        self.add(array.len() as i64, || ScalarValue::try_from_array(array, 0))
    }

    fn merge_batch(&mut self, states: &[ArrayRef]) -> DfResult<()> {
        let rows = states[1].as_any().downcast_ref::<Int64Array>().expect("rows are Int64");
        for i in 0..rows.len() {
            let n = if rows.is_null(i) { 0 } else { rows.value(i) };
            self.add(n, || ScalarValue::try_from_array(&states[0], i))?;
        }
        Ok(())
    }

    fn state(&mut self) -> DfResult<Vec<ScalarValue>> {
        Ok(vec![self.value.clone(), ScalarValue::Int64(Some(self.rows))])
    }

    fn evaluate(&mut self) -> DfResult<ScalarValue> {
        let Some(struct_type) = &self.counted else { return Ok(self.value.clone()) };
        let DataType::Struct(fields) = struct_type else { return ScalarValue::try_from(struct_type) };
        if self.rows == 0 {
            return ScalarValue::try_from(struct_type);
        }
        let mut builder = datafusion::common::scalar::ScalarStructBuilder::new();
        builder = builder.with_scalar(Arc::clone(&fields[0]), self.value.clone());
        builder = builder.with_scalar(Arc::clone(&fields[1]), ScalarValue::Int64(Some(self.rows)));
        builder.build()
    }

    fn size(&self) -> usize {
        std::mem::size_of_val(self) + self.value.size()
    }
}

/// `pg_like_escape(pattern, escape)`: a `LIKE` pattern written with escape
/// character `escape` (`LIKE p ESCAPE '/'`), as the backslash-escaped
/// pattern DataFusion matches with. An empty `escape` turns escaping off.
/// The SQL front end rewrites `LIKE … ESCAPE` to it.
pub fn like_escape_udf() -> datafusion::logical_expr::ScalarUDF {
    use datafusion::arrow::array::StringArray;
    datafusion::logical_expr::create_udf(
        crate::sql::compat::LIKE_ESCAPE_FUNCTION,
        vec![DataType::Utf8, DataType::Utf8],
        DataType::Utf8,
        datafusion::logical_expr::Volatility::Immutable,
        Arc::new(|args: &[ColumnarValue]| {
            let rows = args.iter().find_map(|a| match a {
                ColumnarValue::Array(a) => Some(a.len()),
                ColumnarValue::Scalar(_) => None,
            });
            let patterns = to_array(&args[0], rows.unwrap_or(1))?;
            let escapes = to_array(&args[1], rows.unwrap_or(1))?;
            let patterns = datafusion::common::cast::as_string_array(&patterns)?;
            let escapes = datafusion::common::cast::as_string_array(&escapes)?;
            let mut out = Vec::with_capacity(patterns.len());
            for (pattern, escape) in patterns.iter().zip(escapes.iter()) {
                out.push(match (pattern, escape) {
                    (Some(pattern), Some(escape)) => Some(backslash_pattern(pattern, escape)?),
                    _ => None,
                });
            }
            let array: ArrayRef = Arc::new(StringArray::from(out));
            Ok(match rows {
                Some(_) => ColumnarValue::Array(array),
                None => ColumnarValue::Scalar(ScalarValue::try_from_array(&array, 0)?),
            })
        }),
    )
}

fn user_error(code: crate::error::StatusCode, message: &str) -> DataFusionError {
    DataFusionError::External(Box::new(crate::error::Error::new(code, message)))
}

fn backslash_pattern(pattern: &str, escape: &str) -> DfResult<String> {
    use crate::error::StatusCode;
    let mut chars = escape.chars();
    let escape = match (chars.next(), chars.next()) {
        (None, _) => None,
        (Some(c), None) => Some(c),
        _ => {
            return Err(user_error(
                StatusCode::InvalidArgument,
                "invalid escape string: escape string must be empty or one character",
            ));
        }
    };
    let mut out = String::with_capacity(pattern.len() + 4);
    let mut input = pattern.chars();
    while let Some(c) = input.next() {
        if Some(c) == escape {
            let Some(next) = input.next() else {
                return Err(user_error(StatusCode::InvalidArgument, "LIKE pattern must not end with escape character"));
            };
            out.push('\\');
            out.push(next);
        } else if c == '\\' {
            out.push_str("\\\\");
        } else {
            out.push(c);
        }
    }
    Ok(out)
}

/// `json_build_object(k1, v1, …)`: a JSON object as text (`json` is text
/// here), values as JSON scalars by their type.
pub fn json_build_object_udf() -> datafusion::logical_expr::ScalarUDF {
    use datafusion::logical_expr::TypeSignature;
    let signature = Signature::one_of(vec![TypeSignature::VariadicAny, TypeSignature::Nullary], Volatility::Immutable);
    datafusion::logical_expr::ScalarUDF::new_from_impl(JsonBuildObject { signature })
}

#[derive(Debug, PartialEq, Eq, Hash)]
struct JsonBuildObject {
    signature: Signature,
}

impl datafusion::logical_expr::ScalarUDFImpl for JsonBuildObject {
    fn name(&self) -> &str {
        "json_build_object"
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _: &[DataType]) -> DfResult<DataType> {
        Ok(DataType::Utf8)
    }

    fn invoke_with_args(&self, args: datafusion::logical_expr::ScalarFunctionArgs) -> DfResult<ColumnarValue> {
        use crate::error::StatusCode;
        if !args.args.len().is_multiple_of(2) {
            return Err(user_error(StatusCode::InvalidArgument, "argument list must have even number of elements"));
        }
        let rows = args.number_rows;
        let arrays = args.args.iter().map(|a| to_array(a, rows)).collect::<DfResult<Vec<_>>>()?;
        let mut out = Vec::with_capacity(rows);
        for row in 0..rows {
            let mut object = serde_json::Map::new();
            for pair in arrays.chunks(2) {
                let key = ScalarValue::try_from_array(&pair[0], row)?;
                if key.is_null() {
                    return Err(user_error(StatusCode::InvalidArgument, "null value not allowed for object key"));
                }
                let key = match key {
                    ScalarValue::Utf8(Some(s)) | ScalarValue::Utf8View(Some(s)) | ScalarValue::LargeUtf8(Some(s)) => s,
                    other => other.to_string(),
                };
                object.insert(key, json_value(ScalarValue::try_from_array(&pair[1], row)?));
            }
            out.push(serde_json::Value::Object(object).to_string());
        }
        Ok(ColumnarValue::Array(Arc::new(datafusion::arrow::array::StringArray::from(out))))
    }
}

fn json_value(value: ScalarValue) -> serde_json::Value {
    use ScalarValue as S;
    use serde_json::Value as J;
    if value.is_null() {
        return J::Null;
    }
    match value {
        S::Boolean(Some(b)) => J::Bool(b),
        S::Int8(Some(v)) => J::from(v),
        S::Int16(Some(v)) => J::from(v),
        S::Int32(Some(v)) => J::from(v),
        S::Int64(Some(v)) => J::from(v),
        S::UInt8(Some(v)) => J::from(v),
        S::UInt16(Some(v)) => J::from(v),
        S::UInt32(Some(v)) => J::from(v),
        S::UInt64(Some(v)) => J::from(v),
        S::Float32(Some(v)) => serde_json::Number::from_f64(f64::from(v)).map_or(J::Null, J::Number),
        S::Float64(Some(v)) => serde_json::Number::from_f64(v).map_or(J::Null, J::Number),
        S::Utf8(Some(s)) | S::Utf8View(Some(s)) | S::LargeUtf8(Some(s)) => J::String(s),
        other => J::String(other.to_string()),
    }
}
