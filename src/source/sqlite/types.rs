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

/// What a column holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Integers within `[-max-1, max]`.
    Int {
        max: i64,
    },
    /// IEEE doubles.
    Float,
    /// Exact decimals, `precision` digits of which `scale` after the point.
    Numeric {
        precision: Option<u32>,
        scale: Option<u32>,
    },
    Bool,
    Date,
    Timestamp,
    TimestampTz,
    Uuid,
    Json,
    Bytes,
    /// Text of at most `max` characters.
    Text {
        max: Option<u32>,
    },
}

/// Integers beyond this lose digits as doubles.
const EXACT_DOUBLE_INT: i64 = 1 << 53;

impl Kind {
    /// The kind of a type name: SQLite's declared types (by the names people use, then by
    /// SQLite's affinity rules), Postgres's and DuckDB's names.
    pub fn of(type_name: &str) -> Kind {
        let t = type_name.trim().to_ascii_lowercase();
        let (base, args) = match t.find('(') {
            Some(i) => (t[..i].trim(), parse_args(&t[i..])),
            None => (t.as_str(), Vec::new()),
        };
        let base = base.trim_matches('"');
        match base {
            "bool" | "boolean" => Kind::Bool,
            "date" => Kind::Date,
            "datetime" | "timestamp" | "timestamp without time zone" | "timestamp_us" => {
                Kind::Timestamp
            }
            "timestamptz" | "timestamp with time zone" | "datetime with time zone" => {
                Kind::TimestampTz
            }
            "uuid" | "guid" => Kind::Uuid,
            "json" | "jsonb" => Kind::Json,
            "bytea" | "blob" | "varbinary" => Kind::Bytes,
            "smallint" | "int2" => Kind::Int {
                max: i16::MAX as i64,
            },
            // Postgres's and DuckDB's 4-byte `integer` ([`pg_type`] reads SQLite's as 64-bit).
            "int4" | "integer" | "int" => Kind::Int {
                max: i32::MAX as i64,
            },
            "numeric" | "decimal" => Kind::Numeric {
                precision: args.first().copied(),
                scale: args.get(1).copied().or(args.first().map(|_| 0)),
            },
            "double" | "double precision" | "float" | "float8" | "real" | "float4" => Kind::Float,
            "character varying" | "varchar" | "nvarchar" | "varying character"
            | "native character" | "nchar" | "character" | "char" => Kind::Text {
                max: args.first().copied(),
            },
            _ => affinity(base),
        }
    }

    /// Whether values of this kind print the same on every side, so keys compare as text.
    fn key_compares_as_text(self) -> bool {
        !matches!(self, Kind::Int { .. })
    }
}

/// SQLite's affinity rules (section 3.1 of its datatype page), for names we do not know.
fn affinity(base: &str) -> Kind {
    if base.contains("int") {
        Kind::Int { max: i64::MAX }
    } else if base.contains("char") || base.contains("clob") || base.contains("text") {
        Kind::Text { max: None }
    } else if base.contains("blob") {
        Kind::Bytes
    } else if base.contains("real") || base.contains("floa") || base.contains("doub") {
        Kind::Float
    } else if base.is_empty() {
        // No declared type: values are kept as they are; text is the one column type that
        // holds what SQLite's integers, reals and texts print as.
        Kind::Text { max: None }
    } else {
        Kind::Numeric {
            precision: None,
            scale: None,
        }
    }
}

fn parse_args(s: &str) -> Vec<u32> {
    s.trim_matches(|c| c == '(' || c == ')' || c == ' ')
        .split(',')
        .filter_map(|a| a.trim().parse().ok())
        .collect()
}

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
        Kind::Text { max: None } => ("text".to_owned(), 25),
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
            parse_timestamp(text.unwrap_or_default())?.text(true)
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

