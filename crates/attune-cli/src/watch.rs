//! `attune up --watch`: packs under `packs.dirs` are sent to the server again as soon as one of
//! their files changes, so that editing a script and running it again takes well under a second.
//! A reload goes through the API like `attune pack load` (the same checks, the same versions:
//! executions already queued keep the version they were submitted against).

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    time::{Duration, SystemTime},
};

use attune_client::Client;
use tokio_util::sync::CancellationToken;

/// How often the pack directories are looked at.
const EVERY: Duration = Duration::from_millis(250);

/// What a pack directory holds, cheaply: every file's path, size, modification time and mode.
type Fingerprint = Vec<(PathBuf, u64, Option<SystemTime>, u32)>;

fn fingerprint(dir: &Path) -> Fingerprint {
    use std::os::unix::fs::MetadataExt;
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else { continue };
        for e in entries.flatten() {
            let name = e.file_name();
            if attune_pack::archive::EXCLUDED.iter().any(|x| name.to_str() == Some(x)) {
                continue;
            }
            let Ok(m) = std::fs::symlink_metadata(e.path()) else { continue };
            if m.is_dir() {
                stack.push(e.path());
            }
            out.push((e.path(), m.len(), m.modified().ok(), m.mode()));
        }
    }
    out.sort();
    out
}

/// The pack directories under `roots`, by path.
fn packs(roots: &[PathBuf]) -> HashMap<PathBuf, Fingerprint> {
    roots
        .iter()
        .filter_map(|r| attune_pack::discover(r).ok())
        .flatten()
        .map(|d| {
            let f = fingerprint(&d);
            (d, f)
        })
        .collect()
}

/// Watches `roots` until `stop`, reloading each pack whose files change (and loading new ones).
pub async fn watch(client: Client, roots: Vec<PathBuf>, stop: CancellationToken) {
    let mut seen = tokio::task::spawn_blocking({
        let roots = roots.clone();
        move || packs(&roots)
    })
    .await
    .unwrap_or_default();
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(EVERY) => {}
        }
        let now = {
            let roots = roots.clone();
            tokio::task::spawn_blocking(move || packs(&roots)).await.unwrap_or_default()
        };
        for (dir, f) in &now {
            if seen.get(dir) == Some(f) {
                continue;
            }
            reload(&client, dir).await;
        }
        seen = now;
    }
}

async fn reload(client: &Client, dir: &Path) {
    let real = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
    let shown = real.display().to_string();
    let archive = tokio::task::spawn_blocking(move || {
        attune_pack::load_pack_dir(&real).map_err(|e| e.to_string())?;
        attune_pack::archive::build(&real).map_err(|e| e.to_string())
    })
    .await
    .unwrap_or_else(|e| Err(e.to_string()));
    let archive = match archive {
        Ok(a) => a,
        Err(e) => {
            eprintln!("watch: {shown} not reloaded:\n{e}");
            return;
        }
    };
    match client.upload_pack(archive, true, Some(&shown)).await {
        Ok(l) if l.unchanged => {}
        Ok(l) => eprintln!("watch: reloaded pack {} from {shown} (version {})", l.pack_ref, &l.digest[..12]),
        Err(e) => {
            let details = match &e {
                attune_client::ClientError::Api { details, .. } if !details.is_empty() => {
                    format!("\n  {}", details.join("\n  "))
                }
                _ => String::new(),
            };
            eprintln!("watch: {shown} not reloaded: {e}{details}");
        }
    }
}
