//! A Dynamic Table: writes (with lookup changelog), commits, snapshot scans
//! and changelog reads.

use std::collections::HashMap;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, Int8Array, RecordBatch, UInt64Array};
use arrow::compute::{interleave, take};
use arrow::datatypes::{Int8Type, UInt64Type};
use arrow::row::{OwnedRow, RowConverter, SortField};
use futures::TryStreamExt;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload};

use crate::error::{Error, Result};
use crate::file::{self, ChildPath};
use crate::schema::{MergeEngine, RowKind, TableSchema, ValueKind};
use crate::snapshot::{CommitKind, FileMeta, Manifest, Snapshot};

/// The latest committed state, cached; guarded by the table's writer lock.
#[derive(Debug, Clone)]
struct State {
    schema: TableSchema,
    latest: Option<Snapshot>,
    manifest: Manifest,
}

/// One Dynamic Table on object storage.
///
/// Writers in this process are serialized by an async lock; writers in other
/// processes are caught by the conditional create of the snapshot file.
#[derive(Debug)]
pub struct Table {
    store: Arc<dyn ObjectStore>,
    dir: Path,
    name: String,
    state: tokio::sync::Mutex<State>,
}

/// Changelog rows of one snapshot: user columns, `_seq`, `_kind` ([`RowKind`] codes).
#[derive(Debug, Clone)]
pub struct ChangelogBatch {
    /// The snapshot whose commit produced these changes.
    pub snapshot: u64,
    /// The rows.
    pub batch: RecordBatch,
}

fn schema_path(id: u64) -> String {
    format!("schema/schema-{id}")
}

fn snapshot_path(id: u64) -> String {
    format!("snapshot/snapshot-{id}")
}

fn now_ms() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

impl Table {
    /// Creates a table in `dir` (e.g. `public/orders` under the warehouse root).
    ///
    /// # Errors
    /// [`Error::AlreadyExists`] when a table lives there; storage failures.
    pub async fn create(store: Arc<dyn ObjectStore>, dir: Path, name: &str, schema: TableSchema) -> Result<Self> {
        let location = dir.child_path(&schema_path(schema.id));
        let put =
            store.put_opts(&location, PutPayload::from(schema.encode()?), PutOptions::from(PutMode::Create)).await;
        match put {
            Ok(_) => {}
            Err(object_store::Error::AlreadyExists { .. }) => {
                return Err(Error::AlreadyExists { table: name.to_string() });
            }
            Err(e) => return Err(Error::store(&location, e)),
        }
        let state = State { schema, latest: None, manifest: Manifest::default() };
        Ok(Self { store, dir, name: name.to_string(), state: tokio::sync::Mutex::new(state) })
    }

    /// Opens the table in `dir` at its latest snapshot.
    ///
    /// # Errors
    /// [`Error::NotFound`] when no table lives there; [`Error::Corrupt`] for damaged metadata.
    pub async fn open(store: Arc<dyn ObjectStore>, dir: Path, name: &str) -> Result<Self> {
        let schema_id = max_id(&store, &dir.clone().join("schema"), "schema-")
            .await?
            .ok_or_else(|| Error::NotFound { what: format!("table {name}") })?;
        let schema_location = dir.child_path(&schema_path(schema_id));
        let bytes = get(&store, &schema_location).await?;
        let schema = TableSchema::decode(schema_location.as_ref(), &bytes)?;
        let table = Self {
            store,
            dir,
            name: name.to_string(),
            state: tokio::sync::Mutex::new(State { schema, latest: None, manifest: Manifest::default() }),
        };
        if let Some(id) = max_id(&table.store, &table.dir.clone().join("snapshot"), "snapshot-").await? {
            let snapshot = table.read_snapshot(id).await?;
            let manifest = table.read_manifest(&snapshot).await?;
            let mut state = table.state.lock().await;
            state.latest = Some(snapshot);
            state.manifest = manifest;
        }
        Ok(table)
    }

    /// The table's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The current definition.
    pub async fn schema(&self) -> TableSchema {
        self.state.lock().await.schema.clone()
    }

