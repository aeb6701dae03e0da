//! Values of columns the source gained (or retyped) while streaming, for the rows it already had.
//!
//! `ALTER TABLE … ADD COLUMN … DEFAULT 0` stores the default as the column's "missing value";
//! a volatile default (`now()`, `gen_random_uuid()`) rewrites the table with a value per row.
//! Postgres publishes neither: the stream only shows rows changed afterwards. Likewise an
//! `ALTER COLUMN … TYPE … USING expr` converts every row on the source in a way the destination
//! cannot repeat from the old values. So when a Relation message brings a new column that has
//! a default (`atthasdef`, `atthasmissing`) or a column of a new type, the destination's rows
//! get the source's values, read now by key:
//!
//! ```text
//!  Relation (position P) ─► ALTER on the destination ─► SELECT key, new columns FROM source
//!     (the source as of now, T ≥ P) ─► updates of the new columns only, existing rows only
//! ```
//!
//! Why that converges: each update sets only the new columns (the others are "unchanged",
//! like TOAST values) and only on rows the destination has. Changes between P and T follow in
//! the stream, each carrying whole rows: a row updated since is rewritten by them, and ends as
//! the source has it; a row inserted since is not on the destination yet (the update finds
//! nothing) and arrives with its insert; a row deleted since is not read. Everything is written
//! in the open destination transaction, so the added column and its values commit together.

use tokio_postgres::Client;

use crate::decode::Datum;
use crate::error::{Error, Result};
use crate::model::change::{RowOp, TableMap};
use crate::model::sql::quote_ident;
use crate::source::postgres::rows::RowCursor;

/// Columns of `added` that existing rows of `map.source` hold values of (a default, a missing
/// value, or a generated expression); empty when a plain NULL column was added.
pub async fn columns_with_values(
    catalog: &Client,
    map: &TableMap,
    added: &[String],
) -> Result<Vec<String>> {
    Ok(catalog
        .query(
            "SELECT a.attname::text FROM pg_attribute a
              WHERE a.attrelid = to_regclass($1) AND a.attname = ANY($2) AND NOT a.attisdropped
                AND (a.atthasdef OR a.atthasmissing)",
            &[&map.source.quoted(), &added],
        )
        .await
        .map_err(Error::pg(format!(
            "reading the new columns of {}",
            map.source
        )))?
        .into_iter()
        .map(|r| r.get(0))
        .collect())
}

/// The query reading the key and `columns` of every source row (read as text by the cursor).
pub fn select_sql(map: &TableMap, columns: &[String]) -> String {
    let key = map.key.iter().map(|&k| map.columns[k].name.as_str());
    let list: Vec<String> = key
        .chain(columns.iter().map(String::as_str))
        .map(quote_ident)
        .collect();
    format!("SELECT {} FROM {}", list.join(", "), map.source.quoted())
}

/// A cursor over every source row's key and `columns` (in a transaction of the catalog
/// session), read a block at a time as updates of those columns only.
pub struct Reader {
    positions: Vec<usize>,
    width: usize,
    cursor: RowCursor,
    done: bool,
}

impl Reader {
    pub async fn open(catalog: &Client, map: &TableMap, columns: &[String]) -> Result<Self> {
        let positions: Vec<usize> = map
            .key
            .iter()
            .copied()
            .chain(
                columns
                    .iter()
                    .filter_map(|c| map.columns.iter().position(|m| &m.name == c)),
            )
            .collect();
        catalog
            .batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            .await
            .map_err(Error::pg(format!(
                "reading {} for its new columns",
                map.source
            )))?;
        let cursor = RowCursor::declare(catalog, "cdc_backfill", &select_sql(map, columns)).await?;
        Ok(Reader {
            positions,
            width: map.columns.len(),
            cursor,
            done: false,
        })
    }

    /// The next rows; empty at the end (the transaction is then closed).
    pub async fn next(&mut self, catalog: &Client) -> Result<Vec<RowOp>> {
        if self.done {
            return Ok(Vec::new());
        }
        let rows = self.cursor.next(catalog).await?;
        if rows.is_empty() {
            self.done = true;
            catalog
                .batch_execute("COMMIT")
                .await
                .map_err(Error::pg("reading rows for new columns"))?;
        }
        Ok(rows
            .into_iter()
            .map(|row| {
                let mut new = vec![Datum::UnchangedToast; self.width];
                for (value, &pos) in row.into_iter().zip(&self.positions) {
                    new[pos] = value;
                }
                RowOp::Update { old: None, new }
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::change::MappedColumn;
    use crate::model::schema::TableName;

    #[test]
    fn reads_the_key_and_the_new_columns_as_text() {
        let col = |n: &str| MappedColumn {
            name: n.into(),
            dest_type: "integer".into(),
        };
        let map = TableMap {
            relation_id: 1,
            source: TableName::parse("public.\"T\"").unwrap(),
            dest: TableName::parse("x.t").unwrap(),
            columns: vec![col("a"), col("id"), col("New")],
            key: vec![1],
            identity_key: false,
        };
        assert_eq!(
            select_sql(&map, &["New".into()]),
            "SELECT \"id\", \"New\" FROM \"public\".\"T\""
        );
    }
}
