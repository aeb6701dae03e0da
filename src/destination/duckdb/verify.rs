//! `cdc verify` against a DuckDB file: the comparison runs inside DuckDB.
//!
//! DuckDB cannot compute Postgres' `hashtextextended`, so the range-hash descent that verify
//! runs on two Postgres servers does not apply. Instead the source's rows are read once and
//! loaded exactly as the snapshot loads them (`copy_in::CopyIn`) into a temporary table of the
//! destination's column types, and one full join finds the rows missing from the destination, the
//! rows that differ (`IS DISTINCT FROM` on typed values: an equal value is equal whatever its
//! text), and the extra ones. Both sides' values are reported as DuckDB prints them.
//!
//! The file is opened read-only, and held for the whole comparison of a table (its temporary
//! table lives in that connection): a `cdc run` writing to the file waits meanwhile. Memory
//! stays bounded: rows are loaded in blocks, and DuckDB spills a large temporary table to disk.

use std::path::Path;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use duckdb::params;

use super::copy_in::{self, CopyIn};
use super::handle::{blocking, Handle};
use crate::conninfo::ConnInfo;
use crate::destination::whole::{CompareSpec, Comparison, DestTable, Texts, WholeLook};
use crate::destination::CopyFormat;
use crate::error::{Error, Result};
use crate::model::schema::TableName;
use crate::model::sql::quote_ident;
use crate::source::postgres::copy_out::CopySource;

/// The column each side of the comparison's join adds to mark its rows (a name no table
/// column is likely to have, quoted).
const HERE: &str = "\"cdc: row here\"";

/// A DuckDB file opened for comparisons.
pub struct DuckDbReader {
    handle: Arc<Handle>,
}

impl DuckDbReader {
    pub fn open(path: &Path) -> Result<Self> {
        Ok(DuckDbReader {
            handle: Handle::shared(path, true)?,
        })
    }
}

