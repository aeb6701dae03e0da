//! `clickhouse://USER@HOST:PORT/DATABASE` destination URLs.
//!
//! HTTP interface, port 8123 by default; `clickhouses://` or `?secure=true` for HTTPS (port
//! 8443 by default, `?sslrootcert=FILE` for a private CA, else the system's roots). The
//! password comes from `CDC_DESTINATION_PASSWORD` or `destination.password_file` (or the URL,
//! discouraged), as for Postgres. `?timeout=SECONDS` bounds one statement (600 by default);
//! a statement that runs longer counts as a lost connection and is retried.

use std::path::PathBuf;

use crate::conninfo::Secret;
use crate::endpoint::PercentError;

/// Seconds a statement may take unless the URL says otherwise: long enough for a big INSERT
/// or a merge-bound DELETE on a loaded server.
pub const DEFAULT_TIMEOUT_S: u64 = 600;

/// A parsed ClickHouse URL.
#[derive(Clone, PartialEq, Eq)]
pub struct ClickHouseUrl {
    pub secure: bool,
    pub host: String,
    pub port: u16,
    pub user: String,
    pub password: Option<Secret>,
    pub database: String,
    pub root_cert: Option<PathBuf>,
    /// How long one statement may take before the connection counts as lost (and the batch
    /// is retried): `?timeout=SECONDS`, 600 by default.
    pub timeout_s: u64,
}

impl std::fmt::Debug for ClickHouseUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The password never prints.
        write!(
            f,
            "{}://{}@{}:{}/{}",
            if self.secure {
                "clickhouses"
            } else {
                "clickhouse"
            },
            self.user,
            self.host,
            self.port,
            self.database
        )
    }
}

impl ClickHouseUrl {
    /// Whether `url` is a ClickHouse URL at all.
    pub fn is_clickhouse(url: &str) -> bool {
        url.starts_with("clickhouse://") || url.starts_with("clickhouses://")
    }

    pub fn parse(url: &str) -> Result<ClickHouseUrl, String> {
        let (mut secure, rest) = if let Some(r) = url.strip_prefix("clickhouses://") {
            (true, r)
        } else if let Some(r) = url.strip_prefix("clickhouse://") {
            (false, r)
        } else {
            return Err("a ClickHouse URL starts with clickhouse:// or clickhouses://".into());
        };
        let (rest, query) = rest.split_once('?').unwrap_or((rest, ""));
        let (authority, database) = rest.split_once('/').unwrap_or((rest, ""));
        let database = decode(database)?;
        if database.is_empty() || database.contains('/') {
            return Err(
                "name the database: clickhouse://USER@HOST:PORT/DATABASE (e.g. .../analytics)"
                    .into(),
            );
        }
        let (userinfo, hostport) = match authority.rsplit_once('@') {
            Some((u, h)) => (Some(u), h),
            None => (None, authority),
        };
        let (user, password) = match userinfo {
            Some(u) => match u.split_once(':') {
                Some((u, p)) => (decode(u)?, Some(Secret::new(decode(p)?))),
                None => (decode(u)?, None),
            },
            None => ("default".to_owned(), None),
        };
        let mut root_cert = None;
        let mut timeout_s = DEFAULT_TIMEOUT_S;
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            match k {
                "secure" => {
                    secure = match v {
                        "true" | "1" => true,
                        "false" | "0" => secure,
                        _ => return Err(format!("secure={v}: use secure=true or secure=false")),
                    }
                }
                "sslrootcert" => root_cert = Some(PathBuf::from(decode(v)?)),
                "timeout" => {
                    timeout_s = v.parse().ok().filter(|s| *s > 0).ok_or_else(|| {
                        format!("timeout={v}: give whole seconds, e.g. timeout=600")
                    })?
                }
                _ => {
                    return Err(format!(
                        "unknown parameter {k:?}: a ClickHouse URL takes secure, sslrootcert and timeout"
                    ))
                }
            }
        }
        let default_port = if secure { 8443 } else { 8123 };
        let (host, port) = match hostport.rsplit_once(':') {
            Some((h, p)) if !h.ends_with(']') || h.starts_with('[') => (
                h.trim_matches(|c| c == '[' || c == ']').to_owned(),
                p.parse::<u16>()
                    .map_err(|_| format!("port {p:?} is not a number from 1 to 65535"))?,
            ),
            _ => (hostport.to_owned(), default_port),
        };
        if host.is_empty() {
            return Err("name the host: clickhouse://USER@HOST:PORT/DATABASE".into());
        }
        Ok(ClickHouseUrl {
            secure,
            host,
            port,
            user,
            password,
            database,
            root_cert,
            timeout_s,
        })
    }
}

fn decode(s: &str) -> Result<String, String> {
    crate::endpoint::percent_decode(s).map_err(|e| match e {
        PercentError::BadEscape => format!("bad percent-escape in {s:?}"),
        PercentError::NotUtf8 => format!("{s:?} decodes to invalid UTF-8"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse_with_defaults_and_refuse_what_is_missing() {
        let u = ClickHouseUrl::parse("clickhouse://cdc@ch.example:9000/analytics").unwrap();
        assert_eq!(
            (
                u.secure,
                u.host.as_str(),
                u.port,
                u.user.as_str(),
                u.database.as_str()
            ),
            (false, "ch.example", 9000, "cdc", "analytics")
        );
        let u = ClickHouseUrl::parse("clickhouse://ch/db").unwrap();
        assert_eq!((u.port, u.user.as_str()), (8123, "default"));
        let u = ClickHouseUrl::parse("clickhouses://u@ch/db").unwrap();
        assert_eq!((u.secure, u.port), (true, 8443));
        let u = ClickHouseUrl::parse("clickhouse://u:p%40ss@ch/db?secure=true&sslrootcert=/ca.pem")
            .unwrap();
        assert_eq!((u.secure, u.port), (true, 8443));
        assert_eq!(u.password.as_ref().map(Secret::expose), Some("p@ss"));
        assert_eq!(u.root_cert, Some(PathBuf::from("/ca.pem")));
        assert!(
            !format!("{u:?}").contains("p@ss"),
            "the password never prints"
        );
        assert!(ClickHouseUrl::parse("clickhouse://ch").is_err());
        assert!(ClickHouseUrl::parse("clickhouse://ch:x/db").is_err());
        assert!(ClickHouseUrl::parse("clickhouse://ch/db?color=red").is_err());
    }

    #[test]
    fn the_statement_timeout_is_600_seconds_unless_the_url_says() {
        assert_eq!(
            ClickHouseUrl::parse("clickhouse://ch/db")
                .unwrap()
                .timeout_s,
            600
        );
        assert_eq!(
            ClickHouseUrl::parse("clickhouse://ch/db?timeout=5")
                .unwrap()
                .timeout_s,
            5
        );
        for bad in ["0", "-1", "1.5", "", "ten"] {
            let e = ClickHouseUrl::parse(&format!("clickhouse://ch/db?timeout={bad}")).unwrap_err();
            assert!(e.contains("whole seconds"), "{bad}: {e}");
        }
    }
}
