//! The worker door: register → heartbeat → poll → start → complete → drain/deregister. A worker
//! registers with an enrollment token (role `worker`) and gets a credential of its own (role
//! `agent`, bound to it); every later route names the worker (`/api/v1/worker/{id}/…`), and
//! `Caller` accepts the call only from that worker's credential. Every call about an execution is
//! then checked against the lease *that worker* holds: a stale lease gets 409, another worker's
//! 403, and neither changes anything.

use std::{sync::Arc, time::Duration};

use attune_core::{
    auth::{Identity, Permission, Role},
    lifecycle::Holder,
    Timestamp, Worker,
};
use attune_store::{Driven, NewWorker};
use attune_wire::{
    BatchItemResult, BatchReply, Complete, CompleteBatch, Heartbeat, HeartbeatReply, LeaseReply, Poll,
    PollReply, RegisterWorker, Registered, Start, StartBatch,
};
use axum::{
    extract::{FromRequestParts, Path, RawPathParams},
    http::{request::Parts, Method},
    routing::post,
    Extension, Json, Router,
};
use uuid::Uuid;

use super::{Door, State};
use crate::{
    auth::{create_token, forbidden, TokenRequest},
    error::{parse_id, Body},
    ApiError, Shared,
};

/// Longest worker name accepted.
const MAX_NAME: usize = 200;

/// Maximum items in one batch request.
const MAX_BATCH: usize = 4096;

/// What each worker route needs.
pub(super) const RULES: crate::auth::Rules = &[
    (Method::POST, "/api/v1/worker/register", Permission::Enroll),
    (Method::POST, "/api/v1/worker/{id}/heartbeat", Permission::WorkerProtocol),
    (Method::POST, "/api/v1/worker/{id}/poll", Permission::WorkerProtocol),
    (Method::POST, "/api/v1/worker/{id}/executions/{execution}/start", Permission::WorkerProtocol),
    (Method::POST, "/api/v1/worker/{id}/executions/{execution}/complete", Permission::WorkerProtocol),
    (Method::POST, "/api/v1/worker/{id}/executions/{execution}/logs", Permission::WorkerProtocol),
    (Method::POST, "/api/v1/worker/{id}/executions/{execution}/release", Permission::WorkerProtocol),
    (Method::POST, "/api/v1/worker/{id}/start-batch", Permission::WorkerProtocol),
    (Method::POST, "/api/v1/worker/{id}/complete-batch", Permission::WorkerProtocol),
    (Method::POST, "/api/v1/worker/{id}/drain", Permission::WorkerProtocol),
    (Method::POST, "/api/v1/worker/{id}/deregister", Permission::WorkerProtocol),
    (Method::POST, "/api/v1/worker/{id}/sensors/{sensor_ref}/events", Permission::WorkerProtocol),
    (Method::POST, "/api/v1/worker/{id}/sensors/{sensor_ref}/exit", Permission::WorkerProtocol),
    (Method::GET, "/api/v1/worker/{id}/packs/{digest}", Permission::WorkerProtocol),
];

pub(super) fn door() -> Door {
    Router::new()
        .route("/api/v1/worker/register", post(register))
        .route("/api/v1/worker/{id}/heartbeat", post(heartbeat))
        .route("/api/v1/worker/{id}/poll", post(poll))
        .route("/api/v1/worker/{id}/executions/{execution}/start", post(start))
        .route("/api/v1/worker/{id}/executions/{execution}/complete", post(complete))
        .route("/api/v1/worker/{id}/executions/{execution}/logs", post(append_logs))
        .route("/api/v1/worker/{id}/executions/{execution}/release", post(release))
        .route("/api/v1/worker/{id}/start-batch", post(start_batch))
        .route("/api/v1/worker/{id}/complete-batch", post(complete_batch))
        .route("/api/v1/worker/{id}/drain", post(drain))
        .route("/api/v1/worker/{id}/deregister", post(deregister))
        .route("/api/v1/worker/{id}/sensors/{sensor_ref}/events", post(super::sensors::events))
        .route("/api/v1/worker/{id}/sensors/{sensor_ref}/exit", post(super::sensors::exit))
        .route("/api/v1/worker/{id}/packs/{digest}", axum::routing::get(pack_archive))
}

