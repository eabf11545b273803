//! Optimistic transactions: staged without the commit lock, checked for
//! conflicting keys at commit.

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow::array::{AsArray, Int64Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Int64Type, Schema};
use object_store::ObjectStore;
use object_store::memory::InMemory;
use object_store::path::Path;
use streamhouse_storage::{Error, RowKind, Table, TableOptions, TableSchema, ValueKind};

async fn table() -> Table {
    table_with(TableOptions::default()).await
}

/// A new table `t (k BIGINT PRIMARY KEY, v TEXT)` with `options`.
async fn table_with(options: TableOptions) -> Table {
    let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
    let arrow =
        Arc::new(Schema::new(vec![Field::new("k", DataType::Int64, false), Field::new("v", DataType::Utf8, true)]));
    let schema = TableSchema::new(0, arrow, &["k"], options).unwrap();
    Table::create(store, Path::from("public/t"), "t", schema).await.unwrap()
}

fn rows(table: &Table, pairs: &[(i64, &str)]) -> RecordBatch {
    let keys = Int64Array::from_iter_values(pairs.iter().map(|p| p.0));
    let values: StringArray = pairs.iter().map(|p| Some(p.1)).collect();
    RecordBatch::try_new(Arc::clone(&table.schema().schema), vec![Arc::new(keys), Arc::new(values)]).unwrap()
}

async fn content(table: &Table) -> BTreeMap<i64, String> {
    let mut out = BTreeMap::new();
    for b in table.scan(None).await.unwrap() {
        let (k, v) = (b.column(0).as_primitive::<Int64Type>(), b.column(1).as_string::<i32>());
        for i in 0..b.num_rows() {
            out.insert(k.value(i), v.value(i).to_string());
        }
    }
    out
}

/// The table content rebuilt by replaying the whole changelog; checks each
/// -U/-D carries the value it replaces.
async fn replayed(table: &Table) -> BTreeMap<i64, String> {
    let mut state = BTreeMap::new();
    for change in table.changelog(0, None).await.unwrap() {
        let b = &change.batch;
        let (k, v) = (b.column(0).as_primitive::<Int64Type>(), b.column(1).as_string::<i32>());
        let kinds = b.column(b.num_columns() - 1).as_primitive::<arrow::datatypes::Int8Type>();
        for i in 0..b.num_rows() {
            let (k, v) = (k.value(i), v.value(i).to_string());
            match kinds.value(i) {
                x if x == RowKind::Insert as i8 || x == RowKind::UpdateAfter as i8 => {
                    assert!(state.insert(k, v).is_none(), "+I/+U of key {k} that has a value");
                }
                _ => assert_eq!(state.remove(&k), Some(v), "-U/-D of key {k} with a stale before-image"),
            }
        }
    }
    state
}

#[tokio::test]
async fn transactions_on_disjoint_keys_commit_side_by_side() {
    let table = table().await;
    table.write(&rows(&table, &[(1, "a"), (5, "e")]), &[ValueKind::Upsert; 2]).await.unwrap();
    let mut first = table.begin().await.unwrap();
    let mut second = table.begin().await.unwrap();
    first.write(&rows(&table, &[(1, "a1"), (2, "b1")]), &[ValueKind::Upsert; 2]).await.unwrap();
    second.write(&rows(&table, &[(3, "c2"), (5, "e2")]), &[ValueKind::Upsert; 2]).await.unwrap();
    // A plain write commits while both are open.
    table.write(&rows(&table, &[(4, "d")]), &[ValueKind::Upsert]).await.unwrap();
    second.commit().await.unwrap();
    first.commit().await.unwrap();
    let expected: BTreeMap<i64, String> =
        [(1, "a1"), (2, "b1"), (3, "c2"), (4, "d"), (5, "e2")].into_iter().map(|(k, v)| (k, v.to_string())).collect();
    assert_eq!(content(&table).await, expected);
    assert_eq!(replayed(&table).await, expected);
    // Row sequence numbers keep growing past both transactions.
    table.write(&rows(&table, &[(1, "last")]), &[ValueKind::Upsert]).await.unwrap();
    assert_eq!(content(&table).await[&1], "last");
}

