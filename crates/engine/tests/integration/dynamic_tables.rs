//! Dynamic Tables through SQL: keyed upserts, merge engines, UPDATE/DELETE,
//! CREATE TABLE AS, options, and a restart on the same warehouse.

use crate::support;
use std::sync::Arc;

use object_store::ObjectStore;
use object_store::local::LocalFileSystem;
use streamhouse_engine::warehouse::DynamicCatalog;
use streamhouse_engine::{ByteSize, Engine, EngineConfig, SessionInfo, StatusCode, ViewsConfig};

async fn engine(dir: &std::path::Path) -> Engine {
    let store: Arc<dyn ObjectStore> =
        Arc::new(LocalFileSystem::new_with_prefix(dir).unwrap().with_automatic_cleanup(true));
    let catalog = DynamicCatalog::open(store).await.unwrap();
    Engine::with_catalog(EngineConfig { target_partitions: 2, ..EngineConfig::default() }, Arc::new(catalog)).unwrap()
}

/// Runs SQL in a new session; the last statement's rows as a pretty table, or its command tag.
async fn sql(engine: &Engine, text: &str) -> Result<String, (StatusCode, String)> {
    let mut session = engine.new_session(SessionInfo { user: "t".into(), ..Default::default() });
    support::run(&mut session, text).await
}

