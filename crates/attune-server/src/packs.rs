//! Packs as content. Whatever a pack comes from — a directory of the server's own (`packs.dirs`,
//! at start-up or at a client's request) or an archive a client uploads (`attune pack load`) —
//! it becomes one archive, unpacked into a staging directory (every entry checked), read and
//! checked there, archived again in the canonical form and stored by that archive's sha256. So
//! what is stored is exactly what was checked, identical content always has the same digest, and
//! workers fetch a version by digest instead of needing the server's directories.

use std::path::{Path, PathBuf};

use attune_core::Timestamp;
use attune_pack::{archive, discover, LoadedPack};
use attune_store::{PackReplaced, Store};

/// The archive limits for `packs.max_archive_bytes`: a pack may unpack to 8 times that.
pub fn limits(max_archive_bytes: u64) -> archive::Limits {
    archive::Limits {
        max_archive_bytes,
        max_unpacked_bytes: max_archive_bytes.saturating_mul(8),
        ..archive::Limits::default()
    }
}

/// A pack read from its archive: what the store keeps, and the canonical archive it came from.
pub struct Staged {
    pub pack: LoadedPack,
    pub archive: Vec<u8>,
}

/// Why a pack was not staged.
#[derive(Debug)]
pub enum StageError {
    /// The archive itself: a path, a link, a size (the message names the entry).
    Archive(String),
    /// The pack's files, one problem per line, with paths relative to `shown`.
    Pack(Vec<String>),
    /// The server's own trouble (a staging directory it cannot write).
    Internal(String),
}

impl std::fmt::Display for StageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StageError::Archive(m) | StageError::Internal(m) => f.write_str(m),
            StageError::Pack(lines) => f.write_str(&lines.join("\n")),
        }
    }
}

/// Unpacks `bytes` into a staging directory, reads the pack there and archives it again
/// canonically; the pack is stamped with that archive's digest and with `source` as where it
/// came from. Problems are reported with the staging directory shown as `shown` (the pack's own
/// directory, or `<archive>`). Blocking: call it from `spawn_blocking`.
pub fn stage(
    bytes: &[u8],
    limits: &archive::Limits,
    source: Option<String>,
    shown: &str,
) -> Result<Staged, StageError> {
    let tmp = tempfile::Builder::new()
        .prefix("attune-pack-")
        .tempdir()
        .map_err(|e| StageError::Internal(format!("cannot create a staging directory: {e}")))?;
    let dir = tmp.path().join("pack");
    archive::unpack(bytes, &dir, limits).map_err(|e| StageError::Archive(e.to_string()))?;
    let hide = |line: String| {
        let mut line = line;
        for p in [dir.clone(), std::fs::canonicalize(&dir).unwrap_or_else(|_| dir.clone())] {
            line = line.replace(&p.display().to_string(), shown);
        }
        line
    };
    let mut pack = attune_pack::load_pack_dir(&dir)
        .map_err(|e| StageError::Pack(e.0.iter().map(|e| hide(e.to_string())).collect()))?;
    let canonical = archive::build(&dir).map_err(|e| StageError::Internal(hide(e.to_string())))?;
    let digest = archive::digest(&canonical);
    pack.stamp(&digest, source);
    for n in &mut pack.meta.notes {
        n.file = hide(std::mem::take(&mut n.file));
    }
    Ok(Staged { pack, archive: canonical })
}

/// The pack in directory `dir` (of this machine), staged like an uploaded one.
pub fn stage_dir(dir: &Path, limits: &archive::Limits) -> Result<Staged, StageError> {
    let real = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
    let shown = real.display().to_string();
    if !real.join("pack.yaml").is_file() {
        return Err(StageError::Pack(vec![format!(
            "{shown}/pack.yaml: not found: a pack directory needs a pack.yaml with at least `ref`"
        )]));
    }
    let bytes = archive::build(&real).map_err(|e| StageError::Archive(format!("{shown}: {e}")))?;
    if bytes.len() as u64 > limits.max_archive_bytes {
        return Err(StageError::Archive(format!(
            "{shown}: the pack's archive is {} bytes; packs.max_archive_bytes is {}",
            bytes.len(),
            limits.max_archive_bytes
        )));
    }
    stage(&bytes, limits, Some(shown.clone()), &shown)
}

