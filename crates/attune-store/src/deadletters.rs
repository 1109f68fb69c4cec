//! Dead letters: listing them with their cause, and requeueing one as a new execution (terminal
//! states stay final; the new execution points back with `parent`).

use attune_core::{ActionRef, DeadLetter, Execution, Timestamp};
use uuid::Uuid;

use crate::{
    rows::{opt_json, uuid, RowExt},
    NewExecution, Result, Store, StoreError,
};

fn from_row(r: &impl RowExt) -> Result<DeadLetter> {
    const T: &str = "dead_letters";
    let action_ref = r.text("action_ref")?;
    Ok(DeadLetter {
        id: uuid(T, &r.text("id")?)?,
        execution_id: uuid(T, &r.text("execution_id")?)?,
        action_ref: ActionRef::parse(&action_ref)
            .map_err(|e| StoreError::Corrupt { table: T, message: e.to_string() })?,
        cause: r.text("cause")?,
        error: opt_json(T, "error", r.opt_text("error")?)?,
        created_at: Timestamp(r.big("created_at")?),
        requeued_at: r.opt_big("requeued_at")?.map(Timestamp),
        requeued_as: r.opt_text("requeued_as")?.map(|s| uuid(T, &s)).transpose()?,
    })
}

const COLS: &str = "id, execution_id, action_ref, cause, error, created_at, requeued_at, requeued_as";

impl Store {
    /// Newest first; requeued ones only with `all`.
    pub async fn list_dead_letters(&self, all: bool, limit: u32) -> Result<Vec<DeadLetter>> {
        let filter = if all { "" } else { "WHERE requeued_at IS NULL" };
        read_pool!(self, p => {
            let rows = sqlx::query(&format!("SELECT {COLS} FROM dead_letters {filter} ORDER BY id DESC LIMIT $1"))
                .bind(limit.clamp(1, 1000) as i64)
                .fetch_all(p)
                .await?;
            rows.iter().map(from_row).collect()
        })
    }

    pub async fn get_dead_letter(&self, id: Uuid) -> Result<Option<DeadLetter>> {
        read_pool!(self, p => {
            let row = sqlx::query(&format!("SELECT {COLS} FROM dead_letters WHERE id = $1"))
                .bind(id.to_string())
                .fetch_optional(p)
                .await?;
            row.map(|r| from_row(&r)).transpose()
        })
    }

    /// Submits the dead letter's execution again, as a new execution with the same action snapshot
    /// and parameters, and marks the dead letter requeued. Requeueing twice is refused.
    pub async fn requeue_dead_letter(&self, id: Uuid, actor: &str, now: Timestamp) -> Result<Execution> {
        let dl = self
            .get_dead_letter(id)
            .await?
            .ok_or_else(|| StoreError::NotFound { what: "dead letter", id: id.to_string() })?;
        if let Some(new) = dl.requeued_as {
            return Err(StoreError::AlreadyDone(format!(
                "dead letter {id} was already requeued as execution {new}"
            )));
        }
        let old = self
            .get_execution(dl.execution_id)
            .await?
            .ok_or_else(|| StoreError::NotFound { what: "execution", id: dl.execution_id.to_string() })?;
        let action = old.action.clone().ok_or_else(|| StoreError::Corrupt {
            table: "executions",
            message: format!("execution {} has no action snapshot", old.id),
        })?;
        // Claim the dead letter first, so two concurrent requeues cannot both create an execution.
        let claimed = write_pool!(self, p => {
            sqlx::query("UPDATE dead_letters SET requeued_at = $2 WHERE id = $1 AND requeued_at IS NULL")
                .bind(id.to_string())
                .bind(now.millis())
                .execute(p)
                .await?
                .rows_affected()
                == 1
        });
        if !claimed {
            return Err(StoreError::AlreadyDone(format!("dead letter {id} was already requeued")));
        }
        let new = NewExecution {
            action,
            parameters: old.parameters.clone(),
            timeout_seconds: old.timeout_seconds,
            max_attempts: old.max_attempts,
            actor: actor.to_owned(),
            parent: Some(old.id),
            trace_id: old.trace_id.clone(),
        };
        let e = self.create_execution(new, now).await?;
        write_pool!(self, p => {
            sqlx::query("UPDATE dead_letters SET requeued_as = $2 WHERE id = $1")
                .bind(id.to_string())
                .bind(e.id.to_string())
                .execute(p)
                .await?;
        });
        Ok(e)
    }
}
