//! Shared real servers for the whole test binary, and a fresh database per test.
//!
//! One source (`wal_level = logical`, TLS on, an `md5` login rule) and one destination are
//! started on first use and shared by every test in the process; each test works in its own
//! database with its own slot and publication names, so tests run in parallel without
//! interfering. The servers' watchdogs remove them when the test process exits.

#![allow(dead_code)]

pub mod proxy;

use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;
use std::time::Duration;

use cdc::conninfo::ConnInfo;
use cdc::local_pg::{LocalPostgres, Options};

pub struct Servers {
    pub source: LocalPostgres,
    pub destination: LocalPostgres,
    /// PEM file of the CA that signed the source's certificate (issued for "localhost" only).
    pub ca_file: PathBuf,
    /// PEM file of an unrelated CA, for negative TLS tests.
    pub other_ca_file: PathBuf,
}

/// Role that may log in only with MD5 (pg_hba rule on the source).
pub const MD5_USER: &str = "cdc_md5_user";
pub const MD5_PASSWORD: &str = "md5-secret";

/// A new CA: the issuer that signs with it, and its certificate as PEM.
fn make_ca(name: &str) -> rcgen::CertifiedIssuer<'static, rcgen::KeyPair> {
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, name);
    rcgen::CertifiedIssuer::self_signed(params, rcgen::KeyPair::generate().unwrap()).unwrap()
}

fn start() -> Servers {
    let ca = make_ca("cdc test CA");
    let other_ca = make_ca("unrelated CA");
    let server_key = rcgen::KeyPair::generate().unwrap();
    let mut params = rcgen::CertificateParams::new(vec!["localhost".to_string()]).unwrap();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "localhost");
    let cert = params.signed_by(&server_key, &*ca).unwrap();
    let dir = scratch().join(format!("cdc-test-ca-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let ca_file = dir.join("ca.pem");
    let other_ca_file = dir.join("other-ca.pem");
    std::fs::write(&ca_file, ca.pem()).unwrap();
    std::fs::write(&other_ca_file, other_ca.pem()).unwrap();

    let source_opts = Options {
        logical: true,
        tls: Some((cert.pem(), server_key.serialize_pem())),
        hba_first: vec![
            format!("host all {MD5_USER} 127.0.0.1/32 md5"),
            format!("host replication {MD5_USER} 127.0.0.1/32 md5"),
        ],
        settings: vec![
            // Small, so that a few thousand rows make the server stream a transaction.
            "logical_decoding_work_mem = '64kB'".into(),
            "max_prepared_transactions = 10".into(),
            "wal_sender_timeout = '60s'".into(),
        ],
    };
    // Start both servers at once: initdb dominates the harness's start-up time.
    let src = std::thread::spawn(move || LocalPostgres::start(&source_opts));
    let destination =
        LocalPostgres::start(&Options::default()).expect("start destination postgres");
    let source = src.join().unwrap().expect("start source postgres");
    Servers {
        source,
        destination,
        ca_file,
        other_ca_file,
    }
}

pub fn servers() -> &'static Servers {
    static SERVERS: OnceLock<Servers> = OnceLock::new();
    SERVERS.get_or_init(start)
}

/// A source (`wal_level = logical`) and a destination of the test's own, for tests that stop,
/// restart or reconfigure them; started at once (initdb dominates).
pub async fn own_servers() -> (LocalPostgres, LocalPostgres) {
    tokio::task::spawn_blocking(|| {
        let s = std::thread::spawn(|| {
            LocalPostgres::start(&Options {
                logical: true,
                ..Default::default()
            })
            .expect("start source postgres")
        });
        let d = LocalPostgres::start(&Options::default()).expect("start destination postgres");
        (s.join().unwrap(), d)
    })
    .await
    .unwrap()
}

