//! The [`ViewMaintainer`]: one task per materialized view that follows its
//! sources' commits and commits the view's changes.
//!
//! A step advances one source from snapshot `p` to `q`: as many of its
//! pending commits as add up to `views.step_rows` changelog rows (at least
//! one), so a lagging view catches up in few, bounded steps, each committed
//! with the view's rows and the new positions. The changelog streams
//! through a step in pieces of at most that many rows (one commit bigger
//! than that is read in pieces): what a step holds across pieces is its
//! per-group deltas or touched groups, never the change's rows. Steps write
//! by key (upsert the new row, delete the old one), computed from the
//! sources as of recorded snapshots, so replaying a step after a crash
//! writes the same rows again: exactly once by construction.

use std::collections::HashMap;
use std::sync::Arc;

use datafusion::arrow::array::{Array, ArrayRef, AsArray, BinaryArray, Int64Array, RecordBatch};
use datafusion::arrow::compute::concat_batches;
use datafusion::arrow::datatypes::{DataType, Field, Int8Type, Schema, SchemaRef};
use datafusion::arrow::row::{RowConverter, SortField};
use datafusion::catalog::{MemTable, TableProvider};
use datafusion::common::ScalarValue;
use datafusion::datasource::provider_as_source;
use datafusion::logical_expr::LogicalPlanBuilder;
use datafusion::prelude::SessionContext;
use futures::StreamExt;
use streamhouse_storage as storage;
use tokio_util::sync::CancellationToken;

use super::arrange::{Arrangement, Arrangements, Begin};
use super::differ::{Differ, take_rows};
use super::distinct::{self, DistinctTable};
use super::groups::{Entry, GroupTable};
use super::plan::{At, GroupState, Rewritten, Source, ViewPlan, WEIGHT};
use super::probe::{Prober, reads_snapshots, reads_table, wanted_arrangements};
use super::spares::SpareTable;
use super::state::{self, Delta, Group};
use super::{KeyLayout, MaterializedView, POSITIONS_PROPERTY, Progress};
use crate::catalog::BatchQueriesRef;
use crate::config::ViewsConfig;
use crate::error::{Error, Result};
use crate::now_ms;

mod grouped;
mod top_n;

use grouped::window_closed;

/// Rows per write while backfilling.
const BACKFILL_BATCH_ROWS: usize = 64 * 1024;

/// Keeps one materialized view up to date.
pub struct ViewMaintainer {
    view: Arc<MaterializedView>,
    plan: ViewPlan,
    ctx: SessionContext,
    /// Encodes key columns into the bytes that identify a row.
    keys: KeyEncoder,
    /// Encodes the leading group (partition) keys of the key.
    groups: KeyEncoder,
    /// Encodes visible columns, to tell a changed row from an unchanged one.
    values: RowConverter,
    storage_schema: SchemaRef,
    /// Where the hidden group state starts in the view's table, when it keeps state.
    state_offset: Option<usize>,
    /// The group state of a view with a HAVING ([`super::groups`]), once opened.
    group_table: Option<GroupTable>,
    /// The value counts of a view with COUNT(DISTINCT) state ([`super::distinct`]), once opened.
    distinct_table: Option<DistinctTable>,
    /// A view that emits on window close and keeps its open windows as
    /// state: the group column holding `window_end`.
    window_end: Option<usize>,
    /// Join inputs indexed by join key ([`super::arrange`]).
    arrangements: Vec<Arrangement>,
    /// The warehouse's shared arrangements ([`ViewMaintainer::arrange`]).
    registry: Arc<Arrangements>,
    config: ViewsConfig,
    /// Per source: its changes are taken whole, not in pieces ([`ViewMaintainer::find_whole_changes`]).
    whole_changes: Vec<bool>,
    /// A Top-N view's hidden columns ([`super::plan::TopN`]).
    top_n: Option<TopNState>,
    /// A Top-N view's spares ([`super::spares`]), once opened.
    spares: std::sync::Mutex<Option<Arc<SpareTable>>>,
}

/// Where a Top-N view keeps its window input rows, and how a row is told
/// from another.
struct TopNState {
    /// N.
    limit: u64,
    /// The hidden columns, after the visible ones.
    fields: Vec<Field>,
    /// The window input's key among them.
    keys: Vec<usize>,
    /// Encodes those key columns.
    identity: RowConverter,
    /// Encodes all of them.
    values: RowConverter,
}

impl TopNState {
    fn identities(&self, carried: &[ArrayRef]) -> Result<Vec<Vec<u8>>> {
        let keys: Vec<ArrayRef> = self.keys.iter().map(|&k| Arc::clone(&carried[k])).collect();
        Ok(self.identity.convert_columns(&keys)?.iter().map(|r| r.as_ref().to_vec()).collect())
    }
}

/// What a step gathers from the pieces of its change.
#[derive(Default)]
struct Work {
    /// Some piece held rows (not only a compaction's empty changelog).
    changed: bool,
    /// Top-N views: the change of the window's input
    /// ([`ViewPlan::window_change`]), while it is at most `step_rows` rows
    /// (then only the touched partitions are kept, in `groups`).
    window_change: Vec<RecordBatch>,
    /// Group state views: the change's deltas, merged per group.
    deltas: Vec<(Vec<u8>, Delta)>,
    /// Group state views with COUNT(DISTINCT): the change's weighted
    /// (group, value) pairs ([`super::distinct`]).
    distinct: HashMap<distinct::Pair, i64>,
    /// Recomputing views: the groups the change touches.
    groups: Vec<RecordBatch>,
    /// A Top-N view's change outgrew `step_rows`.
    overflowed: bool,
}

/// Where a fill's view rows go.
enum Target<'a, 'b> {
    /// Nowhere: only the state tables are filled.
    None,
    /// Upserted in this transaction (a backfill).
    Table(Box<storage::Transaction<'b>>),
    /// Compared with the view's rows, the differences staged in the
    /// transaction (a full refresh).
    Differ(&'a mut Differ, &'a mut storage::Transaction<'b>),
}

impl Target<'_, '_> {
    async fn write(&mut self, rows: &RecordBatch) -> Result<()> {
        match self {
            Target::None => Ok(()),
            Target::Table(txn) => Ok(txn.write(rows, &vec![storage::ValueKind::Upsert; rows.num_rows()]).await?),
            Target::Differ(differ, txn) => differ.add(rows, txn).await,
        }
    }
}

/// Key columns to bytes (the hidden `__key`, and the identity of a row).
struct KeyEncoder {
    converter: Option<RowConverter>,
}

impl KeyEncoder {
    fn new(types: &[DataType]) -> Result<Self> {
        let converter = if types.is_empty() {
            None
        } else {
            Some(RowConverter::new(types.iter().map(|t| SortField::new(t.clone())).collect())?)
        };
        Ok(Self { converter })
    }

    fn encode(&self, columns: &[ArrayRef], rows: usize) -> Result<Vec<Vec<u8>>> {
        match &self.converter {
            None => Ok(vec![Vec::new(); rows]),
            Some(converter) => Ok(converter.convert_columns(columns)?.iter().map(|r| r.as_ref().to_vec()).collect()),
        }
    }
}

impl std::fmt::Debug for ViewMaintainer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ViewMaintainer").field("view", &self.view.name).finish_non_exhaustive()
    }
}

