//! Lookups by primary key: the current value of keys a write changes (for
//! its changelog), point reads ([`Table::get`]) and the conflict check of
//! transactions ([`Table::changed_keys_meet`]).
//!
//! A lookup narrows the files' row groups in two steps before it reads a
//! row: the file's key index (the key range of each row group, in the
//! manifest) and then the row group's exact key set — the sorted keys of
//! the group, read once (only the key columns) and kept in memory, at most
//! [`crate::key_sets::KEY_SET_BYTES`] of them per table and
//! [`crate::key_sets::PROCESS_KEY_SET_BYTES`] for all tables of the
//! process. A row group is read whole only when it holds
//! one of the wanted keys. Without the second step every write of new keys
//! into a table whose files' key ranges overlap (many writers, interleaved
//! keys) read and decoded a row group of every file; with it, inserting
//! new keys reads nothing once the key sets are in memory. And the key set
//! says which rows of the group hold the wanted keys, so only those rows
//! are decoded (pages without them are skipped undecompressed), not the
//! group's 64K rows. Files are
//! immutable, so a key set never goes stale; those of files no longer
//! live are dropped at each commit.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, RecordBatch};
use arrow::datatypes::{Int8Type, UInt64Type};
use arrow::row::{Row, RowConverter, Rows};

use crate::error::{Error, Result};
use crate::file::{self, ChildPath, FileMeta, FileReader};
use crate::key_sets::{holds_any, positions, prefix_positions, sorted};
use crate::scan::key_converter;
use crate::schema::{TableSchema, ValueKind};
use crate::snapshot::CommitKind;
use crate::table::{READ_BATCH_ROWS, Table, key_columns};

/// Key sets seeded from a write's own rows when its file is at most this
/// many rows (one row group): small writes never read their keys back.
const SEED_ROWS: usize = 64 * 1024;

/// Files a table keeps open for point reads (each holds its parsed footer:
/// a few KiB to a few hundred KiB).
pub(crate) const OPEN_FILES: usize = 256;

impl Table {
    /// Remembers the keys of a file just written from `data` (its rows, in
    /// key order), so lookups of its row group never read them back.
    pub(crate) fn seed_key_set(&self, schema: &TableSchema, meta: &FileMeta, data: &RecordBatch) -> Result<()> {
        if !schema.has_primary_key() || meta.row_groups.len() != 1 || data.num_rows() > SEED_ROWS {
            return Ok(());
        }
        let rows = key_converter(schema)?.convert_columns(&key_columns(schema, data))?;
        if sorted(&rows) {
            self.key_sets.lock().unwrap_or_else(std::sync::PoisonError::into_inner).insert(
                &meta.path,
                0,
                Arc::new(rows),
            );
        }
        Ok(())
    }

    /// The sorted keys of row group `group` of `meta`, from memory or read
    /// (opening `reader` if it is not open); `None` when the group's keys
    /// are not in order (then nothing can be ruled out).
    async fn key_set(
        &self,
        converter: &RowConverter,
        schema: &TableSchema,
        meta: &FileMeta,
        group: usize,
        reader: &mut Option<FileReader>,
    ) -> Result<Option<Arc<Rows>>> {
        let cached = self.key_sets.lock().unwrap_or_else(std::sync::PoisonError::into_inner).get(&meta.path, group);
        if cached.is_some() {
            return Ok(cached);
        }
        let reader = match reader {
            Some(reader) => reader,
            None => reader.insert(self.open_file(schema, meta).await?),
        };
        let mut rows = converter.empty_rows(meta.row_groups.get(group).map_or(0, |g| g.rows as usize), 0);
        for keys in read_keys(reader, schema, group).await? {
            converter.append(&mut rows, &keys)?;
        }
        if !sorted(&rows) {
            return Ok(None);
        }
        let rows = Arc::new(rows);
        self.key_sets.lock().unwrap_or_else(std::sync::PoisonError::into_inner).insert(
            &meta.path,
            group,
            Arc::clone(&rows),
        );
        Ok(Some(rows))
    }

