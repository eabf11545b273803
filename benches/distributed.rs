//! What running across workers costs: the 22 TPC-H queries on one engine
//! alone, then on the same data with 1 and with 3 workers in distributed
//! MPP, and with 3 workers in distributed BSP.
//!
//! ```text
//! cargo run --release -p streamhouse-benches --bin distributed -- [scale factor, default 1] [runs, default 3]
//! ```
//!
//! The tables are loaded once into a local warehouse directory (keyed
//! Dynamic Tables, compacted). The workers are datafusion-distributed
//! workers serving our codec and functions on loopback TCP ports in this
//! process, reading that directory (what `streamhouse worker` runs, minus
//! the S3 client, so that the numbers show our overhead and not the test
//! S3 server's). Every engine runs with `execution.distributed = on`, so
//! every query that can be distributed is, however small.
//!
//! On one machine this measures overhead, not speed-up: the workers share
//! the machine's cores with the coordinator. Each query runs `runs` times
//! per setup, the setups taking turns; the first run is a warm-up when there
//! are more; the best of the others is reported with its ratio over the
//! engine alone. "bytes between tasks" is what crossed the network between
//! distributed MPP tasks (datafusion-distributed's `bytes_transferred`, from
//! `EXPLAIN ANALYZE`); "stage bytes" what distributed BSP's stages wrote to
//! the store (`sys.queries.stage_bytes`). Every answer is compared with the
//! engine alone's (row count and hash of the sorted rows as text, floats
//! rounded to 2 decimals): a difference prints MISMATCH and makes the
//! program exit with status 1.

#![allow(clippy::print_stdout)]

#[path = "common.rs"]
mod common;
#[path = "tpch_common.rs"]
mod tpch_common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::AsArray;
use arrow::compute::cast;
use arrow::datatypes::{DataType, Int64Type};
use datafusion_distributed::WorkerResolver;
use object_store::ObjectStore;
use object_store::local::LocalFileSystem;
use streamhouse_engine::config::{ClusterConfig, DistributedMode};
use streamhouse_engine::datafusion;
use streamhouse_engine::exec::distributed;
use streamhouse_engine::warehouse::DynamicCatalog;
use streamhouse_engine::{ClusterSetup, Engine, EngineConfig, Session};
use streamhouse_testkit::tpch::QUERIES;
use tpch_common::{Fingerprint, fingerprint, load_all, open_session, query, rows_as_text};

/// The setups compared: name, workers, execution mode. The first (alone) gives the reference answers.
const SETUPS: [(&str, usize, &str); 4] =
    [("alone", 0, "mpp"), ("1 worker", 1, "mpp"), ("3 workers", 3, "mpp"), ("3 workers BSP", 3, "bsp")];

/// Workers of this process have no view of the cluster.
#[derive(Debug)]
struct NoPeers;

impl WorkerResolver for NoPeers {
    fn get_urls(&self) -> Result<Vec<url::Url>, datafusion::error::DataFusionError> {
        Ok(Vec::new())
    }
}

/// A worker on a free loopback port, reading `store`: its `host:port`.
async fn start_worker(store: &Arc<dyn ObjectStore>) -> String {
    let functions = Engine::function_state(&EngineConfig::default()).expect("functions");
    let runtime = datafusion::execution::runtime_env::RuntimeEnvBuilder::new().build_arc().expect("runtime");
    let channels = Arc::new(distributed::Channels::new(None).expect("channels"));
    let identity = distributed::identity("bench");
    let worker = distributed::worker(&functions, Arc::clone(store), runtime, identity, channels);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("a port");
    let address = listener.local_addr().expect("address").to_string();
    let observability = worker.with_observability_service(Arc::new(NoPeers));
    let server = tonic::transport::Server::builder()
        .add_service(worker.into_worker_server())
        .add_service(observability)
        .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener));
    tokio::spawn(server);
    address
}

