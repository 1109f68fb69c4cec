//! `Proc`: a real child process (the `attune` binary) whose output lines are collected, that can be
//! signalled, and that is killed when the test ends — whatever way it ends.

use std::{
    io::{BufRead, BufReader},
    process::{Child, ExitStatus, Stdio},
    sync::{Arc, Condvar, Mutex},
    time::{Duration, Instant},
};

use std::os::unix::process::CommandExt;

use nix::{sys::signal::Signal, unistd::Pid};

#[derive(Default)]
struct Lines {
    all: Mutex<Vec<String>>,
    changed: Condvar,
}

pub struct Proc {
    pub name: String,
    child: Child,
    lines: Arc<Lines>,
    /// Kept alive as long as the process (its data directory, say).
    keep: Vec<Box<dyn std::any::Any + Send>>,
}

impl Proc {
    /// Starts `program args…` with extra environment; stdout and stderr lines are collected.
    pub fn spawn(name: &str, program: &str, args: &[&str], env: &[(&str, &str)]) -> Proc {
        Proc::spawn_in(name, None, program, args, env)
    }

    /// As `spawn`, in the working directory `dir` when given.
    pub fn spawn_in(
        name: &str,
        dir: Option<&std::path::Path>,
        program: &str,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Proc {
        #[allow(clippy::disallowed_methods)] // tests start the real binary, not an action
        let mut cmd = std::process::Command::new(program);
        if let Some(dir) = dir {
            cmd.current_dir(dir);
        }
        cmd.args(args)
            .env("RUST_LOG", std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()))
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .process_group(0);
        let mut child = cmd.spawn().unwrap_or_else(|e| panic!("start {program}: {e}"));
        let lines = Arc::new(Lines::default());
        for pipe in [
            child.stdout.take().map(|p| Box::new(p) as Box<dyn std::io::Read + Send>),
            child.stderr.take().map(|p| Box::new(p) as Box<dyn std::io::Read + Send>),
        ]
        .into_iter()
        .flatten()
        {
            let lines = lines.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(pipe).lines() {
                    let Ok(line) = line else { break };
                    lines.all.lock().unwrap().push(line);
                    lines.changed.notify_all();
                }
            });
        }
        Proc { name: name.to_owned(), child, lines, keep: Vec::new() }
    }

    /// Keeps `thing` (a temporary directory, say) until the process is dropped.
    pub fn keep(&mut self, thing: impl std::any::Any + Send) {
        self.keep.push(Box::new(thing));
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits for an output line for which `f` returns `Some`, and returns that.
    pub fn wait_line<T>(&self, timeout: Duration, f: impl Fn(&str) -> Option<T>) -> T {
        let deadline = Instant::now() + timeout;
        let mut all = self.lines.all.lock().unwrap();
        loop {
            if let Some(v) = all.iter().find_map(|l| f(l)) {
                return v;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                panic!(
                    "{}: no expected line within {timeout:?}; output so far:\n{}",
                    self.name,
                    all.join("\n")
                );
            }
            all = self.lines.changed.wait_timeout(all, left).unwrap().0;
        }
    }

    /// The base URL printed as `http://127.0.0.1:PORT` on start.
    pub fn wait_url(&self) -> String {
        self.wait_line(Duration::from_secs(60), |l| {
            let i = l.find("http://127.0.0.1:")?;
            let rest = &l[i..];
            let end = rest[7..].find(|c: char| !(c.is_ascii_digit() || c == '.' || c == ':')).map(|e| e + 7);
            Some(rest[..end.unwrap_or(rest.len())].to_owned())
        })
    }

    pub fn output(&self) -> String {
        self.lines.all.lock().unwrap().join("\n")
    }

    pub fn signal(&self, s: Signal) {
        let _ = nix::sys::signal::kill(Pid::from_raw(self.child.id() as i32), s);
    }

    /// Waits for the process to exit.
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self.child.try_wait().expect("wait for child") {
                return s;
            }
            if Instant::now() >= deadline {
                panic!("{} did not exit within {timeout:?}; output:\n{}", self.name, self.output());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            // The whole group: the binary and any action it was running.
            let _ = nix::sys::signal::killpg(Pid::from_raw(self.child.id() as i32), Signal::SIGKILL);
            let _ = self.child.wait();
        }
        if std::thread::panicking() {
            eprintln!("----- output of {} -----\n{}\n-----", self.name, self.output());
        }
    }
}

/// What a one-shot command printed.
#[derive(Debug)]
pub struct CliOutput {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl CliOutput {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| {
            panic!("stdout is not JSON ({e}):\n{}\nstderr:\n{}", self.stdout, self.stderr)
        })
    }
}

/// Runs `program args…` to completion and returns its exit code and output.
pub fn run_cli(program: &str, args: &[&str]) -> CliOutput {
    run_cli_in(None, program, args)
}

/// As `run_cli`, in the working directory `dir` when given (where `./.attune/admin.token` is
/// looked for).
pub fn run_cli_in(dir: Option<&std::path::Path>, program: &str, args: &[&str]) -> CliOutput {
    #[allow(clippy::disallowed_methods)] // tests run the real binary, not an action
    let mut cmd = std::process::Command::new(program);
    if let Some(dir) = dir {
        cmd.current_dir(dir);
    }
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .env_remove("ATTUNE_SERVER")
        .env_remove("ATTUNE_TOKEN");
    let child = cmd.spawn().unwrap_or_else(|e| panic!("start {program}: {e}"));
    let out = child.wait_with_output().expect("wait for command");
    CliOutput {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}
