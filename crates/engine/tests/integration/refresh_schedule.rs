//! The refresh scheduler with short freshness values: a pipeline refreshed
//! in dependency order, and a refresh that fails, is retried, is marked
//! failed, and recovers. Assertions are on order and content, never on how
//! long anything took.

use crate::support;
use std::sync::Arc;

use object_store::ObjectStore;
use object_store::local::LocalFileSystem;
use streamhouse_engine::warehouse::DynamicCatalog;
use streamhouse_engine::{Engine, EngineConfig, SessionInfo, StatusCode, ViewsConfig};

async fn engine(dir: &std::path::Path) -> Engine {
    let store: Arc<dyn ObjectStore> =
        Arc::new(LocalFileSystem::new_with_prefix(dir).unwrap().with_automatic_cleanup(true));
    let views = ViewsConfig { refresh_retries: 2, refresh_retry_backoff_ms: 10, ..ViewsConfig::default() };
    let catalog = DynamicCatalog::open(store).await.unwrap().with_views_config(views);
    Engine::with_catalog(EngineConfig { target_partitions: 2, ..EngineConfig::default() }, Arc::new(catalog)).unwrap()
}

async fn sql(engine: &Engine, text: &str) -> Result<String, (StatusCode, String)> {
    let mut session = engine.new_session(SessionInfo { user: "t".into(), ..Default::default() });
    support::run(&mut session, text).await
}

/// The rows of a query, one string per row (cells joined by spaces).
async fn rows(engine: &Engine, query: &str) -> Vec<String> {
    sql(engine, query)
        .await
        .unwrap()
        .lines()
        .filter(|l| l.starts_with('|'))
        .skip(1)
        .map(|l| l.trim_matches('|').split('|').map(str::trim).collect::<Vec<_>>().join(" "))
        .collect()
}

