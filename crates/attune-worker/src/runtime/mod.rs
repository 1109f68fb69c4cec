//! Running one task to a `Report`: builtins in-process, everything else as a child process through
//! `crate::process`. Output is turned into `stdout`/`result` by `attune_core::output::finalize`
//! (the seed's de-duplication rule) and secrets are masked before anything leaves the worker.

mod builtin;
mod params;

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use attune_core::{
    output::{encode, finalize, mask_secret_bytes, mask_secrets},
    Dialect, ExecutionStatus, OutputFormat, Report, Runtime, Task,
};
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

use crate::process::{self, Ended, Spec};

/// What every run needs from the worker.
#[derive(Debug, Clone)]
pub struct RunContext {
    pub api_url: String,
    pub max_output: usize,
    pub kill_grace: Duration,
    /// Where parameter files are written.
    pub scratch_dir: PathBuf,
    /// Receives output while the process runs (for live logs).
    pub tap: Option<crate::process::Tap>,
    /// Where pack versions come from (an action with a `pack_digest` runs from there).
    pub packs: Option<crate::packs::PackSource>,
}

/// The shell of actions written for the original Attune.
const BASH: &str = "/bin/bash";

/// The interpreter for a runtime, if it needs one.
pub fn interpreter(rt: Runtime) -> Option<&'static str> {
    match rt {
        Runtime::Shell => Some("/bin/sh"),
        Runtime::Python => Some("python3"),
        Runtime::Node => Some("node"),
        Runtime::Native | Runtime::Builtin | Runtime::Workflow | Runtime::Inquiry => None,
    }
}

/// The runtimes this machine can run: builtin, shell and native always; python and node when
/// their interpreter is on `PATH`.
pub fn detect_runtimes() -> Vec<Runtime> {
    Runtime::WORKER
        .into_iter()
        .filter(|rt| match interpreter(*rt) {
            None => true,
            Some(p) if p.starts_with('/') => std::path::Path::new(p).exists(),
            Some(p) => on_path(p),
        })
        .collect()
}

fn on_path(program: &str) -> bool {
    std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).any(|d| d.join(program).is_file()))
        .unwrap_or(false)
}

/// Runs the task; never fails: problems become a failed `Report` with the reason.
pub async fn execute(task: &Task, ctx: &RunContext, cancel: CancellationToken) -> Report {
    if let Some(why) = &task.parameter_error {
        return failed(json!({"error": why, "worker_error": "parameters_unresolved"}));
    }
    let timeout = task.timeout_seconds.map(Duration::from_secs);
    let secrets = secret_values(task);
    let mut report = match task.action.runtime {
        Runtime::Builtin => builtin::run(task, timeout, ctx.tap.as_ref(), cancel).await,
        _ => run_process(task, ctx, timeout, cancel).await,
    };
    if !secrets.is_empty() {
        // Output streams were masked as bytes where they were captured; the parsed result here.
        if let Some(r) = &report.result {
            let masked = mask_secrets(&r.to_string(), &secrets);
            report.result = serde_json::from_str(&masked).ok().or(Some(Value::String(masked)));
        }
    }
    report
}

/// The values of the task's secret parameters (and the secret keys they used), to be masked
/// wherever output goes.
pub fn secret_values(task: &Task) -> Vec<String> {
    task.action
        .secret_parameters()
        .iter()
        .filter_map(|k| task.parameters.get(k))
        .map(|v| match v {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        })
        .chain(task.masks.iter().cloned())
        .collect()
}

pub(crate) fn failed(error: Value) -> Report {
    Report { error: Some(error), ..Report::new(ExecutionStatus::Failed) }
}

