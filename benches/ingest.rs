//! Ingest benchmark: rows/s into a Dynamic Table (5 narrow columns, primary
//! key, batches of 10k rows, each write acknowledged only once committed),
//! through the storage API (one writer, and four concurrent writers sharing
//! group commits) and through SQL `INSERT … SELECT`, against the baseline
//! of writing the same batches as plain Parquet files to the same store.
//!
//! ```text
//! cargo run --release -p streamhouse-benches --bin ingest -- [million rows, default 2]
//! ```
//!
//! Goal (issue 3): ≥ 1M rows/s through the API on 2 cores.

#![allow(clippy::print_stdout)]

#[path = "common.rs"]
mod common;

use std::sync::Arc;
use std::time::Instant;

use arrow::array::{Float64Array, Int32Array, Int64Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;
use streamhouse_engine::warehouse::DynamicCatalog;
use streamhouse_engine::{Engine, EngineConfig, SessionInfo};
use streamhouse_storage::{Table, TableOptions, TableSchema, ValueKind};

const BATCH: usize = 10_000;

fn schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("id", DataType::Int64, false),
        Field::new("a", DataType::Int64, true),
        Field::new("b", DataType::Float64, true),
        Field::new("c", DataType::Int32, true),
        Field::new("d", DataType::Utf8, true),
    ]))
}

fn batch(schema: &SchemaRef, start: i64) -> RecordBatch {
    let ids: Vec<i64> = (start..start + BATCH as i64).collect();
    RecordBatch::try_new(
        Arc::clone(schema),
        vec![
            Arc::new(Int64Array::from(ids.clone())),
            Arc::new(Int64Array::from_iter_values(ids.iter().map(|i| i * 7))),
            Arc::new(Float64Array::from_iter_values(ids.iter().map(|i| *i as f64 * 0.5))),
            Arc::new(Int32Array::from_iter_values(ids.iter().map(|i| (i % 1000) as i32))),
            Arc::new(StringArray::from_iter_values(ids.iter().map(|i| format!("name-{i}")))),
        ],
    )
    .expect("batch")
}

