//! A join view over a big table that must stay fresh: issue 20's "done
//! when" scenario, as a user would set it up.
//!
//! `cargo run --release --bin orders [orders] [rate] [seconds]` (default
//! 10,000,000 orders, 100,000 rows/s, 30 s): a table of `orders` (keyed by
//! order id) and one of 100,000 `customers`, the view
//! `SELECT c.country, count(*), sum(o.amount) FROM orders o JOIN customers c
//! ON o.customer_id = c.id GROUP BY c.country` (the join column of `orders`
//! is not its key), then new orders written open loop at the rate in
//! batches every 20 ms. Freshness per batch: from its commit until the view
//! reflects it, p50 and p99. The same run over a table a tenth the size, in
//! the same process, is the baseline: the ratio says whether a step's cost
//! grows with the table (1.0: it does not).

#![allow(clippy::print_stdout)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::{ArrayRef, Int64Array, RecordBatch, StringViewArray};
use streamhouse_engine::catalog::RelationName;
use streamhouse_engine::warehouse::DynamicCatalog;
use streamhouse_engine::{Engine, EngineConfig, SessionInfo};
use streamhouse_storage as storage;

const CUSTOMERS: i64 = 100_000;
const COUNTRIES: [&str; 8] = ["de", "fr", "us", "jp", "br", "in", "ng", "au"];
const LOAD_BATCH: i64 = 200_000;
const INTERVAL: Duration = Duration::from_millis(20);
const VIEW: &str = "CREATE MATERIALIZED VIEW by_country AS SELECT c.country, count(*) AS orders, \
    sum(o.amount) AS revenue FROM orders o JOIN customers c ON o.customer_id = c.id GROUP BY c.country";

fn customer_of(order: i64) -> i64 {
    (order.wrapping_mul(0x9e37_79b9_7f4a_7c15_u64 as i64) >> 11).rem_euclid(CUSTOMERS)
}

