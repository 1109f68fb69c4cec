//! Hearing the other replicas (PostgreSQL `LISTEN/NOTIFY`): work queued or executions changed on
//! another server wake this server's waiting polls and waiters at once. Without it (SQLite, or
//! while the listener reconnects) they still re-check every second.

use std::{sync::Arc, time::Duration};

use attune_store::Notice;

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
