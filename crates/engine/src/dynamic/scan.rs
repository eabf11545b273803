//! The physical scan of a Dynamic Table snapshot: one DataFusion partition
//! per planned partition of the storage scan, with row-count statistics
//! from the snapshot.
//!
//! Splits that hold one sorted run with nothing to merge or drop (a
//! compacted table, an append-only table, key ranges only one run covers)
//! are read by DataFusion's own Parquet scan, as plain Parquet files are:
//! only the projected columns, row groups and pages pruned by the query's
//! predicates and by the filters joins learn at run time (dynamic filters),
//! every range still checked against the manifest
//! ([`storage::file::CheckedParquet`]). The other splits are merged on read
//! by storage (sorted runs, tombstones, renamed columns), in bounded memory.
//!
//! Filters on the first primary-key column (`k = 5`, `k > 10`, `k BETWEEN …`,
//! `k IN (…)` with literals) become key bounds that prune row groups; they
//! are reported to DataFusion as inexact, so it still applies them.

use std::sync::Arc;

use datafusion::arrow::array::ArrayRef;
use datafusion::common::stats::Precision;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::common::{ScalarValue, Statistics};
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::logical_expr::{BinaryExpr, Expr, Operator};
use datafusion::physical_expr::{EquivalenceProperties, PhysicalExpr};
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::filter_pushdown::{
    ChildPushdownResult, FilterPushdownPhase, FilterPushdownPropagation, PushedDown,
};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    ChildrenPropertiesMode, DisplayAs, DisplayFormatType, ExecutionPlan, Partitioning, PlanProperties,
    ReplaceChildrenOptions, StatisticsArgs,
};
use futures::{StreamExt, TryFutureExt as _, TryStreamExt};
use streamhouse_storage as storage;

use super::df_error;

/// Scans one planned snapshot of a Dynamic Table.
#[derive(Debug)]
pub struct DynamicScanExec {
    table: Arc<storage::Table>,
    /// The whole scan (what travels, what statistics describe).
    plan: storage::ScanPlan,
    /// The splits storage reads (merged runs, tombstones, renamed columns).
    merged: storage::ScanPlan,
    /// DataFusion's Parquet scan of the splits that read as plain Parquet,
    /// a file group per partition (`None`: there are none).
    plain: Option<Arc<dyn ExecutionPlan>>,
    /// The columns' spans over the files read, worked out once (DataFusion
    /// asks for statistics several times per plan).
    spans: Arc<std::sync::OnceLock<Vec<storage::scan::ColumnSpan>>>,
    properties: Arc<PlanProperties>,
    /// Its rows go straight to a hash join's probe (through projections
    /// and filters only): a dynamic filter probing a hash table would cost
    /// each row a second probe and spare nothing ([`Learned`]).
    probed: bool,
}

impl DynamicScanExec {
    /// Wraps a storage scan plan.
    pub fn new(table: Arc<storage::Table>, plan: storage::ScanPlan) -> Self {
        let properties = PlanProperties::new(
            EquivalenceProperties::new(Arc::clone(&plan.schema)),
            Partitioning::UnknownPartitioning(plan.partitions.len().max(1)),
            EmissionType::Incremental,
            Boundedness::Bounded,
        );
        let (files, merged) = plan.split_plain(table.dir());
        let (plain, merged) = match plain_scan(table.store(), &plan, files) {
            Ok(plain) => (plain, merged),
            // Storage reads it all, as it can any split.
            Err(_) => (None, plan.clone()),
        };
        Self { table, plan, merged, plain, spans: Arc::default(), properties: Arc::new(properties), probed: false }
    }

    /// This scan with its plain-Parquet part replaced (filters pushed into it).
    fn with_plain(&self, plain: Option<Arc<dyn ExecutionPlan>>) -> Self {
        Self {
            table: Arc::clone(&self.table),
            plan: self.plan.clone(),
            merged: self.merged.clone(),
            plain,
            spans: Arc::clone(&self.spans),
            properties: Arc::clone(&self.properties),
            probed: self.probed,
        }
    }

    /// This scan, known to feed a hash join's probe side directly.
    pub fn probed_directly(&self) -> Self {
        Self { probed: true, ..self.with_plain(self.plain.clone()) }
    }
}

