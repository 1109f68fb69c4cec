//! Runtimes against real processes: every runtime and output format, every parameter delivery and
//! format, secret masking, capture caps, timeouts that take background children with them,
//! cancellation, and malformed output.

use std::{path::Path, time::Duration};

use attune_core::{
    Action, ActionRef, ExecutionStatus, OutputFormat, PackRef, ParameterDelivery, ParameterFormat, Report,
    RetryPolicy, Runtime, Task,
};
use attune_worker::runtime::{execute, RunContext};
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

fn ctx(scratch: &Path) -> RunContext {
    RunContext {
        api_url: "http://127.0.0.1:1".into(),
        max_output: 1024 * 1024,
        kill_grace: Duration::from_millis(500),
        scratch_dir: scratch.to_path_buf(),
        tap: None,
        packs: None,
    }
}

fn examples() -> attune_pack::LoadedPack {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../packs/examples");
    attune_pack::load_pack_dir(&dir).unwrap_or_else(|e| panic!("{e}"))
}

fn task(action: Action, parameters: Value) -> Task {
    Task {
        execution_id: Uuid::now_v7(),
        lease_token: "t".into(),
        attempt: 1,
        max_attempts: 1,
        timeout_seconds: action.timeout_seconds,
        action,
        parameters,
        masks: Vec::new(),
        parameter_error: None,
    }
}

async fn run_example(name: &str, parameters: Value) -> Report {
    let pack = examples();
    let a =
        pack.actions.into_iter().find(|a| a.action_ref.name() == name).unwrap_or_else(|| panic!("no {name}"));
    let scratch = tempfile::tempdir().unwrap();
    execute(&task(a, parameters), &ctx(scratch.path()), CancellationToken::new()).await
}

/// A throw-away action around a script written for the test.
struct Scratch {
    dir: tempfile::TempDir,
}

impl Scratch {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("actions")).unwrap();
        Scratch { dir }
    }

    fn action(&self, runtime: Runtime, file: &str, body: &str) -> Action {
        let p = self.dir.path().join("actions").join(file);
        std::fs::write(&p, body).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        Action {
            action_ref: ActionRef::parse("scratch.a").unwrap(),
            pack: PackRef::parse("scratch").unwrap(),
            description: String::new(),
            runtime,
            entry_point: file.into(),
            parameters: json!({"type": "object"}),
            parameter_delivery: ParameterDelivery::Stdin,
            parameter_format: ParameterFormat::Json,
            output_format: OutputFormat::Text,
            timeout_seconds: None,
            retry: RetryPolicy::default(),
            pack_dir: Some(self.dir.path().display().to_string()),
            pack_digest: None,
            scheduled_timeout_seconds: None,
            worker_selector: Default::default(),
            concurrency: None,
            rate_limit: None,
            priority: 0,
            workflow: None,
            enabled: true,
            output_schema: None,
            dialect: Default::default(),
        }
    }

    async fn run(&self, a: Action, params: Value) -> Report {
        execute(&task(a, params), &ctx(self.dir.path()), CancellationToken::new()).await
    }
}

#[tokio::test]
async fn python_json_goes_to_result_and_stdout_is_empty() {
    let r = run_example("python_json", json!({"name": "ops", "count": 4})).await;
    assert_eq!(r.status, ExecutionStatus::Succeeded, "{r:?}");
    assert_eq!(r.result, Some(json!({"greeting": "hello ops", "sum": 10})));
    assert_eq!(r.stdout, "");
}

#[tokio::test]
async fn node_jsonl_is_an_array() {
    let r = run_example("node_jsonl", json!({"lines": 3})).await;
    assert_eq!(r.status, ExecutionStatus::Succeeded, "{r:?}");
    assert_eq!(
        r.result,
        Some(json!([{"line": 0, "square": 0}, {"line": 1, "square": 1}, {"line": 2, "square": 4}]))
    );
    assert_eq!(r.stdout, "");
}

#[tokio::test]
async fn shell_yaml_is_parsed() {
    let r = run_example("shell_yaml", json!({"service": "db"})).await;
    assert_eq!(r.status, ExecutionStatus::Succeeded, "{r:?}");
    assert_eq!(r.result, Some(json!({"service": "db", "status": "ok", "checks": ["disk", "memory"]})));
}

