//! One Postgres connection: startup, simple and extended query protocol.

use std::fmt::Debug;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use async_trait::async_trait;
use datafusion::arrow::datatypes::DataType;
use datafusion::common::{ParamValues, ScalarValue};
use futures::{Sink, SinkExt};
use pgwire::api::PgWireConnectionState;
use pgwire::api::auth::{
    DefaultServerParameterProvider, StartupHandler, finish_authentication, protocol_negotiation,
    save_startup_parameters_to_metadata,
};
use pgwire::api::copy::CopyHandler;
use pgwire::api::portal::{Format, Portal};
use pgwire::api::query::{ExtendedQueryHandler, SimpleQueryHandler, send_describe_response};
use pgwire::api::results::{
    CopyResponse, DescribePortalResponse, DescribeResponse, DescribeStatementResponse, FieldInfo, Response, Tag,
};
use pgwire::api::stmt::{QueryParser, StoredStatement};
use pgwire::api::store::{Entry, PortalStore};
use pgwire::api::{
    ClientInfo, ClientPortalStore, DEFAULT_NAME, METADATA_DATABASE, METADATA_USER, PidSecretKeyGenerator,
    RandomPidSecretKeyGenerator, Type,
};
use pgwire::error::{ErrorInfo, PgWireError, PgWireResult};
use pgwire::messages::copy::{CopyData, CopyDone, CopyFail};
use pgwire::messages::extendedquery::{
    Bind, BindComplete, Close, CloseComplete, Describe, Parse, ParseComplete, TARGET_TYPE_BYTE_PORTAL,
    TARGET_TYPE_BYTE_STATEMENT,
};
use pgwire::messages::startup::Authentication;
use pgwire::messages::{PgWireBackendMessage, PgWireFrontendMessage};
use streamhouse_engine::access::scram;
use streamhouse_engine::copy::{CopyFormat, CopyOut};
use streamhouse_engine::session::CopyIn;
use streamhouse_engine::session::variables::SERVER_VERSION;
use streamhouse_engine::types::{array_from_text, postgres_type_name};
use streamhouse_engine::{Error, Output, Prepared, Session, SessionInfo, StatusCode};
use tokio::sync::Mutex;

use super::PgShared;
use super::copy::copy_out_response;
use super::encode::{command_response, error_info, fields, notice_response, parameter_type, pg_error, query_response};
use super::wire::Undecodable;
use crate::auth::{self, Method};

static PIDS: std::sync::LazyLock<RandomPidSecretKeyGenerator> = std::sync::LazyLock::new(Default::default);

/// A prepared statement as pgwire stores it.
pub type PgStatement = Arc<Prepared>;

/// One client connection and its session.
pub struct PgConnection {
    shared: Arc<PgShared>,
    peer: SocketAddr,
    session: Arc<Mutex<Option<Session>>>,
    /// Set once startup registered the connection (pid for cancel requests).
    registered: std::sync::Mutex<Option<i32>>,
    /// The cancel key sent at startup, registered once the session exists.
    secret: std::sync::Mutex<Option<pgwire::messages::startup::SecretKey>>,
    /// Where authentication stands.
    auth: Mutex<AuthStep>,
    /// Named protocol statements and portals held (pgwire's store has no count).
    held: Held,
    parser: Arc<PgParser>,
    /// The `COPY … FROM STDIN` receiving data, if any.
    copy: Mutex<Option<Box<CopyIn>>>,
    /// The socket, to peek at (never read): has the client gone?
    probe: Option<Arc<std::net::TcpStream>>,
    /// Query texts that arrived as invalid UTF-8.
    undecodable: Undecodable,
}

impl Debug for PgConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgConnection").field("peer", &self.peer).finish_non_exhaustive()
    }
}

impl PgConnection {
    pub(crate) fn new(
        shared: Arc<PgShared>,
        peer: SocketAddr,
        probe: Option<std::net::TcpStream>,
        undecodable: Undecodable,
    ) -> Self {
        let session = Arc::new(Mutex::new(None));
        let parser = Arc::new(PgParser { session: Arc::clone(&session), undecodable: undecodable.clone() });
        let probe = probe.map(Arc::new);
        let registered = std::sync::Mutex::new(None);
        Self {
            shared,
            peer,
            session,
            registered,
            secret: std::sync::Mutex::new(None),
            auth: Mutex::new(AuthStep::Idle),
            held: Held::default(),
            parser,
            copy: Mutex::new(None),
            probe,
            undecodable,
        }
    }
}

