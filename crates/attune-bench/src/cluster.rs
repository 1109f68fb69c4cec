//! An Attune of the benchmark's own: one server process and N worker processes (this binary
//! re-executed as `attune`), on a fresh SQLite file or a fresh PostgreSQL database, killed on drop.

use std::{
    io::{BufRead, BufReader},
    process::{Child, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context};
use attune_client::Client;
use nix::{sys::signal::Signal, unistd::Pid};

pub const ROLE_ARG: &str = "__attune";

pub struct Process {
    pub child: Child,
}

impl Process {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn kill9(&mut self) {
        let _ = nix::sys::signal::killpg(Pid::from_raw(self.child.id() as i32), Signal::SIGKILL);
        let _ = self.child.wait();
    }

    /// Resident memory in bytes (VmRSS).
    pub fn rss(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).ok()?;
        let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
        let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kb * 1024)
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill9();
    }
}

fn spawn(
    args: &[&str],
    env: &[(&str, &str)],
) -> anyhow::Result<(Process, std::sync::mpsc::Receiver<String>)> {
    use std::os::unix::process::CommandExt;
    let exe = std::env::current_exe()?;
    #[allow(clippy::disallowed_methods)] // the benchmark starts Attune itself, not an action
    let mut cmd = std::process::Command::new(exe);
    cmd.arg(ROLE_ARG)
        .args(args)
        .envs(env.iter().copied())
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    let mut child = cmd.spawn().context("start attune")?;
    let (tx, rx) = std::sync::mpsc::channel();
    for pipe in [
        child.stdout.take().map(|p| Box::new(p) as Box<dyn std::io::Read + Send>),
        child.stderr.take().map(|p| Box::new(p) as Box<dyn std::io::Read + Send>),
    ]
    .into_iter()
    .flatten()
    {
        let tx = tx.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
    }
    Ok((Process { child }, rx))
}

/// A server process on port 0; returns it with the URL it printed. Its output keeps being drained
/// so that it never blocks on a full pipe.
fn start_server(
    db_url: &str,
    data_dir: &std::path::Path,
    envs: &[(&str, &str)],
) -> anyhow::Result<(Process, String)> {
    let dd = data_dir.display().to_string();
    let (p, rx) =
        spawn(&["server", "--listen", "127.0.0.1:0", "--database-url", db_url, "--data-dir", &dd], envs)?;
    let deadline = Instant::now() + Duration::from_secs(60);
    let url = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = rx.recv_timeout(left).context("the server did not say where it listens")?;
        if let Some(i) = line.find("http://127.0.0.1:") {
            break line[i..].trim().to_owned();
        }
    };
    std::thread::spawn(move || while rx.recv().is_ok() {});
    Ok((p, url))
}

pub struct Cluster {
    pub server: Process,
    pub workers: Vec<Process>,
    pub url: String,
    pub client: Client,
    pub db_url: String,
    /// The first server's admin token (good on every replica: tokens live in the database).
    pub admin: String,
    env: Vec<(String, String)>,
    drop_db: Option<(String, String)>,
    /// One connection to the database, opened on first use, for `terminal`.
    counter: tokio::sync::OnceCell<Counter>,
    _dir: tempdir::Dir,
}

enum Counter {
    Pg(sqlx::PgPool),
    Sqlite(sqlx::SqlitePool),
}

mod tempdir {
    /// A directory removed on drop (the benchmark needs no more than this).
    pub struct Dir(pub std::path::PathBuf);
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

fn packs_dir() -> String {
    let here = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../packs");
    here.canonicalize().unwrap_or(here).display().to_string()
}

impl Cluster {
    /// A server on `backend` ("sqlite" or "postgres"); no workers yet.
    pub async fn start(backend: &str, pg: &str) -> anyhow::Result<Cluster> {
        Self::start_with(backend, pg, |_| Ok(())).await
    }

