//! The JSON shapes of API v1 (`/api/v1/…`) and of the worker protocol (`/api/v1/worker/…`), shared
//! by the server, the client, the worker and the CLI. Only serde and the OpenAPI descriptions: no
//! HTTP library, so the server does not pull in the client's and the client not the server's.
//! Domain objects (`Execution`, `Worker`, `Action`, `Task`) travel as defined in `attune-core`.

use attune_core::{Execution, Lease, LeaseState, Report, Runtime, Task, Worker, WorkerStatus};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

/// Every 4xx/5xx body: `{"error": {"code", "message", "details"?}}`.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ErrorDetail {
    /// Stable machine-readable code: `not_found`, `invalid_parameters`, `stale_lease`, …
    pub code: String,
    pub message: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub details: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Health {
    pub status: String,
    pub version: String,
    pub database: String,
}

/// A person's answer to an inquiry: checked against the inquiry's `schema` parameter, then its
/// result.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct InquiryResponse {
    /// The answer: an object matching the inquiry's schema.
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub response: Option<serde_json::Value>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateExecution {
    /// `PACK.NAME` of a loaded action.
    #[schema(pattern = "^[a-z][a-z0-9_-]{0,63}\\.[a-z][a-z0-9_-]{0,63}$", example = "core.echo")]
    pub action_ref: String,
    /// An object matching the action's parameter schema (`GET /api/v1/actions/{ref}`).
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub parameters: Option<Value>,
    /// Overrides the action's `timeout_seconds` (1 s to 30 days).
    #[serde(default, with = "attune_core::whole::option")]
    #[schema(minimum = 1, maximum = 2592000)]
    pub timeout_seconds: Option<u64>,
    /// Overrides the action's `retry.max_attempts`.
    #[serde(default, with = "attune_core::whole::option")]
    #[schema(minimum = 1, maximum = 100)]
    pub max_attempts: Option<u32>,
    /// Overrides the action's `retry.backoff_seconds` (at most a day).
    #[serde(default, with = "attune_core::whole::option")]
    #[schema(minimum = 0, maximum = 86400)]
    pub backoff_seconds: Option<u64>,
    /// Overrides the action's `scheduled_timeout_seconds`: how long it may wait to be started
    /// (1 s to 30 days) before it fails.
    #[serde(default, with = "attune_core::whole::option")]
    #[schema(minimum = 1, maximum = 2592000)]
    pub scheduled_timeout_seconds: Option<u64>,
    /// Replaces the action's `worker_selector`: labels a worker must have (`{"region": "eu"}`).
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub worker_selector: Option<Value>,
    /// Overrides the action's `priority` (-100 to 100; higher is taken first, each step worth a
    /// minute of waiting).
    #[serde(default)]
    #[schema(minimum = -100, maximum = 100)]
    pub priority: Option<i32>,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ExecutionList {
    pub items: Vec<Execution>,
    /// Cursor for the next page (`?before=`), absent on the last page.
    pub next: Option<Uuid>,
}

/// Load (or re-load) a pack directory the server has: one under its `packs.dirs`. The server reads
/// and checks the files itself; a client never hands it a path elsewhere, nor the pack's contents.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LoadPack {
    /// A pack directory's name under one of the server's `packs.dirs` (`demo`), or its path on the
    /// server, which must lie under one of them.
    #[schema(min_length = 1, max_length = 4096, pattern = "^[^\\x00]*$")]
    pub dir: String,
    /// Also remove the pack's actions that are gone from its files, and take the pack over if it was
    /// loaded from another directory. Without it, such a load changes nothing (409).
    #[serde(default)]
    pub replace: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PackLoaded {
    #[serde(rename = "ref")]
    pub pack_ref: String,
    /// The directory the server read, resolved.
    pub dir: String,
    pub actions: Vec<String>,
    /// Its rules (`rules/`) and trigger types (`triggers/`), replaced with each load.
    #[serde(default)]
    pub rules: Vec<String>,
    #[serde(default)]
    pub triggers: Vec<String>,
    /// Its sensors (`sensors/`), replaced with each load.
    #[serde(default)]
    pub sensors: Vec<String>,
    /// Actions removed by a `replace` load.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub removed: Vec<String>,
    /// The directory the pack was loaded from before, when a `replace` load took it over.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_dir: Option<String>,
    /// Keys accepted but not used by this version, and files skipped, with why.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<attune_core::PackNote>,
    /// The sha256 of the stored archive: the version its actions now run.
    #[serde(default)]
    pub digest: String,
    /// The archive's size in bytes.
    #[serde(default)]
    pub size: u64,
    /// The same content from the same place was loaded already: nothing changed.
    #[serde(default)]
    pub unchanged: bool,
}

/// The query of `POST /api/v1/pack-archives`, whose body is the pack as a gzip-compressed tar.
#[derive(Debug, Clone, Default, Serialize, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct UploadPack {
    /// As for `LoadPack`: also remove actions gone from the pack, and take it over from another
    /// source.
    #[serde(default)]
    pub replace: bool,
    /// Where the pack comes from, for people (`host:/path/to/pack`); a pack loaded from another
    /// source before needs `replace`.
    #[param(max_length = 4096)]
    #[serde(default)]
    pub source: Option<String>,
}

