//! A new execution and the rules every source of work goes through before the store accepts one
//! (the API, dead-letter requeue, and later rules, timers, webhooks, workflows and inquiries):
//! parameters an object, the bounds on timeouts, attempts and backoff, the action's defaults.
//! Validation of the parameters against the action's JSON Schema is done by the caller (it needs
//! a schema validator, which this crate does not carry); `attune-server/src/submission.rs` is the
//! one caller that does both.

use serde_json::Value;
use uuid::Uuid;

use crate::{Action, ExecutionStatus, ParameterDelivery, ParameterFormat, Runtime};

/// Most attempts an execution may have.
pub const MAX_ATTEMPTS_LIMIT: u32 = 100;
/// Longest backoff between attempts (a day).
pub const MAX_BACKOFF_SECONDS: u64 = 86_400;
/// Longest an action may be given to run (30 days).
pub const MAX_TIMEOUT_SECONDS: u64 = 30 * 86_400;

/// Checks a timeout, from a submission or an action definition.
pub fn check_timeout(t: Option<u64>) -> Result<(), String> {
    match t {
        Some(t) if !(1..=MAX_TIMEOUT_SECONDS).contains(&t) => {
            Err(format!("timeout_seconds must be between 1 and {MAX_TIMEOUT_SECONDS} (30 days), not {t}"))
        }
        _ => Ok(()),
    }
}

/// The first string (key or value) in `v` that holds a NUL character, as a dotted path.
fn nul_at(v: &Value, path: &str) -> Option<String> {
    let join = |k: &str| if path.is_empty() { k.to_owned() } else { format!("{path}.{k}") };
    match v {
        Value::String(s) if s.contains('\0') => Some(path.to_owned()),
        Value::Array(items) => items.iter().enumerate().find_map(|(i, x)| nul_at(x, &join(&i.to_string()))),
        Value::Object(m) => m.iter().find_map(|(k, x)| {
            if k.contains('\0') {
                Some(join(&k.replace('\0', "\\0")))
            } else {
                nul_at(x, &join(k))
            }
        }),
        _ => None,
    }
}

/// An execution about to be accepted: validated, with its action's definition snapshotted.
#[derive(Debug, Clone, PartialEq)]
pub struct NewExecution {
    pub action: Action,
    pub parameters: Value,
    pub timeout_seconds: Option<u64>,
    pub max_attempts: u32,
    /// Who submitted it, for history (`api`, `dlq_requeue`, …).
    pub actor: String,
    pub parent: Option<Uuid>,
    pub trace_id: Option<String>,
    /// The rule enforcement that starts it: recorded with it, or neither (`Enforcing`).
    pub enforces: Option<crate::rules::Enforcing>,
    /// A dead letter this execution requeues: marked requeued in the same transaction, and the
    /// execution is not created if it was requeued already.
    pub requeue_of: Option<Uuid>,
    /// Its concurrency slot's key (`<action>/<rendered key>`) and limit, when its action has a
    /// concurrency policy (set by the submission service, which renders the key).
    pub concurrency: Option<(String, u32)>,
    /// Its rate bucket's key (`<action>/<rendered key>`), rate per second and burst, when its
    /// action has a rate limit.
    pub rate: Option<(String, f64, u32)>,
    /// A workflow child's identity within its workflow (`parent`): `task/iteration[/item]`. The
    /// store keeps (parent, key) unique, so a child is never created twice.
    pub child_key: Option<String>,
}

impl NewExecution {
    /// The status it has once accepted (`requested → scheduled` in one step: parameters are
    /// validated before the store sees it) and the reason recorded for that step.
    pub fn accepted(&self) -> (ExecutionStatus, String) {
        let reason = match self.queue() {
            Runtime::Workflow => "parameters valid; queued for the server's workflow engine".to_owned(),
            Runtime::Inquiry => "parameters valid; queued to be asked".to_owned(),
            q => format!("parameters valid; queued for a {q} worker"),
        };
        (ExecutionStatus::Scheduled, reason)
    }

    /// The queue it waits in: its runtime's.
    pub fn queue(&self) -> Runtime {
        self.action.runtime
    }
}

