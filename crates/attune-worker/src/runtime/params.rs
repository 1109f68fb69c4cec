//! Handing parameters to a process, as the action asks:
//!
//! | `parameter_delivery` | where |
//! |---|---|
//! | `stdin` (default) | the formatted document on stdin |
//! | `file` | a file readable only by the worker's user (0400), path in `ATTUNE_PARAMETERS_FILE`, removed afterwards |
//! | `env` | `ATTUNE_PARAMETERS` holds the formatted document, and each flattened key is `ATTUNE_PARAM_<KEY>` |
//!
//! Formats: `json`, `yaml`, `dotenv`. dotenv flattens nested objects and arrays by joining keys with
//! `__` (`{"db": {"host": "x"}}` → `db__host`, `{"l": [1]}` → `l__0`) and single-quotes every value
//! POSIX-style (`'` becomes `'\''`), so `set -a; . "$ATTUNE_PARAMETERS_FILE"` in a shell keeps spaces,
//! quotes and newlines intact.
//! Secret parameters never go into the environment: with `env` delivery they arrive on stdin as a
//! JSON object holding only the secrets.
//!
//! Every process also gets `ATTUNE_PARAMETER_DELIVERY` and `ATTUNE_PARAMETER_FORMAT`, and with
//! `file` delivery `ATTUNE_PARAMETER_FILE` too (the original Attune's names). An action in the
//! original's dialect gets its conventions instead: dotenv keys joined by `.` (`headers.X-Probe`),
//! lists as compact JSON, empty mappings left out, lines sorted; the document followed by a
//! newline; and each non-secret parameter as `ATTUNE_ACTION_<NAME>` (its older packs' names).

use std::{
    io::Write,
    path::{Path, PathBuf},
};

use attune_core::{Dialect, ParameterDelivery, ParameterFormat, Task};
use serde_json::{Map, Value};

pub(super) struct Delivery {
    pub env: Vec<(String, String)>,
    pub stdin: Option<Vec<u8>>,
    file: Option<PathBuf>,
}

impl Drop for Delivery {
    fn drop(&mut self) {
        if let Some(f) = &self.file {
            let _ = std::fs::remove_file(f);
        }
    }
}

pub(super) fn deliver(task: &Task, scratch: &Path) -> std::io::Result<Delivery> {
    let mut d = deliver_as_asked(task, scratch)?;
    let a = &task.action;
    let delivery = serde_json::to_value(a.parameter_delivery).ok();
    let format = serde_json::to_value(a.parameter_format).ok();
    for (k, v) in [("ATTUNE_PARAMETER_DELIVERY", delivery), ("ATTUNE_PARAMETER_FORMAT", format)] {
        d.env.push((k.into(), v.and_then(|v| v.as_str().map(str::to_owned)).unwrap_or_default()));
    }
    if let Some(f) = &d.file {
        d.env.push(("ATTUNE_PARAMETER_FILE".into(), f.display().to_string()));
    }
    if a.dialect == Dialect::Original {
        let secrets = a.secret_parameters();
        for (k, v) in task.parameters.as_object().into_iter().flatten() {
            if !secrets.contains(k) {
                let v = match v {
                    Value::String(s) => s.clone(),
                    Value::Null => String::new(),
                    other => other.to_string(),
                };
                d.env.push((format!("ATTUNE_ACTION_{}", env_key(k)), v));
            }
        }
    }
    Ok(d)
}

fn deliver_as_asked(task: &Task, scratch: &Path) -> std::io::Result<Delivery> {
    let a = &task.action;
    let params = task.parameters.as_object().cloned().unwrap_or_default();
    let format = |params: &Map<String, Value>, f: ParameterFormat| match a.dialect {
        Dialect::Attune => format(params, f),
        Dialect::Original => original_format(params, f),
    };
    match a.parameter_delivery {
        ParameterDelivery::Stdin => Ok(Delivery {
            env: Vec::new(),
            stdin: Some(format(&params, a.parameter_format).into_bytes()),
            file: None,
        }),
        ParameterDelivery::File => {
            std::fs::create_dir_all(scratch)?;
            // Absolute: the program runs in the pack's directory, not the worker's.
            let path = std::fs::canonicalize(scratch)?
                .join(format!("params-{}-{}", task.execution_id, task.attempt));
            let mut f = {
                use std::os::unix::fs::OpenOptionsExt;
                std::fs::OpenOptions::new().write(true).create_new(true).mode(0o400).open(&path)?
            };
            f.write_all(format(&params, a.parameter_format).as_bytes())?;
            Ok(Delivery {
                env: vec![("ATTUNE_PARAMETERS_FILE".into(), path.display().to_string())],
                stdin: None,
                file: Some(path),
            })
        }
        ParameterDelivery::Env => {
            let secrets = a.secret_parameters();
            let (secret, open): (Map<String, Value>, Map<String, Value>) =
                params.into_iter().partition(|(k, _)| secrets.contains(k));
            let mut env = vec![("ATTUNE_PARAMETERS".to_owned(), format(&open, a.parameter_format))];
            for (k, v) in flatten(&open) {
                env.push((format!("ATTUNE_PARAM_{}", env_key(&k)), v));
            }
            let stdin = (!secret.is_empty()).then(|| Value::Object(secret).to_string().into_bytes());
            Ok(Delivery { env, stdin, file: None })
        }
    }
}

