//! What the worker tells the server about a running or finished task: live output while it runs
//! (`forward_output`) and the report when it ends (`report_outcome` → `reporter_loop`).
//!
//! Every request fits the server's limit (`Shared::max_request`, from registration): reports go in
//! batches of whatever accumulated, split by size, and output is cut into pieces. Should the server
//! (or a proxy in front of it) still refuse a report for a reason resending cannot fix, the batch is
//! split and the refused report replaced by a small one that fails the execution with the refusal
//! as its reason — at once, instead of leaving the execution to a lease expiry that would blame a
//! worker that is alive.

use std::{collections::HashMap, time::Duration};

use attune_client::ClientError;
use attune_core::{
    output::{encode, mask_secret_bytes},
    ExecutionStatus, LogChunk, Report, Task, Timestamp,
};
use attune_wire::{BatchItemResult, BatchReply, CompleteItem};
use serde_json::json;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::{
    agent::{Outgoing, Shared},
    runtime,
};

/// Room kept in every request for what is not the payload.
const ENVELOPE: usize = 4 * 1024;

/// Sends an action's output to the server while it runs: complete lines, every 250 ms, secrets
/// masked, in pieces that fit the server's request limit. Ends (after a last flush) when the
/// process's output is closed; an action that ends within the first 250 ms streams nothing (its
/// report carries the output). Best effort: a failure only costs the live view; the final stdout
/// and stderr come with the report.
pub(crate) async fn forward_output(
    shared: &Shared,
    task: &Task,
    mut output: tokio::sync::mpsc::UnboundedReceiver<(&'static str, Vec<u8>)>,
) {
    let secrets = runtime::secret_values(task);
    // Encoded, a piece takes at most about twice its size.
    let piece = (shared.max_request.saturating_sub(ENVELOPE) / 3).max(1024);
    let mut pending: HashMap<&'static str, Vec<u8>> = HashMap::new();
    let every = Duration::from_millis(250);
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut open = true;
    let mut refused = false;
    let mut sent_any = false;
    while open {
        tokio::select! {
            m = output.recv() => match m {
                Some((stream, bytes)) => {
                    pending.entry(stream).or_default().extend_from_slice(&bytes);
                    continue;
                }
                None => open = false,
            },
            _ = tick.tick() => {}
        }
        if !open && !sent_any {
            // Finished before anything was streamed: the report carries all of it.
            return;
        }
        for stream in ["stdout", "stderr"] {
            let Some(buf) = pending.get_mut(stream) else { continue };
            // Whole lines only (so a secret is not split across chunks), everything at the end.
            let cut = if open {
                buf.iter().rposition(|b| *b == b'\n').map(|i| i + 1).unwrap_or(0)
            } else {
                buf.len()
            };
            if cut == 0 {
                continue;
            }
            let bytes = mask_secret_bytes(buf.drain(..cut).collect(), &secrets);
            for part in bytes.chunks(piece) {
                if refused {
                    break;
                }
                let (text, encoding) = encode(part);
                let chunk =
                    LogChunk { seq: 0, stream: stream.to_owned(), at: Timestamp::now(), text, encoding };
                sent_any = true;
                if let Err(e) = shared
                    .client()
                    .append_logs(shared.id, task.execution_id, &task.lease_token, vec![chunk])
                    .await
                {
                    tracing::debug!(execution_id = %task.execution_id, error = %e, "live output not sent");
                    refused = e.status() == Some(409);
                }
            }
        }
    }
}

/// Hands the report to the reporter and waits until the server has it.
pub(crate) async fn report_outcome(shared: &Shared, task: &Task, report: Report) {
    let id = task.execution_id;
    let (tx, rx) = tokio::sync::oneshot::channel();
    let item = CompleteItem { execution_id: id, lease_token: task.lease_token.clone(), report };
    if shared.reports.send((item, tx)).is_err() {
        tracing::error!(execution_id = %id, "reporter gone; the lease will expire and the server decides");
        return;
    }
    match rx.await {
        Ok(Ok(status)) => tracing::debug!(execution_id = %id, %status, "reported"),
        Ok(Err(e)) => tracing::warn!(execution_id = %id, error = %e, "report not taken"),
        Err(_) => {
            tracing::error!(execution_id = %id, "report lost; the lease will expire and the server decides")
        }
    }
}

/// Sends reports in batches: whatever has accumulated while the previous batch was in flight, in
/// requests that fit the server's limit.
pub(crate) async fn reporter_loop(
    shared: std::sync::Arc<Shared>,
    mut outgoing: tokio::sync::mpsc::UnboundedReceiver<Outgoing>,
    stop: CancellationToken,
) {
    const MAX_BATCH: usize = 512;
    let mut batch = Vec::with_capacity(MAX_BATCH);
    loop {
        let n = tokio::select! {
            biased;
            n = outgoing.recv_many(&mut batch, MAX_BATCH) => n,
            _ = stop.cancelled() => 0,
        };
        if n == 0 {
            return;
        }
        for part in by_size(std::mem::take(&mut batch), shared.max_request.saturating_sub(ENVELOPE)) {
            send(&shared, part).await;
        }
    }
}

/// Splits reports into batches whose JSON fits `budget` bytes (a report alone may not, if the
/// server's limit was set below what its caps need; the server then says so).
fn by_size(items: Vec<Outgoing>, budget: usize) -> Vec<Vec<Outgoing>> {
    let mut out: Vec<Vec<Outgoing>> = Vec::new();
    let mut size: usize = 0;
    for item in items {
        let n = json_size(&item.0.report);
        match out.last_mut() {
            Some(last) if size.saturating_add(n) <= budget => {
                last.push(item);
                size += n;
            }
            _ => {
                out.push(vec![item]);
                size = n;
            }
        }
    }
    out
}

/// An upper bound of a report's JSON size without writing it: a stream escapes to at most twice
/// its size (`attune_core::output::encode` sees to it); result and error are written to measure.
fn json_size(r: &Report) -> usize {
    let value = |v: &Option<serde_json::Value>| v.as_ref().map(|v| v.to_string().len()).unwrap_or(0);
    2 * (r.stdout.len() + r.stderr.len()) + value(&r.result) + value(&r.error) + 512
}

/// A refusal that resending cannot fix: the request itself was refused (too large, malformed,
/// invalid), as opposed to an unknown worker, a lost lease, or the server being away.
fn refused_for_good(e: &ClientError) -> Option<String> {
    match e {
        ClientError::Api { status: 400 | 413 | 415 | 422, message, .. } => Some(message.clone()),
        ClientError::Protocol { message, .. } => Some(message.clone()),
        _ => None,
    }
}

/// The report that replaces one the server refused: no output, the execution `failed` with the
/// refusal as its reason (the same shape the server gives a report it refuses itself).
fn refusal_report(item: &CompleteItem, why: &str) -> CompleteItem {
    let r = &item.report;
    let error = json!({
        "error": format!("the server refused the worker's report: {why}"),
        "failed_by": "server",
        "reported_status": r.status.as_str(),
        "exit_code": r.exit_code,
        "stdout_bytes_dropped": r.stdout.len(),
        "stderr_bytes_dropped": r.stderr.len(),
    });
    CompleteItem {
        execution_id: item.execution_id,
        lease_token: item.lease_token.clone(),
        report: Report { exit_code: r.exit_code, error: Some(error), ..Report::new(ExecutionStatus::Failed) },
    }
}

/// Sends one batch and answers each report's waiter. A batch refused for good is sent again report
/// by report; a single report refused for good is replaced by `refusal_report`.
async fn send(shared: &Shared, batch: Vec<Outgoing>) {
    let items: Vec<CompleteItem> = batch.iter().map(|(i, _)| i.clone()).collect();
    match post(shared, items).await {
        Ok(reply) => answer(batch, reply),
        Err(e) => match refused_for_good(&e) {
            Some(_) if batch.len() > 1 => {
                tracing::warn!(error = %e, count = batch.len(), "report batch refused; sending the reports one by one");
                for one in batch {
                    Box::pin(send(shared, vec![one])).await;
                }
            }
            Some(why) => {
                let (item, tx) = batch.into_iter().next().expect("one report");
                tracing::warn!(execution_id = %item.execution_id, error = %e, "report refused; failing the execution with the reason");
                let fallback = refusal_report(&item, &why);
                let r = match post(shared, vec![fallback]).await {
                    Ok(reply) => first_answer(reply),
                    Err(e) => Err(e.to_string()),
                };
                let _ = tx.send(r);
            }
            None => {
                for (_, tx) in batch {
                    let _ = tx.send(Err(e.to_string()));
                }
            }
        },
    }
}

/// `complete-batch`, retried while the failure is transient and our leases may still be valid.
async fn post(shared: &Shared, items: Vec<CompleteItem>) -> Result<BatchReply, ClientError> {
    let mut backoff = Duration::from_millis(100);
    let mut last = None;
    for _ in 0..20 {
        let server = shared.server();
        match shared.clients[server].complete_batch(shared.id, items.clone()).await {
            Ok(reply) => return Ok(reply),
            Err(e) if e.is_transient() => {
                tracing::warn!(error = %e, count = items.len(), retry_in = ?backoff, "report failed; retrying");
                shared.fail_over(server);
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
                last = Some(e);
            }
            Err(e) => return Err(e),
        }
    }
    Err(last.expect("at least one attempt"))
}

fn answer(batch: Vec<Outgoing>, reply: BatchReply) {
    let mut by_id: HashMap<Uuid, _> = reply.results.into_iter().map(|r| (r.execution_id, r)).collect();
    for (item, tx) in batch {
        let _ = tx.send(item_result(by_id.remove(&item.execution_id)));
    }
}

fn first_answer(reply: BatchReply) -> Result<ExecutionStatus, String> {
    item_result(reply.results.into_iter().next())
}

/// What the server said of one report: the execution's status afterwards, or why not.
fn item_result(r: Option<BatchItemResult>) -> Result<ExecutionStatus, String> {
    match r {
        Some(BatchItemResult { status: Some(s), .. }) => Ok(s),
        Some(BatchItemResult { error, .. }) => {
            Err(error.map(|e| e.message).unwrap_or_else(|| "rejected".into()))
        }
        None => Err("no answer for this report".into()),
    }
}