    /// The row groups of `meta` that hold one of `wanted` (sorted): by the
    /// key index, then by the groups' key sets; with the rows of the group
    /// that hold them where its key set is known (else the group is read whole).
    async fn groups_holding(
        &self,
        converter: &RowConverter,
        schema: &TableSchema,
        meta: &FileMeta,
        wanted: &[Row<'_>],
        reader: &mut Option<FileReader>,
    ) -> Result<Vec<(usize, Option<Vec<usize>>)>> {
        let candidates = match self.key_index(converter, meta)? {
            Some(keys) => groups_with_keys(&keys, wanted),
            None => (0..meta.row_groups.len()).collect(),
        };
        let mut groups = Vec::with_capacity(candidates.len());
        for group in candidates {
            match self.key_set(converter, schema, meta, group, reader).await? {
                Some(set) if set.num_rows() as u64 == meta.row_groups.get(group).map_or(0, |g| g.rows) => {
                    let rows = positions(&set, wanted);
                    if !rows.is_empty() {
                        groups.push((group, Some(rows)));
                    }
                }
                Some(set) if !holds_any(&set, wanted) => {}
                _ => groups.push((group, None)),
            }
        }
        Ok(groups)
    }

    /// The current value of each of `wanted` (sorted) in `files`: the user
    /// columns of the row groups read, and where each live key's newest
    /// version is. Only row groups whose key range holds a wanted key are read.
    ///
    /// With `keep`, the row groups read are decoded whole and kept in
    /// memory ([`crate::hot`]) for the next point read (lookups of writes,
    /// which touch many groups once, do not).
    pub(crate) async fn lookup(
        &self,
        schema: &TableSchema,
        files: &[&FileMeta],
        wanted: &[Row<'_>],
        keep: bool,
    ) -> Result<Found> {
        let converter = key_converter(schema)?;
        let mut wanted_set: Option<HashSet<&[u8]>> = None;
        let mut versions = Versions::default();
        for (f, meta) in files.iter().enumerate() {
            let mut reader = None;
            let groups = self.groups_holding(&converter, schema, meta, wanted, &mut reader).await?;
            if groups.is_empty() {
                continue;
            }
            let wanted_set = wanted_set.get_or_insert_with(|| wanted.iter().map(Row::data).collect());
            let reader = self.reader(schema, meta, reader).await?;
            let wanted = |key: &[u8]| wanted_set.contains(key);
            versions.read(self, schema, &converter, (f, meta), &reader, groups, wanted, keep).await?;
        }
        Ok(versions.live())
    }

    /// `reader` when it is open, else `meta` opened.
    async fn reader(&self, schema: &TableSchema, meta: &FileMeta, reader: Option<FileReader>) -> Result<FileReader> {
        match reader {
            Some(reader) => Ok(reader),
            None => self.open_file(schema, meta).await,
        }
    }

    /// `meta`'s file opened to read as `schema`: kept open (its checked,
    /// parsed footer) for the next point read while it is live, so a read
    /// by key costs the row group's chunks, not the footer again.
    async fn open_file(&self, schema: &TableSchema, meta: &FileMeta) -> Result<FileReader> {
        let target = schema.data_file_schema();
        let open = self.open_files.lock().unwrap_or_else(std::sync::PoisonError::into_inner).get(&meta.path).cloned();
        if let Some(reader) = open.filter(|r| r.reads_as(&target)) {
            return Ok(reader);
        }
        let reader = FileReader::open(&self.store, &self.dir, Arc::new(meta.clone()), &target).await?;
        let mut open = self.open_files.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if open.len() >= OPEN_FILES
            && let Some(evicted) = open.keys().next().cloned()
        {
            open.remove(&evicted);
        }
        open.insert(meta.path.clone(), reader.clone());
        Ok(reader)
    }

    /// The rows (user columns) the latest snapshot holds for the keys in
    /// `keys` (the primary-key columns, in key order); missing keys have
    /// no row. Reads only the row groups whose key index holds a wanted key.
    ///
    /// # Errors
    /// A table without primary key; key columns of other types; read failures.
    pub async fn get(&self, keys: &[ArrayRef]) -> Result<RecordBatch> {
        let state = self.current();
        let schema = &state.schema;
        if !schema.has_primary_key() {
            return Err(Error::Invalid(format!("table {} has no primary key to look rows up by", self.name())));
        }
        let converter = key_converter(schema)?;
        let rows = converter.convert_columns(keys)?;
        let mut wanted: Vec<Row<'_>> = rows.iter().collect();
        wanted.sort();
        wanted.dedup();
        let files: Vec<&FileMeta> = state.manifest.files.iter().collect();
        let (batches, live) = self.lookup(schema, &files, &wanted, true).await?;
        let mut found: Vec<(usize, usize)> = live.into_values().map(|at| (at.batch, at.row)).collect();
        found.sort_unstable();
        gather(schema, &batches, &found)
    }

    /// The rows (user columns) that snapshot `snapshot` (the latest when
    /// `None`) holds for keys whose leading key columns equal one of the
    /// rows of `prefix` (the first `prefix.len()` primary-key columns, in
    /// key order): a probe by key prefix. Only row groups whose key range
    /// holds a wanted prefix are read, and of those (where the group's key
    /// set is known) only the rows that hold one.
    ///
    /// # Errors
    /// A table without primary key; more prefix columns than key columns or
    /// of other types; an expired snapshot; read failures.
    pub async fn get_prefixes(&self, snapshot: Option<u64>, prefix: &[ArrayRef]) -> Result<RecordBatch> {
        let state = self.current();
        let schema = &state.schema;
        if !schema.has_primary_key() || prefix.is_empty() || prefix.len() > schema.primary_key.len() {
            return Err(Error::Invalid(format!(
                "table {} cannot be probed by {} leading key columns",
                self.name(),
                prefix.len()
            )));
        }
        let files: Vec<FileMeta> = match snapshot {
            None => state.manifest.files.clone(),
            Some(id) => {
                let snapshot = self.read_snapshot(id).await?;
                self.read_manifest(&snapshot).await?.files
            }
        };
        let converter = key_converter(schema)?;
        let leading: Vec<arrow::row::SortField> = schema.primary_key[..prefix.len()]
            .iter()
            .map(|&i| arrow::row::SortField::new(schema.schema.field(i).data_type().clone()))
            .collect();
        let prefix_converter = RowConverter::new(leading)?;
        // The row format concatenates self-delimiting column encodings: a
        // key's first columns encode as a byte prefix of the key, and
        // distinct prefixes are never prefixes of one another.
        let rows = prefix_converter.convert_columns(prefix)?;
        let mut wanted: Vec<Row<'_>> = rows.iter().collect();
        wanted.sort();
        wanted.dedup();
        let matching = |key: &[u8]| {
            let at = wanted.partition_point(|p| p.data() <= key);
            at > 0 && key.starts_with(wanted[at - 1].data())
        };
        let mut versions = Versions::default();
        for (f, meta) in files.iter().enumerate() {
            let groups: Vec<usize> = match file::decode_key_index(&self.dir, meta)? {
                Some(index) => {
                    let columns: Vec<ArrayRef> = index.columns()[..prefix.len()].to_vec();
                    groups_with_keys(&prefix_converter.convert_columns(&columns)?, &wanted)
                }
                None => (0..meta.row_groups.len()).collect(),
            };
            let mut reader = None;
            let mut reads = Vec::with_capacity(groups.len());
            for group in groups {
                match self.key_set(&converter, schema, meta, group, &mut reader).await? {
                    Some(set) if set.num_rows() as u64 == meta.row_groups.get(group).map_or(0, |g| g.rows) => {
                        let rows = prefix_positions(&set, &wanted);
                        if !rows.is_empty() {
                            reads.push((group, Some(rows)));
                        }
                    }
                    _ => reads.push((group, None)),
                }
            }
            if reads.is_empty() {
                continue;
            }
            let reader = self.reader(schema, meta, reader).await?;
            versions.read(self, schema, &converter, (f, meta), &reader, reads, matching, false).await?;
        }
        let (batches, live) = versions.live();
        let mut found: Vec<(Vec<u8>, At)> = live.into_iter().collect();
        // In key order.
        found.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        let indexes: Vec<(usize, usize)> = found.into_iter().map(|(_, at)| (at.batch, at.row)).collect();
        gather(schema, &batches, &indexes)
    }

    /// The key index of `meta` as rows, cached (files never change).
    pub(crate) fn key_index(&self, converter: &arrow::row::RowConverter, meta: &FileMeta) -> Result<Option<Arc<Rows>>> {
        let cached =
            self.key_indexes.lock().unwrap_or_else(std::sync::PoisonError::into_inner).get(&meta.path).cloned();
        if let Some(rows) = cached {
            return Ok(Some(rows));
        }
        let Some(index) = file::decode_key_index(&self.dir, meta)? else { return Ok(None) };
        let rows = Arc::new(converter.convert_columns(index.columns())?);
        self.key_indexes
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(meta.path.clone(), Arc::clone(&rows));
        Ok(Some(rows))
    }

    /// Where in `files` the live version of each key that `written` (data
    /// files) holds is: the rows a commit of `written` replaces, to mark in
    /// deletion vectors ([`crate::deletion`]) when the rows the writes found
    /// may have moved since (a transaction that a compaction overtook; a
    /// compaction that writes overtook).
    pub(crate) async fn replaced_rows(
        &self,
        schema: &TableSchema,
        files: &[&FileMeta],
        written: &[&FileMeta],
    ) -> Result<crate::deletion::Marks> {
        let mut marks = crate::deletion::Marks::new();
        if files.is_empty() || written.is_empty() {
            return Ok(marks);
        }
        let converter = key_converter(schema)?;
        let mut keys = Vec::new();
        for meta in written {
            let reader = self.open_file(schema, meta).await?;
            for group in 0..meta.row_groups.len() {
                for columns in read_keys(&reader, schema, group).await? {
                    keys.extend(converter.convert_columns(&columns)?.iter().map(|k| k.owned()));
                }
            }
        }
        keys.sort_unstable();
        keys.dedup();
        let wanted: Vec<Row<'_>> = keys.iter().map(|k| k.row()).collect();
        let (_, live) = self.lookup(schema, files, &wanted, false).await?;
        for at in live.into_values() {
            marks.entry(files[at.file].path.clone()).or_default().push(at.position);
        }
        Ok(marks)
    }

    /// Whether a commit after snapshot `base` (up to `upto`) changed a key
    /// that one of `files` (staged data files) holds.
    pub(crate) async fn changed_keys_meet(
        &self,
        schema: &TableSchema,
        base: u64,
        upto: u64,
        files: &[FileMeta],
    ) -> Result<bool> {
        if !schema.has_primary_key() || files.is_empty() {
            return Ok(false);
        }
        let converter = key_converter(schema)?;
        // Every change of a commit is in its changelog, so its keys are the changed ones.
        let target = schema.changelog_file_schema();
        let mut changed = Vec::new();
        for id in base + 1..=upto {
            let snapshot = self.read_snapshot(id).await?;
            if snapshot.kind == CommitKind::Compact {
                continue;
            }
            for meta in snapshot.changelog_files {
                let groups = meta.row_groups.len();
                let reader = FileReader::open(&self.store, &self.dir, Arc::new(meta), &target).await?;
                for group in 0..groups {
                    for keys in read_keys(&reader, schema, group).await? {
                        changed.extend(converter.convert_columns(&keys)?.iter().map(|k| k.owned()));
                    }
                }
            }
        }
        if changed.is_empty() {
            return Ok(false);
        }
        changed.sort_unstable();
        changed.dedup();
        let wanted: Vec<Row<'_>> = changed.iter().map(|k| k.row()).collect();
        let wanted_set: HashSet<&[u8]> = wanted.iter().map(Row::data).collect();
        let target = schema.data_file_schema();
        for meta in files {
            let mut reader = None;
            for (group, rows) in self.groups_holding(&converter, schema, meta, &wanted, &mut reader).await? {
                if rows.is_some() {
                    // The group's key set holds one of the keys.
                    return Ok(true);
                }
                let reader = match &reader {
                    Some(reader) => reader,
                    None => {
                        reader.insert(FileReader::open(&self.store, &self.dir, Arc::new(meta.clone()), &target).await?)
                    }
                };
                for keys in read_keys(reader, schema, group).await? {
                    let keys = converter.convert_columns(&keys)?;
                    if keys.iter().any(|k| wanted_set.contains(k.data())) {
                        return Ok(true);
                    }
                }
            }
        }
        Ok(false)
    }
}

/// The key columns of row group `group`, in key order.
async fn read_keys(reader: &FileReader, schema: &TableSchema, group: usize) -> Result<Vec<Vec<ArrayRef>>> {
    let mut sorted = schema.primary_key.clone();
    sorted.sort_unstable();
    let batches = reader.read_row_group(group, Some(&sorted), READ_BATCH_ROWS).await?;
    // Columns come back in file order.
    let positions: Vec<usize> =
        schema.primary_key.iter().map(|k| sorted.iter().position(|s| s == k).unwrap_or_default()).collect();
    Ok(batches.iter().map(|b| positions.iter().map(|&p| Arc::clone(b.column(p))).collect()).collect())
}

/// Rows read (user columns) and, per live key, where its newest version is.
pub(crate) type Found = (Vec<RecordBatch>, HashMap<Vec<u8>, At>);

/// Where a version of a key is: among the rows read, and in the table's files.
#[derive(Debug, Clone, Copy)]
pub(crate) struct At {
    /// Batch and row of the rows read.
    pub batch: usize,
    pub row: usize,
    /// Index of its file among the files looked in, and its row there.
    pub file: usize,
    pub position: u64,
}

/// The versions of keys read from a table's files: the user columns of
/// what was read, and per key the newest version seen (seq, kind, where).
#[derive(Default)]
struct Versions {
    batches: Vec<RecordBatch>,
    newest: HashMap<Vec<u8>, (u64, i8, At)>,
}

impl Versions {
    /// Reads row groups `reads` of `meta` (whole, or only the rows given)
    /// and notes the version of every key `wanted` accepts.
    #[allow(clippy::too_many_arguments)]
    async fn read(
        &mut self,
        table: &Table,
        schema: &TableSchema,
        converter: &RowConverter,
        (file, meta): (usize, &FileMeta),
        reader: &FileReader,
        reads: Vec<(usize, Option<Vec<usize>>)>,
        wanted: impl Fn(&[u8]) -> bool,
        keep: bool,
    ) -> Result<()> {
        let user_columns = schema.schema.fields().len();
        let projection: Vec<usize> = (0..user_columns).collect();
        for (group, rows) in reads {
            let start = meta.group_positions(group).start;
            // Rows of the group read so far (the index into `rows` when given).
            let mut read = 0usize;
            let batches = match crate::hot::get(&meta.path, group, schema.id) {
                Some(decoded) => crate::hot::select(&decoded, rows.as_deref())?,
                None if keep && crate::hot::admit(&meta.path, group, schema.id) => {
                    let decoded = Arc::new(reader.read_rows(group, None, None, READ_BATCH_ROWS).await?);
                    crate::hot::insert(&meta.path, group, schema.id, Arc::clone(&decoded));
                    crate::hot::select(&decoded, rows.as_deref())?
                }
                None => reader.read_rows(group, None, rows.as_deref(), READ_BATCH_ROWS).await?,
            };
            for batch in batches {
                let b = self.batches.len();
                let keys = converter.convert_columns(&key_columns(schema, &batch))?;
                let location = || table.dir.child_path(&meta.path);
                let seqs = batch
                    .column(user_columns)
                    .as_primitive_opt::<UInt64Type>()
                    .ok_or_else(|| Error::corrupt(location(), "_seq column is not UInt64"))?;
                let kinds = batch
                    .column(user_columns + 1)
                    .as_primitive_opt::<Int8Type>()
                    .ok_or_else(|| Error::corrupt(location(), "_kind column is not Int8"))?;
                for row in 0..batch.num_rows() {
                    let key = keys.row(row);
                    if !wanted(key.data()) {
                        continue;
                    }
                    let seq = seqs.value(row);
                    let in_group = match &rows {
                        Some(rows) => rows.get(read + row).copied().unwrap_or_default(),
                        None => read + row,
                    };
                    let at = At { batch: b, row, file, position: start + in_group as u64 };
                    match self.newest.get_mut(key.data()) {
                        Some(entry) if entry.0 >= seq => {}
                        Some(entry) => *entry = (seq, kinds.value(row), at),
                        None => {
                            self.newest.insert(key.data().to_vec(), (seq, kinds.value(row), at));
                        }
                    }
                }
                read += batch.num_rows();
                self.batches.push(batch.project(&projection)?);
            }
        }
        Ok(())
    }

    /// The batches read, and where each key's newest version is, for keys
    /// whose newest version is a row (not a delete).
    fn live(self) -> Found {
        let live = self
            .newest
            .into_iter()
            .filter(|(_, (_, kind, _))| *kind == ValueKind::Upsert as i8)
            .map(|(key, (_, _, at))| (key, at))
            .collect();
        (self.batches, live)
    }
}

/// The rows at `indexes` (batch, row) of `batches`, as the table's user columns.
fn gather(schema: &TableSchema, batches: &[RecordBatch], indexes: &[(usize, usize)]) -> Result<RecordBatch> {
    let mut columns = Vec::with_capacity(schema.schema.fields().len());
    for c in 0..schema.schema.fields().len() {
        let arrays: Vec<&dyn Array> = batches.iter().map(|b| b.column(c).as_ref()).collect();
        columns.push(if arrays.is_empty() {
            arrow::array::new_empty_array(schema.schema.field(c).data_type())
        } else {
            arrow::compute::interleave(&arrays, indexes)?
        });
    }
    Ok(RecordBatch::try_new(Arc::clone(&schema.schema), columns)?)
}

/// Row groups (by their key ranges in `index`: first key of each group,
/// then the file's last key) that may hold one of `wanted` (sorted).
fn groups_with_keys(index: &Rows, wanted: &[Row<'_>]) -> Vec<usize> {
    let groups = index.num_rows().saturating_sub(1);
    (0..groups)
        .filter(|&g| {
            let first = index.row(g);
            let next = index.row(g + 1);
            let at = wanted.partition_point(|k| *k < first);
            wanted.get(at).is_some_and(|k| *k <= next)
        })
        .collect()
}
