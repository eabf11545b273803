//! `COPY … FROM STDIN` and `COPY … TO STDOUT` in a session: the codecs of
//! [`crate::copy`] joined to a table's ingest, or to a query's rows.

use std::collections::HashSet;
use std::sync::Arc;

use datafusion::arrow::datatypes::{Schema, SchemaRef};
use datafusion::catalog::TableProvider;
use datafusion::common::{DFSchema, TableReference};

use datafusion::arrow::array::RecordBatch;
use datafusion::logical_expr::LogicalPlan;

use super::{CommandComplete, Output, Session};
use crate::cancel::QueryControl;
use crate::catalog::RelationName;
use crate::copy::binary::BinaryDecoder;
use crate::copy::{CopyDecoder, CopyFormat, CopyOptions, CopyOut};
use crate::dynamic::DynamicTable;
use crate::dynamic::ingest::{ColumnSource, Conform, Ingest};
use crate::error::{Error, Result, StatusCode};
use crate::sql::{Copy, RelationKind};
use streamhouse_storage as storage;

/// What a `COPY t (columns) FROM` writes: the table, its provider, the
/// copied columns, and where each table column comes from.
pub(super) type CopyTarget = (RelationName, Arc<dyn TableProvider>, SchemaRef, Vec<ColumnSource>);

impl Session {
    /// Checks a COPY when it is prepared, so a wrong table or column is
    /// reported before the client starts sending data.
    pub(super) async fn check_copy(&mut self, statement: &Copy) -> Result<()> {
        match statement {
            Copy::From { table, columns, .. } => self.copy_target(table, columns).await.map(|_| ()),
            Copy::TableTo { table, columns, .. } => self.copy_table_plan(table, columns).await.map(|_| ()),
            Copy::QueryTo { query, .. } => Box::pin(self.prepare(query.as_ref().clone())).await.map(|_| ()),
        }
    }

    /// The plan of `COPY t [(columns)] TO`: the columns of the table, in order.
    async fn copy_table_plan(&self, table: &TableReference, columns: &[String]) -> Result<LogicalPlan> {
        let frame = self.ctx.table(table.clone()).await?;
        let frame = if columns.is_empty() {
            frame
        } else {
            frame.select_columns(&columns.iter().map(String::as_str).collect::<Vec<_>>())?
        };
        let plan = frame.into_unoptimized_plan();
        let views = self.views_in(&plan).await?;
        self.check_scans(&plan, None, &views)?;
        Ok(plan)
    }

    /// Resolves the table and columns of a `COPY … FROM`.
    pub(super) async fn copy_target(&mut self, table: &TableReference, columns: &[String]) -> Result<CopyTarget> {
        let name = self.relation_name(table)?;
        let Some(provider) = self.engine.catalog().relation(&name).await? else {
            return Err(crate::catalog::errors::relation_not_found(&name, RelationKind::Table));
        };
        self.require(&name, crate::access::Privilege::Insert)?;
        if provider.downcast_ref::<DynamicTable>().is_none() {
            return Err(Error::new(
                StatusCode::WrongObjectType,
                format!("cannot copy to \"{}\": it is not a table", name.name),
            ));
        }
        let schema = provider.schema();
        let columns: Vec<String> = if columns.is_empty() {
            schema.fields().iter().map(|f| f.name().clone()).collect()
        } else {
            columns.to_vec()
        };
        let mut seen = HashSet::new();
        let mut copied = Vec::with_capacity(columns.len());
        for column in &columns {
            let Ok(field) = schema.field_with_name(column) else {
                return Err(Error::new(
                    StatusCode::ColumnNotFound,
                    format!("column \"{column}\" of relation \"{}\" does not exist", name.name),
                ));
            };
            if !seen.insert(column.as_str()) {
                return Err(Error::new(
                    StatusCode::DuplicateColumn,
                    format!("column \"{column}\" specified more than once"),
                ));
            }
            copied.push(field.clone());
        }
        let empty = DFSchema::empty();
        let mut sources = Vec::with_capacity(schema.fields().len());
        for field in schema.fields() {
            let source = match columns.iter().position(|c| c == field.name()) {
                Some(i) => ColumnSource::Copied(i),
                None => match provider.get_column_default(field.name()) {
                    Some(default) => ColumnSource::Default(self.ctx.create_physical_expr(default.clone(), &empty)?),
                    None => ColumnSource::Null,
                },
            };
            sources.push(source);
        }
        Ok((name, provider, Arc::new(Schema::new(copied)), sources))
    }
    /// Starts a COPY: an input the client feeds, or rows to send.
    pub(super) async fn copy(&mut self, statement: &Copy) -> Result<Output> {
        let (output, options) = match statement {
            Copy::From { table, columns, options } => {
                let (name, provider, copied, sources) = self.copy_target(table, columns).await?;
                let Some(dynamic) = provider.downcast_ref::<DynamicTable>() else {
                    return Err(Error::internal("COPY target is not a Dynamic Table"));
                };
                let schema = provider.schema();
                let ingest =
                    Ingest::start(Arc::clone(dynamic.storage()), Arc::clone(&schema), storage::ValueKind::Upsert);
                let control = self.begin_statement();
                let conform = Conform::new(&name.name, Arc::clone(&schema), sources);
                let copy = CopyIn::new(&name.name, options.clone(), copied, conform, ingest, control)?;
                return Ok(Output::CopyIn(Box::new(copy)));
            }
            Copy::TableTo { table, columns, options } => {
                let plan = self.copy_table_plan(table, columns).await?;
                let prepared = super::Prepared {
                    statement: crate::sql::Statement::Copy(Box::new(statement.clone())),
                    plan: Some(plan),
                    catalog_version: self.engine.catalog_version(),
                    column_names: None,
                    point: None,
                    origins: vec![],
                };
                (Box::pin(self.run_prepared_plan(&prepared, None)).await?, options)
            }
            Copy::QueryTo { query, options } => {
                let prepared = Box::pin(self.prepare(query.as_ref().clone())).await?;
                (Box::pin(self.execute(&prepared, None)).await?, options)
            }
        };
        match output {
            Output::Rows(stream) => Ok(Output::CopyOut(CopyOut { stream, options: options.clone(), live: false })),
            Output::Live(stream) => Ok(Output::CopyOut(CopyOut { stream, options: options.clone(), live: true })),
            _ => Err(Error::new(StatusCode::InvalidSyntax, "COPY (query) TO needs a query that returns rows")),
        }
    }
}

