//! `cdc run`: snapshot if needed, then stream forever, surviving what a sidecar meets.
//!
//! ```text
//!  loop ─► stream_once ─► Ok: shutdown requested ─► exit 0
//!              │
//!              ├─ transient error (connection lost, server restarting, slot busy)
//!              │     └─► log, wait (exponential backoff with jitter), resume from the
//!              │         position the destination committed
//!              └─ definite error (slot dropped, permission revoked, bad data) ─► exit ≠ 0
//! ```
//!
//! **Never confirm what the destination has not committed**: the flush position sent to the
//! source is always the end LSN recorded in the destination's last commit (or, when idle,
//! the server's WAL end after recording it there too). **Never skip data silently**: if the
//! slot has confirmed more than the destination applied, stop and say why.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;

use crate::apply::Applier;
use crate::config::Config;
use crate::decode::PgOutputDecoder;
use crate::destination::Destination;
use crate::error::{Error, Result};
use crate::lsn::Lsn;
use crate::metrics::Metrics;
use crate::source::postgres::replication::{
    PgOutputOptions, ReplicationClient, ReplicationEvent, ReplicationStream, StandbyStatus,
};
use crate::stream::{enum_labels, Streamer};

/// How often progress is reported to the source even without news.
const STATUS_INTERVAL: Duration = Duration::from_secs(10);

/// The most memory, in kB, the walsender may use for a transaction before it streams it to us
/// (its `logical_decoding_work_mem`, 64MB by default). Smaller means the first chunk of a large
/// transaction arrives sooner and the rest flows in steady small chunks, so the apply-ahead
/// session starts earlier: a 1M-row UPDATE became visible 8.2–8.7 s after its commit with
/// 2–8MB against 11.1 s with 64MB (bench/stream). A smaller server or role setting is kept.
const DECODING_WORK_MEM_KB: i64 = 8 * 1024;

/// Run until `shutdown` becomes true (then finish the batch in flight and return `Ok`) or a
/// definite error occurs.
pub async fn run(config: &Config, mut shutdown: watch::Receiver<bool>) -> Result<()> {
    config.every_row("cdc run")?;
    let metrics = Arc::new(Metrics::default());
    let server = crate::http::serve(
        &config.status.listen,
        metrics.clone(),
        config.status.max_lag_bytes,
        config.status.max_lag_seconds,
    )
    .await?;
    // The endpoint lives exactly as long as this function.
    let _server = AbortOnDrop(server);
    let mut attempt: u32 = 0;
    loop {
        let started = Instant::now();
        let result = async {
            // Opened per attempt: a destination that restarted gets fresh sessions.
            let dest = crate::destination::open(config).await?;
            ensure_snapshot(config, &dest).await?;
            let joined = crate::snapshot::join::reconcile(config, &dest).await?;
            stream_once(config, &dest, joined, &mut shutdown, &metrics).await
        }
        .await;
        metrics.set_streaming(false);
        if let Err(e) = &result {
            metrics.error(e.kind());
        }
        match result {
            Ok(()) => return Ok(()),
            // A value the destination cannot read may be an enum label added on the source
            // since the snapshot; the failed batch was rolled back, so add what is missing and
            // resume from the stored position. If nothing was missing, the error stands.
            Err(e) if e.sqlstate() == Some("22P02") => match enum_labels::sync(config).await {
                Ok(added) if !added.is_empty() => {
                    tracing::info!(statements = ?added, "added enum labels the source has gained; resuming");
                }
                Ok(_) => return Err(e),
                Err(sync) => {
                    tracing::warn!(error = %format!("{sync:#}"), "could not compare enum labels");
                    return Err(e);
                }
            },
            Err(e) => {
                if let Some((table, why)) = e.recopy() {
                    // Copied again alone under a snapshot, as a joining table; the next attempt
                    // skips its changes up to that snapshot. The batch in flight was not
                    // committed and is streamed again.
                    tracing::warn!(table = %table, reason = %why, "copying the table again, alone, while the others wait");
                    let dest = crate::destination::open(config).await?;
                    crate::snapshot::join::recopy(config, &dest, table).await?;
                    continue;
                }
                if !e.is_transient() {
                    return Err(e);
                }
                // A connection that streamed for a while starts the backoff over.
                if started.elapsed() > Duration::from_secs(60) {
                    attempt = 0;
                }
                attempt += 1;
                metrics.reconnect();
                if let Ok(info) = config.source_conninfo() {
                    observe_slot(&info, &config.source.slot, &metrics).await;
                }
                let delay = backoff(attempt);
                // Logged once per outage (and again every tenth attempt while it lasts), not
                // once per attempt: a server restarting refuses several attempts in a row.
                if attempt == 1 || attempt.is_multiple_of(10) {
                    tracing::warn!(error = %format!("{e:#}"), attempt, retry_in_ms = delay.as_millis() as u64, "transient failure; reconnecting and resuming from the destination's position");
                } else {
                    tracing::debug!(error = %format!("{e:#}"), attempt, retry_in_ms = delay.as_millis() as u64, "still reconnecting");
                }
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = shutdown.changed() => return Ok(()),
                }
            }
        }
    }
}

