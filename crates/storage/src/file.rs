//! Reading and writing Parquet files on object storage, checked on read.

use std::sync::Arc;

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use bytes::Bytes;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use parquet::arrow::ArrowWriter;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;

use crate::error::{Error, Result};
use crate::snapshot::FileMeta;

/// Rows per Parquet row group.
const ROW_GROUP_ROWS: usize = 128 * 1024;

/// Encodes batches as one Parquet file and stores it at `dir/relative`.
///
/// # Errors
/// Encoding or storage failures.
/// Where and what a new file is.
pub(crate) struct NewFile {
    /// Path relative to the table directory.
    pub relative: String,
    /// LSM level.
    pub level: u32,
    /// Smallest and largest sequence number in it.
    pub seq_range: (u64, u64),
    /// Schema version of its rows.
    pub schema_id: u64,
}

pub(crate) async fn write(
    store: &Arc<dyn ObjectStore>,
    dir: &Path,
    file: NewFile,
    schema: &SchemaRef,
    batches: &[RecordBatch],
) -> Result<FileMeta> {
    let props = WriterProperties::builder()
        .set_compression(Compression::ZSTD(ZstdLevel::try_new(1).map_err(|e| Error::Invalid(e.to_string()))?))
        .set_max_row_group_row_count(Some(ROW_GROUP_ROWS))
        .build();
    let relative = &file.relative;
    let mut buffer = Vec::new();
    let mut writer = ArrowWriter::try_new(&mut buffer, Arc::clone(schema), Some(props))
        .map_err(|e| Error::Invalid(format!("cannot write {relative}: {e}")))?;
    let mut rows = 0;
    for batch in batches {
        rows += batch.num_rows() as u64;
        writer.write(batch).map_err(|e| Error::Invalid(format!("cannot write {relative}: {e}")))?;
    }
    writer.close().map_err(|e| Error::Invalid(format!("cannot write {relative}: {e}")))?;
    let NewFile { relative, level, seq_range, schema_id } = file;
    let meta = FileMeta {
        path: relative.clone(),
        level,
        rows,
        bytes: buffer.len() as u64,
        crc32: crc32fast::hash(&buffer),
        min_seq: seq_range.0,
        max_seq: seq_range.1,
        schema_id,
    };
    let location = dir.child_path(&relative);
    store.put(&location, PutPayload::from(buffer)).await.map_err(|e| Error::store(&location, e))?;
    Ok(meta)
}

/// Reads a whole file, checking its size and checksum against `meta`.
///
/// # Errors
/// [`Error::Corrupt`] naming the file when it is truncated, altered or undecodable.
pub(crate) async fn read(store: &Arc<dyn ObjectStore>, dir: &Path, meta: &FileMeta) -> Result<Vec<RecordBatch>> {
    let location = dir.child_path(&meta.path);
    let bytes: Bytes = match store.get(&location).await {
        Ok(got) => got.bytes().await.map_err(|e| Error::store(&location, e))?,
        Err(object_store::Error::NotFound { .. }) => {
            return Err(Error::corrupt(&location, "file listed in the manifest is missing"));
        }
        Err(e) => return Err(Error::store(&location, e)),
    };
    if bytes.len() as u64 != meta.bytes {
        return Err(Error::corrupt(&location, format!("{} bytes, manifest says {}", bytes.len(), meta.bytes)));
    }
    if crc32fast::hash(&bytes) != meta.crc32 {
        return Err(Error::corrupt(&location, "checksum mismatch"));
    }
    let reader = ParquetRecordBatchReaderBuilder::try_new(bytes)
        .and_then(|b| b.build())
        .map_err(|e| Error::corrupt(&location, e))?;
    let batches = reader.collect::<Result<Vec<_>, _>>().map_err(|e| Error::corrupt(&location, e))?;
    let rows: u64 = batches.iter().map(|b| b.num_rows() as u64).sum();
    if rows != meta.rows {
        return Err(Error::corrupt(&location, format!("{rows} rows, manifest says {}", meta.rows)));
    }
    Ok(batches)
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
