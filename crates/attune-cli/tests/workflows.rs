//! Workflows and inquiries end to end, with real server and worker processes (issue 13): the
//! example as a new user runs it, StackStorm's reported failure modes, cancel mid-fan-out, a
//! server killed with SIGKILL in the middle of a 200-item `with`, and two replicas on one workflow.

use std::{collections::BTreeMap, time::Duration};

use attune_client::Client;
use attune_core::{Execution, ExecutionStatus};
use attune_testkit::{wait_for, Proc, TestDb};
use attune_wire::CreateExecution;
use nix::sys::signal::Signal;
use serde_json::{json, Value};
use uuid::Uuid;

mod common;

/// Each scenario once on SQLite and once on PostgreSQL: `<test>_on_sqlite`, `<test>_on_postgres`.
macro_rules! both {
    ($($test:ident => $scenario:ident),* $(,)?) => {
        $(
            mod $test {
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn on_sqlite() {
                    super::$scenario(attune_testkit::TestDb::sqlite()).await;
                }

                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn on_postgres() {
                    super::$scenario(attune_testkit::TestDb::postgres().await).await;
                }
            }
        )*
    };
}

both!(
    the_example_runs_as_a_user_would => the_example_runs_as_a_user_would,
    stackstorm_failure_modes => failure_modes,
    server_killed_mid_with => server_killed_mid_with,
);

/// A pack of workflows for these tests, next to the repository's packs.
fn test_pack() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("wft");
    std::fs::create_dir_all(p.join("actions/workflows")).unwrap();
    let w = |name: &str, text: &str| std::fs::write(p.join(name), text).unwrap();
    w("pack.yaml", "ref: wft\nversion: 0.1.0\ndescription: workflow tests\n");
    let action = |name: &str, params: &str| {
        w(
            &format!("actions/{name}.yaml"),
            &format!(
                "ref: {name}\nruntime: workflow\nentry_point: workflows/{name}.yaml\nparameters:\n  type: object\n  properties: {params}\n"
            ),
        )
    };
    // `with` over a list; each item fails its first `item` attempts and is retried twice.
    action("items", "{ items: {type: array} }");
    w(
        "actions/workflows/items.yaml",
        r#"version: 1
tasks:
  each:
    with: { items: "{{ ctx.items }}", concurrency: 4 }
    action: examples.flaky
    input: { failures: "{{ item() }}" }
    retry: { count: 2 }
    next:
      - publish: { n: "{{ result() | length }}" }
        do: [after]
  after:
    action: core.noop
output: { n: "{{ ctx.n }}" }
"#,
    );
    // One item fails (no retry): the failure transition handles it.
    action("one_fails", "{}");
    w(
        "actions/workflows/one_fails.yaml",
        r#"version: 1
tasks:
  each:
    with: { items: [ok, bad, ok] }
    action: core.local
    input: { cmd: "test {{ item() }} = ok" }
    next:
      - when: "{{ failed() }}"
        publish: { handled: true }
        do: [cleanup]
  cleanup:
    action: core.echo
    input: { message: cleaning up }
output: { handled: "{{ ctx.handled }}" }
"#,
    );
    // An inquiry nobody answers.
    action("unanswered", "{}");
    w(
        "actions/workflows/unanswered.yaml",
        r#"version: 1
tasks:
  ask:
    action: core.ask
    input: { prompt: anyone?, schema: { type: object }, timeout: 1 }
    next:
      - when: "{{ failed() }}"
        publish: { why: "{{ result().error }}" }
output: { why: "{{ ctx.why }}" }
"#,
    );
    // A result near the output cap passes through publish.
    w(
        "actions/big.yaml",
        "ref: big\nruntime: shell\nentry_point: big.sh\noutput_format: json\nparameters: {type: object}\n",
    );
    w(
        "actions/big.sh",
        "#!/bin/sh\nprintf '{\"blob\": \"'\nhead -c 700000 /dev/zero | tr '\\0' 'x'\nprintf '\"}\\n'\n",
    );
    action("big_flow", "{}");
    w(
        "actions/workflows/big_flow.yaml",
        r#"version: 1
tasks:
  make:
    action: wft.big
    next:
      - publish: { blob: "{{ result().blob }}" }
        do: [use]
  use:
    action: core.noop
output: { len: "{{ ctx.blob | length }}" }
"#,
    );
    // A slow fan-out, to cancel, and a fast one, to kill the server under.
    action("fanout", "{ n: {type: integer}, seconds: {type: number}, concurrency: {type: integer} }");
    w(
        "actions/workflows/fanout.yaml",
        r#"version: 1
tasks:
  each:
    with: { items: "{{ range(ctx.n) | list }}", concurrency: "{{ ctx.concurrency }}" }
    action: core.sleep
    input: { seconds: "{{ ctx.seconds }}" }
    next:
      - publish: { done: "{{ result() | length }}" }
output: { done: "{{ ctx.done }}" }
"#,
    );
    dir
}

