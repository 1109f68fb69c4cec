//! Sensors on this worker. The server hands a sensor out in a heartbeat's reply; the worker runs
//! its program (through `crate::process`, in its own process group) for as long as the lease
//! holds, reads one event per line from its stdout and posts them in batches under the lease; the
//! heartbeat names every sensor it runs, and one the server no longer gives it is stopped. When the
//! program ends by itself, the worker reports the exit (code, signal, the end of its stderr) and
//! the server restarts it after a backoff — on whichever capable worker heartbeats first.

use std::{path::PathBuf, sync::Arc, time::Duration};

use attune_client::ClientError;
use attune_core::sensors::SensorTask;
use attune_wire::{SensedEvent, SensorEvents, SensorExit, SensorLease};
use tokio_util::sync::CancellationToken;

use crate::{
    agent::Shared,
    process::{self, Ended, Spec},
    runtime,
};

/// A sensor this worker runs.
pub(crate) struct Running {
    pub(crate) token: String,
    pub(crate) stop: CancellationToken,
    pub(crate) done: tokio::task::JoinHandle<()>,
}

/// Events sent in one request at most.
const BATCH: usize = 500;
/// How long an event waits for others to share its request.
const LINGER: Duration = Duration::from_millis(20);
/// A line longer than this is not an event.
const MAX_LINE: usize = 1024 * 1024;
/// How much of the end of stderr an exit report carries.
const STDERR_TAIL: usize = 2048;

/// The sensors to name in a heartbeat.
pub(crate) fn leases(shared: &Shared) -> Vec<SensorLease> {
    shared
        .sensors
        .lock()
        .expect("sensors lock")
        .iter()
        .map(|(r, s)| SensorLease { sensor_ref: r.clone(), lease_token: s.token.clone() })
        .collect()
}

/// Starts a sensor the server handed out (unless this worker already runs it under that lease).
pub(crate) fn start(shared: &Arc<Shared>, task: SensorTask) {
    let r = task.sensor.sensor_ref.to_string();
    let mut map = shared.sensors.lock().expect("sensors lock");
    if shared.draining.load(std::sync::atomic::Ordering::SeqCst) {
        return; // shutting down: the drain gives it back
    }
    if let Some(old) = map.get(&r) {
        if old.token == task.lease_token {
            return;
        }
        old.stop.cancel(); // an older lease of ours: that run is over
    }
    tracing::info!(sensor = %r, runtime = %task.sensor.runtime.as_str(), "starting sensor");
    let stop = CancellationToken::new();
    let token = task.lease_token.clone();
    let done = tokio::spawn(supervise(shared.clone(), task, stop.clone()));
    map.insert(r, Running { token, stop, done });
}

/// Stops a sensor the server no longer gives this worker; its exit is not reported.
pub(crate) fn revoke(shared: &Shared, r: &str) {
    if let Some(s) = shared.sensors.lock().expect("sensors lock").remove(r) {
        tracing::warn!(sensor = %r, "sensor lease lost; stopping it");
        s.stop.cancel();
    }
}

/// Stops every sensor for good and waits for their programs to end (shutdown).
pub(crate) async fn stop_all(shared: &Shared) {
    let all: Vec<(String, Running)> = {
        let mut map = shared.sensors.lock().expect("sensors lock");
        // Under the lock, so that no sensor starts after this.
        shared.draining.store(true, std::sync::atomic::Ordering::SeqCst);
        map.drain().collect()
    };
    for (r, s) in &all {
        tracing::info!(sensor = %r, "stopping sensor");
        s.stop.cancel();
    }
    for (_, s) in all {
        let _ = s.done.await;
    }
}

/// Runs one sensor until it exits or is stopped.
async fn supervise(shared: Arc<Shared>, task: SensorTask, stop: CancellationToken) {
    let r = task.sensor.sensor_ref.to_string();
    let ended = run(&shared, &task, stop.clone()).await;
    let mine = {
        let mut map = shared.sensors.lock().expect("sensors lock");
        let mine = map.get(&r).is_some_and(|s| s.token == task.lease_token);
        if mine {
            map.remove(&r);
        }
        mine
    };
    let Some(error) = ended else { return }; // stopped on purpose
    if !mine || stop.is_cancelled() {
        return;
    }
    tracing::warn!(sensor = %r, error = %error, "sensor exited");
    let body = SensorExit { lease_token: task.lease_token.clone(), error };
    let mut backoff = Duration::from_millis(100);
    for _ in 0..10 {
        let server = shared.server();
        match shared.clients[server].sensor_exit(shared.id, &r, &body).await {
            Ok(reply) => {
                let wait = (reply.retry_at - attune_core::Timestamp::now().millis()).max(0) as u64;
                tracing::info!(sensor = %r, restart_in_ms = wait, "sensor exit reported");
                // Ask for it again as soon as its backoff ends, not at the next regular heartbeat.
                tokio::time::sleep(Duration::from_millis(wait + 20)).await;
                shared.heartbeat_now.notify_one();
                return;
            }
            Err(e) if e.is_transient() => {
                shared.fail_over(server);
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(2));
            }
            Err(e) => {
                tracing::info!(sensor = %r, error = %e, "sensor exit not taken (its lease lapsed meanwhile)");
                return;
            }
        }
    }
    tracing::warn!(sensor = %r, "could not report the sensor's exit; its lease will lapse instead");
}

