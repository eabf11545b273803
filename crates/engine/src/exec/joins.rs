//! How an MPP hash join shares its work: every partition probing one
//! build side collected once (`CollectLeft`), or both sides repartitioned
//! by the join key (`Partitioned`).
//!
//! DataFusion decides on the build side's size alone (under
//! `hash_join_single_partition_threshold` it collects, else it
//! repartitions). What the choice costs depends on both sides and on the
//! parallelism: collecting builds the hash table of the smaller side on
//! one thread while the other partitions wait, repartitioning hashes and
//! copies every row of both sides once (spread over the partitions) and
//! then builds in parallel. With `p` partitions and inserting a row into a
//! hash table costing about twice what hashing and copying it to its
//! partition does (random probes against a streaming copy), collecting
//! is cheaper when
//!
//! ```text
//! 2 · small · (1 − 1/p)  ≤  (small + large) / p,   i.e.   2 · small · (p − 1) ≤ small + large
//! ```
//!
//! On two cores that is a build side smaller than the probe side (TPC-H q7
//! 0.73×, q18 0.70× with those joins collected); on sixteen one under a
//! twenty-ninth of it. One exception: a join whose output is grouped by
//! exactly its keys stays partitioned (unless its build side is under
//! DataFusion's thresholds), since its partitions are already the
//! aggregation's. The rule runs before DataFusion's
//! `JoinSelection`, which then puts the smaller side on the build side.

use std::collections::HashSet;
use std::sync::Arc;

use datafusion::common::JoinSide;
use datafusion::common::config::ConfigOptions;
use datafusion::common::tree_node::{Transformed, TransformedResult, TreeNode};
use datafusion::error::Result;
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_expr::expressions::Column;
use datafusion::physical_optimizer::PhysicalOptimizerRule;
use datafusion::physical_plan::aggregates::{AggregateExec, AggregateMode};
use datafusion::physical_plan::filter::FilterExec;
use datafusion::physical_plan::joins::utils::build_join_schema;
use datafusion::physical_plan::joins::{HashJoinExec, PartitionMode};
use datafusion::physical_plan::projection::ProjectionExec;
use datafusion::physical_plan::{ExecutionPlan, StatisticsArgs, StatisticsContext};

/// Chooses `CollectLeft` for hash joins DataFusion left to decide
/// (`PartitionMode::Auto`) when the cost above says so; others keep
/// DataFusion's thresholds.
///
/// A session with both collect thresholds at 0 asked for partitioned joins
/// (BSP, where each task builds its slice of the build side): left as is.
#[derive(Debug, Default)]
pub struct CostBasedJoinMode;

/// The rule's name (distributed planning removes it: a collected build side
/// is broadcast to every worker there, a different cost).
pub const NAME: &str = "cost_based_join_mode";

impl PhysicalOptimizerRule for CostBasedJoinMode {
    fn optimize(&self, plan: Arc<dyn ExecutionPlan>, config: &ConfigOptions) -> Result<Arc<dyn ExecutionPlan>> {
        let optimizer = &config.optimizer;
        let partitions = config.execution.target_partitions;
        if partitions <= 1
            || (optimizer.hash_join_single_partition_threshold == 0
                && optimizer.hash_join_single_partition_threshold_rows == 0)
        {
            return Ok(plan);
        }
        // Top down, so an aggregation is seen before the join under it (and
        // the join is still the node the aggregation's input holds).
        let mut serving = HashSet::new();
        plan.transform_down(|node| {
            if let Some(aggregate) = node.downcast_ref::<AggregateExec>() {
                serving.extend(join_partitioned_for(aggregate).map(|join| address(&join)));
                return Ok(Transformed::no(node));
            }
            let Some(join) = node.downcast_ref::<HashJoinExec>() else { return Ok(Transformed::no(node)) };
            // A null-aware anti join (`NOT IN`) must see the whole build side: DataFusion collects it.
            if *join.partition_mode() != PartitionMode::Auto || join.null_aware {
                return Ok(Transformed::no(node));
            }
            let Some(mode) = choose(join, serving.contains(&address(&node)), config)? else {
                return Ok(Transformed::no(node));
            };
            let chosen = join.builder().with_partition_mode(mode).build()?;
            Ok(Transformed::yes(Arc::new(chosen) as Arc<dyn ExecutionPlan>))
        })
        .data()
    }

    fn name(&self) -> &str {
        NAME
    }

    fn schema_check(&self) -> bool {
        true
    }
}

