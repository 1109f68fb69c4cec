//! Events in, enforcements out. `accept` checks an event against its trigger type and stores it;
//! `run` processes stored events: for each enabled rule the event concerns, `attune_rules::decide`
//! says what to do, and exactly one enforcement is recorded — a matched one in the same
//! transaction as its execution, which goes through the one submission path. An event is marked
//! processed only once every rule has its enforcement, so a server killed half-way resumes where
//! it stopped and the UNIQUE (event, rule) constraint keeps it from doing anything twice; several
//! replicas may process the same event at once for the same reason. `timers` fires interval and
//! datetime triggers: a tick is taken by a conditional update with its event, so one replica fires it.

use std::{collections::HashMap, sync::Arc, time::Duration};

use attune_core::{
    rules::{builtin_trigger_types, Enforcement, Enforcing, Outcome, Rule, TriggerEvent, TriggerType},
    submission::{Origin, Overrides},
    ActionRef, Timestamp,
};
use attune_pack::ParamValidator;
use attune_rules::Decision;
use attune_store::{StoreError, Timer};
use serde_json::{json, Value};
use uuid::Uuid;

use crate::{
    submission::{ActionSource, Request, SubmitError},
    ApiError, Shared,
};

/// Events read per round. Each is one transaction of enforcements (about 90 rows per event at 100
/// rules): on SQLite, whose one writer a timer's tick waits for, 200 held ticks back up to 0.85 s
/// under a storm of events, 50 up to 0.25 s, 20 up to 0.11 s at 15 % fewer events/s.
const BATCH: u32 = 50;

/// A trigger type by ref: built in, or loaded with a pack.
pub(crate) async fn trigger_type(shared: &Shared, r: &ActionRef) -> Result<Option<TriggerType>, StoreError> {
    if let Some(t) = builtin_trigger_types().into_iter().find(|t| t.type_ref == *r) {
        return Ok(Some(t));
    }
    Ok(shared.store.list_trigger_types().await?.into_iter().find(|t| t.type_ref == *r))
}

/// Checks an event against its trigger type (parameters and payload schemas) and stores it; the
/// processor is woken. Nothing is stored when anything is wrong.
pub(crate) async fn accept(
    shared: &Shared,
    trigger: &str,
    parameters: Value,
    payload: Value,
    source: String,
) -> Result<TriggerEvent, ApiError> {
    let event = check(shared, trigger, parameters, payload, source).await?;
    shared.store.insert_events(std::slice::from_ref(&event)).await?;
    accepted(shared, std::slice::from_ref(&event));
    Ok(event)
}

/// Counts stored events and wakes the processor.
pub(crate) fn accepted(shared: &Shared, events: &[TriggerEvent]) {
    for e in events {
        shared.metrics.events.accepted(e.trigger.as_str());
    }
    if !events.is_empty() {
        shared.events_ready.notify_one();
    }
}

/// The event, if it fits its trigger type (parameters and payload schemas); not stored.
pub(crate) async fn check(
    shared: &Shared,
    trigger: &str,
    parameters: Value,
    payload: Value,
    source: String,
) -> Result<TriggerEvent, ApiError> {
    let unknown = || {
        ApiError::unprocessable(
            "unknown_trigger",
            format!("unknown trigger type {trigger:?}; `attune trigger list` shows them"),
        )
    };
    let r = ActionRef::parse(trigger).map_err(|_| unknown())?;
    let t = trigger_type(shared, &r).await?.ok_or_else(unknown)?;
    for (what, schema, value) in
        [("parameters", &t.parameters, &parameters), ("payload", &t.payload, &payload)]
    {
        // An empty schema takes any JSON (a webhook's body).
        if schema.as_object().is_some_and(|o| o.is_empty()) {
            continue;
        }
        let v = ParamValidator::compile(schema).map_err(|e| {
            ApiError::unprocessable("broken_trigger", format!("trigger type {r}'s {what} schema {e}"))
        })?;
        let field = if what == "payload" { "payload field" } else { "trigger parameter" };
        v.validate_as(value, what, field).map_err(|details| {
            ApiError::unprocessable(
                if what == "payload" { "invalid_payload" } else { "invalid_trigger_parameters" },
                format!("the event's {what} does not match trigger type {r} ({} problem(s))", details.len()),
            )
            .with_details(details)
        })?;
    }
    let event = TriggerEvent {
        id: Uuid::now_v7(),
        trigger: r,
        trigger_parameters: parameters,
        payload,
        source,
        late: false,
        created_at: Timestamp::now(),
        processed_at: None,
    };
    Ok(event)
}

