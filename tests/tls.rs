//! TLS to both engines, for capture and apply, with certificates made here
//! (rcgen): `verify-full` replicates both ways over encrypted connections;
//! a certificate from another CA, or for another host name, is refused with
//! an error naming the store and the fix; `require` against a server
//! without TLS fails instead of falling back to plain TCP.

mod common;

use callosum::config::Config;
use callosum::testkit::{MariaDbServer, PgServer};
use callosum_api::{ConnectorError, ErrorKind, TlsMode, TlsSettings};
use callosum_mysql::{MySqlSink, MySqlSinkConfig, MySqlSource, MySqlSourceConfig};
use callosum_postgres::{PgSink, PgSinkConfig, PgSource, PgSourceConfig};
use common::schema::{create_plain_orders, PLAIN_ORDERS as ORDERS};
use common::TestPipeline;
use mysql_async::prelude::Queryable;
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair, SanType};
use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::sync::OnceLock;
use std::time::Duration;

/// A CA, a server certificate it signed for `db.callosum.test` and
/// 127.0.0.1 (not for `localhost`), and a second CA that signed nothing.
struct Pki {
    dir: tempfile::TempDir,
    server_cert: String,
    server_key: String,
}

impl Pki {
    fn new() -> Pki {
        let dir = tempfile::tempdir().unwrap();
        let ca = |name: &str| {
            let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
            params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
            params
                .distinguished_name
                .push(rcgen::DnType::CommonName, name);
            CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap()
        };
        let trusted = ca("callosum test CA");
        let other = ca("some other CA");
        let mut params = CertificateParams::new(vec!["db.callosum.test".to_string()]).unwrap();
        params
            .subject_alt_names
            .push(SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST)));
        let key = KeyPair::generate().unwrap();
        let server = params.signed_by(&key, &trusted).unwrap();
        std::fs::write(dir.path().join("ca.pem"), trusted.pem()).unwrap();
        std::fs::write(dir.path().join("other-ca.pem"), other.pem()).unwrap();
        std::fs::write(dir.path().join("server.crt"), server.pem()).unwrap();
        std::fs::write(dir.path().join("server.key"), key.serialize_pem()).unwrap();
        Pki {
            dir,
            server_cert: server.pem(),
            server_key: key.serialize_pem(),
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn ca(&self) -> PathBuf {
        self.path("ca.pem")
    }

    fn other_ca(&self) -> PathBuf {
        self.path("other-ca.pem")
    }
}

/// The certificates and the two servers with TLS on, once per test binary.
struct TlsServers {
    pki: Pki,
    pg: PgServer,
    mariadb: MariaDbServer,
}

fn servers() -> &'static TlsServers {
    static SERVERS: OnceLock<TlsServers> = OnceLock::new();
    SERVERS.get_or_init(|| {
        let pki = Pki::new();
        let pg = PgServer::start_with_files(
            &[
                ("ssl", "on"),
                ("ssl_cert_file", "server.crt"),
                ("ssl_key_file", "server.key"),
            ],
            &[
                ("server.crt", pki.server_cert.as_bytes()),
                ("server.key", pki.server_key.as_bytes()),
            ],
        )
        .expect("postgresql with tls");
        let mariadb = MariaDbServer::start(&[
            &format!("--ssl-cert={}", pki.path("server.crt").display()),
            &format!("--ssl-key={}", pki.path("server.key").display()),
            &format!("--ssl-ca={}", pki.ca().display()),
        ])
        .expect("mariadb with tls");
        TlsServers { pki, pg, mariadb }
    })
}

fn tls(mode: TlsMode, ca: Option<PathBuf>) -> TlsSettings {
    TlsSettings { mode, ca_file: ca }
}

fn pg_sink(url: &str, tls: TlsSettings) -> PgSinkConfig {
    PgSinkConfig {
        store: "crm".into(),
        url: url.into(),
        password: None,
        pipeline: "tls_probe".into(),
        tables: Vec::new(),
        tls,
        fence: Default::default(),
    }
}

fn pg_source(url: &str, tls: TlsSettings) -> PgSourceConfig {
    PgSourceConfig {
        store: "crm".into(),
        url: url.into(),
        password: None,
        slot: "callosum_tls_probe".into(),
        publication: "callosum_tls_probe".into(),
        tables: Vec::new(),
        echo_origins: Default::default(),
        confirmed_means_applied: true,
        tls,
    }
}

