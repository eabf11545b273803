//! `pg_catalog` and `information_schema` as streamhouse's catalog states them.
//!
//! datafusion-pg-catalog serves Postgres' static catalogs (`pg_proc`,
//! `pg_operator`, `pg_am` …) and the functions clients call, and we keep
//! those. The relations that describe *our* objects are ours, because the
//! crate derives them from DataFusion's generic view of a catalog, which
//! cannot tell a materialized view from a view, has no primary keys, and
//! has lost `numeric(12,2)` and `varchar(20)`:
//!
//! - `pg_class` (relkinds `r`, `v`, `m`, and `i` for primary key indexes),
//!   `pg_attribute` (with `atttypmod`), `pg_namespace`, `pg_constraint`,
//!   `pg_index`, `pg_attrdef`, `pg_tables`, `pg_views`, `pg_matviews`, and
//!   `pg_type` (the crate's rows, with `typinput`/`typreceive`/… as the
//!   `regproc` oids Postgres has);
//! - all of `information_schema` (`tables`, `columns`, `views`, `schemata`,
//!   `table_constraints`, `key_column_usage`, …) with Postgres' type names.
//!
//! Every table is computed from one [`Snapshot`] of the catalog when it is
//! scanned. Object ids come from [`Oids`]: fixed where Postgres fixes them
//! (`pg_catalog` 11, `public` 2200), otherwise handed out on first sight
//! and stable for the server's lifetime.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use datafusion::arrow::array::{ArrayRef, RecordBatch};
use datafusion::arrow::datatypes::{DataType, Field, SchemaRef};
use datafusion::catalog::{SchemaProvider, TableProvider};
use datafusion::error::Result;
use datafusion::scalar::ScalarValue;

use super::computed::{Computed, ComputedRows};
use super::{CatalogRef, RelationInfo, RelationKind, RelationName};
use crate::types::PgType;

mod functions;
mod information_schema;
mod privileges;
mod roles;
mod tables;

/// Function names by oid, from the static `pg_proc` (set when `pg_type` is built).
static PROC_NAMES: std::sync::OnceLock<HashMap<i32, String>> = std::sync::OnceLock::new();

/// The name of the function with oid `oid` (what a `regproc` value prints).
pub fn proc_name(oid: i32) -> Option<&'static str> {
    PROC_NAMES.get()?.get(&oid).map(String::as_str)
}

/// The owner of built-in objects (Postgres' bootstrap superuser's oid).
const OWNER_OID: i32 = crate::access::BOOTSTRAP_OID as i32;
/// The owner's name.
const OWNER: &str = crate::access::BOOTSTRAP_SUPERUSER;

/// An object the catalogs give an oid: kind (`r`, `i`, `c`, `n`, `d`), schema, name.
type ObjectKey = (char, String, String);

/// Object ids, stable for the server's lifetime.
#[derive(Debug)]
pub(crate) struct Oids {
    assigned: Mutex<Assigned>,
}

/// The oids handed out, both ways, and the next one.
#[derive(Debug)]
struct Assigned {
    next: i32,
    by_key: HashMap<ObjectKey, i32>,
    by_oid: HashMap<i32, ObjectKey>,
}

impl Default for Oids {
    fn default() -> Self {
        Self { assigned: Mutex::new(Assigned { next: 16384, by_key: HashMap::new(), by_oid: HashMap::new() }) }
    }
}

impl Oids {
    /// The oid of a namespace.
    fn namespace(&self, name: &str) -> i32 {
        match name {
            "pg_catalog" => 11,
            "public" => 2200,
            "information_schema" => 13000,
            _ => self.get('n', "", name),
        }
    }

    /// The object an oid was handed out for: kind, schema, name.
    pub fn lookup(&self, oid: i32) -> Option<ObjectKey> {
        let assigned = self.assigned.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        assigned.by_oid.get(&oid).cloned()
    }

    /// The oid of an object of `kind` (`r` relation, `i` index, `c` constraint) in `schema`.
    fn get(&self, kind: char, schema: &str, name: &str) -> i32 {
        let mut assigned = self.assigned.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let key = (kind, schema.to_string(), name.to_string());
        if let Some(oid) = assigned.by_key.get(&key) {
            return *oid;
        }
        let oid = match (kind, schema) {
            ('r', "pg_catalog") => postgres_relation_oid(name),
            _ => None,
        };
        let oid = oid.unwrap_or_else(|| {
            let oid = assigned.next;
            assigned.next += 1;
            oid
        });
        assigned.by_oid.insert(oid, key.clone());
        assigned.by_key.insert(key, oid);
        oid
    }
}

