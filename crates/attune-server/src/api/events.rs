//! `GET /api/v1/events`: Server-Sent Events of execution transitions (`ExecutionScheduled`,
//! `ExecutionRunning`, …, `ExecutionCompleted` with the final status and reason) and worker
//! lifecycle events, filterable by `kind` and `action`. Each event's `id` is a cursor; a client that
//! reconnects with `Last-Event-ID` (or `?after=`) gets everything after it that is still stored
//! (execution history is kept; nothing is lost across replicas, since it is read from the database).
//! Delivery is at least once: after a reconnect a few events may repeat.

use std::{collections::VecDeque, convert::Infallible, sync::Arc, time::Duration};

use attune_core::Timestamp;
use attune_store::{Event, EventCursor};
use attune_wire::StreamEvent;
use axum::{
    extract::{rejection::QueryRejection, Query},
    http::HeaderMap,
    response::sse::{self, KeepAlive, Sse},
};
use futures_util::Stream;
use serde::Deserialize;

use super::State;
use crate::{ApiError, Shared};

/// How long a PostgreSQL row is held back so that ids assigned before commit cannot leave gaps.
const SETTLE: Duration = Duration::from_millis(500);

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EventsQuery {
    /// `execution` or `worker`.
    kind: Option<String>,
    /// Only this action's executions.
    action: Option<String>,
    /// Resume after this cursor (same as the `Last-Event-ID` header).
    after: Option<String>,
}

struct Follow {
    shared: Arc<Shared>,
    cursor: EventCursor,
    kind: Option<String>,
    action: Option<String>,
    pending: VecDeque<Event>,
    changes: tokio::sync::broadcast::Receiver<uuid::Uuid>,
}

impl Follow {
    fn wanted(&self, e: &Event) -> bool {
        self.kind.as_deref().is_none_or(|k| k == e.kind)
            && self.action.as_deref().is_none_or(|a| e.action_ref.as_deref() == Some(a))
    }

    /// The next event, waiting for one; `None` when the server shuts down.
    async fn next(&mut self) -> Option<Event> {
        loop {
            if let Some(e) = self.pending.pop_front() {
                return Some(e);
            }
            match self.shared.store.events_after(self.cursor, 500, SETTLE, Timestamp::now()).await {
                Ok((events, next)) => {
                    self.cursor = next;
                    let got = !events.is_empty();
                    let wanted: Vec<Event> = events.into_iter().filter(|e| self.wanted(e)).collect();
                    self.pending.extend(wanted);
                    if got {
                        continue;
                    }
                }
                Err(e) => tracing::warn!(error = %e, "event stream read failed; retrying"),
            }
            // Nothing new: wait for a change here, or re-check (other replicas, worker events,
            // rows held back to settle).
            let wait = if self.shared.store.kind() == attune_store::BackendKind::Postgres {
                SETTLE
            } else {
                self.shared.opts.recheck
            };
            tokio::select! {
                _ = self.changes.recv() => {}
                _ = tokio::time::sleep(wait) => {}
                _ = self.shared.shutdown.cancelled() => return None,
            }
        }
    }
}

/// The event as clients see it.
fn wire_event(e: Event) -> StreamEvent {
    StreamEvent {
        kind: e.kind.to_owned(),
        name: e.name,
        at: e.at,
        execution_id: e.execution_id,
        action_ref: e.action_ref,
        from: e.from,
        status: e.status,
        attempt: e.attempt,
        worker: e.worker,
        actor: e.actor,
        reason: e.reason,
        event_id: e.event_id,
        trigger: e.trigger,
        rule: e.rule,
    }
}

#[utoipa::path(get, path = "/api/v1/events", tag = "executions", params(("kind" = Option<String>, Query, description = "execution, worker, event or enforcement", pattern = "^(execution|worker|event|enforcement)$"), ("action" = Option<String>, Query), ("after" = Option<String>, Query, description = "resume cursor, like Last-Event-ID", pattern = "^[0-9]{1,18}-[0-9]{1,18}(-[0-9]{1,18})?$")), responses((status = 200, description = "Server-Sent Events; data is an event object", content_type = "text/event-stream", body = String)))]
pub async fn events(
    state: State,
    headers: HeaderMap,
    q: Result<Query<EventsQuery>, QueryRejection>,
) -> Result<Sse<impl Stream<Item = Result<sse::Event, Infallible>>>, ApiError> {
    let Query(q) = q.map_err(|e| ApiError::bad_request("invalid_query", e.body_text()))?;
    if let Some(k) = q.kind.as_deref() {
        if !["execution", "worker", "event", "enforcement"].contains(&k) {
            return Err(ApiError::bad_request(
                "invalid_query",
                format!("kind must be execution, worker, event or enforcement, not {k:?}"),
            ));
        }
    }
    let resume = headers.get("last-event-id").and_then(|v| v.to_str().ok()).map(str::to_owned).or(q.after);
    let cursor = match resume {
        Some(s) => EventCursor::parse(&s).ok_or_else(|| {
            ApiError::bad_request(
                "invalid_cursor",
                format!("event id {s:?} is not a cursor from this stream"),
            )
        })?,
        None => state.store.event_cursor_now().await?,
    };
    let mut cursor = cursor;
    if cursor.rules < 0 {
        cursor.rules = state.store.event_cursor_now().await?.rules;
    }
    let follow = Follow {
        shared: state.0.clone(),
        cursor,
        kind: q.kind,
        action: q.action,
        pending: VecDeque::new(),
        changes: state.changes.subscribe(),
    };
    let stream = futures_util::stream::unfold(follow, |mut f| async move {
        let e = f.next().await?;
        let ev = sse::Event::default()
            .id(e.cursor.to_string())
            .event(e.name.clone())
            .json_data(wire_event(e))
            .unwrap_or_else(|_| sse::Event::default().comment("unserialisable event"));
        Some((Ok(ev), f))
    });
    Ok(Sse::new(stream).keep_alive(KeepAlive::default()))
}
