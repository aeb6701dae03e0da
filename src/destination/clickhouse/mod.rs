//! ClickHouse as a destination (`clickhouse://USER@HOST:PORT/DATABASE`, HTTP interface).
//!
//! Insert-only CDC with versioned rows: each source table becomes a `ReplacingMergeTree`
//! storage table keyed on the source's primary key with two columns of ours, a version (from
//! the change's commit LSN and its order in the transaction, never from a clock, so a replay
//! after a crash writes the very same versions and is deduplicated) and a deleted flag; users
//! query a view over it (`FINAL`, deleted rows filtered) named like the source table.
//!
//! ```text
//!  url.rs ─ the URL          http.rs ─ statements and streamed INSERTs over HTTP(S)
//!  types.rs ─ Postgres → ClickHouse types   ddl.rs ─ storage table + view (ON CLUSTER)
//!  tsv.rs ─ Postgres text → TabSeparated (out-of-range values refused)
//!  load.rs ─ snapshot: one streamed INSERT per range     apply.rs ─ stream: versioned rows
//!  state.rs ─ pipeline, positions, copied tables, sync states (ReplacingMergeTree, FINAL)
//!  rows.rs ─ a view's rows in key order, page by page (a SQLite `diff` pass)
//!  verify.rs ─ `cdc verify`: the source loaded beside the view, compared by joins
//! ```
//!
//! Idempotent rather than transactional: the position is stored after the rows, and a replay
//! from it leaves the same final state. `cdc sync` writes have no WAL position: each writer's
//! versions start above the highest its table holds (`Session::sync_versions_from`), and a
//! reload is built in a staging table and swapped in with `EXCHANGE TABLES`.
mod driver;
pub mod apply;
pub mod ddl;
pub mod http;
pub mod local;
pub mod load;
pub mod rows;
pub mod state;
pub mod tsv;
pub mod types;
pub mod url;
pub mod verify;

pub use driver::DRIVER;

pub use url::ClickHouseUrl;

use std::sync::Arc;

use async_trait::async_trait;

use self::ddl::{quote, Names};
use self::http::Client;
use self::state::{literal, State};
use crate::destination::{
    CopyFormat, Destination, Loader, PipelineState, Session, SnapshotTable, SyncState, TableSize,
};
use crate::error::{Error, Result};
use crate::lsn::Lsn;
use crate::metrics::Metrics;
use crate::model::change::TableMap;
use crate::model::schema::TableName;
use crate::model::schema::{TableSchema, UserType};
use crate::source::RowSource;

/// The oldest server cdc writes to: `ReplacingMergeTree(version, is_deleted)` came in 23.2
/// and lightweight `DELETE` in 23.3; 23.8 is the long-term release that has both.
pub const MIN_VERSION: (u32, u32) = (23, 8);

pub struct ClickHouseDestination {
    client: Client,
    state: State,
    cluster: Option<String>,
}

/// Whether a server of `version` (`SELECT version()`) is one cdc writes to.
fn supported(version: &str) -> Result<()> {
    let mut parts = version.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
    let have = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
    if have < MIN_VERSION {
        return Err(Error::definite(format!(
            "ClickHouse {version} is too old: cdc needs {}.{} or newer (ReplacingMergeTree with a deleted \
             flag, lightweight DELETE); upgrade the server",
            MIN_VERSION.0, MIN_VERSION.1
        )));
    }
    Ok(())
}

/// Why a table without a primary key cannot go into ClickHouse, and what to do.
fn keyless(table: &TableSchema) -> String {
    format!(
        "{} has no primary key, and ClickHouse rows are replaced by key (ReplacingMergeTree): add \
         one on the source (ALTER TABLE {} ADD PRIMARY KEY (...)) or leave the table out",
        table.name,
        table.name.quoted()
    )
}

impl ClickHouseDestination {
    pub async fn open(
        url: ClickHouseUrl,
        state_schema: &str,
        cluster: Option<&str>,
    ) -> Result<Self> {
        let client = Client::new(url)?;
        Ok(ClickHouseDestination {
            state: State {
                client: client.clone(),
                database: state_schema.to_owned(),
            },
            client,
            cluster: cluster.map(str::to_owned),
        })
    }

