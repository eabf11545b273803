//! Group state in a table of its own, for views with a HAVING.
//!
//! A view that keeps group state ([`super::state`]) keeps it in hidden
//! columns of its rows, one row per group. Under a HAVING a group that
//! fails the predicate has no row, but its state must live on: the next
//! change may make it pass. Such a view keeps the state of every group in a
//! hidden Dynamic Table in its directory (`groups`), keyed by the group's
//! values row-encoded (`__key`), followed by the values (`__g0, __g1, …`)
//! and the state columns. A view that emits on window close keeps the state
//! of its open windows there the same way: a window's row is written once,
//! when the watermark passes its end.
//!
//! A step updates the state table and commits it with the property
//! `groups.positions` (the source positions the state reflects), then
//! writes the view's rows for the touched groups from their new state —
//! upserts of the groups that pass, deletes of those that no longer do —
//! and commits the view. The view's write depends only on the state, not on
//! the view's previous rows: after a crash between the two commits the
//! maintainer replays exactly the step the state table recorded, finds the
//! state already there (its positions are the step's end), and writes the
//! view's rows from it again. A state table that is missing, damaged, or
//! not at the view's positions (nor one step ahead) is rebuilt from the
//! sources.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use datafusion::arrow::array::{ArrayRef, AsArray, BinaryArray, RecordBatch};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::common::ScalarValue;
use object_store::path::Path;
use streamhouse_storage as storage;

use super::plan::GroupState;
use super::state::{self, Group};
use crate::error::{Error, Result, StatusCode};

/// The snapshot property naming the source positions the state reflects.
const POSITIONS_PROPERTY: &str = "groups.positions";

/// The state table's key column: the group's values, row-encoded.
const KEY: &str = "__key";

/// Steps still to fail right after their state table's commit (a test hook).
static FAIL_AFTER_STATE: AtomicU64 = AtomicU64::new(0);
/// Steps failed so by [`fail_after_state_commits`].
static FAILED_AFTER_STATE: AtomicU64 = AtomicU64::new(0);

/// Makes the next `times` steps of views with a state table fail right
/// after the state's commit, before the view's — what a crash between the
/// two commits leaves (a test hook; process-wide).
#[doc(hidden)]
pub fn fail_after_state_commits(times: u64) {
    FAIL_AFTER_STATE.store(times, Ordering::SeqCst);
}

/// How many steps [`fail_after_state_commits`] has failed.
#[doc(hidden)]
pub fn failures_after_state_commits() -> u64 {
    FAILED_AFTER_STATE.load(Ordering::SeqCst)
}

/// Fails when [`fail_after_state_commits`] asks for it.
pub(super) fn injected_failure() -> Result<()> {
    let armed = FAIL_AFTER_STATE.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1)).is_ok();
    if armed {
        FAILED_AFTER_STATE.fetch_add(1, Ordering::SeqCst);
        return Err(Error::new(StatusCode::Io, "injected failure after a group state commit"));
    }
    Ok(())
}

/// A hidden Dynamic Table of view state in the view's directory, whose
/// commits record the source positions the state reflects (the group
/// state, and the value counts of COUNT(DISTINCT), [`super::distinct`]).
#[derive(Debug)]
pub struct StateTable {
    table: Arc<storage::Table>,
    schema: SchemaRef,
}

impl StateTable {
    /// Opens the state table in `dir` (`what` names it in errors), `None`
    /// when there is none with the columns of `want` and the key `key`.
    pub async fn open(
        store: &Arc<dyn object_store::ObjectStore>,
        dir: Path,
        what: &str,
        want: SchemaRef,
        key: &[usize],
    ) -> Option<Self> {
        let table = storage::Table::open(Arc::clone(store), dir, what).await.ok()?;
        let current = table.schema();
        if current.schema.fields() != want.fields() || current.primary_key != key {
            table.close().await;
            return None;
        }
        Some(Self { table: Arc::new(table), schema: want })
    }

