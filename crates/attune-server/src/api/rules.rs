//! Events and rules: webhooks and emitted events in (`crate::reactor` processes them), the stored
//! events with their enforcements, rules (list, show, enable, disable, test) and trigger types.
//! Stored events live at `/api/v1/trigger-events`; `/api/v1/events` is the live SSE stream.

use attune_core::{
    auth::Identity,
    rules::{builtin_trigger_types, Outcome, Rule, TriggerEvent, TriggerType},
    Timestamp,
};
use attune_rules::Decision;
use attune_store::{EventFilter, KeyValue};
use attune_wire::{CheckedCriterion, EmitEvent, EventDetail, RuleDetail, RuleTestResult, TestRule};
use axum::{
    extract::{rejection::QueryRejection, Path, Query},
    http::{HeaderMap, StatusCode},
    Extension, Json,
};
use serde::Deserialize;
use serde_json::{json, Value};

use super::State;
use crate::{
    error::{parse_id, Body, RawJson},
    reactor, ApiError,
};

/// The header a signed webhook call carries: `sha256=<hex of HMAC-SHA256(body)>`.
pub const SIGNATURE_HEADER: &str = "x-attune-signature";

fn valid_name(n: &str) -> bool {
    !n.is_empty()
        && n.len() <= 128
        && n.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

/// A webhook call: its JSON body becomes the payload of a `core.webhook` event named `name`.
/// Callers authenticate with a bearer token allowed to emit events, or — for a webhook whose rules
/// name a `secret_key` — with `X-Attune-Signature: sha256=<HMAC-SHA256 of the body under that
/// key's value>` (a signature is checked whenever such a key is set, token or not).
#[utoipa::path(post, path = "/api/v1/webhooks/{name}", tag = "events", params(("name" = String, Path, pattern = "^[A-Za-z0-9._-]{1,128}$")), request_body = Object, responses((status = 202, description = "Stored; its rules are enforced shortly", body = attune_core::rules::TriggerEvent), (status = 401, description = "No usable token, or a signature that does not verify")))]
pub async fn webhook(
    state: State,
    who: Option<Extension<Identity>>,
    Path(name): Path<String>,
    headers: HeaderMap,
    RawJson(bytes, payload): RawJson,
) -> Result<(StatusCode, Json<TriggerEvent>), ApiError> {
    if !valid_name(&name) {
        return Err(ApiError::bad_request(
            "invalid_webhook_name",
            format!("{name:?} is not a webhook name (letters, digits, '.', '_', '-')"),
        ));
    }
    let rules: Vec<Rule> = state
        .store
        .list_rules(Some("core.webhook"))
        .await?
        .into_iter()
        .filter(|r| {
            r.enabled && r.trigger.parameters.get("name").and_then(Value::as_str) == Some(name.as_str())
        })
        .collect();
    let mut secrets: Vec<(Option<String>, String)> = Vec::new();
    for r in &rules {
        if let Some(k) = r.trigger.parameters.get("secret_key").and_then(Value::as_str) {
            let pair = (Some(r.pack.to_string()), k.to_owned());
            if !secrets.contains(&pair) {
                secrets.push(pair);
            }
        }
    }
    let unsigned = || {
        ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "this call needs `Authorization: Bearer <token>` (a role that may emit events), or a valid \
             X-Attune-Signature for a webhook whose rules name a secret_key",
        )
    };
    if who.is_none() && secrets.is_empty() {
        return Err(unsigned());
    }
    if !secrets.is_empty() {
        let given = headers.get(SIGNATURE_HEADER).and_then(|v| v.to_str().ok()).unwrap_or_default();
        if !signed_by_any(&state, &secrets, &bytes, given).await? {
            return Err(ApiError::new(
                StatusCode::UNAUTHORIZED,
                "bad_signature",
                format!(
                    "X-Attune-Signature is missing or does not verify: expected sha256=<hex of HMAC-SHA256 of \
                     the body> under the value of key {}",
                    secrets.iter().map(|(_, k)| k.as_str()).collect::<Vec<_>>().join(" or ")
                ),
            ));
        }
    }
    if rules.is_empty() {
        return Err(ApiError::not_found(
            "unknown_webhook",
            format!("no enabled rule listens to webhook {name:?}; `attune rule list` shows the rules"),
        ));
    }
    let source = format!("webhook:{name}");
    let event = reactor::accept(&state, "core.webhook", json!({"name": name}), payload, source).await?;
    Ok((StatusCode::ACCEPTED, Json(event)))
}

