//! Loading every pack under the configured directories at start-up (and for `attune pack load`,
//! which reads a directory itself and uploads it through the API).

use std::path::Path;

use attune_core::Timestamp;
use attune_pack::{discover, load_pack_dir};
use attune_store::Store;

/// Loads each pack under each directory in `dirs`; a broken pack is reported and skipped, the
/// others still load. Returns the refs loaded and the problems found.
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
                Ok(p) => match store.upsert_pack(&p.meta, &p.actions, Timestamp::now()).await {
                    Ok(()) => loaded.push(format!("{} ({} actions)", p.meta.pack_ref, p.actions.len())),
                    Err(e) => problems.push(format!("{}: {e}", dir.display())),
                },
                Err(e) => problems.push(e.to_string()),
            }
        }
    }
    (loaded, problems)
}