impl Drop for PgConnection {
    fn drop(&mut self) {
        if let Some(pid) = self.registered.get_mut().ok().and_then(|p| p.take()) {
            self.shared.cancels.unregister(pid);
            self.shared.connections.fetch_sub(1, Ordering::SeqCst);
        }
    }
}

/// Whether the client is still there: its socket is not at end of stream
/// and it has not sent Terminate. Looks at pending input without consuming it.
fn client_connected(socket: &std::net::TcpStream) -> bool {
    let mut buf = [0u8; 512];
    match socket.peek(&mut buf) {
        Ok(0) => false,
        Ok(n) => {
            // Pending messages (e.g. the Sync after an Execute): look for Terminate ('X').
            let mut at = 0;
            while at + 5 <= n {
                if buf[at] == b'X' {
                    return false;
                }
                let len = u32::from_be_bytes([buf[at + 1], buf[at + 2], buf[at + 3], buf[at + 4]]) as usize;
                at += 1 + len.max(4);
            }
            true
        }
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => true,
        Err(_) => false,
    }
}

fn no_session() -> PgWireError {
    pg_error(&Error::internal("statement before startup completed"))
}

/// Sends the session's pending notices.
async fn send_notices<C>(client: &mut C, session: &mut Session) -> PgWireResult<()>
where
    C: Sink<PgWireBackendMessage> + Unpin + Send,
    PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
{
    for notice in session.take_notices() {
        client.send(PgWireBackendMessage::NoticeResponse(notice_response(&notice))).await?;
    }
    Ok(())
}

/// The names of the named statements and portals a connection holds, kept
/// beside pgwire's store (which has no count) to cap them (53400). The
/// unnamed statement and portal are replaced, never accumulated.
#[derive(Debug, Default)]
pub(crate) struct Held(std::sync::Mutex<HeldNames>);

#[derive(Debug, Default)]
pub(crate) struct HeldNames {
    statements: std::collections::HashSet<String>,
    portals: std::collections::HashSet<String>,
}

impl Held {
    /// Records `name`, unless that would hold more than `max` names.
    fn admit(
        &self,
        set: impl Fn(&mut HeldNames) -> &mut std::collections::HashSet<String>,
        name: &str,
        max: usize,
        what: &str,
        key: &str,
    ) -> PgWireResult<()> {
        if name.is_empty() || name == DEFAULT_NAME {
            return Ok(());
        }
        let mut held = self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let names = set(&mut held);
        if !names.contains(name) && names.len() >= max {
            let error = Error::new(
                StatusCode::ConfigurationLimitExceeded,
                format!("this connection holds {} named {what}, the most {key} allows: close some first", names.len()),
            );
            return Err(pg_error(&error));
        }
        names.insert(name.to_string());
        Ok(())
    }

    /// Forgets `name`.
    fn release(&self, set: impl Fn(&mut HeldNames) -> &mut std::collections::HashSet<String>, name: &str) {
        let mut held = self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        set(&mut held).remove(name);
    }
}

/// Where a connection's authentication stands.
#[derive(Debug, Default)]
pub(crate) enum AuthStep {
    /// Not authenticating (before startup, or done).
    #[default]
    Idle,
    /// SCRAM offered; waiting for the client's first message.
    Offered {
        /// The user the startup packet named.
        user: String,
    },
    /// Server-first message sent; waiting for the client's proof.
    Challenged {
        /// The user the startup packet named.
        user: String,
        /// The exchange so far.
        exchange: Box<scram::Exchange>,
    },
}

fn fatal(code: &str, message: impl Into<String>) -> PgWireError {
    PgWireError::UserError(Box::new(ErrorInfo::new("FATAL".into(), code.into(), message.into())))
}

impl PgConnection {
    /// Opens the session of an authenticated user (`role`: whose privileges
    /// are checked, `None` for every right) and completes the startup.
    async fn start_session<C>(&self, client: &mut C, user: String, role: Option<String>) -> PgWireResult<()>
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let Some(pid) = self.registered.lock().ok().and_then(|p| *p) else {
            return Err(fatal("08P01", "authentication before startup"));
        };
        let metadata = client.metadata();
        let info = SessionInfo {
            database: metadata.get(METADATA_DATABASE).cloned(),
            application_name: metadata.get("application_name").cloned(),
            user: user.clone(),
            role,
            pid: Some(pid),
        };
        let session = self.shared.engine.new_session(info);
        if let Some(probe) = &self.probe {
            let probe = Arc::clone(probe);
            session.set_client_probe(Arc::new(move || client_connected(&probe)));
        }
        if let Some(key) = self.secret.lock().ok().and_then(|k| k.clone()) {
            self.shared.cancels.register(pid, key, session.cancel_handle());
        }
        tracing::debug!(peer = %self.peer, %user, session_id = session.id(), pid, "postgres session started");
        *self.session.lock().await = Some(session);

