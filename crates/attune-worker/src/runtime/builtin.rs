//! In-process actions: `noop`, `sleep` (parameter `seconds`; says how far it is on stdout, live),
//! `fail` (parameter `message`).

use std::time::Duration;

use attune_core::{ExecutionStatus, Report, Task};
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

use super::failed;
use crate::process::Tap;

fn ok() -> Report {
    Report { exit_code: Some(0), ..Report::new(ExecutionStatus::Succeeded) }
}

pub(super) async fn run(
    task: &Task,
    timeout: Option<Duration>,
    tap: Option<&Tap>,
    cancel: CancellationToken,
) -> Report {
    let p = &task.parameters;
    match task.action.entry_point.as_str() {
        "noop" => ok(),
        "sleep" => {
            let secs = p.get("seconds").and_then(Value::as_f64).unwrap_or(1.0).max(0.0);
            let (progress, r) = sleep(secs, timeout, tap, cancel).await;
            let mut r = match r {
                Slept::Done => {
                    let mut r = ok();
                    r.result = Some(json!({"slept_seconds": secs}));
                    r
                }
                Slept::TimedOut => {
                    let mut r = failed(json!({"error": format!("timed out after {} seconds",
                        task.timeout_seconds.unwrap_or_default()), "timeout_seconds": task.timeout_seconds}));
                    r.status = ExecutionStatus::Timeout;
                    r
                }
                Slept::Canceled => {
                    let mut r = failed(json!({"error": "canceled while running"}));
                    r.status = ExecutionStatus::Canceled;
                    r
                }
            };
            r.stdout = progress;
            r
        }
        "fail" => {
            let msg = p.get("message").and_then(Value::as_str).unwrap_or("core.fail always fails");
            let mut r = failed(json!({"error": msg}));
            r.exit_code = Some(1);
            r
        }
        other => failed(json!({"error": format!("this worker has no builtin {other:?}")})),
    }
}

enum Slept {
    Done,
    TimedOut,
    Canceled,
}

/// How often a sleep says how far it is: every second up to a minute, then every ten seconds.
fn progress_every(secs: f64) -> Duration {
    Duration::from_secs(if secs <= 60.0 { 1 } else { 10 })
}

/// Sleeps `secs` unless the timeout or a cancel comes first, writing a line of progress to stdout
/// (sent to `tap` as it is written, for the live log). Returns what it wrote and how it ended.
async fn sleep(
    secs: f64,
    timeout: Option<Duration>,
    tap: Option<&Tap>,
    cancel: CancellationToken,
) -> (String, Slept) {
    let start = tokio::time::Instant::now();
    let end = tokio::time::sleep(Duration::from_secs_f64(secs));
    let limit = async {
        match timeout {
            Some(t) => tokio::time::sleep(t).await,
            None => std::future::pending().await,
        }
    };
    tokio::pin!(end, limit);
    let every = progress_every(secs);
    let mut tick = tokio::time::interval_at(start + every, every);
    let mut out = String::new();
    let mut say = |line: String| {
        if let Some(tap) = tap {
            let _ = tap.send(("stdout", line.as_bytes().to_vec()));
        }
        out.push_str(&line);
    };
    say(format!("sleeping {secs} s\n"));
    let ended = loop {
        tokio::select! {
            _ = &mut end => break Slept::Done,
            _ = &mut limit => break Slept::TimedOut,
            _ = cancel.cancelled() => break Slept::Canceled,
            _ = tick.tick() => say(format!("{} s of {secs} s\n", start.elapsed().as_secs())),
        }
    };
    (out, ended)
}