/// A `YYYY-MM-DD` date: (year, month, day) when it exists.
fn parse_date(t: &str) -> Option<(i64, u32, u32)> {
    let b = t.as_bytes();
    if b.len() != 10 || b[4] != b'-' || b[7] != b'-' {
        return None;
    }
    let y: i64 = t[..4].parse().ok()?;
    let m: u32 = t[5..7].parse().ok()?;
    let d: u32 = t[8..10].parse().ok()?;
    let leap = y % 4 == 0 && (y % 100 != 0 || y % 400 == 0);
    let days = match m {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if leap => 29,
        2 => 28,
        _ => return None,
    };
    (1..=days).contains(&d).then_some((y, m, d))
}

/// A parsed timestamp: the wall-clock parts and the zone offset, if one was written.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Stamp {
    date: String,
    hms: (u32, u32, u32),
    /// Fraction of a second, up to 6 digits as written.
    fraction: String,
    offset_seconds: Option<i32>,
    days: i64,
}

impl Stamp {
    fn text(&self, zone: bool) -> String {
        let (h, m, s) = self.hms;
        let mut out = format!("{} {h:02}:{m:02}:{s:02}", self.date);
        if !self.fraction.is_empty() {
            out.push('.');
            out.push_str(&self.fraction);
        }
        if zone {
            let o = self.offset_seconds.unwrap_or(0);
            let sign = if o < 0 { '-' } else { '+' };
            let o = o.abs();
            out.push_str(&format!("{sign}{:02}:{:02}", o / 3600, o / 60 % 60));
            if o % 60 != 0 {
                out.push_str(&format!(":{:02}", o % 60));
            }
        }
        out
    }

    /// Microseconds since 1970-01-01 00:00 UTC (the offset applied when there is one).
    fn micros(&self) -> i128 {
        let (h, m, s) = self.hms;
        let frac: i128 = format!("{:0<6}", self.fraction).parse().unwrap_or(0);
        let secs = self.days as i128 * 86_400 + (h * 3600 + m * 60 + s) as i128
            - self.offset_seconds.unwrap_or(0) as i128;
        secs * 1_000_000 + frac
    }
}

/// `YYYY-MM-DD[ T]HH:MM[:SS[.ffffff]][Z|±HH[:MM[:SS]]|±HHMM]`, or a bare date (midnight).
fn parse_timestamp(t: &str) -> Result<Stamp, String> {
    let bad = || "not a timestamp (YYYY-MM-DD HH:MM:SS[.ffffff][+HH:MM])".to_owned();
    let t = t.trim();
    if t.len() < 10 {
        return Err(bad());
    }
    let (y, mo, d) = parse_date(&t[..10]).ok_or_else(bad)?;
    let mut rest = &t[10..];
    let mut hms = (0, 0, 0);
    let mut fraction = String::new();
    if let Some(r) = rest.strip_prefix([' ', 'T', 't']) {
        let num = |s: &str| -> Option<u32> {
            (s.len() == 2 && s.bytes().all(|b| b.is_ascii_digit())).then(|| s.parse().ok())?
        };
        let h = num(r.get(..2).ok_or_else(bad)?).ok_or_else(bad)?;
        let r = r
            .get(2..)
            .ok_or_else(bad)?
            .strip_prefix(':')
            .ok_or_else(bad)?;
        let m = num(r.get(..2).ok_or_else(bad)?).ok_or_else(bad)?;
        let mut r = &r[2..];
        let mut s = 0;
        if let Some(after) = r.strip_prefix(':') {
            s = num(after.get(..2).ok_or_else(bad)?).ok_or_else(bad)?;
            r = &after[2..];
            if let Some(f) = r.strip_prefix('.') {
                let n = f.bytes().take_while(u8::is_ascii_digit).count();
                if n == 0 {
                    return Err(bad());
                }
                if n > 6 {
                    return Err(
                        "a time with more than microsecond precision (it would be rounded)".into(),
                    );
                }
                fraction = f[..n].to_owned();
                r = &f[n..];
            }
        }
        if h > 23 || m > 59 || s > 59 {
            return Err(bad());
        }
        hms = (h, m, s);
        rest = r;
    }
    let rest = rest.trim_start();
    let offset_seconds = if rest.is_empty() {
        None
    } else if rest.eq_ignore_ascii_case("z") || rest.eq_ignore_ascii_case("utc") {
        Some(0)
    } else {
        let sign = match rest.as_bytes()[0] {
            b'+' => 1,
            b'-' => -1,
            _ => return Err(bad()),
        };
        let z = &rest[1..];
        let parts: Vec<&str> = if z.contains(':') {
            z.split(':').collect()
        } else if z.len() == 4 {
            vec![&z[..2], &z[2..]]
        } else {
            vec![z]
        };
        let mut secs = 0i32;
        for (i, p) in parts.iter().enumerate() {
            if p.len() != 2 || !p.bytes().all(|b| b.is_ascii_digit()) || i > 2 {
                return Err(bad());
            }
            secs += p.parse::<i32>().map_err(|_| bad())? * [3600, 60, 1][i];
        }
        if secs > 15 * 3600 + 59 * 60 {
            return Err(bad());
        }
        Some(sign * secs)
    };
    // Trailing zeros of the fraction say nothing.
    let fraction = fraction.trim_end_matches('0').to_owned();
    Ok(Stamp {
        date: t[..10].to_owned(),
        hms,
        fraction,
        offset_seconds,
        days: days_from_civil(y, mo, d),
    })
}

