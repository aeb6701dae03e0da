//! ClickHouse pieces against a real ClickHouse 26.9 (the chdb-core wheel, started by
//! `cdc::destination::clickhouse::local`): the HTTP client, the versioned tables and their FINAL view —
//! replays deduplicated, versions (not arrival order) deciding, deletes hidden, a deleted key
//! inserted again — every mapped type accepted, and clear errors.

use std::sync::OnceLock;

use bytes::Bytes;
use cdc::destination::clickhouse::ddl::{create_table, Names};
use cdc::destination::clickhouse::http::Client;
use cdc::destination::clickhouse::local::LocalClickHouse;
use cdc::destination::clickhouse::ClickHouseUrl;
use cdc::model::schema::TableName;
use cdc::model::schema::{ColumnDef, TableSchema};

use crate::harness::unique;

pub(crate) fn server() -> &'static LocalClickHouse {
    static SERVER: OnceLock<LocalClickHouse> = OnceLock::new();
    SERVER.get_or_init(|| LocalClickHouse::start().expect("start a local ClickHouse"))
}

fn client(database: &str) -> Client {
    Client::new(ClickHouseUrl::parse(&server().url(database)).unwrap()).unwrap()
}

fn table(name: &str, columns: &[(&str, &str, bool, usize)], key: &[&str]) -> TableSchema {
    TableSchema {
        name: TableName::parse(name).unwrap(),
        oid: 1,
        columns: columns
            .iter()
            .map(|(n, t, not_null, dims)| ColumnDef {
                name: (*n).into(),
                type_sql: (*t).into(),
                type_oid: 0,
                not_null: *not_null,
                dims: *dims,
                generated: None,
            })
            .collect(),
        primary_key: key.iter().map(|k| (*k).to_owned()).collect(),
        key_include: Vec::new(),
        replica_identity: 'd',
        indexes: Vec::new(),
        estimated_rows: 0,
        pages: 0,
        partitioned: false,
        leaves: Vec::new(),
    }
}

async fn text(c: &Client, sql: &str) -> String {
    let out = c.query(sql).await.unwrap_or_else(|e| panic!("{sql}: {e}"));
    String::from_utf8(out.to_vec()).unwrap()
}

#[tokio::test]
async fn versions_decide_replays_dedupe_and_deletes_hide() {
    let db = unique("ch_versions");
    let admin = client("default");
    let orders = table(
        "public.orders",
        &[
            ("id", "bigint", true, 0),
            ("note", "text", false, 0),
            ("total", "numeric(12,2)", false, 0),
        ],
        &["id"],
    );
    let names = Names::of(&db, &orders.name);
    for sql in create_table(&names, &orders, None) {
        admin
            .query(&sql)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
    }
    let c = client(&db);
    let insert = format!("INSERT INTO `{}` FORMAT TSV", names.storage);
    let send = |rows: &'static str| {
        let c = c.clone();
        let insert = insert.clone();
        async move {
            c.insert(&insert, Bytes::from_static(rows.as_bytes()))
                .await
                .unwrap()
        }
    };
    // Versions as (commit LSN << 16) | order inside the transaction: 655360 = LSN 10, first
    // change; 655361 its second; 720896 = LSN 11; 786432 = LSN 12; 851968 = LSN 13.
    send("1\ta\t1.50\t655360\t0\n1\tb\t2.00\t655361\t0\n2\tc\t\\N\t655362\t0\n").await;
    send("2\t\\N\t\\N\t720896\t1\n3\tx\t3.00\t720897\t0\n").await;
    let view = format!(
        "SELECT id, note, total FROM `{}` ORDER BY id FORMAT TSV",
        names.view
    );
    assert_eq!(text(&c, &view).await, "1\tb\t2.00\n3\tx\t3.00\n");
    // A re-delivered older change arrives after the newer one: its lower version loses.
    send("1\ta\t1.50\t655360\t0\n2\tc\t\\N\t655362\t0\n").await;
    assert_eq!(text(&c, &view).await, "1\tb\t2.00\n3\tx\t3.00\n");
    // A replay of the same changes (same versions) leaves one row per key.
    send("1\tb\t2.00\t655361\t0\n3\tx\t3.00\t720897\t0\n").await;
    assert_eq!(text(&c, &view).await, "1\tb\t2.00\n3\tx\t3.00\n");
    // Deleted, then inserted again under a later version; the tombstone re-delivered after.
    send("3\t\\N\t\\N\t786432\t1\n").await;
    send("3\ty\t4.00\t851968\t0\n").await;
    send("3\t\\N\t\\N\t786432\t1\n").await;
    assert_eq!(text(&c, &view).await, "1\tb\t2.00\n3\ty\t4.00\n");
    // Merges change nothing the view shows.
    c.query(&format!("OPTIMIZE TABLE `{}` FINAL", names.storage))
        .await
        .unwrap();
    assert_eq!(text(&c, &view).await, "1\tb\t2.00\n3\ty\t4.00\n");
}

