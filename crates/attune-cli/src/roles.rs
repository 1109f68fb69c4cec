//! The long-running roles: `up` (server + workers in one process), `server`, `worker`.
//! Each stops gracefully on the first SIGINT/SIGTERM and at once on the second.

use std::{path::Path, sync::Arc};

use anyhow::Context;
use attune_core::config::Settings;
use attune_server::{Server, ServerOptions};
use attune_store::{Store, StoreOptions};
use attune_worker::{Agent, WorkerOptions};
use clap::Args;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::settings::{load, Override};

#[derive(Args)]
pub struct UpArgs {
    /// Where the SQLite database lives.
    #[arg(long)]
    data_dir: Option<String>,
    /// Address for the API.
    #[arg(long)]
    listen: Option<String>,
    /// Number of workers to run in this process.
    #[arg(long, default_value_t = 1)]
    workers: u32,
    /// Tasks each worker runs at once.
    #[arg(long)]
    concurrency: Option<u32>,
    /// Use this database instead of SQLite under the data dir (e.g. postgres://postgres@127.0.0.1/attune).
    #[arg(long)]
    database_url: Option<String>,
    /// Reload a pack under packs.dirs as soon as one of its files changes (for editing packs;
    /// each change is a new version, as with `attune pack load`).
    #[arg(long)]
    watch: bool,
}

#[derive(Args)]
pub struct ServerArgs {
    /// Address for the API; port 0 picks a free port (printed on start).
    #[arg(long)]
    listen: Option<String>,
    /// sqlite://PATH or postgres://USER@HOST:PORT/DB (default: SQLite under the data dir).
    #[arg(long)]
    database_url: Option<String>,
    #[arg(long)]
    data_dir: Option<String>,
}

#[derive(Args)]
pub struct WorkerArgs {
    /// Worker name (default: HOST-PID).
    #[arg(long)]
    name: Option<String>,
    /// Tasks run at once.
    #[arg(long)]
    concurrency: Option<u32>,
    /// A label offered to actions' worker selectors (repeatable; added to worker.labels).
    #[arg(long = "label", value_name = "NAME=VALUE")]
    labels: Vec<String>,
}

fn init_logging(s: &Settings) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&s.log.level));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let _ = if s.log.format == "json" { builder.json().try_init() } else { builder.try_init() };
}

/// Cancels the returned token on the first SIGINT/SIGTERM; on the second, kills every action
/// process this process started and exits with 130.
fn on_signals() -> (CancellationToken, tokio::task::JoinHandle<()>) {
    let token = CancellationToken::new();
    let t = token.clone();
    let handle = tokio::spawn(async move {
        use tokio::signal::unix::{signal, SignalKind};
        let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt()))
        else {
            return;
        };
        tokio::select! { _ = term.recv() => {}, _ = int.recv() => {} }
        eprintln!("stopping gracefully (signal again to stop at once)…");
        t.cancel();
        tokio::select! { _ = term.recv() => {}, _ = int.recv() => {} }
        eprintln!("stopping now");
        attune_worker::process::kill_all();
        std::process::exit(130);
    });
    (token, handle)
}

async fn open_store(s: &Settings) -> anyhow::Result<Arc<Store>> {
    let mut o = StoreOptions::new(s.database_url());
    o.max_connections = s.database.max_connections;
    o.acquire_timeout = s.database.acquire_timeout;
    o.statement_timeout = s.database.statement_timeout;
    let store = Store::open(&o).await?;
    Ok(Arc::new(store))
}

/// Loads `packs.dirs`: the packs loaded, and the problems (a pack refused, with its first
/// error; a directory missing).
async fn load_packs(store: &Store, s: &Settings) -> (Vec<String>, Vec<String>) {
    let (loaded, problems) = attune_server::packs::load_dirs(
        store,
        &s.packs.dirs,
        &attune_server::packs::limits(s.packs.max_archive_bytes),
    )
    .await;
    for p in &problems {
        tracing::warn!("pack not loaded: {p}");
    }
    (loaded, problems)
}

