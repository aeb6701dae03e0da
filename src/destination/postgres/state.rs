//! The pipeline's state in the destination, in the `state_schema` (default `cdc`).
//!
//! ```text
//!  pipeline(slot PK, publication, consistent_lsn, applied_lsn, applied_commit_time,
//!           snapshot_started_at, snapshot_completed_at)
//!  snapshot_tables(slot, source_table, destination_table, rows, completed_at, joined_lsn)
//!  sync_tables(destination_table PK, source_table, strategy, position, last_pass, rows, seconds)
//! ```
//!
//! **A snapshot is complete only when `snapshot_completed_at` is set**, which happens in one
//! transaction after every table and index is in place; `applied_lsn` then starts at the
//! slot's consistent point. A row without it is an interrupted snapshot, which the next
//! `cdc snapshot` discards and redoes. Living in the destination, this state commits
//! atomically with the data it describes.

use tokio_postgres::Client;

use crate::destination::{PipelineState, SyncState};
use crate::error::{Error, Result};
use crate::lsn::Lsn;
use crate::model::sql::{quote_ident, quote_literal};

/// Handle on the state tables in one schema.
#[derive(Debug, Clone)]
pub struct StateStore {
    schema: String,
}

impl StateStore {
    pub fn new(schema: &str) -> Self {
        StateStore {
            schema: quote_ident(schema),
        }
    }

    fn t(&self, table: &str) -> String {
        format!("{}.{table}", self.schema)
    }

    /// Create the schema and tables if missing.
    pub async fn ensure(&self, dest: &Client) -> Result<()> {
        let sql = format!(
            "CREATE SCHEMA IF NOT EXISTS {schema};
             CREATE TABLE IF NOT EXISTS {pipeline} (
                 slot text PRIMARY KEY,
                 publication text NOT NULL,
                 consistent_lsn pg_lsn,
                 applied_lsn pg_lsn,
                 applied_commit_time timestamptz,
                 snapshot_started_at timestamptz NOT NULL DEFAULT now(),
                 snapshot_completed_at timestamptz);
             CREATE TABLE IF NOT EXISTS {tables} (
                 slot text NOT NULL REFERENCES {pipeline} ON DELETE CASCADE,
                 source_table text NOT NULL,
                 destination_table text NOT NULL,
                 rows bigint NOT NULL,
                 completed_at timestamptz NOT NULL DEFAULT now(),
                 PRIMARY KEY (slot, source_table));
             ALTER TABLE {tables} ADD COLUMN IF NOT EXISTS joined_lsn pg_lsn;
             CREATE TABLE IF NOT EXISTS {sync} (
                 destination_table text PRIMARY KEY,
                 source_table text NOT NULL,
                 strategy text NOT NULL,
                 position text,
                 last_pass timestamptz,
                 rows bigint NOT NULL DEFAULT 0,
                 seconds double precision NOT NULL DEFAULT 0);",
            schema = self.schema,
            pipeline = self.t("pipeline"),
            tables = self.t("snapshot_tables"),
            sync = self.t("sync_tables"),
        );
        dest.batch_execute(&sql).await.map_err(Error::pg(
            "creating the cdc state tables in the destination",
        ))
    }

    /// The state of `slot`, if the destination has any (none when the state tables do not
    /// exist yet; a permission error is an error).
    pub async fn load(&self, dest: &Client, slot: &str) -> Result<Option<PipelineState>> {
        let exists: bool = dest
            .query_one("SELECT to_regclass($1) IS NOT NULL", &[&self.t("pipeline")])
            .await
            .map_err(Error::pg("looking for the pipeline state"))?
            .get(0);
        if !exists {
            return Ok(None);
        }
        let row = dest
            .query_opt(
                &format!(
                    "SELECT consistent_lsn::text, applied_lsn::text, snapshot_completed_at IS NOT NULL,
                            applied_commit_time
                       FROM {} WHERE slot = $1",
                    self.t("pipeline")
                ),
                &[&slot],
            )
            .await
            .map_err(Error::pg("reading pipeline state"))?;
        let lsn = |v: Option<String>| v.and_then(|s| s.parse().ok());
        row.map(|r| {
            PipelineState::from_stored(slot, lsn(r.get(0)), lsn(r.get(1)), r.get(2), r.get(3))
        })
        .transpose()
    }

