//! The incremental form of a view's plan.
//!
//! [`ViewPlan::analyze`] checks DataFusion's optimized plan of the defining
//! query and refuses (SQLSTATE 0A000, naming the construct) anything whose
//! change cannot be computed from its sources' changes. What it accepts has
//! this shape:
//!
//! ```text
//!   [Projection | Filter | SubqueryAlias]*        the top chain (HAVING, select list)
//!   [Aggregate | Window]                          at most one, in the top chain
//!   linear part: Projection | Filter | SubqueryAlias | Join (inner, outer, semi, anti) | Union (ALL) | TableScan
//! ```
//!
//! [`Rewriter`] rebuilds the plan with every scan reading what a step needs
//! ([`At`]: a snapshot, or the changelog with a `__weight` column) and
//! carries two kinds of extra columns up to the output: the key columns
//! (so each output row can be identified) and the weight.

use std::sync::Arc;

use datafusion::arrow::datatypes::DataType;
use datafusion::catalog::{MemTable, TableProvider};
use datafusion::common::{Column, ExprSchema, JoinType, NullEquality, ScalarValue};
use datafusion::datasource::{provider_as_source, source_as_provider};
use datafusion::logical_expr::ExprSchemable;
use datafusion::logical_expr::utils::conjunction;
use datafusion::logical_expr::{
    Aggregate, Expr, Filter, Join, LogicalPlan, LogicalPlanBuilder, Projection, SubqueryAlias, TableScan, Union,
    Window, lit,
};

use super::MaterializedView;
use crate::catalog::{AsOf, DEFAULT_SCHEMA, RelationName};
use crate::dynamic::DynamicTable;
use crate::dynamic::system::SnapshotTable;
use crate::error::{Error, Result};

/// The weight column of a change: +1 (row added) or −1 (row removed).
pub const WEIGHT: &str = "__weight";

/// The prefix of a Top-N view's hidden columns: its window input's columns.
pub const CARRIED: &str = "__t";

/// A table or view a view reads.
#[derive(Debug, Clone)]
pub struct Source {
    /// Its name.
    pub name: RelationName,
    /// Its stored table, all columns (a view's hidden ones too).
    pub table: Arc<DynamicTable>,
    /// Set when the source is itself a materialized view.
    pub view: Option<Arc<MaterializedView>>,
}

impl Source {
    fn key_columns(&self) -> Vec<usize> {
        self.table.storage().schema().primary_key.clone()
    }
}

/// What one scan of a source reads in a rewritten plan.
#[derive(Debug, Clone)]
pub enum At {
    /// The source as of this snapshot (0: before its first commit, empty).
    Snapshot(u64),
    /// A change from snapshot `from` to `to`: the source's columns plus
    /// [`WEIGHT`] (joins that recompute the keys a change touches read the
    /// two snapshots too).
    Delta {
        /// The changed rows.
        change: Arc<dyn TableProvider>,
        /// The same rows, to bound the keys a join looks up.
        batches: Arc<Vec<datafusion::arrow::array::RecordBatch>>,
        /// The snapshot before the change.
        from: u64,
        /// The snapshot after it.
        to: u64,
    },
}

/// Which version of the changed scan a rewrite reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reading {
    /// The change itself (with weights).
    Change,
    /// The snapshot before it.
    Old,
    /// The snapshot after it.
    New,
}

/// A view's defining query, checked and ready to be rewritten.
#[derive(Debug, Clone)]
pub struct ViewPlan {
    /// DataFusion's optimized plan (a top-level ORDER BY removed).
    pub plan: LogicalPlan,
    /// Distinct sources, in order of first scan.
    pub sources: Vec<Source>,
    /// For each scan in plan order, the index of its source.
    pub occurrences: Vec<usize>,
    /// Number of output columns of the query.
    pub visible: usize,
    /// Whether the top chain has an aggregate or a window function.
    grouped: bool,
    /// Set when the aggregate's value per group can be kept as state.
    pub state: Option<GroupState>,
    /// Set when the view is a Top-N per partition ([`TopN`]).
    pub top_n: Option<TopN>,
}

/// A view of the first N rows per partition: the top chain is projections
/// and aliases around one filter `rn <= N` (or `rn < N + 1`, `rn = 1`) of a
/// window with one function, `ROW_NUMBER()`. Its rows for a partition
/// depend on the partition's first N input rows only, so a change that
/// adds rows and retracts none of those is computed from them and the
/// added rows (kept as hidden columns of the view's rows, [`CARRIED`]),
/// without reading the partition; a retracted one is replaced from the
/// partition's spare candidates ([`super::spares`]) while there are any.
#[derive(Debug, Clone)]
pub struct TopN {
    /// N.
    pub limit: u64,
}

impl TopN {
    fn of(plan: &LogicalPlan) -> Option<Self> {
        let mut node = plan;
        let filter = loop {
            match node {
                LogicalPlan::Projection(p) => node = &p.input,
                LogicalPlan::SubqueryAlias(a) => node = &a.input,
                LogicalPlan::Filter(f) => break f,
                _ => return None,
            }
        };
        let (column, limit) = row_limit(&filter.predicate)?;
        if limit == 0 || !traces_to_row_number(&filter.input, &column) {
            return None;
        }
        // Each partition column once (they lead the view's key).
        let (partition, _) = grouping(plan)?;
        if partition.iter().enumerate().any(|(i, e)| partition[..i].contains(e)) {
            return None;
        }
        Some(Self { limit })
    }
}

/// `column <= N` (and its equivalents) as (column, N).
fn row_limit(predicate: &Expr) -> Option<(Column, u64)> {
    use datafusion::logical_expr::{BinaryExpr, Operator};
    let Expr::BinaryExpr(BinaryExpr { left, op, right }) = predicate else { return None };
    let strip = |e: &Expr| -> Expr {
        match e {
            Expr::Cast(c) => c.expr.as_ref().clone(),
            Expr::TryCast(c) => c.expr.as_ref().clone(),
            other => other.clone(),
        }
    };
    let number = |e: &Expr| -> Option<i128> {
        match strip(e) {
            Expr::Literal(v, _) => match v {
                ScalarValue::Int8(Some(n)) => Some(n.into()),
                ScalarValue::Int16(Some(n)) => Some(n.into()),
                ScalarValue::Int32(Some(n)) => Some(n.into()),
                ScalarValue::Int64(Some(n)) => Some(n.into()),
                ScalarValue::UInt8(Some(n)) => Some(n.into()),
                ScalarValue::UInt16(Some(n)) => Some(n.into()),
                ScalarValue::UInt32(Some(n)) => Some(n.into()),
                ScalarValue::UInt64(Some(n)) => Some(n.into()),
                _ => None,
            },
            _ => None,
        }
    };
    let (column, op, n) = match (strip(left), strip(right)) {
        (Expr::Column(c), _) => (c, *op, number(right)?),
        (_, Expr::Column(c)) => (c, op.swap()?, number(left)?),
        _ => return None,
    };
    let limit = match op {
        Operator::LtEq => n,
        Operator::Lt => n - 1,
        Operator::Eq if n == 1 => 1,
        _ => return None,
    };
    Some((column, u64::try_from(limit).ok()?))
}

/// Whether `column` of `plan` is the value of a window whose only function
/// is `ROW_NUMBER()`, through projections and aliases.
fn traces_to_row_number(plan: &LogicalPlan, column: &Column) -> bool {
    match plan {
        LogicalPlan::Projection(p) => {
            let Ok(i) = plan.schema().index_of_column(column) else { return false };
            match p.expr[i].clone().unalias() {
                Expr::Column(c) => traces_to_row_number(&p.input, &c),
                _ => false,
            }
        }
        LogicalPlan::SubqueryAlias(a) => {
            let Ok(i) = plan.schema().index_of_column(column) else { return false };
            traces_to_row_number(&a.input, &output_column(&a.input, i))
        }
        LogicalPlan::Window(w) => {
            let Ok(i) = plan.schema().index_of_column(column) else { return false };
            let functions = w.input.schema().fields().len();
            w.window_expr.len() == 1
                && i == functions
                && matches!(w.window_expr[0].clone().unalias(), Expr::WindowFunction(f) if f.fun.name() == "row_number")
        }
        _ => false,
    }
}

