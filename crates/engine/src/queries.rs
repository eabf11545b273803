//! `sys.queries`: the most recent queries (the last [`KEPT`]), running or
//! ended, with how they ran: mode, duration, rows, peak memory, outcome.
//!
//! A query is recorded when it starts (before planning) and updated as its
//! rows are read: rows counted per batch; the end (or the error, or the
//! client dropping it) closes the record.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use async_trait::async_trait;
use datafusion::arrow::array::{ArrayRef, Int64Array, RecordBatch, StringArray, TimestampMillisecondArray};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use datafusion::physical_plan::{RecordBatchStream, SendableRecordBatchStream};
use futures::Stream;

use crate::catalog::computed::ComputedRows;
use crate::exec::QueryObserver;
use crate::exec::bsp::BspRun;
use crate::lock;
use crate::memory::QueryPool;
use crate::now_ms;

/// How many ended queries `sys.queries` keeps.
pub const KEPT: usize = 1000;

/// The log of recent queries, shared by the engine's sessions.
#[derive(Debug, Default)]
pub struct QueryLog {
    entries: Mutex<VecDeque<Arc<QueryRecord>>>,
    next_id: AtomicU64,
}

/// One query.
#[derive(Debug)]
pub struct QueryRecord {
    id: u64,
    session: u64,
    user: String,
    query: String,
    /// `mpp` or `bsp`, and why.
    mode: Mutex<(&'static str, String)>,
    started_ms: i64,
    /// 0 while running.
    ended_ms: AtomicI64,
    rows: AtomicU64,
    outcome: Mutex<Option<String>>,
    /// The query's pool while it runs (released at the end, its peak kept).
    pool: Mutex<Option<Arc<QueryPool>>>,
    peak: std::sync::atomic::AtomicUsize,
    /// The stages, when it runs in BSP.
    run: Mutex<Option<Arc<BspRun>>>,
}

impl QueryLog {
    /// Records a query that starts now.
    pub fn start(&self, session: u64, user: &str, query: String) -> Arc<QueryRecord> {
        let record = Arc::new(QueryRecord {
            id: self.next_id.fetch_add(1, Ordering::Relaxed) + 1,
            session,
            user: user.to_string(),
            query,
            mode: Mutex::new(("mpp", String::new())),
            started_ms: now_ms(),
            ended_ms: AtomicI64::new(0),
            rows: AtomicU64::new(0),
            outcome: Mutex::new(None),
            pool: Mutex::new(None),
            peak: std::sync::atomic::AtomicUsize::new(0),
            run: Mutex::new(None),
        });
        let mut entries = lock(&self.entries);
        entries.push_back(Arc::clone(&record));
        while entries.len() > KEPT {
            entries.pop_front();
        }
        record
    }

    fn snapshot(&self) -> Vec<Arc<QueryRecord>> {
        lock(&self.entries).iter().cloned().collect()
    }
}

impl QueryRecord {
    /// The query's number in `sys.queries`.
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The pool the query runs in.
    pub fn set_pool(&self, pool: Arc<QueryPool>) {
        *lock(&self.pool) = Some(pool);
    }

    /// Keeps the record up to date as `stream` is read.
    pub fn watch(self: Arc<Self>, stream: SendableRecordBatchStream) -> SendableRecordBatchStream {
        Box::pin(Recorded { inner: stream, record: self })
    }

    /// Closes the record of a query that failed before its rows streamed.
    pub fn fail(&self, error: &crate::error::Error) {
        self.end(format!("failed: {error}"));
    }

    fn end(&self, outcome: String) {
        let mut current = lock(&self.outcome);
        if current.is_none() {
            *current = Some(outcome);
            self.ended_ms.store(now_ms(), Ordering::Relaxed);
            if let Some(pool) = lock(&self.pool).take() {
                self.peak.store(pool.peak(), Ordering::Relaxed);
            }
        }
    }