/// What a submission may change about how its action runs.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Overrides {
    pub timeout_seconds: Option<u64>,
    pub max_attempts: Option<u32>,
    pub backoff_seconds: Option<u64>,
    /// Overrides the action's `scheduled_timeout_seconds`.
    pub scheduled_timeout_seconds: Option<u64>,
    /// Replaces the action's `worker_selector`.
    pub worker_selector: Option<std::collections::BTreeMap<String, String>>,
    /// Overrides the action's `priority`.
    pub priority: Option<i32>,
}

/// Longest an execution may wait to be started (30 days).
pub const MAX_SCHEDULED_TIMEOUT_SECONDS: u64 = 30 * 86_400;

/// Checks a schedule-to-start timeout, from a submission or an action definition.
pub fn check_scheduled_timeout(t: Option<u64>) -> Result<(), String> {
    match t {
        Some(t) if !(1..=MAX_SCHEDULED_TIMEOUT_SECONDS).contains(&t) => Err(format!(
            "scheduled_timeout_seconds must be between 1 and {MAX_SCHEDULED_TIMEOUT_SECONDS} (30 days), not {t}"
        )),
        _ => Ok(()),
    }
}

/// Where a submission comes from.
#[derive(Debug, Clone, PartialEq)]
pub struct Origin {
    pub actor: String,
    pub parent: Option<Uuid>,
    pub trace_id: Option<String>,
    pub enforces: Option<crate::rules::Enforcing>,
    pub requeue_of: Option<Uuid>,
    /// A workflow child's identity (`NewExecution::child_key`).
    pub child_key: Option<String>,
}

impl Origin {
    pub fn actor(actor: impl Into<String>) -> Origin {
        Origin {
            actor: actor.into(),
            parent: None,
            trace_id: None,
            enforces: None,
            requeue_of: None,
            child_key: None,
        }
    }
}

/// Why a submission is refused: a stable code and a message that names the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct Invalid {
    pub code: &'static str,
    pub message: String,
}

fn invalid(code: &'static str, message: impl Into<String>) -> Invalid {
    Invalid { code, message: message.into() }
}

