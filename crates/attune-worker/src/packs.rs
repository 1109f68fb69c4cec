//! Pack versions on this worker: fetched from the server by digest the first time something of
//! that version runs, checked against the digest, unpacked and given its dependencies in a
//! staging directory, then moved into place with one rename, so a version directory is either
//! complete or absent. No shared filesystem: the worker needs no pack directory of its own.
//!
//! Layout under `<data_dir>/packs/<pack>/`:
//! - `<digest>/` — the pack's files, with `.venv/` (from `requirements.txt`) and `node_modules/`
//!   (from `package.json`) when it has them; shared by every task and sensor of that version.
//! - `<digest>.failed` — why installing its dependencies failed: later runs of that version fail
//!   at once with the same message instead of installing again and again; a changed pack is a
//!   new digest and is tried afresh (delete the file to try the same version again).
//! - `.tmp-*`, `.download-*` — work in progress of this process.
//!
//! Old versions are removed once newer ones are in use, keeping the `KEEP` most recently used
//! and never one a running task or sensor holds.

use std::{
    collections::HashMap,
    io::Write,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::Duration,
};

use attune_client::Client;
use attune_pack::archive;
use uuid::Uuid;

/// Versions of a pack kept besides the ones in use.
const KEEP: usize = 2;
/// How long installing one pack version's dependencies may take.
const INSTALL_TIMEOUT: Duration = Duration::from_secs(900);
/// How much of an installer's output a failure keeps.
const INSTALL_OUTPUT_TAIL: usize = 4000;

/// Where the server's pack versions are kept on this worker, and how to fetch them.
#[derive(Clone)]
pub struct PackSource {
    pub cache: Arc<PackCache>,
    pub client: Client,
    pub worker: Uuid,
}

impl std::fmt::Debug for PackSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PackSource({}, via {})", self.cache.root.display(), self.client.base_url())
    }
}

impl PackSource {
    /// The directory of pack `pack`'s version `digest`, ready to run.
    pub async fn prepare(&self, pack: &str, digest: &str) -> Result<Prepared, Unavailable> {
        self.cache.prepare(&self.client, self.worker, pack, digest).await
    }
}

pub struct PackCache {
    root: PathBuf,
    /// One preparation of a version at a time; the others wait for it and use its result.
    preparing: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Versions held by running tasks and sensors (never removed), by digest.
    in_use: Mutex<HashMap<String, usize>>,
}

/// Why a pack version cannot run here.
#[derive(Debug)]
pub struct Unavailable {
    /// `pack_unavailable` (fetching or unpacking failed) or `pack_dependencies_failed`.
    pub code: &'static str,
    pub message: String,
}

impl Unavailable {
    fn fetch(message: String) -> Self {
        Unavailable { code: "pack_unavailable", message }
    }
    fn dependencies(message: String) -> Self {
        Unavailable { code: "pack_dependencies_failed", message }
    }
}

/// A pack version ready to run, held (kept from removal) while this lives.
pub struct Prepared {
    pub dir: PathBuf,
    _held: Held,
}

impl Prepared {
    /// The pack's own Python (`.venv`, from its `requirements.txt`), if it has one.
    pub fn python(&self) -> Option<PathBuf> {
        let p = self.dir.join(".venv/bin/python3");
        p.is_file().then_some(p)
    }
}

struct Held {
    cache: Arc<PackCache>,
    digest: String,
}

impl Drop for Held {
    fn drop(&mut self) {
        let mut m = self.cache.in_use.lock().expect("in-use lock");
        if let Some(n) = m.get_mut(&self.digest) {
            *n -= 1;
            if *n == 0 {
                m.remove(&self.digest);
            }
        }
    }
}

