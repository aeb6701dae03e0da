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

/// Why a URL part could not be percent-decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PercentError {
    /// A `%` not followed by two hex digits.
    BadEscape,
    /// The decoded bytes are not UTF-8.
    NotUtf8,
}

/// Percent-decoding of a URL part (the inverse of [`percent_encode`]), for every URL cdc reads.
pub fn percent_decode(s: &str) -> Result<String, PercentError> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s
                .get(i + 1..i + 3)
                // from_str_radix alone would take "+f" as a number
                .filter(|h| h.bytes().all(|b| b.is_ascii_hexdigit()))
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or(PercentError::BadEscape)?;
            out.push(hex);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| PercentError::NotUtf8)
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
    fn percent_decoding_inverts_encoding_and_refuses_bad_escapes() {
        let raw = "p@ss w/rd:é%";
        assert_eq!(percent_decode(&percent_encode(raw)).as_deref(), Ok(raw));
        assert_eq!(percent_decode("a%2Fb").as_deref(), Ok("a/b"));
        assert_eq!(percent_decode("100%"), Err(PercentError::BadEscape));
        assert_eq!(percent_decode("%+f"), Err(PercentError::BadEscape));
        assert_eq!(percent_decode("%zz"), Err(PercentError::BadEscape));
        assert_eq!(percent_decode("%ff"), Err(PercentError::NotUtf8));
    }

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
