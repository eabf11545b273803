//! Probes: a step's joins read the unchanged input by key, not whole.
//!
//! A step's plan joins something small (the change, or what was computed
//! from it) with a source as of a snapshot. Before the plan runs,
//! [`Prober::rewrite`] goes through its joins bottom up; for a join where
//! one input reads no source snapshot (it is bounded by the change) and the
//! other is a chain of projections, filters, aliases and inner joins down to
//! the source snapshot whose columns the join keys are, and those hold the
//! leading columns of the source's primary key or are the columns of one of
//! the view's [`Arrangement`]s, it evaluates the small input, takes its
//! distinct join keys (those columns'), looks the matching rows up by key prefix
//! ([`streamhouse_storage::Table::get_prefixes`]), and puts both in place
//! as in-memory inputs. DataFusion then joins them as before: the join's
//! semantics (outer, semi, anti, extra conditions) are untouched, only rows
//! that cannot match are never read.
//!
//! Probing leaves out rows of the probed input that match no key of the
//! other; that is only right where such rows contribute nothing: either
//! input of an inner or semi join, the NULL-extended input of an outer
//! join, and the filtering input of an anti join. Joins whose NULL keys
//! match (`IS NOT DISTINCT FROM`, a group restriction) are probed only when
//! no key looked up is NULL (arrangements leave NULL keys out).

use std::sync::Arc;

use datafusion::arrow::array::{ArrayRef, RecordBatch};
use datafusion::arrow::compute::{cast, concat_batches};
use datafusion::arrow::datatypes::{Field, Schema, SchemaRef};
use datafusion::catalog::{MemTable, TableProvider};
use datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
use datafusion::common::{Column, JoinType, NullEquality, ScalarValue};
use datafusion::datasource::{provider_as_source, source_as_provider};
use datafusion::logical_expr::{
    Expr, Filter, Join, LogicalPlan, LogicalPlanBuilder, Projection, SubqueryAlias, TableScan,
};
use datafusion::prelude::SessionContext;
use futures::future::BoxFuture;

use super::arrange::Arrangement;
use super::plan::Source;
use crate::dynamic::system::SnapshotTable;
use crate::error::Result;

/// Rewrites a step's plan to probe instead of scan, and counts both.
pub struct Prober<'a> {
    pub ctx: &'a SessionContext,
    /// Where the plans of what it evaluates are kept.
    pub plans: &'a super::steps::StepPlans,
    pub sources: &'a [Source],
    pub arrangements: &'a [Arrangement],
    /// Lookups by key made.
    pub probes: u64,
}

/// The source snapshot a join input reads, and the source columns its join
/// expressions are.
struct Target<'p> {
    scan: &'p TableScan,
    source: usize,
    snapshot: u64,
    columns: Vec<usize>,
}

/// Which input of a join is probed.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Side {
    Left,
    Right,
}

/// Whether rows of input `probed` that match no key of the other input
/// may be left out of `join_type`.
fn may_probe(join_type: JoinType, probed: Side) -> bool {
    match join_type {
        JoinType::Inner | JoinType::LeftSemi | JoinType::RightSemi => true,
        JoinType::Left | JoinType::LeftAnti | JoinType::LeftMark => probed == Side::Right,
        JoinType::Right | JoinType::RightAnti | JoinType::RightMark => probed == Side::Left,
        JoinType::Full => false,
    }
}

/// The snapshot-table scan under `plan`, when `plan` reads one.
fn snapshot_scan(scan: &TableScan) -> Option<Arc<dyn datafusion::catalog::TableProvider>> {
    let provider = source_as_provider(&scan.source).ok()?;
    provider.downcast_ref::<SnapshotTable>()?;
    Some(provider)
}

/// Whether `plan` reads any source as of a snapshot (then it is not
/// bounded by the change).
pub fn reads_snapshots(plan: &LogicalPlan) -> usize {
    let mut count = 0;
    let _ = plan.apply(|node| {
        match node {
            // A branch that contributes nothing (the optimizer removes it).
            LogicalPlan::Filter(f) if matches!(f.predicate, Expr::Literal(ScalarValue::Boolean(Some(false)), _)) => {
                return Ok(TreeNodeRecursion::Jump);
            }
            LogicalPlan::TableScan(scan) if snapshot_scan(scan).is_some() => count += 1,
            _ => {}
        }
        Ok(TreeNodeRecursion::Continue)
    });
    count
}