    /// A new, empty state table in `dir` keyed by the columns `key`,
    /// replacing whatever was there.
    ///
    /// # Errors
    /// Storage failures.
    pub async fn create(
        store: &Arc<dyn object_store::ObjectStore>,
        dir: Path,
        what: &str,
        schema: SchemaRef,
        key: &[&str],
    ) -> Result<Self> {
        super::arrange::remove_hidden_table(store, &dir, what).await?;
        let definition =
            storage::TableSchema::new(0, Arc::clone(&schema), key, super::arrange::hidden_table_options())?;
        let table = storage::Table::create(Arc::clone(store), dir, what, definition).await?;
        Ok(Self { table: Arc::new(table), schema })
    }

    /// Its columns.
    pub fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    /// The stored table.
    pub fn table(&self) -> &storage::Table {
        &self.table
    }

    /// Starts its background compaction and snapshot expiry unless running.
    pub fn schedule_maintenance(&self) {
        storage::Table::schedule_maintenance(&self.table);
    }

    /// The positions property of the state's latest commit (`None`: never committed).
    pub fn positions(&self) -> Option<String> {
        self.table.latest_snapshot().and_then(|s| s.properties.get(POSITIONS_PROPERTY).cloned())
    }

    /// Starts a transaction on the state table.
    ///
    /// # Errors
    /// Storage failures.
    pub async fn begin(&self) -> Result<storage::Transaction<'_>> {
        Ok(self.table.begin().await?)
    }

    /// Commits `txn` as the state at `positions` (a positions property).
    ///
    /// # Errors
    /// Storage failures.
    pub async fn commit(mut txn: storage::Transaction<'_>, positions: String) -> Result<()> {
        txn.set_property(POSITIONS_PROPERTY, positions);
        txn.commit().await?;
        Ok(())
    }

    /// Closes the state table (the maintainer stopped).
    pub async fn close(&self) {
        self.table.close().await;
    }
}

/// A view's group state table.
#[derive(Debug)]
pub struct GroupTable {
    table: StateTable,
}

fn dir(view_dir: &Path) -> Path {
    view_dir.clone().join("groups")
}

/// The state table's columns: the key, the group values, then `fields`
/// (from [`state::state_fields`]).
fn schema(state: &GroupState, fields: &[Field]) -> SchemaRef {
    let mut columns = vec![Field::new(KEY, DataType::Binary, false)];
    let groups = state.width() - state.aggregates.len();
    columns.extend((0..groups).map(|i| Field::new(format!("__g{i}"), state.output_type(i).clone(), true)));
    columns.extend(fields.iter().cloned());
    Arc::new(Schema::new(columns))
}

/// One group as the state table holds it: its key, values and state.
pub type Entry = (Vec<u8>, Vec<ScalarValue>, Group);

impl GroupTable {
    /// Starts its background compaction and snapshot expiry unless running.
    pub fn schedule_maintenance(&self) {
        self.table.schedule_maintenance();
    }

    /// Opens the state table of the view in `view_dir`, `None` when there
    /// is none with the columns `fields` (from [`state::state_fields`]).
    pub async fn open(
        store: &Arc<dyn object_store::ObjectStore>,
        view_dir: &Path,
        state: &GroupState,
        fields: &[Field],
    ) -> Option<Self> {
        let table = StateTable::open(store, dir(view_dir), "group state", schema(state, fields), &[0]).await?;
        Some(Self { table })
    }

    /// A new, empty state table for the view in `view_dir`, replacing
    /// whatever was there.
    ///
    /// # Errors
    /// Storage failures.
    pub async fn create(
        store: &Arc<dyn object_store::ObjectStore>,
        view_dir: &Path,
        state: &GroupState,
        fields: &[Field],
    ) -> Result<Self> {
        let table = StateTable::create(store, dir(view_dir), "group state", schema(state, fields), &[KEY]).await?;
        Ok(Self { table })
    }

    /// The positions property of the state's latest commit (`None`: never committed).
    pub fn positions(&self) -> Option<String> {
        self.table.positions()
    }