/// Whether `given` is the HMAC-SHA256 of `body` under one of the keys (a pack's own key first,
/// then a global one of that name).
async fn signed_by_any(
    state: &State,
    keys: &[(Option<String>, String)],
    body: &[u8],
    given: &str,
) -> Result<bool, ApiError> {
    use hmac::Mac;
    let Some(hex_sig) = given.trim().strip_prefix("sha256=") else { return Ok(false) };
    let Ok(sig) = hex::decode(hex_sig) else { return Ok(false) };
    for (pack, name) in keys {
        let found = match state.store.get_key(pack.as_deref(), name).await? {
            Some(k) => Some(k),
            None => state.store.get_key(None, name).await?,
        };
        let Some(k) = found else {
            tracing::warn!(key = %name, "a webhook's secret_key names a key that is not set; its calls are refused");
            continue;
        };
        let secret = match &k.value {
            KeyValue::Plain(v) => v.clone(),
            KeyValue::Sealed { .. } => {
                let ring = state.keyring.read().unwrap_or_else(|e| e.into_inner()).clone();
                match ring.open(&k) {
                    Ok(v) => v,
                    Err(e) => {
                        tracing::warn!(key = %name, error = %e, "cannot open a webhook's secret key");
                        continue;
                    }
                }
            }
        };
        let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes())
            .expect("HMAC takes a key of any length");
        mac.update(body);
        if mac.verify_slice(&sig).is_ok() {
            return Ok(true);
        }
    }
    Ok(false)
}

