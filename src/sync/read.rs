//! The source queries of a pass: which rows a strategy reads, in what order, and where the
//! next pass starts. Pure functions over the source catalog; every name is quoted and every
//! position is a quoted literal cast to its column's type.

use crate::config::Strategy;
use crate::model::schema::{ColumnDef, TableSchema};
use crate::model::sql::{quote_ident, quote_literal};

/// 2^32: xmin values are 32-bit transaction ids that wrap around.
const XID_SPACE: u64 = 1 << 32;

/// Where a pass reads from, decided before reading.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Since {
    /// Every row (a first pass, or a strategy without a position).
    All,
    /// `new_rows`: rows whose key is above this value.
    KeyAbove(String),
    /// `modified`: rows whose column is at or above this value (equal values are re-read:
    /// rows written later with the same timestamp must not be missed).
    ModifiedFrom(String),
    /// `xmin`: rows written by transactions at or after `horizon` and before `xmax`, both
    /// 64-bit transaction ids (epoch included).
    XminFrom { horizon: u64, xmax: u64 },
}

/// The column a strategy orders rows by and takes its next position from.
pub fn order_column<'a>(
    strategy: Strategy,
    table: &'a TableSchema,
    modified_column: Option<&'a str>,
) -> Option<&'a str> {
    match strategy {
        Strategy::NewRows => table.primary_key.first().map(String::as_str),
        Strategy::Modified => modified_column,
        _ => None,
    }
}

/// The column named `name` of `table`.
pub fn column<'a>(table: &'a TableSchema, name: &str) -> Option<&'a ColumnDef> {
    table.columns.iter().find(|c| c.name == name)
}

/// `SELECT` of every copied column (read as text by [`crate::source::postgres::rows`]), meeting `since` and the table's `filter`, ordered
/// by `order` (then the key), at most `limit` rows.
pub fn select_sql(
    table: &TableSchema,
    since: &Since,
    order: Option<&str>,
    filter: Option<&str>,
    limit: Option<u64>,
) -> String {
    let list: Vec<String> = table
        .copied_columns()
        .map(|c| quote_ident(&c.name))
        .collect();
    let mut conditions = Vec::new();
    let typed = |name: &str, value: &str| {
        let ty = column(table, name).map_or("text", |c| c.type_sql.as_str());
        format!("{}::{ty}", quote_literal(value))
    };
    match since {
        Since::All => {}
        Since::KeyAbove(v) => {
            let k = order.unwrap_or_default();
            conditions.push(format!("{} > {}", quote_ident(k), typed(k, v)));
        }
        Since::ModifiedFrom(v) => {
            let c = order.unwrap_or_default();
            conditions.push(format!("{} >= {}", quote_ident(c), typed(c, v)));
        }
        Since::XminFrom { horizon, xmax } => conditions.push(xmin_condition(*horizon, *xmax)),
    }
    if let Some(f) = filter {
        conditions.push(format!("({f})"));
    }
    let mut sql = format!("SELECT {} FROM {}", list.join(", "), table.name.quoted());
    if !conditions.is_empty() {
        sql.push_str(" WHERE ");
        sql.push_str(&conditions.join(" AND "));
    }
    // Qualified, so that the sort is by the table's column whatever the select list says.
    let qualified = |c: &str| format!("{}.{}", table.name.quoted(), quote_ident(c));
    let mut by: Vec<String> = order.map(qualified).into_iter().collect();
    by.extend(
        table
            .primary_key
            .iter()
            .filter(|k| Some(k.as_str()) != order)
            .map(|k| qualified(k)),
    );
    // Order matters only for a position taken from the last row, or for a capped pass.
    if !by.is_empty() && (order.is_some() || limit.is_some()) {
        sql.push_str(" ORDER BY ");
        sql.push_str(&by.join(", "));
    }
    if let Some(n) = limit {
        sql.push_str(&format!(" LIMIT {n}"));
    }
    sql
}

