//! Live output: chunks a worker sends while its action runs, fenced by the lease token like every
//! other report, read back after a cursor.

use attune_core::{lifecycle::Holder, LogChunk, Timestamp};
use uuid::Uuid;

use crate::{rows::RowExt, Result, Store, StoreError};

impl Store {
    /// Appends chunks for the running attempt that `holder` holds; anyone else changes nothing.
    pub async fn append_logs(
        &self,
        id: Uuid,
        holder: Holder<'_>,
        chunks: &[LogChunk],
        now: Timestamp,
    ) -> Result<()> {
        let ids = id.to_string();
        let holder_of: Option<Option<String>> = read_pool!(self, p => {
            sqlx::query_scalar(
                "SELECT worker_id FROM executions WHERE id = $1 AND lease_token = $2
                    AND status IN ('running', 'canceling')",
            )
            .bind(&ids)
            .bind(holder.token)
            .fetch_optional(p)
            .await?
        });
        match holder_of {
            None => {
                return Err(StoreError::StaleLease {
                    id: ids,
                    message: "no running attempt holds this lease".into(),
                })
            }
            Some(w) if w != Some(holder.worker.to_string()) => {
                return Err(StoreError::Forbidden(format!(
                    "execution {ids}: its lease is held by another worker"
                )))
            }
            Some(_) => {}
        }
        write_pool!(self, p => {
            let mut tx = p.begin().await?;
            for c in chunks {
                sqlx::query(
                    "INSERT INTO execution_logs (execution_id, stream, at, text, encoding) VALUES ($1, $2, $3, $4, $5)",
                )
                    .bind(&ids)
                    .bind(&c.stream)
                    .bind(now.millis())
                    .bind(&c.text)
                    .bind(c.encoding.as_str())
                    .execute(&mut *tx)
                    .await?;
            }
            tx.commit().await?;
        });
        Ok(())
    }

    /// Chunks after `after`, oldest first.
    pub async fn logs_after(&self, id: Uuid, after: i64, limit: u32) -> Result<Vec<LogChunk>> {
        read_pool!(self, p => {
            let rows = sqlx::query(
                "SELECT id, stream, at, text, encoding FROM execution_logs WHERE execution_id = $1 AND id > $2 ORDER BY id LIMIT $3",
            )
            .bind(id.to_string())
            .bind(after)
            .bind(limit.clamp(1, 10_000) as i64)
            .fetch_all(p)
            .await?;
            rows.iter()
                .map(|r| {
                    Ok(LogChunk {
                        seq: r.big("id")?,
                        stream: r.text("stream")?,
                        at: Timestamp(r.big("at")?),
                        text: r.text("text")?,
                        encoding: crate::executions::encoding(r.text("encoding")?)?,
                    })
                })
                .collect()
        })
    }
}
