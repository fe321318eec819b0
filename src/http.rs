//! The agent's HTTP endpoint on `[http] listen`:
//!
//! | route | answer |
//! |---|---|
//! | `GET /metrics` | every metric, Prometheus text format (`text/plain; version=0.0.4`) |
//! | `GET /healthz` | `200 ok` while the process runs |
//! | `GET /readyz` | `200 ready` when every pipeline is streaming and its source store's capture is connected, else `503` with one reason per line |
//! | `GET /status` | JSON [`StatusReport`]: per pipeline state, positions, lag, pending events, dead letters, last error |
//! | `GET /dlq[?pipeline=P]` | JSON [`DeadLetterList`]: every pipeline's dead letters, oldest first |
//! | `GET /dlq/{pipeline}/{id}[?offset=0&limit=100]` | JSON [`DeadLetterDetail`]: one dead letter and a page of its events (row values) |
//! | `POST /dlq/{pipeline}/replay[?through=ID]` | JSON [`ReplayReport`]: applies the queue in order, oldest first; `409` when the pipeline is not applying |
//! | `POST /dlq/{pipeline}/discard?id=ID` or `?all=true` | JSON [`DiscardReport`]: drops entries without applying them |
//!
//! The `/dlq` routes are in [`crate::dead_letter::api`]; unknown pipelines
//! and entries answer `404`, bad parameters `400`, all with a text reason.
//! They are the admin routes: with an admin token (`[http] token_env` or
//! `token_file`) each needs `Authorization: Bearer <token>` (`401` without,
//! `403` with another; compared in constant time, refusals logged without
//! the token); without one the config allows only a loopback `listen`.
//! `/metrics`, `/healthz`, `/readyz` and `/status` (no row values) stay
//! open for scrapers.
//!
//! [`AgentStatus`] is the shared state the pipelines update and `/status`
//! and `/readyz` read; `callosum status` fetches `/status` and deserializes
//! the same [`StatusReport`]. `request_json` is the small HTTP client
//! both `callosum status` and `callosum dlq` use.
//!
//! [`DeadLetterList`]: crate::dead_letter::api::DeadLetterList
//! [`DeadLetterDetail`]: crate::dead_letter::api::DeadLetterDetail
//! [`ReplayReport`]: crate::dead_letter::ReplayReport
//! [`DiscardReport`]: crate::dead_letter::DiscardReport

use crate::config::Secret;
use crate::dead_letter::DeadLetterControl;
use crate::metrics::Metrics;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, RwLock};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Content type of `/metrics`: the Prometheus text exposition format.
pub const METRICS_CONTENT_TYPE: &str = "text/plain; version=0.0.4";

/// Where a pipeline is in its life.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PipelineState {
    /// Connecting, reading its checkpoint, catching up to the log.
    #[default]
    Starting,
    /// Applying changes as they come (possibly with a backlog).
    Streaming,
    /// Backing off after a transient error; `last_error` says which.
    Retrying,
    /// Stopped by a permanent error with `on_error = "halt"`; needs the
    /// operator.
    Halted,
    /// Stopped on shutdown.
    Stopped,
    /// Waiting for the lease (`[lease]`): another agent is active; this one
    /// applies nothing. Not ready.
    Standby,
}

impl PipelineState {
    /// Every state, for the `callosum_pipeline_state` series.
    pub const ALL: [PipelineState; 6] = [
        PipelineState::Starting,
        PipelineState::Streaming,
        PipelineState::Retrying,
        PipelineState::Halted,
        PipelineState::Stopped,
        PipelineState::Standby,
    ];

    /// The lowercase name used in JSON and messages.
    pub fn as_str(self) -> &'static str {
        match self {
            PipelineState::Starting => "starting",
            PipelineState::Streaming => "streaming",
            PipelineState::Retrying => "retrying",
            PipelineState::Halted => "halted",
            PipelineState::Stopped => "stopped",
            PipelineState::Standby => "standby",
        }
    }
}

