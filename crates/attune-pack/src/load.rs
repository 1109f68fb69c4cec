//! Reading one pack directory:
//!
//! ```text
//! <dir>/pack.yaml            ref, label, description, version
//! <dir>/actions/<name>.yaml  one action each
//! <dir>/actions/<script>     entry points
//! <dir>/triggers/<name>.yaml one trigger type each: ref, description, parameters, payload
//! <dir>/rules/<name>.yaml    one rule each: ref, enabled, trigger, criteria, action, overlap
//! <dir>/sensors/<name>.yaml  one sensor each: ref, runtime, entry_point, trigger_types, parameters
//! <dir>/sensors/<program>    sensors' entry points
//! ```

use std::{
    fmt,
    path::{Path, PathBuf},
};

use attune_core::rules::{
    builtin_trigger_types, Criterion, Overlap, Rule, RuleAction, TriggerSpec, TriggerType,
};
use attune_core::sensors::Sensor;
use attune_core::{
    Action, ActionRef, Dialect, OutputFormat, PackMeta, PackNote, PackRef, ParameterDelivery,
    ParameterFormat, RetryPolicy, Runtime,
};
use serde::de::DeserializeOwned;
use serde_json::{Map, Value};

use crate::{
    check::{check_action, check_parameters},
    original,
    schema::default_schema,
};

#[derive(Debug, Clone)]
pub struct LoadedPack {
    pub meta: PackMeta,
    pub actions: Vec<Action>,
    pub triggers: Vec<TriggerType>,
    pub rules: Vec<Rule>,
    pub sensors: Vec<Sensor>,
}

impl LoadedPack {
    /// Marks the pack, its actions and its sensors as the version whose archive has `digest`, and
    /// records where it came from (`dir`: the loading machine's directory, or none when the pack
    /// arrived as an archive and was read from a staging directory that is gone afterwards).
    pub fn stamp(&mut self, digest: &str, dir: Option<String>) {
        self.meta.digest = Some(digest.to_owned());
        self.meta.dir = dir.clone();
        for a in &mut self.actions {
            a.pack_digest = Some(digest.to_owned());
            a.pack_dir = dir.clone();
        }
        for s in &mut self.sensors {
            s.pack_digest = Some(digest.to_owned());
            s.pack_dir = dir.clone();
        }
    }
}

/// One problem, located: the file, and the field when there is one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PackError {
    pub file: PathBuf,
    pub field: Option<String>,
    pub message: String,
}

impl fmt::Display for PackError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(field) = &self.field {
            write!(f, ": field `{field}`")?;
        }
        write!(f, ": {}", self.message)
    }
}

/// Every problem found in a pack; the pack was not loaded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PackErrors(pub Vec<PackError>);

impl fmt::Display for PackErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for PackErrors {}

const PACK_FIELDS: &[&str] = &["ref", "label", "description", "version", "author", "email", "keywords"];
const ACTION_FIELDS: &[&str] = &[
    "ref",
    "description",
    "runtime",
    "entry_point",
    "parameters",
    "parameter_delivery",
    "parameter_format",
    "output_format",
    "timeout_seconds",
    "retry",
    "scheduled_timeout_seconds",
    "worker_selector",
    "concurrency",
    "rate_limit",
    "priority",
];

const TRIGGER_FIELDS: &[&str] = &["ref", "description", "parameters", "payload"];