/// Waits (up to two minutes: the scheduler runs on its own) until `query` gives `want`.
async fn eventually(engine: &Engine, query: &str, want: &[&str]) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    loop {
        let got = rows(engine, query).await;
        if got == want {
            return;
        }
        assert!(std::time::Instant::now() < deadline, "{query}: still {got:?}, want {want:?}");
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// `(started, finished, view_snapshot, source_snapshots)` of the scheduled, succeeded refreshes of `view`.
async fn scheduled(engine: &Engine, view: &str) -> Vec<(String, String, String, String)> {
    rows(
        engine,
        &format!(
            "SELECT CAST(started AS BIGINT), CAST(finished AS BIGINT), view_snapshot, source_snapshots \
             FROM sys.refreshes WHERE view = 'public.{view}' AND trigger = 'schedule' AND status = 'succeeded' ORDER BY id"
        ),
    )
    .await
    .into_iter()
    .map(|r| {
        let mut parts = r.splitn(4, ' ').map(str::to_string);
        let mut next = || parts.next().unwrap_or_default();
        (next(), next(), next(), next())
    })
    .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scheduled_refreshes_run_a_pipeline_in_dependency_order() {
    let dir = tempfile::tempdir().unwrap();
    let e = engine(dir.path()).await;
    sql(&e, "CREATE TABLE events (id BIGINT PRIMARY KEY, kind TEXT, amount INT)").await.unwrap();
    sql(&e, "INSERT INTO events VALUES (1, 'buy', 10), (2, 'buy', 5), (3, 'view', NULL)").await.unwrap();
    // ODS → DWD (full) → cleaned (continuous) → DWS (full, end to end within a second).
    sql(
        &e,
        "CREATE MATERIALIZED VIEW dwd WITH (freshness = '1 hour', refresh_mode = 'full') AS \
         SELECT id, kind, amount FROM events WHERE amount IS NOT NULL ORDER BY id LIMIT 1000",
    )
    .await
    .unwrap();
    sql(&e, "CREATE MATERIALIZED VIEW cleaned AS SELECT id, upper(kind) AS kind, amount FROM dwd WHERE amount > 0")
        .await
        .unwrap();
    sql(
        &e,
        "CREATE MATERIALIZED VIEW dws WITH (freshness = '1 second', refresh_mode = 'full') AS \
         SELECT kind, count(*) AS n, sum(amount) AS total FROM cleaned GROUP BY kind",
    )
    .await
    .unwrap();
    assert_eq!(rows(&e, "SELECT * FROM dws").await, ["BUY 2 15"]);
    // dwd alone would wait an hour; dws, a second behind the events, refreshes it first in its round.
    sql(&e, "INSERT INTO events VALUES (4, 'buy', 7), (5, 'sell', 3)").await.unwrap();
    eventually(&e, "SELECT * FROM dws ORDER BY kind", &["BUY 3 22", "SELL 1 3"]).await;
    assert_eq!(rows(&e, "SELECT count(*) FROM dwd").await, ["4"]);
    let dwd = scheduled(&e, "dwd").await;
    let dws = scheduled(&e, "dws").await;
    let (dwd_last, dws_last) = (dwd.last().expect("dwd refreshed on schedule"), dws.last().expect("dws too"));
    // In order: dws started once dwd had committed, and read what dwd committed (through `cleaned`).
    assert!(dws_last.0 >= dwd_last.1, "dws {dws_last:?} started before dwd {dwd_last:?} finished");
    assert_eq!(rows(&e, "SELECT * FROM cleaned ORDER BY id").await, ["1 BUY 10", "2 BUY 5", "4 BUY 7", "5 SELL 3"]);
    // sys.views: modes, targets, and the next refresh of the full views.
    assert_eq!(
        rows(
            &e,
            "SELECT DISTINCT view, refresh_mode, coalesce(freshness, '-') FROM sys.views \
             WHERE view IN ('public.dwd', 'public.cleaned', 'public.dws') ORDER BY view"
        )
        .await,
        ["public.cleaned continuous -", "public.dwd full 1 h", "public.dws full 1 s"]
    );
    // Nothing changed: nothing is refreshed again.
    let before = rows(&e, "SELECT count(*) FROM sys.refreshes WHERE status = 'succeeded'").await;
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    assert_eq!(rows(&e, "SELECT count(*) FROM sys.refreshes WHERE status = 'succeeded'").await, before);
    e.shutdown();
    e.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_refresh_is_retried_then_marked_failed_and_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let e = engine(dir.path()).await;
    sql(&e, "CREATE TABLE t (k BIGINT PRIMARY KEY, v INT)").await.unwrap();
    sql(&e, "INSERT INTO t VALUES (1, 5)").await.unwrap();
    sql(
        &e,
        "CREATE MATERIALIZED VIEW ratios WITH (freshness = '1 second', refresh_mode = 'full') AS \
         SELECT k, 100 / v AS r FROM t",
    )
    .await
    .unwrap();
    // A division by zero appears in the data: the scheduled refresh fails, twice more, then the view is failed.
    sql(&e, "INSERT INTO t VALUES (2, 0)").await.unwrap();
    eventually(
        &e,
        "SELECT attempt, status, error LIKE '%zero%' FROM sys.refreshes WHERE view = 'public.ratios' \
         AND trigger = 'schedule' ORDER BY id LIMIT 3",
        &["1 failed true", "2 failed true", "3 failed true"],
    )
    .await;
    eventually(
        &e,
        "SELECT DISTINCT status LIKE 'failed: %zero%' FROM sys.views WHERE view = 'public.ratios'",
        &["true"],
    )
    .await;
    // It keeps its last content, and is read as it is.
    assert_eq!(rows(&e, "SELECT * FROM ratios").await, ["1 20"]);
    // A refresh on demand says why.
    let error = sql(&e, "ALTER MATERIALIZED VIEW ratios REFRESH").await.unwrap_err();
    assert_eq!(error.0, StatusCode::DivisionByZero, "{error:?}");
    // The data is mended: the next scheduled refresh succeeds and the view is running again.
    sql(&e, "UPDATE t SET v = 4 WHERE k = 2").await.unwrap();
    eventually(&e, "SELECT * FROM ratios ORDER BY k", &["1 20", "2 25"]).await;
    eventually(&e, "SELECT DISTINCT status FROM sys.views WHERE view = 'public.ratios'", &["running"]).await;
    e.shutdown();
    e.close().await;
}