/// Whether `plan` reads `table` as of a snapshot (a step's plan that pairs
/// the change of a source with that source's own snapshots: a self join,
/// or the other side of an outer or anti join checking its matches before
/// and after).
pub fn reads_table(plan: &LogicalPlan, table: &Arc<streamhouse_storage::Table>) -> bool {
    let mut found = false;
    let _ = plan.apply(|node| {
        if let LogicalPlan::TableScan(scan) = node
            && let Some(provider) = snapshot_scan(scan)
            && provider.downcast_ref::<SnapshotTable>().is_some_and(|s| Arc::ptr_eq(s.table(), table))
        {
            found = true;
            return Ok(TreeNodeRecursion::Stop);
        }
        Ok(TreeNodeRecursion::Continue)
    });
    found
}

/// The column a join expression is: the column itself, or widened to a
/// larger integer type (as type coercion casts join keys), under which
/// equality is the same.
fn key_column(expr: &Expr, schema: &datafusion::common::DFSchema) -> Option<usize> {
    match expr {
        Expr::Column(column) => schema.index_of_column(column).ok(),
        Expr::Cast(c) => {
            let Expr::Column(column) = c.expr.as_ref() else { return None };
            let index = schema.index_of_column(column).ok()?;
            let from = schema.field(index).data_type();
            let to = c.field.data_type();
            let widening = from.is_integer()
                && to.is_integer()
                && from.is_signed_integer() == to.is_signed_integer()
                && from.primitive_width() <= to.primitive_width();
            widening.then_some(index)
        }
        _ => None,
    }
}

/// The input column `index` of `plan` comes from: the scan at the bottom
/// of a chain of projections, filters, aliases and inner joins, and the
/// column of its provider. (Rows of an inner join's input that match no
/// probed key cannot reach the output through the join either.)
fn trace(plan: &LogicalPlan, index: usize) -> Option<(&TableScan, usize)> {
    match plan {
        LogicalPlan::Join(j) if j.join_type == JoinType::Inner => {
            let left = j.left.schema().fields().len();
            if index < left { trace(&j.left, index) } else { trace(&j.right, index - left) }
        }
        LogicalPlan::Projection(p) => {
            let mut expr = p.expr.get(index)?;
            while let Expr::Alias(alias) = expr {
                expr = &alias.expr;
            }
            let Expr::Column(column) = expr else { return None };
            trace(&p.input, p.input.schema().index_of_column(column).ok()?)
        }
        LogicalPlan::Filter(f) => trace(&f.input, index),
        LogicalPlan::SubqueryAlias(a) => trace(&a.input, index),
        LogicalPlan::TableScan(scan) => {
            let column = scan.projection.as_ref().map_or(Some(index), |p| p.get(index).copied())?;
            Some((scan, column))
        }
        _ => None,
    }
}

/// Whether `target` is a node of `plan`.
fn holds(plan: &LogicalPlan, target: &TableScan) -> bool {
    plan.exists(|n| Ok(matches!(n, LogicalPlan::TableScan(scan) if std::ptr::eq(scan, target)))).unwrap_or(false)
}

/// `plan` with scan `target` (one of its nodes) reading `provider` instead.
fn replace_scan(
    plan: &LogicalPlan,
    target: &TableScan,
    provider: Arc<dyn datafusion::catalog::TableProvider>,
) -> Result<LogicalPlan> {
    Ok(match plan {
        LogicalPlan::Projection(p) => LogicalPlan::Projection(Projection::try_new(
            p.expr.clone(),
            Arc::new(replace_scan(&p.input, target, provider)?),
        )?),
        LogicalPlan::Filter(f) => LogicalPlan::Filter(Filter::try_new(
            f.predicate.clone(),
            Arc::new(replace_scan(&f.input, target, provider)?),
        )?),
        LogicalPlan::SubqueryAlias(a) => LogicalPlan::SubqueryAlias(SubqueryAlias::try_new(
            Arc::new(replace_scan(&a.input, target, provider)?),
            a.alias.clone(),
        )?),
        LogicalPlan::Join(j) => {
            let (left, right) = if holds(&j.left, target) {
                (Arc::new(replace_scan(&j.left, target, provider)?), Arc::clone(&j.right))
            } else {
                (Arc::clone(&j.left), Arc::new(replace_scan(&j.right, target, provider)?))
            };
            LogicalPlan::Join(Join { left, right, ..j.clone() })
        }
        LogicalPlan::TableScan(scan) if std::ptr::eq(scan, target) => {
            let read = LogicalPlan::TableScan(
                datafusion::logical_expr::TableScanBuilder::new(scan.table_name.clone(), provider_as_source(provider))
                    .with_projection(scan.projection.clone())
                    .with_fetch(scan.fetch)
                    .build()?,
            );
            // Filters the scan was to apply, applied to the rows looked up.
            match datafusion::logical_expr::utils::conjunction(scan.filters.clone()) {
                Some(predicate) => LogicalPlan::Filter(Filter::try_new(predicate, Arc::new(read))?),
                None => read,
            }
        }
        other => return Err(crate::error::Error::internal(format!("cannot probe below {}", other.display()))),
    })
}

