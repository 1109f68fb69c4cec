//! The original Attune's pack dialect (issue 20), read beside this version's own.
//!
//! Every key the original's loader accepts is accepted here: honoured when this version has the
//! feature (runner aliases, flat parameters, `output` schemas, `timeout`, `enabled`,
//! `conf_schema` + `config`, `worker_selector`), otherwise recorded as a `PackNote` ("not used by
//! this version") that `attune pack show` prints. A key neither dialect knows is still an error.
//! The mapping, key by key, is in `docs/original-attune-packs.md`.

use attune_core::Runtime;
use serde_json::{Map, Value};

/// `pack.yaml` keys of the original that this version accepts without using.
pub(crate) const PACK_KEYS_NOT_USED: &[&str] = &[
    "author",
    "email",
    "keywords",
    "tags",
    "meta",
    "metadata",
    "system",
    "enabled",
    "runtime_deps",
    "dependencies",
    "testing",
    "worker_tolerations",
    "worker_affinity",
];

/// `pack.yaml` keys of the original that this version honours (beside its own).
pub(crate) const PACK_KEYS_USED: &[&str] =
    &["name", "conf_schema", "config_schema", "config", "worker_selector"];

/// Action keys of the original that this version honours (beside its own).
pub(crate) const ACTION_KEYS_USED: &[&str] =
    &["runner_type", "output", "output_schema", "timeout", "enabled", "workflow_file"];

/// Action keys of the original that this version accepts without using.
pub(crate) const ACTION_KEYS_NOT_USED: &[&str] = &[
    "label",
    "name",
    "tags",
    "runtime_version",
    "required_worker_runtimes",
    "worker_tolerations",
    "worker_affinity",
    "accesses_mcp",
    "default_execution_permission_set_refs",
    "reference_visibility",
    "reference_allowed_pack_refs",
    "log_retention_policy",
    "log_retention_limit",
    "artifact_retention_policy",
    "artifact_retention_limit",
    "examples",
    "meta",
];

/// Trigger keys of the original: `output` is the payload's schema.
pub(crate) const TRIGGER_KEYS_USED: &[&str] = &["output"];
pub(crate) const TRIGGER_KEYS_NOT_USED: &[&str] = &[
    "label",
    "name",
    "enabled",
    "type",
    "tags",
    "examples",
    "reference_visibility",
    "reference_allowed_pack_refs",
];

/// Rule keys of the original that are translated (see `translate_rule`).
pub(crate) const RULE_KEYS_TRANSLATED: &[&str] =
    &["trigger_ref", "action_ref", "conditions", "action_params", "trigger_params"];
/// Rule keys of the original accepted without use.
pub(crate) const RULE_KEYS_NOT_USED: &[&str] = &[
    "label",
    "sensor_worker_selector",
    "sensor_worker_tolerations",
    "sensor_worker_affinity",
    "trace_tag_template",
    "permission_set_refs",
    "permission_set_ref",
];

/// Sensor keys of the original; its sensors are skipped (see `read_sensor`).
pub(crate) const SENSOR_KEYS: &[&str] = &[
    "runner_type",
    "trigger_type",
    "label",
    "config",
    "poll_interval",
    "runtime_version",
    "worker_selector",
    "worker_tolerations",
    "worker_affinity",
    "log_retention_policy",
    "log_retention_limit",
    "artifact_retention_policy",
    "artifact_retention_limit",
    "tags",
    "meta",
    "examples",
];

/// An original sensor as this version's sensor document, disabled (`read_sensor` says why), with
/// the keys it does not use; `Err` when it cannot be loaded: it feeds the original's timer
/// triggers (built in here) or its program is not in the pack.
pub(crate) fn translate_sensor(
    m: &Map<String, Value>,
    pack: &str,
    dir: &std::path::Path,
) -> Result<(Map<String, Value>, Vec<String>), String> {
    let qualify = |r: &str| if r.contains('.') { r.to_owned() } else { format!("{pack}.{r}") };
    let types: Vec<String> = match (m.get("trigger_types"), m.get("trigger_type")) {
        (Some(Value::Array(a)), _) => a.iter().filter_map(Value::as_str).map(qualify).collect(),
        (_, Some(Value::String(t))) => vec![qualify(t)],
        _ => return Err("it names no trigger_types".into()),
    };
    if let Some(t) = types.iter().find(|t| t.starts_with("core.")) {
        return Err(format!(
            "it feeds {t}; the original's timers are built into this version (core.interval, core.cron, \
             core.datetime) and rules on them are translated"
        ));
    }
    let runner = m.get("runner_type").and_then(Value::as_str).unwrap_or("native");
    let Some(runtime) = runner_type(runner) else {
        return Err(format!("its runner_type {runner:?} is none of {RUNNER_TYPES}"));
    };
    let Some(entry) = m.get("entry_point").and_then(Value::as_str) else {
        return Err("it has no entry_point".into());
    };
    let program = dir.join("sensors").join(entry);
    if !crate::check::entry_point_is_contained(entry) || !program.is_file() {
        return Err(format!("its program sensors/{entry} is not in the pack"));
    }
    let mut out = Map::new();
    for k in ["ref", "description"] {
        if let Some(v) = m.get(k) {
            out.insert(k.into(), v.clone());
        }
    }
    out.insert("enabled".into(), Value::Bool(false));
    out.insert("runtime".into(), Value::String(runtime.as_str().into()));
    out.insert("entry_point".into(), Value::String(entry.into()));
    out.insert("trigger_types".into(), serde_json::json!(types));
    out.insert(
        "parameters".into(),
        m.get("config").filter(|c| c.is_object()).cloned().unwrap_or(serde_json::json!({})),
    );
    let used = [
        "ref",
        "description",
        "enabled",
        "runner_type",
        "entry_point",
        "trigger_types",
        "trigger_type",
        "config",
    ];
    let unused = m.keys().filter(|k| !used.contains(&k.as_str())).cloned().collect();
    Ok((out, unused))
}

