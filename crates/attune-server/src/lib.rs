//! `attune server`: the HTTP API, the worker protocol, the queue's wake-ups and the monitors.
//! Shape: `ServerOptions` → `Server::build` → `Server::run(listener, shutdown)`.
//! The server holds no execution state of its own: everything it knows is in the `Store`, so any
//! number of replicas can serve the same database and a restart loses nothing.

mod api;
pub mod auth;
mod console;
mod error;
mod group;
pub mod hosts;
mod http;
mod json_guard;
pub mod keys;
mod metrics;
mod monitors;
pub mod packs;
mod pollers;
mod reactor;
mod replicas;
mod submission;
pub mod tls;
mod workflows;

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use attune_core::{config::Settings, ExecutionStatus};
use attune_store::Store;
use tokio::{net::TcpListener, sync::Notify, task::JoinSet};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

pub use error::ApiError;

/// Everything the server needs to know, taken from `Settings`.
#[derive(Debug, Clone)]
pub struct ServerOptions {
    pub heartbeat_interval: Duration,
    /// The staleness rule: a worker, and the leases it holds, expire after this without a heartbeat.
    pub staleness: Duration,
    pub heartbeat_check_interval: Duration,
    pub delivery_timeout: Duration,
    pub scheduled_timeout: Duration,
    pub timeout_check_interval: Duration,
    pub enable_timeout_monitor: bool,
    pub max_poll: Duration,
    /// Longest `…/wait`.
    pub max_wait: Duration,
    /// The transport's limits (`http.rs`).
    pub http: http::Limits,
    /// Each captured stream's cap, announced to workers.
    pub max_output_bytes: usize,
    /// `GET /metrics` without a token.
    pub metrics_public: bool,
    /// `server.allowed_hosts`: more names the `Host` header may give (`hosts.rs`).
    pub allowed_hosts: Vec<String>,
    /// The pack directories (`packs.dirs`): the only places a client may ask a pack to be loaded from.
    pub pack_dirs: Vec<std::path::PathBuf>,
    /// What a pack archive may weigh (`packs.max_archive_bytes`).
    pub pack_limits: attune_pack::archive::Limits,
    /// The key store's master key file (`keys.rs`); created on first start.
    pub master_key_file: std::path::PathBuf,
    /// HTTPS (`server.tls`); `None` serves plain HTTP. Loaded by `Tls::load` before binding.
    pub tls: Option<tls::Tls>,
    /// How often a waiting poll or `…/wait` looks again without being woken (catches changes made
    /// by another replica whose notification was lost). Tests set it long to prove the wake-ups.
    pub recheck: Duration,
}

impl ServerOptions {
    /// `from_settings`, with the files it names read: the TLS certificate and key.
    pub fn load(s: &Settings) -> anyhow::Result<Self> {
        let mut opts = Self::from_settings(s);
        if let Some(t) = &s.server.tls {
            opts.tls = Some(tls::Tls::load(&t.cert_file, &t.key_file)?);
        }
        Ok(opts)
    }

    /// The options `s` gives, without reading any file (`tls` stays `None`; see `load`).
    pub fn from_settings(s: &Settings) -> Self {
        ServerOptions {
            heartbeat_interval: s.worker.heartbeat_interval,
            staleness: s.staleness(),
            heartbeat_check_interval: s.executor.heartbeat_check_interval,
            delivery_timeout: s.executor.delivery_timeout,
            scheduled_timeout: s.executor.scheduled_timeout,
            timeout_check_interval: s.executor.timeout_check_interval,
            enable_timeout_monitor: s.executor.enable_timeout_monitor,
            max_poll: s.server.max_poll,
            max_wait: s.server.max_wait,
            http: http::Limits {
                max_connections: s.server.max_connections,
                header_timeout: s.server.header_timeout,
                body_timeout: s.server.body_timeout,
                max_body_bytes: s.server.max_body_bytes,
                max_worker_request_bytes: s.max_worker_request_bytes(),
            },
            max_output_bytes: s.worker.max_output_bytes,
            metrics_public: s.server.metrics_public,
            allowed_hosts: s.server.allowed_hosts.clone(),
            pack_dirs: s.packs.dirs.clone(),
            pack_limits: crate::packs::limits(s.packs.max_archive_bytes),
            master_key_file: s.master_key_file(),
            tls: None,
            recheck: Duration::from_secs(1),
        }
    }
}