/// Rows already computed, as a plan with the schema (names, qualifiers,
/// types) of `like`.
fn in_memory(like: &LogicalPlan, batches: Vec<RecordBatch>) -> Result<LogicalPlan> {
    let shape = like.schema();
    let fields: Vec<Field> = shape
        .fields()
        .iter()
        .enumerate()
        .map(|(i, f)| Field::new(format!("c{i}"), f.data_type().clone(), f.is_nullable()))
        .collect();
    let schema: SchemaRef = Arc::new(Schema::new(fields));
    let batches = batches
        .into_iter()
        .filter(|b| b.num_rows() > 0)
        .map(|b| {
            let columns = b
                .columns()
                .iter()
                .zip(schema.fields())
                .map(|(c, f)| if c.data_type() == f.data_type() { Ok(Arc::clone(c)) } else { cast(c, f.data_type()) })
                .collect::<std::result::Result<Vec<_>, _>>()?;
            Ok(RecordBatch::try_new(Arc::clone(&schema), columns)?)
        })
        .collect::<Result<Vec<_>>>()?;
    let table = MemTable::try_new(Arc::clone(&schema), vec![batches])?;
    let scan = LogicalPlanBuilder::scan("__probed", provider_as_source(Arc::new(table)), None)?.build()?;
    let exprs: Vec<Expr> = (0..shape.fields().len())
        .map(|i| {
            let (qualifier, field) = shape.qualified_field(i);
            Expr::Column(Column::new(Some("__probed"), format!("c{i}")))
                .alias_qualified(qualifier.cloned(), field.name())
        })
        .collect();
    Ok(LogicalPlan::Projection(Projection::try_new(exprs, Arc::new(scan))?))
}