    /// The stored state of the groups with the encoded `keys` that have
    /// one, with their stored rows (for deletes).
    ///
    /// # Errors
    /// Storage failures; state columns that are not `state`'s (a bug).
    pub async fn get(&self, state: &GroupState, keys: &[&[u8]]) -> Result<(HashMap<Vec<u8>, Group>, RecordBatch)> {
        if keys.is_empty() {
            return Ok((HashMap::new(), RecordBatch::new_empty(Arc::clone(self.table.schema()))));
        }
        let lookup: ArrayRef = Arc::new(BinaryArray::from_iter_values(keys.iter()));
        let rows = self.table.table().get(&[lookup]).await?;
        let stored_keys = rows.column(0).as_binary::<i32>();
        let offset = self.state_offset(state);
        let mut groups = HashMap::with_capacity(rows.num_rows());
        for row in 0..rows.num_rows() {
            groups.insert(stored_keys.value(row).to_vec(), state::stored(state, &rows, row, offset)?);
        }
        Ok((groups, rows))
    }

    /// Every stored group, with the rows they were read from (entry `i` is row `i`).
    ///
    /// # Errors
    /// Storage failures; state columns that are not `state`'s (a bug).
    pub async fn scan(&self, state: &GroupState) -> Result<(RecordBatch, Vec<Entry>)> {
        let batches = match self.table.table().scan(None).await {
            Ok(batches) => batches,
            Err(storage::Error::NotFound { .. }) => vec![],
            Err(e) => return Err(e.into()),
        };
        let rows = datafusion::arrow::compute::concat_batches(self.table.schema(), &batches)?;
        let keys = rows.column(0).as_binary::<i32>();
        let offset = self.state_offset(state);
        let mut entries = Vec::with_capacity(rows.num_rows());
        for row in 0..rows.num_rows() {
            let values = (1..offset)
                .map(|c| ScalarValue::try_from_array(rows.column(c), row))
                .collect::<datafusion::error::Result<Vec<_>>>()?;
            entries.push((keys.value(row).to_vec(), values, state::stored(state, &rows, row, offset)?));
        }
        Ok((rows, entries))
    }

    /// Where the state columns start.
    fn state_offset(&self, state: &GroupState) -> usize {
        1 + state.width() - state.aggregates.len()
    }

    /// Rows of the state table for `groups`: key, values, state.
    ///
    /// # Errors
    /// Values that do not convert to the state types.
    pub fn rows(&self, state: &GroupState, groups: &[(&[u8], &[ScalarValue], &Group)]) -> Result<RecordBatch> {
        let offset = self.state_offset(state);
        let mut columns: Vec<ArrayRef> =
            vec![Arc::new(BinaryArray::from_iter_values(groups.iter().map(|(k, _, _)| *k)))];
        for c in 1..offset {
            let target = self.table.schema().field(c).data_type();
            let cells = groups
                .iter()
                .map(|(_, v, _)| v[c - 1].cast_to(target))
                .collect::<datafusion::error::Result<Vec<_>>>()?;
            columns.push(state::array_of(cells, target)?);
        }
        let fields: Vec<Field> = self.table.schema().fields()[offset..].iter().map(|f| f.as_ref().clone()).collect();
        let states: Vec<&Group> = groups.iter().map(|(_, _, g)| *g).collect();
        columns.extend(state::state_columns(state, &fields, &states)?);
        Ok(RecordBatch::try_new(Arc::clone(self.table.schema()), columns)?)
    }

    /// Starts a transaction on the state table.
    ///
    /// # Errors
    /// Storage failures.
    pub async fn begin(&self) -> Result<storage::Transaction<'_>> {
        self.table.begin().await
    }

    /// Commits `txn` as the state at `positions` (a positions property).
    ///
    /// # Errors
    /// Storage failures.
    pub async fn commit(txn: storage::Transaction<'_>, positions: String) -> Result<()> {
        StateTable::commit(txn, positions).await
    }

    /// Closes the state table (the maintainer stopped).
    pub async fn close(&self) {
        self.table.close().await;
    }
}
