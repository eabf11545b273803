//! The one table that turns engine status codes into Postgres SQLSTATEs and
//! gRPC codes. Nothing else in streamhouse chooses either.

use streamhouse_engine::StatusCode;

/// SQLSTATE and gRPC code for each status code.
///
/// | status | SQLSTATE | gRPC |
/// |---|---|---|
/// | see the `match` below; it is the table |
pub fn codes(status: StatusCode) -> (&'static str, tonic::Code) {
    use StatusCode as S;
    use tonic::Code as G;
    match status {
        S::InvalidSyntax => ("42601", G::InvalidArgument),
        S::TableNotFound => ("42P01", G::NotFound),
        S::ColumnNotFound => ("42703", G::InvalidArgument),
        S::AmbiguousColumn => ("42702", G::InvalidArgument),
        S::InvalidColumnReference => ("42P10", G::InvalidArgument),
        S::FunctionNotFound => ("42883", G::InvalidArgument),
        S::SchemaNotFound => ("3F000", G::NotFound),
        S::ObjectNotFound => ("42704", G::NotFound),
        S::AlreadyExists => ("42P07", G::AlreadyExists),
        S::DuplicateObject => ("42710", G::AlreadyExists),
        S::WrongObjectType => ("42809", G::InvalidArgument),
        S::DependentObjectsStillExist => ("2BP01", G::FailedPrecondition),
        S::InsufficientPrivilege => ("42501", G::PermissionDenied),
        S::DuplicateColumn => ("42701", G::InvalidArgument),
        S::TypeMismatch => ("42804", G::InvalidArgument),
        S::InvalidTextRepresentation => ("22P02", G::InvalidArgument),
        S::BadCopyFormat => ("22P04", G::InvalidArgument),
        S::BadBinaryFormat => ("22P03", G::InvalidArgument),
        S::DivisionByZero => ("22012", G::InvalidArgument),
        S::NumericOverflow => ("22003", G::InvalidArgument),
        S::InvalidArgument => ("22023", G::InvalidArgument),
        S::InvalidParameterValue => ("22023", G::InvalidArgument),
        S::CantChangeRuntimeParam => ("55P02", G::FailedPrecondition),
        S::InFailedTransaction => ("25P02", G::FailedPrecondition),
        S::NoActiveTransaction => ("25P01", G::FailedPrecondition),
        S::InvalidSavepoint => ("3B001", G::FailedPrecondition),
        S::InvalidCursorName => ("34000", G::NotFound),
        S::DuplicateCursor => ("42P03", G::AlreadyExists),
        S::InvalidParameter => ("08P01", G::InvalidArgument),
        S::Unsupported => ("0A000", G::Unimplemented),
        S::ObjectNotInPrerequisiteState => ("55000", G::FailedPrecondition),
        S::ConstraintViolation => ("23502", G::InvalidArgument),
        S::ResourcesExhausted => ("53200", G::ResourceExhausted),
        S::StatementTooComplex => ("54001", G::InvalidArgument),
        S::ConfigurationLimitExceeded => ("53400", G::ResourceExhausted),
        S::ProgramLimitExceeded => ("54000", G::InvalidArgument),
        S::CardinalityViolation => ("21000", G::InvalidArgument),
        S::CharacterNotInRepertoire => ("22021", G::InvalidArgument),
        S::GroupingError => ("42803", G::InvalidArgument),
        S::InvalidDatetimeFormat => ("22007", G::InvalidArgument),
        S::DatetimeFieldOverflow => ("22008", G::InvalidArgument),
        S::UndefinedPreparedStatement => ("26000", G::NotFound),
        S::DuplicatePreparedStatement => ("42P05", G::AlreadyExists),
        S::InvalidRowCount => ("2201W", G::InvalidArgument),
        S::NameTooLong => ("42622", G::InvalidArgument),
        S::DiskFull => ("53100", G::ResourceExhausted),
        S::Cancelled => ("57014", G::Cancelled),
        S::Timeout => ("57014", G::DeadlineExceeded),
        S::ShuttingDown => ("57P01", G::Unavailable),
        S::Io => ("58030", G::Unavailable),
        S::SerializationFailure => ("40001", G::Aborted),
        S::DataCorrupted => ("XX001", G::DataLoss),
        S::Internal => ("XX000", G::Internal),
    }
}

/// The SQLSTATE of an engine error.
pub fn sqlstate(err: &streamhouse_engine::Error) -> &'static str {
    codes(err.code()).0
}

/// The gRPC status of an engine error, message intact.
pub fn grpc_status(err: &streamhouse_engine::Error) -> tonic::Status {
    tonic::Status::new(codes(err.code()).1, err.message().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_mistakes_are_never_internal() {
        use StatusCode as S;
        let all = [
            S::InvalidSyntax,
            S::TableNotFound,
            S::ColumnNotFound,
            S::AmbiguousColumn,
            S::InvalidColumnReference,
            S::FunctionNotFound,
            S::SchemaNotFound,
            S::ObjectNotFound,
            S::AlreadyExists,
            S::DuplicateObject,
            S::WrongObjectType,
            S::DependentObjectsStillExist,
            S::InsufficientPrivilege,
            S::DuplicateColumn,
            S::TypeMismatch,
            S::InvalidTextRepresentation,
            S::BadCopyFormat,
            S::BadBinaryFormat,
            S::DivisionByZero,
            S::NumericOverflow,
            S::InvalidArgument,
            S::InvalidParameterValue,
            S::CantChangeRuntimeParam,
            S::InFailedTransaction,
            S::NoActiveTransaction,
            S::InvalidSavepoint,
            S::InvalidCursorName,
            S::DuplicateCursor,
            S::InvalidParameter,
            S::Unsupported,
            S::ObjectNotInPrerequisiteState,
            S::ConstraintViolation,
            S::ResourcesExhausted,
            S::StatementTooComplex,
            S::CardinalityViolation,
            S::CharacterNotInRepertoire,
            S::GroupingError,
            S::InvalidDatetimeFormat,
            S::DatetimeFieldOverflow,
            S::UndefinedPreparedStatement,
            S::DuplicatePreparedStatement,
            S::InvalidRowCount,
            S::NameTooLong,
            S::DiskFull,
            S::Cancelled,
            S::Timeout,
            S::ShuttingDown,
            S::SerializationFailure,
        ];
        for status in all {
            assert!(status.is_user_error());
            let (sqlstate, grpc) = codes(status);
            assert_ne!(sqlstate, "XX000", "{status:?}");
            assert_ne!(grpc, tonic::Code::Internal, "{status:?}");
            assert_eq!(sqlstate.len(), 5);
        }
        assert_eq!(codes(S::Internal).0, "XX000");
    }
}