/// How an aggregate function's state combines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StateKind {
    /// COUNT: the number of non-NULL arguments.
    Count,
    /// SUM: the sum and count of non-NULL arguments.
    Sum,
    /// AVG: the sum and count of non-NULL arguments.
    Avg,
    /// MIN: the smallest argument; recomputed when it is retracted.
    Min,
    /// MAX: the largest argument; recomputed when it is retracted.
    Max,
    /// COUNT(DISTINCT): the number of distinct non-NULL arguments; how
    /// many rows hold each value is kept apart ([`super::distinct`]).
    CountDistinct,
}

impl StateKind {
    /// Whether the function's state is its count alone (no value column).
    pub fn counts(self) -> bool {
        matches!(self, Self::Count | Self::CountDistinct)
    }
}

/// One aggregate function of a view whose value per group is kept as state.
#[derive(Debug, Clone)]
pub struct StateAggregate {
    /// How its state combines.
    pub kind: StateKind,
    /// What it aggregates (for AVG of an integer, the integer, summed exactly).
    arg: Expr,
    /// The type of its result.
    pub output: DataType,
}

/// A view whose aggregate (GROUP BY with COUNT, COUNT(DISTINCT), SUM, AVG,
/// MIN, MAX, or no function) keeps, per group, state that a change updates
/// without reading the sources: the number of input rows, and per function
/// the count of non-NULL (for COUNT(DISTINCT): distinct) arguments and
/// their sum (SUM, AVG) or extreme (MIN, MAX).
/// A select list over the aggregate is evaluated on the new values; a
/// window function or another function keeps recomputing groups. Under a
/// HAVING (a filter over the aggregate) the view has no row for groups that
/// fail it, so their state cannot live in the view's rows: it is kept in a
/// table of its own ([`super::groups`]).
#[derive(Debug, Clone)]
pub struct GroupState {
    /// The aggregate functions, in the aggregate's order.
    pub aggregates: Vec<StateAggregate>,
    /// A filter over the aggregate (HAVING) drops some groups' rows.
    pub having: bool,
    /// The aggregate node's output (group columns, then functions).
    output: datafusion::common::DFSchemaRef,
}

impl GroupState {
    /// What can be kept as state for `plan` (the top chain of a view).
    fn of(plan: &LogicalPlan) -> Option<Self> {
        let aggregate = match plan {
            LogicalPlan::Projection(p) => return Self::of(&p.input),
            LogicalPlan::SubqueryAlias(a) => return Self::of(&a.input),
            LogicalPlan::Filter(f) => return Self::of(&f.input).map(|state| Self { having: true, ..state }),
            LogicalPlan::Aggregate(a) => a,
            _ => return None,
        };
        let input = aggregate.input.schema();
        let mut aggregates = Vec::with_capacity(aggregate.aggr_expr.len());
        for (i, expr) in aggregate.aggr_expr.iter().enumerate() {
            let Expr::AggregateFunction(f) = expr.clone().unalias() else { return None };
            let params = &f.params;
            if params.filter.is_some() || !params.order_by.is_empty() || params.args.len() != 1 {
                return None;
            }
            let arg = params.args[0].clone();
            let arg_type = arg.get_type(input.as_ref()).ok()?;
            let output = aggregate.schema.field(aggregate.group_expr.len() + i).data_type().clone();
            let exact_sum = |t: &DataType| t.is_integer() || matches!(t, DataType::Decimal128(_, _));
            if params.distinct {
                // Per value, the rows holding it: values are row-encoded, so no nested types.
                if f.func.name() != "count" || arg_type.is_nested() {
                    return None;
                }
                aggregates.push(StateAggregate { kind: StateKind::CountDistinct, arg, output });
                continue;
            }
            let (kind, arg) = match f.func.name() {
                "count" => (StateKind::Count, arg),
                "sum" if exact_sum(&arg_type) => (StateKind::Sum, arg),
                "avg" => match (&arg, &output) {
                    // AVG of an integer is planned over a cast to Float64; sum the integers.
                    (Expr::Cast(cast), DataType::Float64)
                        if cast.field.data_type() == &DataType::Float64
                            && cast.expr.get_type(input.as_ref()).ok()?.is_integer() =>
                    {
                        (StateKind::Avg, *cast.expr.clone())
                    }
                    (_, DataType::Decimal128(_, _)) if matches!(arg_type, DataType::Decimal128(_, _)) => {
                        (StateKind::Avg, arg)
                    }
                    _ => return None,
                },
                "min" | "max" if !arg_type.is_nested() => {
                    (if f.func.name() == "min" { StateKind::Min } else { StateKind::Max }, arg)
                }
                _ => return None,
            };
            aggregates.push(StateAggregate { kind, arg, output });
        }
        Some(Self { aggregates, having: false, output: Arc::clone(&aggregate.schema) })
    }

    /// The number of output columns of the aggregate node.
    pub fn width(&self) -> usize {
        self.output.fields().len()
    }

    /// The type of output column `i` of the aggregate node.
    pub fn output_type(&self, i: usize) -> &DataType {
        self.output.field(i).data_type()
    }

    /// The indexes of the COUNT(DISTINCT) functions.
    pub fn distinct_functions(&self) -> Vec<usize> {
        (0..self.aggregates.len()).filter(|&j| self.aggregates[j].kind == StateKind::CountDistinct).collect()
    }
}

/// A rewritten plan and where its extra columns are.
#[derive(Debug)]
pub struct Rewritten {
    /// The plan: the query's columns, then extras.
    pub plan: LogicalPlan,
    /// Indexes of the key columns in the plan's output.
    pub keys: Vec<usize>,
    /// Index of the weight column, in a change.
    pub weight: Option<usize>,
    /// Indexes of a Top-N view's window input columns ([`TopN`]).
    pub carried: Vec<usize>,
}

fn refuse(construct: impl std::fmt::Display) -> Error {
    Error::unsupported(format!(
        "{construct} cannot be maintained incrementally in a materialized view (define it as a plain VIEW, or split it into views that can)"
    ))
}

impl ViewPlan {
    /// Checks `plan` (optimized) and finds its sources.
    ///
    /// # Errors
    /// 0A000 naming the first construct that cannot be maintained.
    pub fn analyze(plan: LogicalPlan) -> Result<Self> {
        let plan = match plan {
            LogicalPlan::Sort(sort) if sort.fetch.is_none() => Arc::unwrap_or_clone(sort.input),
            other => other,
        };
        let mut analysis = Analysis { sources: vec![], occurrences: vec![], grouped: false };
        analysis.check(&plan, true)?;
        let state = GroupState::of(&plan);
        let top_n = TopN::of(&plan);
        if analysis.occurrences.is_empty() {
            return Err(refuse("a query that reads no table"));
        }
        let visible = plan.schema().fields().len();
        Ok(Self {
            plan,
            sources: analysis.sources,
            occurrences: analysis.occurrences,
            visible,
            grouped: analysis.grouped,
            state,
            top_n,
        })
    }

