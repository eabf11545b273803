//! Sessions: one per Postgres connection or Flight SQL request.
//!
//! A [`Session`] owns a DataFusion context (its own settings, shared tables
//! and functions), its [`variables`], its transaction status and a
//! [`CancelHandle`]. Statements go through two steps, the shape of the
//! Postgres extended protocol:
//!
//! 1. [`Session::prepare`] takes one statement of [`crate::sql::parse`]
//!    and plans it: a DataFusion `LogicalPlan` for queries, DML, CREATE TABLE
//!    and SUBSCRIBE; nothing for statements the session runs itself (SET,
//!    BEGIN, COPY, cursors, DROP …). The [`Prepared`] statement knows its
//!    parameter types and result schema.
//! 2. [`Session::execute`] binds parameter values and runs it, returning
//!    [`Output::Rows`] (a stream) or [`Output::Command`] (a completion tag).
//!    Which code runs which statement is decided in one place, the table
//!    in `Session::dispatch`:
//!
//! | statement | runs in |
//! |---|---|
//! | queries, `EXPLAIN`, DML, `SUBSCRIBE`, `CREATE TABLE`/`VIEW`/`SCHEMA` | `run_plan` (DataFusion, then [`crate::exec`]) |
//! | `CREATE MATERIALIZED VIEW`, `DROP`, `ALTER TABLE`, `CALL` | `ddl` |
//! | `COPY` | `copy` |
//! | `DECLARE`, `FETCH`, `CLOSE` | `cursor` |
//! | `SET`, `RESET`, `SHOW`, `BEGIN`, `COMMIT`, `ROLLBACK`, `DISCARD` | `control` |
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

mod control;
mod copy;
mod cursor;
mod ddl;
mod execute;
mod freshness;
pub mod ingest;
mod insert;
mod naming;
mod origins;
mod point;
mod privileges;
mod roles;
pub mod variables;

pub use copy::CopyIn;
pub use origins::{ATTNUM_KEY, TABLE_OID_KEY};

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, RwLock};

use datafusion::arrow::array::{RecordBatch, UInt64Array};
use datafusion::arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use datafusion::common::{ParamValues, TableReference};
use datafusion::datasource::provider_as_source;
use datafusion::execution::SendableRecordBatchStream;
use datafusion::logical_expr::{Expr, LogicalPlan, LogicalPlanBuilder, WriteOp};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::prelude::SessionContext;
use datafusion::sql::parser::Statement as DFStatement;
use datafusion::sql::sqlparser::ast;
use futures::StreamExt;

use crate::cancel::{CancelHandle, QueryControl};
use crate::copy::CopyOut;
use crate::engine::{Engine, text_udf};
use crate::error::{Error, Result, StatusCode};
use crate::sql::{self, Statement};
use variables::Variables;

/// Who opened a session.
#[derive(Debug, Clone, Default)]
pub struct SessionInfo {
    /// The user name (`current_user`), as the front end authenticated it.
    pub user: String,
    /// The role whose privileges every statement is checked against.
    /// `None`: the session has every right — an embedded engine, or a
    /// login the front end trusts under a name that is not a role (see the
    /// README's authentication section). Front ends set it for every login
    /// that names a role.
    pub role: Option<String>,
    /// The database the client asked for; streamhouse serves one database
    /// and accepts any name for it.
    pub database: Option<String>,
    /// `application_name` from the client, if sent.
    pub application_name: Option<String>,
    /// The process id the protocol gave the client (Postgres' BackendKeyData),
    /// which `pg_backend_pid()` answers; the session id where there is none.
    pub pid: Option<i32>,
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
    CopyIn(Box<CopyIn>),
    /// `COPY … TO STDOUT`: rows to send in a COPY format.
    CopyOut(CopyOut),
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
    /// The DataFusion plan, for statements DataFusion plans.
    plan: Option<LogicalPlan>,
    catalog_version: u64,
    /// Postgres' names for result columns DataFusion names differently.
    column_names: Option<Vec<Option<String>>>,
    /// The shape of a point select by primary key (its fast path).
    point: Option<Arc<point::PointSelect>>,
    /// The table and column each result column reads, where it reads one
    /// straight from a table (Postgres' RowDescription says which).
    origins: Vec<Option<origins::Origin>>,
}

