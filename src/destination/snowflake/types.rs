//! Postgres types and values in Snowflake: the one place that decides both, and Snowflake's
//! quoting.
//!
//! Values are written as VARCHAR literals (the Postgres text, rewritten where Snowflake reads
//! it otherwise) inside `VALUES`, and converted in the SELECT around it (`convert`): Snowflake
//! allows only constants in `VALUES`. Where Snowflake has no exact type, the column is VARCHAR
//! and holds the Postgres text byte for byte; a value the chosen type cannot hold exactly
//! (NaN in a NUMBER, a BC date, a JSON number beyond a double's digits) is refused with the
//! column named, never rounded.

use crate::model::schema::ColumnDef;
use crate::model::kind::Kind;

/// A Snowflake identifier, always quoted (Snowflake folds unquoted names to upper case, so a
/// Postgres name is kept exactly only in quotes).
pub fn quote(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// A Snowflake string literal: backslash is an escape character there, so it is doubled, as
/// the quote is.
pub fn literal(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('\'');
    for c in s.chars() {
        match c {
            '\'' => out.push_str("''"),
            '\\' => out.push_str("\\\\"),
            c => out.push(c),
        }
    }
    out.push('\'');
    out
}

/// The column type to create for a source column.
pub fn create_type(col: &ColumnDef) -> String {
    match col.type_oid {
        16 => "BOOLEAN".into(),
        21 => "NUMBER(5,0)".into(),
        23 | 26 => "NUMBER(10,0)".into(),
        20 => "NUMBER(19,0)".into(),
        700 | 701 => "FLOAT".into(),
        1700 => decimal(&col.type_sql).unwrap_or_else(|| "VARCHAR".into()),
        17 => "BINARY".into(),
        1082 => "DATE".into(),
        1114 => "TIMESTAMP_NTZ(6)".into(),
        1184 => "TIMESTAMP_TZ(6)".into(),
        1083 => "TIME(6)".into(),
        114 | 3802 => "VARIANT".into(),
        // text, varchar, uuid, intervals, arrays, enums, ranges, money, ...: the Postgres text.
        _ => "VARCHAR".into(),
    }
}

/// A type as [`kind`] names it: what a column reports (`NUMBER(10,2)`, `TIMESTAMP_NTZ`).
pub fn type_name(create: &str) -> String {
    match create.split_once('(') {
        Some((base, _)) if base != "NUMBER" => base.to_owned(),
        _ => create.to_owned(),
    }
}

/// The type a result column's metadata describes (`rowtype`: type, precision, scale), in
/// [`type_name`]'s spelling.
pub fn from_rowtype(ty: &str, precision: Option<i64>, scale: Option<i64>) -> String {
    match ty {
        "fixed" => format!("NUMBER({},{})", precision.unwrap_or(38), scale.unwrap_or(0)),
        "text" => "VARCHAR".into(),
        "real" => "FLOAT".into(),
        other => other.to_uppercase(),
    }
}

/// `numeric(p,s)` with p ≤ 38 as `NUMBER(p,s)`; wider or unconstrained numerics stay text.
fn decimal(type_sql: &str) -> Option<String> {
    let args = type_sql.strip_prefix("numeric(")?.strip_suffix(')')?;
    let (p, s) = args.split_once(',').unwrap_or((args, "0"));
    let (p, s): (u32, u32) = (p.trim().parse().ok()?, s.trim().parse().ok()?);
    (p <= 38 && s <= p).then(|| format!("NUMBER({p},{s})"))
}

/// SQL turning the VARCHAR `expr` (a value as [`value`] wrote it) into type `ty`.
pub fn convert(ty: &str, expr: &str) -> String {
    match ty {
        "VARCHAR" => expr.to_owned(),
        "BINARY" => format!("TO_BINARY({expr}, 'HEX')"),
        "VARIANT" => format!("PARSE_JSON({expr})"),
        "TIMESTAMP_NTZ" => format!("{expr}::TIMESTAMP_NTZ(6)"),
        "TIMESTAMP_TZ" => format!("{expr}::TIMESTAMP_TZ(6)"),
        "TIME" => format!("{expr}::TIME(6)"),
        other => format!("{expr}::{other}"),
    }
}

/// SQL printing column `expr` of type `ty` as text that [`to_postgres`] turns into the
/// Postgres text of the value.
pub fn read(ty: &str, expr: &str) -> String {
    match ty {
        "BINARY" => format!("HEX_ENCODE({expr})"),
        "VARIANT" => format!("TO_JSON({expr})"),
        "TIMESTAMP_TZ" => format!("TO_VARCHAR(CONVERT_TIMEZONE('UTC', {expr})::TIMESTAMP_NTZ)"),
        _ => format!("TO_VARCHAR({expr})"),
    }
}

/// What [`read`] printed, as Postgres prints the value (`\x` bytea, timestamps without
/// trailing fraction zeros, `t`/`f`, `+00` for UTC).
pub fn to_postgres(ty: &str, text: String) -> String {
    match ty {
        "BINARY" => format!("\\x{}", text.to_lowercase()),
        "BOOLEAN" => match text.as_str() {
            "true" | "TRUE" => "t".into(),
            "false" | "FALSE" => "f".into(),
            _ => text,
        },
        "TIMESTAMP_NTZ" | "TIME" => trim_fraction(&text),
        "TIMESTAMP_TZ" => format!("{}+00", trim_fraction(&text)),
        _ => text,
    }
}

fn trim_fraction(t: &str) -> String {
    match t.split_once('.') {
        Some((whole, frac)) => {
            let frac = frac.trim_end_matches('0');
            if frac.is_empty() {
                whole.to_owned()
            } else {
                format!("{whole}.{frac}")
            }
        }
        None => t.to_owned(),
    }
}

/// The Postgres text of a value rewritten for [`convert`] of type `ty`; an error says why the
/// value cannot be held exactly.
pub fn value(ty: &str, pg: &str) -> Result<String, String> {
    match ty {
        "BOOLEAN" => Ok(match pg {
            "t" => "true",
            "f" => "false",
            other => return Err(format!("{other:?} is not a boolean")),
        }
        .into()),
        "BINARY" => pg
            .strip_prefix("\\x")
            .map(str::to_owned)
            .ok_or_else(|| format!("bytea {pg:?} is not in hex form (bytea_output = hex)")),
        "FLOAT" => Ok(match pg {
            "Infinity" => "inf".into(),
            "-Infinity" => "-inf".into(),
            other => other.into(),
        }),
        "DATE" | "TIMESTAMP_NTZ" | "TIMESTAMP_TZ" => datetime(ty, pg),
        "VARIANT" => json(pg).map(|()| pg.to_owned()),
        t if t.starts_with("NUMBER(") => {
            if pg == "NaN" || pg.ends_with("Infinity") {
                Err(format!(
                    "{pg} cannot be held by Snowflake's {t}: make the source column numeric without \
                     a precision (kept as exact text) or leave such values out"
                ))
            } else {
                Ok(pg.to_owned())
            }
        }
        _ => Ok(pg.to_owned()),
    }
}

/// Dates and timestamps Snowflake reads exactly: years 1 to 9999 of the common era; a UTC
/// offset written `+HH:MM`.
fn datetime(ty: &str, pg: &str) -> Result<String, String> {
    let year_ok = pg
        .split('-')
        .next()
        .and_then(|y| y.parse::<u32>().ok())
        .is_some_and(|y| (1..=9999).contains(&y));
    if pg.ends_with(" BC") || pg.contains("infinity") || !year_ok {
        return Err(format!(
            "{pg} is outside the years 1 to 9999 that Snowflake's {ty} holds"
        ));
    }
    if ty != "TIMESTAMP_TZ" {
        return Ok(pg.to_owned());
    }
    // Postgres prints an offset as +HH, +HH:MM or +HH:MM:SS.
    let at = pg
        .rfind(['+', '-'])
        .filter(|&i| i > 10)
        .ok_or_else(|| format!("no UTC offset in {pg:?}"))?;
    let (stamp, offset) = pg.split_at(at);
    let parts: Vec<&str> = offset[1..].split(':').collect();
    match parts.as_slice() {
        [h] => Ok(format!("{stamp}{}{h}:00", &offset[..1])),
        [_, _] => Ok(pg.to_owned()),
        _ => Err(format!(
            "{pg} has an offset with seconds, which Snowflake's TIMESTAMP_TZ cannot hold: run cdc \
             with the source session's TimeZone on a whole-minute zone (cdc sets UTC)"
        )),
    }
}

/// JSON that Snowflake's VARIANT keeps exactly: its numbers must survive a double (Snowflake
/// stores a non-integer as one) or be integers of at most 38 digits.
fn json(text: &str) -> Result<(), String> {
    let bytes = text.as_bytes();
    let mut i = 0;
    let mut in_string = false;
    while i < bytes.len() {
        let b = bytes[i];
        if in_string {
            match b {
                b'\\' => i += 1,
                b'"' => in_string = false,
                _ => {}
            }
            i += 1;
            continue;
        }
        if b == b'"' {
            in_string = true;
            i += 1;
            continue;
        }
        if b == b'-' || b.is_ascii_digit() {
            let start = i;
            while i < bytes.len()
                && matches!(bytes[i], b'-' | b'+' | b'.' | b'e' | b'E' | b'0'..=b'9')
            {
                i += 1;
            }
            let n = &text[start..i];
            if n.contains(['.', 'e', 'E']) {
                let ok = n
                    .parse::<f64>()
                    .is_ok_and(|f| f.is_finite() && same_number(n, &format!("{f:e}")));
                if !ok {
                    return Err(format!(
                        "the JSON number {n} has more digits than Snowflake's VARIANT keeps (a double)"
                    ));
                }
            } else if n.trim_start_matches('-').len() > 38 {
                return Err(format!(
                    "the JSON integer {n} has more than the 38 digits Snowflake's VARIANT keeps"
                ));
            }
            continue;
        }
        i += 1;
    }
    Ok(())
}

/// Whether two decimal texts name the same number (significant digits and exponent).
fn same_number(a: &str, b: &str) -> bool {
    fn canonical(s: &str) -> (bool, String, i64) {
        let (neg, s) = s.strip_prefix('-').map_or((false, s), |r| (true, r));
        let (mantissa, exp) = match s.split_once(['e', 'E']) {
            Some((m, e)) => (m, e.parse::<i64>().unwrap_or(0)),
            None => (s, 0),
        };
        let (int, frac) = mantissa.split_once('.').unwrap_or((mantissa, ""));
        let digits = format!("{int}{frac}");
        let lead = digits.len() - digits.trim_start_matches('0').len();
        let significant = digits
            .trim_start_matches('0')
            .trim_end_matches('0')
            .to_owned();
        // Position of the first significant digit relative to the decimal point.
        let point = int.len() as i64 - lead as i64 + exp;
        (neg && !significant.is_empty(), significant, point)
    }
    let (ca, cb) = (canonical(a), canonical(b));
    if ca.1.is_empty() && cb.1.is_empty() {
        return true;
    }
    ca == cb
}

/// What a column of a Snowflake type holds (as its columns report them, [`from_rowtype`]),
/// for sources checked value by value (SQLite): `BINARY` is bytes, not a number by SQLite's
/// affinity rules; whole `NUMBER`s compare (and sort) as integers.
pub fn value_kind(type_name: &str) -> Kind {
    let t = type_name.trim();
    match t.split('(').next().unwrap_or(t) {
        "VARCHAR" => Kind::AnyText,
        "NUMBER" => match Kind::of(&t.replace("NUMBER", "numeric")) {
            Kind::Numeric {
                precision: Some(p),
                scale: Some(0),
            } => Kind::Int {
                max: 10i64.checked_pow(p).map_or(i64::MAX, |m| m - 1),
            },
            other => other,
        },
        "BINARY" => Kind::Bytes,
        "VARIANT" => Kind::Json,
        "TIMESTAMP_NTZ" => Kind::Timestamp,
        "TIMESTAMP_TZ" => Kind::TimestampTz,
        _ => Kind::of(t),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn col(oid: u32, sql: &str) -> ColumnDef {
        ColumnDef {
            name: "c".into(),
            type_sql: sql.into(),
            type_oid: oid,
            not_null: false,
            dims: 0,
            generated: None,
        }
    }

    #[test]
    fn types_are_exact_or_text() {
        assert_eq!(create_type(&col(1700, "numeric(12,3)")), "NUMBER(12,3)");
        assert_eq!(create_type(&col(1700, "numeric")), "VARCHAR");
        assert_eq!(create_type(&col(1700, "numeric(60,2)")), "VARCHAR");
        assert_eq!(create_type(&col(20, "bigint")), "NUMBER(19,0)");
        assert_eq!(
            create_type(&col(1184, "timestamp with time zone")),
            "TIMESTAMP_TZ(6)"
        );
        assert_eq!(create_type(&col(3802, "jsonb")), "VARIANT");
        assert_eq!(create_type(&col(1007, "integer[]")), "VARCHAR");
        assert_eq!(type_name("TIMESTAMP_TZ(6)"), "TIMESTAMP_TZ");
        assert_eq!(type_name("NUMBER(12,3)"), "NUMBER(12,3)");
        assert_eq!(from_rowtype("fixed", Some(12), Some(3)), "NUMBER(12,3)");
        assert_eq!(
            from_rowtype("timestamp_tz", Some(0), Some(9)),
            "TIMESTAMP_TZ"
        );
        assert_eq!(from_rowtype("text", None, None), "VARCHAR");
    }

    #[test]
    fn quoting_in_snowflakes_dialect() {
        assert_eq!(quote("we\"ird Name"), "\"we\"\"ird Name\"");
        assert_eq!(literal("it's a \\ path"), "'it''s a \\\\ path'");
        assert_eq!(convert("NUMBER(12,3)", "c0"), "c0::NUMBER(12,3)");
        assert_eq!(convert("BINARY", "c1"), "TO_BINARY(c1, 'HEX')");
    }

    #[test]
    fn values_are_rewritten_or_refused() {
        assert_eq!(value("BOOLEAN", "t").unwrap(), "true");
        assert_eq!(value("BINARY", "\\x00ff").unwrap(), "00ff");
        assert_eq!(value("FLOAT", "-Infinity").unwrap(), "-inf");
        assert!(value("NUMBER(10,2)", "NaN")
            .unwrap_err()
            .contains("NUMBER(10,2)"));
        assert_eq!(
            value("TIMESTAMP_TZ", "2020-01-01 10:00:00.5+02").unwrap(),
            "2020-01-01 10:00:00.5+02:00"
        );
        assert_eq!(
            value("TIMESTAMP_TZ", "2020-01-01 10:00:00-03:30").unwrap(),
            "2020-01-01 10:00:00-03:30"
        );
        assert!(value("TIMESTAMP_TZ", "1900-01-01 10:00:00+00:19:32").is_err());
        assert!(value("DATE", "0044-03-15 BC").is_err());
        assert!(value("TIMESTAMP_NTZ", "infinity").is_err());
        assert!(value("DATE", "12000-01-01").is_err());
        assert_eq!(value("DATE", "2024-02-29").unwrap(), "2024-02-29");
        assert!(value(
            "VARIANT",
            r#"{"a": [1, 2.5, -3e10, "1.000000000000000000001"]}"#
        )
        .is_ok());
        assert!(value("VARIANT", r#"{"a": 1.000000000000000000001}"#).is_err());
        assert!(value("VARIANT", r#"[123456789012345678901234567890123456789]"#).is_err());
        assert!(value("VARIANT", r#"[12345678901234567890123456789012345678]"#).is_ok());
    }

    #[test]
    fn read_back_as_postgres_prints() {
        assert_eq!(to_postgres("BINARY", "00FF".into()), "\\x00ff");
        assert_eq!(
            to_postgres("TIMESTAMP_NTZ", "2020-01-01 00:00:00.120000".into()),
            "2020-01-01 00:00:00.12"
        );
        assert_eq!(
            to_postgres("TIMESTAMP_TZ", "2020-01-01 00:00:00.000000".into()),
            "2020-01-01 00:00:00+00"
        );
        assert_eq!(to_postgres("BOOLEAN", "false".into()), "f");
    }

    #[test]
    fn snowflake_column_types_are_read_by_their_names() {
        // BINARY is bytes, not a number; NUMBER(p,s) exact.
        assert_eq!(value_kind("BINARY"), Kind::Bytes);
        assert_eq!(value_kind("VARCHAR"), Kind::AnyText);
        assert_eq!(
            value_kind("NUMBER(10,2)"),
            Kind::Numeric {
                precision: Some(10),
                scale: Some(2)
            }
        );
        assert_eq!(value_kind("TIMESTAMP_TZ"), Kind::TimestampTz);
        assert_eq!(
            value_kind("NUMBER(19,0)"),
            Kind::Int { max: i64::MAX }
        );
        assert_eq!(
            value_kind("NUMBER(5,0)"),
            Kind::Int { max: 99_999 }
        );
        assert_eq!(value_kind("VARIANT"), Kind::Json);
    }
}
