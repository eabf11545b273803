//! Engine errors and their classification.
//!
//! Every error the engine returns carries a [`StatusCode`]: a small, stable
//! classification that the protocol front ends translate into a Postgres
//! SQLSTATE or a gRPC status code from one table (`streamhouse-server`'s
//! `status` module). Errors raised by DataFusion are classified once, here, in
//! [`Error::from`]; nothing downstream inspects message text.

use datafusion::arrow::error::ArrowError;
use datafusion::error::DataFusionError;
use datafusion::sql::sqlparser::parser::ParserError;

/// Result type of the engine.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What kind of failure an error is. The front ends map this, and only this,
/// to SQLSTATEs and gRPC codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StatusCode {
    /// The SQL text does not parse.
    InvalidSyntax,
    /// A table, view or relation does not exist.
    TableNotFound,
    /// A column does not exist.
    ColumnNotFound,
    /// A column reference matches more than one column.
    AmbiguousColumn,
    /// A column list that matches no constraint (`ON CONFLICT (x)` on a non-key column).
    InvalidColumnReference,
    /// A function does not exist or no overload matches.
    FunctionNotFound,
    /// A schema does not exist.
    SchemaNotFound,
    /// A configuration parameter or other named object does not exist.
    ObjectNotFound,
    /// A table, view or schema of that name exists already.
    AlreadyExists,
    /// A role (or other non-relation object) of that name exists already.
    DuplicateObject,
    /// The statement names an object of another kind (DROP TABLE on a view).
    WrongObjectType,
    /// Other objects depend on the one being dropped.
    DependentObjectsStillExist,
    /// The operation is not allowed (e.g. dropping a system schema).
    InsufficientPrivilege,
    /// A column name appears twice.
    DuplicateColumn,
    /// Values or expressions of incompatible types.
    TypeMismatch,
    /// Text that is not a valid value of the target type (`'abc'::int`).
    InvalidTextRepresentation,
    /// COPY data that is not well-formed (wrong number of columns, bad quoting).
    BadCopyFormat,
    /// Binary COPY data that is not well-formed (a field of the wrong size).
    BadBinaryFormat,
    /// Division by zero.
    DivisionByZero,
    /// A value does not fit its type.
    NumericOverflow,
    /// Any other invalid value, argument or parameter given by the user.
    InvalidArgument,
    /// A run-time parameter got a value it does not accept.
    InvalidParameterValue,
    /// A read-only run-time parameter was set.
    CantChangeRuntimeParam,
    /// A statement other than COMMIT/ROLLBACK in a failed transaction block.
    InFailedTransaction,
    /// A statement that needs a transaction block ran outside one (DECLARE without HOLD).
    NoActiveTransaction,
    /// RELEASE or ROLLBACK TO of a savepoint that does not exist.
    InvalidSavepoint,
    /// FETCH or CLOSE of a cursor that does not exist.
    InvalidCursorName,
    /// DECLARE of a cursor name in use.
    DuplicateCursor,
    /// A bind parameter is missing or has the wrong type.
    InvalidParameter,
    /// Something other SQL systems do that streamhouse does not (yet).
    Unsupported,
    /// The object is not in a state that allows the operation (a
    /// materialized view whose maintenance stopped).
    ObjectNotInPrerequisiteState,
    /// The statement would violate a constraint (not null, primary key).
    ConstraintViolation,
    /// The statement needs more memory than the configured limit allows.
    ResourcesExhausted,
    /// The statement's expressions nest deeper than the server allows.
    StatementTooComplex,
    /// A per-session limit of the configuration (open cursors, prepared
    /// statements) is reached.
    ConfigurationLimitExceeded,
    /// The statement is longer than the server takes.
    ProgramLimitExceeded,
    /// A scalar subquery returned more than one row.
    CardinalityViolation,
    /// Text that is not valid in the encoding (invalid UTF-8).
    CharacterNotInRepertoire,
    /// A column used outside an aggregate is not in GROUP BY.
    GroupingError,
    /// A date or time that does not parse.
    InvalidDatetimeFormat,
    /// A date or time field out of range.
    DatetimeFieldOverflow,
    /// A prepared statement that does not exist.
    UndefinedPreparedStatement,
    /// `PREPARE` of a name in use.
    DuplicatePreparedStatement,
    /// A negative `LIMIT` or `OFFSET`.
    InvalidRowCount,
    /// A name longer than the server allows.
    NameTooLong,
    /// The disk is full.
    DiskFull,
    /// The statement was cancelled by the client.
    Cancelled,
    /// The statement ran past `statement_timeout`.
    Timeout,
    /// The server is shutting down.
    ShuttingDown,
    /// Two writers raced for one commit and this one lost (retry the statement).
    SerializationFailure,
    /// A stored file is truncated or corrupt.
    DataCorrupted,
    /// An I/O failure below the engine.
    Io,
    /// A bug or an unexpected state inside streamhouse.
    Internal,
}

