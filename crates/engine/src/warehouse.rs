//! The warehouse: the [`Catalog`] of Dynamic Tables and continuous views
//! stored under one root on object storage, one directory per relation
//! (`<schema>/<table>/`, a view's `<schema>/<view>@<generation>/`), found
//! again by listing the root when the server starts.
//!
//! It sits above the pieces it joins: the Dynamic Table providers
//! ([`crate::dynamic`]) and the view maintainers ([`crate::views`]); the
//! engine and sessions see it only as a [`Catalog`].

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Debug;
use std::sync::{Arc, RwLock};

use async_trait::async_trait;
use datafusion::catalog::TableProvider;
use datafusion::common::{Constraint, DFSchema};
use futures::{StreamExt, TryStreamExt};
use object_store::ObjectStore;
use object_store::path::Path;
use streamhouse_storage as storage;

use crate::catalog::computed::Computed;
use crate::catalog::{
    AsOf, Catalog, CreateMaterializedView, CreateTable, Created, DEFAULT_SCHEMA, Procedure, RelationInfo, RelationKind,
    RelationName, SYSTEM_SCHEMAS, errors,
};
use crate::dynamic::DynamicTable;
use crate::dynamic::system::{SystemKind, SystemTable};
use crate::error::{Error, Result, StatusCode};
use crate::views::{self, MaterializedView};

/// At open, files no snapshot references are removed once this old (ms):
/// younger ones may be a commit in flight of another engine on the same
/// bucket. `CALL sys.remove_orphan_files` takes any margin.
const ORPHAN_MARGIN_AT_OPEN_MS: i64 = 3_600_000;

/// Relations by schema and name.
type Schemas = BTreeMap<String, BTreeMap<String, Relation>>;

#[derive(Debug)]
enum Relation {
    Table(Arc<DynamicTable>),
    /// Views are kept in memory for now; they do not survive a restart.
    View(Arc<dyn TableProvider>),
    MaterializedView(Arc<MaterializedView>),
    /// A table or materialized view that did not open (a corrupt or missing
    /// snapshot or manifest): every use of it is XX001 naming the file,
    /// until an operator rolls it back or drops it. The rest of the
    /// warehouse is served.
    Damaged(Arc<Damaged>),
}

#[derive(Debug)]
struct Damaged {
    kind: RelationKind,
    dir: Path,
    /// Why it did not open (names the file).
    reason: String,
    /// The snapshot ids on disk, to choose a rollback target from.
    snapshots: Vec<u64>,
}

impl Damaged {
    fn error(&self, name: &RelationName) -> Error {
        let repair = match self.kind {
            RelationKind::MaterializedView => format!("drop it (DROP MATERIALIZED VIEW {name}) and create it again"),
            _ => format!(
                "go back to an intact snapshot with CALL sys.rollback_to('{name}', snapshot_id) (later snapshots are \
                 lost; snapshots on disk: {}), or drop it",
                self.snapshots.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ")
            ),
        };
        Error::new(
            StatusCode::DataCorrupted,
            format!("{} {name} is damaged: {}; {repair}", self.kind.noun(), self.reason),
        )
    }
}

impl Relation {
    fn kind(&self) -> RelationKind {
        match self {
            Relation::Table(_) => RelationKind::Table,
            Relation::View(_) => RelationKind::View,
            Relation::MaterializedView(_) => RelationKind::MaterializedView,
            Relation::Damaged(damaged) => damaged.kind,
        }
    }
}

/// The catalog of Dynamic Tables under one warehouse root.
pub struct DynamicCatalog {
    store: Arc<dyn ObjectStore>,
    schemas: Arc<RwLock<Schemas>>,
    /// The engine's SQL context (set by [`Catalog::bind`]), for planning views.
    ctx: std::sync::OnceLock<datafusion::prelude::SessionContext>,
}

