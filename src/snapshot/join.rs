//! Tables added to `[[tables]]` after the snapshot join the running pipeline; tables removed
//! from it leave. Run by `cdc run` at every (re)start, before streaming.
//!
//! ```text
//!  new table T ─► publication += T (commit P) ─► temporary slot with an exported snapshot at C
//!     (C > P) ─► copy T alone under it into a staging table ─► swapped in ─► recorded with C
//!  stream (from the pipeline's position A < C): T's changes in transactions committed before
//!     C are in the copy and skipped; those committed at or after C are applied
//! ```
//!
//! Why that is exact: the exported snapshot sees every transaction committed before C and
//! nothing after, and the pipeline's slot decodes T's changes from P on (the publication
//! already had T), so every change of T is either in the copy or applied, never both. The
//! other tables keep their positions; they wait only for the copy. The temporary slot ends with
//! the session. A run killed during the copy leaves a staging table (dropped next time) and no
//! record, so the next start copies T again; killed between the swap and the record, the
//! destination table exists without a record and the next start refuses with the fix (drop
//! it), rather than guess whose table it is.
//!
//! A removed table: its record and its place in the publication go (so re-adding it later
//! copies it anew); its destination table stays as it is, and the log says so.

use std::collections::HashMap;
use std::sync::Arc;

use super::{copy_all, ensure_publication, prereq, Job};
use crate::config::Config;
use crate::destination::{Destination, SnapshotTable};
use crate::error::{Error, Result};
use crate::lsn::Lsn;
use crate::model::schema::TableName;
use crate::model::sql::quote_ident;
use crate::source::postgres::replication::ReplicationClient;

/// Bring the pipeline's tables in line with the configuration; returns every joined table
/// with the position its copy saw up to.
pub async fn reconcile(
    config: &Config,
    dest: &Arc<dyn Destination>,
) -> Result<HashMap<TableName, Lsn>> {
    let slot = config.source.slot.as_str();
    let publication = config.source.publication.as_str();
    let recorded: Vec<String> = dest
        .snapshot_tables(slot)
        .await?
        .into_iter()
        .map(|(s, _)| s)
        .collect();
    let pairs = config.table_pairs();
    let src_info = config.source_conninfo()?;
    let removed: Vec<TableName> = recorded
        .iter()
        .filter_map(|s| TableName::parse(s).ok())
        .filter(|s| !pairs.iter().any(|(p, _)| p == s))
        .collect();
    let added: Vec<usize> = (0..pairs.len())
        .filter(|&i| !recorded.contains(&pairs[i].0.to_string()))
        .collect();
    if !removed.is_empty() || !added.is_empty() {
        let src = crate::pg::connect_qualified(&src_info).await?;
        for table in &removed {
            leave(&src, dest.as_ref(), slot, publication, table).await?;
        }
        if !added.is_empty() {
            join(config, dest, &src, &added, false).await?;
        }
    }
    Ok(dest
        .joined_tables(slot)
        .await?
        .into_iter()
        .filter_map(|(s, at)| Some((TableName::parse(&s).ok()?, at)))
        .collect())
}

async fn leave(
    src: &tokio_postgres::Client,
    dest: &dyn Destination,
    slot: &str,
    publication: &str,
    table: &TableName,
) -> Result<()> {
    tracing::warn!(table = %table,
        "no longer in [[tables]]: its changes are not applied any more; its destination table stays as it is \
         (drop it there if it is not wanted)");
    let published: bool = src
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_catalog.pg_publication_tables WHERE pubname = $1 AND schemaname = $2 AND tablename = $3)",
            &[&publication, &table.schema, &table.name],
        )
        .await
        .map_err(Error::pg("reading the publication"))?
        .get(0);
    if published {
        src.batch_execute(&format!(
            "ALTER PUBLICATION {} DROP TABLE {}",
            quote_ident(publication),
            table.quoted()
        ))
        .await
        .map_err(Error::pg(format!(
            "removing {table} from publication {publication}"
        )))?;
    }
    dest.forget_table(slot, table).await
}