/// Take the initial snapshot if the destination has no completed one.
async fn ensure_snapshot(config: &Config, dest: &Arc<dyn Destination>) -> Result<()> {
    if !dest
        .load_state(&config.source.slot)
        .await?
        .is_some_and(|s| s.snapshot_completed())
    {
        tracing::info!(slot = %config.source.slot, "no completed snapshot: taking one first");
        crate::snapshot::run_into(config, dest, false).await?;
    }
    Ok(())
}

/// 0.5 s doubling to 30 s, with ±25 % jitter so many instances do not reconnect in step.
fn backoff(attempt: u32) -> Duration {
    let base = 500u64
        .saturating_mul(1 << attempt.min(6).saturating_sub(1))
        .min(30_000);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let jitter = (nanos % 500) as i64 - 250; // -250..250 per mille of a quarter
    Duration::from_millis((base as i64 + base as i64 * jitter / 1000).max(100) as u64)
}

struct AbortOnDrop<T = ()>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Connect for one attempt: the slot checked against the destination's position, the
/// replication stream started there, the streamer that applies it.
async fn start(
    config: &Config,
    dest: &dyn Destination,
    src_info: &crate::conninfo::ConnInfo,
    metrics: &Arc<Metrics>,
) -> Result<(Streamer, ReplicationStream, Lsn)> {
    let slot = config.source.slot.as_str();
    let applier = Applier::new(dest.session(metrics.clone()).await?, slot);
    let state = dest.load_state(slot).await?.ok_or_else(|| {
        Error::definite(format!(
            "the destination has no pipeline for slot {slot}: run `cdc snapshot` first"
        ))
    })?;
    let applied = state.applied_lsn().unwrap_or_default();

    let catalog = crate::pg::connect_qualified(src_info).await?;
    check_slot(&catalog, slot, applied).await?;

    let mut repl = ReplicationClient::connect(src_info).await?;
    let mut options =
        PgOutputOptions::for_server(repl.server_version_num(), &config.source.publication);
    // A chunked copy's watermarks (Postgres 14+ sends messages).
    options.messages = repl.server_version_num() >= 140000;
    if options.streaming {
        limit_decoding_memory(&mut repl).await?;
    }
    let read_timeout = Duration::from_millis(config.source.read_timeout_ms);
    let stream = repl
        .start_logical_replication(slot, applied, &options, read_timeout)
        .await?;
    tracing::info!(slot, lsn = %applied, proto_version = options.proto_version, streaming = options.streaming, "streaming changes");

    metrics.set_streaming(true);
    metrics.confirmed(applied.0, applied.0);
    // With streaming, a second destination session applies large transactions as they arrive,
    // where the destination lets two sessions write at once.
    let spare = if options.streaming && dest.concurrent_sessions() {
        Some(Applier::new(dest.session(metrics.clone()).await?, slot))
    } else {
        None
    };
    let streamer = Streamer::new(
        applier,
        spare,
        catalog,
        config.table_pairs(),
        config
            .apply
            .clone()
            .with_default_rows(dest.default_batch_rows()),
        applied,
        metrics.clone(),
    );
    Ok((streamer, stream, applied))
}