/// The parts of a possibly qualified, possibly quoted name (`s."My T"`),
/// unquoted ones lower-cased, as Postgres' `parse_ident` gives them.
pub(crate) fn split_qualified(name: &str) -> Vec<String> {
    let mut parts = Vec::new();
    let mut chars = name.trim().chars().peekable();
    loop {
        let mut part = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            while let Some(c) = chars.next() {
                if c == '"' {
                    if chars.peek() == Some(&'"') {
                        chars.next();
                        part.push('"');
                        continue;
                    }
                    break;
                }
                part.push(c);
            }
        } else {
            while let Some(&c) = chars.peek() {
                if c == '.' {
                    break;
                }
                part.extend(c.to_lowercase());
                chars.next();
            }
        }
        parts.push(part);
        match chars.next() {
            Some('.') => continue,
            _ => break,
        }
    }
    parts
}

/// The fixed oids Postgres gives its system catalogs, which clients write
/// as `'pg_class'::regclass` and compare with `pg_depend.classid`.
fn postgres_relation_oid(name: &str) -> Option<i32> {
    Some(match name {
        "pg_type" => 1247,
        "pg_attribute" => 1249,
        "pg_proc" => 1255,
        "pg_class" => 1259,
        "pg_authid" => 1260,
        "pg_database" => 1262,
        "pg_tablespace" => 1213,
        "pg_sequence" => 2224,
        "pg_am" => 2601,
        "pg_attrdef" => 2604,
        "pg_constraint" => 2606,
        "pg_depend" => 2608,
        "pg_description" => 2609,
        "pg_index" => 2610,
        "pg_inherits" => 2611,
        "pg_namespace" => 2615,
        "pg_rewrite" => 2618,
        "pg_statistic" => 2619,
        "pg_trigger" => 2620,
        "pg_extension" => 3079,
        "pg_collation" => 3456,
        _ => return None,
    })
}

/// One relation as the system catalogs show it.
#[derive(Debug, Clone)]
pub(crate) struct Relation {
    pub oid: i32,
    pub schema: String,
    pub namespace: i32,
    pub name: String,
    /// `pg_class.relkind`: `r`, `v` or `m`.
    pub relkind: char,
    pub info: RelationInfo,
}

impl Relation {
    /// The primary key's constraint and index name (`t_pkey`), as Postgres names it.
    pub fn key_name(&self) -> Option<String> {
        (!self.info.primary_key.is_empty()).then(|| format!("{}_pkey", self.name))
    }

    /// The primary key's columns, by name.
    pub fn key_columns(&self) -> Vec<&str> {
        self.info.primary_key.iter().map(|&i| self.info.schema.field(i).name().as_str()).collect()
    }

    /// Whether this is one of the system's relations (in `pg_catalog`,
    /// `information_schema` or `sys`).
    pub fn is_system(&self) -> bool {
        super::SYSTEM_SCHEMAS.contains(&self.schema.as_str())
    }
}

/// What the catalogs describe, taken once per scan.
#[derive(Debug, Default)]
pub(crate) struct Snapshot {
    /// Schemas: oid and name.
    pub namespaces: Vec<(i32, String)>,
    pub relations: Vec<Relation>,
}

/// Where snapshots come from: the user catalog, and the system schemas
/// DataFusion serves.
#[derive(Debug)]
pub(crate) struct Source {
    pub catalog: CatalogRef,
    /// Roles, owners and grants.
    pub access: Arc<crate::access::Access>,
    /// The database name (`table_catalog`).
    pub database: String,
    pub oids: Oids,
    /// The system schemas (`pg_catalog`, `sys`), set once they are registered.
    system: Mutex<Vec<(String, Arc<dyn SchemaProvider>)>>,
}

impl Source {
    /// Whether a system schema (`pg_catalog`, `information_schema`, `sys`) has a table `name`.
    pub fn is_system_relation(&self, name: &str) -> bool {
        let system = self.system.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        system.iter().any(|(_, schema)| schema.table_exist(name))
    }

    /// The owner of a relation, and its oid.
    pub fn owner(&self, access: &crate::access::AccessState, relation: &Relation) -> (String, i32) {
        let owner = access.owner(&relation.schema, &relation.name).to_string();
        let oid = access.role(&owner).map_or(OWNER_OID, |r| r.oid as i32);
        (owner, oid)
    }