#[tokio::test]
async fn native_text_keeps_stdout_and_no_result() {
    let r = run_example("native_uname", json!({})).await;
    assert_eq!(r.status, ExecutionStatus::Succeeded, "{r:?}");
    assert_eq!(r.stdout.trim(), "Linux");
    assert_eq!(r.result, None);
}

#[tokio::test]
async fn list_example_and_dotenv_example() {
    let r = run_example("list_example", json!({"count": 2})).await;
    assert_eq!(r.result, Some(json!([{"id": 1, "name": "item-1"}, {"id": 2, "name": "item-2"}])), "{r:?}");
    let r = run_example(
        "dotenv_params",
        json!({"greeting": "it's \"quoted\"\nand $HOME", "db": {"host": "h", "port": 5}}),
    )
    .await;
    assert_eq!(r.status, ExecutionStatus::Succeeded, "{r:?}");
    assert_eq!(r.stdout, "greeting=it's \"quoted\"\nand $HOME\ndb=h:5\n");
}

#[tokio::test]
async fn every_runtime_with_every_output_format() {
    let s = Scratch::new();
    let outputs = [
        (OutputFormat::Text, "a b", None),
        (OutputFormat::Json, r#"{"k": [1, 2]}"#, Some(json!({"k": [1, 2]}))),
        (OutputFormat::Yaml, "k: [1, 2]", Some(json!({"k": [1, 2]}))),
        (OutputFormat::Jsonl, "{\"k\": 1}\n{\"k\": 2}", Some(json!([{"k": 1}, {"k": 2}]))),
    ];
    for (format, text, expected) in outputs {
        let escaped = serde_json::to_string(text).unwrap();
        let programs = [
            (Runtime::Shell, "p.sh", format!("printf '%s\\n' {}\n", shell_quote(text))),
            (Runtime::Python, "p.py", format!("print({escaped})\n")),
            (Runtime::Node, "p.js", format!("console.log({escaped});\n")),
            (Runtime::Native, "p.bin", format!("#!/bin/sh\nprintf '%s\\n' {}\n", shell_quote(text))),
        ];
        for (rt, file, body) in programs {
            let mut a = s.action(rt, file, &body);
            a.output_format = format;
            let r = s.run(a, json!({})).await;
            assert_eq!(r.status, ExecutionStatus::Succeeded, "{rt} {format:?}: {r:?}");
            assert_eq!(r.result, expected, "{rt} {format:?}");
            let expected_stdout = if expected.is_some() { String::new() } else { format!("{text}\n") };
            assert_eq!(
                r.stdout, expected_stdout,
                "{rt} {format:?}: stdout holds the text only for text output"
            );
        }
    }
}

fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

#[tokio::test]
async fn every_delivery_with_every_format() {
    let s = Scratch::new();
    let params = json!({"msg": "hi there", "n": 2, "nested": {"k": "v"}});
    let readers = [
        (ParameterDelivery::Stdin, "cat"),
        (ParameterDelivery::File, "cat \"$ATTUNE_PARAMETERS_FILE\"; ls -l \"$ATTUNE_PARAMETERS_FILE\" >&2"),
        (ParameterDelivery::Env, "printf '%s' \"$ATTUNE_PARAMETERS\""),
    ];
    for (delivery, reader) in readers {
        for format in [ParameterFormat::Json, ParameterFormat::Yaml, ParameterFormat::Dotenv] {
            let mut a = s.action(Runtime::Shell, "read.sh", &format!("{reader}\n"));
            a.parameter_delivery = delivery;
            a.parameter_format = format;
            let r = s.run(a, params.clone()).await;
            assert_eq!(r.status, ExecutionStatus::Succeeded, "{delivery:?} {format:?}: {r:?}");
            let got = r.stdout;
            match format {
                ParameterFormat::Json => assert_eq!(serde_json::from_str::<Value>(&got).unwrap(), params),
                ParameterFormat::Yaml => assert_eq!(serde_yaml::from_str::<Value>(&got).unwrap(), params),
                ParameterFormat::Dotenv => assert_eq!(got, "msg='hi there'\nn='2'\nnested__k='v'\n"),
            }
            if delivery == ParameterDelivery::File {
                assert!(r.stderr.starts_with("-r--------"), "mode 0400: {}", r.stderr);
            }
        }
    }
    // env delivery also sets one variable per flattened key.
    let mut a = s.action(
        Runtime::Shell,
        "env.sh",
        "printf '%s|%s|%s' \"$ATTUNE_PARAM_MSG\" \"$ATTUNE_PARAM_N\" \"$ATTUNE_PARAM_NESTED__K\"\n",
    );
    a.parameter_delivery = ParameterDelivery::Env;
    assert_eq!(s.run(a, params).await.stdout, "hi there|2|v");
    // The parameter file is gone afterwards.
    let left: Vec<_> = std::fs::read_dir(s.dir.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with("params-"))
        .collect();
    assert!(left.is_empty(), "parameter files left behind: {left:?}");
}

#[tokio::test]
async fn secrets_are_masked_and_kept_out_of_the_environment() {
    let r = run_example("secret", json!({"user": "ann", "password": "hunter2-secret"})).await;
    assert_eq!(r.status, ExecutionStatus::Succeeded, "{r:?}");
    assert!(r.stdout.contains("ann") && r.stdout.contains("********"), "{}", r.stdout);
    assert!(!r.stdout.contains("hunter2-secret"));

    let s = Scratch::new();
    let mut a = s.action(Runtime::Shell, "leak.sh", "env; echo \"$0 $*\"; cat; echo hunter2-secret >&2\n");
    a.parameters = json!({"type": "object", "properties": {"password": {"type": "string", "secret": true}}});
    a.parameter_delivery = ParameterDelivery::Env;
    let r = s.run(a, json!({"password": "hunter2-secret", "other": "x"})).await;
    assert!(!r.stdout.contains("hunter2-secret") && !r.stderr.contains("hunter2-secret"), "{r:?}");
    assert!(r.stdout.contains("ATTUNE_PARAM_OTHER=x"), "non-secret parameters are in the environment");
    assert!(!r.stdout.contains("ATTUNE_PARAM_PASSWORD"), "secret parameters are not: {}", r.stdout);
    assert!(r.stdout.contains("{\"password\":\"********\"}"), "the secret arrived on stdin: {}", r.stdout);
}

#[tokio::test]
async fn output_beyond_the_cap_is_truncated_and_recorded() {
    let s = Scratch::new();
    let a = s.action(Runtime::Shell, "big.sh", "head -c 5000000 /dev/zero | tr '\\0' a; echo done >&2\n");
    let r = s.run(a, json!({})).await;
    assert_eq!(r.status, ExecutionStatus::Succeeded, "{:?}", r.error);
    assert!(r.stdout_truncated);
    assert_eq!(r.stdout.len(), 1024 * 1024);
    assert!(!r.stderr_truncated);
    assert_eq!(r.stderr, "done\n");
}

fn gone(pid: i32) -> bool {
    // A zombie waiting for its (re)parent to reap it is dead too.
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => {
            stat.rsplit_once(')').map(|(_, rest)| rest.trim_start().starts_with('Z')).unwrap_or(false)
        }
    }
}

