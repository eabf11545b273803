//! Table definitions: columns, primary key, merge engine, and the system
//! columns every data file carries.

use std::sync::Arc;

use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use base64::Engine as _;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::file::{ColumnRename, RENAMES_KEY};
pub use crate::options::MergeEngine;
use crate::options::{AggregateFunction, TableOptions};

/// Sequence number column of data files: higher wins for the same key.
pub const SEQ_COLUMN: &str = "_seq";
/// Row kind column of data files (see [`ValueKind`]) and changelog files (see [`RowKind`]).
pub const KIND_COLUMN: &str = "_kind";

/// What a row in a data file says about its key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(i8)]
pub enum ValueKind {
    /// The key has this value.
    Upsert = 0,
    /// The key was deleted.
    Delete = 1,
    /// Write only: insert the row if its key has no value (`INSERT … ON
    /// CONFLICT DO NOTHING`). Stored as [`ValueKind::Upsert`].
    Insert = 2,
}

/// Kinds of changelog rows, in Flink/Paimon vocabulary.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(i8)]
pub enum RowKind {
    /// `+I`: a new key.
    Insert = 0,
    /// `-U`: the old value of an updated key.
    UpdateBefore = 1,
    /// `+U`: the new value of an updated key.
    UpdateAfter = 2,
    /// `-D`: the last value of a deleted key.
    Delete = 3,
}

impl RowKind {
    /// `+I`, `-U`, `+U` or `-D`.
    pub fn symbol(self) -> &'static str {
        match self {
            RowKind::Insert => "+I",
            RowKind::UpdateBefore => "-U",
            RowKind::UpdateAfter => "+U",
            RowKind::Delete => "-D",
        }
    }

    /// The kind stored as `code`.
    pub fn from_code(code: i8) -> Option<Self> {
        Some(match code {
            0 => RowKind::Insert,
            1 => RowKind::UpdateBefore,
            2 => RowKind::UpdateAfter,
            3 => RowKind::Delete,
            _ => return None,
        })
    }
}

/// A table's definition, one version of it.
#[derive(Debug, Clone, PartialEq)]
pub struct TableSchema {
    /// Version number; data files record the version they were written with.
    pub id: u64,
    /// User columns.
    pub schema: SchemaRef,
    /// Primary key column indexes into `schema`; empty for append-only tables.
    pub primary_key: Vec<usize>,
    /// Table options (merge engine, compaction, retention).
    pub options: TableOptions,
    /// `DEFAULT` expressions by column, as SQL text (the engine interprets them).
    pub column_defaults: Vec<(String, String)>,
    /// Column renames, oldest first: files written before a rename's
    /// version hold the column under its old name.
    pub renames: Vec<ColumnRename>,
}

#[derive(Serialize, Deserialize)]
struct StoredSchema {
    id: u64,
    /// Column summary for humans; `arrow_schema` is authoritative.
    columns: Vec<String>,
    primary_key: Vec<String>,
    #[serde(default)]
    options: TableOptions,
    #[serde(default)]
    column_defaults: Vec<(String, String)>,
    #[serde(default)]
    renames: Vec<ColumnRename>,
    /// The Arrow schema as an IPC stream, base64.
    arrow_schema: String,
}

impl TableSchema {
    /// A new definition.
    ///
    /// # Errors
    /// Unknown key columns, names reserved for system columns, or options
    /// that do not fit the columns.
    pub fn new(id: u64, schema: SchemaRef, primary_key: &[&str], options: TableOptions) -> Result<Self> {
        for field in schema.fields() {
            if field.name() == SEQ_COLUMN || field.name() == KIND_COLUMN {
                return Err(Error::Invalid(format!("column name \"{}\" is reserved", field.name())));
            }
        }
        let mut key = Vec::with_capacity(primary_key.len());
        for name in primary_key {
            let index = schema
                .index_of(name)
                .map_err(|_| Error::Invalid(format!("primary key column \"{name}\" is not a column of the table")))?;
            key.push(index);
        }
        // Key columns are NOT NULL, as in Postgres.
        let fields: Vec<Field> = schema
            .fields()
            .iter()
            .enumerate()
            .map(|(i, f)| f.as_ref().clone().with_nullable(f.is_nullable() && !key.contains(&i)))
            .collect();
        let table = Self {
            id,
            schema: Arc::new(Schema::new(fields)),
            primary_key: key,
            options,
            column_defaults: vec![],
            renames: vec![],
        };
        table.check_options()?;
        Ok(table)
    }

