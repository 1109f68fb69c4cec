//! The HTTP API over real HTTP on port 0, against both backends: bad input at every door gets a
//! precise 4xx JSON error and changes nothing; the worker protocol is fenced by lease tokens.

use std::{sync::Arc, time::Duration};

use attune_client::{Client, ClientError};
use attune_core::auth::{Permission, Role};
use attune_core::{config::Settings, ExecutionStatus, Report, Runtime, Timestamp};
use attune_server::{
    auth::{create_token, TokenRequest},
    Server, ServerOptions,
};
use attune_store::{Store, StoreOptions};
use attune_testkit::TestDb;
use attune_wire::CreateExecution;
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

macro_rules! both {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $( #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
               async fn $name() { super::$name(attune_testkit::TestDb::sqlite()).await; } )*
        }
        mod postgres {
            $( #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
               async fn $name() { super::$name(attune_testkit::TestDb::postgres().await).await; } )*
        }
    };
}

both!(
    bad_submissions_are_4xx_and_change_nothing,
    bad_paths_and_methods,
    worker_protocol_is_fenced,
    long_poll_wakes_on_submit,
    the_least_loaded_waiting_worker_claims_first,
    packs_load_only_from_the_servers_dirs,
    browsers_on_other_sites_cannot_reach_in,
    cancel_rules,
    metrics_parse_and_move,
    events_stream_in_order_and_resume,
    openapi_documents_every_route,
    every_accepted_value_is_stored_unchanged_or_refused,
    every_operation_is_guarded,
    bounds_are_enforced_and_waits_are_cut,
    secret_keys_are_sealed_and_opened_only_for_the_worker,
    rules_fire_on_webhooks_and_emitted_events,
    signed_webhooks_timers_and_disabled_rules,
    buffer_one_keeps_one_run_waiting,
    on_limit_cancels_the_new_or_the_oldest,
    inquiries_are_answered_through_their_schema,
    workflows_pause_and_resume,
    a_workflow_with_nothing_under_it_is_repaired,
);

struct Api {
    url: String,
    /// An admin's client.
    client: Client,
    /// Plain HTTP, sending the admin token.
    http: reqwest::Client,
    /// Secrets of tokens of each role.
    admin: String,
    viewer: String,
    operator: String,
    enroll: String,
    stop: CancellationToken,
    task: Option<tokio::task::JoinHandle<anyhow::Result<()>>>,
    /// Holds the master key file.
    keys_dir: tempfile::TempDir,
    _db: TestDb,
}

impl Api {
    async fn start(db: TestDb) -> Api {
        Api::start_with(db, |_| {}).await
    }

    async fn start_with(db: TestDb, tune: impl FnOnce(&mut ServerOptions)) -> Api {
        let store = Arc::new(Store::open(&StoreOptions::new(db.url.clone())).await.unwrap());
        let packs = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../packs");
        let policies = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/packs");
        let (loaded, problems) =
            attune_server::packs::load_dirs(&store, &[packs, policies], &Default::default()).await;
        assert!(loaded.iter().any(|p| p.starts_with("core")), "{problems:?}");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let stop = CancellationToken::new();
        let mut opts = ServerOptions::from_settings(&Settings::default());
        let keys_dir = tempfile::tempdir().unwrap();
        opts.master_key_file = keys_dir.path().join("master.key");
        tune(&mut opts);
        let mut secrets = Vec::new();
        for role in [Role::Admin, Role::Viewer, Role::Operator, Role::Worker] {
            let req = TokenRequest {
                name: format!("test-{role}"),
                role,
                worker: None,
                created_by: None,
                expires_at: None,
            };
            secrets.push(create_token(&store, req, Timestamp::now()).await.unwrap().1);
        }
        let [admin, viewer, operator, enroll] = <[String; 4]>::try_from(secrets).unwrap();
        let server = Server::build(opts, store);
        let task = tokio::spawn(server.run(listener, stop.clone()));
        let mut headers = reqwest::header::HeaderMap::new();
        headers.insert("authorization", format!("Bearer {admin}").parse().unwrap());
        let http = reqwest::Client::builder().default_headers(headers).build().unwrap();
        Api {
            client: Client::new(&url).with_token(Some(admin.clone())),
            http,
            url,
            admin,
            viewer,
            operator,
            enroll,
            stop,
            task: Some(task),
            keys_dir,
            _db: db,
        }
    }

    /// A request with `token` (or none) instead of the admin's.
    async fn raw_as(
        &self,
        token: Option<&str>,
        method: reqwest::Method,
        path: &str,
        body: Option<&str>,
    ) -> (u16, Value) {
        let mut req = reqwest::Client::new().request(method, format!("{}{path}", self.url));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.header("content-type", "application/json").body(b.to_owned());
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap();
        // A success may be text (metrics); an error is always the JSON error shape.
        let value = serde_json::from_str(&text).unwrap_or(Value::String(text.clone()));
        assert!(status < 400 || value.is_object(), "an error that is not JSON ({status}): {text}");
        (status, value)
    }

    async fn post_as(&self, token: &str, path: &str, body: &str) -> (u16, Value) {
        self.raw_as(Some(token), reqwest::Method::POST, path, Some(body)).await
    }

