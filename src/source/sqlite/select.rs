//! The queries a pass reads a SQLite table with: its columns (SQLite names) with the entry's
//! filter, a lower bound for incremental strategies, an order and a limit; and how their
//! values are converted (to the new table's types, or to an existing destination table's).

use rusqlite::types::Value;

use super::catalog::SqliteTable;
use super::read::Query;
use super::types::Kind;
use crate::config::Strategy;
use crate::model::change::TableMap;
use crate::model::sql::quote_ident;

/// `SELECT` of the table's columns with the filter, a lower bound (`column op ?1`), an order
/// and a limit.
pub fn select_sql(
    table: &SqliteTable,
    filter: Option<&str>,
    since: Option<(&str, &str)>,
    order: &[String],
    limit: Option<u64>,
) -> String {
    let cols: Vec<String> = table
        .source_columns
        .iter()
        .map(|c| quote_ident(c))
        .collect();
    let mut sql = format!(
        "SELECT {} FROM {}.{}",
        cols.join(", "),
        quote_ident(&table.schema.name.schema),
        quote_ident(&table.schema.name.name)
    );
    let mut conditions = Vec::new();
    if let Some(f) = filter {
        conditions.push(format!("({f})"));
    }
    if let Some((col, op)) = since {
        conditions.push(format!("{} {op} ?1", quote_ident(col)));
    }
    if !conditions.is_empty() {
        sql.push_str(" WHERE ");
        sql.push_str(&conditions.join(" AND "));
    }
    if !order.is_empty() {
        let o: Vec<String> = order.iter().map(|c| quote_ident(c)).collect();
        sql.push_str(&format!(" ORDER BY {}", o.join(", ")));
    }
    if let Some(n) = limit {
        sql.push_str(&format!(" LIMIT {n}"));
    }
    sql
}

/// The SQLite names of the key columns.
pub fn source_key(table: &SqliteTable) -> Vec<String> {
    table
        .schema
        .primary_key
        .iter()
        .filter_map(|k| {
            let i = table.schema.columns.iter().position(|c| &c.name == k)?;
            Some(table.source_columns[i].clone())
        })
        .collect()
}

/// The SQLite name of the column a strategy orders by (`modified_column` may be given by
/// either name); the key for the others.
pub fn order_column(
    table: &SqliteTable,
    strategy: Strategy,
    modified: Option<&str>,
) -> Vec<String> {
    match (strategy, modified) {
        (Strategy::Modified, Some(m)) => {
            let i = table
                .source_columns
                .iter()
                .position(|c| c == m)
                .or_else(|| table.schema.columns.iter().position(|c| c.name == m));
            i.map(|i| vec![table.source_columns[i].clone()])
                .unwrap_or_default()
        }
        _ => source_key(table),
    }
}

/// The position of a single order column among the selected ones.
fn order_position(table: &SqliteTable, order: &[String]) -> Option<usize> {
    match order {
        [one] => table.source_columns.iter().position(|c| c == one),
        _ => None,
    }
}

/// `sql` over `table`, values converted to the column types of `map` (a destination table
/// that exists), as `kind_of` (the destination's) reads them.
pub fn into_map(
    table: &SqliteTable,
    map: &TableMap,
    kind_of: &dyn Fn(&str) -> Kind,
    sql: String,
    params: Vec<Value>,
    order: &[String],
) -> Query {
    Query {
        sql,
        params,
        kinds: map.columns.iter().map(|c| kind_of(&c.dest_type)).collect(),
        columns: map.columns.iter().map(|c| c.name.clone()).collect(),
        key: map.key.clone(),
        order: order_position(table, order),
        fingerprint_only: false,
    }
}

/// `sql` over `table`, values converted to the types a new table gets from its declarations.
pub fn into_new_table(table: &SqliteTable, sql: String, order: &[String]) -> Query {
    let names: Vec<String> = table
        .schema
        .columns
        .iter()
        .map(|c| c.name.clone())
        .collect();
    Query {
        sql,
        params: Vec::new(),
        kinds: table.kinds.clone(),
        key: table
            .schema
            .primary_key
            .iter()
            .filter_map(|k| names.iter().position(|n| n == k))
            .collect(),
        columns: names,
        order: order_position(table, order),
        fingerprint_only: false,
    }
}
