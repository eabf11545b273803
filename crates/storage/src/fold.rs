//! Merge engines at write time: the rows written to a key are folded, in
//! write order, onto the key's stored row.
//!
//! A value refers to its columns by source row (`(source, row)`, where the
//! sources are the looked-up batches followed by the incoming batch), so
//! deduplicate and first-row never copy a row and partial-update combines
//! columns of several rows. Aggregate functions that compute a new value
//! (`sum`, `product`, `listagg`) hold it in the cell until the output batch
//! is gathered; the selecting ones (`min`, `max`, `last_value`, …) pick a
//! source row like the other engines.

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, Decimal128Array, Float64Array, RecordBatch, StringArray, UInt32Array};
use arrow::compute::{CastOptions, cast, cast_with_options, interleave, take};
use arrow::datatypes::{DataType, Decimal128Type, Float64Type};
use arrow::row::{RowConverter, Rows, SortField};

use crate::error::{Error, Result};
use crate::options::{AggregateFunction, MergeEngine};
use crate::schema::{TableSchema, ValueKind};

/// A row of a source batch.
pub(crate) type At = (usize, usize);

/// A computed number: integers and decimals as unscaled `i128`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Num {
    Int(i128),
    Float(f64),
}

/// One column of a value.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Cell {
    /// The column of a source row.
    At(At),
    /// A computed number (NULL when `None`).
    Num(Option<Num>),
    /// Computed text (NULL when `None`).
    Text(Option<String>),
}

/// The value of a key.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Value {
    /// All columns of one source row.
    Row(At),
    /// Column by column.
    Cells(Vec<Cell>),
}

/// How the aggregation engine treats a column.
enum Rule {
    /// Key columns, and every column of the other engines.
    Keep,
    /// A function that picks one of the values.
    Pick(AggregateFunction, Option<Vec<Rows>>),
    /// `sum` or `product`, over the column cast to `Decimal128(38, s)` or `Float64`, by source.
    Numeric(AggregateFunction, Vec<ArrayRef>),
    /// `listagg`, over the column cast to Utf8, by source.
    Text(String, Vec<ArrayRef>),
}

/// The fold of one write's rows onto the stored rows of their keys.
pub(crate) struct Fold<'a> {
    schema: &'a TableSchema,
    /// User columns of the looked-up batches, then the incoming batch.
    sources: Vec<&'a RecordBatch>,
    kinds: &'a [ValueKind],
    rules: Vec<Rule>,
    /// The `sequence.field` column and its order keys, by source.
    sequence: Option<(usize, Vec<Rows>)>,
}

/// The order keys of column `column` of every source.
fn order_keys(sources: &[&RecordBatch], column: usize) -> Result<Vec<Rows>> {
    let converter = RowConverter::new(vec![SortField::new(sources[0].schema().field(column).data_type().clone())])?;
    sources.iter().map(|b| Ok(converter.convert_columns(&[Arc::clone(b.column(column))])?)).collect()
}

impl<'a> Fold<'a> {
    pub(crate) fn new(
        schema: &'a TableSchema,
        old: &'a [RecordBatch],
        incoming: &'a RecordBatch,
        kinds: &'a [ValueKind],
    ) -> Result<Self> {
        let mut sources: Vec<&RecordBatch> = old.iter().collect();
        sources.push(incoming);
        let mut rules = Vec::with_capacity(schema.schema.fields().len());
        for (column, field) in schema.schema.fields().iter().enumerate() {
            let function = match schema.options.merge_engine {
                MergeEngine::Aggregation => schema.aggregate_function(column),
                _ => None,
            };
            let rule = match function {
                None => Rule::Keep,
                Some(f @ (AggregateFunction::Sum | AggregateFunction::Product)) => {
                    let view = match field.data_type() {
                        DataType::Decimal128(_, scale) => DataType::Decimal128(38, *scale),
                        ty if ty.is_integer() => DataType::Decimal128(38, 0),
                        _ => DataType::Float64,
                    };
                    let views = sources.iter().map(|b| cast(b.column(column), &view)).collect::<Result<_, _>>()?;
                    Rule::Numeric(f, views)
                }
                Some(AggregateFunction::Listagg) => {
                    let delimiter = schema.options.list_agg_delimiters.get(field.name()).map_or(",", String::as_str);
                    let views =
                        sources.iter().map(|b| cast(b.column(column), &DataType::Utf8)).collect::<Result<_, _>>()?;
                    Rule::Text(delimiter.to_owned(), views)
                }
                Some(f @ (AggregateFunction::Min | AggregateFunction::Max)) => {
                    Rule::Pick(f, Some(order_keys(&sources, column)?))
                }
                Some(f) => Rule::Pick(f, None),
            };
            rules.push(rule);
        }
        let sequence = match &schema.options.sequence_field {
            Some(name) => {
                let column = schema.schema.index_of(name)?;
                Some((column, order_keys(&sources, column)?))
            }
            None => None,
        };
        Ok(Self { schema, sources, kinds, rules, sequence })
    }

