//! Snapshot scans: planning splits over the sorted runs, and reading them.
//!
//! Planning works on the manifest alone (no file is opened):
//! 1. Row groups are pruned by the key index against bounds on the first
//!    primary-key column (from the query's filters).
//! 2. Files are grouped into *sections* of overlapping key ranges. A section
//!    with one sorted run needs no merge: its row groups are read as they
//!    are (dropping tombstones), and it can be cut at any row group. A section
//!    with several runs (level-0 files chained into as few runs as their
//!    overlaps allow, one per higher level) is k-way merged
//!    ([`crate::merge`]); a big one is cut into key ranges at the row-group
//!    boundaries of its largest run.
//! 3. Splits are dealt to partitions, largest first, to balance rows.
//!    Without merges (append-only tables, deletion vectors), the files'
//!    row groups are cut into one split of about equal rows per partition.
//!
//! Reading a split streams one row group per run at a time, only the
//! projected columns (plus key, `_seq` and `_kind` columns when merging).

use std::sync::Arc;

use arrow::array::{ArrayRef, AsArray, BooleanArray, RecordBatch, Scalar};
use arrow::compute::filter_record_batch;
use arrow::compute::kernels::cmp::{gt, lt};
use arrow::datatypes::{Int8Type, SchemaRef};
use arrow::row::{OwnedRow, RowConverter, Rows};
use futures::{StreamExt, TryStreamExt};
use object_store::ObjectStore;
use object_store::path::Path;

use crate::error::Result;
use crate::file::{FileMeta, FileReader, decode_key_index};
use crate::merge::{MergeSpec, RunStream, merge};
use crate::schema::{TableSchema, ValueKind};

mod wire;

/// What to scan.
#[derive(Debug, Clone)]
pub struct ScanRequest {
    /// User columns to return (all when `None`).
    pub projection: Option<Vec<usize>>,
    /// Bounds on the first primary-key column, inclusive, as one-element
    /// arrays of its type. Rows outside may still be returned (the bounds
    /// prune row groups); rows inside are all returned.
    pub lower: Option<ArrayRef>,
    /// See `lower`.
    pub upper: Option<ArrayRef>,
    /// How many partitions to plan for.
    pub partitions: usize,
    /// Rows per batch.
    pub batch_size: usize,
}

impl Default for ScanRequest {
    fn default() -> Self {
        Self { projection: None, lower: None, upper: None, partitions: 1, batch_size: 8192 }
    }
}

/// Row groups of one file to read.
#[derive(Debug, Clone)]
pub(crate) struct FileSlice {
    pub meta: Arc<FileMeta>,
    pub row_groups: Vec<usize>,
}

/// A unit of reading: sorted runs (each a list of file slices in key order)
/// to merge, limited to a key range.
#[derive(Debug, Clone)]
pub struct Split {
    runs: Vec<Vec<FileSlice>>,
    lower: Option<OwnedRow>,
    upper: Option<OwnedRow>,
    rows: u64,
}

/// A planned scan of one snapshot.
#[derive(Debug, Clone)]
pub struct ScanPlan {
    /// The snapshot scanned (`None`: the table was empty).
    pub snapshot: Option<u64>,
    /// Schema of the returned batches.
    pub schema: SchemaRef,
    /// Splits per partition.
    pub partitions: Vec<Vec<Split>>,
    /// Rows in the files read (an upper bound on rows returned).
    pub rows: u64,
    /// Bytes of the row groups read.
    pub bytes: u64,
    pub(crate) table: TableSchema,
    pub(crate) projection: Vec<usize>,
    pub(crate) batch_size: usize,
}

/// Row groups of one data file that read as plain Parquet: no other
/// version of any of their keys is in the scan, no tombstone among them,
/// and the file has the table's column names (no rename since it was
/// written). See [`ScanPlan::split_plain`].
#[derive(Debug, Clone)]
pub struct PlainFile {
    /// Where the file is.
    pub location: Path,
    /// What the manifest says of it (its checked ranges).
    pub meta: Arc<FileMeta>,
    /// The row groups to read, ascending.
    pub row_groups: Vec<usize>,
}

