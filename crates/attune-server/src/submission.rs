//! The one way a new execution is accepted, whoever submits it: the API, a dead-letter requeue,
//! and (later) rules, timers, webhooks, workflow children and inquiries. `Submissions::submit`
//! finds the action (a short cache), validates the parameters against its JSON Schema (cached
//! validators), applies the core's bounds and defaults (`attune_core::submission::prepare`) and
//! hands the result to the group commit, which inserts whatever accumulated meanwhile with one
//! statement. Nothing here knows HTTP.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use attune_core::{
    action::OnLimit,
    submission::{prepare, Invalid, Origin, Overrides},
    Action, ActionRef, Execution, NewExecution, PackRef, Timestamp,
};
use attune_pack::ParamValidator;
use attune_store::{Store, StoreError};
use serde_json::Value;
use uuid::Uuid;

use crate::group::{Batches, GroupCommit};

/// How long a submission may use an action definition read earlier. A pack loaded through this
/// server is seen at once; one loaded through another replica within this long.
pub const ACTION_CACHE_TTL: Duration = Duration::from_secs(2);

/// Most executions inserted by one statement.
const MAX_BATCH: usize = 256;

/// Which action a submission runs.
#[derive(Debug, Clone)]
pub(crate) enum ActionSource {
    /// The action as loaded now.
    Ref(ActionRef),
    /// A definition snapshotted earlier (a requeued dead letter runs what its execution ran).
    Snapshot(Box<Action>),
}

/// A request for a new execution, from any source.
#[derive(Debug, Clone)]
pub(crate) struct Request {
    pub action: ActionSource,
    pub parameters: Value,
    pub overrides: Overrides,
    pub origin: Origin,
}

#[derive(Debug, thiserror::Error)]
pub(crate) enum SubmitError {
    #[error("unknown action {0}; `attune action list` shows the loaded actions")]
    UnknownAction(ActionRef),
    #[error("action {action}: its parameter schema {message}")]
    BrokenAction { action: ActionRef, message: String },
    #[error("parameters do not match the schema of {action} ({} problem(s))", .details.len())]
    Parameters { action: ActionRef, details: Vec<String> },
    #[error(transparent)]
    Invalid(#[from] Invalid),
    #[error(transparent)]
    Store(Arc<StoreError>),
    #[error("the server is shutting down")]
    ShuttingDown,
}

impl From<StoreError> for SubmitError {
    fn from(e: StoreError) -> Self {
        SubmitError::Store(Arc::new(e))
    }
}

/// A policy's key for `new`: `<action>/<key template rendered over the parameters>`.
fn policy_key(new: &NewExecution, policy: &str, template: Option<&str>) -> Result<String, SubmitError> {
    let key = match template {
        None => String::new(),
        Some(k) => {
            let ctx = serde_json::json!({ "parameters": new.parameters });
            match attune_template::render_over(&Value::String(k.to_owned()), &format!("{policy}.key"), &ctx) {
                Ok(Value::String(s)) => s,
                Ok(other) => other.to_string(),
                Err(e) => {
                    return Err(SubmitError::Parameters {
                        action: new.action.action_ref.clone(),
                        details: vec![format!(
                            "the action's {policy} key {k:?} cannot be rendered with these parameters: {}",
                            e.message
                        )],
                    })
                }
            }
        }
    };
    Ok(format!("{}/{key}", new.action.action_ref))
}

/// A batch's failure is every submission's failure: shared, not copied.
type Inserted = Result<Execution, Arc<StoreError>>;
type Commit = GroupCommit<NewExecution, Inserted>;

pub(crate) struct Submissions {
    store: Arc<Store>,
    commits: Commit,
    validators: Mutex<HashMap<ActionRef, (Value, Arc<ParamValidator>)>>,
    actions: Mutex<HashMap<ActionRef, (Instant, Action)>>,
    /// Set once an execution under a concurrency limit was accepted here: from then on an
    /// execution that ends may free a slot, and waiting workers are woken for it.
    pub(crate) limits_in_use: std::sync::atomic::AtomicBool,
    /// Set once a workflow or an inquiry was seen: from then on status changes wake the engine.
    pub(crate) server_run_in_use: std::sync::atomic::AtomicBool,
}

/// An inquiry's `timeout` parameter is its execution's timeout (how long it may stay pending),
/// unless the submission gave one.
fn inquiry_timeout(new: &mut NewExecution) {
    if new.action.runtime == attune_core::Runtime::Inquiry && new.timeout_seconds.is_none() {
        new.timeout_seconds = new.parameters.get("timeout").and_then(Value::as_u64).filter(|t| *t > 0);
    }
}

pub(crate) type Inserts = Batches<NewExecution, Inserted>;

impl Submissions {
    pub(crate) fn new(store: Arc<Store>) -> (Submissions, Inserts) {
        let (commits, batches) = GroupCommit::new(MAX_BATCH);
        let s = Submissions {
            store,
            commits,
            validators: Mutex::new(HashMap::new()),
            actions: Mutex::new(HashMap::new()),
            limits_in_use: std::sync::atomic::AtomicBool::new(false),
            server_run_in_use: std::sync::atomic::AtomicBool::new(false),
        };
        (s, batches)
    }

