//! ALTER TABLE ADD COLUMN: files written before read the new column as NULL,
//! through scans, lookups, the changelog, compaction and a reopen.

use std::sync::Arc;

use arrow::array::{Array, AsArray, Int64Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Int64Type, Schema};
use object_store::ObjectStore;
use object_store::memory::InMemory;
use object_store::path::Path;
use streamhouse_storage::{Error, Table, TableOptions, TableSchema, ValueKind};

/// `(k, v, n)` rows of every batch, sorted by key; `n` is `None` when the batches have no third column.
fn rows(batches: &[RecordBatch]) -> Vec<(i64, String, Option<i64>)> {
    let mut out = Vec::new();
    for b in batches {
        let k = b.column(0).as_primitive::<Int64Type>();
        let v = b.column(1).as_string::<i32>();
        for i in 0..b.num_rows() {
            let n = (b.num_columns() > 2)
                .then(|| b.column(2).as_primitive::<Int64Type>())
                .and_then(|n| n.is_valid(i).then(|| n.value(i)));
            out.push((k.value(i), v.value(i).to_string(), n));
        }
    }
    out.sort();
    out
}

fn two_columns(schema: &TableSchema, keys: &[i64]) -> RecordBatch {
    let values: StringArray = keys.iter().map(|k| Some(format!("v{k}"))).collect();
    RecordBatch::try_new(Arc::clone(&schema.schema), vec![Arc::new(Int64Array::from(keys.to_vec())), Arc::new(values)])
        .unwrap()
}

#[tokio::test]
async fn added_column_reads_null_in_older_files() {
    let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
    let arrow =
        Arc::new(Schema::new(vec![Field::new("k", DataType::Int64, false), Field::new("v", DataType::Utf8, true)]));
    let options = TableOptions { row_group_rows: 2, ..TableOptions::default() };
    let old = TableSchema::new(0, arrow, &["k"], options).unwrap();
    let table = Table::create(Arc::clone(&store), Path::from("public/t"), "t", old.clone()).await.unwrap();
    table.write(&two_columns(&old, &[1, 2, 3]), &[ValueKind::Upsert; 3]).await.unwrap();
    table.write(&two_columns(&old, &[3]), &[ValueKind::Delete]).await.unwrap();
    // A point read opens the files it reads and keeps them open (and, read
    // again, keeps the row group decoded in memory)...
    let key: arrow::array::ArrayRef = Arc::new(Int64Array::from(vec![2]));
    for _ in 0..3 {
        let found = table.get(&[Arc::clone(&key)]).await.unwrap();
        assert_eq!((found.num_rows(), found.num_columns()), (1, 2));
    }

    let new = table.add_columns(vec![Field::new("n", DataType::Int64, true)]).await.unwrap();
    assert_eq!(new.id, 1);
    // ... and reads them with the new column once it is added.
    let found = table.get(&[key]).await.unwrap();
    assert_eq!((found.num_rows(), found.num_columns()), (1, 3));
    assert!(found.column(2).is_null(0));
    assert!(matches!(
        table.add_columns(vec![Field::new("n", DataType::Int64, true)]).await,
        Err(Error::Invalid(m)) if m.contains("already exists")
    ));
    // A write built for the old definition is told to run again.
    assert!(matches!(table.write(&two_columns(&old, &[9]), &[ValueKind::Upsert]).await, Err(Error::Conflict { .. })));

    let batch = RecordBatch::try_new(
        Arc::clone(&new.schema),
        vec![
            Arc::new(Int64Array::from(vec![1, 4])),
            Arc::new(StringArray::from(vec!["one", "four"])),
            Arc::new(Int64Array::from(vec![Some(10), None])),
        ],
    )
    .unwrap();
    // Key 1 is updated: its -U row comes from a file without `n`.
    table.write(&batch, &[ValueKind::Upsert; 2]).await.unwrap();

    let expected = vec![(1, "one".to_string(), Some(10)), (2, "v2".to_string(), None), (4, "four".to_string(), None)];
    assert_eq!(rows(&table.scan(None).await.unwrap()), expected);
    // An old snapshot reads with the current columns too.
    assert_eq!(
        rows(&table.scan(Some(1)).await.unwrap()),
        vec![(1, "v1".to_string(), None), (2, "v2".to_string(), None), (3, "v3".to_string(), None)]
    );
    let changelog = table.changelog(0, None).await.unwrap();
    assert!(changelog.iter().all(|c| c.batch.num_columns() == 5), "user columns + _seq + _kind");
    assert_eq!(changelog.iter().map(|c| c.batch.num_rows()).sum::<usize>(), 3 + 1 + 3);

    table.compact(true).await.unwrap();
    assert_eq!(rows(&table.scan(None).await.unwrap()), expected);

    let reopened = Table::open(Arc::clone(&store), Path::from("public/t"), "t").await.unwrap();
    assert_eq!(reopened.schema(), new);
    assert_eq!(rows(&reopened.scan(None).await.unwrap()), expected);
}

