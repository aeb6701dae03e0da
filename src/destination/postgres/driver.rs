//! Postgres's entry in the registry: libpq connection strings, which name no scheme of their
//! own to tell (so this driver is asked last).

use std::sync::Arc;

use async_trait::async_trait;

use super::PgDestination;
use crate::conninfo::ConnInfo;
use crate::destination::registry::{Driver, Settings, Side};
use crate::destination::Destination;
use crate::error::{Error, Result};

pub struct Postgres;

/// What the registry calls.
pub static DRIVER: Postgres = Postgres;

/// The connection settings, with the password of `[destination]` (which wins over the URL's).
fn conninfo(s: &Settings) -> Result<ConnInfo> {
    let mut info = ConnInfo::parse(&s.url).map_err(|e| {
        Error::definite(format!("destination.url is not a valid connection string: {e}"))
    })?;
    if let Some(pw) = &s.password {
        info.password = Some(pw.clone());
    }
    Ok(info)
}

#[async_trait]
impl Driver for Postgres {
    fn name(&self) -> &'static str {
        "postgres"
    }
    fn form(&self) -> &'static str {
        "postgresql://USER@HOST:PORT/DATABASE"
    }
    fn claims(&self, url: &str) -> bool {
        crate::conninfo::is_connection_string(url)
    }
    /// libpq's rules are the configuration's own (it also compares the destination with the
    /// source, which must not be the same database): nothing more to say here.
    fn check(&self, _url: &str) -> std::result::Result<(), String> {
        Ok(())
    }
    async fn open(&self, s: &Settings) -> Result<Arc<dyn Destination>> {
        Ok(Arc::new(PgDestination::new(conninfo(s)?, &s.state_schema)))
    }
    fn compare_side(&self, s: &Settings) -> Result<Side> {
        Ok(Side::Postgres(conninfo(s)?))
    }
}
