//! Which waiting worker claims first when work appears: the least loaded.
//!
//! Workers long-poll with their free slots (`max_tasks`), so a parked poll tells this replica how
//! busy its worker is: `busy = concurrency - free` out of `concurrency`. When a submission wakes the
//! parked polls, each one first lets every parked poll that is *less loaded* and *can run
//! everything it can* (same or more runtimes, same or more labels) make its claim, then claims what
//! is left. So a trickle of work goes to the idlest worker rather than to whichever poll the
//! scheduler happened to wake first. The wait is bounded (`MAX_DEFER`) and only ever taken by a
//! parked poll after a wake-up; a poll that arrives while work is queued (a backlog) claims at
//! once, up to its free slots, so under a backlog the work is spread by free capacity alone.
//!
//! The registry is per replica: a worker polls one server at a time, and pollers on different
//! replicas still race as before.

use std::{
    collections::HashMap,
    sync::{
        atomic::{AtomicU64, Ordering},
        Mutex,
    },
    time::Duration,
};

use attune_core::{Runtime, Worker};
use tokio::sync::Notify;

/// The longest a parked poll waits for less-loaded ones to claim before claiming itself.
pub(crate) const MAX_DEFER: Duration = Duration::from_millis(20);

#[derive(Default)]
pub(crate) struct Pollers {
    parked: Mutex<HashMap<u64, Parked>>,
    next: AtomicU64,
    /// Woken whenever a parked poll finished a claim or left.
    claimed: Notify,
}

struct Parked {
    busy: u64,
    concurrency: u64,
    runtimes: Vec<Runtime>,
    labels: serde_json::Map<String, serde_json::Value>,
    /// Claims made since parking.
    claims: u64,
}

impl Parked {
    /// Whether `self` should claim before `other`: strictly less loaded, and able to take anything
    /// `other` could (so deferring never leaves work that only `other` can run waiting).
    fn goes_before(&self, other: &Parked) -> bool {
        self.busy * other.concurrency < other.busy * self.concurrency
            && other.runtimes.iter().all(|r| self.runtimes.contains(r))
            && other.labels.iter().all(|(k, v)| self.labels.get(k) == Some(v))
    }
}

/// A poll's place in the registry; leaving (drop) counts as a finished claim for those waiting.
pub(crate) struct Place<'a> {
    pollers: &'a Pollers,
    id: u64,
}

impl Pollers {
    /// Registers a poll of `worker` asking for `free` tasks.
    pub(crate) fn park<'a>(&'a self, worker: &Worker, free: u32) -> Place<'a> {
        let concurrency = u64::from(worker.concurrency.max(1));
        let busy = concurrency.saturating_sub(u64::from(free));
        let labels = worker.labels.as_object().cloned().unwrap_or_default();
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let me = Parked { busy, concurrency, runtimes: worker.runtimes.clone(), labels, claims: 0 };
        self.lock().insert(id, me);
        Place { pollers: self, id }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Parked>> {
        self.parked.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Place<'_> {
    /// Called after a wake-up, before claiming: waits until every parked poll that goes before this
    /// one has claimed (or left), for at most `MAX_DEFER`.
    pub(crate) async fn defer_to_less_loaded(&self) {
        let ahead: Vec<(u64, u64)> = {
            let parked = self.pollers.lock();
            let Some(me) = parked.get(&self.id) else { return };
            parked
                .iter()
                .filter(|(id, p)| **id != self.id && p.goes_before(me))
                .map(|(id, p)| (*id, p.claims))
                .collect()
        };
        if ahead.is_empty() {
            return;
        }
        let deadline = tokio::time::Instant::now() + MAX_DEFER;
        loop {
            let notified = self.pollers.claimed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let done = {
                let parked = self.pollers.lock();
                ahead.iter().all(|(id, seen)| parked.get(id).is_none_or(|p| p.claims > *seen))
            };
            if done {
                return;
            }
            tokio::select! {
                _ = notified => {}
                _ = tokio::time::sleep_until(deadline) => return,
            }
        }
    }

    /// A claim by this poll finished (whatever it found).
    pub(crate) fn claimed(&self) {
        if let Some(p) = self.pollers.lock().get_mut(&self.id) {
            p.claims += 1;
        }
        self.pollers.claimed.notify_waiters();
    }
}

impl Drop for Place<'_> {
    fn drop(&mut self) {
        self.pollers.lock().remove(&self.id);
        self.pollers.claimed.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn worker(concurrency: u32, runtimes: Vec<Runtime>, labels: serde_json::Value) -> Worker {
        Worker {
            id: uuid::Uuid::now_v7(),
            name: "w".into(),
            host: "h".into(),
            runtimes,
            labels,
            concurrency,
            version: "t".into(),
            status: attune_core::WorkerStatus::Active,
            last_heartbeat: attune_core::Timestamp::now(),
            registered_at: attune_core::Timestamp::now(),
            deregistered_at: None,
            status_reason: None,
            in_flight: 0,
        }
    }

    fn ahead(pollers: &Pollers, of: &Place<'_>) -> usize {
        let parked = pollers.lock();
        let me = parked.get(&of.id).unwrap();
        parked.iter().filter(|(id, p)| **id != of.id && p.goes_before(me)).count()
    }

    #[test]
    fn the_less_loaded_that_can_run_as_much_go_first() {
        let pollers = Pollers::default();
        let shell = vec![Runtime::Builtin, Runtime::Shell];
        let idle = pollers.park(&worker(4, shell.clone(), json!({"region": "eu"})), 4);
        let half = pollers.park(&worker(8, shell.clone(), json!({})), 4);
        let busy = pollers.park(&worker(4, vec![Runtime::Builtin], json!({})), 1);
        // Less loaded but without a runtime the busier one has: not waited for.
        let narrow = pollers.park(&worker(4, vec![Runtime::Builtin], json!({})), 4);
        let labelled = pollers.park(&worker(2, shell.clone(), json!({"region": "eu"})), 1);
        assert_eq!(ahead(&pollers, &idle), 0);
        assert_eq!(ahead(&pollers, &half), 1, "the idle one (its labels are a superset)");
        assert_eq!(ahead(&pollers, &busy), 4, "every other one is less loaded and runs builtin");
        assert_eq!(ahead(&pollers, &narrow), 0, "equal load is no reason to wait");
        assert_eq!(ahead(&pollers, &labelled), 1, "only the idle one has region=eu");
    }

    // Paused time: the bound passes only when nothing else can run, so no timing can flake.
    #[tokio::test(start_paused = true)]
    async fn a_deferring_poll_waits_for_the_claim_or_the_bound() {
        let pollers = Pollers::default();
        let idle = pollers.park(&worker(4, vec![Runtime::Builtin], json!({})), 4);
        let busy = pollers.park(&worker(4, vec![Runtime::Builtin], json!({})), 1);
        // Nobody claims: the bound ends the wait.
        let t = tokio::time::Instant::now();
        busy.defer_to_less_loaded().await;
        assert_eq!(t.elapsed(), MAX_DEFER);
        // The idle one claims: the wait ends then, well before the bound would.
        let (defer, ()) = tokio::join!(
            async {
                let t = tokio::time::Instant::now();
                busy.defer_to_less_loaded().await;
                t.elapsed()
            },
            async {
                tokio::task::yield_now().await;
                idle.claimed();
            }
        );
        assert_eq!(defer, Duration::ZERO, "woken by the claim, not by the bound");
        // Leaving counts too.
        drop(idle);
        let t = tokio::time::Instant::now();
        busy.defer_to_less_loaded().await;
        assert_eq!(t.elapsed(), Duration::ZERO);
    }
}
