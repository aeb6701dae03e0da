//! The configuration contract: `config.toml`, overridden by `CDC_*` environment variables.
//!
//! ```text
//!  config.toml ──toml/serde──► Config ──env overrides──► Config ──validate──► ready to use
//!      │ syntax/type error: one error with line:column          │ every problem at once,
//!      │ (serde stops at the first)                              │ each with its line or
//!      └─────────────────────────────────────────────────────────┘ environment variable
//! ```
//!
//! **Secrets never print**: connection strings are kept in [`ConnString`], whose `Debug` shows
//! the URL without its password, and passwords from env or files become
//! [`crate::conninfo::Secret`]s.

mod env;
mod locate;
pub mod pgwarehouse;
mod snapshot;
mod validate;

use std::fmt;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::conninfo::{ConnInfo, Secret};
use crate::endpoint::{source_url, SourceUrl};
pub use crate::model::schema::TableName;
pub use snapshot::{SnapshotConfig, SnapshotMode};
pub use validate::{Origin, Problem};

/// The example configuration shipped with the project (tested to parse).
pub const EXAMPLE: &str = include_str!("../../config.toml");

/// A libpq connection string (URL or key=value). May contain a password, so `Debug` redacts it.
#[derive(Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(transparent)]
pub struct ConnString(pub String);

impl fmt::Debug for ConnString {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match ConnInfo::parse(&self.0) {
            Ok(info) => write!(f, "{info}"),
            Err(_) => f.write_str("<unparsable connection string>"),
        }
    }
}

/// The whole configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The database to replicate from. The section may be left out when `CDC_SOURCE_URL` or
    /// libpq's variables say where the source is (a container configured by its environment).
    #[serde(default)]
    pub source: SourceConfig,
    /// The database to replicate into; left out, `CDC_DESTINATION_URL` (or pgwarehouse's
    /// variables) must name it.
    #[serde(default)]
    pub destination: DestinationConfig,
    /// The tables to replicate.
    #[serde(default)]
    pub tables: Vec<TableConfig>,
    #[serde(default)]
    pub snapshot: SnapshotConfig,
    #[serde(default)]
    pub apply: ApplyConfig,
    #[serde(default)]
    pub status: StatusConfig,
    /// The libpq variables (`PG*`, `HOME`) at load: Postgres URLs fill what they leave out
    /// from them, and from the service and password files they name.
    #[serde(skip)]
    pub libpq: crate::conninfo::Captured,
}

/// `[source]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceConfig {
    /// Connection string of the source; the role needs REPLICATION (or superuser). Left out,
    /// it is built from `PGHOST`, `PGPORT`, `PGDATABASE`, `PGUSER` (and `PGPASSWORD`).
    #[serde(default)]
    pub url: ConnString,
    /// File whose content is the password, so that it stays out of the config file.
    pub password_file: Option<PathBuf>,
    /// Replication slot name: lower-case letters, digits and underscores.
    #[serde(default = "default_cdc")]
    pub slot: String,
    /// Publication name; created by `cdc snapshot` for exactly the configured tables.
    #[serde(default = "default_cdc")]
    pub publication: String,
    /// Silence from the server longer than this means the connection is dead.
    #[serde(default = "default_read_timeout_ms")]
    pub read_timeout_ms: u64,
    /// Create the slot as a failover slot (Postgres 17+), synchronized to standbys that have
    /// `sync_replication_slots = on`, so streaming survives a promotion.
    #[serde(default)]
    pub failover: bool,
    /// `cdc sync` copies at most this many rows of each table (a trial run; a table's own
    /// `max_records` wins). `cdc snapshot` and `cdc run` refuse it.
    #[serde(alias = "max_rows")]
    pub max_records: Option<u64>,
    /// Password set by environment (`CDC_SOURCE_PASSWORD`); never read from the file.
    #[serde(skip)]
    pub password: Option<Secret>,
}

/// An empty section: every field at its serde default, so the defaults live in one place.
impl Default for SourceConfig {
    fn default() -> Self {
        toml::from_str("").expect("every [source] field has a default")
    }
}

impl Default for DestinationConfig {
    fn default() -> Self {
        toml::from_str("").expect("every [destination] field has a default")
    }
}

