//! `/dlq`: the dead-letter queue over HTTP, and the client `callosum dlq` uses.
//!
//! Reads (`GET /dlq`, `GET /dlq/{pipeline}/{id}`) go straight to the queue in
//! the change log. Changes (`POST /dlq/{pipeline}/replay`,
//! `POST /dlq/{pipeline}/discard`) are [`DeadLetterCommand`]s sent to the
//! pipeline's apply worker, the only code that changes the queue; the
//! request waits for its answer. A pipeline whose worker does not take
//! commands (halted, stopping) answers `409`.
//!
//! Every error is a text body: `400` for bad parameters (unknown ones too,
//! so that a typo such as `?thru=3` cannot replay the whole queue), `404`
//! for an unknown pipeline or entry, `409` when the worker refuses or is
//! gone, `500` when the log cannot be read.
//!
//! The detail view shows row values: it is the operator's inspection
//! endpoint. They are never logged.

use axum::extract::{Path, RawQuery, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use callosum_api::{ChangeEvent, RowChange, TableSchema, Value};
use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::oneshot;

use super::{
    DeadLetterCommand, DeadLetterControl, DiscardReport, DiscardSelection, PipelineDeadLetters,
    ReplayReport,
};
use crate::config::Config;
use crate::http::{request_json, AgentEndpoint, AgentRequestError, FETCH_TIMEOUT};
use crate::log::{DeadLetter, DeadLetters, LogError};

/// Events `GET /dlq/{pipeline}/{id}` returns when `limit` is not given.
pub const DEFAULT_EVENT_LIMIT: u64 = 100;

/// The most events one `GET /dlq/{pipeline}/{id}` returns.
pub const MAX_EVENT_LIMIT: u64 = 10_000;

/// How long the client waits for a replay or a discard: replaying a large
/// transaction can take a while.
pub const CHANGE_TIMEOUT: Duration = Duration::from_secs(30 * 60);

/// One dead letter as the operator sees it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeadLetterView {
    pub id: u64,
    /// The source transaction's position (display form, e.g. `pg:0/16B3748`).
    pub position: String,
    /// Commit time at the source, RFC 3339 UTC.
    pub committed_at: String,
    /// When it was dead-lettered, RFC 3339 UTC.
    pub dead_lettered_at: String,
    /// Row changes it holds.
    pub events: u64,
    /// The source tables it changes, `ns.table`, sorted.
    pub tables: Vec<String>,
    /// The error kind (`constraint`, `conversion`, …) or `queued`.
    pub reason_kind: String,
    pub message: String,
    pub hint: Option<String>,
    /// The dead letter this one is queued behind.
    pub behind: Option<u64>,
}

impl From<&DeadLetter> for DeadLetterView {
    fn from(entry: &DeadLetter) -> Self {
        Self {
            id: entry.id,
            position: entry.position.to_string(),
            committed_at: micros_to_rfc3339(entry.commit_time_micros),
            dead_lettered_at: micros_to_rfc3339(entry.dead_lettered_at_micros),
            events: entry.events,
            tables: entry.tables.iter().map(ToString::to_string).collect(),
            reason_kind: entry.reason.kind.clone(),
            message: entry.reason.message.clone(),
            hint: entry.reason.hint.clone(),
            behind: entry.reason.behind,
        }
    }
}

/// The body of `GET /dlq`: every pipeline asked for (all configured ones,
/// or the one of `?pipeline=`), each with its entries oldest first (an
/// empty list when its queue is empty).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeadLetterList {
    pub pipelines: BTreeMap<String, Vec<DeadLetterView>>,
}

/// The body of `GET /dlq/{pipeline}/{id}`: the entry and its events from
/// `offset` on (0-based), at most `limit` of them.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct DeadLetterDetail {
    pub pipeline: String,
    pub entry: DeadLetterView,
    /// Index (0-based) of the first event in `events`.
    pub offset: u64,
    pub events: Vec<EventView>,
}

/// What a row change does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EventOp {
    Insert,
    Update,
    Delete,
    Truncate,
}

impl EventOp {
    pub fn as_str(self) -> &'static str {
        match self {
            EventOp::Insert => "insert",
            EventOp::Update => "update",
            EventOp::Delete => "delete",
            EventOp::Truncate => "truncate",
        }
    }
}

/// One row change, values as JSON.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct EventView {
    /// `ns.table`.
    pub table: String,
    pub op: EventOp,
    /// Insert and update: column → value, without the columns the source
    /// did not send (`unchanged`).
    #[serde(default)]
    pub row: Option<serde_json::Map<String, serde_json::Value>>,
    /// Update: the columns the source did not send because they did not
    /// change (PostgreSQL unchanged TOAST).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unchanged: Vec<String>,
    /// Delete: the key columns of the deleted row. Update: the old key
    /// columns when the update changed the key.
    #[serde(default)]
    pub key: Option<serde_json::Map<String, serde_json::Value>>,
}

impl From<&ChangeEvent> for EventView {
    fn from(event: &ChangeEvent) -> Self {
        let schema = &event.schema;
        let (op, row, unchanged, key) = match &event.change {
            RowChange::Insert { row } => {
                let (row, unchanged) = row_json(schema, row);
                (EventOp::Insert, Some(row), unchanged, None)
            }
            RowChange::Update { old_key, row } => {
                let (row, unchanged) = row_json(schema, row);
                let key = old_key.as_ref().map(|old| key_json(schema, old));
                (EventOp::Update, Some(row), unchanged, key)
            }
            RowChange::Delete { key } => (
                EventOp::Delete,
                None,
                Vec::new(),
                Some(key_json(schema, key)),
            ),
            RowChange::Truncate => (EventOp::Truncate, None, Vec::new(), None),
        };
        Self {
            table: schema.table.to_string(),
            op,
            row,
            unchanged,
            key,
        }
    }
}

/// The columns of `row` that the source sent, and the names of those it did
/// not ([`Value::Unchanged`]).
fn row_json(
    schema: &TableSchema,
    row: &[Value],
) -> (serde_json::Map<String, serde_json::Value>, Vec<String>) {
    let mut map = serde_json::Map::new();
    let mut unchanged = Vec::new();
    for (column, value) in schema.columns.iter().zip(row) {
        if value.is_unchanged() {
            unchanged.push(column.name.clone());
        } else {
            map.insert(column.name.clone(), value_json(value));
        }
    }
    (map, unchanged)
}

/// The key columns of `key` (the other columns are `NULL` filler); every
/// column when the table has no key column.
fn key_json(schema: &TableSchema, key: &[Value]) -> serde_json::Map<String, serde_json::Value> {
    let has_key = schema.columns.iter().any(|c| c.is_key);
    schema
        .columns
        .iter()
        .zip(key)
        .filter(|(column, _)| column.is_key || !has_key)
        .map(|(column, value)| (column.name.clone(), value_json(value)))
        .collect()
}

