//! `--profile N` (issue 17): where a no-op execution's cost goes. After a warm-up, runs `N` no-ops
//! through a fresh cluster (16 submitting clients, as the throughput row) and reads before and
//! after:
//! - the CPU time of each part, from `/proc`: the server, the workers, every PostgreSQL process
//!   (exited backends through the postmaster's children's time), this benchmark's clients, and
//!   how busy the whole machine was;
//! - on PostgreSQL, the database's commits and the WAL's records, bytes, writes and flushes
//!   (`pg_stat_database`, `pg_stat_wal`), and what its client backends were doing, sampled
//!   from `pg_stat_activity` every 10 ms (the sampler's own queries cost the database a little).
//!
//! Prints them per execution. Nothing here changes how Attune runs.

use std::{
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use serde_json::json;

use crate::cluster::Cluster;

/// CPU seconds from `/proc/<pid>/stat`: own user + system time, plus that of waited-for children
/// when `children` (the postmaster's exited backends).
fn cpu_of(pid: u32, children: bool) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces), from `state`.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<f64> = rest.split_whitespace().map(|x| x.parse().unwrap_or(0.0)).collect();
    let (utime, stime, cutime, cstime) = (f[11], f[12], f[13], f[14]);
    let ticks = if children { utime + stime + cutime + cstime } else { utime + stime };
    Some(ticks / 100.0) // USER_HZ: 100 on Linux
}

/// Every process whose name is `postgres`.
fn postgres_pids() -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else { return Vec::new() };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == "postgres")
        })
        .collect()
}

/// Busy and total CPU seconds of the whole machine (all cores), from `/proc/stat`.
fn machine() -> (f64, f64) {
    let s = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let f: Vec<f64> = s
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .skip(1)
        .map(|x| x.parse().unwrap_or(0.0))
        .collect();
    let total: f64 = f.iter().take(8).sum();
    let idle = f.get(3).copied().unwrap_or(0.0) + f.get(4).copied().unwrap_or(0.0);
    ((total - idle) / 100.0, total / 100.0)
}

#[derive(Debug, Clone, Copy, Default)]
struct Snap {
    server: f64,
    workers: f64,
    postgres: f64,
    bench: f64,
    busy: f64,
    total: f64,
}

fn snap(c: &Cluster) -> Snap {
    let (busy, total) = machine();
    Snap {
        server: cpu_of(c.server.pid(), false).unwrap_or(0.0),
        workers: c.workers.iter().filter_map(|w| cpu_of(w.pid(), true)).sum(),
        postgres: postgres_pids().into_iter().filter_map(|p| cpu_of(p, true)).sum(),
        bench: cpu_of(std::process::id(), false).unwrap_or(0.0),
        busy,
        total,
    }
}

/// Commits of the benchmark's database, and the WAL's records, bytes, writes and flushes.
async fn pg_stats(db_url: &str) -> anyhow::Result<[f64; 5]> {
    let text = crate::cluster::psql(
        db_url,
        "SELECT d.xact_commit, w.wal_records, w.wal_bytes, w.wal_write, w.wal_sync
         FROM pg_stat_database d, pg_stat_wal w WHERE d.datname = current_database()",
    )
    .await?;
    let v: Vec<f64> = text.trim().split('|').map(|x| x.parse().unwrap_or(0.0)).collect();
    anyhow::ensure!(v.len() == 5, "unexpected statistics: {text:?}");
    Ok([v[0], v[1], v[2], v[3], v[4]])
}

/// What the database's client backends are doing, sampled every `SAMPLE_EVERY` until `stop` is set:
/// counts by (state, wait event), where an active backend with no wait event is on a CPU.
async fn sample_waits(
    db_url: String,
    stop: Arc<AtomicBool>,
) -> anyhow::Result<std::collections::BTreeMap<String, u64>> {
    use sqlx::Connection;
    let mut conn = sqlx::PgConnection::connect(&db_url).await?;
    let mut tally = std::collections::BTreeMap::new();
    while !stop.load(Ordering::Relaxed) {
        let rows: Vec<Sample> = sqlx::query_as(
            "SELECT state, wait_event_type, wait_event,
                    CASE WHEN wait_event_type = 'Lock' THEN left(regexp_replace(query, '\\s+', ' ', 'g'), 70) END
             FROM pg_stat_activity
             WHERE datname = current_database() AND pid <> pg_backend_pid() AND backend_type = 'client backend'",
        )
        .fetch_all(&mut conn)
        .await?;
        for (state, kind, event, query) in rows {
            let key = match (state.as_deref(), kind, event) {
                (Some("active"), Some(k), Some(e)) if query.is_some() => {
                    format!("active: waiting on {k}/{e} in `{}…`", query.unwrap_or_default())
                }
                (Some("active"), None, _) => "active: on a CPU".to_string(),
                (Some("active"), Some(k), Some(e)) => format!("active: waiting on {k}/{e}"),
                (Some("active"), Some(k), None) => format!("active: waiting on {k}"),
                (Some(s), _, _) => s.to_string(), // idle, idle in transaction
                (None, _, _) => "unknown".to_string(),
            };
            *tally.entry(key).or_insert(0) += 1;
        }
        tokio::time::sleep(SAMPLE_EVERY).await;
    }
    Ok(tally)
}