/// The keys of several lists, each once, in order.
fn keys(lists: &[&[&'static str]]) -> Vec<&'static str> {
    let mut out: Vec<&'static str> = Vec::new();
    for k in lists.iter().flat_map(|l| l.iter()) {
        if !out.contains(k) {
            out.push(k);
        }
    }
    out
}

/// `file` relative to its pack directory, for notes (`pack.yaml`, `actions/http.yaml`): every
/// file a note names is the manifest or one directly in a directory of the pack.
fn rel(file: &Path) -> String {
    let name = file.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    match file.parent().and_then(|p| p.file_name()).and_then(|d| d.to_str()) {
        Some(d) if name != "pack.yaml" => format!("{d}/{name}"),
        _ => name,
    }
}

fn not_used(file: &Path, keys: Vec<String>) -> Option<PackNote> {
    (!keys.is_empty()).then(|| PackNote {
        file: rel(file),
        keys,
        note: "accepted (the original Attune's format); not used by this version".into(),
    })
}

/// Directories of the original's packs that this version does not read, and why.
const SKIPPED_DIRS: &[(&str, &str)] = &[
    ("permission_sets", "the original's permission sets are not loaded by this version: tokens have roles (admin, operator, viewer, worker)"),
    ("workflows", "a workflow at the pack's root (the original's legacy layout) is not loaded: a workflow is an action whose entry point is actions/workflows/<name>.yaml"),
    ("runtimes", "runtimes are built into this version (shell, python, node, native)"),
    ("dashboards", "dashboards are not part of this version"),
    ("queues", "the original's queues are not part of this version"),
    ("caches", "the original's caches are not part of this version"),
];
const RULE_FIELDS: &[&str] = &["ref", "description", "enabled", "trigger", "criteria", "action", "overlap"];
const SENSOR_FIELDS: &[&str] =
    &["ref", "description", "enabled", "runtime", "entry_point", "trigger_types", "parameters"];

/// Collects located errors while reading one YAML document.
struct Doc<'a> {
    file: &'a Path,
    map: Map<String, Value>,
    errors: &'a mut Vec<PackError>,
}

impl<'a> Doc<'a> {
    fn open(file: &'a Path, errors: &'a mut Vec<PackError>, allowed: &[&str]) -> Option<Doc<'a>> {
        let text = match std::fs::read_to_string(file) {
            Ok(t) => t,
            Err(e) => {
                errors.push(PackError {
                    file: file.into(),
                    field: None,
                    message: format!("cannot read: {e}"),
                });
                return None;
            }
        };
        // Read as YAML's own value first: it refuses a key given twice (which would otherwise
        // silently keep the last one), then converted to JSON's.
        let parsed =
            serde_yaml::from_str::<serde_yaml::Value>(&text).and_then(serde_yaml::from_value::<Value>);
        let map = match parsed {
            Ok(Value::Object(m)) => m,
            Ok(_) => {
                errors.push(PackError {
                    file: file.into(),
                    field: None,
                    message: "expected a YAML mapping".into(),
                });
                return None;
            }
            Err(e) => {
                errors.push(PackError {
                    file: file.into(),
                    field: None,
                    message: format!("invalid YAML: {e}"),
                });
                return None;
            }
        };
        Some(Doc::new(file, map, errors, allowed))
    }

    /// A document already read (or translated from the original's dialect), checked for unknown keys.
    fn new(
        file: &'a Path,
        map: Map<String, Value>,
        errors: &'a mut Vec<PackError>,
        allowed: &[&str],
    ) -> Doc<'a> {
        let mut doc = Doc { file, map, errors };
        let unknown: Vec<String> =
            doc.map.keys().filter(|k| !allowed.contains(&k.as_str())).cloned().collect();
        for k in unknown {
            doc.err(&k, format!("unknown field; expected one of: {}", allowed.join(", ")));
        }
        doc
    }

    /// A schema given under either of two names (this version's and the original's, equal if
    /// both), flat or JSON Schema (`original::flat_to_schema`), that must compile.
    fn schema_under(&mut self, name: &str, alias: &str) -> Option<Value> {
        let (k, v) = match original::one_of(&self.map, name, alias) {
            Ok(found) => found?,
            Err(e) => {
                self.err(alias, e);
                return None;
            }
        };
        let schema = match original::flat_to_schema(&k, &v) {
            Ok(schema) => schema,
            Err((field, message)) => {
                self.err(&field, message);
                return None;
            }
        };
        match crate::ParamValidator::compile(&schema) {
            Ok(_) => Some(schema),
            Err(e) => {
                self.err(&k, format!("is not a valid schema: {e}"));
                None
            }
        }
    }

    /// The keys of `list` this document has, for a "not used by this version" note.
    fn present(&self, list: &[&str]) -> Vec<String> {
        list.iter().filter(|k| self.map.contains_key(**k)).map(|k| k.to_string()).collect()
    }

    fn err(&mut self, field: &str, message: impl Into<String>) {
        self.errors.push(PackError {
            file: self.file.into(),
            field: Some(field.into()),
            message: message.into(),
        });
    }

    fn string(&mut self, field: &str, required: bool) -> Option<String> {
        match self.map.get(field) {
            None | Some(Value::Null) if required => {
                self.err(field, "is required");
                None
            }
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => Some(s.clone()),
            Some(other) => {
                self.err(field, format!("must be a string, found {}", kind(other)));
                None
            }
        }
    }

    /// A true/false field (absent: `default`).
    fn flag(&mut self, field: &str, default: bool) -> bool {
        match self.map.get(field) {
            None | Some(Value::Null) => default,
            Some(Value::Bool(b)) => *b,
            Some(other) => {
                let found = kind(other);
                self.err(field, format!("must be true or false, found {found}"));
                default
            }
        }
    }

    /// A field read with serde (enums, numbers, structs), with serde's message located.
    fn typed<T: DeserializeOwned>(&mut self, field: &str, what: &str) -> Option<T> {
        let v = self.map.get(field)?.clone();
        if v.is_null() {
            return None;
        }
        match serde_json::from_value::<T>(v) {
            Ok(t) => Some(t),
            Err(e) => {
                self.err(field, format!("{e}; expected {what}"));
                None
            }
        }
    }
}

fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "a mapping",
    }
}

/// Loads the pack in `dir`. Returns every problem found, or the whole pack.
pub fn load_pack_dir(dir: &Path) -> Result<LoadedPack, PackErrors> {
    let mut errors = Vec::new();
    let dir_abs = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
    let manifest = dir.join("pack.yaml");
    if !manifest.is_file() {
        return Err(PackErrors(vec![PackError {
            file: manifest,
            field: None,
            message: "not found: a pack directory needs a pack.yaml with at least `ref`".into(),
        }]));
    }
    let mut notes = Vec::new();
    let manifest = read_manifest(&manifest, &dir_abs, &mut errors, &mut notes);
    let mut actions = Vec::new();
    let mut triggers = Vec::new();
    let mut rules = Vec::new();
    let mut sensors = Vec::new();
    let meta = manifest.map(|(meta, selector)| {
        for f in yaml_files(&dir.join("actions"), &mut errors) {
            let a = read_action(&f, &meta, &selector, &dir_abs, &mut errors, &mut notes);
            add_once(&mut actions, a, f, |a| &a.action_ref, &mut errors);
        }
        for f in yaml_files(&dir.join("policies"), &mut errors) {
            apply_policy(&f, &meta, &mut actions, &mut errors, &mut notes);
        }
        check_workflow_actions(&meta, &dir_abs, &actions, &mut errors);
        for f in yaml_files(&dir.join("triggers"), &mut errors) {
            let t = read_trigger(&f, &meta, &mut errors, &mut notes);
            add_once(&mut triggers, t, f, |t| &t.type_ref, &mut errors);
        }
        for f in yaml_files(&dir.join("rules"), &mut errors) {
            let r = read_rule(&f, &meta, &triggers, &mut errors, &mut notes);
            add_once(&mut rules, r, f, |r| &r.rule_ref, &mut errors);
        }
        for f in yaml_files(&dir.join("sensors"), &mut errors) {
            let x = read_sensor(&f, &meta, &dir_abs, &triggers, &mut errors, &mut notes);
            add_once(&mut sensors, x, f, |x| &x.sensor_ref, &mut errors);
        }
        for (sub, why) in SKIPPED_DIRS {
            for f in yaml_files(&dir.join(sub), &mut errors) {
                notes.push(PackNote { file: rel(&f), keys: Vec::new(), note: format!("skipped: {why}") });
            }
        }
        PackMeta { notes: std::mem::take(&mut notes), ..meta }
    });
    match meta {
        Some(meta) if errors.is_empty() => Ok(LoadedPack { meta, actions, triggers, rules, sensors }),
        _ => Err(PackErrors(errors)),
    }
}

