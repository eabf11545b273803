//! The [`Engine`]: one per server, shared by every session of both protocols.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use datafusion::arrow::array::StringArray;
use datafusion::arrow::datatypes::DataType;
use datafusion::catalog::{CatalogProviderList, MemoryCatalogProviderList};
use datafusion::execution::SessionStateBuilder;
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::logical_expr::{ColumnarValue, ScalarUDF, Volatility, create_udf};
use datafusion::prelude::{SessionConfig, SessionContext};
use datafusion::scalar::ScalarValue;
use datafusion_pg_catalog::pg_catalog::context::EmptyContextProvider;
use tokio_util::sync::CancellationToken;

use crate::catalog::{CatalogRef, DEFAULT_SCHEMA, DataFusionCatalog};
use crate::config::EngineConfig;
use crate::error::{Error, Result};

pub use crate::settings::{SERVER_VERSION, SERVER_VERSION_NUM};

/// The query engine: the catalog, DataFusion's shared state (functions,
/// memory pool, `pg_catalog`) and the shutdown signal. Cheap to clone.
#[derive(Clone)]
pub struct Engine {
    inner: Arc<EngineInner>,
}

pub(crate) struct EngineInner {
    pub(crate) config: EngineConfig,
    pub(crate) catalog: CatalogRef,
    /// Template for every session's DataFusion context.
    pub(crate) base: SessionContext,
    pub(crate) shutdown: CancellationToken,
    pub(crate) active: Arc<crate::cancel::ActiveStatements>,
    /// Recent queries (`sys.queries`).
    pub(crate) queries: Arc<crate::queries::QueryLog>,
    /// Where BSP stages write their output.
    pub(crate) spill: crate::exec::bsp::SpillArea,
    /// Failures tests inject into BSP tasks.
    pub(crate) faults: Arc<crate::exec::bsp::Faults>,
    next_session_id: AtomicU64,
    /// Bumped by every DDL statement, so prepared plans notice they are stale.
    pub(crate) catalog_version: AtomicU64,
    /// The oids `pg_class` gives relations.
    pub(crate) relation_oids: crate::catalog::pg::RelationOids,
    /// Roles, ownership and grants.
    pub(crate) access: Arc<crate::access::Access>,
    /// The workers queries may run on (`[cluster]`).
    pub(crate) distribution: Option<Arc<crate::exec::distributed::Distribution>>,
}

impl std::fmt::Debug for Engine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Engine").field("database", &self.inner.config.database).finish_non_exhaustive()
    }
}

/// The string `version()` returns: Postgres-shaped, since drivers and ORMs
/// parse it (SQLAlchemy matches `PostgreSQL X.Y`).
pub fn version_string() -> String {
    format!(
        "PostgreSQL {SERVER_VERSION} (streamhouse {}, Apache DataFusion {}) on {}-{}, 64-bit",
        env!("CARGO_PKG_VERSION"),
        datafusion::DATAFUSION_VERSION,
        std::env::consts::ARCH,
        std::env::consts::OS,
    )
}

/// What an engine needs to run queries across workers.
#[derive(Debug)]
pub struct ClusterSetup<'a> {
    pub config: &'a crate::config::ClusterConfig,
    /// This server's identity ([`crate::exec::distributed::identity`]): workers with another are refused.
    pub identity: String,
    /// The shared warehouse store the workers read.
    pub store: Arc<dyn object_store::ObjectStore>,
    /// Where in it distributed BSP writes its stage files (emptied by the caller at start).
    pub spill_prefix: object_store::path::Path,
}

impl Engine {
    /// An engine over the given catalog.
    ///
    /// # Errors
    /// An invalid configuration.
    pub fn with_catalog(config: EngineConfig, catalog: CatalogRef) -> Result<Self> {
        Self::with_cluster(config, catalog, None)
    }