impl StatusCode {
    /// Whether the error is the user's to fix (as opposed to the server's).
    pub fn is_user_error(self) -> bool {
        !matches!(self, StatusCode::Internal | StatusCode::Io | StatusCode::DataCorrupted)
    }
}

/// An engine error: a classification plus a message meant for the user.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct Error {
    code: StatusCode,
    message: String,
    /// Where in the statement text the error is (1-based, in characters), for syntax errors.
    position: Option<usize>,
}

impl Error {
    /// An error of the given class.
    pub fn new(code: StatusCode, message: impl Into<String>) -> Self {
        Self { code, message: message.into(), position: None }
    }

    /// The same error at a position of the statement text (1-based, in characters).
    pub fn with_position(mut self, position: usize) -> Self {
        self.position = Some(position);
        self
    }

    /// Where in the statement text the error is, if known (1-based, in characters).
    pub fn position(&self) -> Option<usize> {
        self.position
    }

    /// A feature streamhouse does not support.
    pub fn unsupported(message: impl Into<String>) -> Self {
        Self::new(StatusCode::Unsupported, message)
    }

    /// An invalid argument from the user.
    pub fn invalid(message: impl Into<String>) -> Self {
        Self::new(StatusCode::InvalidArgument, message)
    }

    /// A bug inside streamhouse.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(StatusCode::Internal, message)
    }

    /// The classification of this error.
    pub fn code(&self) -> StatusCode {
        self.code
    }

    /// The message shown to the user.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl From<DataFusionError> for Error {
    fn from(err: DataFusionError) -> Self {
        if let Some(missing) = missing_from_entry(&err) {
            return missing;
        }
        let code = classify_datafusion(&err);
        Self { code, message: user_message(&err), position: None }
    }
}

impl From<ArrowError> for Error {
    fn from(err: ArrowError) -> Self {
        DataFusionError::from(err).into()
    }
}

impl From<ParserError> for Error {
    fn from(err: ParserError) -> Self {
        match err {
            // Nesting deeper than the parser recurses: Postgres' "stack depth limit exceeded".
            ParserError::RecursionLimitExceeded => Self::new(
                StatusCode::StatementTooComplex,
                "statement too complex: it nests deeper than the parser allows; split it into smaller statements or views",
            ),
            other => Self::new(StatusCode::InvalidSyntax, strip_prefixes(&other.to_string())),
        }
    }
}

/// `nope.k` where no relation in FROM is called `nope`: Postgres' 42P01
/// "missing FROM-clause entry", not a missing column.
fn missing_from_entry(err: &DataFusionError) -> Option<Error> {
    let DataFusionError::SchemaError(e, _) = root_cause(err) else { return None };
    let datafusion::common::SchemaError::FieldNotFound { field, valid_fields } = e.as_ref() else { return None };
    let relation = field.relation.as_ref()?;
    let known = valid_fields.iter().any(|f| f.relation.as_ref().is_some_and(|r| r.table() == relation.table()));
    (!known && !valid_fields.is_empty()).then(|| {
        Error::new(StatusCode::TableNotFound, format!("missing FROM-clause entry for table \"{}\"", relation.table()))
    })
}