impl fmt::Display for PipelineState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What `/status` shows about one pipeline.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct PipelineStatus {
    pub state: PipelineState,
    /// Newest source position durably in the change log (display form).
    pub source_position: Option<String>,
    /// Position of the last transaction committed in the target (the
    /// checkpoint), display form.
    pub applied_position: Option<String>,
    /// Age of the oldest committed change not yet applied; 0 when caught up.
    pub lag_seconds: f64,
    /// Events in the change log not yet applied.
    pub pending_events: u64,
    /// Transactions in the dead-letter queue.
    pub dead_letters: u64,
    /// The last error, operator-facing (what, why, how to fix); cleared
    /// when the pipeline streams again.
    pub last_error: Option<String>,
    /// Whether the capture of the pipeline's source store is connected
    /// (a binlog source takes its starting position when it connects).
    #[serde(default)]
    pub source_connected: bool,
}

/// A pipeline's status as shown: applying but without a connected source
/// is not streaming — `retrying` after a capture error, `starting` before
/// the first connection — so a capture that keeps failing never shows as
/// streaming.
fn shown(s: &PipelineStatus) -> PipelineStatus {
    let mut s = s.clone();
    if s.state == PipelineState::Streaming && !s.source_connected {
        s.state = if s.last_error.is_some() {
            PipelineState::Retrying
        } else {
            PipelineState::Starting
        };
    }
    s
}

/// The body of `/status`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct StatusReport {
    /// Pipelines by name.
    pub pipelines: BTreeMap<String, PipelineStatus>,
    /// This agent's lease, with `[lease]` only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lease: Option<LeaseStatus>,
}

/// Whether this agent applies (`[lease]`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LeaseRole {
    /// Holds the lease and applies.
    Active,
    /// Waits for the lease; applies nothing.
    Standby,
}

/// What `/status` shows about this agent's lease.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseStatus {
    /// This agent's name in the lease row (`[lease] holder`).
    pub holder: String,
    /// The epoch of the lease this agent holds; a standby shows the epoch
    /// of the active agent's lease, when it could read it.
    pub epoch: Option<i64>,
    pub role: LeaseRole,
    /// A standby: who holds the lease now, when it could read it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub active_holder: Option<String>,
}

/// Shared, updatable state of every pipeline. Cheap to read and update
/// (short critical sections, never held across an `.await`).
#[derive(Debug, Default)]
pub struct AgentStatus {
    pipelines: RwLock<BTreeMap<String, PipelineStatus>>,
    lease: RwLock<Option<LeaseStatus>>,
}

impl AgentStatus {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds pipeline `name` in state `starting` (keeps it if present).
    pub fn register(&self, name: &str) {
        self.write().entry(name.to_owned()).or_default();
    }

    /// Changes pipeline `name`'s status with `f`, registering it first if
    /// needed.
    pub fn update(&self, name: &str, f: impl FnOnce(&mut PipelineStatus)) {
        f(self.write().entry(name.to_owned()).or_default());
    }

    /// Sets pipeline `name`'s state. `Some(error)` records it as
    /// `last_error`; `None` keeps the last error, except that entering
    /// `streaming` clears it. `halted` is final: a pipeline halts when its
    /// source or its sink meets a permanent error, and the other worker must
    /// not make it look healthy again; only a restart of the agent clears it.
    pub fn set_state(&self, name: &str, state: PipelineState, error: Option<&str>) {
        self.update(name, |s| {
            if s.state == PipelineState::Halted {
                return;
            }
            s.state = state;
            match error {
                Some(error) => s.last_error = Some(error.to_owned()),
                None if state == PipelineState::Streaming => s.last_error = None,
                None => {}
            }
        });
    }

    /// Records `error` as pipeline `name`'s last error without changing its
    /// state (for example a capture error of its source store).
    pub fn set_error(&self, name: &str, error: &str) {
        self.update(name, |s| s.last_error = Some(error.to_owned()));
    }

    /// Records whether the capture of pipeline `name`'s source store is
    /// connected.
    pub fn set_source_connected(&self, name: &str, connected: bool) {
        self.update(name, |s| s.source_connected = connected);
    }

    /// Sets the newest source position durably in the change log.
    pub fn set_source_position(&self, name: &str, position: &str) {
        self.update(name, |s| s.source_position = Some(position.to_owned()));
    }

    /// Sets the position of the last transaction committed in the target.
    pub fn set_applied_position(&self, name: &str, position: &str) {
        self.update(name, |s| s.applied_position = Some(position.to_owned()));
    }