/// The event processor: until the server stops.
pub(crate) async fn run(shared: Arc<Shared>) {
    loop {
        tokio::select! {
            _ = shared.events_ready.notified() => {}
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            _ = shared.shutdown.cancelled() => return,
        }
        loop {
            let batch = match shared.store.unprocessed_events(BATCH).await {
                Ok(b) => b,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read events; retrying");
                    break;
                }
            };
            let full = batch.len() as u32 == BATCH;
            if let Err(e) = process(&shared, &batch).await {
                tracing::warn!(events = batch.len(), error = %e, "events not processed yet; retrying");
                break;
            }
            if !full || shared.shutdown.is_cancelled() {
                break;
            }
        }
        if let Err(e) = release_buffered(&shared).await {
            tracing::warn!(error = %e, "buffered runs not released yet; retrying");
        }
    }
}

/// Starts each buffered run (`overlap: buffer_one`) whose rule has no open execution any more:
/// the rule's current definition decides again on the stored event, and the execution's
/// enforcement turns the buffered one into `matched` in the same transaction. A rule disabled or
/// removed meanwhile settles it as `skipped`.
async fn release_buffered(shared: &Arc<Shared>) -> Result<(), String> {
    let err = |e: StoreError| e.to_string();
    let waiting = shared.store.buffered_enforcements().await.map_err(err)?;
    let mut seen = std::collections::HashSet::new();
    for b in waiting {
        if !seen.insert(b.rule_ref.to_string()) {
            continue; // one per rule (there is never more, but a race of replicas could make two)
        }
        let rule = shared.store.get_rule(b.rule_ref.as_str()).await.map_err(err)?;
        let Some(rule) = rule.filter(|r| r.enabled) else {
            if shared
                .store
                .settle_buffered(b.id, Outcome::Skipped, "its rule was disabled or removed while it waited")
                .await
                .map_err(err)?
            {
                count(shared, Outcome::Skipped);
            }
            continue;
        };
        if shared.store.rule_has_open_execution(b.rule_ref.as_str()).await.map_err(err)? {
            continue;
        }
        let Some(event) = shared.store.get_event(b.event_id).await.map_err(err)? else { continue };
        let settle = |outcome: Outcome, why: String| async move {
            if shared.store.settle_buffered(b.id, outcome, &why).await.map_err(err)? {
                count(shared, outcome);
            }
            Ok::<_, String>(())
        };
        match attune_rules::decide(&rule, &event).1 {
            Decision::Run(parameters) => {
                match shared.submissions.submit(buffered_request(&rule, &event, parameters, b.id)).await {
                    Ok(x) => {
                        count(shared, Outcome::Matched);
                        tracing::info!(rule = %rule.rule_ref, event = %event.id, execution = %x.id, "buffered run started");
                    }
                    Err(SubmitError::Store(e)) if matches!(*e, StoreError::AlreadyDone(_)) => {}
                    Err(e @ (SubmitError::Store(_) | SubmitError::ShuttingDown)) => return Err(e.to_string()),
                    Err(e) => settle(Outcome::Failed, refusal(&e)).await?,
                }
            }
            Decision::NotMatched(why) => settle(Outcome::NotMatched, why).await?,
            Decision::Failed(why) => settle(Outcome::Failed, why).await?,
        }
    }
    Ok(())
}