    /// The aggregate's group column that the query's column `column` is,
    /// through projections, aliases and filters (`None`: it is computed).
    pub fn group_column_of(&self, column: usize) -> Option<usize> {
        fn walk(plan: &LogicalPlan, index: usize) -> Option<usize> {
            match plan {
                LogicalPlan::Projection(p) => match p.expr.get(index)?.clone().unalias() {
                    Expr::Column(c) => walk(&p.input, p.input.schema().index_of_column(&c).ok()?),
                    _ => None,
                },
                LogicalPlan::SubqueryAlias(a) => walk(&a.input, index),
                LogicalPlan::Filter(f) => walk(&f.input, index),
                LogicalPlan::Aggregate(a) => (index < a.group_expr.len()).then_some(index),
                _ => None,
            }
        }
        walk(&self.plan, column)
    }

    /// Whether the view aggregates or computes window functions (its steps
    /// recompute the touched groups or partitions).
    pub fn is_grouped(&self) -> bool {
        self.grouped
    }

    /// The scans (occurrence indexes) of source `source`, in plan order.
    pub fn occurrences_of(&self, source: usize) -> Vec<usize> {
        self.occurrences.iter().enumerate().filter(|(_, s)| **s == source).map(|(i, _)| i).collect()
    }

    /// The whole query with its key columns, every scan reading `at`; with
    /// `groups` (a plan of rows `__g0, __g1, …`), the aggregate's input is
    /// restricted to those groups.
    ///
    /// # Errors
    /// Plans that do not rebuild (a bug).
    pub fn full(&self, at: &[At], groups: Option<LogicalPlan>) -> Result<Rewritten> {
        let mut rewriter = Rewriter::new(self, at, true);
        rewriter.groups = groups;
        let node = rewriter.node(&self.plan)?;
        node.finish()
    }

    /// The change of a view without aggregate: rows with key columns and weight.
    ///
    /// # Errors
    /// Plans that do not rebuild (a bug).
    pub fn change(&self, at: &[At]) -> Result<Rewritten> {
        let node = Rewriter::new(self, at, true).node(&self.plan)?;
        node.finish()
    }

    /// For a grouped view: the distinct group keys (`__g0, __g1, …`) —
    /// GROUP BY keys, or PARTITION BY keys of window functions — of the
    /// input rows a change touches. Without keys (a global aggregate, a
    /// window over everything), one row `__any` when anything changed.
    ///
    /// # Errors
    /// Plans that do not rebuild (a bug).
    pub fn touched_groups(&self, at: &[At]) -> Result<LogicalPlan> {
        let (keys, input) = grouping(&self.plan).ok_or_else(|| Error::internal("view has no aggregate"))?;
        let input = Rewriter::new(self, at, false).node(input)?;
        let builder = LogicalPlanBuilder::from(input.plan);
        let plan = if keys.is_empty() {
            builder.project(vec![lit(true).alias("__any")])?.limit(0, Some(1))?.build()?
        } else {
            let exprs: Vec<Expr> = keys.iter().enumerate().map(|(i, e)| e.clone().alias(format!("__g{i}"))).collect();
            builder.project(exprs)?.distinct()?.build()?
        };
        Ok(plan)
    }

    /// For a view with [`GroupState`]: the state of each group of the
    /// aggregate's input as read by `at`, one row per group: the group
    /// values `__g0, __g1, …`, `__rows` (input rows), and per function `j`
    /// `__n{j}` (non-NULL arguments; for COUNT(DISTINCT) the distinct ones
    /// of snapshots, 0 in a change); SUM and AVG add `__p{j}` / `__m{j}`,
    /// the sums of the arguments added and removed, MIN and MAX their
    /// extremes. Counts are weighted; reading snapshots, removals are NULL.
    /// With `groups`, only those groups.
    ///
    /// # Errors
    /// Plans that do not rebuild (a bug).
    pub fn parts(&self, at: &[At], groups: Option<LogicalPlan>) -> Result<LogicalPlan> {
        use datafusion::functions_aggregate::expr_fn::{count_distinct, max, min, sum};
        use datafusion::logical_expr::{col, when};
        let (state, plan, keys, change) = self.state_input(at, groups)?;
        let w = || col("__w");
        let mut parts = vec![sum(w()).alias("__rows")];
        for (j, aggregate) in state.aggregates.iter().enumerate() {
            let x = || col(format!("__x{j}"));
            let n = match aggregate.kind {
                // A change's distinct values are counted against the stored
                // ones ([`Self::distinct_parts`]); a snapshot's directly.
                StateKind::CountDistinct if change => lit(0i64),
                StateKind::CountDistinct => count_distinct(x()),
                _ => sum(when(x().is_not_null(), w()).otherwise(lit(0i64))?),
            };
            parts.push(n.alias(format!("__n{j}")));
            // Values are summed as queries sum them (bigint as numeric, never wrapping).
            let exact_sum = |e: Expr| crate::semantics::sum_udaf().call(vec![e]);
            let combine = match aggregate.kind {
                StateKind::Count | StateKind::CountDistinct => continue,
                StateKind::Sum | StateKind::Avg => exact_sum,
                StateKind::Min => min,
                StateKind::Max => max,
            };
            parts.push(combine(when(w().gt(lit(0i64)), x()).end()?).alias(format!("__p{j}")));
            parts.push(combine(when(w().lt(lit(0i64)), x()).end()?).alias(format!("__m{j}")));
        }
        let groups: Vec<Expr> = (0..keys).map(|i| col(format!("__g{i}"))).collect();
        Ok(LogicalPlanBuilder::from(plan).aggregate(groups, parts)?.build()?)
    }

    /// For a view with COUNT(DISTINCT) state, function `j`: per group and
    /// non-NULL argument value, the rows holding it — `__g0, __g1, …`, the
    /// value `__x`, and `__w`, the weighted count (a change's, or a
    /// snapshot's rows).
    ///
    /// # Errors
    /// Plans that do not rebuild (a bug).
    pub fn distinct_parts(&self, at: &[At], j: usize) -> Result<LogicalPlan> {
        use datafusion::functions_aggregate::expr_fn::sum;
        use datafusion::logical_expr::col;
        let (_, plan, keys, _) = self.state_input(at, None)?;
        let mut groups: Vec<Expr> = (0..keys).map(|i| col(format!("__g{i}"))).collect();
        groups.push(col(format!("__x{j}")).alias("__x"));
        Ok(LogicalPlanBuilder::from(plan)
            .filter(col(format!("__x{j}")).is_not_null())?
            .aggregate(groups, vec![sum(col("__w")).alias("__w")])?
            .build()?)
    }

    /// The aggregate's input as a step reads it, projected to the group
    /// values `__g0, __g1, …`, the weight `__w` (1 on snapshots) and each
    /// function's argument `__x{j}`; with the number of group values and
    /// whether it is a change (not snapshots only).
    fn state_input(&self, at: &[At], groups: Option<LogicalPlan>) -> Result<(&GroupState, LogicalPlan, usize, bool)> {
        let state = self.state.as_ref().ok_or_else(|| Error::internal("view keeps no group state"))?;
        let (keys, input) = grouping(&self.plan).ok_or_else(|| Error::internal("view has no aggregate"))?;
        let node = Rewriter::new(self, at, false).node(input)?;
        let mut plan = node.plan;
        if let Some(groups) = groups
            && !keys.is_empty()
        {
            plan = restrict_to_groups(plan, &keys, groups)?;
        }
        let change = node.weight.is_some();
        let weight = node.weight.map_or_else(|| lit(1i64), Expr::Column);
        let mut exprs: Vec<Expr> = keys.iter().enumerate().map(|(i, e)| e.clone().alias(format!("__g{i}"))).collect();
        exprs.push(weight.alias("__w"));
        for (j, aggregate) in state.aggregates.iter().enumerate() {
            exprs.push(aggregate.arg.clone().alias(format!("__x{j}")));
        }
        let plan = LogicalPlanBuilder::from(plan).project(exprs)?.build()?;
        Ok((state, plan, keys.len(), change))
    }

