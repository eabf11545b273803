//! A planned scan that travels: [`ScanPlan::encode`] and
//! [`ScanPlan::decode`] carry everything reading needs (the snapshot id,
//! the table's schema, every file's metadata and the row groups and key
//! ranges of each split), so a worker process reads exactly the files the
//! coordinator planned, straight from the shared object store, without
//! reading the table's snapshot or manifest itself. [`ScanPlan::deal`]
//! shares one plan's splits among several tasks.

use std::collections::HashMap;
use std::sync::Arc;

use base64::Engine as _;
use serde::{Deserialize, Serialize};

use super::{FileSlice, ScanPlan, Split, key_converter};
use crate::error::{Error, Result};
use crate::file::FileMeta;
use crate::schema::TableSchema;

/// What an encoded plan is called in errors.
const WHAT: &str = "scan plan";

#[derive(Serialize, Deserialize)]
struct WirePlan {
    snapshot: Option<u64>,
    /// The table's schema as stored ([`TableSchema::encode`]), base64.
    table: String,
    projection: Vec<usize>,
    batch_size: usize,
    rows: u64,
    bytes: u64,
    /// Every file a split reads, once (without its key index: reading
    /// needs none).
    files: Vec<FileMeta>,
    partitions: Vec<Vec<WireSplit>>,
}

#[derive(Serialize, Deserialize)]
struct WireSplit {
    /// Runs of (index into `files`, row groups).
    runs: Vec<Vec<(usize, Vec<usize>)>>,
    /// Key bounds as Arrow row bytes, base64.
    lower: Option<String>,
    upper: Option<String>,
    rows: u64,
}

impl ScanPlan {
    /// The plan, to be read elsewhere with [`ScanPlan::decode`].
    ///
    /// # Errors
    /// The schema cannot be encoded.
    pub fn encode(&self) -> Result<Vec<u8>> {
        let b64 = base64::engine::general_purpose::STANDARD;
        let mut files: Vec<FileMeta> = Vec::new();
        let mut index: HashMap<String, usize> = HashMap::new();
        let mut file_of = |meta: &Arc<FileMeta>| -> usize {
            *index.entry(meta.path.clone()).or_insert_with(|| {
                let mut meta = meta.as_ref().clone();
                // Planning's business, done where the plan was made.
                meta.key_index = None;
                meta.stats = None;
                files.push(meta);
                files.len() - 1
            })
        };
        let partitions = self
            .partitions
            .iter()
            .map(|splits| {
                splits
                    .iter()
                    .map(|split| WireSplit {
                        runs: split
                            .runs
                            .iter()
                            .map(|run| run.iter().map(|s| (file_of(&s.meta), s.row_groups.clone())).collect())
                            .collect(),
                        lower: split.lower.as_ref().map(|r| b64.encode(r.row().as_ref())),
                        upper: split.upper.as_ref().map(|r| b64.encode(r.row().as_ref())),
                        rows: split.rows,
                    })
                    .collect()
            })
            .collect();
        let wire = WirePlan {
            snapshot: self.snapshot,
            table: b64.encode(self.table.encode()?),
            projection: self.projection.clone(),
            batch_size: self.batch_size,
            rows: self.rows,
            bytes: self.bytes,
            files,
            partitions,
        };
        Ok(crate::frame::encode(&wire)?.to_vec())
    }

