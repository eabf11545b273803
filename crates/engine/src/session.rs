//! Sessions: one per Postgres connection or Flight SQL request.
//!
//! A [`Session`] owns a DataFusion context (its own settings, shared tables
//! and functions), its [`variables`], its transaction status and a
//! [`CancelHandle`]. Statements go through two steps, the shape of the
//! Postgres extended protocol:
//!
//! 1. [`Session::prepare`] parses nothing (the caller hands over one parsed
//!    statement) and plans it: a DataFusion `LogicalPlan`, or a session
//!    statement (SET, SHOW, BEGIN …) that never reaches DataFusion. The
//!    [`Prepared`] statement knows its parameter types and result schema.
//! 2. [`Session::execute`] binds parameter values and runs it, returning
//!    [`Output::Rows`] (a stream) or [`Output::Command`] (a completion tag).
//!
//! DDL goes to the [`Catalog`](crate::catalog::Catalog); queries and DML to
//! DataFusion. Plans prepared before a DDL statement are re-planned on
//! execution, so a prepared statement never writes into a dropped table.
//!
//! **Transactions.** Every statement commits on its own (autocommit).
//! `BEGIN`/`COMMIT`/`ROLLBACK` are accepted and tracked so that drivers which
//! wrap work in transactions behave, and a failed statement inside a block
//! puts the session in the failed state (25P02) until the block ends, as in
//! Postgres. `ROLLBACK` cannot undo statements that already succeeded; the
//! session warns when a block that wrote something is rolled back.

mod copy;
mod cursor;
mod execute;
pub mod ingest;
mod naming;
mod statements;
pub mod variables;

pub(crate) use statements::{ident_value, table_reference};
use statements::{refuse_unsupported, session_statement, table_options, without_on_conflict, without_table_options};

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, RwLock};

use datafusion::arrow::array::{RecordBatch, StringArray, UInt64Array};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::catalog::TableProvider;
use datafusion::catalog::view::ViewTable;
use datafusion::common::{ParamValues, TableReference};
use datafusion::datasource::provider_as_source;
use datafusion::execution::SendableRecordBatchStream;
use datafusion::logical_expr::dml::InsertOp;
use datafusion::logical_expr::{DdlStatement, Expr, LogicalPlan, LogicalPlanBuilder, WriteOp};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::prelude::SessionContext;
use datafusion::sql::parser::Statement as DFStatement;
use datafusion::sql::sqlparser::ast::{self, Statement};
use futures::StreamExt;

use crate::cancel::{CancelHandle, QueryControl};
use crate::catalog::{
    CreateMaterializedView, CreateTable, Created, DEFAULT_SCHEMA, Procedure, RelationKind, RelationName,
};
use crate::engine::{Engine, text_udf};
use crate::error::{Error, Result, StatusCode};
use variables::Variables;

/// Who opened a session.
#[derive(Debug, Clone, Default)]
pub struct SessionInfo {
    /// The user name the client sent (not authenticated yet).
    pub user: String,
    /// The database the client asked for; streamhouse serves one database
    /// and accepts any name for it.
    pub database: Option<String>,
    /// `application_name` from the client, if sent.
    pub application_name: Option<String>,
}

/// Postgres-style transaction status, as reported in `ReadyForQuery`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum TransactionStatus {
    /// Not in a transaction block.
    Idle = 0,
    /// Inside `BEGIN` … `COMMIT`.
    InBlock = 1,
    /// Inside a block in which a statement failed: only COMMIT/ROLLBACK run.
    Failed = 2,
}

impl TransactionStatus {
    fn from_u8(v: u8) -> Self {
        match v {
            1 => TransactionStatus::InBlock,
            2 => TransactionStatus::Failed,
            _ => TransactionStatus::Idle,
        }
    }
}

/// How a command changed the transaction status, for protocols that report it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TransactionChange {
    /// A block started.
    Begin,
    /// A block ended (commit or rollback).
    End,
}

/// Completion of a statement that returns no rows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandComplete {
    /// The command word(s): `INSERT`, `CREATE TABLE`, `SET` …
    pub command: String,
    /// Rows affected, for DML and `CREATE TABLE AS`.
    pub rows: Option<u64>,
    /// Set by BEGIN / COMMIT / ROLLBACK.
    pub transaction: Option<TransactionChange>,
}

impl CommandComplete {
    pub(crate) fn new(command: impl Into<String>) -> Self {
        Self { command: command.into(), rows: None, transaction: None }
    }

    pub(crate) fn with_rows(mut self, rows: u64) -> Self {
        self.rows = Some(rows);
        self
    }

    /// The Postgres command tag: `INSERT 0 3`, `UPDATE 2`, `CREATE TABLE`.
    pub fn tag(&self) -> String {
        match (self.command.as_str(), self.rows) {
            ("INSERT", Some(n)) => format!("INSERT 0 {n}"),
            (command, Some(n)) => format!("{command} {n}"),
            (command, None) => command.to_string(),
        }
    }
}

/// What a statement produced.
pub enum Output {
    /// Rows, streamed: SELECT, SHOW, EXPLAIN, VALUES.
    Rows(SendableRecordBatchStream),
    /// A command's completion.
    Command(CommandComplete),
    /// Rows that keep coming until the client cancels (SUBSCRIBE): send
    /// each batch as soon as it arrives.
    Live(SendableRecordBatchStream),
    /// `COPY … FROM STDIN`: the client now sends the data.
    CopyIn(Box<crate::copy::CopyIn>),
    /// `COPY … TO STDOUT`: rows to send in a COPY format.
    CopyOut(crate::copy::CopyOut),
}

impl std::fmt::Debug for Output {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Output::Rows(s) => write!(f, "Rows({:?})", s.schema()),
            Output::Live(s) => write!(f, "Live({:?})", s.schema()),
            Output::CopyIn(c) => write!(f, "{c:?}"),
            Output::CopyOut(c) => write!(f, "{c:?}"),
            Output::Command(c) => write!(f, "Command({c:?})"),
        }
    }
}

