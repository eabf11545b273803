//! The refresh scheduler: runs the full refreshes of materialized views
//! when their freshness would otherwise be missed, a pipeline's in
//! dependency order, and records every refresh in `sys.refreshes`.
//!
//! A full view with freshness `f` must reflect a source commit made at time
//! `c` by `c + f`: it is due once `c + f − d` has passed for the oldest
//! commit it does not reflect (of its sources, or of theirs through the
//! views it reads: freshness is end to end), `d` being how long it expects
//! its refresh to take (the slowest of its last five, plus a quarter), with
//! those of the full views upstream that the round refreshes first. Nothing is due while no source changed, nor again
//! within a quarter of its freshness after an attempt. Due-ness is computed from
//! what is stored (the view's recorded source snapshots, the sources'
//! commit times), so schedules survive restarts, and a refresh a crash
//! interrupted (it commits all or nothing) is due again at once.
//!
//! A round takes the due views and, with them, the full views upstream of
//! them (transitively) that have changes to take: each runs once every
//! view of the round it reads has finished, so a downstream refresh reads
//! upstream results of the same round; a continuous view it reads is first
//! given a moment to catch up. At most `views.refresh_concurrency` run at
//! once. A failed refresh is tried again after 1, 2, 4 … times
//! `views.refresh_retry_backoff_ms`, `views.refresh_retries` more times;
//! then the view is marked failed (its status in `sys.views`, the error in
//! `sys.refreshes`) and tried again when next due, after its freshness; the
//! views downstream of it in the round are skipped.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::refresh::{Outcome, RefreshMode};
use super::{MaterializedView, ViewLister};
use crate::config::ViewsConfig;
use crate::error::{Error, Result};
use crate::now_ms;

/// The most refreshes `sys.refreshes` remembers.
const HISTORY: usize = 10_000;

/// How long a round waits for a continuous view it reads to catch up.
const CATCH_UP_WAIT: Duration = Duration::from_secs(5);

/// One refresh attempt, as `sys.refreshes` shows it.
#[derive(Debug, Clone)]
pub struct RefreshEntry {
    /// Unique within the server's run, increasing.
    pub id: u64,
    /// The view.
    pub view: String,
    /// `schedule`, `create`, `manual` (ALTER … REFRESH) or `resume`.
    pub trigger: &'static str,
    /// 1 for the first try, 2 for the first retry, …
    pub attempt: u32,
    /// When it started (ms since the epoch).
    pub started_ms: i64,
    /// When it ended.
    pub finished_ms: Option<i64>,
    /// `running`, `succeeded`, `skipped` (no source changed, or an upstream
    /// refresh of the round failed), `failed`.
    pub status: &'static str,
    /// How its query ran (`mpp: …` / `bsp: …`).
    pub execution: Option<String>,
    /// The source snapshots a successful refresh read, `{"schema.source": id, …}`.
    pub sources: Option<String>,
    /// The view snapshot it committed.
    pub view_snapshot: Option<u64>,
    /// Rows it added, changed and removed.
    pub changes: (u64, u64, u64),
    /// Why it failed or was skipped.
    pub error: Option<String>,
}

/// The history of refreshes since the server started (`sys.refreshes`).
#[derive(Debug, Default)]
pub struct RefreshLog {
    entries: Mutex<VecDeque<RefreshEntry>>,
    next: std::sync::atomic::AtomicU64,
}

impl RefreshLog {
    /// Every remembered refresh, oldest first.
    pub fn entries(&self) -> Vec<RefreshEntry> {
        crate::lock(&self.entries).iter().cloned().collect()
    }

    fn start(&self, view: &MaterializedView, trigger: &'static str, attempt: u32) -> u64 {
        let id = self.next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
        let mut entries = crate::lock(&self.entries);
        if entries.len() >= HISTORY {
            entries.pop_front();
        }
        entries.push_back(RefreshEntry {
            id,
            view: view.name.to_string(),
            trigger,
            attempt,
            started_ms: now_ms(),
            finished_ms: None,
            status: "running",
            execution: None,
            sources: None,
            view_snapshot: None,
            changes: (0, 0, 0),
            error: None,
        });
        id
    }

