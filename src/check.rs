//! `callosum check`: validates the config (done by loading it), connects to
//! every store and lists every missing prerequisite with its fix.

use callosum_api::{CheckAdvice, CheckProblem, ConnectorError, TableId};
use std::collections::{BTreeMap, BTreeSet};
use std::process::ExitCode;

use crate::agent::{sink_config, source_config, SinkConfig, SourceConfig};
use crate::config::{Config, StoreConfig};

/// Runs the check and prints the result: exit 0 when nothing is wrong, 1
/// listing every problem otherwise. Advice (a risk, not a problem) is
/// printed either way and does not change the exit code.
pub async fn run(config: &Config) -> ExitCode {
    let (problems, advice) = report(config).await;
    if !advice.is_empty() {
        println!("{} piece(s) of advice:\n", advice.len());
        for advice in &advice {
            println!("{advice}\n");
        }
    }
    if problems.is_empty() {
        println!(
            "ok: {} store(s) and {} pipeline(s) are ready to replicate",
            config.stores.len(),
            config.pipelines.len()
        );
        return ExitCode::SUCCESS;
    }
    println!("{} problem(s) found:\n", problems.len());
    for problem in &problems {
        println!("{problem}\n");
    }
    ExitCode::FAILURE
}

/// Every problem of every store and pipeline; never stops at the first.
pub async fn problems(config: &Config) -> Vec<CheckProblem> {
    report(config).await.0
}

/// Every problem and every piece of advice of every store and pipeline.
pub async fn report(config: &Config) -> (Vec<CheckProblem>, Vec<CheckAdvice>) {
    let mut problems = Vec::new();
    let mut advice = Vec::new();
    let mut tables_by_store: BTreeMap<&str, BTreeSet<TableId>> = BTreeMap::new();
    for pipeline in &config.pipelines {
        tables_by_store
            .entry(pipeline.from.as_str())
            .or_default()
            .extend(pipeline.source_tables(&config.stores[&pipeline.from]));
    }
    let mut source_columns: BTreeMap<&str, Vec<(TableId, Vec<String>)>> = BTreeMap::new();
    // columns a MySQL/MariaDB source itself compares case-insensitively
    let mut source_insensitive: BTreeMap<&str, Vec<(TableId, Vec<String>)>> = BTreeMap::new();
    for (store, tables) in &tables_by_store {
        let store_config = &config.stores[*store];
        let tables: Vec<TableId> = tables.iter().cloned().collect();
        match source_config(store, store_config, tables.clone()) {
            Ok(SourceConfig::Postgres(source)) => {
                match callosum_postgres::check(&source).await {
                    Ok(found) => problems.extend(found),
                    Err(err) => problems.push(unreachable_store(store, store_config, &err)),
                }
                if let Ok(found) = callosum_postgres::advice(&source).await {
                    advice.extend(found);
                }
                if let Ok(columns) = postgres_columns(&source, &tables).await {
                    source_columns.insert(store, columns);
                }
            }
            Ok(SourceConfig::Mysql(source)) => {
                match callosum_mysql::check_source(&source).await {
                    Ok(found) => problems.extend(found),
                    Err(err) => problems.push(unreachable_store(store, store_config, &err)),
                }
                if let Ok((columns, insensitive)) = mysql_columns(&source, &tables).await {
                    source_columns.insert(store, columns);
                    source_insensitive.insert(store, insensitive);
                }
            }
            Err(err) => problems.push(CheckProblem {
                store: store.to_string(),
                problem: err.message.clone(),
                fix: err.hint.clone().unwrap_or_default(),
            }),
        }
    }
    for pipeline in &config.pipelines {
        let from = &config.stores[&pipeline.from];
        let to = &config.stores[&pipeline.to];
        match sink_config(pipeline, from, to) {
            Ok(sink) => {
                // a mapped pipeline's target tables take the maps' columns,
                // not the source's (checking maps against both catalogs is
                // not built yet: existence, keys and grants are checked)
                let columns = if pipeline.maps.is_empty() {
                    source_columns
                        .get(pipeline.from.as_str())
                        .cloned()
                        .unwrap_or_default()
                } else {
                    Vec::new()
                };
                let found = match &sink {
                    SinkConfig::Mysql(sink) => {
                        let insensitive = source_insensitive
                            .get(pipeline.from.as_str())
                            .cloned()
                            .unwrap_or_default();
                        match callosum_mysql::check_target(sink, &columns).await {
                            Ok(mut found) => {
                                match callosum_mysql::check_key_collations(sink, &insensitive).await
                                {
                                    Ok(keys) => found.extend(keys),
                                    Err(err) => {
                                        found.push(unreachable_store(&pipeline.to, to, &err))
                                    }
                                }
                                Ok(found)
                            }
                            Err(err) => Err(err),
                        }
                    }
                    SinkConfig::Postgres(sink) => {
                        callosum_postgres::check_target(sink, &columns).await
                    }
                };
                match found {
                    Ok(found) => problems.extend(found),
                    Err(err) => problems.push(unreachable_store(&pipeline.to, to, &err)),
                }
            }
            Err(err) => problems.push(CheckProblem {
                store: pipeline.to.clone(),
                problem: err.message.clone(),
                fix: err.hint.clone().unwrap_or_default(),
            }),
        }
    }
    advice.extend(clear_text_advice(config));
    // one problem per unreachable store is enough
    let mut seen = BTreeSet::new();
    problems.retain(|p| seen.insert((p.store.clone(), p.problem.clone())));
    (problems, advice)
}