// ---- worker protocol ----

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RegisterWorker {
    #[schema(
        min_length = 1,
        max_length = 200,
        pattern = "^[^\\x00-\\x1f\\x7f]*[^\\x00-\\x1f\\x7f\\s][^\\x00-\\x1f\\x7f]*$"
    )]
    pub name: String,
    #[schema(max_length = 255, pattern = "^[^\\x00-\\x1f\\x7f]*$")]
    pub host: String,
    #[schema(min_items = 1)]
    pub runtimes: Vec<Runtime>,
    /// An object of labels (or null).
    #[serde(default)]
    #[schema(value_type = Option<Object>)]
    pub labels: Value,
    /// Tasks it runs at once.
    #[serde(with = "attune_core::whole")]
    #[schema(minimum = 1, maximum = 4096)]
    pub concurrency: u32,
    #[schema(max_length = 64, pattern = "^[^\\x00-\\x1f\\x7f]*$")]
    pub version: String,
}

/// The worker's id and the timing it must follow.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Registered {
    pub worker: Worker,
    pub heartbeat_interval_ms: u64,
    /// A lease lasts this long past each heartbeat that carries it.
    pub lease_ms: u64,
    /// A task must be confirmed with `start` within this, or it goes back to the queue.
    pub delivery_timeout_ms: u64,
    /// Longest wait the server grants a poll.
    pub max_poll_ms: u64,
    /// The output cap that counts: the worker keeps at most this many bytes of each stream (the
    /// smaller of this and its own setting).
    #[serde(default)]
    pub max_output_bytes: u64,
    /// Largest worker-protocol request the server takes; a worker sends reports in batches that fit.
    #[serde(default)]
    pub max_request_bytes: u64,
    /// The worker's own credential: every later call of the worker protocol is made with it (the
    /// enrollment token only registers).
    #[serde(default)]
    pub credential: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Heartbeat {
    #[serde(default)]
    pub leases: Vec<Lease>,
    /// The sensors it runs, each with the lease token it was handed.
    #[serde(default)]
    #[schema(max_items = 4096)]
    pub sensors: Vec<SensorLease>,
}

/// A sensor a worker runs (heartbeat), by ref and lease token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SensorLease {
    #[serde(rename = "ref")]
    #[schema(pattern = "^[a-z][a-z0-9_-]{0,63}\\.[a-z][a-z0-9_-]{0,63}$")]
    pub sensor_ref: String,
    #[schema(pattern = "^[A-Za-z0-9_-]{1,128}$")]
    pub lease_token: String,
}

/// Whether the worker still holds a sensor it said it runs: if not, it stops it.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SensorLeaseReply {
    #[serde(rename = "ref")]
    pub sensor_ref: String,
    pub held: bool,
}

/// One event a sensor wrote, as read from its line.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SensedEvent {
    /// A trigger type among the sensor's `trigger_types`.
    #[schema(pattern = "^[a-z][a-z0-9_-]{0,63}\\.[a-z][a-z0-9_-]{0,63}$")]
    pub trigger: String,
    #[serde(default)]
    #[schema(value_type = Object)]
    pub payload: Value,
}

