//! Snowflake as a destination (`snowflake://USER@ACCOUNT/DATABASE/SCHEMA?warehouse=W`):
//! tables typed by `types.rs` in the URL's database, the pipeline state in `state_schema`
//! there, everything over Snowflake's REST protocol (`client.rs`).
//!
//! ```text
//!  snapshot: COPY text ─► rows ─► INSERT … SELECT conversions FROM VALUES (≤ 1 MB each) ─► record
//!  stream:   Batch ─► reduce ─► one MERGE per table (≤ 1 MB each) ─► position ─► COMMIT
//! ```
//!
//! **Exactly once**: a batch's MERGEs and its position commit in one Snowflake transaction
//! (a session's `BEGIN` … `COMMIT`). Snowflake commits an open transaction before any DDL, so
//! a source schema change applied mid-batch commits the rows before it without their
//! position; the replay after a crash then writes them again, which is harmless because every
//! table here has a key and every write is by key (inserts are upserts): keyless tables are
//! refused.

mod driver;
mod apply;
pub mod arrow;
pub mod client;
pub mod jwt;
pub mod local;
mod load;
mod merge;
mod state;
pub mod types;
pub mod url;
pub mod verify;

pub use driver::DRIVER;

pub use url::SnowflakeUrl;

use std::sync::Arc;

use async_trait::async_trait;

use super::{
    CopyFormat, Destination, Loader, PipelineState, Session, SnapshotTable, SyncState, TableSize,
};
use crate::error::Result;
use crate::lsn::Lsn;
use crate::metrics::Metrics;
use crate::model::change::TableMap;
use crate::model::schema::{TableName, TableSchema, UserType};
use crate::source::RowSource;
use client::Client;
use state::State;
use types::quote;

/// A Snowflake database.
pub struct SnowflakeDestination {
    url: SnowflakeUrl,
    /// The session for everything but applying and loading (each of those has its own).
    client: Arc<Client>,
    state: State,
    /// The pipeline's slot: its writing sessions are tagged with it.
    slot: String,
}

/// `"DATABASE"."schema"."name"`.
pub fn qualified(database: &str, t: &TableName) -> String {
    format!(
        "{}.{}.{}",
        quote(database),
        quote(&t.schema),
        quote(&t.name)
    )
}

impl SnowflakeDestination {
    /// Log in (which checks the account, the credentials, the database, the schema and the
    /// warehouse) and say which one was reached.
    pub async fn open(url: SnowflakeUrl, state_schema: &str, slot: &str) -> Result<Self> {
        let client = Arc::new(Client::new(url.clone())?);
        client.query("SELECT 1").await?;
        let state = State::new(client.clone(), &url.database, state_schema);
        Ok(SnowflakeDestination {
            url,
            client,
            state,
            slot: slot.to_owned(),
        })
    }

    fn name(&self, t: &TableName) -> String {
        qualified(&self.url.database, t)
    }

    /// Whether `t` exists (a table the role can see).
    async fn exists(&self, t: &TableName) -> Result<bool> {
        table_exists(&self.client, &self.name(t)).await
    }
}

/// Whether the table `qualified` exists, by reading none of its rows: an unknown table is
/// error 002003 (a name is resolved as the server resolves it in statements, which an
/// INFORMATION_SCHEMA lookup by exact text would not match on the emulator, whose names
/// fold case).
pub async fn table_exists(client: &Client, qualified: &str) -> Result<bool> {
    match client
        .query(&format!("SELECT 1 FROM {qualified} LIMIT 0"))
        .await
    {
        Ok(_) => Ok(true),
        Err(e) if client::code(&e) == Some("002003") => Ok(false),
        Err(e) => Err(e),
    }
}