    /// For a view with [`GroupState`]: the query's columns and key columns
    /// computed from aggregate rows — `rows` holds the aggregate node's
    /// columns (group values, then function values) and a row number
    /// `__row`, which comes out where a change's weight would.
    ///
    /// # Errors
    /// Plans that do not rebuild (a bug).
    pub fn over_groups(&self, rows: Arc<dyn TableProvider>) -> Result<Rewritten> {
        let mut rewriter = Rewriter::new(self, &[], true);
        rewriter.groups_from = Some(rows);
        rewriter.node(&self.plan)?.finish()
    }

    /// For a Top-N view: the change of the window's input as rows of the
    /// partition values `__g0, __g1, …`, the input's columns as the view
    /// carries them (`__t0, __t1, …`, [`CARRIED`]) and the weight `__w`.
    ///
    /// # Errors
    /// Plans that do not rebuild (a bug).
    pub fn window_change(&self, at: &[At]) -> Result<LogicalPlan> {
        let (keys, input) = grouping(&self.plan).ok_or_else(|| Error::internal("view has no window"))?;
        let node = Rewriter::new(self, at, true).node(input)?;
        let weight = node.weight.ok_or_else(|| Error::internal("a window's input change without weights"))?;
        // The carried columns are the input's columns as a snapshot reads
        // them: the same columns of the change, by name, in that order.
        let snapshots: Vec<At> = self.occurrences.iter().map(|_| At::Snapshot(0)).collect();
        let reference = Rewriter::new(self, &snapshots, true).node(input)?.plan;
        let mut exprs: Vec<Expr> = keys.iter().enumerate().map(|(i, e)| e.clone().alias(format!("__g{i}"))).collect();
        for i in 0..reference.schema().fields().len() {
            let column = output_column(&reference, i);
            node.plan.schema().index_of_column(&column)?;
            exprs.push(Expr::Column(column).alias(format!("{CARRIED}{i}")));
        }
        exprs.push(Expr::Column(weight).alias("__w"));
        Ok(LogicalPlanBuilder::from(node.plan).project(exprs)?.build()?)
    }

