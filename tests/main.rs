//! The integration tests: one binary, so the real servers in `harness` are started once.

mod harness;
mod layers;
mod libpq;
mod monitoring;

mod chunked;
mod cli;
mod clickhouse;
mod clickhouse_stream;
mod clickhouse_sync;
mod conformance;
mod decoder_fixtures;
mod docker;
mod duckdb;
mod image;
mod replication;
mod run;
mod run_faults;
mod snapshot;
mod snowflake;
mod snowflake_sync;
mod sqlite;
mod status;
mod sync;
mod tls;
mod verify;
