//! Failure semantics, proven with real processes really killed: the chaos suite of issue 4.
//! Heartbeats are 1 s, so a worker is stale after 3 s; every wait is a condition with a deadline.

use std::time::{Duration, Instant};

use attune_client::Client;
use attune_core::{Execution, ExecutionStatus, WorkerStatus};
use attune_testkit::{wait_for, Proc, TestDb};
use attune_wire::CreateExecution;
use nix::sys::signal::Signal;
use serde_json::{json, Value};
use uuid::Uuid;

mod common;

use common::{fast_env, BIN};

struct Cluster {
    server: Proc,
    url: String,
    client: Client,
    db_url: String,
    env: Vec<(String, String)>,
    _db: TestDb,
}

impl Cluster {
    fn start(db: TestDb, extra: &[(&str, &str)]) -> Cluster {
        let env = fast_env(extra);
        let (server, url) = common::server("server", "127.0.0.1:0", &db.url, &env);
        Cluster { client: common::client(&url), server, url, db_url: db.url.clone(), env, _db: db }
    }

    /// Starts a worker process and waits until it has registered.
    fn worker(&self, name: &str, extra: &[(&str, &str)]) -> Proc {
        let mut env = self.env.clone();
        env.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
        common::worker(name, &self.url, &env)
    }

    /// Kills the server with SIGKILL and starts it again on the same port and database (its
    /// tokens are in the database, so they stay good).
    fn restart_server(&mut self) {
        self.server.signal(Signal::SIGKILL);
        self.server.wait_exit(Duration::from_secs(10));
        let listen = self.url.trim_start_matches("http://").to_owned();
        let known = common::tokens(&self.url);
        (self.server, _) = common::server("server (restarted)", &listen, &self.db_url, &self.env);
        common::remember_tokens_as(&self.url, known);
    }

    async fn submit(&self, action: &str, parameters: Value, max_attempts: Option<u32>) -> Execution {
        let req = CreateExecution {
            action_ref: action.into(),
            parameters: Some(parameters),
            max_attempts,
            timeout_seconds: None,
            backoff_seconds: None,
            ..Default::default()
        };
        self.client.create_execution(&req).await.unwrap()
    }

    async fn get(&self, id: Uuid) -> Execution {
        self.client.get_execution(id).await.unwrap()
    }

    async fn wait_status(
        &self,
        id: Uuid,
        pred: impl Fn(&Execution) -> bool,
        what: &str,
        timeout: Duration,
    ) -> Execution {
        wait_for(what, timeout, || async {
            let e = self.client.get_execution(id).await.ok()?;
            pred(&e).then_some(e)
        })
        .await
    }

    async fn worker_status(&self, name: &str) -> Option<WorkerStatus> {
        let ws = self.client.list_workers(true).await.ok()?;
        ws.into_iter().filter(|w| w.name == name).max_by_key(|w| w.registered_at).map(|w| w.status)
    }
}

fn running_on(e: &Execution) -> Option<String> {
    (e.status == ExecutionStatus::Running).then(|| e.worker.clone()).flatten()
}

/// 1. kill -9 of a worker running core.sleep.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_worker_is_detected_and_its_task_retried_or_abandoned() {
    let c = Cluster::start(TestDb::sqlite(), &[]);
    let mut w1 = c.worker("w1", &[("ATTUNE__WORKER__CONCURRENCY", "1")]);
    let e = c.submit("core.sleep", json!({"seconds": 4}), Some(2)).await;
    c.wait_status(e.id, |e| running_on(e).is_some(), "running on w1", Duration::from_secs(10)).await;
    let _w2 = c.worker("w2", &[("ATTUNE__WORKER__CONCURRENCY", "1")]);
    w1.signal(Signal::SIGKILL);
    w1.wait_exit(Duration::from_secs(5));
    let killed = Instant::now();
    wait_for("w1 inactive", Duration::from_secs(10), || async {
        (c.worker_status("w1").await == Some(WorkerStatus::Inactive)).then_some(())
    })
    .await;
    let detected = killed.elapsed();
    // 3 heartbeats (3 s) + one check (250 ms), plus scheduling slack.
    assert!(detected < Duration::from_millis(4500), "w1 marked inactive after {detected:?}");
    let done =
        c.wait_status(e.id, |e| e.status.is_terminal(), "the retry to finish", Duration::from_secs(20)).await;
    assert_eq!(
        (done.status, done.attempt, done.worker.as_deref()),
        (ExecutionStatus::Succeeded, 2, Some("w2"))
    );
    let full = c.get(e.id).await;
    assert_eq!(full.attempts[0].status, ExecutionStatus::Abandoned);
    assert_eq!(full.attempts[0].worker.as_deref(), Some("w1"));
    println!("kill -9 detected in {detected:?}");

    // With one attempt, the execution is abandoned with the reason.
    let mut w3 = c.worker("w3", &[("ATTUNE__WORKER__CONCURRENCY", "1")]);
    let mut e2 = c.submit("core.sleep", json!({"seconds": 30}), Some(1)).await;
    // w2 and w3 both poll; kill whichever got it.
    let on = c
        .wait_status(e2.id, |e| running_on(e).is_some(), "running", Duration::from_secs(10))
        .await
        .worker
        .unwrap();
    if on == "w3" {
        w3.signal(Signal::SIGKILL);
        w3.wait_exit(Duration::from_secs(5));
    } else {
        drop(_w2);
    }
    e2 = c.wait_status(e2.id, |e| e.status.is_terminal(), "abandoned", Duration::from_secs(15)).await;
    assert_eq!(e2.status, ExecutionStatus::Abandoned);
    let err = e2.error.unwrap();
    assert_eq!(err["failed_by"], "worker_heartbeat_monitor");
    assert_eq!(err["worker"], on.as_str());
    let dl = c.client.list_dead_letters(false).await.unwrap();
    assert!(dl.iter().any(|d| d.execution_id == e2.id && d.cause == "abandoned"), "{dl:?}");
}

