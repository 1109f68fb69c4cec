//! `GET /metrics` in the Prometheus text format. What the database knows (executions by action and
//! status, queue depth and oldest waiting age, workers and their heartbeat age, dead letters) is
//! read at scrape time, so every replica reports the same; what happens inside this process
//! (worker lifecycle events, lease expiries, retries, timeouts, latency histograms) is counted here
//! and is per replica, as Prometheus expects of counters.

use std::{
    fmt::Write,
    sync::{
        atomic::{AtomicU64, Ordering::Relaxed},
        Mutex,
    },
    time::Duration,
};

use attune_core::{rules::Outcome, ExecutionStatus, Timestamp};

/// Bucket bounds, in seconds.
const LATENCY_BUCKETS: &[f64] =
    &[0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0];
const DURATION_BUCKETS: &[f64] = &[0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0];

pub(crate) struct Histogram {
    bounds: &'static [f64],
    /// Per bound (not cumulative), then the sum and the count.
    inner: Mutex<(Vec<u64>, f64, u64)>,
}

impl Histogram {
    fn new(bounds: &'static [f64]) -> Self {
        Histogram { bounds, inner: Mutex::new((vec![0; bounds.len()], 0.0, 0)) }
    }

    pub(crate) fn observe(&self, d: Duration) {
        let v = d.as_secs_f64();
        let mut g = self.inner.lock().expect("histogram lock");
        if let Some(i) = self.bounds.iter().position(|b| v <= *b) {
            g.0[i] += 1;
        }
        g.1 += v;
        g.2 += 1;
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let g = self.inner.lock().expect("histogram lock");
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        let mut cumulative = 0;
        for (b, n) in self.bounds.iter().zip(&g.0) {
            cumulative += n;
            let _ = writeln!(out, "{name}_bucket{{le=\"{b}\"}} {cumulative}");
        }
        let _ =
            writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {}\n{name}_sum {}\n{name}_count {}", g.2, g.1, g.2);
    }
}

/// Counters and histograms of this process.
pub(crate) struct Metrics {
    pub workers_registered: AtomicU64,
    pub workers_deregistered: AtomicU64,
    pub workers_went_inactive: AtomicU64,
    pub lease_expiries: AtomicU64,
    pub retries: AtomicU64,
    pub schedule_to_start_timeouts: AtomicU64,
    /// Worker polls waiting for work on this server right now.
    pub polls_waiting: AtomicU64,
    /// What the transport's limits did.
    pub http: crate::http::Stats,
    pub submit_to_start: Histogram,
    pub run_duration: Histogram,
    pub events: EventMetrics,
    /// Workflows the repair monitor moved on (st2 #4524).
    pub workflow_repairs: AtomicU64,
}

/// What the event loop did on this server.
pub(crate) struct EventMetrics {
    /// Events stored by this server, by trigger type.
    by_trigger: Mutex<std::collections::BTreeMap<String, u64>>,
    /// Enforcements recorded by this server, by `Outcome` (in its order).
    pub enforcements: [AtomicU64; 5],
    /// How late timers fired after their tick was due.
    timer_lag: Histogram,
    /// Sensors this server started again (after an exit, or elsewhere after their worker died).
    sensor_restarts: Mutex<std::collections::BTreeMap<String, u64>>,
    /// Lines sensors wrote that were not events they may emit.
    pub sensor_malformed: AtomicU64,
}

impl EventMetrics {
    pub(crate) fn accepted(&self, trigger: &str) {
        *self.by_trigger.lock().expect("event metrics lock").entry(trigger.to_owned()).or_default() += 1;
    }

    pub(crate) fn sensor_restarted(&self, sensor: &str) {
        *self.sensor_restarts.lock().expect("event metrics lock").entry(sensor.to_owned()).or_default() += 1;
    }

    pub(crate) fn record_timer_lag(&self, millis: u64) {
        self.timer_lag.observe(Duration::from_millis(millis));
    }

