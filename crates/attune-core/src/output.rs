//! Turning a finished process's output into what an execution stores (seed 001, "output dedup"):
//!
//! | format | `stdout` | `result` |
//! |---|---|---|
//! | text | full output | null |
//! | json / yaml / jsonl | empty | parsed value (jsonl: an array) |
//!
//! Output is parsed only when the exit code is 0. A parse failure keeps the raw stdout and gives an
//! error that says which format and where it broke.
//!
//! **Any bytes are kept.** A stream is stored as text (`OutputEncoding::Utf8`) when it is valid
//! UTF-8, holds no NUL byte and escapes in JSON to at most twice its size; otherwise as base64 of
//! the exact bytes (`OutputEncoding::Base64`), with the encoding beside it (`stdout_encoding`,
//! `stderr_encoding`, a live chunk's `encoding`). Nothing is replaced or dropped, both databases can
//! hold either form, and the JSON a stream takes is at most about twice its size — which is what
//! sizes the worker protocol's request limit (`report_size_bound`).

use base64::Engine;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::action::OutputFormat;

/// What secret values are replaced with wherever people can see them.
pub const MASK: &str = "********";

/// How a stream of output is written in the text that carries it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum OutputEncoding {
    /// The text is the output itself.
    #[default]
    #[serde(rename = "utf-8")]
    Utf8,
    /// The text is the standard base64 of the output's bytes (binary, invalid UTF-8 or NUL).
    #[serde(rename = "base64")]
    Base64,
}

impl OutputEncoding {
    pub fn as_str(self) -> &'static str {
        match self {
            OutputEncoding::Utf8 => "utf-8",
            OutputEncoding::Base64 => "base64",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "utf-8" => Some(OutputEncoding::Utf8),
            "base64" => Some(OutputEncoding::Base64),
            _ => None,
        }
    }
    pub fn is_utf8(&self) -> bool {
        *self == OutputEncoding::Utf8
    }
}

/// Bytes a byte takes inside a JSON string.
fn json_escaped(b: u8) -> usize {
    match b {
        b'"' | b'\\' | b'\n' | b'\r' | b'\t' | 0x08 | 0x0c => 2,
        0..=0x1f => 6,
        _ => 1,
    }
}

/// The stored form of `bytes`: the text, and how it is written.
pub fn encode(bytes: &[u8]) -> (String, OutputEncoding) {
    if !bytes.contains(&0) {
        if let Ok(s) = std::str::from_utf8(bytes) {
            if bytes.iter().map(|b| json_escaped(*b)).sum::<usize>() <= 2 * bytes.len() {
                return (s.to_owned(), OutputEncoding::Utf8);
            }
        }
    }
    (base64::engine::general_purpose::STANDARD.encode(bytes), OutputEncoding::Base64)
}

/// The bytes a stored text stands for.
pub fn decode(text: &str, encoding: OutputEncoding) -> Result<Vec<u8>, String> {
    match encoding {
        OutputEncoding::Utf8 => Ok(text.as_bytes().to_vec()),
        OutputEncoding::Base64 => base64::engine::general_purpose::STANDARD
            .decode(text)
            .map_err(|e| format!("not valid base64: {e}")),
    }
}

/// Makes a text that claims to be UTF-8 storable: one holding a NUL byte is stored as base64.
pub fn normalize(text: String, encoding: OutputEncoding) -> (String, OutputEncoding) {
    if encoding.is_utf8() && text.contains('\0') {
        encode(text.as_bytes())
    } else {
        (text, encoding)
    }
}

/// The most JSON one report can take when each captured stream is at most `cap` bytes and the
/// parsed result at most `cap` bytes of JSON: the larger of result and stdout (a parsed result
/// empties stdout) plus stderr, each stream at most twice its size once written, plus room for the
/// error object and the envelope. The worker protocol's body limit is this (`Settings`).
pub fn report_size_bound(cap: usize) -> usize {
    4 * cap + 128 * 1024
}

#[derive(Debug, Clone, PartialEq)]
pub struct FinalOutput {
    pub stdout: Vec<u8>,
    pub result: Option<Value>,
    /// Set when parsing failed; the execution fails with this message.
    pub parse_error: Option<String>,
}

/// Applies the seed's de-duplication rule. `yaml` is parsed by the caller-supplied function so that
/// this crate stays free of a YAML dependency.
pub fn finalize(
    format: OutputFormat,
    exit_code: Option<i32>,
    stdout: Vec<u8>,
    parse_yaml: impl FnOnce(&str) -> Result<Value, String>,
) -> FinalOutput {
    let keep =
        |stdout: Vec<u8>, parse_error: Option<String>| FinalOutput { stdout, result: None, parse_error };
    if format == OutputFormat::Text || exit_code != Some(0) {
        return keep(stdout, None);
    }
    let text = match std::str::from_utf8(&stdout) {
        Ok(t) => t,
        Err(e) => {
            let why = format!(
                "stdout is not valid UTF-8 (at byte {}), so it cannot be parsed as {}",
                e.valid_up_to(),
                format.label()
            );
            return keep(stdout, Some(why));
        }
    };
    let parsed = match format {
        OutputFormat::Text => unreachable!("handled above"),
        OutputFormat::Json => {
            serde_json::from_str::<Value>(text.trim()).map_err(|e| format!("stdout is not valid JSON: {e}"))
        }
        OutputFormat::Yaml => parse_yaml(text).map_err(|e| format!("stdout is not valid YAML: {e}")),
        OutputFormat::Jsonl => parse_jsonl(text),
    };
    match parsed {
        Ok(v) => FinalOutput { stdout: Vec::new(), result: Some(v), parse_error: None },
        Err(e) => keep(stdout, Some(e)),
    }
}

