//! Postgres column types as ClickHouse column types.
//!
//! | Postgres | ClickHouse |
//! |---|---|
//! | smallint, integer, bigint | Int16, Int32, Int64 |
//! | real, double precision | Float32, Float64 |
//! | numeric(p,s), p ≤ 76 | Decimal(p, s) |
//! | numeric without precision | String (exact text: ClickHouse has no unbounded decimal) |
//! | boolean | Bool |
//! | date | Date32 (1900-01-01 … 2299-12-31; other dates are refused, never clamped) |
//! | timestamp, timestamptz | DateTime64(6, 'UTC') (same range rule) |
//! | uuid | UUID |
//! | text, varchar, char, json, jsonb, bytea, interval, time, other types | String (the Postgres text, which round-trips) |
//! | T[] | String (the Postgres array text) |
//!
//! Columns are `Nullable(…)` unless NOT NULL or part of the key (ClickHouse sorting keys
//! cannot be Nullable).

use crate::model::schema::ColumnDef;
use crate::model::kind::Kind;

/// The widest ClickHouse decimal.
pub const MAX_DECIMAL_PRECISION: u32 = 76;

/// The ClickHouse type of a source column.
pub fn clickhouse_type(col: &ColumnDef, in_key: bool) -> String {
    let base = col
        .type_sql
        .trim_end_matches("[]")
        .trim()
        .to_ascii_lowercase();
    // Arrays keep their Postgres text: ClickHouse arrays cannot be NULL, and their element
    // NULLs and nesting would need a second parser for no gain in exactness.
    let t = if col.dims > 0 || col.type_sql.ends_with("[]") {
        "String".to_owned()
    } else {
        scalar(&base)
    };
    if col.not_null || in_key {
        t
    } else {
        format!("Nullable({t})")
    }
}

fn scalar(base: &str) -> String {
    let (name, args) = match base.find('(') {
        Some(i) => (&base[..i], Some(base[i + 1..].trim_end_matches(')'))),
        None => (base, None),
    };
    match name.trim() {
        "smallint" => "Int16".into(),
        "integer" => "Int32".into(),
        "bigint" => "Int64".into(),
        "real" => "Float32".into(),
        "double precision" => "Float64".into(),
        "boolean" => "Bool".into(),
        "uuid" => "UUID".into(),
        "date" => "Date32".into(),
        "timestamp without time zone" | "timestamp with time zone" => "DateTime64(6, 'UTC')".into(),
        "timestamp" if base.contains("time zone") => "DateTime64(6, 'UTC')".into(),
        "numeric" => match args.map(|a| {
            a.split(',')
                .map(|n| n.trim().parse::<u32>().unwrap_or(0))
                .collect::<Vec<_>>()
        }) {
            Some(ps) if !ps.is_empty() && ps[0] >= 1 && ps[0] <= MAX_DECIMAL_PRECISION => {
                format!("Decimal({}, {})", ps[0], ps.get(1).copied().unwrap_or(0))
            }
            _ => "String".into(),
        },
        _ => "String".into(),
    }
}

/// What a column of a ClickHouse type holds, for sources checked value by value (SQLite):
/// SQLite's affinity rules would misread ClickHouse's names (`String` is not a number,
/// `Int16` not 64-bit). `String` holds any value as its Postgres text, as a Postgres source's
/// bytea lands there.
pub fn value_kind(type_name: &str) -> Kind {
    let mut t = type_name.trim();
    while let Some(inner) = ["Nullable(", "LowCardinality("]
        .iter()
        .find_map(|w| t.strip_prefix(w).and_then(|r| r.strip_suffix(')')))
    {
        t = inner.trim();
    }
    let int = |max: i64| Kind::Int { max };
    match t.split('(').next().unwrap_or(t) {
        "String" => Kind::AnyText,
        "Int8" => int(i8::MAX as i64),
        "Int16" => int(i16::MAX as i64),
        "Int32" => int(i32::MAX as i64),
        "Int64" => int(i64::MAX),
        "Float32" | "Float64" => Kind::Float,
        "Date32" => Kind::Date,
        // DateTime64(6, 'UTC'): instants.
        "DateTime64" => Kind::TimestampTz,
        _ => Kind::of(t),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn col(type_sql: &str, not_null: bool, dims: usize) -> ColumnDef {
        ColumnDef {
            name: "c".into(),
            type_sql: type_sql.into(),
            type_oid: 0,
            not_null,
            dims,
            generated: None,
        }
    }

    #[test]
    fn postgres_types_map_to_clickhouse_types() {
        for (pg, ch) in [
            ("smallint", "Int16"),
            ("integer", "Int32"),
            ("bigint", "Int64"),
            ("real", "Float32"),
            ("double precision", "Float64"),
            ("numeric(10,2)", "Decimal(10, 2)"),
            ("numeric(76,10)", "Decimal(76, 10)"),
            ("numeric(77,0)", "String"),
            ("numeric", "String"),
            ("boolean", "Bool"),
            ("uuid", "UUID"),
            ("date", "Date32"),
            ("timestamp without time zone", "DateTime64(6, 'UTC')"),
            ("timestamp(3) with time zone", "DateTime64(6, 'UTC')"),
            ("timestamp with time zone", "DateTime64(6, 'UTC')"),
            ("text", "String"),
            ("character varying(20)", "String"),
            ("jsonb", "String"),
            ("bytea", "String"),
            ("interval", "String"),
            ("public.mood", "String"),
        ] {
            assert_eq!(clickhouse_type(&col(pg, true, 0), false), ch, "{pg}");
        }
        assert_eq!(
            clickhouse_type(&col("bigint", false, 0), false),
            "Nullable(Int64)"
        );
        assert_eq!(
            clickhouse_type(&col("bigint", false, 0), true),
            "Int64",
            "key columns"
        );
        assert_eq!(clickhouse_type(&col("integer[]", true, 2), false), "String");
        assert_eq!(
            clickhouse_type(&col("integer[]", false, 1), false),
            "Nullable(String)"
        );
    }

    #[test]
    fn clickhouse_column_types_are_read_by_their_names() {
        // ClickHouse's, as destination columns: "String" is not a number by SQLite's affinity.
        assert_eq!(value_kind("String"), Kind::AnyText);
        assert_eq!(
            value_kind("LowCardinality(Nullable(String))"),
            Kind::AnyText
        );
        assert_eq!(
            value_kind("Nullable(Int16)"),
            Kind::Int {
                max: i16::MAX as i64
            }
        );
        assert_eq!(
            value_kind("Nullable(Decimal(10, 2))"),
            Kind::Numeric {
                precision: Some(10),
                scale: Some(2)
            }
        );
        assert_eq!(
            value_kind("Nullable(DateTime64(6, 'UTC'))"),
            Kind::TimestampTz
        );
        assert_eq!(value_kind("Date32"), Kind::Date);
        assert_eq!(value_kind("UUID"), Kind::Uuid);
        // Postgres's and DuckDB's names read as before.
        assert_eq!(
            value_kind("character varying(5)"),
            Kind::Text { max: Some(5) }
        );
        assert_eq!(value_kind("BIGINT"), Kind::Int { max: i64::MAX });
    }
}