fn lines(table: &str) -> Vec<String> {
    table
        .lines()
        .filter(|l| l.starts_with('|'))
        .skip(1)
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keyed_tables_upsert_and_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let e = engine(dir.path()).await;
    sql(&e, "CREATE TABLE users (id BIGINT PRIMARY KEY, name TEXT, score INT)").await.unwrap();
    assert_eq!(sql(&e, "INSERT INTO users VALUES (1, 'ada', 10), (2, 'bob', 20)").await.unwrap(), "INSERT 0 2");
    // INSERT on a keyed table upserts.
    sql(&e, "INSERT INTO users VALUES (2, 'bobby', 21), (3, 'cy', 30)").await.unwrap();
    assert_eq!(
        lines(&sql(&e, "SELECT * FROM users ORDER BY id").await.unwrap()),
        ["| 1 | ada | 10 |", "| 2 | bobby | 21 |", "| 3 | cy | 30 |"]
    );
    assert_eq!(sql(&e, "UPDATE users SET score = score + 1 WHERE id >= 2").await.unwrap(), "UPDATE 2");
    assert_eq!(sql(&e, "DELETE FROM users WHERE name = 'ada'").await.unwrap(), "DELETE 1");
    assert_eq!(sql(&e, "DELETE FROM users WHERE id = 99").await.unwrap(), "DELETE 0");
    // An update that changes the key moves the row.
    sql(&e, "UPDATE users SET id = 30 WHERE id = 3").await.unwrap();
    let expected = ["| 2 | bobby | 22 |", "| 30 | cy | 31 |"];
    assert_eq!(lines(&sql(&e, "SELECT * FROM users ORDER BY id").await.unwrap()), expected);

    sql(&e, "CREATE TABLE events (at BIGINT, what TEXT)").await.unwrap();
    sql(&e, "INSERT INTO events VALUES (1, 'a'), (1, 'a')").await.unwrap();
    let err = sql(&e, "DELETE FROM events").await.unwrap_err();
    assert!(err.1.contains("append-only"), "{err:?}");
    sql(&e, "CREATE SCHEMA staging").await.unwrap();
    assert_eq!(sql(&e, "CREATE TABLE staging.top AS SELECT * FROM users WHERE score > 25").await.unwrap(), "SELECT 1");
    drop(e);

    // A new engine on the same warehouse: everything is still there.
    let e = engine(dir.path()).await;
    assert_eq!(lines(&sql(&e, "SELECT * FROM users ORDER BY id").await.unwrap()), expected);
    assert_eq!(lines(&sql(&e, "SELECT count(*) FROM events").await.unwrap()), ["| 2 |"]);
    assert_eq!(lines(&sql(&e, "SELECT id FROM staging.top").await.unwrap()), ["| 30 |"]);
    sql(&e, "DROP TABLE users").await.unwrap();
    assert_eq!(sql(&e, "SELECT * FROM users").await.unwrap_err().0, StatusCode::TableNotFound);
    drop(e);
    let e = engine(dir.path()).await;
    assert_eq!(sql(&e, "SELECT * FROM users").await.unwrap_err().0, StatusCode::TableNotFound);
    assert!(!dir.path().join("public/users").exists(), "DROP TABLE removes the table's files");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn merge_engines_and_options() {
    let dir = tempfile::tempdir().unwrap();
    let e = engine(dir.path()).await;
    sql(&e, "CREATE TABLE firsts (k INT PRIMARY KEY, v TEXT) WITH ('merge-engine' = 'first-row')").await.unwrap();
    sql(&e, "INSERT INTO firsts VALUES (1, 'first'), (1, 'second')").await.unwrap();
    sql(&e, "INSERT INTO firsts VALUES (1, 'third'), (2, 'x')").await.unwrap();
    assert_eq!(lines(&sql(&e, "SELECT * FROM firsts ORDER BY k").await.unwrap()), ["| 1 | first |", "| 2 | x |"]);

    let err = sql(&e, "CREATE TABLE bad (k INT PRIMARY KEY) WITH ('merge-engine' = 'newest')").await.unwrap_err();
    assert_eq!(err.0, StatusCode::InvalidArgument);
    assert!(err.1.contains("'newest'") && err.1.contains("deduplicate"), "{err:?}");
    let err = sql(&e, "CREATE TABLE bad (k INT PRIMARY KEY) WITH ('bucket' = '4')").await.unwrap_err();
    assert!(err.1.contains("unknown table option 'bucket'"), "{err:?}");
    assert_eq!(sql(&e, "SELECT * FROM bad").await.unwrap_err().0, StatusCode::TableNotFound);

    let err = sql(&e, "INSERT INTO firsts VALUES (NULL, 'no key')").await.unwrap_err();
    assert_eq!(err.0, StatusCode::ConstraintViolation, "{err:?}");
    assert_eq!(sql(&e, "CREATE TABLE firsts (k INT)").await.unwrap_err().0, StatusCode::AlreadyExists);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn views_and_renames_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let e = engine(dir.path()).await;
    sql(&e, "CREATE TABLE t (id BIGINT PRIMARY KEY, v INT)").await.unwrap();
    sql(&e, "INSERT INTO t VALUES (1, 10), (2, 20)").await.unwrap();
    sql(&e, "CREATE VIEW big AS SELECT id, v FROM t WHERE v > 15").await.unwrap();
    // A view over a view: planned after the view it reads.
    sql(&e, "CREATE VIEW a_over AS SELECT id FROM big").await.unwrap();
    sql(&e, "CREATE MATERIALIZED VIEW total AS SELECT sum(v) AS s FROM t").await.unwrap();
    sql(&e, "CREATE TABLE u (id BIGINT PRIMARY KEY)").await.unwrap();
    sql(&e, "INSERT INTO u VALUES (7)").await.unwrap();
    sql(&e, "CREATE VIEW over_u AS SELECT id FROM u").await.unwrap();
    // dbt's swap: the old relation out of the way, the new one into its name.
    sql(&e, "ALTER TABLE u RENAME TO u_backup").await.unwrap();
    sql(&e, "CREATE TABLE u (id BIGINT PRIMARY KEY)").await.unwrap();
    sql(&e, "INSERT INTO u VALUES (8)").await.unwrap();
    sql(&e, "ALTER MATERIALIZED VIEW total RENAME TO sums").await.unwrap();
    sql(&e, "ALTER VIEW a_over RENAME TO z_over").await.unwrap();
    // A renamed column, with rows written before and after the rename.
    sql(&e, "CREATE TABLE c (id BIGINT PRIMARY KEY, old_name TEXT DEFAULT 'd')").await.unwrap();
    sql(&e, "INSERT INTO c VALUES (1, 'before')").await.unwrap();
    sql(&e, "ALTER TABLE c RENAME COLUMN old_name TO new_name").await.unwrap();
    sql(&e, "INSERT INTO c (id) VALUES (2)").await.unwrap();
    drop(e);

    let e = engine(dir.path()).await;
    assert_eq!(lines(&sql(&e, "SELECT id FROM z_over").await.unwrap()), ["| 2 |"]);
    assert_eq!(
        lines(&sql(&e, "SELECT id FROM over_u").await.unwrap()),
        ["| 7 |"],
        "the view follows the renamed table"
    );
    assert_eq!(lines(&sql(&e, "SELECT id FROM u").await.unwrap()), ["| 8 |"]);
    assert_eq!(lines(&sql(&e, "SELECT id FROM u_backup").await.unwrap()), ["| 7 |"]);
    assert_eq!(
        lines(&sql(&e, "SELECT id, new_name FROM c ORDER BY id").await.unwrap()),
        ["| 1 | before |", "| 2 | d |"],
        "the renamed column reads rows written before the rename, and its DEFAULT"
    );
    sql(&e, "INSERT INTO t VALUES (3, 30)").await.unwrap();
    assert_eq!(lines(&sql(&e, "SELECT s FROM sums").await.unwrap()), ["| 60 |"], "the renamed view is maintained");
    assert_eq!(sql(&e, "SELECT * FROM total").await.unwrap_err().0, StatusCode::TableNotFound);
    let shown = sql(&e, "SELECT definition FROM pg_views WHERE viewname = 'over_u'").await.unwrap();
    assert!(shown.contains("u_backup"), "{shown}");
    assert_eq!(sql(&e, "DROP TABLE u_backup").await.unwrap_err().0, StatusCode::DependentObjectsStillExist);
    sql(&e, "DROP TABLE u_backup CASCADE").await.unwrap();
    sql(&e, "DROP VIEW big CASCADE").await.unwrap();
    drop(e);

    let e = engine(dir.path()).await;
    for gone in ["over_u", "u_backup", "big", "z_over"] {
        let err = sql(&e, &format!("SELECT * FROM {gone}")).await.unwrap_err();
        assert_eq!(err.0, StatusCode::TableNotFound, "{gone}: {err:?}");
    }
    assert_eq!(lines(&sql(&e, "SELECT id FROM u").await.unwrap()), ["| 8 |"]);
}

/// Per-session limits: statement length (54000), open cursors and SQL
/// prepared statements (53400); the session stays usable after each.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_limits_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn ObjectStore> =
        Arc::new(LocalFileSystem::new_with_prefix(dir.path()).unwrap().with_automatic_cleanup(true));
    let catalog = DynamicCatalog::open(store).await.unwrap();
    let config = EngineConfig {
        target_partitions: 2,
        max_statement_bytes: 200,
        max_cursors: 2,
        max_prepared_statements: 2,
        ..EngineConfig::default()
    };
    let e = Engine::with_catalog(config, Arc::new(catalog)).unwrap();
    let mut s = e.new_session(SessionInfo { user: "t".into(), ..Default::default() });
    let long = format!("SELECT '{}'", "x".repeat(300));
    let err = support::run(&mut s, &long).await.unwrap_err();
    assert_eq!(err.0, StatusCode::ProgramLimitExceeded, "{err:?}");
    assert!(err.1.contains("execution.max_statement_bytes"), "{}", err.1);

    support::run(&mut s, "BEGIN").await.unwrap();
    support::run(&mut s, "DECLARE a CURSOR FOR SELECT 1").await.unwrap();
    support::run(&mut s, "DECLARE b CURSOR FOR SELECT 2").await.unwrap();
    let err = support::run(&mut s, "DECLARE c CURSOR FOR SELECT 3").await.unwrap_err();
    assert_eq!(err.0, StatusCode::ConfigurationLimitExceeded, "{err:?}");
    support::run(&mut s, "ROLLBACK").await.unwrap();
    support::run(&mut s, "BEGIN").await.unwrap();
    support::run(&mut s, "DECLARE c CURSOR FOR SELECT 3").await.unwrap();
    support::run(&mut s, "COMMIT").await.unwrap();

    support::run(&mut s, "PREPARE p1 AS SELECT $1::int").await.unwrap();
    support::run(&mut s, "PREPARE p2 AS SELECT $1::int").await.unwrap();
    let err = support::run(&mut s, "PREPARE p3 AS SELECT $1::int").await.unwrap_err();
    assert_eq!(err.0, StatusCode::ConfigurationLimitExceeded, "{err:?}");
    support::run(&mut s, "DEALLOCATE p1").await.unwrap();
    support::run(&mut s, "PREPARE p3 AS SELECT $1::int").await.unwrap();
    assert_eq!(lines(&support::run(&mut s, "EXECUTE p3(7)").await.unwrap()), ["| 7 |"]);
}

