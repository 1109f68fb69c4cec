//! `attune trigger`, `attune rule`, `attune event`, `attune sensor`: what starts work by itself.

use attune_core::rules::{Enforcement, Rule, TriggerEvent};
use attune_core::sensors::SensorState;
use attune_wire::{EmitEvent, TestRule};
use clap::Subcommand;
use serde_json::Value;

use crate::{
    cmds::{parse_params, usage},
    output::{ago, print, Table},
    Ctx,
};

#[derive(Subcommand)]
pub enum TriggerCmd {
    /// Trigger types: the built-in ones (core.interval, core.datetime, core.webhook) and packs' own.
    List,
}

#[derive(Subcommand)]
pub enum RuleCmd {
    /// Rules, with their trigger and action.
    List,
    /// A rule and its latest enforcements.
    Show { rule: String },
    /// Enable a rule (kept across reloads of its pack). Administrators only.
    Enable { rule: String },
    /// Disable a rule (kept across reloads of its pack). Administrators only.
    Disable { rule: String },
    /// Try a rule on a payload or a stored event, with no side effects: each criterion with its
    /// value and verdict, and the parameters it would run its action with.
    Test {
        rule: String,
        /// The event's payload, as JSON.
        #[arg(long, conflicts_with = "event")]
        payload: Option<String>,
        /// The trigger instance's parameters, as JSON (default: the rule's own).
        #[arg(long, conflicts_with = "event")]
        trigger_parameters: Option<String>,
        /// A stored event's id (`attune event list`).
        #[arg(long)]
        event: Option<uuid::Uuid>,
    },
}

#[derive(Subcommand)]
pub enum SensorCmd {
    /// Sensors: where each runs, its restarts, its last error, the events it emitted.
    List,
    /// One sensor in full.
    Show { sensor: String },
    /// Enable a sensor (kept across reloads of its pack): a capable worker starts it at its next
    /// heartbeat. Administrators only.
    Enable { sensor: String },
    /// Disable a sensor (kept across reloads of its pack): its worker stops it at its next
    /// heartbeat. Administrators only.
    Disable { sensor: String },
}

#[derive(Subcommand)]
pub enum EventCmd {
    /// Stored events, newest first.
    List {
        #[arg(long)]
        trigger: Option<String>,
        #[arg(long, default_value_t = 50)]
        limit: u32,
    },
    /// An event and what each rule did with it.
    Get { id: uuid::Uuid },
    /// Emit an event of a trigger type: attune event emit examples.disk_alert host=db1 used=93
    Emit {
        trigger: String,
        /// Payload fields as key=value (values that parse as JSON are JSON).
        fields: Vec<String>,
        /// The whole payload as JSON (key=value fields are merged over it).
        #[arg(long)]
        payload_json: Option<String>,
        /// The trigger instance's parameters, as JSON.
        #[arg(long)]
        parameters_json: Option<String>,
    },
}

fn json_arg(what: &str, s: Option<&str>) -> anyhow::Result<Option<Value>> {
    s.map(|s| serde_json::from_str(s).map_err(|e| usage(format!("{what} is not JSON: {e}")))).transpose()
}

fn enforcement_rows(t: &mut Table, es: &[Enforcement]) {
    for e in es {
        t.row(vec![
            e.rule_ref.to_string(),
            e.outcome.as_str().to_owned(),
            e.execution_id.map(|x| x.to_string()).unwrap_or_else(|| "-".into()),
            e.reason.clone().unwrap_or_default(),
        ]);
    }
}

fn event_fields(e: &TriggerEvent) -> Vec<(&'static str, String)> {
    vec![
        ("id", e.id.to_string()),
        ("trigger", format!("{} {}", e.trigger, e.trigger_parameters)),
        ("source", e.source.clone()),
        (
            "created",
            format!(
                "{} ({})",
                e.created_at.to_datetime().format("%Y-%m-%d %H:%M:%S"),
                ago(attune_core::Timestamp::now().millis() - e.created_at.millis())
            ),
        ),
        ("late", e.late.to_string()),
        ("processed", if e.processed_at.is_some() { "yes".into() } else { "not yet".into() }),
        ("payload", e.payload.to_string()),
    ]
}

fn rule_row(r: &Rule) -> Vec<String> {
    vec![
        r.rule_ref.to_string(),
        if r.enabled { "yes".into() } else { "no".into() },
        format!("{} {}", r.trigger.type_ref, r.trigger.parameters),
        r.action.action_ref.to_string(),
        r.criteria.len().to_string(),
    ]
}

