//! The key store's secrets: sealed with XChaCha20-Poly1305 under a master key that never leaves
//! this process (and its file), opened only to hand a task to the worker that runs it, and used
//! through the one template engine (`attune-template`): a parameter `{{ key('name') }}`.
//!
//! The master key file holds one base64 key per line, the current one first; older ones stay
//! during a rotation so that every row can still be opened if the process stops half-way.

use std::{
    collections::HashMap,
    io::Write,
    path::{Path, PathBuf},
};

use attune_core::{Action, Task};
use attune_store::{KeyValue, Store, StoredKey};
use base64::{engine::general_purpose::STANDARD as B64, Engine};
use chacha20poly1305::{
    aead::{Aead, KeyInit, Payload},
    XChaCha20Poly1305, XNonce,
};
use serde_json::Value;
use sha2::{Digest, Sha256};

const NONCE: usize = 24;

/// One master key and its fingerprint (what rows record as `key_id`).
#[derive(Clone)]
struct MasterKey {
    id: String,
    cipher: XChaCha20Poly1305,
}

impl MasterKey {
    fn new(bytes: &[u8; 32]) -> MasterKey {
        let digest = Sha256::new().chain_update(b"attune master key\0").chain_update(bytes).finalize();
        MasterKey { id: hex::encode(&digest[..8]), cipher: XChaCha20Poly1305::new(bytes.into()) }
    }
}

/// The master keys this server holds, the current one first.
#[derive(Clone, Default)]
pub struct Keyring {
    keys: Vec<MasterKey>,
    file: Option<PathBuf>,
}

impl std::fmt::Debug for Keyring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ids: Vec<&str> = self.keys.iter().map(|k| k.id.as_str()).collect();
        f.debug_struct("Keyring").field("ids", &ids).field("file", &self.file).finish()
    }
}

fn random_key() -> anyhow::Result<[u8; 32]> {
    let mut k = [0u8; 32];
    getrandom::fill(&mut k).map_err(|e| anyhow::anyhow!("no randomness for a master key: {e}"))?;
    Ok(k)
}

/// What binds a sealed value to its key's place: moving a ciphertext to another key fails.
fn aad(pack: Option<&str>, name: &str) -> Vec<u8> {
    format!("attune key v1\0{}\0{name}", pack.unwrap_or("")).into_bytes()
}

impl Keyring {
    /// Reads the master key file, creating it (mode 0600, one new key) when it does not exist.
    /// Returns the keyring and whether the file was created.
    pub fn load_or_create(path: &Path) -> anyhow::Result<(Keyring, bool)> {
        use anyhow::Context;
        let created = match std::fs::read_to_string(path) {
            Ok(_) => false,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                    std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
                }
                write_keys(path, &[random_key()?], true)?;
                true
            }
            Err(e) => return Err(e).with_context(|| format!("read the master key file {}", path.display())),
        };
        let text = std::fs::read_to_string(path).with_context(|| format!("read {}", path.display()))?;
        let mut keys = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let bytes: [u8; 32] =
                B64.decode(line).ok().and_then(|b| b.try_into().ok()).with_context(|| {
                    format!("{} line {}: not a base64 32-byte key", path.display(), i + 1)
                })?;
            keys.push(MasterKey::new(&bytes));
        }
        anyhow::ensure!(!keys.is_empty(), "{}: no master key in the file", path.display());
        Ok((Keyring { keys, file: Some(path.to_owned()) }, created))
    }

    /// The fingerprint of the key new secrets are sealed with.
    pub fn current_id(&self) -> Option<&str> {
        self.keys.first().map(|k| k.id.as_str())
    }

    /// Seals `plain` as the value of key `name` (of `pack`).
    pub fn seal(&self, pack: Option<&str>, name: &str, plain: &str) -> Result<KeyValue, String> {
        let key = self.keys.first().ok_or("this server has no master key")?;
        let mut nonce = [0u8; NONCE];
        getrandom::fill(&mut nonce).map_err(|e| format!("no randomness for a nonce: {e}"))?;
        let sealed = key
            .cipher
            .encrypt(XNonce::from_slice(&nonce), Payload { msg: plain.as_bytes(), aad: &aad(pack, name) })
            .map_err(|_| "encryption failed".to_owned())?;
        let mut out = nonce.to_vec();
        out.extend_from_slice(&sealed);
        Ok(KeyValue::Sealed { ciphertext: B64.encode(out), key_id: key.id.clone() })
    }

    /// The value of a stored key; a sealed one opened with the master key it names.
    pub fn open(&self, k: &StoredKey) -> Result<String, String> {
        let (ciphertext, key_id) = match &k.value {
            KeyValue::Plain(v) => return Ok(v.clone()),
            KeyValue::Sealed { ciphertext, key_id } => (ciphertext, key_id),
        };
        let name = &k.info.name;
        let Some(key) = self.keys.iter().find(|m| &m.id == key_id) else {
            let have: Vec<&str> = self.keys.iter().map(|k| k.id.as_str()).collect();
            return Err(format!(
                "key {name:?} was sealed under master key {key_id}, which this server does not hold (it has {}); \
                 every replica needs the same security.master_key_file",
                have.join(", ")
            ));
        };
        let raw = B64
            .decode(ciphertext)
            .map_err(|_| format!("key {name:?}: the stored ciphertext is not base64"))?;
        if raw.len() < NONCE {
            return Err(format!("key {name:?}: the stored ciphertext is too short"));
        }
        let (nonce, body) = raw.split_at(NONCE);
        let plain = key
            .cipher
            .decrypt(
                XNonce::from_slice(nonce),
                Payload { msg: body, aad: &aad(k.info.pack.as_deref(), name) },
            )
            .map_err(|_| format!("key {name:?}: the stored value does not open (altered or moved)"))?;
        String::from_utf8(plain).map_err(|_| format!("key {name:?}: the value is not UTF-8"))
    }

    /// A new current master key: written to the file ahead of the old ones (kept until every
    /// secret is sealed again by `finish_rotation`).
    pub fn rotate(&self) -> anyhow::Result<Keyring> {
        let file = self.file.clone().ok_or_else(|| anyhow::anyhow!("this server has no master key file"))?;
        let fresh = random_key()?;
        let mut all = vec![fresh];
        all.extend(read_raw(&file)?);
        write_keys(&file, &all, false)?;
        Ok(Keyring::load_or_create(&file)?.0)
    }

    /// Drops every key but the current one from the file and the ring.
    pub fn finish_rotation(&self) -> anyhow::Result<Keyring> {
        let file = self.file.clone().ok_or_else(|| anyhow::anyhow!("this server has no master key file"))?;
        let raw = read_raw(&file)?;
        write_keys(&file, &raw[..1], false)?;
        Ok(Keyring::load_or_create(&file)?.0)
    }
}

