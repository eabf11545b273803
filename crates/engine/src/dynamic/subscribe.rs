//! `SUBSCRIBE TO t`: a Dynamic Table's content at a snapshot as `+I` rows,
//! then the changelog of every later commit, in commit order, forever.
//!
//! The statement is rewritten (see [`rewrite`]) into a scan of the table
//! function `subscribe('t', 'option=value', …)`, whose [`SubscribeExec`] is
//! an unbounded DataFusion source: every protocol that streams query results
//! streams a subscription, and `COPY (SUBSCRIBE …) TO STDOUT` and cursors
//! work unchanged. Each row carries `_kind` (`+I`, `-U`, `+U`, `-D`) and
//! `_snapshot`.
//!
//! The subscriber reads at its own pace: it waits on the table's commit
//! notification ([`storage::Table::watch_commits`]), then reads the next
//! snapshot's changelog a row group at a time, so a slow client holds no
//! more than a row group in memory. A live subscriber holds the snapshots
//! it still needs back from expiry; a named consumer (`consumer = 'name'`)
//! records its progress in the table, so a later SUBSCRIBE with the same
//! name resumes after the last snapshot it finished sending.

use std::sync::Arc;

use async_trait::async_trait;
use datafusion::arrow::array::{Array, ArrayRef, AsArray, Int64Array, RecordBatch, StringArray};
use datafusion::arrow::datatypes::{DataType, Field, Int8Type, Schema, SchemaRef};
use datafusion::catalog::{Session as DfSession, TableFunctionImpl, TableProvider};
use datafusion::common::ScalarValue;
use datafusion::common::tree_node::TreeNodeRecursion;
use datafusion::datasource::TableType;
use datafusion::execution::{SendableRecordBatchStream, TaskContext};
use datafusion::logical_expr::Expr;
use datafusion::physical_expr::{EquivalenceProperties, PhysicalExpr};
use datafusion::physical_plan::execution_plan::{Boundedness, EmissionType};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    ChildrenPropertiesMode, DisplayAs, DisplayFormatType, ExecutionPlan, Partitioning, PlanProperties,
    ReplaceChildrenOptions,
};
use futures::StreamExt;
use futures::stream::BoxStream;
use streamhouse_storage as storage;

use super::df_error;
use crate::catalog::{CatalogRef, DEFAULT_SCHEMA, RelationName};
use crate::error::{Error, Result, StatusCode};

/// The columns every subscription row has after the table's.
pub const KIND_COLUMN: &str = "_kind";
/// The snapshot whose commit made the change.
pub const SNAPSHOT_COLUMN: &str = "_snapshot";

/// Where a subscription starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// The latest snapshot.
    Latest,
    /// `AS OF SNAPSHOT n`.
    Snapshot(u64),
    /// `AS OF TIMESTAMP …`: the latest snapshot committed at or before (ms since the epoch).
    Timestamp(i64),
}

/// A subscription's options.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubscribeOptions {
    /// The start snapshot.
    pub start: Start,
    /// Whether the start snapshot's content comes first (as `+I` rows).
    pub snapshot: bool,
    /// A named consumer: resume where it left off, and record progress.
    pub consumer: Option<String>,
}

