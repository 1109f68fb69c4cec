//! Every setting and its default, in one place. Loaded by the CLI from a YAML file, then
//! `ATTUNE__SECTION__KEY` environment variables, then flags; passed explicitly to each component.
//! Durations accept `10s`, `5m`, `250ms` or a plain number of seconds.

use std::{path::PathBuf, time::Duration};

use serde::{Deserialize, Serialize};

use crate::{action::Runtime, duration::serde_duration};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    /// Where `attune up` keeps its SQLite database (and anything else it writes).
    pub data_dir: PathBuf,
    pub server: ServerSettings,
    pub database: DatabaseSettings,
    pub executor: ExecutorSettings,
    pub worker: WorkerSettings,
    pub packs: PackSettings,
    pub log: LogSettings,
    pub client: ClientSettings,
    pub security: SecuritySettings,
}

/// Secrets at rest.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SecuritySettings {
    /// The key store's master key file (created, mode 0600, on a data directory's first start).
    /// Absent: `<data_dir>/master.key`. Every replica must read the same key; production keeps it
    /// outside the data directory (a mounted secret, say).
    pub master_key_file: Option<PathBuf>,
}

/// How the command line reaches the server.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ClientSettings {
    /// The API token the CLI sends (after `--token` and `ATTUNE_TOKEN`; before `./.attune/admin.token`).
    pub token: Option<String>,
    /// PEM certificates to trust for an `https://` server besides the system's (after `--ca-file`
    /// and `ATTUNE_CA_FILE`): the server's own certificate when it is self-signed, or its CA.
    pub ca_file: Option<PathBuf>,
}