impl PackCache {
    /// The cache kept in `root`: one per directory in a process, so that the workers `attune up`
    /// runs side by side share what they prepare and hold.
    pub fn new(root: PathBuf) -> Arc<PackCache> {
        // Absolute: actions run in other directories than the worker's.
        let root = std::path::absolute(&root).unwrap_or(root);
        type Caches = Mutex<HashMap<PathBuf, std::sync::Weak<PackCache>>>;
        static CACHES: std::sync::OnceLock<Caches> = std::sync::OnceLock::new();
        let mut all = CACHES.get_or_init(Mutex::default).lock().expect("pack caches lock");
        all.retain(|_, c| c.strong_count() > 0);
        if let Some(c) = all.get(&root).and_then(|c| c.upgrade()) {
            return c;
        }
        let c =
            Arc::new(PackCache { root: root.clone(), preparing: Mutex::default(), in_use: Mutex::default() });
        all.insert(root, Arc::downgrade(&c));
        c
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn hold(self: &Arc<Self>, digest: &str) -> Held {
        *self.in_use.lock().expect("in-use lock").entry(digest.to_owned()).or_default() += 1;
        Held { cache: self.clone(), digest: digest.to_owned() }
    }

    /// Pack `pack`'s version `digest`: the directory when it is here already, else fetched,
    /// checked, unpacked and given its dependencies first. Concurrent calls for one version wait
    /// for a single preparation.
    pub async fn prepare(
        self: &Arc<Self>,
        client: &Client,
        worker: Uuid,
        pack: &str,
        digest: &str,
    ) -> Result<Prepared, Unavailable> {
        if attune_core::PackRef::parse(pack).is_err() || !archive::is_digest(digest) {
            return Err(Unavailable::fetch(format!(
                "pack version {pack}@{digest} is not a valid pack name and sha256 digest"
            )));
        }
        let held = self.hold(digest);
        let dir = self.root.join(pack).join(digest);
        if dir.is_dir() {
            touch(&dir);
            return Ok(Prepared { dir, _held: held });
        }
        let lock =
            self.preparing.lock().expect("preparing lock").entry(digest.to_owned()).or_default().clone();
        let _one = lock.lock().await;
        if dir.is_dir() {
            return Ok(Prepared { dir, _held: held });
        }
        let failed = self.root.join(pack).join(format!("{digest}.failed"));
        if let Ok(why) = std::fs::read_to_string(&failed) {
            return Err(Unavailable::dependencies(why));
        }
        let started = std::time::Instant::now();
        let staged = self.fetch(client, worker, pack, digest).await.map_err(Unavailable::fetch)?;
        if let Err(why) = install_dependencies(pack, digest, &staged).await {
            let _ = std::fs::remove_dir_all(&staged);
            let _ = std::fs::write(&failed, &why);
            tracing::warn!(pack, digest = short(digest), "{why}");
            return Err(Unavailable::dependencies(why));
        }
        if let Err(e) = std::fs::rename(&staged, &dir) {
            let _ = std::fs::remove_dir_all(&staged);
            if !dir.is_dir() {
                return Err(Unavailable::fetch(format!(
                    "cannot move pack {pack}@{} into place: {e}",
                    short(digest)
                )));
            }
        }
        tracing::info!(pack, digest = short(digest), took = ?started.elapsed(), "pack version ready");
        self.collect(pack, digest);
        Ok(Prepared { dir, _held: held })
    }

    /// Downloads the archive (streamed to a file, hashed as it arrives), checks its digest and
    /// unpacks it into a staging directory, which is returned.
    async fn fetch(
        &self,
        client: &Client,
        worker: Uuid,
        pack: &str,
        digest: &str,
    ) -> Result<PathBuf, String> {
        use sha2::Digest as _;
        let base = self.root.join(pack);
        std::fs::create_dir_all(&base).map_err(|e| format!("cannot create {}: {e}", base.display()))?;
        let tag = Uuid::new_v4().simple().to_string();
        let download = base.join(format!(".download-{digest}-{tag}"));
        let mut file = std::fs::File::create(&download)
            .map_err(|e| format!("cannot create {}: {e}", download.display()))?;
        let mut hasher = sha2::Sha256::new();
        let got = client
            .fetch_pack(worker, digest, |chunk| {
                hasher.update(chunk);
                file.write_all(chunk)
            })
            .await;
        drop(file);
        let cleanup = |r: Result<PathBuf, String>| {
            let _ = std::fs::remove_file(&download);
            r
        };
        if let Err(e) = got {
            return cleanup(Err(format!("cannot fetch pack {pack}@{} from the server: {e}", short(digest))));
        }
        let actual = hex::encode(hasher.finalize());
        if actual != digest {
            return cleanup(Err(format!(
                "the archive received for pack {pack}@{} has digest {}; refused",
                short(digest),
                short(&actual)
            )));
        }
        let staged = base.join(format!(".tmp-{digest}-{tag}"));
        let (from, to) = (download.clone(), staged.clone());
        let unpacked = tokio::task::spawn_blocking(move || {
            let bytes = std::fs::read(&from).map_err(|e| e.to_string())?;
            // The server checked every entry already; checked again, since this is what runs here.
            let limits = archive::Limits {
                max_archive_bytes: u64::MAX,
                max_unpacked_bytes: u64::MAX,
                max_entries: usize::MAX,
            };
            archive::unpack(&bytes, &to, &limits).map_err(|e| e.to_string())
        })
        .await
        .map_err(|e| e.to_string())
        .and_then(|r| r);
        cleanup(match unpacked {
            Ok(_) => Ok(staged),
            Err(e) => {
                let _ = std::fs::remove_dir_all(&staged);
                Err(format!("cannot unpack pack {pack}@{}: {e}", short(digest)))
            }
        })
    }

    /// Removes versions of `pack` other than `current` that no task or sensor holds, keeping the
    /// `KEEP` most recently used.
    fn collect(&self, pack: &str, current: &str) {
        let Ok(entries) = std::fs::read_dir(self.root.join(pack)) else { return };
        let mut versions: Vec<(std::time::SystemTime, PathBuf, String)> = entries
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let name = e.file_name().to_str()?.to_owned();
                let used = e.metadata().ok()?.modified().ok()?;
                (archive::is_digest(&name) && name != current).then(|| (used, e.path(), name))
            })
            .collect();
        versions.sort_by_key(|v| std::cmp::Reverse(v.0));
        let in_use = self.in_use.lock().expect("in-use lock").clone();
        for (_, path, digest) in versions.into_iter().skip(KEEP) {
            if in_use.contains_key(&digest) {
                continue;
            }
            match std::fs::remove_dir_all(&path) {
                Ok(()) => tracing::info!(pack, digest = short(&digest), "old pack version removed"),
                Err(e) => {
                    tracing::warn!(pack, digest = short(&digest), error = %e, "cannot remove an old pack version")
                }
            }
        }
    }
}

