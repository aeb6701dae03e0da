//! The source side: everything that talks to the Postgres being replicated.
//!
//! - `replication`: our own replication-protocol client (tokio-postgres cannot open
//!   `replication=database` connections): slot management and the CopyBoth WAL stream.
//! - `copy_out`: the snapshot's COPY TO reader on the same wire code, chunking rows in place.
//! - `rows`: rows read by query through a cursor, as text (backfill, `cdc sync`).
//! - `sqlite`: SQLite files as a source of `cdc sync` passes (read-only, by query).
pub mod copy_out;
pub mod replication;
pub mod rows;
pub mod sqlite;