        let mut params = DefaultServerParameterProvider::default();
        params.server_version = SERVER_VERSION.to_string();
        params.date_style = "ISO, MDY".to_string();
        params.time_zone = "UTC".to_string();
        params.search_path = "\"$user\", public".to_string();
        params.session_authorization = Some(user);
        finish_authentication(client, &params).await
    }
}

#[async_trait]
impl StartupHandler for PgConnection {
    async fn on_startup<C>(&self, client: &mut C, message: PgWireFrontendMessage) -> PgWireResult<()>
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        match message {
            PgWireFrontendMessage::Startup(ref startup) => {
                protocol_negotiation(client, startup).await?;
                save_startup_parameters_to_metadata(client, startup);
                let open = self.shared.connections.fetch_add(1, Ordering::SeqCst) + 1;
                let (pid, key) = PIDS.generate(client);
                if let Ok(mut registered) = self.registered.lock() {
                    *registered = Some(pid);
                }
                if open > self.shared.max_connections {
                    return Err(fatal(
                        "53300",
                        format!(
                            "sorry, too many clients already (server.max_connections = {})",
                            self.shared.max_connections
                        ),
                    ));
                }
                if self.shared.engine.is_shut_down() {
                    return Err(fatal("57P03", "the database system is shutting down"));
                }
                client.set_pid_and_secret_key(pid, key.clone());
                if let Ok(mut secret) = self.secret.lock() {
                    *secret = Some(key);
                }
                let user = client.metadata().get(METADATA_USER).cloned().unwrap_or_default();
                if user.is_empty() {
                    return Err(fatal("28000", "no PostgreSQL user name specified in startup packet"));
                }
                match self.shared.auth.method_for(self.peer.ip()) {
                    Method::Trust => {
                        let role = auth::session_role(&self.shared.engine, &user).map_err(|m| fatal("28000", m))?;
                        self.start_session(client, user, role).await
                    }
                    Method::Scram => {
                        *self.auth.lock().await = AuthStep::Offered { user };
                        client.set_state(PgWireConnectionState::AuthenticationInProgress);
                        let mechanisms = vec![scram::MECHANISM.to_string()];
                        client.send(PgWireBackendMessage::Authentication(Authentication::SASL(mechanisms))).await?;
                        Ok(())
                    }
                }
            }
            PgWireFrontendMessage::PasswordMessageFamily(message) => {
                let step = std::mem::take(&mut *self.auth.lock().await);
                match step {
                    AuthStep::Offered { user } => {
                        let initial = message.into_sasl_initial_response()?;
                        if initial.auth_method != scram::MECHANISM {
                            return Err(fatal(
                                "28000",
                                format!(
                                    "SASL authentication mechanism {} is not supported (the server offers {})",
                                    initial.auth_method,
                                    scram::MECHANISM
                                ),
                            ));
                        }
                        let verifier = auth::verifier_for(&self.shared.engine, &user, &self.shared.impostor_secret);
                        let data = initial.data.unwrap_or_default();
                        let (exchange, server_first) =
                            scram::Exchange::start(verifier, &data).map_err(|e| self.auth_failed(&user, e))?;
                        *self.auth.lock().await = AuthStep::Challenged { user, exchange: Box::new(exchange) };
                        let reply = Authentication::SASLContinue(bytes::Bytes::from(server_first));
                        client.send(PgWireBackendMessage::Authentication(reply)).await?;
                        Ok(())
                    }
                    AuthStep::Challenged { user, exchange } => {
                        let response = message.into_sasl_response()?;
                        let server_final = exchange.finish(&response.data).map_err(|e| self.auth_failed(&user, e))?;
                        let role = auth::session_role(&self.shared.engine, &user).map_err(|m| fatal("28000", m))?;
                        let reply = Authentication::SASLFinal(bytes::Bytes::from(server_final));
                        client.send(PgWireBackendMessage::Authentication(reply)).await?;
                        // A role with a password always exists, so `role` is Some here.
                        self.start_session(client, user, role).await
                    }
                    AuthStep::Idle => Err(fatal("08P01", "unexpected password message")),
                }
            }
            _ => Ok(()),
        }
    }
}

