use std::path::Path;

use super::*;

const NO_ENV: [(&str, &str); 0] = [];

fn load(text: &str) -> Result<Config, ConfigError> {
    Config::from_toml(text, Path::new("test.toml"), &NO_ENV)
}

const MINIMAL: &str = r#"
[source]
url = "postgresql://u@src/db"
[destination]
url = "postgresql://u@dst/db"
[[tables]]
source = "public.orders"
"#;

#[test]
fn the_shipped_config_parses_with_its_documented_defaults() {
    let c = Config::from_toml(EXAMPLE, Path::new("config.toml"), &NO_ENV).unwrap();
    assert_eq!(
        (c.source.slot.as_str(), c.source.publication.as_str()),
        ("cdc", "cdc")
    );
    assert_eq!(c.apply, ApplyConfig::default());
    assert_eq!(c.status, StatusConfig::default());
    assert_eq!(c.snapshot, SnapshotConfig::default());
    assert_eq!(c.source.read_timeout_ms, default_read_timeout_ms());
    assert_eq!(c.table_pairs()[0].0.to_string(), "public.orders");
}

#[test]
fn minimal_config_gets_defaults() {
    let c = load(MINIMAL).unwrap();
    assert_eq!(c.source.slot, "cdc");
    assert_eq!(c.destination.state_schema, "cdc");
    assert_eq!(
        c.apply.batch_max_rows, None,
        "the destination's default applies"
    );
    assert_eq!(c.apply.batch_rows(), 10_000);
    let (src, dst) = &c.table_pairs()[0];
    assert_eq!(src, dst);
}

#[test]
fn unknown_field_names_its_line_and_field() {
    let text = MINIMAL.replace("[destination]", "slott = \"x\"\n[destination]");
    let err = load(&text).unwrap_err().to_string();
    assert!(err.starts_with("test.toml:4:1:"), "{err}");
    assert!(err.contains("unknown field `slott`"), "{err}");
}

#[test]
fn wrong_type_names_its_line() {
    let text = format!("{MINIMAL}[apply]\nbatch_max_rows = \"many\"\n");
    let err = load(&text).unwrap_err().to_string();
    assert!(err.starts_with("test.toml:9:"), "{err}");
    assert!(err.contains("invalid type"), "{err}");
}

#[test]
fn every_semantic_problem_is_reported_at_once_with_its_line() {
    let text = r#"
[source]
url = "postgresql://u@h/db"
slot = "Bad-Slot"

[destination]
url = "postgresql://u@h/db"

[[tables]]
source = "orders"

[[tables]]
source = "public.a"

[[tables]]
source = "PUBLIC.A"

[[tables]]
source = "public.b"
destination = "public.a"

[apply]
batch_max_rows = 0
"#;
    let Err(ConfigError::Invalid { problems, .. }) = load(text) else {
        panic!("expected problems")
    };
    let rendered: Vec<String> = problems.iter().map(|p| p.to_string()).collect();
    let expect = [
        "line 7: destination.url: names the same database",
        "line 4: source.slot: \"Bad-Slot\" is not a valid slot name",
        "line 10: tables[0].source: \"orders\" is not schema-qualified: write it as public.orders",
        "line 16: tables[2].source: public.a is already listed as tables[1]",
        "line 20: tables[3].destination: public.a is already the destination of tables[1]",
        "line 23: apply.batch_max_rows: must be greater than 0",
    ];
    for e in expect {
        assert!(
            rendered.iter().any(|r| r.starts_with(e)),
            "missing {e:?} in {rendered:#?}"
        );
    }
    assert_eq!(rendered.len(), expect.len(), "{rendered:#?}");
}

