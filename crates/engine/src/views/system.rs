//! `sys.views`: one row per materialized view and source, with how far the
//! view is behind the source (snapshots and milliseconds), and how its
//! steps read their join inputs: `probes` (lookups by key) and
//! `source_scans` (whole source snapshots read); the backlog (`backlog_rows`:
//! changelog rows of the source's commits the view does not reflect yet)
//! and the progress of the step or backfill under way (`step_rows_done` of
//! `step_rows_total`; a backfill counts rows written and has no total);
//! `late_rows`: rows a view that emits on window close dropped because
//! their window had already closed (since the server started);
//! `plans_reused` / `plans_planned`: step plans run from a physical plan
//! the view kept, and planned afresh ([`super::steps`]); `arrangements`:
//! the indexes of the source its steps probe by a join key that is not
//! the source's key ([`super::arrange`]), as `columns (N views)` for one
//! shared by N views, `columns (own)` for one only this view keeps.

use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::array::{
    ArrayRef, BooleanArray, Int64Array, RecordBatch, StringArray, TimestampMillisecondArray,
};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use datafusion::catalog::TableProvider;

use super::{MaterializedView, ViewLister};
use crate::catalog::computed::{Computed, ComputedRows};

/// `sys.views` over the views `list` returns.
pub fn views_table(list: ViewLister) -> Arc<dyn TableProvider> {
    Arc::new(Computed(ViewsTable { list, schema: views_schema() }))
}

fn views_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("view", DataType::Utf8, false),
        Field::new("source", DataType::Utf8, true),
        Field::new("source_snapshot", DataType::Int64, true),
        Field::new("source_latest", DataType::Int64, true),
        Field::new("lag_snapshots", DataType::Int64, true),
        Field::new("lag_ms", DataType::Int64, true),
        Field::new("view_snapshot", DataType::Int64, true),
        Field::new("updated_at", DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into())), true),
        Field::new("status", DataType::Utf8, false),
        Field::new("maintenance", DataType::Utf8, false),
        Field::new("definition", DataType::Utf8, false),
        Field::new("probes", DataType::Int64, false),
        Field::new("source_scans", DataType::Int64, false),
        Field::new("backlog_rows", DataType::Int64, true),
        Field::new("step_rows_done", DataType::Int64, true),
        Field::new("step_rows_total", DataType::Int64, true),
        Field::new("late_rows", DataType::Int64, false),
        Field::new("plans_reused", DataType::Int64, false),
        Field::new("plans_planned", DataType::Int64, false),
        Field::new("arrangements", DataType::Utf8, true),
        Field::new("refresh_mode", DataType::Utf8, false),
        Field::new("refresh_reason", DataType::Utf8, false),
        Field::new("freshness", DataType::Utf8, true),
        Field::new("staleness_ms", DataType::Int64, true),
        Field::new("freshness_missed", DataType::Boolean, true),
        Field::new("next_refresh", DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into())), true),
    ]))
}

/// `sys.views`, computed when scanned.
struct ViewsTable {
    list: ViewLister,
    schema: SchemaRef,
}

impl std::fmt::Debug for ViewsTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ViewsTable")
    }
}

/// One row of `sys.views`.
struct Row {
    view: String,
    source: Option<String>,
    position: Option<i64>,
    latest: Option<i64>,
    lag_ms: Option<i64>,
    view_snapshot: Option<i64>,
    updated: Option<i64>,
    status: String,
    maintenance: &'static str,
    definition: String,
    probes: i64,
    scans: i64,
    late: i64,
    /// Step plans run from the view's kept physical plans, and planned.
    plans: (i64, i64),
    backlog: Option<i64>,
    step: (Option<i64>, Option<i64>),
    arrangements: Option<String>,
    refresh: Refreshing,
}

/// The refresh columns of a view's rows.
#[derive(Clone)]
struct Refreshing {
    mode: &'static str,
    reason: String,
    freshness: Option<String>,
    /// The view's staleness: ms since the oldest source commit it does not reflect.
    staleness_ms: Option<i64>,
    missed: Option<bool>,
    next_ms: Option<i64>,
}

