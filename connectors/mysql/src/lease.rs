//! The lease row in a MariaDB/MySQL store ([`MySqlLease`], a
//! [`callosum_api::LeaseStore`]), in the url's database.
//!
//! Expiry is decided by the server's `UTC_TIMESTAMP(6)`, never by an
//! agent's clock. A binlog source needs no takeover step of its own: the
//! new leader's dump (same `server_id`) starts once the former leader's is
//! gone, which `MySqlSourceConfig::dump_write_timeout` bounds for a paused
//! former leader.

use std::fmt;
use std::time::Duration;

use callosum_api::{
    Acquired, ConnectorError, ErrorKind, LeaseHolder, LeaseStore, TlsSettings, LEASE_TABLE,
};
use mysql_async::prelude::Queryable;
use mysql_async::{Conn, Opts, OptsBuilder};

use crate::error::classify;

/// Where the lease row lives.
#[derive(Clone)]
pub struct MySqlLeaseConfig {
    /// The store's config name (used in messages).
    pub store: String,
    /// `mysql://user@host:port/database`: the database holds the lease
    /// table. Never logged.
    pub url: String,
    /// Overrides the url's password when set. Never logged.
    pub password: Option<String>,
    /// The lease row's key: agents with the same name exclude each other.
    pub name: String,
    /// `tls` and `tls_ca_file` of the store.
    pub tls: TlsSettings,
}

impl fmt::Debug for MySqlLeaseConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MySqlLeaseConfig")
            .field("store", &self.store)
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

/// The lease row `callosum_lease` in a MariaDB/MySQL database: acquiring is
/// one conditional `UPDATE … WHERE expires_at <= UTC_TIMESTAMP(6)` inside a
/// transaction that then reads the epoch it wrote.
pub struct MySqlLease {
    config: MySqlLeaseConfig,
    conn: Option<Conn>,
}

impl fmt::Debug for MySqlLease {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MySqlLease")
            .field("config", &self.config)
            .field("connected", &self.conn.is_some())
            .finish()
    }
}

fn micros(duration: Duration) -> u64 {
    duration.as_micros().min(u64::MAX as u128) as u64
}

impl MySqlLease {
    /// Connects lazily, on the first call.
    pub fn new(config: MySqlLeaseConfig) -> Self {
        Self { config, conn: None }
    }

    async fn conn(&mut self) -> Result<&mut Conn, ConnectorError> {
        if self.conn.is_none() {
            let store = &self.config.store;
            let opts = Opts::from_url(&self.config.url).map_err(|_| {
                ConnectorError::new(
                    ErrorKind::Config,
                    format!("the url of store `{store}` is not a valid mysql url"),
                )
                .with_hint("expected mysql://user@host:port/database")
            })?;
            let mut builder =
                OptsBuilder::from_opts(opts).ssl_opts(crate::tls::ssl_opts(&self.config.tls));
            if let Some(password) = &self.config.password {
                builder = builder.pass(Some(password.clone()));
            }
            let mut conn = Conn::new(builder).await.map_err(|e| {
                crate::tls::tls_failure(&e, store)
                    .unwrap_or_else(|| classify(e, store, "connecting to the lease store"))
            })?;
            conn.query_drop(format!(
                "CREATE TABLE IF NOT EXISTS {LEASE_TABLE} (name VARCHAR(255) NOT NULL PRIMARY KEY, \
                 holder VARCHAR(255) NOT NULL, epoch BIGINT NOT NULL, \
                 expires_at DATETIME(6) NOT NULL) ENGINE=InnoDB"
            ))
            .await
            .map_err(|e| classify(e, store, "creating the lease table"))?;
            self.conn = Some(conn);
        }
        Ok(self.conn.as_mut().expect("connected above"))
    }

    /// Maps `err`; a connection that failed is dropped, so that the next
    /// call reconnects (and an open transaction ends with it).
    fn failed(&mut self, doing: &str, err: mysql_async::Error) -> ConnectorError {
        let err = classify(err, &self.config.store, doing);
        if err.kind == ErrorKind::Connection || err.kind == ErrorKind::Protocol {
            self.conn = None;
        }
        err
    }