impl PgConnection {
    /// The error that ends a failed authentication: the same for a wrong
    /// password, an unknown user and a role without a password.
    fn auth_failed(&self, user: &str, error: scram::ScramError) -> PgWireError {
        match error {
            scram::ScramError::Failed => {
                tracing::info!(peer = %self.peer, %user, "password authentication failed");
                fatal("28P01", format!("password authentication failed for user \"{user}\""))
            }
            scram::ScramError::Protocol(message) => fatal("08P01", message),
        }
    }
}

#[async_trait]
impl SimpleQueryHandler for PgConnection {
    async fn do_query<C>(&self, client: &mut C, query: &str) -> PgWireResult<Vec<Response>>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        check_encoding(&self.undecodable, query)?;
        let mut guard = self.session.lock().await;
        let session = guard.as_mut().ok_or_else(no_session)?;
        if let Some(name) = deallocated_protocol_statement(session, client, query) {
            // `DEALLOCATE name` also frees statements prepared with the protocol's Parse message.
            client.portal_store().rm_statement(&name);
            self.held.release(|h| &mut h.statements, &name);
            return Ok(vec![Response::Execution(pgwire::api::results::Tag::new("DEALLOCATE"))]);
        }
        let (mut outputs, error) = session.run(query).await;
        send_notices(client, session).await?;
        drop(guard);
        let live = matches!(outputs.last(), Some(Output::Live(_) | Output::CopyOut(CopyOut { live: true, .. })));
        if live && error.is_none() {
            // Earlier statements' results go out first, then the rows that keep coming.
            let last = outputs.pop();
            for output in outputs {
                match self.response(output, &Format::UnifiedText).await? {
                    Response::Query(rows) => pgwire::api::query::send_query_response(client, rows, true).await?,
                    Response::CopyOut(copy) => pgwire::api::copy::send_copy_out_response(client, copy).await?,
                    Response::Execution(tag) | Response::TransactionStart(tag) | Response::TransactionEnd(tag) => {
                        client.feed(PgWireBackendMessage::CommandComplete(tag.into())).await?;
                    }
                    _ => {}
                }
            }
            match last {
                Some(Output::Live(stream)) => {
                    super::live::send_rows(client, stream, &Format::UnifiedText, true).await?;
                }
                Some(Output::CopyOut(out)) => {
                    super::live::send_copy(client, out, true).await?;
                }
                _ => {}
            }
            return Ok(vec![]);
        }
        let mut responses = Vec::with_capacity(outputs.len() + 1);
        for output in outputs {
            responses.push(self.response(output, &Format::UnifiedText).await?);
        }
        if let Some(err) = error {
            if err.code() == StatusCode::ShuttingDown {
                return Err(pg_error(&err));
            }
            // Earlier statements' results are sent, then the error; the rest of the batch is skipped.
            responses.push(Response::Error(Box::new(error_info(&err))));
        }
        Ok(responses)
    }
}

/// The name in `DEALLOCATE name` when it names a statement prepared with the
/// extended protocol on this connection.
fn deallocated_protocol_statement<C>(session: &Session, client: &C, query: &str) -> Option<String>
where
    C: ClientPortalStore,
    C::PortalStore: PortalStore,
{
    if !query.trim_start().get(..10)?.eq_ignore_ascii_case("deallocate") {
        return None;
    }
    let statements = session.parse(query).ok()?;
    let [statement] = statements.as_slice() else { return None };
    let Some(datafusion::sql::sqlparser::ast::Statement::Deallocate { name, .. }) = statement.as_plan() else {
        return None;
    };
    client.portal_store().get_statement(&name.value).map(|_| name.value.clone())
}

/// Parses and plans statements for the extended protocol.
pub struct PgParser {
    session: Arc<Mutex<Option<Session>>>,
    undecodable: Undecodable,
}

/// 22021 for a query text that arrived as invalid UTF-8.
fn check_encoding(undecodable: &Undecodable, text: &str) -> PgWireResult<()> {
    match undecodable.take(text) {
        Some(message) => Err(pg_error(&Error::new(StatusCode::CharacterNotInRepertoire, message))),
        None => Ok(()),
    }
}

#[async_trait]
impl QueryParser for PgParser {
    type Statement = PgStatement;

