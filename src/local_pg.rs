//! Throwaway Postgres servers started from the local binaries, for the test suite and `cdc demo`.
//!
//! Postgres refuses to run as root, and our machines and CI run as root: then every server
//! command runs as the `postgres` system user (`runuser -u postgres --`) on a data directory it
//! owns. Each server gets a free port, listens on 127.0.0.1 only, and keeps its socket and files
//! in one temporary directory. **A server never outlives the process that started it**: a small
//! watchdog shell process stops it with `pg_ctl stop -m immediate` and deletes the directory as
//! soon as that process is gone, even after `kill -9`.

use std::io;
use std::net::TcpListener;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

use crate::conninfo::{ConnInfo, Secret, SslMode};

/// The superuser every local server is created with.
pub const SUPERUSER: &str = "cdc_admin";

/// How to set up a server.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// `wal_level = logical` and room for slots: a CDC source.
    pub logical: bool,
    /// PEM certificate chain and private key: turns `ssl = on`.
    pub tls: Option<(String, String)>,
    /// Lines put first in pg_hba.conf (first match wins), e.g. an `md5` rule for one role.
    pub hba_first: Vec<String>,
    /// Extra postgresql.conf lines.
    pub settings: Vec<String>,
}

/// A running throwaway server. Stopped and deleted on drop.
#[derive(Debug)]
pub struct LocalPostgres {
    base: PathBuf,
    bindir: PathBuf,
    port: u16,
    password: String,
    as_postgres: bool,
    watchdog: Option<Child>,
}

fn running_as_root() -> bool {
    // /proc/self is owned by the process's effective uid; avoids a libc dependency.
    std::fs::metadata("/proc/self")
        .map(|m| m.uid() == 0)
        .unwrap_or(false)
}

/// Where `initdb` and `pg_ctl` are: `PG_BINDIR`, `pg_config --bindir`, the newest
/// `/usr/lib/postgresql/*/bin`, or `PATH`.
pub fn find_bindir() -> io::Result<PathBuf> {
    let has_initdb = |d: &Path| d.join("initdb").is_file();
    if let Some(d) = std::env::var_os("PG_BINDIR").map(PathBuf::from) {
        return if has_initdb(&d) {
            Ok(d)
        } else {
            Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("PG_BINDIR={} has no initdb", d.display()),
            ))
        };
    }
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output() {
        let d = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if has_initdb(&d) {
            return Ok(d);
        }
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| Some((e.file_name().to_str()?.parse().ok()?, e.path().join("bin"))))
        .filter(|(_, d)| has_initdb(d))
        .collect();
    versions.sort();
    if let Some((_, d)) = versions.pop() {
        return Ok(d);
    }
    for dir in std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default()) {
        if has_initdb(&dir) {
            return Ok(dir);
        }
    }
    Err(io::Error::new(
        io::ErrorKind::NotFound,
        "no PostgreSQL server binaries found: install them (Debian: apt-get install -y postgresql) or set PG_BINDIR",
    ))
}

/// util-linux's `runuser`, which lives in an sbin directory that a user's PATH (a virtual
/// environment's, a scheduler's) often leaves out.
fn runuser() -> PathBuf {
    let on_path = std::env::var_os("PATH")
        .map(|p| {
            std::env::split_paths(&p)
                .map(|d| d.join("runuser"))
                .collect::<Vec<_>>()
        })
        .unwrap_or_default();
    on_path
        .into_iter()
        .chain(["/usr/sbin/runuser", "/sbin/runuser"].map(PathBuf::from))
        .find(|p| p.is_file())
        .unwrap_or_else(|| PathBuf::from("runuser"))
}

