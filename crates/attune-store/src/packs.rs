//! Packs and actions: loaded as one upsert per pack, keyed by `ref`.

use attune_core::{Action, ActionRef, PackMeta, PackRef, PackSummary, Timestamp};

use crate::{
    rows::{json, to_json, RowExt},
    Result, Store,
};

impl Store {
    /// Replaces the pack `meta.pack_ref` and its actions in one transaction: actions no longer in
    /// the pack are removed, the others inserted or updated. Executions keep their own snapshot.
    pub async fn upsert_pack(&self, meta: &PackMeta, actions: &[Action], now: Timestamp) -> Result<()> {
        write_pool!(self, p => {
            let mut tx = p.begin().await?;
            sqlx::query(
                "INSERT INTO packs (ref, label, description, version, dir, loaded_at) VALUES ($1, $2, $3, $4, $5, $6)
                 ON CONFLICT (ref) DO UPDATE SET label = excluded.label, description = excluded.description,
                 version = excluded.version, dir = excluded.dir, loaded_at = excluded.loaded_at",
            )
            .bind(meta.pack_ref.as_str())
            .bind(&meta.label)
            .bind(&meta.description)
            .bind(&meta.version)
            .bind(&meta.dir)
            .bind(now.millis())
            .execute(&mut *tx)
            .await?;
            sqlx::query("DELETE FROM actions WHERE pack_ref = $1")
                .bind(meta.pack_ref.as_str())
                .execute(&mut *tx)
                .await?;
            for a in actions {
                sqlx::query(
                    "INSERT INTO actions (ref, pack_ref, runtime, definition, updated_at) VALUES ($1, $2, $3, $4, $5)",
                )
                .bind(a.action_ref.as_str())
                .bind(meta.pack_ref.as_str())
                .bind(a.runtime.as_str())
                .bind(to_json(a))
                .bind(now.millis())
                .execute(&mut *tx)
                .await?;
            }
            tx.commit().await?;
        });
        Ok(())
    }

    pub async fn list_packs(&self) -> Result<Vec<PackSummary>> {
        read_pool!(self, p => {
            let rows = sqlx::query(
                "SELECT p.ref, p.label, p.description, p.version, p.dir, p.loaded_at,
                        (SELECT COUNT(*) FROM actions a WHERE a.pack_ref = p.ref) AS actions
                 FROM packs p ORDER BY p.ref",
            )
            .fetch_all(p)
            .await?;
            rows.iter()
                .map(|r| {
                    Ok(PackSummary {
                        meta: PackMeta {
                            pack_ref: PackRef::parse(&r.text("ref")?).map_err(|e| crate::StoreError::Corrupt {
                                table: "packs",
                                message: e.to_string(),
                            })?,
                            label: r.text("label")?,
                            description: r.text("description")?,
                            version: r.text("version")?,
                            dir: r.opt_text("dir")?,
                        },
                        actions: r.big("actions")? as u32,
                        loaded_at: Timestamp(r.big("loaded_at")?),
                    })
                })
                .collect()
        })
    }

    pub async fn list_actions(&self, pack: Option<&PackRef>) -> Result<Vec<Action>> {
        read_pool!(self, p => {
            let rows = match pack {
                Some(pack) => sqlx::query("SELECT definition FROM actions WHERE pack_ref = $1 ORDER BY ref")
                    .bind(pack.as_str())
                    .fetch_all(p)
                    .await?,
                None => sqlx::query("SELECT definition FROM actions ORDER BY ref").fetch_all(p).await?,
            };
            rows.iter().map(|r| json("actions", "definition", &r.text("definition")?)).collect()
        })
    }

    pub async fn get_action(&self, r: &ActionRef) -> Result<Option<Action>> {
        read_pool!(self, p => {
            let row = sqlx::query("SELECT definition FROM actions WHERE ref = $1")
                .bind(r.as_str())
                .fetch_optional(p)
                .await?;
            row.map(|r| json("actions", "definition", &r.text("definition")?)).transpose()
        })
    }
}
