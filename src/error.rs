//! The library's one error type: opaque, with a [`Kind`] decided where each driver's error
//! enters the crate (`Error::pg`, `Error::duck`, `Error::sqlite`, `Error::io`, the wire code's
//! server errors, the ClickHouse client's answers), never later from message text.
//!
//! **Transient** (connection lost, server shutting down, serialization failure): retry with
//! backoff and resume from the stored position. **Definite** (permission, missing table,
//! malformed data): a human must act, and the message says what to do. **Configuration**: the
//! configuration names something unusable (an unreadable password file, a bad URL).
//! **Internal**: a bug of ours (a task that panicked).

use std::fmt;
use std::io;

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

/// What the caller should do about an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Retrying after a backoff may succeed without anyone changing anything.
    Transient,
    /// A human must act on the source or destination; the message says what.
    Definite,
    /// The configuration must change.
    Configuration,
    /// A bug of ours: a task panicked or was cancelled.
    Internal,
}

/// Everything that can go wrong in the library.
pub struct Error(Box<Inner>);

struct Inner {
    kind: Kind,
    cause: Cause,
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}({:?})", self.0.kind, self.0.cause)
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0.cause, f)
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        std::error::Error::source(&self.0.cause)
    }
}

/// What went wrong, as each driver's error entered the crate. Private: callers decide by
/// [`Error::kind`] and the few accessors, never by variant or message text.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Cause {
    #[error("TLS setup failed")]
    Tls(#[source] TlsError),
    #[error("{context}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },
    /// A task of ours ended without its answer: it panicked (a bug) or was cancelled.
    #[error("{what} stopped")]
    Stopped {
        what: String,
        #[source]
        source: tokio::task::JoinError,
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
    /// Every server of a host list answered, none as `target_session_attrs` asks (a failover
    /// in progress, most likely: a retry may find the new primary).
    #[error("no server of the host list is {wanted} (target_session_attrs): {servers}")]
    NoServerFits { wanted: String, servers: String },
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
    /// ClickHouse answered a statement with an error: its HTTP status and, when the server
    /// said, its error code (`X-ClickHouse-Exception-Code`, or `Code: N.` in the body).
    #[error("ClickHouse refused {statement} (HTTP {status}): {message}")]
    ClickHouse {
        statement: String,
        status: u16,
        code: Option<u32>,
        message: String,
    },
    /// A destination driver's own error (a type of its folder), its kind decided where it
    /// was made ([`Error::driver`]); the driver finds its details again with
    /// [`Error::driver_error`].
    #[error("{0}")]
    Driver(Box<dyn std::error::Error + Send + Sync>),
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

/// A cause's kind, for the causes that carry no driver-specific knowledge. Driver errors are
/// classified by their constructors below.
impl From<Cause> for Error {
    fn from(cause: Cause) -> Self {
        let kind = match &cause {
            Cause::Io { .. }
            | Cause::Timeout { .. }
            | Cause::DuckDbBusy { .. }
            | Cause::NoServerFits { .. } => Kind::Transient,
            Cause::Db { source, .. } => sqlstate_kind(&source.code),
            Cause::Postgres { source, .. } => postgres_kind(source),
            // Another connection writing the SQLite file (a rollback-journal writer locks
            // readers out while it commits).
            Cause::Sqlite { source, .. } => match source.sqlite_error_code() {
                Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked) => {
                    Kind::Transient
                }
                _ => Kind::Definite,
            },
            Cause::Stopped { .. } => Kind::Internal,
            _ => Kind::Definite,
        };
        Error(Box::new(Inner { kind, cause }))
    }
}

/// SQLSTATE classes and codes after which a retry can succeed.
fn sqlstate_kind(code: &str) -> Kind {
    let transient = code.starts_with("08")  // connection exception
        || code.starts_with("53")           // insufficient resources (too many connections, disk full)
        || code.starts_with("57P")          // admin/crash shutdown, cannot connect now
        || code == "40001"                  // serialization failure
        || code == "40P01"                  // deadlock detected
        || code == "55006"; // object in use: a replication slot still held by a dying walsender
    if transient {
        Kind::Transient
    } else {
        Kind::Definite
    }
}

fn postgres_kind(e: &tokio_postgres::Error) -> Kind {
    match e.code() {
        Some(code) => sqlstate_kind(code.code()),
        // No SQLSTATE: the connection itself failed or closed.
        None if e.is_closed()
            || std::error::Error::source(e).is_some_and(|s| s.is::<io::Error>()) =>
        {
            Kind::Transient
        }
        None => Kind::Definite,
    }
}

impl Error {
    /// What the caller should do about it.
    pub fn kind(&self) -> Kind {
        self.0.kind
    }

    /// Whether retrying (after a backoff) may succeed without a human changing anything.
    pub fn is_transient(&self) -> bool {
        self.0.kind == Kind::Transient
    }

    /// The server's SQLSTATE, when a Postgres server reported this error.
    pub fn sqlstate(&self) -> Option<&str> {
        match &self.0.cause {
            Cause::Db { source, .. } => Some(&source.code),
            Cause::Postgres { source, .. } => source.code().map(|c| c.code()),
            _ => None,
        }
    }

    /// ClickHouse's error code, when ClickHouse reported this error with one.
    pub fn clickhouse_code(&self) -> Option<u32> {
        match &self.0.cause {
            Cause::ClickHouse { code, .. } => *code,
            _ => None,
        }
    }

    /// A destination driver's own error, of the kind its driver decided.
    pub fn driver(kind: Kind, error: impl std::error::Error + Send + Sync + 'static) -> Error {
        Error(Box::new(Inner {
            kind,
            cause: Cause::Driver(Box::new(error)),
        }))
    }

    /// The driver's error of type `T` this error carries, if it carries one.
    pub fn driver_error<T: std::error::Error + 'static>(&self) -> Option<&T> {
        match &self.0.cause {
            Cause::Driver(e) => e.downcast_ref::<T>(),
            _ => None,
        }
    }

    /// The table to copy again and why, for the error that asks for it.
    pub fn recopy(&self) -> Option<(&crate::model::schema::TableName, &str)> {
        match &self.0.cause {
            Cause::Recopy { table, why } => Some((table, why)),
            _ => None,
        }
    }

    /// Each unmet prerequisite, for the error that lists them.
    pub fn prerequisites(&self) -> Option<&[String]> {
        match &self.0.cause {
            Cause::Prerequisites(p) => Some(p),
            _ => None,
        }
    }

    /// A definite error's message with `prefix: ` before it (where it happened); any other
    /// error unchanged.
    pub(crate) fn prefixed(mut self, prefix: &str) -> Error {
        if let Cause::Definite(m) = &mut self.0.cause {
            *m = format!("{prefix}: {m}");
        }
        self
    }

    /// `what` took longer than `seconds`: transient (the next attempt may be quicker).
    pub(crate) fn timeout(what: impl Into<String>, seconds: u64) -> Error {
        Cause::Timeout {
            what: what.into(),
            seconds,
        }
        .into()
    }

    /// A definite error: the message says what is wrong and what to do.
    /// For `map_err` on a task's `JoinHandle`: the task `what` panicked or was cancelled,
    /// which is a bug of ours, not the user's to fix.
    pub fn stopped(what: impl Into<String>) -> impl FnOnce(tokio::task::JoinError) -> Error {
        let what = what.into();
        move |source| Cause::Stopped { what, source }.into()
    }

    pub fn definite(message: String) -> Error {
        Cause::Definite(message).into()
    }

    /// ClickHouse refused a statement; `transient` as its client decided from the answer.
    pub fn clickhouse(
        statement: String,
        status: u16,
        code: Option<u32>,
        message: String,
        transient: bool,
    ) -> Error {
        let kind = if transient {
            Kind::Transient
        } else {
            Kind::Definite
        };
        Error(Box::new(Inner {
            kind,
            cause: Cause::ClickHouse {
                statement,
                status,
                code,
                message,
            },
        }))
    }

    pub(crate) fn io(context: impl Into<String>) -> impl FnOnce(io::Error) -> Error {
        let context = context.into();
        move |source| Cause::Io { context, source }.into()
    }

    pub(crate) fn sqlite(context: impl Into<String>) -> impl FnOnce(rusqlite::Error) -> Error {
        let context = context.into();
        move |source| Cause::Sqlite { context, source }.into()
    }

    pub(crate) fn duck(context: impl Into<String>) -> impl FnOnce(duckdb::Error) -> Error {
        let context = context.into();
        move |source| Cause::DuckDb { context, source }.into()
    }

    pub(crate) fn pg(context: impl Into<String>) -> impl FnOnce(tokio_postgres::Error) -> Error {
        let context = context.into();
        move |source| Cause::Postgres { context, source }.into()
    }
}

