//! Whatever an action prints ends with a true outcome: output of any size up to the caps and any
//! bytes is stored and shown faithfully on both backends, and a report the server refuses for good
//! fails its execution at once with the server's reason. Real server and worker processes, driven
//! by the real CLI.

mod common;

use std::time::Duration;

use attune_core::{output::decode, Execution};
use attune_testkit::{Proc, TestDb};
use common::{cli, server, worker};

/// Runs `cmd` with `core.local` and waits for the outcome.
fn run(url: &str, cmd: &str) -> Execution {
    let out = cli(url, &["run", "core.local", &format!("cmd={cmd}"), "--wait", "-o", "json"]);
    assert!(out.code == 0 || out.code == 1, "{out:?}");
    serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", out.stderr))
}

fn stdout_bytes(e: &Execution) -> Vec<u8> {
    decode(&e.stdout, e.stdout_encoding).unwrap()
}

/// A server and one worker on `db_url`, with default timing (10 s heartbeats: a report left to a
/// lease expiry would take 30 s, so "at once" is told apart).
fn cluster(db_url: &str, env: &[(String, String)]) -> (Proc, Proc, String) {
    let mut env = env.to_vec();
    env.push(("ATTUNE__PACKS__DIRS".into(), format!("[{}]", common::packs_dir())));
    let (s, url) = server("server", "127.0.0.1:0", db_url, &env);
    let w = worker("w1", &url, &env);
    (s, w, url)
}

fn any_output_is_stored_faithfully(db_url: &str) {
    let (_s, _w, url) = cluster(db_url, &[]);
    // 12 MiB: more than the old 2 MiB request limit, more than the 10 MiB cap.
    let e = run(&url, "head -c 12582912 /dev/zero | tr '\\0' x");
    assert_eq!(e.status.as_str(), "succeeded", "{:?}", e.error);
    assert!(e.stdout_truncated, "12 MiB is over the 10 MiB cap");
    let out = stdout_bytes(&e);
    assert_eq!(out.len(), 10 * 1024 * 1024, "the cap's worth is kept");
    assert!(out.iter().all(|b| *b == b'x'));
    assert!(e.stdout_encoding.is_utf8(), "text stays text");

    // Binary output and NUL: stored as base64 of the exact bytes, on both streams.
    let e = run(&url, "printf 'a\\000b\\377\\376end'; printf 'err\\000' >&2");
    assert_eq!(e.status.as_str(), "succeeded", "{:?}", e.error);
    assert_eq!(stdout_bytes(&e), b"a\0b\xff\xfeend");
    assert_eq!(e.stdout_encoding.as_str(), "base64");
    assert_eq!(decode(&e.stderr, e.stderr_encoding).unwrap(), b"err\0");
    assert!(!e.stdout_truncated);
    // The CLI writes the exact bytes back.
    let logs = cli(&url, &["execution", "logs", &e.id.to_string()]);
    assert_eq!(logs.code, 0, "{logs:?}");
    let shown = cli(&url, &["execution", "get", &e.id.to_string()]);
    assert!(
        shown.stdout.contains("not text: shown with escapes")
            && shown.stdout.contains("a\\x00b\\xff\\xfeend"),
        "{}",
        shown.stdout
    );

    let e = run(&url, "printf 'before\\000after\\n'");
    assert_eq!((e.status.as_str(), stdout_bytes(&e)), ("succeeded", b"before\0after\n".to_vec()));

    let e = run(&url, "printf '\\377'");
    assert_eq!((stdout_bytes(&e), e.stdout_encoding.as_str()), (vec![0xff], "base64"), "not UTF-8");

    // The worker kept serving all along.
    let e = run(&url, "echo still here");
    assert_eq!((e.status.as_str(), e.stdout.as_str()), ("succeeded", "still here\n"));
    let workers = cli(&url, &["worker", "list", "-o", "json"]).json();
    assert_eq!(workers[0]["status"], "active", "{workers}");
}

fn a_refused_report_fails_at_once(db_url: &str) {
    // A limit lower than the output needs, as a proxy in front of the server might impose.
    let env = [("ATTUNE__SERVER__MAX_WORKER_REQUEST_BYTES".to_string(), "65536".to_string())];
    let (_s, w, url) = cluster(db_url, &env);
    let started = std::time::Instant::now();
    let e = run(&url, "head -c 1048576 /dev/zero | tr '\\0' y");
    let waited = started.elapsed();
    assert_eq!(e.status.as_str(), "failed");
    let err = e.error.clone().unwrap();
    let msg = err["error"].as_str().unwrap();
    assert!(msg.starts_with("the server refused the worker's report: "), "{err}");
    assert!(msg.contains("larger"), "the server's reason: {msg}");
    assert_eq!(err["failed_by"], "server");
    assert_eq!(err["reported_status"], "succeeded");
    let ran = e.finished_at.unwrap().millis() - e.started_at.unwrap().millis();
    assert!(ran < 1_500, "failed within a second of the action's end, not by a lease expiry: {ran} ms");
    assert!(waited < Duration::from_secs(10), "{waited:?}");
    assert!(e.history.iter().all(|h| h.actor != "worker_heartbeat_monitor"), "{:?}", e.history);
    // A report within the limit still goes through, and the worker is alive.
    assert_eq!(run(&url, "echo small").status.as_str(), "succeeded");
    w.wait_line(Duration::from_secs(5), |l| {
        l.contains("report refused; failing the execution").then_some(())
    });
}

#[test]
fn any_output_is_stored_faithfully_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    any_output_is_stored_faithfully(&format!("sqlite://{}", dir.path().join("a.db").display()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn any_output_is_stored_faithfully_on_postgres() {
    let db = TestDb::postgres().await;
    tokio::task::spawn_blocking(move || any_output_is_stored_faithfully(&db.url)).await.unwrap();
}

#[test]
fn a_refused_report_fails_at_once_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    a_refused_report_fails_at_once(&format!("sqlite://{}", dir.path().join("a.db").display()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_report_fails_at_once_on_postgres() {
    let db = TestDb::postgres().await;
    tokio::task::spawn_blocking(move || a_refused_report_fails_at_once(&db.url)).await.unwrap();
}
