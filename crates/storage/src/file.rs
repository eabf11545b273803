//! Parquet files on object storage, written whole and read by ranges, every
//! range checked.
//!
//! A file is written in one `put`. Its [`FileMeta`] records, besides counts,
//! the byte range and CRC-32 of every column chunk of every row group and of
//! the footer (everything after the last column chunk: page indexes and the
//! Parquet metadata). A reader fetches only the footer and the column chunks
//! it decodes — one row group at a time, only the projected columns — and
//! checks each range's length and checksum before Parquet sees a byte, so a
//! truncated, altered or missing file is an [`Error::Corrupt`] naming it,
//! never a panic or a wrong answer. Parquet itself has no page checksums in
//! parquet-rs, which is why the ranges are checksummed here.
//!
//! Each file also carries a key index (the first primary key of every row
//! group and the last key of the file), so scans and lookups skip row groups
//! by key without reading them.

use std::ops::Range;
use std::sync::Arc;

use arrow::array::{Array as _, ArrayRef, AsArray as _, RecordBatch, UInt32Array};
use arrow::compute::{concat, take};
use arrow::datatypes::DataType;
use arrow::datatypes::{Schema, SchemaRef};
use base64::Engine as _;
use bytes::Bytes;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload, WriteMultipart};
use parquet::arrow::arrow_reader::{
    ArrowReaderMetadata, ArrowReaderOptions, ParquetRecordBatchReaderBuilder, RowSelection, RowSelector,
};
use parquet::arrow::{ArrowWriter, ProjectionMask};
use parquet::basic::{Compression, Encoding, Type as PhysicalType};
use parquet::column::writer::ColumnCloseResult;
use parquet::errors::ParquetError;
use parquet::file::metadata::ParquetMetaData;
use parquet::file::properties::WriterProperties;
use parquet::file::reader::{ChunkReader, Length};
use parquet::file::writer::SerializedFileWriter;
use parquet::schema::types::ColumnPath;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Default rows per Parquet row group: the unit of reading, pruning and splitting.
pub const ROW_GROUP_ROWS: usize = 64 * 1024;

/// A checked byte range of a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Chunk {
    /// Offset in the file.
    pub offset: u64,
    /// Length in bytes.
    pub len: u64,
    /// CRC-32 of the bytes.
    pub crc32: u32,
}

impl Chunk {
    fn range(&self) -> Range<u64> {
        self.offset..self.offset + self.len
    }
}

/// One row group: its row count and a checked range per leaf column.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RowGroup {
    /// Rows in the row group.
    pub rows: u64,
    /// Column chunks, one per Parquet leaf column.
    pub columns: Vec<Chunk>,
}

/// One Parquet file of a table: a sorted run (data) or a commit's changes (changelog).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileMeta {
    /// Path relative to the table directory, e.g. `data/<uuid>.parquet`.
    pub path: String,
    /// LSM level: 0 for new runs, 1..=max for compacted runs (changelog files use 0).
    pub level: u32,
    /// Rows in the file.
    pub rows: u64,
    /// Rows that are deletes (tombstones).
    #[serde(default)]
    pub deletes: u64,
    /// Size in bytes.
    pub bytes: u64,
    /// Smallest and largest sequence number in the file.
    pub min_seq: u64,
    /// See `min_seq`.
    pub max_seq: u64,
    /// Schema version the file was written with.
    pub schema_id: u64,
    /// Everything after the last column chunk (page indexes, Parquet footer).
    pub footer: Chunk,
    /// The row groups.
    pub row_groups: Vec<RowGroup>,
    /// Key index: the key columns of the first row of every row group and
    /// of the last row of the file, as a base64 Arrow IPC stream. `None`
    /// for files without a primary key order (append-only tables, changelogs).
    #[serde(default)]
    pub key_index: Option<String>,
    /// Per column, what its values span (for the query planner's estimates
    /// and pruning); `None` for files written before it was recorded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stats: Option<FileStats>,
    /// Rows no longer live ([`crate::deletion`]): tables with deletion
    /// vectors mark here each row a later version or a delete replaced, and
    /// the file's own tombstones.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deleted: Option<crate::deletion::DeletionVector>,
}

impl FileMeta {
    /// Rows of the file that are live (not marked in its deletion vector).
    pub fn live_rows(&self) -> u64 {
        self.rows - self.deleted.as_ref().map_or(0, |d| d.len())
    }

    /// The positions in the file of row group `group`'s rows.
    pub fn group_positions(&self, group: usize) -> std::ops::Range<u64> {
        let start: u64 = self.row_groups[..group].iter().map(|g| g.rows).sum();
        start..start + self.row_groups.get(group).map_or(0, |g| g.rows)
    }

    /// Live rows of row group `group`.
    pub fn live_rows_in(&self, group: usize) -> u64 {
        let rows = self.row_groups.get(group).map_or(0, |g| g.rows);
        rows - self.deleted.as_ref().map_or(0, |d| d.count_in(self.group_positions(group)))
    }
}

/// What the values of each column of a file span, from the Parquet
/// statistics of its row groups: bounds, not necessarily values (long
/// strings are truncated to a shorter bound).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileStats {
    /// Base64 Arrow IPC of one batch of the file's columns (all nullable):
    /// row 0 the smallest value of each column, row 1 the largest; NULL
    /// where unknown (no statistics, or only NULLs).
    pub bounds: String,
    /// NULLs per column (`None`: unknown).
    pub nulls: Vec<Option<u64>>,
}

impl FileStats {
    /// The statistics of a file Parquet just wrote (`None` when its
    /// schema cannot be read back as Arrow).
    pub(crate) fn of(metadata: &ParquetMetaData) -> Option<Self> {
        use arrow::compute::{SortOptions, sort_to_indices};
        use parquet::arrow::arrow_reader::statistics::StatisticsConverter;
        let descr = metadata.file_metadata().schema_descr();
        let schema =
            parquet::arrow::parquet_to_arrow_schema(descr, metadata.file_metadata().key_value_metadata()).ok()?;
        let groups = metadata.row_groups();
        let mut fields = Vec::with_capacity(schema.fields().len());
        let mut columns = Vec::with_capacity(schema.fields().len());
        let mut nulls = Vec::with_capacity(schema.fields().len());
        for field in schema.fields() {
            let field = field.as_ref().clone().with_nullable(true);
            let bound = |array: Option<ArrayRef>, descending: bool| -> ArrayRef {
                // A row group without a bound makes the file's unknown.
                let best = array.filter(|a| a.null_count() == 0 && !a.is_empty()).and_then(|a| {
                    let options = SortOptions { descending, nulls_first: false };
                    let at = sort_to_indices(&a, Some(options), Some(1)).ok()?;
                    take(&a, &at, None).ok()
                });
                best.unwrap_or_else(|| arrow::array::new_null_array(field.data_type(), 1))
            };
            let converter = StatisticsConverter::try_new(field.name(), &schema, descr).ok();
            let (min, max, null_count) = match &converter {
                Some(c) => (
                    bound(c.row_group_mins(groups).ok(), false),
                    bound(c.row_group_maxes(groups).ok(), true),
                    c.row_group_null_counts(groups)
                        .ok()
                        .filter(|n| n.null_count() == 0)
                        .map(|n| n.values().iter().sum::<u64>()),
                ),
                None => (bound(None, false), bound(None, true), None),
            };
            // Types whose statistics Arrow reads as another type: unknown.
            if min.data_type() != field.data_type() || max.data_type() != field.data_type() {
                columns.push(arrow::array::new_null_array(field.data_type(), 2));
            } else {
                columns.push(concat(&[min.as_ref(), max.as_ref()]).ok()?);
            }
            nulls.push(null_count);
            fields.push(field);
        }
        let batch = RecordBatch::try_new(Arc::new(Schema::new(fields)), columns).ok()?;
        Some(Self { bounds: encode_batch(&batch).ok()?, nulls })
    }