/// Every enabled rule each event concerns, once; then the events are done. Decisions are made for
/// the whole batch, matched rules' executions submitted together (the group commit batches them),
/// the other enforcements written in one transaction, and the events marked in one statement. An
/// error leaves the batch to be processed again, which repeats nothing that was recorded.
async fn process(shared: &Arc<Shared>, events: &[TriggerEvent]) -> Result<(), String> {
    let err = |e: StoreError| e.to_string();
    let mut rules: HashMap<String, Vec<Rule>> = HashMap::new();
    for e in events {
        if !rules.contains_key(e.trigger.as_str()) {
            let all = shared.store.list_rules(Some(e.trigger.as_str())).await.map_err(err)?;
            rules.insert(e.trigger.to_string(), all.into_iter().filter(|r| r.enabled).collect());
        }
    }
    let ids: Vec<Uuid> = events.iter().map(|e| e.id).collect();
    let done = shared.store.enforced_pairs(&ids).await.map_err(err)?;
    let mut records = Vec::new();
    let mut runs: Vec<(Rule, TriggerEvent, Value)> = Vec::new();
    // `overlap: skip` and `buffer_one` rules: open already, or started earlier in this batch; and
    // for `buffer_one`, whether a run waits already.
    let mut busy: HashMap<String, bool> = HashMap::new();
    let mut waiting: Option<std::collections::HashSet<String>> = None;
    for event in events {
        for rule in rules[event.trigger.as_str()].iter().filter(|r| attune_rules::concerns(r, event)) {
            if done.iter().any(|(e, r)| *e == event.id && r == rule.rule_ref.as_str()) {
                continue;
            }
            let record = |outcome: Outcome, reason: String| Enforcement {
                id: Uuid::now_v7(),
                event_id: event.id,
                rule_ref: rule.rule_ref.clone(),
                outcome,
                execution_id: None,
                reason: Some(reason),
                created_at: Timestamp::now(),
            };
            match attune_rules::decide(rule, event).1 {
                Decision::NotMatched(why) => records.push(record(Outcome::NotMatched, why)),
                Decision::Failed(why) => records.push(record(Outcome::Failed, why)),
                Decision::Run(parameters) => {
                    use attune_core::rules::Overlap;
                    if rule.overlap != Overlap::Allow {
                        let key = rule.rule_ref.to_string();
                        let open = match busy.get(&key) {
                            Some(b) => *b,
                            None => shared.store.rule_has_open_execution(&key).await.map_err(err)?,
                        };
                        busy.insert(key.clone(), true);
                        if open && rule.overlap == Overlap::Skip {
                            records.push(record(
                                Outcome::Skipped,
                                "its previous execution is still running (overlap: skip)".into(),
                            ));
                            continue;
                        }
                        if rule.overlap == Overlap::BufferOne {
                            if waiting.is_none() {
                                let all = shared.store.buffered_enforcements().await.map_err(err)?;
                                waiting = Some(all.iter().map(|e| e.rule_ref.to_string()).collect());
                            }
                            let waits = waiting.as_mut().expect("read above");
                            if waits.contains(&key) {
                                // Whether it runs or not, one run waits already: this one is
                                // skipped (the waiting run starts after the running one).
                                records.push(record(
                                    Outcome::Skipped,
                                    "its previous execution is still running and one run waits already \
                                     (overlap: buffer_one)"
                                        .into(),
                                ));
                                continue;
                            }
                            if open {
                                waits.insert(key);
                                records.push(record(
                                    Outcome::Buffered,
                                    "waits for its previous execution to end (overlap: buffer_one)".into(),
                                ));
                                continue;
                            }
                        }
                    }
                    runs.push((rule.clone(), event.clone(), parameters));
                }
            }
        }
    }
    let mut submits = tokio::task::JoinSet::new();
    for (rule, event, parameters) in runs {
        let shared = shared.clone();
        submits.spawn(async move {
            let r = shared.submissions.submit(request(&rule, &event, parameters)).await;
            (rule, event, r)
        });
    }
    let mut transient = None;
    while let Some(joined) = submits.join_next().await {
        let (rule, event, r) = joined.map_err(|e| e.to_string())?;
        match r {
            Ok(_) => count(shared, Outcome::Matched),
            Err(SubmitError::Store(e)) if matches!(*e, StoreError::AlreadyDone(_)) => {}
            Err(e @ (SubmitError::Store(_) | SubmitError::ShuttingDown)) => transient = Some(e.to_string()),
            Err(e) => records.push(Enforcement {
                id: Uuid::now_v7(),
                event_id: event.id,
                rule_ref: rule.rule_ref.clone(),
                outcome: Outcome::Failed,
                execution_id: None,
                reason: Some(refusal(&e)),
                created_at: Timestamp::now(),
            }),
        }
    }
    shared.store.record_enforcements(&records).await.map_err(err)?;
    for r in &records {
        count(shared, r.outcome);
    }
    if let Some(e) = transient {
        return Err(e);
    }
    shared.store.mark_events_processed(&ids, Timestamp::now()).await.map_err(err)
}

fn count(shared: &Shared, outcome: Outcome) {
    shared.metrics.events.enforcements[outcome as usize].fetch_add(1, std::sync::atomic::Ordering::Relaxed);
}