fn read_raw(file: &Path) -> anyhow::Result<Vec<[u8; 32]>> {
    let text = std::fs::read_to_string(file)?;
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| {
            B64.decode(l)
                .ok()
                .and_then(|b| b.try_into().ok())
                .ok_or_else(|| anyhow::anyhow!("{}: not a base64 32-byte key", file.display()))
        })
        .collect()
}

/// Writes keys (current first) to `file`, mode 0600: a new file, or a replacement by rename so
/// that a crash leaves the old file or the new one, never half of one.
fn write_keys(file: &Path, keys: &[[u8; 32]], create_new: bool) -> anyhow::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut text =
        String::from("# Attune key store master key(s): the first seals, all open. Keep secret.\n");
    for k in keys {
        text.push_str(&B64.encode(k));
        text.push('\n');
    }
    let target = if create_new { file.to_owned() } else { file.with_extension("tmp") };
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).mode(0o600);
    if create_new {
        opts.create_new(true);
    } else {
        opts.create(true).truncate(true);
    }
    let mut f = opts.open(&target)?;
    f.write_all(text.as_bytes())?;
    f.sync_all()?;
    if !create_new {
        std::fs::rename(&target, file)?;
    }
    Ok(())
}

/// The parameters of a submission as far as they can be checked before anything is opened: the
/// templates compile, and each key they use exists (as the pack's own key, else a global one).
/// Returns the parameters rendered with plain keys' values and a mask in place of each secret's,
/// to validate against the action's schema.
pub async fn check_templates(store: &Store, action: &Action, params: &Value) -> Result<Value, Vec<String>> {
    if !attune_template::has_templates(params) {
        return Ok(params.clone());
    }
    let names = attune_template::keys_used(params, "parameters").map_err(|e| vec![e.to_string()])?;
    let found = store.keys_for(action.pack.as_str(), &names).await.map_err(|e| vec![e.to_string()])?;
    let mut values = HashMap::new();
    for k in &found {
        let v = match &k.value {
            KeyValue::Plain(v) => v.clone(),
            KeyValue::Sealed { .. } => attune_core::output::MASK.to_owned(),
        };
        values.insert(k.info.name.clone(), v);
    }
    let missing: Vec<String> = names
        .iter()
        .filter(|n| !values.contains_key(*n))
        .map(|n| {
            format!("key {n:?} is not set (for pack {} or globally): `attune key set {n} …`", action.pack)
        })
        .collect();
    if !missing.is_empty() {
        return Err(missing);
    }
    attune_template::render(params, "parameters", &values).map_err(|e| vec![e.to_string()])
}

