//! What a column holds, read from a type name in any spelling we meet: SQLite declared types
//! (`VARCHAR(40)`, `DATETIME`, then SQLite's affinity rules), Postgres `format_type` names and
//! DuckDB's. A source whose values are not Postgres's (SQLite) checks each value against the
//! kind of the destination column it goes to; a destination that spells its types otherwise
//! (ClickHouse, Snowflake) reads its own names into kinds (`Destination::value_kind`).

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
    /// A destination column that holds any value as its Postgres text (ClickHouse's `String`,
    /// where a Postgres source's bytea goes too): text, and BLOBs as bytea text (`\x…`).
    AnyText,
}

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
    pub fn key_compares_as_text(self) -> bool {
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