struct Cluster {
    servers: Vec<(Proc, String)>,
    client: Client,
    env: Vec<(String, String)>,
    db: TestDb,
    _pack: tempfile::TempDir,
    workers: Vec<Proc>,
}

impl Cluster {
    fn start(db: TestDb, workers: usize) -> Cluster {
        let pack = test_pack();
        let mut env = common::fast_env(&[]);
        env.retain(|(k, _)| k != "ATTUNE__PACKS__DIRS");
        env.push((
            "ATTUNE__PACKS__DIRS".into(),
            format!("[{}, {}]", common::packs_dir(), pack.path().display()),
        ));
        let server = common::server("server", "127.0.0.1:0", &db.url, &env);
        assert!(!server.0.output().contains("not loaded"), "{}", server.0.output());
        let client = common::client(&server.1);
        let mut c = Cluster { client, servers: vec![server], env, db, _pack: pack, workers: Vec::new() };
        for i in 0..workers {
            let w = common::worker(&format!("w{i}"), &c.servers[0].1, &c.worker_env());
            c.workers.push(w);
        }
        c
    }

    fn url(&self) -> &str {
        &self.servers[0].1
    }

    fn worker_env(&self) -> Vec<(String, String)> {
        let mut env = self.env.clone();
        env.push(("ATTUNE__WORKER__CONCURRENCY".into(), "16".into()));
        env
    }

    async fn run(&self, action: &str, parameters: Value) -> Execution {
        let req =
            CreateExecution { action_ref: action.into(), parameters: Some(parameters), ..Default::default() };
        self.client.create_execution(&req).await.unwrap()
    }

    async fn ended(&self, id: Uuid, timeout: Duration) -> Execution {
        wait_for("the workflow to end", timeout, || async {
            let e = self.client.get_execution(id).await.ok()?;
            e.status.is_terminal().then_some(e)
        })
        .await
    }

    async fn children(&self, id: Uuid) -> Vec<Execution> {
        self.client.execution_children(id).await.unwrap().items
    }

    /// Waits until at least `n` of the workflow's children are in `status` (exactly `n` if `exact`).
    async fn wait_children(&self, id: Uuid, status: ExecutionStatus, n: usize, exact: bool, what: &str) {
        wait_for(what, Duration::from_secs(60), || async {
            let kids = self.client.execution_children(id).await.ok()?.items;
            let count = kids.iter().filter(|k| k.status == status).count();
            (count == n || (!exact && count > n)).then_some(())
        })
        .await;
    }
}

fn keys(children: &[Execution]) -> Vec<String> {
    let mut k: Vec<String> = children.iter().filter_map(|c| c.child_key.clone()).collect();
    k.sort();
    k
}