    /// An engine over the given catalog that runs queries across the
    /// workers `cluster` names (when any), refusing workers whose identity
    /// is not the given one ([`crate::exec::distributed::identity`]). Starts
    /// their heartbeat: call within a Tokio runtime.
    ///
    /// # Errors
    /// An invalid configuration.
    pub fn with_cluster(config: EngineConfig, catalog: CatalogRef, cluster: Option<ClusterSetup<'_>>) -> Result<Self> {
        let shutdown = CancellationToken::new();
        let (cluster, distribution) = match cluster {
            Some(setup) if !setup.config.workers.is_empty() => {
                let cluster =
                    crate::exec::distributed::Cluster::start(setup.config, setup.identity, shutdown.child_token())?;
                let distribution = Arc::new(crate::exec::distributed::Distribution {
                    cluster: Arc::clone(&cluster),
                    mode: config.distributed,
                    min_bytes: config.distributed_min_bytes.bytes().unwrap_or(u64::MAX),
                    bytes_per_task: config.distributed_bytes_per_task.bytes().unwrap_or(u64::MAX),
                    store: setup.store,
                    spill_prefix: setup.spill_prefix,
                });
                (Some(cluster), Some(distribution))
            }
            _ => (None, None),
        };
        let mut runtime = RuntimeEnvBuilder::new();
        if let Some(limit) = config.memory_limit.bytes() {
            let limit = usize::try_from(limit).map_err(|_| Error::invalid("execution.memory_limit is too large"))?;
            runtime = runtime.with_memory_limit(limit, 1.0);
        }
        let runtime = runtime.build_arc()?;

        let session_config = session_config(&config);
        let catalogs = Arc::new(MemoryCatalogProviderList::new());
        catalogs.register_catalog(config.database.clone(), Arc::new(DataFusionCatalog::new(Arc::clone(&catalog))));
        let base = functions(&config, session_config, runtime, catalogs)?;

        let spill_root = config.spill_dir.clone().unwrap_or_else(|| std::env::temp_dir().join("streamhouse-spill"));
        let spill = crate::exec::bsp::SpillArea::open(&spill_root).map_err(|e| {
            Error::invalid(format!("cannot use {} for stage files (execution.spill_dir): {e}", spill_root.display()))
        })?;
        let queries = Arc::new(crate::queries::QueryLog::default());
        if let Some(database) = base.catalog(&config.database) {
            // `sys`: the engine's recent queries, and what the catalog adds (`sys.views`).
            use datafusion::catalog::SchemaProvider;
            let sys = datafusion::catalog::MemorySchemaProvider::new();
            let queries_table =
                crate::catalog::computed::Computed(crate::queries::QueriesTable::new(Arc::clone(&queries)));
            sys.register_table("queries".into(), Arc::new(queries_table))?;
            let workers = crate::exec::distributed::WorkersTable::new(cluster);
            sys.register_table("workers".into(), Arc::new(crate::catalog::computed::Computed(workers)))?;
            for (name, table) in catalog.system_tables() {
                sys.register_table(name, table)?;
            }
            database.register_schema("sys", Arc::new(sys))?;
        }
        // Our relations in pg_catalog and information_schema, after `sys` exists.
        let access = catalog.access().unwrap_or_else(|| Arc::new(crate::access::Access::in_memory()));
        let relation_oids =
            crate::catalog::pg::install(&base, Arc::clone(&catalog), Arc::clone(&access), &config.database)?;
        let faults: Arc<crate::exec::bsp::Faults> = Arc::default();
        let batch: crate::catalog::BatchQueriesRef = Arc::new(crate::exec::BatchRunner::new(
            bsp_options(&config, &spill, &faults, distribution.clone()),
            (config.bsp_after_ms > 0).then(|| std::time::Duration::from_millis(config.bsp_after_ms)),
        ));
        catalog.bind(&base, batch)?;
        base.register_udtf("table_as_of", Arc::new(crate::time_travel::TableAsOf::new(Arc::clone(&catalog))));
        Ok(Self {
            inner: Arc::new(EngineInner {
                config,
                catalog,
                base,
                shutdown,
                active: Arc::default(),
                queries,
                spill,
                faults,
                next_session_id: AtomicU64::new(1),
                catalog_version: AtomicU64::new(0),
                relation_oids,
                access,
                distribution,
            }),
        })
    }

