//! `[lease]`: active/standby agents on one config (README "Active/standby").

use serde::{Deserialize, Deserializer};
use std::fmt;
use std::time::Duration;

use super::{Problems, StoreConfig};

/// Default lease row name: agents with the same name exclude each other.
pub const DEFAULT_LEASE_NAME: &str = "callosum";

/// Default lease duration: a standby takes over within about this plus one
/// retry (a third of it) of the active agent's death, inside the 30 s the
/// operator is promised, while a renewal (every third) may fail twice.
pub const DEFAULT_LEASE_DURATION: Duration = Duration::from_secs(15);

/// The shortest lease accepted: renewals every third of it must still fit
/// a round trip to the lease store.
const MIN_LEASE_DURATION: Duration = Duration::from_secs(1);

/// `[lease]`: which store holds the lease row, its name and duration.
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LeaseConfig {
    /// A configured store (either engine) that holds `callosum_lease`.
    pub store: String,
    /// The lease row's key (default `callosum`).
    #[serde(default = "default_name")]
    pub name: String,
    /// How long a lease lasts without renewal (default 15 s); renewed every
    /// third of it.
    #[serde(default = "default_duration")]
    pub duration: LeaseDuration,
    /// Who this agent is in `/status` and the lease row; default
    /// `<hostname>-<pid>`.
    #[serde(default)]
    pub holder: Option<String>,
}

fn default_name() -> String {
    DEFAULT_LEASE_NAME.to_owned()
}

fn default_duration() -> LeaseDuration {
    LeaseDuration(DEFAULT_LEASE_DURATION)
}

impl LeaseConfig {
    /// The configured holder, or `<hostname>-<pid>`: a restart of the same
    /// agent is a new holder (and gets a new epoch either way).
    pub fn holder_name(&self) -> String {
        match &self.holder {
            Some(holder) => holder.clone(),
            None => {
                let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
                    .or_else(|_| std::fs::read_to_string("/etc/hostname"))
                    .map(|h| h.trim().to_owned())
                    .ok()
                    .filter(|h| !h.is_empty())
                    .or_else(|| std::env::var("HOSTNAME").ok())
                    .unwrap_or_else(|| "localhost".to_owned());
                format!("{host}-{}", std::process::id())
            }
        }
    }

    pub(super) fn validate(
        &self,
        stores: &std::collections::BTreeMap<String, StoreConfig>,
        problems: &mut Problems,
    ) {
        match stores.get(&self.store) {
            None => problems.push(
                "lease.store",
                format!(
                    "store `{}` is not defined (defined stores: {}); name the store that holds the lease row",
                    self.store,
                    stores.keys().cloned().collect::<Vec<_>>().join(", ")
                ),
            ),
            Some(StoreConfig::Mysql(m)) if m.database().is_none() => problems.push(
                "lease.store",
                format!(
                    "store `{}` is a mysql store whose url names no database, which would hold the callosum_lease table; write its url as mysql://user@host:3306/<database>",
                    self.store
                ),
            ),
            Some(_) => {}
        }
        if self.name.is_empty() || self.name.len() > 255 {
            problems.push(
                "lease.name",
                "must be 1 to 255 characters (agents with the same name exclude each other)",
            );
        }
        if let Some(holder) = &self.holder {
            if holder.is_empty() || holder.len() > 255 {
                problems.push(
                    "lease.holder",
                    "must be 1 to 255 characters, or left out for <hostname>-<pid>",
                );
            }
        }
        if self.duration.0 < MIN_LEASE_DURATION {
            problems.push(
                "lease.duration",
                format!(
                    "{} is too short; use at least 1s (default {}s; it is renewed every third)",
                    self.duration,
                    DEFAULT_LEASE_DURATION.as_secs()
                ),
            );
        }
    }
}

/// A duration written as `"15s"`, `"500ms"` or `"1m"`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LeaseDuration(pub Duration);

impl fmt::Display for LeaseDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.0.as_millis();
        if ms % 1000 == 0 {
            write!(f, "{}s", ms / 1000)
        } else {
            write!(f, "{ms}ms")
        }
    }
}

/// Parses `<number><unit>` with unit `ms`, `s` or `m`.
pub fn parse_duration(text: &str) -> Option<Duration> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit())?;
    let (number, unit) = text.split_at(split);
    let number: u64 = number.parse().ok()?;
    match unit {
        "ms" => Some(Duration::from_millis(number)),
        "s" => Some(Duration::from_secs(number)),
        "m" => number.checked_mul(60).map(Duration::from_secs),
        _ => None,
    }
}

impl<'de> Deserialize<'de> for LeaseDuration {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        parse_duration(&text).map(LeaseDuration).ok_or_else(|| {
            serde::de::Error::custom(format!(
                "`{text}` is not a duration; write it as \"15s\", \"500ms\" or \"1m\""
            ))
        })
    }
}