/// Adds what `file` defined to `all`, unless its ref is defined already (an error at `ref`).
fn add_once<T>(
    all: &mut Vec<T>,
    item: Option<T>,
    file: PathBuf,
    key: impl Fn(&T) -> &ActionRef,
    errors: &mut Vec<PackError>,
) {
    let Some(item) = item else { return };
    if all.iter().any(|x| key(x) == key(&item)) {
        let message = format!("{} is defined twice in this pack", key(&item));
        errors.push(PackError { file, field: Some("ref".into()), message });
    } else {
        all.push(item);
    }
}

/// The YAML files directly in `dir`, sorted; none when it does not exist.
fn yaml_files(dir: &Path, errors: &mut Vec<PackError>) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = match std::fs::read_dir(dir) {
        Ok(rd) => rd
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml")))
            .collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => {
            errors.push(PackError { file: dir.into(), field: None, message: format!("cannot read: {e}") });
            Vec::new()
        }
    };
    files.sort();
    files
}

/// `r` as a ref of this pack: `name` alone is `PACK.name`; a full ref must name this pack.
fn own_ref(doc: &mut Doc<'_>, pack: &PackMeta) -> Option<ActionRef> {
    let r = doc.string("ref", true)?;
    let full = if r.contains('.') { r.clone() } else { format!("{}.{r}", pack.pack_ref) };
    match ActionRef::parse(&full) {
        Ok(a) if a.pack() == pack.pack_ref => Some(a),
        Ok(a) => {
            doc.err("ref", format!("{a} belongs to pack {}, not to this pack {}", a.pack(), pack.pack_ref));
            None
        }
        Err(e) => {
            doc.err("ref", e.to_string());
            None
        }
    }
}

/// A JSON Schema field that must compile (absent: `default`).
fn schema_field(doc: &mut Doc<'_>, field: &str, default: Value) -> Value {
    let v = match doc.map.get(field).cloned() {
        None | Some(Value::Null) => default,
        Some(v) => v,
    };
    if let Err(e) = crate::ParamValidator::compile(&v) {
        doc.err(field, format!("is not a valid JSON Schema: {e}"));
    }
    v
}

fn read_trigger(
    file: &Path,
    pack: &PackMeta,
    errors: &mut Vec<PackError>,
    notes: &mut Vec<PackNote>,
) -> Option<TriggerType> {
    let before = errors.len();
    let allowed = keys(&[TRIGGER_FIELDS, original::TRIGGER_KEYS_USED, original::TRIGGER_KEYS_NOT_USED]);
    let mut doc = Doc::open(file, errors, &allowed)?;
    let unused = doc.present(original::TRIGGER_KEYS_NOT_USED);
    // The original's names and forms: `output` is the payload's schema, both may be flat maps.
    match original::one_of(&doc.map, "payload", "output") {
        Err(e) => doc.err("output", e),
        Ok(Some((k, v))) if k == "output" => {
            doc.map.remove("output");
            doc.map.insert("payload".into(), v);
        }
        Ok(_) => {}
    }
    for k in ["parameters", "payload"] {
        if let Some(v) = doc.map.get(k).filter(|v| !v.is_null()).cloned() {
            match original::flat_to_schema(k, &v) {
                Ok(schema) => {
                    doc.map.insert(k.into(), schema);
                }
                Err((f, m)) => doc.err(&f, m),
            }
        }
    }
    let type_ref = own_ref(&mut doc, pack);
    let description = doc.string("description", false).unwrap_or_default();
    let parameters = schema_field(&mut doc, "parameters", serde_json::json!({"type": "object"}));
    let payload = schema_field(&mut doc, "payload", serde_json::json!({"type": "object"}));
    if doc.errors.len() == before {
        notes.extend(not_used(file, unused));
    }
    if let Some(t) = &type_ref {
        if builtin_trigger_types().iter().any(|b| b.type_ref == *t) {
            doc.err("ref", format!("{t} is a built-in trigger type"));
        }
    }
    let type_ref = type_ref?;
    (doc.errors.len() == before).then(|| TriggerType {
        type_ref,
        pack: pack.pack_ref.clone(),
        description,
        parameters,
        payload,
    })
}

fn read_rule(
    file: &Path,
    pack: &PackMeta,
    triggers: &[TriggerType],
    errors: &mut Vec<PackError>,
    notes: &mut Vec<PackNote>,
) -> Option<Rule> {
    let before = errors.len();
    let allowed = keys(&[RULE_FIELDS, original::RULE_KEYS_TRANSLATED, original::RULE_KEYS_NOT_USED]);
    let mut doc = Doc::open(file, errors, &allowed)?;
    if original::is_original_rule(&doc.map) {
        match original::translate_rule(&doc.map, pack.pack_ref.as_str()) {
            original::Translated::Rule(map, unused) => {
                if doc.errors.len() > before {
                    return None;
                }
                let Doc { errors, .. } = doc;
                let r = read_rule_doc(Doc::new(file, map, errors, RULE_FIELDS), pack, triggers, before);
                if r.is_some() {
                    notes.extend(not_used(file, unused));
                }
                return r;
            }
            original::Translated::Skip(why) => {
                let r = doc.string("ref", false).unwrap_or_default();
                notes.push(PackNote {
                    file: rel(file),
                    keys: Vec::new(),
                    note: format!("skipped rule {r}: {why}"),
                });
                return None;
            }
            original::Translated::Invalid(field, message) => {
                doc.err(&field, message);
                return None;
            }
        }
    }
    read_rule_doc(doc, pack, triggers, before)
}

