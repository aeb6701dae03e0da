//! Connection strings, as libpq reads them: `postgresql://user:pw@host:5432/db?sslmode=require`
//! or `host=... port=... dbname=...`.
//!
//! We parse them ourselves rather than with `tokio_postgres::Config` because the replication
//! connection needs the same settings and because tokio-postgres rejects `sslmode=verify-ca`
//! and `verify-full`, which a production CDC tool must support. **A `ConnInfo` never prints its
//! password**: `Display` and `Debug` both redact it, so it is safe to log.

use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

/// A password or other secret. `Debug` shows `***`; there is no `Display`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wrap a secret value.
    pub fn new(s: impl Into<String>) -> Self {
        Secret(s.into())
    }

    /// The secret itself, for the one place that must send it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// TLS policy, with libpq's meanings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SslMode {
    /// Never use TLS.
    Disable,
    /// Use TLS when the server offers it, without checking its certificate.
    #[default]
    Prefer,
    /// Always use TLS; check the certificate only when a root certificate is configured.
    Require,
    /// Always use TLS and check that a trusted CA signed the server's certificate.
    VerifyCa,
    /// As `VerifyCa`, and check that the certificate names the host we connected to.
    VerifyFull,
}

impl SslMode {
    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "disable" => SslMode::Disable,
            "prefer" | "allow" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            _ => return None,
        })
    }

    fn as_str(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }
}

/// SCRAM channel binding (`tls-server-end-point`), with libpq's meanings: it ties the
/// password exchange to this TLS session, so a man in the middle holding another certificate
/// cannot relay it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ChannelBinding {
    /// Never bind.
    Disable,
    /// Bind when TLS is on and the server offers SCRAM-SHA-256-PLUS.
    #[default]
    Prefer,
    /// Refuse to authenticate without binding.
    Require,
}

/// Everything needed to open a connection to one Postgres server.
#[derive(Clone, PartialEq, Eq)]
pub struct ConnInfo {
    /// Host name, IP address, or a Unix-socket directory (starts with `/`).
    pub host: String,
    pub port: u16,
    pub user: String,
    pub password: Option<Secret>,
    pub dbname: String,
    pub sslmode: SslMode,
    /// Trusted root certificates (PEM file), or `system` for the platform's store.
    pub sslrootcert: Option<PathBuf>,
    /// Client certificate and key (PEM files) for certificate authentication.
    pub sslcert: Option<PathBuf>,
    pub sslkey: Option<PathBuf>,
    pub channel_binding: ChannelBinding,
    pub connect_timeout: Option<Duration>,
    pub application_name: Option<String>,
}

/// Why a connection string could not be read. Never contains the password.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConnInfoError {
    #[error("connection string is empty")]
    Empty,
    #[error("unknown connection parameter {0:?}")]
    UnknownParameter(String),
    #[error("invalid value for connection parameter {key}: {reason}")]
    InvalidValue { key: String, reason: String },
    #[error("malformed connection string: {0}")]
    Malformed(String),
}

/// Whether `s` is a libpq connection string — a `postgresql://` or `postgres://` URL,
/// `key=value` pairs, or nothing (libpq's environment then says everything) — and not a URL of
/// another scheme (`duckdb:…`, `clickhouse://…`).
pub fn is_connection_string(s: &str) -> bool {
    let t = s.trim();
    if t.starts_with("postgresql://") || t.starts_with("postgres://") {
        return true;
    }
    // RFC 3986: a scheme is a letter, then letters, digits, `+`, `-` or `.`, then `:`. A
    // key=value string has an `=` (or a space) before any colon it holds.
    match t.split_once(':') {
        Some((scheme, _)) => {
            !(scheme.starts_with(|c: char| c.is_ascii_alphabetic())
                && scheme
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c)))
        }
        None => true,
    }
}

impl ConnInfo {
    /// Parse a libpq-style URL or key=value string.
    pub fn parse(s: &str) -> Result<Self, ConnInfoError> {
        let s = s.trim();
        if s.is_empty() {
            return Err(ConnInfoError::Empty);
        }
        let pairs = if let Some(rest) = s
            .strip_prefix("postgresql://")
            .or_else(|| s.strip_prefix("postgres://"))
        {
            parse_url(rest)?
        } else {
            parse_key_values(s)?
        };
        let mut b = Builder::default();
        for (k, v) in pairs {
            b.set(&k, v)?;
        }
        b.finish()
    }

    /// Whether `host` names a Unix-socket directory.
    pub fn is_unix_socket(&self) -> bool {
        self.host.starts_with('/')
    }