    fn update(&self, id: u64, change: impl FnOnce(&mut RefreshEntry)) {
        let mut entries = crate::lock(&self.entries);
        if let Some(entry) = entries.iter_mut().rev().find(|e| e.id == id) {
            change(entry);
        }
    }

    /// Records that `view` was not refreshed in a round: `why`.
    fn skipped(&self, view: &MaterializedView, trigger: &'static str, why: String) {
        let id = self.start(view, trigger, 1);
        self.update(id, |e| {
            e.status = "skipped";
            e.finished_ms = Some(now_ms());
            e.error = Some(why);
        });
    }
}

/// What the scheduler keeps about one view between rounds.
#[derive(Debug, Clone, Default)]
pub struct ViewSchedule {
    /// How long its last few refreshes took (ms), newest last.
    pub recent_durations_ms: VecDeque<i64>,
    /// After its refreshes failed: not due again before this.
    pub retry_after_ms: Option<i64>,
    /// When its last refresh attempt ended.
    pub last_attempt_ms: Option<i64>,
    /// When it is next due (ms since the epoch; `None`: when a source changes).
    pub next_ms: Option<i64>,
}

/// How many refresh durations a view's schedule remembers.
const DURATIONS_KEPT: usize = 5;

impl ViewSchedule {
    fn record_duration(&mut self, ms: i64) {
        if self.recent_durations_ms.len() == DURATIONS_KEPT {
            self.recent_durations_ms.pop_front();
        }
        self.recent_durations_ms.push_back(ms.max(0));
    }

    /// How long the next refresh is planned to take: the slowest of the
    /// last few plus a quarter. A refresh's duration varies with the load
    /// beside it (the first one often runs before the writers start), and
    /// starting a little early costs less than missing the freshness.
    #[must_use]
    pub fn expected_duration_ms(&self) -> i64 {
        let slowest = self.recent_durations_ms.iter().copied().max().unwrap_or(0);
        slowest + slowest / 4
    }
}

/// Runs one refresh of `view`, recorded in `log`.
///
/// # Errors
/// The refresh's error.
pub async fn refresh_once(
    view: &MaterializedView,
    log: &RefreshLog,
    trigger: &'static str,
    attempt: u32,
) -> Result<Outcome> {
    let refresher = started_refresher(view).await?;
    let _running = view.refreshing.lock().await;
    let id = log.start(view, trigger, attempt);
    let stop = view.stop_token();
    let outcome = refresher.refresh(&stop).await;
    log.update(id, |e| {
        e.finished_ms = Some(now_ms());
        match &outcome {
            Ok(Outcome::Skipped) => {
                e.status = "skipped";
                e.error = Some("no source changed since the last refresh".to_string());
            }
            Ok(Outcome::Refreshed { snapshot, summary }) => {
                e.status = "succeeded";
                e.view_snapshot = Some(*snapshot);
                e.execution = Some(summary.execution.clone());
                e.changes = (summary.inserted, summary.updated, summary.deleted);
                e.started_ms = summary.started_ms;
                e.sources =
                    view.table().latest_snapshot().and_then(|s| s.properties.get(super::POSITIONS_PROPERTY).cloned());
            }
            Err(error) => {
                e.status = "failed";
                e.error = Some(error.message().to_string());
            }
        }
    });
    {
        let mut schedule = crate::lock(&view.schedule);
        schedule.last_attempt_ms = Some(now_ms());
        if let Ok(Outcome::Refreshed { summary, .. }) = &outcome {
            schedule.record_duration(summary.finished_ms - summary.started_ms);
        }
    }
    outcome
}

/// How long a refresh waits for a view that is starting (after a restart).
const START_WAIT: Duration = Duration::from_secs(60);

