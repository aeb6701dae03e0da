//! Postgres types and values in DuckDB: the one place that decides both.
//!
//! Values arrive as Postgres prints them (the text form of pgoutput and of COPY, with ISO
//! dates, UTC, `extra_float_digits = 3`). Each is rewritten here into text that DuckDB casts
//! exactly (`to_duckdb_text`), staged as VARCHAR, and cast in SQL (`cast_expr`) to the column's
//! type. Where DuckDB has no exact type, the column is VARCHAR and holds the Postgres text
//! byte for byte (numeric wider than 38 digits, enums, money, ranges, geometric types, ...).
//!
//! Traps handled: DuckDB reads `0044-03-15 BC` as AD 44 (so BC is rewritten to its `(BC)`
//! form), it cannot parse Postgres' negative interval times (`-04:05:06`, so intervals are
//! rewritten as months, days and microseconds), and its lists are written as JSON arrays of
//! strings, which it casts element by element.

use std::borrow::Cow;

/// The DuckDB type for a source column (`oid`, `format_type` text, declared array dimensions).
pub fn duck_type(oid: u32, type_sql: &str, dims: usize) -> String {
    let list = |elem: &str| format!("{elem}{}", "[]".repeat(dims.max(1)));
    match oid {
        16 => "BOOLEAN".into(),
        21 => "SMALLINT".into(),
        23 => "INTEGER".into(),
        20 | 26 => "BIGINT".into(),
        700 => "FLOAT".into(),
        701 => "DOUBLE".into(),
        1700 => decimal(type_sql).unwrap_or_else(|| "VARCHAR".into()),
        17 => "BLOB".into(),
        1082 => "DATE".into(),
        1114 => "TIMESTAMP".into(),
        1184 => "TIMESTAMP WITH TIME ZONE".into(),
        1083 => "TIME".into(),
        1266 => "TIME WITH TIME ZONE".into(),
        1186 => "INTERVAL".into(),
        2950 => "UUID".into(),
        114 | 3802 => "JSON".into(),
        1000 => list("BOOLEAN"),
        1005 => list("SMALLINT"),
        1007 => list("INTEGER"),
        1016 => list("BIGINT"),
        1021 => list("FLOAT"),
        1022 => list("DOUBLE"),
        1009 | 1015 | 1014 => list("VARCHAR"),
        2951 => list("UUID"),
        1182 => list("DATE"),
        1115 => list("TIMESTAMP"),
        1185 => list("TIMESTAMP WITH TIME ZONE"),
        1231 => match decimal(type_sql.trim_end_matches("[]")) {
            Some(d) => list(&d),
            None => "VARCHAR".into(),
        },
        // text, varchar, char, name, enums, domains, composites, and every type DuckDB has
        // no exact counterpart for: the Postgres text, which round-trips.
        _ => "VARCHAR".into(),
    }
}

/// `numeric(p,s)` with p ≤ 38 as DuckDB's `DECIMAL(p,s)`; `None` for wider or unconstrained
/// numerics (kept as exact text: DuckDB would round or refuse them).
fn decimal(type_sql: &str) -> Option<String> {
    let args = type_sql.strip_prefix("numeric(")?.strip_suffix(')')?;
    let (p, s) = args.split_once(',').unwrap_or((args, "0"));
    let (p, s): (u32, u32) = (p.trim().parse().ok()?, s.trim().parse().ok()?);
    (p <= 38 && s <= p).then(|| format!("DECIMAL({p},{s})"))
}

/// The element type of a list type (`INTEGER[]` → `INTEGER`).
fn element(ty: &str) -> Option<&str> {
    ty.strip_suffix("[]")
}

/// SQL turning the staged VARCHAR `expr` (Postgres text, or `to_duckdb_text`'s rewrite of it)
/// into a value of DuckDB type `ty`.
pub fn cast_expr(ty: &str, expr: &str) -> String {
    if element(ty).is_some() {
        format!("CAST(CAST({expr} AS JSON) AS {ty})")
    } else {
        match ty {
            "VARCHAR" => expr.to_owned(),
            // `\x0102` → bytes.
            "BLOB" => format!("from_hex(substr({expr}, 3))"),
            // DuckDB reads `0044-03-15 BC` as AD 44: move the era where it reads it.
            "DATE" | "TIMESTAMP" | "TIMESTAMP WITH TIME ZONE" => format!(
                "CAST(CASE WHEN {expr} LIKE '% BC' THEN regexp_replace({expr}, '^(\\S+)(.*) BC$', '\\1 (BC)\\2') \
                 ELSE {expr} END AS {ty})"
            ),
            _ => format!("CAST({expr} AS {ty})"),
        }
    }
}

/// Whether DuckDB's own CSV reader can take a column of type `ty` as Postgres prints it
/// (with `cast_expr`), so the snapshot can skip rewriting its values here.
pub fn reads_postgres_text(ty: &str) -> bool {
    element(ty).is_none() && ty != "INTERVAL"
}