    /// The latest snapshot, if anything was committed.
    pub async fn latest_snapshot(&self) -> Option<Snapshot> {
        self.state.lock().await.latest.clone()
    }

    /// Reads snapshot `id`.
    ///
    /// # Errors
    /// [`Error::NotFound`] for an unknown or expired id; [`Error::Corrupt`].
    pub async fn read_snapshot(&self, id: u64) -> Result<Snapshot> {
        let location = self.dir.child_path(&snapshot_path(id));
        let bytes = match self.store.get(&location).await {
            Ok(got) => got.bytes().await.map_err(|e| Error::store(&location, e))?,
            Err(object_store::Error::NotFound { .. }) => {
                return Err(Error::NotFound { what: format!("snapshot {id} of table {}", self.name) });
            }
            Err(e) => return Err(Error::store(&location, e)),
        };
        let snapshot: Snapshot = crate::frame::decode(location.as_ref(), &bytes)?;
        if snapshot.id != id {
            return Err(Error::corrupt(&location, format!("holds snapshot {} instead of {id}", snapshot.id)));
        }
        Ok(snapshot)
    }

    async fn read_manifest(&self, snapshot: &Snapshot) -> Result<Manifest> {
        let location = self.dir.child_path(&snapshot.manifest);
        let bytes = get(&self.store, &location).await?;
        crate::frame::decode(location.as_ref(), &bytes)
    }

    /// Applies upserts and deletes (one [`ValueKind`] per row of `rows`) and
    /// commits them as one snapshot, with its changelog. Returns the new
    /// snapshot, or `None` when nothing changed (e.g. deleting absent keys).
    ///
    /// Within `rows`, the last row for a key wins (the first, for
    /// `first-row` tables).
    ///
    /// # Errors
    /// Rows that do not fit the table ([`Error::Invalid`]), a concurrent
    /// writer in another process ([`Error::Conflict`]), storage failures.
    pub async fn write(&self, rows: &RecordBatch, kinds: &[ValueKind]) -> Result<Option<Snapshot>> {
        let mut state = self.state.lock().await;
        let schema = state.schema.clone();
        check_rows(&schema, rows, kinds)?;
        let next_seq = state.latest.as_ref().map_or(1, |s| s.next_sequence);
        let (data, changelog) = if schema.has_primary_key() {
            self.keyed_changes(&state, rows, kinds, next_seq).await?
        } else {
            if kinds.contains(&ValueKind::Delete) {
                return Err(Error::Invalid(format!(
                    "table {} has no primary key: it is append-only and rows cannot be deleted",
                    self.name
                )));
            }
            let seqs: ArrayRef = Arc::new(UInt64Array::from_iter_values(next_seq..next_seq + rows.num_rows() as u64));
            let data = with_system_columns(&schema, rows, Arc::clone(&seqs), ValueKind::Upsert as i8)?;
            let changelog = with_system_columns(&schema, rows, seqs, RowKind::Insert as i8)?;
            (data, changelog)
        };
        if changelog.num_rows() == 0 && data.num_rows() == 0 {
            return Ok(None);
        }
        let last_seq = next_seq + data.num_rows().max(1) as u64 - 1;
        let data_file = if data.num_rows() > 0 {
            let path = format!("data/{}.parquet", uuid::Uuid::new_v4());
            Some(
                file::write(
                    &self.store,
                    &self.dir,
                    new_file(path, (next_seq, last_seq), schema.id),
                    &data.schema(),
                    &[data],
                )
                .await?,
            )
        } else {
            None
        };
        let changelog_file = if changelog.num_rows() > 0 {
            let path = format!("changelog/{}.parquet", uuid::Uuid::new_v4());
            Some(
                file::write(
                    &self.store,
                    &self.dir,
                    new_file(path, (next_seq, last_seq), schema.id),
                    &changelog.schema(),
                    &[changelog],
                )
                .await?,
            )
        } else {
            None
        };
        let mut manifest = state.manifest.clone();
        manifest.files.extend(data_file.iter().cloned());
        let snapshot = self
            .commit(
                &state,
                manifest.clone(),
                CommitKind::Append,
                data_file.into_iter().collect(),
                changelog_file,
                last_seq + 1,
            )
            .await?;
        state.latest = Some(snapshot.clone());
        state.manifest = manifest;
        Ok(Some(snapshot))
    }