async fn wait_gone(pid: i32) {
    attune_testkit::wait_for(&format!("process {pid} to be gone"), Duration::from_secs(10), || async move {
        gone(pid).then_some(())
    })
    .await
}

#[tokio::test]
async fn timeout_kills_the_whole_group_including_background_children() {
    let s = Scratch::new();
    let pidfile = s.dir.path().join("bg.pid");
    let body = format!("sleep 300 &\necho $! > {}\ntrap '' TERM\nsleep 300\n", pidfile.display());
    let mut a = s.action(Runtime::Shell, "slow.sh", &body);
    a.timeout_seconds = Some(1);
    let started = std::time::Instant::now();
    let r = s.run(a, json!({})).await;
    assert_eq!(r.status, ExecutionStatus::Timeout, "{r:?}");
    assert_eq!(r.error.as_ref().unwrap()["timeout_seconds"], 1);
    assert!(started.elapsed() < Duration::from_secs(60), "did not wait for the 300 s sleep");
    let pid: i32 = std::fs::read_to_string(&pidfile).unwrap().trim().parse().unwrap();
    wait_gone(pid).await;
}

#[tokio::test]
async fn the_examples_slow_action_times_out() {
    let r = run_example("slow", json!({})).await;
    assert_eq!(r.status, ExecutionStatus::Timeout, "{r:?}");
    let pid: i32 = r.stdout.trim().rsplit(' ').next().unwrap().parse().unwrap();
    wait_gone(pid).await;
}