    /// Record that a snapshot of `slot` is starting (before the slot exists, so an interrupted
    /// run always leaves a trace that lets the next one clean up), replacing any earlier
    /// record in the same transaction: there is no moment without one.
    pub async fn begin_snapshot(&self, dest: &Client, slot: &str, publication: &str) -> Result<()> {
        let slot = crate::model::sql::quote_literal(slot);
        dest.batch_execute(&format!(
            "BEGIN; DELETE FROM {pipeline} WHERE slot = {slot};
             INSERT INTO {pipeline} (slot, publication) VALUES ({slot}, {}); COMMIT",
            crate::model::sql::quote_literal(publication),
            pipeline = self.t("pipeline"),
        ))
        .await
        .map_err(Error::pg("recording the snapshot start"))
    }

    /// Record the slot's consistent point.
    pub async fn set_consistent_point(&self, dest: &Client, slot: &str, lsn: Lsn) -> Result<()> {
        dest.execute(
            &format!(
                "UPDATE {} SET consistent_lsn = $2::text::pg_lsn WHERE slot = $1",
                self.t("pipeline")
            ),
            &[&slot, &lsn.to_string()],
        )
        .await
        .map(|_| ())
        .map_err(Error::pg("recording the consistent point"))
    }

    /// SQL recording one finished table; run inside the transaction that finishes the table.
    pub fn table_done_sql(&self, slot: &str, source: &str, destination: &str, rows: u64) -> String {
        format!(
            "INSERT INTO {} (slot, source_table, destination_table, rows) VALUES ({}, {}, {}, {rows})",
            self.t("snapshot_tables"),
            quote_literal(slot),
            quote_literal(source),
            quote_literal(destination),
        )
    }

    /// Mark the snapshot complete; streaming starts from the consistent point.
    pub async fn complete_snapshot(&self, dest: &Client, slot: &str) -> Result<()> {
        dest.execute(
            &format!(
                "UPDATE {} SET snapshot_completed_at = now(), applied_lsn = consistent_lsn WHERE slot = $1",
                self.t("pipeline")
            ),
            &[&slot],
        )
        .await
        .map(|_| ())
        .map_err(Error::pg("recording the snapshot completion"))
    }

    /// SQL advancing the applied position: parameters slot, LSN (text), commit time.
    pub fn update_applied_sql(&self) -> String {
        format!(
            "UPDATE {} SET applied_lsn = $2::text::pg_lsn, applied_commit_time = $3 WHERE slot = $1",
            self.t("pipeline")
        )
    }

    /// SQL moving the applied position forward while idle: parameters slot, LSN (text).
    pub fn advance_idle_sql(&self) -> String {
        format!(
            "UPDATE {} SET applied_lsn = $2::text::pg_lsn WHERE slot = $1 AND applied_lsn < $2::text::pg_lsn",
            self.t("pipeline")
        )
    }

    /// Every table's `cdc sync` state (none when the state tables do not exist yet).
    pub async fn sync_states(&self, dest: &Client) -> Result<Vec<SyncState>> {
        let exists: bool = dest
            .query_one(
                "SELECT to_regclass($1) IS NOT NULL",
                &[&self.t("sync_tables")],
            )
            .await
            .map_err(Error::pg("looking for the sync state"))?
            .get(0);
        if !exists {
            return Ok(Vec::new());
        }
        Ok(dest
            .query(
                &format!(
                    "SELECT destination_table, source_table, strategy, position, last_pass, rows, seconds
                       FROM {} ORDER BY destination_table",
                    self.t("sync_tables")
                ),
                &[],
            )
            .await
            .map_err(Error::pg("reading the sync state"))?
            .into_iter()
            .map(|r| SyncState {
                destination_table: r.get(0),
                source_table: r.get(1),
                strategy: r.get(2),
                position: r.get(3),
                last_pass: r.get(4),
                rows: r.get(5),
                seconds: r.get(6),
            })
            .collect())
    }