#[tokio::test]
async fn every_mapped_type_is_accepted_and_other_schemas_get_their_prefix() {
    let db = unique("ch_types");
    let admin = client("default");
    let t = table(
        "sales.everything",
        &[
            ("id", "bigint", true, 0),
            ("s", "smallint", false, 0),
            ("i", "integer", false, 0),
            ("r", "real", false, 0),
            ("d", "double precision", false, 0),
            ("n", "numeric(76,10)", false, 0),
            ("u", "numeric", false, 0),
            ("b", "boolean", false, 0),
            ("day", "date", false, 0),
            ("ts", "timestamp without time zone", false, 0),
            ("tz", "timestamp with time zone", false, 0),
            ("id2", "uuid", false, 0),
            ("j", "jsonb", false, 0),
            ("raw", "bytea", false, 0),
            ("a", "integer[]", true, 1),
            ("a2", "text[]", false, 1),
            ("mood", "public.mood", false, 0),
        ],
        &["id"],
    );
    let names = Names::of(&db, &t.name);
    assert_eq!(names.view, "sales_everything");
    for sql in create_table(&names, &t, None) {
        admin
            .query(&sql)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
    }
    let c = client(&db);
    c.insert(
        &format!("INSERT INTO `{}` FORMAT TSV", names.storage),
        Bytes::from_static(
            b"1\t-32768\t2147483647\t1.5\t0.5657108450925572\t123456789012345678901234567890123456789012345678901234567890123456.0123456789\t1e400\ttrue\t2299-12-31\t1900-01-01 00:00:00.000001\t2024-06-16 20:14:09.221838\ta0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11\t{\"k\": [1]}\t\\\\x00ff\t{1,NULL,3}\t{a,\"b c\"}\thappy\t1\t0\n",
        ),
    )
    .await
    .unwrap();
    assert_eq!(
        text(&c, &format!("SELECT * FROM `{}` FORMAT TSV", names.view)).await,
        "1\t-32768\t2147483647\t1.5\t0.5657108450925572\t123456789012345678901234567890123456789012345678901234567890123456.0123456789\t1e400\ttrue\t2299-12-31\t1900-01-01 00:00:00.000001\t2024-06-16 20:14:09.221838\ta0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11\t{\"k\": [1]}\t\\\\x00ff\t{1,NULL,3}\t{a,\"b c\"}\thappy\n"
    );
}

#[tokio::test]
async fn bad_databases_users_and_servers_get_clear_errors() {
    let e = client("no_such_db")
        .query("SELECT 1")
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("ClickHouse refused") && e.contains("no_such_db"),
        "{e}"
    );
    let mut url = ClickHouseUrl::parse(&server().url("default")).unwrap();
    url.user = "nobody".into();
    let e = Client::new(url)
        .unwrap()
        .query("SELECT 1")
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("nobody"), "{e}");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url =
        ClickHouseUrl::parse(&format!("clickhouse://default@127.0.0.1:{port}/default")).unwrap();
    let e = Client::new(url)
        .unwrap()
        .query("SELECT 1")
        .await
        .unwrap_err();
    assert!(
        e.is_transient(),
        "a server that is down is worth retrying: {e}"
    );
    assert!(
        e.to_string().contains("cannot connect to ClickHouse"),
        "{e}"
    );
}