fn orders_batch(schema: &arrow::datatypes::SchemaRef, from: i64, to: i64) -> RecordBatch {
    let ids: ArrayRef = Arc::new(Int64Array::from_iter_values(from..to));
    let customers: ArrayRef = Arc::new(Int64Array::from_iter_values((from..to).map(customer_of)));
    let amounts: ArrayRef = Arc::new(Int64Array::from_iter_values((from..to).map(|o| 1 + o % 500)));
    RecordBatch::try_new(Arc::clone(schema), vec![ids, customers, amounts]).expect("orders batch")
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

struct Run {
    load_s: f64,
    backfill_s: f64,
    written_per_s: f64,
    p50: f64,
    p99: f64,
}

async fn run(orders: i64, rate: usize, seconds: u64) -> Run {
    let dir = tempfile::tempdir().expect("temporary directory");
    let store: Arc<dyn object_store::ObjectStore> =
        Arc::new(object_store::local::LocalFileSystem::new_with_prefix(dir.path()).expect("local store"));
    let catalog = Arc::new(DynamicCatalog::open(store).await.expect("catalog"));
    let engine = Engine::with_catalog(EngineConfig::default(), Arc::clone(&catalog) as _).expect("engine");
    let mut session = engine.new_session(SessionInfo::default());
    let (_, error) = session
        .run(
            "CREATE TABLE orders (id BIGINT PRIMARY KEY, customer_id BIGINT, amount BIGINT); \
             CREATE TABLE customers (id BIGINT PRIMARY KEY, country TEXT)",
        )
        .await;
    assert!(error.is_none(), "{error:?}");
    let table = |n: &str| {
        let name = RelationName { schema: "public".into(), name: n.into() };
        engine.catalog().subscribe_to(&name).expect("table").0
    };
    let (orders_table, customers_table) = (table("orders"), table("customers"));
    let load = Instant::now();
    let schema = Arc::clone(&customers_table.schema().schema);
    let ids: ArrayRef = Arc::new(Int64Array::from_iter_values(0..CUSTOMERS));
    let countries: ArrayRef =
        Arc::new(StringViewArray::from_iter_values((0..CUSTOMERS).map(|c| COUNTRIES[c as usize % COUNTRIES.len()])));
    let rows = RecordBatch::try_new(schema, vec![ids, countries]).expect("customers");
    customers_table.write(&rows, &vec![storage::ValueKind::Upsert; rows.num_rows()]).await.expect("customers");
    let schema = Arc::clone(&orders_table.schema().schema);
    let mut next = 0i64;
    while next < orders {
        let to = (next + LOAD_BATCH).min(orders);
        let rows = orders_batch(&schema, next, to);
        orders_table.write(&rows, &vec![storage::ValueKind::Upsert; rows.num_rows()]).await.expect("orders");
        next = to;
    }
    orders_table.compact(true).await.expect("compaction");
    let load_s = load.elapsed().as_secs_f64();
    let backfill = Instant::now();
    let (_, error) = session.run(VIEW).await;
    assert!(error.is_none(), "{error:?}");
    let backfill_s = backfill.elapsed().as_secs_f64();
    let view = catalog.materialized_views().into_iter().find(|v| v.name.name == "by_country").expect("the view");

    let per_batch = (rate as f64 * INTERVAL.as_secs_f64()).max(1.0) as i64;
    let (sender, mut receiver) = tokio::sync::mpsc::unbounded_channel::<Instant>();
    let observer = {
        let view = Arc::clone(&view);
        tokio::spawn(async move {
            let mut latencies = Vec::new();
            while let Some(committed) = receiver.recv().await {
                let deadline = tokio::time::Instant::now() + Duration::from_secs(600);
                view.wait_fresh(deadline).await.expect("view maintained");
                latencies.push(committed.elapsed().as_secs_f64() * 1000.0);
            }
            latencies
        })
    };
    let start = Instant::now();
    let mut batch = 0u32;
    let mut written = 0i64;
    while start.elapsed() < Duration::from_secs(seconds) {
        tokio::time::sleep_until((start + INTERVAL * batch).into()).await;
        batch += 1;
        let rows = orders_batch(&schema, next, next + per_batch);
        next += per_batch;
        written += per_batch;
        orders_table.write(&rows, &vec![storage::ValueKind::Upsert; rows.num_rows()]).await.expect("orders");
        let _ = sender.send(Instant::now());
    }
    let written_per_s = written as f64 / start.elapsed().as_secs_f64();
    drop(sender);
    let mut latencies = observer.await.expect("observer");
    latencies.sort_by(f64::total_cmp);
    // The view is its query.
    let (outputs, error) = session.run("SELECT sum(orders) FROM by_country").await;
    assert!(error.is_none(), "{error:?}");
    drop(outputs);
    engine.shutdown();
    engine.close().await;
    Run { load_s, backfill_s, written_per_s, p50: percentile(&latencies, 0.5), p99: percentile(&latencies, 0.99) }
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let mut args = std::env::args().skip(1);
    let orders: i64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(10_000_000);
    let rate: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(100_000);
    let seconds: u64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(30);
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!("orders ⋈ customers by country: {rate} new orders/s for {seconds} s, {cores} cores");
    println!(
        "{:>12} {:>8} {:>11} {:>12} {:>13} {:>13}",
        "orders", "load s", "backfill s", "written/s", "fresh p50 ms", "fresh p99 ms"
    );
    let mut results = Vec::new();
    for size in [orders / 10, orders] {
        let r = run(size, rate, seconds).await;
        println!(
            "{size:>12} {:>8.1} {:>11.1} {:>12.0} {:>13.1} {:>13.1}",
            r.load_s, r.backfill_s, r.written_per_s, r.p50, r.p99
        );
        results.push(r);
    }
    println!(
        "ratio {}x the orders: fresh p50 {:.2}x, p99 {:.2}x (1.0: a step's cost does not grow with the table)",
        10,
        results[1].p50 / results[0].p50,
        results[1].p99 / results[0].p99
    );
}
