//! The pipeline's dead letters in `callosum_dead_letter`
//! ([`DEAD_LETTER_TABLE`], in the url's database beside the checkpoint
//! table): created on connect, written and deleted inside the sink's target
//! transactions, read and discarded outside them. The payload is the
//! agent's opaque bytes, sent as a prepared statement's parameter.

use super::*;
use callosum_api::{dead_letter_owner, DEAD_LETTER_TABLE, MAX_DEAD_LETTER_PART_BYTES};

/// The DDL of the dead-letter table in `database`.
pub(crate) fn dead_letter_ddl(database: &str) -> String {
    let mut ddl = String::from("CREATE TABLE IF NOT EXISTS ");
    push_table(&mut ddl, &TableId::new(database, DEAD_LETTER_TABLE));
    ddl.push_str(
        " (pipeline VARCHAR(255) NOT NULL, id BIGINT NOT NULL, part INT NOT NULL, \
         payload LONGBLOB NOT NULL, PRIMARY KEY (pipeline, id, part)) ENGINE=InnoDB",
    );
    ddl
}

impl MySqlSink {
    fn dead_letter_table_sql(&self) -> String {
        let mut sql = String::new();
        push_table(&mut sql, &TableId::new(&self.database, DEAD_LETTER_TABLE));
        sql
    }

    fn dead_letter_owner(&self) -> String {
        dead_letter_owner(&self.config.pipeline).to_owned()
    }

    fn require_transaction(&self, open: bool, what: &str) -> Result<(), ConnectorError> {
        if self.in_transaction != open {
            return Err(ConnectorError::new(
                ErrorKind::Protocol,
                format!(
                    "{what} called {} a transaction for pipeline `{}`",
                    if open { "outside" } else { "inside" },
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
        self.require_transaction(true, "store_dead_letter_part")?;
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
            "INSERT INTO {} (pipeline, id, part, payload) VALUES (?, ?, ?, ?) \
             ON DUPLICATE KEY UPDATE payload = VALUES(payload)",
            self.dead_letter_table_sql()
        );
        let params = (self.dead_letter_owner(), id, part, payload.to_vec());
        let result = self
            .conn
            .exec_drop(sql, params)
            .await
            .map_err(|e| classify(e, &self.config.store, "storing a dead letter"));
        if result.is_err() {
            self.abort().await;
        }
        result
    }

    pub(super) async fn remove_entry(&mut self, id: u64) -> Result<(), ConnectorError> {
        self.require_transaction(true, "remove_dead_letter")?;
        let sql = format!(
            "DELETE FROM {} WHERE pipeline = ? AND id = ?",
            self.dead_letter_table_sql()
        );
        let params = (self.dead_letter_owner(), id);
        let result = self
            .conn
            .exec_drop(sql, params)
            .await
            .map_err(|e| classify(e, &self.config.store, "removing a dead letter"));
        if result.is_err() {
            self.abort().await;
        }
        result
    }

    pub(super) async fn entry_ids(&mut self) -> Result<Vec<u64>, ConnectorError> {
        self.require_transaction(false, "dead_letter_ids")?;
        let sql = format!(
            "SELECT DISTINCT id FROM {} WHERE pipeline = ? ORDER BY id",
            self.dead_letter_table_sql()
        );
        let owner = self.dead_letter_owner();
        self.conn
            .exec::<u64, _, _>(sql, (owner,))
            .await
            .map_err(|e| classify(e, &self.config.store, "listing dead letters"))
    }

    pub(super) async fn entry_part(
        &mut self,
        id: u64,
        part: u32,
    ) -> Result<Option<Vec<u8>>, ConnectorError> {
        self.require_transaction(false, "dead_letter_part")?;
        let sql = format!(
            "SELECT payload FROM {} WHERE pipeline = ? AND id = ? AND part = ?",
            self.dead_letter_table_sql()
        );
        let params = (self.dead_letter_owner(), id, part);
        self.conn
            .exec_first::<Vec<u8>, _, _>(sql, params)
            .await
            .map_err(|e| classify(e, &self.config.store, "reading a dead letter"))
    }

    pub(super) async fn discard_entries(&mut self, ids: &[u64]) -> Result<(), ConnectorError> {
        self.require_transaction(false, "discard_dead_letters")?;
        if ids.is_empty() {
            return Ok(());
        }
        let list: Vec<String> = ids.iter().map(u64::to_string).collect();
        let sql = format!(
            "DELETE FROM {} WHERE pipeline = ? AND id IN ({})",
            self.dead_letter_table_sql(),
            list.join(",")
        );
        let owner = self.dead_letter_owner();
        self.conn
            .exec_drop(sql, (owner,))
            .await
            .map_err(|e| classify(e, &self.config.store, "discarding dead letters"))
    }
}