impl SubscribeOptions {
    /// Options from `key=value` strings (`as_of_snapshot`, `as_of_timestamp`,
    /// `snapshot`, `consumer`).
    ///
    /// # Errors
    /// An unknown option or a bad value (22023).
    pub fn parse(options: &[String]) -> Result<Self> {
        let mut out = Self { start: Start::Latest, snapshot: true, consumer: None };
        for option in options {
            let (key, value) = option.split_once('=').unwrap_or((option, ""));
            let (key, value) = (key.trim().to_ascii_lowercase(), value.trim());
            match key.as_str() {
                "as_of_snapshot" => {
                    let id = value.parse::<u64>().ok().filter(|&id| id > 0).ok_or_else(|| {
                        Error::invalid(format!("AS OF SNAPSHOT needs a positive snapshot id, got \"{value}\""))
                    })?;
                    out.start = Start::Snapshot(id);
                }
                "as_of_timestamp" => out.start = Start::Timestamp(timestamp_ms(value)?),
                "snapshot" => {
                    out.snapshot = match value.to_ascii_lowercase().as_str() {
                        "true" | "on" | "1" | "yes" => true,
                        "false" | "off" | "0" | "no" => false,
                        _ => {
                            return Err(Error::invalid(format!(
                                "SUBSCRIBE option snapshot takes true or false, got \"{value}\""
                            )));
                        }
                    }
                }
                "consumer" => {
                    if value.is_empty() {
                        return Err(Error::invalid("SUBSCRIBE option consumer needs a name"));
                    }
                    out.consumer = Some(value.to_owned());
                }
                other => {
                    return Err(Error::invalid(format!(
                        "unknown SUBSCRIBE option \"{other}\" (options: snapshot, consumer)"
                    )));
                }
            }
        }
        Ok(out)
    }
}

fn timestamp_ms(text: &str) -> Result<i64> {
    use datafusion::arrow::compute::cast;
    use datafusion::arrow::datatypes::TimeUnit;
    let parsed = cast(&StringArray::from(vec![text]), &DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into())));
    match parsed {
        Ok(array) if array.is_valid(0) => {
            Ok(array.as_primitive::<datafusion::arrow::datatypes::TimestampMillisecondType>().value(0))
        }
        _ => Err(Error::new(
            StatusCode::InvalidTextRepresentation,
            format!("invalid input syntax for type timestamp with time zone: \"{text}\""),
        )),
    }
}

/// The output columns of a subscription of a table with columns `user`.
pub fn subscription_schema(user: &Schema) -> SchemaRef {
    let mut fields: Vec<Field> = user.fields().iter().map(|f| f.as_ref().clone().with_nullable(true)).collect();
    fields.push(Field::new(KIND_COLUMN, DataType::Utf8, false));
    fields.push(Field::new(SNAPSHOT_COLUMN, DataType::Int64, false));
    Arc::new(Schema::new(fields))
}

/// Tells a subscription whether its client is still connected, so a named
/// consumer's progress is never recorded for a client that went away
/// (installed per session by the protocol front end).
#[derive(Clone)]
pub struct ClientProbe(pub Arc<dyn Fn() -> bool + Send + Sync>);

impl std::fmt::Debug for ClientProbe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ClientProbe")
    }
}

/// The table function `subscribe(table, 'option=value', …)`.
#[derive(Debug)]
pub struct SubscribeFunction {
    catalog: CatalogRef,
}

impl SubscribeFunction {
    /// Subscriptions to tables of `catalog`.
    pub fn new(catalog: CatalogRef) -> Self {
        Self { catalog }
    }
}

fn string_literal(expr: &Expr) -> Option<String> {
    match expr {
        Expr::Literal(
            ScalarValue::Utf8(Some(s)) | ScalarValue::Utf8View(Some(s)) | ScalarValue::LargeUtf8(Some(s)),
            _,
        ) => Some(s.clone()),
        _ => None,
    }
}

impl TableFunctionImpl for SubscribeFunction {
    fn call(&self, args: &[Expr]) -> datafusion::error::Result<Arc<dyn TableProvider>> {
        let usage = || {
            df_error(Error::invalid("subscribe(table, 'option=value', …) takes string literals; write SUBSCRIBE TO t"))
        };
        let (name, options) = args.split_first().ok_or_else(usage)?;
        let name = string_literal(name).ok_or_else(usage)?;
        let options = options.iter().map(string_literal).collect::<Option<Vec<_>>>().ok_or_else(usage)?;
        let options = SubscribeOptions::parse(&options).map_err(df_error)?;
        let name = match name.split_once('.') {
            Some((schema, table)) => RelationName { schema: schema.to_string(), name: table.to_string() },
            None => RelationName { schema: DEFAULT_SCHEMA.to_string(), name },
        };
        let (table, columns) = self.catalog.subscribe_to(&name).map_err(df_error)?;
        Ok(Arc::new(SubscriptionTable::new(table, columns, options)))
    }
}

