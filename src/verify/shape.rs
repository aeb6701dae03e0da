//! What a comparison compares: the key rows are matched by and the columns both sides share
//! (`Shape`), and the refusal of keys that are NULL on a side (no key range selects them).

use tokio_postgres::Client;

use super::plan::{Side, TableInfo};
use super::TablePair;
use crate::error::{Error, Result};
use crate::model::schema::TableName;
use crate::model::sql::quote_ident;

/// The key and the columns both sides share.
pub(super) struct Shape {
    pub(super) key: Vec<String>,
    pub(super) columns: Vec<String>,
    pub(super) key_positions: Vec<usize>,
    pub(super) only_in_source: Vec<String>,
    pub(super) only_in_destination: Vec<String>,
}

impl Shape {
    pub(super) fn of(
        pair: &TablePair,
        si: &TableInfo,
        di: &TableInfo,
        key_override: &[String],
        compare_types: bool,
    ) -> Result<Shape> {
        let key = if !key_override.is_empty() {
            key_override.to_vec()
        } else if !si.primary_key.is_empty() {
            si.primary_key.clone()
        } else if !di.primary_key.is_empty() {
            di.primary_key.clone()
        } else {
            return Err(Error::definite(format!(
                "{} has no primary key on either side: pass --key with the columns that identify a row",
                pair.source
            )));
        };
        let has = |info: &TableInfo, name: &str| info.columns.iter().any(|c| c.name == name);
        let columns: Vec<String> = si
            .columns
            .iter()
            .filter(|c| has(di, &c.name))
            .map(|c| c.name.clone())
            .collect();
        for k in &key {
            for (info, side, table) in [
                (si, "source", &pair.source),
                (di, "destination", &pair.destination),
            ] {
                if !has(info, k) {
                    return Err(Error::definite(format!(
                        "key column {k:?} does not exist in the {side} table {table}"
                    )));
                }
            }
        }
        let key_positions = key
            .iter()
            .map(|k| columns.iter().position(|c| c == k).unwrap_or_default())
            .collect();
        // Types of two Postgres databases can be compared by name; a DuckDB column's type
        // is always spelled differently (and its sort order is the typed one on both sides).
        for k in key.iter().filter(|_| compare_types) {
            let types: Vec<&str> = [si, di]
                .iter()
                .filter_map(|info| info.columns.iter().find(|c| &c.name == k))
                .map(|c| c.type_sql.as_str())
                .collect();
            if types.len() == 2 && types[0] != types[1] {
                tracing::warn!(table = %pair.source, column = %k, source_type = types[0], destination_type = types[1],
                    "key column types differ; ranges assume both types sort alike");
            }
        }
        Ok(Shape {
            only_in_source: si
                .columns
                .iter()
                .filter(|c| !has(di, &c.name))
                .map(|c| c.name.clone())
                .collect(),
            only_in_destination: di
                .columns
                .iter()
                .filter(|c| !has(si, &c.name))
                .map(|c| c.name.clone())
                .collect(),
            key,
            columns,
            key_positions,
        })
    }

    pub(super) fn side(&self, table: &TableName, info: &TableInfo, filter: Option<String>) -> Side {
        Side {
            table: table.quoted(),
            columns: self.columns.iter().map(|c| quote_ident(c)).collect(),
            key: self
                .key
                .iter()
                .filter_map(|k| info.columns.iter().find(|c| &c.name == k))
                .map(|c| (quote_ident(&c.name), c.type_sql.clone(), c.collatable))
                .collect(),
            filter,
        }
    }
}

/// Rows whose key is NULL cannot be matched (and no key range selects them): refuse to
/// compare rather than silently skip them. Only nullable key columns cost a query.
pub(super) async fn check_no_null_keys(
    client: &Client,
    side: &Side,
    info: &TableInfo,
    table: &TableName,
    label: &str,
) -> Result<()> {
    let nullable: Vec<&str> = side
        .key
        .iter()
        .filter(|(quoted, _, _)| {
            info.columns
                .iter()
                .any(|c| &quote_ident(&c.name) == quoted && !c.not_null)
        })
        .map(|(quoted, _, _)| quoted.as_str())
        .collect();
    if nullable.is_empty() {
        return Ok(());
    }
    let cond: Vec<String> = nullable.iter().map(|c| format!("{c} IS NULL")).collect();
    let sql = format!(
        "SELECT count(*) FROM {} WHERE {}",
        side.table,
        cond.join(" OR ")
    );
    let n: i64 = client
        .query_one(&sql, &[])
        .await
        .map_err(Error::pg(format!(
            "checking the key of {table} on the {label}"
        )))?
        .get(0);
    if n > 0 {
        return Err(Error::definite(format!(
            "{n} rows of {table} on the {label} have a NULL key column ({}): rows cannot be matched by it; choose NOT NULL columns with --key",
            nullable.join(", ")
        )));
    }
    Ok(())
}