fn mysql_sink(url: &str, tls: TlsSettings) -> MySqlSinkConfig {
    MySqlSinkConfig {
        store: "erp".into(),
        url: url.into(),
        password: None,
        pipeline: "tls_probe".into(),
        tables: Vec::new(),
        time_zone: None,
        tls,
        fence: Default::default(),
    }
}

fn mysql_source(url: &str, tls: TlsSettings) -> MySqlSourceConfig {
    MySqlSourceConfig {
        store: "erp".into(),
        url: url.into(),
        password: None,
        server_id: common::unique_server_id(),
        tables: Vec::new(),
        zero_dates: Default::default(),
        time_zone: None,
        echo_origins: Default::default(),
        tls,
        dump_write_timeout: None,
    }
}

/// A refused connection: permanent, naming the store, with what to do.
fn assert_refused(err: &ConnectorError, store: &str, what: &str, fix: &str) {
    assert_eq!(err.kind, ErrorKind::ServerConfig, "{err}");
    assert!(!err.is_transient(), "{err}");
    let text = err.to_string();
    assert!(
        text.contains(&format!("`{store}`")),
        "names the store: {text}"
    );
    assert!(text.contains(what), "says what: {text}");
    assert!(text.contains(fix), "says the fix: {text}");
}

async fn pg_ssl_backends(db: &common::Databases) -> (i64, i64) {
    let row = db
        .pg
        .query_one(
            "SELECT count(*) FILTER (WHERE s.ssl), count(*) FILTER (WHERE NOT s.ssl)
               FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid)
              WHERE a.application_name = 'callosum'",
            &[],
        )
        .await
        .unwrap();
    (row.get(0), row.get(1))
}

