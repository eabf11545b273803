//! Execution modes beyond what `sql-tests/execution_modes.slt` shows: BSP
//! task retries and stage re-runs (with injected failures), the stage files
//! left behind by every kind of query end (none), and EXPLAIN.

use crate::support;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use object_store::ObjectStore;
use object_store::memory::InMemory;
use streamhouse_engine::warehouse::DynamicCatalog;
use streamhouse_engine::{Engine, EngineConfig, Output, Session, SessionInfo, StatusCode};

async fn engine() -> Engine {
    engine_with(EngineConfig::default()).await
}

async fn engine_with(config: EngineConfig) -> Engine {
    let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
    let catalog = DynamicCatalog::open(store).await.unwrap();
    let spill = std::env::temp_dir().join("streamhouse-test-spill");
    let config = EngineConfig { target_partitions: 2, spill_dir: Some(spill), ..config };
    Engine::with_catalog(config, Arc::new(catalog)).unwrap()
}

async fn sql(session: &mut Session, text: &str) -> Result<String, (StatusCode, String)> {
    support::run(session, text).await
}

fn cells(table: &str) -> Vec<String> {
    table
        .lines()
        .filter(|l| l.starts_with('|'))
        .skip(1)
        .map(|l| l.split('|').map(str::trim).filter(|c| !c.is_empty()).collect::<Vec<_>>().join(" "))
        .collect()
}

async fn session_with_data(engine: &Engine) -> Session {
    let mut s = engine.new_session(SessionInfo { user: "t".into(), ..Default::default() });
    sql(&mut s, "CREATE TABLE facts (id BIGINT PRIMARY KEY, dim BIGINT NOT NULL)").await.unwrap();
    sql(&mut s, "INSERT INTO facts SELECT value, value % 500 FROM generate_series(1, 50000)").await.unwrap();
    sql(&mut s, "CREATE TABLE dims (id BIGINT PRIMARY KEY, name TEXT NOT NULL)").await.unwrap();
    sql(&mut s, "INSERT INTO dims SELECT value, 'd' || CAST(value AS TEXT) FROM generate_series(0, 499)")
        .await
        .unwrap();
    s
}

const JOIN: &str = "SELECT dims.id % 4 AS k, count(*) AS n, max(name) AS top FROM facts JOIN dims ON facts.dim = dims.id \
                    GROUP BY 1 ORDER BY 1";

/// The last recorded run of `query`: mode, stages, task attempts, state.
async fn last_run(s: &mut Session, query: &str) -> String {
    let text = format!(
        "SELECT mode, stages, task_attempts, state FROM sys.queries WHERE query = '{}' ORDER BY query_id DESC LIMIT 1",
        query.replace('\'', "''")
    );
    cells(&sql(s, &text).await.unwrap()).join("\n")
}

