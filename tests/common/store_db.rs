//! One fresh database on one test kit server, for the connector tests.

use callosum::testkit::{MariaDbServer, PgServer};

/// A fresh PostgreSQL database: its URL, name and a client.
pub struct PgDb {
    pub url: String,
    pub name: String,
    pub client: tokio_postgres::Client,
}

/// A fresh database on `server`, with `ddl` run in it (if any).
pub async fn fresh_pg_db(server: &PgServer, prefix: &str, ddl: &str) -> PgDb {
    let url = server.fresh_database(prefix).await.expect("fresh database");
    let name = url.rsplit('/').next().unwrap().to_string();
    let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
        .await
        .expect("connect");
    tokio::spawn(connection);
    if !ddl.is_empty() {
        client.batch_execute(ddl).await.expect("ddl");
    }
    PgDb { url, name, client }
}

/// A fresh MariaDB database: its URL, name and a connection.
pub struct MySqlDb {
    pub url: String,
    pub database: String,
    pub conn: mysql_async::Conn,
}

pub async fn fresh_mysql_db(server: &MariaDbServer, prefix: &str) -> MySqlDb {
    let url = server.fresh_database(prefix).await.expect("fresh database");
    let database = url.rsplit('/').next().unwrap().to_string();
    let conn = mysql_async::Conn::new(mysql_async::Opts::from_url(&url).unwrap())
        .await
        .expect("connect");
    MySqlDb {
        url,
        database,
        conn,
    }
}
