//! Semantic checks on a parsed configuration, all at once.

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;

use super::{Config, TableName};
use crate::conninfo::ConnInfo;

/// Where a bad value came from, so the message says where to fix it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// The config file (line 0: the value is a default, not written in the file).
    File { line: usize },
    /// An environment variable.
    Env(&'static str),
}

/// One problem in the configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The field's path, e.g. `tables[1].source`.
    pub field: String,
    pub message: String,
    pub origin: Origin,
}

impl Problem {
    pub(crate) fn file(field: impl Into<String>, message: impl Into<String>) -> Self {
        Problem {
            field: field.into(),
            message: message.into(),
            origin: Origin::File { line: 0 },
        }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.origin {
            Origin::File { line: 0 } => write!(f, "{}: {}", self.field, self.message),
            Origin::File { line } => write!(f, "line {line}: {}: {}", self.field, self.message),
            Origin::Env(var) => write!(f, "{} (set by {var}): {}", self.field, self.message),
        }
    }
}

/// Check everything; `overridden` lists `(field, env var)` pairs the environment set.
pub(super) fn validate(
    c: &Config,
    overridden: &[(&'static str, &'static str)],
    more: Vec<(String, String)>,
) -> Vec<Problem> {
    let mut problems = Vec::new();
    let mut add = |field: String, message: String| {
        let origin = overridden
            .iter()
            .find(|(f, _)| *f == field)
            .map_or(Origin::File { line: 0 }, |(_, var)| Origin::Env(var));
        problems.push(Problem {
            field,
            message,
            origin,
        });
    };

    check_endpoints(c, &mut add);
    for (field, message) in more {
        add(field, message);
    }
    check_source_settings(c, &mut add);
    check_tables(c, &mut add);
    check_limits(c, &mut add);
    problems
}

/// source.url and destination.url: each parses, and they are not the same database.
fn check_endpoints(c: &Config, add: &mut impl FnMut(String, String)) {
    use crate::endpoint::{source_url, SourceUrl};
    let src = match source_url(&c.source.url.0) {
        Ok(SourceUrl::Sqlite(_)) => None,
        Err(e) => {
            add("source.url".into(), e);
            None
        }
        Ok(SourceUrl::Postgres) => check_url(c, add, "source.url", &c.source.url.0),
    };
    // Other schemes' URLs are their drivers' to check (`Checks`).
    let dst = if crate::conninfo::is_connection_string(&c.destination.url.0) {
        check_url(c, add, "destination.url", &c.destination.url.0)
    } else {
        None
    };
    if let (Some(s), Some(d)) = (&src, &dst) {
        if s.host == d.host && s.port == d.port && s.dbname == d.dbname {
            add(
                "destination.url".into(),
                "names the same database as source.url; replicating a database into itself would loop".into(),
            );
        }
    }
}

/// Password files, slot, publication, state schema, timeouts.
fn check_source_settings(c: &Config, add: &mut impl FnMut(String, String)) {
    for (field, file) in [
        ("source.password_file", &c.source.password_file),
        ("destination.password_file", &c.destination.password_file),
    ] {
        if let Some(f) = file {
            if let Err(e) = std::fs::metadata(f) {
                add(field.into(), format!("cannot read {}: {e}", f.display()));
            }
        }
    }
    if !is_slot_name(&c.source.slot) {
        add(
            "source.slot".into(),
            format!("{:?} is not a valid slot name: use 1 to 63 lower-case letters, digits or underscores", c.source.slot),
        );
    }
    for (field, value) in [
        ("source.publication", &c.source.publication),
        ("destination.state_schema", &c.destination.state_schema),
    ] {
        if value.is_empty() || value.len() > 63 {
            add(
                field.into(),
                format!("{value:?} must be 1 to 63 bytes long"),
            );
        }
    }
    if c.source.read_timeout_ms < 1000 {
        add(
            "source.read_timeout_ms".into(),
            "must be at least 1000 (one second)".into(),
        );
    }
}