    async fn parse_sql<C>(&self, _client: &C, sql: &str, _types: &[Option<Type>]) -> PgWireResult<Option<PgStatement>>
    where
        C: ClientInfo + Unpin + Send + Sync,
    {
        check_encoding(&self.undecodable, sql)?;
        tracing::debug!(sql, "parse");
        let mut guard = self.session.lock().await;
        let session = guard.as_mut().ok_or_else(no_session)?;
        let mut statements = session.parse(sql).map_err(|e| pg_error(&e))?;
        if statements.len() > 1 {
            return Err(pg_error(&Error::new(
                StatusCode::InvalidSyntax,
                "cannot insert multiple commands into a prepared statement",
            )));
        }
        let Some(statement) = statements.pop() else {
            return Ok(None);
        };
        let prepared = session.prepare(statement).await.map_err(|e| pg_error(&e))?;
        Ok(Some(Arc::new(prepared)))
    }

    fn get_parameter_types(&self, statement: &PgStatement) -> PgWireResult<Vec<Type>> {
        let types = statement.parameter_types().map_err(|e| pg_error(&e))?;
        Ok(types.iter().map(|t| parameter_type(t.as_ref())).collect())
    }

    fn get_result_schema(&self, statement: &PgStatement, format: Option<&Format>) -> PgWireResult<Vec<FieldInfo>> {
        match statement.result_schema() {
            Some(schema) => fields(&schema, format.unwrap_or(&Format::UnifiedText)),
            None => Ok(vec![]),
        }
    }
}

/// A statement's Describe answer: ParameterDescription, then RowDescription,
/// or NoData when the statement returns no rows (whatever its parameters).
struct StatementDescription {
    parameters: Vec<Type>,
    fields: Vec<FieldInfo>,
}

impl DescribeResponse for StatementDescription {
    fn parameters(&self) -> Option<&[Type]> {
        Some(&self.parameters)
    }

    fn fields(&self) -> &[FieldInfo] {
        &self.fields
    }

    fn no_data() -> Self {
        Self { parameters: vec![], fields: vec![] }
    }

    fn is_no_data(&self) -> bool {
        self.fields.is_empty()
    }
}

/// Decodes a portal's parameter values: by the type the client declared,
/// else the type inferred for the statement, then cast to the inferred type.
fn bind_parameters(portal: &Portal<PgStatement>) -> PgWireResult<Option<ParamValues>> {
    let statement = &portal.statement.statement;
    let inferred = statement.parameter_types().map_err(|e| pg_error(&e))?;
    if inferred.is_empty() && portal.parameter_len() == 0 {
        return Ok(None);
    }
    if portal.parameter_len() != inferred.len() {
        return Err(pg_error(&Error::new(
            StatusCode::InvalidParameter,
            format!(
                "bind message supplies {} parameters, but prepared statement requires {}",
                portal.parameter_len(),
                inferred.len()
            ),
        )));
    }
    let server_types: Vec<Type> = inferred.iter().map(|t| parameter_type(t.as_ref())).collect();
    // A number the client sent as an integer or float for a `numeric`
    // parameter (`amount > $1` with a Python int): arrow-pg does not convert
    // those, so it decodes the client's type and we cast after.
    let cast_after: Vec<Option<DataType>> = inferred
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let hint = portal.statement.parameter_types.get(i).cloned().flatten();
            let numeric_hint = matches!(hint, Some(Type::INT2 | Type::INT4 | Type::INT8 | Type::FLOAT4 | Type::FLOAT8));
            t.clone().filter(|t| numeric_hint && matches!(t, DataType::Decimal128(..) | DataType::Decimal256(..)))
        })
        .collect();
    // Arrays sent as text (`{r,v,"a b"}`) are read by our own parser, as
    // Postgres' array_in reads them: arrow-pg keeps the spaces after commas
    // and takes `""` for NULL.
    let text_arrays: Vec<Option<DataType>> = inferred
        .iter()
        .enumerate()
        .map(|(i, t)| match t {
            Some(DataType::List(field)) if portal.parameter_format.is_text(i) => Some(field.data_type().clone()),
            _ => None,
        })
        .collect();
    let inferred_refs: Vec<Option<&DataType>> = inferred
        .iter()
        .zip(&cast_after)
        .zip(&text_arrays)
        .map(|((t, cast), array)| match (cast, array) {
            (Some(_), _) => None,
            (_, Some(_)) => Some(&DataType::Utf8),
            _ => t.as_ref(),
        })
        .collect();
    let server_refs: Vec<Option<&Type>> = server_types
        .iter()
        .zip(&text_arrays)
        .map(|(t, array)| Some(if array.is_some() { &Type::TEXT } else { t }))
        .collect();
    let values =
        arrow_pg::datatypes::df::deserialize_parameters_with_server_types(portal, &inferred_refs, &server_refs)
            .map_err(|e| match e {
                PgWireError::UserError(_) => e,
                other => pg_error(&text_parameter_error(portal, &inferred_refs).unwrap_or_else(|| {
                    Error::new(StatusCode::InvalidTextRepresentation, format!("invalid parameter value: {other}"))
                })),
            })?;
    let values = match values {
        ParamValues::List(values) if text_arrays.iter().any(Option::is_some) => {
            let mut converted = Vec::with_capacity(values.len());
            for (value, element) in values.into_iter().zip(&text_arrays) {
                converted.push(match element {
                    Some(element) => {
                        let (scalar, metadata) = value.into_inner();
                        let list = match &scalar {
                            ScalarValue::Utf8(Some(text)) => {
                                array_from_text(text, element).map_err(|e| pg_error(&e))?
                            }
                            _ => ScalarValue::try_from(&DataType::new_list(element.clone(), true))
                                .map_err(|e| pg_error(&e.into()))?,
                        };
                        datafusion::common::metadata::ScalarAndMetadata::new(list, metadata)
                    }
                    None => value,
                });
            }
            ParamValues::List(converted)
        }
        other => other,
    };
    let values = match values {
        ParamValues::List(values) if cast_after.iter().any(Option::is_some) => {
            let mut cast = Vec::with_capacity(values.len());
            for (value, to) in values.into_iter().zip(&cast_after) {
                cast.push(match to {
                    Some(to) => {
                        let (scalar, metadata) = value.into_inner();
                        let options = datafusion::arrow::compute::CastOptions { safe: false, ..Default::default() };
                        let converted = scalar.cast_to_with_options(to, &options).map_err(|_| {
                            pg_error(&Error::new(
                                StatusCode::NumericOverflow,
                                format!("parameter value {scalar} is out of range for type {}", postgres_type_name(to)),
                            ))
                        })?;
                        datafusion::common::metadata::ScalarAndMetadata::new(converted, metadata)
                    }
                    None => value,
                });
            }
            ParamValues::List(cast)
        }
        other => other,
    };
    tracing::debug!(statement = %portal.statement.id, parameters = ?values, "bound parameters");
    Ok(Some(values))
}