    /// Sets the backlog: events not yet applied and the lag in seconds.
    pub fn set_pending(&self, name: &str, pending_events: u64, lag_seconds: f64) {
        self.update(name, |s| {
            s.pending_events = pending_events;
            s.lag_seconds = lag_seconds;
        });
    }

    /// Sets the number of transactions in the dead-letter queue.
    pub fn set_dead_letters(&self, name: &str, dead_letters: u64) {
        self.update(name, |s| s.dead_letters = dead_letters);
    }

    /// The status of pipeline `name`.
    pub fn get(&self, name: &str) -> Option<PipelineStatus> {
        self.read().get(name).map(shown)
    }

    /// A copy of every pipeline's status.
    pub fn snapshot(&self) -> StatusReport {
        StatusReport {
            pipelines: self
                .read()
                .iter()
                .map(|(name, s)| (name.clone(), shown(s)))
                .collect(),
            lease: self.lease(),
        }
    }

    /// Records this agent's lease.
    pub fn set_lease(&self, lease: LeaseStatus) {
        *self.lease.write().unwrap_or_else(|e| e.into_inner()) = Some(lease);
    }

    /// This agent's lease, with `[lease]` only.
    pub fn lease(&self) -> Option<LeaseStatus> {
        self.lease.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// `Ok` when there is at least one pipeline and every pipeline is
    /// streaming with its source connected; otherwise one reason per
    /// pipeline that is not.
    pub fn readiness(&self) -> Result<(), Vec<String>> {
        let pipelines = self.read();
        if pipelines.is_empty() {
            return Err(vec!["no pipeline is running yet".to_owned()]);
        }
        let reasons: Vec<String> = pipelines
            .iter()
            .filter(|(_, s)| s.state != PipelineState::Streaming || !s.source_connected)
            .map(|(name, s)| match (&s.last_error, s.state) {
                (Some(err), _) => format!("pipeline {name} is {}: {err}", s.state),
                (None, PipelineState::Streaming) => {
                    format!("pipeline {name} waits for its source store to connect")
                }
                (None, _) => format!("pipeline {name} is {}", s.state),
            })
            .collect();
        if reasons.is_empty() {
            Ok(())
        } else {
            Err(reasons)
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<String, PipelineStatus>> {
        // A panic while holding the lock leaves plain data behind: keep
        // serving it.
        self.pipelines.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, BTreeMap<String, PipelineStatus>> {
        self.pipelines.write().unwrap_or_else(|e| e.into_inner())
    }
}

#[derive(Clone)]
struct AppState {
    metrics: Arc<Metrics>,
    status: Arc<AgentStatus>,
}

/// The admin token the admin routes require, if any.
pub type AdminToken = Option<Arc<Secret>>;

/// The endpoint's routes, for [`serve`] or for embedding in another server:
/// the agent's own, open, and the admin routes of
/// [`crate::dead_letter::api::routes`] behind `admin_token`.
pub fn router(
    metrics: Arc<Metrics>,
    status: Arc<AgentStatus>,
    dead_letters: DeadLetterControl,
    admin_token: AdminToken,
) -> Router {
    let admin = crate::dead_letter::api::routes(dead_letters).route_layer(
        axum::middleware::from_fn_with_state(admin_token, require_admin_token),
    );
    Router::new()
        .route("/metrics", get(get_metrics))
        .route("/healthz", get(get_healthz))
        .route("/readyz", get(get_readyz))
        .route("/status", get(get_status))
        .with_state(AppState { metrics, status })
        .merge(admin)
}

/// Lets an admin request through when no token is configured, or when it
/// carries `Authorization: Bearer <token>` (compared in constant time);
/// `401` without a credential, `403` with another one. A refusal is logged
/// with the method and path, never with what was sent.
async fn require_admin_token(
    State(token): State<AdminToken>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let Some(token) = token else {
        return next.run(request).await;
    };
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    let refused = |status: StatusCode, reason: &'static str| {
        tracing::warn!(
            method = %request.method(),
            path = %request.uri().path(),
            reason,
            "admin request refused"
        );
        let mut response = (status, format!("{reason}: send `Authorization: Bearer <token>` with the token of [http] token_file or token_env (callosum dlq does, with the same config)\n")).into_response();
        if status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer realm=\"callosum\""),
            );
        }
        response
    };
    match presented {
        None => refused(StatusCode::UNAUTHORIZED, "no admin credential"),
        Some(p)
            if bool::from(subtle::ConstantTimeEq::ct_eq(
                p.as_bytes(),
                token.expose().as_bytes(),
            )) =>
        {
            next.run(request).await
        }
        Some(_) => refused(StatusCode::FORBIDDEN, "wrong admin credential"),
    }
}

