//! The agent: one registration, one heartbeat loop, one poll loop, and a task per execution.
//!
//! Shutdown (SIGTERM/SIGINT, or `shutdown` cancelled): stop polling, tell the server we are draining
//! (`inactive` at once: nothing new is handed to us), keep heartbeating so our leases stay valid,
//! wait up to `shutdown_timeout` for the tasks in flight (counted exactly), then stop what is left
//! and report it, deregister, return.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use attune_client::{Client, ClientError};
use attune_core::{ExecutionStatus, Lease, LeaseState, Runtime, Task};
use attune_wire::{CompleteItem, RegisterWorker};
use tokio::{sync::Notify, task::JoinSet};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::{
    report,
    runtime::{self, RunContext},
};

#[derive(Debug, Clone)]
pub struct WorkerOptions {
    /// Server URLs; the first is preferred, the others are failed over to (any replica will do:
    /// leases live in the database).
    pub servers: Vec<String>,
    pub name: String,
    pub concurrency: u32,
    pub runtimes: Vec<Runtime>,
    pub shutdown_timeout: Duration,
    pub max_output: usize,
    pub kill_grace: Duration,
    pub labels: serde_json::Value,
    pub scratch_dir: std::path::PathBuf,
    /// Where pack versions fetched from the server are kept (`<data_dir>/packs`).
    pub pack_cache: std::path::PathBuf,
    /// The enrollment token (role `worker`) it registers with; the server then issues it a
    /// credential of its own for everything else.
    pub enroll_token: Option<String>,
    /// Certificates trusted for `https://` servers besides the system's (`--ca-file`).
    pub trust: attune_client::Trust,
}

struct InFlight {
    token: String,
    /// Stops the action (cancel requested, lease lost, or shutdown).
    stop: CancellationToken,
    /// Set when the lease is lost: the outcome must not be reported.
    revoked: bool,
    /// Set when the server asked us to cancel (as opposed to our own shutdown stopping it).
    cancel_requested: bool,
}

/// A finished task's report on its way to the reporter, and where to say how it went.
pub(crate) type Outgoing = (CompleteItem, tokio::sync::oneshot::Sender<Result<ExecutionStatus, String>>);

pub(crate) struct Shared {
    pub(crate) clients: Vec<Client>,
    /// Index of the server in use.
    current: std::sync::atomic::AtomicUsize,
    /// `max_output` is the smaller of the worker's own cap and the server's (registration).
    pub(crate) opts: WorkerOptions,
    pub(crate) id: Uuid,
    in_flight: Mutex<HashMap<Uuid, InFlight>>,
    slot_freed: Notify,
    /// Reports go through one reporter that sends whatever has accumulated as one batch.
    pub(crate) reports: tokio::sync::mpsc::UnboundedSender<Outgoing>,
    /// Largest request the server takes (registration); reports and live output are sent in
    /// requests that fit.
    pub(crate) max_request: usize,
    /// The sensors this worker runs, by ref.
    pub(crate) sensors: Mutex<HashMap<String, crate::sensors::Running>>,
    /// Set when shutdown begins: no sensor is started any more.
    pub(crate) draining: std::sync::atomic::AtomicBool,
    /// Sends a heartbeat now rather than at the next tick (a sensor may be started again).
    pub(crate) heartbeat_now: Notify,
    /// The pack versions on this worker.
    pub(crate) packs: Arc<crate::packs::PackCache>,
}

pub struct Agent {
    opts: WorkerOptions,
    clients: Vec<Client>,
}

impl Shared {
    pub(crate) fn client(&self) -> &Client {
        &self.clients[self.server()]
    }

    /// Pack versions, fetched through the server in use.
    pub(crate) fn pack_source(&self) -> crate::packs::PackSource {
        crate::packs::PackSource { cache: self.packs.clone(), client: self.client().clone(), worker: self.id }
    }

    /// Index of the server in use.
    pub(crate) fn server(&self) -> usize {
        self.current.load(std::sync::atomic::Ordering::Relaxed) % self.clients.len()
    }

    /// After a transient failure talking to server `failed`: move on to the next server, unless
    /// another loop (poll, heartbeat, reporter) already moved away from it.
    pub(crate) fn fail_over(&self, failed: usize) {
        use std::sync::atomic::Ordering::Relaxed;
        if self.clients.len() < 2 {
            return;
        }
        let next = (failed + 1) % self.clients.len();
        if self.current.compare_exchange(failed, next, Relaxed, Relaxed).is_ok() {
            tracing::warn!(server = %self.clients[next].base_url(), "failing over to the next server");
        }
    }
}

