//! The dead-letter queue against real servers: a value the target rejects
//! goes to the queue with its reason while the rest flows, later changes of
//! its rows queue behind it (also after a SIGKILL), and `callosum dlq
//! replay` after the operator fixed the target brings both sides equal,
//! exactly once.

mod common;

use callosum::agent::Agent;
use callosum::apply::{
    self, AppliedBatch, ApplyObserver, ApplyOptions, ApplyStop, OnPermanentError,
};
use callosum::config::Config;
use callosum::dead_letter::api::{
    discard_dead_letters, fetch_dead_letter, fetch_dead_letters, replay_dead_letters,
};
use callosum::dead_letter::DiscardSelection;
use callosum::dead_letter::{DeadLetterQueue, QueueSize};
use callosum::http::PipelineState;
use callosum::log::{ChangeLog, DeadLetter, LogWriter, Pending};
use callosum::testkit::{MariaDbServer, PgServer};
use callosum_api::{
    ChangeEvent, ColumnSchema, ErrorKind, Lsn, Position, RowChange, Sink, TableId, TableSchema,
    TransactionMeta, Value,
};
use callosum_mysql::{MySqlSink, MySqlSinkConfig};
use callosum_postgres::{PgSink, PgSinkConfig};
use common::agent_process::{kill, spawn_agent, write_config};
use common::schema::{MYSQL_PLAIN_ORDERS, PLAIN_ORDERS};
use common::Databases;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

const PIPELINE: &str = "pg_to_mysql";

/// `note` is text in PostgreSQL, VARCHAR(200) in MariaDB: a longer note is
/// a value the target rejects until the operator widens the column.
const PG_ORDERS: &str = "CREATE TABLE orders (id bigint PRIMARY KEY, customer_id bigint, status varchar(32), amount numeric(12,2), note text)";

async fn databases(prefix: &str) -> Databases {
    let db = common::fresh_databases_on(PgServer::shared(), MariaDbServer::shared(), prefix).await;
    db.pg.batch_execute(PG_ORDERS).await.unwrap();
    common::mysql_exec(&db.mysql, MYSQL_PLAIN_ORDERS).await;
    db
}

fn free_listen_addr() -> SocketAddr {
    let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    probe.local_addr().unwrap()
}

fn dead_letter_config(db: &Databases, data_dir: &Path, listen: SocketAddr) -> String {
    let toml = common::config_toml(db, data_dir, &["public.orders"], &listen.to_string());
    let toml = toml.replace("on_error = \"halt\"", "on_error = \"dead_letter\"");
    assert!(toml.contains("on_error = \"dead_letter\""));
    toml
}

async fn mysql_ids(db: &Databases) -> Vec<String> {
    common::mysql_rows(&db.mysql, "SELECT CAST(id AS CHAR) FROM orders ORDER BY id")
        .await
        .into_iter()
        .map(|row| row[0].clone().unwrap())
        .collect()
}

async fn queued_ids(listen: SocketAddr) -> Vec<u64> {
    queued_ids_of(listen, PIPELINE).await
}

async fn queued_ids_of(listen: SocketAddr, pipeline: &str) -> Vec<u64> {
    match fetch_dead_letters(listen, Some(pipeline)).await {
        Ok(list) => list.pipelines[pipeline].iter().map(|e| e.id).collect(),
        Err(_) => Vec::new(),
    }
}

async fn callosum(args: &[&str], config: &Path) -> (bool, String) {
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_callosum"))
        .args(args)
        .arg("--config")
        .arg(config)
        .output()
        .await
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), text)
}

async fn metrics_text(listen: SocketAddr) -> String {
    let body = tokio::task::spawn_blocking(move || {
        use std::io::{Read, Write};
        let mut stream = std::net::TcpStream::connect(listen).unwrap();
        write!(
            stream,
            "GET /metrics HTTP/1.1\r\nHost: {listen}\r\nConnection: close\r\n\r\n"
        )
        .unwrap();
        let mut text = String::new();
        stream.read_to_string(&mut text).unwrap();
        text
    })
    .await
    .unwrap();
    body
}

/// The agent binary with `dead_letter` on one PG → MariaDB pipeline, its
/// HTTP listener on `listen`.
struct AgentProcess {
    work: tempfile::TempDir,
    listen: SocketAddr,
    config: std::path::PathBuf,
    log: std::path::PathBuf,
    agent: tokio::process::Child,
}