#[tokio::test]
async fn conflicting_transaction_fails_and_leaves_nothing() {
    let table = table().await;
    table.write(&rows(&table, &[(1, "a")]), &[ValueKind::Upsert]).await.unwrap();
    let mut txn = table.begin().await.unwrap();
    txn.write(&rows(&table, &[(1, "from txn"), (2, "b")]), &[ValueKind::Upsert; 2]).await.unwrap();
    table.write(&rows(&table, &[(1, "concurrent")]), &[ValueKind::Upsert]).await.unwrap();
    let before = table.latest_snapshot().map(|s| s.id);
    assert!(matches!(txn.commit().await, Err(Error::Conflict { .. })));
    assert_eq!(table.latest_snapshot().map(|s| s.id), before);
    let expected: BTreeMap<i64, String> = [(1, "concurrent".to_string())].into();
    assert_eq!(content(&table).await, expected);
    assert_eq!(replayed(&table).await, expected);
}

#[tokio::test]
async fn blind_transaction_is_replayed_over_a_conflict() {
    let table = table().await;
    table.write(&rows(&table, &[(1, "a"), (2, "b")]), &[ValueKind::Upsert; 2]).await.unwrap();
    let mut txn = table.begin().await.unwrap().blind();
    txn.write(&rows(&table, &[(1, "from txn"), (3, "c")]), &[ValueKind::Upsert; 2]).await.unwrap();
    txn.write(&rows(&table, &[(2, "")]), &[ValueKind::Delete]).await.unwrap();
    table.write(&rows(&table, &[(1, "concurrent"), (2, "b2")]), &[ValueKind::Upsert; 2]).await.unwrap();
    txn.commit().await.unwrap();
    // The transaction committed last, so its writes win; its changelog
    // replaces the concurrent values, not the ones it began on.
    let expected: BTreeMap<i64, String> = [(1, "from txn".to_string()), (3, "c".to_string())].into();
    assert_eq!(content(&table).await, expected);
    assert_eq!(replayed(&table).await, expected);
}

#[tokio::test]
async fn big_blind_transaction_is_replayed_from_its_files() {
    let table = table().await;
    table.write(&rows(&table, &[(1, "a"), (2, "b")]), &[ValueKind::Upsert; 2]).await.unwrap();
    let mut txn = table.begin().await.unwrap().blind();
    // More rows than are kept for a replay: the staged files are replayed instead.
    let many: Vec<(i64, String)> = (10..70_010).map(|k| (k, format!("n{k}"))).collect();
    let refs: Vec<(i64, &str)> = many.iter().map(|(k, v)| (*k, v.as_str())).collect();
    txn.write(&rows(&table, &refs), &vec![ValueKind::Upsert; refs.len()]).await.unwrap();
    txn.write(&rows(&table, &[(1, "from txn"), (10, "again")]), &[ValueKind::Upsert; 2]).await.unwrap();
    txn.write(&rows(&table, &[(2, "")]), &[ValueKind::Delete]).await.unwrap();
    table.write(&rows(&table, &[(1, "concurrent"), (2, "b2"), (10, "c10")]), &[ValueKind::Upsert; 3]).await.unwrap();
    txn.commit().await.unwrap();
    let mut expected: BTreeMap<i64, String> = many.into_iter().collect();
    expected.insert(1, "from txn".into());
    expected.insert(10, "again".into());
    assert_eq!(content(&table).await, expected);
    assert_eq!(replayed(&table).await, expected);
}

