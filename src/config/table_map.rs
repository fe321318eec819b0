//! `[[pipelines.maps]]`: a pipeline that carries rows from one table into
//! another with other names, a subset of the columns, value maps,
//! constants, a row filter and an external key (README.md "Mapping").
//!
//! Each map is checked as it is parsed, so a problem is reported with the
//! line and column of its `[[pipelines.maps]]` table (the filter parses,
//! no target column is written twice, a constant is not also a mapped
//! column, the key is carried); [`Config::validate`] then checks what
//! spans maps and stores (each source and each target table once per
//! pipeline, table names).

use super::*;
use callosum_api::table_map::{self, filter, ColumnRule, TableMap, Unmatched, ValueMap};
use callosum_api::Value;

/// `[[pipelines.maps]]`: one source table into one target table.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(try_from = "RawTableMap")]
pub struct TableMapConfig {
    /// Source table: `schema.table`, `database.table`, or a bare name in
    /// the source store's default namespace.
    pub source: String,
    /// Target table, likewise in the target store's default namespace.
    pub target: String,
    /// Row filter, SQL (`stage = 'won' AND amount > 0`).
    pub filter: Option<String>,
    pub unmatched: UnmatchedConfig,
    /// Target columns holding the source key; default: the renamed source
    /// key columns.
    pub key: Option<Vec<String>>,
    /// Source column → how it is carried; only these columns are.
    pub columns: BTreeMap<String, ColumnSpec>,
    /// Target column → the value it gets in every carried row.
    pub constants: BTreeMap<String, ConfigValue>,
    parsed_filter: Option<filter::Filter<String>>,
}

/// `unmatched`: what happens to a target row whose source row stops
/// matching `where`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UnmatchedConfig {
    /// Deleted (PostgreSQL's row-filter rule).
    #[default]
    Delete,
    /// Kept as last carried.
    Keep,
}

/// A constant or a value map's word: a TOML string, integer or boolean.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum ConfigValue {
    Bool(bool),
    Int(i64),
    Text(String),
}

impl ConfigValue {
    fn to_value(&self) -> Value {
        match self {
            ConfigValue::Bool(b) => Value::Bool(*b),
            ConfigValue::Int(i) => Value::Int(*i),
            ConfigValue::Text(s) => Value::Text(s.clone()),
        }
    }
}

/// How one source column is carried: `amount = "total"` (renamed), or
/// `stage = { to = "status", values = { won = "confirmed" }, default = "open" }`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum ColumnSpec {
    Rename(String),
    Mapped(MappedColumn),
}

#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MappedColumn {
    /// The target column; default: the source column's name.
    pub to: Option<String>,
    /// Source value (as text) → target value.
    #[serde(default)]
    pub values: BTreeMap<String, ConfigValue>,
    /// For source values not in `values`; without it such a value is
    /// refused (dead letter or halt).
    pub default: Option<ConfigValue>,
}

