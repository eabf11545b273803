//! The catalog of user relations, behind the [`Catalog`] trait.
//!
//! ```text
//!   Session (DDL: CREATE/DROP TABLE|VIEW|SCHEMA) ──► Catalog (trait) ◄── DynamicCatalog (crate::warehouse)
//!                                                        ▲
//!   DataFusion planner ──► DataFusionCatalog (CatalogProvider adapter) ─┘
//!                          + system schemas (pg_catalog, information_schema)
//! ```
//!
//! The session routes every DDL statement to the [`Catalog`]; DataFusion sees
//! the same relations through [`DataFusionCatalog`], which adapts the trait to
//! DataFusion's `CatalogProvider` and adds the system schemas. A new storage
//! backend implements [`Catalog`] and nothing in the front ends changes.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::sync::{Arc, RwLock};

use async_trait::async_trait;
use datafusion::arrow::datatypes::SchemaRef;
use datafusion::catalog::{CatalogProvider, SchemaProvider, TableProvider};
use datafusion::common::{Constraints, DataFusionError};
use datafusion::datasource::TableType;
use datafusion::logical_expr::Expr;

use crate::error::{Error, Result, StatusCode};

pub mod computed;
pub mod pg;

/// Shared handle to a catalog.
pub type CatalogRef = Arc<dyn Catalog>;

/// The schema that unqualified names resolve to.
pub const DEFAULT_SCHEMA: &str = "public";

/// A schema-qualified relation name, already normalised (unquoted identifiers
/// are lower-cased by the SQL planner before they get here).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RelationName {
    /// The schema, e.g. `public`.
    pub schema: String,
    /// The relation within the schema.
    pub name: String,
}

impl std::fmt::Display for RelationName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.schema, self.name)
    }
}

pub use crate::sql::{Procedure, RelationKind, ViewAlteration};

/// What `CREATE MATERIALIZED VIEW` asks the catalog for.
#[derive(Debug, Clone)]
pub struct CreateMaterializedView {
    /// The new view.
    pub name: RelationName,
    /// The defining query, SQL text.
    pub query: String,
    /// Column names: `Some` where the statement names a column (a column
    /// list, or Postgres naming of an unaliased expression).
    pub column_names: Vec<Option<String>>,
    /// `IF NOT EXISTS`.
    pub if_not_exists: bool,
    /// `OR REPLACE`.
    pub or_replace: bool,
    /// `WITH (...)` options, by lower-cased name.
    pub options: std::collections::BTreeMap<String, String>,
}

/// Runs queries no session asks for (the refreshes of materialized views)
/// as the engine runs a session's: MPP or BSP chosen automatically, in a
/// memory pool of its own. Execution implements it (`exec::BatchRunner`);
/// the catalog gets it at [`Catalog::bind`].
#[async_trait]
pub trait BatchQueries: Send + Sync + std::fmt::Debug {
    /// Runs `plan` (optimized in `state`'s context) with at most `limit`
    /// bytes of memory: its rows, and how it runs and why (`bsp: …`).
    ///
    /// # Errors
    /// Planning and execution errors.
    async fn run(
        &self,
        state: datafusion::execution::SessionState,
        plan: datafusion::logical_expr::LogicalPlan,
        limit: Option<usize>,
    ) -> Result<(datafusion::physical_plan::SendableRecordBatchStream, String)>;
}

/// A shared [`BatchQueries`].
pub type BatchQueriesRef = Arc<dyn BatchQueries>;

/// What `CREATE TABLE` asks the catalog for.
#[derive(Debug, Clone)]
pub struct CreateTable {
    /// The new table.
    pub name: RelationName,
    /// Its columns.
    pub schema: SchemaRef,
    /// Primary key and unique constraints as declared.
    pub constraints: Constraints,
    /// `DEFAULT` expressions per column.
    pub column_defaults: Vec<(String, Expr)>,
    /// `IF NOT EXISTS`: an existing table is not an error.
    pub if_not_exists: bool,
    /// `OR REPLACE`: an existing table is replaced.
    pub or_replace: bool,
    /// `WITH (...)` table options, by lower-cased name.
    pub options: std::collections::BTreeMap<String, String>,
}