/// Marks a version as just used (its directory's modification time), for `collect`.
fn touch(dir: &Path) {
    if let Ok(f) = std::fs::File::open(dir) {
        let _ = f.set_modified(std::time::SystemTime::now());
    }
}

fn short(digest: &str) -> &str {
    &digest[..digest.len().min(12)]
}

/// Gives the staged pack its dependencies: a virtualenv from `requirements.txt`, and
/// `node_modules` from `package.json` (`npm ci` with a lock file, else `npm install`).
async fn install_dependencies(pack: &str, digest: &str, dir: &Path) -> Result<(), String> {
    let what =
        |step: &str| format!("installing the dependencies of pack {pack}@{} failed: {step}", short(digest));
    if dir.join("requirements.txt").is_file() {
        let venv = dir.join(".venv");
        run_installer(dir, "python3", &["-m", "venv", &venv.display().to_string()])
            .await
            .map_err(|e| what(&e))?;
        let python = venv.join("bin/python3").display().to_string();
        run_installer(
            dir,
            &python,
            &["-m", "pip", "install", "--disable-pip-version-check", "--no-input", "-r", "requirements.txt"],
        )
        .await
        .map_err(|e| what(&e))?;
    }
    if dir.join("package.json").is_file() {
        let args: &[&str] = if dir.join("package-lock.json").is_file() {
            &["ci", "--omit=dev", "--no-audit", "--no-fund"]
        } else {
            &["install", "--omit=dev", "--no-audit", "--no-fund", "--no-package-lock"]
        };
        run_installer(dir, "npm", args).await.map_err(|e| what(&e))?;
    }
    Ok(())
}