    /// The bounds: row 0 the smallest values, row 1 the largest.
    ///
    /// # Errors
    /// Bytes that do not decode (a damaged manifest).
    pub fn bounds(&self) -> Result<RecordBatch> {
        let bad = |e: &dyn std::fmt::Display| Error::Invalid(format!("bad file statistics: {e}"));
        let ipc = base64::engine::general_purpose::STANDARD.decode(&self.bounds).map_err(|e| bad(&e))?;
        let mut reader =
            arrow::ipc::reader::StreamReader::try_new(std::io::Cursor::new(ipc), None).map_err(|e| bad(&e))?;
        let batch = reader.next().transpose().map_err(|e| bad(&e))?.ok_or_else(|| bad(&"empty"))?;
        if batch.num_rows() != 2 || batch.num_columns() != self.nulls.len() {
            return Err(bad(&"shape"));
        }
        Ok(batch)
    }
}

impl FileMeta {
    /// The smallest and the largest key in the file, as text (`(a, b)` for
    /// composite keys); `None` for files without a key index.
    pub fn key_range(&self) -> Option<(String, String)> {
        let index = decode_key_index(&Path::from(""), self).ok().flatten()?;
        let render = |row: usize| {
            let parts: Vec<String> = index
                .columns()
                .iter()
                .map(|c| arrow::util::display::array_value_to_string(c, row).unwrap_or_default())
                .collect();
            if parts.len() == 1 { parts.concat() } else { format!("({})", parts.join(", ")) }
        };
        Some((render(0), render(index.num_rows().checked_sub(1)?)))
    }
}

/// Where and what a new file is.
pub(crate) struct NewFile {
    /// Path relative to the table directory.
    pub relative: String,
    /// LSM level.
    pub level: u32,
    /// Key columns (indexes into the batch schema) when rows are sorted by key.
    pub key_columns: Vec<usize>,
    /// Schema version of its rows.
    pub schema_id: u64,
    /// Rows per row group.
    pub row_group_rows: usize,
    /// Index of the `_seq` column and of the `_kind` column, and the `_kind` code of deletes.
    pub seq_kind: (usize, usize, Option<i8>),
    /// Written as level-0 files are at every level (a table read only by
    /// key and rewritten often: [`crate::TableOptions::no_changelog`]).
    pub light: bool,
    /// Its tombstones go to its deletion vector ([`crate::deletion`]).
    pub mark_deletes: bool,
    /// Rows the whole file will hold, when known as it is created (a
    /// commit's file, written from one batch).
    pub rows: Option<usize>,
}

impl NewFile {
    /// Whether its string and binary columns get dictionaries
    /// ([`writer_properties`]): compacted files, and level-0 files of at
    /// least a row group (a big write's, read by queries as a compacted
    /// file is until compaction, and kept as they are when compaction
    /// concatenates them); never a light table's.
    fn dictionaries(&self) -> bool {
        !self.light && (self.level > 0 || self.rows.is_some_and(|rows| rows >= self.row_group_rows))
    }
}

/// Builds a Parquet file batch by batch, then stores it: in memory and with
/// one put (commits' files, which are small), or streamed out as a
/// multipart upload a few MiB at a time ([`FileWriter::streaming`]: the big
/// files compaction writes), so memory stays bounded whatever the file's size.
pub(crate) struct FileWriter {
    file: NewFile,
    schema: SchemaRef,
    writer: ArrowWriter<SharedBuffer>,
    /// The bytes not yet handed to the upload (all of them without one).
    buffer: SharedBuffer,
    upload: Option<Upload>,
    rows: u64,
    deletes: u64,
    /// Positions of the tombstones, when the file marks them deleted.
    delete_positions: Vec<u64>,
    seq_range: Option<(u64, u64)>,
    /// Key columns of every row group's first row, then of the last row written.
    firsts: Vec<Vec<ArrayRef>>,
    last: Option<Vec<ArrayRef>>,
}

impl FileWriter {
    pub(crate) fn new(file: NewFile, schema: &SchemaRef) -> Result<Self> {
        let props = writer_properties(file.row_group_rows, file.dictionaries(), schema);
        let buffer = SharedBuffer::default();
        let writer = ArrowWriter::try_new(buffer.clone(), Arc::clone(schema), Some(props))
            .map_err(|e| Error::Invalid(format!("cannot write {}: {e}", file.relative)))?;
        Ok(Self {
            file,
            schema: Arc::clone(schema),
            writer,
            buffer,
            upload: None,
            rows: 0,
            deletes: 0,
            delete_positions: Vec::new(),
            seq_range: None,
            firsts: vec![],
            last: None,
        })
    }

    /// Like [`FileWriter::new`], but the file streams out to `dir/relative`
    /// as it is written: call [`FileWriter::send_parts`] after writes.
    pub(crate) async fn streaming(
        file: NewFile,
        schema: &SchemaRef,
        store: &Arc<dyn ObjectStore>,
        dir: &Path,
    ) -> Result<Self> {
        Self::streaming_in_parts(file, schema, store, dir, UPLOAD_PART_BYTES).await
    }

    async fn streaming_in_parts(
        file: NewFile,
        schema: &SchemaRef,
        store: &Arc<dyn ObjectStore>,
        dir: &Path,
        part_bytes: usize,
    ) -> Result<Self> {
        let location = dir.child_path(&file.relative);
        let mut writer = Self::new(file, schema)?;
        let upload = store.put_multipart(&location).await.map_err(|e| Error::store(&location, e))?;
        writer.upload = Some(Upload {
            parts: WriteMultipart::new_with_chunk_size(upload, part_bytes),
            part_bytes,
            location,
            sent: 0,
            row_groups: Vec::new(),
        });
        Ok(writer)
    }

    /// Rows written so far.
    pub(crate) fn rows(&self) -> u64 {
        self.rows
    }

    /// For a streaming writer: checksums the row groups Parquet has flushed
    /// and hands their bytes to the upload once a part's worth is buffered,
    /// waiting while too many parts are in flight.
    pub(crate) async fn send_parts(&mut self) -> Result<()> {
        let Some(upload) = &mut self.upload else { return Ok(()) };
        let flushed = self.writer.flushed_row_groups();
        if flushed.len() == upload.row_groups.len() {
            return Ok(());
        }
        let buffered = self.buffer.len()?;
        if buffered < upload.part_bytes {
            return Ok(());
        }
        let mut data_end = upload.sent;
        {
            let bytes = self.buffer.0.lock().map_err(|_| Error::Invalid("buffer poisoned".into()))?;
            for group in &flushed[upload.row_groups.len()..] {
                // Parquet writes through a small buffer of its own: the end of a row group
                // it reports flushed may not have reached ours yet (then: next time).
                let end = group.columns().iter().map(|c| c.byte_range().0 + c.byte_range().1).max().unwrap_or(0);
                if end > upload.sent + bytes.len() as u64 {
                    break;
                }
                let (row_group, end) = checksum_row_group(&self.file.relative, &bytes, upload.sent, group)?;
                upload.row_groups.push(row_group);
                data_end = data_end.max(end);
            }
        }
        if data_end == upload.sent {
            return Ok(());
        }
        // Every byte before the end of the last flushed row group is final.
        let ready = self.buffer.take_front((data_end - upload.sent) as usize)?;
        upload.sent = data_end;
        upload.parts.put(Bytes::from(ready));
        upload.parts.wait_for_capacity(UPLOADS_IN_FLIGHT).await.map_err(|e| Error::store(&upload.location, e))
    }