/// What the system catalogs (`pg_catalog`, `information_schema`) show of a relation.
#[derive(Debug, Clone)]
pub struct RelationInfo {
    /// Table, view or materialized view.
    pub kind: RelationKind,
    /// The columns users see.
    pub schema: SchemaRef,
    /// Positions of the primary key columns in `schema`, in key order (empty: none).
    pub primary_key: Vec<usize>,
    /// The defining query of a view, SQL text.
    pub definition: Option<String>,
    /// `DEFAULT` expressions by column, SQL text.
    pub defaults: Vec<(String, String)>,
    /// The relations a view reads (`pg_depend`).
    pub reads: Vec<RelationName>,
}

/// A point in a table's history.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AsOf {
    /// A snapshot id.
    Snapshot(u64),
    /// The latest snapshot committed at or before this time (ms since the epoch).
    TimestampMillis(i64),
}

/// What happened on a create with `IF NOT EXISTS`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Created {
    /// The relation was created (or replaced).
    Created,
    /// It existed already and `IF NOT EXISTS` was given.
    AlreadyExisted,
}

/// The catalog of user relations: schemas, tables and views of the one
/// database a server serves.
///
/// Implementations must be safe to call concurrently from many sessions.
#[async_trait]
pub trait Catalog: Debug + Send + Sync + 'static {
    /// Names of all user schemas.
    fn schema_names(&self) -> Vec<String>;

    /// Creates a schema.
    ///
    /// # Errors
    /// [`StatusCode::AlreadyExists`] when it exists and `if_not_exists` is false.
    async fn create_schema(&self, name: &str, if_not_exists: bool) -> Result<Created>;

    /// Drops a schema; with `cascade`, its relations too.
    ///
    /// # Errors
    /// [`StatusCode::SchemaNotFound`] unless `if_exists`; [`StatusCode::InvalidArgument`]
    /// when it is not empty and `cascade` is false.
    async fn drop_schema(&self, name: &str, if_exists: bool, cascade: bool) -> Result<()>;

    /// Names of the relations in `schema` (empty when it does not exist).
    fn relation_names(&self, schema: &str) -> Vec<String>;

    /// The kind of a relation, if it exists.
    fn relation_kind(&self, name: &RelationName) -> Option<RelationKind>;

    /// What the system catalogs show of a relation; `None` when it does not
    /// exist or cannot be opened. The default answers from [`Catalog::relation`]'s
    /// kind only, with no key, definition or defaults.
    fn relation_info(&self, name: &RelationName) -> Option<RelationInfo> {
        let _ = name;
        None
    }

    /// The provider that reads (and, for tables, writes) a relation.
    ///
    /// # Errors
    /// Backend failures; a missing relation is `Ok(None)`.
    async fn relation(&self, name: &RelationName) -> Result<Option<Arc<dyn TableProvider>>>;

    /// Creates a table.
    ///
    /// # Errors
    /// [`StatusCode::AlreadyExists`], [`StatusCode::SchemaNotFound`], backend failures.
    async fn create_table(&self, request: CreateTable) -> Result<Created>;

    /// Creates a view from the provider DataFusion planned for it.
    ///
    /// # Errors
    /// [`StatusCode::AlreadyExists`] unless `or_replace`; [`StatusCode::SchemaNotFound`].
    async fn create_view(&self, name: RelationName, view: Arc<dyn TableProvider>, or_replace: bool) -> Result<Created>;

    /// A read-only view of table `name` as of an earlier snapshot (time
    /// travel). The default refuses: only versioned tables can do it.
    ///
    /// # Errors
    /// [`StatusCode::TableNotFound`], [`StatusCode::Unsupported`].
    fn relation_as_of(&self, name: &RelationName, as_of: AsOf) -> Result<Arc<dyn TableProvider>> {
        let _ = as_of;
        Err(Error::unsupported(format!("table {name} has no snapshots to travel to")))
    }

    /// The storage table behind `name`, for `SUBSCRIBE`, and how many of its
    /// columns subscribers see.
    ///
    /// # Errors
    /// Not a Dynamic Table (0A000 by default); a missing relation (42P01).
    fn subscribe_to(&self, name: &RelationName) -> Result<(Arc<streamhouse_storage::Table>, usize)> {
        Err(Error::unsupported(format!("{name} cannot be subscribed to")))
    }

    /// Gives the catalog the engine's SQL context once it exists, for
    /// interpreting stored SQL (column defaults), and how to run batch work
    /// (view refreshes). The default does nothing.
    ///
    /// # Errors
    /// Stored SQL that no longer plans.
    fn bind(&self, _ctx: &datafusion::prelude::SessionContext, _batch: BatchQueriesRef) -> Result<()> {
        Ok(())
    }

    /// Tables this catalog adds to the `sys` schema (the warehouse adds
    /// `sys.views`), by name. The default adds none.
    fn system_tables(&self) -> Vec<(String, Arc<dyn TableProvider>)> {
        vec![]
    }

    /// The roles and grants stored with this catalog; `None` (the default)
    /// for a catalog that stores none, whose engine keeps them in memory.
    fn access(&self) -> Option<Arc<crate::access::Access>> {
        None
    }

    /// Stops background work (view maintenance) and waits for it: nothing
    /// is committed after this returns. The default has none.
    async fn close(&self) {}

    /// Creates a continuous view, fills it from its sources and starts
    /// maintaining it. The default refuses: views need stored tables.
    ///
    /// # Errors
    /// [`StatusCode::AlreadyExists`], [`StatusCode::Unsupported`] for a query
    /// that cannot be maintained incrementally, planning errors.
    async fn create_materialized_view(&self, request: CreateMaterializedView) -> Result<Created> {
        Err(Error::unsupported(format!(
            "materialized view {} needs Dynamic Tables (this catalog keeps tables in memory)",
            request.name
        )))
    }

    /// `ALTER MATERIALIZED VIEW [IF EXISTS] name SUSPEND | RESUME | REFRESH
    /// | SET (…)`: what it did, for a notice (`None`: no such view and
    /// `if_exists`). The default refuses: views need stored tables.
    ///
    /// # Errors
    /// 42P01 for a missing view, 42809 for another kind of relation, 22023
    /// for an unknown option, 0A000 for a mode the query cannot have, and
    /// the refresh's own error for REFRESH.
    async fn alter_materialized_view(
        &self,
        name: &RelationName,
        action: ViewAlteration,
        if_exists: bool,
    ) -> Result<Option<String>> {
        let _ = (action, if_exists);
        Err(Error::unsupported(format!(
            "materialized view {name} needs Dynamic Tables (this catalog keeps tables in memory)"
        )))
    }

    /// `ALTER TABLE | VIEW | MATERIALIZED VIEW name RENAME TO new_name`:
    /// renames a relation within its schema, atomically. `kind` is what the
    /// statement names (`None` for ALTER TABLE, which renames any kind, as
    /// in Postgres). Views that read the relation keep reading it; a
    /// rename that would break one is refused (2BP01). Returns whether
    /// something was renamed.
    ///
    /// # Errors
    /// 42P01 unless `if_exists`, 42809 for a relation of another kind,
    /// 42P07 when the new name is taken, 2BP01 naming the dependents.
    async fn rename_relation(
        &self,
        name: &RelationName,
        kind: Option<RelationKind>,
        new_name: &str,
        if_exists: bool,
    ) -> Result<bool> {
        let _ = (kind, new_name, if_exists);
        Err(Error::unsupported(format!("{name} cannot be renamed in this catalog")))
    }

    /// Drops a relation. Returns whether something was dropped. Relations
    /// that depend on it (materialized views over it) are dropped first
    /// with `cascade`, and are an error without.
    ///
    /// # Errors
    /// [`StatusCode::TableNotFound`] unless `if_exists`;
    /// [`StatusCode::WrongObjectType`] when the relation is of another kind;
    /// [`StatusCode::DependentObjectsStillExist`] (2BP01) naming the dependents.
    async fn drop_relation(
        &self,
        name: &RelationName,
        kind: RelationKind,
        if_exists: bool,
        cascade: bool,
    ) -> Result<bool>;

    /// Adds nullable columns to a table (`ALTER TABLE … ADD COLUMN`); rows
    /// already stored read them as NULL.
    ///
    /// # Errors
    /// [`StatusCode::TableNotFound`], [`StatusCode::DuplicateColumn`];
    /// [`StatusCode::Unsupported`] for catalogs without stored tables (the default).
    async fn add_columns(&self, name: &RelationName, columns: Vec<datafusion::arrow::datatypes::Field>) -> Result<()> {
        let _ = columns;
        Err(Error::unsupported(format!("ALTER TABLE is not supported for {name}: it is not a stored table")))
    }

    /// Renames column `column` of table `name` (`ALTER TABLE … RENAME
    /// COLUMN`); `false` when the table does not exist and `if_exists`.
    ///
    /// # Errors
    /// [`StatusCode::TableNotFound`], [`StatusCode::ColumnNotFound`],
    /// [`StatusCode::DuplicateColumn`], [`StatusCode::DependentObjectsStillExist`]
    /// when views read the table; [`StatusCode::Unsupported`] for catalogs
    /// without stored tables (the default).
    async fn rename_column(&self, name: &RelationName, column: &str, new_name: &str, if_exists: bool) -> Result<bool> {
        let _ = (column, new_name, if_exists);
        Err(Error::unsupported(format!("ALTER TABLE is not supported for {name}: it is not a stored table")))
    }

    /// Runs a maintenance procedure on a table; returns what it did, for the user.
    ///
    /// # Errors
    /// [`StatusCode::TableNotFound`]; [`StatusCode::Unsupported`] for
    /// catalogs without stored tables (the default).
    async fn maintain(&self, name: &RelationName, procedure: Procedure) -> Result<String> {
        let _ = procedure;
        Err(Error::unsupported(format!("table {name} is not stored: it has nothing to compact or expire")))
    }
}

