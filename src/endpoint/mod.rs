//! Every URL a user writes, parsed once: which kind of server or file it names and how to
//! reach it. Postgres connection strings are [`crate::conninfo`]'s (libpq's rules); the other
//! schemes are here. Config validation, the commands and the destinations all read these.

pub mod clickhouse;
pub mod snowflake;

use std::path::PathBuf;

use crate::conninfo::ConnInfo;
pub use clickhouse::ClickHouseUrl;
pub use snowflake::SnowflakeUrl;

/// Where `destination.url` points.
#[derive(Debug, Clone)]
pub enum Target {
    Postgres(ConnInfo),
    DuckDb(PathBuf),
    ClickHouse(ClickHouseUrl),
    Snowflake(SnowflakeUrl),
}

/// What `destination.url` (or `--destination`) names, by its scheme. A Postgres connection
/// string is parsed by [`crate::conninfo`] with the environment's defaults, so it carries
/// nothing here.
#[derive(Debug, Clone)]
pub enum DestinationUrl {
    Postgres,
    DuckDb(PathBuf),
    ClickHouse(ClickHouseUrl),
    Snowflake(SnowflakeUrl),
}

/// What `source.url` names, by its scheme.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourceUrl {
    Postgres,
    Sqlite(PathBuf),
}

/// Percent-encoding of a URL part or query value: everything but RFC 3986's unreserved
/// characters. For the URLs cdc writes (from other tools' settings) and the requests it sends.
pub fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The one place a destination URL's scheme is told: the error says what is wrong with a URL
/// of a known scheme.
pub fn destination_url(url: &str) -> Result<DestinationUrl, String> {
    if ClickHouseUrl::is_clickhouse(url) {
        return ClickHouseUrl::parse(url).map(DestinationUrl::ClickHouse);
    }
    if SnowflakeUrl::is_snowflake(url) {
        return SnowflakeUrl::parse(url).map(DestinationUrl::Snowflake);
    }
    match duckdb_path(url) {
        Some(path) => path.map(DestinationUrl::DuckDb),
        None => Ok(DestinationUrl::Postgres),
    }
}

/// The one place a source URL's scheme is told.
pub fn source_url(url: &str) -> Result<SourceUrl, String> {
    match sqlite_path(url) {
        Some(path) => path.map(SourceUrl::Sqlite),
        None => Ok(SourceUrl::Postgres),
    }
}

/// A `duckdb:` URL's file (`duckdb:RELATIVE/PATH`, `duckdb:///ABSOLUTE/PATH`), or `None` for
/// any other URL.
fn duckdb_path(url: &str) -> Option<Result<PathBuf, String>> {
    file_path(url, "duckdb", "DuckDB", "/var/lib/cdc/analytics.duckdb")
}

/// A `sqlite:` URL's file (`sqlite:RELATIVE/PATH`, `sqlite:///ABSOLUTE/PATH`), or `None` for
/// any other URL.
fn sqlite_path(url: &str) -> Option<Result<PathBuf, String>> {
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

    #[test]
    fn every_scheme_is_told_in_one_place() {
        assert!(matches!(
            destination_url("duckdb:a.duckdb"),
            Ok(DestinationUrl::DuckDb(p)) if p == PathBuf::from("a.duckdb")
        ));
        assert!(matches!(
            destination_url("clickhouse://h:8123/db"),
            Ok(DestinationUrl::ClickHouse(_))
        ));
        assert!(matches!(
            destination_url("postgresql://h/db"),
            Ok(DestinationUrl::Postgres)
        ));
        assert!(destination_url("duckdb://host/a").is_err());
        assert_eq!(
            source_url("sqlite:app.db"),
            Ok(SourceUrl::Sqlite("app.db".into()))
        );
        assert_eq!(source_url("host=h dbname=d"), Ok(SourceUrl::Postgres));
        assert!(source_url("sqlite:").is_err());
    }
}
