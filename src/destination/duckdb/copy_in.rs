//! The output of a source `COPY … TO STDOUT` into a DuckDB table, on a connection of its own.
//!
//! Two paths, chosen by the table's column types (`format`):
//! - **CSV** when DuckDB can read every column as Postgres prints it: the source writes CSV,
//!   which goes through an OS pipe straight into DuckDB's CSV reader (`read_csv` of
//!   `/dev/fd/N`) and is cast in the same statement. Nothing is parsed here: this is what the
//!   `psql | duckdb` pipe does, inside one process.
//! - **Text** otherwise (intervals, lists): rows are parsed here (`copy_text`), rewritten by
//!   `types::to_duckdb_text`, staged with the Appender and cast in blocks.

use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};

use duckdb::Connection;
use tokio::io::AsyncWriteExt;

use super::apply::insert_rows;
use crate::source::postgres::copy_text::RowReader;
use super::handle::{blocking, joined};
use super::types::{cast_expr, reads_postgres_text, to_duckdb_text};
use crate::destination::CopyFormat;
use crate::error::{Error, Result};
use crate::model::sql::quote_ident;
use crate::source::postgres::copy_out::CopySource;
use crate::source::RowSource;

/// Rows staged per block on the text path.
const BLOCK_ROWS: usize = 50_000;

/// The longest row (as CSV) the CSV path reads.
const MAX_ROW_BYTES: usize = 16 << 20;

/// The COPY format to ask the source for, for columns of these DuckDB types.
pub fn format(types: &[String]) -> CopyFormat {
    if types.iter().all(|t| reads_postgres_text(t)) {
        CopyFormat::Csv
    } else {
        CopyFormat::Text
    }
}

/// Loads COPY output into tables through one connection.
pub struct CopyIn {
    conn: Option<Connection>,
}

impl CopyIn {
    pub fn new(conn: Connection) -> Self {
        CopyIn { conn: Some(conn) }
    }

    /// The connection back (e.g. to query what was loaded into a temporary table).
    pub fn into_connection(mut self) -> Connection {
        self.conn
            .take()
            .expect("connection returned after each load")
    }

    /// Run `out_sql` (a COPY in `format(types)`) on `src` and insert its rows into `dest`
    /// (quoted) as columns `names` of DuckDB `types`; returns the row count.
    pub async fn load(
        &mut self,
        src: &mut CopySource,
        out_sql: &str,
        dest: &str,
        names: &[String],
        types: &[String],
        bytes: &AtomicU64,
    ) -> Result<u64> {
        match format(types) {
            CopyFormat::Csv => self.load_csv(src, out_sql, dest, names, types, bytes).await,
            _ => {
                self.load_text(src, out_sql, dest, names, types, bytes)
                    .await
            }
        }
    }

    async fn load_csv(
        &mut self,
        src: &mut CopySource,
        out_sql: &str,
        dest: &str,
        names: &[String],
        types: &[String],
        bytes: &AtomicU64,
    ) -> Result<u64> {
        let (reader, writer) = std::io::pipe().map_err(Error::io("creating a pipe for DuckDB"))?;
        let columns: Vec<String> = (0..types.len())
            .map(|i| format!("'c{i}': 'VARCHAR'"))
            .collect();
        let casts: Vec<String> = types
            .iter()
            .enumerate()
            .map(|(i, ty)| cast_expr(ty, &format!("c{i}")))
            .collect();
        let cols: Vec<String> = names.iter().map(|n| quote_ident(n)).collect();
        // Postgres CSV: NULL is an empty unquoted field, "" the empty string; values may
        // hold newlines (quoted). DuckDB's reader needs a buffer as large as the longest row
        // (taken from its memory limit): rows over MAX_ROW_BYTES fail with its error.
        let sql = format!(
            "INSERT INTO {dest} ({}) SELECT {} FROM read_csv('/dev/fd/{}', columns = {{{}}}, header = false, \
             auto_detect = false, delim = ',', quote = '\"', escape = '\"', nullstr = '', \
             allow_quoted_nulls = false, parallel = false, max_line_size = {MAX_ROW_BYTES}, \
             buffer_size = {MAX_ROW_BYTES})",
            cols.join(", "),
            casts.join(", "),
            reader.as_raw_fd(),
            columns.join(", ")
        );
        let conn = self
            .conn
            .take()
            .expect("connection returned after each load");
        let insert = tokio::task::spawn_blocking(move || {
            let result = conn.execute(&sql, []);
            // Closing the read end after DuckDB is done: a writer still writing then fails
            // instead of waiting forever.
            drop(reader);
            (conn, result)
        });
        let mut pipe = tokio::net::unix::pipe::Sender::from_owned_fd(OwnedFd::from(writer))
            .map_err(Error::io("opening the pipe to DuckDB"))?;
        let written: Result<()> = async {
            src.copy_out(out_sql).await?;
            while let Some(chunk) = src.next_chunk().await? {
                bytes.fetch_add(chunk.len() as u64, Ordering::Relaxed);
                pipe.write_all(&chunk)
                    .await
                    .map_err(Error::io("writing rows to DuckDB"))?;
            }
            Ok(())
        }
        .await;
        drop(pipe);
        let (conn, inserted) = joined(insert).await?;
        self.conn = Some(conn);
        // DuckDB's error says more than a broken pipe.
        let rows = inserted.map_err(Error::duck(format!("loading rows into {dest}")))?;
        written?;
        Ok(rows as u64)
    }

