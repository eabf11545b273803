//! Full refresh: a materialized view whose query runs again as a batch, on
//! one consistent set of source snapshots, and whose result is committed as
//! the difference against what the view holds.
//!
//! A view is refreshed in full when the user asks for it (`refresh_mode =
//! 'full'`), or when `refresh_mode = 'auto'` (the default once a freshness
//! is given) and either its freshness is at or above
//! `views.full_refresh_threshold` or its query cannot be maintained
//! incrementally ([`choose`]). Continuous views keep the machinery of
//! [`super::maintain`]; a full view is [`Refresher::refresh`]ed by the
//! scheduler ([`super::schedule`]) or by `ALTER MATERIALIZED VIEW … REFRESH`.
//!
//! A refresh pins every source's latest snapshot, runs the query on those
//! snapshots (in MPP or BSP, chosen as for any query, within
//! `views.refresh_memory_limit`), and streams its rows through a [`Differ`]:
//! each batch's keys are looked up in the view (as of the snapshot the
//! refresh writes on top of), new and changed rows are upserted, and once
//! the result has been read every stored row whose key it did not hold is
//! deleted. All of it is one commit, recording the source snapshots (as
//! continuous steps do) and what the refresh did, so readers switch at once,
//! the changelog holds exactly the rows that changed, and a crash leaves
//! the view as it was before the refresh. Nothing is committed when no
//! source changed since the last refresh.
//!
//! The key of a view a continuous maintainer could keep is the one it
//! would use (so the view can switch modes and keep its rows); its rows
//! come from the maintainer's own fill ([`super::maintain::ViewMaintainer`]).
//! Any other query is keyed by a set of its output columns that DataFusion
//! knows to be unique (the GROUP BY of an aggregate under an ORDER BY …
//! LIMIT, …), or else by the whole row and its occurrence among equal rows
//! ([`BatchKey`]), in the hidden `__key` column.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use datafusion::arrow::array::{ArrayRef, BinaryArray, RecordBatch};
use datafusion::arrow::datatypes::{Field, Schema, SchemaRef};
use datafusion::arrow::row::{RowConverter, SortField};
use datafusion::catalog::MemTable;
use datafusion::catalog::TableProvider;
use datafusion::common::tree_node::Transformed;
use datafusion::datasource::{provider_as_source, source_as_provider};
use datafusion::logical_expr::utils::conjunction;
use datafusion::logical_expr::{LogicalPlan, LogicalPlanBuilder};
use datafusion::prelude::SessionContext;
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use streamhouse_storage as storage;
use tokio_util::sync::CancellationToken;

use super::differ::Differ;
use super::maintain::ViewMaintainer;
use super::plan::Source;
use super::{KeyLayout, MaterializedView, POSITIONS_PROPERTY};
use crate::catalog::BatchQueriesRef;
use crate::catalog::{AsOf, DEFAULT_SCHEMA, RelationName};
use crate::config::ViewsConfig;
use crate::dynamic::DynamicTable;
use crate::dynamic::system::SnapshotTable;
use crate::error::{Error, Result, StatusCode};

/// The snapshot property a full refresh's commit carries: what it did
/// ([`RefreshSummary`], JSON). Later commits inherit it.
pub const REFRESH_PROPERTY: &str = "view.refresh";

/// The snapshot property saying which mode wrote the view's latest rows:
/// `full` after a refresh; a continuous maintainer that finds it rebuilds
/// its state tables before it follows the sources, then sets `continuous`.
pub const MODE_PROPERTY: &str = "view.mode";

/// How a view is kept up to date.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum RefreshMode {
    /// Every source commit flows into the view ([`super::maintain`]).
    #[default]
    Continuous,
    /// The query runs again as a batch, on a schedule or on demand.
    Full,
}

impl RefreshMode {
    /// `continuous` or `full`.
    pub fn as_str(self) -> &'static str {
        match self {
            RefreshMode::Continuous => "continuous",
            RefreshMode::Full => "full",
        }
    }
}

/// What the user asked for (`refresh_mode`).
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Requested {
    /// Continuous when the query can be maintained and the freshness is
    /// below `views.full_refresh_threshold`; full otherwise.
    #[default]
    Auto,
    /// Always continuous (a query that cannot be maintained is refused).
    Continuous,
    /// Always full.
    Full,
}

