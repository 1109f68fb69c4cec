//! `attune-bench`: starts its own Attune (server and worker processes — this binary re-executes
//! itself as `attune`) on SQLite and on PostgreSQL, runs each workload, runs the same workloads on
//! Celery when asked, and prints one Markdown table plus a JSON file. It reports numbers; it asserts
//! nothing (tests do that).

mod cluster;
mod console;
mod events;
mod packs;
mod peers;
mod profile;
mod report;
mod workloads;

use std::path::PathBuf;

use clap::Parser;

#[derive(Parser, Debug, Clone)]
#[command(about = "Benchmark Attune against the machine's limits, Celery and Procrastinate")]
pub struct Args {
    /// Smaller counts (about two minutes).
    #[arg(long, conflicts_with = "full")]
    quick: bool,
    /// The counts of the issue: 20,000 no-ops, a 100,000 backlog (about ten minutes).
    #[arg(long)]
    full: bool,
    /// Backends to measure: sqlite, postgres.
    #[arg(long, value_delimiter = ',', default_value = "sqlite,postgres")]
    backends: Vec<String>,
    /// PostgreSQL server for the postgres backend (a database is created per run and dropped).
    #[arg(long, env = "ATTUNE_BENCH_DATABASE_URL", default_value = "postgres://postgres@127.0.0.1:5432")]
    pg: String,
    /// Skip the peers (Celery with Redis, Procrastinate with PostgreSQL).
    #[arg(long)]
    no_celery: bool,
    /// Worker processes (Attune and its peers alike).
    #[arg(long, default_value_t = 2)]
    workers: u32,
    /// Tasks each Attune worker process runs at once.
    #[arg(long, default_value_t = 64)]
    concurrency: u32,
    /// Only the console's page times with 100,000 executions stored (issue 15), per backend.
    #[arg(long)]
    console_only: bool,
    /// Only the workflow rows (a 3-step workflow's latency, a `with` of 1,000 items), per
    /// backend, without the peers.
    #[arg(long, conflicts_with = "console_only")]
    workflows_only: bool,
    /// Only a profile of N no-ops per backend: CPU time of each process and, on PostgreSQL,
    /// commits, WAL bytes and flushes per execution (issue 17). Prints tables; writes no JSON.
    #[arg(long, value_name = "N")]
    profile: Option<usize>,
    /// With `--profile`: the no-ops run under a concurrency limit, each with its own key (the
    /// benchmark's `bench.limited`, issue 16), instead of `core.noop`.
    #[arg(long, requires = "profile")]
    profile_limited: bool,
    /// Where the JSON results go.
    #[arg(long, default_value = "target/bench/latest.json")]
    out: PathBuf,
}

/// Counts for one run.
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct Sizes {
    pub noop: usize,
    pub shell: usize,
    pub latency: usize,
    pub backlog: usize,
    pub backlog_measured: usize,
    pub kills: usize,
    pub spawn_seconds: f64,
    /// Webhook events posted for the events/s row, and probes for webhook → started.
    pub events: usize,
    pub event_latency: usize,
    /// 3-step workflows run one at a time for the latency row.
    pub workflows: usize,
}

impl Args {
    fn sizes(&self) -> Sizes {
        if self.full {
            Sizes {
                noop: 20_000,
                shell: 5_000,
                latency: 1_000,
                backlog: 100_000,
                backlog_measured: 20_000,
                kills: 5,
                spawn_seconds: 5.0,
                events: 10_000,
                event_latency: 500,
                workflows: 300,
            }
        } else {
            Sizes {
                noop: 5_000,
                shell: 2_000,
                latency: 300,
                backlog: 20_000,
                backlog_measured: 5_000,
                kills: 3,
                spawn_seconds: 2.0,
                events: 2_000,
                event_latency: 200,
                workflows: 100,
            }
        }
    }
}

fn main() {
    let argv: Vec<String> = std::env::args().collect();
    if argv.get(1).map(String::as_str) == Some(cluster::ROLE_ARG) {
        // Re-executed as `attune …` by the benchmark itself.
        let args = std::iter::once("attune".to_string()).chain(argv[2..].iter().cloned());
        std::process::exit(attune_cli::run_from(args));
    }
    let args = Args::parse();
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().expect("tokio runtime");
    match rt.block_on(run(args)) {
        Ok(()) => {}
        Err(e) => {
            eprintln!("benchmark failed: {e:#}");
            std::process::exit(1);
        }
    }
}

async fn run(args: Args) -> anyhow::Result<()> {
    if let Some(n) = args.profile {
        for backend in &args.backends {
            profile::run(backend, &args, n).await?;
        }
        return Ok(());
    }
    let sizes = args.sizes();
    let mode = if args.full { "full" } else { "quick" };
    eprintln!(
        "attune-bench ({mode}): {sizes:?}, {} worker processes × {} slots",
        args.workers, args.concurrency
    );
    let mut results = report::Results::new(mode, &args, sizes);
    let spawn = workloads::raw_spawn_rate(sizes.spawn_seconds);
    eprintln!("raw `sh -c 'echo hello'` spawn rate on 2 threads: {spawn:.0}/s");
    results.spawn_rate = spawn;
    for backend in &args.backends {
        let r = if args.console_only {
            workloads::run_console_only(backend, &args).await?
        } else if args.workflows_only {
            workloads::run_workflows_only(backend, &args, sizes).await?
        } else {
            workloads::run_backend(backend, &args, sizes, spawn).await?
        };
        results.backends.push(r);
    }
    if !args.no_celery && !args.console_only && !args.workflows_only {
        match peers::celery(&args, sizes).await {
            Ok(c) => results.celery = Some(c),
            Err(e) => {
                eprintln!("celery comparison skipped: {e:#}");
                results.celery_error = Some(format!("{e:#}"));
            }
        }
        match peers::procrastinate(&args, sizes).await {
            Ok(c) => results.pg_peer = Some(c),
            Err(e) => {
                eprintln!("procrastinate comparison skipped: {e:#}");
                results.pg_peer_error = Some(format!("{e:#}"));
            }
        }
    }
    let table = results.markdown();
    println!("{table}");
    if let Some(dir) = args.out.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&args.out, serde_json::to_string_pretty(&results)?)?;
    eprintln!("results written to {}", args.out.display());
    Ok(())
}