    /// Settings for a stock `tokio-postgres` connection (TLS is layered on by `crate::pg`).
    pub fn to_tokio_postgres(&self) -> tokio_postgres::Config {
        let mut c = tokio_postgres::Config::new();
        if self.is_unix_socket() {
            c.host_path(&self.host);
        } else {
            c.host(&self.host);
        }
        c.port(self.port).user(&self.user).dbname(&self.dbname);
        if let Some(p) = &self.password {
            c.password(p.expose());
        }
        if let Some(t) = self.connect_timeout {
            c.connect_timeout(t);
        }
        c.application_name(self.application_name.as_deref().unwrap_or("cdc"));
        c.ssl_mode(match self.sslmode {
            SslMode::Disable => tokio_postgres::config::SslMode::Disable,
            SslMode::Prefer => tokio_postgres::config::SslMode::Prefer,
            _ => tokio_postgres::config::SslMode::Require,
        });
        c.channel_binding(match self.channel_binding {
            ChannelBinding::Disable => tokio_postgres::config::ChannelBinding::Disable,
            ChannelBinding::Prefer => tokio_postgres::config::ChannelBinding::Prefer,
            ChannelBinding::Require => tokio_postgres::config::ChannelBinding::Require,
        });
        c
    }
}

/// A URL-shaped description without the password, safe for logs and `cdc status`.
impl fmt::Display for ConnInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let host = if self.host.contains(':') {
            format!("[{}]", self.host)
        } else {
            self.host.clone()
        };
        write!(
            f,
            "postgresql://{}@{}:{}/{}?sslmode={}",
            self.user,
            host,
            self.port,
            self.dbname,
            self.sslmode.as_str()
        )
    }
}

impl fmt::Debug for ConnInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "ConnInfo({self}, password: {})",
            if self.password.is_some() {
                "***"
            } else {
                "none"
            }
        )
    }
}

#[derive(Default)]
struct Builder {
    host: Option<String>,
    port: Option<u16>,
    user: Option<String>,
    password: Option<Secret>,
    dbname: Option<String>,
    sslmode: Option<SslMode>,
    sslrootcert: Option<PathBuf>,
    sslcert: Option<PathBuf>,
    sslkey: Option<PathBuf>,
    channel_binding: Option<ChannelBinding>,
    connect_timeout: Option<Duration>,
    application_name: Option<String>,
}

impl Builder {
    fn set(&mut self, key: &str, value: String) -> Result<(), ConnInfoError> {
        let invalid = |reason: &str| ConnInfoError::InvalidValue {
            key: key.to_owned(),
            reason: reason.to_owned(),
        };
        match key {
            "host" | "hostaddr" => {
                if value.contains(',') {
                    return Err(invalid("several hosts are not supported; name one server"));
                }
                self.host = Some(value)
            }
            "port" => {
                self.port = Some(
                    value
                        .parse()
                        .map_err(|_| invalid("expected a port number"))?,
                )
            }
            "user" => self.user = Some(value),
            "password" => self.password = Some(Secret(value)),
            "dbname" => self.dbname = Some(value),
            "sslmode" => {
                self.sslmode = Some(SslMode::parse(&value).ok_or_else(|| {
                    invalid("expected disable, prefer, require, verify-ca or verify-full")
                })?)
            }
            "sslrootcert" => self.sslrootcert = Some(value.into()),
            "sslcert" => self.sslcert = Some(value.into()),
            "sslkey" => self.sslkey = Some(value.into()),
            "channel_binding" => {
                self.channel_binding = Some(match value.as_str() {
                    "disable" => ChannelBinding::Disable,
                    "prefer" => ChannelBinding::Prefer,
                    "require" => ChannelBinding::Require,
                    _ => return Err(invalid("expected disable, prefer or require")),
                })
            }
            "connect_timeout" => {
                let secs: u64 = value
                    .parse()
                    .map_err(|_| invalid("expected whole seconds"))?;
                // libpq: zero means wait forever.
                self.connect_timeout = (secs > 0).then(|| Duration::from_secs(secs));
            }
            "application_name" => self.application_name = Some(value),
            // Accepted for compatibility with existing libpq strings; they do not change behaviour.
            "client_encoding"
            | "options"
            | "target_session_attrs"
            | "gssencmode"
            | "keepalives" => {}
            other => return Err(ConnInfoError::UnknownParameter(other.to_owned())),
        }
        Ok(())
    }

