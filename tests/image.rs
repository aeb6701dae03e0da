//! The sidecar image, built by `scripts/build-image` and run with podman against servers of
//! the test's own: a non-root `cdc run` configured by a mounted file and `CDC_*` variables,
//! under a pgbench load, through a clean stop, a restart and a dropped slot.
//!
//! Ignored by a plain `cargo test` (it needs root, podman and a minute or two); `.ci/run` runs it
//! with `cargo test --test main image:: -- --ignored` after installing podman.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use cdc::local_pg::{LocalPostgres, SUPERUSER};

use crate::harness::{own_servers, rows_text, wait_for, Dir, Pipeline};
use crate::run::wait_synced;

const TABLES: [&str; 4] = [
    "pgbench_accounts",
    "pgbench_branches",
    "pgbench_tellers",
    "pgbench_history",
];

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// podman, with the settings this machine's cgroups v1 need (as scripts/build-image sets).
fn podman(args: &[&str]) -> Output {
    let mut c = Command::new("podman");
    if std::env::var_os("CONTAINERS_CONF").is_none()
        && !Path::new("/sys/fs/cgroup/cgroup.controllers").exists()
    {
        c.env(
            "CONTAINERS_CONF",
            root().join("docker/podman-containers.conf"),
        );
    }
    c.args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run podman (apt-get install -y podman runc)")
}

fn podman_ok(args: &[&str]) -> String {
    let out = podman(args);
    assert!(
        out.status.success(),
        "podman {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Removes the container and the image however the test ends.
struct Cleanup {
    container: String,
    image: String,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let logs = podman(&["logs", "--tail", "40", &self.container]);
            eprintln!(
                "container log (last lines):\n{}{}",
                String::from_utf8_lossy(&logs.stdout),
                String::from_utf8_lossy(&logs.stderr)
            );
        }
        let _ = podman(&["rm", "-f", "-t", "0", &self.container]);
        let _ = podman(&["rmi", "-f", &self.image]);
    }
}

fn table_digest(table: &str) -> String {
    format!("SELECT count(*)::text || ' ' || coalesce(md5(string_agg(x::text, ',' ORDER BY x::text)), '') FROM {table} x")
}

async fn wait_all_synced(p: &Pipeline) {
    for table in TABLES {
        wait_synced(p, &table_digest(table)).await;
    }
}

