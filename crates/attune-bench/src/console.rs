//! Issue 15: how long the web console's pages take with 100,000 executions stored. The backlog
//! workload's executions are topped up to that many (no-ops, run by the workers), and once all
//! have ended each page is fetched with an admin's session cookie, one request at a time.

use std::time::{Duration, Instant};

use anyhow::Context;
use serde_json::json;

use crate::cluster::Cluster;

/// Executions stored before the pages are timed.
pub const STORED: usize = 100_000;
/// Requests per page.
const ROUNDS: usize = 20;

/// A page, and its p50 and max over `ROUNDS` requests, and the first request before them (which
/// pays for what a page reads first: caches, and on PostgreSQL dead index entries it marks).
pub type PageTime = (String, f64, f64, f64);

/// Tops the cluster up to `STORED` executions (it holds `have`), waits for them all to end, and
/// times every page; on PostgreSQL, once more after a `VACUUM` of the executions.
pub async fn run(c: &Cluster, have: usize) -> anyhow::Result<(Vec<PageTime>, Option<Vec<PageTime>>)> {
    if have < STORED {
        crate::workloads::submit_many(&c.client, STORED - have, "core.noop", json!({})).await?;
    }
    c.wait_terminal(STORED as u64, Duration::from_secs(900)).await?;
    let http = reqwest::Client::new();
    let cookie = format!("attune_session={}", c.admin);
    let get = |path: String| {
        let (http, cookie, url) = (http.clone(), cookie.clone(), c.url.clone());
        async move {
            let t0 = Instant::now();
            let r = http.get(format!("{url}{path}")).header("Cookie", cookie).send().await?;
            let status = r.status();
            let body = r.text().await?;
            anyhow::ensure!(status.is_success(), "{path}: {status}");
            Ok::<_, anyhow::Error>((t0.elapsed().as_secs_f64() * 1000.0, body))
        }
    };
    // The cursor of the list's second page (also an execution to show).
    let (_, list) = get("/executions".into()).await?;
    let cursor = list
        .split(r#"name="before" value=""#)
        .nth(1)
        .and_then(|s| s.split('"').next())
        .context("the executions page has no Older button")?
        .to_owned();
    let hour_ago = (chrono::Utc::now() - chrono::Duration::hours(1)).format("%Y-%m-%dT%H:%M:%S");
    let pages = [
        "/".to_owned(),
        "/executions".into(),
        "/executions?status=succeeded".into(),
        "/executions?status=failed".into(),
        format!("/executions?action=core.noop&since={hour_ago}"),
        format!("/executions?before={cursor}"),
        format!("/executions/{cursor}"),
        "/actions".into(),
        "/actions/core.echo".into(),
        "/automation".into(),
        "/inquiries".into(),
        "/dead-letters".into(),
        "/access".into(),
    ];
    let first = time_pages(&get, &pages).await?;
    if !c.db_url.starts_with("postgres") {
        return Ok((first, None));
    }
    vacuum(&c.db_url).await?;
    Ok((first, Some(time_pages(&get, &pages).await?)))
}

/// `VACUUM executions`: what autovacuum does on a default PostgreSQL a minute or so after such a
/// burst (this machine's PostgreSQL runs with `autovacuum = off`, so it never would by itself).
async fn vacuum(db_url: &str) -> anyhow::Result<()> {
    crate::cluster::psql(db_url, "VACUUM executions").await.map(drop)
}

async fn time_pages<F, Fut>(get: &F, pages: &[String]) -> anyhow::Result<Vec<PageTime>>
where
    F: Fn(String) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<(f64, String)>>,
{
    let mut out = Vec::new();
    for p in pages {
        let first = get(p.clone()).await?.0;
        let mut ms = Vec::with_capacity(ROUNDS);
        for _ in 0..ROUNDS {
            ms.push(get(p.clone()).await?.0);
        }
        ms.sort_by(|a, b| a.total_cmp(b));
        out.push((p.clone(), ms[ms.len() / 2], ms[ms.len() - 1], first));
    }
    Ok(out)
}
