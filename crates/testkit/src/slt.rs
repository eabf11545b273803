//! sqllogictest databases: in-process and over the Postgres protocol.
//!
//! Both render results as Postgres text (the in-process one through the same
//! encoder the wire uses), NULL as `NULL` and the empty string as `(empty)`,
//! and report errors as `<SQLSTATE>: <message>`, so one `.slt` file checks
//! both paths and `statement error 42P01` checks the SQLSTATE.

use async_trait::async_trait;
use sqllogictest::{AsyncDB, DBOutput, DefaultColumnType};
use streamhouse_engine::datafusion::arrow::datatypes::DataType;
use streamhouse_engine::{Engine, Output, Session, SessionInfo};

/// An error as both runners report it.
#[derive(Debug)]
pub struct SltError(pub String);

impl std::fmt::Display for SltError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for SltError {}

fn cell(value: Option<&str>) -> String {
    match value {
        None => "NULL".to_string(),
        Some("") => "(empty)".to_string(),
        Some(v) => v.to_string(),
    }
}

fn column_type(data_type: &DataType) -> DefaultColumnType {
    match data_type {
        t if t.is_integer() => DefaultColumnType::Integer,
        t if t.is_floating() || matches!(t, DataType::Decimal128(..) | DataType::Decimal256(..)) => {
            DefaultColumnType::FloatingPoint
        }
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => DefaultColumnType::Text,
        _ => DefaultColumnType::Any,
    }
}

/// Runs statements through an engine session, as a client of the engine.
pub struct InProcess {
    session: Session,
}

impl InProcess {
    /// A session on `engine`.
    pub fn new(engine: &Engine) -> Self {
        Self { session: engine.new_session(SessionInfo { user: "tester".into(), ..Default::default() }) }
    }
}

fn engine_error(err: &streamhouse_engine::Error) -> SltError {
    SltError(format!("{}: {}", streamhouse_server::status::sqlstate(err), err.message()))
}

#[async_trait]
impl AsyncDB for InProcess {
    type Error = SltError;
    type ColumnType = DefaultColumnType;

    async fn run(&mut self, sql: &str) -> Result<DBOutput<DefaultColumnType>, SltError> {
        let (outputs, error) = self.session.run(sql).await;
        if let Some(err) = error {
            return Err(engine_error(&err));
        }
        match outputs.into_iter().last() {
            Some(Output::Rows(mut stream)) => {
                let types = stream.schema().fields().iter().map(|f| column_type(f.data_type())).collect();
                let mut rows = Vec::new();
                while let Some(batch) = futures::StreamExt::next(&mut stream).await {
                    let batch = batch.map_err(|e| engine_error(&e.into()))?;
                    let cells = streamhouse_server::pg::encode::text_cells(batch)
                        .map_err(|e| SltError(format!("encoding: {e}")))?;
                    rows.extend(cells.into_iter().map(|r| r.iter().map(|c| cell(c.as_deref())).collect()));
                }
                Ok(DBOutput::Rows { types, rows })
            }
            Some(Output::Command(done)) => Ok(DBOutput::StatementComplete(done.rows.unwrap_or(0))),
            Some(Output::CopyIn(copy)) => {
                copy.abort().await;
                Err(SltError("COPY FROM STDIN needs a client that sends data; test it over the protocol".into()))
            }
            Some(Output::CopyOut(_)) => Err(SltError("COPY TO STDOUT is tested over the protocol".into())),
            Some(Output::Live(_)) => Err(SltError("SUBSCRIBE never ends; it is tested over the protocol".into())),
            None => Ok(DBOutput::StatementComplete(0)),
        }
    }

    async fn shutdown(&mut self) {}

    fn engine_name(&self) -> &str {
        "streamhouse-inprocess"
    }
}

/// Runs statements over the Postgres protocol (simple query) with tokio-postgres.
pub struct Pg {
    client: tokio_postgres::Client,
}

impl Pg {
    /// A database over `client`.
    pub fn new(client: tokio_postgres::Client) -> Self {
        Self { client }
    }
}

#[async_trait]
impl AsyncDB for Pg {
    type Error = SltError;
    type ColumnType = DefaultColumnType;

    async fn run(&mut self, sql: &str) -> Result<DBOutput<DefaultColumnType>, SltError> {
        use tokio_postgres::SimpleQueryMessage as M;
        let messages = self.client.simple_query(sql).await.map_err(|e| match e.as_db_error() {
            Some(db) => SltError(format!("{}: {}", db.code().code(), db.message())),
            None => SltError(format!("connection: {e}")),
        })?;
        // The result of the last statement decides, as in-process.
        let mut last = DBOutput::StatementComplete(0);
        let mut pending: Option<(usize, Vec<Vec<String>>)> = None;
        for message in messages {
            match message {
                M::RowDescription(cols) => pending = Some((cols.len(), Vec::new())),
                M::Row(row) => {
                    if let Some((_, rows)) = pending.as_mut() {
                        rows.push((0..row.len()).map(|i| cell(row.get(i))).collect());
                    }
                }
                M::CommandComplete(n) => {
                    last = match pending.take() {
                        Some((columns, rows)) => DBOutput::Rows { types: vec![DefaultColumnType::Any; columns], rows },
                        None => DBOutput::StatementComplete(n),
                    };
                }
                _ => {}
            }
        }
        Ok(last)
    }

    async fn shutdown(&mut self) {}

    fn engine_name(&self) -> &str {
        "streamhouse-pgwire"
    }
}
