//! Packs from the server's own directories (`packs.dirs`): all of them at start-up, and one at a
//! client's request (`POST /api/v1/packs`), which may only name a directory under them. The server
//! always reads and checks the files itself.

use std::path::{Path, PathBuf};

use attune_core::Timestamp;
use attune_pack::{discover, load_pack_dir};
use attune_store::{PackReplaced, Store};

/// Loads each pack under each directory in `dirs`; a broken pack is reported and skipped, the
/// others still load. These are the operator's own directories, so a pack's files are the truth:
/// actions gone from them are removed and a pack found in another directory than before is taken
/// over — each said in the log. Returns the refs loaded and the problems found.
pub async fn load_dirs(store: &Store, dirs: &[impl AsRef<Path>]) -> (Vec<String>, Vec<String>) {
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
            match load_pack_dir(&dir) {
                Ok(p) => match check_rules(store, &p).await {
                    Err(e) => problems.push(format!("{}: {e}", dir.display())),
                    Ok(()) => match store.load_pack(&p.meta, content(&p), true, Timestamp::now()).await {
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
                    },
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
pub(crate) fn content(p: &attune_pack::LoadedPack) -> attune_store::PackContent<'_> {
    attune_store::PackContent {
        actions: &p.actions,
        triggers: &p.triggers,
        rules: &p.rules,
        sensors: &p.sensors,
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