/// `view`'s refresher, once the view has started (after a restart views
/// start in the background).
async fn started_refresher(view: &MaterializedView) -> Result<Arc<super::refresh::Refresher>> {
    let deadline = tokio::time::Instant::now() + START_WAIT;
    loop {
        if let Some(refresher) = view.refresher() {
            return Ok(refresher);
        }
        let not_full = view.refresh_settings().mode != RefreshMode::Full;
        let failed = view.progress.borrow().error.clone();
        if not_full || failed.is_some() || tokio::time::Instant::now() >= deadline {
            return Err(Error::new(
                crate::error::StatusCode::ObjectNotInPrerequisiteState,
                match failed {
                    Some(e) if !not_full => format!("materialized view {} did not start: {e}", view.name),
                    _ if not_full => format!("materialized view {} is not refreshed in full", view.name),
                    _ => format!("materialized view {} is still starting: retry", view.name),
                },
            ));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Refreshes `view`, retrying with backoff; on the last failure marks it
/// failed until its freshness has passed.
async fn refresh_with_retries(
    view: &MaterializedView,
    log: &RefreshLog,
    config: &ViewsConfig,
    stop: &CancellationToken,
) -> Result<()> {
    let mut attempt = 1;
    loop {
        match refresh_once(view, log, "schedule", attempt).await {
            Ok(_) => {
                crate::lock(&view.schedule).retry_after_ms = None;
                view.progress.send_modify(|p| p.error = None);
                return Ok(());
            }
            Err(e) if attempt > config.refresh_retries || stop.is_cancelled() || view.stop_token().is_cancelled() => {
                tracing::warn!(view = %view.name, error = %e, attempt, "materialized view refresh failed");
                let freshness = view.refresh_settings().freshness_ms.unwrap_or(60_000);
                crate::lock(&view.schedule).retry_after_ms = Some(now_ms() + freshness as i64);
                view.progress.send_modify(|p| p.error = Some(e.message().to_string()));
                return Err(e);
            }
            Err(e) => {
                tracing::info!(view = %view.name, error = %e, attempt, "materialized view refresh failed; retrying");
                let pause = config.refresh_retry_backoff_ms.saturating_mul(1 << (attempt - 1).min(10));
                tokio::select! {
                    () = stop.cancelled() => return Err(e),
                    () = tokio::time::sleep(Duration::from_millis(pause)) => {}
                }
                attempt += 1;
            }
        }
    }
}

/// When `view` (a full view with a freshness, not suspended) is due, ms
/// since the epoch; `None` while nothing it reads, directly or through the
/// views it reads, has changes it does not reflect.
async fn due_at(view: &MaterializedView) -> Option<i64> {
    let settings = view.refresh_settings();
    if settings.mode != RefreshMode::Full || settings.suspended {
        return None;
    }
    let freshness = settings.freshness_ms? as i64;
    view.refresher()?;
    let schedule = crate::lock(&view.schedule).clone();
    let due = oldest_pending(view, 0).await? + freshness - chain_duration(view, 0);
    // Not again right after an attempt (an upstream view that lags keeps
    // the view due without its refresh changing anything).
    let calm = schedule.last_attempt_ms.map(|at| at + (freshness / 4).max(100));
    Some([Some(due), schedule.retry_after_ms, calm].into_iter().flatten().max().unwrap_or(due))
}

/// The commit time of the oldest source commit `view` does not reflect,
/// directly or through the (not suspended) materialized views it reads:
/// end to end, as a pipeline's freshness is. Now, for a view that has not
/// started or been refreshed yet.
fn oldest_pending(view: &MaterializedView, depth: usize) -> futures::future::BoxFuture<'_, Option<i64>> {
    Box::pin(async move {
        let positions = view.progress.borrow().positions.clone();
        let sources = view.sources();
        if positions.len() != sources.len() || sources.is_empty() {
            return Some(now_ms());
        }
        let mut oldest: Option<i64> = None;
        for (source, position) in sources.iter().zip(positions) {
            let table = source.table.storage();
            let latest = table.latest_snapshot().map_or(0, |s| s.id);
            if position < latest {
                let at = table.read_snapshot(position + 1).await.map_or_else(|_| now_ms(), |s| s.commit_time_ms);
                oldest = Some(oldest.map_or(at, |o| o.min(at)));
            }
            if let Some(upstream) = &source.view
                && depth < 16
                && !upstream.refresh_settings().suspended
                && let Some(at) = oldest_pending(upstream, depth + 1).await
            {
                oldest = Some(oldest.map_or(at, |o| o.min(at)));
            }
        }
        oldest
    })
}

/// How long refreshing `view` takes, with the full views upstream of it
/// that a round refreshes first (the longest chain), as last measured.
fn chain_duration(view: &MaterializedView, depth: usize) -> i64 {
    let own = crate::lock(&view.schedule).expected_duration_ms();
    if depth >= 16 {
        return own;
    }
    let upstream = view
        .sources()
        .iter()
        .filter_map(|s| s.view.as_ref())
        .filter(|v| v.refresh_settings().mode == RefreshMode::Full)
        .map(|v| chain_duration(v, depth + 1))
        .max()
        .unwrap_or(0);
    own + upstream
}

/// Refreshes the full views of a warehouse on schedule.
pub struct Scheduler {
    list: ViewLister,
    config: ViewsConfig,
    log: Arc<RefreshLog>,
    /// Woken when a view is created, altered or dropped.
    wake: tokio::sync::Notify,
}

impl std::fmt::Debug for Scheduler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scheduler").finish_non_exhaustive()
    }
}