impl Prober<'_> {
    /// `plan` with every join input that can be probed read by key.
    pub fn rewrite(&mut self, plan: LogicalPlan) -> BoxFuture<'_, Result<LogicalPlan>> {
        Box::pin(async move {
            if !plan.exists(|n| Ok(matches!(n, LogicalPlan::Join(_))))? {
                return Ok(plan);
            }
            let mut inputs = Vec::new();
            for input in plan.inputs() {
                inputs.push(self.rewrite(input.clone()).await?);
            }
            let mut inputs = inputs.into_iter();
            let plan = plan
                .map_children(|_| {
                    Ok(Transformed::yes(inputs.next().ok_or_else(|| {
                        datafusion::error::DataFusionError::Internal("a plan node lost an input".into())
                    })?))
                })?
                .data;
            match plan {
                LogicalPlan::Join(join) => self.join(join).await,
                other => Ok(other),
            }
        })
    }

    /// A join with one input probed, when one can be.
    async fn join(&mut self, join: Join) -> Result<LogicalPlan> {
        if join.on.is_empty() {
            return Ok(LogicalPlan::Join(join));
        }
        for probed in [Side::Right, Side::Left] {
            if !may_probe(join.join_type, probed) {
                continue;
            }
            let (target_plan, other_plan) = match probed {
                Side::Right => (&join.right, &join.left),
                Side::Left => (&join.left, &join.right),
            };
            if reads_snapshots(other_plan) > 0 {
                continue;
            }
            let (target_exprs, other_exprs): (Vec<Expr>, Vec<Expr>) = join
                .on
                .iter()
                .map(|(l, r)| if probed == Side::Right { (r.clone(), l.clone()) } else { (l.clone(), r.clone()) })
                .unzip();
            let Some(target) = self.target(target_plan, &target_exprs) else { continue };
            let Some(lookup) = self.lookup(&target) else { continue };
            // The bounded input, computed once; its distinct join keys.
            let other = self.plans.collect(self.ctx, other_plan.as_ref().clone()).await?;
            let other = in_memory(other_plan, other)?;
            let key_exprs: Vec<Expr> = lookup
                .order
                .iter()
                .enumerate()
                .map(|(i, &on)| other_exprs[on].clone().alias(format!("__probe{i}")))
                .collect();
            let keys = LogicalPlanBuilder::from(other.clone()).project(key_exprs)?.distinct()?.build()?;
            let keys = self.plans.collect(self.ctx, keys).await?;
            let source = &self.sources[target.source];
            let schema = source.table.schema();
            let mut key_columns: Vec<ArrayRef> = match keys.first().map(RecordBatch::schema) {
                None => vec![],
                Some(key_schema) => {
                    let all = concat_batches(&key_schema, &keys)?;
                    // As the source's columns (a key beyond a narrower column's range becomes NULL: it matches nothing).
                    lookup
                        .columns
                        .iter()
                        .enumerate()
                        .map(|(i, &c)| cast(all.column(i), schema.field(c).data_type()))
                        .collect::<std::result::Result<_, _>>()?
                }
            };
            let complete: Vec<u32> = (0..key_columns.first().map_or(0, |c| c.len()))
                .filter(|&row| key_columns.iter().all(|c| c.is_valid(row)))
                .map(|row| row as u32)
                .collect();
            if complete.len() < key_columns.first().map_or(0, |c| c.len()) {
                if join.null_equality == NullEquality::NullEqualsNull {
                    // A NULL key matches NULLs, which arrangements leave out.
                    continue;
                }
                let indexes = datafusion::arrow::array::UInt32Array::from(complete);
                key_columns = key_columns
                    .iter()
                    .map(|c| datafusion::arrow::compute::take(c.as_ref(), &indexes, None))
                    .collect::<std::result::Result<_, _>>()?;
            }
            let rows = if key_columns.first().is_none_or(|c| c.is_empty()) {
                Some(RecordBatch::new_empty(Arc::clone(&schema)))
            } else {
                self.probes += 1;
                match lookup.arrangement {
                    Some(a) => self.arrangements[a].probe(target.snapshot, &key_columns).await?,
                    None => Some(source.table.storage().get_prefixes(Some(target.snapshot), &key_columns).await?),
                }
            };
            let Some(rows) = rows else { continue };
            if rows.num_columns() != schema.fields().len() {
                // The source gained columns since the arrangement was built.
                continue;
            }
            let rows = RecordBatch::try_new(Arc::clone(&schema), rows.columns().to_vec())?;
            let mut probed_plan =
                replace_scan(target_plan, target.scan, Arc::new(MemTable::try_new(schema, vec![vec![rows]])?))?;
            if probed_plan.exists(|n| Ok(matches!(n, LogicalPlan::Join(_))))? {
                // An inner join below now has a bounded input: probe its other one.
                probed_plan = self.rewrite(probed_plan).await?;
            }
            let (left, right) = match probed {
                Side::Right => (other, probed_plan),
                Side::Left => (probed_plan, other),
            };
            return Ok(LogicalPlan::Join(Join { left: Arc::new(left), right: Arc::new(right), ..join }));
        }
        Ok(LogicalPlan::Join(join))
    }

    /// The source snapshot and columns `exprs` (join expressions of
    /// `plan`) read, when they are plain columns of one source snapshot.
    fn target<'p>(&self, plan: &'p LogicalPlan, exprs: &[Expr]) -> Option<Target<'p>> {
        let mut scan_seen: Option<&TableScan> = None;
        let mut columns = Vec::with_capacity(exprs.len());
        for expr in exprs {
            let (scan, index) = trace(plan, key_column(expr, plan.schema())?)?;
            if scan_seen.is_some_and(|s| !std::ptr::eq(s, scan)) {
                return None;
            }
            scan_seen = Some(scan);
            columns.push(index);
        }
        let scan = scan_seen?;
        let provider = snapshot_scan(scan)?;
        let table = provider.downcast_ref::<SnapshotTable>()?;
        let snapshot = table.snapshot()?;
        let source = self.sources.iter().position(|s| Arc::ptr_eq(s.table.storage(), table.table()))?;
        Some(Target { scan, source, snapshot, columns })
    }

    /// How to look `target` up: the arrangement (or `None`: the source
    /// itself, keyed on those columns), its columns, and for each of them
    /// the join expression that gives it.
    fn lookup(&self, target: &Target) -> Option<Lookup> {
        let mut distinct = target.columns.clone();
        distinct.sort_unstable();
        distinct.dedup();
        if distinct.len() != target.columns.len() {
            return None;
        }
        let order_of = |columns: &[usize]| -> Vec<usize> {
            columns.iter().map(|c| target.columns.iter().position(|t| t == c).unwrap_or_default()).collect()
        };
        // The source's own key, when the join columns hold its leading
        // columns (the join checks the others on the rows found).
        let key = self.sources[target.source].table.storage().schema().primary_key;
        let leading = key.iter().take_while(|k| target.columns.contains(k)).count();
        if leading > 0 {
            let columns = key[..leading].to_vec();
            return Some(Lookup { arrangement: None, order: order_of(&columns), columns });
        }
        let arrangement = self.arrangements.iter().position(|a| {
            let mut columns = a.columns.clone();
            columns.sort_unstable();
            a.source == target.source && columns == distinct
        })?;
        let columns = self.arrangements[arrangement].columns.clone();
        Some(Lookup { arrangement: Some(arrangement), order: order_of(&columns), columns })
    }
}

