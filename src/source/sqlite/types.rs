//! SQLite values into destination columns.
//!
//! SQLite is dynamically typed: a column's declared type only gives it an *affinity*, and any
//! value can sit in any column. So every value is checked against the column it goes to and
//! turned into that type's Postgres input text (how values cross the destination seam), or
//! refused with a message saying what it is and why it does not fit. Nothing is rounded,
//! clamped or guessed: a text in an INTEGER column, an unparsable date, a numeric with more
//! decimals than the column keeps are errors.
//!
//! [`Kind`] is what a column holds, read from a type name in any spelling we meet: SQLite
//! declared types (`VARCHAR(40)`, `DATETIME`), Postgres `format_type` names and DuckDB's.
//! [`pg_type`] maps a declared type to the Postgres type a new destination table gets;
//! [`same`] compares a converted source value with a destination's output by meaning.

use rusqlite::types::ValueRef;

pub use crate::model::kind::Kind;

mod time;
use time::parse_date;
pub(crate) use time::parse_timestamp;

/// Integers beyond this lose digits as doubles.
const EXACT_DOUBLE_INT: i64 = 1 << 53;

/// The Postgres type (and its OID) a new destination table gets for a SQLite declared type.
/// SQLite's integers are 64-bit whatever the declaration says, so every integer type is
/// `bigint`; its reals are doubles (never 4-byte `real`).
pub fn pg_type(declared: &str) -> (Kind, String, u32) {
    let kind = match Kind::of(declared) {
        Kind::Int { .. } => Kind::Int { max: i64::MAX },
        k => k,
    };
    let (sql, oid) = match kind {
        Kind::Int { .. } => ("bigint".to_owned(), 20),
        Kind::Float => ("double precision".to_owned(), 701),
        Kind::Numeric {
            precision: Some(p),
            scale,
        } => (format!("numeric({p},{})", scale.unwrap_or(0)), 1700),
        Kind::Numeric { .. } => ("numeric".to_owned(), 1700),
        Kind::Bool => ("boolean".to_owned(), 16),
        Kind::Date => ("date".to_owned(), 1082),
        Kind::Timestamp => ("timestamp without time zone".to_owned(), 1114),
        Kind::TimestampTz => ("timestamp with time zone".to_owned(), 1184),
        Kind::Uuid => ("uuid".to_owned(), 2950),
        Kind::Json => ("jsonb".to_owned(), 3802),
        Kind::Bytes => ("bytea".to_owned(), 17),
        Kind::Text { max: Some(n) } => (format!("character varying({n})"), 1043),
        Kind::Text { max: None } | Kind::AnyText => ("text".to_owned(), 25),
    };
    (kind, sql, oid)
}