/// Readers of one table's changelog (the continuous views over it) share one
/// read of each recent snapshot's changelog files.
#[tokio::test]
async fn repeated_changelog_reads_are_served_from_memory() {
    let table = table().await;
    for i in 0..3i64 {
        table.write(&rows(&table, &[(i, "a"), (i + 10, "b")]), &[ValueKind::Upsert; 2]).await.unwrap();
    }
    table.write(&rows(&table, &[(0, "changed")]), &[ValueKind::Upsert]).await.unwrap();
    let first = table.changelog(0, None).await.unwrap();
    let reads = table.changelog_file_reads();
    assert!(reads >= 4, "each commit has a changelog file: {reads}");
    let second = table.changelog(0, None).await.unwrap();
    let tail = table.changelog(2, None).await.unwrap();
    assert_eq!(table.changelog_file_reads(), reads, "a repeated read went to storage");
    let rows_of = |changes: &[streamhouse_storage::ChangelogBatch]| -> Vec<(u64, usize)> {
        changes.iter().map(|c| (c.snapshot, c.batch.num_rows())).collect()
    };
    assert_eq!(rows_of(&first), rows_of(&second));
    assert_eq!(rows_of(&tail), rows_of(&first).into_iter().filter(|(s, _)| *s > 2).collect::<Vec<_>>());
    assert_eq!(replayed(&table).await, content(&table).await);
}

/// With `changelog_columns`, an update of only the later columns is stored
/// but makes no change in the changelog.
#[tokio::test]
async fn updates_of_columns_past_changelog_columns_write_no_changelog() {
    let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
    let arrow = Arc::new(Schema::new(vec![
        Field::new("k", DataType::Int64, false),
        Field::new("v", DataType::Utf8, true),
        Field::new("state", DataType::Int64, false),
    ]));
    let options = TableOptions { changelog_columns: Some(2), ..TableOptions::default() };
    let schema = TableSchema::new(0, arrow, &["k"], options).unwrap();
    let table = Table::create(store, Path::from("public/h"), "h", schema).await.unwrap();
    let write = |k: i64, v: &str, state: i64| {
        RecordBatch::try_new(
            Arc::clone(&table.schema().schema),
            vec![
                Arc::new(Int64Array::from(vec![k])),
                Arc::new(StringArray::from(vec![v])),
                Arc::new(Int64Array::from(vec![state])),
            ],
        )
        .unwrap()
    };
    table.write(&write(1, "a", 1), &[ValueKind::Upsert]).await.unwrap();
    let state_only = table.write(&write(1, "a", 2), &[ValueKind::Upsert]).await.unwrap();
    assert!(state_only.is_some(), "the row is still written");
    table.write(&write(1, "b", 3), &[ValueKind::Upsert]).await.unwrap();
    let kinds: Vec<Vec<RowKind>> = table
        .changelog(0, None)
        .await
        .unwrap()
        .iter()
        .map(|c| {
            let column = c.batch.column(c.batch.num_columns() - 1).as_primitive::<arrow::datatypes::Int8Type>();
            column.values().iter().map(|&k| RowKind::from_code(k).unwrap()).collect()
        })
        .collect();
    assert_eq!(
        kinds,
        vec![vec![RowKind::Insert], vec![RowKind::UpdateBefore, RowKind::UpdateAfter]],
        "the state-only update is stored without changelog rows"
    );
    let stored = table.get(&[Arc::new(Int64Array::from(vec![1, 2]))]).await.unwrap();
    assert_eq!(stored.num_rows(), 1);
    assert_eq!(stored.column(2).as_primitive::<Int64Type>().value(0), 3);
}

