//! The workflow engine, pure: `step(definition, state, input)` moves a workflow's `State` on by
//! one input (it started, a child execution ended, cancel, pause, resume) and says which child
//! executions to start, whether to cancel the running ones, and whether the workflow is over. No
//! I/O and no clock: the server stores the state, applies the step in one transaction with the
//! children it starts (`attune-server/src/workflows.rs`), and feeds completions in one at a time,
//! in the order they happened.
//!
//! Rules (ARCHITECTURE.md, "Workflows", says the same):
//! - A child's identity is `task/iteration` or `task/iteration/item`: a task's n-th run, and the
//!   item's index in a `with`. The store keeps it unique per workflow, so a repeated step can
//!   never start a child twice.
//! - `ctx` is the parameters, then `vars` (rendered over the parameters), then what transitions
//!   `publish`, in the order they are applied.
//! - When a task ends, every transition whose `when` holds (no `when`: always) publishes and
//!   starts its `do` tasks. A failed task none of whose transitions held is an unhandled failure:
//!   nothing new starts afterwards (no task, no further item), what is running finishes, and the
//!   workflow then fails with every unhandled failure in its error.
//! - `with`: the items are rendered when the task starts; at most `concurrency` run at once; an
//!   empty list ends the task at once, succeeded, with `[]`. The task's `result()` is the list of
//!   the items' results in item order; it failed if any item failed (after its own retries).
//! - `join: all` starts the task once every task leading to it has arrived or can no longer
//!   arrive (nothing running or held can reach it); `join: N` once N have arrived.
//! - Cancel: nothing new starts, the running children are canceled, and the workflow ends
//!   `canceled` when the last of them has ended. Pause: nothing new starts until resume; what runs
//!   finishes and its transitions are applied, their starts held.

pub mod definition;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use attune_template::Calls;
pub use definition::{Definition, DefinitionError, Join, JoinWord, Retry, Task, Transition, With};
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

/// Most tasks that may end without running anything (an empty `with`, an input that cannot be
/// rendered) within one step: a loop of such tasks ends the workflow instead of the server.
pub const MAX_IMMEDIATE: usize = 10_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    #[default]
    Running,
    Canceling,
    Done,
}

impl Phase {
    /// As stored beside the state (the `workflows.phase` column).
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Running => "running",
            Phase::Canceling => "canceling",
            Phase::Done => "done",
        }
    }
}

/// A workflow's progress, stored as JSON between steps.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct State {
    pub ctx: Map<String, Value>,
    /// How many runs of each task have started.
    #[serde(default)]
    pub iterations: BTreeMap<String, u32>,
    /// Task runs not yet ended, by `task/iteration`.
    #[serde(default)]
    pub runs: BTreeMap<String, Run>,
    /// For each `join` task: the tasks that have arrived since it last started.
    #[serde(default)]
    pub arrived: BTreeMap<String, BTreeSet<String>>,
    /// Failed tasks that no transition handled.
    #[serde(default)]
    pub failures: Vec<Value>,
    #[serde(default)]
    pub phase: Phase,
    #[serde(default)]
    pub paused: bool,
    /// Starts decided while paused, started on resume.
    #[serde(default)]
    pub held: Vec<Start>,
}

/// One run of a task (one iteration; all its items).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Run {
    pub task: String,
    pub iteration: u32,
    /// The rendered items of a `with`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub items: Option<Vec<Value>>,
    /// The next item to start.
    #[serde(default)]
    pub next: usize,
    /// At most this many items at once (a `with` run's rendered `concurrency`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u32>,
    /// The items whose children are started and not ended (a `with` run; a run without items is
    /// in flight as long as it is in `State::runs`).
    #[serde(default, skip_serializing_if = "BTreeSet::is_empty")]
    pub running_items: BTreeSet<usize>,
    /// Items' results, by index.
    #[serde(default)]
    pub results: Vec<Value>,
    #[serde(default)]
    pub failed: bool,
}

