//! A step of a view that keeps group state ([`super::super::state`]):
//! the change's per-group deltas applied to the touched groups' state — in
//! hidden columns of the view's rows, or in its state table
//! ([`super::super::groups`]) under a HAVING or for the open windows of a
//! view that emits on window close — and the rows that follow from it;
//! COUNT(DISTINCT) counted against the value counts
//! ([`super::super::distinct`]), committed first.

use std::collections::HashMap;
use std::sync::Arc;

use datafusion::arrow::array::{ArrayRef, AsArray, BinaryArray, RecordBatch};
use datafusion::arrow::compute::concat_batches;
use datafusion::arrow::datatypes::{DataType, Field, Schema};
use datafusion::catalog::MemTable;
use datafusion::common::ScalarValue;
use datafusion::datasource::provider_as_source;
use datafusion::logical_expr::LogicalPlanBuilder;
use streamhouse_storage as storage;

use super::super::KeyLayout;
use super::super::distinct::{self, DistinctTable};
use super::super::groups::{Entry, GroupTable};
use super::super::plan::{At, GroupState};
use super::super::state::{self, Delta, Group};
use super::{ViewMaintainer, old_rows_in, take_rows, weights};
use crate::error::{Error, Result};

impl ViewMaintainer {
    /// The view's rows (with their state) for groups with their values.
    pub(super) async fn group_rows(
        &self,
        state: &GroupState,
        groups: &[(Vec<ScalarValue>, Group)],
    ) -> Result<RecordBatch> {
        if groups.is_empty() {
            return Ok(RecordBatch::new_empty(Arc::clone(&self.storage_schema)));
        }
        let values: Vec<&[ScalarValue]> = groups.iter().map(|(v, _)| v.as_slice()).collect();
        let states: Vec<&Group> = groups.iter().map(|(_, g)| g).collect();
        let columns = state::aggregate_columns(state, &values, &states)?;
        let mut fields: Vec<Field> =
            (0..state.width()).map(|i| Field::new(format!("c{i}"), state.output_type(i).clone(), true)).collect();
        fields.push(Field::new("__row", DataType::Int64, false));
        let schema = Arc::new(Schema::new(fields));
        let batch = RecordBatch::try_new(Arc::clone(&schema), columns)?;
        let rewritten = self.plan.over_groups(Arc::new(MemTable::try_new(schema, vec![vec![batch]])?))?;
        let fields: Option<Vec<Field>> = self
            .state_offset
            .map(|offset| self.storage_schema.fields()[offset..].iter().map(|f| f.as_ref().clone()).collect());
        let mut out = Vec::new();
        for batch in self.run_plan(rewritten.plan.clone()).await? {
            let mut columns = self.view_columns(&batch, &rewritten)?;
            if let Some(fields) = &fields {
                // State in hidden columns of the view's rows.
                let order: Vec<&Group> = weights(&batch, &rewritten)?.iter().map(|&i| states[i as usize]).collect();
                columns.extend(state::state_columns(state, fields, &order)?);
            }
            out.push(RecordBatch::try_new(Arc::clone(&self.storage_schema), columns)?);
        }
        Ok(concat_batches(&self.storage_schema, &out)?)
    }

