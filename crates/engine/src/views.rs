//! Continuous SQL views: `CREATE MATERIALIZED VIEW v AS SELECT …`, kept up
//! to date from the changelogs of the tables (and views) it reads.
//!
//! ```text
//!   source tables / views ──changelog──► ViewMaintainer ──one commit per step──► the view's Dynamic Table
//!   (snapshots p, q, …)                   (maintain.rs)     rows + "view.positions"   (snapshot, changelog,
//!                                           │                 = source snapshots        time travel, SUBSCRIBE)
//!                                           └─ delta plans built from DataFusion's optimized plan (plan.rs)
//! ```
//!
//! A view is a Dynamic Table whose rows are written only by its maintainer.
//! Every commit of the view records, in the snapshot's properties, the
//! snapshot of each source its content reflects. Rows and positions land in
//! the same commit, so a crash at any moment leaves a view that is exactly
//! the defining query on the recorded source snapshots; the maintainer
//! resumes from there, and every step is idempotent given those snapshots
//! (it writes upserts and deletes by the view's key, computed from the
//! recorded snapshots and the view's own committed rows), so a step replayed
//! after a crash cannot double-count. Operator state is the sources
//! themselves, read as of a snapshot (time travel), plus the view's own rows
//! and their hidden group state, committed with them: nothing lives only in
//! memory.
//!
//! The view's key is derived from the plan: the group keys of an aggregate,
//! or the keys of every table a select-project-join reads (with the branch
//! of a `UNION ALL`). When those are visible non-null columns they are the
//! view's primary key; otherwise a hidden trailing column `__key` holds them
//! (row-encoded), and readers never see it.
//!
//! How each step is computed lives in [`plan`]: a step advances one source
//! from snapshot `p` to `q`; for every scan of that source in the plan (a
//! self join reads it twice) the scan is replaced by the changelog of
//! `(p, q]` with a `__weight` column (+1 for `+I`/`+U`, −1 for `-U`/`-D`),
//! scans after it in the plan read `p`, scans before it read `q`, and other
//! sources read their recorded snapshots. Projection, filter, inner join and
//! `UNION ALL` are linear, so DataFusion evaluates the rewritten plan and its
//! result is the change of the view (the unchanged input of a join is
//! restricted to the change's range of join keys, which prunes its scan when
//! that is a table's first key column).
//!
//! Aggregates come two ways. GROUP BY with COUNT, SUM, AVG (of exact
//! numbers), MIN, MAX or no function keeps per-group state in hidden columns
//! of the view's table ([`state`]): a step aggregates the change by group,
//! looks the touched groups up by key and adds to their state, reading no
//! source (a MIN/MAX whose current value is retracted is recomputed for that
//! group); under a HAVING the state of every group lives in a hidden table of
//! the view's own ([`groups`]), since groups that fail it have no row. A
//! Top-N per partition (`ROW_NUMBER()` filtered by `rn <= N`)
//! keeps its window input's columns hidden in its rows and ranks, per
//! touched partition, its stored rows with the rows the change adds
//! ([`plan::TopN`]; a partition that loses one of its rows is evaluated
//! again). Everything else grouped (COUNT(DISTINCT), other window
//! functions, emit on window close) takes the group keys the change touches
//! and evaluates the aggregate again for just those groups on the new
//! snapshots. `sys.views.maintenance` says which way a view goes.

pub mod arrange;
pub mod differ;
pub mod distinct;
pub mod groups;
pub mod maintain;
pub mod plan;
pub mod probe;
pub mod refresh;
pub mod schedule;
pub mod spares;
pub mod state;
pub mod steps;
pub mod system;

pub use plan::ViewPlan;

use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::catalog::{Session as DfSession, TableProvider};
use datafusion::common::DFSchema;
use datafusion::datasource::TableType;
use datafusion::logical_expr::dml::InsertOp;
use datafusion::logical_expr::{Expr, LogicalPlan, TableProviderFilterPushDown};
use datafusion::physical_plan::ExecutionPlan;
use serde::{Deserialize, Serialize};
use streamhouse_storage as storage;

use crate::catalog::{CreateMaterializedView, RelationName};
use crate::dynamic::DynamicTable;
use crate::error::{Error, Result, StatusCode};

/// Lists the materialized views (the catalog that keeps them provides it):
/// for `sys.views` and the refresh scheduler.
pub type ViewLister = Arc<dyn Fn() -> Vec<Arc<MaterializedView>> + Send + Sync>;

