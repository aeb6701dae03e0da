//! The `cdc` binary as users and scripts see it: help, exit codes, config errors, the demo.

use std::path::PathBuf;
use std::process::{Command, Output};

fn cdc(args: &[&str], envs: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_cdc"));
    cmd.args(args)
        .env_remove("CDC_CONFIG")
        .env_remove("CDC_SOURCE_URL")
        .env_remove("CDC_DESTINATION_URL");
    // The libpq and pgwarehouse variables a config may fall back on.
    for var in ["PGHOST", "PGDATABASE", "CLICKHOUSE_HOST", "DUCKDB_PATH"] {
        cmd.env_remove(var);
    }
    for (k, v) in envs {
        cmd.env(k, v);
    }
    cmd.output().expect("run cdc")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A config file in a temporary directory of its own (tests run in parallel), both removed when
/// dropped.
struct TempConfig(PathBuf);

impl std::ops::Deref for TempConfig {
    type Target = PathBuf;
    fn deref(&self) -> &PathBuf {
        &self.0
    }
}

impl Drop for TempConfig {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
        if let Some(dir) = self.0.parent() {
            let _ = std::fs::remove_dir(dir);
        }
    }
}

fn write_config(name: &str, text: &str) -> TempConfig {
    let dir = crate::harness::scratch().join(format!("cdc-cli-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    TempConfig(p)
}

const VALID: &str = r#"
[source]
url = "postgresql://u:hunter2@127.0.0.1:1/src"
[destination]
url = "postgresql://u@127.0.0.1:1/dst"
[[tables]]
source = "public.orders"
"#;

#[test]
fn help_shows_the_commands() {
    let out = cdc(&["--help"], &[]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    for c in [
        "snapshot",
        "run",
        "status",
        "demo",
        "--config",
        "--log-format",
    ] {
        assert!(text.contains(c), "{c} not in help:\n{text}");
    }
}

#[test]
fn a_bad_flag_is_a_usage_error() {
    let out = cdc(&["run", "--no-such-flag"], &[]);
    assert_eq!(out.status.code(), Some(64), "{}", stderr(&out));
}

#[test]
fn a_malformed_config_names_the_line_and_field() {
    let path = write_config(
        "bad.toml",
        &VALID.replace("[[tables]]", "batch = 3\n[[tables]]"),
    );
    let out = cdc(&["--config", path.to_str().unwrap(), "run"], &[]);
    assert_eq!(out.status.code(), Some(78));
    let err = stderr(&out);
    assert!(
        err.contains("bad.toml:6:1") && err.contains("unknown field `batch`"),
        "{err}"
    );
}

#[test]
fn a_destination_drivers_problems_come_with_the_others_at_their_lines() {
    // The destination's driver checks its URL and settings while the configuration loads:
    // every problem is listed at once, each at its line, before anything connects.
    let with = |dest: &str| {
        VALID
            .replace("url = \"postgresql://u@127.0.0.1:1/dst\"", dest)
            .replace("public.orders", "orders")
    };
    let cases = [
        (
            "url = \"snowflake://acct/DB/S\"",
            "line 5: destination.url",
            "name the user",
        ),
        (
            "url = \"duckdb:w.duckdb\"\ncluster = \"c\"",
            "line 6: destination.cluster",
            "applies to clickhouse",
        ),
        (
            "url = \"mysql://h/db\"",
            "line 5: destination.url",
            "snowflake://USER@ACCOUNT",
        ),
    ];
    for (dest, at, says) in cases {
        let path = write_config("driver.toml", &with(dest));
        let out = cdc(&["--config", path.to_str().unwrap(), "snapshot"], &[]);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(78), "{err}");
        assert!(err.contains(at) && err.contains(says), "{dest}: {err}");
        assert!(err.contains("tables[0].source"), "the others too: {err}");
    }
}

#[test]
fn a_missing_config_says_how_to_provide_one() {
    let out = cdc(&["--config", "/nonexistent/cdc.toml", "snapshot"], &[]);
    assert_eq!(out.status.code(), Some(78));
    assert!(
        stderr(&out).contains("pass --config PATH, set CDC_CONFIG"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn config_path_comes_from_cdc_config() {
    let path = write_config("env.toml", &VALID.replace("public.orders", "orders"));
    let out = cdc(&["status"], &[("CDC_CONFIG", path.to_str().unwrap())]);
    assert_eq!(out.status.code(), Some(78));
    assert!(
        stderr(&out).contains("tables[0].source"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn status_of_an_unreachable_source_exits_3_and_never_prints_the_password() {
    let path = write_config("valid.toml", VALID);
    let out = cdc(
        &[
            "--config",
            path.to_str().unwrap(),
            "--log-format",
            "json",
            "status",
        ],
        &[("CDC_LOG", "debug")],
    );
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.starts_with("UNREACHABLE: cannot connect to the source"),
        "{text}"
    );
    let err = stderr(&out);
    // --log-format json: every log line is a JSON object with the event's fields.
    for line in err.lines().filter(|l| !l.starts_with("error:")) {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert!(v["level"].is_string() && v["fields"].is_object(), "{line}");
    }
    assert!(
        err.contains("configuration loaded"),
        "the debug log shows the config: {err}"
    );
    assert!(
        !err.contains("hunter2") && !text.contains("hunter2"),
        "password leaked: {err}{text}"
    );
}

#[test]
fn the_demo_replicates_a_live_load_from_a_throwaway_server() {
    let out = cdc(&["demo", "--seconds", "2"], &[("CDC_LOG_FORMAT", "json")]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}\n{}", stderr(&out));
    assert!(text.contains("the destination caught up"), "{text}");
    assert!(text.contains("identical to the source"), "{text}");
    assert!(
        text.contains("`cdc status` (exit code 0") && text.contains("HEALTHY"),
        "the demo shows the running pipeline's status: {text}"
    );
    // Its progress table is not interleaved with routine log lines.
    assert!(
        !stderr(&out).contains("\"level\":\"INFO\""),
        "{}",
        stderr(&out)
    );
}

#[test]
fn the_demo_replicates_into_a_duckdb_file_read_by_another_process() {
    let out = cdc(
        &["demo", "--destination", "duckdb", "--seconds", "2"],
        &[("CDC_LOG_FORMAT", "json")],
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}\n{}", stderr(&out));
    assert!(text.contains("the DuckDB file caught up"), "{text}");
    assert!(text.contains("identical to the source"), "{text}");
    assert!(
        text.contains("`cdc status` (exit code 0") && text.contains("HEALTHY"),
        "{text}"
    );
}

#[test]
fn init_from_pgwarehouse_writes_a_config_and_names_what_it_left() {
    let dir = crate::harness::scratch().join(format!("cdc-pgw-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let yaml = dir.join("pgwarehouse_conf.yaml");
    std::fs::write(
        &yaml,
        "postgres:\n  pghost: db\n  pgdatabase: shop\n  pgpassword: hunter2\n\
         warehouse:\n  backend: duckdb\n  duckdb_path: /data/wh.duckdb\n\
         tables:\n  - users:\n      reload: true\n  - orders:\n      last_modified: updated_at\n      reload: sun\n",
    )
    .unwrap();
    let out_path = dir.join("config.toml");
    let (y, o) = (yaml.to_str().unwrap(), out_path.to_str().unwrap());
    let out = cdc(&["init", "--from-pgwarehouse", y, "--output", o], &[]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("not carried over: postgres.pgpassword"),
        "{}",
        stderr(&out)
    );
    let written = std::fs::read_to_string(&out_path).unwrap();
    assert!(!written.contains("hunter2"), "{written}");
    let config = cdc::config::Config::from_toml(&written, &out_path, &[("", ""); 0]).unwrap();
    assert_eq!(config.destination.url.0, "duckdb:///data/wh.duckdb");
    assert_eq!(
        config.tables[1].modified_column.as_deref(),
        Some("updated_at")
    );
    // Not over an existing file, and a file that is not YAML is named with the problem.
    let again = cdc(&["init", "--from-pgwarehouse", y, "--output", o], &[]);
    assert_eq!(again.status.code(), Some(64), "{}", stderr(&again));
    std::fs::write(&yaml, "tables: [a").unwrap();
    let bad = cdc(
        &["init", "--from-pgwarehouse", y, "--output", o, "--force"],
        &[],
    );
    assert_eq!(bad.status.code(), Some(78), "{}", stderr(&bad));
    assert!(stderr(&bad).contains("not valid YAML"), "{}", stderr(&bad));
    let missing = cdc(
        &[
            "init",
            "--from-pgwarehouse",
            "/nonexistent.yaml",
            "--output",
            o,
            "--force",
        ],
        &[],
    );
    assert_ne!(missing.status.code(), Some(0));
    assert!(
        stderr(&missing).contains("cannot read the pgwarehouse config"),
        "{}",
        stderr(&missing)
    );
    let _ = std::fs::remove_dir_all(&dir);
}
