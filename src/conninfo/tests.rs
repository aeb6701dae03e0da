//! Connection strings and libpq's conventions for what they leave out.

use super::*;

#[test]
fn libpq_strings_are_told_from_other_schemes() {
    for yes in [
        "",
        "  ",
        "postgresql://h/db",
        "postgres://u@h",
        "host=h dbname=d",
        "host=::1 port=5",
    ] {
        assert!(is_connection_string(yes), "{yes:?}");
    }
    for no in [
        "duckdb:a.duckdb",
        "clickhouse://h/d",
        "snowflake://u@a/D/S",
        "sqlite:x",
        "mysql://h",
    ] {
        assert!(!is_connection_string(no), "{no:?}");
    }
}

#[test]
fn channel_binding_takes_libpqs_values() {
    assert_eq!(
        ConnInfo::parse("host=h").unwrap().channel_binding,
        ChannelBinding::Prefer
    );
    assert_eq!(
        ConnInfo::parse("postgresql://u@h/d?channel_binding=require")
            .unwrap()
            .channel_binding,
        ChannelBinding::Require
    );
    assert!(matches!(
        ConnInfo::parse("host=h channel_binding=always"),
        Err(ConnInfoError::InvalidValue { key, .. }) if key == "channel_binding"
    ));
}

#[test]
fn parses_a_full_url() {
    let c = ConnInfo::parse("postgresql://app%40corp:p%2Fw@db.example:6432/sales?sslmode=verify-full&sslrootcert=/ca.pem&connect_timeout=7").unwrap();
    assert_eq!(c.user, "app@corp");
    assert_eq!(c.password.as_ref().unwrap().expose(), "p/w");
    assert_eq!(
        (c.host.as_str(), c.port, c.dbname.as_str()),
        ("db.example", 6432, "sales")
    );
    assert_eq!(c.sslmode, SslMode::VerifyFull);
    assert_eq!(c.sslrootcert, Some(PathBuf::from("/ca.pem")));
    assert_eq!(c.connect_timeout, Some(Duration::from_secs(7)));
}

#[test]
fn parses_ipv6_and_defaults() {
    let c = ConnInfo::parse("postgres://u@[::1]/").unwrap();
    assert_eq!(
        (c.host.as_str(), c.port, c.dbname.as_str()),
        ("::1", 5432, "u")
    );
    assert_eq!(c.sslmode, SslMode::Prefer);
    assert_eq!(c.to_string(), "postgresql://u@[::1]:5432/u?sslmode=prefer");
}

#[test]
fn parses_key_value_strings_with_quotes() {
    let c = ConnInfo::parse(r"host=/tmp port = 5433 user=bob password='it\'s a secret' dbname=x")
        .unwrap();
    assert!(c.is_unix_socket());
    assert_eq!(c.port, 5433);
    assert_eq!(c.password.unwrap().expose(), "it's a secret");
}

#[test]
fn never_prints_the_password() {
    let c = ConnInfo::parse("postgresql://u:hunter2@h/d").unwrap();
    assert!(!format!("{c}").contains("hunter2"));
    assert!(!format!("{c:?}").contains("hunter2"));
    assert!(!format!("{:?}", c.password).contains("hunter2"));
}

#[test]
fn rejects_bad_input_with_named_problems() {
    assert_eq!(
        ConnInfo::parse("hots=x"),
        Err(ConnInfoError::UnknownParameter("hots".into()))
    );
    assert!(
        matches!(ConnInfo::parse("sslmode=verify"), Err(ConnInfoError::InvalidValue { key, .. }) if key == "sslmode")
    );
    assert!(
        matches!(ConnInfo::parse("postgresql://h:notaport/d"), Err(ConnInfoError::InvalidValue { key, .. }) if key == "port")
    );
    assert!(matches!(
        ConnInfo::parse("host='unterminated"),
        Err(ConnInfoError::Malformed(_))
    ));
    assert!(matches!(
        ConnInfo::parse("host=a,b,c port=1,2"),
        Err(ConnInfoError::InvalidValue { key, .. }) if key == "port"
    ));
    assert!(matches!(
        ConnInfo::parse("target_session_attrs=leader"),
        Err(ConnInfoError::InvalidValue { key, .. }) if key == "target_session_attrs"
    ));
    // An error about a URL never echoes the password back.
    let e = ConnInfo::parse("postgresql://u:s3cret@h/d?bogus=1").unwrap_err();
    assert!(!e.to_string().contains("s3cret"));
}

/// A place of its own for a test's files, removed when dropped.
struct Dir(PathBuf);