impl Agent {
    pub fn build(opts: WorkerOptions) -> Agent {
        let clients = opts
            .servers
            .iter()
            .map(|s| Client::with_trust(s, &opts.trust).with_token(opts.enroll_token.clone()))
            .collect();
        Agent { opts, clients }
    }

    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        anyhow::ensure!(!self.clients.is_empty(), "no server URL given");
        let Some((reg, current)) = register(&self.clients, &self.opts, &shutdown).await? else {
            return Ok(()); // shut down before a server answered
        };
        let heartbeat_every = Duration::from_millis(reg.heartbeat_interval_ms.max(100));
        let max_poll = Duration::from_millis(reg.max_poll_ms.max(1000));
        let (reports, outgoing) = tokio::sync::mpsc::unbounded_channel();
        let mut opts = self.opts;
        if reg.max_output_bytes > 0 {
            // The server's cap counts: what it sizes its request limit by.
            opts.max_output = opts.max_output.min(reg.max_output_bytes as usize);
        }
        // From here on, the worker speaks with its own credential.
        let clients = self.clients.into_iter().map(|c| c.with_token(Some(reg.credential.clone()))).collect();
        let packs = crate::packs::PackCache::new(opts.pack_cache.clone());
        let shared = Arc::new(Shared {
            packs,
            clients,
            current: std::sync::atomic::AtomicUsize::new(current),
            opts,
            id: reg.worker.id,
            in_flight: Mutex::new(HashMap::new()),
            slot_freed: Notify::new(),
            reports,
            max_request: if reg.max_request_bytes > 0 {
                reg.max_request_bytes as usize
            } else {
                2 * 1024 * 1024
            },
            sensors: Mutex::new(HashMap::new()),
            draining: std::sync::atomic::AtomicBool::new(false),
            heartbeat_now: Notify::new(),
        });
        let stop_reporter = CancellationToken::new();
        let reporter = tokio::spawn(report::reporter_loop(shared.clone(), outgoing, stop_reporter.clone()));
        tracing::info!(
            worker = %shared.opts.name, id = %shared.id, server = %shared.client().base_url(),
            runtimes = ?shared.opts.runtimes, concurrency = shared.opts.concurrency,
            heartbeat = ?heartbeat_every, "worker registered"
        );

        let stop_heartbeat = CancellationToken::new();
        let heartbeat = tokio::spawn(heartbeat_loop(shared.clone(), heartbeat_every, stop_heartbeat.clone()));
        let mut tasks = JoinSet::new();
        poll_loop(&shared, &mut tasks, max_poll, &shutdown).await;

        // Draining. Sensors stop first, so that the server hands them to another worker as soon
        // as it hears we drain.
        crate::sensors::stop_all(&shared).await;
        let n = shared.in_flight.lock().expect("in-flight lock").len();
        tracing::info!(in_flight = n, timeout = ?shared.opts.shutdown_timeout, "shutting down: draining");
        if let Err(e) = shared.client().drain(shared.id).await {
            tracing::warn!(error = %e, "could not tell the server we are draining");
        }
        let drained = tokio::time::timeout(shared.opts.shutdown_timeout, async {
            while tasks.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            let left: Vec<Uuid> = shared.in_flight.lock().expect("in-flight lock").keys().copied().collect();
            tracing::warn!(count = left.len(), executions = ?left, "shutdown timeout reached; stopping what is left");
            for f in shared.in_flight.lock().expect("in-flight lock").values() {
                f.stop.cancel();
            }
            while tasks.join_next().await.is_some() {}
        }
        // Every task has ended and had its report acknowledged (or given up on).
        stop_reporter.cancel();
        let _ = reporter.await;
        stop_heartbeat.cancel();
        let _ = heartbeat.await;
        if let Err(e) = shared.client().deregister(shared.id).await {
            tracing::warn!(error = %e, "could not deregister");
        }
        tracing::info!(worker = %shared.opts.name, "worker stopped");
        Ok(())
    }
}

