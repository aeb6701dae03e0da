//! Identifiers and literals spliced into SQL, per dialect. Every name that reaches a statement
//! goes through one of these: a table called `a"; DROP TABLE b` stays one identifier.

use super::schema::TableSchema;

/// `"name"` with embedded quotes doubled: Postgres, DuckDB and SQLite.
pub fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

/// `'text'` with embedded quotes doubled (standard_conforming_strings is always on in the
/// replication grammar, so backslashes are literal).
pub fn quote_literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// The quoted names of the columns COPY moves, comma-separated.
pub fn column_list(table: &TableSchema) -> String {
    table
        .copied_columns()
        .map(|c| quote_ident(&c.name))
        .collect::<Vec<_>>()
        .join(", ")
}