#[tokio::test]
async fn postgres_copy_text_round_trips_through_clickhouse() {
    use futures_util::StreamExt;
    let (db, sql) = crate::harness::source_with(
        "ch_copy",
        "CREATE TABLE t (id bigint PRIMARY KEY, b boolean, s smallint, r real, d double precision,
             n numeric(20,6), u numeric, day date, ts timestamp, tz timestamptz, id2 uuid, j jsonb,
             raw bytea, arr int[], txt text, v varchar(10));
         INSERT INTO t VALUES
           (1, true, -5, 1.5, 'Infinity', 12345.678901, 'NaN', '2299-12-31', '1900-01-01 00:00:00.000001',
            '2024-06-16 23:14:09.221838+03', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', '{\"k\": [1, \"x\"]}',
            '\\x00ff', '{1,NULL,3}', E'tab\\there\\nnew \\\\ back\\x0bv', 'é'),
           (2, NULL, NULL, NULL, 0.1, NULL, 1e-30, NULL, NULL, NULL, NULL, NULL, NULL, NULL, '', NULL);",
    )
    .await;
    let _ = db;
    cdc::source::postgres::catalog::prepare_session(&sql)
        .await
        .unwrap();
    let schema =
        cdc::source::postgres::catalog::read_table(&sql, &TableName::parse("public.t").unwrap())
            .await
            .unwrap()
            .unwrap();
    let copy = |query: &'static str| {
        let sql = &sql;
        async move {
            let stream = sql.copy_out(query).await.unwrap();
            let mut stream = std::pin::pin!(stream);
            let mut bytes = Vec::new();
            while let Some(chunk) = stream.next().await {
                bytes.extend_from_slice(&chunk.unwrap());
            }
            bytes
        }
    };
    let rows = copy("COPY public.t TO STDOUT").await;
    let fields = cdc::destination::clickhouse::tsv::fields(&schema);
    let mut tsv = Vec::new();
    let n =
        cdc::destination::clickhouse::tsv::convert(&rows, &fields, b"\t1\t0", &mut tsv).unwrap();
    assert_eq!(n, 2);
    let ch_db = unique("ch_copy");
    let names = Names::of(&ch_db, &schema.name);
    let admin = client("default");
    for stmt in create_table(&names, &schema, None) {
        admin
            .query(&stmt)
            .await
            .unwrap_or_else(|e| panic!("{stmt}: {e}"));
    }
    let c = client(&ch_db);
    c.insert(
        &format!("INSERT INTO `{}` FORMAT TSV", names.storage),
        Bytes::from(tsv),
    )
    .await
    .unwrap();
    assert_eq!(
        text(&c, &format!("SELECT * FROM `{}` ORDER BY id FORMAT TSV", names.view)).await,
        "1\ttrue\t-5\t1.5\tinf\t12345.678901\tNaN\t2299-12-31\t1900-01-01 00:00:00.000001\t\
         2024-06-16 20:14:09.221838\ta0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11\t{\"k\": [1, \"x\"]}\t\
         \\\\x00ff\t{1,NULL,3}\ttab\\there\\nnew \\\\ back\x0bv\té\n\
         2\t\\N\t\\N\t\\N\t0.1\t\\N\t0.000000000000000000000000000001\t\\N\t\\N\t\\N\t\\N\t\\N\t\\N\t\\N\t\t\\N\n"
    );
    // Out of ClickHouse's range: refused with the column, never clamped.
    sql.batch_execute("INSERT INTO public.t (id, day) VALUES (3, '1850-01-01')")
        .await
        .unwrap();
    let rows = copy("COPY (SELECT * FROM public.t WHERE id = 3) TO STDOUT").await;
    let e = cdc::destination::clickhouse::tsv::convert(&rows, &fields, b"\t1\t0", &mut Vec::new())
        .unwrap_err();
    assert!(e.contains("column day") && e.contains("1850-01-01"), "{e}");
}

