//! The results: one JSON document and one Markdown table, side by side with the targets.

use serde::Serialize;

use crate::{Args, Sizes};

#[derive(Debug, Serialize)]
pub struct BackendResult {
    pub backend: String,
    pub noop_per_sec: Option<f64>,
    pub shell_per_sec: Option<f64>,
    pub shell_vs_spawn: Option<f64>,
    /// p50, p95, p99 in ms.
    pub submit_to_start_ms: Option<[f64; 3]>,
    pub submit_to_finish_ms: Option<[f64; 3]>,
    pub backlog_per_sec: Option<f64>,
    /// No-ops with a concurrency limit of 1 on every execution, each its own key.
    #[serde(default)]
    pub limited_per_sec: Option<f64>,
    /// Submit on one replica → started by a worker polling another (PostgreSQL), p50/p95/p99 ms.
    pub cross_replica_start_ms: Option<[f64; 3]>,
    /// Webhook posted → its rule's execution running, p50/p95/p99 ms.
    pub webhook_to_start_ms: Option<[f64; 3]>,
    /// Webhook events accepted and enforced by 100 enabled rules (10 match each), per second.
    pub events_per_sec: Option<f64>,
    /// A 1 s interval timer's firing after its tick was due, p50/p95/p99 ms.
    pub timer_lag_ms: Option<[f64; 3]>,
    /// A workflow of 3 builtin no-ops in sequence, submit → succeeded, p50/p95/p99 ms.
    #[serde(default)]
    pub workflow_3step_ms: Option<[f64; 3]>,
    /// A workflow's `with` over 1,000 no-ops at concurrency 100: items per second, submit → end.
    #[serde(default)]
    pub with_items_per_sec: Option<f64>,
    /// A Python action with a dependency, first run on a worker that never saw its pack (fetch,
    /// virtualenv, pip install), submit → succeeded, ms.
    #[serde(default)]
    pub python_cold_ms: Option<f64>,
    /// The same action afterwards, one at a time, p50/p95/p99 ms.
    #[serde(default)]
    pub python_warm_ms: Option<[f64; 3]>,
    pub detection_seconds: Vec<f64>,
    /// The console's pages with 100,000 executions stored: (path, p50 ms, slowest ms, first ms).
    #[serde(default)]
    pub console_pages_ms: Vec<crate::console::PageTime>,
    /// The same on PostgreSQL after a `VACUUM` of the executions.
    #[serde(default)]
    pub console_pages_vacuumed_ms: Option<Vec<crate::console::PageTime>>,
    pub idle_server_rss_mb: Option<f64>,
    pub idle_worker_rss_mb: Option<f64>,
}

impl BackendResult {
    pub fn new(backend: &str) -> Self {
        BackendResult {
            backend: backend.to_owned(),
            noop_per_sec: None,
            shell_per_sec: None,
            shell_vs_spawn: None,
            submit_to_start_ms: None,
            submit_to_finish_ms: None,
            backlog_per_sec: None,
            limited_per_sec: None,
            cross_replica_start_ms: None,
            webhook_to_start_ms: None,
            events_per_sec: None,
            timer_lag_ms: None,
            workflow_3step_ms: None,
            with_items_per_sec: None,
            python_cold_ms: None,
            python_warm_ms: None,
            detection_seconds: Vec::new(),
            console_pages_ms: Vec::new(),
            console_pages_vacuumed_ms: None,
            idle_server_rss_mb: None,
            idle_worker_rss_mb: None,
        }
    }
}

#[derive(Debug, Serialize)]
pub struct CeleryResult {
    pub version: String,
    pub noop_per_sec: f64,
    pub shell_per_sec: f64,
    pub worker_processes: u32,
    /// `chain(noop, noop, noop)`, submit → result, p50/p95/p99 ms.
    pub chain3_ms: Option<[f64; 3]>,
    /// `chord(group(noop × 1,000), noop)`: items per second, submit → callback's result.
    pub chord_per_sec: Option<f64>,
}

/// The PostgreSQL-backed peer (Procrastinate): no-op and shell throughput.
#[derive(Debug, Serialize)]
pub struct PgPeerResult {
    pub version: String,
    pub noop_per_sec: f64,
    pub shell_per_sec: f64,
}

#[derive(Debug, Serialize)]
pub struct Results {
    pub mode: String,
    pub sizes: Sizes,
    pub machine: String,
    pub worker_processes: u32,
    pub worker_concurrency: u32,
    pub spawn_rate: f64,
    pub backends: Vec<BackendResult>,
    pub celery: Option<CeleryResult>,
    pub celery_error: Option<String>,
    pub pg_peer: Option<PgPeerResult>,
    pub pg_peer_error: Option<String>,
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_owned())
        })
        .unwrap_or_default();
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    format!("{cores} cores, {cpu}")
}

fn f(v: Option<f64>, digits: usize) -> String {
    v.map(|x| format!("{x:.digits$}")).unwrap_or_else(|| "–".into())
}

