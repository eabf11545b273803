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
use datafusion::catalog::view::ViewTable;
use datafusion::common::{Constraint, DFSchema};
use datafusion::logical_expr::{DdlStatement, LogicalPlan};
use datafusion::sql::parser::Statement as DFStatement;
use datafusion::sql::sqlparser::ast;
use futures::{StreamExt, TryStreamExt};
use object_store::ObjectStore;
use object_store::path::Path;
use streamhouse_storage as storage;

use crate::catalog::computed::Computed;
use crate::catalog::{
    AsOf, Catalog, CreateMaterializedView, CreateTable, Created, DEFAULT_SCHEMA, Procedure, RelationInfo, RelationKind,
    RelationName, SYSTEM_SCHEMAS, errors,
};
use crate::config::ViewsConfig;
use crate::dynamic::DynamicTable;
use crate::dynamic::system::{SystemKind, SystemTable};
use crate::error::{Error, Result, StatusCode};
use crate::views::{self, MaterializedView};

mod materialized;
mod plain;

/// The file in a relation's directory that holds its name: a rename
/// rewrites it, in one atomic put. A directory without one (written by an
/// older version) is named after the directory.
const NAME_FILE: &str = "name";

/// At open, files no snapshot references are removed once this old (ms):
/// younger ones may be a commit in flight of another engine on the same
/// bucket. `CALL sys.remove_orphan_files` takes any margin.
const ORPHAN_MARGIN_AT_OPEN_MS: i64 = 3_600_000;

/// Relations by schema and name.
type Schemas = BTreeMap<String, BTreeMap<String, Relation>>;

#[derive(Debug)]
enum Relation {
    Table(Arc<DynamicTable>),
    View(Arc<plain::PlainView>),
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
            RelationKind::MaterializedView | RelationKind::View => {
                format!("drop it ({} {name}) and create it again", self.kind.drop_command())
            }
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
    /// The directory the relation is stored in.
    fn dir(&self) -> &Path {
        match self {
            Relation::Table(t) => t.table.dir(),
            Relation::View(v) => &v.dir,
            Relation::MaterializedView(v) => &v.dir,
            Relation::Damaged(d) => &d.dir,
        }
    }

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
    /// Plain views found on disk, until `bind` plans them.
    pending_views: std::sync::Mutex<Vec<PendingView>>,
    /// Roles and grants, in the file `access` at the root.
    access: Arc<crate::access::Access>,
    /// How materialized views are maintained.
    views: ViewsConfig,
    /// The arrangements materialized views share.
    arrangements: Arc<views::arrange::Arrangements>,
    /// How full refreshes run their queries (set by [`Catalog::bind`]).
    batch: std::sync::OnceLock<crate::catalog::BatchQueriesRef>,
    /// The refreshes since the server started (`sys.refreshes`).
    refreshes: Arc<views::schedule::RefreshLog>,
    /// Refreshes full views on schedule (started by [`Catalog::bind`]).
    scheduler: std::sync::OnceLock<Arc<views::schedule::Scheduler>>,
    /// Stops the scheduler.
    stop: tokio_util::sync::CancellationToken,
}

impl DynamicCatalog {
    /// Removes the shared arrangements the stopped view `view` used that no
    /// other view uses.
    async fn remove_unused_arrangements(&self, view: &MaterializedView) -> Result<()> {
        let dirs: Vec<_> = view.arrangements().into_iter().filter_map(|a| a.shared_dir).collect();
        self.arrangements.remove_unused(&self.store, &dirs).await
    }