impl DynamicScanExec {
    /// The filters joins and top-k sorts learn as they run (dynamic
    /// filters) that were pushed into this scan, over its output columns.
    fn dynamic_filters(&self) -> Vec<Arc<dyn PhysicalExpr>> {
        use datafusion::common::tree_node::{Transformed, TransformedResult, TreeNode};
        use datafusion::physical_expr::expressions::{Column, DynamicFilterPhysicalExpr};
        let mut found = Vec::new();
        let _ = self.apply_expressions(&mut |expr| {
            expr.apply(|e| {
                Ok(if e.downcast_ref::<DynamicFilterPhysicalExpr>().is_some() {
                    found.push(Arc::clone(e));
                    TreeNodeRecursion::Jump
                } else {
                    TreeNodeRecursion::Continue
                })
            })
        });
        // The Parquet part's predicates address the table's columns; batches carry the projected ones.
        let schema = &self.plan.schema;
        found
            .into_iter()
            .filter_map(|filter| {
                filter
                    .transform_up(|e| match e.downcast_ref::<Column>() {
                        Some(column) => {
                            let index = schema.index_of(column.name())?;
                            Ok(Transformed::yes(Arc::new(Column::new(column.name(), index)) as Arc<dyn PhysicalExpr>))
                        }
                        None => Ok(Transformed::no(e)),
                    })
                    .data()
                    .ok()
            })
            .collect()
    }
}

/// Applies dynamic filters to a scan's rows. DataFusion's Parquet scan
/// uses them only to skip row groups and pages (unless
/// `parquet.pushdown_filters`, which costs every scan its late
/// materialization); a join whose build side turned out tiny (TPC-H q18:
/// 57 orders of 1.5 million) still had every probe row joined and
/// dropped, and what lies between the scan and the join (q17: an
/// aggregation of all 6 million `lineitem` rows, of which 6 thousand reach
/// the join) ran over every row. Rows a dynamic filter rejects are rows
/// the join or top-k drops, so they are dropped here; a filter that does
/// not narrow is left to the operator that made it: one that kept more
/// than 80% of its first rows, or, when its current form probes the join's
/// hash table (`hash_lookup`, a build side past DataFusion's IN-list
/// limits, which costs a probe per row here and again in the join for the
/// rows it keeps), more than 25%. A scan whose rows go straight to a join's
/// probe leaves such filters to the joins: nothing between would be spared.
struct Learned {
    filters: Vec<LearnedFilter>,
    /// Filters probing a hash table are not applied here.
    skip_probes: bool,
}

struct LearnedFilter {
    expr: Arc<dyn PhysicalExpr>,
    /// The filter's generation the state below is for.
    generation: Option<u64>,
    /// Worth evaluating here (not trivially true, and it narrowed so far).
    useful: bool,
    /// Its current form probes a hash table.
    probes: bool,
    seen: usize,
    kept: usize,
}

/// Rows a filter must see before it is judged by what it kept.
const LEARNED_TRIAL_ROWS: usize = 65_536;

impl Learned {
    fn new(filters: Vec<Arc<dyn PhysicalExpr>>, skip_probes: bool) -> Self {
        let filters = filters
            .into_iter()
            .map(|expr| LearnedFilter { expr, generation: None, useful: false, probes: false, seen: 0, kept: 0 })
            .collect();
        Self { filters, skip_probes }
    }

    fn apply(
        &mut self,
        mut batch: datafusion::arrow::array::RecordBatch,
    ) -> datafusion::error::Result<datafusion::arrow::array::RecordBatch> {
        let skip_probes = self.skip_probes;
        for filter in &mut self.filters {
            if batch.num_rows() == 0 {
                break;
            }
            let generation = filter.expr.snapshot_generation();
            if filter.generation != Some(generation) {
                let current = filter.expr.snapshot()?.unwrap_or_else(|| Arc::clone(&filter.expr));
                let trivially_true = current
                    .downcast_ref::<datafusion::physical_expr::expressions::Literal>()
                    .is_some_and(|l| l.value() == &ScalarValue::Boolean(Some(true)));
                filter.generation = Some(generation);
                filter.probes = current.to_string().contains("hash_lookup");
                filter.useful = !(trivially_true || filter.probes && skip_probes);
                (filter.seen, filter.kept) = (0, 0);
            }
            if !filter.useful {
                continue;
            }
            let mask = filter.expr.evaluate(&batch)?.into_array(batch.num_rows())?;
            let mask = datafusion::arrow::array::AsArray::as_boolean_opt(&mask).ok_or_else(|| {
                datafusion::error::DataFusionError::Internal("a dynamic filter is not boolean".into())
            })?;
            let rows = batch.num_rows();
            batch = datafusion::arrow::compute::filter_record_batch(&batch, mask)?;
            filter.seen += rows;
            filter.kept += batch.num_rows();
            // Keeping most rows, it only costs: the operator that made it applies it anyway.
            let too_many =
                if filter.probes { filter.kept * 4 > filter.seen } else { filter.kept * 5 > filter.seen * 4 };
            if filter.seen >= LEARNED_TRIAL_ROWS && too_many {
                filter.useful = false;
            }
        }
        Ok(batch)
    }
}