/// What an installer sees of the worker's environment: the basics actions get, plus pip's, npm's
/// and the proxy settings an operator may have given the worker for them.
fn installer_env() -> Vec<(String, String)> {
    let mut env = crate::runtime::base_env();
    env.extend(std::env::vars().filter(|(k, _)| {
        let upper = k.to_ascii_uppercase();
        upper.starts_with("PIP_")
            || upper.starts_with("NPM_CONFIG_")
            || matches!(
                upper.as_str(),
                "HTTP_PROXY" | "HTTPS_PROXY" | "NO_PROXY" | "SSL_CERT_FILE" | "REQUESTS_CA_BUNDLE"
            )
    }));
    env
}

/// Runs one installer step in `dir` (in a process group of its own, like an action); its
/// output is kept for the failure message.
async fn run_installer(dir: &Path, program: &str, args: &[&str]) -> Result<(), String> {
    use crate::process::{run, Ended, Spec};
    let shown = format!("{program} {}", args.join(" "));
    let spec = Spec {
        program: PathBuf::from(program),
        args: args.iter().map(|a| a.to_string()).collect(),
        cwd: dir.to_path_buf(),
        env: installer_env(),
        stdin: None,
        max_output: 1024 * 1024,
        kill_grace: Duration::from_secs(5),
        timeout: Some(INSTALL_TIMEOUT),
        tap: None,
        stream: None,
    };
    let out = run(spec, tokio_util::sync::CancellationToken::new())
        .await
        .map_err(|e| format!("`{shown}` could not start: {e}"))?;
    if out.ended == Ended::TimedOut {
        return Err(format!("`{shown}` did not finish within {INSTALL_TIMEOUT:?}"));
    }
    if out.exit_code == Some(0) {
        return Ok(());
    }
    let mut text = String::from_utf8_lossy(&out.stderr.bytes).into_owned();
    if text.trim().is_empty() {
        text = String::from_utf8_lossy(&out.stdout.bytes).into_owned();
    }
    let text = text.trim();
    let tail = match text.char_indices().rev().nth(INSTALL_OUTPUT_TAIL) {
        Some((i, _)) => format!("…{}", &text[i..]),
        None => text.to_owned(),
    };
    let how = match (out.exit_code, out.signal) {
        (Some(c), _) => format!("exit code {c}"),
        (None, s) => format!("signal {}", s.unwrap_or_default()),
    };
    Err(format!("`{shown}` ended with {how}:\n{tail}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn digest(n: u8) -> String {
        format!("{n:064x}")
    }

    #[test]
    fn old_versions_are_collected_except_the_most_recent_and_the_held() {
        let root = tempfile::tempdir().unwrap();
        let cache = PackCache::new(root.path().to_path_buf());
        let dir = root.path().join("p");
        let now = std::time::SystemTime::now();
        // Versions 1..=5, version 5 the most recently used; a staging directory and a failure
        // note beside them are not versions.
        for n in 1..=5u8 {
            std::fs::create_dir_all(dir.join(digest(n))).unwrap();
            let f = std::fs::File::open(dir.join(digest(n))).unwrap();
            f.set_modified(now - Duration::from_secs(100 - n as u64)).unwrap();
        }
        std::fs::create_dir_all(dir.join(format!(".tmp-{}-x", digest(9)))).unwrap();
        std::fs::write(dir.join(format!("{}.failed", digest(8))), "why").unwrap();
        let held = cache.hold(&digest(1));
        cache.collect("p", &digest(5));
        let left = |n: u8| dir.join(digest(n)).is_dir();
        assert!(left(5), "the current one");
        assert!(left(4) && left(3), "the two most recently used others");
        assert!(!left(2), "an old one nobody holds");
        assert!(left(1), "an old one a task holds");
        assert!(dir.join(format!("{}.failed", digest(8))).is_file());
        drop(held);
        cache.collect("p", &digest(5));
        assert!(!left(1), "collected once released");
    }
}