/// What became of an original rule.
pub(crate) enum Translated {
    /// This version's rule document, and the original keys it does not use.
    Rule(Map<String, Value>, Vec<String>),
    /// Not loaded, and why (a feature this version lacks).
    Skip(String),
    /// A mistake in the file: field and message.
    Invalid(String, String),
}

/// Whether a rule file is written in the original's format.
pub(crate) fn is_original_rule(m: &Map<String, Value>) -> bool {
    ["trigger_ref", "action_ref", "conditions", "action_params", "trigger_params"]
        .iter()
        .any(|k| m.contains_key(*k))
}

/// An original rule as this version's: `trigger_ref` + `trigger_params` → `trigger` (the core
/// timers mapped onto `core.interval`, `core.cron`, `core.datetime`), `action_ref` +
/// `action_params` → `action`, a list of `conditions` (`field`, `operator`, `value`) → `criteria`
/// on the payload. Short refs are this pack's.
pub(crate) fn translate_rule(m: &Map<String, Value>, pack: &str) -> Translated {
    use Translated::{Invalid, Skip};
    if let Some(ours) = ["trigger", "action", "criteria"].into_iter().find(|k| m.contains_key(*k)) {
        return Invalid(
            ours.into(),
            "is this version's key; the file uses the original's (trigger_ref, action_ref …): use one format"
                .into(),
        );
    }
    let qualify = |r: &str| if r.contains('.') { r.to_owned() } else { format!("{pack}.{r}") };
    let text = |k: &str| match m.get(k) {
        Some(Value::String(s)) => Ok(s.clone()),
        None | Some(Value::Null) => Err(Invalid(k.into(), "is required".into())),
        Some(_) => Err(Invalid(k.into(), "must be a string".into())),
    };
    let object = |k: &str| match m.get(k) {
        None | Some(Value::Null) => Ok(Map::new()),
        Some(Value::Object(o)) => Ok(o.clone()),
        Some(_) => Err(Invalid(k.into(), "must be a mapping".into())),
    };
    let (trigger_ref, params, action_ref, action_params) =
        match (text("trigger_ref"), object("trigger_params"), text("action_ref"), object("action_params")) {
            (Ok(t), Ok(p), Ok(a), Ok(ap)) => (qualify(&t), p, qualify(&a), ap),
            (Err(e), ..) | (_, Err(e), ..) | (_, _, Err(e), _) | (.., Err(e)) => return e,
        };
    let (trigger_type, trigger_params) = match trigger_ref.as_str() {
        "core.intervaltimer" => {
            let unit = params.get("unit").and_then(Value::as_str).unwrap_or("seconds");
            let per = match unit {
                "seconds" | "second" => 1,
                "minutes" | "minute" => 60,
                "hours" | "hour" => 3600,
                "days" | "day" => 86_400,
                other => {
                    return Invalid(
                        "trigger_params.unit".into(),
                        format!("unknown unit {other:?}; expected seconds, minutes, hours or days"),
                    )
                }
            };
            let Some(n) = params.get("interval").and_then(Value::as_u64).filter(|n| *n >= 1) else {
                return Invalid("trigger_params.interval".into(), "is required: a whole number ≥ 1".into());
            };
            ("core.interval".to_owned(), serde_json::json!({"seconds": n.saturating_mul(per)}))
        }
        "core.crontimer" => {
            let mut p = Map::new();
            for k in ["expression", "timezone"] {
                if let Some(v) = params.get(k) {
                    p.insert(k.into(), v.clone());
                }
            }
            ("core.cron".to_owned(), Value::Object(p))
        }
        "core.datetimetimer" => {
            let Some(at) = params.get("fire_at").cloned() else {
                return Invalid(
                    "trigger_params.fire_at".into(),
                    "is required (an RFC 3339 date-time)".into(),
                );
            };
            ("core.datetime".to_owned(), serde_json::json!({"at": at}))
        }
        "core.rruletimer" => {
            return Skip(
                "its trigger core.rruletimer (RRULE schedules) is not part of this version; use core.cron"
                    .into(),
            )
        }
        r if r.starts_with("core.")
            && !["core.interval", "core.cron", "core.datetime", "core.webhook"].contains(&r) =>
        {
            return Skip(format!("its trigger {r} is not part of this version"));
        }
        r => (r.to_owned(), Value::Object(params)),
    };
    let action_params = Value::Object(action_params);
    if let Some(what) =
        ["system.rule.id", "keystore"].into_iter().find(|w| uses_in_template(&action_params, w))
    {
        return Skip(format!(
            "its action_params use {{{{ {what}… }}}}, which this version's rule templates do not provide (they have event, pack.config, system.timestamp and system.rule.ref)"
        ));
    }
    let mut criteria = Map::new();
    match m.get("conditions") {
        None | Some(Value::Null) => {}
        Some(Value::Object(o)) if o.is_empty() => {}
        Some(Value::Object(o)) if o.contains_key("expression") => {
            return Skip("its conditions.expression (the original's expression language) is not translated; write `criteria`".into())
        }
        Some(Value::Array(list)) => {
            for (i, c) in list.iter().enumerate() {
                let at = |f: &str| format!("conditions.{i}.{f}");
                let Some(field) = c.get("field").and_then(Value::as_str) else {
                    return Invalid(at("field"), "is required: a dotted path into the payload".into());
                };
                let op = match c.get("operator").and_then(Value::as_str) {
                    Some("equals") => "equals",
                    Some("not_equals") => "nequals",
                    Some("contains") => "contains",
                    other => {
                        return Invalid(at("operator"), format!("{other:?}: expected equals, not_equals or contains"))
                    }
                };
                let key = format!("payload.{field}");
                if criteria.contains_key(&key) {
                    return Invalid(at("field"), format!("{field:?} has a condition already"));
                }
                let pattern = c.get("value").cloned().unwrap_or(Value::Null);
                criteria.insert(key, serde_json::json!({"type": op, "pattern": pattern}));
            }
        }
        Some(_) => {
            return Invalid(
                "conditions".into(),
                "must be a list of {field, operator, value} or {expression: …}".into(),
            )
        }
    }
    let mut out = Map::new();
    for k in ["ref", "description", "enabled"] {
        if let Some(v) = m.get(k) {
            out.insert(k.into(), v.clone());
        }
    }
    out.insert("trigger".into(), serde_json::json!({"type": trigger_type, "parameters": trigger_params}));
    out.insert("action".into(), serde_json::json!({"ref": action_ref, "parameters": action_params}));
    if !criteria.is_empty() {
        out.insert("criteria".into(), Value::Object(criteria));
    }
    let unused = RULE_KEYS_NOT_USED.iter().filter(|k| m.contains_key(**k)).map(|k| k.to_string()).collect();
    Translated::Rule(out, unused)
}