/// Serves the endpoint on `listener` until `shutdown` completes, then
/// finishes the requests in flight and returns.
pub async fn serve(
    listener: tokio::net::TcpListener,
    metrics: Arc<Metrics>,
    status: Arc<AgentStatus>,
    dead_letters: DeadLetterControl,
    admin_token: AdminToken,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, "http endpoint listening");
    }
    axum::serve(listener, router(metrics, status, dead_letters, admin_token))
        .with_graceful_shutdown(shutdown)
        .await
}

/// How long [`fetch_status`] and the other reads of the agent wait for it
/// (connect, request and answer together).
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(5);

/// Why a request to a running agent ([`fetch_status`], the `callosum dlq`
/// client in [`crate::dead_letter::api`]) failed.
#[derive(Debug, thiserror::Error)]
pub enum AgentRequestError {
    #[error("cannot connect to {addr}: {error}")]
    Connect { addr: SocketAddr, error: io::Error },
    #[error("no answer from {addr} within {} s", timeout.as_secs())]
    Timeout { addr: SocketAddr, timeout: Duration },
    #[error("request to {addr} failed: {error}")]
    Io { addr: SocketAddr, error: io::Error },
    /// The agent answered, with a status other than 2xx; `body` is its
    /// (text) reason.
    #[error("{addr} answered HTTP {status}: {body}")]
    Status {
        addr: SocketAddr,
        status: u16,
        body: String,
    },
    #[error("{addr} sent a malformed answer: {reason}")]
    Malformed { addr: SocketAddr, reason: String },
    /// The request could not be made (for example a pipeline name that
    /// cannot be part of a path); nothing was sent.
    #[error("{reason}")]
    InvalidRequest { reason: String },
}

/// The error of [`fetch_status`] (the name it had before the client served
/// more than `/status`).
pub type FetchStatusError = AgentRequestError;

/// A raw HTTP answer: status code, lowercased head, decoded body.
pub(crate) struct RawReply {
    pub(crate) status: u16,
    pub(crate) head: String,
    pub(crate) body: Vec<u8>,
}

/// Where a client reaches a running agent: its `[http] listen`, and the
/// admin token it sends to the admin routes (`None`: none configured).
#[derive(Clone, Debug)]
pub struct AgentEndpoint {
    pub listen: SocketAddr,
    pub admin_token: Option<Secret>,
}

impl From<SocketAddr> for AgentEndpoint {
    fn from(listen: SocketAddr) -> Self {
        AgentEndpoint {
            listen,
            admin_token: None,
        }
    }
}

impl AgentEndpoint {
    /// The agent of `config`, with its admin token.
    pub fn from_config(config: &crate::config::Config) -> anyhow::Result<Self> {
        use anyhow::Context;
        Ok(AgentEndpoint {
            listen: config.http.listen,
            admin_token: config
                .http
                .admin_token()
                .context("cannot read the admin token of [http]")?,
        })
    }
}

/// Fetches `/status` from the agent listening on `listen` (`[http] listen`;
/// an unspecified address such as `0.0.0.0` is reached on loopback).
pub async fn fetch_status(listen: SocketAddr) -> Result<StatusReport, FetchStatusError> {
    request_json(listen, "GET", "/status", FETCH_TIMEOUT, "status").await
}

/// The address to reach an agent listening on `listen` at: an unspecified
/// address such as `0.0.0.0` or `::` is reached on loopback.
pub(crate) fn agent_addr(listen: SocketAddr) -> SocketAddr {
    let mut addr = listen;
    if addr.ip().is_unspecified() {
        addr.set_ip(match addr {
            SocketAddr::V4(_) => IpAddr::V4(Ipv4Addr::LOCALHOST),
            SocketAddr::V6(_) => IpAddr::V6(Ipv6Addr::LOCALHOST),
        });
    }
    addr
}

