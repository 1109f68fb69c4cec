//! Packs, their actions, trigger types and rules: loaded as one transaction per pack, keyed by `ref`.

use attune_core::{Action, ActionRef, PackMeta, PackRef, PackSummary, PackVersion, Timestamp};

use crate::{
    rows::{json, to_json, RowExt},
    Result, Store,
};

/// What a load did beyond adding and updating: the directory the pack was loaded from before (when
/// it was another one) and the actions it no longer has.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PackReplaced {
    pub previous_dir: Option<String>,
    pub removed: Vec<String>,
    /// The load found the same content (archive digest) from the same place already loaded, and
    /// changed nothing.
    pub unchanged: bool,
}

impl PackReplaced {
    pub fn is_empty(&self) -> bool {
        self.previous_dir.is_none() && self.removed.is_empty()
    }
}

/// What a pack defines besides its manifest; all of it is replaced with each load.
#[derive(Debug, Clone, Copy, Default)]
pub struct PackContent<'a> {
    pub actions: &'a [Action],
    pub triggers: &'a [attune_core::rules::TriggerType],
    pub rules: &'a [attune_core::rules::Rule],
    pub sensors: &'a [attune_core::sensors::Sensor],
    /// The pack's archive (`meta.digest` is its sha256), stored as a new version unless the same
    /// digest is stored already.
    pub archive: Option<&'a [u8]>,
}

impl Store {
    /// Loads the pack `meta.pack_ref` and its actions in one transaction. Actions are inserted or
    /// updated. Removing actions the pack had, or taking the pack over from another directory,
    /// happens only with `replace`; without it such a load changes nothing and is a `Conflict`
    /// that says what it would have done. Executions keep their own snapshot of their action.
    pub async fn load_pack(
        &self,
        meta: &PackMeta,
        content: PackContent<'_>,
        replace: bool,
        now: Timestamp,
    ) -> Result<PackReplaced> {
        let PackContent { actions, triggers, rules, sensors, archive } = content;
        let lock = match self.kind {
            crate::BackendKind::Postgres => " FOR UPDATE",
            crate::BackendKind::Sqlite => "",
        };
        write_pool!(self, p => {
            let mut tx = p.begin().await?;
            let before: Option<(Option<String>, Option<String>)> =
                sqlx::query_as(&format!("SELECT dir, digest FROM packs WHERE ref = $1{lock}"))
                    .bind(meta.pack_ref.as_str())
                    .fetch_optional(&mut *tx)
                    .await?;
            let (before, before_digest) = match before {
                Some((dir, digest)) => (Some(dir), digest),
                None => (None, None),
            };
            if meta.digest.is_some() && before_digest == meta.digest && before.as_ref() == Some(&meta.dir) {
                return Ok(PackReplaced { unchanged: true, ..PackReplaced::default() });
            }
            let had: Vec<String> = sqlx::query_scalar("SELECT ref FROM actions WHERE pack_ref = $1 ORDER BY ref")
                .bind(meta.pack_ref.as_str())
                .fetch_all(&mut *tx)
                .await?;
            let change = PackReplaced {
                previous_dir: before.flatten().filter(|d| Some(d) != meta.dir.as_ref()),
                removed: had.into_iter().filter(|r| !actions.iter().any(|a| a.action_ref.as_str() == r)).collect(),
                unchanged: false,
            };
            if !replace && !change.is_empty() {
                let pack = &meta.pack_ref;
                let mut why = Vec::new();
                if let Some(d) = &change.previous_dir {
                    let new = meta.dir.as_deref().unwrap_or("nowhere");
                    why.push(format!("take pack {pack} over from {d} (this load is from {new})"));
                }
                if !change.removed.is_empty() {
                    why.push(format!("remove its actions {}", change.removed.join(", ")));
                }
                return Err(crate::StoreError::Conflict {
                    code: "pack_conflict",
                    message: format!(
                        "this load would {}; nothing was changed. Replacing a pack is explicit: \
                         `attune pack load --replace` (an admin's request with \"replace\": true)",
                        why.join(" and ")
                    ),
                });
            }
            sqlx::query(
                "INSERT INTO packs (ref, label, description, version, dir, loaded_at, extra, digest) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)
                 ON CONFLICT (ref) DO UPDATE SET label = excluded.label, description = excluded.description,
                 version = excluded.version, dir = excluded.dir, loaded_at = excluded.loaded_at, extra = excluded.extra,
                 digest = excluded.digest",
            )
            .bind(meta.pack_ref.as_str())
            .bind(&meta.label)
            .bind(&meta.description)
            .bind(&meta.version)
            .bind(&meta.dir)
            .bind(now.millis())
            .bind(to_json(&Extra { config: meta.config.clone(), conf_schema: meta.conf_schema.clone(), notes: meta.notes.clone() }))
            .bind(&meta.digest)
            .execute(&mut *tx)
            .await?;
            if let (Some(digest), Some(bytes)) = (&meta.digest, archive) {
                sqlx::query(
                    "INSERT INTO pack_archives (digest, pack_ref, size, archive, created_at) VALUES ($1, $2, $3, $4, $5)
                     ON CONFLICT (digest) DO NOTHING",
                )
                .bind(digest)
                .bind(meta.pack_ref.as_str())
                .bind(bytes.len() as i64)
                .bind(bytes)
                .bind(now.millis())
                .execute(&mut *tx)
                .await?;
            }
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
            crate::rules::replace_pack_rules!(tx, &meta.pack_ref, triggers, rules, now);
            crate::sensors::replace_pack_sensors!(tx, &meta.pack_ref, sensors, now);
            tx.commit().await?;
            Ok(change)
        })
    }