/// Whether a string anywhere in `v` has `what` inside a `{{ … }}`.
fn uses_in_template(v: &Value, what: &str) -> bool {
    match v {
        Value::String(s) => {
            s.split("{{").skip(1).any(|t| t.split("}}").next().is_some_and(|e| e.contains(what)))
        }
        Value::Array(a) => a.iter().any(|x| uses_in_template(x, what)),
        Value::Object(o) => o.values().any(|x| uses_in_template(x, what)),
        _ => false,
    }
}

/// The runtime an original `runner_type` names: its aliases (`bash`, `python3`, `nodejs`,
/// `standalone` …) and its runtime refs (`core.shell` …). The original's `builtin` is a native
/// program, not one of this version's in-process builtins.
pub(crate) fn runner_type(name: &str) -> Option<Runtime> {
    match name.to_ascii_lowercase().as_str() {
        "shell" | "bash" | "sh" | "core.shell" => Some(Runtime::Shell),
        "python" | "python3" | "core.python" => Some(Runtime::Python),
        "node" | "nodejs" | "node.js" | "core.nodejs" | "core.node" => Some(Runtime::Node),
        "native" | "builtin" | "standalone" | "core.native" => Some(Runtime::Native),
        _ => None,
    }
}

pub(crate) const RUNNER_TYPES: &str =
    "shell (bash, sh), python (python3), node (nodejs, node.js), native (builtin, standalone)";

/// The runtime of an original action that names none: the original's default is shell; its
/// bootstrap loader looked at the entry point's extension, and so does this.
pub(crate) fn runtime_from_entry_point(entry_point: &str) -> Runtime {
    match entry_point.rsplit_once('.').map(|(_, ext)| ext) {
        Some("py") => Runtime::Python,
        Some("js" | "mjs" | "cjs") => Runtime::Node,
        _ => Runtime::Shell,
    }
}

/// Whether `v` is already a JSON Schema of an object (the original passes those through).
pub(crate) fn is_json_schema(v: &Value) -> bool {
    v.get("properties").is_some_and(Value::is_object)
        || v.get("type").and_then(Value::as_str) == Some("object")
}