/// 2. SIGTERM of a worker with a task in flight: graceful drain.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_the_worker() {
    let c = Cluster::start(TestDb::sqlite(), &[]);
    let mut w1 = c.worker("w1", &[]);
    let e = c.submit("core.sleep", json!({"seconds": 3}), None).await;
    c.wait_status(e.id, |e| running_on(e).is_some(), "running", Duration::from_secs(10)).await;
    w1.signal(Signal::SIGTERM);
    let sent = Instant::now();
    wait_for("w1 inactive", Duration::from_secs(5), || async {
        (c.worker_status("w1").await == Some(WorkerStatus::Inactive)).then_some(())
    })
    .await;
    assert!(sent.elapsed() < Duration::from_secs(1), "inactive after {:?}", sent.elapsed());
    let later = c.submit("core.noop", json!({}), None).await;
    let done =
        c.wait_status(e.id, |e| e.status.is_terminal(), "in-flight task", Duration::from_secs(15)).await;
    assert_eq!((done.status, done.worker.as_deref()), (ExecutionStatus::Succeeded, Some("w1")));
    let status = w1.wait_exit(Duration::from_secs(15));
    assert!(status.success(), "exit status {status:?}");
    assert_eq!(
        c.get(later.id).await.status,
        ExecutionStatus::Scheduled,
        "a draining worker receives nothing new"
    );
    let _w2 = c.worker("w2", &[]);
    let later =
        c.wait_status(later.id, |e| e.status.is_terminal(), "later on w2", Duration::from_secs(10)).await;
    assert_eq!(later.worker.as_deref(), Some("w2"));
}

/// 2b. SIGTERM with a shutdown timeout shorter than the task: reported and retried elsewhere.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_past_the_shutdown_timeout_releases_the_task() {
    let c = Cluster::start(TestDb::sqlite(), &[]);
    let mut w1 = c.worker("w1", &[("ATTUNE__WORKER__SHUTDOWN_TIMEOUT", "1s")]);
    let e = c.submit("core.sleep", json!({"seconds": 3}), Some(2)).await;
    c.wait_status(e.id, |e| running_on(e).is_some(), "running", Duration::from_secs(10)).await;
    w1.signal(Signal::SIGTERM);
    assert!(w1.wait_exit(Duration::from_secs(10)).success());
    let released = c.get(e.id).await;
    assert_eq!(released.status, ExecutionStatus::Scheduled, "given back at once, not after a lease expiry");
    assert_eq!(released.error.as_ref().unwrap()["failed_by"], "worker_shutdown");
    let _w2 = c.worker("w2", &[]);
    let done = c.wait_status(e.id, |e| e.status.is_terminal(), "retry on w2", Duration::from_secs(15)).await;
    assert_eq!(
        (done.status, done.attempt, done.worker.as_deref()),
        (ExecutionStatus::Succeeded, 2, Some("w2"))
    );
}

/// 3. No worker for the action's runtime: failed with the seed's error object after scheduled_timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unstartable_work_fails_with_the_seed_error() {
    let c = Cluster::start(
        TestDb::sqlite(),
        &[
            ("ATTUNE__EXECUTOR__SCHEDULED_TIMEOUT", "2s"),
            ("ATTUNE__EXECUTOR__TIMEOUT_CHECK_INTERVAL", "250ms"),
        ],
    );
    let _w = c.worker("builtin-only", &[("ATTUNE__WORKER__RUNTIMES", "[builtin]")]);
    let e = c.submit("core.echo", json!({"message": "nobody runs shell here"}), None).await;
    let ok = c.submit("core.noop", json!({}), None).await;
    let done = c.wait_status(e.id, |e| e.status.is_terminal(), "the timeout", Duration::from_secs(15)).await;
    assert_eq!(done.status, ExecutionStatus::Failed);
    let err = done.error.unwrap();
    let msg = err["error"].as_str().unwrap();
    assert!(
        msg.starts_with("Execution timeout: worker did not pick up task within 2 seconds (scheduled for "),
        "{msg}"
    );
    assert_eq!(err["failed_by"], "execution_timeout_monitor");
    assert_eq!(err["timeout_seconds"], 2);
    assert!(err["age_seconds"].as_u64().unwrap() >= 2);
    assert_eq!(err["original_status"], "scheduled");
    assert_eq!(
        c.wait_status(ok.id, |e| e.status.is_terminal(), "noop", Duration::from_secs(5)).await.status,
        ExecutionStatus::Succeeded
    );
    let dl = c.client.list_dead_letters(false).await.unwrap();
    let entry = dl.iter().find(|d| d.execution_id == e.id).expect("dead-lettered");
    assert_eq!(entry.cause, "queue_ttl");
}

/// 4. A frozen worker loses its task, comes back, and its late report changes nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frozen_worker_comes_back_but_its_late_report_is_fenced() {
    let c = Cluster::start(TestDb::sqlite(), &[]);
    let w1 = c.worker("w1", &[]);
    let e = c.submit("core.local", json!({"cmd": "sleep 4; echo first"}), Some(2)).await;
    c.wait_status(e.id, |e| running_on(e).as_deref() == Some("w1"), "running on w1", Duration::from_secs(10))
        .await;
    w1.signal(Signal::SIGSTOP);
    let _w2 = c.worker("w2", &[]);
    c.wait_status(
        e.id,
        |e| e.attempt == 2 && running_on(e).as_deref() == Some("w2"),
        "attempt 2 on w2",
        Duration::from_secs(15),
    )
    .await;
    assert_eq!(c.worker_status("w1").await, Some(WorkerStatus::Inactive));
    w1.signal(Signal::SIGCONT);
    wait_for("w1 active again", Duration::from_secs(10), || async {
        (c.worker_status("w1").await == Some(WorkerStatus::Active)).then_some(())
    })
    .await;
    let done =
        c.wait_status(e.id, |e| e.status.is_terminal(), "attempt 2 done", Duration::from_secs(20)).await;
    assert_eq!(
        (done.status, done.attempt, done.worker.as_deref()),
        (ExecutionStatus::Succeeded, 2, Some("w2"))
    );
    let full = c.get(e.id).await;
    let succeeded = full.history.iter().filter(|h| h.to == ExecutionStatus::Succeeded).count();
    assert_eq!(succeeded, 1, "{:?}", full.history);
    assert_eq!(full.attempts[0].status, ExecutionStatus::Abandoned, "attempt 1 stays lost");
    // w1 learned its lease was gone (revoked on its first heartbeat back) or was refused (409).
    w1.wait_line(Duration::from_secs(10), |l| {
        (l.contains("lease revoked") || l.contains("lease lost") || l.contains("report rejected"))
            .then_some(())
    });
}