/// `value` as JSON: numbers and booleans as such, JSON documents parsed,
/// everything else as text (bytes as `\x` hex, times ISO 8601).
pub fn value_json(value: &Value) -> serde_json::Value {
    use serde_json::Value as J;
    match value {
        Value::Null | Value::Unchanged => J::Null,
        Value::Bool(b) => J::Bool(*b),
        Value::Int(i) => J::from(*i),
        Value::UInt(u) => J::from(*u),
        Value::Float(f) => match serde_json::Number::from_f64(*f) {
            Some(n) => J::Number(n),
            None if f.is_nan() => J::String("NaN".to_owned()),
            None if *f > 0.0 => J::String("Infinity".to_owned()),
            None => J::String("-Infinity".to_owned()),
        },
        Value::Decimal(d) => J::String(d.clone()),
        Value::Text(t) => J::String(t.clone()),
        Value::Bytes(bytes) => {
            let mut text = String::with_capacity(2 + bytes.len() * 2);
            text.push_str("\\x");
            for b in bytes {
                text.push_str(&format!("{b:02x}"));
            }
            J::String(text)
        }
        Value::Date(d) => J::String(d.format("%Y-%m-%d").to_string()),
        Value::Time(t) => J::String(t.format("%H:%M:%S%.f").to_string()),
        Value::Timestamp(ts) => J::String(ts.format("%Y-%m-%dT%H:%M:%S%.f").to_string()),
        Value::TimestampTz(ts) => J::String(ts.to_rfc3339_opts(SecondsFormat::AutoSi, true)),
        Value::Uuid(u) => J::String(u.clone()),
        Value::Json(text) => serde_json::from_str(text).unwrap_or_else(|_| J::String(text.clone())),
        Value::Interval(interval) => J::String(interval.to_string()),
        Value::Infinity { negative: false } => J::String("infinity".to_owned()),
        Value::Infinity { negative: true } => J::String("-infinity".to_owned()),
        Value::ZonedTimestamp(ts) => J::String(ts.to_rfc3339_opts(SecondsFormat::AutoSi, true)),
        Value::Undecodable { type_name, reason } => {
            J::String(format!("<undecodable {type_name}: {reason}>"))
        }
    }
}

/// µs since the Unix epoch as RFC 3339 UTC (`2024-05-01T12:00:00.123456Z`).
fn micros_to_rfc3339(micros: i64) -> String {
    match DateTime::<Utc>::from_timestamp_micros(micros) {
        Some(t) => t.to_rfc3339_opts(SecondsFormat::AutoSi, true),
        None => format!("{micros} µs after the Unix epoch"),
    }
}

// ---------------------------------------------------------------------------
// server

#[derive(Clone)]
struct ApiState {
    control: Arc<DeadLetterControl>,
}

/// The `/dlq` routes over `control` (every pipeline's queue and command
/// channel), with their own state: merge them into the agent's router.
pub fn routes(control: DeadLetterControl) -> Router {
    Router::new()
        .route("/dlq", get(list_handler))
        .route("/dlq/{pipeline}/replay", post(replay_handler))
        .route("/dlq/{pipeline}/discard", post(discard_handler))
        .route("/dlq/{pipeline}/{id}", get(show_handler))
        .with_state(ApiState {
            control: Arc::new(control),
        })
}

/// A failed `/dlq` request: its status and text reason.
#[derive(Debug)]
struct ApiError {
    status: StatusCode,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
        }
    }

    fn bad_request(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, message)
    }

    fn log(err: LogError) -> Self {
        tracing::error!(error = %err, "cannot read the dead-letter queue");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("cannot read the dead-letter queue: {err}"),
        )
    }

    fn not_applying(pipeline: &str) -> Self {
        Self::new(
            StatusCode::CONFLICT,
            format!(
                "pipeline `{pipeline}` is not applying (halted or stopping); restart the agent to replay"
            ),
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut body = self.message;
        body.push('\n');
        (
            self.status,
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            body,
        )
            .into_response()
    }
}

/// The JSON of `result`, or its error as text with its status.
fn answer<T: Serialize>(result: Result<T, ApiError>) -> Response {
    match result {
        Ok(value) => json_response(&value),
        Err(err) => err.into_response(),
    }
}

fn json_response<T: Serialize>(value: &T) -> Response {
    match serde_json::to_vec_pretty(value) {
        Ok(body) => ([(header::CONTENT_TYPE, "application/json")], body).into_response(),
        Err(err) => {
            tracing::error!(error = %err, "failed to serialize a dead-letter answer");
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("failed to serialize the answer: {err}"),
            )
            .into_response()
        }
    }
}

impl ApiState {
    fn pipeline(&self, name: &str) -> Result<&PipelineDeadLetters, ApiError> {
        self.control.get(name).ok_or_else(|| {
            let configured = if self.control.is_empty() {
                "none".to_owned()
            } else {
                self.control
                    .keys()
                    .map(|name| format!("`{name}`"))
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            ApiError::new(
                StatusCode::NOT_FOUND,
                format!("no pipeline `{name}`; configured pipelines: {configured}"),
            )
        })
    }
}

/// A request's query parameters; each may appear once, and only the
/// `allowed` ones.
fn query_params(
    raw: Option<String>,
    allowed: &[&str],
) -> Result<BTreeMap<String, String>, ApiError> {
    let mut params = BTreeMap::new();
    let Some(raw) = raw else {
        return Ok(params);
    };
    for (name, value) in url::form_urlencoded::parse(raw.as_bytes()) {
        if !allowed.contains(&name.as_ref()) {
            let expected = if allowed.is_empty() {
                "none".to_owned()
            } else {
                allowed.join(", ")
            };
            return Err(ApiError::bad_request(format!(
                "unknown parameter `{name}`; expected: {expected}"
            )));
        }
        if params
            .insert(name.clone().into_owned(), value.into_owned())
            .is_some()
        {
            return Err(ApiError::bad_request(format!(
                "parameter `{name}` is given more than once"
            )));
        }
    }
    Ok(params)
}

fn u64_param(params: &BTreeMap<String, String>, name: &str) -> Result<Option<u64>, ApiError> {
    params
        .get(name)
        .map(|text| {
            text.parse().map_err(|_| {
                ApiError::bad_request(format!(
                    "parameter `{name}` must be a non-negative integer, not `{text}`"
                ))
            })
        })
        .transpose()
}

/// Runs the synchronous queue read `f` off the async workers.
async fn read_queue<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, LogError> + Send + 'static,
) -> Result<T, ApiError> {
    match tokio::task::spawn_blocking(f).await {
        Ok(result) => result.map_err(ApiError::log),
        Err(err) => {
            tracing::error!(error = %err, "dead-letter queue read panicked");
            Err(ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "reading the dead-letter queue failed; see the agent's log",
            ))
        }
    }
}

async fn list_handler(State(state): State<ApiState>, RawQuery(query): RawQuery) -> Response {
    let result = async {
        let params = query_params(query, &["pipeline"])?;
        let queues: Vec<DeadLetters> = match params.get("pipeline") {
            Some(name) => vec![state.pipeline(name)?.queue.clone()],
            None => state.control.values().map(|p| p.queue.clone()).collect(),
        };
        read_queue(move || {
            let mut list = DeadLetterList::default();
            for queue in queues {
                let entries = queue.list()?.iter().map(DeadLetterView::from).collect();
                list.pipelines.insert(queue.pipeline().to_owned(), entries);
            }
            Ok(list)
        })
        .await
    }
    .await;
    answer(result)
}

