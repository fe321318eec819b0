//! A thin client for PostgreSQL's streaming replication protocol, on top of
//! `postgres-protocol` (tokio-postgres has no replication support).
//!
//! It opens a `replication=database` connection (trust, cleartext, MD5 and
//! SCRAM-SHA-256 authentication; no TLS yet), runs replication commands with
//! the simple query protocol (`IDENTIFY_SYSTEM`, `CREATE_REPLICATION_SLOT`,
//! `START_REPLICATION`) and then speaks the CopyBoth sub-protocol: XLogData
//! (`w`) and primary keepalive (`k`) messages in, standby status updates
//! (`r`) out.
//!
//! Cancel safety: [`ReplicationClient::recv`] and [`ReplicationClient::flush`]
//! keep every partially read frame and every not yet written byte in the
//! client itself, so dropping their futures (for example in
//! `tokio::select!`) loses nothing. The other methods are not cancel-safe:
//! they are used before streaming starts.

use std::io;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use callosum_api::Lsn;
use fallible_iterator::FallibleIterator;
use postgres_protocol::authentication::{md5_hash, sasl};
use postgres_protocol::message::{backend, frontend};
use thiserror::Error;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_postgres::config::{Host, SslMode};

use crate::pgoutput::PG_EPOCH_OFFSET_MICROS;

/// The largest backend message accepted (a row may hold a 1 GB value).
const MAX_FRAME_LEN: usize = (1 << 30) + (64 << 20);

/// An error from the replication connection.
#[derive(Debug, Error)]
pub enum ReplicationError {
    #[error("replication connection i/o failed")]
    Io(#[from] io::Error),
    #[error("server error {}: {}", .0.code, .0.message)]
    Server(ServerError),
    #[error("unexpected replication protocol message: {0}")]
    Protocol(String),
    #[error("{0}")]
    Config(String),
    #[error("authentication failed: {0}")]
    Auth(String),
    #[error("the server ended the replication stream")]
    StreamEnded,
    /// The server answered the TLS request with `N`.
    #[error("the server does not accept TLS connections")]
    TlsRefused,
    /// The TLS handshake failed (the certificate, the name, the protocol).
    #[error("TLS handshake failed: {0}")]
    Tls(rustls::Error),
}

/// An `ErrorResponse` from the server.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerError {
    pub severity: String,
    /// SQLSTATE, e.g. `55006`.
    pub code: String,
    pub message: String,
    pub detail: Option<String>,
    pub hint: Option<String>,
}

impl std::fmt::Display for ServerError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}: {}", self.severity, self.code, self.message)
    }
}

impl std::error::Error for ServerError {}

/// Result of `IDENTIFY_SYSTEM`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SystemIdentity {
    pub system_id: String,
    pub timeline: u32,
    pub xlog_pos: Lsn,
    pub dbname: Option<String>,
}

/// What `CREATE_REPLICATION_SLOT` does with the slot's consistent snapshot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SlotSnapshot {
    /// Export it for `SET TRANSACTION SNAPSHOT` (valid until the next command
    /// on this connection): for a consistent initial snapshot.
    Export,
    /// Use it in the current transaction of this connection.
    Use,
    /// Do not keep it.
    Nothing,
}

impl SlotSnapshot {
    fn pg15_word(self) -> &'static str {
        match self {
            SlotSnapshot::Export => "export",
            SlotSnapshot::Use => "use",
            SlotSnapshot::Nothing => "nothing",
        }
    }

    fn legacy_keyword(self) -> &'static str {
        match self {
            SlotSnapshot::Export => "EXPORT_SNAPSHOT",
            SlotSnapshot::Use => "USE_SNAPSHOT",
            SlotSnapshot::Nothing => "NOEXPORT_SNAPSHOT",
        }
    }
}

/// Result of `CREATE_REPLICATION_SLOT`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CreatedSlot {
    pub slot_name: String,
    /// The slot streams every transaction committing after this LSN.
    pub consistent_point: Lsn,
    /// Set with [`SlotSnapshot::Export`].
    pub snapshot_name: Option<String>,
    pub output_plugin: Option<String>,
}