/// A child execution to start.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Start {
    /// Its identity within the workflow: `task/iteration[/item]`.
    pub key: String,
    pub task: String,
    pub action: String,
    pub input: Value,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<Retry>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Input {
    /// The workflow execution starts with these parameters.
    Start {
        parameters: Value,
    },
    /// The child `key` ended; `result` is what `result()` gives its transitions.
    Ended {
        key: String,
        succeeded: bool,
        result: Value,
    },
    /// A child could not be created (its input did not validate): the same as a failed run.
    Refused {
        key: String,
        error: Value,
    },
    Cancel,
    Pause,
    Resume,
    /// Nothing new: apply what is due anyway (joins, the end). The repair monitor's nudge.
    Check,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Succeeded,
    Failed,
    Canceled,
}

/// How the workflow ended.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Finish {
    pub outcome: Outcome,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<Value>,
}

/// What one input asks of the server.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Step {
    pub starts: Vec<Start>,
    /// Cancel every child still running.
    pub cancel_children: bool,
    pub finish: Option<Finish>,
    /// The input concerned nothing (a child this state does not know, a repeated input).
    pub ignored: bool,
}

/// The keys of the children the state waits for (started, not ended).
pub fn waiting_for(state: &State) -> Vec<String> {
    let mut keys = Vec::new();
    for (rk, run) in &state.runs {
        match &run.items {
            None => keys.push(rk.clone()),
            Some(_) => keys.extend(run.running_items.iter().map(|i| format!("{rk}/{i}"))),
        }
    }
    keys
}

/// Splits a child's key into (task, iteration, item).
pub fn parse_key(key: &str) -> Option<(&str, u32, Option<usize>)> {
    let mut parts = key.split('/');
    let task = parts.next()?;
    let iteration = parts.next()?.parse().ok()?;
    let item = match parts.next() {
        Some(i) => Some(i.parse().ok()?),
        None => None,
    };
    parts.next().is_none().then_some((task, iteration, item))
}

fn run_key(task: &str, iteration: u32) -> String {
    format!("{task}/{iteration}")
}

/// Moves `state` on by `input`.
pub fn step(def: &Definition, state: &mut State, input: Input) -> Step {
    let mut e = Engine { def, st: state, out: Step::default(), immediate: 0, queue: VecDeque::new() };
    if e.st.phase == Phase::Done {
        e.out.ignored = true;
        return e.out;
    }
    match input {
        Input::Start { parameters } => e.begin(parameters),
        Input::Ended { key, succeeded, result } => e.child_ended(&key, succeeded, result),
        Input::Refused { key, error } => e.child_ended(&key, false, error),
        Input::Cancel => {
            if e.st.phase == Phase::Canceling {
                e.out.ignored = true;
            } else {
                e.st.phase = Phase::Canceling;
                e.st.held.clear();
                e.out.cancel_children = true;
            }
        }
        Input::Pause => {
            e.out.ignored = e.st.paused;
            e.st.paused = true;
        }
        Input::Check => {}
        Input::Resume => {
            e.out.ignored = !e.st.paused;
            e.st.paused = false;
            for s in std::mem::take(&mut e.st.held) {
                e.emit(s);
            }
        }
    }
    e.drain();
    e.fire_ready_joins();
    e.finish_if_over();
    e.out
}

struct Engine<'a> {
    def: &'a Definition,
    st: &'a mut State,
    out: Step,
    immediate: usize,
    /// Task runs that ended without a child (to apply after the current one).
    queue: VecDeque<(String, u32, bool, Value)>,
}