/// 5. A poller whose connection drops mid-poll does not swallow the next task.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_poll_does_not_swallow_work() {
    use tokio::io::AsyncWriteExt;
    let c = Cluster::start(
        TestDb::sqlite(),
        &[
            ("ATTUNE__EXECUTOR__DELIVERY_TIMEOUT", "30s"),
            ("RUST_LOG", "info,attune_server::api::worker=debug"),
        ],
    );
    // A worker that long-polls over a raw connection and then vanishes without a FIN from its
    // application (the socket is closed under it).
    let enroller = Client::new(&c.url).with_token(Some(common::tokens(&c.url).enroll));
    let reg = enroller
        .register(&attune_wire::RegisterWorker {
            name: "ghost".into(),
            host: "h".into(),
            runtimes: vec![attune_core::Runtime::Builtin],
            labels: json!({}),
            concurrency: 1,
            version: "t".into(),
        })
        .await
        .unwrap();
    let addr = c.url.trim_start_matches("http://").to_owned();
    let mut sock = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let body = r#"{"max_tasks": 1, "wait_ms": 30000}"#;
    let req = format!(
        "POST /api/v1/worker/{}/poll HTTP/1.1\r\nhost: {addr}\r\nauthorization: Bearer {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        reg.worker.id,
        reg.credential,
        body.len()
    );
    sock.write_all(req.as_bytes()).await.unwrap();
    sock.flush().await.unwrap();
    // Once the poll is parked in the server, drop the connection.
    c.server.wait_line(Duration::from_secs(10), |l| {
        (l.contains("poll waiting for work") && l.contains("ghost")).then_some(())
    });
    drop(sock);
    let _w = c.worker("real", &[]);
    let e = c.submit("core.noop", json!({}), None).await;
    let submitted = Instant::now();
    let done =
        c.wait_status(e.id, |e| e.status.is_terminal(), "the real worker", Duration::from_secs(20)).await;
    let took = submitted.elapsed();
    assert_eq!((done.status, done.worker.as_deref()), (ExecutionStatus::Succeeded, Some("real")));
    assert!(took < Duration::from_secs(1), "started by another worker after {took:?}");
}