async fn start_agent_process(db: &Databases) -> AgentProcess {
    let work = tempfile::tempdir().unwrap();
    let listen = free_listen_addr();
    let config = write_config(
        work.path(),
        &dead_letter_config(db, &work.path().join("data"), listen),
    );
    let log = work.path().join("agent.log");
    let agent = spawn_agent(&config, &log, &[]);
    common::wait_for_slot(db).await;
    AgentProcess {
        work,
        listen,
        config,
        log,
        agent,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poison_row_is_dead_lettered_and_replayed_after_the_fix() {
    let db = databases("dlq_replay").await;
    let AgentProcess {
        work: _work,
        listen,
        config,
        log,
        mut agent,
    } = start_agent_process(&db).await;

    db.pg
        .batch_execute("INSERT INTO orders VALUES (1, 1, 'ok', 1.00, 'fits')")
        .await
        .unwrap();
    // one source transaction: a note too long for the target, and a good row
    db.pg
        .batch_execute(
            "BEGIN; INSERT INTO orders VALUES (2, 1, 'poison', 2.00, repeat('x', 300));
             INSERT INTO orders VALUES (3, 1, 'new', 3.00, 'n'); COMMIT;",
        )
        .await
        .unwrap();
    // unrelated rows flow; a change of row 3 must queue behind the poison
    db.pg
        .batch_execute("INSERT INTO orders VALUES (4, 1, 'ok', 4.00, 'n')")
        .await
        .unwrap();
    db.pg
        .batch_execute("UPDATE orders SET status = 'later' WHERE id = 3")
        .await
        .unwrap();
    db.pg
        .batch_execute("BEGIN; INSERT INTO orders VALUES (5, 1, 'ok', 5.00, 'n'); UPDATE orders SET status = 'paid' WHERE id = 1; COMMIT;")
        .await
        .unwrap();
    common::wait_for(
        "rows 1, 4 and 5 in MariaDB",
        Duration::from_secs(60),
        || async {
            mysql_ids(&db).await == ["1", "4", "5"]
                && common::mysql_rows(&db.mysql, "SELECT status FROM orders WHERE id = 1").await
                    == vec![vec![Some("paid".to_string())]]
        },
    )
    .await;
    common::wait_for("two dead letters", Duration::from_secs(30), || async {
        queued_ids(listen).await.len() == 2
    })
    .await;

    let list = fetch_dead_letters(listen, None).await.unwrap();
    let queued = &list.pipelines[PIPELINE];
    let (poison, behind) = (&queued[0], &queued[1]);
    assert_eq!(poison.events, 2, "the whole source transaction is queued");
    assert_eq!(poison.behind, None);
    assert!(
        poison.message.contains("note"),
        "names the column: {}",
        poison.message
    );
    assert!(
        poison.message.contains("orders"),
        "names the table: {}",
        poison.message
    );
    assert!(
        !poison.message.contains("xxxxxxxx"),
        "never the value: {}",
        poison.message
    );
    assert_eq!(behind.events, 1);
    assert_eq!(
        behind.behind,
        Some(poison.id),
        "the update of row 3 waits behind it"
    );
    assert!(
        !std::fs::read_to_string(&log).unwrap().contains("xxxxxxxx"),
        "no row value in the agent's log"
    );

    // inspectable: the operator sees the rows, values included
    let detail = fetch_dead_letter(listen, PIPELINE, poison.id, 0, 100)
        .await
        .unwrap();
    assert_eq!(detail.events.len(), 2);
    assert_eq!(detail.events[0].op.as_str(), "insert");
    let poison_row = detail.events[0].row.as_ref().unwrap();
    assert_eq!(poison_row["id"], serde_json::json!(2));
    assert_eq!(poison_row["note"].as_str().map(str::len), Some(300));
    let (ok, shown) = callosum(&["dlq", "list"], &config).await;
    assert!(
        ok && shown.contains("queued behind"),
        "`dlq list`:\n{shown}"
    );

    // the pipeline keeps streaming: ready, with its dead letters counted
    let status = callosum::http::fetch_status(listen).await.unwrap();
    assert_eq!(status.pipelines[PIPELINE].state, PipelineState::Streaming);
    assert_eq!(status.pipelines[PIPELINE].dead_letters, 2);
    let metrics = metrics_text(listen).await;
    assert_eq!(
        common::metric(&metrics, "callosum_dead_letter_events", PIPELINE),
        3.0,
        "events held in the queue"
    );

    // replay before the fix fails and keeps everything queued, in order
    let (ok, shown) = callosum(&["dlq", "replay", "--pipeline", PIPELINE], &config).await;
    assert!(!ok, "a failed replay exits non-zero:\n{shown}");
    assert_eq!(queued_ids(listen).await, vec![poison.id, behind.id]);

    // a SIGKILL loses nothing: the restarted agent still holds rows 2 and 3 back
    kill(&mut agent).await;
    let mut agent = spawn_agent(&config, &log, &[]);
    db.pg
        .batch_execute("DELETE FROM orders WHERE id = 2")
        .await
        .unwrap();
    db.pg
        .batch_execute("INSERT INTO orders VALUES (6, 1, 'ok', 6.00, 'n')")
        .await
        .unwrap();
    common::wait_for(
        "the delete of row 2 queued too",
        Duration::from_secs(60),
        || async { queued_ids(listen).await.len() == 3 },
    )
    .await;
    common::wait_for("row 6 in MariaDB", Duration::from_secs(60), || async {
        mysql_ids(&db).await == ["1", "4", "5", "6"]
    })
    .await;

    // the operator widens the column and replays
    common::mysql_exec(&db.mysql, "ALTER TABLE orders MODIFY note TEXT").await;
    let (ok, shown) = callosum(&["dlq", "replay", "--pipeline", PIPELINE], &config).await;
    assert!(ok, "`dlq replay`:\n{shown}");
    assert!(queued_ids(listen).await.is_empty());
    common::wait_until_mirrored(&db, &[&PLAIN_ORDERS], Duration::from_secs(60)).await;
    let metrics = metrics_text(listen).await;
    assert_eq!(
        common::metric(&metrics, "callosum_dead_letter_events", PIPELINE),
        0.0
    );
    // replay wrote its own checkpoint row in the same target transactions
    let marker = common::mysql_rows(
        &db.mysql,
        "SELECT source_position FROM callosum_checkpoint WHERE pipeline = 'pg_to_mysql/dead_letters'",
    )
    .await;
    assert_eq!(marker.len(), 1, "the replay checkpoint row");

    // nothing is held back any more: row 3 flows again
    db.pg
        .batch_execute("UPDATE orders SET status = 'shipped' WHERE id = 3")
        .await
        .unwrap();
    common::wait_until_mirrored(&db, &[&PLAIN_ORDERS], Duration::from_secs(60)).await;
    assert!(queued_ids(listen).await.is_empty());
    kill(&mut agent).await;
}

/// A backlog applied in one target transaction holds one poison
/// transaction among two hundred: the batch is taken apart, only that one
/// is queued, and every other transaction is applied exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poison_transaction_in_a_large_batch_is_isolated() {
    let db = databases("dlq_isolate").await;
    let data_dir = tempfile::tempdir().unwrap();
    let listen = free_listen_addr();
    let config = Config::from_toml(&dead_letter_config(&db, data_dir.path(), listen)).unwrap();
    common::audit::install_mysql(&db.mysql).await;
    let agent = Agent::start(config.clone()).await.unwrap();
    common::wait_for_slot(&db).await;
    db.pg
        .batch_execute("INSERT INTO orders VALUES (0, 0, 'ok', 0.00, 'n')")
        .await
        .unwrap();
    common::wait_until_mirrored(&db, &[&PLAIN_ORDERS], Duration::from_secs(60)).await;
    // the backlog builds up while the agent is stopped
    agent.stop().await;
    for id in 1..=200 {
        let note = if id == 120 {
            "repeat('y', 300)".to_string()
        } else {
            "'n'".to_string()
        };
        db.pg
            .batch_execute(&format!(
                "INSERT INTO orders VALUES ({id}, {id}, 'new', 1.00, {note})"
            ))
            .await
            .unwrap();
    }
    let agent = Agent::start(config.clone()).await.unwrap();
    common::wait_for(
        "199 new rows in MariaDB",
        Duration::from_secs(60),
        || async {
            common::mysql_rows(&db.mysql, "SELECT CAST(count(*) AS CHAR) FROM orders").await
                == vec![vec![Some("200".to_string())]]
        },
    )
    .await;
    assert!(!mysql_ids(&db).await.contains(&"120".to_string()));
    let list = fetch_dead_letters(listen, Some(PIPELINE)).await.unwrap();
    let queued = &list.pipelines[PIPELINE];
    assert_eq!(queued.len(), 1, "only the poison transaction: {queued:?}");
    assert_eq!(queued[0].events, 1);
    assert!(queued[0].message.contains("note"), "{}", queued[0].message);
    // every checkpoint write moved forward: nothing was applied twice
    common::audit::assert_strictly_increasing(
        &common::audit::mysql_positions(&db.mysql).await,
        "isolating a poison transaction",
    );

    // discarding drops it for good, and frees its row
    let report = discard_dead_letters(listen, PIPELINE, DiscardSelection::All)
        .await
        .unwrap();
    assert_eq!(report.discarded, vec![queued[0].id]);
    assert_eq!(report.remaining, 0);
    db.pg
        .batch_execute("UPDATE orders SET note = 'short now' WHERE id = 120; INSERT INTO orders VALUES (201, 1, 'new', 1.00, 'n')")
        .await
        .unwrap();
    common::wait_for("row 201 in MariaDB", Duration::from_secs(60), || async {
        mysql_ids(&db).await.contains(&"201".to_string())
    })
    .await;
    // the update of the discarded row applies as an upsert of the whole row
    assert!(mysql_ids(&db).await.contains(&"120".to_string()));
    common::wait_until_mirrored(&db, &[&PLAIN_ORDERS], Duration::from_secs(60)).await;
    let report = replay_dead_letters(listen, PIPELINE, None).await.unwrap();
    assert!(report.replayed.is_empty() && report.failed.is_none());
    agent.stop().await;
}

/// A replay that a crash interrupted after the target committed it is not
/// applied again: the replay checkpoint row says it is there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_skips_what_an_interrupted_replay_already_applied() {
    let db = databases("dlq_marker").await;
    let data_dir = tempfile::tempdir().unwrap();
    let listen = free_listen_addr();
    let config = Config::from_toml(&dead_letter_config(&db, data_dir.path(), listen)).unwrap();
    let agent = Agent::start(config).await.unwrap();
    common::wait_for_slot(&db).await;
    db.pg
        .batch_execute("INSERT INTO orders VALUES (1, 1, 'poison', 1.00, repeat('z', 300))")
        .await
        .unwrap();
    common::wait_for("the dead letter", Duration::from_secs(60), || async {
        queued_ids(listen).await.len() == 1
    })
    .await;
    let entry = fetch_dead_letters(listen, Some(PIPELINE))
        .await
        .unwrap()
        .pipelines[PIPELINE][0]
        .clone();
    // as if a replay committed in the target and the agent died before it
    // removed the entry: the replay checkpoint row is at its position
    common::mysql_exec(
        &db.mysql,
        &format!(
            "INSERT INTO callosum_checkpoint (pipeline, source_position, applied_at, transactions) \
             VALUES ('{PIPELINE}/dead_letters', '{}', NOW(6), 1)",
            entry.position
        ),
    )
    .await;
    common::mysql_exec(&db.mysql, "ALTER TABLE orders MODIFY note TEXT").await;
    let report = replay_dead_letters(listen, PIPELINE, None).await.unwrap();
    assert_eq!(report.already_applied, vec![entry.id]);
    assert!(report.replayed.is_empty());
    assert!(mysql_ids(&db).await.is_empty(), "not applied a second time");
    agent.stop().await;
}