impl DynamicCatalog {
    /// CREATE OR REPLACE of view `old`: the new definition gets its own
    /// table, filled and maintained before it takes the name; storing its
    /// definition is the moment of the swap (a crash before it leaves the
    /// old view, after it the new one).
    async fn replace_view(
        &self,
        old: Arc<MaterializedView>,
        request: &CreateMaterializedView,
        plan: views::ViewPlan,
        ctx: datafusion::prelude::SessionContext,
    ) -> Result<Created> {
        let name = &request.name;
        let dependents = self.dependents(name)?;
        if !dependents.is_empty() {
            return Err(Error::new(
                StatusCode::DependentObjectsStillExist,
                format!(
                    "cannot replace materialized view {name} because other objects depend on it: {} (drop them first)",
                    dependents.iter().map(|d| format!("materialized view {d}")).collect::<Vec<_>>().join(", ")
                ),
            ));
        }
        if plan.sources.iter().any(|s| &s.name == name) {
            return Err(Error::invalid(format!("materialized view {name} cannot read itself")));
        }
        let (mut definition, schema, options) = views::define(request, &plan)?;
        definition.generation = old.definition.generation + 1;
        let table_schema = views::table_schema(&definition, schema, options)?;
        let dir = table_dir(&name.schema, &format!("{}@{}", name.name, definition.generation));
        let table = storage::Table::create(Arc::clone(&self.store), dir.clone(), &name.name, table_schema).await?;
        let view = MaterializedView::new(name.clone(), Arc::new(DynamicTable::new(table)), definition, dir.clone());
        let started = async {
            Self::start_view(Arc::clone(&view), ctx).await?;
            let location = views::definition_path(&dir);
            object_store::ObjectStoreExt::put(&self.store, &location, storage::frame::encode(&view.definition)?.into())
                .await
                .map_err(|e| Error::new(StatusCode::Io, format!("cannot store materialized view {name}: {e}")))?;
            Ok::<_, Error>(())
        };
        if let Err(e) = started.await {
            view.stop().await;
            view.table().close().await;
            let _ = remove_dir(&self.store, &dir).await;
            return Err(e);
        }
        {
            let mut schemas = self.schemas.write().map_err(errors::poisoned)?;
            let schema = schemas.get_mut(&name.schema).ok_or_else(|| errors::schema_not_found(&name.schema))?;
            schema.insert(name.name.clone(), Relation::MaterializedView(Arc::clone(&view)));
        }
        old.stop().await;
        old.table().close().await;
        remove_dir(&self.store, &old.dir).await?;
        Ok(Created::Created)
    }
}

impl DynamicCatalog {
    /// Every materialized view, now.
    pub fn materialized_views(&self) -> Vec<Arc<MaterializedView>> {
        materialized_views(&self.schemas)
    }
}

impl Debug for DynamicCatalog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DynamicCatalog").field("store", &self.store).finish_non_exhaustive()
    }
}

impl DynamicCatalog {
    /// The table `name`; an error naming what only tables can be when it is a view.
    fn stored_table(&self, name: &RelationName, only_tables_are: &str) -> Result<Arc<DynamicTable>> {
        let schemas = self.schemas.read().map_err(errors::poisoned)?;
        match schemas.get(&name.schema).and_then(|s| s.get(&name.name)) {
            Some(Relation::Table(t)) => Ok(Arc::clone(t)),
            Some(Relation::Damaged(damaged)) => Err(damaged.error(name)),
            Some(other) => Err(Error::new(
                StatusCode::WrongObjectType,
                format!("{name} is a {}: only tables are {only_tables_are}", other.kind().noun()),
            )),
            None => Err(errors::relation_not_found(name, RelationKind::Table)),
        }
    }

    /// `CALL sys.rollback_to`: makes snapshot `snapshot` of table `name`
    /// (damaged or not) the latest, deleting later ones and their files.
    /// Refused while materialized views read the table: they have seen the
    /// snapshots that go, and would miss the new ones that reuse their ids.
    async fn rollback_to(&self, name: &RelationName, snapshot: u64) -> Result<String> {
        let (current, dir) = {
            let schemas = self.schemas.read().map_err(errors::poisoned)?;
            match schemas.get(&name.schema).and_then(|s| s.get(&name.name)) {
                Some(Relation::Table(t)) => (Some(Arc::clone(&t.table)), table_dir(&name.schema, &name.name)),
                Some(Relation::Damaged(d)) if d.kind == RelationKind::Table => (None, d.dir.clone()),
                Some(other) => {
                    return Err(Error::new(
                        StatusCode::WrongObjectType,
                        format!(
                            "{name} is a {}: only tables can be rolled back (drop and recreate a view)",
                            other.kind().noun()
                        ),
                    ));
                }
                None => return Err(errors::relation_not_found(name, RelationKind::Table)),
            }
        };
        let dependents = self.dependents(name)?;
        if !dependents.is_empty() {
            let names: Vec<String> = dependents.iter().map(ToString::to_string).collect();
            return Err(Error::new(
                StatusCode::DependentObjectsStillExist,
                format!(
                    "cannot roll back {name}: materialized views {} read it; drop them, roll back, and create them again",
                    names.join(", ")
                ),
            ));
        }
        if let Some(table) = &current {
            // No commit may land while the history is cut.
            table.close().await;
        }
        let result = storage::Table::rollback_to(Arc::clone(&self.store), dir.clone(), &name.name, snapshot)
            .await
            .map_err(|e| match e {
                storage::Error::NotFound { what } => Error::new(
                    StatusCode::InvalidParameterValue,
                    format!("{what}: choose a retained snapshot (\"{}$snapshots\" lists them)", name.name),
                ),
                other => Error::from(other),
            });
        let (relation, reopened) = match storage::Table::open(Arc::clone(&self.store), dir.clone(), &name.name).await {
            Ok(table) => {
                let table = Arc::new(table);
                (Relation::Table(Arc::new(DynamicTable::shared(Arc::clone(&table)))), Ok(table))
            }
            Err(e) => {
                let e = Error::from(e);
                let reason = e.message().to_string();
                let metas: Vec<_> = self.store.list(Some(&dir)).try_collect().await.unwrap_or_default();
                let snapshots = snapshot_ids(&metas, &dir);
                (Relation::Damaged(Arc::new(Damaged { kind: RelationKind::Table, dir, reason, snapshots })), Err(e))
            }
        };
        if let Some(schema) = self.schemas.write().map_err(errors::poisoned)?.get_mut(&name.schema) {
            schema.insert(name.name.clone(), relation);
        }
        let removed = result?;
        let table = reopened?;
        let orphans = table.remove_orphan_files(crate::now_ms()).await?;
        Ok(format!(
            "rolled {name} back to snapshot {snapshot}: removed {} later snapshots and {} files",
            removed.len(),
            orphans.len()
        ))
    }

