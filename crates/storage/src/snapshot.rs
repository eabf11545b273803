//! Snapshots and manifests: what a commit records.

use serde::{Deserialize, Serialize};

pub use crate::file::FileMeta;

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
    /// Data files this commit removed from the manifest (compaction),
    /// relative paths: deleted once no retained snapshot references them.
    #[serde(default)]
    pub removed_files: Vec<String>,
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
    /// Properties set by the writer, carried over to later snapshots until
    /// a commit sets them again (a continuous view records here, per
    /// source, the source snapshot its content reflects).
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub properties: std::collections::BTreeMap<String, String>,
}
