//! What an action is: where it runs (`Runtime`), how it gets its parameters and how its output is read.
//! Loaded from `packs/<pack>/actions/<name>.yaml` by `attune-pack`; snapshotted into every execution so
//! that re-loading a pack never changes work already accepted.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::names::{ActionRef, PackRef};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum Runtime {
    /// In-process in the worker (`core.noop`, `core.sleep`).
    Builtin,
    Shell,
    Python,
    Node,
    /// An executable file.
    Native,
    /// Run by the server's workflow engine: `entry_point` is the definition's file, and the
    /// action carries the checked definition (`Action::workflow`). No worker claims it.
    Workflow,
    /// A question to a person (`core.ask`): waits `pending` for a response. No worker claims it.
    Inquiry,
}

impl Runtime {
    pub const ALL: [Runtime; 7] = [
        Runtime::Builtin,
        Runtime::Shell,
        Runtime::Python,
        Runtime::Node,
        Runtime::Native,
        Runtime::Workflow,
        Runtime::Inquiry,
    ];
    /// The runtimes a worker may run (the others are run by the server).
    pub const WORKER: [Runtime; 5] =
        [Runtime::Builtin, Runtime::Shell, Runtime::Python, Runtime::Node, Runtime::Native];
    pub fn as_str(self) -> &'static str {
        match self {
            Runtime::Builtin => "builtin",
            Runtime::Shell => "shell",
            Runtime::Python => "python",
            Runtime::Node => "node",
            Runtime::Native => "native",
            Runtime::Workflow => "workflow",
            Runtime::Inquiry => "inquiry",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|r| r.as_str() == s)
    }

    /// Whether the server runs it (workflows, inquiries) rather than a worker.
    pub fn server_side(self) -> bool {
        matches!(self, Runtime::Workflow | Runtime::Inquiry)
    }
}

impl std::fmt::Display for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum ParameterDelivery {
    #[default]
    Stdin,
    File,
    Env,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum ParameterFormat {
    #[default]
    Json,
    Yaml,
    Dotenv,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum OutputFormat {
    #[default]
    Text,
    Json,
    Yaml,
    Jsonl,
}

impl OutputFormat {
    /// How people call the format.
    pub fn label(self) -> &'static str {
        match self {
            OutputFormat::Text => "text",
            OutputFormat::Json => "JSON",
            OutputFormat::Yaml => "YAML",
            OutputFormat::Jsonl => "JSON Lines",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct RetryPolicy {
    /// Total attempts, including the first. 1 means no retry.
    #[serde(default = "one")]
    pub max_attempts: u32,
    /// Seconds to wait before a retried attempt may start.
    #[serde(default)]
    pub backoff_seconds: u64,
}

fn one() -> u32 {
    1
}

/// How many executions of an action (with the same rendered `key`) may run at once.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct ConcurrencyPolicy {
    /// At most this many hold a slot at once: delivered to a worker, running or being canceled.
    pub limit: u32,
    /// A template over `parameters` (`"{{ parameters.environment }}"`): executions with the same
    /// rendered key share the limit. Absent: one limit for the whole action.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    #[serde(default)]
    pub on_limit: OnLimit,
}

/// What a submission does when its key is at the limit already.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum OnLimit {
    /// Wait in `scheduled`, in order, for a slot.
    #[default]
    Queue,
    /// The new execution is canceled at once, with the reason.
    CancelNew,
    /// The oldest open execution of the key is canceled, and the new one waits for its slot.
    CancelOldest,
}

/// How often executions of an action (with the same rendered `key`) may start: a token bucket
/// refilled at `per_second`, holding at most `burst`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct RateLimit {
    pub per_second: f64,
    /// Starts allowed at once after a quiet spell (default: `per_second` rounded up, at least 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst: Option<u32>,
    /// A template over `parameters`; executions with the same rendered key share the bucket.
    /// Absent: one bucket for the whole action.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
}

impl RateLimit {
    pub fn burst(&self) -> u32 {
        self.burst.unwrap_or_else(|| (self.per_second.ceil() as u32).max(1))
    }
}

/// Most executions a concurrency limit may allow at once.
pub const MAX_CONCURRENCY_LIMIT: u32 = 10_000;

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy { max_attempts: 1, backoff_seconds: 0 }
    }
}

