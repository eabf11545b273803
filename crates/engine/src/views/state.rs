//! Per-group aggregate state of a view ([`GroupState`]), kept in hidden
//! columns of the view's own table, after the visible columns and the key:
//!
//! ```text
//!   __rows            input rows of the group (the group exists while > 0)
//!   __n{j}            non-NULL arguments of function j (COUNT(DISTINCT): distinct ones)
//!   __v{j}            SUM / AVG: their sum; MIN / MAX: the extreme (not for COUNT)
//! ```
//!
//! A step aggregates the change by group into weighted parts
//! ([`ViewPlan::parts`]), looks up the touched groups' rows by key, and
//! adds the parts to the state. A MIN (MAX) whose current value is
//! retracted cannot be updated from the change alone: those groups are
//! recomputed from the sources, restricted to them. The state is written in
//! the same commit as the rows it produced, so it is exactly as durable as
//! the view; the table keeps no changelog for updates of state alone.

use std::sync::Arc;

use datafusion::arrow::array::{ArrayRef, AsArray, Int64Array, RecordBatch};
use datafusion::arrow::datatypes::{DataType, Field};
use datafusion::common::ScalarValue;

use super::plan::{At, GroupState, StateKind, ViewPlan};
use crate::error::{Error, Result};

/// The hidden column counting a group's input rows.
pub const ROWS: &str = "__rows";

/// The hidden columns holding the state of `plan`'s groups.
///
/// # Errors
/// Plans that do not rebuild (a bug).
pub fn state_fields(plan: &ViewPlan) -> Result<Vec<Field>> {
    let state = plan.state.as_ref().ok_or_else(|| Error::internal("view keeps no group state"))?;
    let at: Vec<At> = plan.occurrences.iter().map(|_| At::Snapshot(0)).collect();
    let parts = plan.parts(&at, None)?;
    let schema = parts.schema();
    let mut fields = vec![Field::new(ROWS, DataType::Int64, false)];
    for (j, aggregate) in state.aggregates.iter().enumerate() {
        fields.push(Field::new(format!("__n{j}"), DataType::Int64, false));
        if !aggregate.kind.counts() {
            let value = schema.field_with_unqualified_name(&format!("__p{j}"))?.data_type().clone();
            fields.push(Field::new(format!("__v{j}"), value, true));
        }
    }
    Ok(fields)
}

/// The state of one group.
#[derive(Debug, Clone)]
pub struct Group {
    /// Input rows.
    pub rows: i64,
    /// Per function: non-NULL arguments.
    pub n: Vec<i64>,
    /// Per function: the sum or extreme (NULL for COUNT, or without arguments).
    pub v: Vec<ScalarValue>,
}

/// A change to one group, from [`ViewPlan::parts`] of a change.
#[derive(Debug, Clone)]
pub struct Delta {
    /// The group's values (the aggregate's group columns).
    pub values: Vec<ScalarValue>,
    rows: i64,
    n: Vec<i64>,
    /// Per function: sum or extreme of the arguments added, and of those removed.
    plus: Vec<ScalarValue>,
    minus: Vec<ScalarValue>,
}

/// Where the columns of a parts batch are.
struct PartsColumns {
    groups: usize,
    rows: usize,
    n: Vec<usize>,
    plus: Vec<Option<usize>>,
    minus: Vec<Option<usize>>,
}

impl PartsColumns {
    fn of(state: &GroupState, batch: &RecordBatch) -> Result<Self> {
        let schema = batch.schema();
        let find = |name: &str| schema.index_of(name).map_err(Error::from);
        let rows = find(ROWS)?;
        let mut n = Vec::new();
        let mut plus = Vec::new();
        let mut minus = Vec::new();
        for (j, aggregate) in state.aggregates.iter().enumerate() {
            n.push(find(&format!("__n{j}"))?);
            let counted = aggregate.kind.counts();
            plus.push(if counted { None } else { Some(find(&format!("__p{j}"))?) });
            minus.push(if counted { None } else { Some(find(&format!("__m{j}"))?) });
        }
        // The group columns come first.
        Ok(Self { groups: rows, rows, n, plus, minus })
    }
}

