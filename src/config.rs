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

use callosum_api::TableId;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};

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

/// A password or other secret. `Debug` and `Display` print `***`; call
/// [`Secret::expose`] at the one place the value is handed to a driver.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The secret value. Never log it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
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
}

/// `[http]`: where `/metrics`, `/healthz`, `/readyz` and `/status` are served.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    /// Address to listen on; default `127.0.0.1:9464` (local only: the
    /// endpoint has no authentication).
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
}

fn default_listen() -> SocketAddr {
    SocketAddr::from((Ipv4Addr::LOCALHOST, DEFAULT_HTTP_PORT))
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            listen: default_listen(),
        }
    }
}

/// `[stores.<name>]`: one database, selected by `kind`.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(try_from = "RawStore")]
pub enum StoreConfig {
    /// `kind = "postgres"`.
    Postgres(PostgresStore),
    /// `kind = "mysql"` (MySQL 8 or MariaDB 10.5+).
    Mysql(MysqlStore),
}

/// A PostgreSQL store.
#[derive(Clone, PartialEq, Eq)]
pub struct PostgresStore {
    /// `postgres://user[:password]@host:port/dbname`.
    pub url: String,
    /// Environment variable holding the password.
    pub password_env: Option<String>,
    /// File holding the password (surrounding whitespace is trimmed).
    pub password_file: Option<PathBuf>,
    /// Replication slot; default `callosum_<store>`.
    pub slot: Option<String>,
    /// Publication; default `callosum_<store>`.
    pub publication: Option<String>,
    /// Schema of bare table names and of mirrored MySQL tables; default
    /// `public`.
    pub schema: Option<String>,
}

/// A MySQL or MariaDB store.
#[derive(Clone, PartialEq, Eq)]
pub struct MysqlStore {
    /// `mysql://user[:password]@host:port/database`.
    pub url: String,
    /// Environment variable holding the password.
    pub password_env: Option<String>,
    /// File holding the password (surrounding whitespace is trimmed).
    pub password_file: Option<PathBuf>,
    /// Replica server id of the binlog connection; non-zero and unique among
    /// the server's replicas.
    pub server_id: u32,
    /// What a captured zero date (`0000-00-00`) becomes; default `error`.
    pub zero_dates: ZeroDates,
    /// The zone of the application's local times in `DATETIME` columns
    /// (`time_zone`, an IANA name); `None` is UTC, the default.
    pub time_zone: Option<chrono_tz::Tz>,
}

/// `zero_dates` of a MySQL store: what a zero date (`0000-00-00`, a zero
/// month or day) read from its binlog becomes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ZeroDates {
    /// A conversion error naming table and column. The default: silently
    /// turning data into NULL must be the operator's choice.
    #[default]
    Error,
    /// NULL (outside the primary key; a `NOT NULL` target column rejects it).
    Null,
}

impl<'de> Deserialize<'de> for ZeroDates {
    /// By hand, so that a wrong value names the key.
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let value = String::deserialize(deserializer)?;
        match value.as_str() {
            "error" => Ok(ZeroDates::Error),
            "null" => Ok(ZeroDates::Null),
            other => Err(serde::de::Error::custom(format!(
                "invalid value {other:?} for key `zero_dates`: expected \"error\" or \"null\""
            ))),
        }
    }
}

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
    /// Source tables, `schema.table` / `database.table`, or a bare name in
    /// the source store's default namespace.
    pub tables: Vec<String>,
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

/// The flat shape a `[stores.<name>]` table is read into, so that an unknown
/// key is reported at its own line (serde's internally tagged enums buffer
/// the table and lose the key's position).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStore {
    kind: StoreKind,
    url: String,
    password_env: Option<String>,
    password_file: Option<PathBuf>,
    slot: Option<String>,
    publication: Option<String>,
    schema: Option<String>,
    server_id: Option<u32>,
    zero_dates: Option<ZeroDates>,
    time_zone: Option<String>,
}

#[derive(Clone, Copy, Deserialize)]
#[serde(rename_all = "lowercase")]
enum StoreKind {
    Postgres,
    Mysql,
}

/// Fails naming every key that is set but belongs to the other kind of
/// store: `keys` pairs a key with whether it is set.
fn reject_misplaced(keys: &[(&str, bool)], why: &str) -> Result<(), String> {
    let misplaced: Vec<String> = keys
        .iter()
        .filter(|(_, set)| *set)
        .map(|(key, _)| format!("`{key}`"))
        .collect();
    if misplaced.is_empty() {
        return Ok(());
    }
    Err(format!("key {} {why}", misplaced.join(", ")))
}

impl TryFrom<RawStore> for StoreConfig {
    type Error = String;

