//! The one connection to the DuckDB file in this process, opened only while needed.
//!
//! Opening the same file twice in one process would give two independent databases over one
//! file, so every part of cdc shares this handle. `run` executes a closure on the connection in
//! a blocking thread, opening the file first if it is closed and closing it afterwards unless
//! something holds a [`Pin`] (an open transaction, a snapshot in progress): other processes
//! can open the file whenever cdc is between two pieces of work.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use duckdb::Connection;

use crate::error::{Error, Result};

/// How long to wait for another process to let go of the file before giving up (the run
/// loop then retries with its own backoff).
const BUSY_WAIT: Duration = Duration::from_secs(30);

/// DuckDB's buffer pool limit (it spills to a temporary file beyond it).
const MEMORY_LIMIT: &str = "128MB";

/// Run `f` on a blocking thread (every DuckDB call blocks).
pub async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Result<T> {
    joined(tokio::task::spawn_blocking(f)).await
}

/// The outcome of a blocking task started earlier.
pub async fn joined<T>(task: tokio::task::JoinHandle<T>) -> Result<T> {
    task.await
        .map_err(|e| Error::definite(format!("DuckDB task failed: {e}")))
}

pub struct Handle {
    path: PathBuf,
    /// The database's name inside DuckDB (its file's stem), quoted: every table is qualified
    /// with it, since a two-part name `cdc.pipeline` is ambiguous in a file named `cdc.duckdb`.
    catalog: std::sync::OnceLock<String>,
    /// Opened read-only (`cdc verify`, `cdc status` readers never write).
    read_only: bool,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    conn: Option<Connection>,
    pins: usize,
}

/// Keeps the file open while it lives.
pub struct Pin(Arc<Handle>);

impl Drop for Pin {
    fn drop(&mut self) {
        let mut state = self.0.state.lock().expect("duckdb handle lock");
        state.pins -= 1;
        if state.pins == 0 {
            let started = Instant::now();
            state.conn = None;
            tracing::trace!(
                close_ms = started.elapsed().as_millis() as u64,
                "duckdb unpinned"
            );
        }
    }
}

/// The handles alive in this process, by path: opening one file twice in a process would make
/// two independent databases over it.
static OPEN: Mutex<Vec<(PathBuf, std::sync::Weak<Handle>)>> = Mutex::new(Vec::new());

