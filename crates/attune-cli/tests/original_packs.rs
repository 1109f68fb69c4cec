//! Packs written for the original Attune (issue 20), end to end with real server and worker
//! processes on both backends: the fixture pack `tests/packs/legacy_ops` is written here in that
//! system's dialect (flat parameters, `runner_type`, bash scripts, its environment names, dotenv
//! with dotted keys, its trigger, rule, sensor, policy and permission-set files). It loads; what
//! this version does not use is reported by name; its actions give the original's results; its
//! rule fires on its trigger.

use std::{io::Read, io::Write, time::Duration};

use attune_core::{Execution, ExecutionStatus};
use attune_testkit::{wait_for, TestDb};
use attune_wire::{CreateExecution, EmitEvent};
use serde_json::{json, Value};

mod common;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_original_pack_loads_and_runs_on_sqlite() {
    scenario(TestDb::sqlite()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_original_pack_loads_and_runs_on_postgres() {
    scenario(TestDb::postgres().await).await;
}

fn fixtures() -> String {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/packs")
        .canonicalize()
        .unwrap()
        .display()
        .to_string()
}

/// An HTTP server on port 0 that answers every GET with the request it received (request line and
/// headers) as the body, on a thread of its own that ends with the test process.
fn echo_server() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            let mut request = Vec::new();
            let mut buf = [0u8; 1024];
            while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                match conn.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => request.extend_from_slice(&buf[..n]),
                }
            }
            let body = String::from_utf8_lossy(&request).replace("\r\n", "\n").trim_end().to_owned();
            let reply = format!(
                "HTTP/1.0 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = conn.write_all(reply.as_bytes());
        }
    });
    port
}