/// Transactions larger than one chunk: the poison in the last chunk rolls
/// back the whole target transaction, a later large transaction is found to
/// change a held-back row only in its last chunk, and replay applies both
/// in chunks.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_transactions_are_dead_lettered_and_replayed_in_chunks() {
    let db = databases("dlq_chunks").await;
    let data_dir = tempfile::tempdir().unwrap();
    let listen = free_listen_addr();
    let toml = dead_letter_config(&db, data_dir.path(), listen).replace(
        "on_error = \"dead_letter\"",
        "on_error = \"dead_letter\"\nmax_batch_events = 100",
    );
    let agent = Agent::start(Config::from_toml(&toml).unwrap())
        .await
        .unwrap();
    common::wait_for_slot(&db).await;
    db.pg
        .batch_execute(
            "INSERT INTO orders SELECT g, g, 'bulk', 1.00, CASE WHEN g = 1000 THEN repeat('w', 300) ELSE 'n' END
               FROM generate_series(1, 1000) g",
        )
        .await
        .unwrap();
    db.pg
        .batch_execute(
            "BEGIN; INSERT INTO orders SELECT g, g, 'bulk', 1.00, 'n' FROM generate_series(1001, 1300) g;
             UPDATE orders SET status = 'touched' WHERE id = 5; COMMIT;",
        )
        .await
        .unwrap();
    db.pg
        .batch_execute("INSERT INTO orders VALUES (2000, 1, 'ok', 1.00, 'n')")
        .await
        .unwrap();
    common::wait_for("row 2000 in MariaDB", Duration::from_secs(60), || async {
        mysql_ids(&db).await == ["2000"]
    })
    .await;
    let list = fetch_dead_letters(listen, Some(PIPELINE)).await.unwrap();
    let queued = &list.pipelines[PIPELINE];
    assert_eq!(
        queued
            .iter()
            .map(|e| (e.events, e.behind))
            .collect::<Vec<_>>(),
        vec![(1000, None), (301, Some(queued[0].id))]
    );
    let metrics = agent.metrics.encode();
    assert_eq!(
        common::metric(&metrics, "callosum_dead_letter_events", PIPELINE),
        1301.0
    );
    common::mysql_exec(&db.mysql, "ALTER TABLE orders MODIFY note TEXT").await;
    let report = replay_dead_letters(listen, PIPELINE, None).await.unwrap();
    assert_eq!(report.replayed.len(), 2, "{report:?}");
    assert_eq!(report.remaining, 0);
    common::wait_until_mirrored(&db, &[&PLAIN_ORDERS], Duration::from_secs(60)).await;
    agent.stop().await;
}

/// The other direction: a PostgreSQL target whose CHECK constraint rejects a
/// MariaDB row; replay after the constraint is dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgres_constraint_violation_is_dead_lettered_and_replayed() {
    let db =
        common::fresh_databases_on(PgServer::shared(), MariaDbServer::shared(), "dlq_to_pg").await;
    db.pg
        .batch_execute(&format!(
            "{PG_ORDERS}; ALTER TABLE orders ADD CONSTRAINT amount_not_negative CHECK (amount >= 0)"
        ))
        .await
        .unwrap();
    common::mysql_exec(&db.mysql, MYSQL_PLAIN_ORDERS).await;
    let data_dir = tempfile::tempdir().unwrap();
    let listen = free_listen_addr();
    let pipeline = common::TestPipeline {
        name: "mysql_to_pg",
        from: "erp",
        to: "crm",
        tables: &["orders"],
    };
    let toml = common::config_toml_with(&db, data_dir.path(), &[pipeline], &listen.to_string())
        .replace("on_error = \"halt\"", "on_error = \"dead_letter\"");
    let agent = Agent::start(Config::from_toml(&toml).unwrap())
        .await
        .unwrap();
    // capture starts at the binlog's position when it first connects
    common::wait_for(
        "the pipeline to stream",
        Duration::from_secs(60),
        || async {
            agent
                .status
                .get("mysql_to_pg")
                .is_some_and(|s| s.state == PipelineState::Streaming && s.source_position.is_some())
        },
    )
    .await;
    common::mysql_exec(
        &db.mysql,
        "INSERT INTO orders VALUES (0, 0, 'ok', 0.00, 'n')",
    )
    .await;
    common::wait_until_mirrored(&db, &[&PLAIN_ORDERS], Duration::from_secs(60)).await;

    common::mysql_exec(
        &db.mysql,
        "BEGIN; INSERT INTO orders VALUES (1, 1, 'refund', -5.00, 'n'), (2, 1, 'ok', 2.00, 'n'); COMMIT",
    )
    .await;
    common::mysql_exec(
        &db.mysql,
        "INSERT INTO orders VALUES (3, 1, 'ok', 3.00, 'n')",
    )
    .await;
    common::mysql_exec(&db.mysql, "UPDATE orders SET status = 'paid' WHERE id = 2").await;
    common::wait_for("row 3 in PostgreSQL", Duration::from_secs(60), || async {
        let rows = db
            .pg
            .query("SELECT id FROM orders ORDER BY id", &[])
            .await
            .unwrap();
        rows.iter().map(|r| r.get::<_, i64>(0)).collect::<Vec<_>>() == [0, 3]
    })
    .await;
    common::wait_for("two dead letters", Duration::from_secs(30), || async {
        queued_ids_of(listen, "mysql_to_pg").await.len() == 2
    })
    .await;
    let list = fetch_dead_letters(listen, Some("mysql_to_pg"))
        .await
        .unwrap();
    let queued = &list.pipelines["mysql_to_pg"];
    assert_eq!(queued[0].reason_kind, "constraint");
    assert!(
        queued[0].message.contains("amount_not_negative") || queued[0].message.contains("orders"),
        "says what: {}",
        queued[0].message
    );
    assert_eq!(queued[1].behind, Some(queued[0].id));

    db.pg
        .batch_execute("ALTER TABLE orders DROP CONSTRAINT amount_not_negative")
        .await
        .unwrap();
    let report = replay_dead_letters(listen, "mysql_to_pg", None)
        .await
        .unwrap();
    assert_eq!(report.replayed, vec![queued[0].id, queued[1].id]);
    common::wait_until_mirrored(&db, &[&PLAIN_ORDERS], Duration::from_secs(60)).await;
    let marker: String = db
        .pg
        .query_one(
            "SELECT source_position FROM callosum_checkpoint WHERE pipeline = 'mysql_to_pg/dead_letters'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(marker, queued[1].position);
    agent.stop().await;
}

#[derive(Default)]
struct Recorder {
    /// Source transactions per committed target transaction.
    batches: Vec<usize>,
    dead_letters: Vec<(u64, Position, Option<ErrorKind>)>,
}

impl ApplyObserver for Recorder {
    fn applied(&mut self, batch: &AppliedBatch) {
        self.batches.push(batch.transactions.len());
    }
    fn pending(&mut self, _: &Pending) {}
    fn dead_lettered(&mut self, entry: &DeadLetter, cause: Option<ErrorKind>, _: QueueSize) {
        self.dead_letters
            .push((entry.id, entry.position.clone(), cause));
    }
}

/// The apply loop itself, on a log written directly and a real MariaDB
/// sink: two hundred one-row transactions form one batch, one of them holds
/// a note too long for the target. The batch is halved until the poison is
/// alone; every other transaction is applied once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_apply_loop_halves_a_rejected_batch_down_to_the_poison() {
    let db = databases("dlq_halves").await;
    let dir = tempfile::tempdir().unwrap();
    let log = ChangeLog::open(dir.path()).unwrap();
    let column = |name: &str, source_type: &str, is_key| ColumnSchema {
        name: name.into(),
        source_type: source_type.into(),
        is_key,
    };
    let schema = Arc::new(TableSchema {
        table: TableId::new("public", "orders"),
        columns: vec![
            column("id", "int8", true),
            column("customer_id", "int8", false),
            column("status", "varchar", false),
            column("amount", "numeric", false),
            column("note", "text", false),
        ],
    });
    let mut writer = log.writer("crm").unwrap();
    for id in 1..=200i64 {
        let note = if id == 120 {
            "v".repeat(300)
        } else {
            "n".into()
        };
        append_order(&mut writer, &schema, id, note);
    }
    writer.flush().await.unwrap();
    common::audit::install_mysql(&db.mysql).await;
    let database = db.mysql_url.rsplit('/').next().unwrap().to_string();
    let mut sink = MySqlSink::connect(MySqlSinkConfig {
        tls: Default::default(),
        store: "erp".into(),
        url: db.mysql_url.clone(),
        password: None,
        pipeline: PIPELINE.into(),
        tables: vec![(
            TableId::new("public", "orders"),
            TableId::new(&database, "orders"),
        )],
        time_zone: None,
        fence: Default::default(),
    })
    .await
    .unwrap();
    let mut reader = log.reader("crm", PIPELINE).unwrap();
    let mut queue = DeadLetterQueue::open(log.dead_letters(PIPELINE).unwrap()).unwrap();
    let mut recorder = Recorder::default();
    let (stop, mut shutdown) = tokio::sync::watch::channel(false);
    let (_commands_tx, mut commands) = tokio::sync::mpsc::channel(1);
    let applying = apply::apply(
        &mut sink,
        &mut reader,
        ApplyOptions {
            max_batch_events: 5000,
            on_error: OnPermanentError::DeadLetter,
        },
        &mut queue,
        &mut recorder,
        &mut shutdown,
        &mut commands,
    );
    let watching = async {
        common::wait_for("199 rows in MariaDB", Duration::from_secs(60), || async {
            common::mysql_rows(&db.mysql, "SELECT CAST(count(*) AS CHAR) FROM orders").await
                == vec![vec![Some("199".to_string())]]
        })
        .await;
        // the checkpoint moved past the poison too
        common::wait_for(
            "the checkpoint at the last transaction",
            Duration::from_secs(30),
            || async {
                common::mysql_rows(&db.mysql, "SELECT source_position FROM callosum_checkpoint")
                    .await
                    == vec![vec![Some(Position::Pg(Lsn(20000)).to_string())]]
            },
        )
        .await;
        stop.send(true).unwrap();
    };
    let (stopped, ()) = tokio::join!(applying, watching);
    assert!(matches!(stopped, Ok(ApplyStop::Shutdown)), "{stopped:?}");
    assert_eq!(
        recorder.dead_letters,
        vec![(1, Position::Pg(Lsn(12000)), Some(ErrorKind::Conversion))]
    );
    eprintln!(
        "source transactions per target transaction: {:?}",
        recorder.batches
    );
    assert_eq!(
        recorder.batches.iter().sum::<usize>(),
        199,
        "{:?}",
        recorder.batches
    );
    assert!(
        recorder.batches.len() <= 16,
        "halving, not one target transaction per source transaction: {:?}",
        recorder.batches
    );
    assert!(!mysql_ids(&db).await.contains(&"120".to_string()));
    common::audit::assert_strictly_increasing(
        &common::audit::mysql_positions(&db.mysql).await,
        "halving a rejected batch",
    );
}