#[tokio::test]
async fn cancellation_stops_the_process_group() {
    let s = Scratch::new();
    let pidfile = s.dir.path().join("c.pid");
    let a =
        s.action(Runtime::Shell, "c.sh", &format!("sleep 300 &\necho $! > {}\nwait\n", pidfile.display()));
    let cancel = CancellationToken::new();
    let t = task(a, json!({}));
    let c = ctx(s.dir.path());
    let run = tokio::spawn({
        let cancel = cancel.clone();
        async move { execute(&t, &c, cancel).await }
    });
    let pid: i32 = attune_testkit::wait_for("the pid file", Duration::from_secs(10), || {
        let p = pidfile.clone();
        async move { std::fs::read_to_string(p).ok().and_then(|s| s.trim().parse().ok()) }
    })
    .await;
    cancel.cancel();
    let r = run.await.unwrap();
    assert_eq!(r.status, ExecutionStatus::Canceled, "{r:?}");
    wait_gone(pid).await;
}

#[tokio::test]
async fn malformed_output_fails_with_the_format_and_keeps_stdout() {
    let s = Scratch::new();
    for (format, text) in [
        (OutputFormat::Json, "{not json"),
        (OutputFormat::Yaml, "key: [unclosed"),
        (OutputFormat::Jsonl, "{\"ok\": 1}\nnot json"),
    ] {
        let mut a = s.action(Runtime::Shell, "bad.sh", &format!("printf '%s\\n' {}\n", shell_quote(text)));
        a.output_format = format;
        let r = s.run(a, json!({})).await;
        assert_eq!(r.status, ExecutionStatus::Failed, "{format:?}");
        assert_eq!(r.stdout, format!("{text}\n"), "raw stdout kept");
        assert_eq!(r.result, None);
        let err = r.error.unwrap();
        assert!(err["error"].as_str().unwrap().contains("not valid"), "{format:?}: {err}");
    }
    // Not parsed at all on a non-zero exit.
    let mut a = s.action(Runtime::Shell, "exit.sh", "echo '{\"a\": 1}'; exit 4\n");
    a.output_format = OutputFormat::Json;
    let r = s.run(a, json!({})).await;
    assert_eq!((r.status, r.exit_code, r.result.clone()), (ExecutionStatus::Failed, Some(4), None));
    assert_eq!(r.stdout, "{\"a\": 1}\n");
}

#[tokio::test]
async fn missing_entry_points_and_interpreters_fail_clearly() {
    let s = Scratch::new();
    let mut a = s.action(Runtime::Shell, "x.sh", "true\n");
    a.entry_point = "gone.sh".into();
    let r = s.run(a, json!({})).await;
    assert_eq!(r.status, ExecutionStatus::Failed);
    assert!(r.error.unwrap()["error"].as_str().unwrap().contains("not found on this worker"));
}

/// Whatever the server accepted, the worker runs nothing outside the pack: not a path with `..`,
/// not an absolute one, not a symlink to a file outside, not through a symlinked directory.
#[tokio::test]
async fn entry_points_outside_the_pack_are_refused_by_the_worker() {
    let s = Scratch::new();
    let outside = tempfile::tempdir().unwrap();
    let marker = outside.path().join("ran");
    let evil = outside.path().join("evil.sh");
    std::fs::write(&evil, format!("#!/bin/sh\ntouch {}\n", marker.display())).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&evil, std::fs::Permissions::from_mode(0o755)).unwrap();
    let actions = s.dir.path().join("actions");
    std::os::unix::fs::symlink(&evil, actions.join("link.sh")).unwrap();
    std::os::unix::fs::symlink(outside.path(), actions.join("bin")).unwrap();
    let up = format!("../../../../../../{}", evil.strip_prefix("/").unwrap().display());
    for ep in [up.as_str(), evil.to_str().unwrap(), "link.sh", "bin/evil.sh"] {
        let mut a = s.action(Runtime::Shell, "ok.sh", "true\n");
        a.entry_point = ep.into();
        let r = s.run(a, json!({})).await;
        assert_eq!(r.status, ExecutionStatus::Failed, "{ep}: {r:?}");
        let e = r.error.unwrap();
        assert!(e["error"].as_str().unwrap().contains("refused"), "{ep}: {e}");
        assert!(!marker.exists(), "{ep} ran");
    }
    // A symlink that stays inside the pack is fine.
    std::os::unix::fs::symlink(actions.join("ok.sh"), actions.join("alias.sh")).unwrap();
    let mut a = s.action(Runtime::Shell, "ok.sh", "true\n");
    a.entry_point = "alias.sh".into();
    assert_eq!(s.run(a, json!({})).await.status, ExecutionStatus::Succeeded);
}