fn env_key(k: &str) -> String {
    k.chars().map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_uppercase() } else { '_' }).collect()
}

pub(crate) fn format(params: &Map<String, Value>, f: ParameterFormat) -> String {
    match f {
        ParameterFormat::Json => Value::Object(params.clone()).to_string(),
        ParameterFormat::Yaml => serde_yaml::to_string(&Value::Object(params.clone())).unwrap_or_default(),
        ParameterFormat::Dotenv => {
            let mut out = String::new();
            for (k, v) in flatten(params) {
                out.push_str(&k);
                out.push('=');
                out.push_str(&sh_quote(&v));
                out.push('\n');
            }
            out
        }
    }
}

/// The original Attune's formats: JSON on one line and dotenv with dotted keys, lists as compact
/// JSON, empty mappings left out, `null` as `''`, lines sorted; each followed by a newline (its
/// scripts read lines until the end of input).
fn original_format(params: &Map<String, Value>, f: ParameterFormat) -> String {
    fn walk(prefix: &str, v: &Value, out: &mut Vec<String>) {
        match v {
            Value::Object(m) => {
                for (k, v) in m {
                    walk(&if prefix.is_empty() { k.clone() } else { format!("{prefix}.{k}") }, v, out)
                }
            }
            Value::String(s) => out.push(format!("{prefix}={}", sh_quote(s))),
            Value::Null => out.push(format!("{prefix}=''")),
            other => out.push(format!("{prefix}={}", sh_quote(&other.to_string()))),
        }
    }
    match f {
        ParameterFormat::Dotenv => {
            let mut lines = Vec::new();
            for (k, v) in params {
                walk(k, v, &mut lines);
            }
            lines.sort();
            let mut out = lines.join("\n");
            out.push('\n');
            out
        }
        ParameterFormat::Json => format!("{}\n", Value::Object(params.clone())),
        ParameterFormat::Yaml => format(params, f),
    }
}

/// `(key, value)` pairs with nested keys joined by `__`; strings as they are, other scalars as JSON.
pub(crate) fn flatten(params: &Map<String, Value>) -> Vec<(String, String)> {
    fn walk(prefix: &str, v: &Value, out: &mut Vec<(String, String)>) {
        match v {
            Value::Object(m) => {
                for (k, v) in m {
                    walk(&join(prefix, k), v, out)
                }
            }
            Value::Array(a) => {
                for (i, v) in a.iter().enumerate() {
                    walk(&join(prefix, &i.to_string()), v, out)
                }
            }
            Value::String(s) => out.push((prefix.to_owned(), s.clone())),
            Value::Null => out.push((prefix.to_owned(), String::new())),
            other => out.push((prefix.to_owned(), other.to_string())),
        }
    }
    fn join(prefix: &str, k: &str) -> String {
        if prefix.is_empty() {
            k.to_owned()
        } else {
            format!("{prefix}__{k}")
        }
    }
    let mut out = Vec::new();
    for (k, v) in params {
        walk(k, v, &mut out);
    }
    out
}

fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn dotenv_flattens_and_quotes() {
        let p = json!({"a": "it's \"x\"\nline2", "db": {"host": "h", "ports": [1, 2]}, "n": 3});
        let s = format(p.as_object().unwrap(), ParameterFormat::Dotenv);
        assert!(s.contains("a='it'\\''s \"x\"\nline2'\n"), "{s}");
        assert!(s.contains("db__host='h'\n"));
        assert!(s.contains("db__ports__1='2'\n"));
        assert!(s.contains("n='3'\n"));
    }

    #[test]
    fn the_originals_dotenv_has_dotted_keys_and_lists_as_json() {
        let p = json!({"url": "http://x", "headers": {"X-Probe": "it's"}, "query_params": {}, "packs": ["a", "b"],
                       "n": 3, "none": null});
        let s = original_format(p.as_object().unwrap(), ParameterFormat::Dotenv);
        assert_eq!(s, "headers.X-Probe='it'\\''s'\nn='3'\nnone=''\npacks='[\"a\",\"b\"]'\nurl='http://x'\n");
        let s = original_format(p.as_object().unwrap(), ParameterFormat::Json);
        assert!(s.ends_with("}\n") && s.lines().count() == 1, "{s}");
    }
}