/// A view's refresh settings, stored with its definition.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(default)]
pub struct Refresh {
    /// `refresh_mode` as given.
    pub requested: Requested,
    /// `freshness`, in ms: how stale the view may be.
    pub freshness_ms: Option<u64>,
    /// The mode chosen.
    pub mode: RefreshMode,
    /// Why that mode (`sys.views.refresh_reason`).
    pub reason: String,
    /// `ALTER MATERIALIZED VIEW … SUSPEND`: neither maintained nor refreshed.
    pub suspended: bool,
}

impl Refresh {
    /// Takes `freshness` and `refresh_mode` out of a view's options.
    ///
    /// # Errors
    /// 22023 for a value that is not a duration or a mode.
    pub fn take_options(options: &mut BTreeMap<String, String>) -> Result<(Option<Requested>, Option<u64>)> {
        let requested = match options.remove("refresh_mode").map(|m| m.to_ascii_lowercase()).as_deref() {
            None => None,
            Some("auto") => Some(Requested::Auto),
            Some("continuous") => Some(Requested::Continuous),
            Some("full") => Some(Requested::Full),
            Some(other) => {
                return Err(Error::new(
                    StatusCode::InvalidParameterValue,
                    format!("refresh_mode is 'auto', 'continuous' or 'full', not '{other}'"),
                ));
            }
        };
        let freshness = match options.remove("freshness") {
            None => None,
            Some(text) => Some(parse_freshness(&text)?),
        };
        Ok((requested, freshness))
    }

    /// The mode for `requested` and `freshness`, given whether the query
    /// can be maintained incrementally (`incremental`: `Err` with the 0A000
    /// naming the construct when not).
    ///
    /// # Errors
    /// The 0A000 of `incremental` when the view must be continuous: asked
    /// for, or no freshness given (then the message says how to schedule it).
    pub fn choose(
        requested: Requested,
        freshness_ms: Option<u64>,
        incremental: std::result::Result<(), &Error>,
        threshold: std::time::Duration,
    ) -> Result<Self> {
        let threshold_ms = u64::try_from(threshold.as_millis()).unwrap_or(u64::MAX);
        let (mode, reason) = match (requested, freshness_ms, incremental) {
            (Requested::Full, _, _) => (RefreshMode::Full, "refresh_mode is full".to_string()),
            (Requested::Continuous, _, Ok(())) => (RefreshMode::Continuous, "refresh_mode is continuous".to_string()),
            (Requested::Continuous, _, Err(e)) => return Err(Error::new(e.code(), e.message())),
            (Requested::Auto, None, Ok(())) => (RefreshMode::Continuous, "no freshness given".to_string()),
            (Requested::Auto, None, Err(e)) => {
                return Err(Error::new(
                    e.code(),
                    format!(
                        "{}; or give it a freshness to refresh it in full on a schedule: WITH (freshness = '5 minutes')",
                        e.message()
                    ),
                ));
            }
            (Requested::Auto, Some(_), Err(e)) => (
                RefreshMode::Full,
                format!(
                    "the query cannot be maintained incrementally: {}",
                    e.message().split(" cannot be maintained").next().unwrap_or_default()
                ),
            ),
            (Requested::Auto, Some(f), Ok(())) if f >= threshold_ms => (
                RefreshMode::Full,
                format!(
                    "freshness {} is at or above views.full_refresh_threshold ({})",
                    show_ms(f),
                    show_ms(threshold_ms)
                ),
            ),
            (Requested::Auto, Some(f), Ok(())) => (
                RefreshMode::Continuous,
                format!("freshness {} is below views.full_refresh_threshold ({})", show_ms(f), show_ms(threshold_ms)),
            ),
        };
        Ok(Self { requested, freshness_ms, mode, reason, suspended: false })
    }
}

/// `'5 minutes'`, `'1 h'`, `'30 s'`, `'500 ms'` (Flink's `INTERVAL '5' MINUTE` arrives as `5 MINUTE`).
fn parse_freshness(text: &str) -> Result<u64> {
    match storage::options::parse_duration_ms(text) {
        Some(ms) if ms > 0 => Ok(ms),
        _ => Err(Error::new(
            StatusCode::InvalidParameterValue,
            format!("freshness is a positive duration such as '30 seconds', '5 minutes' or '1 hour', not '{text}'"),
        )),
    }
}