/// Where a probe looks keys up.
struct Lookup {
    /// The arrangement, or `None` for the source table itself.
    arrangement: Option<usize>,
    /// The source columns of the lookup key, in its order.
    columns: Vec<usize>,
    /// For each of them, the index of its join expression.
    order: Vec<usize>,
}

/// The arrangements a view's plan wants: for each equi-join input (and,
/// with `groups`, the aggregate's or window's input restricted to the
/// groups a step touches) whose keys are plain columns of one source,
/// reached through projections, filters, aliases and inner joins, and do
/// not include its primary key's first column: that source keyed on those
/// columns. Sources
/// without a primary key get none.
pub fn wanted_arrangements(
    plan: &LogicalPlan,
    sources: &[Source],
    groups: Option<(&[Expr], &LogicalPlan)>,
) -> Vec<(usize, Vec<usize>)> {
    let mut wanted: Vec<(usize, Vec<usize>)> = Vec::new();
    let _ = plan.apply(|node| {
        if let LogicalPlan::Join(join) = node
            && !join.on.is_empty()
        {
            let (left, right): (Vec<Expr>, Vec<Expr>) = join.on.iter().cloned().unzip();
            want(&join.left, &left, sources, &mut wanted);
            want(&join.right, &right, sources, &mut wanted);
        }
        Ok(TreeNodeRecursion::Continue)
    });
    if let Some((keys, input)) = groups
        && !keys.is_empty()
    {
        want(input, keys, sources, &mut wanted);
    }
    wanted
}

/// Adds to `wanted` the arrangement that probing `input` by `exprs` needs, if any.
fn want(input: &LogicalPlan, exprs: &[Expr], sources: &[Source], wanted: &mut Vec<(usize, Vec<usize>)>) {
    let mut scan_seen: Option<&TableScan> = None;
    let mut columns = Vec::new();
    for expr in exprs {
        let Some((scan, index)) = key_column(expr, input.schema()).and_then(|i| trace(input, i)) else { return };
        if scan_seen.is_some_and(|s| !std::ptr::eq(s, scan)) {
            return;
        }
        scan_seen = Some(scan);
        columns.push(index);
    }
    let Some(source) = scan_seen.and_then(|scan| scan_source(scan, sources)) else { return };
    let key = sources[source].table.storage().schema().primary_key;
    let mut distinct = columns.clone();
    distinct.sort_unstable();
    distinct.dedup();
    if key.is_empty() || distinct.len() != columns.len() || key.first().is_some_and(|k| columns.contains(k)) {
        // No key to arrange by, or the source's own key serves.
        return;
    }
    let known = wanted.iter().any(|(s, c)| {
        let mut c = c.clone();
        c.sort_unstable();
        *s == source && c == distinct
    });
    if !known {
        wanted.push((source, columns));
    }
}

/// The source a scan of the view's defining plan reads.
fn scan_source(scan: &TableScan, sources: &[Source]) -> Option<usize> {
    let provider = source_as_provider(&scan.source).ok()?;
    let storage = if let Some(table) = provider.downcast_ref::<crate::dynamic::DynamicTable>() {
        Arc::clone(table.storage())
    } else if let Some(view) = provider.downcast_ref::<super::MaterializedView>() {
        Arc::clone(view.table())
    } else {
        return None;
    };
    sources.iter().position(|s| Arc::ptr_eq(s.table.storage(), &storage))
}