    fn render(&self, out: &mut String) {
        let _ = writeln!(
            out,
            "# HELP attune_events_total Events stored by this server, by trigger type.\n# TYPE attune_events_total counter"
        );
        for (t, n) in self.by_trigger.lock().expect("event metrics lock").iter() {
            let _ = writeln!(out, "attune_events_total{{trigger=\"{}\"}} {n}", label(t));
        }
        let _ = writeln!(
            out,
            "# HELP attune_enforcements_total Rule enforcements recorded by this server, by outcome.\n\
             # TYPE attune_enforcements_total counter"
        );
        for o in Outcome::ALL {
            let n = self.enforcements[o as usize].load(Relaxed);
            let _ = writeln!(out, "attune_enforcements_total{{outcome=\"{}\"}} {n}", o.as_str());
        }
        let _ = writeln!(
            out,
            "# HELP attune_sensor_restarts_total Sensors this server started again, after an exit or on \
             another worker.\n# TYPE attune_sensor_restarts_total counter"
        );
        for (t, n) in self.sensor_restarts.lock().expect("event metrics lock").iter() {
            let _ = writeln!(out, "attune_sensor_restarts_total{{sensor=\"{}\"}} {n}", label(t));
        }
        let _ = writeln!(
            out,
            "# HELP attune_sensor_malformed_lines_total Lines sensors wrote that were not events they may \
             emit.\n# TYPE attune_sensor_malformed_lines_total counter\nattune_sensor_malformed_lines_total {}",
            self.sensor_malformed.load(Relaxed)
        );
        self.timer_lag.render(
            out,
            "attune_timer_lag_seconds",
            "How long after its tick was due a timer fired.",
        );
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            workers_registered: AtomicU64::new(0),
            workers_deregistered: AtomicU64::new(0),
            workers_went_inactive: AtomicU64::new(0),
            lease_expiries: AtomicU64::new(0),
            retries: AtomicU64::new(0),
            schedule_to_start_timeouts: AtomicU64::new(0),
            polls_waiting: AtomicU64::new(0),
            http: Default::default(),
            submit_to_start: Histogram::new(LATENCY_BUCKETS),
            run_duration: Histogram::new(DURATION_BUCKETS),
            workflow_repairs: AtomicU64::new(0),
            events: EventMetrics {
                by_trigger: Default::default(),
                enforcements: Default::default(),
                timer_lag: Histogram::new(LATENCY_BUCKETS),
                sensor_restarts: Default::default(),
                sensor_malformed: AtomicU64::new(0),
            },
        }
    }
}

impl Metrics {
    pub(crate) fn add(c: &AtomicU64, n: u64) {
        c.fetch_add(n, Relaxed);
    }

    /// Records what a finished (or retried) execution tells: run duration, retries.
    /// An attempt ended (a report was applied): a retry, or the run's duration.
    pub(crate) fn finished(&self, e: &attune_store::Applied, now: Timestamp) {
        if e.status == ExecutionStatus::Scheduled {
            Self::add(&self.retries, 1);
        }
        if let Some(started) = e.started_at {
            let end = e.finished_at.unwrap_or(now);
            self.run_duration.observe(Duration::from_millis(end.0.saturating_sub(started.0).max(0) as u64));
        }
    }
}

/// Escapes a label value.
fn label(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

fn counter(out: &mut String, name: &str, help: &str, v: u64) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}");
}

