//! Table options, named as Apache Paimon names them.
//!
//! | option | default | meaning |
//! |---|---|---|
//! | `merge-engine` | `deduplicate` | `deduplicate`, `partial-update`, `aggregation` or `first-row` |
//! | `sequence.field` | none | a column ordering the writes of a key (`deduplicate`, `partial-update`) |
//! | `fields.<column>.aggregate-function` | `last_non_null_value` | how `aggregation` combines a column |
//! | `fields.default-aggregate-function` | `last_non_null_value` | the function of columns not named |
//! | `fields.<column>.list-agg-delimiter` | `,` | separator of `listagg` |
//! | `num-sorted-run.compaction-trigger` | 5 | sorted runs that start a compaction |
//! | `num-sorted-run.stop-trigger` | trigger + 3 | sorted runs at which writers wait for compaction |
//! | `compaction.max-size-amplification-percent` | 200 | newer runs vs the oldest run, in % |
//! | `compaction.size-ratio` | 1 | % size slack when picking runs of similar size |
//! | `target-file-size` | `128 mb` | size at which compaction starts a new file |
//! | `snapshot.num-retained.min` | 10 | snapshots always kept |
//! | `snapshot.num-retained.max` | 2147483647 | snapshots kept at most |
//! | `snapshot.time-retained` | `1 h` | snapshots younger than this are kept |
//! | `consumer.expiration-time` | none | a consumer not advanced for this long is dropped |

use std::collections::BTreeMap;

use arrow::datatypes::{DataType, Field};
use arrow::row::{RowConverter, SortField};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// How the `aggregation` merge engine combines a column (Paimon's
/// `fields.<column>.aggregate-function`). NULL inputs are ignored by all
/// but `last_value` and `first_value`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AggregateFunction {
    /// Sum of the values (numeric columns).
    Sum,
    /// Product of the values (integer and floating-point columns).
    Product,
    /// Smallest value.
    Min,
    /// Largest value.
    Max,
    /// The latest value, NULL included.
    LastValue,
    /// The latest non-NULL value (the default).
    LastNonNullValue,
    /// The value of the first write.
    FirstValue,
    /// The first non-NULL value.
    FirstNonNullValue,
    /// Logical AND (boolean columns).
    BoolAnd,
    /// Logical OR (boolean columns).
    BoolOr,
    /// The values joined by `fields.<column>.list-agg-delimiter` (text columns).
    Listagg,
}

/// Every aggregate function name, for error messages.
const FUNCTIONS: &[(&str, AggregateFunction)] = &[
    ("sum", AggregateFunction::Sum),
    ("product", AggregateFunction::Product),
    ("min", AggregateFunction::Min),
    ("max", AggregateFunction::Max),
    ("last_value", AggregateFunction::LastValue),
    ("last_non_null_value", AggregateFunction::LastNonNullValue),
    ("first_value", AggregateFunction::FirstValue),
    ("first_non_null_value", AggregateFunction::FirstNonNullValue),
    ("bool_and", AggregateFunction::BoolAnd),
    ("bool_or", AggregateFunction::BoolOr),
    ("listagg", AggregateFunction::Listagg),
];

impl AggregateFunction {
    /// Paimon's name of the function.
    pub fn name(self) -> &'static str {
        FUNCTIONS.iter().find(|(_, f)| *f == self).map_or("?", |(n, _)| n)
    }

    fn parse(key: &str, value: &str) -> Result<Self> {
        let wanted = value.trim().to_ascii_lowercase();
        FUNCTIONS.iter().find(|(n, _)| *n == wanted).map(|(_, f)| *f).ok_or_else(|| {
            Error::Invalid(format!(
                "unknown aggregate function '{value}' for table option '{key}': expected one of {}",
                FUNCTIONS.iter().map(|(n, _)| format!("'{n}'")).collect::<Vec<_>>().join(", ")
            ))
        })
    }
}