/// Copy `table` again while the pipeline runs, replacing its destination table when the copy is
/// complete (readers see the old one until then): the same steps as a joining table, and the
/// stream skips its changes up to the copy's position the same way.
pub async fn recopy(config: &Config, dest: &Arc<dyn Destination>, table: &TableName) -> Result<()> {
    let pairs = config.table_pairs();
    let Some(i) = pairs.iter().position(|(s, _)| s == table) else {
        return Ok(());
    };
    // Its record stays until the new one replaces it: a run killed during the copy finds the
    // table recorded, streams from its position again and comes back here.
    let src = crate::pg::connect_qualified(&config.source_conninfo()?).await?;
    join(config, dest, &src, &[i], true).await
}

/// The staging tables the added tables are copied into (what an interrupted join left is
/// dropped first), created like their sources.
async fn create_staging(
    dest: &dyn Destination,
    new_pairs: &[(TableName, TableName)],
    checked: &prereq::Checked,
) -> Result<Vec<TableName>> {
    let staging: Vec<TableName> = new_pairs
        .iter()
        .map(|(_, d)| dest.staging_name(d))
        .collect();
    for s in &staging {
        dest.drop_table(s).await?;
    }
    let targets: Vec<SnapshotTable<'_>> = checked
        .tables
        .iter()
        .zip(&staging)
        .map(|(schema, d)| SnapshotTable {
            schema,
            destination: d,
        })
        .collect();
    dest.create_tables(&targets, &checked.types, true).await?;
    Ok(staging)
}

/// Copy the tables of `added` (indexes into the configured pairs) alone and record them as
/// joined; `replace`: their destination tables may exist and are replaced (a re-copy), else an
/// existing one is refused.
async fn join(
    config: &Config,
    dest: &Arc<dyn Destination>,
    src: &tokio_postgres::Client,
    added: &[usize],
    replace: bool,
) -> Result<()> {
    let slot = config.source.slot.as_str();
    let publication = config.source.publication.as_str();
    let src_info = config.source_conninfo()?;
    let pairs = config.table_pairs();
    let new_pairs: Vec<(TableName, TableName)> = added.iter().map(|&i| pairs[i].clone()).collect();
    let names: Vec<String> = new_pairs.iter().map(|(s, _)| s.to_string()).collect();
    tracing::info!(tables = ?names, "tables added to the configuration: copying them alone, then streaming them with the rest");
    let wanted: Vec<prereq::Wanted> = added
        .iter()
        .map(|&i| prereq::Wanted {
            source: &pairs[i].0,
            destination: &pairs[i].1,
            filter: config.tables[i].filter.as_deref(),
        })
        .collect();
    // Our slot exists and stays; the temporary one needs a free slot of its own.
    let checked = prereq::check(
        src,
        dest.as_ref(),
        &wanted,
        publication,
        &config.destination.state_schema,
        false,
        replace,
    )
    .await?;
    let via_root = checked.tables.iter().any(|t| t.partitioned);
    ensure_publication(src, publication, &new_pairs, true, via_root).await?;

    let staging = create_staging(dest.as_ref(), &new_pairs, &checked).await?;

    let mut repl = ReplicationClient::connect(&src_info).await?;
    let temp = format!("{slot}_join_{}", std::process::id());
    let (consistent, snapshot) = repl.create_temporary_snapshot(&temp).await?;
    tracing::info!(at = %consistent, "copying the added tables under a snapshot of this position");
    let jobs: Vec<Job> = checked
        .tables
        .into_iter()
        .zip(&staging)
        .zip(added)
        .map(|((schema, d), &i)| {
            Job::new(
                dest.as_ref(),
                schema,
                d.clone(),
                config.tables[i].filter.clone(),
            )
        })
        .collect();
    let workers = match config.snapshot.jobs {
        0 => std::thread::available_parallelism().map_or(2, |n| n.get()),
        n => n,
    };
    let tid_ranges = repl.server_version_num() >= 140000;
    let copied = copy_all(&src_info, dest, None, &snapshot, jobs, workers, tid_ranges).await;
    // The copies are committed (or failed): the snapshot and its temporary slot may go.
    repl.close().await;
    let reports = copied?;
    for ((report, (source, live)), staged) in reports.iter().zip(&new_pairs).zip(&staging) {
        dest.replace_table(staged, live).await?;
        dest.record_join(slot, source, live, report.rows, consistent)
            .await?;
        tracing::info!(table = %source, rows = report.rows, at = %consistent, "table joined the pipeline");
    }
    Ok(())
}
