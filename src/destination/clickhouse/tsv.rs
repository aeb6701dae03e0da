//! Postgres `COPY … TO STDOUT` text rows as ClickHouse `TabSeparated` rows, with our version
//! and deleted columns appended.
//!
//! The two formats escape alike (`\t`, `\n`, `\\`, `\N` for NULL), so most values pass through
//! untouched, in one pass over the bytes. The rest are rewritten or refused here, never left
//! for ClickHouse to clamp: booleans (`t` → `true`), timestamps (the `+00` of a UTC session
//! dropped, the column being `DateTime64(6, 'UTC')`), float specials (`Infinity` → `inf`),
//! and dates and times outside ClickHouse's 1900-01-01 … 2299-12-31, `infinity` and BC dates,
//! and `NaN` in a decimal column, which are errors naming the column and value.

use super::types::clickhouse_type;
use crate::snapshot::catalog::TableSchema;

/// How a column's COPY text becomes its ClickHouse text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field {
    Verbatim,
    Bool,
    Date,
    Timestamp,
    Float,
    Decimal,
}

/// The conversion of each copied column of `table`, from its ClickHouse type.
pub fn fields(table: &TableSchema) -> Vec<(String, Field)> {
    table
        .copied_columns()
        .map(|c| {
            let t = clickhouse_type(c, true);
            let f = match t.as_str() {
                "Bool" => Field::Bool,
                "Date32" => Field::Date,
                "Float32" | "Float64" => Field::Float,
                _ if t.starts_with("DateTime64") => Field::Timestamp,
                _ if t.starts_with("Decimal") => Field::Decimal,
                _ => Field::Verbatim,
            };
            (c.name.clone(), f)
        })
        .collect()
}

/// Append the rows of `copy` (whole lines of COPY text) to `out`, each followed by `suffix`
/// (e.g. `\t<version>\t0`). An error names the column and the value.
pub fn convert(
    copy: &[u8],
    fields: &[(String, Field)],
    suffix: &[u8],
    out: &mut Vec<u8>,
) -> Result<usize, String> {
    let mut rows = 0;
    for line in copy.split(|&b| b == b'\n') {
        if line.is_empty() {
            continue;
        }
        for (i, value) in line.split(|&b| b == b'\t').enumerate() {
            let (name, field) = fields
                .get(i)
                .ok_or_else(|| format!("a row with more than {} columns", fields.len()))?;
            if i > 0 {
                out.push(b'\t');
            }
            if value == b"\\N" {
                out.extend_from_slice(value);
                continue;
            }
            convert_value(value, *field, out).map_err(|why| {
                format!("column {name}: {:?} {why}", String::from_utf8_lossy(value))
            })?;
        }
        out.extend_from_slice(suffix);
        out.push(b'\n');
        rows += 1;
    }
    Ok(rows)
}

fn convert_value(v: &[u8], field: Field, out: &mut Vec<u8>) -> Result<(), &'static str> {
    match field {
        Field::Verbatim => {
            // `\v` is the one escape Postgres writes that ClickHouse does not read.
            if v.windows(2).any(|w| w == b"\\v") {
                let mut i = 0;
                while i < v.len() {
                    if v[i] == b'\\' && i + 1 < v.len() {
                        if v[i + 1] == b'v' {
                            out.push(0x0b);
                        } else {
                            out.extend_from_slice(&v[i..i + 2]);
                        }
                        i += 2;
                    } else {
                        out.push(v[i]);
                        i += 1;
                    }
                }
            } else {
                out.extend_from_slice(v);
            }
        }
        Field::Bool => out.extend_from_slice(match v {
            b"t" => b"true",
            b"f" => b"false",
            _ => return Err("is not a boolean"),
        }),
        Field::Float => out.extend_from_slice(match v {
            b"Infinity" => b"inf",
            b"-Infinity" => b"-inf",
            b"NaN" => b"nan",
            _ => v,
        }),
        Field::Decimal => {
            if v == b"NaN" {
                return Err("cannot be stored: ClickHouse decimals have no NaN");
            }
            out.extend_from_slice(v);
        }
        Field::Date => {
            in_range(v)?;
            out.extend_from_slice(v);
        }
        Field::Timestamp => {
            in_range(v)?;
            // The session's time zone is UTC: a zone, when printed, is `+00`.
            let v = v.strip_suffix(b"+00").unwrap_or(v);
            if v.contains(&b'+') || v[10..].contains(&b'-') {
                return Err("has a zone other than UTC (the session should print UTC)");
            }
            out.extend_from_slice(v);
        }
    }
    Ok(())
}

/// Dates and times ClickHouse's Date32 / DateTime64 hold: years 1900 to 2299.
fn in_range(v: &[u8]) -> Result<(), &'static str> {
    if v.starts_with(b"infinity") || v.starts_with(b"-infinity") {
        return Err("is infinite, which ClickHouse dates cannot hold (refused, not clamped)");
    }
    if v.ends_with(b" BC") || v.len() < 10 || v[4] != b'-' {
        return Err("is outside 1900-01-01 … 2299-12-31, which ClickHouse dates hold (refused, not clamped)");
    }
    let year: u32 = std::str::from_utf8(&v[..4])
        .ok()
        .and_then(|y| y.parse().ok())
        .ok_or("is not a date")?;
    if !(1900..=2299).contains(&year) {
        return Err("is outside 1900-01-01 … 2299-12-31, which ClickHouse dates hold (refused, not clamped)");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(kinds: &[Field]) -> Vec<(String, Field)> {
        kinds
            .iter()
            .enumerate()
            .map(|(i, k)| (format!("c{i}"), *k))
            .collect()
    }

    #[test]
    fn rows_pass_through_with_our_columns_and_rewrites() {
        let fields = f(&[
            Field::Verbatim,
            Field::Bool,
            Field::Timestamp,
            Field::Date,
            Field::Float,
            Field::Verbatim,
        ]);
        let copy = b"1\tt\t2024-06-16 20:14:09.221838+00\t2299-12-31\tInfinity\ta\\tb\\\\c\\vd\n\
                     2\t\\N\t1900-01-01 00:00:00\t\\N\tNaN\t\\N\n";
        let mut out = Vec::new();
        assert_eq!(convert(copy, &fields, b"\t42\t0", &mut out), Ok(2));
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "1\ttrue\t2024-06-16 20:14:09.221838\t2299-12-31\tinf\ta\\tb\\\\c\x0bd\t42\t0\n\
             2\t\\N\t1900-01-01 00:00:00\t\\N\tnan\t\\N\t42\t0\n"
        );
    }

    #[test]
    fn values_clickhouse_cannot_hold_are_refused_not_clamped() {
        for (kind, value) in [
            (Field::Date, "1899-12-31"),
            (Field::Date, "2300-01-01"),
            (Field::Date, "0044-03-15 BC"),
            (Field::Timestamp, "infinity"),
            (Field::Timestamp, "-infinity"),
            (Field::Timestamp, "1850-01-01 00:00:00+00"),
            (Field::Decimal, "NaN"),
            (Field::Bool, "x"),
        ] {
            let e = convert(value.as_bytes(), &f(&[kind]), b"", &mut Vec::new()).unwrap_err();
            assert!(e.starts_with("column c0: ") && e.contains(value), "{e}");
        }
        assert!(convert(b"1\t2", &f(&[Field::Verbatim]), b"", &mut Vec::new()).is_err());
    }
}
