//! The one way Attune starts a process. `run` puts the child in its own process group with an
//! explicit working directory and environment (nothing inherited by accident), captures stdout and
//! stderr up to a cap each (the rest is read and dropped, so a chatty action cannot exhaust the
//! worker's memory or block on a full pipe), and ends the *whole group* — background grandchildren
//! included — on timeout, cancellation, normal exit, or when the future is dropped.

use std::{path::PathBuf, process::Stdio, time::Duration};

use nix::{sys::signal::Signal, unistd::Pid};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

/// What to run.
#[derive(Debug, Clone)]
pub struct Spec {
    pub program: PathBuf,
    pub args: Vec<String>,
    pub cwd: PathBuf,
    /// The complete environment of the child.
    pub env: Vec<(String, String)>,
    pub stdin: Option<Vec<u8>>,
    /// Cap for stdout and for stderr, each.
    pub max_output: usize,
    /// Between SIGTERM and SIGKILL when the process must stop.
    pub kill_grace: Duration,
    pub timeout: Option<Duration>,
    /// Receives each piece of output as it is read (`"stdout"`/`"stderr"`, bytes), within the caps.
    pub tap: Option<Tap>,
    /// For a program that runs for good (a sensor): every piece of output goes here instead, none
    /// is kept, and the caps do not apply; reading waits while the channel is full, so a program
    /// that writes faster than its output is used waits on its pipe.
    pub stream: Option<Stream>,
}