impl Handle {
    /// The process's handle on `path`: the one already open if any (a writable handle also
    /// serves readers), else a new one (read-only if `read_only`).
    pub fn shared(path: &Path, read_only: bool) -> Result<Arc<Self>> {
        let key = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_owned());
        let mut open = OPEN.lock().expect("duckdb registry lock");
        open.retain(|(_, h)| h.strong_count() > 0);
        if let Some(h) = open
            .iter()
            .filter(|(p, _)| *p == key)
            .filter_map(|(_, h)| h.upgrade())
            .find(|h| !h.read_only || read_only)
        {
            return Ok(h);
        }
        let handle = Arc::new(if read_only {
            Handle::read_only(path)?
        } else {
            Handle::new(path)?
        });
        open.push((key, Arc::downgrade(&handle)));
        Ok(handle)
    }

    /// A handle on `path`; its directory must exist (the file is created on first open).
    pub fn new(path: &Path) -> Result<Self> {
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_owned(),
            _ => PathBuf::from("."),
        };
        if !dir.is_dir() {
            return Err(Error::definite(format!(
                "cannot use DuckDB file {}: directory {} does not exist; create it or fix destination.url",
                path.display(),
                dir.display()
            )));
        }
        Ok(Handle {
            path: path.to_owned(),
            catalog: std::sync::OnceLock::new(),
            read_only: false,
            state: Mutex::new(State::default()),
        })
    }

    /// A read-only handle on an existing file.
    pub fn read_only(path: &Path) -> Result<Self> {
        if !path.is_file() {
            return Err(Error::definite(format!(
                "there is no DuckDB file at {}: check destination.url (`cdc snapshot` creates the file)",
                path.display()
            )));
        }
        Ok(Handle {
            read_only: true,
            ..Handle::new(path)?
        })
    }

    /// `table` qualified with the database name (known once the file was opened).
    pub fn qualified(&self, table: &crate::model::schema::TableName) -> String {
        match self.catalog.get() {
            Some(catalog) => format!("{catalog}.{}", table.quoted()),
            None => table.quoted(),
        }
    }

    /// `schema.name` (already quoted parts) qualified with the database name.
    pub fn qualified_raw(&self, quoted_schema: &str, quoted_name: &str) -> String {
        match self.catalog.get() {
            Some(catalog) => format!("{catalog}.{quoted_schema}.{quoted_name}"),
            None => format!("{quoted_schema}.{quoted_name}"),
        }
    }

    /// The quoted database name, once known.
    pub fn catalog(&self) -> Option<&str> {
        self.catalog.get().map(String::as_str)
    }

    /// Keep the file open until the returned `Pin` is dropped.
    pub fn pin(self: &Arc<Self>) -> Pin {
        self.state.lock().expect("duckdb handle lock").pins += 1;
        Pin(self.clone())
    }

    /// Another connection to the same open database (for work in parallel, e.g. snapshot
    /// loaders), with the file kept open while the returned `Pin` lives.
    pub async fn connection(self: &Arc<Self>) -> Result<(Connection, Pin)> {
        let me = self.clone();
        blocking(move || me.connection_blocking()).await?
    }

    fn connection_blocking(self: &Arc<Self>) -> Result<(Connection, Pin)> {
        let pin = self.pin();
        let mut state = self.state.lock().expect("duckdb handle lock");
        if state.conn.is_none() {
            state.conn = Some(self.open()?);
        }
        let conn = state
            .conn
            .as_ref()
            .expect("opened above")
            .try_clone()
            .map_err(Error::duck(format!(
                "connecting to {}",
                self.path.display()
            )))?;
        drop(state);
        Ok((conn, pin))
    }

    /// Run `f` on the connection in a blocking thread; `what` names the work in errors.
    pub async fn run<T, F>(self: &Arc<Self>, what: impl Into<String>, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> duckdb::Result<T> + Send + 'static,
    {
        let me = self.clone();
        let what = what.into();
        blocking(move || me.run_blocking(&what, f)).await?
    }

    fn run_blocking<T>(
        &self,
        what: &str,
        f: impl FnOnce(&Connection) -> duckdb::Result<T>,
    ) -> Result<T> {
        let mut state = self.state.lock().expect("duckdb handle lock");
        let started = Instant::now();
        if state.conn.is_none() {
            state.conn = Some(self.open()?);
        }
        let opened = started.elapsed();
        let result = f(state.conn.as_ref().expect("opened above"));
        let worked = started.elapsed() - opened;
        if state.pins == 0 {
            // Closing checkpoints the file and lets other processes in.
            state.conn = None;
        }
        tracing::trace!(
            what,
            open_ms = opened.as_millis() as u64,
            work_ms = worked.as_millis() as u64,
            close_ms = (started.elapsed() - opened - worked).as_millis() as u64,
            "duckdb"
        );
        result.map_err(Error::duck(format!("{what} ({})", self.path.display())))
    }

    /// Open the file, waiting (with backoff) while another process holds it.
    fn open(&self) -> Result<Connection> {
        let started = Instant::now();
        let mut delay = Duration::from_millis(20);
        loop {
            let opened = if self.read_only {
                duckdb::Config::default()
                    .access_mode(duckdb::AccessMode::ReadOnly)
                    .and_then(|config| Connection::open_with_flags(&self.path, config))
            } else {
                Connection::open(&self.path)
            };
            match opened {
                Ok(c) => {
                    // Values print and parse in UTC, as on the Postgres side. DuckDB's buffer
                    // pool would grow to 80% of the machine's memory; cdc is a sidecar.
                    let _ = c.execute_batch("SET TimeZone = 'UTC'");
                    c.execute_batch(&format!("SET memory_limit = '{MEMORY_LIMIT}'"))
                        .map_err(Error::duck("limiting DuckDB's memory"))?;
                    if self.catalog.get().is_none() {
                        let name: String = c
                            .query_row("SELECT current_database()", [], |r| r.get(0))
                            .map_err(Error::duck("reading the database name"))?;
                        let _ = self.catalog.set(crate::model::sql::quote_ident(&name));
                    }
                    return Ok(c);
                }
                Err(e) => {
                    let msg = e.to_string();
                    if is_lock_conflict(&e) {
                        if started.elapsed() >= BUSY_WAIT {
                            return Err(Error::from(crate::error::Cause::DuckDbBusy {
                                path: self.path.display().to_string(),
                                detail: msg,
                            }));
                        }
                        std::thread::sleep(delay);
                        delay = (delay * 2).min(Duration::from_secs(1));
                        continue;
                    }
                    if let Some(version) = newer_storage_version(&msg) {
                        return Err(Error::definite(newer_file_advice(&self.path, version)));
                    }
                    return Err(Error::definite(format!(
                        "cannot open DuckDB file {}: {msg}. destination.url must name a DuckDB database file \
                         (created if missing) in a writable directory",
                        self.path.display()
                    )));
                }
            }
        }
    }
}

/// The storage version of a file written by a newer DuckDB than the one cdc links, from the
/// error opening it ("Trying to read a database file with version number 69, but we can only
/// read version ..."): the C API has no code for it, only this text.
fn newer_storage_version(msg: &str) -> Option<u64> {
    let rest = msg.split("Trying to read a database file with version number ").nth(1)?;
    rest.split(|c: char| !c.is_ascii_digit()).next()?.parse().ok()
}

/// What to do with a file a newer DuckDB wrote: the library cdc links cannot read it, and
/// DuckDB's own `STORAGE_VERSION` option writes a copy it can.
fn newer_file_advice(path: &Path, version: u64) -> String {
    let linked = duckdb::Connection::open_in_memory()
        .and_then(|c| c.query_row("SELECT version()", [], |r| r.get::<_, String>(0)))
        .unwrap_or_else(|_| "1.5".into());
    let minor = linked
        .trim_start_matches('v')
        .splitn(3, '.')
        .take(2)
        .collect::<Vec<_>>()
        .join(".");
    let name = path.file_stem().map_or("db".into(), |s| s.to_string_lossy().into_owned());
    format!(
        "DuckDB file {path} was written by a newer DuckDB (storage version {version}) than the {linked} cdc links, \
         which cannot read it. Write a copy in a format DuckDB {minor} reads, with the DuckDB that wrote it: \
         ATTACH '{path}' AS src; ATTACH '{copy}' AS dst (STORAGE_VERSION 'v{minor}.0'); COPY FROM DATABASE src TO dst; \
         then point destination.url at {copy} (or name a new file and let cdc create it)",
        path = path.display(),
        copy = path.with_file_name(format!("{name}-v{minor}.duckdb")).display(),
    )
}

/// Whether opening failed because another process holds the file. The one place a DuckDB error
/// is told by its text: the C API reports a lock conflict as a generic I/O error whose only
/// distinguishing part is the message.
pub fn is_lock_conflict(e: &duckdb::Error) -> bool {
    let msg = e.to_string();
    msg.contains("Could not set lock") || msg.contains("Conflicting lock")
}
