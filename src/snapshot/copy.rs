//! Moving rows: `COPY ... TO STDOUT` on a source connection that imported the slot's
//! snapshot (read off the socket in chunks by `source::copy_out`), streamed straight into
//! `COPY ... FROM STDIN` on the destination. Nothing buffers more than a chunk (256 KiB) and the
//! driver's buffers, whatever the table size.
//!
//! Large tables are split into ranges of heap pages (`ctid >= '(a,0)' AND ctid < '(b,0)'`,
//! a TID range scan since Postgres 14), so several connections can copy one table at once. A
//! partitioned table is copied partition by partition (each split the same way), all into the
//! one destination table.

use crate::destination::CopyFormat;
use crate::model::schema::TableSchema;
use crate::model::sql::column_list;

/// Tables smaller than two of these (in 8 kB pages, i.e. 64 MiB) are copied in one piece.
pub const MIN_CHUNK_PAGES: i64 = 8192;

/// A range of heap pages; `None` bounds are open (the last range also catches pages the
/// statistics did not know about).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageRange {
    pub from: Option<i64>,
    pub to: Option<i64>,
}

/// One piece of a table's copy: a range of pages of the table, or of one of its partitions
/// (an index into `TableSchema::leaves`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Part {
    pub leaf: Option<usize>,
    pub pages: PageRange,
}

const WHOLE: PageRange = PageRange {
    from: None,
    to: None,
};

/// The pieces `table` is copied in by `jobs` parallel connections. A filtered copy takes one
/// statement per relation: the filter may match few rows in many pages.
pub fn plan_parts(
    table: &TableSchema,
    jobs: usize,
    tid_range_scans: bool,
    filtered: bool,
) -> Vec<Part> {
    let split = |pages: i64, heap: bool| {
        if filtered || !heap {
            vec![WHOLE]
        } else {
            plan_ranges(pages, jobs, tid_range_scans)
        }
    };
    if !table.partitioned {
        return split(table.pages, true)
            .into_iter()
            .map(|pages| Part { leaf: None, pages })
            .collect();
    }
    if table.leaves.is_empty() {
        // No partitions yet: one (empty) query of the root.
        return vec![Part {
            leaf: None,
            pages: WHOLE,
        }];
    }
    table
        .leaves
        .iter()
        .enumerate()
        .flat_map(|(i, leaf)| {
            split(leaf.pages, leaf.heap)
                .into_iter()
                .map(move |pages| Part {
                    leaf: Some(i),
                    pages,
                })
        })
        .collect()
}

