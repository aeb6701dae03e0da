//! `cdc snapshot`: a consistent bootstrap of the destination from an exported slot snapshot.
//!
//! ```text
//!  check prerequisites (read-only, all problems at once)
//!    └► clean up an interrupted earlier run (its slot, its state row)
//!       └► publication ─► destination types + tables (no keys yet)
//!          └► state row "snapshot started" ─► CREATE_REPLICATION_SLOT ... (SNAPSHOT 'export')
//!             └► N workers: each imports the snapshot, copies page ranges   (slot connection
//!                └► per table, when its ranges are in: primary key,          stays idle and
//!                   indexes, "table done" ─ one transaction                   open meanwhile)
//!                   └► "snapshot complete", applied_lsn = consistent point
//! ```
//!
//! Why this order: the publication exists before the slot so the slot's decoding sees it;
//! the state row exists before the slot so that a run killed at any point leaves a trace the
//! next run uses to drop the orphan slot; the snapshot is complete only when the last
//! transaction says so, so `cdc run` can never mistake a partial copy for a finished one.
//! **A failed snapshot drops the slot it created** (an orphan slot pins WAL forever).

pub mod chunked;
pub mod copy;
pub mod join;
pub mod prereq;
mod progress;
mod report;

use std::collections::VecDeque;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::task::JoinSet;
use tokio_postgres::Client;

use crate::config::Config;

use crate::conninfo::ConnInfo;
use crate::destination::{CopyFormat, Destination, SnapshotTable};
use crate::error::{Error, Result};
use crate::model::schema::TableName;
use crate::model::schema::TableSchema;
use crate::model::sql::quote_ident;
use crate::source::postgres::copy_out::CopySource;
use crate::source::postgres::replication::ReplicationClient;

pub use report::{SnapshotReport, TableReport};

/// One table to copy, with everything the workers need.
pub(crate) struct Job {
    schema: TableSchema,
    destination: TableName,
    filter: Option<String>,
    format: CopyFormat,
    bytes: AtomicU64,
}

impl Job {
    /// Copy `schema` (its rows meeting `filter`) into `destination` of `dest`.
    pub(crate) fn new(
        dest: &dyn Destination,
        schema: TableSchema,
        destination: TableName,
        filter: Option<String>,
    ) -> Job {
        Job {
            format: dest.copy_format(&schema),
            schema,
            destination,
            filter,
            bytes: AtomicU64::new(0),
        }
    }

    fn target(&self) -> SnapshotTable<'_> {
        SnapshotTable {
            schema: &self.schema,
            destination: &self.destination,
        }
    }
}

/// Run the snapshot described by `config`. With `force`, redo a completed one and replace
/// existing destination tables.
pub async fn run(config: &Config, force: bool) -> Result<SnapshotReport> {
    config.every_row("cdc snapshot")?;
    let dest = crate::destination::open(config).await?;
    run_into(config, &dest, force).await
}