/// A read of a materialized view that is behind its sources waits up to
/// `view_read_timeout`, then fails with 55000 naming the view and its lag;
/// `view_staleness = 'allow'` reads the latest view snapshot with a notice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_of_a_lagging_view_fail_clearly_or_say_how_stale() {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn ObjectStore> =
        Arc::new(LocalFileSystem::new_with_prefix(dir.path()).unwrap().with_automatic_cleanup(true));
    let catalog = Arc::new(DynamicCatalog::open(store).await.unwrap());
    let config = EngineConfig { target_partitions: 2, ..EngineConfig::default() };
    let e = Engine::with_catalog(config, Arc::clone(&catalog) as _).unwrap();
    sql(&e, "CREATE TABLE src (id BIGINT PRIMARY KEY, v BIGINT)").await.unwrap();
    sql(&e, "INSERT INTO src VALUES (1, 10)").await.unwrap();
    sql(&e, "CREATE MATERIALIZED VIEW total AS SELECT sum(v) AS s FROM src").await.unwrap();
    assert_eq!(lines(&sql(&e, "SELECT s FROM total").await.unwrap()), ["| 10 |"]);
    // Its maintainer stops (as if it could not keep up); the source moves on.
    let view = catalog.materialized_views().into_iter().find(|v| v.name.name == "total").unwrap();
    view.stop().await;
    sql(&e, "INSERT INTO src VALUES (2, 5)").await.unwrap();

    let mut session = e.new_session(SessionInfo { user: "t".into(), ..Default::default() });
    let (_, error) = session.run("SET view_read_timeout = '300ms'; SELECT s FROM total").await;
    let error = error.expect("a stale read is an error");
    assert_eq!(error.code(), StatusCode::ObjectNotInPrerequisiteState, "{error}");
    let message = error.message();
    assert!(
        message.contains("materialized view public.total is") && message.contains("behind its sources"),
        "{message}"
    );
    assert!(message.contains("view_read_timeout (300 ms)") && message.contains("view_staleness"), "{message}");
    // Also through a plain view over it, and in a subquery.
    sql(&e, "CREATE VIEW over_total AS SELECT s * 2 AS d FROM total").await.unwrap();
    let (_, error) = session.run("SELECT d FROM over_total").await;
    assert_eq!(error.expect("stale through a plain view").code(), StatusCode::ObjectNotInPrerequisiteState);

    let (outputs, error) = session.run("SET view_staleness = 'allow'; SELECT s FROM total").await;
    assert!(error.is_none(), "{error:?}");
    assert_eq!(outputs.len(), 2);
    let notices = session.take_notices();
    assert!(
        notices
            .iter()
            .any(|n| n.message.contains("public.total is") && n.message.contains("1 source commits not reflected")),
        "{notices:?}"
    );
    let (_, error) = session.run("RESET view_staleness; SET view_read_timeout = 'forever'").await;
    assert_eq!(error.expect("a bad duration").code(), StatusCode::InvalidParameterValue);
}

/// Peak resident memory of this process (KiB), from `/proc/self/status`.
fn peak_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    let line = status.lines().find(|l| l.starts_with("VmHWM:")).expect("a VmHWM line");
    line.split_whitespace().nth(1).and_then(|n| n.parse().ok()).expect("a number of kB")
}

/// The test's full name in this binary, to run it alone in a child process.
const MEMORY_TEST: &str = "dynamic_tables::views_backfill_and_catch_up_in_bounded_memory";