    fn try_from(raw: RawStore) -> Result<Self, String> {
        match raw.kind {
            StoreKind::Postgres => {
                reject_misplaced(
                    &[
                        ("server_id", raw.server_id.is_some()),
                        ("zero_dates", raw.zero_dates.is_some()),
                        ("time_zone", raw.time_zone.is_some()),
                    ],
                    "applies only to kind = \"mysql\" stores; remove it from this kind = \"postgres\" store",
                )?;
                Ok(StoreConfig::Postgres(PostgresStore {
                    url: raw.url,
                    password_env: raw.password_env,
                    password_file: raw.password_file,
                    slot: raw.slot,
                    publication: raw.publication,
                    schema: raw.schema,
                }))
            }
            StoreKind::Mysql => {
                reject_misplaced(
                    &[
                        ("slot", raw.slot.is_some()),
                        ("publication", raw.publication.is_some()),
                        ("schema", raw.schema.is_some()),
                    ],
                    "applies only to kind = \"postgres\" stores; remove it from this kind = \"mysql\" store (its database is the one in the url)",
                )?;
                let server_id = raw.server_id.ok_or_else(|| {
                    "missing key `server_id` (required for kind = \"mysql\"): the replica id of the binlog connection, unique among the server's replicas, e.g. server_id = 4201"
                        .to_owned()
                })?;
                Ok(StoreConfig::Mysql(MysqlStore {
                    url: raw.url,
                    password_env: raw.password_env,
                    password_file: raw.password_file,
                    server_id,
                    zero_dates: raw.zero_dates.unwrap_or_default(),
                    time_zone: match &raw.time_zone {
                        Some(name) => callosum_mysql::parse_time_zone(name)
                            .map_err(|e| format!("invalid value for key `time_zone`: {e}"))?,
                        None => None,
                    },
                }))
            }
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
        if pipeline.tables.is_empty() {
            problems.push(
                format!("{key}.tables"),
                "is empty; list the tables to replicate, e.g. tables = [\"public.accounts\"]",
            );
        }
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

fn validate_store(name: &str, store: &StoreConfig, problems: &mut Problems) {
    let key = format!("stores.{name}");
    if !is_simple_name(name) {
        problems.push(
            key.clone(),
            format!("`{name}` is not a valid store name; use only a-z, 0-9 and _ (it names the default slot and publication and the metric label)"),
        );
    }
    let (url, password_env, password_file) = match store {
        StoreConfig::Postgres(s) => (&s.url, &s.password_env, &s.password_file),
        StoreConfig::Mysql(s) => (&s.url, &s.password_env, &s.password_file),
    };
    match url::Url::parse(url) {
        Err(err) => problems.push(
            format!("{key}.url"),
            format!(
                "is not a valid URL ({err}); write it as {}",
                store.url_example()
            ),
        ),
        Ok(parsed) => {
            let ok = match store {
                StoreConfig::Postgres(_) => matches!(parsed.scheme(), "postgres" | "postgresql"),
                StoreConfig::Mysql(_) => parsed.scheme() == "mysql",
            };
            if !ok {
                problems.push(
                    format!("{key}.url"),
                    format!(
                        "scheme `{}://` does not match kind = \"{}\"; write it as {}",
                        parsed.scheme(),
                        store.kind(),
                        store.url_example()
                    ),
                );
            }
            if parsed.password().is_some() && (password_env.is_some() || password_file.is_some()) {
                problems.push(
                    key.clone(),
                    "the url contains a password and password_env or password_file is set too; keep one",
                );
            }
        }
    }
    if password_env.is_some() && password_file.is_some() {
        problems.push(
            key.clone(),
            "sets both password_env and password_file; keep one",
        );
    }
    if password_env.as_deref().is_some_and(|v| v.trim().is_empty()) {
        problems.push(
            format!("{key}.password_env"),
            "is empty; name the environment variable that holds the password",
        );
    }
    match store {
        StoreConfig::Postgres(pg) => {
            let slot = pg.slot_name(name);
            let slot_ok = slot.len() <= MAX_SLOT_NAME_LEN && is_simple_name(&slot);
            if !slot_ok {
                let what = if pg.slot.is_some() {
                    format!("`{slot}` is not a valid replication slot name")
                } else {
                    format!("the default slot name `{slot}` is not valid")
                };
                problems.push(
                    format!("{key}.slot"),
                    format!("{what}; use at most {MAX_SLOT_NAME_LEN} characters of a-z, 0-9 and _"),
                );
            }
            if pg
                .publication
                .as_deref()
                .is_some_and(|p| p.trim().is_empty())
            {
                problems.push(
                    format!("{key}.publication"),
                    "is empty; remove it to use the default",
                );
            }
            if pg.schema.as_deref().is_some_and(|s| s.trim().is_empty()) {
                problems.push(
                    format!("{key}.schema"),
                    "is empty; remove it to use `public`",
                );
            }
        }
        StoreConfig::Mysql(my) => {
            if my.server_id == 0 {
                problems.push(
                    format!("{key}.server_id"),
                    "must be non-zero: pick a replica id unique among the server's replicas, e.g. 4201",
                );
            }
        }
    }
}

/// Decodes `%XX` escapes of a URL component. Invalid escapes are kept as is.
fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok();
            if let Some(b) = hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                out.push(b);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// `url` with the password (if any) replaced by `***`, safe to print. A URL
/// that does not parse is shown only if it cannot hold a password (no `@`).
pub fn redact_url(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut parsed) => {
            if parsed.password().is_some() && parsed.set_password(Some("***")).is_err() {
                return "<url not shown>".to_owned();
            }
            parsed.to_string()
        }
        Err(_) if !url.contains('@') => url.to_owned(),
        Err(_) => "<invalid url not shown>".to_owned(),
    }
}

/// The password inside `url`, percent-decoded, if there is one.
fn url_password(url: &str) -> Result<Option<Secret>, ConfigError> {
    let parsed = url::Url::parse(url).map_err(|err| ConfigError::InvalidUrl {
        reason: err.to_string(),
    })?;
    Ok(parsed.password().map(|p| Secret::new(percent_decode(p))))
}

/// The database (first path segment) of `url`, percent-decoded.
fn url_database(url: &str) -> Option<String> {
    let parsed = url::Url::parse(url).ok()?;
    let db = parsed.path().trim_start_matches('/');
    let db = db.split('/').next().unwrap_or_default();
    (!db.is_empty()).then(|| percent_decode(db))
}

fn resolve_password(
    url: &str,
    password_env: &Option<String>,
    password_file: &Option<PathBuf>,
) -> Result<Option<Secret>, ConfigError> {
    if let Some(var) = password_env {
        return std::env::var(var)
            .map(|v| Some(Secret::new(v)))
            .map_err(|_| ConfigError::PasswordEnv { var: var.clone() });
    }
    if let Some(path) = password_file {
        let text = std::fs::read_to_string(path).map_err(|error| ConfigError::PasswordFile {
            path: path.clone(),
            error,
        })?;
        let password = text.trim();
        if password.is_empty() {
            return Err(ConfigError::EmptyPasswordFile { path: path.clone() });
        }
        return Ok(Some(Secret::new(password)));
    }
    url_password(url)
}

impl StoreConfig {
    /// `postgres` or `mysql`, as spelled in `kind`.
    pub fn kind(&self) -> &'static str {
        match self {
            StoreConfig::Postgres(_) => "postgres",
            StoreConfig::Mysql(_) => "mysql",
        }
    }

