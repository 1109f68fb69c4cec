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
    if let Some(what) = ["pack.config", "system."].into_iter().find(|w| uses_in_template(&action_params, w)) {
        return Skip(format!(
            "its action_params use {{{{ {what}… }}}}, which this version's rule templates do not provide (they have event and rule)"
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
            json!({"trigger_ref": "t", "action_ref": "a", "action_params": {"x": "{{ pack.config.url }}"}}),
        );
        assert!(matches!(translate_rule(&skip, "p"), Translated::Skip(w) if w.contains("pack.config")));
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