    /// Adds the parts of a change to the state of the groups it touches and
    /// gives the rows to write: upserts of groups that exist after the
    /// change (and pass a HAVING), deletes of those that no longer do. A
    /// view with a state table commits the new state there first (a step of
    /// source `source` from `before` to `positions`).
    ///
    /// A view that emits on window close drops (and counts) the change of
    /// windows that had closed before the step, keeps open windows as
    /// state, and writes the rows of the windows the watermark passes in
    /// this step, once; their state goes at the next such step.
    pub(super) async fn update_groups(
        &self,
        state: &GroupState,
        source: usize,
        before: &[u64],
        positions: &[u64],
        deltas: Vec<(Vec<u8>, Delta)>,
        mut distinct: HashMap<distinct::Pair, i64>,
    ) -> Result<(RecordBatch, Vec<storage::ValueKind>)> {
        let group_keys = self.plan.group_keys();
        let empty = || (RecordBatch::new_empty(Arc::clone(&self.storage_schema)), vec![]);
        let (closed_before, closed_now) = match self.window_end {
            Some(_) => (self.watermark(before).await?, self.watermark(positions).await?),
            None => (None, None),
        };
        let closing = self.window_end.is_some() && closed_now > closed_before;
        if deltas.is_empty() && !closing {
            return Ok(empty());
        }
        // A step replayed after its state committed without the view: the state is the new one.
        let ahead = |recorded: Option<String>| -> Result<bool> {
            Ok(match recorded {
                Some(recorded) => self.parse_positions(&recorded)?[source] >= positions[source],
                None => false,
            })
        };
        let replayed = ahead(self.group_table.as_ref().and_then(GroupTable::positions))?;
        let distinct_replayed = ahead(self.distinct_table.as_ref().and_then(DistinctTable::positions))?;
        let mut deltas = match self.window_end {
            Some(end) => {
                let mut open = Vec::with_capacity(deltas.len());
                let mut late = 0u64;
                let mut late_groups = std::collections::HashSet::new();
                for (key, delta) in deltas {
                    if window_closed(&delta.values[end], closed_before)? {
                        late += delta.input_rows().unsigned_abs();
                        late_groups.insert(key);
                    } else {
                        open.push((key, delta));
                    }
                }
                if !replayed {
                    self.view.late_rows.fetch_add(late, std::sync::atomic::Ordering::Relaxed);
                }
                distinct.retain(|(group, _), _| !late_groups.contains(group));
                open
            }
            None => deltas,
        };
        // COUNT(DISTINCT): the values that came and went, counted against their stored rows.
        let mut distinct_counts = Vec::new();
        if let Some(table) = &self.distinct_table
            && !distinct.is_empty()
        {
            let pairs: Vec<&distinct::Pair> = distinct.keys().collect();
            let stored = table.get(&pairs).await?;
            let (moved, counts) = distinct::transitions(&distinct, &stored, distinct_replayed)?;
            let index: HashMap<&[u8], usize> = deltas.iter().enumerate().map(|(i, (k, _))| (k.as_slice(), i)).collect();
            let mut changes = Vec::with_capacity(moved.len());
            for ((group, j), step) in moved {
                let at = index
                    .get(group.as_slice())
                    .ok_or_else(|| Error::internal("a distinct value of no changed group"))?;
                changes.push((*at, j, step));
            }
            for (at, j, step) in changes {
                deltas[at].1.add_distinct(j, step);
            }
            distinct_counts = counts;
        }
        let eowc = self.window_end.is_some();
        // The touched groups' stored rows, looked up by key (a window
        // closing view has rows of closed windows only: none to look up).
        let old_rows = if eowc || deltas.is_empty() {
            RecordBatch::new_empty(Arc::clone(&self.storage_schema))
        } else {
            self.view.table().get(&self.lookup_keys(&deltas)?).await?
        };
        let old_groups = self.row_groups(&old_rows)?;
        let old: HashMap<&[u8], usize> = old_groups.iter().enumerate().map(|(i, g)| (g.as_slice(), i)).collect();
        // Their state: in those rows, or in the state table.
        let (stored, state_rows) = match (&self.group_table, self.state_offset) {
            (Some(table), _) => {
                let keys: Vec<&[u8]> = deltas.iter().map(|(k, _)| k.as_slice()).collect();
                table.get(state, &keys).await?
            }
            (None, Some(offset)) => {
                let mut stored = HashMap::with_capacity(old.len());
                for (&group, &row) in &old {
                    stored.insert(group.to_vec(), state::stored(state, &old_rows, row, offset)?);
                }
                (stored, RecordBatch::new_empty(Arc::clone(&self.storage_schema)))
            }
            (None, None) => return Err(Error::internal("view keeps no group state")),
        };
        let vanished = || Group {
            rows: 0,
            n: vec![0; state.aggregates.len()],
            v: vec![ScalarValue::Null; state.aggregates.len()],
        };
        let mut next: Vec<(Vec<u8>, Vec<ScalarValue>, Option<Group>)> = Vec::with_capacity(deltas.len());
        let mut recompute = Vec::new();
        for (key, delta) in deltas {
            if replayed {
                let group = stored.get(&key).cloned().unwrap_or_else(vanished);
                next.push((key, delta.values, Some(group)));
                continue;
            }
            match delta.apply(state, stored.get(&key))? {
                Some(group) => next.push((key, delta.values, Some(group))),
                None => {
                    recompute.push(delta.values.clone());
                    next.push((key, delta.values, None));
                }
            }
        }
        if !recompute.is_empty() {
            let recomputed = self.recompute_groups(state, positions, recompute).await?;
            for (key, _, group) in &mut next {
                if group.is_none() {
                    *group = Some(recomputed.get(key).cloned().unwrap_or_else(vanished));
                }
            }
        }
        let next: Vec<Entry> = next
            .into_iter()
            .map(|(key, values, group)| {
                Ok((key, values, group.ok_or_else(|| Error::internal("a group without state"))?))
            })
            .collect::<Result<_>>()?;
        let exists = |group: &Group| group.rows > 0 || group_keys == 0;
        // Windows closing: every open window's state, as of this step.
        let mut closing_windows: Vec<(Vec<ScalarValue>, Group)> = Vec::new();
        let mut closed_earlier = RecordBatch::new_empty(Arc::clone(&self.storage_schema));
        if let (true, Some(table), Some(end)) = (closing, &self.group_table, self.window_end) {
            let (rows, entries) = table.scan(state).await?;
            let touched: HashMap<&[u8], &Entry> = next.iter().map(|e| (e.0.as_slice(), e)).collect();
            let mut earlier = Vec::new();
            for (row, (key, values, group)) in entries.iter().enumerate() {
                if window_closed(&values[end], closed_before)? {
                    // Shown at an earlier step: its state goes now.
                    earlier.push(row as u64);
                } else if !touched.contains_key(key.as_slice()) && window_closed(&values[end], closed_now)? {
                    closing_windows.push((values.clone(), group.clone()));
                }
            }
            for (_, values, group) in &next {
                if exists(group) && window_closed(&values[end], closed_now)? {
                    closing_windows.push((values.clone(), group.clone()));
                }
            }
            closed_earlier = take_rows(&rows, &earlier)?;
        }
        if let Some(table) = &self.distinct_table
            && !distinct_replayed
        {
            let closed_groups: Vec<&[u8]> = if closed_earlier.num_rows() > 0 {
                let keys = closed_earlier.column(0).as_binary::<i32>();
                (0..closed_earlier.num_rows()).map(|row| keys.value(row)).collect()
            } else {
                vec![]
            };
            let gone = table.of_groups(&closed_groups).await?;
            if !distinct_counts.is_empty() || gone.num_rows() > 0 {
                self.write_distinct_table(table, &distinct_counts, gone, self.positions_property(positions)).await?;
                super::super::groups::injected_failure()?;
            }
        }
        if let Some(table) = &self.group_table {
            if !replayed {
                self.write_group_table(
                    table,
                    state,
                    &next,
                    &state_rows,
                    &closed_earlier,
                    self.positions_property(positions),
                )
                .await?;
            }
            super::super::groups::injected_failure()?;
        }
        if eowc {
            let rows = self.group_rows(state, &closing_windows).await?;
            let kinds = vec![storage::ValueKind::Upsert; rows.num_rows()];
            return Ok((rows, kinds));
        }
        let mut upserts = Vec::new();
        let mut deletes = Vec::new();
        for (key, values, group) in next {
            if exists(&group) {
                upserts.push((values, group));
            } else if let Some(&row) = old.get(key.as_slice()) {
                deletes.push(row as u64);
            }
        }
        let upserted = self.group_rows(state, &upserts).await?;
        if self.group_table.is_some() {
            // Under a HAVING, the stored rows of groups that no longer pass go too.
            let passing: std::collections::HashSet<Vec<u8>> = self.row_groups(&upserted)?.into_iter().collect();
            deletes =
                (0..old_rows.num_rows() as u64).filter(|&row| !passing.contains(&old_groups[row as usize])).collect();
        }
        let deleted = take_rows(&old_rows_in(&self.storage_schema, &old_rows)?, &deletes)?;
        let mut kinds = vec![storage::ValueKind::Upsert; upserted.num_rows()];
        kinds.extend(vec![storage::ValueKind::Delete; deleted.num_rows()]);
        Ok((concat_batches(&self.storage_schema, &[upserted, deleted])?, kinds))
    }

