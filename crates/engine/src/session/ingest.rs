//! Bulk ingest of Arrow batches into a table: Flight SQL's
//! `CommandStatementIngest` (what ADBC's `adbc_ingest` sends) and a prepared
//! `INSERT … VALUES ($1, …)` fed parameter batches by DoPut. Batches go to
//! storage as they are (cast per column where the types differ), through the
//! same atomic, bounded-memory write as COPY.

use std::collections::BTreeMap;
use std::sync::Arc;

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::common::{Constraint, Constraints, TableReference};

use super::Session;
use crate::cancel::QueryControl;
use crate::catalog::{CreateTable, RelationKind};
use crate::dynamic::DynamicTable;
use crate::dynamic::ingest::{Conform, Ingest};
use crate::error::{Error, Result, StatusCode};
use streamhouse_storage as storage;

/// What to do when the target table does not exist.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IfTableMissing {
    /// Create it from the data's schema.
    Create,
    /// Fail (42P01).
    Fail,
}

/// What to do when the target table exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IfTableExists {
    /// Fail (42P07).
    Fail,
    /// Add the rows.
    Append,
    /// Drop it and create it again from the data's schema.
    Replace,
}

/// An ingest in progress: batches pushed are written as one atomic write.
#[derive(Debug)]
pub struct IngestWriter {
    conform: Conform,
    ingest: Ingest,
    control: QueryControl,
    rows: u64,
}

impl IngestWriter {
    /// Writes a batch (columns as announced when the ingest began).
    ///
    /// # Errors
    /// A value that does not fit its column; a failed write; cancellation.
    pub async fn push(&mut self, batch: &RecordBatch) -> Result<()> {
        let control = self.control.clone();
        control
            .run(async {
                let rows = self.conform.apply(batch, self.rows + 1)?;
                self.rows += batch.num_rows() as u64;
                self.ingest.push(rows).await
            })
            .await
    }

    /// Commits every row pushed; returns their number.
    ///
    /// # Errors
    /// A conflict with a concurrent writer (40001); storage failures.
    pub async fn finish(self) -> Result<u64> {
        let Self { ingest, control, .. } = self;
        control.run(ingest.finish()).await
    }

    /// Commits nothing.
    pub async fn abort(self) {
        self.ingest.abort().await;
    }
}

/// A created table's column type for an ingested Arrow type.
fn stored_type(data_type: &DataType) -> DataType {
    match data_type {
        DataType::LargeUtf8 | DataType::Utf8View => DataType::Utf8,
        DataType::LargeBinary | DataType::BinaryView => DataType::Binary,
        other => other.clone(),
    }
}

impl Session {
    /// Starts an ingest of batches with columns `schema` (matched to the
    /// table's columns by name) into `table`; `options` are the table options
    /// of a table it creates, where `primary-key` (Paimon's option, a comma
    /// separated column list) declares the key.
    ///
    /// # Errors
    /// The table exists or is missing when the modes say fail; a column the
    /// table does not have (42703); bad options.
    pub async fn ingest(
        &mut self,
        table: &TableReference,
        schema: &SchemaRef,
        if_missing: IfTableMissing,
        if_exists: IfTableExists,
        options: &BTreeMap<String, String>,
    ) -> Result<IngestWriter> {
        let name = self.relation_name(table)?;
        let kind = self.engine.catalog().relation_kind(&name);
        let create = match (kind, if_exists, if_missing) {
            (Some(RelationKind::View), _, _) => {
                return Err(Error::new(
                    StatusCode::WrongObjectType,
                    format!("\"{}\" is a view, not a table", name.name),
                ));
            }
            (Some(_), IfTableExists::Fail, _) => return Err(crate::catalog::errors::relation_exists(&name)),
            (Some(_), IfTableExists::Append, _) => false,
            (Some(_), IfTableExists::Replace, _) => {
                self.require_owner(&name, "replace")?;
                self.engine.catalog().drop_relation(&name, RelationKind::Table, true, false).await?;
                self.engine.access().relation_dropped(&name.schema, &name.name).await?;
                true
            }
            (None, _, IfTableMissing::Create) => true,
            (None, _, IfTableMissing::Fail) => {
                return Err(crate::catalog::errors::relation_not_found(&name, RelationKind::Table));
            }
        };
        if create {
            let mut options = options.clone();
            let key: Vec<String> = options
                .remove("primary-key")
                .map(|k| k.split(',').map(|c| c.trim().to_owned()).filter(|c| !c.is_empty()).collect())
                .unwrap_or_default();
            let mut indices = Vec::with_capacity(key.len());
            for column in &key {
                let index = schema.index_of(column).map_err(|_| {
                    Error::new(
                        StatusCode::ColumnNotFound,
                        format!("primary key column \"{column}\" is not in the data"),
                    )
                })?;
                indices.push(index);
            }
            let fields: Vec<Field> = schema
                .fields()
                .iter()
                .enumerate()
                .map(|(i, f)| {
                    Field::new(f.name(), stored_type(f.data_type()), f.is_nullable() && !indices.contains(&i))
                })
                .collect();
            let constraints = if indices.is_empty() {
                Constraints::default()
            } else {
                Constraints::new_unverified(vec![Constraint::PrimaryKey(indices)])
            };
            let request = CreateTable {
                name: name.clone(),
                schema: Arc::new(Schema::new(fields)),
                constraints,
                column_defaults: vec![],
                if_not_exists: false,
                or_replace: false,
                options,
            };
            self.require_create_in(&name.schema)?;
            let created = self.engine.catalog().create_table(request).await;
            self.engine.bump_catalog_version();
            created?;
            self.record_owner(&name).await?;
        }
        let columns: Vec<String> = schema.fields().iter().map(|f| f.name().clone()).collect();
        let writer = self.ingest_columns(table, &columns).await?;
        let target = Arc::clone(writer.conform.target());
        for field in schema.fields() {
            let Ok(column) = target.field_with_name(field.name()) else { continue };
            if !datafusion::arrow::compute::can_cast_types(field.data_type(), column.data_type()) {
                writer.abort().await;
                return Err(Error::new(
                    StatusCode::TypeMismatch,
                    format!(
                        "column \"{}\" of table {} is {}, and the data's {} cannot be converted to it",
                        field.name(),
                        name.name,
                        crate::types::postgres_type_name(column.data_type()),
                        field.data_type()
                    ),
                ));
            }
        }
        Ok(writer)
    }

    /// Starts an ingest into existing `table` of batches whose columns are,
    /// by position, `columns` of the table (all of them when empty).
    ///
    /// # Errors
    /// As [`Session::ingest`].
    pub async fn ingest_columns(&mut self, table: &TableReference, columns: &[String]) -> Result<IngestWriter> {
        let (name, provider, _, sources) = self.copy_target(table, columns).await?;
        let Some(dynamic) = provider.downcast_ref::<DynamicTable>() else {
            return Err(Error::internal("ingest target is not a Dynamic Table"));
        };
        let target = provider.schema();
        let ingest = Ingest::start(Arc::clone(dynamic.storage()), Arc::clone(&target), storage::ValueKind::Upsert);
        let conform = Conform::new(&name.name, target, sources);
        Ok(IngestWriter { conform, ingest, control: self.begin_statement(), rows: 0 })
    }
}