    /// Checks the options that name columns against the columns.
    fn check_options(&self) -> Result<()> {
        let options = &self.options;
        let engine = options.merge_engine;
        if engine != MergeEngine::Deduplicate && !self.has_primary_key() {
            return Err(Error::Invalid(format!(
                "merge-engine '{}' needs a primary key: a table without one is append-only",
                engine.name()
            )));
        }
        let column = |option: &str, name: &str| {
            self.schema.index_of(name).map_err(|_| {
                Error::Invalid(format!(
                    "table option '{option}' names column \"{name}\", which the table does not have"
                ))
            })
        };
        if let Some(name) = &options.sequence_field {
            let index = column("sequence.field", name)?;
            if !matches!(engine, MergeEngine::Deduplicate | MergeEngine::PartialUpdate) {
                return Err(Error::Unsupported(format!(
                    "table option 'sequence.field' works with merge-engine 'deduplicate' or 'partial-update', not '{}'",
                    engine.name()
                )));
            }
            if !self.has_primary_key() {
                return Err(Error::Invalid("table option 'sequence.field' needs a primary key".into()));
            }
            crate::options::check_orderable("sequence.field", self.schema.field(index))?;
        }
        if let Some(watermark) = &options.watermark {
            let index = column("watermark", &watermark.column)?;
            if !matches!(self.schema.field(index).data_type(), arrow::datatypes::DataType::Timestamp(_, _)) {
                return Err(Error::Invalid(format!(
                    "table option 'watermark' needs a timestamp column; \"{}\" is {}",
                    watermark.column,
                    self.schema.field(index).data_type()
                )));
            }
        }
        let named = options.aggregate_functions.keys().chain(options.list_agg_delimiters.keys());
        let any_named = named.clone().next().is_some() || options.default_aggregate_function.is_some();
        if any_named && engine != MergeEngine::Aggregation {
            return Err(Error::Invalid(format!(
                "aggregate functions need merge-engine 'aggregation', but the table's is '{}'",
                engine.name()
            )));
        }
        for name in named {
            let index = column(&format!("fields.{name}.aggregate-function"), name)?;
            if self.primary_key.contains(&index) {
                return Err(Error::Invalid(format!(
                    "column \"{name}\" is part of the primary key and takes no aggregate function"
                )));
            }
        }
        if engine == MergeEngine::Aggregation {
            for (index, field) in self.schema.fields().iter().enumerate() {
                if let Some(function) = self.aggregate_function(index) {
                    crate::options::check_aggregate(function, field)?;
                }
            }
        }
        Ok(())
    }

    /// The aggregate function of column `index` under the `aggregation`
    /// merge engine; `None` for key columns.
    pub fn aggregate_function(&self, index: usize) -> Option<AggregateFunction> {
        if self.primary_key.contains(&index) {
            return None;
        }
        let name = self.schema.field(index).name();
        Some(
            self.options
                .aggregate_functions
                .get(name)
                .or(self.options.default_aggregate_function.as_ref())
                .copied()
                .unwrap_or(AggregateFunction::LastNonNullValue),
        )
    }

    /// Whether the table has a primary key (otherwise it is append-only).
    pub fn has_primary_key(&self) -> bool {
        !self.primary_key.is_empty()
    }

    /// Whether its writes keep deletion vectors ([`crate::deletion`]): a
    /// keyed table created with `deletion-vectors.enabled` (the default),
    /// unless it keeps no changelog (its writes are blind: they look
    /// nothing up, so they could not say which rows they replace).
    pub fn deletion_vectors(&self) -> bool {
        self.has_primary_key() && self.options.deletion_vectors && !self.options.no_changelog
    }

