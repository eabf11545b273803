//! Damaged files are errors naming the file, never panics or wrong answers;
//! two writers racing for one snapshot id cannot both win.

use std::sync::Arc;

use arrow::array::{Int64Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema};
use object_store::ObjectStore;
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use streamhouse_storage::{Error, Table, TableOptions, TableSchema, ValueKind};

fn table_schema() -> TableSchema {
    let arrow =
        Arc::new(Schema::new(vec![Field::new("k", DataType::Int64, false), Field::new("v", DataType::Utf8, true)]));
    TableSchema::new(0, arrow, &["k"], TableOptions::default()).unwrap()
}

fn rows(schema: &TableSchema, keys: &[i64]) -> RecordBatch {
    let values: StringArray = keys.iter().map(|k| Some(format!("v{k}"))).collect();
    RecordBatch::try_new(Arc::clone(&schema.schema), vec![Arc::new(Int64Array::from(keys.to_vec())), Arc::new(values)])
        .unwrap()
}

async fn setup() -> (tempfile::TempDir, Arc<dyn ObjectStore>, Table) {
    let dir = tempfile::tempdir().unwrap();
    let store: Arc<dyn ObjectStore> = Arc::new(LocalFileSystem::new_with_prefix(dir.path()).unwrap());
    let schema = table_schema();
    let table = Table::create(Arc::clone(&store), Path::from("public/t"), "t", schema.clone()).await.unwrap();
    table.write(&rows(&schema, &[1, 2, 3]), &[ValueKind::Upsert; 3]).await.unwrap();
    table.write(&rows(&schema, &[2, 4]), &[ValueKind::Upsert; 2]).await.unwrap();
    (dir, store, table)
}

fn files_under(dir: &std::path::Path, sub: &str) -> Vec<std::path::PathBuf> {
    let mut out: Vec<_> =
        std::fs::read_dir(dir.join("public/t").join(sub)).unwrap().flatten().map(|e| e.path()).collect();
    out.sort();
    out
}

fn assert_corrupt(err: Error, file: &std::path::Path) {
    let name = file.file_name().unwrap().to_string_lossy().to_string();
    match &err {
        Error::Corrupt { path, .. } => assert!(path.contains(&name), "{err} should name {name}"),
        other => panic!("expected a corrupt-file error naming {name}, got {other}"),
    }
}

#[tokio::test]
async fn truncated_data_file_is_reported() {
    let (dir, _store, table) = setup().await;
    let data = &files_under(dir.path(), "data")[0];
    let bytes = std::fs::read(data).unwrap();
    std::fs::write(data, &bytes[..bytes.len() / 2]).unwrap();
    assert_corrupt(table.scan(None).await.unwrap_err(), data);
}

#[tokio::test]
async fn flipped_byte_in_data_file_is_reported() {
    let (dir, _store, table) = setup().await;
    for data in files_under(dir.path(), "data") {
        let mut bytes = std::fs::read(&data).unwrap();
        let middle = bytes.len() / 2;
        bytes[middle] ^= 0x01;
        std::fs::write(&data, &bytes).unwrap();
        assert_corrupt(table.scan(None).await.unwrap_err(), &data);
        bytes[middle] ^= 0x01;
        std::fs::write(&data, &bytes).unwrap();
    }
    assert_eq!(table.scan(None).await.unwrap().iter().map(RecordBatch::num_rows).sum::<usize>(), 4);
}

#[tokio::test]
async fn damaged_snapshot_and_missing_file_are_reported() {
    let (dir, store, table) = setup().await;
    let snapshot = files_under(dir.path(), "snapshot").pop().unwrap();
    let bytes = std::fs::read(&snapshot).unwrap();
    std::fs::write(&snapshot, &bytes[..bytes.len() - 3]).unwrap();
    assert_corrupt(Table::open(Arc::clone(&store), Path::from("public/t"), "t").await.unwrap_err(), &snapshot);
    std::fs::write(&snapshot, &bytes).unwrap();

    let changelog = files_under(dir.path(), "changelog").pop().unwrap();
    std::fs::remove_file(&changelog).unwrap();
    assert_corrupt(table.changelog(0, None).await.unwrap_err(), &changelog);
}

#[tokio::test]
async fn two_writers_cannot_both_commit_the_same_snapshot() {
    let (_dir, store, table) = setup().await;
    // A second process's view of the same table, opened at the same snapshot.
    let other = Table::open(Arc::clone(&store), Path::from("public/t"), "t").await.unwrap();
    let schema = table.schema();
    let first = table.write(&rows(&schema, &[10]), &[ValueKind::Upsert]).await.unwrap().unwrap();
    let err = other.write(&rows(&schema, &[11]), &[ValueKind::Upsert]).await.unwrap_err();
    assert!(matches!(err, Error::Conflict { .. }), "{err}");
    // The winner's commit is intact; the loser's rows are nowhere.
    let reopened = Table::open(store, Path::from("public/t"), "t").await.unwrap();
    assert_eq!(reopened.latest_snapshot().unwrap().id, first.id);
    let total: usize = reopened.scan(None).await.unwrap().iter().map(RecordBatch::num_rows).sum();
    assert_eq!(total, 5);
}