/// 6. The server killed and restarted with work scheduled and running: nothing lost, nothing twice.
async fn server_restart(db: TestDb) {
    let mut c = Cluster::start(db, &[]);
    let _w = c.worker("w1", &[("ATTUNE__WORKER__CONCURRENCY", "2")]);
    let mut ids = Vec::new();
    for _ in 0..2 {
        ids.push(c.submit("core.sleep", json!({"seconds": 3}), None).await.id);
    }
    for _ in 0..4 {
        ids.push(c.submit("core.sleep", json!({"seconds": 0.5}), None).await.id);
    }
    wait_for("two running", Duration::from_secs(10), || async {
        let l = c.client.list_executions("status=running").await.ok()?;
        (l.items.len() == 2).then_some(())
    })
    .await;
    c.restart_server();
    c.client = common::client(&c.url);
    for id in &ids {
        let e = c
            .wait_status(*id, |e| e.status.is_terminal(), "terminal after restart", Duration::from_secs(60))
            .await;
        assert_eq!(e.status, ExecutionStatus::Succeeded, "{e:?}");
        let full = c.get(*id).await;
        assert_eq!(full.attempts.len(), 1, "ran once: {:?}", full.attempts);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_restart_loses_nothing_on_sqlite() {
    server_restart(TestDb::sqlite()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_restart_loses_nothing_on_postgres() {
    server_restart(TestDb::postgres().await).await;
}

/// Executions not yet terminal (scheduled, running, canceling, requested).
async fn open_count(c: &Client) -> Option<usize> {
    let mut n = 0;
    for s in ["requested", "scheduled", "running", "canceling"] {
        n += c.list_executions(&format!("status={s}&limit=1000")).await.ok()?.items.len();
    }
    Some(n)
}

/// 7. A soak: 1,000 executions while a worker is killed every 1.5 s and replaced.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soak_with_workers_killed_and_replaced() {
    const N: usize = 1000;
    let c = Cluster::start(TestDb::sqlite(), &[]);
    let conc = [("ATTUNE__WORKER__CONCURRENCY", "8")];
    let mut workers: Vec<Proc> = (0..3).map(|i| c.worker(&format!("soak-{i}"), &conc)).collect();
    let started = Instant::now();
    let mut ids = Vec::with_capacity(N);
    for _ in 0..N {
        ids.push(c.submit("core.sleep", json!({"seconds": 0.2}), Some(3)).await.id);
    }
    let bound = Duration::from_secs(120);
    let mut kills = 0;
    let mut next = 3;
    loop {
        let open = open_count(&c.client).await.unwrap_or(usize::MAX);
        if open == 0 {
            break;
        }
        assert!(started.elapsed() < bound, "{open} executions still open after {bound:?}");
        let mut victim = workers.remove(0);
        victim.signal(Signal::SIGKILL);
        victim.wait_exit(Duration::from_secs(5));
        kills += 1;
        workers.push(c.worker(&format!("soak-{next}"), &conc));
        next += 1;
        let until = Instant::now() + Duration::from_millis(1500);
        wait_for("the next kill or the end", Duration::from_secs(3), || async {
            (Instant::now() >= until || open_count(&c.client).await == Some(0)).then_some(())
        })
        .await;
    }
    let elapsed = started.elapsed();
    let (mut succeeded, mut abandoned, mut other, mut retried) = (0, 0, 0, 0);
    for id in &ids {
        let e = c.get(*id).await;
        assert!(e.status.is_terminal(), "{e:?}");
        let wins = e.attempts.iter().filter(|a| a.status == ExecutionStatus::Succeeded).count();
        let recorded = e.history.iter().filter(|h| h.to == ExecutionStatus::Succeeded).count();
        assert!(wins <= 1 && recorded <= 1, "succeeded twice: {e:?}");
        // Attempts of one execution never overlap: each ended before the next started.
        for pair in e.attempts.windows(2) {
            let end = pair[0].finished_at.expect("an earlier attempt has ended");
            assert!(end <= pair[1].started_at, "overlapping attempts: {:?}", e.attempts);
        }
        if e.attempts.len() > 1 {
            retried += 1;
        }
        match e.status {
            ExecutionStatus::Succeeded => succeeded += 1,
            ExecutionStatus::Abandoned => abandoned += 1,
            _ => other += 1,
        }
    }
    println!(
        "soak: {N} executions, {kills} workers killed, all terminal in {elapsed:.1?}: \
         {succeeded} succeeded, {abandoned} abandoned, {other} other, {retried} needed a retry"
    );
    assert_eq!(succeeded + abandoned + other, N);
    assert_eq!(other, 0, "only successes or abandonment after 3 lost attempts");
    assert!(kills >= 2, "the soak killed workers while work was running");
}

/// 8. Bad configuration is refused with the key named, before anything starts.
#[test]
fn bad_configuration_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("bad.yaml");
    std::fs::write(&f, "worker:\n  heartbeat_intervl: 1s\n").unwrap();
    let fs = f.display().to_string();
    let out = attune_testkit::run_cli(BIN, &["--config", &fs, "server", "--listen", "127.0.0.1:0"]);
    assert_eq!(out.code, 2, "{out:?}");
    assert!(out.stderr.contains("heartbeat_intervl"), "{}", out.stderr);
    std::fs::write(&f, "executor:\n  scheduled_timeout: soon\n").unwrap();
    let out = attune_testkit::run_cli(BIN, &["--config", &fs, "worker"]);
    assert_eq!(out.code, 2, "{out:?}");
    assert!(out.stderr.contains("invalid duration"), "{}", out.stderr);
    let out = attune_testkit::run_cli(BIN, &["--config", "/nonexistent/attune.yaml", "server"]);
    assert_eq!(out.code, 2, "{out:?}");
    assert!(out.stderr.contains("/nonexistent/attune.yaml"), "{}", out.stderr);
    let out = attune_testkit::run_cli(BIN, &["server", "--database-url", "mysql://x"]);
    assert_ne!(out.code, 0);
    assert!(out.stderr.contains("unsupported URL scheme"), "{}", out.stderr);
}

fn gone(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => {
            stat.rsplit_once(')').map(|(_, rest)| rest.trim_start().starts_with('Z')).unwrap_or(false)
        }
    }
}

async fn pid_from(file: &std::path::Path) -> i32 {
    wait_for("the action's pid file", Duration::from_secs(10), || async {
        std::fs::read_to_string(file).ok().and_then(|s| s.trim().parse().ok())
    })
    .await
}

/// Cancel of a running execution reaches the worker with its next heartbeat; the process group dies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_stops_a_running_action() {
    let c = Cluster::start(TestDb::sqlite(), &[]);
    let _w = c.worker("w1", &[]);
    let dir = tempfile::tempdir().unwrap();
    let pidfile = dir.path().join("pid");
    let cmd = format!("sleep 300 & echo $! > {}; wait", pidfile.display());
    let e = c.submit("core.local", json!({ "cmd": cmd }), None).await;
    let pid = pid_from(&pidfile).await;
    let out = common::cli(&c.url, &["execution", "cancel", &e.id.to_string(), "-o", "json"]);
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(out.json()["status"], "canceling");
    let done = c.wait_status(e.id, |e| e.status.is_terminal(), "canceled", Duration::from_secs(10)).await;
    assert_eq!(done.status, ExecutionStatus::Canceled);
    wait_for("the action's process to be gone", Duration::from_secs(10), || async {
        gone(pid).then_some(())
    })
    .await;
}

/// A second signal stops the worker at once, and the actions it was running with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_signal_stops_at_once() {
    let c = Cluster::start(TestDb::sqlite(), &[]);
    let mut w = c.worker("w1", &[]);
    let dir = tempfile::tempdir().unwrap();
    let pidfile = dir.path().join("pid");
    let cmd = format!("sleep 300 & echo $! > {}; wait", pidfile.display());
    c.submit("core.local", json!({ "cmd": cmd }), Some(1)).await;
    let pid = pid_from(&pidfile).await;
    w.signal(Signal::SIGTERM);
    w.wait_line(Duration::from_secs(10), |l| l.contains("draining").then_some(()));
    w.signal(Signal::SIGTERM);
    let status = w.wait_exit(Duration::from_secs(5));
    assert_eq!(status.code(), Some(130), "{status:?}");
    wait_for("the action's process to be gone", Duration::from_secs(10), || async {
        gone(pid).then_some(())
    })
    .await;
}

