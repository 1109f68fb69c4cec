//! Attune's domain: names (`PackRef`, `ActionRef`), actions, executions and their one state machine,
//! workers, output handling and duration parsing. Plain Rust and serde; no I/O, no HTTP, no SQL.

pub mod action;
pub mod config;
pub mod duration;
pub mod execution;
pub mod lease;
pub mod names;
pub mod output;
pub mod status;
pub mod time;
pub mod worker;

pub use action::{
    Action, OutputFormat, PackMeta, PackSummary, ParameterDelivery, ParameterFormat, RetryPolicy, Runtime,
};
pub use execution::{Attempt, DeadLetter, Execution, HistoryEntry, LogChunk, Report};
pub use lease::{Lease, LeaseState, Task};
pub use names::{ActionRef, NameError, PackRef};
pub use status::{ExecutionStatus, TransitionError, WorkerStatus};
pub use time::Timestamp;
pub use worker::Worker;
