//! The checkpoint audit: a trigger records every write of a target's
//! `callosum_checkpoint` row, in the same target transaction (so rolled-back
//! attempts leave nothing). Strictly increasing positions prove that no
//! source transaction was applied twice.

use callosum_api::Position;

/// Creates the checkpoint table (as the MariaDB sink would) with the audit.
pub async fn install_mysql(pool: &mysql_async::Pool) {
    for ddl in [
        "CREATE TABLE callosum_checkpoint (pipeline VARCHAR(255) NOT NULL PRIMARY KEY, source_position VARCHAR(255) NOT NULL, applied_at TIMESTAMP(6) NOT NULL, transactions BIGINT NOT NULL DEFAULT 0) ENGINE=InnoDB",
        "CREATE TABLE checkpoint_audit (seq BIGINT AUTO_INCREMENT PRIMARY KEY, pipeline VARCHAR(255), source_position VARCHAR(255)) ENGINE=InnoDB",
        "CREATE TRIGGER audit_insert AFTER INSERT ON callosum_checkpoint FOR EACH ROW INSERT INTO checkpoint_audit (pipeline, source_position) VALUES (NEW.pipeline, NEW.source_position)",
        "CREATE TRIGGER audit_update AFTER UPDATE ON callosum_checkpoint FOR EACH ROW INSERT INTO checkpoint_audit (pipeline, source_position) VALUES (NEW.pipeline, NEW.source_position)",
    ] {
        super::mysql_exec(pool, ddl).await;
    }
}

/// Creates `public.callosum_checkpoint` (as the PostgreSQL sink would) with
/// the audit; the trigger fires also under `session_replication_role =
/// replica`, which the sink uses like PostgreSQL's own apply workers.
pub async fn install_pg(pg: &tokio_postgres::Client) {
    pg.batch_execute(
        "CREATE TABLE callosum_checkpoint (pipeline text PRIMARY KEY, source_position text NOT NULL, applied_at timestamptz NOT NULL, transactions bigint NOT NULL DEFAULT 0);
         CREATE TABLE checkpoint_audit (seq bigserial PRIMARY KEY, source_position text);
         CREATE FUNCTION audit_checkpoint() RETURNS trigger LANGUAGE plpgsql AS
           $$ BEGIN INSERT INTO checkpoint_audit (source_position) VALUES (NEW.source_position); RETURN NEW; END $$;
         CREATE TRIGGER audit AFTER INSERT OR UPDATE ON callosum_checkpoint FOR EACH ROW EXECUTE FUNCTION audit_checkpoint();
         ALTER TABLE callosum_checkpoint ENABLE ALWAYS TRIGGER audit;",
    )
    .await
    .unwrap();
}

pub async fn mysql_positions(pool: &mysql_async::Pool) -> Vec<String> {
    super::mysql_rows(
        pool,
        "SELECT source_position FROM checkpoint_audit ORDER BY seq",
    )
    .await
    .into_iter()
    .map(|row| row[0].clone().unwrap())
    .collect()
}

pub async fn pg_positions(pg: &tokio_postgres::Client) -> Vec<String> {
    pg.query(
        "SELECT source_position FROM checkpoint_audit ORDER BY seq",
        &[],
    )
    .await
    .unwrap()
    .iter()
    .map(|row| row.get(0))
    .collect()
}

/// Panics unless every recorded checkpoint is above the one before it.
pub fn assert_strictly_increasing(positions: &[String], context: &str) {
    let positions: Vec<Position> = positions.iter().map(|p| p.parse().unwrap()).collect();
    for pair in positions.windows(2) {
        assert!(
            pair[0] < pair[1],
            "checkpoint went from {} to {}: a transaction was applied twice ({context})",
            pair[0],
            pair[1]
        );
    }
}
