//! `callosum check` for a PostgreSQL source store: every missing
//! prerequisite of [`crate::PgSource`], each with its fix.

use std::collections::HashSet;

use callosum_api::{CheckAdvice, CheckProblem, ConnectorError, ErrorKind, TableId};
use tracing::Instrument;

use crate::error::from_replication;
use crate::replication::{quote_ident, ReplicationClient, ReplicationError};
use crate::source::{quote_table, slot_info, sql_connect, PgSourceConfig};

/// Checks everything [`crate::PgSource::connect`] and streaming need and
/// returns every problem found (empty when all is well), without stopping at
/// the first: `wal_level`, replication slots and WAL senders (unset or
/// exhausted), the role's REPLICATION attribute, the configured tables
/// (existence, a primary key or replica identity, SELECT privilege), the
/// rights to create or extend the publication, an existing slot's plugin,
/// database and state, and whether `pg_hba.conf` admits the replication
/// connection.
///
/// Returns `Err` only when the check itself cannot run (server unreachable,
/// invalid url); authentication failures are reported as problems.
/// Changes nothing in the database.
pub async fn check(config: &PgSourceConfig) -> Result<Vec<CheckProblem>, ConnectorError> {
    let span = tracing::info_span!("pg_check", store = %config.store);
    check_inner(config).instrument(span).await
}

/// A connection that failed for a reason the operator fixes in the config
/// or the server's grants (authentication, url), as a problem and its fix;
/// any other failure stays an error: the check cannot run.
/// What `callosum check` recommends for a PostgreSQL source store that
/// works today: with `acknowledge = "applied"` (the default) the slot keeps
/// WAL on the server until every target has applied it, so a long target
/// outage grows `pg_wal` without bound unless `max_slot_wal_keep_size`
/// caps it. Empty when the store cannot be reached ([`check()`] reports that).
pub async fn advice(config: &PgSourceConfig) -> Result<Vec<CheckAdvice>, ConnectorError> {
    let store = config.store.as_str();
    let pg_config = config.pg_config()?;
    let Ok((sql, task)) = sql_connect(store, &pg_config, &config.tls).await else {
        return Ok(Vec::new());
    };
    let keep_size = sql
        .query_one("SELECT current_setting('max_slot_wal_keep_size')", &[])
        .await
        .map_err(|e| crate::error::from_sql(store, "check", e));
    task.abort();
    Ok(
        slot_retention_advice(config, &keep_size?.get::<_, String>(0))
            .into_iter()
            .collect(),
    )
}

/// The advice for the server's `max_slot_wal_keep_size` setting (`-1` is
/// unlimited).
fn slot_retention_advice(config: &PgSourceConfig, keep_size: &str) -> Option<CheckAdvice> {
    if keep_size.trim() != "-1" {
        return None;
    }
    let held_until = if config.confirmed_means_applied {
        "every target has applied them (acknowledge = \"applied\")"
    } else {
        "the agent's change log holds them (acknowledge = \"logged\")"
    };
    Some(CheckAdvice {
        store: config.store.clone(),
        risk: format!(
            "max_slot_wal_keep_size is unlimited: slot `{}` keeps WAL on this server until {held_until}, so an outage can fill the disk of pg_wal",
            config.slot
        ),
        advice: "cap it below the free space of pg_wal's disk, e.g. `ALTER SYSTEM SET max_slot_wal_keep_size = '50GB'` and `SELECT pg_reload_conf()`, and alert on callosum_source_lag_bytes; a slot that passes the cap is invalidated and its pipelines halt with position_lost (re-snapshot them) instead of the database stopping".into(),
    })
}

pub(crate) fn connect_problem(err: ConnectorError) -> Result<(String, String), ConnectorError> {
    if !matches!(err.kind, ErrorKind::Permission | ErrorKind::Config) {
        return Err(err);
    }
    let fix = err
        .hint
        .unwrap_or_else(|| "check the url, user and password".into());
    Ok((format!("cannot connect: {}", err.message), fix))
}