pub(crate) fn render(
    m: &Metrics,
    snap: &attune_store::MetricsSnapshot,
    workers: &[attune_core::Worker],
    now: Timestamp,
) -> String {
    let mut out = String::new();
    for (name, kind, help, terminal) in [
        (
            "attune_executions_finished_total",
            "counter",
            "Executions that reached a terminal status, by action and status.",
            true,
        ),
        ("attune_executions_open", "gauge", "Executions not yet terminal, by action and status.", false),
    ] {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for (action, status, n) in snap.executions.iter().filter(|(_, s, _)| is_terminal(s) == terminal) {
            let _ = writeln!(out, "{name}{{action=\"{}\",status=\"{}\"}} {n}", label(action), label(status));
        }
    }
    out += "# HELP attune_queue_depth Tasks waiting for a worker, by queue (runtime).\n# TYPE attune_queue_depth gauge\n";
    for (q, n, _) in &snap.queues {
        let _ = writeln!(out, "attune_queue_depth{{queue=\"{}\"}} {n}", label(q));
    }
    out += "# HELP attune_queue_oldest_age_seconds Age of the oldest waiting task, by queue.\n";
    out += "# TYPE attune_queue_oldest_age_seconds gauge\n";
    for (q, _, oldest) in &snap.queues {
        let age = oldest.map(|o| (now.0 - o.0).max(0) as f64 / 1000.0).unwrap_or(0.0);
        let _ = writeln!(out, "attune_queue_oldest_age_seconds{{queue=\"{}\"}} {age}", label(q));
    }
    out +=
        "# HELP attune_dead_letters_total Dead letters by cause.\n# TYPE attune_dead_letters_total counter\n";
    for (cause, n) in &snap.dead_letters {
        let _ = writeln!(out, "attune_dead_letters_total{{cause=\"{}\"}} {n}", label(cause));
    }
    out += "# HELP attune_executions_waiting_on_limit Waiting executions under a concurrency or rate limit, \
            by action.\n# TYPE attune_executions_waiting_on_limit gauge\n";
    for (action, n) in &snap.limited_waiting {
        let _ = writeln!(out, "attune_executions_waiting_on_limit{{action=\"{}\"}} {n}", label(action));
    }
    out += "# HELP attune_workers Registered workers by status.\n# TYPE attune_workers gauge\n";
    for st in ["active", "inactive"] {
        let n = workers.iter().filter(|w| w.status.as_str() == st).count();
        let _ = writeln!(out, "attune_workers{{status=\"{st}\"}} {n}");
    }
    out += "# HELP attune_worker_heartbeat_age_seconds Seconds since each worker's last heartbeat.\n";
    out += "# TYPE attune_worker_heartbeat_age_seconds gauge\n";
    for w in workers {
        let age = (now.0 - w.last_heartbeat.0).max(0) as f64 / 1000.0;
        let _ = writeln!(
            out,
            "attune_worker_heartbeat_age_seconds{{worker=\"{}\",status=\"{}\"}} {age}",
            label(&w.name),
            w.status
        );
    }
    out += "# HELP attune_worker_events_total Worker lifecycle events seen by this server.\n";
    out += "# TYPE attune_worker_events_total counter\n";
    for (event, c) in [
        ("registered", &m.workers_registered),
        ("deregistered", &m.workers_deregistered),
        ("went_inactive", &m.workers_went_inactive),
    ] {
        let _ = writeln!(out, "attune_worker_events_total{{event=\"{event}\"}} {}", c.load(Relaxed));
    }
    counter(
        &mut out,
        "attune_lease_expiries_total",
        "Leases that expired because their worker stopped heartbeating (this server's monitor).",
        m.lease_expiries.load(Relaxed),
    );
    counter(
        &mut out,
        "attune_retries_total",
        "Attempts put back in the queue for another try (this server).",
        m.retries.load(Relaxed),
    );
    counter(
        &mut out,
        "attune_schedule_to_start_timeouts_total",
        "Executions failed because no worker started them within scheduled_timeout (this server's monitor).",
        m.schedule_to_start_timeouts.load(Relaxed),
    );
    counter(
        &mut out,
        "attune_workflow_repairs_total",
        "Workflows found running with nothing under them and moved on by the repair monitor (this server).",
        m.workflow_repairs.load(Relaxed),
    );
    let _ = writeln!(
        out,
        "# HELP attune_polls_waiting Worker polls waiting for work on this server (idle worker slots asking).\n\
         # TYPE attune_polls_waiting gauge\nattune_polls_waiting {}",
        m.polls_waiting.load(Relaxed)
    );
    let h = &m.http;
    let _ = writeln!(
        out,
        "# HELP attune_http_connections Open client connections.\n# TYPE attune_http_connections gauge\n\
         attune_http_connections {}",
        h.open.load(Relaxed)
    );
    let _ = writeln!(
        out,
        "# HELP attune_http_limit_hits_total Requests and connections stopped by a limit of the server, by limit.\n\
         # TYPE attune_http_limit_hits_total counter"
    );
    for (limit, c) in [
        ("max_connections", &h.evicted),
        ("header_timeout", &h.header_timeouts),
        ("body_timeout", &h.body_timeouts),
        ("max_body_bytes", &h.too_large),
    ] {
        let _ = writeln!(out, "attune_http_limit_hits_total{{limit=\"{limit}\"}} {}", c.load(Relaxed));
    }
    m.submit_to_start.render(
        &mut out,
        "attune_submit_to_start_seconds",
        "Time from being (re)scheduled to running, seen by this server.",
    );
    m.run_duration.render(
        &mut out,
        "attune_run_duration_seconds",
        "Time from running to the end of the attempt, seen by this server.",
    );
    m.events.render(&mut out);
    out
}

fn is_terminal(s: &str) -> bool {
    ExecutionStatus::parse(s).map(ExecutionStatus::is_terminal).unwrap_or(false)
}
