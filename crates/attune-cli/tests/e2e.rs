//! End to end, as a user does it: the real `attune` binary, started as separate processes on a
//! random port, driven with the real CLI, stopped with real signals.

use std::time::Duration;

use attune_testkit::{run_cli_in, Proc, TestDb};
use nix::sys::signal::Signal;
use serde_json::Value;

mod common;

use common::{cli, packs_dir, BIN};

/// `attune up` on port 0 with the repository's packs.
fn up(extra: &[&str], data_dir: &std::path::Path) -> (Proc, String) {
    up_with_packs(extra, data_dir, &packs_dir())
}

/// `attune up` on port 0 with `dirs` (comma-separated) as packs.dirs.
fn up_with_packs(extra: &[&str], data_dir: &std::path::Path, dirs: &str) -> (Proc, String) {
    let dd = data_dir.display().to_string();
    let mut args = vec!["up", "--listen", "127.0.0.1:0", "--data-dir", dd.as_str()];
    args.extend_from_slice(extra);
    let dirs = format!("[{dirs}]");
    let p = Proc::spawn("attune up", BIN, &args, &[("ATTUNE__PACKS__DIRS", dirs.as_str())]);
    let url = p.wait_url();
    common::remember_tokens(&url, data_dir);
    (p, url)
}

fn echo_round_trip(url: &str) {
    let out = cli(url, &["run", "core.echo", "message=hello e2e", "--wait", "-o", "json"]);
    assert_eq!(out.code, 0, "{out:?}");
    let e = out.json();
    assert_eq!(e["status"], "succeeded", "{e}");
    assert_eq!(e["stdout"], "hello e2e\n");
    assert_eq!(e["result"], Value::Null, "text output: stdout only");
    assert_eq!(e["history"].as_array().unwrap().len(), 4, "{e}");
    let out = cli(url, &["worker", "list", "-o", "json"]);
    assert_eq!(out.code, 0, "{out:?}");
    let workers = out.json();
    let active: Vec<_> = workers.as_array().unwrap().iter().filter(|w| w["status"] == "active").collect();
    assert_eq!(active.len(), 1, "{workers}");
}

#[test]
fn up_runs_an_action_on_sqlite_and_stops_on_ctrl_c() {
    let dir = tempfile::tempdir().unwrap();
    let (mut p, url) = up(&[], dir.path());
    p.wait_line(Duration::from_secs(5), |l| l.contains("run core.echo message=hello --wait").then_some(()));
    echo_round_trip(&url);
    assert!(dir.path().join("attune.db").exists(), "SQLite lives in the data dir");
    p.signal(Signal::SIGINT);
    let status = p.wait_exit(Duration::from_secs(30));
    assert!(status.success(), "{status:?}\n{}", p.output());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn up_runs_an_action_on_postgres() {
    let db = TestDb::postgres().await;
    let dir = tempfile::tempdir().unwrap();
    let (mut p, url) = up(&["--database-url", &db.url], dir.path());
    let health = cli(&url, &["action", "list", "-o", "json"]);
    assert_eq!(health.code, 0, "{health:?}");
    echo_round_trip(&url);
    p.signal(Signal::SIGTERM);
    assert!(p.wait_exit(Duration::from_secs(30)).success());
}

#[test]
fn server_and_worker_as_separate_processes() {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("a.db").display());
    let dirs = format!("[{}]", packs_dir());
    let (server, url) = common::server("server", "127.0.0.1:0", &db, &[("ATTUNE__PACKS__DIRS".into(), dirs)]);
    let mut worker = common::worker("w-e2e", &url, &[]);

    let out = cli(&url, &["run", "core.local", "cmd=echo out; echo err >&2; exit 3", "--wait", "-o", "json"]);
    assert_eq!(out.code, 1, "a failed execution exits 1: {out:?}");
    let e = out.json();
    assert_eq!((e["status"].as_str(), e["exit_code"].as_i64()), (Some("failed"), Some(3)), "{e}");
    assert_eq!((e["stdout"].as_str(), e["stderr"].as_str()), (Some("out\n"), Some("err\n")));
    assert_eq!(e["worker"], "w-e2e");
    assert_eq!(e["error"]["error"], "exit code 3");

    // Graceful stop: exits 0 and is shown as deregistered.
    worker.signal(Signal::SIGTERM);
    let status = worker.wait_exit(Duration::from_secs(30));
    assert!(status.success(), "{status:?}");
    let out = cli(&url, &["worker", "list", "--all", "-o", "json"]);
    let w = &out.json()[0];
    assert_eq!((w["name"].as_str(), w["status"].as_str()), (Some("w-e2e"), Some("inactive")), "{w}");
    assert_eq!(w["status_reason"], "deregistered");
    drop(server);
}

