//! TLS on both connection kinds against a server whose certificate is issued for "localhost".

use std::path::Path;

use cdc::conninfo::{ChannelBinding, ConnInfo, SslMode};
use cdc::source::postgres::replication::ReplicationClient;

use crate::harness::{servers, source_db};

fn with_tls(base: &ConnInfo, host: &str, mode: SslMode, root: Option<&Path>) -> ConnInfo {
    let mut c = base.clone();
    c.host = host.into();
    c.sslmode = mode;
    c.sslrootcert = root.map(Path::to_path_buf);
    c
}

/// Whether the server sees this session as encrypted.
async fn server_says_tls(repl: &mut ReplicationClient) -> bool {
    let rows = repl
        .simple_query("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
        .await
        .unwrap();
    rows[0][0].as_deref() == Some("t")
}

#[tokio::test]
async fn verify_full_accepts_the_named_host_and_rejects_another_name() {
    let db = source_db("tls_full").await;
    let ca = &servers().ca_file;
    let mut ok =
        ReplicationClient::connect(&with_tls(&db, "localhost", SslMode::VerifyFull, Some(ca)))
            .await
            .unwrap();
    assert!(ok.is_tls());
    assert!(server_says_tls(&mut ok).await);
    // The certificate names "localhost", not "127.0.0.1".
    let err =
        ReplicationClient::connect(&with_tls(&db, "127.0.0.1", SslMode::VerifyFull, Some(ca)))
            .await
            .err()
            .unwrap();
    assert!(format!("{err:#?}").contains("NotValidForName"), "{err:#?}");
    assert!(
        !format!("{err:?}").contains(servers().source.password()),
        "no password in errors"
    );
}

#[tokio::test]
async fn verify_ca_checks_the_chain_but_not_the_name() {
    let db = source_db("tls_ca").await;
    let mut ok = ReplicationClient::connect(&with_tls(
        &db,
        "127.0.0.1",
        SslMode::VerifyCa,
        Some(&servers().ca_file),
    ))
    .await
    .unwrap();
    assert!(server_says_tls(&mut ok).await);
    let err = ReplicationClient::connect(&with_tls(
        &db,
        "127.0.0.1",
        SslMode::VerifyCa,
        Some(&servers().other_ca_file),
    ))
    .await
    .err()
    .unwrap();
    assert!(format!("{err:#?}").contains("UnknownIssuer"), "{err:#?}");
}

#[tokio::test]
async fn require_encrypts_without_a_root_certificate_and_verify_needs_one() {
    let db = source_db("tls_req").await;
    let mut ok = ReplicationClient::connect(&with_tls(&db, "127.0.0.1", SslMode::Require, None))
        .await
        .unwrap();
    assert!(server_says_tls(&mut ok).await);
    let mut plain = ReplicationClient::connect(&with_tls(&db, "127.0.0.1", SslMode::Disable, None))
        .await
        .unwrap();
    assert!(!plain.is_tls());
    assert!(!server_says_tls(&mut plain).await);
    let err = ReplicationClient::connect(&with_tls(&db, "127.0.0.1", SslMode::VerifyFull, None))
        .await
        .err()
        .unwrap();
    assert!(
        err.to_string().contains("TLS setup") && format!("{err:#?}").contains("MissingRootCert"),
        "{err:#?}"
    );
}

#[tokio::test]
async fn require_fails_clearly_when_the_server_has_no_tls() {
    let info = with_tls(
        &servers().destination.conninfo("postgres"),
        "127.0.0.1",
        SslMode::Require,
        None,
    );
    let err = ReplicationClient::connect(&info).await.err().unwrap();
    assert!(err.to_string().contains("does not accept TLS"), "{err}");
    // prefer falls back to plain text, as libpq does.
    let prefer = with_tls(
        &servers().destination.conninfo("postgres"),
        "127.0.0.1",
        SslMode::Prefer,
        None,
    );
    assert!(!ReplicationClient::connect(&prefer).await.unwrap().is_tls());
}

#[tokio::test]
async fn sql_connections_use_the_same_tls_policy() {
    let db = source_db("tls_sql").await;
    let client = cdc::pg::connect(&with_tls(
        &db,
        "localhost",
        SslMode::VerifyFull,
        Some(&servers().ca_file),
    ))
    .await
    .unwrap();
    let ssl: bool = client
        .query_one(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(ssl);
    let err = cdc::pg::connect(&with_tls(
        &db,
        "127.0.0.1",
        SslMode::VerifyFull,
        Some(&servers().other_ca_file),
    ))
    .await
    .err();
    assert!(err.is_some(), "an untrusted CA must be refused");
}

#[tokio::test]
async fn sql_connections_over_a_unix_socket_never_attempt_tls() {
    // libpq does not use TLS on Unix sockets; the default sslmode (prefer) must simply connect.
    let db = source_db("tls_unix").await;
    let url = format!(
        "host={} port={} user={} dbname={}",
        servers().source.socket_dir().display(),
        servers().source.port(),
        db.user,
        db.dbname
    );
    let info = cdc::conninfo::ConnInfo::parse(&url).unwrap();
    assert_eq!(info.sslmode, SslMode::Prefer);
    let client = cdc::pg::connect(&info)
        .await
        .expect("connect over the socket");
    let one: i32 = client.query_one("SELECT 1", &[]).await.unwrap().get(0);
    assert_eq!(one, 1);
}

#[tokio::test]
async fn channel_binding_ties_scram_to_the_tls_session_on_both_connection_kinds() {
    let db = source_db("tls_bind").await;
    let mut bound = with_tls(&db, "127.0.0.1", SslMode::Require, None);
    bound.channel_binding = ChannelBinding::Require;
    // `require` only succeeds if the server accepted our tls-server-end-point binding data.
    let mut repl = ReplicationClient::connect(&bound)
        .await
        .expect("replication connection with channel binding");
    assert!(server_says_tls(&mut repl).await);
    let sql = cdc::pg::connect(&bound)
        .await
        .expect("SQL connection with channel binding");
    let one: i32 = sql.query_one("SELECT 1", &[]).await.unwrap().get(0);
    assert_eq!(one, 1);

    // Without TLS there is nothing to bind to: `require` refuses, with the reason.
    let mut plain = with_tls(&db, "127.0.0.1", SslMode::Disable, None);
    plain.channel_binding = ChannelBinding::Require;
    let err = ReplicationClient::connect(&plain).await.err().unwrap();
    let text = format!("{err:#}");
    assert!(
        text.contains("channel_binding=require") && text.contains("needs TLS"),
        "{text}"
    );
    assert!(
        cdc::pg::connect(&plain).await.is_err(),
        "the SQL connection refuses too"
    );
    // `prefer` (the default) still connects without TLS.
    plain.channel_binding = ChannelBinding::Prefer;
    ReplicationClient::connect(&plain).await.unwrap();
}