/// The snapshot property holding a view's source positions (JSON object:
/// source name → snapshot id).
pub const POSITIONS_PROPERTY: &str = "view.positions";

/// The name of the hidden key column, when the derived key is not a set of
/// visible non-null columns.
pub const HIDDEN_KEY: &str = "__key";

/// Where a view stores its definition: `<table dir>/view/definition`.
pub fn definition_path(table_dir: &object_store::path::Path) -> object_store::path::Path {
    table_dir.clone().join("view").join("definition")
}

/// What is stored about a view beside its Dynamic Table.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ViewDefinition {
    /// The defining query, as SQL text (re-planned at every start).
    pub query: String,
    /// Column names of the view, in order.
    pub columns: Vec<String>,
    /// The sources the query reads, `schema.name`, for dependency checks.
    pub sources: Vec<String>,
    /// How the key is stored.
    pub key: KeyLayout,
    /// 0 for a new view, +1 for each CREATE OR REPLACE; the stored table of
    /// generation `g > 0` lives in `<schema>/<name>@<g>`.
    #[serde(default)]
    pub generation: u64,
    /// `'emit' = 'on-window-close'`: a window's row appears once the
    /// sources' watermark passes its `window_end` (and not before).
    #[serde(default)]
    pub emit_on_window_close: bool,
    /// The table keeps per-group aggregate state in hidden columns after
    /// the key ([`state`]); views stored before there was state recompute
    /// the groups a change touches.
    #[serde(default)]
    pub state: bool,
    /// A Top-N view keeping its window input's columns as hidden columns
    /// after the visible ones ([`plan::TopN`]); views stored before there
    /// was Top-N state recompute the partitions a change touches.
    #[serde(default)]
    pub top_n: bool,
    /// A view with a HAVING keeping its group state in a table of its own
    /// ([`groups`]); views stored before recompute the groups a change touches.
    #[serde(default)]
    pub group_table: bool,
    /// How the view is kept up to date (continuous, or full refreshes),
    /// and whether it is suspended ([`refresh`]).
    #[serde(default)]
    pub refresh: refresh::Refresh,
    /// A full view whose query cannot be maintained incrementally: how its
    /// rows are keyed ([`refresh::BatchKey`]).
    #[serde(default)]
    pub batch_key: Option<refresh::BatchKey>,
}

/// How a view's derived key is stored.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum KeyLayout {
    /// These visible columns are the primary key.
    Visible(Vec<usize>),
    /// A trailing hidden binary column `__key` holds the row-encoded key.
    Hidden,
}

/// Maintenance progress, published by the maintainer.
#[derive(Debug, Clone, Default)]
pub struct Progress {
    /// Per source (in [`ViewDefinition::sources`] order): the snapshot the
    /// view reflects.
    pub positions: Vec<u64>,
    /// The view snapshot that reflects them.
    pub view_snapshot: u64,
    /// When the last step committed (ms since the epoch).
    pub updated_ms: i64,
    /// Why maintenance stopped, if it did.
    pub error: Option<String>,
    /// The step under way: source changelog rows taken in so far, and in all.
    pub step: Option<(u64, u64)>,
    /// While the view is being filled: rows written so far.
    pub backfilled: Option<u64>,
}

impl Progress {
    /// Whether the maintainer has started (or failed to).
    pub fn started(&self) -> bool {
        !self.positions.is_empty() || self.error.is_some()
    }
}

