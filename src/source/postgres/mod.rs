//! A Postgres source: its catalog, its rows by query or COPY, and its replication slot.
pub mod catalog;
pub mod copy_out;
pub mod copy_text;
pub mod replication;
pub mod rows;