/// State shared by the handlers and the monitors.
pub(crate) struct Shared {
    pub store: Arc<Store>,
    pub opts: ServerOptions,
    /// Woken whenever a task may have become available (submit, retry, delivery expiry).
    pub work_available: Notify,
    /// The polls parked on this replica, so that the least-loaded worker claims first.
    pub pollers: pollers::Pollers,
    /// Woken when events were stored (`reactor::run`).
    pub events_ready: Notify,
    /// Wakes the workflow engine when a workflow or inquiry may have something to do
    /// (`workflows::run`).
    pub engine: workflows::Wake,
    /// The one way new executions are accepted.
    pub submissions: submission::Submissions,
    /// Tokens recently read from the store.
    pub tokens: auth::TokenCache,
    /// The key store's master keys (read at `run`; replaced by a rotation).
    pub keyring: std::sync::RwLock<keys::Keyring>,
    /// Held while a secret is sealed and stored, and through a master key rotation, so that no
    /// value is sealed under a key the rotation is about to drop.
    pub key_writes: tokio::sync::Mutex<()>,
    /// Every status change this server made, for waiters (`GET …/wait`) in this process.
    pub changes: tokio::sync::broadcast::Sender<Uuid>,
    pub metrics: metrics::Metrics,
    /// Changes to announce to the other replicas: (ids, whether work was queued).
    pub notices: tokio::sync::mpsc::UnboundedSender<(Vec<Uuid>, bool)>,
    /// Monitors judge workers and leases only after this instant.
    pub judge_after: Mutex<tokio::time::Instant>,
    pub shutdown: CancellationToken,
}

impl Shared {
    /// Status changes made by this server: wakes local waiters and polls, and (on PostgreSQL) tells
    /// the other replicas. A failed notification only costs the others their one-second re-check.
    pub(crate) async fn changed(&self, changes: &[(Uuid, ExecutionStatus)]) {
        self.announce(changes, self.may_free_work(changes), None).await;
    }

    /// Whether the changes may let a worker claim something: a task is waiting now (submitted,
    /// retried), or a concurrency slot may have been freed.
    fn may_free_work(&self, changes: &[(Uuid, ExecutionStatus)]) -> bool {
        let limits = self.submissions.limits_in_use.load(std::sync::atomic::Ordering::Relaxed);
        changes.iter().any(|(_, s)| *s == ExecutionStatus::Scheduled || (limits && s.is_terminal()))
    }

    /// As `changed`, for workers' starts and reports. Only the ends of workflows' task runs
    /// concern the engine, and it is woken to step those workflows (`ended_under`) without
    /// asking the store what is due.
    pub(crate) async fn reported(&self, changes: &[(Uuid, ExecutionStatus)], ended_under: &[Uuid]) {
        self.announce(changes, self.may_free_work(changes), Some(ended_under)).await;
    }

    /// As `changed`, for executions just created. One the server runs (a workflow, an inquiry)
    /// wakes the engine but not the workers' polls, which could not take it: on SQLite each
    /// such poll's claim is a write that the engine's next step would queue behind.
    ///
    /// A created workflow wakes the engine to start that workflow; only an inquiry has it ask the
    /// store what is due.
    pub(crate) async fn created(&self, created: &[&attune_core::Execution]) {
        let changes: Vec<_> = created.iter().map(|e| (e.id, e.status)).collect();
        let runtime = |e: &attune_core::Execution| e.action.as_ref().map(|a| a.runtime);
        let work = created
            .iter()
            .any(|e| e.status == ExecutionStatus::Scheduled && !runtime(e).is_some_and(|r| r.server_side()));
        if created.iter().any(|e| runtime(e) == Some(attune_core::Runtime::Inquiry)) {
            return self.announce(&changes, work, None).await;
        }
        let workflows: Vec<Uuid> = created
            .iter()
            .filter(|e| {
                runtime(e) == Some(attune_core::Runtime::Workflow) && e.status == ExecutionStatus::Scheduled
            })
            .map(|e| e.id)
            .collect();
        self.announce(&changes, work, Some(&workflows)).await;
    }

