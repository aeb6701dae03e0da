//! Rows into and out of a DuckDB file in bulk: a snapshot worker's loader (COPY output and
//! converted rows through `CopyIn`) and a table read whole in key order for a comparison.

use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use async_trait::async_trait;

use super::copy_in::CopyIn;
use super::handle::{Handle, Pin};
use super::types;
use crate::decode::Datum;
use crate::destination::{Loader, SnapshotTable};
use crate::error::Result;
use crate::model::change::TableMap;
use crate::model::schema::TableSchema;
use crate::model::sql::quote_ident;
use crate::source::postgres::copy_out::CopySource;
use crate::source::RowSource;

/// The DuckDB types of the columns a snapshot copies, in COPY order.
pub(super) fn copied_types(t: &TableSchema) -> Vec<String> {
    t.copied_columns()
        .map(|c| types::duck_type(c.type_oid, &c.type_sql, c.dims))
        .collect()
}

/// A snapshot worker's connection: loads ranges through `CopyIn`.
pub(super) struct DuckLoader {
    copy_in: CopyIn,
    handle: Arc<Handle>,
    /// The file stays open for the whole snapshot.
    _pin: Pin,
}

impl DuckLoader {
    pub(super) fn new(conn: duckdb::Connection, handle: Arc<Handle>, pin: Pin) -> Self {
        DuckLoader {
            copy_in: CopyIn::new(conn),
            handle,
            _pin: pin,
        }
    }
}

#[async_trait]
impl Loader for DuckLoader {
    async fn load(
        &mut self,
        src: &mut CopySource,
        out_sql: &str,
        table: &SnapshotTable<'_>,
        bytes: &AtomicU64,
    ) -> Result<u64> {
        let names: Vec<String> = table
            .schema
            .copied_columns()
            .map(|c| c.name.clone())
            .collect();
        self.copy_in
            .load(
                src,
                out_sql,
                &self.handle.qualified(table.destination),
                &names,
                &copied_types(table.schema),
                bytes,
            )
            .await
    }

    async fn load_rows(
        &mut self,
        rows: &mut (dyn RowSource + '_),
        table: &SnapshotTable<'_>,
    ) -> Result<Option<u64>> {
        let names: Vec<String> = table
            .schema
            .copied_columns()
            .map(|c| c.name.clone())
            .collect();
        self.copy_in
            .load_rows(
                rows,
                &self.handle.qualified(table.destination),
                &names,
                &copied_types(table.schema),
            )
            .await
            .map(Some)
    }
}

/// Every row of `map.dest` as text in key order, read on a thread of its own and handed over
/// in blocks.
pub(super) async fn rows_by_key(
    handle: &Arc<Handle>,
    map: &TableMap,
) -> Result<Box<dyn RowSource>> {
    let cols: Vec<String> = map
        .columns
        .iter()
        .map(|c| {
            let q = quote_ident(&c.name);
            if c.dest_type.eq_ignore_ascii_case("BLOB") {
                // Postgres's bytea text, which the source side prints too.
                format!("'\\x' || lower(hex({q}))")
            } else {
                format!("CAST({q} AS VARCHAR)")
            }
        })
        .collect();
    let order: Vec<String> = map
        .key
        .iter()
        .map(|&k| quote_ident(&map.columns[k].name))
        .collect();
    let sql = format!(
        "SELECT {} FROM {} ORDER BY {}",
        cols.join(", "),
        handle.qualified(&map.dest),
        order.join(", ")
    );
    let (conn, pin) = handle.connection().await?;
    let width = map.columns.len();
    let what = format!("reading {}", map.dest);
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tokio::task::spawn_blocking(move || {
        let _pin = pin;
        let read = || -> duckdb::Result<()> {
            let mut stmt = conn.prepare(&sql)?;
            let mut rows = stmt.query([])?;
            let mut block = Vec::with_capacity(2048);
            while let Some(row) = rows.next()? {
                let mut out = Vec::with_capacity(width);
                for i in 0..width {
                    let v: Option<String> = row.get(i)?;
                    out.push(v.map_or(Datum::Null, |s| Datum::Text(bytes::Bytes::from(s))));
                }
                block.push(out);
                if block.len() >= 2048 && tx.blocking_send(Ok(std::mem::take(&mut block))).is_err()
                {
                    return Ok(());
                }
            }
            if !block.is_empty() {
                let _ = tx.blocking_send(Ok(block));
            }
            Ok(())
        };
        if let Err(e) = read() {
            let _ = tx.blocking_send(Err(crate::error::Error::duck(what)(e)));
        }
    });
    Ok(Box::new(ChannelRows(rx)))
}

/// Row blocks from a reading thread.
struct ChannelRows(tokio::sync::mpsc::Receiver<Result<Vec<Vec<Datum>>>>);

#[async_trait]
impl RowSource for ChannelRows {
    async fn next_rows(&mut self) -> Result<Option<Vec<Vec<Datum>>>> {
        self.0.recv().await.transpose()
    }
}