    /// Commits the new state of the touched groups to the state table, as
    /// of `positions` (a positions property): upserts of groups that exist,
    /// deletes of stored ones (in `stored`) that no longer do, and deletes
    /// of `closed` (stored rows of windows shown at an earlier step).
    pub(super) async fn write_group_table(
        &self,
        table: &GroupTable,
        state: &GroupState,
        next: &[Entry],
        stored: &RecordBatch,
        closed: &RecordBatch,
        positions: String,
    ) -> Result<()> {
        let group_keys = self.plan.group_keys();
        let upserts: Vec<(&[u8], &[ScalarValue], &Group)> = next
            .iter()
            .filter(|(_, _, g)| g.rows > 0 || group_keys == 0)
            .map(|(k, v, g)| (k.as_slice(), v.as_slice(), g))
            .collect();
        let gone: std::collections::HashSet<&[u8]> =
            next.iter().filter(|(_, _, g)| g.rows <= 0 && group_keys > 0).map(|(k, _, _)| k.as_slice()).collect();
        let stored_keys = stored.column(0).as_binary::<i32>();
        let deletes: Vec<u64> =
            (0..stored.num_rows()).filter(|&row| gone.contains(stored_keys.value(row))).map(|row| row as u64).collect();
        let mut txn = table.begin().await?;
        let upserted = table.rows(state, &upserts)?;
        if upserted.num_rows() > 0 {
            txn.write(&upserted, &vec![storage::ValueKind::Upsert; upserted.num_rows()]).await?;
        }
        for deleted in [take_rows(stored, &deletes)?, closed.clone()] {
            if deleted.num_rows() > 0 {
                txn.write(&deleted, &vec![storage::ValueKind::Delete; deleted.num_rows()]).await?;
            }
        }
        GroupTable::commit(txn, positions).await
    }

