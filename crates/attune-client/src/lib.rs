//! The HTTP edge shared by the server, the worker and the CLI: the JSON shapes of API v1 and the
//! worker protocol (`wire`), and a typed client for them (`Client`). Nothing else in Attune knows URLs.

mod client;
pub mod wire;

pub use client::{Client, ClientError};
