//! `attune worker`: registers with a server, heartbeats, long-polls for tasks it can run, runs them
//! (`runtime`, through `process`), and reports. It never touches the database: everything goes
//! through the worker protocol, and every report carries the task's lease token.
//! Shape: `WorkerOptions` → `Agent::build` → `Agent::run(shutdown)`.

mod agent;
pub mod packs;
pub mod process;
mod report;
pub mod runtime;
mod sensors;

pub use agent::{Agent, WorkerOptions};
pub use runtime::detect_runtimes;
