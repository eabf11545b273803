//! A step of a Top-N view ([`super::super::plan::TopN`]): per partition the
//! change touches, its new first N rows are ranked from its stored rows (the
//! view's first N and the spares, [`super::super::spares`]) and the rows the
//! change adds; a partition left with fewer than N rows it can vouch for is
//! read again from the sources (its first N and spares, by key).

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use datafusion::arrow::array::{ArrayRef, AsArray, RecordBatch};
use datafusion::arrow::compute::{cast, concat_batches};
use datafusion::arrow::datatypes::{DataType, Field, Int64Type, Schema, SchemaRef, UInt64Type};
use datafusion::catalog::MemTable;
use datafusion::datasource::provider_as_source;
use datafusion::logical_expr::LogicalPlanBuilder;
use streamhouse_storage as storage;

use super::super::KeyLayout;
use super::super::plan::At;
use super::super::spares::{self, SpareTable};
use super::{TopNState, ViewMaintainer, take_rows};
use crate::error::{Error, Result};

/// What a Top-N step writes: the view's rows, and the spares' rows.
pub(super) struct TopNStep {
    pub rows: RecordBatch,
    pub kinds: Vec<storage::ValueKind>,
    pub spares: Arc<SpareTable>,
    pub spare_rows: RecordBatch,
    pub spare_kinds: Vec<storage::ValueKind>,
}

/// A candidate row of a partition: where it came from.
struct Candidate {
    group: usize,
    /// Stored (in the view or the spares) before the step.
    stored: bool,
    /// Retracted by the step.
    gone: bool,
}

/// A touched partition's rows after the step.
#[derive(Default)]
struct Kept {
    /// Its first rows, in order (the first N are the view's, the rest spares).
    rows: Vec<usize>,
    complete: bool,
}

impl ViewMaintainer {
    /// The view's spares, as they go with the view's latest commit: opened,
    /// or (missing, or left by a step whose view commit never came) new and
    /// empty.
    async fn spare_table(&self, top: &TopNState) -> Result<Arc<SpareTable>> {
        let recorded = spares::version_of(
            self.view.table().latest_snapshot().as_ref().and_then(|s| s.properties.get(spares::VIEW_PROPERTY)),
        );
        let current = self.spares.lock().map_err(|_| Error::internal("spares lock poisoned"))?.clone();
        if let Some(table) = &current
            && table.version() == recorded
        {
            return Ok(Arc::clone(table));
        }
        let store = Arc::clone(self.view.table().store());
        let opened = match current {
            Some(table) => {
                table.close().await;
                None
            }
            None => SpareTable::open(&store, &self.view.dir, &top.fields, recorded).await,
        };
        let table = match opened {
            Some(table) => Arc::new(table),
            None => Arc::new(SpareTable::create(&store, &self.view.dir, &top.fields, recorded).await?),
        };
        *self.spares.lock().map_err(|_| Error::internal("spares lock poisoned"))? = Some(Arc::clone(&table));
        Ok(table)
    }

