//! A pipeline's sink behind its table maps: every batch the apply loop,
//! a large transaction's chunks or a dead-letter replay hands the sink is
//! turned into changes of the target tables first
//! ([`callosum_api::table_map`]), so no path reaches the target unmapped.
//! The apply loop, the dead-letter queue and its replay keep working on
//! the source's events: a dead letter holds what the source wrote, and a
//! replay maps it again (with the map as configured then: a word added to
//! `values` after a refusal applies on replay).

use callosum_api::table_map::{TableMap, TableMaps};
use callosum_api::{ChangeEvent, ConnectorError, Position, Sink, TableId};

/// `inner` with the pipeline's maps in front; without maps (mirror mode)
/// every call goes straight through.
#[derive(Debug)]
pub struct MappedSink<K> {
    inner: K,
    maps: Option<TableMaps>,
    /// The target changes of the batch being applied, reused.
    mapped: Vec<ChangeEvent>,
}

impl<K: Sink> MappedSink<K> {
    /// `maps` empty: mirror mode.
    pub fn new(inner: K, maps: Vec<TableMap>) -> Self {
        Self {
            inner,
            maps: (!maps.is_empty()).then(|| TableMaps::new(maps)),
            mapped: Vec::new(),
        }
    }
}

impl<K: Sink> Sink for MappedSink<K> {
    async fn checkpoint(&mut self) -> Result<Option<Position>, ConnectorError> {
        self.inner.checkpoint().await
    }

    async fn begin(&mut self, checkpoint: &Position) -> Result<(), ConnectorError> {
        self.inner.begin(checkpoint).await
    }

    async fn apply(&mut self, events: &[ChangeEvent]) -> Result<(), ConnectorError> {
        let Some(maps) = &mut self.maps else {
            return self.inner.apply(events).await;
        };
        self.mapped.clear();
        if let Err(err) = maps.transform(events, &mut self.mapped) {
            // the contract: an error leaves no target transaction open
            let _ = self.inner.rollback().await;
            return Err(err);
        }
        let result = self.inner.apply(&self.mapped).await;
        self.mapped.clear();
        result
    }

    async fn commit(&mut self) -> Result<(), ConnectorError> {
        self.inner.commit().await
    }

    async fn rollback(&mut self) -> Result<(), ConnectorError> {
        self.inner.rollback().await
    }

    // dead letters are stored as the source's events: passed through
    async fn store_dead_letter_part(
        &mut self,
        id: u64,
        part: u32,
        payload: &[u8],
    ) -> Result<(), ConnectorError> {
        self.inner.store_dead_letter_part(id, part, payload).await
    }

    async fn remove_dead_letter(&mut self, id: u64) -> Result<(), ConnectorError> {
        self.inner.remove_dead_letter(id).await
    }

    async fn dead_letter_ids(&mut self) -> Result<Vec<u64>, ConnectorError> {
        self.inner.dead_letter_ids().await
    }

    async fn dead_letter_part(
        &mut self,
        id: u64,
        part: u32,
    ) -> Result<Option<Vec<u8>>, ConnectorError> {
        self.inner.dead_letter_part(id, part).await
    }

    async fn discard_dead_letters(&mut self, ids: &[u64]) -> Result<(), ConnectorError> {
        self.inner.discard_dead_letters(ids).await
    }

    /// `tables` are source tables; the inner sink knows their targets.
    async fn refresh_targets(&mut self, tables: &[TableId]) -> Result<bool, ConnectorError> {
        match &self.maps {
            None => self.inner.refresh_targets(tables).await,
            Some(maps) => {
                let targets: Vec<TableId> = tables
                    .iter()
                    .filter_map(|t| maps.target_of(t).cloned())
                    .collect();
                self.inner.refresh_targets(&targets).await
            }
        }
    }
}
