//! Sensors (migration 0014): their definitions, loaded with their packs, and the lease under which
//! one worker at a time runs each. A worker takes a sensor in its heartbeat (`sensor_heartbeat`)
//! by a conditional update — the sensor is free or its lease lapsed, and it is out of backoff — and
//! renews it with every later heartbeat; events it emits are stored only while its lease is the
//! current one (`sensor_events`); its exit starts a backoff (`sensor_exited`); a drain gives its
//! sensors back at once (`release_sensors`).

use attune_core::{
    rules::TriggerEvent,
    sensors::{sensor_backoff, Sensor, SensorState, SensorStatus, SensorTask, SENSOR_STABLE_AFTER},
    ActionRef, Runtime, Timestamp,
};
use uuid::Uuid;

use crate::{
    rows::{json, uuid, RowExt},
    Result, Store, StoreError,
};

/// A heartbeat's answer about sensors: for each sensor the worker said it runs, whether it still
/// holds it; and the sensor it should start now, if any.
#[derive(Debug, Clone, Default)]
pub struct SensorBeat {
    pub held: Vec<(String, bool)>,
    pub start: Option<StartedSensor>,
}

#[derive(Debug, Clone)]
pub struct StartedSensor {
    pub task: SensorTask,
    /// It ran before (this start is a restart), and where: the worker that lost it, if one did.
    pub restart: bool,
    pub taken_from: Option<String>,
}

/// Replaces a pack's sensors on `$tx` (inside `load_pack`'s transaction). A sensor whose
/// definition changed loses its lease (its worker stops it; the next heartbeat starts the new
/// one) and its backoff; one enabled or disabled by hand stays so.
macro_rules! replace_pack_sensors {
    ($tx:expr, $pack:expr, $sensors:expr, $now:expr) => {{
        use sqlx::Row;
        let pack: &attune_core::PackRef = $pack;
        let sensors: &[attune_core::sensors::Sensor] = $sensors;
        let had: Vec<(String, String)> = sqlx::query("SELECT ref, definition FROM sensors WHERE pack_ref = $1")
            .bind(pack.as_str())
            .fetch_all(&mut *$tx)
            .await?
            .iter()
            .map(|r| Ok::<_, sqlx::Error>((r.try_get::<String, _>(0)?, r.try_get::<String, _>(1)?)))
            .collect::<std::result::Result<_, _>>()?;
        for (gone, _) in had.iter().filter(|(h, _)| !sensors.iter().any(|s| s.sensor_ref.as_str() == h.as_str())) {
            sqlx::query("DELETE FROM sensors WHERE ref = $1").bind(gone.as_str()).execute(&mut *$tx).await?;
        }
        for s in sensors {
            let def = $crate::rows::to_json(s);
            match had.iter().find(|(h, _)| h.as_str() == s.sensor_ref.as_str()) {
                Some((_, old)) if *old == def => {}
                Some(_) => {
                    sqlx::query(
                        "UPDATE sensors SET runtime = $2, definition = $3, enabled = $4, worker_id = NULL,
                            lease_token = NULL, lease_expires_at = NULL, failures = 0, retry_at = 0, updated_at = $5
                         WHERE ref = $1",
                    )
                    .bind(s.sensor_ref.as_str())
                    .bind(s.runtime.as_str())
                    .bind(&def)
                    .bind(s.enabled)
                    .bind($now.millis())
                    .execute(&mut *$tx)
                    .await?;
                }
                None => {
                    // A ref another pack had is taken over (a pack's refs start with its name, so
                    // this happens only when a pack is renamed back and forth).
                    sqlx::query("DELETE FROM sensors WHERE ref = $1").bind(s.sensor_ref.as_str()).execute(&mut *$tx).await?;
                    sqlx::query(
                        "INSERT INTO sensors (ref, pack_ref, runtime, definition, enabled, updated_at)
                         VALUES ($1, $2, $3, $4, $5, $6)",
                    )
                    .bind(s.sensor_ref.as_str())
                    .bind(pack.as_str())
                    .bind(s.runtime.as_str())
                    .bind(&def)
                    .bind(s.enabled)
                    .bind($now.millis())
                    .execute(&mut *$tx)
                    .await?;
                }
            }
        }
    }};
}
pub(crate) use replace_pack_sensors;

