//! Scan benchmark: TPC-H `lineitem` and `orders` as Dynamic Tables, queried
//! by DataFusion, against the same rows as plain Parquet files read by
//! DataFusion's own Parquet reader, in the same process and session config.
//!
//! Dynamic Tables are measured four ways: with five sorted runs outstanding
//! as an append-mostly stream leaves them (five consecutive key ranges: no
//! merge needed), with five fully overlapping runs (every fifth row in each
//! run: without deletion vectors every key needs a five-way merge, the worst
//! case), with five overlapping runs of updates (all rows, then four runs
//! each writing a fifth of the keys again: deletion vectors mark 80% of the
//! first run's rows), and after a full compaction. The tables have deletion
//! vectors (the default), so no layout merges on read.
//!
//! ```text
//! cargo run --release -p streamhouse-benches --bin scan -- [scale factor, default 1]
//! ```
//!
//! `SCAN_KEEP_DIR=DIR` writes the tables under DIR and keeps them (to look
//! at their files); DIR must not hold an earlier run's tables.
//! `SCAN_WRITE_BUFFER=BYTES` sets the tables' write buffer (`1`: each
//! `write` of a transaction staged as a file of its own).
//!
//! Prints per query the median of seven runs (the layouts take turns) and the ratios to plain Parquet;
//! goals (issue 3): ≤ 1.10× compacted, ≤ 1.5× with five runs.

#![allow(clippy::print_stdout)]

#[path = "common.rs"]
mod common;

use std::sync::Arc;
use std::time::Instant;

use arrow::array::{RecordBatch, UInt32Array};
use arrow::compute::take_record_batch;
use arrow::datatypes::SchemaRef;
use object_store::ObjectStore;
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;
use streamhouse_engine::datafusion::prelude::{ParquetReadOptions, SessionConfig, SessionContext};
use streamhouse_engine::dynamic::DynamicTable;
use streamhouse_storage::{Table, TableOptions, TableSchema, ValueKind};

const QUERIES: &[(&str, &str)] = &[
    (
        "Q1 (lineitem aggregate)",
        "SELECT l_returnflag, l_linestatus, sum(l_quantity), sum(l_extendedprice),
                sum(l_extendedprice * (1 - l_discount)), avg(l_discount), count(*)
         FROM lineitem WHERE l_shipdate <= date '1998-09-02'
         GROUP BY l_returnflag, l_linestatus ORDER BY l_returnflag, l_linestatus",
    ),
    (
        "Q6 (lineitem filter)",
        "SELECT sum(l_extendedprice * l_discount) FROM lineitem
         WHERE l_shipdate >= date '1994-01-01' AND l_shipdate < date '1995-01-01'
           AND l_discount BETWEEN 0.05 AND 0.07 AND l_quantity < 24",
    ),
    (
        "Q12 (orders join lineitem)",
        "SELECT l_shipmode, count(*) FROM orders JOIN lineitem ON o_orderkey = l_orderkey
         WHERE l_shipmode IN ('MAIL', 'SHIP') AND l_commitdate < l_receiptdate AND l_shipdate < l_commitdate
           AND l_receiptdate >= date '1994-01-01' AND l_receiptdate < date '1995-01-01'
         GROUP BY l_shipmode ORDER BY l_shipmode",
    ),
    ("orders full scan", "SELECT count(*), sum(o_totalprice), max(o_comment) FROM orders"),
    ("orders key range", "SELECT count(*), sum(o_totalprice) FROM orders WHERE o_orderkey BETWEEN 1000000 AND 1010000"),
];

fn lineitem(scale: f64) -> Vec<RecordBatch> {
    let generator = tpchgen::generators::LineItemGenerator::new(scale, 1, 1);
    tpchgen_arrow::LineItemArrow::new(generator).with_batch_size(65536).collect::<Result<_, _>>().expect("lineitem")
}

fn orders(scale: f64) -> Vec<RecordBatch> {
    let generator = tpchgen::generators::OrderGenerator::new(scale, 1, 1);
    tpchgen_arrow::OrderArrow::new(generator).with_batch_size(65536).collect::<Result<_, _>>().expect("orders")
}

fn write_parquet(path: &std::path::Path, schema: &SchemaRef, batches: &[RecordBatch]) {
    let props =
        WriterProperties::builder().set_compression(Compression::ZSTD(ZstdLevel::try_new(1).expect("level"))).build();
    let file = std::fs::File::create(path).expect("create parquet file");
    let mut writer = ArrowWriter::try_new(file, Arc::clone(schema), Some(props)).expect("writer");
    for batch in batches {
        writer.write(batch).expect("write");
    }
    writer.close().expect("close");
}

