//! The fast path of a prepared single-row `INSERT INTO t [(columns)] VALUES
//! ($1, $2, …)` executed with bound parameters: what an application's
//! insert loop runs (every driver prepares it once and executes it per
//! row). The bound values become a one-row batch of the table's columns —
//! cast, DEFAULTs filled in and NOT NULL checked as COPY does — written
//! through the table's group commit, with no DataFusion planning per
//! execution. Planning a one-row INSERT cost more CPU than committing it,
//! and on a small machine that CPU is what many concurrent writers wait
//! on. Anything else (another shape, a view as target, a catalog changed
//! since PREPARE) takes the general path, which gives the same result.

use std::sync::Arc;

use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::{Field, Schema};
use datafusion::common::ParamValues;
use futures::stream;
use streamhouse_storage as storage;

use super::{Output, Prepared, Session, TransactionStatus, coerce_parameters, parameter_types};
use crate::catalog::RelationKind;
use crate::dynamic::DynamicTable;
use crate::dynamic::ingest::{Conform, write_stream};
use crate::error::Result;
use crate::session::CommandComplete;

impl Session {
    /// Runs `prepared` on the fast path when it is a prepared single-row
    /// INSERT of parameters into a table; `Ok(None)` when it is not one
    /// (the caller runs it the general way).
    pub(super) async fn insert_parameters(
        &mut self,
        prepared: &Prepared,
        params: &Option<ParamValues>,
    ) -> Result<Option<Output>> {
        let (Some(ParamValues::List(values)), Some(plan)) = (params, &prepared.plan) else { return Ok(None) };
        if prepared.catalog_version != self.engine.catalog_version() {
            return Ok(None);
        }
        let Some((table, columns)) = prepared.insert_of_parameters() else { return Ok(None) };
        let name = self.relation_name(&table)?;
        if self.engine.catalog().relation_kind(&name) != Some(RelationKind::Table) {
            return Ok(None);
        }
        let types = parameter_types(plan)?;
        if values.len() != types.len() {
            return Ok(None);
        }
        let (name, provider, _, sources) = self.copy_target(&table, &columns).await?;
        let Some(dynamic) = provider.downcast_ref::<DynamicTable>() else { return Ok(None) };
        if sources.iter().filter(|s| matches!(s, crate::dynamic::ingest::ColumnSource::Copied(_))).count()
            != values.len()
        {
            return Ok(None);
        }
        let ParamValues::List(values) = coerce_parameters(ParamValues::List(values.clone()), &types)? else {
            return Ok(None);
        };
        let mut fields = Vec::with_capacity(values.len());
        let mut arrays = Vec::with_capacity(values.len());
        for (i, value) in values.iter().enumerate() {
            let array = value.value.to_array_of_size(1)?;
            fields.push(Field::new(format!("${}", i + 1), array.data_type().clone(), true));
            arrays.push(array);
        }
        let sent = RecordBatch::try_new(Arc::new(Schema::new(fields)), arrays)?;
        let target = provider.schema();
        let rows = Conform::new(&name.name, Arc::clone(&target), sources).apply(&sent, 1)?;
        let table = Arc::clone(dynamic.storage());
        let control = self.begin_statement();
        let written =
            control.run(write_stream(&table, &target, stream::iter([Ok(rows)]), storage::ValueKind::Upsert)).await?;
        storage::Table::schedule_maintenance(&table);
        if self.transaction_status() == TransactionStatus::InBlock {
            self.writes_in_block += 1;
        }
        Ok(Some(Output::Command(CommandComplete::new("INSERT").with_rows(written))))
    }
}
