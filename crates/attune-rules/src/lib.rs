//! The rules engine, pure: which rules an event concerns (`concerns`), whether a rule's criteria
//! hold (`evaluate`), and the parameters it gives its action (`render`); `decide` puts them
//! together. No I/O and no clock: the server's event processor and `attune rule test` run this same
//! code, so the tester cannot match where the engine does not.

use std::{
    collections::HashMap,
    sync::{Mutex, OnceLock},
};

use attune_core::rules::{Criterion, Op, Rule, TriggerEvent};
use regex::Regex;
use serde_json::{json, Value};

/// Whether `event` is of the rule's trigger: the same type, and every parameter the rule gives
/// the trigger equal in the event's (a webhook's `name`, an interval's `seconds`).
pub fn concerns(rule: &Rule, event: &TriggerEvent) -> bool {
    if rule.trigger.type_ref != event.trigger {
        return false;
    }
    // A webhook is named by its name alone; `secret_key` is how its calls are checked.
    if rule.trigger.type_ref.as_str() == "core.webhook" {
        return rule.trigger.parameters.get("name") == event.trigger_parameters.get("name");
    }
    subset(&rule.trigger.parameters, &event.trigger_parameters)
}

fn subset(want: &Value, have: &Value) -> bool {
    match (want, have) {
        (Value::Object(w), Value::Object(h)) => w.iter().all(|(k, v)| h.get(k) == Some(v)),
        (Value::Object(w), Value::Null) => w.is_empty(),
        (Value::Null, _) => true,
        (w, h) => w == h,
    }
}

/// One criterion as evaluated: the value found at its key (`None`: absent), and the verdict.
#[derive(Debug, Clone, PartialEq)]
pub struct Check {
    pub key: String,
    pub op: Op,
    pub pattern: Value,
    pub value: Option<Value>,
    pub holds: bool,
    /// Why it does not hold (or an empty string).
    pub why: String,
}

/// Every criterion of a rule against one event, in the rule's order.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Evaluation {
    pub checks: Vec<Check>,
}

impl Evaluation {
    /// All criteria hold (a rule without criteria matches every event of its trigger).
    pub fn matched(&self) -> bool {
        self.checks.iter().all(|c| c.holds)
    }

    /// The first criterion that does not hold, said as an enforcement's reason.
    pub fn first_failure(&self) -> Option<String> {
        self.checks.iter().find(|c| !c.holds).map(|c| {
            let found = match &c.value {
                Some(v) => v.to_string(),
                None => "nothing".into(),
            };
            format!("{} {} {}: found {found}; {}", c.key, c.op.as_str(), c.pattern, c.why)
        })
    }
}

/// What a rule does with an event.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// Run the action with these parameters (keys left as `{{ key('…') }}` for hand-out).
    Run(Value),
    NotMatched(String),
    Failed(String),
}

/// The values templates and criteria see: `event` (`id`, `trigger`, `parameters`, `payload`,
/// `source`, `late`, `created_at`), `rule` (`ref`, `pack`, `description`), `pack` (`ref`, `config`:
/// its pack's configuration) and, for packs written for the original Attune, `system`
/// (`timestamp`: the event's time, no clock is read; `rule.ref`).
pub fn context(rule: &Rule, event: &TriggerEvent) -> Value {
    json!({
        "pack": {"ref": rule.pack, "config": rule.pack_config.clone().unwrap_or_else(|| json!({}))},
        "system": {"timestamp": event.created_at, "rule": {"ref": rule.rule_ref}},
        "event": {
            "id": event.id,
            "trigger": event.trigger,
            "parameters": event.trigger_parameters,
            "payload": event.payload,
            "source": event.source,
            "late": event.late,
            "created_at": event.created_at,
        },
        "rule": {"ref": rule.rule_ref, "pack": rule.pack, "description": rule.description},
    })
}

