//! Attune's storage: one `Store` over SQLite (embedded default) or PostgreSQL (production).
//! The database is both the source of truth and the queue; there is no broker.
//!
//! Both backends run the same SQL text (written with `$N` placeholders, which both accept) through
//! the `write!`/`read!` dispatch macros in `backend`; the few statements that differ by dialect say so
//! where they are. Every status change is checked by the core state machine against the status it
//! was read in and written as one conditional `UPDATE … WHERE status = <that status>` (plus the lease
//! token where one is involved); triggers (migration 0003) append the history row and the attempt row
//! in the same statement. Two replicas (or a monitor and a worker) racing on the same execution
//! cannot both win.

#[macro_use]
mod backend;
mod connect;
mod deadletters;
mod events;
#[macro_use]
mod executions;
mod logs;
mod migrate;
mod monitors;
mod notify;
mod packs;
mod rows;
mod workers;

pub use connect::{redact, BackendKind, StoreOptions};
pub use events::{Event, EventCursor};
pub use executions::{ExecutionFilter, MetricsSnapshot, NewExecution, Page};
pub use monitors::{ExpiredLease, LeaseOutcome, UnstartedFailure};
pub use notify::{Listener, Notice};
pub use workers::NewWorker;

use attune_core::TransitionError;

pub struct Store {
    pools: backend::Pools,
    kind: BackendKind,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot open database {url}: {message}")]
    Connect { url: String, message: String },
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("{what} {id} not found")]
    NotFound { what: &'static str, id: String },
    /// The caller's lease token is not the execution's current one (fencing).
    #[error("stale lease for execution {id}: {message}")]
    StaleLease { id: String, message: String },
    #[error("execution {id}: {source}")]
    Transition { id: String, source: TransitionError },
    /// The request was already carried out once and cannot be repeated.
    #[error("{0}")]
    AlreadyDone(String),
    #[error("corrupt row in {table}: {message}")]
    Corrupt { table: &'static str, message: String },
}

pub use sqlx::Error as SqlxError;

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

impl Store {
    pub fn kind(&self) -> BackendKind {
        self.kind
    }
}
