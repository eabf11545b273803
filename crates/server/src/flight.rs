//! The Arrow Flight SQL front end.
//!
//! A query is planned once: GetFlightInfo parses and plans it and keeps the
//! prepared statement under an opaque ticket, redeemable once, within
//! [`TICKET_TTL`], by the user who asked. GetFlightInfo also starts it
//! ([`Started`]): its first batches are computed and encoded while the
//! answer travels to the client and its DoGet comes back, and DoGet streams
//! them. A started statement not fetched within [`STARTED_TTL`] is stopped
//! and its ticket falls back to the plan, which DoGet runs in a fresh session
//! without parsing or planning it again (a DDL statement in between makes
//! it planned again against the new catalog, as for any prepared
//! statement); so does a ticket issued while the user already has
//! [`MAX_STARTED_PER_USER`] started ones. Unredeemed tickets are capped per user. Prepared
//! statements live in a map keyed by an opaque handle until the client closes
//! them; parameters bound by DoPut are kept with the handle. Results stream as
//! they are produced; a client that goes away drops the stream, which stops
//! the query. Errors become gRPC statuses through [`crate::status`].

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use arrow_flight::encode::FlightDataEncoderBuilder;
use arrow_flight::error::FlightError;
use arrow_flight::flight_service_server::FlightService;
use arrow_flight::sql::metadata::{SqlInfoData, SqlInfoDataBuilder};
use arrow_flight::sql::server::{FlightSqlService, PeekableFlightDataStream};
use arrow_flight::sql::{
    ActionClosePreparedStatementRequest, ActionCreatePreparedStatementRequest, ActionCreatePreparedStatementResult,
    CommandGetCatalogs, CommandGetDbSchemas, CommandGetSqlInfo, CommandGetTableTypes, CommandGetTables,
    CommandPreparedStatementQuery, CommandPreparedStatementUpdate, CommandStatementIngest, CommandStatementQuery,
    CommandStatementUpdate, DoPutPreparedStatementResult, ProstMessageExt, SqlInfo, SqlSupportedTransaction,
    TicketStatementQuery,
};
use arrow_flight::{
    Action, FlightData, FlightDescriptor, FlightEndpoint, FlightInfo, HandshakeRequest, HandshakeResponse, IpcMessage,
    SchemaAsIpc, Ticket,
};
use bytes::Bytes;
use datafusion::arrow::array::RecordBatch;
use datafusion::arrow::datatypes::{Field, Schema, SchemaRef};
use datafusion::arrow::ipc::writer::IpcWriteOptions;
use datafusion::common::ParamValues;
use datafusion::execution::SendableRecordBatchStream;
use datafusion::scalar::ScalarValue;
use futures::{Stream, StreamExt, TryStreamExt};
use prost::Message;
use streamhouse_engine::access::Privilege;
use streamhouse_engine::catalog::{RelationKind, RelationName, SYSTEM_SCHEMAS};
use streamhouse_engine::{Engine, Error, Output, Prepared, Session, SessionInfo};
use tonic::{Request, Response, Status};

use crate::status::grpc_status;

pub mod auth;
mod ingest;

type DoGetStream = Pin<Box<dyn Stream<Item = Result<FlightData, Status>> + Send + 'static>>;

/// How long an unredeemed statement ticket stays valid.
const TICKET_TTL: std::time::Duration = std::time::Duration::from_secs(600);

/// Unredeemed tickets one user may hold; the oldest is dropped beyond it.
const MAX_TICKETS_PER_USER: usize = 1024;

/// Started statements one user may hold unfetched; later tickets only keep the plan.
const MAX_STARTED_PER_USER: usize = 4;

/// How long a started statement waits for its DoGet before it is stopped
/// (its ticket then runs the plan again when redeemed).
const STARTED_TTL: std::time::Duration = std::time::Duration::from_secs(30);

/// Batches a started statement computes and encodes ahead of its DoGet.
const STARTED_AHEAD: usize = 2;

/// A statement ticket: a random handle standing for the planned statement,
/// redeemable once by the user who asked for it.
struct TicketEntry {
    owner: String,
    prepared: Arc<Prepared>,
    /// The statement's rows, already being computed (see [`Started`]).
    started: Option<Started>,
    issued: std::time::Instant,
}

/// A statement started by GetFlightInfo. Dropping it (ticket expired,
/// evicted, or the client gone) stops the query.
enum Started {
    /// A query: a task computes and encodes its first [`STARTED_AHEAD`]
    /// messages and waits for DoGet to take them.
    Ahead(tokio::sync::mpsc::Receiver<Result<FlightData, Status>>),
    /// A subscription, not read until its DoGet: a named consumer records
    /// progress only for changes a client asked for.
    Waiting(DoGetStream),
}

