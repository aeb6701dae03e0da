//! The conformance suite: the workloads of Postgres's own logical-replication tests
//! (`src/test/subscription/t/*.pl` in the PostgreSQL tree), rewritten for `cdc`, and the cases
//! where a whole-table replicator can go wrong, each run against every destination it applies
//! to; `faults.rs` is the fault matrix (servers restarted, the network cut, ClickHouse
//! answering errors).
//!
//! Each case is written once over [`Case`], which hides where the destination rows live:
//! the same columns are read on the source and on the destination (Postgres, a DuckDB file, a
//! ClickHouse view) as text, and compared.

mod cases;
mod faults;
mod tap;

use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::time::Duration;

use cdc::destination::clickhouse::http::Client;
use cdc::destination::clickhouse::ClickHouseUrl;
use cdc::local_pg::LocalPostgres;

use crate::clickhouse::server as clickhouse;
use crate::harness::{servers, unique, Pipeline};
use crate::run::FAST;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dest {
    Postgres,
    DuckDb,
    ClickHouse,
}

/// A column read on both sides as text.
#[derive(Debug, Clone, Copy)]
pub enum Col<'a> {
    Text(&'a str),
    /// The md5 of a (large) text value.
    Md5(&'a str),
}

impl Col<'_> {
    fn sql(&self, dest: Option<Dest>) -> String {
        match (self, dest) {
            (Col::Text(c), None | Some(Dest::Postgres)) => format!("{c}::text"),
            (Col::Text(c), Some(Dest::DuckDb)) => format!("CAST({c} AS VARCHAR)"),
            (Col::Text(c), Some(Dest::ClickHouse)) => format!("toString({c})"),
            (Col::Md5(c), None | Some(Dest::Postgres | Dest::DuckDb)) => format!("md5({c})"),
            (Col::Md5(c), Some(Dest::ClickHouse)) => format!("lower(hex(MD5({c})))"),
        }
    }
}

/// A `cdc run` process, killed when dropped (also when a test fails).
pub struct RunProcess(pub Child);

impl RunProcess {
    /// Still running (not exited).
    pub fn alive(&mut self) -> bool {
        self.0.try_wait().unwrap().is_none()
    }
}

impl Drop for RunProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// One pipeline into one destination.
pub struct Case {
    pub p: Pipeline,
    pub dest: Dest,
    file: Option<PathBuf>,
    ch: Option<Client>,
    /// The ClickHouse database the views are in.
    pub ch_db: Option<String>,
    pub run: Option<RunProcess>,
    /// Where `cdc run` writes its log (shown when a wait fails).
    pub log: PathBuf,
}

impl Case {
    /// On the shared servers.
    pub async fn new(dest: Dest, prefix: &str, ddl: &str, tables: &str) -> Case {
        let s = servers();
        Case::on(dest, &s.source, &s.destination, prefix, ddl, tables).await
    }

    /// On servers of the test's own (`destination` serves the Postgres destination only).
    pub async fn on(
        dest: Dest,
        source: &LocalPostgres,
        destination: &LocalPostgres,
        prefix: &str,
        ddl: &str,
        tables: &str,
    ) -> Case {
        let p = Pipeline::on(source, destination, prefix, ddl, &format!("{tables}{FAST}")).await;
        let log = crate::harness::scratch().join(format!("{}.log", p.slot));
        let mut case = Case {
            p,
            dest,
            file: None,
            ch: None,
            ch_db: None,
            run: None,
            log,
        };
        match dest {
            Dest::Postgres => {}
            Dest::DuckDb => {
                let dir = crate::harness::scratch().join(unique("cdc-conformance"));
                std::fs::create_dir_all(&dir).unwrap();
                let file = dir.join("conformance.duckdb");
                case.set_destination(&format!("duckdb://{}", file.display()));
                case.file = Some(file);
            }
            Dest::ClickHouse => {
                let db = unique(prefix);
                let admin =
                    Client::new(ClickHouseUrl::parse(&clickhouse().url("default")).unwrap())
                        .unwrap();
                admin
                    .query(&format!("CREATE DATABASE `{db}`"))
                    .await
                    .unwrap();
                case.set_destination(&clickhouse().url(&db));
                case.ch = Some(
                    Client::new(ClickHouseUrl::parse(&clickhouse().url(&db)).unwrap()).unwrap(),
                );
                case.ch_db = Some(db);
            }
        }
        case
    }