/// Runs the program; `Some(why)` when it ended by itself, `None` when stopped.
async fn run(shared: &Arc<Shared>, task: &SensorTask, stop: CancellationToken) -> Option<String> {
    let s = &task.sensor;
    // The pack version it was loaded with, held while it runs.
    let prepared = match &s.pack_digest {
        Some(digest) => match shared.pack_source().prepare(s.pack.as_str(), digest).await {
            Ok(p) => Some(p),
            Err(e) => return Some(e.message),
        },
        None => None,
    };
    let spec = match spec(shared, task, prepared.as_ref()) {
        Ok(spec) => spec,
        Err(why) => {
            // Nothing ran; the server's backoff keeps this from turning into a loop.
            return Some(why);
        }
    };
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    let spec = Spec { stream: Some(tx), ..spec };
    let reader =
        Reader::new(shared.clone(), s.sensor_ref.to_string(), task.lease_token.clone(), stop.clone());
    let (outcome, tail) = tokio::join!(process::run(spec, stop.clone()), reader.read(rx));
    let outcome = match outcome {
        Ok(o) => o,
        Err(e) => return Some(format!("cannot start {}: {e}", s.entry_point)),
    };
    if outcome.ended == Ended::Canceled || stop.is_cancelled() {
        return None;
    }
    let how = match (outcome.exit_code, outcome.signal) {
        (Some(0), _) => "exited with code 0 (a sensor is expected to keep running)".to_owned(),
        (Some(c), _) => format!("exited with code {c}"),
        (None, sig) => format!("killed by signal {}", sig.unwrap_or_default()),
    };
    let tail = tail.trim_end();
    Some(if tail.is_empty() { how } else { format!("{how}; stderr ends with: {tail}") })
}

/// The program to run, or why it cannot be.
fn spec(
    shared: &Shared,
    task: &SensorTask,
    prepared: Option<&crate::packs::Prepared>,
) -> Result<Spec, String> {
    let s = &task.sensor;
    let pack_dir = match (prepared, &s.pack_dir) {
        (Some(p), _) => p.dir.clone(),
        (None, Some(d)) => PathBuf::from(d),
        (None, None) => return Err(format!("sensor {} has no pack directory on this worker", s.sensor_ref)),
    };
    let entry = attune_pack::resolve_entry_in(&pack_dir, "sensors", &s.entry_point)
        .map_err(|e| format!("entry point refused: {e}"))?;
    let venv = prepared.and_then(|p| p.python()).filter(|_| s.runtime == attune_core::Runtime::Python);
    let (program, args) = match venv.or_else(|| runtime::interpreter(s.runtime).map(PathBuf::from)) {
        Some(i) => (i, vec![entry.display().to_string()]),
        None => (entry.clone(), Vec::new()),
    };
    let mut env = runtime::base_env();
    env.extend([
        ("ATTUNE_SENSOR".to_owned(), s.sensor_ref.to_string()),
        ("ATTUNE_PACK".to_owned(), s.pack.to_string()),
        ("ATTUNE_SENSOR_PARAMETERS".to_owned(), s.parameters.to_string()),
        (
            "ATTUNE_SENSOR_TRIGGER_TYPES".to_owned(),
            s.trigger_types.iter().map(|t| t.as_str()).collect::<Vec<_>>().join(","),
        ),
        ("ATTUNE_API_URL".to_owned(), shared.client().base_url().to_owned()),
    ]);
    if s.runtime == attune_core::Runtime::Python {
        env.push(("PYTHONUNBUFFERED".to_owned(), "1".to_owned()));
    }
    Ok(Spec {
        program,
        args,
        cwd: pack_dir.join("sensors"),
        env,
        stdin: None,
        max_output: 0,
        kill_grace: shared.opts.kill_grace,
        timeout: None,
        tap: None,
        stream: None,
    })
}

/// Turns a sensor's stdout into events and posts them; keeps the end of its stderr.
struct Reader {
    shared: Arc<Shared>,
    sensor: String,
    token: String,
    stop: CancellationToken,
    line: Vec<u8>,
    /// The current line is too long and is being skipped.
    skipping: bool,
    pending: Vec<SensedEvent>,
    malformed: u64,
    /// Malformed lines logged so far (the first few, then one in a thousand).
    logged: u64,
    stderr: Vec<u8>,
}

impl Reader {
    fn new(shared: Arc<Shared>, sensor: String, token: String, stop: CancellationToken) -> Reader {
        Reader {
            shared,
            sensor,
            token,
            stop,
            line: Vec::new(),
            skipping: false,
            pending: Vec::new(),
            malformed: 0,
            logged: 0,
            stderr: Vec::new(),
        }
    }

