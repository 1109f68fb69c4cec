//! Hearing the other replicas (PostgreSQL `LISTEN/NOTIFY`): work queued or executions changed on
//! another server wake this server's waiting polls and waiters at once. Without it (SQLite, or
//! while the listener reconnects) they still re-check every second.

use std::{sync::Arc, time::Duration};

use attune_store::Notice;
use uuid::Uuid;

use crate::Shared;

pub(crate) async fn listen(shared: Arc<Shared>) {
    loop {
        let listener = tokio::select! {
            l = shared.store.listener() => l,
            _ = shared.shutdown.cancelled() => return,
        };
        let mut listener = match listener {
            Ok(Some(l)) => l,
            Ok(None) => return, // SQLite: one server process, nothing to hear
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for other replicas; retrying in 1 s");
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                    _ = shared.shutdown.cancelled() => return,
                }
            }
        };
        loop {
            let notice = tokio::select! {
                n = listener.recv() => n,
                _ = shared.shutdown.cancelled() => return,
            };
            match notice {
                Ok(Notice::Work) => shared.work_available.notify_waiters(),
                Ok(Notice::Changed(ids)) => {
                    for id in ids {
                        let _ = shared.changes.send(id);
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "lost the notification listener; reconnecting");
                    shared.work_available.notify_waiters();
                    break;
                }
            }
        }
    }
}

/// Sends this replica's changes to the others, coalescing whatever accumulated meanwhile into one
/// `attune_work` and as few `attune_changed` notifications as the ids need.
pub(crate) async fn notify(
    shared: Arc<Shared>,
    mut rx: tokio::sync::mpsc::UnboundedReceiver<(Vec<Uuid>, bool)>,
) {
    let mut batch = Vec::new();
    loop {
        let n = tokio::select! {
            biased;
            n = rx.recv_many(&mut batch, 256) => n,
            _ = shared.shutdown.cancelled() => 0,
        };
        if n == 0 {
            return;
        }
        let mut work = false;
        let mut ids = Vec::new();
        for (more, w) in batch.drain(..) {
            ids.extend(more);
            work |= w;
        }
        if work {
            if let Err(e) = shared.store.notify_work().await {
                tracing::debug!(error = %e, "could not notify other replicas of work");
            }
        }
        if let Err(e) = shared.store.notify_changed(&ids).await {
            tracing::debug!(error = %e, "could not notify other replicas of changes");
        }
    }
}