/// The original Attune's reading of output, for actions written for it: parsed only after exit
/// code 0; `json` is the whole of stdout or else its last line; `jsonl` keeps the lines that
/// parse; what does not parse stays text (`result` null, stdout kept) and the run is not failed.
pub fn finalize_leniently(
    format: OutputFormat,
    exit_code: Option<i32>,
    stdout: Vec<u8>,
    parse_yaml: impl FnOnce(&str) -> Result<Value, String>,
) -> FinalOutput {
    let keep = |stdout: Vec<u8>| FinalOutput { stdout, result: None, parse_error: None };
    let Ok(text) = std::str::from_utf8(&stdout) else { return keep(stdout) };
    if format == OutputFormat::Text || exit_code != Some(0) || text.trim().is_empty() {
        return keep(stdout);
    }
    let parsed = match format {
        OutputFormat::Text => None,
        OutputFormat::Json => serde_json::from_str::<Value>(text.trim())
            .ok()
            .or_else(|| text.trim().lines().last().and_then(|l| serde_json::from_str(l.trim()).ok())),
        OutputFormat::Yaml => parse_yaml(text).ok(),
        OutputFormat::Jsonl => {
            let items: Vec<Value> =
                text.lines().filter_map(|l| serde_json::from_str(l.trim()).ok()).collect();
            (!items.is_empty()).then_some(Value::Array(items))
        }
    };
    match parsed {
        Some(v) => FinalOutput { stdout: Vec::new(), result: Some(v), parse_error: None },
        None => keep(stdout),
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

/// `mask_secrets` for output that may not be text.
pub fn mask_secret_bytes(bytes: Vec<u8>, secrets: &[String]) -> Vec<u8> {
    let mut out = bytes;
    for s in secrets.iter().map(String::as_bytes).filter(|s| !s.is_empty()) {
        if !out.windows(s.len()).any(|w| w == s) {
            continue;
        }
        let mut masked = Vec::with_capacity(out.len());
        let mut i = 0;
        while i < out.len() {
            if out[i..].starts_with(s) {
                masked.extend_from_slice(MASK.as_bytes());
                i += s.len();
            } else {
                masked.push(out[i]);
                i += 1;
            }
        }
        out = masked;
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
        let f = finalize(OutputFormat::Text, Some(0), b"hello\n".to_vec(), no_yaml);
        assert_eq!(f.stdout, b"hello\n");
        assert_eq!(f.result, None);
    }

    #[test]
    fn json_moves_to_result_and_empties_stdout() {
        let f = finalize(OutputFormat::Json, Some(0), b"{\"a\": 1}\n".to_vec(), no_yaml);
        assert_eq!(f.stdout, b"");
        assert_eq!(f.result, Some(json!({"a": 1})));
    }

    #[test]
    fn jsonl_is_an_array() {
        let f = finalize(OutputFormat::Jsonl, Some(0), b"{\"a\":1}\n\n{\"b\":2}\n".to_vec(), no_yaml);
        assert_eq!(f.result, Some(json!([{"a": 1}, {"b": 2}])));
        assert_eq!(f.stdout, b"");
    }

    #[test]
    fn parse_failure_keeps_stdout() {
        let f = finalize(OutputFormat::Jsonl, Some(0), b"{\"a\":1}\nnope\n".to_vec(), no_yaml);
        assert_eq!(f.stdout, b"{\"a\":1}\nnope\n");
        assert!(f.parse_error.unwrap().contains("line 2"));
        let f = finalize(OutputFormat::Json, Some(0), vec![b'{', 0xff, b'}'], no_yaml);
        assert_eq!(f.stdout, vec![b'{', 0xff, b'}']);
        assert!(f
            .parse_error
            .unwrap()
            .contains("not valid UTF-8 (at byte 1), so it cannot be parsed as JSON"));
    }

    #[test]
    fn nonzero_exit_is_not_parsed() {
        let f = finalize(OutputFormat::Json, Some(1), b"oops".to_vec(), no_yaml);
        assert_eq!(f.stdout, b"oops");
        assert_eq!(f.parse_error, None);
    }

    #[test]
    fn masks() {
        assert_eq!(mask_secrets("pw=hunter2!", &["hunter2".into()]), "pw=********!");
        assert_eq!(
            mask_secret_bytes(b"\xffhunter2\0hunter2".to_vec(), &["hunter2".into()]),
            b"\xff********\0********"
        );
    }

    #[test]
    fn any_bytes_round_trip_and_text_stays_text() {
        for bytes in [
            b"hello\nworld\n".to_vec(),
            b"a\0b".to_vec(),
            vec![0xff, 0xfe, 0x00, 0x80],
            "héllo wörld\n".as_bytes().to_vec(),
            vec![0x01; 100],
            Vec::new(),
            b"tab\tand \"quotes\"\n".to_vec(),
        ] {
            let (text, enc) = encode(&bytes);
            assert_eq!(decode(&text, enc).unwrap(), bytes, "{bytes:?}");
            assert!(!text.contains('\0'));
            assert!(serde_json::to_string(&text).unwrap().len() <= 2 * bytes.len() + 4, "{bytes:?}");
        }
        assert_eq!(encode(b"hello\n"), ("hello\n".to_string(), OutputEncoding::Utf8));
        assert_eq!(encode(b"a\0b").1, OutputEncoding::Base64);
        assert_eq!(
            encode(&[0x01; 8]).1,
            OutputEncoding::Base64,
            "control characters escape to six bytes each"
        );
        assert_eq!(normalize("a\0b".into(), OutputEncoding::Utf8), ("YQBi".into(), OutputEncoding::Base64));
        assert!(decode("not base64!", OutputEncoding::Base64).is_err());
        assert_eq!(serde_json::to_value(OutputEncoding::Utf8).unwrap(), "utf-8");
    }
}