    fn names(&self, table: &TableName) -> Names {
        Names::of(self.client.database(), table)
    }

    fn on_cluster(&self) -> String {
        ddl::on_cluster(self.cluster.as_deref())
    }

    /// Refuse servers older than [`MIN_VERSION`] (and say which one answered).
    async fn check_version(&self) -> Result<()> {
        let out = self.client.query("SELECT version() FORMAT TSV").await?;
        supported(String::from_utf8_lossy(&out).trim())
    }

    async fn exists(&self, database: &str, name: &str) -> Result<bool> {
        let out = self
            .client
            .query(&format!(
                "SELECT count() FROM system.tables WHERE database = {} AND name = {} FORMAT TSV",
                literal(database),
                literal(name)
            ))
            .await?;
        Ok(out.as_ref() != b"0\n")
    }

    async fn drop_names(&self, names: &Names) -> Result<()> {
        let db = quote(&names.database);
        for sql in [
            format!(
                "DROP VIEW IF EXISTS {db}.{}{}",
                quote(&names.view),
                self.on_cluster()
            ),
            format!(
                "DROP TABLE IF EXISTS {db}.{}{}",
                quote(&names.distributed),
                self.on_cluster()
            ),
            format!(
                "DROP TABLE IF EXISTS {db}.{}{} SYNC",
                quote(&names.storage),
                self.on_cluster()
            ),
        ] {
            self.client.query(&sql).await?;
        }
        Ok(())
    }
}