    /// The user relations only (no system schemas): what functions like
    /// `pg_get_indexdef` need, without waiting.
    pub fn user_snapshot(&self) -> Snapshot {
        let mut snapshot = Snapshot::default();
        let mut schemas = self.catalog.schema_names();
        schemas.sort();
        for schema in schemas {
            let namespace = self.oids.namespace(&schema);
            snapshot.namespaces.push((namespace, schema.clone()));
            let mut names = self.catalog.relation_names(&schema);
            names.sort();
            for name in names {
                let relation = RelationName { schema: schema.clone(), name: name.clone() };
                let Some(info) = self.catalog.relation_info(&relation) else { continue };
                snapshot.relations.push(self.relation(&schema, namespace, name, info));
            }
        }
        snapshot
    }

    /// Everything: user relations, then the system schemas' relations.
    pub async fn snapshot(&self) -> Result<Snapshot> {
        let mut snapshot = self.user_snapshot();
        let system = self.system.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
        for (schema, provider) in system {
            let namespace = self.oids.namespace(&schema);
            snapshot.namespaces.push((namespace, schema.clone()));
            // pg_catalog's are tables in Postgres; ours elsewhere are computed views.
            let kind = if schema == "pg_catalog" { RelationKind::Table } else { RelationKind::View };
            let mut names = provider.table_names();
            names.sort();
            for name in names {
                let Some(table) = provider.table(&name).await? else { continue };
                let info = RelationInfo {
                    kind,
                    schema: table.schema(),
                    primary_key: vec![],
                    definition: None,
                    defaults: vec![],
                    reads: vec![],
                };
                snapshot.relations.push(self.relation(&schema, namespace, name, info));
            }
        }
        Ok(snapshot)
    }

    fn relation(&self, schema: &str, namespace: i32, name: String, info: RelationInfo) -> Relation {
        let relkind = match info.kind {
            RelationKind::Table => 'r',
            RelationKind::View => 'v',
            RelationKind::MaterializedView => 'm',
        };
        Relation { oid: self.oids.get('r', schema, &name), schema: schema.to_string(), namespace, name, relkind, info }
    }

    /// The user relation `schema.name`, if it exists.
    pub fn user_relation_named(&self, schema: &str, name: &str) -> Option<Relation> {
        let relation = RelationName { schema: schema.to_string(), name: name.to_string() };
        let info = self.catalog.relation_info(&relation)?;
        Some(self.relation(schema, self.oids.namespace(schema), name.to_string(), info))
    }

    /// The oid `'name'::regclass` names, looked up as Postgres does: a
    /// qualified name in its schema; an unqualified one in `pg_catalog`,
    /// then in `public`.
    pub fn regclass(&self, name: &str) -> Option<i32> {
        let parts = crate::catalog::pg::split_qualified(name);
        let system_has = |schema: &str, table: &str| {
            let system = self.system.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            system.iter().any(|(s, provider)| s == schema && provider.table_exist(table))
        };
        let (schema, table) = match parts.as_slice() {
            [table] if system_has("pg_catalog", table) => return Some(self.oids.get('r', "pg_catalog", table)),
            [table] => (crate::catalog::DEFAULT_SCHEMA.to_string(), table.clone()),
            [schema, table] => (schema.clone(), table.clone()),
            _ => return None,
        };
        if system_has(&schema, &table) {
            return Some(self.oids.get('r', &schema, &table));
        }
        self.user_relation_named(&schema, &table).map(|r| r.oid)
    }

    /// The relation with oid `oid`, among user relations.
    pub fn user_relation(&self, oid: i32) -> Option<Relation> {
        match self.oids.lookup(oid)? {
            ('r', schema, name) => self.user_relation_named(&schema, &name),
            _ => None,
        }
    }

    /// The user relation whose primary key index or constraint has oid `oid`.
    pub fn keyed_relation(&self, kind: char, oid: i32) -> Option<Relation> {
        let (found, schema, key) = self.oids.lookup(oid)?;
        let relation = self.user_relation_named(&schema, key.strip_suffix("_pkey")?)?;
        (found == kind && relation.key_name().as_deref() == Some(key.as_str())).then_some(relation)
    }

    /// The oid of a relation's primary key index (`i`) or constraint (`c`).
    pub fn key_oid(&self, kind: char, relation: &Relation) -> Option<i32> {
        relation.key_name().map(|key| self.oids.get(kind, &relation.schema, &key))
    }
}

