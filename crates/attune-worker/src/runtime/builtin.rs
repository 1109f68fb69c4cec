//! In-process actions: `noop`, `sleep` (parameter `seconds`), `fail` (parameter `message`).

use std::time::Duration;

use attune_core::{ExecutionStatus, Report, Task};
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

use super::failed;

fn ok() -> Report {
    Report { exit_code: Some(0), ..Report::new(ExecutionStatus::Succeeded) }
}

pub(super) async fn run(task: &Task, timeout: Option<Duration>, cancel: CancellationToken) -> Report {
    let p = &task.parameters;
    match task.action.entry_point.as_str() {
        "noop" => ok(),
        "sleep" => {
            let secs = p.get("seconds").and_then(Value::as_f64).unwrap_or(1.0).max(0.0);
            let limit = async {
                match timeout {
                    Some(t) => tokio::time::sleep(t).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs_f64(secs)) => {
                    let mut r = ok();
                    r.result = Some(json!({"slept_seconds": secs}));
                    r
                }
                _ = limit => {
                    let mut r = failed(json!({"error": format!("timed out after {} seconds",
                        task.timeout_seconds.unwrap_or_default()), "timeout_seconds": task.timeout_seconds}));
                    r.status = ExecutionStatus::Timeout;
                    r
                }
                _ = cancel.cancelled() => {
                    let mut r = failed(json!({"error": "canceled while running"}));
                    r.status = ExecutionStatus::Canceled;
                    r
                }
            }
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