/// The banner's lines on packs: what loaded, and what did not with its first error, truthfully.
fn packs_banner(s: &Settings, loaded: &[String], problems: &[String]) -> Vec<String> {
    let dirs = s.packs.dirs.iter().map(|d| d.display().to_string()).collect::<Vec<_>>().join(", ");
    let mut lines = vec![match (loaded.is_empty(), problems.is_empty()) {
        (false, _) => loaded.join(", "),
        (true, true) => format!("none found in {dirs} (a pack is a directory with a pack.yaml)"),
        (true, false) => format!("none loaded from {dirs}"),
    }];
    for p in problems {
        let first = p.lines().next().unwrap_or_default();
        let more = p.lines().count().saturating_sub(1);
        let more = if more > 0 { format!(" (and {more} more)") } else { String::new() };
        lines.push(format!("refused: {first}{more}"));
    }
    lines
}

async fn bind(addr: &str) -> anyhow::Result<TcpListener> {
    TcpListener::bind(addr).await.with_context(|| format!("listen on {addr}"))
}

fn worker_options(
    s: &Settings,
    servers: Vec<String>,
    name: String,
    scratch: std::path::PathBuf,
    trust: attune_client::Trust,
) -> WorkerOptions {
    WorkerOptions {
        trust,
        servers,
        name,
        concurrency: s.worker.concurrency,
        runtimes: s.worker.runtimes.clone().unwrap_or_else(attune_worker::detect_runtimes),
        shutdown_timeout: s.worker.shutdown_timeout,
        max_output: s.worker.max_output_bytes,
        kill_grace: s.worker.kill_grace,
        labels: serde_json::to_value(&s.worker.labels).unwrap_or_default(),
        scratch_dir: scratch,
        pack_cache: s.data_dir.join("packs"),
        enroll_token: enrollment_token(s),
    }
}

/// `worker.token`, else the one the server's first start wrote into this data directory.
fn enrollment_token(s: &Settings) -> Option<String> {
    s.worker
        .token
        .clone()
        .or_else(|| std::fs::read_to_string(s.data_dir.join("worker.token")).ok())
        .map(|t| t.trim().to_owned())
}

/// Creates the first tokens of a data directory and says where they are.
async fn bootstrap(store: &Store, s: &Settings) -> anyhow::Result<()> {
    let b = attune_server::auth::bootstrap(store, &s.data_dir).await.context("create the first tokens")?;
    for f in &b.created {
        println!("Wrote a new token to {} (mode 0600).", f.display());
    }
    for f in &b.stale {
        tracing::warn!(file = %f.display(), "this token file holds a token that is revoked, expired or unknown to this database");
    }
    Ok(())
}