/// The message of a DataFusion error, as a user would see it.
pub fn describe(err: &DataFusionError) -> String {
    user_message(err)
}

/// The message of a DataFusion error without DataFusion's variant prefixes
/// ("Error during planning: ", "Arrow error: " …) and backtraces.
fn user_message(err: &DataFusionError) -> String {
    let root = root_cause(err);
    let text = match root {
        DataFusionError::SQL(e, _) => e.to_string(),
        DataFusionError::SchemaError(e, _) => e.to_string(),
        DataFusionError::ArrowError(e, _) => e.to_string(),
        // What is left of a scalar subquery DataFusion could not decorrelate.
        DataFusionError::NotImplemented(m) if m.contains("does not support logical expression ScalarSubquery") => {
            "this correlated scalar subquery is not supported: it must be correlated with the outer query by \
             equality (inner column = outer expression); rewrite it as a join"
                .to_string()
        }
        DataFusionError::Plan(m)
        | DataFusionError::Execution(m)
        | DataFusionError::NotImplemented(m)
        | DataFusionError::Configuration(m)
        | DataFusionError::Internal(m) => m.clone(),
        DataFusionError::ResourcesExhausted(m) => format!(
            "out of memory: the query needs more than its memory_limit (SET memory_limit, or the server's execution.memory_limit) allows: {m}"
        ),
        DataFusionError::External(e) => match e.downcast_ref::<Error>() {
            Some(ours) => ours.message.clone(),
            None => e.to_string(),
        },
        other => match carried(other) {
            Some(ours) => ours.message.clone(),
            None => other.to_string(),
        },
    };
    strip_prefixes(&text)
}

fn strip_prefixes(text: &str) -> String {
    const PREFIXES: &[&str] = &[
        "Error during planning: ",
        "Execution error: ",
        "Arrow error: ",
        "Schema error: ",
        "External error: ",
        "SQL error: ",
        "This feature is not implemented: ",
        "Invalid or Unsupported Configuration: ",
        "Resources exhausted: ",
        "Compute error: ",
        "Cast error: ",
        "Invalid argument error: ",
        "Divide by zero error",
        "sql parser error: ",
        "ParserError(\"",
    ];
    let mut text = text.trim();
    loop {
        let before = text;
        for prefix in PREFIXES {
            if let Some(rest) = text.strip_prefix(prefix) {
                text = if rest.is_empty() && *prefix == "Divide by zero error" { "division by zero" } else { rest };
            }
        }
        if before == text {
            break;
        }
    }
    // DataFusion appends backtraces when enabled; never show them to users.
    let text = text.split("\n\nbacktrace:").next().unwrap_or(text);
    text.trim_end_matches("\")").to_string()
}

/// An error of ours that came back through a reader DataFusion drove
/// (Parquet's reader of a Dynamic Table's plain splits).
fn carried(err: &DataFusionError) -> Option<&Error> {
    let parquet = match err {
        DataFusionError::ParquetError(e) => Some(e.as_ref()),
        DataFusionError::ArrowError(e, _) => match e.as_ref() {
            ArrowError::ExternalError(inner) => inner.downcast_ref::<datafusion::parquet::errors::ParquetError>(),
            _ => None,
        },
        _ => None,
    };
    match parquet? {
        datafusion::parquet::errors::ParquetError::External(inner) => inner.downcast_ref::<Error>(),
        _ => None,
    }
}