impl Started {
    async fn start(session: &mut Session, prepared: &Prepared) -> Result<Self, Status> {
        Ok(match session.execute(prepared, None).await.map_err(|e| grpc_status(&e))? {
            Output::Rows(stream) => Self::ahead(flight_stream(stream)),
            other => Self::Waiting(output_stream(other).await?),
        })
    }

    fn ahead(mut stream: DoGetStream) -> Self {
        use futures::FutureExt;
        let (sender, receiver) = tokio::sync::mpsc::channel(STARTED_AHEAD);
        tokio::spawn(async move {
            loop {
                let next = tokio::select! {
                    _ = sender.closed() => return,
                    next = std::panic::AssertUnwindSafe(stream.next()).catch_unwind() => next,
                };
                let item = match next {
                    Ok(Some(item)) => item,
                    Ok(None) => return,
                    // A bug in an operator: the client gets an error, never a shortened answer.
                    Err(_) => Err(Status::internal("the query failed (an internal error); see the server log")),
                };
                let failed = item.is_err();
                if sender.send(item).await.is_err() || failed {
                    return;
                }
            }
        });
        Self::Ahead(receiver)
    }

    fn into_stream(self) -> DoGetStream {
        match self {
            Self::Ahead(receiver) => Box::pin(futures::stream::unfold(receiver, |mut receiver| async move {
                receiver.recv().await.map(|item| (item, receiver))
            })),
            Self::Waiting(stream) => stream,
        }
    }
}

/// What a redeemed ticket gives DoGet.
enum Redeemed {
    /// Rows already being computed.
    Started(Started),
    /// The plan, to run now.
    Planned(Arc<Prepared>),
}

/// A prepared statement of a Flight SQL client.
struct PreparedEntry {
    /// The user who created it: nobody else may use or close it.
    owner: String,
    prepared: Arc<Prepared>,
    /// Parameter batches bound by the last DoPut (one row per execution).
    params: Vec<RecordBatch>,
    last_used: std::time::Instant,
}

/// The Flight SQL service.
pub struct FlightSqlServer {
    engine: Engine,
    prepared: Mutex<HashMap<Bytes, PreparedEntry>>,
    tickets: Mutex<HashMap<Bytes, TicketEntry>>,
    tokens: Arc<crate::auth::Tokens>,
    /// Prepared statements one user may hold open (more is 53400).
    max_prepared_per_user: usize,
}

impl FlightSqlServer {
    /// A service over `engine`, handing out bearer tokens from `tokens`.
    pub fn new(engine: Engine, tokens: Arc<crate::auth::Tokens>, max_prepared_per_user: usize) -> Self {
        Self {
            engine,
            prepared: Mutex::new(HashMap::new()),
            tickets: Mutex::new(HashMap::new()),
            tokens,
            max_prepared_per_user,
        }
    }

    /// A session for the user the request authenticated as.
    #[allow(clippy::result_large_err)]
    fn session<T>(&self, request: &Request<T>) -> Result<Session, Status> {
        let login = auth::login_of(request)?;
        Ok(self.engine.new_session(SessionInfo {
            user: login.user,
            role: login.role,
            database: None,
            application_name: Some("flight-sql".into()),
            pid: None,
        }))
    }