/// Days since 1970-01-01 (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = m as i64;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
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

/// Whether a converted source value and a destination's text output of the same column mean
/// the same value (`2021-06-16 20:14:09.221838+00` and `…+00:00`, `t` and `true`, `1.50` and
/// `1.5`).
pub fn same(kind: Kind, source: &str, destination: &str) -> bool {
    if source == destination {
        return true;
    }
    match kind {
        Kind::Int { .. } => source.trim().parse::<i64>().ok() == destination.trim().parse().ok(),
        Kind::Float => match (source.parse::<f64>(), destination.parse::<f64>()) {
            (Ok(a), Ok(b)) => a == b || a.is_nan() && b.is_nan(),
            _ => source.eq_ignore_ascii_case(destination),
        },
        Kind::Numeric { .. } => decimal_key(source) == decimal_key(destination),
        Kind::Bool => bool_of(source).is_some() && bool_of(source) == bool_of(destination),
        Kind::Timestamp | Kind::TimestampTz => {
            match (parse_timestamp(source), parse_timestamp(destination)) {
                (Ok(a), Ok(b)) => a.micros() == b.micros(),
                _ => false,
            }
        }
        Kind::Uuid => {
            let norm = |s: &str| s.replace('-', "").to_ascii_lowercase();
            norm(source) == norm(destination)
        }
        Kind::Json => {
            match (
                serde_json::from_str::<serde_json::Value>(source),
                serde_json::from_str::<serde_json::Value>(destination),
            ) {
                (Ok(a), Ok(b)) => a == b,
                _ => false,
            }
        }
        Kind::Bytes => source.eq_ignore_ascii_case(destination),
        Kind::Date | Kind::Text { .. } => false,
    }
}

fn bool_of(s: &str) -> Option<bool> {
    match s.to_ascii_lowercase().as_str() {
        "t" | "true" => Some(true),
        "f" | "false" => Some(false),
        _ => None,
    }
}

/// A decimal reduced to sign, digits and point position, so `01.50` and `1.5` agree.
fn decimal_key(s: &str) -> Option<(bool, String, i64)> {
    let s = s.trim();
    let (neg, digits) = match s.strip_prefix('-') {
        Some(d) => (true, d),
        None => (false, s.strip_prefix('+').unwrap_or(s)),
    };
    let (mantissa, exp) = match digits.find(['e', 'E']) {
        Some(i) => (&digits[..i], digits[i + 1..].parse::<i64>().ok()?),
        None => (digits, 0),
    };
    let (int, frac) = mantissa.split_once('.').unwrap_or((mantissa, ""));
    let all = format!("{int}{frac}");
    if !all.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let trimmed = all.trim_start_matches('0');
    let point = int.len() as i64 + exp - (all.len() - trimmed.len()) as i64;
    let trimmed = trimmed.trim_end_matches('0');
    if trimmed.is_empty() {
        return Some((false, String::new(), 0));
    }
    Some((neg, trimmed.to_owned(), point))
}

