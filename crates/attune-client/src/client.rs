//! `Client`: typed calls to a running Attune server, with errors that keep the server's message.

use std::time::Duration;

use attune_core::{Action, DeadLetter, Execution, Lease, PackDetail, PackSummary, Report, Worker};
use reqwest::{Method, StatusCode};
use serde::{de::DeserializeOwned, Serialize};
use uuid::Uuid;

use attune_wire::*;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The server answered with an error body.
    #[error("{message} ({status}, {code})")]
    Api { status: u16, code: String, message: String, details: Vec<String> },
    /// No answer: refused, reset, timed out.
    #[error("cannot reach the Attune server at {url}: {message}")]
    Unreachable { url: String, message: String },
    #[error("unexpected answer from {url}: {message}")]
    Protocol { url: String, message: String },
}

impl ClientError {
    pub fn status(&self) -> Option<u16> {
        match self {
            ClientError::Api { status, .. } => Some(*status),
            _ => None,
        }
    }
    /// Worth retrying: the server was unreachable or answered 5xx/429.
    pub fn is_transient(&self) -> bool {
        match self {
            ClientError::Api { status, .. } => *status >= 500 || *status == 429,
            ClientError::Unreachable { .. } => true,
            ClientError::Protocol { .. } => false,
        }
    }
}

/// Certificates a client trusts for `https://` servers besides the system's own store: the
/// server's certificate when it is self-signed, or the CA that signed it.
#[derive(Clone, Default)]
pub struct Trust {
    certs: Vec<reqwest::Certificate>,
}

impl std::fmt::Debug for Trust {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Trust({} certificates)", self.certs.len())
    }
}

impl Trust {
    /// Every certificate of a PEM file (`--ca-file`).
    pub fn from_pem_file(path: &std::path::Path) -> Result<Trust, String> {
        let pem = std::fs::read(path).map_err(|e| format!("CA file {}: {e}", path.display()))?;
        let certs = reqwest::Certificate::from_pem_bundle(&pem)
            .map_err(|e| format!("CA file {}: {}", path.display(), error_chain(&e)))?;
        if certs.is_empty() {
            return Err(format!("CA file {}: no PEM certificate in it", path.display()));
        }
        // PEM that holds no valid X.509 certificate fails only when a client is built: find out now.
        let mut probe = reqwest::Client::builder().tls_built_in_root_certs(false);
        for c in &certs {
            probe = probe.add_root_certificate(c.clone());
        }
        probe.build().map_err(|e| format!("CA file {}: {}", path.display(), error_chain(&e)))?;
        Ok(Trust { certs })
    }

    /// `path`'s certificates, or none.
    pub fn from_optional_file(path: Option<&std::path::Path>) -> Result<Trust, String> {
        path.map(Trust::from_pem_file).transpose().map(Option::unwrap_or_default)
    }
}

#[derive(Clone)]
pub struct Client {
    base: String,
    http: reqwest::Client,
    /// Sent as `Authorization: Bearer` with every request.
    token: Option<String>,
}

impl Client {
    /// A client trusting the system's certificates only.
    pub fn new(base: &str) -> Self {
        Self::with_trust(base, &Trust::default())
    }

    /// A client trusting `trust` besides the system's certificates.
    pub fn with_trust(base: &str, trust: &Trust) -> Self {
        let builder = |native_roots: bool| {
            let mut b = reqwest::Client::builder()
                .connect_timeout(Duration::from_secs(5))
                // Below the server's idle timeout (30 s), so a pooled connection is not reused just
                // as the server closes it.
                .pool_idle_timeout(Duration::from_secs(20))
                .tcp_nodelay(true)
                .tls_built_in_root_certs(native_roots);
            for c in &trust.certs {
                b = b.add_root_certificate(c.clone());
            }
            b.build()
        };
        // The system's store can hold nothing usable (a bare container); then only `trust` counts.
        let http = builder(true)
            .or_else(|_| builder(false))
            .expect("certificates were checked by Trust::from_pem_file, and nothing else can fail");
        Client { base: base.trim_end_matches('/').to_owned(), http, token: None }
    }

