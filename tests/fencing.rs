//! Fencing of target transactions by lease epoch, on both sinks against
//! real servers: once a new leader fenced a target, a former leader's open
//! transaction is ended by the server (idle timeout) instead of blocking
//! the fence, and every later checkpoint write of the former leader fails
//! with `Fenced` and commits nothing; an agent without a lease (epoch 0) is
//! fenced out too.

mod common;

use std::sync::Arc;
use std::time::Duration;

use callosum::testkit::{MariaDbServer, PgServer};
use callosum_api::{
    ChangeEvent, ColumnSchema, ConnectorError, ErrorKind, Fence, Lsn, Position, RowChange, Sink,
    TableId, TableSchema, Value,
};
use callosum_mysql::{MySqlSink, MySqlSinkConfig};
use callosum_postgres::{PgSink, PgSinkConfig};
use common::store_db::{fresh_mysql_db, fresh_pg_db};
use mysql_async::prelude::Queryable;

const KEYS: [&str; 2] = ["old_to_new", "old_to_new/dead_letters"];

fn keys() -> Vec<String> {
    KEYS.iter().map(|k| k.to_string()).collect()
}

fn fence(epoch: i64) -> Fence {
    Fence {
        epoch,
        idle_transaction_timeout: Some(Duration::from_secs(1)),
    }
}

fn items() -> Arc<TableSchema> {
    Arc::new(TableSchema {
        table: TableId::new("src", "items"),
        columns: vec![
            ColumnSchema {
                name: "id".into(),
                source_type: "int8".into(),
                is_key: true,
            },
            ColumnSchema {
                name: "note".into(),
                source_type: "text".into(),
                is_key: false,
            },
        ],
    })
}

fn insert(id: i64) -> Vec<ChangeEvent> {
    vec![ChangeEvent {
        schema: items(),
        change: RowChange::Insert {
            row: vec![Value::Int(id), Value::Text(format!("row {id}"))],
        },
    }]
}

fn at(n: u64) -> Position {
    Position::Pg(Lsn(n))
}

/// The sinks under test, with their inherent `fence`.
trait Fenced: Sink + Sized {
    async fn fence_rows(&mut self, keys: &[String]) -> Result<(), ConnectorError>;
}

impl Fenced for PgSink {
    async fn fence_rows(&mut self, keys: &[String]) -> Result<(), ConnectorError> {
        self.fence(keys).await
    }
}

impl Fenced for MySqlSink {
    async fn fence_rows(&mut self, keys: &[String]) -> Result<(), ConnectorError> {
        self.fence(keys).await
    }
}

/// The scenario on one target: `connect(epoch)` opens a sink of pipeline
/// `old_to_new` fenced with `epoch`; `ids()` lists the ids in the target.
async fn scenario<S, C, CF, I, IF>(connect: C, ids: I)
where
    S: Fenced,
    C: Fn(i64) -> CF,
    CF: std::future::Future<Output = S>,
    I: Fn() -> IF,
    IF: std::future::Future<Output = Vec<i64>>,
{
    let mut old = connect(1).await;
    old.fence_rows(&keys()).await.unwrap();
    old.begin(&at(10)).await.unwrap();
    old.apply(&insert(1)).await.unwrap();
    old.commit().await.unwrap();
    // the old leader is paused inside a transaction that holds the row
    old.begin(&at(20)).await.unwrap();
    old.apply(&insert(2)).await.unwrap();

    let mut new = connect(2).await;
    // waits for the server to end the old transaction (idle 1 s)
    tokio::time::timeout(Duration::from_secs(60), new.fence_rows(&keys()))
        .await
        .expect("the fence does not wait for the paused leader to wake up")
        .unwrap();
    assert!(
        old.commit().await.is_err(),
        "the paused leader's transaction was ended"
    );
    assert_eq!(ids().await, vec![1], "nothing of it committed");

    // the former leader reconnects and tries again: fenced, nothing applied
    let mut again = connect(1).await;
    let err = again.begin(&at(20)).await.unwrap_err();
    assert_eq!(err.kind, ErrorKind::Fenced, "{err}");
    assert!(err.to_string().contains("newer lease epoch"), "{err}");
    // an agent without [lease] is fenced out as well
    let mut alone = connect(0).await;
    let err = alone.begin(&at(20)).await.unwrap_err();
    assert_eq!(err.kind, ErrorKind::Fenced, "{err}");
    // a former leader cannot fence back either
    assert_eq!(
        again.fence_rows(&keys()).await.unwrap_err().kind,
        ErrorKind::Fenced
    );

    // the new leader resumes from the checkpoint and applies
    assert_eq!(new.checkpoint().await.unwrap(), Some(at(10)));
    new.begin(&at(20)).await.unwrap();
    new.apply(&insert(2)).await.unwrap();
    new.commit().await.unwrap();
    assert_eq!(ids().await, vec![1, 2]);
    let err = again.begin(&at(30)).await.unwrap_err();
    assert_eq!(err.kind, ErrorKind::Fenced);
    assert_eq!(ids().await, vec![1, 2]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fenced_mariadb_target_refuses_the_former_leader() {
    let mut db = fresh_mysql_db(MariaDbServer::shared(), "fence_my").await;
    db.conn
        .query_drop("CREATE TABLE items (id BIGINT PRIMARY KEY, note TEXT)")
        .await
        .unwrap();
    // a checkpoint table created before leases existed gets its column
    db.conn
        .query_drop("CREATE TABLE callosum_checkpoint (pipeline VARCHAR(255) NOT NULL PRIMARY KEY, source_position VARCHAR(255) NOT NULL, applied_at TIMESTAMP(6) NOT NULL, transactions BIGINT NOT NULL DEFAULT 0) ENGINE=InnoDB")
        .await
        .unwrap();
    let (url, database) = (db.url.clone(), db.database.clone());
    let pool = mysql_async::Pool::new(url.as_str());
    scenario(
        |epoch| {
            let config = MySqlSinkConfig {
                store: "erp".into(),
                url: url.clone(),
                password: None,
                pipeline: "old_to_new".into(),
                tables: vec![(
                    TableId::new("src", "items"),
                    TableId::new(&database, "items"),
                )],
                time_zone: None,
                tls: Default::default(),
                fence: fence(epoch),
            };
            async move { MySqlSink::connect(config).await.unwrap() }
        },
        || async {
            let mut conn = pool.get_conn().await.unwrap();
            conn.query("SELECT id FROM items ORDER BY id")
                .await
                .unwrap()
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fenced_postgres_target_refuses_the_former_leader() {
    let db = fresh_pg_db(
        PgServer::shared(),
        "fence_pg",
        "CREATE TABLE items (id bigint PRIMARY KEY, note text);
         CREATE TABLE callosum_checkpoint (pipeline text PRIMARY KEY, source_position text NOT NULL, applied_at timestamptz NOT NULL, transactions bigint NOT NULL DEFAULT 0);",
    )
    .await;
    let url = db.url.clone();
    let client = db.client;
    scenario(
        |epoch| {
            let config = PgSinkConfig {
                store: "crm".into(),
                url: url.clone(),
                password: None,
                pipeline: "old_to_new".into(),
                tables: vec![(
                    TableId::new("src", "items"),
                    TableId::new("public", "items"),
                )],
                tls: Default::default(),
                fence: fence(epoch),
            };
            async move { PgSink::connect(config).await.unwrap() }
        },
        || async {
            client
                .query("SELECT id FROM items ORDER BY id", &[])
                .await
                .unwrap()
                .iter()
                .map(|r| r.get(0))
                .collect()
        },
    )
    .await;
}