#[async_trait]
impl Destination for ClickHouseDestination {
    fn kind(&self) -> &'static str {
        "clickhouse"
    }

    fn concurrent_sessions(&self) -> bool {
        // Applying ahead relies on row locks ordering two sessions; ClickHouse has none.
        false
    }

    fn default_batch_rows(&self) -> usize {
        // Each batch is an INSERT per table (a new part on disk) plus the position: fewer,
        // larger batches keep the part count and the merges down.
        50_000
    }

    async fn ensure_state(&self) -> Result<()> {
        self.check_version().await?;
        for sql in state::create_sql(&self.state.database, self.cluster.as_deref()) {
            self.client.query(&sql).await?;
        }
        Ok(())
    }

    async fn load_state(&self, slot: &str) -> Result<Option<PipelineState>> {
        self.state.load(slot).await
    }

    async fn begin_snapshot(&self, slot: &str, publication: &str) -> Result<()> {
        // The new pipeline record supersedes the old one (a higher version): there is no
        // moment without one. What the old snapshot recorded goes first.
        self.state.delete_progress(slot).await?;
        self.state
            .write_pipeline(slot, publication, None, false)
            .await
    }

    async fn set_consistent_point(&self, slot: &str, lsn: Lsn) -> Result<()> {
        self.state
            .update_pipeline(slot, |c, _| *c = Some(lsn.0))
            .await
            .map(|_| ())
    }

    async fn complete_snapshot(&self, slot: &str) -> Result<()> {
        // Two writes without a transaction: the position first, so that a crash between them
        // leaves an unfinished snapshot (taken again) rather than a finished one without a
        // position (which `cdc run` could only refuse).
        let consistent = self.state.pipeline(slot).await?.and_then(|(_, c, _)| c);
        let lsn = consistent.ok_or_else(|| {
            Error::definite(format!(
                "snapshot of {slot} completed without a consistent point"
            ))
        })?;
        self.state.write_position(slot, Lsn(lsn), None).await?;
        self.state
            .update_pipeline(slot, |_, done| *done = true)
            .await
            .map(|_| ())
    }

    async fn snapshot_tables(&self, slot: &str) -> Result<Vec<(String, i64)>> {
        Ok(self
            .state
            .tables(slot)
            .await?
            .into_iter()
            .map(|(t, rows, _)| (t, rows))
            .collect())
    }

    async fn joined_tables(&self, slot: &str) -> Result<Vec<(String, Lsn)>> {
        Ok(self
            .state
            .tables(slot)
            .await?
            .into_iter()
            .filter_map(|(t, _, joined)| Some((t, joined?)))
            .collect())
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
            .record_table(
                slot,
                &source.to_string(),
                &destination.to_string(),
                rows,
                Some(at),
            )
            .await
    }

    async fn forget_table(&self, slot: &str, source: &TableName) -> Result<()> {
        self.state.forget_table(slot, &source.to_string()).await
    }

    async fn check(
        &self,
        tables: &[SnapshotTable<'_>],
        _types: &[UserType],
        _state_schema: &str,
        replace: bool,
    ) -> Result<Vec<String>> {
        self.check_version().await?;
        let mut problems = Vec::new();
        for t in tables {
            if t.schema.primary_key.is_empty() {
                problems.push(keyless(t.schema));
            }
            let names = self.names(t.destination);
            if !replace && self.exists(&names.database, &names.storage).await? {
                problems.push(format!(
                    "destination table {}.{} already exists in ClickHouse: drop it, or run `cdc snapshot \
                     --force` to replace it",
                    names.database, names.storage
                ));
            }
        }
        Ok(problems)
    }

    async fn create_tables(
        &self,
        tables: &[SnapshotTable<'_>],
        types: &[UserType],
        replace: bool,
    ) -> Result<()> {
        let enums: Vec<String> = types
            .iter()
            .filter_map(|t| match t {
                UserType::Enum { name, .. } => Some(name.clone()),
                _ => None,
            })
            .collect();
        // A sync's reload comes here without `check`.
        if let Some(t) = tables.iter().find(|t| t.schema.primary_key.is_empty()) {
            return Err(Error::definite(keyless(t.schema)));
        }
        for t in tables {
            let names = self.names(t.destination);
            if replace {
                self.drop_names(&names).await?;
            }
            for sql in
                ddl::create_table_with_enums(&names, t.schema, self.cluster.as_deref(), &enums)
            {
                self.client.query(&sql).await?;
            }
        }
        Ok(())
    }

    fn copy_format(&self, _table: &TableSchema) -> CopyFormat {
        CopyFormat::Text
    }

    async fn loader(&self) -> Result<Box<dyn Loader>> {
        Ok(Box::new(load::ClickHouseLoader::new(
            self.client.clone(),
            self.cluster.clone(),
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
                .record_table(
                    slot,
                    &table.schema.name.to_string(),
                    &table.destination.to_string(),
                    rows,
                    None,
                )
                .await?;
        }
        // The sorting key is the primary key; secondary indexes are Postgres's business.
        let skipped: Vec<String> = table
            .schema
            .indexes
            .iter()
            .map(|i| i.name.clone())
            .collect();
        if !skipped.is_empty() {
            tracing::info!(table = %table.destination, indexes = ?skipped, "secondary indexes are not created in ClickHouse");
        }
        Ok(skipped)
    }

    async fn session(&self, metrics: Arc<Metrics>) -> Result<Box<dyn Session>> {
        Ok(Box::new(apply::ClickSession::new(
            self.client.clone(),
            self.state.clone(),
            self.cluster.clone(),
            metrics,
        )))
    }

    fn staging_name(&self, table: &TableName) -> TableName {
        TableName {
            schema: table.schema.clone(),
            name: format!("{}__cdc_staging", table.name),
        }
    }

    async fn replace_table(&self, staging: &TableName, table: &TableName) -> Result<()> {
        let (from, to) = (self.names(staging), self.names(table));
        let db = quote(&to.database);
        if self.exists(&to.database, &to.storage).await? {
            self.client
                .query(&format!(
                    "EXCHANGE TABLES {db}.{} AND {db}.{}{}",
                    quote(&from.storage),
                    quote(&to.storage),
                    self.on_cluster()
                ))
                .await?;
        } else {
            self.client
                .query(&format!(
                    "RENAME TABLE {db}.{} TO {db}.{}{}",
                    quote(&from.storage),
                    quote(&to.storage),
                    self.on_cluster()
                ))
                .await?;
        }
        // The staging view read the staging storage; the table's view reads its own.
        let view = self
            .client
            .query(&format!(
                "SELECT create_table_query FROM system.tables WHERE database = {} AND name = {} FORMAT TSVRaw",
                literal(&from.database),
                literal(&from.view)
            ))
            .await?;
        let view = String::from_utf8_lossy(&view).trim().to_owned();
        let fixed = view
            .replacen(
                &format!("VIEW {}.{}", from.database, from.view),
                &format!("OR REPLACE VIEW {db}.{}", quote(&to.view)),
                1,
            )
            .replace(
                &format!("{}.{}", from.database, from.storage),
                &format!("{db}.{}", quote(&to.storage)),
            );
        if !fixed.starts_with("CREATE OR REPLACE VIEW") {
            return Err(Error::definite(format!(
                "cannot read the definition of the staging view {}.{}",
                from.database, from.view
            )));
        }
        self.client.query(&fixed).await?;
        self.drop_names(&from).await
    }

    async fn drop_table(&self, table: &TableName) -> Result<()> {
        self.drop_names(&self.names(table)).await
    }

    fn value_kind(&self, type_name: &str) -> crate::model::kind::Kind {
        types::value_kind(type_name)
    }

    async fn table_size(&self, table: &TableName) -> Result<Option<TableSize>> {
        let names = self.names(table);
        if !self.exists(&names.database, &names.storage).await? {
            return Ok(None);
        }
        let out = self
            .client
            .query(&format!(
                "SELECT (SELECT count() FROM {}.{}), (SELECT sum(bytes_on_disk) FROM system.parts \
                 WHERE database = {} AND table = {} AND active) FORMAT TSV",
                quote(&names.database),
                quote(&names.view),
                literal(&names.database),
                literal(&names.storage)
            ))
            .await?;
        let row: Vec<i64> = String::from_utf8_lossy(&out)
            .split_whitespace()
            .map(|v| v.parse().unwrap_or(0))
            .collect();
        Ok(Some(TableSize {
            rows: row.first().copied().unwrap_or(0),
            bytes: row.get(1).copied(),
        }))
    }

    async fn table_exists(&self, table: &TableName) -> Result<bool> {
        let names = self.names(table);
        self.exists(&names.database, &names.storage).await
    }

    async fn rows_by_key(&self, map: &TableMap, _text_key: &[bool]) -> Result<Box<dyn RowSource>> {
        // ClickHouse orders Strings by their bytes already.
        Ok(Box::new(rows::KeyOrdered::new(self.client.clone(), map)))
    }

    async fn sync_states(&self) -> Result<Vec<SyncState>> {
        self.state.sync_states().await
    }

    async fn save_sync_state(&self, state: &SyncState) -> Result<()> {
        self.state.save_sync_state(state).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn servers_older_than_the_minimum_are_refused_by_name() {
        assert!(supported("26.9.2.1").is_ok());
        assert!(supported("23.8.1.2992").is_ok());
        let e = supported("18.16.1").unwrap_err().to_string();
        assert!(
            e.contains("ClickHouse 18.16.1 is too old") && e.contains("23.8"),
            "{e}"
        );
        assert!(supported("23.3.1").is_err());
    }

    #[test]
    fn state_tables_on_a_cluster_are_replicated() {
        let sql = state::create_sql("cdc", Some("prod"));
        assert_eq!(
            sql[0],
            "CREATE DATABASE IF NOT EXISTS `cdc` ON CLUSTER `prod`"
        );
        assert!(
            sql[2].starts_with("CREATE TABLE IF NOT EXISTS `cdc`.positions ON CLUSTER `prod` (")
        );
        assert!(sql[2].ends_with(
            "ENGINE = ReplicatedReplacingMergeTree('/clickhouse/tables/{shard}/{database}/{table}', '{replica}', applied_lsn) ORDER BY slot"
        ));
        let single = state::create_sql("cdc", None);
        assert!(single[1].contains("ENGINE = ReplacingMergeTree(seq) ORDER BY slot"));
    }
}