async fn scenario(db: TestDb) {
    let mut env = common::fast_env(&[]);
    env.retain(|(k, _)| k != "ATTUNE__PACKS__DIRS");
    env.push(("ATTUNE__PACKS__DIRS".into(), format!("[{}, {}]", common::packs_dir(), fixtures())));
    let (server, url) = common::server("server", "127.0.0.1:0", &db.url, &env);
    assert!(!server.output().contains("not loaded"), "{}", server.output());
    let client = common::client(&url);

    // Loading it again by hand lists what loaded and, by name, what was skipped and why.
    let load = common::cli(&url, &["pack", "load", "legacy_ops"]);
    assert_eq!(load.code, 0, "{load:?}");
    for shown in [
        "legacy_ops.http_probe",
        "legacy_ops.page_on_host_down",
        "legacy_ops.every_minute",
        "legacy_ops.host_down",
        "policies/one_deploy.yaml",
        "permission_sets/operator.yaml",
        "sensors/host_watch.yaml",
        "sensors/timer.yaml",
        "rules/by_expression.yaml",
        "actions/audit.yaml",
        "legacy_ops.rollout",
    ] {
        assert!(load.stdout.contains(shown), "pack load shows {shown}:\n{}", load.stdout);
    }
    // `pack show`: the keys accepted without use, file by file, and the configuration.
    let show = common::cli(&url, &["pack", "show", "legacy_ops", "-o", "json"]).json();
    let pack = &show["pack"];
    assert_eq!(pack["label"], "Legacy operations");
    assert_eq!(pack["config"], json!({"greeting": "hello", "retries": 2}));
    assert_eq!(pack["conf_schema"]["properties"]["retries"], json!({"type": "integer", "minimum": 0}));
    let note = |file: &str| {
        pack["notes"].as_array().unwrap().iter().find(|n| n["file"] == file).cloned().unwrap_or(Value::Null)
    };
    assert_eq!(
        note("pack.yaml")["keys"],
        json!([
            "author",
            "email",
            "tags",
            "meta",
            "system",
            "enabled",
            "runtime_deps",
            "dependencies",
            "testing"
        ])
    );
    assert_eq!(note("actions/http_probe.yaml")["keys"], json!(["label", "tags"]));
    assert!(note("rules/by_expression.yaml")["note"].as_str().unwrap().contains("conditions.expression"));
    assert!(
        note("actions/audit.yaml")["note"].as_str().unwrap().contains("`task`"),
        "{}",
        note("actions/audit.yaml")
    );
    let probe = client.get_action("legacy_ops.http_probe").await.unwrap();
    assert_eq!(probe.runtime, attune_core::Runtime::Shell, "runner_type: bash");
    assert_eq!(probe.timeout_seconds, Some(30), "timeout");
    assert_eq!(probe.parameters["required"], json!(["url"]), "required: true lifted");
    assert_eq!(probe.secret_parameters(), vec!["token".to_owned()], "secret: true kept");
    assert!(probe.output_schema.unwrap()["properties"]["status_code"].is_object(), "output");
    // Its policy file is its queue policy here.
    let c = probe.concurrency.clone().expect("the policy's concurrency");
    assert_eq!((c.limit, c.key.as_deref()), (1, Some("{{ parameters.url }}")));
    let r = probe.rate_limit.clone().expect("the policy's rate limit");
    assert_eq!((r.per_second, r.burst), (10.0, Some(100)));
    assert_eq!(note("policies/one_deploy.yaml")["keys"], json!(["name", "priority"]));
    // Its sensor loads, disabled (its program speaks the original's protocol), with its trigger
    // qualified and `config` as its parameters; one feeding the original's timers is skipped.
    let sensor = client.get_sensor("legacy_ops.host_watch").await.unwrap();
    assert!(!sensor.effective_enabled);
    assert_eq!(sensor.sensor.runtime, attune_core::Runtime::Native);
    assert_eq!(sensor.sensor.trigger_types[0].as_str(), "legacy_ops.host_down");
    assert_eq!(note("sensors/host_watch.yaml")["keys"], json!(["poll_interval"]));
    assert!(note("sensors/timer.yaml")["note"].as_str().unwrap().contains("built into this version"));

    let _worker = common::worker("w1", &url, &env);
    let run = |action: &str, parameters: Value| {
        let client = client.clone();
        let req =
            CreateExecution { action_ref: action.into(), parameters: Some(parameters), ..Default::default() };
        async move {
            let e = client.create_execution(&req).await.unwrap();
            client.wait_execution(e.id, false, Duration::from_secs(30)).await.unwrap()
        }
    };
    let done = |e: &Execution| {
        assert_eq!(
            e.status,
            ExecutionStatus::Succeeded,
            "{} {:?} {} {}",
            e.action_ref,
            e.error,
            e.stdout,
            e.stderr
        );
    };

    // Headers and query parameters reach the HTTP server: dotenv with dotted keys, read by bash
    // (`[[ =~ ]]`, `/dev/tcp`, `set -o pipefail`); the JSON printed last is the result; the secret
    // is masked in it.
    let port = echo_server();
    let e = run(
        "legacy_ops.http_probe",
        json!({"url": format!("http://127.0.0.1:{port}/probe"), "headers": {"X-Probe": "it's me"},
               "query_params": {"q": "1"}, "token": "s3cret-token"}),
    )
    .await;
    done(&e);
    let result = e.result.clone().unwrap();
    assert_eq!(result["status_code"], 200);
    let request = result["request"].as_str().unwrap();
    assert!(request.starts_with("GET /probe?q=1 HTTP/1.0"), "{request}");
    assert!(request.contains("X-Probe: it's me"), "{request}");
    assert!(request.contains("Authorization: Bearer ********") && !request.contains("s3cret"), "{request}");

    // No runner_type (shell by default), the older ATTUNE_ACTION_<NAME> names, ATTUNE_EXEC_ID,
    // ATTUNE_PACK_REF, run in the pack's directory (the worker's copy of the version it runs).
    let e = run("legacy_ops.greet", json!({"name": "Ada", "times": 2})).await;
    done(&e);
    let version = e.pack_digest.clone().expect("a stored pack version");
    assert_eq!(e.stdout, format!("hello Ada\nhello Ada\nexec {} in {version} with stdin/json\n", e.id));
    // jsonl keeps the lines that parse; file delivery names ATTUNE_PARAMETER_FILE; JSON after log
    // lines is read from the last line; text where JSON was promised does not fail the run.
    let e = run("legacy_ops.count", json!({"n": 3})).await;
    done(&e);
    assert_eq!(e.result, Some(json!([{"i": 0}, {"i": 1}, {"i": 2}])));
    let e = run("legacy_ops.report", json!({"level": "warn"})).await;
    done(&e);
    assert_eq!(e.result, Some(json!({"level": "warn", "ok": true})));
    let e = run("legacy_ops.plain", json!({})).await;
    done(&e);
    assert_eq!((e.result.clone(), e.stdout.as_str()), (None, "not json at all\n"));
    // The original's workflow (workflow_file: tasks as a list, with_items over `parameters`,
    // `item`, publish as a list, on_success, output_map, its functions) runs as a workflow.
    let e = run("legacy_ops.rollout", json!({"hosts": ["a", "b", "c"]})).await;
    done(&e);
    assert_eq!(e.result, Some(json!({"hosts": 3, "first": "A", "has_b": true})));
    let children = client.list_executions(&format!("parent={}", e.id)).await.unwrap().items;
    let mut greeted: Vec<String> = children
        .iter()
        .filter(|c| c.action_ref.as_str() == "legacy_ops.greet")
        .map(|c| c.parameters["name"].as_str().unwrap().to_owned())
        .collect();
    greeted.sort();
    assert_eq!(greeted, ["a", "b", "c"]);
    assert_eq!(children.len(), 5, "three greetings, the count and the no-op");
    // The original's core.ask parameters (prompt, response_schema): the answer is checked
    // against response_schema, then the workflow goes on.
    let req = CreateExecution {
        action_ref: "legacy_ops.approve".into(),
        parameters: Some(json!({"who": "Grace"})),
        ..Default::default()
    };
    let flow = client.create_execution(&req).await.unwrap();
    let inquiry = wait_for("the inquiry", Duration::from_secs(30), || async {
        let l = client.list_inquiries().await.ok()?;
        l.items.into_iter().find(|i| i.parent == Some(flow.id))
    })
    .await;
    let wrong = client.respond_inquiry(inquiry.id, json!({"ok": "yes"})).await.unwrap_err();
    assert_eq!(wrong.status(), Some(422), "{wrong}");
    client.respond_inquiry(inquiry.id, json!({"ok": true})).await.unwrap();
    let e = client.wait_execution(flow.id, false, Duration::from_secs(30)).await.unwrap();
    done(&e);
    assert_eq!(e.result, Some(json!({"approved": true})));
    // enabled: false is honoured: refused, nothing stored.
    let refused = common::cli(&url, &["run", "legacy_ops.retired"]);
    assert_eq!(refused.code, 2, "{refused:?}");
    assert!(refused.stderr.contains("legacy_ops.retired is disabled"), "{refused:?}");

    // The original's rule (trigger_ref, conditions, action_params over event.payload) fires on
    // its trigger when the condition holds, and not otherwise.
    for (host, severity) in [("db1", "low"), ("db2", "high")] {
        let emit = EmitEvent {
            trigger: "legacy_ops.host_down".into(),
            parameters: None,
            payload: Some(json!({"host": host, "severity": severity})),
        };
        client.emit_event(&emit).await.unwrap();
    }
    let greeted = wait_for("the rule's execution", Duration::from_secs(30), || async {
        let l = client.list_executions("action_ref=legacy_ops.greet&status=succeeded").await.ok()?;
        l.items.into_iter().find(|e| e.parameters["name"] == "hello db2")
    })
    .await;
    assert!(greeted.stdout.starts_with("hello hello db2\n"), "pack.config.greeting: {}", greeted.stdout);
    let all = client.list_executions("action_ref=legacy_ops.greet").await.unwrap().items;
    assert!(all.iter().all(|e| e.parameters["name"] != "hello db1"), "severity low does not match");
    let rules = client.list_rules().await.unwrap();
    let timer = rules.iter().find(|r| r.rule_ref.as_str() == "legacy_ops.every_minute").unwrap();
    assert_eq!(timer.trigger.type_ref.as_str(), "core.interval");
    assert_eq!(timer.trigger.parameters, json!({"seconds": 60}));
    assert!(!timer.enabled);
}

