//! Events and what reacts to them: trigger types, rules (trigger → criteria → action), the events
//! that arrive and the enforcement each rule records for each event. The decisions (does a rule
//! match, what parameters does it give) are pure functions in `attune-rules`; these are the types
//! every crate shares.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

use crate::{ActionRef, PackRef, Timestamp};

/// A kind of event: built in (`core.interval`, `core.datetime`, `core.webhook`) or from a pack's
/// `triggers/`. Every event's payload must satisfy `payload` (a JSON Schema).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct TriggerType {
    #[serde(rename = "ref")]
    #[cfg_attr(feature = "openapi", schema(value_type = String, example = "core.webhook"))]
    pub type_ref: ActionRef,
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    pub pack: PackRef,
    #[serde(default)]
    pub description: String,
    /// JSON Schema of the parameters a rule gives the trigger (`{seconds: 5}`, `{name: alerts}`).
    pub parameters: Value,
    /// JSON Schema every event's payload must satisfy.
    pub payload: Value,
}

/// Which events a rule listens to: a trigger type and the parameters its instance has (a
/// webhook's name, an interval's seconds).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct TriggerSpec {
    #[serde(rename = "type")]
    #[cfg_attr(feature = "openapi", schema(value_type = String, example = "core.interval"))]
    pub type_ref: ActionRef,
    #[serde(default = "empty_object")]
    pub parameters: Value,
}

fn empty_object() -> Value {
    Value::Object(Default::default())
}

/// StackStorm's criteria operators, by the same names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum Op {
    Equals,
    Nequals,
    Iequals,
    Lessthan,
    Greaterthan,
    Contains,
    Ncontains,
    Icontains,
    Startswith,
    Endswith,
    Matchregex,
    In,
    Nin,
    Exists,
    Nexists,
}

impl Op {
    pub const ALL: [Op; 15] = [
        Op::Equals,
        Op::Nequals,
        Op::Iequals,
        Op::Lessthan,
        Op::Greaterthan,
        Op::Contains,
        Op::Ncontains,
        Op::Icontains,
        Op::Startswith,
        Op::Endswith,
        Op::Matchregex,
        Op::In,
        Op::Nin,
        Op::Exists,
        Op::Nexists,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Op::Equals => "equals",
            Op::Nequals => "nequals",
            Op::Iequals => "iequals",
            Op::Lessthan => "lessthan",
            Op::Greaterthan => "greaterthan",
            Op::Contains => "contains",
            Op::Ncontains => "ncontains",
            Op::Icontains => "icontains",
            Op::Startswith => "startswith",
            Op::Endswith => "endswith",
            Op::Matchregex => "matchregex",
            Op::In => "in",
            Op::Nin => "nin",
            Op::Exists => "exists",
            Op::Nexists => "nexists",
        }
    }
}

/// One criterion: the value at `key` (a dotted path into `payload` or `trigger`) compared by `op`
/// with `pattern`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct Criterion {
    pub key: String,
    #[serde(rename = "type")]
    pub op: Op,
    #[serde(default)]
    pub pattern: Value,
}

/// What a rule does when its previous execution is still running as it fires again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum Overlap {
    /// Run again regardless.
    #[default]
    Allow,
    /// Record a `skipped` enforcement instead.
    Skip,
    /// Keep one run waiting (a `buffered` enforcement) and start it when the running execution
    /// ends; further events meanwhile are `skipped` (Temporal's BufferOne).
    BufferOne,
}

/// The action a rule runs, with parameters that may use `{{ event.… }}`, `{{ rule.… }}` and
/// `{{ key('…') }}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct RuleAction {
    #[serde(rename = "ref")]
    #[cfg_attr(feature = "openapi", schema(value_type = String, example = "core.echo"))]
    pub action_ref: ActionRef,
    #[serde(default = "empty_object")]
    pub parameters: Value,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Rule {
    #[serde(rename = "ref")]
    #[cfg_attr(feature = "openapi", schema(value_type = String, example = "ops.restart_on_failure"))]
    pub rule_ref: ActionRef,
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    pub pack: PackRef,
    #[serde(default)]
    pub description: String,
    pub enabled: bool,
    pub trigger: TriggerSpec,
    /// All must hold, in this order.
    pub criteria: Vec<Criterion>,
    pub action: RuleAction,
    #[serde(default)]
    pub overlap: Overlap,
    /// Its pack's configuration (`config` in `pack.yaml`) as loaded with it: `{{ pack.config.x }}`
    /// in its parameters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pack_config: Option<Value>,
}