/// Rows decoded per batch.
const DECODE_BATCH_ROWS: usize = 8192;

/// A `COPY … FROM STDIN` in progress: data arrives through
/// [`CopyIn::push`], rows stream into the table, and [`CopyIn::finish`]
/// commits them all at once. Dropping it or [`CopyIn::abort`] commits nothing.
#[derive(Debug)]
pub struct CopyIn {
    format: CopyFormat,
    copied: usize,
    decoder: Decoder,
    conform: Conform,
    ingest: Ingest,
    control: QueryControl,
    rows: u64,
}

#[derive(Debug)]
enum Decoder {
    Text(CopyDecoder),
    Binary(BinaryDecoder),
}

impl CopyIn {
    fn new(
        table: &str,
        options: CopyOptions,
        copied: SchemaRef,
        conform: Conform,
        ingest: Ingest,
        control: QueryControl,
    ) -> Result<Self> {
        let format = options.format;
        let columns = copied.fields().len();
        let decoder = match format {
            CopyFormat::Binary => Decoder::Binary(BinaryDecoder::new(table, copied, DECODE_BATCH_ROWS)?),
            _ => Decoder::Text(CopyDecoder::new(table, copied, options, DECODE_BATCH_ROWS)?),
        };
        Ok(Self { format, copied: columns, decoder, conform, ingest, control, rows: 0 })
    }

    /// The data format the client must send.
    pub fn format(&self) -> CopyFormat {
        self.format
    }

    /// The number of columns the client sends.
    pub fn columns(&self) -> usize {
        self.copied
    }

    /// Decodes a chunk of COPY data and writes the rows it completes.
    ///
    /// # Errors
    /// Malformed data (22P02, 22P03, 22P04, 23502, naming line and column);
    /// a failed write; cancellation (57014) and statement timeout.
    pub async fn push(&mut self, data: &[u8]) -> Result<()> {
        let control = self.control.clone();
        control
            .run(async {
                let batches = match &mut self.decoder {
                    Decoder::Text(d) => d.push(data)?,
                    Decoder::Binary(d) => d.push(data)?,
                };
                for batch in batches {
                    self.write(batch).await?;
                }
                Ok(())
            })
            .await
    }

    async fn write(&mut self, copied: RecordBatch) -> Result<()> {
        let batch = self.conform.apply(&copied, self.rows + 1)?;
        self.rows += copied.num_rows() as u64;
        self.ingest.push(batch).await
    }

    /// The end of the data: writes the last rows and commits the COPY.
    ///
    /// # Errors
    /// As [`CopyIn::push`]; a conflict with a concurrent writer (40001).
    pub async fn finish(mut self) -> Result<CommandComplete> {
        let control = self.control.clone();
        control
            .run(async move {
                let last = match &mut self.decoder {
                    Decoder::Text(d) => d.finish()?,
                    Decoder::Binary(d) => d.finish()?,
                };
                if let Some(batch) = last {
                    self.write(batch).await?;
                }
                let rows = self.ingest.finish().await?;
                Ok(CommandComplete::new("COPY").with_rows(rows))
            })
            .await
    }

    /// Abandons the COPY: nothing of it is committed.
    pub async fn abort(self) {
        self.ingest.abort().await;
    }
}
