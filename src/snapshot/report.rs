//! What a snapshot run did, and how `cdc snapshot` prints it.

use std::fmt;
use std::time::Duration;

use crate::lsn::Lsn;
use crate::model::schema::TableName;

/// What a snapshot run did.
#[derive(Debug, Clone)]
pub struct SnapshotReport {
    /// The slot's consistent point: streaming starts here.
    pub consistent_lsn: Lsn,
    /// Nothing was done because a completed snapshot exists.
    pub already_complete: bool,
    pub tables: Vec<TableReport>,
    pub elapsed: Duration,
}

/// One copied table.
#[derive(Debug, Clone)]
pub struct TableReport {
    pub source: TableName,
    pub destination: TableName,
    pub rows: u64,
    pub bytes: u64,
    /// Indexes that could not be created on the destination (non-portable expressions).
    pub skipped_indexes: Vec<String>,
}

impl fmt::Display for SnapshotReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.already_complete {
            writeln!(f, "Snapshot already complete (consistent point {}); nothing to do. Use --force to redo it.", self.consistent_lsn)?;
        } else {
            writeln!(
                f,
                "Snapshot complete in {:.1}s; streaming will start at {}.",
                self.elapsed.as_secs_f64(),
                self.consistent_lsn
            )?;
        }
        for t in &self.tables {
            write!(f, "  {} -> {}: {} rows", t.source, t.destination, t.rows)?;
            if t.bytes > 0 {
                write!(f, ", {:.1} MiB", t.bytes as f64 / (1 << 20) as f64)?;
            }
            if !t.skipped_indexes.is_empty() {
                write!(
                    f,
                    " (indexes not portable, skipped: {})",
                    t.skipped_indexes.join(", ")
                )?;
            }
            writeln!(f)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_report_names_each_table_its_rows_size_and_skipped_indexes() {
        let name = |s: &str| TableName::parse(s).unwrap();
        let r = SnapshotReport {
            consistent_lsn: "0/16B3748".parse().unwrap(),
            already_complete: false,
            tables: vec![TableReport {
                source: name("public.a"),
                destination: name("copy.a"),
                rows: 3,
                bytes: 3 << 20,
                skipped_indexes: vec!["a_expr_idx".into()],
            }],
            elapsed: Duration::from_millis(1500),
        };
        let text = r.to_string();
        assert!(
            text.starts_with("Snapshot complete in 1.5s; streaming will start at 0/16B3748."),
            "{text}"
        );
        assert!(
            text.contains("3 rows, 3.0 MiB (indexes not portable, skipped: a_expr_idx)"),
            "{text}"
        );
        let done = SnapshotReport {
            already_complete: true,
            tables: vec![],
            ..r
        };
        assert!(done.to_string().contains("already complete"));
    }
}