/// The mode for `join` by its sides' estimated row counts (no estimate:
/// DataFusion's thresholds decide). `grouped`: an aggregation over its
/// output groups by exactly its keys.
fn choose(join: &HashJoinExec, grouped: bool, config: &ConfigOptions) -> Result<Option<PartitionMode>> {
    let statistics = StatisticsContext::new();
    let (left, right) = (
        statistics.compute(join.left().as_ref(), &StatisticsArgs::new())?,
        statistics.compute(join.right().as_ref(), &StatisticsArgs::new())?,
    );
    let (Some(&left_rows), Some(&right_rows)) = (left.num_rows.get_value(), right.num_rows.get_value()) else {
        return Ok(None);
    };
    let (small, large) = (left_rows.min(right_rows), left_rows.max(right_rows));
    if grouped {
        // A build side DataFusion collects anyway (under its thresholds)
        // stays collected: the join's output, cut down by the partial
        // aggregation, is the cheaper thing to repartition.
        let smaller = if left_rows <= right_rows { &left } else { &right };
        let optimizer = &config.optimizer;
        let tiny = match smaller.total_byte_size.get_value() {
            Some(&bytes) => bytes < optimizer.hash_join_single_partition_threshold,
            None => small < optimizer.hash_join_single_partition_threshold_rows,
        };
        return Ok((!tiny).then_some(PartitionMode::Partitioned));
    }
    let partitions = config.execution.target_partitions;
    let collect =
        small.saturating_mul(BUILD_PER_REPARTITION).saturating_mul(partitions - 1) <= small.saturating_add(large);
    Ok(collect.then_some(PartitionMode::CollectLeft))
}

/// What inserting a row into a hash table costs against hashing and
/// copying it to its partition: the table is probed at random, the copy
/// streams.
const BUILD_PER_REPARTITION: usize = 2;

fn address(plan: &Arc<dyn ExecutionPlan>) -> usize {
    Arc::as_ptr(plan).cast::<()>() as usize
}

/// The join under `aggregate` (through projections and filters) whose rows, partitioned by its keys, are already grouped as
/// the aggregation needs: exactly its group columns are one side's join
/// keys. Partitioned, that join feeds the aggregation without a second
/// repartition (TPC-H q13: `customer LEFT JOIN orders … GROUP BY
/// c_custkey` took 1.2× as long collected, its 1.5M output rows then
/// repartitioned for the aggregation).
fn join_partitioned_for(aggregate: &AggregateExec) -> Option<Arc<dyn ExecutionPlan>> {
    let column = |expr: &Arc<dyn PhysicalExpr>| expr.downcast_ref::<Column>().map(Column::index);
    if !matches!(aggregate.mode(), AggregateMode::Partial | AggregateMode::Single | AggregateMode::SinglePartitioned)
        || !aggregate.group_expr().is_single()
        || aggregate.group_expr().expr().is_empty()
    {
        return None;
    }
    let mut columns = aggregate.group_expr().expr().iter().map(|(expr, _)| column(expr)).collect::<Option<Vec<_>>>()?;
    let mut input = Arc::clone(aggregate.input());
    loop {
        if let Some(projection) = input.downcast_ref::<ProjectionExec>() {
            columns = columns.iter().map(|&c| column(&projection.expr().get(c)?.expr)).collect::<Option<_>>()?;
            input = Arc::clone(projection.input());
        } else if let Some(filter) = input.downcast_ref::<FilterExec>() {
            if let Some(projection) = filter.projection() {
                columns = columns.iter().map(|&c| projection.get(c).copied()).collect::<Option<_>>()?;
            }
            input = Arc::clone(filter.input());
        } else {
            break;
        }
    }
    let join = input.downcast_ref::<HashJoinExec>()?;
    if let Some(projection) = &join.projection {
        columns = columns.iter().map(|&c| projection.get(c).copied()).collect::<Option<_>>()?;
    }
    let (_, sides) = build_join_schema(&join.left().schema(), &join.right().schema(), join.join_type());
    let columns = columns.iter().map(|&c| sides.get(c)).collect::<Option<Vec<_>>>()?;
    let side = columns.first()?.side;
    if columns.iter().any(|c| c.side != side) || !matches!(side, JoinSide::Left | JoinSide::Right) {
        return None;
    }
    let keys = join
        .on()
        .iter()
        .map(|(left, right)| column(if side == JoinSide::Left { left } else { right }))
        .collect::<Option<HashSet<_>>>()?;
    let grouped = columns.iter().map(|c| c.index).collect::<HashSet<_>>();
    (grouped == keys).then_some(input)
}

/// DataFusion's physical optimizer rules with [`CostBasedJoinMode`] just
/// before `JoinSelection` (which resolves the modes left to it), and
/// [`super::filters::CheapConjunctsFirst`] and [`super::filters::ProbeScans`] last.
pub fn physical_rules() -> Vec<Arc<dyn PhysicalOptimizerRule + Send + Sync>> {
    let mut rules = datafusion::physical_optimizer::optimizer::PhysicalOptimizer::new().rules;
    let at = rules.iter().position(|rule| rule.name() == "join_selection").unwrap_or(0);
    rules.insert(at, Arc::new(CostBasedJoinMode));
    rules.push(Arc::new(super::filters::CheapConjunctsFirst));
    rules.push(Arc::new(super::filters::ProbeScans));
    rules
}