    /// Locks the tickets, dropping expired ones and stopping started
    /// statements that waited too long for their DoGet.
    #[allow(clippy::result_large_err)]
    fn tickets(&self) -> Result<std::sync::MutexGuard<'_, HashMap<Bytes, TicketEntry>>, Status> {
        let mut tickets = self.tickets.lock().map_err(|_| Status::internal("ticket map poisoned"))?;
        let now = std::time::Instant::now();
        tickets.retain(|_, t| now.duration_since(t.issued) < TICKET_TTL);
        for ticket in tickets.values_mut() {
            if now.duration_since(ticket.issued) >= STARTED_TTL {
                ticket.started = None;
            }
        }
        Ok(tickets)
    }

    /// Whether `owner` may have one more statement started ahead of its DoGet.
    #[allow(clippy::result_large_err)]
    fn may_start(&self, owner: &str) -> Result<bool, Status> {
        let tickets = self.tickets()?;
        Ok(tickets.values().filter(|t| t.owner == owner && t.started.is_some()).count() < MAX_STARTED_PER_USER)
    }

    /// A ticket for `prepared` (and its rows, when `started`), redeemable once by `owner`.
    #[allow(clippy::result_large_err)]
    fn issue_ticket(&self, owner: &str, prepared: Prepared, started: Option<Started>) -> Result<Bytes, Status> {
        let mut tickets = self.tickets()?;
        let held: Vec<(Bytes, std::time::Instant)> =
            tickets.iter().filter(|(_, t)| t.owner == owner).map(|(h, t)| (h.clone(), t.issued)).collect();
        if held.len() >= MAX_TICKETS_PER_USER
            && let Some((oldest, _)) = held.iter().min_by_key(|(_, issued)| *issued)
        {
            tickets.remove(oldest);
        }
        let handle = auth::random_handle();
        let entry = TicketEntry {
            owner: owner.to_string(),
            prepared: Arc::new(prepared),
            started,
            issued: std::time::Instant::now(),
        };
        tickets.insert(handle.clone(), entry);
        Ok(handle)
    }

    /// Redeems a ticket: its started rows or its plan, if `user` asked for it.
    #[allow(clippy::result_large_err)]
    fn redeem_ticket(&self, handle: &Bytes, user: &str) -> Result<Redeemed, Status> {
        let mut tickets = self.tickets()?;
        let entry = tickets
            .get(handle)
            .ok_or_else(|| Status::not_found("unknown or expired ticket: call GetFlightInfo again"))?;
        if entry.owner != user {
            return Err(Status::permission_denied("this ticket was issued to another user"));
        }
        let entry = tickets
            .remove(handle)
            .ok_or_else(|| Status::not_found("unknown or expired ticket: call GetFlightInfo again"))?;
        Ok(match entry.started {
            Some(started) => Redeemed::Started(started),
            None => Redeemed::Planned(entry.prepared),
        })
    }

    /// Parses exactly one statement and plans it.
    async fn prepare(session: &mut Session, sql: &str) -> Result<Prepared, Status> {
        // Flight SQL clients (ADBC, the JDBC driver) mark parameters with `?`.
        let mut statements = session.parse_question_mark_parameters(sql).map_err(|e| grpc_status(&e))?;
        if statements.len() != 1 {
            return Err(Status::invalid_argument(format!(
                "expected exactly one SQL statement, got {}",
                statements.len()
            )));
        }
        let statement = statements.pop().expect("one statement");
        session.prepare(statement).await.map_err(|e| grpc_status(&e))
    }

    /// The prepared statement behind `handle`, if `request`'s user created it.
    #[allow(clippy::result_large_err)]
    fn entry<T>(&self, handle: &Bytes, request: &Request<T>) -> Result<(Arc<Prepared>, Vec<RecordBatch>), Status> {
        let user = auth::login_of(request)?.user;
        let mut map = self.prepared.lock().map_err(|_| Status::internal("prepared statement map poisoned"))?;
        let entry = map.get_mut(handle).ok_or_else(|| {
            Status::not_found("unknown prepared statement handle (closed, or created on another server)")
        })?;
        if entry.owner != user {
            return Err(Status::permission_denied("this prepared statement belongs to another user"));
        }
        entry.last_used = std::time::Instant::now();
        Ok((Arc::clone(&entry.prepared), entry.params.clone()))
    }

    /// Keeps a prepared statement for `owner`, within their cap.
    #[allow(clippy::result_large_err)]
    fn insert(&self, handle: Bytes, owner: String, prepared: Prepared) -> Result<(), Status> {
        let mut map = self.prepared.lock().map_err(|_| Status::internal("prepared statement map poisoned"))?;
        let held = map.values().filter(|e| e.owner == owner).count();
        if held >= self.max_prepared_per_user {
            let error = streamhouse_engine::Error::new(
                streamhouse_engine::StatusCode::ConfigurationLimitExceeded,
                format!(
                    "user \"{owner}\" holds {held} prepared statements, the most server.flight_max_prepared_statements \
                     allows: close some (ActionClosePreparedStatement)"
                ),
            );
            return Err(grpc_status(&error));
        }
        let entry =
            PreparedEntry { owner, prepared: Arc::new(prepared), params: vec![], last_used: std::time::Instant::now() };
        map.insert(handle, entry);
        Ok(())
    }
}

/// The schema a statement's FlightInfo announces: its rows, or none for commands.
fn announced_schema(prepared: &Prepared) -> SchemaRef {
    prepared.result_schema().unwrap_or_else(|| Arc::new(Schema::empty()))
}

/// The ticket of a statement that already ran (DDL or DML at GetFlightInfo):
/// DoGet returns no rows. Not SQL, so it cannot collide with a statement's text.
const EXECUTED: &[u8] = b"\0executed";