/// The key layout and column types a plan gives a view.
///
/// # Errors
/// Plans that do not rebuild (a bug).
pub fn derive_key(plan: &ViewPlan) -> Result<(KeyLayout, Vec<DataType>)> {
    let at: Vec<At> = plan.occurrences.iter().map(|_| At::Snapshot(0)).collect();
    let rewritten = plan.full(&at, None)?;
    let schema = rewritten.plan.schema();
    let types = rewritten.keys.iter().map(|&k| schema.field(k).data_type().clone()).collect();
    let visible = !rewritten.keys.is_empty()
        && rewritten.keys.iter().all(|&k| k < plan.visible && !schema.field(k).is_nullable());
    let mut distinct = rewritten.keys.clone();
    distinct.sort_unstable();
    distinct.dedup();
    if visible && distinct.len() == rewritten.keys.len() {
        Ok((KeyLayout::Visible(rewritten.keys), types))
    } else {
        Ok((KeyLayout::Hidden, types))
    }
}

/// The optimizer rules a step's plan runs through. A step's plan is the
/// view's plan — optimized once, when the view was planned — with its scans
/// replaced by snapshot reads, the change and in-memory probe results, and
/// columns added: what is left to do is push projections and filters into
/// those new inputs, keep join conditions as keys, simplify what the
/// rewriting wrote, and turn `DISTINCT` into an aggregate (the physical
/// planner needs that). Running every rule again, up to three passes, cost
/// ≈ 5% of all CPU samples of Nexmark q9 at 100k events/s.
const STEP_RULES: &[&str] = &[
    "replace_distinct_aggregate",
    "simplify_expressions",
    "extract_equijoin_predicate",
    "push_down_filter",
    "optimize_projections",
];

/// The context steps run in: `ctx` with only [`STEP_RULES`].
fn step_context(ctx: &SessionContext) -> SessionContext {
    let state = ctx.state();
    let rules: Vec<_> = state.optimizers().iter().filter(|rule| STEP_RULES.contains(&rule.name())).cloned().collect();
    // Step plans are run again ([`super::steps`]): no filters that a join
    // fills in while it runs (they pay off only on scans of files anyway).
    let mut config = state.config().clone();
    config.options_mut().optimizer.enable_dynamic_filter_pushdown = false;
    config.options_mut().optimizer.enable_join_dynamic_filter_pushdown = false;
    config.options_mut().optimizer.enable_topk_dynamic_filter_pushdown = false;
    config.options_mut().optimizer.enable_aggregate_dynamic_filter_pushdown = false;
    let state = datafusion::execution::SessionStateBuilder::new_from_existing(state)
        .with_config(config)
        .with_optimizer_rules(rules)
        .build();
    SessionContext::new_with_state(state)
}

impl ViewMaintainer {
    /// A maintainer of `view`, whose query is `plan`.
    ///
    /// # Errors
    /// The plan no longer gives the view's stored key (the definition
    /// changed meaning, e.g. after an upgrade).
    pub fn new(
        view: Arc<MaterializedView>,
        mut plan: ViewPlan,
        ctx: SessionContext,
        config: ViewsConfig,
    ) -> Result<Self> {
        if !view.definition.top_n {
            // Stored without Top-N state (or not Top-N): partitions recomputed, keyed as stored.
            plan.top_n = None;
        }
        let (layout, key_types) = derive_key(&plan)?;
        if layout != view.definition.key {
            return Err(Error::internal(format!(
                "the query of materialized view {} no longer derives the key it was stored with",
                view.name
            )));
        }
        let storage_schema = view.storage.schema();
        let value_fields =
            storage_schema.fields()[..plan.visible].iter().map(|f| SortField::new(f.data_type().clone())).collect();
        let group_keys = plan.group_keys().min(key_types.len());
        let state_offset = if view.definition.state {
            let fields = state::state_fields(&plan)?;
            let offset = storage_schema.fields().len().saturating_sub(fields.len());
            let stored: Vec<&Field> = storage_schema.fields()[offset..].iter().map(AsRef::as_ref).collect();
            if plan.state.is_none() || stored != fields.iter().collect::<Vec<_>>() {
                return Err(Error::internal(format!(
                    "the query of materialized view {} no longer derives the state it was stored with",
                    view.name
                )));
            }
            Some(offset)
        } else {
            None
        };
        let top_n = match &plan.top_n {
            Some(top) => {
                let (fields, keys) = plan.carried_layout()?;
                let stored: Vec<&Field> = storage_schema.fields()[plan.visible..].iter().map(AsRef::as_ref).collect();
                if stored != fields.iter().collect::<Vec<_>>() {
                    return Err(Error::internal(format!(
                        "the query of materialized view {} no longer derives the Top-N state it was stored with",
                        view.name
                    )));
                }
                let identity =
                    RowConverter::new(keys.iter().map(|&k| SortField::new(fields[k].data_type().clone())).collect())?;
                let values = RowConverter::new(fields.iter().map(|f| SortField::new(f.data_type().clone())).collect())?;
                Some(TopNState { limit: top.limit, fields, keys, identity, values })
            }
            None => None,
        };
        if view.definition.group_table
            && plan.state.as_ref().is_none_or(|s| !s.having && !view.definition.emit_on_window_close)
        {
            return Err(Error::internal(format!(
                "the query of materialized view {} no longer derives the group state it was stored with",
                view.name
            )));
        }
        let keeps_state = state_offset.is_some() || view.definition.group_table;
        let window_end = if view.definition.group_table && view.definition.emit_on_window_close {
            let column = view.definition.columns.iter().position(|c| c == "window_end");
            Some(column.and_then(|c| plan.group_column_of(c)).ok_or_else(|| {
                Error::internal(format!("materialized view {} no longer groups by its window_end", view.name))
            })?)
        } else {
            None
        };
        view.set_maintenance(match (keeps_state, &top_n, plan.is_grouped()) {
            (true, _, _) => "group state",
            (false, Some(_), _) => "top-n state",
            (false, None, true) => "recompute groups",
            (false, None, false) => "linear",
        });
        let mut maintainer = Self {
            arrangements: Vec::new(),
            registry: Arc::default(),
            state_offset,
            group_table: None,
            distinct_table: None,
            window_end,
            groups: KeyEncoder::new(&key_types[..group_keys])?,
            keys: KeyEncoder::new(&key_types)?,
            values: RowConverter::new(value_fields)?,
            storage_schema,
            view,
            plan,
            ctx: step_context(&ctx),
            config,
            whole_changes: Vec::new(),
            top_n,
            spares: std::sync::Mutex::new(None),
        };
        maintainer.whole_changes = maintainer.find_whole_changes()?;
        Ok(maintainer)
    }

    fn sources(&self) -> &[Source] {
        &self.plan.sources
    }

    fn latest(source: &Source) -> u64 {
        source.table.storage().latest_snapshot().map_or(0, |s| s.id)
    }