impl Split {
    /// Whether the split's rows are exactly its row groups' rows: one
    /// sorted run, whole row groups, no tombstones, files written under
    /// the table's current column names.
    fn is_plain(&self, table: &TableSchema) -> bool {
        let [run] = self.runs.as_slice() else { return false };
        // With deletion vectors, tombstones are marked deleted like the
        // rows they replace: the reader skips the marked rows.
        let vectors = table.deletion_vectors();
        self.lower.is_none()
            && self.upper.is_none()
            && run.iter().all(|s| {
                (s.meta.deletes == 0 || vectors) && table.renames.iter().all(|r| r.version <= s.meta.schema_id)
            })
    }
}

impl ScanPlan {
    /// The plan cut in two: per partition, the files of its splits that
    /// read as plain Parquet (by any Parquet reader, with predicates,
    /// statistics and page indexes), and a plan of the other splits (read
    /// with [`Table::read_partition`](crate::Table::read_partition): merged,
    /// tombstones dropped, renamed columns mapped).
    pub fn split_plain(&self, dir: &Path) -> (Vec<Vec<PlainFile>>, ScanPlan) {
        let mut rest = self.clone();
        let plain = rest
            .partitions
            .iter_mut()
            .map(|splits| {
                let (plain, merged): (Vec<Split>, Vec<Split>) =
                    std::mem::take(splits).into_iter().partition(|s| s.is_plain(&self.table));
                *splits = merged;
                plain
                    .into_iter()
                    .flat_map(|s| s.runs.into_iter().flatten())
                    .map(|slice| PlainFile {
                        location: crate::file::ChildPath::child_path(dir, &slice.meta.path),
                        meta: slice.meta,
                        row_groups: slice.row_groups,
                    })
                    .collect()
            })
            .collect();
        (plain, rest)
    }

    /// What each returned column's values span over the files the plan
    /// reads (whole files: bounds, not values). Unknown (`None`) where a
    /// file predates statistics or its statistics do not say.
    pub fn column_spans(&self) -> Vec<ColumnSpan> {
        let mut files: Vec<&Arc<FileMeta>> =
            self.partitions.iter().flatten().flat_map(|s| s.runs.iter().flatten()).map(|s| &s.meta).collect();
        files.sort_by(|a, b| a.path.cmp(&b.path));
        files.dedup_by(|a, b| a.path == b.path);
        let decoded: Option<Vec<(&Arc<FileMeta>, &crate::file::FileStats, RecordBatch)>> = files
            .iter()
            .map(|meta| {
                let stats = meta.stats.as_ref()?;
                Some((*meta, stats, stats.bounds().ok()?))
            })
            .collect();
        let unknown = || ColumnSpan { min: None, max: None, nulls: None };
        let Some(decoded) = decoded else { return self.projection.iter().map(|_| unknown()).collect() };
        self.projection
            .iter()
            .map(|&column| {
                let field = self.table.schema.field(column);
                let mut span = ColumnSpan { min: None, max: None, nulls: Some(0) };
                let mut bounded = true;
                for (meta, stats, bounds) in &decoded {
                    let name = crate::file::name_in_file(&self.table.renames, meta.schema_id, field.name());
                    let Ok(index) = bounds.schema().index_of(name) else {
                        // A column added after the file was written: NULLs there.
                        span.nulls = span.nulls.map(|n| n + meta.rows);
                        continue;
                    };
                    span.nulls = span.nulls.zip(stats.nulls[index]).map(|(a, b)| a + b);
                    let values = bounds.column(index);
                    if values.data_type() != field.data_type() || values.null_count() > 0 {
                        bounded = false;
                        continue;
                    }
                    span.min = extreme(span.min.take(), values.slice(0, 1), false);
                    span.max = extreme(span.max.take(), values.slice(1, 1), true);
                    bounded &= span.min.is_some() && span.max.is_some();
                }
                if !bounded {
                    span.min = None;
                    span.max = None;
                }
                span
            })
            .collect()
    }

    /// The user columns the plan returns (indexes into the table's schema).
    pub fn projection(&self) -> &[usize] {
        &self.projection
    }

    /// The table's schema as of the plan (all user columns).
    pub fn table_schema(&self) -> &SchemaRef {
        &self.table.schema
    }

    /// The primary key's column when it is a single column.
    pub fn single_key_column(&self) -> Option<usize> {
        match self.table.primary_key.as_slice() {
            [column] => Some(*column),
            _ => None,
        }
    }

    /// Rows per batch.
    pub fn batch_size(&self) -> usize {
        self.batch_size
    }
}

/// What one column's values span in a scan: bounds as one-element arrays
/// of its type, and its NULLs (each `None` when unknown).
#[derive(Debug, Clone)]
pub struct ColumnSpan {
    pub min: Option<ArrayRef>,
    pub max: Option<ArrayRef>,
    pub nulls: Option<u64>,
}

