//! DDL a session runs: `CREATE TABLE [AS]`, `CREATE VIEW`, `CREATE|DROP
//! SCHEMA` (planned by DataFusion, carried out by the catalog), `DROP`,
//! `ALTER TABLE … ADD COLUMN`, `CREATE MATERIALIZED VIEW` and `CALL sys.…`.

use std::sync::Arc;

use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::catalog::TableProvider;
use datafusion::catalog::view::ViewTable;
use datafusion::common::TableReference;
use datafusion::datasource::provider_as_source;
use datafusion::logical_expr::dml::InsertOp;
use datafusion::logical_expr::{DdlStatement, LogicalPlan, LogicalPlanBuilder};
use datafusion::sql::parser::Statement as DFStatement;
use datafusion::sql::sqlparser::ast;

use super::{CommandComplete, NoticeSeverity, Output, Session, naming};
use crate::cancel::QueryControl;
use crate::catalog::{CreateMaterializedView, CreateTable, Created, DEFAULT_SCHEMA, RelationName};
use crate::error::{Error, Result};
use crate::sql::{self, AddColumn, Procedure, RelationKind};

/// The longest name Postgres keeps (`NAMEDATALEN - 1` bytes).
const MAX_IDENTIFIER_BYTES: usize = 63;

/// Names a statement creates: each at most [`MAX_IDENTIFIER_BYTES`] (42622),
/// as clients that read `pg_catalog` (type `name`) expect.
fn check_identifiers<'a>(names: impl IntoIterator<Item = &'a str>) -> Result<()> {
    match names.into_iter().find(|n| n.len() > MAX_IDENTIFIER_BYTES) {
        Some(long) => Err(Error::new(
            crate::error::StatusCode::NameTooLong,
            format!("identifier \"{long}\" is too long: names are at most {MAX_IDENTIFIER_BYTES} bytes"),
        )),
        None => Ok(()),
    }
}

impl Session {
    /// `ALTER TABLE … ADD COLUMN`: column types are resolved as CREATE TABLE resolves them.
    pub(super) async fn add_columns(
        &mut self,
        table: &TableReference,
        if_exists: bool,
        columns: &[AddColumn],
    ) -> Result<Output> {
        let done = Output::Command(CommandComplete::new("ALTER TABLE"));
        let name = self.relation_name(table)?;
        if self.engine.catalog().relation_kind(&name).is_some() {
            self.require_owner(&name, "alter")?;
        }
        let Some(existing) = self.engine.catalog().relation(&name).await? else {
            if if_exists {
                self.notice(NoticeSeverity::Notice, format!("relation \"{}\" does not exist, skipping", name.name));
                return Ok(done);
            }
            return Err(crate::catalog::errors::relation_not_found(&name, RelationKind::Table));
        };
        let schema = existing.schema();
        check_identifiers(columns.iter().map(|c| c.name.as_str()))?;
        let mut fields = Vec::with_capacity(columns.len());
        for AddColumn { name: column, data_type, if_not_exists } in columns {
            if schema.field_with_name(column).is_ok() && *if_not_exists {
                self.notice(
                    NoticeSeverity::Notice,
                    format!("column \"{column}\" of relation \"{}\" already exists, skipping", name.name),
                );
                continue;
            }
            let data_type = self.arrow_type(data_type).await?;
            fields.push(datafusion::arrow::datatypes::Field::new(column, data_type, true));
        }
        if fields.is_empty() {
            return Ok(done);
        }
        let control = self.begin_statement();
        let catalog = Arc::clone(self.engine.catalog());
        let result = control.run(async move { catalog.add_columns(&name, fields).await }).await;
        self.engine.bump_catalog_version();
        result.map(|()| done)
    }

    /// `ALTER TABLE | VIEW | MATERIALIZED VIEW … RENAME TO …`.
    pub(super) async fn rename_relation(
        &mut self,
        reference: &TableReference,
        kind: Option<RelationKind>,
        new_name: &str,
        if_exists: bool,
    ) -> Result<Output> {
        let tag = match kind {
            None | Some(RelationKind::Table) => "ALTER TABLE",
            Some(RelationKind::View) => "ALTER VIEW",
            Some(RelationKind::MaterializedView) => "ALTER MATERIALIZED VIEW",
        };
        let name = self.relation_name(reference)?;
        check_identifiers([new_name])?;
        if self.engine.catalog().relation_kind(&name).is_some() {
            self.require_owner(&name, "rename")?;
        }
        let control = self.begin_statement();
        let catalog = Arc::clone(self.engine.catalog());
        let renamed = {
            let (name, new_name) = (name.clone(), new_name.to_string());
            control.run(async move { catalog.rename_relation(&name, kind, &new_name, if_exists).await }).await
        };
        self.engine.bump_catalog_version();
        let renamed = renamed?;
        if renamed {
            self.engine.access().relation_renamed(&name.schema, &name.name, new_name).await?;
        } else {
            self.notice(NoticeSeverity::Notice, format!("relation \"{}\" does not exist, skipping", name.name));
        }
        Ok(Output::Command(CommandComplete::new(tag)))
    }

