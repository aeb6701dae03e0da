//! ClickHouse's entry in the registry: `clickhouse[s]://USER@HOST:PORT/DATABASE`.

use std::sync::Arc;

use async_trait::async_trait;

use super::verify::ClickHouseReader;
use super::{ClickHouseDestination, ClickHouseUrl};
use crate::destination::registry::{Driver, Settings, Side};
use crate::destination::Destination;
use crate::error::{Error, Result};

pub struct ClickHouse;

/// What the registry calls.
pub static DRIVER: ClickHouse = ClickHouse;

/// The URL with the password of `[destination]` (which wins over the URL's).
fn url(s: &Settings) -> Result<ClickHouseUrl> {
    let mut url = ClickHouseUrl::parse(&s.url)
        .map_err(|e| Error::definite(format!("destination.url: {e}")))?;
    if let Some(pw) = &s.password {
        url.password = Some(pw.clone());
    }
    Ok(url)
}

#[async_trait]
impl Driver for ClickHouse {
    fn name(&self) -> &'static str {
        "clickhouse"
    }
    fn form(&self) -> &'static str {
        "clickhouse://USER@HOST:PORT/DATABASE"
    }
    fn claims(&self, url: &str) -> bool {
        ClickHouseUrl::is_clickhouse(url)
    }
    fn check(&self, url: &str) -> std::result::Result<(), String> {
        ClickHouseUrl::parse(url).map(drop)
    }
    fn settings(&self) -> &'static [&'static str] {
        &["cluster"]
    }
    async fn open(&self, s: &Settings) -> Result<Arc<dyn Destination>> {
        Ok(Arc::new(
            ClickHouseDestination::open(url(s)?, &s.state_schema, s.cluster.as_deref()).await?,
        ))
    }
    fn compare_side(&self, s: &Settings) -> Result<Side> {
        Ok(Side::Whole(Box::new(ClickHouseReader::new(url(s)?)?)))
    }
}
