//! SQLite files as a source of `cdc sync` passes (`source.url = "sqlite:PATH"`).
//!
//! A file is opened read-only and only ever read. SQLite has no change stream, so the
//! streaming commands refuse it; `cdc sync` passes read it by query:
//! - `catalog.rs`: tables, columns, keys, indexes and foreign keys from SQLite's pragmas, as
//!   the same `TableSchema` a Postgres source gives (types mapped by `types.rs`);
//! - `types.rs`: declared types to destination types, values to Postgres text (checked, never
//!   rounded), comparison by meaning;
//! - `select.rs`: the queries a pass reads with, and the conversions they ask for;
//! - `compare.rs`: a value read and the destination's spelling of it compared by meaning;
//! - `read.rs`: a query's rows converted on a thread of their own and handed over in blocks.
//!
//! Consistency: each table is read inside one read transaction, so it is read as of one
//! moment. In WAL mode a whole pass is one transaction (every table from the same moment,
//! which keeps foreign keys between them valid) while the application goes on writing; in
//! rollback-journal mode a read transaction blocks the application's commits, so each table
//! gets its own, and a pass may see tables from slightly different moments.
pub mod catalog;
pub mod compare;
pub mod read;
pub mod select;
pub mod types;

use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::{Connection, OpenFlags};

use crate::error::{Error, Result};

/// How long a read waits for an application's write lock before giving up.
pub const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// An open, read-only SQLite source.
pub struct SqliteSource {
    pub path: PathBuf,
    pub conn: Connection,
    /// `journal_mode = wal`: readers never block the writer, so one read transaction may
    /// span a whole pass.
    pub wal: bool,
}

impl SqliteSource {
    /// Open `path` read-only, checking that it is a SQLite database that can be read now.
    pub fn open(path: &Path) -> Result<SqliteSource> {
        let shown = path.display();
        match std::fs::metadata(path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(Error::definite(format!(
                    "the SQLite file {shown} does not exist: check source.url \
                     (sqlite:RELATIVE/PATH from the working directory, or sqlite:///ABSOLUTE/PATH)"
                )))
            }
            Err(e) => return Err(Error::io(format!("cannot read the SQLite file {shown}"))(e)),
            Ok(m) if m.is_dir() => {
                return Err(Error::definite(format!(
                    "{shown} is a directory, not a SQLite file: check source.url"
                )))
            }
            Ok(_) => {}
        }
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(Error::sqlite(format!(
            "cannot open the SQLite file {shown}"
        )))?;
        conn.busy_timeout(BUSY_TIMEOUT)
            .map_err(Error::sqlite("setting the SQLite busy timeout"))?;
        let probe = conn.query_row("SELECT count(*) FROM main.sqlite_master", [], |r| {
            r.get::<_, i64>(0)
        });
        if let Err(e) = probe {
            return Err(match e.sqlite_error_code() {
                Some(rusqlite::ErrorCode::NotADatabase) => Error::definite(format!(
                    "{shown} is not a SQLite database (or it is encrypted): check source.url"
                )),
                Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked) => {
                    locked(path, e)
                }
                _ => Error::sqlite(format!("cannot read the SQLite file {shown}"))(e),
            });
        }
        let mode: String = conn
            .query_row("PRAGMA journal_mode", [], |r| r.get(0))
            .map_err(Error::sqlite("reading the SQLite journal mode"))?;
        Ok(SqliteSource {
            path: path.to_owned(),
            conn,
            wal: mode.eq_ignore_ascii_case("wal"),
        })
    }

    /// Start a read transaction: what follows sees the file as of now.
    pub fn begin(&self) -> Result<()> {
        self.conn
            .execute_batch("BEGIN DEFERRED; SELECT count(*) FROM main.sqlite_master;")
            .map_err(|e| self.error("starting a read transaction", e))
    }

    /// End the read transaction (nothing was written).
    pub fn end(&self) -> Result<()> {
        if self.conn.is_autocommit() {
            return Ok(());
        }
        self.conn
            .execute_batch("COMMIT")
            .map_err(|e| self.error("ending a read transaction", e))
    }

    /// A SQLite error while reading this file, locks explained.
    pub fn error(&self, context: &str, e: rusqlite::Error) -> Error {
        match e.sqlite_error_code() {
            Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked) => {
                locked(&self.path, e)
            }
            _ => Error::sqlite(format!("{context} ({})", self.path.display()))(e),
        }
    }
}

fn locked(path: &Path, e: rusqlite::Error) -> Error {
    Error::sqlite(format!(
        "the SQLite file {} is locked by another process writing to it (waited {} s); \
         the next pass tries again. Switching the application's database to WAL mode \
         (PRAGMA journal_mode=wal) lets cdc read while it writes",
        path.display(),
        BUSY_TIMEOUT.as_secs()
    ))(e)
}