/// A materialized view: its stored rows (a Dynamic Table with the hidden
/// columns), its definition, and the maintainer's progress. As a
/// `TableProvider` it shows only the visible columns, at the latest view
/// snapshot; a reading statement first calls [`MaterializedView::before_read`]
/// (read-your-writes across views, or a clear error).
#[derive(Debug)]
pub struct MaterializedView {
    /// The view's name.
    pub name: RelationName,
    /// The stored table, all columns.
    pub storage: Arc<DynamicTable>,
    /// The definition.
    pub definition: ViewDefinition,
    /// The directory of the stored table.
    pub dir: object_store::path::Path,
    /// The visible columns as a provider.
    visible: Arc<DynamicTable>,
    /// Published by the maintainer.
    pub progress: tokio::sync::watch::Sender<Progress>,
    /// The sources, once planned (for freshness waits).
    sources: Mutex<Vec<plan::Source>>,
    /// How the maintainer computes steps, once it has planned the view.
    maintenance: Mutex<&'static str>,
    /// Reads by key of a join input its steps made ([`probe`]).
    pub probes: std::sync::atomic::AtomicU64,
    /// Reads of a whole source snapshot its steps made.
    pub scans: std::sync::atomic::AtomicU64,
    /// The physical plans of its steps, planned once by shape ([`steps`]).
    pub step_plans: steps::StepPlans,
    /// Rows a view that emits on window close dropped because their window
    /// had closed (since the view's maintainer started).
    pub late_rows: std::sync::atomic::AtomicU64,
    /// The arrangements its steps probe, once the maintainer opened them.
    arrangements: Mutex<Vec<arrange::ArrangementUse>>,
    /// Stops the maintainer (or a refresh); a new one after RESUME.
    stop: Mutex<tokio_util::sync::CancellationToken>,
    /// How the view is kept up to date now (the definition's, as altered).
    refresh: Mutex<refresh::Refresh>,
    /// A full view's refresher, once started.
    refresher: Mutex<Option<Arc<refresh::Refresher>>>,
    /// Held while a refresh runs: one at a time.
    pub refreshing: tokio::sync::Mutex<()>,
    /// What the scheduler keeps about the view ([`schedule`]).
    pub schedule: Mutex<schedule::ViewSchedule>,
    /// The maintainer task.
    task: Mutex<Option<tokio::task::JoinHandle<()>>>,
    me: std::sync::Weak<MaterializedView>,
}

impl MaterializedView {
    /// A view over its stored table.
    pub fn new(
        name: RelationName,
        storage: Arc<DynamicTable>,
        definition: ViewDefinition,
        dir: object_store::path::Path,
    ) -> Arc<Self> {
        let visible = Arc::new(DynamicTable::visible_part(Arc::clone(storage.storage()), definition.columns.len()));
        let refresh = definition.refresh.clone();
        Arc::new_cyclic(|me| Self {
            name,
            storage,
            definition,
            dir,
            visible,
            progress: tokio::sync::watch::Sender::new(Progress::default()),
            sources: Mutex::new(Vec::new()),
            maintenance: Mutex::new("starting"),
            probes: std::sync::atomic::AtomicU64::new(0),
            scans: std::sync::atomic::AtomicU64::new(0),
            step_plans: steps::StepPlans::default(),
            late_rows: std::sync::atomic::AtomicU64::new(0),
            arrangements: Mutex::new(Vec::new()),
            stop: Mutex::new(tokio_util::sync::CancellationToken::new()),
            refresh: Mutex::new(refresh),
            refresher: Mutex::new(None),
            refreshing: tokio::sync::Mutex::new(()),
            schedule: Mutex::new(schedule::ViewSchedule::default()),
            task: Mutex::new(None),
            me: me.clone(),
        })
    }

    /// This view, shared.
    pub fn arc(&self) -> Option<Arc<Self>> {
        self.me.upgrade()
    }

    /// The visible columns as a Dynamic Table provider (time travel).
    pub fn visible_table(&self) -> Arc<DynamicTable> {
        Arc::clone(&self.visible)
    }

    /// The storage table.
    pub fn table(&self) -> &Arc<storage::Table> {
        self.storage.storage()
    }

    /// Number of visible columns (hidden ones follow).
    pub fn visible_columns(&self) -> usize {
        self.definition.columns.len()
    }

    /// Stops maintenance (DROP, shutdown, SUSPEND) and waits until the
    /// maintainer, or a refresh under way, has stopped: no commit of it
    /// follows.
    pub async fn stop(&self) {
        crate::lock(&self.stop).cancel();
        let task = crate::lock(&self.task).take();
        if let Some(task) = task {
            let _ = task.await;
        }
        drop(self.refreshing.lock().await);
    }

    /// After [`MaterializedView::stop`]: maintenance may start again.
    pub(crate) fn restartable(&self) {
        let mut stop = crate::lock(&self.stop);
        if stop.is_cancelled() {
            *stop = tokio_util::sync::CancellationToken::new();
        }
    }

    pub(crate) fn set_task(&self, task: tokio::task::JoinHandle<()>) {
        *crate::lock(&self.task) = Some(task);
    }

    pub(crate) fn stop_token(&self) -> tokio_util::sync::CancellationToken {
        crate::lock(&self.stop).clone()
    }

    /// How the view is kept up to date now.
    pub fn refresh_settings(&self) -> refresh::Refresh {
        crate::lock(&self.refresh).clone()
    }

    pub(crate) fn set_refresh_settings(&self, settings: refresh::Refresh) {
        *crate::lock(&self.refresh) = settings;
    }