async fn stream_once(
    config: &Config,
    dest: &Arc<dyn Destination>,
    joined: std::collections::HashMap<crate::model::schema::TableName, Lsn>,
    shutdown: &mut watch::Receiver<bool>,
    metrics: &Arc<Metrics>,
) -> Result<()> {
    let slot = config.source.slot.as_str();
    let src_info = config.source_conninfo()?;
    let (mut streamer, mut stream, applied) =
        start(config, dest.as_ref(), &src_info, metrics).await?;
    streamer.set_joined(joined);
    // Tables copied in chunks while the stream runs (snapshot/chunked.rs), if any are due.
    let mut chunker = start_chunker(config, dest, &mut streamer).await?;
    // The server's latest WAL position, for the lag gauge.
    let mut wal_end = applied;
    let mut decoder = PgOutputDecoder::new();
    let mut status_tick = tokio::time::interval(STATUS_INTERVAL);
    let mut last_report = Instant::now();
    // Postgres servers cdc holds sessions on, to look for a smart shutdown at every tick.
    let mut servers = vec![("source", src_info.clone())];
    if let Ok(info) = config.destination_conninfo() {
        servers.push(("destination", info));
    }
    loop {
        let deadline = streamer.commit_deadline();
        tokio::select! {
            biased;
            _ = shutdown.changed() => {
                streamer.finish().await?;
                confirm(&mut stream, streamer.applied(), false, metrics, wal_end).await?;
                tracing::info!(slot, lsn = %streamer.applied(), "stopped; everything committed was confirmed");
                stream.close().await;
                return Ok(());
            }
            _ = sleep_until(deadline), if deadline.is_some() => {
                if let Some(lsn) = streamer.commit().await? {
                    confirm(&mut stream, lsn, false, metrics, wal_end).await?;
                }
            }
            event = stream.next() => match event? {
                None => return Err(Error::from(crate::error::Cause::Io {
                    context: "the source ended the replication stream".into(),
                    source: std::io::ErrorKind::ConnectionAborted.into(),
                })),
                Some(ReplicationEvent::XLogData { wal_start, wal_end: end, data, .. }) => {
                    wal_end = wal_end.max(end);
                    if let Some(lsn) = streamer.handle(data, &mut decoder, wal_start).await? {
                        confirm(&mut stream, lsn, false, metrics, wal_end).await?;
                    }
                }
                Some(ReplicationEvent::Keepalive { wal_end: end, reply_requested, .. }) => {
                    wal_end = wal_end.max(end);
                    let advanced = streamer.advance_idle(end).await?;
                    if reply_requested || advanced {
                        confirm(&mut stream, streamer.applied(), false, metrics, wal_end).await?;
                    }
                }
            },
            done = wait_task(&mut chunker), if chunker.is_some() => {
                chunker = None;
                done?;
            }
            _ = status_tick.tick() => {
                if chunker.is_none() {
                    // A `cdc resync` from another process is a new record.
                    chunker = start_chunker(config, dest, &mut streamer).await?;
                }
                confirm(&mut stream, streamer.applied(), false, metrics, wal_end).await?;
                observe_slot(&src_info, slot, metrics).await;
                if let Some(side) = shutting_down(&servers).await {
                    // A smart shutdown waits for every session to end, and ours never would
                    // by themselves: commit what we have, let go, and reconnect after it.
                    streamer.finish().await?;
                    confirm(&mut stream, streamer.applied(), false, metrics, wal_end).await?;
                    stream.close().await;
                    return Err(Error::from(crate::error::Cause::Io {
                        context: format!("the {side} is shutting down (it refuses new sessions): disconnecting so that it can"),
                        source: std::io::ErrorKind::ConnectionAborted.into(),
                    }));
                }
                if last_report.elapsed() >= Duration::from_secs(30) {
                    last_report = Instant::now();
                    let s = &streamer.stats;
                    tracing::info!(slot, lsn = %streamer.applied(), transactions = s.transactions, rows = s.rows, batches = s.batches, "progress");
                }
            }
        }
    }
}

type Task = tokio::task::JoinHandle<Result<()>>;

/// Start a chunker for the unfinished chunked copies, its channels given to the streamer.
async fn start_chunker(
    config: &Config,
    dest: &Arc<dyn Destination>,
    streamer: &mut Streamer,
) -> Result<Option<AbortOnDrop<Result<()>>>> {
    Ok(crate::snapshot::chunked::start(config, dest)
        .await?
        .map(|(chunks, task)| {
            streamer.set_chunks(chunks);
            AbortOnDrop(task)
        }))
}

/// The end of a task that is running (`task` is `Some`).
async fn wait_task(task: &mut Option<AbortOnDrop<Result<()>>>) -> Result<()> {
    let t: &mut Task = &mut task.as_mut().expect("polled only while running").0;
    t.await.map_err(Error::stopped("the chunked copy"))?
}

