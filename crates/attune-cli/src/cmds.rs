//! Commands that talk to a running server through `attune_client::Client`.

use std::{io::IsTerminal, path::PathBuf, time::Duration};

use anyhow::Context;
use attune_core::{
    output::{decode, OutputEncoding},
    Execution, Timestamp,
};
use attune_wire::{CreateExecution, LoadPack};
use clap::{Args, Subcommand};
use serde_json::{Map, Value};
use uuid::Uuid;

use crate::{
    output::{ago, print, Table},
    Ctx,
};

/// A mistake in what the user typed (exit code 2).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

pub(crate) fn usage(msg: impl Into<String>) -> anyhow::Error {
    UsageError(msg.into()).into()
}

#[derive(Subcommand)]
pub enum PackCmd {
    /// Load (or reload) a pack. When DIR is a pack directory here, it is checked here and sent
    /// as its content (one archive): the server checks it again and stores it by its sha256,
    /// keeping earlier versions for executions already queued; workers fetch it from the server,
    /// so no directory is shared. The same content again changes nothing. Otherwise DIR names a
    /// pack directory the server has under its packs.dirs.
    Load {
        dir: PathBuf,
        /// Also remove actions gone from the pack's files, and take the pack over if it was loaded
        /// from another directory (refused without it).
        #[arg(long)]
        replace: bool,
    },
    /// List loaded packs, with the digest and size of their current version.
    List,
    /// Show one pack: its manifest, configuration, stored versions (digest, size, which one is
    /// current), actions, and what was accepted without being used or skipped (packs written
    /// for the original Attune).
    Show { pack_ref: String },
}

#[derive(Subcommand)]
pub enum ActionCmd {
    /// List loaded actions.
    List,
    /// Show one action with its parameters.
    Show { action_ref: String },
}

#[derive(Subcommand)]
pub enum ExecutionCmd {
    /// List executions, newest first.
    List {
        /// Only this status (requested, scheduled, running, canceling, succeeded, failed, timeout, canceled, abandoned).
        #[arg(long)]
        status: Option<String>,
        /// Only this action.
        #[arg(long)]
        action: Option<String>,
        /// Only the tasks of this workflow.
        #[arg(long)]
        parent: Option<String>,
        #[arg(long, default_value_t = 20)]
        limit: u32,
    },
    /// Show a workflow and its tasks (nested workflows' too) with status and duration.
    Tree {
        id: String,
        /// Redraw every second until the workflow ends.
        #[arg(long, short)]
        follow: bool,
    },
    /// Pause a workflow: running tasks finish, nothing new starts until resume.
    Pause { id: String },
    /// Resume a paused workflow.
    Resume { id: String },
    /// Show one execution with its history.
    Get { id: String },
    /// Cancel an execution: at once if it has not started, via its worker if it is running.
    Cancel { id: String },
    /// Print an execution's output; with --follow, as it is produced, until the execution ends.
    Logs {
        id: String,
        #[arg(long, short)]
        follow: bool,
    },
}

#[derive(Args)]
pub struct RunArgs {
    /// The action, e.g. core.echo.
    action_ref: String,
    /// Parameters as key=value; values that parse as JSON (numbers, true, [..], {..}) are used as
    /// JSON, anything else as a string.
    params: Vec<String>,
    /// All parameters as one JSON object (merged under key=value ones).
    #[arg(long)]
    params_json: Option<String>,
    /// Wait for the execution to finish; exit 0 only if it succeeded.
    #[arg(long)]
    wait: bool,
    /// Kill the action after this many seconds (overrides the action's timeout_seconds).
    #[arg(long)]
    timeout: Option<u64>,
    /// Attempts in all: a failed, timed-out or lost attempt is retried until this many (overrides
    /// the action's retry policy).
    #[arg(long)]
    max_attempts: Option<u32>,
    /// Seconds to wait before a retry (overrides the action's retry policy).
    #[arg(long)]
    backoff: Option<u64>,
    /// Fail it if no worker starts it within this many seconds (overrides the action's
    /// scheduled_timeout_seconds and the server's executor.scheduled_timeout).
    #[arg(long, value_name = "SECONDS")]
    scheduled_timeout: Option<u64>,
    /// Run it only on a worker with this label (repeatable; replaces the action's worker_selector).
    #[arg(long = "on", value_name = "LABEL=VALUE")]
    on: Vec<String>,
    /// -100 to 100: higher is taken first, each step worth a minute of waiting (overrides the
    /// action's priority).
    #[arg(long, allow_hyphen_values = true)]
    priority: Option<i32>,
}