    /// The URL as configured. May contain a password: never log it, log
    /// [`StoreConfig::redacted_url`] instead.
    pub fn url(&self) -> &str {
        match self {
            StoreConfig::Postgres(s) => &s.url,
            StoreConfig::Mysql(s) => &s.url,
        }
    }

    /// The URL with its password replaced by `***`.
    pub fn redacted_url(&self) -> String {
        redact_url(self.url())
    }

    /// The password: from `password_env` (the variable must be set), else
    /// from `password_file` (trimmed), else from the URL, else `None`.
    pub fn password(&self) -> Result<Option<Secret>, ConfigError> {
        match self {
            StoreConfig::Postgres(s) => resolve_password(&s.url, &s.password_env, &s.password_file),
            StoreConfig::Mysql(s) => resolve_password(&s.url, &s.password_env, &s.password_file),
        }
    }

    /// The namespace of bare table names: the PostgreSQL `schema` (default
    /// `public`) or the MySQL URL's database (an error if it has none).
    pub fn default_namespace(&self) -> Result<String, ConfigError> {
        match self {
            StoreConfig::Postgres(s) => Ok(s.default_namespace()),
            StoreConfig::Mysql(s) => s.default_namespace(),
        }
    }

    fn url_example(&self) -> &'static str {
        match self {
            StoreConfig::Postgres(_) => "postgres://user@host:5432/dbname",
            StoreConfig::Mysql(_) => "mysql://user@host:3306/database",
        }
    }
}

impl PostgresStore {
    /// The replication slot: `slot`, or `callosum_<store_name>`.
    pub fn slot_name(&self, store_name: &str) -> String {
        self.slot
            .clone()
            .unwrap_or_else(|| format!("{NAME_PREFIX}{store_name}"))
    }

    /// The publication: `publication`, or `callosum_<store_name>`.
    pub fn publication_name(&self, store_name: &str) -> String {
        self.publication
            .clone()
            .unwrap_or_else(|| format!("{NAME_PREFIX}{store_name}"))
    }

    /// `schema`, or `public`.
    pub fn default_namespace(&self) -> String {
        self.schema
            .clone()
            .unwrap_or_else(|| DEFAULT_POSTGRES_SCHEMA.to_owned())
    }

    /// The database named in the URL, if any (PostgreSQL then defaults to
    /// the user name).
    pub fn database(&self) -> Option<String> {
        url_database(&self.url)
    }

    /// The URL with its password replaced by `***`.
    pub fn redacted_url(&self) -> String {
        redact_url(&self.url)
    }
}

impl MysqlStore {
    /// The database named in the URL, if any.
    pub fn database(&self) -> Option<String> {
        url_database(&self.url)
    }

    /// The URL's database, the namespace of bare table names.
    pub fn default_namespace(&self) -> Result<String, ConfigError> {
        self.database().ok_or_else(|| ConfigError::NoDatabase {
            url: self.redacted_url(),
        })
    }

    /// The URL with its password replaced by `***`.
    pub fn redacted_url(&self) -> String {
        redact_url(&self.url)
    }
}

impl fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresStore")
            .field("url", &self.redacted_url())
            .field("password_env", &self.password_env)
            .field("password_file", &self.password_file)
            .field("slot", &self.slot)
            .field("publication", &self.publication)
            .field("schema", &self.schema)
            .finish()
    }
}