    /// Writes the manifest and claims the next snapshot id.
    async fn commit(
        &self,
        state: &State,
        manifest: Manifest,
        kind: CommitKind,
        delta: Vec<FileMeta>,
        changelog: Option<FileMeta>,
        next_sequence: u64,
    ) -> Result<Snapshot> {
        let manifest_path = format!("manifest/manifest-{}", uuid::Uuid::new_v4());
        let location = self.dir.child_path(&manifest_path);
        self.store
            .put(&location, PutPayload::from(crate::frame::encode(&manifest)?))
            .await
            .map_err(|e| Error::store(&location, e))?;
        let id = state.latest.as_ref().map_or(1, |s| s.id + 1);
        let snapshot = Snapshot {
            id,
            parent: state.latest.as_ref().map(|s| s.id),
            commit_time_ms: now_ms(),
            schema_id: state.schema.id,
            kind,
            manifest: manifest_path,
            delta_rows: delta.iter().map(|f| f.rows).sum(),
            delta_files: delta.iter().map(|f| f.path.clone()).collect(),
            changelog_rows: changelog.as_ref().map_or(0, |f| f.rows),
            changelog_files: changelog.into_iter().collect(),
            total_rows: manifest.files.iter().map(|f| f.rows).sum(),
            next_sequence,
            watermark: state.latest.as_ref().and_then(|s| s.watermark),
        };
        let location = self.dir.child_path(&snapshot_path(id));
        let claimed = self
            .store
            .put_opts(&location, PutPayload::from(crate::frame::encode(&snapshot)?), PutOptions::from(PutMode::Create))
            .await;
        match claimed {
            Ok(_) => Ok(snapshot),
            Err(object_store::Error::AlreadyExists { .. }) => Err(Error::Conflict {
                table: self.name.clone(),
                reason: format!("snapshot {id} was committed by another writer"),
            }),
            Err(e) => Err(Error::store(&location, e)),
        }
    }