    /// `ALTER TABLE … RENAME COLUMN … TO …`.
    pub(super) async fn rename_column(
        &mut self,
        reference: &TableReference,
        column: &str,
        new_name: &str,
        if_exists: bool,
    ) -> Result<Output> {
        let name = self.relation_name(reference)?;
        check_identifiers([new_name])?;
        if self.engine.catalog().relation_kind(&name).is_some() {
            self.require_owner(&name, "alter")?;
        }
        let control = self.begin_statement();
        let catalog = Arc::clone(self.engine.catalog());
        let (column, new_name) = (column.to_string(), new_name.to_string());
        let renamed = {
            let name = name.clone();
            control.run(async move { catalog.rename_column(&name, &column, &new_name, if_exists).await }).await
        };
        self.engine.bump_catalog_version();
        if !renamed? {
            self.notice(NoticeSeverity::Notice, format!("relation \"{}\" does not exist, skipping", name.name));
        }
        Ok(Output::Command(CommandComplete::new("ALTER TABLE")))
    }

    pub(super) fn relation_name(&self, reference: &TableReference) -> Result<RelationName> {
        if let Some(catalog) = reference.catalog()
            && catalog != self.engine.database()
        {
            return Err(Error::unsupported(format!(
                "cross-database references are not implemented: {reference} (this server's database is \"{}\")",
                self.engine.database()
            )));
        }
        Ok(RelationName {
            schema: reference.schema().unwrap_or(DEFAULT_SCHEMA).to_string(),
            name: reference.table().to_string(),
        })
    }

    pub(super) async fn run_ddl(
        &mut self,
        ddl: DdlStatement,
        control: &QueryControl,
        options: std::collections::BTreeMap<String, String>,
    ) -> Result<Output> {
        let catalog = Arc::clone(self.engine.catalog());
        match ddl {
            DdlStatement::CreateMemoryTable(cmd) => {
                let name = self.relation_name(&cmd.name)?;
                check_identifiers(
                    [name.name.as_str()]
                        .into_iter()
                        .chain(cmd.input.schema().fields().iter().map(|f| f.name().as_str())),
                )?;
                let is_ctas = !matches!(cmd.input.as_ref(), LogicalPlan::EmptyRelation(e) if !e.produce_one_row);
                let input_schema = cmd.input.schema().as_arrow();
                // Like Postgres, columns of CREATE TABLE AS accept NULLs whatever the query produced.
                let schema: SchemaRef = if is_ctas {
                    Arc::new(Schema::new(
                        input_schema
                            .fields()
                            .iter()
                            .map(|f| f.as_ref().clone().with_nullable(true))
                            .collect::<Vec<_>>(),
                    ))
                } else {
                    Arc::new(input_schema.clone())
                };
                // As in Postgres, primary key columns are NOT NULL.
                let schema = not_null_primary_key(schema, &cmd.constraints);
                let created = catalog
                    .create_table(CreateTable {
                        name: name.clone(),
                        schema,
                        constraints: cmd.constraints.clone(),
                        column_defaults: cmd.column_defaults.clone(),
                        if_not_exists: cmd.if_not_exists,
                        or_replace: cmd.or_replace,
                        options,
                    })
                    .await?;
                if created == Created::AlreadyExisted {
                    self.notice(NoticeSeverity::Notice, format!("relation \"{}\" already exists, skipping", name.name));
                    return Ok(Output::Command(CommandComplete::new("CREATE TABLE")));
                }
                self.record_owner(&name).await?;
                if !is_ctas {
                    return Ok(Output::Command(CommandComplete::new("CREATE TABLE")));
                }
                let inserted = self.insert_into(&name, cmd.input.as_ref().clone(), control).await;
                match inserted {
                    Ok(rows) => Ok(Output::Command(CommandComplete::new("SELECT").with_rows(rows))),
                    Err(e) => {
                        // The statement failed as a whole: do not leave a half-filled table behind.
                        let _ = catalog.drop_relation(&name, RelationKind::Table, true, false).await;
                        Err(e)
                    }
                }
            }
            DdlStatement::CreateView(cv) => {
                let name = self.relation_name(&cv.name)?;
                check_identifiers([name.name.as_str()])?;
                let view: Arc<dyn TableProvider> =
                    Arc::new(ViewTable::new(cv.input.as_ref().clone(), cv.definition.clone()));
                let replaced = cv.or_replace && catalog.relation_kind(&name).is_some();
                catalog.create_view(name.clone(), view, cv.or_replace).await?;
                if !replaced {
                    self.record_owner(&name).await?;
                }
                Ok(Output::Command(CommandComplete::new("CREATE VIEW")))
            }
            DdlStatement::CreateCatalogSchema(cmd) => {
                let schema = cmd.schema_name.rsplit('.').next().unwrap_or(&cmd.schema_name).to_string();
                check_identifiers([schema.as_str()])?;
                if catalog.create_schema(&schema, cmd.if_not_exists).await? == Created::AlreadyExisted {
                    self.notice(NoticeSeverity::Notice, format!("schema \"{schema}\" already exists, skipping"));
                } else {
                    let owner = self.owner_role().to_string();
                    self.engine.access().schema_created(&schema, &owner).await?;
                }
                Ok(Output::Command(CommandComplete::new("CREATE SCHEMA")))
            }
            DdlStatement::DropCatalogSchema(cmd) => {
                let schema = cmd.name.schema_name().to_string();
                catalog.drop_schema(&schema, cmd.if_exists, cmd.cascade).await?;
                self.engine.access().schema_dropped(&schema).await?;
                Ok(Output::Command(CommandComplete::new("DROP SCHEMA")))
            }
            other => Err(Error::unsupported(format!("{} is not supported", ddl_display_name(&other)))),
        }
    }