#[test]
fn cli_errors_have_exit_codes_and_messages() {
    let dir = tempfile::tempdir().unwrap();
    let (_p, url) = up(&[], dir.path());
    let out = cli(&url, &["run", "core.nope", "--wait"]);
    assert_eq!(out.code, 2, "{out:?}");
    assert!(out.stderr.contains("unknown action core.nope"), "{}", out.stderr);
    let out = cli(&url, &["run", "core.echo", "mesage=hi"]);
    assert_eq!(out.code, 2);
    assert!(out.stderr.contains("mesage"), "{}", out.stderr);
    let out = cli(&url, &["run", "core.echo", "justaword"]);
    assert_eq!(out.code, 2);
    assert!(out.stderr.contains("key=value"), "{}", out.stderr);
    let out = cli(&url, &["execution", "get", "nope"]);
    assert_eq!(out.code, 2);
    let out = cli("http://127.0.0.1:9", &["execution", "list"]);
    assert_eq!(out.code, 3, "{out:?}");
    assert!(out.stderr.contains("cannot reach the Attune server"), "{}", out.stderr);
    let out = cli(&url, &["run", "core.fail", "message=boom", "--wait", "-o", "json"]);
    assert_eq!(out.code, 1);
    assert_eq!(out.json()["error"]["error"], "boom");
    let before = cli(&url, &["execution", "list", "-o", "json", "--limit", "100"]).json()["items"]
        .as_array()
        .unwrap()
        .len();
    assert_eq!(before, 1, "only core.fail was accepted");
}

#[test]
fn pack_load_is_an_upsert_and_rejects_broken_packs() {
    let dir = tempfile::tempdir().unwrap();
    let mine = tempfile::tempdir().unwrap();
    let (_p, url) = up_with_packs(&[], dir.path(), &format!("{},{}", packs_dir(), mine.path().display()));
    // A pack directory here is sent as its content, wherever it is; a name that is no directory
    // here asks the server for one under its packs.dirs, and is refused when it has none: exit 2.
    let elsewhere = tempfile::tempdir().unwrap();
    std::fs::write(elsewhere.path().join("pack.yaml"), "ref: elsewhere\n").unwrap();
    let out = cli(&url, &["pack", "load", &elsewhere.path().display().to_string()]);
    assert_eq!(out.code, 0, "{out:?}");
    let out = cli(&url, &["pack", "load", "no-such-pack"]);
    assert_eq!(out.code, 2, "{out:?}");
    assert!(out.stderr.contains("not a pack directory under the server's packs.dirs"), "{}", out.stderr);
    let pd = &mine.path().join("demo");
    std::fs::create_dir_all(pd.join("actions")).unwrap();
    std::fs::write(pd.join("pack.yaml"), "ref: demo\nversion: '1'\n").unwrap();
    std::fs::write(
        pd.join("actions/hi.yaml"),
        "ref: hi\nruntime: shell\nentry_point: hi.sh\noutput_format: json\n",
    )
    .unwrap();
    std::fs::write(pd.join("actions/hi.sh"), "echo '{\"greeting\": \"hi\"}'\n").unwrap();
    let pds = pd.display().to_string();
    let out = cli(&url, &["pack", "load", &pds]);
    assert_eq!(out.code, 0, "{out:?}");
    let out = cli(&url, &["run", "demo.hi", "--wait", "-o", "json"]);
    assert_eq!(out.code, 0, "{out:?}");
    let e = out.json();
    assert_eq!(e["result"], serde_json::json!({"greeting": "hi"}), "json output parsed into result");
    assert_eq!(e["stdout"], "", "and not stored twice");

    // Re-load with a second action: an upsert (by name this time).
    std::fs::write(pd.join("actions/bye.yaml"), "ref: bye\nruntime: builtin\nentry_point: noop\n").unwrap();
    assert_eq!(cli(&url, &["pack", "load", "demo"]).code, 0);
    let actions = cli(&url, &["action", "list", "-o", "json"]).json();
    let demo: Vec<_> = actions.as_array().unwrap().iter().filter(|a| a["pack"] == "demo").collect();
    assert_eq!(demo.len(), 2);

    // A broken pack names the file and field and changes nothing.
    std::fs::write(
        pd.join("actions/bye.yaml"),
        "ref: bye\nruntime: builtin\nentry_point: noop\ntimeout_seconds: -1\n",
    )
    .unwrap();
    let out = cli(&url, &["pack", "load", &pds]);
    assert_eq!(out.code, 2, "{out:?}");
    assert!(out.stderr.contains("bye.yaml: field `timeout_seconds`"), "{}", out.stderr);
    let after = cli(&url, &["action", "list", "-o", "json"]).json();
    assert_eq!(after, actions, "nothing changed");
    let out = cli(&url, &["pack", "list", "-o", "json"]).json();
    assert!(out.as_array().unwrap().iter().any(|p| p["ref"] == "demo"));
}