/// The submission a matched rule makes: its enforcement goes with it.
pub(crate) fn request(rule: &Rule, event: &TriggerEvent, parameters: Value) -> Request {
    Request {
        action: ActionSource::Ref(rule.action.action_ref.clone()),
        parameters,
        overrides: Overrides::default(),
        origin: Origin {
            trace_id: Some(format!("event:{}", event.id)),
            enforces: Some(Enforcing {
                id: Uuid::now_v7(),
                event_id: event.id,
                rule_ref: rule.rule_ref.clone(),
            }),
            ..Origin::actor(format!("rule:{}", rule.rule_ref))
        },
    }
}

/// The submission of a buffered run: it keeps its enforcement's id.
fn buffered_request(rule: &Rule, event: &TriggerEvent, parameters: Value, enforcement: Uuid) -> Request {
    let mut r = request(rule, event, parameters);
    if let Some(e) = r.origin.enforces.as_mut() {
        e.id = enforcement;
    }
    r
}

/// Why a submission was refused, with its details.
pub(crate) fn refusal(e: &SubmitError) -> String {
    match e {
        SubmitError::Parameters { details, .. } => format!("{e}: {}", details.join("; ")),
        other => other.to_string(),
    }
}

/// The timers every enabled interval and datetime rule needs, keyed by trigger instance (rules
/// with the same trigger share its ticks), with the first tick each would have.
fn wanted_timers(rules: &[Rule], now: Timestamp) -> Vec<Timer> {
    let mut out: Vec<Timer> = Vec::new();
    for r in rules.iter().filter(|r| r.enabled) {
        let t = &r.trigger;
        let first = match t.type_ref.as_str() {
            "core.interval" => match t.parameters.get("seconds").and_then(Value::as_u64) {
                Some(s) if s > 0 => now.plus(Duration::from_secs(s)),
                _ => continue,
            },
            "core.cron" => match cron_of(&t.parameters).and_then(|c| c.next_after(now.to_datetime())) {
                Some(next) => Timestamp(next.timestamp_millis()),
                None => continue,
            },
            "core.datetime" => {
                match t.parameters.get("at").and_then(Value::as_str).map(chrono::DateTime::parse_from_rfc3339)
                {
                    Some(Ok(at)) => Timestamp(at.timestamp_millis()),
                    _ => continue,
                }
            }
            _ => continue,
        };
        let key = format!("{}:{}", t.type_ref, t.parameters);
        if !out.iter().any(|x| x.key == key) {
            out.push(Timer {
                key,
                trigger: t.type_ref.clone(),
                parameters: t.parameters.clone(),
                next_fire_at: first,
            });
        }
    }
    out
}

/// A timer's tick due at `t.next_fire_at`, fired at `now`: its event, and the tick after it
/// (`None`: a datetime, which fires once). Ticks missed meanwhile are not fired one by one: the
/// event says how many and is `late`.
pub(crate) fn tick(t: &Timer, now: Timestamp) -> (TriggerEvent, Option<Timestamp>) {
    let due = t.next_fire_at;
    let behind = (now.millis() - due.millis()).max(0);
    let (next, missed) = match t.parameters.get("seconds").and_then(Value::as_u64) {
        Some(s) if t.trigger.as_str() == "core.interval" => {
            let every = (s * 1000) as i64;
            let missed = behind / every;
            (Some(Timestamp(due.millis() + (missed + 1) * every)), missed)
        }
        _ if t.trigger.as_str() == "core.cron" => match cron_of(&t.parameters) {
            Some(c) => {
                let mut missed = 0;
                let mut next = c.next_after(due.to_datetime());
                while let Some(n) = next.filter(|n| n.timestamp_millis() <= now.millis() && missed < 100_000)
                {
                    missed += 1;
                    next = c.next_after(n);
                }
                (next.map(|n| Timestamp(n.timestamp_millis())), missed)
            }
            None => (None, 0),
        },
        _ => (None, i64::from(behind > 5_000)),
    };
    let iso = |t: Timestamp| t.to_datetime().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let event = TriggerEvent {
        id: Uuid::now_v7(),
        trigger: t.trigger.clone(),
        trigger_parameters: t.parameters.clone(),
        payload: json!({"scheduled_at": iso(due), "fired_at": iso(now), "missed": missed}),
        source: "timer".into(),
        late: missed > 0,
        created_at: now,
        processed_at: None,
    };
    (event, next)
}