    pub(crate) fn write(&mut self, batch: &RecordBatch) -> Result<()> {
        if batch.num_rows() == 0 {
            return Ok(());
        }
        let (seq_column, kind_column, delete_code) = self.file.seq_kind;
        let seqs = batch.column(seq_column).as_any().downcast_ref::<arrow::array::UInt64Array>();
        if let Some(seqs) = seqs {
            let (lo, hi) = seqs.values().iter().fold((u64::MAX, 0), |(lo, hi), &s| (lo.min(s), hi.max(s)));
            self.seq_range = Some(self.seq_range.map_or((lo, hi), |(a, b)| (a.min(lo), b.max(hi))));
        }
        if let Some(code) = delete_code
            && let Some(kinds) = batch.column(kind_column).as_any().downcast_ref::<arrow::array::Int8Array>()
        {
            self.deletes += kinds.values().iter().filter(|&&k| k == code).count() as u64;
            if self.file.mark_deletes {
                let rows = self.rows;
                self.delete_positions.extend(
                    kinds.values().iter().enumerate().filter(|(_, k)| **k == code).map(|(i, _)| rows + i as u64),
                );
            }
        }
        if !self.file.key_columns.is_empty() {
            // Row groups start every ROW_GROUP_ROWS rows of the file.
            let start = self.rows as usize;
            let end = start + batch.num_rows();
            let group = self.file.row_group_rows.max(1);
            let first_in = start.div_ceil(group) * group;
            for row in (first_in..end).step_by(group) {
                let first = self.key_arrays(batch, &UInt32Array::from(vec![(row - start) as u32]))?;
                self.firsts.push(first);
            }
            let last = UInt32Array::from(vec![(batch.num_rows() - 1) as u32]);
            self.last = Some(self.key_arrays(batch, &last)?);
        }
        self.rows += batch.num_rows() as u64;
        self.writer.write(batch).map_err(|e| Error::Invalid(format!("cannot write {}: {e}", self.file.relative)))
    }

    fn key_arrays(&self, batch: &RecordBatch, rows: &UInt32Array) -> Result<Vec<ArrayRef>> {
        Ok(self.file.key_columns.iter().map(|&c| take(batch.column(c), rows, None)).collect::<Result<Vec<_>, _>>()?)
    }

    /// Finishes the file and stores it at `dir/relative`.
    pub(crate) async fn finish(self, store: &Arc<dyn ObjectStore>, dir: &Path) -> Result<FileMeta> {
        let Self {
            file,
            schema: batch_schema,
            writer,
            buffer,
            upload,
            rows,
            deletes,
            delete_positions,
            seq_range,
            mut firsts,
            last,
        } = self;
        let relative = file.relative.clone();
        let metadata = writer.close().map_err(|e| Error::Invalid(format!("cannot write {relative}: {e}")))?;
        let buffer = buffer.take()?;
        let (sent, done) = upload.as_ref().map_or((0, &[][..]), |u| (u.sent, u.row_groups.as_slice()));
        let (row_groups, footer) = layout(&relative, &buffer, sent, done, &metadata)?;
        let key_index = match last {
            Some(last) if !file.key_columns.is_empty() => {
                firsts.push(last);
                Some(encode_key_index(&batch_schema, &file.key_columns, &firsts)?)
            }
            _ => None,
        };
        let (min_seq, max_seq) = seq_range.unwrap_or((0, 0));
        let meta = FileMeta {
            path: relative.clone(),
            level: file.level,
            rows,
            deletes,
            bytes: sent + buffer.len() as u64,
            min_seq,
            max_seq,
            schema_id: file.schema_id,
            footer,
            row_groups,
            key_index,
            stats: FileStats::of(&metadata),
            deleted: (!delete_positions.is_empty())
                .then(|| crate::deletion::DeletionVector::from_positions(delete_positions)),
        };
        match upload {
            Some(Upload { mut parts, location, .. }) => {
                parts.put(Bytes::from(buffer));
                parts.finish().await.map_err(|e| Error::store(&location, e))?;
            }
            None => {
                let location = dir.child_path(&relative);
                // Durable with the snapshot that names it (the claim's sync covers it).
                store
                    .put_opts(&location, PutPayload::from(buffer), crate::durable::deferred())
                    .await
                    .map_err(|e| Error::store(&location, e))?;
            }
        }
        Ok(meta)
    }
}

/// Parts of a streamed file: 8 MiB (S3 wants at least 5 MiB but the last).
const UPLOAD_PART_BYTES: usize = 8 << 20;

/// Parts of one file uploading at once.
const UPLOADS_IN_FLIGHT: usize = 2;

/// A streaming [`FileWriter`]'s upload.
struct Upload {
    parts: WriteMultipart,
    part_bytes: usize,
    location: Path,
    /// Bytes of the file handed to the upload so far.
    sent: u64,
    /// The row groups in those bytes, checksummed.
    row_groups: Vec<RowGroup>,
}

/// The chunks of `group` checksummed from `bytes`, the file's bytes from
/// offset `base` on; and where the row group ends.
fn checksum_row_group(
    relative: &str,
    bytes: &[u8],
    base: u64,
    group: &parquet::file::metadata::RowGroupMetaData,
) -> Result<(RowGroup, u64)> {
    let mut columns = Vec::with_capacity(group.num_columns());
    let mut end_of_group = base;
    for column in group.columns() {
        let (offset, len) = column.byte_range();
        let end = offset + len;
        let chunk = offset
            .checked_sub(base)
            .and_then(|start| bytes.get(start as usize..(end - base) as usize))
            .ok_or_else(|| Error::Invalid(format!("cannot write {relative}: column chunk outside the file")))?;
        columns.push(Chunk { offset, len, crc32: crc32fast::hash(chunk) });
        end_of_group = end_of_group.max(end);
    }
    Ok((RowGroup { rows: group.num_rows() as u64, columns }, end_of_group))
}

/// Where the row groups' column chunks and the footer of a file are, with
/// their checksums.
/// The checksummed layout of a finished file whose bytes from offset `base`
/// on are `buffer`; `done` are the row groups checksummed already (those in
/// the bytes before `base`).
fn layout(
    relative: &str,
    buffer: &[u8],
    base: u64,
    done: &[RowGroup],
    metadata: &ParquetMetaData,
) -> Result<(Vec<RowGroup>, Chunk)> {
    let mut row_groups = done.to_vec();
    let mut data_end = base.max(4);
    for group in &metadata.row_groups()[done.len()..] {
        let (row_group, end) = checksum_row_group(relative, buffer, base, group)?;
        row_groups.push(row_group);
        data_end = data_end.max(end);
    }
    let footer_bytes = buffer
        .get((data_end - base) as usize..)
        .ok_or_else(|| Error::Invalid(format!("cannot write {relative}: footer outside the file")))?;
    let footer = Chunk { offset: data_end, len: footer_bytes.len() as u64, crc32: crc32fast::hash(footer_bytes) };
    Ok((row_groups, footer))
}

