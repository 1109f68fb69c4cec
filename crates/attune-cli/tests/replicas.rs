//! Scale-out on PostgreSQL: several `attune server` replicas on one database, workers failing over
//! between them, PostgreSQL itself restarted — real processes, the machine's PostgreSQL (or one of
//! the test's own when the test restarts it).

mod common;

use std::time::{Duration, Instant};

use attune_client::Client;
use attune_core::{Execution, ExecutionStatus};
use attune_testkit::{wait_for, TestDb};
use attune_wire::CreateExecution;
use common::{fast_env, server, worker, PrivatePostgres};
use nix::sys::signal::Signal;
use serde_json::{json, Value};
use uuid::Uuid;

fn req(action: &str, parameters: Value, max_attempts: Option<u32>) -> CreateExecution {
    CreateExecution {
        action_ref: action.into(),
        parameters: Some(parameters),
        max_attempts,
        ..Default::default()
    }
}

/// Submits `n` executions, alternating between the clients.
async fn submit_round_robin(clients: &[Client], n: usize, action: &str, params: Value) -> Vec<Uuid> {
    let mut set = tokio::task::JoinSet::new();
    for k in 0..8 {
        let clients = clients.to_vec();
        let (action, params) = (action.to_owned(), params.clone());
        set.spawn(async move {
            let mut ids = Vec::new();
            for i in (k..n).step_by(8) {
                let c = &clients[i % clients.len()];
                ids.push(c.create_execution(&req(&action, params.clone(), None)).await.unwrap().id);
            }
            ids
        });
    }
    let mut ids = Vec::new();
    while let Some(r) = set.join_next().await {
        ids.extend(r.unwrap());
    }
    ids
}

async fn open_count(c: &Client) -> Option<usize> {
    let s = c.stats().await.ok()?;
    let ex = &s["executions"];
    Some(
        ["requested", "scheduled", "running", "canceling"]
            .iter()
            .map(|k| ex[*k].as_u64().unwrap_or(0) as usize)
            .sum(),
    )
}

async fn wait_all_done(c: &Client, limit: Duration) {
    wait_for("every execution terminal", limit, || async { (open_count(c).await? == 0).then_some(()) }).await;
}

/// Each execution succeeded, and exactly one of its attempts did.
async fn assert_exactly_once(c: &Client, ids: &[Uuid]) -> usize {
    let mut retried = 0;
    for id in ids {
        let e: Execution = c.get_execution(*id).await.unwrap();
        assert_eq!(e.status, ExecutionStatus::Succeeded, "{e:?}");
        let wins = e.attempts.iter().filter(|a| a.status == ExecutionStatus::Succeeded).count();
        assert_eq!(wins, 1, "{:?}", e.attempts);
        if e.attempts.len() > 1 {
            retried += 1;
        }
    }
    retried
}

/// 1. Two replicas, three workers split across them, 2,000 executions: each succeeds exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_three_workers_run_everything_once() {
    let db = TestDb::postgres().await;
    let env = fast_env(&[]);
    let (_a, url_a) = server("server A", "127.0.0.1:0", &db.url, &env);
    let (_b, url_b) = server("server B", "127.0.0.1:0", &db.url, &env);
    let _w1 = worker("w1", &url_a, &env);
    let _w2 = worker("w2", &url_b, &env);
    let _w3 = worker("w3", &format!("{url_b},{url_a}"), &env);
    let clients = [common::client(&url_a), common::client(&url_b)];
    let started = Instant::now();
    let ids = submit_round_robin(&clients, 2000, "core.noop", json!({})).await;
    wait_all_done(&clients[0], Duration::from_secs(120)).await;
    let retried = assert_exactly_once(&clients[1], &ids).await;
    let mut by_worker = std::collections::BTreeMap::new();
    for e in clients[0].list_executions("limit=1000").await.unwrap().items {
        *by_worker.entry(e.worker.unwrap_or_default()).or_insert(0) += 1;
    }
    println!("2 replicas, 3 workers: 2000 executions in {:.1?}, {retried} retried; last 1000 by worker: {by_worker:?}", started.elapsed());
    assert!(by_worker.len() >= 2, "work spread over the workers: {by_worker:?}");
}

/// 2. Killing one replica mid-run: its workers move to the other and everything finishes once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_a_replica_loses_nothing() {
    let db = TestDb::postgres().await;
    let env = fast_env(&[]);
    let (mut a, url_a) = server("server A", "127.0.0.1:0", &db.url, &env);
    let (_b, url_b) = server("server B", "127.0.0.1:0", &db.url, &env);
    let both_a = format!("{url_a},{url_b}");
    let w1 = worker("w1", &both_a, &env);
    let _w2 = worker("w2", &both_a, &env);
    let client_b = common::client(&url_b);
    let ids =
        submit_round_robin(std::slice::from_ref(&client_b), 300, "core.sleep", json!({"seconds": 0.2})).await;
    wait_for("work running", Duration::from_secs(10), || async {
        let s = client_b.stats().await.ok()?;
        (s["executions"]["succeeded"].as_u64().unwrap_or(0) > 20).then_some(())
    })
    .await;
    a.signal(Signal::SIGKILL);
    a.wait_exit(Duration::from_secs(5));
    wait_all_done(&client_b, Duration::from_secs(120)).await;
    assert_exactly_once(&client_b, &ids).await;
    w1.wait_line(Duration::from_secs(10), |l| l.contains("failing over").then_some(()));
}