/// Rows whose `xmin` lies in `[horizon, xmax)` modulo 2^32.
///
/// `xmin` is 32 bits and wraps around; the horizon and `xmax` are 64-bit (epoch-qualified).
/// A row's distance from the horizon, counted forward modulo 2^32, is below `xmax - horizon`
/// exactly when it was written by a transaction the last pass could not see. Special xids
/// (0–2: invalid, bootstrap, frozen) are never "new". A frozen row keeps its original raw
/// xmin, which after a whole wraparound may fall in the window again: it is then re-sent,
/// which changes nothing. The caller makes sure `xmax - horizon < 2^31`.
pub fn xmin_condition(horizon: u64, xmax: u64) -> String {
    let base = horizon % XID_SPACE;
    let width = xmax.saturating_sub(horizon);
    format!(
        "(xmin::text::bigint >= 3 AND ((xmin::text::bigint - {base} + {XID_SPACE}) % {XID_SPACE}) < {width})"
    )
}

/// The greatest value of `column` among the rows the table's `filter` keeps, as text.
pub fn max_sql(table: &TableSchema, column: &str, filter: Option<&str>) -> String {
    let mut sql = format!(
        "SELECT max({})::text FROM {}",
        quote_ident(column),
        table.name.quoted()
    );
    if let Some(f) = filter {
        sql.push_str(&format!(" WHERE ({f})"));
    }
    sql
}

/// The current snapshot's xmin and xmax, 64-bit, as text (`txid_*` exist on every supported
/// version and work on a hot standby).
pub const SNAPSHOT_XIDS_SQL: &str = "SELECT txid_snapshot_xmin(txid_current_snapshot())::text, \
     txid_snapshot_xmax(txid_current_snapshot())::text";

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::schema::TableName;

    fn table() -> TableSchema {
        let col = |n: &str, t: &str| ColumnDef {
            name: n.into(),
            type_sql: t.into(),
            type_oid: 0,
            not_null: false,
            dims: 0,
            generated: None,
        };
        let mut gen = col("total", "integer");
        gen.generated = Some("a + 1".into());
        TableSchema {
            name: TableName::parse("public.\"Orders\"").unwrap(),
            oid: 0,
            columns: vec![
                col("id", "bigint"),
                col("updated_at", "timestamp with time zone"),
                gen,
            ],
            primary_key: vec!["id".into()],
            key_include: Vec::new(),
            replica_identity: 'd',
            indexes: vec![],
            estimated_rows: 0,
            pages: 0,
            partitioned: false,
            leaves: vec![],
        }
    }

    #[test]
    fn each_strategy_reads_from_its_position_with_the_filter() {
        let t = table();
        assert_eq!(
            select_sql(&t, &Since::All, None, None, None),
            "SELECT \"id\", \"updated_at\" FROM \"public\".\"Orders\""
        );
        assert_eq!(
            select_sql(
                &t,
                &Since::KeyAbove("41".into()),
                Some("id"),
                None,
                Some(10)
            ),
            "SELECT \"id\", \"updated_at\" FROM \"public\".\"Orders\" \
             WHERE \"id\" > '41'::bigint ORDER BY \"public\".\"Orders\".\"id\" LIMIT 10"
        );
        assert_eq!(
            select_sql(
                &t,
                &Since::ModifiedFrom("2024-01-01 00:00:00+00".into()),
                Some("updated_at"),
                Some("id % 2 = 0"),
                None
            ),
            "SELECT \"id\", \"updated_at\" FROM \"public\".\"Orders\" \
             WHERE \"updated_at\" >= '2024-01-01 00:00:00+00'::timestamp with time zone \
             AND (id % 2 = 0) ORDER BY \"public\".\"Orders\".\"updated_at\", \"public\".\"Orders\".\"id\""
        );
    }

    #[test]
    fn the_xmin_window_wraps_around() {
        // Horizon just below a wraparound: xids 2^32-5 .. 2^32+5 map to 4294967291..=4294967295
        // and 0..=5 (special ones excluded).
        let horizon = (1 << 32) + (1 << 32) - 5;
        let sql = xmin_condition(horizon, horizon + 10);
        assert!(sql.contains("- 4294967291 + 4294967296"), "{sql}");
        assert!(sql.ends_with("< 10)"), "{sql}");
        let inside = |xmin: u64| xmin >= 3 && ((xmin + XID_SPACE - 4294967291) % XID_SPACE) < 10;
        assert!(inside(4294967291) && inside(4294967295) && inside(3) && inside(4));
        assert!(!inside(4294967290) && !inside(2) && !inside(5));
    }
}