    pub(super) async fn drop_relation(
        &mut self,
        reference: &TableReference,
        kind: RelationKind,
        if_exists: bool,
        cascade: bool,
    ) -> Result<Output> {
        let name = self.relation_name(reference)?;
        if self.engine.catalog().relation_kind(&name).is_some() {
            // As in Postgres, CASCADE drops dependent views whoever owns them.
            self.require_owner(&name, "drop")?;
        }
        let dropped = self.engine.catalog().drop_relation(&name, kind, if_exists, cascade).await?;
        if dropped {
            self.engine.access().relation_dropped(&name.schema, &name.name).await?;
        } else {
            self.notice(NoticeSeverity::Notice, format!("{} \"{}\" does not exist, skipping", kind.noun(), name.name));
        }
        Ok(Output::Command(CommandComplete::new(kind.drop_command())))
    }

    /// `CREATE MATERIALIZED VIEW`: returns once the view is filled and maintained.
    pub(super) async fn create_materialized_view(&mut self, create: &sql::CreateMaterializedView) -> Result<Output> {
        let name = self.relation_name(&create.name)?;
        let replaced = create.or_replace && self.engine.catalog().relation_kind(&name).is_some();
        self.require_create_in(&name.schema)?;
        if replaced {
            self.require_owner(&name, "replace")?;
        }
        if self.checked_role().is_some() {
            // The owner must be able to read every source.
            let query = sql::Statement::Plan(Box::new(ast::Statement::Query(create.query.clone())));
            self.plan(&query).await?;
        }
        let column_names = if create.columns.is_empty() {
            naming::postgres_column_names(&ast::Statement::Query(create.query.clone())).unwrap_or_default()
        } else {
            create.columns.iter().cloned().map(Some).collect()
        };
        check_identifiers([name.name.as_str()].into_iter().chain(column_names.iter().flatten().map(String::as_str)))?;
        let request = CreateMaterializedView {
            name: name.clone(),
            query: create.query.to_string(),
            column_names,
            if_not_exists: create.if_not_exists,
            or_replace: create.or_replace,
            options: create.options.clone(),
        };
        let catalog = Arc::clone(self.engine.catalog());
        let control = self.begin_statement();
        let created = control.run(async move { catalog.create_materialized_view(request).await }).await?;
        if created == Created::AlreadyExisted {
            self.notice(NoticeSeverity::Notice, format!("relation \"{}\" already exists, skipping", name.name));
        } else if !replaced {
            self.record_owner(&name).await?;
        }
        Ok(Output::Command(CommandComplete::new("CREATE MATERIALIZED VIEW")))
    }