    fn finish(self) -> Result<ConnInfo, ConnInfoError> {
        let user = match self.user {
            Some(u) => u,
            None => std::env::var("PGUSER")
                .or_else(|_| std::env::var("USER"))
                .unwrap_or_else(|_| "postgres".into()),
        };
        Ok(ConnInfo {
            host: self
                .host
                .filter(|h| !h.is_empty())
                .unwrap_or_else(|| "localhost".into()),
            port: self.port.unwrap_or(5432),
            dbname: self
                .dbname
                .filter(|d| !d.is_empty())
                .unwrap_or_else(|| user.clone()),
            user,
            password: self.password,
            sslmode: self.sslmode.unwrap_or_default(),
            sslrootcert: self.sslrootcert,
            sslcert: self.sslcert,
            sslkey: self.sslkey,
            channel_binding: self.channel_binding.unwrap_or_default(),
            connect_timeout: self.connect_timeout,
            application_name: self.application_name,
        })
    }
}

fn percent_decode(s: &str, what: &str) -> Result<String, ConnInfoError> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or_else(|| {
                    ConnInfoError::Malformed(format!("bad percent-encoding in {what}"))
                })?;
            out.push(hex);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out)
        .map_err(|_| ConnInfoError::Malformed(format!("{what} is not valid UTF-8")))
}

/// `[user[:password]@][host][:port][/dbname][?k=v&...]`, after the scheme.
fn parse_url(rest: &str) -> Result<Vec<(String, String)>, ConnInfoError> {
    let mut pairs = Vec::new();
    let (main, query) = rest.split_once('?').unwrap_or((rest, ""));
    let (authority, path) = main.split_once('/').unwrap_or((main, ""));
    // The password may itself contain '@' when not encoded: the last '@' ends the user info.
    let (userinfo, hostport) = match authority.rfind('@') {
        Some(at) => (Some(&authority[..at]), &authority[at + 1..]),
        None => (None, authority),
    };
    if let Some(ui) = userinfo {
        let (user, password) = ui.split_once(':').map_or((ui, None), |(u, p)| (u, Some(p)));
        if !user.is_empty() {
            pairs.push(("user".into(), percent_decode(user, "user")?));
        }
        if let Some(p) = password {
            pairs.push(("password".into(), percent_decode(p, "password")?));
        }
    }
    let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
        let (h, after) = v6
            .split_once(']')
            .ok_or_else(|| ConnInfoError::Malformed("unclosed '[' in IPv6 host".into()))?;
        (h, after.strip_prefix(':'))
    } else {
        match hostport.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (hostport, None),
        }
    };
    if !host.is_empty() {
        pairs.push(("host".into(), percent_decode(host, "host")?));
    }
    if let Some(p) = port.filter(|p| !p.is_empty()) {
        pairs.push(("port".into(), p.to_owned()));
    }
    if !path.is_empty() {
        pairs.push(("dbname".into(), percent_decode(path, "database name")?));
    }
    for kv in query.split('&').filter(|kv| !kv.is_empty()) {
        let (k, v) = kv.split_once('=').ok_or_else(|| {
            ConnInfoError::Malformed(format!("query parameter {kv:?} has no '='"))
        })?;
        pairs.push((
            percent_decode(k, "parameter name")?,
            percent_decode(v, "parameter value")?,
        ));
    }
    Ok(pairs)
}