/// [`run`] into a destination already opened.
pub async fn run_into(
    config: &Config,
    dest: &Arc<dyn Destination>,
    force: bool,
) -> Result<SnapshotReport> {
    let started = Instant::now();
    let src_info = config.source_conninfo()?;
    let slot = config.source.slot.as_str();
    let publication = config.source.publication.as_str();
    let src = crate::pg::connect(&src_info).await?;
    crate::source::postgres::catalog::prepare_session(&src).await?;
    if config.source.failover {
        refuse_failover_early(&src, slot).await?;
    }
    dest.ensure_state().await?;

    let previous = dest.load_state(slot).await?;
    if let Some(p) = previous
        .as_ref()
        .filter(|p| p.snapshot_completed() && !force)
    {
        return already_complete(dest.as_ref(), p, started).await;
    }
    let slot_exists = slot_exists(&src, slot, previous.is_some() || force).await?;

    let pairs = config.table_pairs();
    let wanted: Vec<prereq::Wanted> = pairs
        .iter()
        .zip(&config.tables)
        .map(|((s, d), t)| prereq::Wanted {
            source: s,
            destination: d,
            filter: t.filter.as_deref(),
        })
        .collect();
    let replace = force || previous.is_some();
    let checked = prereq::check(
        &src,
        dest.as_ref(),
        &wanted,
        publication,
        &config.destination.state_schema,
        slot_exists,
        replace,
    )
    .await?;

    // From here on we change things. First, what an interrupted earlier run left.
    if slot_exists {
        tracing::info!(
            slot,
            "dropping the slot left by an earlier, unfinished snapshot"
        );
        drop_leftover_slot(&src_info, slot).await?;
    }
    let via_root = checked.tables.iter().any(|t| t.partitioned);
    let created_publication = ensure_publication(
        &src,
        publication,
        &pairs,
        checked.publication_exists,
        via_root,
    )
    .await?;
    let targets: Vec<SnapshotTable<'_>> = checked
        .tables
        .iter()
        .zip(&pairs)
        .map(|(schema, (_, d))| SnapshotTable {
            schema,
            destination: d,
        })
        .collect();
    // Recorded before the tables exist, replacing an earlier record at once: a run killed
    // anywhere from here finds a record next time and replaces what it left, instead of
    // refusing tables that "already exist".
    dest.begin_snapshot(slot, publication).await?;
    dest.create_tables(&targets, &checked.types, replace)
        .await?;
    drop(targets);

    let copy = Copy {
        config,
        src: &src,
        src_info: &src_info,
        pairs: &pairs,
        created_publication,
        started,
    };
    copy.run(dest, checked).await
}

/// The part of a snapshot that runs under its new slot: create it, copy every table under
/// its exported snapshot, mark the snapshot complete; on failure drop the slot (and a
/// publication this run created) so nothing is left behind.
struct Copy<'a> {
    config: &'a Config,
    src: &'a tokio_postgres::Client,
    src_info: &'a ConnInfo,
    pairs: &'a [(TableName, TableName)],
    created_publication: bool,
    started: Instant,
}

impl Copy<'_> {
    async fn run(
        &self,
        dest: &Arc<dyn Destination>,
        checked: prereq::Checked,
    ) -> Result<SnapshotReport> {
        let (config, src, src_info, pairs, started) = (
            self.config,
            self.src,
            self.src_info,
            self.pairs,
            self.started,
        );
        let created_publication = self.created_publication;
        let slot = config.source.slot.as_str();
        let publication = config.source.publication.as_str();
        let mut repl = ReplicationClient::connect(src_info).await?;
        let created = repl
            .create_slot_with(
                slot,
                &crate::source::postgres::replication::SlotOptions {
                    export_snapshot: true,
                    temporary: false,
                    failover: config.source.failover,
                },
            )
            .await?;
        tracing::info!(slot, lsn = %created.consistent_point, "slot created; copying under its snapshot");
        let result = async {
            let snapshot = created
                .snapshot_name
                .clone()
                .ok_or_else(|| Error::definite("the server exported no snapshot".into()))?;
            dest.set_consistent_point(slot, created.consistent_point)
                .await?;
            let jobs = jobs_or_chunks(config, dest.as_ref(), slot, checked, pairs).await?;
            let workers = match config.snapshot.jobs {
                0 => std::thread::available_parallelism().map_or(2, |n| n.get()),
                n => n,
            };
            let tid_ranges = repl.server_version_num() >= 140000;
            copy_all(
                src_info,
                dest,
                Some(slot),
                &snapshot,
                jobs,
                workers,
                tid_ranges,
            )
            .await
        }
        .await;
        match result {
            Ok(tables) => {
                // The copies are committed; the exported snapshot may now end.
                repl.close().await;
                dest.complete_snapshot(slot).await?;
                tracing::info!(slot, lsn = %created.consistent_point, "snapshot complete");
                Ok(SnapshotReport {
                    consistent_lsn: created.consistent_point,
                    already_complete: false,
                    tables,
                    elapsed: started.elapsed(),
                })
            }
            Err(e) => {
                tracing::error!(slot, error = %e, "snapshot failed; dropping its slot");
                if let Err(drop_err) = repl.drop_slot(slot, false).await {
                    tracing::warn!(slot, error = %drop_err, "could not drop the slot now; the next `cdc snapshot` drops it");
                }
                repl.close().await;
                if created_publication {
                    let _ = src
                        .batch_execute(&format!(
                            "DROP PUBLICATION IF EXISTS {}",
                            quote_ident(publication)
                        ))
                        .await;
                }
                Err(e)
            }
        }
    }
}