    /// CREATE OR REPLACE of view `old`: the new definition gets its own
    /// table, filled and maintained before it takes the name; storing its
    /// definition is the moment of the swap (a crash before it leaves the
    /// old view, after it the new one).
    async fn replace_view(
        &self,
        old: Arc<MaterializedView>,
        request: &CreateMaterializedView,
        defined: (views::ViewDefinition, datafusion::arrow::datatypes::SchemaRef, storage::TableOptions),
    ) -> Result<Created> {
        let name = &request.name;
        let dependents = self.dependents(name)?;
        if !dependents.is_empty() {
            return Err(Error::new(
                StatusCode::DependentObjectsStillExist,
                format!(
                    "cannot replace materialized view {name} because other objects depend on it: {} (drop them first)",
                    describe(&dependents)
                ),
            ));
        }
        let (mut definition, schema, options) = defined;
        if definition.sources.contains(&name.to_string()) {
            return Err(Error::invalid(format!("materialized view {name} cannot read itself")));
        }
        definition.generation = old.definition.generation + 1;
        let table_schema = views::table_schema(&definition, schema, options)?;
        let base = dir_base(&old.dir).unwrap_or_else(|| name.name.clone());
        let dir = table_dir(&name.schema, &format!("{base}@{}", definition.generation));
        write_name(&self.store, &dir, &name.name).await?;
        let table = storage::Table::create(Arc::clone(&self.store), dir.clone(), &name.name, table_schema).await?;
        let view = MaterializedView::new(name.clone(), Arc::new(DynamicTable::new(table)), definition, dir.clone());
        let started = async {
            self.start_view(Arc::clone(&view)).await?;
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
        self.remove_unused_arrangements(&old).await?;
        remove_dir(&self.store, &old.dir).await?;
        Ok(Created::Created)
    }
}

impl DynamicCatalog {
    /// Plans plain views (found at open, or all of them again after a
    /// rollback replaced a table they read), each after the views it reads.
    /// One that no longer plans is kept as damaged, naming why.
    async fn load_views(&self, mut pending: Vec<PendingView>, ctx: &datafusion::prelude::SessionContext) {
        let database = self.database();
        while !pending.is_empty() {
            let waits = |view: &PendingView, pending: &[PendingView]| match &view.stored {
                Ok(stored) => stored.sources.iter().any(|source| {
                    pending.iter().any(|other| {
                        other.name.schema == source.schema
                            && dir_base(&other.dir).as_deref() == Some(source.dir.as_str())
                    })
                }),
                Err(_) => false,
            };
            // A cycle cannot be stored; should one appear, its views are damaged rather than waited on forever.
            let next = (0..pending.len()).find(|&i| !waits(&pending[i], &pending)).unwrap_or(0);
            let view = pending.remove(next);
            let planned = match view.stored {
                Ok(stored) => self.plan_view(ctx, &view.name, view.dir.clone(), stored, &database).await,
                Err(e) => Err(e),
            };
            let relation = match planned {
                Ok(planned) => Relation::View(planned),
                Err(e) => {
                    tracing::error!(view = %view.name, error = %e.message(), "damaged view: not served");
                    let reason = e.message().to_string();
                    Relation::Damaged(Arc::new(Damaged {
                        kind: RelationKind::View,
                        dir: view.dir,
                        reason,
                        snapshots: vec![],
                    }))
                }
            };
            if let Ok(mut schemas) = self.schemas.write() {
                schemas.entry(view.name.schema.clone()).or_default().insert(view.name.name, relation);
            }
        }
    }

    /// Plans stored view `name` with today's names of the relations it reads.
    async fn plan_view(
        &self,
        ctx: &datafusion::prelude::SessionContext,
        name: &RelationName,
        dir: Path,
        stored: plain::StoredView,
        database: &str,
    ) -> Result<Arc<plain::PlainView>> {
        let mut statement = self.current_statement(&stored, database)?;
        if let ast::Statement::CreateView(view) = &mut statement {
            view.name = ast::ObjectName::from(vec![
                ast::Ident::with_quote('"', name.schema.as_str()),
                ast::Ident::with_quote('"', name.name.as_str()),
            ]);
            view.or_replace = false;
        }
        let query = plain::query_of(&statement).map(ToString::to_string).unwrap_or_default();
        let plan = ctx.state().statement_to_plan(DFStatement::Statement(Box::new(statement))).await?;
        let LogicalPlan::Ddl(DdlStatement::CreateView(view)) = plan else {
            return Err(Error::internal(format!("stored definition of view {name} did not plan as a view")));
        };
        let provider = Arc::new(ViewTable::new(view.input.as_ref().clone(), view.definition.clone()));
        Ok(Arc::new(plain::PlainView { provider, dir, stored, query: RwLock::new(query) }))
    }

    /// A stored view's statement with its sources under the names they have today.
    fn current_statement(&self, stored: &plain::StoredView, database: &str) -> Result<ast::Statement> {
        let mut statement = plain::parse_create_view(&stored.statement)?;
        let renames = {
            let schemas = self.schemas.read().map_err(errors::poisoned)?;
            let mut renames = Vec::with_capacity(stored.sources.len());
            for source in &stored.sources {
                let Some(current) = current_name(&schemas, source) else {
                    return Err(Error::new(
                        StatusCode::TableNotFound,
                        format!("relation {}.{} it reads no longer exists", source.schema, source.name),
                    ));
                };
                let then = RelationName { schema: source.schema.clone(), name: source.name.clone() };
                renames.push((then, RelationName { schema: source.schema.clone(), name: current.clone() }));
            }
            renames
        };
        if let ast::Statement::CreateView(view) = &mut statement {
            plain::rename_references(&mut view.query, &renames, database);
        }
        Ok(statement)
    }

    /// Plain views show their queries with today's names (after a rename).
    fn refresh_view_texts(&self) -> Result<()> {
        let database = self.database();
        let views: Vec<Arc<plain::PlainView>> = {
            let schemas = self.schemas.read().map_err(errors::poisoned)?;
            schemas
                .values()
                .flat_map(BTreeMap::values)
                .filter_map(|r| match r {
                    Relation::View(v) => Some(Arc::clone(v)),
                    _ => None,
                })
                .collect()
        };
        for view in views {
            let statement = self.current_statement(&view.stored, &database)?;
            if let (Some(query), Ok(mut shown)) = (plain::query_of(&statement), view.query.write()) {
                *shown = query.to_string();
            }
        }
        Ok(())
    }

