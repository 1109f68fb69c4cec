//! Dead letters: written by `lifecycle` with the change that ends their execution, listed here.
//! Requeueing one submits a new execution (`NewExecution::requeue_of`; terminal states stay
//! final, the new execution points back with `parent`), which `create_executions` records in the
//! same transaction.

use attune_core::{ActionRef, DeadLetter, Timestamp};
use uuid::Uuid;

use crate::{
    rows::{opt_json, uuid, RowExt},
    Result, Store, StoreError,
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

    /// The dead letter of execution `execution` not yet requeued, if there is one.
    pub async fn dead_letter_of(&self, execution: Uuid) -> Result<Option<DeadLetter>> {
        read_pool!(self, p => {
            let row = sqlx::query(&format!(
                "SELECT {COLS} FROM dead_letters WHERE execution_id = $1 AND requeued_at IS NULL"
            ))
            .bind(execution.to_string())
            .fetch_optional(p)
            .await?;
            row.map(|r| from_row(&r)).transpose()
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
}