impl Engine<'_> {
    fn ctx(&self) -> Value {
        json!({ "ctx": Value::Object(self.st.ctx.clone()) })
    }

    /// Nothing new may start: canceled, or an unhandled failure.
    fn stopping(&self) -> bool {
        self.st.phase != Phase::Running || !self.st.failures.is_empty()
    }

    fn begin(&mut self, parameters: Value) {
        if !self.st.iterations.is_empty() || !self.st.runs.is_empty() {
            self.out.ignored = true;
            return;
        }
        self.st.ctx = match parameters {
            Value::Object(m) => m,
            Value::Null => Map::new(),
            other => {
                self.st.failures.push(json!({"error": format!("parameters must be an object, not {other}")}));
                return;
            }
        };
        for (k, v) in &self.def.vars {
            match attune_template::render_over(v, &format!("vars.{k}"), &self.ctx()) {
                Ok(v) => {
                    self.st.ctx.insert(k.clone(), v);
                }
                Err(e) => {
                    self.st.failures.push(json!({"error": e.to_string(), "field": e.path}));
                    return;
                }
            }
        }
        for t in self.def.start() {
            self.start_task(&t);
        }
    }

    /// Starts a new run of `task` (or holds it while paused).
    fn start_task(&mut self, task: &str) {
        if self.stopping() {
            return;
        }
        let Some(t) = self.def.tasks.get(task) else { return };
        let iteration = self.st.iterations.get(task).copied().unwrap_or(0) + 1;
        self.st.iterations.insert(task.to_owned(), iteration);
        let mut run = Run {
            task: task.to_owned(),
            iteration,
            items: None,
            next: 0,
            limit: None,
            running_items: BTreeSet::new(),
            results: Vec::new(),
            failed: false,
        };
        if let Some(w) = &t.with {
            let items = self.render_as(&w.items, "with.items", |v| match v {
                Value::Array(a) => Ok(a),
                other => Err(format!("with.items must give a list, not {other}")),
            });
            let limit = w.concurrency.as_ref().map(|c| {
                self.render_as(c, "with.concurrency", |v| {
                    v.as_u64()
                        .filter(|n| (1..=definition::MAX_CONCURRENCY as u64).contains(n))
                        .map(|n| n as u32)
                        .ok_or(format!(
                            "with.concurrency must give a number from 1 to {}, not {v}",
                            definition::MAX_CONCURRENCY
                        ))
                })
            });
            let (items, limit) = match (items, limit.transpose()) {
                (Ok(items), Ok(limit)) => (items, limit),
                (Err(e), _) | (_, Err(e)) => {
                    self.queue.push_back((task.to_owned(), iteration, false, e));
                    return;
                }
            };
            run.limit = limit;
            if items.is_empty() {
                self.queue.push_back((task.to_owned(), iteration, true, json!([])));
                return;
            }
            run.results = vec![Value::Null; items.len()];
            run.items = Some(items);
            self.st.runs.insert(run_key(task, iteration), run);
            self.start_items(task, iteration);
        } else {
            match self.render_input(t, None) {
                Ok(input) => {
                    self.st.runs.insert(run_key(task, iteration), run);
                    self.emit(Start {
                        key: run_key(task, iteration),
                        task: task.to_owned(),
                        action: t.action.clone(),
                        input,
                        timeout: t.timeout,
                        retry: t.retry,
                    });
                }
                Err(e) => self.queue.push_back((task.to_owned(), iteration, false, e)),
            }
        }
    }

    /// `v` rendered over `ctx` and turned into what `into` makes of it; the error as a task's
    /// result.
    fn render_as<T>(
        &self,
        v: &Value,
        field: &str,
        into: impl FnOnce(Value) -> Result<T, String>,
    ) -> Result<T, Value> {
        attune_template::render_over(v, field, &self.ctx())
            .map_err(|e| e.to_string())
            .and_then(into)
            .map_err(|e| json!({"error": e}))
    }

    fn render_input(&self, t: &Task, item: Option<&Value>) -> Result<Value, Value> {
        let mut calls = Calls::new();
        if let Some(i) = item {
            calls.insert("item".into(), i.clone());
        }
        attune_template::render_deferring_keys_with(&t.input, "input", &self.ctx(), &calls)
            .map_err(|e| json!({"error": e.to_string(), "field": e.path}))
    }

    /// Starts items of a `with` run up to its concurrency.
    fn start_items(&mut self, task: &str, iteration: u32) {
        let Some(t) = self.def.tasks.get(task) else { return };
        let rk = run_key(task, iteration);
        let limit = self.st.runs.get(&rk).and_then(|r| r.limit).unwrap_or(u32::MAX);
        loop {
            if self.stopping() {
                break;
            }
            let Some(run) = self.st.runs.get(&rk) else { return };
            let items = run.items.as_deref().unwrap_or_default();
            if run.running_items.len() as u32 >= limit || run.next >= items.len() {
                break;
            }
            let i = run.next;
            let item = items[i].clone();
            let rendered = self.render_input(t, Some(&item));
            let run = self.st.runs.get_mut(&rk).expect("present");
            run.next += 1;
            match rendered {
                Ok(input) => {
                    run.running_items.insert(i);
                    self.emit(Start {
                        key: format!("{rk}/{i}"),
                        task: task.to_owned(),
                        action: t.action.clone(),
                        input,
                        timeout: t.timeout,
                        retry: t.retry,
                    });
                }
                Err(e) => {
                    run.results[i] = e;
                    run.failed = true;
                }
            }
        }
        self.end_run_if_done(&rk);
    }

    fn emit(&mut self, s: Start) {
        if self.st.paused {
            self.st.held.push(s);
        } else {
            self.out.starts.push(s);
        }
    }

    fn child_ended(&mut self, key: &str, succeeded: bool, result: Value) {
        let Some((task, iteration, item)) = parse_key(key) else {
            self.out.ignored = true;
            return;
        };
        let rk = run_key(task, iteration);
        let Some(run) = self.st.runs.get_mut(&rk) else {
            self.out.ignored = true;
            return;
        };
        match (item, run.items.is_some()) {
            (Some(i), true) if run.running_items.remove(&i) => {
                run.results[i] = result;
                run.failed |= !succeeded;
                let task = task.to_owned();
                self.start_items(&task, iteration);
            }
            (None, false) => {
                self.st.runs.remove(&rk);
                self.queue.push_back((task.to_owned(), iteration, succeeded, result));
            }
            _ => self.out.ignored = true,
        }
    }

    /// A `with` run ends when every item has ended and no more will start.
    fn end_run_if_done(&mut self, rk: &str) {
        let Some(run) = self.st.runs.get(rk) else { return };
        let total = run.items.as_ref().map_or(0, Vec::len);
        let more = run.next < total && !self.stopping();
        if !run.running_items.is_empty() || more {
            return;
        }
        let run = self.st.runs.remove(rk).expect("present");
        let ok = !run.failed && run.next >= total;
        self.queue.push_back((run.task, run.iteration, ok, Value::Array(run.results)));
    }

    /// Applies the ended task runs, in order (each may start tasks that end at once).
    fn drain(&mut self) {
        while let Some((task, _iteration, ok, result)) = self.queue.pop_front() {
            self.immediate += 1;
            if self.immediate > MAX_IMMEDIATE {
                self.st.failures.push(json!({
                    "task": task,
                    "error": format!("more than {MAX_IMMEDIATE} tasks ended without running anything in one step; \
                                      a loop of them stopped the workflow"),
                }));
                self.queue.clear();
                return;
            }
            self.task_ended(&task, ok, result);
        }
    }

    fn task_ended(&mut self, task: &str, ok: bool, result: Value) {
        let Some(t) = self.def.tasks.get(task) else { return };
        let mut calls = Calls::new();
        calls.insert("result".into(), result.clone());
        calls.insert("succeeded".into(), Value::Bool(ok));
        calls.insert("failed".into(), Value::Bool(!ok));
        let mut handled = false;
        for (i, tr) in t.next.iter().enumerate() {
            if let Some(w) = &tr.when {
                let field = format!("next[{i}].when");
                match attune_template::render_over_with(
                    &Value::String(w.clone()),
                    &field,
                    &self.ctx(),
                    &calls,
                ) {
                    Ok(v) if attune_template::truthy(&v) => {}
                    Ok(_) => continue,
                    Err(e) => {
                        self.st.failures.push(json!({"task": task, "field": e.path, "error": e.message}));
                        return;
                    }
                }
            }
            handled = true;
            for (k, v) in &tr.publish {
                let field = format!("next[{i}].publish.{k}");
                match attune_template::render_over_with(v, &field, &self.ctx(), &calls) {
                    Ok(v) => {
                        self.st.ctx.insert(k.clone(), v);
                    }
                    Err(e) => {
                        self.st.failures.push(json!({"task": task, "field": e.path, "error": e.message}));
                        return;
                    }
                }
            }
            for target in &tr.go {
                self.arrive(task, target);
            }
        }
        if !ok && !handled {
            self.st.failures.push(json!({
                "task": task,
                "error": format!("task {task} failed and no transition handles it"),
                "result": result,
            }));
        }
    }

    fn arrive(&mut self, from: &str, target: &str) {
        let Some(t) = self.def.tasks.get(target) else { return };
        match t.join {
            None => self.start_task(target),
            Some(j) => {
                let arrived = self.st.arrived.entry(target.to_owned()).or_default();
                arrived.insert(from.to_owned());
                if let Join::Count(n) = j {
                    if arrived.len() as u32 >= n {
                        self.st.arrived.remove(target);
                        self.start_task(target);
                    }
                }
            }
        }
    }

    /// Starts each `join: all` task none of whose missing inbound tasks can still arrive.
    fn fire_ready_joins(&mut self) {
        loop {
            if self.st.arrived.is_empty() {
                return; // no join waiting: nothing to compute
            }
            let inbound = self.def.inbound();
            let live: BTreeSet<String> = self
                .st
                .runs
                .values()
                .map(|r| r.task.clone())
                .chain(self.st.held.iter().map(|s| s.task.clone()))
                .collect();
            let ready = self.st.arrived.iter().find_map(|(j, arrived)| {
                let all =
                    matches!(self.def.tasks.get(j).and_then(|t| t.join), Some(Join::Word(JoinWord::All)));
                if !all || arrived.is_empty() {
                    return None;
                }
                let waiting: BTreeSet<&String> =
                    inbound.get(j).into_iter().flatten().filter(|t| !arrived.contains(*t)).collect();
                let reachable = self.reachable(&live, j);
                waiting.iter().all(|w| !reachable.contains(*w)).then(|| j.clone())
            });
            let Some(j) = ready else { break };
            self.st.arrived.remove(&j);
            self.start_task(&j);
            self.drain();
        }
    }

    /// The tasks `live` tasks are or may still lead to, not passing through `except`.
    fn reachable(&self, live: &BTreeSet<String>, except: &str) -> BTreeSet<String> {
        let mut seen: BTreeSet<String> = live.clone();
        let mut todo: Vec<String> = live.iter().cloned().collect();
        while let Some(t) = todo.pop() {
            if t == except {
                continue;
            }
            for n in self.def.tasks.get(&t).into_iter().flat_map(|d| d.next.iter().flat_map(|tr| &tr.go)) {
                if seen.insert(n.clone()) {
                    todo.push(n.clone());
                }
            }
        }
        seen
    }

    fn finish_if_over(&mut self) {
        if !self.st.runs.is_empty() {
            return;
        }
        if self.stopping() {
            self.st.held.clear();
        }
        if !self.st.held.is_empty() {
            return; // paused with work to start
        }
        let finish = if self.st.phase == Phase::Canceling {
            Finish {
                outcome: Outcome::Canceled,
                output: None,
                error: Some(json!({"error": "workflow canceled"})),
            }
        } else if !self.st.failures.is_empty() {
            let first = self.st.failures[0].get("error").and_then(Value::as_str).unwrap_or("a task failed");
            Finish {
                outcome: Outcome::Failed,
                output: None,
                error: Some(json!({"error": first, "failures": self.st.failures})),
            }
        } else {
            match self.def.output.as_ref().map(|o| attune_template::render_over(o, "output", &self.ctx())) {
                None => Finish { outcome: Outcome::Succeeded, output: Some(json!({})), error: None },
                Some(Ok(v)) => Finish { outcome: Outcome::Succeeded, output: Some(v), error: None },
                Some(Err(e)) => Finish {
                    outcome: Outcome::Failed,
                    output: None,
                    error: Some(json!({"error": e.to_string(), "field": e.path})),
                },
            }
        };
        self.st.phase = Phase::Done;
        self.out.finish = Some(finish);
    }
}