/// Parsed table options.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct TableOptions {
    /// How rows with the same key combine.
    pub merge_engine: MergeEngine,
    /// A column whose value orders the writes of a key (`sequence.field`):
    /// a write with a smaller value than the stored row's loses.
    pub sequence_field: Option<String>,
    /// `fields.<column>.aggregate-function`, by column name.
    pub aggregate_functions: BTreeMap<String, AggregateFunction>,
    /// `fields.default-aggregate-function`.
    pub default_aggregate_function: Option<AggregateFunction>,
    /// `fields.<column>.list-agg-delimiter`, by column name.
    pub list_agg_delimiters: BTreeMap<String, String>,
    /// Sorted runs that trigger a compaction.
    pub compaction_trigger: usize,
    /// Sorted runs at which writers stop and compact first (default: trigger + 3).
    pub stop_trigger: Option<usize>,
    /// Size amplification (newer runs / oldest run, %) that triggers a full compaction.
    pub max_size_amplification_percent: u64,
    /// Size ratio slack (%) for picking runs of similar size.
    pub size_ratio: u64,
    /// Compaction output file size, bytes.
    pub target_file_size: u64,
    /// Snapshots always kept.
    pub snapshot_num_retained_min: u64,
    /// Snapshots kept at most.
    pub snapshot_num_retained_max: u64,
    /// Snapshots younger than this (milliseconds) are kept.
    pub snapshot_time_retained_ms: u64,
    /// Consumers not advanced for this long (milliseconds) are dropped; never when `None`.
    pub consumer_expiration_ms: Option<u64>,
    /// The event-time watermark (`'watermark' = 'ts - 5 s'`): every commit
    /// records the largest event time written so far minus the delay.
    pub watermark: Option<Watermark>,
    /// Rows per Parquet row group (not a SQL option; tests lower it to
    /// exercise multi-row-group files with few rows).
    pub row_group_rows: usize,
    /// Bytes of Arrow data a transaction buffers in memory before staging
    /// its writes as files (Paimon's `write-buffer-size`; not a SQL option:
    /// tests lower it to stage in the middle of transactions).
    pub write_buffer_bytes: usize,
    /// Rows from which each write of a group commit gets a file of its own
    /// when the writes' key ranges are disjoint (not a SQL option).
    pub separate_write_rows: usize,
    /// Only the first this many columns make a change (not a SQL option):
    /// an update that changes only the columns after them (a materialized
    /// view's hidden state) writes the row but no changelog rows.
    pub changelog_columns: Option<usize>,
    /// Writes keep no changelog (not a SQL option): a hidden table that
    /// only one writer writes and nobody streams from (an arrangement, a
    /// view's state). A write of a `deduplicate` table without
    /// `sequence.field` stores each key's last change as it is (an upsert,
    /// or a delete whether or not the key is stored) without looking up the
    /// stored rows, and commits no changelog files; its changelog reads
    /// as empty, and a transaction on it sees no conflicting writes.
    pub no_changelog: bool,
    /// `deletion-vectors.enabled` ([`crate::deletion`]): writes mark the rows
    /// they replace, and scans read overlapping runs without merging them.
    /// Fixed when the table is created; on by default for new tables, off
    /// for tables whose stored definition predates it.
    #[serde(default)]
    pub deletion_vectors: bool,
}

impl Default for TableOptions {
    fn default() -> Self {
        Self {
            merge_engine: MergeEngine::Deduplicate,
            sequence_field: None,
            aggregate_functions: BTreeMap::new(),
            default_aggregate_function: None,
            list_agg_delimiters: BTreeMap::new(),
            compaction_trigger: 5,
            stop_trigger: None,
            max_size_amplification_percent: 200,
            size_ratio: 1,
            target_file_size: 128 << 20,
            snapshot_num_retained_min: 10,
            snapshot_num_retained_max: i32::MAX as u64,
            snapshot_time_retained_ms: 3_600_000,
            consumer_expiration_ms: None,
            watermark: None,
            row_group_rows: crate::file::ROW_GROUP_ROWS,
            write_buffer_bytes: WRITE_BUFFER_BYTES,
            separate_write_rows: 1024,
            changelog_columns: None,
            no_changelog: false,
            deletion_vectors: true,
        }
    }
}