fn count_at(batch: &RecordBatch, column: usize, row: usize) -> Result<i64> {
    let value = ScalarValue::try_from_array(batch.column(column), row)?;
    Ok(match value.cast_to(&DataType::Int64)? {
        ScalarValue::Int64(v) => v.unwrap_or(0),
        _ => 0,
    })
}

/// The rows of a parts batch as deltas, in row order.
///
/// # Errors
/// A batch that is not the parts of `state` (a bug).
pub fn deltas(state: &GroupState, batch: &RecordBatch) -> Result<Vec<Delta>> {
    let columns = PartsColumns::of(state, batch)?;
    let scalar = |c: Option<usize>, row: usize| -> Result<ScalarValue> {
        match c {
            Some(c) => Ok(ScalarValue::try_from_array(batch.column(c), row)?),
            None => Ok(ScalarValue::Null),
        }
    };
    let mut out = Vec::with_capacity(batch.num_rows());
    for row in 0..batch.num_rows() {
        let values = (0..columns.groups)
            .map(|c| ScalarValue::try_from_array(batch.column(c), row))
            .collect::<datafusion::error::Result<Vec<_>>>()?;
        out.push(Delta {
            values,
            rows: count_at(batch, columns.rows, row)?,
            n: columns.n.iter().map(|&c| count_at(batch, c, row)).collect::<Result<_>>()?,
            plus: columns.plus.iter().map(|&c| scalar(c, row)).collect::<Result<_>>()?,
            minus: columns.minus.iter().map(|&c| scalar(c, row)).collect::<Result<_>>()?,
        });
    }
    Ok(out)
}

impl Delta {
    /// Adds another change of the same group (a self join has one per scan).
    pub fn merge(&mut self, state: &GroupState, other: Delta) -> Result<()> {
        self.rows += other.rows;
        for (j, aggregate) in state.aggregates.iter().enumerate() {
            self.n[j] += other.n[j];
            let plus = std::mem::replace(&mut self.plus[j], ScalarValue::Null);
            self.plus[j] = combine(aggregate.kind, plus, other.plus[j].clone())?;
            let minus = std::mem::replace(&mut self.minus[j], ScalarValue::Null);
            self.minus[j] = combine(aggregate.kind, minus, other.minus[j].clone())?;
        }
        Ok(())
    }

    /// Adds to COUNT(DISTINCT) function `j` the values that came (+1) or
    /// went (−1), as counted against their stored rows.
    pub fn add_distinct(&mut self, j: usize, transitions: i64) {
        self.n[j] += transitions;
    }

    /// The net number of input rows the change adds to the group.
    pub fn input_rows(&self) -> i64 {
        self.rows
    }

    /// The state of a group read from its sources (a snapshot: nothing removed).
    pub fn into_group(self) -> Group {
        Group { rows: self.rows, n: self.n, v: self.plus }
    }