    /// Materialized views that read `name`.
    fn dependents(&self, name: &RelationName) -> Result<Vec<RelationName>> {
        let schemas = self.schemas.read().map_err(errors::poisoned)?;
        let wanted = name.to_string();
        let mut dependents: Vec<RelationName> = schemas
            .values()
            .flat_map(|s| s.values())
            .filter_map(|r| match r {
                Relation::MaterializedView(v) if v.definition.sources.contains(&wanted) => Some(v.name.clone()),
                _ => None,
            })
            .collect();
        dependents.sort_by_key(ToString::to_string);
        Ok(dependents)
    }

    fn view_context(&self) -> Result<datafusion::prelude::SessionContext> {
        self.ctx.get().cloned().ok_or_else(|| Error::internal("the catalog is not bound to an engine yet"))
    }

    /// Plans a view's query and starts maintaining it: from its recorded
    /// positions, or after a backfill when it has none (a new view, or one
    /// whose backfill a crash interrupted).
    async fn start_view(view: Arc<MaterializedView>, ctx: datafusion::prelude::SessionContext) -> Result<()> {
        let plan = views::ViewPlan::analyze(views::plan_query(&ctx, &view.definition.query).await?)?;
        view.set_sources(plan.sources.clone());
        let maintainer = views::maintain::ViewMaintainer::new(Arc::clone(&view), plan, ctx)?;
        let positions = match maintainer.recorded_positions()? {
            Some(positions) => positions,
            None => maintainer.backfill().await?,
        };
        view.set_task(tokio::spawn(maintainer.run(positions, view.stop_token())));
        Ok(())
    }

    /// Opens the warehouse in `store`, finding every table in it.
    ///
    /// # Errors
    /// Storage failures and damaged table metadata.
    pub async fn open(store: Arc<dyn ObjectStore>) -> Result<Self> {
        let metas: Vec<_> = store
            .list(None)
            .try_collect()
            .await
            .map_err(|e| Error::new(StatusCode::Io, format!("cannot list the warehouse: {e}")))?;
        // <schema>/<table>/schema/schema-<id> marks a table; <schema>/.schema marks a schema;
        // <schema>/<table>/view/definition marks a table that holds a materialized view.
        let mut tables = BTreeSet::new();
        let mut views = BTreeSet::new();
        let mut schema_names: BTreeSet<String> = [DEFAULT_SCHEMA.to_string()].into();
        for meta in &metas {
            let owned: Vec<String> = meta.location.parts().map(|p| p.as_ref().to_string()).collect();
            let parts: Vec<&str> = owned.iter().map(String::as_str).collect();
            match parts.as_slice() {
                [schema, ".schema"] => {
                    schema_names.insert(schema.to_string());
                }
                [schema, table, "schema", file] if file.starts_with("schema-") => {
                    tables.insert((schema.to_string(), table.to_string()));
                }
                [schema, table, "view", "definition"] => {
                    views.insert((schema.to_string(), table.to_string()));
                }
                _ => {}
            }
        }
        let mut schemas: BTreeMap<String, BTreeMap<String, Relation>> =
            schema_names.into_iter().map(|s| (s, BTreeMap::new())).collect();
        // A view replaced by CREATE OR REPLACE lives in "<name>@<generation>": the
        // newest generation with a definition wins; older ones and replacements
        // that crashed before storing their definition are removed.
        let generation_of = |dir: &str| -> (String, u64) {
            match dir.rsplit_once('@') {
                Some((name, generation)) if generation.parse::<u64>().is_ok() => {
                    (name.to_string(), generation.parse().unwrap_or(0))
                }
                _ => (dir.to_string(), 0),
            }
        };
        let mut newest: BTreeMap<(String, String), u64> = BTreeMap::new();
        for (schema, dir) in &views {
            let (name, generation) = generation_of(dir);
            let entry = newest.entry((schema.clone(), name)).or_insert(generation);
            *entry = (*entry).max(generation);
        }
        for (schema, dir) in tables {
            let (name, generation) = generation_of(&dir);
            let is_view = views.contains(&(schema.clone(), dir.clone()));
            let current = newest.get(&(schema.clone(), name.clone())) == Some(&generation);
            if (is_view && !current) || (!is_view && generation > 0) {
                remove_dir(&store, &table_dir(&schema, &dir)).await?;
                continue;
            }
            let relation = match open_relation(&store, &schema, &dir, &name, is_view).await {
                Ok(relation) => relation,
                Err(e) => {
                    let kind = if is_view { RelationKind::MaterializedView } else { RelationKind::Table };
                    tracing::error!(relation = %format!("{schema}.{name}"), error = %e.message(), "damaged: not served");
                    let reason = e.message().to_string();
                    let dir = table_dir(&schema, &dir);
                    let snapshots = snapshot_ids(&metas, &dir);
                    Relation::Damaged(Arc::new(Damaged { kind, dir, reason, snapshots }))
                }
            };
            schemas.entry(schema).or_default().insert(name, relation);
        }
        // What crashes left behind: cleaned in the background, sparing files
        // young enough to belong to another engine's commit in flight.
        for relation in schemas.values().flat_map(BTreeMap::values) {
            let table = match relation {
                Relation::Table(t) => Arc::clone(&t.table),
                Relation::MaterializedView(v) => Arc::clone(v.table()),
                _ => continue,
            };
            tokio::spawn(async move {
                if let Err(e) = table.remove_orphan_files(crate::now_ms() - ORPHAN_MARGIN_AT_OPEN_MS).await {
                    tracing::warn!(table = table.name(), error = %e, "orphan file cleanup failed");
                }
            });
        }
        Ok(Self { store, schemas: Arc::new(RwLock::new(schemas)), ctx: std::sync::OnceLock::new() })
    }
}