/// The slot as the source shows it (is it streamed, how much WAL it holds), for `/metrics`.
/// A source that cannot be asked now is asked again at the next tick.
async fn observe_slot(info: &crate::conninfo::ConnInfo, slot: &str, metrics: &Metrics) {
    let look = async {
        let client = crate::pg::connect(info).await?;
        // On a standby (a slot there since Postgres 16) the position is the replayed one.
        let row = client
            .query_opt(
                "SELECT active, coalesce(pg_wal_lsn_diff(CASE WHEN pg_is_in_recovery() \
                   THEN pg_last_wal_replay_lsn() ELSE pg_current_wal_lsn() END, restart_lsn), 0)::bigint \
                 FROM pg_replication_slots WHERE slot_name = $1",
                &[&slot],
            )
            .await
            .map_err(Error::pg("reading the slot's state"))?;
        Ok::<_, Error>(row.map(|r| (r.get::<_, bool>(0), r.get::<_, i64>(1))))
    };
    match tokio::time::timeout(Duration::from_secs(5), look).await {
        Ok(Ok(Some((active, retained)))) => metrics.slot(crate::metrics::SlotState {
            name: slot.to_owned(),
            active,
            retained_bytes: retained.max(0) as u64,
        }),
        Ok(Ok(None)) => {}
        Ok(Err(e)) => tracing::debug!(error = %e, "could not read the slot's state"),
        Err(_) => tracing::debug!("reading the slot's state timed out"),
    }
}

/// Which of `servers` refuses new sessions because it is shutting down (SQLSTATE 57P03, what a
/// smart shutdown answers while it waits for the sessions it has), if any. Other failures are
/// left to the sessions themselves.
async fn shutting_down(
    servers: &[(&'static str, crate::conninfo::ConnInfo)],
) -> Option<&'static str> {
    for (side, info) in servers {
        let probe = tokio::time::timeout(Duration::from_secs(5), crate::pg::connect(info)).await;
        if let Ok(Err(e)) = probe {
            if e.sqlstate() == Some("57P03") {
                return Some(side);
            }
        }
    }
    None
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d.into()).await,
        None => std::future::pending().await,
    }
}

async fn confirm(
    stream: &mut ReplicationStream,
    lsn: Lsn,
    reply: bool,
    metrics: &Metrics,
    wal_end: Lsn,
) -> Result<()> {
    let status = StandbyStatus {
        written: lsn,
        flushed: lsn,
        applied: lsn,
    };
    stream.send_status(status, reply).await?;
    metrics.confirmed(lsn.0, wal_end.0.max(lsn.0));
    Ok(())
}

/// The slot must exist, be usable, and not be ahead of the destination.
async fn check_slot(catalog: &tokio_postgres::Client, slot: &str, applied: Lsn) -> Result<()> {
    let row = catalog
        .query_opt(
            "SELECT confirmed_flush_lsn::text, wal_status FROM pg_catalog.pg_replication_slots WHERE slot_name = $1",
            &[&slot],
        )
        .await
        .map_err(Error::pg("reading the replication slot"))?;
    let Some(row) = row else {
        return Err(Error::definite(format!(
            "replication slot {slot} does not exist on the source (was it dropped?); changes after {applied} can no \
             longer be streamed: take a new snapshot with `cdc snapshot --force`"
        )));
    };
    let confirmed: Option<Lsn> = row.get::<_, Option<String>>(0).and_then(|s| s.parse().ok());
    let wal_status: Option<String> = row.get(1);
    if wal_status.as_deref() == Some("lost") {
        return Err(Error::definite(format!(
            "replication slot {slot} has lost required WAL (max_slot_wal_keep_size exceeded): take a new snapshot with \
             `cdc snapshot --force`"
        )));
    }
    if let Some(c) = confirmed.filter(|c| *c > applied) {
        return Err(Error::definite(format!(
            "replication slot {slot} has confirmed WAL up to {c}, but the destination applied only up to {applied}: the \
             changes in between were consumed elsewhere (another consumer of the slot, or a destination restored from \
             a backup). Refusing to skip them silently: take a new snapshot with `cdc snapshot --force`"
        )));
    }
    Ok(())
}

/// Lower the walsender's `logical_decoding_work_mem` to `DECODING_WORK_MEM_KB` unless it is
/// already lower (the setting is per session; plain SQL works on a `replication=database`
/// connection).
async fn limit_decoding_memory(repl: &mut ReplicationClient) -> Result<()> {
    let rows = repl
        .simple_query("SELECT setting FROM pg_settings WHERE name = 'logical_decoding_work_mem'")
        .await?;
    let current = rows
        .first()
        .and_then(|r| r.first().cloned().flatten())
        .and_then(|v| v.parse::<i64>().ok());
    if current.is_some_and(|kb| kb > DECODING_WORK_MEM_KB) {
        repl.simple_query(&format!(
            "SET logical_decoding_work_mem = '{DECODING_WORK_MEM_KB}kB'"
        ))
        .await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_to_a_cap_with_jitter() {
        for attempt in 1..20 {
            let d = backoff(attempt).as_millis() as u64;
            let base = (500u64 << (attempt.min(6) - 1)).min(30_000);
            assert!(
                d >= base * 3 / 4 && d <= base * 5 / 4,
                "attempt {attempt}: {d} ms vs base {base}"
            );
        }
    }
}