/// `attune up` says which packs loaded (and that one has notes) and which were refused, with the
/// first error of each; a pack directory with no pack in it is reported as such.
#[test]
fn up_says_which_packs_loaded_and_which_were_refused() {
    let broken = tempfile::tempdir().unwrap();
    let b = broken.path().join("broken");
    std::fs::create_dir_all(b.join("actions")).unwrap();
    std::fs::write(b.join("pack.yaml"), "ref: broken\nversion: 1\n").unwrap();
    std::fs::write(b.join("actions/x.yaml"), "ref: x\nruntime: cobol\nentry_point: x\n").unwrap();
    std::fs::write(b.join("actions/y.yaml"), "ref: y\nrunner_type: fortran\nentry_point: y\n").unwrap();
    let up = |dirs: String| {
        let data = tempfile::tempdir().unwrap();
        let dd = data.path().display().to_string();
        let mut p = attune_testkit::Proc::spawn(
            "attune up",
            common::BIN,
            &["up", "--listen", "127.0.0.1:0", "--data-dir", &dd],
            &[("ATTUNE__PACKS__DIRS", dirs.as_str())],
        );
        p.keep(data);
        p
    };
    let p = up(format!("[{}, {}]", fixtures(), broken.path().display()));
    let refused = p.wait_line(Duration::from_secs(30), |l| l.contains("refused:").then(|| l.to_owned()));
    assert!(refused.contains("broken/actions/x.yaml") && refused.contains("cobol"), "{refused}");
    assert!(refused.contains("(and 1 more)"), "{refused}");
    let out = p.output();
    assert!(out.contains("legacy_ops (8 actions, 2 rules, "), "{out}");
    assert!(out.contains("notes: attune pack show legacy_ops"), "{out}");
    drop(p);
    let empty = tempfile::tempdir().unwrap();
    let p = up(format!("[{}]", empty.path().display()));
    let line = p.wait_line(Duration::from_secs(30), |l| l.contains("Packs").then(|| l.to_owned()));
    assert!(
        line.contains("none found in") && line.contains("a pack is a directory with a pack.yaml"),
        "{line}"
    );
}