/// The original's flat parameter map (`name: {type, required: true, secret: true, position: 1}`)
/// as a JSON Schema: `required` lifted into the object's list, `position` dropped, `secret` kept
/// (this version's marker too). A JSON Schema is returned as it is. Errors name the field.
pub(crate) fn flat_to_schema(field: &str, v: &Value) -> Result<Value, (String, String)> {
    if is_json_schema(v) {
        return Ok(v.clone());
    }
    let Value::Object(flat) = v else {
        return Err((field.to_owned(), "must be a mapping of parameter name → its schema".into()));
    };
    let mut properties = Map::new();
    let mut required = Vec::new();
    for (name, spec) in flat {
        let Value::Object(spec) = spec else {
            return Err((
                format!("{field}.{name}"),
                "must be a mapping ({type: string, required: true, …})".into(),
            ));
        };
        let mut spec = spec.clone();
        match spec.remove("required") {
            None | Some(Value::Bool(false)) => {}
            Some(Value::Bool(true)) => required.push(Value::String(name.clone())),
            Some(_) => return Err((format!("{field}.{name}.required"), "must be true or false".into())),
        }
        spec.remove("position");
        properties.insert(name.clone(), Value::Object(spec));
    }
    let mut schema = Map::new();
    schema.insert("type".into(), Value::String("object".into()));
    schema.insert("properties".into(), Value::Object(properties));
    if !required.is_empty() {
        schema.insert("required".into(), Value::Array(required));
    }
    Ok(Value::Object(schema))
}

/// One value under two names (`label`/`name`, `output`/`output_schema` …): either, or both when
/// equal.
pub(crate) fn one_of(map: &Map<String, Value>, a: &str, b: &str) -> Result<Option<(String, Value)>, String> {
    let get = |k: &str| map.get(k).filter(|v| !v.is_null()).map(|v| (k.to_owned(), v.clone()));
    match (get(a), get(b)) {
        (Some(x), Some(y)) if x.1 != y.1 => {
            Err(format!("`{a}` and `{b}` are one setting and differ; give one"))
        }
        (x, y) => Ok(x.or(y)),
    }
}

/// An original policy (`policies/*.yaml`), as the queue policies of the actions it names.
pub(crate) struct Policy {
    /// `None`: every action of the pack (`pack_ref`, or a global policy).
    pub action: Option<String>,
    pub concurrency: Option<attune_core::action::ConcurrencyPolicy>,
    pub rate_limit: Option<attune_core::action::RateLimit>,
    pub enabled: bool,
    /// Keys accepted without use.
    pub unused: Vec<String>,
    /// A global policy (neither `action_ref` nor `pack_ref`): applied to this pack's actions only.
    pub global: bool,
}

pub(crate) const POLICY_KEYS: &[&str] = &[
    "ref",
    "name",
    "label",
    "description",
    "enabled",
    "priority",
    "tags",
    "action_ref",
    "pack_ref",
    "concurrency",
    "rate_limit",
    "quotas",
];

/// Reads an original policy: `concurrency: {limit, method: enqueue | cancel, parameters: [names]}`
/// becomes `{limit, on_limit: queue | cancel_new, key: "{{ parameters.a }}/{{ parameters.b }}"}`,
/// `rate_limit: {max_executions, window_seconds}` a bucket of `max_executions` refilled at
/// `max_executions / window_seconds` a second. Errors name the field.
pub(crate) fn read_policy(m: &Map<String, Value>, pack: &str) -> Result<Policy, (String, String)> {
    use attune_core::action::{ConcurrencyPolicy, OnLimit, RateLimit};
    let bad = |f: &str, msg: &str| Err((f.to_owned(), msg.to_owned()));
    if let Some(k) = m.keys().find(|k| !POLICY_KEYS.contains(&k.as_str())) {
        return Err((k.clone(), format!("unknown field; expected one of: {}", POLICY_KEYS.join(", "))));
    }
    let action = match m.get("action_ref") {
        None | Some(Value::Null) => None,
        Some(Value::String(r)) if r.contains('.') => Some(r.clone()),
        Some(Value::String(r)) => Some(format!("{pack}.{r}")),
        Some(_) => return bad("action_ref", "must be a string"),
    };
    let global = action.is_none()
        && match m.get("pack_ref") {
            None | Some(Value::Null) => true,
            Some(Value::String(p)) if p == pack => false,
            Some(_) => return bad("pack_ref", "must be this pack's ref"),
        };
    let concurrency = match m.get("concurrency") {
        None | Some(Value::Null) => None,
        Some(c) => {
            let Some(limit) = c.get("limit").and_then(Value::as_u64).filter(|l| (1..=10_000).contains(l))
            else {
                return bad("concurrency.limit", "is required: a whole number from 1 to 10000");
            };
            let on_limit = match c.get("method").and_then(Value::as_str) {
                None | Some("enqueue") => OnLimit::Queue,
                Some("cancel") => OnLimit::CancelNew,
                Some(_) => return bad("concurrency.method", "must be enqueue or cancel"),
            };
            let key = match c.get("parameters") {
                None | Some(Value::Null) => None,
                Some(Value::Array(names)) if names.is_empty() => None,
                Some(Value::Array(names)) => {
                    let mut parts = Vec::new();
                    for n in names {
                        match n.as_str() {
                            Some(n)
                                if n.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                                    && !n.is_empty() =>
                            {
                                parts.push(format!("{{{{ parameters.{n} }}}}"))
                            }
                            _ => return bad("concurrency.parameters", "must list parameter names"),
                        }
                    }
                    Some(parts.join("/"))
                }
                Some(_) => return bad("concurrency.parameters", "must be a list of parameter names"),
            };
            Some(ConcurrencyPolicy { limit: limit as u32, key, on_limit })
        }
    };
    let rate_limit = match m.get("rate_limit") {
        None | Some(Value::Null) => None,
        Some(r) => {
            let n = r.get("max_executions").and_then(Value::as_u64).filter(|n| (1..=100_000).contains(n));
            let w = r.get("window_seconds").and_then(Value::as_u64).filter(|w| *w >= 1);
            let (Some(n), Some(w)) = (n, w) else {
                return bad(
                    "rate_limit",
                    "needs max_executions (1 to 100000) and window_seconds (at least 1)",
                );
            };
            Some(RateLimit { per_second: n as f64 / w as f64, burst: Some(n as u32), key: None })
        }
    };
    if concurrency.is_none() && rate_limit.is_none() && !m.contains_key("quotas") {
        return bad("concurrency", "a policy needs concurrency, rate_limit or quotas");
    }
    let enabled = m.get("enabled").and_then(Value::as_bool).unwrap_or(true);
    let unused = ["name", "label", "priority", "tags", "quotas"]
        .iter()
        .filter(|k| m.contains_key(**k))
        .map(|k| k.to_string())
        .collect();
    Ok(Policy { action, concurrency, rate_limit, enabled, unused, global })
}

