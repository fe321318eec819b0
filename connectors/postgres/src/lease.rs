//! The lease row in a PostgreSQL store ([`PgLease`], a
//! [`callosum_api::LeaseStore`]) and the takeover of a replication slot
//! still held by a former leader's walsender ([`take_over_slot`]).
//!
//! Expiry is decided by the server's `clock_timestamp()`, never by an
//! agent's clock.

use std::fmt;
use std::time::Duration;

use callosum_api::{Acquired, ConnectorError, LeaseHolder, LeaseStore, TlsSettings, LEASE_TABLE};
use tokio_postgres::Client;
use tracing::{info, warn};

use crate::error::from_sql_without_values;
use crate::sink::ConnectionTask;
use crate::source::{pg_config, PgSourceConfig};

/// Advisory lock key serialising the creation of the lease table
/// (`callolea` in ASCII), as two concurrent `CREATE TABLE IF NOT EXISTS`
/// race on the catalog.
const LEASE_DDL_LOCK: i64 = 0x63616c6c6f6c6561;

/// Where the lease row lives.
#[derive(Clone)]
pub struct PgLeaseConfig {
    /// The store's config name (used in messages).
    pub store: String,
    /// Never logged.
    pub url: String,
    /// Overrides the url's password when set. Never logged.
    pub password: Option<String>,
    /// The lease row's key: agents with the same name exclude each other.
    pub name: String,
    /// `tls` and `tls_ca_file` of the store.
    pub tls: TlsSettings,
}

impl fmt::Debug for PgLeaseConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgLeaseConfig")
            .field("store", &self.store)
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

/// The lease row `public.callosum_lease` in a PostgreSQL store: one
/// conditional `INSERT … ON CONFLICT DO UPDATE … WHERE expired` acquires.
pub struct PgLease {
    config: PgLeaseConfig,
    conn: Option<(Client, ConnectionTask)>,
}

impl fmt::Debug for PgLease {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PgLease")
            .field("config", &self.config)
            .field("connected", &self.conn.is_some())
            .finish()
    }
}

impl PgLease {
    /// Connects lazily, on the first call.
    pub fn new(config: PgLeaseConfig) -> Self {
        Self { config, conn: None }
    }

    async fn client(&mut self) -> Result<&Client, ConnectorError> {
        if self.conn.as_ref().is_some_and(|(c, _)| c.is_closed()) {
            self.conn = None;
        }
        if self.conn.is_none() {
            let store = &self.config.store;
            let tls = &self.config.tls;
            let pg = pg_config(
                store,
                &self.config.url,
                self.config.password.as_deref(),
                tls,
            )?;
            let connected =
                crate::tls::connect(store, &pg, tls, "connect to the lease store").await?;
            let (client, task) = (connected.client, ConnectionTask(connected.task));
            client
                .batch_execute(&format!(
                    "BEGIN; SELECT pg_advisory_xact_lock({LEASE_DDL_LOCK}); \
                     CREATE TABLE IF NOT EXISTS public.{LEASE_TABLE} (name text PRIMARY KEY, \
                     holder text NOT NULL, epoch bigint NOT NULL, expires_at timestamptz NOT NULL); COMMIT"
                ))
                .await
                .map_err(|e| from_sql_without_values(store, "create the lease table", e))?;
            self.conn = Some((client, task));
        }
        Ok(&self.conn.as_ref().expect("connected above").0)
    }

    fn failed(&mut self, doing: &str, err: tokio_postgres::Error) -> ConnectorError {
        if err.is_closed() || err.as_db_error().is_none() {
            self.conn = None;
        }
        from_sql_without_values(&self.config.store, doing, err)
    }
}

