//! cdc's own tables in Snowflake (`DATABASE.state_schema`): the pipeline's position, the
//! tables its snapshot copied, and each synced table's `cdc sync` state. Positions are
//! NUMBER(20,0) (an LSN is 64 bits); times are microseconds since the epoch.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::client::{Client, Rows};
use super::types::{literal, quote};
use crate::destination::{PipelineState, SyncState};
use crate::error::Result;
use crate::lsn::Lsn;
use crate::model::schema::TableName;

pub struct State {
    client: Arc<Client>,
    database: String,
    schema: String,
}

fn micros(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as i64)
}

fn time_of(us: Option<&str>) -> Option<SystemTime> {
    let us: i64 = us?.parse().ok()?;
    Some(UNIX_EPOCH + Duration::from_micros(us.max(0) as u64))
}

fn opt(v: Option<&str>) -> String {
    v.map_or("NULL".into(), literal)
}

impl State {
    pub fn new(client: Arc<Client>, database: &str, schema: &str) -> State {
        State {
            client,
            database: database.to_owned(),
            schema: schema.to_owned(),
        }
    }

    fn t(&self, name: &str) -> String {
        format!(
            "{}.{}.{}",
            quote(&self.database),
            quote(&self.schema),
            quote(name)
        )
    }

    /// The pipeline table, for sessions that move the position.
    pub fn pipeline_table(&self) -> String {
        self.t("pipeline")
    }

    /// Whether the state table `name` exists yet.
    async fn has(&self, name: &str) -> Result<bool> {
        super::table_exists(&self.client, &self.t(name)).await
    }

    pub async fn ensure(&self) -> Result<()> {
        self.client
            .run(&[
                format!(
                    "CREATE SCHEMA IF NOT EXISTS {}.{}",
                    quote(&self.database),
                    quote(&self.schema)
                ),
                format!(
                    "CREATE TABLE IF NOT EXISTS {} (slot VARCHAR NOT NULL, publication VARCHAR NOT NULL, \
                     consistent_lsn NUMBER(20,0), applied_lsn NUMBER(20,0), applied_commit_us NUMBER(20,0), \
                     completed BOOLEAN NOT NULL, writer_session VARCHAR, PRIMARY KEY (slot))",
                    self.t("pipeline")
                ),
                format!(
                    "CREATE TABLE IF NOT EXISTS {} (slot VARCHAR NOT NULL, source_table VARCHAR NOT NULL, \
                     destination_table VARCHAR NOT NULL, rows NUMBER(19,0) NOT NULL, joined_lsn NUMBER(20,0), \
                     PRIMARY KEY (slot, source_table))",
                    self.t("snapshot_tables")
                ),
                format!(
                    "CREATE TABLE IF NOT EXISTS {} (destination_table VARCHAR NOT NULL, source_table VARCHAR NOT NULL, \
                     strategy VARCHAR NOT NULL, position VARCHAR, last_pass_us NUMBER(20,0), rows NUMBER(19,0) NOT NULL, \
                     seconds FLOAT NOT NULL, PRIMARY KEY (destination_table))",
                    self.t("sync_tables")
                ),
            ])
            .await
    }

    async fn rows(&self, table: &str, sql: String) -> Result<Rows> {
        if !self.has(table).await? {
            return Ok(Vec::new());
        }
        self.client.query(&sql).await
    }

    pub async fn load(&self, slot: &str) -> Result<Option<PipelineState>> {
        let rows = self
            .rows(
                "pipeline",
                format!(
                    "SELECT consistent_lsn::VARCHAR, applied_lsn::VARCHAR, completed::VARCHAR, \
                     applied_commit_us::VARCHAR FROM {} WHERE slot = {}",
                    self.t("pipeline"),
                    literal(slot)
                ),
            )
            .await?;
        let Some(r) = rows.first() else {
            return Ok(None);
        };
        let lsn = |v: &Option<String>| v.as_deref().and_then(|s| s.parse().ok()).map(Lsn);
        let completed = matches!(r[2].as_deref(), Some("true" | "TRUE" | "1"));
        PipelineState::from_stored(
            slot,
            lsn(&r[0]),
            lsn(&r[1]),
            completed,
            time_of(r[3].as_deref()),
        )
        .map(Some)
    }

    pub async fn begin_snapshot(&self, slot: &str, publication: &str) -> Result<()> {
        // Replaced in one transaction: there is always one record.
        self.client
            .transaction(&[
                format!(
                    "DELETE FROM {} WHERE slot = {}",
                    self.t("snapshot_tables"),
                    literal(slot)
                ),
                format!(
                    "DELETE FROM {} WHERE slot = {}",
                    self.t("pipeline"),
                    literal(slot)
                ),
                format!(
                    "INSERT INTO {} (slot, publication, completed) VALUES ({}, {}, FALSE)",
                    self.t("pipeline"),
                    literal(slot),
                    literal(publication)
                ),
            ])
            .await
    }