#[test]
fn examples_python_json_shows_the_parsed_result() {
    let dir = tempfile::tempdir().unwrap();
    let (_p, url) = up(&[], dir.path());
    let out = cli(&url, &["run", "examples.python_json", "name=ops", "count=3", "--wait", "-o", "json"]);
    assert_eq!(out.code, 0, "{out:?}");
    let e = out.json();
    assert_eq!(e["result"], serde_json::json!({"greeting": "hello ops", "sum": 6}));
    assert_eq!(e["stdout"], "");
    let out =
        cli(&url, &["run", "examples.secret", "user=ann", "password=s3cr3t-value", "--wait", "-o", "json"]);
    let e = out.json();
    assert_eq!(e["parameters"]["password"], "********", "masked in the API");
    assert!(!out.stdout.contains("s3cr3t-value"), "{}", out.stdout);
    let out = cli(&url, &["run", "examples.flaky", "failures=1", "--wait", "-o", "json"]);
    assert_eq!(out.code, 0, "{out:?}");
    let e = out.json();
    assert_eq!((e["attempt"].as_u64(), e["attempts"].as_array().map(Vec::len)), (Some(2), Some(2)), "{e}");
}

#[test]
fn logs_follow_prints_output_while_the_action_runs() {
    let dir = tempfile::tempdir().unwrap();
    let (_p, url) = up(&[], dir.path());
    let out = cli(&url, &["run", "core.local", "cmd=echo first; sleep 3; echo second", "-o", "json"]);
    assert_eq!(out.code, 0, "{out:?}");
    let id = out.json()["id"].as_str().unwrap().to_owned();
    let token = common::tokens(&url).admin;
    let mut follow = Proc::spawn(
        "logs --follow",
        BIN,
        &["--server", &url, "--token", &token, "execution", "logs", &id, "--follow"],
        &[],
    );
    follow.wait_line(Duration::from_secs(10), |l| (l == "first").then_some(()));
    let status =
        cli(&url, &["execution", "get", &id, "-o", "json"]).json()["status"].as_str().unwrap().to_owned();
    assert_eq!(status, "running", "the first line arrived while the action was still running");
    follow.wait_line(Duration::from_secs(10), |l| (l == "second").then_some(()));
    assert!(follow.wait_exit(Duration::from_secs(10)).success(), "--follow ends with the execution");
    // Without --follow, after the end: the same output.
    let out = cli(&url, &["execution", "logs", &id]);
    assert_eq!(out.stdout, "first\nsecond\n");
}