async fn show_handler(
    State(state): State<ApiState>,
    Path((pipeline, id)): Path<(String, String)>,
    RawQuery(query): RawQuery,
) -> Response {
    let result = async {
        let queue = state.pipeline(&pipeline)?.queue.clone();
        let id: u64 = id.parse().map_err(|_| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                format!("no dead letter `{id}`: ids are numbers"),
            )
        })?;
        let params = query_params(query, &["offset", "limit"])?;
        let offset = u64_param(&params, "offset")?.unwrap_or(0);
        let limit = u64_param(&params, "limit")?.unwrap_or(DEFAULT_EVENT_LIMIT);
        if limit > MAX_EVENT_LIMIT {
            return Err(ApiError::bad_request(format!(
                "parameter `limit` must be at most {MAX_EVENT_LIMIT}"
            )));
        }
        let found = read_queue(move || {
            let Some(entry) = queue.get(id)? else {
                return Ok(None);
            };
            let mut events = Vec::new();
            queue.read_events(&entry, offset, limit, &mut events)?;
            Ok(Some((entry, events)))
        })
        .await?;
        let (entry, events) = found.ok_or_else(|| {
            ApiError::new(
                StatusCode::NOT_FOUND,
                format!("pipeline `{pipeline}` has no dead letter #{id}"),
            )
        })?;
        Ok(DeadLetterDetail {
            entry: DeadLetterView::from(&entry),
            offset,
            events: events.iter().map(EventView::from).collect(),
            pipeline,
        })
    }
    .await;
    answer(result)
}

/// Sends the command `make` builds to `pipeline`'s apply worker and waits
/// for its answer; `409` when the worker refuses or does not take commands.
async fn command<T>(
    state: &ApiState,
    pipeline: &str,
    make: impl FnOnce(oneshot::Sender<Result<T, String>>) -> DeadLetterCommand,
) -> Result<T, ApiError> {
    let commands = state.pipeline(pipeline)?.commands.clone();
    let (reply, answer) = oneshot::channel();
    if commands.send(make(reply)).await.is_err() {
        return Err(ApiError::not_applying(pipeline));
    }
    match answer.await {
        Ok(Ok(report)) => Ok(report),
        Ok(Err(message)) => Err(ApiError::new(StatusCode::CONFLICT, message)),
        Err(_) => Err(ApiError::not_applying(pipeline)),
    }
}

async fn replay_handler(
    State(state): State<ApiState>,
    Path(pipeline): Path<String>,
    RawQuery(query): RawQuery,
) -> Response {
    let result = async {
        state.pipeline(&pipeline)?;
        let params = query_params(query, &["through"])?;
        let through = u64_param(&params, "through")?;
        command(&state, &pipeline, |reply| DeadLetterCommand::Replay {
            through,
            reply,
        })
        .await
    }
    .await;
    answer(result)
}

async fn discard_handler(
    State(state): State<ApiState>,
    Path(pipeline): Path<String>,
    RawQuery(query): RawQuery,
) -> Response {
    let result = async {
        let queue = state.pipeline(&pipeline)?.queue.clone();
        let params = query_params(query, &["id", "all"])?;
        let id = u64_param(&params, "id")?;
        let all = match params.get("all").map(String::as_str) {
            None | Some("false") => false,
            Some("true") => true,
            Some(other) => {
                return Err(ApiError::bad_request(format!(
                    "parameter `all` must be `true` or `false`, not `{other}`"
                )))
            }
        };
        let which = match (id, all) {
            (Some(id), false) => DiscardSelection::One(id),
            (None, true) => DiscardSelection::All,
            (None, false) => {
                return Err(ApiError::bad_request(
                    "say which dead letters to discard: `?id=ID` or `?all=true`",
                ))
            }
            (Some(_), true) => {
                return Err(ApiError::bad_request(
                    "give either `id` or `all=true`, not both",
                ))
            }
        };
        if let DiscardSelection::One(id) = which {
            if read_queue(move || queue.get(id)).await?.is_none() {
                return Err(ApiError::new(
                    StatusCode::NOT_FOUND,
                    format!("pipeline `{pipeline}` has no dead letter #{id}"),
                ));
            }
        }
        command(&state, &pipeline, |reply| DeadLetterCommand::Discard {
            which,
            reply,
        })
        .await
    }
    .await;
    answer(result)
}

// ---------------------------------------------------------------------------
// client