/// A duration in ms as people write it: `5 min`, `1 h`, `30 s`, `1500 ms`.
pub fn show_ms(ms: u64) -> String {
    match ms {
        0 => "0 s".to_string(),
        ms if ms % 3_600_000 == 0 => format!("{} h", ms / 3_600_000),
        ms if ms % 60_000 == 0 => format!("{} min", ms / 60_000),
        ms if ms % 1000 == 0 => format!("{} s", ms / 1000),
        ms => format!("{ms} ms"),
    }
}

/// How the rows of a full view whose query cannot be maintained are keyed:
/// by these visible columns (row-encoded into `__key` unless they are the
/// visible primary key), with, when `occurrence`, the row's number among
/// equal keys (the whole row is the key then: a bag of rows).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct BatchKey {
    /// The visible columns that identify a row.
    pub columns: Vec<usize>,
    /// Equal keys are told apart by their occurrence (0, 1, …).
    pub occurrence: bool,
}

/// The key of a full view over `plan` (optimized, `visible` columns),
/// whose query cannot be maintained: a unique set of output columns
/// DataFusion derives (the visible primary key when none is nullable, else
/// encoded in the hidden key), else the whole row and its occurrence
/// (hidden).
pub fn batch_key(plan: &LogicalPlan, visible: usize) -> (KeyLayout, BatchKey) {
    let schema = plan.schema();
    let unique = schema
        .functional_dependencies()
        .iter()
        .filter(|d| d.mode == datafusion::common::Dependency::Single)
        .filter(|d| (0..visible).all(|c| d.target_indices.contains(&c)))
        .filter(|d| !d.source_indices.is_empty() && d.source_indices.iter().all(|&c| c < visible))
        .min_by_key(|d| d.source_indices.len());
    match unique {
        Some(d) => {
            let mut columns = d.source_indices.clone();
            columns.sort_unstable();
            columns.dedup();
            // A group key may be NULL (one group): then it is encoded in the hidden key. Should the
            // columns not be unique after all, the refresh fails (21000) rather than lose a row.
            if columns.iter().all(|&c| !schema.field(c).is_nullable()) {
                (KeyLayout::Visible(columns.clone()), BatchKey { columns, occurrence: false })
            } else {
                (KeyLayout::Hidden, BatchKey { columns, occurrence: false })
            }
        }
        None => (KeyLayout::Hidden, BatchKey { columns: (0..visible).collect(), occurrence: true }),
    }
}

/// The tables and materialized views a query reads, each once, in order of
/// first scan (subqueries included).
///
/// # Errors
/// 0A000 for a scan of anything else (a system table, a table function).
pub fn sources_of(plan: &LogicalPlan) -> Result<Vec<Source>> {
    let mut sources: Vec<Source> = Vec::new();
    let mut failed = None;
    plan.apply_with_subqueries(|node| {
        if let LogicalPlan::TableScan(scan) = node {
            match source_of(scan) {
                Ok(source) => {
                    if !sources.iter().any(|s| Arc::ptr_eq(s.table.storage(), source.table.storage())) {
                        sources.push(source);
                    }
                }
                Err(e) => {
                    failed = Some(e);
                    return Ok(datafusion::common::tree_node::TreeNodeRecursion::Stop);
                }
            }
        }
        Ok(datafusion::common::tree_node::TreeNodeRecursion::Continue)
    })?;
    match failed {
        Some(e) => Err(e),
        None if sources.is_empty() => {
            Err(Error::unsupported("a materialized view must read at least one table or materialized view"))
        }
        None => Ok(sources),
    }
}

fn source_of(scan: &datafusion::logical_expr::TableScan) -> Result<Source> {
    let provider = source_as_provider(&scan.source)?;
    let name = RelationName {
        schema: scan.table_name.schema().unwrap_or(DEFAULT_SCHEMA).to_string(),
        name: scan.table_name.table().to_string(),
    };
    if let Some(table) = provider.downcast_ref::<DynamicTable>() {
        Ok(Source { name, table: Arc::new(DynamicTable::shared(Arc::clone(table.storage()))), view: None })
    } else if let Some(view) = provider.downcast_ref::<MaterializedView>() {
        let view = view.arc().ok_or_else(|| Error::internal("materialized view is being dropped"))?;
        Ok(Source { name, table: Arc::clone(&view.storage), view: Some(view) })
    } else {
        Err(Error::unsupported(format!(
            "a materialized view cannot read {} (only tables and materialized views can be sources)",
            scan.table_name
        )))
    }
}