/// A rule in this version's format (perhaps translated from the original's).
fn read_rule_doc(mut doc: Doc<'_>, pack: &PackMeta, triggers: &[TriggerType], before: usize) -> Option<Rule> {
    let rule_ref = own_ref(&mut doc, pack);
    let description = doc.string("description", false).unwrap_or_default();
    let enabled = doc.flag("enabled", true);
    let overlap: Overlap = doc.typed("overlap", "allow, skip or buffer_one").unwrap_or_default();
    let trigger: Option<TriggerSpec> = match doc.map.get("trigger") {
        None | Some(Value::Null) => {
            doc.err("trigger", "is required: { type: core.webhook, parameters: { name: … } }");
            None
        }
        Some(_) => doc.typed("trigger", "a mapping with `type` (a trigger type's ref) and `parameters`"),
    };
    if let Some(t) = &trigger {
        if !t.parameters.is_object() {
            doc.err("trigger.parameters", "must be a mapping");
        }
        let known = builtin_trigger_types()
            .into_iter()
            .chain(triggers.iter().cloned())
            .find(|x| x.type_ref == t.type_ref);
        match known {
            Some(tt) => {
                match crate::ParamValidator::compile(&tt.parameters).map(|v| v.validate(&t.parameters)) {
                    Ok(Err(problems)) => doc.err("trigger.parameters", problems.join("; ")),
                    Ok(Ok(())) => {
                        if t.type_ref.as_str() == "core.cron" {
                            let expr =
                                t.parameters.get("expression").and_then(Value::as_str).unwrap_or_default();
                            let tz = t.parameters.get("timezone").and_then(Value::as_str);
                            if let Err(e) = attune_rules::schedule::CronSchedule::parse(expr, tz) {
                                doc.err("trigger.parameters", e);
                            }
                        }
                        if let Some(at) = t.parameters.get("at").and_then(Value::as_str) {
                            if t.type_ref.as_str() == "core.datetime"
                                && chrono::DateTime::parse_from_rfc3339(at).is_err()
                            {
                                doc.err(
                                    "trigger.parameters.at",
                                    format!("{at:?} is not an RFC 3339 date-time (2026-01-31T09:00:00Z)"),
                                );
                            }
                        }
                    }
                    Err(_) => {}
                }
            }
            // Another pack's type: the server checks it when the pack is loaded.
            None if t.type_ref.pack() != pack.pack_ref && t.type_ref.pack().as_str() != "core" => {}
            None => doc.err("trigger.type", format!("unknown trigger type {}", t.type_ref)),
        }
    }
    let mut criteria = Vec::new();
    match doc.map.get("criteria").cloned() {
        None | Some(Value::Null) => {}
        Some(Value::Object(m)) => {
            for (key, c) in m {
                let field = format!("criteria.{key}");
                let mut obj = match c {
                    Value::Object(o) => o,
                    other => {
                        doc.err(
                            &field,
                            format!("must be a mapping with `type` and `pattern`, found {}", kind(&other)),
                        );
                        continue;
                    }
                };
                obj.insert("key".into(), Value::String(key.clone()));
                match serde_json::from_value::<Criterion>(Value::Object(obj)) {
                    Ok(c) => match attune_rules::check_criterion(&c) {
                        Ok(()) => criteria.push(c),
                        Err(e) => doc.err(&field, e),
                    },
                    Err(e) => {
                        let ops: Vec<&str> = attune_core::rules::Op::ALL.iter().map(|o| o.as_str()).collect();
                        doc.err(
                            &field,
                            format!("{e}; expected {{ type: one of {}, pattern: … }}", ops.join(", ")),
                        )
                    }
                }
            }
        }
        Some(other) => doc.err(
            "criteria",
            format!("must be a mapping of key → {{ type, pattern }}, found {}", kind(&other)),
        ),
    }
    let action: Option<RuleAction> = match doc.map.get("action") {
        None | Some(Value::Null) => {
            doc.err("action", "is required: { ref: core.echo, parameters: { … } }");
            None
        }
        Some(_) => doc.typed("action", "a mapping with `ref` (an action's ref) and `parameters`"),
    };
    if let Some(a) = &action {
        if !a.parameters.is_object() {
            doc.err("action.parameters", "must be a mapping");
        } else if let Err(e) = attune_template::check_syntax(&a.parameters, "action.parameters") {
            doc.err(&e.path, e.message);
        }
    }
    let (rule_ref, trigger, action) = (rule_ref?, trigger?, action?);
    (doc.errors.len() == before).then_some(Rule {
        rule_ref,
        pack: pack.pack_ref.clone(),
        description,
        enabled,
        trigger,
        criteria,
        action,
        overlap,
        pack_config: pack.config.clone(),
    })
}