/// A table of the system catalogs, computed from a snapshot when scanned.
#[async_trait]
pub(crate) trait CatalogTable: std::fmt::Debug + Send + Sync + 'static {
    fn schema(&self) -> SchemaRef;
    fn rows(&self, source: &Source, snapshot: &Snapshot, rows: &mut Rows) -> Result<()>;
}

/// A [`CatalogTable`] bound to its source.
#[derive(Debug)]
struct Bound<T> {
    table: T,
    source: Arc<Source>,
}

#[async_trait]
impl<T: CatalogTable> ComputedRows for Bound<T> {
    fn schema(&self) -> SchemaRef {
        self.table.schema()
    }

    async fn rows(&self) -> Result<Vec<RecordBatch>> {
        let snapshot = self.source.snapshot().await?;
        let mut rows = Rows::new(self.table.schema());
        self.table.rows(&self.source, &snapshot, &mut rows)?;
        Ok(vec![rows.finish()?])
    }
}

/// Rows of a catalog table, built value by value; `ScalarValue::Null`
/// becomes a NULL of the column's type.
pub(crate) struct Rows {
    schema: SchemaRef,
    columns: Vec<Vec<ScalarValue>>,
}

impl Rows {
    fn new(schema: SchemaRef) -> Self {
        let columns = vec![Vec::new(); schema.fields().len()];
        Self { schema, columns }
    }

    /// Appends a row: one value per column, in order.
    pub fn push(&mut self, row: Vec<ScalarValue>) -> Result<()> {
        if row.len() != self.columns.len() {
            return Err(datafusion::error::DataFusionError::Internal(format!(
                "catalog row has {} values for {} columns",
                row.len(),
                self.columns.len()
            )));
        }
        for (column, value) in self.columns.iter_mut().zip(row) {
            column.push(value);
        }
        Ok(())
    }

    fn finish(self) -> Result<RecordBatch> {
        let rows = self.columns.first().map_or(0, Vec::len);
        let mut arrays: Vec<ArrayRef> = Vec::with_capacity(self.columns.len());
        for (field, values) in self.schema.fields().iter().zip(self.columns) {
            if values.is_empty() {
                arrays.push(datafusion::arrow::array::new_empty_array(field.data_type()));
                continue;
            }
            let typed_null = ScalarValue::try_from(field.data_type())?;
            let values = values.into_iter().map(|v| if v.is_null() { typed_null.clone() } else { v });
            let array = ScalarValue::iter_to_array(values)?;
            // Literals are Utf8/Int32…; the column may be declared otherwise.
            arrays.push(datafusion::arrow::compute::cast(&array, field.data_type())?);
        }
        let options = datafusion::arrow::array::RecordBatchOptions::new().with_row_count(Some(rows));
        Ok(RecordBatch::try_new_with_options(Arc::clone(&self.schema), arrays, &options)?)
    }
}

/// Value helpers for catalog rows.
pub(crate) mod value {
    use super::*;

    pub fn text(s: impl Into<String>) -> ScalarValue {
        ScalarValue::Utf8(Some(s.into()))
    }
    pub fn opt_text(s: Option<impl Into<String>>) -> ScalarValue {
        ScalarValue::Utf8(s.map(Into::into))
    }
    pub fn char(c: char) -> ScalarValue {
        ScalarValue::Utf8(Some(c.to_string()))
    }
    pub fn int4(v: i32) -> ScalarValue {
        ScalarValue::Int32(Some(v))
    }
    pub fn int2(v: i16) -> ScalarValue {
        ScalarValue::Int16(Some(v))
    }
    pub fn float8(v: f64) -> ScalarValue {
        ScalarValue::Float64(Some(v))
    }
    pub fn boolean(v: bool) -> ScalarValue {
        ScalarValue::Boolean(Some(v))
    }
    pub fn null() -> ScalarValue {
        ScalarValue::Null
    }
    /// An `int2[]` (`conkey`, `indkey`).
    pub fn int2_array(values: impl IntoIterator<Item = i16>) -> ScalarValue {
        let values: Vec<ScalarValue> = values.into_iter().map(int2).collect();
        ScalarValue::List(ScalarValue::new_list_nullable(&values, &DataType::Int16))
    }
}

/// An `int2[]` column.
pub(crate) fn int2_array_field(name: &str) -> Field {
    Field::new(name, DataType::new_list(DataType::Int16, true), true)
}

/// The Postgres type of column `i` of a relation.
pub(crate) fn column_type(relation: &Relation, i: usize) -> PgType {
    PgType::of(relation.info.schema.field(i))
}

