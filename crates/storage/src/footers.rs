//! Parsed and checked footers of data files (page indexes included) for
//! DataFusion's Parquet scans ([`crate::file::CheckedParquet`]), kept for
//! the process within a byte budget, so a file read by query after query
//! is not fetched, checksummed and decoded again each time (DataFusion
//! keeps plain Parquet files' footers the same way). Files never change;
//! an entry is keyed by the file's location and its footer's offset and
//! CRC-32 from the manifest, so it cannot stand for another file's footer.

use std::sync::{Arc, LazyLock, Mutex, PoisonError};

use parquet::file::metadata::ParquetMetaData;

use crate::lru::Lru;

/// Bytes of parsed footers kept by the process.
pub(crate) const FOOTER_BYTES: usize = 64 << 20;

type Key = (String, u64, u32);

fn cache() -> &'static Mutex<Lru<Key, Arc<ParquetMetaData>>> {
    static FOOTERS: LazyLock<Mutex<Lru<Key, Arc<ParquetMetaData>>>> =
        LazyLock::new(|| Mutex::new(Lru::new(FOOTER_BYTES)));
    &FOOTERS
}

/// The footer of the file at `location` that the manifest says lies at
/// `offset` with checksum `crc32`, if kept.
pub(crate) fn get(location: &str, offset: u64, crc32: u32) -> Option<Arc<ParquetMetaData>> {
    cache().lock().unwrap_or_else(PoisonError::into_inner).get(&(location.to_owned(), offset, crc32))
}

/// Keeps a footer that was fetched and checked against the manifest.
pub(crate) fn insert(location: &str, offset: u64, crc32: u32, metadata: Arc<ParquetMetaData>) {
    let bytes = metadata.memory_size();
    cache().lock().unwrap_or_else(PoisonError::into_inner).insert(
        (location.to_owned(), offset, crc32),
        metadata,
        bytes,
    );
}
