//! The workloads, each on a fresh Attune: no-op and shell throughput, low-load latency, a big
//! backlog, dead-worker detection and idle memory; plus the machine's raw spawn rate.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::bail;
use attune_client::Client;
use attune_core::ExecutionStatus;
use attune_wire::CreateExecution;
use serde_json::{json, Value};

use crate::{cluster::Cluster, report::BackendResult, Args, Sizes};

/// Concurrent HTTP submitters.
const SUBMITTERS: usize = 16;

/// `sh -c 'echo hello'` spawned and reaped as fast as two threads can for `seconds`: the
/// hardware's limit for shell actions.
pub fn raw_spawn_rate(seconds: f64) -> f64 {
    let until = Instant::now() + Duration::from_secs_f64(seconds);
    let threads: Vec<_> = (0..2)
        .map(|_| {
            std::thread::spawn(move || {
                let mut n = 0u64;
                while Instant::now() < until {
                    #[allow(clippy::disallowed_methods)] // measuring the raw cost of a spawn
                    let out = std::process::Command::new("sh").args(["-c", "echo hello"]).output();
                    if out.map(|o| o.status.success()).unwrap_or(false) {
                        n += 1;
                    }
                }
                n
            })
        })
        .collect();
    let total: u64 = threads.into_iter().map(|t| t.join().unwrap_or(0)).sum();
    total as f64 / seconds
}

/// Submits `n` executions of `action` from `SUBMITTERS` concurrent clients; with `numbered`, each
/// gets its own parameter `k` (its number), on top of `params`.
pub async fn submit_many(client: &Client, n: usize, action: &str, params: Value) -> anyhow::Result<()> {
    submit_many_as(client, n, action, params, false).await
}

pub async fn submit_many_as(
    client: &Client,
    n: usize,
    action: &str,
    params: Value,
    numbered: bool,
) -> anyhow::Result<()> {
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..SUBMITTERS {
        let (client, next, params, action) =
            (client.clone(), next.clone(), params.clone(), action.to_owned());
        set.spawn(async move {
            let mut req =
                CreateExecution { action_ref: action, parameters: Some(params), ..Default::default() };
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= n {
                    break;
                }
                if numbered {
                    if let Some(Value::Object(m)) = req.parameters.as_mut() {
                        m.insert("k".into(), Value::from(i));
                    }
                }
                client.create_execution(&req).await?;
            }
            anyhow::Ok(())
        });
    }
    while let Some(r) = set.join_next().await {
        r??;
    }
    Ok(())
}

/// Submit-to-terminal throughput of `n` executions, workers already running.
async fn throughput(c: &Cluster, n: usize, action: &str, params: Value) -> anyhow::Result<f64> {
    throughput_as(c, n, action, params, false).await
}