/// A sensor a worker might take: ref, runtime, the worker that held it, when it last started, and
/// that worker's name.
type Candidate = (String, String, Option<String>, Option<i64>, Option<String>);

const COLS: &str = "s.definition, s.enabled_override, s.worker_id, s.lease_expires_at, s.started_at, \
    s.restarts, s.last_error, s.last_error_at, s.retry_at, s.events, s.malformed, w.name AS worker_name";

fn state_from_row(r: &impl RowExt, now: Timestamp) -> Result<SensorState> {
    const T: &str = "sensors";
    let sensor: Sensor = json(T, "definition", &r.text("definition")?)?;
    let enabled = r.opt_bool("enabled_override")?.unwrap_or(sensor.enabled);
    let worker_id = r.opt_text("worker_id")?.map(|w| uuid(T, &w)).transpose()?;
    let expires = r.opt_big("lease_expires_at")?;
    let retry_at = r.big("retry_at")?;
    let status = match (enabled, worker_id, expires) {
        (false, ..) => SensorStatus::Disabled,
        (true, Some(_), Some(e)) if e >= now.millis() => SensorStatus::Running,
        (true, Some(_), _) => SensorStatus::Lost,
        (true, None, _) if retry_at > now.millis() => SensorStatus::Backoff,
        (true, None, _) => SensorStatus::Pending,
    };
    Ok(SensorState {
        sensor,
        status,
        effective_enabled: enabled,
        worker_id,
        worker_name: worker_id.and(r.opt_text("worker_name")?),
        started_at: r.opt_big("started_at")?.map(Timestamp),
        restarts: r.big("restarts")? as u64,
        last_error: r.opt_text("last_error")?,
        last_error_at: r.opt_big("last_error_at")?.map(Timestamp),
        retry_at: (status == SensorStatus::Backoff).then_some(Timestamp(retry_at)),
        events: r.big("events")? as u64,
        malformed: r.big("malformed")? as u64,
    })
}

fn stale(sensor: &str) -> StoreError {
    StoreError::Conflict {
        code: "stale_lease",
        message: format!(
            "this worker no longer holds sensor {sensor} (it was disabled, changed, or taken over after \
             the lease lapsed); nothing was stored: stop it"
        ),
    }
}

impl Store {
    pub async fn list_sensors(&self, now: Timestamp) -> Result<Vec<SensorState>> {
        read_pool!(self, p => {
            let rows = sqlx::query(&format!(
                "SELECT {COLS} FROM sensors s LEFT JOIN workers w ON w.id = s.worker_id ORDER BY s.ref"
            ))
            .fetch_all(p)
            .await?;
            rows.iter().map(|r| state_from_row(r, now)).collect()
        })
    }

    pub async fn get_sensor(&self, sensor: &str, now: Timestamp) -> Result<Option<SensorState>> {
        read_pool!(self, p => {
            let row = sqlx::query(&format!(
                "SELECT {COLS} FROM sensors s LEFT JOIN workers w ON w.id = s.worker_id WHERE s.ref = $1"
            ))
            .bind(sensor)
            .fetch_optional(p)
            .await?;
            row.map(|r| state_from_row(&r, now)).transpose()
        })
    }

    /// An operator's enable or disable, kept across reloads. Disabling takes the lease back (its
    /// worker stops it at its next heartbeat); enabling clears a backoff.
    pub async fn set_sensor_enabled(
        &self,
        sensor: &str,
        enabled: bool,
        now: Timestamp,
    ) -> Result<SensorState> {
        let n = write_pool!(self, p => {
            sqlx::query(
                "UPDATE sensors SET enabled_override = $2,
                    worker_id = CASE WHEN $2 THEN worker_id ELSE NULL END,
                    lease_token = CASE WHEN $2 THEN lease_token ELSE NULL END,
                    lease_expires_at = CASE WHEN $2 THEN lease_expires_at ELSE NULL END,
                    failures = CASE WHEN $2 THEN 0 ELSE failures END,
                    retry_at = CASE WHEN $2 THEN 0 ELSE retry_at END
                 WHERE ref = $1",
            )
            .bind(sensor)
            .bind(enabled)
            .execute(p)
            .await?
            .rows_affected()
        });
        if n == 0 {
            return Err(StoreError::NotFound { what: "sensor", id: sensor.to_owned() });
        }
        self.get_sensor(sensor, now)
            .await?
            .ok_or_else(|| StoreError::NotFound { what: "sensor", id: sensor.to_owned() })
    }