/// A transaction's writes are buffered in memory up to this many bytes of
/// values and then staged together (`TableOptions::write_buffer_bytes`):
/// a statement that writes batch by batch (an UPDATE's scan batches, a
/// view's maintenance step) makes a few files of many row groups, not a
/// file per batch, and scans of the table open that many fewer files.
/// 16 MiB makes files of a row group or more (≈ 100 k TPC-H `lineitem`
/// rows); scans of files that size read as fast as of bigger ones, and
/// every open transaction (each view step has several) holds that much.
pub const WRITE_BUFFER_BYTES: usize = 16 << 20;

/// Every option name, for error messages.
const NAMES: &[&str] = &[
    "merge-engine",
    "sequence.field",
    "fields.<column>.aggregate-function",
    "fields.default-aggregate-function",
    "fields.<column>.list-agg-delimiter",
    "num-sorted-run.compaction-trigger",
    "num-sorted-run.stop-trigger",
    "compaction.max-size-amplification-percent",
    "compaction.size-ratio",
    "target-file-size",
    "snapshot.num-retained.min",
    "snapshot.num-retained.max",
    "snapshot.time-retained",
    "consumer.expiration-time",
    "watermark",
    "deletion-vectors.enabled",
];

/// An event-time watermark: `column - delay`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Watermark {
    /// A timestamp column.
    pub column: String,
    /// How late rows may arrive, milliseconds.
    pub delay_ms: i64,
}

impl Watermark {
    /// `ts`, `ts - 5 s`, `ts - INTERVAL '5' SECOND`, `ts - INTERVAL '5 seconds'`.
    fn parse(key: &str, value: &str) -> Result<Self> {
        let (column, delay) = match value.split_once('-') {
            Some((column, delay)) => (column.trim(), Some(delay.trim())),
            None => (value.trim(), None),
        };
        if column.is_empty() || column.contains(char::is_whitespace) {
            return Err(Error::Invalid(format!(
                "invalid value '{value}' for table option '{key}': expected 'column - delay', like 'ts - 5 s'"
            )));
        }
        let delay_ms = match delay {
            None => 0,
            Some(delay) => {
                let delay = delay.strip_prefix("INTERVAL").or_else(|| delay.strip_prefix("interval")).unwrap_or(delay);
                duration_ms(key, &delay.replace('\'', " ").split_whitespace().collect::<Vec<_>>().join(" "))? as i64
            }
        };
        Ok(Self { column: column.trim_matches('"').to_string(), delay_ms })
    }
}

impl TableOptions {
    /// Sorted runs at which a write compacts before it commits.
    pub fn stop_trigger(&self) -> usize {
        self.stop_trigger.unwrap_or(self.compaction_trigger + 3).max(self.compaction_trigger)
    }