/// The original's workflow file (an action's `workflow_file`) as this version's definition, with
/// the original keys it does not use. `Err` says what it uses that this version cannot run (the
/// action is then skipped with that reason).
pub(crate) fn translate_workflow(v: &Value) -> Result<(Value, Vec<String>), String> {
    let Value::Object(top) = v else { return Err("a workflow file is a mapping".into()) };
    let mut unused = Vec::new();
    for k in top.keys() {
        match k.as_str() {
            "version" | "vars" | "tasks" | "output_map" => {}
            // Described by the action's own YAML here.
            "ref" | "label" | "description" | "parameters" | "output" | "tags" => {}
            "cancellation_policy" => unused.push(k.clone()),
            other => return Err(format!("its key `{other}` is not translated")),
        }
    }
    let mut out = Map::new();
    out.insert("version".into(), Value::from(1));
    if let Some(vars) = top.get("vars").filter(|v| !v.is_null()) {
        let Value::Object(vars) = vars else {
            return Err("its `vars` is a list; a mapping of names to values is expected".into());
        };
        out.insert("vars".into(), rewrite_templates(&Value::Object(vars.clone()))?);
    }
    let Some(Value::Array(list)) = top.get("tasks") else {
        return Err("its `tasks` must be a list of tasks with `name`".into());
    };
    let mut tasks = Map::new();
    for t in list {
        let Value::Object(t) = t else { return Err("a task must be a mapping".into()) };
        let Some(name) = t.get("name").and_then(Value::as_str) else {
            return Err("a task has no `name`".into());
        };
        let task = translate_task(name, t, &mut unused).map_err(|e| format!("task {name}: {e}"))?;
        if tasks.insert(name.to_owned(), task).is_some() {
            return Err(format!("two tasks are named {name}"));
        }
    }
    out.insert("tasks".into(), Value::Object(tasks));
    if let Some(o) = top.get("output_map").filter(|v| !v.is_null()) {
        out.insert("output".into(), rewrite_templates(o)?);
    }
    unused.sort();
    unused.dedup();
    Ok((Value::Object(out), unused))
}

fn translate_task(name: &str, t: &Map<String, Value>, unused: &mut Vec<String>) -> Result<Value, String> {
    if let Some(ty) = t.get("type").filter(|ty| *ty != "action") {
        return Err(format!("its type {ty} is not translated (action tasks are)"));
    }
    let mut out = Map::new();
    let mut next: Vec<Value> = Vec::new();
    for (k, v) in t {
        match k.as_str() {
            "name" | "__chart_meta__" => {}
            "type" => {}
            "action" => {
                out.insert("action".into(), v.clone());
            }
            "input" => {
                out.insert("input".into(), rewrite_templates(v)?);
            }
            "with_items" => {
                let mut with = Map::new();
                with.insert("items".into(), rewrite_templates(v)?);
                if let Some(c) = t.get("concurrency") {
                    with.insert("concurrency".into(), rewrite_templates(c)?);
                } else {
                    // The original runs the items one at a time unless told otherwise.
                    with.insert("concurrency".into(), Value::from(1));
                }
                out.insert("with".into(), Value::Object(with));
            }
            "concurrency" => {}
            "timeout" | "join" => {
                out.insert(k.clone(), v.clone());
            }
            "retry" => {
                let Value::Object(r) = v else { return Err("`retry` must be a mapping".into()) };
                for (rk, rv) in r {
                    match rk.as_str() {
                        "count" | "delay" => {}
                        "backoff" if rv == "constant" => {}
                        other => {
                            return Err(format!("retry.{other} is not translated (count and delay are)"))
                        }
                    }
                }
                let mut retry = Map::new();
                for rk in ["count", "delay"] {
                    if let Some(x) = r.get(rk) {
                        retry.insert(rk.into(), x.clone());
                    }
                }
                out.insert("retry".into(), Value::Object(retry));
            }
            "next" => {
                let Value::Array(list) = v else { return Err("`next` must be a list".into()) };
                for tr in list {
                    next.push(translate_transition(tr)?);
                }
            }
            "on_success" | "on_failure" | "on_complete" => {
                let when = match k.as_str() {
                    "on_success" => Some("{{ succeeded() }}"),
                    "on_failure" => Some("{{ failed() }}"),
                    _ => None,
                };
                let mut tr = Map::new();
                if let Some(w) = when {
                    tr.insert("when".into(), Value::String(w.into()));
                }
                tr.insert("do".into(), v.clone());
                next.push(Value::Object(tr));
            }
            "publish" => {}
            "permission_set_refs"
            | "permission_set_ref"
            | "trace_tag_template"
            | "worker_selector"
            | "worker_tolerations"
            | "worker_affinity" => unused.push(format!("tasks.{name}.{k}")),
            other => return Err(format!("its `{other}` is not translated")),
        }
    }
    // The legacy task-level `publish` goes with the first transition taken on success.
    if let Some(p) = t.get("publish") {
        let publish = publish_map(p)?;
        let succeeded =
            next.iter_mut().find(|tr| tr.get("when").and_then(Value::as_str) == Some("{{ succeeded() }}"));
        match succeeded {
            Some(Value::Object(tr)) => {
                tr.insert("publish".into(), publish);
            }
            _ => next.push(serde_json::json!({"when": "{{ succeeded() }}", "publish": publish})),
        }
    }
    if !next.is_empty() {
        out.insert("next".into(), Value::Array(next));
    }
    Ok(Value::Object(out))
}

