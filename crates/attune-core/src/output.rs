//! Turning a finished process's output into what an execution stores (seed 001, "output dedup"):
//!
//! | format | `stdout` | `result` |
//! |---|---|---|
//! | text | full output | null |
//! | json / yaml / jsonl | empty | parsed value (jsonl: an array) |
//!
//! Output is parsed only when the exit code is 0. A parse failure keeps the raw stdout and gives an
//! error that says which format and where it broke.

use serde_json::Value;

use crate::action::OutputFormat;

/// What secret values are replaced with wherever people can see them.
pub const MASK: &str = "********";

#[derive(Debug, Clone, PartialEq)]
pub struct FinalOutput {
    pub stdout: String,
    pub result: Option<Value>,
    /// Set when parsing failed; the execution fails with this message.
    pub parse_error: Option<String>,
}

/// Applies the seed's de-duplication rule. `yaml` is parsed by the caller-supplied function so that
/// this crate stays free of a YAML dependency.
pub fn finalize(
    format: OutputFormat,
    exit_code: Option<i32>,
    stdout: String,
    parse_yaml: impl FnOnce(&str) -> Result<Value, String>,
) -> FinalOutput {
    let keep =
        |stdout: String, parse_error: Option<String>| FinalOutput { stdout, result: None, parse_error };
    if format == OutputFormat::Text || exit_code != Some(0) {
        return keep(stdout, None);
    }
    let parsed = match format {
        OutputFormat::Text => unreachable!("handled above"),
        OutputFormat::Json => {
            serde_json::from_str::<Value>(stdout.trim()).map_err(|e| format!("stdout is not valid JSON: {e}"))
        }
        OutputFormat::Yaml => parse_yaml(&stdout).map_err(|e| format!("stdout is not valid YAML: {e}")),
        OutputFormat::Jsonl => parse_jsonl(&stdout),
    };
    match parsed {
        Ok(v) => FinalOutput { stdout: String::new(), result: Some(v), parse_error: None },
        Err(e) => keep(stdout, Some(e)),
    }
}

fn parse_jsonl(s: &str) -> Result<Value, String> {
    let mut items = Vec::new();
    for (i, line) in s.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let v = serde_json::from_str(line)
            .map_err(|e| format!("stdout is not valid JSON Lines: line {}: {e}", i + 1))?;
        items.push(v);
    }
    Ok(Value::Array(items))
}

/// Replaces every occurrence of each secret value in `text` with `MASK`.
pub fn mask_secrets(text: &str, secrets: &[String]) -> String {
    let mut out = text.to_owned();
    for s in secrets.iter().filter(|s| !s.is_empty()) {
        if out.contains(s.as_str()) {
            out = out.replace(s.as_str(), MASK);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn no_yaml(_: &str) -> Result<Value, String> {
        Err("no yaml".into())
    }

    #[test]
    fn text_keeps_stdout_and_no_result() {
        let f = finalize(OutputFormat::Text, Some(0), "hello\n".into(), no_yaml);
        assert_eq!(f.stdout, "hello\n");
        assert_eq!(f.result, None);
    }

    #[test]
    fn json_moves_to_result_and_empties_stdout() {
        let f = finalize(OutputFormat::Json, Some(0), "{\"a\": 1}\n".into(), no_yaml);
        assert_eq!(f.stdout, "");
        assert_eq!(f.result, Some(json!({"a": 1})));
    }

    #[test]
    fn jsonl_is_an_array() {
        let f = finalize(OutputFormat::Jsonl, Some(0), "{\"a\":1}\n\n{\"b\":2}\n".into(), no_yaml);
        assert_eq!(f.result, Some(json!([{"a": 1}, {"b": 2}])));
        assert_eq!(f.stdout, "");
    }

    #[test]
    fn parse_failure_keeps_stdout() {
        let f = finalize(OutputFormat::Jsonl, Some(0), "{\"a\":1}\nnope\n".into(), no_yaml);
        assert_eq!(f.stdout, "{\"a\":1}\nnope\n");
        assert!(f.parse_error.unwrap().contains("line 2"));
    }

    #[test]
    fn nonzero_exit_is_not_parsed() {
        let f = finalize(OutputFormat::Json, Some(1), "oops".into(), no_yaml);
        assert_eq!(f.stdout, "oops");
        assert_eq!(f.parse_error, None);
    }

    #[test]
    fn masks() {
        assert_eq!(mask_secrets("pw=hunter2!", &["hunter2".into()]), "pw=********!");
    }
}