/// Replaces the relations of `pg_catalog` that describe our objects, and
/// serves `information_schema`, in `database` of `ctx`.
///
/// # Errors
/// The crate's `pg_catalog` is not registered yet.
pub fn install(
    ctx: &datafusion::prelude::SessionContext,
    catalog: CatalogRef,
    access: Arc<crate::access::Access>,
    database: &str,
) -> Result<RelationOids> {
    let Some(root) = ctx.catalog(database) else {
        return Err(datafusion::error::DataFusionError::Internal(format!("no catalog {database}")));
    };
    let Some(crate_pg_catalog) = root.schema("pg_catalog") else {
        return Err(datafusion::error::DataFusionError::Internal("pg_catalog is not set up".into()));
    };
    let source = Arc::new(Source {
        catalog,
        access,
        database: database.to_string(),
        oids: Oids::default(),
        system: Mutex::new(vec![]),
    });
    let mut ours: HashMap<String, Arc<dyn TableProvider>> = HashMap::new();
    for (name, table) in tables::all().into_iter().chain(roles::all()) {
        ours.insert(name.to_string(), bind(table, &source));
    }
    ours.insert("pg_type".into(), tables::pg_type(&crate_pg_catalog)?);
    let pg_catalog: Arc<dyn SchemaProvider> = Arc::new(Overlay { inner: crate_pg_catalog, ours });
    root.register_schema("pg_catalog", Arc::clone(&pg_catalog))?;

    let mut info: HashMap<String, Arc<dyn TableProvider>> = HashMap::new();
    for (name, table) in information_schema::all() {
        info.insert(name.to_string(), bind(table, &source));
    }
    let information_schema: Arc<dyn SchemaProvider> =
        Arc::new(Overlay { inner: Arc::new(datafusion::catalog::MemorySchemaProvider::new()), ours: info });
    root.register_schema("information_schema", Arc::clone(&information_schema))?;

    let mut system =
        vec![("pg_catalog".to_string(), pg_catalog), ("information_schema".to_string(), information_schema)];
    if let Some(sys) = root.schema("sys") {
        system.push(("sys".to_string(), sys));
    }
    *source.system.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = system;
    functions::register(ctx, &source)?;
    Ok(RelationOids(source))
}

/// The oids the catalogs give relations, for result metadata (the table
/// and column a result column comes from).
#[derive(Debug, Clone)]
pub struct RelationOids(Arc<Source>);

impl RelationOids {
    /// `has_table_privilege` and its siblings for a session of `user`
    /// (`checked`: false for a session with every right).
    pub fn privilege_functions(&self, user: &str, checked: bool) -> Vec<datafusion::logical_expr::ScalarUDF> {
        privileges::functions(&self.0, user, checked)
    }

    /// `pg_class.oid` of relation `name`.
    pub fn relation(&self, name: &crate::catalog::RelationName) -> i32 {
        self.0.oids.get('r', &name.schema, &name.name)
    }
}

fn bind(table: Box<dyn CatalogTableObject>, source: &Arc<Source>) -> Arc<dyn TableProvider> {
    table.bind(Arc::clone(source))
}

/// A boxed [`CatalogTable`] that can be bound to a source.
pub(crate) trait CatalogTableObject {
    fn bind(self: Box<Self>, source: Arc<Source>) -> Arc<dyn TableProvider>;
}

impl<T: CatalogTable> CatalogTableObject for T {
    fn bind(self: Box<Self>, source: Arc<Source>) -> Arc<dyn TableProvider> {
        Arc::new(Computed(Bound { table: *self, source }))
    }
}

/// A schema whose tables are ours where we have them, the inner provider's otherwise.
#[derive(Debug)]
struct Overlay {
    inner: Arc<dyn SchemaProvider>,
    ours: HashMap<String, Arc<dyn TableProvider>>,
}

#[async_trait]
impl SchemaProvider for Overlay {
    fn table_names(&self) -> Vec<String> {
        let mut names = self.inner.table_names();
        names.extend(self.ours.keys().filter(|n| !self.inner.table_exist(n)).cloned());
        names.sort();
        names
    }

    async fn table(&self, name: &str) -> Result<Option<Arc<dyn TableProvider>>> {
        if let Some(table) = self.ours.get(&name.to_ascii_lowercase()) {
            return Ok(Some(Arc::clone(table)));
        }
        self.inner.table(name).await
    }

    fn table_exist(&self, name: &str) -> bool {
        self.ours.contains_key(&name.to_ascii_lowercase()) || self.inner.table_exist(name)
    }
}