pub async fn up(config: Option<&Path>, a: UpArgs) -> anyhow::Result<i32> {
    let mut flags = Vec::new();
    if let Some(d) = a.data_dir {
        flags.push(Override::str("data_dir", d));
    }
    if let Some(l) = a.listen {
        flags.push(Override::str("server.listen", l));
    }
    if let Some(u) = a.database_url {
        flags.push(Override::str("database.url", u));
    }
    if let Some(c) = a.concurrency {
        flags.push(Override::num("worker.concurrency", c as u64));
    }
    let s = load(config, flags)?;
    init_logging(&s);
    let opts = ServerOptions::load(&s)?;
    // Its own workers trust what a worker is told to (`worker.ca_file`), else the server's own
    // certificate (enough when it is self-signed).
    let trust = attune_client::Trust::from_optional_file(
        s.worker.ca_file.as_deref().or(s.server.tls.as_ref().map(|t| t.cert_file.as_path())),
    )
    .map_err(anyhow::Error::msg)?;
    let store = open_store(&s).await?;
    bootstrap(&store, &s).await?;
    let packs = load_packs(&store, &s).await;
    let listener = bind(&s.server.listen).await?;
    let url = url_of(&listener, &s)?;
    let (stop, signals) = on_signals();

    let server_stop = CancellationToken::new();
    let server = Server::build(opts, store.clone());
    let mut server_task = tokio::spawn(server.run(listener, server_stop.clone()));

    let host = attune_worker_host();
    let mut workers = tokio::task::JoinSet::new();
    let worker_stop = CancellationToken::new();
    let runtimes = s.worker.runtimes.clone().unwrap_or_else(attune_worker::detect_runtimes);
    for i in 1..=a.workers {
        let name = format!("{host}-up-{i}");
        let opts = worker_options(&s, vec![url.clone()], name, s.data_dir.join("tmp"), trust.clone());
        workers.spawn(Agent::build(opts).run(worker_stop.clone()));
    }

    let exe = std::env::current_exe().ok();
    let cmd = exe
        .as_deref()
        .and_then(|p| {
            std::env::current_dir()
                .ok()
                .and_then(|cwd| p.strip_prefix(cwd).ok().map(|r| format!("./{}", r.display())))
        })
        .unwrap_or_else(|| "attune".into());
    let mut server_flag =
        if url == "http://127.0.0.1:8080" { String::new() } else { format!(" --server {url}") };
    if let Some(t) = &s.server.tls {
        let ca = s.worker.ca_file.as_deref().unwrap_or(&t.cert_file);
        server_flag.push_str(&format!(" --ca-file {}", ca.display()));
    }
    println!("Attune {} is up.", env!("CARGO_PKG_VERSION"));
    println!("  Console    {url}/   (sign in with the token below)");
    println!("  API        {url}/api/v1   (health: {url}/health)");
    println!("  Database   {}", attune_store::redact(&s.database_url()));
    println!(
        "  Workers    {} × {} slots, runtimes: {}",
        a.workers,
        s.worker.concurrency,
        runtimes.iter().map(|r| r.as_str()).collect::<Vec<_>>().join(", ")
    );
    for (i, line) in packs_banner(&s, &packs.0, &packs.1).iter().enumerate() {
        println!("  {}{line}", if i == 0 { "Packs      " } else { "             " });
    }
    println!();
    let admin = s.data_dir.join("admin.token");
    if s.data_dir == Path::new(".attune") {
        println!("  Token      {} (the CLI run from this directory uses it)", admin.display());
    } else {
        println!("  Token      {} (use it with --token or ATTUNE_TOKEN)", admin.display());
    }
    println!();
    let watcher = a.watch.then(|| {
        let token = std::fs::read_to_string(&admin).ok().map(|t| t.trim().to_owned());
        let client = attune_client::Client::with_trust(&url, &trust).with_token(token);
        println!(
            "  Watching   {} (a changed pack is reloaded)",
            s.packs.dirs.iter().map(|d| d.display().to_string()).collect::<Vec<_>>().join(", ")
        );
        println!();
        tokio::spawn(crate::watch::watch(client, s.packs.dirs.clone(), worker_stop.clone()))
    });
    println!("Try, in another terminal:");
    println!("  {cmd}{server_flag} run core.echo message=hello --wait");
    println!("Press Ctrl-C to stop.");

    tokio::select! {
        _ = stop.cancelled() => {}
        r = &mut server_task => {
            worker_stop.cancel();
            while workers.join_next().await.is_some() {}
            signals.abort();
            return match r { Ok(Ok(())) => Ok(1), Ok(Err(e)) => Err(e), Err(e) => Err(e.into()) };
        }
    }
    // Workers first (they drain through the server), then the server.
    worker_stop.cancel();
    if let Some(w) = watcher {
        let _ = w.await;
    }
    while workers.join_next().await.is_some() {}
    server_stop.cancel();
    server_task.await??;
    store.close().await;
    signals.abort();
    Ok(0)
}