    fn incoming(&self) -> usize {
        self.sources.len() - 1
    }

    fn is_valid(&self, (source, row): At, column: usize) -> bool {
        self.sources[source].column(column).is_valid(row)
    }

    /// The cells of a source row.
    fn cells(&self, at: At) -> Vec<Cell> {
        self.rules
            .iter()
            .map(|rule| match rule {
                Rule::Keep | Rule::Pick(..) => Cell::At(at),
                Rule::Numeric(_, views) => Cell::Num(number(&views[at.0], at.1)),
                Rule::Text(_, views) => Cell::Text(text(&views[at.0], at.1)),
            })
            .collect()
    }

    /// Whether `at` has a smaller `sequence.field` than the value's.
    fn is_older(&self, value: &Value, at: At) -> bool {
        let Some((column, keys)) = &self.sequence else { return false };
        let current = match value {
            Value::Row(current) => *current,
            Value::Cells(cells) => match &cells[*column] {
                Cell::At(current) => *current,
                _ => return false,
            },
        };
        keys[at.0].row(at.1) < keys[current.0].row(current.1)
    }

    /// Folds the rows at `positions` of the incoming batch onto `old` (the
    /// stored row of the key, if any). Returns the new value, or `None` if
    /// the key ends up deleted.
    pub(crate) fn fold(&self, old: Option<At>, positions: &[usize]) -> Result<Option<Value>> {
        let engine = self.schema.options.merge_engine;
        let mut value = old.map(|at| match engine {
            MergeEngine::Aggregation => Value::Cells(self.cells(at)),
            _ => Value::Row(at),
        });
        for &i in positions {
            let at = (self.incoming(), i);
            let kind = self.kinds[i];
            value = match (kind, engine, value) {
                (ValueKind::Delete, _, _) => None,
                (_, MergeEngine::Aggregation, None) => Some(Value::Cells(self.cells(at))),
                (_, _, None) => Some(Value::Row(at)),
                (ValueKind::Insert, _, current) | (_, MergeEngine::FirstRow, current) => current,
                (ValueKind::Upsert, MergeEngine::Deduplicate, Some(current)) => {
                    Some(if self.is_older(&current, at) { current } else { Value::Row(at) })
                }
                (ValueKind::Upsert, MergeEngine::PartialUpdate, Some(current)) => {
                    let late = self.is_older(&current, at);
                    let mut cells = match current {
                        Value::Row(row) => vec![Cell::At(row); self.rules.len()],
                        Value::Cells(cells) => cells,
                    };
                    for (column, cell) in cells.iter_mut().enumerate() {
                        let Cell::At(current) = *cell else { continue };
                        // A late write only fills columns that are still NULL.
                        if self.is_valid(at, column) && !(late && self.is_valid(current, column)) {
                            *cell = Cell::At(at);
                        }
                    }
                    Some(Value::Cells(cells))
                }
                (ValueKind::Upsert, MergeEngine::Aggregation, Some(Value::Cells(mut cells))) => {
                    for (column, cell) in cells.iter_mut().enumerate() {
                        self.aggregate(column, cell, at)?;
                    }
                    Some(Value::Cells(cells))
                }
                (ValueKind::Upsert, MergeEngine::Aggregation, Some(Value::Row(row))) => {
                    let mut cells = self.cells(row);
                    for (column, cell) in cells.iter_mut().enumerate() {
                        self.aggregate(column, cell, at)?;
                    }
                    Some(Value::Cells(cells))
                }
            };
        }
        Ok(value)
    }