/// FlightInfo for a statement that already ran: no columns, one endpoint
/// whose DoGet returns nothing.
fn executed_info(descriptor: FlightDescriptor) -> Result<FlightInfo, Status> {
    let ticket =
        Ticket::new(TicketStatementQuery { statement_handle: Bytes::from_static(EXECUTED) }.as_any().encode_to_vec());
    flight_info(&Schema::empty(), ticket, descriptor)
}

fn flight_info(schema: &Schema, ticket: Ticket, descriptor: FlightDescriptor) -> Result<FlightInfo, Status> {
    Ok(FlightInfo::new()
        .try_with_schema(schema)
        .map_err(|e| Status::internal(format!("cannot encode schema: {e}")))?
        .with_endpoint(FlightEndpoint::new().with_ticket(ticket))
        .with_descriptor(descriptor))
}

/// FlightInfo for a metadata command: the command itself is the ticket, so
/// DoGet receives it back and builds the listing then.
fn metadata_info(
    command: &impl ProstMessageExt,
    schema: &Schema,
    request: Request<FlightDescriptor>,
) -> Result<Response<FlightInfo>, Status> {
    let ticket = Ticket::new(command.as_any().encode_to_vec());
    Ok(Response::new(flight_info(schema, ticket, request.into_inner())?))
}

fn schema_bytes(schema: &Schema) -> Result<Bytes, Status> {
    let IpcMessage(bytes) = IpcMessage::try_from(SchemaAsIpc::new(schema, &IpcWriteOptions::default()))
        .map_err(|e| Status::internal(format!("cannot encode schema: {e}")))?;
    Ok(bytes)
}

fn flight_stream(stream: SendableRecordBatchStream) -> DoGetStream {
    let schema = stream.schema();
    // Views into a join's or a top-k's input would send the input's bytes.
    let batches = stream
        .map(|batch| batch.and_then(|b| streamhouse_engine::exec::task::compact_views(&b)))
        .map_err(|e| FlightError::Tonic(Box::new(grpc_status(&Error::from(e)))));
    Box::pin(FlightDataEncoderBuilder::new().with_schema(schema).build(batches).map_err(Status::from))
}

fn one_batch_stream(schema: SchemaRef, batch: arrow_flight::error::Result<RecordBatch>) -> DoGetStream {
    Box::pin(
        FlightDataEncoderBuilder::new()
            .with_schema(schema)
            .build(futures::stream::once(async { batch }))
            .map_err(Status::from),
    )
}

/// Runs a statement; commands yield an empty stream with an empty schema.
async fn run_to_stream(
    session: &mut Session,
    prepared: &Prepared,
    params: Option<ParamValues>,
) -> Result<DoGetStream, Status> {
    output_stream(session.execute(prepared, params).await.map_err(|e| grpc_status(&e))?).await
}

/// A statement's output as a DoGet stream; commands yield an empty stream with an empty schema.
async fn output_stream(output: Output) -> Result<DoGetStream, Status> {
    match output {
        // A subscription's DoGet stream ends only when the client drops it.
        Output::Rows(stream) | Output::Live(stream) => Ok(flight_stream(stream)),
        // Over Flight, COPY TO STDOUT is just its rows.
        Output::CopyOut(out) => Ok(flight_stream(out.stream)),
        Output::CopyIn(copy) => Err(copy_in_over_flight(*copy).await),
        Output::Command(_) => Ok(empty_stream()),
    }
}

/// A DoGet stream of no rows and no columns.
fn empty_stream() -> DoGetStream {
    let schema = Arc::new(Schema::empty());
    one_batch_stream(Arc::clone(&schema), Ok(RecordBatch::new_empty(schema)))
}

/// Runs a command and returns the rows it affected (0 for DDL).
async fn run_update(session: &mut Session, prepared: &Prepared, params: Option<ParamValues>) -> Result<i64, Status> {
    match session.execute(prepared, params).await.map_err(|e| grpc_status(&e))? {
        Output::Command(done) => Ok(done.rows.unwrap_or(0) as i64),
        Output::CopyIn(copy) => Err(copy_in_over_flight(*copy).await),
        Output::Live(_) | Output::CopyOut(streamhouse_engine::copy::CopyOut { live: true, .. }) => {
            Err(Status::invalid_argument("SUBSCRIBE returns rows that never end: run it as a query (DoGet)"))
        }
        Output::Rows(mut stream) | Output::CopyOut(streamhouse_engine::copy::CopyOut { mut stream, .. }) => {
            // A query sent as an update: run it to completion, report no affected rows.
            while let Some(batch) = stream.next().await {
                batch.map_err(|e| grpc_status(&Error::from(e)))?;
            }
            Ok(0)
        }
    }
}

