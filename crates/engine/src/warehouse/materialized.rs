//! Starting materialized views in their mode (continuous maintenance or
//! scheduled full refresh, [`views::refresh`]), and `ALTER MATERIALIZED
//! VIEW … SUSPEND | RESUME | REFRESH | SET (…)`.

use std::sync::Arc;

use streamhouse_storage as storage;

use super::{DynamicCatalog, Relation};
use crate::catalog::BatchQueriesRef;
use crate::catalog::{CreateMaterializedView, RelationName, ViewAlteration, errors};
use crate::config::ViewsConfig;
use crate::error::{Error, Result, StatusCode};
use crate::views::refresh::{self, MODE_PROPERTY, Outcome, Refresh, RefreshMode, Refresher, Requested};
use crate::views::{self, MaterializedView, ViewDefinition, schedule};

/// What starting a materialized view needs.
#[derive(Clone)]
pub(super) struct Starter {
    pub ctx: datafusion::prelude::SessionContext,
    pub config: ViewsConfig,
    pub arrangements: Arc<views::arrange::Arrangements>,
    pub batch: BatchQueriesRef,
    pub log: Arc<schedule::RefreshLog>,
}

impl Starter {
    /// Plans a view's query and starts keeping it up to date in its mode:
    /// a continuous view from its recorded positions (after a backfill when
    /// it has none: a new view, or one whose backfill a crash interrupted);
    /// a full view gets its refresher (the scheduler or CREATE refreshes
    /// it); a suspended view only learns its sources.
    pub async fn start(self, view: Arc<MaterializedView>) -> Result<()> {
        let settings = view.refresh_settings();
        let query = views::plan_query(&self.ctx, &view.definition.query).await?;
        let analyzed = views::ViewPlan::analyze(query.clone());
        if settings.suspended {
            view.set_sources(refresh::sources_of(&query)?);
            view.set_maintenance("suspended");
            if settings.mode == RefreshMode::Full
                && let Some(refresher) = self.refresher(&view, analyzed).await?
            {
                let positions = refresher.recorded_positions()?.unwrap_or_default();
                refresher.publish(&positions, None);
                view.set_refresher(Some(refresher));
            }
            return Ok(());
        }
        if settings.mode == RefreshMode::Full {
            let refresher = self
                .refresher(&view, analyzed)
                .await?
                .ok_or_else(|| Error::internal(format!("materialized view {} has no refresher", view.name)))?;
            let recorded = refresher.recorded_positions()?;
            if let Some(positions) = &recorded {
                refresher.publish(positions, None);
            }
            view.set_refresher(Some(refresher));
            if recorded.is_none() {
                // New, or its first refresh was interrupted: filled before it is served.
                schedule::refresh_once(&view, &self.log, "create", 1).await?;
            }
            return Ok(());
        }
        view.set_refresher(None);
        let plan = analyzed?;
        view.set_sources(plan.sources.clone());
        let mut maintainer =
            views::maintain::ViewMaintainer::new(Arc::clone(&view), plan, self.ctx.clone(), self.config.clone())?;
        let positions = match maintainer.recorded_positions()? {
            Some(positions) => {
                let refreshed = view
                    .table()
                    .latest_snapshot()
                    .is_some_and(|s| s.properties.get(MODE_PROPERTY).map(String::as_str) == Some("full"));
                if refreshed {
                    // Full refreshes wrote its rows and left its state tables behind.
                    maintainer.rebuild_state(&positions).await?;
                    let mut txn = view.table().begin().await?;
                    txn.set_property(MODE_PROPERTY, RefreshMode::Continuous.as_str());
                    txn.commit().await?;
                }
                positions
            }
            None => maintainer.backfill().await?,
        };
        // What the view reflects is known now; building its arrangements may take a while.
        maintainer.publish(&positions, None);
        maintainer.arrange(&positions, &self.arrangements).await?;
        view.set_task(tokio::spawn(maintainer.run(positions, view.stop_token())));
        Ok(())
    }

    /// The refresher of a full (or suspended) view; `None` for a
    /// continuous view whose query cannot be maintained (it cannot be).
    async fn refresher(
        &self,
        view: &Arc<MaterializedView>,
        analyzed: Result<views::ViewPlan>,
    ) -> Result<Option<Arc<Refresher>>> {
        let maintainer = match (&view.definition.batch_key, analyzed) {
            (Some(_), _) => None,
            (None, Ok(plan)) => Some(views::maintain::ViewMaintainer::new(
                Arc::clone(view),
                plan,
                self.ctx.clone(),
                self.config.clone(),
            )?),
            (None, Err(e)) if view.refresh_settings().mode == RefreshMode::Full => return Err(e),
            (None, Err(_)) => return Ok(None),
        };
        let refresher =
            Refresher::new(Arc::clone(view), maintainer, self.ctx.clone(), self.batch.clone(), self.config.clone())
                .await?;
        Ok(Some(Arc::new(refresher)))
    }
}