/// A SQLite value as the Postgres input text of `kind` (`None` for NULL), or why it does
/// not fit.
// Long: one arm per destination kind; each checks the value and refuses what would not be exact.
pub fn convert(kind: Kind, value: ValueRef<'_>) -> Result<Option<String>, String> {
    let text = match value {
        ValueRef::Null => return Ok(None),
        ValueRef::Text(b) => {
            Some(std::str::from_utf8(b).map_err(|_| "text that is not valid UTF-8".to_owned())?)
        }
        _ => None,
    };
    let out = match (kind, value) {
        (Kind::Int { max }, ValueRef::Integer(i)) => int_in_range(i, max)?,
        (Kind::Int { max }, ValueRef::Real(f))
            if f.fract() == 0.0 && f.abs() < EXACT_DOUBLE_INT as f64 =>
        {
            int_in_range(f as i64, max)?
        }
        (Kind::Int { max }, ValueRef::Text(_)) => {
            let t = text.unwrap_or_default().trim();
            let i: i64 = t.parse().map_err(|_| "not an integer".to_owned())?;
            int_in_range(i, max)?
        }
        (Kind::Float, ValueRef::Integer(i)) => {
            if i.unsigned_abs() > EXACT_DOUBLE_INT as u64 {
                return Err("an integer too large to be a double exactly".into());
            }
            i.to_string()
        }
        (Kind::Float, ValueRef::Real(f)) => float_text(f),
        (Kind::Float, ValueRef::Text(_)) => {
            let f: f64 = text
                .unwrap_or_default()
                .trim()
                .parse()
                .map_err(|_| "not a number".to_owned())?;
            float_text(f)
        }
        (Kind::Numeric { precision, scale }, v) => {
            let t = match v {
                ValueRef::Integer(i) => i.to_string(),
                ValueRef::Real(f) if f.is_finite() => float_text(f),
                ValueRef::Text(_) => text.unwrap_or_default().trim().to_owned(),
                _ => return Err("not a number".into()),
            };
            numeric_fits(&t, precision, scale)?;
            t
        }
        (Kind::Bool, ValueRef::Integer(0)) => "f".into(),
        (Kind::Bool, ValueRef::Integer(1)) => "t".into(),
        (Kind::Bool, ValueRef::Text(_)) => {
            match text
                .unwrap_or_default()
                .trim()
                .to_ascii_lowercase()
                .as_str()
            {
                "1" | "t" | "true" | "y" | "yes" | "on" => "t".into(),
                "0" | "f" | "false" | "n" | "no" | "off" => "f".into(),
                _ => return Err("not a boolean (1/0, true/false, yes/no)".into()),
            }
        }
        (Kind::Date, ValueRef::Text(_)) => {
            let t = text.unwrap_or_default().trim();
            parse_date(t).ok_or("not a date (YYYY-MM-DD)")?;
            t.to_owned()
        }
        (Kind::Timestamp, ValueRef::Text(_)) => {
            let ts = parse_timestamp(text.unwrap_or_default())?;
            if ts.offset_seconds.is_some_and(|o| o != 0) {
                return Err(
                    "a time with a zone other than UTC, in a column without time zone".into(),
                );
            }
            ts.text(false)
        }
        (Kind::TimestampTz, ValueRef::Text(_)) => {
            // The instant in UTC, as a Postgres source prints it: every destination takes
            // it, whatever zones it knows (ClickHouse's columns are UTC).
            parse_timestamp(text.unwrap_or_default())?
                .in_utc()
                .text(true)
        }
        (Kind::Uuid, ValueRef::Text(_)) => uuid_text(text.unwrap_or_default().trim())?,
        (Kind::Uuid, ValueRef::Blob(b)) if b.len() == 16 => uuid_from_bytes(b),
        (Kind::Json, ValueRef::Text(_)) => {
            let t = text.unwrap_or_default();
            serde_json::from_str::<serde_json::Value>(t).map_err(|e| format!("not JSON ({e})"))?;
            if t.contains("\\u0000") {
                return Err("JSON with a \\u0000 character, which Postgres cannot store".into());
            }
            t.to_owned()
        }
        (Kind::Json, ValueRef::Integer(i)) => i.to_string(),
        (Kind::Json, ValueRef::Real(f)) if f.is_finite() => float_text(f),
        (Kind::Bytes, ValueRef::Blob(b)) => hex(b),
        (Kind::Bytes, ValueRef::Text(b)) => hex(b),
        (Kind::AnyText, ValueRef::Blob(b)) => hex(b),
        (Kind::AnyText, v) => return convert(Kind::Text { max: None }, v),
        (Kind::Text { max }, v) => {
            let t = match v {
                ValueRef::Text(_) => text.unwrap_or_default().to_owned(),
                ValueRef::Integer(i) => i.to_string(),
                ValueRef::Real(f) => float_text(f),
                _ => return Err("a BLOB in a text column".into()),
            };
            if t.contains('\0') {
                return Err("text with a NUL character, which Postgres cannot store".into());
            }
            if let Some(max) = max {
                if t.chars().count() > max as usize {
                    return Err(format!("longer than the column's {max} characters"));
                }
            }
            t
        }
        (_, ValueRef::Blob(_)) => return Err("a BLOB".into()),
        (_, ValueRef::Integer(_)) => return Err("an integer".into()),
        (_, ValueRef::Real(_)) => return Err("a real number".into()),
        (_, _) => return Err("a text".into()),
    };
    Ok(Some(out))
}