    /// The most memory the query has held so far.
    fn peak(&self) -> usize {
        match &*lock(&self.pool) {
            Some(pool) => pool.peak(),
            None => self.peak.load(Ordering::Relaxed),
        }
    }
}

/// A query's stream that keeps its record up to date.
struct Recorded {
    inner: SendableRecordBatchStream,
    record: Arc<QueryRecord>,
}

impl Stream for Recorded {
    type Item = datafusion::error::Result<RecordBatch>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let polled = self.inner.as_mut().poll_next(cx);
        match &polled {
            Poll::Ready(Some(Ok(batch))) => {
                self.record.rows.fetch_add(batch.num_rows() as u64, Ordering::Relaxed);
            }
            Poll::Ready(Some(Err(e))) => {
                self.record.end(format!("failed: {}", crate::error::describe(e)));
            }
            Poll::Ready(None) => self.record.end("done".to_string()),
            Poll::Pending => {}
        }
        polled
    }
}

impl RecordBatchStream for Recorded {
    fn schema(&self) -> SchemaRef {
        self.inner.schema()
    }
}

impl Drop for Recorded {
    fn drop(&mut self) {
        self.record.end("cancelled".to_string());
    }
}

impl QueryObserver for QueryRecord {
    fn set_mode(&self, mode: &'static str, reason: String) {
        *lock(&self.mode) = (mode, reason);
    }

    fn set_run(&self, run: Arc<BspRun>) {
        *lock(&self.run) = Some(run);
    }
}

/// `sys.queries`, computed when scanned.
#[derive(Debug)]
pub struct QueriesTable {
    log: Arc<QueryLog>,
    schema: SchemaRef,
}

impl QueriesTable {
    /// The table over `log`.
    pub fn new(log: Arc<QueryLog>) -> Self {
        let schema = Arc::new(Schema::new(vec![
            Field::new("query_id", DataType::Int64, false),
            Field::new("session_id", DataType::Int64, false),
            Field::new("user", DataType::Utf8, false),
            Field::new("query", DataType::Utf8, false),
            Field::new("state", DataType::Utf8, false),
            Field::new("mode", DataType::Utf8, false),
            Field::new("mode_reason", DataType::Utf8, false),
            Field::new("started_at", DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into())), false),
            Field::new("duration_ms", DataType::Int64, false),
            Field::new("rows", DataType::Int64, false),
            Field::new("peak_memory_bytes", DataType::Int64, false),
            Field::new("error", DataType::Utf8, true),
            Field::new("stages", DataType::Int64, false),
            Field::new("task_attempts", DataType::Int64, false),
            Field::new("stage_bytes", DataType::Int64, false),
            Field::new("spilled_bytes", DataType::Int64, false),
            Field::new("retried_tasks", DataType::Int64, false),
            Field::new("workers", DataType::Utf8, true),
        ]));
        Self { log, schema }
    }
}

#[async_trait]
impl ComputedRows for QueriesTable {
    fn schema(&self) -> SchemaRef {
        Arc::clone(&self.schema)
    }

    async fn rows(&self) -> datafusion::error::Result<Vec<RecordBatch>> {
        self.rows_seen_by(None)
    }

    async fn rows_for(&self, state: &dyn datafusion::catalog::Session) -> datafusion::error::Result<Vec<RecordBatch>> {
        let viewer = state.config().get_extension::<QueryViewer>();
        let hidden_from = viewer.as_deref().and_then(QueryViewer::restricted_to);
        self.rows_seen_by(hidden_from.as_deref())
    }
}

/// Who scans `sys.queries` (a session's config extension): a role that is
/// not a superuser sees the text and error of its own statements only, as
/// Postgres' `pg_stat_activity` shows others' as `<insufficient privilege>`.
#[derive(Debug)]
pub struct QueryViewer {
    /// The role the session's statements are checked as; `None`: every right.
    pub role: Option<String>,
    /// To tell whether that role is a superuser now.
    pub access: Arc<crate::access::Access>,
}

impl QueryViewer {
    /// The user whose statements alone are shown in full, when restricted.
    fn restricted_to(&self) -> Option<String> {
        let role = self.role.as_ref()?;
        (!self.access.snapshot().is_superuser(role)).then(|| role.clone())
    }
}

