//! Model test: random sequences of upserts, deletes, no-op writes and
//! reopenings of a Dynamic Table, checked after every step against a
//! `BTreeMap` model. After each commit:
//! - the latest snapshot scans to exactly the model;
//! - every earlier snapshot still scans to the model as it was then;
//! - replaying the changelog of any range of snapshots onto the model state
//!   at its start gives the model state at its end, and every `-U`/`-D`
//!   carries the exact old row.

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow::array::{Array, AsArray, Int64Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Int8Type, Int64Type, Schema};
use object_store::ObjectStore;
use object_store::memory::InMemory;
use object_store::path::Path;
use proptest::prelude::*;
use streamhouse_storage::{MergeEngine, RowKind, Table, TableSchema, ValueKind};

type Model = BTreeMap<i64, Option<String>>;

#[derive(Debug, Clone)]
enum Op {
    /// One write: (key, Some(value) upsert | None value upsert-null | delete).
    Write(Vec<(i64, Change)>),
    Reopen,
}

#[derive(Debug, Clone)]
enum Change {
    Upsert(Option<String>),
    Delete,
}

fn change() -> impl Strategy<Value = Change> {
    prop_oneof![
        4 => proptest::option::weighted(0.8, "[a-z]{1,3}").prop_map(Change::Upsert),
        1 => Just(Change::Delete),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        8 => proptest::collection::vec((0i64..20, change()), 1..12).prop_map(Op::Write),
        1 => Just(Op::Reopen),
    ]
}

fn schema(engine: MergeEngine) -> TableSchema {
    let arrow =
        Arc::new(Schema::new(vec![Field::new("k", DataType::Int64, false), Field::new("v", DataType::Utf8, true)]));
    TableSchema::new(0, arrow, &["k"], engine).unwrap()
}

fn batch(table: &TableSchema, rows: &[(i64, Change)]) -> (RecordBatch, Vec<ValueKind>) {
    let keys = Int64Array::from_iter_values(rows.iter().map(|(k, _)| *k));
    let values: StringArray = rows
        .iter()
        .map(|(_, c)| match c {
            Change::Upsert(v) => v.clone(),
            Change::Delete => None,
        })
        .collect();
    let kinds = rows
        .iter()
        .map(|(_, c)| if matches!(c, Change::Delete) { ValueKind::Delete } else { ValueKind::Upsert })
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
            (MergeEngine::Deduplicate, Change::Upsert(v)) => {
                model.insert(*k, v.clone());
            }
            (MergeEngine::Deduplicate, Change::Delete) => {
                model.remove(k);
            }
            (MergeEngine::FirstRow, Change::Upsert(v)) => {
                model.entry(*k).or_insert_with(|| v.clone());
            }
            (MergeEngine::FirstRow, Change::Delete) => unreachable!("first-row models get no deletes"),
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

async fn run(engine: MergeEngine, ops: Vec<Op>) {
    let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
    let dir = Path::from("public/t");
    let mut table = Table::create(Arc::clone(&store), dir.clone(), "t", schema(engine)).await.unwrap();
    let mut model = Model::new();
    // Model state after each snapshot id (index 0 = empty table).
    let mut history: Vec<Model> = vec![Model::new()];
    for op in ops {
        match op {
            Op::Write(mut rows) => {
                if engine == MergeEngine::FirstRow {
                    rows.retain(|(_, c)| !matches!(c, Change::Delete));
                    if rows.is_empty() {
                        continue;
                    }
                }
                let (b, kinds) = batch(&table.schema().await, &rows);
                let before = model.clone();
                apply(&mut model, engine, &rows);
                let committed = table.write(&b, &kinds).await.unwrap();
                match committed {
                    Some(snapshot) => {
                        assert_eq!(snapshot.id as usize, history.len());
                        history.push(model.clone());
                    }
                    None => assert_eq!(before, model, "no commit, but the model changed"),
                }
            }
            Op::Reopen => {
                drop(table);
                table = Table::open(Arc::clone(&store), dir.clone(), "t").await.unwrap();
            }
        }
        assert_eq!(rows_of(&table.scan(None).await.unwrap()), model, "latest snapshot");
    }
    let latest = history.len() as u64 - 1;
    for id in 1..=latest {
        assert_eq!(rows_of(&table.scan(Some(id)).await.unwrap()), history[id as usize], "snapshot {id}");
    }
    for from in 0..=latest {
        for to in from..=latest {
            let mut state = history[from as usize].clone();
            replay(&mut state, &table.changelog(from, Some(to)).await.unwrap());
            assert_eq!(state, history[to as usize], "changelog ({from}, {to}]");
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn deduplicate_matches_the_model(ops in proptest::collection::vec(op(), 1..25)) {
        tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(run(MergeEngine::Deduplicate, ops));
    }

    #[test]
    fn first_row_matches_the_model(ops in proptest::collection::vec(op(), 1..25)) {
        tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(run(MergeEngine::FirstRow, ops));
    }
}