    /// The sensor part of a heartbeat: renews the leases of the sensors `worker` says it runs (to
    /// `until`), and — when `may_take` (the worker is active) — gives it at most one sensor that
    /// is enabled, out of backoff, of a runtime it has, and free or left by a worker whose lease
    /// lapsed. One per heartbeat, so that several workers share the sensors.
    pub async fn sensor_heartbeat(
        &self,
        worker: Uuid,
        held: &[(String, String)],
        may_take: bool,
        now: Timestamp,
        until: Timestamp,
    ) -> Result<SensorBeat> {
        let wid = worker.to_string();
        let mut beat = SensorBeat::default();
        if !held.is_empty() {
            write_pool!(self, p => {
                let mut tx = p.begin().await?;
                for (r, token) in held {
                    let n = sqlx::query(
                        "UPDATE sensors SET lease_expires_at = $4
                         WHERE ref = $1 AND worker_id = $2 AND lease_token = $3
                           AND COALESCE(enabled_override, enabled)",
                    )
                    .bind(r)
                    .bind(&wid)
                    .bind(token)
                    .bind(until.millis())
                    .execute(&mut *tx)
                    .await?
                    .rows_affected();
                    beat.held.push((r.clone(), n == 1));
                }
                tx.commit().await?;
            });
        }
        if !may_take {
            return Ok(beat);
        }
        let candidates: Vec<Candidate> = read_pool!(self, p => {
            let rows = sqlx::query(
                "SELECT s.ref, s.runtime, s.worker_id, s.started_at, w.name AS worker_name
                 FROM sensors s LEFT JOIN workers w ON w.id = s.worker_id
                 WHERE COALESCE(s.enabled_override, s.enabled) AND s.retry_at <= $1
                   AND (s.worker_id IS NULL OR s.lease_expires_at < $1)
                 ORDER BY s.ref",
            )
            .bind(now.millis())
            .fetch_all(p)
            .await?;
            rows.iter()
                .map(|r| Ok((r.text("ref")?, r.text("runtime")?, r.opt_text("worker_id")?, r.opt_big("started_at")?, r.opt_text("worker_name")?)))
                .collect::<Result<_>>()?
        });
        if candidates.is_empty() {
            return Ok(beat);
        }
        let runtimes: Vec<Runtime> = read_pool!(self, p => {
            let r: Option<String> = sqlx::query_scalar("SELECT runtimes FROM workers WHERE id = $1")
                .bind(&wid)
                .fetch_optional(p)
                .await?;
            r.map(|r| json("workers", "runtimes", &r)).transpose()?.unwrap_or_default()
        });
        for (r, runtime, from, started, from_name) in candidates {
            if !Runtime::parse(&runtime).is_some_and(|rt| runtimes.contains(&rt)) {
                continue;
            }
            if held.iter().any(|(h, _)| *h == r) {
                continue; // it lapsed while this very worker ran it: renewed above or revoked
            }
            let token = Uuid::new_v4().simple().to_string();
            let lost = from.as_ref().map(|_| {
                format!(
                    "worker {} stopped renewing the sensor's lease; started again elsewhere",
                    from_name.clone().unwrap_or_else(|| "(gone)".into())
                )
            });
            let def: Option<String> = write_pool!(self, p => {
                sqlx::query_scalar(
                    "UPDATE sensors SET worker_id = $2, lease_token = $3, lease_expires_at = $4, started_at = $5,
                        restarts = restarts + CASE WHEN started_at IS NULL THEN 0 ELSE 1 END,
                        last_error = COALESCE($6, last_error),
                        last_error_at = CASE WHEN $6 IS NULL THEN last_error_at ELSE $5 END
                     WHERE ref = $1 AND COALESCE(enabled_override, enabled) AND retry_at <= $5
                       AND (worker_id IS NULL OR lease_expires_at < $5)
                     RETURNING definition",
                )
                .bind(&r)
                .bind(&wid)
                .bind(&token)
                .bind(until.millis())
                .bind(now.millis())
                .bind(lost.clone())
                .fetch_optional(p)
                .await?
            });
            let Some(def) = def else { continue }; // another worker was quicker
            let sensor: Sensor = json("sensors", "definition", &def)?;
            beat.start = Some(StartedSensor {
                task: SensorTask { sensor, lease_token: token },
                restart: started.is_some(),
                taken_from: lost.and(from_name),
            });
            break;
        }
        Ok(beat)
    }