/// Severity of a [`Notice`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoticeSeverity {
    /// Informational (`relation … already exists, skipping`).
    Notice,
    /// Something the user probably did not intend.
    Warning,
}

/// A message for the client that is not an error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notice {
    /// How serious.
    pub severity: NoticeSeverity,
    /// The text.
    pub message: String,
}

/// A statement planned by [`Session::prepare`], ready to execute any number of times.
#[derive(Debug, Clone)]
pub struct Prepared {
    statement: Statement,
    kind: Kind,
    catalog_version: u64,
    /// Postgres' names for result columns DataFusion names differently.
    column_names: Option<Vec<Option<String>>>,
}

#[derive(Debug, Clone)]
enum Kind {
    /// Planned by DataFusion.
    Plan(LogicalPlan),
    /// Handled by the session itself.
    Session(SessionStatement),
}

#[derive(Debug, Clone)]
enum SessionStatement {
    Set {
        name: String,
        value: String,
        local: bool,
    },
    Reset(Option<String>),
    Show(String),
    ShowAll,
    Begin,
    Commit,
    Rollback,
    Discard,
    /// Accepted for compatibility, no effect; carries its command tag.
    NoOp(&'static str),
    /// `CALL sys.<procedure>('<table>')`: table maintenance, as Paimon names it.
    Call {
        procedure: Procedure,
        table: String,
    },
    /// `COPY … FROM STDIN` / `COPY … TO STDOUT`.
    Copy(Box<crate::copy::CopyStatement>),
    /// `DECLARE c CURSOR FOR query`.
    Declare {
        name: String,
        query: Box<Statement>,
        hold: bool,
    },
    /// `FETCH`: up to `count` rows (all when `None`), waiting at most `timeout`.
    Fetch {
        name: String,
        count: Option<u64>,
        timeout: Option<std::time::Duration>,
    },
    /// `CLOSE c` (`None`: `CLOSE ALL`).
    Close(Option<String>),
    /// `CREATE MATERIALIZED VIEW`.
    CreateMaterializedView(Box<statements::MaterializedViewStatement>),
    /// `DROP TABLE | VIEW | MATERIALIZED VIEW [IF EXISTS] names [CASCADE]`.
    Drop {
        kind: RelationKind,
        names: Vec<TableReference>,
        if_exists: bool,
        cascade: bool,
    },
    /// `ALTER TABLE [IF EXISTS] t ADD [COLUMN] [IF NOT EXISTS] c type, …`.
    AddColumns {
        table: TableReference,
        if_exists: bool,
        /// Column name, SQL type, and whether `IF NOT EXISTS` was given.
        columns: Vec<(String, String, bool)>,
    },
}

impl Prepared {
    /// For `INSERT INTO t [(columns)] VALUES ($1, $2, …)` (placeholders in
    /// order, one row): the table and columns, so parameter batches can be
    /// written as rows without executing the statement once per row.
    pub fn insert_of_parameters(&self) -> Option<(TableReference, Vec<String>)> {
        let Statement::Insert(insert) = &self.statement else { return None };
        if insert.on.is_some() || insert.returning.is_some() || !insert.assignments.is_empty() {
            return None;
        }
        let ast::SetExpr::Values(values) = insert.source.as_ref()?.body.as_ref() else { return None };
        let [row] = values.rows.as_slice() else { return None };
        let in_order = row.iter().enumerate().all(|(i, e)| {
            matches!(e, ast::Expr::Value(v) if matches!(&v.value, ast::Value::Placeholder(p) if *p == format!("${}", i + 1)))
        });
        if !in_order || row.is_empty() {
            return None;
        }
        let ast::TableObject::TableName(name) = &insert.table else { return None };
        let table = table_reference(name).ok()?;
        let columns = insert
            .columns
            .iter()
            .map(|c| match c.0.as_slice() {
                [part] => part.as_ident().map(ident_value),
                _ => None,
            })
            .collect::<Option<Vec<String>>>()?;
        Some((table, columns))
    }

    /// The statement as parsed (after Postgres-compatibility rewrites).
    pub fn statement(&self) -> &Statement {
        &self.statement
    }

    /// Types of the parameters `$1`, `$2` …, in order; `None` where the type
    /// cannot be inferred from the statement.
    ///
    /// # Errors
    /// Conflicting types for one parameter.
    pub fn parameter_types(&self) -> Result<Vec<Option<DataType>>> {
        match &self.kind {
            Kind::Plan(plan) => parameter_types(plan),
            Kind::Session(_) => Ok(vec![]),
        }
    }

    /// The schema of the rows the statement returns, or `None` for commands.
    pub fn result_schema(&self) -> Option<SchemaRef> {
        match &self.kind {
            Kind::Plan(plan) => match plan {
                LogicalPlan::Ddl(_) | LogicalPlan::Dml(_) | LogicalPlan::Copy(_) => None,
                LogicalPlan::Statement(datafusion::logical_expr::Statement::Execute(_)) => None,
                LogicalPlan::Statement(_) => None,
                _ => Some(self.rename(Arc::clone(plan.schema().inner()))),
            },
            Kind::Session(SessionStatement::Show(name)) => Some(text_schema(&[name.as_str()])),
            Kind::Session(SessionStatement::ShowAll) => Some(text_schema(&["name", "setting", "description"])),
            Kind::Session(_) => None,
        }
    }

