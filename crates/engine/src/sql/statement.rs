//! The statements of streamhouse's SQL dialect, as [`parse`](super::parse)
//! returns them: standard SQL that DataFusion plans, carried as sqlparser's
//! AST, and typed nodes for everything streamhouse adds or runs itself.

use std::collections::BTreeMap;
use std::time::Duration;

use datafusion::common::TableReference;
use datafusion::sql::sqlparser::ast;

use crate::copy::CopyOptions;

/// One parsed statement.
#[derive(Debug, Clone)]
pub enum Statement {
    /// Standard SQL that DataFusion plans: queries, `EXPLAIN`, `INSERT`,
    /// `UPDATE`, `DELETE`, `CREATE VIEW`, `CREATE|DROP SCHEMA`,
    /// `PREPARE`/`EXECUTE`/`DEALLOCATE`.
    Plan(Box<ast::Statement>),
    /// `CREATE TABLE`, with its `WITH (…)` options and `WATERMARK FOR`
    /// taken out of the statement DataFusion plans.
    CreateTable(Box<CreateTable>),
    /// `INSERT … ON CONFLICT [(columns)] DO NOTHING`.
    InsertIgnoringConflicts(Box<InsertIgnoringConflicts>),
    /// `CREATE [OR REPLACE] MATERIALIZED VIEW`.
    CreateMaterializedView(Box<CreateMaterializedView>),
    /// `SUBSCRIBE [TO] rel [AS OF …] [WITH (…)]`.
    Subscribe(Subscribe),
    /// `COPY … FROM STDIN` / `COPY … TO STDOUT`.
    Copy(Box<Copy>),
    /// `DECLARE c [NO SCROLL] CURSOR [WITH HOLD] FOR query | SUBSCRIBE …`.
    Declare {
        /// The cursor's name.
        name: String,
        /// What it reads: a query ([`Statement::Plan`]) or a [`Statement::Subscribe`].
        query: Box<Statement>,
        /// `WITH HOLD`: the cursor outlives its transaction block.
        hold: bool,
    },
    /// `FETCH [n | ALL | NEXT | FORWARD …] [FROM | IN] c [WITH (timeout = …)]`.
    Fetch {
        /// The cursor.
        name: String,
        /// Rows to return at most; `None` for all.
        count: Option<u64>,
        /// How long to wait for a first row (subscriptions).
        timeout: Option<Duration>,
    },
    /// `CLOSE c`; `None` for `CLOSE ALL`.
    Close(Option<String>),
    /// `CALL sys.<procedure>('table')`.
    Call {
        /// The procedure.
        procedure: Procedure,
        /// The table argument, as written (`'s.t'`, `'"Mixed"'`).
        table: TableReference,
    },
    /// `DROP TABLE | VIEW | MATERIALIZED VIEW [IF EXISTS] names [CASCADE]`.
    Drop {
        /// What kind of relation the statement names.
        kind: RelationKind,
        /// The relations, in order.
        names: Vec<TableReference>,
        /// `IF EXISTS`.
        if_exists: bool,
        /// `CASCADE`.
        cascade: bool,
    },
    /// `ALTER TABLE [IF EXISTS] t ADD [COLUMN] [IF NOT EXISTS] c type, …`.
    AddColumns {
        /// The table.
        table: TableReference,
        /// `IF EXISTS`.
        if_exists: bool,
        /// The new columns.
        columns: Vec<AddColumn>,
    },
    /// `ALTER TABLE | VIEW | MATERIALIZED VIEW [IF EXISTS] name RENAME TO new_name`.
    Rename {
        /// The kind the statement names; `None` for ALTER TABLE, which renames any kind.
        kind: Option<RelationKind>,
        /// The relation.
        name: TableReference,
        /// Its new name, in the same schema.
        new_name: String,
        /// `IF EXISTS`.
        if_exists: bool,
    },
    /// `ALTER MATERIALIZED VIEW [IF EXISTS] name SUSPEND | RESUME | REFRESH | SET (…)`.
    AlterMaterializedView {
        /// The view.
        name: TableReference,
        /// `IF EXISTS`.
        if_exists: bool,
        /// What to do.
        action: ViewAlteration,
    },
    /// `ALTER TABLE [IF EXISTS] name RENAME [COLUMN] column TO new_column`.
    RenameColumn {
        /// The table.
        table: TableReference,
        /// The column's name.
        column: String,
        /// Its new name.
        new_name: String,
        /// `IF EXISTS`.
        if_exists: bool,
    },
    /// `CREATE ROLE | USER [IF NOT EXISTS] name [WITH] options` (USER implies LOGIN).
    CreateRole {
        /// The role.
        name: String,
        /// `IF NOT EXISTS`.
        if_not_exists: bool,
        /// Its options.
        options: RoleOptions,
    },
    /// `ALTER ROLE | USER name [WITH] options`.
    AlterRole {
        /// The role.
        name: String,
        /// What changes.
        options: RoleOptions,
    },
    /// `DROP ROLE | USER [IF EXISTS] names`.
    DropRole {
        /// The roles, in order.
        names: Vec<String>,
        /// `IF EXISTS`.
        if_exists: bool,
    },
    /// `GRANT … TO …` / `REVOKE … FROM …`.
    Grant(Box<Grant>),
    /// `SET ROLE name` (`None`: `SET ROLE NONE`, `RESET ROLE`).
    SetRole(Option<String>),
    /// `SET [LOCAL] name = value`, `SET TIME ZONE …`, `SET NAMES …`.
    Set {
        /// The parameter, as written.
        name: String,
        /// The value, string literals unquoted.
        value: String,
        /// `SET LOCAL`: until the end of the transaction block.
        local: bool,
    },
    /// `RESET name` / `RESET ALL` (`None`) / `SET name = DEFAULT`.
    Reset(Option<String>),
    /// `SHOW name`.
    Show(String),
    /// `SHOW ALL`.
    ShowAll,
    /// `BEGIN` / `START TRANSACTION`.
    Begin,
    /// `COMMIT` / `END`.
    Commit,
    /// `ROLLBACK` / `ABORT`.
    Rollback,
    /// `DISCARD ALL`.
    Discard,
    /// `SAVEPOINT name`.
    Savepoint(String),
    /// `RELEASE [SAVEPOINT] name`.
    Release(String),
    /// `ROLLBACK [WORK | TRANSACTION] TO [SAVEPOINT] name`.
    RollbackTo(String),
    /// Accepted for compatibility with no effect; carries its command tag.
    NoOp(&'static str),
}

impl Statement {
    /// The standard SQL statement, for [`Statement::Plan`].
    pub fn as_plan(&self) -> Option<&ast::Statement> {
        match self {
            Statement::Plan(statement) => Some(statement),
            _ => None,
        }
    }
}

/// `CREATE TABLE`, split into what DataFusion plans and what the catalog takes.
#[derive(Debug, Clone)]
pub struct CreateTable {
    /// The statement without table options (an `ast::Statement::CreateTable`).
    pub statement: ast::Statement,
    /// `WITH (key = value, …)`, keys lower-cased, string values unquoted;
    /// a `WATERMARK FOR` clause becomes the `watermark` option.
    pub options: BTreeMap<String, String>,
}

/// `INSERT … ON CONFLICT [(columns)] DO NOTHING`.
#[derive(Debug, Clone)]
pub struct InsertIgnoringConflicts {
    /// The INSERT without its `ON CONFLICT` clause.
    pub insert: ast::Statement,
    /// The conflict target's columns, if given.
    pub target: Option<Vec<String>>,
}

/// `CREATE [OR REPLACE] MATERIALIZED VIEW [IF NOT EXISTS] v [(columns)] [WITH (…)] AS query`.
#[derive(Debug, Clone)]
pub struct CreateMaterializedView {
    /// The view.
    pub name: TableReference,
    /// The defining query.
    pub query: Box<ast::Query>,
    /// The column list, if given.
    pub columns: Vec<String>,
    /// `IF NOT EXISTS`.
    pub if_not_exists: bool,
    /// `OR REPLACE`.
    pub or_replace: bool,
    /// `WITH (…)`, keys lower-cased, string values unquoted.
    pub options: BTreeMap<String, String>,
}

/// What `ALTER MATERIALIZED VIEW` does to a view's refresh.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ViewAlteration {
    /// Stop maintaining or refreshing it; it keeps its content.
    Suspend,
    /// Maintain or refresh it again, from where it stopped.
    Resume,
    /// Refresh it now (a continuous view: wait until it is fresh).
    Refresh,
    /// `SET (freshness = …, refresh_mode = …)`, keys lower-cased.
    Set(BTreeMap<String, String>),
}

