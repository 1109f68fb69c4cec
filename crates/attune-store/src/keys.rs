//! The key store's rows. Secret values arrive here already encrypted (the server holds the master
//! key); the store keeps and returns opaque ciphertext with the fingerprint of the key it was made
//! under.

use attune_core::{keys::KeyInfo, Timestamp};

use crate::{rows::RowExt, Result, Store, StoreError};

/// A key's stored value: in the clear, or sealed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyValue {
    Plain(String),
    /// base64 of nonce and AEAD output, and the fingerprint of the master key used.
    Sealed {
        ciphertext: String,
        key_id: String,
    },
}

/// A key with its stored value.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredKey {
    pub info: KeyInfo,
    pub value: KeyValue,
}

const COLS: &str = "scope, name, secret, value, ciphertext, key_id, created_at, updated_at, updated_by";

fn scope(pack: Option<&str>) -> &str {
    pack.unwrap_or("")
}

fn from_row(r: &impl RowExt) -> Result<StoredKey> {
    let corrupt = |m: &str| StoreError::Corrupt { table: "keys", message: m.to_owned() };
    let secret = r.boolean("secret")?;
    let scope = r.text("scope")?;
    let value = if secret {
        KeyValue::Sealed {
            ciphertext: r.opt_text("ciphertext")?.ok_or_else(|| corrupt("a secret without ciphertext"))?,
            key_id: r.opt_text("key_id")?.ok_or_else(|| corrupt("a secret without key_id"))?,
        }
    } else {
        KeyValue::Plain(r.opt_text("value")?.ok_or_else(|| corrupt("a plain key without value"))?)
    };
    Ok(StoredKey {
        info: KeyInfo {
            name: r.text("name")?,
            pack: (!scope.is_empty()).then_some(scope),
            secret,
            value: match &value {
                KeyValue::Plain(v) => Some(v.clone()),
                KeyValue::Sealed { .. } => None,
            },
            created_at: Timestamp(r.big("created_at")?),
            updated_at: Timestamp(r.big("updated_at")?),
            updated_by: r.opt_text("updated_by")?,
        },
        value,
    })
}

impl Store {
    /// Sets a key (creating or replacing it).
    pub async fn put_key(
        &self,
        pack: Option<&str>,
        name: &str,
        value: &KeyValue,
        actor: &str,
        now: Timestamp,
    ) -> Result<KeyInfo> {
        let (secret, plain, sealed, key_id) = match value {
            KeyValue::Plain(v) => (false, Some(v.as_str()), None, None),
            KeyValue::Sealed { ciphertext, key_id } => {
                (true, None, Some(ciphertext.as_str()), Some(key_id.as_str()))
            }
        };
        let row = write_pool!(self, p => {
            sqlx::query(&format!(
                "INSERT INTO keys ({COLS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $7, $8)
                 ON CONFLICT (scope, name) DO UPDATE SET secret = excluded.secret, value = excluded.value,
                   ciphertext = excluded.ciphertext, key_id = excluded.key_id,
                   updated_at = excluded.updated_at, updated_by = excluded.updated_by
                 RETURNING {COLS}"
            ))
            .bind(scope(pack))
            .bind(name)
            .bind(secret)
            .bind(plain)
            .bind(sealed)
            .bind(key_id)
            .bind(now.millis())
            .bind(actor)
            .fetch_one(p)
            .await
            .map(|r| from_row(&r))?
        });
        Ok(row?.info)
    }

    pub async fn get_key(&self, pack: Option<&str>, name: &str) -> Result<Option<StoredKey>> {
        read_pool!(self, p => {
            sqlx::query(&format!("SELECT {COLS} FROM keys WHERE scope = $1 AND name = $2"))
                .bind(scope(pack))
                .bind(name)
                .fetch_optional(p)
                .await?
                .map(|r| from_row(&r))
                .transpose()
        })
    }

    /// Keys, global ones first, by name; only `pack`'s (and the global ones) when given.
    pub async fn list_keys(&self, pack: Option<&str>) -> Result<Vec<KeyInfo>> {
        read_pool!(self, p => {
            let rows = sqlx::query(&format!(
                "SELECT {COLS} FROM keys WHERE $1 = '' OR scope IN ('', $1) ORDER BY scope, name"
            ))
            .bind(scope(pack))
            .fetch_all(p)
            .await?;
            rows.iter().map(|r| from_row(r).map(|k| k.info)).collect()
        })
    }

    /// The keys named `names` as an execution of `pack` sees them: the pack's own key where there
    /// is one, else the global one.
    pub async fn keys_for(&self, pack: &str, names: &[String]) -> Result<Vec<StoredKey>> {
        let mut out: Vec<StoredKey> = Vec::new();
        for name in names {
            let own = self.get_key(Some(pack), name).await?;
            let found = match own {
                Some(k) => Some(k),
                None => self.get_key(None, name).await?,
            };
            out.extend(found);
        }
        Ok(out)
    }

    pub async fn delete_key(&self, pack: Option<&str>, name: &str) -> Result<KeyInfo> {
        let row = write_pool!(self, p => {
            sqlx::query(&format!("DELETE FROM keys WHERE scope = $1 AND name = $2 RETURNING {COLS}"))
                .bind(scope(pack))
                .bind(name)
                .fetch_optional(p)
                .await?
                .map(|r| from_row(&r))
                .transpose()?
        });
        let what = match pack {
            Some(p) => format!("{name} (pack {p})"),
            None => name.to_owned(),
        };
        row.map(|k| k.info).ok_or(StoreError::NotFound { what: "key", id: what })
    }

    /// Every secret key's sealed value: (pack, name, ciphertext, key id).
    pub async fn sealed_keys(&self) -> Result<Vec<StoredKey>> {
        read_pool!(self, p => {
            let rows = sqlx::query(&format!("SELECT {COLS} FROM keys WHERE secret ORDER BY scope, name"))
                .fetch_all(p)
                .await?;
            rows.iter().map(from_row).collect()
        })
    }

    /// Replaces sealed values in one transaction (a master key rotation): each row only if it is
    /// still sealed as `old` says, so a key set meanwhile is not overwritten. Returns how many.
    pub async fn reseal_keys(&self, changes: &[(StoredKey, KeyValue)]) -> Result<u64> {
        write_pool!(self, p => {
            let mut tx = p.begin().await?;
            let mut n = 0;
            for (old, new) in changes {
                let (KeyValue::Sealed { ciphertext: old_ct, .. }, KeyValue::Sealed { ciphertext, key_id }) =
                    (&old.value, new)
                else {
                    continue;
                };
                n += sqlx::query(
                    "UPDATE keys SET ciphertext = $3, key_id = $4 WHERE scope = $1 AND name = $2 AND ciphertext = $5",
                )
                .bind(scope(old.info.pack.as_deref()))
                .bind(&old.info.name)
                .bind(ciphertext)
                .bind(key_id)
                .bind(old_ct)
                .execute(&mut *tx)
                .await?
                .rows_affected();
            }
            tx.commit().await?;
            Ok(n)
        })
    }
}