pub async fn trigger(ctx: &Ctx, c: TriggerCmd) -> anyhow::Result<i32> {
    match c {
        TriggerCmd::List => {
            let ts = ctx.client.list_triggers().await?;
            print(ctx.output, &ts, || {
                let mut t = Table::new(vec!["TRIGGER", "PARAMETERS", "DESCRIPTION"]);
                for x in &ts {
                    let params = x.parameters["properties"]
                        .as_object()
                        .map(|o| o.keys().cloned().collect::<Vec<_>>().join(", "));
                    t.row(vec![x.type_ref.to_string(), params.unwrap_or_default(), x.description.clone()]);
                }
                t
            })?;
        }
    }
    Ok(0)
}

pub async fn rule(ctx: &Ctx, c: RuleCmd) -> anyhow::Result<i32> {
    match c {
        RuleCmd::List => {
            let rules = ctx.client.list_rules().await?;
            print(ctx.output, &rules, || {
                let mut t = Table::new(vec!["RULE", "ENABLED", "TRIGGER", "ACTION", "CRITERIA"]);
                for r in &rules {
                    t.row(rule_row(r));
                }
                t
            })?;
        }
        RuleCmd::Show { rule } => {
            let d = ctx.client.get_rule(&rule).await?;
            print(ctx.output, &d, || {
                let r = &d.rule;
                let mut t = Table::fields(vec![
                    ("rule", r.rule_ref.to_string()),
                    ("enabled", r.enabled.to_string()),
                    ("trigger", format!("{} {}", r.trigger.type_ref, r.trigger.parameters)),
                    (
                        "criteria",
                        r.criteria
                            .iter()
                            .map(|c| format!("{} {} {}", c.key, c.op.as_str(), c.pattern))
                            .collect::<Vec<_>>()
                            .join("; "),
                    ),
                    ("action", format!("{} {}", r.action.action_ref, r.action.parameters)),
                    ("overlap", format!("{:?}", r.overlap).to_lowercase()),
                ]);
                let mut e = Table::new(vec!["RULE", "OUTCOME", "EXECUTION", "REASON"]);
                enforcement_rows(&mut e, &d.recent_enforcements);
                t.append(e);
                t
            })?;
        }
        RuleCmd::Enable { rule } => {
            let r = ctx.client.set_rule_enabled(&rule, true).await?;
            print(ctx.output, &r, || {
                Table::fields(vec![("rule", r.rule_ref.to_string()), ("enabled", "yes".into())])
            })?;
        }
        RuleCmd::Disable { rule } => {
            let r = ctx.client.set_rule_enabled(&rule, false).await?;
            print(ctx.output, &r, || {
                Table::fields(vec![("rule", r.rule_ref.to_string()), ("enabled", "no".into())])
            })?;
        }
        RuleCmd::Test { rule, payload, trigger_parameters, event } => {
            let req = TestRule {
                payload: json_arg("--payload", payload.as_deref())?,
                trigger_parameters: json_arg("--trigger-parameters", trigger_parameters.as_deref())?,
                event_id: event,
            };
            let r = ctx.client.test_rule(&rule, &req).await?;
            print(ctx.output, &r, || {
                let mut t = Table::new(vec!["CRITERION", "VALUE", "VERDICT"]);
                for c in &r.criteria {
                    let value = if c.found { c.value.to_string() } else { "(absent)".into() };
                    let verdict = if c.holds { "holds".to_owned() } else { format!("fails: {}", c.why) };
                    t.row(vec![format!("{} {} {}", c.key, c.op.as_str(), c.pattern), value, verdict]);
                }
                t.append(Table::fields(vec![
                    ("of its trigger", r.concerns.to_string()),
                    ("outcome", r.outcome.as_str().to_owned()),
                    ("reason", r.reason.clone().unwrap_or_default()),
                    (
                        "parameters",
                        r.parameters.as_ref().map(|p| p.to_string()).unwrap_or_else(|| "-".into()),
                    ),
                ]));
                t
            })?;
            return Ok(if r.outcome == attune_core::rules::Outcome::Matched { 0 } else { 1 });
        }
    }
    Ok(0)
}