fn read_sensor(
    file: &Path,
    pack: &PackMeta,
    dir_abs: &Path,
    triggers: &[TriggerType],
    errors: &mut Vec<PackError>,
    notes: &mut Vec<PackNote>,
) -> Option<Sensor> {
    let before = errors.len();
    let allowed = keys(&[SENSOR_FIELDS, original::SENSOR_KEYS]);
    let mut doc = Doc::open(file, errors, &allowed)?;
    if !doc.map.contains_key("runtime") {
        // The original's sensor (`runner_type`, native by default): loaded disabled, since its
        // program talks to the original's API and notifier while this version's sensors write one
        // JSON event per line on stdout; or skipped when it cannot be loaded at all.
        let r = doc.string("ref", false).unwrap_or_default();
        match original::translate_sensor(&doc.map, pack.pack_ref.as_str(), dir_abs) {
            Ok((map, unused)) => {
                notes.push(PackNote {
                    file: rel(file),
                    keys: unused,
                    note: format!(
                        "sensor {r} loaded disabled: the original's sensors talk to its API and notifier, this \
                         version's write one JSON event per line on stdout; enable it (attune sensor enable) once \
                         its program does. The other keys are not used by this version"
                    ),
                });
                let Doc { errors, .. } = doc;
                doc = Doc::new(file, map, errors, SENSOR_FIELDS);
            }
            Err(why) => {
                notes.push(PackNote {
                    file: rel(file),
                    keys: Vec::new(),
                    note: format!("skipped sensor {r}: {why}"),
                });
                return None;
            }
        }
    }
    if let Some(k) = original::SENSOR_KEYS.iter().find(|k| doc.map.contains_key(**k)) {
        doc.err(k, "is the original Attune's sensor key; this version's sensors take ref, description, enabled, runtime, entry_point, trigger_types, parameters");
    }
    let sensor_ref = own_ref(&mut doc, pack);
    let description = doc.string("description", false).unwrap_or_default();
    let enabled = doc.flag("enabled", true);
    let runtime = doc.string("runtime", true).and_then(|r| match Runtime::parse(&r) {
        Some(Runtime::Builtin | Runtime::Workflow | Runtime::Inquiry) => {
            doc.err("runtime", "a sensor is a program: shell, python, node or native");
            None
        }
        Some(rt) => Some(rt),
        None => {
            doc.err(
                "runtime",
                format!("unknown runtime {r:?}; expected one of: shell, python, node, native"),
            );
            None
        }
    });
    let entry_point = doc.string("entry_point", true);
    if let (Some(rt), Some(ep)) = (runtime, &entry_point) {
        check_entry_file(&mut doc, rt, dir_abs, "sensors", ep);
    }
    let trigger_types: Vec<ActionRef> = match doc.map.get("trigger_types") {
        None | Some(Value::Null) => {
            doc.err("trigger_types", "is required: the trigger types whose events it emits, [pack.type, …]");
            Vec::new()
        }
        Some(_) => {
            doc.typed("trigger_types", "a list of trigger type refs ([pack.type, …])").unwrap_or_default()
        }
    };
    if doc.map.get("trigger_types").is_some_and(|v| v.as_array().is_some_and(|a| a.is_empty())) {
        doc.err("trigger_types", "must name at least one trigger type");
    }
    for t in &trigger_types {
        if builtin_trigger_types().iter().any(|b| b.type_ref == *t) {
            doc.err(
                "trigger_types",
                format!("{t} is a built-in trigger type, whose events the server makes"),
            );
        } else if t.pack() == pack.pack_ref && !triggers.iter().any(|x| x.type_ref == *t) {
            doc.err(
                "trigger_types",
                format!("unknown trigger type {t}: this pack's triggers/ does not define it"),
            );
        }
        // Another pack's type: the server checks it when the pack is loaded.
    }
    let parameters = match doc.map.get("parameters").cloned() {
        None | Some(Value::Null) => Value::Object(Map::new()),
        Some(v @ Value::Object(_)) => v,
        Some(other) => {
            doc.err(
                "parameters",
                format!("must be a mapping of values for the sensor, found {}", kind(&other)),
            );
            Value::Null
        }
    };
    let (sensor_ref, runtime, entry_point) = (sensor_ref?, runtime?, entry_point?);
    (doc.errors.len() == before).then(|| Sensor {
        sensor_ref,
        pack: pack.pack_ref.clone(),
        description,
        runtime,
        entry_point,
        trigger_types,
        parameters,
        enabled,
        pack_dir: pack.dir.clone(),
        pack_digest: None,
    })
}

/// An original policy file (`policies/*.yaml`): its concurrency and rate limits become the queue
/// policies of the actions it names (or of every action of the pack); an action's own policy
/// stays and the policy's is noted as not applied.
fn apply_policy(
    file: &Path,
    pack: &PackMeta,
    actions: &mut [Action],
    errors: &mut Vec<PackError>,
    notes: &mut Vec<PackNote>,
) {
    let Some(mut doc) = Doc::open(file, errors, original::POLICY_KEYS) else { return };
    let policy = match original::read_policy(&doc.map, pack.pack_ref.as_str()) {
        Ok(p) => p,
        Err((field, message)) => return doc.err(&field, message),
    };
    let mut said = Vec::new();
    if !policy.enabled {
        said.push("disabled (enabled: false): not applied".to_owned());
    } else {
        let targets: Vec<&mut Action> = actions
            .iter_mut()
            .filter(|a| policy.action.as_deref().is_none_or(|r| a.action_ref.as_str() == r))
            .collect();
        if targets.is_empty() {
            if let Some(r) = &policy.action {
                doc.err("action_ref", format!("unknown action {r}: this pack has no such action"));
                return;
            }
        }
        for a in targets {
            if let Some(c) = &policy.concurrency {
                if a.concurrency.is_some() {
                    said.push(format!(
                        "{}: has its own concurrency; the policy's is not applied",
                        a.action_ref
                    ));
                } else {
                    a.concurrency = Some(c.clone());
                }
            }
            if let Some(r) = &policy.rate_limit {
                if a.rate_limit.is_some() {
                    said.push(format!(
                        "{}: has its own rate_limit; the policy's is not applied",
                        a.action_ref
                    ));
                } else {
                    a.rate_limit = Some(r.clone());
                }
            }
        }
        if policy.global {
            said.push("a global policy: applied to this pack's actions only".into());
        }
    }
    if !policy.unused.is_empty() {
        said.push("accepted (the original Attune's format); not used by this version".into());
    }
    if !said.is_empty() {
        notes.push(PackNote { file: rel(file), keys: policy.unused, note: said.join("; ") });
    }
}