    /// The result schema once `params` are bound (types of `SELECT $1` depend on them).
    ///
    /// # Errors
    /// Parameters that do not fit the statement.
    pub fn result_schema_with(&self, params: &ParamValues) -> Result<Option<SchemaRef>> {
        match &self.kind {
            Kind::Plan(plan)
                if !matches!(plan, LogicalPlan::Ddl(_) | LogicalPlan::Dml(_) | LogicalPlan::Statement(_)) =>
            {
                let bound = plan.clone().with_param_values(params.clone())?;
                Ok(Some(self.rename(Arc::clone(bound.schema().inner()))))
            }
            _ => Ok(self.result_schema()),
        }
    }
}

impl Prepared {
    fn rename(&self, schema: SchemaRef) -> SchemaRef {
        match &self.column_names {
            Some(names) => naming::rename_schema(&schema, names),
            None => schema,
        }
    }
}

fn text_schema(names: &[&str]) -> SchemaRef {
    Arc::new(Schema::new(names.iter().map(|n| Field::new(*n, DataType::Utf8, true)).collect::<Vec<_>>()))
}

/// Parameter types of a plan in `$n` order, with types of untyped
/// placeholders taken from casts around them (`$1::int`).
fn parameter_types(plan: &LogicalPlan) -> Result<Vec<Option<DataType>>> {
    use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
    let mut types: Vec<Option<DataType>> = Vec::new();
    let mut put = |id: &str, ty: Option<DataType>| {
        if let Some(n) = id.strip_prefix('$').and_then(|n| n.parse::<usize>().ok()).filter(|n| *n >= 1) {
            if types.len() < n {
                types.resize(n, None);
            }
            if types[n - 1].is_none() {
                types[n - 1] = ty;
            }
        }
    };
    for (id, field) in plan.get_parameter_fields()? {
        put(&id, field.map(|f| f.data_type().clone()));
    }
    plan.apply_with_subqueries(|node| {
        node.apply_expressions(|expr| {
            expr.apply(|e| {
                if let Expr::Cast(cast) = e
                    && let Expr::Placeholder(p) = cast.expr.as_ref()
                {
                    put(&p.id, Some(cast.field.data_type().clone()));
                }
                Ok(TreeNodeRecursion::Continue)
            })
        })
    })?;
    Ok(types)
}

/// A session: settings, transaction status and the statement running now.
pub struct Session {
    engine: Engine,
    id: u64,
    info: SessionInfo,
    ctx: SessionContext,
    vars: Arc<RwLock<Variables>>,
    txn: Arc<AtomicU8>,
    /// Statements that changed something since BEGIN (for the ROLLBACK warning).
    writes_in_block: u64,
    /// `SET LOCAL` values to restore when the block ends.
    local_restore: Vec<(String, Option<String>)>,
    notices: Vec<Notice>,
    cancel: CancelHandle,
    /// Open cursors by name (behind a lock only so the session stays `Sync`).
    cursors: std::sync::Mutex<std::collections::HashMap<String, cursor::Cursor>>,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session").field("id", &self.id).field("user", &self.info.user).finish_non_exhaustive()
    }
}

impl Session {
    pub(crate) fn new(engine: Engine, id: u64, info: SessionInfo) -> Self {
        let ctx = SessionContext::new_with_state(engine.inner().base.state());
        let mut vars = Variables::new(&info.user, engine.config());
        if let Some(app) = &info.application_name {
            let _ = vars.set("application_name", app);
        }
        let vars = Arc::new(RwLock::new(vars));
        let lookup = Arc::clone(&vars);
        ctx.register_udf(text_udf("current_setting", move |name| {
            let vars = lookup.read().map_err(|_| datafusion::error::DataFusionError::Internal("poisoned".into()))?;
            vars.get(name).map(Some).ok_or_else(|| {
                datafusion::error::DataFusionError::External(Box::new(Error::new(
                    StatusCode::ObjectNotFound,
                    format!("unrecognized configuration parameter \"{name}\""),
                )))
            })
        }));
        let user = info.user.clone();
        ctx.register_udf(crate::engine::constant_text_udf("session_user", user.clone()));
        ctx.register_udf(crate::engine::constant_text_udf("current_user", user));
        Self {
            engine,
            id,
            info,
            ctx,
            vars,
            txn: Arc::new(AtomicU8::new(TransactionStatus::Idle as u8)),
            writes_in_block: 0,
            local_restore: Vec::new(),
            notices: Vec::new(),
            cancel: CancelHandle::default(),
            cursors: std::sync::Mutex::new(std::collections::HashMap::new()),
        }
    }

    /// This session's id, unique within the server's lifetime.
    /// Installs the check a subscription makes, before it records a named
    /// consumer's progress, that the client is still connected.
    pub fn set_client_probe(&self, alive: Arc<dyn Fn() -> bool + Send + Sync>) {
        let probe = Arc::new(crate::dynamic::subscribe::ClientProbe(alive));
        self.ctx.state_ref().write().config_mut().set_extension(probe);
    }

    pub fn id(&self) -> u64 {
        self.id
    }

    /// Who opened the session.
    pub fn info(&self) -> &SessionInfo {
        &self.info
    }

    /// A handle that cancels the statement this session is running.
    pub fn cancel_handle(&self) -> CancelHandle {
        self.cancel.clone()
    }

    /// The transaction status.
    pub fn transaction_status(&self) -> TransactionStatus {
        TransactionStatus::from_u8(self.txn.load(Ordering::SeqCst))
    }

    /// Notices produced since the last call.
    pub fn take_notices(&mut self) -> Vec<Notice> {
        std::mem::take(&mut self.notices)
    }

    /// The current value of a run-time parameter.
    pub fn variable(&self, name: &str) -> Option<String> {
        self.vars.read().ok()?.get(name)
    }

    fn notice(&mut self, severity: NoticeSeverity, message: impl Into<String>) {
        self.notices.push(Notice { severity, message: message.into() });
    }

    /// Splits SQL text into statements (Postgres dialect, with the rewrites
    /// that let psql's and BI tools' catalog queries run).
    ///
    /// # Errors
    /// [`StatusCode::InvalidSyntax`].
    pub fn parse(&self, sql: &str) -> Result<Vec<Statement>> {
        let rewritten =
            crate::dynamic::subscribe::rewrite(sql).map_err(|m| Error::new(StatusCode::InvalidSyntax, m))?;
        let sql = rewritten.as_deref().unwrap_or(sql);
        let rewritten = statements::rewrite_watermark(sql)?;
        Ok(self.engine.inner().parser.parse(rewritten.as_deref().unwrap_or(sql))?)
    }

