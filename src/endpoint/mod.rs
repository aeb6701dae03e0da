//! Every URL a user writes, parsed once: which kind of server or file it names and how to
//! reach it. Postgres connection strings are [`crate::conninfo`]'s (libpq's rules); the other
//! schemes are here. Config validation, the commands and the destinations all read these.

pub mod clickhouse;

use std::path::PathBuf;

use crate::conninfo::ConnInfo;
pub use clickhouse::ClickHouseUrl;

/// Where `destination.url` points.
#[derive(Debug, Clone)]
pub enum Target {
    Postgres(ConnInfo),
    DuckDb(PathBuf),
    ClickHouse(ClickHouseUrl),
}

/// A `duckdb:` URL's file (`duckdb:RELATIVE/PATH`, `duckdb:///ABSOLUTE/PATH`), or `None` for
/// any other URL.
pub fn duckdb_path(url: &str) -> Option<Result<PathBuf, String>> {
    file_path(url, "duckdb", "DuckDB", "/var/lib/cdc/analytics.duckdb")
}

/// A `sqlite:` URL's file (`sqlite:RELATIVE/PATH`, `sqlite:///ABSOLUTE/PATH`), or `None` for
/// any other URL.
pub fn sqlite_path(url: &str) -> Option<Result<PathBuf, String>> {
    file_path(url, "sqlite", "SQLite", "/var/lib/app/db.sqlite")
}

/// `SCHEME:RELATIVE/PATH` or `SCHEME:///ABSOLUTE/PATH`; `SCHEME://host/...` is refused (a
/// file URL names no host).
fn file_path(
    url: &str,
    scheme: &str,
    what: &str,
    example: &str,
) -> Option<Result<PathBuf, String>> {
    let rest = url.trim().strip_prefix(scheme)?.strip_prefix(':')?;
    let path = match rest.strip_prefix("//") {
        Some(abs) if abs.starts_with('/') => abs.to_owned(),
        Some(_) => {
            return Some(Err(format!(
                "{url:?}: a {what} URL is {scheme}:RELATIVE/PATH or {scheme}:///ABSOLUTE/PATH (three slashes)"
            )))
        }
        None => rest.to_owned(),
    };
    if path.is_empty() || path.ends_with('/') {
        return Some(Err(format!(
            "{url:?} names no file: use e.g. {scheme}://{example}"
        )));
    }
    Some(Ok(PathBuf::from(path)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_urls_name_relative_and_absolute_files() {
        assert_eq!(
            sqlite_path("sqlite:db/app.sqlite"),
            Some(Ok("db/app.sqlite".into()))
        );
        assert_eq!(
            sqlite_path("sqlite:///var/app.db"),
            Some(Ok("/var/app.db".into()))
        );
        assert_eq!(duckdb_path("duckdb:a.duckdb"), Some(Ok("a.duckdb".into())));
        assert_eq!(
            duckdb_path("duckdb:///x/a.duckdb"),
            Some(Ok("/x/a.duckdb".into()))
        );
        assert!(sqlite_path("sqlite://host/app.db").unwrap().is_err());
        assert!(sqlite_path("sqlite:")
            .unwrap()
            .unwrap_err()
            .contains("sqlite:///var/lib/app/db.sqlite"));
        assert!(duckdb_path("duckdb:dir/").unwrap().is_err());
        assert!(sqlite_path("postgresql://h/db").is_none());
        assert!(duckdb_path("sqlite:a.db").is_none());
        assert!(sqlite_path("sqlitex:a.db").is_none());
    }
}