    pub async fn list_packs(&self) -> Result<Vec<PackSummary>> {
        read_pool!(self, p => {
            let rows = sqlx::query(
                "SELECT p.ref, p.label, p.description, p.version, p.dir, p.loaded_at, p.extra, p.digest,
                        (SELECT COUNT(*) FROM actions a WHERE a.pack_ref = p.ref) AS actions,
                        (SELECT v.size FROM pack_archives v WHERE v.digest = p.digest) AS size
                 FROM packs p ORDER BY p.ref",
            )
            .fetch_all(p)
            .await?;
            rows.iter()
                .map(|r| {
                    let extra: Extra = match r.opt_text("extra")? {
                        Some(t) => crate::rows::json("packs", "extra", &t)?,
                        None => Extra::default(),
                    };
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
                            config: extra.config,
                            conf_schema: extra.conf_schema,
                            notes: extra.notes,
                            digest: r.opt_text("digest")?,
                        },
                        actions: r.big("actions")? as u32,
                        loaded_at: Timestamp(r.big("loaded_at")?),
                        size: r.opt_big("size")?.map(|s| s as u64),
                    })
                })
                .collect()
        })
    }

    /// The stored versions of a pack, newest first.
    pub async fn list_pack_versions(&self, pack: &PackRef) -> Result<Vec<PackVersion>> {
        read_pool!(self, p => {
            let rows = sqlx::query(
                "SELECT v.digest, v.size, v.created_at, (v.digest = p.digest) AS current
                 FROM pack_archives v LEFT JOIN packs p ON p.ref = v.pack_ref
                 WHERE v.pack_ref = $1 ORDER BY v.created_at DESC, v.digest",
            )
            .bind(pack.as_str())
            .fetch_all(p)
            .await?;
            rows.iter()
                .map(|r| {
                    Ok(PackVersion {
                        digest: r.text("digest")?,
                        size: r.big("size")? as u64,
                        stored_at: Timestamp(r.big("created_at")?),
                        current: r.opt_bool("current")?.unwrap_or(false),
                    })
                })
                .collect()
        })
    }

    /// The archive stored under `digest`, with the pack it belongs to.
    pub async fn get_pack_archive(&self, digest: &str) -> Result<Option<(String, Vec<u8>)>> {
        read_pool!(self, p => {
            let row: Option<(String, Vec<u8>)> =
                sqlx::query_as("SELECT pack_ref, archive FROM pack_archives WHERE digest = $1")
                    .bind(digest)
                    .fetch_optional(p)
                    .await?;
            Ok(row)
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

/// The `extra` column of `packs`.
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
struct Extra {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    config: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    conf_schema: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    notes: Vec<attune_core::PackNote>,
}
