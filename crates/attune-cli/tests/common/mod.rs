//! Helpers shared by the end-to-end test files: the real binary as server and worker processes
//! with fast heartbeats, and a PostgreSQL cluster of a test's own for tests that restart it.
#![allow(dead_code)] // each test file uses a different part

use std::time::Duration;

use attune_testkit::Proc;

pub const BIN: &str = env!("CARGO_BIN_EXE_attune");

pub fn packs_dir() -> String {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../packs")
        .canonicalize()
        .unwrap()
        .display()
        .to_string()
}

/// Settings every process of these tests shares: fast heartbeats and checks.
pub fn fast_env(extra: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut env = vec![
        ("ATTUNE__WORKER__HEARTBEAT_INTERVAL".to_string(), "1s".to_string()),
        ("ATTUNE__EXECUTOR__HEARTBEAT_CHECK_INTERVAL".into(), "250ms".into()),
        ("ATTUNE__EXECUTOR__DELIVERY_TIMEOUT".into(), "2s".into()),
        ("ATTUNE__PACKS__DIRS".into(), format!("[{}]", packs_dir())),
    ];
    env.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    env
}

pub fn spawn(name: &str, args: &[&str], env: &[(String, String)]) -> Proc {
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    Proc::spawn(name, BIN, args, &env)
}

/// The tokens a server's first start wrote, by its URL (each test binary's servers).
static TOKENS: std::sync::Mutex<Vec<(String, Tokens)>> = std::sync::Mutex::new(Vec::new());

/// A server's admin token and worker enrollment token.
#[derive(Clone, Debug)]
pub struct Tokens {
    pub admin: String,
    pub enroll: String,
}

/// Reads the tokens a server wrote into `data_dir` and files them under `url`.
pub fn remember_tokens(url: &str, data_dir: &std::path::Path) -> Tokens {
    let read = |f: &str| {
        std::fs::read_to_string(data_dir.join(f))
            .unwrap_or_else(|e| panic!("{f} in {}: {e}", data_dir.display()))
    };
    let t = Tokens {
        admin: read("admin.token").trim().to_owned(),
        enroll: read("worker.token").trim().to_owned(),
    };
    remember_tokens_as(url, t.clone());
    t
}

/// Files `tokens` under `url` (a server restarted on the same address keeps its tokens).
pub fn remember_tokens_as(url: &str, tokens: Tokens) {
    let mut all = TOKENS.lock().unwrap();
    all.retain(|(u, _)| u != url);
    all.push((url.to_owned(), tokens));
}

/// The tokens of the server at `url` (the first of a comma-separated list).
pub fn tokens(url: &str) -> Tokens {
    let first = url.split(',').next().unwrap_or_default().trim();
    let all = TOKENS.lock().unwrap();
    all.iter().rev().find(|(u, _)| u == first).map(|(_, t)| t.clone()).unwrap_or_else(|| {
        // A replica of a server whose tokens are known: the same database takes them.
        all.last().map(|(_, t)| t.clone()).unwrap_or_else(|| panic!("no tokens known for {url}"))
    })
}

/// A client of the server at `url`, as its admin.
pub fn client(url: &str) -> attune_client::Client {
    attune_client::Client::new(url).with_token(Some(tokens(url).admin))
}

/// `attune server` on `listen` (port 0 for any) and `db_url`, with a data directory of its own;
/// returns it and its URL.
pub fn server(name: &str, listen: &str, db_url: &str, env: &[(String, String)]) -> (Proc, String) {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().display().to_string();
    let mut p =
        spawn(name, &["server", "--listen", listen, "--database-url", db_url, "--data-dir", &data_dir], env);
    let url = p.wait_url();
    remember_tokens(&url, dir.path());
    p.keep(dir);
    (p, url)
}

/// `attune worker` against `servers` (comma-separated), enrolled with the first server's
/// enrollment token, once it has registered.
pub fn worker(name: &str, servers: &str, env: &[(String, String)]) -> Proc {
    let w = spawn_worker(name, servers, env);
    w.wait_line(Duration::from_secs(30), |l| l.contains("worker registered").then_some(()));
    w
}

/// `attune worker` as `worker` starts it, without waiting for it to register.
pub fn spawn_worker(name: &str, servers: &str, env: &[(String, String)]) -> Proc {
    let mut env = env.to_vec();
    if !env.iter().any(|(k, _)| k == "ATTUNE__WORKER__TOKEN") {
        env.push(("ATTUNE__WORKER__TOKEN".into(), tokens(servers).enroll));
    }
    // A data directory of its own (where it keeps pack versions), removed with it.
    let data = tempfile::tempdir().unwrap();
    env.push(("ATTUNE__DATA_DIR".into(), data.path().display().to_string()));
    let mut p = spawn(name, &["--server", servers, "worker", "--name", name], &env);
    p.keep(data);
    p
}