/// One message of the replication stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReplicationMessage {
    /// `w`: WAL data, for logical replication one output plugin message.
    XLogData {
        wal_start: u64,
        wal_end: u64,
        server_time: i64,
        data: Bytes,
    },
    /// `k`: primary keepalive. With `reply_requested` the server wants a
    /// standby status update at once, or it disconnects us after
    /// `wal_sender_timeout`.
    Keepalive {
        wal_end: u64,
        server_time: i64,
        reply_requested: bool,
    },
}

/// Rows of a simple query, as text.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct QueryResult {
    pub columns: Vec<String>,
    pub rows: Vec<Vec<Option<String>>>,
}

trait Io: AsyncRead + AsyncWrite + Unpin + Send + Sync {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + Sync> Io for T {}

/// Session settings that make the server's text output canonical for
/// [`crate::text_value`].
pub const SESSION_SETTINGS: &[(&str, &str)] = &[
    ("client_encoding", "UTF8"),
    ("TimeZone", "UTC"),
    ("DateStyle", "ISO, YMD"),
    ("IntervalStyle", "iso_8601"),
    ("bytea_output", "hex"),
    ("extra_float_digits", "3"),
];

/// A `replication=database` connection.
pub struct ReplicationClient {
    io: Box<dyn Io>,
    read_buf: BytesMut,
    write_buf: BytesMut,
    server_version_num: u32,
    streaming: bool,
}

impl std::fmt::Debug for ReplicationClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReplicationClient")
            .field("server_version_num", &self.server_version_num)
            .field("streaming", &self.streaming)
            .finish_non_exhaustive()
    }
}

/// Asks the server for TLS (`SSLRequest`) and performs the handshake,
/// checking the certificate against `host` as `tls` says.
async fn start_tls(
    mut stream: tokio::net::TcpStream,
    host: &str,
    tls: Arc<rustls::ClientConfig>,
) -> Result<tokio_rustls::client::TlsStream<tokio::net::TcpStream>, ReplicationError> {
    let mut request = BytesMut::new();
    frontend::ssl_request(&mut request);
    stream.write_all(&request).await?;
    let mut answer = [0u8; 1];
    stream.read_exact(&mut answer).await?;
    if answer[0] != b'S' {
        return Err(ReplicationError::TlsRefused);
    }
    let name = rustls::pki_types::ServerName::try_from(host.to_string()).map_err(|_| {
        ReplicationError::Config(format!("`{host}` is not a host name TLS can check"))
    })?;
    tokio_rustls::TlsConnector::from(tls)
        .connect(name, stream)
        .await
        .map_err(|err| {
            match err
                .get_ref()
                .and_then(|inner| inner.downcast_ref::<rustls::Error>())
            {
                Some(tls) => ReplicationError::Tls(tls.clone()),
                None => ReplicationError::Io(err),
            }
        })
}

