//! An execution: one requested run of an action, its attempts' outcome and its history.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

use crate::{
    action::Action, names::ActionRef, output::OutputEncoding, status::ExecutionStatus, time::Timestamp,
};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Execution {
    pub id: Uuid,
    pub action_ref: ActionRef,
    pub parameters: Value,
    pub status: ExecutionStatus,
    pub result: Option<Value>,
    /// The captured output, written as `stdout_encoding` says: the text itself (`utf-8`), or the
    /// base64 of the exact bytes (`base64`) when it is binary, not UTF-8 or holds NUL.
    pub stdout: String,
    pub stderr: String,
    #[serde(default)]
    pub stdout_encoding: OutputEncoding,
    #[serde(default)]
    pub stderr_encoding: OutputEncoding,
    /// More was printed than `worker.max_output_bytes`; what is kept is the beginning.
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
    /// The workflow it is a task of, or the execution it requeues.
    pub parent: Option<Uuid>,
    pub trace_id: Option<String>,
    pub enforcement: Option<String>,
    /// A workflow child's identity in its workflow: `task/iteration[/item]`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub child_key: Option<String>,
    /// Filled on `get`, empty in lists.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub history: Vec<HistoryEntry>,
    /// Every started attempt, oldest first. Filled on `get`, empty in lists.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub attempts: Vec<Attempt>,
    /// The worker labels it needs (its action's `worker_selector`, or its submission's).
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub worker_selector: std::collections::BTreeMap<String, String>,
    /// Why it still waits, when no active worker can take it (on `get` of a scheduled one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waiting: Option<String>,
    /// The pack version (archive digest) it runs: the one current when it was accepted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pack_digest: Option<String>,
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
    /// One of `succeeded`, `failed`, `timeout`, `canceled`; anything else is refused (422) and,
    /// since resending cannot fix it, fails the execution with that reason.
    pub status: ExecutionStatus,
    #[serde(default, with = "crate::whole::option")]
    pub exit_code: Option<i32>,
    /// Written as `stdout_encoding` says (see `Execution::stdout`).
    #[serde(default)]
    pub stdout: String,
    #[serde(default)]
    pub stderr: String,
    #[serde(default)]
    pub stdout_encoding: OutputEncoding,
    #[serde(default)]
    pub stderr_encoding: OutputEncoding,
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
    /// A report with no output.
    pub fn new(status: ExecutionStatus) -> Report {
        Report {
            status,
            exit_code: None,
            stdout: String::new(),
            stderr: String::new(),
            stdout_encoding: OutputEncoding::Utf8,
            stderr_encoding: OutputEncoding::Utf8,
            stdout_truncated: false,
            stderr_truncated: false,
            result: None,
            error: None,
        }
    }

    /// What is wrong with its content, if anything: streams declared base64 must be base64.
    pub fn check(&self) -> Result<(), String> {
        for (name, text, enc) in
            [("stdout", &self.stdout, self.stdout_encoding), ("stderr", &self.stderr, self.stderr_encoding)]
        {
            crate::output::decode(text, enc).map_err(|e| format!("{name} is declared base64 but is {e}"))?;
        }
        Ok(())
    }

    /// The report with its output storable: a stream that claims to be UTF-8 but holds NUL is
    /// stored as base64 (the same bytes).
    pub fn normalized(mut self) -> Report {
        (self.stdout, self.stdout_encoding) = crate::output::normalize(self.stdout, self.stdout_encoding);
        (self.stderr, self.stderr_encoding) = crate::output::normalize(self.stderr, self.stderr_encoding);
        self
    }

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
    #[serde(default, with = "crate::whole")]
    pub seq: i64,
    /// `stdout` or `stderr`.
    #[cfg_attr(feature = "openapi", schema(pattern = "^(stdout|stderr)$"))]
    pub stream: String,
    #[serde(default)]
    pub at: Timestamp,
    /// Written as `encoding` says (as `Execution::stdout`).
    pub text: String,
    #[serde(default)]
    pub encoding: OutputEncoding,
}