    /// Point the configuration at another destination URL.
    pub fn set_destination(&mut self, url: &str) {
        let text = &mut self.p.config_text;
        let start = text.find("[destination]\nurl = ").unwrap();
        let end = start + text[start..].find("\n[status]").unwrap();
        text.replace_range(start..end, &format!("[destination]\nurl = \"{url}\""));
    }

    /// Point the configuration at another source URL.
    pub fn set_source(&mut self, url: &str) {
        let text = &mut self.p.config_text;
        let start = text.find("[source]\nurl = ").unwrap();
        let end = start + text[start..].find("\nslot = ").unwrap();
        text.replace_range(start..end, &format!("[source]\nurl = {url:?}"));
    }

    /// `cdc` with this case's configuration.
    pub fn cdc(&self, args: &[&str]) -> std::process::Command {
        crate::duckdb::cdc(&self.p, args)
    }

    /// Start `cdc run` and wait until it streams (its slot is active: the snapshot is done).
    pub async fn start(&mut self) {
        self.start_env(&[]).await
    }

    /// [`Case::start`] with more environment variables for `cdc run`.
    pub async fn start_env(&mut self, env: &[(&str, &str)]) {
        let log = std::fs::File::create(&self.log).unwrap();
        let child = self
            .cdc(&["run"])
            .envs(env.iter().copied())
            .env("CDC_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn cdc run");
        self.run = Some(RunProcess(child));
        self.wait_streaming().await;
    }

