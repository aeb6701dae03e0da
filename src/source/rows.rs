//! Source rows read by query, a block at a time, each value as Postgres text: what the
//! stream's backfill and `cdc sync`'s incremental passes read.
//!
//! A cursor in the caller's open transaction (so that the rows and anything else the caller
//! reads share one snapshot), fetched `FETCH_ROWS` at a time: memory holds one block whatever
//! the table size. Values come as `col::text`, printed under the session settings of
//! [`crate::pg::connect`], the same text the stream decodes from pgoutput.

use tokio_postgres::Client;

use crate::decode::Datum;
use crate::error::{Error, Result};

/// Source rows read per round trip.
pub const FETCH_ROWS: usize = 10_000;

/// A declared cursor.
pub struct RowCursor {
    name: &'static str,
    done: bool,
}

impl RowCursor {
    /// Declare cursor `name` for `sql` (a SELECT of text values) in the open transaction.
    pub async fn declare(client: &Client, name: &'static str, sql: &str) -> Result<Self> {
        client
            .batch_execute(&format!("DECLARE {name} NO SCROLL CURSOR FOR {sql}"))
            .await
            .map_err(Error::pg(format!("reading source rows ({sql})")))?;
        Ok(RowCursor { name, done: false })
    }

    /// The next block of rows as values; empty once the cursor is exhausted.
    pub async fn next(&mut self, client: &Client) -> Result<Vec<Vec<Datum>>> {
        if self.done {
            return Ok(Vec::new());
        }
        let rows = client
            .query(&format!("FETCH {FETCH_ROWS} FROM {}", self.name), &[])
            .await
            .map_err(Error::pg("reading source rows"))?;
        if rows.len() < FETCH_ROWS {
            self.done = true;
        }
        Ok(rows
            .iter()
            .map(|row| {
                (0..row.len())
                    .map(|i| match row.get::<_, Option<&str>>(i) {
                        Some(v) => Datum::Text(bytes::Bytes::copy_from_slice(v.as_bytes())),
                        None => Datum::Null,
                    })
                    .collect()
            })
            .collect())
    }
}
