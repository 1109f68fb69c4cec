//! Tasks and leases: what a worker holds while it runs an execution. Every report about an
//! execution carries the lease token of the delivery it came from; only the current token counts.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

use crate::action::Action;

/// A task handed to a worker: the execution, its action snapshot and the lease token that fences
/// every later report about it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Task {
    pub execution_id: Uuid,
    pub lease_token: String,
    /// The attempt this delivery becomes once started.
    pub attempt: u32,
    pub max_attempts: u32,
    pub action: Action,
    pub parameters: Value,
    pub timeout_seconds: Option<u64>,
    /// Values to mask in everything the worker sends back besides the secret parameters' own
    /// (the secret keys the parameters' templates used).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub masks: Vec<String>,
    /// Why the parameters could not be made ready (a key gone, say): the worker runs nothing and
    /// fails the execution with this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parameter_error: Option<String>,
}

/// A lease a worker says it holds, as sent in its heartbeat.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Lease {
    pub execution_id: Uuid,
    #[cfg_attr(feature = "openapi", schema(pattern = "^[A-Za-z0-9_-]{1,128}$"))]
    pub lease_token: String,
}

/// What the server thinks of a lease the worker reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum LeaseState {
    /// Extended; keep going.
    Held,
    /// Extended, but a cancel was requested: stop the process and report `canceled`.
    Cancel,
    /// Not yours any more (it expired and moved on, or it finished): stop and do not report.
    Revoked,
}