/// The CLI against `url`, as its admin.
pub fn cli(url: &str, args: &[&str]) -> attune_testkit::CliOutput {
    let token = tokens(url).admin;
    let mut all = vec!["--server", url, "--token", &token];
    all.extend_from_slice(args);
    attune_testkit::run_cli(BIN, &all)
}

/// One request on a connection of its own (`Connection: close`), with `token` as bearer when
/// given: the status code and the body.
pub fn request(url: &str, method: &str, path: &str, token: Option<&str>, body: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(url.trim_start_matches("http://")).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let auth = token.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).unwrap();
    s.write_all(body.as_bytes()).unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap_or_else(|e| panic!("{method} {path}: no answer within 5 s: {e}"));
    let status = out.get(9..12).and_then(|c| c.parse().ok()).unwrap_or(0);
    let body = out.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
    (status, body)
}

/// Registers a worker named `name` at the server at `url` over plain HTTP, with its enrollment
/// token: the worker's id and its own credential.
pub fn register(url: &str, name: &str) -> (String, String) {
    let body =
        format!(r#"{{"name":"{name}","host":"h","runtimes":["builtin"],"concurrency":1,"version":"t"}}"#);
    let (status, reply) = request(url, "POST", "/api/v1/worker/register", Some(&tokens(url).enroll), &body);
    assert_eq!(status, 200, "{reply}");
    let v: serde_json::Value = serde_json::from_str(&reply).unwrap();
    (v["worker"]["id"].as_str().unwrap().to_owned(), v["credential"].as_str().unwrap().to_owned())
}

/// A free TCP port on loopback (bound, then released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A PostgreSQL cluster of the test's own (initdb as the `postgres` user, trust auth, on a free
/// port), so that a test can restart it without disturbing the tests sharing the machine's.
/// Stopped and removed on drop.
pub struct PrivatePostgres {
    dir: tempfile::TempDir,
    pub port: u16,
}

fn as_postgres(args: &[&str]) -> std::process::Output {
    let bin = std::fs::read_dir("/usr/lib/postgresql")
        .ok()
        .and_then(|mut d| d.next())
        .and_then(|e| e.ok())
        .map(|e| e.path().join("bin"))
        .expect("PostgreSQL server binaries under /usr/lib/postgresql/<version>/bin");
    let program = bin.join(args[0]);
    #[allow(clippy::disallowed_methods)] // test infrastructure: PostgreSQL's own tools
    let out = std::process::Command::new("runuser")
        .args(["-u", "postgres", "--"])
        .arg(program)
        .args(&args[1..])
        .output()
        .expect("run a PostgreSQL tool as postgres");
    out
}

impl PrivatePostgres {
    pub fn start() -> PrivatePostgres {
        let dir = tempfile::Builder::new().prefix("attune-pg-").tempdir().unwrap();
        #[allow(clippy::disallowed_methods)]
        let chown =
            std::process::Command::new("chown").args(["-R", "postgres"]).arg(dir.path()).status().unwrap();
        assert!(chown.success());
        let data = dir.path().join("data");
        let out = as_postgres(&[
            "initdb",
            "-D",
            data.to_str().unwrap(),
            "-U",
            "postgres",
            "--auth=trust",
            "-E",
            "UTF8",
        ]);
        assert!(out.status.success(), "initdb: {}", String::from_utf8_lossy(&out.stderr));
        let pg = PrivatePostgres { port: free_port(), dir };
        pg.ctl("start");
        pg
    }

    fn ctl(&self, what: &str) {
        let data = self.dir.path().join("data");
        let log = self.dir.path().join("log");
        let opts = format!("-p {} -k {} -c listen_addresses=127.0.0.1", self.port, self.dir.path().display());
        let out = as_postgres(&[
            "pg_ctl",
            "-D",
            data.to_str().unwrap(),
            "-l",
            log.to_str().unwrap(),
            "-o",
            &opts,
            "-m",
            "fast",
            "-w",
            what,
        ]);
        assert!(out.status.success(), "pg_ctl {what}: {}", String::from_utf8_lossy(&out.stderr));
    }

    pub fn url(&self, db: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{db}", self.port)
    }

    pub fn restart(&self) {
        self.ctl("restart");
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        let data = self.dir.path().join("data");
        let _ = as_postgres(&["pg_ctl", "-D", data.to_str().unwrap(), "-m", "immediate", "stop"]);
    }
}
