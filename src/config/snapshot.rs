//! `[snapshot]`: how `cdc snapshot` copies tables.

use serde::Deserialize;

/// `[snapshot]`
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct SnapshotConfig {
    /// Tables (and table ranges) copied in parallel; 0 (the default) means the number of CPU
    /// cores.
    pub jobs: usize,
    /// How tables are copied: under the slot's exported snapshot, or in chunks while the
    /// stream runs (`snapshot/chunked.rs`).
    pub mode: SnapshotMode,
    /// With `mode = "auto"`: keyed tables larger than this (heap bytes) are copied in chunks.
    pub chunked_above_bytes: u64,
    /// Rows per chunk of a chunked copy.
    pub chunk_rows: usize,
}

impl Default for SnapshotConfig {
    fn default() -> Self {
        SnapshotConfig {
            jobs: 0,
            mode: SnapshotMode::Auto,
            chunked_above_bytes: 1 << 30,
            chunk_rows: 50_000,
        }
    }
}

/// `snapshot.mode`.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum SnapshotMode {
    /// Chunked for keyed tables above `chunked_above_bytes`, exported for the rest.
    #[default]
    Auto,
    /// Every table under the slot's exported snapshot.
    Exported,
    /// Every keyed table in chunks (keyless ones stay exported: they have no key order).
    Chunked,
}