pub type Stream = tokio::sync::mpsc::Sender<(&'static str, Vec<u8>)>;

pub type Tap = tokio::sync::mpsc::UnboundedSender<(&'static str, Vec<u8>)>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    Exited,
    TimedOut,
    Canceled,
}

#[derive(Debug, Clone)]
pub struct Captured {
    /// Exactly what the process wrote, up to the cap: any bytes, not necessarily text.
    pub bytes: Vec<u8>,
    pub truncated: bool,
    pub total_bytes: u64,
}

#[derive(Debug, Clone)]
pub struct Outcome {
    pub ended: Ended,
    pub exit_code: Option<i32>,
    /// The signal that ended the process, if one did.
    pub signal: Option<i32>,
    pub stdout: Captured,
    pub stderr: Captured,
}

/// Process groups started and not yet reaped, so that a hard exit (second Ctrl-C) can kill them.
static LIVE_GROUPS: std::sync::Mutex<Vec<i32>> = std::sync::Mutex::new(Vec::new());

/// SIGKILLs every process group this process started that is still running. For a hard exit,
/// where destructors will not run.
pub fn kill_all() {
    let groups = LIVE_GROUPS.lock().map(|g| g.clone()).unwrap_or_default();
    for pgid in groups {
        let _ = nix::sys::signal::killpg(Pid::from_raw(pgid), Signal::SIGKILL);
    }
}

/// Kills the process group when dropped, unless disarmed after the group is known to be gone.
struct GroupGuard {
    pgid: Pid,
    armed: bool,
}

impl GroupGuard {
    fn signal(&self, s: Signal) {
        // ESRCH (no such group) is the normal case once everything has exited.
        let _ = nix::sys::signal::killpg(self.pgid, s);
    }
}

impl Drop for GroupGuard {
    fn drop(&mut self) {
        if self.armed {
            self.signal(Signal::SIGKILL);
        }
        if let Ok(mut g) = LIVE_GROUPS.lock() {
            g.retain(|p| *p != self.pgid.as_raw());
        }
    }
}

/// Runs `spec` to completion (or timeout, or cancellation). Errors only when the process cannot be
/// started at all.
pub async fn run(spec: Spec, cancel: CancellationToken) -> std::io::Result<Outcome> {
    #[allow(clippy::disallowed_methods)] // this is the wrapper every spawn must go through
    let mut cmd = tokio::process::Command::new(&spec.program);
    cmd.args(&spec.args)
        .current_dir(&spec.cwd)
        .env_clear()
        .envs(spec.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .stdin(if spec.stdin.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    let mut child = cmd.spawn()?;
    let pid = child.id().map(|p| p as i32).unwrap_or_default();
    let mut guard = GroupGuard { pgid: Pid::from_raw(pid), armed: pid > 0 };
    if let Ok(mut g) = LIVE_GROUPS.lock() {
        g.push(pid);
    }

    if let (Some(input), Some(mut pipe)) = (spec.stdin.clone(), child.stdin.take()) {
        // Written concurrently so that a child that does not read stdin cannot block us.
        tokio::spawn(async move {
            let _ = pipe.write_all(&input).await;
            let _ = pipe.shutdown().await;
        });
    }
    let (out, err) = match &spec.stream {
        Some(s) => (
            tokio::spawn(forward(child.stdout.take(), "stdout", s.clone())),
            tokio::spawn(forward(child.stderr.take(), "stderr", s.clone())),
        ),
        None => (
            tokio::spawn(capture(child.stdout.take(), spec.max_output, "stdout", spec.tap.clone())),
            tokio::spawn(capture(child.stderr.take(), spec.max_output, "stderr", spec.tap.clone())),
        ),
    };
    drop(spec.stream);

    let timeout = async {
        match spec.timeout {
            Some(t) => tokio::time::sleep(t).await,
            None => std::future::pending().await,
        }
    };
    let (status, ended) = tokio::select! {
        s = child.wait() => (s?, Ended::Exited),
        _ = timeout => (stop(&mut child, &guard, spec.kill_grace).await?, Ended::TimedOut),
        _ = cancel.cancelled() => (stop(&mut child, &guard, spec.kill_grace).await?, Ended::Canceled),
    };
    // The main process is gone; whatever it left running in its group goes too, which also
    // closes the pipes those processes held.
    guard.signal(Signal::SIGKILL);
    guard.armed = false;
    let stdout = out.await.unwrap_or_else(|_| empty());
    let stderr = err.await.unwrap_or_else(|_| empty());
    use std::os::unix::process::ExitStatusExt;
    Ok(Outcome { ended, exit_code: status.code(), signal: status.signal(), stdout, stderr })
}

/// SIGTERM to the group, SIGKILL after the grace period.
async fn stop(
    child: &mut tokio::process::Child,
    guard: &GroupGuard,
    grace: Duration,
) -> std::io::Result<std::process::ExitStatus> {
    guard.signal(Signal::SIGTERM);
    match tokio::time::timeout(grace, child.wait()).await {
        Ok(s) => s,
        Err(_) => {
            guard.signal(Signal::SIGKILL);
            child.wait().await
        }
    }
}

fn empty() -> Captured {
    Captured { bytes: Vec::new(), truncated: false, total_bytes: 0 }
}

/// Sends everything read from `pipe` to `sink` (waiting for room); keeps nothing.
async fn forward<R: AsyncRead + Unpin>(pipe: Option<R>, stream: &'static str, sink: Stream) -> Captured {
    let Some(mut pipe) = pipe else { return empty() };
    let mut total: u64 = 0;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match pipe.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                total += n as u64;
                // A receiver gone is not a reason to stop reading: the pipe must not fill up.
                let _ = sink.send((stream, buf[..n].to_vec())).await;
            }
        }
    }
    Captured { bytes: Vec::new(), truncated: total > 0, total_bytes: total }
}

async fn capture<R: AsyncRead + Unpin>(
    pipe: Option<R>,
    cap: usize,
    stream: &'static str,
    tap: Option<Tap>,
) -> Captured {
    let Some(mut pipe) = pipe else { return empty() };
    let mut kept = Vec::new();
    let mut total: u64 = 0;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match pipe.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                total += n as u64;
                let room = cap.saturating_sub(kept.len());
                let take = n.min(room);
                kept.extend_from_slice(&buf[..take]);
                if let (Some(tap), true) = (&tap, take > 0) {
                    let _ = tap.send((stream, buf[..take].to_vec()));
                }
            }
        }
    }
    let truncated = total > kept.len() as u64;
    Captured { bytes: kept, truncated, total_bytes: total }
}
