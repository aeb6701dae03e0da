//! Connection strings, as libpq reads them: `postgresql://user:pw@host:5432/db?sslmode=require`
//! or `host=... port=... dbname=...`, with libpq's conventions for what they leave out: a
//! `service=` (or `PGSERVICE`) section of a service file, then the `PG*` variables, then the
//! defaults; the password file when no password is given; `host=` lists tried in order until one
//! server meets `target_session_attrs`.
//!
//! We parse them ourselves rather than with `tokio_postgres::Config` because the replication
//! connection needs the same settings and because tokio-postgres rejects `sslmode=verify-ca`
//! and `verify-full`, which a production CDC tool must support. **A `ConnInfo` never prints its
//! password**: `Display` and `Debug` both redact it, so it is safe to log.

pub mod passfile;
pub mod service;
mod syntax;
mod target;

use syntax::{parse_key_values, parse_url};
pub use target::{ServerState, TargetSessionAttrs};

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

/// Where a server's socket is looked for when no host is given: Debian's directory, then
/// upstream libpq's.
pub(crate) const DEFAULT_SOCKET_DIRS: &[&str] = &["/var/run/postgresql", "/tmp"];

/// The parameters the `PG*` variables fill when a connection string leaves them out.
const ENV_DEFAULTS: &[(&str, &str)] = &[
    ("host", "PGHOST"),
    ("port", "PGPORT"),
    ("dbname", "PGDATABASE"),
    ("user", "PGUSER"),
    ("password", "PGPASSWORD"),
    ("passfile", "PGPASSFILE"),
    ("sslmode", "PGSSLMODE"),
    ("sslrootcert", "PGSSLROOTCERT"),
    ("sslcert", "PGSSLCERT"),
    ("sslkey", "PGSSLKEY"),
    ("application_name", "PGAPPNAME"),
    ("connect_timeout", "PGCONNECT_TIMEOUT"),
    ("target_session_attrs", "PGTARGETSESSIONATTRS"),
    ("channel_binding", "PGCHANNELBINDING"),
];

/// Where environment variables come from: the process in production, a list in tests.
pub trait Env {
    fn var(&self, name: &str) -> Option<String>;
}

/// The real process environment (an empty variable counts as unset, as libpq counts it).
pub struct ProcessEnv;

impl Env for ProcessEnv {
    fn var(&self, name: &str) -> Option<String> {
        std::env::var(name).ok().filter(|v| !v.is_empty())
    }
}

/// The variables libpq's conventions read, taken once from an [`Env`] so that a connection
/// string resolved later means what it meant when the configuration was loaded. `Debug` names
/// the variables only (`PGPASSWORD` is one).
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Captured(BTreeMap<&'static str, String>);

impl Captured {
    pub fn from_env(env: &dyn Env) -> Self {
        let names = ENV_DEFAULTS.iter().map(|(_, var)| *var).chain([
            "PGSERVICE",
            "PGSERVICEFILE",
            "PGSYSCONFDIR",
            "HOME",
            "USER",
        ]);
        Captured(names.filter_map(|n| Some((n, env.var(n)?))).collect())
    }
}

impl Env for Captured {
    fn var(&self, name: &str) -> Option<String> {
        self.0.get(name).cloned()
    }
}

impl fmt::Debug for Captured {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.0.keys()).finish()
    }
}

impl<const N: usize> Env for [(&str, &str); N] {
    fn var(&self, name: &str) -> Option<String> {
        self.iter()
            .find(|(k, _)| *k == name)
            .map(|(_, v)| (*v).to_owned())
    }
}

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

/// Everything needed to open a connection to a Postgres server.
#[derive(Clone, PartialEq, Eq)]
pub struct ConnInfo {
    /// Host name, IP address, or a Unix-socket directory (starts with `/`): the first (or only)
    /// server.
    pub host: String,
    pub port: u16,
    /// The rest of a `host=` list, tried in order after the first (see [`ConnInfo::candidates`]).
    pub other_hosts: Vec<(String, u16)>,
    pub target_session_attrs: TargetSessionAttrs,
    /// The password file to read when no password is given (`passfile`, `PGPASSFILE`,
    /// `~/.pgpass`).
    pub passfile: Option<PathBuf>,
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
    /// Parse a libpq-style URL or key=value string, filling what it leaves out as libpq does
    /// from the process's environment and files. An empty string is everything left out: the
    /// server `psql` with no arguments would connect to.
    pub fn parse(s: &str) -> Result<Self, ConnInfoError> {
        Self::parse_in(s, &ProcessEnv)
    }