/// DataFusion's Parquet scan of `files` (per partition), as `plan` projects them.
fn plain_scan(
    store: &Arc<dyn object_store::ObjectStore>,
    plan: &storage::ScanPlan,
    files: Vec<Vec<storage::scan::PlainFile>>,
) -> datafusion::error::Result<Option<Arc<dyn ExecutionPlan>>> {
    use datafusion::datasource::listing::PartitionedFile;
    use datafusion::datasource::physical_plan::parquet::ParquetAccessPlan;
    use datafusion::datasource::physical_plan::{FileGroup, FileScanConfigBuilder, ParquetSource};
    use datafusion::parquet::arrow::arrow_reader::RowSelection;

    if files.iter().all(Vec::is_empty) {
        return Ok(None);
    }
    let groups = files
        .into_iter()
        .map(|files| {
            FileGroup::new(
                files
                    .into_iter()
                    .map(|file| {
                        let mut access = ParquetAccessPlan::new_none(file.meta.row_groups.len());
                        for &group in &file.row_groups {
                            match &file.meta.deleted {
                                // Rows a later version or a delete replaced: not read.
                                Some(deleted) => {
                                    let positions = file.meta.group_positions(group);
                                    let rows = (positions.end - positions.start) as usize;
                                    let live = deleted.live_in(positions);
                                    if live.is_empty() {
                                        continue;
                                    }
                                    let selection = RowSelection::from_consecutive_ranges(live.into_iter(), rows);
                                    // A selection narrows a scanned group (a skipped one stays skipped).
                                    access.scan(group);
                                    access.scan_selection(group, selection);
                                }
                                None => access.scan(group),
                            }
                        }
                        PartitionedFile::new_from_meta(object_store::ObjectMeta {
                            location: file.location,
                            last_modified: Default::default(),
                            size: file.meta.bytes,
                            e_tag: None,
                            version: None,
                        })
                        .with_extension(access)
                        .with_extension(file.meta)
                    })
                    .collect(),
            )
        })
        .collect();
    let source = ParquetSource::new(Arc::clone(plan.table_schema()))
        .with_parquet_file_reader_factory(Arc::new(CheckedFiles { store: Arc::clone(store) }))
        .with_enable_page_index(true);
    // The factory reads from the table's store; the URL only names it.
    let config = FileScanConfigBuilder::new(
        datafusion::execution::object_store::ObjectStoreUrl::local_filesystem(),
        Arc::new(source),
    )
    .with_file_groups(groups)
    .with_projection_indices(Some(plan.projection().to_vec()))?
    .with_batch_size(Some(plan.batch_size()))
    // Each partition reads its own files: a BSP task or a worker runs one
    // partition alone, so no partition may take another's files (work stealing).
    .with_preserve_order(true)
    .build();
    Ok(Some(datafusion::datasource::source::DataSourceExec::from_data_source(config)))
}

/// Opens a plain split's files with every range checked against the
/// manifest (the file's [`storage::FileMeta`] rides with it).
#[derive(Debug)]
struct CheckedFiles {
    store: Arc<dyn object_store::ObjectStore>,
}