    /// As `start`, with a pack directory of the run's own that `packs` fills first (loaded beside
    /// the repository's packs).
    pub async fn start_with(
        backend: &str,
        pg: &str,
        packs: impl FnOnce(&std::path::Path) -> anyhow::Result<()>,
    ) -> anyhow::Result<Cluster> {
        let dir = std::env::temp_dir().join(format!("attune-bench-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(dir.join("packs"))?;
        packs(&dir.join("packs"))?;
        let (db_url, drop_db) = match backend {
            "sqlite" => (format!("sqlite://{}", dir.join("bench.db").display()), None),
            "postgres" => {
                let name = format!("attune_bench_{}", uuid::Uuid::new_v4().simple());
                (format!("{}/{name}", pg.trim_end_matches('/')), Some((pg.to_owned(), name)))
            }
            other => bail!("unknown backend {other:?}; use sqlite or postgres"),
        };
        let mut env = vec![
            ("ATTUNE__WORKER__HEARTBEAT_INTERVAL".to_string(), "1s".to_string()),
            ("ATTUNE__EXECUTOR__HEARTBEAT_CHECK_INTERVAL".into(), "250ms".into()),
            ("ATTUNE__PACKS__DIRS".into(), format!("[{}, {}]", packs_dir(), dir.join("packs").display())),
            ("ATTUNE__DATABASE__MAX_CONNECTIONS".into(), "16".into()),
            // The workers' pack versions (the server gets --data-dir of its own).
            ("ATTUNE__DATA_DIR".into(), dir.join("workers").display().to_string()),
        ];
        let envs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let (server, url) = start_server(&db_url, &dir.join("server"), &envs)?;
        let read = |f: &str| -> anyhow::Result<String> {
            let path = dir.join("server").join(f);
            Ok(std::fs::read_to_string(&path)
                .with_context(|| format!("read {}", path.display()))?
                .trim()
                .to_owned())
        };
        let admin = read("admin.token")?;
        env.push(("ATTUNE__WORKER__TOKEN".into(), read("worker.token")?));
        Ok(Cluster {
            server,
            workers: Vec::new(),
            client: Client::new(&url).with_token(Some(admin.clone())),
            url,
            db_url,
            admin,

            env,
            drop_db,
            counter: Default::default(),
            _dir: tempdir::Dir(dir),
        })
    }

    /// A second server process on the same database (a replica); returns its process and URL.
    pub async fn add_replica(&self) -> anyhow::Result<(Process, String)> {
        let envs: Vec<(&str, &str)> = self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let dir = self._dir.0.join(format!("replica-{}", uuid::Uuid::new_v4().simple()));
        start_server(&self.db_url, &dir, &envs)
    }

    /// A client of `url` (this cluster's server or a replica), as the administrator.
    pub fn client_of(&self, url: &str) -> Client {
        Client::new(url).with_token(Some(self.admin.clone()))
    }

    /// Starts a worker process polling `server` (another replica) and waits until it is active.
    pub async fn add_worker_on(&mut self, server: &str, concurrency: u32) -> anyhow::Result<()> {
        let before = self.active_workers().await?;
        let name = format!("bench-replica-w{}", self.workers.len());
        let c = concurrency.to_string();
        let envs: Vec<(&str, &str)> = self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        let (p, rx) = spawn(&["--server", server, "worker", "--name", &name, "--concurrency", &c], &envs)?;
        std::thread::spawn(move || while rx.recv().is_ok() {});
        self.workers.push(p);
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.active_workers().await? <= before {
            if Instant::now() > deadline {
                bail!("worker did not register");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(())
    }

    /// Starts `n` worker processes with `concurrency` slots and waits until all are active.
    pub async fn add_workers(&mut self, n: u32, concurrency: u32) -> anyhow::Result<()> {
        let before = self.active_workers().await?;
        for i in 0..n {
            let name = format!("bench-w{}-{}", self.workers.len(), i);
            let c = concurrency.to_string();
            let envs: Vec<(&str, &str)> = self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            let (p, rx) =
                spawn(&["--server", &self.url, "worker", "--name", &name, "--concurrency", &c], &envs)?;
            std::thread::spawn(move || while rx.recv().is_ok() {});
            self.workers.push(p);
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.active_workers().await? < before + n as usize {
            if Instant::now() > deadline {
                bail!("workers did not register");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(())
    }

    pub async fn active_workers(&self) -> anyhow::Result<usize> {
        let ws = self.client.list_workers(false).await?;
        Ok(ws.iter().filter(|w| w.status == attune_core::WorkerStatus::Active).count())
    }

    /// How many executions have ended, read from `ended_per_minute`, which the statement ending
    /// executions adds to in its own transaction: a few rows. Counting `executions` by status
    /// (`/api/v1/stats`) reads every row: 40 ms with 20,000 stored on PostgreSQL, every 50 ms
    /// while waiting, which took CPU from the system being measured.
    pub async fn terminal(&self) -> anyhow::Result<u64> {
        let counter = self
            .counter
            .get_or_try_init(|| async {
                anyhow::Ok(if self.db_url.starts_with("postgres") {
                    Counter::Pg(
                        sqlx::postgres::PgPoolOptions::new().max_connections(1).connect(&self.db_url).await?,
                    )
                } else {
                    let opts =
                        <sqlx::sqlite::SqliteConnectOptions as std::str::FromStr>::from_str(&self.db_url)?
                            .read_only(true);
                    Counter::Sqlite(
                        sqlx::sqlite::SqlitePoolOptions::new().max_connections(1).connect_with(opts).await?,
                    )
                })
            })
            .await?;
        let sql = "SELECT CAST(COALESCE(SUM(n), 0) AS BIGINT) FROM ended_per_minute";
        let n: i64 = match counter {
            Counter::Pg(p) => sqlx::query_scalar(sql).fetch_one(p).await?,
            Counter::Sqlite(p) => sqlx::query_scalar(sql).fetch_one(p).await?,
        };
        Ok(n as u64)
    }

    pub async fn count(&self, status: &str) -> anyhow::Result<u64> {
        Ok(self.client.stats().await?["executions"][status].as_u64().unwrap_or(0))
    }

    /// Waits until at least `n` executions are terminal; returns when that was seen.
    pub async fn wait_terminal(&self, n: u64, limit: Duration) -> anyhow::Result<Instant> {
        let deadline = Instant::now() + limit;
        loop {
            if self.terminal().await? >= n {
                return Ok(Instant::now());
            }
            if Instant::now() > deadline {
                bail!("only {} of {n} executions finished within {limit:?}", self.terminal().await?);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Runs `sql` with `psql` on the database at `db_url` (unaligned, tuples only); its output.
pub async fn psql(db_url: &str, sql: &str) -> anyhow::Result<String> {
    let (url, sql) = (db_url.to_owned(), sql.to_owned());
    let out = tokio::task::spawn_blocking(move || {
        #[allow(clippy::disallowed_methods)] // psql for VACUUM and the statistics views
        std::process::Command::new("psql").args([url.as_str(), "-qAtc", sql.as_str()]).output()
    })
    .await??;
    anyhow::ensure!(out.status.success(), "psql: {}", String::from_utf8_lossy(&out.stderr));
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.workers.clear();
        self.server.kill9();
        if let Some((admin, name)) = self.drop_db.take() {
            let url = format!("{}/postgres", admin.trim_end_matches('/'));
            #[allow(clippy::disallowed_methods)] // psql to drop the benchmark's database
            let _ = std::process::Command::new("psql")
                .args([url.as_str(), "-q", "-c", &format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
}