    /// Opens (building where needed) the arrangements the view's joins
    /// probe, each holding its source as of `positions`: shared with the
    /// other views of `registry` where they can be.
    ///
    /// # Errors
    /// Storage failures.
    pub async fn arrange(&mut self, positions: &[u64], registry: &Arc<Arrangements>) -> Result<()> {
        self.registry = Arc::clone(registry);
        let wants_groups = self.view.definition.group_table && self.group_table.is_none();
        let wants_distinct = self.keeps_distinct() && self.distinct_table.is_none();
        if wants_groups || wants_distinct {
            let store = Arc::clone(self.view.table().store());
            if wants_groups {
                let fields = state::state_fields(&self.plan)?;
                let state = self.plan.state.as_ref().ok_or_else(|| Error::internal("view keeps no group state"))?;
                self.group_table = GroupTable::open(&store, &self.view.dir, state, &fields).await;
            }
            if wants_distinct {
                self.distinct_table = DistinctTable::open(&store, &self.view.dir).await;
            }
            let missing = (self.view.definition.group_table && self.group_table.is_none())
                || (self.keeps_distinct() && self.distinct_table.is_none());
            if missing || self.group_state_lead(positions).is_none() {
                // Missing, damaged or out of step: built again from the sources.
                self.create_state_tables().await?;
                self.fill(positions, false).await?;
            }
        }
        // Steps that evaluate groups again (recomputed ones, or a MIN / MAX
        // whose value was retracted) read the aggregate's input by group key.
        let recomputes = self.plan.is_grouped()
            && self.group_state().is_none_or(|state| {
                state
                    .aggregates
                    .iter()
                    .any(|a| matches!(a.kind, super::plan::StateKind::Min | super::plan::StateKind::Max))
            });
        let grouping = super::plan::grouping(&self.plan.plan).filter(|_| recomputes);
        let groups = grouping.as_ref().map(|(keys, input)| (keys.as_slice(), *input));
        for (source, columns) in wanted_arrangements(&self.plan.plan, self.sources(), groups) {
            let position = positions.get(source).copied().unwrap_or(0);
            // A view that emits on window close steps one commit at a time,
            // which a shared arrangement advanced by others may not hold.
            let share = self.window_end.is_none();
            let arrangement =
                Arrangement::open(registry, &self.view.dir, source, &self.sources()[source], columns, position, share)
                    .await?;
            self.arrangements.push(arrangement);
        }
        // Views advancing several shared arrangements of a source lock them in one order.
        self.arrangements.sort_by_cached_key(|a| (a.source, a.dir().to_string()));
        self.view.set_arrangements(self.arrangements.iter().map(|a| a.describe(&self.sources()[a.source])).collect());
        Ok(())
    }

    /// Runs a step's plan, its joins probing by key where they can.
    async fn execute(&self, plan: datafusion::logical_expr::LogicalPlan) -> Result<Vec<RecordBatch>> {
        use std::sync::atomic::Ordering;
        let mut prober = Prober {
            ctx: &self.ctx,
            plans: &self.view.step_plans,
            sources: self.sources(),
            arrangements: &self.arrangements,
            probes: 0,
        };
        let plan = prober.rewrite(plan).await?;
        self.view.probes.fetch_add(prober.probes, Ordering::Relaxed);
        self.view.scans.fetch_add(reads_snapshots(&plan) as u64, Ordering::Relaxed);
        self.run_plan(plan).await
    }

    /// Runs a step's plan as it is (planned once per shape, [`super::steps`]).
    async fn run_plan(&self, plan: datafusion::logical_expr::LogicalPlan) -> Result<Vec<RecordBatch>> {
        self.view.step_plans.collect(&self.ctx, plan).await
    }

    /// The positions the view's latest commit recorded; `None` before the
    /// backfill committed.
    ///
    /// # Errors
    /// A damaged positions property.
    pub fn recorded_positions(&self) -> Result<Option<Vec<u64>>> {
        let Some(snapshot) = self.view.table().latest_snapshot() else { return Ok(None) };
        let Some(text) = snapshot.properties.get(POSITIONS_PROPERTY) else { return Ok(None) };
        self.parse_positions(text).map(Some)
    }

    /// Per source, its position in a positions property.
    fn parse_positions(&self, text: &str) -> Result<Vec<u64>> {
        let recorded: HashMap<String, u64> = serde_json::from_str(text)
            .map_err(|e| Error::internal(format!("view {}: damaged {POSITIONS_PROPERTY}: {e}", self.view.name)))?;
        self.sources()
            .iter()
            .map(|s| {
                recorded.get(&s.name.to_string()).copied().ok_or_else(|| {
                    Error::internal(format!("view {}: no recorded position for source {}", self.view.name, s.name))
                })
            })
            .collect::<Result<Vec<_>>>()
    }

    /// Where the group state table stands against the view at `positions`:
    /// `Some(None)` at them (or behind: steps that changed no group commit
    /// only the view); `Some(Some((source, to)))` one step ahead (a crash or
    /// failure came between its commit and the view's: that step, source
    /// `source` up to `to`, is replayed first); `None` further ahead or
    /// without a state table.
    fn group_state_lead(&self, positions: &[u64]) -> Option<Option<(usize, u64)>> {
        let tables = [
            self.group_table.as_ref().map(GroupTable::positions),
            self.distinct_table.as_ref().map(DistinctTable::positions),
        ];
        if tables.iter().all(Option::is_none) {
            return None;
        }
        let mut lead = None;
        for recorded in tables.into_iter().flatten() {
            let recorded = self.parse_positions(&recorded?).ok()?;
            let ahead: Vec<usize> = (0..positions.len()).filter(|&i| recorded[i] > positions[i]).collect();
            match ahead.as_slice() {
                [] => {}
                [source] if lead.is_none_or(|l| l == (*source, recorded[*source])) => {
                    lead = Some((*source, recorded[*source]));
                }
                _ => return None,
            }
        }
        Some(lead)
    }

    /// Whether the view keeps COUNT(DISTINCT) value counts.
    fn keeps_distinct(&self) -> bool {
        self.group_state().is_some_and(|state| !state.distinct_functions().is_empty())
    }

    /// New, empty state tables (group state, value counts) for the view,
    /// replacing the ones it has.
    async fn create_state_tables(&mut self) -> Result<()> {
        let store = Arc::clone(self.view.table().store());
        if let Some(table) = self.group_table.take() {
            table.close().await;
        }
        if let Some(table) = self.distinct_table.take() {
            table.close().await;
        }
        if self.view.definition.group_table {
            let fields = state::state_fields(&self.plan)?;
            let state = self.plan.state.as_ref().ok_or_else(|| Error::internal("view keeps no group state"))?;
            self.group_table = Some(GroupTable::create(&store, &self.view.dir, state, &fields).await?);
        }
        if self.keeps_distinct() {
            self.distinct_table = Some(DistinctTable::create(&store, &self.view.dir).await?);
        }
        Ok(())
    }

    /// Keeps the sources' snapshots from `positions` on from expiring.
    fn hold(&self, positions: &[u64]) -> Vec<storage::SnapshotHold> {
        self.sources().iter().zip(positions).map(|(s, p)| s.table.storage().hold_snapshots((*p).max(1))).collect()
    }

    fn positions_property(&self, positions: &[u64]) -> String {
        let map: std::collections::BTreeMap<String, u64> =
            self.sources().iter().zip(positions).map(|(s, p)| (s.name.to_string(), *p)).collect();
        serde_json::to_string(&map).unwrap_or_default()
    }

    /// Publishes the view's progress: it reflects the sources at `positions`.
    pub fn publish(&self, positions: &[u64], error: Option<String>) {
        let view_snapshot = self.view.table().latest_snapshot().map_or(0, |s| s.id);
        self.view.progress.send_modify(|p| {
            *p = Progress {
                positions: positions.to_vec(),
                view_snapshot,
                updated_ms: now_ms(),
                error,
                step: None,
                backfilled: None,
            }
        });
    }

    /// Fills the view from its sources' latest snapshots and commits it with
    /// those positions. Rows stream through in batches.
    ///
    /// # Errors
    /// Query and storage failures.
    pub async fn backfill(&mut self) -> Result<Vec<u64>> {
        let positions: Vec<u64> = self.sources().iter().map(Self::latest).collect();
        let _holds = self.hold(&positions);
        self.create_state_tables().await?;
        self.fill(&positions, true).await?;
        self.publish(&positions, None);
        Ok(positions)
    }