/// The Postgres text of a value rewritten so that `cast_expr(ty, ..)` reads it exactly.
pub fn to_duckdb_text<'a>(ty: &str, pg: &'a str) -> Result<Cow<'a, str>, String> {
    if let Some(elem) = element(ty) {
        return array_to_json(elem, pg).map(Cow::Owned);
    }
    Ok(match ty {
        "INTERVAL" => Cow::Owned(interval(pg)?),
        _ => Cow::Borrowed(pg),
    })
}

/// An array element rewritten for a list of `elem`: inside a JSON list, the cast cannot
/// move a BC era, so it is moved here.
fn element_text<'a>(elem: &str, pg: &'a str) -> Result<Cow<'a, str>, String> {
    match elem {
        "DATE" | "TIMESTAMP" | "TIMESTAMP WITH TIME ZONE" => Ok(bc(pg)),
        _ => to_duckdb_text(elem, pg),
    }
}

/// `0044-03-15 BC` → `0044-03-15 (BC)`, `0044-03-15 12:00:00+00 BC` → `0044-03-15 (BC) 12:00:00+00`.
fn bc(pg: &str) -> Cow<'_, str> {
    match pg.strip_suffix(" BC") {
        None => Cow::Borrowed(pg),
        Some(rest) => match rest.split_once(' ') {
            Some((date, time)) => Cow::Owned(format!("{date} (BC) {time}")),
            None => Cow::Owned(format!("{rest} (BC)")),
        },
    }
}

/// A Postgres-style interval (`1 year 2 mons -3 days -04:05:06.5`) as
/// `N months N days N microseconds`, which DuckDB reads exactly.
fn interval(pg: &str) -> Result<String, String> {
    let bad = || format!("cannot read interval {pg:?}");
    let (mut months, mut days, mut micros) = (0i64, 0i64, 0i64);
    let mut words = pg.split_whitespace();
    while let Some(w) = words.next() {
        if w.contains(':') {
            let (neg, hms) = match w.strip_prefix('-') {
                Some(r) => (true, r),
                None => (false, w.strip_prefix('+').unwrap_or(w)),
            };
            let mut parts = hms.split(':');
            let h: i64 = parts.next().and_then(|v| v.parse().ok()).ok_or_else(bad)?;
            let m: i64 = parts.next().and_then(|v| v.parse().ok()).ok_or_else(bad)?;
            let sec = parts.next().unwrap_or("0");
            let (s, frac) = sec.split_once('.').unwrap_or((sec, ""));
            let s: i64 = s.parse().map_err(|_| bad())?;
            if frac.len() > 6 || !frac.bytes().all(|b| b.is_ascii_digit()) {
                return Err(bad());
            }
            let us: i64 = format!("{frac:0<6}").parse().map_err(|_| bad())?;
            let total = ((h * 60 + m) * 60 + s) * 1_000_000 + us;
            micros += if neg { -total } else { total };
            continue;
        }
        let n: i64 = w.parse().map_err(|_| bad())?;
        match words.next().ok_or_else(bad)? {
            "year" | "years" => months += n * 12,
            "mon" | "mons" => months += n,
            "day" | "days" => days += n,
            _ => return Err(bad()),
        }
    }
    Ok(format!("{months} months {days} days {micros} microseconds"))
}

/// A Postgres array literal (`{1,NULL,"a b"}`, nested for more dimensions) as a JSON array
/// of strings and nulls, each element rewritten for `elem`.
fn array_to_json(elem: &str, pg: &str) -> Result<String, String> {
    if pg.starts_with('[') {
        return Err(format!(
            "array {pg:?} has explicit bounds, which a DuckDB list cannot keep"
        ));
    }
    let elem = element(elem).map_or(elem, |inner| {
        // Nested list types: the leaf type decides how elements are rewritten.
        let mut t = inner;
        while let Some(i) = element(t) {
            t = i;
        }
        t
    });
    let bytes = pg.as_bytes();
    let mut out = String::with_capacity(pg.len() + 8);
    let mut i = 0;
    let mut expect_value = true;
    while i < bytes.len() {
        match bytes[i] {
            b'{' => {
                out.push('[');
                i += 1;
                expect_value = true;
            }
            b'}' => {
                out.push(']');
                i += 1;
                expect_value = false;
            }
            b',' => {
                out.push(',');
                i += 1;
                expect_value = true;
            }
            _ if !expect_value => return Err(format!("cannot read array {pg:?}")),
            b'"' => {
                let mut value = String::new();
                i += 1;
                loop {
                    match bytes.get(i) {
                        None => return Err(format!("unterminated quote in array {pg:?}")),
                        Some(b'"') => break,
                        Some(b'\\') => {
                            let c = pg[i + 1..].chars().next().ok_or("bad escape")?;
                            value.push(c);
                            i += 1 + c.len_utf8();
                        }
                        Some(_) => {
                            let c = pg[i..].chars().next().expect("in bounds");
                            value.push(c);
                            i += c.len_utf8();
                        }
                    }
                }
                i += 1;
                push_json_string(&mut out, &element_text(elem, &value)?);
                expect_value = false;
            }
            _ => {
                let end = pg[i..].find([',', '}']).map_or(pg.len(), |e| i + e);
                let raw = pg[i..end].trim();
                if raw == "NULL" {
                    out.push_str("null");
                } else {
                    push_json_string(&mut out, &element_text(elem, raw)?);
                }
                i = end;
                expect_value = false;
            }
        }
    }
    Ok(out)
}