    async fn acquire_in_transaction(
        conn: &mut Conn,
        name: &str,
        holder: &str,
        duration: Duration,
    ) -> Result<Option<i64>, mysql_async::Error> {
        conn.query_drop("START TRANSACTION").await?;
        conn.exec_drop(
            format!(
                "INSERT IGNORE INTO {LEASE_TABLE} (name, holder, epoch, expires_at) \
                 VALUES (?, '', 0, '1970-01-02 00:00:00')"
            ),
            (name,),
        )
        .await?;
        // epoch always changes, so the count is 1 exactly when the row was
        // taken, with or without CLIENT_FOUND_ROWS
        conn.exec_drop(
            format!(
                "UPDATE {LEASE_TABLE} SET holder = ?, epoch = epoch + 1, \
                 expires_at = UTC_TIMESTAMP(6) + INTERVAL ? MICROSECOND \
                 WHERE name = ? AND expires_at <= UTC_TIMESTAMP(6)"
            ),
            (holder, micros(duration), name),
        )
        .await?;
        let taken = conn.affected_rows() == 1;
        let epoch: Option<i64> = if taken {
            conn.exec_first(
                format!("SELECT epoch FROM {LEASE_TABLE} WHERE name = ?"),
                (name,),
            )
            .await?
        } else {
            None
        };
        conn.query_drop("COMMIT").await?;
        Ok(epoch)
    }
}

impl LeaseStore for MySqlLease {
    async fn try_acquire(
        &mut self,
        holder: &str,
        duration: Duration,
    ) -> Result<Option<Acquired>, ConnectorError> {
        let name = self.config.name.clone();
        let conn = self.conn().await?;
        let result = Self::acquire_in_transaction(conn, &name, holder, duration).await;
        match result {
            Ok(epoch) => Ok(epoch.map(|epoch| Acquired { epoch })),
            Err(err) => {
                if let Some(conn) = self.conn.as_mut() {
                    let _ = conn.query_drop("ROLLBACK").await;
                }
                Err(self.failed("acquiring the lease", err))
            }
        }
    }

    async fn renew(&mut self, epoch: i64, duration: Duration) -> Result<bool, ConnectorError> {
        let name = self.config.name.clone();
        let conn = self.conn().await?;
        let result = conn
            .exec_drop(
                format!(
                    "UPDATE {LEASE_TABLE} SET expires_at = UTC_TIMESTAMP(6) + INTERVAL ? MICROSECOND \
                     WHERE name = ? AND epoch = ?"
                ),
                (micros(duration), &name, epoch),
            )
            .await;
        match result {
            // expires_at moves with time, so a renewal always changes the row
            Ok(()) => Ok(conn.affected_rows() == 1),
            Err(err) => Err(self.failed("renewing the lease", err)),
        }
    }

    async fn release(&mut self, epoch: i64) -> Result<(), ConnectorError> {
        let name = self.config.name.clone();
        let conn = self.conn().await?;
        let result = conn
            .exec_drop(
                format!(
                    "UPDATE {LEASE_TABLE} SET expires_at = UTC_TIMESTAMP(6) WHERE name = ? AND epoch = ?"
                ),
                (&name, epoch),
            )
            .await;
        result.map_err(|err| self.failed("releasing the lease", err))
    }

    async fn holder(&mut self) -> Result<Option<LeaseHolder>, ConnectorError> {
        let name = self.config.name.clone();
        let conn = self.conn().await?;
        let result: Result<Option<(String, i64, i64)>, _> = conn
            .exec_first(
                format!(
                    "SELECT holder, epoch, expires_at <= UTC_TIMESTAMP(6) FROM {LEASE_TABLE} WHERE name = ?"
                ),
                (&name,),
            )
            .await;
        match result {
            Ok(row) => Ok(row.map(|(holder, epoch, expired)| LeaseHolder {
                holder,
                epoch,
                expired: expired != 0,
            })),
            Err(err) => Err(self.failed("reading the lease", err)),
        }
    }
}