async fn run_process(
    task: &Task,
    ctx: &RunContext,
    timeout: Option<Duration>,
    cancel: CancellationToken,
) -> Report {
    let a = &task.action;
    // The version it was submitted against, fetched by digest; else (an action loaded before
    // packs were stored as content) the directory it was loaded from.
    let prepared = match (&a.pack_digest, &ctx.packs) {
        (Some(digest), Some(packs)) => match packs.prepare(a.pack.as_str(), digest).await {
            Ok(p) => Some(p),
            Err(e) => return failed(json!({"error": e.message, "worker_error": e.code})),
        },
        (Some(_), None) => {
            return failed(json!({
                "error": format!("action {} runs from a stored pack version, which this runner cannot fetch", a.action_ref),
                "worker_error": "pack_unavailable",
            }))
        }
        (None, _) => None,
    };
    let pack_dir = match (&prepared, &a.pack_dir) {
        (Some(p), _) => p.dir.display().to_string(),
        (None, Some(d)) => d.clone(),
        (None, None) => {
            return failed(
                json!({"error": format!("action {} has no pack directory on this worker", a.action_ref)}),
            )
        }
    };
    let pack_dir = &pack_dir;
    let actions_dir = PathBuf::from(pack_dir).join("actions");
    let entry = actions_dir.join(&a.entry_point);
    if !attune_pack::entry_point_is_contained(&a.entry_point) {
        return failed(json!({
            "error": format!("entry point refused: {:?} is not a relative path inside the pack", a.entry_point),
            "worker_error": "entry_point_outside_pack",
        }));
    }
    if !entry.is_file() {
        return failed(json!({
            "error": format!("entry point {} not found on this worker", entry.display()),
            "worker_error": "entry_point_missing",
        }));
    }
    // Checked again here, whatever the server checked when the pack was loaded: the files on this
    // worker may differ, or have changed since.
    if let Err(e) = attune_pack::resolve_entry_point(Path::new(pack_dir), &a.entry_point) {
        return failed(
            json!({"error": format!("entry point refused: {e}"), "worker_error": "entry_point_outside_pack"}),
        );
    }
    // The original Attune ran every shell script with bash, in the pack's directory.
    let original = a.dialect == Dialect::Original;
    let interpreter = if original && a.runtime == Runtime::Shell {
        if !Path::new(BASH).is_file() {
            return failed(json!({
                "error": format!("{} is written for the original Attune, which runs shell scripts with bash; {BASH} is not on this worker", a.action_ref),
                "worker_error": "bash_missing",
            }));
        }
        Some(PathBuf::from(BASH))
    } else {
        match prepared.as_ref().and_then(|p| p.python()) {
            Some(venv) if a.runtime == Runtime::Python => Some(venv),
            _ => interpreter(a.runtime).map(PathBuf::from),
        }
    };
    let (program, args) = match interpreter {
        Some(i) => (i, vec![entry.display().to_string()]),
        None => (entry.clone(), Vec::new()),
    };
    let cwd = if original { PathBuf::from(pack_dir) } else { actions_dir };
    let mut env = base_env();
    env.extend([
        ("ATTUNE_EXECUTION_ID".to_owned(), task.execution_id.to_string()),
        ("ATTUNE_ACTION".to_owned(), a.action_ref.to_string()),
        ("ATTUNE_PACK".to_owned(), a.pack.to_string()),
        ("ATTUNE_API_URL".to_owned(), ctx.api_url.clone()),
        ("ATTUNE_ATTEMPT".to_owned(), task.attempt.to_string()),
        // The original Attune's names for the same.
        ("ATTUNE_EXEC_ID".to_owned(), task.execution_id.to_string()),
        ("ATTUNE_PACK_REF".to_owned(), a.pack.to_string()),
    ]);
    let delivery = match params::deliver(task, &ctx.scratch_dir) {
        Ok(d) => d,
        Err(e) => return failed(json!({"error": format!("cannot deliver parameters: {e}")})),
    };
    env.extend(delivery.env.iter().cloned());
    let spec = Spec {
        program,
        args,
        cwd,
        env,
        stdin: delivery.stdin.clone(),
        max_output: ctx.max_output,
        kill_grace: ctx.kill_grace,
        timeout,
        tap: ctx.tap.clone(),
        stream: None,
    };
    let outcome = match process::run(spec, cancel).await {
        Ok(o) => o,
        Err(e) => {
            return failed(
                json!({"error": format!("cannot start {}: {e}", entry.display()), "worker_error": "spawn_failed"}),
            )
        }
    };
    drop(delivery); // removes the parameter file, if any
                    // Secrets are masked in the bytes, before anything is parsed, encoded or sent.
    let secrets = secret_values(task);
    let stdout = mask_secret_bytes(outcome.stdout.bytes, &secrets);
    let stderr = mask_secret_bytes(outcome.stderr.bytes, &secrets);
    // Kept in case the parsed result turns out too large to send (then stdout is what is reported).
    let raw = (a.output_format != OutputFormat::Text).then(|| stdout.clone());
    let parse_yaml = |s: &str| serde_yaml::from_str::<Value>(s).map_err(|e| e.to_string());
    let mut fin = if original {
        attune_core::output::finalize_leniently(a.output_format, outcome.exit_code, stdout, parse_yaml)
    } else {
        finalize(a.output_format, outcome.exit_code, stdout, parse_yaml)
    };
    if let (Some(r), Some(raw)) = (&fin.result, raw) {
        let size = serde_json::to_vec(r).map(|v| v.len()).unwrap_or(usize::MAX);
        if size > ctx.max_output {
            fin.parse_error = Some(format!(
                "the parsed result takes {size} bytes as JSON, more than the output cap of {} bytes \
                 (worker.max_output_bytes); stdout is kept instead",
                ctx.max_output
            ));
            fin.result = None;
            fin.stdout = raw;
        }
    }
    let (status, error) = match (outcome.ended, outcome.exit_code, outcome.signal) {
        (Ended::TimedOut, ..) => (
            ExecutionStatus::Timeout,
            Some(
                json!({"error": format!("timed out after {} seconds", task.timeout_seconds.unwrap_or_default()),
                "timeout_seconds": task.timeout_seconds}),
            ),
        ),
        (Ended::Canceled, ..) => {
            (ExecutionStatus::Canceled, Some(json!({"error": "canceled while running"})))
        }
        (Ended::Exited, Some(0), _) => match &fin.parse_error {
            None => (ExecutionStatus::Succeeded, None),
            Some(e) => (ExecutionStatus::Failed, Some(json!({"error": e, "output_format": a.output_format}))),
        },
        (Ended::Exited, Some(code), _) => {
            (ExecutionStatus::Failed, Some(json!({"error": format!("exit code {code}"), "exit_code": code})))
        }
        (Ended::Exited, None, sig) => (
            ExecutionStatus::Failed,
            Some(json!({"error": format!("killed by signal {}", sig.unwrap_or_default()), "signal": sig})),
        ),
    };
    let (stdout, stdout_encoding) = encode(&fin.stdout);
    let (stderr, stderr_encoding) = encode(&stderr);
    Report {
        status,
        exit_code: outcome.exit_code,
        stdout,
        stderr,
        stdout_encoding,
        stderr_encoding,
        stdout_truncated: outcome.stdout.truncated,
        stderr_truncated: outcome.stderr.truncated,
        result: fin.result,
        error,
    }
}

/// The few variables of the worker's own environment that programs reasonably expect.
pub(crate) fn base_env() -> Vec<(String, String)> {
    ["PATH", "HOME", "USER", "LANG", "LC_ALL", "TZ", "TMPDIR"]
        .into_iter()
        .filter_map(|k| std::env::var(k).ok().map(|v| (k.to_owned(), v)))
        .collect()
}
