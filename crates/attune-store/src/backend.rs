//! The two connection pools and the macros that run one SQL body against either.
//! SQLite gets a single-connection writer pool (SQLite allows one writer; serialising in-process
//! avoids `SQLITE_BUSY` on lock upgrades) and a pool of readers. PostgreSQL uses one pool for both.

use sqlx::{PgPool, SqlitePool};

pub(crate) enum Pools {
    Sqlite { write: SqlitePool, read: SqlitePool },
    Pg(PgPool),
}

/// Runs `$body` with `$p` bound to the pool that accepts writes.
macro_rules! write_pool {
    ($store:expr, $p:ident => $body:expr) => {
        match &$store.pools {
            $crate::backend::Pools::Sqlite { write: $p, .. } => $body,
            $crate::backend::Pools::Pg($p) => $body,
        }
    };
}

/// Runs `$body` with `$p` bound to a pool for reads.
macro_rules! read_pool {
    ($store:expr, $p:ident => $body:expr) => {
        match &$store.pools {
            $crate::backend::Pools::Sqlite { read: $p, .. } => $body,
            $crate::backend::Pools::Pg($p) => $body,
        }
    };
}

impl Pools {
    pub(crate) async fn close(&self) {
        match self {
            Pools::Sqlite { write, read } => {
                write.close().await;
                read.close().await;
            }
            Pools::Pg(p) => p.close().await,
        }
    }
}
