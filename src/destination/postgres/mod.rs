//! Postgres as a destination: tables created with the source's exact types, COPY for the
//! snapshot, set-based statements over text arrays cast to the destination types for changes,
//! and the pipeline state in `state_schema` of the same database.

mod driver;
mod apply;
pub mod ddl;
mod load;
mod sql;
pub mod state;

pub use driver::DRIVER;

use std::sync::Arc;

use async_trait::async_trait;
use tokio::sync::OnceCell;
use tokio_postgres::Client;

use super::{
    CopyFormat, Destination, Loader, PipelineState, Session, SnapshotTable, SyncState, TableSize,
};
use crate::conninfo::ConnInfo;
use crate::error::{Error, Result};
use crate::lsn::Lsn;
use crate::metrics::Metrics;
use crate::model::change::TableMap;
use crate::model::schema::{DestForeignKey, TableName};
use crate::model::schema::{TableSchema, UserType};
use crate::model::sql::quote_ident;
use crate::source::postgres::rows::RowCursor;
use crate::source::RowSource;
pub use apply::PgSession;
use state::StateStore;

/// A Postgres destination database.
pub struct PgDestination {
    info: ConnInfo,
    state_schema: String,
    store: StateStore,
    /// The session for state and DDL, opened on first use.
    admin: OnceCell<Client>,
}

impl PgDestination {
    pub fn new(info: ConnInfo, state_schema: &str) -> Self {
        PgDestination {
            info,
            state_schema: state_schema.to_owned(),
            store: StateStore::new(state_schema),
            admin: OnceCell::new(),
        }
    }

    async fn admin(&self) -> Result<&Client> {
        self.admin
            .get_or_try_init(|| crate::pg::connect(&self.info))
            .await
    }
}

