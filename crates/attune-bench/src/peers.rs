//! The peers: the same workloads on Celery 5 with the machine's Redis as broker and result backend
//! (`bench/peers/celery`), and on Procrastinate 3, a PostgreSQL job queue, with a database of its
//! own on the benchmark's PostgreSQL (`bench/peers/procrastinate`). Each is installed into a
//! virtualenv under `target/bench` by its `setup.sh` and run by its `run.sh`, which prints one JSON
//! line of results.

use std::{path::PathBuf, process::Stdio};

use anyhow::{bail, Context};

use crate::{
    report::{CeleryResult, PgPeerResult},
    Args, Sizes,
};

fn peer_dir(peer: &str) -> PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../bench/peers").join(peer)
}

/// Runs a peer's script; its standard output.
fn run_script(peer: &str, args: &[&str]) -> anyhow::Result<String> {
    #[allow(clippy::disallowed_methods)] // the peer's own scripts, not an action
    let out = std::process::Command::new("bash")
        .args(args)
        .current_dir(peer_dir(peer))
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("run {peer} {args:?}"))?;
    if !out.status.success() {
        bail!("{peer} {args:?} failed with {}", out.status);
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Installs a peer (once) and runs it: the last line of its output, parsed.
fn measure(peer: &str, args: &[&str]) -> anyhow::Result<serde_json::Value> {
    run_script(peer, &["setup.sh"])?;
    let out = run_script(peer, args)?;
    serde_json::from_str(out.trim().lines().last().unwrap_or(""))
        .with_context(|| format!("parse {peer}'s output: {out}"))
}

/// Procrastinate: the no-op and shell workloads, deferred by 16 concurrent clients, on as many
/// worker processes and slots as Attune's.
pub async fn procrastinate(args: &Args, s: Sizes) -> anyhow::Result<PgPeerResult> {
    eprintln!("[procrastinate] installing (first run only) and measuring");
    let (pg, workers, slots) = (args.pg.clone(), args.workers.to_string(), args.concurrency.to_string());
    let (noop, shell) = (s.noop.to_string(), s.shell.to_string());
    let v = tokio::task::spawn_blocking(move || {
        measure(
            "procrastinate",
            &[
                "run.sh",
                "--pg",
                &pg,
                "--workers",
                &workers,
                "--concurrency",
                &slots,
                "--noop",
                &noop,
                "--shell",
                &shell,
            ],
        )
    })
    .await??;
    Ok(PgPeerResult {
        version: v["version"].as_str().unwrap_or("?").to_owned(),
        noop_per_sec: v["noop_per_sec"].as_f64().unwrap_or(f64::NAN),
        shell_per_sec: v["shell_per_sec"].as_f64().unwrap_or(f64::NAN),
    })
}

/// Celery: the no-op and shell workloads, a chain of three and a chord of 1,000.
pub async fn celery(args: &Args, s: Sizes) -> anyhow::Result<CeleryResult> {
    eprintln!("[celery] installing (first run only) and measuring");
    let (workers, noop, shell) = (args.workers.to_string(), s.noop.to_string(), s.shell.to_string());
    let chains = s.workflows.to_string();
    let v = tokio::task::spawn_blocking(move || {
        measure(
            "celery",
            &[
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
            ],
        )
    })
    .await??;
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