    /// Whether the view is refreshed in full (not maintained continuously).
    pub fn is_full(&self) -> bool {
        crate::lock(&self.refresh).mode == refresh::RefreshMode::Full
    }

    /// A full view's refresher, once started.
    pub fn refresher(&self) -> Option<Arc<refresh::Refresher>> {
        crate::lock(&self.refresher).clone()
    }

    pub(crate) fn set_refresher(&self, refresher: Option<Arc<refresh::Refresher>>) {
        *crate::lock(&self.refresher) = refresher;
    }

    /// The definition as it is to be stored now (with the refresh settings as altered).
    pub fn current_definition(&self) -> ViewDefinition {
        let mut definition = self.definition.clone();
        definition.refresh = self.refresh_settings();
        definition
    }

    /// The arrangements its steps probe, once the maintainer opened them.
    pub fn arrangements(&self) -> Vec<arrange::ArrangementUse> {
        crate::lock(&self.arrangements).clone()
    }

    pub(crate) fn set_arrangements(&self, used: Vec<arrange::ArrangementUse>) {
        *crate::lock(&self.arrangements) = used;
    }

    /// The sources, once the maintainer has planned the view.
    pub fn sources(&self) -> Vec<plan::Source> {
        crate::lock(&self.sources).clone()
    }