    /// Validates and accepts one execution.
    pub(crate) async fn submit(&self, req: Request) -> Result<Execution, SubmitError> {
        let new = self.prepare(req).await?;
        if new.action.runtime.server_side() {
            self.server_run_in_use.store(true, std::sync::atomic::Ordering::Relaxed);
        }
        let limited = new.concurrency.clone().zip(new.action.concurrency.as_ref().map(|c| c.on_limit));
        if limited.is_some() {
            self.limits_in_use.store(true, std::sync::atomic::Ordering::Relaxed);
        }
        let e =
            self.commits.submit(new).await.ok_or(SubmitError::ShuttingDown)?.map_err(SubmitError::Store)?;
        match limited {
            Some(((key, limit), on)) if on != OnLimit::Queue => self.on_limit(e, &key, limit, on).await,
            _ => Ok(e),
        }
    }

    /// `on_limit: cancel_new | cancel_oldest` once `e` is accepted: when its key has more open
    /// executions than the limit, the new one or the oldest other one is canceled.
    async fn on_limit(
        &self,
        e: Execution,
        key: &str,
        limit: u32,
        on: OnLimit,
    ) -> Result<Execution, SubmitError> {
        let open = self.store.open_with_concurrency_key(key).await?;
        if open.len() <= limit as usize {
            return Ok(e);
        }
        let now = attune_core::Timestamp::now();
        match on {
            OnLimit::CancelNew => {
                let actor = format!("concurrency limit {limit} of {key} (on_limit: cancel_new)");
                Ok(self.store.cancel_execution(e.id, &actor, now).await?)
            }
            _ => {
                if let Some(oldest) = open.into_iter().find(|id| *id != e.id) {
                    let actor = format!("concurrency limit {limit} of {key} (on_limit: cancel_oldest)");
                    match self.store.cancel_execution(oldest, &actor, now).await {
                        Ok(_) => {
                            tracing::info!(canceled = %oldest, new = %e.id, key, "oldest execution canceled for a new one")
                        }
                        // It ended meanwhile: its slot is free anyway.
                        Err(StoreError::Transition { .. }) => {}
                        Err(err) => return Err(err.into()),
                    }
                }
                Ok(e)
            }
        }
    }

    /// Everything but the insert: the action, the parameters against its schema, the bounds.
    pub(crate) async fn prepare(&self, req: Request) -> Result<NewExecution, SubmitError> {
        let action = match req.action {
            ActionSource::Ref(r) => self.action(&r).await?.ok_or(SubmitError::UnknownAction(r))?,
            ActionSource::Snapshot(a) => *a,
        };
        if req.parameters.is_object() {
            // Templates (`{{ key('name') }}`) are checked and validated as they will render; the
            // execution keeps them as written, and they are rendered when a worker is handed it.
            let as_rendered = crate::keys::check_templates(&self.store, &action, &req.parameters)
                .await
                .map_err(|details| SubmitError::Parameters { action: action.action_ref.clone(), details })?;
            if let Err(details) = self.validator(&action)?.validate(&as_rendered) {
                return Err(SubmitError::Parameters { action: action.action_ref, details });
            }
        }
        let mut new = prepare(action, req.parameters, &req.overrides, req.origin)?;
        inquiry_timeout(&mut new);
        if let Some(c) = &new.action.concurrency {
            let key = policy_key(&new, "concurrency", c.key.as_deref())?;
            new.concurrency = Some((key, c.limit));
        }
        if let Some(r) = &new.action.rate_limit {
            let key = policy_key(&new, "rate_limit", r.key.as_deref())?;
            new.rate = Some((key, r.per_second, r.burst()));
        }
        Ok(new)
    }