impl Scheduler {
    /// A scheduler of the views `list` returns.
    pub fn new(list: ViewLister, config: ViewsConfig, log: Arc<RefreshLog>) -> Self {
        Self { list, config, log, wake: tokio::sync::Notify::new() }
    }

    /// Looks again now (a view was created, altered, resumed).
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    /// Runs rounds until `stop` is cancelled.
    pub async fn run(self: Arc<Self>, stop: CancellationToken) {
        loop {
            let now = now_ms();
            let mut due = Vec::new();
            let mut next: Option<i64> = None;
            for view in (self.list)() {
                let at = due_at(&view).await;
                crate::lock(&view.schedule).next_ms = at;
                match at {
                    Some(at) if at <= now => due.push(view),
                    Some(at) => next = Some(next.map_or(at, |n| n.min(at))),
                    None => {}
                }
            }
            if !due.is_empty() {
                self.round(due, &stop).await;
                continue;
            }
            // Source commits make views due: look again within a second.
            let wait = next.map_or(1000, |n| (n - now).clamp(10, 1000)) as u64;
            tokio::select! {
                () = stop.cancelled() => return,
                () = self.wake.notified() => {}
                () = tokio::time::sleep(Duration::from_millis(wait)) => {}
            }
        }
    }

    /// Refreshes `due` and the full views upstream of them that have
    /// changes, each after the views of the round it reads.
    async fn round(&self, due: Vec<Arc<MaterializedView>>, stop: &CancellationToken) {
        let round = with_upstream(due);
        let reads: Vec<Vec<usize>> = round.iter().map(|view| upstream_in(view, &round)).collect();
        let mut state: Vec<Option<bool>> = vec![None; round.len()];
        let mut started = vec![false; round.len()];
        let mut running = tokio::task::JoinSet::new();
        let concurrency = self.config.refresh_concurrency.max(1);
        loop {
            for i in 0..round.len() {
                if started[i] || running.len() >= concurrency {
                    continue;
                }
                if reads[i].iter().any(|&u| state[u] == Some(false)) {
                    started[i] = true;
                    state[i] = Some(false);
                    let failed: Vec<String> = reads[i]
                        .iter()
                        .filter(|&&u| state[u] == Some(false))
                        .map(|&u| round[u].name.to_string())
                        .collect();
                    self.log.skipped(
                        &round[i],
                        "schedule",
                        format!("the refresh of {} it reads failed in this round", failed.join(", ")),
                    );
                    continue;
                }
                if reads[i].iter().all(|&u| state[u] == Some(true)) {
                    started[i] = true;
                    let view = Arc::clone(&round[i]);
                    let log = Arc::clone(&self.log);
                    let config = self.config.clone();
                    let stop = stop.clone();
                    running.spawn(async move {
                        catch_up_continuous_sources(&view).await;
                        (i, refresh_with_retries(&view, &log, &config, &stop).await.is_ok())
                    });
                }
            }
            match running.join_next().await {
                Some(Ok((i, ok))) => state[i] = Some(ok),
                Some(Err(e)) => {
                    tracing::error!(error = %e, "a refresh task failed");
                    // Which one is unknown: whatever has not finished is not started again this round.
                    for (i, s) in state.iter_mut().enumerate() {
                        if s.is_none() && started[i] {
                            *s = Some(false);
                        }
                    }
                }
                None if started.iter().all(|&s| s) || stop.is_cancelled() => return,
                None => {
                    // Nothing runs and something is left: it waits on a view that cannot finish (a cycle).
                    return;
                }
            }
        }
    }
}