/// Makes a task's parameters ready for the worker that runs it: templates rendered with the keys'
/// values (secrets opened only here), each top-level parameter that used a secret marked secret
/// (so the worker keeps it out of argv and the environment and masks it), and the secrets added
/// to the values masked in output. A problem becomes the task's `parameter_error`, which the
/// worker reports as the execution's failure without running anything.
pub async fn prepare_task(store: &Store, ring: &Keyring, task: &mut Task) {
    if !attune_template::has_templates(&task.parameters) {
        return;
    }
    if let Err(why) = resolve(store, ring, task).await {
        task.parameters = Value::Object(Default::default());
        task.parameter_error = Some(format!("the parameters could not be prepared: {why}"));
    }
}

async fn resolve(store: &Store, ring: &Keyring, task: &mut Task) -> Result<(), String> {
    let names = attune_template::keys_used(&task.parameters, "parameters").map_err(|e| e.to_string())?;
    let found = store.keys_for(task.action.pack.as_str(), &names).await.map_err(|e| e.to_string())?;
    let mut values = HashMap::new();
    let mut secret_names = Vec::new();
    for k in &found {
        let v = ring.open(k)?;
        if k.info.secret {
            secret_names.push(k.info.name.clone());
            task.masks.push(v.clone());
        }
        values.insert(k.info.name.clone(), v);
    }
    let rendered =
        attune_template::render(&task.parameters, "parameters", &values).map_err(|e| e.to_string())?;
    if let (Some(before), false) = (task.parameters.as_object(), secret_names.is_empty()) {
        let mut marked = Vec::new();
        for (prop, v) in before {
            let used = attune_template::keys_used(v, "").unwrap_or_default();
            if used.iter().any(|u| secret_names.contains(u)) {
                marked.push(prop.clone());
            }
        }
        mark_secret(&mut task.action.parameters, &marked);
    }
    task.parameters = rendered;
    Ok(())
}

/// Sets `secret: true` on each of `props` in an action's parameter schema (adding the property
/// when the schema does not list it).
fn mark_secret(schema: &mut Value, props: &[String]) {
    let Some(obj) = schema.as_object_mut() else { return };
    let properties = obj.entry("properties").or_insert_with(|| Value::Object(Default::default()));
    let Some(properties) = properties.as_object_mut() else { return };
    for p in props {
        let entry = properties.entry(p.clone()).or_insert_with(|| Value::Object(Default::default()));
        if let Some(e) = entry.as_object_mut() {
            e.insert("secret".into(), Value::Bool(true));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_values_open_only_in_their_place_and_with_their_key() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("m.key");
        let (ring, created) = Keyring::load_or_create(&file).unwrap();
        assert!(created);
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&file).unwrap().permissions().mode() & 0o777, 0o600);
        let sealed = ring.seal(None, "db", "s3cr3t").unwrap();
        let KeyValue::Sealed { ciphertext, .. } = &sealed else { panic!() };
        assert!(!ciphertext.contains("s3cr3t"));
        let stored = |pack: Option<&str>, name: &str, value: KeyValue| StoredKey {
            info: attune_core::keys::KeyInfo {
                name: name.into(),
                pack: pack.map(str::to_owned),
                secret: true,
                value: None,
                created_at: attune_core::Timestamp(0),
                updated_at: attune_core::Timestamp(0),
                updated_by: None,
            },
            value,
        };
        assert_eq!(ring.open(&stored(None, "db", sealed.clone())).unwrap(), "s3cr3t");
        let moved = ring.open(&stored(None, "other", sealed.clone())).unwrap_err();
        assert!(moved.contains("does not open"), "{moved}");
        assert!(ring.open(&stored(Some("p"), "db", sealed.clone())).is_err());
        // Re-read: the same key. Rotated: old values still open until the rotation finishes.
        let (again, created) = Keyring::load_or_create(&file).unwrap();
        assert!(!created);
        assert_eq!(again.current_id(), ring.current_id());
        let rotated = ring.rotate().unwrap();
        assert_ne!(rotated.current_id(), ring.current_id());
        assert_eq!(rotated.open(&stored(None, "db", sealed.clone())).unwrap(), "s3cr3t");
        let done = rotated.finish_rotation().unwrap();
        let gone = done.open(&stored(None, "db", sealed)).unwrap_err();
        assert!(gone.contains("does not hold"), "{gone}");
        assert_eq!(std::fs::metadata(&file).unwrap().permissions().mode() & 0o777, 0o600);
    }
}