async fn mariadb_ssl_accepts(db: &common::Databases) -> i64 {
    let rows = common::mysql_rows(&db.mysql, "SHOW GLOBAL STATUS LIKE 'Ssl_accepts'").await;
    rows[0][1].as_deref().unwrap().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelines_replicate_both_ways_over_verified_tls() {
    let servers = servers();
    let db = common::fresh_databases_on(&servers.pg, &servers.mariadb, "tls_e2e").await;
    create_plain_orders(&db).await;
    let accepts_before = mariadb_ssl_accepts(&db).await;
    let dir = tempfile::tempdir().unwrap();
    let ca = servers.pki.ca();
    let tls_keys = format!(
        "tls = \"verify-full\"\ntls_ca_file = \"{}\"\n",
        ca.display()
    );
    let toml = common::config_toml_with(
        &db,
        &dir.path().join("data"),
        &[
            TestPipeline {
                name: "crm_to_erp",
                from: "crm",
                to: "erp",
                tables: &["public.orders"],
            },
            TestPipeline {
                name: "erp_to_crm",
                from: "erp",
                to: "crm",
                tables: &["orders"],
            },
        ],
        "127.0.0.1:0",
    )
    .replacen("[stores.crm]\n", &format!("[stores.crm]\n{tls_keys}"), 1)
    .replacen("[stores.erp]\n", &format!("[stores.erp]\n{tls_keys}"), 1);
    let agent = callosum::agent::Agent::start(Config::from_toml(&toml).unwrap())
        .await
        .unwrap();
    common::wait_for_slot(&db).await;
    for id in 1..=20i64 {
        db.pg
            .execute(
                "INSERT INTO orders VALUES ($1, 1, 'from crm', 1.00, 'c')",
                &[&id],
            )
            .await
            .unwrap();
    }
    common::wait_for_binlog_capture(&db, 101).await;
    for id in 102..=120 {
        common::mysql_exec(
            &db.mysql,
            &format!("INSERT INTO orders VALUES ({id}, 1, 'from erp', 2.00, 'e')"),
        )
        .await;
    }
    common::wait_until_mirrored(&db, &[&ORDERS], Duration::from_secs(60)).await;
    let rows: i64 = db
        .pg
        .query_one("SELECT count(*) FROM orders", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(rows, 40);

    // every connection of the agent to PostgreSQL (catalog, replication,
    // sink) is encrypted, and MariaDB accepted its binlog and sink
    // connections over TLS
    let (encrypted, plain) = pg_ssl_backends(&db).await;
    assert!(
        encrypted >= 2,
        "replication and sink connections: {encrypted}"
    );
    assert_eq!(plain, 0, "no plain connection of the agent");
    assert!(
        mariadb_ssl_accepts(&db).await >= accepts_before + 2,
        "binlog and sink connections over tls"
    );
    agent.stop().await;
}

#[tokio::test]
async fn a_certificate_from_another_ca_is_refused_by_name() {
    let servers = servers();
    let db = common::fresh_databases_on(&servers.pg, &servers.mariadb, "tls_ca").await;
    let wrong = tls(TlsMode::VerifyFull, Some(servers.pki.other_ca()));
    let what = "not signed by a trusted CA";
    let fix = "tls_ca_file";
    let err = PgSink::connect(pg_sink(&db.pg_url, wrong.clone()))
        .await
        .unwrap_err();
    assert_refused(&err, "crm", what, fix);
    let err = PgSource::connect(pg_source(&db.pg_url, wrong.clone()), None)
        .await
        .unwrap_err();
    assert_refused(&err, "crm", what, fix);
    let err = MySqlSink::connect(mysql_sink(&db.mysql_url, wrong.clone()))
        .await
        .unwrap_err();
    assert_refused(&err, "erp", what, fix);
    let err = MySqlSource::connect(mysql_source(&db.mysql_url, wrong), None)
        .await
        .unwrap_err();
    assert_refused(&err, "erp", what, fix);
}

/// `verify-ca` on MariaDB/MySQL is refused by the config (mysql_async
/// cannot skip only the host-name check with this rustls), see
/// `src/config/tests.rs`.
#[tokio::test]
async fn a_certificate_for_another_host_is_refused_unless_only_the_ca_is_checked() {
    let servers = servers();
    let db = common::fresh_databases_on(&servers.pg, &servers.mariadb, "tls_name").await;
    // the certificate names db.callosum.test and 127.0.0.1, not localhost
    let pg_url = db.pg_url.replace("@127.0.0.1:", "@localhost:");
    let mysql_url = db.mysql_url.replace("@127.0.0.1:", "@localhost:");
    let ca = Some(servers.pki.ca());
    let full = tls(TlsMode::VerifyFull, ca.clone());
    let what = "not issued for the host name";
    let fix = "verify-ca";
    let err = PgSink::connect(pg_sink(&pg_url, full.clone()))
        .await
        .unwrap_err();
    assert_refused(&err, "crm", what, fix);
    let err = MySqlSink::connect(mysql_sink(&mysql_url, full))
        .await
        .unwrap_err();
    assert_refused(&err, "erp", what, fix);

    let ca_only = tls(TlsMode::VerifyCa, ca);
    PgSink::connect(pg_sink(&pg_url, ca_only))
        .await
        .expect("verify-ca accepts the CA's certificate for another name");
}

#[tokio::test]
async fn require_against_a_server_without_tls_fails_instead_of_falling_back() {
    // the shared servers have no TLS
    let db = common::fresh_databases("tls_none").await;
    let require = tls(TlsMode::Require, None);
    let what = "does not accept TLS";
    let fix = "ssl";
    let err = PgSink::connect(pg_sink(&db.pg_url, require.clone()))
        .await
        .unwrap_err();
    assert_refused(&err, "crm", what, fix);
    let err = PgSource::connect(pg_source(&db.pg_url, require.clone()), None)
        .await
        .unwrap_err();
    assert_refused(&err, "crm", what, fix);
    let err = MySqlSink::connect(mysql_sink(&db.mysql_url, require.clone()))
        .await
        .unwrap_err();
    assert_refused(&err, "erp", what, fix);
    let err = MySqlSource::connect(mysql_source(&db.mysql_url, require), None)
        .await
        .unwrap_err();
    assert_refused(&err, "erp", what, fix);

    // the replication connection on its own: asks for TLS, never goes on in clear
    let mut config: tokio_postgres::Config = db.pg_url.parse().unwrap();
    config.ssl_mode(tokio_postgres::config::SslMode::Require);
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let client_config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
    let err = callosum_postgres::replication::ReplicationClient::connect(
        &config,
        None,
        Some(std::sync::Arc::new(client_config)),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(
            err,
            callosum_postgres::replication::ReplicationError::TlsRefused
        ),
        "{err}"
    );
}

#[tokio::test]
async fn the_mariadb_test_server_really_speaks_tls() {
    // guards the tests above against a MariaDB built without TLS
    let servers = servers();
    let db = common::fresh_databases_on(&servers.pg, &servers.mariadb, "tls_have").await;
    let mut conn = db.mysql.get_conn().await.unwrap();
    let have: Option<(String, String)> = conn
        .query_first("SHOW GLOBAL VARIABLES LIKE 'have_ssl'")
        .await
        .unwrap();
    assert_eq!(have.map(|(_, v)| v).as_deref(), Some("YES"));
}
