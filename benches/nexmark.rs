//! Nexmark as continuous views: events/s and freshness.
//!
//! `cargo run --release --bin nexmark [events] [queries…]` (default 100000
//! events, all queries). For each query: a fresh engine over a local data
//! directory, the three source tables (person, auction, bid; bids keyed by
//! event number), the query's views (q9 is Nexmark's winning bids, a join
//! and a Top-1 per auction; q4, q5, q7 and q8 are chains of views:
//! an aggregate under a join or another aggregate is a view of its own), then
//! the events from the `nexmark` generator written in batches of 5,000 events
//! as fast as the views keep up with (each batch waits for the previous one
//! to be reflected, so the views are never more than one batch behind).
//!
//! With `--baseline`, each join query (q3, q4, q8, q9) runs a second time
//! with its join keys written as expressions, which no index serves, and
//! the ratios are printed.
//!
//! With `--rate R`, events are written open loop at R events/s in batches
//! every 20 ms, and freshness is measured per batch while writes go on.
//!
//! The data directory is opened as the server opens its own: every commit
//! synced, small writes through the write-ahead log. `--no-sync` opens a
//! plain local directory instead (as this benchmark did before), for the
//! cost of durability.
//!
//! `--counters` prints, per view, the lookups by key its steps made and the
//! source snapshots they read whole (`sys.views.probes`, `source_scans`).
//!
//! Prints, per query: events/s (one process on this machine's cores; divide
//! by the core count for per core), and freshness: milliseconds from the
//! first commit of a batch (its people) until the last view of the chain
//! reflects the whole batch (its auctions and bids too), p50 and p99.
//! Published anchors per core: Flink 1.13 q0 155k, q5 22k, q7 12k ev/s;
//! Feldera ≈ 436k (q0), 412k (q5), 196k (q7).

#![allow(clippy::print_stdout)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::{ArrayRef, Int64Array, RecordBatch, StringArray, TimestampMillisecondArray};
use nexmark::EventGenerator;
use nexmark::config::NexmarkConfig;
use nexmark::event::Event;
use streamhouse_engine::catalog::RelationName;
use streamhouse_engine::warehouse::DynamicCatalog;
use streamhouse_engine::{Engine, EngineConfig, SessionInfo};
use streamhouse_storage as storage;

const TABLES: &str = "
CREATE TABLE person (id BIGINT PRIMARY KEY, name TEXT, email_address TEXT, credit_card TEXT, city TEXT, state TEXT, date_time TIMESTAMP);
CREATE TABLE auction (id BIGINT PRIMARY KEY, item_name TEXT, description TEXT, initial_bid BIGINT, reserve BIGINT,
  date_time TIMESTAMP, expires TIMESTAMP, seller BIGINT, category BIGINT);
CREATE TABLE bid (id BIGINT PRIMARY KEY, auction BIGINT, bidder BIGINT, price BIGINT, channel TEXT, url TEXT, date_time TIMESTAMP);
";

const Q8_PEOPLE: &str = "CREATE MATERIALIZED VIEW q8_people AS SELECT id, name, window_start, window_end \
    FROM TUMBLE(person, date_time, INTERVAL '10' SECOND) GROUP BY id, name, window_start, window_end";
const Q8_SELLERS: &str = "CREATE MATERIALIZED VIEW q8_sellers AS SELECT seller, window_start, window_end \
    FROM TUMBLE(auction, date_time, INTERVAL '10' SECOND) GROUP BY seller, window_start, window_end";