/// Applies the bounds and the action's defaults. `parameters` must already have passed the
/// action's schema.
pub fn prepare(
    mut action: Action,
    parameters: Value,
    o: &Overrides,
    origin: Origin,
) -> Result<NewExecution, Invalid> {
    if !action.enabled {
        return Err(invalid(
            "action_disabled",
            format!(
                "{} is disabled (enabled: false in its pack's YAML); nothing was submitted",
                action.action_ref
            ),
        ));
    }
    if !parameters.is_object() {
        return Err(invalid("invalid_parameters", "parameters must be a JSON object"));
    }
    if o.timeout_seconds == Some(0) {
        return Err(invalid("invalid_timeout", "timeout_seconds must be at least 1"));
    }
    check_timeout(o.timeout_seconds).map_err(|m| invalid("invalid_timeout", m))?;
    // JSON and YAML carry a NUL in a string (escaped); the environment and dotenv files cannot.
    let carrier = match (action.parameter_delivery, action.parameter_format) {
        (ParameterDelivery::Env, _) => Some("environment variables (parameter_delivery: env)"),
        (_, ParameterFormat::Dotenv) => Some("the dotenv format"),
        _ => None,
    };
    if let (Some(carrier), Some(at)) = (carrier, nul_at(&parameters, "")) {
        return Err(invalid(
            "invalid_parameters",
            format!(
                "parameter {at} contains a NUL character, which {carrier} cannot carry to {}",
                action.action_ref
            ),
        ));
    }
    let max_attempts = o.max_attempts.unwrap_or(action.retry.max_attempts);
    if max_attempts == 0 || max_attempts > MAX_ATTEMPTS_LIMIT {
        return Err(invalid(
            "invalid_max_attempts",
            format!("max_attempts must be between 1 and {MAX_ATTEMPTS_LIMIT}"),
        ));
    }
    if let Some(b) = o.backoff_seconds {
        if b > MAX_BACKOFF_SECONDS {
            return Err(invalid(
                "invalid_backoff",
                format!("backoff_seconds must be at most {MAX_BACKOFF_SECONDS}"),
            ));
        }
        // The execution keeps its own snapshot of the action, retry policy included.
        action.retry.backoff_seconds = b;
    }
    action.retry.max_attempts = max_attempts;
    check_scheduled_timeout(o.scheduled_timeout_seconds)
        .map_err(|m| invalid("invalid_scheduled_timeout", m))?;
    // The snapshot carries the execution's own queue policy.
    if let Some(t) = o.scheduled_timeout_seconds {
        action.scheduled_timeout_seconds = Some(t);
    }
    if let Some(sel) = &o.worker_selector {
        for (k, v) in sel {
            if !crate::action::valid_label_name(k)
                || crate::action::label_value(&Value::String(v.clone())).is_err()
            {
                return Err(invalid(
                    "invalid_worker_selector",
                    format!("worker_selector: label {k:?} must be 1 to 63 of A-Z a-z 0-9 . _ - with a short text value"),
                ));
            }
        }
        action.worker_selector = sel.clone();
    }
    if let Some(p) = o.priority {
        if !crate::action::PRIORITY_RANGE.contains(&p) {
            return Err(invalid(
                "invalid_priority",
                format!("priority must be between -100 and 100, not {p}"),
            ));
        }
        action.priority = p;
    }
    Ok(NewExecution {
        timeout_seconds: o.timeout_seconds.or(action.timeout_seconds),
        action,
        parameters,
        max_attempts,
        actor: origin.actor,
        parent: origin.parent,
        trace_id: origin.trace_id,
        enforces: origin.enforces,
        requeue_of: origin.requeue_of,
        concurrency: None,
        rate: None,
        child_key: origin.child_key,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{ActionRef, PackRef, RetryPolicy};
    use serde_json::json;

    fn action(delivery: ParameterDelivery, format: ParameterFormat) -> Action {
        Action {
            action_ref: ActionRef::parse("p.a").unwrap(),
            pack: PackRef::parse("p").unwrap(),
            description: String::new(),
            runtime: Runtime::Shell,
            entry_point: "a.sh".into(),
            parameters: json!({"type": "object"}),
            parameter_delivery: delivery,
            parameter_format: format,
            output_format: Default::default(),
            timeout_seconds: None,
            retry: RetryPolicy::default(),
            pack_dir: None,
            pack_digest: None,
            scheduled_timeout_seconds: None,
            worker_selector: Default::default(),
            concurrency: None,
            rate_limit: None,
            priority: 0,
            workflow: None,
            enabled: true,
            output_schema: None,
            dialect: Default::default(),
        }
    }

    fn prep(a: Action, p: Value, o: Overrides) -> Result<NewExecution, Invalid> {
        prepare(a, p, &o, Origin::actor("t"))
    }

    #[test]
    fn bounds() {
        let a = || action(ParameterDelivery::Stdin, ParameterFormat::Json);
        let t = |t| Overrides { timeout_seconds: Some(t), ..Default::default() };
        assert_eq!(prep(a(), json!({}), t(u64::MAX)).unwrap_err().code, "invalid_timeout");
        assert_eq!(prep(a(), json!({}), t(0)).unwrap_err().code, "invalid_timeout");
        assert_eq!(
            prep(a(), json!({}), t(MAX_TIMEOUT_SECONDS)).unwrap().timeout_seconds,
            Some(MAX_TIMEOUT_SECONDS)
        );
        let m = Overrides { max_attempts: Some(MAX_ATTEMPTS_LIMIT + 1), ..Default::default() };
        assert_eq!(prep(a(), json!({}), m).unwrap_err().code, "invalid_max_attempts");
        let b = Overrides { backoff_seconds: Some(MAX_BACKOFF_SECONDS + 1), ..Default::default() };
        assert_eq!(prep(a(), json!({}), b).unwrap_err().code, "invalid_backoff");
    }

    #[test]
    fn a_nul_goes_where_it_can_be_carried() {
        let p = json!({"ok": "x", "deep": {"list": ["y", "a\u{0}b"]}});
        for (d, f) in [
            (ParameterDelivery::Stdin, ParameterFormat::Json),
            (ParameterDelivery::File, ParameterFormat::Yaml),
        ] {
            assert!(prep(action(d, f), p.clone(), Overrides::default()).is_ok());
        }
        for (d, f) in [
            (ParameterDelivery::Env, ParameterFormat::Json),
            (ParameterDelivery::Stdin, ParameterFormat::Dotenv),
        ] {
            let e = prep(action(d, f), p.clone(), Overrides::default()).unwrap_err();
            assert_eq!(e.code, "invalid_parameters");
            assert!(e.message.contains("parameter deep.list.1 contains a NUL"), "{}", e.message);
        }
    }
}