    /// The same client, sending `token` with every request.
    pub fn with_token(mut self, token: Option<String>) -> Self {
        self.token = token.map(|t| t.trim().to_owned()).filter(|t| !t.is_empty());
        self
    }

    pub fn base_url(&self) -> &str {
        &self.base
    }

    async fn call<B: Serialize, T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&B>,
        timeout: Duration,
    ) -> Result<T, ClientError> {
        let url = format!("{}{}", self.base, path);
        let mut req = self.http.request(method, &url).timeout(timeout);
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(b);
        }
        let resp = req
            .send()
            .await
            .map_err(|e| ClientError::Unreachable { url: self.base.clone(), message: error_chain(&e) })?;
        let status = resp.status();
        let bytes = resp
            .bytes()
            .await
            .map_err(|e| ClientError::Unreachable { url: self.base.clone(), message: error_chain(&e) })?;
        if status.is_success() {
            return serde_json::from_slice(&bytes)
                .map_err(|e| ClientError::Protocol { url: url.clone(), message: format!("{status}: {e}") });
        }
        Err(api_error(status, &bytes))
    }

    fn unreachable(&self, e: &reqwest::Error) -> ClientError {
        ClientError::Unreachable { url: self.base.clone(), message: error_chain(e) }
    }

    /// Sends `body` as it is (not JSON) and reads a JSON answer.
    async fn post_bytes<T: DeserializeOwned>(
        &self,
        path: &str,
        content_type: &str,
        body: Vec<u8>,
        timeout: Duration,
    ) -> Result<T, ClientError> {
        let url = format!("{}{}", self.base, path);
        let mut req = self
            .http
            .post(&url)
            .timeout(timeout)
            .header(reqwest::header::CONTENT_TYPE, content_type)
            .body(body);
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        let resp = req.send().await.map_err(|e| self.unreachable(&e))?;
        let status = resp.status();
        let bytes = resp.bytes().await.map_err(|e| self.unreachable(&e))?;
        if status.is_success() {
            return serde_json::from_slice(&bytes)
                .map_err(|e| ClientError::Protocol { url: url.clone(), message: format!("{status}: {e}") });
        }
        Err(api_error(status, &bytes))
    }

    /// Streams what `path` answers into `sink`, chunk by chunk as it arrives; returns the number of
    /// bytes. A sink error stops the transfer.
    async fn get_stream(
        &self,
        path: &str,
        timeout: Duration,
        mut sink: impl FnMut(&[u8]) -> std::io::Result<()>,
    ) -> Result<u64, ClientError> {
        let url = format!("{}{}", self.base, path);
        let mut req = self.http.get(&url).timeout(timeout);
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        let mut resp = req.send().await.map_err(|e| self.unreachable(&e))?;
        let status = resp.status();
        if !status.is_success() {
            let bytes = resp.bytes().await.map_err(|e| self.unreachable(&e))?;
            return Err(api_error(status, &bytes));
        }
        let mut n = 0u64;
        while let Some(chunk) = resp.chunk().await.map_err(|e| self.unreachable(&e))? {
            sink(&chunk).map_err(|e| ClientError::Protocol {
                url: url.clone(),
                message: format!("cannot keep the download: {e}"),
            })?;
            n += chunk.len() as u64;
        }
        Ok(n)
    }
}

/// The error a failed answer carries: the server's error body, or what it sent instead.
fn api_error(status: StatusCode, bytes: &[u8]) -> ClientError {
    match serde_json::from_slice::<ErrorBody>(bytes) {
        Ok(b) => ClientError::Api {
            status: status.as_u16(),
            code: b.error.code,
            message: b.error.message,
            details: b.error.details,
        },
        Err(_) => ClientError::Api {
            status: status.as_u16(),
            code: canonical(status),
            message: String::from_utf8_lossy(bytes).chars().take(500).collect(),
            details: Vec::new(),
        },
    }
}