async fn rows_of(view: &MaterializedView) -> Vec<Row> {
    let progress = view.progress.borrow().clone();
    let settings = view.refresh_settings();
    let status = match (&progress.error, progress.started()) {
        _ if settings.suspended => "suspended".to_string(),
        (Some(error), _) => format!("failed: {error}"),
        (None, true) => "running".to_string(),
        (None, false) if progress.backfilled.is_some() => "backfilling".to_string(),
        (None, false) => "starting".to_string(),
    };
    let step = match (progress.step, progress.backfilled) {
        (Some((done, total)), _) => (Some(done as i64), Some(total as i64)),
        (None, Some(written)) => (Some(written as i64), None),
        (None, None) => (None, None),
    };
    let now = crate::now_ms();
    let staleness_ms = view.lag().await.map(|(_, ms)| ms);
    let refresh = Refreshing {
        mode: settings.mode.as_str(),
        reason: settings.reason.clone(),
        freshness: settings.freshness_ms.map(super::refresh::show_ms),
        staleness_ms,
        missed: settings.freshness_ms.zip(staleness_ms).map(|(target, lag)| lag > target as i64),
        next_ms: if settings.mode == super::refresh::RefreshMode::Full && !settings.suspended {
            crate::lock(&view.schedule).next_ms
        } else {
            None
        },
    };
    let sources = view.sources();
    let mut rows = Vec::with_capacity(sources.len());
    for (i, source) in sources.iter().enumerate() {
        let table = source.table.storage();
        let latest = table.latest_snapshot().map_or(0, |s| s.id);
        let position = progress.positions.get(i).copied();
        // Milliseconds since the oldest source commit the view does not reflect yet.
        let lag_ms = match position {
            Some(p) if p < latest => match table.read_snapshot(p + 1).await {
                Ok(s) => Some((now - s.commit_time_ms).max(0)),
                Err(_) => None,
            },
            Some(_) => Some(0),
            None => None,
        };
        let backlog = match position {
            Some(p) => backlog_rows(table, p, latest).await,
            None => None,
        };
        rows.push(Row {
            view: view.name.to_string(),
            source: Some(source.name.to_string()),
            position: position.map(|p| p as i64),
            latest: Some(latest as i64),
            lag_ms,
            view_snapshot: Some(progress.view_snapshot as i64),
            updated: (progress.updated_ms > 0).then_some(progress.updated_ms),
            status: status.clone(),
            maintenance: view.maintenance(),
            definition: view.definition.query.clone(),
            probes: view.probes.load(std::sync::atomic::Ordering::Relaxed) as i64,
            scans: view.scans.load(std::sync::atomic::Ordering::Relaxed) as i64,
            late: view.late_rows.load(std::sync::atomic::Ordering::Relaxed) as i64,
            plans: view.step_plans.counts(),
            backlog,
            step,
            arrangements: {
                let used: Vec<String> =
                    view.arrangements().iter().filter(|a| a.source == i).map(|a| a.describe()).collect();
                (!used.is_empty()).then(|| used.join("; "))
            },
            refresh: refresh.clone(),
        });
    }
    if rows.is_empty() {
        rows.push(Row {
            view: view.name.to_string(),
            source: None,
            position: None,
            latest: None,
            lag_ms: None,
            view_snapshot: None,
            updated: None,
            status,
            maintenance: view.maintenance(),
            definition: view.definition.query.clone(),
            probes: view.probes.load(std::sync::atomic::Ordering::Relaxed) as i64,
            scans: view.scans.load(std::sync::atomic::Ordering::Relaxed) as i64,
            late: view.late_rows.load(std::sync::atomic::Ordering::Relaxed) as i64,
            plans: view.step_plans.counts(),
            backlog: None,
            step,
            arrangements: None,
            refresh,
        });
    }
    rows
}

/// Changelog rows of the snapshots after `position` up to `latest`; `None`
/// when one of them can no longer be read.
async fn backlog_rows(table: &streamhouse_storage::Table, position: u64, latest: u64) -> Option<i64> {
    let mut rows = 0u64;
    for id in position + 1..=latest {
        rows += table.changelog_rows(id).await.ok()?;
    }
    Some(rows as i64)
}

#[async_trait]
impl ComputedRows for ViewsTable {
    fn schema(&self) -> SchemaRef {
        Arc::clone(&self.schema)
    }

