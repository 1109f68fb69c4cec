//! A worker as the server knows it.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

use crate::{action::Runtime, status::WorkerStatus, time::Timestamp};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Worker {
    pub id: Uuid,
    pub name: String,
    pub host: String,
    pub runtimes: Vec<Runtime>,
    pub labels: Value,
    pub concurrency: u32,
    pub version: String,
    pub status: WorkerStatus,
    pub last_heartbeat: Timestamp,
    pub registered_at: Timestamp,
    pub deregistered_at: Option<Timestamp>,
    /// Why the worker last became inactive (stale heartbeat, draining, deregistered).
    pub status_reason: Option<String>,
    /// Executions this worker currently holds a lease on.
    #[serde(default)]
    pub in_flight: u32,
}
