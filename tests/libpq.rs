//! libpq's conventions for the source, through the `cdc` binary as users run it: a `source.url`
//! left out (the `PG*` variables and the password file name the server), a service file, the
//! password file's permission rule, and a `host=` list with `target_session_attrs=read-write`
//! that passes over a hot standby to the primary.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use cdc::local_pg::{LocalPostgres, Options};

use crate::harness::{rows_text, Dir, Pipeline};

const DDL: &str = "CREATE TABLE t (id int PRIMARY KEY, v text);
    INSERT INTO t SELECT g, 'v' || g FROM generate_series(1, 20) g;";

/// The pipeline's config with `source.url` replaced by `url` (`None`: left out).
fn config_with_source(p: &Pipeline, dir: &Dir, url: Option<&str>) -> PathBuf {
    let rest = p.config_text.split_once("\nslot =").unwrap().1;
    let url = url.map_or(String::new(), |u| format!("url = {u:?}\n"));
    let text = format!("[source]\n{url}slot ={rest}");
    dir.file("cdc.toml", &text, 0o600)
}

/// `cdc ARGS` with only the variables given (plus PATH): nothing of the test process's own
/// environment reaches libpq's conventions.
fn cdc(config: &Path, home: &Dir, args: &[&str], vars: &[(&str, String)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_cdc"));
    cmd.env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("HOME", &home.0)
        .env("CDC_LOG", "warn")
        .arg("--config")
        .arg(config)
        .args(args);
    for (k, v) in vars {
        cmd.env(k, v);
    }
    cmd.output().expect("run cdc")
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[tokio::test]
async fn a_source_left_out_is_the_one_libpqs_variables_service_and_password_files_name() {
    let p = Pipeline::new("libpq_env", DDL, "[[tables]]\nsource = \"public.t\"").await;
    let dir = Dir::new("libpq_env");
    let src = &p.src;
    let password = src.password.as_ref().unwrap().expose().to_owned();
    // In the home directory, as most users keep it.
    dir.file(
        ".pgpass",
        &format!(
            "# cdc's test\n127.0.0.1:{}:{}:{}:{password}\n",
            src.port, src.dbname, src.user
        ),
        0o600,
    );
    let vars = vec![
        ("PGHOST", src.host.clone()),
        ("PGPORT", src.port.to_string()),
        ("PGDATABASE", src.dbname.clone()),
        ("PGUSER", src.user.clone()),
        ("PGSSLMODE", "disable".to_owned()),
        ("PGAPPNAME", "libpq-test".to_owned()),
    ];
    let config = config_with_source(&p, &dir, None);
    let out = cdc(&config, &dir, &["sync"], &vars);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        rows_text(&p.dst_sql, "SELECT count(*)::text FROM t").await,
        ["20"]
    );

    // A password file others can read is no secret: libpq ignores it, and so do we, saying why.
    let pgpass = dir.0.join(".pgpass");
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&pgpass, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = cdc(&config, &dir, &["sync"], &vars);
    assert!(!out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("group or world access"),
        "{}",
        text(&out)
    );
    std::fs::set_permissions(&pgpass, std::fs::Permissions::from_mode(0o600)).unwrap();

    // `postgresql://` with fields missing: the URL's database, the rest from the variables.
    p.src_sql
        .batch_execute("INSERT INTO t VALUES (21, 'new')")
        .await
        .unwrap();
    let config = config_with_source(&p, &dir, Some(&format!("postgresql:///{}", src.dbname)));
    let mut others = vars.clone();
    others.retain(|(k, _)| *k != "PGDATABASE");
    others.push(("PGDATABASE", "not_this_one".to_owned()));
    let out = cdc(&config, &dir, &["sync"], &others);
    assert!(out.status.success(), "{}", text(&out));

    // A service file: `service=` in the URL, and PGSERVICE with the URL left out.
    let services = dir.file(
        "services.conf",
        &format!(
            "[appdb]\nhost={}\nport={}\ndbname={}\nuser={}\nsslmode=disable\n",
            src.host, src.port, src.dbname, src.user
        ),
        0o644,
    );
    let file_var = ("PGSERVICEFILE", services.display().to_string());
    let config = config_with_source(&p, &dir, Some("service=appdb"));
    let out = cdc(&config, &dir, &["sync"], std::slice::from_ref(&file_var));
    assert!(out.status.success(), "{}", text(&out));
    let config = config_with_source(&p, &dir, None);
    let out = cdc(
        &config,
        &dir,
        &["sync"],
        &[file_var.clone(), ("PGSERVICE", "appdb".to_owned())],
    );
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        rows_text(&p.dst_sql, "SELECT v FROM t WHERE id = 21").await,
        ["new"]
    );
    let out = cdc(
        &config,
        &dir,
        &["sync"],
        &[file_var, ("PGSERVICE", "nope".to_owned())],
    );
    assert!(
        !out.status.success() && text(&out).contains("no service \"nope\""),
        "{}",
        text(&out)
    );
}

#[tokio::test]
async fn a_host_list_with_read_write_passes_over_a_hot_standby_to_the_primary() {
    let primary = tokio::task::spawn_blocking(|| {
        LocalPostgres::start(&Options {
            logical: true,
            ..Default::default()
        })
    })
    .await
    .unwrap()
    .expect("primary");
    let p = Pipeline::on(
        &primary,
        &crate::harness::servers().destination,
        "libpq_failover",
        DDL,
        "[[tables]]\nsource = \"public.t\"",
    )
    .await;
    let primary = std::sync::Arc::new(primary);
    let standby = {
        let primary = primary.clone();
        tokio::task::spawn_blocking(move || LocalPostgres::start_standby(&primary))
            .await
            .unwrap()
            .expect("standby")
    };
    let dir = Dir::new("libpq_failover");
    let src = &p.src;
    let password = src.password.as_ref().unwrap().expose().to_owned();
    // The standby first, as after a failover back: read-write must pass over it.
    let hosts = |attrs: &str| {
        format!(
            "host=127.0.0.1,127.0.0.1 port={},{} dbname={} user={} password={password} sslmode=disable target_session_attrs={attrs}",
            standby.port(),
            primary.port(),
            src.dbname,
            src.user
        )
    };
    // Only the standby: nothing fits, and the error says what each server is.
    let only_standby = format!(
        "host=127.0.0.1 port={} dbname={} user={} password={password} sslmode=disable target_session_attrs=read-write connect_timeout=5",
        standby.port(),
        src.dbname,
        src.user
    );
    let config = config_with_source(&p, &dir, Some(&only_standby));
    let out = cdc(&config, &dir, &["snapshot"], &[]);
    assert!(!out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains(&format!("127.0.0.1:{} is a standby", standby.port())),
        "{}",
        text(&out)
    );
    assert!(!text(&out).contains(&password), "no password in messages");

    let config = config_with_source(&p, &dir, Some(&hosts("read-write")));
    let out = cdc(&config, &dir, &["snapshot"], &[]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(p.slot_count().await, 1, "the slot is on the primary");
    assert_eq!(
        rows_text(&p.dst_sql, "SELECT count(*)::text FROM t").await,
        ["20"]
    );
    let out = cdc(&config, &dir, &["teardown", "--yes"], &[]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(p.slot_count().await, 0);
}
