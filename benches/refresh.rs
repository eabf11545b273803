//! Continuous maintenance vs scheduled full refresh: what a view costs, and
//! how fresh it is, either way (issue 21's table for "which to pick").
//!
//! `cargo run --release --bin refresh [scale] [seconds] [freshness s …]`
//! (default SF 1, 60 s, full refreshes with freshness 10 and 30 s): TPC-H's
//! `nation`, `customer`, `orders` and `lineitem` as Dynamic Tables, the view
//! of revenue by nation and month (`lineitem ⋈ orders ⋈ customer ⋈
//! nation`, grouped), and a stream of updates to `lineitem` (discounts)
//! and `orders` (dates) every 100 ms. Each mode runs the same stream for the
//! same time: first with no view (the baseline: what the writes cost),
//! then with the view continuous, then refreshed in full at each freshness.
//! Per mode: the process's CPU seconds above the baseline, and the view's
//! staleness sampled every 200 ms (ms since the oldest source commit it
//! did not reflect yet), p50 and max.

#![allow(clippy::print_stdout)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use object_store::ObjectStore;
use streamhouse_engine::warehouse::DynamicCatalog;
use streamhouse_engine::{Engine, EngineConfig, Session, SessionInfo};

const VIEW: &str = "SELECT n.n_name AS nation, date_trunc('month', o.o_orderdate) AS month, count(*) AS items, \
    sum(l.l_extendedprice * (1 - l.l_discount)) AS revenue \
    FROM lineitem l JOIN orders o ON l.l_orderkey = o.o_orderkey \
    JOIN customer c ON o.o_custkey = c.c_custkey JOIN nation n ON c.c_nationkey = n.n_nationkey \
    GROUP BY n.n_name, date_trunc('month', o.o_orderdate)";

/// User + system CPU seconds of this process so far.
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name (which may hold spaces): utime is the 12th, stime the 13th.
    let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / 100.0
}

