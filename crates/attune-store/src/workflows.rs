//! Workflows and inquiries: the engine's state rows, the children whose end it has not applied
//! yet, and `workflow_step`, which writes one step of the engine — the new state (only over the
//! version it read), the children whose ends it consumed, and the children it starts — in one
//! transaction. A crash before the commit leaves the step undone (it is taken again); after it,
//! done once. A child's identity is unique per workflow, so no step can start a child twice.

use attune_core::{lifecycle::Change, Execution, ExecutionStatus, NewExecution, Timestamp};
use serde_json::Value;
use uuid::Uuid;

use crate::{
    backend::in_list,
    executions::{exec_from_row, insert_executions, EXEC_COLS},
    rows::{opt_json, to_json, uuid, RowExt},
    Applied, Result, Store, StoreError,
};

const TERMINAL: &str = "('succeeded', 'failed', 'timeout', 'canceled', 'abandoned')";

/// A workflow's stored state.
#[derive(Debug, Clone, PartialEq)]
pub struct WorkflowRow {
    pub execution_id: Uuid,
    pub phase: String,
    pub paused: bool,
    pub state: Value,
    pub finish: Option<Value>,
    pub version: i64,
}

/// A child that ended and whose end the engine has not applied yet.
#[derive(Debug, Clone, PartialEq)]
pub struct EndedChild {
    pub id: Uuid,
    pub key: String,
    pub status: ExecutionStatus,
    pub result: Option<Value>,
    pub error: Option<Value>,
    pub stdout: String,
}

/// What the engine has to do now.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EngineDue {
    /// Workflow executions to start (`scheduled`), or started without a state row yet.
    pub start: Vec<Uuid>,
    /// Workflows with children that ended, or asked to cancel, or finished but not yet settled.
    pub advance: Vec<Uuid>,
    /// Inquiries to open (`scheduled`).
    pub open: Vec<Uuid>,
    /// Pending inquiries past their timeout, with it.
    pub expired: Vec<(Uuid, u64)>,
}

/// One step of the engine, written at once.
#[derive(Debug, Clone)]
pub struct WorkflowStep {
    pub execution_id: Uuid,
    /// The version the step read; `None`: the workflow's first step (its row is created).
    pub version: Option<i64>,
    pub phase: String,
    pub paused: bool,
    pub state: Value,
    pub finish: Option<Value>,
    /// Children whose ends the step consumed.
    pub applied: Vec<Uuid>,
    /// Children it starts (each with its `child_key`).
    pub children: Vec<NewExecution>,
    /// The workflow execution's own change written with the step (its start with the first step,
    /// its end with the last): one guarded statement in the same transaction; if its guard no
    /// longer holds, nothing is written.
    pub transition: Option<Change>,
    pub now: Timestamp,
}

/// What a written step created and changed.
#[derive(Debug, Clone)]
pub struct StepWritten {
    pub children: Vec<Execution>,
    /// The workflow execution's change, when the step carried one.
    pub transition: Option<Applied>,
}

impl Store {
    /// The engine's queries name their partial indexes on SQLite (its planner otherwise walks the
    /// status index over every finished execution).
    fn by(&self, index: &str) -> String {
        crate::backend::indexed_by(self.kind, index)
    }

