//! `[[pipelines]]`: what is replicated from which store to which.

use super::*;

/// What a pipeline does with a transaction that can never apply.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnError {
    /// Store it in the dead-letter queue with its reason and go on.
    #[default]
    DeadLetter,
    /// Stop the pipeline until the operator intervenes.
    Halt,
}

impl OnError {
    /// The config spelling: `dead_letter` or `halt`.
    pub fn as_str(self) -> &'static str {
        match self {
            OnError::DeadLetter => "dead_letter",
            OnError::Halt => "halt",
        }
    }
}

/// `[[pipelines]]`: replicate `tables` from store `from` to store `to`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PipelineConfig {
    /// `[a-z0-9_]+`; names the checkpoint row and the metric label.
    pub name: String,
    /// Source store name.
    pub from: String,
    /// Target store name.
    pub to: String,
    /// Source tables mirrored into tables of the same name and columns,
    /// `schema.table` / `database.table`, or a bare name in the source
    /// store's default namespace. Empty when the pipeline has `maps`.
    #[serde(default)]
    pub tables: Vec<String>,
    /// `[[pipelines.maps]]`: each from one source table into one target
    /// table of other names and shape (README.md "Mapping"). A pipeline
    /// has either `tables` or `maps`.
    #[serde(default)]
    pub maps: Vec<TableMapConfig>,
    #[serde(default)]
    pub on_error: OnError,
    /// Most events applied in one target transaction (a larger source
    /// transaction is still applied whole, in chunks).
    #[serde(default = "default_max_batch_events")]
    pub max_batch_events: usize,
}

fn default_max_batch_events() -> usize {
    DEFAULT_MAX_BATCH_EVENTS
}

impl PipelineConfig {
    /// The source tables, bare names resolved in `from`'s default namespace.
    ///
    /// Call on a validated config: [`Config::validate`] rejects bare names
    /// when `from` is a MySQL store whose URL names no database (here they
    /// would get an empty namespace).
    /// With maps, the maps' source tables: a mapped pipeline reads
    /// exactly those.
    pub fn source_tables(&self, from: &StoreConfig) -> Vec<TableId> {
        let default_namespace = from.default_namespace().unwrap_or_default();
        if !self.maps.is_empty() {
            return self
                .maps
                .iter()
                .map(|m| TableId::parse(m.source.trim(), &default_namespace))
                .collect();
        }
        self.tables
            .iter()
            .map(|t| TableId::parse(t.trim(), &default_namespace))
            .collect()
    }

    /// Each source table with its mirror-mode target table (see
    /// [`mirror_table`]).
    pub fn table_mapping(&self, from: &StoreConfig, to: &StoreConfig) -> Vec<(TableId, TableId)> {
        self.source_tables(from)
            .into_iter()
            .map(|source| {
                let target = mirror_table(&source, from, to);
                (source, target)
            })
            .collect()
    }
}

/// The mirror-mode target of source table `source` of store `from`, in
/// store `to`: same table name, and as namespace
/// - into MySQL: the target URL's database (whatever the source engine);
/// - PostgreSQL → PostgreSQL: the source schema;
/// - MySQL → PostgreSQL: the target's `schema`, or `public`.
///
/// Call on a validated config: [`Config::validate`] rejects a MySQL target
/// whose URL names no database (here the source namespace would be kept).
pub fn mirror_table(source: &TableId, from: &StoreConfig, to: &StoreConfig) -> TableId {
    match (from, to) {
        (_, StoreConfig::Mysql(target)) => TableId::new(
            target
                .database()
                .unwrap_or_else(|| source.namespace.clone()),
            source.name.clone(),
        ),
        (StoreConfig::Postgres(_), StoreConfig::Postgres(_)) => source.clone(),
        (StoreConfig::Mysql(_), StoreConfig::Postgres(target)) => {
            TableId::new(target.default_namespace(), source.name.clone())
        }
    }
}