    /// `ALTER MATERIALIZED VIEW … SUSPEND | RESUME | REFRESH | SET (…)`:
    /// what it did is a notice.
    pub(super) async fn alter_materialized_view(
        &mut self,
        name: &TableReference,
        if_exists: bool,
        action: &sql::ViewAlteration,
    ) -> Result<Output> {
        let name = self.relation_name(name)?;
        if self.engine.catalog().relation_kind(&name).is_some() {
            self.require_owner(&name, "alter")?;
        }
        let control = self.begin_statement();
        let catalog = Arc::clone(self.engine.catalog());
        let (target, action) = (name.clone(), action.clone());
        let done =
            control.run(async move { catalog.alter_materialized_view(&target, action, if_exists).await }).await?;
        match done {
            Some(message) => self.notice(NoticeSeverity::Notice, message),
            None => self.notice(
                NoticeSeverity::Notice,
                format!("materialized view \"{}\" does not exist, skipping", name.name),
            ),
        }
        Ok(Output::Command(CommandComplete::new("ALTER MATERIALIZED VIEW")))
    }

    /// `CALL sys.<procedure>('table')`: table maintenance; what it did is a notice.
    pub(super) async fn call(&mut self, procedure: Procedure, table: &TableReference) -> Result<Output> {
        let name = self.relation_name(table)?;
        if self.engine.catalog().relation_kind(&name).is_some() {
            self.require_owner(&name, &format!("run sys.{} on", procedure.name()))?;
        }
        let control = self.begin_statement();
        let catalog = Arc::clone(self.engine.catalog());
        let message = control.run(async move { catalog.maintain(&name, procedure).await }).await?;
        self.notice(NoticeSeverity::Notice, message);
        Ok(Output::Command(CommandComplete::new("CALL")))
    }

    /// Records that this session's role owns a relation it created.
    pub(super) async fn record_owner(&self, name: &RelationName) -> Result<()> {
        let owner = self.owner_role().to_string();
        self.engine.access().relation_created(&name.schema, &name.name, &owner).await
    }

    /// The Arrow type of a SQL type, as CREATE TABLE resolves it.
    async fn arrow_type(&self, data_type: &ast::DataType) -> Result<DataType> {
        let mut probe = sql::parse("SELECT CAST(NULL AS INT)")?;
        if let Some(sql::Statement::Plan(statement)) = probe.first_mut()
            && let ast::Statement::Query(query) = statement.as_mut()
            && let ast::SetExpr::Select(select) = query.body.as_mut()
            && let Some(ast::SelectItem::UnnamedExpr(ast::Expr::Cast { data_type: cast, .. })) =
                select.projection.first_mut()
        {
            *cast = data_type.clone();
            let plan = self.ctx.state().statement_to_plan(DFStatement::Statement(statement.clone())).await?;
            return Ok(plan.schema().field(0).data_type().clone());
        }
        Err(Error::internal("type probe did not parse"))
    }

    pub(super) async fn insert_into(
        &self,
        name: &RelationName,
        input: LogicalPlan,
        control: &QueryControl,
    ) -> Result<u64> {
        let provider = self
            .engine
            .catalog()
            .relation(name)
            .await?
            .ok_or_else(|| Error::internal(format!("table {name} vanished while being created")))?;
        let reference =
            TableReference::full(self.engine.database().to_string(), name.schema.clone(), name.name.clone());
        let plan = LogicalPlanBuilder::insert_into(input, reference, provider_as_source(provider), InsertOp::Append)?
            .build()?;
        control.run(self.execute_count(plan)).await
    }
}

fn ddl_display_name(ddl: &DdlStatement) -> String {
    match ddl {
        DdlStatement::CreateExternalTable(_) => "CREATE EXTERNAL TABLE".to_string(),
        DdlStatement::CreateCatalog(_) => "CREATE DATABASE".to_string(),
        DdlStatement::CreateIndex(_) => "CREATE INDEX".to_string(),
        DdlStatement::CreateFunction(_) => "CREATE FUNCTION".to_string(),
        DdlStatement::DropFunction(_) => "DROP FUNCTION".to_string(),
        other => other.name().to_string(),
    }
}

/// As in Postgres, primary key columns are NOT NULL.
fn not_null_primary_key(schema: SchemaRef, constraints: &datafusion::common::Constraints) -> SchemaRef {
    let key: Vec<usize> = constraints
        .iter()
        .flat_map(|c| match c {
            datafusion::common::Constraint::PrimaryKey(columns) => columns.clone(),
            datafusion::common::Constraint::Unique(_) => vec![],
        })
        .collect();
    if key.is_empty() {
        return schema;
    }
    let fields: Vec<Field> = schema
        .fields()
        .iter()
        .enumerate()
        .map(|(i, f)| f.as_ref().clone().with_nullable(f.is_nullable() && !key.contains(&i)))
        .collect();
    Arc::new(Schema::new_with_metadata(fields, schema.metadata().clone()))
}
