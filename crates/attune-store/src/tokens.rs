//! API tokens: created with a hash of their secret (the secret itself is never stored), found by
//! that hash, listed, revoked. Whether a token may be used (`TokenInfo::valid_at`) and what its
//! role allows (`attune_core::auth`) is decided by the caller.

use attune_core::{
    auth::{Role, TokenInfo},
    Timestamp,
};
use uuid::Uuid;

use crate::{
    rows::{uuid, RowExt},
    Result, Store, StoreError,
};

/// A token to create. `hash` is the SHA-256 (hex) of its secret.
#[derive(Debug, Clone)]
pub struct NewToken {
    pub name: String,
    pub role: Role,
    pub hash: String,
    pub worker_id: Option<Uuid>,
    pub created_by: Option<String>,
    pub expires_at: Option<Timestamp>,
}

const COLS: &str = "name, role, worker_id, created_at, created_by, expires_at, revoked_at, last_used_at";

fn from_row(r: &impl RowExt) -> Result<TokenInfo> {
    const T: &str = "tokens";
    let role = r.text("role")?;
    Ok(TokenInfo {
        name: r.text("name")?,
        role: Role::parse(&role)
            .ok_or_else(|| StoreError::Corrupt { table: T, message: format!("role {role:?}") })?,
        worker_id: r.opt_text("worker_id")?.map(|w| uuid(T, &w)).transpose()?,
        created_at: Timestamp(r.big("created_at")?),
        created_by: r.opt_text("created_by")?,
        expires_at: r.opt_big("expires_at")?.map(Timestamp),
        revoked_at: r.opt_big("revoked_at")?.map(Timestamp),
        last_used_at: r.opt_big("last_used_at")?.map(Timestamp),
    })
}

/// Whether a database error is a unique-constraint violation (a name in use).
fn is_unique_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(d) if d.is_unique_violation())
}

impl Store {
    /// Creates a token; a name already in use is refused (`AlreadyDone`).
    pub async fn create_token(&self, t: &NewToken, now: Timestamp) -> Result<TokenInfo> {
        let inserted = write_pool!(self, p => {
            sqlx::query(
                "INSERT INTO tokens (id, name, role, hash, worker_id, created_at, created_by, expires_at)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
            )
            .bind(Uuid::now_v7().to_string())
            .bind(&t.name)
            .bind(t.role.as_str())
            .bind(&t.hash)
            .bind(t.worker_id.map(|w| w.to_string()))
            .bind(now.millis())
            .bind(&t.created_by)
            .bind(t.expires_at.map(Timestamp::millis))
            .execute(p)
            .await
            .map(|_| ())
        });
        match inserted {
            Ok(_) => Ok(TokenInfo {
                name: t.name.clone(),
                role: t.role,
                worker_id: t.worker_id,
                created_at: now,
                created_by: t.created_by.clone(),
                expires_at: t.expires_at,
                revoked_at: None,
                last_used_at: None,
            }),
            Err(e) if is_unique_violation(&e) => {
                Err(StoreError::AlreadyDone(format!("a token named {:?} already exists", t.name)))
            }
            Err(e) => Err(e.into()),
        }
    }

    /// The token whose secret hashes to `hash`, revoked or expired ones included.
    pub async fn token_by_hash(&self, hash: &str) -> Result<Option<TokenInfo>> {
        read_pool!(self, p => {
            let row = sqlx::query(&format!("SELECT {COLS} FROM tokens WHERE hash = $1"))
                .bind(hash)
                .fetch_optional(p)
                .await?;
            row.map(|r| from_row(&r)).transpose()
        })
    }

    /// Records that the token was used (callers throttle this).
    pub async fn touch_token(&self, hash: &str, now: Timestamp) -> Result<()> {
        write_pool!(self, p => {
            sqlx::query("UPDATE tokens SET last_used_at = $2 WHERE hash = $1")
                .bind(hash)
                .bind(now.millis())
                .execute(p)
                .await?;
        });
        Ok(())
    }

    /// People's tokens (workers' own credentials with `agents`), newest first; revoked ones with `all`.
    pub async fn list_tokens(&self, all: bool, agents: bool) -> Result<Vec<TokenInfo>> {
        let mut filter = vec!["1 = 1"];
        if !all {
            filter.push("revoked_at IS NULL");
        }
        if !agents {
            filter.push("role <> 'agent'");
        }
        read_pool!(self, p => {
            let rows = sqlx::query(&format!(
                "SELECT {COLS} FROM tokens WHERE {} ORDER BY created_at DESC, id DESC",
                filter.join(" AND ")
            ))
            .fetch_all(p)
            .await?;
            rows.iter().map(from_row).collect()
        })
    }

    /// Revokes the token in use under `name`. Its hash stays, so that it is known as revoked.
    ///
    /// The last usable admin token is not revoked (nobody could administer the platform any
    /// more): `Forbidden`, with what to do instead.
    pub async fn revoke_token(&self, name: &str, now: Timestamp) -> Result<TokenInfo> {
        let row = write_pool!(self, p => {
            sqlx::query(&format!(
                "UPDATE tokens SET revoked_at = $2
                  WHERE name = $1 AND revoked_at IS NULL AND role <> 'agent'
                    AND (role <> 'admin' OR (expires_at IS NOT NULL AND expires_at <= $2) OR EXISTS (
                          SELECT 1 FROM tokens o WHERE o.role = 'admin' AND o.name <> $1
                             AND o.revoked_at IS NULL AND (o.expires_at IS NULL OR o.expires_at > $2)))
                 RETURNING {COLS}"
            ))
            .bind(name)
            .bind(now.millis())
            .fetch_optional(p)
            .await?
            .map(|r| from_row(&r))
            .transpose()?
        });
        if let Some(row) = row {
            return Ok(row);
        }
        let live = self.list_tokens(false, false).await?;
        if live.iter().any(|t| t.name == name && t.role == Role::Admin) {
            return Err(StoreError::Forbidden(format!(
                "{name:?} is the last admin token; create another admin token before revoking it"
            )));
        }
        Err(StoreError::NotFound { what: "token", id: name.to_owned() })
    }

    /// Revokes a worker's own credentials (it deregistered).
    pub async fn revoke_worker_tokens(&self, worker: Uuid, now: Timestamp) -> Result<u64> {
        write_pool!(self, p => {
            Ok(sqlx::query("UPDATE tokens SET revoked_at = $2 WHERE worker_id = $1 AND revoked_at IS NULL")
                .bind(worker.to_string())
                .bind(now.millis())
                .execute(p)
                .await?
                .rows_affected())
        })
    }

    /// Whether a usable token with this role exists.
    pub async fn has_token(&self, role: Role, now: Timestamp) -> Result<bool> {
        read_pool!(self, p => {
            let n: i64 = sqlx::query_scalar(
                "SELECT COUNT(*) FROM tokens WHERE role = $1 AND revoked_at IS NULL
                   AND (expires_at IS NULL OR expires_at > $2)",
            )
            .bind(role.as_str())
            .bind(now.millis())
            .fetch_one(p)
            .await?;
            Ok(n > 0)
        })
    }
}