impl ReplicationClient {
    /// Connects and authenticates as the user of `config` to its database in
    /// `replication=database` mode. `password` overrides the password of
    /// `config`. Hosts are tried in order.
    ///
    /// With `tls`, a TCP connection is upgraded to TLS before the startup
    /// message (`SSLRequest`); a server that answers `N` is
    /// [`ReplicationError::TlsRefused`], never a plain connection. A Unix
    /// socket stays plain, as with libpq.
    pub async fn connect(
        config: &tokio_postgres::Config,
        password: Option<&[u8]>,
        tls: Option<Arc<rustls::ClientConfig>>,
    ) -> Result<Self, ReplicationError> {
        if config.get_ssl_mode() == SslMode::Require && tls.is_none() {
            return Err(ReplicationError::Config(
                "sslmode=require in the url: set tls = \"require\" (or verify-ca, verify-full) in the store instead".into(),
            ));
        }
        let hosts = config.get_hosts();
        if hosts.is_empty() {
            return Err(ReplicationError::Config(
                "the url names no host to connect to".into(),
            ));
        }
        let ports = config.get_ports();
        let mut last_err = None;
        for (i, host) in hosts.iter().enumerate() {
            let port = match ports {
                [] => 5432,
                [p] => *p,
                ps => ps.get(i).copied().unwrap_or(5432),
            };
            let connect = Self::connect_one(config, password, host, port, tls.clone());
            let result = match config.get_connect_timeout() {
                Some(t) => tokio::time::timeout(*t, connect).await.unwrap_or_else(|_| {
                    Err(ReplicationError::Io(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "connect timeout",
                    )))
                }),
                None => connect.await,
            };
            match result {
                Ok(client) => return Ok(client),
                Err(err @ ReplicationError::Io(_)) => last_err = Some(err),
                Err(err) => return Err(err),
            }
        }
        Err(last_err.unwrap_or_else(|| {
            ReplicationError::Config("the url names no host to connect to".into())
        }))
    }

    async fn connect_one(
        config: &tokio_postgres::Config,
        password: Option<&[u8]>,
        host: &Host,
        port: u16,
        tls: Option<Arc<rustls::ClientConfig>>,
    ) -> Result<Self, ReplicationError> {
        let io: Box<dyn Io> = match host {
            Host::Tcp(name) => {
                let stream = tokio::net::TcpStream::connect((name.as_str(), port)).await?;
                stream.set_nodelay(true)?;
                match tls {
                    None => Box::new(stream),
                    Some(tls) => Box::new(start_tls(stream, name, tls).await?),
                }
            }
            Host::Unix(dir) => {
                let path: PathBuf = dir.join(format!(".s.PGSQL.{port}"));
                Box::new(tokio::net::UnixStream::connect(path).await?)
            }
        };
        let mut client = ReplicationClient {
            io,
            read_buf: BytesMut::with_capacity(64 * 1024),
            write_buf: BytesMut::with_capacity(1024),
            server_version_num: 0,
            streaming: false,
        };
        let user = config
            .get_user()
            .ok_or_else(|| ReplicationError::Config("the url names no user".into()))?;
        let dbname = config.get_dbname().unwrap_or(user);
        let mut params: Vec<(&str, &str)> = vec![
            ("user", user),
            ("database", dbname),
            ("replication", "database"),
            (
                "application_name",
                config.get_application_name().unwrap_or("callosum"),
            ),
        ];
        params.extend_from_slice(SESSION_SETTINGS);
        if let Some(options) = config.get_options() {
            params.push(("options", options));
        }
        frontend::startup_message(params, &mut client.write_buf)?;
        client.flush().await?;
        let password = password.or(config.get_password());
        client.authenticate(user, password).await?;
        Ok(client)
    }

    async fn authenticate(
        &mut self,
        user: &str,
        password: Option<&[u8]>,
    ) -> Result<(), ReplicationError> {
        let need_password = || {
            password.ok_or_else(|| {
                ReplicationError::Auth(
                    "the server asks for a password and none is configured".into(),
                )
            })
        };
        let mut scram: Option<sasl::ScramSha256> = None;
        loop {
            match self.read_message().await? {
                backend::Message::AuthenticationOk => {}
                backend::Message::AuthenticationCleartextPassword => {
                    frontend::password_message(need_password()?, &mut self.write_buf)?;
                    self.flush().await?;
                }
                backend::Message::AuthenticationMd5Password(body) => {
                    let hash = md5_hash(user.as_bytes(), need_password()?, body.salt());
                    frontend::password_message(hash.as_bytes(), &mut self.write_buf)?;
                    self.flush().await?;
                }
                backend::Message::AuthenticationSasl(body) => {
                    let mut mechanisms = body.mechanisms();
                    let mut found = false;
                    while let Some(m) = mechanisms.next()? {
                        found |= m == sasl::SCRAM_SHA_256;
                    }
                    if !found {
                        return Err(ReplicationError::Auth(
                            "the server offers no SASL mechanism Callosum supports".into(),
                        ));
                    }
                    let s = sasl::ScramSha256::new(
                        need_password()?,
                        sasl::ChannelBinding::unsupported(),
                    );
                    frontend::sasl_initial_response(
                        sasl::SCRAM_SHA_256,
                        s.message(),
                        &mut self.write_buf,
                    )?;
                    scram = Some(s);
                    self.flush().await?;
                }
                backend::Message::AuthenticationSaslContinue(body) => {
                    let s = scram.as_mut().ok_or_else(|| {
                        ReplicationError::Protocol("SASL continue before SASL start".into())
                    })?;
                    s.update(body.data())
                        .map_err(|e| ReplicationError::Auth(e.to_string()))?;
                    frontend::sasl_response(s.message(), &mut self.write_buf)?;
                    self.flush().await?;
                }
                backend::Message::AuthenticationSaslFinal(body) => {
                    let s = scram.as_mut().ok_or_else(|| {
                        ReplicationError::Protocol("SASL final before SASL start".into())
                    })?;
                    s.finish(body.data())
                        .map_err(|e| ReplicationError::Auth(e.to_string()))?;
                }
                backend::Message::AuthenticationKerberosV5
                | backend::Message::AuthenticationScmCredential
                | backend::Message::AuthenticationGss
                | backend::Message::AuthenticationSspi
                | backend::Message::AuthenticationGssContinue(_) => {
                    return Err(ReplicationError::Auth(
                        "the server asks for an authentication method Callosum does not support (use scram-sha-256, md5, password or trust)".into(),
                    ));
                }
                backend::Message::ParameterStatus(body) => self.parameter_status(&body)?,
                backend::Message::BackendKeyData(_) | backend::Message::NoticeResponse(_) => {}
                backend::Message::ErrorResponse(body) => {
                    return Err(ReplicationError::Server(server_error(&body)?))
                }
                backend::Message::ReadyForQuery(_) => return Ok(()),
                _ => {
                    return Err(ReplicationError::Protocol(
                        "unexpected message during startup".into(),
                    ))
                }
            }
        }
    }

    fn parameter_status(
        &mut self,
        body: &backend::ParameterStatusBody,
    ) -> Result<(), ReplicationError> {
        if body.name()? == "server_version" {
            // "15.4 (Debian …)" or "16beta1": major * 10000 + minor.
            let v = body.value()?;
            let digits = |s: &str| -> u32 {
                s.chars()
                    .take_while(|c| c.is_ascii_digit())
                    .collect::<String>()
                    .parse()
                    .unwrap_or(0)
            };
            let major = digits(v);
            let minor = v.split_once('.').map(|(_, rest)| digits(rest)).unwrap_or(0);
            self.server_version_num = major * 10000 + minor;
        }
        Ok(())
    }

    /// The server's version as `major * 10000 + minor` (150004 for 15.4).
    pub fn server_version_num(&self) -> u32 {
        self.server_version_num
    }

    /// Runs one replication command or SQL statement with the simple query
    /// protocol and returns the rows of its (last) result set as text.
    pub async fn simple_query(&mut self, sql: &str) -> Result<QueryResult, ReplicationError> {
        if self.streaming {
            return Err(ReplicationError::Protocol(
                "cannot run a query while streaming".into(),
            ));
        }
        frontend::query(sql, &mut self.write_buf)?;
        self.flush().await?;
        let mut result = QueryResult::default();
        let mut error = None;
        loop {
            match self.read_message().await? {
                backend::Message::RowDescription(body) => {
                    result = QueryResult::default();
                    let mut fields = body.fields();
                    while let Some(f) = fields.next()? {
                        result.columns.push(f.name().to_string());
                    }
                }
                backend::Message::DataRow(body) => {
                    let buf = body.buffer();
                    let mut ranges = body.ranges();
                    let mut row = Vec::new();
                    while let Some(range) = ranges.next()? {
                        row.push(match range {
                            Some(r) => Some(
                                std::str::from_utf8(&buf[r])
                                    .map_err(|_| {
                                        ReplicationError::Protocol("non UTF-8 result".into())
                                    })?
                                    .to_string(),
                            ),
                            None => None,
                        });
                    }
                    result.rows.push(row);
                }
                backend::Message::CommandComplete(_)
                | backend::Message::EmptyQueryResponse
                | backend::Message::NoticeResponse(_) => {}
                backend::Message::ParameterStatus(body) => self.parameter_status(&body)?,
                backend::Message::ErrorResponse(body) => error = Some(server_error(&body)?),
                backend::Message::ReadyForQuery(_) => {
                    return match error {
                        Some(e) => Err(ReplicationError::Server(e)),
                        None => Ok(result),
                    }
                }
                _ => {
                    return Err(ReplicationError::Protocol(
                        "unexpected message in a query response".into(),
                    ))
                }
            }
        }
    }

    /// `IDENTIFY_SYSTEM`.
    pub async fn identify_system(&mut self) -> Result<SystemIdentity, ReplicationError> {
        let r = self.simple_query("IDENTIFY_SYSTEM").await?;
        let row =
            r.rows.first().filter(|row| row.len() >= 4).ok_or_else(|| {
                ReplicationError::Protocol("IDENTIFY_SYSTEM returned no row".into())
            })?;
        let text = |i: usize| row[i].clone().unwrap_or_default();
        Ok(SystemIdentity {
            system_id: text(0),
            timeline: text(1)
                .parse()
                .map_err(|_| ReplicationError::Protocol("invalid timeline".into()))?,
            xlog_pos: text(2).parse().map_err(ReplicationError::Protocol)?,
            dbname: row[3].clone(),
        })
    }

    /// `CREATE_REPLICATION_SLOT "name" LOGICAL pgoutput`, with the snapshot
    /// option in PostgreSQL 15 syntax (`(SNAPSHOT 'export')`), or the legacy
    /// keyword on older servers. Must run before [`Self::start_replication`].
    pub async fn create_logical_slot(
        &mut self,
        name: &str,
        snapshot: SlotSnapshot,
    ) -> Result<CreatedSlot, ReplicationError> {
        let sql = if self.server_version_num >= 150000 {
            format!(
                "CREATE_REPLICATION_SLOT {} LOGICAL pgoutput (SNAPSHOT '{}')",
                quote_ident(name),
                snapshot.pg15_word()
            )
        } else {
            format!(
                "CREATE_REPLICATION_SLOT {} LOGICAL pgoutput {}",
                quote_ident(name),
                snapshot.legacy_keyword()
            )
        };
        let r = self.simple_query(&sql).await?;
        let row = r.rows.first().filter(|row| row.len() >= 4).ok_or_else(|| {
            ReplicationError::Protocol("CREATE_REPLICATION_SLOT returned no row".into())
        })?;
        Ok(CreatedSlot {
            slot_name: row[0].clone().unwrap_or_default(),
            consistent_point: row[1]
                .clone()
                .unwrap_or_default()
                .parse()
                .map_err(ReplicationError::Protocol)?,
            snapshot_name: row[2].clone(),
            output_plugin: row[3].clone(),
        })
    }

    /// `START_REPLICATION SLOT "slot" LOGICAL start (options)`; on success the
    /// connection is in CopyBoth mode: call [`Self::recv`].
    ///
    /// Option values are quoted here; for pgoutput pass e.g.
    /// `[("proto_version", "1"), ("publication_names", "\"pub\"")]`.
    pub async fn start_replication(
        &mut self,
        slot: &str,
        start: Lsn,
        options: &[(&str, &str)],
    ) -> Result<(), ReplicationError> {
        let options = options
            .iter()
            .map(|(k, v)| format!("{} {}", quote_ident(k), quote_literal(v)))
            .collect::<Vec<_>>()
            .join(", ");
        let sql = format!(
            "START_REPLICATION SLOT {} LOGICAL {} ({})",
            quote_ident(slot),
            start,
            options
        );
        frontend::query(&sql, &mut self.write_buf)?;
        self.flush().await?;
        loop {
            if let Some(frame) = self.try_take_copy_both_response()? {
                drop(frame);
                self.streaming = true;
                return Ok(());
            }
            match self.try_parse()? {
                Some(backend::Message::ErrorResponse(body)) => {
                    let err = server_error(&body)?;
                    // Drain up to ReadyForQuery so the connection stays usable.
                    loop {
                        match self.read_message().await? {
                            backend::Message::ReadyForQuery(_) => break,
                            _ => continue,
                        }
                    }
                    return Err(ReplicationError::Server(err));
                }
                Some(backend::Message::NoticeResponse(_)) => {}
                Some(backend::Message::ParameterStatus(body)) => self.parameter_status(&body)?,
                Some(_) => {
                    return Err(ReplicationError::Protocol(
                        "unexpected message in reply to START_REPLICATION".into(),
                    ))
                }
                None => self.fill().await?,
            }
        }
    }

    /// The next replication message. Cancel-safe.
    pub async fn recv(&mut self) -> Result<ReplicationMessage, ReplicationError> {
        if !self.streaming {
            return Err(ReplicationError::Protocol("not streaming".into()));
        }
        loop {
            match self.try_parse()? {
                Some(backend::Message::CopyData(body)) => {
                    return parse_copy_data(body.into_bytes());
                }
                Some(backend::Message::ErrorResponse(body)) => {
                    self.streaming = false;
                    return Err(ReplicationError::Server(server_error(&body)?));
                }
                // a walsender that is caught up when the server shuts down
                // ends with CommandComplete and no CopyDone (WalSndDone)
                Some(backend::Message::CopyDone | backend::Message::CommandComplete(_)) => {
                    self.streaming = false;
                    return Err(ReplicationError::StreamEnded);
                }
                Some(backend::Message::NoticeResponse(_)) => {}
                Some(backend::Message::ParameterStatus(body)) => self.parameter_status(&body)?,
                Some(other) => {
                    return Err(ReplicationError::Protocol(format!(
                        "unexpected message while streaming: {}",
                        message_name(&other)
                    )))
                }
                None => self.fill().await?,
            }
        }
    }

    /// Queues a standby status update (`r`); [`Self::flush`] sends it.
    pub fn queue_status_update(&mut self, write: Lsn, flush: Lsn, apply: Lsn, reply: bool) {
        let mut body = BytesMut::with_capacity(34);
        body.put_u8(b'r');
        body.put_u64(write.0);
        body.put_u64(flush.0);
        body.put_u64(apply.0);
        body.put_i64(pg_now_micros());
        body.put_u8(u8::from(reply));
        // Cannot fail: the body is 34 bytes.
        if let Ok(data) = frontend::CopyData::new(body.freeze()) {
            data.write(&mut self.write_buf);
        }
    }

    /// Whether queued bytes wait to be written.
    pub fn has_pending_writes(&self) -> bool {
        !self.write_buf.is_empty()
    }

    /// Writes every queued byte. Cancel-safe: bytes not yet written stay
    /// queued.
    pub async fn flush(&mut self) -> Result<(), ReplicationError> {
        while !self.write_buf.is_empty() {
            let n = self.io.write(&self.write_buf).await?;
            if n == 0 {
                return Err(ReplicationError::Io(io::ErrorKind::WriteZero.into()));
            }
            self.write_buf.advance(n);
        }
        self.io.flush().await?;
        Ok(())
    }

    /// Reads more bytes into the buffer. Cancel-safe.
    async fn fill(&mut self) -> Result<(), ReplicationError> {
        let n = self.io.read_buf(&mut self.read_buf).await?;
        if n == 0 {
            return Err(ReplicationError::Io(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "the server closed the connection",
            )));
        }
        Ok(())
    }

    /// Checks the next frame's header without consuming it: `Some(tag)` once
    /// it is complete.
    fn complete_frame_tag(&mut self) -> Result<Option<u8>, ReplicationError> {
        if self.read_buf.len() < 5 {
            return Ok(None);
        }
        let tag = self.read_buf[0];
        let len = u32::from_be_bytes([
            self.read_buf[1],
            self.read_buf[2],
            self.read_buf[3],
            self.read_buf[4],
        ]) as usize;
        if !(4..=MAX_FRAME_LEN).contains(&len) {
            return Err(ReplicationError::Protocol(format!(
                "invalid message length {len}"
            )));
        }
        if self.read_buf.len() < len + 1 {
            self.read_buf.reserve(len + 1 - self.read_buf.len());
            return Ok(None);
        }
        Ok(Some(tag))
    }

    fn try_take_copy_both_response(&mut self) -> Result<Option<Bytes>, ReplicationError> {
        match self.complete_frame_tag()? {
            Some(b'W') => {
                let len = u32::from_be_bytes([
                    self.read_buf[1],
                    self.read_buf[2],
                    self.read_buf[3],
                    self.read_buf[4],
                ]) as usize;
                Ok(Some(self.read_buf.split_to(len + 1).freeze()))
            }
            _ => Ok(None),
        }
    }

    fn try_parse(&mut self) -> Result<Option<backend::Message>, ReplicationError> {
        match self.complete_frame_tag()? {
            Some(_) => Ok(backend::Message::parse(&mut self.read_buf)?),
            None => Ok(None),
        }
    }

    async fn read_message(&mut self) -> Result<backend::Message, ReplicationError> {
        loop {
            if let Some(m) = self.try_parse()? {
                return Ok(m);
            }
            self.fill().await?;
        }
    }
}