/// A subscription, as a table DataFusion scans.
#[derive(Debug)]
pub struct SubscriptionTable {
    table: Arc<storage::Table>,
    schema: SchemaRef,
    options: SubscribeOptions,
}

impl SubscriptionTable {
    /// A subscription to the first `columns` columns of `table` (a
    /// materialized view's hidden columns follow its visible ones).
    pub fn new(table: Arc<storage::Table>, columns: usize, options: SubscribeOptions) -> Self {
        let user = table.schema().schema;
        let shown = Schema::new(user.fields().iter().take(columns).cloned().collect::<Vec<_>>());
        let schema = subscription_schema(&shown);
        Self { table, schema, options }
    }
}

#[async_trait]
impl TableProvider for SubscriptionTable {
    fn schema(&self) -> SchemaRef {
        Arc::clone(&self.schema)
    }

    fn table_type(&self) -> TableType {
        TableType::Temporary
    }

    async fn scan(
        &self,
        state: &dyn DfSession,
        projection: Option<&Vec<usize>>,
        _filters: &[Expr],
        _limit: Option<usize>,
    ) -> datafusion::error::Result<Arc<dyn ExecutionPlan>> {
        Ok(Arc::new(SubscribeExec::new(
            Arc::clone(&self.table),
            Arc::clone(&self.schema),
            projection.cloned(),
            self.options.clone(),
            state.config().batch_size(),
        )?))
    }
}

/// The unbounded source of a subscription (one partition).
#[derive(Debug)]
pub struct SubscribeExec {
    table: Arc<storage::Table>,
    schema: SchemaRef,
    projection: Option<Vec<usize>>,
    options: SubscribeOptions,
    batch_size: usize,
    properties: Arc<PlanProperties>,
}

impl SubscribeExec {
    fn new(
        table: Arc<storage::Table>,
        schema: SchemaRef,
        projection: Option<Vec<usize>>,
        options: SubscribeOptions,
        batch_size: usize,
    ) -> datafusion::error::Result<Self> {
        let projected = match &projection {
            Some(p) => Arc::new(schema.project(p)?),
            None => Arc::clone(&schema),
        };
        let properties = PlanProperties::new(
            EquivalenceProperties::new(projected),
            Partitioning::UnknownPartitioning(1),
            EmissionType::Incremental,
            Boundedness::Unbounded { requires_infinite_memory: false },
        );
        Ok(Self { table, schema, projection, options, batch_size, properties: Arc::new(properties) })
    }
}

impl DisplayAs for SubscribeExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Subscribe: table={}, start={:?}, snapshot={}",
            self.table.name(),
            self.options.start,
            self.options.snapshot
        )?;
        if let Some(consumer) = &self.options.consumer {
            write!(f, ", consumer={consumer}")?;
        }
        Ok(())
    }
}

impl ExecutionPlan for SubscribeExec {
    fn name(&self) -> &'static str {
        "Subscribe"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        &self.properties
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![]
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> datafusion::error::Result<TreeNodeRecursion>,
    ) -> datafusion::error::Result<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
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

    fn execute(
        &self,
        _partition: usize,
        context: Arc<TaskContext>,
    ) -> datafusion::error::Result<SendableRecordBatchStream> {
        let subscription = Subscription {
            probe: context.session_config().get_extension::<ClientProbe>(),
            commits: self.table.watch_commits(),
            table: Arc::clone(&self.table),
            schema: Arc::clone(&self.schema),
            projection: self.projection.clone(),
            options: self.options.clone(),
            batch_size: self.batch_size,
            phase: Phase::Start,
            hold: None,
        };
        let stream = futures::stream::unfold(subscription, |mut s| async move {
            let item = s.next().await?;
            Some((item.map_err(df_error), s))
        });
        Ok(Box::pin(RecordBatchStreamAdapter::new(
            Arc::clone(self.properties.equivalence_properties().schema()),
            stream,
        )))
    }
}