#[async_trait::async_trait]
impl WholeLook for DuckDbReader {
    /// The destination table, or `None` when it does not exist.
    async fn table(&self, table: &TableName) -> Result<Option<DestTable>> {
        let (schema, name) = (table.schema.clone(), table.name.clone());
        self.handle
            .run(format!("reading the columns of {table}"), move |c| {
                let mut stmt = c.prepare(
                    "SELECT column_name, data_type, NOT is_nullable FROM duckdb_columns()
                      WHERE database_name = current_database() AND schema_name = ? AND table_name = ?
                      ORDER BY column_index",
                )?;
                let columns = stmt
                    .query_map(params![schema, name], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?
                    .collect::<duckdb::Result<Vec<(String, String, bool)>>>()?;
                if columns.is_empty() {
                    return Ok(None);
                }
                let mut stmt = c.prepare(
                    "SELECT unnest(constraint_column_names) FROM duckdb_constraints()
                      WHERE database_name = current_database() AND schema_name = ? AND table_name = ?
                        AND constraint_type = 'PRIMARY KEY'",
                )?;
                let primary_key = stmt
                    .query_map(params![schema, name], |r| r.get(0))?
                    .collect::<duckdb::Result<Vec<String>>>()?;
                Ok(Some(DestTable {
                    columns,
                    primary_key,
                }))
            })
            .await
    }

    /// Load the source's rows and compare them with the destination table's.
    async fn compare(
        &self,
        source: &ConnInfo,
        spec: &CompareSpec<'_>,
        types: &[String],
    ) -> Result<Comparison> {
        // A connection of its own: the temporary table lives in it.
        let (conn, _pin) = self.handle.connection().await?;
        let (conn, source_rows) = load_source(conn, source, spec, types).await?;
        let cols: Vec<String> = spec.columns.iter().map(|c| quote_ident(c)).collect();

        let dest = self.handle.qualified(spec.destination);
        let n = spec.columns.len();
        let source_view: Vec<String> = (0..n).map(|i| format!("c{i} AS {}", cols[i])).collect();
        // Each side marks its rows, so a row the join found on one side only is told apart
        // from a row whose key is NULL (a `--key` the destination lets be NULL).
        let s = format!(
            "(SELECT {}, true AS {HERE} FROM temp.main.cdc_verify_source)",
            source_view.join(", ")
        );
        let on: Vec<String> = spec
            .key
            .iter()
            .map(|k| {
                let k = quote_ident(k);
                format!("s.{k} = d.{k}")
            })
            .collect();
        let on = on.join(" AND ");
        let order: Vec<String> = spec.key.iter().map(|k| quote_ident(k)).collect();
        let texts = |alias: &str| -> Vec<String> {
            cols.iter()
                .map(|c| format!("{alias}.{c}::VARCHAR"))
                .collect()
        };
        let differs: Vec<String> = cols
            .iter()
            .map(|c| format!("s.{c} IS DISTINCT FROM d.{c}"))
            .collect();
        let limit = spec.max_differences + 1;
        // One join finds all three kinds (one hash table over the 5M-row sides instead of
        // three); each kind keeps its first `limit` rows in key order. The kind is spelled out
        // where it is used, not named: a table column could have any name.
        let kind = format!("CASE WHEN d.{HERE} IS NULL THEN 0 WHEN s.{HERE} IS NULL THEN 2 ELSE 1 END");
        let by_key: Vec<String> = order
            .iter()
            .map(|k| format!("coalesce(s.{k}, d.{k})"))
            .collect();
        let differences_sql = format!(
            "SELECT {kind}, {}, {} FROM {s} AS s \
              FULL JOIN (SELECT *, true AS {HERE} FROM {dest}) AS d ON {on} \
              WHERE s.{HERE} IS NULL OR d.{HERE} IS NULL OR {} \
              QUALIFY row_number() OVER (PARTITION BY {kind} ORDER BY {}) <= {limit} \
              ORDER BY {kind}, {}",
            texts("s").join(", "),
            texts("d").join(", "),
            differs.join(" OR "),
            by_key.join(", "),
            by_key.join(", ")
        );
        let count_sql = format!("SELECT count(*) FROM {dest}");
        let max = spec.max_differences;
        let what = format!("comparing {} with {}", spec.source, spec.destination);
        blocking(move || {
            let destination_rows: i64 = conn.query_row(&count_sql, [], |r| r.get(0))?;
            let (mut missing, mut changed, mut extra) = (Vec::new(), Vec::new(), Vec::new());
            let mut stmt = conn.prepare(&differences_sql)?;
            let mut rows = stmt.query([])?;
            while let Some(r) = rows.next()? {
                let kind: i32 = r.get(0)?;
                let texts = |from: usize, width: usize| -> duckdb::Result<Texts> {
                    (from..from + width).map(|i| r.get::<_, Option<String>>(i)).collect()
                };
                match kind {
                    0 => missing.push(texts(1, n)?),
                    2 => extra.push(texts(1 + n, n)?),
                    _ => changed.push(texts(1, 2 * n)?),
                }
            }
            Ok(Comparison::of(
                source_rows,
                destination_rows,
                missing,
                changed,
                extra,
                n,
                2,
                max,
            ))
        })
        .await?
        .map_err(Error::duck(what))
    }
}

/// The source's rows of the compared columns copied (under one snapshot) into a temporary
/// table of `conn`; the connection back, and the rows copied.
async fn load_source(
    conn: duckdb::Connection,
    source: &ConnInfo,
    spec: &CompareSpec<'_>,
    types: &[String],
) -> Result<(duckdb::Connection, i64)> {
    let typed: Vec<String> = types
        .iter()
        .enumerate()
        .map(|(i, t)| format!("c{i} {t}"))
        .collect();
    conn.execute_batch(&format!(
        "CREATE OR REPLACE TEMP TABLE cdc_verify_source ({})",
        typed.join(", ")
    ))
    .map_err(Error::duck("preparing the comparison"))?;

    let cols: Vec<String> = spec.columns.iter().map(|c| quote_ident(c)).collect();
    let filter = spec
        .source_filter
        .map_or(String::new(), |f| format!(" WHERE ({f})"));
    let format = match copy_in::format(types) {
        CopyFormat::Csv => " (FORMAT csv)",
        _ => "",
    };
    let copy = format!(
        "COPY (SELECT {} FROM {}{filter}) TO STDOUT{format}",
        cols.join(", "),
        spec.source.quoted()
    );
    let mut src = CopySource::connect(source).await?;
    src.execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        .await?;
    let names: Vec<String> = (0..types.len()).map(|i| format!("c{i}")).collect();
    let mut copy_in = CopyIn::new(conn);
    let source_rows = copy_in
        .load(
            &mut src,
            &copy,
            "temp.main.cdc_verify_source",
            &names,
            types,
            &AtomicU64::new(0),
        )
        .await? as i64;
    src.execute("COMMIT").await?;
    src.close().await;
    Ok((copy_in.into_connection(), source_rows))
}
