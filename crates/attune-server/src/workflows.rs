//! Drives the workflow engine (`attune-workflow`) and inquiries. Every replica runs `run`; all of
//! them may look at the same workflow, and the database lets one step win: a step is written only
//! over the state version it read (`Store::workflow_step`), in one transaction with the children
//! it starts (unique per workflow and `task/iteration[/item]`) and the ends it consumed. So a step
//! is taken once, a crash before its commit repeats it, and none is lost: what is due is found
//! from the data alone (`Store::engine_due`), never from a message that could be dropped.
//!
//! Children go through the submission rules (`Submissions::prepare`: the action, its schema, the
//! bounds); a child whose input does not validate is a failed task run, not a stuck workflow.

use std::{collections::VecDeque, sync::Arc, time::Duration};

use attune_core::{
    lifecycle,
    submission::{Origin, Overrides},
    ActionRef, Execution, ExecutionStatus, Timestamp,
};
use attune_store::{EndedChild, StoreError, WorkflowStep};
use attune_workflow::{Definition, Finish, Input, Outcome, Phase, State, Step};
use serde_json::{json, Value};
use uuid::Uuid;

use crate::{
    submission::{ActionSource, Request},
    Shared,
};

/// How often the engine looks for due work without being woken (another replica's changes, the
/// inquiries' timeouts).
const RECHECK: Duration = Duration::from_millis(500);
/// Most of each kind of due work taken per round.
const ROUND: i64 = 200;
/// Most child ends applied in one step.
const ENDS_PER_STEP: i64 = 500;

#[derive(Debug, thiserror::Error)]
pub(crate) enum EngineError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{0}")]
    Refused(String),
}

/// How often the repair monitor looks for workflows with nothing running under them, and how
/// long such a workflow must have been quiet to count.
const REPAIR_EVERY: Duration = Duration::from_secs(5);
const QUIET_MS: i64 = 5_000;

/// How the engine is woken: to ask the store what is due (`any`), or to step given workflows,
/// whose task runs ended (`workflows`), without asking. Every `RECHECK` it asks anyway, so a
/// wake-up that is lost or a step that failed costs at most that long.
#[derive(Default)]
pub(crate) struct Wake {
    notify: tokio::sync::Notify,
    any: std::sync::atomic::AtomicBool,
    workflows: std::sync::Mutex<Vec<Uuid>>,
}

impl Wake {
    pub(crate) fn any(&self) {
        self.any.store(true, std::sync::atomic::Ordering::Release);
        self.notify.notify_one();
    }

    pub(crate) fn workflows(&self, ids: &[Uuid]) {
        if ids.is_empty() {
            return;
        }
        self.workflows.lock().unwrap_or_else(|p| p.into_inner()).extend_from_slice(ids);
        self.notify.notify_one();
    }

    /// Whether to ask the store, and the workflows to step (each once).
    fn take(&self) -> (bool, Vec<Uuid>) {
        let any = self.any.swap(false, std::sync::atomic::Ordering::AcqRel);
        let mut ids = std::mem::take(&mut *self.workflows.lock().unwrap_or_else(|p| p.into_inner()));
        ids.sort_unstable();
        ids.dedup();
        (any, ids)
    }
}

pub(crate) async fn run(shared: Arc<Shared>) {
    let mut last_repair = tokio::time::Instant::now();
    // When the store was last asked; a stream of wake-ups for given workflows (a long `with`)
    // must not put off what only asking finds (inquiries' timeouts, other replicas' work).
    let mut last_asked = tokio::time::Instant::now();
    loop {
        if last_repair.elapsed() >= REPAIR_EVERY {
            last_repair = tokio::time::Instant::now();
            if let Err(e) = repair_quiet(&shared).await {
                tracing::warn!(error = %e, "workflow repair monitor failed; retrying shortly");
            }
        }
        let recheck = tokio::select! {
            _ = shared.shutdown.cancelled() => return,
            _ = shared.engine.notify.notified() => false,
            _ = tokio::time::sleep(RECHECK) => true,
        };
        let (any, workflows) = shared.engine.take();
        if !any && !recheck && last_asked.elapsed() < RECHECK {
            // Task runs ended: step their workflows. What else they lead to (a workflow that
            // lost a race, a step that failed) wakes `any`, or waits for the recheck.
            for id in workflows {
                if let Err(e) = advance(&shared, id, None).await {
                    tracing::warn!(workflow = %id, error = %e, "workflow step failed; it is retried");
                    shared.engine.any();
                }
            }
            continue;
        }
        last_asked = tokio::time::Instant::now();
        // Work until a round finds nothing more to do.
        loop {
            if shared.shutdown.is_cancelled() {
                return;
            }
            match round(&shared).await {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "workflow engine round failed; retrying shortly");
                    break;
                }
            }
        }
    }
}

