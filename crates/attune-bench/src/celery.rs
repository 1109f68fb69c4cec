//! The peer: the same no-op and `sh -c 'echo hello'` workloads on Celery 5 with the machine's Redis
//! as broker and result backend, installed into a virtualenv by `bench/peers/celery/setup.sh`.

use std::{path::PathBuf, process::Stdio};

use anyhow::{bail, Context};

use crate::{report::CeleryResult, Args, Sizes};

fn peer_dir() -> PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../bench/peers/celery")
}

fn run_script(args: &[&str]) -> anyhow::Result<String> {
    #[allow(clippy::disallowed_methods)] // the peer's own scripts, not an action
    let out = std::process::Command::new("bash")
        .args(args)
        .current_dir(peer_dir())
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("run {args:?}"))?;
    if !out.status.success() {
        bail!("{args:?} failed with {}", out.status);
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

pub async fn run(args: &Args, s: Sizes) -> anyhow::Result<CeleryResult> {
    eprintln!("[celery] installing (first run only) and measuring");
    let (workers, noop, shell) = (args.workers.to_string(), s.noop.to_string(), s.shell.to_string());
    let chains = s.workflows.to_string();
    let out = tokio::task::spawn_blocking(move || {
        run_script(&["setup.sh"])?;
        run_script(&[
            "run.sh",
            "--workers",
            &workers,
            "--noop",
            &noop,
            "--shell",
            &shell,
            "--chains",
            &chains,
            "--chord",
            "1000",
        ])
    })
    .await??;
    let v: serde_json::Value = serde_json::from_str(out.trim().lines().last().unwrap_or(""))
        .with_context(|| format!("parse the peer's output: {out}"))?;
    Ok(CeleryResult {
        version: v["version"].as_str().unwrap_or("?").to_owned(),
        noop_per_sec: v["noop_per_sec"].as_f64().unwrap_or(f64::NAN),
        shell_per_sec: v["shell_per_sec"].as_f64().unwrap_or(f64::NAN),
        worker_processes: args.workers,
        chain3_ms: v["chain3_ms"].as_array().and_then(|a| {
            let p: Vec<f64> = a.iter().filter_map(|x| x.as_f64()).collect();
            <[f64; 3]>::try_from(p).ok()
        }),
        chord_per_sec: v["chord_per_sec"].as_f64(),
    })
}