/// A loaded action, as stored and as handed to workers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Action {
    #[serde(rename = "ref")]
    pub action_ref: ActionRef,
    pub pack: PackRef,
    #[serde(default)]
    pub description: String,
    pub runtime: Runtime,
    /// Script or executable relative to the pack's `actions/` directory; the builtin's name for
    /// `builtin` actions.
    pub entry_point: String,
    /// JSON Schema (an object schema) for the parameters.
    pub parameters: Value,
    #[serde(default)]
    pub parameter_delivery: ParameterDelivery,
    #[serde(default)]
    pub parameter_format: ParameterFormat,
    #[serde(default)]
    pub output_format: OutputFormat,
    #[serde(default)]
    pub timeout_seconds: Option<u64>,
    #[serde(default)]
    pub retry: RetryPolicy,
    /// Absolute path of the pack directory on the machine that loaded it; workers resolve
    /// `entry_point` under `<pack_dir>/actions/`.
    #[serde(default)]
    pub pack_dir: Option<String>,
    /// The sha256 of the pack archive it belongs to (`attune_pack::archive`): workers fetch that
    /// version by this digest and run the entry point from it, so an execution runs the content
    /// it was submitted against whatever was loaded since. Absent for actions loaded before packs
    /// were stored as content: then workers use `pack_dir`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pack_digest: Option<String>,
    /// How long an execution may wait to be started before it fails with the seed's
    /// schedule-to-start error; absent: the server's `executor.scheduled_timeout`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheduled_timeout_seconds: Option<u64>,
    /// Labels a worker must have, each with the same value, to run it (`{region: eu}`).
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub worker_selector: std::collections::BTreeMap<String, String>,
    /// How many may run at once, per rendered key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concurrency: Option<ConcurrencyPolicy>,
    /// How often they may start, per rendered key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limit: Option<RateLimit>,
    /// Higher is taken first (-100 to 100, default 0); each step is worth a minute of waiting
    /// (see `queue_rank`), so the lowest still goes first once it has waited long enough.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub priority: i32,
    /// A `workflow` action's definition, checked when its pack loaded (`attune-workflow`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workflow: Option<Value>,
    /// Whether it may be run (`enabled: false` in its YAML: loaded, shown, refused at submission).
    #[serde(default = "yes", skip_serializing_if = "is_true")]
    pub enabled: bool,
    /// What its result looks like (JSON Schema), as documentation: shown, not enforced.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_schema: Option<Value>,
    /// How its program expects to be run: this version's conventions, or the original Attune's.
    #[serde(default, skip_serializing_if = "Dialect::is_attune")]
    pub dialect: Dialect,
}

/// Whose conventions an action's program follows (`docs/original-attune-packs.md`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum Dialect {
    /// `/bin/sh`, run in `actions/`, dotenv keys joined by `__`, output that must parse.
    #[default]
    Attune,
    /// The original Attune's (an action file with `runner_type`, or without `runtime`): shell
    /// scripts run by bash in the pack directory, dotenv with dotted keys and arrays as JSON,
    /// parameters followed by a newline on stdin, its environment names, and output that is
    /// parsed when it can be (the whole of stdout, else its last line) and kept as text when not.
    Original,
}

impl Dialect {
    pub fn is_attune(&self) -> bool {
        *self == Dialect::Attune
    }
}

fn yes() -> bool {
    true
}

fn is_true(b: &bool) -> bool {
    *b
}

fn is_zero(p: &i32) -> bool {
    *p == 0
}

/// Lowest and highest priority.
pub const PRIORITY_RANGE: std::ops::RangeInclusive<i32> = -100..=100;

/// What a priority step is worth in waiting time.
pub const PRIORITY_STEP_MS: i64 = 60_000;

/// The order waiting executions are taken in, smallest first: the time it was submitted, moved
/// earlier by a minute per priority step. An execution submitted now with priority 10 goes before
/// one of priority 0 submitted up to ten minutes ago, and after one submitted earlier than that —
/// so no priority starves: the lowest waits at most 200 minutes longer than it would in plain FIFO.
pub fn queue_rank(submitted_ms: i64, priority: i32) -> i64 {
    submitted_ms - priority as i64 * PRIORITY_STEP_MS
}

