//! Throwaway ClickHouse servers for the test suite and benchmarks.
//!
//! No Docker and no ClickHouse package here: the `chdb-core` wheel (PyPI, installed by
//! `scripts/clickhouse-install`) holds ClickHouse 26.9 as a library. Its one-shot query entry
//! point serves ClickHouse's own HTTP interface while a query runs: with a `config.xml` naming
//! the ports in the working directory, `SYSTEM START LISTEN HTTP` followed by a long
//! `sleepEachRow` keeps the listener up, with MergeTree storage under the server's directory.
//! Each server gets a free port and a temporary directory; **a server never outlives the
//! process that started it**: a watchdog shell process kills it and deletes the directory as
//! soon as that process is gone, even after `kill -9`.

use std::io;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// The chdb-core release the tests run (ClickHouse 26.9).
pub const CHDB_VERSION: &str = "26.9.0";

/// How long a server may run at most (its keep-alive query's length).
const LIFETIME_S: u64 = 6 * 3600;

/// A user with a password besides `default` (which has none), from the server's users file.
pub const PASSWORD_USER: &str = "cdc_user";
pub const PASSWORD: &str = "ch secret'\"pw";

/// The users file: `default` without a password (and allowed to manage access), and
/// [`PASSWORD_USER`] with [`PASSWORD`].
fn users_xml() -> String {
    let user = |name: &str, password: &str, admin: bool| {
        format!(
            "<{name}><password>{}</password><networks><ip>::/0</ip></networks><profile>default</profile>\
             <quota>default</quota><access_management>{}</access_management></{name}>",
            password
                .replace('&', "&amp;")
                .replace('<', "&lt;")
                .replace('\'', "&apos;")
                .replace('"', "&quot;"),
            u8::from(admin)
        )
    };
    format!(
        "<clickhouse><profiles><default/></profiles><quotas><default/></quotas><users>{}{}</users></clickhouse>\n",
        user("default", "", true),
        user(PASSWORD_USER, PASSWORD, false)
    )
}

/// A running local ClickHouse, stopped and deleted on drop.
pub struct LocalClickHouse {
    base: PathBuf,
    http_port: u16,
    server: Option<Child>,
    watchdog: Option<Child>,
}

/// Where `scripts/clickhouse-install` puts the wheel's files.
fn site_dir() -> PathBuf {
    match std::env::var_os("CDC_CHDB_DIR") {
        Some(d) => PathBuf::from(d).join("site"),
        None => PathBuf::from(format!("/tmp/cdc-chdb/{CHDB_VERSION}/site")),
    }
}