    /// Every plain view planned again (after a table they read was replaced by a rollback).
    async fn reload_views(&self) -> Result<()> {
        let Some(ctx) = self.ctx.get().cloned() else { return Ok(()) };
        let pending: Vec<PendingView> = {
            let schemas = self.schemas.read().map_err(errors::poisoned)?;
            schemas
                .iter()
                .flat_map(|(schema, relations)| relations.iter().map(move |(name, r)| (schema, name, r)))
                .filter_map(|(schema, name, r)| match r {
                    Relation::View(v) => Some(PendingView {
                        name: RelationName { schema: schema.clone(), name: name.clone() },
                        dir: v.dir.clone(),
                        stored: Ok(v.stored.clone()),
                    }),
                    _ => None,
                })
                .collect()
        };
        self.load_views(pending, &ctx).await;
        Ok(())
    }

    /// A directory for new relation `name`: `<schema>/<name>`, or
    /// `<schema>/<name>~<k>` while a renamed relation still lives in that.
    fn allocate_dir(&self, name: &RelationName) -> Result<Path> {
        let schemas = self.schemas.read().map_err(errors::poisoned)?;
        let used: BTreeSet<String> = schemas
            .get(&name.schema)
            .into_iter()
            .flat_map(BTreeMap::values)
            .filter_map(|r| dir_base(r.dir()))
            .collect();
        let mut dir = name.name.clone();
        let mut k = 1;
        while used.contains(&dir) {
            dir = format!("{}~{k}", name.name);
            k += 1;
        }
        Ok(table_dir(&name.schema, &dir))
    }

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
                Some(Relation::Table(t)) => (Some(Arc::clone(&t.table)), t.table.dir().clone()),
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
        let dependents: Vec<_> =
            self.dependents(name)?.into_iter().filter(|(_, kind)| *kind == RelationKind::MaterializedView).collect();
        if !dependents.is_empty() {
            let names: Vec<String> = dependents.iter().map(|(d, _)| d.to_string()).collect();
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
        self.reload_views().await?;
        let removed = result?;
        let table = reopened?;
        let orphans = table.remove_orphan_files(crate::now_ms()).await?;
        Ok(format!(
            "rolled {name} back to snapshot {snapshot}: removed {} later snapshots and {} files",
            removed.len(),
            orphans.len()
        ))
    }

    /// The views (plain and materialized) that read `name`, in name order.
    fn dependents(&self, name: &RelationName) -> Result<Vec<(RelationName, RelationKind)>> {
        let database = self.database();
        let schemas = self.schemas.read().map_err(errors::poisoned)?;
        let dir = schemas.get(&name.schema).and_then(|s| s.get(&name.name)).map(|r| r.dir().clone());
        let wanted = name.to_string();
        let mut dependents = Vec::new();
        for (schema, relations) in schemas.iter() {
            for (relation, r) in relations {
                let reads = match r {
                    Relation::MaterializedView(v) => {
                        v.definition.sources.contains(&wanted)
                            || plain::referenced_by_query(&v.definition.query, &database).contains(name)
                    }
                    Relation::View(v) => dir.as_ref().is_some_and(|dir| {
                        v.stored.sources.iter().any(|source| table_dir(&source.schema, &source.dir) == *dir)
                    }),
                    _ => false,
                };
                if reads {
                    dependents.push((RelationName { schema: schema.clone(), name: relation.clone() }, r.kind()));
                }
            }
        }
        Ok(dependents)
    }

    /// The database name queries qualify relations with (`db.schema.rel`).
    fn database(&self) -> String {
        self.ctx
            .get()
            .map(|ctx| ctx.state_ref().read().config_options().catalog.default_catalog.clone())
            .unwrap_or_default()
    }

    /// Lists the materialized views (for `sys.views` and the scheduler).
    fn view_lister(&self) -> views::ViewLister {
        let schemas = Arc::clone(&self.schemas);
        Arc::new(move || materialized_views(&schemas))
    }

    fn view_context(&self) -> Result<datafusion::prelude::SessionContext> {
        self.ctx.get().cloned().ok_or_else(|| Error::internal("the catalog is not bound to an engine yet"))
    }

