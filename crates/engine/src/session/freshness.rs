//! Reads of materialized views are fresh or say so: before a statement
//! runs, each materialized view it reads (directly, or through plain views)
//! must reflect every commit its sources had when the statement began —
//! waited for up to `view_read_timeout`, else 55000 naming the view and its
//! lag. `SET view_staleness = 'allow'` reads the latest view snapshot at
//! once, with a NOTICE giving the lag. The wait happens here, before the
//! physical plan pins snapshots, never inside `TableProvider::scan`.

use std::sync::Arc;

use datafusion::catalog::view::ViewTable;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::logical_expr::LogicalPlan;

use super::{NoticeSeverity, Session};
use crate::cancel::QueryControl;
use crate::error::Result;
use crate::views::MaterializedView;

/// The materialized views `plan` reads, through plain views too, once each.
fn views_read(plan: &LogicalPlan, out: &mut Vec<Arc<MaterializedView>>) {
    let _ = plan.apply_with_subqueries(|node| {
        if let LogicalPlan::TableScan(scan) = node
            && let Ok(provider) = datafusion::datasource::source_as_provider(&scan.source)
        {
            if let Some(view) = provider.downcast_ref::<MaterializedView>().and_then(MaterializedView::arc) {
                if !out.iter().any(|v| v.name == view.name) {
                    out.push(view);
                }
            } else if let Some(history) = provider.downcast_ref::<crate::views::ViewSystemTable>() {
                if !out.iter().any(|v| v.name == history.view.name) {
                    out.push(Arc::clone(&history.view));
                }
            } else if let Some(plain) = provider.downcast_ref::<ViewTable>() {
                views_read(plain.logical_plan(), out);
            }
        }
        Ok(TreeNodeRecursion::Continue)
    });
}

impl Session {
    /// Waits for (or, with `view_staleness = 'allow'`, reports the lag of)
    /// every materialized view `plan` reads.
    ///
    /// # Errors
    /// A view still behind after `view_read_timeout` (55000); a view whose
    /// maintainer failed; cancellation.
    pub(super) async fn fresh_views(&mut self, plan: &LogicalPlan, control: &QueryControl) -> Result<()> {
        let mut views = Vec::new();
        match plan {
            LogicalPlan::Statement(datafusion::logical_expr::Statement::Execute(execute)) => {
                if let Some(prepared) = self.sql_prepared.get(&execute.name) {
                    views_read(prepared, &mut views);
                }
            }
            LogicalPlan::Ddl(_) | LogicalPlan::Statement(_) => {}
            other => views_read(other, &mut views),
        }
        if views.is_empty() {
            return Ok(());
        }
        let wait = self.vars.read().ok().and_then(|v| v.view_wait());
        for view in views {
            let notice = control.run(async { view.before_read(wait).await }).await?;
            if let Some(notice) = notice {
                self.notice(NoticeSeverity::Notice, notice);
            }
        }
        Ok(())
    }
}
