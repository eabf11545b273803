//! S3 scan benchmark: one keyed Dynamic Table of 10M rows (by default),
//! scanned from a local directory and from an S3-compatible server (moto's
//! `moto_server`, started here as the tests start it) without a cache,
//! with the local range cache cold (first scan after start) and warm.
//!
//! ```text
//! cargo run --release -p streamhouse-benches --bin s3scan -- [rows, default 10000000]
//! ```
//!
//! The table is written once to the local directory, compacted, and its
//! files copied byte for byte to the bucket, so every variant reads the
//! same files. Prints per query the median of three runs (the cold-cache
//! variant runs once, on an empty cache) and the ratio to local disk.

#![allow(clippy::print_stdout)]

#[path = "common.rs"]
mod common;
// The tests' moto harness, shared as source (a dependency on the test kit
// would change the benchmarks' feature set and rebuild the tree).
#[path = "../crates/testkit/src/s3.rs"]
mod s3;

use std::sync::Arc;
use std::time::Instant;

use arrow::array::{Float64Array, Int64Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema};
use futures::TryStreamExt;
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt};
use s3::S3Server;
use streamhouse_engine::datafusion::prelude::{SessionConfig, SessionContext};
use streamhouse_engine::dynamic::DynamicTable;
use streamhouse_storage::cache::RangeCache;
use streamhouse_storage::{Table, TableOptions, TableSchema, ValueKind};

const QUERIES: &[(&str, &str)] = &[
    ("full scan aggregate", "SELECT count(*), sum(a), avg(b), max(s) FROM t"),
    ("two-column filter", "SELECT count(*), sum(b) FROM t WHERE a % 10 = 3"),
    ("group by", "SELECT a % 100 AS g, count(*), sum(b) FROM t GROUP BY g ORDER BY g LIMIT 5"),
    ("key range (1%)", "SELECT count(*), sum(a) FROM t WHERE k BETWEEN 5000000 AND 5099999"),
];

const BATCH: usize = 65_536;

fn batch(schema: &Arc<Schema>, start: usize, rows: usize) -> RecordBatch {
    let keys: Vec<i64> = (start..start + rows).map(|i| i as i64).collect();
    let a: Int64Array = keys.iter().map(|k| (k * 7919) % 1_000_003).collect();
    let b: Float64Array = keys.iter().map(|k| (*k as f64) * 0.25).collect();
    let s: StringArray = keys.iter().map(|k| Some(format!("name-{:06}", k % 100_000))).collect();
    RecordBatch::try_new(
        Arc::clone(schema),
        vec![Arc::new(Int64Array::from(keys)), Arc::new(a), Arc::new(b), Arc::new(s)],
    )
    .expect("batch")
}

async fn load(store: &Arc<dyn ObjectStore>, rows: usize) {
    let schema = Arc::new(Schema::new(vec![
        Field::new("k", DataType::Int64, false),
        Field::new("a", DataType::Int64, false),
        Field::new("b", DataType::Float64, false),
        Field::new("s", DataType::Utf8, false),
    ]));
    let definition = TableSchema::new(0, schema, &["k"], TableOptions::default()).expect("schema");
    let schema = Arc::clone(&definition.schema);
    let table = Table::create(Arc::clone(store), Path::from("public/t"), "t", definition).await.expect("create");
    let mut txn = table.begin().await.expect("begin");
    let mut start = 0;
    while start < rows {
        let n = BATCH.min(rows - start);
        txn.write(&batch(&schema, start, n), &vec![ValueKind::Upsert; n]).await.expect("write");
        start += n;
    }
    txn.commit().await.expect("commit");
    table.compact(true).await.expect("compact");
}

/// Copies every object of `from` to `to`; returns the bytes copied.
async fn copy_all(from: &Arc<dyn ObjectStore>, to: &Arc<dyn ObjectStore>) -> u64 {
    let objects: Vec<_> = from.list(None).try_collect().await.expect("list");
    let mut bytes = 0;
    for meta in objects {
        let data = from.get(&meta.location).await.expect("get").bytes().await.expect("read");
        bytes += data.len() as u64;
        to.put(&meta.location, data.into()).await.expect("put");
    }
    bytes
}

async fn context(store: &Arc<dyn ObjectStore>) -> SessionContext {
    let ctx = SessionContext::new_with_config(SessionConfig::new().with_target_partitions(2));
    let table = Table::open(Arc::clone(store), Path::from("public/t"), "t").await.expect("open");
    ctx.register_table("t", Arc::new(DynamicTable::new(table))).expect("register");
    ctx
}