    /// New data rows and changelog rows for a keyed table, looked up against the current state.
    async fn keyed_changes(
        &self,
        state: &State,
        rows: &RecordBatch,
        kinds: &[ValueKind],
        next_seq: u64,
    ) -> Result<(RecordBatch, RecordBatch)> {
        let schema = &state.schema;
        let converter = key_converter(schema)?;
        let keys = converter.convert_columns(&key_columns(schema, rows))?;
        // The row that decides each key within this write.
        let mut decisive: HashMap<OwnedRow, usize> = HashMap::with_capacity(rows.num_rows());
        for (i, kind) in kinds.iter().enumerate() {
            let key = keys.row(i).owned();
            match schema.merge_engine {
                MergeEngine::Deduplicate => {
                    decisive.insert(key, i);
                }
                MergeEngine::FirstRow => {
                    if *kind == ValueKind::Delete {
                        return Err(Error::Invalid(format!(
                            "table {} uses merge-engine 'first-row', which does not accept deletes",
                            self.name
                        )));
                    }
                    decisive.entry(key).or_insert(i);
                }
            }
        }
        let mut ordered: Vec<(OwnedRow, usize)> = decisive.into_iter().collect();
        ordered.sort_unstable_by(|a, b| a.0.cmp(&b.0));

        let (old_batches, old) = self.merged(state, Some(&ordered)).await?;
        let old_by_key: HashMap<OwnedRow, (usize, usize)> =
            old.into_iter().map(|e| (e.key, (e.batch, e.row))).collect();

        // Sources for interleave: old data batches (user columns), then the incoming rows.
        let incoming = old_batches.len();
        let mut data_rows: Vec<usize> = Vec::new();
        let mut data_kinds: Vec<i8> = Vec::new();
        let mut log_rows: Vec<(usize, usize)> = Vec::new();
        let mut log_kinds: Vec<i8> = Vec::new();
        let mut log_seqs: Vec<u64> = Vec::new();
        for (key, i) in &ordered {
            let seq = next_seq + data_rows.len() as u64;
            let old = old_by_key.get(key);
            match (schema.merge_engine, old, kinds[*i]) {
                (_, None, ValueKind::Upsert) => {
                    data_rows.push(*i);
                    data_kinds.push(ValueKind::Upsert as i8);
                    log_rows.push((incoming, *i));
                    log_kinds.push(RowKind::Insert as i8);
                    log_seqs.push(seq);
                }
                (MergeEngine::Deduplicate, Some(&(b, r)), ValueKind::Upsert) => {
                    data_rows.push(*i);
                    data_kinds.push(ValueKind::Upsert as i8);
                    log_rows.extend([(b, r), (incoming, *i)]);
                    log_kinds.extend([RowKind::UpdateBefore as i8, RowKind::UpdateAfter as i8]);
                    log_seqs.extend([seq, seq]);
                }
                (MergeEngine::Deduplicate, Some(&(b, r)), ValueKind::Delete) => {
                    data_rows.push(*i);
                    data_kinds.push(ValueKind::Delete as i8);
                    log_rows.push((b, r));
                    log_kinds.push(RowKind::Delete as i8);
                    log_seqs.push(seq);
                }
                // Deleting an absent key, or a later row for a first-row key: no change.
                (_, None, ValueKind::Delete) | (MergeEngine::FirstRow, Some(_), _) => {}
            }
        }
        let indices = arrow::array::UInt32Array::from_iter_values(data_rows.iter().map(|&i| i as u32));
        let data_columns = rows.columns().iter().map(|c| take(c, &indices, None)).collect::<Result<Vec<_>, _>>()?;
        let data_user = RecordBatch::try_new(Arc::clone(&schema.schema), data_columns)?;
        let seqs = UInt64Array::from_iter_values(next_seq..next_seq + data_rows.len() as u64);
        let data = append_system(schema, &data_user, Arc::new(seqs), Arc::new(Int8Array::from(data_kinds)))?;

        let mut log_columns = Vec::with_capacity(schema.schema.fields().len());
        for column in 0..schema.schema.fields().len() {
            let mut sources: Vec<&dyn Array> = old_batches.iter().map(|b| b.column(column).as_ref()).collect();
            sources.push(rows.column(column).as_ref());
            log_columns.push(interleave(&sources, &log_rows)?);
        }
        let log_user = RecordBatch::try_new(Arc::clone(&schema.schema), log_columns)?;
        let changelog = append_system(
            schema,
            &log_user,
            Arc::new(UInt64Array::from(log_seqs)),
            Arc::new(Int8Array::from(log_kinds)),
        )?;
        Ok((data, changelog))
    }

    /// The current value of every key (or of the keys in `only`), newest
    /// sequence winning and deletes dropped: the data batches read (user
    /// columns) and, per live key in key order, where its value is.
    async fn merged(
        &self,
        state: &State,
        only: Option<&[(OwnedRow, usize)]>,
    ) -> Result<(Vec<RecordBatch>, Vec<Entry>)> {
        let schema = &state.schema;
        let converter = key_converter(schema)?;
        let wanted: Option<std::collections::HashSet<&OwnedRow>> = only.map(|o| o.iter().map(|(k, _)| k).collect());
        let user_columns = schema.schema.fields().len();
        let mut batches = Vec::new();
        let mut entries: Vec<(Entry, u64, i8)> = Vec::new();
        for meta in &state.manifest.files {
            for batch in file::read(&self.store, &self.dir, meta).await? {
                let b = batches.len();
                let keys = converter.convert_columns(&key_columns(schema, &batch))?;
                let seqs = batch
                    .column(user_columns)
                    .as_primitive_opt::<UInt64Type>()
                    .ok_or_else(|| Error::corrupt(self.dir.child_path(&meta.path), "_seq column is not UInt64"))?;
                let kinds = batch
                    .column(user_columns + 1)
                    .as_primitive_opt::<Int8Type>()
                    .ok_or_else(|| Error::corrupt(self.dir.child_path(&meta.path), "_kind column is not Int8"))?;
                for row in 0..batch.num_rows() {
                    let key = keys.row(row);
                    if let Some(wanted) = &wanted
                        && !wanted.contains(&key.owned())
                    {
                        continue;
                    }
                    entries.push((Entry { key: key.owned(), batch: b, row }, seqs.value(row), kinds.value(row)));
                }
                batches.push(batch.project(&(0..user_columns).collect::<Vec<_>>())?);
            }
        }
        entries.sort_unstable_by(|a, b| a.0.key.cmp(&b.0.key).then(b.1.cmp(&a.1)));
        let mut live = Vec::with_capacity(entries.len());
        let mut last: Option<OwnedRow> = None;
        for (entry, _, kind) in entries {
            if last.as_ref() == Some(&entry.key) {
                continue;
            }
            last = Some(entry.key.clone());
            if kind == ValueKind::Upsert as i8 {
                live.push(entry);
            }
        }
        Ok((batches, live))
    }