/// An engine over `store` using `workers` (none: alone).
async fn engine(store: &Arc<dyn ObjectStore>, workers: &[String], n: usize) -> Engine {
    let catalog = Arc::new(DynamicCatalog::open(Arc::clone(store)).await.expect("catalog"));
    let config = EngineConfig { distributed: DistributedMode::On, ..EngineConfig::default() };
    if workers.is_empty() {
        return Engine::with_catalog(config, catalog).expect("engine");
    }
    let cluster = ClusterConfig { workers: workers.to_vec(), heartbeat_interval_ms: 200, ..ClusterConfig::default() };
    let setup = ClusterSetup {
        config: &cluster,
        identity: distributed::identity("bench"),
        store: Arc::clone(store),
        spill_prefix: object_store::path::Path::from(format!("_spill/bench{n}")),
    };
    let engine = Engine::with_cluster(config, catalog, Some(setup)).expect("engine");
    let mut session = open_session(&engine, &[]).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while first_number(&mut session, "SELECT count(*) FROM sys.workers WHERE state = 'up'").await < workers.len() as i64
    {
        assert!(Instant::now() < deadline, "the workers did not come up");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    engine
}

/// The first column of the first row of `sql`, as an integer.
async fn first_number(session: &mut Session, sql: &str) -> i64 {
    let batches = query(session, sql).await.unwrap_or_else(|e| panic!("{sql}: {}", e.message()));
    let batch = batches.iter().find(|b| b.num_rows() > 0).expect("a row");
    let value = cast(batch.column(0), &DataType::Int64).expect("an integer");
    value.as_primitive::<Int64Type>().value(0)
}

/// The bytes a query moved between tasks: for distributed MPP what
/// `EXPLAIN ANALYZE` counts crossing the network, for BSP what its stages wrote.
async fn moved_bytes(session: &mut Session, sql: &str, bsp: bool) -> u64 {
    if bsp {
        let _ = query(session, sql).await.expect("query");
        let last = format!(
            "SELECT stage_bytes FROM sys.queries WHERE session_id = {} AND \"query\" NOT LIKE '%sys.queries%' \
             ORDER BY query_id DESC LIMIT 1",
            session.id()
        );
        return u64::try_from(first_number(session, &last).await).unwrap_or(0);
    }
    let batches = query(session, &format!("EXPLAIN ANALYZE {sql}")).await.expect("explain analyze");
    let text: String = batches.iter().flat_map(rows_as_text).collect::<Vec<_>>().join("\n");
    text.split("bytes between tasks: ")
        .nth(1)
        .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

/// One query in one setup.
struct Measured {
    ms: f64,
    answer: Fingerprint,
    moved: u64,
}

fn geomean(ratios: &[f64]) -> f64 {
    (ratios.iter().map(|r| r.ln()).sum::<f64>() / ratios.len().max(1) as f64).exp()
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let mut args = std::env::args().skip(1);
    let (scale, runs, cores) = tpch_common::scale_runs_cores(&mut args);
    println!("TPC-H SF{scale}, {runs} runs per query and setup, {cores} cores, workers in this process");
    let dir = tempfile::tempdir().expect("temporary directory");
    let store: Arc<dyn ObjectStore> = Arc::new(LocalFileSystem::new_with_prefix(dir.path()).expect("local store"));
    load_all(&store, scale).await;

    let mut workers = Vec::new();
    for _ in 0..3 {
        workers.push(start_worker(&store).await);
    }
    let mut engines = Vec::new();
    let mut sessions = Vec::new();
    for (n, (_, count, mode)) in SETUPS.iter().enumerate() {
        let engine = engine(&store, &workers[..*count], n).await;
        sessions.push(open_session(&engine, &[("execution_mode", mode)]).await);
        engines.push(engine);
    }

    let mut results: Vec<Vec<Option<Measured>>> = SETUPS.iter().map(|_| Vec::new()).collect();
    let mut ok = true;
    for (name, sql) in QUERIES {
        let mut times: Vec<Vec<f64>> = vec![Vec::new(); SETUPS.len()];
        let mut answers: Vec<Option<Fingerprint>> = vec![None; SETUPS.len()];
        for _ in 0..runs {
            for (s, session) in sessions.iter_mut().enumerate() {
                let started = Instant::now();
                match query(session, sql).await {
                    Ok(batches) => {
                        times[s].push(started.elapsed().as_secs_f64() * 1000.0);
                        answers[s] = Some(fingerprint(&batches));
                    }
                    Err(e) => {
                        println!("FAILED: {name} with {}: {}", SETUPS[s].0, e.message());
                        ok = false;
                    }
                }
            }
        }
        for (s, session) in sessions.iter_mut().enumerate() {
            let measured = if times[s].len() > 1 { &times[s][1..] } else { &times[s][..] };
            let result = answers[s].map(|answer| Measured {
                ms: measured.iter().copied().fold(f64::INFINITY, f64::min),
                answer,
                moved: 0,
            });
            if let (Some(got), Some(alone)) = (&result, &answers[0])
                && got.answer != *alone
            {
                println!("MISMATCH: {name} with {}: {} rows, alone {} rows", SETUPS[s].0, got.answer.rows, alone.rows);
                ok = false;
            }
            let mut result = result;
            if s > 0
                && let Some(r) = result.as_mut()
            {
                r.moved = moved_bytes(session, sql, SETUPS[s].2 == "bsp").await;
            }
            if let Some(r) = &result {
                println!("{:<14} {name:<3} {:>9.1} ms {:>12} bytes moved", SETUPS[s].0, r.ms, r.moved);
            }
            results[s].push(result);
        }
    }

    println!();
    println!(
        "| query | alone ms | 1 worker ms (×) | 3 workers ms (×) | 3 workers BSP ms (×) | MPP bytes between tasks, 3 workers | BSP stage bytes |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|");
    let mut ratios: Vec<Vec<f64>> = vec![Vec::new(); SETUPS.len()];
    for (i, (name, _)) in QUERIES.iter().enumerate() {
        let alone = results[0][i].as_ref().map(|r| r.ms);
        let mut cells = vec![alone.map_or("failed".to_string(), |ms| format!("{ms:.1}"))];
        for s in 1..SETUPS.len() {
            cells.push(match (&results[s][i], alone) {
                (Some(r), Some(alone)) => {
                    ratios[s].push(r.ms / alone);
                    format!("{:.1} ({:.2})", r.ms, r.ms / alone)
                }
                (Some(r), None) => format!("{:.1}", r.ms),
                (None, _) => "failed".to_string(),
            });
        }
        let moved = |s: usize| results[s][i].as_ref().map_or("-".to_string(), |r| r.moved.to_string());
        println!("| {name} | {} | {} | {} |", cells.join(" | "), moved(2), moved(3));
    }
    println!();
    for s in 1..SETUPS.len() {
        println!(
            "{}: geometric mean of time / alone {:.2} over {} queries",
            SETUPS[s].0,
            geomean(&ratios[s]),
            ratios[s].len()
        );
    }
    let total = |s: usize| results[s].iter().flatten().map(|r| r.moved).sum::<u64>();
    println!("bytes moved over all 22: MPP 3 workers {}, BSP 3 workers {}", total(2), total(3));
    println!("peak RSS {} MiB", common::peak_rss_mib());
    for engine in engines {
        engine.shutdown();
        engine.close().await;
    }
    drop(dir);
    if !ok {
        println!("\nMISMATCH or FAILED above: exiting with status 1");
        std::process::exit(1);
    }
}
