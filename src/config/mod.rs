//! The agent's TOML configuration (design.md §4).
//!
//! Parsing is strict: every table rejects unknown keys, and the error names
//! the key with its line and column, e.g.
//!
//! ```text
//! config file callosum.toml: TOML parse error at line 12, column 1
//!    |
//! 12 | slto = "callosum_crm"
//!    | ^^^^
//! unknown field `slto`, expected one of `kind`, `url`, …
//! ```
//!
//! A key that exists but belongs to the other kind of store (`slot` in a
//! `kind = "mysql"` store) is reported with the line of its `[stores.<name>]`
//! header. [`Config::validate`] then checks what serde cannot (references
//! between tables, URL schemes, names) and reports every problem at once,
//! each with the key it is about.
//!
//! Secrets are resolved on demand by [`StoreConfig::password`] into a
//! [`Secret`], which never prints; `Debug` of a store prints its URL with the
//! password replaced by `***` (see [`redact_url`]).

use callosum_api::{TableId, TlsMode, TlsSettings};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};

mod lease;
mod pipeline;
mod secret;
mod store;
mod table_map;
#[cfg(test)]
mod tests;

pub use lease::*;
pub use pipeline::*;
pub use secret::*;
pub use store::*;
pub use table_map::*;

/// Port of the HTTP endpoint when `[http] listen` is not set; 9464 is the
/// port Prometheus exporters conventionally use for "custom" agents.
pub const DEFAULT_HTTP_PORT: u16 = 9464;

/// Default [`PipelineConfig::max_batch_events`]: about 0.1 s of apply at the
/// measured 40–80k rows/s, enough to amortise a target commit while keeping
/// target transactions short and memory bounded.
pub const DEFAULT_MAX_BATCH_EVENTS: usize = 5000;

/// PostgreSQL's default schema, used for bare table names and as the mirror
/// target of MySQL tables when a PostgreSQL store sets no `schema`.
pub const DEFAULT_POSTGRES_SCHEMA: &str = "public";

/// Prefix of the default replication slot and publication names.
const NAME_PREFIX: &str = "callosum_";

/// PostgreSQL's identifier length limit (NAMEDATALEN - 1), which applies to
/// slot names.
const MAX_SLOT_NAME_LEN: usize = 63;

/// Everything that can go wrong loading the configuration or resolving a
/// secret from it.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The config file could not be read.
    #[error("cannot read config file {}: {error}", path.display())]
    Read {
        path: PathBuf,
        error: std::io::Error,
    },

    /// The TOML is malformed, has an unknown key, misses a required key or
    /// has a value of the wrong type. `message` is the `toml` crate's report,
    /// which quotes the offending line.
    #[error("{origin}: {message}")]
    Parse {
        /// `config file <path>` or `config`.
        origin: String,
        /// 1-based line of the offending key or table, when known.
        line: Option<usize>,
        /// 1-based column, when known.
        column: Option<usize>,
        message: String,
    },

    /// The TOML parsed but [`Config::validate`] found problems.
    #[error("{}", format_problems(.0))]
    Invalid(Vec<ConfigProblem>),

    /// `password_env` names an environment variable that is not set.
    #[error("environment variable {var} named by password_env is not set (or is not valid unicode); export it before starting callosum or use password_file")]
    PasswordEnv { var: String },

    /// `password_file` could not be read.
    #[error("cannot read password_file {}: {error}", path.display())]
    PasswordFile {
        path: PathBuf,
        error: std::io::Error,
    },

    /// `[http] token_env` names an environment variable that is not set.
    #[error("environment variable {var} named by [http] token_env is not set (or is not valid unicode); export it before starting callosum or use token_file")]
    TokenEnv { var: String },

    /// `[http] token_file` could not be read, or is empty.
    #[error("cannot read [http] token_file {}: {reason}", path.display())]
    TokenFile { path: PathBuf, reason: String },

    /// `password_file` is empty (after trimming whitespace).
    #[error("password_file {} is empty; write the password into it", path.display())]
    EmptyPasswordFile { path: PathBuf },

    /// A store URL does not parse. The URL itself is not shown: it may hold a
    /// password.
    #[error("store url is not a valid URL: {reason}")]
    InvalidUrl { reason: String },

    /// A MySQL store URL names no database where one is needed.
    #[error("mysql url {url} names no database; write it as mysql://user@host:3306/<database>")]
    NoDatabase {
        /// The URL with its password redacted.
        url: String,
    },
}