impl ViewAlteration {
    /// The alteration as SQL (`SUSPEND`, `SET (…)`).
    pub fn keyword(&self) -> &'static str {
        match self {
            ViewAlteration::Suspend => "SUSPEND",
            ViewAlteration::Resume => "RESUME",
            ViewAlteration::Refresh => "REFRESH",
            ViewAlteration::Set(_) => "SET",
        }
    }
}

/// `SUBSCRIBE [TO] rel [AS OF SNAPSHOT n | AS OF TIMESTAMP '…'] [WITH (snapshot = …, consumer = …)]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscribe {
    /// The table or materialized view.
    pub relation: TableReference,
    /// Where it starts, and how.
    pub options: SubscribeOptions,
}

/// Where a subscription starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// The latest snapshot.
    Latest,
    /// `AS OF SNAPSHOT n`.
    Snapshot(u64),
    /// `AS OF TIMESTAMP …`: the latest snapshot committed at or before (ms since the epoch).
    Timestamp(i64),
}

/// A subscription's options.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubscribeOptions {
    /// The start snapshot.
    pub start: Start,
    /// Whether the start snapshot's content comes first (as `+I` rows).
    pub snapshot: bool,
    /// A named consumer: resume where it left off, and record progress.
    pub consumer: Option<String>,
}