#[async_trait]
impl Destination for PgDestination {
    fn kind(&self) -> &'static str {
        "postgres"
    }

    fn concurrent_sessions(&self) -> bool {
        true
    }

    async fn ensure_state(&self) -> Result<()> {
        self.store.ensure(self.admin().await?).await
    }

    async fn load_state(&self, slot: &str) -> Result<Option<PipelineState>> {
        self.store.load(self.admin().await?, slot).await
    }

    async fn begin_snapshot(&self, slot: &str, publication: &str) -> Result<()> {
        self.store
            .begin_snapshot(self.admin().await?, slot, publication)
            .await
    }

    async fn set_consistent_point(&self, slot: &str, lsn: Lsn) -> Result<()> {
        self.store
            .set_consistent_point(self.admin().await?, slot, lsn)
            .await
    }

    async fn complete_snapshot(&self, slot: &str) -> Result<()> {
        self.store
            .complete_snapshot(self.admin().await?, slot)
            .await
    }

    async fn snapshot_tables(&self, slot: &str) -> Result<Vec<(String, i64)>> {
        self.store.table_rows(self.admin().await?, slot).await
    }

    async fn check(
        &self,
        tables: &[SnapshotTable<'_>],
        types: &[UserType],
        state_schema: &str,
        replace: bool,
    ) -> Result<Vec<String>> {
        let dst = self.admin().await?;
        let pg = |what: &'static str| Error::pg(what);
        let mut problems = Vec::new();
        let mut schemas: Vec<&str> = tables
            .iter()
            .map(|t| t.destination.schema.as_str())
            .collect();
        schemas.push(state_schema);
        schemas.sort();
        schemas.dedup();
        for schema in schemas {
            let ok: bool = dst
                .query_one(
                    "SELECT CASE WHEN to_regnamespace(quote_ident($1)) IS NULL
                                 THEN has_database_privilege(current_database(), 'CREATE')
                                 ELSE has_schema_privilege(to_regnamespace(quote_ident($1)), 'CREATE') END",
                    &[&schema],
                )
                .await
                .map_err(pg("checking destination privileges"))?
                .get(0);
            if !ok {
                problems.push(format!(
                    "the destination role cannot create tables in schema {schema}: GRANT CREATE ON SCHEMA {0} \
                     (or, if it does not exist yet, GRANT CREATE ON DATABASE) to it",
                    quote_ident(schema)
                ));
            }
        }
        for t in tables {
            let exists: bool = dst
                .query_one(
                    "SELECT to_regclass($1) IS NOT NULL",
                    &[&t.destination.quoted()],
                )
                .await
                .map_err(pg("looking for destination tables"))?
                .get(0);
            if exists && !replace {
                problems.push(format!(
                    "destination table {} already exists: drop it, or run `cdc snapshot --force` to replace it",
                    t.destination
                ));
            }
        }
        for t in types {
            let oid: Option<u32> = dst
                .query_one("SELECT to_regtype($1)::oid", &[&t.name()])
                .await
                .map_err(pg("looking for destination types"))?
                .get(0);
            let existing: Option<Vec<String>> = match oid {
                None => None,
                Some(oid) => Some(
                    dst.query("SELECT enumlabel::text FROM pg_enum WHERE enumtypid = $1 ORDER BY enumsortorder", &[&oid])
                        .await
                        .map_err(pg("reading destination enum"))?
                        .into_iter()
                        .map(|r| r.get(0))
                        .collect(),
                ),
            };
            match (t, existing) {
                (UserType::External { name, kind }, None) => problems.push(format!(
                    "type {name} ({kind} type, e.g. from an extension) does not exist on the destination: install it \
                     there first (for an extension: CREATE EXTENSION ...)"
                )),
                (UserType::Enum { name, labels }, Some(dest_labels)) if *labels != dest_labels => {
                    problems.push(format!(
                        "enum {name} exists on the destination with labels {dest_labels:?}, the source has {labels:?}: \
                         align them (ALTER TYPE ... ADD VALUE) or drop the destination type"
                    ))
                }
                _ => {}
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
        let dst = self.admin().await?;
        let mut sql = vec!["BEGIN".to_owned()];
        let mut schemas: Vec<&str> = tables
            .iter()
            .map(|t| t.destination.schema.as_str())
            .collect();
        schemas.sort();
        schemas.dedup();
        sql.extend(schemas.iter().map(|s| ddl::create_schema(s)));
        if replace {
            sql.extend(
                tables
                    .iter()
                    .map(|t| format!("DROP TABLE IF EXISTS {}", t.destination.quoted())),
            );
        }
        for t in types {
            let exists: bool = dst
                .query_one("SELECT to_regtype($1) IS NOT NULL", &[&t.name()])
                .await
                .map_err(Error::pg("looking for destination types"))?
                .get(0);
            if let (false, Some(create)) = (exists, ddl::create_type(t)) {
                let schema = t.name().split('.').next().unwrap_or("public");
                sql.push(format!("CREATE SCHEMA IF NOT EXISTS {schema}"));
                sql.push(create);
            }
        }
        for t in tables {
            sql.push(ddl::create_table(t.destination, t.schema));
        }
        sql.push("COMMIT".into());
        dst.batch_execute(&sql.join(";\n"))
            .await
            .map_err(Error::pg("creating destination tables"))
    }

    fn copy_format(&self, table: &TableSchema) -> CopyFormat {
        if table.binary_copy_safe() {
            CopyFormat::Binary
        } else {
            CopyFormat::Text
        }
    }

    async fn loader(&self) -> Result<Box<dyn Loader>> {
        Ok(Box::new(load::PgLoader {
            client: crate::pg::connect(&self.info).await?,
        }))
    }

    async fn finish_table(
        &self,
        slot: Option<&str>,
        table: &SnapshotTable<'_>,
        rows: u64,
    ) -> Result<Vec<String>> {
        // A connection of its own: several tables finish at once.
        let dst = crate::pg::connect(&self.info).await?;
        let d = table.destination;
        let schema = table.schema;
        let ctx = format!("finishing {d}");
        dst.batch_execute("BEGIN; SET LOCAL maintenance_work_mem = '256MB'")
            .await
            .map_err(Error::pg(ctx.clone()))?;
        if let Some(pk) = ddl::add_primary_key(d, schema) {
            dst.batch_execute(&pk)
                .await
                .map_err(Error::pg(format!("adding the primary key of {d}")))?;
        }
        if let Some(ri) = ddl::replica_identity(d, schema) {
            dst.batch_execute(&ri)
                .await
                .map_err(Error::pg(ctx.clone()))?;
        }
        let mut skipped = Vec::new();
        for idx in &schema.indexes {
            // An index whose expression uses something the destination lacks is skipped, not
            // fatal: the rows are correct without it.
            let sql = format!("SAVEPOINT idx; {}", ddl::create_index(d, idx));
            if let Err(e) = dst.batch_execute(&sql).await {
                let why = e
                    .as_db_error()
                    .map(|db| db.message().to_owned())
                    .unwrap_or_else(|| e.to_string());
                tracing::warn!(table = %d, index = %idx.name, error = %why, "index not created on the destination");
                dst.batch_execute("ROLLBACK TO SAVEPOINT idx")
                    .await
                    .map_err(Error::pg(ctx.clone()))?;
                skipped.push(idx.name.clone());
            }
        }
        let record = slot.map_or(String::new(), |slot| {
            self.store
                .table_done_sql(slot, &schema.name.to_string(), &d.to_string(), rows)
        });
        dst.batch_execute(&format!("{record}; COMMIT"))
            .await
            .map_err(Error::pg(ctx.clone()))?;
        // Statistics now, not whenever autovacuum gets to it: the first statements against a
        // freshly loaded table (a diff's range queries, the stream's joins) were planned as
        // if it were empty (bench/sync: a diff right after a first pass took 41 s, 10 s once
        // analyzed).
        dst.batch_execute(&format!("ANALYZE {}", d.quoted()))
            .await
            .map_err(Error::pg(ctx))?;
        Ok(skipped)
    }

    async fn session(&self, metrics: Arc<Metrics>) -> Result<Box<dyn Session>> {
        let client = crate::pg::connect_qualified(&self.info).await?;
        Ok(Box::new(PgSession::new(
            client,
            self.store.clone(),
            metrics,
        )))
    }

    async fn joined_tables(&self, slot: &str) -> Result<Vec<(String, Lsn)>> {
        self.store.joined_tables(self.admin().await?, slot).await
    }

    async fn record_join(
        &self,
        slot: &str,
        source: &TableName,
        destination: &TableName,
        rows: u64,
        at: Lsn,
    ) -> Result<()> {
        self.store
            .record_join(
                self.admin().await?,
                slot,
                &source.to_string(),
                &destination.to_string(),
                rows,
                at,
            )
            .await
    }

    async fn forget_table(&self, slot: &str, source: &TableName) -> Result<()> {
        self.store
            .forget_table(self.admin().await?, slot, &source.to_string())
            .await
    }

    fn staging_name(&self, table: &TableName) -> TableName {
        // The same name in a schema of its own: the staged table's key and indexes get the
        // names the live ones have (index names are per schema), and move with the table.
        TableName {
            schema: format!("{}_reload_{}", self.state_schema, table.schema),
            name: table.name.clone(),
        }
    }

    async fn replace_table(&self, staging: &TableName, table: &TableName) -> Result<()> {
        let mut sql = format!(
            "BEGIN; CREATE SCHEMA IF NOT EXISTS {schema}; DROP TABLE IF EXISTS {live}; ALTER TABLE {staged} SET SCHEMA {schema};",
            live = table.quoted(),
            staged = staging.quoted(),
            schema = quote_ident(&table.schema),
        );
        if staging.name != table.name {
            sql.push_str(&format!(
                " ALTER TABLE {}.{} RENAME TO {};",
                quote_ident(&table.schema),
                quote_ident(&staging.name),
                quote_ident(&table.name)
            ));
        }
        sql.push_str(" COMMIT");
        let dst = self.admin().await?;
        let result = dst.batch_execute(&sql).await;
        if result.is_err() {
            let _ = dst.batch_execute("ROLLBACK").await;
        }
        result.map_err(Error::pg(format!("swapping the reloaded {table} in")))
    }

    fn enforces_foreign_keys(&self) -> bool {
        true
    }

    async fn ensure_foreign_key(&self, table: &TableName, fk: &DestForeignKey) -> Result<bool> {
        let dst = self.admin().await?;
        let exists: bool = dst
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM pg_constraint c WHERE c.contype = 'f' \
                   AND c.conrelid = $1::text::regclass AND c.confrelid = $2::text::regclass \
                   AND (SELECT array_agg(a.attname::text ORDER BY k.ord) \
                          FROM unnest(c.conkey) WITH ORDINALITY k(attnum, ord) \
                          JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = k.attnum) = $3::text[])",
                &[&table.quoted(), &fk.references.quoted(), &fk.columns],
            )
            .await
            .map_err(Error::pg(format!("looking for the foreign keys of {table}")))?
            .get(0);
        if exists {
            return Ok(false);
        }
        let sql = ddl::add_foreign_key(table, fk);
        dst.batch_execute(&sql).await.map_err(|e| {
            let why = e
                .as_db_error()
                .map(|db| {
                    format!(
                        "{}{}",
                        db.message(),
                        db.detail().map(|d| format!(" ({d})")).unwrap_or_default()
                    )
                })
                .unwrap_or_else(|| e.to_string());
            Error::definite(format!(
                "the foreign key of {table} ({}) referencing {} cannot be created: {why}. \
                 The source has rows that break it (SQLite checks foreign keys only with \
                 PRAGMA foreign_keys = ON): fix them there, and the next pass creates it",
                fk.columns.join(", "),
                fk.references
            ))
        })?;
        Ok(true)
    }

    async fn rows_by_key(&self, map: &TableMap, text_key: &[bool]) -> Result<Box<dyn RowSource>> {
        let client = crate::pg::connect(&self.info).await?;
        client
            .batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            .await
            .map_err(Error::pg(format!("reading {}", map.dest)))?;
        let sql = ddl::select_by_key(map, text_key);
        let cursor = RowCursor::declare(&client, "cdc_rows_by_key", &sql).await?;
        Ok(Box::new(load::PgRows { client, cursor }))
    }

    async fn drop_table(&self, table: &TableName) -> Result<()> {
        self.admin()
            .await?
            .batch_execute(&format!("DROP TABLE IF EXISTS {}", table.quoted()))
            .await
            .map_err(Error::pg(format!("dropping {table}")))
    }

    async fn table_exists(&self, table: &TableName) -> Result<bool> {
        Ok(self
            .admin()
            .await?
            .query_one("SELECT to_regclass($1) IS NOT NULL", &[&table.quoted()])
            .await
            .map_err(Error::pg(format!("looking for {table}")))?
            .get(0))
    }

    async fn table_size(&self, table: &TableName) -> Result<Option<TableSize>> {
        if !self.table_exists(table).await? {
            return Ok(None);
        }
        let dst = self.admin().await?;
        let row = dst
            .query_one(
                &format!(
                    "SELECT (SELECT count(*) FROM {t}), pg_total_relation_size($1::text::regclass)",
                    t = table.quoted()
                ),
                &[&table.quoted()],
            )
            .await
            .map_err(Error::pg(format!("sizing {table}")))?;
        Ok(Some(TableSize {
            rows: row.get(0),
            bytes: Some(row.get(1)),
        }))
    }

    async fn sync_states(&self) -> Result<Vec<SyncState>> {
        self.store.sync_states(self.admin().await?).await
    }

    async fn save_sync_state(&self, state: &SyncState) -> Result<()> {
        self.store.save_sync_state(self.admin().await?, state).await
    }
}