/// A changelog read in pieces of at most N rows gives the same rows, in the
/// same order, as one read of the whole range; a big commit is cut into
/// pieces; the row counts known before reading add up to what is read.
#[tokio::test]
async fn changelogs_stream_in_pieces_of_bounded_rows() {
    let table = table().await;
    let big: Vec<(i64, String)> = (0..30_000).map(|k| (k, format!("v{k}"))).collect();
    let big: Vec<(i64, &str)> = big.iter().map(|(k, v)| (*k, v.as_str())).collect();
    table.write(&rows(&table, &big), &vec![ValueKind::Upsert; big.len()]).await.unwrap();
    for k in 0..20 {
        table.write(&rows(&table, &[(k, "again"), (100_000 + k, "new")]), &[ValueKind::Upsert; 2]).await.unwrap();
    }
    table.write(&rows(&table, &[(5, "")]), &[ValueKind::Delete]).await.unwrap();
    table.compact(true).await.unwrap();
    let latest = table.latest_snapshot().unwrap().id;
    let flat = |changes: &[streamhouse_storage::ChangelogBatch]| -> Vec<(u64, i64, i8)> {
        changes
            .iter()
            .flat_map(|c| {
                let keys = c.batch.column(0).as_primitive::<Int64Type>().clone();
                let kinds =
                    c.batch.column(c.batch.num_columns() - 1).as_primitive::<arrow::datatypes::Int8Type>().clone();
                (0..c.batch.num_rows()).map(move |i| (c.snapshot, keys.value(i), kinds.value(i)))
            })
            .collect()
    };
    for after in [0, 1, 10] {
        let whole = flat(&table.changelog(after, None).await.unwrap());
        let mut known = 0;
        for id in after + 1..=latest {
            known += table.changelog_rows(id).await.unwrap();
        }
        assert_eq!(known as usize, whole.len(), "row counts known before reading, after {after}");
        for piece_rows in [1, 7, 4096, 100_000] {
            let mut reader = table.changelog_reader(after, None);
            let mut pieces = Vec::new();
            loop {
                let piece = reader.next_rows(piece_rows).await.unwrap();
                if piece.is_empty() {
                    break;
                }
                let n: usize = piece.iter().map(|c| c.batch.num_rows()).sum();
                assert!(n <= piece_rows && n > 0, "a piece of {n} rows for a bound of {piece_rows}");
                pieces.extend(piece);
            }
            assert_eq!(flat(&pieces), whole, "pieces of {piece_rows} rows after {after}");
        }
    }
}

/// Deletion vectors under a race: compactions run while writes replace and
/// delete rows the compactions are rewriting, so commits land between a
/// compaction's start and its commit (its outputs must then mark the rows
/// those writes replaced) and transactions begin before a compaction and
/// commit after it (the rows they replace have moved). Every scan — which
/// reads files without merging them, skipping marked rows — holds each live
/// key once, with its last value, as point reads (which merge) do.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deletion_vectors_stay_exact_while_compactions_race_writes() {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn ObjectStore> =
        Arc::new(object_store::local::LocalFileSystem::new_with_prefix(dir.path()).unwrap());
    let arrow =
        Arc::new(Schema::new(vec![Field::new("k", DataType::Int64, false), Field::new("v", DataType::Utf8, true)]));
    let options =
        TableOptions { compaction_trigger: 2, row_group_rows: 16, target_file_size: 4_000, ..Default::default() };
    assert!(options.deletion_vectors, "on by default");
    let schema = TableSchema::new(0, arrow, &["k"], options).unwrap();
    let table = Table::create(store, Path::from("public/t"), "t", schema).await.unwrap();
    let done = std::sync::atomic::AtomicBool::new(false);
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = move |n: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % n
    };
    let plans: Vec<Vec<(i64, Option<String>)>> = (0..80)
        .map(|i| {
            (0..24)
                .map(|_| {
                    let k = next(300) as i64;
                    (k, (next(6) != 0).then(|| format!("w{i}-{k}")))
                })
                .collect()
        })
        .collect();
    let writer = async {
        let mut model: BTreeMap<i64, String> = BTreeMap::new();
        for (i, plan) in plans.iter().enumerate() {
            let keys = Int64Array::from_iter_values(plan.iter().map(|p| p.0));
            let values: StringArray = plan.iter().map(|p| Some(p.1.clone().unwrap_or_default())).collect();
            let kinds: Vec<ValueKind> =
                plan.iter().map(|p| if p.1.is_some() { ValueKind::Upsert } else { ValueKind::Delete }).collect();
            let batch =
                RecordBatch::try_new(Arc::clone(&table.schema().schema), vec![Arc::new(keys), Arc::new(values)])
                    .unwrap();
            if i % 4 == 0 {
                // A transaction, overtaken by whatever commits meanwhile.
                let mut txn = table.begin().await.unwrap();
                txn.write(&batch, &kinds).await.unwrap();
                tokio::task::yield_now().await;
                txn.commit().await.unwrap();
            } else {
                table.write(&batch, &kinds).await.unwrap();
            }
            for (k, v) in plan {
                match v {
                    Some(v) => model.insert(*k, v.clone()),
                    None => model.remove(k),
                };
            }
        }
        done.store(true, std::sync::atomic::Ordering::SeqCst);
        model
    };
    let compactor = async {
        let mut round = 0;
        while !done.load(std::sync::atomic::Ordering::SeqCst) {
            table.compact(round % 5 == 4).await.unwrap();
            round += 1;
            tokio::task::yield_now().await;
        }
    };
    let (model, ()) = tokio::join!(writer, compactor);

    let mut scanned: Vec<(i64, String)> = Vec::new();
    for b in table.scan(None).await.unwrap() {
        let (k, v) = (b.column(0).as_primitive::<Int64Type>(), b.column(1).as_string::<i32>());
        scanned.extend((0..b.num_rows()).map(|i| (k.value(i), v.value(i).to_string())));
    }
    scanned.sort();
    let expected: Vec<(i64, String)> = model.iter().map(|(k, v)| (*k, v.clone())).collect();
    assert_eq!(scanned, expected, "the scan (files read one by one, marked rows skipped)");
    let keys: Vec<i64> = (0..300).collect();
    let got = table.get(&[Arc::new(Int64Array::from(keys))]).await.unwrap();
    assert_eq!(got.num_rows(), model.len(), "point reads (merging by sequence number)");
    let files = table.files(None).await.unwrap();
    assert!(files.iter().any(|f| f.deleted.is_some()), "some rows were marked");
}