    /// What the engine must do now, at most `limit` of each.
    pub async fn engine_due(&self, now: Timestamp, limit: i64) -> Result<EngineDue> {
        let server_run = self.by("executions_server_run");
        let unapplied = self.by("executions_child_unapplied");
        let open_wf = self.by("workflows_open");
        let start_sql = format!(
            "SELECT e.id FROM executions e {server_run} WHERE e.queue IN ('workflow', 'inquiry') AND e.queue = 'workflow'
               AND e.status IN ('scheduled', 'running', 'canceling')
               AND (e.status = 'scheduled' OR NOT EXISTS (SELECT 1 FROM workflows w WHERE w.execution_id = e.id))
             ORDER BY e.id LIMIT $1"
        );
        let advance_sql = format!(
            "SELECT id FROM (
                SELECT DISTINCT c.parent AS id FROM executions c {unapplied}
                 WHERE c.child_key IS NOT NULL AND c.child_applied = FALSE AND c.status IN {TERMINAL}
                UNION
                SELECT w.execution_id FROM workflows w {open_wf}
                 WHERE (w.phase <> 'done' OR w.finish IS NOT NULL)
                   AND (w.finish IS NOT NULL OR w.phase = 'canceling' OR (w.phase = 'running' AND EXISTS (
                        SELECT 1 FROM executions e WHERE e.id = w.execution_id AND e.status = 'canceling')))
             ) due ORDER BY id LIMIT $1"
        );
        let open_sql = format!(
            "SELECT id FROM executions {server_run} WHERE queue IN ('workflow', 'inquiry') AND queue = 'inquiry'
               AND status = 'scheduled' ORDER BY id LIMIT $1"
        );
        let expired_sql = format!(
            "SELECT id, timeout_seconds FROM executions {server_run} WHERE queue IN ('workflow', 'inquiry')
               AND queue = 'inquiry' AND status = 'pending'
               AND timeout_seconds IS NOT NULL AND started_at + timeout_seconds * 1000 < $2
             ORDER BY id LIMIT $1"
        );
        // One statement for the four: the engine asks twice per wake-up (the second time to see
        // that nothing more is due), on every step of every workflow.
        let sql = format!(
            "SELECT 'start' AS kind, id, CAST(0 AS BIGINT) AS t FROM ({start_sql}) s
             UNION ALL SELECT 'advance', id, CAST(0 AS BIGINT) FROM ({advance_sql}) a
             UNION ALL SELECT 'open', id, CAST(0 AS BIGINT) FROM ({open_sql}) o
             UNION ALL SELECT 'expired', id, timeout_seconds FROM ({expired_sql}) x"
        );
        let mut due = EngineDue::default();
        read_pool!(self, p => {
            for r in sqlx::query(&sql).bind(limit).bind(now.millis()).fetch_all(p).await? {
                let id = uuid("executions", &r.text("id")?)?;
                match r.text("kind")?.as_str() {
                    "start" => due.start.push(id),
                    "advance" => due.advance.push(id),
                    "open" => due.open.push(id),
                    _ => due.expired.push((id, r.big("t")?.max(0) as u64)),
                }
            }
        });
        Ok(due)
    }

    /// The workflow execution and its state row (if it has one yet), read at once: what every
    /// step of the engine starts from.
    pub async fn workflow_execution(&self, id: Uuid) -> Result<Option<(Execution, Option<WorkflowRow>)>> {
        const T: &str = "workflows";
        read_pool!(self, p => {
            let row = sqlx::query(&format!(
                "SELECT {EXEC_COLS}, w_phase, w_paused, w_state, w_finish, w_version FROM executions
                 LEFT JOIN (SELECT execution_id AS w_id, phase AS w_phase, paused AS w_paused, state AS w_state,
                                   finish AS w_finish, version AS w_version FROM workflows) w ON w.w_id = executions.id
                 WHERE id = $1"
            ))
            .bind(id.to_string())
            .fetch_optional(p)
            .await?;
            row.map(|r| {
                let e = exec_from_row(&r)?;
                let w = match r.opt_text("w_phase")? {
                    None => None,
                    Some(phase) => Some(WorkflowRow {
                        execution_id: e.id,
                        phase,
                        paused: r.boolean("w_paused")?,
                        state: crate::rows::json(T, "state", &r.text("w_state")?)?,
                        finish: opt_json(T, "finish", r.opt_text("w_finish")?)?,
                        version: r.big("w_version")?,
                    }),
                };
                Ok((e, w))
            })
            .transpose()
        })
    }

    pub async fn get_workflow(&self, id: Uuid) -> Result<Option<WorkflowRow>> {
        const T: &str = "workflows";
        read_pool!(self, p => {
            let row = sqlx::query(
                "SELECT execution_id, phase, paused, state, finish, version FROM workflows WHERE execution_id = $1",
            )
            .bind(id.to_string())
            .fetch_optional(p)
            .await?;
            row.map(|r| {
                Ok(WorkflowRow {
                    execution_id: uuid(T, &r.text("execution_id")?)?,
                    phase: r.text("phase")?,
                    paused: r.boolean("paused")?,
                    state: crate::rows::json(T, "state", &r.text("state")?)?,
                    finish: opt_json(T, "finish", r.opt_text("finish")?)?,
                    version: r.big("version")?,
                })
            })
            .transpose()
        })
    }

    /// The workflow's children that ended and are not applied yet, in the order they ended.
    pub async fn ended_children(&self, parent: Uuid, limit: i64) -> Result<Vec<EndedChild>> {
        const T: &str = "executions";
        read_pool!(self, p => {
            let rows = sqlx::query(&format!(
                "SELECT id, child_key, status, result, error, stdout FROM executions {}
                  WHERE parent = $1 AND child_key IS NOT NULL AND child_applied = FALSE AND status IN {TERMINAL}
                  ORDER BY finished_at, id LIMIT $2",
                self.by("executions_child_unapplied")
            ))
            .bind(parent.to_string())
            .bind(limit)
            .fetch_all(p)
            .await?;
            rows.iter()
                .map(|r| {
                    let st = r.text("status")?;
                    Ok(EndedChild {
                        id: uuid(T, &r.text("id")?)?,
                        key: r.text("child_key")?,
                        status: ExecutionStatus::parse(&st)
                            .ok_or_else(|| StoreError::Corrupt { table: T, message: format!("status {st:?}") })?,
                        result: opt_json(T, "result", r.opt_text("result")?)?,
                        error: opt_json(T, "error", r.opt_text("error")?)?,
                        stdout: r.text("stdout")?,
                    })
                })
                .collect()
        })
    }

    /// The children of `parent` (any execution with it as parent), oldest first.
    pub async fn children(&self, parent: Uuid) -> Result<Vec<Execution>> {
        read_pool!(self, p => {
            let rows = sqlx::query(&format!(
                "SELECT {EXEC_COLS} FROM executions WHERE parent = $1 ORDER BY id LIMIT 10000"
            ))
            .bind(parent.to_string())
            .fetch_all(p)
            .await?;
            rows.iter().map(exec_from_row).collect()
        })
    }

    /// The children of `parent` that have not ended (and, with `uncanceled`, are not being
    /// canceled already).
    pub async fn open_children(&self, parent: Uuid, uncanceled: bool) -> Result<Vec<Uuid>> {
        let also = if uncanceled { " AND status <> 'canceling'" } else { "" };
        read_pool!(self, p => {
            let rows: Vec<String> = sqlx::query_scalar(&format!(
                "SELECT id FROM executions WHERE parent = $1 AND child_key IS NOT NULL AND status NOT IN {TERMINAL}{also}"
            ))
            .bind(parent.to_string())
            .fetch_all(p)
            .await?;
            rows.iter().map(|s| uuid("executions", s)).collect()
        })
    }

    /// Writes one engine step in one transaction. `Ok(None)`: another step got there first (the
    /// version moved, the first step was taken already, or the workflow execution changed under
    /// the step's transition): nothing was written; read again. Otherwise what it created and
    /// changed.
    pub async fn workflow_step(&self, s: WorkflowStep) -> Result<Option<StepWritten>> {
        let at = s.now.millis();
        let ids: Vec<Uuid> = s.children.iter().map(|_| Uuid::now_v7()).collect();
        let mut transition = None;
        write_pool!(self, p => {
            let mut tx = p.begin().await?;
            let state = to_json(&s.state);
            let finish = s.finish.as_ref().map(to_json);
            // The first step creates the row; every later one moves it on from the version it read.
            let sql = match s.version {
                None => "INSERT INTO workflows (execution_id, phase, paused, state, finish, updated_at, version)
                         VALUES ($1, $2, $3, $4, $5, $6, 1) ON CONFLICT (execution_id) DO NOTHING",
                Some(_) => "UPDATE workflows SET phase = $2, paused = $3, state = $4, finish = $5,
                            updated_at = $6, version = version + 1 WHERE execution_id = $1 AND version = $7",
            };
            let mut q = sqlx::query(sql)
                .bind(s.execution_id.to_string())
                .bind(&s.phase)
                .bind(s.paused)
                .bind(state)
                .bind(finish)
                .bind(at);
            if let Some(v) = s.version {
                q = q.bind(v);
            }
            let written = q.execute(&mut *tx).await?.rows_affected();
            if written == 0 {
                tx.rollback().await?;
                return Ok(None);
            }
            if let Some(change) = &s.transition {
                let Some(a) = crate::lifecycle::apply_in!(self, tx, change) else {
                    tx.rollback().await?;
                    return Ok(None);
                };
                transition = Some(a);
            }
            if !s.applied.is_empty() {
                let (cond, list) = in_list(self.kind, "id", 1, &s.applied);
                sqlx::query(&format!("UPDATE executions SET child_applied = TRUE WHERE {cond}"))
                    .bind(list)
                    .execute(&mut *tx)
                    .await?;
            }
            let rows: Vec<(Uuid, &NewExecution)> = ids.iter().copied().zip(s.children.iter()).collect();
            for chunk in rows.chunks(200) {
                insert_executions!(&mut *tx, chunk, at);
            }
            if let Some(change) = s.transition.as_ref().filter(|c| c.is_terminal()) {
                // Counter rows last, as every transaction takes them.
                crate::lifecycle::count_ended_in!(self, tx, change);
            }
            tx.commit().await?;
        });
        Ok(Some(StepWritten {
            children: ids
                .into_iter()
                .zip(s.children)
                .map(|(id, new)| crate::executions::accepted_execution(id, new, s.now))
                .collect(),
            transition,
        }))
    }

    /// Running workflows with nothing under them: no child open, no child's end waiting to be
    /// applied, not paused, and not stepped for `quiet_ms`. A workflow in that state can only move
    /// on if the engine is nudged (`attune-server/src/workflows.rs::repair`).
    pub async fn quiet_workflows(&self, now: Timestamp, quiet_ms: i64, limit: i64) -> Result<Vec<Uuid>> {
        let open_wf = self.by("workflows_open");
        let rows: Vec<String> = read_pool!(self, p => {
            sqlx::query_scalar(&format!(
                "SELECT w.execution_id FROM workflows w {open_wf} JOIN executions e ON e.id = w.execution_id
                  WHERE (w.phase <> 'done' OR w.finish IS NOT NULL)
                    AND w.phase IN ('running', 'canceling') AND w.paused = FALSE AND w.updated_at < $1
                    AND e.status IN ('running', 'canceling')
                    AND NOT EXISTS (SELECT 1 FROM executions c WHERE c.parent = w.execution_id
                                     AND c.child_key IS NOT NULL
                                     AND (c.status NOT IN {TERMINAL} OR c.child_applied = FALSE))
                  ORDER BY w.execution_id LIMIT $2"
            ))
            .bind(now.millis() - quiet_ms)
            .bind(limit)
            .fetch_all(p)
            .await?
        });
        rows.iter().map(|s| uuid("workflows", s)).collect()
    }

    /// Every child of `parent` by its key: (id, status).
    pub async fn child_keys(
        &self,
        parent: Uuid,
    ) -> Result<std::collections::HashMap<String, (Uuid, ExecutionStatus)>> {
        read_pool!(self, p => {
            let rows = sqlx::query("SELECT id, child_key, status FROM executions WHERE parent = $1 AND child_key IS NOT NULL")
                .bind(parent.to_string())
                .fetch_all(p)
                .await?;
            rows.iter()
                .map(|r| {
                    let st = r.text("status")?;
                    let status = ExecutionStatus::parse(&st).ok_or_else(|| StoreError::Corrupt {
                        table: "executions",
                        message: format!("status {st:?}"),
                    })?;
                    Ok((r.text("child_key")?, (uuid("executions", &r.text("id")?)?, status)))
                })
                .collect()
        })
    }

    /// Marks a finished workflow settled (its execution has ended): nothing more to do for it.
    pub async fn settle_workflow(&self, id: Uuid) -> Result<()> {
        write_pool!(self, p => {
            sqlx::query("UPDATE workflows SET finish = NULL WHERE execution_id = $1 AND phase = 'done'")
                .bind(id.to_string())
                .execute(p)
                .await?;
        });
        Ok(())
    }

    /// Pending inquiries (and ones scheduled, about to be opened), newest first.
    pub async fn list_inquiries(&self, limit: i64) -> Result<Vec<Execution>> {
        read_pool!(self, p => {
            let rows = sqlx::query(&format!(
                "SELECT {EXEC_COLS} FROM executions {} WHERE queue IN ('workflow', 'inquiry') AND queue = 'inquiry'
                   AND status IN ('pending', 'scheduled')
                 ORDER BY id DESC LIMIT $1",
                self.by("executions_server_run")
            ))
            .bind(limit)
            .fetch_all(p)
            .await?;
            rows.iter().map(exec_from_row).collect()
        })
    }
}
