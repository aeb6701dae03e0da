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

use crate::config::TableName;
use crate::error::{Error, Result};

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
    client
        .batch_execute("SET search_path = ''")
        .await
        .map_err(Error::pg(ctx()))?;
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
              WHERE n.nspname = $1 AND c.relname = $2 AND i.indisprimary
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

    /// A key value as parameters, each cast from text to this side's column type.
    fn key_value(&self, key: &Key, params: &mut Vec<String>) -> String {
        let casts: Vec<String> = self
            .key
            .iter()
            .zip(key)
            .map(|((_, type_sql, _), value)| {
                params.push(value.clone());
                format!("${}::text::{type_sql}", params.len())
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

    /// A 60-bit hash of the row's text form, summed per range: order does not matter, so a
    /// range hashes without sorting, and the sum (a numeric) never overflows.
    fn row_hash(&self) -> String {
        format!(
            "('x' || substr(md5(ROW({})::text), 1, 15))::bit(60)::int8",
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

    /// Split a range into buckets of `step` consecutive rows: per bucket its number, count,
    /// hash sum and first key (text columns). One ordered scan.
    pub fn buckets(&self, range: &KeyRange, step: i64) -> Query {
        let mut params = Vec::new();
        let key_texts: Vec<String> = (0..self.key.len())
            .map(|i| format!("{}::text AS k{i}", self.key[i].0))
            .collect();
        let firsts: Vec<String> = (0..self.key.len())
            .map(|i| format!("max(CASE WHEN (rn - 1) % {step} = 0 THEN k{i} END)"))
            .collect();
        let sql = format!(
            "SELECT (rn - 1) / {step}, count(*), coalesce(sum(h), 0)::text, {}
               FROM (SELECT row_number() OVER (ORDER BY {}) AS rn, {}, {} AS h FROM {}{}) s
              GROUP BY 1 ORDER BY 1",
            firsts.join(", "),
            self.key_order(),
            key_texts.join(", "),
            self.row_hash(),
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

/// `"name"`, safe to splice into SQL.
pub(super) fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

#[cfg(test)]
mod tests {
    use super::*;

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
            q.sql
                .ends_with("WHERE \"id\" >= $1::text::bigint AND \"id\" < $2::text::bigint"),
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
            "ROW(\"region\" COLLATE \"C\", \"n\") >= ROW($1::text::text, $2::text::integer)"
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
    fn classify_numbers_buckets_from_the_bounds() {
        let s = side(vec![("id", "integer", false)]);
        let q = s.classify(&KeyRange::default(), &[vec!["5".into()], vec!["9".into()]]);
        assert!(q.sql.contains(
            "CASE WHEN \"id\" < $1::text::integer THEN 0 WHEN \"id\" < $2::text::integer THEN 1 ELSE 2 END"
        ));
    }

    #[test]
    fn key_arrays_quote_every_element() {
        assert_eq!(
            text_array(["a", "b\"c", "d\\e", "", "NULL"].into_iter()),
            r#"{"a","b\"c","d\\e","","NULL"}"#
        );
    }
}
