//! Storage errors.

/// Result type of the storage crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What can go wrong in storage. Variants name the object involved.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file is truncated, has a bad checksum, or does not decode.
    #[error("corrupt file {path}: {reason}")]
    Corrupt {
        /// The file, relative to the warehouse root.
        path: String,
        /// What is wrong with it.
        reason: String,
    },
    /// Another writer committed the snapshot id this commit tried to claim,
    /// and retrying did not help (SQLSTATE 40001).
    #[error("could not serialize access to table {table}: {reason}")]
    Conflict {
        /// The table.
        table: String,
        /// Why.
        reason: String,
    },
    /// A table, snapshot or file that should exist does not.
    #[error("{what} does not exist")]
    NotFound {
        /// What was looked for.
        what: String,
    },
    /// A table of that name exists.
    #[error("table {table} already exists")]
    AlreadyExists {
        /// The table.
        table: String,
    },
    /// Data that does not fit the table (wrong columns, bad option).
    #[error("{0}")]
    Invalid(String),
    /// A NULL in a NOT NULL column (SQLSTATE 23502).
    #[error("{0}")]
    NotNull(String),
    /// A computed value does not fit its column (SQLSTATE 22003).
    #[error("{0}")]
    OutOfRange(String),
    /// Something the table's definition does not support (SQLSTATE 0A000).
    #[error("{0}")]
    Unsupported(String),
    /// Object storage failed.
    #[error("object storage error on {path}: {source}")]
    ObjectStore {
        /// The object.
        path: String,
        /// The underlying error.
        source: object_store::Error,
    },
    /// Arrow failed (a bug, or data that does not fit).
    #[error("arrow error: {0}")]
    Arrow(#[from] arrow::error::ArrowError),
}

impl Error {
    pub(crate) fn corrupt(path: impl std::fmt::Display, reason: impl std::fmt::Display) -> Self {
        Error::Corrupt { path: path.to_string(), reason: reason.to_string() }
    }

    /// A copy of this error for the other writers of a group commit.
    pub(crate) fn replicate(&self) -> Self {
        match self {
            Error::Corrupt { path, reason } => Error::Corrupt { path: path.clone(), reason: reason.clone() },
            Error::Conflict { table, reason } => Error::Conflict { table: table.clone(), reason: reason.clone() },
            Error::NotFound { what } => Error::NotFound { what: what.clone() },
            Error::AlreadyExists { table } => Error::AlreadyExists { table: table.clone() },
            Error::Invalid(message) => Error::Invalid(message.clone()),
            Error::NotNull(message) => Error::NotNull(message.clone()),
            Error::OutOfRange(message) => Error::OutOfRange(message.clone()),
            Error::Unsupported(message) => Error::Unsupported(message.clone()),
            Error::ObjectStore { path, source } => Error::ObjectStore {
                path: path.clone(),
                source: object_store::Error::Generic { store: "group commit", source: source.to_string().into() },
            },
            Error::Arrow(e) => Error::Arrow(arrow::error::ArrowError::ExternalError(e.to_string().into())),
        }
    }

    pub(crate) fn store(path: impl std::fmt::Display, source: object_store::Error) -> Self {
        Error::ObjectStore { path: path.to_string(), source }
    }
}