    /// Wait until the slot is active again (after a restart of either side).
    pub async fn wait_streaming(&mut self) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
        loop {
            if let Some(run) = self.run.as_mut() {
                assert!(run.alive(), "cdc run exited:\n{}", self.log_text());
            }
            let active = self
                .p
                .src_sql
                .query_opt(
                    "SELECT 1 FROM pg_replication_slots WHERE slot_name = $1 AND active",
                    &[&self.p.slot],
                )
                .await;
            // Active alone is not enough: the slot is active while it is being created.
            if matches!(active, Ok(Some(_))) && self.snapshot_complete().await {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "cdc run did not start streaming:\n{}",
                self.log_text()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// What `cdc run` logged so far (its last 8 kB).
    pub fn log_text(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let cut = text.len().saturating_sub(8192);
        let cut = (cut..text.len())
            .find(|&i| text.is_char_boundary(i))
            .unwrap_or(0);
        text[cut..].to_owned()
    }

    /// Whether the destination records a completed snapshot (as `cdc status` reads it).
    async fn snapshot_complete(&self) -> bool {
        let bounds = cdc::status::Bounds {
            max_lag_bytes: u64::MAX,
            max_lag_seconds: u64::MAX,
            require_active: false,
        };
        matches!(cdc::status::check(&self.p.config(), &bounds).await, Ok(r) if r.snapshot_complete)
    }

    /// Wait (60 s at most) for `cdc run` to exit by itself; its exit status.
    pub async fn wait_exit(&mut self) -> std::process::ExitStatus {
        let mut run = self.run.take().expect("cdc run was started");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(status) = run.0.try_wait().unwrap() {
                return status;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "cdc run kept going:\n{}",
                self.log_text()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Whether `cdc run` is still running.
    pub fn alive(&mut self) -> bool {
        self.run.as_mut().is_some_and(|r| r.alive())
    }

    /// `cols` of `table` (a name in `public`) on the source, ordered by `order`.
    pub async fn source_rows(
        &self,
        table: &str,
        cols: &[Col<'_>],
        order: &str,
    ) -> Vec<Vec<String>> {
        let list: Vec<String> = cols
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{} AS c{i}", c.sql(None)))
            .collect();
        text_rows(
            &self.p.src_sql,
            &format!("SELECT {} FROM {table} ORDER BY {order}", list.join(", ")),
        )
        .await
        .expect("source query")
    }

    /// The same on the destination; `None` while the table is not readable yet.
    pub async fn dest_rows(
        &self,
        table: &str,
        cols: &[Col<'_>],
        order: &str,
    ) -> Option<Vec<Vec<String>>> {
        // Aliased apart from the columns, so that `order` names the table's columns.
        let list: Vec<String> = cols
            .iter()
            .enumerate()
            .map(|(i, c)| format!("{} AS c{i}", c.sql(Some(self.dest))))
            .collect();
        let list = list.join(", ");
        match self.dest {
            Dest::Postgres => {
                text_rows(
                    &self.p.dst_sql,
                    &format!("SELECT {list} FROM public.{table} ORDER BY {order}"),
                )
                .await
            }
            Dest::DuckDb => {
                let file = self.file.clone().unwrap();
                let sql = format!("SELECT {list} FROM public.{table} ORDER BY {order}");
                tokio::task::spawn_blocking(move || crate::duckdb::read(&file, &sql))
                    .await
                    .unwrap()
            }
            Dest::ClickHouse => {
                let sql = format!("SELECT {list} FROM {table} ORDER BY {order}");
                crate::clickhouse_stream::ch_rows(self.ch.as_ref().unwrap(), &sql).await
            }
        }
    }

    /// Wait until the destination shows what the source has (60 s), failing with both.
    pub async fn wait_same(&mut self, table: &str, cols: &[Col<'_>], order: &str) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            let want = self.source_rows(table, cols, order).await;
            let got = self.dest_rows(table, cols, order).await;
            if got.as_ref() == Some(&want) {
                return;
            }
            if let Some(run) = self.run.as_mut() {
                if !run.alive() {
                    panic!(
                        "cdc run exited; {table} on {:?}: {}\n{}",
                        self.dest,
                        difference(&want, got.as_deref()),
                        self.log_text()
                    );
                }
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "{table} on {:?}: {}\n{}",
                self.dest,
                difference(&want, got.as_deref()),
                self.log_text()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Run SQL on the source.
    pub async fn source(&self, sql: &str) {
        self.p
            .src_sql
            .batch_execute(sql)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e:?}"));
    }
}

impl Drop for Case {
    /// Stop `cdc run` and drop its slot, so that a suite of cases does not fill the shared
    /// source's slots (each inactive slot also holds WAL back).
    fn drop(&mut self) {
        self.run = None;
        let (info, slot) = (self.p.src.clone(), self.p.slot.clone());
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                if let Ok(c) = cdc::pg::connect(&info).await {
                    // Its walsender may take a moment to notice the process is gone.
                    for _ in 0..50 {
                        let r = c
                            .query(
                                "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots
                                  WHERE slot_name = $1 AND NOT active",
                                &[&slot],
                            )
                            .await;
                        let gone = c
                            .query_opt("SELECT 1 FROM pg_replication_slots WHERE slot_name = $1", &[&slot])
                            .await;
                        if r.is_err() || matches!(gone, Ok(None) | Err(_)) {
                            break;
                        }
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            });
        })
        .join();
    }
}

/// Rows of a query as text (`NULL` for null), through the simple protocol; `None` on error.
pub(crate) async fn text_rows(c: &tokio_postgres::Client, sql: &str) -> Option<Vec<Vec<String>>> {
    Some(
        c.simple_query(sql)
            .await
            .ok()?
            .into_iter()
            .filter_map(|m| match m {
                tokio_postgres::SimpleQueryMessage::Row(r) => Some(
                    (0..r.len())
                        .map(|i| r.get(i).unwrap_or("NULL").to_owned())
                        .collect(),
                ),
                _ => None,
            })
            .collect(),
    )
}

/// One test per destination for a case written as `async fn(Dest)`.
macro_rules! on_every_destination {
    ($case:ident) => {
        mod $case {
            use super::*;
            #[tokio::test]
            async fn postgres() {
                $case(Dest::Postgres).await
            }
            #[tokio::test]
            async fn duckdb() {
                $case(Dest::DuckDb).await
            }
            #[tokio::test]
            async fn clickhouse() {
                $case(Dest::ClickHouse).await
            }
        }
    };
}
pub(crate) use on_every_destination;

/// What differs between expected and actual rows: all of both when they are short, else the
/// counts and the first row that differs.
fn difference<T: PartialEq + std::fmt::Debug>(want: &[T], got: Option<&[T]>) -> String {
    let Some(got) = got else {
        return format!("expected {} rows, the destination query failed", want.len());
    };
    if want.len() <= 20 && got.len() <= 20 {
        return format!("expected {want:?}, got {got:?}");
    }
    let first = want.iter().zip(got).position(|(w, g)| w != g);
    match first {
        Some(i) => format!(
            "{} rows expected, {} found; first difference at row {i}: expected {:?}, got {:?}",
            want.len(),
            got.len(),
            want[i],
            got[i]
        ),
        None => format!(
            "{} rows expected, {} found (the same up to the shorter)",
            want.len(),
            got.len()
        ),
    }
}
