//! The test kit starts real servers configured for change data capture.

use std::time::Duration;

use callosum::testkit::{wait_until, MariaDbServer, PgServer};
use mysql_async::prelude::Queryable;
use tokio_postgres::NoTls;

async fn pg_connect(url: &str) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(url, NoTls)
        .await
        .unwrap_or_else(|err| panic!("connect to {url}: {err}"));
    tokio::spawn(connection);
    client
}

async fn pg_show(client: &tokio_postgres::Client, setting: &str) -> String {
    client
        .query_one(&format!("SHOW {setting}"), &[])
        .await
        .unwrap()
        .get(0)
}

async fn my_connect(url: &str) -> mysql_async::Conn {
    let opts = mysql_async::Opts::from_url(url).unwrap();
    mysql_async::Conn::new(opts)
        .await
        .unwrap_or_else(|err| panic!("connect to {url}: {err}"))
}

async fn my_variable(conn: &mut mysql_async::Conn, name: &str) -> String {
    conn.query_first::<String, _>(format!("SELECT @@{name}"))
        .await
        .unwrap()
        .unwrap()
}

#[tokio::test]
async fn shared_postgres_is_logical_and_databases_are_fresh() {
    let server = PgServer::shared();
    assert!(std::ptr::eq(server, PgServer::shared()));
    let a = server.fresh_database("testkit").await.unwrap();
    let b = server.fresh_database("testkit").await.unwrap();
    assert_ne!(a, b);
    assert!(a.starts_with(&format!(
        "postgres://postgres@127.0.0.1:{}/testkit_",
        server.port()
    )));
    assert!(server.data_dir().join("PG_VERSION").exists());

    let client = pg_connect(&a).await;
    assert_eq!(pg_show(&client, "wal_level").await, "logical");
    let db: String = client
        .query_one("SELECT current_database()", &[])
        .await
        .unwrap()
        .get(0);
    assert!(a.ends_with(&format!("/{db}")), "{a} vs {db}");
    client
        .batch_execute("CREATE TABLE t (id bigint PRIMARY KEY); INSERT INTO t VALUES (1)")
        .await
        .unwrap();

    // The other database does not see the table.
    let other = pg_connect(&b).await;
    let exists: bool = other
        .query_one("SELECT to_regclass('public.t') IS NOT NULL", &[])
        .await
        .unwrap()
        .get(0);
    assert!(!exists);
}

#[tokio::test]
async fn shared_mariadb_has_a_full_row_binlog_and_databases_are_fresh() {
    let server = MariaDbServer::shared();
    let a = server.fresh_database("testkit").await.unwrap();
    let b = server.fresh_database("testkit").await.unwrap();
    assert_ne!(a, b);
    assert!(a.starts_with(&format!(
        "mysql://root@127.0.0.1:{}/testkit_",
        server.port()
    )));

    let mut conn = my_connect(&a).await;
    assert_eq!(my_variable(&mut conn, "binlog_format").await, "ROW");
    assert_eq!(my_variable(&mut conn, "binlog_row_metadata").await, "FULL");
    assert_eq!(my_variable(&mut conn, "binlog_row_image").await, "FULL");
    assert_eq!(my_variable(&mut conn, "log_bin").await, "1");
    let db: String = conn
        .query_first("SELECT DATABASE()")
        .await
        .unwrap()
        .unwrap();
    assert!(a.ends_with(&format!("/{db}")), "{a} vs {db}");
    conn.query_drop("CREATE TABLE t (id bigint PRIMARY KEY)")
        .await
        .unwrap();
    conn.disconnect().await.unwrap();

    let mut other = my_connect(&b).await;
    let tables: Vec<String> = other.query("SHOW TABLES").await.unwrap();
    assert!(tables.is_empty(), "{tables:?}");
    other.disconnect().await.unwrap();
}

#[tokio::test]
async fn postgres_start_applies_settings_and_survives_kill_and_restart() {
    let server = PgServer::start(&[("wal_level", "replica")]).unwrap();
    assert_ne!(server.port(), PgServer::shared().port());
    let url = server.url("postgres");
    let client = pg_connect(&url).await;
    assert_eq!(pg_show(&client, "wal_level").await, "replica");

    // Each server is its own cluster, even when copied from a template.
    let system_identifier = "SELECT system_identifier::text FROM pg_control_system()";
    let mine: String = client
        .query_one(system_identifier, &[])
        .await
        .unwrap()
        .get(0);
    let shared = pg_connect(&PgServer::shared().url("postgres")).await;
    let theirs: String = shared
        .query_one(system_identifier, &[])
        .await
        .unwrap()
        .get(0);
    assert_ne!(mine, theirs);
    client
        .batch_execute("CREATE TABLE kept (id int); INSERT INTO kept VALUES (7)")
        .await
        .unwrap();
    drop(client);

    server.kill();
    assert!(!server.is_running());
    server.restart().unwrap();
    let client = pg_connect(&url).await;
    let n: i32 = client
        .query_one("SELECT id FROM kept", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 7);
    drop(client);

    server.stop_fast().unwrap();
    server.restart().unwrap();
    let client = pg_connect(&url).await;
    assert_eq!(pg_show(&client, "wal_level").await, "replica");
    drop(client);

    let dir = server.data_dir().to_path_buf();
    drop(server);
    assert!(!dir.exists(), "{} left behind", dir.display());
}

#[tokio::test]
async fn mariadb_start_takes_extra_args_and_survives_kill_and_restart() {
    let server = MariaDbServer::start(&["--binlog-row-metadata=MINIMAL"]).unwrap();
    let url = server.fresh_database("restart").await.unwrap();
    let mut conn = my_connect(&url).await;
    assert_eq!(
        my_variable(&mut conn, "binlog_row_metadata").await,
        "MINIMAL"
    );
    conn.query_drop(
        "CREATE TABLE kept (id int PRIMARY KEY) ENGINE=InnoDB; INSERT INTO kept VALUES (7)",
    )
    .await
    .unwrap();
    conn.disconnect().await.unwrap();

    server.kill();
    assert!(!server.is_running());
    server.restart().unwrap();
    let mut conn = my_connect(&url).await;
    let n: Option<i32> = conn.query_first("SELECT id FROM kept").await.unwrap();
    assert_eq!(n, Some(7));
    conn.disconnect().await.unwrap();

    server.stop_fast().unwrap();
    server.restart().unwrap();
    let mut conn = my_connect(&url).await;
    let n: Option<i32> = conn.query_first("SELECT id FROM kept").await.unwrap();
    assert_eq!(n, Some(7));
    conn.disconnect().await.unwrap();

    let dir = server.data_dir().to_path_buf();
    drop(server);
    assert!(!dir.exists(), "{} left behind", dir.display());
}

#[tokio::test]
async fn wait_until_reports_what_it_waited_for() {
    let err = wait_until(
        "a condition that never holds",
        Duration::from_millis(200),
        || async { false },
    )
    .await
    .unwrap_err();
    assert!(
        err.to_string().contains("a condition that never holds"),
        "{err}"
    );
}