impl Dir {
    fn new(name: &str) -> Dir {
        let d = std::env::temp_dir().join(format!("cdc-conninfo-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        Dir(d)
    }

    fn file(&self, name: &str, text: &str) -> String {
        let f = self.0.join(name);
        std::fs::write(&f, text).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o600)).unwrap();
        }
        f.display().to_string()
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn libpq_variables_fill_only_what_the_string_leaves_out() {
    let env = [
        ("PGHOST", "db.internal"),
        ("PGPORT", "6432"),
        ("PGDATABASE", "app"),
        ("PGUSER", "reader"),
        ("PGPASSWORD", "pgsecret"),
        ("PGSSLMODE", "verify-full"),
        ("PGSSLROOTCERT", "/ca.pem"),
        ("PGAPPNAME", "nightly"),
        ("PGCONNECT_TIMEOUT", "7"),
        ("PGTARGETSESSIONATTRS", "read-write"),
    ];
    let c = ConnInfo::parse_in("", &env).unwrap();
    assert_eq!(
        (c.host.as_str(), c.port, c.dbname.as_str(), c.user.as_str()),
        ("db.internal", 6432, "app", "reader")
    );
    assert_eq!(c.password.as_ref().map(Secret::expose), Some("pgsecret"));
    assert_eq!(
        (c.sslmode, c.sslrootcert.clone()),
        (SslMode::VerifyFull, Some("/ca.pem".into()))
    );
    assert_eq!(c.application_name.as_deref(), Some("nightly"));
    assert_eq!(c.connect_timeout, Some(Duration::from_secs(7)));
    assert_eq!(c.target_session_attrs, TargetSessionAttrs::ReadWrite);
    // `postgresql://` with fields missing: the URL's fields win, the rest come from the variables.
    let c = ConnInfo::parse_in("postgresql://other:urlpw@/sales?sslmode=disable", &env).unwrap();
    assert_eq!(
        (c.host.as_str(), c.port, c.dbname.as_str(), c.user.as_str()),
        ("db.internal", 6432, "sales", "other")
    );
    assert_eq!(c.password.as_ref().map(Secret::expose), Some("urlpw"));
    assert_eq!(c.sslmode, SslMode::Disable);
    // A bad variable is named.
    let e = ConnInfo::parse_in("host=h", &[("PGPORT", "x")])
        .unwrap_err()
        .to_string();
    assert!(e.contains("PGPORT"), "{e}");
    // Nothing anywhere: the operating-system user, its database, the default server.
    let c = ConnInfo::parse_in("", &[("USER", "me")]).unwrap();
    assert_eq!(
        (c.user.as_str(), c.dbname.as_str(), c.port),
        ("me", "me", 5432)
    );
}

#[test]
fn a_service_fills_what_the_string_leaves_out_before_the_variables() {
    let d = Dir::new("service");
    let file = d.file(
        "services",
        "[wh]\nhost=svc.internal\nport=7000\ndbname=warehouse\n",
    );
    let env = [
        ("PGSERVICEFILE", file.as_str()),
        ("PGHOST", "env.internal"),
        ("PGUSER", "u"),
    ];
    let c = ConnInfo::parse_in("service=wh dbname=mine", &env).unwrap();
    assert_eq!(
        (c.host.as_str(), c.port, c.dbname.as_str(), c.user.as_str()),
        ("svc.internal", 7000, "mine", "u")
    );
    let env = [("PGSERVICEFILE", file.as_str()), ("PGSERVICE", "wh")];
    assert_eq!(ConnInfo::parse_in("", &env).unwrap().host, "svc.internal");
    let e = ConnInfo::parse_in("service=nope", &env)
        .unwrap_err()
        .to_string();
    assert!(e.contains("no service \"nope\""), "{e}");
}

#[test]
fn the_password_file_answers_per_server_of_the_host_list() {
    let d = Dir::new("pgpass");
    let file = d.file(
        "pgpass",
        "a.internal:5432:app:u:pw-a\nb.internal:*:app:u:pw-b\n",
    );
    let env = [("PGPASSFILE", file.as_str())];
    let c = ConnInfo::parse_in(
        "postgresql://u@a.internal,b.internal:6000/app?target_session_attrs=read-write",
        &env,
    )
    .unwrap();
    assert_eq!(c.other_hosts, [("b.internal".to_owned(), 6000)]);
    assert_eq!(c.port, 5432, "a host without a port gets the default");
    let each: Vec<_> = c
        .candidates()
        .iter()
        .map(|o| {
            (
                o.host.clone(),
                o.port,
                o.password.as_ref().map(|p| p.expose().to_owned()),
            )
        })
        .collect();
    assert_eq!(
        each,
        [
            ("a.internal".to_owned(), 5432, Some("pw-a".to_owned())),
            ("b.internal".to_owned(), 6000, Some("pw-b".to_owned()))
        ]
    );
    assert!(
        c.to_string().contains("a.internal:5432,b.internal:6000"),
        "{c}"
    );
    // A password given wins over the file; PGPASSWORD too.
    let c = ConnInfo::parse_in("host=a.internal dbname=app user=u password=given", &env).unwrap();
    assert_eq!(
        c.candidates()[0].password.as_ref().map(Secret::expose),
        Some("given")
    );
    // One port for every host, or one each.
    let c = ConnInfo::parse_in("host=x,y port=7", &env).unwrap();
    assert_eq!((c.port, c.other_hosts[0].1), (7, 7));
}

#[test]
fn target_session_attrs_keep_the_servers_libpq_keeps() {
    let primary = ServerState {
        read_only: false,
        in_recovery: false,
    };
    let standby = ServerState {
        read_only: true,
        in_recovery: true,
    };
    use TargetSessionAttrs::*;
    assert!(ReadWrite.accepts(primary, 0) && !ReadWrite.accepts(standby, 0));
    assert!(Standby.accepts(standby, 0) && !Standby.accepts(primary, 0));
    assert!(Primary.accepts(primary, 0) && ReadOnly.accepts(standby, 0));
    assert!(!PreferStandby.accepts(primary, 0) && PreferStandby.accepts(primary, 1));
    assert_eq!((PreferStandby.rounds(), ReadWrite.rounds()), (2, 1));
    let params = |hot: &str, ro: &str| {
        std::collections::HashMap::from([
            ("in_hot_standby".to_owned(), hot.to_owned()),
            ("default_transaction_read_only".to_owned(), ro.to_owned()),
        ])
    };
    assert_eq!(ServerState::reported(&params("on", "off")), Some(standby));
    assert_eq!(ServerState::reported(&params("off", "off")), Some(primary));
    assert_eq!(ServerState::reported(&Default::default()), None);
}
