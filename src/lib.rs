//! # cdc: Postgres change-data-capture
//!
//! Keeps destination tables identical to source tables: a snapshot under an exported slot
//! snapshot, then a stream of pgoutput changes applied in batched destination transactions.
//!
//! ## Layout
//!
//! The modules follow the data flow (see ARCHITECTURE.md for the full map):
//!
//! ```text
//!  snapshot ── exported snapshot, COPY ────────────────────────────► destination
//!  source::postgres     ──► decode ──► stream (batches) ──► apply ──►     │
//!   our replication         pgoutput    transactions,       set-based     │
//!   protocol client         decoder     spill, schema       writes + LSN ◄┘
//! ```
//!
//! Modules sit in layers (ARCHITECTURE.md; `tests/layers.rs` keeps them): nothing imports from
//! a layer above its own.
//!
//! - [`model`]: the data every layer shares (schema, changes, SQL quoting); no I/O.
//! - [`endpoint`]: every URL scheme parsed once.
//! - [`config`], [`cli`]: the user-facing contract (config file, environment, flags, exit codes).
//! - [`conninfo`], [`tls`], [`pg`]: connection strings, TLS policy, ordinary SQL connections.
//! - [`source`]: a Postgres source (catalog, replication, COPY, rows) and SQLite files.
//! - [`decode`]: bytes of pgoutput to typed messages; pure, no I/O.
//! - [`snapshot`]: `cdc snapshot`; [`stream`], [`apply`], [`run`]: `cdc run`.
//! - [`verify`]: `cdc verify`, the row-by-row consistency report (range hashes, then rows).
//! - [`lsn`]: WAL positions.
//! - [`local_pg`]: throwaway servers for tests and the demo; [`demo`]: `cdc demo`.
//! - [`error`]: the one library error, its [`error::Kind`] set where a driver's error enters.

pub mod apply;
pub mod cli;
pub mod config;
pub mod conninfo;
pub mod decode;
pub mod demo;
pub mod destination;
pub mod endpoint;
pub mod error;
pub mod http;
pub mod local_pg;
pub mod lsn;
pub mod metrics;
pub mod model;
pub mod pg;
pub mod run;
pub mod snapshot;
pub mod source;
pub mod status;
pub mod stream;
pub mod sync;
pub mod tables;
pub mod teardown;
pub mod tls;
pub mod verify;