#[tokio::test]
#[ignore = "builds and runs the container image with podman (root, minutes): .ci/run runs it"]
async fn the_image_streams_stops_cleanly_resumes_and_reports_its_health() {
    let (source, destination) = own_servers().await;
    let p = Pipeline::on(&source, &destination, "image", "SELECT 1", "").await;
    p.pgbench_init(1).await;

    let tag = format!("test-{}", std::process::id());
    let image = format!("localhost/cdc:{tag}");
    let container = format!("cdc-image-test-{}", std::process::id());
    let _cleanup = Cleanup {
        container: container.clone(),
        image: image.clone(),
    };
    let built = Command::new(root().join("scripts/build-image"))
        .arg(&tag)
        .env("CDC_BINARY", env!("CARGO_BIN_EXE_cdc"))
        .output()
        .unwrap();
    assert!(
        built.status.success(),
        "scripts/build-image: {}{}",
        String::from_utf8_lossy(&built.stdout),
        String::from_utf8_lossy(&built.stderr)
    );

    // The file names the tables and the slot; where the servers are, and their passwords,
    // come from CDC_* variables, as a deployment would set them.
    let dir = Dir::new("cdc-image");
    let mut text = format!(
        "[source]\nslot = {:?}\npublication = {:?}\n[apply]\nbatch_max_wait_ms = 20\n[status]\nlisten = \"127.0.0.1:0\"\n",
        p.slot, p.slot
    );
    for t in TABLES {
        text.push_str(&format!("[[tables]]\nsource = \"public.{t}\"\n"));
    }
    // Readable by the image's user, who is not the file's owner.
    let config = dir.file("config.toml", &text, 0o644);
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&dir.0, std::fs::Permissions::from_mode(0o755)).unwrap();
    let url = |server: &LocalPostgres, db: &str| {
        format!(
            "postgresql://{SUPERUSER}@127.0.0.1:{}/{db}?sslmode=disable",
            server.port()
        )
    };
    let mount = format!("{}:/etc/cdc/config.toml:ro", config.display());
    let env = [
        format!("CDC_SOURCE_URL={}", url(&source, &p.src.dbname)),
        format!("CDC_SOURCE_PASSWORD={}", source.password()),
        format!("CDC_DESTINATION_URL={}", url(&destination, &p.dst.dbname)),
        format!("CDC_DESTINATION_PASSWORD={}", destination.password()),
        "CDC_LOG=info".to_string(),
    ];
    let mut run = vec![
        "run",
        "-d",
        "--name",
        &container,
        // The test servers listen on loopback only.
        "--network",
        "host",
        "-v",
        &mount,
    ];
    for e in &env {
        run.extend(["-e", e.as_str()]);
    }
    run.push(&image);

    // The load starts before the container, so it runs through the snapshot and the stream.
    let mut load = p
        .pgbench(&["-T", "8", "-c", "2", "-j", "1"])
        .spawn()
        .unwrap();
    podman_ok(&run);
    let ran = tokio::task::spawn_blocking(move || load.wait().unwrap())
        .await
        .unwrap();
    assert!(ran.success(), "pgbench failed");
    wait_all_synced(&p).await;
    let history: i64 = rows_text(&p.dst_sql, "SELECT count(*)::text FROM pgbench_history").await[0]
        .parse()
        .unwrap();
    assert!(history > 100, "the load wrote {history} history rows");

    // Runs as the image's user, not root.
    assert_eq!(podman_ok(&["exec", &container, "id", "-u"]), "10001");
    let ps = podman_ok(&["top", &container, "user", "args"]);
    assert!(ps.contains("cdc") && !ps.contains("root"), "{ps}");
    // The image's own HEALTHCHECK command (cdc status --require-active).
    let health = podman(&["healthcheck", "run", &container]);
    assert!(
        health.status.success(),
        "healthy while streaming: {}{}",
        String::from_utf8_lossy(&health.stdout),
        String::from_utf8_lossy(&health.stderr)
    );

    // podman stop sends SIGTERM: a clean exit, everything applied confirmed to the source.
    podman_ok(&["stop", "-t", "60", &container]);
    assert_eq!(
        podman_ok(&["inspect", "-f", "{{.State.ExitCode}}", &container]),
        "0"
    );
    let applied = p.applied_lsn().await;
    assert_eq!(applied.len(), 1);
    assert_eq!(
        applied,
        p.confirmed_lsn().await,
        "the slot confirmed what was committed"
    );

    // Changes while it is down are streamed after a restart, exactly once (pgbench_history
    // has no key: a change applied twice would leave a duplicate row).
    assert!(p
        .pgbench(&["-n", "-t", "300", "-c", "2", "-j", "1"])
        .status()
        .unwrap()
        .success());
    podman_ok(&["start", &container]);
    wait_all_synced(&p).await;
    let after: i64 = rows_text(&p.dst_sql, "SELECT count(*)::text FROM pgbench_history").await[0]
        .parse()
        .unwrap();
    assert_eq!(after, history + 600, "each restarted change applied once");

    // A hung cdc (stopped by a signal) whose slot is dropped: the health check, run as a new
    // process in the container, reports it.
    let pid = podman_ok(&["inspect", "-f", "{{.State.Pid}}", &container]);
    assert!(Command::new("kill")
        .args(["-STOP", &pid])
        .status()
        .unwrap()
        .success());
    wait_for("the slot dropped", Duration::from_secs(30), || async {
        let _ = p
            .src_sql
            .execute(
                "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots WHERE slot_name = $1 AND active",
                &[&p.slot],
            )
            .await;
        p.src_sql
            .execute(
                "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots WHERE slot_name = $1 AND NOT active",
                &[&p.slot],
            )
            .await
            .is_ok()
            && p.slot_count().await == 0
    })
    .await;
    let health = podman(&["healthcheck", "run", &container]);
    let said = String::from_utf8_lossy(&health.stdout).to_string();
    assert!(
        !health.status.success() && said.contains("unhealthy"),
        "unhealthy once the slot is gone: {said}"
    );
    let log = podman_ok(&["inspect", "-f", "{{json .State.Health.Log}}", &container]);
    assert!(log.contains("does not exist on the source"), "{log}");
    // Woken, cdc run finds the slot gone and stops with a definite error saying what to do.
    assert!(Command::new("kill")
        .args(["-CONT", &pid])
        .status()
        .unwrap()
        .success());
    let code = podman_ok(&["wait", &container]);
    assert_eq!(code, "65", "a missing slot is a definite error");
    let logs = podman(&["logs", &container]);
    let logs =
        String::from_utf8_lossy(&logs.stderr).to_string() + &String::from_utf8_lossy(&logs.stdout);
    assert!(logs.contains("cdc snapshot --force"), "{logs}");
    assert!(
        !logs.contains(source.password()) && !logs.contains(destination.password()),
        "passwords never logged"
    );
}
