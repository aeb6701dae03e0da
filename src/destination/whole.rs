//! `cdc verify` against a destination that cannot compute Postgres' row hashes (DuckDB,
//! ClickHouse): the source's rows are loaded into it the way the snapshot loads them, and the
//! comparison of typed values runs there, in one look at the whole table.

use async_trait::async_trait;

use crate::conninfo::ConnInfo;
use crate::error::Result;
use crate::model::schema::TableName;

/// One look at whole tables, inside the destination.
#[async_trait]
pub trait WholeLook: Send + Sync {
    /// The destination table, or `None` when it does not exist.
    async fn table(&self, table: &TableName) -> Result<Option<DestTable>>;
    /// Load the source's rows (`types`: the destination's type of each compared column) and
    /// compare them with the destination table's.
    async fn compare(
        &self,
        source: &ConnInfo,
        spec: &CompareSpec<'_>,
        types: &[String],
    ) -> Result<Comparison>;
}

/// A destination table's columns (`name`, the destination's type, NOT NULL) and primary key.
pub struct DestTable {
    pub columns: Vec<(String, String, bool)>,
    pub primary_key: Vec<String>,
}

/// What to compare: the source table (and its snapshot filter), the destination table, the
/// key and the compared columns (names shared by both sides, key columns included).
pub struct CompareSpec<'a> {
    pub source: &'a TableName,
    pub source_filter: Option<&'a str>,
    pub destination: &'a TableName,
    pub key: &'a [String],
    pub columns: &'a [String],
    pub max_differences: usize,
}

/// Rows as the destination prints them; `None` is NULL.
pub type Texts = Vec<Option<String>>;

/// The outcome of one comparison.
#[derive(Debug, Default)]
pub struct Comparison {
    pub source_rows: i64,
    pub destination_rows: i64,
    pub missing: Vec<Texts>,
    /// Source row, destination row.
    pub changed: Vec<(Texts, Texts)>,
    pub extra: Vec<Texts>,
    pub truncated: bool,
    pub queries: u64,
}

impl Comparison {
    /// A comparison from its three lookups (`changed`: the source's `columns` values followed
    /// by the destination's, as one row), capped at `max` differences.
    #[allow(clippy::too_many_arguments)]
    pub fn of(
        source_rows: i64,
        destination_rows: i64,
        missing: Vec<Texts>,
        changed: Vec<Texts>,
        extra: Vec<Texts>,
        columns: usize,
        queries: u64,
        max: usize,
    ) -> Comparison {
        let changed = changed
            .into_iter()
            .map(|mut r| {
                let d = r.split_off(columns);
                (r, d)
            })
            .collect();
        let mut out = Comparison {
            source_rows,
            destination_rows,
            missing,
            changed,
            extra,
            truncated: false,
            queries,
        };
        out.cap(max);
        out
    }

    /// Keep at most `max` differences (missing first, then extra, then changed), marking the
    /// comparison truncated when some were left out.
    pub fn cap(&mut self, max: usize) {
        let total = self.missing.len() + self.changed.len() + self.extra.len();
        if total > max {
            self.truncated = true;
            let mut room = max;
            for list in [&mut self.missing, &mut self.extra] {
                list.truncate(room);
                room -= list.len();
            }
            self.changed.truncate(room);
        }
    }
}