/// Unwraps `Context`, `Diagnostic`, `Shared`, `Collection` and `External`
/// layers to the error that says what went wrong.
fn root_cause(err: &DataFusionError) -> &DataFusionError {
    match err {
        DataFusionError::Context(_, inner) | DataFusionError::Diagnostic(_, inner) => root_cause(inner),
        DataFusionError::Shared(inner) => root_cause(inner),
        DataFusionError::Collection(errs) if !errs.is_empty() => root_cause(&errs[0]),
        DataFusionError::External(e) => match e.downcast_ref::<DataFusionError>() {
            Some(inner) => root_cause(inner),
            None => err,
        },
        DataFusionError::ArrowError(e, _) => match e.as_ref() {
            ArrowError::ExternalError(inner) => match inner.downcast_ref::<DataFusionError>() {
                Some(inner) => root_cause(inner),
                None => err,
            },
            _ => err,
        },
        _ => err,
    }
}

/// Classifies a DataFusion error. DataFusion reports most planning failures as
/// `Plan(String)`, so the message decides; the patterns below are pinned by
/// `sql-tests/errors.slt`, which fails when a DataFusion upgrade changes them.
fn classify_datafusion(err: &DataFusionError) -> StatusCode {
    // An error from streamhouse code carried through DataFusion keeps its class.
    if let DataFusionError::External(e) = err
        && let Some(ours) = e.downcast_ref::<Error>()
    {
        return ours.code;
    }
    let root = root_cause(err);
    if let DataFusionError::External(e) = root
        && let Some(ours) = e.downcast_ref::<Error>()
    {
        return ours.code;
    }
    if let Some(ours) = carried(root) {
        return ours.code;
    }
    match root {
        DataFusionError::SQL(e, _) if matches!(e.as_ref(), ParserError::RecursionLimitExceeded) => {
            StatusCode::StatementTooComplex
        }
        DataFusionError::SQL(..) => StatusCode::InvalidSyntax,
        DataFusionError::NotImplemented(_) => StatusCode::Unsupported,
        DataFusionError::ResourcesExhausted(_) => StatusCode::ResourcesExhausted,
        DataFusionError::IoError(_) | DataFusionError::ObjectStore(_) => StatusCode::Io,
        DataFusionError::Configuration(_) => StatusCode::InvalidArgument,
        DataFusionError::SchemaError(e, _) => match e.as_ref() {
            datafusion::common::SchemaError::FieldNotFound { .. } => StatusCode::ColumnNotFound,
            datafusion::common::SchemaError::AmbiguousReference { .. } => StatusCode::AmbiguousColumn,
            _ => StatusCode::DuplicateColumn,
        },
        DataFusionError::ArrowError(e, _) => classify_arrow(e),
        DataFusionError::Plan(m) | DataFusionError::Execution(m) => classify_message(m),
        DataFusionError::Internal(m) => {
            // DataFusion reports some user mistakes as internal errors.
            match classify_message(m) {
                StatusCode::InvalidArgument => StatusCode::Internal,
                code => code,
            }
        }
        _ => StatusCode::Internal,
    }
}

fn classify_arrow(err: &ArrowError) -> StatusCode {
    match err {
        ArrowError::DivideByZero => StatusCode::DivisionByZero,
        ArrowError::CastError(m) => {
            if m.contains("overflow") || m.contains("too large") || m.contains("out of range") {
                StatusCode::NumericOverflow
            } else {
                StatusCode::InvalidTextRepresentation
            }
        }
        ArrowError::ParseError(_) => StatusCode::InvalidTextRepresentation,
        ArrowError::ArithmeticOverflow(_) => StatusCode::NumericOverflow,
        ArrowError::ComputeError(m) => {
            let lower = m.to_ascii_lowercase();
            if lower.contains("overflow") {
                StatusCode::NumericOverflow
            } else if lower.contains("divide by zero") || lower.contains("division by zero") {
                StatusCode::DivisionByZero
            } else {
                StatusCode::InvalidArgument
            }
        }
        ArrowError::InvalidArgumentError(m) if m.contains("non-nullable") => StatusCode::ConstraintViolation,
        ArrowError::InvalidArgumentError(_) => StatusCode::InvalidArgument,
        ArrowError::MemoryError(_) => StatusCode::ResourcesExhausted,
        ArrowError::IoError(..) => StatusCode::Io,
        _ => StatusCode::Internal,
    }
}