    /// A plan [`ScanPlan::encode`] made.
    ///
    /// # Errors
    /// [`Error::Corrupt`] for bytes that are not such a plan.
    pub fn decode(bytes: &[u8]) -> Result<Self> {
        let b64 = base64::engine::general_purpose::STANDARD;
        let wire: WirePlan = crate::frame::decode(WHAT, bytes)?;
        let schema_bytes = b64.decode(&wire.table).map_err(|e| Error::corrupt(WHAT, format!("bad schema: {e}")))?;
        let table = TableSchema::decode(WHAT, &schema_bytes)?;
        let schema = Arc::new(table.schema.project(&wire.projection)?);
        let converter = key_converter(&table)?;
        let parser = converter.parser();
        let row = |text: &Option<String>| -> Result<Option<arrow::row::OwnedRow>> {
            text.as_ref()
                .map(|t| {
                    let bytes = b64.decode(t).map_err(|e| Error::corrupt(WHAT, format!("bad key bound: {e}")))?;
                    Ok(parser.parse(&bytes).owned())
                })
                .transpose()
        };
        let files: Vec<Arc<FileMeta>> = wire.files.into_iter().map(Arc::new).collect();
        let slice = |(file, row_groups): &(usize, Vec<usize>)| -> Result<FileSlice> {
            let meta = files.get(*file).ok_or_else(|| Error::corrupt(WHAT, format!("no file {file}")))?;
            if let Some(group) = row_groups.iter().find(|&&g| g >= meta.row_groups.len()) {
                return Err(Error::corrupt(WHAT, format!("{} has no row group {group}", meta.path)));
            }
            Ok(FileSlice { meta: Arc::clone(meta), row_groups: row_groups.clone() })
        };
        let mut partitions = Vec::with_capacity(wire.partitions.len());
        for splits in &wire.partitions {
            let mut out = Vec::with_capacity(splits.len());
            for split in splits {
                let runs = split
                    .runs
                    .iter()
                    .map(|run| run.iter().map(&slice).collect::<Result<Vec<_>>>())
                    .collect::<Result<_>>()?;
                out.push(Split { runs, lower: row(&split.lower)?, upper: row(&split.upper)?, rows: split.rows });
            }
            partitions.push(out);
        }
        if wire.projection.iter().any(|&c| c >= table.schema.fields().len()) {
            return Err(Error::corrupt(WHAT, "projection beyond the table's columns"));
        }
        Ok(ScanPlan {
            snapshot: wire.snapshot,
            schema,
            partitions,
            rows: wire.rows,
            bytes: wire.bytes,
            table,
            projection: wire.projection,
            batch_size: wire.batch_size,
        })
    }

    /// The plan's splits shared among `tasks` plans of as many partitions
    /// as this one, balanced by rows: together they read exactly what this
    /// plan reads, each split once.
    pub fn deal(&self, tasks: usize) -> Vec<ScanPlan> {
        let tasks = tasks.max(1);
        let per_task = self.partitions.len().max(1);
        let mut buckets = self.balance(tasks * per_task).into_iter();
        (0..tasks).map(|_| self.with_partitions(buckets.by_ref().take(per_task).collect())).collect()
    }

    /// The plan with its splits dealt again to `partitions` partitions,
    /// balanced by rows (a scan planned with more, smaller splits than it
    /// has partitions, so that they can be dealt to tasks later).
    pub fn regroup(&self, partitions: usize) -> ScanPlan {
        self.with_partitions(self.balance(partitions.max(1)))
    }

    /// The splits in `buckets` partitions: largest first, each to the
    /// emptiest partition (ties to the lowest).
    fn balance(&self, buckets: usize) -> Vec<Vec<Split>> {
        let mut splits: Vec<&Split> = self.partitions.iter().flatten().collect();
        splits.sort_by_key(|s| std::cmp::Reverse(s.rows));
        let mut out: Vec<(u64, Vec<Split>)> = vec![(0, Vec::new()); buckets.max(1)];
        for split in splits {
            let mut emptiest = 0;
            for (i, bucket) in out.iter().enumerate() {
                if bucket.0 < out[emptiest].0 {
                    emptiest = i;
                }
            }
            out[emptiest].0 += split.rows.max(1);
            out[emptiest].1.push(split.clone());
        }
        out.into_iter().map(|(_, splits)| splits).collect()
    }

    /// This plan reading `partitions`, a share of its splits; rows and
    /// bytes are that share's.
    fn with_partitions(&self, partitions: Vec<Vec<Split>>) -> ScanPlan {
        let rows: u64 = partitions.iter().flatten().map(|s| s.rows).sum();
        let bytes = match self.rows {
            0 => 0,
            all => (u128::from(self.bytes) * u128::from(rows) / u128::from(all)) as u64,
        };
        ScanPlan {
            snapshot: self.snapshot,
            schema: Arc::clone(&self.schema),
            partitions,
            rows,
            bytes,
            table: self.table.clone(),
            projection: self.projection.clone(),
            batch_size: self.batch_size,
        }
    }
}