    /// Commits the new value counts (`counts`) and the deletes of `gone`
    /// (stored rows of closed windows) to the value counts table, as of
    /// `positions` (a positions property).
    async fn write_distinct_table(
        &self,
        table: &DistinctTable,
        counts: &[distinct::Recount],
        gone: RecordBatch,
        positions: String,
    ) -> Result<()> {
        let upserts: Vec<(&distinct::Pair, i64)> =
            counts.iter().filter(|(_, _, new)| *new > 0).map(|(pair, _, new)| (pair, *new)).collect();
        let deletes: Vec<(&distinct::Pair, i64)> =
            counts.iter().filter(|(_, had, new)| *new == 0 && *had > 0).map(|(pair, _, _)| (pair, 0)).collect();
        let mut txn = table.begin().await?;
        for (rows, kind) in [
            (table.rows(&upserts)?, storage::ValueKind::Upsert),
            (table.rows(&deletes)?, storage::ValueKind::Delete),
            (gone, storage::ValueKind::Delete),
        ] {
            if rows.num_rows() > 0 {
                txn.write(&rows, &vec![kind; rows.num_rows()]).await?;
            }
        }
        super::super::groups::StateTable::commit(txn, positions).await
    }

    /// Fills the (new, empty) value counts from the sources as read by
    /// `at` and commits them as of `positions`.
    pub(super) async fn fill_distinct(&self, table: &DistinctTable, at: &[At], positions: &[u64]) -> Result<()> {
        use futures::StreamExt;
        let state = self.plan.state.as_ref().ok_or_else(|| Error::internal("view keeps no group state"))?;
        let mut txn = table.begin().await?.blind();
        for j in state.distinct_functions() {
            let plan = self.plan.distinct_parts(at, j)?;
            let mut stream = self.ctx.execute_logical_plan(plan).await?.execute_stream().await?;
            while let Some(batch) = stream.next().await {
                let batch = batch?;
                let groups = self.groups.encode(&batch.columns()[..self.plan.group_keys()], batch.num_rows())?;
                let pairs = distinct::pairs(j, groups, &batch)?;
                let counts: Vec<(&distinct::Pair, i64)> = pairs.iter().map(|(p, c)| (p, *c)).collect();
                let rows = table.rows(&counts)?;
                if rows.num_rows() > 0 {
                    txn.write(&rows, &vec![storage::ValueKind::Upsert; rows.num_rows()]).await?;
                }
            }
        }
        super::super::groups::StateTable::commit(txn, self.positions_property(positions)).await
    }