/// Sends `method path` (no body) to the agent listening on `listen`
/// ([`agent_addr`]) and decodes its 2xx JSON answer as `T`; `what` names
/// the answer in errors. Waits up to `timeout` for the whole exchange. An
/// answer other than 2xx is [`AgentRequestError::Status`] with its body.
pub(crate) async fn request_json<T: DeserializeOwned>(
    agent: impl Into<AgentEndpoint>,
    method: &str,
    path: &str,
    timeout: Duration,
    what: &str,
) -> Result<T, AgentRequestError> {
    let agent = agent.into();
    let addr = agent_addr(agent.listen);
    let request = http_request_with(addr, method, path, agent.admin_token.as_ref());
    let reply = tokio::time::timeout(timeout, request)
        .await
        .map_err(|_| AgentRequestError::Timeout { addr, timeout })??;
    if !(200..300).contains(&reply.status) {
        return Err(AgentRequestError::Status {
            addr,
            status: reply.status,
            body: String::from_utf8_lossy(&reply.body).trim().to_owned(),
        });
    }
    if !reply.head.contains("content-type: application/json") {
        return Err(AgentRequestError::Malformed {
            addr,
            reason: "the answer is not JSON; is a callosum agent listening there?".to_owned(),
        });
    }
    serde_json::from_slice(&reply.body).map_err(|err| AgentRequestError::Malformed {
        addr,
        reason: format!("{what} is not the expected JSON: {err}"),
    })
}