    /// Until the program's pipes close; returns the end of its stderr.
    async fn read(mut self, mut rx: tokio::sync::mpsc::Receiver<(&'static str, Vec<u8>)>) -> String {
        loop {
            let next = if self.pending.is_empty() {
                rx.recv().await
            } else {
                match tokio::time::timeout(LINGER, rx.recv()).await {
                    Ok(n) => n,
                    Err(_) => {
                        self.flush().await;
                        continue;
                    }
                }
            };
            let Some((stream, bytes)) = next else { break };
            if stream == "stderr" {
                self.keep_stderr(&bytes);
                continue;
            }
            for chunk in bytes.split_inclusive(|b| *b == b'\n') {
                let complete = chunk.ends_with(b"\n");
                let body = if complete { &chunk[..chunk.len() - 1] } else { chunk };
                if !self.skipping {
                    if self.line.len() + body.len() > MAX_LINE {
                        self.skipping = true;
                        self.line.clear();
                        self.bad(&format!("a line longer than {MAX_LINE} bytes"));
                    } else {
                        self.line.extend_from_slice(body);
                    }
                }
                if complete {
                    if !self.skipping {
                        let line = std::mem::take(&mut self.line);
                        self.parse(&line);
                    }
                    self.skipping = false;
                    self.line.clear();
                }
            }
            if self.pending.len() >= BATCH {
                self.flush().await;
            }
        }
        if !self.line.is_empty() && !self.skipping {
            let line = std::mem::take(&mut self.line);
            self.parse(&line);
        }
        self.flush().await;
        String::from_utf8_lossy(&self.stderr).into_owned()
    }

    fn keep_stderr(&mut self, bytes: &[u8]) {
        for l in String::from_utf8_lossy(bytes).lines().filter(|l| !l.trim().is_empty()) {
            tracing::info!(sensor = %self.sensor, "stderr: {l}");
        }
        self.stderr.extend_from_slice(bytes);
        if self.stderr.len() > STDERR_TAIL {
            let cut = self.stderr.len() - STDERR_TAIL;
            self.stderr.drain(..cut);
        }
    }

    fn parse(&mut self, line: &[u8]) {
        let text = String::from_utf8_lossy(line);
        let text = text.trim();
        if text.is_empty() {
            return;
        }
        match serde_json::from_str::<SensedEvent>(text) {
            Ok(e) if attune_core::ActionRef::parse(&e.trigger).is_err() => {
                self.bad(&format!("{:?} is not a trigger type's ref: {}", e.trigger, short(text)))
            }
            Ok(e) if e.payload.is_object() => self.pending.push(e),
            Ok(_) => self.bad(&format!("payload is not an object: {}", short(text))),
            Err(e) => self.bad(&format!("not an event ({e}): {}", short(text))),
        }
    }

    fn bad(&mut self, why: &str) {
        self.malformed += 1;
        self.logged += 1;
        if self.logged <= 5 || self.logged.is_multiple_of(1000) {
            tracing::warn!(
                sensor = %self.sensor, malformed_so_far = self.logged,
                "sensor line ignored: {why}; expected {{\"trigger\": \"pack.type\", \"payload\": {{…}}}}"
            );
        }
    }

    /// Posts what is pending under the lease; retries while the server cannot be reached (the
    /// program waits meanwhile), stops the sensor when the lease is gone.
    async fn flush(&mut self) {
        if self.pending.is_empty() && self.malformed == 0 {
            return;
        }
        let body = SensorEvents {
            lease_token: self.token.clone(),
            events: std::mem::take(&mut self.pending),
            malformed: std::mem::take(&mut self.malformed),
        };
        let mut backoff = Duration::from_millis(100);
        loop {
            let server = self.shared.server();
            match self.shared.clients[server].sensor_events(self.shared.id, &self.sensor, &body).await {
                Ok(reply) => {
                    for why in reply.refused.iter().take(5) {
                        tracing::warn!(sensor = %self.sensor, "sensor event refused: {why}");
                    }
                    return;
                }
                Err(e) if e.is_transient() && !self.stop.is_cancelled() => {
                    tracing::warn!(sensor = %self.sensor, error = %e, events = body.events.len(), "cannot post sensor events yet; retrying");
                    self.shared.fail_over(server);
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
                Err(ClientError::Api { status: 409, .. }) => {
                    tracing::warn!(sensor = %self.sensor, "the sensor's lease is gone; stopping it");
                    self.stop.cancel();
                    return;
                }
                Err(e) => {
                    tracing::error!(sensor = %self.sensor, error = %e, events = body.events.len(), "sensor events refused as a whole; dropped");
                    return;
                }
            }
        }
    }
}

fn short(s: &str) -> String {
    if s.chars().count() <= 200 {
        s.to_owned()
    } else {
        format!("{}…", s.chars().take(200).collect::<String>())
    }
}
