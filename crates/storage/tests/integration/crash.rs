//! Crash model: random writes, transactions, compactions and expiries of a
//! Dynamic Table on a simulated disk (`durable::sim::SimDisk`) behind the
//! same `DurableStore` the server uses, with power losses at random
//! moments — often in the middle of an operation, when the disk's fuse
//! blows after a random number of file writes and syncs. After every power
//! loss the table is reopened as a restarted server would, and
//! - every acknowledged write is there, and the table is exactly the model
//!   before or after the interrupted operation, never a part of it;
//! - every retained snapshot still reads (no snapshot names a missing or
//!   torn file);
//! - after orphan cleanup, every file in `data/`, `changelog/` and
//!   `manifest/` is referenced by a snapshot.
//!
//! A failure prints the proptest seed and the minimal failing sequence.

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;

use arrow::array::{Array, AsArray, Int64Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Int64Type, Schema};
use futures::TryStreamExt;
use object_store::ObjectStore;
use object_store::path::Path;
use proptest::prelude::*;
use streamhouse_storage::durable::log::{LogOptions, LogStore};
use streamhouse_storage::durable::sim::SimDisk;
use streamhouse_storage::durable::{Disk, DurableStore};
use streamhouse_storage::{Table, TableOptions, TableSchema, ValueKind};

type Model = BTreeMap<i64, Option<String>>;

#[derive(Debug, Clone)]
enum Op {
    /// Upserts (`Some`) and deletes (`None`) in one write.
    Write(Vec<(i64, Option<String>)>),
    /// Several writes in one transaction.
    Transaction(Vec<Vec<(i64, Option<String>)>>),
    Compact {
        full: bool,
    },
    /// Expiry as if an hour had passed.
    Expire,
}

fn rows() -> impl Strategy<Value = Vec<(i64, Option<String>)>> {
    proptest::collection::vec((0i64..30, proptest::option::weighted(0.8, "[a-z]{1,4}")), 1..15)
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => rows().prop_map(Op::Write),
        2 => proptest::collection::vec(rows(), 1..4).prop_map(Op::Transaction),
        2 => any::<bool>().prop_map(|full| Op::Compact { full }),
        1 => Just(Op::Expire),
    ]
}

/// Each step: an operation and, maybe, a power loss — after `n` more disk
/// mutations (so usually during the operation), or right after it.
fn step() -> impl Strategy<Value = (Op, Option<u64>)> {
    (op(), proptest::option::weighted(0.35, 0u64..40))
}

fn schema() -> TableSchema {
    let arrow =
        Arc::new(Schema::new(vec![Field::new("k", DataType::Int64, false), Field::new("v", DataType::Utf8, true)]));
    let options = TableOptions {
        compaction_trigger: 3,
        target_file_size: 10_000,
        snapshot_num_retained_min: 2,
        snapshot_num_retained_max: 4,
        row_group_rows: 4,
        // Transactions stage some writes as they come and buffer others (a write is ~120 bytes).
        write_buffer_bytes: 250,
        ..TableOptions::default()
    };
    TableSchema::new(0, arrow, &["k"], options).unwrap()
}

fn batch(schema: &TableSchema, rows: &[(i64, Option<String>)]) -> (RecordBatch, Vec<ValueKind>) {
    let keys = Int64Array::from_iter_values(rows.iter().map(|(k, _)| *k));
    let values: StringArray = rows.iter().map(|(_, v)| v.clone()).collect();
    let kinds = rows.iter().map(|(_, v)| if v.is_some() { ValueKind::Upsert } else { ValueKind::Delete }).collect();
    (RecordBatch::try_new(Arc::clone(&schema.schema), vec![Arc::new(keys), Arc::new(values)]).unwrap(), kinds)
}

fn apply(model: &mut Model, rows: &[(i64, Option<String>)]) {
    for (k, v) in rows {
        match v {
            Some(v) => model.insert(*k, Some(v.clone())),
            None => model.remove(k),
        };
    }
}

