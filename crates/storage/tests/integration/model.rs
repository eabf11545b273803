//! Model test: random sequences of upserts, deletes, no-op writes,
//! multi-write transactions, concurrent (group-committed) writes,
//! compactions (automatic and full), snapshot expiry and reopenings of a
//! Dynamic Table, checked against a `BTreeMap` model. Tiny row groups and
//! target file sizes make every file hold several row groups and compaction
//! write several files, so key-index pruning and split planning are
//! exercised. After each step:
//! - the latest snapshot scans to exactly the model, also when planned as
//!   several partitions and when pruned to a key range;
//! - at the end, every retained snapshot still scans to the model as it was
//!   then, expired ones are gone, and replaying the changelog of any range of
//!   retained snapshots onto the model state at its start gives the model
//!   state at its end, every `-U`/`-D` carrying the exact old row;
//! - no data file is left that no retained snapshot references.

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow::array::{Array, AsArray, Int64Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Int8Type, Int64Type, Schema};
use futures::TryStreamExt;
use object_store::ObjectStore;
use object_store::memory::InMemory;
use object_store::path::Path;
use proptest::prelude::*;
use streamhouse_storage::{
    AggregateFunction, CommitKind, Error, MergeEngine, RowKind, ScanPlan, ScanRequest, Table, TableOptions,
    TableSchema, ValueKind,
};

type Model = BTreeMap<i64, Option<String>>;

#[derive(Debug, Clone)]
enum Op {
    /// One write: (key, Some(value) upsert | None value upsert-null | delete).
    Write(Vec<(i64, Change)>),
    /// Several writes staged in one transaction, committed as one snapshot.
    Transaction(Vec<Vec<(i64, Change)>>),
    /// A transaction that a compaction overtakes: staged, then the table
    /// compacted (the files holding the rows it replaces may be rewritten),
    /// then committed.
    Overtaken(Vec<Vec<(i64, Change)>>, bool),
    /// Several writes issued concurrently (group commit).
    Concurrent(Vec<Vec<(i64, Change)>>),
    /// Compaction: full (all runs, tombstones dropped) or as the options pick.
    Compact {
        full: bool,
    },
    /// Expire snapshots as if an hour had passed.
    Expire,
    /// A scan pruned to keys in `lo..=hi`, planned as `partitions` partitions.
    Scan {
        lo: i64,
        hi: i64,
        partitions: usize,
    },
    Reopen,
    /// `ALTER TABLE … RENAME COLUMN` of the value column (older files keep the old name).
    RenameValue,
}

#[derive(Debug, Clone)]
enum Change {
    Upsert(Option<String>),
    /// Insert only if the key has no value (`ON CONFLICT DO NOTHING`).
    Insert(Option<String>),
    Delete,
}

fn change() -> impl Strategy<Value = Change> {
    prop_oneof![
        4 => proptest::option::weighted(0.8, "[a-z]{1,3}").prop_map(Change::Upsert),
        1 => proptest::option::weighted(0.8, "[a-z]{1,3}").prop_map(Change::Insert),
        1 => Just(Change::Delete),
    ]
}

fn rows() -> impl Strategy<Value = Vec<(i64, Change)>> {
    proptest::collection::vec((0i64..20, change()), 1..12)
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        8 => rows().prop_map(Op::Write),
        // A big write, so runs differ in size and compactions are partial too.
        1 => (0i64..20, 20i64..120).prop_map(|(from, count)| {
            Op::Write((from..from + count).map(|k| (k, Change::Upsert(Some("b".to_string())))).collect())
        }),
        1 => proptest::collection::vec(rows(), 1..4).prop_map(Op::Transaction),
        1 => (proptest::collection::vec(rows(), 1..3), any::<bool>()).prop_map(|(w, full)| Op::Overtaken(w, full)),
        1 => proptest::collection::vec(rows(), 2..5).prop_map(Op::Concurrent),
        // Concurrent writes of disjoint key bands (each may get a file of its own).
        1 => proptest::collection::vec(proptest::collection::vec((0i64..5, change()), 2..6), 2..5).prop_map(|writes| {
            let banded = writes
                .into_iter()
                .enumerate()
                .map(|(band, rows)| rows.into_iter().map(|(k, c)| (band as i64 * 5 + k, c)).collect())
                .collect();
            Op::Concurrent(banded)
        }),
        2 => any::<bool>().prop_map(|full| Op::Compact { full }),
        1 => Just(Op::Expire),
        1 => (0i64..20, 0i64..20, 1usize..4).prop_map(|(lo, hi, partitions)| Op::Scan { lo, hi, partitions }),
        1 => Just(Op::Reopen),
        1 => Just(Op::RenameValue),
    ]
}

