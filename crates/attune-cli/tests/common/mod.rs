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

/// `attune server` on `listen` (port 0 for any) and `db_url`; returns it and its URL.
pub fn server(name: &str, listen: &str, db_url: &str, env: &[(String, String)]) -> (Proc, String) {
    let p = spawn(name, &["server", "--listen", listen, "--database-url", db_url], env);
    let url = p.wait_url();
    (p, url)
}

/// `attune worker` against `servers` (comma-separated), once it has registered.
pub fn worker(name: &str, servers: &str, env: &[(String, String)]) -> Proc {
    let w = spawn(name, &["--server", servers, "worker", "--name", name], env);
    w.wait_line(Duration::from_secs(30), |l| l.contains("worker registered").then_some(()));
    w
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