impl Prepared {
    /// For `INSERT INTO t [(columns)] VALUES ($1, $2, …)` (placeholders in
    /// order, one row): the table and columns, so parameter batches can be
    /// written as rows without executing the statement once per row.
    pub fn insert_of_parameters(&self) -> Option<(TableReference, Vec<String>)> {
        let Some(ast::Statement::Insert(insert)) = self.statement.as_plan() else { return None };
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
        let table = sql::table_reference(name).ok()?;
        let columns = insert
            .columns
            .iter()
            .map(|c| match c.0.as_slice() {
                [part] => part.as_ident().map(sql::ident_value),
                _ => None,
            })
            .collect::<Option<Vec<String>>>()?;
        Some((table, columns))
    }

    /// The statement as parsed.
    pub fn statement(&self) -> &Statement {
        &self.statement
    }

    /// Types of the parameters `$1`, `$2` …, in order; `None` where the type
    /// cannot be inferred from the statement.
    ///
    /// # Errors
    /// Conflicting types for one parameter.
    pub fn parameter_types(&self) -> Result<Vec<Option<DataType>>> {
        match &self.plan {
            Some(plan) => parameter_types(plan),
            None => Ok(vec![]),
        }
    }

    /// The schema of the rows the statement returns, or `None` for commands.
    pub fn result_schema(&self) -> Option<SchemaRef> {
        match (&self.plan, &self.statement) {
            (Some(plan), _) => match plan {
                LogicalPlan::Ddl(_) | LogicalPlan::Dml(_) | LogicalPlan::Copy(_) | LogicalPlan::Statement(_) => None,
                _ => Some(self.rename(Arc::clone(plan.schema().inner()))),
            },
            (None, Statement::Show(name)) => Some(text_schema(&[control::show_name(name).as_str()])),
            (None, Statement::ShowAll) => Some(text_schema(&["name", "setting", "description"])),
            (None, _) => None,
        }
    }

    /// The result schema once `params` are bound (types of `SELECT $1` depend on them).
    ///
    /// # Errors
    /// Parameters that do not fit the statement.
    pub fn result_schema_with(&self, params: &ParamValues) -> Result<Option<SchemaRef>> {
        match &self.plan {
            Some(plan) if !matches!(plan, LogicalPlan::Ddl(_) | LogicalPlan::Dml(_) | LogicalPlan::Statement(_)) => {
                let bound = plan.clone().with_param_values(params.clone())?;
                Ok(Some(self.rename(Arc::clone(bound.schema().inner()))))
            }
            _ => Ok(self.result_schema()),
        }
    }

    fn rename(&self, schema: SchemaRef) -> SchemaRef {
        let schema = match &self.column_names {
            Some(names) => naming::rename_schema(&schema, names),
            None => schema,
        };
        origins::annotate(schema, &self.origins)
    }
}

fn text_schema(names: &[&str]) -> SchemaRef {
    Arc::new(Schema::new(names.iter().map(|n| Field::new(*n, DataType::Utf8, true)).collect::<Vec<_>>()))
}