impl Default for SubscribeOptions {
    fn default() -> Self {
        Self { start: Start::Latest, snapshot: true, consumer: None }
    }
}

/// `COPY`.
#[derive(Debug, Clone)]
pub enum Copy {
    /// `COPY t [(columns)] FROM STDIN …`.
    From {
        /// The table.
        table: TableReference,
        /// The columns the data has, in order (empty: all of them).
        columns: Vec<String>,
        /// Format options.
        options: CopyOptions,
    },
    /// `COPY t [(columns)] TO STDOUT …`.
    TableTo {
        /// The table.
        table: TableReference,
        /// The columns to send (empty: all of them).
        columns: Vec<String>,
        /// Format options.
        options: CopyOptions,
    },
    /// `COPY (query | SUBSCRIBE …) TO STDOUT …`.
    QueryTo {
        /// The query ([`Statement::Plan`]) or subscription ([`Statement::Subscribe`]).
        query: Box<Statement>,
        /// Format options.
        options: CopyOptions,
    },
}

/// A column `ALTER TABLE … ADD COLUMN` adds.
#[derive(Debug, Clone)]
pub struct AddColumn {
    /// Its name.
    pub name: String,
    /// Its SQL type.
    pub data_type: ast::DataType,
    /// `IF NOT EXISTS`.
    pub if_not_exists: bool,
}

/// Whether a relation is a table or a view.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RelationKind {
    /// A base table.
    Table,
    /// A (non-materialised) view.
    View,
    /// A continuous (materialized) view: stored, maintained from its sources.
    MaterializedView,
}

