//! The source side: what rows and changes are read from.
//!
//! - `postgres`: the Postgres being replicated or synced — our replication-protocol client
//!   (`replication`), the snapshot's COPY reader (`copy_out`), rows by query (`rows`), and the
//!   catalog reader (`catalog`).
//! - `sqlite`: SQLite files as a source of `cdc sync` passes (read-only, by query).
pub mod postgres;
pub mod sqlite;

use crate::decode::Datum;
use crate::error::Result;

/// Rows in blocks, `None` at the end: what a source's read hands a destination's bulk loader
/// (`Loader::load_rows`), and what a destination's key-ordered read (`rows_by_key`) hands a
/// comparison.
#[async_trait::async_trait]
pub trait RowSource: Send {
    async fn next_rows(&mut self) -> Result<Option<Vec<Vec<Datum>>>>;
}

#[async_trait::async_trait]
impl<R: RowSource + ?Sized> RowSource for Box<R> {
    async fn next_rows(&mut self) -> Result<Option<Vec<Vec<Datum>>>> {
        (**self).next_rows().await
    }
}
