//! The integration tests: one binary, so the real servers in `harness` are started once.

mod harness;

mod decoder_fixtures;
mod replication;
mod tls;