/// `plan` with every scan of a source reading the snapshot `positions`
/// gives it (0: the empty table before its first commit).
fn pin(plan: LogicalPlan, sources: &[Source], positions: &[u64]) -> Result<LogicalPlan> {
    let pinned = plan.transform_up_with_subqueries(|node| {
        let LogicalPlan::TableScan(scan) = &node else { return Ok(Transformed::no(node)) };
        let storage = source_of(scan).map_err(|e| datafusion::error::DataFusionError::External(Box::new(e)))?;
        let Some(i) = sources.iter().position(|s| Arc::ptr_eq(s.table.storage(), storage.table.storage())) else {
            return Err(datafusion::error::DataFusionError::Plan(format!(
                "{} is not among the view's sources",
                scan.table_name
            )));
        };
        let shown = scan.source.schema();
        let provider: Arc<dyn datafusion::catalog::TableProvider> = match (positions[i], &sources[i].view) {
            (0, _) => Arc::new(MemTable::try_new(Arc::clone(&shown), vec![vec![]])?),
            (id, Some(view)) => Arc::new(SnapshotTable::new(view.visible_table(), AsOf::Snapshot(id))),
            (id, None) => Arc::new(SnapshotTable::new(Arc::clone(&sources[i].table), AsOf::Snapshot(id))),
        };
        let projection = scan.projection.clone().unwrap_or_else(|| (0..shown.fields().len()).collect());
        let mut builder =
            LogicalPlanBuilder::scan(scan.table_name.clone(), provider_as_source(provider), Some(projection))?;
        if let Some(predicate) = conjunction(scan.filters.clone()) {
            builder = builder.filter(predicate)?;
        }
        if let Some(fetch) = scan.fetch {
            builder = builder.limit(0, Some(fetch))?;
        }
        Ok(Transformed::yes(builder.build()?))
    })?;
    Ok(pinned.data)
}

/// What one refresh did.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct RefreshSummary {
    /// When it started (ms since the epoch): the view is as fresh as this.
    pub started_ms: i64,
    /// When it committed.
    pub finished_ms: i64,
    /// Rows it added, changed and removed.
    pub inserted: u64,
    /// See `inserted`.
    pub updated: u64,
    /// See `inserted`.
    pub deleted: u64,
    /// How its query ran (`mpp: …`, `bsp: …`).
    pub execution: String,
}

/// How a refresh ended.
#[derive(Debug, Clone)]
pub enum Outcome {
    /// No source changed since the last refresh: nothing committed.
    Skipped,
    /// Committed as view snapshot `snapshot`.
    Refreshed {
        /// The view's new snapshot.
        snapshot: u64,
        /// What it did.
        summary: RefreshSummary,
    },
}

/// Where a refresh's rows come from.
enum Rows {
    /// A query the continuous maintainer could keep: its fill.
    Maintainer(Box<ViewMaintainer>),
    /// Any other query: planned again at every refresh (so `now()` is the
    /// refresh's), its scans pinned.
    Query {
        /// The view's query, SQL.
        sql: String,
        /// Its key.
        key: BatchKey,
    },
}

/// Refreshes one full view.
pub struct Refresher {
    view: Arc<MaterializedView>,
    rows: Rows,
    /// The sources, as planned when the refresher was made.
    sources: Vec<Source>,
    ctx: SessionContext,
    batch: BatchQueriesRef,
    config: ViewsConfig,
}

impl std::fmt::Debug for Refresher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Refresher").field("view", &self.view.name).finish_non_exhaustive()
    }
}

impl Refresher {
    /// A refresher of `view` whose rows come from `maintainer` (a query
    /// the continuous maintainer could keep) or, without one, from its
    /// query planned again at every refresh.
    ///
    /// # Errors
    /// Planning errors; a view stored without a key for full refresh.
    pub async fn new(
        view: Arc<MaterializedView>,
        maintainer: Option<ViewMaintainer>,
        ctx: SessionContext,
        batch: BatchQueriesRef,
        config: ViewsConfig,
    ) -> Result<Self> {
        let (rows, sources) = match maintainer {
            Some(maintainer) => {
                let sources = maintainer.plan_sources().to_vec();
                (Rows::Maintainer(Box::new(maintainer)), sources)
            }
            None => {
                let key = view.definition.batch_key.clone().ok_or_else(|| {
                    Error::internal(format!("materialized view {} has no key for a full refresh", view.name))
                })?;
                let plan = super::plan_query(&ctx, &view.definition.query).await?;
                let sources = sources_of(&plan)?;
                (Rows::Query { sql: view.definition.query.clone(), key }, sources)
            }
        };
        view.set_sources(sources.clone());
        view.set_maintenance("full refresh");
        Ok(Self { view, rows, sources, ctx, batch, config })
    }