/// 3. Submit on A, start via a worker long-polling on B: prompt, thanks to LISTEN/NOTIFY (the
/// fallback re-check alone would take up to a second).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_submit_on_one_replica_wakes_a_worker_on_the_other() {
    let db = TestDb::postgres().await;
    let env = fast_env(&[]);
    let (_a, url_a) = server("server A", "127.0.0.1:0", &db.url, &env);
    let (_b, url_b) = server("server B", "127.0.0.1:0", &db.url, &env);
    let _w = worker("on-b", &url_b, &env);
    let a = common::client(&url_a);
    let b = common::client(&url_b);
    let mut ms = Vec::new();
    for _ in 0..30 {
        let t0 = Instant::now();
        let e = a.create_execution(&req("core.noop", json!({}), None)).await.unwrap();
        // Waiting on B: B hears of the start from A's notification too.
        let s = b.wait_execution(e.id, true, Duration::from_secs(5)).await.unwrap();
        assert_ne!(s.status, ExecutionStatus::Scheduled);
        ms.push(t0.elapsed().as_secs_f64() * 1000.0);
    }
    ms.sort_by(|x, y| x.total_cmp(y));
    let (p50, max) = (ms[ms.len() / 2], ms[ms.len() - 1]);
    println!("submit on A -> started via B: p50 {p50:.1} ms, max {max:.1} ms over {} runs", ms.len());
    assert!(p50 < 250.0, "p50 {p50:.1} ms: the wake-up did not cross replicas");
}

/// 4. Restarting PostgreSQL mid-run: nothing accepted is lost, and the system recovers unaided.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_postgres_restart_is_survived() {
    let pg = PrivatePostgres::start();
    let url = pg.url("attune");
    let env = fast_env(&[]);
    let (_a, url_a) = server("server A", "127.0.0.1:0", &url, &env);
    let (_b, url_b) = server("server B", "127.0.0.1:0", &url, &env);
    let _w1 = worker("w1", &format!("{url_a},{url_b}"), &env);
    let _w2 = worker("w2", &format!("{url_b},{url_a}"), &env);
    let a = common::client(&url_a);
    let ids =
        submit_round_robin(&[a.clone(), common::client(&url_b)], 200, "core.sleep", json!({"seconds": 0.5}))
            .await;
    wait_for("work running", Duration::from_secs(10), || async {
        let s = a.stats().await.ok()?;
        (s["executions"]["running"].as_u64().unwrap_or(0) > 0).then_some(())
    })
    .await;
    pg.restart();
    // Submissions during recovery may be refused (503); once accepted, they must finish.
    let mut more = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while more.len() < 20 {
        match a.create_execution(&req("core.noop", json!({}), None)).await {
            Ok(e) => more.push(e.id),
            Err(e) => {
                assert!(e.is_transient(), "a refusal during recovery is a 5xx, not {e}");
                assert!(Instant::now() < deadline, "still refusing 30 s after the restart");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    wait_all_done(&a, Duration::from_secs(120)).await;
    assert_exactly_once(&a, &ids).await;
    assert_exactly_once(&a, &more).await;
}

/// 5. With two replicas running the monitors, a dead worker's execution is retried exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_monitors_retry_a_dead_workers_execution_once() {
    let db = TestDb::postgres().await;
    let env = fast_env(&[("ATTUNE__WORKER__CONCURRENCY", "1")]);
    let (_a, url_a) = server("server A", "127.0.0.1:0", &db.url, &env);
    let (_b, url_b) = server("server B", "127.0.0.1:0", &db.url, &env);
    let mut w1 = worker("w1", &url_a, &env);
    let a = common::client(&url_a);
    let e = a.create_execution(&req("core.sleep", json!({"seconds": 3}), Some(3))).await.unwrap();
    a.wait_execution(e.id, true, Duration::from_secs(10)).await.unwrap();
    let _w2 = worker("w2", &url_b, &env);
    w1.signal(Signal::SIGKILL);
    w1.wait_exit(Duration::from_secs(5));
    let done = wait_for("the retry to finish", Duration::from_secs(30), || async {
        let x = a.get_execution(e.id).await.ok()?;
        x.status.is_terminal().then_some(x)
    })
    .await;
    assert_eq!((done.status, done.attempt), (ExecutionStatus::Succeeded, 2), "{done:?}");
    let requeues = done
        .history
        .iter()
        .filter(|h| h.from == Some(ExecutionStatus::Running) && h.to == ExecutionStatus::Scheduled)
        .count();
    assert_eq!(requeues, 1, "retried once, not once per replica: {:?}", done.history);
    assert_eq!(done.attempts.len(), 2);
}

/// Issue 12: two replicas share one 2-second interval timer for about 10 s: one event per tick,
/// never two for the same tick, whichever replica fires it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_fire_each_timer_tick_once() {
    let db = TestDb::postgres().await;
    let env = fast_env(&[]);
    let (_a, url_a) = server("server A", "127.0.0.1:0", &db.url, &env);
    let (_b, url_b) = server("server B", "127.0.0.1:0", &db.url, &env);
    let a = common::client(&url_a);
    a.set_rule_enabled("examples.every_two_seconds", true).await.unwrap();
    let started = Instant::now();
    let b = common::client(&url_b);
    let events = wait_for("five ticks", Duration::from_secs(30), || async {
        let e = b.list_trigger_events("trigger=core.interval&limit=1000").await.ok()?;
        (e.len() >= 5).then_some(e)
    })
    .await;
    let elapsed = started.elapsed().as_secs_f64();
    let mut ticks: Vec<String> =
        events.iter().map(|e| e.payload["scheduled_at"].as_str().unwrap().to_owned()).collect();
    let n = ticks.len();
    ticks.sort();
    ticks.dedup();
    assert_eq!(ticks.len(), n, "no tick fired twice: {events:?}");
    let expected = elapsed / 2.0;
    assert!((n as f64 - expected).abs() <= 1.5, "{n} ticks in {elapsed:.1}s (every 2 s)");
    assert!(events.iter().all(|e| !e.late), "none late: {events:?}");
}
