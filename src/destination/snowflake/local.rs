//! A throwaway Snowflake emulator for the test suite and benchmarks: fakesnow's server mode
//! (installed by `scripts/fakesnow-install`), which speaks the REST protocol of Snowflake's own
//! drivers over DuckDB. Each server gets a free port and a temporary directory (its databases are in
//! memory); **a server never outlives the process that started it**: a watchdog shell
//! process kills it and deletes the directory as soon as that process is gone, even after
//! `kill -9`. The emulator accepts any user and password.

use std::io;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The fakesnow release the tests run.
pub const FAKESNOW_VERSION: &str = "0.12.1";

/// The server, with its fix for MERGE inside a transaction (see the script).
const LAUNCHER: &str = include_str!("../../../scripts/fakesnow-server.py");

/// A running emulator, stopped and deleted on drop.
pub struct LocalSnowflake {
    base: PathBuf,
    port: u16,
    server: Option<Child>,
    watchdog: Option<Child>,
}

fn install_dir() -> PathBuf {
    match std::env::var_os("CDC_FAKESNOW_DIR") {
        Some(d) => PathBuf::from(d),
        None => PathBuf::from(format!("/tmp/cdc-fakesnow/{FAKESNOW_VERSION}")),
    }
}

/// Install the emulator if it is missing (the script is idempotent); its Python, which also
/// has DuckDB 2.x (tests write files with it that the DuckDB cdc links cannot read).
pub fn python() -> io::Result<PathBuf> {
    let dir = install_dir();
    let exe = dir.join("venv/bin/python");
    if dir.join("installed").exists() {
        return Ok(exe);
    }
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/fakesnow-install");
    let status = Command::new(&script).status()?;
    if !status.success() || !exe.exists() {
        return Err(io::Error::other(format!(
            "the Snowflake emulator for tests is missing and {} failed ({status}): it needs python3, \
             venv, pip and the PyPI registry",
            script.display()
        )));
    }
    Ok(exe)
}

impl LocalSnowflake {
    /// Start an emulator on a free port and wait until it answers.
    pub fn start() -> io::Result<LocalSnowflake> {
        let exe = python()?;
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let base =
            std::env::temp_dir().join(format!("cdc-snowflake-{}-{port}", std::process::id()));
        std::fs::create_dir_all(&base)?;
        let log = std::fs::File::create(base.join("server.log"))?;
        std::fs::write(base.join("fakesnow-server.py"), LAUNCHER)?;
        let server = Command::new(&exe)
            .arg(base.join("fakesnow-server.py"))
            .args(["127.0.0.1", &port.to_string()])
            .current_dir(&base)
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
                base = base.display(),
            ))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        let mut me = LocalSnowflake {
            base,
            port,
            server: Some(server),
            watchdog: Some(watchdog),
        };
        me.wait_ready()?;
        Ok(me)
    }

    fn wait_ready(&mut self) -> io::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return Ok(());
            }
            if let Some(status) = self
                .server
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                let log = std::fs::read_to_string(self.base.join("server.log")).unwrap_or_default();
                return Err(io::Error::other(format!(
                    "the Snowflake emulator exited ({status}): {}",
                    log.lines().rev().take(5).collect::<Vec<_>>().join(" | ")
                )));
            }
            if Instant::now() > deadline {
                return Err(io::Error::other(
                    "the Snowflake emulator did not answer within 60 s",
                ));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The emulator's last log lines that report errors (for a test's failure message).
    pub fn errors(&self) -> String {
        let log = std::fs::read_to_string(self.base.join("server.log")).unwrap_or_default();
        let lines: Vec<&str> = log
            .lines()
            .filter(|l| l.contains("Error") || l.contains("error"))
            .collect();
        lines[lines.len().saturating_sub(8)..].join("\n")
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// A destination URL for `database`/`schema` on this emulator.
    pub fn url(&self, database: &str, schema: &str) -> String {
        format!(
            "snowflake://cdc@emulator/{database}/{schema}?warehouse=WH&host=127.0.0.1&port={}&protocol=http",
            self.port
        )
    }
}

impl Drop for LocalSnowflake {
    fn drop(&mut self) {
        for child in [self.watchdog.take(), self.server.take()]
            .into_iter()
            .flatten()
        {
            let mut child = child;
            let _ = child.kill();
            let _ = child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.base);
    }
}