/// The smaller (`largest`: larger) of a bound so far and another; `None`
/// when they cannot be compared.
fn extreme(so_far: Option<ArrayRef>, other: ArrayRef, largest: bool) -> Option<ArrayRef> {
    let Some(so_far) = so_far else { return Some(other) };
    let other_wins = if largest { gt(&other, &so_far) } else { lt(&other, &so_far) };
    match other_wins.ok()?.value(0) {
        true => Some(other),
        false => Some(so_far),
    }
}

/// One file with its key index converted to rows.
struct Indexed {
    meta: Arc<FileMeta>,
    /// First key of each row group, then the last key (`None`: no index, covers everything).
    keys: Option<Rows>,
    /// Row groups kept after pruning.
    groups: Vec<usize>,
}

impl Indexed {
    fn first(&self) -> Option<arrow::row::Row<'_>> {
        self.keys.as_ref().map(|k| k.row(0))
    }

    fn last(&self) -> Option<arrow::row::Row<'_>> {
        self.keys.as_ref().map(|k| k.row(k.num_rows() - 1))
    }

    /// Live rows of the kept row groups (all of them, without a deletion vector).
    fn rows(&self) -> u64 {
        self.groups.iter().map(|&g| self.meta.live_rows_in(g)).sum()
    }

    fn bytes(&self) -> u64 {
        self.groups.iter().map(|&g| self.meta.row_groups[g].columns.iter().map(|c| c.len).sum::<u64>()).sum()
    }

    /// Kept row groups overlapping `[lower, upper)`.
    fn groups_in(&self, lower: Option<&OwnedRow>, upper: Option<&OwnedRow>) -> Vec<usize> {
        let Some(keys) = &self.keys else { return self.groups.clone() };
        self.groups
            .iter()
            .copied()
            .filter(|&g| {
                lower.is_none_or(|l| keys.row(g + 1) >= l.row()) && upper.is_none_or(|u| keys.row(g) < u.row())
            })
            .collect()
    }
}

pub(crate) fn key_converter(schema: &TableSchema) -> Result<RowConverter> {
    let fields = schema
        .primary_key
        .iter()
        .map(|&i| arrow::row::SortField::new(schema.schema.field(i).data_type().clone()))
        .collect();
    Ok(RowConverter::new(fields)?)
}

/// Plans a scan of `files` (the manifest of `snapshot`).
pub(crate) fn plan(
    dir: &Path,
    table: &TableSchema,
    snapshot: Option<u64>,
    files: &[FileMeta],
    request: &ScanRequest,
) -> Result<ScanPlan> {
    let projection = request.projection.clone().unwrap_or_else(|| (0..table.schema.fields().len()).collect());
    let schema = Arc::new(table.schema.project(&projection)?);
    let converter = key_converter(table)?;
    let keyed = table.has_primary_key();
    let mut indexed = Vec::with_capacity(files.len());
    for meta in files {
        let index = if keyed { decode_key_index(dir, meta)? } else { None };
        let mut groups: Vec<usize> = (0..meta.row_groups.len()).collect();
        let keys = match &index {
            Some(index) => {
                if let Some(keep) = prune(index.column(0), request)? {
                    groups.retain(|&g| keep.value(g));
                }
                Some(converter.convert_columns(index.columns())?)
            }
            None => None,
        };
        if !groups.is_empty() {
            indexed.push(Indexed { meta: Arc::new(meta.clone()), keys, groups });
        }
    }
    let total: u64 = indexed.iter().map(Indexed::rows).sum();
    let bytes = indexed.iter().map(Indexed::bytes).sum();
    let partitions = request.partitions.max(1);
    let target = (total / partitions as u64).max(1);

    let mut splits = Vec::new();
    if !keyed || table.deletion_vectors() {
        // Append-only, or every replaced row marked deleted: no merge, so
        // the files' row groups are cut into splits of about `target` rows
        // across files (whole files as splits left partitions uneven: three
        // files over two partitions read as 2:1).
        cut_single_run(indexed, target, &mut splits);
    } else {
        for section in sections(indexed) {
            let mut runs = runs(section);
            if runs.len() == 1 {
                cut_single_run(runs.remove(0), target, &mut splits);
            } else {
                cut_merged(runs, target, &mut splits);
            }
        }
    }
    // Largest first, each to the partition with the fewest rows.
    splits.sort_by_key(|s| std::cmp::Reverse(s.rows));
    let mut assigned: Vec<(u64, Vec<Split>)> = vec![(0, vec![]); partitions];
    for split in splits {
        let Some(slot) = assigned.iter_mut().min_by_key(|(rows, _)| *rows) else { break };
        slot.0 += split.rows;
        slot.1.push(split);
    }
    Ok(ScanPlan {
        snapshot,
        schema,
        partitions: assigned.into_iter().map(|(_, s)| s).collect(),
        rows: total,
        bytes,
        table: table.clone(),
        projection,
        batch_size: request.batch_size.max(1),
    })
}