    /// The sources' latest snapshots.
    fn latest(&self) -> Vec<u64> {
        self.sources.iter().map(|s| s.table.storage().latest_snapshot().map_or(0, |s| s.id)).collect()
    }

    /// The source snapshots the view reflects; `None` before its first refresh.
    ///
    /// # Errors
    /// A damaged positions property.
    pub fn recorded_positions(&self) -> Result<Option<Vec<u64>>> {
        let Some(snapshot) = self.view.table().latest_snapshot() else { return Ok(None) };
        let Some(text) = snapshot.properties.get(POSITIONS_PROPERTY) else { return Ok(None) };
        let recorded: HashMap<String, u64> = serde_json::from_str(text)
            .map_err(|e| Error::internal(format!("view {}: damaged {POSITIONS_PROPERTY}: {e}", self.view.name)))?;
        Ok(Some(self.sources.iter().map(|s| recorded.get(&s.name.to_string()).copied().unwrap_or(0)).collect()))
    }

    /// Source name → snapshot, as a positions property.
    pub fn positions_text(&self, positions: &[u64]) -> String {
        let map: BTreeMap<String, u64> =
            self.sources.iter().zip(positions).map(|(s, p)| (s.name.to_string(), *p)).collect();
        serde_json::to_string(&map).unwrap_or_default()
    }

    /// Publishes the positions the view reflects (sys.views, lag).
    pub fn publish(&self, positions: &[u64], error: Option<String>) {
        let view_snapshot = self.view.table().latest_snapshot().map_or(0, |s| s.id);
        let updated_ms = self
            .view
            .table()
            .latest_snapshot()
            .and_then(|s| s.properties.get(REFRESH_PROPERTY).cloned())
            .and_then(|text| serde_json::from_str::<RefreshSummary>(&text).ok())
            .map_or(0, |s| s.finished_ms);
        self.view.progress.send_modify(|p| {
            *p = super::Progress {
                positions: positions.to_vec(),
                view_snapshot,
                updated_ms,
                error,
                step: None,
                backfilled: None,
            }
        });
    }

    /// The sources' latest snapshots, and whether the view already reflects them.
    ///
    /// # Errors
    /// A damaged positions property.
    pub fn pending(&self) -> Result<(Vec<u64>, bool)> {
        let latest = self.latest();
        let recorded = self.recorded_positions()?;
        Ok((latest.clone(), recorded.as_deref() == Some(latest.as_slice())))
    }