/// The views of `round` that `view` reads, directly or through views
/// outside the round (a continuous view between two full ones).
fn upstream_in(view: &MaterializedView, round: &[Arc<MaterializedView>]) -> Vec<usize> {
    let mut found = Vec::new();
    let mut stack: Vec<(Arc<MaterializedView>, usize)> =
        view.sources().iter().filter_map(|s| s.view.clone()).map(|v| (v, 0)).collect();
    while let Some((upstream, depth)) = stack.pop() {
        match round.iter().position(|r| Arc::ptr_eq(r, &upstream)) {
            Some(i) if !found.contains(&i) => found.push(i),
            Some(_) => {}
            None if depth < 16 => {
                stack.extend(upstream.sources().iter().filter_map(|s| s.view.clone()).map(|v| (v, depth + 1)));
            }
            None => {}
        }
    }
    found
}

/// `due` and, transitively, the full views they read that have changes to
/// take, in an order where each view comes after those it reads.
fn with_upstream(due: Vec<Arc<MaterializedView>>) -> Vec<Arc<MaterializedView>> {
    let mut round: Vec<Arc<MaterializedView>> = Vec::new();
    fn visit(view: &Arc<MaterializedView>, round: &mut Vec<Arc<MaterializedView>>, depth: usize) {
        if depth > 64 || round.iter().any(|r| Arc::ptr_eq(r, view)) {
            return;
        }
        for source in view.sources() {
            if let Some(upstream) = &source.view {
                let settings = upstream.refresh_settings();
                let pending = upstream.refresher().and_then(|r| r.pending().ok()).is_some_and(|(_, current)| !current);
                if settings.mode == RefreshMode::Full && !settings.suspended && pending {
                    visit(upstream, round, depth + 1);
                } else {
                    // A continuous (or current) view upstream may itself read full views with changes.
                    for further in upstream.sources() {
                        if let Some(further) = &further.view
                            && further.refresh_settings().mode == RefreshMode::Full
                        {
                            visit(further, round, depth + 2);
                        }
                    }
                }
            }
        }
        round.push(Arc::clone(view));
    }
    for view in &due {
        visit(view, &mut round, 0);
    }
    round
}

/// Gives the continuous views `view` reads a moment to reflect their
/// sources' latest commits, so a refresh reads what the round's upstream
/// refreshes wrote.
async fn catch_up_continuous_sources(view: &MaterializedView) {
    let deadline = tokio::time::Instant::now() + CATCH_UP_WAIT;
    for source in view.sources() {
        if let Some(upstream) = &source.view
            && upstream.refresh_settings().mode == RefreshMode::Continuous
        {
            let _ = upstream.wait_fresh(deadline).await;
        }
    }
}