    pub async fn set_consistent_point(&self, slot: &str, lsn: Lsn) -> Result<()> {
        self.client
            .query(&format!(
                "UPDATE {} SET consistent_lsn = {} WHERE slot = {}",
                self.t("pipeline"),
                lsn.0,
                literal(slot)
            ))
            .await
            .map(|_| ())
    }

    pub async fn complete_snapshot(&self, slot: &str) -> Result<()> {
        self.client
            .query(&format!(
                "UPDATE {} SET completed = TRUE, applied_lsn = consistent_lsn WHERE slot = {}",
                self.t("pipeline"),
                literal(slot)
            ))
            .await
            .map(|_| ())
    }

    pub async fn snapshot_tables(&self, slot: &str) -> Result<Vec<(String, i64)>> {
        let rows = self
            .rows(
                "snapshot_tables",
                format!(
                    "SELECT source_table, rows::VARCHAR FROM {} WHERE slot = {} ORDER BY source_table",
                    self.t("snapshot_tables"),
                    literal(slot)
                ),
            )
            .await?;
        Ok(rows
            .into_iter()
            .map(|r| {
                let n = r[1].as_deref().and_then(|n| n.parse().ok()).unwrap_or(0);
                (r[0].clone().unwrap_or_default(), n)
            })
            .collect())
    }

    pub async fn joined_tables(&self, slot: &str) -> Result<Vec<(String, Lsn)>> {
        let rows = self
            .rows(
                "snapshot_tables",
                format!(
                    "SELECT source_table, joined_lsn::VARCHAR FROM {} WHERE slot = {} AND joined_lsn IS NOT NULL",
                    self.t("snapshot_tables"),
                    literal(slot)
                ),
            )
            .await?;
        Ok(rows
            .into_iter()
            .filter_map(|r| Some((r[0].clone()?, Lsn(r[1].as_deref()?.parse().ok()?))))
            .collect())
    }

    /// Record a table the snapshot copied (`joined`: copied into a running pipeline, up to
    /// that position), replacing an earlier record of it.
    pub async fn record_table(
        &self,
        slot: &str,
        source: &TableName,
        destination: &TableName,
        rows: u64,
        joined: Option<Lsn>,
    ) -> Result<()> {
        let (slot, source_name) = (literal(slot), literal(&source.to_string()));
        self.client
            .transaction(&[
                format!(
                    "DELETE FROM {} WHERE slot = {slot} AND source_table = {source_name}",
                    self.t("snapshot_tables")
                ),
                format!(
                    "INSERT INTO {} (slot, source_table, destination_table, rows, joined_lsn) VALUES ({slot}, {source_name}, {}, {rows}, {})",
                    self.t("snapshot_tables"),
                    literal(&destination.to_string()),
                    joined.map_or("NULL".into(), |l| l.0.to_string())
                ),
            ])
            .await
    }

    pub async fn forget_table(&self, slot: &str, source: &TableName) -> Result<()> {
        self.client
            .query(&format!(
                "DELETE FROM {} WHERE slot = {} AND source_table = {}",
                self.t("snapshot_tables"),
                literal(slot),
                literal(&source.to_string())
            ))
            .await
            .map(|_| ())
    }

    pub async fn sync_states(&self) -> Result<Vec<SyncState>> {
        let rows = self
            .rows(
                "sync_tables",
                format!(
                    "SELECT destination_table, source_table, strategy, position, last_pass_us::VARCHAR, \
                     rows::VARCHAR, seconds::VARCHAR FROM {} ORDER BY destination_table",
                    self.t("sync_tables")
                ),
            )
            .await?;
        Ok(rows
            .into_iter()
            .map(|r| SyncState {
                destination_table: r[0].clone().unwrap_or_default(),
                source_table: r[1].clone().unwrap_or_default(),
                strategy: r[2].clone().unwrap_or_default(),
                position: r[3].clone(),
                last_pass: time_of(r[4].as_deref()),
                rows: r[5].as_deref().and_then(|n| n.parse().ok()).unwrap_or(0),
                seconds: r[6].as_deref().and_then(|n| n.parse().ok()).unwrap_or(0.0),
            })
            .collect())
    }

    pub async fn save_sync_state(&self, s: &SyncState) -> Result<()> {
        let table = literal(&s.destination_table);
        self.client
            .transaction(&[
                format!("DELETE FROM {} WHERE destination_table = {table}", self.t("sync_tables")),
                format!(
                    "INSERT INTO {} (destination_table, source_table, strategy, position, last_pass_us, rows, seconds) \
                     VALUES ({table}, {}, {}, {}, {}, {}, {})",
                    self.t("sync_tables"),
                    literal(&s.source_table),
                    literal(&s.strategy),
                    opt(s.position.as_deref()),
                    s.last_pass.map_or("NULL".into(), |t| micros(t).to_string()),
                    s.rows,
                    if s.seconds.is_finite() { s.seconds } else { 0.0 }
                ),
            ])
            .await
    }
}
