//! Two spellings of a SQLite column's value compared by meaning: what the file holds
//! (converted by `types`) and what a destination prints back for the same column. A diff pass
//! and `cdc verify` call values equal only when they are the same value, and order keys the
//! way both sides sort them.

use super::types::{parse_timestamp, Kind};

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
        Kind::Date | Kind::Text { .. } | Kind::AnyText => false,
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