    /// Computes the view's rows (with `view`) and its state tables (where
    /// it has them, new and empty) from the sources at `positions`, and
    /// commits them with those positions: the state tables first.
    async fn fill(&self, positions: &[u64], view: bool) -> Result<()> {
        let at: Vec<At> = self.plan.occurrences.iter().map(|&s| At::Snapshot(positions[s])).collect();
        if let Some(table) = &self.distinct_table {
            self.fill_distinct(table, &at, positions).await?;
        }
        if !view && self.group_table.is_none() {
            return Ok(());
        }
        let mut target =
            if view { Target::Table(Box::new(self.view.table().begin().await?.blind())) } else { Target::None };
        self.fill_rows(positions, &mut target, true, None).await?;
        if let Target::Table(txn) = target {
            let mut txn = *txn;
            txn.set_property(POSITIONS_PROPERTY, self.positions_property(positions));
            txn.commit().await?;
        }
        Ok(())
    }

    /// A full refresh's rows ([`super::refresh`]): the view's rows from the
    /// sources at `positions`, through `differ` into `txn`, the query run
    /// by `batch` with at most `limit` bytes. State tables are not written
    /// (a continuous maintainer rebuilds them when it takes over). Returns
    /// how the query ran.
    ///
    /// # Errors
    /// Query and storage failures.
    pub async fn refill(
        &self,
        positions: &[u64],
        differ: &mut Differ,
        txn: &mut storage::Transaction<'_>,
        batch: &BatchQueriesRef,
        limit: Option<usize>,
    ) -> Result<String> {
        let mut target = Target::Differ(differ, txn);
        self.fill_rows(positions, &mut target, false, Some((batch, limit))).await
    }

    /// Rebuilds the state tables (group state, value counts) at `positions`,
    /// where the view has them: after full refreshes, which do not keep
    /// them, and before following the sources.
    ///
    /// # Errors
    /// Query and storage failures.
    pub async fn rebuild_state(&mut self, positions: &[u64]) -> Result<bool> {
        if !self.view.definition.group_table && !self.keeps_distinct() {
            return Ok(false);
        }
        self.create_state_tables().await?;
        self.fill(positions, false).await?;
        Ok(true)
    }

    /// The sources the plan reads.
    pub fn plan_sources(&self) -> &[Source] {
        self.sources()
    }

    /// Streams the view's rows at `positions` into `target` (and, with
    /// `state`, the group state into the group table); the query runs in
    /// the step context, or by `batch` when given. Returns how it ran.
    async fn fill_rows(
        &self,
        positions: &[u64],
        target: &mut Target<'_, '_>,
        state: bool,
        batch: Option<(&BatchQueriesRef, Option<usize>)>,
    ) -> Result<String> {
        let at: Vec<At> = self.plan.occurrences.iter().map(|&s| At::Snapshot(positions[s])).collect();
        let rewritten = self.plan.full(&at, None)?;
        let mut state_txn = match (&self.group_table, state) {
            (Some(groups), true) => Some(groups.begin().await?.blind()),
            _ => None,
        };
        let view = !matches!(target, Target::None);
        let query = if self.group_state().is_some() { self.plan.parts(&at, None)? } else { rewritten.plan.clone() };
        let (mut stream, how) = match batch {
            Some((runner, limit)) => runner.run(self.ctx.state(), query, limit).await?,
            None => (self.ctx.execute_logical_plan(query).await?.execute_stream().await?, String::new()),
        };
        let mut pending: Vec<RecordBatch> = Vec::new();
        let mut pending_rows = 0;
        let mut written = 0u64;
        self.view.progress.send_modify(|p| p.backfilled = Some(0));
        let closed = if self.view.definition.emit_on_window_close { self.watermark(positions).await? } else { None };
        while let Some(batch) = stream.next().await {
            let batch = batch?;
            if let Some(state) = self.group_state() {
                // The state of every group, from which its row follows.
                let groups: Vec<(Vec<u8>, Vec<ScalarValue>, Group)> = self
                    .group_deltas(state, std::slice::from_ref(&batch))?
                    .into_iter()
                    .map(|(key, d)| (key, d.values.clone(), d.into_group()))
                    .filter(|(_, _, g)| g.rows > 0 || self.plan.group_keys() == 0)
                    .collect();
                // A view that emits on window close shows closed windows and keeps open ones as state.
                let (to_state, to_view): (Vec<&Entry>, Vec<&Entry>) = match self.window_end {
                    Some(end) => {
                        let mut closed_now = Vec::new();
                        let mut open = Vec::new();
                        for entry in &groups {
                            if window_closed(&entry.1[end], closed)? {
                                closed_now.push(entry)
                            } else {
                                open.push(entry)
                            }
                        }
                        (open, closed_now)
                    }
                    None => (groups.iter().collect(), groups.iter().collect()),
                };
                if let (Some(groups_table), Some(state_txn)) = (&self.group_table, &mut state_txn) {
                    let keyed: Vec<(&[u8], &[ScalarValue], &Group)> =
                        to_state.iter().map(|(k, v, g)| (k.as_slice(), v.as_slice(), g)).collect();
                    let rows = groups_table.rows(state, &keyed)?;
                    if rows.num_rows() > 0 {
                        state_txn.write(&rows, &vec![storage::ValueKind::Upsert; rows.num_rows()]).await?;
                    }
                }
                if !view {
                    continue;
                }
                let groups: Vec<(Vec<ScalarValue>, Group)> =
                    to_view.into_iter().map(|(_, v, g)| (v.clone(), g.clone())).collect();
                let rows = self.group_rows(state, &groups).await?;
                pending_rows += rows.num_rows();
                pending.push(rows);
            } else {
                let mut rows = self.view_rows(&batch, &rewritten)?;
                if self.view.definition.emit_on_window_close {
                    rows = self.closed_windows(&rows, None, closed)?;
                }
                pending_rows += rows.num_rows();
                pending.push(rows);
            }
            if pending_rows >= BACKFILL_BATCH_ROWS {
                let rows = concat_batches(&self.storage_schema, &pending)?;
                target.write(&rows).await?;
                pending.clear();
                pending_rows = 0;
                written += rows.num_rows() as u64;
                self.view.progress.send_modify(|p| p.backfilled = Some(written));
            }
        }
        if pending_rows > 0 {
            let rows = concat_batches(&self.storage_schema, &pending)?;
            target.write(&rows).await?;
        }
        self.view.progress.send_modify(|p| p.backfilled = None);
        if let Some(state_txn) = state_txn {
            GroupTable::commit(state_txn, self.positions_property(positions)).await?;
        }
        Ok(how)
    }

    /// Follows the sources until `stop` is cancelled. Failed steps are
    /// retried with back-off; the error is published meanwhile.
    pub async fn run(mut self, positions: Vec<u64>, stop: CancellationToken) {
        self.follow(positions, stop).await;
        for arrangement in std::mem::take(&mut self.arrangements) {
            arrangement.close(&self.registry).await;
        }
        if let Some(groups) = &self.group_table {
            groups.close().await;
        }
        if let Some(table) = &self.distinct_table {
            table.close().await;
        }
        let spares = self.spares.lock().ok().and_then(|mut s| s.take());
        if let Some(table) = spares {
            table.close().await;
        }
    }