fn push_json_string(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn types_map_exactly_or_to_text() {
        assert_eq!(duck_type(1700, "numeric(10,2)", 0), "DECIMAL(10,2)");
        assert_eq!(duck_type(1700, "numeric(38,0)", 0), "DECIMAL(38,0)");
        assert_eq!(duck_type(1700, "numeric(39,2)", 0), "VARCHAR");
        assert_eq!(duck_type(1700, "numeric", 0), "VARCHAR");
        assert_eq!(duck_type(1700, "numeric(5)", 0), "DECIMAL(5,0)");
        assert_eq!(duck_type(1007, "integer[]", 2), "INTEGER[][]");
        assert_eq!(duck_type(1007, "integer[]", 0), "INTEGER[]");
        assert_eq!(duck_type(1231, "numeric(12,3)[]", 1), "DECIMAL(12,3)[]");
        assert_eq!(duck_type(1231, "numeric[]", 1), "VARCHAR");
        assert_eq!(duck_type(16390, "public.mood", 0), "VARCHAR");
        assert_eq!(duck_type(869, "inet", 0), "VARCHAR");
    }

    #[test]
    fn casts_by_type() {
        assert_eq!(cast_expr("VARCHAR", "s.c0"), "s.c0");
        assert_eq!(cast_expr("BLOB", "s.c0"), "from_hex(substr(s.c0, 3))");
        assert_eq!(
            cast_expr("INTEGER[]", "s.c0"),
            "CAST(CAST(s.c0 AS JSON) AS INTEGER[])"
        );
        assert_eq!(cast_expr("UUID", "x"), "CAST(x AS UUID)");
    }

    #[test]
    fn bc_dates_keep_their_era() {
        assert_eq!(bc("0044-03-15 BC"), "0044-03-15 (BC)");
        assert_eq!(
            bc("0044-03-15 12:00:00+00 BC"),
            "0044-03-15 (BC) 12:00:00+00"
        );
        assert_eq!(bc("2020-01-01"), "2020-01-01");
        // Scalars: the cast moves the era (checked against DuckDB in tests/duckdb.rs).
        assert!(cast_expr("DATE", "x").contains("LIKE '% BC'"));
        assert_eq!(
            to_duckdb_text("DATE", "0044-03-15 BC").unwrap(),
            "0044-03-15 BC"
        );
        assert!(reads_postgres_text("DATE") && reads_postgres_text("DECIMAL(10,2)"));
        assert!(!reads_postgres_text("INTERVAL") && !reads_postgres_text("INTEGER[]"));
    }

    #[test]
    fn intervals_become_months_days_microseconds() {
        let i = |s| to_duckdb_text("INTERVAL", s).unwrap().into_owned();
        assert_eq!(
            i("1 year 2 mons 3 days 04:05:06.5"),
            "14 months 3 days 14706500000 microseconds"
        );
        assert_eq!(
            i("-1 years -2 mons +3 days -04:05:06"),
            "-14 months 3 days -14706000000 microseconds"
        );
        assert_eq!(i("00:00:00.000001"), "0 months 0 days 1 microseconds");
        assert_eq!(
            i("-178000000 years"),
            "-2136000000 months 0 days 0 microseconds"
        );
        assert!(to_duckdb_text("INTERVAL", "P1Y").is_err());
    }

    #[test]
    fn arrays_become_json_lists() {
        let a = |t, s| to_duckdb_text(t, s).unwrap().into_owned();
        assert_eq!(a("INTEGER[]", "{1,NULL,3}"), r#"["1",null,"3"]"#);
        assert_eq!(
            a("INTEGER[][]", "{{1,2},{3,4}}"),
            r#"[["1","2"],["3","4"]]"#
        );
        assert_eq!(
            a("VARCHAR[]", r#"{"a b","c\"d","NULL","e\\f",""}"#),
            r#"["a b","c\"d","NULL","e\\f",""]"#
        );
        assert_eq!(a("VARCHAR[]", "{}"), "[]");
        assert_eq!(
            a("DATE[]", "{2020-01-01,\"0044-03-15 BC\"}"),
            r#"["2020-01-01","0044-03-15 (BC)"]"#
        );
        assert_eq!(a("VARCHAR[]", "{\"é\u{1}\"}"), "[\"é\\u0001\"]");
        assert!(to_duckdb_text("INTEGER[]", "[0:1]={1,2}").is_err());
    }
}