/// Loads each pack under each directory in `dirs`; a broken pack is reported and skipped, the
/// others still load. These are the operator's own directories, so a pack's files are the truth:
/// actions gone from them are removed and a pack found in another directory than before is taken
/// over — each said in the log. Returns the refs loaded and the problems found.
pub async fn load_dirs(
    store: &Store,
    dirs: &[impl AsRef<Path>],
    limits: &archive::Limits,
) -> (Vec<String>, Vec<String>) {
    let mut loaded = Vec::new();
    let mut problems = Vec::new();
    for root in dirs {
        let root = root.as_ref();
        let packs = match discover(root) {
            Ok(p) => p,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                problems.push(format!("pack directory {} does not exist", root.display()));
                continue;
            }
            Err(e) => {
                problems.push(format!("cannot read pack directory {}: {e}", root.display()));
                continue;
            }
        };
        for dir in packs {
            let staged = {
                let (dir, limits) = (dir.clone(), *limits);
                tokio::task::spawn_blocking(move || stage_dir(&dir, &limits))
                    .await
                    .unwrap_or_else(|e| Err(StageError::Internal(format!("pack staging stopped: {e}"))))
            };
            match staged {
                Ok(Staged { pack: p, archive }) => match check_rules(store, &p).await {
                    Err(e) => problems.push(format!("{}: {e}", dir.display())),
                    Ok(()) => {
                        match store.load_pack(&p.meta, content(&p, &archive), true, Timestamp::now()).await {
                            Ok(change) => {
                                say_replaced(p.meta.pack_ref.as_str(), &change);
                                let rules = if p.rules.is_empty() {
                                    String::new()
                                } else {
                                    format!(", {} rules", p.rules.len())
                                };
                                let notes = match p.meta.notes.len() {
                                    0 => String::new(),
                                    n => format!(", {n} notes: attune pack show {}", p.meta.pack_ref),
                                };
                                loaded.push(format!(
                                    "{} ({} actions{rules}{notes})",
                                    p.meta.pack_ref,
                                    p.actions.len()
                                ));
                            }
                            Err(e) => problems.push(format!("{}: {e}", dir.display())),
                        }
                    }
                },
                Err(e) => problems.push(e.to_string()),
            }
        }
    }
    (loaded, problems)
}