/// A backend's state, wait event type and wait event, and its query when it waits on a lock.
type Sample = (Option<String>, Option<String>, Option<String>, Option<String>);

const SAMPLE_EVERY: Duration = Duration::from_millis(10);

/// PostgreSQL publishes a backend's statistics at most once a second.
const STATS_SETTLE: Duration = Duration::from_millis(1500);

pub async fn run(backend: &str, args: &crate::Args, n: usize) -> anyhow::Result<()> {
    // The benchmark's pack (which holds `bench.limited`) also fires a timer rule each second:
    // loaded only when needed.
    let limited = args.profile_limited;
    let mut c =
        Cluster::start_with(
            backend,
            &args.pg,
            |d| if limited { crate::events::write_pack(d) } else { Ok(()) },
        )
        .await?;
    c.add_workers(args.workers, args.concurrency).await?;
    let pg = backend == "postgres";
    let action = if args.profile_limited { "bench.limited" } else { "core.noop" };
    eprintln!("[{backend}] profile: warm-up of 1,000 {action}, then {n}");
    run_noops(&c, 1_000, action).await?;
    tokio::time::sleep(STATS_SETTLE).await;
    let pg0 = if pg { Some(pg_stats(&c.db_url).await?) } else { None };
    let stop = Arc::new(AtomicBool::new(false));
    let sampler = pg.then(|| tokio::spawn(sample_waits(c.db_url.clone(), stop.clone())));
    let s0 = snap(&c);
    let t0 = Instant::now();
    run_noops(&c, n, action).await?;
    let secs = t0.elapsed().as_secs_f64();
    let s1 = snap(&c);
    stop.store(true, Ordering::Relaxed);
    let waits = match sampler {
        Some(h) => Some(h.await??),
        None => None,
    };
    tokio::time::sleep(STATS_SETTLE).await;
    let pg1 = if pg { Some(pg_stats(&c.db_url).await?) } else { None };
    let per = |a: f64, b: f64| (b - a) * 1000.0 / n as f64; // ms per execution
    println!("\n{backend}: {n} × {action} in {secs:.2} s = {:.0}/s (16 submitting clients)", n as f64 / secs);
    println!("| CPU per execution | ms | share of the machine's busy time |");
    println!("|---|---|---|");
    let busy = s1.busy - s0.busy;
    for (name, a, b) in [
        ("server", s0.server, s1.server),
        ("workers (2 processes)", s0.workers, s1.workers),
        ("PostgreSQL (all its processes)", s0.postgres, s1.postgres),
        ("benchmark clients", s0.bench, s1.bench),
    ] {
        if name.starts_with("PostgreSQL") && !pg {
            continue;
        }
        println!("| {name} | {:.3} | {:.0} % |", per(a, b), (b - a) / busy * 100.0);
    }
    println!(
        "| whole machine | {:.3} | busy {:.0} % of {:.0} core-seconds |",
        per(s0.busy, s1.busy),
        busy / (s1.total - s0.total) * 100.0,
        s1.total - s0.total
    );
    if let (Some(a), Some(b)) = (pg0, pg1) {
        let k = |i: usize| (b[i] - a[i]) / n as f64;
        println!(
            "| PostgreSQL per execution | commits {:.3} | WAL records {:.1}, bytes {:.0}, writes {:.3}, flushes {:.3} |",
            k(0),
            k(1),
            k(2),
            k(3),
            k(4)
        );
    }
    if let Some(waits) = waits {
        let total: u64 = waits.values().sum();
        println!(
            "\n| what PostgreSQL's client backends were doing (sampled every 10 ms) | share of samples |"
        );
        println!("|---|---|");
        let mut v: Vec<_> = waits.into_iter().collect();
        v.sort_by_key(|x| std::cmp::Reverse(x.1));
        for (k, n) in v {
            println!("| {k} | {:.1} % |", n as f64 * 100.0 / total as f64);
        }
    }
    Ok(())
}

/// `n` executions of `action`; `bench.limited` gets its own concurrency key in each.
async fn run_noops(c: &Cluster, n: usize, action: &str) -> anyhow::Result<()> {
    let before = c.terminal().await?;
    crate::workloads::submit_many_as(&c.client, n, action, json!({}), action == "bench.limited").await?;
    c.wait_terminal(before + n as u64, Duration::from_secs(600)).await?;
    Ok(())
}