/// Parameter types of a plan in `$n` order, with types of untyped
/// placeholders taken from casts around them (`$1::int`).
fn parameter_types(plan: &LogicalPlan) -> Result<Vec<Option<DataType>>> {
    use datafusion::common::tree_node::{TreeNode, TreeNodeRecursion};
    if let LogicalPlan::Statement(datafusion::logical_expr::Statement::Prepare(_)) = plan {
        // `PREPARE p AS … $1 …`: the placeholders are the prepared
        // statement's, bound by a later EXECUTE, not this statement's.
        return Ok(vec![]);
    }
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
        let inputs = node.inputs();
        let schema = match inputs.as_slice() {
            [input] => input.schema(),
            _ => node.schema(),
        };
        node.apply_expressions(|expr| {
            expr.apply(|e| {
                if let Expr::Cast(cast) = e
                    && let Expr::Placeholder(p) = cast.expr.as_ref()
                {
                    put(&p.id, Some(cast.field.data_type().clone()));
                }
                // `x = ANY($n)` (planned as `array_has($n, x)`): `$n` is an array of x's type.
                if let Expr::ScalarFunction(function) = e
                    && function.name() == "array_has"
                    && let [Expr::Placeholder(p), element] = function.args.as_slice()
                    && p.field.is_none()
                    && let Ok(element) = datafusion::logical_expr::ExprSchemable::get_type(element, schema)
                {
                    put(&p.id, Some(DataType::new_list(element, true)));
                }
                Ok(TreeNodeRecursion::Continue)
            })
        })
    })?;
    Ok(types)
}

impl Engine {
    /// Opens a session (one per Postgres connection or Flight request).
    pub fn new_session(&self, info: SessionInfo) -> Session {
        Session::new(self.clone(), self.next_session_id(), info)
    }
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
    /// The login: the user and role the session started as (`RESET ROLE` returns to them).
    login: (String, Option<String>),
    /// `SET LOCAL` values to restore when the block ends.
    local_restore: Vec<(String, Option<String>)>,
    /// Savepoints of the open block, oldest first.
    savepoints: Vec<control::Savepoint>,
    notices: Vec<Notice>,
    cancel: CancelHandle,
    /// Open cursors by name (behind a lock only so the session stays `Sync`).
    cursors: std::sync::Mutex<std::collections::HashMap<String, cursor::Cursor>>,
    /// The statements of SQL `PREPARE name AS …`, by name, for what
    /// `EXECUTE name` returns (DataFusion keeps the plans but does not show them).
    sql_prepared: std::collections::HashMap<String, Arc<LogicalPlan>>,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session").field("id", &self.id).field("user", &self.info.user).finish_non_exhaustive()
    }
}