/// Why a parameter sent as text does not convert to its type, as Postgres
/// says it (`value "99999999999" is out of range for type integer` is
/// 22003, `invalid input syntax for type integer: "x"` 22P02).
fn text_parameter_error(portal: &Portal<PgStatement>, types: &[Option<&DataType>]) -> Option<Error> {
    let options = datafusion::arrow::compute::CastOptions { safe: false, ..Default::default() };
    portal.parameters.iter().enumerate().find_map(|(i, raw)| {
        let (raw, to) = (raw.as_ref()?, types.get(i).copied().flatten()?);
        if !portal.parameter_format.is_text(i) {
            return None;
        }
        let text = std::str::from_utf8(raw).ok()?;
        let converts = ScalarValue::Utf8(Some(text.to_string())).cast_to_with_options(to, &options).is_ok();
        (!converts).then(|| streamhouse_engine::types::conversion_error(text, to))
    })
}

#[async_trait]
impl ExtendedQueryHandler for PgConnection {
    type Statement = PgStatement;
    type QueryParser = PgParser;

    fn query_parser(&self) -> Arc<PgParser> {
        Arc::clone(&self.parser)
    }

    /// pgwire's Parse, within `execution.max_prepared_statements` named statements.
    async fn on_parse<C>(&self, client: &mut C, message: Parse) -> PgWireResult<()>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore<Statement = Self::Statement>,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let name = message.name.clone().unwrap_or_else(|| DEFAULT_NAME.to_owned());
        let max = self.shared.engine.config().max_prepared_statements;
        self.held.admit(
            |h| &mut h.statements,
            &name,
            max,
            "prepared statements",
            "execution.max_prepared_statements",
        )?;
        let stored = StoredStatement::parse(client, &message, self.query_parser()).await;
        let stored = match stored {
            Ok(stored) => stored,
            Err(e) => {
                self.held.release(|h| &mut h.statements, &name);
                return Err(e);
            }
        };
        match stored {
            Some(statement) => client.portal_store().put_statement(Arc::new(statement)),
            None => client.portal_store().put_empty_statement(&name),
        }
        client.send(PgWireBackendMessage::ParseComplete(ParseComplete::new())).await?;
        Ok(())
    }

    /// pgwire's Bind, within `execution.max_cursors` named portals.
    async fn on_bind<C>(&self, client: &mut C, message: Bind) -> PgWireResult<()>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore<Statement = Self::Statement>,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let statement_name = message.statement_name.as_deref().unwrap_or(DEFAULT_NAME);
        let portal_name = message.portal_name.as_deref().unwrap_or(DEFAULT_NAME).to_string();
        match client.portal_store().get_statement(statement_name) {
            Some(Entry::Value(statement)) => {
                let portal = Portal::try_new(&message, statement)?;
                let max = self.shared.engine.config().max_cursors;
                self.held.admit(|h| &mut h.portals, &portal_name, max, "portals", "execution.max_cursors")?;
                client.portal_store().put_portal(Arc::new(portal));
            }
            Some(Entry::Empty) => {
                if !message.parameters.is_empty() {
                    return Err(PgWireError::UserError(Box::new(ErrorInfo::new(
                        "ERROR".to_owned(),
                        "08P01".to_owned(),
                        format!(
                            "bind message supplies {} parameters, but prepared statement {statement_name:?} requires 0",
                            message.parameters.len(),
                        ),
                    ))));
                }
                client.portal_store().put_empty_portal(&portal_name);
            }
            None => return Err(PgWireError::StatementNotFound(statement_name.to_owned())),
        }
        client.send(PgWireBackendMessage::BindComplete(BindComplete::new())).await?;
        Ok(())
    }

    /// pgwire's Close, also forgetting the name in the counts.
    async fn on_close<C>(&self, client: &mut C, message: Close) -> PgWireResult<()>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore<Statement = Self::Statement>,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let name = message.name.as_deref().unwrap_or(DEFAULT_NAME);
        match message.target_type {
            TARGET_TYPE_BYTE_STATEMENT => {
                client.portal_store().rm_statement(name);
                self.held.release(|h| &mut h.statements, name);
            }
            TARGET_TYPE_BYTE_PORTAL => {
                client.portal_store().rm_portal(name);
                self.held.release(|h| &mut h.portals, name);
            }
            _ => {}
        }
        client.send(PgWireBackendMessage::CloseComplete(CloseComplete::new())).await?;
        Ok(())
    }

    /// pgwire answers a statement with parameters but no result columns
    /// with an empty RowDescription; Postgres answers NoData, which is what
    /// drivers check (pgjdbc takes an empty RowDescription for a query and
    /// reports update count 0 for a batch of INSERTs).
    async fn on_describe<C>(&self, client: &mut C, message: Describe) -> PgWireResult<()>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore<Statement = PgStatement>,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        if message.target_type != TARGET_TYPE_BYTE_STATEMENT {
            return self._on_describe(client, message).await;
        }
        let name = message.name.as_deref().unwrap_or(DEFAULT_NAME);
        let description = match client.portal_store().get_statement(name) {
            Some(Entry::Value(statement)) => {
                let DescribeStatementResponse { parameters, fields, .. } =
                    self.do_describe_statement(client, &statement).await?;
                StatementDescription { parameters, fields }
            }
            Some(Entry::Empty) => StatementDescription::no_data(),
            None => return Err(PgWireError::StatementNotFound(name.to_owned())),
        };
        send_describe_response(client, &description).await
    }

    async fn do_describe_statement<C>(
        &self,
        _client: &mut C,
        target: &StoredStatement<PgStatement>,
    ) -> PgWireResult<DescribeStatementResponse>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore<Statement = PgStatement>,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let inferred = self.parser.get_parameter_types(&target.statement)?;
        let parameters = inferred
            .into_iter()
            .enumerate()
            .map(|(i, t)| target.parameter_types.get(i).cloned().flatten().unwrap_or(t))
            .collect();
        let guard = self.session.lock().await;
        let session = guard.as_ref().ok_or_else(no_session)?;
        let schema = session.describe(&target.statement, None).map_err(|e| pg_error(&e))?;
        let fields = match schema {
            Some(schema) => fields(&schema, &Format::UnifiedText)?,
            None => vec![],
        };
        Ok(DescribeStatementResponse::new(parameters, fields))
    }

    async fn do_describe_portal<C>(
        &self,
        _client: &mut C,
        portal: &Portal<PgStatement>,
    ) -> PgWireResult<DescribePortalResponse>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore<Statement = PgStatement>,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let params = bind_parameters(portal)?;
        let guard = self.session.lock().await;
        let session = guard.as_ref().ok_or_else(no_session)?;
        let schema = session.describe(&portal.statement.statement, params.as_ref()).map_err(|e| pg_error(&e))?;
        Ok(DescribePortalResponse::new(match schema {
            Some(schema) => fields(&schema, &portal.result_column_format)?,
            None => vec![],
        }))
    }

    async fn do_query<C>(
        &self,
        client: &mut C,
        portal: &Portal<PgStatement>,
        _max_rows: usize,
    ) -> PgWireResult<Response>
    where
        C: ClientInfo + ClientPortalStore + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::PortalStore: PortalStore<Statement = PgStatement>,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let params = bind_parameters(portal)?;
        let mut guard = self.session.lock().await;
        let session = guard.as_mut().ok_or_else(no_session)?;
        let result = session.execute(&portal.statement.statement, params).await;
        send_notices(client, session).await?;
        drop(guard);
        match result {
            // The rows went out as they came; the response is what ends them.
            Ok(Output::Live(stream)) => {
                let sent = super::live::send_rows(client, stream, &portal.result_column_format, false).await?;
                Ok(Response::Execution(Tag::new("SUBSCRIBE").with_rows(sent)))
            }
            Ok(Output::CopyOut(out)) if out.live => {
                let sent = super::live::send_copy(client, out, false).await?;
                Ok(Response::Execution(Tag::new("COPY").with_rows(sent)))
            }
            Ok(output) => self.response(output, &portal.result_column_format).await,
            Err(e) => Err(pg_error(&e)),
        }
    }
}