/// Events a sensor emitted since the last such request (worker → server).
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SensorEvents {
    #[schema(pattern = "^[A-Za-z0-9_-]{1,128}$")]
    pub lease_token: String,
    #[schema(max_items = 4096)]
    pub events: Vec<SensedEvent>,
    /// Lines the worker could not read as an event (not JSON, no `trigger`), counted on the sensor.
    #[serde(default)]
    pub malformed: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SensorEventsReply {
    pub accepted: u64,
    /// Why each refused event was refused (unknown trigger type, payload not matching its schema);
    /// they are counted as malformed.
    #[serde(default)]
    pub refused: Vec<String>,
}

/// A sensor's program ended (worker → server): it is started again after a backoff.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SensorExit {
    #[schema(pattern = "^[A-Za-z0-9_-]{1,128}$")]
    pub lease_token: String,
    /// How it ended: exit code or signal, and the end of what it wrote to stderr.
    #[schema(max_length = 65536)]
    pub error: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SensorExitReply {
    /// When it may start again (ms since the epoch).
    pub retry_at: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct LeaseReply {
    pub execution_id: Uuid,
    pub state: LeaseState,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct HeartbeatReply {
    pub status: WorkerStatus,
    pub leases: Vec<LeaseReply>,
    /// For each sensor the heartbeat named.
    #[serde(default)]
    pub sensors: Vec<SensorLeaseReply>,
    /// Sensors to start now, each under its new lease.
    #[serde(default)]
    pub start_sensors: Vec<attune_core::sensors::SensorTask>,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Poll {
    #[serde(with = "attune_core::whole")]
    #[schema(minimum = 1, maximum = 4096)]
    pub max_tasks: u32,
    /// How long to wait for work when there is none, at most a day; a longer wait than the
    /// server's `max_poll_ms` (`server.max_poll`, 30 s by default) is cut to it.
    #[serde(with = "attune_core::whole")]
    #[schema(minimum = 0, maximum = 86400000)]
    pub wait_ms: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PollReply {
    pub tasks: Vec<Task>,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Start {
    #[schema(pattern = "^[A-Za-z0-9_-]{1,128}$")]
    pub lease_token: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Complete {
    #[schema(pattern = "^[A-Za-z0-9_-]{1,128}$")]
    pub lease_token: String,
    #[serde(flatten)]
    pub report: Report,
}

/// Several `start`s in one request.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct StartBatch {
    #[schema(max_items = 4096)]
    pub leases: Vec<Lease>,
}

/// Several `complete`s in one request.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CompleteBatch {
    #[schema(max_items = 4096)]
    pub reports: Vec<CompleteItem>,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct CompleteItem {
    pub execution_id: Uuid,
    #[schema(pattern = "^[A-Za-z0-9_-]{1,128}$")]
    pub lease_token: String,
    #[serde(flatten)]
    pub report: Report,
}

/// Per item of a batch: the execution's status afterwards, or the error (as a single request
/// would have answered it).
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct BatchItemResult {
    pub execution_id: Uuid,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<attune_core::ExecutionStatus>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorDetail>,
}

#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct BatchReply {
    pub results: Vec<BatchItemResult>,
}

/// Output chunks of a running attempt (worker → server).
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AppendLogs {
    #[schema(pattern = "^[A-Za-z0-9_-]{1,128}$")]
    pub lease_token: String,
    pub chunks: Vec<attune_core::LogChunk>,
}

/// `GET /api/v1/executions/{id}/logs`.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Logs {
    pub chunks: Vec<attune_core::LogChunk>,
    /// Pass as `after` for what follows.
    pub next: i64,
    pub status: attune_core::ExecutionStatus,
}

/// One event of `GET /api/v1/events` (the `data` of a Server-Sent Event; its `id` is the resume
/// cursor and its `event` the `name`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct StreamEvent {
    /// `execution`, `worker`, `event` or `enforcement`.
    pub kind: String,
    /// `ExecutionScheduled`, `ExecutionRunning`, …, `ExecutionCompleted` (any terminal status);
    /// `WorkerRegistered`, `WorkerActive`, `WorkerInactive`, `WorkerDeregistered`;
    /// `EventReceived`; `RuleMatched`, `RuleNotMatched`, `RuleFailed`, `RuleSkipped`, `RuleBuffered`.
    pub name: String,
    pub at: attune_core::Timestamp,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub execution_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action_ref: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempt: Option<i32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker: Option<String>,
    pub actor: Option<String>,
    pub reason: Option<String>,
    /// The event (`event`, `enforcement`), its trigger type (`event`), the rule (`enforcement`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trigger: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
}

/// `POST /api/v1/tokens`.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateToken {
    /// 1 to 64 letters, digits, `.`, `_`, `-` or `@`; unique among the tokens in use.
    #[schema(pattern = "^[A-Za-z0-9._@-]{1,64}$")]
    pub name: String,
    /// `admin`, `operator`, `viewer`, or `worker` (an enrollment token for workers).
    pub role: attune_core::auth::Role,
    /// How long it is valid (`30d`, `12h`, `90m`, `3600`); forever when absent.
    #[serde(default)]
    #[schema(pattern = "^[0-9]{1,9}(\\.[0-9]+)?(ms|s|m|h|d)?$")]
    pub expires_in: Option<String>,
}

/// `POST /api/v1/keys`: set a key (create or replace).
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SetKey {
    #[schema(pattern = "^[A-Za-z0-9._-]{1,128}$")]
    pub name: String,
    /// At most 64 KiB, no NUL. A secret's is stored encrypted and never shown again.
    #[schema(max_length = 65536, pattern = "^[^\\x00]*$")]
    pub value: String,
    #[serde(default)]
    pub secret: bool,
    /// The pack the key belongs to (its actions see it before a global key of the same name).
    #[serde(default)]
    #[schema(pattern = "^[a-z][a-z0-9_-]{0,63}$")]
    pub pack: Option<String>,
}

/// `POST /api/v1/keys/rotate-master`: how many secrets were sealed again, and under which key.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Resealed {
    pub resealed: u64,
    /// The new master key's fingerprint.
    pub key_id: String,
}

/// A new token: its secret is shown here, once, and never again.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct CreatedToken {
    pub token: attune_core::auth::TokenInfo,
    pub secret: String,
}