    /// A new session id, unique within the server's lifetime.
    pub(crate) fn next_session_id(&self) -> u64 {
        self.inner.next_session_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Roles, ownership and grants (what the front ends authenticate against).
    pub fn access(&self) -> &Arc<crate::access::Access> {
        &self.inner.access
    }

    /// The engine's configuration.
    pub fn config(&self) -> &EngineConfig {
        &self.inner.config
    }

    /// The oids `pg_class` gives relations.
    pub(crate) fn relation_oids(&self) -> &crate::catalog::pg::RelationOids {
        &self.inner.relation_oids
    }

    /// The catalog of user relations.
    pub fn catalog(&self) -> &CatalogRef {
        &self.inner.catalog
    }

    /// The name of the one database.
    pub fn database(&self) -> &str {
        &self.inner.config.database
    }

    /// Cancels every running statement (they fail with SQLSTATE 57P01) and
    /// makes new statements fail the same way. Used at server shutdown.
    pub fn shutdown(&self) {
        self.inner.shutdown.cancel();
    }

    /// Stops the catalog's background work (continuous view maintenance)
    /// and waits for it; call after [`Engine::shutdown`] once sessions ended.
    pub async fn close(&self) {
        self.inner.catalog.close().await;
    }

    /// How many statements are running now (planning, executing, or streaming results).
    pub fn active_statements(&self) -> usize {
        self.inner.active.count()
    }

    /// Whether [`Engine::shutdown`] was called.
    pub fn is_shut_down(&self) -> bool {
        self.inner.shutdown.is_cancelled()
    }

    /// Stage files of BSP queries on disk now; 0 once every query has ended.
    pub fn stage_files(&self) -> usize {
        self.inner.spill.files()
    }

    /// Failures to inject into the tasks of BSP queries (for tests).
    #[doc(hidden)]
    pub fn faults(&self) -> &crate::exec::bsp::Faults {
        &self.inner.faults
    }

    /// How BSP queries run: spill store, concurrency, retries.
    pub(crate) fn bsp_options(&self) -> crate::exec::bsp::BspOptions {
        bsp_options(&self.inner.config, &self.inner.spill, &self.inner.faults, self.inner.distribution.clone())
    }

    pub(crate) fn inner(&self) -> &EngineInner {
        &self.inner
    }

    pub(crate) fn bump_catalog_version(&self) {
        self.inner.catalog_version.fetch_add(1, Ordering::SeqCst);
    }

    pub(crate) fn catalog_version(&self) -> u64 {
        self.inner.catalog_version.load(Ordering::SeqCst)
    }
}

/// The configuration every session starts from.
fn session_config(config: &EngineConfig) -> SessionConfig {
    let mut session_config = SessionConfig::new()
        .with_information_schema(false)
        .with_create_default_catalog_and_schema(false)
        .with_default_catalog_and_schema(&config.database, DEFAULT_SCHEMA)
        .with_batch_size(config.batch_size.max(1));
    // TIMESTAMPTZ values carry a zone; UTC until a session sets TimeZone.
    session_config.options_mut().execution.time_zone = Some("UTC".to_string());
    // A join's build side is collected once (no repartition of either side)
    // when estimated under this many bytes. DataFusion's 1 MiB default is
    // decided on byte sizes, which Dynamic Table scans report and plain
    // Parquet scans mostly do not (those fall back to the row threshold):
    // filtered `part` in TPC-H q16/q19 (≈ 40k rows, ~2 MB) was repartitioned
    // with all of `partsupp`/`lineitem` against it. Still small enough to
    // build once, on one thread.
    session_config.options_mut().optimizer.hash_join_single_partition_threshold = 8 << 20;
    if config.target_partitions > 0 {
        session_config = session_config.with_target_partitions(config.target_partitions);
    }
    session_config
}

/// DataFusion's context with the engine's functions, types and analyzer
/// rules over `catalogs`.
fn functions(
    config: &EngineConfig,
    session_config: SessionConfig,
    runtime: Arc<datafusion::execution::runtime_env::RuntimeEnv>,
    catalogs: Arc<MemoryCatalogProviderList>,
) -> Result<SessionContext> {
    let state = SessionStateBuilder::new()
        .with_config(session_config)
        .with_runtime_env(runtime)
        .with_catalog_list(catalogs)
        .with_default_features()
        .with_physical_optimizer_rules(crate::exec::joins::physical_rules())
        .with_query_planner(Arc::new(crate::exec::shared::Planner))
        // After type coercion: Postgres' checked integers and scalar subqueries.
        .with_analyzer_rule(Arc::new(crate::semantics::CheckedArithmetic))
        .with_analyzer_rule(Arc::new(crate::semantics::UncorrelatedInSubquery))
        .with_analyzer_rule(Arc::new(crate::semantics::ScalarSubqueryCardinality))
        .with_analyzer_rule(Arc::new(crate::semantics::RegprocText))
        .build();
    let base = SessionContext::new_with_state(state);
    datafusion_pg_catalog::setup_pg_catalog(&base, &config.database, EmptyContextProvider)
        .map_err(|e| Error::from(*e))?;
    base.register_udf(constant_text_udf("version", version_string()));
    base.register_udf(crate::semantics::like_escape_udf());
    base.register_udf(crate::semantics::json_build_object_udf());
    base.register_udf(crate::semantics::expand_array_udf());
    base.register_udf(crate::semantics::to_char_udf());
    base.register_udf(crate::semantics::to_timestamp_udf());
    base.register_udf(crate::semantics::to_date_udf());
    for udf in crate::semantics::text_udfs() {
        base.register_udf(udf);
    }
    for udf in crate::semantics::arithmetic_udfs() {
        base.register_udf(ScalarUDF::clone(udf));
    }
    {
        // Postgres types DataFusion has no name for, on top of pg_catalog's oid aliases.
        let state = base.state_ref();
        let current = state.read().clone();
        *state.write() = SessionStateBuilder::new_from_existing(current)
            .with_type_planner(Arc::new(crate::types::PostgresTypePlanner::default()))
            .build();
        use datafusion::execution::FunctionRegistry;
        state.write().register_expr_planner(Arc::new(crate::semantics::UnknownLiteralPlanner))?;
        // `sum` of bigint is numeric, under DataFusion's name.
        state.write().register_udaf(crate::semantics::sum_udaf())?;
    }

    Ok(base)
}

impl Engine {
    /// DataFusion's state with the engine's functions and settings and no
    /// relations: what a worker needs to run the plan fragments it is sent.
    ///
    /// # Errors
    /// An invalid configuration.
    pub fn function_state(config: &EngineConfig) -> Result<datafusion::execution::SessionState> {
        let catalogs = Arc::new(MemoryCatalogProviderList::new());
        catalogs.register_catalog(config.database.clone(), Arc::new(datafusion::catalog::MemoryCatalogProvider::new()));
        let runtime = RuntimeEnvBuilder::new().build_arc()?;
        Ok(functions(config, session_config(config), runtime, catalogs)?.state())
    }
}

/// A zero-argument function returning a fixed text.
pub(crate) fn constant_text_udf(name: &str, value: String) -> ScalarUDF {
    create_udf(
        name,
        vec![],
        DataType::Utf8,
        Volatility::Stable,
        Arc::new(move |_args: &[ColumnarValue]| Ok(ColumnarValue::Scalar(ScalarValue::Utf8(Some(value.clone()))))),
    )
}

/// A one-argument text function computed by `f`, row by row.
pub(crate) fn text_udf(
    name: &str,
    f: impl Fn(&str) -> datafusion::error::Result<Option<String>> + Send + Sync + 'static,
) -> ScalarUDF {
    create_udf(
        name,
        vec![DataType::Utf8],
        DataType::Utf8,
        Volatility::Stable,
        Arc::new(move |args: &[ColumnarValue]| {
            let arrays = ColumnarValue::values_to_arrays(args)?;
            let input = datafusion::common::cast::as_string_array(&arrays[0])?;
            let out: StringArray = input
                .iter()
                .map(|v| v.map(&f).transpose().map(Option::flatten))
                .collect::<datafusion::error::Result<_>>()?;
            Ok(ColumnarValue::Array(Arc::new(out)))
        }),
    )
}

/// How BSP queries run: spill store, concurrency, retries.
fn bsp_options(
    config: &EngineConfig,
    spill: &crate::exec::bsp::SpillArea,
    faults: &Arc<crate::exec::bsp::Faults>,
    distribution: Option<Arc<crate::exec::distributed::Distribution>>,
) -> crate::exec::bsp::BspOptions {
    // Asked once: the answer reads cgroup files, and this runs for every query.
    static CORES: std::sync::LazyLock<usize> =
        std::sync::LazyLock::new(|| std::thread::available_parallelism().map_or(2, std::num::NonZeroUsize::get));
    let cores = *CORES;
    crate::exec::bsp::BspOptions {
        store: Arc::clone(spill.store()),
        concurrency: if config.stage_concurrency == 0 { cores } else { config.stage_concurrency },
        retries: config.task_retries,
        faults: Arc::clone(faults),
        pinning: Arc::new(crate::dynamic::scan::DynamicSnapshotPinning),
        distribution,
    }
}