/// Query name and its views, in creation order (the last is the result).
const QUERIES: &[(&str, &[&str])] = &[
    ("q0", &["CREATE MATERIALIZED VIEW q0 AS SELECT auction, bidder, price, date_time FROM bid"]),
    ("q1", &["CREATE MATERIALIZED VIEW q1 AS SELECT auction, bidder, 0.908 * price AS price, date_time FROM bid"]),
    ("q2", &["CREATE MATERIALIZED VIEW q2 AS SELECT auction, price FROM bid WHERE auction % 123 = 0"]),
    (
        "q3",
        &[
            "CREATE MATERIALIZED VIEW q3 AS SELECT p.name, p.city, p.state, a.id FROM auction a JOIN person p ON a.seller = p.id \
           WHERE a.category = 10 AND p.state IN ('or', 'id', 'ca')",
        ],
    ),
    (
        "q4",
        &[
            "CREATE MATERIALIZED VIEW q4_final AS SELECT a.id, a.category, max(b.price) AS final FROM auction a JOIN bid b \
             ON a.id = b.auction WHERE b.date_time BETWEEN a.date_time AND a.expires GROUP BY a.id, a.category",
            "CREATE MATERIALIZED VIEW q4 AS SELECT category, avg(final) AS avg_final FROM q4_final GROUP BY category",
        ],
    ),
    (
        "q5",
        &[
            "CREATE MATERIALIZED VIEW q5_counts AS SELECT auction, window_start, count(*) AS num \
             FROM HOP(bid, date_time, INTERVAL '2' SECOND, INTERVAL '10' SECOND) GROUP BY auction, window_start",
            "CREATE MATERIALIZED VIEW q5_max AS SELECT window_start, max(num) AS maxn FROM q5_counts GROUP BY window_start",
            "CREATE MATERIALIZED VIEW q5 AS SELECT c.auction, c.num FROM q5_counts c JOIN q5_max m \
             ON c.window_start = m.window_start AND c.num >= m.maxn",
        ],
    ),
    (
        "q7",
        &[
            "CREATE MATERIALIZED VIEW q7_max AS SELECT window_end, max(price) AS maxprice \
             FROM TUMBLE(bid, date_time, INTERVAL '10' SECOND) GROUP BY window_end",
            "CREATE MATERIALIZED VIEW q7 AS SELECT b.auction, b.price, b.bidder, b.date_time FROM bid b JOIN q7_max m \
             ON b.price = m.maxprice AND b.date_time < m.window_end AND b.date_time >= m.window_end - INTERVAL '10' SECOND",
        ],
    ),
    (
        "q8",
        &[
            Q8_PEOPLE,
            Q8_SELLERS,
            "CREATE MATERIALIZED VIEW q8 AS SELECT p.id, p.name, p.window_start FROM q8_people p JOIN q8_sellers a \
             ON p.id = a.seller AND p.window_start = a.window_start AND p.window_end = a.window_end",
        ],
    ),
    (
        "q9",
        &[
            "CREATE MATERIALIZED VIEW q9 AS SELECT t.id, t.item_name, t.seller, t.category, t.bid_id, t.price, t.bidder \
             FROM (SELECT a.id, a.item_name, a.seller, a.category, b.id AS bid_id, b.price, b.bidder, \
             ROW_NUMBER() OVER (PARTITION BY a.id ORDER BY b.price DESC, b.date_time) AS rn \
             FROM auction a JOIN bid b ON a.id = b.auction WHERE b.date_time BETWEEN a.date_time AND a.expires) t \
             WHERE t.rn = 1",
        ],
    ),
];

/// The join queries again, with a join key written as an expression
/// (`abs(id)`: ids are positive), which no arrangement or primary key serves: each step reads the
/// other input whole, as steps did before views read joins by key. Run
/// with `--baseline`, each beside its query, for the ratio.
const BASELINES: &[(&str, &[&str])] = &[
    (
        "q3",
        &[
            "CREATE MATERIALIZED VIEW q3 AS SELECT p.name, p.city, p.state, a.id FROM auction a JOIN person p ON abs(a.seller) = abs(p.id) \
           WHERE a.category = 10 AND p.state IN ('or', 'id', 'ca')",
        ],
    ),
    (
        "q4",
        &[
            "CREATE MATERIALIZED VIEW q4_final AS SELECT a.id, a.category, max(b.price) AS final FROM auction a JOIN bid b \
             ON abs(a.id) = abs(b.auction) WHERE b.date_time BETWEEN a.date_time AND a.expires GROUP BY a.id, a.category",
            "CREATE MATERIALIZED VIEW q4 AS SELECT category, avg(final) AS avg_final FROM q4_final GROUP BY category",
        ],
    ),
    (
        "q8",
        &[
            Q8_PEOPLE,
            Q8_SELLERS,
            "CREATE MATERIALIZED VIEW q8 AS SELECT p.id, p.name, p.window_start FROM q8_people p JOIN q8_sellers a \
             ON abs(p.id) = abs(a.seller) AND p.window_start = a.window_start AND p.window_end = a.window_end",
        ],
    ),
    (
        "q9",
        &[
            "CREATE MATERIALIZED VIEW q9 AS SELECT t.id, t.item_name, t.seller, t.category, t.bid_id, t.price, t.bidder \
             FROM (SELECT a.id, a.item_name, a.seller, a.category, b.id AS bid_id, b.price, b.bidder, \
             ROW_NUMBER() OVER (PARTITION BY a.id ORDER BY b.price DESC, b.date_time) AS rn \
             FROM auction a JOIN bid b ON abs(a.id) = abs(b.auction) WHERE b.date_time BETWEEN a.date_time AND a.expires) t \
             WHERE t.rn = 1",
        ],
    ),
];