/// This test process's own directory for the files tests write (configs holding the throwaway
/// servers' passwords, logs, DuckDB and SQLite files): removed by a watchdog once the process
/// is gone, even after `kill -9`, so nothing is left in the system's temporary directory.
pub fn scratch() -> &'static std::path::Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let pid = std::process::id();
        let dir = std::env::temp_dir().join(format!("cdc-tests-{pid}"));
        std::fs::create_dir_all(&dir).expect("create the tests' scratch directory");
        std::process::Command::new("sh")
            .arg("-c")
            .arg(format!(
                "while kill -0 {pid} 2>/dev/null; do sleep 1; done; rm -rf '{}'",
                dir.display()
            ))
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start the scratch directory's watchdog");
        dir
    })
}

/// A unique, valid identifier for this test run.
pub fn unique(prefix: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "{prefix}_{}_{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// Create a new empty database on `server` and return a superuser connection string for it.
pub async fn fresh_db(server: &LocalPostgres, prefix: &str) -> ConnInfo {
    let name = unique(prefix);
    let admin = cdc::pg::connect(&server.conninfo("postgres"))
        .await
        .expect("connect to postgres db");
    admin
        .batch_execute(&format!("CREATE DATABASE \"{name}\""))
        .await
        .expect("create database");
    server.conninfo(&name)
}

/// A new database on the shared source server.
pub async fn source_db(prefix: &str) -> ConnInfo {
    fresh_db(&servers().source, prefix).await
}

/// A new source database prepared with `ddl`, and an SQL connection to it.
pub async fn source_with(prefix: &str, ddl: &str) -> (ConnInfo, tokio_postgres::Client) {
    let db = source_db(prefix).await;
    let sql = cdc::pg::connect(&db)
        .await
        .expect("connect to test database");
    sql.batch_execute(ddl)
        .await
        .unwrap_or_else(|e| panic!("{ddl}: {e}"));
    (db, sql)
}

/// A source database prepared with `ddl`, an empty destination database, and a config
/// replicating `tables` (TOML `[[tables]]` entries appended verbatim) between them.
pub struct Pipeline {
    pub src: ConnInfo,
    pub dst: ConnInfo,
    pub src_sql: tokio_postgres::Client,
    pub dst_sql: tokio_postgres::Client,
    pub slot: String,
    pub config_text: String,
}

impl Pipeline {
    pub async fn new(prefix: &str, ddl: &str, tables: &str) -> Pipeline {
        Self::on(
            &servers().source,
            &servers().destination,
            prefix,
            ddl,
            tables,
        )
        .await
    }

    /// The same on servers of the test's own (for tests that stop and start them).
    pub async fn on(
        source: &LocalPostgres,
        destination: &LocalPostgres,
        prefix: &str,
        ddl: &str,
        tables: &str,
    ) -> Pipeline {
        let src = fresh_db(source, prefix).await;
        let src_sql = cdc::pg::connect(&src).await.expect("connect to source");
        src_sql
            .batch_execute(ddl)
            .await
            .unwrap_or_else(|e| panic!("{ddl}: {e:?}"));
        let dst = fresh_db(destination, prefix).await;
        let dst_sql = cdc::pg::connect(&dst)
            .await
            .expect("connect to destination");
        let slot = unique(prefix);
        let config_text = format!(
            "[source]\nurl = {:?}\nslot = {slot:?}\npublication = {slot:?}\n[destination]\nurl = {:?}\n[status]\nlisten = \"127.0.0.1:0\"\n{tables}\n",
            source.url(&src.dbname),
            destination.url(&dst.dbname),
        );
        Pipeline {
            src,
            dst,
            src_sql,
            dst_sql,
            slot,
            config_text,
        }
    }

    pub fn config(&self) -> cdc::config::Config {
        cdc::config::Config::from_toml(
            &self.config_text,
            std::path::Path::new("test.toml"),
            &NO_ENV,
        )
        .expect("test config is valid")
    }

    /// Write the config to a file, for tests that run the binary.
    pub fn config_file(&self) -> PathBuf {
        let path = scratch().join(format!("{}.toml", self.slot));
        std::fs::write(&path, &self.config_text).unwrap();
        path
    }

    /// Slots of this pipeline's name on the source.
    pub async fn slot_count(&self) -> i64 {
        self.src_sql
            .query_one(
                "SELECT count(*) FROM pg_replication_slots WHERE slot_name = $1",
                &[&self.slot],
            )
            .await
            .unwrap()
            .get(0)
    }

    /// The destination's recorded applied position (text), if any.
    pub async fn applied_lsn(&self) -> Vec<String> {
        rows_text(
            &self.dst_sql,
            &format!(
                "SELECT applied_lsn::text FROM cdc.pipeline WHERE slot = '{}'",
                self.slot
            ),
        )
        .await
    }

    /// The slot's confirmed position on the source (text), if the slot exists.
    pub async fn confirmed_lsn(&self) -> Vec<String> {
        rows_text(
            &self.src_sql,
            &format!(
                "SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = '{}'",
                self.slot
            ),
        )
        .await
    }

    /// Wait until the destination records a completed snapshot of this pipeline.
    pub async fn wait_snapshot_complete(&self) {
        // Generous: creating the slot waits for every transaction running on the shared
        // source, and other tests' bulk loads can take a while on a busy machine.
        wait_for("the initial snapshot", Duration::from_secs(180), || async {
            let q =
                "SELECT 1 FROM cdc.pipeline WHERE slot = $1 AND snapshot_completed_at IS NOT NULL";
            matches!(self.dst_sql.query_opt(q, &[&self.slot]).await, Ok(Some(_)))
        })
        .await;
    }

    /// pgbench with `args` against this pipeline's source database (output discarded), on
    /// whichever server that database is.
    pub fn pgbench(&self, args: &[&str]) -> std::process::Command {
        let mut c = pgbench(&self.src, args);
        c.stdout(std::process::Stdio::null());
        c
    }

    /// `pgbench -i -s SCALE` on the source, with pgbench_history (no key) given a full
    /// replica identity so that its deletes and updates can stream.
    pub async fn pgbench_init(&self, scale: u32) {
        assert!(self
            .pgbench(&["-i", "-q", "-s", &scale.to_string()])
            .status()
            .unwrap()
            .success());
        self.src_sql
            .batch_execute("ALTER TABLE pgbench_history REPLICA IDENTITY FULL")
            .await
            .unwrap();
    }

    pub async fn publication_count(&self) -> i64 {
        self.src_sql
            .query_one("SELECT count(*) FROM pg_publication", &[])
            .await
            .unwrap()
            .get(0)
    }
}

/// A directory of the test's own (config, password and service files, a HOME), removed when
/// dropped.
pub struct Dir(pub PathBuf);

impl Dir {
    pub fn new(prefix: &str) -> Dir {
        let d = scratch().join(unique(prefix));
        std::fs::create_dir_all(&d).unwrap();
        Dir(d)
    }

    /// Write `name` with permissions `mode`.
    pub fn file(&self, name: &str, text: &str, mode: u32) -> PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let f = self.0.join(name);
        std::fs::write(&f, text).unwrap();
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(mode)).unwrap();
        f
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `pgbench` against database `db` (its stderr discarded; stdout for the caller to take).
pub fn pgbench(db: &ConnInfo, args: &[&str]) -> std::process::Command {
    let mut c = std::process::Command::new(cdc::local_pg::client_binary("pgbench").unwrap());
    c.args(args)
        .args([
            "-h",
            &db.host,
            "-p",
            &db.port.to_string(),
            "-U",
            &db.user,
            &db.dbname,
        ])
        .env(
            "PGPASSWORD",
            db.password.as_ref().map_or("", |p| p.expose()),
        )
        .stdin(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    c
}

pub const NO_ENV: [(&str, &str); 0] = [];

/// Rows of `query` on a connection, each row as its `::text` form, in order.
pub async fn rows_text(client: &tokio_postgres::Client, query: &str) -> Vec<String> {
    client
        .query(query, &[])
        .await
        .unwrap_or_else(|e| panic!("{query}: {e:?}"))
        .into_iter()
        .map(|r| {
            r.get::<_, Option<String>>(0)
                .unwrap_or_else(|| "<null>".into())
        })
        .collect()
}

/// Poll `cond` until it returns true, or fail after `timeout`.
pub async fn wait_for<F, Fut>(what: &str, timeout: Duration, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    while !cond().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
