//! Wake-ups across server replicas (PostgreSQL `LISTEN/NOTIFY`): a replica that queued work or
//! finished executions tells the others, so that a worker long-polling on replica B hears about a
//! submission made on replica A at once, and a waiter on B about a completion applied by A. On
//! SQLite there is one server process and these are no-ops.

use uuid::Uuid;

use crate::{backend::Pools, Result, Store};

/// Channel for "work may be waiting".
pub const WORK_CHANNEL: &str = "attune_work";
/// Channel for "these executions changed" (payload: comma-separated ids).
pub const CHANGED_CHANNEL: &str = "attune_changed";

/// Ids per NOTIFY payload (PostgreSQL allows 8000 bytes; an id is 36).
const IDS_PER_NOTIFY: usize = 150;

/// A notification from another replica (or this one).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Notice {
    Work,
    Changed(Vec<Uuid>),
}

impl Store {
    /// Tells every replica that work may be waiting.
    pub async fn notify_work(&self) -> Result<()> {
        if let Pools::Pg(p) = &self.pools {
            sqlx::query("SELECT pg_notify($1, '')").bind(WORK_CHANNEL).execute(p).await?;
        }
        Ok(())
    }

    /// Tells every replica that these executions changed status.
    pub async fn notify_changed(&self, ids: &[Uuid]) -> Result<()> {
        if let Pools::Pg(p) = &self.pools {
            for chunk in ids.chunks(IDS_PER_NOTIFY) {
                let payload = chunk.iter().map(Uuid::to_string).collect::<Vec<_>>().join(",");
                sqlx::query("SELECT pg_notify($1, $2)")
                    .bind(CHANGED_CHANNEL)
                    .bind(payload)
                    .execute(p)
                    .await?;
            }
        }
        Ok(())
    }

    /// A listener on both channels, or `None` on SQLite.
    pub async fn listener(&self) -> Result<Option<Listener>> {
        match &self.pools {
            Pools::Pg(p) => {
                let mut l = sqlx::postgres::PgListener::connect_with(p).await?;
                l.listen_all([WORK_CHANNEL, CHANGED_CHANNEL]).await?;
                Ok(Some(Listener { inner: l }))
            }
            Pools::Sqlite { .. } => Ok(None),
        }
    }
}

pub struct Listener {
    inner: sqlx::postgres::PgListener,
}

impl Listener {
    /// The next notice. After a lost connection it reconnects and returns `Notice::Work`, since
    /// anything may have happened meanwhile.
    pub async fn recv(&mut self) -> Result<Notice> {
        match self.inner.try_recv().await? {
            None => Ok(Notice::Work),
            Some(n) if n.channel() == CHANGED_CHANNEL => {
                Ok(Notice::Changed(n.payload().split(',').filter_map(|s| s.parse().ok()).collect()))
            }
            Some(_) => Ok(Notice::Work),
        }
    }
}