impl fmt::Debug for MysqlStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MysqlStore")
            .field("url", &self.redacted_url())
            .field("password_env", &self.password_env)
            .field("password_file", &self.password_file)
            .field("server_id", &self.server_id)
            .field("zero_dates", &self.zero_dates)
            .field("time_zone", &self.time_zone)
            .finish()
    }
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

impl PipelineConfig {
    /// The source tables, bare names resolved in `from`'s default namespace.
    ///
    /// Call on a validated config: [`Config::validate`] rejects bare names
    /// when `from` is a MySQL store whose URL names no database (here they
    /// would get an empty namespace).
    pub fn source_tables(&self, from: &StoreConfig) -> Vec<TableId> {
        let default_namespace = from.default_namespace().unwrap_or_default();
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

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = include_str!("../deploy/callosum.example.toml");

    /// A valid two-store, one-pipeline config with `extra` appended.
    fn base(extra: &str) -> String {
        format!(
            r#"data_dir = "/tmp/callosum"

[stores.crm]
kind = "postgres"
url = "postgres://callosum@127.0.0.1:5432/crm"

[stores.erp]
kind = "mysql"
url = "mysql://callosum@127.0.0.1:3306/erp"
server_id = 4201

[[pipelines]]
name = "crm_to_erp"
from = "crm"
to = "erp"
tables = ["public.accounts", "orders"]
{extra}"#
        )
    }

    #[test]
    fn echo_origins_keep_only_writes_that_go_on_to_a_third_store() {
        let two = parse_only(&base(
            "\n[[pipelines]]\nname = \"erp_to_crm\"\nfrom = \"erp\"\nto = \"crm\"\ntables = [\"stock\"]\n",
        ));
        assert!(two.echo_origins("crm").is_empty());
        assert!(two.echo_origins("erp").is_empty());
        let three = parse_only(&base(
            "\n[[pipelines]]\nname = \"erp_to_crm\"\nfrom = \"erp\"\nto = \"crm\"\ntables = [\"stock\"]\n\
             \n[[pipelines]]\nname = \"crm_to_wh\"\nfrom = \"crm\"\nto = \"wh\"\ntables = [\"stock\"]\n",
        ));
        assert_eq!(
            three.echo_origins("crm"),
            vec![("erp_to_crm".to_string(), "erp".to_string())]
        );
        // every reader of the erp sends to the crm, where its writes came from
        assert!(three.echo_origins("erp").is_empty());
    }

    /// Parses without validating.
    fn parse_only(text: &str) -> Config {
        toml::from_str(text).expect("config parses")
    }

    fn problems(config: &Config) -> Vec<ConfigProblem> {
        match config.validate() {
            Ok(()) => Vec::new(),
            Err(ConfigError::Invalid(problems)) => problems,
            Err(other) => panic!("unexpected error {other}"),
        }
    }

    fn assert_problem(config: &Config, key: &str, needle: &str) {
        let problems = problems(config);
        assert!(
            problems
                .iter()
                .any(|p| p.key == key && p.problem.contains(needle)),
            "expected a problem at `{key}` containing `{needle}`, got {problems:#?}"
        );
    }

    fn parse_error(text: &str) -> (String, Option<usize>) {
        match Config::from_toml(text) {
            Err(err @ ConfigError::Parse { line, .. }) => (err.to_string(), line),
            other => panic!("expected a parse error, got {other:?}"),
        }
    }

    #[test]
    fn example_file_parses_and_validates() {
        let config = Config::from_toml(EXAMPLE).expect("example config is valid");
        assert_eq!(config.data_dir, PathBuf::from("/var/lib/callosum"));
        assert_eq!(config.http.listen, "127.0.0.1:9464".parse().unwrap());
        assert_eq!(config.stores.len(), 2);
        let StoreConfig::Postgres(crm) = &config.stores["crm"] else {
            panic!("crm is postgres")
        };
        assert_eq!(crm.password_env.as_deref(), Some("CALLOSUM_CRM_PASSWORD"));
        assert_eq!(crm.slot_name("crm"), "callosum_crm");
        let StoreConfig::Mysql(erp) = &config.stores["erp"] else {
            panic!("erp is mysql")
        };
        assert_eq!(erp.server_id, 4201);
        assert_eq!(erp.zero_dates, ZeroDates::Error);
        assert_eq!(config.pipelines.len(), 2);
        let p = &config.pipelines[0];
        assert_eq!(
            (p.name.as_str(), p.from.as_str(), p.to.as_str()),
            ("crm_to_erp", "crm", "erp")
        );
        assert_eq!(p.on_error, OnError::DeadLetter);
        assert_eq!(p.max_batch_events, DEFAULT_MAX_BATCH_EVENTS);
        assert_eq!(config.pipelines[1].on_error, OnError::Halt);
        let mapping =
            config.pipelines[1].table_mapping(&config.stores["erp"], &config.stores["crm"]);
        assert_eq!(
            mapping,
            vec![
                (
                    TableId::new("erp", "stock_levels"),
                    TableId::new("public", "stock_levels")
                ),
                (
                    TableId::new("erp", "invoices"),
                    TableId::new("public", "invoices")
                ),
            ]
        );
    }

    #[test]
    fn defaults_apply() {
        let config = Config::from_toml(&base("")).unwrap();
        assert_eq!(config.http, HttpConfig::default());
        assert_eq!(config.http.listen.to_string(), "127.0.0.1:9464");
        let p = &config.pipelines[0];
        assert_eq!(p.on_error, OnError::DeadLetter);
        assert_eq!(p.max_batch_events, 5000);
    }

    #[test]
    fn unknown_top_level_key_names_key_and_line() {
        let text = format!("datadir = \"x\"\n{}", base(""));
        let (message, line) = parse_error(&text);
        assert_eq!(line, Some(1));
        assert!(message.contains("unknown field `datadir`"), "{message}");
        assert!(message.contains("line 1, column 1"), "{message}");
    }

    #[test]
    fn unknown_store_key_names_key_and_line() {
        let text = base("").replace("server_id = 4201", "server_id = 4201\nserverid = 1");
        let (message, line) = parse_error(&text);
        assert!(message.contains("unknown field `serverid`"), "{message}");
        assert!(message.contains("line 11, column 1"), "{message}");
        assert_eq!(line, Some(11));
        let text = base("").replace(
            "url = \"postgres://callosum@127.0.0.1:5432/crm\"",
            "url = \"postgres://callosum@127.0.0.1:5432/crm\"\nslto = \"x\"",
        );
        let (message, line) = parse_error(&text);
        assert!(message.contains("unknown field `slto`"), "{message}");
        assert_eq!(line, Some(6));
    }

    #[test]
    fn unknown_pipeline_and_http_keys_name_key_and_line() {
        let (message, line) = parse_error(&base("batch = 3\n"));
        assert!(message.contains("unknown field `batch`"), "{message}");
        assert_eq!(line, Some(17));
        let (message, line) = parse_error(&format!("{}\n[http]\nport = 1\n", base("")));
        assert!(message.contains("unknown field `port`"), "{message}");
        assert_eq!(line, Some(19));
    }

    #[test]
    fn key_of_the_other_store_kind_is_rejected_with_table_line() {
        let text = base("").replace("server_id = 4201", "server_id = 4201\nslot = \"s\"");
        let (message, line) = parse_error(&text);
        assert!(message.contains("`slot`"), "{message}");
        assert!(message.contains("only to kind = \"postgres\""), "{message}");
        assert_eq!(line, Some(7), "line of [stores.erp]: {message}");
        let text = base("").replace("kind = \"postgres\"", "kind = \"postgres\"\nserver_id = 3");
        let (message, _) = parse_error(&text);
        assert!(message.contains("`server_id`"), "{message}");
    }

    #[test]
    fn mysql_store_requires_server_id_and_unknown_kind_is_rejected() {
        let (message, _) = parse_error(&base("").replace("server_id = 4201\n", ""));
        assert!(message.contains("server_id"), "{message}");
        let (message, line) =
            parse_error(&base("").replace("kind = \"mysql\"", "kind = \"oracle\""));
        assert!(message.contains("unknown variant `oracle`"), "{message}");
        assert_eq!(line, Some(8));
    }

    #[test]
    fn time_zone_defaults_to_utc_parses_and_names_its_key_when_wrong() {
        let zone = |config: &Config| match &config.stores["erp"] {
            StoreConfig::Mysql(erp) => erp.time_zone,
            other => panic!("erp is mysql: {other:?}"),
        };
        assert_eq!(zone(&Config::from_toml(&base("")).unwrap()), None);
        let with = |name: &str| {
            base("").replace(
                "server_id = 4201",
                &format!("server_id = 4201\ntime_zone = \"{name}\""),
            )
        };
        assert_eq!(zone(&Config::from_toml(&with("UTC")).unwrap()), None);
        assert_eq!(
            zone(&Config::from_toml(&with("Europe/Berlin")).unwrap()),
            Some(chrono_tz::Europe::Berlin)
        );
        let (message, _) = parse_error(&with("Mars/Olympus"));
        assert!(message.contains("`time_zone`"), "{message}");
        assert!(message.contains("Mars/Olympus"), "{message}");
        let text = base("")
            .replace("kind = \"mysql\"", "kind = \"postgres\"")
            .replace("server_id = 4201", "time_zone = \"UTC\"");
        let (message, _) = parse_error(&text);
        assert!(message.contains("`time_zone`"), "{message}");
    }

    #[test]
    fn zero_dates_defaults_to_error_parses_and_names_its_key_when_wrong() {
        let zero_dates = |config: &Config| match &config.stores["erp"] {
            StoreConfig::Mysql(erp) => erp.zero_dates,
            other => panic!("erp is mysql: {other:?}"),
        };
        assert_eq!(
            zero_dates(&Config::from_toml(&base("")).unwrap()),
            ZeroDates::Error
        );
        for (text, expected) in [("error", ZeroDates::Error), ("null", ZeroDates::Null)] {
            let config = Config::from_toml(&base("").replace(
                "server_id = 4201",
                &format!("server_id = 4201\nzero_dates = \"{text}\""),
            ))
            .unwrap();
            assert_eq!(zero_dates(&config), expected);
            assert!(format!("{config:?}").contains(&format!("zero_dates: {expected:?}")));
        }
        let text = base("").replace(
            "server_id = 4201",
            "server_id = 4201\nzero_dates = \"zero\"",
        );
        let (message, line) = parse_error(&text);
        assert!(message.contains("key `zero_dates`"), "{message}");
        assert!(message.contains("\"error\" or \"null\""), "{message}");
        assert_eq!(line, Some(11), "{message}");
        let text = base("").replace("server_id = 4201", "server_id = 4201\nzero_dates = true");
        let (message, line) = parse_error(&text);
        assert_eq!(line, Some(11), "{message}");
        // A MySQL-only key.
        let text = base("").replace(
            "kind = \"postgres\"",
            "kind = \"postgres\"\nzero_dates = \"null\"",
        );
        let (message, _) = parse_error(&text);
        assert!(message.contains("`zero_dates`"), "{message}");
        assert!(message.contains("only to kind = \"mysql\""), "{message}");
    }

    #[test]
    fn bad_on_error_value_is_rejected() {
        let (message, _) = parse_error(&base("on_error = \"ignore\"\n"));
        assert!(message.contains("unknown variant `ignore`"), "{message}");
        let config = Config::from_toml(&base("on_error = \"halt\"\n")).unwrap();
        assert_eq!(config.pipelines[0].on_error, OnError::Halt);
    }

    #[test]
    fn load_reads_file_and_reports_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("callosum.toml");
        std::fs::write(&path, base("")).unwrap();
        assert_eq!(Config::load(&path).unwrap().pipelines.len(), 1);
        std::fs::write(&path, base("oops = 1\n")).unwrap();
        let err = Config::load(&path).unwrap_err().to_string();
        assert!(err.contains(&path.display().to_string()), "{err}");
        assert!(err.contains("line 17"), "{err}");
        let missing = dir.path().join("missing.toml");
        assert!(matches!(
            Config::load(&missing),
            Err(ConfigError::Read { .. })
        ));
    }