impl PgConnection {
    /// The protocol response to a statement's output; a COPY FROM STDIN
    /// waits here for its data.
    async fn response(&self, output: Output, format: &Format) -> PgWireResult<Response> {
        Ok(match output {
            Output::Rows(stream) => Response::Query(query_response(stream, format)?),
            Output::Command(command) => command_response(&command),
            Output::CopyOut(out) => Response::CopyOut(copy_out_response(out)?),
            // Sent by the caller, which can flush as rows arrive.
            Output::Live(_) => return Err(pg_error(&Error::internal("live rows reached the buffered path"))),
            Output::CopyIn(copy) => {
                let binary = copy.format() == CopyFormat::Binary;
                let columns = copy.columns();
                if let Some(previous) = self.copy.lock().await.replace(copy) {
                    previous.abort().await;
                }
                Response::CopyIn(CopyResponse::new(
                    i8::from(binary),
                    columns,
                    futures::stream::empty::<PgWireResult<CopyData>>(),
                ))
            }
        })
    }

    /// Ends the COPY in progress after an error: nothing of it is committed,
    /// and an open transaction block is marked failed.
    async fn fail_copy(&self, err: &Error) -> PgWireError {
        if let Some(copy) = self.copy.lock().await.take() {
            copy.abort().await;
        }
        if let Some(session) = self.session.lock().await.as_mut() {
            session.mark_failed();
        }
        pg_error(err)
    }
}