/// The views' step size: 50 000 rows, or `STREAMHOUSE_TEST_STEP_ROWS` (a
/// huge value takes each backlog whole, as steps did before they were
/// bounded: 525 MiB at catch-up where 50 000 gives 315 MiB).
fn step_rows() -> usize {
    std::env::var("STREAMHOUSE_TEST_STEP_ROWS").ok().and_then(|v| v.parse().ok()).unwrap_or(50_000)
}

/// An engine over the warehouse in `dir` with a tight memory limit and
/// steps of [`step_rows`].
async fn bounded_engine(dir: &std::path::Path) -> (Engine, Arc<DynamicCatalog>) {
    let store: Arc<dyn ObjectStore> =
        Arc::new(LocalFileSystem::new_with_prefix(dir).unwrap().with_automatic_cleanup(true));
    let catalog = Arc::new(
        DynamicCatalog::open(store)
            .await
            .unwrap()
            .with_views_config(ViewsConfig { step_rows: step_rows(), ..ViewsConfig::default() }),
    );
    let config =
        EngineConfig { target_partitions: 2, memory_limit: ByteSize::Bytes(256 << 20), ..EngineConfig::default() };
    (Engine::with_catalog(config, Arc::clone(&catalog) as _).unwrap(), catalog)
}

/// Runs one phase of [`views_backfill_and_catch_up_in_bounded_memory`] in a
/// fresh process (this test binary again), so its peak memory is its own:
/// the peak in MiB it reports.
fn phase_in_child(dir: &std::path::Path, phase: &str) -> u64 {
    let output = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", MEMORY_TEST, "--nocapture", "--test-threads", "1"])
        .env("STREAMHOUSE_TEST_PHASE", phase)
        .env("STREAMHOUSE_TEST_DIR", dir)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&output.stdout).to_string() + &String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "phase {phase} failed:\n{text}");
    let line = text.lines().find_map(|l| l.split("peak_kib=").nth(1)).unwrap_or_else(|| panic!("no peak in {text}"));
    line.trim().parse::<u64>().unwrap() / 1024
}

/// A phase of the memory test, in its own process.
async fn memory_phase(phase: &str) {
    let dir = std::path::PathBuf::from(std::env::var("STREAMHOUSE_TEST_DIR").unwrap());
    let (e, _catalog) = bounded_engine(&dir).await;
    match phase {
        "backfill" => {
            sql(&e, "CREATE MATERIALIZED VIEW byg AS SELECT g, count(*) AS n, sum(k) AS s FROM big GROUP BY g")
                .await
                .unwrap();
            sql(&e, "CREATE MATERIALIZED VIEW proj AS SELECT k, g, pad FROM big WHERE k % 2 = 0").await.unwrap();
        }
        "catch-up" => {
            // The reads wait until both views reflect the whole backlog.
            sql(&e, "SET view_read_timeout = '600s'; SELECT count(*) FROM proj").await.unwrap();
            sql(&e, "SET view_read_timeout = '600s'; SELECT count(*) FROM byg").await.unwrap();
        }
        other => panic!("unknown phase {other}"),
    }
    eprintln!("peak_kib={}", peak_kib());
    e.shutdown();
    e.close().await;
}

/// Views over a 3M-row table backfill, and later catch up a backlog of one
/// 1M-row commit and 20 small ones, in memory bounded by the step size
/// (`views.step_rows`), not by the table or the backlog. Each phase runs in
/// a fresh process whose peak resident size is recorded (printed) and
/// checked against a bound that taking a backlog whole exceeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn views_backfill_and_catch_up_in_bounded_memory() {
    if let Ok(phase) = std::env::var("STREAMHOUSE_TEST_PHASE") {
        return memory_phase(&phase).await;
    }
    let dir = tempfile::tempdir().unwrap();
    let insert = |from: i64, to: i64| {
        format!("INSERT INTO big SELECT value, value % 1000, 'padding-' || value FROM generate_series({from}, {to})")
    };
    let (e, _) = bounded_engine(dir.path()).await;
    sql(&e, "CREATE TABLE big (k BIGINT PRIMARY KEY, g BIGINT, pad TEXT)").await.unwrap();
    for part in 0..3 {
        sql(&e, &insert(part * 1_000_000 + 1, (part + 1) * 1_000_000)).await.unwrap();
    }
    e.shutdown();
    e.close().await;
    let backfill = phase_in_child(dir.path(), "backfill");

    // A backlog written while the maintainers are stopped.
    let (e, catalog) = bounded_engine(dir.path()).await;
    for view in catalog.materialized_views() {
        view.stop().await;
    }
    sql(&e, &insert(3_000_001, 4_000_000)).await.unwrap();
    for part in 0..20 {
        sql(&e, &insert(4_000_001 + part * 5_000, 4_000_000 + (part + 1) * 5_000)).await.unwrap();
    }
    // 21 commits (and maybe a compaction) behind: their changelog rows.
    let backlog = sql(&e, "SELECT \"view\", backlog_rows FROM sys.views ORDER BY 1").await.unwrap();
    assert_eq!(lines(&backlog), ["| public.byg | 1100000 |", "| public.proj | 1100000 |"]);
    e.shutdown();
    e.close().await;
    let catch_up = phase_in_child(dir.path(), "catch-up");

    let (e, _) = bounded_engine(dir.path()).await;
    let views = sql(&e, "SELECT count(*), sum(k) FROM proj").await.unwrap();
    assert_eq!(lines(&views), ["| 2050000 | 4202502050000 |"]);
    let query = sql(&e, "SELECT count(*), sum(k) FROM big WHERE k % 2 = 0").await.unwrap();
    assert_eq!(lines(&views), lines(&query));
    let grouped = sql(&e, "SELECT count(*), sum(n), sum(s) FROM byg").await.unwrap();
    let query = sql(&e, "SELECT count(DISTINCT g), count(*), sum(k) FROM big").await.unwrap();
    assert_eq!(lines(&grouped), lines(&query));
    eprintln!("peak resident memory: backfill {backfill} MiB, catch-up {catch_up} MiB (step_rows {})", step_rows());
    assert!(backfill < 400, "backfill peak {backfill} MiB");
    assert!(catch_up < 400, "catch-up peak {catch_up} MiB");
    e.shutdown();
    e.close().await;
}