    #[test]
    fn valid_config_has_no_problems() {
        assert_eq!(problems(&parse_only(&base(""))), vec![]);
    }

    #[test]
    fn pipeline_stores_must_exist_and_differ() {
        let config = parse_only(&base("").replace("to = \"erp\"", "to = \"nope\""));
        assert_problem(&config, "pipelines[0].to", "store `nope` is not defined");
        let config = parse_only(&base("").replace("from = \"crm\"", "from = \"erp\""));
        assert_problem(&config, "pipelines[0].to", "same store");
        let config = parse_only(&base("").replace("from = \"crm\"", "from = \"gone\""));
        assert_problem(
            &config,
            "pipelines[0].from",
            "store `gone` is not defined (defined stores: crm, erp)",
        );
    }

    #[test]
    fn pipeline_names_are_unique_and_simple() {
        let second = "\n[[pipelines]]\nname = \"crm_to_erp\"\nfrom = \"crm\"\nto = \"erp\"\ntables = [\"x\"]\n";
        let config = parse_only(&base(second));
        assert_problem(
            &config,
            "pipelines[1].name",
            "also the name of pipelines[0]",
        );
        for bad in ["CRM", "crm-erp", "", "crm erp"] {
            let config = parse_only(
                &base("").replace("name = \"crm_to_erp\"", &format!("name = \"{bad}\"")),
            );
            assert_problem(&config, "pipelines[0].name", "not a valid pipeline name");
        }
    }