/// Concatenates `sources` (data files of one definition, with no keys in
/// common, in key order) into the file `file`, by copying their column
/// chunks: nothing is decoded or encoded. Returns `None` when a source was
/// written with another definition than `target` (concatenate by reading
/// and writing instead).
pub(crate) async fn concatenate(
    store: &Arc<dyn ObjectStore>,
    dir: &Path,
    sources: &[FileMeta],
    file: NewFile,
    target: &SchemaRef,
) -> Result<Option<FileMeta>> {
    let relative = file.relative.clone();
    let failed = |e: ParquetError| Error::Invalid(format!("cannot write {relative}: {e}"));
    let buffer = SharedBuffer::default();
    let mut writer: Option<SerializedFileWriter<SharedBuffer>> = None;
    let mut key_parts: Vec<RecordBatch> = Vec::with_capacity(sources.len() + 1);
    for (i, meta) in sources.iter().enumerate() {
        let reader = FileReader::open(store, dir, Arc::new(meta.clone()), target).await?;
        if reader.mapping.is_some() {
            return Ok(None);
        }
        let parquet = reader.parquet.metadata();
        let writer = match &mut writer {
            Some(w) => w,
            None => {
                let props = writer_properties(file.row_group_rows, file.dictionaries(), target)
                    .into_builder()
                    .set_key_value_metadata(parquet.file_metadata().key_value_metadata().cloned())
                    .build();
                let root = parquet.file_metadata().schema_descr().root_schema_ptr();
                writer.insert(SerializedFileWriter::new(buffer.clone(), root, Arc::new(props)).map_err(failed)?)
            }
        };
        let chunks: Vec<Chunk> = meta.row_groups.iter().flat_map(|g| g.columns.iter().copied()).collect();
        let fetched = fetch(store, &reader.location, meta, &chunks).await?;
        let sparse = Sparse { len: meta.bytes, ranges: chunks.iter().map(|c| c.offset).zip(fetched).collect() };
        for group in parquet.row_groups() {
            let mut out = writer.next_row_group().map_err(failed)?;
            for column in group.columns() {
                let close = ColumnCloseResult {
                    bytes_written: column.compressed_size() as u64,
                    rows_written: group.num_rows() as u64,
                    metadata: column.clone(),
                    bloom_filter: None,
                    column_index: None,
                    offset_index: None,
                };
                out.append_column(&sparse, close).map_err(|e| Error::corrupt(&reader.location, e))?;
            }
            out.close().map_err(failed)?;
        }
        if let Some(index) = decode_key_index(dir, meta)? {
            // First keys of the row groups; the last key only of the last file.
            let keep = if i + 1 == sources.len() { index.num_rows() } else { index.num_rows() - 1 };
            key_parts.push(index.slice(0, keep));
        }
    }
    let Some(writer) = writer else { return Ok(None) };
    let metadata = writer.close().map_err(failed)?;
    let buffer = buffer.take()?;
    let (row_groups, footer) = layout(&relative, &buffer, 0, &[], &metadata)?;
    let key_index = match key_parts.first() {
        Some(first) if key_parts.len() == sources.len() && !file.key_columns.is_empty() => {
            let batch = arrow::compute::concat_batches(&first.schema(), &key_parts)?;
            Some(encode_batch(&batch)?)
        }
        _ => None,
    };
    let meta = FileMeta {
        path: relative.clone(),
        level: file.level,
        rows: sources.iter().map(|f| f.rows).sum(),
        deletes: sources.iter().map(|f| f.deletes).sum(),
        bytes: buffer.len() as u64,
        min_seq: sources.iter().map(|f| f.min_seq).min().unwrap_or(0),
        max_seq: sources.iter().map(|f| f.max_seq).max().unwrap_or(0),
        schema_id: file.schema_id,
        footer,
        row_groups,
        key_index,
        stats: FileStats::of(&metadata),
        // The caller shifts the sources' vectors ([`crate::deletion`]).
        deleted: None,
    };
    let location = dir.child_path(&relative);
    // Durable with the snapshot that names it (the claim's sync covers it).
    store
        .put_opts(&location, PutPayload::from(buffer), crate::durable::deferred())
        .await
        .map_err(|e| Error::store(&location, e))?;
    Ok(Some(meta))
}

/// The Parquet settings of a data or changelog file, with or without
/// dictionaries for its string and binary columns ([`NewFile::dictionaries`]).
///
/// Columns Parquet stores as 32- or 64-bit integers (integers, dates,
/// times, timestamps, `numeric` of up to 18 digits) are
/// delta-encoded (`DELTA_BINARY_PACKED`: differences from the previous
/// value, bit-packed per block of 32 values at the width the block needs)
/// and not compressed, at every level. Keys written in order, dates and
/// prices of a bounded range take a few bits a value, and they decode
/// without a decompression pass: TPC-H `lineitem` (SF1), read by
/// DataFusion with 2 partitions, plain + LZ4 (what these columns were) vs
/// delta-encoded: 288 vs 191 MB, `sum` of four decimal columns 88 vs 42 ms,
/// q1 324 vs 232 ms, q6 110 vs 80 ms (uncompressed plain: 526 MB, 71 /
/// 267 / 101 ms — much of a plain column's cost is its bytes). A column of
/// random 64-bit values takes as many bytes as plain.
///
/// Other columns are LZ4 (raw). Small level-0 files (a commit's new run
/// and its changelog of less than a row group) are written on every commit
/// and soon read back, by compaction and by the steps of the views over
/// the table: they have no dictionaries. ZSTD sets up a compression
/// context per page written and a decompression context per page read,
/// and a dictionary is built per
/// column chunk — on files of one commit's rows that costs more CPU than
/// the bytes it saves (profiled on Nexmark q7: ZSTD contexts ≈ 6% and
/// dictionaries ≈ 7% of all samples). Compacted files (level 1 and up),
/// written once and read by every query, have dictionaries for their
/// string and binary columns: a query's filters on a low-cardinality
/// string (TPC-H `l_shipmode`, `l_shipinstruct`) decode a dictionary's
/// indexes instead of every value (TPC-H SF1 over Flight, LZ4 without
/// dictionaries vs ZSTD with dictionaries everywhere: q19 223 → 166 ms,
/// q12 176 → 137, but q14 75 → 119, q8 139 → 211, q9 217 → 298 — that
/// trial changed compression and dictionaries together, so it does not
/// say which cost the slower ones). So have level-0 files of a row group
/// or more: a big write's (a transaction's filled write buffer, a Flight
/// ingest), read by every query as a compacted file is until compaction
/// merges them, and kept as they are when compaction concatenates files
/// that do not overlap (an append-mostly table's stay so for good). Scan
/// bench, TPC-H SF1 as 5 overlapping runs of 16 MiB-buffered level-0
/// files, without vs with their dictionaries: Q1 241 → 203 ms, Q12 197 →
/// 171 (compacted: 186, 135); loading them 7.4 → 8.1 s; Flight ingest of
/// `lineitem` unchanged (≈ 0.8 M rows/s). Paimon's default is ZSTD; we
/// trade bytes at rest for scans. Tables that keep no changelog (a view's
/// arrangements and state: read only by key, and rewritten by compaction
/// as often as their keys arrive in random order) are written as level 0
/// at every level: compaction builds no dictionaries (≈ 11% of all CPU of
/// a join view over a 1M-row table at 100k rows/s went into dictionaries
/// of compactions).
fn writer_properties(row_group_rows: usize, dictionaries: bool, schema: &Schema) -> WriterProperties {
    let builder = WriterProperties::builder()
        .set_max_row_group_row_count(Some(row_group_rows.max(1)))
        .set_compression(Compression::LZ4_RAW)
        .set_dictionary_enabled(false);
    let builder = integer_columns(schema).into_iter().fold(builder, |builder, path| {
        builder
            .set_column_encoding(path.clone(), Encoding::DELTA_BINARY_PACKED)
            .set_column_compression(path, Compression::UNCOMPRESSED)
    });
    if !dictionaries {
        return builder.build();
    }
    schema
        .fields()
        .iter()
        .filter(|f| {
            matches!(
                f.data_type(),
                DataType::Utf8
                    | DataType::LargeUtf8
                    | DataType::Utf8View
                    | DataType::Binary
                    | DataType::LargeBinary
                    | DataType::BinaryView
            )
        })
        .fold(builder, |builder, f| builder.set_column_dictionary_enabled(ColumnPath::from(f.name().as_str()), true))
        .build()
}

/// The bytes of values `batch` holds: what a write buffer counts.
/// `get_array_memory_size` counts whole buffers, so a slice or a `take` of
/// string views (which keep the source's data buffers) would count as all
/// of its source; this counts the rows' own values (nested columns, rare,
/// count their whole buffers: never less than they hold).
pub(crate) fn data_bytes(batch: &RecordBatch) -> usize {
    batch
        .columns()
        .iter()
        .map(|column| match column.data_type() {
            DataType::Utf8View => view_bytes(column.as_string_view().views()) + column.len().div_ceil(8),
            DataType::BinaryView => view_bytes(column.as_binary_view().views()) + column.len().div_ceil(8),
            data_type if data_type.is_nested() => column.get_array_memory_size(),
            _ => column.to_data().get_slice_memory_size().unwrap_or_else(|_| column.get_array_memory_size()),
        })
        .sum()
}

