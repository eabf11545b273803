//! Snapshots and manifests: what a commit records.

use serde::{Deserialize, Serialize};

/// One Parquet file of a table: a sorted run (data) or a commit's changes (changelog).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileMeta {
    /// Path relative to the table directory, e.g. `data/<uuid>.parquet`.
    pub path: String,
    /// LSM level (0 for new runs; changelog files use 0).
    pub level: u32,
    /// Rows in the file.
    pub rows: u64,
    /// Size in bytes.
    pub bytes: u64,
    /// CRC-32 of the whole file, checked on every read.
    pub crc32: u32,
    /// Smallest and largest sequence number in the file.
    pub min_seq: u64,
    /// See `min_seq`.
    pub max_seq: u64,
    /// Schema version the file was written with.
    pub schema_id: u64,
}

/// Why a snapshot was committed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CommitKind {
    /// New data (INSERT/UPDATE/DELETE).
    Append,
    /// Compaction: same content, fewer runs; no changelog.
    Compact,
}

/// The full list of live data files after a commit.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// Live sorted runs.
    pub files: Vec<FileMeta>,
}

/// A committed, immutable version of a table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    /// Snapshot id: 1, 2, 3 … claimed by conditional create of `snapshot/snapshot-<id>`.
    pub id: u64,
    /// The snapshot this one was committed on top of.
    pub parent: Option<u64>,
    /// Commit time, milliseconds since the Unix epoch.
    pub commit_time_ms: i64,
    /// Schema version of the table at this snapshot.
    pub schema_id: u64,
    /// Why it was committed.
    pub kind: CommitKind,
    /// Manifest listing every live data file (base and delta), relative path.
    pub manifest: String,
    /// Data files this commit added (the delta), relative paths.
    pub delta_files: Vec<String>,
    /// Changelog files of this commit.
    pub changelog_files: Vec<FileMeta>,
    /// Rows in all live data files (including rows later versions shadow).
    pub total_rows: u64,
    /// Rows this commit added to data files.
    pub delta_rows: u64,
    /// Changelog rows of this commit.
    pub changelog_rows: u64,
    /// First sequence number the next commit may use.
    pub next_sequence: u64,
    /// Event-time watermark (for later use by continuous views).
    pub watermark: Option<i64>,
}