/// Install the wheel if it is missing (the script is idempotent).
fn ensure_installed() -> io::Result<PathBuf> {
    let site = site_dir();
    if site.join("chdb/_chdb.abi3.so").exists() {
        return Ok(site);
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/clickhouse-install");
    let status = Command::new(&script).status()?;
    if !status.success() || !site.join("chdb/_chdb.abi3.so").exists() {
        return Err(io::Error::other(format!(
            "ClickHouse for tests is missing and {} failed ({status}): it needs python3, pip and \
             the PyPI registry",
            script.display()
        )));
    }
    Ok(site)
}

fn free_port() -> io::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

impl LocalClickHouse {
    /// Start a server on free ports and wait until it answers.
    pub fn start() -> io::Result<LocalClickHouse> {
        Self::start_with_tcp_port(None)
    }

    /// The same, with the native protocol on `tcp_port` when given (tools that cannot be
    /// told a port, as the benchmarks' pgwarehouse, need 9000); it listens after
    /// [`LocalClickHouse::listen_tcp`].
    pub fn start_with_tcp_port(tcp_port: Option<u16>) -> io::Result<LocalClickHouse> {
        // A free port is only free until someone binds it: two servers started at once can be
        // handed the same one, and the second then fails. It is tried again on new ports.
        let mut attempt = 0;
        loop {
            attempt += 1;
            match Self::start_once(tcp_port) {
                Err(_) if attempt < 3 => {
                    std::thread::sleep(Duration::from_millis(200 * attempt));
                }
                result => return result,
            }
        }
    }

    fn start_once(tcp_port: Option<u16>) -> io::Result<LocalClickHouse> {
        static STARTED: AtomicU32 = AtomicU32::new(0);
        let site = ensure_installed()?;
        // Named by a counter, not a port: every server of this process has a directory of its
        // own (a port can be handed out twice, and ClickHouse locks its data directory).
        let base = std::env::temp_dir().join(format!(
            "cdc-clickhouse-{}-{}",
            std::process::id(),
            STARTED.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&base);
        std::fs::create_dir_all(&base)?;
        let http_port = free_port()?;
        let tcp_port = match tcp_port {
            Some(p) => p,
            None => free_port()?,
        };
        std::fs::write(
            base.join("config.xml"),
            format!(
                "<clickhouse>\n  <listen_host>127.0.0.1</listen_host>\n  <http_port>{http_port}</http_port>\n  \
                 <tcp_port>{tcp_port}</tcp_port>\n  <users_config>users.xml</users_config>\n</clickhouse>\n"
            ),
        )?;
        std::fs::write(base.join("users.xml"), users_xml())?;
        let mut me = LocalClickHouse {
            base,
            http_port,
            server: None,
            watchdog: None,
        };
        me.spawn(&site)?;
        me.wait_ready()?;
        Ok(me)
    }

    /// Start the server process on the files in `self.base`, and its watchdog.
    fn spawn(&mut self, site: &Path) -> io::Result<()> {
        let script = format!(
            "import sys\nsys.path.insert(0, {site:?})\nfrom chdb import _chdb\n\
             _chdb.query('SYSTEM START LISTEN HTTP; SELECT sleepEachRow(1) FROM numbers({LIFETIME_S}) \
             SETTINGS function_sleep_max_microseconds_per_block = 0', 'CSV', path={data:?})\n",
            site = site.display().to_string(),
            data = self.base.join("data").display().to_string(),
        );
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.base.join("server.log"))?;
        let server = Command::new("python3")
            .arg("-c")
            .arg(script)
            .current_dir(&self.base)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()?;
        let watchdog = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "while kill -0 {pid} 2>/dev/null && kill -0 {server} 2>/dev/null; do sleep 1; done; \
                 kill -9 {server} 2>/dev/null; rm -rf '{base}'",
                pid = std::process::id(),
                server = server.id(),
                base = self.base.display(),
            ))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        self.server = Some(server);
        self.watchdog = Some(watchdog);
        Ok(())
    }

    /// Kill the server (`kill -9`), keeping its files; [`LocalClickHouse::start_again`] brings
    /// it back on the same ports with the same data.
    pub fn kill(&mut self) {
        // The watchdog first: it would delete the files when the server goes.
        for child in [self.watchdog.take(), self.server.take()]
            .into_iter()
            .flatten()
        {
            let mut child = child;
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Start a killed server again.
    pub fn start_again(&mut self) -> io::Result<()> {
        self.spawn(&ensure_installed()?)?;
        self.wait_ready()
    }

    fn wait_ready(&mut self) -> io::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", self.http_port)) {
                use std::io::{Read, Write};
                s.set_read_timeout(Some(Duration::from_secs(5)))?;
                let _ = s.write_all(b"GET /ping HTTP/1.0\r\n\r\n");
                let mut answer = String::new();
                let _ = s.read_to_string(&mut answer);
                if answer.contains("Ok.") {
                    return Ok(());
                }
            }
            if let Some(status) = self
                .server
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                let log = std::fs::read_to_string(self.base.join("server.log")).unwrap_or_default();
                return Err(io::Error::other(format!(
                    "the local ClickHouse exited ({status}): {}",
                    log.lines().rev().take(5).collect::<Vec<_>>().join(" | ")
                )));
            }
            if Instant::now() > deadline {
                return Err(io::Error::other(
                    "the local ClickHouse did not answer within 60 s",
                ));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// HTTP port (127.0.0.1).
    pub fn port(&self) -> u16 {
        self.http_port
    }

    /// Start the native-protocol listener too (only HTTP listens at first).
    pub fn listen_tcp(&self) -> io::Result<()> {
        use std::io::{Read, Write};
        let sql = "SYSTEM START LISTEN TCP";
        let mut s = std::net::TcpStream::connect(("127.0.0.1", self.http_port))?;
        write!(
            s,
            "POST / HTTP/1.0\r\nContent-Length: {}\r\n\r\n{sql}",
            sql.len()
        )?;
        let mut answer = String::new();
        s.read_to_string(&mut answer)?;
        if answer.starts_with("HTTP/1.0 200") || answer.starts_with("HTTP/1.1 200") {
            Ok(())
        } else {
            Err(io::Error::other(answer))
        }
    }

    /// A destination URL for `database` as [`PASSWORD_USER`] (the password is not in it).
    pub fn url_for_password_user(&self, database: &str) -> String {
        format!(
            "clickhouse://{PASSWORD_USER}@127.0.0.1:{}/{database}",
            self.http_port
        )
    }

    /// A destination URL for `database` as the default (password-less) user.
    pub fn url(&self, database: &str) -> String {
        format!(
            "clickhouse://default@127.0.0.1:{}/{database}",
            self.http_port
        )
    }

    /// Stop the server and delete its files.
    pub fn stop(&mut self) {
        if let Some(mut s) = self.server.take() {
            let _ = s.kill();
            let _ = s.wait();
        }
        if let Some(mut w) = self.watchdog.take() {
            let _ = w.kill();
            let _ = w.wait();
        }
        let _ = std::fs::remove_dir_all(&self.base);
    }
}

impl Drop for LocalClickHouse {
    fn drop(&mut self) {
        self.stop();
    }
}