/// Evaluates every criterion (not only up to the first failure: the tester shows them all).
pub fn evaluate(rule: &Rule, event: &TriggerEvent) -> Evaluation {
    let root = json!({"payload": event.payload, "trigger": event.trigger_parameters});
    Evaluation { checks: rule.criteria.iter().map(|c| check(c, lookup(&root, &c.key))).collect() }
}

/// The action's parameters rendered over `context`; keys stay for hand-out, and text from the
/// event cannot become a template (`attune_template::render_deferring_keys`).
pub fn render(rule: &Rule, event: &TriggerEvent) -> Result<Value, String> {
    attune_template::render_deferring_keys(
        &rule.action.parameters,
        "action.parameters",
        &context(rule, event),
    )
    .map_err(|e| e.to_string())
}

/// The evaluation, and what follows from it.
pub fn decide(rule: &Rule, event: &TriggerEvent) -> (Evaluation, Decision) {
    let evaluation = evaluate(rule, event);
    let decision = match evaluation.first_failure() {
        Some(why) => Decision::NotMatched(why),
        None => match render(rule, event) {
            Ok(p) => Decision::Run(p),
            Err(e) => Decision::Failed(format!("the action's parameters could not be rendered: {e}")),
        },
    };
    (evaluation, decision)
}

/// The value at a dotted path (`payload.items.0.name`); a number indexes a list.
pub fn lookup<'a>(root: &'a Value, key: &str) -> Option<&'a Value> {
    key.split('.').try_fold(root, |v, seg| match v {
        Value::Object(o) => o.get(seg),
        Value::Array(a) => seg.parse::<usize>().ok().and_then(|i| a.get(i)),
        _ => None,
    })
}

/// What can be checked of a criterion when its rule is loaded: the key's root, and a pattern of
/// the kind its operator needs (a regex that compiles, a list for `in`, a number for comparisons).
pub fn check_criterion(c: &Criterion) -> Result<(), String> {
    let root = c.key.split('.').next().unwrap_or_default();
    if !matches!(root, "payload" | "trigger") || c.key.split('.').any(str::is_empty) {
        return Err(format!(
            "key {:?} must be a dotted path starting with `payload` or `trigger` (payload.status)",
            c.key
        ));
    }
    match c.op {
        Op::Matchregex => match c.pattern.as_str() {
            Some(p) => Regex::new(p).map(drop).map_err(|e| format!("pattern is not a valid regex: {e}")),
            None => Err("matchregex needs a string pattern (a regex)".into()),
        },
        Op::In | Op::Nin if !c.pattern.is_array() => Err(format!("{} needs a list pattern", c.op.as_str())),
        Op::Lessthan | Op::Greaterthan if number(&c.pattern).is_none() => {
            Err(format!("{} needs a number pattern", c.op.as_str()))
        }
        Op::Iequals | Op::Icontains | Op::Startswith | Op::Endswith if !c.pattern.is_string() => {
            Err(format!("{} needs a string pattern", c.op.as_str()))
        }
        _ => Ok(()),
    }
}

fn check(c: &Criterion, value: Option<&Value>) -> Check {
    let (holds, why) = verdict(c.op, &c.pattern, value);
    Check { key: c.key.clone(), op: c.op, pattern: c.pattern.clone(), value: value.cloned(), holds, why }
}

