//! Slow and idle clients against the real server process: a half-sent request header, a body
//! that never arrives, a body larger than the door takes, and thousands of idle connections —
//! none of them may hold the server, and `/health` and the worker protocol keep answering.

mod common;

use std::{
    io::{Read, Write},
    net::TcpStream,
    time::{Duration, Instant},
};

use attune_testkit::Proc;
use common::{fast_env, request, server};

fn start(extra: &[(&str, &str)]) -> (Proc, String, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let db = format!("sqlite://{}", dir.path().join("a.db").display());
    let mut env = fast_env(&[]);
    env.extend(extra.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    let (p, url) = server("server", "127.0.0.1:0", &db, &env);
    (p, url, dir)
}

fn addr(url: &str) -> String {
    url.trim_start_matches("http://").to_owned()
}

/// Sends `bytes` on a new connection and reads until the server closes it (or `limit` passes);
/// returns what was read and how long until the close.
fn exchange(url: &str, bytes: &[u8], limit: Duration) -> (String, Duration) {
    let mut s = TcpStream::connect(addr(url)).unwrap();
    s.set_read_timeout(Some(limit)).unwrap();
    s.write_all(bytes).unwrap();
    let started = Instant::now();
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) => panic!(
                "the server kept the connection open for {limit:?}: {e}; read so far: {}",
                String::from_utf8_lossy(&out)
            ),
        }
    }
    (String::from_utf8_lossy(&out).into_owned(), started.elapsed())
}

fn health(url: &str) -> bool {
    request(url, "GET", "/health", None, "").0 == 200
}

fn metric(url: &str, line_start: &str) -> f64 {
    let (_, text) = request(url, "GET", "/metrics", Some(&common::tokens(url).admin), "");
    text.lines()
        .find_map(|l| l.strip_prefix(line_start).and_then(|v| v.trim().parse().ok()))
        .unwrap_or_else(|| panic!("no {line_start} in:\n{text}"))
}

#[test]
fn slow_clients_are_cut_off() {
    let (_p, url, _dir) =
        start(&[("ATTUNE__SERVER__HEADER_TIMEOUT", "1s"), ("ATTUNE__SERVER__BODY_TIMEOUT", "1s")]);
    let limit = Duration::from_secs(10);
    // Half a request header, then silence: closed after the header timeout.
    let (_, took) = exchange(&url, b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n", limit);
    assert!(took >= Duration::from_millis(800) && took < Duration::from_secs(5), "{took:?}");
    // A connection that never says anything: the same.
    let (_, took) = exchange(&url, b"", limit);
    assert!(took < Duration::from_secs(5), "{took:?}");
    // Without a token, a body is not even waited for: 401 at once.
    let post = |len: usize, token: Option<&str>| {
        let auth = token.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
        format!("POST /api/v1/executions HTTP/1.1\r\nHost: 127.0.0.1\r\n{auth}Content-Type: application/json\r\nContent-Length: {len}\r\n\r\n{{")
    };
    let (resp, took) = exchange(&url, post(1000, None).as_bytes(), limit);
    assert!(resp.starts_with("HTTP/1.1 401"), "{resp}");
    assert!(took < Duration::from_secs(2), "{took:?}");
    let admin = common::tokens(&url).admin;
    // A body announced far beyond the limit: refused at once, before it is read.
    let (resp, took) = exchange(&url, post(100_000_000, Some(&admin)).as_bytes(), limit);
    assert!(resp.starts_with("HTTP/1.1 413"), "{resp}");
    assert!(resp.contains("body_too_large"), "{resp}");
    assert!(took < Duration::from_secs(2), "{took:?}");
    // A body within the limit that never arrives: 408 after the body timeout.
    let (resp, took) = exchange(&url, post(1000, Some(&admin)).as_bytes(), limit);
    assert!(resp.starts_with("HTTP/1.1 408"), "{resp}");
    assert!(resp.contains("server.body_timeout"), "{resp}");
    assert!(took >= Duration::from_millis(800) && took < Duration::from_secs(5), "{took:?}");
    // An idle keep-alive connection is closed too, after answering.
    let (resp, took) = exchange(&url, b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n", limit);
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    assert!(took < Duration::from_secs(5), "{took:?}");
    assert!(metric(&url, "attune_http_limit_hits_total{limit=\"header_timeout\"}") >= 3.0);
    assert!(metric(&url, "attune_http_limit_hits_total{limit=\"body_timeout\"}") >= 1.0);
    assert!(metric(&url, "attune_http_limit_hits_total{limit=\"max_body_bytes\"}") >= 1.0);
    assert!(health(&url));
}

/// Raises this process's file-descriptor limit enough for `n` sockets.
fn room_for(n: u64) {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
    if soft < n + 256 {
        assert!(hard >= n + 256, "the test needs {n} sockets; the hard file limit is {hard}");
        setrlimit(Resource::RLIMIT_NOFILE, hard, hard).unwrap();
    }
}

fn idle_connections(url: &str, n: usize) -> Vec<TcpStream> {
    (0..n).map(|_| TcpStream::connect(addr(url)).unwrap()).collect()
}

fn can_register(url: &str) -> bool {
    let body = r#"{"name":"w","host":"h","runtimes":["builtin"],"concurrency":1,"version":"t"}"#;
    request(url, "POST", "/api/v1/worker/register", Some(&common::tokens(url).enroll), body).0 == 200
}

#[test]
fn thousands_of_idle_connections_lock_nobody_out() {
    room_for(3_500);
    let (_p, url, _dir) = start(&[]);
    let idle = idle_connections(&url, 3_000);
    assert!(health(&url), "/health answers with 3,000 idle connections open");
    assert!(can_register(&url), "so does the worker protocol");
    drop(idle);
}

#[test]
fn past_the_connection_limit_the_oldest_idle_ones_go() {
    let (p, url, _dir) = start(&[("ATTUNE__SERVER__MAX_CONNECTIONS", "100")]);
    let idle = idle_connections(&url, 300);
    assert!(health(&url), "/health answers past the limit");
    assert!(can_register(&url), "so does the worker protocol");
    assert!(metric(&url, "attune_http_limit_hits_total{limit=\"max_connections\"}") >= 200.0);
    assert!(metric(&url, "attune_http_connections ") <= 100.0);
    p.wait_line(Duration::from_secs(5), |l| l.contains("connection limit reached").then_some(()));
    drop(idle);
}