fn rows_of(batches: &[RecordBatch]) -> Model {
    let mut out = Model::new();
    for b in batches {
        let k = b.column(0).as_primitive::<Int64Type>();
        let v = b.column(1).as_string::<i32>();
        for i in 0..b.num_rows() {
            assert!(out.insert(k.value(i), v.is_valid(i).then(|| v.value(i).to_string())).is_none(), "duplicate key");
        }
    }
    out
}

fn store(disk: &Arc<SimDisk>) -> Arc<dyn ObjectStore> {
    Arc::new(durable(disk))
}

fn durable(disk: &Arc<SimDisk>) -> DurableStore {
    DurableStore::new(Arc::clone(disk) as Arc<dyn ObjectStore>, Arc::clone(disk) as Arc<dyn Disk>)
}

/// The server's local store over the simulated disk: with the write-ahead
/// log (limits small enough that Parquet files go both ways and flushes
/// happen every few operations), or syncing file by file.
async fn open_store(disk: &Arc<SimDisk>, logged: bool) -> (Arc<dyn ObjectStore>, Option<LogStore>) {
    if !logged {
        return (store(disk), None);
    }
    let options = LogOptions { direct_bytes: 1_500, flush_bytes: 6_000 };
    let log = LogStore::open(durable(disk), options).await.unwrap_or_else(|e| panic!("replay: {e}"));
    (Arc::new(log.clone()), Some(log))
}

/// Runs `op`; `Ok(true)` when it was acknowledged.
async fn run_op(table: &Table, op: &Op, model: &Model, clock: &mut i64) -> (bool, Model) {
    let mut after = model.clone();
    let acknowledged = match op {
        Op::Write(rows) => {
            apply(&mut after, rows);
            let (b, kinds) = batch(&table.schema(), rows);
            table.write(&b, &kinds).await.is_ok()
        }
        Op::Transaction(writes) => {
            let attempt = async {
                let mut txn = table.begin().await?;
                for rows in writes {
                    let (b, kinds) = batch(&table.schema(), rows);
                    txn.write(&b, &kinds).await?;
                }
                txn.commit().await
            };
            for rows in writes {
                apply(&mut after, rows);
            }
            attempt.await.is_ok()
        }
        Op::Compact { full } => table.compact(*full).await.is_ok(),
        Op::Expire => {
            *clock += 3_600_001;
            table.expire(*clock, None).await.is_ok()
        }
    };
    (acknowledged, after)
}

async fn check_files(table: &Table, store: &Arc<dyn ObjectStore>, dir: &Path) {
    let mut referenced = HashSet::new();
    for snapshot in table.snapshots().await.unwrap() {
        // Every retained snapshot reads: nothing it names is missing or torn.
        table.scan(Some(snapshot.id)).await.unwrap_or_else(|e| panic!("snapshot {}: {e}", snapshot.id));
        referenced.insert(snapshot.manifest.clone());
        referenced.extend(snapshot.manifest_deltas.iter().cloned());
        referenced.extend(snapshot.changelog_files.iter().map(|f| f.path.clone()));
        referenced.extend(table.files(Some(snapshot.id)).await.unwrap().into_iter().map(|f| f.path));
    }
    let prefix = format!("{dir}/");
    let names: Vec<Path> = store.list(Some(dir)).map_ok(|meta| meta.location).try_collect().await.unwrap();
    for name in names {
        let relative = name.as_ref().strip_prefix(&prefix).unwrap_or(name.as_ref()).to_string();
        let folder = relative.split('/').next().unwrap_or_default();
        if ["data", "changelog", "manifest"].contains(&folder) {
            assert!(referenced.contains(&relative), "{relative} survives orphan cleanup but no snapshot references it");
        }
    }
}

