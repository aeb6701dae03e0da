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
use crate::model::schema::TableSchema;

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
        .map(|c| (c.name.clone(), field_of(&clickhouse_type(c, true))))
        .collect()
}

/// How a value goes into a column of ClickHouse type `t` (`Nullable(…)` or not).
pub fn field_of(t: &str) -> Field {
    let t = t
        .strip_prefix("Nullable(")
        .and_then(|t| t.strip_suffix(')'))
        .unwrap_or(t);
    match t {
        "Bool" => Field::Bool,
        "Date32" => Field::Date,
        "Float32" | "Float64" => Field::Float,
        _ if t.starts_with("DateTime64") => Field::Timestamp,
        _ if t.starts_with("Decimal") => Field::Decimal,
        _ => Field::Verbatim,
    }
}

/// Append one value as a pgoutput message carries it (plain text, not COPY-escaped) as a
/// TSV field.
pub fn push_text(v: &[u8], field: Field, out: &mut Vec<u8>) -> Result<(), &'static str> {
    match field {
        Field::Verbatim => {
            for &b in v {
                match b {
                    b'\\' => out.extend_from_slice(b"\\\\"),
                    b'\t' => out.extend_from_slice(b"\\t"),
                    b'\n' => out.extend_from_slice(b"\\n"),
                    b'\r' => out.extend_from_slice(b"\\r"),
                    b => out.push(b),
                }
            }
            Ok(())
        }
        // The other kinds print no tab, newline or backslash.
        other => convert_value(v, other, out),
    }
}

/// The fields of TSV output, as sent (still escaped, so they can be sent back as they are).
pub fn rows(tsv: &[u8]) -> impl Iterator<Item = Vec<&[u8]>> {
    // Every row ends with a newline; a row of one empty value is an empty line.
    let body = tsv.strip_suffix(b"\n").unwrap_or(tsv);
    body.split(|&b| b == b'\n')
        .take(if tsv.is_empty() { 0 } else { usize::MAX })
        .map(|l| l.split(|&b| b == b'\t').collect())
}

/// A TSV field's text (`None` for `\N`).
pub fn unescape(field: &[u8]) -> Option<String> {
    if field == b"\\N" {
        return None;
    }
    let mut out = Vec::with_capacity(field.len());
    let mut i = 0;
    while i < field.len() {
        if field[i] == b'\\' && i + 1 < field.len() {
            out.push(match field[i + 1] {
                b't' => b'\t',
                b'n' => b'\n',
                b'r' => b'\r',
                b'0' => 0,
                b'b' => 8,
                b'f' => 12,
                other => other,
            });
            i += 2;
        } else {
            out.push(field[i]);
            i += 1;
        }
    }
    Some(String::from_utf8_lossy(&out).into_owned())
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
            // The session's time zone is UTC: a zone, when printed, is `+00` (`+00:00` from
            // a SQLite source's conversion).
            let v = v
                .strip_suffix(b"+00")
                .or_else(|| v.strip_suffix(b"+00:00"))
                .unwrap_or(v);
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
    fn streamed_text_is_escaped_and_output_read_back() {
        let mut out = Vec::new();
        push_text(b"a\tb\nc\\d\re", Field::Verbatim, &mut out).unwrap();
        push_text(b"f", Field::Bool, &mut out).unwrap();
        assert_eq!(out, b"a\\tb\\nc\\\\d\\refalse");
        let tsv = b"1\ta\\tb\t\\N\n2\tx\ty\n";
        let r: Vec<Vec<&[u8]>> = rows(tsv).collect();
        assert_eq!(r.len(), 2);
        assert_eq!(rows(b"\n\n").count(), 2, "rows of one empty value");
        assert_eq!(rows(b"").count(), 0);
        assert_eq!(unescape(r[0][1]).as_deref(), Some("a\tb"));
        assert_eq!(unescape(r[0][2]), None);
        assert_eq!(field_of("Nullable(DateTime64(6, 'UTC'))"), Field::Timestamp);
        assert_eq!(field_of("Nullable(String)"), Field::Verbatim);
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