    async fn follow(&self, mut positions: Vec<u64>, stop: CancellationToken) {
        self.publish(&positions, None);
        let holds = self.hold(&positions);
        let mut watches: Vec<_> = self.sources().iter().map(|s| s.table.storage().watch_commits()).collect();
        let mut failures = 0u32;
        loop {
            if stop.is_cancelled() {
                return;
            }
            let mut advanced = false;
            let mut failed = None;
            // A step whose group state committed without the view's commit comes first, exactly as it was.
            let replay = self.group_state_lead(&positions).flatten();
            for source in 0..self.sources().len() {
                let latest = Self::latest(&self.sources()[source]);
                if latest <= positions[source] || replay.is_some_and(|(s, _)| s != source) {
                    continue;
                }
                let from = positions[source];
                let end = replay.map(|(_, to)| to);
                let stepped = match self.step_end(source, from, end.unwrap_or(latest), end.is_some()).await {
                    Ok((to, rows)) => self.step(source, from, to, rows, &mut positions).await,
                    Err(e) => Err(e),
                };
                match stepped {
                    // A shared arrangement moved past the step's end meanwhile: end elsewhere.
                    Ok(false) if end.is_none() => advanced = true,
                    Ok(false) => {
                        failed = Some(Error::internal(format!(
                            "materialized view {} cannot replay its step to snapshot {} of {}: a shared arrangement moved past it",
                            self.view.name,
                            end.unwrap_or_default(),
                            self.sources()[source].name
                        )));
                        break;
                    }
                    Ok(true) => {
                        holds[source].advance(positions[source].max(1));
                        for arrangement in self.arrangements.iter().filter(|a| a.source == source) {
                            arrangement.release_before(positions[source]);
                        }
                        advanced = true;
                    }
                    Err(e) => {
                        failed = Some(e);
                        break;
                    }
                }
            }
            if let Some(e) = failed {
                failures += 1;
                tracing::warn!(view = %self.view.name, error = %e, failures, "materialized view step failed");
                self.publish(&positions, (failures >= 3).then(|| e.message().to_string()));
                let pause = std::time::Duration::from_millis(100 * 2u64.pow(failures.min(6)));
                tokio::select! {
                    () = stop.cancelled() => return,
                    () = tokio::time::sleep(pause) => continue,
                }
            }
            if failures > 0 {
                failures = 0;
                self.publish(&positions, None);
            }
            if advanced {
                continue;
            }
            let changed = futures::future::select_all(watches.iter_mut().map(|w| Box::pin(w.changed())));
            tokio::select! {
                () = stop.cancelled() => return,
                (result, _, _) = changed => {
                    if result.is_err() {
                        // A source was dropped (it cannot be while the view exists, unless the view is going too).
                        return;
                    }
                }
            }
        }
    }

    /// Per source: whether a step must take the source's change whole,
    /// because its plan pairs the change with the source's own snapshots
    /// (a self join; the other side of an outer or anti join, whose matches
    /// before and after the change it compares), which pieces of one
    /// change cannot do. Other changes are taken in pieces.
    fn find_whole_changes(&self) -> Result<Vec<bool>> {
        (0..self.sources().len())
            .map(|source| {
                let scans = self.plan.occurrences_of(source);
                if scans.len() != 1 {
                    return Ok(scans.len() > 1);
                }
                let delta = self.delta_table(source, &[])?;
                let positions = vec![1; self.sources().len()];
                let at = self.readings(&positions, source, &scans, 0, scans[0], 1, 2, &delta);
                let plan = if self.group_state().is_some() {
                    self.plan.parts(&at, None)?
                } else if self.plan.is_grouped() {
                    self.plan.touched_groups(&at)?
                } else {
                    self.plan.change(&at)?.plan
                };
                Ok(reads_table(&plan, self.sources()[source].table.storage()))
            })
            .collect()
    }

    /// Where a step from `from` ends: after as many of the source's
    /// snapshots up to `latest` as add up to at most `step_rows` changelog
    /// rows (at least one snapshot); with `exact`, at `latest`.
    async fn step_end(&self, source: usize, from: u64, latest: u64, exact: bool) -> Result<(u64, u64)> {
        let table = self.sources()[source].table.storage();
        let limit = self.config.step_rows.max(1) as u64;
        // Windows closing on window close take one commit per step: a row
        // is late when its window had closed before its commit, whatever
        // steps the commits are taken in.
        let latest = if self.window_end.is_some() && !exact { latest.min(from + 1) } else { latest };
        let (mut to, mut rows) = (from, 0u64);
        while to < latest {
            let next = table.changelog_rows(to + 1).await?;
            if !exact && to > from && rows + next > limit {
                break;
            }
            rows += next;
            to += 1;
        }
        if exact {
            return Ok((to, rows));
        }
        let end = self.shared_step_end(source, from, to);
        while to > end {
            rows -= table.changelog_rows(to).await?;
            to -= 1;
        }
        while to < end {
            to += 1;
            rows += table.changelog_rows(to).await?;
        }
        Ok((to, rows))
    }

    /// Where a step of `source` from `from` may end, near `to`, given the
    /// positions its shared arrangements hold ([`super::arrange::step_end`]).
    fn shared_step_end(&self, source: usize, from: u64, to: u64) -> u64 {
        let held: Vec<Vec<u64>> =
            self.arrangements.iter().filter(|a| a.source == source).map(|a| a.positions_after(from)).collect();
        super::arrange::step_end(to, &held)
    }

    /// Advances source `source` from snapshot `from` to `to` (`rows`
    /// changelog rows): the source's arrangements, then the view, in one
    /// commit each. The changelog streams through in pieces of at most
    /// `step_rows` rows; what a step keeps across pieces is bounded by the
    /// groups the change touches, not by its rows.
    async fn step(&self, source: usize, from: u64, to: u64, rows: u64, positions: &mut [u64]) -> Result<bool> {
        let scans = self.plan.occurrences_of(source);
        let whole = self.whole_changes.get(source).copied().unwrap_or(true);
        let piece_rows = if whole { usize::MAX } else { self.config.step_rows };
        let mut next = positions.to_vec();
        next[source] = to;
        let mut advancing = Vec::new();
        for arrangement in self.arrangements.iter().filter(|a| a.source == source) {
            match arrangement.begin_advance(&self.sources()[source], from, to).await? {
                Begin::Advance(advance) => advancing.push(advance),
                Begin::There => {}
                Begin::Moved => return Ok(false),
            }
        }
        let table = self.view.table();
        let mut txn = table.begin().await?;
        let mut work = Work::default();
        let mut held = Vec::new();
        let mut reader = self.sources()[source].table.storage().changelog_reader(from, Some(to));
        let mut done = 0u64;
        self.view.progress.send_modify(|p| p.step = Some((0, rows)));
        loop {
            let piece = reader.next_rows(piece_rows).await?;
            if piece.is_empty() {
                break;
            }
            for arrangement in &mut advancing {
                arrangement.write(&piece).await?;
            }
            if whole {
                held.push(piece);
                continue;
            }
            done += piece.iter().map(|c| c.batch.num_rows() as u64).sum::<u64>();
            self.take_piece(&mut work, &mut txn, positions, source, &scans, from, to, &piece).await?;
            self.view.progress.send_modify(|p| p.step = Some((done, rows)));
        }
        // The arrangements first: a change taken whole probes them as of `to`.
        for arrangement in advancing {
            arrangement.commit().await?;
        }
        for piece in held {
            self.take_piece(&mut work, &mut txn, positions, source, &scans, from, to, &piece).await?;
        }
        if !work.changed {
            // Only compactions: nothing to reflect, nothing to commit.
            positions[source] = to;
            self.publish(positions, None);
            return Ok(true);
        }
        let (rows, kinds) = match (self.group_state(), work.deltas, work.groups) {
            (Some(state), deltas, _) => {
                self.update_groups(state, source, positions, &next, deltas, work.distinct).await?
            }
            (None, _, groups) if self.top_n.is_some() => {
                let step = self.update_top_n(&next, work.window_change, groups).await?;
                // The spares first: the view's commit names their version.
                let mut version = step.spares.version();
                if step.spare_rows.num_rows() > 0 {
                    version += 1;
                    step.spares.write(&step.spare_rows, &step.spare_kinds, version).await?;
                    super::groups::injected_failure()?;
                }
                txn.set_property(super::spares::VIEW_PROPERTY, version.to_string());
                (step.rows, step.kinds)
            }
            (None, _, groups) if self.plan.is_grouped() => self.regroup(positions, &next, groups).await?,
            // Linear: each piece wrote its change already.
            _ => (RecordBatch::new_empty(Arc::clone(&self.storage_schema)), vec![]),
        };
        if rows.num_rows() > 0 {
            txn.write(&rows, &kinds).await?;
        }
        txn.set_property(POSITIONS_PROPERTY, self.positions_property(&next));
        txn.commit().await?;
        positions[source] = to;
        self.publish(positions, None);
        self.schedule_maintenance();
        Ok(true)
    }