    /// How a step is computed (`sys.views.maintenance`): `linear` (changes
    /// flow through projections, filters, joins and unions), `group state`
    /// (per-group aggregate state), `recompute groups` (the touched groups
    /// or partitions are evaluated again), or `starting`.
    pub fn maintenance(&self) -> &'static str {
        *crate::lock(&self.maintenance)
    }

    pub(crate) fn set_maintenance(&self, maintenance: &'static str) {
        *crate::lock(&self.maintenance) = maintenance;
    }

    pub(crate) fn set_sources(&self, sources: Vec<plan::Source>) {
        *crate::lock(&self.sources) = sources;
    }

    /// Waits until the view reflects every commit its sources (and their
    /// sources) had when this was called; [`Freshness::Behind`] when
    /// `deadline` passes first.
    ///
    /// # Errors
    /// The maintainer stopped with an error.
    pub fn wait_fresh(&self, deadline: tokio::time::Instant) -> futures::future::BoxFuture<'_, Result<Freshness>> {
        Box::pin(async move {
            let settings = self.refresh_settings();
            if settings.mode == refresh::RefreshMode::Full || settings.suspended {
                // Fresh by its schedule (or not at all, suspended): read as it is.
                return Ok(Freshness::Fresh);
            }
            let mut progress = self.progress.subscribe();
            // After a restart the maintainer plans the view first; until it
            // has published positions, the sources are not known.
            let started =
                matches!(tokio::time::timeout_at(deadline, progress.wait_for(Progress::started)).await, Ok(Ok(_)));
            if !started {
                return Ok(Freshness::Behind);
            }
            let sources = crate::lock(&self.sources).clone();
            for source in &sources {
                if let Some(view) = &source.view
                    && view.wait_fresh(deadline).await? == Freshness::Behind
                {
                    return Ok(Freshness::Behind);
                }
            }
            let targets: Vec<u64> =
                sources.iter().map(|s| s.table.storage().latest_snapshot().map_or(0, |snapshot| snapshot.id)).collect();
            let caught_up = |p: &Progress| {
                p.error.is_some()
                    || (p.positions.len() == targets.len()
                        && p.positions.iter().zip(&targets).all(|(have, want)| have >= want))
            };
            let error = match tokio::time::timeout_at(deadline, progress.wait_for(caught_up)).await {
                Ok(Ok(p)) => p.error.clone(),
                _ => return Ok(Freshness::Behind),
            };
            if let Some(error) = error {
                return Err(self.not_maintained(&error));
            }
            Ok(Freshness::Fresh)
        })
    }

    fn not_maintained(&self, error: &str) -> Error {
        Error::new(
            StatusCode::ObjectNotInPrerequisiteState,
            format!("materialized view {} is not being maintained: {error}", self.name),
        )
    }

    /// How far the view is behind its sources now: the commits it does not
    /// reflect yet and milliseconds since the oldest of them (`None` before
    /// the maintainer has started).
    pub async fn lag(&self) -> Option<(u64, i64)> {
        let progress = self.progress.borrow().clone();
        if !progress.started() {
            return None;
        }
        let now = crate::now_ms();
        let (mut commits, mut oldest_ms) = (0u64, 0i64);
        for (i, source) in self.sources().iter().enumerate() {
            let table = source.table.storage();
            let latest = table.latest_snapshot().map_or(0, |s| s.id);
            let position = progress.positions.get(i).copied().unwrap_or(0);
            if position < latest {
                commits += latest - position;
                if let Ok(snapshot) = table.read_snapshot(position + 1).await {
                    oldest_ms = oldest_ms.max(now - snapshot.commit_time_ms);
                }
            }
        }
        Some((commits, oldest_ms.max(0)))
    }

    /// Before a statement reads the view: wait up to `wait` for it to
    /// reflect every source commit made before now, failing (55000, naming
    /// the view and its lag) when it does not; with `wait = None`
    /// (`view_staleness = 'allow'`), read at once and return a notice with
    /// the lag when there is one.
    ///
    /// # Errors
    /// The view is behind after `wait`; its maintainer failed.
    pub async fn before_read(&self, wait: Option<std::time::Duration>) -> Result<Option<String>> {
        let settings = self.refresh_settings();
        if settings.suspended {
            return Ok(Some(format!(
                "materialized view {} is suspended: its content is as of its last {} (ALTER MATERIALIZED VIEW … RESUME)",
                self.name,
                if settings.mode == refresh::RefreshMode::Full { "refresh" } else { "maintenance step" }
            )));
        }
        if settings.mode == refresh::RefreshMode::Full {
            // As fresh as its schedule keeps it: no wait, once it has been refreshed (after a
            // crash during its CREATE, or while starting, it waits for that as any view does).
            let mut progress = self.progress.subscribe();
            if progress.borrow().started() {
                return Ok(None);
            }
            let Some(wait) = wait else {
                return Ok(Some(format!(
                    "materialized view {} is starting: its latest snapshot is read (view_staleness = allow)",
                    self.name
                )));
            };
            return match tokio::time::timeout(wait, progress.wait_for(Progress::started)).await {
                Ok(Ok(p)) if p.positions.is_empty() => {
                    Err(self.not_maintained(p.error.as_deref().unwrap_or("it did not start")))
                }
                Ok(Ok(_)) => Ok(None),
                _ => Err(Error::new(
                    StatusCode::ObjectNotInPrerequisiteState,
                    format!(
                        "materialized view {} is still starting (its first refresh has not committed) after \
                         view_read_timeout ({} ms): retry, or raise view_read_timeout",
                        self.name,
                        wait.as_millis()
                    ),
                )),
            };
        }
        let Some(wait) = wait else {
            if let Some(error) = self.progress.borrow().error.clone() {
                return Err(self.not_maintained(&error));
            }
            return Ok(match self.lag().await {
                None => Some(format!(
                    "materialized view {} is starting: its latest snapshot is read (view_staleness = allow)",
                    self.name
                )),
                Some((0, _)) => None,
                Some((commits, ms)) => Some(format!(
                    "materialized view {} is {ms} ms behind its sources ({commits} source commits not reflected); \
                     its latest snapshot is read (view_staleness = allow)",
                    self.name
                )),
            });
        };
        let deadline = tokio::time::Instant::now() + wait;
        if self.wait_fresh(deadline).await? == Freshness::Fresh {
            return Ok(None);
        }
        let lag = match self.lag().await {
            Some((commits, ms)) => format!("{ms} ms behind its sources ({commits} source commits not reflected)"),
            None => "still starting (its maintainer has not caught up since the server started)".to_string(),
        };
        Err(Error::new(
            StatusCode::ObjectNotInPrerequisiteState,
            format!(
                "materialized view {} is {lag} and did not catch up within view_read_timeout ({} ms): retry, raise \
                 view_read_timeout, or SET view_staleness = 'allow' to read its latest snapshot",
                self.name,
                wait.as_millis()
            ),
        ))
    }
}

/// Whether a view caught up before a deadline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Freshness {
    /// It reflects every source commit made before the wait began.
    Fresh,
    /// The deadline passed first.
    Behind,
}

#[async_trait]
impl TableProvider for MaterializedView {
    fn schema(&self) -> SchemaRef {
        self.visible.schema()
    }

    fn table_type(&self) -> TableType {
        TableType::Base
    }

    async fn scan(
        &self,
        state: &dyn DfSession,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        _limit: Option<usize>,
    ) -> datafusion::error::Result<Arc<dyn ExecutionPlan>> {
        // Freshness is the reading statement's business (`before_read`,
        // before planning its execution), never a wait inside planning.
        self.visible.scan_snapshot(state, None, projection, filters).await
    }

