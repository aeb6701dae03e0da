//! Changes to a table without a key: rows are matched on all their values, and one row of
//! several equal ones is changed at a time (`rowid`), inserts in runs through the Appender.

use duckdb::{params_from_iter, Connection};

use super::apply::{append, stage, value};
use super::types::cast_expr;
use crate::decode::Datum;
use crate::error::{Error, Result};
use crate::model::change::{keyless_steps, KeylessStep, RowOp, TableMap};
use crate::model::sql::quote_ident;

/// Write a keyless table's changes in their order; `dest` is its qualified name.
pub(super) fn write(c: &Connection, t: &TableMap, dest: &str, ops: &[RowOp]) -> Result<()> {
    let ctx = || format!("applying changes to {}", t.dest);
    let n = t.columns.len();
    for step in keyless_steps(ops) {
        match step {
            KeylessStep::Inserts(rows) => {
                let staged = rows
                    .iter()
                    .map(|r| (0..n).map(|i| value(t, i, &r[i])).collect())
                    .collect::<Result<Vec<Vec<Option<String>>>>>()?;
                let stage = stage(c, n).map_err(Error::duck(ctx()))?;
                append(c, &stage, &staged).map_err(Error::duck(ctx()))?;
                let cols: Vec<String> = t.columns.iter().map(|c| quote_ident(&c.name)).collect();
                let casts: Vec<String> = t
                    .columns
                    .iter()
                    .enumerate()
                    .map(|(i, col)| cast_expr(&col.dest_type, &format!("c{i}")))
                    .collect();
                c.execute_batch(&format!(
                    "INSERT INTO {} ({}) SELECT {} FROM temp.main.{stage}",
                    dest,
                    cols.join(", "),
                    casts.join(", ")
                ))
                .map_err(Error::duck(ctx()))?;
            }
            KeylessStep::Delete(old) => {
                let values = (0..n)
                    .map(|i| value(t, i, &old[i]))
                    .collect::<Result<Vec<_>>>()?;
                let sql = format!(
                    "DELETE FROM {d} WHERE rowid = (SELECT rowid FROM {d} WHERE {m} LIMIT 1)",
                    d = dest,
                    m = all_match(t)
                );
                c.execute(&sql, params_from_iter(values.iter()))
                    .map_err(Error::duck(ctx()))?;
            }
            KeylessStep::Update { old, new } => {
                let old = old.ok_or_else(|| crate::destination::no_old_row(t))?;
                let present: Vec<usize> = (0..n)
                    .filter(|&i| new[i] != Datum::UnchangedToast)
                    .collect();
                if present.is_empty() {
                    continue;
                }
                let sets: Vec<String> = present
                    .iter()
                    .map(|&i| {
                        let col = &t.columns[i];
                        format!(
                            "{} = {}",
                            quote_ident(&col.name),
                            cast_expr(&col.dest_type, "?")
                        )
                    })
                    .collect();
                let values = present
                    .iter()
                    .map(|&i| value(t, i, &new[i]))
                    .chain((0..n).map(|i| value(t, i, &old[i])))
                    .collect::<Result<Vec<_>>>()?;
                let sql = format!(
                    "UPDATE {d} SET {s} WHERE rowid = (SELECT rowid FROM {d} WHERE {m} LIMIT 1)",
                    d = dest,
                    s = sets.join(", "),
                    m = all_match(t)
                );
                c.execute(&sql, params_from_iter(values.iter()))
                    .map_err(Error::duck(ctx()))?;
            }
        }
    }
    Ok(())
}

/// Every column of a keyless table's row equal to the given old row by exact representation:
/// `CAST("a" AS VARCHAR) IS NOT DISTINCT FROM CAST(CAST(? AS t) AS VARCHAR) AND …`. Not by `=`,
/// which calls `-0.0` and `0.0` (or two NaNs) the same, so an update or delete could hit the
/// other duplicate.
fn all_match(t: &TableMap) -> String {
    t.columns
        .iter()
        .map(|c| {
            format!(
                "CAST({} AS VARCHAR) IS NOT DISTINCT FROM CAST({} AS VARCHAR)",
                quote_ident(&c.name),
                cast_expr(&c.dest_type, "?")
            )
        })
        .collect::<Vec<_>>()
        .join(" AND ")
}