    /// Whether `new` is the same value as the stored row `old`.
    pub(crate) fn is_unchanged(&self, old: At, new: &Value) -> bool {
        match new {
            Value::Row(at) => *at == old,
            Value::Cells(cells) => *cells == self.cells(old),
        }
    }

    /// Whether `new` equals the row at `old` in the first `columns` columns
    /// (`None`: never; only whole source rows are compared).
    pub(crate) fn is_unchanged_in(&self, old: At, new: &Value, columns: Option<usize>) -> bool {
        let (Some(columns), Value::Row(new)) = (columns, new) else { return false };
        (0..columns.min(self.rules.len())).all(|c| {
            let a = self.sources[old.0].column(c).slice(old.1, 1);
            let b = self.sources[new.0].column(c).slice(new.1, 1);
            a.as_ref() == b.as_ref()
        })
    }

    /// Combines column `column` of `at` into `cell`.
    fn aggregate(&self, column: usize, cell: &mut Cell, at: At) -> Result<()> {
        let input_valid = self.is_valid(at, column);
        match (&self.rules[column], cell) {
            (Rule::Keep, _) => {}
            (Rule::Pick(function, order), Cell::At(current)) => {
                let current_valid = self.is_valid(*current, column);
                let take = match function {
                    AggregateFunction::LastValue => true,
                    AggregateFunction::LastNonNullValue => input_valid,
                    AggregateFunction::FirstValue => false,
                    AggregateFunction::FirstNonNullValue => input_valid && !current_valid,
                    AggregateFunction::Min | AggregateFunction::Max => {
                        input_valid
                            && (!current_valid
                                || order.as_ref().is_some_and(|keys| {
                                    let input = keys[at.0].row(at.1);
                                    let stored = keys[current.0].row(current.1);
                                    match function {
                                        AggregateFunction::Min => input < stored,
                                        _ => input > stored,
                                    }
                                }))
                    }
                    AggregateFunction::BoolAnd | AggregateFunction::BoolOr => {
                        let want = *function == AggregateFunction::BoolOr;
                        input_valid
                            && (!current_valid || self.sources[at.0].column(column).as_boolean().value(at.1) == want)
                    }
                    AggregateFunction::Sum | AggregateFunction::Product | AggregateFunction::Listagg => false,
                };
                if take {
                    *current = at;
                }
            }
            (Rule::Numeric(function, views), Cell::Num(current)) => {
                let Some(input) = number(&views[at.0], at.1) else { return Ok(()) };
                let combined = match (*current, input) {
                    (None, _) => Some(input),
                    (Some(Num::Int(a)), Num::Int(b)) => match function {
                        AggregateFunction::Sum => a.checked_add(b),
                        _ => a.checked_mul(b),
                    }
                    .map(Num::Int),
                    (Some(Num::Float(a)), Num::Float(b)) => Some(Num::Float(match function {
                        AggregateFunction::Sum => a + b,
                        _ => a * b,
                    })),
                    _ => None,
                };
                *current = Some(combined.ok_or_else(|| self.out_of_range(column, *function))?);
            }
            (Rule::Text(delimiter, views), Cell::Text(current)) => {
                if let Some(input) = text(&views[at.0], at.1) {
                    match current {
                        Some(text) => {
                            text.push_str(delimiter);
                            text.push_str(&input);
                        }
                        None => *current = Some(input),
                    }
                }
            }
            (_, cell) => {
                return Err(Error::Invalid(format!("column {column}: cell {cell:?} does not fit its aggregate")));
            }
        }
        Ok(())
    }

    fn out_of_range(&self, column: usize, function: AggregateFunction) -> Error {
        let field = self.schema.schema.field(column);
        Error::OutOfRange(format!(
            "{} of column \"{}\" is out of range for type {}",
            function.name(),
            field.name(),
            field.data_type()
        ))
    }

    /// Starts an output batch.
    pub(crate) fn output(&self) -> Output {
        let columns = self.rules.len();
        Output {
            rows: 0,
            indices: vec![Vec::new(); columns],
            nums: vec![Vec::new(); columns],
            texts: vec![Vec::new(); columns],
        }
    }