    fn supports_filters_pushdown(
        &self,
        filters: &[&Expr],
    ) -> datafusion::error::Result<Vec<TableProviderFilterPushDown>> {
        self.visible.supports_filters_pushdown(filters)
    }

    async fn insert_into(
        &self,
        _state: &dyn DfSession,
        _input: Arc<dyn ExecutionPlan>,
        _insert_op: InsertOp,
    ) -> datafusion::error::Result<Arc<dyn ExecutionPlan>> {
        Err(self.read_only("INSERT INTO"))
    }

    async fn delete_from(
        &self,
        _state: &dyn DfSession,
        _filters: Vec<Expr>,
    ) -> datafusion::error::Result<Arc<dyn ExecutionPlan>> {
        Err(self.read_only("DELETE FROM"))
    }

    async fn update(
        &self,
        _state: &dyn DfSession,
        _assignments: Vec<(String, Expr)>,
        _filters: Vec<Expr>,
    ) -> datafusion::error::Result<Arc<dyn ExecutionPlan>> {
        Err(self.read_only("UPDATE"))
    }
}

/// `v$changelog`, `v$snapshots`, `v$files`, `v$consumers` of a materialized
/// view: the system tables of its Dynamic Table, showing the visible
/// columns only. A statement reading one waits for the view to be fresh,
/// as a read of the view does.
#[derive(Debug)]
pub struct ViewSystemTable {
    /// The view.
    pub view: Arc<MaterializedView>,
    inner: Arc<dyn TableProvider>,
}

impl ViewSystemTable {
    /// `inner` (a system table of `view`'s table) as the view's.
    pub fn new(view: Arc<MaterializedView>, inner: Arc<dyn TableProvider>) -> Self {
        Self { view, inner }
    }
}

#[async_trait]
impl TableProvider for ViewSystemTable {
    fn schema(&self) -> SchemaRef {
        self.inner.schema()
    }

    fn table_type(&self) -> TableType {
        self.inner.table_type()
    }

    async fn scan(
        &self,
        state: &dyn DfSession,
        projection: Option<&Vec<usize>>,
        filters: &[Expr],
        limit: Option<usize>,
    ) -> datafusion::error::Result<Arc<dyn ExecutionPlan>> {
        self.inner.scan(state, projection, filters, limit).await
    }

    fn supports_filters_pushdown(
        &self,
        filters: &[&Expr],
    ) -> datafusion::error::Result<Vec<TableProviderFilterPushDown>> {
        self.inner.supports_filters_pushdown(filters)
    }
}

/// Plans a view's defining query as the maintainer needs it: DataFusion's
/// optimized plan, without the rewrite of `COUNT(DISTINCT x)` into two
/// aggregates (one aggregate is what the maintainer recomputes per group).
///
/// # Errors
/// Parse and planning errors.
pub async fn plan_query(ctx: &datafusion::prelude::SessionContext, sql: &str) -> Result<LogicalPlan> {
    // The same parser as the session that created the view, so a stored
    // definition parses after a restart as it did at CREATE.
    let mut statements = crate::sql::parse(sql)?;
    let (Some(crate::sql::Statement::Plan(mut inner)), true) = (statements.pop(), statements.is_empty()) else {
        return Err(Error::invalid("a materialized view needs exactly one query"));
    };
    crate::sql::windows::rewrite(&mut inner)?;
    let statement = datafusion::sql::parser::Statement::Statement(inner);
    let state = ctx.state();
    let plan = state.statement_to_plan(statement).await?;
    let rules: Vec<_> = state
        .optimizers()
        .iter()
        .filter(|rule| rule.name() != "single_distinct_aggregation_to_group_by")
        .cloned()
        .collect();
    let state =
        datafusion::execution::SessionStateBuilder::new_from_existing(state).with_optimizer_rules(rules).build();
    Ok(state.optimize(&plan)?)
}