/// The example as a new user runs it: `attune run --wait` shows the tree, stops at the
/// inquiry and says how to answer; `attune inquiry respond` lets it finish.
async fn the_example_runs_as_a_user_would(db: TestDb) {
    let c = Cluster::start(db, 1);
    let token = common::tokens(c.url()).admin;
    let mut run = common::spawn(
        "attune run",
        &["--server", c.url(), "--token", &token, "run", "examples.check_hosts", "count=4", "--wait"],
        &[],
    );
    let inquiry: String = run.wait_line(Duration::from_secs(60), |l| {
        l.split("attune inquiry respond ")
            .nth(1)
            .map(|rest| rest.split_whitespace().next().unwrap().to_owned())
    });
    let listed = common::cli(c.url(), &["inquiry", "list"]);
    assert!(
        listed.stdout.contains(&inquiry) && listed.stdout.contains("ok (boolean, required)"),
        "{listed:?}"
    );
    let wrong = common::cli(c.url(), &["inquiry", "respond", &inquiry, "ok=maybe"]);
    assert_eq!(wrong.code, 2, "a response that does not match the schema is refused: {wrong:?}");
    assert!(wrong.stderr.contains("ok"), "names the field: {wrong:?}");
    let ok = common::cli(c.url(), &["inquiry", "respond", &inquiry, "ok=true"]);
    assert_eq!(ok.code, 0, "{ok:?}");
    let status = run.wait_exit(Duration::from_secs(60));
    let out = run.output();
    assert!(status.success(), "{out}");
    for task in ["list_hosts/1", "check_each/1/3", "greet/1", "hello/1", "approve/1", "report/1"] {
        assert!(out.contains(task), "the tree shows {task}:\n{out}");
    }
    assert!(out.contains(r#"{"checked":4,"count":4}"#), "{out}");
    let list = common::cli(c.url(), &["execution", "list", "--parent", "", "-o", "json"]);
    assert_ne!(list.code, 0, "a bad --parent is refused");
}

/// StackStorm's reported failure modes, each its own check.
async fn failure_modes(db: TestDb) {
    let c = Cluster::start(db, 1);
    // st2 #4954: a `with` over an empty list proceeds.
    let e = c.run("wft.items", json!({"items": []})).await;
    let e = c.ended(e.id, Duration::from_secs(30)).await;
    assert_eq!((e.status, e.result.clone()), (ExecutionStatus::Succeeded, Some(json!({"n": 0}))), "{e:?}");
    assert_eq!(keys(&c.children(e.id).await), ["after/1"]);

    // orquesta #201: a retry re-runs only the items that failed.
    let e = c.run("wft.items", json!({"items": [0, 1, 0, 2]})).await;
    let e = c.ended(e.id, Duration::from_secs(60)).await;
    assert_eq!(e.status, ExecutionStatus::Succeeded, "{e:?}");
    let mut attempts = BTreeMap::new();
    for child in c.children(e.id).await {
        let full = c.client.get_execution(child.id).await.unwrap();
        attempts.insert(child.child_key.clone().unwrap(), full.attempts.len());
    }
    assert_eq!(
        attempts,
        BTreeMap::from([
            ("after/1".to_owned(), 1),
            ("each/1/0".to_owned(), 1),
            ("each/1/1".to_owned(), 2),
            ("each/1/2".to_owned(), 1),
            ("each/1/3".to_owned(), 3),
        ]),
        "only failed items ran again"
    );

    // st2 #4617: one failing item ends the workflow by its transitions, not left running.
    let e = c.run("wft.one_fails", json!({})).await;
    let e = c.ended(e.id, Duration::from_secs(30)).await;
    assert_eq!((e.status, e.result.clone()), (ExecutionStatus::Succeeded, Some(json!({"handled": true}))));

    // An inquiry that times out fails its task with that reason.
    let e = c.run("wft.unanswered", json!({})).await;
    let e = c.ended(e.id, Duration::from_secs(30)).await;
    assert_eq!(e.status, ExecutionStatus::Succeeded, "{e:?}");
    assert_eq!(e.result, Some(json!({"why": "no response within 1 seconds"})));
    let ask = c.children(e.id).await.pop().unwrap();
    assert_eq!(ask.status, ExecutionStatus::Timeout);

    // st2 #3600: a result near the output cap passes through publish.
    let e = c.run("wft.big_flow", json!({})).await;
    let e = c.ended(e.id, Duration::from_secs(30)).await;
    assert_eq!(
        (e.status, e.result.clone()),
        (ExecutionStatus::Succeeded, Some(json!({"len": 700000}))),
        "{e:?}"
    );
}

/// Cancel in the middle of a fan-out: the running items are canceled, no new item starts, the
/// workflow ends `canceled`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_mid_fan_out() {
    let c = Cluster::start(TestDb::sqlite(), 1);
    let e = c.run("wft.fanout", json!({"n": 20, "seconds": 30, "concurrency": 5})).await;
    c.wait_children(e.id, ExecutionStatus::Running, 5, true, "five items running").await;
    let canceled = common::cli(c.url(), &["execution", "cancel", &e.id.to_string()]);
    assert_eq!(canceled.code, 0, "{canceled:?}");
    let e = c.ended(e.id, Duration::from_secs(30)).await;
    assert_eq!(e.status, ExecutionStatus::Canceled, "{e:?}");
    let kids = c.children(e.id).await;
    assert_eq!(kids.len(), 5, "no item started after the cancel: {:?}", keys(&kids));
    assert!(kids.iter().all(|k| k.status == ExecutionStatus::Canceled), "{kids:?}");
}

/// kill -9 of the server in the middle of a 200-item `with`, then a restart: every item ran
/// exactly once and the workflow succeeds.
async fn server_killed_mid_with(db: TestDb) {
    let mut c = Cluster::start(db, 1);
    let e = c.run("wft.fanout", json!({"n": 200, "seconds": 0.02, "concurrency": 10})).await;
    c.wait_children(e.id, ExecutionStatus::Succeeded, 40, false, "some items done").await;
    let (mut server, url) = c.servers.remove(0);
    server.signal(Signal::SIGKILL);
    server.wait_exit(Duration::from_secs(10));
    let known = common::tokens(&url);
    let listen = url.trim_start_matches("http://").to_owned();
    let restarted = common::server("server (restarted)", &listen, &c.db.url, &c.env);
    common::remember_tokens_as(&url, known);
    c.servers.push(restarted);
    c.client = common::client(&url);
    let e = c.ended(e.id, Duration::from_secs(120)).await;
    assert_eq!(
        (e.status, e.result.clone()),
        (ExecutionStatus::Succeeded, Some(json!({"done": 200}))),
        "{e:?}"
    );
    let kids = c.children(e.id).await;
    let expected: Vec<String> = {
        let mut k: Vec<String> = (0..200).map(|i| format!("each/1/{i}")).collect();
        k.sort();
        k
    };
    assert_eq!(keys(&kids), expected, "every item once");
    assert!(kids.iter().all(|k| k.status == ExecutionStatus::Succeeded));
    let again: Vec<_> = kids.iter().filter(|k| k.attempt != 1).map(|k| (&k.child_key, k.attempt)).collect();
    assert!(again.is_empty(), "items ran more than once: {again:?}");
}

/// The engine is woken for a workflow when one of its task runs ends, and steps it without asking
/// the store what is due. A long `with` whose items end every few milliseconds must not put off
/// what only asking finds: another workflow's inquiry still times out on time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_inquiry_times_out_on_time_while_a_long_with_runs() {
    let c = Cluster::start(TestDb::sqlite(), 1);
    // 16 items at a time (the worker's slots), 50 ms each: items end every few milliseconds for
    // at least 2000 × 0.05 / 16 = 6.25 s.
    let fan = c.run("wft.fanout", json!({"n": 2000, "seconds": 0.05, "concurrency": 16})).await;
    c.wait_children(fan.id, ExecutionStatus::Succeeded, 20, false, "items ending").await;
    let asked = std::time::Instant::now();
    let e = c.run("wft.unanswered", json!({})).await;
    let e = c.ended(e.id, Duration::from_secs(30)).await;
    let took = asked.elapsed();
    let fan_now = c.client.get_execution(fan.id).await.unwrap();
    assert_eq!(fan_now.status, ExecutionStatus::Running, "the `with` still runs (else this proves nothing)");
    assert_eq!(e.result, Some(json!({"why": "no response within 1 seconds"})), "{e:?}");
    assert!(took < Duration::from_secs(4), "a 1 s inquiry timeout took {took:?} to end its workflow");
    let canceled = common::cli(c.url(), &["execution", "cancel", &fan.id.to_string()]);
    assert_eq!(canceled.code, 0, "{canceled:?}");
    assert_eq!(c.ended(fan.id, Duration::from_secs(30)).await.status, ExecutionStatus::Canceled);
}

/// Two replicas on one PostgreSQL database both drive the same workflow (each worker talks to
/// one of them): every step is taken once, every item runs once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_progress_one_workflow() {
    let mut c = Cluster::start(TestDb::postgres().await, 0);
    let second = common::server("replica", "127.0.0.1:0", &c.db.url, &c.env);
    common::remember_tokens_as(&second.1, common::tokens(c.url()));
    let env = c.worker_env();
    c.workers.push(common::worker("w-a", c.url(), &env));
    c.workers.push(common::worker("w-b", &second.1, &env));
    c.servers.push(second);
    let e = c.run("wft.fanout", json!({"n": 100, "seconds": 0, "concurrency": 20})).await;
    let e = c.ended(e.id, Duration::from_secs(120)).await;
    assert_eq!(
        (e.status, e.result.clone()),
        (ExecutionStatus::Succeeded, Some(json!({"done": 100}))),
        "{e:?}"
    );
    let kids = c.children(e.id).await;
    assert_eq!(kids.len(), 100);
    let workers: std::collections::BTreeSet<_> = kids.iter().filter_map(|k| k.worker.clone()).collect();
    assert_eq!(workers.len(), 2, "both workers (one per replica) ran items: {workers:?}");
}
