//! The one group-commit helper. Callers hand an item to a loop and wait for its answer; the loop
//! takes whatever accumulated while the previous batch was being committed and commits it as one
//! batch. Under load that turns many small transactions into a few large ones; at low load an item
//! waits for nothing but its own commit.

use std::future::Future;

use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

type Item<T, R> = (T, oneshot::Sender<R>);

/// The callers' side.
pub(crate) struct GroupCommit<T, R> {
    tx: mpsc::Sender<Item<T, R>>,
}

/// The loop's side, consumed by `run`.
pub(crate) struct Batches<T, R> {
    rx: mpsc::Receiver<Item<T, R>>,
    max: usize,
}

impl<T, R> GroupCommit<T, R> {
    /// A helper committing at most `max` items at once.
    pub(crate) fn new(max: usize) -> (GroupCommit<T, R>, Batches<T, R>) {
        let (tx, rx) = mpsc::channel(4 * max);
        (GroupCommit { tx }, Batches { rx, max })
    }

    /// Hands `item` to the loop and waits for its answer; `None` once the loop has stopped.
    pub(crate) async fn submit(&self, item: T) -> Option<R> {
        let (tx, rx) = oneshot::channel();
        self.tx.send((item, tx)).await.ok()?;
        rx.await.ok()
    }
}

impl<T, R> Batches<T, R> {
    /// Commits batches until `stop` is cancelled and nothing is pending. `commit` answers each item
    /// of its batch, in order.
    pub(crate) async fn run<F, Fut>(mut self, stop: CancellationToken, mut commit: F)
    where
        F: FnMut(Vec<T>) -> Fut,
        Fut: Future<Output = Vec<R>>,
    {
        let mut batch = Vec::with_capacity(self.max);
        loop {
            let n = tokio::select! {
                biased;
                n = self.rx.recv_many(&mut batch, self.max) => n,
                _ = stop.cancelled() => 0,
            };
            if n == 0 {
                return;
            }
            let (items, replies): (Vec<T>, Vec<oneshot::Sender<R>>) = batch.drain(..).unzip();
            for (answer, reply) in commit(items).await.into_iter().zip(replies) {
                // The caller may have gone away; its item was committed all the same.
                let _ = reply.send(answer);
            }
        }
    }
}