/// One problem found by [`Config::validate`]: the key it is about
/// (`stores.crm.url`, `pipelines[0].from`) and what is wrong with it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigProblem {
    pub key: String,
    pub problem: String,
}

impl fmt::Display for ConfigProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.key, self.problem)
    }
}

fn format_problems(problems: &[ConfigProblem]) -> String {
    let mut out = format!(
        "invalid config: {} problem{}",
        problems.len(),
        if problems.len() == 1 { "" } else { "s" }
    );
    for p in problems {
        out.push_str("\n  - ");
        out.push_str(&p.to_string());
    }
    out
}

/// The whole configuration file.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Directory of the change log (sled) and other local state.
    pub data_dir: PathBuf,
    /// The HTTP endpoint; `[http]` may be omitted.
    #[serde(default)]
    pub http: HttpConfig,
    /// Stores by name (`[stores.<name>]`).
    #[serde(default)]
    pub stores: BTreeMap<String, StoreConfig>,
    /// Pipelines (`[[pipelines]]`), each from one store to another.
    #[serde(default)]
    pub pipelines: Vec<PipelineConfig>,
    /// `log_format`: how `callosum run` writes its log; default `text`.
    #[serde(default)]
    pub log_format: LogFormat,
    /// `[lease]`: active/standby agents on this config; without it the
    /// agent is alone and always active.
    #[serde(default)]
    pub lease: Option<LeaseConfig>,
}

/// `log_format`: lines for people (`text`, colour only at a terminal) or
/// one JSON object per line with the fields of its spans (`json`), for log
/// shippers.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

impl<'de> Deserialize<'de> for LogFormat {
    /// By hand, so that a wrong value names the key.
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let value = String::deserialize(deserializer)?;
        match value.as_str() {
            "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            other => Err(serde::de::Error::custom(format!(
                "invalid value {other:?} for key `log_format`: expected \"text\" or \"json\""
            ))),
        }
    }
}

/// `[http]`: where `/metrics`, `/healthz`, `/readyz` and `/status` are served.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    /// Address to listen on; default `127.0.0.1:9464`. Off loopback, the
    /// admin routes need a token (`token_env` or `token_file`).
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// Environment variable holding the admin token: the `/dlq` routes
    /// (row values, replay, discard) then need `Authorization: Bearer
    /// <token>`, and `callosum dlq` sends it.
    #[serde(default)]
    pub token_env: Option<String>,
    /// File holding the admin token (surrounding whitespace trimmed).
    #[serde(default)]
    pub token_file: Option<PathBuf>,
}

impl HttpConfig {
    /// The admin token, if one is configured. Never logged.
    pub fn admin_token(&self) -> Result<Option<Secret>, ConfigError> {
        secret::resolve_token(&self.token_env, &self.token_file)
    }
}

fn default_listen() -> SocketAddr {
    SocketAddr::from((Ipv4Addr::LOCALHOST, DEFAULT_HTTP_PORT))
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            listen: default_listen(),
            token_env: None,
            token_file: None,
        }
    }
}