/// Loads `batches` into a new Dynamic Table as `runs` sorted runs: fully
/// overlapping (every `runs`-th row) or consecutive key ranges.
async fn load(
    store: &Arc<dyn ObjectStore>,
    name: &str,
    key: &[&str],
    batches: &[RecordBatch],
    runs: usize,
    layout: Layout,
) -> Table {
    load_with(store, name, key, batches, runs, layout, true).await
}

async fn load_with(
    store: &Arc<dyn ObjectStore>,
    name: &str,
    key: &[&str],
    batches: &[RecordBatch],
    runs: usize,
    layout: Layout,
    deletion_vectors: bool,
) -> Table {
    let schema = batches[0].schema();
    // SCAN_WRITE_BUFFER=BYTES: a transaction's write buffer (1: a file per write, as before it had one).
    let write_buffer_bytes = std::env::var("SCAN_WRITE_BUFFER")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(TableOptions::default().write_buffer_bytes);
    let options =
        TableOptions { compaction_trigger: 1000, deletion_vectors, write_buffer_bytes, ..TableOptions::default() };
    let definition = TableSchema::new(0, Arc::clone(&schema), key, options).expect("schema");
    let schema = Arc::clone(&definition.schema);
    let table = Table::create(Arc::clone(store), Path::from(format!("public/{name}")), name, definition)
        .await
        .expect("create table");
    let per_run = batches.len().div_ceil(runs);
    for run in 0..runs {
        let mut txn = table.begin().await.expect("begin");
        let chunk: &[RecordBatch] = match layout {
            Layout::Consecutive => {
                &batches[(run * per_run).min(batches.len())..((run + 1) * per_run).min(batches.len())]
            }
            Layout::Overlapping | Layout::Updated => batches,
        };
        for batch in chunk {
            // Key columns are NOT NULL in the table schema; the data has no nulls.
            let batch = RecordBatch::try_new(Arc::clone(&schema), batch.columns().to_vec()).expect("batch");
            let part = match layout {
                Layout::Overlapping => {
                    let rows: UInt32Array =
                        (0..batch.num_rows() as u32).filter(|r| *r as usize % runs == run).collect();
                    take_record_batch(&batch, &rows).expect("take")
                }
                // The same values again: the answers do not change.
                Layout::Updated if run > 0 => {
                    let rows: UInt32Array =
                        (0..batch.num_rows() as u32).filter(|r| *r as usize % runs == run).collect();
                    take_record_batch(&batch, &rows).expect("take")
                }
                Layout::Consecutive | Layout::Updated => batch,
            };
            txn.write(&part, &vec![ValueKind::Upsert; part.num_rows()]).await.expect("write");
        }
        txn.commit().await.expect("commit");
    }
    table
}

#[derive(Clone, Copy)]
enum Layout {
    Consecutive,
    Overlapping,
    Updated,
}

/// Runs of each query per layout; the median counts.
const RUNS: usize = 7;

/// Each query's median time (ms) in each context; the contexts take turns.
async fn time_queries<const N: usize>(contexts: &[&SessionContext; N]) -> [Vec<f64>; N] {
    let mut out: [Vec<f64>; N] = std::array::from_fn(|_| Vec::new());
    for (_, sql) in QUERIES {
        let mut runs: [Vec<f64>; N] = std::array::from_fn(|_| Vec::new());
        for _ in 0..RUNS {
            for (ctx, runs) in contexts.iter().zip(&mut runs) {
                let start = Instant::now();
                let batches = ctx.sql(sql).await.expect("plan").collect().await.expect("run");
                std::hint::black_box(batches);
                runs.push(start.elapsed().as_secs_f64() * 1000.0);
            }
        }
        for (out, mut runs) in out.iter_mut().zip(runs) {
            runs.sort_by(f64::total_cmp);
            out.push(runs[RUNS / 2]);
        }
    }
    out
}

async fn answers(ctx: &SessionContext) -> Vec<String> {
    let mut out = Vec::new();
    for (_, sql) in QUERIES {
        let batches = ctx.sql(sql).await.expect("plan").collect().await.expect("run");
        out.push(arrow::util::pretty::pretty_format_batches(&batches).expect("format").to_string());
    }
    out
}