async fn run(session: &mut Session, sql: &str) {
    let (outputs, error) = session.run(sql).await;
    assert!(error.is_none(), "{sql}: {error:?}");
    for output in outputs {
        if let streamhouse_engine::Output::Rows(mut stream) = output {
            use futures::StreamExt;
            while let Some(batch) = stream.next().await {
                batch.expect("rows");
            }
        }
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

/// One mode's run.
struct Measured {
    cpu_s: f64,
    staleness: Vec<f64>,
    refreshes: usize,
    setup_s: f64,
}

/// Writes the update stream for `seconds` while sampling the view `view`
/// (if any): CPU seconds spent, staleness samples.
async fn stream(
    engine: &Engine,
    catalog: &DynamicCatalog,
    view: Option<&str>,
    seconds: u64,
    orders: i64,
    round: &mut i64,
) -> (f64, Vec<f64>) {
    let sampler = view.map(|name| {
        let view = catalog.materialized_views().into_iter().find(|v| v.name.name == name).expect("the view");
        tokio::spawn(async move {
            let mut samples = Vec::new();
            let until = Instant::now() + Duration::from_secs(seconds);
            while Instant::now() < until {
                tokio::time::sleep(Duration::from_millis(200)).await;
                if let Some((_, ms)) = view.lag().await {
                    samples.push(ms as f64);
                }
            }
            samples
        })
    });
    let mut session = engine.new_session(SessionInfo::default());
    let cpu = cpu_seconds();
    let start = Instant::now();
    let mut tick = 0u32;
    while start.elapsed() < Duration::from_secs(seconds) {
        tokio::time::sleep_until((start + Duration::from_millis(100) * tick).into()).await;
        tick += 1;
        *round += 1;
        // ~100 lineitems and 25 orders per tick, spread over the key space.
        let at = (*round * 7919 * 4) % (orders * 4).max(1);
        run(
            &mut session,
            &format!(
                "UPDATE lineitem SET l_discount = CASE WHEN l_discount >= 0.09 THEN 0.00 ELSE l_discount + 0.01 END \
                 WHERE l_orderkey BETWEEN {at} AND {}",
                at + 99
            ),
        )
        .await;
        run(
            &mut session,
            &format!(
                "UPDATE orders SET o_orderdate = o_orderdate + INTERVAL '1' DAY WHERE o_orderkey BETWEEN {at} AND {}",
                at + 99
            ),
        )
        .await;
    }
    let cpu = cpu_seconds() - cpu;
    let samples = match sampler {
        Some(sampler) => sampler.await.expect("sampler"),
        None => Vec::new(),
    };
    (cpu, samples)
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let mut args = std::env::args().skip(1);
    let scale: f64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(1.0);
    let seconds: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(60);
    let mut freshness: Vec<u64> = args.filter_map(|a| a.parse().ok()).collect();
    if freshness.is_empty() {
        freshness = vec![10, 30];
    }
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let dir = tempfile::tempdir().expect("temporary directory");
    let store: Arc<dyn ObjectStore> =
        Arc::new(object_store::local::LocalFileSystem::new_with_prefix(dir.path()).expect("local store"));
    let load = Instant::now();
    for (name, key) in [
        ("nation", &["n_nationkey"][..]),
        ("customer", &["c_custkey"][..]),
        ("orders", &["o_orderkey"][..]),
        ("lineitem", &["l_orderkey", "l_linenumber"][..]),
    ] {
        let loaded = streamhouse_testkit::tpch::load(&store, name, key, scale).await;
        println!(
            "{name:<8} {:>10} rows (generated {:.1} s, written {:.1} s, compacted {:.1} s)",
            loaded.rows,
            loaded.generate.as_secs_f64(),
            loaded.write.as_secs_f64(),
            loaded.compact.as_secs_f64()
        );
    }
    println!("loaded in {:.1} s", load.elapsed().as_secs_f64());
    let orders = (1_500_000.0 * scale) as i64;
    let catalog = Arc::new(DynamicCatalog::open(Arc::clone(&store)).await.expect("catalog"));
    let engine = Engine::with_catalog(EngineConfig::default(), Arc::clone(&catalog) as _).expect("engine");
    let mut session = engine.new_session(SessionInfo::default());
    let mut round = 0i64;
    println!("revenue by nation and month, SF {scale}: updates every 100 ms for {seconds} s per mode, {cores} cores");

    let (base_cpu, _) = stream(&engine, &catalog, None, seconds, orders, &mut round).await;
    let mut results: Vec<(String, Measured)> = Vec::new();
    let modes: Vec<(String, String)> = std::iter::once(("continuous".to_string(), String::new()))
        .chain(freshness.iter().map(|f| {
            (format!("full, freshness {f} s"), format!("WITH (freshness = '{f} seconds', refresh_mode = 'full') "))
        }))
        .collect();
    for (label, with) in modes {
        let setup = Instant::now();
        run(&mut session, &format!("CREATE MATERIALIZED VIEW revenue {with}AS {VIEW}")).await;
        let setup_s = setup.elapsed().as_secs_f64();
        let before = catalog_refreshes(&mut session).await;
        let (cpu, mut staleness) = stream(&engine, &catalog, Some("revenue"), seconds, orders, &mut round).await;
        let refreshes = catalog_refreshes(&mut session).await - before;
        staleness.sort_by(f64::total_cmp);
        run(&mut session, "DROP MATERIALIZED VIEW revenue").await;
        results.push((label, Measured { cpu_s: cpu - base_cpu, staleness, refreshes, setup_s }));
    }
    println!("writes alone: {base_cpu:.1} CPU s in {seconds} s");
    println!(
        "{:<24} {:>14} {:>12} {:>16} {:>16} {:>10} {:>9}",
        "mode", "view CPU s", "cores used", "staleness p50 ms", "staleness max ms", "refreshes", "setup s"
    );
    for (label, m) in &results {
        println!(
            "{label:<24} {:>14.1} {:>12.2} {:>16.0} {:>16.0} {:>10} {:>9.1}",
            m.cpu_s,
            m.cpu_s / seconds as f64,
            percentile(&m.staleness, 0.5),
            m.staleness.last().copied().unwrap_or(f64::NAN),
            m.refreshes,
            m.setup_s
        );
    }
    let continuous = results[0].1.cpu_s;
    for (label, m) in &results[1..] {
        println!("{label}: {:.2}x the CPU of continuous maintenance", m.cpu_s / continuous);
    }
    engine.shutdown();
    engine.close().await;
}

/// Succeeded refreshes so far.
async fn catalog_refreshes(session: &mut Session) -> usize {
    let (outputs, error) = session.run("SELECT count(*) FROM sys.refreshes WHERE status = 'succeeded'").await;
    assert!(error.is_none(), "{error:?}");
    for output in outputs {
        if let streamhouse_engine::Output::Rows(mut stream) = output {
            use futures::StreamExt;
            if let Some(batch) = stream.next().await {
                let batch = batch.expect("rows");
                let column = arrow::compute::cast(batch.column(0), &arrow::datatypes::DataType::Int64).expect("count");
                return arrow::array::AsArray::as_primitive::<arrow::datatypes::Int64Type>(&column).value(0) as usize;
            }
        }
    }
    0
}