    /// A Top-N view's step: `changes` is the change of the window's input
    /// ([`super::super::plan::ViewPlan::window_change`]); `whole` the
    /// partition values of partitions to read again whole (a change too big
    /// to keep).
    pub(super) async fn update_top_n(
        &self,
        positions: &[u64],
        changes: Vec<RecordBatch>,
        whole: Vec<RecordBatch>,
    ) -> Result<TopNStep> {
        let top = self.top_n.as_ref().ok_or_else(|| Error::internal("view keeps no Top-N state"))?;
        let KeyLayout::Visible(key) = &self.view.definition.key else {
            return Err(Error::internal("a Top-N view with state has a hidden key"));
        };
        let spare_table = self.spare_table(top).await?;
        let n = top.limit as usize;
        let keep = n + self.config.top_n_spares;
        let group_keys = self.plan.group_keys();
        let width = top.fields.len();
        let candidate_schema: SchemaRef = Arc::new(Schema::new(top.fields.clone()));

        // The touched partitions: their values (one row each) and keys.
        let mut partitions: Vec<RecordBatch> = Vec::new();
        let mut touched: HashMap<Vec<u8>, usize> = HashMap::new();
        let mut refill: HashSet<usize> = HashSet::new();
        let mut note = |batch: &RecordBatch, again: bool, partitions: &mut Vec<RecordBatch>| -> Result<Vec<usize>> {
            let values = batch.project(&(0..group_keys).collect::<Vec<_>>())?;
            let keys = self.groups.encode(values.columns(), values.num_rows())?;
            let mut fresh = Vec::new();
            let mut of_rows = Vec::with_capacity(keys.len());
            for (row, key) in keys.into_iter().enumerate() {
                let next = touched.len();
                let group = *touched.entry(key).or_insert_with(|| {
                    fresh.push(row as u64);
                    next
                });
                if again {
                    refill.insert(group);
                }
                of_rows.push(group);
            }
            partitions.push(take_rows(&values, &fresh)?);
            Ok(of_rows)
        };
        for batch in whole.iter().filter(|b| b.num_rows() > 0) {
            note(batch, true, &mut partitions)?;
        }
        let changes: Vec<RecordBatch> = changes.into_iter().filter(|b| b.num_rows() > 0).collect();
        let change = match changes.first() {
            Some(first) => Some(concat_batches(&first.schema(), &changes)?),
            None => None,
        };
        let change_groups = match &change {
            Some(change) => note(change, false, &mut partitions)?,
            None => vec![],
        };
        if touched.is_empty() {
            let empty = RecordBatch::new_empty(Arc::clone(&self.storage_schema));
            let spare_rows = RecordBatch::new_empty(spare_table.schema());
            return Ok(TopNStep { rows: empty, kinds: vec![], spares: spare_table, spare_rows, spare_kinds: vec![] });
        }
        let partitions = concat_batches(&partitions[0].schema(), &partitions)?;
        let mut keys_of: Vec<Vec<u8>> = vec![Vec::new(); touched.len()];
        for (key, &group) in &touched {
            keys_of[group] = key.clone();
        }

        // The stored rows: the view's (its first N), then the spares.
        let old_rows = self.stored_rows_of(key, &partitions).await?;
        let offset = self.plan.visible;
        let old_carried = self.carried_in(top, &old_rows.columns()[offset..offset + width])?;
        let old_groups: Vec<usize> = self
            .row_groups(&old_rows)?
            .iter()
            .map(|g| touched.get(g).copied().ok_or_else(|| Error::internal("a stored row of no touched partition")))
            .collect::<Result<_>>()?;
        let group_list: Vec<&[u8]> = keys_of.iter().map(Vec::as_slice).collect();
        let old_spares = spare_table.of_groups(&group_list).await?;
        let spare_ids = old_spares.column(1).as_binary::<i32>();
        let spare_groups: Vec<usize> = old_spares
            .column(0)
            .as_binary::<i32>()
            .iter()
            .map(|g| {
                touched
                    .get(g.unwrap_or_default())
                    .copied()
                    .ok_or_else(|| Error::internal("a spare of no touched partition"))
            })
            .collect::<Result<_>>()?;
        let mut in_view = vec![0usize; touched.len()];
        for &g in &old_groups {
            in_view[g] += 1;
        }
        let mut complete: Vec<bool> = in_view.iter().map(|&c| c < n).collect();
        let spare_rows: Vec<u64> = (0..old_spares.num_rows())
            .filter(|&r| {
                let marker = spare_ids.value(r).is_empty();
                if marker {
                    complete[spare_groups[r]] = true;
                }
                !marker
            })
            .map(|r| r as u64)
            .collect();
        let spare_carried = self.carried_in(top, &take_rows(&old_spares, &spare_rows)?.columns()[2..])?;

        // The change's net effect per (partition, row).
        let mut net: HashMap<(usize, Vec<u8>), (i64, usize)> = HashMap::new();
        let change_carried = match &change {
            Some(change) => {
                let carried = self.carried_in(top, &change.columns()[group_keys..group_keys + width])?;
                let values = top.values.convert_columns(carried.columns())?;
                let weights = cast(change.column(group_keys + width), &DataType::Int64)?;
                let weights = weights.as_primitive::<Int64Type>();
                for (row, &group) in change_groups.iter().enumerate() {
                    net.entry((group, values.row(row).as_ref().to_vec())).or_insert((0, row)).0 += weights.value(row);
                }
                Some(carried)
            }
            None => None,
        };

        // The candidates of the partitions not read again: stored rows and added rows.
        let mut candidates: Vec<Candidate> = Vec::new();
        let mut seen: HashMap<(usize, Vec<u8>), usize> = HashMap::new();
        let mut picks: Vec<Vec<u64>> = vec![Vec::new(); 3];
        let spare_row_groups: Vec<usize> = spare_rows.iter().map(|&r| spare_groups[r as usize]).collect();
        for (part, (carried, groups)) in
            [(&old_carried, &old_groups), (&spare_carried, &spare_row_groups)].into_iter().enumerate()
        {
            let values = top.values.convert_columns(carried.columns())?;
            for (row, &group) in groups.iter().enumerate() {
                if refill.contains(&group) {
                    continue;
                }
                let value = values.row(row).as_ref().to_vec();
                let gone = net.get(&(group, value.clone())).is_some_and(|(w, _)| *w < 0);
                if seen.insert((group, value), candidates.len()).is_none() {
                    candidates.push(Candidate { group, stored: true, gone });
                    picks[part].push(row as u64);
                }
            }
        }
        let mut added: Vec<(usize, usize)> =
            net.iter().filter(|(_, (w, _))| *w > 0).map(|((group, _), (_, row))| (*group, *row)).collect();
        added.sort_unstable();
        for (group, row) in added {
            if !refill.contains(&group) {
                candidates.push(Candidate { group, stored: false, gone: false });
                picks[2].push(row as u64);
            }
        }
        let mut parts = vec![take_rows(&old_carried, &picks[0])?, take_rows(&spare_carried, &picks[1])?];
        if let Some(carried) = &change_carried {
            parts.push(take_rows(carried, &picks[2])?);
        }
        let candidate_rows = concat_batches(&candidate_schema, &parts)?;

        // Ranked, per partition.
        let mut kept: Vec<Kept> = complete.iter().map(|&complete| Kept { rows: vec![], complete }).collect();
        if candidate_rows.num_rows() > 0 {
            let table = MemTable::try_new(Arc::clone(&candidate_schema), vec![vec![candidate_rows.clone()]])?;
            let at: Vec<At> = self.plan.occurrences.iter().map(|_| At::Snapshot(0)).collect();
            let plan = self.plan.ranked(&at, None, Some(Arc::new(table)), None)?;
            let ranked = self.run_plan(plan).await?;
            let index = self.candidate_index(top, &candidate_rows, &candidates)?;
            let mut order: Vec<Vec<(u64, usize)>> = vec![Vec::new(); touched.len()];
            for batch in &ranked {
                let carried = self.carried_in(top, &batch.columns()[group_keys..group_keys + width])?;
                let values = top.values.convert_columns(carried.columns())?;
                let groups = self.groups.encode(&batch.columns()[..group_keys], batch.num_rows())?;
                let rn = cast(batch.column(group_keys + width), &DataType::UInt64)?;
                let rn = rn.as_primitive::<UInt64Type>();
                for (row, key) in groups.iter().enumerate() {
                    let group = touched.get(key).copied();
                    let candidate = group.and_then(|g| index.get(&(g, values.row(row).as_ref().to_vec())));
                    let (Some(group), Some(&candidate)) = (group, candidate) else {
                        return Err(Error::internal("a ranked row that is no candidate"));
                    };
                    order[group].push((rn.value(row), candidate));
                }
            }
            for (group, mut rows) in order.into_iter().enumerate() {
                if refill.contains(&group) {
                    continue;
                }
                rows.sort_unstable();
                // Rows not stored rank at or after the last stored row.
                let last_stored = rows.iter().filter(|(_, c)| candidates[*c].stored).map(|(rn, _)| *rn).max();
                let valid: Vec<usize> = rows
                    .iter()
                    .filter(|(rn, c)| {
                        !candidates[*c].gone && (complete[group] || last_stored.is_some_and(|l| *rn <= l))
                    })
                    .map(|(_, c)| *c)
                    .collect();
                kept[group] = Kept { complete: complete[group] && valid.len() <= keep, rows: valid };
            }
        }
        for (group, kept) in kept.iter_mut().enumerate() {
            if !refill.contains(&group) {
                kept.rows.truncate(keep);
                if !kept.complete && kept.rows.len() < n {
                    refill.insert(group);
                }
            }
        }

        // Partitions read again from the sources: their first N and spares.
        let mut refilled = RecordBatch::new_empty(Arc::clone(&candidate_schema));
        let mut refilled_kept: Vec<Kept> = (0..touched.len()).map(|_| Kept::default()).collect();
        if !refill.is_empty() {
            let mut again: Vec<u64> = refill.iter().map(|&g| g as u64).collect();
            again.sort_unstable();
            let restrict = if group_keys == 0 {
                None
            } else {
                let values = take_rows(&partitions, &again)?;
                let fields: Vec<Field> = (0..group_keys)
                    .map(|i| Field::new(format!("__g{i}"), values.column(i).data_type().clone(), true))
                    .collect();
                let values = RecordBatch::try_new(Arc::new(Schema::new(fields)), values.columns().to_vec())?;
                let table = MemTable::try_new(values.schema(), vec![vec![values]])?;
                Some(LogicalPlanBuilder::scan("__groups", provider_as_source(Arc::new(table)), None)?.build()?)
            };
            let at: Vec<At> = self.plan.occurrences.iter().map(|&s| At::Snapshot(positions[s])).collect();
            let plan = self.plan.ranked(&at, restrict, None, Some(keep as u64))?;
            let mut order: Vec<Vec<(u64, usize)>> = vec![Vec::new(); touched.len()];
            let mut rows = Vec::new();
            let mut base = 0;
            for batch in self.execute(plan).await? {
                let groups = self.groups.encode(&batch.columns()[..group_keys], batch.num_rows())?;
                let rn = cast(batch.column(group_keys + width), &DataType::UInt64)?;
                let rn = rn.as_primitive::<UInt64Type>();
                for (row, key) in groups.iter().enumerate() {
                    let group = touched
                        .get(key)
                        .copied()
                        .filter(|g| refill.contains(g))
                        .ok_or_else(|| Error::internal("a partition read again that was not asked for"))?;
                    order[group].push((rn.value(row), base + row));
                }
                base += batch.num_rows();
                rows.push(self.carried_in(top, &batch.columns()[group_keys..group_keys + width])?);
            }
            refilled = concat_batches(&candidate_schema, &rows)?;
            for (group, mut rows) in order.into_iter().enumerate() {
                rows.sort_unstable();
                refilled_kept[group] =
                    Kept { complete: rows.len() < keep, rows: rows.into_iter().map(|(_, r)| r).collect() };
            }
        }

        // The view's new rows: its first N of each partition.
        // Spare rows' partitions: of ranked candidates, of rows read again.
        let mut spare_groups_of: (Vec<usize>, Vec<usize>) = (Vec::new(), Vec::new());
        let (mut tops, mut next_spares, mut next_refilled, mut next_refilled_spares) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        let mut markers: Vec<&[u8]> = Vec::new();
        for group in 0..touched.len() {
            let (chosen, into_tops, into_spares, into_groups) = if refill.contains(&group) {
                (&refilled_kept[group], &mut next_refilled, &mut next_refilled_spares, &mut spare_groups_of.1)
            } else {
                (&kept[group], &mut tops, &mut next_spares, &mut spare_groups_of.0)
            };
            for (place, &row) in chosen.rows.iter().enumerate() {
                if place < n {
                    into_tops.push(row as u64);
                } else {
                    into_spares.push(row as u64);
                    into_groups.push(group);
                }
            }
            if chosen.complete && chosen.rows.len() >= n {
                markers.push(&keys_of[group]);
            }
        }
        let first = concat_batches(
            &candidate_schema,
            &[take_rows(&candidate_rows, &tops)?, take_rows(&refilled, &next_refilled)?],
        )?;
        let mut new_rows = Vec::new();
        if first.num_rows() > 0 {
            let table = MemTable::try_new(Arc::clone(&candidate_schema), vec![vec![first]])?;
            let rewritten = self.plan.over_candidates(Arc::new(table))?;
            for batch in self.run_plan(rewritten.plan.clone()).await? {
                new_rows.push(self.view_rows(&batch, &rewritten)?);
            }
        }
        let new_rows = concat_batches(&self.storage_schema, &new_rows)?;
        let (rows, kinds) = self.diff(new_rows, old_rows, None)?;

        // The spares' writes: new and changed spares and markers, deletes of the others.
        let spares = concat_batches(
            &candidate_schema,
            &[take_rows(&candidate_rows, &next_spares)?, take_rows(&refilled, &next_refilled_spares)?],
        )?;
        // The partition of each spare row, in the order of `spares`.
        let spare_group_of: Vec<usize> = spare_groups_of.0.into_iter().chain(spare_groups_of.1).collect();
        let ids = top.identities(spares.columns())?;
        let values = top.values.convert_columns(spares.columns())?;
        let mut new_spares: HashMap<(&[u8], &[u8]), Vec<u8>> = HashMap::new();
        for (row, &group) in spare_group_of.iter().enumerate() {
            new_spares.insert((&keys_of[group], &ids[row]), values.row(row).as_ref().to_vec());
        }
        let marker_set: HashSet<&[u8]> = markers.iter().copied().collect();
        let stored_values = top.values.convert_columns(spare_carried.columns())?;
        let mut unchanged: HashSet<(&[u8], &[u8])> = HashSet::new();
        let mut deletes: Vec<u64> = Vec::new();
        let mut spare_position = 0;
        for row in 0..old_spares.num_rows() {
            let group = keys_of[spare_groups[row]].as_slice();
            let id = spare_ids.value(row);
            if id.is_empty() {
                if marker_set.contains(group) {
                    unchanged.insert((group, id));
                } else {
                    deletes.push(row as u64);
                }
                continue;
            }
            let stored_value = stored_values.row(spare_position);
            spare_position += 1;
            match new_spares.get(&(group, id)) {
                Some(value) if value.as_slice() == stored_value.as_ref() => {
                    unchanged.insert((group, id));
                }
                Some(_) => {}
                None => deletes.push(row as u64),
            }
        }
        let upserts: Vec<u64> = (0..spares.num_rows())
            .filter(|&row| !unchanged.contains(&(keys_of[spare_group_of[row]].as_slice(), ids[row].as_slice())))
            .map(|row| row as u64)
            .collect();
        let upsert_keys: Vec<(&[u8], &[u8])> = upserts
            .iter()
            .map(|&row| (keys_of[spare_group_of[row as usize]].as_slice(), ids[row as usize].as_slice()))
            .collect();
        let new_markers: Vec<&[u8]> = markers.iter().copied().filter(|g| !unchanged.contains(&(*g, &[][..]))).collect();
        let upsert_rows = spare_table.rows(&upsert_keys, take_rows(&spares, &upserts)?.columns(), &new_markers)?;
        let delete_rows = take_rows(&old_spares, &deletes)?;
        let mut spare_kinds = vec![storage::ValueKind::Upsert; upsert_rows.num_rows()];
        spare_kinds.extend(std::iter::repeat_n(storage::ValueKind::Delete, delete_rows.num_rows()));
        let spare_rows = concat_batches(&spare_table.schema(), &[upsert_rows, delete_rows])?;
        Ok(TopNStep { rows, kinds, spares: spare_table, spare_rows, spare_kinds })
    }

    /// `columns` (the window input's, as some plan gives them) as a batch
    /// of the carried columns' types.
    fn carried_in(&self, top: &TopNState, columns: &[ArrayRef]) -> Result<RecordBatch> {
        let columns = columns
            .iter()
            .zip(top.fields.iter())
            .map(|(c, f)| cast(c, f.data_type()))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(RecordBatch::try_new(Arc::new(Schema::new(top.fields.clone())), columns)?)
    }

    /// Each candidate by (partition, row values).
    fn candidate_index(
        &self,
        top: &TopNState,
        rows: &RecordBatch,
        candidates: &[Candidate],
    ) -> Result<HashMap<(usize, Vec<u8>), usize>> {
        let values = top.values.convert_columns(rows.columns())?;
        Ok(candidates.iter().enumerate().map(|(i, c)| ((c.group, values.row(i).as_ref().to_vec()), i)).collect())
    }
}