/// `COPY … FROM STDIN` needs the Postgres protocol's data messages.
async fn copy_in_over_flight(copy: streamhouse_engine::session::CopyIn) -> Status {
    copy.abort().await;
    grpc_status(&Error::unsupported(
        "COPY FROM STDIN is for the Postgres protocol; over Flight SQL, ingest Arrow batches with DoPut \
         (CommandStatementIngest, as ADBC's adbc_ingest sends, or a prepared INSERT)",
    ))
}

static SQL_INFO: std::sync::LazyLock<SqlInfoData> = std::sync::LazyLock::new(|| {
    let mut b = SqlInfoDataBuilder::new();
    b.append(SqlInfo::FlightSqlServerName, "streamhouse");
    b.append(SqlInfo::FlightSqlServerVersion, env!("CARGO_PKG_VERSION"));
    b.append(SqlInfo::FlightSqlServerArrowVersion, "59.3.2");
    b.append(SqlInfo::FlightSqlServerReadOnly, false);
    b.append(SqlInfo::FlightSqlServerSql, true);
    b.append(SqlInfo::FlightSqlServerSubstrait, false);
    b.append(SqlInfo::FlightSqlServerTransaction, SqlSupportedTransaction::None as i32);
    b.append(SqlInfo::FlightSqlServerCancel, false);
    b.append(SqlInfo::SqlDdlCatalog, false);
    b.append(SqlInfo::SqlDdlSchema, true);
    b.append(SqlInfo::SqlDdlTable, true);
    b.append(SqlInfo::SqlIdentifierQuoteChar, "\"");
    b.append(SqlInfo::SqlSchemaTerm, "schema");
    b.append(SqlInfo::SqlCatalogTerm, "database");
    b.build().expect("static SqlInfo values are valid")
});

/// Parameter batches as rows of values.
fn rows_of(batches: &[RecordBatch]) -> Result<Vec<Vec<ScalarValue>>, Status> {
    let mut rows = Vec::new();
    for batch in batches {
        for row in 0..batch.num_rows() {
            let values = batch
                .columns()
                .iter()
                .map(|c| ScalarValue::try_from_array(c.as_ref(), row))
                .collect::<datafusion::error::Result<Vec<_>>>()
                .map_err(|e| Status::invalid_argument(format!("invalid parameter value: {e}")))?;
            rows.push(values);
        }
    }
    Ok(rows)
}

fn relation_table_type(kind: RelationKind) -> &'static str {
    match kind {
        RelationKind::Table => "TABLE",
        RelationKind::View => "VIEW",
        RelationKind::MaterializedView => "MATERIALIZED VIEW",
    }
}

#[tonic::async_trait]
impl FlightSqlService for FlightSqlServer {
    type FlightService = FlightSqlServer;

    /// Login: the interceptor checked the credentials (HTTP Basic, or a
    /// trusted address); the answer is a bearer token for the next calls,
    /// in the `authorization` header and as the payload.
    async fn do_handshake(
        &self,
        request: Request<tonic::Streaming<HandshakeRequest>>,
    ) -> Result<Response<Pin<Box<dyn Stream<Item = Result<HandshakeResponse, Status>> + Send>>>, Status> {
        let login = auth::login_of(&request)?;
        let token = self.tokens.issue(login);
        let reply = HandshakeResponse { protocol_version: 0, payload: Bytes::from(token.clone()) };
        let stream: Pin<Box<dyn Stream<Item = Result<HandshakeResponse, Status>> + Send>> =
            Box::pin(futures::stream::iter([Ok(reply)]));
        let mut response = Response::new(stream);
        let value = format!("Bearer {token}")
            .parse()
            .map_err(|_| Status::internal("bearer token is not a valid header value"))?;
        response.metadata_mut().insert("authorization", value);
        Ok(response)
    }

    async fn get_flight_info_statement(
        &self,
        query: CommandStatementQuery,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let mut session = self.session(&request)?;
        let prepared = Self::prepare(&mut session, &query.query).await?;
        if prepared.result_schema().is_none() {
            // DDL and DML run now: a client that executes without fetching
            // (ADBC's cursor.execute) must find them done.
            run_update(&mut session, &prepared, None).await?;
            return Ok(Response::new(executed_info(request.into_inner())?));
        }
        let schema = announced_schema(&prepared);
        let user = session.info().user.clone();
        // Its first batches are computed while the answer travels and the DoGet comes back.
        let started = if self.may_start(&user)? { Some(Started::start(&mut session, &prepared).await?) } else { None };
        let handle = self.issue_ticket(&user, prepared, started)?;
        let ticket = Ticket::new(TicketStatementQuery { statement_handle: handle }.as_any().encode_to_vec());
        Ok(Response::new(flight_info(&schema, ticket, request.into_inner())?))
    }