/// The definition, table schema and options of a new view: its mode chosen
/// from its options and whether its query can be maintained.
pub(super) async fn define(
    ctx: &datafusion::prelude::SessionContext,
    request: &CreateMaterializedView,
    config: &ViewsConfig,
) -> Result<(ViewDefinition, datafusion::arrow::datatypes::SchemaRef, storage::TableOptions)> {
    let query = views::plan_query(ctx, &request.query).await?;
    let mut options = request.options.clone();
    let (requested, freshness) = Refresh::take_options(&mut options)?;
    let analyzed = views::ViewPlan::analyze(query.clone());
    let settings = Refresh::choose(
        requested.unwrap_or_default(),
        freshness,
        analyzed.as_ref().map(|_| ()),
        config.full_refresh_threshold,
    )?;
    match analyzed {
        Ok(plan) => views::define(request, &plan, settings),
        Err(_) => views::define_batch(request, &query, settings),
    }
}

impl DynamicCatalog {
    pub(super) fn starter(&self) -> Result<Starter> {
        Ok(Starter {
            ctx: self.view_context()?,
            config: self.views.clone(),
            arrangements: Arc::clone(&self.arrangements),
            batch: self
                .batch
                .get()
                .cloned()
                .ok_or_else(|| Error::internal("the catalog is not bound to an engine yet"))?,
            log: Arc::clone(&self.refreshes),
        })
    }

    /// Starts `view` in its mode; a new full view is refreshed once
    /// before this returns (as a continuous one is backfilled).
    pub(super) async fn start_view(&self, view: Arc<MaterializedView>) -> Result<()> {
        self.starter()?.start(Arc::clone(&view)).await?;
        if view.is_full() && !view.refresh_settings().suspended {
            self.wake_scheduler();
        }
        Ok(())
    }

    /// Wakes the refresh scheduler, starting it first (on the current
    /// tokio runtime) if it has not started yet.
    pub(super) fn wake_scheduler(&self) {
        let scheduler = self.scheduler.get_or_init(|| {
            let scheduler =
                Arc::new(schedule::Scheduler::new(self.view_lister(), self.views.clone(), Arc::clone(&self.refreshes)));
            match tokio::runtime::Handle::try_current() {
                Ok(runtime) => {
                    runtime.spawn(Arc::clone(&scheduler).run(self.stop.clone()));
                }
                Err(_) => tracing::error!("no tokio runtime: full materialized views are not refreshed on schedule"),
            }
            scheduler
        });
        scheduler.wake();
    }

    /// Stores `view`'s definition as it is now (its refresh settings as altered).
    async fn store_definition(&self, view: &MaterializedView) -> Result<()> {
        let location = views::definition_path(&view.dir);
        object_store::ObjectStoreExt::put(
            &self.store,
            &location,
            storage::frame::encode(&view.current_definition())?.into(),
        )
        .await
        .map_err(|e| Error::new(StatusCode::Io, format!("cannot store materialized view {}: {e}", view.name)))?;
        Ok(())
    }

    fn materialized_view(&self, name: &RelationName) -> Result<Option<Arc<MaterializedView>>> {
        let schemas = self.schemas.read().map_err(errors::poisoned)?;
        match schemas.get(&name.schema).and_then(|s| s.get(&name.name)) {
            None => Ok(None),
            Some(Relation::MaterializedView(view)) => Ok(Some(Arc::clone(view))),
            Some(other) => Err(errors::wrong_kind(name, crate::catalog::RelationKind::MaterializedView, other.kind())),
        }
    }

    /// `ALTER MATERIALIZED VIEW name …`: what it did, as a notice; `None`
    /// when the view does not exist.
    pub(super) async fn alter_view(&self, name: &RelationName, action: ViewAlteration) -> Result<Option<String>> {
        let Some(view) = self.materialized_view(name)? else { return Ok(None) };
        let settings = view.refresh_settings();
        let message = match action {
            ViewAlteration::Suspend if settings.suspended => format!("materialized view {name} is already suspended"),
            ViewAlteration::Suspend => {
                view.stop().await;
                view.set_refresh_settings(Refresh { suspended: true, ..settings });
                self.store_definition(&view).await?;
                format!("materialized view {name} suspended: it keeps its content until RESUME")
            }
            ViewAlteration::Resume if !settings.suspended => format!("materialized view {name} is not suspended"),
            ViewAlteration::Resume => {
                view.set_refresh_settings(Refresh { suspended: false, ..settings });
                self.store_definition(&view).await?;
                view.restartable();
                self.start_view(Arc::clone(&view)).await?;
                format!("materialized view {name} resumed ({} maintenance)", view.refresh_settings().mode.as_str())
            }
            ViewAlteration::Refresh => self.refresh_now(&view).await?,
            ViewAlteration::Set(options) => self.set_options(&view, options).await?,
        };
        Ok(Some(message))
    }

