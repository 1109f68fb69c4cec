//! The queue: handing `scheduled` tasks to workers (claim) and taking them back when they were not
//! started — the poller was gone (unclaim) or the start confirmation did not come in time
//! (delivery expiry). None of these moves a status or counts an attempt: a delivery only sets or
//! clears the lease of a waiting task. Status changes happen in `lifecycle`.

use attune_core::{lifecycle::AVOID_WINDOW, Runtime, Task, Timestamp};
use uuid::Uuid;

use crate::{
    rows::{json, uuid, RowExt},
    Result, Store,
};

const TASK_COLS: &str = "id, action, parameters, attempt, max_attempts, timeout_seconds";

/// A delivery being made: its lease token, to whom, and until when it must be started.
struct Delivery<'a> {
    token: &'a str,
    worker: &'a str,
    worker_name: &'a str,
    now: Timestamp,
    until: Timestamp,
}

fn task_from_row(r: &impl RowExt, token: &str) -> Result<Task> {
    Ok(Task {
        execution_id: uuid("executions", &r.text("id")?)?,
        lease_token: token.to_owned(),
        attempt: r.int("attempt")? as u32 + 1,
        max_attempts: r.int("max_attempts")? as u32,
        action: json("executions", "action", &r.text("action")?)?,
        parameters: json("executions", "parameters", &r.text("parameters")?)?,
        timeout_seconds: r.opt_big("timeout_seconds")?.map(|t| t as u64),
        masks: Vec::new(),
        parameter_error: None,
    })
}