    async fn load_text(
        &mut self,
        src: &mut CopySource,
        out_sql: &str,
        dest: &str,
        names: &[String],
        types: &[String],
        bytes: &AtomicU64,
    ) -> Result<u64> {
        src.copy_out(out_sql).await?;
        let mut reader = RowReader::default();
        let mut rows: Vec<Vec<Option<String>>> = Vec::with_capacity(BLOCK_ROWS);
        let mut total = 0u64;
        let bad = |e: String| Error::definite(format!("loading {dest}: {e}"));
        while let Some(chunk) = src.next_chunk().await? {
            bytes.fetch_add(chunk.len() as u64, Ordering::Relaxed);
            reader
                .feed(&chunk, |mut row| {
                    for ((v, ty), name) in row.iter_mut().zip(types).zip(names) {
                        if let Some(text) = v {
                            let converted = to_duckdb_text(ty, text)
                                .map_err(|e| format!("column {name}: {e}"))?;
                            if let std::borrow::Cow::Owned(o) = converted {
                                *text = o;
                            }
                        }
                    }
                    rows.push(row);
                    Ok(())
                })
                .map_err(bad)?;
            if rows.len() >= BLOCK_ROWS {
                total += rows.len() as u64;
                let block = std::mem::replace(&mut rows, Vec::with_capacity(BLOCK_ROWS));
                self.insert(dest, names, types, block).await?;
            }
        }
        reader.finish().map_err(bad)?;
        if !rows.is_empty() {
            total += rows.len() as u64;
            self.insert(dest, names, types, rows).await?;
        }
        Ok(total)
    }

    /// Insert rows that are already Postgres text (a source that is not a Postgres COPY, e.g.
    /// SQLite) into `dest` as columns `names` of DuckDB `types`, in blocks.
    pub async fn load_rows(
        &mut self,
        rows: &mut (dyn RowSource + '_),
        dest: &str,
        names: &[String],
        types: &[String],
    ) -> Result<u64> {
        let mut block: Vec<Vec<Option<String>>> = Vec::with_capacity(BLOCK_ROWS);
        let mut total = 0u64;
        while let Some(incoming) = rows.next_rows().await? {
            for row in incoming {
                let mut out = Vec::with_capacity(row.len());
                for ((d, ty), name) in row.iter().zip(types).zip(names) {
                    out.push(match crate::model::change::text(d) {
                        None => None,
                        Some(t) => Some(
                            to_duckdb_text(ty, t)
                                .map_err(|e| {
                                    Error::definite(format!("loading {dest}: column {name}: {e}"))
                                })?
                                .into_owned(),
                        ),
                    });
                }
                block.push(out);
            }
            if block.len() >= BLOCK_ROWS {
                total += block.len() as u64;
                let full = std::mem::replace(&mut block, Vec::with_capacity(BLOCK_ROWS));
                self.insert(dest, names, types, full).await?;
            }
        }
        if !block.is_empty() {
            total += block.len() as u64;
            self.insert(dest, names, types, block).await?;
        }
        Ok(total)
    }

    async fn insert(
        &mut self,
        dest: &str,
        names: &[String],
        types: &[String],
        rows: Vec<Vec<Option<String>>>,
    ) -> Result<()> {
        let conn = self
            .conn
            .take()
            .expect("connection returned after each load");
        let (dest_owned, names, types) = (dest.to_owned(), names.to_vec(), types.to_vec());
        let (conn, result) = blocking(move || {
            let result = insert_rows(&conn, &dest_owned, &names, &types, &rows);
            (conn, result)
        })
        .await?;
        self.conn = Some(conn);
        result.map_err(Error::duck(format!("loading rows into {dest}")))
    }
}
