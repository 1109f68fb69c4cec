//! The event workloads: a webhook's event to its rule's execution running, events/s through 100
//! enabled rules of which 10 match each event, and how late a 1-second interval timer fires.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{bail, Context};
use serde_json::{json, Value};

use crate::{cluster::Cluster, workloads::summary};

/// Rules on the `bench` webhook; the first `MATCHING` match every event.
const RULES: usize = 100;
const MATCHING: usize = 10;

pub struct EventResults {
    pub webhook_to_start_ms: [f64; 3],
    pub per_sec: f64,
    pub timer_lag_ms: [f64; 3],
}

/// A pack `bench`: 100 rules on the webhook `bench` (10 without criteria, 90 whose criterion
/// never holds), one rule on the webhook `latency`, and one on a 1 s interval; all run core.noop.
pub fn write_pack(dir: &std::path::Path) -> anyhow::Result<()> {
    let pack = dir.join("bench");
    std::fs::create_dir_all(pack.join("rules"))?;
    std::fs::write(pack.join("pack.yaml"), "ref: bench\ndescription: rules for attune-bench\n")?;
    let noop = "action: { ref: core.noop }\n";
    for i in 0..RULES {
        let criteria = if i < MATCHING {
            String::new()
        } else {
            format!("criteria:\n  payload.kind: {{ type: equals, pattern: other-{i} }}\n")
        };
        let rule = format!("ref: r{i:03}\ntrigger: {{ type: core.webhook, parameters: {{ name: bench }} }}\n{criteria}{noop}");
        std::fs::write(pack.join(format!("rules/r{i:03}.yaml")), rule)?;
    }
    std::fs::create_dir_all(pack.join("actions"))?;
    std::fs::write(
        pack.join("actions/limited.yaml"),
        "ref: limited\nruntime: builtin\nentry_point: noop\n\
         concurrency: { limit: 1, key: \"{{ parameters.k }}\" }\n\
         parameters: { type: object, properties: { k: { type: integer } } }\n",
    )?;
    // Workflows (issue 13): three builtin no-ops in sequence, and a `with` over n no-ops.
    std::fs::create_dir_all(pack.join("actions/workflows"))?;
    std::fs::write(
        pack.join("actions/seq3.yaml"),
        "ref: seq3\nruntime: workflow\nentry_point: workflows/seq3.yaml\n",
    )?;
    std::fs::write(
        pack.join("actions/workflows/seq3.yaml"),
        "version: 1\ntasks:\n  a: { action: core.noop, next: [b] }\n  b: { action: core.noop, next: [c] }\n  c: { action: core.noop }\n",
    )?;
    std::fs::write(
        pack.join("actions/fan.yaml"),
        "ref: fan\nruntime: workflow\nentry_point: workflows/fan.yaml\n\
         parameters: { type: object, properties: { n: { type: integer } } }\n",
    )?;
    std::fs::write(
        pack.join("actions/workflows/fan.yaml"),
        "version: 1\ntasks:\n  each:\n    with: { items: \"{{ range(ctx.n) | list }}\", concurrency: 100 }\n    action: core.noop\n",
    )?;
    std::fs::write(
        pack.join("rules/latency.yaml"),
        format!("ref: latency\ntrigger: {{ type: core.webhook, parameters: {{ name: latency }} }}\n{noop}"),
    )?;
    std::fs::write(
        pack.join("rules/tick.yaml"),
        format!("ref: tick\ntrigger: {{ type: core.interval, parameters: {{ seconds: 1 }} }}\n{noop}"),
    )?;
    Ok(())
}

pub async fn run(c: &Cluster, probes: usize, events: usize) -> anyhow::Result<EventResults> {
    let http = reqwest::Client::new();
    let post = |name: &str, body: Value| {
        http.post(format!("{}/api/v1/webhooks/{name}", c.url)).bearer_auth(&c.admin).json(&body).send()
    };
    // 1. One webhook at a time: posted → the execution its rule started is running.
    let mut ms = Vec::with_capacity(probes);
    for i in 0..probes + 20 {
        let t0 = Instant::now();
        let r = post("latency", json!({"i": i})).await?;
        if r.status().as_u16() != 202 {
            bail!("webhook answered {}", r.status());
        }
        let id = r.json::<Value>().await?["id"].as_str().context("an event id")?.to_owned();
        let deadline = t0 + Duration::from_secs(10);
        let execution = loop {
            let d: Value = http
                .get(format!("{}/api/v1/trigger-events/{id}", c.url))
                .bearer_auth(&c.admin)
                .send()
                .await?
                .json()
                .await?;
            if let Some(x) = d["enforcements"][0]["execution_id"].as_str() {
                break x.parse()?;
            }
            if Instant::now() > deadline {
                bail!("event {id} was not enforced within 10 s: {d}");
            }
        };
        c.client.wait_execution(execution, true, Duration::from_secs(10)).await?;
        if i >= 20 {
            ms.push(t0.elapsed().as_secs_f64() * 1000.0);
        }
    }
    let webhook_to_start_ms = summary(ms);

    // 2. Events from 16 clients at once, until every one is enforced by all 100 rules.
    let t0 = Instant::now();
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut set = tokio::task::JoinSet::new();
    for _ in 0..16 {
        let (http, next, url, token) = (http.clone(), next.clone(), c.url.clone(), c.admin.clone());
        set.spawn(async move {
            while next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < events {
                let r = http
                    .post(format!("{url}/api/v1/webhooks/bench"))
                    .bearer_auth(&token)
                    .json(&json!({"kind": "disk", "used": 93}))
                    .send()
                    .await?;
                if r.status().as_u16() != 202 {
                    bail!("webhook answered {}", r.status());
                }
            }
            anyhow::Ok(())
        });
    }
    while let Some(r) = set.join_next().await {
        r??;
    }
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let s = c.client.stats().await?;
        if s["events"]["unprocessed"].as_u64() == Some(0) {
            break;
        }
        if Instant::now() > deadline {
            bail!("events still unprocessed after 10 minutes: {s}");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let per_sec = events as f64 / t0.elapsed().as_secs_f64();

    // 3. The interval timer's ticks so far (at least ten): fired_at − scheduled_at.
    let deadline = Instant::now() + Duration::from_secs(30);
    let ticks = loop {
        let ticks = c.client.list_trigger_events("trigger=core.interval&limit=1000").await?;
        if ticks.len() >= 10 {
            break ticks;
        }
        if Instant::now() > deadline {
            bail!("only {} timer ticks in 30 s", ticks.len());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let at = |v: &Value| -> anyhow::Result<f64> {
        let s = v.as_str().context("a time")?;
        Ok(chrono::DateTime::parse_from_rfc3339(s)?.timestamp_millis() as f64)
    };
    let mut lag = Vec::new();
    for t in &ticks {
        lag.push(at(&t.payload["fired_at"])? - at(&t.payload["scheduled_at"])?);
    }
    Ok(EventResults { webhook_to_start_ms, per_sec, timer_lag_ms: summary(lag) })
}