#[test]
fn environment_overrides_the_file_and_is_named_in_errors() {
    let env = [
        ("CDC_SOURCE_URL", "postgresql://env@envhost/envdb"),
        ("CDC_SOURCE_SLOT", "NOPE"),
        ("CDC_SOURCE_PASSWORD", "s3cret"),
    ];
    let Err(ConfigError::Invalid { problems, .. }) =
        Config::from_toml(MINIMAL, Path::new("t"), &env)
    else {
        panic!("slot from env is invalid")
    };
    assert_eq!(problems.len(), 1);
    assert_eq!(problems[0].origin, Origin::Env("CDC_SOURCE_SLOT"));
    assert!(problems[0].to_string().contains("(set by CDC_SOURCE_SLOT)"));

    let env = [
        ("CDC_SOURCE_URL", "postgresql://env:urlpw@envhost/envdb"),
        ("CDC_SOURCE_PASSWORD", "s3cret"),
    ];
    let c = Config::from_toml(MINIMAL, Path::new("t"), &env).unwrap();
    let info = c.source_conninfo().unwrap();
    assert_eq!(info.host, "envhost");
    assert_eq!(
        info.password.unwrap().expose(),
        "s3cret",
        "the env password wins over the URL's"
    );
}

#[test]
fn password_file_is_read_and_trimmed() {
    let dir = std::env::temp_dir().join(format!("cdc-cfg-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let f = dir.join("pw");
    std::fs::write(&f, "from-file\n").unwrap();
    let text = MINIMAL.replace(
        "[destination]",
        &format!(
            "password_file = {:?}\n[destination]",
            f.display().to_string()
        ),
    );
    let c = load(&text).unwrap();
    assert_eq!(
        c.source_conninfo().unwrap().password.unwrap().expose(),
        "from-file"
    );
    let missing = MINIMAL.replace(
        "[destination]",
        "password_file = \"/nonexistent/pw\"\n[destination]",
    );
    let err = load(&missing).unwrap_err().to_string();
    assert!(
        err.contains("line 4: source.password_file: cannot read /nonexistent/pw"),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn secrets_never_appear_in_debug_output() {
    let text = MINIMAL.replace("postgresql://u@src/db", "postgresql://u:topsecret@src/db");
    let env = [("CDC_DESTINATION_PASSWORD", "alsosecret")];
    let c = Config::from_toml(&text, Path::new("t"), &env).unwrap();
    let dbg = format!("{c:?}");
    assert!(
        !dbg.contains("topsecret") && !dbg.contains("alsosecret"),
        "{dbg}"
    );
    assert!(dbg.contains("postgresql://u@src:5432/db"), "{dbg}");
}

#[test]
fn a_missing_file_is_fine_when_the_environment_has_both_urls() {
    let nowhere = Path::new("/nonexistent/config.toml");
    assert!(matches!(
        Config::load(nowhere, &NO_ENV),
        Err(ConfigError::Missing { .. })
    ));
    let env = [
        ("CDC_SOURCE_URL", "postgresql://a@h1/db"),
        ("CDC_DESTINATION_URL", "postgresql://a@h2/db"),
    ];
    // Still needs tables, which only a file can list: the error says so.
    let Err(ConfigError::Invalid { problems, .. }) = Config::load(nowhere, &env) else {
        panic!()
    };
    assert_eq!(
        problems
            .iter()
            .map(|p| p.field.as_str())
            .collect::<Vec<_>>(),
        ["tables"]
    );
}

#[test]
fn sqlite_sources_take_renames_and_postgres_sources_refuse_them() {
    let sqlite = r#"
[source]
url = "sqlite:///srv/app.db"
[destination]
url = "postgresql://u@dst/db"
[[tables]]
source = "main.film_work"
destination = "content.film_work"
columns = { created_at = "created" }
ignore_columns = ["file_path"]
batch_rows = 500
"#;
    let c = load(sqlite).unwrap();
    assert_eq!(c.sqlite_source().unwrap(), Some("/srv/app.db".into()));
    assert_eq!(c.tables[0].columns["created_at"], "created");
    assert_eq!(c.tables[0].batch_rows, Some(500));
    let refused = c.source_conninfo().unwrap_err().to_string();
    assert!(refused.contains("cdc sync --every"), "{refused}");
    let postgres = sqlite.replace("sqlite:///srv/app.db", "postgresql://u@src/db");
    let e = load(&postgres).unwrap_err().to_string();
    assert!(e.contains("columns / ignore_columns"), "{e}");
    let e = load(&sqlite.replace("sqlite:///srv", "sqlite://srv"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("three slashes"), "{e}");
}

#[test]
fn urls_left_out_come_from_libpq_and_pgwarehouse_variables() {
    let text = "[source]\n[destination]\n[[tables]]\nsource = \"public.orders\"\n";
    let env = [
        ("PGHOST", "db.internal"),
        ("PGDATABASE", "app"),
        ("PGUSER", "reader"),
        ("PGPASSWORD", "pgsecret"),
        ("CLICKHOUSE_HOST", "ch.internal"),
        ("CLICKHOUSE_DATABASE", "wh"),
        ("CLICKHOUSE_PWD", "chsecret"),
    ];
    let c = Config::from_toml(text, Path::new("t"), &env).unwrap();
    let src = c.source_conninfo().unwrap();
    assert_eq!(
        (src.host.as_str(), src.dbname.as_str(), src.user.as_str()),
        ("db.internal", "app", "reader")
    );
    assert_eq!(src.password.as_ref().map(|p| p.expose()), Some("pgsecret"));
    let ch = crate::destination::Settings::of(&c).unwrap();
    assert!(
        ch.url.starts_with("clickhouse://"),
        "a ClickHouse destination"
    );
    assert_eq!(ch.password.as_ref().map(|p| p.expose()), Some("chsecret"));
    assert!(!format!("{c:?}").contains("secret"), "{c:?}");
    // The file's URL wins over the variables.
    let c = Config::from_toml(MINIMAL, Path::new("t"), &env).unwrap();
    assert_eq!(c.source_conninfo().unwrap().host, "src");
    // Nothing anywhere: the source is libpq's default server (as `psql` with no arguments);
    // the destination must be named, and the problem names every way to name it.
    let Err(ConfigError::Invalid { problems, .. }) = load(text) else {
        panic!()
    };
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert_eq!(problems[0].field, "destination.url");
    assert!(
        problems[0].to_string().contains("CLICKHOUSE_HOST"),
        "{problems:?}"
    );
    let c = Config::from_toml(
        "[source]\n[destination]\nurl = \"duckdb:x.duckdb\"\n[[tables]]\nsource = \"public.t\"\n",
        Path::new("t"),
        &[("USER", "me")],
    )
    .unwrap();
    let src = c.source_conninfo().unwrap();
    assert_eq!(
        (src.user.as_str(), src.dbname.as_str(), src.port),
        ("me", "me", 5432)
    );
    assert!(!format!("{c:?}").contains("pgsecret"));
}

#[test]
fn max_records_caps_every_table_unless_a_table_says_otherwise() {
    let text = format!(
        "{}\n[[tables]]\nsource = \"public.items\"\nmax_records = 5\n[[tables]]\nsource = \"public.other\"\nmax_rows = 7\n",
        MINIMAL.replace("url = \"postgresql://u@src/db\"", "url = \"postgresql://u@src/db\"\nmax_records = 100")
    );
    let c = load(&text).unwrap();
    let caps: Vec<Option<u64>> = c.tables.iter().map(|t| t.max_rows).collect();
    assert_eq!(caps, [Some(100), Some(5), Some(7)]);
}

#[test]
fn sections_may_be_left_out_when_the_environment_names_the_servers() {
    // A container's mounted file lists tables only; its environment says where the servers are.
    let text = "[[tables]]\nsource = \"public.orders\"\n";
    let env = [
        ("CDC_SOURCE_URL", "postgresql://a@h1/db"),
        ("CDC_SOURCE_SLOT", "from_env"),
        ("CDC_DESTINATION_URL", "postgresql://a@h2/db"),
    ];
    let c = Config::from_toml(text, Path::new("test.toml"), &env).unwrap();
    assert_eq!(c.destination.url.0, "postgresql://a@h2/db");
    assert_eq!(c.source.slot, "from_env");
    assert_eq!(
        c.source.publication, "cdc",
        "defaults as for an empty section"
    );
    assert_eq!(c.destination.state_schema, "cdc");
    // Without the variable, the destination is named as not set, not as a missing section.
    let e = load(text).unwrap_err().to_string();
    assert!(
        e.contains("destination.url") && e.contains("CDC_DESTINATION_URL"),
        "{e}"
    );
}
