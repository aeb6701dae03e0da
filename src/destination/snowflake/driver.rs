//! Snowflake's entry in the registry: `snowflake://USER@ACCOUNT/DATABASE/SCHEMA?…`.

use std::sync::Arc;

use async_trait::async_trait;

use super::verify::SnowflakeReader;
use super::{SnowflakeDestination, SnowflakeUrl};
use crate::destination::registry::{Driver, Settings, Side};
use crate::destination::Destination;
use crate::error::{Error, Result};

pub struct Snowflake;

/// What the registry calls.
pub static DRIVER: Snowflake = Snowflake;

/// The URL with the password and key file of `[destination]` (which win over the URL's).
fn url(s: &Settings) -> Result<SnowflakeUrl> {
    let mut url = SnowflakeUrl::parse(&s.url)
        .map_err(|e| Error::definite(format!("destination.url: {e}")))?;
    if let Some(pw) = &s.password {
        url.password = Some(pw.clone());
    }
    if let Some(key) = &s.private_key_file {
        url.private_key_file = Some(key.clone());
    }
    Ok(url)
}

#[async_trait]
impl Driver for Snowflake {
    fn name(&self) -> &'static str {
        "snowflake"
    }
    fn form(&self) -> &'static str {
        "snowflake://USER@ACCOUNT/DATABASE/SCHEMA?warehouse=W&role=R"
    }
    fn claims(&self, url: &str) -> bool {
        SnowflakeUrl::is_snowflake(url)
    }
    fn check(&self, url: &str) -> std::result::Result<(), String> {
        SnowflakeUrl::parse(url).map(drop)
    }
    fn settings(&self) -> &'static [&'static str] {
        &["private_key_file"]
    }
    async fn open(&self, s: &Settings) -> Result<Arc<dyn Destination>> {
        Ok(Arc::new(
            SnowflakeDestination::open(url(s)?, &s.state_schema, &s.slot).await?,
        ))
    }
    fn compare_side(&self, s: &Settings) -> Result<Side> {
        Ok(Side::Whole(Box::new(SnowflakeReader::new(url(s)?)?)))
    }
}