/// A console page's path without what differs per run (an id, a cursor, a time).
fn shape(page: &str) -> String {
    if page.starts_with("/executions/") {
        return "/executions/{id}".into();
    }
    for k in ["before=", "since="] {
        if let Some((head, _)) = page.split_once(k) {
            return format!("{head}{k}…");
        }
    }
    page.to_owned()
}

fn pcts(v: Option<[f64; 3]>) -> String {
    v.map(|[a, b, c]| format!("{a:.2} / {b:.2} / {c:.2}")).unwrap_or_else(|| "–".into())
}

impl Results {
    pub fn new(mode: &str, args: &Args, sizes: Sizes) -> Self {
        Results {
            mode: mode.to_owned(),
            sizes,
            machine: machine(),
            worker_processes: args.workers,
            worker_concurrency: args.concurrency,
            spawn_rate: 0.0,
            backends: Vec::new(),
            celery: None,
            celery_error: None,
            pg_peer: None,
            pg_peer_error: None,
        }
    }

    pub fn markdown(&self) -> String {
        let mut out = String::new();
        out += &format!(
            "\n### attune-bench ({}) — {}; {} worker processes × {} slots\n\n",
            self.mode, self.machine, self.worker_processes, self.worker_concurrency
        );
        out += "| measure | target |";
        for b in &self.backends {
            out += &format!(" Attune {} |", b.backend);
        }
        if self.celery.is_some() {
            out += " Celery (Redis) |";
        }
        if self.pg_peer.is_some() {
            out += " Procrastinate (PostgreSQL) |";
        }
        out += "\n|---|---|";
        for _ in &self.backends {
            out += "---|";
        }
        if self.celery.is_some() {
            out += "---|";
        }
        if self.pg_peer.is_some() {
            out += "---|";
        }
        out += "\n";
        let c = self.celery.as_ref();
        let pg = self.pg_peer.as_ref();
        // The PostgreSQL peer's cells, by row: no-op, shell, shell as a share of raw spawns.
        let pg_cells = pg.map(|p| {
            [
                format!("{:.0}", p.noop_per_sec),
                format!("{:.0}", p.shell_per_sec),
                format!("{:.0} %", p.shell_per_sec / self.spawn_rate * 100.0),
            ]
        });
        let mut n = 0;
        let mut row = |name: &str, target: &str, cells: Vec<String>, celery: Option<String>| {
            out += &format!("| {name} | {target} |");
            for x in cells {
                out += &format!(" {x} |");
            }
            if let Some(cv) = celery {
                out += &format!(" {cv} |");
            } else if c.is_some() {
                out += " |";
            }
            if let Some(p) = &pg_cells {
                out += &format!(" {} |", p.get(n).map(String::as_str).unwrap_or(""));
            }
            n += 1;
            out += "\n";
        };
        let b = &self.backends;
        row(
            &format!("builtin no-op, executions/s ({})", self.sizes.noop),
            "≥ 3,000 SQLite, ≥ 2,000 PG, ≥ 2× Celery; PG ahead of Procrastinate",
            b.iter().map(|x| f(x.noop_per_sec, 0)).collect(),
            c.map(|c| format!("{:.0}", c.noop_per_sec)),
        );
        row(
            &format!("shell `core.echo`, executions/s ({})", self.sizes.shell),
            "",
            b.iter().map(|x| f(x.shell_per_sec, 0)).collect(),
            c.map(|c| format!("{:.0}", c.shell_per_sec)),
        );
        row(
            &format!("… as share of raw `sh -c` spawns ({:.0}/s)", self.spawn_rate),
            "≥ 60 %",
            b.iter()
                .map(|x| x.shell_vs_spawn.map(|r| format!("{:.0} %", r * 100.0)).unwrap_or_default())
                .collect(),
            c.map(|c| format!("{:.0} %", c.shell_per_sec / self.spawn_rate * 100.0)),
        );
        row(
            "submit→start ms, p50 / p95 / p99",
            "p50 ≤ 2, p99 ≤ 10",
            b.iter().map(|x| pcts(x.submit_to_start_ms)).collect(),
            None,
        );
        row(
            "submit→finish ms, p50 / p95 / p99",
            "",
            b.iter().map(|x| pcts(x.submit_to_finish_ms)).collect(),
            None,
        );
        row(
            &format!("no-op executions/s with {} queued", self.sizes.backlog),
            "≥ 80 % of empty queue",
            b.iter()
                .map(|x| match (x.backlog_per_sec, x.noop_per_sec) {
                    (Some(bl), Some(n)) => format!("{bl:.0} ({:.0} %)", bl / n * 100.0),
                    _ => "–".into(),
                })
                .collect(),
            None,
        );
        row(
            &format!(
                "no-op, concurrency limit 1 on each (distinct keys), executions/s ({})",
                self.sizes.noop
            ),
            "within 20 % of unlimited",
            b.iter()
                .map(|x| match (x.limited_per_sec, x.noop_per_sec) {
                    (Some(l), Some(n)) => format!("{l:.0} ({:.0} %)", l / n * 100.0),
                    _ => "–".into(),
                })
                .collect(),
            None,
        );
        row(
            "submit on replica A → started via replica B, ms, p50 / p95 / p99",
            "",
            b.iter().map(|x| pcts(x.cross_replica_start_ms)).collect(),
            None,
        );
        row(
            "webhook → rule's execution started, ms, p50 / p95 / p99",
            "p50 ≤ 5 SQLite",
            b.iter().map(|x| pcts(x.webhook_to_start_ms)).collect(),
            None,
        );
        row(
            &format!("webhook events/s, 100 enabled rules, 10 match ({})", self.sizes.events),
            "≥ 2,000 SQLite",
            b.iter().map(|x| f(x.events_per_sec, 0)).collect(),
            None,
        );
        row(
            "1 s interval timer lag, ms, p50 / p95 / p99",
            "p99 ≤ 50",
            b.iter().map(|x| pcts(x.timer_lag_ms)).collect(),
            None,
        );
        row(
            "3-step workflow of builtin no-ops (Celery: chain of 3), submit → end, ms, p50 / p95 / p99",
            "p50 ≤ 10 SQLite",
            b.iter().map(|x| pcts(x.workflow_3step_ms)).collect(),
            c.map(|c| pcts(c.chain3_ms)),
        );
        row(
            "`with` 1,000 no-op items at concurrency 100 (Celery: chord of 1,000), items/s",
            "≥ 1,000 SQLite, ≥ 3× Celery",
            b.iter().map(|x| f(x.with_items_per_sec, 0)).collect(),
            c.map(|c| f(c.chord_per_sec, 0)),
        );
        row(
            "Python action with a dependency, first run on a new worker (fetch + venv + pip), ms",
            "",
            b.iter().map(|x| f(x.python_cold_ms, 0)).collect(),
            None,
        );
        row("… then warm, ms, p50 / p95 / p99", "", b.iter().map(|x| pcts(x.python_warm_ms)).collect(), None);
        row(
            "dead worker (kill -9) → redelivered, s, p50 / max (1 s heartbeats)",
            "≤ 4 s",
            b.iter()
                .map(|x| {
                    let mut v = x.detection_seconds.clone();
                    v.sort_by(|a, b| a.total_cmp(b));
                    match (v.get(v.len() / 2), v.last()) {
                        (Some(m), Some(mx)) => format!("{m:.2} / {mx:.2}"),
                        _ => "–".into(),
                    }
                })
                .collect(),
            None,
        );
        row(
            &format!("slowest console page with {} executions stored, ms, p50 / max", crate::console::STORED),
            "< 100",
            b.iter()
                .map(|x| {
                    let worst = x.console_pages_ms.iter().max_by(|a, b| a.1.total_cmp(&b.1));
                    worst
                        .map(|(p, m, mx, first)| {
                            format!("{m:.1} / {mx:.1} (`{}`; first {first:.0})", shape(p))
                        })
                        .unwrap_or_else(|| "–".into())
                })
                .collect(),
            None,
        );
        row("idle server RSS, MB", "≤ 40", b.iter().map(|x| f(x.idle_server_rss_mb, 1)).collect(), None);
        row("idle worker RSS, MB", "≤ 20", b.iter().map(|x| f(x.idle_worker_rss_mb, 1)).collect(), None);
        if let Some(c) = &self.celery {
            out += &format!(
                "\nCelery {} with Redis, {} prefork worker processes.\n",
                c.version, c.worker_processes
            );
        }
        if let Some(e) = &self.celery_error {
            out += &format!("\nCelery not measured: {e}\n");
        }
        if let Some(p) = pg {
            out += &format!(
                "\nProcrastinate {} on the same PostgreSQL, {} worker processes × {} slots, async tasks.\n",
                p.version, self.worker_processes, self.worker_concurrency
            );
        }
        if let Some(e) = &self.pg_peer_error {
            out += &format!("\nProcrastinate not measured: {e}\n");
        }
        if let Some(first) = self.backends.iter().find(|b| !b.console_pages_ms.is_empty()) {
            out += &format!(
                "\nConsole pages with {} executions stored, ms, p50 / max of 20 requests (and the first request, before them):\n\n| page |",
                crate::console::STORED
            );
            // Each backend's times, then PostgreSQL's again after a VACUUM where measured.
            let mut columns: Vec<(String, &Vec<crate::console::PageTime>)> = Vec::new();
            for b in &self.backends {
                columns.push((b.backend.clone(), &b.console_pages_ms));
                if let Some(v) = &b.console_pages_vacuumed_ms {
                    columns.push((format!("{} after VACUUM", b.backend), v));
                }
            }
            for (name, _) in &columns {
                out += &format!(" {name} |");
            }
            out += "\n|---|";
            for _ in &columns {
                out += "---|";
            }
            out += "\n";
            for (i, (page, ..)) in first.console_pages_ms.iter().enumerate() {
                out += &format!("| `{}` |", shape(page));
                for (_, times) in &columns {
                    let cell = times.get(i).map(|(_, m, mx, first)| format!("{m:.1} / {mx:.1} ({first:.1})"));
                    out += &format!(" {} |", cell.unwrap_or_else(|| "–".into()));
                }
                out += "\n";
            }
        }
        out
    }
}