/// `pack.yaml`: the manifest, and the labels every action of the pack requires unless it says
/// otherwise (the original's pack-level `worker_selector`).
fn read_manifest(
    file: &Path,
    dir_abs: &Path,
    errors: &mut Vec<PackError>,
    notes: &mut Vec<PackNote>,
) -> Option<(PackMeta, Labels)> {
    let allowed = keys(&[PACK_FIELDS, original::PACK_KEYS_USED, original::PACK_KEYS_NOT_USED]);
    let mut doc = Doc::open(file, errors, &allowed)?;
    notes.extend(not_used(file, doc.present(original::PACK_KEYS_NOT_USED)));
    let r = doc.string("ref", true);
    let label = match original::one_of(&doc.map, "label", "name") {
        Ok(Some((_, Value::String(l)))) => Some(l),
        Ok(Some((k, other))) => {
            let found = kind(&other);
            doc.err(&k, format!("must be a string, found {found}"));
            None
        }
        Ok(None) => None,
        Err(e) => {
            doc.err("name", e);
            None
        }
    };
    let conf_schema = doc.schema_under("conf_schema", "config_schema");
    let config = match doc.map.get("config").cloned() {
        None | Some(Value::Null) => None,
        Some(c @ Value::Object(_)) => {
            if let Some(schema) = &conf_schema {
                if let Ok(Err(problems)) = crate::ParamValidator::compile(schema).map(|v| v.validate(&c)) {
                    doc.err("config", format!("does not match conf_schema: {}", problems.join("; ")));
                }
            }
            Some(c)
        }
        Some(other) => {
            let found = kind(&other);
            doc.err("config", format!("must be a mapping, found {found}"));
            None
        }
    };
    let selector = match doc.map.get("worker_selector").cloned() {
        None | Some(Value::Null) => Labels::default(),
        Some(v) => attune_core::action::labels_from(&v).unwrap_or_else(|e| {
            doc.err("worker_selector", e);
            Labels::default()
        }),
    };
    let description = doc.string("description", false).unwrap_or_default();
    let version = match doc.map.get("version") {
        Some(Value::Number(n)) => Some(n.to_string()),
        _ => doc.string("version", false),
    };
    let pack_ref = match r.map(|r| PackRef::parse(&r)) {
        Some(Ok(p)) => p,
        Some(Err(e)) => {
            doc.err("ref", e.to_string());
            return None;
        }
        None => return None,
    };
    let meta = PackMeta {
        label: label.unwrap_or_else(|| pack_ref.to_string()),
        pack_ref,
        description,
        version: version.unwrap_or_default(),
        dir: Some(dir_abs.display().to_string()),
        config,
        conf_schema,
        notes: Vec::new(),
        digest: None,
    };
    Some((meta, selector))
}

/// Worker labels, as selectors hold them.
type Labels = std::collections::BTreeMap<String, String>;