/// The stored definition and the table schema of a new view.
///
/// # Errors
/// Duplicate or reserved column names; a column list longer than the query's columns.
pub fn define(
    request: &CreateMaterializedView,
    plan: &plan::ViewPlan,
    refresh: refresh::Refresh,
) -> Result<(ViewDefinition, SchemaRef, storage::TableOptions)> {
    let output = plan.plan.schema();
    let mut options = request.options.clone();
    let emit_on_window_close = match options.remove("emit").as_deref().map(str::to_ascii_lowercase).as_deref() {
        None | Some("on-update") => false,
        Some("on-window-close") => true,
        Some(other) => {
            return Err(Error::new(
                StatusCode::InvalidParameterValue,
                format!("materialized view option 'emit' is 'on-update' or 'on-window-close', not '{other}'"),
            ));
        }
    };
    if emit_on_window_close && refresh.mode == refresh::RefreshMode::Full {
        return Err(Error::unsupported(format!(
            "materialized view {} emits on window close, which needs continuous maintenance: give it a freshness \
             below views.full_refresh_threshold, or refresh_mode = 'continuous'",
            request.name
        )));
    }
    refresh::Refresh::take_options(&mut options)?;
    let mut options = storage::TableOptions::parse(&options)?;
    // A row rewritten with the same visible values (its hidden state or key
    // aside) is no change: readers and SUBSCRIBE see only rows that changed.
    options.changelog_columns = Some(plan.visible);
    let columns = column_names(request, output, plan.visible)?;
    if emit_on_window_close {
        check_window_close(request, plan, &columns)?;
    }
    // A Top-N view keeps its state when its key is visible columns, led by
    // the partition's; otherwise it recomputes partitions, keyed as before.
    let mut top_n = plan.top_n.is_some() && !emit_on_window_close && plan.window_change_fits()?;
    let (mut key, _) = maintain::derive_key(plan)?;
    if plan.top_n.is_some() && !(top_n && matches!(key, KeyLayout::Visible(_))) {
        let mut plain = plan.clone();
        plain.top_n = None;
        key = maintain::derive_key(&plain)?.0;
        top_n = false;
    }
    let mut fields = visible_fields(output, &columns, &key);
    if key == KeyLayout::Hidden {
        fields.push(Field::new(HIDDEN_KEY, DataType::Binary, false));
    }
    // Group state in hidden columns of the rows; under a HAVING, or for the
    // open windows of a view that emits on window close (grouped by its
    // window_end), in a state table of its own.
    let window_state = emit_on_window_close
        && plan.state.is_some()
        && columns.iter().position(|c| c == "window_end").and_then(|c| plan.group_column_of(c)).is_some();
    let keeps_state = plan.state.as_ref().is_some_and(|s| !s.having) && !emit_on_window_close;
    let group_table = (plan.state.as_ref().is_some_and(|s| s.having) && !emit_on_window_close) || window_state;
    if keeps_state {
        fields.extend(state::state_fields(plan)?);
    }
    if top_n {
        fields.extend(plan.carried_layout()?.0);
    }
    let definition = ViewDefinition {
        query: request.query.clone(),
        columns,
        sources: plan.sources.iter().map(|s| s.name.to_string()).collect(),
        key,
        generation: 0,
        emit_on_window_close,
        state: keeps_state,
        top_n,
        group_table,
        refresh,
        batch_key: None,
    };
    Ok((definition, Arc::new(Schema::new(fields)), options))
}

/// The stored definition and the table schema of a new full view whose
/// query (`plan`, optimized) cannot be maintained incrementally: its
/// visible columns, keyed as [`refresh::batch_key`] finds.
///
/// # Errors
/// As [`define`]; a query that reads no table or materialized view.
pub fn define_batch(
    request: &CreateMaterializedView,
    plan: &LogicalPlan,
    refresh: refresh::Refresh,
) -> Result<(ViewDefinition, SchemaRef, storage::TableOptions)> {
    let mut options = request.options.clone();
    if options.remove("emit").is_some_and(|e| !e.eq_ignore_ascii_case("on-update")) {
        return Err(Error::unsupported(format!(
            "materialized view {} emits on window close, which needs continuous maintenance",
            request.name
        )));
    }
    refresh::Refresh::take_options(&mut options)?;
    let mut options = storage::TableOptions::parse(&options)?;
    let plan = match plan {
        LogicalPlan::Sort(sort) if sort.fetch.is_none() => sort.input.as_ref(),
        other => other,
    };
    let output = plan.schema();
    let visible = output.fields().len();
    let columns = column_names(request, output, visible)?;
    options.changelog_columns = Some(visible);
    let sources = refresh::sources_of(plan)?;
    let (key, batch_key) = refresh::batch_key(plan, visible);
    let mut fields = visible_fields(output, &columns, &key);
    if key == KeyLayout::Hidden {
        fields.push(Field::new(HIDDEN_KEY, DataType::Binary, false));
    }
    let definition = ViewDefinition {
        query: request.query.clone(),
        columns,
        sources: sources.iter().map(|s| s.name.to_string()).collect(),
        key,
        generation: 0,
        emit_on_window_close: false,
        state: false,
        top_n: false,
        group_table: false,
        refresh,
        batch_key: Some(batch_key),
    };
    Ok((definition, Arc::new(Schema::new(fields)), options))
}