    /// Parses `WITH ('key' = 'value', …)` options.
    ///
    /// # Errors
    /// An unknown option or a bad value, naming it.
    pub fn parse(options: &BTreeMap<String, String>) -> Result<Self> {
        let mut out = Self::default();
        for (key, value) in options {
            if let Some(column) = field_option(key, "aggregate-function") {
                out.aggregate_functions.insert(column.to_owned(), AggregateFunction::parse(key, value)?);
                continue;
            }
            if let Some(column) = field_option(key, "list-agg-delimiter") {
                out.list_agg_delimiters.insert(column.to_owned(), value.clone());
                continue;
            }
            match key.as_str() {
                "merge-engine" => out.merge_engine = MergeEngine::parse(value)?,
                "sequence.field" => out.sequence_field = Some(value.trim().to_owned()),
                "fields.default-aggregate-function" => {
                    out.default_aggregate_function = Some(AggregateFunction::parse(key, value)?);
                }
                "num-sorted-run.compaction-trigger" => {
                    out.compaction_trigger = number(key, value)?.max(2) as usize;
                }
                "num-sorted-run.stop-trigger" => out.stop_trigger = Some(number(key, value)?.max(2) as usize),
                "compaction.max-size-amplification-percent" => out.max_size_amplification_percent = number(key, value)?,
                "compaction.size-ratio" => out.size_ratio = number(key, value)?,
                "target-file-size" => out.target_file_size = bytes(key, value)?.max(1),
                "snapshot.num-retained.min" => out.snapshot_num_retained_min = number(key, value)?.max(1),
                "snapshot.num-retained.max" => out.snapshot_num_retained_max = number(key, value)?.max(1),
                "snapshot.time-retained" => out.snapshot_time_retained_ms = duration_ms(key, value)?,
                "consumer.expiration-time" => out.consumer_expiration_ms = Some(duration_ms(key, value)?),
                "watermark" => out.watermark = Some(Watermark::parse(key, value)?),
                "deletion-vectors.enabled" => out.deletion_vectors = boolean(key, value)?,
                other => {
                    return Err(Error::Invalid(format!(
                        "unknown table option '{other}': supported options are {}",
                        NAMES.iter().map(|n| format!("'{n}'")).collect::<Vec<_>>().join(", ")
                    )));
                }
            }
        }
        if out.snapshot_num_retained_max < out.snapshot_num_retained_min {
            return Err(Error::Invalid(format!(
                "table option 'snapshot.num-retained.max' ({}) is less than 'snapshot.num-retained.min' ({})",
                out.snapshot_num_retained_max, out.snapshot_num_retained_min
            )));
        }
        Ok(out)
    }
}

/// The column of `fields.<column>.<suffix>`.
fn field_option<'a>(key: &'a str, suffix: &str) -> Option<&'a str> {
    key.strip_prefix("fields.")?.strip_suffix(suffix)?.strip_suffix('.').filter(|c| !c.is_empty())
}

fn boolean(key: &str, value: &str) -> Result<bool> {
    match value.trim().to_ascii_lowercase().as_str() {
        "true" | "on" | "1" => Ok(true),
        "false" | "off" | "0" => Ok(false),
        _ => Err(Error::Invalid(format!("invalid value '{value}' for table option '{key}': expected true or false"))),
    }
}

fn number(key: &str, value: &str) -> Result<u64> {
    value.trim().parse().map_err(|_| {
        Error::Invalid(format!("invalid value '{value}' for table option '{key}': expected a whole number"))
    })
}

/// `128 mb`, `64MB`, `1 gb`, `4096` (bytes).
fn bytes(key: &str, value: &str) -> Result<u64> {
    let v = value.trim().to_ascii_lowercase();
    let split = v.find(|c: char| !c.is_ascii_digit()).unwrap_or(v.len());
    let (digits, unit) = v.split_at(split);
    let scale: u64 = match unit.trim() {
        "" | "b" => 1,
        "k" | "kb" => 1 << 10,
        "m" | "mb" => 1 << 20,
        "g" | "gb" => 1 << 30,
        _ => 0,
    };
    match digits.parse::<u64>() {
        Ok(n) if scale > 0 => Ok(n.saturating_mul(scale)),
        _ => Err(Error::Invalid(format!(
            "invalid value '{value}' for table option '{key}': expected a size like '128 mb'"
        ))),
    }
}

/// `1 h`, `30 min`, `10 s`, `500 ms`, `2 d`.
fn duration_ms(key: &str, value: &str) -> Result<u64> {
    parse_duration_ms(value).ok_or_else(|| {
        Error::Invalid(format!(
            "invalid value '{value}' for table option '{key}': expected a duration like '1 h' or '30 min'"
        ))
    })
}

