//! The queue: handing `scheduled` tasks to workers (claim) and taking them back when they were not
//! started — the poller was gone (unclaim) or the start confirmation did not come in time
//! (delivery expiry). None of these moves a status or counts an attempt: a delivery only sets or
//! clears the lease of a waiting task. Status changes happen in `lifecycle`.

use std::collections::{HashMap, HashSet};

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

/// The holders of the concurrency key of the row `e`: its executions delivered, running or
/// canceling, counted through the key's index. (Counted for a set of keys in one join,
/// PostgreSQL planned it, with statistics from before a burst, as a read of every waiting row:
/// 25 ms with 14,000 waiting.)
const HELD: &str = "CASE WHEN e.concurrency_key IS NULL THEN 0 ELSE (SELECT COUNT(*) FROM executions h
    WHERE h.concurrency_key = e.concurrency_key AND h.status IN ('scheduled', 'running', 'canceling')
      AND (h.status <> 'scheduled' OR h.lease_token IS NOT NULL)) END";

/// How many waiting executions under a limit one claim looks at, at most.
const LIMITED_SCAN: usize = 500;

/// A waiting execution under a concurrency or rate limit.
struct Limited {
    id: Uuid,
    ckey: Option<String>,
    climit: i64,
    rkey: Option<String>,
    rate: f64,
    burst: f64,
}

/// What a claim may still take: free slots per concurrency key, tokens per rate key.
#[derive(Default)]
struct Allowance {
    slots: HashMap<String, i64>,
    tokens: HashMap<String, f64>,
}

impl Allowance {
    /// Counts in `c`'s keys if not counted yet: `held` slots of its concurrency key, its rate
    /// bucket's `stored` (tokens, when), refilled up to `now`. A bucket never stored is full.
    fn count(&mut self, c: &Limited, held: i64, stored: Option<(f64, i64)>, now: i64) {
        if let Some(k) = &c.ckey {
            self.slots.entry(k.clone()).or_insert((c.climit - held).max(0));
        }
        if let Some(k) = &c.rkey {
            self.tokens.entry(k.clone()).or_insert(match stored {
                None => c.burst,
                Some((t, at)) => (t + (now - at).max(0) as f64 / 1000.0 * c.rate).min(c.burst),
            });
        }
    }