/// A write none of whose keys is stored keeps, per key, the row its merge
/// engine picks among the write's rows — whether or not the rows arrive in
/// key order — and logs exactly one +I per key.
#[tokio::test]
async fn writes_of_new_keys_keep_the_row_their_engine_picks() {
    let table = table().await;
    // Out of key order, a key twice: the last upsert wins.
    table.write(&rows(&table, &[(3, "c"), (1, "a"), (3, "c2"), (2, "b")]), &[ValueKind::Upsert; 4]).await.unwrap();
    // In key order (the rows are taken as they are).
    table.write(&rows(&table, &[(10, "j"), (11, "k")]), &[ValueKind::Upsert; 2]).await.unwrap();
    // Insert-if-absent twice for one new key: the first stays.
    table.write(&rows(&table, &[(5, "x"), (5, "y")]), &[ValueKind::Insert; 2]).await.unwrap();
    // A new key written and deleted in one write is not there.
    table.write(&rows(&table, &[(6, "z"), (6, "z")]), &[ValueKind::Upsert, ValueKind::Delete]).await.unwrap();
    let expected: BTreeMap<i64, String> = [(1, "a"), (2, "b"), (3, "c2"), (5, "x"), (10, "j"), (11, "k")]
        .into_iter()
        .map(|(k, v)| (k, v.to_string()))
        .collect();
    assert_eq!(content(&table).await, expected);
    assert_eq!(replayed(&table).await, expected);
    let logged: usize = table.changelog(0, None).await.unwrap().iter().map(|c| c.batch.num_rows()).sum();
    assert_eq!(logged, expected.len(), "one +I per key");

    // first-row: the first of a new key's rows stays.
    let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
    let options = TableOptions { merge_engine: streamhouse_storage::MergeEngine::FirstRow, ..TableOptions::default() };
    let schema = TableSchema::new(0, Arc::clone(&table.schema().schema), &["k"], options).unwrap();
    let first = Table::create(store, Path::from("public/f"), "f", schema).await.unwrap();
    first.write(&rows(&first, &[(2, "b"), (1, "a"), (2, "b2")]), &[ValueKind::Upsert; 3]).await.unwrap();
    let expected: BTreeMap<i64, String> = [(1, "a"), (2, "b")].into_iter().map(|(k, v)| (k, v.to_string())).collect();
    assert_eq!(content(&first).await, expected);
}