impl datafusion::datasource::physical_plan::ParquetFileReaderFactory for CheckedFiles {
    fn create_reader(
        &self,
        _partition: usize,
        file: datafusion::datasource::listing::PartitionedFile,
        _metadata_size_hint: Option<usize>,
        _metrics: &datafusion::physical_plan::metrics::ExecutionPlanMetricsSet,
    ) -> datafusion::error::Result<Box<dyn datafusion::parquet::arrow::async_reader::AsyncFileReader + Send>> {
        let meta = file.extension::<Arc<storage::FileMeta>>().cloned().ok_or_else(|| {
            datafusion::error::DataFusionError::Internal("a Dynamic Table file without its manifest entry".into())
        })?;
        Ok(Box::new(OurErrors(storage::file::CheckedParquet::new(
            Arc::clone(&self.store),
            file.object_meta.location,
            meta,
        ))))
    }
}

/// A checked reader whose storage errors (a damaged or missing file) reach
/// the user as ours, with their SQLSTATE (XX001 for damage), not as
/// Parquet's.
struct OurErrors(storage::file::CheckedParquet);

fn ours(error: datafusion::parquet::errors::ParquetError) -> datafusion::parquet::errors::ParquetError {
    use datafusion::parquet::errors::ParquetError;
    match error {
        ParquetError::External(inner) => match inner.downcast::<storage::Error>() {
            Ok(storage) => ParquetError::External(Box::new(crate::Error::from(*storage))),
            Err(inner) => ParquetError::External(inner),
        },
        other => other,
    }
}

impl datafusion::parquet::arrow::async_reader::AsyncFileReader for OurErrors {
    fn get_bytes(
        &mut self,
        range: std::ops::Range<u64>,
    ) -> futures::future::BoxFuture<'_, datafusion::parquet::errors::Result<bytes::Bytes>> {
        Box::pin(self.0.get_bytes(range).map_err(ours))
    }

    fn get_byte_ranges(
        &mut self,
        ranges: Vec<std::ops::Range<u64>>,
    ) -> futures::future::BoxFuture<'_, datafusion::parquet::errors::Result<Vec<bytes::Bytes>>> {
        Box::pin(self.0.get_byte_ranges(ranges).map_err(ours))
    }

    fn get_metadata<'a>(
        &'a mut self,
        options: Option<&'a datafusion::parquet::arrow::arrow_reader::ArrowReaderOptions>,
    ) -> futures::future::BoxFuture<
        'a,
        datafusion::parquet::errors::Result<Arc<datafusion::parquet::file::metadata::ParquetMetaData>>,
    > {
        Box::pin(self.0.get_metadata(options).map_err(ours))
    }
}

impl DynamicScanExec {
    /// Bytes of the row groups the scan reads.
    pub fn bytes(&self) -> u64 {
        self.plan.bytes
    }

    /// The scan, to run elsewhere ([`DynamicScanExec::decode`]): the
    /// table's name and directory, and the planned splits of its pinned snapshot.
    ///
    /// # Errors
    /// The plan cannot be encoded.
    pub fn encode(&self) -> datafusion::error::Result<Vec<u8>> {
        let plan = self.plan.encode().map_err(df_error)?;
        let mut out = Vec::with_capacity(plan.len() + 64);
        for text in [self.table.name(), self.table.dir().as_ref()] {
            out.extend_from_slice(&(text.len() as u32).to_le_bytes());
            out.extend_from_slice(text.as_bytes());
        }
        out.extend_from_slice(&plan);
        Ok(out)
    }

    /// A scan [`DynamicScanExec::encode`] made, reading from `store`.
    ///
    /// # Errors
    /// Bytes that are not such a scan.
    pub fn decode(bytes: &[u8], store: Arc<dyn object_store::ObjectStore>) -> datafusion::error::Result<Self> {
        let bad = || datafusion::error::DataFusionError::Internal("a malformed Dynamic Table scan was sent".into());
        let mut rest = bytes;
        let mut texts = Vec::with_capacity(2);
        for _ in 0..2 {
            let (len, tail) = rest.split_first_chunk::<4>().ok_or_else(bad)?;
            let len = u32::from_le_bytes(*len) as usize;
            let text = tail.get(..len).ok_or_else(bad)?;
            texts.push(std::str::from_utf8(text).map_err(|_| bad())?.to_string());
            rest = &tail[len..];
        }
        let plan = storage::ScanPlan::decode(rest).map_err(df_error)?;
        let table = storage::Table::for_plan(
            store,
            object_store::path::Path::parse(&texts[1]).map_err(|_| bad())?,
            &texts[0],
            &plan,
        );
        Ok(Self::new(Arc::new(table), plan))
    }