    async fn do_get_statement(
        &self,
        ticket: TicketStatementQuery,
        request: Request<arrow_flight::Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        if ticket.statement_handle.as_ref() == EXECUTED {
            return Ok(Response::new(empty_stream()));
        }
        let user = auth::login_of(&request)?.user;
        match self.redeem_ticket(&ticket.statement_handle, &user)? {
            Redeemed::Started(started) => Ok(Response::new(started.into_stream())),
            Redeemed::Planned(prepared) => {
                let mut session = self.session(&request)?;
                Ok(Response::new(run_to_stream(&mut session, &prepared, None).await?))
            }
        }
    }

    async fn do_put_statement_update(
        &self,
        command: CommandStatementUpdate,
        request: Request<PeekableFlightDataStream>,
    ) -> Result<i64, Status> {
        let mut session = self.session(&request)?;
        let prepared = Self::prepare(&mut session, &command.query).await?;
        run_update(&mut session, &prepared, None).await
    }

    async fn do_put_statement_ingest(
        &self,
        command: CommandStatementIngest,
        request: Request<PeekableFlightDataStream>,
    ) -> Result<i64, Status> {
        let mut session = self.session(&request)?;
        ingest::statement_ingest(&mut session, command, request.into_inner()).await
    }

    async fn do_action_create_prepared_statement(
        &self,
        query: ActionCreatePreparedStatementRequest,
        request: Request<Action>,
    ) -> Result<ActionCreatePreparedStatementResult, Status> {
        let mut session = self.session(&request)?;
        let prepared = Self::prepare(&mut session, &query.query).await?;
        let parameter_types = prepared.parameter_types().map_err(|e| grpc_status(&e))?;
        let parameter_schema = Schema::new(
            parameter_types
                .iter()
                .enumerate()
                .map(|(i, t)| {
                    Field::new(
                        format!("${}", i + 1),
                        t.clone().unwrap_or(datafusion::arrow::datatypes::DataType::Null),
                        true,
                    )
                })
                .collect::<Vec<_>>(),
        );
        let dataset_schema = announced_schema(&prepared);
        let handle = auth::random_handle();
        self.insert(handle.clone(), session.info().user.clone(), prepared)?;
        Ok(ActionCreatePreparedStatementResult {
            prepared_statement_handle: handle,
            dataset_schema: schema_bytes(&dataset_schema)?,
            parameter_schema: schema_bytes(&parameter_schema)?,
        })
    }

    async fn do_put_prepared_statement_query(
        &self,
        query: CommandPreparedStatementQuery,
        request: Request<PeekableFlightDataStream>,
    ) -> Result<DoPutPreparedStatementResult, Status> {
        let handle = query.prepared_statement_handle;
        self.entry(&handle, &request)?;
        let batches = ingest::parameter_batches(request.into_inner()).try_collect::<Vec<_>>().await?;
        // Checked now, so a bad value is reported by the bind.
        rows_of(&batches)?;
        let mut map = self.prepared.lock().map_err(|_| Status::internal("prepared statement map poisoned"))?;
        if let Some(entry) = map.get_mut(&handle) {
            entry.params = batches;
        }
        Ok(DoPutPreparedStatementResult { prepared_statement_handle: Some(handle) })
    }

    async fn get_flight_info_prepared_statement(
        &self,
        command: CommandPreparedStatementQuery,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let (prepared, params) = self.entry(&command.prepared_statement_handle, &request)?;
        if prepared.result_schema().is_none() {
            // As for a plain statement: DDL and DML run at execute, once per bound row.
            let mut session = self.session(&request)?;
            let rows = rows_of(&params)?;
            if rows.is_empty() {
                run_update(&mut session, &prepared, None).await?;
            }
            for row in rows {
                run_update(&mut session, &prepared, Some(ParamValues::from(row))).await?;
            }
            return Ok(Response::new(executed_info(request.into_inner())?));
        }
        let schema = match rows_of(&params)?.first() {
            Some(row) => prepared
                .result_schema_with(&ParamValues::from(row.clone()))
                .map_err(|e| grpc_status(&e))?
                .unwrap_or_else(|| Arc::new(Schema::empty())),
            None => announced_schema(&prepared),
        };
        let ticket = Ticket::new(command.as_any().encode_to_vec());
        Ok(Response::new(flight_info(&schema, ticket, request.into_inner())?))
    }