/// Creates `table` with `rows`, a view `v` of `query`, then: `changes[0]`
/// with one step failing right after a state table's commit (as a crash
/// would leave it: the retry replays the step); `changes[1]` failing at
/// every try until the engine stops (the next engine replays it);
/// `changes[2]` as usual. After each the view equals its query and
/// `expected[i]` (rows ordered by the first column).
async fn replays_steps_whose_state_committed_alone(
    table: &str,
    rows: &str,
    query: &str,
    changes: [&str; 3],
    expected: [&[&str]; 3],
) {
    use streamhouse_engine::views::groups::{fail_after_state_commits, failures_after_state_commits};
    let dir = tempfile::tempdir().unwrap();
    let e = engine(dir.path()).await;
    sql(&e, table).await.unwrap();
    sql(&e, rows).await.unwrap();
    sql(&e, &format!("CREATE MATERIALIZED VIEW v AS {query}")).await.unwrap();
    let same = |e: Engine| async move {
        let view = lines(&sql(&e, "SELECT * FROM v ORDER BY 1").await.unwrap());
        let batch = lines(&sql(&e, &format!("{query} ORDER BY 1")).await.unwrap());
        assert_eq!(view, batch, "the view differs from its query");
        (e, view)
    };
    fail_after_state_commits(1);
    sql(&e, changes[0]).await.unwrap();
    let (e, view) = same(e).await;
    assert_eq!(failures_after_state_commits(), 1);
    assert_eq!(view, expected[0]);
    fail_after_state_commits(u64::MAX);
    sql(&e, changes[1]).await.unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while failures_after_state_commits() < 2 {
        assert!(std::time::Instant::now() < deadline, "the step never committed its state");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    e.shutdown();
    e.close().await;
    fail_after_state_commits(0);
    let e = engine(dir.path()).await;
    let (e, view) = same(e).await;
    assert_eq!(view, expected[1]);
    sql(&e, changes[2]).await.unwrap();
    let (_, view) = same(e).await;
    assert_eq!(view, expected[2]);
}

/// A HAVING view commits its group state table before the view (and its
/// COUNT(DISTINCT) value counts before that): a step that fails between
/// the commits is replayed from the committed state, never applied twice —
/// when retried in the same process, and after a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn having_views_replay_a_step_whose_state_committed_alone() {
    replays_steps_whose_state_committed_alone(
        "CREATE TABLE pay (id BIGINT PRIMARY KEY, account TEXT, amount INT)",
        "INSERT INTO pay VALUES (1, 'a', 10), (2, 'a', 20), (3, 'b', 5)",
        "SELECT account, count(*) AS n, sum(amount) AS total, count(DISTINCT amount % 5) AS endings \
         FROM pay GROUP BY account HAVING count(*) >= 2",
        [
            "INSERT INTO pay VALUES (4, 'b', 6)",
            "INSERT INTO pay VALUES (5, 'a', 1), (6, 'c', 7)",
            "INSERT INTO pay VALUES (7, 'c', 8), (8, 'b', 1)",
        ],
        [
            &["| a | 2 | 30 | 1 |", "| b | 2 | 11 | 2 |"],
            &["| a | 3 | 31 | 2 |", "| b | 2 | 11 | 2 |"],
            &["| a | 3 | 31 | 2 |", "| b | 3 | 12 | 2 |", "| c | 2 | 15 | 2 |"],
        ],
    )
    .await;
}

/// A COUNT(DISTINCT) view without a HAVING keeps its group state in its
/// rows and its value counts in a table of their own, committed first: a
/// step interrupted between the two commits is replayed, and no value is
/// counted twice (a new group's first value would be missed, an old one's
/// last would never go).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn count_distinct_views_replay_a_step_whose_counts_committed_alone() {
    replays_steps_whose_state_committed_alone(
        "CREATE TABLE hits (id BIGINT PRIMARY KEY, page TEXT, visitor TEXT)",
        "INSERT INTO hits VALUES (1, 'home', 'ann'), (2, 'home', 'bob')",
        "SELECT page, count(DISTINCT visitor) AS visitors, count(*) AS n FROM hits GROUP BY page",
        [
            "INSERT INTO hits VALUES (3, 'home', 'ann'), (4, 'cart', 'bob')",
            "DELETE FROM hits WHERE id IN (1, 2)",
            "INSERT INTO hits VALUES (5, 'home', 'cid'), (6, 'home', 'ann')",
        ],
        [
            &["| cart | 1 | 1 |", "| home | 2 | 3 |"],
            &["| cart | 1 | 1 |", "| home | 1 | 1 |"],
            &["| cart | 1 | 1 |", "| home | 2 | 3 |"],
        ],
    )
    .await;
}