/// How a replay is interrupted.
#[derive(Clone, Copy, Debug)]
enum Interruption {
    Sigkill,
    /// A graceful stop: the replay rolls back between two chunks and the
    /// agent exits 0 promptly.
    Sigterm,
}

/// The agent is SIGKILLed while it replays a 100,000-row dead letter; the
/// replay is run again after the restart. The replay checkpoint row is
/// written once per replayed transaction (audited by a trigger), and both
/// sides end equal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_killed_midway_is_finished_exactly_once() {
    replay_interrupted("dlq_replay_kill", Interruption::Sigkill).await;
}

/// The same with SIGTERM: the stop does not wait for the whole replay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_stopped_gracefully_midway_is_finished_exactly_once() {
    replay_interrupted("dlq_replay_term", Interruption::Sigterm).await;
}

async fn replay_interrupted(prefix: &str, interruption: Interruption) {
    let db = databases(prefix).await;
    common::audit::install_mysql(&db.mysql).await;
    let AgentProcess {
        work: _work,
        listen,
        config,
        log,
        mut agent,
    } = start_agent_process(&db).await;
    db.pg
        .batch_execute(
            "INSERT INTO orders SELECT g, g, 'bulk', 1.00, CASE WHEN g = 100000 THEN repeat('k', 300) ELSE 'n' END
               FROM generate_series(1, 100000) g",
        )
        .await
        .unwrap();
    common::wait_for("the dead letter", Duration::from_secs(300), || async {
        queued_ids(listen).await.len() == 1
    })
    .await;
    // /dlq lists it once the log holds it; the target holds it (with the
    // checkpoint past it) only when its 100,000 rows are written there. A
    // kill before that leaves the transaction to the pipeline, which then
    // applies it itself once the column is widened: exactly once too, but
    // no replay to interrupt
    common::wait_for(
        "the dead letter to be durable in the target",
        Duration::from_secs(300),
        || async {
            common::mysql_rows(
                &db.mysql,
                &format!("SELECT COUNT(*) FROM callosum_dead_letter WHERE pipeline = '{PIPELINE}'"),
            )
            .await[0][0]
                .as_deref()
                .is_some_and(|n| n != "0")
        },
    )
    .await;
    common::mysql_exec(&db.mysql, "ALTER TABLE orders MODIFY note TEXT").await;

    let replaying = tokio::process::Command::new(env!("CARGO_BIN_EXE_callosum"))
        .args(["dlq", "replay", "--pipeline", PIPELINE, "--config"])
        .arg(&config)
        .output();
    let replaying = tokio::spawn(replaying);
    // somewhere inside the replay of 100,000 rows
    let moment = {
        use rand::Rng;
        rand::thread_rng().gen_range(100..800)
    };
    tokio::time::sleep(Duration::from_millis(moment)).await;
    match interruption {
        Interruption::Sigkill => {
            kill(&mut agent).await;
        }
        Interruption::Sigterm => {
            let pid = agent.id().unwrap().to_string();
            let sent = std::process::Command::new("kill")
                .args(["-TERM", &pid])
                .status()
                .unwrap();
            assert!(sent.success());
            let exited = tokio::time::timeout(Duration::from_secs(20), agent.wait())
                .await
                .expect("a graceful stop does not wait for the whole replay")
                .unwrap();
            assert!(exited.success(), "a graceful stop exits 0: {exited:?}");
        }
    }
    let first = replaying.await.unwrap().unwrap();
    eprintln!(
        "replay interrupted ({interruption:?}) after {moment} ms: {}{}",
        String::from_utf8_lossy(&first.stdout),
        String::from_utf8_lossy(&first.stderr)
    );

    let mut agent = spawn_agent(&config, &log, &[]);
    common::wait_for("the restarted agent", Duration::from_secs(60), || async {
        callosum::http::fetch_status(listen)
            .await
            .is_ok_and(|s| s.pipelines[PIPELINE].state == PipelineState::Streaming)
    })
    .await;
    let (ok, shown) = callosum(&["dlq", "replay", "--pipeline", PIPELINE], &config).await;
    assert!(ok, "`dlq replay` after the restart:\n{shown}");
    eprintln!("replay after the restart: {shown}");
    assert!(queued_ids(listen).await.is_empty());
    common::wait_until_mirrored(&db, &[&PLAIN_ORDERS], Duration::from_secs(120)).await;
    let marker_writes = common::mysql_rows(
        &db.mysql,
        "SELECT source_position FROM checkpoint_audit WHERE pipeline = 'pg_to_mysql/dead_letters' ORDER BY seq",
    )
    .await;
    assert_eq!(
        marker_writes.len(),
        1,
        "one replayed transaction, one committed replay: {marker_writes:?}"
    );
    kill(&mut agent).await;
}

/// Which sink a stale-catalog test runs against.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Target {
    Mysql,
    /// PostgreSQL → PostgreSQL, into `target.orders` of the same database.
    Postgres,
}

/// The target's rows as `id:length of note` (0 for NULL).
async fn target_notes(db: &Databases, target: Target) -> Vec<String> {
    let rows =
        match target {
            Target::Mysql => common::mysql_rows(
                &db.mysql,
                "SELECT CONCAT(id, ':', COALESCE(CHAR_LENGTH(note), 0)) FROM orders ORDER BY id",
            )
            .await,
            Target::Postgres => common::pg_rows(
                &db.pg,
                "SELECT id || ':' || COALESCE(char_length(note), 0) FROM target.orders ORDER BY id",
            )
            .await,
        };
    rows.into_iter().map(|r| r[0].clone().unwrap()).collect()
}

/// One source transaction inserting order `id`, flushed.
async fn write_order(writer: &mut LogWriter, schema: &Arc<TableSchema>, id: i64, note: String) {
    append_order(writer, schema, id, note);
    writer.flush().await.unwrap();
}

/// One source transaction inserting order `id`, committed, not flushed.
fn append_order(writer: &mut LogWriter, schema: &Arc<TableSchema>, id: i64, note: String) {
    writer.begin();
    writer
        .append(ChangeEvent {
            schema: schema.clone(),
            change: RowChange::Insert {
                row: vec![
                    Value::Int(id),
                    Value::Int(id),
                    Value::Text("new".into()),
                    Value::Decimal("1.00".into()),
                    Value::Text(note),
                ],
            },
        })
        .unwrap();
    writer
        .commit(TransactionMeta {
            position: Position::Pg(Lsn(id as u64 * 100)),
            resume_position: Position::Pg(Lsn(id as u64 * 100 + 1)),
            commit_time_micros: 0,
            origin: None,
        })
        .unwrap();
}