/// Fires due timers until the server stops, and keeps the timer table in step with the rules.
pub(crate) async fn timers(shared: Arc<Shared>) {
    let mut synced_at: Option<std::time::Instant> = None;
    loop {
        if synced_at.is_none_or(|t| t.elapsed() >= Duration::from_secs(1)) {
            synced_at = Some(std::time::Instant::now());
            if let Err(e) = sync(&shared).await {
                tracing::warn!(error = %e, "cannot update timers; retrying");
            }
        }
        let now = Timestamp::now();
        match shared.store.due_timers(now).await {
            Ok(due) => {
                for t in due {
                    let (event, next) = tick(&t, now);
                    match shared.store.fire_timer(&t.key, t.next_fire_at, next, &event).await {
                        Ok(true) => {
                            let lag = (now.millis() - t.next_fire_at.millis()).max(0) as u64;
                            shared.metrics.events.record_timer_lag(lag);
                            shared.metrics.events.accepted(t.trigger.as_str());
                            if event.late {
                                tracing::info!(timer = %t.key, missed = %event.payload["missed"], "timer fired late");
                            }
                            shared.events_ready.notify_one();
                        }
                        Ok(false) => {}
                        Err(e) => tracing::warn!(timer = %t.key, error = %e, "cannot fire timer; retrying"),
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "cannot read timers; retrying"),
        }
        let wait = match shared.store.next_timer_at().await {
            Ok(Some(at)) => {
                Duration::from_millis((at.millis() - Timestamp::now().millis()).clamp(2, 250) as u64)
            }
            _ => Duration::from_millis(250),
        };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = shared.shutdown.cancelled() => return,
        }
    }
}

/// A `core.cron` trigger's schedule (its parameters were checked when its rule loaded).
fn cron_of(p: &Value) -> Option<attune_rules::schedule::CronSchedule> {
    let expr = p.get("expression").and_then(Value::as_str)?;
    attune_rules::schedule::CronSchedule::parse(expr, p.get("timezone").and_then(Value::as_str)).ok()
}

async fn sync(shared: &Shared) -> Result<(), StoreError> {
    let mut rules = shared.store.list_rules(Some("core.interval")).await?;
    rules.extend(shared.store.list_rules(Some("core.cron")).await?);
    rules.extend(shared.store.list_rules(Some("core.datetime")).await?);
    shared.store.sync_timers(&wanted_timers(&rules, Timestamp::now())).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn timer(trigger: &str, parameters: Value, next: i64) -> Timer {
        Timer {
            key: "k".into(),
            trigger: ActionRef::parse(trigger).unwrap(),
            parameters,
            next_fire_at: Timestamp(next),
        }
    }

    #[test]
    fn ticks_on_time_late_and_once() {
        let t = timer("core.interval", json!({"seconds": 2}), 10_000);
        let (e, next) = tick(&t, Timestamp(10_003));
        assert_eq!((e.late, next), (false, Some(Timestamp(12_000))));
        assert_eq!(e.payload["missed"], 0);
        // Down from 10 s to 17.5 s: the ticks at 12, 14 and 16 s were missed; one late event.
        let (e, next) = tick(&t, Timestamp(17_500));
        assert_eq!((e.late, next), (true, Some(Timestamp(18_000))));
        assert_eq!(e.payload["missed"], 3);
        let d = timer("core.datetime", json!({"at": "2026-01-01T00:00:00Z"}), 1_000);
        assert_eq!(tick(&d, Timestamp(1_010)).1, None, "a datetime fires once");
        assert!(!tick(&d, Timestamp(1_010)).0.late);
        assert!(tick(&d, Timestamp(60_000)).0.late);
        // Every 10 s by cron, due at 20 s and fired at 55 s: 30, 40 and 50 s were missed.
        let c = timer("core.cron", json!({"expression": "*/10 * * * * *"}), 20_000);
        let (e, next) = tick(&c, Timestamp(55_000));
        assert_eq!((e.payload["missed"].as_i64(), e.late, next), (Some(3), true, Some(Timestamp(60_000))));
        let (e, next) = tick(&c, Timestamp(20_004));
        assert_eq!((e.late, next), (false, Some(Timestamp(30_000))));
    }
}