    /// For a Top-N view: whether the change of the window's input, read
    /// from any one scan, has the carried columns' layout (so stored rows
    /// and added rows can be ranked together).
    ///
    /// # Errors
    /// Plans that do not rebuild (a bug).
    pub fn window_change_fits(&self) -> Result<bool> {
        use datafusion::arrow::datatypes::{Field, Schema};
        let (fields, _) = self.carried_layout()?;
        let groups = self.group_keys();
        for changed in 0..self.occurrences.len() {
            let at: Vec<At> = (0..self.occurrences.len())
                .map(|i| {
                    if i != changed {
                        return Ok(At::Snapshot(1));
                    }
                    let schema = self.sources[self.occurrences[i]].table.schema();
                    let mut columns: Vec<Field> = schema.fields().iter().map(|f| f.as_ref().clone()).collect();
                    columns.push(Field::new(WEIGHT, DataType::Int64, false));
                    let schema = Arc::new(Schema::new(columns));
                    let change: Arc<dyn TableProvider> = Arc::new(MemTable::try_new(schema, vec![vec![]])?);
                    Ok(At::Delta { change, batches: Arc::new(vec![]), from: 1, to: 2 })
                })
                .collect::<Result<_>>()?;
            let Ok(plan) = self.window_change(&at) else { return Ok(false) };
            let schema = plan.schema();
            let fits = schema.fields().len() == groups + fields.len() + 1
                && fields.iter().enumerate().all(|(i, f)| schema.field(groups + i).data_type() == f.data_type());
            if !fits {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// For a Top-N view: the query's rows (with keys and carried columns)
    /// computed from `rows`, candidates of the window's input in the
    /// carried layout, instead of the sources.
    ///
    /// # Errors
    /// Plans that do not rebuild (a bug).
    pub fn over_candidates(&self, rows: Arc<dyn TableProvider>) -> Result<Rewritten> {
        let at: Vec<At> = self.occurrences.iter().map(|_| At::Snapshot(0)).collect();
        let mut rewriter = Rewriter::new(self, &at, true);
        rewriter.window_input_from = Some(rows);
        rewriter.node(&self.plan)?.finish()
    }

    /// For a Top-N view: the window input's rows ranked within their
    /// partitions — the partition values `__g0, __g1, …`, the carried
    /// columns `__t0, __t1, …` and the row's place `__rn` (from 1) — with
    /// `limit`, only the first `limit` of each. The rows come from the
    /// sources as `at` reads them (with `groups`, of those partitions only),
    /// or with `candidates`, from those rows in the carried layout.
    ///
    /// # Errors
    /// Plans that do not rebuild (a bug).
    pub fn ranked(
        &self,
        at: &[At],
        groups: Option<LogicalPlan>,
        candidates: Option<Arc<dyn TableProvider>>,
        limit: Option<u64>,
    ) -> Result<LogicalPlan> {
        let window = top_window(&self.plan).ok_or_else(|| Error::internal("a Top-N view without its window"))?;
        let mut rewriter = Rewriter::new(self, at, true);
        rewriter.groups = groups;
        rewriter.window_input_from = candidates;
        let node = rewriter.window(window)?;
        let width = node.plan.schema().fields().len();
        let mut exprs: Vec<Expr> = partition_by(window)
            .into_iter()
            .enumerate()
            .map(|(i, e)| match e {
                Expr::Column(c) => Expr::Column(c).alias(format!("__g{i}")),
                _ => Expr::Column(Column::from_name(format!("__p{i}"))).alias(format!("__g{i}")),
            })
            .collect();
        exprs.extend(
            node.carried.iter().enumerate().map(|(i, c)| Expr::Column(c.clone()).alias(format!("{CARRIED}{i}"))),
        );
        exprs.push(Expr::Column(output_column(&node.plan, width - 1)).alias("__rn"));
        let mut builder = LogicalPlanBuilder::from(node.plan).project(exprs)?;
        if let Some(limit) = limit {
            builder = builder.filter(Expr::Column(Column::from_name("__rn")).lt_eq(lit(limit)))?;
        }
        Ok(builder.build()?)
    }

    /// For a Top-N view: the carried columns' fields, and which of them are
    /// the window input's key (a row's identity).
    ///
    /// # Errors
    /// Plans that do not rebuild (a bug).
    pub fn carried_layout(&self) -> Result<(Vec<datafusion::arrow::datatypes::Field>, Vec<usize>)> {
        let at: Vec<At> = self.occurrences.iter().map(|_| At::Snapshot(0)).collect();
        let mut rewriter = Rewriter::new(self, &at, true);
        let node = rewriter.node(&self.plan)?;
        let keys = rewriter.carried_keys.clone();
        let rewritten = node.finish()?;
        let schema = rewritten.plan.schema();
        let fields = rewritten
            .carried
            .iter()
            .enumerate()
            .map(|(n, &i)| {
                datafusion::arrow::datatypes::Field::new(
                    format!("{CARRIED}{n}"),
                    schema.field(i).data_type().clone(),
                    true,
                )
            })
            .collect();
        Ok((fields, keys))
    }

    /// The number of group (or partition) keys; they come first in the view's key.
    pub fn group_keys(&self) -> usize {
        grouping(&self.plan).map_or(0, |(keys, _)| keys.len())
    }
}

/// The group keys and input of the aggregate or window of the top chain.
pub(crate) fn grouping(plan: &LogicalPlan) -> Option<(Vec<Expr>, &LogicalPlan)> {
    match plan {
        LogicalPlan::Aggregate(a) => Some((a.group_expr.clone(), &a.input)),
        LogicalPlan::Window(w) => Some((partition_by(w), &w.input)),
        LogicalPlan::Projection(p) => grouping(&p.input),
        LogicalPlan::Filter(f) => grouping(&f.input),
        LogicalPlan::SubqueryAlias(a) => grouping(&a.input),
        _ => None,
    }
}

/// The window of the top chain.
fn top_window(plan: &LogicalPlan) -> Option<&Window> {
    match plan {
        LogicalPlan::Window(w) => Some(w),
        LogicalPlan::Projection(p) => top_window(&p.input),
        LogicalPlan::Filter(f) => top_window(&f.input),
        LogicalPlan::SubqueryAlias(a) => top_window(&a.input),
        _ => None,
    }
}

/// The PARTITION BY of a window node's functions (checked equal by the analysis).
fn partition_by(window: &Window) -> Vec<Expr> {
    window
        .window_expr
        .first()
        .and_then(|e| match e.clone().unalias() {
            Expr::WindowFunction(f) => Some(f.params.partition_by.clone()),
            _ => None,
        })
        .unwrap_or_default()
}

struct Analysis {
    sources: Vec<Source>,
    occurrences: Vec<usize>,
    grouped: bool,
}

impl Analysis {
    /// `top`: still in the top chain (no join, union or aggregate above).
    fn check(&mut self, plan: &LogicalPlan, top: bool) -> Result<()> {
        match plan {
            LogicalPlan::Projection(p) => self.check(&p.input, top),
            LogicalPlan::Filter(f) => self.check(&f.input, top),
            LogicalPlan::SubqueryAlias(a) => self.check(&a.input, top),
            LogicalPlan::Aggregate(a) => {
                if !top {
                    return Err(refuse("an aggregate below a join, a UNION or another aggregate"));
                }
                if a.group_expr.iter().any(|e| matches!(e, Expr::GroupingSet(_))) {
                    return Err(refuse("GROUPING SETS, CUBE or ROLLUP"));
                }
                self.grouped = true;
                self.check(&a.input, false)
            }
            LogicalPlan::Window(w) => {
                if !top {
                    return Err(refuse("a window function below a join, a UNION or an aggregate"));
                }
                let partitions: Vec<Option<Vec<Expr>>> = w
                    .window_expr
                    .iter()
                    .map(|e| match e.clone().unalias() {
                        Expr::WindowFunction(f) => Some(f.params.partition_by.clone()),
                        _ => None,
                    })
                    .collect();
                if partitions.iter().any(Option::is_none) || partitions.windows(2).any(|p| p[0] != p[1]) {
                    return Err(refuse("window functions with different PARTITION BY in one query"));
                }
                self.grouped = true;
                self.check(&w.input, false)
            }
            LogicalPlan::Join(j) => {
                match j.join_type {
                    JoinType::Inner
                    | JoinType::Left
                    | JoinType::Right
                    | JoinType::Full
                    | JoinType::LeftSemi
                    | JoinType::RightSemi => {}
                    JoinType::LeftAnti | JoinType::RightAnti if !j.null_aware => {}
                    JoinType::LeftAnti | JoinType::RightAnti => {
                        return Err(refuse("NOT IN (subquery) (use NOT EXISTS)"));
                    }
                    JoinType::LeftMark | JoinType::RightMark => {
                        return Err(refuse("an IN / EXISTS subquery under OR or in the select list"));
                    }
                }
                self.check(&j.left, false)?;
                self.check(&j.right, false)
            }
            LogicalPlan::Union(u) => {
                for input in &u.inputs {
                    self.check(input, false)?;
                }
                Ok(())
            }
            LogicalPlan::TableScan(scan) => self.scan(scan),
            LogicalPlan::Sort(_) => Err(refuse("ORDER BY with LIMIT (use ROW_NUMBER() … <= N for a top-N)")),
            LogicalPlan::Limit(_) => Err(refuse("LIMIT / OFFSET")),
            LogicalPlan::Distinct(_) => Err(refuse("DISTINCT ON")),
            LogicalPlan::EmptyRelation(_) | LogicalPlan::Values(_) => {
                Err(refuse("a query over VALUES or without a FROM table"))
            }
            LogicalPlan::Unnest(_) => Err(refuse("UNNEST")),
            LogicalPlan::RecursiveQuery(_) => Err(refuse("WITH RECURSIVE")),
            other => Err(refuse(format!("the plan node {}", other.display()))),
        }
    }

    fn scan(&mut self, scan: &TableScan) -> Result<()> {
        if scan.fetch.is_some() {
            return Err(refuse("LIMIT"));
        }
        let provider = source_as_provider(&scan.source)?;
        let name = RelationName {
            schema: scan.table_name.schema().unwrap_or(DEFAULT_SCHEMA).to_string(),
            name: scan.table_name.table().to_string(),
        };
        let source = if let Some(table) = provider.downcast_ref::<DynamicTable>() {
            Source { name, table: Arc::new(DynamicTable::shared(Arc::clone(table.storage()))), view: None }
        } else if let Some(view) = provider.downcast_ref::<MaterializedView>() {
            let view = view.arc().ok_or_else(|| Error::internal("materialized view is being dropped"))?;
            Source { name, table: Arc::clone(&view.storage), view: Some(view) }
        } else {
            return Err(refuse(format!(
                "reading {} (only tables and materialized views can be sources)",
                scan.table_name
            )));
        };
        let index = match self.sources.iter().position(|s| Arc::ptr_eq(s.table.storage(), source.table.storage())) {
            Some(i) => i,
            None => {
                self.sources.push(source);
                self.sources.len() - 1
            }
        };
        self.occurrences.push(index);
        Ok(())
    }
}

/// A rewritten subplan and the columns (of its output) that are the keys and the weight.
struct Node {
    plan: LogicalPlan,
    keys: Vec<Column>,
    weight: Option<Column>,
    /// Output columns that are columns of the change, unchanged: their
    /// index in the change's batches.
    from_change: Vec<(Column, usize)>,
    /// A Top-N view's window input columns, carried up to the output.
    carried: Vec<Column>,
}

impl Node {
    fn new(plan: LogicalPlan, keys: Vec<Column>, weight: Option<Column>) -> Self {
        Self { plan, keys, weight, from_change: vec![], carried: vec![] }
    }
}

impl Node {
    fn finish(self) -> Result<Rewritten> {
        let schema = self.plan.schema();
        let keys = self.keys.iter().map(|k| schema.index_of_column(k)).collect::<datafusion::error::Result<_>>()?;
        let weight = self.weight.as_ref().map(|w| schema.index_of_column(w)).transpose()?;
        let carried =
            self.carried.iter().map(|c| schema.index_of_column(c)).collect::<datafusion::error::Result<_>>()?;
        Ok(Rewritten { plan: self.plan, keys, weight, carried })
    }
}

/// The output column `i` of `plan`, as a reference.
fn output_column(plan: &LogicalPlan, i: usize) -> Column {
    let (qualifier, field) = plan.schema().qualified_field(i);
    Column::new(qualifier.cloned(), field.name())
}

/// `input` without the rows whose `keys` are not in `groups` (`__g0, __g1, …`).
fn restrict_to_groups(input: LogicalPlan, keys: &[Expr], groups: LogicalPlan) -> Result<LogicalPlan> {
    let columns: Vec<Expr> = (0..keys.len()).map(|i| Expr::Column(Column::from_name(format!("__g{i}")))).collect();
    let mut plan = LogicalPlanBuilder::from(input)
        .join_with_expr_keys(groups, JoinType::LeftSemi, (keys.to_vec(), columns), None)?
        .build()?;
    if let LogicalPlan::Join(join) = &mut plan {
        // A NULL group is a group too.
        join.null_equality = NullEquality::NullEqualsNull;
    }
    Ok(plan)
}

/// Which input of a join holds the change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    Left,
    Right,
}

/// Rebuilds a view's plan for one evaluation.
struct Rewriter<'a> {
    view: &'a ViewPlan,
    at: &'a [At],
    reading: Reading,
    /// Carry key columns up.
    keys: bool,
    /// Restrict the aggregate's input to these groups.
    groups: Option<LogicalPlan>,
    /// Read the aggregate's rows from here instead of computing them.
    groups_from: Option<Arc<dyn TableProvider>>,
    /// Read the window's input rows from here (a Top-N view's candidates).
    window_input_from: Option<Arc<dyn TableProvider>>,
    /// Where the window input's keys are among the carried columns.
    carried_keys: Vec<usize>,
    /// The rows of the change, once its scan is rewritten.
    change: Option<Arc<Vec<datafusion::arrow::array::RecordBatch>>>,
    /// The next scan's occurrence index.
    occurrence: usize,
    extra: usize,
}

impl<'a> Rewriter<'a> {
    fn new(view: &'a ViewPlan, at: &'a [At], keys: bool) -> Self {
        Self {
            view,
            at,
            reading: Reading::Change,
            keys,
            groups: None,
            groups_from: None,
            window_input_from: None,
            carried_keys: Vec::new(),
            change: None,
            occurrence: 0,
            extra: 0,
        }
    }