/// Opens the table, or the materialized view, stored in `<schema>/<dir>`.
async fn open_relation(
    store: &Arc<dyn ObjectStore>,
    schema: &str,
    dir: &str,
    name: &str,
    is_view: bool,
) -> Result<Relation> {
    let table = storage::Table::open(Arc::clone(store), table_dir(schema, dir), name).await?;
    let table = Arc::new(DynamicTable::new(table));
    if !is_view {
        return Ok(Relation::Table(table));
    }
    let location = views::definition_path(&table_dir(schema, dir));
    let bytes = object_store::ObjectStoreExt::get(store, &location)
        .await
        .map_err(|e| Error::new(StatusCode::DataCorrupted, format!("cannot read {location}: {e}")))?
        .bytes()
        .await
        .map_err(|e| Error::new(StatusCode::Io, format!("cannot read {location}: {e}")))?;
    let definition: views::ViewDefinition = storage::frame::decode(location.as_ref(), &bytes)?;
    let view_name = RelationName { schema: schema.to_string(), name: name.to_string() };
    Ok(Relation::MaterializedView(MaterializedView::new(view_name, table, definition, table_dir(schema, dir))))
}

/// `("t", Changelog)` for `"t$changelog"`.
fn system_table_name(name: &str) -> Option<(&str, SystemKind)> {
    let (base, suffix) = name.rsplit_once('$')?;
    SystemKind::parse(suffix).map(|kind| (base, kind))
}

/// The ids of the `snapshot/snapshot-<id>` files under `dir` among `metas`, in order.
fn snapshot_ids(metas: &[object_store::ObjectMeta], dir: &Path) -> Vec<u64> {
    let folder = dir.clone().join("snapshot");
    let mut ids: Vec<u64> = metas
        .iter()
        .filter(|m| {
            m.location.prefix_match(&folder).is_some_and(|mut rest| rest.next().is_some() && rest.next().is_none())
        })
        .filter_map(|m| m.location.filename()?.strip_prefix("snapshot-")?.parse().ok())
        .collect();
    ids.sort_unstable();
    ids
}

fn table_dir(schema: &str, table: &str) -> Path {
    Path::from(schema).join(table)
}

/// Deletes every file under `dir`.
async fn remove_dir(store: &Arc<dyn ObjectStore>, dir: &Path) -> Result<()> {
    let paths = store.list(Some(dir)).map_ok(|m| m.location).boxed();
    store
        .delete_stream(paths)
        .try_collect::<Vec<_>>()
        .await
        .map_err(|e| Error::new(StatusCode::Io, format!("cannot remove {dir}: {e}")))?;
    Ok(())
}

#[async_trait]
impl Catalog for DynamicCatalog {
    fn schema_names(&self) -> Vec<String> {
        self.schemas.read().map(|s| s.keys().cloned().collect()).unwrap_or_default()
    }