/// `k=v` words as a JSON object of text values.
pub fn parse_labels(words: &[String], flag: &str) -> anyhow::Result<Value> {
    let mut m = Map::new();
    for w in words {
        match w.split_once('=') {
            Some((k, v)) if attune_core::action::valid_label_name(k) => {
                m.insert(k.to_owned(), Value::String(v.to_owned()));
            }
            _ => {
                return Err(usage(format!(
                    "{flag} {w:?}: expected NAME=VALUE, NAME being 1 to 63 of A-Z a-z 0-9 . _ -"
                )))
            }
        }
    }
    Ok(Value::Object(m))
}

pub async fn pack(ctx: &Ctx, c: PackCmd) -> anyhow::Result<i32> {
    match c {
        PackCmd::Load { dir, replace } => {
            // A pack directory here is checked here first (located errors before a round trip),
            // then sent as its content; the server checks it again whatever this says. Anything
            // else names a directory the server has under its packs.dirs.
            let loaded = match std::fs::canonicalize(&dir) {
                Ok(real) if real.join("pack.yaml").is_file() => {
                    attune_pack::load_pack_dir(&real).map_err(|e| usage(format!("pack not loaded:\n{e}")))?;
                    let archive = attune_pack::archive::build(&real)
                        .map_err(|e| usage(format!("pack not loaded: {}: {e}", real.display())))?;
                    let source = real.display().to_string();
                    ctx.client.upload_pack(archive, replace, Some(&source)).await?
                }
                _ => ctx.client.load_pack(&LoadPack { dir: dir.display().to_string(), replace }).await?,
            };
            print(ctx.output, &loaded, || {
                let mut t = Table::new(vec!["PACK", "KIND", "REF", "CHANGE"]);
                let p = || loaded.pack_ref.clone();
                for (kind, refs) in [
                    ("action", &loaded.actions),
                    ("trigger", &loaded.triggers),
                    ("rule", &loaded.rules),
                    ("sensor", &loaded.sensors),
                ] {
                    for r in refs {
                        t.row(vec![p(), kind.into(), r.clone(), "loaded".into()]);
                    }
                }
                for a in &loaded.removed {
                    t.row(vec![p(), "action".into(), a.clone(), "removed".into()]);
                }
                if let Some(d) = &loaded.previous_dir {
                    t.row(vec![p(), "pack".into(), "-".into(), format!("taken over from {d}")]);
                }
                for n in &loaded.notes {
                    t.row(vec![p(), "note".into(), n.file.clone(), note_text(n)]);
                }
                let version = if loaded.unchanged {
                    "unchanged: this content was loaded already".to_owned()
                } else {
                    format!("stored ({} bytes)", loaded.size)
                };
                t.row(vec![p(), "version".into(), loaded.digest.clone(), version]);
                t
            })?;
        }
        PackCmd::Show { pack_ref } => {
            if attune_core::PackRef::parse(&pack_ref).is_err() {
                return Err(usage(format!(
                    "{pack_ref:?} is not a pack name (attune pack list shows those loaded)"
                )));
            }
            let detail = match ctx.client.get_pack(&pack_ref).await {
                Err(e) if e.status() == Some(404) => {
                    anyhow::bail!("no pack {pack_ref:?} is loaded (attune pack list shows those that are)")
                }
                r => r?,
            };
            let versions = detail.versions;
            let p = detail.summary;
            let actions: Vec<_> =
                ctx.client.list_actions().await?.into_iter().filter(|a| a.pack == p.meta.pack_ref).collect();
            let shown = serde_json::json!({"pack": p, "actions": actions, "versions": versions});
            print(ctx.output, &shown, || {
                let m = &p.meta;
                let mut pairs = vec![
                    ("ref", m.pack_ref.to_string()),
                    ("label", m.label.clone()),
                    ("version", m.version.clone()),
                    ("description", m.description.clone()),
                    ("dir", m.dir.clone().unwrap_or_default()),
                    ("loaded_at", p.loaded_at.to_datetime().to_rfc3339()),
                ];
                for v in &versions {
                    let current = if v.current { ", current" } else { "" };
                    pairs.push((
                        "version",
                        format!(
                            "{} ({} bytes, stored {}{current})",
                            v.digest,
                            v.size,
                            v.stored_at.to_datetime().to_rfc3339()
                        ),
                    ));
                }
                if let Some(c) = &m.config {
                    pairs.push(("config", c.to_string()));
                }
                if let Some(c) = &m.conf_schema {
                    pairs.push(("conf_schema", c.to_string()));
                }
                for a in &actions {
                    let mut what = format!("{} ({})", a.action_ref, a.runtime);
                    if a.dialect == attune_core::Dialect::Original {
                        what.push_str(", the original's dialect");
                    }
                    if !a.enabled {
                        what.push_str(", disabled");
                    }
                    pairs.push(("action", what));
                }
                for n in &m.notes {
                    pairs.push(("note", format!("{}: {}", n.file, note_text(n))));
                }
                Table::fields(pairs)
            })?;
        }
        PackCmd::List => {
            let packs = ctx.client.list_packs().await?;
            print(ctx.output, &packs, || {
                let mut t =
                    Table::new(vec!["REF", "VERSION", "ACTIONS", "DIGEST", "SIZE", "DIR", "DESCRIPTION"]);
                for p in &packs {
                    t.row(vec![
                        p.meta.pack_ref.to_string(),
                        p.meta.version.clone(),
                        p.actions.to_string(),
                        p.meta.digest.as_deref().map(|d| d[..d.len().min(12)].to_owned()).unwrap_or_default(),
                        p.size.map(|s| s.to_string()).unwrap_or_default(),
                        p.meta.dir.clone().unwrap_or_default(),
                        p.meta.description.clone(),
                    ]);
                }
                t
            })?;
        }
    }
    Ok(0)
}