impl Config {
    /// Reads, parses and validates the config file at `path`.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|error| ConfigError::Read {
            path: path.to_owned(),
            error,
        })?;
        parse(&text, format!("config file {}", path.display()))
    }

    /// Parses and validates a config from TOML text.
    pub fn from_toml(text: &str) -> Result<Config, ConfigError> {
        parse(text, "config".to_owned())
    }

    /// Checks what the TOML types cannot: references between stores and
    /// pipelines, names, URL schemes, exclusive keys and ranges. Returns
    /// every problem found, not just the first ([`ConfigError::Invalid`]).
    /// `[http]`: one source of the token; a listener other hosts can reach
    /// only with a token, because the `/dlq` routes show customer rows and
    /// change the queue.
    fn validate_http(&self, problems: &mut Problems) {
        let http = &self.http;
        if http.token_env.is_some() && http.token_file.is_some() {
            problems.push("http", "sets both token_env and token_file; keep one");
        }
        if http
            .token_env
            .as_deref()
            .is_some_and(|v| v.trim().is_empty())
        {
            problems.push(
                "http.token_env",
                "is empty; name the environment variable that holds the admin token",
            );
        }
        let tokenless = http.token_env.is_none() && http.token_file.is_none();
        if tokenless && !http.listen.ip().is_loopback() {
            problems.push(
                "http.listen",
                format!(
                    "{} is reachable from other hosts, and /dlq shows customer rows and replays or discards dead letters: set token_file (or token_env) in [http] so that those routes need `Authorization: Bearer <token>`, or listen on 127.0.0.1 (/metrics, /healthz, /readyz and /status stay open either way)",
                    http.listen
                ),
            );
        }
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut problems = Problems::default();
        if self.data_dir.as_os_str().is_empty() {
            problems.push(
                "data_dir",
                "is empty; set it to the directory that holds the change log, e.g. /var/lib/callosum",
            );
        }
        if self.stores.is_empty() {
            problems.push("stores", "no store defined; add a [stores.<name>] table");
        }
        for (name, store) in &self.stores {
            validate_store(name, store, &mut problems);
        }
        self.validate_http(&mut problems);
        if self.pipelines.is_empty() {
            problems.push(
                "pipelines",
                "no pipeline defined; add a [[pipelines]] table",
            );
        }
        let mut names: BTreeMap<&str, usize> = BTreeMap::new();
        for (i, pipeline) in self.pipelines.iter().enumerate() {
            let key = format!("pipelines[{i}]");
            if !is_simple_name(&pipeline.name) {
                problems.push(
                    format!("{key}.name"),
                    format!(
                        "`{}` is not a valid pipeline name; use only a-z, 0-9 and _ (it names the checkpoint row and the metric label)",
                        pipeline.name
                    ),
                );
            }
            if let Some(first) = names.insert(&pipeline.name, i) {
                names.insert(&pipeline.name, first);
                problems.push(
                    format!("{key}.name"),
                    format!(
                        "`{}` is also the name of pipelines[{first}]; pipeline names must be unique",
                        pipeline.name
                    ),
                );
            }
            self.validate_pipeline(&key, pipeline, &mut problems);
        }
        if let Some(lease) = &self.lease {
            lease.validate(&self.stores, &mut problems);
            let sources: BTreeSet<&String> = self.pipelines.iter().map(|p| &p.from).collect();
            for name in sources {
                if let Some(StoreConfig::Postgres(pg)) = self.stores.get(name) {
                    if pg.acknowledge == Acknowledge::Logged {
                        problems.push(
                            format!("stores.{name}.acknowledge"),
                            "\"logged\" cannot be used with [lease]: a standby that takes over resumes from the targets' checkpoints, and the slot would already be confirmed past them; use \"applied\" (the default)",
                        );
                    }
                }
            }
        }
        problems.into_result()
    }

    fn validate_pipeline(&self, key: &str, pipeline: &PipelineConfig, problems: &mut Problems) {
        let defined = || {
            if self.stores.is_empty() {
                "none".to_owned()
            } else {
                self.stores.keys().cloned().collect::<Vec<_>>().join(", ")
            }
        };
        let from = self.stores.get(&pipeline.from);
        let to = self.stores.get(&pipeline.to);
        for (field, name, store) in [("from", &pipeline.from, from), ("to", &pipeline.to, to)] {
            if store.is_none() {
                problems.push(
                    format!("{key}.{field}"),
                    format!(
                        "store `{name}` is not defined (defined stores: {}); add [stores.{name}] or fix the name",
                        defined()
                    ),
                );
            }
        }
        if pipeline.from == pipeline.to {
            problems.push(
                format!("{key}.to"),
                format!(
                    "is the same store as `from` (`{}`); a pipeline replicates from one store to another",
                    pipeline.to
                ),
            );
        }
        if pipeline.tables.is_empty() && pipeline.maps.is_empty() {
            problems.push(
                format!("{key}.tables"),
                "is empty; list the tables to replicate, e.g. tables = [\"public.accounts\"], or add [[pipelines.maps]]",
            );
        }
        self.validate_maps(key, pipeline, problems);
        let mut seen = BTreeSet::new();
        for (j, table) in pipeline.tables.iter().enumerate() {
            let tkey = format!("{key}.tables[{j}]");
            let parts: Vec<&str> = table.split('.').collect();
            if parts.len() > 2 || parts.iter().any(|p| p.trim().is_empty()) {
                problems.push(
                    tkey,
                    format!("`{table}` is not a table name; write `schema.table`, `database.table` or a bare `table`"),
                );
                continue;
            }
            if !seen.insert(table.as_str()) {
                problems.push(tkey.clone(), format!("`{table}` is listed twice"));
            }
            if parts.len() == 1 {
                if let Some(StoreConfig::Mysql(m)) = from {
                    if m.database().is_none() {
                        problems.push(
                            tkey,
                            format!(
                                "bare table name `{table}` needs a database in the url of store `{}`; write `database.{table}` or add the database to the url",
                                pipeline.from
                            ),
                        );
                    }
                }
            }
        }
        if let Some(StoreConfig::Mysql(m)) = to {
            if m.database().is_none() {
                problems.push(
                    format!("{key}.to"),
                    format!(
                        "store `{}` is a mysql target but its url names no database, which mirror mode writes into; write its url as mysql://user@host:3306/<database>",
                        pipeline.to
                    ),
                );
            }
        }
        if pipeline.max_batch_events == 0 {
            problems.push(
                format!("{key}.max_batch_events"),
                format!("must be at least 1 (default {DEFAULT_MAX_BATCH_EVENTS})"),
            );
        }
    }
}

