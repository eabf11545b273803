//! Running a query: in its execution mode (see [`crate::exec`]), in a
//! memory pool of its own, recorded in `sys.queries`; and `EXPLAIN
//! [ANALYZE]`, which shows the mode chosen, why, and the stages.

use std::sync::Arc;

use datafusion::arrow::array::{RecordBatch, StringArray};
use datafusion::logical_expr::LogicalPlan;
use datafusion::physical_plan::SendableRecordBatchStream;
use futures::StreamExt;

use super::{Session, batch_stream, text_schema};
use crate::error::{Error, Result};
use crate::sql::Statement;

impl Session {
    /// Starts a query in its mode (see [`crate::exec`]), in a pool of the
    /// session's `memory_limit` when it has one (see [`crate::memory`]),
    /// else in the engine's. The query is recorded in `sys.queries`.
    pub(super) async fn execute_frame(
        &self,
        df: datafusion::dataframe::DataFrame,
        statement: &Statement,
    ) -> Result<SendableRecordBatchStream> {
        let record = self.engine.inner().queries.start(self.id, &self.info.user, statement.to_string());
        let query = self.query(df, Some(Arc::clone(&record)));
        let result = async {
            let planned = query.plan().await?;
            Ok(query.run(planned).await?.stream)
        }
        .await;
        match result {
            Ok(stream) => Ok(record.watch(stream)),
            Err(e) => {
                record.fail(&e);
                Err(e)
            }
        }
    }

    /// A query of `df` with this session's settings, in a pool of its own.
    fn query(
        &self,
        df: datafusion::dataframe::DataFrame,
        record: Option<Arc<crate::queries::QueryRecord>>,
    ) -> crate::exec::Query {
        let (limit, requested, distributed) = match self.vars.read() {
            Ok(vars) => (vars.memory_limit(), vars.execution_mode(), vars.distributed()),
            Err(_) => (None, crate::config::ExecutionMode::default(), crate::config::DistributedMode::default()),
        };
        let mut options = self.engine.bsp_options();
        if let Some(distribution) = &options.distribution {
            options.distribution = Some(Arc::new(distribution.with_mode(distributed)));
        }
        let (state, logical) = df.into_parts();
        let after = self.engine.config().bsp_after_ms;
        let (mut query, pool) = crate::exec::Query::new(
            state,
            logical,
            limit.map(|l| usize::try_from(l).unwrap_or(usize::MAX)),
            requested,
            options,
            (after > 0).then(|| std::time::Duration::from_millis(after)),
        );
        if let Some(record) = &record {
            record.set_pool(pool);
        }
        query.record = record.map(|r| r as Arc<dyn crate::exec::QueryObserver>);
        query
    }

    /// `EXPLAIN [VERBOSE] query`: the plans, the execution mode chosen and
    /// why, and the stage tree of a BSP plan. `EXPLAIN ANALYZE` runs the
    /// query and adds each stage's rows, bytes, attempts and spill.
    pub(super) async fn explain(
        &self,
        inner: &LogicalPlan,
        verbose: bool,
        analyze: bool,
        statement: &Statement,
    ) -> Result<SendableRecordBatchStream> {
        use datafusion::physical_plan::display::DisplayableExecutionPlan;
        let df = self.ctx.execute_logical_plan(inner.clone()).await?;
        let optimized = df.clone().into_optimized_plan()?;
        let mut rows: Vec<(String, String)> = vec![("logical_plan".into(), optimized.display_indent().to_string())];
        if !analyze {
            let query = self.query(df, None);
            let planned = query.plan().await?;
            rows.push((
                "physical_plan".into(),
                DisplayableExecutionPlan::new(planned.plan.as_ref()).indent(verbose).to_string(),
            ));
            rows.push(("execution_mode".into(), format!("{}: {}", planned.mode.as_str(), planned.reason)));
            if planned.staged() {
                rows.push(("stages".into(), crate::exec::stage::render(&planned.plan, false)));
            }
            if planned.mode == crate::exec::Mode::Distributed {
                rows.push(("distributed_stages".into(), crate::exec::distributed::render(&planned.plan, false)));
            }
        } else {
            let record = self.engine.inner().queries.start(self.id, &self.info.user, statement.to_string());
            let query = self.query(df, Some(Arc::clone(&record)));
            let outcome = async {
                let planned = query.plan().await?;
                let running = query.run(planned).await?;
                let reason = running.reason.clone();
                let mut stream = Arc::clone(&record).watch(running.stream);
                let mut output_rows = 0;
                while let Some(batch) = stream.next().await {
                    output_rows += batch?.num_rows();
                }
                Ok::<_, Error>((running.plan, running.mode, reason, running.bsp, output_rows))
            }
            .await;
            let (plan, mode, reason, bsp, output_rows) = match outcome {
                Ok(done) => done,
                Err(e) => {
                    record.fail(&e);
                    return Err(e);
                }
            };
            rows.push((
                "Plan with Metrics".into(),
                DisplayableExecutionPlan::with_metrics(plan.as_ref()).indent(verbose).to_string(),
            ));
            rows.push(("execution_mode".into(), format!("{}: {reason}", mode.as_str())));
            if mode == crate::exec::Mode::Distributed {
                rows.push(("distributed_stages".into(), crate::exec::distributed::render_analyzed(&plan).await));
            }
            if let Some(bsp) = bsp {
                let attempts: usize = bsp.stage_stats().iter().map(|s| s.attempts).sum();
                rows.push((
                    "stages".into(),
                    format!(
                        "{}{} stages, {attempts} task attempts, {output_rows} rows returned\n",
                        crate::exec::stage::render(&plan, true),
                        bsp.stage_stats().len()
                    ),
                ));
            }
        }
        let schema = text_schema(&["plan_type", "plan"]);
        let batch = RecordBatch::try_new(
            Arc::clone(&schema),
            vec![
                Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.0.as_str()))),
                Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.1.as_str()))),
            ],
        )?;
        Ok(batch_stream(schema, vec![batch]))
    }
}