    fn fresh(&mut self, prefix: &str) -> String {
        self.extra += 1;
        format!("{prefix}{}", self.extra)
    }

    fn node(&mut self, plan: &LogicalPlan) -> Result<Node> {
        match plan {
            LogicalPlan::TableScan(scan) => self.scan(scan),
            LogicalPlan::Projection(p) => {
                let child = self.node(&p.input)?;
                let mut exprs = p.expr.clone();
                let mut keys = Vec::with_capacity(child.keys.len());
                for key in &child.keys {
                    let shown = p.expr.iter().position(|e| matches!(e.clone().unalias(), Expr::Column(c) if c == *key));
                    match shown {
                        Some(i) => keys.push(output_column(plan, i)),
                        None => {
                            let name = self.fresh("__k");
                            exprs.push(Expr::Column(key.clone()).alias(&name));
                            keys.push(Column::from_name(name));
                        }
                    }
                }
                let weight = child.weight.map(|w| {
                    exprs.push(Expr::Column(w).alias(WEIGHT));
                    Column::from_name(WEIGHT)
                });
                let mut carried = Vec::with_capacity(child.carried.len());
                for (i, column) in child.carried.iter().enumerate() {
                    let name = format!("{CARRIED}{i}");
                    exprs.push(Expr::Column(column.clone()).alias(&name));
                    carried.push(Column::from_name(name));
                }
                let plan = LogicalPlan::Projection(Projection::try_new(exprs, Arc::new(child.plan))?);
                let from_change = p
                    .expr
                    .iter()
                    .enumerate()
                    .filter_map(|(i, e)| match e.clone().unalias() {
                        Expr::Column(c) => child
                            .from_change
                            .iter()
                            .find(|(k, _)| *k == c)
                            .map(|(_, index)| (output_column(&plan, i), *index)),
                        _ => None,
                    })
                    .collect();
                Ok(Node { plan, keys, weight, from_change, carried })
            }
            LogicalPlan::Filter(f) => {
                let child = self.node(&f.input)?;
                let plan = LogicalPlan::Filter(Filter::try_new(f.predicate.clone(), Arc::new(child.plan))?);
                Ok(Node {
                    plan,
                    keys: child.keys,
                    weight: child.weight,
                    from_change: child.from_change,
                    carried: child.carried,
                })
            }
            LogicalPlan::SubqueryAlias(a) => {
                let child = self.node(&a.input)?;
                let plan = LogicalPlan::SubqueryAlias(SubqueryAlias::try_new(Arc::new(child.plan), a.alias.clone())?);
                let requalify = |c: Column| Column::new(Some(a.alias.clone()), c.name);
                Ok(Node {
                    plan,
                    keys: child.keys.into_iter().map(requalify).collect(),
                    weight: child.weight.map(requalify),
                    from_change: child.from_change.into_iter().map(|(c, i)| (requalify(c), i)).collect(),
                    carried: child.carried.into_iter().map(requalify).collect(),
                })
            }
            LogicalPlan::Join(join) => self.join(plan, join),
            LogicalPlan::Union(u) => self.union(u),
            LogicalPlan::Aggregate(a) => self.aggregate(a),
            LogicalPlan::Window(w) => self.window(w),
            LogicalPlan::Sort(s) => self.node(&s.input),
            other => Err(Error::internal(format!("unexpected plan node in a view: {}", other.display()))),
        }
    }

    fn scan(&mut self, scan: &TableScan) -> Result<Node> {
        let occurrence = self.occurrence;
        self.occurrence += 1;
        let source = &self.view.sources[self.view.occurrences[occurrence]];
        let full = source.table.schema();
        let shown = scan.source.schema().fields().len();
        let mut projection = scan.projection.clone().unwrap_or_else(|| (0..shown).collect());
        let key_columns = source.key_columns();
        if self.keys {
            if key_columns.is_empty() {
                return Err(refuse(format!(
                    "reading {} outside an aggregate: it has no primary key to identify its rows",
                    source.name
                )));
            }
            for k in &key_columns {
                if !projection.contains(k) {
                    projection.push(*k);
                }
            }
        }
        let at = self.at.get(occurrence).ok_or_else(|| Error::internal("no reading given for a scan"))?;
        let (provider, weighted): (Arc<dyn TableProvider>, bool) = match at {
            At::Snapshot(0) => (Arc::new(MemTable::try_new(Arc::clone(&full), vec![vec![]])?), false),
            At::Snapshot(id) => (Arc::new(SnapshotTable::new(Arc::clone(&source.table), AsOf::Snapshot(*id))), false),
            At::Delta { from, to, .. } if self.reading != Reading::Change => {
                let id = if self.reading == Reading::Old { *from } else { *to };
                if id == 0 {
                    (Arc::new(MemTable::try_new(Arc::clone(&full), vec![vec![]])?), false)
                } else {
                    (Arc::new(SnapshotTable::new(Arc::clone(&source.table), AsOf::Snapshot(id))), false)
                }
            }
            At::Delta { change, .. } => {
                projection.push(full.fields().len());
                (Arc::clone(change), true)
            }
        };
        let mut builder =
            LogicalPlanBuilder::scan(scan.table_name.clone(), provider_as_source(provider), Some(projection.clone()))?;
        if let Some(predicate) = conjunction(scan.filters.clone()) {
            builder = builder.filter(predicate)?;
        }
        let qualified = |name: &str| Column::new(Some(scan.table_name.clone()), name);
        let keys =
            if self.keys { key_columns.iter().map(|&k| qualified(full.field(k).name())).collect() } else { vec![] };
        let mut node = Node::new(builder.build()?, keys, weighted.then(|| qualified(WEIGHT)));
        if weighted {
            node.from_change = projection
                .iter()
                .filter(|&&i| i < full.fields().len())
                .map(|&i| (qualified(full.field(i).name()), i))
                .collect();
            if let At::Delta { batches, .. } = at {
                self.change = Some(Arc::clone(batches));
            }
        }
        Ok(node)
    }