/// The snapshot's copy jobs; the tables copied in chunks instead (`chunked.rs`) are finished
/// empty (keyed) and recorded for `cdc run`.
async fn jobs_or_chunks(
    config: &Config,
    dest: &dyn Destination,
    slot: &str,
    checked: prereq::Checked,
    pairs: &[(TableName, TableName)],
) -> Result<Vec<Job>> {
    let mut jobs = Vec::new();
    // An earlier pipeline's unfinished chunked copies must not resume into this one's tables.
    let earlier = chunked::records(config, dest).await?;
    for ((schema, (source, d)), t) in checked.tables.into_iter().zip(pairs).zip(&config.tables) {
        if chunked::is_chunked(config, &schema) {
            let target = SnapshotTable {
                schema: &schema,
                destination: d,
            };
            dest.finish_table(Some(slot), &target, 0).await?;
            chunked::begin(config, dest, source, d, schema.estimated_rows, false).await?;
            tracing::info!(table = %source, estimated_rows = schema.estimated_rows,
                "copied in chunks by `cdc run` while it streams");
            continue;
        }
        if let Some(r) = earlier
            .iter()
            .find(|r| r.destination == *d && !r.progress.done)
        {
            chunked::finish(dest, r).await?;
        }
        jobs.push(Job::new(dest, schema, d.clone(), t.filter.clone()));
    }
    Ok(jobs)
}

/// Whether the slot exists on the source; one the destination has no pipeline for (and that
/// `--force` does not claim, `ours`) is refused: another tool may be using it.
async fn slot_exists(src: &tokio_postgres::Client, slot: &str, ours: bool) -> Result<bool> {
    let exists: bool = src
        .query_one(
            "SELECT EXISTS (SELECT 1 FROM pg_replication_slots WHERE slot_name = $1)",
            &[&slot],
        )
        .await
        .map_err(Error::pg("looking for the slot"))?
        .get(0);
    if exists && !ours {
        return Err(Error::definite(format!(
            "replication slot {slot} already exists on the source, but the destination has no pipeline for it: \
             if it is a leftover, drop it (SELECT pg_drop_replication_slot('{slot}')) or run `cdc snapshot --force`; \
             if another tool uses it, set a different source.slot"
        )));
    }
    Ok(exists)
}

/// A failover slot on a server too old for one is refused before anything is created (the
/// slot would be the first thing to fail).
async fn refuse_failover_early(src: &tokio_postgres::Client, slot: &str) -> Result<()> {
    let version: i32 = src
        .query_one("SELECT current_setting('server_version_num')::int", &[])
        .await
        .map_err(Error::pg("reading the source version"))?
        .get(0);
    crate::source::postgres::replication::create_slot_sql(
        slot,
        &crate::source::postgres::replication::SlotOptions {
            failover: true,
            ..Default::default()
        },
        version as u32,
    )
    .map_err(Error::definite)?;
    Ok(())
}

/// The report of a snapshot completed by an earlier run: nothing to do.
async fn already_complete(
    dest: &dyn Destination,
    p: &crate::destination::PipelineState,
    started: Instant,
) -> Result<SnapshotReport> {
    let slot = p.slot.as_str();
    tracing::info!(slot, lsn = %p.consistent_lsn().unwrap_or_default(), "snapshot already complete; nothing to do");
    let tables = dest.snapshot_tables(slot).await?;
    Ok(SnapshotReport {
        consistent_lsn: p.consistent_lsn().unwrap_or_default(),
        already_complete: true,
        tables: tables
            .into_iter()
            .filter_map(|(s, rows)| {
                let name = TableName::parse(&s).ok()?;
                Some(TableReport {
                    source: name.clone(),
                    destination: name,
                    rows: rows as u64,
                    bytes: 0,
                    skipped_indexes: vec![],
                })
            })
            .collect(),
        elapsed: started.elapsed(),
    })
}