/// How a rejected value prints in messages and the rejects file.
pub fn describe(value: ValueRef<'_>) -> String {
    match value {
        ValueRef::Null => "NULL".into(),
        ValueRef::Integer(i) => i.to_string(),
        ValueRef::Real(f) => float_text(f),
        ValueRef::Text(t) => format!("{:?}", String::from_utf8_lossy(t)),
        ValueRef::Blob(b) => format!("x'{}'", &hex(b)[2..]),
    }
}

fn int_in_range(i: i64, max: i64) -> Result<String, String> {
    if i > max || i < -max - 1 {
        return Err(format!("out of the column's integer range (±{max})"));
    }
    Ok(i.to_string())
}

/// Shortest text that reads back as the same double, in Postgres's spelling of the specials.
pub fn float_text(f: f64) -> String {
    if f.is_nan() {
        "NaN".into()
    } else if f.is_infinite() {
        if f > 0.0 { "Infinity" } else { "-Infinity" }.into()
    } else {
        format!("{f:?}")
    }
}

/// Check a decimal's syntax, and that `numeric(p,s)` keeps it without rounding.
fn numeric_fits(t: &str, precision: Option<u32>, scale: Option<u32>) -> Result<(), String> {
    let digits = t.strip_prefix(['-', '+']).unwrap_or(t);
    let (mantissa, exponent) = match digits.find(['e', 'E']) {
        Some(i) => (
            &digits[..i],
            digits[i + 1..]
                .parse::<i32>()
                .map_err(|_| "not a number".to_owned())?,
        ),
        None => (digits, 0),
    };
    let (int, frac) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    if int.is_empty() && frac.is_empty()
        || !int.bytes().chain(frac.bytes()).all(|b| b.is_ascii_digit())
    {
        return if t.eq_ignore_ascii_case("nan") && precision.is_none() {
            Ok(())
        } else {
            Err("not a number".into())
        };
    }
    let Some(p) = precision else { return Ok(()) };
    let s = scale.unwrap_or(0) as i32;
    // Digits before and after the point once the exponent is applied.
    let all: String = format!("{int}{frac}");
    let point = int.len() as i32 + exponent;
    let significant = all.trim_start_matches('0');
    let leading_zeros = (all.len() - significant.len()) as i32;
    let significant = significant.trim_end_matches('0');
    if significant.is_empty() {
        return Ok(());
    }
    let first = leading_zeros; // index of the first significant digit
    let last = first + significant.len() as i32; // one past the last
    let int_digits = (point - first).max(0);
    let frac_digits = (last - point).max(0);
    if frac_digits > s {
        return Err(format!(
            "more than the column's {s} decimal places (it would be rounded)"
        ));
    }
    if int_digits > p as i32 - s {
        return Err(format!("too large for numeric({p},{s})"));
    }
    Ok(())
}

fn uuid_text(t: &str) -> Result<String, String> {
    let t = t
        .strip_prefix('{')
        .and_then(|t| t.strip_suffix('}'))
        .unwrap_or(t);
    let hexits: String = t.chars().filter(|c| *c != '-').collect();
    if hexits.len() != 32 || !hexits.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err("not a UUID".into());
    }
    let h = hexits.to_ascii_lowercase();
    Ok(format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    ))
}

fn uuid_from_bytes(b: &[u8]) -> String {
    let h = &hex(b)[2..];
    uuid_text(h).expect("32 hex digits")
}

/// Postgres's `bytea` hex input: `\x0a1b…`.
fn hex(b: &[u8]) -> String {
    let mut out = String::with_capacity(2 + 2 * b.len());
    out.push_str("\\x");
    for byte in b {
        out.push_str(&format!("{byte:02x}"));
    }
    out
}

#[cfg(test)]
mod tests;