    /// `ALTER MATERIALIZED VIEW … REFRESH`.
    async fn refresh_now(&self, view: &Arc<MaterializedView>) -> Result<String> {
        let name = &view.name;
        let settings = view.refresh_settings();
        if settings.mode == RefreshMode::Continuous {
            if settings.suspended {
                return Err(Error::new(
                    StatusCode::ObjectNotInPrerequisiteState,
                    format!("materialized view {name} is suspended: RESUME it to bring it up to date"),
                ));
            }
            // Continuous views are refreshed by every commit: wait until this one reflects them all.
            let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(24 * 3600);
            view.wait_fresh(deadline).await?;
            return Ok(format!("materialized view {name} is continuous: it reflects every source commit"));
        }
        let outcome = schedule::refresh_once(view, &self.refreshes, "manual", 1).await;
        match &outcome {
            Ok(_) => {
                crate::lock(&view.schedule).retry_after_ms = None;
                view.progress.send_modify(|p| p.error = None);
            }
            Err(e) => view.progress.send_modify(|p| p.error = Some(e.message().to_string())),
        }
        Ok(match outcome? {
            Outcome::Skipped => {
                format!("materialized view {name} is up to date: no source changed since its last refresh")
            }
            Outcome::Refreshed { snapshot, summary } => format!(
                "refreshed materialized view {name}: {} rows inserted, {} updated, {} deleted (snapshot {snapshot}, {})",
                summary.inserted, summary.updated, summary.deleted, summary.execution
            ),
        })
    }

    /// `ALTER MATERIALIZED VIEW … SET (freshness = …, refresh_mode = …)`:
    /// the mode chosen again; a view that changes mode keeps its rows and
    /// goes on from the source snapshots they reflect.
    async fn set_options(
        &self,
        view: &Arc<MaterializedView>,
        mut options: std::collections::BTreeMap<String, String>,
    ) -> Result<String> {
        let name = &view.name;
        let settings = view.refresh_settings();
        let (requested, freshness) = Refresh::take_options(&mut options)?;
        if let Some(other) = options.keys().next() {
            return Err(Error::new(
                StatusCode::InvalidParameterValue,
                format!("ALTER MATERIALIZED VIEW … SET takes freshness and refresh_mode, not \"{other}\""),
            ));
        }
        let requested = requested.unwrap_or(settings.requested);
        let freshness = freshness.or(settings.freshness_ms);
        let query = views::plan_query(&self.view_context()?, &view.definition.query).await?;
        let analyzed = views::ViewPlan::analyze(query).map(|_| ());
        let incremental = match (&view.definition.batch_key, &analyzed) {
            (Some(_), Ok(())) => Err(Error::unsupported(format!(
                "materialized view {name} was created for full refresh only (its query could not be maintained \
                 then): CREATE OR REPLACE it to maintain it continuously"
            ))),
            _ => analyzed,
        };
        let mut chosen =
            Refresh::choose(requested, freshness, incremental.as_ref().map(|_| ()), self.views.full_refresh_threshold)?;
        chosen.suspended = settings.suspended;
        if chosen.mode == RefreshMode::Full && view.definition.emit_on_window_close {
            return Err(Error::unsupported(format!(
                "materialized view {name} emits on window close, which needs continuous maintenance: keep its \
                 freshness below views.full_refresh_threshold, or refresh_mode = 'continuous'"
            )));
        }
        let switching = chosen.mode != settings.mode;
        if switching {
            view.stop().await;
        }
        view.set_refresh_settings(chosen.clone());
        self.store_definition(view).await?;
        if switching && !chosen.suspended {
            view.restartable();
            if let Err(e) = self.start_view(Arc::clone(view)).await {
                view.progress.send_modify(|p| p.error = Some(e.message().to_string()));
                return Err(e);
            }
        }
        self.wake_scheduler();
        let freshness = chosen.freshness_ms.map_or_else(|| "none".to_string(), refresh::show_ms);
        let mut message = format!(
            "materialized view {name}: refresh_mode {} ({}), freshness {freshness}",
            chosen.mode.as_str(),
            chosen.reason
        );
        if requested == Requested::Auto && switching {
            message.push_str("; it keeps its rows and goes on from the source snapshots they reflect");
        }
        Ok(message)
    }
}