fn parse_copy_data(mut data: Bytes) -> Result<ReplicationMessage, ReplicationError> {
    let truncated = || ReplicationError::Protocol("truncated replication message".into());
    if data.is_empty() {
        return Err(truncated());
    }
    match data.get_u8() {
        b'w' => {
            if data.len() < 24 {
                return Err(truncated());
            }
            let wal_start = data.get_u64();
            let wal_end = data.get_u64();
            let server_time = data.get_i64();
            Ok(ReplicationMessage::XLogData {
                wal_start,
                wal_end,
                server_time,
                data,
            })
        }
        b'k' => {
            if data.len() < 17 {
                return Err(truncated());
            }
            Ok(ReplicationMessage::Keepalive {
                wal_end: data.get_u64(),
                server_time: data.get_i64(),
                reply_requested: data.get_u8() == 1,
            })
        }
        tag => Err(ReplicationError::Protocol(format!(
            "unknown replication message tag {tag:#04x}"
        ))),
    }
}

fn server_error(body: &backend::ErrorResponseBody) -> Result<ServerError, ReplicationError> {
    let mut e = ServerError {
        severity: String::new(),
        code: String::new(),
        message: String::new(),
        detail: None,
        hint: None,
    };
    let mut fields = body.fields();
    while let Some(f) = fields.next()? {
        let value = String::from_utf8_lossy(f.value_bytes()).into_owned();
        match f.type_() {
            b'V' => e.severity = value,
            b'S' if e.severity.is_empty() => e.severity = value,
            b'C' => e.code = value,
            b'M' => e.message = value,
            b'D' => e.detail = Some(value),
            b'H' => e.hint = Some(value),
            _ => {}
        }
    }
    Ok(e)
}