/// A Top-N view commits its spare candidates before the view: a step that
/// fails between the commits leaves spares the view's commit does not name,
/// which the retry (and, after a restart, the next maintainer) sets aside
/// for empty ones — never ranking the view's rows with spares from a step
/// that did not commit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn top_n_views_set_aside_spares_whose_step_did_not_commit() {
    replays_steps_whose_state_committed_alone(
        "CREATE TABLE scores (id BIGINT PRIMARY KEY, team TEXT NOT NULL, pts INT)",
        "INSERT INTO scores VALUES (1, 'a', 10), (2, 'a', 20), (3, 'a', 30), (4, 'a', 40), (5, 'a', 50)",
        "SELECT t.id, t.team, t.pts FROM (SELECT id, team, pts, \
         ROW_NUMBER() OVER (PARTITION BY team ORDER BY pts DESC, id) AS rn FROM scores) t WHERE t.rn <= 2",
        [
            "DELETE FROM scores WHERE id = 5",
            "DELETE FROM scores WHERE id = 4",
            "INSERT INTO scores VALUES (6, 'a', 25), (7, 'b', 1)",
        ],
        [
            &["| 3 | a | 30 |", "| 4 | a | 40 |"],
            &["| 2 | a | 20 |", "| 3 | a | 30 |"],
            &["| 3 | a | 30 |", "| 6 | a | 25 |", "| 7 | b | 1 |"],
        ],
    )
    .await;
}