fn translate_transition(tr: &Value) -> Result<Value, String> {
    let Value::Object(tr) = tr else { return Err("a transition must be a mapping".into()) };
    let mut out = Map::new();
    for (k, v) in tr {
        match k.as_str() {
            "when" => {
                out.insert("when".into(), rewrite_templates(v)?);
            }
            "publish" => {
                out.insert("publish".into(), publish_map(v)?);
            }
            "do" => {
                out.insert("do".into(), v.clone());
            }
            "__chart_meta__" => {}
            other => return Err(format!("a transition's `{other}` is not translated")),
        }
    }
    Ok(Value::Object(out))
}

/// `publish` as a list of one-entry mappings (the original's usual form) or a mapping.
fn publish_map(v: &Value) -> Result<Value, String> {
    let mut out = Map::new();
    let entries: Vec<&Value> = match v {
        Value::Array(list) => list.iter().collect(),
        other => vec![other],
    };
    for e in entries {
        match e {
            Value::Object(m) => {
                for (k, v) in m {
                    out.insert(k.clone(), rewrite_templates(v)?);
                }
            }
            other => return Err(format!("a publish entry {other} is not a mapping of name → value")),
        }
    }
    Ok(Value::Object(out))
}

/// Every `{{ … }}` in `v` rewritten from the original's expression language to this version's.
fn rewrite_templates(v: &Value) -> Result<Value, String> {
    Ok(match v {
        Value::String(s) if s.contains("{{") => {
            let mut out = String::new();
            let mut rest = s.as_str();
            while let Some(start) = rest.find("{{") {
                out.push_str(&rest[..start + 2]);
                let inner = &rest[start + 2..];
                let end = inner.find("}}").ok_or_else(|| format!("{s:?} has a `{{{{` without `}}}}`"))?;
                out.push_str(&rewrite_expr(&inner[..end])?);
                out.push_str("}}");
                rest = &inner[end + 2..];
            }
            out.push_str(rest);
            Value::String(out)
        }
        Value::Array(a) => Value::Array(a.iter().map(rewrite_templates).collect::<Result<_, _>>()?),
        Value::Object(m) => Value::Object(
            m.iter().map(|(k, v)| Ok((k.clone(), rewrite_templates(v)?))).collect::<Result<_, String>>()?,
        ),
        other => other.clone(),
    })
}

/// One expression of the original's language in this version's (minijinja): `parameters.x`,
/// `workflow.x`, `vars.x` and bare names are `ctx.x`; `item` is `item()`; `null` is `none`;
/// `length(x)`, `lower(x)` … are the filters of the same meaning; `contains(a, b)` is `b in a`.
/// What has no equivalent (`task.<name>`, `index`, `config`, `keystore`, `timed_out()` …) is an
/// error naming it.
pub(crate) fn rewrite_expr(e: &str) -> Result<String, String> {
    let chars: Vec<char> = e.chars().collect();
    let mut out = String::new();
    let mut i = 0;
    let mut prev_dot = false;
    while i < chars.len() {
        let c = chars[i];
        if c == '\'' || c == '"' {
            let start = i;
            i += 1;
            while i < chars.len() && chars[i] != c {
                i += if chars[i] == '\\' { 2 } else { 1 };
            }
            i = (i + 1).min(chars.len());
            out.extend(&chars[start..i]);
            prev_dot = false;
            continue;
        }
        if c.is_ascii_alphabetic() || c == '_' {
            let start = i;
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '_') {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            let mut j = i;
            while j < chars.len() && chars[j] == ' ' {
                j += 1;
            }
            let call = j < chars.len() && chars[j] == '(';
            if prev_dot {
                out.push_str(&word);
            } else if call {
                let (args, after) = call_args(&chars, j)?;
                out.push_str(&rewrite_call(&word, &args)?);
                i = after;
            } else {
                out.push_str(&match word.as_str() {
                    "and" | "or" | "not" | "in" | "is" | "if" | "else" | "true" | "false" | "none" => {
                        word.clone()
                    }
                    "True" | "False" | "None" => word.to_lowercase(),
                    "null" => "none".into(),
                    "parameters" | "workflow" | "vars" | "variables" => "ctx".into(),
                    "item" => "item()".into(),
                    "index" | "task" | "tasks" | "config" | "keystore" | "system" | "inquiry" | "pack" => {
                        return Err(format!(
                            "its expression `{}` uses `{word}`, which is not translated",
                            e.trim()
                        ))
                    }
                    _ => format!("ctx.{word}"),
                });
            }
            prev_dot = false;
            continue;
        }
        if c.is_ascii_digit() {
            // A number (with its decimals): not an identifier start.
            while i < chars.len() && (chars[i].is_ascii_digit() || chars[i] == '.') {
                out.push(chars[i]);
                i += 1;
            }
            prev_dot = false;
            continue;
        }
        out.push(c);
        if !c.is_whitespace() {
            prev_dot = c == '.';
        }
        i += 1;
    }
    Ok(out)
}