impl RelationKind {
    /// `table`, `view`, `materialized view`.
    pub fn noun(self) -> &'static str {
        match self {
            RelationKind::Table => "table",
            RelationKind::View => "view",
            RelationKind::MaterializedView => "materialized view",
        }
    }

    /// The DROP statement for this kind.
    pub fn drop_command(self) -> &'static str {
        match self {
            RelationKind::Table => "DROP TABLE",
            RelationKind::View => "DROP VIEW",
            RelationKind::MaterializedView => "DROP MATERIALIZED VIEW",
        }
    }
}

pub use crate::access::{Privilege, RoleOptions, SchemaPrivilege};

/// `GRANT` or `REVOKE`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    /// `GRANT` (true) or `REVOKE` (false).
    pub grant: bool,
    /// What is granted, on what.
    pub what: Granted,
    /// To (from) whom: role names, or `public`.
    pub grantees: Vec<String>,
}

/// What a [`Grant`] grants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Granted {
    /// `privileges ON [TABLE] relations`.
    Relations {
        /// The privileges.
        privileges: Vec<Privilege>,
        /// The relations.
        relations: Vec<TableReference>,
    },
    /// `privileges ON ALL TABLES IN SCHEMA schemas`: every relation there now.
    AllTablesIn {
        /// The privileges.
        privileges: Vec<Privilege>,
        /// The schemas.
        schemas: Vec<String>,
    },
    /// `{CREATE | USAGE | ALL} ON SCHEMA schemas`.
    Schemas {
        /// The privileges.
        privileges: Vec<SchemaPrivilege>,
        /// The schemas.
        schemas: Vec<String>,
    },
    /// `role, … TO role`: membership.
    Roles(Vec<String>),
}

/// Table maintenance procedures (`CALL sys.<name>('table')`, Paimon's names).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Procedure {
    /// Merge all sorted runs into one, dropping tombstones.
    Compact,
    /// Expire snapshots by the table's retention options.
    ExpireSnapshots,
    /// Delete files no snapshot needs that were last modified before the
    /// cutoff (`older_than`, default a day ago, as in Paimon).
    RemoveOrphanFiles(Cutoff),
    /// Make an earlier snapshot the latest again, deleting later ones.
    RollbackTo(u64),
}

impl Procedure {
    /// Its name in `sys`.
    pub fn name(self) -> &'static str {
        match self {
            Procedure::Compact => "compact",
            Procedure::ExpireSnapshots => "expire_snapshots",
            Procedure::RemoveOrphanFiles(_) => "remove_orphan_files",
            Procedure::RollbackTo(_) => "rollback_to",
        }
    }
}

/// The age before which files count as orphans.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cutoff {
    /// Older than this many milliseconds (`older_than => INTERVAL '1 hour'`).
    AgeMs(i64),
    /// Modified before this time, ms since the epoch (`older_than => '2026-12-01 00:00:00'`).
    BeforeMs(i64),
}

impl Cutoff {
    /// Paimon's default: a day.
    pub const DEFAULT: Cutoff = Cutoff::AgeMs(24 * 3_600_000);

    /// The cutoff as a time, ms since the epoch.
    pub fn at(self, now_ms: i64) -> i64 {
        match self {
            Cutoff::AgeMs(age) => now_ms.saturating_sub(age),
            Cutoff::BeforeMs(time) => time,
        }
    }
}