    #[test]
    fn tables_must_be_non_empty_and_well_formed() {
        let config = parse_only(&base("").replace("[\"public.accounts\", \"orders\"]", "[]"));
        assert_problem(&config, "pipelines[0].tables", "is empty");
        let config = parse_only(&base("").replace("\"orders\"", "\"a.b.c\""));
        assert_problem(&config, "pipelines[0].tables[1]", "not a table name");
        let config = parse_only(&base("").replace("\"orders\"", "\"public.\""));
        assert_problem(&config, "pipelines[0].tables[1]", "not a table name");
        let config = parse_only(&base("").replace("\"orders\"", "\"public.accounts\""));
        assert_problem(&config, "pipelines[0].tables[1]", "listed twice");
    }

    #[test]
    fn url_scheme_must_match_kind() {
        let config = parse_only(&base("").replace("postgres://", "mysql://"));
        assert_problem(
            &config,
            "stores.crm.url",
            "does not match kind = \"postgres\"",
        );
        let config = parse_only(&base("").replace("postgres://", "postgresql://"));
        assert_eq!(problems(&config), vec![]);
        let config = parse_only(&base("").replace("mysql://", "postgres://"));
        assert_problem(&config, "stores.erp.url", "does not match kind = \"mysql\"");
        let config =
            parse_only(&base("").replace("mysql://callosum@127.0.0.1:3306/erp", "not a url"));
        assert_problem(&config, "stores.erp.url", "not a valid URL");
    }

