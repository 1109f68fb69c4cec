//! The event stream's source: execution transitions (the `execution_history` log) and worker
//! lifecycle events (`worker_events`), read after a cursor. The cursor is a pair of ids, one per
//! log, written `<history id>-<worker event id>`; it is what SSE clients send back as
//! `Last-Event-ID` to resume.

use crate::{rows::RowExt, Result, Store, StoreError};
use attune_core::Timestamp;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EventCursor {
    pub history: i64,
    pub workers: i64,
}

impl EventCursor {
    pub fn parse(s: &str) -> Option<EventCursor> {
        let (h, w) = s.trim().split_once('-')?;
        Some(EventCursor { history: h.parse().ok()?, workers: w.parse().ok()? })
    }
}

impl std::fmt::Display for EventCursor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}-{}", self.history, self.workers)
    }
}

/// One event as read from the logs (the server turns it into `attune_wire::StreamEvent`).
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// `execution` or `worker`.
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
            Ok(EventCursor { history: h.unwrap_or(0), workers: w.unwrap_or(0) })
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
            if e.kind == "execution" {
                running.history = e.cursor.history;
            } else {
                running.workers = e.cursor.workers;
            }
            e.cursor = running;
        }
        Ok((out, next))
    }
}