pub async fn action(ctx: &Ctx, c: ActionCmd) -> anyhow::Result<i32> {
    match c {
        ActionCmd::List => {
            let actions = ctx.client.list_actions().await?;
            print(ctx.output, &actions, || {
                let mut t = Table::new(vec!["REF", "RUNTIME", "DESCRIPTION"]);
                for a in &actions {
                    t.row(vec![a.action_ref.to_string(), a.runtime.to_string(), a.description.clone()]);
                }
                t
            })?;
        }
        ActionCmd::Show { action_ref } => {
            let a = ctx.client.get_action(&action_ref).await?;
            print(ctx.output, &a, || {
                let mut pairs = vec![
                    ("ref", a.action_ref.to_string()),
                    ("description", a.description.clone()),
                    ("runtime", a.runtime.to_string()),
                    ("entry_point", a.entry_point.clone()),
                    ("output_format", format!("{:?}", a.output_format).to_lowercase()),
                    ("timeout", a.timeout_seconds.map(|t| format!("{t}s")).unwrap_or_else(|| "none".into())),
                    ("max_attempts", a.retry.max_attempts.to_string()),
                    (
                        "scheduled_timeout",
                        a.scheduled_timeout_seconds
                            .map(|t| format!("{t}s"))
                            .unwrap_or_else(|| "the server's (executor.scheduled_timeout)".into()),
                    ),
                    (
                        "worker_selector",
                        if a.worker_selector.is_empty() {
                            "any worker of its runtime".into()
                        } else {
                            a.worker_selector
                                .iter()
                                .map(|(k, v)| format!("{k}={v}"))
                                .collect::<Vec<_>>()
                                .join(", ")
                        },
                    ),
                    (
                        "concurrency",
                        match &a.concurrency {
                            None => "unlimited".into(),
                            Some(c) => format!(
                                "at most {} at once{}, on_limit: {}",
                                c.limit,
                                c.key
                                    .as_ref()
                                    .map(|k| format!(" per {k}"))
                                    .unwrap_or_else(|| " in all".into()),
                                serde_json::to_value(c.on_limit)
                                    .ok()
                                    .and_then(|v| v.as_str().map(str::to_owned))
                                    .unwrap_or_default()
                            ),
                        },
                    ),
                    (
                        "rate_limit",
                        match &a.rate_limit {
                            None => "none".into(),
                            Some(r) => format!(
                                "{} starts a second, bursts of {}{}",
                                r.per_second,
                                r.burst(),
                                r.key.as_ref().map(|k| format!(", per {k}")).unwrap_or_default()
                            ),
                        },
                    ),
                    ("priority", a.priority.to_string()),
                ];
                if !a.enabled {
                    pairs.push(("enabled", "false: submissions are refused".into()));
                }
                if a.dialect == attune_core::Dialect::Original {
                    pairs.push((
                        "dialect",
                        "the original Attune's (bash, its environment names and dotenv, lenient output)"
                            .into(),
                    ));
                }
                let required: Vec<&str> = a
                    .parameters
                    .get("required")
                    .and_then(Value::as_array)
                    .map(|r| r.iter().filter_map(Value::as_str).collect())
                    .unwrap_or_default();
                if let Some(props) = a.parameters.get("properties").and_then(Value::as_object) {
                    for (k, p) in props {
                        let (ty, desc) = type_and_description(p);
                        let req = if required.contains(&k.as_str()) { ", required" } else { "" };
                        let secret =
                            if p.get("secret") == Some(&Value::Bool(true)) { ", secret" } else { "" };
                        pairs.push(("parameter", format!("{k} ({ty}{req}{secret}) {desc}")));
                    }
                }
                if let Some(props) =
                    a.output_schema.as_ref().and_then(|o| o.get("properties")).and_then(Value::as_object)
                {
                    for (k, p) in props {
                        let (ty, desc) = type_and_description(p);
                        pairs.push(("output", format!("{k} ({ty}) {desc}")));
                    }
                }
                Table::fields(pairs)
            })?;
        }
    }
    Ok(0)
}