/// Row groups to keep by the bounds on the first key column (`None`: all).
fn prune(first_column: &ArrayRef, request: &ScanRequest) -> Result<Option<BooleanArray>> {
    if request.lower.is_none() && request.upper.is_none() {
        return Ok(None);
    }
    let groups = first_column.len() - 1;
    let starts = first_column.slice(0, groups);
    let ends = first_column.slice(1, groups);
    let mut keep = BooleanArray::from(vec![true; groups]);
    if let Some(lower) = &request.lower
        && lower.data_type() == first_column.data_type()
    {
        // Drop groups that end before the lower bound.
        let before = lt(&ends, &Scalar::new(Arc::clone(lower)))?;
        keep = arrow::compute::and(&keep, &arrow::compute::not(&before)?)?;
    }
    if let Some(upper) = &request.upper
        && upper.data_type() == first_column.data_type()
    {
        let after = gt(&starts, &Scalar::new(Arc::clone(upper)))?;
        keep = arrow::compute::and(&keep, &arrow::compute::not(&after)?)?;
    }
    // Nulls (incomparable) keep the group.
    Ok(Some(keep.iter().map(|k| Some(k.unwrap_or(true))).collect()))
}

/// Groups files into sections of overlapping key ranges.
fn sections(mut files: Vec<Indexed>) -> Vec<Vec<Indexed>> {
    if files.iter().any(|f| f.keys.is_none()) {
        return vec![files];
    }
    files.sort_by(|a, b| a.first().cmp(&b.first()));
    let mut out: Vec<Vec<Indexed>> = Vec::new();
    let mut end: Option<OwnedRow> = None;
    for file in files {
        let overlaps = match (&end, file.first()) {
            (Some(end), Some(first)) => first <= end.row(),
            _ => false,
        };
        let last = file.last().map(|r| r.owned());
        if overlaps {
            if let (Some(e), Some(l)) = (&end, &last)
                && l > e
            {
                end = last;
            }
            if let Some(section) = out.last_mut() {
                section.push(file);
            }
        } else {
            end = last;
            out.push(vec![file]);
        }
    }
    out
}

/// Splits a section into sorted runs: each higher level is one run, and
/// level-0 files are chained into as few runs as their overlaps allow (in
/// key order, a file joins the first run whose last file ends before it
/// begins). Which run a file joins does not matter to the merge: the newest
/// `_seq` of a key wins. As a run each, a transaction's files (one per
/// filled write buffer) made the section's largest run one file, so the
/// section was cut only inside that file's key range and one split held
/// nearly everything (a partition did all the work).
fn runs(section: Vec<Indexed>) -> Vec<Vec<Indexed>> {
    let mut levels: std::collections::BTreeMap<u32, Vec<Indexed>> = std::collections::BTreeMap::new();
    let mut level0 = Vec::new();
    for file in section {
        if file.meta.level == 0 {
            level0.push(file);
        } else {
            levels.entry(file.meta.level).or_default().push(file);
        }
    }
    level0.sort_by(|a, b| a.first().cmp(&b.first()));
    let mut out: Vec<Vec<Indexed>> = Vec::new();
    for file in level0 {
        let free = file.first().and_then(|first| {
            out.iter().position(|run| run.last().and_then(Indexed::last).is_some_and(|end| end < first))
        });
        match free {
            Some(run) => out[run].push(file),
            None => out.push(vec![file]),
        }
    }
    out.extend(levels.into_values());
    out
}