/// What only the server can check of a pack's rules: a trigger type of another pack must be loaded
/// already, and the rule's trigger parameters must fit it.
pub(crate) async fn check_rules(store: &Store, p: &attune_pack::LoadedPack) -> Result<(), String> {
    let mut stored = None;
    let mut problems = Vec::new();
    for r in &p.rules {
        let t = &r.trigger.type_ref;
        if t.pack() == p.meta.pack_ref || t.pack().as_str() == "core" {
            continue; // checked by the loader
        }
        if stored.is_none() {
            stored = Some(store.list_trigger_types().await.map_err(|e| e.to_string())?);
        }
        let Some(tt) = stored.as_ref().and_then(|all| all.iter().find(|x| x.type_ref == *t)) else {
            problems.push(format!(
                "rule {}: trigger type {t} is not loaded (load pack {} first)",
                r.rule_ref,
                t.pack()
            ));
            continue;
        };
        match attune_pack::ParamValidator::compile(&tt.parameters).map(|v| v.validate(&r.trigger.parameters))
        {
            Ok(Err(details)) => {
                problems.push(format!("rule {}: trigger.parameters: {}", r.rule_ref, details.join("; ")))
            }
            Err(e) => problems.push(format!("rule {}: trigger type {t}'s parameter schema {e}", r.rule_ref)),
            Ok(Ok(())) => {}
        }
    }
    for s in &p.sensors {
        for t in s.trigger_types.iter().filter(|t| t.pack() != p.meta.pack_ref) {
            if stored.is_none() {
                stored = Some(store.list_trigger_types().await.map_err(|e| e.to_string())?);
            }
            if !stored.as_ref().is_some_and(|all| all.iter().any(|x| x.type_ref == *t)) {
                problems.push(format!(
                    "sensor {}: trigger type {t} is not loaded (load pack {} first)",
                    s.sensor_ref,
                    t.pack()
                ));
            }
        }
    }
    // A workflow's tasks may name actions of other packs: those must be loaded.
    let mut actions = None;
    for a in p.actions.iter().filter(|a| a.workflow.is_some()) {
        let Some(def) =
            a.workflow.clone().and_then(|w| serde_json::from_value::<attune_workflow::Definition>(w).ok())
        else {
            continue;
        };
        for (task, target) in def.actions() {
            let pack = target.split('.').next();
            if pack == Some(p.meta.pack_ref.as_str()) || pack == Some("core") {
                continue; // checked by the loader; core ships with every server
            }
            if actions.is_none() {
                actions = Some(store.list_actions(None).await.map_err(|e| e.to_string())?);
            }
            if !actions.as_ref().is_some_and(|all| all.iter().any(|x| x.action_ref.as_str() == target)) {
                problems.push(format!(
                    "workflow {} ({}): task {task}: action {target} is not loaded",
                    a.action_ref, a.entry_point
                ));
            }
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems.join("\n"))
    }
}

/// What the store keeps of a loaded pack besides its manifest.
pub(crate) fn content<'a>(p: &'a LoadedPack, archive: &'a [u8]) -> attune_store::PackContent<'a> {
    attune_store::PackContent {
        actions: &p.actions,
        triggers: &p.triggers,
        rules: &p.rules,
        sensors: &p.sensors,
        archive: Some(archive),
    }
}

/// Logs what a load replaced (it is never silent).
pub(crate) fn say_replaced(pack: &str, change: &PackReplaced) {
    if let Some(d) = &change.previous_dir {
        tracing::warn!(pack, previous_dir = %d, "pack taken over from another directory");
    }
    if !change.removed.is_empty() {
        tracing::warn!(pack, removed = %change.removed.join(", "), "pack actions removed");
    }
}

/// The pack directory a client asked for: `name` as a directory directly under one of `roots`,
/// or a path that lies under one of them once every symlink is followed. Anything else is refused
/// without saying whether it exists.
pub fn resolve_requested(roots: &[PathBuf], name: &str) -> Result<PathBuf, String> {
    let roots: Vec<PathBuf> = roots.iter().filter_map(|r| std::fs::canonicalize(r).ok()).collect();
    let listed = || roots.iter().map(|r| r.display().to_string()).collect::<Vec<_>>().join(", ");
    let outside = || {
        format!(
            "{name:?} is not a pack directory under the server's packs.dirs ({}); the server loads \
             only packs it already has: put the pack there first",
            listed()
        )
    };
    let path = Path::new(name);
    let candidates: Vec<PathBuf> = if path.is_absolute() {
        // Refused before the filesystem is asked anything, unless it is under a root as written.
        if !roots.iter().any(|r| path.starts_with(r)) {
            return Err(outside());
        }
        vec![path.to_path_buf()]
    } else {
        if path.components().any(|c| !matches!(c, std::path::Component::Normal(_))) {
            return Err(format!("{name:?}: a relative pack directory may not contain `..` or `.`"));
        }
        roots.iter().map(|r| r.join(path)).collect()
    };
    for c in candidates {
        let Ok(real) = std::fs::canonicalize(&c) else { continue };
        if roots.iter().any(|r| real.starts_with(r) && real != *r) && real.join("pack.yaml").is_file() {
            return Ok(real);
        }
    }
    Err(outside())
}