/// Drop the slot an interrupted earlier snapshot left, waiting up to a minute for its user.
async fn drop_leftover_slot(src_info: &ConnInfo, slot: &str) -> Result<()> {
    let mut repl = ReplicationClient::connect(&src_info).await?;
    tokio::time::timeout(Duration::from_secs(60), repl.drop_slot(slot, true))
        .await
        .map_err(|_| {
            Error::definite(format!(
                "slot {slot} is still in use by another process after 60s: stop it first"
            ))
        })??;
    repl.close().await;
    Ok(())
}

/// Create the publication for exactly these tables, or add the missing ones. Returns whether
/// it was created by this call. With `via_root` (a table is partitioned), changes to its
/// partitions must be published as changes of the configured root, or they would arrive
/// under partition names no destination table has (Postgres 13+).
pub(crate) async fn ensure_publication(
    src: &Client,
    publication: &str,
    pairs: &[(TableName, TableName)],
    exists: bool,
    via_root: bool,
) -> Result<bool> {
    let names: Vec<String> = pairs.iter().map(|(s, _)| s.quoted()).collect();
    if !exists {
        let with = if via_root {
            " WITH (publish_via_partition_root = true)"
        } else {
            ""
        };
        let sql = format!(
            "CREATE PUBLICATION {} FOR TABLE {}{with}",
            quote_ident(publication),
            names.join(", ")
        );
        src.batch_execute(&sql)
            .await
            .map_err(Error::pg(format!("creating publication {publication}")))?;
        return Ok(true);
    }
    for (s, _) in pairs {
        let present: bool = src
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM pg_publication_tables WHERE pubname = $1 AND schemaname = $2 AND tablename = $3)",
                &[&publication, &s.schema, &s.name],
            )
            .await
            .map_err(Error::pg("reading the publication"))?
            .get(0);
        if !present {
            let sql = format!(
                "ALTER PUBLICATION {} ADD TABLE {}",
                quote_ident(publication),
                s.quoted()
            );
            src.batch_execute(&sql).await.map_err(Error::pg(format!(
                "adding {s} to publication {publication}"
            )))?;
        }
    }
    if via_root {
        let set: bool = src
            .query_one(
                "SELECT pubviaroot FROM pg_publication WHERE pubname = $1",
                &[&publication],
            )
            .await
            .map_err(Error::pg("reading the publication"))?
            .get(0);
        if !set {
            tracing::info!(
                publication,
                "a configured table is partitioned: publishing its partitions' changes under its name"
            );
            src.batch_execute(&format!(
                "ALTER PUBLICATION {} SET (publish_via_partition_root = true)",
                quote_ident(publication)
            ))
            .await
            .map_err(Error::pg(format!("changing publication {publication}")))?;
        }
    }
    Ok(false)
}

/// One copy connection under the exported snapshot: ranges taken from `queue` until it is
/// empty, each loaded and reported on `done` as (job, rows).
async fn copy_worker(
    src_info: ConnInfo,
    snapshot: String,
    jobs: Arc<Vec<Job>>,
    queue: Arc<Mutex<VecDeque<(usize, copy::Part)>>>,
    done: tokio::sync::mpsc::UnboundedSender<(usize, u64)>,
    mut loader: Box<dyn crate::destination::Loader>,
) -> Result<()> {
    let mut src = CopySource::connect(&src_info).await?;
    src.execute(&format!(
        "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; SET TRANSACTION SNAPSHOT {}",
        crate::model::sql::quote_literal(&snapshot)
    ))
    .await?;
    loop {
        let Some((i, range)) = queue.lock().expect("queue lock").pop_front() else {
            break;
        };
        let job = &jobs[i];
        let out = copy::copy_out_sql(&job.schema, range, job.filter.as_deref(), job.format);
        let rows = loader
            .load(&mut src, &out, &job.target(), &job.bytes)
            .await?;
        let _ = done.send((i, rows));
    }
    src.execute("COMMIT").await?;
    src.close().await;
    Ok(())
}