/// Whether `k` may be a worker label's or a selector's name: 1 to 63 of `A-Z a-z 0-9 . _ -`.
pub fn valid_label_name(k: &str) -> bool {
    !k.is_empty()
        && k.len() <= 63
        && k.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

/// A label's value as text (`true` and `3` match `"true"` and `"3"`), or why it cannot be one.
pub fn label_value(v: &Value) -> Result<String, String> {
    match v {
        Value::String(s) if s.len() <= 253 && !s.chars().any(char::is_control) => Ok(s.clone()),
        Value::String(_) => Err("a text of at most 253 characters without control characters".into()),
        Value::Bool(b) => Ok(b.to_string()),
        Value::Number(n) => Ok(n.to_string()),
        _ => Err("a text, a number or true/false".into()),
    }
}

/// Labels (or a selector) as a map of text values, from a JSON object (`null`: none); or the first
/// problem, naming the label.
pub fn labels_from(v: &Value) -> Result<std::collections::BTreeMap<String, String>, String> {
    let mut out = std::collections::BTreeMap::new();
    match v {
        Value::Null => {}
        Value::Object(m) => {
            for (k, x) in m {
                if !valid_label_name(k) {
                    return Err(format!("label name {k:?} must be 1 to 63 of A-Z a-z 0-9 . _ -"));
                }
                out.insert(k.clone(), label_value(x).map_err(|e| format!("label {k}: must be {e}"))?);
            }
        }
        _ => return Err("labels must be a mapping of name to value".into()),
    }
    Ok(out)
}

/// Whether labels satisfy a selector: every selected label present with the same value.
pub fn labels_match(
    selector: &std::collections::BTreeMap<String, String>,
    labels: &std::collections::BTreeMap<String, String>,
) -> bool {
    selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

impl Action {
    /// Names of parameters marked `secret: true` in the schema's `properties`.
    pub fn secret_parameters(&self) -> Vec<String> {
        self.parameters
            .get("properties")
            .and_then(Value::as_object)
            .map(|props| {
                props
                    .iter()
                    .filter(|(_, p)| p.get("secret").and_then(Value::as_bool) == Some(true))
                    .map(|(k, _)| k.clone())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// `parameters` with secret values replaced by a mask, for anything shown to people.
    pub fn mask_parameters(&self, params: &Value) -> Value {
        let secrets = self.secret_parameters();
        if secrets.is_empty() {
            return params.clone();
        }
        let mut out = params.clone();
        if let Some(map) = out.as_object_mut() {
            for k in secrets {
                if let Some(v) = map.get_mut(&k) {
                    *v = Value::String(crate::output::MASK.to_owned());
                }
            }
        }
        out
    }
}

/// The JSON Schema an inquiry's answer must match: its `schema` parameter, or `response_schema`
/// (the original Attune's name, in packs written for it).
pub fn inquiry_schema(parameters: &Value) -> Option<&Value> {
    parameters.get("schema").filter(|v| !v.is_null()).or_else(|| parameters.get("response_schema"))
}

/// A pack's manifest (`pack.yaml`) as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PackMeta {
    #[serde(rename = "ref")]
    pub pack_ref: PackRef,
    #[serde(default)]
    pub label: String,
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub version: String,
    /// Absolute directory the pack was loaded from.
    #[serde(default)]
    pub dir: Option<String>,
    /// The pack's configuration (`config`), checked against `conf_schema` when it loaded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<Value>,
    /// The JSON Schema of its configuration (`conf_schema`, flat form converted).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conf_schema: Option<Value>,
    /// What the loader accepted without using, or skipped, file by file (never a silent drop).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<PackNote>,
    /// The sha256 of the archive of its current version (absent before one was stored).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub digest: Option<String>,
}

/// Keys of a pack file that were accepted but are not used by this version, or a file skipped,
/// and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PackNote {
    /// Relative to the pack directory (`pack.yaml`, `actions/http.yaml`).
    pub file: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub keys: Vec<String>,
    pub note: String,
}

/// A loaded pack as listed: its manifest, how many actions it has, when it was last loaded.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PackSummary {
    #[serde(flatten)]
    pub meta: PackMeta,
    pub actions: u32,
    pub loaded_at: crate::Timestamp,
    /// The size in bytes of its current archive.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size: Option<u64>,
}

/// One stored version of a pack: its archive, by digest. Versions are kept when a pack changes,
/// so executions accepted earlier still run what they were submitted against.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PackVersion {
    pub digest: String,
    /// Of the compressed archive.
    pub size: u64,
    pub stored_at: crate::Timestamp,
    /// Whether its actions are the ones new submissions run.
    pub current: bool,
}

/// A pack with its stored versions, newest first (`GET /api/v1/packs/{ref}`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PackDetail {
    #[serde(flatten)]
    pub summary: PackSummary,
    pub versions: Vec<PackVersion>,
}

/// The builtins every worker runs in-process (`runtime: builtin`, `entry_point: <name>`).
pub const BUILTINS: &[&str] = &["noop", "sleep", "fail"];