/// The registered worker a worker-protocol call comes from: the `{id}` of its path, which must be
/// the worker the credential was issued to.
pub(crate) struct Caller {
    pub id: Uuid,
    pub name: String,
}

impl Caller {
    /// Its claim to the lease `token`.
    fn holds<'a>(&self, token: &'a str) -> Holder<'a> {
        Holder { token, worker: self.id }
    }
}

impl FromRequestParts<Arc<Shared>> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &Arc<Shared>) -> Result<Self, ApiError> {
        let params = RawPathParams::from_request_parts(parts, state)
            .await
            .map_err(|e| ApiError::bad_request("invalid_path", e.body_text()))?;
        let raw = params.iter().find(|(k, _)| *k == "id").map(|(_, v)| v.to_owned()).unwrap_or_default();
        let id = parse_id("worker", &raw)?;
        let who = parts.extensions.get::<Identity>().cloned().ok_or_else(|| forbidden("no identity"))?;
        if who.worker != Some(id) {
            return Err(forbidden(format!("this credential belongs to another worker, not to {id}")));
        }
        Ok(Caller { id, name: who.name })
    }
}

fn ms(d: Duration) -> u64 {
    d.as_millis() as u64
}

/// A name, host or version: printable, and not too long.
fn check_label(field: &str, v: &str, max: usize) -> Result<(), ApiError> {
    if v.len() > max || v.chars().any(|c| c < ' ' || c == '\x7f') {
        return Err(ApiError::unprocessable(
            "invalid_registration",
            format!("{field} must be at most {max} bytes without control characters"),
        ));
    }
    Ok(())
}

/// A lease token as the server hands them out: 1 to 128 letters, digits, `-` or `_`.
pub(super) fn check_token(t: &str) -> Result<(), ApiError> {
    if t.is_empty()
        || t.len() > 128
        || !t.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return Err(ApiError::unprocessable(
            "invalid_lease_token",
            "lease_token must be 1 to 128 letters, digits, '-' or '_' (as handed out by a poll)",
        ));
    }
    Ok(())
}

#[utoipa::path(post, path = "/api/v1/worker/register", tag = "worker protocol", request_body = attune_wire::RegisterWorker, responses((status = 200, body = attune_wire::Registered)))]
pub async fn register(
    state: State,
    Extension(enroller): Extension<Identity>,
    Body(req): Body<RegisterWorker>,
) -> Result<Json<Registered>, ApiError> {
    let bad = |m: &str| ApiError::unprocessable("invalid_registration", m.to_owned());
    if req.name.trim().is_empty() || req.name.len() > MAX_NAME {
        return Err(bad("name must be 1 to 200 characters"));
    }
    check_label("name", &req.name, MAX_NAME)?;
    check_label("host", &req.host, 255)?;
    check_label("version", &req.version, 64)?;
    if req.runtimes.is_empty() {
        return Err(bad("runtimes must list at least one runtime"));
    }
    if let Some(rt) = req.runtimes.iter().find(|r| r.server_side()) {
        return Err(ApiError::unprocessable(
            "invalid_registration",
            format!("runtimes: {rt} is run by the server, not by workers"),
        ));
    }
    if req.concurrency == 0 || req.concurrency > 4096 {
        return Err(bad("concurrency must be between 1 and 4096"));
    }
    // Stored as text values, which is what worker selectors compare with.
    let labels = attune_core::action::labels_from(&req.labels).map_err(|e| bad(&e))?;
    let w = NewWorker {
        name: req.name,
        host: req.host,
        runtimes: req.runtimes,
        labels: serde_json::to_value(labels).unwrap_or_default(),
        concurrency: req.concurrency,
        version: req.version,
    };
    let now = Timestamp::now();
    let worker = state.store.register_worker(&w, now).await?;
    // Its own credential: everything after registration is done with it, and it is good for this
    // worker only.
    let (_, credential) = create_token(
        &state.store,
        TokenRequest {
            name: worker.name.clone(),
            role: Role::Agent,
            worker: Some(worker.id),
            created_by: Some(enroller.actor()),
            expires_at: None,
        },
        now,
    )
    .await?;
    crate::metrics::Metrics::add(&state.metrics.workers_registered, 1);
    tracing::info!(worker = %worker.name, id = %worker.id, runtimes = ?worker.runtimes, enrolled_by = %enroller.name, "worker registered");
    let o = &state.opts;
    Ok(Json(Registered {
        worker,
        heartbeat_interval_ms: ms(o.heartbeat_interval),
        lease_ms: ms(o.staleness),
        delivery_timeout_ms: ms(o.delivery_timeout),
        max_poll_ms: ms(o.max_poll),
        max_output_bytes: o.max_output_bytes as u64,
        max_request_bytes: o.http.max_worker_request_bytes as u64,
        credential,
    }))
}