/// One pass over what is due; how many things moved on.
async fn round(shared: &Arc<Shared>) -> Result<usize, EngineError> {
    let now = Timestamp::now();
    let due = shared.store.engine_due(now, ROUND).await?;
    if due == Default::default() {
        return Ok(0);
    }
    shared.submissions.server_run_in_use.store(true, std::sync::atomic::Ordering::Relaxed);
    let mut moved = 0;
    for id in due.start.iter().chain(&due.advance) {
        match advance(shared, *id, None).await {
            Ok(true) => moved += 1,
            Ok(false) => {}
            Err(e) => tracing::warn!(workflow = %id, error = %e, "workflow step failed; it is retried"),
        }
    }
    let opened = drive(shared, &due.open, |s| lifecycle::inquiry_open(s, now)).await?;
    moved += opened;
    for (id, t) in &due.expired {
        moved += drive(shared, &[*id], |s| lifecycle::inquiry_timeout(s, *t, now)).await?;
    }
    Ok(moved)
}

/// Drives `decide` over `ids`, announces what changed; how many changed.
async fn drive(
    shared: &Shared,
    ids: &[Uuid],
    decide: impl Fn(&lifecycle::Stored) -> lifecycle::Decision,
) -> Result<usize, EngineError> {
    if ids.is_empty() {
        return Ok(0);
    }
    let driven = shared.store.drive(ids, decide).await?;
    let changes: Vec<_> = driven
        .iter()
        .filter_map(|(id, r)| match r {
            Ok(attune_store::Driven::Applied(a)) => Some((*id, a.status)),
            _ => None,
        })
        .collect();
    shared.changed(&changes).await;
    Ok(changes.len())
}

fn definition(e: &Execution) -> Result<Definition, String> {
    let raw =
        e.action.as_ref().and_then(|a| a.workflow.clone()).ok_or("the action has no workflow definition")?;
    serde_json::from_value(raw).map_err(|err| format!("the stored workflow definition cannot be read: {err}"))
}

/// The engine's input for an ended child; `result()` gives its result, for a failure without one
/// its error, otherwise what it printed.
fn ended(c: EndedChild) -> Input {
    let succeeded = c.status == ExecutionStatus::Succeeded;
    let result = match (c.result, c.error) {
        (Some(r), _) => r,
        (None, Some(e)) if !succeeded => e,
        _ => match c.stdout.trim_end() {
            "" => Value::Null,
            s => Value::String(s.to_owned()),
        },
    };
    Input::Ended { key: c.key, succeeded, result }
}

