//! The URL forms every layer reads: a source's scheme (a SQLite file or a Postgres
//! connection string, whose rules are [`crate::conninfo`]'s), file URLs, percent-encoding.
//! A destination's URL is its driver's to parse (`destination::registry`), in its folder.

use std::path::PathBuf;

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

/// The one place a source URL's scheme is told.
pub fn source_url(url: &str) -> Result<SourceUrl, String> {
    match sqlite_path(url) {
        Some(path) => path.map(SourceUrl::Sqlite),
        None => Ok(SourceUrl::Postgres),
    }
}

/// A `sqlite:` URL's file (`sqlite:RELATIVE/PATH`, `sqlite:///ABSOLUTE/PATH`), or `None` for
/// any other URL.
fn sqlite_path(url: &str) -> Option<Result<PathBuf, String>> {
    file_path(url, "sqlite", "SQLite", "/var/lib/app/db.sqlite")
}

/// `SCHEME:RELATIVE/PATH` or `SCHEME:///ABSOLUTE/PATH`; `SCHEME://host/...` is refused (a
/// file URL names no host).
pub fn file_path(
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
        assert!(sqlite_path("sqlite://host/app.db").unwrap().is_err());
        assert!(sqlite_path("sqlite:")
            .unwrap()
            .unwrap_err()
            .contains("sqlite:///var/lib/app/db.sqlite"));
        assert!(sqlite_path("postgresql://h/db").is_none());
        assert!(sqlite_path("sqlitex:a.db").is_none());
    }

    #[test]
    fn every_scheme_is_told_in_one_place() {
        assert_eq!(
            source_url("sqlite:app.db"),
            Ok(SourceUrl::Sqlite("app.db".into()))
        );
        assert_eq!(source_url("host=h dbname=d"), Ok(SourceUrl::Postgres));
        assert!(source_url("sqlite:").is_err());
    }
}