    /// [`ConnInfo::parse`] with the variables (and `HOME`) of `env`.
    pub fn parse_in(s: &str, env: &dyn Env) -> Result<Self, ConnInfoError> {
        let s = s.trim();
        let pairs = if let Some(rest) = s
            .strip_prefix("postgresql://")
            .or_else(|| s.strip_prefix("postgres://"))
        {
            parse_url(rest)?
        } else {
            parse_key_values(s)?
        };
        // The string's own values (the last of a repeated key wins, as in libpq), then the
        // service's, then the variables'.
        let mut given: BTreeMap<String, (String, Option<&'static str>)> = BTreeMap::new();
        for (k, v) in pairs {
            let k = if k == "hostaddr" {
                "host".to_owned()
            } else {
                k
            };
            given.insert(k, (v, None));
        }
        let service = match given.remove("service") {
            Some((name, _)) => Some(name),
            None => env.var("PGSERVICE"),
        };
        if let Some(name) = service.filter(|n| !n.is_empty()) {
            let files = service::files(
                env.var("PGSERVICEFILE"),
                env.var("HOME"),
                env.var("PGSYSCONFDIR"),
            );
            for (k, v) in service::lookup(&name, &files)? {
                let k = if k == "hostaddr" {
                    "host".to_owned()
                } else {
                    k
                };
                given.entry(k).or_insert((v, Some("the service file")));
            }
        }
        for (key, var) in ENV_DEFAULTS {
            if !given.contains_key(*key) {
                if let Some(v) = env.var(var) {
                    given.insert((*key).to_owned(), (v, Some(var)));
                }
            }
        }
        let mut b = Builder::default();
        for (k, (v, from)) in given {
            b.set(&k, v).map_err(|e| match (e, from) {
                (ConnInfoError::InvalidValue { key, reason }, Some(from)) => {
                    ConnInfoError::InvalidValue {
                        key: format!("{key} (from {from})"),
                        reason,
                    }
                }
                (e, _) => e,
            })?;
        }
        b.finish(env)
    }

    /// One `ConnInfo` per server of the host list, in order, each with its password resolved:
    /// the given one, else the password file's line for that server.
    pub fn candidates(&self) -> Vec<ConnInfo> {
        std::iter::once((self.host.clone(), self.port))
            .chain(self.other_hosts.iter().cloned())
            .map(|(host, port)| {
                let mut one = self.clone();
                one.other_hosts.clear();
                one.password = self.password.clone().or_else(|| {
                    let file = self.passfile.as_deref()?;
                    passfile::lookup(
                        file,
                        &passfile::Wanted {
                            host: &host,
                            port,
                            dbname: &self.dbname,
                            user: &self.user,
                        },
                    )
                });
                one.host = host;
                one.port = port;
                one
            })
            .collect()
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
        let mut hosts = format!("{host}:{}", self.port);
        for (h, p) in &self.other_hosts {
            hosts.push_str(&format!(",{h}:{p}"));
        }
        write!(
            f,
            "postgresql://{}@{hosts}/{}?sslmode={}",
            self.user,
            self.dbname,
            self.sslmode.as_str()
        )?;
        if self.target_session_attrs != TargetSessionAttrs::Any {
            write!(
                f,
                "&target_session_attrs={}",
                self.target_session_attrs.as_str()
            )?;
        }
        Ok(())
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
    hosts: Vec<String>,
    ports: Vec<Option<u16>>,
    target_session_attrs: Option<TargetSessionAttrs>,
    passfile: Option<PathBuf>,
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
                self.hosts = value.split(',').map(|h| h.trim().to_owned()).collect()
            }
            "port" => {
                self.ports = value
                    .split(',')
                    .map(|p| match p.trim() {
                        "" => Ok(None),
                        p => p
                            .parse()
                            .map(Some)
                            .map_err(|_| invalid("expected a port number")),
                    })
                    .collect::<Result<_, _>>()?
            }
            "target_session_attrs" => {
                self.target_session_attrs =
                    Some(TargetSessionAttrs::parse(&value).ok_or_else(|| {
                        invalid(
                        "expected any, read-write, read-only, primary, standby or prefer-standby",
                    )
                    })?)
            }
            "passfile" => self.passfile = Some(value.into()),
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
            "client_encoding" | "options" | "gssencmode" | "keepalives" => {}
            other => return Err(ConnInfoError::UnknownParameter(other.to_owned())),
        }
        Ok(())
    }

    fn finish(self, env: &dyn Env) -> Result<ConnInfo, ConnInfoError> {
        // libpq takes the operating-system user; USER names it here.
        let user = match self.user.filter(|u| !u.is_empty()) {
            Some(u) => u,
            None => env.var("USER").unwrap_or_else(|| "postgres".into()),
        };
        let hosts = if self.hosts.is_empty() {
            vec![String::new()]
        } else {
            self.hosts
        };
        let port_of = |i: usize| -> Result<u16, ConnInfoError> {
            match self.ports.len() {
                0 => Ok(None),
                1 => Ok(self.ports[0]),
                n if n == hosts.len() => Ok(self.ports[i]),
                n => Err(ConnInfoError::InvalidValue {
                    key: "port".into(),
                    reason: format!(
                        "{n} ports for {} hosts: give one port for all, or one per host",
                        hosts.len()
                    ),
                }),
            }
            .map(|p| p.unwrap_or(5432))
        };
        let mut servers = Vec::with_capacity(hosts.len());
        for (i, h) in hosts.iter().enumerate() {
            let port = port_of(i)?;
            let host = if h.is_empty() {
                default_host(port)
            } else {
                h.clone()
            };
            servers.push((host, port));
        }
        let (host, port) = servers.remove(0);
        let passfile = passfile::path(self.passfile.as_deref(), env.var("HOME"));
        Ok(ConnInfo {
            host,
            port,
            other_hosts: servers,
            target_session_attrs: self.target_session_attrs.unwrap_or_default(),
            passfile,
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

/// With no host given, libpq connects to the server's socket in its default directory: the
/// first of ours that has a socket for `port`, else TCP to localhost.
fn default_host(port: u16) -> String {
    DEFAULT_SOCKET_DIRS
        .iter()
        .find(|d| std::path::Path::new(&format!("{d}/.s.PGSQL.{port}")).exists())
        .map_or_else(|| "localhost".to_owned(), |d| (*d).to_owned())
}

#[cfg(test)]
mod tests;