    /// The table's rows as of `snapshot` (the latest when `None`).
    ///
    /// # Errors
    /// An unknown or expired snapshot; corrupt files.
    pub async fn scan(&self, snapshot: Option<u64>) -> Result<Vec<RecordBatch>> {
        let state = match snapshot {
            None => self.state.lock().await.clone(),
            Some(id) => {
                let snapshot = self.read_snapshot(id).await?;
                let manifest = self.read_manifest(&snapshot).await?;
                let schema = self.state.lock().await.schema.clone();
                State { schema, latest: Some(snapshot), manifest }
            }
        };
        if !state.schema.has_primary_key() {
            let user = (0..state.schema.schema.fields().len()).collect::<Vec<_>>();
            let mut out = Vec::new();
            for meta in &state.manifest.files {
                for batch in file::read(&self.store, &self.dir, meta).await? {
                    out.push(batch.project(&user)?);
                }
            }
            return Ok(out);
        }
        let (batches, live) = self.merged(&state, None).await?;
        if live.is_empty() {
            return Ok(vec![]);
        }
        let indices: Vec<(usize, usize)> = live.iter().map(|e| (e.batch, e.row)).collect();
        let mut columns = Vec::with_capacity(state.schema.schema.fields().len());
        for column in 0..state.schema.schema.fields().len() {
            let sources: Vec<&dyn Array> = batches.iter().map(|b| b.column(column).as_ref()).collect();
            columns.push(interleave(&sources, &indices)?);
        }
        Ok(vec![RecordBatch::try_new(Arc::clone(&state.schema.schema), columns)?])
    }

    /// Every snapshot still stored, oldest first.
    ///
    /// # Errors
    /// Storage failures; damaged snapshot files.
    pub async fn snapshots(&self) -> Result<Vec<Snapshot>> {
        let dir = self.dir.clone().join("snapshot");
        let metas: Vec<_> = self.store.list(Some(&dir)).try_collect().await.map_err(|e| Error::store(&dir, e))?;
        let mut ids: Vec<u64> = metas
            .iter()
            .filter_map(|m| {
                m.location.filename().and_then(|f| f.strip_prefix("snapshot-")).and_then(|i| i.parse().ok())
            })
            .collect();
        ids.sort_unstable();
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            out.push(self.read_snapshot(id).await?);
        }
        Ok(out)
    }

    /// The live data files at `snapshot` (the latest when `None`).
    ///
    /// # Errors
    /// An unknown snapshot; damaged metadata.
    pub async fn files(&self, snapshot: Option<u64>) -> Result<Vec<FileMeta>> {
        match snapshot {
            None => Ok(self.state.lock().await.manifest.files.clone()),
            Some(id) => Ok(self.read_manifest(&self.read_snapshot(id).await?).await?.files),
        }
    }

    /// Changelog rows of the snapshots after `after` up to `upto` (inclusive;
    /// the latest when `None`), in commit order.
    ///
    /// # Errors
    /// An expired snapshot in the range; corrupt files.
    pub async fn changelog(&self, after: u64, upto: Option<u64>) -> Result<Vec<ChangelogBatch>> {
        let latest = self.state.lock().await.latest.as_ref().map_or(0, |s| s.id);
        let upto = upto.unwrap_or(latest).min(latest);
        let mut out = Vec::new();
        for id in after + 1..=upto {
            let snapshot = self.read_snapshot(id).await?;
            for meta in &snapshot.changelog_files {
                for batch in file::read(&self.store, &self.dir, meta).await? {
                    out.push(ChangelogBatch { snapshot: id, batch });
                }
            }
        }
        Ok(out)
    }
}