enum Phase {
    Start,
    /// The start snapshot's content.
    Initial {
        snapshot: u64,
        rows: BoxStream<'static, storage::Result<RecordBatch>>,
    },
    /// The changelog of snapshot `next`, once it is committed.
    Changes {
        next: u64,
        rows: Option<BoxStream<'static, storage::Result<RecordBatch>>>,
    },
}

struct Subscription {
    table: Arc<storage::Table>,
    schema: SchemaRef,
    projection: Option<Vec<usize>>,
    options: SubscribeOptions,
    batch_size: usize,
    commits: tokio::sync::watch::Receiver<u64>,
    phase: Phase,
    hold: Option<storage::SnapshotHold>,
    probe: Option<Arc<ClientProbe>>,
}

impl Subscription {
    /// The next batch; `None` when the table is dropped.
    async fn next(&mut self) -> Option<Result<RecordBatch>> {
        loop {
            match &mut self.phase {
                Phase::Start => {
                    if let Err(e) = self.start().await {
                        return Some(Err(e));
                    }
                }
                Phase::Initial { snapshot, rows } => {
                    let snapshot = *snapshot;
                    match rows.next().await {
                        Some(Ok(batch)) if batch.num_rows() > 0 => {
                            return Some(self.output(&batch, None, snapshot));
                        }
                        Some(Ok(_)) => {}
                        Some(Err(e)) => return Some(Err(e.into())),
                        None => {
                            if let Err(e) = self.finished(snapshot).await {
                                return Some(Err(e));
                            }
                        }
                    }
                }
                Phase::Changes { next, rows: None } => {
                    let next = *next;
                    // Wait for the commit of snapshot `next`.
                    while *self.commits.borrow_and_update() < next {
                        if self.commits.changed().await.is_err() {
                            return None;
                        }
                    }
                    self.phase = Phase::Changes { next, rows: Some(self.table.changelog_of(next)) };
                }
                Phase::Changes { next, rows: Some(rows) } => {
                    let next = *next;
                    match rows.next().await {
                        Some(Ok(batch)) if batch.num_rows() > 0 => {
                            let kinds = batch.column(batch.num_columns() - 1);
                            return Some(self.output(&batch, Some(kinds), next));
                        }
                        Some(Ok(_)) => {}
                        Some(Err(storage::Error::NotFound { .. })) => {
                            return Some(Err(Error::new(
                                StatusCode::ObjectNotFound,
                                format!(
                                    "snapshot {next} of table {} has expired: the subscription fell too far behind",
                                    self.table.name()
                                ),
                            )));
                        }
                        Some(Err(e)) => return Some(Err(e.into())),
                        None => {
                            if let Err(e) = self.finished(next).await {
                                return Some(Err(e));
                            }
                        }
                    }
                }
            }
        }
    }

    /// Resolves the start snapshot and the first phase.
    async fn start(&mut self) -> Result<()> {
        if let Some(name) = &self.options.consumer
            && let Some(consumer) = self.table.consumer(name).await?
        {
            // Resume after what the consumer received.
            self.hold = Some(self.table.hold_snapshots(consumer.next_snapshot));
            // The next snapshot must still exist, unless it is not committed yet.
            let latest = self.table.latest_snapshot().map_or(0, |s| s.id);
            if consumer.next_snapshot <= latest && self.table.read_snapshot(consumer.next_snapshot).await.is_err() {
                return Err(Error::new(
                    StatusCode::ObjectNotFound,
                    format!(
                        "consumer \"{name}\" of table {} needs snapshot {}, which has expired",
                        self.table.name(),
                        consumer.next_snapshot
                    ),
                ));
            }
            self.phase = Phase::Changes { next: consumer.next_snapshot, rows: None };
            return Ok(());
        }
        let start = match self.options.start {
            Start::Latest => self.table.latest_snapshot().map_or(0, |s| s.id),
            Start::Snapshot(id) => {
                self.table.read_snapshot(id).await.map_err(|_| {
                    Error::invalid(format!("table {} has no snapshot {id} (it may have expired)", self.table.name()))
                })?;
                id
            }
            Start::Timestamp(ms) => {
                self.table.snapshots().await?.iter().filter(|s| s.commit_time_ms <= ms).map(|s| s.id).max().ok_or_else(
                    || Error::invalid(format!("table {} has no snapshot at or before that time", self.table.name())),
                )?
            }
        };
        self.hold = Some(self.table.hold_snapshots(start.max(1)));
        if self.options.snapshot && start > 0 {
            let columns = self.table.schema().schema.fields().len();
            let request = storage::ScanRequest {
                projection: Some((0..columns).collect()),
                lower: None,
                upper: None,
                partitions: 1,
                batch_size: self.batch_size,
            };
            let plan = self.table.plan_scan(Some(start), &request).await?;
            self.phase = Phase::Initial { snapshot: start, rows: self.table.read_partition(&plan, 0) };
        } else {
            self.finished(start).await?;
        }
        Ok(())
    }