    async fn rows(&self) -> datafusion::error::Result<Vec<RecordBatch>> {
        let mut rows = Vec::new();
        for view in (self.list)() {
            rows.extend(rows_of(&view).await);
        }
        rows.sort_by(|a, b| (&a.view, &a.source).cmp(&(&b.view, &b.source)));
        let columns: Vec<ArrayRef> = vec![
            Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.view.as_str()))),
            Arc::new(rows.iter().map(|r| r.source.as_deref()).collect::<StringArray>()),
            Arc::new(rows.iter().map(|r| r.position).collect::<Int64Array>()),
            Arc::new(rows.iter().map(|r| r.latest).collect::<Int64Array>()),
            Arc::new(
                rows.iter().map(|r| r.latest.zip(r.position).map(|(l, p)| (l - p).max(0))).collect::<Int64Array>(),
            ),
            Arc::new(rows.iter().map(|r| r.lag_ms).collect::<Int64Array>()),
            Arc::new(rows.iter().map(|r| r.view_snapshot).collect::<Int64Array>()),
            Arc::new(rows.iter().map(|r| r.updated).collect::<TimestampMillisecondArray>().with_timezone("UTC")),
            Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.status.as_str()))),
            Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.maintenance))),
            Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.definition.as_str()))),
            Arc::new(rows.iter().map(|r| Some(r.probes)).collect::<Int64Array>()),
            Arc::new(rows.iter().map(|r| Some(r.scans)).collect::<Int64Array>()),
            Arc::new(rows.iter().map(|r| r.backlog).collect::<Int64Array>()),
            Arc::new(rows.iter().map(|r| r.step.0).collect::<Int64Array>()),
            Arc::new(rows.iter().map(|r| r.step.1).collect::<Int64Array>()),
            Arc::new(rows.iter().map(|r| Some(r.late)).collect::<Int64Array>()),
            Arc::new(rows.iter().map(|r| Some(r.plans.0)).collect::<Int64Array>()),
            Arc::new(rows.iter().map(|r| Some(r.plans.1)).collect::<Int64Array>()),
            Arc::new(rows.iter().map(|r| r.arrangements.as_deref()).collect::<StringArray>()),
            Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.refresh.mode))),
            Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.refresh.reason.as_str()))),
            Arc::new(rows.iter().map(|r| r.refresh.freshness.as_deref()).collect::<StringArray>()),
            Arc::new(rows.iter().map(|r| r.refresh.staleness_ms).collect::<Int64Array>()),
            Arc::new(rows.iter().map(|r| r.refresh.missed).collect::<BooleanArray>()),
            Arc::new(
                rows.iter().map(|r| r.refresh.next_ms).collect::<TimestampMillisecondArray>().with_timezone("UTC"),
            ),
        ];
        Ok(vec![RecordBatch::try_new(Arc::clone(&self.schema), columns)?])
    }
}

/// `sys.refreshes` over `log`: one row per refresh attempt since the
/// server started, oldest first.
pub fn refreshes_table(log: Arc<super::schedule::RefreshLog>) -> Arc<dyn TableProvider> {
    let schema = Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("view", DataType::Utf8, false),
        Field::new("trigger", DataType::Utf8, false),
        Field::new("attempt", DataType::Int64, false),
        Field::new("started", DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into())), false),
        Field::new("finished", DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into())), true),
        Field::new("status", DataType::Utf8, false),
        Field::new("mode", DataType::Utf8, false),
        Field::new("execution", DataType::Utf8, true),
        Field::new("source_snapshots", DataType::Utf8, true),
        Field::new("view_snapshot", DataType::Int64, true),
        Field::new("rows_inserted", DataType::Int64, false),
        Field::new("rows_updated", DataType::Int64, false),
        Field::new("rows_deleted", DataType::Int64, false),
        Field::new("error", DataType::Utf8, true),
    ]));
    Arc::new(Computed(RefreshesTable { log, schema }))
}

struct RefreshesTable {
    log: Arc<super::schedule::RefreshLog>,
    schema: SchemaRef,
}

impl std::fmt::Debug for RefreshesTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RefreshesTable")
    }
}

#[async_trait]
impl ComputedRows for RefreshesTable {
    fn schema(&self) -> SchemaRef {
        Arc::clone(&self.schema)
    }

    async fn rows(&self) -> datafusion::error::Result<Vec<RecordBatch>> {
        let entries = self.log.entries();
        let int = |f: &dyn Fn(&super::schedule::RefreshEntry) -> i64| -> ArrayRef {
            Arc::new(entries.iter().map(|e| Some(f(e))).collect::<Int64Array>())
        };
        let columns: Vec<ArrayRef> = vec![
            int(&|e| e.id as i64),
            Arc::new(StringArray::from_iter_values(entries.iter().map(|e| e.view.as_str()))),
            Arc::new(StringArray::from_iter_values(entries.iter().map(|e| e.trigger))),
            int(&|e| i64::from(e.attempt)),
            Arc::new(
                entries.iter().map(|e| Some(e.started_ms)).collect::<TimestampMillisecondArray>().with_timezone("UTC"),
            ),
            Arc::new(entries.iter().map(|e| e.finished_ms).collect::<TimestampMillisecondArray>().with_timezone("UTC")),
            Arc::new(StringArray::from_iter_values(entries.iter().map(|e| e.status))),
            Arc::new(StringArray::from_iter_values(entries.iter().map(|_| "full"))),
            Arc::new(entries.iter().map(|e| e.execution.as_deref()).collect::<StringArray>()),
            Arc::new(entries.iter().map(|e| e.sources.as_deref()).collect::<StringArray>()),
            Arc::new(entries.iter().map(|e| e.view_snapshot.map(|s| s as i64)).collect::<Int64Array>()),
            int(&|e| e.changes.0 as i64),
            int(&|e| e.changes.1 as i64),
            int(&|e| e.changes.2 as i64),
            Arc::new(entries.iter().map(|e| e.error.as_deref()).collect::<StringArray>()),
        ];
        Ok(vec![RecordBatch::try_new(Arc::clone(&self.schema), columns)?])
    }
}