/// Waits until the engine has no stage files (cleanup after a drop runs in the background).
async fn no_stage_files(engine: &Engine) {
    for _ in 0..100 {
        if engine.stage_files() == 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{} stage files left behind", engine.stage_files());
}

fn files() -> Vec<String> {
    fn walk(dir: &std::path::Path, out: &mut Vec<String>) {
        for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
            if e.path().is_dir() {
                walk(&e.path(), out);
            } else {
                out.push(e.path().display().to_string());
            }
        }
    }
    let mut out = Vec::new();
    walk(&std::env::temp_dir().join("streamhouse-test-spill"), &mut out);
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_tasks_are_retried_and_lost_outputs_rerun_their_stage() {
    let engine = engine().await;
    let mut s = session_with_data(&engine).await;
    let expected = cells(&sql(&mut s, JOIN).await.unwrap());
    assert_eq!(expected.len(), 4);
    sql(&mut s, "SET execution_mode = 'bsp'").await.unwrap();
    assert_eq!(cells(&sql(&mut s, JOIN).await.unwrap()), expected);
    let clean = last_run(&mut s, JOIN).await;
    let fields: Vec<&str> = clean.split(' ').collect();
    assert_eq!((fields[0], fields[3]), ("bsp", "done"), "{clean}");
    let (stages, attempts): (usize, usize) = (fields[1].parse().unwrap(), fields[2].parse().unwrap());
    assert!(stages >= 3, "a shuffle per join side, then the aggregation: {clean}");
    no_stage_files(&engine).await;

    // Task 0 of stage 1 fails twice, then succeeds: same answer, two more attempts.
    engine.faults().fail_task(1, 0, 2);
    assert_eq!(cells(&sql(&mut s, JOIN).await.unwrap()), expected);
    assert_eq!(last_run(&mut s, JOIN).await, format!("bsp {stages} {} done", attempts + 2));
    no_stage_files(&engine).await;

    // A file of stage 1 disappears after it was committed: stage 1 runs again.
    engine.faults().lose_output(1);
    assert_eq!(cells(&sql(&mut s, JOIN).await.unwrap()), expected);
    let rerun = last_run(&mut s, JOIN).await;
    let rerun_attempts: usize = rerun.split(' ').nth(2).unwrap().parse().unwrap();
    assert!(rerun_attempts > attempts, "stage 1 ran twice: {rerun} vs {clean}");
    no_stage_files(&engine).await;

    // More failures than task_retries (3): the query fails and says which task.
    engine.faults().fail_task(1, 0, 4);
    let (code, message) = sql(&mut s, JOIN).await.unwrap_err();
    assert!(message.contains("injected failure of task 0 of stage 1"), "{code:?} {message}");
    no_stage_files(&engine).await;

    // An error of the query itself is not retried.
    let (code, _) = sql(&mut s, "SELECT dims.id / (facts.id - facts.id) FROM facts JOIN dims ON facts.dim = dims.id")
        .await
        .unwrap_err();
    assert_eq!(code, StatusCode::DivisionByZero);
    no_stage_files(&engine).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_stage_files_outlive_their_query() {
    let engine = engine().await;
    let mut s = session_with_data(&engine).await;

    // A small query in AUTO stays in MPP: no stages, no files.
    sql(&mut s, "SET memory_limit = '64MB'").await.unwrap();
    let small = "SELECT count(*) FROM dims WHERE id < 10";
    assert_eq!(cells(&sql(&mut s, small).await.unwrap()), ["10"]);
    assert_eq!(last_run(&mut s, small).await, "mpp 0 0 done");

    // A BSP query dropped while its final stage streams.
    sql(&mut s, "SET execution_mode = 'bsp'").await.unwrap();
    let everything = "SELECT facts.id, name FROM facts JOIN dims ON facts.dim = dims.id";
    let (mut outputs, error) = Box::pin(s.run(everything)).await;
    assert!(error.is_none(), "{error:?}");
    let Some(Output::Rows(mut stream)) = outputs.pop() else { panic!("rows expected") };
    let first = stream.next().await.unwrap().unwrap();
    assert!(first.num_rows() > 0);
    assert!(engine.stage_files() > 0, "the final stage reads files");
    drop(stream);
    no_stage_files(&engine).await;
    assert_eq!(last_run(&mut s, everything).await.split(' ').next_back(), Some("cancelled"));

    // A BSP query cancelled by its statement timeout while stages run.
    sql(&mut s, "SET statement_timeout = '30ms'").await.unwrap();
    let slow = "SELECT count(*) FROM facts a JOIN facts b ON a.dim = b.dim";
    let (code, _) = sql(&mut s, slow).await.unwrap_err();
    assert_eq!(code, StatusCode::Timeout);
    no_stage_files(&engine).await;
    sql(&mut s, "RESET statement_timeout").await.unwrap();

    // EXPLAIN shows the mode, why, and the stages; EXPLAIN ANALYZE what each stage did.
    let explain = sql(&mut s, &format!("EXPLAIN {JOIN}")).await.unwrap();
    assert!(explain.contains("| execution_mode | bsp: execution_mode is bsp"), "{explain}");
    assert!(explain.contains("Stage 1 (shuffle Hash("), "{explain}");
    assert!(explain.contains("(result)"), "{explain}");
    assert_eq!(engine.stage_files(), 0, "EXPLAIN runs nothing: {:?}", files());
    let analyzed = sql(&mut s, &format!("EXPLAIN ANALYZE {JOIN}")).await.unwrap();
    assert!(analyzed.contains("Plan with Metrics"), "{analyzed}");
    assert!(analyzed.contains("attempts="), "{analyzed}");
    assert!(analyzed.contains(" rows returned"), "{analyzed}");
    no_stage_files(&engine).await;
    sql(&mut s, "RESET execution_mode").await.unwrap();
    let explain = sql(&mut s, &format!("EXPLAIN {JOIN}")).await.unwrap();
    assert!(explain.contains("| execution_mode | mpp: joins and windows need about"), "{explain}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_switches_to_bsp_when_mpp_is_slow_to_answer() {
    let engine = engine_with(EngineConfig { bsp_after_ms: 1, ..EngineConfig::default() }).await;
    let mut s = session_with_data(&engine).await;
    let slow = "SELECT count(*) FROM facts a JOIN facts b ON a.dim = b.dim";
    assert_eq!(cells(&sql(&mut s, slow).await.unwrap()), ["5000000"]);
    let text = format!("SELECT mode, mode_reason FROM sys.queries WHERE query = '{slow}'");
    let record = cells(&sql(&mut s, &text).await.unwrap()).join("\n");
    assert!(record.starts_with("bsp MPP produced no row within bsp_after_ms (1 ms)"), "{record}");
    no_stage_files(&engine).await;
}

/// The mode `HashJoinExec` shows in EXPLAIN for `query`, one per join.
async fn join_modes(s: &mut Session, query: &str) -> Vec<String> {
    let explain = sql(s, &format!("EXPLAIN {query}")).await.unwrap();
    explain
        .split("HashJoinExec: mode=")
        .skip(1)
        .map(|rest| rest.split(',').next().unwrap_or_default().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mpp_joins_collect_or_repartition_by_what_each_costs() {
    let engine = engine().await;
    let mut s = session_with_data(&engine).await;
    // DataFusion alone would repartition every join over these thresholds.
    sql(&mut s, "SET datafusion.optimizer.hash_join_single_partition_threshold = 1").await.unwrap();
    sql(&mut s, "SET datafusion.optimizer.hash_join_single_partition_threshold_rows = 1").await.unwrap();

    // Two partitions: building 500 (or 50,000) rows once costs less than
    // repartitioning both sides.
    let dims = "SELECT count(*) FROM facts JOIN dims ON facts.dim = dims.id WHERE name <> 'x'";
    assert_eq!(join_modes(&mut s, dims).await, ["CollectLeft"]);
    let self_join = "SELECT count(*) FROM facts a JOIN facts b ON a.id = b.id";
    assert_eq!(join_modes(&mut s, self_join).await, ["CollectLeft"]);
    assert_eq!(cells(&sql(&mut s, self_join).await.unwrap()), ["50000"]);

    // Grouped by the join key: partitioned by it, the join feeds the
    // aggregation without a second repartition.
    let grouped = "SELECT dims.id, count(*) FROM facts JOIN dims ON facts.dim = dims.id GROUP BY dims.id";
    assert_eq!(join_modes(&mut s, grouped).await, ["Partitioned"]);
    let answer = cells(&sql(&mut s, &format!("SELECT count(*), sum(c) FROM ({grouped}) AS g(id, c)")).await.unwrap());
    assert_eq!(answer, ["500 50000"]);
    // … unless the build side is under DataFusion's thresholds (here its
    // default 8 MiB): collected, the partial aggregation cuts what is
    // repartitioned.
    sql(&mut s, "RESET datafusion.optimizer.hash_join_single_partition_threshold").await.unwrap();
    assert_eq!(join_modes(&mut s, grouped).await, ["CollectLeft"]);
    sql(&mut s, "SET datafusion.optimizer.hash_join_single_partition_threshold = 1").await.unwrap();

    // `NOT IN` with a NULL among its values is empty however the join is
    // grouped: a null-aware anti join sees the whole build side.
    sql(&mut s, "CREATE TABLE maybe (id BIGINT PRIMARY KEY, v BIGINT)").await.unwrap();
    sql(&mut s, "INSERT INTO maybe VALUES (1, 3), (2, NULL)").await.unwrap();
    let not_in = "SELECT dim, count(*) FROM facts WHERE dim NOT IN (SELECT v FROM maybe) GROUP BY dim";
    assert_eq!(join_modes(&mut s, not_in).await, ["CollectLeft"]);
    assert_eq!(cells(&sql(&mut s, &format!("SELECT count(*) FROM ({not_in}) AS n")).await.unwrap()), ["0"]);

    // Eight partitions: a build side over 1/13 of the probe side is built in parallel.
    sql(&mut s, "SET datafusion.execution.target_partitions = 8").await.unwrap();
    assert_eq!(join_modes(&mut s, self_join).await, ["Partitioned"]);
    assert_eq!(join_modes(&mut s, dims).await, ["CollectLeft"]);
    assert_eq!(cells(&sql(&mut s, self_join).await.unwrap()), ["50000"]);

    // RESET ALL restores DataFusion's options too: the default thresholds
    // collect the 500 dims rows even for the grouped join.
    sql(&mut s, "RESET ALL").await.unwrap();
    assert_eq!(join_modes(&mut s, grouped).await, ["CollectLeft"]);
    let (code, message) = sql(&mut s, "RESET datafusion.optimizer.no_such_option").await.unwrap_err();
    assert_eq!(
        (code, message.as_str()),
        (StatusCode::ObjectNotFound, "unrecognized configuration parameter \"datafusion.optimizer.no_such_option\"")
    );
}

/// How many of the aggregations by `dim` in `EXPLAIN ANALYZE query` read rows.
async fn aggregations_run(s: &mut Session, query: &str) -> usize {
    let analyzed = sql(s, &format!("EXPLAIN ANALYZE {query}")).await.unwrap();
    let ran: Vec<&str> = analyzed
        .lines()
        .filter(|l| l.contains("AggregateExec: mode=Partial, gby=[dim@"))
        .filter(|l| l.contains("output_rows=") && !l.contains("output_rows=0,"))
        .collect();
    assert!(analyzed.contains("SharedExec"), "{analyzed}");
    ran.len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subplan_used_twice_is_computed_once_in_mpp() {
    let engine = engine().await;
    let mut s = session_with_data(&engine).await;
    let per = "WITH per AS (SELECT dim, count(*) AS n, sum(id) AS total FROM facts GROUP BY dim)";
    // Under a scalar subquery and joined: one aggregation of `facts` runs.
    // (Copies are shared when they come out of optimization alike: here
    // both uses read `n` and `total`.)
    let scalar =
        format!("{per} SELECT count(*), min(total) FROM per WHERE n = (SELECT max(n) FROM per WHERE total > 0)");
    let explain = sql(&mut s, &format!("EXPLAIN {scalar}")).await.unwrap();
    assert_eq!(explain.matches("SharedExec: computed once for 2 uses").count(), 2, "{explain}");
    assert_eq!(cells(&sql(&mut s, &scalar).await.unwrap()), ["500 2475100"]);
    assert_eq!(aggregations_run(&mut s, &scalar).await, 1);
    let joined = format!("{per} SELECT count(*), sum(a.total - b.total) FROM per a JOIN per b ON a.n = b.n");
    assert_eq!(cells(&sql(&mut s, &joined).await.unwrap()), ["250000 0"]);
    assert_eq!(aggregations_run(&mut s, &joined).await, 1);
    // Three uses, one of them under a LIMIT that stops reading early, all
    // reading every column. (A use reading fewer columns, or filtering on
    // `dim`, which goes below the aggregation, is another subplan.)
    let three = format!(
        "{per} SELECT count(*), sum(dim + n + total) FROM (SELECT * FROM per UNION ALL SELECT * FROM per WHERE n > 10 \
         UNION ALL (SELECT * FROM per ORDER BY dim LIMIT 3)) AS u"
    );
    assert_eq!(cells(&sql(&mut s, &three).await.unwrap()), ["1003 2507875103"]);
    assert_eq!(aggregations_run(&mut s, &three).await, 1);

    // Volatile: each use draws its own numbers, as when written twice.
    let drawn = "WITH r AS (SELECT dim, sum(random()) AS x FROM facts GROUP BY dim) \
                 SELECT count(*) FROM r a JOIN r b ON a.dim = b.dim WHERE a.x <> b.x";
    let explain = sql(&mut s, &format!("EXPLAIN {drawn}")).await.unwrap();
    assert!(!explain.contains("SharedExec"), "{explain}");
    // BSP runs stages apart: both uses run, same answer.
    sql(&mut s, "SET execution_mode = bsp").await.unwrap();
    let explain = sql(&mut s, &format!("EXPLAIN {joined}")).await.unwrap();
    assert!(!explain.contains("SharedExec"), "{explain}");
    assert_eq!(cells(&sql(&mut s, &joined).await.unwrap()), ["250000 0"]);
    no_stage_files(&engine).await;
    sql(&mut s, "RESET execution_mode").await.unwrap();

    // The same aggregation over the table at another snapshot is another subplan.
    sql(&mut s, "INSERT INTO facts VALUES (50001, 1)").await.unwrap();
    let versions = "SELECT (SELECT count(*) FROM facts) - (SELECT count(*) FROM table_as_of('facts', 1))";
    assert_eq!(cells(&sql(&mut s, versions).await.unwrap()), ["1"]);
}