/// The newcomer's path with authentication on: `attune up` in a directory, the CLI from the same
/// directory needs nothing more; from elsewhere it is refused with a hint; a viewer's token reads
/// but cannot run; a revoked token stops working.
#[test]
fn tokens_from_the_first_start_and_roles_at_the_door() {
    let home = tempfile::tempdir().unwrap();
    let dirs = format!("[{}]", packs_dir());
    let p = Proc::spawn_in(
        "attune up",
        Some(home.path()),
        BIN,
        &["up", "--listen", "127.0.0.1:0"],
        &[("ATTUNE__PACKS__DIRS", dirs.as_str())],
    );
    let url = p.wait_url();
    let admin_file = home.path().join(".attune/admin.token");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&admin_file).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600, "the admin token is readable by its owner only");
    let here = |args: &[&str]| {
        let mut all = vec!["--server", url.as_str()];
        all.extend_from_slice(args);
        run_cli_in(Some(home.path()), BIN, &all)
    };
    let out = here(&["run", "core.echo", "message=hi", "--wait", "-o", "json"]);
    assert_eq!((out.code, out.json()["stdout"].as_str()), (0, Some("hi\n")), "{out:?}");

    let elsewhere = tempfile::tempdir().unwrap();
    let out = run_cli_in(Some(elsewhere.path()), BIN, &["--server", &url, "execution", "list"]);
    assert_ne!(out.code, 0, "{out:?}");
    assert!(out.stderr.contains("401") && out.stderr.contains("hint: pass --token"), "{}", out.stderr);

    let out = here(&["token", "create", "alice", "--role", "viewer", "-o", "json"]);
    assert_eq!(out.code, 0, "{out:?}");
    let secret = out.json()["secret"].as_str().unwrap().to_owned();
    let as_alice = |args: &[&str]| {
        let mut all = vec!["--server", url.as_str(), "--token", secret.as_str()];
        all.extend_from_slice(args);
        run_cli_in(Some(elsewhere.path()), BIN, &all)
    };
    assert_eq!(as_alice(&["execution", "list"]).code, 0);
    let out = as_alice(&["run", "core.echo", "message=no"]);
    assert_ne!(out.code, 0, "{out:?}");
    assert!(out.stderr.contains("403") && out.stderr.contains("run"), "{}", out.stderr);
    let listed = here(&["token", "list", "-o", "json"]).stdout;
    assert!(listed.contains("alice") && !listed.contains(&secret), "{listed}");

    assert_eq!(here(&["token", "revoke", "alice"]).code, 0);
    let out = as_alice(&["execution", "list"]);
    assert!(out.code != 0 && out.stderr.contains("401"), "{out:?}");
    drop(p);
}