#[async_trait]
impl CopyHandler for PgConnection {
    async fn on_copy_data<C>(&self, _client: &mut C, copy_data: CopyData) -> PgWireResult<()>
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let result = match self.copy.lock().await.as_mut() {
            Some(copy) => copy.push(&copy_data.data).await,
            // The COPY already failed; the rest of its data is dropped.
            None => Ok(()),
        };
        match result {
            Ok(()) => Ok(()),
            Err(e) => Err(self.fail_copy(&e).await),
        }
    }

    async fn on_copy_done<C>(&self, client: &mut C, _done: CopyDone) -> PgWireResult<()>
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        let Some(copy) = self.copy.lock().await.take() else { return Ok(()) };
        match copy.finish().await {
            Ok(done) => {
                let tag = Tag::new("COPY").with_rows(done.rows.unwrap_or(0) as usize);
                client.send(PgWireBackendMessage::CommandComplete(tag.into())).await?;
                Ok(())
            }
            Err(e) => Err(self.fail_copy(&e).await),
        }
    }

    async fn on_copy_fail<C>(&self, _client: &mut C, fail: CopyFail) -> PgWireError
    where
        C: ClientInfo + Sink<PgWireBackendMessage> + Unpin + Send + Sync,
        C::Error: Debug,
        PgWireError: From<<C as Sink<PgWireBackendMessage>>::Error>,
    {
        // As Postgres: the client gave up, so the COPY is cancelled (57014).
        let err = Error::new(StatusCode::Cancelled, format!("COPY from stdin failed: {}", fail.message));
        self.fail_copy(&err).await
    }
}
