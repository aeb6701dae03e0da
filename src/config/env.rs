//! Destination settings from the variables other tools read, for users who come with them:
//! pgwarehouse's `CLICKHOUSE_*`, `DUCKDB_PATH` and SnowSQL's `SNOWSQL_*`. They apply only where
//! the config file and the `CDC_*` variables leave the URL out. (libpq's `PG*` variables are
//! read where Postgres URLs are parsed, `crate::conninfo`, as libpq reads them.)

use super::{Config, ConnString, Env};
use crate::conninfo::Secret;
pub(super) use crate::endpoint::percent_encode as percent;

impl Config {
    /// The variables libpq and pgwarehouse read, for URLs the file and `CDC_*` leave out;
    /// returns `(field, variable)` for each.
    pub(super) fn apply_libpq_env(&mut self, env: &dyn Env) -> Vec<(&'static str, &'static str)> {
        let mut applied = Vec::new();
        // A source URL left out is libpq's to fill (see `crate::conninfo`): only say which
        // variable named the server, for messages about it.
        if self.source.url.0.trim().is_empty() {
            if let Some(var) = ["PGSERVICE", "PGHOST", "PGDATABASE"]
                .into_iter()
                .find(|v| env.var(v).is_some())
            {
                applied.push(("source.url", var));
            }
        }
        if self.destination.url.0.trim().is_empty() {
            if let Some((url, var, password)) = destination_url(env) {
                self.destination.url = ConnString(url);
                applied.push(("destination.url", var));
                if self.destination.password.is_none() && self.destination.password_file.is_none() {
                    self.destination.password = password.map(Secret::new);
                }
            }
        }
        applied
    }
}

/// Whether a `CLICKHOUSE_SECURE` value asks for TLS.
fn truthy(v: &str) -> bool {
    matches!(
        v.trim().to_ascii_lowercase().as_str(),
        "1" | "true" | "yes" | "on"
    )
}

/// The destination URL from pgwarehouse's variables, the variable that decided it, and the
/// password they carry.
pub(super) fn destination_url(env: &dyn Env) -> Option<(String, &'static str, Option<String>)> {
    if let Some(host) = env.var("CLICKHOUSE_HOST") {
        let secure = env.var("CLICKHOUSE_SECURE").is_some_and(|v| truthy(&v));
        let url = clickhouse_url(
            &host,
            env.var("CLICKHOUSE_PORT").as_deref(),
            secure,
            env.var("CLICKHOUSE_USER").as_deref(),
            env.var("CLICKHOUSE_DATABASE").as_deref(),
        );
        return Some((url, "CLICKHOUSE_HOST", env.var("CLICKHOUSE_PWD")));
    }
    if let Some(account) = env.var("SNOWSQL_ACCOUNT") {
        let var = |v: &str| env.var(v);
        let mut url = snowflake_url(&Snowflake {
            account: &account,
            user: var("SNOWSQL_USER").as_deref(),
            database: var("SNOWSQL_DATABASE").as_deref(),
            schema: var("SNOWSQL_SCHEMA").as_deref(),
            warehouse: var("SNOWSQL_WAREHOUSE").as_deref(),
            role: var("SNOWSQL_ROLE").as_deref(),
        });
        for (key, v) in [
            ("host", "SNOWSQL_HOST"),
            ("port", "SNOWSQL_PORT"),
            ("protocol", "SNOWSQL_PROTOCOL"),
        ] {
            if let Some(value) = env.var(v) {
                let sep = if url.contains('?') { '&' } else { '?' };
                url.push_str(&format!("{sep}{key}={}", percent(&value)));
            }
        }
        return Some((url, "SNOWSQL_ACCOUNT", env.var("SNOWSQL_PWD")));
    }
    let path = env.var("DUCKDB_PATH")?;
    Some((duckdb_url(&path), "DUCKDB_PATH", None))
}

/// SnowSQL's (and pgwarehouse's) Snowflake settings.
pub(super) struct Snowflake<'a> {
    pub account: &'a str,
    pub user: Option<&'a str>,
    pub database: Option<&'a str>,
    pub schema: Option<&'a str>,
    pub warehouse: Option<&'a str>,
    pub role: Option<&'a str>,
}