/// A configuration problem found while connecting (unreadable password file, bad URL) is a
/// definite error: a human must fix the configuration.
impl From<crate::config::Problem> for Error {
    fn from(p: crate::config::Problem) -> Self {
        Error(Box::new(Inner {
            kind: Kind::Configuration,
            cause: Cause::Definite(p.to_string()),
        }))
    }
}

impl From<TlsError> for Error {
    fn from(e: TlsError) -> Self {
        Cause::Tls(e).into()
    }
}

/// Shorthand used across the library.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    fn db(code: &str) -> Error {
        Cause::Db {
            context: "x".into(),
            source: Box::new(DbError {
                severity: "ERROR".into(),
                code: code.into(),
                message: "m".into(),
                detail: None,
                hint: None,
            }),
        }
        .into()
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
        assert_eq!(
            db("42704").kind(),
            Kind::Definite,
            "undefined object, e.g. slot dropped"
        );
        assert_eq!(db("42704").sqlstate(), Some("42704"));
        assert!(
            Error::io("reading")(io::Error::from(io::ErrorKind::ConnectionReset)).is_transient()
        );
        assert_eq!(
            Error::from(Cause::Auth("bad password".into())).kind(),
            Kind::Definite
        );
        let problem = crate::config::Problem::file("destination.url", "bad");
        assert_eq!(Error::from(problem).kind(), Kind::Configuration);
    }

    #[tokio::test]
    async fn a_task_that_panicked_is_ours_to_fix() {
        let join = tokio::spawn(async { panic!("boom") }).await.unwrap_err();
        let e = Error::stopped("copy worker")(join);
        assert_eq!(e.kind(), Kind::Internal);
        assert!(!e.is_transient());
        assert_eq!(e.to_string(), "copy worker stopped");
    }
}
