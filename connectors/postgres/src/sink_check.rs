//! `callosum check` for a PostgreSQL target: what [`crate::PgSink`] needs
//! that is missing, each with its fix.

use callosum_api::{CheckProblem, ConnectorError, TableId};

use crate::replication::quote_ident;
use crate::sink::{
    checkpoint_ddl, checkpoint_table, dead_letter_ddl, dead_letter_table, open, push_table,
    read_table, PgSinkConfig,
};

/// Checks a target before a pipeline runs and returns every problem found
/// (empty when all is well), each with its fix:
/// - every target table exists, has a primary key and holds every source
///   column (`source_columns` lists the source tables' column names where
///   known, keyed by source table; tables not listed are checked for
///   existence and key only);
/// - the role may create `public.callosum_checkpoint` (`CREATE` on schema
///   `public`) or, when it exists, `SELECT`, `INSERT` and `UPDATE` it;
///   likewise `public.callosum_dead_letter`, which it also `DELETE`s from;
/// - the role has `USAGE` on each target schema and `SELECT`, `INSERT`,
///   `UPDATE`, `DELETE` and `TRUNCATE` on each target table;
/// - where target tables take part in foreign keys, the role may set
///   `session_replication_role` (otherwise a batch applied as its net
///   effect can violate a foreign key).
///
/// Returns `Err` only when the store cannot be reached or queried at all;
/// authentication and url problems are reported as problems. Changes
/// nothing in the database.
pub async fn check_target(
    config: &PgSinkConfig,
    source_columns: &[(TableId, Vec<String>)],
) -> Result<Vec<CheckProblem>, ConnectorError> {
    let store = config.store.as_str();
    let mut problems = Vec::new();
    let mut problem = |problem: String, fix: String| {
        problems.push(CheckProblem {
            store: store.to_string(),
            problem,
            fix,
        })
    };
    let (client, _task) = match open(config).await {
        Ok(c) => c,
        Err(err) => {
            let (what, fix) = crate::check::connect_problem(err)?;
            problem(what, fix);
            return Ok(problems);
        }
    };
    let q = |e| crate::error::from_sql_without_values(store, "check", e);
    let user: String = client
        .query_one("SELECT current_user::text", &[])
        .await
        .map_err(q)?
        .get(0);
    let role = quote_ident(&user);

    let checkpoint = checkpoint_table();
    let mut checkpoint_name = String::new();
    push_table(&mut checkpoint_name, &checkpoint);
    if read_table(&client, store, &checkpoint).await?.is_some() {
        let missing = missing_privileges(
            &client,
            store,
            &checkpoint_name,
            &["SELECT", "INSERT", "UPDATE"],
        )
        .await?;
        if !missing.is_empty() {
            let list = missing.join(", ");
            problem(
                format!("role {user} lacks {list} on `{checkpoint}`, which Callosum writes in every applied transaction"),
                format!("GRANT {list} ON {checkpoint_name} TO {role};"),
            );
        }
    } else {
        let may_create: bool = client
            .query_one(
                "SELECT has_schema_privilege($1, 'CREATE')",
                &[&checkpoint.namespace],
            )
            .await
            .map_err(q)?
            .get(0);
        if !may_create {
            problem(
                format!("role {user} may not create `{checkpoint}` (no CREATE on schema {})", checkpoint.namespace),
                format!(
                    "GRANT CREATE ON SCHEMA {} TO {role}; or create it as an administrator: {}; GRANT SELECT, INSERT, UPDATE ON {checkpoint_name} TO {role};",
                    quote_ident(&checkpoint.namespace),
                    checkpoint_ddl()
                ),
            );
        }
    }

    let dead_letters = dead_letter_table();
    let mut dead_letters_name = String::new();
    push_table(&mut dead_letters_name, &dead_letters);
    if read_table(&client, store, &dead_letters).await?.is_some() {
        let missing = missing_privileges(
            &client,
            store,
            &dead_letters_name,
            &["SELECT", "INSERT", "UPDATE", "DELETE"],
        )
        .await?;
        if !missing.is_empty() {
            let list = missing.join(", ");
            problem(
                format!("role {user} lacks {list} on `{dead_letters}`, which holds the pipelines' dead letters"),
                format!("GRANT {list} ON {dead_letters_name} TO {role};"),
            );
        }
    } else {
        let may_create: bool = client
            .query_one(
                "SELECT has_schema_privilege($1, 'CREATE')",
                &[&dead_letters.namespace],
            )
            .await
            .map_err(q)?
            .get(0);
        if !may_create {
            problem(
                format!("role {user} may not create `{dead_letters}` (no CREATE on schema {})", dead_letters.namespace),
                format!(
                    "GRANT CREATE ON SCHEMA {} TO {role}; or create it as an administrator: {}; GRANT SELECT, INSERT, UPDATE, DELETE ON {dead_letters_name} TO {role};",
                    quote_ident(&dead_letters.namespace),
                    dead_letter_ddl()
                ),
            );
        }
    }

    let mut has_foreign_keys = false;
    for (source, target) in &config.tables {
        let schema_usage: Option<bool> = client
            .query_one(
                "SELECT CASE WHEN EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1) \
                 THEN has_schema_privilege($1, 'USAGE') END",
                &[&target.namespace],
            )
            .await
            .map_err(q)?
            .get(0);
        match schema_usage {
            None => {
                problem(
                    format!("schema `{}` of target table `{target}` does not exist", target.namespace),
                    format!(
                        "CREATE SCHEMA {}; then create `{target}` with the columns and primary key of `{source}`",
                        quote_ident(&target.namespace)
                    ),
                );
                continue;
            }
            Some(false) => problem(
                format!("role {user} lacks USAGE on schema `{}`", target.namespace),
                format!(
                    "GRANT USAGE ON SCHEMA {} TO {role};",
                    quote_ident(&target.namespace)
                ),
            ),
            Some(true) => {}
        }
        let Some(table) = read_table(&client, store, target).await? else {
            problem(
                format!("target table `{target}` (for source `{source}`) does not exist"),
                format!("create `{target}` with the columns and primary key of `{source}`"),
            );
            continue;
        };
        let mut name = String::new();
        push_table(&mut name, target);
        if table.primary_key.is_empty() {
            problem(
                format!("target table `{target}` has no primary key"),
                format!("ALTER TABLE {name} ADD PRIMARY KEY (…the key columns of `{source}`…);"),
            );
        }
        if let Some((_, columns)) = source_columns.iter().find(|(t, _)| t == source) {
            let missing: Vec<String> = columns
                .iter()
                .filter(|c| !table.columns.iter().any(|t| &t.name == *c))
                .map(|c| format!("`{c}`"))
                .collect();
            if !missing.is_empty() {
                problem(
                    format!(
                        "target table `{target}` lacks column(s) {} of source `{source}`",
                        missing.join(", ")
                    ),
                    format!("ALTER TABLE {name} ADD COLUMN … for each missing column"),
                );
            }
        }
        let missing = missing_privileges(
            &client,
            store,
            &name,
            &["SELECT", "INSERT", "UPDATE", "DELETE", "TRUNCATE"],
        )
        .await?;
        if !missing.is_empty() {
            let list = missing.join(", ");
            problem(
                format!("role {user} lacks {list} on target table `{target}`"),
                format!("GRANT {list} ON {name} TO {role};"),
            );
        }
        let foreign_keys: bool = client
            .query_one(
                "SELECT EXISTS (SELECT 1 FROM pg_constraint WHERE contype = 'f' \
                 AND (conrelid = $1::text::regclass OR confrelid = $1::text::regclass))",
                &[&name],
            )
            .await
            .map_err(q)?
            .get(0);
        has_foreign_keys |= foreign_keys;
    }
    if has_foreign_keys
        && client
            .batch_execute("SET session_replication_role = replica; RESET session_replication_role")
            .await
            .is_err()
    {
        problem(
            format!(
                "target tables have foreign keys and role {user} may not set session_replication_role, so a batch applied as its net effect (deletes before inserts per table) can fail a foreign-key check"
            ),
            format!(
                "GRANT SET ON PARAMETER session_replication_role TO {role}; (PostgreSQL 15+; a superuser role has it), or drop the foreign keys between replicated target tables"
            ),
        );
    }
    Ok(problems)
}

/// Which of `privileges` the current role lacks on `table` (quoted name).
async fn missing_privileges(
    client: &tokio_postgres::Client,
    store: &str,
    table: &str,
    privileges: &[&'static str],
) -> Result<Vec<&'static str>, ConnectorError> {
    let mut missing = Vec::new();
    for privilege in privileges {
        let has: bool = client
            .query_one("SELECT has_table_privilege($1, $2)", &[&table, privilege])
            .await
            .map_err(|e| crate::error::from_sql_without_values(store, "check privileges", e))?
            .get(0);
        if !has {
            missing.push(*privilege);
        }
    }
    Ok(missing)
}