/// The view's column names: the statement's, else the query's; checked.
fn column_names(request: &CreateMaterializedView, output: &DFSchema, visible: usize) -> Result<Vec<String>> {
    if request.column_names.len() > visible {
        return Err(Error::new(
            StatusCode::InvalidSyntax,
            format!(
                "CREATE MATERIALIZED VIEW {} specifies {} column names, but the query has {} columns",
                request.name,
                request.column_names.len(),
                visible
            ),
        ));
    }
    let columns: Vec<String> = (0..visible)
        .map(|i| request.column_names.get(i).cloned().flatten().unwrap_or_else(|| output.field(i).name().clone()))
        .collect();
    for (i, column) in columns.iter().enumerate() {
        if columns[..i].contains(column) {
            return Err(Error::new(
                StatusCode::DuplicateColumn,
                format!(
                    "column \"{column}\" specified more than once in materialized view {} (give it an alias)",
                    request.name
                ),
            ));
        }
        if column.starts_with("__") {
            return Err(Error::invalid(format!(
                "column name \"{column}\" of materialized view {} is reserved: names starting with __ are for hidden columns",
                request.name
            )));
        }
    }
    Ok(columns)
}

/// The view's visible columns as stored: the query's types (and Postgres
/// types), named `columns`, NOT NULL where they are key columns.
fn visible_fields(output: &DFSchema, columns: &[String], key: &KeyLayout) -> Vec<Field> {
    (0..columns.len())
        .map(|i| {
            let field = output.field(i);
            let in_key = matches!(key, KeyLayout::Visible(k) if k.contains(&i));
            // The Postgres type of the column (`varchar(32)`, `numeric(12,2)`), not its origin.
            let pg_type = field
                .metadata()
                .iter()
                .filter(|(k, _)| k.as_str() == crate::types::PG_TYPE_KEY || k.as_str() == crate::types::PG_TYPMOD_KEY)
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            Field::new(&columns[i], field.data_type().clone(), field.is_nullable() && !in_key).with_metadata(pg_type)
        })
        .collect()
}

/// The definition of the table that stores a view: its columns, keyed on
/// the derived key.
///
/// # Errors
/// Options that do not fit the columns.
pub fn table_schema(
    definition: &ViewDefinition,
    schema: SchemaRef,
    options: storage::TableOptions,
) -> Result<storage::TableSchema> {
    let key: Vec<&str> = match &definition.key {
        KeyLayout::Visible(columns) => columns.iter().map(|&i| definition.columns[i].as_str()).collect(),
        KeyLayout::Hidden => vec![HIDDEN_KEY],
    };
    Ok(storage::TableSchema::new(0, schema, &key, options)?)
}

/// A view that emits on window close groups by a window, shows its
/// `window_end`, and reads only tables with a watermark.
fn check_window_close(request: &CreateMaterializedView, plan: &plan::ViewPlan, columns: &[String]) -> Result<()> {
    if !plan.is_grouped() {
        return Err(Error::unsupported(format!(
            "materialized view {} emits on window close, which needs a GROUP BY over a window (TUMBLE or HOP)",
            request.name
        )));
    }
    let window_end = columns.iter().position(|c| c == "window_end");
    let is_time =
        window_end.is_some_and(|i| matches!(plan.plan.schema().field(i).data_type(), DataType::Timestamp(_, _)));
    if !is_time {
        return Err(Error::invalid(format!(
            "materialized view {} emits on window close: it needs a timestamp column named window_end",
            request.name
        )));
    }
    for source in &plan.sources {
        if source.view.is_some() || source.table.storage().schema().options.watermark.is_none() {
            return Err(Error::invalid(format!(
                "materialized view {} emits on window close, but {} has no watermark (table option 'watermark' = 'ts - 5 s')",
                request.name, source.name
            )));
        }
    }
    Ok(())
}

impl MaterializedView {
    fn read_only(&self, statement: &str) -> datafusion::error::DataFusionError {
        datafusion::error::DataFusionError::External(Box::new(Error::new(
            StatusCode::WrongObjectType,
            format!(
                "cannot {statement} materialized view {}: its rows are maintained from its defining query; change its sources instead",
                self.name
            ),
        )))
    }
}
