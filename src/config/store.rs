//! `[stores.<name>]`: one database of either engine, read strictly and validated.

use super::*;

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
    /// What the slot is told Callosum no longer needs; default `applied`.
    pub acknowledge: Acknowledge,
    /// `tls` and `tls_ca_file`: how the connections are encrypted.
    pub tls: TlsSettings,
}

/// `acknowledge` of a PostgreSQL store: when the replication slot may free
/// the WAL of a captured transaction.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Acknowledge {
    /// Once every pipeline reading the store has applied it to its target
    /// (the default). The change log is then a buffer, not the only copy: an
    /// agent whose `data_dir` is lost resumes from the slot and the targets'
    /// checkpoints and loses nothing. A target that is down makes the slot
    /// retain WAL (`callosum_source_lag_bytes`; cap it with
    /// `max_slot_wal_keep_size`).
    #[default]
    Applied,
    /// Once the change log has flushed it: the WAL is freed sooner, and the
    /// change log is the only copy of what the targets have not applied yet,
    /// so `data_dir` must be on a durable disk; if it is lost, the pipelines
    /// halt with `PositionLost`.
    Logged,
}

impl<'de> Deserialize<'de> for Acknowledge {
    /// By hand, so that a wrong value names the key.
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let value = String::deserialize(deserializer)?;
        match value.as_str() {
            "applied" => Ok(Acknowledge::Applied),
            "logged" => Ok(Acknowledge::Logged),
            other => Err(serde::de::Error::custom(format!(
                "invalid value {other:?} for key `acknowledge`: expected \"applied\" or \"logged\""
            ))),
        }
    }
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
    /// `tls` and `tls_ca_file`: how the connections are encrypted.
    pub tls: TlsSettings,
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
    acknowledge: Option<Acknowledge>,
    server_id: Option<u32>,
    zero_dates: Option<ZeroDates>,
    time_zone: Option<String>,
    tls: Option<TlsWord>,
    tls_ca_file: Option<PathBuf>,
}

/// `tls` as written, read by hand so that a wrong value names the key.
struct TlsWord(TlsMode);

impl<'de> Deserialize<'de> for TlsWord {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let value = String::deserialize(deserializer)?;
        TlsMode::parse(&value).map(TlsWord).ok_or_else(|| {
            serde::de::Error::custom(format!(
                "invalid value {value:?} for key `tls`: expected \"disable\", \"require\", \"verify-ca\" or \"verify-full\""
            ))
        })
    }
}

#[derive(Clone, Copy, Deserialize)]
#[serde(rename_all = "lowercase")]
enum StoreKind {
    Postgres,
    Mysql,
}

/// Fails naming every key that is set but belongs to the other kind of
/// store: `keys` pairs a key with whether it is set.
pub(super) fn reject_misplaced(keys: &[(&str, bool)], why: &str) -> Result<(), String> {
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
        let tls = TlsSettings {
            mode: raw.tls.map(|w| w.0).unwrap_or_default(),
            ca_file: raw.tls_ca_file,
        };
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
                    acknowledge: raw.acknowledge.unwrap_or_default(),
                    tls,
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
                reject_misplaced(
                    &[("acknowledge", raw.acknowledge.is_some())],
                    "applies only to kind = \"postgres\" stores: a binlog server keeps its binlog whatever a replica reads, and Callosum resumes from the targets' checkpoints when its change log is empty; remove it",
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
                    tls,
                }))
            }
        }
    }
}

pub(super) fn validate_store(name: &str, store: &StoreConfig, problems: &mut Problems) {
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
    validate_tls(&key, store, problems);
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

/// `tls_ca_file` only with a mode that checks the certificate, and readable;
/// the url does not choose TLS itself (the store's `tls` does).
fn validate_tls(key: &str, store: &StoreConfig, problems: &mut Problems) {
    let tls = store.tls();
    if let Some(ca) = &tls.ca_file {
        if !matches!(tls.mode, TlsMode::VerifyCa | TlsMode::VerifyFull) {
            problems.push(
                format!("{key}.tls_ca_file"),
                format!(
                    "is used only with tls = \"verify-ca\" or \"verify-full\" (tls is \"{}\"); set tls or remove tls_ca_file",
                    tls.mode
                ),
            );
        } else if let Err(err) = std::fs::read(ca) {
            problems.push(
                format!("{key}.tls_ca_file"),
                format!("cannot read {}: {err}", ca.display()),
            );
        }
    }
    if matches!(store, StoreConfig::Mysql(_)) && tls.mode == TlsMode::VerifyCa {
        problems.push(
            format!("{key}.tls"),
            "\"verify-ca\" is not available for kind = \"mysql\" stores (the MySQL driver cannot check the CA without the host name); use \"verify-full\" with the host name the server's certificate names, or \"require\"",
        );
    }
    let tls_params: &[&str] = match store {
        StoreConfig::Postgres(_) => &["sslmode", "sslrootcert", "sslcert", "sslkey"],
        StoreConfig::Mysql(_) => &[
            "require_ssl",
            "verify_ca",
            "verify_identity",
            "built_in_roots",
        ],
    };
    if let Ok(url) = url::Url::parse(store.url()) {
        for (param, _) in url.query_pairs() {
            if tls_params.contains(&param.as_ref()) {
                problems.push(
                    format!("{key}.url"),
                    format!("sets `{param}`: choose TLS with the store's keys tls (disable, require, verify-ca, verify-full) and tls_ca_file instead"),
                );
            }
        }
    }
}

impl StoreConfig {
    /// `tls` and `tls_ca_file` of the store.
    pub fn tls(&self) -> &TlsSettings {
        match self {
            StoreConfig::Postgres(s) => &s.tls,
            StoreConfig::Mysql(s) => &s.tls,
        }
    }

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
            .field("acknowledge", &self.acknowledge)
            .field("tls", &self.tls)
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
            .field("tls", &self.tls)
            .finish()
    }
}