async fn throughput_as(
    c: &Cluster,
    n: usize,
    action: &str,
    params: Value,
    numbered: bool,
) -> anyhow::Result<f64> {
    let before = c.terminal().await?;
    let t0 = Instant::now();
    let client = c.client.clone();
    let action2 = action.to_owned();
    let submit = tokio::spawn(async move { submit_many_as(&client, n, &action2, params, numbered).await });
    let done = c.wait_terminal(before + n as u64, Duration::from_secs(600)).await?;
    submit.await??;
    let failed = c.count("failed").await? + c.count("abandoned").await?;
    if failed > 0 {
        bail!("{failed} executions of {action} did not succeed");
    }
    Ok(n as f64 / done.duration_since(t0).as_secs_f64())
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// p50/p95/p99 in milliseconds.
pub fn summary(mut v: Vec<f64>) -> [f64; 3] {
    v.sort_by(|a, b| a.total_cmp(b));
    [percentile(&v, 50.0), percentile(&v, 95.0), percentile(&v, 99.0)]
}

/// One execution at a time: submit→start and submit→finish, measured by the client.
async fn latency(c: &Cluster, n: usize) -> anyhow::Result<([f64; 3], [f64; 3])> {
    let req = CreateExecution { action_ref: "core.noop".into(), ..Default::default() };
    let (mut start, mut finish) = (Vec::with_capacity(n), Vec::with_capacity(n));
    for i in 0..n + 20 {
        let t0 = Instant::now();
        let e = c.client.create_execution(&req).await?;
        let s = c.client.wait_execution(e.id, true, Duration::from_secs(10)).await?;
        let t_start = t0.elapsed();
        let f = if s.status.is_terminal() {
            s
        } else {
            c.client.wait_execution(e.id, false, Duration::from_secs(10)).await?
        };
        let t_end = t0.elapsed();
        if f.status != ExecutionStatus::Succeeded {
            bail!("latency probe {} ended {}", e.id, f.status);
        }
        if i >= 20 {
            // The first 20 warm up connections and caches.
            start.push(t_start.as_secs_f64() * 1000.0);
            finish.push(t_end.as_secs_f64() * 1000.0);
        }
    }
    Ok((summary(start), summary(finish)))
}

/// `--console-only`: the console's page times, nothing else.
pub async fn run_console_only(backend: &str, args: &Args) -> anyhow::Result<BackendResult> {
    let mut r = BackendResult::new(backend);
    let mut c = Cluster::start(backend, &args.pg).await?;
    c.add_workers(args.workers, args.concurrency).await?;
    eprintln!("[{backend}] console pages with {} executions stored", crate::console::STORED);
    (r.console_pages_ms, r.console_pages_vacuumed_ms) = crate::console::run(&c, 0).await?;
    Ok(r)
}

/// Only the workflow rows (issue 13), for quick comparisons while working on the engine.
pub async fn run_workflows_only(backend: &str, args: &Args, s: Sizes) -> anyhow::Result<BackendResult> {
    let mut r = BackendResult::new(backend);
    let mut c = Cluster::start_with(backend, &args.pg, crate::events::write_pack).await?;
    c.add_workers(args.workers, args.concurrency).await?;
    eprintln!("[{backend}] workflows: {} × 3 steps, one at a time; a `with` of 1,000 items", s.workflows);
    let (seq, items) = workflows(&c, s.workflows).await?;
    r.workflow_3step_ms = Some(seq);
    r.with_items_per_sec = Some(items);
    Ok(r)
}

pub async fn run_backend(backend: &str, args: &Args, s: Sizes, spawn: f64) -> anyhow::Result<BackendResult> {
    let mut r = BackendResult::new(backend);
    eprintln!("[{backend}] idle memory");
    {
        let mut c = Cluster::start(backend, &args.pg).await?;
        c.add_workers(1, args.concurrency).await?;
        tokio::time::sleep(Duration::from_secs(2)).await;
        r.idle_server_rss_mb = c.server.rss().map(|b| b as f64 / 1_048_576.0);
        r.idle_worker_rss_mb = c.workers[0].rss().map(|b| b as f64 / 1_048_576.0);
    }
    eprintln!("[{backend}] no-op throughput, {} executions", s.noop);
    {
        let mut c = Cluster::start(backend, &args.pg).await?;
        c.add_workers(args.workers, args.concurrency).await?;
        r.noop_per_sec = Some(throughput(&c, s.noop, "core.noop", json!({})).await?);
        eprintln!("[{backend}] shell (core.echo) throughput, {} executions", s.shell);
        let shell = throughput(&c, s.shell, "core.echo", json!({"message": "hello"})).await?;
        r.shell_per_sec = Some(shell);
        r.shell_vs_spawn = Some(shell / spawn);
        eprintln!("[{backend}] latency at low load, {} executions", s.latency);
        let (start, finish) = latency(&c, s.latency).await?;
        r.submit_to_start_ms = Some(start);
        r.submit_to_finish_ms = Some(finish);
    }
    eprintln!("[{backend}] backlog of {} then {} measured", s.backlog, s.backlog_measured);
    {
        let mut c = Cluster::start(backend, &args.pg).await?;
        submit_many(&c.client, s.backlog, "core.noop", json!({})).await?;
        c.add_workers(args.workers, args.concurrency).await?;
        let c0 = c.terminal().await?;
        let t0 = Instant::now();
        let done = c.wait_terminal(c0 + s.backlog_measured as u64, Duration::from_secs(600)).await?;
        r.backlog_per_sec = Some(s.backlog_measured as f64 / done.duration_since(t0).as_secs_f64());
        eprintln!("[{backend}] console pages with {} executions stored", crate::console::STORED);
        (r.console_pages_ms, r.console_pages_vacuumed_ms) = crate::console::run(&c, s.backlog).await?;
    }
    if backend == "postgres" {
        eprintln!("[{backend}] cross-replica wake-up, {} executions", s.latency / 4);
        let mut c = Cluster::start(backend, &args.pg).await?;
        let (_replica, url_b) = c.add_replica().await?;
        c.add_worker_on(&url_b, args.concurrency).await?;
        r.cross_replica_start_ms = Some(cross_replica(&c, &url_b, s.latency / 4).await?);
    }
    eprintln!(
        "[{backend}] events: webhook latency ({}), {} events on 100 rules, timer lag",
        s.event_latency, s.events
    );
    {
        let mut c = Cluster::start_with(backend, &args.pg, crate::events::write_pack).await?;
        c.add_workers(args.workers, args.concurrency).await?;
        eprintln!("[{backend}] no-op throughput with a concurrency limit on each, {} executions", s.noop);
        r.limited_per_sec = Some(throughput_as(&c, s.noop, "bench.limited", json!({}), true).await?);
        eprintln!("[{backend}] workflows: {} × 3 steps, one at a time; a `with` of 1,000 items", s.workflows);
        let (seq, items) = workflows(&c, s.workflows).await?;
        r.workflow_3step_ms = Some(seq);
        r.with_items_per_sec = Some(items);
        let e = crate::events::run(&c, s.event_latency, s.events).await?;
        r.webhook_to_start_ms = Some(e.webhook_to_start_ms);
        r.events_per_sec = Some(e.per_sec);
        r.timer_lag_ms = Some(e.timer_lag_ms);
    }
    eprintln!("[{backend}] a Python pack with a dependency: first run on a new worker, then warm");
    {
        let mut c = Cluster::start_with(backend, &args.pg, crate::packs::write_pack).await?;
        let (cold, warm) = crate::packs::run(&mut c, args.concurrency, 20).await?;
        r.python_cold_ms = Some(cold);
        r.python_warm_ms = Some(warm);
    }
    eprintln!("[{backend}] dead-worker detection, {} kills", s.kills);
    {
        let mut c = Cluster::start(backend, &args.pg).await?;
        c.add_workers(1, 1).await?;
        let secs = detection(&mut c, s.kills).await?;
        r.detection_seconds = secs;
    }
    Ok(r)
}

/// Workflows (issue 13): `bench.seq3` one at a time, submit → succeeded; then `bench.fan` over
/// 1,000 items at concurrency 100, items per second from submit to its end.
async fn workflows(c: &Cluster, n: usize) -> anyhow::Result<([f64; 3], f64)> {
    let run = |action: &str, parameters: serde_json::Value| CreateExecution {
        action_ref: action.into(),
        parameters: Some(parameters),
        ..Default::default()
    };
    let mut ms = Vec::with_capacity(n);
    for i in 0..n + 10 {
        let t0 = Instant::now();
        let e = c.client.create_execution(&run("bench.seq3", json!({}))).await?;
        let done = c.client.wait_execution(e.id, false, Duration::from_secs(30)).await?;
        if done.status != ExecutionStatus::Succeeded {
            bail!("workflow {} ended {}: {:?}", e.id, done.status, done.error);
        }
        if i >= 10 {
            ms.push(t0.elapsed().as_secs_f64() * 1000.0);
        }
    }
    let items = 1000;
    let t0 = Instant::now();
    let e = c.client.create_execution(&run("bench.fan", json!({"n": items}))).await?;
    let done = c.client.wait_execution(e.id, false, Duration::from_secs(60)).await?;
    if done.status != ExecutionStatus::Succeeded {
        bail!("`with` workflow {} ended {}: {:?}", e.id, done.status, done.error);
    }
    Ok((summary(ms), items as f64 / t0.elapsed().as_secs_f64()))
}

/// Submit on replica A, started by a worker long-polling on replica B (woken by LISTEN/NOTIFY);
/// measured as A's submit to B's `wait` answer.
async fn cross_replica(c: &Cluster, url_b: &str, n: usize) -> anyhow::Result<[f64; 3]> {
    let b = c.client_of(url_b);
    let req = CreateExecution { action_ref: "core.noop".into(), ..Default::default() };
    let mut ms = Vec::with_capacity(n);
    for i in 0..n + 10 {
        let t0 = Instant::now();
        let e = c.client.create_execution(&req).await?;
        let s = b.wait_execution(e.id, true, Duration::from_secs(10)).await?;
        if s.status == ExecutionStatus::Scheduled {
            bail!("execution {} did not start within 10 s", e.id);
        }
        if i >= 10 {
            ms.push(t0.elapsed().as_secs_f64() * 1000.0);
        }
    }
    Ok(summary(ms))
}

/// kill -9 of the worker running a task, to the moment another worker starts it: worker A runs
/// the probe, B is idle; kill A and time until B starts the probe's second attempt.
async fn detection(c: &mut Cluster, kills: usize) -> anyhow::Result<Vec<f64>> {
    let mut out = Vec::new();
    for _ in 0..kills {
        // Exactly one worker: it must be the one running the probe.
        while c.workers.len() > 1 {
            let mut extra = c.workers.pop().expect("more than one");
            extra.kill9();
        }
        let req = CreateExecution {
            action_ref: "core.sleep".into(),
            parameters: Some(json!({"seconds": 60})),
            max_attempts: Some(2),
            ..Default::default()
        };
        let e = c.client.create_execution(&req).await?;
        c.client.wait_execution(e.id, true, Duration::from_secs(10)).await?;
        c.add_workers(1, 1).await?;
        let mut victim = c.workers.remove(0);
        let t0 = Instant::now();
        victim.kill9();
        let deadline = t0 + Duration::from_secs(30);
        loop {
            let x = c.client.get_execution(e.id).await?;
            if x.attempt >= 2 && x.status == ExecutionStatus::Running {
                out.push(t0.elapsed().as_secs_f64());
                c.client.cancel_execution(e.id).await?;
                break;
            }
            if Instant::now() > deadline {
                bail!("no redelivery within 30 s");
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // Let the cancel reach the survivor before the next round.
        c.client.wait_execution(e.id, false, Duration::from_secs(10)).await?;
    }
    Ok(out)
}