/// Copy every table with `workers` connections that share the exported snapshot, then
/// finish each table (keys, indexes, and with a slot its state) as soon as all its ranges are
/// in. Also `cdc sync`'s full copies, under a snapshot exported without a slot.
pub(crate) async fn copy_all(
    src_info: &ConnInfo,
    dest: &Arc<dyn Destination>,
    slot: Option<&str>,
    snapshot: &str,
    jobs: Vec<Job>,
    workers: usize,
    tid_ranges: bool,
) -> Result<Vec<TableReport>> {
    let jobs = Arc::new(jobs);
    let mut queue = VecDeque::new();
    let mut remaining = Vec::new();
    for (i, job) in jobs.iter().enumerate() {
        let ranges = copy::plan_parts(&job.schema, workers, tid_ranges, job.filter.is_some());
        remaining.push((ranges.len(), 0u64));
        queue.extend(ranges.into_iter().map(|r| (i, r)));
    }
    let workers = workers.min(queue.len()).max(1);
    let queue = Arc::new(Mutex::new(queue));
    let (done_tx, mut done_rx) = tokio::sync::mpsc::unbounded_channel::<(usize, u64)>();
    let mut tasks: JoinSet<Result<()>> = JoinSet::new();
    for _ in 0..workers {
        let (jobs, queue, done) = (jobs.clone(), queue.clone(), done_tx.clone());
        let (src_info, snapshot) = (src_info.clone(), snapshot.to_owned());
        let loader = dest.loader().await?;
        tasks.spawn(copy_worker(src_info, snapshot, jobs, queue, done, loader));
    }
    drop(done_tx);

    let progress = progress::Progress::start(jobs.clone());
    let mut reports: Vec<Option<TableReport>> = vec![None; jobs.len()];
    let mut finishing: JoinSet<Result<(usize, TableReport)>> = JoinSet::new();
    let finish_slots = Arc::new(tokio::sync::Semaphore::new(workers));
    let mut copying_done = false;
    while !(copying_done && finishing.is_empty()) {
        tokio::select! {
            msg = done_rx.recv(), if !copying_done => match msg {
                Some((i, rows)) => {
                    remaining[i].0 -= 1;
                    remaining[i].1 += rows;
                    if remaining[i].0 == 0 {
                        progress.table_copied(i, remaining[i].1);
                        let (jobs, dest, slot, permits) =
                            (jobs.clone(), dest.clone(), slot.map(str::to_owned), finish_slots.clone());
                        let rows = remaining[i].1;
                        finishing.spawn(async move {
                            let _permit = permits.acquire_owned().await.expect("semaphore open");
                            let job = &jobs[i];
                            let skipped = dest.finish_table(slot.as_deref(), &job.target(), rows).await?;
                            Ok((i, TableReport {
                                source: job.schema.name.clone(),
                                destination: job.destination.clone(),
                                rows,
                                bytes: job.bytes.load(std::sync::atomic::Ordering::Relaxed),
                                skipped_indexes: skipped,
                            }))
                        });
                    }
                }
                None => copying_done = true,
            },
            Some(res) = tasks.join_next(), if !tasks.is_empty() => {
                res.map_err(Error::stopped("copy worker"))??;
            }
            Some(res) = finishing.join_next(), if !finishing.is_empty() => {
                let (i, report) = res.map_err(Error::stopped("finishing task"))??;
                progress.table_done(i);
                reports[i] = Some(report);
            }
        }
    }
    while let Some(res) = tasks.join_next().await {
        res.map_err(Error::stopped("copy worker"))??;
    }
    progress.finish();
    Ok(reports
        .into_iter()
        .map(|r| r.expect("every table finished"))
        .collect())
}
