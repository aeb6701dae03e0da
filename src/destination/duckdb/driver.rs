//! DuckDB's entry in the registry: `duckdb:RELATIVE/PATH` or `duckdb:///ABSOLUTE/PATH`.

use std::path::PathBuf;
use std::sync::Arc;

use async_trait::async_trait;

use super::verify::DuckDbReader;
use super::DuckDbDestination;
use crate::destination::registry::{Driver, Settings, Side};
use crate::destination::Destination;
use crate::error::{Error, Result};

pub struct DuckDb;

/// What the registry calls.
pub static DRIVER: DuckDb = DuckDb;

/// The file a `duckdb:` URL names, or `None` for another URL.
fn file(url: &str) -> Option<std::result::Result<PathBuf, String>> {
    crate::endpoint::file_path(url, "duckdb", "DuckDB", "/var/lib/cdc/analytics.duckdb")
}

fn path(s: &Settings) -> Result<PathBuf> {
    match file(&s.url) {
        Some(Ok(path)) => Ok(path),
        Some(Err(e)) => Err(Error::definite(format!("destination.url: {e}"))),
        None => Err(Error::definite(format!("destination.url: {:?} is not a duckdb: URL", s.url))),
    }
}

#[async_trait]
impl Driver for DuckDb {
    fn name(&self) -> &'static str {
        "duckdb"
    }
    fn form(&self) -> &'static str {
        "duckdb:PATH"
    }
    fn claims(&self, url: &str) -> bool {
        file(url).is_some()
    }
    fn check(&self, url: &str) -> std::result::Result<(), String> {
        file(url).unwrap_or(Ok(PathBuf::new())).map(drop)
    }
    async fn open(&self, s: &Settings) -> Result<Arc<dyn Destination>> {
        Ok(Arc::new(DuckDbDestination::open(&path(s)?, &s.state_schema).await?))
    }
    fn compare_side(&self, s: &Settings) -> Result<Side> {
        Ok(Side::Whole(Box::new(DuckDbReader::open(&path(s)?)?)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn duckdb_urls_name_relative_and_absolute_files() {
        assert_eq!(file("duckdb:a.duckdb"), Some(Ok("a.duckdb".into())));
        assert_eq!(file("duckdb:///x/a.duckdb"), Some(Ok("/x/a.duckdb".into())));
        assert!(file("duckdb:dir/").unwrap().is_err());
        assert!(file("duckdb://host/a").unwrap().is_err());
        assert!(file("sqlite:a.db").is_none());
    }
}