/// The operator alters the target table while the pipeline runs: `note`,
/// `varchar(200)` when the sink read the catalog, is dropped and added
/// again as text. The next note of 300 characters is refused by the stale
/// cache; the sink reads the table again and the batch is applied on the
/// retry: no dead letter (`on_error = "dead_letter"`), no halt (`halt`).
async fn a_target_altered_while_running_is_read_again(target: Target, on_error: OnPermanentError) {
    let db = databases(&format!("stale_{target:?}").to_lowercase()).await;
    let dir = tempfile::tempdir().unwrap();
    let log = ChangeLog::open(dir.path()).unwrap();
    let column = |name: &str, source_type: &str, is_key| ColumnSchema {
        name: name.into(),
        source_type: source_type.into(),
        is_key,
    };
    let schema = Arc::new(TableSchema {
        table: TableId::new("public", "orders"),
        columns: vec![
            column("id", "int8", true),
            column("customer_id", "int8", false),
            column("status", "varchar", false),
            column("amount", "numeric", false),
            column("note", "text", false),
        ],
    });
    let mut writer = log.writer("crm").unwrap();
    write_order(&mut writer, &schema, 1, "n".into()).await;
    let source = schema.table.clone();
    let recorder = match target {
        Target::Mysql => {
            let database = db.mysql_url.rsplit('/').next().unwrap().to_string();
            let mut sink = MySqlSink::connect(MySqlSinkConfig {
                tls: Default::default(),
                store: "erp".into(),
                url: db.mysql_url.clone(),
                password: None,
                pipeline: PIPELINE.into(),
                tables: vec![(source, TableId::new(&database, "orders"))],
                time_zone: None,
                fence: Default::default(),
            })
            .await
            .unwrap();
            run_while_altered(&mut sink, &log, &mut writer, &schema, &db, target, on_error).await
        }
        Target::Postgres => {
            db.pg
                .batch_execute(&format!(
                    "CREATE SCHEMA target; {}",
                    common::schema::PG_PLAIN_ORDERS.replace("TABLE orders", "TABLE target.orders")
                ))
                .await
                .unwrap();
            let config = PgSinkConfig {
                tls: Default::default(),
                store: "warehouse".into(),
                url: db.pg_url.clone(),
                password: None,
                pipeline: PIPELINE.into(),
                tables: vec![(source, TableId::new("target", "orders"))],
                fence: Default::default(),
            };
            callosum_postgres::ensure_checkpoint_table(&config)
                .await
                .unwrap();
            let mut sink = PgSink::connect(config).await.unwrap();
            run_while_altered(&mut sink, &log, &mut writer, &schema, &db, target, on_error).await
        }
    };
    assert!(
        recorder.dead_letters.is_empty(),
        "{:?}",
        recorder.dead_letters
    );
}

/// Runs the apply loop: order 1 is applied, the target's `note` is dropped
/// and added again as text, order 2 with a 300-character note follows.
async fn run_while_altered<K: Sink>(
    sink: &mut K,
    log: &ChangeLog,
    writer: &mut LogWriter,
    schema: &Arc<TableSchema>,
    db: &Databases,
    target: Target,
    on_error: OnPermanentError,
) -> Recorder {
    let mut reader = log.reader("crm", PIPELINE).unwrap();
    let mut queue = DeadLetterQueue::open(log.dead_letters(PIPELINE).unwrap()).unwrap();
    let mut recorder = Recorder::default();
    let (stop, mut shutdown) = tokio::sync::watch::channel(false);
    let (_commands_tx, mut commands) = tokio::sync::mpsc::channel(1);
    let applying = apply::apply(
        sink,
        &mut reader,
        ApplyOptions {
            max_batch_events: 5000,
            on_error,
        },
        &mut queue,
        &mut recorder,
        &mut shutdown,
        &mut commands,
    );
    let watching = async {
        common::wait_for("order 1 in the target", Duration::from_secs(30), || async {
            target_notes(db, target).await == ["1:1"]
        })
        .await;
        match target {
            Target::Mysql => {
                common::mysql_exec(
                    &db.mysql,
                    "ALTER TABLE orders DROP COLUMN note, ADD COLUMN note TEXT",
                )
                .await
            }
            Target::Postgres => db
                .pg
                .batch_execute("ALTER TABLE target.orders DROP COLUMN note, ADD COLUMN note text")
                .await
                .unwrap(),
        }
        write_order(writer, schema, 2, "v".repeat(300)).await;
        common::wait_for(
            "order 2 with its 300-character note",
            Duration::from_secs(30),
            || async { target_notes(db, target).await == ["1:0", "2:300"] },
        )
        .await;
        stop.send(true).unwrap();
    };
    let (stopped, ()) = tokio::join!(applying, watching);
    assert!(matches!(stopped, Ok(ApplyStop::Shutdown)), "{stopped:?}");
    recorder
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mariadb_target_altered_while_running_is_read_again_instead_of_dead_lettering() {
    a_target_altered_while_running_is_read_again(Target::Mysql, OnPermanentError::DeadLetter).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgres_target_altered_while_running_is_read_again_instead_of_halting() {
    a_target_altered_while_running_is_read_again(Target::Postgres, OnPermanentError::Halt).await;
}

/// The source adds a column the MariaDB target lacks: the first row with
/// it is dead-lettered as a `schema` error naming the column (and so are
/// no others: a retry reads the unchanged target and gives up); after the
/// operator adds the column, `dlq replay` applies it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_source_column_the_target_lacks_is_dead_lettered_by_name_and_replayed_once_added() {
    let db = databases("stale_missing").await;
    let dir = tempfile::tempdir().unwrap();
    let log = ChangeLog::open(dir.path()).unwrap();
    let column = |name: &str, source_type: &str, is_key| ColumnSchema {
        name: name.into(),
        source_type: source_type.into(),
        is_key,
    };
    let v1 = Arc::new(TableSchema {
        table: TableId::new("public", "orders"),
        columns: vec![
            column("id", "int8", true),
            column("customer_id", "int8", false),
            column("status", "varchar", false),
            column("amount", "numeric", false),
            column("note", "text", false),
        ],
    });
    let mut v2 = (*v1).clone();
    v2.columns.push(column("priority", "int4", false));
    let v2 = Arc::new(v2);
    let mut writer = log.writer("crm").unwrap();
    write_order(&mut writer, &v1, 1, "n".into()).await;
    writer.begin();
    writer
        .append(ChangeEvent {
            schema: v2.clone(),
            change: RowChange::Insert {
                row: vec![
                    Value::Int(2),
                    Value::Int(2),
                    Value::Text("new".into()),
                    Value::Decimal("2.00".into()),
                    Value::Text("n".into()),
                    Value::Int(5),
                ],
            },
        })
        .unwrap();
    writer
        .commit(TransactionMeta {
            position: Position::Pg(Lsn(200)),
            resume_position: Position::Pg(Lsn(201)),
            commit_time_micros: 0,
            origin: None,
        })
        .unwrap();
    writer.flush().await.unwrap();
    let database = db.mysql_url.rsplit('/').next().unwrap().to_string();
    let config = |pipeline: String| MySqlSinkConfig {
        tls: Default::default(),
        store: "erp".into(),
        url: db.mysql_url.clone(),
        password: None,
        pipeline,
        tables: vec![(v1.table.clone(), TableId::new(&database, "orders"))],
        time_zone: None,
        fence: Default::default(),
    };
    let mut sink = MySqlSink::connect(config(PIPELINE.into())).await.unwrap();
    let mut reader = log.reader("crm", PIPELINE).unwrap();
    let mut queue = DeadLetterQueue::open(log.dead_letters(PIPELINE).unwrap()).unwrap();
    let mut recorder = Recorder::default();
    let (stop, mut shutdown) = tokio::sync::watch::channel(false);
    let (_commands_tx, mut commands) = tokio::sync::mpsc::channel(1);
    let applying = apply::apply(
        &mut sink,
        &mut reader,
        ApplyOptions {
            max_batch_events: 5000,
            on_error: OnPermanentError::DeadLetter,
        },
        &mut queue,
        &mut recorder,
        &mut shutdown,
        &mut commands,
    );
    let watching = async {
        common::wait_for(
            "the checkpoint past order 2",
            Duration::from_secs(30),
            || async {
                common::mysql_rows(&db.mysql, "SELECT source_position FROM callosum_checkpoint")
                    .await
                    == vec![vec![Some(Position::Pg(Lsn(200)).to_string())]]
            },
        )
        .await;
        stop.send(true).unwrap();
    };
    let (stopped, ()) = tokio::join!(applying, watching);
    assert!(matches!(stopped, Ok(ApplyStop::Shutdown)), "{stopped:?}");
    drop(queue);
    assert_eq!(
        recorder.dead_letters,
        vec![(1, Position::Pg(Lsn(200)), Some(ErrorKind::Schema))]
    );
    assert_eq!(mysql_ids(&db).await, ["1"]);
    let dead_letters = log.dead_letters(PIPELINE).unwrap();
    let entry = &dead_letters.list().unwrap()[0];
    assert!(
        entry.reason.message.contains("priority") && entry.reason.message.contains("orders"),
        "names the column and the table: {}",
        entry.reason.message
    );

    common::mysql_exec(&db.mysql, "ALTER TABLE orders ADD COLUMN priority INT").await;
    let mut replay_sink = MySqlSink::connect(config(
        callosum::dead_letter::replay_checkpoint_name(PIPELINE),
    ))
    .await
    .unwrap();
    let (_stop, shutdown) = tokio::sync::watch::channel(false);
    let report =
        callosum::dead_letter::replay(&mut replay_sink, &dead_letters, None, 1000, &shutdown)
            .await
            .unwrap();
    assert_eq!(report.replayed, vec![1], "{report:?}");
    assert_eq!(
        common::mysql_rows(
            &db.mysql,
            "SELECT CAST(priority AS CHAR) FROM orders WHERE id = 2"
        )
        .await,
        vec![vec![Some("5".to_string())]]
    );
}

/// Which way a lost-`data_dir` scenario runs, and how its target refuses
/// the poison row until the operator fixes it.
#[derive(Clone, Copy, PartialEq, Debug)]
enum LostDir {
    /// A note longer than MariaDB's VARCHAR(200).
    PgToMysql,
    /// A negative amount against a CHECK constraint of the PostgreSQL target.
    MysqlToPg,
}

impl LostDir {
    fn pipeline(self) -> &'static str {
        match self {
            LostDir::PgToMysql => "pg_to_mysql",
            LostDir::MysqlToPg => "mysql_to_pg",
        }
    }

    /// Runs `sql` in the source store.
    async fn source(self, db: &Databases, sql: &str) {
        match self {
            LostDir::PgToMysql => db.pg.batch_execute(sql).await.unwrap(),
            LostDir::MysqlToPg => common::mysql_exec(&db.mysql, sql).await,
        }
    }

    /// A transaction of a poison row `id` and a good row `id + 1`.
    fn poison(self, id: i64) -> String {
        let good = id + 1;
        match self {
            LostDir::PgToMysql => format!(
                "BEGIN; INSERT INTO orders VALUES ({id}, 1, 'poison', 1.00, repeat('x', 300)); \
                 INSERT INTO orders VALUES ({good}, 1, 'new', 1.00, 'n'); COMMIT"
            ),
            LostDir::MysqlToPg => format!(
                "BEGIN; INSERT INTO orders VALUES ({id}, 1, 'poison', -5.00, 'n'), ({good}, 1, 'new', 1.00, 'n'); COMMIT"
            ),
        }
    }

    async fn target_ids(self, db: &Databases) -> Vec<i64> {
        match self {
            LostDir::PgToMysql => mysql_ids(db)
                .await
                .iter()
                .map(|id| id.parse().unwrap())
                .collect(),
            LostDir::MysqlToPg => db
                .pg
                .query("SELECT id FROM orders ORDER BY id", &[])
                .await
                .unwrap()
                .iter()
                .map(|r| r.get(0))
                .collect(),
        }
    }

    /// Every checkpoint the target's row of `pipeline` held, in order.
    async fn audited(self, db: &Databases, pipeline: &str) -> Vec<String> {
        match self {
            LostDir::PgToMysql => common::mysql_rows(
                &db.mysql,
                &format!("SELECT source_position FROM checkpoint_audit WHERE pipeline = '{pipeline}' ORDER BY seq"),
            )
            .await
            .into_iter()
            .map(|row| row[0].clone().unwrap())
            .collect(),
            LostDir::MysqlToPg => db
                .pg
                .query(
                    "SELECT source_position FROM checkpoint_audit WHERE pipeline = $1 ORDER BY seq",
                    &[&pipeline],
                )
                .await
                .unwrap()
                .iter()
                .map(|r| r.get(0))
                .collect(),
        }
    }

    /// Rows the target's dead-letter table holds for the pipeline.
    async fn target_dead_letter_rows(self, db: &Databases) -> i64 {
        let pipeline = self.pipeline();
        match self {
            LostDir::PgToMysql => common::mysql_rows(
                &db.mysql,
                &format!("SELECT COUNT(*) FROM callosum_dead_letter WHERE pipeline = '{pipeline}'"),
            )
            .await[0][0]
                .as_deref()
                .unwrap()
                .parse()
                .unwrap(),
            LostDir::MysqlToPg => db
                .pg
                .query_one(
                    "SELECT COUNT(*) FROM callosum_dead_letter WHERE pipeline = $1",
                    &[&pipeline],
                )
                .await
                .unwrap()
                .get(0),
        }
    }
}

