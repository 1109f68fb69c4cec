//! The `Host` check: a request must name this server. A page on a foreign site that got its name to
//! resolve to this machine (DNS rebinding) still sends its own name as `Host`, and is refused
//! before anything else looks at the request.

use std::{collections::HashSet, net::SocketAddr, sync::Arc};

use axum::{
    extract::{Request, State},
    middleware::Next,
    response::{IntoResponse, Response},
};

use crate::ApiError;

/// The host names requests may give.
#[derive(Debug, Clone)]
pub struct AllowedHosts {
    any: bool,
    names: HashSet<String>,
}

impl AllowedHosts {
    /// Loopback names, the listen address (on a wildcard address, this machine's hostname and
    /// interface addresses), and `configured` (`server.allowed_hosts`; `"*"` allows any).
    pub fn new(configured: &[String], local: SocketAddr) -> AllowedHosts {
        let mut names: HashSet<String> =
            ["localhost", "127.0.0.1", "::1"].into_iter().map(str::to_owned).collect();
        names.insert(local.ip().to_string());
        if local.ip().is_unspecified() {
            if let Ok(h) = nix::unistd::gethostname() {
                names.insert(normalize(&h.to_string_lossy()));
            }
            if let Ok(addrs) = nix::ifaddrs::getifaddrs() {
                for a in addrs {
                    let Some(addr) = a.address else { continue };
                    if let Some(v4) = addr.as_sockaddr_in() {
                        names.insert(v4.ip().to_string());
                    } else if let Some(v6) = addr.as_sockaddr_in6() {
                        names.insert(v6.ip().to_string());
                    }
                }
            }
        }
        let any = configured.iter().any(|h| h.trim() == "*");
        names.extend(configured.iter().map(|h| normalize(h)));
        AllowedHosts { any, names }
    }

    /// Whether a `Host` header value names this server (a missing header is not a browser's).
    pub fn allows(&self, host: Option<&str>) -> bool {
        self.any || host.is_none_or(|h| self.names.contains(&normalize(strip_port(h))))
    }

    fn listed(&self) -> String {
        let mut v: Vec<&str> = self.names.iter().map(String::as_str).collect();
        v.sort();
        v.join(", ")
    }
}

/// `host:port` → `host`; `[v6]:port` and `[v6]` → `v6`.
fn strip_port(h: &str) -> &str {
    if let Some(rest) = h.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    match h.rsplit_once(':') {
        Some((host, port)) if !host.contains(':') && port.bytes().all(|b| b.is_ascii_digit()) => host,
        _ => h,
    }
}

fn normalize(h: &str) -> String {
    h.trim().trim_end_matches('.').to_ascii_lowercase()
}

pub(crate) async fn check(State(hosts): State<Arc<AllowedHosts>>, req: Request, next: Next) -> Response {
    let header = req.headers().get(axum::http::header::HOST).map(|v| v.to_str().map_err(|_| ()));
    let host = match header {
        None => req.uri().authority().map(|a| a.as_str().to_owned()),
        Some(Ok(h)) => Some(h.to_owned()),
        Some(Err(())) => {
            return ApiError::bad_request("host_not_allowed", "the Host header is not text").into_response()
        }
    };
    if hosts.allows(host.as_deref()) {
        return next.run(req).await;
    }
    let host = host.unwrap_or_default();
    let msg = format!(
        "this server does not answer to the host {host:?}; it answers to {} — add the name clients \
         use to server.allowed_hosts",
        hosts.listed()
    );
    ApiError::bad_request("host_not_allowed", msg).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_ports_and_wildcards() {
        let h = AllowedHosts::new(&["Attune.Example.com".into()], "10.1.2.3:8080".parse().unwrap());
        for ok in [
            "localhost:8080",
            "127.0.0.1",
            "[::1]:80",
            "10.1.2.3:8080",
            "attune.example.com.",
            "ATTUNE.example.com:1",
        ] {
            assert!(h.allows(Some(ok)), "{ok}");
        }
        for bad in ["attacker.example", "attacker.example:8080", "10.1.2.4", "localhost.attacker.example", ""]
        {
            assert!(!h.allows(Some(bad)), "{bad}");
        }
        assert!(h.allows(None), "no Host at all is not a browser's request");
        let any = AllowedHosts::new(&["*".into()], "127.0.0.1:1".parse().unwrap());
        assert!(any.allows(Some("attacker.example")));
        let wild = AllowedHosts::new(&[], "0.0.0.0:1".parse().unwrap());
        let me = nix::unistd::gethostname().unwrap().to_string_lossy().to_ascii_lowercase();
        assert!(wild.allows(Some(&me)), "{me} on a wildcard listen address");
        assert!(!wild.allows(Some("attacker.example")));
    }
}