    /// `old` (none: a new group) after this change; `None` when the change
    /// retracts a current MIN or MAX and the group must be recomputed.
    ///
    /// # Errors
    /// Values of mismatched types (a bug).
    pub fn apply(&self, state: &GroupState, old: Option<&Group>) -> Result<Option<Group>> {
        let rows = old.map_or(0, |g| g.rows) + self.rows;
        let mut n = Vec::with_capacity(self.n.len());
        let mut v = Vec::with_capacity(self.n.len());
        for (j, aggregate) in state.aggregates.iter().enumerate() {
            let count = old.map_or(0, |g| g.n[j]) + self.n[j];
            let current = old.map_or(ScalarValue::Null, |g| g.v[j].clone());
            let value = match aggregate.kind {
                StateKind::Count | StateKind::CountDistinct => ScalarValue::Null,
                StateKind::Sum | StateKind::Avg => {
                    let added = combine(aggregate.kind, current, self.plus[j].clone())?;
                    subtract(added, &self.minus[j])?
                }
                StateKind::Min | StateKind::Max => {
                    if !self.minus[j].is_null() {
                        let retracts_extreme = match self.minus[j].partial_cmp(&current) {
                            _ if current.is_null() => true,
                            Some(std::cmp::Ordering::Equal) => true,
                            Some(std::cmp::Ordering::Less) => aggregate.kind == StateKind::Min,
                            Some(std::cmp::Ordering::Greater) => aggregate.kind == StateKind::Max,
                            None => true,
                        };
                        if retracts_extreme {
                            return Ok(None);
                        }
                    }
                    combine(aggregate.kind, current, self.plus[j].clone())?
                }
            };
            if count < 0 {
                return Ok(None);
            }
            n.push(count);
            v.push(if count == 0 { ScalarValue::Null } else { value });
        }
        if rows < 0 {
            return Ok(None);
        }
        Ok(Some(Group { rows, n, v }))
    }
}

/// Two values of one function's state combined: added, or the extreme; NULL is nothing.
fn combine(kind: StateKind, a: ScalarValue, b: ScalarValue) -> Result<ScalarValue> {
    if b.is_null() {
        return Ok(a);
    }
    if a.is_null() {
        return Ok(b);
    }
    Ok(match kind {
        StateKind::Count | StateKind::CountDistinct => ScalarValue::Null,
        StateKind::Sum | StateKind::Avg => a.add_checked(&b)?,
        StateKind::Min => {
            if b < a {
                b
            } else {
                a
            }
        }
        StateKind::Max => {
            if b > a {
                b
            } else {
                a
            }
        }
    })
}

fn subtract(a: ScalarValue, b: &ScalarValue) -> Result<ScalarValue> {
    if b.is_null() {
        return Ok(a);
    }
    if a.is_null() {
        return Ok(b.arithmetic_negate()?);
    }
    Ok(a.sub_checked(b)?)
}

/// A group's state as read from its stored row (`offset`: the first state column).
///
/// # Errors
/// A row whose state columns are not `state`'s (a bug).
pub fn stored(state: &GroupState, rows: &RecordBatch, row: usize, offset: usize) -> Result<Group> {
    let mut column = offset + 1;
    let count = |c: usize| -> Result<i64> {
        let values = rows.column(c).as_primitive_opt::<datafusion::arrow::datatypes::Int64Type>();
        values.map(|v| v.value(row)).ok_or_else(|| Error::internal("a state count column is not BIGINT"))
    };
    let total = count(offset)?;
    let mut n = Vec::with_capacity(state.aggregates.len());
    let mut v = Vec::with_capacity(state.aggregates.len());
    for aggregate in &state.aggregates {
        n.push(count(column)?);
        column += 1;
        if aggregate.kind.counts() {
            v.push(ScalarValue::Null);
        } else {
            v.push(ScalarValue::try_from_array(rows.column(column), row)?);
            column += 1;
        }
    }
    Ok(Group { rows: total, n, v })
}

/// The aggregate node's columns for `groups` (group values, then each
/// function's value, as DataFusion would compute it), and a `__row` number.
///
/// # Errors
/// Values that do not convert to the output types.
pub fn aggregate_columns(state: &GroupState, values: &[&[ScalarValue]], groups: &[&Group]) -> Result<Vec<ArrayRef>> {
    let group_columns = state.width() - state.aggregates.len();
    let mut columns = Vec::with_capacity(state.width() + 1);
    for c in 0..group_columns {
        let target = state.output_type(c);
        let cells = values.iter().map(|v| v[c].cast_to(target)).collect::<datafusion::error::Result<Vec<_>>>()?;
        columns.push(array_of(cells, target)?);
    }
    for (j, aggregate) in state.aggregates.iter().enumerate() {
        let cells = groups
            .iter()
            .map(|g| result(aggregate.kind, &aggregate.output, g.n[j], &g.v[j]))
            .collect::<Result<Vec<_>>>()?;
        columns.push(array_of(cells, &aggregate.output)?);
    }
    columns.push(Arc::new(Int64Array::from_iter_values(0..groups.len() as i64)));
    Ok(columns)
}