/// A checkpoint audit that records the pipeline too (a replay writes a row
/// of its own): every write of a checkpoint row, in target commit order.
async fn install_audit(db: &Databases, direction: LostDir) {
    match direction {
        LostDir::PgToMysql => common::audit::install_mysql(&db.mysql).await,
        LostDir::MysqlToPg => db
            .pg
            .batch_execute(
                "CREATE TABLE callosum_checkpoint (pipeline text PRIMARY KEY, source_position text NOT NULL, applied_at timestamptz NOT NULL, transactions bigint NOT NULL DEFAULT 0);
                 CREATE TABLE checkpoint_audit (seq bigserial PRIMARY KEY, pipeline text, source_position text);
                 CREATE FUNCTION audit_checkpoint() RETURNS trigger LANGUAGE plpgsql AS
                   $$ BEGIN INSERT INTO checkpoint_audit (pipeline, source_position) VALUES (NEW.pipeline, NEW.source_position); RETURN NEW; END $$;
                 CREATE TRIGGER audit AFTER INSERT OR UPDATE ON callosum_checkpoint FOR EACH ROW EXECUTE FUNCTION audit_checkpoint();
                 ALTER TABLE callosum_checkpoint ENABLE ALWAYS TRIGGER audit;",
            )
            .await
            .unwrap(),
    }
}

/// The agent binary on one pipeline in `direction` with `dead_letter`.
struct LostDirAgent {
    direction: LostDir,
    work: tempfile::TempDir,
    toml: String,
    config: std::path::PathBuf,
    log: std::path::PathBuf,
    listen: SocketAddr,
    agent: tokio::process::Child,
}

impl LostDirAgent {
    fn start(db: &Databases, direction: LostDir) -> Self {
        Self::start_with(db, direction, &[])
    }

    fn start_with(db: &Databases, direction: LostDir, env: &[(&str, &str)]) -> Self {
        let work = tempfile::tempdir().unwrap();
        let listen = free_listen_addr();
        let pipeline = match direction {
            LostDir::PgToMysql => common::TestPipeline {
                name: "pg_to_mysql",
                from: "crm",
                to: "erp",
                tables: &["public.orders"],
            },
            LostDir::MysqlToPg => common::TestPipeline {
                name: "mysql_to_pg",
                from: "erp",
                to: "crm",
                tables: &["orders"],
            },
        };
        let toml = common::config_toml_with(
            db,
            &work.path().join("data"),
            &[pipeline],
            &listen.to_string(),
        )
        .replace("on_error = \"halt\"", "on_error = \"dead_letter\"");
        let config = write_config(work.path(), &toml);
        let log = work.path().join("agent.log");
        let mut env = env.to_vec();
        env.push(("CALLOSUM_LOG", "info"));
        let agent = spawn_agent(&config, &log, &env);
        Self {
            direction,
            work,
            toml,
            config,
            log,
            listen,
            agent,
        }
    }

    /// SIGKILLs the agent, deletes its `data_dir` and starts it again on a
    /// new HTTP port.
    async fn lose_data_dir(&mut self) {
        self.restart(true).await;
    }

    /// SIGKILLs the agent and starts it again (without test failpoints) on
    /// a new HTTP port, its `data_dir` deleted when `lose_data_dir`.
    async fn restart(&mut self, lose_data_dir: bool) {
        kill(&mut self.agent).await;
        if lose_data_dir {
            std::fs::remove_dir_all(self.work.path().join("data")).unwrap();
        }
        let listen = free_listen_addr();
        self.toml = self
            .toml
            .replace(&self.listen.to_string(), &listen.to_string());
        self.listen = listen;
        self.config = write_config(self.work.path(), &self.toml);
        self.agent = spawn_agent(&self.config, &self.log, &[("CALLOSUM_LOG", "info")]);
    }

    async fn queued(&self) -> Vec<u64> {
        queued_ids_of(self.listen, self.direction.pipeline()).await
    }