/// The bytes of string or binary views: 16 each, and the values longer
/// than the 12 bytes a view holds inline (a view's low 32 bits are its length).
fn view_bytes(views: &[u128]) -> usize {
    views.iter().map(|&view| 16 + if view as u32 > 12 { view as u32 as usize } else { 0 }).sum()
}

/// The leaf columns of `schema` that Parquet stores as INT32 or INT64, as
/// the writer maps Arrow types (nested ones included).
fn integer_columns(schema: &Schema) -> Vec<ColumnPath> {
    // A schema the converter refuses, the writer refuses too: it reports why.
    let Ok(parquet) = parquet::arrow::ArrowSchemaConverter::new().convert(schema) else {
        return Vec::new();
    };
    parquet
        .columns()
        .iter()
        .filter(|c| matches!(c.physical_type(), PhysicalType::INT32 | PhysicalType::INT64))
        .map(|c| c.path().clone())
        .collect()
}

/// The in-memory file a [`FileWriter`] encodes into; shared so the bytes
/// can be taken back after `ArrowWriter::close` consumed the writer.
#[derive(Clone, Default)]
struct SharedBuffer(Arc<std::sync::Mutex<Vec<u8>>>);

impl SharedBuffer {
    fn take(&self) -> Result<Vec<u8>> {
        Ok(std::mem::take(&mut *self.0.lock().map_err(|_| Error::Invalid("buffer poisoned".into()))?))
    }

    /// Removes and returns the first `n` bytes.
    fn take_front(&self, n: usize) -> Result<Vec<u8>> {
        let mut bytes = self.0.lock().map_err(|_| Error::Invalid("buffer poisoned".into()))?;
        let at = n.min(bytes.len());
        let rest = bytes.split_off(at);
        Ok(std::mem::replace(&mut *bytes, rest))
    }

    fn len(&self) -> Result<usize> {
        Ok(self.0.lock().map_err(|_| Error::Invalid("buffer poisoned".into()))?.len())
    }
}

impl std::io::Write for SharedBuffer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().map_err(|_| std::io::Error::other("buffer poisoned"))?.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn encode_key_index(schema: &SchemaRef, key_columns: &[usize], rows: &[Vec<ArrayRef>]) -> Result<String> {
    let fields: Vec<_> = key_columns.iter().map(|&c| schema.field(c).clone()).collect();
    let key_schema = Arc::new(Schema::new(fields));
    let mut columns = Vec::with_capacity(key_columns.len());
    for c in 0..key_columns.len() {
        let parts: Vec<&dyn arrow::array::Array> = rows.iter().map(|r| r[c].as_ref()).collect();
        columns.push(concat(&parts)?);
    }
    encode_batch(&RecordBatch::try_new(key_schema, columns)?)
}

/// A batch as base64 Arrow IPC.
fn encode_batch(batch: &RecordBatch) -> Result<String> {
    let mut ipc = Vec::new();
    {
        let mut writer = arrow::ipc::writer::StreamWriter::try_new(&mut ipc, &batch.schema())?;
        writer.write(batch)?;
        writer.finish()?;
    }
    Ok(base64::engine::general_purpose::STANDARD.encode(ipc))
}

/// The key index of a file: key columns, one row per row group start plus the last key.
pub(crate) fn decode_key_index(dir: &Path, meta: &FileMeta) -> Result<Option<RecordBatch>> {
    let Some(encoded) = &meta.key_index else { return Ok(None) };
    let location = dir.child_path(&meta.path);
    let ipc = base64::engine::general_purpose::STANDARD
        .decode(encoded)
        .map_err(|e| Error::corrupt(&location, format!("bad key index: {e}")))?;
    let mut reader = arrow::ipc::reader::StreamReader::try_new(std::io::Cursor::new(ipc), None)
        .map_err(|e| Error::corrupt(&location, format!("bad key index: {e}")))?;
    let batch = reader
        .next()
        .transpose()
        .map_err(|e| Error::corrupt(&location, format!("bad key index: {e}")))?
        .ok_or_else(|| Error::corrupt(&location, "empty key index"))?;
    if batch.num_rows() != meta.row_groups.len() + 1 {
        return Err(Error::corrupt(&location, "key index does not match the row groups"));
    }
    Ok(Some(batch))
}

/// An open file: its checked footer, ready to read row groups.
#[derive(Clone)]
pub(crate) struct FileReader {
    store: Arc<dyn ObjectStore>,
    location: Path,
    meta: Arc<FileMeta>,
    parquet: ArrowReaderMetadata,
    /// The schema batches are read as (the table's current file schema).
    target: SchemaRef,
    /// Where each column of `target` is in the file (`None`: a column added
    /// after the file was written, read as NULLs); `None` when the file has
    /// exactly the target's columns.
    mapping: Option<Arc<Vec<Option<usize>>>>,
}

impl std::fmt::Debug for FileReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileReader").field("location", &self.location).finish()
    }
}

impl FileReader {
    /// Fetches and checks the footer of the file `meta` describes, to read
    /// it as `target` (the table's current file schema): columns are matched
    /// by name, and columns the file does not have read as NULLs.
    pub(crate) async fn open(
        store: &Arc<dyn ObjectStore>,
        dir: &Path,
        meta: Arc<FileMeta>,
        target: &SchemaRef,
    ) -> Result<Self> {
        let location = dir.child_path(&meta.path);
        let footer = fetch(store, &location, &meta, &[meta.footer]).await?;
        let sparse = Sparse {
            len: meta.bytes,
            ranges: vec![(meta.footer.offset, footer.into_iter().next().unwrap_or_default())],
        };
        let parquet =
            ArrowReaderMetadata::load(&sparse, ArrowReaderOptions::new()).map_err(|e| Error::corrupt(&location, e))?;
        check_footer(&location, parquet.metadata(), &meta)?;
        let mapping = column_mapping(&location, parquet.schema(), target, meta.schema_id)?;
        Ok(Self { store: Arc::clone(store), location, meta, parquet, target: Arc::clone(target), mapping })
    }

    /// Whether this reader reads the file as `target` (the table's file
    /// schema has not changed since it was opened).
    pub(crate) fn reads_as(&self, target: &SchemaRef) -> bool {
        Arc::ptr_eq(&self.target, target) || self.target == *target
    }

    /// Decodes row group `group`, only the columns `columns` of the target
    /// schema (ascending; all when `None`), in batches of at most
    /// `batch_size` rows.
    pub(crate) async fn read_row_group(
        &self,
        group: usize,
        columns: Option<&[usize]>,
        batch_size: usize,
    ) -> Result<Vec<RecordBatch>> {
        self.read_rows(group, columns, None, batch_size).await
    }

    /// As [`Self::read_row_group`], only the rows at `rows` (ascending,
    /// distinct positions within the group) when given: pages that hold
    /// none of them are skipped, not decompressed (the page headers say
    /// how many rows each holds). What a point read by key needs.
    pub(crate) async fn read_rows(
        &self,
        group: usize,
        columns: Option<&[usize]>,
        rows: Option<&[usize]>,
        batch_size: usize,
    ) -> Result<Vec<RecordBatch>> {
        let Some(mapping) = &self.mapping else {
            return self.read_file_columns(group, columns, rows, batch_size).await;
        };
        let wanted: Vec<usize> = columns.map_or_else(|| (0..self.target.fields().len()).collect(), <[usize]>::to_vec);
        let mut roots: Vec<usize> = wanted.iter().filter_map(|&c| mapping[c]).collect();
        roots.sort_unstable();
        roots.dedup();
        if roots.is_empty() {
            // Only added columns: read the smallest column for the row counts.
            roots.push(self.parquet.schema().fields().len() - 1);
        }
        let schema = Arc::new(self.target.project(&wanted)?);
        let batches = self.read_file_columns(group, Some(&roots), rows, batch_size).await?;
        batches
            .into_iter()
            .map(|batch| {
                let columns = wanted
                    .iter()
                    .map(|&c| match mapping[c].and_then(|root| roots.binary_search(&root).ok()) {
                        Some(position) => Arc::clone(batch.column(position)),
                        None => arrow::array::new_null_array(self.target.field(c).data_type(), batch.num_rows()),
                    })
                    .collect();
                let options = arrow::array::RecordBatchOptions::new().with_row_count(Some(batch.num_rows()));
                Ok(RecordBatch::try_new_with_options(Arc::clone(&schema), columns, &options)?)
            })
            .collect()
    }