/// `[destination]`
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DestinationConfig {
    /// Connection string of the destination database. Left out, it is built from
    /// `CLICKHOUSE_HOST` (with `CLICKHOUSE_DATABASE`, `CLICKHOUSE_USER`, `CLICKHOUSE_PWD`,
    /// `CLICKHOUSE_SECURE`) or `DUCKDB_PATH`, the variables pgwarehouse reads.
    #[serde(default)]
    pub url: ConnString,
    /// File whose content is the password.
    pub password_file: Option<PathBuf>,
    /// Schema in the destination where cdc keeps its position and snapshot state.
    #[serde(default = "default_cdc")]
    pub state_schema: String,
    /// Password set by environment (`CDC_DESTINATION_PASSWORD`).
    #[serde(skip)]
    pub password: Option<Secret>,
    /// Snowflake only: the PEM file of the user's private key, for key-pair (JWT) login
    /// (also `?private_key_file=` in the URL).
    pub private_key_file: Option<PathBuf>,
    /// ClickHouse only: the cluster whose nodes get the tables (`ON CLUSTER`, replicated
    /// storage, a `Distributed` table in front).
    pub cluster: Option<String>,
}

/// One `[[tables]]` entry.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct TableConfig {
    /// Schema-qualified source table, e.g. `public.orders` (quote mixed case: `"Sales"."Q1"`).
    pub source: String,
    /// Destination table; defaults to the source's name.
    pub destination: Option<String>,
    /// SQL condition on source rows: the snapshot copy only (streaming), every pass (sync).
    #[serde(rename = "where")]
    pub filter: Option<String>,
    /// How `cdc sync` brings this table over (default: `diff` with a key, `reload` without).
    pub strategy: Option<Strategy>,
    /// The column the `modified` strategy reads changes by (e.g. `updated_at`).
    pub modified_column: Option<String>,
    /// Days (UTC) on which a `cdc sync` pass reloads the table whatever its strategy:
    /// weekdays (`"sun"`) or days of the month (`1`, `15`).
    #[serde(default)]
    pub reload_on: Vec<ReloadDay>,
    /// At most this many rows per `cdc sync` pass (a trial run); the next pass goes on.
    /// `max_records` is the same setting (pgwarehouse's name).
    #[serde(alias = "max_records")]
    pub max_rows: Option<u64>,
    /// Source column → destination column renames (`cdc sync` from SQLite), e.g.
    /// `{ created_at = "created" }`.
    #[serde(default)]
    pub columns: std::collections::BTreeMap<String, String>,
    /// Source columns left out of the destination (`cdc sync` from SQLite).
    #[serde(default)]
    pub ignore_columns: Vec<String>,
    /// Rows per destination transaction of a `cdc sync` pass (default: `apply.batch_max_rows`).
    pub batch_rows: Option<usize>,
}

/// A `cdc sync` strategy (`[[tables]] strategy`, `--strategy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
#[clap(rename_all = "snake_case")]
pub enum Strategy {
    /// Rows whose key is above the highest key already synced (single orderable key).
    NewRows,
    /// Rows whose `modified_column` is at or above the last synced value, upserted.
    Modified,
    /// Rows written by transactions newer than the last pass (Postgres sources), upserted.
    Xmin,
    /// The whole table copied into a new table, swapped in atomically.
    Reload,
    /// Compare by key-range hashes, then insert missing, update different, delete extra rows.
    Diff,
    /// Not synced.
    Skip,
}

impl Strategy {
    pub fn name(self) -> &'static str {
        match self {
            Strategy::NewRows => "new_rows",
            Strategy::Modified => "modified",
            Strategy::Xmin => "xmin",
            Strategy::Reload => "reload",
            Strategy::Diff => "diff",
            Strategy::Skip => "skip",
        }
    }
}

impl fmt::Display for Strategy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One entry of `reload_on`: a weekday name or a day of the month.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum ReloadDay {
    MonthDay(i64),
    Weekday(String),
}