    /// Writes `sql` into the source until row `id` is in the target: a
    /// binlog source starts at the server's position when it connects.
    async fn write_until_applied(&self, db: &Databases, sql: &str, id: i64) {
        let direction = self.direction;
        common::wait_for("a row to be applied", Duration::from_secs(60), || async {
            direction.source(db, sql).await;
            direction.target_ids(db).await.contains(&id)
        })
        .await;
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// Issue 14: dead letters survive a lost `data_dir`. The target's
/// `callosum_dead_letter` holds them, written in the target transaction
/// that moves the checkpoint past them: after a SIGKILL and a deleted
/// `data_dir` the dead letter is still listed (by `/dlq` and `callosum dlq
/// list`), still holds its rows back, replays once after the fix (the
/// checkpoint audits of the pipeline and of its replay only go up), a
/// second replay does nothing, and a discard after such a restart is for
/// good.
async fn dead_letters_survive_a_lost_data_dir(direction: LostDir) {
    let prefix = match direction {
        LostDir::PgToMysql => "dlq_lost_pg",
        LostDir::MysqlToPg => "dlq_lost_my",
    };
    let db = databases(prefix).await;
    install_audit(&db, direction).await;
    if direction == LostDir::MysqlToPg {
        db.pg
            .batch_execute(
                "ALTER TABLE orders ADD CONSTRAINT amount_not_negative CHECK (amount >= 0)",
            )
            .await
            .unwrap();
    }
    let pipeline = direction.pipeline();
    let mut agent = LostDirAgent::start(&db, direction);
    if direction == LostDir::PgToMysql {
        common::wait_for_slot(&db).await;
    }
    // a new value each time: an upsert that changes nothing logs nothing
    let first = match direction {
        LostDir::PgToMysql => "INSERT INTO orders VALUES (1, 1, 'ok', 1.00, 'n') ON CONFLICT (id) DO UPDATE SET customer_id = orders.customer_id + 1",
        LostDir::MysqlToPg => "INSERT INTO orders VALUES (1, 1, 'ok', 1.00, 'n') ON DUPLICATE KEY UPDATE customer_id = customer_id + 1",
    };
    agent.write_until_applied(&db, first, 1).await;

    // the poison transaction (rows 2 and 3), then an unrelated row
    direction.source(&db, &direction.poison(2)).await;
    direction
        .source(&db, "INSERT INTO orders VALUES (4, 1, 'ok', 4.00, 'n')")
        .await;
    common::wait_for("row 4 applied", Duration::from_secs(60), || async {
        direction.target_ids(&db).await == [1, 4]
    })
    .await;
    common::wait_for("one dead letter", Duration::from_secs(30), || async {
        agent.queued().await.len() == 1
    })
    .await;
    let poison = agent.queued().await[0];
    // the queue lists it first; the target transaction follows
    common::wait_for(
        "the target to hold the entry and its events",
        Duration::from_secs(30),
        || async { direction.target_dead_letter_rows(&db).await >= 2 },
    )
    .await;

    // the agent's disk is lost: the dead letter is not
    agent.lose_data_dir().await;
    common::wait_for(
        "the dead letter listed again",
        Duration::from_secs(60),
        || async { agent.queued().await == [poison] },
    )
    .await;
    let list = fetch_dead_letters(agent.listen, Some(pipeline))
        .await
        .unwrap();
    let entry = &list.pipelines[pipeline][0];
    assert_eq!(entry.events, 2, "the whole source transaction, restored");
    let detail = fetch_dead_letter(agent.listen, pipeline, poison, 0, 10)
        .await
        .unwrap();
    assert_eq!(detail.events.len(), 2, "its events, restored");
    let (ok, shown) = callosum(&["dlq", "list"], &agent.config).await;
    assert!(
        ok && shown.contains(&format!("{pipeline}  #{poison} ")),
        "`dlq list` after the lost data_dir:\n{shown}"
    );

    // its rows are still held back: a change of row 3 queues behind it
    direction
        .source(&db, "UPDATE orders SET status = 'later' WHERE id = 3")
        .await;
    direction
        .source(&db, "INSERT INTO orders VALUES (5, 1, 'ok', 5.00, 'n')")
        .await;
    common::wait_for("row 5 applied", Duration::from_secs(60), || async {
        direction.target_ids(&db).await == [1, 4, 5]
    })
    .await;
    common::wait_for(
        "the update of row 3 queued behind",
        Duration::from_secs(30),
        || async { agent.queued().await.len() == 2 },
    )
    .await;
    let list = fetch_dead_letters(agent.listen, Some(pipeline))
        .await
        .unwrap();
    assert_eq!(list.pipelines[pipeline][1].behind, Some(poison));

    // the operator fixes the cause and replays: applied once
    match direction {
        LostDir::PgToMysql => {
            common::mysql_exec(&db.mysql, "ALTER TABLE orders MODIFY note TEXT").await
        }
        LostDir::MysqlToPg => db
            .pg
            .batch_execute("ALTER TABLE orders DROP CONSTRAINT amount_not_negative")
            .await
            .unwrap(),
    }
    let (ok, shown) = callosum(&["dlq", "replay", "--pipeline", pipeline], &agent.config).await;
    assert!(ok, "`dlq replay`:\n{shown}\n{}", agent.log_text());
    assert!(agent.queued().await.is_empty());
    assert_eq!(direction.target_dead_letter_rows(&db).await, 0);
    common::wait_until_mirrored(&db, &[&PLAIN_ORDERS], Duration::from_secs(60)).await;
    let report = replay_dead_letters(agent.listen, pipeline, None)
        .await
        .unwrap();
    assert!(
        report.replayed.is_empty() && report.already_applied.is_empty(),
        "a second replay does nothing: {report:?}"
    );
    let context = format!("agent log: {}", agent.log.display());
    common::audit::assert_strictly_increasing(&direction.audited(&db, pipeline).await, &context);
    let replays = direction
        .audited(&db, &format!("{pipeline}/dead_letters"))
        .await;
    assert_eq!(replays.len(), 2, "one replay transaction per entry");
    common::audit::assert_strictly_increasing(&replays, &context);

    // a discard after a lost data_dir is for good: the target refuses
    // negative amounts from now on
    match direction {
        LostDir::PgToMysql => {
            common::mysql_exec(
                &db.mysql,
                "ALTER TABLE orders ADD CONSTRAINT amount_not_negative CHECK (amount >= 0)",
            )
            .await
        }
        LostDir::MysqlToPg => db
            .pg
            .batch_execute(
                "ALTER TABLE orders ADD CONSTRAINT amount_not_negative CHECK (amount >= 0) NOT VALID",
            )
            .await
            .unwrap(),
    }
    direction
        .source(
            &db,
            "INSERT INTO orders VALUES (10, 1, 'poison', -5.00, 'n')",
        )
        .await;
    common::wait_for("a new dead letter", Duration::from_secs(60), || async {
        agent.queued().await.len() == 1
    })
    .await;
    let second = agent.queued().await[0];
    assert!(second > poison, "ids are never reused");
    common::wait_for(
        "the target to hold the new dead letter",
        Duration::from_secs(30),
        || async { direction.target_dead_letter_rows(&db).await >= 2 },
    )
    .await;
    agent.lose_data_dir().await;
    common::wait_for(
        "the new dead letter listed again",
        Duration::from_secs(60),
        || async { agent.queued().await == [second] },
    )
    .await;
    let discarded = discard_dead_letters(agent.listen, pipeline, DiscardSelection::One(second))
        .await
        .unwrap();
    assert_eq!(discarded.discarded, [second]);
    assert_eq!(direction.target_dead_letter_rows(&db).await, 0);
    agent.lose_data_dir().await;
    direction
        .source(&db, "INSERT INTO orders VALUES (20, 1, 'ok', 20.00, 'n')")
        .await;
    common::wait_for("row 20 applied", Duration::from_secs(60), || async {
        direction.target_ids(&db).await.contains(&20)
    })
    .await;
    assert!(
        agent.queued().await.is_empty(),
        "the discarded dead letter stays gone"
    );
    assert!(
        !agent.log_text().contains("xxxxxxxx"),
        "no row value in the agent's log"
    );
    kill(&mut agent.agent).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_to_mariadb_dead_letters_survive_a_lost_data_dir() {
    dead_letters_survive_a_lost_data_dir(LostDir::PgToMysql).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mariadb_to_pg_dead_letters_survive_a_lost_data_dir() {
    dead_letters_survive_a_lost_data_dir(LostDir::MysqlToPg).await;
}

/// The crash window of a dead-lettering: the transaction is in the queue in
/// `data_dir` (flushed) but the target transaction that stores it and moves
/// the checkpoint past it never ran (the debug failpoint halts the
/// pipeline there, then SIGKILL). On restart the queue is reconciled with
/// the target, which does not hold it: it is removed, the log delivers the
/// transaction again and it is dead-lettered again, once, now in the
/// target too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_between_queue_and_target_dead_letters_the_transaction_once() {
    let db = databases("dlq_window").await;
    common::audit::install_mysql(&db.mysql).await;
    let direction = LostDir::PgToMysql;
    let mut agent = LostDirAgent::start_with(
        &db,
        direction,
        &[("CALLOSUM_TEST_PANIC", "dead_letter_stored")],
    );
    common::wait_for_slot(&db).await;
    direction
        .source(&db, "INSERT INTO orders VALUES (1, 1, 'ok', 1.00, 'n')")
        .await;
    common::wait_for("row 1 applied", Duration::from_secs(60), || async {
        direction.target_ids(&db).await == [1]
    })
    .await;
    direction.source(&db, &direction.poison(2)).await;
    common::wait_for(
        "the pipeline to halt at the failpoint",
        Duration::from_secs(60),
        || async {
            callosum::http::fetch_status(agent.listen)
                .await
                .is_ok_and(|s| s.pipelines["pg_to_mysql"].state == PipelineState::Halted)
        },
    )
    .await;
    let before = agent.queued().await;
    assert_eq!(before.len(), 1, "stored in the queue before the target");
    assert_eq!(direction.target_dead_letter_rows(&db).await, 0);

    agent.restart(false).await;
    direction
        .source(&db, "INSERT INTO orders VALUES (4, 1, 'ok', 4.00, 'n')")
        .await;
    common::wait_for("row 4 applied", Duration::from_secs(60), || async {
        direction.target_ids(&db).await == [1, 4]
    })
    .await;
    let after = agent.queued().await;
    assert_eq!(after.len(), 1, "dead-lettered once: {after:?}");
    assert!(after[0] > before[0], "under a new id");
    assert!(direction.target_dead_letter_rows(&db).await >= 2);
    common::audit::assert_strictly_increasing(
        &direction.audited(&db, "pg_to_mysql").await,
        &format!("agent log: {}", agent.log.display()),
    );
    assert!(
        agent
            .log_text()
            .contains("dead letters the target does not hold removed"),
        "the reconciliation says what it removed"
    );
    kill(&mut agent.agent).await;
}

/// A dead letter larger than one target row (1 MiB): 12,000 rows of 1 kB
/// notes in one source transaction, refused by MariaDB's VARCHAR(200). It
/// is stored in several parts, restored whole after a lost `data_dir`, and
/// replays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_letter_larger_than_a_target_row_survives_a_lost_data_dir() {
    let db = databases("dlq_lost_large").await;
    let work = tempfile::tempdir().unwrap();
    let data_dir = work.path().join("data");
    let listen = free_listen_addr();
    let toml = dead_letter_config(&db, &data_dir, listen);
    let agent = Agent::start(Config::from_toml(&toml).unwrap())
        .await
        .unwrap();
    common::wait_for_slot(&db).await;
    db.pg
        .batch_execute(
            "INSERT INTO orders SELECT g, g, 'bulk', 1.00, repeat(md5(g::text), 32)
               FROM generate_series(1, 12000) g",
        )
        .await
        .unwrap();
    let parts = || async {
        common::mysql_rows(
            &db.mysql,
            "SELECT COUNT(*) FROM callosum_dead_letter WHERE pipeline = 'pg_to_mysql'",
        )
        .await[0][0]
            .as_deref()
            .unwrap()
            .parse::<i64>()
            .unwrap()
    };
    // the queue lists it first; the target transaction follows
    common::wait_for(
        "the dead letter in the target",
        Duration::from_secs(120),
        || async { parts().await > 0 },
    )
    .await;
    assert_eq!(queued_ids(listen).await.len(), 1);
    let parts = parts().await;
    assert!(parts >= 12, "12 MB in parts of at most 1 MiB: {parts} rows");
    agent.stop().await;
    std::fs::remove_dir_all(&data_dir).unwrap();

    let agent = Agent::start(Config::from_toml(&toml).unwrap())
        .await
        .unwrap();
    common::wait_for(
        "the dead letter restored",
        Duration::from_secs(60),
        || async { queued_ids(listen).await.len() == 1 },
    )
    .await;
    let list = fetch_dead_letters(listen, Some(PIPELINE)).await.unwrap();
    assert_eq!(list.pipelines[PIPELINE][0].events, 12_000);
    common::mysql_exec(&db.mysql, "ALTER TABLE orders MODIFY note TEXT").await;
    let report = replay_dead_letters(listen, PIPELINE, None).await.unwrap();
    assert_eq!(report.replayed.len(), 1, "{report:?}");
    common::wait_until_mirrored(&db, &[&PLAIN_ORDERS], Duration::from_secs(60)).await;
    agent.stop().await;
}

/// An agent from before the target copy left its dead letters only in
/// `data_dir`: the first start of this one writes those the target's
/// checkpoint moved past to the target, once, and drops the one whose
/// checkpoint move never committed (the log delivers it again); after
/// that, a lost `data_dir` restores the entry whole from the target.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_older_agents_dead_letters_are_written_to_the_target_once() {
    use callosum::dead_letter::target::reconcile;
    use callosum::log::DeadLetterReason;

    let db = databases("dlq_upgrade").await;
    let dir = tempfile::tempdir().unwrap();
    let log = ChangeLog::open(dir.path()).unwrap();
    let column = |name: &str, source_type: &str, is_key| ColumnSchema {
        name: name.into(),
        source_type: source_type.into(),
        is_key,
    };
    let schema = Arc::new(TableSchema {
        table: TableId::new("public", "orders"),
        columns: vec![
            column("id", "int8", true),
            column("customer_id", "int8", false),
            column("status", "varchar", false),
            column("amount", "numeric", false),
            column("note", "text", false),
        ],
    });
    let mut writer = log.writer("crm").unwrap();
    for id in 1..=3i64 {
        append_order(&mut writer, &schema, id, "v".repeat(300));
    }
    writer.flush().await.unwrap();
    let mut reader = log.reader("crm", PIPELINE).unwrap();
    reader.seek_after(None).unwrap();
    let txns = reader.peek_transactions(u64::MAX).unwrap();
    let queue = log.dead_letters(PIPELINE).unwrap();
    let reason = || DeadLetterReason {
        kind: "conversion".into(),
        message: "too long".into(),
        hint: None,
        behind: None,
    };
    // the older agent: transactions 1 and 2 queued, the checkpoint moved
    // past 1 only
    let older = queue
        .add(&mut reader, &txns[0].1, reason(), &mut |_, _| {})
        .unwrap();
    let pending = queue
        .add(&mut reader, &txns[1].1, reason(), &mut |_, _| {})
        .unwrap();
    queue.flush().await.unwrap();
    let database = db.mysql_url.rsplit('/').next().unwrap().to_string();
    let config = MySqlSinkConfig {
        tls: Default::default(),
        store: "erp".into(),
        url: db.mysql_url.clone(),
        password: None,
        pipeline: PIPELINE.into(),
        tables: vec![(
            TableId::new("public", "orders"),
            TableId::new(&database, "orders"),
        )],
        time_zone: None,
        fence: Default::default(),
    };
    let mut sink = MySqlSink::connect(config.clone()).await.unwrap();
    sink.begin(&older.position).await.unwrap();
    sink.commit().await.unwrap();
    assert!(!queue.in_target().unwrap());

    let done = reconcile(&mut sink, &queue).await.unwrap();
    assert_eq!(done.exported, [older.id]);
    assert_eq!(
        done.removed,
        [pending.id],
        "its checkpoint move never committed"
    );
    assert!(done.restored.is_empty());
    assert_eq!(sink.dead_letter_ids().await.unwrap(), [older.id]);
    assert_eq!(
        sink.checkpoint().await.unwrap(),
        Some(older.position.clone())
    );
    assert!(queue.in_target().unwrap());
    let again = reconcile(&mut sink, &queue).await.unwrap();
    assert_eq!(again, Default::default(), "once");

    // the data_dir is lost: the entry comes back whole from the target
    let lost = tempfile::tempdir().unwrap();
    let fresh = ChangeLog::open(lost.path()).unwrap();
    let restored_queue = fresh.dead_letters(PIPELINE).unwrap();
    let done = reconcile(&mut sink, &restored_queue).await.unwrap();
    assert_eq!(done.restored, [older.id]);
    assert_eq!(restored_queue.list().unwrap(), std::slice::from_ref(&older));
    let (mut before, mut after) = (Vec::new(), Vec::new());
    queue.read_events(&older, 0, 10, &mut before).unwrap();
    restored_queue
        .read_events(&older, 0, 10, &mut after)
        .unwrap();
    assert_eq!(after, before);
}