fn verdict(op: Op, pattern: &Value, value: Option<&Value>) -> (bool, String) {
    let Some(v) = value else {
        return match op {
            Op::Nexists => (true, String::new()),
            Op::Exists => (false, "the key is absent".into()),
            _ => (false, "the key is absent".into()),
        };
    };
    let yes = |b: bool, why: &str| (b, if b { String::new() } else { why.to_owned() });
    match op {
        Op::Exists => (true, String::new()),
        Op::Nexists => (false, "the key is present".into()),
        Op::Equals => yes(equal(v, pattern), "not equal"),
        Op::Nequals => yes(!equal(v, pattern), "equal"),
        Op::Iequals => match (v.as_str(), pattern.as_str()) {
            (Some(a), Some(b)) => yes(a.to_lowercase() == b.to_lowercase(), "not equal ignoring case"),
            _ => (false, "iequals compares strings".into()),
        },
        Op::Lessthan | Op::Greaterthan => match (number(v), number(pattern)) {
            (Some(a), Some(b)) if op == Op::Lessthan => yes(a < b, "not less"),
            (Some(a), Some(b)) => yes(a > b, "not greater"),
            _ => (false, "not a number".into()),
        },
        Op::Contains => yes(contains(v, pattern, false), "not contained"),
        Op::Ncontains => yes(!contains(v, pattern, false), "contained"),
        Op::Icontains => yes(contains(v, pattern, true), "not contained ignoring case"),
        Op::Startswith | Op::Endswith => match (v.as_str(), pattern.as_str()) {
            (Some(a), Some(b)) if op == Op::Startswith => yes(a.starts_with(b), "does not start so"),
            (Some(a), Some(b)) => yes(a.ends_with(b), "does not end so"),
            _ => (false, format!("{} compares strings", op.as_str())),
        },
        Op::Matchregex => match (v.as_str(), pattern.as_str().and_then(regex)) {
            (Some(s), Some(re)) => yes(re.is_match(s), "no match"),
            (None, _) => (false, "matchregex matches strings".into()),
            (_, None) => (false, "the pattern is not a valid regex".into()),
        },
        Op::In | Op::Nin => match pattern.as_array() {
            Some(list) => {
                let found = list.iter().any(|p| equal(v, p));
                if op == Op::In {
                    yes(found, "not in the list")
                } else {
                    yes(!found, "in the list")
                }
            }
            None => (false, format!("{} needs a list pattern", op.as_str())),
        },
    }
}

/// JSON equality, with numbers compared by value (1 = 1.0) and a string equal to a number or a
/// boolean written the same way ("2" = 2, "true" = true): webhook payloads often carry text.
fn equal(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x.as_f64() == y.as_f64(),
        (Value::String(s), other @ (Value::Number(_) | Value::Bool(_)))
        | (other @ (Value::Number(_) | Value::Bool(_)), Value::String(s)) => {
            let written = other.to_string();
            s.trim() == written.as_str() || (other.is_number() && number(a) == number(b))
        }
        _ => a == b,
    }
}

fn number(v: &Value) -> Option<f64> {
    match v {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.trim().parse::<f64>().ok().filter(|f| f.is_finite()),
        _ => None,
    }
}

fn contains(v: &Value, p: &Value, fold: bool) -> bool {
    let text = |s: &str| if fold { s.to_lowercase() } else { s.to_owned() };
    match (v, p) {
        (Value::String(s), Value::String(q)) => text(s).contains(&text(q)),
        (Value::Array(items), _) => items.iter().any(|i| match (i, p) {
            (Value::String(a), Value::String(b)) if fold => a.to_lowercase() == b.to_lowercase(),
            _ => equal(i, p),
        }),
        (Value::Object(o), Value::String(k)) => {
            if fold {
                o.keys().any(|x| x.to_lowercase() == k.to_lowercase())
            } else {
                o.contains_key(k)
            }
        }
        _ => false,
    }
}

/// Compiled patterns, kept: rules are few and events many.
fn regex(p: &str) -> Option<Regex> {
    static CACHE: OnceLock<Mutex<HashMap<String, Option<Regex>>>> = OnceLock::new();
    let cache = CACHE.get_or_init(Default::default);
    let mut c = cache.lock().unwrap_or_else(|e| e.into_inner());
    if c.len() > 10_000 {
        c.clear();
    }
    c.entry(p.to_owned()).or_insert_with(|| Regex::new(p).ok()).clone()
}

pub mod schedule;

#[cfg(test)]
mod tests;