fn schema(engine: MergeEngine, size_amplification: u64, no_changelog: bool) -> TableSchema {
    let arrow =
        Arc::new(Schema::new(vec![Field::new("k", DataType::Int64, false), Field::new("v", DataType::Utf8, true)]));
    let options = TableOptions {
        merge_engine: engine,
        compaction_trigger: 3,
        max_size_amplification_percent: size_amplification,
        target_file_size: 10_000,
        snapshot_num_retained_min: 3,
        snapshot_num_retained_max: 6,
        row_group_rows: 3,
        separate_write_rows: 2,
        // Transactions stage some writes as they come and buffer others (a write is ~120 bytes).
        write_buffer_bytes: 250,
        aggregate_functions: match engine {
            MergeEngine::Aggregation => [("v".to_owned(), AggregateFunction::Listagg)].into(),
            _ => Default::default(),
        },
        no_changelog,
        ..TableOptions::default()
    };
    TableSchema::new(0, arrow, &["k"], options).unwrap()
}

fn batch(table: &TableSchema, rows: &[(i64, Change)]) -> (RecordBatch, Vec<ValueKind>) {
    let keys = Int64Array::from_iter_values(rows.iter().map(|(k, _)| *k));
    let values: StringArray = rows
        .iter()
        .map(|(_, c)| match c {
            Change::Upsert(v) | Change::Insert(v) => v.clone(),
            Change::Delete => None,
        })
        .collect();
    let kinds = rows
        .iter()
        .map(|(_, c)| match c {
            Change::Upsert(_) => ValueKind::Upsert,
            Change::Insert(_) => ValueKind::Insert,
            Change::Delete => ValueKind::Delete,
        })
        .collect();
    (RecordBatch::try_new(Arc::clone(&table.schema), vec![Arc::new(keys), Arc::new(values)]).unwrap(), kinds)
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

/// Applies the model semantics of one write.
fn apply(model: &mut Model, engine: MergeEngine, rows: &[(i64, Change)]) {
    for (k, c) in rows {
        match (engine, c) {
            (_, Change::Delete) => {
                assert_ne!(engine, MergeEngine::FirstRow, "first-row models get no deletes");
                model.remove(k);
            }
            (_, Change::Insert(v)) | (MergeEngine::FirstRow, Change::Upsert(v)) => {
                model.entry(*k).or_insert_with(|| v.clone());
            }
            (MergeEngine::Deduplicate, Change::Upsert(v)) => {
                model.insert(*k, v.clone());
            }
            // Non-null columns replace; a NULL keeps the stored value.
            (MergeEngine::PartialUpdate, Change::Upsert(v)) => match model.get_mut(k) {
                Some(current) => {
                    if v.is_some() {
                        *current = v.clone();
                    }
                }
                None => {
                    model.insert(*k, v.clone());
                }
            },
            // `listagg`: values joined by ',', NULLs skipped.
            (MergeEngine::Aggregation, Change::Upsert(v)) => match (model.get_mut(k), v) {
                (Some(Some(current)), Some(v)) => *current = format!("{current},{v}"),
                (Some(current @ None), Some(v)) => *current = Some(v.clone()),
                (Some(_), None) => {}
                (None, v) => {
                    model.insert(*k, v.clone());
                }
            },
        }
    }
}

/// Replays changelog batches onto `state`, checking old rows are exact.
fn replay(state: &mut Model, batches: &[streamhouse_storage::ChangelogBatch]) {
    for cb in batches {
        let b = &cb.batch;
        let k = b.column(0).as_primitive::<Int64Type>();
        let v = b.column(1).as_string::<i32>();
        let kinds = b.column(3).as_primitive::<Int8Type>();
        for i in 0..b.num_rows() {
            let value = v.is_valid(i).then(|| v.value(i).to_string());
            match RowKind::from_code(kinds.value(i)).expect("known row kind") {
                RowKind::Insert => assert!(state.insert(k.value(i), value).is_none(), "+I for an existing key"),
                RowKind::UpdateBefore | RowKind::Delete => {
                    assert_eq!(state.remove(&k.value(i)), Some(value), "-U/-D must carry the old row")
                }
                RowKind::UpdateAfter => assert!(state.insert(k.value(i), value).is_none(), "+U without -U"),
            }
        }
    }
}

fn without_deletes(engine: MergeEngine, mut rows: Vec<(i64, Change)>) -> Vec<(i64, Change)> {
    if engine == MergeEngine::FirstRow {
        rows.retain(|(_, c)| !matches!(c, Change::Delete));
    }
    rows
}

/// Records that snapshot `id` holds `model`. Ids skipped since the last
/// record are compactions a write ran first (write stall): same content.
async fn record(table: &Table, history: &mut Vec<Model>, id: u64, model: &Model) {
    if (id as usize) < history.len() {
        // Already recorded (a concurrent write in the same group commit).
        assert_eq!(&history[id as usize], model, "snapshot {id}");
        return;
    }
    while history.len() < id as usize {
        let skipped = table.read_snapshot(history.len() as u64).await.unwrap();
        assert_eq!(skipped.kind, CommitKind::Compact, "snapshot {} was skipped but is not a compaction", skipped.id);
        let previous = history.last().cloned().unwrap_or_default();
        history.push(previous);
    }
    history.push(model.clone());
}

async fn run(engine: MergeEngine, size_amplification: u64, ops: Vec<Op>) {
    run_with(engine, size_amplification, ops, false).await;
}

/// Scans merge overlapping runs (no deletion vectors): the model all the same.
async fn run_merging(engine: MergeEngine, size_amplification: u64, ops: Vec<Op>) {
    let mut definition = schema(engine, size_amplification, false);
    definition.options.deletion_vectors = false;
    run_table(definition, engine, ops).await;
}

/// `no_changelog`: the table keeps no changelog (writes store each key's
/// last change without lookups); its snapshots and probes match the model
/// all the same, and its changelog is empty.
async fn run_with(engine: MergeEngine, size_amplification: u64, ops: Vec<Op>, no_changelog: bool) {
    run_table(schema(engine, size_amplification, no_changelog), engine, ops).await;
}

async fn run_table(definition: TableSchema, engine: MergeEngine, ops: Vec<Op>) {
    let no_changelog = definition.options.no_changelog;
    let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
    let dir = Path::from("public/t");
    let mut table = Table::create(Arc::clone(&store), dir.clone(), "t", definition).await.unwrap();
    let mut model = Model::new();
    // Model state after each snapshot id (index 0 = empty table).
    let mut history: Vec<Model> = vec![Model::new()];
    // Time moves an hour per expiry, so expiry is decided by count.
    let mut clock = 0i64;
    for op in ops {
        // An overtaken transaction is a transaction with a compaction before its commit.
        let (op, overtaken) = match op {
            Op::Overtaken(writes, full) => (Op::Transaction(writes), Some(full)),
            other => (other, None),
        };
        match op {
            Op::Write(rows) => {
                let rows = without_deletes(engine, rows);
                if rows.is_empty() {
                    continue;
                }
                let (b, kinds) = batch(&table.schema(), &rows);
                let before = model.clone();
                apply(&mut model, engine, &rows);
                match table.write(&b, &kinds).await.unwrap() {
                    Some(snapshot) => record(&table, &mut history, snapshot.id, &model).await,
                    None => assert_eq!(before, model, "no commit, but the model changed"),
                }
            }
            Op::Transaction(writes) => {
                let before = model.clone();
                let mut txn = table.begin().await.unwrap();
                for rows in writes {
                    let rows = without_deletes(engine, rows);
                    if rows.is_empty() {
                        continue;
                    }
                    let (b, kinds) = batch(&table.schema(), &rows);
                    apply(&mut model, engine, &rows);
                    txn.write(&b, &kinds).await.unwrap();
                }
                if let Some(full) = overtaken
                    && let Some(snapshot) = table.compact(full).await.unwrap()
                {
                    record(&table, &mut history, snapshot.id, &before).await;
                }
                match txn.commit().await.unwrap() {
                    Some(snapshot) => record(&table, &mut history, snapshot.id, &model).await,
                    None => assert_eq!(before, model, "no commit, but the model changed"),
                }
            }
            Op::Overtaken(..) => unreachable!("made a transaction above"),
            Op::Concurrent(writes) => {
                let writes: Vec<_> =
                    writes.into_iter().map(|w| without_deletes(engine, w)).filter(|w| !w.is_empty()).collect();
                let batches: Vec<_> = writes.iter().map(|w| batch(&table.schema(), w)).collect();
                // Commits are paused while every write queues, so they are committed as one group.
                let paused = table.pause_commits().await;
                let queued = futures::future::join_all(batches.iter().map(|(b, k)| table.write(b, k)));
                let release = async {
                    tokio::task::yield_now().await;
                    drop(paused);
                };
                let (results, ()) = futures::join!(queued, release);
                // Writes are applied in issue order; each reports the snapshot holding it.
                for (i, (rows, result)) in writes.iter().zip(&results).enumerate() {
                    apply(&mut model, engine, rows);
                    let id = result.as_ref().unwrap().as_ref().map(|s| s.id);
                    let next = results.get(i + 1).map(|r| r.as_ref().unwrap().as_ref().map(|s| s.id));
                    if let Some(id) = id
                        && next != Some(Some(id))
                    {
                        record(&table, &mut history, id, &model).await;
                    }
                }
            }
            Op::Compact { full } => {
                if let Some(snapshot) = table.compact(full).await.unwrap() {
                    record(&table, &mut history, snapshot.id, &model).await;
                }
                if full {
                    let runs = table.sorted_runs();
                    assert!(runs.len() <= 1, "a full compaction leaves one run, not {}", runs.len());
                    assert!(runs.iter().flat_map(|r| &r.files).all(|f| f.deletes == 0), "and no tombstones");
                }
            }
            Op::Expire => {
                clock += 3_600_001;
                table.expire(clock, None).await.unwrap();
                let ids: Vec<u64> = table.snapshots().await.unwrap().iter().map(|s| s.id).collect();
                assert!(ids.len() <= 6 && ids.len() >= 3.min(history.len() - 1), "retained {ids:?}");
                assert_eq!(ids.last().copied(), Some(history.len() as u64 - 1).filter(|&l| l > 0));
            }
            Op::Scan { lo, hi, partitions } => {
                let (lo, hi) = (lo.min(hi), lo.max(hi));
                let request = ScanRequest {
                    lower: Some(Arc::new(Int64Array::from(vec![lo]))),
                    upper: Some(Arc::new(Int64Array::from(vec![hi]))),
                    partitions,
                    batch_size: 2,
                    ..ScanRequest::default()
                };
                let plan = table.plan_scan(None, &request).await.unwrap();
                let mut got = Vec::new();
                for p in 0..plan.partitions.len() {
                    got.extend(table.read_partition(&plan, p).try_collect::<Vec<_>>().await.unwrap());
                }
                // The plan as a worker gets it: encoded, dealt to tasks, read
                // through a handle that reads no snapshot of its own.
                let wire = ScanPlan::decode(&plan.encode().unwrap()).unwrap();
                let remote = Table::for_plan(Arc::clone(&store), dir.clone(), "t", &wire);
                let mut dealt = Vec::new();
                for task in wire.deal(partitions % 3 + 1) {
                    assert_eq!(task.partitions.len(), plan.partitions.len(), "a task's plan keeps the partitions");
                    for p in 0..task.partitions.len() {
                        dealt.extend(remote.read_partition(&task, p).try_collect::<Vec<_>>().await.unwrap());
                    }
                }
                let count = |batches: &[RecordBatch]| batches.iter().map(RecordBatch::num_rows).sum::<usize>();
                assert_eq!(count(&dealt), count(&got), "the dealt plan reads each row once");
                let mut dealt = rows_of(&dealt);
                let mut got = rows_of(&got);
                got.retain(|k, _| (lo..=hi).contains(k));
                dealt.retain(|k, _| (lo..=hi).contains(k));
                let want: Model = model.range(lo..=hi).map(|(k, v)| (*k, v.clone())).collect();
                assert_eq!(got, want, "scan of keys {lo}..={hi} in {partitions} partitions");
                assert_eq!(dealt, want, "the encoded and dealt scan of keys {lo}..={hi}");
                // Point lookups of the same keys (missing ones have no row, repeats count once).
                let keys: Vec<i64> = (lo..=hi).chain([hi, lo]).collect();
                let found = table.get(&[Arc::new(Int64Array::from(keys))]).await.unwrap();
                assert_eq!(rows_of(&[found]), want, "lookup of keys {lo}..={hi}");
                // The same keys as a probe by key prefix (the whole key here).
                let prefixes: arrow::array::ArrayRef = Arc::new(Int64Array::from((lo..=hi).collect::<Vec<_>>()));
                let probed = table.get_prefixes(None, &[prefixes]).await.unwrap();
                assert_eq!(rows_of(&[probed]), want, "probe of keys {lo}..={hi}");
            }
            Op::Reopen => {
                drop(table);
                table = Table::open(Arc::clone(&store), dir.clone(), "t").await.unwrap();
            }
            Op::RenameValue => {
                let current = table.schema();
                let from = current.schema.field(1).name().clone();
                let to = format!("v{}", current.id + 1);
                match table.rename_column(&from, &to).await {
                    Ok(next) => assert_eq!(next.schema.field(1).name(), &to),
                    // The aggregation engine's options name the column.
                    Err(Error::Unsupported(_)) if engine == MergeEngine::Aggregation => {}
                    Err(e) => panic!("rename {from} to {to}: {e}"),
                }
            }
        }
        // Compactions a write ran before finding it had nothing to commit.
        let latest = table.latest_snapshot().map_or(0, |s| s.id);
        if latest as usize >= history.len() {
            record(&table, &mut history, latest, &model).await;
        }
        assert_eq!(rows_of(&table.scan(None).await.unwrap()), model, "latest snapshot");
    }
    let retained: Vec<u64> = table.snapshots().await.unwrap().iter().map(|s| s.id).collect();
    let latest = history.len() as u64 - 1;
    for id in 1..=latest {
        match table.scan(Some(id)).await {
            Ok(batches) => {
                assert!(retained.contains(&id), "snapshot {id} scans but was expired");
                assert_eq!(rows_of(&batches), history[id as usize], "snapshot {id}");
                let every: arrow::array::ArrayRef = Arc::new(Int64Array::from((0..200).collect::<Vec<_>>()));
                let probed = table.get_prefixes(Some(id), &[every]).await.unwrap();
                assert_eq!(rows_of(&[probed]), history[id as usize], "probe of snapshot {id}");
            }
            Err(e) => assert!(!retained.contains(&id), "retained snapshot {id}: {e}"),
        }
    }
    let earliest = retained.first().copied().unwrap_or(1);
    for from in earliest.saturating_sub(1)..=latest {
        for to in from..=latest {
            if no_changelog {
                let rows: usize =
                    table.changelog(from, Some(to)).await.unwrap().iter().map(|c| c.batch.num_rows()).sum();
                assert_eq!(rows, 0, "a table without changelog has changelog rows ({from}, {to}]");
                continue;
            }
            let mut state = history[from as usize].clone();
            replay(&mut state, &table.changelog(from, Some(to)).await.unwrap());
            assert_eq!(state, history[to as usize], "changelog ({from}, {to}]");
        }
    }
    // Every stored data file is referenced by a retained snapshot.
    let mut referenced = std::collections::HashSet::new();
    for id in &retained {
        for file in table.files(Some(*id)).await.unwrap() {
            referenced.insert(file.path);
        }
    }
    let data_dir = dir.clone().join("data");
    let stored: Vec<_> = store.list(Some(&data_dir)).try_collect().await.unwrap();
    for meta in stored {
        let name = format!("data/{}", meta.location.filename().unwrap());
        assert!(referenced.contains(&name), "{name} is stored but no retained snapshot references it");
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    // A high size-amplification threshold makes compactions partial (by size
    // ratio and run count) instead of mostly full.
    fn deduplicate_matches_the_model(
        amplification in prop_oneof![Just(200u64), Just(1_000_000)],
        ops in proptest::collection::vec(op(), 1..25),
    ) {
        let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
        runtime.block_on(run(MergeEngine::Deduplicate, amplification, ops));
    }

    #[test]
    fn deduplicate_without_deletion_vectors_matches_the_model(
        amplification in prop_oneof![Just(200u64), Just(1_000_000)],
        ops in proptest::collection::vec(op(), 1..25),
    ) {
        let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
        runtime.block_on(run_merging(MergeEngine::Deduplicate, amplification, ops));
    }

    #[test]
    fn a_table_without_changelog_matches_the_model(
        amplification in prop_oneof![Just(200u64), Just(1_000_000)],
        ops in proptest::collection::vec(op(), 1..25),
    ) {
        let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
        runtime.block_on(run_with(MergeEngine::Deduplicate, amplification, ops, true));
    }

    #[test]
    fn partial_update_matches_the_model(
        amplification in prop_oneof![Just(200u64), Just(1_000_000)],
        ops in proptest::collection::vec(op(), 1..25),
    ) {
        let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
        runtime.block_on(run(MergeEngine::PartialUpdate, amplification, ops));
    }

    #[test]
    fn aggregation_matches_the_model(
        amplification in prop_oneof![Just(200u64), Just(1_000_000)],
        ops in proptest::collection::vec(op(), 1..25),
    ) {
        let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
        runtime.block_on(run(MergeEngine::Aggregation, amplification, ops));
    }

    #[test]
    fn first_row_matches_the_model(
        amplification in prop_oneof![Just(200u64), Just(1_000_000)],
        ops in proptest::collection::vec(op(), 1..25),
    ) {
        let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
        runtime.block_on(run(MergeEngine::FirstRow, amplification, ops));
    }
}

/// A partial compaction (newer runs only) must keep tombstones: the key
/// they delete still lives in the older run.
#[tokio::test]
async fn partial_compaction_keeps_tombstones() {
    let up = |k: i64| (k, Change::Upsert(Some(format!("v{k}"))));
    let ops = vec![
        Op::Write((0..200).map(up).collect()),
        Op::Compact { full: true },
        Op::Write(vec![(3, Change::Delete)]),
        Op::Write(vec![up(11)]),
        Op::Write(vec![up(12)]),
        Op::Compact { full: false },
    ];
    run(MergeEngine::Deduplicate, 1_000_000, ops).await;
}

/// Writes of new keys in key order form one run whatever their number; the
/// compaction that gathers them concatenates files by copying column chunks,
/// and lookups through the concatenated files' key indexes stay exact.
#[tokio::test]
async fn key_ordered_writes_concatenate() {
    let up = |k: i64, v: &str| (k, Change::Upsert(Some(format!("{v}{k}"))));
    let mut ops: Vec<Op> = (0..40).map(|i| Op::Write((i * 4..i * 4 + 4).map(|k| up(k, "a")).collect())).collect();
    ops.push(Op::Compact { full: false });
    ops.push(Op::Write(vec![up(5, "b"), up(77, "b"), (150, Change::Delete)]));
    ops.push(Op::Compact { full: true });
    ops.push(Op::Write(vec![up(6, "c"), up(159, "c")]));
    ops.push(Op::Scan { lo: 0, hi: 200, partitions: 3 });
    run(MergeEngine::Deduplicate, 1_000_000, ops).await;
}

/// Expiry keeps every snapshot a registered consumer still needs, until the
/// consumer is abandoned for longer than `consumer.expiration-time`.
#[tokio::test]
async fn consumers_hold_back_expiry() {
    let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
    let mut definition = schema(MergeEngine::Deduplicate, 200, false);
    definition.options.consumer_expiration_ms = Some(10_000);
    let table = Table::create(Arc::clone(&store), Path::from("public/t"), "t", definition.clone()).await.unwrap();
    for k in 0..8 {
        let (rows, kinds) = batch(&definition, &[(k, Change::Upsert(Some("v".into())))]);
        table.write(&rows, &kinds).await.unwrap();
    }
    assert!(table.set_consumer("../evil", 1).await.is_err(), "consumer names are file names");
    table.set_consumer("reader", 2).await.unwrap();
    async fn ids(table: &Table) -> Vec<u64> {
        table.snapshots().await.unwrap().iter().map(|s| s.id).collect()
    }
    let later = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as i64;
    // `snapshot.num-retained.max` (6) alone would keep 3..=8; the consumer needs 2 on.
    table.expire(later + 5_000, None).await.unwrap();
    assert_eq!(ids(&table).await, (2..=8).collect::<Vec<_>>());
    assert_eq!(table.consumers().await.unwrap().len(), 1);
    // Two hours later the consumer is abandoned: dropped, and no longer holding snapshots.
    table.expire(later + 7_200_000, None).await.unwrap();
    assert_eq!(ids(&table).await, vec![6, 7, 8]);
    assert!(table.consumers().await.unwrap().is_empty());
}

/// Probes by key prefix ([`Table::get_prefixes`]) of a table keyed on
/// `(g, k)`: random upserts, deletes and compactions over tiny row groups;
/// every probe of a set of `g` values, at the latest and at every earlier
/// snapshot, gives exactly the model's rows with those `g`.
#[tokio::test]
async fn probes_by_key_prefix_match_the_model() {
    type Composite = BTreeMap<(i64, i64), String>;
    let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
    let arrow = Arc::new(Schema::new(vec![
        Field::new("g", DataType::Int64, false),
        Field::new("k", DataType::Int64, false),
        Field::new("v", DataType::Utf8, true),
    ]));
    let options = TableOptions {
        compaction_trigger: 3,
        target_file_size: 10_000,
        row_group_rows: 3,
        separate_write_rows: 2,
        // Transactions stage some writes as they come and buffer others (a write is ~120 bytes).
        write_buffer_bytes: 250,
        ..TableOptions::default()
    };
    let definition = TableSchema::new(0, arrow, &["g", "k"], options).unwrap();
    let table = Table::create(Arc::clone(&store), Path::from("public/p"), "p", definition.clone()).await.unwrap();
    async fn probe(table: &Table, snapshot: Option<u64>, gs: Vec<i64>) -> BTreeMap<(i64, i64), String> {
        let gs = Arc::new(Int64Array::from(gs)) as arrow::array::ArrayRef;
        let batch = table.get_prefixes(snapshot, &[gs]).await.unwrap();
        let (g, k, v) = (
            batch.column(0).as_primitive::<Int64Type>(),
            batch.column(1).as_primitive::<Int64Type>(),
            batch.column(2).as_string::<i32>(),
        );
        let mut out = BTreeMap::new();
        for i in 0..batch.num_rows() {
            assert!(out.insert((g.value(i), k.value(i)), v.value(i).to_string()).is_none(), "duplicate key");
        }
        out
    }
    let mut model = Composite::new();
    let mut history = vec![(0u64, Composite::new())];
    let mut seed = 0x5eed_u64;
    let mut next = move |n: u64| {
        seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
        (seed >> 33) % n
    };
    for step in 0..60 {
        if next(8) == 0 {
            if let Some(snapshot) = table.compact(next(2) == 0).await.unwrap() {
                history.push((snapshot.id, model.clone()));
            }
        } else {
            let count = 1 + next(10) as usize;
            let mut rows = Vec::new();
            for _ in 0..count {
                let (g, k) = (next(5) as i64, next(12) as i64);
                rows.push((g, k, (next(4) > 0).then(|| format!("v{step}"))));
            }
            let g = Int64Array::from_iter_values(rows.iter().map(|r| r.0));
            let k = Int64Array::from_iter_values(rows.iter().map(|r| r.1));
            let v: StringArray = rows.iter().map(|r| r.2.clone().or(Some(String::new()))).collect();
            let kinds: Vec<ValueKind> =
                rows.iter().map(|r| if r.2.is_some() { ValueKind::Upsert } else { ValueKind::Delete }).collect();
            for (g, k, v) in &rows {
                match v {
                    Some(v) => model.insert((*g, *k), v.clone()),
                    None => model.remove(&(*g, *k)),
                };
            }
            let batch =
                RecordBatch::try_new(Arc::clone(&definition.schema), vec![Arc::new(g), Arc::new(k), Arc::new(v)])
                    .unwrap();
            if let Some(snapshot) = table.write(&batch, &kinds).await.unwrap() {
                history.push((snapshot.id, model.clone()));
            }
        }
        let wanted: Vec<i64> = (0..1 + next(3)).map(|_| next(6) as i64).collect();
        let want: Composite =
            model.iter().filter(|((g, _), _)| wanted.contains(g)).map(|(k, v)| (*k, v.clone())).collect();
        assert_eq!(probe(&table, None, wanted.clone()).await, want, "probe of g in {wanted:?} at step {step}");
    }
    for (id, state) in history.iter().skip(1) {
        let all: Vec<i64> = (0..6).collect();
        assert_eq!(&probe(&table, Some(*id), all).await, state, "probe of every g at snapshot {id}");
        let want: Composite = state.iter().filter(|((g, _), _)| *g == 2).map(|(k, v)| (*k, v.clone())).collect();
        assert_eq!(probe(&table, Some(*id), vec![2, 2]).await, want, "probe of g = 2 at snapshot {id}");
    }
}
