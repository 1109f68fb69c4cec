//! Sensors: for people, where each runs and how it is doing (list, show, enable, disable); for
//! workers (on the worker door, with `worker::Caller`), the events a sensor emitted and its exit.
//! Handing sensors out and taking them back happens in the heartbeat (`worker::heartbeat`).

use attune_core::{auth::Identity, sensors::SensorState, Timestamp};
use attune_wire::{SensorEvents, SensorEventsReply, SensorExit, SensorExitReply};
use axum::{extract::Path, Extension, Json};
use serde_json::Value;

use super::{
    worker::{check_token, Caller},
    State,
};
use crate::{error::Body, reactor, ApiError};

/// Longest stored exit message.
const MAX_ERROR: usize = 4096;

async fn find(state: &State, r: &str) -> Result<SensorState, ApiError> {
    state.store.get_sensor(r, Timestamp::now()).await?.ok_or_else(|| {
        ApiError::not_found("unknown_sensor", format!("no sensor {r:?}; `attune sensor list` shows them"))
    })
}

/// Every sensor with where it runs, its restarts, its last error and what it emitted.
#[utoipa::path(get, path = "/api/v1/sensors", tag = "events", responses((status = 200, body = Vec<attune_core::sensors::SensorState>)))]
pub async fn list(state: State) -> Result<Json<Vec<SensorState>>, ApiError> {
    Ok(Json(state.store.list_sensors(Timestamp::now()).await?))
}

#[utoipa::path(get, path = "/api/v1/sensors/{sensor_ref}", tag = "events", params(("sensor_ref" = String, Path)), responses((status = 200, body = attune_core::sensors::SensorState)))]
pub async fn get(state: State, Path(r): Path<String>) -> Result<Json<SensorState>, ApiError> {
    Ok(Json(find(&state, &r).await?))
}

async fn set_enabled(
    state: State,
    who: Identity,
    r: String,
    on: bool,
) -> Result<Json<SensorState>, ApiError> {
    find(&state, &r).await?;
    let s = state.store.set_sensor_enabled(&r, on, Timestamp::now()).await?;
    tracing::info!(sensor = %r, enabled = on, by = %who.actor(), "sensor {}", if on { "enabled" } else { "disabled" });
    Ok(Json(s))
}

/// Enables a sensor (kept across reloads of its pack until set again); a capable worker starts it
/// at its next heartbeat, without waiting out a backoff.
#[utoipa::path(post, path = "/api/v1/sensors/{sensor_ref}/enable", tag = "events", params(("sensor_ref" = String, Path)), responses((status = 200, body = attune_core::sensors::SensorState)))]
pub async fn enable(
    state: State,
    Extension(who): Extension<Identity>,
    Path(r): Path<String>,
) -> Result<Json<SensorState>, ApiError> {
    set_enabled(state, who, r, true).await
}

/// Disables a sensor (kept across reloads); its worker stops it at its next heartbeat.
#[utoipa::path(post, path = "/api/v1/sensors/{sensor_ref}/disable", tag = "events", params(("sensor_ref" = String, Path)), responses((status = 200, body = attune_core::sensors::SensorState)))]
pub async fn disable(
    state: State,
    Extension(who): Extension<Identity>,
    Path(r): Path<String>,
) -> Result<Json<SensorState>, ApiError> {
    set_enabled(state, who, r, false).await
}

/// Events a sensor emitted. Each must be of one of the sensor's trigger types and fit its
/// payload schema; those that do not are refused (and counted as malformed), the others stored
/// in one transaction — only while this worker still holds the sensor (409 `stale_lease`
/// otherwise, and nothing is stored: the worker stops it).
#[utoipa::path(post, path = "/api/v1/worker/{id}/sensors/{sensor_ref}/events", tag = "worker protocol", params(("id" = uuid::Uuid, Path), ("sensor_ref" = String, Path)), request_body = attune_wire::SensorEvents, responses((status = 200, body = attune_wire::SensorEventsReply), (status = 409, description = "This worker no longer holds the sensor")))]
pub async fn events(
    state: State,
    caller: Caller,
    Path((_, r)): Path<(String, String)>,
    Body(req): Body<SensorEvents>,
) -> Result<Json<SensorEventsReply>, ApiError> {
    check_token(&req.lease_token)?;
    if req.events.len() > 4096 {
        return Err(ApiError::unprocessable("invalid_sensor_events", "at most 4096 events per request"));
    }
    for e in &req.events {
        attune_core::ActionRef::parse(&e.trigger).map_err(|err| {
            ApiError::unprocessable(
                "invalid_sensor_events",
                format!("trigger {:?} is not a trigger type's ref: {err}; nothing was stored", e.trigger),
            )
        })?;
        if !e.payload.is_object() {
            return Err(ApiError::unprocessable(
                "invalid_sensor_events",
                "every payload must be a JSON object; nothing was stored",
            ));
        }
    }
    let sensor = find(&state, &r).await?.sensor;
    let mut good = Vec::with_capacity(req.events.len());
    let mut refused = Vec::new();
    let source = format!("sensor:{r}");
    for e in req.events {
        if !sensor.trigger_types.iter().any(|t| t.as_str() == e.trigger) {
            let may: Vec<&str> = sensor.trigger_types.iter().map(|t| t.as_str()).collect();
            refused.push(format!(
                "trigger {:?} is not among the sensor's trigger_types ({})",
                e.trigger,
                may.join(", ")
            ));
            continue;
        }
        match reactor::check(&state, &e.trigger, Value::Object(Default::default()), e.payload, source.clone())
            .await
        {
            Ok(ev) => good.push(ev),
            Err(err) => refused.push(err.describe()),
        }
    }
    let malformed = req.malformed.saturating_add(refused.len() as u64);
    state.store.sensor_events(&r, caller.id, &req.lease_token, &good, malformed).await?;
    reactor::accepted(&state, &good);
    crate::metrics::Metrics::add(&state.metrics.events.sensor_malformed, malformed);
    if !refused.is_empty() {
        tracing::warn!(sensor = %r, worker = %caller.name, refused = ?refused, "sensor events refused");
    }
    Ok(Json(SensorEventsReply { accepted: good.len() as u64, refused }))
}

/// A sensor's program ended: the sensor is given back and waits out its backoff before a worker
/// starts it again.
#[utoipa::path(post, path = "/api/v1/worker/{id}/sensors/{sensor_ref}/exit", tag = "worker protocol", params(("id" = uuid::Uuid, Path), ("sensor_ref" = String, Path)), request_body = attune_wire::SensorExit, responses((status = 200, body = attune_wire::SensorExitReply), (status = 409, description = "This worker no longer holds the sensor")))]
pub async fn exit(
    state: State,
    caller: Caller,
    Path((_, r)): Path<(String, String)>,
    Body(req): Body<SensorExit>,
) -> Result<Json<SensorExitReply>, ApiError> {
    check_token(&req.lease_token)?;
    if req.error.len() > 65536 {
        return Err(ApiError::unprocessable("invalid_sensor_exit", "error: at most 65536 bytes"));
    }
    let mut error = req.error;
    if error.len() > MAX_ERROR {
        let mut cut = MAX_ERROR;
        while !error.is_char_boundary(cut) {
            cut -= 1;
        }
        error.truncate(cut);
    }
    let now = Timestamp::now();
    let retry_at = state.store.sensor_exited(&r, caller.id, &req.lease_token, &error, now).await?;
    tracing::warn!(sensor = %r, worker = %caller.name, error = %error, retry_in_ms = retry_at.millis() - now.millis(), "sensor exited");
    Ok(Json(SensorExitReply { retry_at: retry_at.millis() }))
}