impl ColumnSpec {
    fn target<'a>(&'a self, source: &'a str) -> &'a str {
        match self {
            ColumnSpec::Rename(to) => to,
            ColumnSpec::Mapped(m) => m.to.as_deref().unwrap_or(source),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTableMap {
    source: String,
    target: String,
    #[serde(rename = "where")]
    filter: Option<String>,
    #[serde(default)]
    unmatched: UnmatchedConfig,
    key: Option<Vec<String>>,
    columns: BTreeMap<String, ColumnSpec>,
    #[serde(default)]
    constants: BTreeMap<String, ConfigValue>,
}

impl TryFrom<RawTableMap> for TableMapConfig {
    type Error = String;

    fn try_from(raw: RawTableMap) -> Result<Self, String> {
        let name = format!("map `{}` → `{}`", raw.source, raw.target);
        let parsed_filter = match &raw.filter {
            Some(text) => {
                Some(filter::parse(text).map_err(|err| format!("{name}: `where` {err}"))?)
            }
            None => None,
        };
        let config = TableMapConfig {
            source: raw.source,
            target: raw.target,
            filter: raw.filter,
            unmatched: raw.unmatched,
            key: raw.key,
            columns: raw.columns,
            constants: raw.constants,
            parsed_filter,
        };
        let probe = config.table_map(TableId::new("", ""), TableId::new("", ""));
        let problems: Vec<String> = probe.validate().iter().map(|p| p.to_string()).collect();
        if !problems.is_empty() {
            return Err(format!("{name}: {}", problems.join("; ")));
        }
        Ok(config)
    }
}

impl TableMapConfig {
    /// The map between these resolved tables.
    pub fn table_map(&self, source: TableId, target: TableId) -> TableMap {
        TableMap {
            source,
            target,
            filter: self.filter.clone().zip(self.parsed_filter.clone()),
            unmatched: match self.unmatched {
                UnmatchedConfig::Delete => Unmatched::Delete,
                UnmatchedConfig::Keep => Unmatched::Keep,
            },
            columns: self
                .columns
                .iter()
                .map(|(source, spec)| ColumnRule {
                    source: source.clone(),
                    target: spec.target(source).to_owned(),
                    values: match spec {
                        ColumnSpec::Rename(_) => None,
                        ColumnSpec::Mapped(m) if m.values.is_empty() && m.default.is_none() => None,
                        ColumnSpec::Mapped(m) => Some(ValueMap {
                            values: m
                                .values
                                .iter()
                                .map(|(k, v)| (k.clone(), v.to_value()))
                                .collect(),
                            default: m.default.as_ref().map(ConfigValue::to_value),
                        }),
                    },
                })
                .collect(),
            constants: self
                .constants
                .iter()
                .map(|(k, v)| (k.clone(), v.to_value()))
                .collect(),
            key: self.key.clone(),
        }
    }
}

impl PipelineConfig {
    /// The pipeline's maps with their tables resolved: a bare source name
    /// in `from`'s default namespace, a bare target name in `to`'s (for
    /// MySQL the URL's database, for PostgreSQL its `schema` or `public`).
    pub fn table_maps(&self, from: &StoreConfig, to: &StoreConfig) -> Vec<TableMap> {
        let source_ns = from.default_namespace().unwrap_or_default();
        let target_ns = to.default_namespace().unwrap_or_default();
        self.maps
            .iter()
            .map(|m| {
                m.table_map(
                    TableId::parse(m.source.trim(), &source_ns),
                    TableId::parse(m.target.trim(), &target_ns),
                )
            })
            .collect()
    }

    /// The tables the pipeline's sink writes, each with the table its
    /// events arrive under: in mirror mode each source table with its
    /// mirror target; with maps each target table with itself, since the
    /// map turns the source's events into events of the target table.
    pub fn sink_tables(&self, from: &StoreConfig, to: &StoreConfig) -> Vec<(TableId, TableId)> {
        if self.maps.is_empty() {
            self.table_mapping(from, to)
        } else {
            self.table_maps(from, to)
                .into_iter()
                .map(|m| (m.target.clone(), m.target))
                .collect()
        }
    }
}

impl Config {
    /// What [`Config::validate`] checks of a pipeline's maps beyond each
    /// map on its own.
    pub(super) fn validate_maps(
        &self,
        key: &str,
        pipeline: &PipelineConfig,
        problems: &mut Problems,
    ) {
        if pipeline.maps.is_empty() {
            return;
        }
        if !pipeline.tables.is_empty() {
            problems.push(
                format!("{key}.tables"),
                format!(
                    "pipeline `{}` has both `tables` (mirror mode) and `maps`; a pipeline either mirrors tables or carries maps: move the mirrored tables into a pipeline of their own",
                    pipeline.name
                ),
            );
        }
        let mut sources = BTreeMap::new();
        let mut targets = BTreeMap::new();
        for (j, map) in pipeline.maps.iter().enumerate() {
            let mkey = format!("{key}.maps[{j}]");
            for (field, table, store) in [
                ("source", &map.source, &pipeline.from),
                ("target", &map.target, &pipeline.to),
            ] {
                let parts: Vec<&str> = table.split('.').collect();
                if parts.len() > 2 || parts.iter().any(|p| p.trim().is_empty()) {
                    problems.push(
                        format!("{mkey}.{field}"),
                        format!("`{table}` is not a table name; write `schema.table`, `database.table` or a bare `table`"),
                    );
                } else if parts.len() == 1 {
                    if let Some(StoreConfig::Mysql(m)) = self.stores.get(store) {
                        if m.database().is_none() {
                            problems.push(
                                format!("{mkey}.{field}"),
                                format!("bare table name `{table}` needs a database in the url of store `{store}`; write `database.{table}`"),
                            );
                        }
                    }
                }
            }
            let (Some(from), Some(to)) = (
                self.stores.get(&pipeline.from),
                self.stores.get(&pipeline.to),
            ) else {
                continue;
            };
            let resolved = pipeline.table_maps(from, to).swap_remove(j);
            if let Some(first) = sources.insert(resolved.source.clone(), j) {
                problems.push(
                    format!("{mkey}.source"),
                    format!(
                        "pipeline `{}`: `{}` is also the source of maps[{first}]; map each source table once per pipeline (another target: another pipeline)",
                        pipeline.name, resolved.source
                    ),
                );
            }
            if let Some(first) = targets.insert(resolved.target.clone(), j) {
                problems.push(
                    format!("{mkey}.target"),
                    format!(
                        "pipeline `{}`: `{}` is also the target of maps[{first}]; each target table takes one map per pipeline",
                        pipeline.name, resolved.target
                    ),
                );
            }
        }
    }
}

/// Re-exported for the agent: the pure maps of a pipeline.
pub use table_map::TableMaps;

#[cfg(test)]
mod tests;