/// Pins the snapshots the scans of a physical plan read, so that the same
/// query planned again (in BSP, after MPP ran out of memory) reads exactly
/// what its first plan read. Stored tables' providers implement it;
/// execution depends on this trait, not on a provider.
pub trait SnapshotPinning: Debug + Send + Sync {
    /// `config` with what makes the next plan read as `plan` did.
    fn pin(
        &self,
        plan: &Arc<dyn datafusion::physical_plan::ExecutionPlan>,
        config: datafusion::prelude::SessionConfig,
    ) -> datafusion::prelude::SessionConfig;
}

/// Errors shared by catalog implementations, so every backend words them alike.
pub mod errors {
    use super::*;

    /// `relation "x" does not exist` (42P01).
    pub fn relation_not_found(name: &RelationName, kind: RelationKind) -> Error {
        Error::new(StatusCode::TableNotFound, format!("{} \"{}\" does not exist", kind.noun(), name))
    }

    /// `schema "x" does not exist` (3F000).
    pub fn schema_not_found(name: &str) -> Error {
        Error::new(StatusCode::SchemaNotFound, format!("schema \"{name}\" does not exist"))
    }

    /// `relation "x" already exists` (42P07).
    pub fn relation_exists(name: &RelationName) -> Error {
        Error::new(StatusCode::AlreadyExists, format!("relation \"{name}\" already exists"))
    }