fn cut_single_run(run: Vec<Indexed>, target: u64, splits: &mut Vec<Split>) {
    let mut current: Vec<FileSlice> = vec![];
    let mut rows = 0;
    for file in run {
        for &group in &file.groups {
            match current.last_mut() {
                Some(slice) if Arc::ptr_eq(&slice.meta, &file.meta) => slice.row_groups.push(group),
                _ => current.push(FileSlice { meta: Arc::clone(&file.meta), row_groups: vec![group] }),
            }
            rows += file.meta.live_rows_in(group);
            if rows >= target {
                splits.push(Split { runs: vec![std::mem::take(&mut current)], lower: None, upper: None, rows });
                rows = 0;
            }
        }
    }
    if !current.is_empty() {
        splits.push(Split { runs: vec![current], lower: None, upper: None, rows });
    }
}

fn cut_merged(runs: Vec<Vec<Indexed>>, target: u64, splits: &mut Vec<Split>) {
    let rows: u64 = runs.iter().flatten().map(Indexed::rows).sum();
    // Boundaries: row group starts of the largest run, about `target` rows apart.
    let mut bounds: Vec<OwnedRow> = Vec::new();
    if rows > target + target / 2
        && let Some(largest) = runs.iter().max_by_key(|r| r.iter().map(Indexed::rows).sum::<u64>())
    {
        let share = target * largest.iter().map(Indexed::rows).sum::<u64>() / rows.max(1);
        let mut since = 0;
        for file in largest {
            let Some(keys) = &file.keys else { continue };
            for &group in &file.groups {
                if since >= share.max(1) {
                    bounds.push(keys.row(group).owned());
                    since = 0;
                }
                since += file.meta.row_groups[group].rows;
            }
        }
    }
    let mut lower: Option<OwnedRow> = None;
    for upper in bounds.into_iter().map(Some).chain(std::iter::once(None)) {
        let mut split_runs = Vec::with_capacity(runs.len());
        let mut split_rows = 0;
        for run in &runs {
            let mut slices = Vec::new();
            for file in run {
                let groups = file.groups_in(lower.as_ref(), upper.as_ref());
                split_rows += groups.iter().map(|&g| file.meta.row_groups[g].rows).sum::<u64>();
                if !groups.is_empty() {
                    slices.push(FileSlice { meta: Arc::clone(&file.meta), row_groups: groups });
                }
            }
            if !slices.is_empty() {
                split_runs.push(slices);
            }
        }
        if !split_runs.is_empty() {
            splits.push(Split { runs: split_runs, lower: lower.clone(), upper: upper.clone(), rows: split_rows });
        }
        lower = upper;
    }
}

/// Reads one partition of a plan.
pub(crate) fn read(store: Arc<dyn ObjectStore>, dir: Path, plan: &ScanPlan, partition: usize) -> RunStream {
    let splits = plan.partitions.get(partition).cloned().unwrap_or_default();
    let plan = Arc::new(plan.clone());
    futures::stream::iter(splits)
        .map(move |split| read_split(Arc::clone(&store), dir.clone(), Arc::clone(&plan), split))
        .flatten()
        .boxed()
}

fn read_split(store: Arc<dyn ObjectStore>, dir: Path, plan: Arc<ScanPlan>, split: Split) -> RunStream {
    let table = &plan.table;
    let user = table.schema.fields().len();
    let (seq, kind) = (user, user + 1);
    // With deletion vectors, tombstones are among the rows marked deleted.
    let vectors = table.deletion_vectors();
    let has_deletes = !vectors && split.runs.iter().flatten().any(|s| s.meta.deletes > 0);
    if split.runs.len() == 1 && split.lower.is_none() && split.upper.is_none() {
        // One sorted run: no merge, only tombstones (or marked rows) to drop.
        let mut columns = plan.projection.clone();
        if has_deletes {
            columns.push(kind);
        }
        let (read_columns, positions) = sorted_columns(&columns);
        let output: Vec<usize> = positions[..plan.projection.len()].to_vec();
        let kind_position = has_deletes.then(|| positions[plan.projection.len()]);
        let schema = Arc::clone(&plan.schema);
        let run = split.runs.into_iter().next().unwrap_or_default();
        return read_live(store, dir, run, table.data_file_schema(), read_columns, plan.batch_size, vectors)
            .and_then(move |batch| {
                let schema = Arc::clone(&schema);
                let output = output.clone();
                async move {
                    let batch = match kind_position {
                        Some(k) => {
                            let kinds = batch.column(k).as_primitive::<Int8Type>();
                            let live: BooleanArray =
                                kinds.values().iter().map(|&v| Some(v != ValueKind::Delete as i8)).collect();
                            filter_record_batch(&batch, &live)?
                        }
                        None => batch,
                    };
                    let options = arrow::array::RecordBatchOptions::new().with_row_count(Some(batch.num_rows()));
                    let columns = output.iter().map(|&c| Arc::clone(batch.column(c))).collect();
                    Ok(RecordBatch::try_new_with_options(schema, columns, &options)?)
                }
            })
            .boxed();
    }
    let mut columns = plan.projection.clone();
    columns.extend(table.primary_key.iter().copied());
    columns.extend([seq, kind]);
    let (read_columns, positions) = sorted_columns(&columns);
    let projected = plan.projection.len();
    let keys = table.primary_key.len();
    let spec = MergeSpec {
        key_columns: positions[projected..projected + keys].to_vec(),
        seq_column: positions[projected + keys],
        kind_column: positions[projected + keys + 1],
        output_columns: positions[..projected].to_vec(),
        output_schema: Arc::clone(&plan.schema),
        drop_deletes: true,
        lower: split.lower,
        upper: split.upper,
        batch_size: plan.batch_size,
    };
    let converter = match key_converter(table) {
        Ok(c) => Arc::new(c),
        Err(e) => return futures::stream::once(async move { Err(e) }).boxed(),
    };
    let inputs = split
        .runs
        .into_iter()
        .map(|run| {
            let target = table.data_file_schema();
            read_run(Arc::clone(&store), dir.clone(), run, target, read_columns.clone(), plan.batch_size)
        })
        .collect();
    merge(inputs, converter, spec)
}

