//! Test support shared by the crates' integration tests: a fresh database per test (a temporary
//! SQLite file, or a PostgreSQL database created for the test and dropped after it), real `attune`
//! processes with kill-on-drop, and waiting on a condition with a deadline instead of sleeping.

mod db;
mod proc;

pub use db::TestDb;
pub use proc::{run_cli, run_cli_in, CliOutput, Proc};

use std::{future::Future, time::Duration};

/// Polls `cond` every 20 ms until it returns `Some`, or panics with `what` after `timeout`.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut cond: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(v) = cond().await {
            return v;
        }
        if tokio::time::Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
