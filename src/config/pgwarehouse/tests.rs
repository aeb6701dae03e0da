use super::*;

/// The example of pgwarehouse's README, every kind of table entry.
const README_EXAMPLE: &str = r#"
postgres:
    pghost: db.internal
    pgport: 5433
    pgdatabase: shop
    pguser: reader
    pgpassword: hunter2
    pgschema: sales
    max_records: 10000
warehouse:
    backend: clickhouse
    clickhouse_host: ch.internal
    clickhouse_database: analytics
    clickhouse_user: loader
    clickhouse_password: s3cret
    clickhouse_secure: true
tables:
    - accounts
    - users:
        reload: true
    - orders:
        last_modified: updated_at
    - shoppers:
        last_modified: update_time
        reload: [sun, thur]
    - invoices:
        reload: 15
    - original_orders:
        skip: true
    - public.audit:
        partition_by: day
"#;

fn parse(toml: &str) -> crate::config::Config {
    crate::config::Config::from_toml(toml, std::path::Path::new("out.toml"), &[("", ""); 0])
        .unwrap_or_else(|e| panic!("{e}\n{toml}"))
}

#[test]
fn every_table_form_becomes_a_strategy_and_the_config_loads() {
    let c = convert(README_EXAMPLE).unwrap();
    let config = parse(&c.toml);
    assert_eq!(
        config.source.url.0,
        "postgresql://reader@db.internal:5433/shop"
    );
    assert_eq!(config.source.max_records, Some(10_000));
    assert_eq!(
        config.destination.url.0,
        "clickhouses://loader@ch.internal:8443/analytics"
    );
    let by = |name: &str| config.tables.iter().find(|t| t.source == name).unwrap();
    use crate::config::Strategy;
    assert_eq!(by("sales.accounts").strategy, Some(Strategy::NewRows));
    assert_eq!(by("sales.users").strategy, Some(Strategy::Reload));
    let orders = by("sales.orders");
    assert_eq!(orders.strategy, Some(Strategy::Modified));
    assert_eq!(orders.modified_column.as_deref(), Some("updated_at"));
    let shoppers = by("sales.shoppers");
    assert_eq!(shoppers.modified_column.as_deref(), Some("update_time"));
    assert_eq!(
        shoppers.reload_on,
        [
            ReloadDay::Weekday("sun".into()),
            ReloadDay::Weekday("thu".into())
        ]
    );
    assert_eq!(by("sales.invoices").reload_on, [ReloadDay::MonthDay(15)]);
    assert_eq!(by("sales.original_orders").strategy, Some(Strategy::Skip));
    assert!(config.tables.iter().any(|t| t.source == "public.audit"));
    // Secrets stay out of the file; what has no counterpart is named.
    assert!(
        !c.toml.contains("hunter2") && !c.toml.contains("s3cret"),
        "{}",
        c.toml
    );
    let notes = c.notes.join("\n");
    for said in [
        "pgpassword",
        "CDC_SOURCE_PASSWORD",
        "clickhouse_password",
        "tables.public.audit.partition_by",
    ] {
        assert!(notes.contains(said), "{said}: {notes}");
    }
}

#[test]
fn missing_credentials_are_left_to_the_environment_and_snowflake_is_carried_over() {
    let c = convert(
        "warehouse:\n  backend: snowflake\n  snowsql_account: myorg-x\n  snowsql_user: loader\n  \
         snowsql_database: ANALYTICS\n  snowsql_warehouse: WH\n  snowsql_pwd: secret\ntables:\n  - users\n",
    )
    .unwrap();
    assert!(
        c.toml.contains("# url left out: taken from PGHOST"),
        "{}",
        c.toml
    );
    assert!(
        c.toml
            .contains("url = \"snowflake://loader@myorg-x/ANALYTICS/PUBLIC?warehouse=WH\""),
        "{}",
        c.toml
    );
    assert!(!c.toml.contains("secret"), "{}", c.toml);
    assert!(
        c.notes.iter().any(|n| n.contains("snowsql_pwd")),
        "{:?}",
        c.notes
    );
    let env = [("PGHOST", "h"), ("PGDATABASE", "d")];
    let config =
        crate::config::Config::from_toml(&c.toml, std::path::Path::new("o"), &env).unwrap();
    assert_eq!(config.tables[0].source, "public.users");
    assert_eq!(
        crate::destination::registry::driver_of(&config.destination.url.0).map(|d| d.name()),
        Ok("snowflake")
    );
    assert!(crate::destination::registry::problems(&config).is_empty());
    let env_only = convert("warehouse:\n  backend: snowflake\ntables: [a]\n").unwrap();
    assert!(
        env_only.toml.contains("taken from SNOWSQL_ACCOUNT"),
        "{}",
        env_only.toml
    );
    let duck = convert("warehouse:\n  duckdb_path: w.duckdb\ntables: [a]\n").unwrap();
    assert!(
        duck.toml.contains("url = \"duckdb:w.duckdb\""),
        "{}",
        duck.toml
    );
}

#[test]
fn bad_files_say_what_is_wrong() {
    assert!(convert("tables: [a")
        .unwrap_err()
        .contains("not valid YAML"));
    assert!(convert("- just\n- a list\n")
        .unwrap_err()
        .contains("not a pgwarehouse config"));
    let c = convert("tables:\n  - a:\n      reload: [someday, 40]\n").unwrap();
    assert_eq!(c.notes.len(), 2, "{:?}", c.notes);
    let none = convert("postgres:\n  pghost: h\n").unwrap();
    assert!(
        none.notes.iter().any(|n| n.contains("none listed")),
        "{:?}",
        none.notes
    );
}