    /// Each branch gets the branch number and a slot for every branch's keys
    /// (NULL in the others), so rows of different branches never share a key.
    fn union(&mut self, u: &Union) -> Result<Node> {
        let branches = u.inputs.iter().map(|i| self.node(i)).collect::<Result<Vec<_>>>()?;
        let change = branches.iter().any(|b| b.weight.is_some());
        let id = self.fresh("__u");
        let slot_types: Vec<Vec<DataType>> = branches
            .iter()
            .map(|b| {
                b.keys
                    .iter()
                    .map(|k| b.plan.schema().field_from_column(k).map(|f| f.data_type().clone()))
                    .collect::<datafusion::error::Result<Vec<_>>>()
            })
            .collect::<datafusion::error::Result<_>>()?;
        let columns = u.schema.fields().len();
        let mut plans = Vec::with_capacity(branches.len());
        for (b, branch) in branches.into_iter().enumerate() {
            let mut exprs: Vec<Expr> = (0..columns).map(|i| Expr::Column(output_column(&branch.plan, i))).collect();
            if self.keys {
                exprs.push(lit(b as i32).alias(&id));
                for (c, types) in slot_types.iter().enumerate() {
                    for (j, data_type) in types.iter().enumerate() {
                        let name = format!("{id}_{c}_{j}");
                        exprs.push(if c == b {
                            Expr::Column(branch.keys[j].clone()).alias(name)
                        } else {
                            Expr::Literal(ScalarValue::try_from(data_type)?, None).alias(name)
                        });
                    }
                }
            }
            let mut input = branch.plan;
            if change {
                match branch.weight {
                    Some(w) => exprs.push(Expr::Column(w).alias(WEIGHT)),
                    None => {
                        // This branch does not change: it contributes no rows.
                        exprs.push(lit(0i64).alias(WEIGHT));
                        input = LogicalPlan::Filter(Filter::try_new(lit(false), Arc::new(input))?);
                    }
                }
            }
            plans.push(Arc::new(LogicalPlan::Projection(Projection::try_new(exprs, Arc::new(input))?)));
        }
        let plan = LogicalPlan::Union(Union::try_new_with_loose_types(plans)?);
        let mut keys = vec![];
        if self.keys {
            keys.push(Column::from_name(&id));
            for (c, types) in slot_types.iter().enumerate() {
                keys.extend((0..types.len()).map(|j| Column::from_name(format!("{id}_{c}_{j}"))));
            }
        }
        Ok(Node::new(plan, keys, change.then(|| Column::from_name(WEIGHT))))
    }

    /// A join. When the change is on an input whose rows the output keeps
    /// (either input of an inner join, the left of a LEFT or semi/anti
    /// join, …), the change of the join is the change joined with the other
    /// input. Otherwise (the NULL-extended side of an outer join, the
    /// filtering side of a semi or anti join) a row's output depends on all
    /// its matches, so the join is evaluated again for just the join keys
    /// the change touches, before (weight −1) and after (+1).
    fn join(&mut self, plan: &LogicalPlan, join: &Join) -> Result<Node> {
        let left_start = (self.occurrence, self.extra);
        let left = self.node(&join.left)?;
        let right_start = (self.occurrence, self.extra);
        let right = self.node(&join.right)?;
        let end_occurrence = self.occurrence;
        let output_keys = |left: &Node, right: &Node| match join.join_type {
            JoinType::LeftSemi | JoinType::LeftAnti => left.keys.clone(),
            JoinType::RightSemi | JoinType::RightAnti => right.keys.clone(),
            _ => left.keys.iter().chain(&right.keys).cloned().collect(),
        };
        let changed = match (&left.weight, &right.weight) {
            (Some(_), _) => Some(Side::Left),
            (_, Some(_)) => Some(Side::Right),
            _ => None,
        };
        let direct = matches!(
            (join.join_type, changed),
            (_, None)
                | (JoinType::Inner, _)
                | (JoinType::Left | JoinType::LeftSemi | JoinType::LeftAnti, Some(Side::Left))
                | (JoinType::Right | JoinType::RightSemi | JoinType::RightAnti, Some(Side::Right))
        );
        if direct {
            let keys = output_keys(&left, &right);
            let weight = match join.join_type {
                JoinType::LeftSemi | JoinType::LeftAnti => left.weight.clone(),
                JoinType::RightSemi | JoinType::RightAnti => right.weight.clone(),
                _ => left.weight.clone().or(right.weight.clone()),
            };
            let (left_plan, right_plan) = match changed {
                Some(Side::Left) => {
                    let bounded = self.bound_by_change(right.plan, join, &left, Side::Left)?;
                    (left.plan, bounded)
                }
                Some(Side::Right) => (self.bound_by_change(left.plan, join, &right, Side::Right)?, right.plan),
                None => (left.plan, right.plan),
            };
            let rebuilt = plan.with_new_exprs(plan.expressions(), vec![left_plan, right_plan])?;
            let from_change = left.from_change.into_iter().chain(right.from_change).collect();
            return Ok(Node { plan: rebuilt, keys, weight, from_change, carried: vec![] });
        }
        let side = changed.unwrap_or(Side::Left);
        let (changed_node, start) = match side {
            Side::Left => (&left, left_start),
            Side::Right => (&right, right_start),
        };
        // The join keys the change touches.
        let on: Vec<Expr> =
            join.on.iter().map(|(l, r)| if side == Side::Left { l.clone() } else { r.clone() }).collect();
        let touched = if on.is_empty() {
            None
        } else {
            let exprs: Vec<Expr> = on.iter().enumerate().map(|(i, e)| e.clone().alias(format!("__j{i}"))).collect();
            Some(LogicalPlanBuilder::from(changed_node.plan.clone()).project(exprs)?.distinct()?.build()?)
        };
        let restrict = |input: LogicalPlan, exprs: Vec<Expr>| -> Result<LogicalPlan> {
            let Some(touched) = &touched else { return Ok(input) };
            let columns: Vec<Expr> =
                (0..exprs.len()).map(|i| Expr::Column(Column::from_name(format!("__j{i}")))).collect();
            Ok(LogicalPlanBuilder::from(input)
                .join_with_expr_keys(touched.clone(), JoinType::LeftSemi, (exprs, columns), None)?
                .build()?)
        };
        let left_on: Vec<Expr> = join.on.iter().map(|(l, _)| l.clone()).collect();
        let right_on: Vec<Expr> = join.on.iter().map(|(_, r)| r.clone()).collect();
        let mut branches = Vec::new();
        let mut keys = Vec::new();
        let mut extra = self.extra;
        for (reading, weight) in [(Reading::New, 1i64), (Reading::Old, -1i64)] {
            let saved = self.reading;
            (self.occurrence, self.extra) = start;
            self.reading = reading;
            let version = match side {
                Side::Left => self.node(&join.left),
                Side::Right => self.node(&join.right),
            };
            self.reading = saved;
            let version = version?;
            extra = extra.max(self.extra);
            let (l, r) = match side {
                Side::Left => (version, Node::new(right.plan.clone(), right.keys.clone(), None)),
                Side::Right => (Node::new(left.plan.clone(), left.keys.clone(), None), version),
            };
            keys = output_keys(&l, &r);
            let joined = plan.with_new_exprs(
                plan.expressions(),
                vec![restrict(l.plan, left_on.clone())?, restrict(r.plan, right_on.clone())?],
            )?;
            let mut exprs: Vec<Expr> =
                (0..joined.schema().fields().len()).map(|i| Expr::Column(output_column(&joined, i))).collect();
            exprs.push(lit(weight).alias(WEIGHT));
            branches.push(Arc::new(LogicalPlan::Projection(Projection::try_new(exprs, Arc::new(joined))?)));
        }
        if join.join_type == JoinType::Full && !on.is_empty() {
            // Changed rows with a NULL join key match nothing: they appear NULL-extended.
            let any_null = on.iter().map(|e| e.clone().is_null()).reduce(Expr::or).unwrap_or(lit(false));
            let nulls = LogicalPlan::Filter(Filter::try_new(any_null, Arc::new(changed_node.plan.clone()))?);
            let (l, r) = match side {
                Side::Left => (nulls, LogicalPlan::Filter(Filter::try_new(lit(false), Arc::new(right.plan.clone()))?)),
                Side::Right => (LogicalPlan::Filter(Filter::try_new(lit(false), Arc::new(left.plan.clone()))?), nulls),
            };
            let joined = plan.with_new_exprs(plan.expressions(), vec![l, r])?;
            let weight = changed_node.weight.clone().ok_or_else(|| Error::internal("change without weight"))?;
            let weight_index = joined.schema().index_of_column(&weight)?;
            let mut exprs: Vec<Expr> = (0..joined.schema().fields().len())
                .filter(|&i| i != weight_index)
                .map(|i| Expr::Column(output_column(&joined, i)))
                .collect();
            exprs.push(Expr::Column(weight).alias(WEIGHT));
            branches.push(Arc::new(LogicalPlan::Projection(Projection::try_new(exprs, Arc::new(joined))?)));
        }
        self.occurrence = end_occurrence;
        self.extra = extra;
        // A union drops the qualifiers the join's columns had: put them back.
        let shape = Arc::clone(branches[0].schema());
        let union = LogicalPlan::Union(Union::try_new_with_loose_types(branches)?);
        let exprs: Vec<Expr> = (0..shape.fields().len())
            .map(|i| {
                let (qualifier, field) = shape.qualified_field(i);
                Expr::Column(output_column(&union, i)).alias_qualified(qualifier.cloned(), field.name())
            })
            .collect();
        let plan = LogicalPlan::Projection(Projection::try_new(exprs, Arc::new(union))?);
        Ok(Node::new(plan, keys, Some(Column::from_name(WEIGHT))))
    }