fn read_action(
    file: &Path,
    pack: &PackMeta,
    pack_selector: &Labels,
    dir_abs: &Path,
    errors: &mut Vec<PackError>,
    notes: &mut Vec<PackNote>,
) -> Option<Action> {
    let before = errors.len();
    let allowed = keys(&[ACTION_FIELDS, original::ACTION_KEYS_USED, original::ACTION_KEYS_NOT_USED]);
    let mut doc = Doc::open(file, errors, &allowed)?;
    // The original's dialect: `runner_type` (or no runtime at all: the original's default is shell).
    let dialect = if doc.map.contains_key("runtime") { Dialect::Attune } else { Dialect::Original };
    // The original's workflow action: its graph is `workflow_file` under actions/.
    let workflow_file = doc.string("workflow_file", false);
    if workflow_file.is_some() {
        for k in ["runtime", "runner_type", "entry_point"] {
            if doc.map.contains_key(k) {
                doc.err(k, "a workflow action (workflow_file) has no runtime or entry point of its own");
            }
        }
    }
    let mut unused = doc.present(original::ACTION_KEYS_NOT_USED);
    let action_ref = doc.string("ref", true).and_then(|r| {
        let full = if r.contains('.') { r.clone() } else { format!("{}.{r}", pack.pack_ref) };
        match ActionRef::parse(&full) {
            Ok(a) => Some(a),
            Err(e) => {
                doc.err("ref", e.to_string());
                None
            }
        }
    });
    let description = doc.string("description", false).unwrap_or_default();
    let entry_point = match &workflow_file {
        Some(w) => Some(w.clone()),
        None => doc.string("entry_point", true),
    };
    let runtime = match dialect {
        _ if workflow_file.is_some() => Some(Runtime::Workflow),
        Dialect::Attune => {
            if doc.map.contains_key("runner_type") {
                doc.err("runner_type", "give `runtime` or the original Attune's `runner_type`, not both");
            }
            doc.string("runtime", true).and_then(|r| match Runtime::parse(&r) {
                Some(rt) => Some(rt),
                None => {
                    let all: Vec<_> = Runtime::ALL.iter().map(|r| r.as_str()).collect();
                    doc.err("runtime", format!("unknown runtime {r:?}; expected one of: {}", all.join(", ")));
                    None
                }
            })
        }
        Dialect::Original => match doc.string("runner_type", false) {
            Some(r) => original::runner_type(&r).or_else(|| {
                doc.err(
                    "runner_type",
                    format!("unknown runner_type {r:?}; expected one of: {}", original::RUNNER_TYPES),
                );
                None
            }),
            None => entry_point.as_deref().map(original::runtime_from_entry_point),
        },
    };
    let mut parameters = match doc.map.get("parameters").cloned() {
        None | Some(Value::Null) => default_schema(),
        // The original's flat form; its validator let unknown parameters through, and so does this.
        Some(v) if dialect == Dialect::Original => {
            original::flat_to_schema("parameters", &v).unwrap_or_else(|(f, m)| {
                doc.err(&f, m);
                default_schema()
            })
        }
        Some(v) => v,
    };
    if let Some(obj) = parameters.as_object_mut() {
        // Unknown parameters are a typo more often than not: refuse them unless the schema says
        // otherwise (or the action is the original's, whose scripts may expect them).
        if dialect == Dialect::Attune {
            obj.entry("additionalProperties").or_insert(Value::Bool(false));
        }
        obj.entry("properties").or_insert_with(|| Value::Object(Map::new()));
    }
    let output_schema = doc.schema_under("output", "output_schema");
    let enabled = doc.flag("enabled", true);
    let parameter_delivery: ParameterDelivery =
        doc.typed("parameter_delivery", "stdin, file or env").unwrap_or_default();
    let parameter_format: ParameterFormat =
        doc.typed("parameter_format", "json, yaml or dotenv").unwrap_or_default();
    let output_format: OutputFormat =
        doc.typed("output_format", "text, json, yaml or jsonl").unwrap_or_default();
    let timeout_seconds: Option<u64> = match original::one_of(&doc.map, "timeout_seconds", "timeout") {
        Ok(Some((k, _))) => doc.typed(&k, "a whole number of seconds"),
        Ok(None) => None,
        Err(e) => {
            doc.err("timeout", e);
            None
        }
    };
    let retry: RetryPolicy =
        doc.typed("retry", "a mapping with max_attempts (>= 1) and backoff_seconds").unwrap_or_default();
    let scheduled_timeout_seconds: Option<u64> =
        doc.typed("scheduled_timeout_seconds", "a whole number of seconds");
    if let Err(e) = attune_core::submission::check_scheduled_timeout(scheduled_timeout_seconds) {
        doc.err("scheduled_timeout_seconds", e);
    }
    let worker_selector = match doc.map.get("worker_selector").cloned() {
        None => pack_selector.clone(),
        Some(v) => attune_core::action::labels_from(&v).unwrap_or_else(|e| {
            doc.err("worker_selector", e);
            Default::default()
        }),
    };
    let concurrency: Option<attune_core::action::ConcurrencyPolicy> = doc.typed(
        "concurrency",
        "a mapping with limit (1 to 10000), key (a template over parameters) and on_limit (queue, cancel_new or cancel_oldest)",
    );
    if let Some(c) = &concurrency {
        if c.limit == 0 || c.limit > attune_core::action::MAX_CONCURRENCY_LIMIT {
            doc.err(
                "concurrency.limit",
                format!("must be between 1 and {}", attune_core::action::MAX_CONCURRENCY_LIMIT),
            );
        }
        if let Some(k) = &c.key {
            if let Err(e) = attune_template::check_syntax(&Value::String(k.clone()), "concurrency.key") {
                doc.err("concurrency.key", e.message);
            } else if !attune_template::has_templates(&Value::String(k.clone())) {
                doc.err("concurrency.key", "must use the parameters, e.g. \"{{ parameters.environment }}\" (a fixed key is the same as none)");
            }
        }
    }
    let rate_limit: Option<attune_core::action::RateLimit> = doc.typed(
        "rate_limit",
        "a mapping with per_second (> 0), burst (>= 1) and key (a template over parameters)",
    );
    if let Some(r) = &rate_limit {
        if !(r.per_second > 0.0 && r.per_second <= 100_000.0) {
            doc.err("rate_limit.per_second", "must be more than 0 and at most 100000");
        }
        if r.burst == Some(0) || r.burst.is_some_and(|b| b > 100_000) {
            doc.err("rate_limit.burst", "must be between 1 and 100000");
        }
        if let Some(k) = &r.key {
            if let Err(e) = attune_template::check_syntax(&Value::String(k.clone()), "rate_limit.key") {
                doc.err("rate_limit.key", e.message);
            } else if !attune_template::has_templates(&Value::String(k.clone())) {
                doc.err("rate_limit.key", "must use the parameters, e.g. \"{{ parameters.host }}\" (a fixed key is the same as none)");
            }
        }
    }
    let priority: i32 = doc.typed("priority", "a whole number from -100 to 100").unwrap_or(0);
    if !attune_core::action::PRIORITY_RANGE.contains(&priority) {
        doc.err("priority", format!("must be between -100 and 100, not {priority}"));
    }
    let (Some(action_ref), Some(runtime), Some(entry_point)) = (action_ref, runtime, entry_point) else {
        // Not an action yet; still report what can be checked on its own.
        if let Some(p) = check_parameters(&parameters) {
            doc.err(p.field, p.message);
        }
        return None;
    };
    let action = Action {
        action_ref,
        pack: pack.pack_ref.clone(),
        description,
        runtime,
        entry_point,
        parameters,
        parameter_delivery,
        parameter_format,
        output_format,
        timeout_seconds,
        retry,
        pack_dir: pack.dir.clone(),
        pack_digest: None,
        scheduled_timeout_seconds,
        worker_selector,
        concurrency,
        rate_limit,
        priority,
        workflow: None,
        enabled,
        output_schema,
        dialect,
    };
    let mut action = action;
    let problems = check_action(&pack.pack_ref, &action);
    let entry_ok = !problems.iter().any(|p| p.field == "entry_point");
    for p in problems {
        doc.err(p.field, p.message);
    }
    if entry_ok && !matches!(action.runtime, Runtime::Builtin | Runtime::Inquiry) {
        check_entry_file(&mut doc, action.runtime, dir_abs, "actions", &action.entry_point);
    }
    if action.runtime == Runtime::Workflow && doc.errors.len() == before {
        if workflow_file.is_some() {
            match read_original_workflow(dir_abs, &action.entry_point, doc.errors) {
                Ok((def, more)) => {
                    action.workflow = def;
                    unused.extend(more.into_iter().map(|k| format!("{}: {k}", action.entry_point)));
                }
                Err(why) => {
                    notes.push(PackNote {
                        file: rel(file),
                        keys: vec!["workflow_file".into()],
                        note: format!("skipped action {}: its workflow {why}", action.action_ref),
                    });
                    return None;
                }
            }
        } else {
            action.workflow = read_workflow(dir_abs, &action.entry_point, doc.errors);
        }
    }
    let ok = doc.errors.len() == before;
    if ok {
        notes.extend(not_used(file, unused));
    }
    ok.then_some(action)
}

