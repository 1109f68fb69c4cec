//! An execution: one requested run of an action, its attempts' outcome and its history.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

use crate::{action::Action, names::ActionRef, status::ExecutionStatus, time::Timestamp};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Execution {
    pub id: Uuid,
    pub action_ref: ActionRef,
    pub parameters: Value,
    pub status: ExecutionStatus,
    pub result: Option<Value>,
    pub stdout: String,
    pub stderr: String,
    #[serde(default)]
    pub stdout_truncated: bool,
    #[serde(default)]
    pub stderr_truncated: bool,
    pub exit_code: Option<i32>,
    /// Machine-readable reason for a non-success terminal state (an object with at least `error`).
    pub error: Option<Value>,
    /// Name of the worker running (or that last ran) the current attempt.
    pub worker: Option<String>,
    pub worker_id: Option<Uuid>,
    /// 0 until the first attempt starts, then 1, 2, …
    pub attempt: u32,
    pub max_attempts: u32,
    pub timeout_seconds: Option<u64>,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
    pub started_at: Option<Timestamp>,
    pub finished_at: Option<Timestamp>,
    /// Room for workflows and rules (not used yet).
    pub parent: Option<Uuid>,
    pub trace_id: Option<String>,
    pub enforcement: Option<String>,
    /// Filled on `get`, empty in lists.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub history: Vec<HistoryEntry>,
    /// Every started attempt, oldest first. Filled on `get`, empty in lists.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub attempts: Vec<Attempt>,
    /// The action definition as it was when the execution was accepted.
    #[serde(skip)]
    pub action: Option<Action>,
}

impl Execution {
    /// The execution as people may see it: secret parameters masked.
    pub fn masked(mut self) -> Execution {
        if let Some(a) = &self.action {
            self.parameters = a.mask_parameters(&self.parameters);
        }
        self
    }
}

/// One transition, appended by the store in the same transaction as the change itself.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct HistoryEntry {
    pub at: Timestamp,
    pub from: Option<ExecutionStatus>,
    pub to: ExecutionStatus,
    /// Who made the change: `api`, `worker:<name>`, `execution_timeout_monitor`, …
    pub actor: String,
    pub reason: Option<String>,
    pub attempt: u32,
}

/// One started attempt of an execution.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Attempt {
    pub attempt: u32,
    pub worker: Option<String>,
    pub worker_id: Option<Uuid>,
    pub started_at: Timestamp,
    pub finished_at: Option<Timestamp>,
    /// `running` while it runs; then how it ended (`succeeded`, `failed`, `timeout`, `canceled`,
    /// `abandoned` when its worker vanished or shut down).
    pub status: ExecutionStatus,
    pub exit_code: Option<i32>,
    pub error: Option<Value>,
}

/// Work that was never processed successfully: it expired in the queue (`queue_ttl`), its worker
/// vanished on its last attempt (`abandoned`), or it failed every attempt its retry policy allowed
/// (`retries_exhausted`). Requeueing creates a new execution.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DeadLetter {
    pub id: Uuid,
    pub execution_id: Uuid,
    pub action_ref: ActionRef,
    pub cause: String,
    pub error: Option<Value>,
    pub created_at: Timestamp,
    pub requeued_at: Option<Timestamp>,
    pub requeued_as: Option<Uuid>,
}

/// What a worker reports when an attempt ends.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Report {
    /// One of `succeeded`, `failed`, `timeout`, `canceled`.
    pub status: ExecutionStatus,
    pub exit_code: Option<i32>,
    #[serde(default)]
    pub stdout: String,
    #[serde(default)]
    pub stderr: String,
    #[serde(default)]
    pub stdout_truncated: bool,
    #[serde(default)]
    pub stderr_truncated: bool,
    #[serde(default)]
    pub result: Option<Value>,
    #[serde(default)]
    pub error: Option<Value>,
}

impl Report {
    pub fn is_valid_outcome(&self) -> bool {
        matches!(
            self.status,
            ExecutionStatus::Succeeded
                | ExecutionStatus::Failed
                | ExecutionStatus::Timeout
                | ExecutionStatus::Canceled
        )
    }
}

/// A piece of an action's output, sent while it runs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct LogChunk {
    /// Cursor: pass the last one seen as `after` to get what follows (set by the server).
    #[serde(default)]
    pub seq: i64,
    /// `stdout` or `stderr`.
    pub stream: String,
    #[serde(default)]
    pub at: Timestamp,
    pub text: String,
}