impl Session {
    fn new(engine: Engine, id: u64, info: SessionInfo) -> Self {
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
        ctx.register_udf(crate::engine::constant_text_udf("session_user", info.user.clone()));
        let pid = info.pid.unwrap_or_else(|| i32::try_from(id).unwrap_or(i32::MAX));
        ctx.register_udf(datafusion::logical_expr::create_udf(
            "pg_backend_pid",
            vec![],
            DataType::Int32,
            datafusion::logical_expr::Volatility::Stable,
            Arc::new(move |_: &[datafusion::logical_expr::ColumnarValue]| {
                Ok(datafusion::logical_expr::ColumnarValue::Scalar(datafusion::common::ScalarValue::Int32(Some(pid))))
            }),
        ));
        let session = Self {
            engine,
            id,
            login: (info.user.clone(), info.role.clone()),
            info,
            ctx,
            vars,
            txn: Arc::new(AtomicU8::new(TransactionStatus::Idle as u8)),
            writes_in_block: 0,
            local_restore: Vec::new(),
            savepoints: Vec::new(),
            notices: Vec::new(),
            cancel: CancelHandle::default(),
            cursors: std::sync::Mutex::new(std::collections::HashMap::new()),
            sql_prepared: std::collections::HashMap::new(),
        };
        session.install_identity();
        session
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

    /// Splits SQL text into statements, with streamhouse's parser ([`crate::sql::parse`]).
    ///
    /// # Errors
    /// [`StatusCode::InvalidSyntax`] with the position; see [`crate::sql::parse`].
    pub fn parse(&self, sql: &str) -> Result<Vec<Statement>> {
        self.check_statement_length(sql)?;
        sql::parse(sql)
    }

    /// 54000 for statement text longer than `execution.max_statement_bytes`.
    fn check_statement_length(&self, sql: &str) -> Result<()> {
        let max = self.engine.config().max_statement_bytes;
        if sql.len() > max {
            return Err(Error::new(
                StatusCode::ProgramLimitExceeded,
                format!("statement is too long: {} bytes, and execution.max_statement_bytes is {max}", sql.len()),
            ));
        }
        Ok(())
    }

    /// Splits SQL text in which `?` marks parameters (Flight SQL's and
    /// JDBC's convention) into statements; see [`crate::sql::parse_question_mark_parameters`].
    ///
    /// # Errors
    /// As [`Session::parse`].
    pub fn parse_question_mark_parameters(&self, sql: &str) -> Result<Vec<Statement>> {
        self.check_statement_length(sql)?;
        sql::parse_question_mark_parameters(sql)
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
        if !planned_by_datafusion(&statement) {
            if let Statement::Copy(copy) = &statement {
                self.check_copy(copy).await?;
            }
            return Ok(Prepared {
                statement,
                plan: None,
                catalog_version,
                column_names: None,
                point: None,
                origins: vec![],
            });
        }
        let control = self.begin_statement();
        match control.run(self.plan(&statement)).await {
            Ok(plan) => {
                let column_names = statement.as_plan().and_then(naming::postgres_column_names);
                let point = statement.as_plan().and_then(point::PointSelect::of).map(Arc::new);
                let origins = self.column_origins(&plan);
                Ok(Prepared { statement, plan: Some(plan), catalog_version, column_names, point, origins })
            }
            Err(e) if e.message().contains("require unique expression names") => {
                // Postgres allows duplicate output names; DataFusion does not.
                let Some((aliased, names)) = statement.as_plan().and_then(naming::with_unique_aliases) else {
                    return Err(e);
                };
                let aliased = Statement::Plan(Box::new(aliased));
                let plan = control.run(self.plan(&aliased)).await?;
                let origins = self.column_origins(&plan);
                Ok(Prepared {
                    statement: aliased,
                    plan: Some(plan),
                    catalog_version,
                    column_names: Some(names),
                    point: None,
                    origins,
                })
            }
            Err(e) => Err(e),
        }
    }

    /// The DataFusion plan of a statement DataFusion plans ([`planned_by_datafusion`]).
    async fn plan(&self, statement: &Statement) -> Result<LogicalPlan> {
        let state = self.ctx.state();
        let standard = |statement: &ast::Statement| -> Result<DFStatement> {
            let mut statement = statement.clone();
            sql::windows::rewrite(&mut statement)?;
            Ok(DFStatement::Statement(Box::new(statement)))
        };
        let plan = match statement {
            Statement::Plan(statement) => state.statement_to_plan(standard(statement)?).await?,
            Statement::CreateTable(create) => state.statement_to_plan(standard(&create.statement)?).await?,
            Statement::InsertIgnoringConflicts(insert) => {
                let plan = state.statement_to_plan(standard(&insert.insert)?).await?;
                crate::dynamic::ignore_conflicts(plan, insert.target.as_deref())?
            }
            Statement::Subscribe(subscribe) => {
                let name = self.relation_name(&subscribe.relation)?;
                let (table, columns) = self.engine.catalog().subscribe_to(&name)?;
                let source =
                    crate::dynamic::subscribe::SubscriptionTable::new(table, columns, subscribe.options.clone());
                self.require(&name, crate::access::Privilege::Select)?;
                LogicalPlanBuilder::scan(subscribe.relation.clone(), provider_as_source(Arc::new(source)), None)?
                    .build()?
            }
            _ => return Err(Error::internal("statement is not planned by DataFusion")),
        };
        let views = self.views_in(&plan).await?;
        self.check_plan(&plan, statement, &views)?;
        Ok(plan)
    }

    /// The rows `prepared` returns if executed now, for a protocol's
    /// Describe: `None` for a statement that returns none (NoData). Unlike
    /// [`Prepared::result_schema`] this knows the session's state: the
    /// cursor a `FETCH` reads (NoData when no such cursor is open, as in
    /// Postgres) and the statement an SQL `EXECUTE name` runs.
    ///
    /// # Errors
    /// Parameters that do not fit the statement.
    pub fn describe(&self, prepared: &Prepared, params: Option<&ParamValues>) -> Result<Option<SchemaRef>> {
        use datafusion::logical_expr::Statement as S;
        if let Statement::Fetch { name, .. } = &prepared.statement {
            return Ok(self.open_cursors()?.get(name).map(cursor::Cursor::schema));
        }
        if let Some(LogicalPlan::Statement(S::Execute(execute))) = &prepared.plan {
            let input = self.sql_prepared.get(&execute.name);
            return Ok(input.filter(|plan| is_query(plan)).map(|plan| Arc::clone(plan.schema().inner())));
        }
        match params {
            Some(params) => prepared.result_schema_with(params),
            None => Ok(prepared.result_schema()),
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
        if self.transaction_status() == TransactionStatus::Failed
            && !matches!(prepared.statement, Statement::Commit | Statement::Rollback | Statement::RollbackTo(_))
        {
            return Err(Error::new(
                StatusCode::InFailedTransaction,
                "current transaction is aborted, commands ignored until end of transaction block",
            ));
        }
        self.dispatch(prepared, params).await
    }

    /// Which code runs which statement: the one place that decides.
    async fn dispatch(&mut self, prepared: &Prepared, params: Option<ParamValues>) -> Result<Output> {
        match &prepared.statement {
            Statement::Plan(_) => {
                if let Some(output) = self.insert_parameters(prepared, &params).await? {
                    return Ok(output);
                }
                if let Some(output) = self.select_parameters(prepared, &params).await? {
                    return Ok(output);
                }
                self.run_prepared_plan(prepared, params).await
            }
            Statement::CreateTable(_) | Statement::InsertIgnoringConflicts(_) | Statement::Subscribe(_) => {
                self.run_prepared_plan(prepared, params).await
            }
            Statement::CreateMaterializedView(create) => {
                let out = self.create_materialized_view(create).await;
                self.engine.bump_catalog_version();
                out
            }
            Statement::Drop { kind, names, if_exists, cascade } => {
                let mut out = Err(Error::internal("DROP without names"));
                for name in names {
                    out = self.drop_relation(name, *kind, *if_exists, *cascade).await;
                    if out.is_err() {
                        break;
                    }
                }
                self.engine.bump_catalog_version();
                out
            }
            Statement::AddColumns { table, if_exists, columns } => self.add_columns(table, *if_exists, columns).await,
            Statement::Rename { kind, name, new_name, if_exists } => {
                self.rename_relation(name, *kind, new_name, *if_exists).await
            }
            Statement::AlterMaterializedView { name, if_exists, action } => {
                let out = self.alter_materialized_view(name, *if_exists, action).await;
                self.engine.bump_catalog_version();
                out
            }
            Statement::RenameColumn { table, column, new_name, if_exists } => {
                self.rename_column(table, column, new_name, *if_exists).await
            }
            Statement::Call { procedure, table } => self.call(*procedure, table).await,
            Statement::CreateRole { name, if_not_exists, options } => {
                self.create_role(name, *if_not_exists, options).await
            }
            Statement::AlterRole { name, options } => self.alter_role(name, options).await,
            Statement::DropRole { names, if_exists } => self.drop_roles(names, *if_exists).await,
            Statement::Grant(grant) => self.grant(grant).await,
            Statement::SetRole(role) => self.set_role(role.as_deref()),
            Statement::Copy(copy) => self.copy(copy).await,
            Statement::Declare { name, query, hold } => self.declare_cursor(name, query, *hold).await,
            Statement::Fetch { name, count, timeout } => self.fetch_cursor(name, *count, *timeout).await,
            Statement::Close(name) => self.close_cursor(name.as_deref()),
            Statement::Discard => {
                // DISCARD ALL also closes cursors and deallocates prepared statements.
                self.open_cursors()?.clear();
                for name in std::mem::take(&mut self.sql_prepared).into_keys() {
                    let deallocate =
                        datafusion::logical_expr::Statement::Deallocate(datafusion::logical_expr::Deallocate { name });
                    self.ctx.execute_logical_plan(LogicalPlan::Statement(deallocate)).await?;
                }
                self.control(&prepared.statement)
            }
            Statement::Set { .. }
            | Statement::Reset(_)
            | Statement::Show(_)
            | Statement::ShowAll
            | Statement::Begin
            | Statement::Commit
            | Statement::Rollback
            | Statement::Savepoint(_)
            | Statement::Release(_)
            | Statement::RollbackTo(_)
            | Statement::NoOp(_) => self.control(&prepared.statement),
        }
    }

    /// Binds parameters into a statement DataFusion planned and runs it.
    async fn run_prepared_plan(&mut self, prepared: &Prepared, params: Option<ParamValues>) -> Result<Output> {
        let control = self.begin_statement();
        let Some(plan) = &prepared.plan else { return Err(Error::internal("statement was not planned")) };
        let plan = if prepared.catalog_version == self.engine.catalog_version() {
            plan.clone()
        } else {
            // A DDL statement ran since this was planned: plan again against the current catalog.
            control.run(self.plan(&prepared.statement)).await?
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
        let options = match &prepared.statement {
            Statement::CreateTable(create) => create.options.clone(),
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
        self.fresh_views(&plan, control).await?;
        match plan {
            LogicalPlan::Ddl(ddl) => {
                let out = self.run_ddl(ddl, control, options).await;
                self.engine.bump_catalog_version();
                out
            }
            LogicalPlan::Dml(dml) => {
                let command = dml_tag(&dml.op);
                let plan = crate::dynamic::plan_reading_write(LogicalPlan::Dml(dml))?;
                let rows = control.run(self.execute_count(plan)).await?;
                Ok(Output::Command(dml_complete(command, rows)))
            }
            LogicalPlan::Statement(statement) => {
                use datafusion::logical_expr::Statement as S;
                match &statement {
                    S::Prepare(prepare)
                        if !is_query(&prepare.input) && !matches!(*prepare.input, LogicalPlan::Dml(_)) =>
                    {
                        return Err(Error::unsupported(
                            "PREPARE supports queries, INSERT, UPDATE and DELETE; run other statements directly",
                        ));
                    }
                    S::Prepare(prepare) if self.sql_prepared.contains_key(&prepare.name) => {
                        return Err(Error::new(
                            StatusCode::DuplicatePreparedStatement,
                            format!("prepared statement \"{}\" already exists", prepare.name),
                        ));
                    }
                    S::Prepare(_) if self.sql_prepared.len() >= self.engine.config().max_prepared_statements => {
                        return Err(Error::new(
                            StatusCode::ConfigurationLimitExceeded,
                            format!(
                                "too many prepared statements: execution.max_prepared_statements is {} (DEALLOCATE some)",
                                self.engine.config().max_prepared_statements
                            ),
                        ));
                    }
                    S::Execute(datafusion::logical_expr::Execute { name, .. })
                    | S::Deallocate(datafusion::logical_expr::Deallocate { name })
                        if !self.sql_prepared.contains_key(name) =>
                    {
                        return Err(Error::new(
                            StatusCode::UndefinedPreparedStatement,
                            format!("prepared statement \"{name}\" does not exist"),
                        ));
                    }
                    S::Prepare(_) | S::Deallocate(_) | S::Execute(_) => {}
                    other => {
                        return Err(Error::unsupported(format!("statement {} is not supported", other.name())));
                    }
                }
                let df = control
                    .run(async { Ok(self.ctx.execute_logical_plan(LogicalPlan::Statement(statement.clone())).await?) })
                    .await?;
                match statement {
                    S::Prepare(prepare) => {
                        self.sql_prepared.insert(prepare.name, prepare.input);
                        Ok(Output::Command(CommandComplete::new("PREPARE")))
                    }
                    S::Deallocate(deallocate) => {
                        self.sql_prepared.remove(&deallocate.name);
                        Ok(Output::Command(CommandComplete::new("DEALLOCATE")))
                    }
                    _ => match df.logical_plan() {
                        // EXECUTE of a prepared write answers as the write does.
                        LogicalPlan::Dml(dml) => {
                            let command = dml_tag(&dml.op);
                            let plan = crate::dynamic::plan_reading_write(df.logical_plan().clone())?;
                            let rows = control.run(self.execute_count(plan)).await?;
                            Ok(Output::Command(dml_complete(command, rows)))
                        }
                        _ => Ok(Output::Rows(control.run(self.execute_frame(df, source)).await?)),
                    },
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
}

/// The command tag of a write.
fn dml_tag(op: &WriteOp) -> &'static str {
    match op {
        WriteOp::Insert(_) => "INSERT",
        WriteOp::Update => "UPDATE",
        WriteOp::Delete => "DELETE",
        WriteOp::Ctas => "SELECT",
        WriteOp::Truncate => "TRUNCATE TABLE",
        WriteOp::MergeInto(_) => "MERGE",
        _ => "UPDATE",
    }
}

/// A write's completion: its tag, with the row count (TRUNCATE has none).
fn dml_complete(command: &'static str, rows: u64) -> CommandComplete {
    if command == "TRUNCATE TABLE" {
        CommandComplete::new(command)
    } else {
        CommandComplete::new(command).with_rows(rows)
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
        Output::CopyOut(CopyOut { stream, options, live: false }) => {
            let schema = stream.schema();
            let batches: Vec<RecordBatch> = futures::TryStreamExt::try_collect(stream).await?;
            Ok(Output::CopyOut(CopyOut { stream: batch_stream(schema, batches), options, live: false }))
        }
        Output::Live(_) | Output::CopyOut(CopyOut { live: true, .. }) => {
            Err(Error::unsupported("SUBSCRIBE must be the last statement of a query string"))
        }
        Output::CopyIn(copy) => {
            copy.abort().await;
            Err(Error::unsupported("COPY FROM STDIN must be the last statement of a query string"))
        }
        command => Ok(command),
    }
}

/// Whether `plan` is a query (not DML, DDL or a statement), which EXPLAIN shows with its execution mode.
fn is_query(plan: &LogicalPlan) -> bool {
    crate::semantics::is_query(plan) && !is_subscription(plan)
}

/// Whether a plan reads a subscription (an unbounded stream).
fn is_subscription(plan: &LogicalPlan) -> bool {
    use datafusion::common::tree_node::TreeNode;
    plan.exists(|node| {
        Ok(matches!(node, LogicalPlan::TableScan(scan)
            if datafusion::datasource::source_as_provider(&scan.source)
                .is_ok_and(|p| p.downcast_ref::<crate::dynamic::subscribe::SubscriptionTable>().is_some())))
    })
    .unwrap_or(false)
}

/// Whether DataFusion plans the statement (at prepare time); the others
/// the session runs itself.
fn planned_by_datafusion(statement: &Statement) -> bool {
    matches!(
        statement,
        Statement::Plan(_)
            | Statement::CreateTable(_)
            | Statement::InsertIgnoringConflicts(_)
            | Statement::Subscribe(_)
    )
}
