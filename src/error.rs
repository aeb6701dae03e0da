//! The library's error type, and the one place that decides what is worth retrying.
//!
//! Errors are **transient** (connection lost, server shutting down, serialization failure: retry
//! with backoff and resume from the stored position) or **definite** (configuration, permission,
//! malformed data: a human must act, and the message says what to do). [`Error::is_transient`]
//! is that decision; nothing else in the crate makes it.

use std::fmt;
use std::io;

use crate::conninfo::ConnInfoError;
use crate::decode::DecodeError;
use crate::tls::TlsError;

/// An error reported by a Postgres server (an ErrorResponse), with its SQLSTATE.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DbError {
    pub severity: String,
    /// Five-character SQLSTATE, e.g. `42704`.
    pub code: String,
    pub message: String,
    pub detail: Option<String>,
    pub hint: Option<String>,
}

impl fmt::Display for DbError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: {} (SQLSTATE {})",
            self.severity, self.message, self.code
        )?;
        if let Some(d) = &self.detail {
            write!(f, "; detail: {d}")?;
        }
        if let Some(h) = &self.hint {
            write!(f, "; hint: {h}")?;
        }
        Ok(())
    }
}

impl std::error::Error for DbError {}

/// Everything that can go wrong in the library.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("invalid connection string for {side}")]
    ConnInfo {
        side: &'static str,
        #[source]
        source: ConnInfoError,
    },
    #[error("TLS setup failed")]
    Tls(#[from] TlsError),
    #[error("{context}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },
    #[error("timed out after {seconds}s while {what}")]
    Timeout { what: String, seconds: u64 },
    #[error("server refused {context}")]
    Db {
        context: String,
        /// Boxed: every `Result` in the crate carries this enum, so its largest variant sets
        /// their size.
        #[source]
        source: Box<DbError>,
    },
    #[error("authentication failed: {0}")]
    Auth(String),
    #[error("server requires TLS policy mismatch: {0}")]
    TlsRefused(String),
    #[error("unexpected message from server while {context}: {detail}")]
    Protocol { context: String, detail: String },
    #[error("cannot decode replication message at {lsn}")]
    Decode {
        lsn: crate::lsn::Lsn,
        #[source]
        source: DecodeError,
    },
    #[error("{context}")]
    Postgres {
        context: String,
        #[source]
        source: tokio_postgres::Error,
    },
    #[error("{context}")]
    DuckDb {
        context: String,
        #[source]
        source: duckdb::Error,
    },
    #[error("{context}")]
    Sqlite {
        context: String,
        #[source]
        source: rusqlite::Error,
    },
    /// Another process holds the DuckDB file (DuckDB allows one writer, or readers only).
    #[error("the DuckDB file {path} is held by another process (waited 30 s): {detail}. DuckDB lets one process write or several read; readers should open it read-only, query and close")]
    DuckDbBusy { path: String, detail: String },
    #[error("prerequisites not met, nothing was changed:\n{}", .0.iter().map(|p| format!("  - {p}")).collect::<Vec<_>>().join("\n"))]
    Prerequisites(Vec<String>),
    #[error("`cdc {0}` is not implemented yet")]
    NotImplemented(&'static str),
    /// ClickHouse answered a statement with an error: its HTTP status and, when the server
    /// said, its error code (`X-ClickHouse-Exception-Code`, or `Code: N.` in the body).
    #[error("ClickHouse refused {statement} (HTTP {status}): {message}")]
    ClickHouse {
        statement: String,
        status: u16,
        code: Option<u32>,
        message: String,
    },
    /// A table's destination copy can no longer be kept exact by applying changes (its source
    /// filled new columns of rows that cannot be matched by key): `cdc run` copies it again
    /// alone, as a table joining the pipeline, and streams on.
    #[error("{table} must be copied again: {why}")]
    Recopy {
        table: crate::model::schema::TableName,
        why: String,
    },
    #[error("{0}")]
    Definite(String),
}

/// ClickHouse error codes after which the same statement can succeed later: the server or a
/// replica is overloaded, out of memory for now, restarting, or lost its coordination service.
/// From ClickHouse's `ErrorCodes.cpp` and the retry lists its own clients keep.
pub const CLICKHOUSE_RETRYABLE: &[(u32, &str)] = &[
    (3, "UNEXPECTED_END_OF_FILE"),
    (32, "ATTEMPT_TO_READ_AFTER_EOF"),
    (159, "TIMEOUT_EXCEEDED"),
    (202, "TOO_MANY_SIMULTANEOUS_QUERIES"),
    (203, "NO_FREE_CONNECTION"),
    (209, "SOCKET_TIMEOUT"),
    (210, "NETWORK_ERROR"),
    (225, "NO_ZOOKEEPER"),
    (236, "ABORTED"),
    (241, "MEMORY_LIMIT_EXCEEDED"),
    (242, "TABLE_IS_READ_ONLY"),
    (252, "TOO_MANY_PARTS"),
    (279, "ALL_CONNECTION_TRIES_FAILED"),
    (285, "TOO_FEW_LIVE_REPLICAS"),
    (319, "UNKNOWN_STATUS_OF_INSERT"),
    (373, "SESSION_IS_LOCKED"),
    (394, "QUERY_WAS_CANCELLED"),
    (425, "SYSTEM_ERROR"),
    (439, "CANNOT_SCHEDULE_TASK"),
    (999, "KEEPER_EXCEPTION"),
    (1000, "POCO_EXCEPTION"),
];

/// Whether a ClickHouse error answer is worth retrying: by its code when it has one, else by the
/// HTTP status (a load balancer or proxy in front answering 502/503/504/429 has no code).
fn clickhouse_is_transient(status: u16, code: Option<u32>) -> bool {
    match code {
        Some(code) => CLICKHOUSE_RETRYABLE.iter().any(|(c, _)| *c == code),
        None => matches!(status, 429 | 502 | 503 | 504),
    }
}

/// SQLSTATE classes and codes after which a retry can succeed.
fn sqlstate_is_transient(code: &str) -> bool {
    code.starts_with("08")          // connection exception
        || code.starts_with("53")   // insufficient resources (too many connections, disk full)
        || code.starts_with("57P")  // admin/crash shutdown, cannot connect now
        || code == "40001"          // serialization failure
        || code == "40P01"          // deadlock detected
        || code == "55006" // object in use: a replication slot still held by a dying walsender
}

impl Error {
    /// Whether retrying (after a backoff) may succeed without a human changing anything.
    pub fn is_transient(&self) -> bool {
        match self {
            Error::Io { .. } | Error::Timeout { .. } | Error::DuckDbBusy { .. } => true,
            Error::Db { source, .. } => sqlstate_is_transient(&source.code),
            Error::ClickHouse { status, code, .. } => clickhouse_is_transient(*status, *code),
            // Another connection writing the SQLite file (a rollback-journal writer locks
            // readers out while it commits).
            Error::Sqlite { source, .. } => matches!(
                source.sqlite_error_code(),
                Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked)
            ),
            Error::Postgres { source, .. } => match source.code() {
                Some(code) => sqlstate_is_transient(code.code()),
                // No SQLSTATE: the connection itself failed or closed.
                None => {
                    source.is_closed()
                        || std::error::Error::source(source).is_some_and(|s| s.is::<io::Error>())
                }
            },
            _ => false,
        }
    }

    /// The server's SQLSTATE, when the server reported this error.
    pub fn sqlstate(&self) -> Option<&str> {
        match self {
            Error::Db { source, .. } => Some(&source.code),
            Error::Postgres { source, .. } => source.code().map(|c| c.code()),
            _ => None,
        }
    }

    pub(crate) fn io(context: impl Into<String>) -> impl FnOnce(io::Error) -> Error {
        let context = context.into();
        move |source| Error::Io { context, source }
    }

    pub(crate) fn sqlite(context: impl Into<String>) -> impl FnOnce(rusqlite::Error) -> Error {
        let context = context.into();
        move |source| Error::Sqlite { context, source }
    }

    pub(crate) fn duck(context: impl Into<String>) -> impl FnOnce(duckdb::Error) -> Error {
        let context = context.into();
        move |source| Error::DuckDb { context, source }
    }

    pub(crate) fn pg(context: impl Into<String>) -> impl FnOnce(tokio_postgres::Error) -> Error {
        let context = context.into();
        move |source| Error::Postgres { context, source }
    }
}