impl LeaseStore for PgLease {
    async fn try_acquire(
        &mut self,
        holder: &str,
        duration: Duration,
    ) -> Result<Option<Acquired>, ConnectorError> {
        let name = self.config.name.clone();
        let seconds = duration.as_secs_f64();
        let result = self
            .client()
            .await?
            .query_opt(
                &format!(
                    "INSERT INTO public.{LEASE_TABLE} AS l (name, holder, epoch, expires_at) \
                     VALUES ($1, $2, 1, clock_timestamp() + make_interval(secs => $3)) \
                     ON CONFLICT (name) DO UPDATE SET holder = EXCLUDED.holder, epoch = l.epoch + 1, \
                     expires_at = EXCLUDED.expires_at WHERE l.expires_at <= clock_timestamp() \
                     RETURNING epoch"
                ),
                &[&name, &holder, &seconds],
            )
            .await;
        match result {
            Ok(row) => Ok(row.map(|r| Acquired { epoch: r.get(0) })),
            Err(err) => Err(self.failed("acquire the lease", err)),
        }
    }

    async fn renew(&mut self, epoch: i64, duration: Duration) -> Result<bool, ConnectorError> {
        let name = self.config.name.clone();
        let seconds = duration.as_secs_f64();
        let result = self
            .client()
            .await?
            .execute(
                &format!(
                    "UPDATE public.{LEASE_TABLE} SET expires_at = clock_timestamp() + make_interval(secs => $3) \
                     WHERE name = $1 AND epoch = $2"
                ),
                &[&name, &epoch, &seconds],
            )
            .await;
        match result {
            Ok(rows) => Ok(rows == 1),
            Err(err) => Err(self.failed("renew the lease", err)),
        }
    }

    async fn release(&mut self, epoch: i64) -> Result<(), ConnectorError> {
        let name = self.config.name.clone();
        let result = self
            .client()
            .await?
            .execute(
                &format!(
                    "UPDATE public.{LEASE_TABLE} SET expires_at = clock_timestamp() \
                     WHERE name = $1 AND epoch = $2"
                ),
                &[&name, &epoch],
            )
            .await;
        match result {
            Ok(_) => Ok(()),
            Err(err) => Err(self.failed("release the lease", err)),
        }
    }

    async fn holder(&mut self) -> Result<Option<LeaseHolder>, ConnectorError> {
        let name = self.config.name.clone();
        let result = self
            .client()
            .await?
            .query_opt(
                &format!(
                    "SELECT holder, epoch, expires_at <= clock_timestamp() FROM public.{LEASE_TABLE} WHERE name = $1"
                ),
                &[&name],
            )
            .await;
        match result {
            Ok(row) => Ok(row.map(|r| LeaseHolder {
                holder: r.get(0),
                epoch: r.get(1),
                expired: r.get(2),
            })),
            Err(err) => Err(self.failed("read the lease", err)),
        }
    }
}

/// Ends the walsender that still holds the store's slot, if any: a paused
/// former leader keeps its replication connection (and the slot) open, and
/// the server would otherwise wait for `wal_sender_timeout` before this
/// agent may stream. Call it before this agent's own source connects.
/// Allowed for a role that is the walsender's own (the same config) or has
/// `pg_signal_backend`.
pub async fn take_over_slot(config: &PgSourceConfig) -> Result<(), ConnectorError> {
    let store = &config.store;
    let pg = config.pg_config()?;
    let connected = crate::tls::connect(store, &pg, &config.tls, "connect").await?;
    let (client, _task) = (connected.client, ConnectionTask(connected.task));
    let ended = client
        .query(
            "SELECT active_pid, pg_terminate_backend(active_pid) FROM pg_replication_slots \
             WHERE slot_name = $1 AND active AND active_pid IS NOT NULL",
            &[&config.slot],
        )
        .await
        .map_err(|e| from_sql_without_values(store, "end the former leader's walsender", e))?;
    for row in ended {
        let pid: i32 = row.get(0);
        let done: bool = row.get(1);
        if done {
            info!(store = %store, slot = %config.slot, pid, "ended the walsender that held the slot");
        } else {
            warn!(store = %store, slot = %config.slot, pid, "could not end the walsender that holds the slot: capture waits for wal_sender_timeout");
        }
    }
    Ok(())
}