/// Now as microseconds since 2000-01-01 UTC.
pub fn pg_now_micros() -> i64 {
    let unix = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_micros() as i64;
    unix - PG_EPOCH_OFFSET_MICROS
}

/// `"name"` with embedded quotes doubled.
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// `'text'` with embedded quotes doubled.
pub fn quote_literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

/// The protocol name of a backend message, for error messages.
fn message_name(message: &backend::Message) -> &'static str {
    match message {
        backend::Message::AuthenticationOk => "AuthenticationOk",
        backend::Message::BackendKeyData(_) => "BackendKeyData",
        backend::Message::BindComplete => "BindComplete",
        backend::Message::CloseComplete => "CloseComplete",
        backend::Message::CommandComplete(_) => "CommandComplete",
        backend::Message::CopyData(_) => "CopyData",
        backend::Message::CopyDone => "CopyDone",
        backend::Message::CopyInResponse(_) => "CopyInResponse",
        backend::Message::CopyOutResponse(_) => "CopyOutResponse",
        backend::Message::DataRow(_) => "DataRow",
        backend::Message::EmptyQueryResponse => "EmptyQueryResponse",
        backend::Message::ErrorResponse(_) => "ErrorResponse",
        backend::Message::NoData => "NoData",
        backend::Message::NoticeResponse(_) => "NoticeResponse",
        backend::Message::NotificationResponse(_) => "NotificationResponse",
        backend::Message::ParameterDescription(_) => "ParameterDescription",
        backend::Message::ParameterStatus(_) => "ParameterStatus",
        backend::Message::ParseComplete => "ParseComplete",
        backend::Message::PortalSuspended => "PortalSuspended",
        backend::Message::ReadyForQuery(_) => "ReadyForQuery",
        backend::Message::RowDescription(_) => "RowDescription",
        _ => "another message",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_xlogdata_and_keepalive() {
        let mut w = BytesMut::new();
        w.put_u8(b'w');
        w.put_u64(1);
        w.put_u64(2);
        w.put_i64(3);
        w.put_slice(b"B...");
        assert_eq!(
            parse_copy_data(w.freeze()).unwrap(),
            ReplicationMessage::XLogData {
                wal_start: 1,
                wal_end: 2,
                server_time: 3,
                data: Bytes::from_static(b"B...")
            }
        );
        let mut k = BytesMut::new();
        k.put_u8(b'k');
        k.put_u64(7);
        k.put_i64(8);
        k.put_u8(1);
        assert_eq!(
            parse_copy_data(k.freeze()).unwrap(),
            ReplicationMessage::Keepalive {
                wal_end: 7,
                server_time: 8,
                reply_requested: true
            }
        );
        assert!(parse_copy_data(Bytes::from_static(b"k\0")).is_err());
        assert!(parse_copy_data(Bytes::from_static(b"")).is_err());
        assert!(parse_copy_data(Bytes::from_static(b"x")).is_err());
    }

    #[test]
    fn quoting() {
        assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");
        assert_eq!(quote_literal("it's"), "'it''s'");
    }
}
