//! A workflow definition (`actions/workflows/<name>.yaml`): read from its YAML (as JSON) and
//! checked before anything runs — unknown tasks in `do`, templates that do not compile, a cycle
//! no `when` can leave, joins that can never be reached. Errors name the task and the field.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// Most tasks in one definition.
pub const MAX_TASKS: usize = 500;
/// Most items a `with` may run at once.
pub const MAX_CONCURRENCY: u32 = 10_000;
/// Most retries a task may have.
pub const MAX_RETRIES: u32 = 99;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Definition {
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub vars: Map<String, Value>,
    pub tasks: BTreeMap<String, Task>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output: Option<Value>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Task {
    /// The action each run of the task executes (`pack.action`).
    pub action: String,
    /// Its parameters; templates over `ctx` (and `item()` in a `with`).
    #[serde(default = "empty_object")]
    pub input: Value,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub with: Option<With>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry: Option<Retry>,
    /// Seconds each run may take (the child execution's timeout).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<u64>,
    #[serde(default, deserialize_with = "transitions", skip_serializing_if = "Vec::is_empty")]
    pub next: Vec<Transition>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub join: Option<Join>,
}

fn empty_object() -> Value {
    Value::Object(Map::new())
}

/// Runs the task once per item of a list, at most `concurrency` at a time.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct With {
    /// A list, or a template that renders to one.
    pub items: Value,
    /// A number, or a template that gives one; absent: all at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concurrency: Option<Value>,
}

/// Each run (each item) of the task may be tried `count` more times after a failure, `delay`
/// seconds apart: the child execution's own retry policy, so only what failed runs again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Retry {
    pub count: u32,
    #[serde(default)]
    pub delay: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Transition {
    /// An expression; absent means always.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub when: Option<String>,
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub publish: Map<String, Value>,
    #[serde(default, rename = "do", deserialize_with = "names", skip_serializing_if = "Vec::is_empty")]
    pub go: Vec<String>,
}

/// A task with several tasks leading to it waits for them: `all` of those that can still
/// arrive, or a `count` of arrivals.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Join {
    Count(u32),
    Word(JoinWord),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JoinWord {
    All,
}

/// `next` as a list of transitions, or one transition, or a list of task names (shorthand for
/// one unconditional transition to them).
fn transitions<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<Transition>, D::Error> {
    use serde::de::Error;
    let v = Value::deserialize(d)?;
    let one = |v: Value| -> Result<Transition, D::Error> {
        match v {
            Value::String(s) => Ok(Transition { when: None, publish: Map::new(), go: vec![s] }),
            other => serde_json::from_value(other).map_err(D::Error::custom),
        }
    };
    match v {
        Value::Null => Ok(Vec::new()),
        Value::Array(a) => a.into_iter().map(one).collect(),
        other => Ok(vec![one(other)?]),
    }
}

fn names<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    use serde::de::Error;
    match Value::deserialize(d)? {
        Value::String(s) => Ok(vec![s]),
        Value::Array(a) => a
            .into_iter()
            .map(|v| match v {
                Value::String(s) => Ok(s),
                other => Err(D::Error::custom(format!("expected a task name, got {other}"))),
            })
            .collect(),
        other => Err(D::Error::custom(format!("expected a task name or a list of them, got {other}"))),
    }
}

/// Where a definition is wrong: the task (if any), the field, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DefinitionError {
    pub task: Option<String>,
    pub field: String,
    pub message: String,
}

impl std::fmt::Display for DefinitionError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.task {
            Some(t) => write!(f, "task {t:?}, {}: {}", self.field, self.message),
            None => write!(f, "{}: {}", self.field, self.message),
        }
    }
}

fn err(task: Option<&str>, field: impl Into<String>, message: impl Into<String>) -> DefinitionError {
    DefinitionError { task: task.map(str::to_owned), field: field.into(), message: message.into() }
}