impl Store {
    /// Hands up to `max` waiting tasks from the given queues to `worker`, oldest first, if the worker
    /// is `active` (a draining or stale worker gets nothing). They stay
    /// `scheduled` until the worker confirms with `start`; unconfirmed ones go back to the queue when
    /// `delivery_until` passes (see `expire_deliveries`).
    pub async fn claim(
        &self,
        worker: Uuid,
        worker_name: &str,
        runtimes: &[Runtime],
        max: u32,
        now: Timestamp,
        delivery_until: Timestamp,
    ) -> Result<Vec<Task>> {
        if max == 0 || runtimes.is_empty() {
            return Ok(Vec::new());
        }
        let queues = runtimes.iter().map(|r| format!("'{}'", r.as_str())).collect::<Vec<_>>().join(", ");
        // PostgreSQL: SKIP LOCKED lets concurrent claimers pass each other. SQLite has a single
        // writer, so the sub-select and update are already atomic.
        let lock = match self.kind {
            crate::BackendKind::Postgres => "FOR UPDATE SKIP LOCKED",
            crate::BackendKind::Sqlite => "",
        };
        // SQLite, left to itself, takes the (queue, id) index for `queue IN (…)` and then sorts
        // every waiting row by rank: with 20,000 waiting that halved the claim rate (measured).
        // The rank index gives them in order, which is what a claim of the first few needs.
        let order_index = crate::backend::indexed_by(self.kind, "executions_ready_rank");
        // What a waiting execution must be for this worker, with `$W` its id and `$NOW` the time.
        // An execution with a worker selector goes only to a worker whose labels (text values, as
        // registration stores them) include every selected label with the same value.
        let avoid = AVOID_WINDOW.as_millis();
        let selected = match self.kind {
            crate::BackendKind::Postgres => {
                "(selector IS NULL OR (SELECT labels FROM workers WHERE id = $W)::jsonb @> selector::jsonb)"
            }
            crate::BackendKind::Sqlite => {
                "(selector IS NULL OR NOT EXISTS (SELECT 1 FROM json_each(executions.selector) s
                    WHERE json_extract((SELECT labels FROM workers WHERE id = $W), '$.\"' || s.key || '\"') IS NOT s.value))"
            }
        };
        let filter = format!(
            "status = 'scheduled' AND lease_token IS NULL AND queue IN ({queues})
               AND not_before <= $NOW AND {selected}
               AND (avoid_worker IS NULL OR avoid_worker <> $W OR not_before < $NOW - {avoid}
                    OR NOT EXISTS (SELECT 1 FROM workers o WHERE o.status = 'active' AND o.id <> $W
                                   AND o.runtimes LIKE '%\"' || executions.queue || '\"%'))
               AND EXISTS (SELECT 1 FROM workers w WHERE w.id = $W AND w.status = 'active')"
        );
        // Executions under a concurrency or rate limit are taken by `claim_limited`.
        let sql = format!(
            "UPDATE executions SET lease_token = $1, worker_id = $2, worker_name = $3, delivered_at = $4,
                lease_expires_at = $5, updated_at = $4
             WHERE id IN (SELECT id FROM executions {order_index} WHERE {} AND concurrency_key IS NULL AND rate_key IS NULL
                 ORDER BY queue_rank, id LIMIT $6 {lock})
             RETURNING {TASK_COLS}",
            filter.replace("$W", "$2").replace("$NOW", "$4")
        );
        let token = Uuid::new_v4().simple().to_string();
        let wid = worker.to_string();
        let mut tasks: Vec<Task> = write_pool!(self, p => {
            let rows = sqlx::query(&sql)
                .bind(&token)
                .bind(&wid)
                .bind(worker_name)
                .bind(now.millis())
                .bind(delivery_until.millis())
                .bind(max as i64)
                .fetch_all(p)
                .await?;
            rows.iter().map(|r| task_from_row(r, &token)).collect::<Result<_>>()?
        });
        if (tasks.len() as u32) < max {
            let candidates = format!(
                "SELECT id, concurrency_key, concurrency_limit, rate_key, rate_per_second, rate_burst
                 FROM executions {order_index} WHERE {} AND (concurrency_key IS NOT NULL OR rate_key IS NOT NULL) ORDER BY queue_rank, id LIMIT 500",
                filter.replace("$W", "$1").replace("$NOW", "$2")
            );
            let lease = Delivery { token: &token, worker: &wid, worker_name, now, until: delivery_until };
            tasks.extend(self.claim_limited(&candidates, &lease, max - tasks.len() as u32).await?);
        }
        tasks.sort_by_key(|t| t.execution_id);
        Ok(tasks)
    }

    /// The waiting executions under a concurrency or rate limit that `candidates` (a query binding
    /// the worker as `$1` and the time as `$2`) finds, oldest first, each taken if its
    /// concurrency key has a free slot and its rate bucket a token. A slot is held by an execution
    /// delivered, running or canceling, counted inside the write transaction; a bucket refills at
    /// its rate up to its burst and is written back at the end. Both are read under SQLite's single
    /// writer, or on PostgreSQL after taking a transaction-scoped advisory lock on every key
    /// involved, in one statement and in hash order (so two replicas cannot deadlock), so claimers
    /// on several replicas never exceed a limit. The chosen executions are taken in one UPDATE.
    async fn claim_limited(&self, candidates: &str, lease: &Delivery<'_>, max: u32) -> Result<Vec<Task>> {
        use sqlx::Row;
        let now = lease.now.millis();
        let pg = self.kind == crate::BackendKind::Postgres;
        // A JSON array of texts as a set: `IN (SELECT … $1)`.
        let elements = if pg {
            "SELECT jsonb_array_elements_text($1::jsonb)"
        } else {
            "SELECT value FROM json_each($1)"
        };
        // PostgreSQL: the candidates and the advisory locks on all their keys (in hash order, so two
        // replicas cannot deadlock) in one statement. The candidates may be stale by the time the
        // locks are held: the final UPDATE re-checks each row, and the holders and buckets are read
        // by later statements, which see everything committed before the locks were granted.
        let locked;
        let candidates = if pg {
            locked = format!(
                "WITH c AS ({candidates}),
                 l AS (SELECT count(pg_advisory_xact_lock(h)) AS n FROM (SELECT DISTINCT hashtextextended(k, 7316) AS h
                         FROM (SELECT 'c:' || concurrency_key AS k FROM c WHERE concurrency_key IS NOT NULL
                               UNION ALL SELECT 'r:' || rate_key FROM c WHERE rate_key IS NOT NULL) ks ORDER BY 1) s)
                 SELECT c.*, (SELECT n FROM l) AS locks FROM c"
            );
            locked.as_str()
        } else {
            candidates
        };
        let mut out = Vec::new();
        write_pool!(self, p => {
            let mut tx = p.begin().await?;
            let rows = sqlx::query(candidates)
                .bind(lease.worker)
                .bind(now)
                .fetch_all(&mut *tx)
                .await?;
            if rows.is_empty() {
                return Ok(out);
            }
            struct Candidate {
                id: Uuid,
                ckey: Option<String>,
                climit: i64,
                rkey: Option<String>,
                rate: f64,
                burst: f64,
            }
            let mut cands = Vec::with_capacity(rows.len());
            for r in &rows {
                cands.push(Candidate {
                    id: uuid("executions", &r.text("id")?)?,
                    ckey: r.opt_text("concurrency_key")?,
                    climit: r.opt_int("concurrency_limit")?.unwrap_or(1) as i64,
                    rkey: r.opt_text("rate_key")?,
                    rate: r.try_get::<Option<f64>, _>("rate_per_second")?.unwrap_or(1.0),
                    burst: r.opt_int("rate_burst")?.unwrap_or(1).max(1) as f64,
                });
            }
            let mut ckeys: Vec<String> = cands.iter().filter_map(|c| c.ckey.clone()).collect();
            ckeys.sort();
            ckeys.dedup();
            let mut rkeys: Vec<String> = cands.iter().filter_map(|c| c.rkey.clone()).collect();
            rkeys.sort();
            rkeys.dedup();
            let as_json = |v: &Vec<String>| serde_json::to_string(v).unwrap_or_else(|_| "[]".into());
            // Free slots per concurrency key, tokens per rate key.
            let mut slots: std::collections::HashMap<String, i64> = Default::default();
            if !ckeys.is_empty() {
                let held = sqlx::query(&format!(
                    "SELECT concurrency_key, COUNT(*) AS n FROM executions WHERE concurrency_key IN ({elements})
                       AND (status IN ('running', 'canceling') OR (status = 'scheduled' AND lease_token IS NOT NULL))
                     GROUP BY concurrency_key"
                ))
                .bind(as_json(&ckeys))
                .fetch_all(&mut *tx)
                .await?;
                let held: std::collections::HashMap<String, i64> = held
                    .iter()
                    .map(|r| Ok((r.text("concurrency_key")?, r.big("n")?)))
                    .collect::<Result<_>>()?;
                for c in &cands {
                    if let Some(k) = &c.ckey {
                        slots.entry(k.clone()).or_insert((c.climit - held.get(k).copied().unwrap_or(0)).max(0));
                    }
                }
            }
            let mut buckets: std::collections::HashMap<String, f64> = Default::default();
            if !rkeys.is_empty() {
                let stored = sqlx::query(&format!("SELECT key, tokens, updated_at FROM rate_buckets WHERE key IN ({elements})"))
                    .bind(as_json(&rkeys))
                    .fetch_all(&mut *tx)
                    .await?;
                let mut known: std::collections::HashMap<String, (f64, i64)> = Default::default();
                for b in &stored {
                    known.insert(b.text("key")?, (b.try_get("tokens")?, b.try_get("updated_at")?));
                }
                for c in &cands {
                    if let Some(k) = &c.rkey {
                        buckets.entry(k.clone()).or_insert(match known.get(k) {
                            None => c.burst,
                            Some((t, at)) => (t + (now - at).max(0) as f64 / 1000.0 * c.rate).min(c.burst),
                        });
                    }
                }
            }
            let mut chosen = Vec::new();
            for c in &cands {
                if chosen.len() as u32 >= max {
                    break;
                }
                if c.ckey.as_ref().is_some_and(|k| slots[k] == 0) || c.rkey.as_ref().is_some_and(|k| buckets[k] < 1.0) {
                    continue;
                }
                if let Some(k) = &c.ckey {
                    *slots.get_mut(k).expect("counted above") -= 1;
                }
                if let Some(k) = &c.rkey {
                    *buckets.get_mut(k).expect("read above") -= 1.0;
                }
                chosen.push(c.id);
            }
            if !chosen.is_empty() {
                let (cond, list) = crate::backend::in_list(self.kind, "id", 6, &chosen);
                let rows = sqlx::query(&format!(
                    "UPDATE executions SET lease_token = $1, worker_id = $2, worker_name = $3, delivered_at = $4,
                        lease_expires_at = $5, updated_at = $4
                     WHERE {cond} AND status = 'scheduled' AND lease_token IS NULL RETURNING {TASK_COLS}"
                ))
                .bind(lease.token)
                .bind(lease.worker)
                .bind(lease.worker_name)
                .bind(now)
                .bind(lease.until.millis())
                .bind(list)
                .fetch_all(&mut *tx)
                .await?;
                for r in &rows {
                    out.push(task_from_row(r, lease.token)?);
                }
            }
            // Only what was spent is written back: a token not spent on a row that moved meanwhile
            // is a token lost for a moment, never one given twice.
            for (k, tokens) in &buckets {
                sqlx::query(
                    "INSERT INTO rate_buckets (key, tokens, updated_at) VALUES ($1, $2, $3)
                     ON CONFLICT (key) DO UPDATE SET tokens = excluded.tokens, updated_at = excluded.updated_at",
                )
                .bind(k)
                .bind(*tokens)
                .bind(now)
                .execute(&mut *tx)
                .await?;
            }
            tx.commit().await?;
        });
        Ok(out)
    }

    /// The open executions (waiting, running or canceling) under concurrency key `key`, oldest
    /// first.
    pub async fn open_with_concurrency_key(&self, key: &str) -> Result<Vec<Uuid>> {
        let ids: Vec<String> = read_pool!(self, p => {
            sqlx::query_scalar(
                "SELECT id FROM executions WHERE concurrency_key = $1
                   AND status IN ('scheduled', 'running', 'canceling') ORDER BY id",
            )
            .bind(key)
            .fetch_all(p)
            .await?
        });
        ids.iter().map(|s| uuid("executions", s)).collect()
    }

    /// Puts back in the queue every task that was handed out but not started in time. This is not
    /// an attempt: the attempt counter only moves on `start`.
    pub async fn expire_deliveries(&self, now: Timestamp) -> Result<u64> {
        write_pool!(self, p => {
            Ok(sqlx::query(
                "UPDATE executions SET lease_token = NULL, lease_expires_at = NULL, delivered_at = NULL,
                    worker_id = NULL, worker_name = NULL, updated_at = $1
                 WHERE status = 'scheduled' AND lease_token IS NOT NULL AND lease_expires_at < $1",
            )
            .bind(now.millis())
            .execute(p)
            .await?
            .rows_affected())
        })
    }

    /// Puts back tasks just handed out under `token` whose poller is known to be gone (its
    /// connection closed before the answer could be sent). Not an attempt.
    pub async fn unclaim(&self, ids: &[Uuid], token: &str, now: Timestamp) -> Result<u64> {
        let mut n = 0;
        for id in ids {
            n += write_pool!(self, p => {
                sqlx::query(
                    "UPDATE executions SET lease_token = NULL, lease_expires_at = NULL, delivered_at = NULL,
                        worker_id = NULL, worker_name = NULL, updated_at = $3
                     WHERE id = $1 AND lease_token = $2 AND status = 'scheduled'",
                )
                .bind(id.to_string())
                .bind(token)
                .bind(now.millis())
                .execute(p)
                .await?
                .rows_affected()
            });
        }
        Ok(n)
    }
}