/// A property's JSON Schema type (`any` when it has none) and description, for `action show`.
fn type_and_description(p: &Value) -> (String, &str) {
    let ty = p.get("type").map(|t| t.to_string().replace('"', "")).unwrap_or_else(|| "any".into());
    (ty, p.get("description").and_then(Value::as_str).unwrap_or(""))
}

/// A pack note as one line: the keys, then what became of them.
fn note_text(n: &attune_core::PackNote) -> String {
    if n.keys.is_empty() {
        n.note.clone()
    } else {
        format!("{} — {}", n.keys.join(", "), n.note)
    }
}

pub async fn worker_list(ctx: &Ctx, all: bool) -> anyhow::Result<i32> {
    let workers = ctx.client.list_workers(all).await?;
    let now = Timestamp::now().millis();
    print(ctx.output, &workers, || {
        let mut t = Table::new(vec!["NAME", "STATUS", "HEARTBEAT", "IN FLIGHT", "RUNTIMES", "REASON"]);
        for w in &workers {
            t.row(vec![
                w.name.clone(),
                w.status.to_string(),
                ago(now - w.last_heartbeat.millis()),
                format!("{}/{}", w.in_flight, w.concurrency),
                w.runtimes.iter().map(|r| r.as_str()).collect::<Vec<_>>().join(","),
                w.status_reason.clone().unwrap_or_default(),
            ]);
        }
        t
    })?;
    Ok(0)
}

/// Parameters from `key=value` words and `--params-json`.
pub fn parse_params(words: &[String], json: Option<&str>) -> anyhow::Result<Value> {
    let mut map = match json {
        Some(j) => match serde_json::from_str::<Value>(j) {
            Ok(Value::Object(m)) => m,
            Ok(_) => return Err(usage("--params-json must be a JSON object")),
            Err(e) => return Err(usage(format!("--params-json is not valid JSON: {e}"))),
        },
        None => Map::new(),
    };
    for w in words {
        let Some((k, v)) = w.split_once('=') else {
            return Err(usage(format!("parameter {w:?} is not key=value (e.g. message=hello)")));
        };
        if k.is_empty() {
            return Err(usage(format!("parameter {w:?} has an empty key")));
        }
        let value = match serde_json::from_str::<Value>(v) {
            Ok(j) if !j.is_string() => j,
            _ => Value::String(v.to_owned()),
        };
        map.insert(k.to_owned(), value);
    }
    Ok(Value::Object(map))
}