    /// Plans one statement.
    ///
    /// # Errors
    /// Planning errors: unknown tables or columns, type errors, unsupported statements.
    pub async fn prepare(&mut self, statement: Statement) -> Result<Prepared> {
        let result = self.prepare_inner(statement).await;
        if result.is_err() {
            // As in Postgres, any error inside a transaction block aborts it.
            self.mark_failed();
        }
        result
    }

    async fn prepare_inner(&mut self, statement: Statement) -> Result<Prepared> {
        let catalog_version = self.engine.catalog_version();
        if let Some(s) = session_statement(&statement)? {
            if let SessionStatement::Copy(copy) = &s {
                self.check_copy(copy).await?;
            }
            return Ok(Prepared { statement, kind: Kind::Session(s), catalog_version, column_names: None });
        }
        let control = self.begin_statement();
        match control.run(self.plan(statement.clone())).await {
            Ok(plan) => {
                let column_names = naming::postgres_column_names(&statement);
                Ok(Prepared { statement, kind: Kind::Plan(plan), catalog_version, column_names })
            }
            Err(e) if e.message().contains("require unique expression names") => {
                // Postgres allows duplicate output names; DataFusion does not.
                let Some((aliased, names)) = naming::with_unique_aliases(&statement) else { return Err(e) };
                let plan = control.run(self.plan(aliased.clone())).await?;
                Ok(Prepared { statement: aliased, kind: Kind::Plan(plan), catalog_version, column_names: Some(names) })
            }
            Err(e) => Err(e),
        }
    }

    async fn plan(&self, mut statement: Statement) -> Result<LogicalPlan> {
        refuse_unsupported(&statement)?;
        crate::windows::rewrite(&mut statement)?;
        // DataFusion plans CREATE TABLE without options; the catalog gets them (see `table_options`).
        table_options(&statement)?;
        let statement = without_table_options(statement);
        let (statement, on_conflict) = without_on_conflict(statement)?;
        let state = self.ctx.state();
        let plan = state.statement_to_plan(DFStatement::Statement(Box::new(statement))).await?;
        match on_conflict {
            Some(target) => crate::dynamic::ignore_conflicts(plan, target.as_deref()),
            None => Ok(plan),
        }
    }

    /// Executes a prepared statement with parameter values bound to `$1`, `$2` ….
    ///
    /// # Errors
    /// Anything the statement can fail with; 57014 when cancelled.
    pub async fn execute(&mut self, prepared: &Prepared, params: Option<ParamValues>) -> Result<Output> {
        let result = self.execute_inner(prepared, params).await;
        if result.is_err() {
            self.mark_failed();
        }
        result
    }

    /// Parses, plans and executes SQL text that may hold several statements,
    /// stopping at the first error. Rows of all but the last statement are
    /// collected before the next statement runs, so each statement sees the
    /// effects of the ones before it and none after it. Returns the outputs of
    /// the statements that succeeded and the error that stopped the batch.
    pub async fn run(&mut self, sql: &str) -> (Vec<Output>, Option<Error>) {
        let statements = match self.parse(sql) {
            Ok(s) => s,
            Err(e) => {
                self.mark_failed();
                return (vec![], Some(e));
            }
        };
        let count = statements.len();
        let mut outputs = Vec::with_capacity(count);
        for (i, statement) in statements.into_iter().enumerate() {
            let result = match self.prepare(statement).await {
                Ok(prepared) => self.execute(&prepared, None).await,
                Err(e) => Err(e),
            };
            let result = match result {
                Ok(output) if i + 1 < count => buffer(output).await,
                other => other,
            };
            match result {
                Ok(output) => outputs.push(output),
                Err(e) => return (outputs, Some(e)),
            }
        }
        (outputs, None)
    }

    fn begin_statement(&self) -> QueryControl {
        let token = self.cancel.begin(&self.engine.inner().shutdown);
        let timeout = self.vars.read().ok().and_then(|v| v.statement_timeout());
        QueryControl::new(token, self.engine.inner().shutdown.clone(), timeout, Arc::clone(&self.engine.inner().active))
    }

    /// Marks an open transaction block failed (an error ended a statement).
    pub fn mark_failed(&self) {
        let _ = self.txn.compare_exchange(
            TransactionStatus::InBlock as u8,
            TransactionStatus::Failed as u8,
            Ordering::SeqCst,
            Ordering::SeqCst,
        );
    }