/// The names of a batch's columns.
fn names(batches: &[RecordBatch]) -> Vec<String> {
    batches.first().map(|b| b.schema().fields().iter().map(|f| f.name().clone()).collect()).unwrap_or_default()
}

/// RENAME COLUMN: files written before hold the old name; scans, old
/// snapshots, the changelog, point lookups, compaction, a later ADD COLUMN
/// and a reopen read them under the new name.
#[tokio::test]
async fn renamed_column_reads_from_older_files() {
    let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
    let arrow =
        Arc::new(Schema::new(vec![Field::new("k", DataType::Int64, false), Field::new("v", DataType::Utf8, true)]));
    let options = TableOptions { row_group_rows: 2, ..TableOptions::default() };
    let old = TableSchema::new(0, arrow, &["k"], options).unwrap();
    let table = Table::create(Arc::clone(&store), Path::from("public/t"), "t", old.clone()).await.unwrap();
    table.write(&two_columns(&old, &[1, 2, 3]), &[ValueKind::Upsert; 3]).await.unwrap();

    let renamed = table.rename_column("v", "w").await.unwrap();
    assert_eq!(renamed.id, 1);
    assert_eq!(renamed.schema.field(1).name(), "w");
    assert!(matches!(table.rename_column("v", "x").await, Err(Error::NotFound { .. })));
    assert!(matches!(table.rename_column("w", "k").await, Err(Error::Invalid(m)) if m.contains("already exists")));
    assert!(matches!(table.rename_column("w", "_seq").await, Err(Error::Invalid(m)) if m.contains("reserved")));
    // A write built for the old definition is told to run again.
    assert!(matches!(table.write(&two_columns(&old, &[9]), &[ValueKind::Upsert]).await, Err(Error::Conflict { .. })));

    // Key 1 is updated under the new name: its -U row comes from a file with the old name.
    table.write(&two_columns(&renamed, &[1, 4]), &[ValueKind::Upsert; 2]).await.unwrap();
    // Renamed back and forth: the oldest files still map.
    table.rename_column("w", "v").await.unwrap();
    let current = table.rename_column("v", "w").await.unwrap();
    assert_eq!(current.renames.len(), 3);

    let expected = vec![
        (1, "v1".to_string(), None),
        (2, "v2".to_string(), None),
        (3, "v3".to_string(), None),
        (4, "v4".to_string(), None),
    ];
    let scanned = table.scan(None).await.unwrap();
    assert_eq!(names(&scanned), ["k", "w"]);
    assert_eq!(rows(&scanned), expected);
    // An old snapshot, written entirely under the old name.
    let first = table.scan(Some(1)).await.unwrap();
    assert_eq!(names(&first), ["k", "w"]);
    assert_eq!(rows(&first), expected[..3].to_vec());
    let changelog = table.changelog(0, None).await.unwrap();
    let values: Vec<Option<String>> = changelog
        .iter()
        .flat_map(|c| {
            let v = c.batch.column_by_name("w").expect("renamed column in the changelog").as_string::<i32>().clone();
            (0..v.len()).map(move |i| v.is_valid(i).then(|| v.value(i).to_string()))
        })
        .collect();
    assert!(values.iter().all(Option::is_some), "no value lost to the rename: {values:?}");
    assert_eq!(values.len(), 3 + 3, "3 inserts, then -U/+U for key 1 and +I for key 4");

    // A column added after the renames, then a compaction and a reopen.
    let added = table.add_columns(vec![Field::new("n", DataType::Int64, true)]).await.unwrap();
    assert_eq!(added.renames, current.renames);
    let with_n: Vec<(i64, String, Option<i64>)> = expected.clone();
    assert_eq!(rows(&table.scan(None).await.unwrap()), with_n);
    table.compact(true).await.unwrap();
    assert_eq!(rows(&table.scan(None).await.unwrap()), with_n);
    let reopened = Table::open(Arc::clone(&store), Path::from("public/t"), "t").await.unwrap();
    assert_eq!(reopened.schema(), added);
    assert_eq!(rows(&reopened.scan(Some(1)).await.unwrap()), expected[..3].to_vec());
}