/// Stores an event of a trigger type (`attune event emit`); rules are enforced shortly.
#[utoipa::path(post, path = "/api/v1/trigger-events", tag = "events", request_body = attune_wire::EmitEvent, responses((status = 201, body = attune_core::rules::TriggerEvent)))]
pub async fn emit(
    state: State,
    Extension(who): Extension<Identity>,
    Body(req): Body<EmitEvent>,
) -> Result<(StatusCode, Json<TriggerEvent>), ApiError> {
    let parameters = req.parameters.unwrap_or_else(|| json!({}));
    let payload = req.payload.unwrap_or_else(|| json!({}));
    let event = reactor::accept(&state, &req.trigger, parameters, payload, who.actor()).await?;
    Ok((StatusCode::CREATED, Json(event)))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventsQuery {
    trigger: Option<String>,
    /// Only events created before this (milliseconds since the epoch), for paging back.
    before: Option<i64>,
    limit: Option<u32>,
}

/// Stored events, newest first.
#[utoipa::path(get, path = "/api/v1/trigger-events", tag = "events", params(("trigger" = Option<String>, Query), ("before" = Option<i64>, Query, minimum = 0), ("limit" = Option<u32>, Query, minimum = 1, maximum = 1000)), responses((status = 200, body = Vec<attune_core::rules::TriggerEvent>)))]
pub async fn list_events(
    state: State,
    q: Result<Query<EventsQuery>, QueryRejection>,
) -> Result<Json<Vec<TriggerEvent>>, ApiError> {
    let Query(q) = q.map_err(|e| ApiError::bad_request("invalid_query", e.body_text()))?;
    if q.before.is_some_and(|b| b < 0) {
        return Err(ApiError::bad_request(
            "invalid_query",
            "before must be a time in milliseconds since the epoch",
        ));
    }
    if q.limit.is_some_and(|l| l == 0 || l > 1000) {
        return Err(ApiError::bad_request("invalid_query", "limit must be between 1 and 1000"));
    }
    let f =
        EventFilter { trigger: q.trigger, before: q.before.map(Timestamp), limit: q.limit.unwrap_or(100) };
    Ok(Json(state.store.list_events(&f).await?))
}

/// One event and what each rule did with it.
#[utoipa::path(get, path = "/api/v1/trigger-events/{id}", tag = "events", params(("id" = String, Path, format = "uuid")), responses((status = 200, body = attune_wire::EventDetail)))]
pub async fn get_event(state: State, Path(id): Path<String>) -> Result<Json<EventDetail>, ApiError> {
    let id = parse_id("event", &id)?;
    let event = state
        .store
        .get_event(id)
        .await?
        .ok_or_else(|| ApiError::not_found("unknown_event", format!("no event {id}")))?;
    let enforcements = state.store.enforcements_of(id).await?;
    Ok(Json(EventDetail { event, enforcements }))
}

/// Trigger types: the built-in ones, then those packs define.
#[utoipa::path(get, path = "/api/v1/triggers", tag = "events", responses((status = 200, body = Vec<attune_core::rules::TriggerType>)))]
pub async fn triggers(state: State) -> Result<Json<Vec<TriggerType>>, ApiError> {
    let mut all = builtin_trigger_types();
    all.extend(state.store.list_trigger_types().await?);
    Ok(Json(all))
}

#[utoipa::path(get, path = "/api/v1/rules", tag = "events", responses((status = 200, body = Vec<attune_core::rules::Rule>)))]
pub async fn rules(state: State) -> Result<Json<Vec<Rule>>, ApiError> {
    Ok(Json(state.store.list_rules(None).await?))
}

async fn find_rule(state: &State, r: &str) -> Result<Rule, ApiError> {
    state.store.get_rule(r).await?.ok_or_else(|| {
        ApiError::not_found("unknown_rule", format!("no rule {r:?}; `attune rule list` shows them"))
    })
}

/// A rule with its latest 20 enforcements.
#[utoipa::path(get, path = "/api/v1/rules/{rule_ref}", tag = "events", params(("rule_ref" = String, Path)), responses((status = 200, body = attune_wire::RuleDetail)))]
pub async fn rule(state: State, Path(r): Path<String>) -> Result<Json<RuleDetail>, ApiError> {
    let rule = find_rule(&state, &r).await?;
    let recent_enforcements = state.store.enforcements_by_rule(&r, 20).await?;
    Ok(Json(RuleDetail { rule, recent_enforcements }))
}

async fn set_enabled(state: State, who: Identity, r: String, enabled: bool) -> Result<Json<Rule>, ApiError> {
    find_rule(&state, &r).await?;
    let rule = state.store.set_rule_enabled(&r, enabled).await?;
    tracing::info!(rule = %r, enabled, by = %who.actor(), "rule {}", if enabled { "enabled" } else { "disabled" });
    Ok(Json(rule))
}

/// Enables a rule (kept across reloads of its pack until set again).
#[utoipa::path(post, path = "/api/v1/rules/{rule_ref}/enable", tag = "events", params(("rule_ref" = String, Path)), responses((status = 200, body = attune_core::rules::Rule)))]
pub async fn enable(
    state: State,
    Extension(who): Extension<Identity>,
    Path(r): Path<String>,
) -> Result<Json<Rule>, ApiError> {
    set_enabled(state, who, r, true).await
}

/// Disables a rule (kept across reloads of its pack until set again).
#[utoipa::path(post, path = "/api/v1/rules/{rule_ref}/disable", tag = "events", params(("rule_ref" = String, Path)), responses((status = 200, body = attune_core::rules::Rule)))]
pub async fn disable(
    state: State,
    Extension(who): Extension<Identity>,
    Path(r): Path<String>,
) -> Result<Json<Rule>, ApiError> {
    set_enabled(state, who, r, false).await
}

/// Tries a rule on a payload or a stored event, with no side effects, by the processor's own
/// code: the criteria one by one, the rendered parameters, and the submission's checks.
#[utoipa::path(post, path = "/api/v1/rules/{rule_ref}/test", tag = "events", params(("rule_ref" = String, Path)), request_body = attune_wire::TestRule, responses((status = 200, body = attune_wire::RuleTestResult)))]
pub async fn test(
    state: State,
    Path(r): Path<String>,
    Body(req): Body<TestRule>,
) -> Result<Json<RuleTestResult>, ApiError> {
    let rule = find_rule(&state, &r).await?;
    let event = match req.event_id {
        Some(id) => {
            if req.payload.is_some() || req.trigger_parameters.is_some() {
                return Err(ApiError::unprocessable(
                    "invalid_body",
                    "give either event_id or a payload, not both",
                ));
            }
            state
                .store
                .get_event(id)
                .await?
                .ok_or_else(|| ApiError::not_found("unknown_event", format!("no event {id}")))?
        }
        None => TriggerEvent {
            id: uuid::Uuid::now_v7(),
            trigger: rule.trigger.type_ref.clone(),
            trigger_parameters: req.trigger_parameters.unwrap_or_else(|| rule.trigger.parameters.clone()),
            payload: req.payload.unwrap_or_else(|| json!({})),
            source: "test".into(),
            late: false,
            created_at: Timestamp::now(),
            processed_at: None,
        },
    };
    let concerns = attune_rules::concerns(&rule, &event);
    let (evaluation, decision) = attune_rules::decide(&rule, &event);
    let criteria = evaluation
        .checks
        .iter()
        .map(|c| CheckedCriterion {
            key: c.key.clone(),
            op: c.op,
            pattern: c.pattern.clone(),
            value: c.value.clone().unwrap_or(Value::Null),
            found: c.value.is_some(),
            holds: c.holds,
            why: c.why.clone(),
        })
        .collect();
    let (outcome, reason, parameters) = match decision {
        Decision::NotMatched(why) => (Outcome::NotMatched, Some(why), None),
        Decision::Failed(why) => (Outcome::Failed, Some(why), None),
        Decision::Run(p) => match state.submissions.prepare(reactor::request(&rule, &event, p.clone())).await
        {
            Ok(_) => (Outcome::Matched, None, Some(p)),
            Err(e) => (Outcome::Failed, Some(reactor::refusal(&e)), Some(p)),
        },
    };
    let reason = if concerns {
        reason
    } else {
        Some(format!("the event is not of the rule's trigger ({})", rule.trigger.type_ref))
    };
    Ok(Json(RuleTestResult {
        concerns,
        criteria,
        matched: evaluation.matched(),
        outcome,
        reason,
        parameters,
    }))
}