    /// Starts background compaction and snapshot expiry of the view's table
    /// and its hidden tables (as a write to a table does), so that a step's
    /// write stalls on too many sorted runs only when compaction cannot keep
    /// up, not as the only time its tables are compacted; and their old
    /// snapshots expire (those a step still reads are held).
    fn schedule_maintenance(&self) {
        storage::Table::schedule_maintenance(self.view.table());
        for arrangement in &self.arrangements {
            arrangement.schedule_maintenance();
        }
        if let Some(table) = &self.group_table {
            table.schedule_maintenance();
        }
        if let Some(table) = &self.distinct_table {
            table.schedule_maintenance();
        }
        if let Some(spares) = crate::lock(&self.spares).as_ref() {
            spares.schedule_maintenance();
        }
    }

    /// Takes in one piece of a step's change: a linear view writes the
    /// piece's change to the step's transaction (pieces in commit order, so
    /// a later piece's write of a key replaces an earlier one's); a view with
    /// group state merges the piece's per-group deltas; a recomputing view
    /// notes the groups it touches.
    #[allow(clippy::too_many_arguments)]
    async fn take_piece(
        &self,
        work: &mut Work,
        txn: &mut storage::Transaction<'_>,
        positions: &[u64],
        source: usize,
        scans: &[usize],
        from: u64,
        to: u64,
        piece: &[storage::ChangelogBatch],
    ) -> Result<()> {
        if piece.iter().all(|c| c.batch.num_rows() == 0) {
            return Ok(());
        }
        work.changed = true;
        let delta = self.delta_table(source, piece)?;
        if let Some(state) = self.group_state() {
            let mut parts = Vec::new();
            for (n, &scan) in scans.iter().enumerate() {
                let at = self.readings(positions, source, scans, n, scan, from, to, &delta);
                parts.extend(self.execute(self.plan.parts(&at, None)?).await?);
            }
            let mut keyed = std::mem::take(&mut work.deltas);
            keyed.extend(self.group_deltas(state, &parts)?);
            work.deltas = state::merge_by_group(state, keyed)?;
            for j in state.distinct_functions() {
                for (n, &scan) in scans.iter().enumerate() {
                    let at = self.readings(positions, source, scans, n, scan, from, to, &delta);
                    for batch in self.execute(self.plan.distinct_parts(&at, j)?).await? {
                        let groups =
                            self.groups.encode(&batch.columns()[..self.plan.group_keys()], batch.num_rows())?;
                        distinct::merge(&mut work.distinct, distinct::pairs(j, groups, &batch)?);
                    }
                }
            }
        } else if self.top_n.is_some() && !work.overflowed {
            for (n, &scan) in scans.iter().enumerate() {
                let at = self.readings(positions, source, scans, n, scan, from, to, &delta);
                work.window_change.extend(self.execute(self.plan.window_change(&at)?).await?);
            }
            let rows: usize = work.window_change.iter().map(RecordBatch::num_rows).sum();
            if rows > self.config.step_rows {
                // Too big to keep: the touched partitions are evaluated again instead.
                work.overflowed = true;
                let group_keys = self.plan.group_keys();
                for batch in std::mem::take(&mut work.window_change) {
                    work.groups.push(batch.project(&(0..group_keys).collect::<Vec<_>>())?);
                }
            }
        } else if self.plan.is_grouped() {
            for (n, &scan) in scans.iter().enumerate() {
                let at = self.readings(positions, source, scans, n, scan, from, to, &delta);
                work.groups.extend(self.execute(self.plan.touched_groups(&at)?).await?);
            }
        } else {
            let mut changed = Vec::new();
            for (n, &scan) in scans.iter().enumerate() {
                let at = self.readings(positions, source, scans, n, scan, from, to, &delta);
                let rewritten = self.plan.change(&at)?;
                for batch in &self.execute(rewritten.plan.clone()).await? {
                    changed.push((self.view_rows(batch, &rewritten)?, weights(batch, &rewritten)?));
                }
            }
            let (rows, kinds) = self.consolidate(changed)?;
            if rows.num_rows() > 0 {
                txn.write(&rows, &kinds).await?;
            }
        }
        Ok(())
    }

    /// What each scan reads when scan `scans[n]` of `source` is the change:
    /// earlier scans of the same source read `to`, later ones `from`, other
    /// sources their positions.
    #[allow(clippy::too_many_arguments)]
    fn readings(
        &self,
        positions: &[u64],
        source: usize,
        scans: &[usize],
        n: usize,
        scan: usize,
        from: u64,
        to: u64,
        delta: &(Arc<MemTable>, Arc<Vec<RecordBatch>>),
    ) -> Vec<At> {
        self.plan
            .occurrences
            .iter()
            .enumerate()
            .map(|(i, &s)| {
                if i == scan {
                    At::Delta { change: Arc::clone(&delta.0) as _, batches: Arc::clone(&delta.1), from, to }
                } else if s == source {
                    let before = scans[..n].contains(&i);
                    At::Snapshot(if before { to } else { from })
                } else {
                    At::Snapshot(positions[s])
                }
            })
            .collect()
    }

    /// The changelog as a table: the source's columns (as planned) plus the weight.
    fn delta_table(
        &self,
        source: usize,
        changes: &[storage::ChangelogBatch],
    ) -> Result<(Arc<MemTable>, Arc<Vec<RecordBatch>>)> {
        let schema = self.sources()[source].table.schema();
        let mut fields: Vec<Field> = schema.fields().iter().map(|f| f.as_ref().clone()).collect();
        fields.push(Field::new(WEIGHT, DataType::Int64, false));
        let with_weight = Arc::new(Schema::new(fields));
        let columns = schema.fields().len();
        let mut batches = Vec::with_capacity(changes.len());
        for change in changes {
            let batch = &change.batch;
            let kind_column = batch.num_columns() - 1;
            let kinds = batch.column(kind_column).as_primitive::<Int8Type>();
            let weights: Int64Array = kinds
                .iter()
                .map(|k| match k.and_then(storage::RowKind::from_code) {
                    Some(storage::RowKind::Insert | storage::RowKind::UpdateAfter) => Some(1),
                    _ => Some(-1),
                })
                .collect();
            let mut arrays: Vec<ArrayRef> = batch.columns()[..columns].to_vec();
            arrays.push(Arc::new(weights));
            batches.push(RecordBatch::try_new(Arc::clone(&with_weight), arrays)?);
        }
        Ok((Arc::new(MemTable::try_new(with_weight, vec![batches.clone()])?), Arc::new(batches)))
    }

    /// A batch of the rewritten plan as rows of the view's table (visible
    /// columns, then `__key` when hidden).
    fn view_rows(&self, batch: &RecordBatch, rewritten: &Rewritten) -> Result<RecordBatch> {
        let columns = self.view_columns(batch, rewritten)?;
        Ok(RecordBatch::try_new(Arc::clone(&self.storage_schema), columns)?)
    }