fn classify_message(message: &str) -> StatusCode {
    // DataFusion's planner reports these user mistakes only as text; each
    // message start is DataFusion's own, pinned by `sql-tests/bad_input/`.
    const KNOWN: &[(&str, StatusCode)] = &[
        ("Column in SELECT must be in GROUP BY", StatusCode::GroupingError),
        ("Column in HAVING must be in GROUP BY", StatusCode::GroupingError),
        ("Projection references non-aggregate values", StatusCode::GroupingError),
        ("Order by column out of bounds", StatusCode::InvalidColumnReference),
        ("UNION queries have different number of columns", StatusCode::InvalidSyntax),
        ("INTERSECT/EXCEPT query must have the same number of columns", StatusCode::InvalidSyntax),
        ("Inconsistent data length across values list", StatusCode::InvalidSyntax),
        ("Column count doesn't match insert query", StatusCode::InvalidSyntax),
        ("Prepared statement '", StatusCode::UndefinedPreparedStatement),
        ("LIMIT must be >= 0", StatusCode::InvalidRowCount),
        ("OFFSET must be >= 0", StatusCode::InvalidRowCount),
        ("Unsupported data type", StatusCode::FunctionNotFound),
    ];
    if let Some((_, code)) = KNOWN.iter().find(|(start, _)| message.starts_with(start)) {
        return *code;
    }
    let m = message.to_ascii_lowercase();
    let has = |needle: &str| m.contains(needle);
    if has("not found") && (has("table '") || has("table \"")) {
        StatusCode::TableNotFound
    } else if has("no field named") || has("column '") && has("not found") {
        StatusCode::ColumnNotFound
    } else if has("invalid function") || has("function '") && has("not found") {
        StatusCode::FunctionNotFound
    } else if has("schema '") && has("doesn't exist") || has("schema '") && has("not found") {
        StatusCode::SchemaNotFound
    } else if has("already exists") {
        StatusCode::AlreadyExists
    } else if has("divide by zero") || has("division by zero") {
        StatusCode::DivisionByZero
    } else if has("overflow") {
        StatusCode::NumericOverflow
    } else if has("cannot infer common")
        || has("coerce")
        || has("coercion")
        || has("type mismatch")
        || has("mismatched types")
        || has("invalid comparison operation")
        || has("cannot be cast")
        || has("cannot cast")
        || has("unsupported cast")
        || has("does not support the data type")
        || has("expected a boolean")
        || has("must be boolean")
        || has("no function matches")
    {
        StatusCode::TypeMismatch
    } else if has("non-nullable") || has("null value") && has("not null") {
        StatusCode::ConstraintViolation
    } else if has("placeholder") || has("parameter") && has("$") {
        StatusCode::InvalidParameter
    } else if has("unsupported") || has("not supported") || has("not implemented") {
        StatusCode::Unsupported
    } else {
        StatusCode::InvalidArgument
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_lose_datafusion_prefixes() {
        let err: Error = DataFusionError::Plan("table 'x' not found".into()).into();
        assert_eq!(err.message(), "table 'x' not found");
        assert_eq!(err.code(), StatusCode::TableNotFound);
        let err: Error = DataFusionError::ArrowError(Box::new(ArrowError::DivideByZero), None).into();
        assert_eq!(err.code(), StatusCode::DivisionByZero);
        assert_eq!(err.message(), "division by zero");
        let wrapped =
            DataFusionError::Context("ctx".into(), Box::new(DataFusionError::ResourcesExhausted("pool full".into())));
        assert_eq!(Error::from(wrapped).code(), StatusCode::ResourcesExhausted);
    }

    #[test]
    fn our_errors_keep_their_class_through_datafusion() {
        let ours = Error::new(StatusCode::Cancelled, "canceling statement due to user request");
        let err: Error = DataFusionError::External(Box::new(ours)).into();
        assert_eq!(err.code(), StatusCode::Cancelled);
        assert_eq!(err.message(), "canceling statement due to user request");
    }
}