    /// The user columns of `output`.
    pub(crate) fn gather(&self, output: &Output) -> Result<RecordBatch> {
        let mut columns = Vec::with_capacity(self.rules.len());
        for (column, field) in self.schema.schema.fields().iter().enumerate() {
            let computed = match &self.rules[column] {
                Rule::Numeric(function, _) if !output.nums[column].is_empty() => {
                    let values = &output.nums[column];
                    let array: ArrayRef = match field.data_type() {
                        ty if ty.is_floating() => Arc::new(Float64Array::from_iter(
                            values.iter().map(|v| v.map(|n| if let Num::Float(f) = n { f } else { f64::NAN })),
                        )),
                        ty => {
                            let scale = if let DataType::Decimal128(_, s) = ty { *s } else { 0 };
                            let ints = values.iter().map(|v| v.map(|n| if let Num::Int(i) = n { i } else { 0 }));
                            Arc::new(Decimal128Array::from_iter(ints).with_precision_and_scale(38, scale)?)
                        }
                    };
                    let options = CastOptions { safe: false, ..Default::default() };
                    cast_with_options(&array, field.data_type(), &options)
                        .map_err(|_| self.out_of_range(column, *function))?
                }
                Rule::Text(..) if !output.texts[column].is_empty() => {
                    let array = StringArray::from_iter(output.texts[column].iter().map(Option::as_deref));
                    cast(&array, field.data_type())?
                }
                _ => arrow::array::new_empty_array(field.data_type()),
            };
            let indices = &output.indices[column];
            let mut sources: Vec<&dyn Array> = self.sources.iter().map(|b| b.column(column).as_ref()).collect();
            sources.push(computed.as_ref());
            // Rows from one source (new keys only, say) are a take, cheaper than an interleave.
            let single = indices.first().map(|&(s, _)| s).filter(|&s| indices.iter().all(|&(t, _)| t == s));
            columns.push(match single {
                Some(s) => {
                    let rows = UInt32Array::from_iter_values(indices.iter().map(|&(_, r)| r as u32));
                    take(sources[s], &rows, None)?
                }
                None => interleave(&sources, indices)?,
            });
        }
        let options = arrow::array::RecordBatchOptions::new().with_row_count(Some(output.rows));
        Ok(RecordBatch::try_new_with_options(Arc::clone(&self.schema.schema), columns, &options)?)
    }
}

/// Rows being gathered into a batch: per column, where each row's value is
/// (a source row, or the computed values appended after the sources).
pub(crate) struct Output {
    rows: usize,
    indices: Vec<Vec<At>>,
    nums: Vec<Vec<Option<Num>>>,
    texts: Vec<Vec<Option<String>>>,
}

impl Output {
    /// Appends a value of `fold`.
    pub(crate) fn push(&mut self, fold: &Fold<'_>, value: &Value) {
        let computed = fold.sources.len();
        self.rows += 1;
        match value {
            Value::Row(at) => self.indices.iter_mut().for_each(|column| column.push(*at)),
            Value::Cells(cells) => {
                for (column, cell) in cells.iter().enumerate() {
                    let at = match cell {
                        Cell::At(at) => *at,
                        Cell::Num(n) => {
                            self.nums[column].push(*n);
                            (computed, self.nums[column].len() - 1)
                        }
                        Cell::Text(t) => {
                            self.texts[column].push(t.clone());
                            (computed, self.texts[column].len() - 1)
                        }
                    };
                    self.indices[column].push(at);
                }
            }
        }
    }

    /// Rows appended so far.
    pub(crate) fn len(&self) -> usize {
        self.rows
    }
}

fn number(view: &ArrayRef, row: usize) -> Option<Num> {
    if view.is_null(row) {
        return None;
    }
    match view.data_type() {
        DataType::Float64 => Some(Num::Float(view.as_primitive::<Float64Type>().value(row))),
        _ => Some(Num::Int(view.as_primitive::<Decimal128Type>().value(row))),
    }
}

fn text(view: &ArrayRef, row: usize) -> Option<String> {
    view.is_valid(row).then(|| view.as_string::<i32>().value(row).to_owned())
}