/// Takes one step of workflow `id`: start it, apply its children's ends (in the order they
/// ended), a cancel, or `control` (pause, resume). Whether a step was written.
pub(crate) async fn advance(
    shared: &Arc<Shared>,
    id: Uuid,
    control: Option<Input>,
) -> Result<bool, EngineError> {
    let Some((exec, row)) = shared.store.workflow_execution(id).await? else { return Ok(false) };
    let def = match definition(&exec) {
        Ok(d) => d,
        Err(why) => {
            let error = json!({"error": why});
            if exec.status == ExecutionStatus::Scheduled {
                // Started to be ended (a workflow ends from `running`).
                drive(shared, &[id], |s| lifecycle::engine_start(s, Timestamp::now())).await?;
            }
            let n = drive(shared, &[id], |s| {
                lifecycle::engine_finish(
                    s,
                    ExecutionStatus::Failed,
                    None,
                    Some(error.clone()),
                    Timestamp::now(),
                )
            })
            .await?;
            return Ok(n > 0);
        }
    };
    if exec.status == ExecutionStatus::Scheduled && row.is_some() {
        // Started before and back in `scheduled` (requeued): start it again, then step it.
        drive(shared, &[id], |s| lifecycle::engine_start(s, Timestamp::now())).await?;
        return Box::pin(advance(shared, id, control)).await;
    }
    let Some(row) = row else {
        if !exec.status.is_active() && exec.status != ExecutionStatus::Scheduled {
            return Ok(false);
        }
        let mut state = State::default();
        let step =
            attune_workflow::step(&def, &mut state, Input::Start { parameters: exec.parameters.clone() });
        return commit(shared, &exec, &def, state, step, None, Vec::new()).await;
    };
    if row.phase == Phase::Done.as_str() {
        if let Some(f) = row.finish {
            let f: Finish = serde_json::from_value(f)
                .map_err(|e| EngineError::Refused(format!("stored finish unreadable: {e}")))?;
            return settle(shared, id, &f).await.map(|_| true);
        }
        return Ok(false);
    }
    let mut state: State = serde_json::from_value(row.state)
        .map_err(|e| EngineError::Refused(format!("workflow {id}: stored state unreadable: {e}")))?;
    let mut step = Step::default();
    let mut inputs: Vec<Input> = Vec::new();
    if exec.status == ExecutionStatus::Canceling && state.phase == Phase::Running {
        inputs.push(Input::Cancel);
    }
    let ended_children = shared.store.ended_children(id, ENDS_PER_STEP).await?;
    let applied: Vec<Uuid> = ended_children.iter().map(|c| c.id).collect();
    inputs.extend(ended_children.into_iter().map(ended));
    let has_control = control.is_some();
    inputs.extend(control);
    if inputs.is_empty() {
        if state.phase == Phase::Canceling {
            // Canceled, and its children's cancel may not have been sent (a crash right after the
            // step that decided it): send it to those not canceling yet.
            cancel_children(shared, id, true).await?;
        }
        return Ok(false);
    }
    for input in inputs {
        merge(&mut step, attune_workflow::step(&def, &mut state, input));
    }
    if has_control && step.ignored && applied.is_empty() && step.starts.is_empty() {
        return Ok(false);
    }
    commit(shared, &exec, &def, state, step, Some(row.version), applied).await
}

/// st2 #4524: no workflow may stay `running` with nothing running under it. Each such workflow is
/// stepped with what the data says: a child that ended but whose end the state still waits for is
/// applied; a child the state waits for that does not exist is a failed run; then whatever is due
/// (a join, the end). A workflow that still has nothing to do after that has lost its way and
/// fails, saying so. Every repair is logged.
async fn repair_quiet(shared: &Arc<Shared>) -> Result<(), EngineError> {
    for id in shared.store.quiet_workflows(Timestamp::now(), QUIET_MS, 50).await? {
        match repair(shared, id).await {
            Ok(Some(what)) => {
                tracing::warn!(workflow = %id, repaired = %what, "workflow had nothing running under it; repaired")
            }
            Ok(None) => {}
            Err(e) => tracing::warn!(workflow = %id, error = %e, "workflow repair failed; retried later"),
        }
    }
    Ok(())
}