    /// `schema "x" already exists` (42P07).
    pub fn schema_exists(name: &str) -> Error {
        Error::new(StatusCode::AlreadyExists, format!("schema \"{name}\" already exists"))
    }

    /// Refusal to drop `pg_catalog` or `information_schema` (42501).
    pub fn system_schema(name: &str) -> Error {
        Error::new(
            StatusCode::InsufficientPrivilege,
            format!("cannot drop schema \"{name}\" because it is required by the database system"),
        )
    }

    /// A lock poisoned by a panic elsewhere (a bug).
    pub fn poisoned<T>(_: T) -> Error {
        Error::internal("catalog lock poisoned by an earlier panic")
    }

    /// `"x" is not a table` when DROP TABLE names a view and the like.
    pub fn wrong_kind(name: &RelationName, expected: RelationKind, actual: RelationKind) -> Error {
        Error::new(
            StatusCode::WrongObjectType,
            format!(
                "\"{name}\" is not a {} (it is a {}: use {})",
                expected.noun(),
                actual.noun(),
                actual.drop_command()
            ),
        )
    }
}

/// Schemas that belong to the system and are served by DataFusion providers.
pub const SYSTEM_SCHEMAS: &[&str] = &["pg_catalog", "information_schema", "sys"];

/// Adapts a [`Catalog`] to DataFusion's `CatalogProvider`, adding the system
/// schemas (`pg_catalog`, and `information_schema`, which DataFusion itself
/// layers on top).
#[derive(Debug)]
pub struct DataFusionCatalog {
    catalog: CatalogRef,
    system: RwLock<BTreeMap<String, Arc<dyn SchemaProvider>>>,
}

