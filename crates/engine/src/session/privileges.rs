//! The privilege checks a session makes before it reads, writes or changes
//! a relation, against the [`crate::access`] state of the moment.
//!
//! A session whose [`SessionInfo::role`](super::SessionInfo::role) is `None`
//! (an embedded engine, or a trusted login under a name that is no role)
//! passes every check. Otherwise:
//!
//! | what | needs |
//! |---|---|
//! | a relation a plan scans (queries, subqueries, `COPY … TO`, `SUBSCRIBE`, cursors, `EXPLAIN`, `table_as_of`) | SELECT on it |
//! | `t$changelog`, `t$snapshots`, … | SELECT on `t` |
//! | `pg_authid`, `pg_shadow` | superuser |
//! | other system tables (`pg_catalog`, `information_schema`, `sys`) | nothing |
//! | `INSERT`, `COPY FROM`, ingest | INSERT on the target |
//! | `UPDATE`, `DELETE` | UPDATE / DELETE; SELECT too when it reads the target (WHERE, computed SET) |
//! | `CREATE TABLE / VIEW / MATERIALIZED VIEW` | CREATE on the schema; SELECT on a view's sources |
//! | `DROP`, `ALTER`, `CALL sys.*`, `OR REPLACE` | ownership |
//! | `CREATE SCHEMA` | superuser; `DROP SCHEMA`: ownership |
//!
//! A view's reader needs SELECT on the view only: the plan checked is the
//! one DataFusion builds before it inlines views.

use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::logical_expr::{DdlStatement, LogicalPlan, WriteOp};
use datafusion::sql::sqlparser::ast;

use super::Session;
use crate::access::{AccessState, Privilege, SchemaPrivilege};
use crate::catalog::RelationName;
use crate::error::{Error, Result, StatusCode};
use crate::sql::Statement;

/// System catalogs only superusers read (they hold password verifiers).
const SUPERUSER_CATALOGS: [&str; 2] = ["pg_authid", "pg_shadow"];

/// 42501 naming the relation, the privilege and the role.
pub(crate) fn denied(kind: &str, name: &RelationName, privilege: &str, role: &str) -> Error {
    Error::new(
        StatusCode::InsufficientPrivilege,
        format!(
            "permission denied for {kind} {name}: role \"{role}\" lacks the {privilege} privilege (its owner or a \
             superuser can GRANT {privilege} ON {name} TO {role})"
        ),
    )
}

impl Session {
    /// The role this session's statements are checked as; `None` passes every check.
    pub(crate) fn checked_role(&self) -> Option<&str> {
        self.info.role.as_deref()
    }

    /// The role that owns what this session creates.
    pub(super) fn owner_role(&self) -> &str {
        self.checked_role().unwrap_or(crate::access::BOOTSTRAP_SUPERUSER)
    }

    /// The role, when the session is checked and not a superuser.
    pub(super) fn restricted_role(&self) -> Option<String> {
        self.checking().map(|(_, role)| role.to_string())
    }

    /// The state to check against, and the role, when there is anything to check.
    fn checking(&self) -> Option<(std::sync::Arc<AccessState>, &str)> {
        let role = self.checked_role()?;
        let state = self.engine.access().snapshot();
        (!state.is_superuser(role)).then_some((state, role))
    }

    /// Fails with 42501 unless the session holds `privilege` on `name`.
    pub(crate) fn require(&self, name: &RelationName, privilege: Privilege) -> Result<()> {
        let Some((state, role)) = self.checking() else { return Ok(()) };
        if state.has_privilege(role, &name.schema, &name.name, privilege) {
            return Ok(());
        }
        Err(denied(self.noun_of(name), name, privilege.keyword(), role))
    }

    /// Fails with 42501 unless the session owns `name` (or is a superuser).
    pub(super) fn require_owner(&self, name: &RelationName, action: &str) -> Result<()> {
        let Some((state, role)) = self.checking() else { return Ok(()) };
        if state.owns(role, &name.schema, &name.name) {
            return Ok(());
        }
        Err(Error::new(
            StatusCode::InsufficientPrivilege,
            format!(
                "must be owner of {} {name} to {action} it (its owner is \"{}\"; role \"{role}\" is not a member)",
                self.noun_of(name),
                state.owner(&name.schema, &name.name)
            ),
        ))
    }

    /// Fails with 42501 unless the session may create relations in `schema`.
    pub(super) fn require_create_in(&self, schema: &str) -> Result<()> {
        let Some((state, role)) = self.checking() else { return Ok(()) };
        if state.has_schema_privilege(role, schema, SchemaPrivilege::Create) {
            return Ok(());
        }
        Err(Error::new(
            StatusCode::InsufficientPrivilege,
            format!(
                "permission denied for schema {schema}: role \"{role}\" lacks the CREATE privilege on it (its owner \
                 or a superuser can GRANT CREATE ON SCHEMA {schema} TO {role})"
            ),
        ))
    }

    /// Fails with 42501 unless the session owns `schema`.
    pub(super) fn require_schema_owner(&self, schema: &str, action: &str) -> Result<()> {
        let Some((state, role)) = self.checking() else { return Ok(()) };
        if state.owns_schema(role, schema) {
            return Ok(());
        }
        Err(Error::new(StatusCode::InsufficientPrivilege, format!("must be owner of schema {schema} to {action} it")))
    }

    /// Fails with 42501 unless the session is a superuser.
    pub(crate) fn require_superuser(&self, what: &str) -> Result<()> {
        let Some((_, role)) = self.checking() else { return Ok(()) };
        Err(Error::new(
            StatusCode::InsufficientPrivilege,
            format!("permission denied: only a superuser may {what} (role \"{role}\" is not one)"),
        ))
    }