/// `key=value key='quoted \' value'`.
fn parse_key_values(s: &str) -> Result<Vec<(String, String)>, ConnInfoError> {
    let mut pairs = Vec::new();
    let mut chars = s.chars().peekable();
    loop {
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.peek().is_none() {
            return Ok(pairs);
        }
        let mut key = String::new();
        while let Some(c) = chars.next_if(|c| *c != '=' && !c.is_whitespace()) {
            key.push(c);
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.next() != Some('=') {
            return Err(ConnInfoError::Malformed(format!(
                "expected '=' after {key:?}"
            )));
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        let mut value = String::new();
        if chars.next_if_eq(&'\'').is_some() {
            loop {
                match chars.next() {
                    Some('\\') => value.push(chars.next().ok_or_else(|| {
                        ConnInfoError::Malformed("string ends after '\\'".into())
                    })?),
                    Some('\'') => break,
                    Some(c) => value.push(c),
                    None => {
                        return Err(ConnInfoError::Malformed(format!(
                            "unterminated quoted value for {key:?}"
                        )))
                    }
                }
            }
        } else {
            while let Some(c) = chars.next_if(|c| !c.is_whitespace()) {
                if c == '\\' {
                    value.push(chars.next().ok_or_else(|| {
                        ConnInfoError::Malformed("string ends after '\\'".into())
                    })?);
                } else {
                    value.push(c);
                }
            }
        }
        pairs.push((key, value));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn libpq_strings_are_told_from_other_schemes() {
        for yes in [
            "",
            "  ",
            "postgresql://h/db",
            "postgres://u@h",
            "host=h dbname=d",
            "host=::1 port=5",
        ] {
            assert!(is_connection_string(yes), "{yes:?}");
        }
        for no in [
            "duckdb:a.duckdb",
            "clickhouse://h/d",
            "snowflake://u@a/D/S",
            "sqlite:x",
            "mysql://h",
        ] {
            assert!(!is_connection_string(no), "{no:?}");
        }
    }

    #[test]
    fn channel_binding_takes_libpqs_values() {
        assert_eq!(
            ConnInfo::parse("host=h").unwrap().channel_binding,
            ChannelBinding::Prefer
        );
        assert_eq!(
            ConnInfo::parse("postgresql://u@h/d?channel_binding=require")
                .unwrap()
                .channel_binding,
            ChannelBinding::Require
        );
        assert!(matches!(
            ConnInfo::parse("host=h channel_binding=always"),
            Err(ConnInfoError::InvalidValue { key, .. }) if key == "channel_binding"
        ));
    }

    #[test]
    fn parses_a_full_url() {
        let c = ConnInfo::parse("postgresql://app%40corp:p%2Fw@db.example:6432/sales?sslmode=verify-full&sslrootcert=/ca.pem&connect_timeout=7").unwrap();
        assert_eq!(c.user, "app@corp");
        assert_eq!(c.password.as_ref().unwrap().expose(), "p/w");
        assert_eq!(
            (c.host.as_str(), c.port, c.dbname.as_str()),
            ("db.example", 6432, "sales")
        );
        assert_eq!(c.sslmode, SslMode::VerifyFull);
        assert_eq!(c.sslrootcert, Some(PathBuf::from("/ca.pem")));
        assert_eq!(c.connect_timeout, Some(Duration::from_secs(7)));
    }

    #[test]
    fn parses_ipv6_and_defaults() {
        let c = ConnInfo::parse("postgres://u@[::1]/").unwrap();
        assert_eq!(
            (c.host.as_str(), c.port, c.dbname.as_str()),
            ("::1", 5432, "u")
        );
        assert_eq!(c.sslmode, SslMode::Prefer);
        assert_eq!(c.to_string(), "postgresql://u@[::1]:5432/u?sslmode=prefer");
    }

    #[test]
    fn parses_key_value_strings_with_quotes() {
        let c =
            ConnInfo::parse(r"host=/tmp port = 5433 user=bob password='it\'s a secret' dbname=x")
                .unwrap();
        assert!(c.is_unix_socket());
        assert_eq!(c.port, 5433);
        assert_eq!(c.password.unwrap().expose(), "it's a secret");
    }

    #[test]
    fn never_prints_the_password() {
        let c = ConnInfo::parse("postgresql://u:hunter2@h/d").unwrap();
        assert!(!format!("{c}").contains("hunter2"));
        assert!(!format!("{c:?}").contains("hunter2"));
        assert!(!format!("{:?}", c.password).contains("hunter2"));
    }

    #[test]
    fn rejects_bad_input_with_named_problems() {
        assert_eq!(ConnInfo::parse("  "), Err(ConnInfoError::Empty));
        assert_eq!(
            ConnInfo::parse("hots=x"),
            Err(ConnInfoError::UnknownParameter("hots".into()))
        );
        assert!(
            matches!(ConnInfo::parse("sslmode=verify"), Err(ConnInfoError::InvalidValue { key, .. }) if key == "sslmode")
        );
        assert!(
            matches!(ConnInfo::parse("postgresql://h:notaport/d"), Err(ConnInfoError::InvalidValue { key, .. }) if key == "port")
        );
        assert!(matches!(
            ConnInfo::parse("host='unterminated"),
            Err(ConnInfoError::Malformed(_))
        ));
        assert!(matches!(
            ConnInfo::parse("postgresql://h,h2/d"),
            Err(ConnInfoError::InvalidValue { .. })
        ));
        // An error about a URL never echoes the password back.
        let e = ConnInfo::parse("postgresql://u:s3cret@h/d?bogus=1").unwrap_err();
        assert!(!e.to_string().contains("s3cret"));
    }
}