fn parse(text: &str, origin: String) -> Result<Config, ConfigError> {
    let config: Config = toml::from_str(text).map_err(|err| {
        let (line, column) = match err.span() {
            Some(span) => {
                let (l, c) = line_column(text, span.start);
                (Some(l), Some(c))
            }
            None => (None, None),
        };
        ConfigError::Parse {
            origin,
            line,
            column,
            message: err.to_string().trim_end().to_owned(),
        }
    })?;
    config.validate()?;
    Ok(config)
}

/// 1-based line and column (in characters) of byte `offset` in `text`.
fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    (line, before[line_start..].chars().count() + 1)
}

#[derive(Default)]
struct Problems(Vec<ConfigProblem>);

impl Problems {
    fn push(&mut self, key: impl Into<String>, problem: impl Into<String>) {
        self.0.push(ConfigProblem {
            key: key.into(),
            problem: problem.into(),
        });
    }

    fn into_result(self) -> Result<(), ConfigError> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(ConfigError::Invalid(self.0))
        }
    }
}

/// `[a-z0-9_]+`: pipeline and store names, which end up in checkpoint rows,
/// slot names and metric labels.
fn is_simple_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

impl Config {
    /// The pipelines writing into `store` whose writes its source keeps,
    /// tagged with their origin (pipeline name → its source store), instead
    /// of dropping them as echo: those that another pipeline reading
    /// `store` sends on to a third store (design.md §3: ERP changes applied
    /// to the CRM must still reach the warehouse). A write that every
    /// reader of `store` would send back to where it came from is dropped
    /// at the source, as between two stores.
    pub fn echo_origins(&self, store: &str) -> Vec<(String, String)> {
        self.pipelines
            .iter()
            .filter(|into| into.to == store)
            .filter(|into| {
                self.pipelines
                    .iter()
                    .any(|out| out.from == store && out.to != into.from)
            })
            .map(|into| (into.name.clone(), into.from.clone()))
            .collect()
    }
}