    async fn create_schema(&self, name: &str, if_not_exists: bool) -> Result<Created> {
        let exists =
            self.schemas.read().map_err(errors::poisoned)?.contains_key(name) || SYSTEM_SCHEMAS.contains(&name);
        if exists {
            if if_not_exists {
                return Ok(Created::AlreadyExisted);
            }
            return Err(errors::schema_exists(name));
        }
        let marker = Path::from(name).join(".schema");
        object_store::ObjectStoreExt::put(&self.store, &marker, bytes::Bytes::new().into())
            .await
            .map_err(|e| Error::new(StatusCode::Io, format!("cannot create schema {name}: {e}")))?;
        self.schemas.write().map_err(errors::poisoned)?.entry(name.to_string()).or_default();
        Ok(Created::Created)
    }

    async fn drop_schema(&self, name: &str, if_exists: bool, cascade: bool) -> Result<()> {
        if SYSTEM_SCHEMAS.contains(&name) {
            return Err(errors::system_schema(name));
        }
        let relations: Vec<(String, RelationKind)> = {
            let schemas = self.schemas.read().map_err(errors::poisoned)?;
            match schemas.get(name) {
                None if if_exists => return Ok(()),
                None => return Err(errors::schema_not_found(name)),
                Some(relations) => relations.iter().map(|(n, r)| (n.clone(), r.kind())).collect(),
            }
        };
        if !relations.is_empty() && !cascade {
            return Err(Error::new(
                StatusCode::DependentObjectsStillExist,
                format!(
                    "cannot drop schema \"{name}\" because it contains {} relation(s): {} (use DROP SCHEMA … CASCADE)",
                    relations.len(),
                    relations.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>().join(", ")
                ),
            ));
        }
        for (relation, kind) in relations {
            self.drop_relation(&RelationName { schema: name.to_string(), name: relation }, kind, true, true).await?;
        }
        let marker = Path::from(name).join(".schema");
        match object_store::ObjectStoreExt::delete(&self.store, &marker).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
            Err(e) => return Err(Error::new(StatusCode::Io, format!("cannot drop schema {name}: {e}"))),
        }
        self.schemas.write().map_err(errors::poisoned)?.remove(name);
        Ok(())
    }

    fn relation_names(&self, schema: &str) -> Vec<String> {
        self.schemas.read().ok().and_then(|s| s.get(schema).map(|r| r.keys().cloned().collect())).unwrap_or_default()
    }

    fn relation_info(&self, name: &RelationName) -> Option<RelationInfo> {
        let schemas = self.schemas.read().ok()?;
        Some(match schemas.get(&name.schema)?.get(&name.name)? {
            Relation::Table(t) => RelationInfo {
                kind: RelationKind::Table,
                schema: Arc::clone(&t.schema),
                primary_key: t.primary_key().to_vec(),
                definition: None,
                defaults: t.stored_defaults.clone(),
            },
            Relation::View(v) => RelationInfo {
                kind: RelationKind::View,
                schema: v.schema(),
                primary_key: vec![],
                definition: v.get_table_definition().map(str::to_string),
                defaults: vec![],
            },
            Relation::MaterializedView(v) => RelationInfo {
                kind: RelationKind::MaterializedView,
                schema: v.schema(),
                primary_key: vec![],
                definition: Some(v.definition.query.clone()),
                defaults: vec![],
            },
            Relation::Damaged(_) => return None,
        })
    }

    fn relation_kind(&self, name: &RelationName) -> Option<RelationKind> {
        let schemas = self.schemas.read().ok()?;
        if let Some((base, _)) = system_table_name(&name.name) {
            return matches!(schemas.get(&name.schema)?.get(base)?, Relation::Table(_)).then_some(RelationKind::View);
        }
        schemas.get(&name.schema)?.get(&name.name).map(Relation::kind)
    }

    async fn relation(&self, name: &RelationName) -> Result<Option<Arc<dyn TableProvider>>> {
        if let Some((base, kind)) = system_table_name(&name.name) {
            let schemas = self.schemas.read().map_err(errors::poisoned)?;
            return Ok(match schemas.get(&name.schema).and_then(|s| s.get(base)) {
                Some(Relation::Table(t)) => {
                    Some(Arc::new(Computed(SystemTable::new(Arc::clone(&t.table), &t.schema, kind)))
                        as Arc<dyn TableProvider>)
                }
                Some(Relation::Damaged(damaged)) => return Err(damaged.error(name)),
                _ => None,
            });
        }
        let schemas = self.schemas.read().map_err(errors::poisoned)?;
        Ok(match schemas.get(&name.schema).and_then(|s| s.get(&name.name)) {
            None => None,
            Some(Relation::Table(t)) => Some(Arc::clone(t) as Arc<dyn TableProvider>),
            Some(Relation::View(v)) => Some(Arc::clone(v)),
            Some(Relation::MaterializedView(v)) => Some(Arc::clone(v) as Arc<dyn TableProvider>),
            Some(Relation::Damaged(damaged)) => return Err(damaged.error(name)),
        })
    }

    async fn create_table(&self, request: CreateTable) -> Result<Created> {
        let name = &request.name;
        if name.name.contains('@') {
            return Err(Error::invalid(format!("relation name \"{}\" may not contain '@'", name.name)));
        }
        {
            let schemas = self.schemas.read().map_err(errors::poisoned)?;
            let schema = schemas.get(&name.schema).ok_or_else(|| errors::schema_not_found(&name.schema))?;
            if schema.contains_key(&name.name) {
                if request.if_not_exists {
                    return Ok(Created::AlreadyExisted);
                }
                return Err(errors::relation_exists(name));
            }
        }
        if request.or_replace {
            return Err(Error::unsupported("CREATE OR REPLACE TABLE is not supported for Dynamic Tables"));
        }
        let mut defaults_sql = Vec::with_capacity(request.column_defaults.len());
        for (column, expr) in &request.column_defaults {
            let sql = datafusion::sql::unparser::expr_to_sql(expr)
                .map_err(|e| Error::unsupported(format!("DEFAULT for column \"{column}\" cannot be stored: {e}")))?;
            defaults_sql.push((column.clone(), sql.to_string()));
        }
        let key: Vec<String> = request
            .constraints
            .iter()
            .flat_map(|c| match c {
                Constraint::PrimaryKey(columns) => {
                    columns.iter().map(|&i| request.schema.field(i).name().clone()).collect()
                }
                Constraint::Unique(_) => vec![],
            })
            .collect();
        let key_refs: Vec<&str> = key.iter().map(String::as_str).collect();
        let options = storage::TableOptions::parse(&request.options)?;
        let mut schema = storage::TableSchema::new(0, Arc::clone(&request.schema), &key_refs, options)?;
        schema.column_defaults = defaults_sql;
        let table =
            storage::Table::create(Arc::clone(&self.store), table_dir(&name.schema, &name.name), &name.name, schema)
                .await?;
        let table = Arc::new(DynamicTable::new(table));
        table.set_defaults(request.column_defaults.into_iter().collect());
        let mut schemas = self.schemas.write().map_err(errors::poisoned)?;
        let schema = schemas.get_mut(&name.schema).ok_or_else(|| errors::schema_not_found(&name.schema))?;
        schema.insert(name.name.clone(), Relation::Table(table));
        Ok(Created::Created)
    }

    fn bind(&self, ctx: &datafusion::prelude::SessionContext) -> Result<()> {
        let schemas = self.schemas.read().map_err(errors::poisoned)?;
        for relation in schemas.values().flat_map(|s| s.values()) {
            if let Relation::Table(table) = relation {
                let df_schema = DFSchema::try_from(Arc::clone(&table.schema))?;
                let mut defaults = std::collections::HashMap::new();
                for (column, sql) in &table.stored_defaults {
                    let expr = ctx.parse_sql_expr(sql, &df_schema).map_err(|e| {
                        Error::internal(format!("stored DEFAULT of {}.{column} does not plan: {e}", table.table.name()))
                    })?;
                    defaults.insert(column.clone(), expr);
                }
                table.set_defaults(defaults);
            }
        }
        if self.ctx.set(ctx.clone()).is_err() {
            return Ok(());
        }
        let views: Vec<Arc<MaterializedView>> = schemas
            .values()
            .flat_map(|s| s.values())
            .filter_map(|r| match r {
                Relation::MaterializedView(v) => Some(Arc::clone(v)),
                _ => None,
            })
            .collect();
        if views.is_empty() {
            return Ok(());
        }
        let runtime = tokio::runtime::Handle::try_current()
            .map_err(|_| Error::internal("materialized views need a tokio runtime to be maintained"))?;
        for view in views {
            let ctx = ctx.clone();
            runtime.spawn(async move {
                if let Err(e) = Self::start_view(Arc::clone(&view), ctx).await {
                    tracing::error!(view = %view.name, error = %e, "cannot maintain materialized view");
                    view.progress.send_modify(|p| p.error = Some(e.message().to_string()));
                }
            });
        }
        Ok(())
    }

    fn relation_as_of(&self, name: &RelationName, as_of: AsOf) -> Result<Arc<dyn TableProvider>> {
        let schemas = self.schemas.read().map_err(errors::poisoned)?;
        match schemas.get(&name.schema).and_then(|s| s.get(&name.name)) {
            Some(Relation::Table(t)) => Ok(Arc::new(crate::dynamic::system::SnapshotTable::new(Arc::clone(t), as_of))),
            Some(Relation::MaterializedView(v)) => {
                Ok(Arc::new(crate::dynamic::system::SnapshotTable::new(v.visible_table(), as_of)))
            }
            Some(Relation::View(_)) => Err(Error::unsupported(format!(
                "{name} is a view: only tables and materialized views can be read as of a snapshot"
            ))),
            Some(Relation::Damaged(damaged)) => Err(damaged.error(name)),
            None => Err(errors::relation_not_found(name, RelationKind::Table)),
        }
    }

    fn subscribe_to(&self, name: &RelationName) -> Result<(Arc<storage::Table>, usize)> {
        {
            let schemas = self.schemas.read().map_err(errors::poisoned)?;
            if let Some(Relation::MaterializedView(v)) = schemas.get(&name.schema).and_then(|s| s.get(&name.name)) {
                return Ok((Arc::clone(v.table()), v.visible_columns()));
            }
        }
        let table = self.stored_table(name, "subscribable (and materialized views)")?;
        Ok((Arc::clone(&table.table), table.schema.fields().len()))
    }

    async fn create_view(&self, name: RelationName, view: Arc<dyn TableProvider>, or_replace: bool) -> Result<Created> {
        let mut schemas = self.schemas.write().map_err(errors::poisoned)?;
        let schema = schemas.get_mut(&name.schema).ok_or_else(|| errors::schema_not_found(&name.schema))?;
        match schema.get(&name.name) {
            Some(Relation::Table(_) | Relation::MaterializedView(_) | Relation::Damaged(_)) => {
                return Err(errors::relation_exists(&name));
            }
            Some(Relation::View(_)) if !or_replace => return Err(errors::relation_exists(&name)),
            _ => {}
        }
        schema.insert(name.name.clone(), Relation::View(view));
        Ok(Created::Created)
    }

    async fn add_columns(&self, name: &RelationName, columns: Vec<datafusion::arrow::datatypes::Field>) -> Result<()> {
        let old = self.stored_table(name, "altered")?;
        for column in &columns {
            if old.schema.field_with_name(column.name()).is_ok() {
                return Err(Error::new(
                    StatusCode::DuplicateColumn,
                    format!("column \"{}\" of relation \"{}\" already exists", column.name(), name.name),
                ));
            }
        }
        old.table.add_columns(columns).await?;
        let new = Arc::new(DynamicTable::shared(Arc::clone(&old.table)));
        new.set_defaults(old.defaults.get().cloned().unwrap_or_default());
        let mut schemas = self.schemas.write().map_err(errors::poisoned)?;
        if let Some(relation @ Relation::Table(_)) = schemas.get_mut(&name.schema).and_then(|s| s.get_mut(&name.name)) {
            *relation = Relation::Table(new);
        }
        Ok(())
    }

    async fn maintain(&self, name: &RelationName, procedure: Procedure) -> Result<String> {
        if let Procedure::RollbackTo(snapshot) = procedure {
            return self.rollback_to(name, snapshot).await;
        }
        let table = Arc::clone(&self.stored_table(name, "compacted, expired and cleaned up")?.table);
        match procedure {
            Procedure::Compact => {
                let before = table.sorted_runs().len();
                let snapshot = table.compact(true).await?;
                Ok(match snapshot {
                    Some(s) => format!("compacted {before} sorted runs of {name} into 1 (snapshot {})", s.id),
                    None => format!("{name} is already compacted"),
                })
            }
            Procedure::ExpireSnapshots => {
                let expired = table.expire(crate::now_ms(), None).await?;
                Ok(format!("expired {expired} snapshots of {name}"))
            }
            Procedure::RemoveOrphanFiles(cutoff) => {
                let removed = table.remove_orphan_files(cutoff.at(crate::now_ms())).await?;
                Ok(format!("removed {} orphan files of {name}", removed.len()))
            }
            Procedure::RollbackTo(_) => Err(Error::internal("rollback handled above")),
        }
    }

    fn system_tables(&self) -> Vec<(String, Arc<dyn TableProvider>)> {
        let schemas = Arc::clone(&self.schemas);
        let views = views::system::views_table(Arc::new(move || materialized_views(&schemas)));
        vec![("views".to_string(), views)]
    }

    async fn close(&self) {
        for view in materialized_views(&self.schemas) {
            view.stop().await;
        }
    }

    async fn create_materialized_view(&self, request: CreateMaterializedView) -> Result<Created> {
        let ctx = self.view_context()?;
        let name = request.name.clone();
        if name.name.contains('@') {
            return Err(Error::invalid(format!("relation name \"{}\" may not contain '@'", name.name)));
        }
        let replaced = {
            let schemas = self.schemas.read().map_err(errors::poisoned)?;
            let schema = schemas.get(&name.schema).ok_or_else(|| errors::schema_not_found(&name.schema))?;
            match schema.get(&name.name) {
                None => None,
                Some(_) if request.if_not_exists => return Ok(Created::AlreadyExisted),
                Some(_) if !request.or_replace => return Err(errors::relation_exists(&name)),
                Some(Relation::MaterializedView(old)) => Some(Arc::clone(old)),
                Some(other) => return Err(errors::wrong_kind(&name, RelationKind::MaterializedView, other.kind())),
            }
        };
        let plan = views::ViewPlan::analyze(views::plan_query(&ctx, &request.query).await?)?;
        if let Some(old) = replaced {
            return self.replace_view(old, &request, plan, ctx).await;
        }
        let (definition, schema, options) = views::define(&request, &plan)?;
        let table_schema = views::table_schema(&definition, schema, options)?;
        let dir = table_dir(&name.schema, &name.name);
        // The definition first: a crash before the table exists leaves a file no listing picks up.
        let location = views::definition_path(&dir);
        object_store::ObjectStoreExt::put(&self.store, &location, storage::frame::encode(&definition)?.into())
            .await
            .map_err(|e| Error::new(StatusCode::Io, format!("cannot store materialized view {name}: {e}")))?;
        let table = storage::Table::create(Arc::clone(&self.store), dir.clone(), &name.name, table_schema).await?;
        let view = MaterializedView::new(name.clone(), Arc::new(DynamicTable::new(table)), definition, dir);
        {
            let mut schemas = self.schemas.write().map_err(errors::poisoned)?;
            let schema = schemas.get_mut(&name.schema).ok_or_else(|| errors::schema_not_found(&name.schema))?;
            if schema.contains_key(&name.name) {
                return Err(errors::relation_exists(&name));
            }
            schema.insert(name.name.clone(), Relation::MaterializedView(Arc::clone(&view)));
        }
        if let Err(e) = Self::start_view(Arc::clone(&view), ctx).await {
            // The statement failed as a whole: leave nothing behind.
            let _ = self.drop_relation(&name, RelationKind::MaterializedView, true, true).await;
            return Err(e);
        }
        Ok(Created::Created)
    }

    async fn drop_relation(
        &self,
        name: &RelationName,
        kind: RelationKind,
        if_exists: bool,
        cascade: bool,
    ) -> Result<bool> {
        {
            let schemas = self.schemas.read().map_err(errors::poisoned)?;
            let Some(schema) = schemas.get(&name.schema) else {
                return if if_exists { Ok(false) } else { Err(errors::relation_not_found(name, kind)) };
            };
            match schema.get(&name.name) {
                None if if_exists => return Ok(false),
                None => return Err(errors::relation_not_found(name, kind)),
                Some(r) if r.kind() != kind => return Err(errors::wrong_kind(name, kind, r.kind())),
                Some(_) => {}
            }
        }
        let dependents = self.dependents(name)?;
        if !dependents.is_empty() {
            if !cascade {
                // As Postgres: every object that would go, and what it depends on.
                let mut chain: Vec<(RelationName, RelationName)> =
                    dependents.iter().map(|d| (d.clone(), name.clone())).collect();
                let mut next = 0;
                while next < chain.len() {
                    let reader = chain[next].0.clone();
                    for further in self.dependents(&reader)? {
                        if !chain.iter().any(|(d, _)| *d == further) {
                            chain.push((further, reader.clone()));
                        }
                    }
                    next += 1;
                }
                return Err(Error::new(
                    StatusCode::DependentObjectsStillExist,
                    format!(
                        "cannot drop {} {name} because other objects depend on it: {} (use {} … CASCADE to drop them too)",
                        kind.noun(),
                        chain
                            .iter()
                            .map(|(d, on)| format!("materialized view {d} depends on {on}"))
                            .collect::<Vec<_>>()
                            .join(", "),
                        kind.drop_command()
                    ),
                ));
            }
            for dependent in dependents {
                Box::pin(self.drop_relation(&dependent, RelationKind::MaterializedView, true, true)).await?;
            }
        }
        let removed = {
            let mut schemas = self.schemas.write().map_err(errors::poisoned)?;
            schemas.get_mut(&name.schema).and_then(|s| s.remove(&name.name))
        };
        let (table, dir) = match removed {
            None => return Ok(false),
            Some(Relation::View(_)) => return Ok(true),
            Some(Relation::Damaged(damaged)) => {
                remove_dir(&self.store, &damaged.dir).await?;
                return Ok(true);
            }
            Some(Relation::Table(table)) => (Arc::clone(&table.table), table_dir(&name.schema, &name.name)),
            Some(Relation::MaterializedView(view)) => {
                view.stop().await;
                (Arc::clone(view.table()), view.dir.clone())
            }
        };
        // No commit (a background compaction, a write in flight) may land after this.
        table.close().await;
        remove_dir(&self.store, &dir).await.map_err(|e| {
            Error::new(StatusCode::Io, format!("{name} dropped, but its files remain: {}", e.message()))
        })?;
        Ok(true)
    }
}

/// Every materialized view, for `sys.views`.
fn materialized_views(schemas: &RwLock<Schemas>) -> Vec<Arc<MaterializedView>> {
    match schemas.read() {
        Ok(schemas) => schemas
            .values()
            .flat_map(|s| s.values())
            .filter_map(|r| match r {
                Relation::MaterializedView(v) => Some(Arc::clone(v)),
                _ => None,
            })
            .collect(),
        Err(_) => vec![],
    }
}