    /// The schema of data files: user columns, then `_seq` (UInt64) and `_kind` (Int8).
    /// A renamed table's carries its renames (see [`RENAMES_KEY`]).
    pub fn data_file_schema(&self) -> SchemaRef {
        let mut fields: Vec<Field> = self.schema.fields().iter().map(|f| f.as_ref().clone()).collect();
        fields.push(Field::new(SEQ_COLUMN, DataType::UInt64, false));
        fields.push(Field::new(KIND_COLUMN, DataType::Int8, false));
        let mut metadata = std::collections::HashMap::new();
        if !self.renames.is_empty()
            && let Ok(renames) = serde_json::to_string(&self.renames)
        {
            metadata.insert(RENAMES_KEY.to_string(), renames);
        }
        Arc::new(Schema::new_with_metadata(fields, metadata))
    }

    /// The next definition, with column `from` called `to`.
    ///
    /// # Errors
    /// No column `from`; a column `to` exists; `from` is named by a table
    /// option (which would have to follow it).
    pub fn renamed(&self, from: &str, to: &str) -> Result<Self> {
        let index = self.schema.index_of(from).map_err(|_| Error::NotFound { what: format!("column \"{from}\"") })?;
        if self.schema.index_of(to).is_ok() {
            return Err(Error::Invalid(format!("column \"{to}\" already exists")));
        }
        if to == SEQ_COLUMN || to == KIND_COLUMN {
            return Err(Error::Invalid(format!("column name \"{to}\" is reserved")));
        }
        let options = &self.options;
        let named = options.sequence_field.as_deref() == Some(from)
            || options.watermark.as_ref().is_some_and(|w| w.column == from)
            || options.aggregate_functions.contains_key(from)
            || options.list_agg_delimiters.contains_key(from);
        if named {
            return Err(Error::Unsupported(format!(
                "column \"{from}\" is named by a table option; renaming it is not supported"
            )));
        }
        let fields: Vec<Field> = self
            .schema
            .fields()
            .iter()
            .enumerate()
            .map(|(i, f)| if i == index { f.as_ref().clone().with_name(to) } else { f.as_ref().clone() })
            .collect();
        let mut next = self.clone();
        next.id = self.id + 1;
        next.schema = Arc::new(Schema::new_with_metadata(fields, self.schema.metadata().clone()));
        for (column, _) in &mut next.column_defaults {
            if column == from {
                *column = to.to_string();
            }
        }
        next.renames.push(ColumnRename { version: next.id, from: from.to_string(), to: to.to_string() });
        Ok(next)
    }

    /// The schema of changelog files: user columns, then `_seq` and `_kind` ([`RowKind`] codes).
    pub fn changelog_file_schema(&self) -> SchemaRef {
        self.data_file_schema()
    }

    pub(crate) fn encode(&self) -> Result<bytes::Bytes> {
        let mut ipc = Vec::new();
        {
            let mut writer = arrow::ipc::writer::StreamWriter::try_new(&mut ipc, &self.schema)?;
            writer.finish()?;
        }
        let stored = StoredSchema {
            id: self.id,
            columns: self.schema.fields().iter().map(|f| format!("{} {}", f.name(), f.data_type())).collect(),
            primary_key: self.primary_key.iter().map(|&i| self.schema.field(i).name().clone()).collect(),
            options: self.options.clone(),
            column_defaults: self.column_defaults.clone(),
            renames: self.renames.clone(),
            arrow_schema: base64::engine::general_purpose::STANDARD.encode(ipc),
        };
        crate::frame::encode(&stored)
    }

    pub(crate) fn decode(path: &str, bytes: &[u8]) -> Result<Self> {
        let stored: StoredSchema = crate::frame::decode(path, bytes)?;
        let ipc = base64::engine::general_purpose::STANDARD
            .decode(&stored.arrow_schema)
            .map_err(|e| Error::corrupt(path, format!("bad schema encoding: {e}")))?;
        let reader = arrow::ipc::reader::StreamReader::try_new(std::io::Cursor::new(ipc), None)
            .map_err(|e| Error::corrupt(path, format!("bad Arrow schema: {e}")))?;
        let schema = reader.schema();
        let names: Vec<&str> = stored.primary_key.iter().map(String::as_str).collect();
        let mut table =
            TableSchema::new(stored.id, schema, &names, stored.options).map_err(|e| Error::corrupt(path, e))?;
        table.id = stored.id;
        table.column_defaults = stored.column_defaults;
        table.renames = stored.renames;
        Ok(table)
    }
}