    /// Requeues a dead letter: a new execution of the same action snapshot with the same
    /// parameters, pointing back with `parent`. The store marks the dead letter in the same
    /// transaction; a second requeue is refused.
    pub(crate) async fn requeue(&self, dead_letter: Uuid, actor: &str) -> Result<Execution, SubmitError> {
        let not_found = || StoreError::NotFound { what: "dead letter", id: dead_letter.to_string() };
        let dl = self.store.get_dead_letter(dead_letter).await?.ok_or_else(not_found)?;
        if let Some(new) = dl.requeued_as {
            return Err(StoreError::AlreadyDone(format!(
                "dead letter {dead_letter} was already requeued as execution {new}"
            ))
            .into());
        }
        let old = self
            .store
            .get_execution(dl.execution_id)
            .await?
            .ok_or_else(|| StoreError::NotFound { what: "execution", id: dl.execution_id.to_string() })?;
        let action = old.action.clone().ok_or_else(|| StoreError::Corrupt {
            table: "executions",
            message: format!("execution {} has no action snapshot", old.id),
        })?;
        self.submit(Request {
            action: ActionSource::Snapshot(Box::new(action)),
            parameters: old.parameters,
            overrides: Overrides {
                timeout_seconds: old.timeout_seconds,
                max_attempts: Some(old.max_attempts),
                // The snapshot keeps its selector and schedule-to-start timeout.
                ..Default::default()
            },
            origin: Origin {
                parent: Some(old.id),
                trace_id: old.trace_id,
                requeue_of: Some(dead_letter),
                ..Origin::actor(actor)
            },
        })
        .await
    }

    /// Forgets what it cached about a pack's actions (it was just loaded).
    pub(crate) fn forget_pack(&self, pack: &PackRef) {
        self.validators.lock().expect("validator cache lock").retain(|r, _| r.pack() != *pack);
        self.actions.lock().expect("action cache lock").retain(|r, _| r.pack() != *pack);
    }

    /// The action, from the cache when it is fresh enough.
    async fn action(&self, r: &ActionRef) -> Result<Option<Action>, StoreError> {
        if let Some((at, a)) = self.actions.lock().expect("action cache lock").get(r) {
            if at.elapsed() < ACTION_CACHE_TTL {
                return Ok(Some(a.clone()));
            }
        }
        let a = self.store.get_action(r).await?;
        let mut cache = self.actions.lock().expect("action cache lock");
        match &a {
            Some(a) => {
                cache.insert(r.clone(), (Instant::now(), a.clone()));
            }
            None => {
                cache.remove(r);
            }
        }
        Ok(a)
    }

    fn validator(&self, action: &Action) -> Result<Arc<ParamValidator>, SubmitError> {
        {
            let cache = self.validators.lock().expect("validator cache lock");
            if let Some((schema, v)) = cache.get(&action.action_ref) {
                if *schema == action.parameters {
                    return Ok(v.clone());
                }
            }
        }
        let v =
            Arc::new(ParamValidator::compile(&action.parameters).map_err(|message| {
                SubmitError::BrokenAction { action: action.action_ref.clone(), message }
            })?);
        self.validators
            .lock()
            .expect("validator cache lock")
            .insert(action.action_ref.clone(), (action.parameters.clone(), v.clone()));
        Ok(v)
    }
}

/// The insert loop: one statement per batch, then wakes whoever waits for work or for these
/// executions. Ends when the server shuts down and nothing is pending.
pub(crate) async fn run(shared: Arc<crate::Shared>, inserts: Inserts) {
    let stop = shared.shutdown.clone();
    inserts
        .run(stop, |news| {
            let shared = shared.clone();
            async move {
                let n = news.len();
                match shared.store.create_executions(news, Timestamp::now()).await {
                    Ok(created) => {
                        let ok: Vec<_> = created.iter().flatten().collect();
                        shared.created(&ok).await;
                        created.into_iter().map(|r| r.map_err(Arc::new)).collect()
                    }
                    Err(e) => {
                        let e = Arc::new(e);
                        (0..n).map(|_| Err(e.clone())).collect()
                    }
                }
            }
        })
        .await;
}