    /// Opens the warehouse in `store`, finding every relation in it.
    ///
    /// # Errors
    /// Storage failures and damaged table metadata.
    pub async fn open(store: Arc<dyn ObjectStore>) -> Result<Self> {
        let metas: Vec<_> = store
            .list(None)
            .try_collect()
            .await
            .map_err(|e| Error::new(StatusCode::Io, format!("cannot list the warehouse: {e}")))?;
        // <schema>/<dir>/schema/schema-<id> marks a table; <schema>/.schema marks a schema;
        // <schema>/<dir>/view/definition marks a table that holds a materialized view;
        // <schema>/<dir>/plain_view is a plain view; <schema>/<dir>/name names what is in <dir>.
        let mut tables = BTreeSet::new();
        let mut views = BTreeSet::new();
        let mut plain_views = BTreeSet::new();
        let mut named = BTreeSet::new();
        // <schema>/<dir>/index/… holds arrangements views share
        // (views::arrange): per relation, its newest file's time.
        let mut indexed: BTreeMap<(String, String), i64> = BTreeMap::new();
        let mut schema_names: BTreeSet<String> = [DEFAULT_SCHEMA.to_string()].into();
        for meta in &metas {
            // Parts as written (`table_dir` encodes them again).
            let owned: Vec<String> = meta
                .location
                .parts()
                .map(|p| percent_encoding::percent_decode_str(p.as_ref()).decode_utf8_lossy().into_owned())
                .collect();
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
                [schema, dir, file] if plain::is_definition(file) => {
                    plain_views.insert((schema.to_string(), dir.to_string()));
                }
                [schema, dir, NAME_FILE] => {
                    named.insert((schema.to_string(), dir.to_string()));
                }
                [schema, dir, "index", _, ..] => {
                    let newest = indexed.entry((schema.to_string(), dir.to_string())).or_insert(i64::MIN);
                    *newest = (*newest).max(meta.last_modified.timestamp_millis());
                }
                _ => {}
            }
        }
        let mut names: BTreeMap<(String, String), String> = BTreeMap::new();
        for (schema, dir) in named {
            let location = table_dir(&schema, &dir).join(NAME_FILE);
            let name = read_file(&store, &location).await?;
            let name = String::from_utf8(name.to_vec())
                .map_err(|_| Error::new(StatusCode::DataCorrupted, format!("{location} is not UTF-8")))?;
            names.insert((schema, dir), name);
        }
        let mut schemas: BTreeMap<String, BTreeMap<String, Relation>> =
            schema_names.into_iter().map(|s| (s, BTreeMap::new())).collect();
        // A view replaced by CREATE OR REPLACE lives in "<dir>@<generation>": the
        // newest generation with a definition wins; older ones and replacements
        // that crashed before storing their definition are removed.
        let mut newest: BTreeMap<(String, String), u64> = BTreeMap::new();
        for (schema, dir) in &views {
            let (base, generation) = generation_of(dir);
            let entry = newest.entry((schema.clone(), base.to_string())).or_insert(generation);
            *entry = (*entry).max(generation);
        }
        for (schema, dir) in tables {
            let (base, generation) = generation_of(&dir);
            let is_view = views.contains(&(schema.clone(), dir.clone()));
            let current = newest.get(&(schema.clone(), base.to_string())) == Some(&generation);
            if (is_view && !current) || (!is_view && generation > 0) {
                remove_dir(&store, &table_dir(&schema, &dir)).await?;
                continue;
            }
            let name = names.get(&(schema.clone(), dir.clone())).cloned().unwrap_or_else(|| base.to_string());
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
        // Plain views are planned once the engine exists (`bind`).
        let mut pending = Vec::new();
        for (schema, dir) in plain_views {
            let name = names.get(&(schema.clone(), dir.clone())).cloned().unwrap_or_else(|| dir.clone());
            let dir = table_dir(&schema, &dir);
            let location = plain::path(&dir);
            let stored = match read_file(&store, &location).await {
                Ok(bytes) => storage::frame::decode(location.as_ref(), &bytes).map_err(Error::from),
                Err(e) => Err(e),
            };
            pending.push(PendingView { name: RelationName { schema, name }, dir, stored });
        }
        // Arrangements of relations no materialized view reads (a crash
        // between a view's drop and the removal of what it alone used),
        // unless young enough to be another engine's view being created.
        let read: BTreeSet<&String> = schemas
            .values()
            .flat_map(BTreeMap::values)
            .filter_map(|r| match r {
                Relation::MaterializedView(v) => Some(&v.definition.sources),
                _ => None,
            })
            .flatten()
            .collect();
        for ((schema, dir), newest) in indexed {
            if newest >= crate::now_ms() - ORPHAN_MARGIN_AT_OPEN_MS {
                continue;
            }
            let name = names.get(&(schema.clone(), dir.clone())).cloned().unwrap_or_else(|| dir.clone());
            if !read.contains(&RelationName { schema: schema.clone(), name }.to_string()) {
                remove_dir(&store, &table_dir(&schema, &dir).join("index")).await?;
            }
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
        let access = Arc::new(crate::access::Access::open(Arc::clone(&store)).await?);
        Ok(Self {
            store,
            access,
            schemas: Arc::new(RwLock::new(schemas)),
            ctx: std::sync::OnceLock::new(),
            pending_views: std::sync::Mutex::new(pending),
            views: ViewsConfig::default(),
            arrangements: Arc::default(),
            batch: std::sync::OnceLock::new(),
            refreshes: Arc::default(),
            scheduler: std::sync::OnceLock::new(),
            stop: tokio_util::sync::CancellationToken::new(),
        })
    }

    /// Maintains materialized views with `config` (before the catalog is
    /// bound to an engine, which starts them).
    #[must_use]
    pub fn with_views_config(mut self, config: ViewsConfig) -> Self {
        self.views = config;
        self
    }
}

/// A plain view found by [`DynamicCatalog::open`], planned by `bind`.
struct PendingView {
    name: RelationName,
    dir: Path,
    stored: Result<plain::StoredView>,
}

/// `("v", 2)` for a directory `"v@2"`, `("t", 0)` for `"t"`.
fn generation_of(dir: &str) -> (&str, u64) {
    match dir.rsplit_once('@') {
        Some((base, generation)) => generation.parse::<u64>().map_or((dir, 0), |g| (base, g)),
        None => (dir, 0),
    }
}

/// Today's name of the relation a stored view reads (found by its directory).
fn current_name<'a>(schemas: &'a Schemas, source: &plain::StoredSource) -> Option<&'a String> {
    let relations = schemas.get(&source.schema)?;
    relations.iter().find(|(_, r)| dir_base(r.dir()).as_deref() == Some(source.dir.as_str())).map(|(name, _)| name)
}

