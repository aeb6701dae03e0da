//! The source side: what rows and changes are read from.
//!
//! - `postgres`: the Postgres being replicated or synced — our replication-protocol client
//!   (`replication`), the snapshot's COPY reader (`copy_out`), rows by query (`rows`), and the
//!   catalog reader (`catalog`).
//! - `sqlite`: SQLite files as a source of `cdc sync` passes (read-only, by query).
pub mod postgres;
pub mod sqlite;