/// Where the current value of a key lives.
#[derive(Debug)]
struct Entry {
    key: OwnedRow,
    batch: usize,
    row: usize,
}

fn new_file(relative: String, seq_range: (u64, u64), schema_id: u64) -> file::NewFile {
    file::NewFile { relative, level: 0, seq_range, schema_id }
}

fn key_converter(schema: &TableSchema) -> Result<RowConverter> {
    let fields =
        schema.primary_key.iter().map(|&i| SortField::new(schema.schema.field(i).data_type().clone())).collect();
    Ok(RowConverter::new(fields)?)
}

fn key_columns(schema: &TableSchema, batch: &RecordBatch) -> Vec<ArrayRef> {
    schema.primary_key.iter().map(|&i| Arc::clone(batch.column(i))).collect()
}

fn append_system(schema: &TableSchema, user: &RecordBatch, seqs: ArrayRef, kinds: ArrayRef) -> Result<RecordBatch> {
    let mut columns = user.columns().to_vec();
    columns.push(seqs);
    columns.push(kinds);
    Ok(RecordBatch::try_new(schema.data_file_schema(), columns)?)
}

fn with_system_columns(schema: &TableSchema, rows: &RecordBatch, seqs: ArrayRef, kind: i8) -> Result<RecordBatch> {
    let kinds = Arc::new(Int8Array::from(vec![kind; rows.num_rows()]));
    append_system(schema, rows, seqs, kinds)
}

/// Rows must have the table's columns, in order, and non-null keys.
fn check_rows(schema: &TableSchema, rows: &RecordBatch, kinds: &[ValueKind]) -> Result<()> {
    if kinds.len() != rows.num_rows() {
        return Err(Error::Invalid(format!("{} rows but {} row kinds", rows.num_rows(), kinds.len())));
    }
    let expected = schema.schema.fields();
    let actual = rows.schema();
    if actual.fields().len() != expected.len() {
        return Err(Error::Invalid(format!(
            "rows have {} columns, the table has {}",
            actual.fields().len(),
            expected.len()
        )));
    }
    for (field, column) in expected.iter().zip(rows.columns()) {
        if column.data_type() != field.data_type() {
            return Err(Error::Invalid(format!(
                "column \"{}\" is {} but the rows have {}",
                field.name(),
                field.data_type(),
                column.data_type()
            )));
        }
        if !field.is_nullable() && column.null_count() > 0 {
            return Err(Error::Invalid(format!(
                "null value in column \"{}\" violates not-null constraint",
                field.name()
            )));
        }
    }
    Ok(())
}

async fn get(store: &Arc<dyn ObjectStore>, location: &Path) -> Result<bytes::Bytes> {
    match store.get(location).await {
        Ok(got) => got.bytes().await.map_err(|e| Error::store(location, e)),
        Err(object_store::Error::NotFound { .. }) => Err(Error::NotFound { what: location.to_string() }),
        Err(e) => Err(Error::store(location, e)),
    }
}

/// The largest `<prefix><id>` under `dir`.
async fn max_id(store: &Arc<dyn ObjectStore>, dir: &Path, prefix: &str) -> Result<Option<u64>> {
    let metas: Vec<_> = store.list(Some(dir)).try_collect().await.map_err(|e| Error::store(dir, e))?;
    Ok(metas
        .iter()
        .filter_map(|m| {
            m.location.filename().and_then(|f| f.strip_prefix(prefix)).and_then(|id| id.parse::<u64>().ok())
        })
        .max())
}
