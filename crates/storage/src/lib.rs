//! Dynamic Tables: primary-keyed tables stored as an LSM tree of sorted
//! Parquet runs on `object_store`, with snapshots and an exact changelog.
//!
//! # Layout
//!
//! A table lives in a directory under the warehouse root:
//!
//! ```text
//!   <schema>/<table>/
//!     schema/schema-<id>          table definition versions (checksummed JSON + Arrow schema)
//!     snapshot/snapshot-<id>      one per commit, claimed with a conditional create
//!     manifest/manifest-<uuid>    the full list of live data files after a commit
//!     data/<uuid>.parquet         sorted runs: user columns + _seq (UInt64) + _kind (Int8)
//!     changelog/<uuid>.parquet    a commit's changes: user columns + _seq + _kind (+I/-U/+U/-D)
//! ```
//!
//! Every metadata file is framed with a length and a CRC-32 ([`frame`]);
//! every Parquet file's size and CRC-32 are recorded in the manifest and
//! checked on read, so truncation or corruption is an error naming the file.
//!
//! # Commits
//!
//! A commit writes its data and changelog files, then a manifest, then claims
//! `snapshot-<parent+1>` with `PutMode::Create`: exactly one writer wins an
//! id, and a reader that lists snapshots sees a commit entirely or not at all
//! (the snapshot file is the commit point, and it only names files written
//! before it). Writers in one process are serialized by the table's lock; a
//! writer in another process that loses the race gets [`Error::Conflict`].
//!
//! # Writes and the changelog
//!
//! Merge engines are applied at write time: a write looks up the current
//! value of each key it touches (merge-on-read of the runs), computes the new
//! value, and emits the changelog in Paimon's "lookup" style — `+I` for a new
//! key, `-U`/`+U` with the old and new row for an update, `-D` with the old
//! row for a delete. Data files therefore always hold whole rows, and reading
//! is "newest sequence number wins" whatever the merge engine.
//!
//! This module is being built up in steps; see the repository notes for what
//! is done (commit protocol, sorted runs, lookup changelog, merge-on-read) and
//! what comes next (streaming k-way merge, compaction, expiry, group commit).

pub mod compact;
pub mod error;
pub mod file;
pub mod frame;
pub mod options;
pub mod scan;
pub mod schema;
pub mod snapshot;
pub mod table;

mod merge;

pub use error::{Error, Result};
pub use options::TableOptions;
pub use scan::{ScanPlan, ScanRequest};
pub use schema::{MergeEngine, RowKind, TableSchema, ValueKind};
pub use snapshot::{CommitKind, FileMeta, Manifest, Snapshot};
pub use table::{ChangelogBatch, Table, Transaction};