/// Something that happened: a webhook call, a timer's tick, an emitted or sensed event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct TriggerEvent {
    pub id: Uuid,
    #[cfg_attr(feature = "openapi", schema(value_type = String, example = "core.webhook"))]
    pub trigger: ActionRef,
    /// The trigger instance's parameters (`{name: alerts}`); rules match on them.
    pub trigger_parameters: Value,
    pub payload: Value,
    /// Who or what produced it: `webhook:alerts`, `timer`, `user:admin`, `sensor:…`.
    pub source: String,
    /// A timer's tick that fired late, standing for every tick missed while no server ran.
    pub late: bool,
    pub created_at: Timestamp,
    /// When every rule had recorded its enforcement.
    pub processed_at: Option<Timestamp>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// The criteria held; `execution_id` is what it started.
    Matched,
    /// A criterion did not hold; `reason` says which.
    NotMatched,
    /// The parameters could not be rendered or were refused; `reason` says why.
    Failed,
    /// The rule's previous execution was still running (`overlap: skip`), or one run was already
    /// waiting (`overlap: buffer_one`).
    Skipped,
    /// Waits for the rule's running execution to end (`overlap: buffer_one`); then becomes
    /// `matched` with the execution it started.
    Buffered,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Matched => "matched",
            Outcome::NotMatched => "not_matched",
            Outcome::Failed => "failed",
            Outcome::Skipped => "skipped",
            Outcome::Buffered => "buffered",
        }
    }
    pub const ALL: [Outcome; 5] =
        [Outcome::Matched, Outcome::NotMatched, Outcome::Failed, Outcome::Skipped, Outcome::Buffered];
    pub fn parse(s: &str) -> Option<Outcome> {
        Outcome::ALL.into_iter().find(|o| o.as_str() == s)
    }
}

/// What one rule did with one event: exactly one per (event, rule).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Enforcement {
    pub id: Uuid,
    pub event_id: Uuid,
    #[cfg_attr(feature = "openapi", schema(value_type = String))]
    pub rule_ref: ActionRef,
    pub outcome: Outcome,
    pub execution_id: Option<Uuid>,
    pub reason: Option<String>,
    pub created_at: Timestamp,
}

/// An execution a rule starts: its enforcement is recorded in the same transaction, and the
/// execution is not created when that (event, rule) was enforced already.
#[derive(Debug, Clone, PartialEq)]
pub struct Enforcing {
    pub id: Uuid,
    pub event_id: Uuid,
    pub rule_ref: ActionRef,
}

/// The trigger types every server has.
pub fn builtin_trigger_types() -> Vec<TriggerType> {
    let t = |name: &str, description: &str, parameters: Value, payload: Value| TriggerType {
        type_ref: ActionRef::parse(&format!("core.{name}")).expect("a valid built-in name"),
        pack: PackRef::parse("core").expect("a valid pack name"),
        description: description.into(),
        parameters,
        payload,
    };
    let tick = serde_json::json!({
        "type": "object",
        "properties": {
            "scheduled_at": {"type": "string", "description": "when the tick was due (RFC 3339)"},
            "fired_at": {"type": "string"},
            "missed": {"type": "integer", "description": "ticks missed while no server ran (late events)"}
        }
    });
    vec![
        t(
            "interval",
            "Fires every `seconds`, on one server of several, exactly once per tick; ticks missed \
             while no server ran fire once, late.",
            serde_json::json!({
                "type": "object", "additionalProperties": false, "required": ["seconds"],
                "properties": {"seconds": {"type": "integer", "minimum": 1, "maximum": 31_536_000}}
            }),
            tick.clone(),
        ),
        t(
            "cron",
            "Fires when a cron expression matches the wall clock of `timezone` (IANA name, default UTC): 5 \
             fields, or 6 with seconds first. A time skipped by a daylight-saving change fires when the \
             skipped hour ends; a repeated time fires once, at its first occurrence.",
            serde_json::json!({
                "type": "object", "additionalProperties": false, "required": ["expression"],
                "properties": {
                    "expression": {"type": "string", "examples": ["*/5 * * * *", "0 9 * * MON-FRI"]},
                    "timezone": {"type": "string", "examples": ["Europe/Berlin"]}
                }
            }),
            tick.clone(),
        ),
        t(
            "datetime",
            "Fires once at `at` (RFC 3339), or at once (late) if a server first sees it after then.",
            serde_json::json!({
                "type": "object", "additionalProperties": false, "required": ["at"],
                "properties": {"at": {"type": "string", "format": "date-time"}}
            }),
            tick,
        ),
        t(
            "webhook",
            "Fires on POST /api/v1/webhooks/{name} with the JSON body as payload; with `secret_key`, \
             the request must carry X-Attune-Signature: sha256=<HMAC-SHA256 of the body under that key's value>.",
            serde_json::json!({
                "type": "object", "additionalProperties": false, "required": ["name"],
                "properties": {
                    "name": {"type": "string", "pattern": "^[A-Za-z0-9._-]{1,128}$"},
                    "secret_key": {"type": "string", "pattern": "^[A-Za-z0-9._-]{1,128}$"}
                }
            }),
            serde_json::json!({}),
        ),
    ]
}
