//! streamhouse's SQL dialect: one parser for sessions, Flight, stored view
//! definitions and tests alike.
//!
//! ```text
//!   SQL text ──► parse ──► Vec<Statement>
//!                  │  SUBSCRIBE, FETCH … WITH, DECLARE … FOR SUBSCRIBE,
//!                  │  COPY, CREATE TABLE (WATERMARK FOR, WITH (…)): parsed here
//!                  └─ everything else: sqlparser's Postgres parser, then
//!                     classify (SET/SHOW/transactions/CALL/DROP/… → typed nodes,
//!                     refusals → 0A000, the rest → Statement::Plan for DataFusion)
//! ```
//!
//! The parser depends on nothing of the engine but errors and the COPY
//! option types; it never rewrites SQL text or tokens. Identifiers fold as
//! Postgres folds them ([`ident_value`]), once, here.
//!
//! - [`parser`]: the parser and the classification of standard statements.
//! - [`statement`]: the [`Statement`] enum and its nodes.
//! - [`windows`]: `TUMBLE(…)` and `HOP(…)` in FROM, expanded in the AST.
//! - [`limits`]: bounds on a statement's depth, checked before and right
//!   after parsing (54001), so no statement can exhaust a stack.

pub mod compat;
pub mod limits;
mod parser;
mod statement;
pub mod windows;

use datafusion::common::TableReference;
use datafusion::sql::sqlparser::ast;

pub use parser::{parse, parse_question_mark_parameters};
pub use statement::{
    AddColumn, Copy, CreateMaterializedView, CreateTable, Cutoff, Grant, Granted, InsertIgnoringConflicts, Procedure,
    RelationKind, Start, Statement, Subscribe, SubscribeOptions, ViewAlteration,
};

use crate::error::{Error, Result};

/// A relation name as written, resolved as Postgres resolves identifiers.
///
/// # Errors
/// More than three parts (42601).
pub fn table_reference(name: &ast::ObjectName) -> Result<TableReference> {
    let parts: Vec<String> = name.0.iter().map(|p| p.as_ident().map_or_else(|| p.to_string(), ident_value)).collect();
    Ok(match parts.as_slice() {
        [table] => TableReference::bare(table.as_str()),
        [schema, table] => TableReference::partial(schema.as_str(), table.as_str()),
        [catalog, schema, table] => TableReference::full(catalog.as_str(), schema.as_str(), table.as_str()),
        _ => {
            return Err(Error::new(crate::error::StatusCode::InvalidSyntax, format!("improper relation name: {name}")));
        }
    })
}

/// An identifier as Postgres resolves it: unquoted ones fold to lower case.
pub fn ident_value(ident: &ast::Ident) -> String {
    match ident.quote_style {
        Some(_) => ident.value.clone(),
        None => ident.value.to_lowercase(),
    }
}

#[cfg(test)]
mod tests;