    async fn execute_inner(&mut self, prepared: &Prepared, params: Option<ParamValues>) -> Result<Output> {
        if self.engine.is_shut_down() {
            return Err(Error::new(StatusCode::ShuttingDown, "the server is shutting down"));
        }
        if let Kind::Session(SessionStatement::Call { procedure, table }) = &prepared.kind {
            let reference = TableReference::from(table.as_str());
            let name = self.relation_name(&reference)?;
            let control = self.begin_statement();
            let catalog = Arc::clone(self.engine.catalog());
            let procedure = *procedure;
            let message = control.run(async move { catalog.maintain(&name, procedure).await }).await?;
            self.notice(NoticeSeverity::Notice, message);
            return Ok(Output::Command(CommandComplete::new("CALL")));
        }
        if let Kind::Session(
            statement @ (SessionStatement::CreateMaterializedView(_) | SessionStatement::Drop { .. }),
        ) = &prepared.kind
        {
            if self.transaction_status() == TransactionStatus::Failed {
                return Err(Error::new(
                    StatusCode::InFailedTransaction,
                    "current transaction is aborted, commands ignored until end of transaction block",
                ));
            }
            let out = match statement {
                SessionStatement::CreateMaterializedView(create) => self.create_materialized_view(create).await,
                SessionStatement::Drop { kind, names, if_exists, cascade } => {
                    let mut out = Err(Error::internal("DROP without names"));
                    for name in names {
                        out = self.drop_relation(name, *kind, *if_exists, *cascade).await;
                        if out.is_err() {
                            break;
                        }
                    }
                    out
                }
                _ => Err(Error::internal("not a catalog statement")),
            };
            self.engine.bump_catalog_version();
            return out;
        }
        if let Kind::Session(SessionStatement::AddColumns { table, if_exists, columns }) = &prepared.kind {
            return self.add_columns(table, *if_exists, columns).await;
        }
        if let Kind::Session(SessionStatement::Copy(copy)) = &prepared.kind {
            if self.transaction_status() == TransactionStatus::Failed {
                return Err(Error::new(
                    StatusCode::InFailedTransaction,
                    "current transaction is aborted, commands ignored until end of transaction block",
                ));
            }
            return self.copy(copy).await;
        }
        if let Kind::Session(
            statement
            @ (SessionStatement::Declare { .. } | SessionStatement::Fetch { .. } | SessionStatement::Close(_)),
        ) = &prepared.kind
        {
            if self.transaction_status() == TransactionStatus::Failed {
                return Err(Error::new(
                    StatusCode::InFailedTransaction,
                    "current transaction is aborted, commands ignored until end of transaction block",
                ));
            }
            return match statement {
                SessionStatement::Declare { name, query, hold } => self.declare_cursor(name, query, *hold).await,
                SessionStatement::Fetch { name, count, timeout } => self.fetch_cursor(name, *count, *timeout).await,
                SessionStatement::Close(name) => self.close_cursor(name.as_deref()),
                _ => Err(Error::internal("not a cursor statement")),
            };
        }
        if let Kind::Session(s) = &prepared.kind {
            return self.run_session_statement(s.clone());
        }
        if self.transaction_status() == TransactionStatus::Failed {
            return Err(Error::new(
                StatusCode::InFailedTransaction,
                "current transaction is aborted, commands ignored until end of transaction block",
            ));
        }
        let control = self.begin_statement();
        let Kind::Plan(plan) = &prepared.kind else { unreachable!("session statements returned above") };
        let plan = if prepared.catalog_version == self.engine.catalog_version() {
            plan.clone()
        } else {
            // A DDL statement ran since this was planned: plan again against the current catalog.
            control.run(self.plan(prepared.statement.clone())).await?
        };
        let types = parameter_types(&plan)?;
        let expected = types.len();
        let plan = match params {
            Some(params) => {
                let params = coerce_parameters(params, &types)?;
                let given = match &params {
                    ParamValues::List(list) => list.len(),
                    ParamValues::Map(map) => map.len(),
                };
                if given != expected {
                    return Err(Error::new(
                        StatusCode::InvalidParameter,
                        format!("bind message supplies {given} parameters, but prepared statement requires {expected}"),
                    ));
                }
                plan.with_param_values(params)?
            }
            None if expected > 0 => {
                return Err(Error::new(
                    StatusCode::InvalidParameter,
                    format!("there is no parameter ${expected}: the statement needs {expected} bound value(s)"),
                ));
            }
            None => plan,
        };
        let options = match &plan {
            LogicalPlan::Ddl(DdlStatement::CreateMemoryTable(_)) => table_options(&prepared.statement)?,
            _ => std::collections::BTreeMap::new(),
        };
        let output = self.run_plan(plan, &control, options, &prepared.statement).await?;
        if self.transaction_status() == TransactionStatus::InBlock && matches!(output, Output::Command(_)) {
            self.writes_in_block += 1;
        }
        Ok(match output {
            Output::Rows(stream) => {
                let stream = match &prepared.column_names {
                    Some(names) => naming::rename_stream(stream, names),
                    None => stream,
                };
                Output::Rows(self.watch_failures(control.wrap_stream(stream)))
            }
            // A subscription runs until cancelled: no statement timeout.
            Output::Live(stream) => Output::Live(self.watch_failures(control.without_deadline().wrap_stream(stream))),
            command => command,
        })
    }