    /// Decodes the top-level columns `columns` of the file itself.
    async fn read_file_columns(
        &self,
        group: usize,
        columns: Option<&[usize]>,
        rows: Option<&[usize]>,
        batch_size: usize,
    ) -> Result<Vec<RecordBatch>> {
        let descr = self.parquet.metadata().file_metadata().schema_descr_ptr();
        let leaves: Vec<usize> = (0..descr.num_columns())
            .filter(|&leaf| columns.is_none_or(|c| c.contains(&descr.get_column_root_idx(leaf))))
            .collect();
        let chunks: Vec<Chunk> = leaves.iter().map(|&l| self.meta.row_groups[group].columns[l]).collect();
        let fetched = fetch(&self.store, &self.location, &self.meta, &chunks).await?;
        let sparse = Sparse { len: self.meta.bytes, ranges: chunks.iter().map(|c| c.offset).zip(fetched).collect() };
        let mask = match columns {
            Some(columns) => ProjectionMask::roots(&descr, columns.iter().copied()),
            None => ProjectionMask::all(),
        };
        let group_rows = self.meta.row_groups[group].rows;
        let mut builder = ParquetRecordBatchReaderBuilder::new_with_metadata(sparse, self.parquet.clone())
            .with_row_groups(vec![group])
            .with_projection(mask)
            .with_batch_size(batch_size);
        let expected = match rows {
            Some(rows) => {
                if rows.iter().any(|&r| r as u64 >= group_rows) || rows.windows(2).any(|w| w[0] >= w[1]) {
                    return Err(Error::Invalid(format!(
                        "rows {rows:?} are not ascending positions in row group {group}"
                    )));
                }
                builder = builder.with_row_selection(selection(rows));
                rows.len() as u64
            }
            None => group_rows,
        };
        let reader = builder.build().map_err(|e| Error::corrupt(&self.location, e))?;
        let batches = reader.collect::<Result<Vec<_>, _>>().map_err(|e| Error::corrupt(&self.location, e))?;
        let decoded: u64 = batches.iter().map(|b| b.num_rows() as u64).sum();
        if decoded != expected {
            return Err(Error::corrupt(&self.location, format!("row group {group} decoded to {decoded} rows")));
        }
        Ok(batches)
    }
}

/// The selection of the ascending, distinct positions `rows`.
fn selection(rows: &[usize]) -> RowSelection {
    let mut selectors = Vec::with_capacity(rows.len() * 2);
    let mut next = 0;
    for &row in rows {
        if row > next {
            selectors.push(RowSelector::skip(row - next));
        }
        selectors.push(RowSelector::select(1));
        next = row + 1;
    }
    RowSelection::from(selectors)
}

/// `ALTER TABLE … RENAME COLUMN from TO to`, made by definition `version`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ColumnRename {
    pub version: u64,
    pub from: String,
    pub to: String,
}

/// The schema metadata key under which a data file schema carries the
/// table's renames (JSON), so a reader can find old files' columns.
pub(crate) const RENAMES_KEY: &str = "streamhouse.renames";

/// The name column `name` of the current definition has in a file written
/// with definition `file_version`, given the table's `renames`.
pub(crate) fn name_in_file<'a>(renames: &'a [ColumnRename], file_version: u64, name: &'a str) -> &'a str {
    let mut name = name;
    for rename in renames.iter().rev().filter(|r| r.version > file_version) {
        if rename.to == name {
            name = rename.from.as_str();
        }
    }
    name
}

/// Where each column of `target` is in a file of schema `file` written with
/// definition `file_version` (by name, the name the column had then), or
/// `None` when they are the same columns.
fn column_mapping(
    location: &Path,
    file: &SchemaRef,
    target: &SchemaRef,
    file_version: u64,
) -> Result<Option<Arc<Vec<Option<usize>>>>> {
    let renames: Vec<ColumnRename> = match target.metadata().get(RENAMES_KEY) {
        Some(json) => serde_json::from_str(json).map_err(|e| Error::corrupt(location, format!("renames: {e}")))?,
        None => vec![],
    };
    let name = |t: &str| name_in_file(&renames, file_version, t).to_string();
    // The same names (not only after renames): batches decoded as they are
    // carry the file's names.
    let same = file.fields().len() == target.fields().len()
        && file.fields().iter().zip(target.fields()).all(|(f, t)| f.name() == t.name());
    let mapping: Vec<Option<usize>> = target
        .fields()
        .iter()
        .map(|t| {
            let Ok(index) = file.index_of(&name(t.name())) else { return Ok(None) };
            if file.field(index).data_type() != t.data_type() {
                return Err(Error::corrupt(
                    location,
                    format!(
                        "column \"{}\" is {} in the file but {} in the table",
                        t.name(),
                        file.field(index).data_type(),
                        t.data_type()
                    ),
                ));
            }
            Ok(Some(index))
        })
        .collect::<Result<_>>()?;
    Ok((!same).then(|| Arc::new(mapping)))
}

/// Checks a parsed footer has the row groups and columns the manifest lists.
fn check_footer(location: &Path, parquet: &ParquetMetaData, meta: &FileMeta) -> Result<()> {
    let groups = parquet.row_groups();
    if groups.len() != meta.row_groups.len()
        || groups
            .iter()
            .zip(&meta.row_groups)
            .any(|(g, m)| g.num_rows() as u64 != m.rows || g.num_columns() != m.columns.len())
    {
        return Err(Error::corrupt(location, "Parquet footer does not match the manifest"));
    }
    Ok(())
}

/// Fetches `chunks` of a file and checks their lengths and checksums.
async fn fetch(store: &Arc<dyn ObjectStore>, location: &Path, meta: &FileMeta, chunks: &[Chunk]) -> Result<Vec<Bytes>> {
    let ranges: Vec<Range<u64>> = chunks.iter().map(Chunk::range).collect();
    let fetched = match store.get_ranges(location, &ranges).await {
        Ok(fetched) => fetched,
        Err(object_store::Error::NotFound { .. }) => {
            return Err(Error::corrupt(location, "file listed in the manifest is missing"));
        }
        Err(e) => {
            // A range past the end: report the size mismatch rather than the range.
            return match store.head(location).await {
                Ok(head) if head.size != meta.bytes => {
                    Err(Error::corrupt(location, format!("{} bytes, manifest says {}", head.size, meta.bytes)))
                }
                Err(object_store::Error::NotFound { .. }) => {
                    Err(Error::corrupt(location, "file listed in the manifest is missing"))
                }
                _ => Err(Error::store(location, e)),
            };
        }
    };
    for (chunk, bytes) in chunks.iter().zip(&fetched) {
        if bytes.len() as u64 != chunk.len {
            return Err(Error::corrupt(
                location,
                format!("truncated: {} bytes, manifest says {}", meta.bytes, chunk.len),
            ));
        }
        if crc32fast::hash(bytes) != chunk.crc32 {
            return Err(Error::corrupt(
                location,
                format!("checksum mismatch in bytes {}..{}", chunk.offset, chunk.offset + chunk.len),
            ));
        }
    }
    Ok(fetched)
}