#[async_trait]
impl Destination for SnowflakeDestination {
    fn kind(&self) -> &'static str {
        "snowflake"
    }

    fn concurrent_sessions(&self) -> bool {
        // Snowflake has no row locks to order two open transactions by.
        false
    }

    fn default_batch_rows(&self) -> usize {
        // Every statement costs a round trip and warehouse time: big batches, few MERGEs.
        50_000
    }

    async fn ensure_state(&self) -> Result<()> {
        self.state.ensure().await
    }

    async fn load_state(&self, slot: &str) -> Result<Option<PipelineState>> {
        self.state.load(slot).await
    }

    async fn begin_snapshot(&self, slot: &str, publication: &str) -> Result<()> {
        self.state.begin_snapshot(slot, publication).await
    }

    async fn set_consistent_point(&self, slot: &str, lsn: Lsn) -> Result<()> {
        self.state.set_consistent_point(slot, lsn).await
    }

    async fn complete_snapshot(&self, slot: &str) -> Result<()> {
        self.state.complete_snapshot(slot).await
    }

    async fn snapshot_tables(&self, slot: &str) -> Result<Vec<(String, i64)>> {
        self.state.snapshot_tables(slot).await
    }

    async fn joined_tables(&self, slot: &str) -> Result<Vec<(String, Lsn)>> {
        self.state.joined_tables(slot).await
    }

    async fn record_join(
        &self,
        slot: &str,
        source: &TableName,
        destination: &TableName,
        rows: u64,
        at: Lsn,
    ) -> Result<()> {
        self.state
            .record_table(slot, source, destination, rows, Some(at))
            .await
    }

    async fn forget_table(&self, slot: &str, source: &TableName) -> Result<()> {
        self.state.forget_table(slot, source).await
    }

    async fn check(
        &self,
        tables: &[SnapshotTable<'_>],
        _types: &[UserType],
        _state_schema: &str,
        replace: bool,
    ) -> Result<Vec<String>> {
        let mut problems = Vec::new();
        for t in tables {
            if t.schema.primary_key.is_empty() {
                problems.push(keyless(&t.schema.name));
            }
            if !replace && self.exists(t.destination).await? {
                problems.push(format!(
                    "destination table {} already exists in Snowflake database {}: drop it, or run \
                     `cdc snapshot --force` to replace it",
                    t.destination, self.url.database
                ));
            }
        }
        Ok(problems)
    }

    async fn create_tables(
        &self,
        tables: &[SnapshotTable<'_>],
        _types: &[UserType],
        replace: bool,
    ) -> Result<()> {
        // DDL commits on its own in Snowflake: statement by statement.
        let mut schemas: Vec<&str> = tables
            .iter()
            .map(|t| t.destination.schema.as_str())
            .collect();
        schemas.sort();
        schemas.dedup();
        for s in schemas {
            self.client
                .query(&format!(
                    "CREATE SCHEMA IF NOT EXISTS {}.{}",
                    quote(&self.url.database),
                    quote(s)
                ))
                .await?;
        }
        for t in tables {
            if t.schema.primary_key.is_empty() {
                return Err(crate::error::Error::definite(keyless(&t.schema.name)));
            }
            let name = self.name(t.destination);
            if replace {
                self.client
                    .query(&format!("DROP TABLE IF EXISTS {name}"))
                    .await?;
            }
            self.client
                .query(&create_table_sql(&name, t.schema))
                .await?;
        }
        Ok(())
    }

    fn copy_format(&self, _table: &TableSchema) -> CopyFormat {
        CopyFormat::Text
    }

    async fn loader(&self) -> Result<Box<dyn Loader>> {
        Ok(Box::new(load::SnowLoader::new(
            Client::new(self.url.clone())?,
            self.url.database.clone(),
        )))
    }

    async fn finish_table(
        &self,
        slot: Option<&str>,
        table: &SnapshotTable<'_>,
        rows: u64,
    ) -> Result<Vec<String>> {
        if let Some(slot) = slot {
            self.state
                .record_table(slot, &table.schema.name, table.destination, rows, None)
                .await?;
        }
        // Snowflake has no secondary indexes.
        Ok(table
            .schema
            .indexes
            .iter()
            .map(|i| i.name.clone())
            .collect())
    }

    async fn session(&self, metrics: Arc<Metrics>) -> Result<Box<dyn Session>> {
        let tag = format!("cdc writer {}/{}", self.url.database, self.slot);
        Ok(Box::new(apply::SnowSession::new(
            Client::tagged(self.url.clone(), tag)?,
            self.url.database.clone(),
            self.state.pipeline_table(),
            self.slot.clone(),
            metrics,
        )))
    }

    fn staging_name(&self, table: &TableName) -> TableName {
        TableName {
            schema: table.schema.clone(),
            name: format!("{}__cdc_reload", table.name),
        }
    }

    async fn replace_table(&self, staging: &TableName, table: &TableName) -> Result<()> {
        let (staged, live) = (self.name(staging), self.name(table));
        if !self.exists(table).await? {
            return self
                .client
                .query(&format!("ALTER TABLE {staged} RENAME TO {live}"))
                .await
                .map(|_| ());
        }
        // One atomic statement on Snowflake.
        match self
            .client
            .query(&format!("ALTER TABLE {staged} SWAP WITH {live}"))
            .await
        {
            Ok(_) => {}
            // The emulator has no SWAP WITH (a syntax error there): a drop and a rename.
            Err(e) if client::code(&e) == Some("001003") => {
                self.client.query(&format!("DROP TABLE {live}")).await?;
                self.client
                    .query(&format!("ALTER TABLE {staged} RENAME TO {live}"))
                    .await?;
                return Ok(());
            }
            Err(e) => return Err(e),
        }
        self.client
            .query(&format!("DROP TABLE IF EXISTS {staged}"))
            .await
            .map(|_| ())
    }

    async fn drop_table(&self, table: &TableName) -> Result<()> {
        self.client
            .query(&format!("DROP TABLE IF EXISTS {}", self.name(table)))
            .await
            .map(|_| ())
    }

    fn value_kind(&self, type_name: &str) -> crate::model::kind::Kind {
        types::value_kind(type_name)
    }

    async fn table_size(&self, table: &TableName) -> Result<Option<TableSize>> {
        if !self.exists(table).await? {
            return Ok(None);
        }
        let rows = self
            .client
            .query(&format!(
                "SELECT COUNT(*)::VARCHAR FROM {}",
                self.name(table)
            ))
            .await?;
        let rows = rows
            .first()
            .and_then(|r| r[0].as_deref())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0);
        Ok(Some(TableSize { rows, bytes: None }))
    }

    async fn table_exists(&self, table: &TableName) -> Result<bool> {
        self.exists(table).await
    }

    async fn rows_by_key(&self, map: &TableMap, _text_key: &[bool]) -> Result<Box<dyn RowSource>> {
        // Snowflake orders VARCHAR by code point, which is UTF-8's byte order.
        Ok(Box::new(load::KeyOrdered::new(
            self.client.clone(),
            &self.url.database,
            map,
        )))
    }

    async fn sync_states(&self) -> Result<Vec<SyncState>> {
        self.state.sync_states().await
    }

    async fn save_sync_state(&self, state: &SyncState) -> Result<()> {
        self.state.save_sync_state(state).await
    }
}

/// `CREATE TABLE` for a source table: its copied columns and its key (which Snowflake records
/// but does not enforce; cdc reads it back as the key rows are matched by).
pub fn create_table_sql(name: &str, schema: &TableSchema) -> String {
    let mut cols: Vec<String> = schema
        .copied_columns()
        .map(|c| {
            let null = if c.not_null { " NOT NULL" } else { "" };
            format!("{} {}{null}", quote(&c.name), types::create_type(c))
        })
        .collect();
    let key: Vec<String> = schema.primary_key.iter().map(|c| quote(c)).collect();
    cols.push(format!("PRIMARY KEY ({})", key.join(", ")));
    format!("CREATE TABLE {name} ({})", cols.join(", "))
}

fn keyless(table: &TableName) -> String {
    format!(
        "table {table} has no primary key, and Snowflake writes are matched by key (it enforces \
         no uniqueness to fall back on): add one on the source (ALTER TABLE {} ADD PRIMARY KEY (...)) \
         or leave the table out",
        table.quoted()
    )
}
