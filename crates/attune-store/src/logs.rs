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
        let holds: Option<String> = read_pool!(self, p => {
            sqlx::query_scalar(
                "SELECT status FROM executions WHERE id = $1 AND lease_token = $2 AND worker_id = $3
                    AND status IN ('running', 'canceling')",
            )
            .bind(&ids)
            .bind(holder.token)
            .bind(holder.worker.to_string())
            .fetch_optional(p)
            .await?
        });
        if holds.is_none() {
            return Err(StoreError::StaleLease {
                id: ids,
                message: "no running attempt holds this lease".into(),
            });
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