    /// `workflows`: the workflows to wake the engine for, or `None` for a wake-up that asks the
    /// store what is due.
    async fn announce(&self, changes: &[(Uuid, ExecutionStatus)], work: bool, workflows: Option<&[Uuid]>) {
        if changes.is_empty() {
            return;
        }
        for (id, _) in changes {
            // No receivers is fine: nobody is waiting.
            let _ = self.changes.send(*id);
        }
        if work {
            self.work_available.notify_waiters();
        }
        if self.submissions.server_run_in_use.load(std::sync::atomic::Ordering::Relaxed) {
            match workflows {
                None => self.engine.any(),
                Some(ids) => self.engine.workflows(ids),
            }
        }
        if self.store.kind() == attune_store::BackendKind::Postgres {
            // Sent by `replicas::notify`, off the request's path.
            let _ = self.notices.send((changes.iter().map(|(id, _)| *id).collect(), work));
        }
    }

    /// Whether the monitors may judge workers and leases now (see `monitors`).
    pub(crate) fn may_judge(&self) -> bool {
        tokio::time::Instant::now() >= *self.judge_after.lock().expect("judge lock")
    }

    /// No judging for one staleness window from now: workers need a heartbeat to show they are
    /// alive after the server (or its database) was away.
    pub(crate) fn hold_judgement(&self) {
        *self.judge_after.lock().expect("judge lock") = tokio::time::Instant::now() + self.opts.staleness;
    }
}

pub struct Server {
    shared: Arc<Shared>,
    inserts: submission::Inserts,
    notices: tokio::sync::mpsc::UnboundedReceiver<(Vec<Uuid>, bool)>,
}

impl Server {
    pub fn build(opts: ServerOptions, store: Arc<Store>) -> Server {
        let (submissions, inserts) = submission::Submissions::new(store.clone());
        let judge_after = tokio::time::Instant::now() + opts.staleness;
        let (notices, notices_rx) = tokio::sync::mpsc::unbounded_channel();
        Server {
            inserts,
            notices: notices_rx,
            shared: Arc::new(Shared {
                submissions,
                store,
                opts,
                work_available: Notify::new(),
                pollers: Default::default(),
                events_ready: Notify::new(),
                engine: Default::default(),
                tokens: auth::TokenCache::default(),
                keyring: Default::default(),
                key_writes: Default::default(),
                changes: tokio::sync::broadcast::channel(4096).0,
                judge_after: Mutex::new(judge_after),
                metrics: metrics::Metrics::default(),
                notices,
                shutdown: CancellationToken::new(),
            }),
        }
    }

    /// Serves until `shutdown` is cancelled, then stops the monitors, answers waiting polls with no
    /// work, and returns once every task it started has ended.
    pub async fn run(self, listener: TcpListener, shutdown: CancellationToken) -> anyhow::Result<()> {
        let shared = self.shared;
        let (ring, created) = keys::Keyring::load_or_create(&shared.opts.master_key_file)?;
        if created {
            tracing::info!(file = %shared.opts.master_key_file.display(), "created the key store's master key");
        }
        *shared.keyring.write().unwrap_or_else(|e| e.into_inner()) = ring;
        let mut tasks = JoinSet::new();
        tasks.spawn(monitors::run(shared.clone()));
        tasks.spawn(submission::run(shared.clone(), self.inserts));
        tasks.spawn(replicas::listen(shared.clone()));
        tasks.spawn(replicas::notify(shared.clone(), self.notices));
        tasks.spawn(reactor::run(shared.clone()));
        tasks.spawn(reactor::timers(shared.clone()));
        tasks.spawn(workflows::run(shared.clone()));
        let stop = shared.shutdown.clone();
        let forward = shutdown.clone();
        tasks.spawn(async move {
            forward.cancelled().await;
            stop.cancel();
        });
        let hosts = hosts::AllowedHosts::new(&shared.opts.allowed_hosts, listener.local_addr()?);
        let app = api::router(shared.clone())
            .layer(axum::middleware::from_fn_with_state(std::sync::Arc::new(hosts), hosts::check));
        http::serve(shared.clone(), listener, app).await;
        shared.shutdown.cancel();
        shutdown.cancel();
        while let Some(r) = tasks.join_next().await {
            if let Err(e) = r {
                tracing::error!(error = %e, "server task failed");
            }
        }
        Ok(())
    }
}