async fn worker(shared: &Shared, id: Uuid) -> Result<Worker, ApiError> {
    shared.store.get_worker(id).await?.ok_or_else(|| {
        ApiError::not_found("unknown_worker", format!("worker {id} is not registered; register again"))
    })
}

#[utoipa::path(post, path = "/api/v1/worker/{id}/heartbeat", tag = "worker protocol", params(("id" = uuid::Uuid, Path)), request_body = attune_wire::Heartbeat, responses((status = 200, body = attune_wire::HeartbeatReply)))]
pub async fn heartbeat(
    state: State,
    caller: Caller,
    Body(hb): Body<Heartbeat>,
) -> Result<Json<HeartbeatReply>, ApiError> {
    for l in &hb.leases {
        check_token(&l.lease_token)?;
    }
    if hb.sensors.len() > MAX_BATCH {
        return Err(ApiError::unprocessable("invalid_heartbeat", format!("at most {MAX_BATCH} sensors")));
    }
    for s in &hb.sensors {
        check_token(&s.lease_token)?;
        attune_core::ActionRef::parse(&s.sensor_ref).map_err(|e| {
            ApiError::unprocessable(
                "invalid_heartbeat",
                format!("sensors: {:?} is not a sensor ref: {e}", s.sensor_ref),
            )
        })?;
    }
    let now = Timestamp::now();
    let until = now.plus(state.opts.staleness);
    let (status, leases) = state.store.heartbeat(caller.id, &hb.leases, now, until).await?;
    let held: Vec<(String, String)> = hb.sensors.into_iter().map(|s| (s.sensor_ref, s.lease_token)).collect();
    let beat = state
        .store
        .sensor_heartbeat(caller.id, &held, status == attune_core::WorkerStatus::Active, now, until)
        .await?;
    let mut start_sensors = Vec::new();
    if let Some(s) = beat.start {
        let r = s.task.sensor.sensor_ref.to_string();
        if s.restart {
            state.metrics.events.sensor_restarted(&r);
        }
        match &s.taken_from {
            Some(from) => {
                tracing::warn!(sensor = %r, worker = %caller.name, from = %from, "sensor moved: its worker stopped renewing the lease")
            }
            None => {
                tracing::info!(sensor = %r, worker = %caller.name, restart = s.restart, "sensor handed out")
            }
        }
        start_sensors.push(s.task);
    }
    Ok(Json(HeartbeatReply {
        status,
        leases: leases.into_iter().map(|(execution_id, state)| LeaseReply { execution_id, state }).collect(),
        sensors: beat
            .held
            .into_iter()
            .map(|(sensor_ref, held)| attune_wire::SensorLeaseReply { sensor_ref, held })
            .collect(),
        start_sensors,
    }))
}

