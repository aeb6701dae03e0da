//! What to compare for one table pair, and the SQL each side runs.
//!
//! Both sides answer the same questions about a *key range* `[lo, hi)`: how many rows and what
//! hash, how those rows split into buckets, and what the rows are. Keys travel between the
//! servers as text and are cast back with each side's own column type, so a key column may be
//! `int4` on one side and `int8` on the other.
//!
//! **Ordering is the same on both servers**: collatable key columns are compared and sorted
//! with `COLLATE "C"` (byte order), because the two databases may have different default
//! collations and a range must select the same keys on each.

use tokio_postgres::Client;

use crate::error::{Error, Result};
use crate::model::schema::TableName;

/// A key value: the text form of each key column, in key order.
pub type Key = Vec<String>;

/// A row as compared: the text form of each compared column (`None` is SQL NULL).
pub type RowText = Vec<Option<String>>;

/// A half-open key range; `None` bounds are unbounded.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeyRange {
    pub lo: Option<Key>,
    pub hi: Option<Key>,
}

/// One column as the catalog describes it.
#[derive(Debug, Clone)]
pub(super) struct Column {
    pub name: String,
    /// `format_type`, schema-qualified where needed.
    pub type_sql: String,
    pub collatable: bool,
    pub not_null: bool,
}

/// A table's columns and primary key.
#[derive(Debug, Clone)]
pub(super) struct TableInfo {
    pub columns: Vec<Column>,
    pub primary_key: Vec<String>,
}

/// Read a table's columns and primary key; `None` when it does not exist.
pub(super) async fn read_table(client: &Client, table: &TableName) -> Result<Option<TableInfo>> {
    let ctx = || format!("reading the catalog for {table}");
    // An empty search_path makes format_type qualify every non-pg_catalog type name.
    crate::pg::qualify_names(client).await?;
    let columns = client
        .query(
            "SELECT a.attname, format_type(a.atttypid, a.atttypmod), a.attcollation <> 0, a.attnotnull
               FROM pg_attribute a
               JOIN pg_class c ON c.oid = a.attrelid
               JOIN pg_namespace n ON n.oid = c.relnamespace
              WHERE n.nspname = $1 AND c.relname = $2 AND c.relkind IN ('r', 'p', 'v', 'm', 'f')
                AND a.attnum > 0 AND NOT a.attisdropped
              ORDER BY a.attnum",
            &[&table.schema, &table.name],
        )
        .await
        .map_err(Error::pg(ctx()))?;
    let primary_key = client
        .query(
            "SELECT a.attname
               FROM pg_index i
               JOIN pg_class c ON c.oid = i.indrelid
               JOIN pg_namespace n ON n.oid = c.relnamespace
               CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, ord)
               JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum
              WHERE n.nspname = $1 AND c.relname = $2 AND i.indisprimary AND k.ord <= i.indnkeyatts
              ORDER BY k.ord",
            &[&table.schema, &table.name],
        )
        .await
        .map_err(Error::pg(ctx()))?;
    client
        .batch_execute("RESET search_path")
        .await
        .map_err(Error::pg(ctx()))?;
    if columns.is_empty() {
        return Ok(None);
    }
    Ok(Some(TableInfo {
        columns: columns
            .into_iter()
            .map(|r| Column {
                name: r.get(0),
                type_sql: r.get(1),
                collatable: r.get(2),
                not_null: r.get(3),
            })
            .collect(),
        primary_key: primary_key.into_iter().map(|r| r.get(0)).collect(),
    }))
}

/// How one side reads its table: quoted names and types, ready to splice into SQL.
#[derive(Debug, Clone)]
pub(super) struct Side {
    /// `"schema"."table"`.
    pub table: String,
    /// Quoted compared columns, in the order shared by both sides.
    pub columns: Vec<String>,
    /// Per key column: quoted name, its type on this side, and whether it sorts by collation.
    pub key: Vec<(String, String, bool)>,
    /// A condition rows must meet to be compared (the source side's `where` filter).
    pub filter: Option<String>,
}

/// SQL text and its text parameters.
pub(super) struct Query {
    pub sql: String,
    pub params: Vec<String>,
}