    /// `other` (the input of `join` that did not change) restricted to the
    /// range of join keys the change has: where the join key is a table's
    /// first key column, the scan reads only the row groups in that range,
    /// not the whole table.
    fn bound_by_change(&self, other: LogicalPlan, join: &Join, changed: &Node, side: Side) -> Result<LogicalPlan> {
        use datafusion::functions_aggregate::min_max::{MaxAccumulator, MinAccumulator};
        use datafusion::logical_expr::Accumulator;
        let Some(batches) = &self.change else { return Ok(other) };
        if join.null_equality == NullEquality::NullEqualsNull {
            // NULL keys match: a range would drop them.
            return Ok(other);
        }
        let mut bounds = Vec::new();
        for (l, r) in &join.on {
            let (mine, theirs) = if side == Side::Left { (l, r) } else { (r, l) };
            let Expr::Column(column) = mine else { continue };
            let Some((_, index)) = changed.from_change.iter().find(|(c, _)| c == column) else { continue };
            let Some(first) = batches.first() else { continue };
            let data_type = first.column(*index).data_type();
            let (mut min, mut max) = (MinAccumulator::try_new(data_type)?, MaxAccumulator::try_new(data_type)?);
            for batch in batches.iter() {
                min.update_batch(&[Arc::clone(batch.column(*index))])?;
                max.update_batch(&[Arc::clone(batch.column(*index))])?;
            }
            let (low, high) = (min.evaluate()?, max.evaluate()?);
            if !low.is_null() && !high.is_null() {
                let literal = |v: ScalarValue| Expr::Literal(v, None);
                bounds.push(theirs.clone().gt_eq(literal(low)));
                bounds.push(theirs.clone().lt_eq(literal(high)));
            }
        }
        match conjunction(bounds) {
            Some(predicate) => Ok(LogicalPlan::Filter(Filter::try_new(predicate, Arc::new(other))?)),
            None => Ok(other),
        }
    }

    /// Window functions over partitions: the input with its keys, restricted
    /// to the touched partitions; the view's key is the partition keys, then
    /// the input's keys.
    fn window(&mut self, w: &Window) -> Result<Node> {
        let input = self.node(&w.input)?;
        if input.weight.is_some() {
            return Err(Error::internal("a window's input was rewritten as a change"));
        }
        let partition = partition_by(w);
        let mut input_plan = input.plan;
        if let Some(rows) = self.window_input_from.take() {
            // The candidates, named and qualified as the input's columns.
            let scan = LogicalPlanBuilder::scan("__candidates", provider_as_source(rows), None)?.build()?;
            let exprs: Vec<Expr> = (0..input_plan.schema().fields().len())
                .map(|i| {
                    let (qualifier, field) = input_plan.schema().qualified_field(i);
                    Expr::Column(output_column(&scan, i)).alias_qualified(qualifier.cloned(), field.name())
                })
                .collect();
            input_plan = LogicalPlan::Projection(Projection::try_new(exprs, Arc::new(scan))?);
        }
        let carried: Vec<Column> = if self.view.top_n.is_some() {
            self.carried_keys = input
                .keys
                .iter()
                .map(|k| input_plan.schema().index_of_column(k))
                .collect::<datafusion::error::Result<_>>()?;
            (0..input_plan.schema().fields().len()).map(|i| output_column(&input_plan, i)).collect()
        } else {
            vec![]
        };
        if let Some(groups) = self.groups.take()
            && !partition.is_empty()
        {
            input_plan = restrict_to_groups(input_plan, &partition, groups)?;
        }
        let mut exprs: Vec<Expr> =
            (0..input_plan.schema().fields().len()).map(|i| Expr::Column(output_column(&input_plan, i))).collect();
        let mut keys: Vec<Column> = Vec::with_capacity(partition.len() + input.keys.len());
        for (i, expr) in partition.iter().enumerate() {
            match expr {
                // A Top-N view's key uses a partition column itself, so the
                // key can be the visible columns and the rows of a
                // partition are found by key prefix.
                Expr::Column(c) if self.view.top_n.is_some() => {
                    if !keys.contains(c) {
                        keys.push(c.clone());
                    }
                }
                _ => {
                    let name = format!("__p{i}");
                    exprs.push(expr.clone().alias(&name));
                    keys.push(Column::from_name(name));
                }
            }
        }
        if self.view.top_n.is_some() {
            for key in input.keys {
                if !keys.contains(&key) {
                    keys.push(key);
                }
            }
        } else {
            keys.extend(input.keys);
        }
        let projected = LogicalPlan::Projection(Projection::try_new(exprs, Arc::new(input_plan))?);
        let plan = LogicalPlan::Window(Window::try_new(w.window_expr.clone(), Arc::new(projected))?);
        let mut node = Node::new(plan, keys, None);
        node.carried = carried;
        Ok(node)
    }

    fn aggregate(&mut self, a: &Aggregate) -> Result<Node> {
        if let Some(rows) = self.groups_from.take() {
            // The aggregate's rows, named and qualified as the aggregate names them.
            let scan = LogicalPlanBuilder::scan("__groups", provider_as_source(rows), None)?.build()?;
            let mut exprs: Vec<Expr> = (0..a.schema.fields().len())
                .map(|i| {
                    let (qualifier, field) = a.schema.qualified_field(i);
                    Expr::Column(output_column(&scan, i)).alias_qualified(qualifier.cloned(), field.name())
                })
                .collect();
            exprs.push(Expr::Column(Column::new(Some("__groups"), "__row")).alias("__row"));
            let plan = LogicalPlan::Projection(Projection::try_new(exprs, Arc::new(scan))?);
            let keys = (0..a.group_expr.len()).map(|i| output_column(&plan, i)).collect();
            return Ok(Node::new(plan, keys, Some(Column::from_name("__row"))));
        }
        let keys = std::mem::replace(&mut self.keys, false);
        let input = self.node(&a.input)?;
        self.keys = keys;
        if input.weight.is_some() {
            return Err(Error::internal("an aggregate's input was rewritten as a change"));
        }
        let mut input = input.plan;
        if let Some(groups) = self.groups.take()
            && !a.group_expr.is_empty()
        {
            input = restrict_to_groups(input, &a.group_expr, groups)?;
        }
        let plan =
            LogicalPlan::Aggregate(Aggregate::try_new(Arc::new(input), a.group_expr.clone(), a.aggr_expr.clone())?);
        let keys = (0..a.group_expr.len()).map(|i| output_column(&plan, i)).collect();
        Ok(Node::new(plan, keys, None))
    }
}