/// `POST /api/v1/trigger-events` (`attune event emit`): an event of a trigger type, as a sensor
/// or a script would send it. The payload must satisfy the type's payload schema.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct EmitEvent {
    /// A trigger type's ref (`attune trigger list`).
    #[schema(example = "examples.disk_alert")]
    pub trigger: String,
    /// The trigger instance's parameters; rules whose trigger parameters are a subset match.
    #[serde(default)]
    pub parameters: Option<Value>,
    #[serde(default)]
    pub payload: Option<Value>,
}

/// An event with what each rule did with it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct EventDetail {
    #[serde(flatten)]
    pub event: attune_core::rules::TriggerEvent,
    pub enforcements: Vec<attune_core::rules::Enforcement>,
}

/// A rule with its latest enforcements, newest first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RuleDetail {
    #[serde(flatten)]
    pub rule: attune_core::rules::Rule,
    pub recent_enforcements: Vec<attune_core::rules::Enforcement>,
}

/// `POST /api/v1/rules/{ref}/test`: try a rule on a payload, or on a stored event, with no side
/// effects.
#[derive(Debug, Clone, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TestRule {
    /// A payload to try (with `trigger_parameters`, else the rule's own).
    #[serde(default)]
    pub payload: Option<Value>,
    #[serde(default)]
    pub trigger_parameters: Option<Value>,
    /// A stored event to try instead.
    #[serde(default)]
    pub event_id: Option<Uuid>,
}

/// One criterion as the engine evaluated it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct CheckedCriterion {
    pub key: String,
    #[serde(rename = "type")]
    pub op: attune_core::rules::Op,
    pub pattern: Value,
    /// What the key held (absent: null with `found: false`).
    pub value: Value,
    pub found: bool,
    pub holds: bool,
    pub why: String,
}

/// What the rule would do with the event: the same code as the server's processor.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RuleTestResult {
    /// The event is of the rule's trigger (type and parameters).
    pub concerns: bool,
    pub criteria: Vec<CheckedCriterion>,
    pub matched: bool,
    /// `matched`, `not_matched` or `failed`, as an enforcement would record it.
    pub outcome: attune_core::rules::Outcome,
    pub reason: Option<String>,
    /// The action's parameters as rendered (keys left as `{{ key('…') }}`).
    pub parameters: Option<Value>,
}