/// The hidden state columns of `groups`, typed as `fields` (from [`state_fields`]).
///
/// # Errors
/// Values that do not convert to the state types.
pub fn state_columns(state: &GroupState, fields: &[Field], groups: &[&Group]) -> Result<Vec<ArrayRef>> {
    let mut columns: Vec<ArrayRef> = vec![Arc::new(Int64Array::from_iter_values(groups.iter().map(|g| g.rows)))];
    let mut field = 1;
    for (j, aggregate) in state.aggregates.iter().enumerate() {
        columns.push(Arc::new(Int64Array::from_iter_values(groups.iter().map(|g| g.n[j]))));
        field += 1;
        if !aggregate.kind.counts() {
            let target = fields[field].data_type();
            let cells = groups.iter().map(|g| g.v[j].cast_to(target)).collect::<datafusion::error::Result<Vec<_>>>()?;
            columns.push(array_of(cells, target)?);
            field += 1;
        }
    }
    Ok(columns)
}

/// An array of `cells` (of `data_type`, which an empty one needs).
///
/// # Errors
/// Cells of mixed types.
pub fn array_of(cells: Vec<ScalarValue>, data_type: &DataType) -> Result<ArrayRef> {
    if cells.is_empty() {
        return Ok(datafusion::arrow::array::new_empty_array(data_type));
    }
    Ok(ScalarValue::iter_to_array(cells)?)
}

/// A function's value from its state, as DataFusion computes it.
fn result(kind: StateKind, output: &DataType, n: i64, v: &ScalarValue) -> Result<ScalarValue> {
    if kind.counts() {
        return Ok(ScalarValue::Int64(Some(n)).cast_to(output)?);
    }
    if n == 0 || v.is_null() {
        return Ok(ScalarValue::try_from(output)?);
    }
    match (kind, output) {
        (StateKind::Avg, DataType::Float64) => {
            let ScalarValue::Float64(Some(sum)) = v.cast_to(&DataType::Float64)? else {
                return Err(Error::internal("AVG state is not numeric"));
            };
            Ok(ScalarValue::Float64(Some(sum / n as f64)))
        }
        (StateKind::Avg, DataType::Decimal128(precision, scale)) => {
            // As DataFusion's DecimalAverager: the sum rescaled to the
            // result's scale, divided by the count, truncated.
            let ScalarValue::Decimal128(Some(sum), _, sum_scale) = v else {
                return Err(Error::internal("AVG state of a decimal is not a decimal"));
            };
            let factor = 10i128
                .checked_pow(u32::try_from(scale - sum_scale).unwrap_or(0))
                .ok_or_else(|| Error::internal("AVG scale out of range"))?;
            let average = sum
                .checked_mul(factor)
                .map(|s| s / i128::from(n))
                .ok_or_else(|| Error::new(crate::error::StatusCode::NumericOverflow, "Arithmetic Overflow in AVG"))?;
            Ok(ScalarValue::Decimal128(Some(average), *precision, *scale))
        }
        _ => Ok(v.cast_to(output)?),
    }
}

/// Deltas keyed by their encoded group, merged per group, in first-seen order.
///
/// # Errors
/// As [`Delta::merge`].
pub fn merge_by_group(state: &GroupState, keyed: Vec<(Vec<u8>, Delta)>) -> Result<Vec<(Vec<u8>, Delta)>> {
    let mut index: std::collections::HashMap<Vec<u8>, usize> = std::collections::HashMap::new();
    let mut out: Vec<(Vec<u8>, Delta)> = Vec::new();
    for (key, delta) in keyed {
        match index.get(&key) {
            Some(&i) => out[i].1.merge(state, delta)?,
            None => {
                index.insert(key.clone(), out.len());
                out.push((key, delta));
            }
        }
    }
    Ok(out)
}