    /// Record one table's `cdc sync` state.
    pub async fn save_sync_state(&self, dest: &Client, s: &SyncState) -> Result<()> {
        dest.execute(
            &format!(
                "INSERT INTO {} (destination_table, source_table, strategy, position, last_pass, rows, seconds)
                 VALUES ($1, $2, $3, $4, $5, $6, $7)
                 ON CONFLICT (destination_table) DO UPDATE SET source_table = EXCLUDED.source_table,
                   strategy = EXCLUDED.strategy, position = EXCLUDED.position,
                   last_pass = EXCLUDED.last_pass, rows = EXCLUDED.rows, seconds = EXCLUDED.seconds",
                self.t("sync_tables")
            ),
            &[
                &s.destination_table,
                &s.source_table,
                &s.strategy,
                &s.position,
                &s.last_pass,
                &s.rows,
                &s.seconds,
            ],
        )
        .await
        .map(|_| ())
        .map_err(Error::pg("recording the sync state"))
    }

    /// Tables that joined after the snapshot, with their copy's position.
    pub async fn joined_tables(&self, dest: &Client, slot: &str) -> Result<Vec<(String, Lsn)>> {
        Ok(dest
            .query(
                &format!(
                    "SELECT source_table, joined_lsn::text FROM {} WHERE slot = $1 AND joined_lsn IS NOT NULL",
                    self.t("snapshot_tables")
                ),
                &[&slot],
            )
            .await
            .map_err(Error::pg("reading joined tables"))?
            .into_iter()
            .filter_map(|r| Some((r.get(0), r.get::<_, String>(1).parse().ok()?)))
            .collect())
    }

    /// Record a table that joined the pipeline.
    pub async fn record_join(
        &self,
        dest: &Client,
        slot: &str,
        source: &str,
        destination: &str,
        rows: u64,
        at: Lsn,
    ) -> Result<()> {
        dest.execute(
            &format!(
                "INSERT INTO {} (slot, source_table, destination_table, rows, joined_lsn)
                 VALUES ($1, $2, $3, $4, $5::text::pg_lsn)
                 ON CONFLICT (slot, source_table) DO UPDATE
                   SET destination_table = EXCLUDED.destination_table, rows = EXCLUDED.rows,
                       joined_lsn = EXCLUDED.joined_lsn",
                self.t("snapshot_tables")
            ),
            &[
                &slot,
                &source,
                &destination,
                &(rows as i64),
                &at.to_string(),
            ],
        )
        .await
        .map(|_| ())
        .map_err(Error::pg("recording a joined table"))
    }

    /// Forget one table of `slot`.
    pub async fn forget_table(&self, dest: &Client, slot: &str, source: &str) -> Result<()> {
        dest.execute(
            &format!(
                "DELETE FROM {} WHERE slot = $1 AND source_table = $2",
                self.t("snapshot_tables")
            ),
            &[&slot, &source],
        )
        .await
        .map(|_| ())
        .map_err(Error::pg("forgetting a table"))
    }

    /// Rows copied per source table of `slot`, for reports.
    pub async fn table_rows(&self, dest: &Client, slot: &str) -> Result<Vec<(String, i64)>> {
        Ok(dest
            .query(
                &format!(
                    "SELECT source_table, rows FROM {} WHERE slot = $1 ORDER BY source_table",
                    self.t("snapshot_tables")
                ),
                &[&slot],
            )
            .await
            .map_err(Error::pg("reading snapshot table state"))?
            .into_iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect())
    }
}
