//! `COPY … FROM STDIN` and `COPY … TO STDOUT` in a session.

use std::collections::HashSet;
use std::sync::Arc;

use datafusion::arrow::datatypes::{Schema, SchemaRef};
use datafusion::catalog::TableProvider;
use datafusion::common::{DFSchema, TableReference};

use super::{Output, Session};
use crate::catalog::{RelationKind, RelationName};
use crate::copy::{ColumnSource, CopyIn, CopyOut, CopyStatement};
use crate::dynamic::DynamicTable;
use crate::dynamic::ingest::{Conform, Ingest};
use crate::error::{Error, Result, StatusCode};
use streamhouse_storage as storage;

/// What a `COPY t (columns) FROM` writes: the table, its provider, the
/// copied columns, and where each table column comes from.
pub(super) type CopyTarget = (RelationName, Arc<dyn TableProvider>, SchemaRef, Vec<ColumnSource>);

impl Session {
    /// Checks a COPY when it is prepared, so a wrong table or column is
    /// reported before the client starts sending data.
    pub(super) async fn check_copy(&mut self, statement: &CopyStatement) -> Result<()> {
        match statement {
            CopyStatement::From { table, columns, .. } => self.copy_target(table, columns).await.map(|_| ()),
            CopyStatement::To { query, .. } => {
                let mut statements = self.parse(query)?;
                let (Some(statement), true) = (statements.pop(), statements.is_empty()) else {
                    return Err(Error::new(StatusCode::InvalidSyntax, "COPY takes exactly one query"));
                };
                Box::pin(self.prepare(statement)).await.map(|_| ())
            }
        }
    }

    /// Resolves the table and columns of a `COPY … FROM`.
    pub(super) async fn copy_target(&mut self, table: &TableReference, columns: &[String]) -> Result<CopyTarget> {
        let name = self.relation_name(table)?;
        let Some(provider) = self.engine.catalog().relation(&name).await? else {
            return Err(crate::catalog::errors::relation_not_found(&name, RelationKind::Table));
        };
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
    pub(super) async fn copy(&mut self, statement: &CopyStatement) -> Result<Output> {
        match statement {
            CopyStatement::From { table, columns, options } => {
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
                Ok(Output::CopyIn(Box::new(copy)))
            }
            CopyStatement::To { query, options } => {
                let mut statements = self.parse(query)?;
                let (Some(statement), true) = (statements.pop(), statements.is_empty()) else {
                    return Err(Error::new(StatusCode::InvalidSyntax, "COPY takes exactly one query"));
                };
                let prepared = Box::pin(self.prepare(statement)).await?;
                match Box::pin(self.execute(&prepared, None)).await? {
                    Output::Rows(stream) => {
                        Ok(Output::CopyOut(CopyOut { stream, options: options.clone(), live: false }))
                    }
                    Output::Live(stream) => {
                        Ok(Output::CopyOut(CopyOut { stream, options: options.clone(), live: true }))
                    }
                    _ => Err(Error::new(StatusCode::InvalidSyntax, "COPY (query) TO needs a query that returns rows")),
                }
            }
        }
    }
}