#[tokio::test]
async fn binary_output_and_nul_parameters_are_kept_exactly() {
    let s = Scratch::new();
    // The parameter arrives on stdin as JSON, NUL included; the output is bytes that are not text.
    let a = s.action(
        Runtime::Python,
        "bytes.py",
        "import json, sys\np = json.load(sys.stdin)\nsys.stdout.buffer.write(p['v'].encode() + b'\\xff\\x00')\n\
         sys.stderr.buffer.write(b'hunter2\\x00')\n",
    );
    let mut a = a;
    a.parameters = json!({"type": "object", "properties": {"v": {"type": "string"}, "pw": {"type": "string", "secret": true}}});
    let r = s.run(a, json!({"v": "a\u{0}b", "pw": "hunter2"})).await;
    assert_eq!(r.status, ExecutionStatus::Succeeded, "{r:?}");
    let out = attune_core::output::decode(&r.stdout, r.stdout_encoding).unwrap();
    assert_eq!(out, b"a\0b\xff\0");
    assert_eq!(r.stdout_encoding.as_str(), "base64");
    let err = attune_core::output::decode(&r.stderr, r.stderr_encoding).unwrap();
    assert_eq!(err, b"********\0", "secrets are masked in binary output too");
}

#[tokio::test]
async fn a_parsed_result_over_the_cap_fails_and_keeps_stdout() {
    let s = Scratch::new();
    // 800 KB of YAML (under the 1 MiB cap) whose `\x01` escapes take six bytes each as JSON.
    let mut a = s.action(Runtime::Python, "big.py", "print('s: \"' + '\\\\x01' * 200000 + '\"')\n");
    a.output_format = OutputFormat::Yaml;
    let r = s.run(a, json!({})).await;
    assert_eq!(r.status, ExecutionStatus::Failed, "{r:?}");
    let e = r.error.unwrap()["error"].as_str().unwrap().to_owned();
    assert!(e.contains("more than the output cap"), "{e}");
    assert_eq!(r.result, None);
    assert!(!r.stdout.is_empty(), "stdout kept");
}

/// `core.sleep` says how far it is on stdout while it sleeps (the live log), and a cancel ends it
/// with what it had written so far.
#[tokio::test]
async fn the_builtin_sleep_shows_progress_live_and_cancels() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../packs/core");
    let core = attune_pack::load_pack_dir(&dir).unwrap_or_else(|e| panic!("{e}"));
    let sleep = core.actions.into_iter().find(|a| a.action_ref.name() == "sleep").expect("core.sleep");
    let scratch = tempfile::tempdir().unwrap();
    let (tap, mut live) = tokio::sync::mpsc::unbounded_channel();
    let mut c = ctx(scratch.path());
    c.tap = Some(tap);
    let cancel = CancellationToken::new();
    let t = task(sleep, json!({"seconds": 30}));
    let run = tokio::spawn({
        let cancel = cancel.clone();
        async move { execute(&t, &c, cancel).await }
    });
    let mut seen = String::new();
    while !seen.contains("1 s of 30 s\n") {
        let (stream, bytes) = tokio::time::timeout(Duration::from_secs(10), live.recv())
            .await
            .expect("progress")
            .expect("open");
        assert_eq!(stream, "stdout");
        seen.push_str(std::str::from_utf8(&bytes).unwrap());
    }
    cancel.cancel();
    let r = run.await.unwrap();
    assert_eq!(r.status, ExecutionStatus::Canceled, "{r:?}");
    assert!(r.stdout.starts_with("sleeping 30 s\n1 s of 30 s\n"), "{:?}", r.stdout);
    assert_eq!(r.result, None);
}