/// Issue 11's forged and impersonating workers, against a real server and a real worker: a worker
/// cannot register without an enrollment token, and an enrolled one cannot poll, report, drain or
/// deregister as another, nor complete another's task under its own name.
async fn forged_workers_get_nothing(db: TestDb) {
    let c = Cluster::start(db, &[]);
    let _real = c.worker("real", &[]);
    let url = c.url.as_str();
    let admin = common::tokens(url).admin;
    let body = r#"{"name":"forged","host":"h","runtimes":["builtin"],"concurrency":1,"version":"t"}"#;
    for (token, want) in [(None, 401), (Some("attune_made_up"), 401), (Some(admin.as_str()), 403)] {
        let (status, reply) = common::request(url, "POST", "/api/v1/worker/register", token, body);
        assert_eq!(status, want, "register with {token:?}: {reply}");
    }
    let workers = c.client.list_workers(true).await.unwrap();
    assert!(workers.iter().all(|w| w.name != "forged"), "{workers:?}");
    let real_id = workers.iter().find(|w| w.name == "real").unwrap().id;

    let e = c.submit("core.sleep", json!({"seconds": 2}), None).await;
    c.wait_status(e.id, |e| e.status == ExecutionStatus::Running, "running", Duration::from_secs(10)).await;
    let (forged_id, credential) = common::register(url, "enrolled-but-not-real");
    let report =
        json!({"lease_token": "attune_guessed", "status": "succeeded", "stdout": "forged"}).to_string();
    let as_real = |what: &str| format!("/api/v1/worker/{real_id}/{what}");
    let attempts = [
        (as_real("poll"), r#"{"max_tasks": 1, "wait_ms": 0}"#.to_owned(), 403),
        (as_real("heartbeat"), r#"{"leases": []}"#.to_owned(), 403),
        (as_real(&format!("executions/{}/complete", e.id)), report.clone(), 403),
        (as_real(&format!("executions/{}/release", e.id)), r#"{"lease_token": "x"}"#.to_owned(), 403),
        (as_real("drain"), String::new(), 403),
        (as_real("deregister"), String::new(), 403),
        (format!("/api/v1/worker/{forged_id}/executions/{}/complete", e.id), report, 409),
    ];
    for (path, body, want) in attempts {
        let (status, reply) = common::request(url, "POST", &path, Some(&credential), &body);
        assert_eq!(status, want, "{path}: {reply}");
    }
    let now = c.get(e.id).await;
    assert_eq!((now.status, now.worker.as_deref()), (ExecutionStatus::Running, Some("real")), "{now:?}");

    let done = c.wait_status(e.id, |e| e.status.is_terminal(), "terminal", Duration::from_secs(30)).await;
    assert_eq!(done.status, ExecutionStatus::Succeeded, "{done:?}");
    assert_eq!(done.worker.as_deref(), Some("real"));
    assert!(!done.stdout.contains("forged"), "{done:?}");
    assert_eq!(c.get(e.id).await.attempts.len(), 1);
    assert_eq!(c.worker_status("real").await, Some(WorkerStatus::Active), "not drained, not deregistered");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_workers_get_nothing_on_sqlite() {
    forged_workers_get_nothing(TestDb::sqlite()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_workers_get_nothing_on_postgres() {
    forged_workers_get_nothing(TestDb::postgres().await).await;
}

/// Issue 12: the server is killed with SIGKILL right after accepting a burst of webhook events;
/// once it is back, every event has exactly one enforcement from the one rule that matches it,
/// and exactly one execution exists per event.
async fn events_survive_a_server_kill(db: TestDb) {
    let mut c = Cluster::start(db, &[]);
    let n = 150;
    let mut set = tokio::task::JoinSet::new();
    for k in 0..6 {
        let (url, token) = (c.url.clone(), common::tokens(&c.url).admin);
        set.spawn(async move {
            let http = reqwest::Client::new();
            let mut ids = Vec::new();
            for i in (k..n).step_by(6) {
                let r = http
                    .post(format!("{url}/api/v1/webhooks/alerts"))
                    .bearer_auth(&token)
                    .json(&json!({"status": "failed", "service": format!("svc-{i}")}))
                    .send()
                    .await
                    .unwrap();
                assert_eq!(r.status().as_u16(), 202);
                ids.push(r.json::<Value>().await.unwrap()["id"].as_str().unwrap().to_owned());
            }
            ids
        });
    }
    let mut ids = Vec::new();
    while let Some(r) = set.join_next().await {
        ids.extend(r.unwrap());
    }
    c.restart_server();
    c.client = common::client(&c.url);
    let http = reqwest::Client::new();
    let token = common::tokens(&c.url).admin;
    let mut executions = std::collections::BTreeSet::new();
    for id in &ids {
        let d: Value = wait_for("the event processed after the restart", Duration::from_secs(30), || async {
            let r = http
                .get(format!("{}/api/v1/trigger-events/{id}", c.url))
                .bearer_auth(&token)
                .send()
                .await
                .ok()?;
            let v: Value = r.json().await.ok()?;
            (!v["processed_at"].is_null()).then_some(v)
        })
        .await;
        let enf = d["enforcements"].as_array().unwrap();
        assert_eq!(enf.len(), 1, "{d}");
        assert_eq!(enf[0]["outcome"], "matched", "{d}");
        executions.insert(enf[0]["execution_id"].as_str().unwrap().to_owned());
    }
    assert_eq!(executions.len(), n, "one execution per event");
    let all = c.client.list_executions("limit=1000").await.unwrap().items;
    assert_eq!(all.len(), n, "and no other");
    assert!(all.iter().all(|e| executions.contains(&e.id.to_string())));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_survive_a_server_kill_on_sqlite() {
    events_survive_a_server_kill(TestDb::sqlite()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_survive_a_server_kill_on_postgres() {
    events_survive_a_server_kill(TestDb::postgres().await).await;
}

/// A pack `sense` of the sensor tests: `ticker` writes a tick with its pid every 200 ms, after a
/// line that is not JSON and an event of a type it may not emit; `quitter` (disabled) says why on
/// stderr and exits at once.
fn sense_pack(root: &std::path::Path) {
    let p = root.join("sense");
    for d in ["triggers", "sensors"] {
        std::fs::create_dir_all(p.join(d)).unwrap();
    }
    let files = [
        ("pack.yaml", "ref: sense\n"),
        (
            "triggers/tick.yaml",
            "ref: tick\npayload:\n  type: object\n  required: [pid]\n  properties:\n    pid: { type: integer }\n",
        ),
        ("sensors/ticker.yaml", "ref: ticker\nruntime: shell\nentry_point: ticker.sh\ntrigger_types: [sense.tick]\n"),
        (
            "sensors/ticker.sh",
            "echo 'not json'\necho '{\"trigger\": \"sense.other\", \"payload\": {}}'\n\
             while true; do\n  echo \"{\\\"trigger\\\": \\\"sense.tick\\\", \\\"payload\\\": {\\\"pid\\\": $$}}\"\n  sleep 0.2\ndone\n",
        ),
        (
            "sensors/quitter.yaml",
            "ref: quitter\nenabled: false\nruntime: shell\nentry_point: quitter.sh\ntrigger_types: [sense.tick]\n",
        ),
        ("sensors/quitter.sh", "echo 'cannot reach the thing' >&2\nexit 3\n"),
    ];
    for (f, text) in files {
        std::fs::write(p.join(f), text).unwrap();
    }
}

fn with_sense_pack(db: TestDb) -> (Cluster, tempfile::TempDir) {
    let packs = tempfile::tempdir().unwrap();
    sense_pack(packs.path());
    let dirs = format!("[{}, {}]", common::packs_dir(), packs.path().display());
    (Cluster::start(db, &[("ATTUNE__PACKS__DIRS", &dirs)]), packs)
}

/// The pid in the newest tick whose pid is not `not`.
async fn ticking_pid(c: &Cluster, not: Option<i64>) -> i64 {
    wait_for("a tick from the sensor", Duration::from_secs(15), || async {
        let e = c.client.list_trigger_events("trigger=sense.tick&limit=1").await.ok()?;
        let pid = e.first()?.payload["pid"].as_i64()?;
        (Some(pid) != not).then_some(pid)
    })
    .await
}

/// Issue 12: kill -9 of the worker running a sensor → the sensor runs on another worker within
/// the staleness window (3 heartbeats), and the orphaned program dies at its next write; a
/// draining worker stops its sensor and gives it back at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sensor_moves_when_its_worker_dies_or_drains() {
    use attune_core::sensors::SensorStatus;
    let (c, _packs) = with_sense_pack(TestDb::sqlite());
    let mut workers = vec![("w1", c.worker("w1", &[])), ("w2", c.worker("w2", &[]))];
    let first = wait_for("the ticker running, its bad lines counted", Duration::from_secs(15), || async {
        let s = c.client.get_sensor("sense.ticker").await.ok()?;
        (s.status == SensorStatus::Running && s.events >= 2 && s.malformed >= 2).then_some(s)
    })
    .await;
    assert_eq!((first.restarts, first.malformed), (0, 2), "{first:?}");
    let old_pid = ticking_pid(&c, None).await;
    let on = first.worker_name.clone().unwrap();
    let i = workers.iter().position(|(n, _)| *n == on).unwrap();
    let (_, mut victim) = workers.remove(i);
    victim.signal(Signal::SIGKILL);
    victim.wait_exit(Duration::from_secs(5));
    let killed = Instant::now();
    let moved = wait_for("the ticker running elsewhere", Duration::from_secs(15), || async {
        let s = c.client.get_sensor("sense.ticker").await.ok()?;
        (s.status == SensorStatus::Running && s.worker_name.as_deref() != Some(&on)).then_some(s)
    })
    .await;
    let took = killed.elapsed();
    // Staleness is 3 heartbeats (3 s); the other worker asks at its next heartbeat (1 s).
    assert!(took < Duration::from_millis(5500), "moved after {took:?}");
    assert_eq!(moved.restarts, 1);
    let why = moved.last_error.clone().unwrap();
    assert!(why.contains(&format!("worker {on} stopped renewing")), "{why}");
    println!("sensor moved {took:?} after its worker was killed");
    let new_pid = ticking_pid(&c, Some(old_pid)).await;
    wait_for("the orphaned sensor program gone", Duration::from_secs(10), || async {
        gone(old_pid as i32).then_some(())
    })
    .await;

    // A drain gives it back at once: the next worker takes it, with no lease left to lapse.
    let (survivor, mut holder) = workers.remove(0);
    let w3 = c.worker("w3", &[]);
    holder.signal(Signal::SIGTERM);
    let drained = holder.wait_exit(Duration::from_secs(15));
    assert!(drained.success(), "{drained:?}");
    assert!(gone(new_pid as i32), "the drained worker stopped its sensor");
    let last = wait_for("the ticker on w3", Duration::from_secs(15), || async {
        let s = c.client.get_sensor("sense.ticker").await.ok()?;
        (s.status == SensorStatus::Running && s.worker_name.as_deref() == Some("w3")).then_some(s)
    })
    .await;
    assert_eq!(last.restarts, 2);
    assert_eq!(last.last_error, moved.last_error, "no lease lapsed: {survivor} gave it back");
    drop(w3);
}

/// Issue 12: a sensor that exits is started again after a backoff that doubles (1 s, 2 s, 4 s…),
/// shown with its restarts and the end of its stderr, and counted in the metrics.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exiting_sensor_is_restarted_with_backoff() {
    use attune_core::sensors::SensorStatus;
    let (c, _packs) = with_sense_pack(TestDb::postgres().await);
    let _w = c.worker("w1", &[]);
    let out = common::cli(&c.url, &["sensor", "disable", "sense.ticker"]);
    assert_eq!(out.code, 0, "{out:?}");
    let out = common::cli(&c.url, &["sensor", "enable", "sense.quitter"]);
    assert_eq!(out.code, 0, "{out:?}");
    let s = wait_for("the quitter in its third backoff", Duration::from_secs(20), || async {
        let s = c.client.get_sensor("sense.quitter").await.ok()?;
        (s.status == SensorStatus::Backoff && s.restarts == 2).then_some(s)
    })
    .await;
    let why = s.last_error.clone().unwrap();
    assert!(why.contains("exited with code 3") && why.contains("cannot reach the thing"), "{why}");
    let wait = s.retry_at.unwrap().millis() - s.last_error_at.unwrap().millis();
    assert_eq!(wait, 4000, "third exit in a row: 4 s");
    let out = common::cli(&c.url, &["sensor", "list"]);
    assert!(
        out.stdout.contains("backoff (retry in") && out.stdout.contains("exited with code 3"),
        "{}",
        out.stdout
    );
    let (_, metrics) = common::request(&c.url, "GET", "/metrics", Some(&common::tokens(&c.url).admin), "");
    assert!(metrics.contains("attune_sensor_restarts_total{sensor=\"sense.quitter\"} 2"), "{metrics}");
    let ticker = c.client.get_sensor("sense.ticker").await.unwrap();
    assert_eq!((ticker.status, ticker.events), (SensorStatus::Disabled, 0));
}

/// `attune worker --label …` against the server at `url` (the cluster's, or a replica's), once
/// registered.
fn labelled_worker(c: &Cluster, url: &str, name: &str, labels: &[&str]) -> Proc {
    let mut env = c.env.clone();
    env.push(("ATTUNE__WORKER__TOKEN".into(), common::tokens(url).enroll));
    let mut args = vec!["--server", url, "worker", "--name", name];
    for l in labels {
        args.extend(["--label", l]);
    }
    let data = tempfile::tempdir().unwrap();
    env.push(("ATTUNE__DATA_DIR".into(), data.path().display().to_string()));
    let mut w = common::spawn(name, &args, &env);
    w.keep(data);
    w.wait_line(Duration::from_secs(30), |l| l.contains("worker registered").then_some(()));
    w
}

/// Issue 16: a label-routed execution runs only on a worker with the labels; one no worker can
/// take says why it waits and fails with the seed's error after its own schedule-to-start timeout
/// (2 s) while the server's is 300 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn label_routing_and_per_execution_schedule_timeouts() {
    let c = Cluster::start(TestDb::sqlite(), &[("ATTUNE__EXECUTOR__TIMEOUT_CHECK_INTERVAL", "250ms")]);
    let _eu = labelled_worker(&c, &c.url, "w-eu", &["region=eu", "tier=gold"]);
    let _us = labelled_worker(&c, &c.url, "w-us", &["region=us"]);
    let out = common::cli(&c.url, &["worker", "--label", "bad name=1"]);
    assert_eq!(out.code, 2, "{out:?}");
    assert!(out.stderr.contains("--label"), "{}", out.stderr);
    let routed = CreateExecution {
        action_ref: "core.noop".into(),
        worker_selector: Some(json!({"region": "eu"})),
        ..Default::default()
    };
    let mut ids = Vec::new();
    for _ in 0..12 {
        ids.push(c.client.create_execution(&routed).await.unwrap().id);
    }
    for id in ids {
        let e = c.wait_status(id, |e| e.status.is_terminal(), "done", Duration::from_secs(20)).await;
        assert_eq!((e.status, e.worker.as_deref()), (ExecutionStatus::Succeeded, Some("w-eu")));
    }
    // By the CLI: `attune run --on`.
    let out = common::cli(&c.url, &["run", "core.noop", "--on", "region=us", "--wait", "-o", "json"]);
    assert_eq!((out.code, out.json()["worker"].as_str()), (0, Some("w-us")), "{out:?}");

    // Nobody is on Mars.
    let t0 = Instant::now();
    let nowhere = CreateExecution {
        action_ref: "core.noop".into(),
        worker_selector: Some(json!({"region": "mars"})),
        scheduled_timeout_seconds: Some(2),
        ..Default::default()
    };
    let e = c.client.create_execution(&nowhere).await.unwrap();
    let out = common::cli(&c.url, &["execution", "get", &e.id.to_string()]);
    assert!(out.stdout.contains("no active builtin worker has the labels region=mars"), "{}", out.stdout);
    let done = c.wait_status(e.id, |e| e.status.is_terminal(), "failed", Duration::from_secs(10)).await;
    let took = t0.elapsed();
    assert!(took >= Duration::from_secs(2) && took < Duration::from_secs(5), "failed after {took:?}");
    let err = done.error.unwrap();
    assert_eq!(done.status, ExecutionStatus::Failed);
    assert_eq!(
        (err["failed_by"].as_str(), err["timeout_seconds"].as_u64()),
        (Some("execution_timeout_monitor"), Some(2))
    );
    // Bad selectors are refused at the door.
    let (s, body) = common::request(
        &c.url,
        "POST",
        "/api/v1/executions",
        Some(&common::tokens(&c.url).admin),
        r#"{"action_ref": "core.noop", "worker_selector": {"region": ["eu"]}}"#,
    );
    assert_eq!(s, 422, "{body}");
    assert!(body.contains("worker_selector") && body.contains("region"), "{body}");
}

/// The running intervals of `e` from its history: (from, to) for each time it ran.
fn running_intervals(e: &Execution) -> Vec<(i64, i64)> {
    let mut out = Vec::new();
    let mut since = None;
    for h in &e.history {
        match (h.to, since) {
            (ExecutionStatus::Running, None) => since = Some(h.at.millis()),
            (ExecutionStatus::Running | ExecutionStatus::Canceling, Some(_)) => {}
            (_, Some(s)) => {
                out.push((s, h.at.millis()));
                since = None;
            }
            _ => {}
        }
    }
    assert!(since.is_none(), "{} still running", e.id);
    out
}

/// Issue 16: `examples.deploy` has `concurrency: {limit: 1, key: "{{ parameters.environment }}"}`.
/// 20 submissions over 2 environments on 3 workers, one worker killed -9 while it deploys: all
/// succeed, and the history shows never two deploys running at once to one environment — the
/// killed worker's slot is held until its lease is resolved, not freed when the worker dies.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_concurrency_limit_holds_per_key_through_a_worker_kill() {
    let c = Cluster::start(TestDb::sqlite(), &[]);
    let mut workers: Vec<(String, Proc)> =
        ["w1", "w2", "w3"].iter().map(|n| (n.to_string(), c.worker(n, &[]))).collect();
    let mut ids = Vec::new();
    for i in 0..20 {
        let env = if i % 2 == 0 { "staging" } else { "prod" };
        let req = CreateExecution {
            action_ref: "examples.deploy".into(),
            parameters: Some(json!({"environment": env, "version": format!("1.{i}"), "seconds": 0.3})),
            max_attempts: Some(2),
            ..Default::default()
        };
        ids.push(c.client.create_execution(&req).await.unwrap().id);
    }
    // Kill whichever worker runs a deploy now.
    let running =
        c.wait_status(ids[4], |e| running_on(e).is_some(), "a deploy running", Duration::from_secs(20)).await;
    let victim = running.worker.clone().unwrap();
    let i = workers.iter().position(|(n, _)| *n == victim).unwrap();
    let (_, mut w) = workers.remove(i);
    w.signal(Signal::SIGKILL);
    w.wait_exit(Duration::from_secs(5));
    let mut by_env: std::collections::BTreeMap<String, Vec<(i64, i64, Uuid)>> = Default::default();
    for id in &ids {
        let done = c.wait_status(*id, |e| e.status.is_terminal(), "deployed", Duration::from_secs(60)).await;
        assert_eq!(done.status, ExecutionStatus::Succeeded, "{done:?}");
        let full = c.get(*id).await;
        let env = full.parameters["environment"].as_str().unwrap().to_owned();
        for (from, to) in running_intervals(&full) {
            by_env.entry(env.clone()).or_default().push((from, to, *id));
        }
    }
    assert!(c.get(running.id).await.attempts.len() == 2, "the killed deploy was run again");
    never_two_at_once(by_env);
}

/// For each key, no two running intervals overlap.
fn never_two_at_once(by_key: std::collections::BTreeMap<String, Vec<(i64, i64, Uuid)>>) {
    for (key, mut spans) in by_key {
        spans.sort();
        for pair in spans.windows(2) {
            let ((_, end, a), (start, _, b)) = (pair[0], pair[1]);
            assert!(start >= end, "{key}: {b} started at {start} while {a} ran until {end}");
        }
    }
}

/// Issue 16: the same limit across two replicas on one PostgreSQL database, each with its own
/// workers: the claims of both replicas share the per-key slot (advisory locks in the claim), so
/// the history still never shows two deploys to one environment at once. Half of each
/// environment's deploys may run only on replica A's workers and half only on B's (labels), so
/// both replicas claim under every key; each is submitted to the other replica.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_concurrency_limit_holds_across_two_replicas() {
    let c = Cluster::start(TestDb::postgres().await, &[]);
    let (_replica, url_b) = common::server("replica", "127.0.0.1:0", &c.db_url, &c.env);
    common::remember_tokens_as(&url_b, common::tokens(&c.url));
    let client_b = common::client(&url_b);
    let _a = [labelled_worker(&c, &c.url, "a1", &["side=a"]), labelled_worker(&c, &c.url, "a2", &["side=a"])];
    let _b = [labelled_worker(&c, &url_b, "b1", &["side=b"]), labelled_worker(&c, &url_b, "b2", &["side=b"])];
    let mut ids = Vec::new();
    for i in 0..20 {
        let env = if i % 2 == 0 { "staging" } else { "prod" };
        let side = if i % 4 < 2 { "a" } else { "b" };
        let req = CreateExecution {
            action_ref: "examples.deploy".into(),
            parameters: Some(json!({"environment": env, "version": format!("2.{i}"), "seconds": 0.2})),
            worker_selector: Some(json!({"side": side})),
            ..Default::default()
        };
        let client = if side == "a" { &client_b } else { &c.client };
        ids.push(client.create_execution(&req).await.unwrap().id);
    }
    let mut by_env: std::collections::BTreeMap<String, Vec<(i64, i64, Uuid)>> = Default::default();
    let mut workers = std::collections::BTreeSet::new();
    for id in &ids {
        let done = c.wait_status(*id, |e| e.status.is_terminal(), "deployed", Duration::from_secs(60)).await;
        assert_eq!(done.status, ExecutionStatus::Succeeded, "{done:?}");
        let full = c.get(*id).await;
        workers.insert(full.worker.clone().unwrap_or_default());
        let env = full.parameters["environment"].as_str().unwrap().to_owned();
        for (from, to) in running_intervals(&full) {
            by_env.entry(env.clone()).or_default().push((from, to, *id));
        }
    }
    assert!(
        workers.iter().any(|w| w.starts_with('a')) && workers.iter().any(|w| w.starts_with('b')),
        "{workers:?}"
    );
    never_two_at_once(by_env);
}

/// Issue 16: an action limited to 5 starts a second (burst 5): 50 submissions on 3 workers take
/// at least 9 s from the first start to the last — 5 at once, then 5 a second — and all succeed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rate_limit_spaces_the_starts() {
    let packs = tempfile::tempdir().unwrap();
    let p = packs.path().join("rated");
    std::fs::create_dir_all(p.join("actions")).unwrap();
    std::fs::write(p.join("pack.yaml"), "ref: rated\n").unwrap();
    std::fs::write(
        p.join("actions/call.yaml"),
        "ref: call\nruntime: builtin\nentry_point: noop\nrate_limit: { per_second: 5, burst: 5 }\n",
    )
    .unwrap();
    let dirs = format!("[{}, {}]", common::packs_dir(), packs.path().display());
    let c = Cluster::start(TestDb::sqlite(), &[("ATTUNE__PACKS__DIRS", &dirs)]);
    let _workers: Vec<Proc> = ["w1", "w2", "w3"].iter().map(|n| c.worker(n, &[])).collect();
    let t0 = Instant::now();
    let req = CreateExecution { action_ref: "rated.call".into(), ..Default::default() };
    let mut ids = Vec::new();
    for _ in 0..50 {
        ids.push(c.client.create_execution(&req).await.unwrap().id);
    }
    let mut starts = Vec::new();
    for id in ids {
        let e = c.wait_status(id, |e| e.status.is_terminal(), "done", Duration::from_secs(40)).await;
        assert_eq!(e.status, ExecutionStatus::Succeeded);
        starts.push(e.started_at.unwrap().millis());
    }
    starts.sort();
    let spread = starts[49] - starts[0];
    assert!(spread >= 8_900, "50 starts within {spread} ms");
    for w in starts.windows(6) {
        // Any 6 starts span at least 0.2 s: never more than the burst at once.
        assert!(w[5] - w[0] >= 190, "6 starts within {} ms", w[5] - w[0]);
    }
    println!("50 starts at 5/s took {:?} ({spread} ms first to last)", t0.elapsed());
}