pub async fn run(ctx: &Ctx, a: RunArgs) -> anyhow::Result<i32> {
    let parameters = parse_params(&a.params, a.params_json.as_deref())?;
    let req = CreateExecution {
        action_ref: a.action_ref,
        parameters: Some(parameters),
        timeout_seconds: a.timeout,
        max_attempts: a.max_attempts,
        backoff_seconds: a.backoff,
        scheduled_timeout_seconds: a.scheduled_timeout,
        worker_selector: if a.on.is_empty() { None } else { Some(parse_labels(&a.on, "--on")?) },
        priority: a.priority,
    };
    let e = ctx.client.create_execution(&req).await?;
    if !a.wait {
        show_execution(ctx, &e)?;
        return Ok(0);
    }
    // The action's snapshot is not sent with the execution; the action says what it is.
    let workflow = ctx
        .client
        .get_action(e.action_ref.as_str())
        .await
        .is_ok_and(|a| a.runtime == attune_core::Runtime::Workflow);
    let e = wait(ctx, e, workflow).await?;
    show_execution(ctx, &e)?;
    if workflow && ctx.output == crate::output::Format::Table {
        println!();
        crate::workflows::show_tree(ctx, e.id).await?;
    }
    Ok(if e.status == attune_core::ExecutionStatus::Succeeded { 0 } else { 1 })
}