/// The server's certificate and private key (PEM), for HTTPS.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsSettings {
    /// The certificate chain, the server's own certificate first.
    pub cert_file: PathBuf,
    /// Its private key (PKCS#8, PKCS#1 or SEC1).
    pub key_file: PathBuf,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServerSettings {
    /// Address the HTTP API listens on; port 0 picks a free port.
    pub listen: String,
    /// Longest a worker's poll may wait for work (a longer `wait_ms` is cut to this).
    #[serde(with = "serde_duration")]
    pub max_poll: Duration,
    /// Longest `GET /api/v1/executions/{id}/wait` may wait (a longer `timeout_ms` is cut to this).
    #[serde(with = "serde_duration")]
    pub max_wait: Duration,
    /// Open connections at most; past it the oldest are closed (idle ones at once, busy ones after
    /// their request), so that `/health` and workers always get through. Also kept below the
    /// process's file-descriptor limit.
    pub max_connections: usize,
    /// A connection must send a complete request header within this, and an idle keep-alive
    /// connection is closed after this.
    #[serde(with = "serde_duration")]
    pub header_timeout: Duration,
    /// A request body must arrive within this (408 otherwise).
    #[serde(with = "serde_duration")]
    pub body_timeout: Duration,
    /// Largest request body of the public API (413 beyond).
    pub max_body_bytes: usize,
    /// Serve `GET /metrics` without a token (for a Prometheus that cannot send one).
    pub metrics_public: bool,
    /// Host names (or addresses) requests may name in their `Host` header, besides localhost,
    /// 127.0.0.1, ::1 and the listen address (and, listening on 0.0.0.0 or ::, this machine's
    /// hostname and interface addresses). `"*"` allows any. Others get a 400 `host_not_allowed`
    /// (a browser led to the API by DNS rebinding names a foreign host).
    pub allowed_hosts: Vec<String>,
    /// Largest request of the worker protocol. 0 (the default) means what a report may need when
    /// each stream holds up to `worker.max_output_bytes`; set it lower only to match a proxy in
    /// front of the server (a larger report then fails its execution with the proxy's reason).
    pub max_worker_request_bytes: usize,
    /// Serve HTTPS with this certificate and key (absent: plain HTTP, fit only for loopback or a
    /// network that a proxy in front terminates TLS for).
    pub tls: Option<TlsSettings>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DatabaseSettings {
    /// `sqlite://PATH` or `postgres://USER@HOST:PORT/DB`; empty means SQLite under `data_dir`.
    pub url: String,
    pub max_connections: u32,
    #[serde(with = "serde_duration")]
    pub acquire_timeout: Duration,
    #[serde(with = "serde_duration")]
    pub statement_timeout: Duration,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ExecutorSettings {
    /// An execution still `scheduled` after this is failed (seed 003's execution timeout monitor).
    #[serde(with = "serde_duration")]
    pub scheduled_timeout: Duration,
    #[serde(with = "serde_duration")]
    pub timeout_check_interval: Duration,
    pub enable_timeout_monitor: bool,
    /// How often workers' heartbeats and executions' leases are checked.
    #[serde(with = "serde_duration")]
    pub heartbeat_check_interval: Duration,
    /// A task handed to a worker must be confirmed with `start` within this.
    #[serde(with = "serde_duration")]
    pub delivery_timeout: Duration,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WorkerSettings {
    /// Defaults to `<host>-<pid>`.
    pub name: Option<String>,
    /// Server URLs, tried in order.
    pub servers: Vec<String>,
    /// The server's value is sent to every worker at registration and is the one that counts;
    /// a worker is stale after `STALENESS_MULTIPLIER` × this.
    #[serde(with = "serde_duration")]
    pub heartbeat_interval: Duration,
    /// On SIGTERM/SIGINT, how long in-flight tasks may take to finish.
    #[serde(with = "serde_duration")]
    pub shutdown_timeout: Duration,
    /// Tasks run at once.
    pub concurrency: u32,
    /// Runtimes to offer; detected at start-up when absent.
    pub runtimes: Option<Vec<Runtime>>,
    /// The enrollment token (role `worker`) to register with; `<data_dir>/worker.token` when absent.
    pub token: Option<String>,
    /// PEM certificates to trust for `https://` servers besides the system's (after `--ca-file`).
    pub ca_file: Option<PathBuf>,
    /// Cap on captured stdout and on captured stderr, each.
    pub max_output_bytes: usize,
    /// After SIGTERM to a timed-out or canceled action, wait this long before SIGKILL.
    #[serde(with = "serde_duration")]
    pub kill_grace: Duration,
    /// Labels this worker offers to actions' `worker_selector`s (`region: eu`); `--label` adds to them.
    pub labels: std::collections::BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PackSettings {
    /// Directories whose sub-directories are packs, loaded at server start-up.
    pub dirs: Vec<PathBuf>,
    /// The largest pack archive (gzip-compressed tar) the server accepts; unpacked, a pack may
    /// be 8 times that.
    pub max_archive_bytes: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogSettings {
    /// `human` or `json`.
    pub format: String,
    /// A `tracing` filter, e.g. `info` or `attune_server=debug,info`.
    pub level: String,
}

/// A worker is stale once its last heartbeat is older than this many heartbeat intervals.
pub const STALENESS_MULTIPLIER: u32 = 3;

impl Settings {
    /// The one staleness rule: `STALENESS_MULTIPLIER × worker.heartbeat_interval`.
    pub fn staleness(&self) -> Duration {
        self.worker.heartbeat_interval * STALENESS_MULTIPLIER
    }

    /// The worker protocol's request limit: what a report may need (see `output::report_size_bound`)
    /// unless set explicitly.
    pub fn max_worker_request_bytes(&self) -> usize {
        match self.server.max_worker_request_bytes {
            0 => crate::output::report_size_bound(self.worker.max_output_bytes).max(1024 * 1024),
            n => n,
        }
    }

    /// The database URL, defaulting to SQLite under the data directory.
    pub fn database_url(&self) -> String {
        if self.database.url.is_empty() {
            format!("sqlite://{}", self.data_dir.join("attune.db").display())
        } else {
            self.database.url.clone()
        }
    }

    /// Checks what serde cannot: ranges and relations between settings.
    pub fn validate(&self) -> Result<(), String> {
        let w = &self.worker;
        if w.heartbeat_interval < Duration::from_millis(100) {
            return Err("worker.heartbeat_interval must be at least 100ms".into());
        }
        if w.concurrency == 0 || w.concurrency > 4096 {
            return Err("worker.concurrency must be between 1 and 4096".into());
        }
        if self.executor.heartbeat_check_interval.is_zero() || self.executor.timeout_check_interval.is_zero()
        {
            return Err("executor check intervals must be greater than 0".into());
        }
        if self.executor.delivery_timeout < Duration::from_millis(100) {
            return Err("executor.delivery_timeout must be at least 100ms".into());
        }
        if !matches!(self.log.format.as_str(), "human" | "json") {
            return Err(format!("log.format must be human or json, not {:?}", self.log.format));
        }
        if w.max_output_bytes < 1024 || w.max_output_bytes > 1024 * 1024 * 1024 {
            return Err("worker.max_output_bytes must be between 1024 and 1073741824 (1 GiB)".into());
        }
        let sv = &self.server;
        if sv.max_connections < 16 {
            return Err("server.max_connections must be at least 16".into());
        }
        if sv.header_timeout < Duration::from_millis(100) || sv.body_timeout < Duration::from_millis(100) {
            return Err("server.header_timeout and server.body_timeout must be at least 100ms".into());
        }
        if sv.max_body_bytes < 64 * 1024 {
            return Err("server.max_body_bytes must be at least 65536".into());
        }
        if sv.max_worker_request_bytes != 0 && sv.max_worker_request_bytes < 64 * 1024 {
            return Err("server.max_worker_request_bytes must be 0 (derived) or at least 65536".into());
        }
        if sv.max_poll.is_zero() || sv.max_wait.is_zero() {
            return Err("server.max_poll and server.max_wait must be greater than 0".into());
        }
        if !(64 * 1024..=1 << 32).contains(&self.packs.max_archive_bytes) {
            return Err("packs.max_archive_bytes must be between 65536 and 4294967296".into());
        }
        Ok(())
    }
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            data_dir: PathBuf::from(".attune"),
            server: ServerSettings::default(),
            database: DatabaseSettings::default(),
            executor: ExecutorSettings::default(),
            worker: WorkerSettings::default(),
            packs: PackSettings::default(),
            log: LogSettings::default(),
            client: ClientSettings::default(),
            security: SecuritySettings::default(),
        }
    }
}

impl Settings {
    /// The master key file in use (`security.master_key_file`, else `<data_dir>/master.key`).
    pub fn master_key_file(&self) -> PathBuf {
        self.security.master_key_file.clone().unwrap_or_else(|| self.data_dir.join("master.key"))
    }
}

impl Default for ServerSettings {
    fn default() -> Self {
        ServerSettings {
            listen: "127.0.0.1:8080".into(),
            max_poll: Duration::from_secs(30),
            max_wait: Duration::from_secs(60),
            max_connections: 10_000,
            header_timeout: Duration::from_secs(30),
            body_timeout: Duration::from_secs(60),
            max_body_bytes: 2 * 1024 * 1024,
            metrics_public: false,
            allowed_hosts: Vec::new(),
            max_worker_request_bytes: 0,
            tls: None,
        }
    }
}

impl Default for DatabaseSettings {
    fn default() -> Self {
        DatabaseSettings {
            url: String::new(),
            max_connections: 10,
            acquire_timeout: Duration::from_secs(10),
            statement_timeout: Duration::from_secs(30),
        }
    }
}

impl Default for ExecutorSettings {
    fn default() -> Self {
        ExecutorSettings {
            scheduled_timeout: Duration::from_secs(300),
            timeout_check_interval: Duration::from_secs(60),
            enable_timeout_monitor: true,
            heartbeat_check_interval: Duration::from_secs(5),
            delivery_timeout: Duration::from_secs(10),
        }
    }
}

impl Default for WorkerSettings {
    fn default() -> Self {
        WorkerSettings {
            name: None,
            servers: Vec::new(),
            heartbeat_interval: Duration::from_secs(10),
            shutdown_timeout: Duration::from_secs(30),
            concurrency: 8,
            runtimes: None,
            token: None,
            ca_file: None,
            max_output_bytes: 10 * 1024 * 1024,
            kill_grace: Duration::from_secs(5),
            labels: Default::default(),
        }
    }
}

impl Default for PackSettings {
    fn default() -> Self {
        PackSettings { dirs: vec![PathBuf::from("packs")], max_archive_bytes: 64 * 1024 * 1024 }
    }
}

impl Default for LogSettings {
    fn default() -> Self {
        LogSettings { format: "human".into(), level: "info".into() }
    }
}