/// The files of the shared arrangements (indexes) under the warehouse in `dir`.
fn index_files(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    fn walk(path: &std::path::Path, out: &mut Vec<std::path::PathBuf>) {
        for entry in std::fs::read_dir(path).unwrap().flatten() {
            let path = entry.path();
            if path.is_dir() {
                walk(&path, out);
            } else if path.components().any(|c| c.as_os_str() == "index") {
                out.push(path);
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, &mut out);
    out
}

/// Creates the tables orders and customers; returns the FROM clause that
/// joins them on a column that is not the orders' key.
async fn orders_and_customers(e: &Engine) -> &'static str {
    sql(e, "CREATE TABLE orders (id BIGINT PRIMARY KEY, customer_id BIGINT, amount INT)").await.unwrap();
    sql(e, "CREATE TABLE customers (id BIGINT PRIMARY KEY, country TEXT)").await.unwrap();
    "FROM orders o JOIN customers c ON o.customer_id = c.id"
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn views_share_an_arrangement_until_the_last_one_is_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let e = engine(dir.path()).await;
    let join = orders_and_customers(&e).await;
    sql(&e, "INSERT INTO customers VALUES (1, 'UK'), (2, 'US')").await.unwrap();
    sql(&e, "INSERT INTO orders VALUES (10, 1, 100), (11, 2, 50)").await.unwrap();
    sql(
        &e,
        &format!(
            "CREATE MATERIALIZED VIEW totals AS SELECT c.country, sum(o.amount) AS amount {join} GROUP BY c.country"
        ),
    )
    .await
    .unwrap();
    sql(&e, &format!("CREATE MATERIALIZED VIEW enriched AS SELECT o.id, c.country {join}")).await.unwrap();
    let shared = "SELECT view, arrangements FROM sys.views WHERE source = 'public.orders' ORDER BY view";
    let both = ["| public.enriched | customer_id (2 views) |", "| public.totals | customer_id (2 views) |"];
    assert_eq!(lines(&sql(&e, shared).await.unwrap()), both);
    let files = index_files(dir.path());
    assert!(files.iter().any(|f| f.to_string_lossy().contains("/orders/index/customer_id/")), "{files:?}");
    // Views not built from scratch: no arrangement in their own directories.
    let own = files.iter().filter(|f| f.to_string_lossy().contains("/arrangement/")).count();
    assert_eq!(own, 0, "{files:?}");
    sql(&e, "INSERT INTO orders VALUES (12, 1, 7)").await.unwrap();
    e.shutdown();
    e.close().await;

    // After a restart both views open the stored one again (not one each).
    let e = engine(dir.path()).await;
    sql(&e, "INSERT INTO orders VALUES (13, 2, 1)").await.unwrap();
    assert_eq!(
        lines(&sql(&e, "SELECT * FROM totals ORDER BY country").await.unwrap()),
        ["| UK | 107 |", "| US | 51 |"]
    );
    assert_eq!(lines(&sql(&e, "SELECT count(*) FROM enriched").await.unwrap()), ["| 4 |"]);
    assert_eq!(lines(&sql(&e, shared).await.unwrap()), both);
    sql(&e, "DROP MATERIALIZED VIEW totals").await.unwrap();
    assert_eq!(lines(&sql(&e, shared).await.unwrap()), ["| public.enriched | customer_id (1 view) |"]);
    assert!(!index_files(dir.path()).is_empty());
    sql(&e, "INSERT INTO orders VALUES (14, 1, 1)").await.unwrap();
    assert_eq!(lines(&sql(&e, "SELECT count(*) FROM enriched").await.unwrap()), ["| 5 |"]);
    sql(&e, "DROP MATERIALIZED VIEW enriched").await.unwrap();
    assert_eq!(index_files(dir.path()), Vec::<std::path::PathBuf>::new(), "the last view's drop removes the index");
    e.shutdown();
    e.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_arrangement_no_view_reads_is_removed_at_open() {
    let dir = tempfile::tempdir().unwrap();
    let e = engine(dir.path()).await;
    let join = orders_and_customers(&e).await;
    sql(&e, "INSERT INTO orders VALUES (10, 1, 5)").await.unwrap();
    sql(&e, "INSERT INTO customers VALUES (1, 'UK')").await.unwrap();
    sql(&e, &format!("CREATE MATERIALIZED VIEW kept AS SELECT o.id, c.country {join}")).await.unwrap();
    sql(&e, &format!("CREATE MATERIALIZED VIEW gone AS SELECT o.id {join}")).await.unwrap();
    e.shutdown();
    e.close().await;
    // Restarted with both: the shared arrangement stays.
    let e = engine(dir.path()).await;
    assert_eq!(lines(&sql(&e, "SELECT count(*) FROM kept").await.unwrap()), ["| 1 |"]);
    assert!(!index_files(dir.path()).is_empty());
    e.shutdown();
    e.close().await;
    // As a crash between dropping both views and removing what they used leaves it.
    for view in ["kept", "gone"] {
        std::fs::remove_dir_all(dir.path().join("public").join(view)).unwrap();
    }
    // Young files may be another engine's view being created: kept.
    let e = engine(dir.path()).await;
    assert!(!index_files(dir.path()).is_empty());
    e.shutdown();
    e.close().await;
    let two_hours_ago = std::time::SystemTime::now() - std::time::Duration::from_secs(7200);
    for file in index_files(dir.path()) {
        std::fs::File::options().write(true).open(&file).unwrap().set_modified(two_hours_ago).unwrap();
    }
    let e = engine(dir.path()).await;
    assert_eq!(index_files(dir.path()), Vec::<std::path::PathBuf>::new(), "no view reads orders: its index is gone");
    assert_eq!(lines(&sql(&e, "SELECT count(*) FROM orders").await.unwrap()), ["| 1 |"]);
    e.shutdown();
    e.close().await;
}

/// The `(plain N)` count of a plan's Dynamic Table scan line for `table`, and that line.
fn scan_line(plan: &str, table: &str) -> String {
    plan.lines()
        .find(|l| l.contains(&format!("DynamicTableScan: table={table},")))
        .unwrap_or_else(|| panic!("no scan of {table} in {plan}"))
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_compacted_run_reads_as_plain_parquet_pruned_by_predicates_and_join_filters() {
    let dir = tempfile::tempdir().unwrap();
    let e = engine(dir.path()).await;
    // 200,000 rows: four row groups, `day` ascending with the key.
    sql(&e, "CREATE TABLE facts (k BIGINT PRIMARY KEY, day BIGINT, v TEXT)").await.unwrap();
    sql(&e, "INSERT INTO facts SELECT x, x / 1000, 'v' || x FROM generate_series(0, 199999) AS t(x)").await.unwrap();
    sql(&e, "CALL sys.compact('facts')").await.unwrap();
    sql(&e, "CREATE TABLE dim (id BIGINT PRIMARY KEY, name TEXT)").await.unwrap();
    sql(&e, "INSERT INTO dim VALUES (150, 'a'), (151, 'b')").await.unwrap();

    let plan = sql(&e, "EXPLAIN SELECT v FROM facts").await.unwrap();
    let line = scan_line(&plan, "facts");
    let splits = line.split("splits=").nth(1).and_then(|s| s.split(' ').next()).unwrap();
    assert!(line.contains(&format!("splits={splits} (plain {splits})")), "all splits plain: {line}");

    // One run, nothing to merge: the row count is exact, and count(*) needs no scan.
    let plan = sql(&e, "EXPLAIN SELECT count(*) FROM facts").await.unwrap();
    assert!(!plan.contains("DynamicTableScan"), "{plan}");
    assert_eq!(lines(&sql(&e, "SELECT count(*) FROM facts").await.unwrap()), ["| 200000 |"]);

    // A filter on a non-key column prunes row groups by their statistics.
    let analyzed = sql(&e, "EXPLAIN ANALYZE SELECT count(*) FROM facts WHERE day = 150").await.unwrap();
    let line = scan_line(&analyzed, "facts");
    assert!(line.contains("pruning=[day@"), "{line}");
    assert!(line.contains("row_groups_pruned_statistics=4 total \u{2192} 1 matched"), "{line}");
    assert_eq!(lines(&sql(&e, "SELECT count(*) FROM facts WHERE day = 150").await.unwrap()), ["| 1000 |"]);

    // A join's build side becomes a filter on the probe side's scan at run time.
    let query = "SELECT count(*), min(f.k) FROM facts f JOIN dim d ON f.day = d.id";
    let analyzed = sql(&e, &format!("EXPLAIN ANALYZE {query}")).await.unwrap();
    let line = scan_line(&analyzed, "facts");
    assert!(line.contains("DynamicFilter"), "{analyzed}");
    assert_eq!(lines(&sql(&e, query).await.unwrap()), ["| 2000 | 150000 |"]);
    // … and the scan applies it to rows: the join probes the 2,000 rows of
    // days 150 and 151, not the 50,000 of the row group holding them.
    let join = analyzed.lines().find(|l| l.contains("HashJoinExec")).unwrap();
    assert!(join.contains(" input_rows=2.00 K,"), "{analyzed}");
    // A build side past DataFusion's IN-list limits (150 keys) is a probe
    // of the join's hash table. A scan feeding the join directly leaves it
    // to the join; one under an aggregation applies it: the aggregation
    // reads the 300 picked rows of the 200,000, spread over every row group.
    sql(&e, "CREATE TABLE picks (id BIGINT PRIMARY KEY)").await.unwrap();
    sql(&e, "INSERT INTO picks SELECT x * 600 FROM generate_series(0, 299) AS t(x)").await.unwrap();
    let query =
        "SELECT count(*), max(g.n) FROM (SELECT k, count(*) AS n FROM facts GROUP BY k) g JOIN picks p ON g.k = p.id";
    let analyzed = sql(&e, &format!("EXPLAIN ANALYZE {query}")).await.unwrap();
    assert!(scan_line(&analyzed, "facts").contains("hash_lookup"), "{analyzed}");
    let aggregated = analyzed.lines().rfind(|l| l.contains("AggregateExec")).unwrap();
    assert!(aggregated.contains("gby=[k@") && aggregated.contains("[output_rows=300,"), "{analyzed}");
    assert_eq!(lines(&sql(&e, query).await.unwrap()), ["| 300 | 1 |"]);

    // A filter compares fixed-width columns with constants first, then with
    // each other, then text, whatever the query's order.
    let query = "SELECT count(*) FROM facts WHERE v <> 'v1' AND day < k AND day >= 150";
    let plan = sql(&e, &format!("EXPLAIN {query}")).await.unwrap();
    let filter = plan.lines().find(|l| l.contains("FilterExec")).unwrap_or_else(|| panic!("{plan}"));
    let at = |part: &str| filter.find(part).unwrap_or_else(|| panic!("{part} in {filter}"));
    assert!(at(">= 150") < at("> day@") && at("> day@") < at("!= v1"), "{filter}");
    assert_eq!(lines(&sql(&e, query).await.unwrap()), ["| 50000 |"]);

    // Newer versions of some keys, and a delete: with deletion vectors (the
    // default) the replaced rows are marked and every file still reads as
    // plain Parquet, skipping them; the count is still known exactly.
    sql(&e, "INSERT INTO facts SELECT x, -1, 'new' FROM generate_series(0, 999) AS t(x)").await.unwrap();
    sql(&e, "DELETE FROM facts WHERE k = 199999").await.unwrap();
    let line = scan_line(&sql(&e, "EXPLAIN SELECT v FROM facts").await.unwrap(), "facts");
    let now = line.split("splits=").nth(1).and_then(|s| s.split(' ').next()).unwrap();
    assert!(line.contains(&format!("splits={now} (plain {now})")), "{line}");
    let plan = sql(&e, "EXPLAIN SELECT count(*) FROM facts").await.unwrap();
    assert!(plan.contains("199999 as count(*)"), "{plan}");
    // Without them (a table option), those key ranges merge on read.
    sql(
        &e,
        "CREATE TABLE merged (k BIGINT PRIMARY KEY, day BIGINT, v TEXT) WITH ('deletion-vectors.enabled' = 'false')",
    )
    .await
    .unwrap();
    sql(&e, "INSERT INTO merged SELECT * FROM facts").await.unwrap();
    sql(&e, "INSERT INTO merged SELECT x, -2, 'newer' FROM generate_series(0, 9) AS t(x)").await.unwrap();
    let line = scan_line(&sql(&e, "EXPLAIN SELECT v FROM merged").await.unwrap(), "merged");
    assert!(line.contains("(plain 0)") || !line.contains("splits=1 (plain 1)"), "{line}");
    let plan = sql(&e, "EXPLAIN SELECT count(*) FROM merged").await.unwrap();
    assert!(plan.contains("DynamicTableScan"), "merged on read: the count is not known without reading: {plan}");
    for (table, newest) in [("facts", -1), ("merged", -2)] {
        let query = format!("SELECT count(*), count(*) FILTER (WHERE day = {newest}), max(k) FROM {table}");
        let expected = if newest == -1 { "| 199999 | 1000 | 199998 |" } else { "| 199999 | 10 | 199998 |" };
        assert_eq!(lines(&sql(&e, &query).await.unwrap()), [expected]);
        // Filters never reach a merge: an older version of a key must not surface.
        let query = format!("SELECT count(*) FROM {table} WHERE day = 0");
        assert_eq!(lines(&sql(&e, &query).await.unwrap()), ["| 0 |"], "{table}");
    }

    // Files older than a column: the column reads as NULL; older than a
    // rename: read by storage under the old name.
    sql(&e, "CALL sys.compact('facts')").await.unwrap();
    sql(&e, "ALTER TABLE facts ADD COLUMN extra INT").await.unwrap();
    sql(&e, "INSERT INTO facts VALUES (500000, 7, 'x', 7)").await.unwrap();
    assert_eq!(
        lines(&sql(&e, "SELECT count(extra), count(*) FROM facts WHERE day >= 7").await.unwrap()),
        ["| 1 | 193000 |"]
    );
    sql(&e, "ALTER TABLE facts RENAME COLUMN day TO d").await.unwrap();
    let line = scan_line(&sql(&e, "EXPLAIN SELECT d FROM facts").await.unwrap(), "facts");
    assert!(line.contains("(plain 0)"), "files written before the rename are not plain: {line}");
    assert_eq!(lines(&sql(&e, "SELECT count(*) FROM facts WHERE d = 150").await.unwrap()), ["| 1000 |"]);
}