fn attune_worker_host() -> String {
    nix_hostname().split('.').next().unwrap_or("localhost").to_owned()
}

fn nix_hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| "localhost".into())
}

pub async fn server(config: Option<&Path>, a: ServerArgs) -> anyhow::Result<i32> {
    let mut flags = Vec::new();
    if let Some(l) = a.listen {
        flags.push(Override::str("server.listen", l));
    }
    if let Some(u) = a.database_url {
        flags.push(Override::str("database.url", u));
    }
    if let Some(d) = a.data_dir {
        flags.push(Override::str("data_dir", d));
    }
    let s = load(config, flags)?;
    init_logging(&s);
    let opts = ServerOptions::load(&s)?;
    let store = open_store(&s).await?;
    bootstrap(&store, &s).await?;
    let (packs, _) = load_packs(&store, &s).await;
    let listener = bind(&s.server.listen).await?;
    let url = url_of(&listener, &s)?;
    tracing::info!(packs = ?packs, database = %attune_store::redact(&s.database_url()), "server starting");
    println!("attune server listening on {url}");
    let (stop, signals) = on_signals();
    Server::build(opts, store.clone()).run(listener, stop).await?;
    store.close().await;
    signals.abort();
    Ok(0)
}

/// How this machine reaches a listener: `https://` when `server.tls` is set; a wildcard address
/// (`0.0.0.0`, `::`) is reached on the loopback.
fn url_of(listener: &tokio::net::TcpListener, s: &Settings) -> anyhow::Result<String> {
    let mut addr = listener.local_addr()?;
    if addr.ip().is_unspecified() {
        addr.set_ip(if addr.is_ipv4() {
            std::net::Ipv4Addr::LOCALHOST.into()
        } else {
            std::net::Ipv6Addr::LOCALHOST.into()
        });
    }
    Ok(format!("{}://{addr}", if s.server.tls.is_some() { "https" } else { "http" }))
}

pub async fn worker(
    config: Option<&Path>,
    server: &str,
    ca_file: Option<&Path>,
    a: WorkerArgs,
) -> anyhow::Result<i32> {
    let mut flags = Vec::new();
    if let Some(n) = a.name {
        flags.push(Override::str("worker.name", n));
    }
    if let Some(c) = a.concurrency {
        flags.push(Override::num("worker.concurrency", c as u64));
    }
    let mut s = load(config, flags)?;
    if let Some(serde_json::Value::Object(m)) = Some(crate::cmds::parse_labels(&a.labels, "--label")?) {
        for (k, v) in m {
            s.worker.labels.insert(k, v.as_str().unwrap_or_default().to_owned());
        }
    }
    if let Some(bad) = s.worker.labels.keys().find(|k| !attune_core::action::valid_label_name(k)) {
        return Err(crate::cmds::usage(format!(
            "worker.labels: label name {bad:?} must be 1 to 63 of A-Z a-z 0-9 . _ -"
        )));
    }
    init_logging(&s);
    let name =
        s.worker.name.clone().unwrap_or_else(|| format!("{}-{}", attune_worker_host(), std::process::id()));
    // Several servers (replicas): `--server http://a:8080,http://b:8080` or `worker.servers`.
    let servers = if s.worker.servers.is_empty() {
        server.split(',').map(|u| u.trim().to_owned()).filter(|u| !u.is_empty()).collect()
    } else {
        s.worker.servers.clone()
    };
    let scratch = std::env::temp_dir().join(format!("attune-{name}"));
    let trust = attune_client::Trust::from_optional_file(ca_file.or(s.worker.ca_file.as_deref()))
        .map_err(crate::cmds::UsageError)?;
    let (stop, signals) = on_signals();
    Agent::build(worker_options(&s, servers, name, scratch, trust)).run(stop).await?;
    signals.abort();
    Ok(0)
}
