//! Grouping concurrent submissions: the create handlers hand their validated executions to one
//! loop, which inserts whatever has accumulated while the previous insert ran, as one statement
//! and one commit. Under load that turns many small transactions into a few large ones; at low
//! load a submission waits for nothing but its own insert.

use std::sync::Arc;

use attune_core::{Execution, Timestamp};
use attune_store::NewExecution;
use tokio::sync::{mpsc, oneshot};

use crate::{ApiError, Shared};

/// Most executions inserted by one statement.
const MAX_BATCH: usize = 256;

pub(crate) type Pending = (NewExecution, oneshot::Sender<Result<Execution, ApiError>>);

pub(crate) fn channel() -> (mpsc::Sender<Pending>, mpsc::Receiver<Pending>) {
    mpsc::channel(4 * MAX_BATCH)
}

/// Submits one execution through the batcher.
pub(crate) async fn submit(shared: &Shared, new: NewExecution) -> Result<Execution, ApiError> {
    let (tx, rx) = oneshot::channel();
    let unavailable = || {
        ApiError::new(
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            "shutting_down",
            "the server is shutting down",
        )
    };
    shared.submissions.send((new, tx)).await.map_err(|_| unavailable())?;
    rx.await.map_err(|_| unavailable())?
}

/// The loop; ends when the server shuts down and nothing is pending.
pub(crate) async fn run(shared: Arc<Shared>, mut rx: mpsc::Receiver<Pending>) {
    loop {
        let first = tokio::select! {
            biased;
            x = rx.recv() => x,
            _ = shared.shutdown.cancelled() => None,
        };
        let Some(first) = first else { return };
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(x) => batch.push(x),
                Err(_) => break,
            }
        }
        let (news, replies): (Vec<_>, Vec<_>) = batch.into_iter().unzip();
        match shared.store.create_executions(news, Timestamp::now()).await {
            Ok(created) => {
                let changes: Vec<_> = created.iter().map(|e| (e.id, e.status)).collect();
                for (e, reply) in created.into_iter().zip(replies) {
                    let _ = reply.send(Ok(e));
                }
                shared.changed(&changes).await;
            }
            Err(e) => {
                let err = ApiError::from(e);
                for reply in replies {
                    let _ = reply.send(Err(err.clone()));
                }
            }
        }
    }
}