/// Reads the event stream from its start until it has been quiet for a second.
fn sse_replay(url: &str, token: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(url.trim_start_matches("http://")).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
    let req = format!(
        "GET /api/v1/events?after=0-0 HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {token}\r\n\r\n"
    );
    s.write_all(req.as_bytes()).unwrap();
    let mut out = Vec::new();
    let mut buf = [0u8; 8192];
    while let Ok(n) = s.read(&mut buf) {
        if n == 0 {
            break;
        }
        out.extend_from_slice(&buf[..n]);
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Issue 11's test of the key store: an action uses a secret key and sees its value; no API
/// response, log line of the server or the worker, event on the stream, or byte of the database
/// files holds it.
#[test]
fn a_secret_key_reaches_the_action_and_nothing_else() {
    let dir = tempfile::tempdir().unwrap();
    let mine = tempfile::tempdir().unwrap();
    let pack = mine.path().join("proof");
    std::fs::create_dir_all(pack.join("actions")).unwrap();
    std::fs::write(pack.join("pack.yaml"), "ref: proof\n").unwrap();
    std::fs::write(
        pack.join("actions/use.yaml"),
        "ref: use\nruntime: shell\nentry_point: use.sh\nparameters:\n  type: object\n  properties:\n    \
         password: {type: string}\n    out: {type: string}\n",
    )
    .unwrap();
    // The action writes what it received where the test can see it, and prints it too.
    std::fs::write(
        pack.join("actions/use.sh"),
        "params=$(cat)\nout=$(echo \"$params\" | python3 -c 'import json,sys; print(json.load(sys.stdin)[\"out\"])')\n\
         echo \"$params\" > \"$out\"\necho \"got $params\"\necho \"to stderr $params\" >&2\n",
    )
    .unwrap();
    let (p, url) = up_with_packs(&[], dir.path(), &format!("{},{}", packs_dir(), mine.path().display()));
    let secret = format!("s3cr3t-{}", uuid::Uuid::new_v4().simple());
    let mut seen = String::new();
    let mut call = |args: &[&str]| {
        let out = cli(&url, args);
        seen.push_str(&out.stdout);
        seen.push_str(&out.stderr);
        out
    };
    let out = call(&["key", "set", "db_pw", &secret, "--secret", "-o", "json"]);
    assert_eq!(out.code, 0, "{out:?}");
    let proof = mine.path().join("seen.json");
    let out = call(&[
        "run",
        "proof.use",
        "password={{ key('db_pw') }}",
        &format!("out={}", proof.display()),
        "--wait",
        "-o",
        "json",
    ]);
    assert_eq!(out.code, 0, "{out:?}");
    let e = out.json();
    let id = e["id"].as_str().unwrap().to_owned();
    let received = std::fs::read_to_string(&proof).unwrap();
    assert!(received.contains(&secret), "the action saw the value: {received}");
    assert!(e["stdout"].as_str().unwrap().contains("********"), "{e}");
    for args in [
        vec!["execution", "get", id.as_str(), "-o", "json"],
        vec!["execution", "list", "-o", "json"],
        vec!["execution", "logs", id.as_str()],
        vec!["key", "list", "-o", "json"],
        vec!["key", "get", "db_pw", "-o", "yaml"],
        vec!["action", "show", "proof.use", "-o", "json"],
    ] {
        let out = call(&args);
        assert_eq!(out.code, 0, "{args:?}: {out:?}");
    }
    let events = sse_replay(&url, &common::tokens(&url).admin);
    assert!(events.contains(&id), "the stream was read: {events}");
    let logs = p.output();
    let mut db = Vec::new();
    for f in std::fs::read_dir(dir.path()).unwrap() {
        let f = f.unwrap().path();
        if f.file_name().unwrap().to_string_lossy().starts_with("attune.db") {
            db.extend(std::fs::read(&f).unwrap());
        }
    }
    let template = b"key('db_pw')";
    assert!(db.windows(template.len()).any(|w| w == template), "the scan reads what the database holds");
    for (what, text) in [
        ("API responses", seen.as_bytes()),
        ("events", events.as_bytes()),
        ("logs", logs.as_bytes()),
        ("database", &db[..]),
    ] {
        assert!(!text.windows(secret.len()).any(|w| w == secret.as_bytes()), "the secret is in the {what}");
    }
    drop(p);
}

/// Issue 11's TLS: `attune up` serves HTTPS with a certificate made for the test; its own worker,
/// a worker process given `--ca-file`, and the CLI given `--ca-file` all get through. Without the
/// certificate, or over plain HTTP, nothing does, and a key that does not fit stops the start.
#[test]
fn https_with_a_certificate_made_for_the_test() {
    let dir = tempfile::tempdir().unwrap();
    let files = tempfile::tempdir().unwrap();
    let path = |f: &str| files.path().join(f).display().to_string();
    let made = rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()]).unwrap();
    std::fs::write(path("cert.pem"), made.cert.pem()).unwrap();
    std::fs::write(path("key.pem"), made.key_pair.serialize_pem()).unwrap();
    let other = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
    std::fs::write(path("other.key"), other.key_pair.serialize_pem()).unwrap();
    let config = |key: &str| {
        let f = path(&format!("config-{key}.yaml"));
        let text =
            format!("server:\n  tls:\n    cert_file: {}\n    key_file: {}\n", path("cert.pem"), path(key));
        std::fs::write(&f, text).unwrap();
        f
    };
    let dd = dir.path().display().to_string();

    let wrong = config("other.key");
    let out = attune_testkit::run_cli(
        BIN,
        &["--config", &wrong, "up", "--listen", "127.0.0.1:0", "--data-dir", &dd],
    );
    assert_ne!(out.code, 0, "{out:?}");
    assert!(out.stderr.contains("other.key") && out.stderr.contains("does not fit"), "{}", out.stderr);

    let good = config("key.pem");
    let dirs = format!("[{}]", packs_dir());
    let mut p = Proc::spawn(
        "attune up (tls)",
        BIN,
        &["--config", &good, "up", "--listen", "127.0.0.1:0", "--data-dir", &dd],
        &[("ATTUNE__PACKS__DIRS", dirs.as_str())],
    );
    let url = p.wait_line(Duration::from_secs(60), |l| {
        let i = l.find("https://127.0.0.1:")?;
        Some(l[i..].split_whitespace().next()?.to_owned())
    });
    p.wait_line(Duration::from_secs(5), |l| l.contains("--ca-file").then_some(()));
    let tokens = common::remember_tokens(&url, dir.path());
    let cert = path("cert.pem");
    let as_admin = |server: &str, ca: Option<&str>, args: &[&str]| {
        let mut all = vec!["--server", server, "--token", tokens.admin.as_str()];
        if let Some(ca) = ca {
            all.extend(["--ca-file", ca]);
        }
        all.extend_from_slice(args);
        attune_testkit::run_cli(BIN, &all)
    };

    let out = as_admin(&url, Some(&cert), &["run", "core.echo", "message=over tls", "--wait", "-o", "json"]);
    assert_eq!(out.code, 0, "{out:?}");
    assert_eq!(out.json()["stdout"], "over tls\n", "up's own worker ran it over HTTPS");

    let out = as_admin(&url, None, &["execution", "list"]);
    assert_eq!(out.code, 3, "{out:?}");
    assert!(out.stderr.contains("certificate") && out.stderr.contains("--ca-file"), "{}", out.stderr);
    let plain = url.replace("https://", "http://");
    let out = as_admin(&plain, Some(&cert), &["execution", "list"]);
    assert_eq!(out.code, 3, "plain HTTP gets no answer: {out:?}");
    let out = as_admin(&url, Some(&path("key.pem")), &["execution", "list"]);
    assert_eq!(out.code, 2, "a CA file without a certificate is a usage error: {out:?}");
    assert!(out.stderr.contains("key.pem"), "{}", out.stderr);

    let enroll = [("ATTUNE__WORKER__TOKEN", tokens.enroll.as_str())];
    let untrusting =
        Proc::spawn("worker without CA", BIN, &["--server", &url, "worker", "--name", "untrusting"], &enroll);
    untrusting.wait_line(Duration::from_secs(30), |l| {
        (l.contains("cannot register yet") && l.contains("certificate")).then_some(())
    });
    drop(untrusting);
    let trusting = Proc::spawn(
        "worker with CA",
        BIN,
        &["--server", &url, "--ca-file", &cert, "worker", "--name", "trusting"],
        &enroll,
    );
    trusting.wait_line(Duration::from_secs(30), |l| l.contains("worker registered").then_some(()));
    let out = as_admin(&url, Some(&cert), &["worker", "list", "-o", "json"]);
    assert_eq!(out.code, 0, "{out:?}");
    let names: Vec<String> = out.json().as_array().unwrap().iter().map(|w| w["name"].to_string()).collect();
    assert!(names.iter().any(|n| n.contains("trusting") && !n.contains("untrusting")), "{names:?}");
    assert!(!names.iter().any(|n| n.contains("untrusting")), "{names:?}");
    trusting.signal(Signal::SIGTERM);
    p.signal(Signal::SIGINT);
    let status = p.wait_exit(Duration::from_secs(30));
    assert!(status.success(), "{status:?}\n{}", p.output());
}