async fn new_table(store: &Arc<dyn ObjectStore>, name: &str) -> Arc<Table> {
    let definition = TableSchema::new(0, schema(), &["id"], TableOptions::default()).expect("schema");
    Arc::new(
        Table::create(Arc::clone(store), Path::from(format!("public/{name}")), name, definition).await.expect("create"),
    )
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let millions: f64 = std::env::args().nth(1).and_then(|s| s.parse().ok()).unwrap_or(2.0);
    let total = (millions * 1_000_000.0) as usize / BATCH * BATCH;
    let dir = tempfile::tempdir().expect("temp dir");
    let store: Arc<dyn ObjectStore> = Arc::new(LocalFileSystem::new_with_prefix(dir.path()).expect("store"));
    let schema = schema();
    let batches: Vec<RecordBatch> = (0..total / BATCH).map(|i| batch(&schema, (i * BATCH) as i64)).collect();
    let rate = |seconds: f64| total as f64 / seconds;

    // Baseline: each batch as its own plain Parquet file.
    let started = Instant::now();
    for (i, b) in batches.iter().enumerate() {
        let props = WriterProperties::builder()
            .set_compression(Compression::ZSTD(ZstdLevel::try_new(1).expect("level")))
            .build();
        let mut writer = ArrowWriter::try_new(Vec::new(), Arc::clone(&schema), Some(props)).expect("writer");
        writer.write(b).expect("write");
        let bytes = writer.into_inner().expect("close");
        store.put(&Path::from(format!("plain/{i}.parquet")), PutPayload::from(bytes)).await.expect("put");
    }
    let plain = rate(started.elapsed().as_secs_f64());

    // Storage API, one writer.
    let table = new_table(&store, "one").await;
    let started = Instant::now();
    for b in &batches {
        table.write(b, &[ValueKind::Upsert; BATCH]).await.expect("write");
        table.schedule_maintenance();
    }
    let one = rate(started.elapsed().as_secs_f64());
    let runs_after = table.sorted_runs().len();
    // Let background compaction catch up, then see where it got.
    let waited = Instant::now();
    while table.sorted_runs().len() > 5 && waited.elapsed().as_secs() < 30 {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        table.schedule_maintenance();
    }
    let runs_settled = (table.sorted_runs().len(), waited.elapsed().as_secs_f64());
    let compactions: Vec<_> = table
        .snapshots()
        .await
        .expect("snapshots")
        .into_iter()
        .filter(|s| s.kind == streamhouse_storage::CommitKind::Compact)
        .collect();
    // Rows in files a compaction wrote (moved files are not rewritten, so they do not count).
    let mut rewritten = 0;
    for compaction in &compactions {
        for file in table.files(Some(compaction.id)).await.expect("files") {
            if compaction.delta_files.contains(&file.path) && compaction.removed_files.iter().all(|r| r != &file.path) {
                rewritten += file.rows;
            }
        }
    }

    // Storage API, four concurrent writers (group commit).
    let table = new_table(&store, "four").await;
    let batches = Arc::new(batches);
    let started = Instant::now();
    let mut writers = Vec::new();
    for w in 0..4 {
        let (table, batches) = (Arc::clone(&table), Arc::clone(&batches));
        writers.push(tokio::spawn(async move {
            for b in batches.iter().skip(w).step_by(4) {
                table.write(b, &[ValueKind::Upsert; BATCH]).await.expect("write");
                table.schedule_maintenance();
            }
        }));
    }
    for w in writers {
        w.await.expect("writer");
    }
    let four = rate(started.elapsed().as_secs_f64());
    let commits = table.latest_snapshot().map_or(0, |s| s.id);

    // SQL INSERT … SELECT, 10k rows per statement.
    let catalog = DynamicCatalog::open(Arc::clone(&store)).await.expect("catalog");
    let engine =
        Engine::with_catalog(EngineConfig { target_partitions: 2, ..EngineConfig::default() }, Arc::new(catalog))
            .expect("engine");
    let mut session = engine.new_session(SessionInfo::default());
    let (_, error) =
        session.run("CREATE TABLE sql_ingest (id BIGINT PRIMARY KEY, a BIGINT, b DOUBLE, c INT, d TEXT)").await;
    assert!(error.is_none(), "{error:?}");
    let started = Instant::now();
    for i in 0..total / BATCH {
        let from = i * BATCH;
        let sql = format!(
            "INSERT INTO sql_ingest SELECT value, value * 7, value * 0.5, CAST(value % 1000 AS INT), 'name-' || value \
             FROM generate_series({from}, {}) AS g(value)",
            from + BATCH - 1
        );
        let (_, error) = session.run(&sql).await;
        assert!(error.is_none(), "{error:?}");
    }
    let sql = rate(started.elapsed().as_secs_f64());

    println!("{total} rows in batches of {BATCH}, 5 columns, primary key id");
    println!("{:<44} {:>14} {:>10}", "path", "rows/s", "vs plain");
    println!("{:<44} {:>14.0} {:>9.2}x", "plain Parquet files (baseline)", plain, 1.0);
    println!("{:<44} {:>14.0} {:>9.2}x", "storage API, 1 writer", one, one / plain);
    println!("{:<44} {:>14.0} {:>9.2}x", "storage API, 4 writers (group commit)", four, four / plain);
    println!("{:<44} {:>14.0} {:>9.2}x", "SQL INSERT ... SELECT, 10k rows/statement", sql, sql / plain);
    println!(
        "sorted runs right after the 1-writer load: {runs_after}, {} after {:.1}s more of background compaction; snapshots for the 4-writer load: {commits}",
        runs_settled.0, runs_settled.1
    );
    println!("1-writer load: {} compactions (of the retained snapshots) rewrote {rewritten} rows", compactions.len());
    println!("peak RSS {} MiB", common::peak_rss_mib());
}