/// The distinct columns to read, ascending (as Parquet returns them), and
/// where each of `columns` lands in the decoded batches.
fn sorted_columns(columns: &[usize]) -> (Vec<usize>, Vec<usize>) {
    let mut read: Vec<usize> = columns.to_vec();
    read.sort_unstable();
    read.dedup();
    let positions = columns.iter().map(|c| read.binary_search(c).unwrap_or(0)).collect();
    (read, positions)
}

/// Streams the row groups of a run's file slices, one row group at a time.
///
/// `target` is the table's current file schema, and `columns` index it.
pub(crate) fn read_run(
    store: Arc<dyn ObjectStore>,
    dir: Path,
    run: Vec<FileSlice>,
    target: SchemaRef,
    columns: Vec<usize>,
    batch_size: usize,
) -> RunStream {
    read_live(store, dir, run, target, columns, batch_size, false)
}

/// As [`read_run`]; with `live_only`, without the rows the files'
/// deletion vectors mark (pages of only such rows are not decoded).
fn read_live(
    store: Arc<dyn ObjectStore>,
    dir: Path,
    run: Vec<FileSlice>,
    target: SchemaRef,
    columns: Vec<usize>,
    batch_size: usize,
    live_only: bool,
) -> RunStream {
    let columns = Arc::new(columns);
    futures::stream::iter(run)
        .map(move |slice| {
            let store = Arc::clone(&store);
            let dir = dir.clone();
            let columns = Arc::clone(&columns);
            let target = Arc::clone(&target);
            let meta = Arc::clone(&slice.meta);
            futures::stream::once(async move { FileReader::open(&store, &dir, slice.meta, &target).await })
                .map_ok(move |reader| {
                    let columns = Arc::clone(&columns);
                    let meta = Arc::clone(&meta);
                    futures::stream::iter(slice.row_groups.clone()).then(move |group| {
                        let reader = reader.clone();
                        let columns = Arc::clone(&columns);
                        let live = match &meta.deleted {
                            Some(deleted) if live_only => {
                                let ranges = deleted.live_in(meta.group_positions(group));
                                let all = meta.row_groups.get(group).map_or(0, |g| g.rows as usize);
                                match ranges.as_slice() {
                                    [only] if only.start == 0 && only.end == all => None,
                                    _ => Some(ranges.into_iter().flatten().collect::<Vec<usize>>()),
                                }
                            }
                            _ => None,
                        };
                        async move {
                            match live {
                                Some(rows) if rows.is_empty() => Ok(Vec::new()),
                                Some(rows) => reader.read_rows(group, Some(&columns), Some(&rows), batch_size).await,
                                None => reader.read_row_group(group, Some(&columns), batch_size).await,
                            }
                        }
                    })
                })
                .try_flatten()
                .map_ok(|batches| futures::stream::iter(batches.into_iter().map(Ok)))
                .try_flatten()
        })
        .flatten()
        .boxed()
}