    /// The visible columns and the hidden key of a batch of the rewritten plan.
    fn view_columns(&self, batch: &RecordBatch, rewritten: &Rewritten) -> Result<Vec<ArrayRef>> {
        let mut columns: Vec<ArrayRef> = Vec::with_capacity(self.storage_schema.fields().len());
        for (i, field) in self.storage_schema.fields()[..self.plan.visible].iter().enumerate() {
            let column = batch.column(i);
            columns.push(if column.data_type() == field.data_type() {
                Arc::clone(column)
            } else {
                datafusion::arrow::compute::cast(column, field.data_type())?
            });
        }
        if self.view.definition.key == KeyLayout::Hidden {
            let keys: Vec<ArrayRef> = rewritten.keys.iter().map(|&k| Arc::clone(batch.column(k))).collect();
            let encoded = self.keys.encode(&keys, batch.num_rows())?;
            columns.push(Arc::new(BinaryArray::from_iter_values(encoded.iter())));
        }
        if let Some(top) = &self.top_n {
            for (&i, field) in rewritten.carried.iter().zip(&top.fields) {
                columns.push(datafusion::arrow::compute::cast(batch.column(i), field.data_type())?);
            }
        }
        Ok(columns)
    }

    /// The view's group state, when it keeps one.
    fn group_state(&self) -> Option<&GroupState> {
        (self.state_offset.is_some() || self.view.definition.group_table).then_some(self.plan.state.as_ref()).flatten()
    }

    /// The watermark the sources had at `positions`: the smallest of them,
    /// `None` while a source has none.
    async fn watermark(&self, positions: &[u64]) -> Result<Option<i64>> {
        let mut smallest: Option<i64> = None;
        for (source, &position) in self.sources().iter().zip(positions) {
            if position == 0 {
                return Ok(None);
            }
            let Some(watermark) = source.table.storage().read_snapshot(position).await?.watermark else {
                return Ok(None);
            };
            smallest = Some(smallest.map_or(watermark, |s| s.min(watermark)));
        }
        Ok(smallest)
    }

    /// The rows of windows that end after `after` and at or before `upto`.
    fn closed_windows(&self, rows: &RecordBatch, after: Option<i64>, upto: Option<i64>) -> Result<RecordBatch> {
        let Some(upto) = upto else { return Ok(RecordBatch::new_empty(rows.schema())) };
        let index = self
            .view
            .definition
            .columns
            .iter()
            .position(|c| c == "window_end")
            .ok_or_else(|| Error::internal("a view that emits on window close has no window_end"))?;
        let ends = datafusion::arrow::compute::cast(
            rows.column(index),
            &DataType::Timestamp(datafusion::arrow::datatypes::TimeUnit::Millisecond, None),
        )?;
        let ends = ends.as_primitive::<datafusion::arrow::datatypes::TimestampMillisecondType>();
        let keep: datafusion::arrow::array::BooleanArray =
            ends.iter().map(|end| Some(end.is_some_and(|e| e <= upto && after.is_none_or(|a| e > a)))).collect();
        Ok(datafusion::arrow::compute::filter_record_batch(rows, &keep)?)
    }

    /// The identity of each row of `rows` (in the view table's layout).
    fn row_keys(&self, rows: &RecordBatch) -> Result<Vec<Vec<u8>>> {
        match &self.view.definition.key {
            KeyLayout::Hidden => {
                let column = rows.column(self.plan.visible).as_binary::<i32>();
                Ok(column.iter().map(|k| k.unwrap_or_default().to_vec()).collect())
            }
            KeyLayout::Visible(indexes) => {
                let columns: Vec<ArrayRef> = indexes.iter().map(|&i| Arc::clone(rows.column(i))).collect();
                self.keys.encode(&columns, rows.num_rows())
            }
        }
    }

    /// The leading group keys of each row's key, encoded.
    fn row_groups(&self, rows: &RecordBatch) -> Result<Vec<Vec<u8>>> {
        let groups = self.plan.group_keys();
        let key_columns: Vec<ArrayRef> = match &self.view.definition.key {
            KeyLayout::Visible(indexes) => indexes.iter().map(|&i| Arc::clone(rows.column(i))).collect(),
            KeyLayout::Hidden => {
                let Some(converter) = &self.keys.converter else { return Ok(vec![Vec::new(); rows.num_rows()]) };
                let column = rows.column(self.plan.visible).as_binary::<i32>();
                let parser = converter.parser();
                let parsed: Vec<_> = column.iter().map(|k| parser.parse(k.unwrap_or_default())).collect();
                converter.convert_rows(parsed)?
            }
        };
        self.groups.encode(&key_columns[..groups.min(key_columns.len())], rows.num_rows())
    }

    fn row_values(&self, rows: &RecordBatch) -> Result<Vec<Vec<u8>>> {
        let columns = rows.columns()[..self.plan.visible].to_vec();
        Ok(self.values.convert_columns(&columns)?.iter().map(|r| r.as_ref().to_vec()).collect())
    }

    /// Sums the weights of a change per row and turns the result into, per
    /// key, an upsert of the new row or a delete of the old one.
    fn consolidate(&self, changed: Vec<(RecordBatch, Vec<i64>)>) -> Result<(RecordBatch, Vec<storage::ValueKind>)> {
        let batches: Vec<RecordBatch> = changed.iter().map(|(b, _)| b.clone()).collect();
        let all = concat_batches(&self.storage_schema, &batches)?;
        let weights: Vec<i64> = changed.into_iter().flat_map(|(_, w)| w).collect();
        let keys = self.row_keys(&all)?;
        let values = self.row_values(&all)?;
        // key → (value → (net weight, a row holding it))
        let mut net: HashMap<&[u8], Versions<'_>> = HashMap::new();
        for (row, weight) in weights.iter().enumerate() {
            let entry = net.entry(&keys[row]).or_default().entry(&values[row]).or_insert((0, row));
            entry.0 += weight;
        }
        let mut indexes = Vec::new();
        let mut kinds = Vec::new();
        for versions in net.values() {
            let mut added = versions.values().filter(|(w, _)| *w > 0);
            if let Some((_, row)) = added.next() {
                if added.next().is_some() {
                    return Err(Error::internal(format!(
                        "materialized view {}: two rows with one key in a change",
                        self.view.name
                    )));
                }
                indexes.push(*row as u64);
                kinds.push(storage::ValueKind::Upsert);
            } else if let Some((_, row)) = versions.values().find(|(w, _)| *w < 0) {
                indexes.push(*row as u64);
                kinds.push(storage::ValueKind::Delete);
            }
        }
        Ok((take_rows(&all, &indexes)?, kinds))
    }

    /// The view's stored rows of the groups in `groups` (their values in
    /// the leading columns), looked up by the key's leading group columns;
    /// a NULL group has no stored row (the key is NOT NULL).
    async fn stored_rows_of(&self, key: &[usize], groups: &RecordBatch) -> Result<RecordBatch> {
        let columns = key[..self.plan.group_keys()]
            .iter()
            .enumerate()
            .map(|(c, &i)| datafusion::arrow::compute::cast(groups.column(c), self.storage_schema.field(i).data_type()))
            .collect::<Result<Vec<_>, _>>()?;
        let rows = self.view.table().get_prefixes(None, &columns).await?;
        Ok(RecordBatch::try_new(Arc::clone(&self.storage_schema), rows.columns().to_vec())?)
    }

