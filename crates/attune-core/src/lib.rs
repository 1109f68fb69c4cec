//! Attune's domain: names (`PackRef`, `ActionRef`), actions, executions, their one state machine
//! (`status`) and every decision about their lifecycle (`lifecycle`), the rules for a new execution
//! (`submission`), workers, output handling and duration parsing. Plain Rust and serde; no I/O, no
//! HTTP, no SQL, no async runtime. (The `openapi` feature adds API-document descriptions for the
//! wire crate; nothing here needs it.)

pub mod action;
pub mod auth;
pub mod config;
pub mod duration;
pub mod execution;
pub mod keys;
pub mod lease;
pub mod lifecycle;
pub mod names;
#[cfg(feature = "openapi")]
mod openapi;
pub mod output;
pub mod rules;
pub mod sensors;
pub mod status;
pub mod submission;
pub mod time;
pub mod whole;
pub mod worker;

pub use action::{
    Action, Dialect, OutputFormat, PackDetail, PackMeta, PackNote, PackSummary, PackVersion,
    ParameterDelivery, ParameterFormat, RetryPolicy, Runtime,
};
pub use execution::{Attempt, DeadLetter, Execution, HistoryEntry, LogChunk, Report};
pub use lease::{Lease, LeaseState, Task};
pub use names::{ActionRef, NameError, PackRef};
pub use status::{ExecutionStatus, TransitionError, WorkerStatus};
pub use submission::NewExecution;
pub use time::Timestamp;
pub use worker::Worker;