async fn run(seed: u64, steps: Vec<(Op, Option<u64>)>, logged: bool) {
    let disk = SimDisk::new(seed);
    let dir = Path::from("public/t");
    let (mut store, mut log) = open_store(&disk, logged).await;
    let mut table = Table::create(Arc::clone(&store), dir.clone(), "t", schema()).await.unwrap();
    let mut model = Model::new();
    let mut clock = 0i64;
    for (i, (op, power_loss)) in steps.iter().enumerate() {
        if let Some(mutations) = power_loss {
            disk.fail_after(*mutations);
        }
        let before = model.clone();
        let (acknowledged, after) = run_op(&table, op, &model, &mut clock).await;
        if power_loss.is_none() {
            assert!(acknowledged, "step {i}: {op:?} failed without a power loss");
            model = after;
            continue;
        }
        drop(table);
        if let Some(log) = log.take() {
            // The process dies with the power: no flush of the old store runs on after it.
            log.idle().await;
        }
        disk.power_loss().await;
        (store, log) = open_store(&disk, logged).await;
        table =
            Table::open(Arc::clone(&store), dir.clone(), "t").await.unwrap_or_else(|e| panic!("step {i}: reopen: {e}"));
        let got = rows_of(&table.scan(None).await.unwrap());
        if acknowledged {
            assert_eq!(got, after, "step {i}: {op:?} was acknowledged, then the power failed");
            model = after;
        } else if got == after {
            model = after;
        } else {
            assert_eq!(got, before, "step {i}: {op:?} failed half way: the table must be as before or after it");
        }
        table.remove_orphan_files(i64::MAX).await.unwrap();
        check_files(&table, &store, &dir).await;
    }
    assert_eq!(rows_of(&table.scan(None).await.unwrap()), model);
    table.remove_orphan_files(i64::MAX).await.unwrap();
    check_files(&table, &store, &dir).await;
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn acknowledged_writes_survive_power_loss(seed in any::<u64>(), steps in proptest::collection::vec(step(), 1..25)) {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(run(seed, steps, false));
    }

    /// The same through the write-ahead log the server uses on a local disk.
    #[test]
    fn acknowledged_writes_survive_power_loss_through_the_log(
        seed in any::<u64>(),
        steps in proptest::collection::vec(step(), 1..25),
    ) {
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        runtime.block_on(run(seed, steps, true));
    }
}

/// Without the syncs a power loss loses acknowledged writes: the same
/// workload over the simulated disk with no `DurableStore` in front loses
/// the table's files — the check above can fail.
#[tokio::test]
async fn unsynced_writes_are_lost() {
    let disk = SimDisk::new(7);
    let dir = Path::from("public/t");
    let table = Table::create(Arc::clone(&disk) as Arc<dyn ObjectStore>, dir.clone(), "t", schema()).await.unwrap();
    let (b, kinds) = batch(&table.schema(), &[(1, Some("a".into()))]);
    table.write(&b, &kinds).await.unwrap();
    drop(table);
    disk.power_loss().await;
    assert!(disk.names().is_empty(), "nothing was synced, so nothing survives: {:?}", disk.names());
}

/// An open transaction's staged files are not orphans, however old.
#[tokio::test]
async fn cleanup_keeps_what_an_open_transaction_staged() {
    let disk = SimDisk::new(1);
    let table = Table::create(store(&disk), Path::from("public/t"), "t", schema()).await.unwrap();
    let mut txn = table.begin().await.unwrap();
    let (b, kinds) = batch(&table.schema(), &[(1, Some("a".into())), (2, Some("b".into()))]);
    txn.write(&b, &kinds).await.unwrap();
    // The cleanup waits for nothing and deletes nothing the transaction needs.
    let removed = table.remove_orphan_files(i64::MAX).await.unwrap();
    assert!(removed.is_empty(), "{removed:?}");
    txn.commit().await.unwrap();
    assert_eq!(rows_of(&table.scan(None).await.unwrap()).len(), 2);
    // A dropped transaction's files are orphans.
    let mut txn = table.begin().await.unwrap();
    let (b, kinds) = batch(&table.schema(), &[(3, Some("c".into()))]);
    txn.write(&b, &kinds).await.unwrap();
    drop(txn);
    let removed = table.remove_orphan_files(i64::MAX).await.unwrap();
    assert!(removed.iter().all(|f| f.starts_with("data/")), "{removed:?}");
    assert_eq!(rows_of(&table.scan(None).await.unwrap()).len(), 2);
}