/// A configuration problem found while connecting (unreadable password file, bad URL) is a
/// definite error: a human must fix the configuration.
impl From<crate::config::Problem> for Error {
    fn from(p: crate::config::Problem) -> Self {
        Error::Definite(p.to_string())
    }
}

/// Shorthand used across the library.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    fn db(code: &str) -> Error {
        Error::Db {
            context: "x".into(),
            source: Box::new(DbError {
                severity: "ERROR".into(),
                code: code.into(),
                message: "m".into(),
                detail: None,
                hint: None,
            }),
        }
    }

    #[test]
    fn retries_only_what_can_heal_by_itself() {
        assert!(db("57P01").is_transient(), "admin shutdown");
        assert!(db("08006").is_transient(), "connection failure");
        assert!(
            db("55006").is_transient(),
            "slot in use by a dying walsender"
        );
        assert!(!db("42501").is_transient(), "insufficient privilege");
        assert!(
            !db("42704").is_transient(),
            "undefined object, e.g. slot dropped"
        );
        assert!(
            Error::io("reading")(io::Error::from(io::ErrorKind::ConnectionReset)).is_transient()
        );
        assert!(!Error::Auth("bad password".into()).is_transient());
    }

    fn ch(status: u16, code: Option<u32>) -> Error {
        Error::ClickHouse {
            statement: "INSERT".into(),
            status,
            code,
            message: "m".into(),
        }
    }

    #[test]
    fn clickhouse_errors_are_retried_by_code_or_by_a_proxys_status() {
        for code in [252, 241, 202, 159, 209, 210, 242, 999] {
            assert!(ch(500, Some(code)).is_transient(), "code {code}");
        }
        for status in [502, 503, 504, 429] {
            assert!(
                ch(status, None).is_transient(),
                "HTTP {status} without a code"
            );
        }
        // Unknown column, type mismatch, syntax error, unknown table, a 500 with no code.
        for code in [47, 53, 62, 60] {
            assert!(!ch(400, Some(code)).is_transient(), "code {code}");
        }
        assert!(!ch(500, None).is_transient());
        assert!(
            !ch(503, Some(62)).is_transient(),
            "the code decides over the status"
        );
    }
}
