//! Loading `Settings`: the YAML file (`--config` or `ATTUNE_CONFIG`), then `ATTUNE__SECTION__KEY`
//! environment variables, then command-line flags. Unknown keys and bad values are errors that name
//! the key and where it came from.

use std::path::Path;

use anyhow::{bail, Context};
use attune_core::config::Settings;
use serde_yaml::{Mapping, Value};

/// One override from a flag: a dotted path (`server.listen`) and its value.
pub struct Override {
    pub path: &'static str,
    pub value: Value,
}

impl Override {
    pub fn str(path: &'static str, v: impl Into<String>) -> Self {
        Override { path, value: Value::String(v.into()) }
    }
    pub fn num(path: &'static str, v: u64) -> Self {
        Override { path, value: Value::Number(v.into()) }
    }
}

/// The CLI's API token: `--token`/`ATTUNE_TOKEN`, else `client.token` from the configuration (file,
/// then `ATTUNE__CLIENT__TOKEN`), else `./.attune/admin.token`.
pub fn client_token(flag: Option<String>, file: Option<&Path>) -> anyhow::Result<Option<String>> {
    if let Some(t) = flag.filter(|t| !t.trim().is_empty()) {
        return Ok(Some(t));
    }
    if let Some(t) = load(file, Vec::new())?.client.token.filter(|t| !t.trim().is_empty()) {
        return Ok(Some(t));
    }
    Ok(std::fs::read_to_string(".attune/admin.token").ok().map(|t| t.trim().to_owned()))
}

/// The certificates the CLI trusts besides the system's: `--ca-file`/`ATTUNE_CA_FILE`, else
/// `client.ca_file` from the configuration.
pub fn client_trust(flag: Option<&Path>, file: Option<&Path>) -> anyhow::Result<attune_client::Trust> {
    let configured;
    let path = match flag {
        Some(p) => Some(p),
        None => {
            configured = load(file, Vec::new())?.client.ca_file;
            configured.as_deref()
        }
    };
    attune_client::Trust::from_optional_file(path).map_err(|e| crate::cmds::UsageError(e).into())
}

/// Settings from the file, the environment and the flags; any problem is a usage error (exit 2).
pub fn load(file: Option<&Path>, flags: Vec<Override>) -> anyhow::Result<Settings> {
    let env: Vec<(String, String)> = std::env::vars().collect();
    load_from(file, &env, flags).map_err(|e| crate::cmds::UsageError(format!("{e:#}")).into())
}

pub fn load_from(
    file: Option<&Path>,
    env: &[(String, String)],
    flags: Vec<Override>,
) -> anyhow::Result<Settings> {
    let mut tree = match file {
        Some(f) => {
            let text =
                std::fs::read_to_string(f).with_context(|| format!("read config file {}", f.display()))?;
            match serde_yaml::from_str::<Value>(&text)
                .with_context(|| format!("parse config file {}", f.display()))?
            {
                Value::Null => Value::Mapping(Mapping::new()),
                v @ Value::Mapping(_) => v,
                _ => bail!("config file {}: expected a mapping of sections", f.display()),
            }
        }
        None => Value::Mapping(Mapping::new()),
    };
    for (k, v) in env {
        let Some(rest) = k.strip_prefix("ATTUNE__") else { continue };
        let path: Vec<String> = rest.split("__").map(|s| s.to_lowercase()).collect();
        if path.iter().any(|p| p.is_empty()) {
            bail!("environment variable {k}: expected ATTUNE__SECTION__KEY");
        }
        // Parsed as YAML so that numbers, booleans and lists work; a bad value stays a string.
        let value = serde_yaml::from_str::<Value>(v).unwrap_or_else(|_| Value::String(v.clone()));
        set(&mut tree, &path, value);
    }
    for o in flags {
        let path: Vec<String> = o.path.split('.').map(str::to_owned).collect();
        set(&mut tree, &path, o.value);
    }
    let settings: Settings = serde_yaml::from_value(tree).map_err(|e| {
        anyhow::anyhow!(
            "invalid configuration{}: {e}",
            file.map(|f| format!(" (file {}, then ATTUNE__* variables)", f.display())).unwrap_or_default()
        )
    })?;
    settings.validate().map_err(|e| anyhow::anyhow!("invalid configuration: {e}"))?;
    Ok(settings)
}

fn set(tree: &mut Value, path: &[String], value: Value) {
    let mut cur = tree;
    for (i, key) in path.iter().enumerate() {
        if !cur.is_mapping() {
            *cur = Value::Mapping(Mapping::new());
        }
        let map = cur.as_mapping_mut().expect("just made a mapping");
        let k = Value::String(key.clone());
        if i == path.len() - 1 {
            map.insert(k, value);
            return;
        }
        cur = map.entry(k).or_insert_with(|| Value::Mapping(Mapping::new()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn layers_file_env_flags() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("c.yaml");
        std::fs::write(
            &f,
            "worker:\n  heartbeat_interval: 20s\n  concurrency: 3\nserver:\n  listen: 0.0.0.0:1\n",
        )
        .unwrap();
        let env = vec![("ATTUNE__WORKER__HEARTBEAT_INTERVAL".into(), "2".into())];
        let s = load_from(Some(&f), &env, vec![Override::str("server.listen", "127.0.0.1:9")]).unwrap();
        assert_eq!(s.worker.heartbeat_interval, Duration::from_secs(2));
        assert_eq!(s.worker.concurrency, 3);
        assert_eq!(s.server.listen, "127.0.0.1:9");
        assert_eq!(s.staleness(), Duration::from_secs(6));
    }

    #[test]
    fn unknown_keys_and_bad_values_are_named() {
        let env = vec![("ATTUNE__WORKER__HEARTBEAT_INTERVL".into(), "2".into())];
        let e = load_from(None, &env, vec![]).unwrap_err().to_string();
        assert!(e.contains("heartbeat_intervl"), "{e}");
        let env = vec![("ATTUNE__EXECUTOR__SCHEDULED_TIMEOUT".into(), "soon".into())];
        let e = load_from(None, &env, vec![]).unwrap_err().to_string();
        assert!(e.contains("invalid duration"), "{e}");
    }
}