    /// The scan's splits shared among `tasks` scans, each of as many
    /// partitions as this one; together they read what it reads.
    pub fn deal(&self, tasks: usize) -> Vec<Self> {
        self.plan.deal(tasks).into_iter().map(|plan| Self::new(Arc::clone(&self.table), plan)).collect()
    }

    /// The table and snapshot scanned (`None`: the table was empty).
    pub fn snapshot(&self) -> (&Arc<storage::Table>, Option<u64>) {
        (&self.table, self.plan.snapshot)
    }
}

/// How many splits a Dynamic Table scan plans per partition (a session
/// configuration extension; 1 when absent): a distributed query plans
/// enough splits that each of its tasks gets a share
/// ([`DynamicScanExec::deal`]).
#[derive(Debug, Clone, Copy)]
pub struct SplitsPerPartition(pub usize);

/// Snapshots a query must read (a session configuration extension): a
/// query planned again, e.g. to run in BSP after MPP ran out of memory,
/// reads what its first plan read.
#[derive(Debug, Default)]
pub struct PinnedSnapshots(pub Vec<(Arc<storage::Table>, u64)>);

impl PinnedSnapshots {
    /// The snapshots the scans of `plan` read.
    pub fn of(plan: &Arc<dyn ExecutionPlan>) -> Self {
        let mut pins: Vec<(Arc<storage::Table>, u64)> = Vec::new();
        let _ = datafusion::common::tree_node::TreeNode::apply(plan, |node| {
            if let Some(scan) = node.downcast_ref::<DynamicScanExec>()
                && let (table, Some(id)) = scan.snapshot()
            {
                // A table read at several snapshots (time travel too): the plain scan read the newest.
                match pins.iter_mut().find(|(t, _)| Arc::ptr_eq(t, table)) {
                    Some(pin) => pin.1 = pin.1.max(id),
                    None => pins.push((Arc::clone(table), id)),
                }
            }
            Ok(TreeNodeRecursion::Continue)
        });
        Self(pins)
    }

    /// The pinned snapshot of `table`.
    pub fn get(&self, table: &Arc<storage::Table>) -> Option<u64> {
        self.0.iter().find(|(t, _)| Arc::ptr_eq(t, table)).map(|(_, id)| *id)
    }
}

/// [`SnapshotPinning`](crate::catalog::SnapshotPinning) of Dynamic Table
/// scans: the pins travel as a session-config extension that
/// [`DynamicTable`](super::DynamicTable) scans read.
#[derive(Debug, Default)]
pub struct DynamicSnapshotPinning;

impl crate::catalog::SnapshotPinning for DynamicSnapshotPinning {
    fn pin(
        &self,
        plan: &Arc<dyn ExecutionPlan>,
        config: datafusion::prelude::SessionConfig,
    ) -> datafusion::prelude::SessionConfig {
        config.with_extension(Arc::new(PinnedSnapshots::of(plan)))
    }
}

impl DisplayAs for DynamicScanExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let splits: usize = self.plan.partitions.iter().map(Vec::len).sum();
        write!(f, "DynamicTableScan: table={}", self.table.name())?;
        match self.plan.snapshot {
            Some(id) => write!(f, ", snapshot={id}")?,
            None => write!(f, ", snapshot=none")?,
        }
        let merged: usize = self.merged.partitions.iter().map(Vec::len).sum();
        write!(f, ", splits={splits} (plain {}), rows<={}", splits - merged, self.plan.rows)?;
        // Predicates pruning the plain splits (pushed filters, joins' dynamic filters).
        let mut predicates = Vec::new();
        let _ = self.apply_expressions(&mut |expr| {
            predicates.push(expr.to_string());
            Ok(TreeNodeRecursion::Continue)
        });
        if !predicates.is_empty() {
            write!(f, ", pruning=[{}]", predicates.join(", "))?;
        }
        Ok(())
    }
}