/// The fetched, checked ranges of a file, as Parquet's reader sees it.
struct Sparse {
    len: u64,
    ranges: Vec<(u64, Bytes)>,
}

impl Sparse {
    fn slice(&self, start: u64, length: Option<usize>) -> parquet::errors::Result<Bytes> {
        for (offset, bytes) in &self.ranges {
            let end = offset + bytes.len() as u64;
            let inside = start >= *offset && (start < end || (start == end && length == Some(0)));
            if inside {
                let from = (start - offset) as usize;
                let to = length.map_or(bytes.len(), |l| from + l);
                if to <= bytes.len() {
                    return Ok(bytes.slice(from..to));
                }
            }
        }
        Err(ParquetError::General(format!("read of bytes at {start} outside the checked ranges of the file")))
    }
}

impl Length for Sparse {
    fn len(&self) -> u64 {
        self.len
    }
}

impl ChunkReader for Sparse {
    type T = bytes::buf::Reader<Bytes>;

    fn get_read(&self, start: u64) -> parquet::errors::Result<Self::T> {
        use bytes::Buf as _;
        Ok(self.slice(start, None)?.reader())
    }

    fn get_bytes(&self, start: u64, length: usize) -> parquet::errors::Result<Bytes> {
        self.slice(start, Some(length))
    }
}

/// Extension: a path below a directory from a relative `a/b` string.
pub(crate) trait ChildPath {
    fn child_path(&self, relative: &str) -> Path;
}

impl ChildPath for Path {
    fn child_path(&self, relative: &str) -> Path {
        relative.split('/').fold(self.clone(), |p, part| p.join(part))
    }
}

/// A data file read by Parquet's async reader (DataFusion's Parquet scan),
/// every range still checked: the footer (with the page indexes) and each
/// column chunk are fetched whole and checked against the manifest before
/// Parquet sees a byte, as [`FileReader`] does. A request for part of a
/// chunk (a page, when a page index selects rows) is served from the whole
/// checked chunk (Parquet asks for all the pages of a row group in one
/// call, so each chunk is fetched once per row group).
pub struct CheckedParquet {
    store: Arc<dyn ObjectStore>,
    location: Path,
    meta: Arc<FileMeta>,
    /// Every checked range of the file (column chunks, then the footer), by offset.
    chunks: Vec<Chunk>,
    metadata: Option<Arc<ParquetMetaData>>,
}

impl std::fmt::Debug for CheckedParquet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CheckedParquet").field("location", &self.location).finish()
    }
}

impl CheckedParquet {
    /// A reader of the file `meta` describes, at `location`.
    pub fn new(store: Arc<dyn ObjectStore>, location: Path, meta: Arc<FileMeta>) -> Self {
        let mut chunks: Vec<Chunk> = meta.row_groups.iter().flat_map(|g| g.columns.iter().copied()).collect();
        chunks.push(meta.footer);
        chunks.sort_by_key(|c| c.offset);
        Self { store, location, meta, chunks, metadata: None }
    }

    /// The checked chunk holding `range`.
    fn chunk_of(&self, range: &Range<u64>) -> Result<Chunk> {
        let at = self.chunks.partition_point(|c| c.offset <= range.start);
        at.checked_sub(1)
            .map(|i| self.chunks[i])
            .filter(|c| range.end <= c.offset + c.len)
            .ok_or_else(|| Error::corrupt(&self.location, format!("bytes {range:?} lie outside the manifest's ranges")))
    }

    async fn ranges(&self, ranges: Vec<Range<u64>>) -> Result<Vec<Bytes>> {
        let chunks: Vec<Chunk> = ranges.iter().map(|r| self.chunk_of(r)).collect::<Result<_>>()?;
        let mut distinct = chunks.clone();
        distinct.sort_by_key(|c| c.offset);
        distinct.dedup();
        let fetched = fetch(&self.store, &self.location, &self.meta, &distinct).await?;
        Ok(ranges
            .iter()
            .zip(&chunks)
            .map(|(range, chunk)| {
                let at = distinct.partition_point(|c| c.offset < chunk.offset);
                let from = (range.start - chunk.offset) as usize;
                let to = (range.end - chunk.offset) as usize;
                fetched[at].slice(from..to)
            })
            .collect())
    }

    async fn load_metadata(&mut self) -> Result<Arc<ParquetMetaData>> {
        if let Some(metadata) = &self.metadata {
            return Ok(Arc::clone(metadata));
        }
        let footer = self.meta.footer;
        if let Some(metadata) = crate::footers::get(self.location.as_ref(), footer.offset, footer.crc32) {
            self.metadata = Some(Arc::clone(&metadata));
            return Ok(metadata);
        }
        let bytes = self.ranges(vec![footer.range()]).await?.pop().unwrap_or_default();
        let sparse = Sparse { len: self.meta.bytes, ranges: vec![(footer.offset, bytes)] };
        // The page indexes lie inside the footer range: loading them costs no I/O.
        let metadata = parquet::file::metadata::ParquetMetaDataReader::new()
            .with_page_index_policy(parquet::file::metadata::PageIndexPolicy::Optional)
            .parse_and_finish(&sparse)
            .map_err(|e| Error::corrupt(&self.location, e))?;
        check_footer(&self.location, &metadata, &self.meta)?;
        let metadata = Arc::new(metadata);
        crate::footers::insert(self.location.as_ref(), footer.offset, footer.crc32, Arc::clone(&metadata));
        self.metadata = Some(Arc::clone(&metadata));
        Ok(metadata)
    }
}

fn external(error: Error) -> ParquetError {
    ParquetError::External(Box::new(error))
}

impl parquet::arrow::async_reader::AsyncFileReader for CheckedParquet {
    fn get_bytes(&mut self, range: Range<u64>) -> futures::future::BoxFuture<'_, parquet::errors::Result<Bytes>> {
        Box::pin(async move { Ok(self.ranges(vec![range]).await.map_err(external)?.pop().unwrap_or_default()) })
    }

    fn get_byte_ranges(
        &mut self,
        ranges: Vec<Range<u64>>,
    ) -> futures::future::BoxFuture<'_, parquet::errors::Result<Vec<Bytes>>> {
        Box::pin(async move { self.ranges(ranges).await.map_err(external) })
    }

    fn get_metadata<'a>(
        &'a mut self,
        _options: Option<&'a ArrowReaderOptions>,
    ) -> futures::future::BoxFuture<'a, parquet::errors::Result<Arc<ParquetMetaData>>> {
        Box::pin(async move { self.load_metadata().await.map_err(external) })
    }
}

#[cfg(test)]
mod tests {
    use arrow::array::{Int8Array, Int64Array, StringArray, UInt64Array};
    use arrow::datatypes::{DataType, Field};
    use object_store::memory::InMemory;

    use super::*;

    /// A write buffer counts the values a batch holds, not the buffers it
    /// shares with its source: a slice, or a `take` of string views.
    #[test]
    fn data_bytes_counts_a_batchs_own_values() {
        use arrow::array::StringViewArray;
        let long = |i: usize| format!("a value longer than twelve bytes, number {i:06}");
        let keys = Int64Array::from_iter_values(0..10_000);
        let strings: StringArray = (0..10_000).map(|i| Some(long(i))).collect();
        let views: StringViewArray = (0..10_000).map(|i| Some(long(i))).collect();
        let short: StringViewArray = (0..10_000).map(|i| Some(format!("{i}"))).collect();
        let schema = Arc::new(Schema::new(vec![
            Field::new("k", DataType::Int64, false),
            Field::new("s", DataType::Utf8, false),
            Field::new("v", DataType::Utf8View, false),
            Field::new("short", DataType::Utf8View, false),
        ]));
        let columns: Vec<ArrayRef> = vec![Arc::new(keys), Arc::new(strings), Arc::new(views), Arc::new(short)];
        let batch = RecordBatch::try_new(schema, columns).unwrap();
        let value = long(0).len();
        // 8 key bytes, a string and its 4-byte offset, a view and its
        // out-of-line string, a short string's view.
        let per_row = 8 + (value + 4) + (16 + value) + 16;
        let whole = data_bytes(&batch);
        assert!(whole.abs_diff(10_000 * per_row) < 10_000 * per_row / 100, "{whole} vs {}", 10_000 * per_row);
        let slice = data_bytes(&batch.slice(1_000, 100));
        assert!(slice.abs_diff(100 * per_row) < 100, "a slice of 100 rows: {slice}");
        let every_tenth = UInt32Array::from_iter_values((0..10_000).step_by(10));
        let taken = arrow::compute::take_record_batch(&batch, &every_tenth).unwrap();
        let counted = data_bytes(&taken);
        assert!(counted.abs_diff(1_000 * per_row) < 1_000 * per_row / 100, "every tenth row: {counted}");
        // What the whole buffers weigh: the taken views keep all the source's strings.
        assert!(taken.get_array_memory_size() > 3 * counted, "{}", taken.get_array_memory_size());
    }