impl ReloadDay {
    /// Weekday names as written in `reload_on`, Monday first.
    pub const WEEKDAYS: [&'static str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];

    /// Whether the entry is valid: a day 1..=31 or a weekday's first three letters.
    pub fn check(&self) -> Result<(), String> {
        match self {
            ReloadDay::MonthDay(d) if (1..=31).contains(d) => Ok(()),
            ReloadDay::MonthDay(d) => Err(format!("{d} is not a day of the month (1 to 31)")),
            ReloadDay::Weekday(w) if Self::WEEKDAYS.contains(&w.to_ascii_lowercase().as_str()) => {
                Ok(())
            }
            ReloadDay::Weekday(w) => Err(format!(
                "{w:?} is not a weekday: use one of {}",
                Self::WEEKDAYS.join(", ")
            )),
        }
    }

    /// Whether `day` (UTC: weekday 0 = Monday, day of month 1..=31) is this entry's day.
    pub fn matches(&self, weekday: usize, month_day: u32) -> bool {
        match self {
            ReloadDay::MonthDay(d) => *d == i64::from(month_day),
            ReloadDay::Weekday(w) => Self::WEEKDAYS[weekday % 7] == w.to_ascii_lowercase(),
        }
    }
}

/// `[apply]`
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct ApplyConfig {
    /// A destination transaction holds at most this many changed rows (default: the
    /// destination's, see [`crate::destination::Destination::default_batch_rows`])...
    pub batch_max_rows: Option<usize>,
    /// ...and at most this many bytes of row data...
    pub batch_max_bytes: usize,
    /// ...and waits at most this long for more source transactions (the latency bound).
    pub batch_max_wait_ms: u64,
    /// In-progress streamed transactions spill to disk beyond this much memory.
    pub max_memory_bytes: usize,
}

impl Default for ApplyConfig {
    fn default() -> Self {
        ApplyConfig {
            batch_max_rows: None,
            batch_max_bytes: 64 << 20,
            batch_max_wait_ms: 500,
            max_memory_bytes: 128 << 20,
        }
    }
}

impl ApplyConfig {
    /// The batch row limit when the configuration sets none.
    pub const DEFAULT_BATCH_ROWS: usize = 10_000;

    /// The row limit of a batch.
    pub fn batch_rows(&self) -> usize {
        self.batch_max_rows.unwrap_or(Self::DEFAULT_BATCH_ROWS)
    }

    /// These limits with the row limit set to `rows` unless the configuration sets one.
    pub fn with_default_rows(mut self, rows: usize) -> Self {
        self.batch_max_rows.get_or_insert(rows);
        self
    }

    /// Whether a batch of `rows` changes holding `bytes` of row data must be written now.
    pub fn batch_full(&self, rows: usize, bytes: usize) -> bool {
        rows >= self.batch_rows() || bytes >= self.batch_max_bytes
    }
}

/// `[status]`
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct StatusConfig {
    /// Address of the `/healthz` and `/metrics` endpoint of `cdc run`.
    pub listen: String,
    /// `cdc status` exits 1 when the slot is further behind than this many bytes of WAL...
    pub max_lag_bytes: u64,
    /// ...or the last applied transaction is older than this.
    pub max_lag_seconds: u64,
}

impl Default for StatusConfig {
    fn default() -> Self {
        StatusConfig {
            listen: "127.0.0.1:9187".into(),
            max_lag_bytes: 1 << 30,
            max_lag_seconds: 300,
        }
    }
}

fn default_cdc() -> String {
    "cdc".into()
}

fn default_read_timeout_ms() -> u64 {
    60_000
}

/// Why the configuration cannot be used. The message lists every problem found.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("no config file at {path}: pass --config PATH, set CDC_CONFIG, or set CDC_SOURCE_URL (or PGHOST) and CDC_DESTINATION_URL (or CLICKHOUSE_HOST, DUCKDB_PATH)")]
    Missing { path: PathBuf },
    #[error("cannot read config file {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}:{line}:{column}: {message}")]
    Syntax {
        path: PathBuf,
        line: usize,
        column: usize,
        message: String,
    },
    #[error("invalid configuration in {path}:\n{}", problems.iter().map(|p| format!("  - {p}")).collect::<Vec<_>>().join("\n"))]
    Invalid {
        path: PathBuf,
        problems: Vec<Problem>,
    },
}

/// Where configuration values come from besides the file (the process environment in
/// production, a list in tests): the same variables libpq's conventions read.
pub use crate::conninfo::{Env, ProcessEnv};