/// Every `[[tables]]` entry, and no source or destination table listed twice.
fn check_tables(c: &Config, add: &mut impl FnMut(String, String)) {
    if c.tables.is_empty() {
        add(
            "tables".into(),
            "no tables configured: add a [[tables]] entry with source = \"schema.table\"".into(),
        );
    }
    let mut sources: HashMap<TableName, usize> = HashMap::new();
    let mut destinations: HashMap<TableName, usize> = HashMap::new();
    let sqlite = matches!(
        crate::endpoint::source_url(&c.source.url.0),
        Ok(crate::endpoint::SourceUrl::Sqlite(_))
    );
    for (i, t) in c.tables.iter().enumerate() {
        if !sqlite && (!t.columns.is_empty() || !t.ignore_columns.is_empty()) {
            add(
                format!("tables[{i}].columns"),
                "columns / ignore_columns rename or leave out columns of a SQLite source; a Postgres \
                 source's tables are copied with their own columns: remove them"
                    .into(),
            );
        }
        if t.batch_rows == Some(0) {
            add(
                format!("tables[{i}].batch_rows"),
                "must be at least 1".into(),
            );
        }
        let src = match TableName::parse(&t.source) {
            Ok(n) => Some(n),
            Err(e) => {
                add(format!("tables[{i}].source"), e);
                None
            }
        };
        let dst = match &t.destination {
            Some(d) => TableName::parse(d)
                .map_err(|e| add(format!("tables[{i}].destination"), e))
                .ok(),
            None => src.clone(),
        };
        let mut duplicate_source = false;
        if let Some(s) = src {
            if let Some(&first) = sources.get(&s) {
                add(
                    format!("tables[{i}].source"),
                    format!("{s} is already listed as tables[{first}]"),
                );
                duplicate_source = true;
            } else {
                sources.insert(s, i);
            }
        }
        if let Some(d) = dst {
            // A repeated source with a defaulted destination is one mistake, reported once.
            match destinations.get(&d) {
                Some(&first) if !duplicate_source => add(
                    format!("tables[{i}].destination"),
                    format!("{d} is already the destination of tables[{first}]"),
                ),
                Some(_) => {}
                None => {
                    destinations.insert(d, i);
                }
            }
        }
        if t.strategy == Some(super::Strategy::Modified) && t.modified_column.is_none() {
            add(
                format!("tables[{i}].modified_column"),
                "is missing: strategy \"modified\" reads changes by a column, e.g. modified_column = \"updated_at\"".into(),
            );
        }
        if t.modified_column.as_deref().is_some_and(|c| c.is_empty()) {
            add(
                format!("tables[{i}].modified_column"),
                "is empty: name a column".into(),
            );
        }
        for day in &t.reload_on {
            if let Err(e) = day.check() {
                add(format!("tables[{i}].reload_on"), e);
            }
        }
        if t.max_rows == Some(0) {
            add(
                format!("tables[{i}].max_rows"),
                "must be greater than 0".into(),
            );
        }
        if t.filter.as_deref().is_some_and(|w| w.trim().is_empty()) {
            add(
                format!("tables[{i}].where"),
                "is empty: remove it or write a condition".into(),
            );
        }
    }
}

/// Batch, memory and status bounds.
fn check_limits(c: &Config, add: &mut impl FnMut(String, String)) {
    for (field, value) in [
        (
            "apply.batch_max_rows",
            c.apply.batch_max_rows.map_or(1, |n| n as u64),
        ),
        ("apply.batch_max_bytes", c.apply.batch_max_bytes as u64),
        ("apply.batch_max_wait_ms", c.apply.batch_max_wait_ms),
        ("apply.max_memory_bytes", c.apply.max_memory_bytes as u64),
        ("status.max_lag_bytes", c.status.max_lag_bytes),
        ("status.max_lag_seconds", c.status.max_lag_seconds),
        ("snapshot.chunk_rows", c.snapshot.chunk_rows as u64),
    ] {
        if value == 0 {
            add(field.into(), "must be greater than 0".into());
        }
    }
    if c.status.listen.parse::<SocketAddr>().is_err() {
        add(
            "status.listen".into(),
            format!(
                "{:?} is not an address like 127.0.0.1:9187",
                c.status.listen
            ),
        );
    }
}

fn check_url(
    c: &Config,
    add: &mut impl FnMut(String, String),
    field: &str,
    url: &str,
) -> Option<ConnInfo> {
    // A source left out is the server libpq's variables and files name (as `psql` with no
    // arguments); a destination must be named.
    if url.trim().is_empty() && !field.starts_with("source") {
        add(
            field.into(),
            "is not set: set a connection string like postgresql://user@host:5432/dbname (or \
             CDC_DESTINATION_URL, CLICKHOUSE_HOST, DUCKDB_PATH)"
                .into(),
        );
        return None;
    }
    ConnInfo::parse_in(url, &c.libpq)
        .map_err(|e| add(field.into(), e.to_string()))
        .ok()
}

/// Postgres allows slot names of lower-case letters, digits and underscores only.
fn is_slot_name(s: &str) -> bool {
    (1..=63).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

impl super::Config {
    /// Refuse `max_records` for `command`, which copies and streams every row: a capped copy
    /// followed by a stream would be a table that never matches its source.
    pub fn every_row(&self, command: &str) -> Result<(), Problem> {
        let field = if self.source.max_records.is_some() {
            Some("source.max_records".to_owned())
        } else {
            self.tables
                .iter()
                .position(|t| t.max_rows.is_some())
                .map(|i| format!("tables[{i}].max_records"))
        };
        match field {
            None => Ok(()),
            Some(field) => Err(Problem::file(
                field,
                format!(
                    "caps the rows of a trial `cdc sync`, and {command} copies and streams every row: \
                     remove it (or use `cdc sync`)"
                ),
            )),
        }
    }
}