/// `text` percent-encoded as one URL path segment or query value: every
/// byte but the unreserved characters (`A-Z a-z 0-9 - . _ ~`) is `%XX`, so a
/// `/`, `?` or `#` in a pipeline name cannot change the route.
fn encode_component(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// `/dlq/<pipeline>` with the name encoded; `.` and `..` are refused (a
/// client or proxy could resolve them as path steps).
fn pipeline_path(pipeline: &str) -> Result<String, AgentRequestError> {
    if pipeline.is_empty() || pipeline == "." || pipeline == ".." {
        return Err(AgentRequestError::InvalidRequest {
            reason: format!("`{pipeline}` is not a pipeline name"),
        });
    }
    Ok(format!("/dlq/{}", encode_component(pipeline)))
}

/// `GET /dlq`: the dead letters of every pipeline, or of `pipeline`.
pub async fn fetch_dead_letters(
    listen: impl Into<AgentEndpoint>,
    pipeline: Option<&str>,
) -> Result<DeadLetterList, AgentRequestError> {
    let path = match pipeline {
        Some(name) => format!("/dlq?pipeline={}", encode_component(name)),
        None => "/dlq".to_owned(),
    };
    request_json(listen, "GET", &path, FETCH_TIMEOUT, "the dead-letter list").await
}

/// `GET /dlq/{pipeline}/{id}`: dead letter `id` and up to `limit` of its
/// events from `offset` (0-based) on.
pub async fn fetch_dead_letter(
    listen: impl Into<AgentEndpoint>,
    pipeline: &str,
    id: u64,
    offset: u64,
    limit: u64,
) -> Result<DeadLetterDetail, AgentRequestError> {
    let path = format!(
        "{}/{id}?offset={offset}&limit={limit}",
        pipeline_path(pipeline)?
    );
    request_json(listen, "GET", &path, FETCH_TIMEOUT, "the dead letter").await
}

/// `POST /dlq/{pipeline}/replay`: applies the queue oldest first, through
/// entry `through` (all when `None`). Waits up to [`CHANGE_TIMEOUT`].
pub async fn replay_dead_letters(
    listen: impl Into<AgentEndpoint>,
    pipeline: &str,
    through: Option<u64>,
) -> Result<ReplayReport, AgentRequestError> {
    let mut path = format!("{}/replay", pipeline_path(pipeline)?);
    if let Some(through) = through {
        path.push_str(&format!("?through={through}"));
    }
    request_json(listen, "POST", &path, CHANGE_TIMEOUT, "the replay report").await
}

/// `POST /dlq/{pipeline}/discard`: drops `which` without applying it.
/// Waits up to [`CHANGE_TIMEOUT`].
pub async fn discard_dead_letters(
    listen: impl Into<AgentEndpoint>,
    pipeline: &str,
    which: DiscardSelection,
) -> Result<DiscardReport, AgentRequestError> {
    let query = match which {
        DiscardSelection::One(id) => format!("id={id}"),
        DiscardSelection::All => "all=true".to_owned(),
    };
    let path = format!("{}/discard?{query}", pipeline_path(pipeline)?);
    request_json(listen, "POST", &path, CHANGE_TIMEOUT, "the discard report").await
}

// ---------------------------------------------------------------------------
// `callosum dlq`

/// An operator-facing error for a failed request to the agent on `listen`:
/// the agent's own reason when it answered, else how to get it running.
fn agent_error(listen: SocketAddr, err: AgentRequestError) -> anyhow::Error {
    match err {
        AgentRequestError::Status { body, .. } if !body.is_empty() => anyhow::anyhow!(body),
        AgentRequestError::InvalidRequest { reason } => anyhow::anyhow!(reason),
        AgentRequestError::Status { status, .. } => anyhow::anyhow!(
            "the agent on {listen} answered HTTP {status} without a reason; does this agent version serve /dlq?"
        ),
        AgentRequestError::Timeout { timeout, .. } if timeout > FETCH_TIMEOUT => anyhow::anyhow!(
            "the agent on {listen} did not answer within {} s; the operation may still be running: check `callosum dlq list`",
            timeout.as_secs()
        ),
        err => anyhow::Error::new(err).context(format!(
            "cannot reach the agent on {listen} ([http] listen); is `callosum run` running?"
        )),
    }
}

/// `callosum dlq list`.
pub async fn print_dead_letters(config: &Config, pipeline: Option<&str>) -> anyhow::Result<()> {
    let agent = AgentEndpoint::from_config(config)?;
    let listen = agent.listen;
    let list = fetch_dead_letters(agent, pipeline)
        .await
        .map_err(|err| agent_error(listen, err))?;
    print!("{}", format_dead_letter_list(&list));
    Ok(())
}

/// `callosum dlq show`.
pub async fn print_dead_letter(
    config: &Config,
    pipeline: &str,
    id: u64,
    offset: u64,
    limit: u64,
) -> anyhow::Result<()> {
    let agent = AgentEndpoint::from_config(config)?;
    let listen = agent.listen;
    let detail = fetch_dead_letter(agent, pipeline, id, offset, limit)
        .await
        .map_err(|err| agent_error(listen, err))?;
    print!("{}", format_dead_letter_detail(&detail));
    Ok(())
}

/// `callosum dlq replay`; `Ok(false)` when the replay stopped at an entry
/// that failed.
pub async fn print_replay(
    config: &Config,
    pipeline: &str,
    through: Option<u64>,
) -> anyhow::Result<bool> {
    let agent = AgentEndpoint::from_config(config)?;
    let listen = agent.listen;
    let report = replay_dead_letters(agent, pipeline, through)
        .await
        .map_err(|err| agent_error(listen, err))?;
    print!("{}", format_replay_report(pipeline, &report));
    Ok(report.failed.is_none())
}

/// `callosum dlq discard`.
pub async fn print_discard(
    config: &Config,
    pipeline: &str,
    which: DiscardSelection,
) -> anyhow::Result<()> {
    let agent = AgentEndpoint::from_config(config)?;
    let listen = agent.listen;
    let report = discard_dead_letters(agent, pipeline, which)
        .await
        .map_err(|err| agent_error(listen, err))?;
    print!("{}", format_discard_report(pipeline, &report));
    Ok(())
}

// ---------------------------------------------------------------------------
// terminal formatting

/// Why `entry` is queued, in one line.
fn reason_text(entry: &DeadLetterView) -> String {
    match entry.behind {
        Some(behind) => format!("queued behind #{behind}"),
        None => format!("{}: {}", entry.reason_kind, entry.message),
    }
}

/// `tables` joined, the first three and a count of the others.
fn tables_text(tables: &[String]) -> String {
    const SHOWN: usize = 3;
    if tables.is_empty() {
        return "-".to_owned();
    }
    let mut text = tables
        .iter()
        .take(SHOWN)
        .map(String::as_str)
        .collect::<Vec<_>>()
        .join(",");
    if tables.len() > SHOWN {
        text.push_str(&format!(",+{} more", tables.len() - SHOWN));
    }
    text
}

/// `ids` as `#1-#3, #7`: runs of consecutive ids collapsed.
fn ids_text(ids: &[u64]) -> String {
    let mut parts = Vec::new();
    let mut i = 0;
    while i < ids.len() {
        let start = ids[i];
        let mut end = start;
        while i + 1 < ids.len() && ids[i + 1] == end + 1 {
            end += 1;
            i += 1;
        }
        parts.push(match end - start {
            0 => format!("#{start}"),
            1 => format!("#{start}, #{end}"),
            _ => format!("#{start}-#{end}"),
        });
        i += 1;
    }
    parts.join(", ")
}

fn remain_text(remaining: u64) -> String {
    match remaining {
        1 => "1 remains".to_owned(),
        n => format!("{n} remain"),
    }
}

/// `list` as the table `callosum dlq list` prints: one row per dead
/// letter, its hint indented below; `no dead letters` when every queue is
/// empty.
pub fn format_dead_letter_list(list: &DeadLetterList) -> String {
    let rows: Vec<(Vec<String>, Vec<String>)> = list
        .pipelines
        .iter()
        .flat_map(|(pipeline, entries)| entries.iter().map(move |e| (pipeline, e)))
        .map(|(pipeline, entry)| {
            let cells = vec![
                pipeline.clone(),
                format!("#{}", entry.id),
                entry.position.clone(),
                entry.committed_at.clone(),
                entry.events.to_string(),
                tables_text(&entry.tables),
                reason_text(entry),
            ];
            let notes = entry.hint.iter().map(|h| format!("hint: {h}")).collect();
            (cells, notes)
        })
        .collect();
    if rows.is_empty() {
        return "no dead letters\n".to_owned();
    }
    crate::text_table::format_table(
        &[
            "PIPELINE",
            "ID",
            "POSITION",
            "COMMITTED",
            "EVENTS",
            "TABLES",
            "REASON",
        ],
        &rows,
    )
}

/// One event on one line: `[index] op table {json}`.
fn event_line(index: u64, event: &EventView) -> String {
    let json = |map: &serde_json::Map<String, serde_json::Value>| {
        serde_json::to_string(map).unwrap_or_else(|_| "{…}".to_owned())
    };
    let mut line = format!("[{index}] {} {}", event.op.as_str(), event.table);
    match (event.op, &event.key, &event.row) {
        (EventOp::Update, Some(key), Some(row)) => {
            line.push_str(&format!(" key {} -> {}", json(key), json(row)));
        }
        (_, _, Some(row)) => line.push_str(&format!(" {}", json(row))),
        (_, Some(key), None) => line.push_str(&format!(" key {}", json(key))),
        (_, None, None) => {}
    }
    if !event.unchanged.is_empty() {
        line.push_str(&format!(" (unchanged: {})", event.unchanged.join(", ")));
    }
    line
}

/// `detail` as `callosum dlq show` prints it: the entry, then its events one
/// per line (0-based index, operation, table, values as JSON).
pub fn format_dead_letter_detail(detail: &DeadLetterDetail) -> String {
    let entry = &detail.entry;
    let mut out = format!(
        "dead letter #{} of pipeline {}\n",
        entry.id, detail.pipeline
    );
    let mut field = |name: &str, value: &str| out.push_str(&format!("  {name:<15} {value}\n"));
    field("position:", &entry.position);
    field("committed:", &entry.committed_at);
    field("dead-lettered:", &entry.dead_lettered_at);
    field("events:", &entry.events.to_string());
    field("tables:", &entry.tables.join(", "));
    match entry.behind {
        Some(behind) => field(
            "reason:",
            &format!("queued behind #{behind}: {}", entry.message),
        ),
        None => field(
            "reason:",
            &format!("{}: {}", entry.reason_kind, entry.message),
        ),
    }
    if let Some(hint) = &entry.hint {
        field("hint:", hint);
    }
    if detail.events.is_empty() {
        out.push_str(&format!(
            "no events from index {} (it holds {}, numbered from 0)\n",
            detail.offset, entry.events
        ));
        return out;
    }
    let end = detail.offset + detail.events.len() as u64;
    out.push_str(&format!(
        "events {}-{} of {}",
        detail.offset,
        end - 1,
        entry.events
    ));
    if end < entry.events {
        out.push_str(&format!(" (more: --offset {end})"));
    }
    out.push_str(":\n");
    for (i, event) in detail.events.iter().enumerate() {
        out.push_str(&format!(
            "  {}\n",
            event_line(detail.offset + i as u64, event)
        ));
    }
    out
}

/// `report` of a replay into `pipeline`, as `callosum dlq replay` prints it.
pub fn format_replay_report(pipeline: &str, report: &ReplayReport) -> String {
    let mut out = String::new();
    if !report.replayed.is_empty() {
        out.push_str(&format!(
            "replayed {} into pipeline {pipeline}\n",
            ids_text(&report.replayed)
        ));
    }
    if !report.already_applied.is_empty() {
        out.push_str(&format!(
            "{} already applied to the target; removed from the queue\n",
            ids_text(&report.already_applied)
        ));
    }
    if report.replayed.is_empty() && report.already_applied.is_empty() && report.failed.is_none() {
        out.push_str(&format!("nothing to replay in pipeline {pipeline}\n"));
    }
    if let Some(failed) = &report.failed {
        out.push_str(&format!(
            "replay stopped at #{}: {}\n",
            failed.id, failed.error
        ));
    }
    out.push_str(&format!("{}\n", remain_text(report.remaining)));
    out
}

/// `report` of a discard from `pipeline`, as `callosum dlq discard` prints it.
pub fn format_discard_report(pipeline: &str, report: &DiscardReport) -> String {
    if report.discarded.is_empty() {
        format!(
            "nothing discarded from pipeline {pipeline}; {}\n",
            remain_text(report.remaining)
        )
    } else {
        format!(
            "discarded {} from pipeline {pipeline}; {}\n",
            ids_text(&report.discarded),
            remain_text(report.remaining)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dead_letter::ReplayFailure;
    use crate::http::{http_request_with, AgentStatus};
    use crate::log::{ChangeLog, DeadLetterReason};
    use crate::metrics::Metrics;
    use callosum_api::{ColumnSchema, Lsn, Position, TableId, TransactionMeta};
    use chrono::{NaiveDate, NaiveTime, TimeZone};
    use serde_json::json;
    use tokio::sync::mpsc;

    /// 2024-05-01T12:00:00.123456Z
    const COMMITTED: i64 = 1_714_564_800_123_456;

    fn orders() -> Arc<TableSchema> {
        let column = |name: &str, source_type: &str, is_key: bool| ColumnSchema {
            name: name.into(),
            source_type: source_type.into(),
            is_key,
        };
        Arc::new(TableSchema {
            table: TableId::new("public", "orders"),
            columns: vec![
                column("id", "int8", true),
                column("note", "text", false),
                column("doc", "jsonb", false),
                column("payload", "bytea", false),
            ],
        })
    }

    fn items() -> Arc<TableSchema> {
        Arc::new(TableSchema {
            table: TableId::new("public", "items"),
            columns: vec![ColumnSchema {
                name: "sku".into(),
                source_type: "text".into(),
                is_key: true,
            }],
        })
    }

    fn event(schema: &Arc<TableSchema>, change: RowChange) -> ChangeEvent {
        ChangeEvent {
            schema: schema.clone(),
            change,
        }
    }

    /// The events of dead letter #1: one of each kind, then two inserts.
    fn first_transaction() -> Vec<ChangeEvent> {
        let s = orders();
        vec![
            event(
                &s,
                RowChange::Insert {
                    row: vec![
                        Value::Int(1),
                        Value::Text("first".into()),
                        Value::Json(r#"{"a":[1,2]}"#.into()),
                        Value::Bytes(vec![0xde, 0xad, 0x01]),
                    ],
                },
            ),
            event(
                &s,
                RowChange::Update {
                    old_key: Some(vec![Value::Int(1), Value::Null, Value::Null, Value::Null]),
                    row: vec![
                        Value::Int(2),
                        Value::Null,
                        Value::Unchanged,
                        Value::Unchanged,
                    ],
                },
            ),
            event(
                &s,
                RowChange::Delete {
                    key: vec![Value::Int(2), Value::Null, Value::Null, Value::Null],
                },
            ),
            event(&s, RowChange::Truncate),
            event(
                &s,
                RowChange::Insert {
                    row: vec![
                        Value::Int(3),
                        Value::Text("third".into()),
                        Value::Json("not json".into()),
                        Value::Null,
                    ],
                },
            ),
            event(
                &s,
                RowChange::Insert {
                    row: vec![Value::Int(4), Value::Null, Value::Null, Value::Null],
                },
            ),
        ]
    }

    /// A change log whose pipeline `p` holds two dead letters (#2 queued
    /// behind #1) and whose pipeline `q` holds none.
    async fn queues(dir: &std::path::Path) -> (DeadLetters, DeadLetters) {
        let log = ChangeLog::open(dir).unwrap();
        let mut writer = log.writer("store").unwrap();
        for (lsn, events) in [
            (100, first_transaction()),
            (
                200,
                vec![event(
                    &items(),
                    RowChange::Insert {
                        row: vec![Value::Text("sku-1".into())],
                    },
                )],
            ),
        ] {
            writer.begin();
            for e in events {
                writer.append(e).unwrap();
            }
            writer
                .commit(TransactionMeta {
                    position: Position::Pg(Lsn(lsn)),
                    resume_position: Position::Pg(Lsn(lsn + 1)),
                    commit_time_micros: COMMITTED,
                    origin: None,
                })
                .unwrap();
        }
        writer.flush().await.unwrap();
        let mut reader = log.reader("store", "p").unwrap();
        reader.seek_after(None).unwrap();
        let txns = reader.peek_transactions(u64::MAX).unwrap();
        assert_eq!(txns.len(), 2);
        let p = log.dead_letters("p").unwrap();
        let reasons = [
            DeadLetterReason {
                kind: "constraint".into(),
                message: "duplicate key in table shop.orders".into(),
                hint: Some("remove the conflicting row, then replay".into()),
                behind: None,
            },
            DeadLetterReason {
                kind: "queued".into(),
                message: "changes rows of dead letter #1".into(),
                hint: None,
                behind: Some(1),
            },
        ];
        for ((_, txn), reason) in txns.iter().zip(reasons) {
            p.add(&mut reader, txn, reason, &mut |_, _| {}).unwrap();
        }
        p.flush().await.unwrap();
        (p, log.dead_letters("q").unwrap())
    }

    /// Stands in for `p`'s apply worker: answers each command from its
    /// parameters, so the tests see what was forwarded.
    async fn worker_stub(
        mut commands: mpsc::Receiver<DeadLetterCommand>,
        forwarded: Arc<std::sync::atomic::AtomicUsize>,
    ) {
        while let Some(command) = commands.recv().await {
            forwarded.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            match command {
                DeadLetterCommand::Replay {
                    through: Some(99),
                    reply,
                } => {
                    let _ = reply.send(Err("no dead letter #99 in pipeline `p`".into()));
                }
                DeadLetterCommand::Replay {
                    through: Some(through),
                    reply,
                } => {
                    let _ = reply.send(Ok(ReplayReport {
                        replayed: (1..=through).collect(),
                        remaining: 2 - through,
                        ..ReplayReport::default()
                    }));
                }
                DeadLetterCommand::Replay {
                    through: None,
                    reply,
                } => {
                    let _ = reply.send(Ok(ReplayReport {
                        replayed: vec![],
                        already_applied: vec![1],
                        failed: Some(ReplayFailure {
                            id: 2,
                            error: "duplicate key in table shop.items".into(),
                        }),
                        remaining: 1,
                    }));
                }
                DeadLetterCommand::Discard {
                    which: DiscardSelection::One(id),
                    reply,
                } => {
                    let _ = reply.send(Ok(DiscardReport {
                        discarded: vec![id],
                        remaining: 1,
                    }));
                }
                // the worker stops without answering
                DeadLetterCommand::Discard {
                    which: DiscardSelection::All,
                    reply,
                } => drop(reply),
            }
        }
    }

    struct Server {
        addr: SocketAddr,
        /// Commands that reached `p`'s worker.
        forwarded: Arc<std::sync::atomic::AtomicUsize>,
        _dir: tempfile::TempDir,
    }

    /// Serves the agent's router (with `/dlq` merged) over pipelines `p`
    /// (answered by [`worker_stub`]) and `q` (its worker is gone).
    async fn start() -> Server {
        start_with(None).await
    }

    /// [`start`] with the admin routes behind `admin_token`.
    async fn start_with(admin_token: Option<&str>) -> Server {
        let dir = tempfile::tempdir().unwrap();
        let (p, q) = queues(dir.path()).await;
        let (p_commands, p_receiver) = mpsc::channel(8);
        let forwarded = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        tokio::spawn(worker_stub(p_receiver, forwarded.clone()));
        let (q_commands, q_receiver) = mpsc::channel(8);
        drop(q_receiver);
        let mut control = DeadLetterControl::new();
        control.insert(
            "p".into(),
            PipelineDeadLetters {
                queue: p,
                commands: p_commands,
            },
        );
        control.insert(
            "q".into(),
            PipelineDeadLetters {
                queue: q,
                commands: q_commands,
            },
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let router = crate::http::router(
            Arc::new(Metrics::new()),
            Arc::new(AgentStatus::new()),
            control,
            admin_token.map(|t| Arc::new(crate::config::Secret::new(t))),
        );
        tokio::spawn(async move { axum::serve(listener, router).await });
        Server {
            addr,
            forwarded,
            _dir: dir,
        }
    }

    /// The status and body of `err`, which must be an HTTP answer.
    fn status_of(err: AgentRequestError) -> (u16, String) {
        match err {
            AgentRequestError::Status { status, body, .. } => (status, body),
            other => panic!("expected an HTTP error status, got: {other}"),
        }
    }

    async fn raw(addr: SocketAddr, method: &str, path: &str) -> (u16, String) {
        raw_with(addr, method, path, None).await
    }

    async fn raw_with(
        addr: SocketAddr,
        method: &str,
        path: &str,
        token: Option<&str>,
    ) -> (u16, String) {
        let token = token.map(crate::config::Secret::new);
        let reply = http_request_with(addr, method, path, token.as_ref())
            .await
            .unwrap();
        (reply.status, String::from_utf8(reply.body).unwrap())
    }

    #[tokio::test]
    async fn with_an_admin_token_every_admin_route_refuses_without_it_and_changes_nothing() {
        let server = start_with(Some("s3cret-token")).await;
        let protected = [
            ("GET", "/dlq"),
            ("GET", "/dlq?pipeline=p"),
            ("GET", "/dlq/p/1"),
            ("POST", "/dlq/p/replay"),
            ("POST", "/dlq/p/replay?through=1"),
            ("POST", "/dlq/p/discard?id=1"),
            ("POST", "/dlq/p/discard?all=true"),
        ];
        for (method, path) in protected {
            let (status, body) = raw_with(server.addr, method, path, None).await;
            assert_eq!(status, 401, "{method} {path}: {body}");
            assert!(body.contains("Authorization: Bearer"), "{body}");
            let (status, _) = raw_with(server.addr, method, path, Some("guess")).await;
            assert_eq!(status, 403, "{method} {path}");
            let (status, _) = raw_with(server.addr, method, path, Some("s3cret-token-")).await;
            assert_eq!(
                status, 403,
                "{method} {path}: a longer token is another token"
            );
        }
        assert_eq!(
            server.forwarded.load(std::sync::atomic::Ordering::SeqCst),
            0,
            "no refused request reached the apply worker"
        );
        // the stored queue is unchanged and readable with the token
        let agent = AgentEndpoint {
            listen: server.addr,
            admin_token: Some(crate::config::Secret::new("s3cret-token")),
        };
        let list = fetch_dead_letters(agent.clone(), None).await.unwrap();
        assert_eq!(list.pipelines["p"].len(), 2);
        let report = replay_dead_letters(agent, "p", Some(1)).await.unwrap();
        assert_eq!(report.replayed, [1]);
        assert_eq!(
            server.forwarded.load(std::sync::atomic::Ordering::SeqCst),
            1
        );
        // the scrapers' routes stay open
        for path in ["/metrics", "/healthz", "/status"] {
            let (status, _) = raw_with(server.addr, "GET", path, None).await;
            assert_eq!(status, 200, "{path}");
        }
    }

    #[tokio::test]
    async fn list_shows_every_pipeline_oldest_first() {
        let server = start().await;
        let list = fetch_dead_letters(server.addr, None).await.unwrap();
        assert_eq!(
            list.pipelines.keys().collect::<Vec<_>>(),
            ["p", "q"],
            "every configured pipeline, even with an empty queue"
        );
        assert!(list.pipelines["q"].is_empty());
        let p = &list.pipelines["p"];
        assert_eq!(p.iter().map(|e| e.id).collect::<Vec<_>>(), [1, 2]);
        let first = &p[0];
        assert_eq!(first.position, "pg:0/64");
        assert_eq!(first.committed_at, "2024-05-01T12:00:00.123456Z");
        assert!(
            DateTime::parse_from_rfc3339(&first.dead_lettered_at).is_ok(),
            "{}",
            first.dead_lettered_at
        );
        assert_eq!(first.events, 6);
        assert_eq!(first.tables, ["public.orders"]);
        assert_eq!(first.reason_kind, "constraint");
        assert_eq!(first.message, "duplicate key in table shop.orders");
        assert_eq!(
            first.hint.as_deref(),
            Some("remove the conflicting row, then replay")
        );
        assert_eq!(first.behind, None);
        assert_eq!(p[1].behind, Some(1));
        assert_eq!(p[1].tables, ["public.items"]);

        let only_q = fetch_dead_letters(server.addr, Some("q")).await.unwrap();
        assert_eq!(only_q.pipelines.keys().collect::<Vec<_>>(), ["q"]);
        assert!(only_q.pipelines["q"].is_empty());
    }

    #[tokio::test]
    async fn show_pages_events_and_renders_values() {
        let server = start().await;
        let detail = fetch_dead_letter(server.addr, "p", 1, 0, 100)
            .await
            .unwrap();
        assert_eq!(detail.pipeline, "p");
        assert_eq!(detail.entry.id, 1);
        assert_eq!(detail.offset, 0);
        assert_eq!(detail.events.len(), 6);
        let json = serde_json::to_value(&detail.events).unwrap();
        assert_eq!(
            json[0],
            json!({
                "table": "public.orders",
                "op": "insert",
                "row": {"id": 1, "note": "first", "doc": {"a": [1, 2]}, "payload": "\\xdead01"},
                "key": null,
            })
        );
        assert_eq!(
            json[1],
            json!({
                "table": "public.orders",
                "op": "update",
                "row": {"id": 2, "note": null},
                "unchanged": ["doc", "payload"],
                "key": {"id": 1},
            })
        );
        assert_eq!(
            json[2],
            json!({"table": "public.orders", "op": "delete", "row": null, "key": {"id": 2}})
        );
        assert_eq!(
            json[3],
            json!({"table": "public.orders", "op": "truncate", "row": null, "key": null})
        );
        assert_eq!(
            json[4]["row"]["doc"], "not json",
            "JSON that does not parse"
        );

        let page = fetch_dead_letter(server.addr, "p", 1, 2, 3).await.unwrap();
        assert_eq!(page.offset, 2);
        assert_eq!(
            page.events.iter().map(|e| e.op).collect::<Vec<_>>(),
            [EventOp::Delete, EventOp::Truncate, EventOp::Insert]
        );
        assert_eq!(page.events, detail.events[2..5]);
        let past_end = fetch_dead_letter(server.addr, "p", 1, 6, 100)
            .await
            .unwrap();
        assert!(past_end.events.is_empty());

        let err = fetch_dead_letter(server.addr, "p", 7, 0, 100)
            .await
            .unwrap_err();
        assert_eq!(
            status_of(err),
            (404, "pipeline `p` has no dead letter #7".to_owned())
        );
        let err = fetch_dead_letter(server.addr, "p", 1, 0, MAX_EVENT_LIMIT + 1)
            .await
            .unwrap_err();
        assert_eq!(status_of(err).0, 400);
        assert_eq!(raw(server.addr, "GET", "/dlq/p/one").await.0, 404);
        assert_eq!(raw(server.addr, "GET", "/dlq/p/1?offset=x").await.0, 400);
    }

    #[tokio::test]
    async fn unknown_pipelines_are_404_naming_the_configured_ones() {
        let server = start().await;
        let expected = (
            404,
            "no pipeline `nope`; configured pipelines: `p`, `q`".to_owned(),
        );
        let err = fetch_dead_letters(server.addr, Some("nope"))
            .await
            .unwrap_err();
        assert_eq!(status_of(err), expected);
        let err = fetch_dead_letter(server.addr, "nope", 1, 0, 10)
            .await
            .unwrap_err();
        assert_eq!(status_of(err), expected);
        let err = replay_dead_letters(server.addr, "nope", None)
            .await
            .unwrap_err();
        assert_eq!(status_of(err), expected);
        let err = discard_dead_letters(server.addr, "nope", DiscardSelection::All)
            .await
            .unwrap_err();
        assert_eq!(status_of(err), expected);
        // a `/` in a name stays inside its path segment
        let err = fetch_dead_letter(server.addr, "p/1", 1, 0, 10)
            .await
            .unwrap_err();
        assert_eq!(
            status_of(err).1,
            "no pipeline `p/1`; configured pipelines: `p`, `q`"
        );
        let err = fetch_dead_letters(server.addr, Some("p&pipeline=q"))
            .await
            .unwrap_err();
        assert_eq!(status_of(err).0, 404);
        let err = replay_dead_letters(server.addr, "..", None)
            .await
            .unwrap_err();
        assert!(
            matches!(err, AgentRequestError::InvalidRequest { .. }),
            "{err}"
        );
    }

    #[tokio::test]
    async fn discard_needs_exactly_one_selection() {
        let server = start().await;
        for path in [
            "/dlq/p/discard",
            "/dlq/p/discard?all=false",
            "/dlq/p/discard?id=1&all=true",
            "/dlq/p/discard?all=yes",
            "/dlq/p/discard?id=-1",
            "/dlq/p/discard?id=1&id=2",
            "/dlq/p/discard?ids=1",
        ] {
            let (status, body) = raw(server.addr, "POST", path).await;
            assert_eq!(status, 400, "{path}: {body}");
            assert!(!body.trim().is_empty(), "{path}");
        }
        let (status, body) = raw(server.addr, "POST", "/dlq/p/discard").await;
        assert_eq!(
            (status, body.as_str()),
            (
                400,
                "say which dead letters to discard: `?id=ID` or `?all=true`\n"
            )
        );
        // a typo must not replay the whole queue
        let (status, body) = raw(server.addr, "POST", "/dlq/p/replay?thru=1").await;
        assert_eq!(
            (status, body.as_str()),
            (400, "unknown parameter `thru`; expected: through\n")
        );
        assert_eq!(raw(server.addr, "GET", "/dlq/p/replay").await.0, 405);

        let err = discard_dead_letters(server.addr, "p", DiscardSelection::One(42))
            .await
            .unwrap_err();
        assert_eq!(
            status_of(err),
            (404, "pipeline `p` has no dead letter #42".to_owned())
        );
        let report = discard_dead_letters(server.addr, "p", DiscardSelection::One(2))
            .await
            .unwrap();
        assert_eq!(
            report,
            DiscardReport {
                discarded: vec![2],
                remaining: 1
            }
        );
    }

    #[tokio::test]
    async fn replay_and_discard_are_forwarded_to_the_worker() {
        let server = start().await;
        let report = replay_dead_letters(server.addr, "p", Some(1))
            .await
            .unwrap();
        assert_eq!(report.replayed, [1]);
        assert_eq!(report.remaining, 1);
        // a failed entry is still a 200 with the report
        let report = replay_dead_letters(server.addr, "p", None).await.unwrap();
        assert_eq!(report.already_applied, [1]);
        assert_eq!(report.failed.as_ref().unwrap().id, 2);
        // the worker's refusal is a 409 with its reason
        let err = replay_dead_letters(server.addr, "p", Some(99))
            .await
            .unwrap_err();
        assert_eq!(
            status_of(err),
            (409, "no dead letter #99 in pipeline `p`".to_owned())
        );
    }

    #[tokio::test]
    async fn a_pipeline_that_is_not_applying_answers_409() {
        let server = start().await;
        let not_applying = |name: &str| {
            (
                409,
                format!("pipeline `{name}` is not applying (halted or stopping); restart the agent to replay"),
            )
        };
        // `q`'s worker is gone: the channel is closed
        let err = replay_dead_letters(server.addr, "q", None)
            .await
            .unwrap_err();
        assert_eq!(status_of(err), not_applying("q"));
        let err = discard_dead_letters(server.addr, "q", DiscardSelection::All)
            .await
            .unwrap_err();
        assert_eq!(status_of(err), not_applying("q"));
        // `p`'s worker drops the reply
        let err = discard_dead_letters(server.addr, "p", DiscardSelection::All)
            .await
            .unwrap_err();
        assert_eq!(status_of(err), not_applying("p"));
        // reads do not need the worker
        assert!(fetch_dead_letters(server.addr, Some("q")).await.is_ok());
    }

    #[tokio::test]
    async fn an_agent_that_is_not_running_is_named() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let err = fetch_dead_letters(addr, None).await.unwrap_err();
        assert!(matches!(err, AgentRequestError::Connect { .. }), "{err}");
        let message = format!("{:#}", agent_error(addr, err));
        assert!(
            message.starts_with(&format!(
                "cannot reach the agent on {addr} ([http] listen); is `callosum run` running?: cannot connect to {addr}"
            )),
            "{message}"
        );
        let message = agent_error(
            addr,
            AgentRequestError::Status {
                addr,
                status: 404,
                body: "no pipeline `x`".into(),
            },
        );
        assert_eq!(message.to_string(), "no pipeline `x`");
    }

    #[test]
    fn values_render_as_json() {
        let cases = [
            (Value::Null, json!(null)),
            (Value::Bool(true), json!(true)),
            (Value::Int(-5), json!(-5)),
            (Value::UInt(u64::MAX), json!(u64::MAX)),
            (Value::Float(1.5), json!(1.5)),
            (Value::Float(f64::NAN), json!("NaN")),
            (Value::Float(f64::INFINITY), json!("Infinity")),
            (Value::Float(f64::NEG_INFINITY), json!("-Infinity")),
            (Value::Decimal("-12.50".into()), json!("-12.50")),
            (Value::Text("héllo".into()), json!("héllo")),
            (Value::Bytes(vec![]), json!("\\x")),
            (Value::Bytes(vec![0, 0xff, 0x10]), json!("\\x00ff10")),
            (
                Value::Date(NaiveDate::from_ymd_opt(2024, 2, 29).unwrap()),
                json!("2024-02-29"),
            ),
            (
                Value::Time(NaiveTime::from_hms_micro_opt(23, 59, 1, 250).unwrap()),
                json!("23:59:01.000250"),
            ),
            (
                Value::Time(NaiveTime::from_hms_opt(8, 0, 0).unwrap()),
                json!("08:00:00"),
            ),
            (
                Value::Timestamp(
                    NaiveDate::from_ymd_opt(2024, 5, 1)
                        .unwrap()
                        .and_hms_milli_opt(12, 0, 0, 500)
                        .unwrap(),
                ),
                json!("2024-05-01T12:00:00.500"),
            ),
            (
                Value::TimestampTz(Utc.with_ymd_and_hms(2024, 5, 1, 12, 0, 0).unwrap()),
                json!("2024-05-01T12:00:00Z"),
            ),
            (
                Value::Uuid("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11".into()),
                json!("a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"),
            ),
            (Value::Json("[1, true]".into()), json!([1, true])),
            (Value::Json("{oops".into()), json!("{oops")),
        ];
        for (value, expected) in cases {
            assert_eq!(value_json(&value), expected, "{value:?}");
        }
    }

    #[test]
    fn tables_without_key_columns_show_the_whole_key_row() {
        let schema = Arc::new(TableSchema {
            table: TableId::new("shop", "log"),
            columns: vec![
                ColumnSchema {
                    name: "a".into(),
                    source_type: "int".into(),
                    is_key: false,
                },
                ColumnSchema {
                    name: "b".into(),
                    source_type: "int".into(),
                    is_key: false,
                },
            ],
        });
        let view = EventView::from(&event(
            &schema,
            RowChange::Delete {
                key: vec![Value::Int(1), Value::Int(2)],
            },
        ));
        assert_eq!(view.key, json!({"a": 1, "b": 2}).as_object().cloned());
    }

    fn view(id: u64, behind: Option<u64>) -> DeadLetterView {
        DeadLetterView {
            id,
            position: format!("pg:0/{id}00"),
            committed_at: "2024-05-01T12:00:00Z".into(),
            dead_lettered_at: "2024-05-01T12:00:01Z".into(),
            events: id * 10,
            tables: vec!["public.orders".into()],
            reason_kind: if behind.is_some() {
                "queued"
            } else {
                "constraint"
            }
            .into(),
            message: "duplicate key in table shop.orders".into(),
            hint: behind
                .is_none()
                .then(|| "remove the conflicting row, then replay".into()),
            behind,
        }
    }

    #[test]
    fn list_formats_as_a_table() {
        let mut list = DeadLetterList::default();
        list.pipelines.insert("q".into(), vec![]);
        assert_eq!(format_dead_letter_list(&list), "no dead letters\n");
        let mut wide = view(12, None);
        wide.tables = ["a.t1", "a.t2", "a.t3", "a.t4", "a.t5"]
            .map(String::from)
            .to_vec();
        list.pipelines
            .insert("crm_to_erp".into(), vec![view(1, None), view(2, Some(1))]);
        list.pipelines.insert("erp".into(), vec![wide]);
        let text = format_dead_letter_list(&list);
        let expected = "\
PIPELINE    ID   POSITION   COMMITTED             EVENTS  TABLES                  REASON
crm_to_erp  #1   pg:0/100   2024-05-01T12:00:00Z  10      public.orders           constraint: duplicate key in table shop.orders
    hint: remove the conflicting row, then replay
crm_to_erp  #2   pg:0/200   2024-05-01T12:00:00Z  20      public.orders           queued behind #1
erp         #12  pg:0/1200  2024-05-01T12:00:00Z  120     a.t1,a.t2,a.t3,+2 more  constraint: duplicate key in table shop.orders
    hint: remove the conflicting row, then replay
";
        assert_eq!(text, expected, "\n{text}");
    }

    #[test]
    fn detail_formats_entry_and_events() {
        let events: Vec<EventView> = first_transaction().iter().map(EventView::from).collect();
        let detail = DeadLetterDetail {
            pipeline: "crm_to_erp".into(),
            entry: view(1, None),
            offset: 0,
            events: events[..4].to_vec(),
        };
        let text = format_dead_letter_detail(&detail);
        let expected = r#"dead letter #1 of pipeline crm_to_erp
  position:       pg:0/100
  committed:      2024-05-01T12:00:00Z
  dead-lettered:  2024-05-01T12:00:01Z
  events:         10
  tables:         public.orders
  reason:         constraint: duplicate key in table shop.orders
  hint:           remove the conflicting row, then replay
events 0-3 of 10 (more: --offset 4):
  [0] insert public.orders {"doc":{"a":[1,2]},"id":1,"note":"first","payload":"\\xdead01"}
  [1] update public.orders key {"id":1} -> {"id":2,"note":null} (unchanged: doc, payload)
  [2] delete public.orders key {"id":2}
  [3] truncate public.orders
"#;
        assert_eq!(text, expected, "\n{text}");

        let detail = DeadLetterDetail {
            pipeline: "crm_to_erp".into(),
            entry: view(2, Some(1)),
            offset: 20,
            events: vec![],
        };
        let text = format_dead_letter_detail(&detail);
        assert!(
            text.contains("  reason:         queued behind #1: duplicate key"),
            "{text}"
        );
        assert!(
            text.ends_with("no events from index 20 (it holds 20, numbered from 0)\n"),
            "{text}"
        );
    }

    #[test]
    fn reports_format_in_words() {
        let report = ReplayReport {
            replayed: vec![1, 2, 3, 5, 6, 9],
            already_applied: vec![],
            failed: None,
            remaining: 0,
        };
        assert_eq!(
            format_replay_report("crm_to_erp", &report),
            "replayed #1-#3, #5, #6, #9 into pipeline crm_to_erp\n0 remain\n"
        );
        let report = ReplayReport {
            replayed: vec![],
            already_applied: vec![1],
            failed: Some(ReplayFailure {
                id: 2,
                error: "duplicate key in table shop.orders".into(),
            }),
            remaining: 1,
        };
        assert_eq!(
            format_replay_report("crm_to_erp", &report),
            "#1 already applied to the target; removed from the queue\n\
             replay stopped at #2: duplicate key in table shop.orders\n1 remains\n"
        );
        assert_eq!(
            format_replay_report("crm_to_erp", &ReplayReport::default()),
            "nothing to replay in pipeline crm_to_erp\n0 remain\n"
        );
        assert_eq!(
            format_discard_report(
                "crm_to_erp",
                &DiscardReport {
                    discarded: vec![4],
                    remaining: 2
                }
            ),
            "discarded #4 from pipeline crm_to_erp; 2 remain\n"
        );
        assert_eq!(
            format_discard_report("crm_to_erp", &DiscardReport::default()),
            "nothing discarded from pipeline crm_to_erp; 0 remain\n"
        );
    }

    #[test]
    fn path_components_are_percent_encoded() {
        assert_eq!(encode_component("crm_to-erp.1~"), "crm_to-erp.1~");
        assert_eq!(encode_component("a/b?c#d é"), "a%2Fb%3Fc%23d%20%C3%A9");
        assert!(pipeline_path("").is_err());
        assert!(pipeline_path(".").is_err());
        assert_eq!(pipeline_path("a/b").unwrap(), "/dlq/a%2Fb");
    }
}