/// Where each stage's tasks ran (`stage 1: host:port, host:port; stage 2: …`),
/// for a distributed BSP query; `None` otherwise.
fn stage_workers(stages: &[crate::exec::stage::StageStats]) -> Option<String> {
    if stages.iter().all(|s| s.workers.is_empty()) {
        return None;
    }
    let each: Vec<String> = stages
        .iter()
        .enumerate()
        .map(|(i, s)| format!("stage {}: {}", i + 1, s.workers.iter().cloned().collect::<Vec<_>>().join(", ")))
        .collect();
    Some(each.join("; "))
}

/// What a restricted viewer sees instead of another user's statement text.
const HIDDEN: &str = "<insufficient privilege>";

impl QueriesTable {
    /// The rows; with `only`, the text and error of statements by users
    /// other than `only` are hidden.
    fn rows_seen_by(&self, only: Option<&str>) -> datafusion::error::Result<Vec<RecordBatch>> {
        let records = self.log.snapshot();
        let shown = |r: &QueryRecord| only.is_none_or(|user| r.user == user);
        let now = now_ms();
        let outcome = |r: &QueryRecord| lock(&r.outcome).clone();
        let outcomes: Vec<Option<String>> = records.iter().map(|r| outcome(r)).collect();
        let state = |o: &Option<String>| match o.as_deref() {
            None => "running",
            Some(s) if s.starts_with("failed") => "failed",
            Some(s) => {
                if s == "done" {
                    "done"
                } else {
                    "cancelled"
                }
            }
        };
        let modes: Vec<(&'static str, String)> = records.iter().map(|r| lock(&r.mode).clone()).collect();
        let stages: Vec<Vec<crate::exec::stage::StageStats>> =
            records.iter().map(|r| lock(&r.run).as_ref().map(|run| run.stage_stats()).unwrap_or_default()).collect();
        let sum = |f: fn(&crate::exec::stage::StageStats) -> u64| {
            Int64Array::from_iter_values(stages.iter().map(|s| s.iter().map(f).sum::<u64>() as i64))
        };
        let columns: Vec<ArrayRef> = vec![
            Arc::new(Int64Array::from_iter_values(records.iter().map(|r| r.id as i64))),
            Arc::new(Int64Array::from_iter_values(records.iter().map(|r| r.session as i64))),
            Arc::new(StringArray::from_iter_values(records.iter().map(|r| r.user.as_str()))),
            Arc::new(StringArray::from_iter_values(
                records.iter().map(|r| if shown(r) { r.query.as_str() } else { HIDDEN }),
            )),
            Arc::new(StringArray::from_iter_values(outcomes.iter().map(state))),
            Arc::new(StringArray::from_iter_values(modes.iter().map(|m| m.0))),
            Arc::new(StringArray::from_iter_values(modes.iter().map(|m| m.1.as_str()))),
            Arc::new(
                TimestampMillisecondArray::from_iter_values(records.iter().map(|r| r.started_ms)).with_timezone("UTC"),
            ),
            Arc::new(Int64Array::from_iter_values(records.iter().map(|r| {
                let ended = r.ended_ms.load(Ordering::Relaxed);
                (if ended == 0 { now } else { ended }) - r.started_ms
            }))),
            Arc::new(Int64Array::from_iter_values(records.iter().map(|r| r.rows.load(Ordering::Relaxed) as i64))),
            Arc::new(Int64Array::from_iter_values(records.iter().map(|r| r.peak() as i64))),
            Arc::new(
                records
                    .iter()
                    .zip(&outcomes)
                    .map(|(r, o)| {
                        let error = o.as_deref().and_then(|s| s.strip_prefix("failed: "));
                        if shown(r) { error } else { error.map(|_| HIDDEN) }
                    })
                    .collect::<StringArray>(),
            ),
            Arc::new(Int64Array::from_iter_values(stages.iter().map(|s| s.len() as i64))),
            Arc::new(sum(|s| s.attempts as u64)),
            Arc::new(sum(|s| s.bytes)),
            Arc::new(sum(|s| s.spilled_bytes)),
            Arc::new(sum(|s| s.retried as u64)),
            Arc::new(stages.iter().map(|s| stage_workers(s)).collect::<StringArray>()),
        ];
        Ok(vec![RecordBatch::try_new(Arc::clone(&self.schema), columns)?])
    }
}
