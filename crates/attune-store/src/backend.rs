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

/// `INDEXED BY index` on SQLite, nothing on PostgreSQL: for the few queries whose SQLite plan,
/// left to itself, walks a large index where a small partial one answers (PostgreSQL's planner
/// finds those itself). The query must repeat the index's condition word for word.
pub(crate) fn indexed_by(kind: crate::BackendKind, index: &str) -> String {
    match kind {
        crate::BackendKind::Sqlite => format!("INDEXED BY {index}"),
        crate::BackendKind::Postgres => String::new(),
    }
}

/// A list of ids as one statement parameter, so that the statement's text is the same whatever
/// the list (prepared once per connection, not once per list): the SQL condition that `col` is in
/// the list passed as `$n`, and the parameter's value. One id is a plain `=` (measured: the list
/// forms cost SQLite and PostgreSQL several times more for a single row); several are a text array
/// on PostgreSQL and a JSON array on SQLite (UUIDs need no quoting in either).
pub(crate) fn in_list(kind: crate::BackendKind, col: &str, n: usize, ids: &[uuid::Uuid]) -> (String, String) {
    if let [one] = ids {
        return (format!("{col} = ${n}"), one.to_string());
    }
    let list = ids.iter().map(|i| i.to_string());
    match kind {
        crate::BackendKind::Postgres => {
            (format!("{col} = ANY(${n}::text[])"), format!("{{{}}}", list.collect::<Vec<_>>().join(",")))
        }
        crate::BackendKind::Sqlite => (
            format!("{col} IN (SELECT value FROM json_each(${n}))"),
            format!("[{}]", list.map(|i| format!("\"{i}\"")).collect::<Vec<_>>().join(",")),
        ),
    }
}
