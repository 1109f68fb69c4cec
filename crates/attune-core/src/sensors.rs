//! Sensors: long-running programs of a pack that watch something and write one event per line to
//! stdout (`{"trigger": "pack.type", "payload": {…}}`). Each enabled sensor runs on exactly one
//! capable worker at a time, under a lease its worker renews with every heartbeat — the same rule
//! as an execution's; the server hands it out in a heartbeat's reply and takes it back when the
//! lease lapses, the worker drains, or the sensor is disabled or changed.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::{ActionRef, PackRef, Runtime, Timestamp};

/// A sensor as its pack defines it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Sensor {
    #[serde(rename = "ref")]
    #[cfg_attr(feature = "openapi", schema(value_type = String, example = "examples.disk_watch"))]
    pub sensor_ref: ActionRef,
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    pub pack: PackRef,
    #[serde(default)]
    pub description: String,
    pub runtime: Runtime,
    /// Relative to the pack's `sensors/` directory.
    pub entry_point: String,
    /// The trigger types whose events it may emit; any other line is counted as malformed.
    #[cfg_attr(feature = "openapi", schema(value_type = Vec<String>))]
    pub trigger_types: Vec<ActionRef>,
    /// Given to the program as JSON in `ATTUNE_SENSOR_PARAMETERS`.
    pub parameters: Value,
    /// As the pack says; `attune sensor enable|disable` overrides it.
    pub enabled: bool,
    /// Where the pack was loaded from.
    #[serde(default)]
    pub pack_dir: Option<String>,
    /// The pack archive's digest: workers fetch and run that version (see `Action::pack_digest`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pack_digest: Option<String>,
}

/// What a worker is handed: a sensor to run, and the lease it holds it under.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SensorTask {
    pub sensor: Sensor,
    #[cfg_attr(feature = "openapi", schema(pattern = "^[A-Za-z0-9_-]{1,128}$"))]
    pub lease_token: String,
}

/// Where a sensor stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum SensorStatus {
    /// Held by a worker that renews its lease.
    Running,
    /// Waiting for a worker that runs its runtime to take it.
    Pending,
    /// Exited; restarted (by whichever capable worker heartbeats first) after `retry_at`.
    Backoff,
    /// Its worker stopped renewing the lease; the next capable worker takes it over.
    Lost,
    Disabled,
}

impl SensorStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            SensorStatus::Running => "running",
            SensorStatus::Pending => "pending",
            SensorStatus::Backoff => "backoff",
            SensorStatus::Lost => "lost",
            SensorStatus::Disabled => "disabled",
        }
    }
}

/// A sensor and how it is doing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct SensorState {
    #[serde(flatten)]
    pub sensor: Sensor,
    pub status: SensorStatus,
    /// Whether it runs: the pack's `enabled` unless an operator overrode it.
    pub effective_enabled: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker_id: Option<uuid::Uuid>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker_name: Option<String>,
    /// When its current (or last) run began.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<i64>))]
    pub started_at: Option<Timestamp>,
    /// Times it was started again: after it exited, or on another worker after its worker died.
    pub restarts: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<i64>))]
    pub last_error_at: Option<Timestamp>,
    /// While in backoff: when it may start again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(feature = "openapi", schema(value_type = Option<i64>))]
    pub retry_at: Option<Timestamp>,
    /// Events it emitted that were accepted.
    pub events: u64,
    /// Lines that were not an event it may emit (not JSON, unknown trigger, bad payload).
    pub malformed: u64,
}

/// A sensor that ran at least this long before exiting starts its backoff over.
pub const SENSOR_STABLE_AFTER: Duration = Duration::from_secs(60);

/// How long a sensor waits before its `failures`-th consecutive restart: 1 s, 2 s, 4 s, … up to
/// a minute.
pub fn sensor_backoff(failures: u32) -> Duration {
    let exp = failures.saturating_sub(1).min(6);
    Duration::from_secs(1u64 << exp).min(Duration::from_secs(60))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_a_minute() {
        let got: Vec<u64> = (1..=9).map(|n| sensor_backoff(n).as_secs()).collect();
        assert_eq!(got, [1, 2, 4, 8, 16, 32, 60, 60, 60]);
        assert_eq!(sensor_backoff(0).as_secs(), 1);
    }
}