/// A client program (`psql`, `pgbench`, `pg_basebackup`): from the server's directory when
/// it has it, else from any other installed PostgreSQL (server-only packages such as npm's
/// `@embedded-postgres` ship no client tools; clients talk to servers of other majors).
pub fn client_binary(name: &str) -> io::Result<PathBuf> {
    if let Ok(d) = find_bindir() {
        if d.join(name).is_file() {
            return Ok(d.join(name));
        }
    }
    let mut dirs: Vec<PathBuf> = Vec::new();
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output() {
        dirs.push(PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()));
    }
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| Some((e.file_name().to_str()?.parse().ok()?, e.path().join("bin"))))
        .collect();
    versions.sort();
    dirs.extend(versions.into_iter().rev().map(|(_, d)| d));
    dirs.extend(std::env::split_paths(
        &std::env::var_os("PATH").unwrap_or_default(),
    ));
    dirs.into_iter()
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::NotFound,
                format!("no {name} found: install the PostgreSQL client tools (Debian: postgresql-client)"),
            )
        })
}

fn free_port() -> io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn check(status: io::Result<std::process::Output>, what: &str) -> io::Result<()> {
    let out = status?;
    if out.status.success() {
        return Ok(());
    }
    Err(io::Error::other(format!(
        "{what} failed ({}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )))
}

impl LocalPostgres {
    /// initdb, configure and start a new server.
    pub fn start(options: &Options) -> io::Result<Self> {
        let mut server = Self::new_base()?;
        let data = server.base.join("data");
        check(
            server
                .command("initdb")
                .arg("-D")
                .arg(&data)
                .args(["-U", SUPERUSER, "-E", "UTF8", "--locale=C", "--no-sync"])
                .args(["--auth-local=trust", "--auth-host=scram-sha-256"])
                .arg(format!("--pwfile={}", server.base.join("pwfile").display()))
                .output(),
            "initdb",
        )?;
        server.configure(options)?;
        server.launch()?;
        Ok(server)
    }

    /// A hot standby of `primary` (streaming replication from a base backup): read-only, as
    /// a replica that `cdc sync` reads from.
    pub fn start_standby(primary: &LocalPostgres) -> io::Result<Self> {
        let mut server = Self::new_base()?;
        server.password = primary.password.clone();
        let data = server.base.join("data");
        check(
            server
                .command("pg_basebackup")
                .arg("-D")
                .arg(&data)
                .args([
                    "-h",
                    "127.0.0.1",
                    "-p",
                    &primary.port.to_string(),
                    "-U",
                    SUPERUSER,
                ])
                .args(["-R", "-X", "stream", "--checkpoint=fast", "--no-sync"])
                .env("PGPASSWORD", &primary.password)
                .output(),
            "pg_basebackup",
        )?;
        // Later lines win: this server's own socket directory and port.
        let mut conf = std::fs::read_to_string(data.join("postgresql.conf"))?;
        conf.push_str(&format!(
            "\nunix_socket_directories = '{}'\nhot_standby = on\n",
            server.base.display()
        ));
        std::fs::write(data.join("postgresql.conf"), conf)?;
        server.launch()?;
        Ok(server)
    }

    /// A fresh base directory with its password file and the watchdog that removes it.
    fn new_base() -> io::Result<Self> {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let bindir = find_bindir()?;
        let as_postgres = running_as_root();
        let base = std::env::temp_dir().join(format!(
            "cdc-pg-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&base);
        std::fs::create_dir_all(&base)?;
        let password = format!(
            "pw-{}-{}",
            std::process::id(),
            COUNTER.load(Ordering::Relaxed)
        );
        std::fs::write(base.join("pwfile"), &password)?;
        let mut server = LocalPostgres {
            base: base.clone(),
            bindir,
            port: 0,
            password,
            as_postgres,
            watchdog: None,
        };
        // The watchdog first, so that even a failed start is cleaned up.
        server.spawn_watchdog()?;
        if as_postgres {
            check(
                Command::new("chown")
                    .arg("-R")
                    .arg("postgres:postgres")
                    .arg(&base)
                    .output(),
                "chown",
            )?;
        }
        Ok(server)
    }

    /// Start the server on a free port.
    fn launch(&mut self) -> io::Result<()> {
        let data = self.base.join("data");
        // A free port can be taken by someone else before the server binds it: try a few.
        let mut last_err = None;
        for _ in 0..5 {
            self.port = free_port()?;
            std::fs::write(data.join("port.conf"), format!("port = {}\n", self.port))?;
            self.chown(&data.join("port.conf"))?;
            match check(
                self.command("pg_ctl")
                    .arg("-D")
                    .arg(&data)
                    .arg("-l")
                    .arg(self.base.join("server.log"))
                    .args(["-w", "-t", "60", "start"])
                    .output(),
                "pg_ctl start",
            ) {
                Ok(()) => return Ok(()),
                Err(e) => last_err = Some(e),
            }
        }
        let log = std::fs::read_to_string(self.base.join("server.log")).unwrap_or_default();
        Err(io::Error::other(format!(
            "{}; server log:\n{log}",
            last_err.expect("tried at least once")
        )))
    }

    fn configure(&self, options: &Options) -> io::Result<()> {
        let data = self.base.join("data");
        let mut conf = vec![
            "listen_addresses = '127.0.0.1'".to_owned(),
            format!("unix_socket_directories = '{}'", self.base.display()),
            "include_if_exists = 'port.conf'".to_owned(),
            "fsync = off".to_owned(),
            "max_connections = 200".to_owned(),
        ];
        if options.logical {
            conf.extend(
                [
                    "wal_level = logical",
                    // A test suite's worth of pipelines on one shared server.
                    "max_replication_slots = 400",
                    "max_wal_senders = 100",
                ]
                .map(String::from),
            );
        }
        if let Some((cert, key)) = &options.tls {
            std::fs::write(data.join("server.crt"), cert)?;
            std::fs::write(data.join("server.key"), key)?;
            self.chown(&data.join("server.crt"))?;
            self.chown(&data.join("server.key"))?;
            std::fs::set_permissions(
                data.join("server.key"),
                std::os::unix::fs::PermissionsExt::from_mode(0o600),
            )?;
            conf.extend(
                [
                    "ssl = on",
                    "ssl_cert_file = 'server.crt'",
                    "ssl_key_file = 'server.key'",
                ]
                .map(String::from),
            );
        }
        conf.extend(options.settings.iter().cloned());
        let mut pg_conf = std::fs::read_to_string(data.join("postgresql.conf"))?;
        pg_conf.push_str("\n# added by cdc::local_pg\n");
        pg_conf.push_str(&conf.join("\n"));
        pg_conf.push('\n');
        std::fs::write(data.join("postgresql.conf"), pg_conf)?;
        if !options.hba_first.is_empty() {
            let hba = std::fs::read_to_string(data.join("pg_hba.conf"))?;
            std::fs::write(
                data.join("pg_hba.conf"),
                format!("{}\n{hba}", options.hba_first.join("\n")),
            )?;
        }
        Ok(())
    }

    fn chown(&self, path: &Path) -> io::Result<()> {
        if self.as_postgres {
            check(
                Command::new("chown")
                    .arg("postgres:postgres")
                    .arg(path)
                    .output(),
                "chown",
            )?;
        }
        Ok(())
    }

    /// A command for one of the server binaries, as the `postgres` user when we are root.
    pub fn command(&self, binary: &str) -> Command {
        let mut path = self.bindir.join(binary);
        if !path.is_file() {
            path = client_binary(binary).unwrap_or(path);
        }
        if self.as_postgres {
            let mut c = Command::new(runuser());
            c.args(["-u", "postgres", "--"]).arg(path);
            c
        } else {
            Command::new(path)
        }
    }

    fn spawn_watchdog(&mut self) -> io::Result<()> {
        let pg_ctl = self.bindir.join("pg_ctl");
        let stop = if self.as_postgres {
            format!(
                "'{}' -u postgres -- '{}'",
                runuser().display(),
                pg_ctl.display()
            )
        } else {
            format!("'{}'", pg_ctl.display())
        };
        let script = format!(
            "while kill -0 {pid} 2>/dev/null; do sleep 1; done; \
             {stop} -D '{base}/data' stop -m immediate >/dev/null 2>&1; rm -rf '{base}'",
            pid = std::process::id(),
            base = self.base.display(),
        );
        let child = Command::new("sh")
            .arg("-c")
            .arg(script)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        self.watchdog = Some(child);
        Ok(())
    }

    /// TCP port the server listens on (127.0.0.1).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The superuser's password.
    pub fn password(&self) -> &str {
        &self.password
    }

    /// Directory of the Unix socket (and all the server's files).
    pub fn socket_dir(&self) -> &Path {
        &self.base
    }

    /// The server's log file, for diagnosing test failures.
    pub fn log_path(&self) -> PathBuf {
        self.base.join("server.log")
    }

    /// Superuser connection over TCP with password (SCRAM) authentication, TLS disabled.
    pub fn conninfo(&self, dbname: &str) -> ConnInfo {
        ConnInfo {
            host: "127.0.0.1".into(),
            port: self.port,
            other_hosts: Vec::new(),
            target_session_attrs: Default::default(),
            passfile: None,
            user: SUPERUSER.into(),
            password: Some(Secret::new(self.password.clone())),
            dbname: dbname.into(),
            sslmode: SslMode::Disable,
            sslrootcert: None,
            sslcert: None,
            sslkey: None,
            channel_binding: Default::default(),
            connect_timeout: Some(std::time::Duration::from_secs(10)),
            application_name: None,
        }
    }

    /// A connection URL for `dbname` (contains the password: for configs, never for logs).
    pub fn url(&self, dbname: &str) -> String {
        format!(
            "postgresql://{SUPERUSER}:{}@127.0.0.1:{}/{dbname}?sslmode=disable",
            self.password, self.port
        )
    }

    /// Stop the server but keep its data (for restart tests); `immediate` simulates a crash.
    pub fn stop_server(&self, immediate: bool) -> io::Result<()> {
        let mode = if immediate { "immediate" } else { "fast" };
        check(
            self.command("pg_ctl")
                .arg("-D")
                .arg(self.base.join("data"))
                .args(["stop", "-w", "-m", mode])
                .output(),
            "pg_ctl stop",
        )
    }

    /// `pg_ctl restart -m MODE` (`smart`, `fast` or `immediate`), waiting at most `wait` for
    /// the server to stop and start again.
    pub fn restart_server(&self, mode: &str, wait: std::time::Duration) -> io::Result<()> {
        check(
            self.pg_ctl_logging()
                .args(["restart", "-w", "-m", mode, "-t"])
                .arg(wait.as_secs().max(1).to_string())
                .output(),
            "pg_ctl restart",
        )
    }

    /// Start a server stopped with `stop_server`, on the same port.
    pub fn start_server(&self) -> io::Result<()> {
        check(
            self.pg_ctl_logging()
                .args(["-w", "-t", "60", "start"])
                .output(),
            "pg_ctl start",
        )
    }

    /// `pg_ctl` on this server's data directory, the server it starts logging to our file.
    fn pg_ctl_logging(&self) -> Command {
        let mut c = self.command("pg_ctl");
        c.arg("-D")
            .arg(self.base.join("data"))
            .arg("-l")
            .arg(self.base.join("server.log"));
        c
    }

    /// Stop the server (fast shutdown) and delete its files.
    pub fn stop(&mut self) {
        if let Some(mut w) = self.watchdog.take() {
            let _ = self
                .command("pg_ctl")
                .arg("-D")
                .arg(self.base.join("data"))
                .args(["stop", "-m", "fast", "-w"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
            let _ = w.kill();
            let _ = w.wait();
            let _ = std::fs::remove_dir_all(&self.base);
        }
    }
}

impl Drop for LocalPostgres {
    fn drop(&mut self) {
        self.stop();
    }
}
