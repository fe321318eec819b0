//! The pipeline's dead letters in `public.callosum_dead_letter`
//! ([`DEAD_LETTER_TABLE`]): created with the checkpoint table, written and
//! deleted inside the sink's target transactions, read and discarded outside
//! them. The payload is the agent's opaque bytes.

use super::*;
use callosum_api::{dead_letter_owner, DEAD_LETTER_TABLE, MAX_DEAD_LETTER_PART_BYTES};

/// The dead-letter table's id (beside the checkpoint table).
pub(crate) fn dead_letter_table() -> TableId {
    TableId::new(CHECKPOINT_SCHEMA, DEAD_LETTER_TABLE)
}

/// The DDL of the dead-letter table.
pub(crate) fn dead_letter_ddl() -> String {
    let mut ddl = String::from("CREATE TABLE IF NOT EXISTS ");
    push_table(&mut ddl, &dead_letter_table());
    ddl.push_str(
        " (pipeline text NOT NULL, id bigint NOT NULL, part integer NOT NULL, \
         payload bytea NOT NULL, PRIMARY KEY (pipeline, id, part))",
    );
    ddl
}

fn table_sql() -> String {
    let mut sql = String::new();
    push_table(&mut sql, &dead_letter_table());
    sql
}

/// Ids and parts are stored as the signed types of the table.
fn as_i64(id: u64) -> i64 {
    i64::try_from(id).unwrap_or(i64::MAX)
}

impl PgSink {
    fn dead_letter_owner(&self) -> &str {
        dead_letter_owner(&self.config.pipeline)
    }

    fn outside_transaction(&self, what: &str) -> Result<(), ConnectorError> {
        if self.in_transaction {
            return Err(ConnectorError::new(
                ErrorKind::Protocol,
                format!(
                    "{what} called inside a transaction for pipeline `{}`",
                    self.config.pipeline
                ),
            ));
        }
        Ok(())
    }

    fn inside_transaction(&self, what: &str) -> Result<(), ConnectorError> {
        if !self.in_transaction {
            return Err(ConnectorError::new(
                ErrorKind::Protocol,
                format!(
                    "{what} called outside a transaction for pipeline `{}`",
                    self.config.pipeline
                ),
            ));
        }
        Ok(())
    }

    pub(super) async fn store_part(
        &mut self,
        id: u64,
        part: u32,
        payload: &[u8],
    ) -> Result<(), ConnectorError> {
        self.inside_transaction("store_dead_letter_part")?;
        if payload.len() > MAX_DEAD_LETTER_PART_BYTES {
            self.abort().await;
            return Err(ConnectorError::new(
                ErrorKind::Internal,
                format!(
                    "a part of dead letter #{id} of pipeline `{}` holds {} bytes, more than {MAX_DEAD_LETTER_PART_BYTES}",
                    self.config.pipeline,
                    payload.len()
                ),
            ));
        }
        let sql = format!(
            "INSERT INTO {} (pipeline, id, part, payload) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (pipeline, id, part) DO UPDATE SET payload = EXCLUDED.payload",
            table_sql()
        );
        let part = part as i32;
        let result = self
            .conn
            .client
            .execute(
                &sql,
                &[&self.dead_letter_owner(), &as_i64(id), &part, &payload],
            )
            .await
            .map_err(|e| from_sql_without_values(&self.config.store, "store a dead letter", e));
        if result.is_err() {
            self.abort().await;
        }
        result.map(drop)
    }

    pub(super) async fn remove_entry(&mut self, id: u64) -> Result<(), ConnectorError> {
        self.inside_transaction("remove_dead_letter")?;
        let sql = format!(
            "DELETE FROM {} WHERE pipeline = $1 AND id = $2",
            table_sql()
        );
        let result = self
            .conn
            .client
            .execute(&sql, &[&self.dead_letter_owner(), &as_i64(id)])
            .await
            .map_err(|e| from_sql_without_values(&self.config.store, "remove a dead letter", e));
        if result.is_err() {
            self.abort().await;
        }
        result.map(drop)
    }

    pub(super) async fn entry_ids(&mut self) -> Result<Vec<u64>, ConnectorError> {
        self.outside_transaction("dead_letter_ids")?;
        let sql = format!(
            "SELECT DISTINCT id FROM {} WHERE pipeline = $1 ORDER BY id",
            table_sql()
        );
        let rows = self
            .conn
            .client
            .query(&sql, &[&self.dead_letter_owner()])
            .await
            .map_err(|e| from_sql_without_values(&self.config.store, "list dead letters", e))?;
        Ok(rows
            .iter()
            .map(|r| r.get::<_, i64>(0).max(0) as u64)
            .collect())
    }

    pub(super) async fn entry_part(
        &mut self,
        id: u64,
        part: u32,
    ) -> Result<Option<Vec<u8>>, ConnectorError> {
        self.outside_transaction("dead_letter_part")?;
        let sql = format!(
            "SELECT payload FROM {} WHERE pipeline = $1 AND id = $2 AND part = $3",
            table_sql()
        );
        let row = self
            .conn
            .client
            .query_opt(
                &sql,
                &[&self.dead_letter_owner(), &as_i64(id), &(part as i32)],
            )
            .await
            .map_err(|e| from_sql_without_values(&self.config.store, "read a dead letter", e))?;
        Ok(row.map(|r| r.get::<_, Vec<u8>>(0)))
    }

    pub(super) async fn discard_entries(&mut self, ids: &[u64]) -> Result<(), ConnectorError> {
        self.outside_transaction("discard_dead_letters")?;
        if ids.is_empty() {
            return Ok(());
        }
        let sql = format!(
            "DELETE FROM {} WHERE pipeline = $1 AND id = ANY($2)",
            table_sql()
        );
        let ids: Vec<i64> = ids.iter().map(|&id| as_i64(id)).collect();
        self.conn
            .client
            .execute(&sql, &[&self.dead_letter_owner(), &ids])
            .await
            .map_err(|e| from_sql_without_values(&self.config.store, "discard dead letters", e))
            .map(drop)
    }
}