/// The arguments of a call whose `(` is at `open`, each rewritten, and the index after its `)`.
fn call_args(chars: &[char], open: usize) -> Result<(Vec<String>, usize), String> {
    let mut depth = 0;
    let mut args = Vec::new();
    let mut current = String::new();
    let mut i = open;
    let mut quote: Option<char> = None;
    while i < chars.len() {
        let c = chars[i];
        if let Some(q) = quote {
            current.push(c);
            if c == '\\' && i + 1 < chars.len() {
                current.push(chars[i + 1]);
                i += 1;
            } else if c == q {
                quote = None;
            }
        } else {
            match c {
                '\'' | '"' => {
                    quote = Some(c);
                    current.push(c);
                }
                '(' | '[' => {
                    if depth > 0 {
                        current.push(c);
                    }
                    depth += 1;
                }
                ')' | ']' => {
                    depth -= 1;
                    if depth == 0 {
                        if !current.trim().is_empty() {
                            args.push(rewrite_expr(current.trim())?);
                        }
                        return Ok((args, i + 1));
                    }
                    current.push(c);
                }
                ',' if depth == 1 => {
                    args.push(rewrite_expr(current.trim())?);
                    current.clear();
                }
                _ => current.push(c),
            }
        }
        i += 1;
    }
    Err("a call without its closing `)`".into())
}

