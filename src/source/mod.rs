//! The source side: everything that talks to the Postgres being replicated.
//!
//! - `replication`: our own replication-protocol client (tokio-postgres cannot open
//!   `replication=database` connections): slot management and the CopyBoth WAL stream.
pub mod replication;