/// A store reached over the network with `tls = "disable"`: its password
/// and rows cross the network in clear.
fn clear_text_advice(config: &Config) -> Vec<CheckAdvice> {
    config
        .stores
        .iter()
        .filter(|(_, store)| !store.tls().enabled())
        .filter_map(|(name, store)| {
            let url = url::Url::parse(store.url()).ok()?;
            let host = url.host_str()?.trim_start_matches('[').trim_end_matches(']');
            let local = host == "localhost"
                || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback());
            (!local).then(|| CheckAdvice {
                store: name.clone(),
                risk: format!(
                    "the connections to {host} are not encrypted (tls = \"disable\"): the password and every replicated row cross the network in clear"
                ),
                advice: "turn TLS on in the server and set tls = \"verify-full\" with tls_ca_file in the store".into(),
            })
        })
        .collect()
}

fn unreachable_store(name: &str, store: &StoreConfig, err: &ConnectorError) -> CheckProblem {
    CheckProblem {
        store: name.to_string(),
        problem: format!("cannot check {} at {}: {err}", store.kind(), store.redacted_url()),
        fix: err.hint.clone().unwrap_or_else(|| {
            "check that the server is running, the url and password are right, and the user may connect".to_string()
        }),
    }
}

/// The column names of the captured tables, for the target's column check.
async fn postgres_columns(
    source: &callosum_postgres::PgSourceConfig,
    tables: &[TableId],
) -> Result<Vec<(TableId, Vec<String>)>, ConnectorError> {
    let (client, _connection) = callosum_postgres::source::connect_sql(source).await?;
    let mut out = Vec::new();
    for table in tables {
        let rows = client
            .query(
                "SELECT column_name::text FROM information_schema.columns
                  WHERE table_schema = $1 AND table_name = $2 ORDER BY ordinal_position",
                &[&table.namespace, &table.name],
            )
            .await
            .map_err(|e| {
                callosum_postgres::error::from_sql(&source.store, "read the columns", e)
            })?;
        if !rows.is_empty() {
            out.push((table.clone(), rows.iter().map(|r| r.get(0)).collect()));
        }
    }
    Ok(out)
}

type TableColumns = Vec<(TableId, Vec<String>)>;

/// The column names of captured MySQL/MariaDB tables, and those of their
/// columns that compare case- or accent-insensitively.
async fn mysql_columns(
    source: &callosum_mysql::MySqlSourceConfig,
    tables: &[TableId],
) -> Result<(TableColumns, TableColumns), ConnectorError> {
    use mysql_async::prelude::Queryable;
    let failed = |e| callosum_mysql::classify(e, &source.store, "reading the columns");
    let mut conn = callosum_mysql::connect_sql(source).await?;
    let mut out = Vec::new();
    let mut insensitive = Vec::new();
    for table in tables {
        let columns: Vec<(String, Option<String>)> = conn
            .exec(
                "SELECT COLUMN_NAME, COLLATION_NAME FROM information_schema.COLUMNS
                  WHERE TABLE_SCHEMA = ? AND TABLE_NAME = ? ORDER BY ORDINAL_POSITION",
                (&table.namespace, &table.name),
            )
            .await
            .map_err(failed)?;
        if !columns.is_empty() {
            let merged = columns
                .iter()
                .filter(|(_, c)| {
                    c.as_deref()
                        .is_some_and(callosum_mysql::keys::collation_merges_case)
                })
                .map(|(name, _)| name.clone())
                .collect();
            insensitive.push((table.clone(), merged));
            out.push((table.clone(), columns.into_iter().map(|(n, _)| n).collect()));
        }
    }
    conn.disconnect().await.map_err(failed)?;
    Ok((out, insensitive))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_connections_over_the_network_are_advised_against() {
        let config = |crm_host: &str, crm_tls: &str| {
            Config::from_toml(&format!(
                r#"data_dir = "/tmp/callosum"
[stores.crm]
kind = "postgres"
url = "postgres://callosum@{crm_host}:5432/crm"
{crm_tls}
[stores.erp]
kind = "mysql"
url = "mysql://callosum@127.0.0.1:3306/erp"
server_id = 4201
[[pipelines]]
name = "crm_to_erp"
from = "crm"
to = "erp"
tables = ["public.accounts"]
"#
            ))
            .unwrap()
        };
        let advice = clear_text_advice(&config("crm.internal", ""));
        assert_eq!(advice.len(), 1, "{advice:?}");
        assert_eq!(advice[0].store, "crm");
        assert!(
            advice[0].risk.contains("crm.internal"),
            "{}",
            advice[0].risk
        );
        assert!(clear_text_advice(&config("crm.internal", "tls = \"require\"")).is_empty());
        assert!(clear_text_advice(&config("localhost", "")).is_empty());
        assert!(clear_text_advice(&config("[::1]", "")).is_empty());
    }
}
