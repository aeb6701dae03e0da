//! Which destination a URL names, and what the rest of cdc may ask of a kind of destination
//! before it is open: the registry's side of the seam.
//!
//! ```text
//!  destination.url ─► driver_of (first driver that claims it) ─► Driver::{check, open, compare_side}
//! ```
//!
//! Each destination folder holds one [`Driver`] (its URL scheme, its URL's rules, how it opens)
//! and joins [`super::DRIVERS`] by its folder's name: nothing outside the folder names it.
//! Postgres comes last and claims libpq's connection strings, which have no scheme of their
//! own to tell (`host=… dbname=…`, or nothing at all: libpq's environment).

use std::path::PathBuf;
use std::sync::Arc;

use async_trait::async_trait;

use super::whole::WholeLook;
use super::Destination;
use crate::config::Config;
use crate::conninfo::{ConnInfo, Secret};
use crate::error::{Error, Result};

/// What opens a destination: `destination.url` and the settings beside it, the password
/// already read from its file. No `Debug`: the URL may hold a password.
#[derive(Clone)]
pub struct Settings {
    pub url: String,
    pub password: Option<Secret>,
    pub private_key_file: Option<PathBuf>,
    pub cluster: Option<String>,
    pub state_schema: String,
    pub slot: String,
}

impl Settings {
    /// The configured destination.
    pub fn of(config: &Config) -> Result<Settings> {
        let d = &config.destination;
        Ok(Settings {
            url: d.url.0.clone(),
            password: config.destination_password()?,
            private_key_file: d.private_key_file.clone(),
            cluster: d.cluster.clone(),
            state_schema: d.state_schema.clone(),
            slot: config.source.slot.clone(),
        })
    }

    /// A destination named on the command line (`--destination`), to be read only.
    pub fn standalone(url: &str, password: Option<Secret>) -> Settings {
        Settings {
            url: url.to_owned(),
            password,
            private_key_file: None,
            cluster: None,
            state_schema: "cdc".into(),
            slot: String::new(),
        }
    }
}

/// How `cdc verify` reaches a destination's rows.
pub enum Side {
    /// Row hashes of key ranges, computed by SQL on both Postgres servers.
    Postgres(ConnInfo),
    /// The source's rows loaded into the destination and compared there in one look.
    Whole(Box<dyn WholeLook>),
}

/// One kind of destination, as the registry knows it.
#[async_trait]
pub trait Driver: Sync {
    /// Short name for logs and errors (`postgres`, `duckdb`), as [`Destination::kind`] says.
    fn name(&self) -> &'static str;
    /// The URL's form, for messages (`clickhouse://USER@HOST:PORT/DATABASE`).
    fn form(&self) -> &'static str;
    /// Whether `url` is this kind's, by its scheme alone.
    fn claims(&self, url: &str) -> bool;
    /// What is wrong with a URL this driver claims, said so the user can fix it.
    fn check(&self, url: &str) -> std::result::Result<(), String>;
    /// The `[destination]` settings this kind reads beyond `url` and the password (of
    /// `cluster`, `private_key_file`); the others are refused when set.
    fn settings(&self) -> &'static [&'static str] {
        &[]
    }
    /// Open the destination (connections made lazily where the destination allows).
    async fn open(&self, settings: &Settings) -> Result<Arc<dyn Destination>>;
    /// How `cdc verify` compares a source table with this destination's.
    fn compare_side(&self, settings: &Settings) -> Result<Side>;
}

/// The driver for `url`: the first of [`super::DRIVERS`] that claims it.
pub fn driver_of(url: &str) -> std::result::Result<&'static dyn Driver, String> {
    super::DRIVERS
        .iter()
        .copied()
        .find(|d| d.claims(url))
        .ok_or_else(|| {
            let forms: Vec<&str> = super::DRIVERS.iter().map(|d| d.form()).collect();
            format!(
                "{url:?} names no kind of destination cdc writes to: use one of {}",
                forms.join(", ")
            )
        })
}

/// Open the configured destination.
pub async fn open(config: &Config) -> Result<Arc<dyn Destination>> {
    let settings = Settings::of(config)?;
    driver(&settings.url)?.open(&settings).await
}

/// How `cdc verify` reaches the destination `settings` name.
pub fn compare_side(settings: &Settings) -> Result<Side> {
    driver(&settings.url)?.compare_side(settings)
}

fn driver(url: &str) -> Result<&'static dyn Driver> {
    driver_of(url).map_err(|e| Error::definite(format!("destination.url {e}")))
}

/// Whether the configured destination is of the driver named `name`.
pub fn is(config: &Config, name: &str) -> bool {
    driver_of(&config.destination.url.0).is_ok_and(|d| d.name() == name)
}

/// Problems of `[destination]` that only its driver can see, as `(field, message)`, for
/// the configuration's own checks ([`Config::load_checked`]): a URL of a scheme no driver
/// claims or that its driver refuses, settings its kind does not read.
pub fn problems(config: &Config) -> Vec<(String, String)> {
    let d = &config.destination;
    let driver = match driver_of(&d.url.0) {
        Ok(driver) => driver,
        Err(e) => return vec![("destination.url".into(), e)],
    };
    let mut out = Vec::new();
    if let Err(e) = driver.check(&d.url.0) {
        out.push(("destination.url".into(), e));
    }
    for (name, set) in [
        ("cluster", d.cluster.is_some()),
        ("private_key_file", d.private_key_file.is_some()),
    ] {
        if set && !driver.settings().contains(&name) {
            let takers: Vec<String> = super::DRIVERS
                .iter()
                .filter(|k| k.settings().contains(&name))
                .map(|k| format!("{} (destination.url = \"{}\")", k.name(), k.form()))
                .collect();
            out.push((
                format!("destination.{name}"),
                format!(
                    "applies to {} destinations only: remove it",
                    takers.join(", ")
                ),
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_url_is_claimed_by_one_driver_and_postgres_takes_libpq_strings() {
        let name = |url: &str| driver_of(url).map(|d| d.name());
        assert_eq!(name("duckdb:a.duckdb"), Ok("duckdb"));
        assert_eq!(name("clickhouse://u@h:8123/db"), Ok("clickhouse"));
        assert_eq!(name("clickhouses://u@h:8443/db"), Ok("clickhouse"));
        assert_eq!(name("snowflake://u@acct/DB/S"), Ok("snowflake"));
        for pg in [
            "postgresql://h/db",
            "postgres://h/db",
            "host=h dbname=d",
            "",
        ] {
            assert_eq!(name(pg), Ok("postgres"), "{pg}");
        }
        let e = driver_of("mysql://h/db").map(|d| d.name()).unwrap_err();
        assert!(
            e.contains("snowflake://") && e.contains("duckdb:"),
            "the error lists what is known: {e}"
        );
        // No two drivers claim the same URL.
        for url in [
            "duckdb:a",
            "clickhouse://u@h/d",
            "snowflake://u@a/D/S",
            "host=h",
        ] {
            let n = super::super::DRIVERS
                .iter()
                .filter(|d| d.claims(url))
                .count();
            assert_eq!(n, 1, "{url}");
        }
    }
}