#[tokio::test]
async fn the_snapshot_loader_streams_a_copy_as_one_insert_and_abandons_a_bad_one() {
    use cdc::destination::clickhouse::load::ClickHouseLoader;
    use cdc::destination::{Loader, SnapshotTable};
    use std::sync::atomic::AtomicU64;
    let (db, sql) = crate::harness::source_with(
        "ch_load",
        "CREATE TABLE big (id bigint PRIMARY KEY, v text, t timestamptz NOT NULL, ok boolean);
         INSERT INTO big SELECT g, repeat(E'x\\t', g % 50), '2024-01-01'::timestamptz + g * interval '1 second',
             g % 2 = 0 FROM generate_series(1, 200000) g;
         CREATE TABLE bad (id bigint PRIMARY KEY, day date);
         INSERT INTO bad SELECT g, '2024-01-01' FROM generate_series(1, 1000) g;
         INSERT INTO bad VALUES (1001, '1850-06-01');",
    )
    .await;
    cdc::source::postgres::catalog::prepare_session(&sql)
        .await
        .unwrap();
    let ch_db = unique("ch_load");
    let admin = client("default");
    let mut schemas = Vec::new();
    for name in ["public.big", "public.bad"] {
        let schema =
            cdc::source::postgres::catalog::read_table(&sql, &TableName::parse(name).unwrap())
                .await
                .unwrap()
                .unwrap();
        for stmt in create_table(&Names::of(&ch_db, &schema.name), &schema, None) {
            admin.query(&stmt).await.unwrap();
        }
        schemas.push(schema);
    }
    let mut loader = ClickHouseLoader::new(client(&ch_db), None);
    let bytes = AtomicU64::new(0);
    let mut src = cdc::source::postgres::copy_out::CopySource::connect(&db)
        .await
        .unwrap();
    let target = SnapshotTable {
        schema: &schemas[0],
        destination: &schemas[0].name,
    };
    let n = loader
        .load(
            &mut src,
            "COPY (SELECT id, v, t, ok FROM public.big) TO STDOUT",
            &target,
            &bytes,
        )
        .await
        .unwrap();
    assert_eq!(n, 200_000);
    let c = client(&ch_db);
    let pg: (i64, i64, i64) = {
        let r = sql
            .query_one(
                "SELECT sum(id)::int8, sum(length(v))::int8, count(*) FILTER (WHERE ok) FROM public.big",
                &[],
            )
            .await
            .unwrap();
        (r.get(0), r.get(1), r.get(2))
    };
    assert_eq!(
        text(
            &c,
            "SELECT count(), sum(id), sum(length(v)), countIf(ok) FROM big FORMAT TSV"
        )
        .await,
        format!("200000\t{}\t{}\t{}\n", pg.0, pg.1, pg.2)
    );
    assert_eq!(
        text(&c, "SELECT toString(t) FROM big WHERE id = 3600 FORMAT TSV").await,
        "2024-01-01 01:00:00.000000\n"
    );
    // A value ClickHouse cannot hold stops the load naming it; the INSERT is abandoned.
    let mut src = cdc::source::postgres::copy_out::CopySource::connect(&db)
        .await
        .unwrap();
    let target = SnapshotTable {
        schema: &schemas[1],
        destination: &schemas[1].name,
    };
    let e = loader
        .load(
            &mut src,
            "COPY (SELECT id, day FROM public.bad ORDER BY id) TO STDOUT",
            &target,
            &bytes,
        )
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("column day") && e.contains("1850-06-01"), "{e}");
    assert_eq!(text(&c, "SELECT count() FROM bad FORMAT TSV").await, "0\n");
}

/// A TLS endpoint in front of the local ClickHouse (its embedded server listens on HTTP only),
/// with a certificate for "localhost" from a CA of its own; returns the port and the CA file.
async fn tls_front(dir: &std::path::Path) -> (u16, std::path::PathBuf) {
    use std::sync::Arc;
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = rcgen::CertifiedIssuer::self_signed(ca_params, rcgen::KeyPair::generate().unwrap())
        .unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["localhost".to_string()])
        .unwrap()
        .signed_by(&key, &*ca)
        .unwrap();
    let ca_file = dir.join("ch-ca.pem");
    std::fs::write(&ca_file, ca.pem()).unwrap();
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(
        vec![cert.der().clone()],
        rustls_pki_types::PrivateKeyDer::Pkcs8(key.serialize_der().into()),
    )
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let upstream = server().port();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let mut plain = tokio::net::TcpStream::connect(("127.0.0.1", upstream))
                    .await
                    .unwrap();
                let _ = tokio::io::copy_bidirectional(&mut tls, &mut plain).await;
            });
        }
    });
    (port, ca_file)
}

#[tokio::test]
async fn clickhouses_urls_speak_tls_and_verify_the_server() {
    let dir = crate::harness::scratch().join(unique("ch_tls"));
    std::fs::create_dir_all(&dir).unwrap();
    let (port, ca) = tls_front(&dir).await;
    for url in [
        format!(
            "clickhouses://default@localhost:{port}/default?sslrootcert={}",
            ca.display()
        ),
        format!(
            "clickhouse://default@localhost:{port}/default?secure=true&sslrootcert={}",
            ca.display()
        ),
    ] {
        let c = Client::new(ClickHouseUrl::parse(&url).unwrap()).unwrap();
        assert_eq!(text(&c, "SELECT 'over tls' FORMAT TSV").await, "over tls\n");
    }
    // Another CA (the system's roots): the certificate is refused, nothing is sent.
    let c = Client::new(
        ClickHouseUrl::parse(&format!("clickhouses://default@localhost:{port}/default")).unwrap(),
    )
    .unwrap();
    let e = c.query("SELECT 1").await.unwrap_err();
    let mut chain = e.to_string();
    let mut cause = std::error::Error::source(&e);
    while let Some(c) = cause {
        chain.push_str(&format!(": {c}"));
        cause = c.source();
    }
    assert!(
        chain.contains("TLS") && chain.contains("certificate"),
        "{chain}"
    );
    // Plain HTTP to the TLS port fails too, clearly.
    let c = Client::new(
        ClickHouseUrl::parse(&format!("clickhouse://default@localhost:{port}/default")).unwrap(),
    )
    .unwrap();
    assert!(c.query("SELECT 1").await.is_err());
    let _ = std::fs::remove_dir_all(&dir);
}