/// `1 h`, `30 min`, `10 s`, `500 ms`, `2 d` (a bare number is seconds) in
/// milliseconds; `None` for anything else.
pub fn parse_duration_ms(value: &str) -> Option<u64> {
    let v = value.trim().to_ascii_lowercase();
    let split = v.find(|c: char| !c.is_ascii_digit()).unwrap_or(v.len());
    let (digits, unit) = v.split_at(split);
    let scale: u64 = match unit.trim() {
        "ms" | "millisecond" | "milliseconds" => 1,
        "" | "s" | "sec" | "second" | "seconds" => 1000,
        "m" | "min" | "mins" | "minute" | "minutes" => 60_000,
        "h" | "hour" | "hours" => 3_600_000,
        "d" | "day" | "days" => 86_400_000,
        _ => return None,
    };
    digits.parse::<u64>().ok().map(|n| n.saturating_mul(scale))
}

/// How rows with the same primary key combine (Paimon's `merge-engine`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum MergeEngine {
    /// The last write per key wins (default).
    #[default]
    Deduplicate,
    /// The first write per key wins; later writes are ignored.
    FirstRow,
    /// Non-null columns of later writes replace those of the stored row.
    PartialUpdate,
    /// Each column combines with the stored one by its aggregate function
    /// (`fields.<column>.aggregate-function`).
    Aggregation,
}

impl MergeEngine {
    /// Parses Paimon's option value.
    ///
    /// # Errors
    /// An unknown value, naming the accepted ones.
    pub fn parse(value: &str) -> Result<Self> {
        match value {
            "deduplicate" => Ok(MergeEngine::Deduplicate),
            "first-row" => Ok(MergeEngine::FirstRow),
            "partial-update" => Ok(MergeEngine::PartialUpdate),
            "aggregation" => Ok(MergeEngine::Aggregation),
            other => Err(Error::Invalid(format!(
                "unknown merge-engine '{other}': expected 'deduplicate', 'partial-update', 'aggregation' or 'first-row'"
            ))),
        }
    }

    /// Paimon's name of the engine.
    pub fn name(self) -> &'static str {
        match self {
            MergeEngine::Deduplicate => "deduplicate",
            MergeEngine::FirstRow => "first-row",
            MergeEngine::PartialUpdate => "partial-update",
            MergeEngine::Aggregation => "aggregation",
        }
    }
}

/// Checks that `field` can be ordered (by `option`).
pub(crate) fn check_orderable(option: &str, field: &Field) -> Result<()> {
    if RowConverter::supports_fields(&[SortField::new(field.data_type().clone())]) {
        return Ok(());
    }
    Err(Error::Invalid(format!(
        "table option '{option}' needs a column with an order, but \"{}\" is {}",
        field.name(),
        field.data_type()
    )))
}

/// Checks that `function` applies to columns like `field`.
pub(crate) fn check_aggregate(function: AggregateFunction, field: &Field) -> Result<()> {
    let ty = field.data_type();
    let fits = match function {
        AggregateFunction::Sum => ty.is_integer() || ty.is_floating() || matches!(ty, DataType::Decimal128(..)),
        AggregateFunction::Product => ty.is_integer() || ty.is_floating(),
        AggregateFunction::Min | AggregateFunction::Max => {
            return check_orderable(&format!("fields.{}.aggregate-function", field.name()), field);
        }
        AggregateFunction::BoolAnd | AggregateFunction::BoolOr => ty == &DataType::Boolean,
        AggregateFunction::Listagg => matches!(ty, DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View),
        AggregateFunction::LastValue
        | AggregateFunction::LastNonNullValue
        | AggregateFunction::FirstValue
        | AggregateFunction::FirstNonNullValue => true,
    };
    if fits {
        return Ok(());
    }
    Err(Error::Invalid(format!(
        "aggregate function '{}' does not apply to column \"{}\" of type {ty}",
        function.name(),
        field.name()
    )))
}