pub async fn event(ctx: &Ctx, c: EventCmd) -> anyhow::Result<i32> {
    match c {
        EventCmd::List { trigger, limit } => {
            let mut q = format!("limit={limit}");
            if let Some(t) = trigger {
                q.push_str(&format!("&trigger={t}"));
            }
            let events = ctx.client.list_trigger_events(&q).await?;
            print(ctx.output, &events, || {
                let mut t = Table::new(vec!["ID", "TRIGGER", "SOURCE", "AGE", "PROCESSED"]);
                for e in &events {
                    t.row(vec![
                        e.id.to_string(),
                        e.trigger.to_string(),
                        e.source.clone(),
                        ago(attune_core::Timestamp::now().millis() - e.created_at.millis()),
                        if e.processed_at.is_some() { "yes".into() } else { "not yet".into() },
                    ]);
                }
                t
            })?;
        }
        EventCmd::Get { id } => {
            let d = ctx.client.get_trigger_event(id).await?;
            print(ctx.output, &d, || {
                let mut t = Table::fields(event_fields(&d.event));
                let mut e = Table::new(vec!["RULE", "OUTCOME", "EXECUTION", "REASON"]);
                enforcement_rows(&mut e, &d.enforcements);
                t.append(e);
                t
            })?;
        }
        EventCmd::Emit { trigger, fields, payload_json, parameters_json } => {
            let payload = parse_params(&fields, payload_json.as_deref())?;
            let req = EmitEvent {
                trigger,
                parameters: json_arg("--parameters-json", parameters_json.as_deref())?,
                payload: Some(payload),
            };
            let e = ctx.client.emit_event(&req).await?;
            print(ctx.output, &e, || Table::fields(event_fields(&e)))?;
        }
    }
    Ok(0)
}

fn since(t: Option<attune_core::Timestamp>) -> String {
    t.map(|t| ago(attune_core::Timestamp::now().millis() - t.millis())).unwrap_or_else(|| "-".into())
}

/// Where a sensor is: `running on w1`, `backoff (retry in 4s)`, …
fn sensor_where(s: &SensorState) -> String {
    use attune_core::sensors::SensorStatus;
    match s.status {
        SensorStatus::Running | SensorStatus::Lost => {
            format!("{} on {}", s.status.as_str(), s.worker_name.as_deref().unwrap_or("?"))
        }
        SensorStatus::Backoff => {
            let wait = s.retry_at.map(|t| t.millis() - attune_core::Timestamp::now().millis()).unwrap_or(0);
            format!("backoff (retry in {:.1}s)", wait.max(0) as f64 / 1000.0)
        }
        other => other.as_str().to_owned(),
    }
}

pub async fn sensor(ctx: &Ctx, c: SensorCmd) -> anyhow::Result<i32> {
    match c {
        SensorCmd::List => {
            let all = ctx.client.list_sensors().await?;
            print(ctx.output, &all, || {
                let mut t = Table::new(vec![
                    "SENSOR",
                    "STATUS",
                    "SINCE",
                    "RESTARTS",
                    "EVENTS",
                    "MALFORMED",
                    "LAST ERROR",
                ]);
                for s in &all {
                    t.row(vec![
                        s.sensor.sensor_ref.to_string(),
                        sensor_where(s),
                        since(s.started_at.filter(|_| s.worker_id.is_some())),
                        s.restarts.to_string(),
                        s.events.to_string(),
                        s.malformed.to_string(),
                        s.last_error.clone().map(|e| e.chars().take(80).collect()).unwrap_or_default(),
                    ]);
                }
                t
            })?;
        }
        SensorCmd::Show { sensor } => {
            let s = ctx.client.get_sensor(&sensor).await?;
            print(ctx.output, &s, || sensor_fields(&s))?;
        }
        SensorCmd::Enable { sensor } => {
            let s = ctx.client.set_sensor_enabled(&sensor, true).await?;
            print(ctx.output, &s, || sensor_fields(&s))?;
        }
        SensorCmd::Disable { sensor } => {
            let s = ctx.client.set_sensor_enabled(&sensor, false).await?;
            print(ctx.output, &s, || sensor_fields(&s))?;
        }
    }
    Ok(0)
}

fn sensor_fields(s: &SensorState) -> Table {
    let x = &s.sensor;
    Table::fields(vec![
        ("sensor", x.sensor_ref.to_string()),
        ("enabled", if s.effective_enabled { "yes".into() } else { "no".into() }),
        ("status", sensor_where(s)),
        ("worker", s.worker_id.map(|w| w.to_string()).unwrap_or_else(|| "-".into())),
        ("started", since(s.started_at)),
        ("restarts", s.restarts.to_string()),
        ("events", s.events.to_string()),
        ("malformed lines", s.malformed.to_string()),
        ("last error", s.last_error.clone().unwrap_or_else(|| "-".into())),
        ("last error at", since(s.last_error_at)),
        ("runtime", x.runtime.as_str().to_owned()),
        ("entry point", format!("sensors/{}", x.entry_point)),
        ("trigger types", x.trigger_types.iter().map(|t| t.as_str()).collect::<Vec<_>>().join(", ")),
        ("parameters", x.parameters.to_string()),
        ("description", x.description.clone()),
    ])
}