/// Long poll: returns as soon as there is work for this worker, or empty after the wait.
#[utoipa::path(post, path = "/api/v1/worker/{id}/poll", tag = "worker protocol", params(("id" = uuid::Uuid, Path)), request_body = attune_wire::Poll, responses((status = 200, body = attune_wire::PollReply)))]
pub async fn poll(state: State, caller: Caller, Body(p): Body<Poll>) -> Result<Json<PollReply>, ApiError> {
    if p.max_tasks == 0 || p.max_tasks > 4096 {
        return Err(ApiError::unprocessable("invalid_poll", "max_tasks must be between 1 and 4096"));
    }
    if p.wait_ms > 86_400_000 {
        return Err(ApiError::unprocessable("invalid_poll", "wait_ms must be at most 86400000 (a day)"));
    }
    let w = worker(&state, caller.id).await?;
    let wait = Duration::from_millis(p.wait_ms.into()).min(state.opts.max_poll);
    let deadline = tokio::time::Instant::now() + wait;
    let mut parked: Option<(Waiting<'_>, crate::pollers::Place<'_>)> = None;
    let mut woken = false;
    loop {
        // Register interest before looking, so a submit between the look and the wait is not missed.
        let notified = state.work_available.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        if let Some((_, place)) = parked.as_ref().filter(|_| woken) {
            place.defer_to_less_loaded().await;
        }
        let claimed = claim_for_live_poller(&state, &w, p.max_tasks).await;
        if let Some((_, place)) = &parked {
            place.claimed();
        }
        let mut tasks = claimed?;
        if !tasks.is_empty() {
            if tasks.iter().any(|t| attune_template::has_templates(&t.parameters)) {
                // Secrets are opened here, for the worker that runs the task, and nowhere else.
                let ring = state.keyring.read().unwrap_or_else(|e| e.into_inner()).clone();
                for t in &mut tasks {
                    crate::keys::prepare_task(&state.store, &ring, t).await;
                }
            }
            for t in &tasks {
                tracing::debug!(execution_id = %t.execution_id, worker = %w.name, "task delivered");
            }
            return Ok(Json(PollReply { tasks }));
        }
        if tokio::time::Instant::now() >= deadline {
            return Ok(Json(PollReply { tasks: Vec::new() }));
        }
        if parked.is_none() {
            parked = Some((Waiting::new(&state.metrics.polls_waiting), state.pollers.park(&w, p.max_tasks)));
            tracing::debug!(worker = %w.name, "poll waiting for work");
        }
        // Without a wake-up, look again now and then: work made available by another replica, or a
        // retry whose backoff just ended. Only a wake-up (all parked polls at once) defers to the
        // less loaded (`pollers`).
        let recheck = (tokio::time::Instant::now() + state.opts.recheck).min(deadline);
        tokio::select! {
            _ = notified => woken = true,
            _ = tokio::time::sleep_until(recheck) => woken = false,
            _ = state.shutdown.cancelled() => return Ok(Json(PollReply { tasks: Vec::new() })),
        }
    }
}

/// Counts a poll as waiting (`attune_polls_waiting`) for as long as it lives.
struct Waiting<'a>(&'a std::sync::atomic::AtomicU64);