    /// Stores the events a sensor emitted and counts them (and the lines that were not events),
    /// if `worker` still holds it under `token`; otherwise nothing is stored (`StaleLease`).
    pub async fn sensor_events(
        &self,
        sensor: &str,
        worker: Uuid,
        token: &str,
        events: &[TriggerEvent],
        malformed: u64,
    ) -> Result<()> {
        write_pool!(self, p => {
            let mut tx = p.begin().await?;
            let n = sqlx::query(
                "UPDATE sensors SET events = events + $4, malformed = malformed + $5
                 WHERE ref = $1 AND worker_id = $2 AND lease_token = $3",
            )
            .bind(sensor)
            .bind(worker.to_string())
            .bind(token)
            .bind(events.len() as i64)
            .bind(malformed as i64)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            if n == 0 {
                return Err(stale(sensor));
            }
            for e in events {
                crate::rules::insert_event!(tx, e);
            }
            tx.commit().await?;
        });
        Ok(())
    }

    /// The sensor `worker` ran under `token` exited with `error`: it gives the sensor back, which
    /// waits out a backoff that doubles with each exit in a row (a run of a minute or more starts
    /// it over). Returns when it may start again.
    pub async fn sensor_exited(
        &self,
        sensor: &str,
        worker: Uuid,
        token: &str,
        error: &str,
        now: Timestamp,
    ) -> Result<Timestamp> {
        let wid = worker.to_string();
        write_pool!(self, p => {
            let mut tx = p.begin().await?;
            let row = sqlx::query(
                "SELECT failures, started_at FROM sensors WHERE ref = $1 AND worker_id = $2 AND lease_token = $3",
            )
            .bind(sensor)
            .bind(&wid)
            .bind(token)
            .fetch_optional(&mut *tx)
            .await?;
            let Some(row) = row else { return Err(stale(sensor)) };
            let ran = now.millis() - row.opt_big("started_at")?.unwrap_or(now.millis());
            let failures = if ran >= SENSOR_STABLE_AFTER.as_millis() as i64 { 1 } else { row.int("failures")? + 1 };
            let retry_at = now.plus(sensor_backoff(failures as u32));
            let n = sqlx::query(
                "UPDATE sensors SET worker_id = NULL, lease_token = NULL, lease_expires_at = NULL,
                    failures = $4, retry_at = $5, last_error = $6, last_error_at = $7
                 WHERE ref = $1 AND worker_id = $2 AND lease_token = $3",
            )
            .bind(sensor)
            .bind(&wid)
            .bind(token)
            .bind(failures)
            .bind(retry_at.millis())
            .bind(error)
            .bind(now.millis())
            .execute(&mut *tx)
            .await?
            .rows_affected();
            if n == 0 {
                return Err(stale(sensor));
            }
            tx.commit().await?;
            Ok(retry_at)
        })
    }

    /// Gives back every sensor `worker` holds (it drains or deregisters, having stopped them): the
    /// next capable worker's heartbeat starts them. Returns their refs.
    pub async fn release_sensors(&self, worker: Uuid) -> Result<Vec<ActionRef>> {
        let refs: Vec<String> = write_pool!(self, p => {
            sqlx::query_scalar(
                "UPDATE sensors SET worker_id = NULL, lease_token = NULL, lease_expires_at = NULL
                 WHERE worker_id = $1 RETURNING ref",
            )
            .bind(worker.to_string())
            .fetch_all(p)
            .await?
        });
        refs.iter()
            .map(|r| {
                ActionRef::parse(r)
                    .map_err(|e| StoreError::Corrupt { table: "sensors", message: e.to_string() })
            })
            .collect()
    }
}