/// Issue 12 as a user meets it: an emitted event fires a rule whose action prints a field of the
/// payload; `attune rule test` shows the verdicts and exits 0 only on a match; `event get` shows
/// the enforcement; a bad payload is refused naming the field.
#[test]
fn an_emitted_event_runs_a_rule_and_the_tester_agrees() {
    let dir = tempfile::tempdir().unwrap();
    let (p, url) = up(&[], dir.path());
    let out = cli(&url, &["event", "emit", "examples.disk_alert", "host=db1", "used=93", "-o", "json"]);
    assert_eq!(out.code, 0, "{out:?}");
    let id = out.json()["id"].as_str().unwrap().to_owned();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let execution = loop {
        let d = cli(&url, &["event", "get", &id, "-o", "json"]).json();
        let full = d["enforcements"]
            .as_array()
            .and_then(|es| es.iter().find(|e| e["rule_ref"] == "examples.disk_full"));
        if let Some(x) = full.and_then(|e| e["execution_id"].as_str()) {
            break x.to_owned();
        }
        assert!(std::time::Instant::now() < deadline, "no enforcement: {d}");
        std::thread::sleep(Duration::from_millis(50));
    };
    let out = cli(&url, &["execution", "get", &execution, "-o", "json"]);
    let mut e = out.json();
    while !["succeeded", "failed"].contains(&e["status"].as_str().unwrap()) {
        assert!(std::time::Instant::now() < deadline, "{e}");
        std::thread::sleep(Duration::from_millis(50));
        e = cli(&url, &["execution", "get", &execution, "-o", "json"]).json();
    }
    assert_eq!(e["stdout"], "clean up db1: 93 % used\n", "{e}");
    let out = cli(&url, &["event", "get", &id]);
    assert!(out.stdout.contains("examples.disk_full") && out.stdout.contains("matched"), "{}", out.stdout);

    let out = cli(&url, &["rule", "test", "examples.disk_full", "--payload", r#"{"host": "h", "used": 40}"#]);
    assert_eq!(out.code, 1, "{out:?}");
    assert!(
        out.stdout.contains("payload.used greaterthan 90") && out.stdout.contains("fails"),
        "{}",
        out.stdout
    );
    let out = cli(&url, &["rule", "test", "examples.disk_full", "--event", &id]);
    assert_eq!(out.code, 0, "{out:?}");
    assert!(out.stdout.contains("clean up db1"), "{}", out.stdout);

    let out = cli(&url, &["event", "emit", "examples.disk_alert", "host=db1"]);
    assert_eq!(out.code, 2, "{out:?}");
    assert!(out.stderr.contains("used"), "{}", out.stderr);
    drop(p);
}

/// Issue 12, as a new user tries it: the examples pack's sensor, once enabled, reports the disk
/// and its events run the `disk_seen` rule's action.
#[test]
fn the_example_sensor_fires_a_rule() {
    let dir = tempfile::tempdir().unwrap();
    let dd = dir.path().display().to_string();
    let dirs = format!("[{}]", packs_dir());
    let args = ["up", "--listen", "127.0.0.1:0", "--data-dir", dd.as_str()];
    let env = [("ATTUNE__PACKS__DIRS", dirs.as_str()), ("ATTUNE__WORKER__HEARTBEAT_INTERVAL", "1s")];
    let p = Proc::spawn("attune up", BIN, &args, &env);
    let url = p.wait_url();
    common::remember_tokens(&url, dir.path());
    let out = cli(&url, &["sensor", "list"]);
    assert!(out.stdout.contains("examples.disk_watch") && out.stdout.contains("disabled"), "{}", out.stdout);
    let out = cli(&url, &["sensor", "enable", "examples.disk_watch"]);
    assert_eq!(out.code, 0, "{out:?}");
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let echoed = loop {
        let list = cli(&url, &["execution", "list", "--action", "core.echo", "-o", "json"]).json();
        let done = list["items"].as_array().and_then(|items| {
            items.iter().find(|e| {
                e["status"] == "succeeded" && e["stdout"].as_str().is_some_and(|s| s.contains("% full"))
            })
        });
        if let Some(e) = done {
            break e.clone();
        }
        assert!(std::time::Instant::now() < deadline, "no execution from the sensor's events: {list}");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(echoed["stdout"].as_str().unwrap().contains(":/ is "), "{echoed}");
    let s = cli(&url, &["sensor", "show", "examples.disk_watch", "-o", "json"]).json();
    assert_eq!(s["status"], "running", "{s}");
    assert!(s["events"].as_u64().unwrap() >= 1, "{s}");
    let out = cli(&url, &["sensor", "disable", "examples.disk_watch"]);
    assert!(out.stdout.contains("disabled"), "{}", out.stdout);
    drop(p);
}

#[test]
fn up_watch_reloads_a_pack_when_its_files_change() {
    let dir = tempfile::tempdir().unwrap();
    let mine = tempfile::tempdir().unwrap();
    let pd = mine.path().join("live");
    std::fs::create_dir_all(pd.join("actions")).unwrap();
    std::fs::write(pd.join("pack.yaml"), "ref: live\n").unwrap();
    std::fs::write(pd.join("actions/say.yaml"), "ref: say\nruntime: shell\nentry_point: say.sh\n").unwrap();
    std::fs::write(pd.join("actions/say.sh"), "echo first\n").unwrap();
    let (p, url) = up_with_packs(&["--watch"], dir.path(), &mine.path().display().to_string());
    let run = || cli(&url, &["run", "live.say", "--wait", "-o", "json"]).json()["stdout"].clone();
    assert_eq!(run(), "first\n");
    std::fs::write(pd.join("actions/say.sh"), "echo second\n").unwrap();
    // Reloaded by the watcher, without any command: the next run runs the new script.
    p.wait_line(Duration::from_secs(20), |l| l.contains("watch: reloaded pack live").then_some(()));
    assert_eq!(run(), "second\n");
    // A broken edit is reported and changes nothing.
    std::fs::write(pd.join("actions/say.yaml"), "ref: say\nruntime: shelll\nentry_point: say.sh\n").unwrap();
    p.wait_line(Duration::from_secs(20), |l| l.contains("not reloaded").then_some(()));
    assert_eq!(run(), "second\n");
}