impl DataFusionCatalog {
    /// Wraps `catalog`.
    pub fn new(catalog: CatalogRef) -> Self {
        Self { catalog, system: RwLock::new(BTreeMap::new()) }
    }
}

impl CatalogProvider for DataFusionCatalog {
    fn schema_names(&self) -> Vec<String> {
        let mut names = self.catalog.schema_names();
        if let Ok(system) = self.system.read() {
            names.extend(system.keys().cloned());
        }
        names
    }

    fn schema(&self, name: &str) -> Option<Arc<dyn SchemaProvider>> {
        if let Some(system) = self.system.read().ok().and_then(|s| s.get(name).cloned()) {
            return Some(system);
        }
        self.catalog.schema_names().iter().any(|s| s == name).then(|| {
            Arc::new(UserSchema { catalog: Arc::clone(&self.catalog), schema: name.to_string() })
                as Arc<dyn SchemaProvider>
        })
    }

    /// Only system schemas are registered this way (by pg_catalog set-up);
    /// user schemas are created through [`Catalog::create_schema`].
    fn register_schema(
        &self,
        name: &str,
        schema: Arc<dyn SchemaProvider>,
    ) -> datafusion::error::Result<Option<Arc<dyn SchemaProvider>>> {
        let mut system = self.system.write().map_err(|_| DataFusionError::Internal("catalog lock poisoned".into()))?;
        Ok(system.insert(name.to_string(), schema))
    }
}

/// One user schema, as DataFusion sees it.
#[derive(Debug)]
struct UserSchema {
    catalog: CatalogRef,
    schema: String,
}

impl UserSchema {
    fn name(&self, table: &str) -> RelationName {
        RelationName { schema: self.schema.clone(), name: table.to_string() }
    }
}

#[async_trait]
impl SchemaProvider for UserSchema {
    fn table_names(&self) -> Vec<String> {
        self.catalog.relation_names(&self.schema)
    }

    async fn table(&self, name: &str) -> datafusion::error::Result<Option<Arc<dyn TableProvider>>> {
        self.catalog.relation(&self.name(name)).await.map_err(|e| DataFusionError::External(Box::new(e)))
    }

    async fn table_type(&self, name: &str) -> datafusion::error::Result<Option<TableType>> {
        Ok(self.catalog.relation_kind(&self.name(name)).map(|k| match k {
            RelationKind::Table => TableType::Base,
            RelationKind::View | RelationKind::MaterializedView => TableType::View,
        }))
    }

    fn register_table(
        &self,
        name: String,
        _table: Arc<dyn TableProvider>,
    ) -> datafusion::error::Result<Option<Arc<dyn TableProvider>>> {
        Err(DataFusionError::External(Box::new(Error::unsupported(format!(
            "cannot register \"{name}\" directly: use CREATE TABLE or CREATE VIEW"
        )))))
    }

    fn table_exist(&self, name: &str) -> bool {
        self.catalog.relation_kind(&self.name(name)).is_some()
    }
}