    /// Takes a slot and a token for `c` if both are there (its keys must have been filled in).
    fn take(&mut self, c: &Limited) -> bool {
        if c.ckey.as_ref().is_some_and(|k| self.slots[k] <= 0)
            || c.rkey.as_ref().is_some_and(|k| self.tokens[k] < 1.0)
        {
            return false;
        }
        if let Some(k) = &c.ckey {
            *self.slots.get_mut(k).expect("filled in") -= 1;
        }
        if let Some(k) = &c.rkey {
            *self.tokens.get_mut(k).expect("filled in") -= 1.0;
        }
        true
    }
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
        // The rank index gives them in order, which is what a claim of the first few needs. Those
        // under a limit have a rank index of their own, so neither claim walks the other's rows.
        let order_index = crate::backend::indexed_by(self.kind, "executions_ready_free");
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
            let limited_index = crate::backend::indexed_by(self.kind, "executions_ready_limited");
            let page = format!(
                "SELECT e.*, {HELD} AS held, b.tokens, b.updated_at AS bucket_at
                 FROM (SELECT id, queue_rank, concurrency_key, concurrency_limit, rate_key, rate_per_second, rate_burst
                       FROM executions {limited_index} WHERE {} AND (concurrency_key IS NOT NULL OR rate_key IS NOT NULL)
                         AND (queue_rank, id) > ($3, $4) ORDER BY queue_rank, id LIMIT $5) e
                 LEFT JOIN rate_buckets b ON b.key = e.rate_key
                 ORDER BY e.queue_rank, e.id",
                filter.replace("$W", "$1").replace("$NOW", "$2")
            );
            let lease = Delivery { token: &token, worker: &wid, worker_name, now, until: delivery_until };
            tasks.extend(self.claim_limited(&page, &lease, max - tasks.len() as u32).await?);
        }
        tasks.sort_by_key(|t| t.execution_id);
        Ok(tasks)
    }

    /// The waiting executions under a concurrency or rate limit, oldest first, each taken if its
    /// concurrency key has a free slot and its rate bucket a token. `page` (binding the worker as
    /// `$1`, the time as `$2`, the position to continue after as `$3`, `$4` and the page size as
    /// `$5`) lists them in queue order.
    ///
    /// A slot is held by an execution delivered, running or canceling; a bucket refills at its rate
    /// up to its burst. The candidates are read page by page, and a candidate whose key is full is
    /// passed over (up to `LIMITED_SCAN` of them), so a key at its limit does not hold up the
    /// others. Under SQLite's single writer that choice is final. On PostgreSQL it is tentative:
    /// a transaction-scoped advisory lock is taken on each key of the chosen rows, in one
    /// statement and in hash order (so two claimers cannot deadlock); then the rows themselves
    /// (`SKIP LOCKED`: a row another claimer is taking is left to it), with their keys' holders
    /// and buckets read again in that statement, which sees every claim committed before the
    /// locks were granted. So claimers on several replicas never exceed a limit, and each locks
    /// only what it may take.
    async fn claim_limited(&self, page: &str, lease: &Delivery<'_>, max: u32) -> Result<Vec<Task>> {
        let mut passed_over = HashSet::new();
        // When every row chosen was being taken by another claimer, look again past them rather
        // than come back empty-handed while others wait.
        for _ in 0..3 {
            let (tasks, skipped) = self.claim_limited_once(page, lease, max as usize, &passed_over).await?;
            if !tasks.is_empty() || skipped.is_empty() {
                return Ok(tasks);
            }
            passed_over.extend(skipped);
        }
        Ok(Vec::new())
    }

    /// One attempt of `claim_limited`: the tasks taken, and the chosen rows another claimer held.
    async fn claim_limited_once(
        &self,
        page: &str,
        lease: &Delivery<'_>,
        max: usize,
        passed_over: &HashSet<Uuid>,
    ) -> Result<(Vec<Task>, Vec<Uuid>)> {
        use sqlx::Row;
        let now = lease.now.millis();
        let pg = self.kind == crate::BackendKind::Postgres;
        let mut out = Vec::new();
        let mut skipped = Vec::new();
        write_pool!(self, p => {
            let mut tx = p.begin().await?;
            // 1. The candidates in queue order, page by page, each with its key's holders and its
            //    bucket; taken if what was counted so far leaves a slot and a token.
            let mut scanned: Vec<Limited> = Vec::new();
            let mut allowance = Allowance::default();
            let mut chosen: Vec<usize> = Vec::new();
            let mut after = (i64::MIN, String::new());
            let mut size = (2 * max).clamp(16, LIMITED_SCAN);
            loop {
                let rows = sqlx::query(page)
                    .bind(lease.worker)
                    .bind(now)
                    .bind(after.0)
                    .bind(&after.1)
                    .bind(size as i64)
                    .fetch_all(&mut *tx)
                    .await?;
                for r in &rows {
                    let c = Limited {
                        id: uuid("executions", &r.text("id")?)?,
                        ckey: r.opt_text("concurrency_key")?,
                        climit: r.opt_int("concurrency_limit")?.unwrap_or(1) as i64,
                        rkey: r.opt_text("rate_key")?,
                        rate: r.try_get::<Option<f64>, _>("rate_per_second")?.unwrap_or(1.0),
                        burst: r.opt_int("rate_burst")?.unwrap_or(1).max(1) as f64,
                    };
                    let bucket = r.try_get::<Option<f64>, _>("tokens")?.zip(r.opt_big("bucket_at")?);
                    allowance.count(&c, r.big("held")?, bucket, now);
                    if chosen.len() < max && !passed_over.contains(&c.id) && allowance.take(&c) {
                        chosen.push(scanned.len());
                    }
                    after = (r.big("queue_rank")?, r.text("id")?);
                    scanned.push(c);
                }
                if chosen.len() >= max || rows.len() < size || scanned.len() >= LIMITED_SCAN {
                    break;
                }
                size = (size * 2).min(LIMITED_SCAN - scanned.len());
            }
            if pg && !chosen.is_empty() {
                // 2. PostgreSQL: the chosen rows' keys locked, then the rows, then their counts
                //    again: read after the locks were granted, they see every claim of those keys
                //    committed before.
                let mut keys: Vec<String> = chosen
                    .iter()
                    .flat_map(|&i| {
                        let c = &scanned[i];
                        c.ckey.iter().map(|k| format!("c:{k}")).chain(c.rkey.iter().map(|k| format!("r:{k}")))
                    })
                    .collect();
                keys.sort();
                keys.dedup();
                sqlx::query(
                    "SELECT count(pg_advisory_xact_lock(h)) FROM (SELECT DISTINCT hashtextextended(k, 7316) AS h
                       FROM jsonb_array_elements_text($1::jsonb) AS k ORDER BY 1) s",
                )
                .bind(serde_json::to_string(&keys).unwrap_or_else(|_| "[]".into()))
                .execute(&mut *tx)
                .await?;
                let ids: Vec<Uuid> = chosen.iter().map(|&i| scanned[i].id).collect();
                let (cond, list) = crate::backend::in_list(self.kind, "id", 1, &ids);
                // Rows are locked by id alone, then checked: with statistics from before a burst,
                // PostgreSQL answered `id = ANY(…) AND status = 'scheduled' AND lease_token IS NULL`
                // by reading every waiting row through the (queue, id) index (8–29 ms with 14,000).
                let rows = sqlx::query(&format!(
                    "WITH e AS MATERIALIZED (SELECT id, status, lease_token, concurrency_key, rate_key FROM executions
                            WHERE {cond} FOR UPDATE SKIP LOCKED)
                     SELECT e.id, {HELD} AS held, b.tokens, b.updated_at AS bucket_at FROM e
                     LEFT JOIN rate_buckets b ON b.key = e.rate_key
                     WHERE e.status = 'scheduled' AND e.lease_token IS NULL"
                ))
                .bind(list)
                .fetch_all(&mut *tx)
                .await?;
                let mut fresh = Allowance::default();
                let mut locked = HashSet::new();
                let by_id: HashMap<Uuid, usize> = chosen.iter().map(|&i| (scanned[i].id, i)).collect();
                for r in &rows {
                    let id = uuid("executions", &r.text("id")?)?;
                    let bucket = r.try_get::<Option<f64>, _>("tokens")?.zip(r.opt_big("bucket_at")?);
                    if let Some(&i) = by_id.get(&id) {
                        fresh.count(&scanned[i], r.big("held")?, bucket, now);
                        locked.insert(id);
                    }
                }
                skipped.extend(ids.iter().filter(|id| !locked.contains(id)));
                chosen.retain(|&i| locked.contains(&scanned[i].id) && fresh.take(&scanned[i]));
                allowance = fresh;
            }
            if !chosen.is_empty() {
                let ids: Vec<Uuid> = chosen.iter().map(|&i| scanned[i].id).collect();
                let (cond, list) = crate::backend::in_list(self.kind, "id", 6, &ids);
                // On PostgreSQL the rows are locked and were checked under the lock.
                let waiting = if pg { "" } else { "AND status = 'scheduled' AND lease_token IS NULL" };
                let rows = sqlx::query(&format!(
                    "UPDATE executions SET lease_token = $1, worker_id = $2, worker_name = $3, delivered_at = $4,
                        lease_expires_at = $5, updated_at = $4
                     WHERE {cond} {waiting} RETURNING {TASK_COLS}"
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
                // Only the buckets spent from are written back (one not written refills the same
                // from its stored time). A token spent on a row that moved meanwhile is a token
                // lost for a moment, never one given twice.
                let mut spent: Vec<&String> = chosen.iter().filter_map(|&i| scanned[i].rkey.as_ref()).collect();
                spent.sort();
                spent.dedup();
                for k in spent {
                    sqlx::query(
                        "INSERT INTO rate_buckets (key, tokens, updated_at) VALUES ($1, $2, $3)
                         ON CONFLICT (key) DO UPDATE SET tokens = excluded.tokens, updated_at = excluded.updated_at",
                    )
                    .bind(k)
                    .bind(allowance.tokens[k])
                    .bind(now)
                    .execute(&mut *tx)
                    .await?;
                }
            }
            tx.commit().await?;
        });
        Ok((out, skipped))
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
