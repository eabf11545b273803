//! Snapshots and manifests: what a commit records.

use serde::{Deserialize, Serialize};

pub use crate::file::FileMeta;

/// Commits that write only their manifest delta before one writes a full
/// manifest again.
pub const MANIFEST_DELTAS: usize = 16;

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

/// What one commit changed in the manifest: the files it added and the
/// paths it removed (removals apply first: a file moved to another level
/// is removed and added again).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestDelta {
    /// Files added, in the order they join the manifest.
    pub added: Vec<FileMeta>,
    /// Paths removed.
    pub removed: Vec<String>,
    /// The new deletion vector of files that stay ([`crate::deletion`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub deleted: Vec<(String, crate::deletion::DeletionVector)>,
}

impl Manifest {
    /// The manifest after `delta`.
    pub fn apply(&mut self, delta: ManifestDelta) {
        if !delta.removed.is_empty() {
            let removed: std::collections::HashSet<&str> = delta.removed.iter().map(String::as_str).collect();
            self.files.retain(|f| !removed.contains(f.path.as_str()));
        }
        self.files.extend(delta.added);
        for (path, vector) in delta.deleted {
            if let Some(file) = self.files.iter_mut().find(|f| f.path == path) {
                file.deleted = Some(vector);
            }
        }
    }
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
    /// A full manifest (every live data file as of some commit up to this
    /// one), relative path.
    pub manifest: String,
    /// The manifest deltas of the commits after the one `manifest` was
    /// written for, up to this one, in order ([`ManifestDelta`]): the live
    /// files are `manifest` with each applied. A commit writes only its
    /// delta, and a full manifest every [`MANIFEST_DELTAS`] commits, so its
    /// metadata does not grow with the number of live files.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub manifest_deltas: Vec<String>,
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