/// Registers with the first server that answers, trying them in turn with backoff; returns the
/// registration and the index of that server. A refusal (a bad enrollment token, say) is final.
async fn register(
    clients: &[Client],
    opts: &WorkerOptions,
    shutdown: &CancellationToken,
) -> anyhow::Result<Option<(attune_wire::Registered, usize)>> {
    let req = RegisterWorker {
        name: opts.name.clone(),
        host: hostname(),
        runtimes: opts.runtimes.clone(),
        labels: opts.labels.clone(),
        concurrency: opts.concurrency,
        version: env!("CARGO_PKG_VERSION").into(),
    };
    let mut backoff = Duration::from_millis(200);
    let mut i = 0;
    loop {
        let client = &clients[i % clients.len()];
        i += 1;
        match client.register(&req).await {
            Ok(r) => return Ok(Some((r, (i - 1) % clients.len()))),
            Err(e) if e.is_transient() => {
                tracing::warn!(error = %e, retry_in = ?backoff, "cannot register yet");
            }
            Err(e) => {
                let hint = match e.status() {
                    Some(401 | 403) => {
                        "; set worker.token (ATTUNE__WORKER__TOKEN) to an enrollment token (role worker)"
                    }
                    _ => "",
                };
                return Err(anyhow::anyhow!("the server refused to register this worker: {e}{hint}"));
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(None),
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(Duration::from_secs(10));
    }
}

pub(crate) fn hostname() -> String {
    nix::unistd::gethostname().ok().and_then(|h| h.into_string().ok()).unwrap_or_else(|| "localhost".into())
}

async fn poll_loop(
    shared: &Arc<Shared>,
    tasks: &mut JoinSet<()>,
    max_poll: Duration,
    shutdown: &CancellationToken,
) {
    let mut backoff = Duration::from_millis(100);
    loop {
        // Reap finished tasks.
        while tasks.try_join_next().is_some() {}
        let free = shared.opts.concurrency.saturating_sub(tasks.len() as u32);
        if free == 0 {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                _ = shared.slot_freed.notified() => continue,
                _ = tasks.join_next() => continue,
            }
        }
        let server = shared.server();
        let polled = tokio::select! {
            _ = shutdown.cancelled() => return,
            r = shared.clients[server].poll(shared.id, free, max_poll) => r,
        };
        match polled {
            Ok(reply) => {
                backoff = Duration::from_millis(100);
                for task in start_all(shared, reply.tasks).await {
                    let s = shared.clone();
                    tasks.spawn(run_task(s, task));
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, retry_in = ?backoff, "poll failed");
                if e.is_transient() {
                    shared.fail_over(server);
                }
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
}

/// Confirms every task of a poll reply with one request; returns those that may run. A task that
/// cannot start (canceled or re-delivered meanwhile) is dropped; one whose confirmation was lost
/// goes back to the queue when its delivery times out.
async fn start_all(shared: &Shared, tasks: Vec<Task>) -> Vec<Task> {
    if tasks.is_empty() {
        return tasks;
    }
    let leases: Vec<Lease> = tasks
        .iter()
        .map(|t| Lease { execution_id: t.execution_id, lease_token: t.lease_token.clone() })
        .collect();
    // Starting is idempotent for the same lease token, so a confirmation whose answer was lost (the
    // server died after committing it) is simply sent again, to whichever server is up.
    let mut backoff = Duration::from_millis(50);
    let mut reply = None;
    for _ in 0..8 {
        let server = shared.server();
        match shared.clients[server].start_batch(shared.id, leases.clone()).await {
            Ok(r) => {
                reply = Some(r);
                break;
            }
            Err(e) if e.is_transient() => {
                tracing::warn!(error = %e, count = leases.len(), "could not confirm tasks; retrying");
                shared.fail_over(server);
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(1));
            }
            Err(e) => {
                tracing::warn!(error = %e, count = leases.len(), "tasks refused; they will be redelivered");
                break;
            }
        }
    }
    let Some(reply) = reply else { return Vec::new() };
    let ok: std::collections::HashSet<Uuid> =
        reply.results.iter().filter(|r| r.status.is_some()).map(|r| r.execution_id).collect();
    for r in reply.results.iter().filter(|r| r.status.is_none()) {
        tracing::info!(execution_id = %r.execution_id, error = ?r.error, "not starting");
    }
    tasks.into_iter().filter(|t| ok.contains(&t.execution_id)).collect()
}

async fn run_task(shared: Arc<Shared>, task: Task) {
    let id = task.execution_id;
    let stop = CancellationToken::new();
    shared.in_flight.lock().expect("in-flight lock").insert(
        id,
        InFlight {
            token: task.lease_token.clone(),
            stop: stop.clone(),
            revoked: false,
            cancel_requested: false,
        },
    );
    run_task_inner(&shared, &task, stop).await;
    shared.in_flight.lock().expect("in-flight lock").remove(&id);
    shared.slot_freed.notify_one();
}

async fn run_task_inner(shared: &Shared, task: &Task, stop: CancellationToken) {
    let id = task.execution_id;
    tracing::debug!(execution_id = %id, action = %task.action.action_ref, attempt = task.attempt, "running");
    let (tap, output) = tokio::sync::mpsc::unbounded_channel();
    let ctx = RunContext {
        api_url: shared.client().base_url().to_owned(),
        max_output: shared.opts.max_output,
        kill_grace: shared.opts.kill_grace,
        scratch_dir: shared.opts.scratch_dir.clone(),
        tap: Some(tap),
        packs: Some(shared.pack_source()),
    };
    let forwarder = report::forward_output(shared, task, output);
    let (report, ()) = tokio::join!(
        async {
            let r = runtime::execute(task, &ctx, stop.clone()).await;
            drop(ctx); // closes the tap, so the forwarder flushes and ends
            r
        },
        forwarder
    );
    let revoked =
        shared.in_flight.lock().expect("in-flight lock").get(&id).map(|f| f.revoked).unwrap_or(false);
    if revoked {
        tracing::warn!(execution_id = %id, "lease lost while running; outcome not reported");
        return;
    }
    if report.status == ExecutionStatus::Canceled && stop.is_cancelled() && !cancel_requested(shared, id) {
        // Stopped by our own shutdown, not by a cancel request: give it back so that the server
        // retries it elsewhere (or abandons it when no attempts are left).
        match shared.client().release(shared.id, id, &task.lease_token).await {
            Ok(r) => tracing::warn!(execution_id = %id, outcome = %r["outcome"], "released unfinished task"),
            Err(e) => {
                tracing::warn!(execution_id = %id, error = %e, "could not release; its lease will expire")
            }
        }
        return;
    }
    report::report_outcome(shared, task, report).await;
}

fn cancel_requested(shared: &Shared, id: Uuid) -> bool {
    shared.in_flight.lock().expect("in-flight lock").get(&id).map(|f| f.cancel_requested).unwrap_or(false)
}

async fn heartbeat_loop(shared: Arc<Shared>, every: Duration, stop: CancellationToken) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
            _ = shared.heartbeat_now.notified() => {}
        }
        let leases: Vec<Lease> = shared
            .in_flight
            .lock()
            .expect("in-flight lock")
            .iter()
            .map(|(id, f)| Lease { execution_id: *id, lease_token: f.token.clone() })
            .collect();
        let server = shared.server();
        let hb = attune_wire::Heartbeat { leases, sensors: crate::sensors::leases(&shared) };
        match shared.clients[server].heartbeat_with(shared.id, hb).await {
            Ok(reply) => {
                for s in reply.sensors.iter().filter(|s| !s.held) {
                    crate::sensors::revoke(&shared, &s.sensor_ref);
                }
                if reply.status == attune_core::WorkerStatus::Active {
                    for t in reply.start_sensors {
                        crate::sensors::start(&shared, t);
                    }
                }
                let mut map = shared.in_flight.lock().expect("in-flight lock");
                for l in reply.leases {
                    let Some(f) = map.get_mut(&l.execution_id) else { continue };
                    match l.state {
                        LeaseState::Held => {}
                        LeaseState::Cancel => {
                            f.cancel_requested = true;
                            if !f.stop.is_cancelled() {
                                tracing::info!(execution_id = %l.execution_id, "cancel requested; stopping");
                                f.stop.cancel();
                            }
                        }
                        LeaseState::Revoked => {
                            tracing::warn!(execution_id = %l.execution_id, "lease revoked; stopping");
                            f.revoked = true;
                            f.stop.cancel();
                        }
                    }
                }
            }
            Err(ClientError::Api { status: 404, .. }) => {
                tracing::error!("the server does not know this worker any more; stopping all tasks");
                for r in shared.sensors.lock().expect("sensors lock").keys().cloned().collect::<Vec<_>>() {
                    crate::sensors::revoke(&shared, &r);
                }
                for f in shared.in_flight.lock().expect("in-flight lock").values_mut() {
                    f.revoked = true;
                    f.stop.cancel();
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "heartbeat failed");
                if e.is_transient() {
                    shared.fail_over(server);
                }
            }
        }
    }
}