impl<'a> Waiting<'a> {
    fn new(gauge: &'a std::sync::atomic::AtomicU64) -> Self {
        gauge.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Waiting(gauge)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Claims in a task of its own and hands the result over a channel. If the poller's connection
/// closes meanwhile, axum drops this handler, the hand-over fails, and the tasks go straight back
/// to the queue instead of waiting for `delivery_timeout` (seed 004: a reply to a dead caller must
/// not swallow the work).
async fn claim_for_live_poller(
    state: &Arc<Shared>,
    w: &Worker,
    max: u32,
) -> Result<Vec<attune_core::Task>, ApiError> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let shared = state.clone();
    let (id, name, runtimes) = (w.id, w.name.clone(), w.runtimes.clone());
    // Owned by the hand-over: it ends when the claim is delivered or undone.
    tokio::spawn(async move {
        let now = Timestamp::now();
        let claimed =
            shared.store.claim(id, &name, &runtimes, max, now, now.plus(shared.opts.delivery_timeout)).await;
        if let Err(Ok(tasks)) = tx.send(claimed) {
            if let Some(token) = tasks.first().map(|t| t.lease_token.clone()) {
                let ids: Vec<Uuid> = tasks.iter().map(|t| t.execution_id).collect();
                match shared.store.unclaim(&ids, &token, Timestamp::now()).await {
                    Ok(n) => {
                        tracing::info!(worker = %name, count = n, "poller went away; tasks back in the queue")
                    }
                    Err(e) => {
                        tracing::warn!(worker = %name, error = %e, "could not put tasks back; delivery timeout will")
                    }
                }
                shared.work_available.notify_waiters();
            }
        }
    });
    match rx.await {
        Ok(r) => Ok(r?),
        Err(_) => {
            Err(ApiError::new(axum::http::StatusCode::SERVICE_UNAVAILABLE, "internal", "claim interrupted"))
        }
    }
}

#[utoipa::path(post, path = "/api/v1/worker/{id}/executions/{execution}/start", tag = "worker protocol", params(("id" = uuid::Uuid, Path), ("execution" = uuid::Uuid, Path, description = "the execution")), request_body = attune_wire::Start, responses((status = 200, body = attune_core::Execution), (status = 409, description = "Stale lease or invalid transition")))]
pub async fn start(
    state: State,
    caller: Caller,
    Path((_, execution)): Path<(String, String)>,
    Body(s): Body<Start>,
) -> Result<Json<attune_core::Execution>, ApiError> {
    let execution = parse_id("execution", &execution)?;
    check_token(&s.lease_token)?;
    let now = Timestamp::now();
    let e = state
        .store
        .start(execution, caller.holds(&s.lease_token), now, now.plus(state.opts.staleness))
        .await?;
    state.changed(&[(execution, e.status)]).await;
    tracing::debug!(execution_id = %execution, worker = %caller.name, attempt = e.attempt, "execution started");
    Ok(Json(e.masked()))
}

#[utoipa::path(post, path = "/api/v1/worker/{id}/executions/{execution}/complete", tag = "worker protocol", params(("id" = uuid::Uuid, Path), ("execution" = uuid::Uuid, Path, description = "the execution")), request_body = attune_wire::Complete, responses((status = 200, body = attune_core::Execution), (status = 409, description = "Stale lease or invalid transition")))]
pub async fn complete(
    state: State,
    caller: Caller,
    Path((_, execution)): Path<(String, String)>,
    Body(c): Body<Complete>,
) -> Result<Json<attune_core::Execution>, ApiError> {
    let execution = parse_id("execution", &execution)?;
    check_token(&c.lease_token)?;
    let done =
        state.store.complete(execution, caller.holds(&c.lease_token), &c.report, Timestamp::now()).await;
    let e = match done {
        Err(e @ attune_store::StoreError::RefusedReport { .. }) => {
            state.changed(&[(execution, attune_core::ExecutionStatus::Failed)]).await;
            return Err(e.into());
        }
        r => r?,
    };
    state.changed(&[(execution, e.status)]).await;
    tracing::debug!(execution_id = %execution, worker = %caller.name, status = %e.status, "execution finished");
    Ok(Json(e.masked()))
}

/// Output of a running attempt; refused (409) unless this worker holds the current lease.
#[utoipa::path(post, path = "/api/v1/worker/{id}/executions/{execution}/logs", tag = "worker protocol", params(("id" = uuid::Uuid, Path), ("execution" = uuid::Uuid, Path, description = "the execution")), request_body = attune_wire::AppendLogs, responses((status = 200, body = Object), (status = 409, description = "Stale lease")))]
pub async fn append_logs(
    state: State,
    caller: Caller,
    Path((_, execution)): Path<(String, String)>,
    Body(b): Body<attune_wire::AppendLogs>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let execution = parse_id("execution", &execution)?;
    check_token(&b.lease_token)?;
    let mut chunks = b.chunks;
    for c in &mut chunks {
        if c.stream != "stdout" && c.stream != "stderr" {
            return Err(ApiError::unprocessable("invalid_logs", "stream must be stdout or stderr"));
        }
        attune_core::output::decode(&c.text, c.encoding).map_err(|e| {
            ApiError::unprocessable("invalid_logs", format!("a chunk declared base64 is {e}"))
        })?;
        (c.text, c.encoding) = attune_core::output::normalize(std::mem::take(&mut c.text), c.encoding);
    }
    state.store.append_logs(execution, caller.holds(&b.lease_token), &chunks, Timestamp::now()).await?;
    Ok(Json(serde_json::json!({"stored": chunks.len()})))
}

/// The error of one batch item, as a single request would have answered it.
fn item_error(execution_id: Uuid, e: ApiError) -> BatchItemResult {
    BatchItemResult { execution_id, status: None, error: Some(e.detail()) }
}

/// `start` for every task of a poll reply at once.
#[utoipa::path(post, path = "/api/v1/worker/{id}/start-batch", tag = "worker protocol", params(("id" = uuid::Uuid, Path)), request_body = attune_wire::StartBatch, responses((status = 200, body = attune_wire::BatchReply)))]
pub async fn start_batch(
    state: State,
    caller: Caller,
    Body(b): Body<StartBatch>,
) -> Result<Json<BatchReply>, ApiError> {
    if b.leases.len() > MAX_BATCH {
        return Err(ApiError::unprocessable("invalid_batch", format!("at most {MAX_BATCH} items per batch")));
    }
    for l in &b.leases {
        check_token(&l.lease_token)?;
    }
    let now = Timestamp::now();
    let leases: Vec<(Uuid, String)> = b.leases.into_iter().map(|l| (l.execution_id, l.lease_token)).collect();
    let (results, waited) =
        state.store.start_many(&leases, caller.id, now, now.plus(state.opts.staleness)).await?;
    for w in waited {
        state.metrics.submit_to_start.observe(w);
    }
    let changes: Vec<_> = results.iter().filter_map(|(id, r)| r.as_ref().ok().map(|s| (*id, *s))).collect();
    let results = results
        .into_iter()
        .map(|(execution_id, r)| match r {
            Ok(status) => BatchItemResult { execution_id, status: Some(status), error: None },
            Err(e) => item_error(execution_id, ApiError::from(e)),
        })
        .collect();
    state.reported(&changes, &[]).await;
    Ok(Json(BatchReply { results }))
}

/// `complete` for several executions at once; each item is applied (and may fail) on its own.
#[utoipa::path(post, path = "/api/v1/worker/{id}/complete-batch", tag = "worker protocol", params(("id" = uuid::Uuid, Path)), request_body = attune_wire::CompleteBatch, responses((status = 200, body = attune_wire::BatchReply)))]
pub async fn complete_batch(
    state: State,
    caller: Caller,
    Body(b): Body<CompleteBatch>,
) -> Result<Json<BatchReply>, ApiError> {
    if b.reports.len() > MAX_BATCH {
        return Err(ApiError::unprocessable("invalid_batch", format!("at most {MAX_BATCH} items per batch")));
    }
    for r in &b.reports {
        check_token(&r.lease_token)?;
    }
    let items: Vec<_> = b.reports.into_iter().map(|i| (i.execution_id, i.lease_token, i.report)).collect();
    let now = Timestamp::now();
    let mut changes = Vec::new();
    let mut ended_under = Vec::new();
    let mut results = Vec::with_capacity(items.len());
    for (execution_id, r) in state.store.complete_many(&items, caller.id, now).await? {
        results.push(match r {
            Ok(d) => {
                if let Driven::Applied(a) = &d {
                    state.metrics.finished(a, now);
                    changes.push((execution_id, a.status));
                    if a.status.is_terminal() {
                        ended_under.extend(a.parent);
                    }
                    if let Some(why) = &a.refused_report {
                        let e = ApiError::unprocessable(
                            "invalid_report",
                            format!("the report was refused ({why}); the execution failed with this reason"),
                        );
                        results.push(item_error(execution_id, e));
                        continue;
                    }
                }
                BatchItemResult { execution_id, status: Some(d.status()), error: None }
            }
            Err(e) => item_error(execution_id, ApiError::from(e)),
        });
    }
    state.reported(&changes, &ended_under).await;
    Ok(Json(BatchReply { results }))
}

/// The worker gives a task back (it is shutting down and cannot finish it): another attempt if the
/// retry policy allows, `abandoned` otherwise. A stale or foreign lease changes nothing (409).
#[utoipa::path(post, path = "/api/v1/worker/{id}/executions/{execution}/release", tag = "worker protocol", params(("id" = uuid::Uuid, Path), ("execution" = uuid::Uuid, Path, description = "the execution")), request_body = attune_wire::Start, responses((status = 200, body = Object), (status = 409, description = "Stale lease")))]
pub async fn release(
    state: State,
    caller: Caller,
    Path((_, execution)): Path<(String, String)>,
    Body(s): Body<Start>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let execution = parse_id("execution", &execution)?;
    check_token(&s.lease_token)?;
    match state.store.release(execution, caller.holds(&s.lease_token), Timestamp::now()).await? {
        Some(a) => {
            let outcome = match a.status {
                attune_core::ExecutionStatus::Scheduled => "Retried",
                attune_core::ExecutionStatus::Canceled => "Canceled",
                _ => "Abandoned",
            };
            tracing::info!(execution_id = %execution, worker = %caller.name, outcome, "task released");
            state.changed(&[(execution, a.status)]).await;
            Ok(Json(serde_json::json!({"released": true, "outcome": outcome, "status": a.status})))
        }
        None => Err(ApiError::new(
            axum::http::StatusCode::CONFLICT,
            "stale_lease",
            format!("execution {execution}: this lease is not current; nothing to release"),
        )),
    }
}

#[utoipa::path(post, path = "/api/v1/worker/{id}/drain", tag = "worker protocol", params(("id" = uuid::Uuid, Path)), responses((status = 200, body = attune_core::Worker)))]
pub async fn drain(state: State, caller: Caller) -> Result<Json<Worker>, ApiError> {
    let w = state.store.drain_worker(caller.id, Timestamp::now()).await?;
    let sensors = state.store.release_sensors(caller.id).await?;
    tracing::info!(worker = %w.name, sensors_given_back = ?sensors, "worker draining");
    Ok(Json(w))
}

#[utoipa::path(post, path = "/api/v1/worker/{id}/deregister", tag = "worker protocol", params(("id" = uuid::Uuid, Path)), responses((status = 200, body = attune_core::Worker)))]
pub async fn deregister(state: State, caller: Caller) -> Result<Json<Worker>, ApiError> {
    let now = Timestamp::now();
    let w = state.store.deregister_worker(caller.id, now).await?;
    state.store.release_sensors(caller.id).await?;
    state.store.revoke_worker_tokens(caller.id, now).await?;
    state.tokens.clear();
    crate::metrics::Metrics::add(&state.metrics.workers_deregistered, 1);
    tracing::info!(worker = %w.name, "worker deregistered");
    Ok(Json(w))
}

/// A pack version's archive, by digest: what a worker fetches the first time it runs something
/// of that version (and checks against the digest before unpacking it).
#[utoipa::path(get, path = "/api/v1/worker/{id}/packs/{digest}", tag = "worker protocol", params(("id" = Uuid, Path), ("digest" = String, Path, pattern = "^[0-9a-f]{64}$")), responses((status = 200, description = "The archive (gzip-compressed tar)", content_type = "application/gzip", body = Vec<u8>), (status = 404, description = "No such version")))]
pub async fn pack_archive(
    state: State,
    caller: Caller,
    Path((_, digest)): Path<(String, String)>,
) -> Result<axum::response::Response, ApiError> {
    use axum::response::IntoResponse;
    if !attune_pack::archive::is_digest(&digest) {
        return Err(ApiError::bad_request(
            "invalid_digest",
            "a pack digest is 64 lowercase hexadecimal digits (sha256)",
        ));
    }
    let Some((pack, bytes)) = state.store.get_pack_archive(&digest).await? else {
        return Err(ApiError::not_found(
            "unknown_pack_version",
            format!("no pack version {digest} is stored"),
        ));
    };
    tracing::debug!(worker = %caller.name, %pack, %digest, bytes = bytes.len(), "pack archive sent");
    Ok(([(axum::http::header::CONTENT_TYPE, "application/gzip")], bytes).into_response())
}