async fn check_inner(config: &PgSourceConfig) -> Result<Vec<CheckProblem>, ConnectorError> {
    let store = config.store.as_str();
    let mut problems = Vec::new();
    let mut problem = |problem: String, fix: String| {
        problems.push(CheckProblem {
            store: store.to_string(),
            problem,
            fix,
        })
    };
    let pg_config = config.pg_config()?;
    let (sql, task) = match sql_connect(store, &pg_config, &config.tls).await {
        Ok(c) => c,
        Err(err) => {
            let (what, fix) = connect_problem(err)?;
            problem(what, fix);
            return Ok(problems);
        }
    };
    struct Abort(tokio::task::JoinHandle<()>);
    impl Drop for Abort {
        fn drop(&mut self) {
            self.0.abort();
        }
    }
    let _task = Abort(task);
    let q = |e: tokio_postgres::Error| crate::error::from_sql(store, "check", e);

    let row = sql
        .query_one(
            "SELECT current_setting('wal_level'),
                    current_setting('max_replication_slots')::int4,
                    current_setting('max_wal_senders')::int4,
                    (SELECT count(*) FROM pg_replication_slots)::int4,
                    (SELECT count(*) FROM pg_stat_replication)::int4,
                    current_user::text, current_database()::text,
                    r.rolreplication, r.rolsuper,
                    has_database_privilege(current_database(), 'CREATE')
             FROM pg_roles r WHERE r.rolname = current_user",
            &[],
        )
        .await
        .map_err(q)?;
    let wal_level: String = row.get(0);
    let max_slots: i32 = row.get(1);
    let max_senders: i32 = row.get(2);
    let used_slots: i32 = row.get(3);
    let used_senders: i32 = row.get(4);
    let user: String = row.get(5);
    let database: String = row.get(6);
    let can_replicate: bool = row.get::<_, bool>(7) || row.get::<_, bool>(8);
    let superuser: bool = row.get(8);
    let can_create: bool = row.get(9);
    let user_q = quote_ident(&user);

    if wal_level != "logical" {
        problem(
            format!("wal_level is {wal_level}; logical decoding needs logical"),
            "run `ALTER SYSTEM SET wal_level = logical` as a superuser and restart PostgreSQL"
                .into(),
        );
    }
    let slot = slot_info(store, &sql, &config.slot).await?;
    if max_slots == 0 {
        problem(
            "max_replication_slots is 0".into(),
            "set max_replication_slots = 10 (at least one per Callosum store) in postgresql.conf and restart PostgreSQL".into(),
        );
    } else if slot.is_none() && used_slots >= max_slots {
        problem(
            format!("all {max_slots} replication slots are in use; slot `{}` cannot be created", config.slot),
            "raise max_replication_slots in postgresql.conf and restart, or drop unused slots with pg_drop_replication_slot (see pg_replication_slots)".into(),
        );
    }
    if max_senders == 0 {
        problem(
            "max_wal_senders is 0".into(),
            "set max_wal_senders = 10 in postgresql.conf and restart PostgreSQL".into(),
        );
    } else if used_senders >= max_senders {
        problem(
            format!("all {max_senders} WAL senders are in use"),
            "raise max_wal_senders in postgresql.conf and restart, or stop unused replication clients (see pg_stat_replication)".into(),
        );
    }
    if !can_replicate {
        problem(
            format!("role {user} has neither the REPLICATION attribute nor superuser"),
            format!("run `ALTER ROLE {user_q} REPLICATION` as a superuser"),
        );
    }

    // Tables.
    let mut present: Vec<(TableId, bool)> = Vec::new();
    for t in &config.tables {
        let row = sql
            .query_opt(
                "SELECT c.relreplident::text,
                        EXISTS (SELECT 1 FROM pg_index i WHERE i.indrelid = c.oid AND i.indisprimary),
                        has_table_privilege(c.oid, 'SELECT'),
                        pg_has_role(c.relowner, 'USAGE')
                 FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                 WHERE n.nspname = $1 AND c.relname = $2 AND c.relkind IN ('r', 'p')",
                &[&t.namespace, &t.name],
            )
            .await
            .map_err(q)?;
        let Some(row) = row else {
            problem(
                format!("configured table {t} does not exist"),
                format!("create table {t}, or remove it from the pipeline's `tables`"),
            );
            continue;
        };
        let identity: String = row.get(0);
        let has_pk: bool = row.get(1);
        let can_select: bool = row.get(2);
        let owns: bool = row.get(3);
        let tq = quote_table(t);
        if identity == "n" || (identity == "d" && !has_pk) {
            problem(
                format!("table {t} has no primary key (nor replica identity): its updates and deletes cannot be replicated, and fail once it is published"),
                format!("add a primary key (`ALTER TABLE {tq} ADD PRIMARY KEY (...)`) or run `ALTER TABLE {tq} REPLICA IDENTITY FULL`"),
            );
        }
        if !can_select {
            problem(
                format!("role {user} lacks SELECT on table {t}"),
                format!("run `GRANT SELECT ON {tq} TO {user_q}`"),
            );
        }
        present.push((t.clone(), owns || superuser));
    }

    // The publication.
    let publication = sql
        .query_opt(
            "SELECT p.puballtables, pg_has_role(p.pubowner, 'USAGE') FROM pg_publication p WHERE p.pubname = $1",
            &[&config.publication],
        )
        .await
        .map_err(q)?;
    let pub_q = quote_ident(&config.publication);
    let to_add: Vec<&(TableId, bool)> = match &publication {
        None => {
            if !can_create {
                problem(
                    format!("role {user} lacks CREATE on database {database}, needed to create publication `{}`", config.publication),
                    format!("run `GRANT CREATE ON DATABASE {} TO {user_q}`, or create the publication yourself: `CREATE PUBLICATION {pub_q} FOR TABLE ...`", quote_ident(&database)),
                );
            }
            present.iter().collect()
        }
        Some(row) if row.get::<_, bool>(0) => Vec::new(),
        Some(row) => {
            let published: HashSet<TableId> = sql
                .query(
                    "SELECT schemaname::text, tablename::text FROM pg_publication_tables WHERE pubname = $1",
                    &[&config.publication],
                )
                .await
                .map_err(q)?
                .iter()
                .map(|r| TableId::new(r.get::<_, String>(0), r.get::<_, String>(1)))
                .collect();
            let missing: Vec<&(TableId, bool)> = present
                .iter()
                .filter(|(t, _)| !published.contains(t))
                .collect();
            if !missing.is_empty() && !row.get::<_, bool>(1) && !superuser {
                problem(
                    format!(
                        "publication `{}` lacks tables and role {user} does not own it",
                        config.publication
                    ),
                    format!(
                        "as its owner run `ALTER PUBLICATION {pub_q} ADD TABLE {}`",
                        missing
                            .iter()
                            .map(|(t, _)| quote_table(t))
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                );
            }
            missing
        }
    };
    for (t, owned) in to_add {
        if !owned {
            problem(
                format!("role {user} does not own table {t}, which must be added to publication `{}`", config.publication),
                format!("run `ALTER PUBLICATION {pub_q} ADD TABLE {}` as the table's owner (create the publication first if needed), or make {user} the owner", quote_table(t)),
            );
        }
    }

    // The slot.
    if let Some(info) = &slot {
        if info.plugin.as_deref() != Some("pgoutput") {
            problem(
                format!("replication slot `{}` exists but is not a pgoutput logical slot", config.slot),
                format!("drop it (`SELECT pg_drop_replication_slot('{}')`) or configure another slot name", config.slot.replace('\'', "''")),
            );
        } else if info.database.as_deref() != Some(database.as_str()) {
            problem(
                format!(
                    "replication slot `{}` belongs to database {}",
                    config.slot,
                    info.database.clone().unwrap_or_default()
                ),
                "configure another slot name for this store".into(),
            );
        }
        if info.wal_status.as_deref() == Some("lost") {
            problem(
                format!("replication slot `{}` was invalidated: the WAL it needed is gone", config.slot),
                "drop the slot and re-snapshot the tables; raise max_slot_wal_keep_size to avoid it".into(),
            );
        }
        if info.active {
            tracing::debug!(slot = %config.slot, "slot is active (the agent may be running)");
        }
    }

    // The replication connection itself.
    match ReplicationClient::connect(&pg_config, None, crate::tls::client_config(store, &config.tls)?).await {
        Ok(mut client) => {
            if let Err(err) = client.identify_system().await {
                let err = from_replication(store, "IDENTIFY_SYSTEM", err);
                problem(err.message.clone(), err.hint.clone().unwrap_or_default());
            }
        }
        Err(ReplicationError::Server(e)) if e.code == "28000" => problem(
            format!("pg_hba.conf refuses the replication connection (replication=database) of role {user} to database {database}"),
            format!("add a line such as `host {database} {user} <client address>/32 scram-sha-256` to pg_hba.conf (a logical replication connection matches on the database name, not `replication`) and run `SELECT pg_reload_conf()`"),
        ),
        Err(ReplicationError::Server(e)) if e.code == "42501" => {
            if can_replicate {
                problem(
                    format!("the replication connection is refused: {}", e.message),
                    format!("run `ALTER ROLE {user_q} REPLICATION` as a superuser"),
                );
            }
        }
        Err(err) => {
            let err = from_replication(store, "open replication connection", err);
            if err.is_transient() {
                return Err(err);
            }
            let fix = err.hint.clone().unwrap_or_else(|| {
                "check that the server accepts replication connections for this user".into()
            });
            problem(err.message, fix);
        }
    }
    Ok(problems)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(confirmed_means_applied: bool) -> PgSourceConfig {
        PgSourceConfig {
            store: "crm".into(),
            url: "postgres://localhost/crm".into(),
            password: None,
            slot: "callosum_crm".into(),
            publication: "callosum_crm".into(),
            tables: Vec::new(),
            echo_origins: Default::default(),
            confirmed_means_applied,
            tls: Default::default(),
        }
    }

    #[test]
    fn unlimited_slot_retention_is_advised_against_with_the_acknowledge_rule_named() {
        let advice = slot_retention_advice(&config(true), "-1").unwrap();
        assert_eq!(advice.store, "crm");
        assert!(advice.risk.contains("callosum_crm"), "{}", advice.risk);
        assert!(advice.risk.contains("\"applied\""), "{}", advice.risk);
        assert!(
            advice.advice.contains("max_slot_wal_keep_size"),
            "{}",
            advice.advice
        );
        let logged = slot_retention_advice(&config(false), "-1").unwrap();
        assert!(logged.risk.contains("\"logged\""), "{}", logged.risk);
    }

    #[test]
    fn a_capped_slot_retention_needs_no_advice() {
        assert_eq!(slot_retention_advice(&config(true), "50GB"), None);
        assert_eq!(slot_retention_advice(&config(true), "1024MB"), None);
    }
}