impl Client {
    async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        self.call::<(), T>(Method::GET, path, None, Duration::from_secs(30)).await
    }

    async fn post<B: Serialize, T: DeserializeOwned>(&self, path: &str, body: &B) -> Result<T, ClientError> {
        self.call(Method::POST, path, Some(body), Duration::from_secs(30)).await
    }

    // ---- API ----

    pub async fn health(&self) -> Result<Health, ClientError> {
        self.get("/health").await
    }

    pub async fn create_execution(&self, req: &CreateExecution) -> Result<Execution, ClientError> {
        self.post("/api/v1/executions", req).await
    }

    pub async fn get_execution(&self, id: Uuid) -> Result<Execution, ClientError> {
        self.get(&format!("/api/v1/executions/{id}")).await
    }

    /// `query` is a ready query string without `?` (e.g. `status=running&limit=20`).
    pub async fn list_executions(&self, query: &str) -> Result<ExecutionList, ClientError> {
        self.get(&format!("/api/v1/executions?{query}")).await
    }

    /// Waits (up to `timeout`, at most 60 s) until the execution has started (`until_running`) or
    /// ended, and returns it as it is then.
    pub async fn wait_execution(
        &self,
        id: Uuid,
        until_running: bool,
        timeout: Duration,
    ) -> Result<Execution, ClientError> {
        let until = if until_running { "running" } else { "terminal" };
        let path = format!("/api/v1/executions/{id}/wait?until={until}&timeout_ms={}", timeout.as_millis());
        self.call::<(), Execution>(Method::GET, &path, None, timeout + Duration::from_secs(10)).await
    }

    /// Output chunks stored after `after`.
    pub async fn execution_logs(&self, id: Uuid, after: i64) -> Result<Logs, ClientError> {
        self.get(&format!("/api/v1/executions/{id}/logs?after={after}")).await
    }

    /// Sends output of a running attempt.
    pub async fn append_logs(
        &self,
        worker: Uuid,
        execution: Uuid,
        lease_token: &str,
        chunks: Vec<attune_core::LogChunk>,
    ) -> Result<serde_json::Value, ClientError> {
        let body = AppendLogs { lease_token: lease_token.to_owned(), chunks };
        self.post(&format!("/api/v1/worker/{worker}/executions/{execution}/logs"), &body).await
    }

    /// Executions by status and workers by status.
    pub async fn stats(&self) -> Result<serde_json::Value, ClientError> {
        self.get("/api/v1/stats").await
    }

    /// A workflow's task executions, oldest first.
    pub async fn execution_children(&self, id: Uuid) -> Result<ExecutionList, ClientError> {
        self.get(&format!("/api/v1/executions/{id}/children")).await
    }

    pub async fn pause_workflow(&self, id: Uuid) -> Result<Execution, ClientError> {
        self.post(&format!("/api/v1/executions/{id}/pause"), &serde_json::json!({})).await
    }

    pub async fn resume_workflow(&self, id: Uuid) -> Result<Execution, ClientError> {
        self.post(&format!("/api/v1/executions/{id}/resume"), &serde_json::json!({})).await
    }

    /// Inquiries waiting for a response, newest first.
    pub async fn list_inquiries(&self) -> Result<ExecutionList, ClientError> {
        self.get("/api/v1/inquiries").await
    }

    pub async fn respond_inquiry(
        &self,
        id: Uuid,
        response: serde_json::Value,
    ) -> Result<Execution, ClientError> {
        self.post(
            &format!("/api/v1/inquiries/{id}/respond"),
            &attune_wire::InquiryResponse { response: Some(response) },
        )
        .await
    }

    pub async fn cancel_execution(&self, id: Uuid) -> Result<Execution, ClientError> {
        self.post(&format!("/api/v1/executions/{id}/cancel"), &serde_json::json!({})).await
    }

    /// Workers; deregistered ones too with `all`.
    pub async fn list_workers(&self, all: bool) -> Result<Vec<Worker>, ClientError> {
        self.get(&format!("/api/v1/workers?all={all}")).await
    }

    pub async fn list_packs(&self) -> Result<Vec<PackSummary>, ClientError> {
        self.get("/api/v1/packs").await
    }

    /// Asks the server to (re)load a pack directory it has.
    pub async fn load_pack(&self, req: &LoadPack) -> Result<PackLoaded, ClientError> {
        self.post("/api/v1/packs", req).await
    }

    /// Sends a pack as its content: `archive` is the pack directory as a gzip-compressed tar
    /// (`attune_pack::archive::build`).
    pub async fn upload_pack(
        &self,
        archive: Vec<u8>,
        replace: bool,
        source: Option<&str>,
    ) -> Result<PackLoaded, ClientError> {
        let mut path = format!("/api/v1/pack-archives?replace={replace}");
        if let Some(s) = source {
            path.push_str("&source=");
            path.push_str(&percent_encode(s));
        }
        self.post_bytes(&path, "application/gzip", archive, Duration::from_secs(300)).await
    }

    /// A pack and its stored versions.
    pub async fn get_pack(&self, pack_ref: &str) -> Result<PackDetail, ClientError> {
        self.get(&format!("/api/v1/packs/{pack_ref}")).await
    }

    /// Streams the archive of pack version `digest` into `sink` (worker protocol).
    pub async fn fetch_pack(
        &self,
        worker: Uuid,
        digest: &str,
        sink: impl FnMut(&[u8]) -> std::io::Result<()>,
    ) -> Result<u64, ClientError> {
        self.get_stream(&format!("/api/v1/worker/{worker}/packs/{digest}"), Duration::from_secs(600), sink)
            .await
    }

    pub async fn list_actions(&self) -> Result<Vec<Action>, ClientError> {
        self.get("/api/v1/actions").await
    }

    pub async fn get_action(&self, action_ref: &str) -> Result<Action, ClientError> {
        self.get(&format!("/api/v1/actions/{action_ref}")).await
    }

    // ---- worker protocol ----

    pub async fn register(&self, req: &RegisterWorker) -> Result<Registered, ClientError> {
        self.post("/api/v1/worker/register", req).await
    }

    pub async fn heartbeat(&self, worker: Uuid, leases: Vec<Lease>) -> Result<HeartbeatReply, ClientError> {
        self.heartbeat_with(worker, Heartbeat { leases, sensors: Vec::new() }).await
    }

    /// A heartbeat that also names the sensors the worker runs.
    pub async fn heartbeat_with(&self, worker: Uuid, hb: Heartbeat) -> Result<HeartbeatReply, ClientError> {
        self.post(&format!("/api/v1/worker/{worker}/heartbeat"), &hb).await
    }

    pub async fn sensor_events(
        &self,
        worker: Uuid,
        sensor: &str,
        body: &attune_wire::SensorEvents,
    ) -> Result<attune_wire::SensorEventsReply, ClientError> {
        self.post(&format!("/api/v1/worker/{worker}/sensors/{sensor}/events"), body).await
    }

    pub async fn sensor_exit(
        &self,
        worker: Uuid,
        sensor: &str,
        body: &attune_wire::SensorExit,
    ) -> Result<attune_wire::SensorExitReply, ClientError> {
        self.post(&format!("/api/v1/worker/{worker}/sensors/{sensor}/exit"), body).await
    }

    /// Long-polls; the HTTP timeout is the wait plus a margin.
    pub async fn poll(&self, worker: Uuid, max_tasks: u32, wait: Duration) -> Result<PollReply, ClientError> {
        let body = Poll { max_tasks, wait_ms: wait.as_millis().min(u32::MAX as u128) as u32 };
        self.call(
            Method::POST,
            &format!("/api/v1/worker/{worker}/poll"),
            Some(&body),
            wait + Duration::from_secs(10),
        )
        .await
    }

    pub async fn start(
        &self,
        worker: Uuid,
        execution: Uuid,
        lease_token: &str,
    ) -> Result<Execution, ClientError> {
        let body = Start { lease_token: lease_token.to_owned() };
        self.post(&format!("/api/v1/worker/{worker}/executions/{execution}/start"), &body).await
    }

    pub async fn complete(
        &self,
        worker: Uuid,
        execution: Uuid,
        lease_token: &str,
        report: Report,
    ) -> Result<Execution, ClientError> {
        let body = Complete { lease_token: lease_token.to_owned(), report };
        self.post(&format!("/api/v1/worker/{worker}/executions/{execution}/complete"), &body).await
    }

    pub async fn start_batch(&self, worker: Uuid, leases: Vec<Lease>) -> Result<BatchReply, ClientError> {
        self.post(&format!("/api/v1/worker/{worker}/start-batch"), &StartBatch { leases }).await
    }

    pub async fn complete_batch(
        &self,
        worker: Uuid,
        reports: Vec<CompleteItem>,
    ) -> Result<BatchReply, ClientError> {
        self.post(&format!("/api/v1/worker/{worker}/complete-batch"), &CompleteBatch { reports }).await
    }

    /// Gives a task back that this worker cannot finish (shutting down).
    pub async fn release(
        &self,
        worker: Uuid,
        execution: Uuid,
        lease_token: &str,
    ) -> Result<serde_json::Value, ClientError> {
        let body = Start { lease_token: lease_token.to_owned() };
        self.post(&format!("/api/v1/worker/{worker}/executions/{execution}/release"), &body).await
    }

    pub async fn create_token(&self, req: &CreateToken) -> Result<CreatedToken, ClientError> {
        self.post("/api/v1/tokens", req).await
    }

    pub async fn list_tokens(&self, all: bool) -> Result<Vec<attune_core::auth::TokenInfo>, ClientError> {
        self.get(&format!("/api/v1/tokens?all={all}")).await
    }

    pub async fn revoke_token(&self, name: &str) -> Result<attune_core::auth::TokenInfo, ClientError> {
        self.post(&format!("/api/v1/tokens/{name}/revoke"), &serde_json::json!({})).await
    }

    /// `?pack=P` when a pack is given.
    fn scoped(path: &str, pack: Option<&str>) -> String {
        match pack {
            Some(p) => format!("{path}?pack={p}"),
            None => path.to_owned(),
        }
    }

    /// `POST /api/v1/trigger-events`: an event of a trigger type.
    pub async fn emit_event(&self, req: &EmitEvent) -> Result<attune_core::rules::TriggerEvent, ClientError> {
        self.post("/api/v1/trigger-events", req).await
    }

    /// Stored events, newest first; `query` is e.g. `trigger=core.webhook&limit=20`.
    pub async fn list_trigger_events(
        &self,
        query: &str,
    ) -> Result<Vec<attune_core::rules::TriggerEvent>, ClientError> {
        self.get(&format!("/api/v1/trigger-events?{query}")).await
    }

    pub async fn get_trigger_event(&self, id: Uuid) -> Result<EventDetail, ClientError> {
        self.get(&format!("/api/v1/trigger-events/{id}")).await
    }

    pub async fn list_triggers(&self) -> Result<Vec<attune_core::rules::TriggerType>, ClientError> {
        self.get("/api/v1/triggers").await
    }

    pub async fn list_rules(&self) -> Result<Vec<attune_core::rules::Rule>, ClientError> {
        self.get("/api/v1/rules").await
    }

    pub async fn get_rule(&self, r: &str) -> Result<RuleDetail, ClientError> {
        self.get(&format!("/api/v1/rules/{r}")).await
    }

    pub async fn list_sensors(&self) -> Result<Vec<attune_core::sensors::SensorState>, ClientError> {
        self.get("/api/v1/sensors").await
    }

    pub async fn get_sensor(&self, r: &str) -> Result<attune_core::sensors::SensorState, ClientError> {
        self.get(&format!("/api/v1/sensors/{r}")).await
    }

    pub async fn set_sensor_enabled(
        &self,
        r: &str,
        enabled: bool,
    ) -> Result<attune_core::sensors::SensorState, ClientError> {
        let verb = if enabled { "enable" } else { "disable" };
        self.post(&format!("/api/v1/sensors/{r}/{verb}"), &serde_json::json!({})).await
    }

    pub async fn set_rule_enabled(
        &self,
        r: &str,
        enabled: bool,
    ) -> Result<attune_core::rules::Rule, ClientError> {
        let verb = if enabled { "enable" } else { "disable" };
        self.post(&format!("/api/v1/rules/{r}/{verb}"), &serde_json::json!({})).await
    }

    pub async fn test_rule(&self, r: &str, req: &TestRule) -> Result<RuleTestResult, ClientError> {
        self.post(&format!("/api/v1/rules/{r}/test"), req).await
    }

    pub async fn set_key(
        &self,
        req: &attune_wire::SetKey,
    ) -> Result<attune_core::keys::KeyInfo, ClientError> {
        self.post("/api/v1/keys", req).await
    }

    pub async fn list_keys(
        &self,
        pack: Option<&str>,
    ) -> Result<Vec<attune_core::keys::KeyInfo>, ClientError> {
        self.get(&Self::scoped("/api/v1/keys", pack)).await
    }

    pub async fn get_key(
        &self,
        name: &str,
        pack: Option<&str>,
    ) -> Result<attune_core::keys::KeyInfo, ClientError> {
        self.get(&Self::scoped(&format!("/api/v1/keys/{name}"), pack)).await
    }

    pub async fn delete_key(
        &self,
        name: &str,
        pack: Option<&str>,
    ) -> Result<attune_core::keys::KeyInfo, ClientError> {
        let path = Self::scoped(&format!("/api/v1/keys/{name}"), pack);
        self.call::<(), _>(Method::DELETE, &path, None, Duration::from_secs(30)).await
    }

    pub async fn rotate_master_key(&self) -> Result<attune_wire::Resealed, ClientError> {
        self.post("/api/v1/keys/rotate-master", &serde_json::json!({})).await
    }

    pub async fn list_dead_letters(&self, all: bool) -> Result<Vec<DeadLetter>, ClientError> {
        self.get(&format!("/api/v1/dead-letters?all={all}")).await
    }

    pub async fn requeue_dead_letter(&self, id: Uuid) -> Result<Execution, ClientError> {
        self.post(&format!("/api/v1/dead-letters/{id}/requeue"), &serde_json::json!({})).await
    }

    /// Stop receiving tasks; leases stay valid while heartbeats continue.
    pub async fn drain(&self, worker: Uuid) -> Result<Worker, ClientError> {
        self.post(&format!("/api/v1/worker/{worker}/drain"), &serde_json::json!({})).await
    }

    pub async fn deregister(&self, worker: Uuid) -> Result<Worker, ClientError> {
        self.post(&format!("/api/v1/worker/{worker}/deregister"), &serde_json::json!({})).await
    }
}

fn canonical(s: StatusCode) -> String {
    s.canonical_reason().unwrap_or("error").to_lowercase().replace(' ', "_")
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(c) = src {
        s.push_str(": ");
        s.push_str(&c.to_string());
        src = c.source();
    }
    s
}

/// `s` as a query value: unreserved characters as they are, every other byte as `%XX`.
fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~' | b'/' | b':') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}