    async fn do_get_prepared_statement(
        &self,
        command: CommandPreparedStatementQuery,
        request: Request<arrow_flight::Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        let (prepared, params) = self.entry(&command.prepared_statement_handle, &request)?;
        let params = rows_of(&params)?;
        if params.len() > 1 {
            return Err(Status::invalid_argument("a prepared query takes one row of parameters, got several"));
        }
        let mut session = self.session(&request)?;
        let params = params.into_iter().next().map(ParamValues::from);
        Ok(Response::new(run_to_stream(&mut session, &prepared, params).await?))
    }

    async fn do_put_prepared_statement_update(
        &self,
        command: CommandPreparedStatementUpdate,
        request: Request<PeekableFlightDataStream>,
    ) -> Result<i64, Status> {
        let (prepared, stored) = self.entry(&command.prepared_statement_handle, &request)?;
        let mut session = self.session(&request)?;
        let mut batches = ingest::parameter_batches(request.into_inner());
        if let Some((table, columns)) = prepared.insert_of_parameters()
            && let Some(rows) =
                ingest::prepared_insert(&mut session, &table, &columns, &mut batches, stored.clone()).await?
        {
            return Ok(rows);
        }
        // Parameter rows sent with this DoPut, else those bound before.
        let sent = rows_of(&batches.try_collect::<Vec<_>>().await?)?;
        let params = if sent.is_empty() { rows_of(&stored)? } else { sent };
        if params.is_empty() {
            return run_update(&mut session, &prepared, None).await;
        }
        // Each bound row is one execution, as the Flight SQL spec describes.
        let mut total = 0;
        for row in params {
            total += run_update(&mut session, &prepared, Some(ParamValues::from(row))).await?;
        }
        Ok(total)
    }

    async fn do_action_close_prepared_statement(
        &self,
        query: ActionClosePreparedStatementRequest,
        request: Request<Action>,
    ) -> Result<(), Status> {
        self.entry(&query.prepared_statement_handle, &request)?;
        self.prepared
            .lock()
            .map_err(|_| Status::internal("prepared statement map poisoned"))?
            .remove(&query.prepared_statement_handle);
        Ok(())
    }

    async fn get_flight_info_sql_info(
        &self,
        query: CommandGetSqlInfo,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let schema = query.clone().into_builder(&SQL_INFO).schema();
        metadata_info(&query, &schema, request)
    }

    async fn do_get_sql_info(
        &self,
        query: CommandGetSqlInfo,
        _request: Request<arrow_flight::Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        let builder = query.into_builder(&SQL_INFO);
        Ok(Response::new(one_batch_stream(builder.schema(), builder.build())))
    }

    async fn get_flight_info_catalogs(
        &self,
        query: CommandGetCatalogs,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let schema = query.into_builder().schema();
        metadata_info(&query, &schema, request)
    }

    async fn do_get_catalogs(
        &self,
        query: CommandGetCatalogs,
        _request: Request<arrow_flight::Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        let mut builder = query.into_builder();
        builder.append(self.engine.database());
        Ok(Response::new(one_batch_stream(builder.schema(), builder.build())))
    }

    async fn get_flight_info_schemas(
        &self,
        query: CommandGetDbSchemas,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let schema = query.clone().into_builder().schema();
        metadata_info(&query, &schema, request)
    }

    async fn do_get_schemas(
        &self,
        query: CommandGetDbSchemas,
        _request: Request<arrow_flight::Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        let mut builder = query.into_builder();
        let database = self.engine.database();
        for schema in
            self.engine.catalog().schema_names().iter().map(String::as_str).chain(SYSTEM_SCHEMAS.iter().copied())
        {
            builder.append(database, schema);
        }
        Ok(Response::new(one_batch_stream(builder.schema(), builder.build())))
    }

    async fn get_flight_info_tables(
        &self,
        query: CommandGetTables,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let schema = query.clone().into_builder().schema();
        metadata_info(&query, &schema, request)
    }

