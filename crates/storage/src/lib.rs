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
//!     manifest/delta-<uuid>       what one commit added to and removed from it
//!     data/<uuid>.parquet         sorted runs: user columns + _seq (UInt64) + _kind (Int8)
//!     changelog/<uuid>.parquet    a commit's changes: user columns + _seq + _kind (+I/-U/+U/-D);
//!                                 a commit of new keys only uses its data file as changelog
//!     consumer/consumer-<name>    the next snapshot a named changelog reader needs
//! ```
//!
//! Every metadata file is framed with a length and a CRC-32 ([`frame`]).
//! Parquet files are read by byte ranges, and the manifest records the range
//! and CRC-32 of every column chunk and of the footer ([`file`]), so a
//! truncated or altered file is an error naming it, never a wrong answer.
//!
//! # Commits
//!
//! A commit writes its data and changelog files, then a manifest (its delta;
//! every 16th commit the full list again, so a commit's metadata does not
//! grow with the number of live files), then claims
//! `snapshot-<parent+1>` with `PutMode::Create`: exactly one writer wins an
//! id, and a reader that lists snapshots sees a commit entirely or not at all
//! (the snapshot file is the commit point, and it only names files written
//! before it). Writers in one process are serialized by the table's commit
//! lock; a writer in another process that loses the race gets
//! [`Error::Conflict`].
//!
//! **Group commit.** [`Table::write`] queues the write; whoever takes the
//! commit lock next commits every queued write as one snapshot and wakes
//! their callers, so many small concurrent writes share one commit instead of
//! each paying for four object writes. A [`Transaction`] stages any number of
//! writes as files and commits them once (an `INSERT … SELECT` of millions of
//! rows streams through it). A write returns only once its snapshot file
//! exists, so an acknowledged write survives a crash of the process; the
//! local file system writes files by rename but does not `fsync` (power loss
//! is not covered yet).
//!
//! # Writes and the changelog
//!
//! Merge engines are applied at write time: a write looks up the current
//! value of each key it touches (only the row groups whose key range holds
//! one of its keys are read, by the key index of each file), computes the new
//! value, and emits the changelog in Paimon's "lookup" style — `+I` for a new
//! key, `-U`/`+U` with the old and new row for an update, `-D` with the old
//! row for a delete. Data files therefore always hold whole rows, and reading
//! is "newest sequence number wins" whatever the merge engine.
//!
//! # Reads and the LSM tree
//!
//! [`scan`] plans a snapshot read from the manifest alone: prune row groups
//! by key bounds, group files into sections of overlapping key ranges, read
//! single-run sections as they are and merge the others, cut the
//! work into splits for parallel partitions (the k-way merge is `merge.rs`). [`compact`] keeps the number of
//! sorted runs bounded (Paimon's universal compaction) and expires old
//! snapshots with the files only they referenced.

pub mod cache;
pub mod changelog;
pub mod compact;
pub mod consumer;
pub mod deletion;
pub mod durable;
pub mod error;
pub mod file;
pub mod frame;
pub mod levels;
pub mod options;
pub mod orphans;
pub mod scan;
pub mod schema;
pub mod snapshot;
pub mod table;

mod fold;
mod footers;
mod hot;
mod key_sets;
mod lookup;
mod lru;
mod merge;

pub use changelog::ChangelogReader;
pub use consumer::Consumer;
pub use error::{Error, Result};
pub use file::ColumnRename;
pub use options::{AggregateFunction, TableOptions, Watermark};
pub use scan::{ScanPlan, ScanRequest};
pub use schema::{MergeEngine, RowKind, TableSchema, ValueKind};
pub use snapshot::{CommitKind, FileMeta, Manifest, Snapshot};
pub use table::{ChangelogBatch, SnapshotHold, Table, Transaction};