fn valid_task_name(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 64
        && n.chars().next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && n.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

impl Definition {
    /// Reads and checks a definition (its YAML as JSON).
    pub fn parse(v: &Value) -> Result<Definition, DefinitionError> {
        let Value::Object(top) = v else {
            return Err(err(None, "(file)", "a workflow is a mapping with `version` and `tasks`"));
        };
        for k in top.keys() {
            if !matches!(k.as_str(), "version" | "description" | "vars" | "tasks" | "output" | "input") {
                return Err(err(
                    None,
                    k.clone(),
                    "unknown field; expected version, description, vars, tasks, output",
                ));
            }
        }
        match top.get("version") {
            Some(Value::Number(n)) if n.as_u64() == Some(1) => {}
            Some(Value::String(s)) if s == "1" || s == "1.0" => {}
            Some(other) => return Err(err(None, "version", format!("must be 1, not {other}"))),
            None => return Err(err(None, "version", "is required (version: 1)")),
        }
        let vars = match top.get("vars") {
            None | Some(Value::Null) => Map::new(),
            Some(Value::Object(m)) => m.clone(),
            Some(_) => return Err(err(None, "vars", "must be a mapping of names to values")),
        };
        let Some(Value::Object(raw)) = top.get("tasks") else {
            return Err(err(None, "tasks", "is required: a mapping of task names to tasks"));
        };
        if raw.is_empty() {
            return Err(err(None, "tasks", "has no task"));
        }
        if raw.len() > MAX_TASKS {
            return Err(err(None, "tasks", format!("has {} tasks; at most {MAX_TASKS}", raw.len())));
        }
        let mut tasks = BTreeMap::new();
        for (name, t) in raw {
            if !valid_task_name(name) {
                return Err(err(
                    Some(name),
                    "(name)",
                    "a task name is letters, digits, '_' and '-', starting with a letter or '_'",
                ));
            }
            let task: Task =
                serde_json::from_value(t.clone()).map_err(|e| err(Some(name), "(task)", e.to_string()))?;
            tasks.insert(name.clone(), task);
        }
        let def = Definition { vars, tasks, output: top.get("output").cloned() };
        def.check()?;
        Ok(def)
    }

    fn check(&self) -> Result<(), DefinitionError> {
        let syntax = |task: Option<&str>, field: &str, v: &Value| {
            attune_template::check_syntax(v, field).map_err(|e| err(task, e.path, e.message))
        };
        for (k, v) in &self.vars {
            syntax(None, &format!("vars.{k}"), v)?;
        }
        if let Some(o) = &self.output {
            syntax(None, "output", o)?;
        }
        for (name, t) in &self.tasks {
            let at = Some(name.as_str());
            if t.action.split('.').count() != 2 || t.action.split('.').any(str::is_empty) {
                return Err(err(
                    at,
                    "action",
                    format!("{:?} is not an action reference (pack.action)", t.action),
                ));
            }
            if !t.input.is_object() {
                return Err(err(at, "input", "must be a mapping of parameter names to values"));
            }
            syntax(at, "input", &t.input)?;
            if let Some(w) = &t.with {
                match &w.items {
                    Value::Array(_) => {}
                    Value::String(s) if attune_template::is_template(s) => {
                        syntax(at, "with.items", &w.items)?
                    }
                    _ => return Err(err(at, "with.items", "must be a list or a template that gives one")),
                }
                match &w.concurrency {
                    None => {}
                    Some(Value::String(s)) if attune_template::is_template(s) => {
                        syntax(at, "with.concurrency", &Value::String(s.clone()))?
                    }
                    Some(c) if c.as_u64().is_none_or(|n| !(1..=MAX_CONCURRENCY as u64).contains(&n)) => {
                        return Err(err(
                            at,
                            "with.concurrency",
                            format!("must be 1 to {MAX_CONCURRENCY} (or a template giving one), not {c}"),
                        ));
                    }
                    Some(_) => {}
                }
            }
            if let Some(r) = &t.retry {
                if r.count > MAX_RETRIES {
                    return Err(err(at, "retry.count", format!("at most {MAX_RETRIES}, not {}", r.count)));
                }
                if r.delay > 86_400 {
                    return Err(err(at, "retry.delay", "at most 86400 seconds"));
                }
            }
            if let Some(0) = t.timeout {
                return Err(err(at, "timeout", "must be at least 1 second"));
            }
            for (i, tr) in t.next.iter().enumerate() {
                if let Some(w) = &tr.when {
                    syntax(at, &format!("next[{i}].when"), &Value::String(w.clone()))?;
                }
                for (k, v) in &tr.publish {
                    syntax(at, &format!("next[{i}].publish.{k}"), v)?;
                }
                for target in &tr.go {
                    if !self.tasks.contains_key(target) {
                        return Err(err(at, format!("next[{i}].do"), format!("unknown task {target:?}")));
                    }
                }
            }
        }
        let inbound = self.inbound();
        for (name, t) in &self.tasks {
            let n = inbound.get(name).map_or(0, BTreeSet::len) as u32;
            match t.join {
                Some(Join::Count(c)) if c == 0 || c > n => {
                    return Err(err(Some(name), "join", format!("waits for {c} tasks but {n} lead to it")))
                }
                Some(_) if n == 0 => return Err(err(Some(name), "join", "no task leads to it")),
                _ => {}
            }
        }
        if self.start().is_empty() {
            return Err(err(
                None,
                "tasks",
                "every task is the target of a `do`: none can start the workflow",
            ));
        }
        self.check_unconditional_cycles()
    }

    /// For each task, the tasks whose transitions lead to it.
    pub fn inbound(&self) -> BTreeMap<String, BTreeSet<String>> {
        let mut m: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for (name, t) in &self.tasks {
            for target in t.next.iter().flat_map(|tr| &tr.go) {
                m.entry(target.clone()).or_default().insert(name.clone());
            }
        }
        m
    }

    /// The tasks that start the workflow: those no other task's transition leads to (a task
    /// that loops on itself may start it).
    pub fn start(&self) -> Vec<String> {
        let inbound = self.inbound();
        self.tasks
            .keys()
            .filter(|t| inbound.get(*t).is_none_or(|from| from.iter().all(|f| f == *t)))
            .cloned()
            .collect()
    }

    /// A cycle made only of transitions without `when` would run forever.
    fn check_unconditional_cycles(&self) -> Result<(), DefinitionError> {
        let edges = |t: &str| -> Vec<&str> {
            self.tasks[t]
                .next
                .iter()
                .filter(|tr| tr.when.is_none())
                .flat_map(|tr| tr.go.iter().map(String::as_str))
                .collect()
        };
        // 0 unvisited, 1 on the path, 2 done
        let mut mark: BTreeMap<&str, u8> = BTreeMap::new();
        fn visit<'a>(
            t: &'a str,
            edges: &dyn Fn(&str) -> Vec<&'a str>,
            mark: &mut BTreeMap<&'a str, u8>,
            path: &mut Vec<&'a str>,
        ) -> Option<Vec<&'a str>> {
            mark.insert(t, 1);
            path.push(t);
            for n in edges(t) {
                match mark.get(n).copied().unwrap_or(0) {
                    1 => {
                        let from = path.iter().position(|p| *p == n).unwrap_or(0);
                        let mut cycle = path[from..].to_vec();
                        cycle.push(n);
                        return Some(cycle);
                    }
                    0 => {
                        if let Some(c) = visit(n, edges, mark, path) {
                            return Some(c);
                        }
                    }
                    _ => {}
                }
            }
            path.pop();
            mark.insert(t, 2);
            None
        }
        for t in self.tasks.keys() {
            if mark.get(t.as_str()).copied().unwrap_or(0) == 0 {
                let mut path = Vec::new();
                if let Some(c) = visit(t, &edges, &mut mark, &mut path) {
                    return Err(err(
                        Some(c[0]),
                        "next",
                        format!("the cycle {} has no `when` to leave it", c.join(" → ")),
                    ));
                }
            }
        }
        Ok(())
    }

    /// Every (task, action) pair, for the caller to check that the actions exist.
    pub fn actions(&self) -> impl Iterator<Item = (&str, &str)> {
        self.tasks.iter().map(|(n, t)| (n.as_str(), t.action.as_str()))
    }
}
