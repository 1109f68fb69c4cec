//! A typed HTTP client for API v1 and the worker protocol (`Client`), used by the worker and the
//! CLI. The JSON shapes are `attune_wire`'s; the URLs are known here and in
//! the server's routes only.

mod client;

pub use client::{Client, ClientError, Trust};
