use super::*;
use crate::source::sqlite::compare::{key_order, same};
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
    // Instants arrive in UTC, across a day, month and year boundary, fraction kept.
    let tz = |t: &str| convert(Kind::TimestampTz, Text(t.as_bytes()));
    assert_eq!(
        tz("2024-01-01 01:30:00.25+02:00"),
        Ok(Some("2023-12-31 23:30:00.25+00:00".into()))
    );
    assert_eq!(
        tz("2024-02-28 22:00:00-05:30"),
        Ok(Some("2024-02-29 03:30:00+00:00".into()))
    );
    assert_eq!(
        tz("1969-12-31 23:00:00-01:00"),
        Ok(Some("1970-01-01 00:00:00+00:00".into()))
    );
    // A BLOB in a String column is its bytea text; in a text column it is refused.
    assert_eq!(
        convert(Kind::AnyText, Blob(&[0, 255])),
        Ok(Some("\\x00ff".into()))
    );
    assert_eq!(convert(Kind::AnyText, Integer(7)), Ok(Some("7".into())));
    assert!(convert(Kind::Text { max: None }, Blob(&[0])).is_err());
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