async fn run(ctx: &SessionContext, sql: &str) -> (f64, String) {
    let start = Instant::now();
    let batches = ctx.sql(sql).await.expect("plan").collect().await.expect("run");
    let ms = start.elapsed().as_secs_f64() * 1000.0;
    (ms, arrow::util::pretty::pretty_format_batches(&batches).expect("format").to_string())
}

/// Median of three runs of every query; checks the answers against `expected`.
async fn median_times(ctx: &SessionContext, expected: &[String], variant: &str) -> Vec<f64> {
    let mut out = Vec::new();
    for (i, (_, sql)) in QUERIES.iter().enumerate() {
        let mut times = Vec::new();
        for _ in 0..3 {
            let (ms, answer) = run(ctx, sql).await;
            assert_eq!(answer, expected[i], "{variant} answers differently");
            times.push(ms);
        }
        times.sort_by(f64::total_cmp);
        out.push(times[1]);
    }
    out
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let rows: usize = std::env::args().nth(1).and_then(|s| s.parse().ok()).unwrap_or(10_000_000);
    let dir = tempfile::tempdir()?;
    std::fs::create_dir_all(dir.path().join("local"))?;
    let local: Arc<dyn ObjectStore> = Arc::new(LocalFileSystem::new_with_prefix(dir.path().join("local"))?);
    let started = Instant::now();
    load(&local, rows).await;
    println!("loaded and compacted {rows} rows on local disk in {:.1}s", started.elapsed().as_secs_f64());

    let server = S3Server::start()?
        .ok_or_else(|| anyhow::anyhow!("moto_server is not installed (pip install 'moto[server]')"))?;
    server.bucket("bench")?;
    let s3 = server.store("bench")?;
    let started = Instant::now();
    let bytes = copy_all(&local, &s3).await;
    println!(
        "copied {:.1} MiB to {} in {:.1}s",
        bytes as f64 / 1048576.0,
        server.endpoint(),
        started.elapsed().as_secs_f64()
    );

    // Baseline and expected answers: local disk.
    let local_ctx = context(&local).await;
    let mut expected = Vec::new();
    for (_, sql) in QUERIES {
        expected.push(run(&local_ctx, sql).await.1);
    }
    let local_ms = median_times(&local_ctx, &expected, "local disk").await;

    // S3 with no cache: every scan goes over the network.
    let uncached_ms = median_times(&context(&s3).await, &expected, "S3 without cache").await;

    // S3 behind the range cache: one run per query on an empty cache, then warm.
    let cache: Arc<dyn ObjectStore> = Arc::new(RangeCache::new(Arc::clone(&s3), dir.path().join("cache"), 1 << 30)?);
    let cached_ctx = context(&cache).await;
    let mut cold_ms = Vec::new();
    for (i, (_, sql)) in QUERIES.iter().enumerate() {
        let (ms, answer) = run(&cached_ctx, sql).await;
        assert_eq!(answer, expected[i], "S3 with a cold cache answers differently");
        cold_ms.push(ms);
    }
    let warm_ms = median_times(&cached_ctx, &expected, "S3 with a warm cache").await;

    println!();
    println!(
        "{:<22} {:>10} {:>22} {:>22} {:>22}",
        "query", "local ms", "S3 no cache", "S3 cold cache", "S3 warm cache"
    );
    let mut logs = [0.0f64; 3];
    for (i, (name, _)) in QUERIES.iter().enumerate() {
        let ratios = [uncached_ms[i] / local_ms[i], cold_ms[i] / local_ms[i], warm_ms[i] / local_ms[i]];
        for (log, r) in logs.iter_mut().zip(ratios) {
            *log += r.ln();
        }
        println!(
            "{name:<22} {:>10.1} {:>12.1} ({:>5.2}x) {:>12.1} ({:>5.2}x) {:>12.1} ({:>5.2}x)",
            local_ms[i], uncached_ms[i], ratios[0], cold_ms[i], ratios[1], warm_ms[i], ratios[2]
        );
    }
    let n = QUERIES.len() as f64;
    println!();
    println!(
        "geometric mean vs local disk: S3 no cache {:.2}x, S3 cold cache {:.2}x, S3 warm cache {:.2}x",
        (logs[0] / n).exp(),
        (logs[1] / n).exp(),
        (logs[2] / n).exp()
    );
    println!("peak RSS {} MiB", common::peak_rss_mib());
    Ok(())
}