    #[test]
    fn password_sources_are_exclusive() {
        let text = base("").replace(
            "kind = \"postgres\"",
            "kind = \"postgres\"\npassword_env = \"X\"\npassword_file = \"/x\"",
        );
        assert_problem(
            &parse_only(&text),
            "stores.crm",
            "both password_env and password_file",
        );
        let text = base("")
            .replace("callosum@127.0.0.1:5432", "callosum:pw@127.0.0.1:5432")
            .replace(
                "kind = \"postgres\"",
                "kind = \"postgres\"\npassword_env = \"X\"",
            );
        assert_problem(&parse_only(&text), "stores.crm", "url contains a password");
    }

    #[test]
    fn server_id_must_be_non_zero() {
        let config = parse_only(&base("").replace("server_id = 4201", "server_id = 0"));
        assert_problem(&config, "stores.erp.server_id", "non-zero");
    }

    #[test]
    fn max_batch_events_must_be_positive() {
        let config = parse_only(&base("max_batch_events = 0\n"));
        assert_problem(&config, "pipelines[0].max_batch_events", "at least 1");
        let config = parse_only(&base("max_batch_events = 1\n"));
        assert_eq!(problems(&config), vec![]);
    }

    #[test]
    fn store_names_and_slots_must_be_valid() {
        let config = parse_only(
            &base("")
                .replace("[stores.crm]", "[stores.Crm-1]")
                .replace("from = \"crm\"", "from = \"Crm-1\""),
        );
        assert_problem(&config, "stores.Crm-1", "not a valid store name");
        assert_problem(
            &config,
            "stores.Crm-1.slot",
            "default slot name `callosum_Crm-1`",
        );
        let text = base("").replace(
            "kind = \"postgres\"",
            "kind = \"postgres\"\nslot = \"my-slot\"",
        );
        assert_problem(
            &parse_only(&text),
            "stores.crm.slot",
            "`my-slot` is not a valid replication slot name",
        );
    }

    #[test]
    fn mysql_target_and_bare_names_need_a_database() {
        let config = parse_only(&base("").replace("3306/erp", "3306"));
        assert_problem(&config, "pipelines[0].to", "names no database");
        let reverse = "\n[[pipelines]]\nname = \"back\"\nfrom = \"erp\"\nto = \"crm\"\ntables = [\"erp.stock\", \"invoices\"]\n";
        let config = parse_only(&base(reverse).replace("3306/erp", "3306"));
        assert_problem(&config, "pipelines[1].tables[1]", "needs a database");
        assert!(!problems(&config)
            .iter()
            .any(|p| p.key == "pipelines[1].tables[0]"));
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let text = base("max_batch_events = 0\n")
            .replace("server_id = 4201", "server_id = 0")
            .replace("to = \"erp\"", "to = \"nope\"");
        let err = Config::from_toml(&text).unwrap_err();
        let ConfigError::Invalid(problems) = &err else {
            panic!("expected Invalid, got {err}")
        };
        assert_eq!(problems.len(), 3, "{problems:#?}");
        let message = err.to_string();
        assert!(
            message.starts_with("invalid config: 3 problems"),
            "{message}"
        );
        assert!(
            message.contains("\n  - stores.erp.server_id: must be non-zero"),
            "{message}"
        );
    }

    #[test]
    fn empty_config_lists_missing_parts() {
        let config = parse_only("data_dir = \"\"\n");
        assert_problem(&config, "data_dir", "is empty");
        assert_problem(&config, "stores", "no store defined");
        assert_problem(&config, "pipelines", "no pipeline defined");
    }

    #[test]
    fn secret_and_urls_never_print_the_password() {
        let secret = Secret::new("hunter2");
        assert_eq!(format!("{secret}"), "***");
        assert_eq!(format!("{secret:?}"), "***");
        assert_eq!(secret.expose(), "hunter2");

        let text = base("").replace("callosum@127.0.0.1:5432", "callosum:hunter2@127.0.0.1:5432");
        let config = Config::from_toml(&text).unwrap();
        let crm = &config.stores["crm"];
        assert_eq!(
            crm.redacted_url(),
            "postgres://callosum:***@127.0.0.1:5432/crm"
        );
        assert!(!format!("{config:?}").contains("hunter2"));
        assert_eq!(crm.password().unwrap().unwrap().expose(), "hunter2");
        assert_eq!(redact_url("mysql://u@h/db"), "mysql://u@h/db");
        assert!(!redact_url("mysql://u:hunter2@h:bad/db").contains("hunter2"));
    }

    #[test]
    fn password_from_url_is_percent_decoded() {
        let text = base("").replace(
            "callosum@127.0.0.1:3306",
            "callosum:p%40ss%2Fw@127.0.0.1:3306",
        );
        let config = Config::from_toml(&text).unwrap();
        assert_eq!(
            config.stores["erp"].password().unwrap().unwrap().expose(),
            "p@ss/w"
        );
        assert_eq!(config.stores["crm"].password().unwrap(), None);
    }