/// Long-polls until the execution is terminal; shows a progress line on a terminal (stderr).
async fn wait(ctx: &Ctx, mut e: Execution, workflow: bool) -> anyhow::Result<Execution> {
    let mut told = std::collections::BTreeSet::new();
    let tty = std::io::stderr().is_terminal();
    let spinner = ['|', '/', '-', '\\'];
    let started = std::time::Instant::now();
    let step = if tty { Duration::from_millis(250) } else { Duration::from_secs(30) };
    let mut i = 0;
    while !e.status.is_terminal() {
        if workflow {
            // A workflow may stop at an inquiry: say so, and how to answer it.
            let step = if tty { Duration::from_secs(1) } else { Duration::from_secs(2) };
            crate::workflows::announce_inquiries(ctx, e.id, &mut told).await?;
            e = match ctx.client.wait_execution(e.id, false, step).await {
                Ok(e) => e,
                Err(err) if err.is_transient() => {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
                Err(err) => return Err(err.into()),
            };
            continue;
        }
        if tty {
            eprint!(
                "\r{} {} {} ({:.0}s)   ",
                spinner[i % 4],
                e.id,
                e.status,
                started.elapsed().as_secs_f64()
            );
            i += 1;
        }
        e = match ctx.client.wait_execution(e.id, false, step).await {
            Ok(e) => e,
            Err(err) if err.is_transient() => {
                if tty {
                    eprint!("\r  server unreachable, retrying…   ");
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
            Err(err) => return Err(err.into()),
        };
    }
    if tty {
        eprint!("\r{}\r", " ".repeat(70));
    }
    Ok(e)
}

fn show_execution(ctx: &Ctx, e: &Execution) -> anyhow::Result<()> {
    print(ctx.output, e, || {
        let mut pairs = vec![
            ("id", e.id.to_string()),
            ("action", e.action_ref.to_string()),
            ("status", e.status.to_string()),
            ("attempt", format!("{}/{}", e.attempt, e.max_attempts)),
            ("worker", e.worker.clone().unwrap_or_default()),
            ("parameters", e.parameters.to_string()),
        ];
        if !e.worker_selector.is_empty() {
            let on: Vec<String> = e.worker_selector.iter().map(|(k, v)| format!("{k}={v}")).collect();
            pairs.push(("runs on", format!("workers labelled {}", on.join(", "))));
        }
        if let Some(w) = &e.waiting {
            pairs.push(("waiting", w.clone()));
        }
        if let Some(c) = e.exit_code {
            pairs.push(("exit_code", c.to_string()));
        }
        if let Some(r) = &e.result {
            pairs.push(("result", r.to_string()));
        }
        if let Some(err) = &e.error {
            pairs.push((
                "error",
                err.get("error")
                    .and_then(Value::as_str)
                    .map(str::to_owned)
                    .unwrap_or_else(|| err.to_string()),
            ));
        }
        for a in &e.attempts {
            let err = a.error.as_ref().and_then(|e| e.get("error")).and_then(Value::as_str).unwrap_or("");
            pairs.push((
                "attempt",
                format!("#{} on {} {} {err}", a.attempt, a.worker.clone().unwrap_or_default(), a.status),
            ));
        }
        for h in &e.history {
            let from = h.from.map(|f| f.to_string()).unwrap_or_else(|| "-".into());
            let reason = h.reason.clone().unwrap_or_default();
            pairs.push((
                "history",
                format!(
                    "{} {from} -> {} by {} {reason}",
                    h.at.to_datetime().format("%H:%M:%S%.3f"),
                    h.to,
                    h.actor
                ),
            ));
        }
        for (name, truncated) in [("stdout", e.stdout_truncated), ("stderr", e.stderr_truncated)] {
            if truncated {
                pairs.push((
                    "note",
                    format!("{name} was longer than the worker's cap; the beginning is kept"),
                ));
            }
        }
        let mut t = Table::fields(pairs);
        if !e.stdout.is_empty() {
            t.row(vec![stream_label("stdout:", &e.stdout, e.stdout_encoding), String::new()]);
        }
        t
    })?;
    if ctx.output == crate::output::Format::Table {
        print_stream(&e.stdout, e.stdout_encoding, false);
        if !e.stderr.is_empty() {
            println!("{}", stream_label("stderr:", &e.stderr, e.stderr_encoding));
            print_stream(&e.stderr, e.stderr_encoding, false);
        }
    }
    Ok(())
}

/// `stdout:`, saying so when the output is not text.
fn stream_label(name: &str, text: &str, enc: OutputEncoding) -> String {
    match decode(text, enc) {
        Ok(b) if !enc.is_utf8() => format!(
            "{name} ({} bytes, not text: shown with escapes; `attune execution logs` writes the bytes)",
            b.len()
        ),
        _ => name.to_owned(),
    }
}

/// Prints a stored stream for people: text as it is; other output with its non-printable bytes
/// escaped (`\x00`), unless `raw`, which writes the exact bytes (for pipes and files).
fn print_stream(text: &str, enc: OutputEncoding, raw: bool) {
    use std::io::Write;
    let bytes = decode(text, enc).unwrap_or_else(|_| text.as_bytes().to_vec());
    if bytes.is_empty() {
        return;
    }
    let mut out = std::io::stdout().lock();
    if raw || enc.is_utf8() {
        let _ = out.write_all(&bytes);
    } else {
        let _ = out.write_all(bytes.escape_ascii().to_string().as_bytes());
    }
    if !raw && bytes.last() != Some(&b'\n') {
        let _ = out.write_all(b"\n");
    }
}

fn parse_uuid(s: &str) -> anyhow::Result<Uuid> {
    s.parse().map_err(|_| usage(format!("{s:?} is not an execution id (a UUID)")))
}

pub async fn execution(ctx: &Ctx, c: ExecutionCmd) -> anyhow::Result<i32> {
    match c {
        ExecutionCmd::List { status, action, parent, limit } => {
            let mut q = vec![format!("limit={limit}")];
            if let Some(s) = status {
                q.push(format!("status={s}"));
            }
            if let Some(a) = action {
                q.push(format!("action_ref={a}"));
            }
            if let Some(p) = parent {
                q.push(format!("parent={}", parse_uuid(&p)?));
            }
            let list = ctx.client.list_executions(&q.join("&")).await.context("list executions")?;
            let now = Timestamp::now().millis();
            print(ctx.output, &list, || {
                let mut t = Table::new(vec!["ID", "ACTION", "STATUS", "ATTEMPT", "WORKER", "CREATED"]);
                for e in &list.items {
                    t.row(vec![
                        e.id.to_string(),
                        e.action_ref.to_string(),
                        e.status.to_string(),
                        format!("{}/{}", e.attempt, e.max_attempts),
                        e.worker.clone().unwrap_or_default(),
                        ago(now - e.created_at.millis()),
                    ]);
                }
                t
            })?;
        }
        ExecutionCmd::Get { id } => {
            let e = ctx.client.get_execution(parse_uuid(&id)?).await?;
            show_execution(ctx, &e)?;
        }
        ExecutionCmd::Logs { id, follow } => return logs(ctx, parse_uuid(&id)?, follow).await,
        ExecutionCmd::Cancel { id } => {
            let e = ctx.client.cancel_execution(parse_uuid(&id)?).await?;
            show_execution(ctx, &e)?;
        }
        ExecutionCmd::Tree { id, follow } => {
            let id = parse_uuid(&id)?;
            if !follow {
                return crate::workflows::show_tree(ctx, id).await;
            }
            loop {
                let e = ctx.client.get_execution(id).await?;
                if std::io::stdout().is_terminal() {
                    print!("\x1b[2J\x1b[H");
                }
                crate::workflows::show_tree(ctx, id).await?;
                if e.status.is_terminal() {
                    break;
                }
                let _ = ctx.client.wait_execution(id, false, Duration::from_secs(1)).await;
            }
        }
        ExecutionCmd::Pause { id } => {
            let e = ctx.client.pause_workflow(parse_uuid(&id)?).await?;
            show_execution(ctx, &e)?;
        }
        ExecutionCmd::Resume { id } => {
            let e = ctx.client.resume_workflow(parse_uuid(&id)?).await?;
            show_execution(ctx, &e)?;
        }
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn params_from_words() {
        let p = parse_params(
            &["message=hello world".into(), "n=3".into(), "flag=true".into(), "s=\"3\"".into()],
            None,
        )
        .unwrap();
        assert_eq!(p, json!({"message": "hello world", "n": 3, "flag": true, "s": "\"3\""}));
        assert!(parse_params(&["nokey".into()], None).is_err());
        assert!(parse_params(&[], Some("[1]")).is_err());
        let p = parse_params(&["a=1".into()], Some(r#"{"a": 0, "b": 2}"#)).unwrap();
        assert_eq!(p, json!({"a": 1, "b": 2}));
    }
}

#[derive(Subcommand)]
pub enum DlqCmd {
    /// List dead letters with their cause, newest first.
    List {
        /// Include those already requeued.
        #[arg(long)]
        all: bool,
    },
    /// Submit a dead letter's execution again, as a new execution.
    Requeue { id: String },
}

pub async fn dlq(ctx: &Ctx, c: DlqCmd) -> anyhow::Result<i32> {
    match c {
        DlqCmd::List { all } => {
            let list = ctx.client.list_dead_letters(all).await?;
            let now = Timestamp::now().millis();
            print(ctx.output, &list, || {
                let mut t =
                    Table::new(vec!["ID", "EXECUTION", "ACTION", "CAUSE", "WHEN", "REQUEUED AS", "ERROR"]);
                for d in &list {
                    t.row(vec![
                        d.id.to_string(),
                        d.execution_id.to_string(),
                        d.action_ref.to_string(),
                        d.cause.clone(),
                        ago(now - d.created_at.millis()),
                        d.requeued_as.map(|u| u.to_string()).unwrap_or_default(),
                        d.error
                            .as_ref()
                            .and_then(|e| e.get("error"))
                            .and_then(Value::as_str)
                            .unwrap_or("")
                            .to_owned(),
                    ]);
                }
                t
            })?;
        }
        DlqCmd::Requeue { id } => {
            let id = id.parse().map_err(|_| usage(format!("{id:?} is not a dead letter id (a UUID)")))?;
            let e = ctx.client.requeue_dead_letter(id).await?;
            show_execution(ctx, &e)?;
        }
    }
    Ok(0)
}

/// Streams an execution's output, byte for byte (binary output included): the chunks its worker
/// sent while running; for an execution that ended without streaming (short actions), the stdout
/// and stderr it ended with.
async fn logs(ctx: &Ctx, id: Uuid, follow: bool) -> anyhow::Result<i32> {
    use std::io::Write;
    let mut after = 0;
    let mut printed = false;
    loop {
        let l = ctx.client.execution_logs(id, after).await?;
        for c in &l.chunks {
            let bytes = decode(&c.text, c.encoding).unwrap_or_else(|_| c.text.as_bytes().to_vec());
            if c.stream == "stderr" {
                let _ = std::io::stderr().write_all(&bytes);
            } else {
                let _ = std::io::stdout().write_all(&bytes);
            }
            printed = true;
        }
        std::io::stdout().flush().ok();
        after = l.next;
        if l.chunks.is_empty() && (l.status.is_terminal() || !follow) {
            if !printed && l.status.is_terminal() {
                let e = ctx.client.get_execution(id).await?;
                print_stream(&e.stdout, e.stdout_encoding, true);
                let stderr = decode(&e.stderr, e.stderr_encoding).unwrap_or_default();
                let _ = std::io::stderr().write_all(&stderr);
            }
            return Ok(0);
        }
        if l.chunks.is_empty() {
            // Until more output or the end: a long poll on the execution, at most half a second.
            let _ = ctx.client.wait_execution(id, false, Duration::from_millis(500)).await;
        }
    }
}