/// Per file of `table`, in manifest order: its level, and the compression
/// and whether there is a dictionary of its first row group's `v` column.
async fn encodings(table: &Table) -> Vec<(u32, parquet::basic::Compression, bool)> {
    use object_store::ObjectStoreExt;
    use parquet::basic::Encoding;
    use parquet::file::reader::{FileReader, SerializedFileReader};
    let mut out = Vec::new();
    for file in table.files(None).await.unwrap() {
        let location = Path::from(format!("{}/{}", table.dir(), file.path));
        let bytes = table.store().get(&location).await.unwrap().bytes().await.unwrap();
        let reader = SerializedFileReader::new(bytes).unwrap();
        let column = reader.metadata().row_group(0).column(1).clone();
        out.push((file.level, column.compression(), column.encodings().any(|e| e == Encoding::RLE_DICTIONARY)));
    }
    out
}

fn modes(keys: std::ops::Range<i64>) -> Vec<(i64, String)> {
    keys.map(|k| (k, format!("mode{}", k % 7))).collect()
}

async fn write_modes(table: &Table, pairs: &[(i64, String)]) {
    let pairs: Vec<(i64, &str)> = pairs.iter().map(|(k, v)| (*k, v.as_str())).collect();
    table.write(&rows(table, &pairs), &vec![ValueKind::Upsert; pairs.len()]).await.unwrap();
}

/// Rows loaded in key order reach the last level by full compaction without
/// a merge; their level-0 files (no dictionaries) are written anew there,
/// encoded as the last level is (string columns dictionary-encoded), not moved.
#[tokio::test]
async fn files_reaching_the_last_level_unmerged_are_encoded_for_it() {
    use parquet::basic::Compression;
    let table = table().await;
    for part in 0..3 {
        write_modes(&table, &modes(part * 1000..(part + 1) * 1000)).await;
    }
    let before = content(&table).await;
    assert_eq!(encodings(&table).await, vec![(0, Compression::LZ4_RAW, false); 3], "level-0 files as written");
    table.compact(true).await.unwrap();
    let compacted = encodings(&table).await;
    assert!(!compacted.is_empty());
    for (level, compression, dictionary) in compacted {
        assert_eq!(level, streamhouse_storage::levels::MAX_LEVEL);
        assert_eq!(compression, Compression::LZ4_RAW);
        assert!(dictionary, "strings dictionary-encoded");
    }
    assert_eq!(content(&table).await, before);
}

/// A level-0 file of a row group or more (a big write's) is encoded as a
/// compacted file is, strings dictionary-encoded; a smaller one (a commit
/// of a few rows, a view's step) is not.
#[tokio::test]
async fn big_writes_make_level_0_files_with_dictionaries() {
    use parquet::basic::Compression;
    let table = table_with(TableOptions { row_group_rows: 500, ..TableOptions::default() }).await;
    write_modes(&table, &modes(0..499)).await;
    write_modes(&table, &modes(1000..1500)).await;
    write_modes(&table, &modes(2000..3200)).await;
    let expected =
        vec![(0, Compression::LZ4_RAW, false), (0, Compression::LZ4_RAW, true), (0, Compression::LZ4_RAW, true)];
    assert_eq!(encodings(&table).await, expected);
    let mut model = BTreeMap::new();
    model.extend(modes(0..499).into_iter().chain(modes(1000..1500)).chain(modes(2000..3200)));
    assert_eq!(content(&table).await, model);
}