/// Registers the stored tables, freshly opened at their latest snapshots.
async fn register(ctx: &SessionContext, store: &Arc<dyn ObjectStore>) {
    for name in ["lineitem", "orders"] {
        let table = Table::open(Arc::clone(store), Path::from(format!("public/{name}")), name).await.expect("open");
        ctx.register_table(name, Arc::new(DynamicTable::new(table))).expect("register");
    }
}

fn warehouse(dir: &std::path::Path, name: &str) -> Arc<dyn ObjectStore> {
    std::fs::create_dir_all(dir.join(name)).expect("warehouse dir");
    Arc::new(LocalFileSystem::new_with_prefix(dir.join(name)).expect("store"))
}

fn context() -> SessionContext {
    SessionContext::new_with_config(SessionConfig::new().with_target_partitions(2))
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let scale: f64 = std::env::args().nth(1).and_then(|s| s.parse().ok()).unwrap_or(1.0);
    // SCAN_KEEP_DIR=DIR: the tables are written under DIR and kept (to look at their files).
    let kept = std::env::var_os("SCAN_KEEP_DIR").map(std::path::PathBuf::from);
    let temp = tempfile::tempdir().expect("temp dir");
    let dir = kept.as_deref().unwrap_or(temp.path());
    let started = Instant::now();
    let (lineitem, orders) = (lineitem(scale), orders(scale));
    let rows = |b: &[RecordBatch]| b.iter().map(RecordBatch::num_rows).sum::<usize>();
    println!(
        "generated SF{scale}: lineitem {} rows, orders {} rows in {:.1}s",
        rows(&lineitem),
        rows(&orders),
        started.elapsed().as_secs_f64()
    );

    // Baseline: plain Parquet files.
    let plain = context();
    for (name, batches) in [("lineitem", &lineitem), ("orders", &orders)] {
        let path = dir.join(format!("{name}.parquet"));
        write_parquet(&path, &batches[0].schema(), batches);
        plain
            .register_parquet(name, path.to_str().expect("utf-8 path"), ParquetReadOptions::default())
            .await
            .expect("register");
    }
    let expected = answers(&plain).await;

    // Dynamic Tables with five sorted runs of consecutive key ranges.
    let ordered_store = warehouse(dir, "ordered");
    let started = Instant::now();
    load(&ordered_store, "lineitem", &["l_orderkey", "l_linenumber"], &lineitem, 5, Layout::Consecutive).await;
    load(&ordered_store, "orders", &["o_orderkey"], &orders, 5, Layout::Consecutive).await;
    println!("loaded Dynamic Tables as 5 consecutive sorted runs in {:.1}s", started.elapsed().as_secs_f64());
    let ordered_ctx = context();
    register(&ordered_ctx, &ordered_store).await;
    assert_eq!(answers(&ordered_ctx).await, expected, "Dynamic Tables (5 consecutive runs) answer differently");

    // Dynamic Tables with five overlapping sorted runs of updates.
    let updated_store = warehouse(dir, "updated");
    let started = Instant::now();
    load(&updated_store, "lineitem", &["l_orderkey", "l_linenumber"], &lineitem, 5, Layout::Updated).await;
    load(&updated_store, "orders", &["o_orderkey"], &orders, 5, Layout::Updated).await;
    let updated_load_s = started.elapsed().as_secs_f64();
    println!("loaded Dynamic Tables as 5 overlapping runs of updates in {updated_load_s:.1}s");
    let updated_ctx = context();
    register(&updated_ctx, &updated_store).await;
    assert_eq!(answers(&updated_ctx).await, expected, "Dynamic Tables (5 runs of updates) answer differently");

    // The same without deletion vectors: what marking costs the writes, and
    // what merging on read costs the scans.
    let merged_store = warehouse(dir, "updated-merged");
    let started = Instant::now();
    let key = ["l_orderkey", "l_linenumber"];
    load_with(&merged_store, "lineitem", &key, &lineitem, 5, Layout::Updated, false).await;
    load_with(&merged_store, "orders", &["o_orderkey"], &orders, 5, Layout::Updated, false).await;
    let merged_load_s = started.elapsed().as_secs_f64();
    println!("loaded them again without deletion vectors in {merged_load_s:.1}s");
    let merged_ctx = context();
    register(&merged_ctx, &merged_store).await;
    assert_eq!(answers(&merged_ctx).await, expected, "Dynamic Tables (5 runs of updates, merged) answer differently");

    // Dynamic Tables with five overlapping sorted runs.
    let store = warehouse(dir, "overlapping");
    let started = Instant::now();
    load(&store, "lineitem", &["l_orderkey", "l_linenumber"], &lineitem, 5, Layout::Overlapping).await;
    load(&store, "orders", &["o_orderkey"], &orders, 5, Layout::Overlapping).await;
    println!("loaded Dynamic Tables as 5 overlapping sorted runs in {:.1}s", started.elapsed().as_secs_f64());
    let dynamic = context();
    register(&dynamic, &store).await;
    assert_eq!(answers(&dynamic).await, expected, "Dynamic Tables (5 runs) answer differently from plain Parquet");

    // The same five overlapping runs, loaded again and fully compacted.
    let compacted_store = warehouse(dir, "compacted");
    let line_table =
        load(&compacted_store, "lineitem", &["l_orderkey", "l_linenumber"], &lineitem, 5, Layout::Overlapping).await;
    let order_table = load(&compacted_store, "orders", &["o_orderkey"], &orders, 5, Layout::Overlapping).await;
    drop((lineitem, orders));
    let started = Instant::now();
    line_table.compact(true).await.expect("compact lineitem");
    order_table.compact(true).await.expect("compact orders");
    println!("full compaction in {:.1}s", started.elapsed().as_secs_f64());
    let compacted_ctx = context();
    register(&compacted_ctx, &compacted_store).await;
    assert_eq!(answers(&compacted_ctx).await, expected, "compacted Dynamic Tables answer differently");

    // Every layout takes its turn at each run of a query, so a slow period
    // of the machine weighs on all of them alike.
    let contexts = [&plain, &ordered_ctx, &updated_ctx, &merged_ctx, &dynamic, &compacted_ctx];
    let [baseline, five_ordered, five_updated, five_merged, five_runs, compacted] = time_queries(&contexts).await;

    println!();
    println!(
        "{:<28} {:>10} {:>16} {:>18} {:>18} {:>16}",
        "query", "parquet ms", "5 consecutive", "5 overlapping", "5 of updates", "compacted"
    );
    let (mut log_ordered, mut log5, mut logu, mut logc) = (0.0, 0.0, 0.0, 0.0);
    let (mut log5c, mut logu_c) = (0.0, 0.0);
    for (i, (name, _)) in QUERIES.iter().enumerate() {
        let (ro, r5, rc) = (five_ordered[i] / baseline[i], five_runs[i] / baseline[i], compacted[i] / baseline[i]);
        let ru = five_updated[i] / baseline[i];
        log_ordered += ro.ln();
        log5 += r5.ln();
        logu += ru.ln();
        logc += rc.ln();
        log5c += (five_runs[i] / compacted[i]).ln();
        logu_c += (five_updated[i] / compacted[i]).ln();
        println!(
            "{name:<28} {:>10.1} {:>8.1} ({ro:>4.2}x) {:>10.1} ({r5:>4.2}x) {:>10.1} ({ru:>4.2}x) {:>8.1} ({rc:>4.2}x)",
            baseline[i], five_ordered[i], five_runs[i], five_updated[i], compacted[i]
        );
    }
    let n = QUERIES.len() as f64;
    println!();
    println!(
        "geometric mean ratio vs plain Parquet: 5 consecutive runs {:.2}x, 5 overlapping runs {:.2}x (goal <= 1.5x), 5 runs of updates {:.2}x, compacted {:.2}x (goal <= 1.10x)",
        (log_ordered / n).exp(),
        (log5 / n).exp(),
        (logu / n).exp(),
        (logc / n).exp()
    );
    println!(
        "geometric mean ratio vs compacted, deletion vectors on: 5 overlapping runs {:.2}x, 5 runs of updates {:.2}x (goal <= 1.25x)",
        (log5c / n).exp(),
        (logu_c / n).exp()
    );
    let logm_c: f64 = five_merged.iter().zip(&compacted).map(|(m, c)| (m / c).ln()).sum();
    println!(
        "5 runs of updates without deletion vectors (merged on read): {:.2}x compacted; loading them with deletion vectors took {:.2}x the time without ({updated_load_s:.1}s vs {merged_load_s:.1}s)",
        (logm_c / n).exp(),
        updated_load_s / merged_load_s
    );
    println!("peak RSS {} MiB (includes the generated data held for the baseline)", common::peak_rss_mib());
}