fn rewrite_call(f: &str, args: &[String]) -> Result<String, String> {
    let one = |filter: &str| match args {
        [a] => Ok(format!("({a}) | {filter}")),
        _ => Err(format!("{f}() takes one argument here")),
    };
    match (f, args) {
        ("result" | "succeeded" | "failed", []) => Ok(format!("{f}()")),
        ("length", _) => one("length"),
        (
            "lower" | "upper" | "trim" | "abs" | "round" | "sum" | "sort" | "unique" | "min" | "max" | "int"
            | "string" | "bool",
            _,
        ) => one(f),
        ("number", _) => one("float"),
        ("reversed", _) => one("reverse | list"),
        ("keys", _) => one("list"),
        ("join", [a, sep]) => Ok(format!("({a}) | join({sep})")),
        ("split", [s, sep]) => Ok(format!("({s}) | split({sep})")),
        ("replace", [s, a, b]) => Ok(format!("({s}) | replace({a}, {b})")),
        ("contains", [hay, needle]) => Ok(format!("(({needle}) in ({hay}))")),
        ("range", _) => Ok(format!("range({})", args.join(", "))),
        _ => Err(format!("the function {f}() is not translated")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn flat_parameters_become_a_schema() {
        let flat = json!({
            "url": {"type": "string", "required": true, "position": 0},
            "token": {"type": "string", "secret": true},
            "n": {"type": "integer", "default": 3, "required": false}
        });
        let s = flat_to_schema("parameters", &flat).unwrap();
        assert_eq!(
            s,
            json!({"type": "object", "required": ["url"], "properties": {
                "url": {"type": "string"},
                "token": {"type": "string", "secret": true},
                "n": {"type": "integer", "default": 3}
            }})
        );
        let schema = json!({"type": "object", "properties": {"x": {"type": "string"}}});
        assert_eq!(flat_to_schema("parameters", &schema).unwrap(), schema);
        let e = flat_to_schema("parameters", &json!({"x": "string"})).unwrap_err();
        assert_eq!(e.0, "parameters.x");
        let e = flat_to_schema("parameters", &json!({"x": {"required": "yes"}})).unwrap_err();
        assert_eq!(e.0, "parameters.x.required");
    }

    #[test]
    fn original_rules_translate_or_say_why_not() {
        let rule = |v: Value| v.as_object().unwrap().clone();
        let r = rule(json!({
            "ref": "every_ten", "trigger_ref": "core.intervaltimer",
            "trigger_params": {"unit": "minutes", "interval": 10},
            "action_ref": "echo", "action_params": {"message": "{{ event.payload.fired_at }}"},
            "conditions": [{"field": "kind", "operator": "not_equals", "value": "x"}],
            "label": "Every ten"
        }));
        let Translated::Rule(m, unused) = translate_rule(&r, "p") else { panic!("translated") };
        assert_eq!(m["trigger"], json!({"type": "core.interval", "parameters": {"seconds": 600}}));
        assert_eq!(m["action"]["ref"], json!("p.echo"));
        assert_eq!(m["criteria"], json!({"payload.kind": {"type": "nequals", "pattern": "x"}}));
        assert_eq!(unused, vec!["label"]);
        let skip =
            rule(json!({"trigger_ref": "t", "action_ref": "a", "conditions": {"expression": "{{ true }}"}}));
        assert!(matches!(translate_rule(&skip, "p"), Translated::Skip(_)));
        let skip = rule(
            json!({"trigger_ref": "t", "action_ref": "a", "action_params": {"x": "{{ system.rule.id }}"}}),
        );
        assert!(matches!(translate_rule(&skip, "p"), Translated::Skip(w) if w.contains("system.rule.id")));
        let kept = rule(
            json!({"trigger_ref": "t", "action_ref": "a", "action_params": {"x": "{{ pack.config.url }}"}}),
        );
        assert!(matches!(translate_rule(&kept, "p"), Translated::Rule(..)));
        let bad = rule(
            json!({"trigger_ref": "t", "action_ref": "a", "conditions": [{"field": "x", "operator": "like"}]}),
        );
        assert!(
            matches!(translate_rule(&bad, "p"), Translated::Invalid(f, _) if f == "conditions.0.operator")
        );
        let bad = rule(json!({"action_ref": "a"}));
        assert!(matches!(translate_rule(&bad, "p"), Translated::Invalid(f, _) if f == "trigger_ref"));
    }

    #[test]
    fn the_originals_expressions_in_this_versions_terms() {
        for (from, to) in [
            (" parameters.hosts ", " ctx.hosts "),
            ("workflow.count + 1", "ctx.count + 1"),
            ("item.name", "item().name"),
            ("length(parameters.hosts) > 0 and not done", "(ctx.hosts) | length > 0 and not ctx.done"),
            ("result().data.items[0]", "result().data.items[0]"),
            ("succeeded()", "succeeded()"),
            ("contains(vars.hosts, 'b')", "(('b') in (ctx.hosts))"),
            ("join(split(x, ','), '-')", "((ctx.x) | split(',')) | join('-')"),
            ("x == null", "ctx.x == none"),
            ("'parameters.x'", "'parameters.x'"),
            ("3.5 * n", "3.5 * ctx.n"),
        ] {
            assert_eq!(rewrite_expr(from).unwrap(), to, "{from}");
        }
        for bad in ["task.a.result", "index", "config.url", "timed_out()", "values(x)"] {
            assert!(rewrite_expr(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn an_original_workflow_translates() {
        let wf = json!({
            "version": "1.0.0", "ref": "p.w", "vars": {"n": 0},
            "tasks": [
                {"name": "a", "action": "p.x", "with_items": "{{ parameters.l }}", "input": {"v": "{{ item }}"},
                 "next": [{"when": "{{ succeeded() }}", "publish": [{"n": "{{ length(parameters.l) }}"}], "do": ["b"]}],
                 "retry": {"count": 2, "delay": 1}},
                {"name": "b", "action": "p.y", "on_failure": "c", "publish": {"m": "{{ n }}"}},
                {"name": "c", "action": "p.z", "trace_tag_template": "t"}
            ],
            "output_map": {"n": "{{ workflow.n }}"}
        });
        let (def, unused) = translate_workflow(&wf).unwrap();
        assert_eq!(def["tasks"]["a"]["with"], json!({"items": "{{ ctx.l }}", "concurrency": 1}));
        assert_eq!(def["tasks"]["a"]["input"]["v"], "{{ item() }}");
        assert_eq!(def["tasks"]["a"]["next"][0]["publish"]["n"], "{{ (ctx.l) | length }}");
        assert_eq!(
            def["tasks"]["b"]["next"],
            json!([{"when": "{{ failed() }}", "do": "c"}, {"when": "{{ succeeded() }}", "publish": {"m": "{{ ctx.n }}"}}])
        );
        assert_eq!(def["output"], json!({"n": "{{ ctx.n }}"}));
        assert_eq!(unused, vec!["tasks.c.trace_tag_template"]);
        attune_workflow::Definition::parse(&def).expect("a valid definition");
        let parallel = json!({"version": "1", "tasks": [{"name": "a", "type": "parallel", "tasks": []}]});
        assert!(translate_workflow(&parallel).unwrap_err().contains("type"));
    }

    #[test]
    fn runner_types_and_their_aliases() {
        for (n, rt) in [
            ("bash", Runtime::Shell),
            ("SH", Runtime::Shell),
            ("python3", Runtime::Python),
            ("node.js", Runtime::Node),
            ("standalone", Runtime::Native),
            ("builtin", Runtime::Native),
            ("core.shell", Runtime::Shell),
        ] {
            assert_eq!(runner_type(n), Some(rt), "{n}");
        }
        assert_eq!(runner_type("cobol"), None);
        assert_eq!(runtime_from_entry_point("x.py"), Runtime::Python);
        assert_eq!(runtime_from_entry_point("run"), Runtime::Shell);
    }
}
