//! The event stream's source: execution transitions (the `execution_history` log), worker
//! lifecycle events (`worker_events`) and events with their enforcements (`rule_events`), read
//! after a cursor. The cursor is one id per log, written `<history>-<worker>-<rule>`; it is what
//! SSE clients send back as `Last-Event-ID` to resume. (A cursor of two ids, from before the third
//! log, resumes that log from now: `rules` is then -1 until the server sets it.)

use crate::{rows::RowExt, Result, Store, StoreError};
use attune_core::Timestamp;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EventCursor {
    pub history: i64,
    pub workers: i64,
    pub rules: i64,
}

impl EventCursor {
    pub fn parse(s: &str) -> Option<EventCursor> {
        let parts: Vec<i64> = s.trim().split('-').map(|p| p.parse().ok()).collect::<Option<_>>()?;
        match parts[..] {
            [h, w] if h >= 0 && w >= 0 => Some(EventCursor { history: h, workers: w, rules: -1 }),
            [h, w, r] if h >= 0 && w >= 0 && r >= 0 => Some(EventCursor { history: h, workers: w, rules: r }),
            _ => None,
        }
    }
}

impl std::fmt::Display for EventCursor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}-{}-{}", self.history, self.workers, self.rules)
    }
}

/// One event as read from the logs (the server turns it into `attune_wire::StreamEvent`).
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// `execution`, `worker`, `event` or `enforcement`.
    pub kind: &'static str,
    /// `ExecutionScheduled`, `ExecutionRunning`, …, `ExecutionCompleted` (any terminal status);
    /// `WorkerRegistered`, `WorkerActive`, `WorkerInactive`, `WorkerDeregistered`.
    pub name: String,
    pub at: Timestamp,
    pub execution_id: Option<String>,
    pub action_ref: Option<String>,
    pub from: Option<String>,
    pub status: Option<String>,
    pub attempt: Option<i32>,
    pub worker: Option<String>,
    pub actor: Option<String>,
    pub reason: Option<String>,
    /// An event's id (`event` and `enforcement`), its trigger type, the rule that enforced it.
    pub event_id: Option<String>,
    pub trigger: Option<String>,
    pub rule: Option<String>,
    /// The cursor just after this event.
    pub cursor: EventCursor,
}

fn camel(s: &str) -> String {
    let mut c = s.chars();
    c.next().map(|f| f.to_ascii_uppercase().to_string() + c.as_str()).unwrap_or_default()
}

impl Store {
    /// The cursor at the end of both logs now (where a new subscriber starts).
    pub async fn event_cursor_now(&self) -> Result<EventCursor> {
        read_pool!(self, p => {
            let h: Option<i64> = sqlx::query_scalar("SELECT MAX(id) FROM execution_history").fetch_one(p).await?;
            let w: Option<i64> = sqlx::query_scalar("SELECT MAX(id) FROM worker_events").fetch_one(p).await?;
            let r: Option<i64> = sqlx::query_scalar("SELECT MAX(id) FROM rule_events").fetch_one(p).await?;
            Ok(EventCursor { history: h.unwrap_or(0), workers: w.unwrap_or(0), rules: r.unwrap_or(0) })
        })
    }