    /// Evaluates the aggregate (or window) again for the groups (partitions)
    /// a change touched, on the new positions, and compares with the view's
    /// rows of those groups.
    async fn regroup(
        &self,
        before: &[u64],
        positions: &[u64],
        groups: Vec<RecordBatch>,
    ) -> Result<(RecordBatch, Vec<storage::ValueKind>)> {
        let empty = || RecordBatch::new_empty(Arc::clone(&self.storage_schema));
        let (closed_before, closed_now) = if self.view.definition.emit_on_window_close {
            (self.watermark(before).await?, self.watermark(positions).await?)
        } else {
            (None, None)
        };
        let closing = closed_now > closed_before;
        if groups.iter().all(|g| g.num_rows() == 0) && !closing {
            return Ok((empty(), vec![]));
        }
        let groups: Vec<RecordBatch> = groups.into_iter().filter(|g| g.num_rows() > 0).collect();
        let any_touched = !groups.is_empty();
        let group_keys = self.plan.group_keys();
        let mut touched: std::collections::HashSet<Vec<u8>> = std::collections::HashSet::new();
        let mut touched_values: Option<RecordBatch> = None;
        let restrict = if group_keys == 0 || groups.is_empty() {
            None
        } else {
            let schema = groups[0].schema();
            for batch in &groups {
                touched.extend(self.groups.encode(batch.columns(), batch.num_rows())?);
            }
            touched_values = Some(concat_batches(&schema, &groups)?);
            let table = MemTable::try_new(schema, vec![groups])?;
            Some(LogicalPlanBuilder::scan("__groups", provider_as_source(Arc::new(table)), None)?.build()?)
        };
        let at: Vec<At> = self.plan.occurrences.iter().map(|&s| At::Snapshot(positions[s])).collect();
        let mut new_rows: Vec<RecordBatch> = Vec::new();
        if group_keys == 0 || any_touched {
            let rewritten = self.plan.full(&at, restrict)?;
            let batches = self.execute(rewritten.plan.clone()).await?;
            for batch in &batches {
                new_rows.push(self.view_rows(batch, &rewritten)?);
            }
        }
        if self.view.definition.emit_on_window_close {
            new_rows = new_rows.iter().map(|b| self.closed_windows(b, None, closed_now)).collect::<Result<_>>()?;
            if closing {
                // Windows the watermark passed in this step appear, changed or not.
                let rewritten = self.plan.full(&at, None)?;
                let batches = self.ctx.execute_logical_plan(rewritten.plan.clone()).await?.collect().await?;
                for batch in &batches {
                    new_rows.push(self.closed_windows(
                        &self.view_rows(batch, &rewritten)?,
                        closed_before,
                        closed_now,
                    )?);
                }
            }
        }
        let new_rows = concat_batches(&self.storage_schema, &new_rows)?;
        let old_rows = match (&self.view.definition.key, &touched_values) {
            // The touched groups' rows, looked up by the key's leading group columns.
            (KeyLayout::Visible(key), Some(values)) if !closing => self.stored_rows_of(key, values).await?,
            // A hidden key is one encoded column, not searchable by its
            // leading part: the touched groups' rows are what the query gave
            // for them on the positions before this step (the view is that
            // query on its recorded positions), evaluated again, by key.
            (KeyLayout::Hidden, Some(values)) if !self.view.definition.emit_on_window_close => {
                let table = MemTable::try_new(values.schema(), vec![vec![values.clone()]])?;
                let groups =
                    LogicalPlanBuilder::scan("__groups", provider_as_source(Arc::new(table)), None)?.build()?;
                let at: Vec<At> = self.plan.occurrences.iter().map(|&s| At::Snapshot(before[s])).collect();
                let rewritten = self.plan.full(&at, Some(groups))?;
                let mut rows = Vec::new();
                for batch in &self.execute(rewritten.plan.clone()).await? {
                    rows.push(self.view_rows(batch, &rewritten)?);
                }
                concat_batches(&self.storage_schema, &rows)?
            }
            _ => concat_batches(
                &self.storage_schema,
                &self.view.table().scan(None).await.or_else(|e| match e {
                    storage::Error::NotFound { .. } => Ok(vec![]),
                    other => Err(other),
                })?,
            )?,
        };
        self.diff(new_rows, old_rows, (group_keys > 0).then_some(&touched))
    }

    /// The writes that turn `old_rows` (the stored rows of the touched
    /// groups; with `touched`, rows of other groups among them are left
    /// alone) into `new_rows`: upserts of new or changed rows, deletes of
    /// rows no longer there.
    fn diff(
        &self,
        new_rows: RecordBatch,
        old_rows: RecordBatch,
        touched: Option<&std::collections::HashSet<Vec<u8>>>,
    ) -> Result<(RecordBatch, Vec<storage::ValueKind>)> {
        let new_keys = self.row_keys(&new_rows)?;
        let new_values = self.row_values(&new_rows)?;
        let old_keys = self.row_keys(&old_rows)?;
        let old_groups = self.row_groups(&old_rows)?;
        let old_values = self.row_values(&old_rows)?;
        let old: HashMap<&[u8], usize> = old_keys
            .iter()
            .enumerate()
            .filter(|(i, _)| touched.is_none_or(|t| t.contains(&old_groups[*i])))
            .map(|(i, k)| (k.as_slice(), i))
            .collect();
        let mut both = vec![new_rows, old_rows];
        let offset = both[0].num_rows();
        let mut indexes = Vec::new();
        let mut kinds = Vec::new();
        let mut seen = std::collections::HashSet::new();
        for (i, key) in new_keys.iter().enumerate() {
            if !seen.insert(key.as_slice()) {
                // A touched window that also closed in this step: once is enough.
                continue;
            }
            match old.get(key.as_slice()) {
                Some(&o) if old_values[o] == new_values[i] => {}
                _ => {
                    indexes.push(i as u64);
                    kinds.push(storage::ValueKind::Upsert);
                }
            }
        }
        for (key, &o) in &old {
            if !seen.contains(key) {
                indexes.push((offset + o) as u64);
                kinds.push(storage::ValueKind::Delete);
            }
        }
        let all = concat_batches(&self.storage_schema, &std::mem::take(&mut both))?;
        Ok((take_rows(&all, &indexes)?, kinds))
    }
}

/// The versions of one key in a change: value → (net weight, a row holding it).
type Versions<'a> = HashMap<&'a [u8], (i64, usize)>;

fn weights(batch: &RecordBatch, rewritten: &Rewritten) -> Result<Vec<i64>> {
    let index = rewritten.weight.ok_or_else(|| Error::internal("a change without weights"))?;
    let column = datafusion::arrow::compute::cast(batch.column(index), &DataType::Int64)?;
    Ok(column.as_primitive::<datafusion::arrow::datatypes::Int64Type>().iter().map(|w| w.unwrap_or(0)).collect())
}

/// Rows looked up from the view's table, as a batch of its schema.
fn old_rows_in(schema: &SchemaRef, rows: &RecordBatch) -> Result<RecordBatch> {
    Ok(RecordBatch::try_new(Arc::clone(schema), rows.columns().to_vec())?)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every rule a step needs is one DataFusion has (a renamed rule would
    /// silently drop out; without `replace_distinct_aggregate` steps fail).
    #[test]
    fn step_rules_are_datafusion_rules() {
        let state = step_context(&SessionContext::new()).state();
        let names: Vec<String> = state.optimizers().iter().map(|r| r.name().to_string()).collect();
        for rule in STEP_RULES {
            assert!(names.iter().any(|n| n == rule), "{rule} is not among {names:?}");
        }
        assert_eq!(names.len(), STEP_RULES.len());
    }
}