#[tokio::test]
async fn column_spans_bound_every_file_read_and_count_added_columns_as_null() {
    use arrow::array::{ArrayRef, Int64Array};
    let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
    let arrow =
        Arc::new(Schema::new(vec![Field::new("k", DataType::Int64, false), Field::new("v", DataType::Utf8, true)]));
    let options = TableOptions { row_group_rows: 2, ..TableOptions::default() };
    let old = TableSchema::new(0, arrow, &["k"], options).unwrap();
    let table = Table::create(Arc::clone(&store), Path::from("public/t"), "t", old.clone()).await.unwrap();
    table.write(&two_columns(&old, &[5, 2, 3]), &[ValueKind::Upsert; 3]).await.unwrap();
    table.write(&two_columns(&old, &[10, 20]), &[ValueKind::Upsert; 2]).await.unwrap();
    let new = table.add_columns(vec![Field::new("n", DataType::Int64, true)]).await.unwrap();
    let batch = RecordBatch::try_new(
        Arc::clone(&new.schema),
        vec![
            Arc::new(Int64Array::from(vec![30])),
            Arc::new(StringArray::from(vec!["z"])),
            Arc::new(Int64Array::from(vec![7])),
        ],
    )
    .unwrap();
    table.write(&batch, &[ValueKind::Upsert]).await.unwrap();

    let plan = table.plan_scan(None, &streamhouse_storage::ScanRequest::default()).await.unwrap();
    let spans = plan.column_spans();
    let int = |a: &Option<ArrayRef>| a.as_ref().map(|a| a.as_primitive::<Int64Type>().value(0));
    let text = |a: &Option<ArrayRef>| a.as_ref().map(|a| a.as_string::<i32>().value(0).to_string());
    assert_eq!((int(&spans[0].min), int(&spans[0].max), spans[0].nulls), (Some(2), Some(30), Some(0)));
    assert_eq!((text(&spans[1].min), text(&spans[1].max)), (Some("v10".into()), Some("z".into())));
    // `n` is NULL in the 5 rows written before it existed.
    assert_eq!((int(&spans[2].min), int(&spans[2].max), spans[2].nulls), (Some(7), Some(7), Some(5)));

    // A projection: the spans of the columns returned, in order.
    let request = streamhouse_storage::ScanRequest { projection: Some(vec![2, 0]), ..Default::default() };
    let spans = table.plan_scan(None, &request).await.unwrap().column_spans();
    assert_eq!((int(&spans[0].min), int(&spans[1].min)), (Some(7), Some(2)));
}