impl Side {
    /// `"a" COLLATE "C", "b"`: the key order both sides share.
    fn key_order(&self) -> String {
        self.key
            .iter()
            .map(|(name, _, collatable)| key_column(name, *collatable))
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// The key as one comparable value: the column, or a row of the columns.
    fn key_expr(&self) -> String {
        if self.key.len() == 1 {
            self.key_order()
        } else {
            format!("ROW({})", self.key_order())
        }
    }

    /// Whether the key is one integer column: ranges are then cut by key value, with no
    /// sorting and no dependence on how either side orders anything.
    pub fn integer_key(&self) -> bool {
        matches!(self.key.as_slice(), [(_, t, _)] if matches!(t.as_str(), "smallint" | "integer" | "bigint"))
    }

    /// A key value as parameters, each cast from text to this side's column type (bigint for
    /// integer keys, whose range ends may lie one past the type's largest value).
    fn key_value(&self, key: &Key, params: &mut Vec<String>) -> String {
        let integer = self.integer_key();
        let casts: Vec<String> = self
            .key
            .iter()
            .zip(key)
            .map(|((_, type_sql, _), value)| {
                let type_sql = if integer { "bigint" } else { type_sql.as_str() };
                params.push(value.clone());
                // A sub-select runs the cast once per query: input functions of some types
                // (timestamptz, arrays) are only stable, and would otherwise run per row.
                format!("(SELECT ${}::text::{type_sql})", params.len())
            })
            .collect();
        if casts.len() == 1 {
            casts.into_iter().next().unwrap_or_default()
        } else {
            format!("ROW({})", casts.join(", "))
        }
    }

    /// `WHERE` clause selecting `range` (and the filter), adding its bounds to `params`.
    fn range_where(&self, range: &KeyRange, params: &mut Vec<String>) -> String {
        let mut conds = Vec::new();
        if let Some(f) = &self.filter {
            conds.push(format!("({f})"));
        }
        if let Some(lo) = &range.lo {
            conds.push(format!(
                "{} >= {}",
                self.key_expr(),
                self.key_value(lo, params)
            ));
        }
        if let Some(hi) = &range.hi {
            conds.push(format!(
                "{} < {}",
                self.key_expr(),
                self.key_value(hi, params)
            ));
        }
        if conds.is_empty() {
            String::new()
        } else {
            format!(" WHERE {}", conds.join(" AND "))
        }
    }

    /// A 64-bit hash of the row's text form, summed per range: order does not matter, so a
    /// range hashes without sorting, and the sum (a numeric) never overflows. hashtextextended
    /// is the hash behind hash partitioning: stable across versions, 3× cheaper than md5. (On
    /// servers of different endianness every hash differs: still correct, but slow.)
    fn row_hash(&self) -> String {
        format!(
            "hashtextextended(ROW({})::text, 0)",
            self.columns.join(", ")
        )
    }

    /// Row count and hash sum of a range: `(int8, text)`.
    pub fn hash(&self, range: &KeyRange) -> Query {
        let mut params = Vec::new();
        let sql = format!(
            "SELECT count(*), coalesce(sum({}), 0)::text FROM {}{}",
            self.row_hash(),
            self.table,
            self.range_where(range, &mut params)
        );
        Query { sql, params }
    }

    /// The keys that cut a range into buckets of `step` consecutive rows: the key of every
    /// `step`-th row after the first. Reads only key columns, in key order (often an
    /// index-only scan).
    pub fn boundaries(&self, range: &KeyRange, step: i64) -> Query {
        let mut params = Vec::new();
        let key_texts: Vec<String> = (0..self.key.len())
            .map(|i| format!("{}::text AS k{i}", self.key[i].0))
            .collect();
        let names: Vec<String> = (0..self.key.len()).map(|i| format!("k{i}")).collect();
        let sql = format!(
            "SELECT {} FROM (SELECT row_number() OVER (ORDER BY {}) AS rn, {} FROM {}{}) s
              WHERE rn > 1 AND (rn - 1) % {step} = 0 ORDER BY rn",
            names.join(", "),
            self.key_order(),
            key_texts.join(", "),
            self.table,
            self.range_where(range, &mut params)
        );
        Query { sql, params }
    }

    /// Count and hash the rows of a range per bucket, the buckets starting at `bounds`
    /// (bucket 0 is everything below `bounds[0]`).
    pub fn classify(&self, range: &KeyRange, bounds: &[Key]) -> Query {
        let mut params = Vec::new();
        let whr = self.range_where(range, &mut params);
        if let [(_, type_sql, _)] = self.key.as_slice() {
            if !type_sql.ends_with(']') {
                // One key column: width_bucket binary-searches a sorted array of bounds, so a
                // range can be cut into hundreds of buckets at the cost of a few.
                params.push(text_array(bounds.iter().map(|b| b[0].as_str())));
                let sql = format!(
                    "SELECT width_bucket({}, (SELECT ${}::text::{type_sql}[])), count(*), coalesce(sum({}), 0)::text FROM {}{whr} GROUP BY 1",
                    self.key_expr(),
                    params.len(),
                    self.row_hash(),
                    self.table
                );
                return Query { sql, params };
            }
        }
        let mut case = String::from("CASE");
        for (i, b) in bounds.iter().enumerate() {
            case.push_str(&format!(
                " WHEN {} < {} THEN {i}",
                self.key_expr(),
                self.key_value(b, &mut params)
            ));
        }
        case.push_str(&format!(" ELSE {} END", bounds.len()));
        let sql = format!(
            "SELECT {case}, count(*), coalesce(sum({}), 0)::text FROM {}{whr} GROUP BY 1",
            self.row_hash(),
            self.table
        );
        Query { sql, params }
    }

    /// Smallest and largest key of an integer key, as `int8` (NULLs when there are no rows):
    /// two index endpoint lookups.
    pub fn key_extent(&self) -> Query {
        let mut params = Vec::new();
        let whr = self.range_where(&KeyRange::default(), &mut params);
        let k = &self.key[0].0;
        let sql = format!(
            "SELECT min({k})::int8, max({k})::int8 FROM {}{whr}",
            self.table
        );
        Query { sql, params }
    }

    /// Count and hash the rows of a range per bucket of `width` consecutive key values from
    /// `lo` (integer keys only).
    pub fn classify_by_value(&self, range: &KeyRange, lo: i64, width: i64) -> Query {
        let mut params = Vec::new();
        let whr = self.range_where(range, &mut params);
        params.push(lo.to_string());
        params.push(width.to_string());
        let n = params.len();
        let sql = format!(
            "SELECT (({}::int8 - (SELECT ${}::text::int8)) / (SELECT ${n}::text::int8))::int4, count(*), coalesce(sum({}), 0)::text FROM {}{whr} GROUP BY 1",
            self.key[0].0,
            n - 1,
            self.row_hash(),
            self.table
        );
        Query { sql, params }
    }

    /// Every compared column as text, for the rows of a range, in key order.
    pub fn fetch(&self, range: &KeyRange) -> Query {
        let mut params = Vec::new();
        let whr = self.range_where(range, &mut params);
        let sql = format!(
            "SELECT {} FROM {}{whr} ORDER BY {}",
            self.column_texts(),
            self.table,
            self.key_order()
        );
        Query { sql, params }
    }

    /// Every compared column as text, for the rows of several integer key ranges `[lo, hi)` at
    /// once (one query instead of one per leaf when many small ranges differ). One branch per
    /// range under UNION ALL, so each is an index range scan: ranges OR-ed in one WHERE can be
    /// planned as a scan of the whole table.
    pub fn fetch_int_ranges(&self, ranges: &[(i64, i64)]) -> Query {
        let key = self.key_expr();
        let filter = self
            .filter
            .as_ref()
            .map_or(String::new(), |f| format!(" AND ({f})"));
        let branches: Vec<String> = ranges
            .iter()
            .map(|(lo, hi)| {
                format!(
                    "(SELECT {} FROM {} WHERE {key} >= {lo} AND {key} < {hi}{filter} ORDER BY {})",
                    self.column_texts(),
                    self.table,
                    self.key_order()
                )
            })
            .collect();
        Query {
            sql: branches.join(" UNION ALL "),
            params: Vec::new(),
        }
    }

    /// Every compared column as text, for the rows with the given keys (one text array
    /// parameter per key column).
    pub fn fetch_keys(&self, keys: &[Key]) -> Query {
        let n = self.key.len();
        let params: Vec<String> = (0..n)
            .map(|i| text_array(keys.iter().map(|k| k[i].as_str())))
            .collect();
        let unnest_args: Vec<String> = (1..=n).map(|i| format!("${i}::text::text[]")).collect();
        let cols: Vec<String> = (0..n).map(|i| format!("u{i}")).collect();
        let casts: Vec<String> = self
            .key
            .iter()
            .enumerate()
            .map(|(i, (_, type_sql, _))| format!("u{i}::{type_sql}"))
            .collect();
        let key_cols: Vec<&str> = self.key.iter().map(|(name, _, _)| name.as_str()).collect();
        let lhs = if n == 1 {
            key_cols[0].to_owned()
        } else {
            format!("ROW({})", key_cols.join(", "))
        };
        let mut sql = format!(
            "SELECT {} FROM {} WHERE {lhs} IN (SELECT {} FROM unnest({}) AS u({}))",
            self.column_texts(),
            self.table,
            casts.join(", "),
            unnest_args.join(", "),
            cols.join(", ")
        );
        if let Some(f) = &self.filter {
            sql.push_str(&format!(" AND ({f})"));
        }
        Query { sql, params }
    }

    fn column_texts(&self) -> String {
        self.columns
            .iter()
            .map(|c| format!("{c}::text"))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

fn key_column(quoted: &str, collatable: bool) -> String {
    if collatable {
        format!("{quoted} COLLATE \"C\"")
    } else {
        quoted.to_owned()
    }
}

/// A Postgres array literal of text elements, every element quoted.
fn text_array<'a>(items: impl Iterator<Item = &'a str>) -> String {
    let mut out = String::from("{");
    for (i, item) in items.enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push('"');
        for ch in item.chars() {
            if ch == '"' || ch == '\\' {
                out.push('\\');
            }
            out.push(ch);
        }
        out.push('"');
    }
    out.push('}');
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::sql::quote_ident;

    fn side(key: Vec<(&str, &str, bool)>) -> Side {
        Side {
            table: "\"public\".\"t\"".into(),
            columns: vec!["\"id\"".into(), "\"v\"".into()],
            key: key
                .into_iter()
                .map(|(n, t, c)| (quote_ident(n), t.into(), c))
                .collect(),
            filter: None,
        }
    }

    #[test]
    fn bounds_are_text_parameters_cast_to_the_sides_type() {
        let s = side(vec![("id", "bigint", false)]);
        let q = s.hash(&KeyRange {
            lo: Some(vec!["10".into()]),
            hi: Some(vec!["20".into()]),
        });
        assert!(
            q.sql.ends_with(
                "WHERE \"id\" >= (SELECT $1::text::bigint) AND \"id\" < (SELECT $2::text::bigint)"
            ),
            "{}",
            q.sql
        );
        assert_eq!(q.params, vec!["10", "20"]);
    }

    #[test]
    fn composite_keys_compare_as_rows_and_text_sorts_bytewise() {
        let s = side(vec![("region", "text", true), ("n", "integer", false)]);
        let q = s.fetch(&KeyRange {
            lo: Some(vec!["eu".into(), "3".into()]),
            hi: None,
        });
        assert!(q.sql.contains(
            "ROW(\"region\" COLLATE \"C\", \"n\") >= ROW((SELECT $1::text::text), (SELECT $2::text::integer))"
        ));
        assert!(q.sql.ends_with("ORDER BY \"region\" COLLATE \"C\", \"n\""));
    }

    #[test]
    fn unbounded_range_has_no_where_clause_but_keeps_the_filter() {
        let mut s = side(vec![("id", "integer", false)]);
        assert!(!s.hash(&KeyRange::default()).sql.contains("WHERE"));
        s.filter = Some("id > 5".into());
        assert!(s
            .hash(&KeyRange::default())
            .sql
            .ends_with(" WHERE (id > 5)"));
    }

    #[test]
    fn one_column_keys_classify_by_binary_search_over_an_array_of_bounds() {
        let s = side(vec![("name", "text", true)]);
        let q = s.classify(
            &KeyRange::default(),
            &[vec!["b".into()], vec!["x\"y".into()]],
        );
        assert!(q.sql.starts_with(
            "SELECT width_bucket(\"name\" COLLATE \"C\", (SELECT $1::text::text[])), count(*)"
        ));
        assert_eq!(q.params, vec![r#"{"b","x\"y"}"#]);
    }

    #[test]
    fn composite_keys_classify_by_a_chain_of_row_comparisons() {
        let s = side(vec![("id", "integer", false), ("n", "integer", false)]);
        let q = s.classify(
            &KeyRange::default(),
            &[vec!["5".into(), "1".into()], vec!["9".into(), "2".into()]],
        );
        assert!(q.sql.contains(
            "CASE WHEN ROW(\"id\", \"n\") < ROW((SELECT $1::text::integer), (SELECT $2::text::integer)) THEN 0 WHEN ROW(\"id\", \"n\") < ROW((SELECT $3::text::integer), (SELECT $4::text::integer)) THEN 1 ELSE 2 END"
        ), "{}", q.sql);
    }

    #[test]
    fn key_arrays_quote_every_element() {
        assert_eq!(
            text_array(["a", "b\"c", "d\\e", "", "NULL"].into_iter()),
            r#"{"a","b\"c","d\\e","","NULL"}"#
        );
    }
}
