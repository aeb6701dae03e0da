//! Moving rows: `COPY ... TO STDOUT` on a source connection that imported the slot's
//! snapshot (read off the socket in chunks by `source::copy_out`), streamed straight into
//! `COPY ... FROM STDIN` on the destination. Nothing buffers more than a chunk (256 KiB) and the
//! driver's buffers, whatever the table size.
//!
//! Large tables are split into ranges of heap pages (`ctid >= '(a,0)' AND ctid < '(b,0)'`,
//! a TID range scan since Postgres 14), so several connections can copy one table at once.

use std::sync::atomic::{AtomicU64, Ordering};

use futures_util::SinkExt;
use tokio_postgres::Client;

use super::catalog::TableSchema;
use crate::config::TableName;
use crate::error::{Error, Result};
use crate::source::copy_out::CopySource;
use crate::source::replication::quote_ident;

/// Tables smaller than two of these (in 8 kB pages, i.e. 64 MiB) are copied in one piece.
pub const MIN_CHUNK_PAGES: i64 = 8192;

/// A range of heap pages; `None` bounds are open (the last range also catches pages the
/// statistics did not know about).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageRange {
    pub from: Option<i64>,
    pub to: Option<i64>,
}

/// Split `pages` into ranges for `jobs` parallel connections.
pub fn plan_ranges(pages: i64, jobs: usize, tid_range_scans: bool) -> Vec<PageRange> {
    let whole = vec![PageRange {
        from: None,
        to: None,
    }];
    if !tid_range_scans || pages < 2 * MIN_CHUNK_PAGES {
        return whole;
    }
    // A few ranges per job keep every connection busy until the end.
    let n = (pages / MIN_CHUNK_PAGES).clamp(2, (jobs as i64 * 3).max(2));
    let step = (pages + n - 1) / n;
    (0..n)
        .map(|i| PageRange {
            from: (i > 0).then_some(i * step),
            to: (i < n - 1).then_some((i + 1) * step),
        })
        .collect()
}

/// The source side: a `COPY ... TO STDOUT` statement for `range` of `table`.
pub fn copy_out_sql(
    table: &TableSchema,
    range: PageRange,
    filter: Option<&str>,
    binary: bool,
) -> String {
    let cols = column_list(table);
    let mut conds = Vec::new();
    if let Some(from) = range.from {
        conds.push(format!("ctid >= '({from},0)'::tid"));
    }
    if let Some(to) = range.to {
        conds.push(format!("ctid < '({to},0)'::tid"));
    }
    if let Some(f) = filter {
        conds.push(format!("({f})"));
    }
    let format = if binary { " (FORMAT binary)" } else { "" };
    // COPY reads a partitioned table only through a query.
    if conds.is_empty() && !table.partitioned {
        format!("COPY {} ({cols}) TO STDOUT{format}", table.name.quoted())
    } else {
        let filter = if conds.is_empty() {
            String::new()
        } else {
            format!(" WHERE {}", conds.join(" AND "))
        };
        format!(
            "COPY (SELECT {cols} FROM {}{filter}) TO STDOUT{format}",
            table.name.quoted()
        )
    }
}

/// The destination side: `COPY ... FROM STDIN` with the same columns in the same order.
pub fn copy_in_sql(dest: &TableName, table: &TableSchema, binary: bool) -> String {
    let format = if binary { " (FORMAT binary)" } else { "" };
    format!(
        "COPY {} ({}) FROM STDIN{format}",
        dest.quoted(),
        column_list(table)
    )
}

fn column_list(table: &TableSchema) -> String {
    table
        .copied_columns()
        .map(|c| quote_ident(&c.name))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Stream one range from `src` (inside its snapshot transaction) into `dst`; returns the
/// number of rows. `bytes` counts the data as it flows, for progress reports.
pub async fn copy_range(
    src: &mut CopySource,
    dst: &Client,
    out_sql: &str,
    in_sql: &str,
    bytes: &AtomicU64,
) -> Result<u64> {
    src.copy_out(out_sql).await?;
    let sink = dst
        .copy_in(in_sql)
        .await
        .map_err(Error::pg(format!("starting {in_sql}")))?;
    let mut sink = std::pin::pin!(sink);
    while let Some(chunk) = src.next_chunk().await? {
        bytes.fetch_add(chunk.len() as u64, Ordering::Relaxed);
        sink.send(chunk)
            .await
            .map_err(Error::pg(format!("copying rows ({out_sql})")))?;
    }
    sink.as_mut()
        .finish()
        .await
        .map_err(Error::pg(format!("finishing {in_sql}")))
}

#[cfg(test)]
mod tests {
    use super::super::catalog::ColumnDef;
    use super::*;

    #[test]
    fn small_tables_and_old_servers_copy_in_one_piece() {
        assert_eq!(plan_ranges(100, 4, true).len(), 1);
        assert_eq!(plan_ranges(1_000_000, 4, false).len(), 1);
    }

    #[test]
    fn ranges_cover_every_page_without_overlap() {
        for (pages, jobs) in [
            (2 * MIN_CHUNK_PAGES, 2),
            (82_000, 2),
            (1_000_000, 8),
            (99_999, 1),
        ] {
            let r = plan_ranges(pages, jobs, true);
            assert!(r.len() >= 2);
            assert_eq!(r[0].from, None);
            assert_eq!(r.last().unwrap().to, None);
            for w in r.windows(2) {
                assert_eq!(w[0].to, w[1].from, "ranges must meet exactly");
            }
            assert!(r.len() as i64 <= (jobs as i64 * 3).max(2));
        }
    }

    #[test]
    fn copy_statements_quote_names_and_skip_generated_columns() {
        let col = |n: &str, generated: bool| ColumnDef {
            name: n.into(),
            type_sql: "int".into(),
            type_oid: 23,
            not_null: false,
            generated: generated.then(|| "a + 1".into()),
        };
        let t = TableSchema {
            name: TableName::parse("public.\"T\"").unwrap(),
            oid: 1,
            columns: vec![col("a", false), col("b", true), col("C", false)],
            primary_key: vec![],
            replica_identity: 'd',
            indexes: vec![],
            estimated_rows: 0,
            pages: 0,
            partitioned: false,
        };
        let whole = PageRange {
            from: None,
            to: None,
        };
        assert_eq!(
            copy_out_sql(&t, whole, None, true),
            "COPY \"public\".\"T\" (\"a\", \"C\") TO STDOUT (FORMAT binary)"
        );
        assert_eq!(
            copy_out_sql(&t, PageRange { from: Some(10), to: None }, Some("a > 1"), false),
            "COPY (SELECT \"a\", \"C\" FROM \"public\".\"T\" WHERE ctid >= '(10,0)'::tid AND (a > 1)) TO STDOUT"
        );
        let parts = TableSchema {
            partitioned: true,
            ..t.clone()
        };
        assert_eq!(
            copy_out_sql(&parts, whole, None, true),
            "COPY (SELECT \"a\", \"C\" FROM \"public\".\"T\") TO STDOUT (FORMAT binary)"
        );
        assert_eq!(
            copy_in_sql(&TableName::parse("x.y").unwrap(), &t, true),
            "COPY \"x\".\"y\" (\"a\", \"C\") FROM STDIN (FORMAT binary)"
        );
    }
}