const BATCH_EVENTS: usize = 5_000;

fn strings<'a>(values: impl Iterator<Item = &'a str>) -> ArrayRef {
    Arc::new(StringArray::from_iter_values(values))
}

fn ints(values: impl Iterator<Item = i64>) -> ArrayRef {
    Arc::new(Int64Array::from_iter_values(values))
}

fn times(values: impl Iterator<Item = i64>) -> ArrayRef {
    Arc::new(TimestampMillisecondArray::from_iter_values(values))
}

/// One batch of events as rows of the three tables.
fn batches(events: &[(u64, Event)], tables: &[Arc<storage::Table>; 3]) -> [RecordBatch; 3] {
    let (mut people, mut auctions, mut bids) = (vec![], vec![], vec![]);
    for (n, event) in events {
        match event {
            Event::Person(p) => people.push(p),
            Event::Auction(a) => auctions.push(a),
            Event::Bid(b) => bids.push((*n, b)),
        }
    }
    let schema = |i: usize| tables[i].schema().schema;
    // Text and timestamp columns may be stored as other types (Utf8View, another unit): cast.
    let conform = |table: usize, columns: Vec<ArrayRef>| {
        let schema = schema(table);
        let columns = columns
            .iter()
            .zip(schema.fields())
            .map(|(c, f)| arrow::compute::cast(c, f.data_type()).expect("cast"))
            .collect();
        RecordBatch::try_new(schema, columns)
    };
    let person = conform(
        0,
        vec![
            ints(people.iter().map(|p| p.id as i64)),
            strings(people.iter().map(|p| p.name.as_str())),
            strings(people.iter().map(|p| p.email_address.as_str())),
            strings(people.iter().map(|p| p.credit_card.as_str())),
            strings(people.iter().map(|p| p.city.as_str())),
            strings(people.iter().map(|p| p.state.as_str())),
            times(people.iter().map(|p| p.date_time as i64)),
        ],
    )
    .expect("person rows");
    let auction = conform(
        1,
        vec![
            ints(auctions.iter().map(|a| a.id as i64)),
            strings(auctions.iter().map(|a| a.item_name.as_str())),
            strings(auctions.iter().map(|a| a.description.as_str())),
            ints(auctions.iter().map(|a| a.initial_bid as i64)),
            ints(auctions.iter().map(|a| a.reserve as i64)),
            times(auctions.iter().map(|a| a.date_time as i64)),
            times(auctions.iter().map(|a| a.expires as i64)),
            ints(auctions.iter().map(|a| a.seller as i64)),
            ints(auctions.iter().map(|a| a.category as i64)),
        ],
    )
    .expect("auction rows");
    let bid = conform(
        2,
        vec![
            ints(bids.iter().map(|(n, _)| *n as i64)),
            ints(bids.iter().map(|(_, b)| b.auction as i64)),
            ints(bids.iter().map(|(_, b)| b.bidder as i64)),
            ints(bids.iter().map(|(_, b)| b.price as i64)),
            strings(bids.iter().map(|(_, b)| b.channel.as_str())),
            strings(bids.iter().map(|(_, b)| b.url.as_str())),
            times(bids.iter().map(|(_, b)| b.date_time as i64)),
        ],
    )
    .expect("bid rows");
    [person, auction, bid]
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

/// Waits until the view reflects the latest snapshot of every source, through the chain.
async fn wait_caught_up(catalog: &DynamicCatalog, view: &str) {
    let view = catalog.materialized_views().into_iter().find(|v| v.name.name == view).expect("the query's view exists");
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(600);
    let fresh = view.wait_fresh(deadline).await.expect("view maintained");
    assert_eq!(fresh, streamhouse_engine::views::Freshness::Fresh, "view {} did not catch up in 10 minutes", view.name);
}

/// Writes are not synced (`--no-sync`: the store as before the benchmark
/// used the server's; acknowledged writes could be lost in a power cut).
static NO_SYNC: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// A temporary warehouse opened as the server opens its data directory
/// (durable local store behind the write-ahead log, unless `--no-sync`).
struct Warehouse {
    _log: Option<storage::durable::log::LogStore>,
    _dir: tempfile::TempDir,
}

/// A fresh engine over a temporary directory with the tables and `views`.
async fn start(views: &[&str]) -> (Engine, Arc<DynamicCatalog>, [Arc<storage::Table>; 3], Warehouse) {
    let dir = tempfile::tempdir().expect("temporary directory");
    let config = streamhouse::config::StorageConfig {
        sync: !NO_SYNC.load(std::sync::atomic::Ordering::Relaxed),
        ..streamhouse::config::StorageConfig::default()
    };
    let opened = streamhouse::store::open(&config, dir.path()).await.expect("warehouse");
    let catalog = DynamicCatalog::open(opened.store).await.expect("catalog");
    let catalog = Arc::new(catalog);
    let engine = Engine::with_catalog(EngineConfig::default(), Arc::clone(&catalog) as _).expect("engine");
    let mut session = engine.new_session(SessionInfo::default());
    let (_, error) = session.run(TABLES).await;
    assert!(error.is_none(), "{error:?}");
    for view in views {
        let (_, error) = session.run(view).await;
        assert!(error.is_none(), "{view}: {error:?}");
    }
    let table = |n: &str| {
        let name = RelationName { schema: "public".into(), name: n.into() };
        engine.catalog().subscribe_to(&name).expect("source table").0
    };
    let tables = [table("person"), table("auction"), table("bid")];
    (engine, catalog, tables, Warehouse { _log: opened.log, _dir: dir })
}

/// Writes the next `count` events (numbered from `n + 1`) to the tables;
/// returns when the first of those commits landed.
async fn write_events(
    generator: &mut EventGenerator,
    n: &mut u64,
    count: usize,
    tables: &[Arc<storage::Table>; 3],
) -> Instant {
    let chunk: Vec<(u64, Event)> = (0..count)
        .map(|_| {
            *n += 1;
            (*n, generator.next().expect("endless generator"))
        })
        .collect();
    let rows = batches(&chunk, tables);
    let mut committed = None;
    for (table, rows) in tables.iter().zip(&rows) {
        if rows.num_rows() > 0 {
            table.write(rows, &vec![storage::ValueKind::Upsert; rows.num_rows()]).await.expect("write");
            committed.get_or_insert_with(Instant::now);
        }
    }
    committed.unwrap_or_else(Instant::now)
}

/// With `--counters`: per view of the query, the probes and source scans its steps made.
static COUNTERS: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

fn print_counters(catalog: &DynamicCatalog) {
    if !COUNTERS.load(std::sync::atomic::Ordering::Relaxed) {
        return;
    }
    for view in catalog.materialized_views() {
        let probes = view.probes.load(std::sync::atomic::Ordering::Relaxed);
        let scans = view.scans.load(std::sync::atomic::Ordering::Relaxed);
        println!("     view {}: probes {probes}, source scans {scans}", view.name);
    }
}

/// Closed loop: each batch waits until the last view reflects the one before.
async fn run_query(name: &str, views: &[&str], events: usize) -> (f64, f64, f64) {
    let (engine, catalog, tables, _dir) = start(views).await;
    let mut generator = EventGenerator::new(NexmarkConfig::default());
    let mut latencies = Vec::new();
    let start = Instant::now();
    let mut n = 0u64;
    let mut writes = Vec::new();
    while (n as usize) < events {
        let began = Instant::now();
        let committed = write_events(&mut generator, &mut n, BATCH_EVENTS, &tables).await;
        writes.push(began.elapsed().as_secs_f64() * 1000.0);
        wait_caught_up(&catalog, name).await;
        latencies.push(committed.elapsed().as_secs_f64() * 1000.0);
    }
    let elapsed = start.elapsed();
    print_writes(&mut writes);
    print_counters(&catalog);
    engine.shutdown();
    engine.close().await;
    latencies.sort_by(f64::total_cmp);
    (n as f64 / elapsed.as_secs_f64(), percentile(&latencies, 0.5), percentile(&latencies, 0.99))
}

/// Open loop: events written at `rate` per second in batches every
/// [`PACED_INTERVAL`], whether or not the views keep up. Freshness per
/// batch: from its first commit until `wait_fresh` of the last view returns
/// (which waits for everything committed when it is called, so a batch's
/// figure is an upper bound).
async fn run_paced(name: &str, views: &[&str], events: usize, rate: usize) -> (f64, f64, f64) {
    let (engine, catalog, tables, _dir) = start(views).await;
    let per_batch = (rate as f64 * PACED_INTERVAL.as_secs_f64()).max(1.0) as usize;
    let (sender, mut receiver) = tokio::sync::mpsc::unbounded_channel::<Instant>();
    let observer = {
        let catalog = Arc::clone(&catalog);
        let name = name.to_string();
        tokio::spawn(async move {
            let mut latencies = Vec::new();
            while let Some(committed) = receiver.recv().await {
                wait_caught_up(&catalog, &name).await;
                latencies.push(committed.elapsed().as_secs_f64() * 1000.0);
            }
            latencies
        })
    };
    let mut generator = EventGenerator::new(NexmarkConfig::default());
    let start = Instant::now();
    let mut n = 0u64;
    let mut batch = 0u32;
    let mut writes = Vec::new();
    while (n as usize) < events {
        tokio::time::sleep_until((start + PACED_INTERVAL * batch).into()).await;
        batch += 1;
        let began = Instant::now();
        let _ = sender.send(write_events(&mut generator, &mut n, per_batch, &tables).await);
        writes.push(began.elapsed().as_secs_f64() * 1000.0);
    }
    let written = start.elapsed();
    print_writes(&mut writes);
    drop(sender);
    let mut latencies = observer.await.expect("observer");
    print_counters(&catalog);
    engine.shutdown();
    engine.close().await;
    latencies.sort_by(f64::total_cmp);
    (n as f64 / written.as_secs_f64(), percentile(&latencies, 0.5), percentile(&latencies, 0.99))
}

/// Prints how long the batches' writes took (generating the events and
/// the three synced commits), and how many took longer than the paced
/// interval.
fn print_writes(writes: &mut [f64]) {
    writes.sort_by(f64::total_cmp);
    println!(
        "     batch writes (generate + 3 synced commits): p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms; over {} ms: {}",
        percentile(writes, 0.5),
        percentile(writes, 0.99),
        writes.last().copied().unwrap_or(0.0),
        PACED_INTERVAL.as_millis(),
        writes.iter().filter(|&&w| w > PACED_INTERVAL.as_secs_f64() * 1000.0).count()
    );
}

/// How often the paced run writes a batch.
const PACED_INTERVAL: Duration = Duration::from_millis(20);

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let rate = match args.iter().position(|a| a == "--rate") {
        Some(i) => {
            let rate = args.get(i + 1).and_then(|r| r.parse::<usize>().ok()).expect("--rate needs events per second");
            args.drain(i..=i + 1);
            Some(rate)
        }
        None => None,
    };
    if let Some(i) = args.iter().position(|a| a == "--counters") {
        args.remove(i);
        COUNTERS.store(true, std::sync::atomic::Ordering::Relaxed);
    }
    if let Some(i) = args.iter().position(|a| a == "--no-sync") {
        args.remove(i);
        NO_SYNC.store(true, std::sync::atomic::Ordering::Relaxed);
    }
    let baseline = match args.iter().position(|a| a == "--baseline") {
        Some(i) => {
            args.remove(i);
            true
        }
        None => false,
    };
    let mut args = args.into_iter();
    let events: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(100_000);
    let only: Vec<String> = args.collect();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    match rate {
        Some(rate) => println!(
            "Nexmark, {events} events per query written at {rate} events/s (batches every {} ms), {cores} cores",
            PACED_INTERVAL.as_millis()
        ),
        None => println!("Nexmark, {events} events per query, batches of {BATCH_EVENTS} events, {cores} cores"),
    }
    if NO_SYNC.load(std::sync::atomic::Ordering::Relaxed) {
        println!("store: plain local directory, writes not synced (--no-sync)");
    } else {
        println!("store: as the server's, every commit synced through the write-ahead log");
    }
    println!("{:<4} {:>12} {:>14} {:>14} {:>14}", "q", "events/s", "events/s/core", "fresh p50 ms", "fresh p99 ms");
    for (name, views) in QUERIES {
        if !only.is_empty() && !only.iter().any(|o| o == name) {
            continue;
        }
        let started = Instant::now();
        let (got, p50, p99) = match rate {
            Some(rate) => run_paced(name, views, events, rate).await,
            None => run_query(name, views, events).await,
        };
        println!("{name:<4} {got:>12.0} {:>14.0} {p50:>14.1} {p99:>14.1}", got / cores as f64);
        if let Some((_, plain)) = BASELINES.iter().find(|(b, _)| b == name).filter(|_| baseline) {
            let (base, base50, base99) = match rate {
                Some(rate) => run_paced(name, plain, events, rate).await,
                None => run_query(name, plain, events).await,
            };
            println!(
                "{:<4} {base:>12.0} {:>14.0} {base50:>14.1} {base99:>14.1}   baseline (join keys as expressions: no index)",
                "",
                base / cores as f64
            );
            println!(
                "     ratio to baseline: events/s {:.2}x, fresh p50 {:.2}x, fresh p99 {:.2}x (below 1: fresher)",
                got / base,
                p50 / base50,
                p99 / base99
            );
        }
        if started.elapsed() > Duration::from_secs(600) {
            println!("(stopping: the last query took over 10 minutes)");
            break;
        }
    }
}