impl std::fmt::Display for Statement {
    /// The statement as SQL (for `sys.queries`); statements the session runs
    /// itself show their command.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Statement::Plan(statement) => write!(f, "{statement}"),
            Statement::CreateTable(create) => write!(f, "{}", create.statement),
            Statement::InsertIgnoringConflicts(insert) => write!(f, "{} ON CONFLICT DO NOTHING", insert.insert),
            Statement::CreateMaterializedView(create) => {
                write!(f, "CREATE MATERIALIZED VIEW {} AS {}", create.name, create.query)
            }
            Statement::Subscribe(subscribe) => write!(f, "{subscribe}"),
            Statement::Copy(copy) => match copy.as_ref() {
                Copy::From { table, .. } => write!(f, "COPY {table} FROM STDIN"),
                Copy::TableTo { table, .. } => write!(f, "COPY {table} TO STDOUT"),
                Copy::QueryTo { query, .. } => write!(f, "COPY ({query}) TO STDOUT"),
            },
            Statement::Declare { name, query, .. } => write!(f, "DECLARE {name} CURSOR FOR {query}"),
            Statement::Fetch { name, .. } => write!(f, "FETCH {name}"),
            Statement::Close(name) => write!(f, "CLOSE {}", name.as_deref().unwrap_or("ALL")),
            Statement::Call { procedure, table } => write!(f, "CALL {procedure:?}('{table}')"),
            Statement::Drop { kind, names, .. } => {
                let names: Vec<String> = names.iter().map(ToString::to_string).collect();
                write!(f, "{} {}", kind.drop_command(), names.join(", "))
            }
            Statement::AddColumns { table, .. } => write!(f, "ALTER TABLE {table} ADD COLUMN"),
            Statement::Rename { kind, name, new_name, .. } => {
                let kind = match kind {
                    None => "TABLE",
                    Some(RelationKind::Table) => "TABLE",
                    Some(RelationKind::View) => "VIEW",
                    Some(RelationKind::MaterializedView) => "MATERIALIZED VIEW",
                };
                write!(f, "ALTER {kind} {name} RENAME TO {new_name}")
            }
            Statement::AlterMaterializedView { name, action, .. } => {
                write!(f, "ALTER MATERIALIZED VIEW {name} {}", action.keyword())
            }
            Statement::RenameColumn { table, column, new_name, .. } => {
                write!(f, "ALTER TABLE {table} RENAME COLUMN {column} TO {new_name}")
            }
            // Never the password: this text is what sys.queries shows.
            Statement::CreateRole { name, .. } => write!(f, "CREATE ROLE {name}"),
            Statement::AlterRole { name, .. } => write!(f, "ALTER ROLE {name}"),
            Statement::DropRole { names, .. } => write!(f, "DROP ROLE {}", names.join(", ")),
            Statement::Grant(grant) => {
                let verb = if grant.grant { "GRANT" } else { "REVOKE" };
                write!(f, "{verb} … {} {}", if grant.grant { "TO" } else { "FROM" }, grant.grantees.join(", "))
            }
            Statement::SetRole(name) => write!(f, "SET ROLE {}", name.as_deref().unwrap_or("NONE")),
            Statement::Set { name, value, .. } => write!(f, "SET {name} = {value}"),
            Statement::Reset(name) => write!(f, "RESET {}", name.as_deref().unwrap_or("ALL")),
            Statement::Show(name) => write!(f, "SHOW {name}"),
            Statement::ShowAll => f.write_str("SHOW ALL"),
            Statement::Begin => f.write_str("BEGIN"),
            Statement::Commit => f.write_str("COMMIT"),
            Statement::Rollback => f.write_str("ROLLBACK"),
            Statement::Discard => f.write_str("DISCARD ALL"),
            Statement::Savepoint(name) => write!(f, "SAVEPOINT {name}"),
            Statement::Release(name) => write!(f, "RELEASE SAVEPOINT {name}"),
            Statement::RollbackTo(name) => write!(f, "ROLLBACK TO SAVEPOINT {name}"),
            Statement::NoOp(tag) => f.write_str(tag),
        }
    }
}

impl std::fmt::Display for Subscribe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SUBSCRIBE TO {}", self.relation)?;
        match self.options.start {
            Start::Latest => {}
            Start::Snapshot(id) => write!(f, " AS OF SNAPSHOT {id}")?,
            Start::Timestamp(ms) => write!(f, " AS OF TIMESTAMP {ms} ms")?,
        }
        Ok(())
    }
}