/// Split `pages` into ranges for `jobs` parallel connections. One connection reads the table
/// whole: a TID range scan costs the source about a third more per row than a plain scan
/// (BENCHMARKS, bench/snapshot), which only parallel connections pay back.
pub fn plan_ranges(pages: i64, jobs: usize, tid_range_scans: bool) -> Vec<PageRange> {
    if !tid_range_scans || jobs < 2 || pages < 2 * MIN_CHUNK_PAGES {
        return vec![WHOLE];
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

/// The source side: a `COPY ... TO STDOUT` statement for `part` of `table`.
pub fn copy_out_sql(
    table: &TableSchema,
    part: Part,
    filter: Option<&str>,
    format: CopyFormat,
) -> String {
    let cols = column_list(table);
    let range = part.pages;
    let relation = match part.leaf.and_then(|i| table.leaves.get(i)) {
        Some(leaf) => format!("ONLY {}", leaf.name.quoted()),
        None => table.name.quoted(),
    };
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
    let format = match format {
        CopyFormat::Text => "",
        CopyFormat::Binary => " (FORMAT binary)",
        CopyFormat::Csv => " (FORMAT csv)",
    };
    // COPY reads a partitioned table, or a partition into its root's column order, only
    // through a query.
    if conds.is_empty() && !table.partitioned {
        format!("COPY {relation} ({cols}) TO STDOUT{format}")
    } else {
        let filter = if conds.is_empty() {
            String::new()
        } else {
            format!(" WHERE {}", conds.join(" AND "))
        };
        format!("COPY (SELECT {cols} FROM {relation}{filter}) TO STDOUT{format}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::schema::ColumnDef;
    use crate::model::schema::TableName;

    #[test]
    fn small_tables_old_servers_and_one_connection_copy_in_one_piece() {
        assert_eq!(plan_ranges(100, 4, true).len(), 1);
        assert_eq!(plan_ranges(1_000_000, 4, false).len(), 1);
        assert_eq!(plan_ranges(1_000_000, 1, true), vec![WHOLE]);
    }

    #[test]
    fn partitioned_tables_are_planned_partition_by_partition() {
        let leaf = |name: &str, pages: i64, heap: bool| crate::model::schema::Leaf {
            name: TableName::parse(name).unwrap(),
            pages,
            heap,
        };
        let t = TableSchema {
            name: TableName::parse("public.m").unwrap(),
            oid: 1,
            columns: vec![],
            primary_key: vec![],
            key_include: Vec::new(),
            replica_identity: 'd',
            indexes: vec![],
            estimated_rows: 0,
            pages: 400_000,
            partitioned: true,
            leaves: vec![
                leaf("public.big", 300_000, true),
                leaf("public.small", 10, true),
                leaf("public.remote", 90_000, false),
            ],
        };
        let parts = plan_parts(&t, 2, true, false);
        let per_leaf = |i| parts.iter().filter(|p| p.leaf == Some(i)).count();
        assert_eq!(
            (per_leaf(0), per_leaf(1), per_leaf(2)),
            (6, 1, 1),
            "a large partition is split, a small or foreign one is not: {parts:?}"
        );
        assert_eq!(
            plan_parts(&t, 2, true, true).len(),
            3,
            "a filter: one statement per partition"
        );
        let empty = TableSchema {
            leaves: vec![],
            ..t.clone()
        };
        assert_eq!(
            plan_parts(&empty, 2, true, false),
            [Part {
                leaf: None,
                pages: WHOLE
            }]
        );
        let plain = TableSchema {
            partitioned: false,
            leaves: vec![],
            ..t
        };
        assert!(plan_parts(&plain, 2, true, false)
            .iter()
            .all(|p| p.leaf.is_none()));
    }

    #[test]
    fn ranges_cover_every_page_without_overlap() {
        for (pages, jobs) in [
            (2 * MIN_CHUNK_PAGES, 2),
            (82_000, 2),
            (1_000_000, 8),
            (99_999, 3),
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
            dims: 0,
            generated: generated.then(|| "a + 1".into()),
        };
        let t = TableSchema {
            name: TableName::parse("public.\"T\"").unwrap(),
            oid: 1,
            columns: vec![col("a", false), col("b", true), col("C", false)],
            primary_key: vec![],
            key_include: Vec::new(),
            replica_identity: 'd',
            indexes: vec![],
            estimated_rows: 0,
            pages: 0,
            partitioned: false,
            leaves: vec![],
        };
        let whole = Part {
            leaf: None,
            pages: WHOLE,
        };
        assert_eq!(
            copy_out_sql(&t, whole, None, CopyFormat::Binary),
            "COPY \"public\".\"T\" (\"a\", \"C\") TO STDOUT (FORMAT binary)"
        );
        assert_eq!(
            copy_out_sql(
                &t,
                Part {
                    leaf: None,
                    pages: PageRange {
                        from: Some(10),
                        to: None
                    }
                },
                Some("a > 1"),
                CopyFormat::Text
            ),
            "COPY (SELECT \"a\", \"C\" FROM \"public\".\"T\" WHERE ctid >= '(10,0)'::tid AND (a > 1)) TO STDOUT"
        );
        let parts = TableSchema {
            partitioned: true,
            leaves: vec![crate::model::schema::Leaf {
                name: TableName::parse("p.\"T_1\"").unwrap(),
                pages: 10,
                heap: true,
            }],
            ..t.clone()
        };
        assert_eq!(
            copy_out_sql(&parts, whole, None, CopyFormat::Binary),
            "COPY (SELECT \"a\", \"C\" FROM \"public\".\"T\") TO STDOUT (FORMAT binary)"
        );
        assert_eq!(
            copy_out_sql(
                &parts,
                Part {
                    leaf: Some(0),
                    pages: WHOLE
                },
                None,
                CopyFormat::Csv
            ),
            "COPY (SELECT \"a\", \"C\" FROM ONLY \"p\".\"T_1\") TO STDOUT (FORMAT csv)"
        );
    }
}