    /// The per-group deltas of a change's aggregated parts, keyed by group.
    pub(super) fn group_deltas(&self, state: &GroupState, parts: &[RecordBatch]) -> Result<Vec<(Vec<u8>, Delta)>> {
        let group_keys = self.plan.group_keys();
        let mut keyed = Vec::new();
        for batch in parts.iter().filter(|b| b.num_rows() > 0) {
            let encoded = self.groups.encode(&batch.columns()[..group_keys], batch.num_rows())?;
            keyed.extend(encoded.into_iter().zip(state::deltas(state, batch)?));
        }
        Ok(keyed)
    }

    /// The view table's key columns for the groups of `deltas`.
    pub(super) fn lookup_keys(&self, deltas: &[(Vec<u8>, Delta)]) -> Result<Vec<ArrayRef>> {
        match &self.view.definition.key {
            KeyLayout::Hidden => {
                // The key is the group keys, row-encoded as the group encoder does.
                Ok(vec![Arc::new(BinaryArray::from_iter_values(deltas.iter().map(|(k, _)| k.as_slice())))])
            }
            KeyLayout::Visible(indexes) => indexes
                .iter()
                .enumerate()
                .map(|(c, &i)| {
                    let target = self.storage_schema.field(i).data_type();
                    let cells = deltas
                        .iter()
                        .map(|(_, d)| d.values[c].cast_to(target))
                        .collect::<datafusion::error::Result<Vec<_>>>()?;
                    Ok(ScalarValue::iter_to_array(cells)?)
                })
                .collect(),
        }
    }

    /// The state of `groups` (their values) on the sources at `positions`.
    pub(super) async fn recompute_groups(
        &self,
        state: &GroupState,
        positions: &[u64],
        groups: Vec<Vec<ScalarValue>>,
    ) -> Result<HashMap<Vec<u8>, Group>> {
        let group_keys = self.plan.group_keys();
        let restrict = if group_keys == 0 {
            None
        } else {
            let columns = (0..group_keys)
                .map(|c| ScalarValue::iter_to_array(groups.iter().map(|g| g[c].clone())))
                .collect::<datafusion::error::Result<Vec<_>>>()?;
            let fields: Vec<Field> = columns
                .iter()
                .enumerate()
                .map(|(c, a)| Field::new(format!("__g{c}"), a.data_type().clone(), true))
                .collect();
            let schema = Arc::new(Schema::new(fields));
            let batch = RecordBatch::try_new(Arc::clone(&schema), columns)?;
            let table = MemTable::try_new(schema, vec![vec![batch]])?;
            Some(LogicalPlanBuilder::scan("__groups", provider_as_source(Arc::new(table)), None)?.build()?)
        };
        let at: Vec<At> = self.plan.occurrences.iter().map(|&s| At::Snapshot(positions[s])).collect();
        let plan = self.plan.parts(&at, restrict)?;
        let mut out = HashMap::new();
        for batch in self.execute(plan).await? {
            let encoded = self.groups.encode(&batch.columns()[..group_keys], batch.num_rows())?;
            for (key, delta) in encoded.into_iter().zip(state::deltas(state, &batch)?) {
                out.insert(key, delta.into_group());
            }
        }
        Ok(out)
    }
}

/// Whether a window whose `window_end` is `end` had closed at `watermark`
/// (`None`: no watermark yet, nothing closed).
///
/// # Errors
/// An end that is not a timestamp (a bug: checked at CREATE).
pub(super) fn window_closed(end: &ScalarValue, watermark: Option<i64>) -> Result<bool> {
    let Some(watermark) = watermark else { return Ok(false) };
    let millis = end.cast_to(&DataType::Timestamp(datafusion::arrow::datatypes::TimeUnit::Millisecond, None))?;
    match millis {
        ScalarValue::TimestampMillisecond(Some(end), _) => Ok(end <= watermark),
        ScalarValue::TimestampMillisecond(None, _) => Ok(false),
        other => Err(Error::internal(format!("window_end {other} is not a timestamp"))),
    }
}
