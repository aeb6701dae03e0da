//! What a `cdc sync` pass did, table by table: printed as a table, or as JSON.

use std::fmt;

use serde::Serialize;

use crate::error::Error;

/// What a pass did to one table.
#[derive(Debug, Clone, Default, Serialize)]
pub struct TableSummary {
    pub source: String,
    pub destination: String,
    pub strategy: String,
    /// The table was copied whole (a first pass or a reload) and swapped in.
    pub full_copy: bool,
    pub rows_read: u64,
    pub inserted: u64,
    pub updated: u64,
    /// Rows written as "insert or update" (incremental strategies cannot tell which).
    pub upserted: u64,
    pub deleted: u64,
    /// Rows written to the rejects file (`--on-error skip`).
    pub rejected: u64,
    pub seconds: f64,
    /// Where the next pass starts.
    pub position: Option<String>,
    /// `max_records` (`max_rows`) stopped the pass at this many rows: a trial, not the whole
    /// table.
    pub capped: Option<u64>,
    /// Why the table failed (the others still synced).
    pub error: Option<String>,
    #[serde(skip)]
    pub transient: bool,
}

/// What a pass did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Summary {
    pub tables: Vec<TableSummary>,
    pub seconds: f64,
}

impl Summary {
    /// The tables that failed.
    pub fn failed(&self) -> Vec<&TableSummary> {
        self.tables.iter().filter(|t| t.error.is_some()).collect()
    }

    /// Whether every failure was transient (retrying later may work).
    pub fn failures_transient(&self) -> bool {
        self.failed().iter().all(|t| t.transient)
    }
}

impl fmt::Display for Summary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{:<32} {:<9} {:>10} {:>10} {:>10} {:>10} {:>10} {:>8}",
            "table", "strategy", "read", "inserted", "updated", "upserted", "deleted", "seconds"
        )?;
        for t in &self.tables {
            let strategy = if t.full_copy {
                format!("{}*", t.strategy)
            } else {
                t.strategy.clone()
            };
            writeln!(
                f,
                "{:<32} {:<9} {:>10} {:>10} {:>10} {:>10} {:>10} {:>8.1}",
                t.destination,
                strategy,
                t.rows_read,
                t.inserted,
                t.updated,
                t.upserted,
                t.deleted,
                t.seconds
            )?;
            if let Some(e) = &t.error {
                writeln!(f, "  FAILED: {e}")?;
            }
            if let Some(cap) = t.capped {
                writeln!(
                    f,
                    "  TRIAL: stopped at max_records = {cap} rows; the table may have more (the next pass goes on)"
                )?;
            }
        }
        let rejected: u64 = self.tables.iter().map(|t| t.rejected).sum();
        if rejected > 0 {
            writeln!(
                f,
                "{rejected} rows did not fit their columns and were written to the rejects file"
            )?;
        }
        if self.tables.iter().any(|t| t.full_copy) {
            writeln!(f, "* copied whole and swapped in (first pass or reload)")?;
        }
        Ok(())
    }
}

/// An error and its causes on one line.
pub(super) fn chain(e: &Error) -> String {
    let mut text = e.to_string();
    let mut cause = std::error::Error::source(e);
    while let Some(c) = cause {
        text.push_str(": ");
        text.push_str(&c.to_string());
        cause = c.source();
    }
    text
}