    /// Up to `limit` events of each log after `cursor`, oldest first. On PostgreSQL, rows younger
    /// than `settle` are held back: ids are assigned before commit, so a younger row may still be
    /// joined by an older id; waiting a moment keeps the stream free of gaps.
    pub async fn events_after(
        &self,
        cursor: EventCursor,
        limit: u32,
        settle: std::time::Duration,
        now: Timestamp,
    ) -> Result<(Vec<Event>, EventCursor)> {
        let horizon = match self.kind {
            crate::BackendKind::Postgres => now.minus(settle).millis(),
            crate::BackendKind::Sqlite => i64::MAX,
        };
        let mut out = Vec::new();
        let mut next = cursor;
        read_pool!(self, p => {
            let rows = sqlx::query(
                "SELECT h.id, h.at, h.from_status, h.to_status, h.actor, h.reason, h.attempt, h.execution_id,
                        e.action_ref
                 FROM execution_history h JOIN executions e ON e.id = h.execution_id
                 WHERE h.id > $1 AND h.at <= $2 ORDER BY h.id LIMIT $3",
            )
            .bind(cursor.history)
            .bind(horizon)
            .bind(limit as i64)
            .fetch_all(p)
            .await?;
            for r in &rows {
                let to = r.text("to_status")?;
                let terminal = attune_core::ExecutionStatus::parse(&to).map(|s| s.is_terminal()).unwrap_or(false);
                next.history = r.big("id")?;
                out.push(Event {
                    kind: "execution",
                    name: if terminal { "ExecutionCompleted".into() } else { format!("Execution{}", camel(&to)) },
                    at: Timestamp(r.big("at")?),
                    execution_id: Some(r.text("execution_id")?),
                    action_ref: Some(r.text("action_ref")?),
                    from: r.opt_text("from_status")?,
                    status: Some(to),
                    attempt: Some(r.int("attempt")?),
                    worker: None,
                    actor: Some(r.text("actor")?),
                    reason: r.opt_text("reason")?,
                    event_id: None,
                    trigger: None,
                    rule: None,
                    cursor: next,
                });
            }
            let rows = sqlx::query(
                "SELECT id, at, worker_name, event, reason FROM worker_events
                 WHERE id > $1 AND at <= $2 ORDER BY id LIMIT $3",
            )
            .bind(cursor.workers)
            .bind(horizon)
            .bind(limit as i64)
            .fetch_all(p)
            .await?;
            for r in &rows {
                next.workers = r.big("id")?;
                out.push(Event {
                    kind: "worker",
                    name: format!("Worker{}", camel(&r.text("event")?)),
                    at: Timestamp(r.big("at")?),
                    execution_id: None,
                    action_ref: None,
                    from: None,
                    status: Some(r.text("event")?),
                    attempt: None,
                    worker: Some(r.text("worker_name")?),
                    actor: None,
                    reason: r.opt_text("reason")?,
                    event_id: None,
                    trigger: None,
                    rule: None,
                    cursor: next,
                });
            }
            let rows = sqlx::query(
                "SELECT id, at, kind, event_id, trigger_type, rule_ref, outcome, execution_id, reason FROM rule_events
                 WHERE id > $1 AND at <= $2 ORDER BY id LIMIT $3",
            )
            .bind(cursor.rules.max(0))
            .bind(horizon)
            .bind(limit as i64)
            .fetch_all(p)
            .await?;
            for r in &rows {
                next.rules = r.big("id")?;
                let kind = r.text("kind")?;
                let outcome = r.opt_text("outcome")?;
                let (kind, name) = match outcome.as_deref() {
                    Some(o) if kind == "enforcement" => ("enforcement", format!("Rule{}", o.split('_').map(camel).collect::<String>())),
                    _ => ("event", "EventReceived".to_owned()),
                };
                out.push(Event {
                    kind,
                    name,
                    at: Timestamp(r.big("at")?),
                    execution_id: r.opt_text("execution_id")?,
                    action_ref: None,
                    from: None,
                    status: outcome,
                    attempt: None,
                    worker: None,
                    actor: None,
                    reason: r.opt_text("reason")?,
                    event_id: Some(r.text("event_id")?),
                    trigger: r.opt_text("trigger_type")?,
                    rule: r.opt_text("rule_ref")?,
                    cursor: next,
                });
            }
            Ok::<(), StoreError>(())
        })?;
        // Interleave the two logs by time; each event carries the cursor covering everything up to it
        // in its own log and everything read from the other log before it.
        out.sort_by_key(|e| e.at);
        let mut running = cursor;
        for e in &mut out {
            match e.kind {
                "execution" => running.history = e.cursor.history,
                "worker" => running.workers = e.cursor.workers,
                _ => running.rules = e.cursor.rules,
            }
            e.cursor = running;
        }
        Ok((out, next))
    }
}
