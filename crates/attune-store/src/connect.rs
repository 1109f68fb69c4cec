//! Opening a store from a URL (`sqlite://…` or `postgres://…`), creating what is missing.

use std::{str::FromStr, time::Duration};

use sqlx::{
    postgres::{PgConnectOptions, PgPoolOptions},
    sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous},
    ConnectOptions, Connection,
};

use crate::{backend::Pools, Result, Store, StoreError};

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BackendKind {
    Sqlite,
    Postgres,
}

#[derive(Debug, Clone)]
pub struct StoreOptions {
    pub url: String,
    /// PostgreSQL pool size; SQLite readers.
    pub max_connections: u32,
    pub acquire_timeout: Duration,
    /// PostgreSQL `statement_timeout`.
    pub statement_timeout: Duration,
}

impl StoreOptions {
    pub fn new(url: impl Into<String>) -> Self {
        StoreOptions {
            url: url.into(),
            max_connections: 10,
            acquire_timeout: Duration::from_secs(10),
            statement_timeout: Duration::from_secs(30),
        }
    }
}

fn connect_error(url: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Connect { url: redact(url), message: e.to_string() }
}

/// The URL without its password, for messages.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let creds = &url[s + 3..at];
            match creds.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..s + 3], &url[at..]),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

impl Store {
    /// Opens (creating if needed) and migrates the database at `opts.url`.
    pub async fn open(opts: &StoreOptions) -> Result<Store> {
        let url = opts.url.as_str();
        let store = if url.starts_with("sqlite:") {
            Self::open_sqlite(opts).await?
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Self::open_postgres(opts).await?
        } else {
            return Err(connect_error(
                url,
                "unsupported URL scheme; use sqlite://PATH or postgres://USER@HOST:PORT/DB",
            ));
        };
        store.migrate().await?;
        Ok(store)
    }

    async fn open_sqlite(opts: &StoreOptions) -> Result<Store> {
        let url = opts.url.as_str();
        let co = SqliteConnectOptions::from_str(url)
            .map_err(|e| connect_error(url, e))?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            // WAL + NORMAL: a crash of the process loses nothing committed; a power loss may lose
            // the last transactions. PostgreSQL is the choice when that matters.
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(Duration::from_secs(10))
            .foreign_keys(true)
            .pragma("temp_store", "memory")
            .disable_statement_logging();
        if let Some(parent) = co.get_filename().parent() {
            if !parent.as_os_str().is_empty() {
                std::fs::create_dir_all(parent)
                    .map_err(|e| connect_error(url, format!("create {}: {e}", parent.display())))?;
            }
        }
        let write = SqlitePoolOptions::new()
            .max_connections(1)
            .acquire_timeout(opts.acquire_timeout)
            .connect_with(co.clone())
            .await
            .map_err(|e| connect_error(url, e))?;
        let read = SqlitePoolOptions::new()
            .max_connections(opts.max_connections.max(1))
            .acquire_timeout(opts.acquire_timeout)
            .connect_with(co.read_only(true))
            .await
            .map_err(|e| connect_error(url, e))?;
        Ok(Store { pools: Pools::Sqlite { write, read }, kind: crate::BackendKind::Sqlite })
    }

    async fn open_postgres(opts: &StoreOptions) -> Result<Store> {
        let url = opts.url.as_str();
        let co = PgConnectOptions::from_str(url)
            .map_err(|e| connect_error(url, e))?
            .options([("statement_timeout", format!("{}", opts.statement_timeout.as_millis()))])
            .disable_statement_logging();
        ensure_pg_database(&co, url).await?;
        let pool = PgPoolOptions::new()
            .max_connections(opts.max_connections.max(2))
            .acquire_timeout(opts.acquire_timeout)
            .connect_with(co)
            .await
            .map_err(|e| connect_error(url, e))?;
        Ok(Store { pools: Pools::Pg(pool), kind: crate::BackendKind::Postgres })
    }

    pub async fn close(&self) {
        self.pools.close().await;
    }
}

/// Creates the target database when it does not exist yet (SQLSTATE 3D000), via the `postgres`
/// maintenance database on the same server.
async fn ensure_pg_database(co: &PgConnectOptions, url: &str) -> Result<()> {
    match co.connect().await {
        Ok(c) => {
            let _ = c.close().await;
            Ok(())
        }
        Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("3D000") => {
            let name = co.get_database().unwrap_or("postgres").to_owned();
            let mut admin =
                co.clone().database("postgres").connect().await.map_err(|e| connect_error(url, e))?;
            let sql = format!("CREATE DATABASE \"{}\"", name.replace('"', "\"\""));
            match sqlx::query(&sql).execute(&mut admin).await {
                Ok(_) => tracing::info!(database = %name, "created PostgreSQL database"),
                // Another process created it first.
                Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("42P04") => {}
                Err(e) => return Err(connect_error(url, e)),
            }
            let _ = admin.close().await;
            Ok(())
        }
        Err(e) => Err(connect_error(url, e)),
    }
}