    fn noun_of(&self, name: &RelationName) -> &'static str {
        match self.engine.catalog().relation_kind(name) {
            Some(crate::sql::RelationKind::View) => "view",
            Some(crate::sql::RelationKind::MaterializedView) => "materialized view",
            _ => "table",
        }
    }

    /// Checks every relation `plan` reads or writes; `statement` is what it
    /// was planned from (whether an UPDATE or DELETE reads its target).
    pub(super) fn check_plan(&self, plan: &LogicalPlan, statement: &Statement) -> Result<()> {
        if self.checking().is_none() {
            return Ok(());
        }
        let mut target: Option<RelationName> = None;
        match plan {
            LogicalPlan::Dml(dml) => {
                let name = self.relation_name(&dml.table_name)?;
                let (privilege, reads_target) = match &dml.op {
                    WriteOp::Insert(_) => (Privilege::Insert, true),
                    WriteOp::Update => (Privilege::Update, update_reads_target(statement)),
                    WriteOp::Delete => (Privilege::Delete, delete_reads_target(statement)),
                    WriteOp::Ctas => (Privilege::Insert, true),
                    _ => (Privilege::Delete, true),
                };
                self.require(&name, privilege)?;
                if !reads_target {
                    target = Some(name);
                }
            }
            LogicalPlan::Ddl(ddl) => match ddl {
                DdlStatement::CreateMemoryTable(create) => {
                    let name = self.relation_name(&create.name)?;
                    self.require_create_in(&name.schema)?;
                    if create.or_replace && self.engine.catalog().relation_kind(&name).is_some() {
                        self.require_owner(&name, "replace")?;
                    }
                }
                DdlStatement::CreateView(create) => {
                    let name = self.relation_name(&create.name)?;
                    self.require_create_in(&name.schema)?;
                    if create.or_replace && self.engine.catalog().relation_kind(&name).is_some() {
                        self.require_owner(&name, "replace")?;
                    }
                }
                DdlStatement::CreateCatalogSchema(_) => self.require_superuser("create schemas")?,
                DdlStatement::DropCatalogSchema(drop) => self.require_schema_owner(drop.name.schema_name(), "drop")?,
                _ => {}
            },
            LogicalPlan::Statement(datafusion::logical_expr::Statement::Execute(execute)) => {
                if let Some(prepared) = self.sql_prepared.get(&execute.name) {
                    self.check_plan(prepared, statement)?;
                }
            }
            _ => {}
        }
        self.check_scans(plan, target.as_ref())
    }

    /// SELECT on every relation `plan` scans, except `skip` (a DML target
    /// whose rows the statement does not read).
    pub(super) fn check_scans(&self, plan: &LogicalPlan, skip: Option<&RelationName>) -> Result<()> {
        let mut result = Ok(());
        plan.apply_with_subqueries(|node| {
            if let LogicalPlan::TableScan(scan) = node {
                let checked = self.check_scan(&scan.table_name, skip);
                if checked.is_err() {
                    result = checked;
                    return Ok(TreeNodeRecursion::Stop);
                }
            }
            Ok(TreeNodeRecursion::Continue)
        })?;
        result
    }

    fn check_scan(&self, reference: &datafusion::common::TableReference, skip: Option<&RelationName>) -> Result<()> {
        let name = self.relation_name(reference)?;
        if skip == Some(&name) {
            return Ok(());
        }
        if let Some((base, suffix)) = name.name.rsplit_once('$')
            && crate::dynamic::system::SystemKind::parse(suffix).is_some()
        {
            let base = RelationName { schema: name.schema.clone(), name: base.to_string() };
            return self.require(&base, Privilege::Select);
        }
        if self.engine.catalog().relation_kind(&name).is_some() {
            return self.require(&name, Privilege::Select);
        }
        if SUPERUSER_CATALOGS.contains(&name.name.as_str()) {
            return self.require_superuser(&format!("read {}", name.name));
        }
        Ok(())
    }

    /// `table_as_of('t', …)`: SELECT on `t`.
    pub(crate) fn table_as_of_check(&self) -> impl Fn(&RelationName) -> Result<()> + Send + Sync + 'static {
        let role = self.checked_role().map(str::to_string);
        let access = std::sync::Arc::clone(self.engine.access());
        move |name: &RelationName| {
            let Some(role) = &role else { return Ok(()) };
            let state = access.snapshot();
            if state.has_privilege(role, &name.schema, &name.name, Privilege::Select) {
                Ok(())
            } else {
                Err(denied("table", name, "SELECT", role))
            }
        }
    }
}

/// An UPDATE reads its target when it has a WHERE or computes a value from columns.
fn update_reads_target(statement: &Statement) -> bool {
    let Some(ast::Statement::Update(update)) = statement.as_plan() else { return true };
    update.selection.is_some() || update.from.is_some() || !update.assignments.iter().all(|a| is_constant(&a.value))
}

/// A DELETE reads its target when it has a WHERE (or USING).
fn delete_reads_target(statement: &Statement) -> bool {
    let Some(ast::Statement::Delete(delete)) = statement.as_plan() else { return true };
    delete.selection.is_some() || delete.using.is_some()
}

/// A literal or a parameter, possibly cast: reads no column.
fn is_constant(expr: &ast::Expr) -> bool {
    match expr {
        ast::Expr::Value(_) => true,
        ast::Expr::Cast { expr, .. } | ast::Expr::Nested(expr) | ast::Expr::UnaryOp { expr, .. } => is_constant(expr),
        _ => false,
    }
}