/// The directory name of relation directory `dir`, without its generation.
fn dir_base(dir: &Path) -> Option<String> {
    dir_name(dir).map(|name| generation_of(&name).0.to_string())
}

/// The last part of `dir`, decoded (as it was given to [`table_dir`]).
fn dir_name(dir: &Path) -> Option<String> {
    dir.filename().map(|name| percent_encoding::percent_decode_str(name).decode_utf8_lossy().into_owned())
}

/// The whole content of the file at `location`.
async fn read_file(store: &Arc<dyn ObjectStore>, location: &Path) -> Result<bytes::Bytes> {
    object_store::ObjectStoreExt::get(store, location)
        .await
        .map_err(|e| Error::new(StatusCode::DataCorrupted, format!("cannot read {location}: {e}")))?
        .bytes()
        .await
        .map_err(|e| Error::new(StatusCode::Io, format!("cannot read {location}: {e}")))
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
    let bytes = read_file(store, &location).await?;
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

/// Names what is stored in `dir` (before anything else is written there,
/// and again on rename).
async fn write_name(store: &Arc<dyn ObjectStore>, dir: &Path, name: &str) -> Result<()> {
    let location = dir.clone().join(NAME_FILE);
    object_store::ObjectStoreExt::put(store, &location, bytes::Bytes::from(name.to_string()).into())
        .await
        .map_err(|e| Error::new(StatusCode::Io, format!("cannot write {location}: {e}")))?;
    Ok(())
}

/// `view v, materialized view w` for error messages.
fn describe(relations: &[(RelationName, RelationKind)]) -> String {
    relations.iter().map(|(name, kind)| format!("{} {name}", kind.noun())).collect::<Vec<_>>().join(", ")
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
    fn access(&self) -> Option<Arc<crate::access::Access>> {
        Some(Arc::clone(&self.access))
    }

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
                reads: vec![],
            },
            Relation::View(v) => RelationInfo {
                kind: RelationKind::View,
                schema: v.provider.schema(),
                primary_key: vec![],
                definition: Some(v.query_text()),
                defaults: vec![],
                reads: v
                    .stored
                    .sources
                    .iter()
                    .filter_map(|source| {
                        let name = current_name(&schemas, source)?;
                        Some(RelationName { schema: source.schema.clone(), name: name.clone() })
                    })
                    .collect(),
            },
            Relation::MaterializedView(v) => RelationInfo {
                kind: RelationKind::MaterializedView,
                schema: v.schema(),
                primary_key: vec![],
                definition: Some(v.definition.query.clone()),
                defaults: vec![],
                reads: v
                    .definition
                    .sources
                    .iter()
                    .filter_map(|source| {
                        let (schema, name) = source.split_once('.')?;
                        Some(RelationName { schema: schema.to_string(), name: name.to_string() })
                    })
                    .collect(),
            },
            Relation::Damaged(_) => return None,
        })
    }

    fn relation_kind(&self, name: &RelationName) -> Option<RelationKind> {
        let schemas = self.schemas.read().ok()?;
        if let Some((base, _)) = system_table_name(&name.name) {
            return matches!(schemas.get(&name.schema)?.get(base)?, Relation::Table(_) | Relation::MaterializedView(_))
                .then_some(RelationKind::View);
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
                // A view's history as a table's, its visible columns only.
                Some(Relation::MaterializedView(v)) => {
                    let inner =
                        Arc::new(Computed(SystemTable::new(Arc::clone(v.table()), &v.visible_table().schema(), kind)));
                    Some(Arc::new(views::ViewSystemTable::new(Arc::clone(v), inner)) as Arc<dyn TableProvider>)
                }
                Some(Relation::Damaged(damaged)) => return Err(damaged.error(name)),
                _ => None,
            });
        }
        let schemas = self.schemas.read().map_err(errors::poisoned)?;
        Ok(match schemas.get(&name.schema).and_then(|s| s.get(&name.name)) {
            None => None,
            Some(Relation::Table(t)) => Some(Arc::clone(t) as Arc<dyn TableProvider>),
            Some(Relation::View(v)) => Some(Arc::clone(&v.provider)),
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
        let dir = self.allocate_dir(name)?;
        write_name(&self.store, &dir, &name.name).await?;
        let table = storage::Table::create(Arc::clone(&self.store), dir, &name.name, schema).await?;
        let table = Arc::new(DynamicTable::new(table));
        table.set_defaults(request.column_defaults.into_iter().collect());
        let mut schemas = self.schemas.write().map_err(errors::poisoned)?;
        let schema = schemas.get_mut(&name.schema).ok_or_else(|| errors::schema_not_found(&name.schema))?;
        schema.insert(name.name.clone(), Relation::Table(table));
        Ok(Created::Created)
    }

    fn bind(&self, ctx: &datafusion::prelude::SessionContext, batch: crate::catalog::BatchQueriesRef) -> Result<()> {
        let _ = self.batch.set(batch);
        {
            let schemas = self.schemas.read().map_err(errors::poisoned)?;
            for relation in schemas.values().flat_map(|s| s.values()) {
                if let Relation::Table(table) = relation {
                    let df_schema = DFSchema::try_from(Arc::clone(&table.schema))?;
                    let mut defaults = std::collections::HashMap::new();
                    for (column, sql) in &table.stored_defaults {
                        let expr = ctx.parse_sql_expr(sql, &df_schema).map_err(|e| {
                            Error::internal(format!(
                                "stored DEFAULT of {}.{column} does not plan: {e}",
                                table.table.name()
                            ))
                        })?;
                        defaults.insert(column.clone(), expr);
                    }
                    table.set_defaults(defaults);
                }
            }
        }
        if self.ctx.set(ctx.clone()).is_err() {
            return Ok(());
        }
        // Plain views before anything runs a query, and before the
        // materialized views that may read them. Planning does no I/O; it
        // runs to completion on a thread of its own, as bind is synchronous.
        let pending = std::mem::take(&mut *self.pending_views.lock().map_err(errors::poisoned)?);
        if !pending.is_empty() {
            std::thread::scope(|scope| {
                scope
                    .spawn(|| {
                        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
                        runtime.block_on(self.load_views(pending, ctx));
                        Ok::<_, std::io::Error>(())
                    })
                    .join()
            })
            .map_err(|_| Error::internal("planning the stored views panicked"))?
            .map_err(|e| Error::internal(format!("cannot plan the stored views: {e}")))?;
        }
        let views = materialized_views(&self.schemas);
        if views.is_empty() {
            return Ok(());
        }
        self.wake_scheduler();
        let runtime = tokio::runtime::Handle::try_current()
            .map_err(|_| Error::internal("materialized views need a tokio runtime to be maintained"))?;
        for view in views {
            let starter = self.starter()?;
            runtime.spawn(async move {
                if let Err(e) = starter.start(Arc::clone(&view)).await {
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
        let text = view
            .get_table_definition()
            .ok_or_else(|| Error::internal(format!("view {name} was planned without its SQL")))?
            .to_string();
        let statement = plain::parse_create_view(&text)?;
        let query = plain::query_of(&statement).map(ToString::to_string).unwrap_or_default();
        let database = self.database();
        let referenced = plain::query_of(&statement).map(|q| plain::referenced(q, &database)).unwrap_or_default();
        let (existing, sources) = {
            let schemas = self.schemas.read().map_err(errors::poisoned)?;
            let schema = schemas.get(&name.schema).ok_or_else(|| errors::schema_not_found(&name.schema))?;
            let existing = match schema.get(&name.name) {
                Some(Relation::View(v)) if or_replace => Some(v.dir.clone()),
                Some(_) => return Err(errors::relation_exists(&name)),
                None => None,
            };
            let sources: Vec<plain::StoredSource> = referenced
                .into_iter()
                .filter_map(|r| {
                    let dir = dir_base(schemas.get(&r.schema)?.get(&r.name)?.dir())?;
                    Some(plain::StoredSource { schema: r.schema, name: r.name, dir })
                })
                .collect();
            (existing, sources)
        };
        if let Some(dir) = &existing {
            if sources.iter().any(|s| s.schema == name.schema && Some(&s.dir) == dir_base(dir).as_ref()) {
                return Err(Error::new(StatusCode::InvalidArgument, format!("view {name} cannot read itself")));
            }
            let dependents = self.dependents(&name)?;
            if !dependents.is_empty() {
                return Err(Error::new(
                    StatusCode::DependentObjectsStillExist,
                    format!(
                        "cannot replace view {name} because other objects depend on it: {} (drop them first, or DROP VIEW {name} CASCADE)",
                        describe(&dependents)
                    ),
                ));
            }
        }
        let dir = match existing {
            Some(dir) => dir,
            None => {
                let dir = self.allocate_dir(&name)?;
                write_name(&self.store, &dir, &name.name).await?;
                dir
            }
        };
        let stored = plain::StoredView { statement: text, sources };
        let location = plain::path(&dir);
        object_store::ObjectStoreExt::put(&self.store, &location, storage::frame::encode(&stored)?.into())
            .await
            .map_err(|e| Error::new(StatusCode::Io, format!("cannot store view {name}: {e}")))?;
        let view = plain::PlainView { provider: view, dir, stored, query: RwLock::new(query) };
        let mut schemas = self.schemas.write().map_err(errors::poisoned)?;
        let schema = schemas.get_mut(&name.schema).ok_or_else(|| errors::schema_not_found(&name.schema))?;
        schema.insert(name.name.clone(), Relation::View(Arc::new(view)));
        Ok(Created::Created)
    }

    async fn rename_relation(
        &self,
        name: &RelationName,
        kind: Option<RelationKind>,
        new_name: &str,
        if_exists: bool,
    ) -> Result<bool> {
        let new = RelationName { schema: name.schema.clone(), name: new_name.to_string() };
        if new_name.contains('@') {
            return Err(Error::invalid(format!("relation name \"{new_name}\" may not contain '@'")));
        }
        let (actual, dir) = {
            let schemas = self.schemas.read().map_err(errors::poisoned)?;
            let found = schemas.get(&name.schema).and_then(|s| s.get(&name.name));
            let Some(relation) = found else {
                return if if_exists {
                    Ok(false)
                } else {
                    Err(errors::relation_not_found(name, kind.unwrap_or(RelationKind::Table)))
                };
            };
            if let Relation::Damaged(damaged) = relation {
                return Err(damaged.error(name));
            }
            if let Some(kind) = kind
                && relation.kind() != kind
            {
                return Err(errors::wrong_kind(name, kind, relation.kind()));
            }
            if schemas.get(&name.schema).is_some_and(|s| s.contains_key(new_name)) {
                return Err(errors::relation_exists(&new));
            }
            (relation.kind(), relation.dir().clone())
        };
        // Materialized views name their sources in stored SQL they are
        // maintained by; plain views follow the relation itself.
        let readers: Vec<_> =
            self.dependents(name)?.into_iter().filter(|(_, k)| *k == RelationKind::MaterializedView).collect();
        if !readers.is_empty() {
            return Err(Error::new(
                StatusCode::DependentObjectsStillExist,
                format!(
                    "cannot rename {} {name} because other objects depend on it: {} (drop them, rename, and create them again)",
                    actual.noun(),
                    describe(&readers)
                ),
            ));
        }
        // The rename itself: one put of the name file.
        write_name(&self.store, &dir, new_name).await?;
        let renamed_view = if actual == RelationKind::MaterializedView {
            // Its maintainer runs under its name: restart it under the new one.
            let old = match self
                .schemas
                .read()
                .map_err(errors::poisoned)?
                .get(&name.schema)
                .and_then(|s| s.get(&name.name))
            {
                Some(Relation::MaterializedView(v)) => Some(Arc::clone(v)),
                _ => None,
            };
            if let Some(old) = &old {
                old.stop().await;
                old.table().close().await;
            }
            let dir_name = dir_name(&dir).unwrap_or_default();
            Some(open_relation(&self.store, &name.schema, &dir_name, new_name, true).await?)
        } else {
            None
        };
        let started = {
            let mut schemas = self.schemas.write().map_err(errors::poisoned)?;
            let relations = schemas.get_mut(&name.schema).ok_or_else(|| errors::schema_not_found(&name.schema))?;
            let relation = relations.remove(&name.name).ok_or_else(|| errors::relation_not_found(name, actual))?;
            let relation = renamed_view.unwrap_or(relation);
            let started = match &relation {
                Relation::MaterializedView(v) => Some(Arc::clone(v)),
                _ => None,
            };
            relations.insert(new_name.to_string(), relation);
            started
        };
        if let Some(view) = started {
            self.start_view(view).await?;
        }
        self.refresh_view_texts()?;
        Ok(true)
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

    async fn rename_column(&self, name: &RelationName, column: &str, new_name: &str, if_exists: bool) -> Result<bool> {
        let old = match self.stored_table(name, "altered") {
            Ok(old) => old,
            Err(e) if if_exists && e.code() == StatusCode::TableNotFound => return Ok(false),
            Err(e) => return Err(e),
        };
        if old.schema.field_with_name(column).is_err() {
            return Err(Error::new(
                StatusCode::ColumnNotFound,
                format!("column \"{column}\" of relation \"{}\" does not exist", name.name),
            ));
        }
        if old.schema.field_with_name(new_name).is_ok() {
            return Err(Error::new(
                StatusCode::DuplicateColumn,
                format!("column \"{new_name}\" of relation \"{}\" already exists", name.name),
            ));
        }
        // Views are planned (plain) or maintained (materialized) from SQL that
        // names the column: refused rather than left reading a column that is gone.
        let readers = self.dependents(name)?;
        if !readers.is_empty() {
            return Err(Error::new(
                StatusCode::DependentObjectsStillExist,
                format!(
                    "cannot rename column \"{column}\" of table {name} because other objects depend on it: {} (drop \
                     them, rename, and create them again)",
                    describe(&readers)
                ),
            ));
        }
        old.table.rename_column(column, new_name).await?;
        let new = Arc::new(DynamicTable::shared(Arc::clone(&old.table)));
        // DEFAULTs are planned again from the renamed definition when the catalog binds.
        let mut defaults = old.defaults.get().cloned().unwrap_or_default();
        if let Some(default) = defaults.remove(column) {
            defaults.insert(new_name.to_string(), default);
        }
        new.set_defaults(defaults);
        let mut schemas = self.schemas.write().map_err(errors::poisoned)?;
        if let Some(relation @ Relation::Table(_)) = schemas.get_mut(&name.schema).and_then(|s| s.get_mut(&name.name)) {
            *relation = Relation::Table(new);
        }
        Ok(true)
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
        let views = views::system::views_table(self.view_lister());
        let refreshes = views::system::refreshes_table(Arc::clone(&self.refreshes));
        vec![("views".to_string(), views), ("refreshes".to_string(), refreshes)]
    }

    async fn alter_materialized_view(
        &self,
        name: &RelationName,
        action: crate::catalog::ViewAlteration,
        if_exists: bool,
    ) -> Result<Option<String>> {
        match self.alter_view(name, action).await? {
            Some(message) => Ok(Some(message)),
            None if if_exists => Ok(None),
            None => Err(errors::relation_not_found(name, RelationKind::MaterializedView)),
        }
    }

    async fn close(&self) {
        self.stop.cancel();
        for view in materialized_views(&self.schemas) {
            view.stop().await;
        }
        // Then every table: a commit in flight finishes, background
        // compaction commits nothing more (it used to, after an engine on the
        // same store had opened: that engine's next commit lost the race).
        let tables: Vec<Arc<storage::Table>> = match self.schemas.read() {
            Ok(schemas) => schemas
                .values()
                .flat_map(BTreeMap::values)
                .filter_map(|relation| match relation {
                    Relation::Table(t) => Some(Arc::clone(&t.table)),
                    Relation::MaterializedView(v) => Some(Arc::clone(v.table())),
                    _ => None,
                })
                .collect(),
            Err(_) => vec![],
        };
        for table in tables {
            table.close().await;
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
        let defined = materialized::define(&ctx, &request, &self.views).await?;
        if let Some(old) = replaced {
            return self.replace_view(old, &request, defined).await;
        }
        let (definition, schema, options) = defined;
        let table_schema = views::table_schema(&definition, schema, options)?;
        let dir = self.allocate_dir(&name)?;
        write_name(&self.store, &dir, &name.name).await?;
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
        if let Err(e) = self.start_view(Arc::clone(&view)).await {
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
                let mut chain: Vec<((RelationName, RelationKind), RelationName)> =
                    dependents.iter().map(|d| (d.clone(), name.clone())).collect();
                let mut next = 0;
                while next < chain.len() {
                    let reader = chain[next].0.0.clone();
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
                            .map(|((d, kind), on)| format!("{} {d} depends on {on}", kind.noun()))
                            .collect::<Vec<_>>()
                            .join(", "),
                        kind.drop_command()
                    ),
                ));
            }
            for (dependent, kind) in dependents {
                Box::pin(self.drop_relation(&dependent, kind, true, true)).await?;
            }
        }
        let removed = {
            let mut schemas = self.schemas.write().map_err(errors::poisoned)?;
            schemas.get_mut(&name.schema).and_then(|s| s.remove(&name.name))
        };
        let (table, dir) = match removed {
            None => return Ok(false),
            Some(Relation::View(view)) => {
                remove_dir(&self.store, &view.dir).await?;
                return Ok(true);
            }
            Some(Relation::Damaged(damaged)) => {
                remove_dir(&self.store, &damaged.dir).await?;
                return Ok(true);
            }
            Some(Relation::Table(table)) => (Arc::clone(&table.table), table.table.dir().clone()),
            Some(Relation::MaterializedView(view)) => {
                view.stop().await;
                self.remove_unused_arrangements(&view).await?;
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