    /// Everything of `snapshot` was sent: a consumer records it, and the
    /// changes of the next snapshot come next.
    async fn finished(&mut self, snapshot: u64) -> Result<()> {
        let next = snapshot + 1;
        if let Some(name) = &self.options.consumer {
            // Data written to a client that has gone was not received.
            if self.probe.as_ref().is_some_and(|p| !(p.0)()) {
                return Err(Error::new(StatusCode::Cancelled, "the subscriber disconnected"));
            }
            self.table.set_consumer(name, next).await?;
        }
        if let Some(hold) = &self.hold {
            hold.advance(next);
        }
        self.phase = Phase::Changes { next, rows: None };
        Ok(())
    }

    /// A batch of user columns as subscription rows.
    fn output(&self, batch: &RecordBatch, kinds: Option<&ArrayRef>, snapshot: u64) -> Result<RecordBatch> {
        let rows = batch.num_rows();
        let user = self.schema.fields().len() - 2;
        let mut columns: Vec<ArrayRef> = batch.columns()[..user].to_vec();
        let kind: StringArray = match kinds.and_then(|k| k.as_primitive_opt::<Int8Type>()) {
            Some(codes) => codes
                .values()
                .iter()
                .map(|&c| Some(storage::RowKind::from_code(c).map_or("?", storage::RowKind::symbol)))
                .collect(),
            None => std::iter::repeat_n(Some("+I"), rows).collect(),
        };
        columns.push(Arc::new(kind));
        columns.push(Arc::new(Int64Array::from(vec![snapshot as i64; rows])));
        let batch = RecordBatch::try_new(Arc::clone(&self.schema), columns)?;
        Ok(match &self.projection {
            Some(p) => batch.project(p)?,
            None => batch,
        })
    }
}