async fn repair(shared: &Arc<Shared>, id: Uuid) -> Result<Option<String>, EngineError> {
    let Some((exec, Some(row))) = shared.store.workflow_execution(id).await? else { return Ok(None) };
    let Ok(def) = definition(&exec) else { return Ok(None) };
    let mut state: State = serde_json::from_value(row.state)
        .map_err(|e| EngineError::Refused(format!("workflow {id}: stored state unreadable: {e}")))?;
    let children = shared.store.child_keys(id).await?;
    let mut step = Step::default();
    let mut what = Vec::new();
    for key in attune_workflow::waiting_for(&state) {
        let input = match children.get(&key) {
            Some((_, st)) if !st.is_terminal() => return Ok(None), // not quiet after all
            Some((cid, _)) => {
                let Some(c) = shared.store.get_execution(*cid).await? else { continue };
                what.push(format!("applied the end of {key}"));
                ended(EndedChild {
                    id: c.id,
                    key,
                    status: c.status,
                    result: c.result,
                    error: c.error,
                    stdout: c.stdout,
                })
            }
            None => {
                what.push(format!("{key} has no execution: treated as failed"));
                let error = json!({
                    "error": format!("task run {key} has no execution (found by the workflow repair monitor)"),
                    "failed_by": "workflow_repair_monitor",
                });
                Input::Refused { key, error }
            }
        };
        merge(&mut step, attune_workflow::step(&def, &mut state, input));
    }
    merge(&mut step, attune_workflow::step(&def, &mut state, Input::Check));
    let stuck = step.starts.is_empty()
        && step.finish.is_none()
        && attune_workflow::waiting_for(&state).is_empty()
        && !state.paused
        && state.phase != Phase::Done;
    if stuck {
        what.push("nothing left to run: ended as failed".into());
        state.phase = Phase::Done;
        step.finish = Some(Finish {
            outcome: Outcome::Failed,
            output: None,
            error: Some(json!({
                "error": "the workflow had nothing left to run but had not ended (repaired by the workflow monitor)",
                "failed_by": "workflow_repair_monitor",
            })),
        });
    }
    if what.is_empty() && step.starts.is_empty() && step.finish.is_none() {
        return Ok(None);
    }
    if what.is_empty() {
        what.push("applied what was due".into());
    }
    let moved = commit(shared, &exec, &def, state, step, Some(row.version), Vec::new()).await?;
    if moved {
        shared.metrics.workflow_repairs.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
    Ok(moved.then(|| what.join("; ")))
}

fn merge(into: &mut Step, s: Step) {
    into.starts.extend(s.starts);
    into.cancel_children |= s.cancel_children;
    if into.finish.is_none() {
        into.finish = s.finish;
    }
    into.ignored = s.ignored;
}

/// Turns the step's starts into executions (through the submission rules; a refused one is fed
/// back as a failed run), writes the step, then carries out what it asked: cancel the children,
/// end the workflow.
async fn commit(
    shared: &Arc<Shared>,
    exec: &Execution,
    def: &Definition,
    mut state: State,
    step: Step,
    version: Option<i64>,
    applied: Vec<Uuid>,
) -> Result<bool, EngineError> {
    let mut pending: VecDeque<_> = step.starts.into();
    let mut cancel = step.cancel_children;
    let mut finish = step.finish;
    let mut children = Vec::new();
    let trace = exec.trace_id.clone().unwrap_or_else(|| exec.id.to_string());
    while let Some(s) = pending.pop_front() {
        let prepared = match ActionRef::parse(&s.action) {
            Err(e) => Err(e.to_string()),
            Ok(action) => {
                let req = Request {
                    action: ActionSource::Ref(action),
                    parameters: s.input,
                    overrides: Overrides {
                        timeout_seconds: s.timeout,
                        max_attempts: s.retry.map(|r| r.count + 1),
                        backoff_seconds: s.retry.map(|r| r.delay),
                        ..Default::default()
                    },
                    origin: Origin {
                        parent: Some(exec.id),
                        trace_id: Some(trace.clone()),
                        child_key: Some(s.key.clone()),
                        ..Origin::actor(format!("workflow:{}", exec.id))
                    },
                };
                shared.submissions.prepare(req).await.map_err(|e| e.to_string())
            }
        };
        match prepared {
            Ok(new) => children.push(new),
            Err(why) => {
                let error = json!({"error": why, "task": s.task, "action": s.action});
                let more = attune_workflow::step(def, &mut state, Input::Refused { key: s.key, error });
                pending.extend(more.starts);
                cancel |= more.cancel_children;
                finish = finish.or(more.finish);
            }
        }
    }
    let now = Timestamp::now();
    // The workflow execution's own change goes with the step: its start with the first step,
    // its end with the last (unless children are to be canceled first: then it is settled after,
    // from the step's `finish`). Decided on what is stored; a change that raced is retried.
    // (A workflow that ends in its first step is started here and settled after.)
    let starting = exec.status == ExecutionStatus::Scheduled;
    let ending = finish.is_some() && !cancel && !starting;
    let stored =
        if starting || ending { shared.store.read_stored(&[exec.id]).await?.remove(&exec.id) } else { None };
    let transition = stored.and_then(|s| {
        let decision = match &finish {
            Some(f) if ending => finish_decision(&s, f, now),
            _ => lifecycle::engine_start(&s, now),
        };
        match decision {
            lifecycle::Decision::Apply(c) => Some(*c),
            _ => None,
        }
    });
    if starting && transition.is_none() {
        // It is no longer waiting to start (canceled meanwhile): look again next round.
        shared.engine.any();
        return Ok(false);
    }
    let settled = ending && transition.is_some();
    let written = shared
        .store
        .workflow_step(WorkflowStep {
            execution_id: exec.id,
            version,
            phase: state.phase.as_str().into(),
            paused: state.paused,
            state: serde_json::to_value(&state).unwrap_or(Value::Null),
            // Kept until the workflow execution has ended (`settle`), unless it ends here.
            finish: finish
                .as_ref()
                .filter(|_| !settled)
                .map(|f| serde_json::to_value(f).unwrap_or(Value::Null)),
            applied,
            children,
            transition,
            now,
        })
        .await?;
    let Some(written) = written else {
        // Another replica (or an earlier round) took this step, or the workflow execution
        // changed meanwhile: read again next round.
        shared.engine.any();
        return Ok(false);
    };
    if let Some(a) = &written.transition {
        shared.changed(&[(a.id, a.status)]).await;
    }
    shared.created(&written.children.iter().collect::<Vec<_>>()).await;
    if cancel {
        cancel_children(shared, exec.id, false).await?;
    }
    match &finish {
        Some(f) if settled => tracing::info!(workflow = %exec.id, outcome = ?f.outcome, "workflow ended"),
        Some(f) => settle(shared, exec.id, f).await?,
        None => {}
    }
    Ok(true)
}

/// The workflow execution's end as the engine decided it.
fn finish_decision(s: &lifecycle::Stored, f: &Finish, at: Timestamp) -> lifecycle::Decision {
    let outcome = match f.outcome {
        Outcome::Succeeded => ExecutionStatus::Succeeded,
        Outcome::Failed => ExecutionStatus::Failed,
        Outcome::Canceled => ExecutionStatus::Canceled,
    };
    lifecycle::engine_finish(s, outcome, f.output.clone(), f.error.clone(), at)
}

/// Cancels the workflow's open children (`uncanceled`: only those not being canceled already, so
/// that a repeated call changes, and announces, nothing).
async fn cancel_children(shared: &Arc<Shared>, workflow: Uuid, uncanceled: bool) -> Result<(), EngineError> {
    let actor = format!("workflow:{workflow}");
    for child in shared.store.open_children(workflow, uncanceled).await? {
        match shared.store.cancel_execution(child, &actor, Timestamp::now()).await {
            Ok(e) => shared.changed(&[(e.id, e.status)]).await,
            // It ended meanwhile; its end is applied like any other.
            Err(StoreError::Transition { .. }) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// Ends the workflow execution as the engine decided, then marks the decision carried out.
async fn settle(shared: &Arc<Shared>, id: Uuid, f: &Finish) -> Result<(), EngineError> {
    let now = Timestamp::now();
    drive(shared, &[id], |s| finish_decision(s, f, now)).await?;
    shared.store.settle_workflow(id).await?;
    tracing::info!(workflow = %id, outcome = ?f.outcome, "workflow ended");
    Ok(())
}
