//! Plain (non-materialised) views, stored so that they survive a restart.
//!
//! A view is kept as the `CREATE VIEW` statement it was planned from, plus
//! the directory of every relation it reads. The directory, not the name,
//! identifies a relation: after `ALTER … RENAME` the view still reads the
//! same relation (as a Postgres view binds to the relation's oid), and when
//! the server starts the statement's references are renamed to the current
//! names before it is planned again.

use std::sync::{Arc, RwLock};

use datafusion::catalog::TableProvider;
use datafusion::sql::sqlparser::ast;
use object_store::path::Path;
use serde::{Deserialize, Serialize};

use crate::catalog::{DEFAULT_SCHEMA, RelationName};
use crate::error::{Error, Result};

/// The file beside nothing else in a plain view's directory.
const FILE: &str = "plain_view";

/// What is stored about a plain view.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct StoredView {
    /// The `CREATE VIEW` statement, with the names its sources had then.
    pub statement: String,
    /// The relations it reads.
    pub sources: Vec<StoredSource>,
}

/// A relation a view reads: its name when the view was defined, and the
/// directory that identifies it for good.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub(super) struct StoredSource {
    pub schema: String,
    pub name: String,
    /// The relation's directory within its schema.
    pub dir: String,
}

/// A plain view in memory.
#[derive(Debug)]
pub(super) struct PlainView {
    /// The planned view (a DataFusion `ViewTable`).
    pub provider: Arc<dyn TableProvider>,
    /// Where it is stored.
    pub dir: Path,
    pub stored: StoredView,
    /// The defining query with today's names of its sources (`pg_views.definition`).
    pub query: RwLock<String>,
}

impl PlainView {
    /// The defining query as shown today.
    pub fn query_text(&self) -> String {
        self.query.read().map(|q| q.clone()).unwrap_or_default()
    }
}

/// Where a view stored in `dir` keeps its definition.
pub(super) fn path(dir: &Path) -> Path {
    dir.clone().join(FILE)
}

/// Whether `file` (a file name within a relation directory) is a plain view's definition.
pub(super) fn is_definition(file: &str) -> bool {
    file == FILE
}

/// The `CREATE VIEW` statement in `text`.
pub(super) fn parse_create_view(text: &str) -> Result<ast::Statement> {
    match crate::sql::parse(text)?.pop() {
        Some(crate::sql::Statement::Plan(statement)) if matches!(statement.as_ref(), ast::Statement::CreateView(_)) => {
            Ok(*statement)
        }
        _ => Err(Error::internal(format!("stored view definition is not a CREATE VIEW statement: {text}"))),
    }
}

/// The query of a `CREATE VIEW` statement.
pub(super) fn query_of(statement: &ast::Statement) -> Option<&ast::Query> {
    match statement {
        ast::Statement::CreateView(view) => Some(&view.query),
        _ => None,
    }
}

/// The relation an object name in a query names, resolved as the session
/// resolves it (an unqualified name is in the default schema); `None` for a
/// name of another database.
fn resolve(name: &ast::ObjectName, database: &str) -> Option<RelationName> {
    let reference = crate::sql::table_reference(name).ok()?;
    if reference.catalog().is_some_and(|c| c != database) {
        return None;
    }
    Some(RelationName {
        schema: reference.schema().unwrap_or(DEFAULT_SCHEMA).to_string(),
        name: reference.table().to_string(),
    })
}

/// Every relation `query` names (some may be CTEs or system relations: the
/// caller keeps those it knows).
pub(super) fn referenced(query: &ast::Query, database: &str) -> Vec<RelationName> {
    let mut names = Vec::new();
    let _ = ast::visit_relations(query, |name| {
        if let Some(resolved) = resolve(name, database)
            && !names.contains(&resolved)
        {
            names.push(resolved);
        }
        std::ops::ControlFlow::<()>::Continue(())
    });
    names
}

/// Every relation the query in SQL text `query` names (none when it does not parse).
pub(super) fn referenced_by_query(query: &str, database: &str) -> Vec<RelationName> {
    match crate::sql::parse(query).ok().and_then(|mut s| s.pop()) {
        Some(crate::sql::Statement::Plan(statement)) => match statement.as_ref() {
            ast::Statement::Query(query) => referenced(query, database),
            _ => vec![],
        },
        _ => vec![],
    }
}

/// Renames the relations `query` names: each `(old, new)` pair.
pub(super) fn rename_references(query: &mut ast::Query, renames: &[(RelationName, RelationName)], database: &str) {
    if renames.is_empty() {
        return;
    }
    let _ = ast::visit_relations_mut(query, |name| {
        if let Some(resolved) = resolve(name, database)
            && let Some((_, new)) = renames.iter().find(|(old, _)| *old == resolved)
        {
            *name = ast::ObjectName::from(vec![
                ast::Ident::with_quote('"', new.schema.as_str()),
                ast::Ident::with_quote('"', new.name.as_str()),
            ]);
        }
        std::ops::ControlFlow::<()>::Continue(())
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(schema: &str, name: &str) -> RelationName {
        RelationName { schema: schema.into(), name: name.into() }
    }

    #[test]
    fn references_resolve_and_rename_by_schema() {
        let statement = parse_create_view(
            "CREATE VIEW v AS SELECT * FROM t JOIN s.t AS x ON true JOIN db.public.\"T\" ON true, other.public.t",
        )
        .unwrap();
        let query = query_of(&statement).unwrap();
        assert_eq!(referenced(query, "db"), vec![name("public", "t"), name("s", "t"), name("public", "T")]);
        let mut query = query.clone();
        rename_references(&mut query, &[(name("public", "t"), name("public", "u"))], "db");
        let text = query.to_string();
        assert!(text.contains("FROM \"public\".\"u\" JOIN s.t AS x"), "{text}");
        assert!(text.ends_with("other.public.t"), "{text}");
    }
}
