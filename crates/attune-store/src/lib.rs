//! Attune's storage: one `Store` over SQLite (embedded default) or PostgreSQL (production).
//! The database is both the source of truth and the queue; there is no broker.
//!
//! Both backends run the same SQL text (written with `$N` placeholders, which both accept) through
//! the `write_pool!`/`read_pool!` dispatch macros in `backend`; the few statements that differ by
//! dialect say so where they are. An execution's status is written in one place, `lifecycle::APPLY`:
//! the core decides (`attune_core::lifecycle`), `Store::drive` applies the decision as one
//! conditional `UPDATE` guarded by what the decision read (status, attempt, lease); triggers
//! (migration 0003) append the history row and the attempt row in the same statement. Two replicas
//! (or a monitor and a worker) racing on the same execution cannot both win.

#[macro_use]
mod backend;
mod connect;
mod deadletters;
mod events;
mod executions;
mod keys;
mod lifecycle;
mod logs;
mod migrate;
mod notify;
mod packs;
mod queue;
mod rows;
mod rules;
mod sensors;
mod tokens;
mod workers;
mod workflows;

pub use attune_core::NewExecution;
pub use connect::{redact, BackendKind, StoreOptions};
pub use events::{Event, EventCursor};
pub use executions::{ExecutionFilter, MetricsSnapshot, Page};
pub use keys::{KeyValue, StoredKey};
pub use lifecycle::{Applied, Driven};
pub use notify::{Listener, Notice};
pub use packs::{PackContent, PackReplaced};
pub use rules::{EventFilter, Timer};
pub use sensors::{SensorBeat, StartedSensor};
pub use tokens::NewToken;
pub use workers::NewWorker;
pub use workflows::{EndedChild, EngineDue, StepWritten, WorkflowRow, WorkflowStep};

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
    /// A worker's report that could not be taken; its execution was failed with this reason.
    #[error("execution {id}: the report was refused ({message}); the execution failed with this reason")]
    RefusedReport { id: String, message: String },
    /// The caller may not touch this (another worker's lease).
    #[error("{0}")]
    Forbidden(String),
    /// The request conflicts with what is stored (`code` says how); nothing was changed.
    #[error("{message}")]
    Conflict { code: &'static str, message: String },
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