    async fn do_get_tables(
        &self,
        query: CommandGetTables,
        request: Request<arrow_flight::Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        let login = auth::login_of(&request)?;
        let access = self.engine.access().snapshot();
        let mut builder = query.into_builder();
        let catalog = self.engine.catalog();
        let database = self.engine.database();
        for schema in catalog.schema_names() {
            for name in catalog.relation_names(&schema) {
                let relation = RelationName { schema: schema.clone(), name };
                // Only what the user may read.
                if let Some(role) = &login.role
                    && !access.has_privilege(role, &relation.schema, &relation.name, Privilege::Select)
                {
                    continue;
                }
                let Some(kind) = catalog.relation_kind(&relation) else {
                    continue;
                };
                let table_schema = match catalog.relation(&relation).await.map_err(|e| grpc_status(&e))? {
                    Some(provider) => provider.schema(),
                    None => continue, // dropped meanwhile
                };
                builder.append(database, &relation.schema, &relation.name, relation_table_type(kind), &table_schema)?;
            }
        }
        Ok(Response::new(one_batch_stream(builder.schema(), builder.build())))
    }

    async fn get_flight_info_table_types(
        &self,
        query: CommandGetTableTypes,
        request: Request<FlightDescriptor>,
    ) -> Result<Response<FlightInfo>, Status> {
        let schema = query.into_builder().schema();
        metadata_info(&query, &schema, request)
    }

    async fn do_get_table_types(
        &self,
        query: CommandGetTableTypes,
        _request: Request<arrow_flight::Ticket>,
    ) -> Result<Response<<Self as FlightService>::DoGetStream>, Status> {
        let mut builder = query.into_builder();
        for kind in [RelationKind::Table, RelationKind::View, RelationKind::MaterializedView] {
            builder.append(relation_table_type(kind));
        }
        Ok(Response::new(one_batch_stream(builder.schema(), builder.build())))
    }

    async fn register_sql_info(&self, _id: i32, _result: &SqlInfo) {}
}

/// Decodes a Flight SQL command (a descriptor's `cmd` or a ticket's bytes)
/// as the service does before dispatching it: a protobuf `Any`, then one of
/// the Flight SQL commands. `None` for bytes that are neither; never a
/// panic, whatever the bytes (the `flight_command` fuzz target and a test
/// below hold it to that).
pub fn decode_command(bytes: &[u8]) -> Option<arrow_flight::sql::Command> {
    let any = arrow_flight::sql::Any::decode(bytes).ok()?;
    arrow_flight::sql::Command::try_from(any).ok()
}

#[cfg(test)]
mod tests {
    use arrow_flight::sql::{
        CommandGetTables, CommandPreparedStatementQuery, CommandStatementIngest, CommandStatementQuery,
        ProstMessageExt, TicketStatementQuery,
    };
    use prost::Message;

    use super::decode_command;

    /// Valid commands, then 20,000 mutations of them (bit flips, cuts,
    /// insertions, repeats): decoding never panics; the originals decode.
    #[test]
    fn mutated_commands_decode_without_panic() {
        let valid: Vec<Vec<u8>> = vec![
            CommandStatementQuery { query: "SELECT 1".into(), transaction_id: None }.as_any().encode_to_vec(),
            TicketStatementQuery { statement_handle: b"SELECT 1".to_vec().into() }.as_any().encode_to_vec(),
            CommandPreparedStatementQuery { prepared_statement_handle: b"h".to_vec().into() }.as_any().encode_to_vec(),
            CommandGetTables {
                catalog: None,
                db_schema_filter_pattern: Some("p%".into()),
                table_name_filter_pattern: None,
                table_types: vec!["TABLE".into()],
                include_schema: true,
            }
            .as_any()
            .encode_to_vec(),
            CommandStatementIngest { table: "t".into(), ..Default::default() }.as_any().encode_to_vec(),
        ];
        for bytes in &valid {
            assert!(decode_command(bytes).is_some(), "{bytes:?}");
        }
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let mut next = |n: usize| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state % n.max(1) as u64) as usize
        };
        for _ in 0..20_000 {
            let mut bytes = valid[next(valid.len())].clone();
            for _ in 0..1 + next(4) {
                match next(5) {
                    0 if !bytes.is_empty() => {
                        let at = next(bytes.len());
                        bytes[at] ^= 1 << next(8);
                    }
                    1 => bytes.truncate(next(bytes.len() + 1)),
                    2 => {
                        let at = next(bytes.len() + 1);
                        bytes.insert(at, next(256) as u8);
                    }
                    3 if !bytes.is_empty() => {
                        let at = next(bytes.len());
                        bytes[at] = [0x00, 0x7f, 0x80, 0xff][next(4)];
                    }
                    _ => bytes.extend(std::iter::repeat_n(next(256) as u8, next(64))),
                }
            }
            let _ = decode_command(&bytes);
        }
    }
}