/// Rewrites `SUBSCRIBE [TO] t [AS OF SNAPSHOT n | AS OF TIMESTAMP 'ts']
/// [WITH (option = value, …)]` — standing alone, in `COPY (…) TO STDOUT` or
/// after `DECLARE c CURSOR FOR` — into `SELECT * FROM subscribe('t', …)`,
/// and `FETCH` in the forms Postgres and Materialize accept into the one
/// sqlparser reads. Other SQL is returned unchanged (`None`).
pub fn rewrite(sql: &str) -> std::result::Result<Option<String>, String> {
    use datafusion::sql::sqlparser::dialect::PostgreSqlDialect;
    use datafusion::sql::sqlparser::tokenizer::{Token, Tokenizer};
    let lower = sql.to_ascii_lowercase();
    if !lower.contains("subscribe") && !lower.contains("fetch") {
        return Ok(None);
    }
    let Ok(tokens) = Tokenizer::new(&PostgreSqlDialect {}, sql).tokenize() else { return Ok(None) };
    let is_word = |t: &Token, w: &str| matches!(t, Token::Word(word) if word.quote_style.is_none() && word.value.eq_ignore_ascii_case(w));
    let mut out = String::new();
    let mut changed = false;
    let mut i = 0;
    // Whether the previous significant token allows a statement here.
    let mut statement_start = true;
    while i < tokens.len() {
        let token = &tokens[i];
        if statement_start && is_word(token, "subscribe") {
            let mut j = i + 1;
            let skip_ws = |j: &mut usize| {
                while *j < tokens.len() && matches!(tokens[*j], Token::Whitespace(_)) {
                    *j += 1;
                }
            };
            skip_ws(&mut j);
            if j < tokens.len() && is_word(&tokens[j], "to") {
                j += 1;
                skip_ws(&mut j);
            }
            // The table name: words separated by dots.
            let mut name = String::new();
            while j < tokens.len() {
                match &tokens[j] {
                    Token::Word(w) => {
                        name.push_str(&if w.quote_style.is_some() { w.value.clone() } else { w.value.to_lowercase() });
                        j += 1;
                    }
                    Token::Period => {
                        name.push('.');
                        j += 1;
                    }
                    _ => break,
                }
            }
            if name.is_empty() {
                return Err("SUBSCRIBE needs a table name: SUBSCRIBE TO t".into());
            }
            let mut options: Vec<String> = Vec::new();
            skip_ws(&mut j);
            if j < tokens.len() && is_word(&tokens[j], "as") {
                j += 1;
                skip_ws(&mut j);
                if !(j < tokens.len() && is_word(&tokens[j], "of")) {
                    return Err("expected OF after SUBSCRIBE … AS".into());
                }
                j += 1;
                skip_ws(&mut j);
                let kind = if j < tokens.len() && is_word(&tokens[j], "timestamp") {
                    j += 1;
                    "as_of_timestamp"
                } else {
                    if j < tokens.len() && is_word(&tokens[j], "snapshot") {
                        j += 1;
                    }
                    "as_of_snapshot"
                };
                skip_ws(&mut j);
                let value = match tokens.get(j) {
                    Some(Token::Number(n, _)) => n.clone(),
                    Some(Token::SingleQuotedString(s)) => s.clone(),
                    _ => return Err("AS OF takes a snapshot id or a timestamp string".into()),
                };
                options.push(format!("{kind}={value}"));
                j += 1;
                skip_ws(&mut j);
            }
            if j < tokens.len() && is_word(&tokens[j], "with") {
                j += 1;
                skip_ws(&mut j);
                if !matches!(tokens.get(j), Some(Token::LParen)) {
                    return Err("expected ( after SUBSCRIBE … WITH".into());
                }
                j += 1;
                loop {
                    skip_ws(&mut j);
                    let key = match tokens.get(j) {
                        Some(Token::Word(w)) => w.value.to_lowercase(),
                        Some(Token::RParen) => {
                            j += 1;
                            break;
                        }
                        _ => return Err("expected an option name in SUBSCRIBE … WITH (…)".into()),
                    };
                    j += 1;
                    skip_ws(&mut j);
                    if matches!(tokens.get(j), Some(Token::Eq)) {
                        j += 1;
                        skip_ws(&mut j);
                    }
                    let value = match tokens.get(j) {
                        Some(Token::Word(w)) => w.value.clone(),
                        Some(Token::SingleQuotedString(s)) => s.clone(),
                        Some(Token::Number(n, _)) => n.clone(),
                        _ => return Err(format!("expected a value for SUBSCRIBE option {key}")),
                    };
                    j += 1;
                    options.push(format!("{key}={value}"));
                    skip_ws(&mut j);
                    match tokens.get(j) {
                        Some(Token::Comma) => j += 1,
                        Some(Token::RParen) => {
                            j += 1;
                            break;
                        }
                        _ => return Err("expected , or ) in SUBSCRIBE … WITH (…)".into()),
                    }
                }
            }
            let quote = |s: &str| format!("'{}'", s.replace('\'', "''"));
            out.push_str("SELECT * FROM subscribe(");
            out.push_str(&quote(&name));
            for option in &options {
                out.push_str(", ");
                out.push_str(&quote(option));
            }
            out.push_str(") ");
            changed = true;
            i = j;
            statement_start = false;
            continue;
        }
        if statement_start && is_word(token, "fetch") {
            // `FETCH [FORWARD] [n | ALL | NEXT] [FROM | IN] c [WITH (timeout = '1s')]`, as
            // Postgres and Materialize take it: FROM becomes explicit, and the
            // timeout travels as `INTO "timeout=…"` (FETCH INTO is not SQL).
            let mut j = i + 1;
            let mut words: Vec<String> = Vec::new();
            let mut timeout = None;
            while j < tokens.len() {
                match &tokens[j] {
                    Token::Whitespace(_) => {}
                    Token::Word(w) if w.quote_style.is_none() && w.value.eq_ignore_ascii_case("with") => {
                        let mut k = j + 1;
                        let mut inner = String::new();
                        while k < tokens.len() && !matches!(tokens[k], Token::RParen) {
                            match &tokens[k] {
                                Token::SingleQuotedString(v) => inner.push_str(v),
                                Token::Whitespace(_) | Token::LParen => {}
                                other => inner.push_str(&other.to_string()),
                            }
                            k += 1;
                        }
                        let Some(value) = inner.to_ascii_lowercase().strip_prefix("timeout=").map(str::to_owned) else {
                            return Err(format!("unknown FETCH option: {inner} (FETCH … WITH (timeout = '1s'))"));
                        };
                        timeout = Some(value);
                        j = k;
                    }
                    Token::Word(w)
                        if w.quote_style.is_none()
                            && (w.value.eq_ignore_ascii_case("from") || w.value.eq_ignore_ascii_case("in")) => {}
                    Token::SemiColon => break,
                    other => words.push(other.to_string()),
                }
                j += 1;
            }
            if let Some(name) = words.pop() {
                out.push_str("FETCH ");
                for word in &words {
                    out.push_str(word);
                    out.push(' ');
                }
                out.push_str("FROM ");
                out.push_str(&name);
                if let Some(timeout) = timeout {
                    out.push_str(&format!(" INTO \"timeout={}\"", timeout.replace('"', "")));
                }
                changed = true;
                i = j;
                statement_start = false;
                continue;
            }
        }
        match token {
            Token::Whitespace(_) => {}
            Token::SemiColon | Token::LParen => statement_start = true,
            t if is_word(t, "for") => statement_start = true,
            _ => statement_start = false,
        }
        out.push_str(&token.to_string());
        i += 1;
    }
    Ok(changed.then_some(out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subscribe_statements_rewrite_to_the_table_function() {
        let r = |s: &str| rewrite(s).unwrap();
        assert_eq!(r("SELECT 1"), None);
        assert_eq!(r("SUBSCRIBE TO t").as_deref(), Some("SELECT * FROM subscribe('t') "));
        assert_eq!(
            r("subscribe public.Orders as of snapshot 5 with (snapshot = false, consumer = 'etl')").as_deref(),
            Some("SELECT * FROM subscribe('public.orders', 'as_of_snapshot=5', 'snapshot=false', 'consumer=etl') ")
        );
        assert_eq!(
            r("COPY (SUBSCRIBE TO t AS OF TIMESTAMP '2026-01-01 00:00:00') TO STDOUT").as_deref(),
            Some("COPY (SELECT * FROM subscribe('t', 'as_of_timestamp=2026-01-01 00:00:00') ) TO STDOUT")
        );
        assert_eq!(
            r("DECLARE c CURSOR FOR SUBSCRIBE TO t; FETCH 10 c").as_deref(),
            Some("DECLARE c CURSOR FOR SELECT * FROM subscribe('t') ; FETCH 10 FROM c")
        );
        assert_eq!(r("FETCH ALL c WITH (timeout = '1s')").as_deref(), Some("FETCH ALL FROM c INTO \"timeout=1s\""));
        assert_eq!(r("FETCH FORWARD 5 FROM c").as_deref(), Some("FETCH FORWARD 5 FROM c"));
        // A column or table named subscribe is not a statement.
        assert_eq!(r("SELECT subscribe FROM x"), None);
        assert!(rewrite("SUBSCRIBE TO t WITH (snapshot").is_err());
    }
}