/// The original's workflow file, translated (`original::translate_workflow`) and then checked
/// like this version's own: `Err` is what it uses that this version cannot run.
fn read_original_workflow(
    dir_abs: &Path,
    entry_point: &str,
    errors: &mut Vec<PackError>,
) -> Result<(Option<Value>, Vec<String>), String> {
    let file = dir_abs.join("actions").join(entry_point);
    let Some(yaml) = read_workflow_yaml(&file, errors) else { return Ok((None, Vec::new())) };
    let (translated, unused) = original::translate_workflow(&yaml)?;
    Ok((check_workflow(&file, &translated, errors), unused))
}

/// A workflow action's definition (`actions/<entry_point>`), checked (`attune-workflow`); its
/// problems are reported at that file, with the task and field.
fn read_workflow(dir_abs: &Path, entry_point: &str, errors: &mut Vec<PackError>) -> Option<Value> {
    let file = dir_abs.join("actions").join(entry_point);
    let yaml = read_workflow_yaml(&file, errors)?;
    check_workflow(&file, &yaml, errors)
}

/// A workflow file's YAML, within the size limit.
fn read_workflow_yaml(file: &Path, errors: &mut Vec<PackError>) -> Option<Value> {
    let mut fail = |message: String| {
        errors.push(PackError { file: file.to_path_buf(), field: None, message });
        None
    };
    let text = match std::fs::read_to_string(file) {
        Ok(t) if t.len() <= MAX_WORKFLOW_BYTES => t,
        Ok(t) => {
            return fail(format!("{} bytes; a workflow file may have at most {MAX_WORKFLOW_BYTES}", t.len()))
        }
        Err(e) => return fail(format!("cannot read: {e}")),
    };
    match serde_yaml::from_str(&text) {
        Ok(v) => Some(v),
        Err(e) => fail(format!("not valid YAML: {e}")),
    }
}

/// A workflow definition checked by `attune-workflow`; its problems located at `file`, with the
/// task and field.
fn check_workflow(file: &Path, yaml: &Value, errors: &mut Vec<PackError>) -> Option<Value> {
    match attune_workflow::Definition::parse(yaml) {
        Ok(def) => serde_json::to_value(def).ok(),
        Err(e) => {
            let field = match &e.task {
                Some(t) => format!("tasks.{t}.{}", e.field),
                None => e.field.clone(),
            };
            errors.push(PackError { file: file.to_path_buf(), field: Some(field), message: e.message });
            None
        }
    }
}

/// Largest workflow definition file.
const MAX_WORKFLOW_BYTES: usize = 1024 * 1024;

/// Every task of a workflow that names an action of its own pack must name one that exists;
/// actions of other packs are checked by the server, which knows them.
fn check_workflow_actions(pack: &PackMeta, dir_abs: &Path, actions: &[Action], errors: &mut Vec<PackError>) {
    for a in actions {
        let Some(def) = a
            .workflow
            .as_ref()
            .and_then(|w| serde_json::from_value::<attune_workflow::Definition>(w.clone()).ok())
        else {
            continue;
        };
        for (task, target) in def.actions() {
            let own = target.split('.').next() == Some(pack.pack_ref.as_str());
            if own && !actions.iter().any(|x| x.action_ref.as_str() == target) {
                errors.push(PackError {
                    file: dir_abs.join("actions").join(&a.entry_point),
                    field: Some(format!("tasks.{task}.action")),
                    message: format!("unknown action {target:?}: pack {} has no such action", pack.pack_ref),
                });
            }
        }
    }
}

/// What only the directory can tell: the entry point (in the pack's `sub` directory) exists, stays
/// inside the pack once symlinks are followed, and (a native one) is executable.
fn check_entry_file(doc: &mut Doc<'_>, rt: Runtime, dir_abs: &Path, sub: &str, entry_point: &str) {
    if !crate::check::entry_point_is_contained(entry_point) {
        doc.err("entry_point", format!("must be a relative path inside the pack's {sub}/ directory"));
        return;
    }
    let full = dir_abs.join(sub).join(entry_point);
    if !full.is_file() {
        doc.err("entry_point", format!("{} does not exist", full.display()));
        return;
    }
    if let Err(e) = resolve_entry_in(dir_abs, sub, entry_point) {
        doc.err("entry_point", e);
        return;
    }
    if rt == Runtime::Native && !is_executable(&full) {
        doc.err("entry_point", format!("{} is not executable (chmod +x it)", full.display()));
    }
}

/// `<pack_dir>/actions/<entry_point>` with every symlink followed, if it is a file inside the pack
/// directory (itself resolved); otherwise why not. The loader checks it, and the worker again
/// before it runs anything (the files may have changed since).
pub fn resolve_entry_point(pack_dir: &Path, entry_point: &str) -> Result<PathBuf, String> {
    resolve_entry_in(pack_dir, "actions", entry_point)
}

/// The same for an entry point in the pack's `sub` directory (`actions`, `sensors`).
pub fn resolve_entry_in(pack_dir: &Path, sub: &str, entry_point: &str) -> Result<PathBuf, String> {
    if !crate::check::entry_point_is_contained(entry_point) {
        return Err(format!("{entry_point:?} must be a relative path inside the pack's {sub}/ directory"));
    }
    let root =
        std::fs::canonicalize(pack_dir).map_err(|e| format!("pack directory {}: {e}", pack_dir.display()))?;
    let full = root.join(sub).join(entry_point);
    let real = std::fs::canonicalize(&full).map_err(|e| format!("{}: {e}", full.display()))?;
    if !real.starts_with(&root) {
        return Err(format!(
            "{} resolves to {}, outside the pack directory (a symlink leaving the pack is refused)",
            full.display(),
            real.display()
        ));
    }
    if !real.is_file() {
        return Err(format!("{} is not a file", real.display()));
    }
    Ok(real)
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).map(|m| m.permissions().mode() & 0o111 != 0).unwrap_or(false)
}

/// The pack directories directly under `root` (those with a `pack.yaml`), sorted.
pub fn discover(root: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(root)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.join("pack.yaml").is_file())
        .collect();
    dirs.sort();
    Ok(dirs)
}