    /// Columns stored as Parquet integers are delta-encoded and not
    /// compressed; the others keep LZ4 (and strings their dictionaries);
    /// every value reads back, extremes and nulls included.
    #[test]
    fn integer_columns_are_delta_encoded_and_read_back() {
        use arrow::array::{Date32Array, Decimal128Array, Float64Array, ListArray};
        use arrow::datatypes::Int32Type;
        use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
        let n = 5000usize;
        let wide = |i: usize| -> i64 { (i as i64).wrapping_mul(0x9e37_79b9_7f4a_7c15_u64 as i64) };
        let columns: Vec<(&str, ArrayRef)> = vec![
            ("k", Arc::new(Int64Array::from_iter_values((0..n as i64).map(|i| i * 3)))),
            // Deltas that overflow 64 bits: MIN, MAX and random values side by side.
            (
                "wild",
                Arc::new(Int64Array::from_iter_values((0..n).map(|i| match i % 3 {
                    0 => i64::MIN,
                    1 => i64::MAX,
                    _ => wide(i),
                }))),
            ),
            ("day", Arc::new(Date32Array::from_iter((0..n).map(|i| (i % 7 != 0).then_some(8000 + (i % 2500) as i32))))),
            (
                "price",
                Arc::new(
                    Decimal128Array::from_iter((0..n).map(|i| (i % 11 != 0).then_some(wide(i) as i128 % 100_000_000)))
                        .with_precision_and_scale(15, 2)
                        .unwrap(),
                ),
            ),
            (
                "big",
                Arc::new(
                    Decimal128Array::from_iter_values((0..n).map(|i| i as i128 * 10i128.pow(25)))
                        .with_precision_and_scale(30, 2)
                        .unwrap(),
                ),
            ),
            ("ratio", Arc::new(Float64Array::from_iter_values((0..n).map(|i| i as f64 / 7.0)))),
            ("mode", Arc::new(StringArray::from_iter_values((0..n).map(|i| format!("mode{}", i % 5))))),
            (
                "tags",
                Arc::new(ListArray::from_iter_primitive::<Int32Type, _, _>(
                    (0..n).map(|i| (i % 4 != 0).then(|| (0..(i % 3) as i32).map(Some).collect::<Vec<_>>())),
                )),
            ),
        ];
        let batch = RecordBatch::try_from_iter(columns).unwrap();
        let mut bytes = Vec::new();
        let props = writer_properties(1024, true, &batch.schema());
        let mut writer = ArrowWriter::try_new(&mut bytes, batch.schema(), Some(props)).unwrap();
        writer.write(&batch).unwrap();
        writer.close().unwrap();
        let reader = ParquetRecordBatchReaderBuilder::try_new(Bytes::from(bytes)).unwrap();
        let group = reader.metadata().row_group(0).clone();
        let mut read: Vec<RecordBatch> = Vec::new();
        for next in reader.build().unwrap() {
            read.push(next.unwrap());
        }
        assert_eq!(arrow::compute::concat_batches(&batch.schema(), &read).unwrap(), batch);
        for column in group.columns() {
            let name = column.column_path().string();
            let delta = column.encodings().any(|e| e == Encoding::DELTA_BINARY_PACKED);
            let integer = ["k", "wild", "day", "price", "tags.list.item"].contains(&name.as_str());
            assert_eq!(delta, integer, "{name}: delta-encoded only if stored as an integer");
            let expected = if integer { Compression::UNCOMPRESSED } else { Compression::LZ4_RAW };
            assert_eq!(column.compression(), expected, "{name}");
            let dictionary = column.encodings().any(|e| e == Encoding::RLE_DICTIONARY);
            assert_eq!(dictionary, name == "mode", "{name}: only strings have dictionaries");
        }
        let k = group.columns().iter().find(|c| c.column_path().string() == "k").unwrap();
        assert!(k.compressed_size() < (n * 8 / 10) as i64, "keys in order take a few bits each");
    }

    /// A file streamed out in small parts reads back whole, with every
    /// chunk's checksum right, and its size in the metadata.
    #[tokio::test]
    async fn a_streamed_file_reads_back_whole() {
        let schema = Arc::new(Schema::new(vec![
            Field::new("k", DataType::Int64, false),
            Field::new("v", DataType::Utf8, true),
            Field::new("_seq", DataType::UInt64, false),
            Field::new("_kind", DataType::Int8, false),
        ]));
        let store: Arc<dyn ObjectStore> = Arc::new(InMemory::new());
        let dir = Path::from("t");
        let file = NewFile {
            relative: "data/streamed.parquet".into(),
            level: 1,
            key_columns: vec![0],
            schema_id: 0,
            row_group_rows: 500,
            seq_kind: (2, 3, Some(1)),
            light: false,
            mark_deletes: false,
            rows: None,
        };
        let mut writer = FileWriter::streaming_in_parts(file, &schema, &store, &dir, 16 << 10).await.unwrap();
        let mut expected = Vec::new();
        for part in 0..40i64 {
            let keys: Vec<i64> = (part * 250..(part + 1) * 250).collect();
            // Values that do not compress away, so the file is many parts long.
            let values: Vec<String> =
                keys.iter().map(|k| format!("{:x}", (*k as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15))).collect();
            let batch = RecordBatch::try_new(
                Arc::clone(&schema),
                vec![
                    Arc::new(Int64Array::from(keys.clone())),
                    Arc::new(StringArray::from(values.clone())),
                    Arc::new(UInt64Array::from_iter_values(keys.iter().map(|k| *k as u64))),
                    Arc::new(Int8Array::from(vec![0i8; keys.len()])),
                ],
            )
            .unwrap();
            expected.extend(keys.into_iter().zip(values));
            writer.write(&batch).unwrap();
            writer.send_parts().await.unwrap();
        }
        let sent = writer.upload.as_ref().map_or(0, |u| u.sent);
        assert!(sent > 0, "parts were sent before the end");
        let meta = writer.finish(&store, &dir).await.unwrap();
        assert!(meta.bytes > sent);
        let stored = store.head(&dir.child_path(&meta.path)).await.unwrap();
        assert_eq!(stored.size, meta.bytes);
        assert_eq!(meta.row_groups.len(), 20);
        let reader = FileReader::open(&store, &dir, Arc::new(meta), &schema).await.unwrap();
        let mut got = Vec::new();
        let mut batches = Vec::new();
        for group in 0..20 {
            batches.extend(reader.read_row_group(group, None, 1000).await.unwrap());
        }
        for batch in batches {
            let keys = batch.column(0).as_any().downcast_ref::<Int64Array>().unwrap();
            let values = batch.column(1).as_any().downcast_ref::<StringArray>().unwrap();
            got.extend((0..batch.num_rows()).map(|i| (keys.value(i), values.value(i).to_string())));
        }
        assert_eq!(got, expected);
    }
}
