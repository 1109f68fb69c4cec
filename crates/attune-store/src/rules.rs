//! Trigger types, rules, events, enforcements and timers (migration 0012). Exactly once is in the
//! data: one enforcement per (event, rule) by a UNIQUE constraint (the matched one is written with
//! its execution, `Store::create_executions`), and a timer's tick is taken by a conditional update
//! in the same transaction as the event it fires.

use attune_core::{
    rules::{Enforcement, Outcome, Rule, TriggerEvent, TriggerType},
    ActionRef, Timestamp,
};
use uuid::Uuid;

use crate::{
    rows::{json, to_json, uuid, RowExt},
    Result, Store, StoreError,
};

/// Inserts one event on `$tx` (a transaction of either backend).
macro_rules! insert_event {
    ($tx:expr, $e:expr) => {{
        let e: &TriggerEvent = $e;
        sqlx::query(
            "INSERT INTO trigger_events (id, trigger_type, trigger_parameters, payload, source, late, created_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(e.id.to_string())
        .bind(e.trigger.as_str())
        .bind($crate::rows::to_json(&e.trigger_parameters))
        .bind($crate::rows::to_json(&e.payload))
        .bind(e.source.as_str())
        .bind(e.late)
        .bind(e.created_at.millis())
        .execute(&mut *$tx)
        .await?;
    }};
}

/// Replaces a pack's trigger types and rules on `$tx` (inside `load_pack`'s transaction). A rule
/// enabled or disabled by hand stays so across reloads.
macro_rules! replace_pack_rules {
    ($tx:expr, $pack:expr, $triggers:expr, $rules:expr, $now:expr) => {{
        use sqlx::Row;
        let pack: &attune_core::PackRef = $pack;
        let (triggers, rules): (&[attune_core::rules::TriggerType], &[attune_core::rules::Rule]) = ($triggers, $rules);
        sqlx::query("DELETE FROM trigger_types WHERE pack_ref = $1").bind(pack.as_str()).execute(&mut *$tx).await?;
        for t in triggers {
            sqlx::query("INSERT INTO trigger_types (ref, pack_ref, definition) VALUES ($1, $2, $3)")
                .bind(t.type_ref.as_str())
                .bind(pack.as_str())
                .bind($crate::rows::to_json(t))
                .execute(&mut *$tx)
                .await?;
        }
        let had: Vec<String> = sqlx::query("SELECT ref FROM rules WHERE pack_ref = $1")
            .bind(pack.as_str())
            .fetch_all(&mut *$tx)
            .await?
            .iter()
            .map(|r| r.try_get::<String, _>(0))
            .collect::<std::result::Result<_, _>>()?;
        for gone in had.iter().filter(|h| !rules.iter().any(|r| r.rule_ref.as_str() == h.as_str())) {
            sqlx::query("DELETE FROM rules WHERE ref = $1").bind(gone.as_str()).execute(&mut *$tx).await?;
        }
        for r in rules {
            sqlx::query(
                "INSERT INTO rules (ref, pack_ref, trigger_type, definition, updated_at) VALUES ($1, $2, $3, $4, $5)
                 ON CONFLICT (ref) DO UPDATE SET pack_ref = excluded.pack_ref, trigger_type = excluded.trigger_type,
                 definition = excluded.definition, updated_at = excluded.updated_at",
            )
            .bind(r.rule_ref.as_str())
            .bind(pack.as_str())
            .bind(r.trigger.type_ref.as_str())
            .bind($crate::rows::to_json(r))
            .bind($now.millis())
            .execute(&mut *$tx)
            .await?;
        }
    }};
}
pub(crate) use insert_event;
pub(crate) use replace_pack_rules;

/// Which events to list.
#[derive(Debug, Clone, Default)]
pub struct EventFilter {
    pub trigger: Option<String>,
    /// Only events created before this (for paging back).
    pub before: Option<Timestamp>,
    pub limit: u32,
}

/// A timer as stored: the trigger instance it fires and its next tick.
#[derive(Debug, Clone, PartialEq)]
pub struct Timer {
    pub key: String,
    pub trigger: ActionRef,
    pub parameters: serde_json::Value,
    pub next_fire_at: Timestamp,
}

const EVENT_COLS: &str =
    "id, trigger_type, trigger_parameters, payload, source, late, created_at, processed_at";
const ENF_COLS: &str = "id, event_id, rule_ref, outcome, execution_id, reason, created_at";

fn corrupt(table: &'static str, message: String) -> StoreError {
    StoreError::Corrupt { table, message }
}

fn action_ref(table: &'static str, s: &str) -> Result<ActionRef> {
    ActionRef::parse(s).map_err(|e| corrupt(table, e.to_string()))
}

fn event_from_row(r: &impl RowExt) -> Result<TriggerEvent> {
    const T: &str = "trigger_events";
    Ok(TriggerEvent {
        id: uuid(T, &r.text("id")?)?,
        trigger: action_ref(T, &r.text("trigger_type")?)?,
        trigger_parameters: json(T, "trigger_parameters", &r.text("trigger_parameters")?)?,
        payload: json(T, "payload", &r.text("payload")?)?,
        source: r.text("source")?,
        late: r.boolean("late")?,
        created_at: Timestamp(r.big("created_at")?),
        processed_at: r.opt_big("processed_at")?.map(Timestamp),
    })
}

fn enforcement_from_row(r: &impl RowExt) -> Result<Enforcement> {
    const T: &str = "enforcements";
    let outcome = r.text("outcome")?;
    Ok(Enforcement {
        id: uuid(T, &r.text("id")?)?,
        event_id: uuid(T, &r.text("event_id")?)?,
        rule_ref: action_ref(T, &r.text("rule_ref")?)?,
        outcome: Outcome::parse(&outcome).ok_or_else(|| corrupt(T, format!("outcome {outcome:?}")))?,
        execution_id: r.opt_text("execution_id")?.map(|s| uuid(T, &s)).transpose()?,
        reason: r.opt_text("reason")?,
        created_at: Timestamp(r.big("created_at")?),
    })
}

fn rule_from_row(r: &impl RowExt) -> Result<Rule> {
    let mut rule: Rule = json("rules", "definition", &r.text("definition")?)?;
    if let Some(on) = r.opt_bool("enabled_override")? {
        rule.enabled = on;
    }
    Ok(rule)
}

impl Store {
    pub async fn list_trigger_types(&self) -> Result<Vec<TriggerType>> {
        read_pool!(self, p => {
            let rows = sqlx::query("SELECT definition FROM trigger_types ORDER BY ref").fetch_all(p).await?;
            rows.iter().map(|r| json("trigger_types", "definition", &r.text("definition")?)).collect()
        })
    }

    /// Every rule (`trigger`: only those listening to that trigger type), enabled or not.
    pub async fn list_rules(&self, trigger: Option<&str>) -> Result<Vec<Rule>> {
        read_pool!(self, p => {
            let rows = match trigger {
                Some(t) => sqlx::query("SELECT definition, enabled_override FROM rules WHERE trigger_type = $1 ORDER BY ref")
                    .bind(t)
                    .fetch_all(p)
                    .await?,
                None => sqlx::query("SELECT definition, enabled_override FROM rules ORDER BY ref").fetch_all(p).await?,
            };
            rows.iter().map(rule_from_row).collect()
        })
    }

    pub async fn get_rule(&self, r: &str) -> Result<Option<Rule>> {
        read_pool!(self, p => {
            let row = sqlx::query("SELECT definition, enabled_override FROM rules WHERE ref = $1")
                .bind(r)
                .fetch_optional(p)
                .await?;
            row.as_ref().map(rule_from_row).transpose()
        })
    }

    /// Enables or disables a rule until it is set again (a reload of its pack keeps this).
    pub async fn set_rule_enabled(&self, r: &str, enabled: bool) -> Result<Rule> {
        let n = write_pool!(self, p => {
            sqlx::query("UPDATE rules SET enabled_override = $2 WHERE ref = $1")
                .bind(r)
                .bind(enabled)
                .execute(p)
                .await?
                .rows_affected()
        });
        if n == 0 {
            return Err(StoreError::NotFound { what: "rule", id: r.to_owned() });
        }
        self.get_rule(r).await?.ok_or_else(|| StoreError::NotFound { what: "rule", id: r.to_owned() })
    }

    /// Stores events (their payloads already checked against their trigger types).
    pub async fn insert_events(&self, events: &[TriggerEvent]) -> Result<()> {
        write_pool!(self, p => {
            let mut tx = p.begin().await?;
            for e in events {
                insert_event!(tx, e);
            }
            tx.commit().await?;
        });
        Ok(())
    }

    /// How many events wait for their rules.
    pub async fn count_unprocessed_events(&self) -> Result<u64> {
        read_pool!(self, p => {
            let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM trigger_events WHERE processed_at IS NULL").fetch_one(p).await?;
            Ok(n as u64)
        })
    }

    /// Events not yet processed by every rule, oldest first.
    pub async fn unprocessed_events(&self, limit: u32) -> Result<Vec<TriggerEvent>> {
        read_pool!(self, p => {
            let rows = sqlx::query(&format!(
                "SELECT {EVENT_COLS} FROM trigger_events WHERE processed_at IS NULL ORDER BY created_at, id LIMIT $1"
            ))
            .bind(limit as i64)
            .fetch_all(p)
            .await?;
            rows.iter().map(event_from_row).collect()
        })
    }

    /// Records enforcements without an execution (not matched, failed, skipped, buffered); a pair
    /// enforced already keeps its first. Returns how many were new. Each statement of at most 250
    /// rows commits on its own: a partial write repeats nothing when the events are processed
    /// again, and on SQLite a timer's tick waits for one such statement, not for all of them.
    pub async fn record_enforcements(&self, all: &[Enforcement]) -> Result<u64> {
        const COLS: usize = 7;
        let mut n = 0;
        write_pool!(self, p => {
            for chunk in all.chunks(250) {
                let rows: Vec<String> = (0..chunk.len())
                    .map(|i| {
                        let b = i * COLS;
                        format!("(${}, ${}, ${}, ${}, ${}, ${}, ${})", b + 1, b + 2, b + 3, b + 4, b + 5, b + 6, b + 7)
                    })
                    .collect();
                let sql = format!(
                    "INSERT INTO enforcements (id, event_id, rule_ref, outcome, execution_id, reason, created_at)
                     VALUES {} ON CONFLICT (event_id, rule_ref) DO NOTHING",
                    rows.join(", ")
                );
                let mut q = sqlx::query(&sql);
                for e in chunk {
                    q = q
                        .bind(e.id.to_string())
                        .bind(e.event_id.to_string())
                        .bind(e.rule_ref.as_str())
                        .bind(e.outcome.as_str())
                        .bind(e.execution_id.map(|u| u.to_string()))
                        .bind(e.reason.clone())
                        .bind(e.created_at.millis());
                }
                n += q.execute(p).await?.rows_affected();
            }
        });
        Ok(n)
    }

    /// Marks events processed (every rule has its enforcement).
    pub async fn mark_events_processed(&self, ids: &[Uuid], now: Timestamp) -> Result<()> {
        if ids.is_empty() {
            return Ok(());
        }
        write_pool!(self, p => {
            for chunk in ids.chunks(500) {
                let marks: Vec<String> = (0..chunk.len()).map(|i| format!("${}", i + 2)).collect();
                let sql = format!(
                    "UPDATE trigger_events SET processed_at = $1 WHERE processed_at IS NULL AND id IN ({})",
                    marks.join(", ")
                );
                let mut q = sqlx::query(&sql).bind(now.millis());
                for id in chunk {
                    q = q.bind(id.to_string());
                }
                q.execute(p).await?;
            }
        });
        Ok(())
    }

    /// The (event, rule) pairs already enforced among `events`.
    pub async fn enforced_pairs(&self, events: &[Uuid]) -> Result<Vec<(Uuid, String)>> {
        let mut out = Vec::new();
        read_pool!(self, p => {
            for chunk in events.chunks(500) {
                if chunk.is_empty() {
                    continue;
                }
                let marks: Vec<String> = (0..chunk.len()).map(|i| format!("${}", i + 1)).collect();
                let sql = format!("SELECT event_id, rule_ref FROM enforcements WHERE event_id IN ({})", marks.join(", "));
                let mut q = sqlx::query(&sql);
                for id in chunk {
                    q = q.bind(id.to_string());
                }
                for r in q.fetch_all(p).await? {
                    out.push((uuid("enforcements", &r.text("event_id")?)?, r.text("rule_ref")?));
                }
            }
            Ok::<(), StoreError>(())
        })?;
        Ok(out)
    }

    /// The rules that have recorded an enforcement for `event`.
    pub async fn enforcements_of(&self, event: Uuid) -> Result<Vec<Enforcement>> {
        read_pool!(self, p => {
            let rows = sqlx::query(&format!("SELECT {ENF_COLS} FROM enforcements WHERE event_id = $1 ORDER BY rule_ref"))
                .bind(event.to_string())
                .fetch_all(p)
                .await?;
            rows.iter().map(enforcement_from_row).collect()
        })
    }

    /// A rule's latest enforcements, newest first.
    pub async fn enforcements_by_rule(&self, rule: &str, limit: u32) -> Result<Vec<Enforcement>> {
        read_pool!(self, p => {
            let rows = sqlx::query(&format!(
                "SELECT {ENF_COLS} FROM enforcements WHERE rule_ref = $1 ORDER BY created_at DESC, id DESC LIMIT $2"
            ))
            .bind(rule)
            .bind(limit as i64)
            .fetch_all(p)
            .await?;
            rows.iter().map(enforcement_from_row).collect()
        })
    }

    /// Whether an execution a rule started is not finished yet (for `overlap: skip`).
    /// Enforcements waiting for their rule's running execution to end (`overlap: buffer_one`),
    /// oldest first.
    pub async fn buffered_enforcements(&self) -> Result<Vec<Enforcement>> {
        read_pool!(self, p => {
            let rows = sqlx::query(&format!(
                "SELECT {ENF_COLS} FROM enforcements WHERE outcome = 'buffered' ORDER BY created_at, id"
            ))
            .fetch_all(p)
            .await?;
            rows.iter().map(enforcement_from_row).collect()
        })
    }

    /// Settles a buffered enforcement that will not run (its rule was disabled or removed, or its
    /// parameters no longer render); false when it was settled already.
    pub async fn settle_buffered(&self, id: Uuid, outcome: Outcome, reason: &str) -> Result<bool> {
        let n = write_pool!(self, p => {
            sqlx::query("UPDATE enforcements SET outcome = $2, reason = $3 WHERE id = $1 AND outcome = 'buffered'")
                .bind(id.to_string())
                .bind(outcome.as_str())
                .bind(reason)
                .execute(p)
                .await?
                .rows_affected()
        });
        Ok(n == 1)
    }

    pub async fn rule_has_open_execution(&self, rule: &str) -> Result<bool> {
        let terminal: Vec<String> = attune_core::ExecutionStatus::ALL
            .into_iter()
            .filter(|s| s.is_terminal())
            .map(|s| format!("'{}'", s.as_str()))
            .collect();
        let sql = format!(
            "SELECT 1 AS one FROM enforcements e JOIN executions x ON x.id = e.execution_id
             WHERE e.rule_ref = $1 AND x.status NOT IN ({}) LIMIT 1",
            terminal.join(", ")
        );
        read_pool!(self, p => {
            let row = sqlx::query(&sql)
            .bind(rule)
            .fetch_optional(p)
            .await?;
            Ok(row.is_some())
        })
    }

    pub async fn list_events(&self, f: &EventFilter) -> Result<Vec<TriggerEvent>> {
        read_pool!(self, p => {
            let rows = sqlx::query(&format!(
                "SELECT {EVENT_COLS} FROM trigger_events
                 WHERE (CAST($1 AS TEXT) IS NULL OR trigger_type = $1) AND (CAST($2 AS BIGINT) IS NULL OR created_at < $2)
                 ORDER BY created_at DESC, id DESC LIMIT $3"
            ))
            .bind(f.trigger.clone())
            .bind(f.before.map(|t| t.millis()))
            .bind(f.limit.clamp(1, 1000) as i64)
            .fetch_all(p)
            .await?;
            rows.iter().map(event_from_row).collect()
        })
    }

    pub async fn get_event(&self, id: Uuid) -> Result<Option<TriggerEvent>> {
        read_pool!(self, p => {
            let row = sqlx::query(&format!("SELECT {EVENT_COLS} FROM trigger_events WHERE id = $1"))
                .bind(id.to_string())
                .fetch_optional(p)
                .await?;
            row.as_ref().map(event_from_row).transpose()
        })
    }

    /// Makes sure each of `timers` exists (a new one first fires at its `next_fire_at`), and
    /// removes the timers no rule uses any more.
    pub async fn sync_timers(&self, timers: &[Timer]) -> Result<()> {
        write_pool!(self, p => {
            let mut tx = p.begin().await?;
            for t in timers {
                sqlx::query(
                    "INSERT INTO timers (key, trigger_type, parameters, next_fire_at) VALUES ($1, $2, $3, $4)
                     ON CONFLICT (key) DO NOTHING",
                )
                .bind(&t.key)
                .bind(t.trigger.as_str())
                .bind(to_json(&t.parameters))
                .bind(t.next_fire_at.millis())
                .execute(&mut *tx)
                .await?;
            }
            let keys: Vec<String> = {
                use sqlx::Row;
                sqlx::query("SELECT key FROM timers")
                    .fetch_all(&mut *tx)
                    .await?
                    .iter()
                    .map(|r| r.try_get::<String, _>(0))
                    .collect::<std::result::Result<_, _>>()?
            };
            for k in keys.iter().filter(|k| !timers.iter().any(|t| t.key == **k)) {
                sqlx::query("DELETE FROM timers WHERE key = $1").bind(k.as_str()).execute(&mut *tx).await?;
            }
            tx.commit().await?;
        });
        Ok(())
    }

    /// When the next timer is due (`None`: no timer).
    pub async fn next_timer_at(&self) -> Result<Option<Timestamp>> {
        read_pool!(self, p => {
            let at: Option<i64> = sqlx::query_scalar("SELECT MIN(next_fire_at) FROM timers").fetch_one(p).await?;
            Ok(at.map(Timestamp))
        })
    }

    /// Timers whose next tick is due at `now`.
    pub async fn due_timers(&self, now: Timestamp) -> Result<Vec<Timer>> {
        read_pool!(self, p => {
            let rows = sqlx::query(
                "SELECT key, trigger_type, parameters, next_fire_at FROM timers WHERE next_fire_at <= $1 ORDER BY next_fire_at",
            )
            .bind(now.millis())
            .fetch_all(p)
            .await?;
            rows.iter()
                .map(|r| {
                    Ok(Timer {
                        key: r.text("key")?,
                        trigger: action_ref("timers", &r.text("trigger_type")?)?,
                        parameters: json("timers", "parameters", &r.text("parameters")?)?,
                        next_fire_at: Timestamp(r.big("next_fire_at")?),
                    })
                })
                .collect()
        })
    }

    /// Takes a timer's tick that was due at `due`: moves it to `next` (`None`: it fires no more)
    /// and stores `event`, in one transaction. False, and nothing stored, when another server took
    /// that tick first.
    pub async fn fire_timer(
        &self,
        key: &str,
        due: Timestamp,
        next: Option<Timestamp>,
        event: &TriggerEvent,
    ) -> Result<bool> {
        write_pool!(self, p => {
            let mut tx = p.begin().await?;
            let taken = match next {
                Some(n) => sqlx::query("UPDATE timers SET next_fire_at = $3, last_fired_at = $4 WHERE key = $1 AND next_fire_at = $2")
                    .bind(key)
                    .bind(due.millis())
                    .bind(n.millis())
                    .bind(event.created_at.millis())
                    .execute(&mut *tx)
                    .await?
                    .rows_affected(),
                // Kept, never due again, so that the rule's next sync does not fire it anew.
                None => sqlx::query("UPDATE timers SET next_fire_at = $3, last_fired_at = $4 WHERE key = $1 AND next_fire_at = $2")
                    .bind(key)
                    .bind(due.millis())
                    .bind(i64::MAX)
                    .bind(event.created_at.millis())
                    .execute(&mut *tx)
                    .await?
                    .rows_affected(),
            };
            if taken == 0 {
                return Ok(false);
            }
            insert_event!(tx, event);
            tx.commit().await?;
            Ok(true)
        })
    }
}