/// Environment variables that override file settings, and the field each sets.
pub const ENV_OVERRIDES: &[(&str, &str)] = &[
    ("CDC_SOURCE_URL", "source.url"),
    ("CDC_SOURCE_PASSWORD", "source.password"),
    ("CDC_SOURCE_PASSWORD_FILE", "source.password_file"),
    ("CDC_SOURCE_SLOT", "source.slot"),
    ("CDC_SOURCE_PUBLICATION", "source.publication"),
    ("CDC_DESTINATION_URL", "destination.url"),
    ("CDC_DESTINATION_PASSWORD", "destination.password"),
    ("CDC_DESTINATION_PASSWORD_FILE", "destination.password_file"),
    (
        "CDC_DESTINATION_PRIVATE_KEY_FILE",
        "destination.private_key_file",
    ),
];

/// Checks a higher layer adds to the configuration's own: `(field, message)` per problem.
pub type Checks = fn(&Config) -> Vec<(String, String)>;

impl Config {
    /// Load `path`, apply the environment, and validate. A missing file is fine when the
    /// environment provides both URLs (a container configured only by variables).
    pub fn load(path: &Path, env: &dyn Env) -> Result<Config, ConfigError> {
        Self::load_checked(path, env, |_| Vec::new())
    }

    /// [`Config::load`], with `more` adding the problems only a higher layer can see (the
    /// destination's driver: its URL's rules, the settings its kind reads) as `(field,
    /// message)`, reported with the others, at their lines.
    pub fn load_checked(path: &Path, env: &dyn Env, more: Checks) -> Result<Config, ConfigError> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let source = ["CDC_SOURCE_URL", "PGHOST", "PGDATABASE", "PGSERVICE"];
                let destination = ["CDC_DESTINATION_URL", "CLICKHOUSE_HOST", "DUCKDB_PATH"];
                let set = |names: &[&str]| names.iter().any(|n| env.var(n).is_some());
                if !set(&source) || !set(&destination) {
                    return Err(ConfigError::Missing {
                        path: path.to_owned(),
                    });
                }
                String::from("[source]\nurl = \"\"\n[destination]\nurl = \"\"\n")
            }
            Err(source) => {
                return Err(ConfigError::Read {
                    path: path.to_owned(),
                    source,
                })
            }
        };
        Self::from_toml_checked(&text, path, env, more)
    }

    /// Parse, override and validate configuration text; `path` is used in messages.
    pub fn from_toml(text: &str, path: &Path, env: &dyn Env) -> Result<Config, ConfigError> {
        Self::from_toml_checked(text, path, env, |_| Vec::new())
    }

    /// [`Config::from_toml`] with more checks, as [`Config::load_checked`].
    pub fn from_toml_checked(
        text: &str,
        path: &Path,
        env: &dyn Env,
        more: Checks,
    ) -> Result<Config, ConfigError> {
        let mut config: Config = toml::from_str(text).map_err(|e| {
            let (line, column) = e
                .span()
                .map(|s| locate::line_col(text, s.start))
                .unwrap_or((1, 1));
            ConfigError::Syntax {
                path: path.to_owned(),
                line,
                column,
                message: e.message().trim().to_owned(),
            }
        })?;
        config.libpq = crate::conninfo::Captured::from_env(env);
        let mut overridden = config.apply_env(env);
        overridden.extend(config.apply_libpq_env(env));
        for t in &mut config.tables {
            t.max_rows = t.max_rows.or(config.source.max_records);
        }
        let mut problems = validate::validate(&config, &overridden, more(&config));
        // Point every problem about a file value at its line.
        for p in &mut problems {
            if let Origin::File { line } = &mut p.origin {
                *line = locate::line_of(text, &p.field);
            }
        }
        if problems.is_empty() {
            Ok(config)
        } else {
            Err(ConfigError::Invalid {
                path: path.to_owned(),
                problems,
            })
        }
    }

    /// Apply `CDC_*` variables; returns `(field, variable)` for each override applied.
    fn apply_env(&mut self, env: &dyn Env) -> Vec<(&'static str, &'static str)> {
        let mut applied = Vec::new();
        for &(var, field) in ENV_OVERRIDES {
            let Some(value) = env.var(var) else { continue };
            match field {
                "source.url" => self.source.url = ConnString(value),
                "source.password" => self.source.password = Some(Secret::new(value)),
                "source.password_file" => self.source.password_file = Some(value.into()),
                "source.slot" => self.source.slot = value,
                "source.publication" => self.source.publication = value,
                "destination.url" => self.destination.url = ConnString(value),
                "destination.password" => self.destination.password = Some(Secret::new(value)),
                "destination.password_file" => self.destination.password_file = Some(value.into()),
                "destination.private_key_file" => {
                    self.destination.private_key_file = Some(value.into())
                }
                _ => unreachable!("every ENV_OVERRIDES field is handled"),
            }
            applied.push((field, var));
        }
        applied
    }

    /// The SQLite file `source.url` names (`sqlite:PATH`), or `None` for a Postgres source.
    pub fn sqlite_source(&self) -> Result<Option<PathBuf>, Problem> {
        match source_url(&self.source.url.0) {
            Ok(SourceUrl::Postgres) => Ok(None),
            Ok(SourceUrl::Sqlite(p)) => Ok(Some(p)),
            Err(e) => Err(Problem::file("source.url", e)),
        }
    }

    /// Connection settings of the source, with the password resolved.
    pub fn source_conninfo(&self) -> Result<ConnInfo, Problem> {
        if self.sqlite_source()?.is_some() {
            return Err(Problem::file(
                "source.url",
                "names a SQLite file, which has no change stream: `cdc snapshot` and `cdc run` (and \
                 this command) need a Postgres source. Keep a SQLite file's tables in sync with \
                 `cdc sync` (`cdc sync --every 15m` repeats it as a sidecar would)",
            ));
        }
        resolve(
            &self.libpq,
            "source",
            &self.source.url,
            self.source.password.as_ref(),
            self.source.password_file.as_deref(),
        )
    }

    /// The destination's password: `CDC_DESTINATION_PASSWORD`, else `password_file`'s content.
    pub fn destination_password(&self) -> Result<Option<Secret>, Problem> {
        match (&self.destination.password, &self.destination.password_file) {
            (Some(pw), _) => Ok(Some(pw.clone())),
            (None, Some(f)) => read_password_file("destination", f).map(Some),
            (None, None) => Ok(None),
        }
    }

    /// Connection settings of a Postgres destination, with the password resolved.
    pub fn destination_conninfo(&self) -> Result<ConnInfo, Problem> {
        if !crate::conninfo::is_connection_string(&self.destination.url.0) {
            return Err(Problem::file(
                "destination.url",
                "this command works with Postgres destinations only so far, and destination.url \
                 is not a Postgres connection string",
            ));
        }
        resolve(
            &self.libpq,
            "destination",
            &self.destination.url,
            self.destination.password.as_ref(),
            self.destination.password_file.as_deref(),
        )
    }

    /// Parsed table names, in config order (valid after `validate`).
    pub fn table_pairs(&self) -> Vec<(TableName, TableName)> {
        self.tables
            .iter()
            .filter_map(|t| {
                let src = TableName::parse(&t.source).ok()?;
                let dst = match &t.destination {
                    Some(d) => TableName::parse(d).ok()?,
                    None => src.clone(),
                };
                Some((src, dst))
            })
            .collect()
    }
}

/// Password precedence: the environment's (`CDC_*_PASSWORD`), then the password file, then the
/// URL's own, then `PGPASSWORD`, then (at connect time, per server) libpq's password file.
fn resolve(
    libpq: &crate::conninfo::Captured,
    side: &'static str,
    url: &ConnString,
    env_pw: Option<&Secret>,
    file: Option<&Path>,
) -> Result<ConnInfo, Problem> {
    let mut info = ConnInfo::parse_in(&url.0, libpq)
        .map_err(|e| Problem::file(format!("{side}.url"), e.to_string()))?;
    if let Some(pw) = env_pw {
        info.password = Some(pw.clone());
    } else if let Some(f) = file {
        info.password = Some(read_password_file(side, f)?);
    }
    Ok(info)
}

/// A `password_file`'s content without its trailing newline.
fn read_password_file(side: &'static str, f: &Path) -> Result<Secret, Problem> {
    let pw = std::fs::read_to_string(f).map_err(|e| {
        Problem::file(
            format!("{side}.password_file"),
            format!("cannot read {}: {e}", f.display()),
        )
    })?;
    Ok(Secret::new(pw.trim_end_matches(['\n', '\r'])))
}

#[cfg(test)]
mod tests;