    /// `ALTER TABLE … ADD COLUMN`: column types are resolved as CREATE TABLE resolves them.
    async fn add_columns(
        &mut self,
        table: &TableReference,
        if_exists: bool,
        columns: &[(String, String, bool)],
    ) -> Result<Output> {
        let done = Output::Command(CommandComplete::new("ALTER TABLE"));
        let name = self.relation_name(table)?;
        let Some(existing) = self.engine.catalog().relation(&name).await? else {
            if if_exists {
                self.notice(NoticeSeverity::Notice, format!("relation \"{}\" does not exist, skipping", name.name));
                return Ok(done);
            }
            return Err(crate::catalog::errors::relation_not_found(&name, RelationKind::Table));
        };
        let schema = existing.schema();
        let mut fields = Vec::with_capacity(columns.len());
        for (column, sql_type, if_not_exists) in columns {
            if schema.field_with_name(column).is_ok() && *if_not_exists {
                self.notice(
                    NoticeSeverity::Notice,
                    format!("column \"{column}\" of relation \"{}\" already exists, skipping", name.name),
                );
                continue;
            }
            let probe = self.ctx.state().create_logical_plan(&format!("SELECT CAST(NULL AS {sql_type})")).await?;
            let data_type = probe.schema().field(0).data_type().clone();
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

    /// Marks the transaction failed when a row stream ends in an error.
    fn watch_failures(&self, stream: SendableRecordBatchStream) -> SendableRecordBatchStream {
        let txn = Arc::clone(&self.txn);
        let schema = stream.schema();
        Box::pin(RecordBatchStreamAdapter::new(
            schema,
            stream.inspect(move |item| {
                if item.is_err() {
                    let _ = txn.compare_exchange(
                        TransactionStatus::InBlock as u8,
                        TransactionStatus::Failed as u8,
                        Ordering::SeqCst,
                        Ordering::SeqCst,
                    );
                }
            }),
        ))
    }

    async fn run_plan(
        &mut self,
        plan: LogicalPlan,
        control: &QueryControl,
        options: std::collections::BTreeMap<String, String>,
        source: &Statement,
    ) -> Result<Output> {
        match plan {
            LogicalPlan::Ddl(ddl) => {
                let out = self.run_ddl(ddl, control, options).await;
                self.engine.bump_catalog_version();
                out
            }
            LogicalPlan::Dml(dml) => {
                let command = match &dml.op {
                    WriteOp::Insert(_) => "INSERT",
                    WriteOp::Update => "UPDATE",
                    WriteOp::Delete => "DELETE",
                    WriteOp::Ctas => "SELECT",
                    WriteOp::Truncate => "TRUNCATE TABLE",
                    WriteOp::MergeInto(_) => "MERGE",
                    _ => "UPDATE",
                };
                let rows = control.run(self.execute_count(LogicalPlan::Dml(dml))).await?;
                Ok(Output::Command(if command == "TRUNCATE TABLE" {
                    CommandComplete::new(command)
                } else {
                    CommandComplete::new(command).with_rows(rows)
                }))
            }
            LogicalPlan::Statement(statement) => {
                use datafusion::logical_expr::Statement as S;
                let command = match &statement {
                    S::Prepare(_) => "PREPARE",
                    S::Deallocate(_) => "DEALLOCATE",
                    S::Execute(_) => "EXECUTE",
                    other => {
                        return Err(Error::unsupported(format!("statement {} is not supported", other.name())));
                    }
                };
                let df = control
                    .run(async { Ok(self.ctx.execute_logical_plan(LogicalPlan::Statement(statement)).await?) })
                    .await?;
                if command == "EXECUTE" {
                    let stream = control.run(self.execute_frame(df, source)).await?;
                    Ok(Output::Rows(stream))
                } else {
                    Ok(Output::Command(CommandComplete::new(command)))
                }
            }
            LogicalPlan::Copy(_) => Err(Error::unsupported("COPY … TO a file is not supported")),
            LogicalPlan::Explain(explain) if is_query(&explain.plan) => {
                let stream = control.run(self.explain(&explain.plan, explain.verbose, false, source)).await?;
                Ok(Output::Rows(stream))
            }
            LogicalPlan::Analyze(analyze) if is_query(&analyze.input) => {
                let stream = control.run(self.explain(&analyze.input, analyze.verbose, true, source)).await?;
                Ok(Output::Rows(stream))
            }
            query => {
                let live = is_subscription(&query);
                let stream = control
                    .run(async {
                        let df = self.ctx.execute_logical_plan(query).await?;
                        self.execute_frame(df, source).await
                    })
                    .await?;
                Ok(if live { Output::Live(stream) } else { Output::Rows(stream) })
            }
        }
    }

    /// Runs a DML plan and returns its row count.
    async fn execute_count(&self, plan: LogicalPlan) -> Result<u64> {
        let batches = self.ctx.execute_logical_plan(plan).await?.collect().await?;
        let mut rows = 0;
        for batch in &batches {
            if batch.num_columns() == 0 {
                continue;
            }
            let counts = batch
                .column(0)
                .as_any()
                .downcast_ref::<UInt64Array>()
                .ok_or_else(|| Error::internal("DML did not return a row count"))?;
            rows += counts.iter().flatten().sum::<u64>();
        }
        Ok(rows)
    }

    fn relation_name(&self, reference: &TableReference) -> Result<RelationName> {
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

    async fn run_ddl(
        &mut self,
        ddl: DdlStatement,
        control: &QueryControl,
        options: std::collections::BTreeMap<String, String>,
    ) -> Result<Output> {
        let catalog = Arc::clone(self.engine.catalog());
        match ddl {
            DdlStatement::CreateMemoryTable(cmd) => {
                let name = self.relation_name(&cmd.name)?;
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
                let view: Arc<dyn TableProvider> =
                    Arc::new(ViewTable::new(cv.input.as_ref().clone(), cv.definition.clone()));
                catalog.create_view(name, view, cv.or_replace).await?;
                Ok(Output::Command(CommandComplete::new("CREATE VIEW")))
            }
            DdlStatement::DropTable(drop) => {
                self.drop_relation(&drop.name, RelationKind::Table, drop.if_exists, false).await
            }
            DdlStatement::DropView(drop) => {
                self.drop_relation(&drop.name, RelationKind::View, drop.if_exists, false).await
            }
            DdlStatement::CreateCatalogSchema(cmd) => {
                let schema = cmd.schema_name.rsplit('.').next().unwrap_or(&cmd.schema_name).to_string();
                if catalog.create_schema(&schema, cmd.if_not_exists).await? == Created::AlreadyExisted {
                    self.notice(NoticeSeverity::Notice, format!("schema \"{schema}\" already exists, skipping"));
                }
                Ok(Output::Command(CommandComplete::new("CREATE SCHEMA")))
            }
            DdlStatement::DropCatalogSchema(cmd) => {
                let schema = cmd.name.schema_name().to_string();
                catalog.drop_schema(&schema, cmd.if_exists, cmd.cascade).await?;
                Ok(Output::Command(CommandComplete::new("DROP SCHEMA")))
            }
            other => Err(Error::unsupported(format!("{} is not supported", ddl_display_name(&other)))),
        }
    }

    async fn drop_relation(
        &mut self,
        reference: &TableReference,
        kind: RelationKind,
        if_exists: bool,
        cascade: bool,
    ) -> Result<Output> {
        let name = self.relation_name(reference)?;
        let dropped = self.engine.catalog().drop_relation(&name, kind, if_exists, cascade).await?;
        if !dropped {
            self.notice(NoticeSeverity::Notice, format!("{} \"{}\" does not exist, skipping", kind.noun(), name.name));
        }
        Ok(Output::Command(CommandComplete::new(kind.drop_command())))
    }

    /// `CREATE MATERIALIZED VIEW`: returns once the view is filled and maintained.
    async fn create_materialized_view(&mut self, create: &statements::MaterializedViewStatement) -> Result<Output> {
        let name = self.relation_name(&create.name)?;
        let request = CreateMaterializedView {
            name: name.clone(),
            query: create.query.clone(),
            column_names: create.column_names.clone(),
            if_not_exists: create.if_not_exists,
            or_replace: create.or_replace,
            options: create.options.clone(),
        };
        let catalog = Arc::clone(self.engine.catalog());
        let control = self.begin_statement();
        let created = control.run(async move { catalog.create_materialized_view(request).await }).await?;
        if created == Created::AlreadyExisted {
            self.notice(NoticeSeverity::Notice, format!("relation \"{}\" already exists, skipping", name.name));
        }
        Ok(Output::Command(CommandComplete::new("CREATE MATERIALIZED VIEW")))
    }

    async fn insert_into(&self, name: &RelationName, input: LogicalPlan, control: &QueryControl) -> Result<u64> {
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

    fn run_session_statement(&mut self, statement: SessionStatement) -> Result<Output> {
        let status = self.transaction_status();
        let allowed_when_failed = matches!(statement, SessionStatement::Commit | SessionStatement::Rollback);
        if status == TransactionStatus::Failed && !allowed_when_failed {
            return Err(Error::new(
                StatusCode::InFailedTransaction,
                "current transaction is aborted, commands ignored until end of transaction block",
            ));
        }
        match statement {
            SessionStatement::Set { name, value, local } => {
                self.set_variable(&name, &value, local)?;
                Ok(Output::Command(CommandComplete::new("SET")))
            }
            SessionStatement::Reset(name) => {
                match name {
                    Some(name) => {
                        let canonical = self.vars.write().map_err(lock_err)?.reset(&name)?;
                        self.apply_to_datafusion(&canonical, None)?;
                    }
                    None => {
                        self.vars.write().map_err(lock_err)?.reset_all();
                        self.apply_to_datafusion("TimeZone", None)?;
                    }
                }
                Ok(Output::Command(CommandComplete::new("RESET")))
            }
            SessionStatement::Show(name) => {
                let value = self.show_variable(&name)?;
                let schema = text_schema(&[name.as_str()]);
                let batch = RecordBatch::try_new(Arc::clone(&schema), vec![Arc::new(StringArray::from(vec![value]))])?;
                Ok(Output::Rows(batch_stream(schema, vec![batch])))
            }
            SessionStatement::ShowAll => {
                let rows = self.vars.read().map_err(lock_err)?.all();
                let schema = text_schema(&["name", "setting", "description"]);
                let column = |i: usize| {
                    Arc::new(StringArray::from_iter_values(rows.iter().map(|r| match i {
                        0 => r.0.as_str(),
                        1 => r.1.as_str(),
                        _ => r.2.as_str(),
                    }))) as _
                };
                let batch = RecordBatch::try_new(Arc::clone(&schema), vec![column(0), column(1), column(2)])?;
                Ok(Output::Rows(batch_stream(schema, vec![batch])))
            }
            SessionStatement::Begin => {
                if status == TransactionStatus::InBlock {
                    self.notice(NoticeSeverity::Warning, "there is already a transaction in progress");
                    return Ok(Output::Command(CommandComplete::new("BEGIN")));
                }
                self.txn.store(TransactionStatus::InBlock as u8, Ordering::SeqCst);
                self.writes_in_block = 0;
                Ok(Output::Command(CommandComplete {
                    transaction: Some(TransactionChange::Begin),
                    ..CommandComplete::new("BEGIN")
                }))
            }
            SessionStatement::Commit | SessionStatement::Rollback => {
                let rollback = matches!(statement, SessionStatement::Rollback) || status == TransactionStatus::Failed;
                if status == TransactionStatus::Idle {
                    self.notice(NoticeSeverity::Warning, "there is no transaction in progress");
                } else if rollback && self.writes_in_block > 0 {
                    self.notice(
                        NoticeSeverity::Warning,
                        format!(
                            "ROLLBACK cannot undo the {} statement(s) of this block that already succeeded: \
                             streamhouse commits every statement on its own",
                            self.writes_in_block
                        ),
                    );
                }
                self.end_block()?;
                // Cursors end with the block, unless declared WITH HOLD.
                self.cursors.lock().map_err(lock_err)?.retain(|_, c| c.hold);
                Ok(Output::Command(CommandComplete {
                    transaction: Some(TransactionChange::End),
                    ..CommandComplete::new(if rollback { "ROLLBACK" } else { "COMMIT" })
                }))
            }
            SessionStatement::Discard => {
                self.vars.write().map_err(lock_err)?.reset_all();
                self.apply_to_datafusion("TimeZone", None)?;
                Ok(Output::Command(CommandComplete::new("DISCARD ALL")))
            }
            SessionStatement::NoOp(tag) => Ok(Output::Command(CommandComplete::new(tag))),
            SessionStatement::Call { .. }
            | SessionStatement::AddColumns { .. }
            | SessionStatement::CreateMaterializedView(_)
            | SessionStatement::Drop { .. }
            | SessionStatement::Copy(_)
            | SessionStatement::Declare { .. }
            | SessionStatement::Fetch { .. }
            | SessionStatement::Close(_) => {
                Err(Error::internal("CALL and ALTER TABLE are executed before session statements"))
            }
        }
    }

    fn end_block(&mut self) -> Result<()> {
        self.txn.store(TransactionStatus::Idle as u8, Ordering::SeqCst);
        self.writes_in_block = 0;
        for (name, previous) in std::mem::take(&mut self.local_restore).into_iter().rev() {
            match previous {
                Some(value) => {
                    self.vars.write().map_err(lock_err)?.set(&name, &value)?;
                    self.apply_to_datafusion(&name, Some(&value))?;
                }
                None => {
                    self.vars.write().map_err(lock_err)?.reset(&name)?;
                    self.apply_to_datafusion(&name, None)?;
                }
            }
        }
        Ok(())
    }

    fn set_variable(&mut self, name: &str, value: &str, local: bool) -> Result<()> {
        if let Some(option) = datafusion_option(name) {
            let state_ref = self.ctx.state_ref();
            let mut state = state_ref.write();
            return state.config_mut().options_mut().set(option, value).map_err(|e| {
                let err = Error::from(e);
                Error::new(StatusCode::InvalidParameterValue, err.message().to_string())
            });
        }
        if local && self.transaction_status() == TransactionStatus::Idle {
            self.notice(NoticeSeverity::Warning, "SET LOCAL can only be used in transaction blocks");
            return Ok(());
        }
        let previous = self.variable(name);
        let (canonical, value) = self.vars.write().map_err(lock_err)?.set(name, value)?;
        if local {
            self.local_restore.push((canonical.clone(), previous));
        }
        self.apply_to_datafusion(&canonical, Some(&value))
    }

    /// Mirrors parameters that change query results into DataFusion's settings.
    fn apply_to_datafusion(&self, canonical: &str, value: Option<&str>) -> Result<()> {
        if canonical.eq_ignore_ascii_case("TimeZone") {
            let tz = match value {
                None => None,
                Some(v) if v.eq_ignore_ascii_case("utc") || v.eq_ignore_ascii_case("default") => None,
                Some(v) => {
                    let tz = if v.eq_ignore_ascii_case("local") { "UTC" } else { v };
                    tz.parse::<datafusion::arrow::array::timezone::Tz>().map_err(|_| {
                        Error::new(
                            StatusCode::InvalidParameterValue,
                            format!("invalid value for parameter \"TimeZone\": \"{v}\""),
                        )
                    })?;
                    Some(tz.to_string())
                }
            };
            self.ctx.state_ref().write().config_mut().options_mut().execution.time_zone = tz;
        }
        Ok(())
    }

    fn show_variable(&self, name: &str) -> Result<String> {
        if let Some(option) = datafusion_option(name) {
            let state = self.ctx.state();
            return state
                .config()
                .options()
                .entries()
                .into_iter()
                .find(|e| e.key.eq_ignore_ascii_case(option))
                .map(|e| e.value.unwrap_or_default())
                .ok_or_else(|| {
                    Error::new(StatusCode::ObjectNotFound, format!("unrecognized configuration parameter \"{name}\""))
                });
        }
        self.variable(name).ok_or_else(|| {
            Error::new(StatusCode::ObjectNotFound, format!("unrecognized configuration parameter \"{name}\""))
        })
    }
}

/// Casts bound values to the types the plan inferred for their placeholders,
/// so a text value bound to a `$1` compared with a `varchar` column, or an
/// `int2` bound where an `int8` is expected, runs as the plan assumes.
fn coerce_parameters(params: ParamValues, types: &[Option<DataType>]) -> Result<ParamValues> {
    let ParamValues::List(values) = params else {
        return Ok(params);
    };
    let values = values
        .into_iter()
        .enumerate()
        .map(|(i, mut v)| {
            if let Some(Some(target)) = types.get(i)
                && v.value.data_type() != *target
                && !v.value.is_null()
            {
                v.value = v.value.cast_to(target).map_err(|e| {
                    Error::new(
                        StatusCode::InvalidTextRepresentation,
                        format!("parameter ${} cannot be converted to {target}: {}", i + 1, Error::from(e).message()),
                    )
                })?;
            } else if let Some(Some(target)) = types.get(i)
                && v.value.is_null()
            {
                v.value = datafusion::scalar::ScalarValue::try_from(target)?;
            }
            Ok(v)
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(ParamValues::List(values))
}

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

fn lock_err<T>(_: T) -> Error {
    Error::internal("session variables lock poisoned")
}

fn datafusion_option(name: &str) -> Option<&str> {
    name.len()
        .gt(&"datafusion.".len())
        .then_some(name)
        .filter(|n| n[.."datafusion.".len()].eq_ignore_ascii_case("datafusion."))
}

fn batch_stream(schema: SchemaRef, batches: Vec<RecordBatch>) -> SendableRecordBatchStream {
    Box::pin(RecordBatchStreamAdapter::new(schema, futures::stream::iter(batches.into_iter().map(Ok))))
}

/// Collects a row output into memory (for all but the last statement of a batch).
async fn buffer(output: Output) -> Result<Output> {
    match output {
        Output::Rows(stream) => {
            let schema = stream.schema();
            let batches: Vec<RecordBatch> = futures::TryStreamExt::try_collect(stream).await?;
            Ok(Output::Rows(batch_stream(schema, batches)))
        }
        Output::CopyOut(crate::copy::CopyOut { stream, options, live: false }) => {
            let schema = stream.schema();
            let batches: Vec<RecordBatch> = futures::TryStreamExt::try_collect(stream).await?;
            Ok(Output::CopyOut(crate::copy::CopyOut { stream: batch_stream(schema, batches), options, live: false }))
        }
        Output::Live(_) | Output::CopyOut(crate::copy::CopyOut { live: true, .. }) => {
            Err(Error::unsupported("SUBSCRIBE must be the last statement of a query string"))
        }
        Output::CopyIn(copy) => {
            copy.abort().await;
            Err(Error::unsupported("COPY FROM STDIN must be the last statement of a query string"))
        }
        command => Ok(command),
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

/// Whether a plan reads a subscription (an unbounded stream).
/// Whether `plan` is a query (not DML, DDL or a statement), which EXPLAIN shows with its execution mode.
fn is_query(plan: &LogicalPlan) -> bool {
    !matches!(
        plan,
        LogicalPlan::Dml(_)
            | LogicalPlan::Ddl(_)
            | LogicalPlan::Statement(_)
            | LogicalPlan::Copy(_)
            | LogicalPlan::Explain(_)
            | LogicalPlan::Analyze(_)
    ) && !is_subscription(plan)
}

fn is_subscription(plan: &LogicalPlan) -> bool {
    use datafusion::common::tree_node::TreeNode;
    plan.exists(|node| {
        Ok(matches!(node, LogicalPlan::TableScan(scan)
            if datafusion::datasource::source_as_provider(&scan.source)
                .is_ok_and(|p| p.downcast_ref::<crate::dynamic::subscribe::SubscriptionTable>().is_some())))
    })
    .unwrap_or(false)
}