/// Snowflake settings as a `snowflake://USER@ACCOUNT/DATABASE/SCHEMA?warehouse=W&role=R` URL;
/// the schema is `PUBLIC` when left out, as in SnowSQL. A missing user or database is left
/// for the URL's parser to name.
pub(super) fn snowflake_url(s: &Snowflake<'_>) -> String {
    let mut url = format!(
        "snowflake://{}@{}/{}/{}",
        percent(s.user.unwrap_or("")),
        percent(s.account),
        percent(s.database.unwrap_or("")),
        percent(s.schema.unwrap_or("PUBLIC"))
    );
    let mut sep = '?';
    for (key, value) in [("warehouse", s.warehouse), ("role", s.role)] {
        if let Some(v) = value {
            url.push_str(&format!("{sep}{key}={}", percent(v)));
            sep = '&';
        }
    }
    url
}

/// pgwarehouse's ClickHouse settings as a `clickhouse[s]://` URL: port 8123, or 8443 with
/// TLS, unless the host carries one (`ch.example.com:9440`); user and database `default`.
pub(super) fn clickhouse_url(
    host: &str,
    port: Option<&str>,
    secure: bool,
    user: Option<&str>,
    database: Option<&str>,
) -> String {
    let (scheme, default_port) = if secure {
        ("clickhouses", "8443")
    } else {
        ("clickhouse", "8123")
    };
    let host = if host.contains(':') && !host.starts_with('[') {
        host.to_owned()
    } else {
        format!("{host}:{}", port.unwrap_or(default_port))
    };
    format!(
        "{scheme}://{}@{host}/{}",
        percent(user.unwrap_or("default")),
        percent(database.unwrap_or("default"))
    )
}

/// A DuckDB file's URL, absolute or relative.
pub(super) fn duckdb_url(path: &str) -> String {
    if path.starts_with('/') {
        format!("duckdb://{path}")
    } else {
        format!("duckdb:{path}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pgwarehouse_variables_name_a_clickhouse_or_duckdb_destination() {
        let env = [
            ("CLICKHOUSE_HOST", "ch.example.com"),
            ("CLICKHOUSE_DATABASE", "analytics"),
            ("CLICKHOUSE_USER", "loader"),
            ("CLICKHOUSE_PWD", "s3cret"),
            ("CLICKHOUSE_SECURE", "true"),
        ];
        let (url, var, pw) = destination_url(&env).unwrap();
        assert_eq!(url, "clickhouses://loader@ch.example.com:8443/analytics");
        assert_eq!((var, pw.as_deref()), ("CLICKHOUSE_HOST", Some("s3cret")));
        let (url, ..) = destination_url(&[("CLICKHOUSE_HOST", "localhost:18123")]).unwrap();
        assert_eq!(url, "clickhouse://default@localhost:18123/default");
        assert!(
            crate::destination::clickhouse::ClickHouseUrl::parse(&url).is_ok(),
            "{url}"
        );
        let (url, ..) = destination_url(&[("DUCKDB_PATH", "/data/w.duckdb")]).unwrap();
        assert_eq!(url, "duckdb:///data/w.duckdb");
        let (url, ..) = destination_url(&[("DUCKDB_PATH", "w.duckdb")]).unwrap();
        assert_eq!(url, "duckdb:w.duckdb");
        // An account without a user: the URL's parser says what is missing.
        let (url, ..) = destination_url(&[("SNOWSQL_ACCOUNT", "x")]).unwrap();
        assert!(crate::destination::snowflake::SnowflakeUrl::parse(&url)
            .unwrap_err()
            .contains("name the user"));
    }

    #[test]
    fn snowsql_variables_make_a_snowflake_url() {
        let env = [
            ("SNOWSQL_ACCOUNT", "myorg-acct"),
            ("SNOWSQL_USER", "loader"),
            ("SNOWSQL_DATABASE", "ANALYTICS"),
            ("SNOWSQL_WAREHOUSE", "LOAD WH"),
            ("SNOWSQL_PWD", "pw"),
        ];
        let env: &dyn crate::config::Env = &env;
        let (url, var, password) = destination_url(env).unwrap();
        assert_eq!(
            url,
            "snowflake://loader@myorg-acct/ANALYTICS/PUBLIC?warehouse=LOAD%20WH"
        );
        assert_eq!((var, password.as_deref()), ("SNOWSQL_ACCOUNT", Some("pw")));
        let parsed = crate::destination::snowflake::SnowflakeUrl::parse(&url).unwrap();
        assert_eq!(parsed.warehouse.as_deref(), Some("LOAD WH"));
    }
}