/// A minimal HTTP/1.1 request without a body and with `Connection: close`:
/// enough for the agent's own endpoint without an HTTP client dependency.
/// `path` must already be percent-encoded. With `admin_token`, it is sent
/// as `Authorization: Bearer <token>`.
pub(crate) async fn http_request_with(
    addr: SocketAddr,
    method: &str,
    path: &str,
    admin_token: Option<&Secret>,
) -> Result<RawReply, AgentRequestError> {
    let mut stream = TcpStream::connect(addr)
        .await
        .map_err(|error| AgentRequestError::Connect { addr, error })?;
    let authorization = admin_token
        .map(|t| format!("Authorization: Bearer {}\r\n", t.expose()))
        .unwrap_or_default();
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nAccept: */*\r\n{authorization}Content-Length: 0\r\nConnection: close\r\n\r\n"
    );
    let io_err = |error| AgentRequestError::Io { addr, error };
    stream.write_all(request.as_bytes()).await.map_err(io_err)?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await.map_err(io_err)?;
    let malformed = |reason: &str| AgentRequestError::Malformed {
        addr,
        reason: reason.to_owned(),
    };
    if raw.is_empty() {
        return Err(malformed(
            "the connection closed without an answer (did the agent stop?)",
        ));
    }
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or_else(|| malformed("no end of headers"))?;
    let head = String::from_utf8_lossy(&raw[..split]).to_ascii_lowercase();
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| malformed("no status code"))?;
    let mut body = raw[split + 4..].to_vec();
    if head.contains("transfer-encoding: chunked") {
        body = decode_chunked(&body).ok_or_else(|| malformed("bad chunked encoding"))?;
    }
    Ok(RawReply { status, head, body })
}

/// Decodes an HTTP/1.1 chunked body; `None` if it is malformed.
fn decode_chunked(mut data: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let line_end = data.windows(2).position(|w| w == b"\r\n")?;
        let size_text = std::str::from_utf8(&data[..line_end]).ok()?;
        let size_text = size_text.split(';').next()?.trim();
        let size = usize::from_str_radix(size_text, 16).ok()?;
        data = &data[line_end + 2..];
        if size == 0 {
            return Some(out);
        }
        out.extend_from_slice(data.get(..size)?);
        data = data.get(size + 2..)?;
    }
}

/// `report` as the table `callosum status` prints: one row per pipeline,
/// then its last error, if any, indented below.
pub fn format_status(report: &StatusReport) -> String {
    let lease = report.lease.as_ref().map_or(String::new(), |lease| {
        let role = match lease.role {
            LeaseRole::Active => "active",
            LeaseRole::Standby => "standby",
        };
        let epoch = lease.epoch.map_or("-".to_owned(), |e| e.to_string());
        let active = lease
            .active_holder
            .as_ref()
            .map_or(String::new(), |h| format!(", active agent {h}"));
        format!(
            "lease: {role} as {} (epoch {epoch}{active})\n",
            lease.holder
        )
    });
    if report.pipelines.is_empty() {
        return format!("{lease}no pipelines\n");
    }
    let header = [
        "PIPELINE",
        "STATE",
        "SOURCE POSITION",
        "APPLIED POSITION",
        "LAG",
        "PENDING",
        "DEAD LETTERS",
    ];
    let rows: Vec<[String; 7]> = report
        .pipelines
        .iter()
        .map(|(name, s)| {
            [
                name.clone(),
                s.state.to_string(),
                s.source_position.clone().unwrap_or_else(|| "-".to_owned()),
                s.applied_position.clone().unwrap_or_else(|| "-".to_owned()),
                format!("{:.3}s", s.lag_seconds),
                s.pending_events.to_string(),
                s.dead_letters.to_string(),
            ]
        })
        .collect();
    let rows: Vec<(Vec<String>, Vec<String>)> = rows
        .into_iter()
        .zip(report.pipelines.values())
        .map(|(cells, status)| {
            let notes = status
                .last_error
                .iter()
                .map(|err| format!("last error: {err}"))
                .collect();
            (cells.to_vec(), notes)
        })
        .collect();
    lease + &crate::text_table::format_table(&header, &rows)
}

const TEXT_PLAIN: &str = "text/plain; charset=utf-8";

async fn get_metrics(State(state): State<AppState>) -> Response {
    let report = state.status.snapshot();
    let all_states = PipelineState::ALL.map(PipelineState::as_str);
    state.metrics.set_pipeline_states(
        report
            .pipelines
            .iter()
            .map(|(name, s)| (name.as_str(), s.state.as_str())),
        &all_states,
    );
    (
        [(header::CONTENT_TYPE, METRICS_CONTENT_TYPE)],
        state.metrics.encode(),
    )
        .into_response()
}

async fn get_healthz() -> Response {
    ([(header::CONTENT_TYPE, TEXT_PLAIN)], "ok\n").into_response()
}

async fn get_readyz(State(state): State<AppState>) -> Response {
    match state.status.readiness() {
        Ok(()) => ([(header::CONTENT_TYPE, TEXT_PLAIN)], "ready\n").into_response(),
        Err(reasons) => {
            let mut body = reasons.join("\n");
            body.push('\n');
            (
                StatusCode::SERVICE_UNAVAILABLE,
                [(header::CONTENT_TYPE, TEXT_PLAIN)],
                body,
            )
                .into_response()
        }
    }
}

async fn get_status(State(state): State<AppState>) -> Response {
    match serde_json::to_string_pretty(&state.status.snapshot()) {
        Ok(body) => ([(header::CONTENT_TYPE, "application/json")], body).into_response(),
        Err(err) => {
            // Only a non-finite lag could fail to serialize.
            tracing::error!(error = %err, "failed to serialize status");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                [(header::CONTENT_TYPE, TEXT_PLAIN)],
                format!("failed to serialize status: {err}\n"),
            )
                .into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    struct Reply {
        status: u16,
        headers: String,
        body: String,
    }

    async fn get(addr: SocketAddr, path: &str) -> Reply {
        let raw = http_request_with(addr, "GET", path, None).await.unwrap();
        Reply {
            status: raw.status,
            headers: raw.head,
            body: String::from_utf8(raw.body).unwrap(),
        }
    }

    async fn start() -> (
        SocketAddr,
        Arc<Metrics>,
        Arc<AgentStatus>,
        tokio::sync::oneshot::Sender<()>,
        tokio::task::JoinHandle<std::io::Result<()>>,
    ) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let metrics = Arc::new(Metrics::new());
        let status = Arc::new(AgentStatus::new());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(serve(
            listener,
            metrics.clone(),
            status.clone(),
            DeadLetterControl::new(),
            None,
            async {
                let _ = stopped.await;
            },
        ));
        (addr, metrics, status, stop, server)
    }

    #[tokio::test]
    async fn healthz_and_metrics() {
        let (addr, metrics, _status, stop, server) = start().await;
        let reply = get(addr, "/healthz").await;
        assert_eq!(reply.status, 200);
        assert_eq!(reply.body, "ok\n");

        metrics.pipeline("crm_to_erp").applied_events.inc_by(5);
        let reply = get(addr, "/metrics").await;
        assert_eq!(reply.status, 200);
        assert!(
            reply
                .headers
                .contains("content-type: text/plain; version=0.0.4"),
            "{}",
            reply.headers
        );
        assert!(
            reply
                .body
                .contains("callosum_applied_events_total{pipeline=\"crm_to_erp\"} 5"),
            "{}",
            reply.body
        );

        assert_eq!(get(addr, "/nope").await.status, 404);
        stop.send(()).unwrap();
        server.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn metrics_show_each_pipeline_state_as_status_does() {
        let (addr, _metrics, status, stop, server) = start().await;
        status.set_state("a", PipelineState::Streaming, None);
        status.set_source_connected("a", true);
        status.set_state("b", PipelineState::Halted, Some("duplicate key"));
        // applying, but its source is not connected: shown as starting
        status.set_state("c", PipelineState::Streaming, None);
        let body = get(addr, "/metrics").await.body;
        let value = |pipeline: &str, state: &str| {
            let prefix =
                format!("callosum_pipeline_state{{pipeline=\"{pipeline}\",state=\"{state}\"}} ");
            body.lines()
                .find_map(|l| l.strip_prefix(&prefix))
                .unwrap_or_else(|| panic!("no series {prefix} in\n{body}"))
                .to_owned()
        };
        assert_eq!(value("a", "streaming"), "1");
        assert_eq!(value("a", "halted"), "0");
        assert_eq!(value("b", "halted"), "1");
        assert_eq!(value("b", "streaming"), "0");
        assert_eq!(value("c", "starting"), "1");
        assert_eq!(value("c", "streaming"), "0");
        stop.send(()).unwrap();
        server.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn readyz_follows_pipeline_states() {
        let (addr, _metrics, status, stop, server) = start().await;
        let reply = get(addr, "/readyz").await;
        assert_eq!(reply.status, 503);
        assert!(reply.body.contains("no pipeline"), "{}", reply.body);

        status.register("a");
        status.set_state("b", PipelineState::Streaming, None);
        status.set_source_connected("b", true);
        status.set_state("c", PipelineState::Retrying, Some("connection refused"));
        let reply = get(addr, "/readyz").await;
        assert_eq!(reply.status, 503);
        assert_eq!(
            reply.body,
            "pipeline a is starting\npipeline c is retrying: connection refused\n"
        );

        // applying, but the binlog source has not taken its position yet
        status.set_state("a", PipelineState::Streaming, None);
        status.set_state("c", PipelineState::Streaming, None);
        status.set_source_connected("c", true);
        let reply = get(addr, "/readyz").await;
        assert_eq!(reply.status, 503);
        assert_eq!(
            reply.body,
            "pipeline a waits for its source store to connect\n"
        );

        status.set_source_connected("a", true);
        let reply = get(addr, "/readyz").await;
        assert_eq!(reply.status, 200, "{}", reply.body);
        assert_eq!(reply.body, "ready\n");
        assert_eq!(status.get("c").unwrap().last_error, None);

        stop.send(()).unwrap();
        server.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn status_is_json_that_round_trips() {
        let (addr, _metrics, status, stop, server) = start().await;
        status.set_state("crm_to_erp", PipelineState::Streaming, None);
        status.set_source_connected("crm_to_erp", true);
        status.set_source_position("crm_to_erp", "0/16B3748");
        status.set_applied_position("crm_to_erp", "0/16B3700");
        status.set_pending("crm_to_erp", 12, 0.25);
        status.set_dead_letters("crm_to_erp", 1);
        status.set_state("erp_to_crm", PipelineState::Halted, Some("duplicate key"));
        let reply = get(addr, "/status").await;
        assert_eq!(reply.status, 200);
        assert!(reply.headers.contains("content-type: application/json"));
        let report: StatusReport = serde_json::from_str(&reply.body).unwrap();
        assert_eq!(report, status.snapshot());
        let p = &report.pipelines["crm_to_erp"];
        assert_eq!(p.state, PipelineState::Streaming);
        assert_eq!(p.pending_events, 12);
        assert_eq!(
            report.pipelines["erp_to_crm"].last_error.as_deref(),
            Some("duplicate key")
        );
        let json: serde_json::Value = serde_json::from_str(&reply.body).unwrap();
        assert_eq!(json["pipelines"]["erp_to_crm"]["state"], "halted");
        assert_eq!(json["pipelines"]["crm_to_erp"]["lag_seconds"], 0.25);

        stop.send(()).unwrap();
        server.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn fetch_status_reads_the_running_agent() {
        let (addr, _metrics, status, stop, server) = start().await;
        status.set_state(
            "crm_to_erp",
            PipelineState::Retrying,
            Some("connection refused"),
        );
        status.set_pending("crm_to_erp", 3, 1.5);
        let report = fetch_status(addr).await.unwrap();
        assert_eq!(report, status.snapshot());
        // `[http] listen = "0.0.0.0:<port>"` is reached on loopback
        let unspecified = SocketAddr::from(([0, 0, 0, 0], addr.port()));
        assert_eq!(fetch_status(unspecified).await.unwrap(), report);
        stop.send(()).unwrap();
        server.await.unwrap().unwrap();
        let err = fetch_status(addr).await.unwrap_err();
        assert!(matches!(err, FetchStatusError::Connect { .. }), "{err}");
        assert!(err
            .to_string()
            .starts_with(&format!("cannot connect to {addr}")));
    }

    #[tokio::test]
    async fn dlq_routes_are_served_too() {
        let (addr, _metrics, _status, stop, server) = start().await;
        let reply = get(addr, "/dlq").await;
        assert_eq!(reply.status, 200, "{}", reply.body);
        assert!(reply.headers.contains("content-type: application/json"));
        let json: serde_json::Value = serde_json::from_str(&reply.body).unwrap();
        assert_eq!(json, serde_json::json!({"pipelines": {}}));
        assert_eq!(get(addr, "/dlq/p/1").await.status, 404);
        stop.send(()).unwrap();
        server.await.unwrap().unwrap();
    }

    #[test]
    fn chunked_bodies_decode() {
        assert_eq!(
            decode_chunked(b"4\r\nWiki\r\n6;ext=1\r\npedia \r\n0\r\n\r\n").as_deref(),
            Some(&b"Wikipedia "[..])
        );
        assert_eq!(decode_chunked(b"zz\r\n"), None);
        assert_eq!(decode_chunked(b"10\r\nshort\r\n"), None);
    }

    #[test]
    fn a_pipeline_whose_capture_fails_is_not_shown_streaming() {
        let status = AgentStatus::new();
        status.set_state("p", PipelineState::Streaming, None);
        assert_eq!(status.get("p").unwrap().state, PipelineState::Starting);
        status.set_source_connected("p", true);
        assert_eq!(status.get("p").unwrap().state, PipelineState::Streaming);
        status.set_error("p", "connection refused");
        status.set_source_connected("p", false);
        assert_eq!(status.get("p").unwrap().state, PipelineState::Retrying);
        assert_eq!(
            status.snapshot().pipelines["p"].state,
            PipelineState::Retrying
        );
    }

    #[test]
    fn format_status_prints_a_table() {
        assert_eq!(format_status(&StatusReport::default()), "no pipelines\n");
        let status = AgentStatus::new();
        status.set_state("crm_to_erp", PipelineState::Streaming, None);
        status.set_source_connected("crm_to_erp", true);
        status.set_source_position("crm_to_erp", "0/16B3748");
        status.set_applied_position("crm_to_erp", "0/16B3700");
        status.set_pending("crm_to_erp", 12, 0.25);
        status.set_state("erp_to_crm", PipelineState::Halted, Some("duplicate key"));
        let text = format_status(&status.snapshot());
        let expected = "\
PIPELINE    STATE      SOURCE POSITION  APPLIED POSITION  LAG     PENDING  DEAD LETTERS
crm_to_erp  streaming  0/16B3748        0/16B3700         0.250s  12       0
erp_to_crm  halted     -                -                 0.000s  0        0
    last error: duplicate key
";
        assert_eq!(text, expected, "\n{text}");
    }

    #[test]
    fn states_serialize_lowercase() {
        for state in PipelineState::ALL {
            let json = serde_json::to_string(&state).unwrap();
            assert_eq!(json, format!("\"{state}\""));
            assert_eq!(serde_json::from_str::<PipelineState>(&json).unwrap(), state);
        }
    }
}