/// Order of two key values of `kind` as both sides sort them (integers by value, the rest by
/// their bytes, which is SQLite's BINARY collation and Postgres's `COLLATE "C"`).
pub fn key_order(kind: Kind, a: &str, b: &str) -> std::cmp::Ordering {
    if kind.key_compares_as_text() {
        a.as_bytes().cmp(b.as_bytes())
    } else {
        match (a.parse::<i64>(), b.parse::<i64>()) {
            (Ok(x), Ok(y)) => x.cmp(&y),
            _ => a.cmp(b),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rusqlite::types::ValueRef::{Blob, Integer, Null, Real, Text};

    fn conv(type_name: &str, v: ValueRef<'_>) -> Result<Option<String>, String> {
        convert(pg_type(type_name).0, v)
    }

    #[test]
    fn declared_types_map_by_name_then_by_affinity() {
        for (declared, pg) in [
            ("INTEGER", "bigint"),
            ("int", "bigint"),
            ("BIGINT", "bigint"),
            ("UNSIGNED BIG INT", "bigint"),
            ("REAL", "double precision"),
            ("DOUBLE", "double precision"),
            ("FLOAT", "double precision"),
            ("TEXT", "text"),
            ("VARCHAR(40)", "character varying(40)"),
            ("CLOB", "text"),
            ("", "text"),
            ("BLOB", "bytea"),
            ("NUMERIC", "numeric"),
            ("DECIMAL(10,2)", "numeric(10,2)"),
            ("BOOLEAN", "boolean"),
            ("DATE", "date"),
            ("DATETIME", "timestamp without time zone"),
            ("TIMESTAMP", "timestamp without time zone"),
            ("TIMESTAMP WITH TIME ZONE", "timestamp with time zone"),
            ("UUID", "uuid"),
            ("JSON", "jsonb"),
            ("money", "numeric"),
        ] {
            assert_eq!(pg_type(declared).1, pg, "{declared}");
        }
        // Destination spellings.
        assert_eq!(
            Kind::of("integer"),
            Kind::Int {
                max: i32::MAX as i64
            }
        );
        assert_eq!(Kind::of("TIMESTAMP WITH TIME ZONE"), Kind::TimestampTz);
        assert_eq!(
            Kind::of("character varying(5)"),
            Kind::Text { max: Some(5) }
        );
        assert_eq!(Kind::of("VARCHAR"), Kind::Text { max: None });
        assert_eq!(Kind::of("DOUBLE"), Kind::Float);
    }

    #[test]
    fn values_that_fit_become_postgres_text() {
        assert_eq!(conv("INTEGER", Integer(-5)), Ok(Some("-5".into())));
        assert_eq!(conv("INTEGER", Null), Ok(None));
        assert_eq!(conv("INTEGER", Text(b" 42 ")), Ok(Some("42".into())));
        assert_eq!(
            conv("REAL", Real(0.5657108450925572)),
            Ok(Some("0.5657108450925572".into()))
        );
        assert_eq!(
            conv("REAL", Real(f64::INFINITY)),
            Ok(Some("Infinity".into()))
        );
        assert_eq!(conv("DECIMAL(10,2)", Real(1.1)), Ok(Some("1.1".into())));
        assert_eq!(
            conv("DECIMAL(10,2)", Text(b"12345678.90")),
            Ok(Some("12345678.90".into()))
        );
        assert_eq!(conv("BOOLEAN", Integer(1)), Ok(Some("t".into())));
        assert_eq!(conv("BOOLEAN", Text(b"False")), Ok(Some("f".into())));
        assert_eq!(
            conv("DATE", Text(b"2024-02-29")),
            Ok(Some("2024-02-29".into()))
        );
        assert_eq!(
            conv(
                "TIMESTAMP WITH TIME ZONE",
                Text(b"2021-06-16 20:14:09.221838+00")
            ),
            Ok(Some("2021-06-16 20:14:09.221838+00:00".into()))
        );
        assert_eq!(
            conv("timestamptz", Text(b"2021-06-16T20:14:09Z")),
            Ok(Some("2021-06-16 20:14:09+00:00".into()))
        );
        assert_eq!(
            conv("DATETIME", Text(b"2021-06-16 20:14")),
            Ok(Some("2021-06-16 20:14:00".into()))
        );
        assert_eq!(
            conv("UUID", Text(b"{6A1F0C2E-0D4B-4F0A-9C5E-1B2C3D4E5F60}")),
            Ok(Some("6a1f0c2e-0d4b-4f0a-9c5e-1b2c3d4e5f60".into()))
        );
        assert_eq!(conv("BLOB", Blob(&[0, 255])), Ok(Some("\\x00ff".into())));
        assert_eq!(conv("TEXT", Integer(7)), Ok(Some("7".into())));
        assert_eq!(
            conv("JSON", Text(b"{\"a\": [1]}")),
            Ok(Some("{\"a\": [1]}".into()))
        );
        assert_eq!(
            conv("VARCHAR(3)", Text("héé".as_bytes())),
            Ok(Some("héé".into()))
        );
    }

    #[test]
    fn values_that_do_not_fit_are_refused_never_rounded() {
        for (declared, value) in [
            ("INTEGER", Text(b"abc")),
            ("INTEGER", Real(1.5)),
            ("REAL", Text(b"x")),
            ("REAL", Integer(i64::MAX)),
            ("DECIMAL(10,2)", Text(b"1.005")),
            ("DECIMAL(4,2)", Integer(100)),
            ("DECIMAL(10,2)", Text(b"ten")),
            ("BOOLEAN", Integer(2)),
            ("DATE", Text(b"2023-02-29")),
            ("DATE", Integer(20230101)),
            ("DATETIME", Text(b"yesterday")),
            ("DATETIME", Text(b"2021-06-16 20:14:09+03")),
            ("DATETIME", Text(b"2021-06-16 20:14:09.1234567")),
            ("TIMESTAMPTZ", Text(b"2021-06-16 25:00:00")),
            ("UUID", Text(b"not-a-uuid")),
            ("JSON", Text(b"{oops")),
            ("VARCHAR(2)", Text(b"abc")),
            ("TEXT", Blob(&[1])),
            ("TEXT", Text(b"a\0b")),
        ] {
            assert!(conv(declared, value).is_err(), "{declared} {value:?}");
        }
        assert_eq!(
            convert(Kind::of("smallint"), Integer(40_000)).unwrap_err(),
            "out of the column's integer range (±32767)"
        );
    }

    #[test]
    fn values_compare_by_meaning() {
        let tz = Kind::TimestampTz;
        assert!(same(
            tz,
            "2021-06-16 20:14:09.221838+00:00",
            "2021-06-16 20:14:09.221838+00"
        ));
        assert!(same(
            tz,
            "2021-06-16 23:14:09+03:00",
            "2021-06-16 20:14:09+00"
        ));
        assert!(!same(
            tz,
            "2021-06-16 20:14:09+00:00",
            "2021-06-16 20:14:10+00"
        ));
        assert!(same(Kind::Bool, "t", "true"));
        assert!(!same(Kind::Bool, "t", "f"));
        let num = Kind::Numeric {
            precision: Some(10),
            scale: Some(2),
        };
        assert!(same(num, "1.1", "1.10"));
        assert!(same(num, "-0.50", "-.5"));
        assert!(!same(num, "1.1", "1.01"));
        assert!(same(Kind::Float, "1e20", "100000000000000000000"));
        assert!(same(
            Kind::Json,
            "{\"a\":1, \"b\":2}",
            "{\"b\": 2, \"a\": 1}"
        ));
        assert!(same(
            Kind::Uuid,
            "6A1F0C2E0D4B4F0A9C5E1B2C3D4E5F60",
            "6a1f0c2e-0d4b-4f0a-9c5e-1b2c3d4e5f60"
        ));
        assert!(!same(Kind::Text { max: None }, "a", "a "));
    }

    #[test]
    fn integer_keys_order_by_value() {
        let int = Kind::Int { max: i64::MAX };
        assert!(key_order(int, "9", "10").is_lt());
        assert!(key_order(Kind::Text { max: None }, "9", "10").is_gt());
    }
}