    #[test]
    fn password_from_env() {
        // A variable every process has: setting one would race with other
        // tests reading the environment.
        let var = "PATH";
        let expected = std::env::var(var).expect("PATH is set");
        let text = base("").replace(
            "kind = \"postgres\"",
            &format!("kind = \"postgres\"\npassword_env = \"{var}\""),
        );
        let config = Config::from_toml(&text).unwrap();
        assert_eq!(
            config.stores["crm"].password().unwrap().unwrap().expose(),
            expected
        );

        let text = base("").replace(
            "kind = \"postgres\"",
            "kind = \"postgres\"\npassword_env = \"CALLOSUM_TEST_CONFIG_PASSWORD_ENV_UNSET\"",
        );
        let config = Config::from_toml(&text).unwrap();
        let err = config.stores["crm"].password().unwrap_err();
        assert!(matches!(err, ConfigError::PasswordEnv { .. }));
        assert!(err
            .to_string()
            .contains("CALLOSUM_TEST_CONFIG_PASSWORD_ENV_UNSET named by password_env is not set"));
    }

    #[test]
    fn password_from_file_is_trimmed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pw");
        std::fs::write(&path, "  s3cret\n").unwrap();
        let text = base("").replace(
            "server_id = 4201",
            &format!("server_id = 4201\npassword_file = \"{}\"", path.display()),
        );
        let config = Config::from_toml(&text).unwrap();
        let erp = &config.stores["erp"];
        assert_eq!(erp.password().unwrap().unwrap().expose(), "s3cret");
        std::fs::write(&path, "\n").unwrap();
        assert!(matches!(
            erp.password(),
            Err(ConfigError::EmptyPasswordFile { .. })
        ));
        std::fs::remove_file(&path).unwrap();
        assert!(matches!(
            erp.password(),
            Err(ConfigError::PasswordFile { .. })
        ));
    }

    #[test]
    fn postgres_names_default_to_store_name() {
        let config = parse_only(&base(""));
        let StoreConfig::Postgres(pg) = &config.stores["crm"] else {
            unreachable!()
        };
        assert_eq!(pg.slot_name("crm"), "callosum_crm");
        assert_eq!(pg.publication_name("crm"), "callosum_crm");
        assert_eq!(pg.default_namespace(), "public");
        assert_eq!(pg.database().as_deref(), Some("crm"));
        let text = base("").replace(
            "kind = \"postgres\"",
            "kind = \"postgres\"\nslot = \"s1\"\npublication = \"p1\"\nschema = \"sales\"",
        );
        let config = parse_only(&text);
        let StoreConfig::Postgres(pg) = &config.stores["crm"] else {
            unreachable!()
        };
        assert_eq!(pg.slot_name("crm"), "s1");
        assert_eq!(pg.publication_name("crm"), "p1");
        assert_eq!(config.stores["crm"].default_namespace().unwrap(), "sales");
    }

    #[test]
    fn mysql_default_namespace_is_url_database() {
        let config = parse_only(&base(""));
        assert_eq!(config.stores["erp"].default_namespace().unwrap(), "erp");
        let config = parse_only(&base("").replace("3306/erp", "3306/"));
        let err = config.stores["erp"].default_namespace().unwrap_err();
        assert!(matches!(err, ConfigError::NoDatabase { .. }), "{err}");
    }

    #[test]
    fn source_tables_resolve_bare_names() {
        let config = parse_only(&base(""));
        let tables = config.pipelines[0].source_tables(&config.stores["crm"]);
        assert_eq!(
            tables,
            vec![
                TableId::new("public", "accounts"),
                TableId::new("public", "orders")
            ]
        );
        let mysql_tables = PipelineConfig {
            tables: vec!["stock".into(), "other.t".into()],
            ..config.pipelines[0].clone()
        }
        .source_tables(&config.stores["erp"]);
        assert_eq!(
            mysql_tables,
            vec![TableId::new("erp", "stock"), TableId::new("other", "t")]
        );
    }

    #[test]
    fn mirror_table_maps_namespaces() {
        let text = base("").replace("3306/erp", "3306/erp_db")
            + "\n[stores.pg2]\nkind = \"postgres\"\nurl = \"postgres://u@h/d\"\nschema = \"mirror\"\n\n[stores.my2]\nkind = \"mysql\"\nurl = \"mysql://u@h/other\"\nserver_id = 7\n";
        let config = parse_only(&text);
        let (crm, erp, pg2, my2) = (
            &config.stores["crm"],
            &config.stores["erp"],
            &config.stores["pg2"],
            &config.stores["my2"],
        );
        let pg_table = TableId::new("sales", "accounts");
        let my_table = TableId::new("erp_db", "stock");
        // PostgreSQL -> MySQL: the target URL's database.
        assert_eq!(
            mirror_table(&pg_table, crm, erp),
            TableId::new("erp_db", "accounts")
        );
        // MySQL -> PostgreSQL: public, or the target's schema.
        assert_eq!(
            mirror_table(&my_table, erp, crm),
            TableId::new("public", "stock")
        );
        assert_eq!(
            mirror_table(&my_table, erp, pg2),
            TableId::new("mirror", "stock")
        );
        // PostgreSQL -> PostgreSQL: the schema is kept.
        assert_eq!(mirror_table(&pg_table, crm, pg2), pg_table);
        // MySQL -> MySQL: the target URL's database.
        assert_eq!(
            mirror_table(&my_table, erp, my2),
            TableId::new("other", "stock")
        );
    }
}