    async fn raw(&self, method: reqwest::Method, path: &str, body: Option<&str>) -> (u16, Value) {
        let mut req = self.http.request(method, format!("{}{path}", self.url));
        if let Some(b) = body {
            req = req.header("content-type", "application/json").body(b.to_owned());
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap();
        (status, serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON ({status}): {text}")))
    }

    async fn post(&self, path: &str, body: &str) -> (u16, Value) {
        self.raw(reqwest::Method::POST, path, Some(body)).await
    }

    async fn executions(&self) -> usize {
        self.client.list_executions("limit=1000").await.unwrap().items.len()
    }

    /// Submits `action` with `parameters` as the admin; the accepted execution as JSON.
    async fn submit_json(&self, action: &str, parameters: Value) -> Value {
        let body = json!({"action_ref": action, "parameters": parameters}).to_string();
        let (code, v) = self.raw(reqwest::Method::POST, "/api/v1/executions", Some(&body)).await;
        assert_eq!(code, 201, "{v}");
        v
    }

    async fn stop(mut self) {
        self.stop.cancel();
        self.task.take().unwrap().await.unwrap().unwrap();
    }
}

fn code(v: &Value) -> &str {
    v["error"]["code"].as_str().unwrap_or_else(|| panic!("no error code in {v}"))
}

async fn bad_submissions_are_4xx_and_change_nothing(db: TestDb) {
    let api = Api::start(db).await;
    let cases: &[(&str, u16, &str)] = &[
        (r#"{"action_ref": "core.nope"}"#, 422, "unknown_action"),
        (r#"{"action_ref": "not a ref"}"#, 422, "invalid_action_ref"),
        (r#"{"action_ref": "core.echo"}"#, 422, "invalid_parameters"),
        (r#"{"action_ref": "core.echo", "parameters": {"message": 5}}"#, 422, "invalid_parameters"),
        (
            r#"{"action_ref": "core.echo", "parameters": {"message": "x", "extra": 1}}"#,
            422,
            "invalid_parameters",
        ),
        (r#"{"action_ref": "core.echo", "parameters": [1]}"#, 422, "invalid_parameters"),
        (
            r#"{"action_ref": "core.echo", "parameters": {"message": "x"}, "max_attempts": 0}"#,
            422,
            "invalid_max_attempts",
        ),
        (
            r#"{"action_ref": "core.echo", "parameters": {"message": "x"}, "timeout_seconds": 0}"#,
            422,
            "invalid_timeout",
        ),
        (r#"{"action_ref": "core.echo", "bogus": 1}"#, 422, "invalid_body"),
        (r#"{"action_ref": "#, 400, "malformed_json"),
        (r#"[]"#, 422, "invalid_body"),
    ];
    for (body, status, expected) in cases {
        let (s, v) = api.post("/api/v1/executions", body).await;
        assert_eq!((s, code(&v)), (*status, *expected), "body {body}: {v}");
        assert!(!v["error"]["message"].as_str().unwrap().is_empty());
    }
    let (_, v) =
        api.post("/api/v1/executions", r#"{"action_ref": "core.echo", "parameters": {"mesage": "x"}}"#).await;
    let details = v["error"]["details"].to_string();
    assert!(details.contains("mesage") && details.contains("message"), "{v}");
    // Wrong content type.
    let resp = api.http.post(format!("{}/api/v1/executions", api.url)).body("{}").send().await.unwrap();
    assert_eq!(resp.status().as_u16(), 415);
    assert_eq!(api.executions().await, 0, "no bad request created anything");
    api.stop().await;
}

async fn bad_paths_and_methods(db: TestDb) {
    let api = Api::start(db).await;
    let (s, v) = api.raw(reqwest::Method::GET, "/api/v1/executions/not-a-uuid", None).await;
    assert_eq!((s, code(&v)), (400, "invalid_id"));
    let (s, v) =
        api.raw(reqwest::Method::GET, &format!("/api/v1/executions/{}", uuid::Uuid::now_v7()), None).await;
    assert_eq!((s, code(&v)), (404, "not_found"));
    let (s, v) = api.raw(reqwest::Method::GET, "/api/v2/nothing", None).await;
    assert_eq!((s, code(&v)), (404, "no_route"));
    let (s, v) = api.raw(reqwest::Method::DELETE, "/api/v1/executions", None).await;
    assert_eq!((s, code(&v)), (405, "method_not_allowed"));
    let (s, v) = api.raw(reqwest::Method::GET, "/api/v1/executions?status=weird", None).await;
    assert_eq!((s, code(&v)), (400, "invalid_query"));
    assert!(v["error"]["message"].as_str().unwrap().contains("succeeded"), "lists the statuses: {v}");
    let (s, v) = api.raw(reqwest::Method::GET, "/api/v1/executions?limit=0", None).await;
    assert_eq!((s, code(&v)), (400, "invalid_query"));
    let (s, v) = api.raw(reqwest::Method::GET, "/api/v1/actions/core.nope", None).await;
    assert_eq!((s, code(&v)), (404, "unknown_action"));
    let (s, _) = api.raw(reqwest::Method::GET, "/health", None).await;
    assert_eq!(s, 200);
    api.stop().await;
}

fn report(status: ExecutionStatus) -> Report {
    Report {
        status,
        exit_code: Some(0),
        stdout: "done".into(),
        stderr: String::new(),
        stdout_encoding: Default::default(),
        stderr_encoding: Default::default(),
        stdout_truncated: false,
        stderr_truncated: false,
        result: None,
        error: None,
    }
}

async fn submit_noop(api: &Api) -> attune_core::Execution {
    api.client
        .create_execution(&CreateExecution { action_ref: "core.noop".into(), ..Default::default() })
        .await
        .unwrap()
}

/// A registered worker: its id, its own credential, and a client that uses it.
struct W {
    id: uuid::Uuid,
    token: String,
    client: Client,
}

impl std::fmt::Display for W {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.id)
    }
}

async fn register(api: &Api, name: &str) -> W {
    register_for(api, name, vec![Runtime::Builtin]).await
}

async fn register_for(api: &Api, name: &str, runtimes: Vec<Runtime>) -> W {
    let req = attune_wire::RegisterWorker {
        name: name.into(),
        host: "test".into(),
        runtimes,
        labels: json!({}),
        concurrency: 2,
        version: "t".into(),
    };
    let enroller = Client::new(&api.url).with_token(Some(api.enroll.clone()));
    let r = enroller.register(&req).await.unwrap();
    W {
        id: r.worker.id,
        client: Client::new(&api.url).with_token(Some(r.credential.clone())),
        token: r.credential,
    }
}

async fn worker_protocol_is_fenced(db: TestDb) {
    let api = Api::start(db).await;
    let (s, v) = api
        .post_as(
            &api.enroll,
            "/api/v1/worker/register",
            r#"{"name":"w","host":"h","runtimes":[],"concurrency":1,"version":"1"}"#,
        )
        .await;
    assert_eq!((s, code(&v)), (422, "invalid_registration"));
    let (s, v) = api
        .post_as(
            &api.enroll,
            "/api/v1/worker/register",
            r#"{"name":"w","host":"h","runtimes":["cobol"],"concurrency":1,"version":"1"}"#,
        )
        .await;
    assert_eq!((s, code(&v)), (422, "invalid_body"), "{v}");
    let w = register(&api, "w1").await;
    // A worker's credential is good for that worker only; an admin's is not a worker's.
    let ghost = uuid::Uuid::now_v7();
    let err = w.client.heartbeat(ghost, vec![]).await.unwrap_err();
    assert!(matches!(&err, ClientError::Api { status: 403, code, .. } if code == "forbidden"), "{err}");
    let err = api.client.heartbeat(w.id, vec![]).await.unwrap_err();
    assert!(matches!(&err, ClientError::Api { status: 403, .. }), "{err}");
    let e = submit_noop(&api).await;
    let tasks = w.client.poll(w.id, 1, Duration::from_secs(5)).await.unwrap().tasks;
    assert_eq!(tasks.len(), 1);
    let t = &tasks[0];
    let err = w.client.start(w.id, e.id, "stale").await.unwrap_err();
    assert_eq!(err.status(), Some(409), "{err}");
    w.client.start(w.id, e.id, &t.lease_token).await.unwrap();
    let before = api.client.get_execution(e.id).await.unwrap();
    let err = w.client.complete(w.id, e.id, "stale", report(ExecutionStatus::Succeeded)).await.unwrap_err();
    assert!(matches!(&err, ClientError::Api { status: 409, code, .. } if code == "stale_lease"), "{err}");
    assert_eq!(api.client.get_execution(e.id).await.unwrap(), before, "a stale completion changes nothing");
    let done =
        w.client.complete(w.id, e.id, &t.lease_token, report(ExecutionStatus::Succeeded)).await.unwrap();
    assert_eq!(done.status, ExecutionStatus::Succeeded);
    // Idempotent for the same token.
    let again = w.client.complete(w.id, e.id, &t.lease_token, report(ExecutionStatus::Failed)).await.unwrap();
    assert_eq!(again.status, ExecutionStatus::Succeeded);
    let hb = w
        .client
        .heartbeat(w.id, vec![attune_core::Lease { execution_id: e.id, lease_token: t.lease_token.clone() }])
        .await
        .unwrap();
    assert_eq!(hb.leases[0].state, attune_core::LeaseState::Revoked, "a finished execution's lease is gone");
    let (s, v) =
        api.post_as(&w.token, &format!("/api/v1/worker/{w}/poll"), r#"{"max_tasks": 0, "wait_ms": 0}"#).await;
    assert_eq!((s, code(&v)), (422, "invalid_poll"));
    // A report the server cannot take is refused (422) and, since resending cannot fix it, ends
    // its execution at once as failed with the reason (not with a lease expiry later).
    let bad = submit_noop(&api).await;
    let t = w.client.poll(w.id, 1, Duration::from_secs(5)).await.unwrap().tasks.remove(0);
    w.client.start(w.id, bad.id, &t.lease_token).await.unwrap();
    let (s, v) = api
        .post_as(
            &w.token,
            &format!("/api/v1/worker/{w}/executions/{}/complete", bad.id),
            &json!({"lease_token": t.lease_token, "status": "running"}).to_string(),
        )
        .await;
    assert_eq!((s, code(&v)), (422, "invalid_report"));
    let failed = api.client.get_execution(bad.id).await.unwrap();
    assert_eq!(failed.status, ExecutionStatus::Failed);
    let reason = failed.error.unwrap()["error"].as_str().unwrap().to_owned();
    assert!(reason.starts_with("the server refused the worker's report: status must be"), "{reason}");
    w.client.deregister(w.id).await.unwrap();
    let ws = api.client.list_workers(false).await.unwrap();
    assert!(ws.iter().all(|x| x.id != w.id), "deregistered workers are not listed by default");
    // Its credential dies with its registration.
    let err = w.client.heartbeat(w.id, vec![]).await.unwrap_err();
    assert!(matches!(&err, ClientError::Api { status: 401, .. }), "{err}");
    api.stop().await;
}

async fn long_poll_wakes_on_submit(db: TestDb) {
    // Waiting polls look again only every minute here: returning sooner proves the wake-up.
    let api = Api::start_with(db, |o| o.recheck = Duration::from_secs(60)).await;
    let w = register(&api, "w1").await;
    let client = w.client.clone();
    let wait = Duration::from_secs(25);
    let poll = tokio::spawn(async move {
        let r = client.poll(w.id, 4, wait).await.unwrap();
        (r, std::time::Instant::now())
    });
    // Submit only once the poll is parked, so that it can only learn of the task by being woken.
    attune_testkit::wait_for("the poll to wait", Duration::from_secs(10), || async {
        let text = api.http.get(format!("{}/metrics", api.url)).send().await.ok()?.text().await.ok()?;
        text.lines().any(|l| l == "attune_polls_waiting 1").then_some(())
    })
    .await;
    let submitted = std::time::Instant::now();
    let e = submit_noop(&api).await;
    let (reply, returned) = poll.await.unwrap();
    assert_eq!(reply.tasks.len(), 1);
    assert_eq!(reply.tasks[0].execution_id, e.id);
    let after = returned.duration_since(submitted);
    assert!(after < Duration::from_secs(5), "the poll was woken by the submit, {after:?} after it");
    api.stop().await;
}

/// Two workers wait with a poll each, one with both slots free and one with one: a single
/// submission goes to the idle one, whichever registered or polled first (ten rounds, the roles
/// swapped every round; by chance alone that is one in a thousand). The busier one's poll then
/// takes the next submission without waiting for the idle one's.
async fn the_least_loaded_waiting_worker_claims_first(db: TestDb) {
    let api = Api::start_with(db, |o| o.recheck = Duration::from_secs(60)).await;
    let (a, b) = (register(&api, "a").await, register(&api, "b").await);
    let waiting = |n: usize| {
        let api = &api;
        async move {
            attune_testkit::wait_for("the polls to wait", Duration::from_secs(10), || async {
                let text =
                    api.http.get(format!("{}/metrics", api.url)).send().await.ok()?.text().await.ok()?;
                text.lines().any(|l| l == format!("attune_polls_waiting {n}")).then_some(())
            })
            .await
        }
    };
    let poll = |w: &W, free: u32| {
        let (client, id) = (w.client.clone(), w.id);
        tokio::spawn(async move { client.poll(id, free, Duration::from_secs(25)).await.unwrap().tasks })
    };
    for round in 0..10 {
        let (idle, busy) = if round % 2 == 0 { (&a, &b) } else { (&b, &a) };
        // The busier one polls first, so that arrival order would favour it.
        let busy_poll = poll(busy, 1);
        waiting(1).await;
        let idle_poll = poll(idle, 2);
        waiting(2).await;
        let first = submit_noop(&api).await;
        let got = idle_poll.await.unwrap();
        assert_eq!(got.iter().map(|t| t.execution_id).collect::<Vec<_>>(), vec![first.id], "round {round}");
        let second = submit_noop(&api).await;
        let got_busy = busy_poll.await.unwrap();
        assert_eq!(
            got_busy.iter().map(|t| t.execution_id).collect::<Vec<_>>(),
            vec![second.id],
            "round {round}"
        );
        for (w, t) in [(idle, &got[0]), (busy, &got_busy[0])] {
            w.client.start(w.id, t.execution_id, &t.lease_token).await.unwrap();
            w.client
                .complete(w.id, t.execution_id, &t.lease_token, report(ExecutionStatus::Succeeded))
                .await
                .unwrap();
        }
    }
    api.stop().await;
}

/// Every way a client tried to make the server run something outside a pack, or to empty one,
/// is refused and changes nothing; only directories under `packs.dirs` load, and replacing is explicit.
async fn packs_load_only_from_the_servers_dirs(db: TestDb) {
    let root = tempfile::tempdir().unwrap();
    let outside = tempfile::tempdir().unwrap();
    let dirs = vec![root.path().to_path_buf()];
    let api = Api::start_with(db, move |o| o.pack_dirs = dirs).await;
    let write = |base: &std::path::Path, rel: &str, text: &str| {
        let p = base.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    };
    let a = &api;
    let load = |dir: String, replace: bool| {
        let body = json!({"dir": dir, "replace": replace}).to_string();
        async move { a.post("/api/v1/packs", &body).await }
    };
    let before = api.client.list_actions().await.unwrap();

    // A pack outside packs.dirs, by absolute path, by `..`, or through a symlink: refused.
    write(outside.path(), "evil/pack.yaml", "ref: evil\n");
    write(outside.path(), "evil/actions/id.yaml", "ref: id\nruntime: builtin\nentry_point: noop\n");
    std::os::unix::fs::symlink(outside.path().join("evil"), root.path().join("escape")).unwrap();
    let evil = outside.path().join("evil").display().to_string();
    for dir in
        [evil, "/etc".into(), "../evil".into(), "escape".into(), format!("{}/escape", root.path().display())]
    {
        let (s, v) = load(dir.clone(), true).await;
        assert_eq!((s, code(&v)), (422, "pack_dir_refused"), "{dir}: {v}");
    }

    // Entry points leaving the pack: `..`, absolute, a symlink to a file, a symlinked directory.
    write(root.path(), "bad/pack.yaml", "ref: bad\n");
    for (name, ep, rt) in [
        ("up", "../../../../usr/bin/id", "native"),
        ("abs", "/usr/bin/uname", "native"),
        ("link", "link.sh", "shell"),
        ("dir", "bin/id", "native"),
    ] {
        write(
            root.path(),
            &format!("bad/actions/{name}.yaml"),
            &format!("ref: {name}\nruntime: {rt}\nentry_point: {ep}\n"),
        );
    }
    std::os::unix::fs::symlink("/etc/passwd", root.path().join("bad/actions/link.sh")).unwrap();
    std::os::unix::fs::symlink("/usr/bin", root.path().join("bad/actions/bin")).unwrap();
    // A symlink out of the pack cannot even be archived: refused, naming the entry.
    let (s, v) = load("bad".into(), true).await;
    assert_eq!((s, code(&v)), (422, "invalid_archive"), "{v}");
    assert!(v["error"]["message"].as_str().unwrap().contains("leaves the pack"), "{v}");
    // Without them, every entry point leading out (or missing) is named with its file and field.
    std::fs::remove_file(root.path().join("bad/actions/link.sh")).unwrap();
    std::fs::remove_file(root.path().join("bad/actions/bin")).unwrap();
    let (s, v) = load("bad".into(), true).await;
    assert_eq!((s, code(&v)), (422, "invalid_pack"), "{v}");
    let details = v["error"]["details"].to_string();
    for f in ["up.yaml", "abs.yaml", "link.yaml", "dir.yaml"] {
        assert!(details.contains(&format!("{f}: field `entry_point`")), "{f}: {details}");
    }
    // Duplicate keys are an error, not the last one winning.
    write(root.path(), "dup/pack.yaml", "ref: dup\n");
    write(
        root.path(),
        "dup/actions/a.yaml",
        "ref: a\nruntime: builtin\nentry_point: noop\nentry_point: noop\n",
    );
    let (s, v) = load("dup".into(), false).await;
    assert_eq!((s, code(&v)), (422, "invalid_pack"), "{v}");
    assert!(v["error"]["details"].to_string().contains("duplicate"), "{v}");

    // An empty pack claiming `core`: a take-over and an emptying, refused without replace.
    write(root.path(), "fakecore/pack.yaml", "ref: core\n");
    let (s, v) = load("fakecore".into(), false).await;
    assert_eq!((s, code(&v)), (409, "pack_conflict"), "{v}");
    let msg = v["error"]["message"].as_str().unwrap();
    assert!(msg.contains("take pack core over") && msg.contains("remove its actions core."), "{msg}");
    assert_eq!(api.client.list_actions().await.unwrap(), before, "nothing changed");
    // A viewer or an operator may not load packs at all.
    let body = r#"{"dir": "fakecore", "replace": true}"#;
    assert_eq!(api.post_as(&api.operator, "/api/v1/packs", body).await.0, 403);

    // A good pack loads by name and by path; re-loading without an action needs replace.
    write(root.path(), "demo/pack.yaml", "ref: demo\n");
    write(root.path(), "demo/actions/a.yaml", "ref: a\nruntime: builtin\nentry_point: noop\n");
    write(root.path(), "demo/actions/b.yaml", "ref: b\nruntime: shell\nentry_point: b.sh\n");
    write(root.path(), "demo/actions/b.sh", "echo b\n");
    let (s, v) = load("demo".into(), false).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["actions"], json!(["demo.a", "demo.b"]));
    std::fs::remove_file(root.path().join("demo/actions/b.yaml")).unwrap();
    let by_path = root.path().join("demo").display().to_string();
    let (s, v) = load(by_path.clone(), false).await;
    assert_eq!((s, code(&v)), (409, "pack_conflict"), "{v}");
    assert!(v["error"]["message"].as_str().unwrap().contains("remove its actions demo.b"), "{v}");
    let (s, v) = load(by_path, true).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!((v["actions"].clone(), v["removed"].clone()), (json!(["demo.a"]), json!(["demo.b"])));
    // The old body (a client's own pack description) is not accepted any more.
    let (s, v) = api.post("/api/v1/packs", r#"{"pack": {"ref": "x"}, "actions": []}"#).await;
    assert_eq!((s, code(&v)), (422, "invalid_body"), "{v}");
    api.stop().await;
}

/// DNS rebinding (a foreign `Host`) is refused before anything else; a cross-site form or `fetch`
/// carries no bearer token, so it changes nothing; no CORS header invites a browser to read.
async fn browsers_on_other_sites_cannot_reach_in(db: TestDb) {
    let api = Api::start(db).await;
    let http = reqwest::Client::new();
    let url = |p: &str| format!("{}{p}", api.url);
    let body = r#"{"action_ref": "core.sleep", "parameters": {"seconds": 30}}"#;
    for (method, path) in [(reqwest::Method::POST, "/api/v1/executions"), (reqwest::Method::GET, "/health")] {
        let resp = http
            .request(method, url(path))
            .header("host", "attacker.example")
            .bearer_auth(&api.admin)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 400, "{path}");
        let v: Value = resp.json().await.unwrap();
        assert_eq!(code(&v), "host_not_allowed", "{v}");
        assert!(v["error"]["message"].as_str().unwrap().contains("server.allowed_hosts"), "{v}");
    }
    assert_eq!(api.executions().await, 0, "a foreign Host created nothing");

    let e = submit_noop(&api).await;
    let cancel = url(&format!("/api/v1/executions/{}/cancel", e.id));
    for ct in ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x"] {
        let resp = http
            .post(&cancel)
            .header("origin", "https://attacker.example")
            .header("content-type", ct)
            .body("")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 401, "{ct}");
        assert!(resp.headers().get("access-control-allow-origin").is_none());
    }
    let preflight = http
        .request(reqwest::Method::OPTIONS, &cancel)
        .header("origin", "https://attacker.example")
        .header("access-control-request-method", "POST")
        .header("access-control-request-headers", "authorization")
        .send()
        .await
        .unwrap();
    assert!(preflight.headers().keys().all(|k| !k.as_str().starts_with("access-control-")), "{preflight:?}");
    let still = api.client.get_execution(e.id).await.unwrap();
    assert_eq!(still.status, ExecutionStatus::Scheduled, "nothing canceled it");
    api.stop().await;
}

async fn cancel_rules(db: TestDb) {
    let api = Api::start(db).await;
    let e = api
        .client
        .create_execution(&CreateExecution {
            action_ref: "core.sleep".into(),
            parameters: Some(json!({"seconds": 5})),
            ..Default::default()
        })
        .await
        .unwrap();
    let c = api.client.cancel_execution(e.id).await.unwrap();
    assert_eq!(c.status, ExecutionStatus::Canceled);
    let err = api.client.cancel_execution(e.id).await.unwrap_err();
    assert_eq!(err.status(), Some(409), "{err}");
    let got = api.client.get_execution(e.id).await.unwrap();
    assert_eq!(got.history.last().unwrap().to, ExecutionStatus::Canceled);
    assert!(got.finished_at.unwrap() <= Timestamp::now());
    api.stop().await;
}

/// Samples of `name` in the exposition, with their labels.
fn samples(text: &str, name: &str) -> Vec<(std::collections::HashMap<String, String>, f64)> {
    let scrape =
        prometheus_parse::Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).expect("valid exposition");
    scrape
        .samples
        .into_iter()
        .filter(|s| s.metric == name)
        .map(|s| {
            let v = match s.value {
                prometheus_parse::Value::Counter(v)
                | prometheus_parse::Value::Gauge(v)
                | prometheus_parse::Value::Untyped(v) => v,
                _ => f64::NAN,
            };
            (s.labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(), v)
        })
        .collect()
}

async fn metrics_parse_and_move(db: TestDb) {
    let api = Api::start(db).await;
    let text =
        || async { api.http.get(format!("{}/metrics", api.url)).send().await.unwrap().text().await.unwrap() };
    let before = text().await;
    assert!(samples(&before, "attune_executions_finished_total").is_empty());
    let w = register(&api, "w1").await;
    let e = submit_noop(&api).await;
    let waiting = text().await;
    let depth = samples(&waiting, "attune_queue_depth");
    assert_eq!(depth.len(), 1);
    assert_eq!((depth[0].0["queue"].as_str(), depth[0].1), ("builtin", 1.0));
    let t = w.client.poll(w.id, 1, Duration::from_secs(5)).await.unwrap().tasks.remove(0);
    let lease = attune_core::Lease { execution_id: e.id, lease_token: t.lease_token.clone() };
    w.client.start_batch(w.id, vec![lease]).await.unwrap();
    let item = attune_wire::CompleteItem {
        execution_id: e.id,
        lease_token: t.lease_token,
        report: report(ExecutionStatus::Succeeded),
    };
    w.client.complete_batch(w.id, vec![item]).await.unwrap();
    let after = text().await;
    let done = samples(&after, "attune_executions_finished_total");
    assert_eq!(done.len(), 1, "{after}");
    assert_eq!(
        (done[0].0["action"].as_str(), done[0].0["status"].as_str(), done[0].1),
        ("core.noop", "succeeded", 1.0)
    );
    let events = samples(&after, "attune_worker_events_total");
    assert!(events.iter().any(|(l, v)| l["event"] == "registered" && *v == 1.0), "{events:?}");
    let starts = samples(&after, "attune_submit_to_start_seconds_count");
    assert_eq!(starts.first().map(|s| s.1), Some(1.0), "{after}");
    let runs = samples(&after, "attune_run_duration_seconds_count");
    assert_eq!(runs.first().map(|s| s.1), Some(1.0));
    let hb = samples(&after, "attune_worker_heartbeat_age_seconds");
    assert_eq!(hb.len(), 1);
    assert!(samples(&after, "attune_queue_depth").is_empty(), "the queue is empty again");
    api.stop().await;
}

/// One SSE event: (id, event name, data as JSON).
type SseEvent = (String, String, Value);

/// Reads SSE events from `path` until `until` says stop (or 15 s pass).
async fn read_sse(
    api: &Api,
    path: &str,
    last_id: Option<&str>,
    until: impl Fn(&[SseEvent]) -> bool,
) -> Vec<SseEvent> {
    let mut req = api.http.get(format!("{}{path}", api.url));
    if let Some(id) = last_id {
        req = req.header("Last-Event-ID", id);
    }
    let mut resp = req.send().await.unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    let (mut buf, mut events) = (String::new(), Vec::new());
    while !until(&events) {
        let chunk =
            tokio::time::timeout_at(deadline, resp.chunk()).await.expect("events in time").unwrap().unwrap();
        buf.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = buf.find("\n\n") {
            let block: String = buf.drain(..end + 2).collect();
            let (mut id, mut name, mut data) = (String::new(), String::new(), String::new());
            for line in block.lines() {
                if let Some(v) = line.strip_prefix("id: ") {
                    id = v.to_owned();
                } else if let Some(v) = line.strip_prefix("event: ") {
                    name = v.to_owned();
                } else if let Some(v) = line.strip_prefix("data: ") {
                    data.push_str(v);
                }
            }
            if !name.is_empty() {
                events.push((id, name, serde_json::from_str(&data).unwrap()));
            }
        }
    }
    events
}

async fn run_one_noop(api: &Api, w: &W) -> uuid::Uuid {
    let e = submit_noop(api).await;
    let t = w.client.poll(w.id, 1, Duration::from_secs(5)).await.unwrap().tasks.remove(0);
    w.client.start(w.id, e.id, &t.lease_token).await.unwrap();
    w.client.complete(w.id, e.id, &t.lease_token, report(ExecutionStatus::Succeeded)).await.unwrap();
    e.id
}

async fn events_stream_in_order_and_resume(db: TestDb) {
    let api = Api::start(db).await;
    let w = register(&api, "w1").await;
    let (s, v) = api.raw(reqwest::Method::GET, "/api/v1/events?kind=bogus", None).await;
    assert_eq!((s, code(&v)), (400, "invalid_query"));
    let (s, v) = api.raw(reqwest::Method::GET, "/api/v1/events?after=nonsense", None).await;
    assert_eq!((s, code(&v)), (400, "invalid_cursor"));
    // A fresh database: from the start of the stream, this execution's whole life, in order.
    let id = run_one_noop(&api, &w).await;
    let events = read_sse(&api, "/api/v1/events?kind=execution&after=0-0", None, |ev| {
        ev.iter().any(|e| e.1 == "ExecutionCompleted")
    })
    .await;
    let mine: Vec<&SseEvent> = events.iter().filter(|e| e.2["execution_id"] == id.to_string()).collect();
    let names: Vec<&str> = mine.iter().map(|e| e.1.as_str()).collect();
    assert_eq!(
        names,
        vec!["ExecutionRequested", "ExecutionScheduled", "ExecutionRunning", "ExecutionCompleted"]
    );
    let done = mine.last().unwrap();
    assert_eq!(
        (done.2["status"].as_str(), done.2["action_ref"].as_str()),
        (Some("succeeded"), Some("core.noop"))
    );
    // Resume after the Running event: exactly what came after it, nothing missed.
    let running_id = mine[2].0.clone();
    let resumed = read_sse(&api, "/api/v1/events?kind=execution", Some(&running_id), |ev| {
        ev.iter().any(|e| e.1 == "ExecutionCompleted")
    })
    .await;
    assert_eq!(resumed[0].1, "ExecutionCompleted");
    assert_eq!(resumed[0].2["execution_id"], id.to_string());
    // Worker events are in the stream too.
    let workers = read_sse(&api, "/api/v1/events?kind=worker&after=0-0", None, |ev| !ev.is_empty()).await;
    assert_eq!((workers[0].1.as_str(), workers[0].2["worker"].as_str()), ("WorkerRegistered", Some("w1")));
    // A live subscriber sees a later execution as it happens.
    let later = tokio::spawn({
        let (url, http) = (api.url.clone(), api.http.clone());
        async move {
            let mut resp = http.get(format!("{url}/api/v1/events?kind=execution")).send().await.unwrap();
            let mut text = String::new();
            while !text.contains("ExecutionCompleted") {
                let c = tokio::time::timeout(Duration::from_secs(15), resp.chunk())
                    .await
                    .unwrap()
                    .unwrap()
                    .unwrap();
                text.push_str(&String::from_utf8_lossy(&c));
            }
            text
        }
    });
    // If the subscriber connected after a submit, it waits for the next one: submit until seen.
    let mut submitted = vec![run_one_noop(&api, &w).await];
    while !later.is_finished() {
        tokio::time::sleep(Duration::from_millis(50)).await;
        if !later.is_finished() {
            submitted.push(run_one_noop(&api, &w).await);
        }
    }
    let text = later.await.unwrap();
    assert!(submitted.iter().any(|id| text.contains(&id.to_string())), "{text}");
    api.stop().await;
}

async fn openapi_documents_every_route(db: TestDb) {
    let api = Api::start(db).await;
    let (s, doc) = api.raw(reqwest::Method::GET, "/api/v1/openapi.json", None).await;
    assert_eq!(s, 200);
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."), "{}", doc["openapi"]);
    let paths = doc["paths"].as_object().unwrap();
    let mut operations = 0;
    for (path, item) in paths {
        for (method, op) in item.as_object().unwrap() {
            operations += 1;
            // Every documented operation is routed: probing it never gets "no route" or 405.
            let probe = path
                .replace("{id}", &uuid::Uuid::now_v7().to_string())
                .replace("{execution}", &uuid::Uuid::now_v7().to_string())
                .replace("{action_ref}", "core.nope")
                .replace("{name}", "nobody")
                + if path == "/api/v1/events" { "?kind=probe" } else { "" };
            let m = reqwest::Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
            let mut req = api.http.request(m, format!("{}{probe}", api.url));
            if method == "post" {
                req = req.header("content-type", "application/json").body("{}");
            }
            let resp = req.send().await.unwrap();
            let status = resp.status().as_u16();
            let body = resp.text().await.unwrap();
            assert!(
                status != 405 && !body.contains("no_route"),
                "{method} {path} is documented but not routed: {status} {body}"
            );
            let takes_input = op.get("requestBody").is_some() || op.get("parameters").is_some();
            if method == "post" && takes_input {
                let e400 = op["responses"]["400"]["content"]["application/json"]["schema"]["$ref"].as_str();
                assert_eq!(
                    e400,
                    Some("#/components/schemas/ErrorBody"),
                    "{method} {path} documents its error shape"
                );
            }
        }
    }
    assert_eq!(operations, 60, "every public route is documented");
    assert!(doc["components"]["schemas"]["Execution"].is_object());
    let page = api.http.get(format!("{}/api/v1/docs", api.url)).send().await.unwrap();
    assert_eq!(page.status().as_u16(), 200);
    assert!(page.text().await.unwrap().contains("/api/v1/openapi.json"));
    api.stop().await;
}

async fn every_accepted_value_is_stored_unchanged_or_refused(db: TestDb) {
    let api = Api::start(db).await;
    let create = |body: String| {
        let api = &api;
        async move { api.post("/api/v1/executions", &body).await }
    };
    // A NUL, quotes, non-BMP and control characters in parameters delivered as JSON on stdin
    // (examples.python_json): stored and returned exactly.
    let message = "nul:\u{0} quote:\" emoji:\u{1F600} escape:\u{1b}[31m";
    let body = json!({"action_ref": "examples.python_json", "parameters": {"name": message}}).to_string();
    let (s, v) = create(body).await;
    assert_eq!(s, 201, "{v}");
    let id = v["id"].as_str().unwrap().parse().unwrap();
    let stored = api.client.get_execution(id).await.unwrap();
    assert_eq!(stored.parameters["name"], message, "stored and returned unchanged");
    // Where it cannot be delivered (core.echo takes its parameters from the environment), a NUL
    // is refused at submission, naming the parameter, instead of failing the run at spawn.
    let (s, v) =
        create(json!({"action_ref": "core.echo", "parameters": {"message": "a\u{0}b"}}).to_string()).await;
    assert_eq!((s, code(&v)), (422, "invalid_parameters"), "{v}");
    assert!(v["error"]["message"].as_str().unwrap().contains("parameter message contains a NUL"), "{v}");
    // Syntax the database could not keep, or that serde cannot read, is a 4xx.
    let lone = r#"{"action_ref": "core.echo", "parameters": {"message": "\ud800"}}"#;
    let (s, v) = api.post("/api/v1/executions", lone).await;
    assert_eq!((s, code(&v)), (400, "malformed_json"), "lone surrogate: {v}");
    let deep = format!(
        r#"{{"action_ref": "core.echo", "parameters": {{"message": "x", "d": {}1{}}}}}"#,
        "[".repeat(300),
        "]".repeat(300)
    );
    let (s, v) = api.post("/api/v1/executions", &deep).await;
    assert!(s == 400 || s == 422, "very deep JSON: {s} {v}");
    let huge = r#"{"action_ref": "core.echo", "parameters": {"message": "x", "n": [1, 123456789012345678901234567890]}}"#;
    let (s, v) = api.post("/api/v1/executions", huge).await;
    assert_eq!((s, code(&v)), (422, "number_out_of_range"), "{v}");
    assert!(v["error"]["message"].as_str().unwrap().starts_with("parameters.n.1:"), "{v}");
    // Large, within the limit: stored unchanged; over it: 413.
    let big = "y".repeat(1_500_000);
    let (s, v) = create(json!({"action_ref": "core.echo", "parameters": {"message": big}}).to_string()).await;
    assert_eq!(s, 201, "{}", v["error"]);
    let id = v["id"].as_str().unwrap().parse().unwrap();
    assert_eq!(api.client.get_execution(id).await.unwrap().parameters["message"], big);
    let too_big = "z".repeat(3_000_000);
    let (s, v) =
        create(json!({"action_ref": "core.echo", "parameters": {"message": too_big}}).to_string()).await;
    assert_eq!((s, code(&v)), (413, "body_too_large"), "{v}");
    // The worker protocol: names and tokens that no database column may hold are refused.
    let (s, v) = api
        .post_as(
            &api.enroll,
            "/api/v1/worker/register",
            r#"{"name":"w\u0000","host":"h","runtimes":["builtin"],"concurrency":1,"version":"1"}"#,
        )
        .await;
    assert_eq!((s, code(&v)), (422, "invalid_registration"), "{v}");
    let w = register(&api, "w1").await;
    let hb = json!({"leases": [{"execution_id": id, "lease_token": "a\u{0}"}]}).to_string();
    let (s, v) = api.post_as(&w.token, &format!("/api/v1/worker/{w}/heartbeat"), &hb).await;
    assert_eq!((s, code(&v)), (422, "invalid_lease_token"), "{v}");
    let logs = json!({"lease_token": "abc", "chunks": [{"stream": "stdout", "text": "not base64!", "encoding": "base64"}]});
    let (s, v) =
        api.post_as(&w.token, &format!("/api/v1/worker/{w}/executions/{id}/logs"), &logs.to_string()).await;
    assert_eq!((s, code(&v)), (422, "invalid_logs"), "{v}");
    api.stop().await;
}

async fn bounds_are_enforced_and_waits_are_cut(db: TestDb) {
    let api = Api::start_with(db, |o| {
        o.max_poll = Duration::from_millis(300);
        o.max_wait = Duration::from_millis(300);
    })
    .await;
    let body = |t: &str| format!(r#"{{"action_ref": "core.noop", "timeout_seconds": {t}}}"#);
    for t in ["18446744073709551615", "2592001", "0"] {
        let (s, v) = api.post("/api/v1/executions", &body(t)).await;
        assert_eq!((s, code(&v)), (422, "invalid_timeout"), "timeout {t}: {v}");
    }
    let (s, v) = api.post("/api/v1/executions", &body("2592000")).await;
    assert_eq!(s, 201, "30 days is the longest timeout: {v}");
    // A poll asking to wait longer than server.max_poll waits max_poll.
    let w = register(&api, "w1").await;
    let started = std::time::Instant::now();
    let (s, v) = api
        .post_as(&w.token, &format!("/api/v1/worker/{w}/poll"), r#"{"max_tasks": 1, "wait_ms": 3600000}"#)
        .await;
    assert_eq!(s, 200, "{v}");
    assert!(v["tasks"].as_array().unwrap().len() <= 1);
    // The one above may have been handed out; poll again with nothing left.
    let (s, _) = api
        .post_as(&w.token, &format!("/api/v1/worker/{w}/poll"), r#"{"max_tasks": 1, "wait_ms": 3600000}"#)
        .await;
    assert_eq!(s, 200);
    assert!(started.elapsed() < Duration::from_secs(10), "cut to max_poll: {:?}", started.elapsed());
    let e = submit_noop(&api).await;
    let started = std::time::Instant::now();
    let (s, _) = api
        .raw(reqwest::Method::GET, &format!("/api/v1/executions/{}/wait?timeout_ms=3600000", e.id), None)
        .await;
    assert_eq!(s, 200);
    assert!(started.elapsed() < Duration::from_secs(5), "cut to max_wait: {:?}", started.elapsed());
    api.stop().await;
}

/// Every operation of the API document: no token → 401, a role its permission does not cover →
/// 403, a role it covers → neither (whatever else the request gets wrong).
async fn every_operation_is_guarded(db: TestDb) {
    let api = Api::start(db).await;
    let w = register(&api, "w1").await;
    // The description of the API is open (every operation it lists is not).
    let (s, doc) = api.raw_as(None, reqwest::Method::GET, "/api/v1/openapi.json", None).await;
    assert_eq!(s, 200);
    let roles = [
        (Role::Admin, api.admin.as_str()),
        (Role::Operator, api.operator.as_str()),
        (Role::Viewer, api.viewer.as_str()),
        (Role::Worker, api.enroll.as_str()),
        (Role::Agent, w.token.as_str()),
    ];
    let mut checked = 0;
    // Deregistering revokes the worker's credential: that one goes last.
    let mut ops: Vec<(&String, &String, &Value)> = doc["paths"]
        .as_object()
        .unwrap()
        .iter()
        .flat_map(|(path, item)| item.as_object().unwrap().iter().map(move |(m, op)| (path, m, op)))
        .collect();
    ops.sort_by_key(|(path, _, _)| path.ends_with("/deregister"));
    {
        for (path, method, op) in ops {
            let probe = path
                .replace("{id}", &w.id.to_string())
                .replace("{execution}", &uuid::Uuid::now_v7().to_string())
                .replace("{action_ref}", "core.nope")
                .replace("{name}", "nobody")
                + if path == "/api/v1/events" { "?kind=probe" } else { "" };
            let m = reqwest::Method::from_bytes(method.to_uppercase().as_bytes()).unwrap();
            let body = (method == "post").then_some("{}");
            let Some(permission) = op["x-attune-permission"].as_str() else {
                assert_eq!(path, "/health", "only /health is open; {method} {path} declares no permission");
                continue;
            };
            let (s, v) = api.raw_as(None, m.clone(), &probe, body).await;
            assert_eq!((s, code(&v)), (401, "unauthorized"), "{method} {path} without a token");
            let (s, _) = api.raw_as(Some("attune_not-a-real-token"), m.clone(), &probe, body).await;
            assert_eq!(s, 401, "{method} {path} with an unknown token");
            for (role, token) in roles {
                let p = Permission::ALL
                    .into_iter()
                    .find(|p| p.as_str() == permission)
                    .unwrap_or_else(|| panic!("unknown permission {permission}"));
                let allowed = role.allows(p);
                let (s, v) = api.raw_as(Some(token), m.clone(), &probe, body).await;
                if allowed {
                    assert!(s != 401 && s != 403, "{method} {path} as {role}: {s} {v}");
                } else {
                    assert_eq!((s, code(&v)), (403, "forbidden"), "{method} {path} as {role}");
                }
                checked += 1;
            }
        }
    }
    assert!(checked >= 30 * 5, "{checked}");
    // A revoked token stops working at once on this server; an expired one is refused too.
    let (_, created) = api.post("/api/v1/tokens", r#"{"name": "short", "role": "viewer"}"#).await;
    let secret = created["secret"].as_str().unwrap().to_owned();
    assert_eq!(api.raw_as(Some(&secret), reqwest::Method::GET, "/api/v1/stats", None).await.0, 200);
    let (s, _) = api.post("/api/v1/tokens/short/revoke", "{}").await;
    assert_eq!(s, 200);
    let (s, v) = api.raw_as(Some(&secret), reqwest::Method::GET, "/api/v1/stats", None).await;
    assert_eq!(s, 401, "{v}");
    assert!(v["error"]["message"].as_str().unwrap().contains("revoked"), "{v}");
    let (s, v) =
        api.post("/api/v1/tokens", r#"{"name": "gone", "role": "viewer", "expires_in": "1ms"}"#).await;
    assert_eq!(s, 201, "{v}");
    let gone = v["secret"].as_str().unwrap().to_owned();
    let expired = attune_testkit::wait_for("the token to expire", Duration::from_secs(5), || async {
        let (s, v) = api.raw_as(Some(&gone), reqwest::Method::GET, "/api/v1/stats", None).await;
        (s == 401).then_some(v)
    })
    .await;
    assert!(expired["error"]["message"].as_str().unwrap().contains("expired"), "{expired}");
    // Tokens are listed without secrets, and their names are unique while in use.
    let (_, list) = api.raw(reqwest::Method::GET, "/api/v1/tokens", None).await;
    assert!(!list.to_string().contains("attune_"), "no secret in a listing: {list}");
    let (s, v) = api.post("/api/v1/tokens", r#"{"name": "test-admin", "role": "viewer"}"#).await;
    assert_eq!((s, code(&v)), (409, "already_done"), "{v}");
    let (s, v) = api.post("/api/v1/tokens", r#"{"name": "x", "role": "agent"}"#).await;
    assert_eq!((s, code(&v)), (422, "invalid_token"), "{v}");
    // The last admin token cannot be revoked (nobody could administer the platform after it);
    // once there is another, it can.
    let (s, v) = api.post("/api/v1/tokens/test-admin/revoke", "{}").await;
    assert_eq!((s, code(&v)), (403, "forbidden"), "{v}");
    assert!(v["error"]["message"].as_str().unwrap().contains("last admin token"), "{v}");
    let (_, v) = api.post("/api/v1/tokens", r#"{"name": "second-admin", "role": "admin"}"#).await;
    let second = v["secret"].as_str().unwrap().to_owned();
    let (s, v) = api.post("/api/v1/tokens/test-admin/revoke", "{}").await;
    assert_eq!(s, 200, "{v}");
    let (s, _) = api.post_as(&second, "/api/v1/tokens/second-admin/revoke", "{}").await;
    assert_eq!(s, 403, "the second is now the last");
    api.stop().await;
}

/// A secret key goes in once: never shown by the API, stored sealed, checked at submission,
/// opened only in the task handed to the worker (marked secret there, and masked), sealed again
/// by a master key rotation; a key gone by hand-out time fails the execution with the reason.
async fn secret_keys_are_sealed_and_opened_only_for_the_worker(db: TestDb) {
    let api = Api::start(db).await;
    let secret = "pa55-w0rd-7c1d";
    let set = json!({"name": "db_pw", "value": secret, "secret": true}).to_string();
    let (s, v) = api.post_as(&api.viewer, "/api/v1/keys", &set).await;
    assert_eq!((s, code(&v)), (403, "forbidden"), "{v}");
    let (s, v) = api.post("/api/v1/keys", &set).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(
        (v["name"].as_str(), v["secret"].as_bool(), v.get("value")),
        (Some("db_pw"), Some(true), None)
    );
    let (s, v) = api.post("/api/v1/keys", r#"{"name": "region", "value": "eu-1"}"#).await;
    assert_eq!((s, v["value"].as_str()), (200, Some("eu-1")), "{v}");
    for path in ["/api/v1/keys", "/api/v1/keys/db_pw"] {
        let (s, v) = api.raw_as(Some(&api.viewer), reqwest::Method::GET, path, None).await;
        assert_eq!(s, 200, "{path}: {v}");
        assert!(!v.to_string().contains(secret), "{path}: {v}");
    }
    let (s, v) = api.post("/api/v1/keys", r#"{"name": "bad name", "value": "x"}"#).await;
    assert_eq!((s, code(&v)), (422, "invalid_key"), "{v}");

    // At submission: the templates compile and their keys exist; the execution keeps the text.
    // (core.fail is a builtin with a string parameter: the test's worker runs builtins only.)
    let run =
        |message: &str| json!({"action_ref": "core.fail", "parameters": {"message": message}}).to_string();
    let (s, v) = api.post("/api/v1/executions", &run("{{ key('nope') }}")).await;
    assert_eq!((s, code(&v)), (422, "invalid_parameters"), "{v}");
    assert!(v.to_string().contains("key \\\"nope\\\" is not set"), "{v}");
    let (s, v) = api.post("/api/v1/executions", &run("{{ key('db_pw' }}")).await;
    assert_eq!(s, 422, "{v}");
    let template = "pw={{ key('db_pw') }} in {{ key('region') }}";
    let (s, v) = api.post("/api/v1/executions", &run(template)).await;
    assert_eq!(s, 201, "{v}");
    assert_eq!(v["parameters"]["message"], template);
    let id = v["id"].as_str().unwrap().to_owned();

    // Handed to a worker: rendered, marked secret, masked.
    let w = register(&api, "w1").await;
    let t = w.client.poll(w.id, 1, Duration::from_secs(5)).await.unwrap().tasks.remove(0);
    assert_eq!(t.execution_id.to_string(), id);
    assert_eq!(t.parameters["message"], format!("pw={secret} in eu-1"));
    assert_eq!(t.action.parameters["properties"]["message"]["secret"], true);
    assert_eq!(t.masks, vec![secret.to_string()]);
    assert_eq!(t.parameter_error, None);
    let (_, e) = api.raw(reqwest::Method::GET, &format!("/api/v1/executions/{id}"), None).await;
    assert!(!e.to_string().contains(secret), "{e}");

    // A rotation seals it again; it still opens, and the old master key is gone from the file.
    let before = std::fs::read_to_string(api.keys_dir.path().join("master.key")).unwrap();
    let (s, v) = api.post("/api/v1/keys/rotate-master", "{}").await;
    assert_eq!((s, v["resealed"].as_u64()), (200, Some(1)), "{v}");
    let after = std::fs::read_to_string(api.keys_dir.path().join("master.key")).unwrap();
    let keys = |t: &str| {
        t.lines().filter(|l| !l.starts_with('#') && !l.is_empty()).map(str::to_owned).collect::<Vec<_>>()
    };
    assert_eq!(keys(&after).len(), 1);
    assert_ne!(keys(&after), keys(&before));
    let (s, _) = api.post("/api/v1/executions", &run("{{ key('db_pw') }}")).await;
    assert_eq!(s, 201);
    let t = w.client.poll(w.id, 1, Duration::from_secs(5)).await.unwrap().tasks.remove(0);
    assert_eq!(t.parameters["message"], secret);

    // Deleted before hand-out: the task says why, and carries no parameters.
    let (s, _) = api.post("/api/v1/executions", &run("{{ key('db_pw') }}")).await;
    assert_eq!(s, 201);
    let (s, v) = api.raw_as(Some(&api.admin), reqwest::Method::DELETE, "/api/v1/keys/db_pw", None).await;
    assert_eq!(s, 200, "{v}");
    let t = w.client.poll(w.id, 1, Duration::from_secs(5)).await.unwrap().tasks.remove(0);
    assert!(t.parameter_error.as_deref().unwrap().contains("key \"db_pw\" is not set"), "{t:?}");
    assert_eq!(t.parameters, json!({}));
    api.stop().await;
}

/// The event's detail once every rule has recorded its enforcement.
async fn processed(api: &Api, id: &str) -> Value {
    attune_testkit::wait_for("the event processed", Duration::from_secs(10), || async {
        let (s, v) = api.raw(reqwest::Method::GET, &format!("/api/v1/trigger-events/{id}"), None).await;
        (s == 200 && !v["processed_at"].is_null()).then_some(v)
    })
    .await
}

/// Issue 12: webhooks and emitted events fire the rules they match, once each, with parameters
/// from the payload; what does not match is recorded with the criterion that failed; payload text
/// that looks like a template stays text; bad payloads store nothing.
async fn rules_fire_on_webhooks_and_emitted_events(db: TestDb) {
    let api = Api::start(db).await;
    let (s, v) = api.post("/api/v1/webhooks/alerts", r#"{"status": "failed", "service": "web"}"#).await;
    assert_eq!(s, 202, "{v}");
    let hit = processed(&api, v["id"].as_str().unwrap()).await;
    let enf = &hit["enforcements"].as_array().unwrap();
    assert_eq!(enf.len(), 1, "{hit}");
    assert_eq!(
        (enf[0]["rule_ref"].as_str(), enf[0]["outcome"].as_str()),
        (Some("examples.on_alert"), Some("matched"))
    );
    let exec_id = enf[0]["execution_id"].as_str().unwrap();
    let (_, e) = api.raw(reqwest::Method::GET, &format!("/api/v1/executions/{exec_id}"), None).await;
    assert_eq!(e["parameters"]["message"], "restart web", "{e}");
    assert_eq!(e["enforcement"], enf[0]["id"], "the execution points back at its enforcement");
    assert_eq!(e["history"][0]["actor"], "rule:examples.on_alert", "{e}");

    let (s, v) = api.post("/api/v1/webhooks/alerts", r#"{"status": "ok", "service": "web"}"#).await;
    assert_eq!(s, 202);
    let miss = processed(&api, v["id"].as_str().unwrap()).await;
    assert_eq!(miss["enforcements"][0]["outcome"], "not_matched", "{miss}");
    let reason = miss["enforcements"][0]["reason"].as_str().unwrap();
    assert!(reason.starts_with("payload.status equals \"failed\": found \"ok\""), "{reason}");

    // A payload that tries to name a key or run an expression reaches the action as its text.
    let (s, _) = api.post("/api/v1/keys", r#"{"name": "db_pw", "value": "s3cr3t", "secret": true}"#).await;
    assert_eq!(s, 200);
    let evil = "{{ key('db_pw') }} {{ 6 * 7 }}";
    let body = json!({"status": "failed", "service": evil}).to_string();
    let (s, v) = api.post("/api/v1/webhooks/alerts", &body).await;
    assert_eq!(s, 202);
    let d = processed(&api, v["id"].as_str().unwrap()).await;
    assert_eq!(d["enforcements"][0]["outcome"], "matched", "{d}");
    let w = register_for(&api, "w1", vec![Runtime::Shell]).await;
    let mut tasks = w.client.poll(w.id, 10, Duration::from_secs(5)).await.unwrap().tasks;
    let t = tasks.iter_mut().find(|t| t.execution_id.to_string() != exec_id).expect("the second execution");
    assert_eq!(t.parameters["message"], format!("restart {evil}"), "{t:?}");
    assert!(t.masks.is_empty());

    // Emitted events are checked against their trigger type's payload schema.
    let before =
        api.raw(reqwest::Method::GET, "/api/v1/trigger-events", None).await.1.as_array().unwrap().len();
    for (body, want) in [
        (r#"{"trigger": "examples.disk_alert", "payload": {"host": "db1"}}"#, "invalid_payload"),
        (
            r#"{"trigger": "examples.disk_alert", "payload": {"host": "db1", "used": "lots"}}"#,
            "invalid_payload",
        ),
        (r#"{"trigger": "examples.nope", "payload": {}}"#, "unknown_trigger"),
        (r#"{"trigger": "core.interval", "parameters": {"seconds": 0}}"#, "invalid_trigger_parameters"),
    ] {
        let (s, v) = api.post("/api/v1/trigger-events", body).await;
        assert_eq!((s, code(&v)), (422, want), "{body}: {v}");
    }
    let (s, v) =
        api.post_as(&api.viewer, "/api/v1/trigger-events", r#"{"trigger": "examples.disk_alert"}"#).await;
    assert_eq!((s, code(&v)), (403, "forbidden"));
    let after =
        api.raw(reqwest::Method::GET, "/api/v1/trigger-events", None).await.1.as_array().unwrap().len();
    assert_eq!(before, after, "refused events are not stored");
    let (s, v) = api
        .post_as(
            &api.operator,
            "/api/v1/trigger-events",
            r#"{"trigger": "examples.disk_alert", "payload": {"host": "db1", "used": 93}}"#,
        )
        .await;
    assert_eq!((s, v["source"].as_str()), (201, Some("user:test-operator")), "{v}");
    let d = processed(&api, v["id"].as_str().unwrap()).await;
    assert_eq!(d["enforcements"][0]["rule_ref"], "examples.disk_full", "{d}");
    assert_eq!(d["enforcements"][0]["outcome"], "matched", "{d}");

    // The tester runs the same code, and changes nothing.
    let n = api.executions().await;
    let (s, v) =
        api.post("/api/v1/rules/examples.disk_full/test", r#"{"payload": {"host": "h", "used": 50}}"#).await;
    assert_eq!(
        (s, v["outcome"].as_str(), v["criteria"][0]["holds"].as_bool()),
        (200, Some("not_matched"), Some(false)),
        "{v}"
    );
    let (s, v) =
        api.post("/api/v1/rules/examples.disk_full/test", r#"{"payload": {"host": "h", "used": 95}}"#).await;
    assert_eq!((s, v["outcome"].as_str()), (200, Some("matched")), "{v}");
    assert_eq!(v["parameters"]["message"], "clean up h: 95 % used");
    assert_eq!(api.executions().await, n, "testing a rule runs nothing");
    let (s, v) = api.post("/api/v1/webhooks/nobody", "{}").await;
    assert_eq!((s, code(&v)), (404, "unknown_webhook"));

    // On the stream: every event as it arrived, and what each rule did with it.
    let received = read_sse(&api, "/api/v1/events?kind=event&after=0-0-0", None, |ev| ev.len() >= 4).await;
    assert!(
        received.iter().all(|(_, name, d)| name == "EventReceived" && d["event_id"].is_string()),
        "{received:?}"
    );
    assert_eq!(received[0].2["trigger"], "core.webhook");
    let ruled = read_sse(&api, "/api/v1/events?kind=enforcement&after=0-0-0", None, |ev| ev.len() >= 4).await;
    let names: Vec<&str> = ruled.iter().map(|(_, n, _)| n.as_str()).collect();
    assert_eq!(&names[..2], ["RuleMatched", "RuleNotMatched"], "{ruled:?}");
    assert_eq!(ruled[0].2["rule"], "examples.on_alert");
    assert_eq!(ruled[0].2["execution_id"].as_str(), Some(exec_id));
    api.stop().await;
}

/// Issue 12: a webhook that names a secret key takes signed calls without a token, and refuses
/// unsigned or wrongly signed ones; a disabled rule fires nothing; an interval rule fires on its
/// own, and `overlap: skip` records the ticks it skipped.
async fn signed_webhooks_timers_and_disabled_rules(db: TestDb) {
    use hmac::Mac;
    let api = Api::start(db).await;
    let body = r#"{"ref": "v1.2"}"#;
    let sign = |secret: &str| {
        let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).unwrap();
        mac.update(body.as_bytes());
        format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
    };
    let call = |sig: Option<String>| {
        let url = format!("{}/api/v1/webhooks/deploy", api.url);
        async move {
            let mut req =
                reqwest::Client::new().post(url).header("content-type", "application/json").body(body);
            if let Some(s) = sig {
                req = req.header("x-attune-signature", s);
            }
            let resp = req.send().await.unwrap();
            let status = resp.status().as_u16();
            (status, resp.json::<Value>().await.unwrap())
        }
    };
    // The key is not set yet: nothing verifies.
    assert_eq!(call(Some(sign("hook-s3cret"))).await.0, 401);
    let (s, _) = api
        .post("/api/v1/keys", r#"{"name": "deploy_hook_secret", "value": "hook-s3cret", "secret": true}"#)
        .await;
    assert_eq!(s, 200);
    let (s, v) = call(None).await;
    assert_eq!((s, code(&v)), (401, "unauthorized"), "{v}");
    let (s, v) = call(Some(sign("wrong"))).await;
    assert_eq!((s, code(&v)), (401, "bad_signature"), "{v}");
    let (s, v) = call(Some("sha256=zz".into())).await;
    assert_eq!((s, code(&v)), (401, "bad_signature"), "{v}");
    let (s, v) = call(Some(sign("hook-s3cret"))).await;
    assert_eq!(s, 202, "{v}");
    let d = processed(&api, v["id"].as_str().unwrap()).await;
    assert_eq!(d["enforcements"][0]["outcome"], "matched", "{d}");
    assert!(!d.to_string().contains("hook-s3cret"));
    // A signature on a webhook without a secret key is no way in.
    let (s, v) = api
        .raw_as(None, reqwest::Method::POST, "/api/v1/webhooks/alerts", Some(r#"{"status": "failed"}"#))
        .await;
    assert_eq!((s, code(&v)), (401, "unauthorized"), "{v}");

    // Disabled: nothing fires; and a disabled interval rule has no timer.
    let (s, v) = api.post("/api/v1/rules/examples.on_alert/disable", "{}").await;
    assert_eq!((s, v["enabled"].as_bool()), (200, Some(false)), "{v}");
    let (s, v) = api.post("/api/v1/webhooks/alerts", r#"{"status": "failed"}"#).await;
    assert_eq!((s, code(&v)), (404, "unknown_webhook"), "{v}");
    let (s, v) = api.post_as(&api.operator, "/api/v1/rules/examples.every_two_seconds/enable", "{}").await;
    assert_eq!((s, code(&v)), (403, "forbidden"));
    let n = api.executions().await;
    let (s, _) = api.post("/api/v1/rules/examples.every_two_seconds/enable", "{}").await;
    assert_eq!(s, 200);
    // Nothing runs the echo here (no shell worker), so the first tick's execution stays open and
    // the next ticks are skipped (overlap: skip), each recorded.
    let recorded = attune_testkit::wait_for("two ticks enforced", Duration::from_secs(15), || async {
        let (_, v) = api.raw(reqwest::Method::GET, "/api/v1/rules/examples.every_two_seconds", None).await;
        let e = v["recent_enforcements"].as_array()?.clone();
        (e.len() >= 2).then_some(e)
    })
    .await;
    let outcomes: Vec<&str> = recorded.iter().map(|e| e["outcome"].as_str().unwrap()).collect();
    assert_eq!(outcomes.last(), Some(&"matched"), "{recorded:?}");
    assert!(outcomes[..outcomes.len() - 1].iter().all(|o| *o == "skipped"), "{recorded:?}");
    assert_eq!(api.executions().await, n + 1, "one execution, the other ticks skipped");
    let (_, ev) = api.raw(reqwest::Method::GET, "/api/v1/trigger-events?trigger=core.interval", None).await;
    assert_eq!(ev[0]["source"], "timer");
    api.stop().await;
}

/// Issue 12, `overlap: buffer_one`: while the rule's execution is open, the next event's run waits
/// (a `buffered` enforcement) and any more are skipped; when the open one ends, the waiting one
/// starts, and its enforcement becomes `matched` with that execution.
async fn buffer_one_keeps_one_run_waiting(db: TestDb) {
    let api = Api::start(db).await;
    let mut ids = Vec::new();
    for n in 0..3 {
        let (s, v) = api.post("/api/v1/webhooks/deploys", &format!(r#"{{"n": {n}}}"#)).await;
        assert_eq!(s, 202, "{v}");
        // One at a time, so that each sees what the one before did.
        processed(&api, v["id"].as_str().unwrap()).await;
        ids.push(v["id"].as_str().unwrap().to_owned());
    }
    let outcome = |d: &Value| d["enforcements"][0]["outcome"].as_str().unwrap_or_default().to_owned();
    let first = processed(&api, &ids[0]).await;
    assert_eq!(outcome(&first), "matched", "{first}");
    let second = processed(&api, &ids[1]).await;
    assert_eq!(outcome(&second), "buffered", "{second}");
    assert!(second["enforcements"][0]["execution_id"].is_null());
    let third = processed(&api, &ids[2]).await;
    assert_eq!(outcome(&third), "skipped", "{third}");
    assert!(
        third["enforcements"][0]["reason"].as_str().unwrap().contains("one run waits already"),
        "{third}"
    );
    let n = api.executions().await;
    // Nothing runs here (no worker): the first stays open until it is canceled.
    let x = first["enforcements"][0]["execution_id"].as_str().unwrap();
    let (s, v) = api.post(&format!("/api/v1/executions/{x}/cancel"), "{}").await;
    assert_eq!(s, 200, "{v}");
    let second = attune_testkit::wait_for("the buffered run started", Duration::from_secs(10), || async {
        let (_, v) = api.raw(reqwest::Method::GET, &format!("/api/v1/trigger-events/{}", ids[1]), None).await;
        (v["enforcements"][0]["outcome"] == "matched").then_some(v)
    })
    .await;
    let started = second["enforcements"][0]["execution_id"].as_str().unwrap().to_owned();
    let (_, e) = api.raw(reqwest::Method::GET, &format!("/api/v1/executions/{started}"), None).await;
    assert_eq!(e["action_ref"], "core.sleep", "{e}");
    assert_eq!(
        e["enforcement"], second["enforcements"][0]["id"],
        "the execution points back to its enforcement"
    );
    assert_eq!(api.executions().await, n + 1, "one more run, not two");
    // Disabled while one waits: the waiting run is settled, not started.
    let (s, _) = api.post("/api/v1/webhooks/deploys", r#"{"n": 3}"#).await;
    assert_eq!(s, 202);
    let (_, rule) = attune_testkit::wait_for("a run waiting again", Duration::from_secs(10), || async {
        let (s, v) = api.raw(reqwest::Method::GET, "/api/v1/rules/examples.deploy_serially", None).await;
        (v["recent_enforcements"][0]["outcome"] == "buffered").then_some((s, v))
    })
    .await;
    let waiting = rule["recent_enforcements"][0]["event_id"].as_str().unwrap().to_owned();
    let (s, _) = api.post("/api/v1/rules/examples.deploy_serially/disable", "{}").await;
    assert_eq!(s, 200);
    let settled = attune_testkit::wait_for("the waiting run settled", Duration::from_secs(10), || async {
        let (_, v) = api.raw(reqwest::Method::GET, &format!("/api/v1/trigger-events/{waiting}"), None).await;
        (v["enforcements"][0]["outcome"] == "skipped").then_some(v)
    })
    .await;
    assert!(settled["enforcements"][0]["reason"].as_str().unwrap().contains("disabled"), "{settled}");
    assert_eq!(api.executions().await, n + 1);
    api.stop().await;
}

/// Issue 16: `on_limit: cancel_new` cancels a submission whose key is at its limit, and
/// `cancel_oldest` cancels the key's oldest open execution instead; other keys are untouched; a
/// key that cannot be rendered is refused.
async fn on_limit_cancels_the_new_or_the_oldest(db: TestDb) {
    let api = Api::start(db).await;
    let run = |action: &'static str, target: &'static str| {
        let api = &api;
        async move {
            let body =
                format!(r#"{{"action_ref": "policies.{action}", "parameters": {{"target": "{target}"}}}}"#);
            let (s, v) = api.post("/api/v1/executions", &body).await;
            assert_eq!(s, 201, "{v}");
            v
        }
    };
    let status = |id: &Value| {
        let api = &api;
        let id = id.as_str().unwrap().to_owned();
        async move {
            api.raw(reqwest::Method::GET, &format!("/api/v1/executions/{id}"), None).await.1["status"].clone()
        }
    };
    // Nothing runs here (no worker): the first of a key stays open.
    let a = run("first_wins", "db1").await;
    let b = run("first_wins", "db1").await;
    let other = run("first_wins", "db2").await;
    assert_eq!((a["status"].as_str(), b["status"].as_str()), (Some("scheduled"), Some("canceled")), "{b}");
    assert_eq!(other["status"], "scheduled");
    let (_, full) = api
        .raw(reqwest::Method::GET, &format!("/api/v1/executions/{}", b["id"].as_str().unwrap()), None)
        .await;
    assert!(full.to_string().contains("on_limit: cancel_new"), "{full}");

    let x = run("only_newest", "db1").await;
    let y = run("only_newest", "db1").await;
    assert_eq!(y["status"], "scheduled");
    assert_eq!(status(&x["id"]).await, "canceled", "the oldest made room");
    let z = run("only_newest", "db1").await;
    assert_eq!((status(&y["id"]).await, status(&z["id"]).await), (json!("canceled"), json!("scheduled")));
    assert_eq!(status(&a["id"]).await, "scheduled", "another action's limit is its own");
    let metrics = api.http.get(format!("{}/metrics", api.url)).send().await.unwrap().text().await.unwrap();
    assert!(
        metrics.contains("attune_executions_waiting_on_limit{action=\"policies.first_wins\"} 2"),
        "{metrics}"
    );
    assert!(
        metrics.contains("attune_executions_waiting_on_limit{action=\"policies.only_newest\"} 1"),
        "{metrics}"
    );
    api.stop().await;
}

/// Waits for `id` to be in a state `pred` accepts.
async fn until(
    api: &Api,
    id: uuid::Uuid,
    what: &str,
    pred: impl Fn(&attune_core::Execution) -> bool,
) -> attune_core::Execution {
    attune_testkit::wait_for(what, Duration::from_secs(30), || async {
        let e = api.client.get_execution(id).await.ok()?;
        pred(&e).then_some(e)
    })
    .await
}

async fn children(api: &Api, id: uuid::Uuid) -> Vec<attune_core::Execution> {
    api.client.execution_children(id).await.unwrap().items
}

async fn inquiries_are_answered_through_their_schema(db: TestDb) {
    let api = Api::start(db).await;
    let schema = json!({"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"]});
    let ask = api.submit_json("core.ask", json!({"prompt": "ship it?", "schema": schema})).await;
    let id = ask["id"].as_str().unwrap().to_owned();
    let e = until(&api, id.parse().unwrap(), "pending", |e| e.status == ExecutionStatus::Pending).await;
    assert!(e.worker.is_none(), "no worker holds an inquiry");
    let listed = api.client.list_inquiries().await.unwrap();
    assert!(listed.items.iter().any(|i| i.id.to_string() == id));
    let path = format!("/api/v1/inquiries/{id}/respond");
    let (code, body) = api.raw(reqwest::Method::POST, &path, Some(r#"{"response": {"ok": "yes"}}"#)).await;
    assert_eq!(code, 422, "{body}");
    assert!(body["error"]["message"].as_str().unwrap().contains("response field ok"), "{body}");
    let (code, _) = api.raw(reqwest::Method::POST, &path, Some(r#"{"response": {}}"#)).await;
    assert_eq!(code, 422, "a required field missing");
    let (code, _) = api.raw(reqwest::Method::POST, &path, Some(r#"{"answer": {}}"#)).await;
    assert_eq!(code, 422, "unknown field");
    let (code, _) = api
        .raw_as(Some(&api.viewer), reqwest::Method::POST, &path, Some(r#"{"response": {"ok": true}}"#))
        .await;
    assert_eq!(code, 403, "a viewer cannot answer");
    let other = api.submit_json("core.noop", json!({})).await;
    let other_path = format!("/api/v1/inquiries/{}/respond", other["id"].as_str().unwrap());
    let (code, _) = api.raw(reqwest::Method::POST, &other_path, Some(r#"{"response": {}}"#)).await;
    assert_eq!(code, 404, "not an inquiry");
    let e = until(&api, id.parse().unwrap(), "still pending", |e| e.status == ExecutionStatus::Pending).await;
    assert_eq!(e.result, None, "refused answers changed nothing");
    let (code, body) = api.raw(reqwest::Method::POST, &path, Some(r#"{"response": {"ok": true}}"#)).await;
    assert_eq!(code, 200, "{body}");
    assert_eq!((body["status"].as_str(), &body["result"]), (Some("succeeded"), &json!({"ok": true})));
    let (code, _) = api.raw(reqwest::Method::POST, &path, Some(r#"{"response": {"ok": false}}"#)).await;
    assert_eq!(code, 409, "answered once");
    // An inquiry is listed as soon as it is submitted, before the engine opens it; answering it
    // then works too (it is opened, then answered), however the race with the engine goes.
    for _ in 0..10 {
        let ask = api.submit_json("core.ask", json!({"schema": schema})).await;
        let id: uuid::Uuid = ask["id"].as_str().unwrap().parse().unwrap();
        let e = api.client.respond_inquiry(id, json!({"ok": false})).await.unwrap();
        assert_eq!((e.status, e.result), (ExecutionStatus::Succeeded, Some(json!({"ok": false}))));
    }
    // Past its timeout an inquiry ends `timeout`.
    let late = api.submit_json("core.ask", json!({"schema": {"type": "object"}, "timeout": 1})).await;
    let late =
        until(&api, late["id"].as_str().unwrap().parse().unwrap(), "timed out", |e| e.status.is_terminal())
            .await;
    assert_eq!(late.status, ExecutionStatus::Timeout);
    assert_eq!(late.error.unwrap()["error"], "no response within 1 seconds");
    api.stop().await;
}

async fn workflows_pause_and_resume(db: TestDb) {
    let url = db.url.clone();
    let api = Api::start(db).await;
    let wf = api.submit_json("flows.ask_then", json!({})).await;
    let id: uuid::Uuid = wf["id"].as_str().unwrap().parse().unwrap();
    let ask = attune_testkit::wait_for("the inquiry", Duration::from_secs(30), || async {
        children(&api, id).await.into_iter().find(|c| c.status == ExecutionStatus::Pending)
    })
    .await;
    let e = api.client.pause_workflow(id).await.unwrap();
    assert_eq!(e.status, ExecutionStatus::Running);
    api.client.respond_inquiry(ask.id, json!({"go": true})).await.unwrap();
    // The answer is applied, but `after` is held while paused.
    attune_testkit::wait_for("the answer applied", Duration::from_secs(30), || async {
        let c = api.client.execution_children(id).await.ok()?;
        let w = api.client.get_execution(id).await.ok()?;
        (c.items.len() == 1 && w.status == ExecutionStatus::Running).then_some(())
    })
    .await;
    // The engine took the answer and held what it starts (its stored state says so).
    attune_testkit::wait_for("the start held", Duration::from_secs(30), || async {
        let state = stored_state(&url, id).await;
        (state["held"].as_array().map(Vec::len) == Some(1)).then_some(())
    })
    .await;
    assert_eq!(children(&api, id).await.len(), 1, "nothing starts while paused");
    api.client.resume_workflow(id).await.unwrap();
    let after = attune_testkit::wait_for("after starts", Duration::from_secs(30), || async {
        children(&api, id).await.into_iter().find(|c| c.child_key.as_deref() == Some("after/1"))
    })
    .await;
    assert_eq!(after.status, ExecutionStatus::Scheduled);
    let not_wf = api.submit_json("core.noop", json!({})).await;
    let (code, _) = api
        .raw(
            reqwest::Method::POST,
            &format!("/api/v1/executions/{}/pause", not_wf["id"].as_str().unwrap()),
            None,
        )
        .await;
    assert_eq!(code, 422, "only workflows pause");
    let (code, _) = api
        .raw_as(Some(&api.viewer), reqwest::Method::POST, &format!("/api/v1/executions/{id}/pause"), None)
        .await;
    assert_eq!(code, 403);
    // Cancel: the waiting task is canceled at once, and so is the workflow.
    api.client.cancel_execution(id).await.unwrap();
    let e = until(&api, id, "canceled", |e| e.status.is_terminal()).await;
    assert_eq!(e.status, ExecutionStatus::Canceled);
    assert!(children(&api, id).await.iter().all(|c| c.status.is_terminal()));
    api.stop().await;
}

/// st2 #4524: a workflow left `running` with nothing under it (here: its task's execution
/// vanished from the database) is found by the repair monitor, which ends it and says why.
async fn a_workflow_with_nothing_under_it_is_repaired(db: TestDb) {
    let url = db.url.clone();
    let api = Api::start(db).await;
    let wf = api.submit_json("flows.stuck", json!({})).await;
    let id: uuid::Uuid = wf["id"].as_str().unwrap().parse().unwrap();
    let child = attune_testkit::wait_for("the task's execution", Duration::from_secs(30), || async {
        children(&api, id).await.pop()
    })
    .await;
    let delete = "DELETE FROM executions WHERE id = $1";
    if url.starts_with("postgres") {
        let pool = sqlx::PgPool::connect(&url).await.unwrap();
        sqlx::query(delete).bind(child.id.to_string()).execute(&pool).await.unwrap();
    } else {
        let pool = sqlx::SqlitePool::connect(&url).await.unwrap();
        sqlx::query(delete).bind(child.id.to_string()).execute(&pool).await.unwrap();
    }
    let listed = api.client.list_executions(&format!("parent={id}")).await.unwrap();
    assert!(listed.items.is_empty(), "the task's execution is gone");
    let e = until(&api, id, "repaired", |e| e.status.is_terminal()).await;
    assert_eq!(e.status, ExecutionStatus::Failed);
    let err = e.error.unwrap();
    assert_eq!(err["failures"][0]["result"]["failed_by"], "workflow_repair_monitor", "{err}");
    let metrics = api.http.get(format!("{}/metrics", api.url)).send().await.unwrap().text().await.unwrap();
    assert!(metrics.contains("attune_workflow_repairs_total 1"), "{metrics}");
    api.stop().await;
}

/// The workflow engine's stored state of `id`, read from the database.
async fn stored_state(url: &str, id: uuid::Uuid) -> Value {
    let q = "SELECT state FROM workflows WHERE execution_id = $1";
    let text: Option<String> = if url.starts_with("postgres") {
        let pool = sqlx::PgPool::connect(url).await.unwrap();
        sqlx::query_scalar(q).bind(id.to_string()).fetch_optional(&pool).await.unwrap()
    } else {
        let pool = sqlx::SqlitePool::connect(url).await.unwrap();
        sqlx::query_scalar(q).bind(id.to_string()).fetch_optional(&pool).await.unwrap()
    };
    text.map(|t| serde_json::from_str(&t).unwrap()).unwrap_or(Value::Null)
}
