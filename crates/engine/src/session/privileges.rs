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
//! A view's reader needs SELECT on the view only, and what the view reads
//! is checked against the view's owner. DataFusion inlines a plain view as
//! it builds the plan (`SubqueryAlias(view)` over the view's plan), so a view
//! read is recognised by the alias *and* the plan ([`Session::views_in`]).

use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::logical_expr::{DdlStatement, LogicalPlan, WriteOp};
use datafusion::sql::sqlparser::ast;

use datafusion::catalog::view::ViewTable;

use super::Session;
use crate::access::{AccessState, Privilege, SchemaPrivilege};
use crate::catalog::RelationName;
use crate::error::{Error, Result, StatusCode};
use crate::sql::Statement;

/// Plain views a plan reads, with their plans.
pub(super) type Views = std::collections::HashMap<RelationName, LogicalPlan>;

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
    pub(super) fn check_plan(&self, plan: &LogicalPlan, statement: &Statement, views: &Views) -> Result<()> {
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
                    self.check_plan(prepared, statement, views)?;
                }
            }
            _ => {}
        }
        self.check_scans(plan, target.as_ref(), views)
    }

    /// The plain views `plan` reads, with their plans, nested ones too.
    /// DataFusion inlines a view when it plans a statement (a
    /// `SubqueryAlias` named after the view over the view's plan), so the
    /// checks recognise a view by its name *and* its plan: a user's alias
    /// that merely borrows a view's name is not a view read.
    pub(super) async fn views_in(&self, plan: &LogicalPlan) -> Result<Views> {
        let mut views = Views::new();
        if self.checking().is_none() {
            return Ok(views);
        }
        let catalog = self.engine.catalog();
        let mut todo = vec![plan.clone()];
        while let Some(plan) = todo.pop() {
            let mut aliases = Vec::new();
            plan.apply_with_subqueries(|node| {
                match node {
                    LogicalPlan::SubqueryAlias(alias) => aliases.push(alias.alias.clone()),
                    LogicalPlan::TableScan(scan) => aliases.push(scan.table_name.clone()),
                    _ => {}
                }
                Ok(TreeNodeRecursion::Continue)
            })?;
            for alias in aliases {
                let Ok(name) = self.relation_name(&alias) else { continue };
                if views.contains_key(&name) || catalog.relation_kind(&name) != Some(crate::sql::RelationKind::View) {
                    continue;
                }
                let Some(provider) = catalog.relation(&name).await? else { continue };
                if let Some(view) = provider.downcast_ref::<ViewTable>() {
                    todo.push(view.logical_plan().clone());
                    views.insert(name, view.logical_plan().clone());
                }
            }
        }
        Ok(views)
    }

    /// SELECT on every relation `plan` reads, except `skip` (a DML target
    /// whose rows the statement does not read). A view needs SELECT on the
    /// view only; what it reads is checked against its owner.
    pub(super) fn check_scans(&self, plan: &LogicalPlan, skip: Option<&RelationName>, views: &Views) -> Result<()> {
        self.walk_reads(
            plan,
            views,
            |view, view_plan| {
                self.require(view, Privilege::Select).and_then(|()| self.check_as_owner(view, view_plan, views))
            },
            |reference| {
                self.check_scan(reference, skip)?;
                // A view read without inlining (a scan of the view itself).
                match self.relation_name(reference).ok().and_then(|n| views.get_key_value(&n)) {
                    Some((name, view_plan)) => self.check_as_owner(name, view_plan, views),
                    None => Ok(()),
                }
            },
        )
    }

    /// Walks what `plan` reads: `on_view` for each inlined plain view (whose
    /// plan is then not walked here), `on_scan` for each table scan; stops
    /// at the first error.
    fn walk_reads(
        &self,
        plan: &LogicalPlan,
        views: &Views,
        mut on_view: impl FnMut(&RelationName, &LogicalPlan) -> Result<()>,
        mut on_scan: impl FnMut(&datafusion::common::TableReference) -> Result<()>,
    ) -> Result<()> {
        let mut result = Ok(());
        plan.apply_with_subqueries(|node| {
            let (checked, next) = match node {
                LogicalPlan::SubqueryAlias(alias) => match self.inlined_view(&alias.alias, &alias.input, views) {
                    Some((name, view_plan)) => (on_view(&name, view_plan), TreeNodeRecursion::Jump),
                    None => (Ok(()), TreeNodeRecursion::Continue),
                },
                LogicalPlan::TableScan(scan) => (on_scan(&scan.table_name), TreeNodeRecursion::Continue),
                _ => (Ok(()), TreeNodeRecursion::Continue),
            };
            if checked.is_err() {
                result = checked;
                return Ok(TreeNodeRecursion::Stop);
            }
            Ok(next)
        })?;
        result
    }

    /// The view an alias stands for, when it is DataFusion's inlining of
    /// one: named after a plain view, over exactly that view's plan.
    fn inlined_view<'a>(
        &self,
        alias: &datafusion::common::TableReference,
        input: &LogicalPlan,
        views: &'a Views,
    ) -> Option<(RelationName, &'a LogicalPlan)> {
        let name = self.relation_name(alias).ok()?;
        let view_plan = views.get(&name)?;
        let inlined = input == view_plan
            || matches!(input, LogicalPlan::Projection(projection) if projection.input.as_ref() == view_plan);
        inlined.then_some((name, view_plan))
    }

    /// A view reads its sources with its owner's privileges, as in
    /// Postgres, checked at every read: an owner who lost SELECT on a source
    /// no longer lends it to the view's readers.
    fn check_as_owner(&self, view: &RelationName, plan: &LogicalPlan, views: &Views) -> Result<()> {
        let state = self.engine.access().snapshot();
        let owner = state.owner(&view.schema, &view.name).to_string();
        if state.is_superuser(&owner) {
            return Ok(());
        }
        let may_read = |source: &RelationName| {
            if self.engine.catalog().relation_kind(source).is_none()
                || state.has_privilege(&owner, &source.schema, &source.name, Privilege::Select)
            {
                return Ok(());
            }
            Err(Error::new(
                StatusCode::InsufficientPrivilege,
                format!(
                    "permission denied for {} {source}: role \"{owner}\", owner of view {view}, lacks the SELECT \
                     privilege on it",
                    self.noun_of(source)
                ),
            ))
        };
        self.walk_reads(
            plan,
            views,
            |nested, nested_plan| may_read(nested).and_then(|()| self.check_as_owner(nested, nested_plan, views)),
            |reference| match self.relation_name(reference) {
                Ok(source) => may_read(&base_relation(source)),
                Err(_) => Ok(()),
            },
        )
    }

    fn check_scan(&self, reference: &datafusion::common::TableReference, skip: Option<&RelationName>) -> Result<()> {
        let name = self.relation_name(reference)?;
        if skip == Some(&name) {
            return Ok(());
        }
        let base = base_relation(name.clone());
        if base != name || self.engine.catalog().relation_kind(&name).is_some() {
            return self.require(&base, Privilege::Select);
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

/// The table a system table (`t$changelog`, `t$snapshots`, …) describes;
/// any other name as it is.
fn base_relation(name: RelationName) -> RelationName {
    match name.name.rsplit_once('$') {
        Some((base, suffix)) if crate::dynamic::system::SystemKind::parse(suffix).is_some() => {
            RelationName { schema: name.schema.clone(), name: base.to_string() }
        }
        _ => name,
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