impl ExecutionPlan for DynamicScanExec {
    fn name(&self) -> &'static str {
        "DynamicTableScan"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![]
    }

    fn apply_expressions(
        &self,
        f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> datafusion::error::Result<TreeNodeRecursion>,
    ) -> datafusion::error::Result<TreeNodeRecursion> {
        // The predicates pushed into the Parquet part (a join's dynamic
        // filter is only computed when its probe side shows it here).
        match &self.plain {
            Some(plain) => plain.apply_expressions(f),
            None => Ok(TreeNodeRecursion::Continue),
        }
    }

    fn replace_children(
        self: Arc<Self>,
        _: Vec<Arc<dyn ExecutionPlan>>,
        _: ReplaceChildrenOptions,
    ) -> datafusion::error::Result<Arc<dyn ExecutionPlan>> {
        Ok(self)
    }

    fn with_new_children(
        self: Arc<Self>,
        children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> datafusion::error::Result<Arc<dyn ExecutionPlan>> {
        self.replace_children(children, ReplaceChildrenOptions::new(ChildrenPropertiesMode::Recompute))
    }

    fn handle_child_pushdown_result(
        &self,
        phase: FilterPushdownPhase,
        child_pushdown_result: ChildPushdownResult,
        config: &datafusion::config::ConfigOptions,
    ) -> datafusion::error::Result<FilterPushdownPropagation<Arc<dyn ExecutionPlan>>> {
        // Parent filters prune the Parquet part (row groups, pages, files);
        // none counts as applied, since the merged part ignores them: the
        // filter above the scan stays.
        let filters = vec![PushedDown::No; child_pushdown_result.parent_filters.len()];
        let Some(plain) = &self.plain else {
            return Ok(FilterPushdownPropagation::with_parent_pushdown_result(filters));
        };
        let pushed = plain.handle_child_pushdown_result(phase, child_pushdown_result, config)?;
        let mut result = FilterPushdownPropagation::with_parent_pushdown_result(filters);
        if let Some(plain) = pushed.updated_node {
            result = result.with_updated_node(Arc::new(self.with_plain(Some(plain))) as Arc<dyn ExecutionPlan>);
        }
        Ok(result)
    }

    fn reset_state(self: Arc<Self>) -> datafusion::error::Result<Arc<dyn ExecutionPlan>> {
        let plain = match &self.plain {
            Some(plain) => Some(Arc::clone(plain).reset_state()?),
            None => None,
        };
        Ok(Arc::new(self.with_plain(plain)))
    }

    fn metrics(&self) -> Option<datafusion::physical_plan::metrics::MetricsSet> {
        self.plain.as_ref().and_then(|plain| plain.metrics())
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> datafusion::error::Result<SendableRecordBatchStream> {
        let schema = Arc::clone(&self.plan.schema);
        let merged = self.table.read_partition(&self.merged, partition).map_err(df_error);
        let mut learned = Learned::new(self.dynamic_filters(), self.probed);
        let Some(plain) = &self.plain else {
            let merged = merged.and_then(move |batch| futures::future::ready(learned.apply(batch)));
            return Ok(Box::pin(RecordBatchStreamAdapter::new(schema, merged)));
        };
        // Batches carry the scan's schema exactly (names, nullability, metadata).
        let conform = Arc::clone(&schema);
        let plain = plain.execute(partition, context)?.and_then(move |batch| {
            let options = datafusion::arrow::array::RecordBatchOptions::new().with_row_count(Some(batch.num_rows()));
            let batch = datafusion::arrow::array::RecordBatch::try_new_with_options(
                Arc::clone(&conform),
                batch.columns().to_vec(),
                &options,
            )
            .map_err(Into::into);
            futures::future::ready(batch)
        });
        let rows = plain.chain(merged).and_then(move |batch| futures::future::ready(learned.apply(batch)));
        Ok(Box::pin(RecordBatchStreamAdapter::new(schema, rows)))
    }

    fn statistics_from_inputs(
        &self,
        _input_stats: &[Arc<Statistics>],
        args: &StatisticsArgs,
    ) -> datafusion::error::Result<Arc<Statistics>> {
        // The rows of the row groups read are exactly the rows returned
        // when nothing is merged (no other version, no tombstone) and no
        // predicate prunes the Parquet part as it runs.
        let mut pruning = false;
        let _ = self.apply_expressions(&mut |_| {
            pruning = true;
            Ok(TreeNodeRecursion::Stop)
        });
        let merged = self.merged.partitions.iter().any(|p| !p.is_empty());
        let exact = !merged && !pruning;
        let precision = |n: u64| if exact { Precision::Exact(n as usize) } else { Precision::Inexact(n as usize) };
        let (rows, bytes) = match args.partition() {
            None => (precision(self.plan.rows), self.plan.bytes),
            Some(_) => {
                let share = self.plan.partitions.len().max(1) as u64;
                (Precision::Inexact((self.plan.rows / share) as usize), self.plan.bytes / share)
            }
        };
        let mut statistics = Statistics::new_unknown(&self.plan.schema)
            .with_num_rows(rows)
            .with_total_byte_size(Precision::Inexact(bytes as usize));
        if args.partition().is_none() {
            let key = self.plan.single_key_column();
            let scalar = |array: &Option<ArrayRef>| {
                array
                    .as_ref()
                    .and_then(|a| ScalarValue::try_from_array(a, 0).ok())
                    .map_or(Precision::Absent, Precision::Inexact)
            };
            statistics.column_statistics = self
                .spans
                .get_or_init(|| self.plan.column_spans())
                .iter()
                .zip(self.plan.projection())
                .map(|(span, &column)| {
                    let mut stats = datafusion::common::ColumnStatistics::new_unknown()
                        .with_min_value(scalar(&span.min))
                        .with_max_value(scalar(&span.max))
                        .with_null_count(span.nulls.map_or(Precision::Absent, |n| Precision::Inexact(n as usize)));
                    if key == Some(column) {
                        // A single-column primary key: one row per value.
                        stats = stats.with_distinct_count(Precision::Inexact(self.plan.rows as usize));
                    }
                    stats
                })
                .collect();
        }
        Ok(Arc::new(statistics))
    }
}

/// Bounds on `column` implied by `filters`: `(lower, upper)`, inclusive, as
/// one-element arrays.
pub fn key_bounds(column: &str, filters: &[Expr]) -> (Option<ArrayRef>, Option<ArrayRef>) {
    let mut lower: Option<ScalarValue> = None;
    let mut upper: Option<ScalarValue> = None;
    let mut tighten = |value: &ScalarValue, is_lower: bool| {
        let slot = if is_lower { &mut lower } else { &mut upper };
        let better = match slot.as_ref() {
            None => true,
            Some(current) => match value.partial_cmp(current) {
                Some(std::cmp::Ordering::Greater) => is_lower,
                Some(std::cmp::Ordering::Less) => !is_lower,
                _ => false,
            },
        };
        if better && !value.is_null() {
            *slot = Some(value.clone());
        }
    };
    for filter in filters {
        for conjunct in datafusion::logical_expr::utils::split_conjunction(filter) {
            match conjunct {
                Expr::BinaryExpr(BinaryExpr { left, op, right }) => {
                    let (value, op) = match (left.as_ref(), right.as_ref()) {
                        (Expr::Column(c), Expr::Literal(v, _)) if c.name == column => (v, *op),
                        (Expr::Literal(v, _), Expr::Column(c)) if c.name == column => match op.swap() {
                            Some(op) => (v, op),
                            None => continue,
                        },
                        _ => continue,
                    };
                    match op {
                        Operator::Eq => {
                            tighten(value, true);
                            tighten(value, false);
                        }
                        Operator::Gt | Operator::GtEq => tighten(value, true),
                        Operator::Lt | Operator::LtEq => tighten(value, false),
                        _ => {}
                    }
                }
                Expr::Between(between) if !between.negated => {
                    if let (Expr::Column(c), Expr::Literal(lo, _), Expr::Literal(hi, _)) =
                        (between.expr.as_ref(), between.low.as_ref(), between.high.as_ref())
                        && c.name == column
                    {
                        tighten(lo, true);
                        tighten(hi, false);
                    }
                }
                Expr::InList(list) if !list.negated => {
                    if let Expr::Column(c) = list.expr.as_ref()
                        && c.name == column
                    {
                        let values: Option<Vec<&ScalarValue>> = list
                            .list
                            .iter()
                            .map(|e| match e {
                                Expr::Literal(v, _) if !v.is_null() => Some(v),
                                _ => None,
                            })
                            .collect();
                        if let Some(values) = values {
                            let min = values
                                .iter()
                                .copied()
                                .min_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
                            let max = values
                                .iter()
                                .copied()
                                .max_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
                            if let (Some(min), Some(max)) = (min, max) {
                                tighten(min, true);
                                tighten(max, false);
                            }
                        }
                    }
                }
                _ => {}
            }
        }
    }
    let array = |v: Option<ScalarValue>| v.and_then(|v| v.to_array().ok());
    (array(lower), array(upper))
}