/// A transaction's writes are buffered and staged together: many small
/// writes make few files (scans open fewer), and what they commit is what
/// staging them one by one commits, later writes replacing earlier ones.
#[tokio::test]
async fn a_transaction_of_many_small_writes_stages_few_files() {
    for (buffer, expected) in [(TableOptions::default().write_buffer_bytes, 1..=1), (16 << 10, 2..=60)] {
        let table = table_with(TableOptions { write_buffer_bytes: buffer, ..TableOptions::default() }).await;
        table.write(&rows(&table, &[(0, "before"), (5, "before")]), &[ValueKind::Upsert; 2]).await.unwrap();
        let mut model: BTreeMap<i64, String> = [(0, "before".to_string()), (5, "before".to_string())].into();
        let mut txn = table.begin().await.unwrap();
        for write in 0..200i64 {
            // Each write overlaps the previous one's keys and deletes one key.
            let values: Vec<(i64, String)> = (write * 50..write * 50 + 100).map(|k| (k, format!("w{write}"))).collect();
            let refs: Vec<(i64, &str)> = values.iter().map(|(k, v)| (*k, v.as_str())).collect();
            txn.write(&rows(&table, &refs), &vec![ValueKind::Upsert; refs.len()]).await.unwrap();
            model.extend(values);
            let gone = write * 50 + 5;
            txn.write(&rows(&table, &[(gone, "")]), &[ValueKind::Delete]).await.unwrap();
            model.remove(&gone);
        }
        txn.commit().await.unwrap();
        assert_eq!(content(&table).await, model, "buffer {buffer}");
        assert_eq!(replayed(&table).await, model, "buffer {buffer}");
        // The write before the transaction, and the transaction's files.
        let files = table.files(None).await.unwrap().len() - 1;
        assert!(expected.contains(&files), "buffer {buffer}: {files} files for 400 writes");
    }
}

/// Without deletion vectors, overlapping runs are merged on read, cut into
/// key ranges for the partitions. A transaction's files (one per filled
/// write buffer) are one sorted run, so a newer run overlapping them cuts
/// into halves of about equal rows, not a split that holds nearly all.
#[tokio::test]
async fn merged_runs_of_several_files_split_evenly_across_partitions() {
    use futures::TryStreamExt;
    let table = table_with(TableOptions {
        deletion_vectors: false,
        write_buffer_bytes: 64 << 10,
        row_group_rows: 500,
        compaction_trigger: 100,
        ..TableOptions::default()
    })
    .await;
    let mut model = BTreeMap::new();
    let mut txn = table.begin().await.unwrap();
    for write in 0..20i64 {
        let values: Vec<(i64, String)> =
            (write * 1000..(write + 1) * 1000).map(|k| (k, format!("first {k}"))).collect();
        let refs: Vec<(i64, &str)> = values.iter().map(|(k, v)| (*k, v.as_str())).collect();
        txn.write(&rows(&table, &refs), &vec![ValueKind::Upsert; refs.len()]).await.unwrap();
        model.extend(values);
    }
    txn.commit().await.unwrap();
    let files = table.files(None).await.unwrap().len();
    assert!(files >= 4, "the transaction should make several files: {files}");
    // A newer run over the whole key range.
    let values: Vec<(i64, String)> = (0..20_000).step_by(10).map(|k| (k, format!("second {k}"))).collect();
    let refs: Vec<(i64, &str)> = values.iter().map(|(k, v)| (*k, v.as_str())).collect();
    table.write(&rows(&table, &refs), &vec![ValueKind::Upsert; refs.len()]).await.unwrap();
    model.extend(values);

    let request = streamhouse_storage::ScanRequest { partitions: 2, ..Default::default() };
    let plan = table.plan_scan(None, &request).await.unwrap();
    let mut read = BTreeMap::new();
    let mut per_partition = Vec::new();
    for partition in 0..plan.partitions.len() {
        let batches: Vec<RecordBatch> = table.read_partition(&plan, partition).try_collect().await.unwrap();
        per_partition.push(batches.iter().map(RecordBatch::num_rows).sum::<usize>());
        for b in &batches {
            let (k, v) = (b.column(0).as_primitive::<Int64Type>(), b.column(1).as_string::<i32>());
            for i in 0..b.num_rows() {
                assert!(read.insert(k.value(i), v.value(i).to_string()).is_none(), "key {} read twice", k.value(i));
            }
        }
    }
    assert_eq!(read, model);
    assert!(per_partition.iter().all(|&rows| rows >= 6_000), "uneven partitions: {per_partition:?}");
}