    /// Refreshes the view on its sources' latest snapshots; `stop` keeps
    /// it from committing.
    ///
    /// # Errors
    /// Query errors (the view is left as it was); storage failures;
    /// 57014 when stopped.
    pub async fn refresh(&self, stop: &CancellationToken) -> Result<Outcome> {
        let started_ms = crate::now_ms();
        let (positions, current) = self.pending()?;
        if current {
            return Ok(Outcome::Skipped);
        }
        let _holds: Vec<storage::SnapshotHold> =
            self.sources.iter().zip(&positions).map(|(s, p)| s.table.storage().hold_snapshots((*p).max(1))).collect();
        let table = self.view.table();
        let mut txn = table.begin().await?;
        let base = txn.base_snapshot();
        let mut differ = Differ::new(&self.view, base)?;
        let limit = self.config.refresh_memory_limit.bytes().map(|b| usize::try_from(b).unwrap_or(usize::MAX));
        let execution = match &self.rows {
            Rows::Maintainer(maintainer) => {
                maintainer.refill(&positions, &mut differ, &mut txn, &self.batch, limit).await?
            }
            Rows::Query { sql, key } => {
                let plan = super::plan_query(&self.ctx, sql).await?;
                let sources = sources_of(&plan)?;
                if sources.len() != self.sources.len()
                    || sources
                        .iter()
                        .zip(&self.sources)
                        .any(|(a, b)| !Arc::ptr_eq(a.table.storage(), b.table.storage()))
                {
                    return Err(Error::new(
                        StatusCode::ObjectNotInPrerequisiteState,
                        format!(
                            "the sources of materialized view {} changed since it was started; it is restarted",
                            self.view.name
                        ),
                    ));
                }
                let pinned = pin(plan, &self.sources, &positions)?;
                let (mut stream, how) = self.batch.run(self.ctx.state(), pinned, limit).await?;
                let mut keyer = Keyer::new(key, &self.view)?;
                while let Some(batch) = stream.next().await {
                    let rows = keyer.stored_rows(&batch?)?;
                    differ.add(&rows, &mut txn).await?;
                    if stop.is_cancelled() {
                        return Err(stopped(&self.view));
                    }
                }
                how
            }
        };
        differ.finish(&mut txn).await?;
        if stop.is_cancelled() {
            return Err(stopped(&self.view));
        }
        let summary = RefreshSummary {
            started_ms,
            finished_ms: crate::now_ms(),
            inserted: differ.inserted,
            updated: differ.updated,
            deleted: differ.deleted,
            execution,
        };
        txn.set_property(POSITIONS_PROPERTY, self.positions_text(&positions));
        txn.set_property(MODE_PROPERTY, RefreshMode::Full.as_str());
        txn.set_property(REFRESH_PROPERTY, serde_json::to_string(&summary).unwrap_or_default());
        let snapshot = txn.commit().await?.map_or(0, |s| s.id);
        self.publish(&positions, None);
        Ok(Outcome::Refreshed { snapshot, summary })
    }
}

fn stopped(view: &MaterializedView) -> Error {
    Error::new(StatusCode::Cancelled, format!("the refresh of materialized view {} was stopped", view.name))
}

/// Turns a query's rows into the view's stored rows: the visible columns,
/// then the hidden `__key` when the key is hidden.
struct Keyer {
    schema: SchemaRef,
    key: BatchKey,
    hidden: bool,
    encoder: Option<RowConverter>,
    /// Occurrences so far, per encoded key (only when `key.occurrence`).
    seen: HashMap<Vec<u8>, u32>,
}

impl Keyer {
    fn new(key: &BatchKey, view: &MaterializedView) -> Result<Self> {
        let schema = view.storage.schema();
        let hidden = view.definition.key == KeyLayout::Hidden;
        let encoder = if hidden {
            let fields = key.columns.iter().map(|&c| SortField::new(schema.field(c).data_type().clone())).collect();
            Some(RowConverter::new(fields)?)
        } else {
            None
        };
        Ok(Self { schema, key: key.clone(), hidden, encoder, seen: HashMap::new() })
    }

    fn stored_rows(&mut self, batch: &RecordBatch) -> Result<RecordBatch> {
        let visible = self.schema.fields().len() - usize::from(self.hidden);
        if batch.num_columns() != visible {
            return Err(Error::internal(format!(
                "the query gave {} columns where the view has {visible}",
                batch.num_columns()
            )));
        }
        let mut columns: Vec<ArrayRef> = batch
            .columns()
            .iter()
            .zip(self.schema.fields())
            .map(|(c, f)| Ok(datafusion::arrow::compute::cast(c, f.data_type())?))
            .collect::<Result<_>>()?;
        if let Some(encoder) = &self.encoder {
            let keyed: Vec<ArrayRef> = self.key.columns.iter().map(|&c| Arc::clone(&columns[c])).collect();
            let rows = encoder.convert_columns(&keyed)?;
            let mut keys = Vec::with_capacity(batch.num_rows());
            for row in rows.iter() {
                let mut key = row.as_ref().to_vec();
                if self.key.occurrence {
                    let n = self.seen.entry(key.clone()).or_insert(0);
                    key.extend_from_slice(&n.to_be_bytes());
                    *n += 1;
                }
                keys.push(key);
            }
            columns.push(Arc::new(BinaryArray::from_iter_values(keys.iter())));
        }
        let fields: Vec<Field> = self.schema.fields().iter().map(|f| f.as_ref().clone()).collect();
        RecordBatch::try_new(Arc::new(Schema::new(fields)), columns).map_err(|e| {
            Error::new(
                StatusCode::ConstraintViolation,
                format!("the query's rows do not fit the materialized view's columns: {e}"),
            )
        })
    }
}
